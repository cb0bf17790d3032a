"""The index lifecycle against a Milvus server (`milvus-lite server` on loopback), as a second
machine sees it: shared aliases and promotion history, and both surviving a server restart.

tests/test_index.py runs its lifecycle tests against Lite and, through `milvus_lite_server`
below, against this server too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tandem.core.config_release import IndexConfig
from tandem.release.index import ItemIndex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=2)
        client.list_collections()
        client.close()
        return True
    except Exception:
        return False


@contextmanager
def milvus_lite_server(data_dir: Path, wait_s: float = 60.0):
    """Yield the URI of a `milvus-lite server` subprocess on a free loopback port (skip the test
    if the executable is missing or the server does not answer in `wait_s`); terminate it after."""
    exe = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or shutil.which("milvus-lite")
    if exe is None:
        pytest.skip("the milvus-lite executable is not installed")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log_path = Path(data_dir).with_suffix(".log")
    with open(log_path, "wb") as log:
        cmd = [exe, "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait_s
        while not _answers(uri):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"milvus-lite server did not come up on {uri}: {log_path.read_text()[-500:]}")
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("milvus_server") / "data"
    with milvus_lite_server(data_dir) as uri:
        yield uri, data_dir


def _vectors(n: int = 60, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_second_client_sees_the_same_aliases_and_history(server):
    uri, _ = server
    cfg = IndexConfig(milvus_uri=uri, index_type="FLAT", alias="live_two_clients")
    v = _vectors()
    with ItemIndex(cfg) as first, ItemIndex(cfg) as second:  # two machines on one server
        first.write("tandem_two_a", [str(i) for i in range(30)], v[:30])
        first.write("tandem_two_b", [str(i) for i in range(30)], v[30:])
        first.promote("tandem_two_a")
        first.promote("tandem_two_b")
        assert second.live() == "tandem_two_b"
        assert [e["collection"] for e in second.history()] == ["tandem_two_a", "tandem_two_b"]
        assert second.rollback() == "tandem_two_a"  # the second machine rolls back the first one's promotion
        assert first.live() == "tandem_two_a"
        assert first.search(cfg.alias, v[:1], k=1)[0][0][0] == "0"


def test_history_and_aliases_survive_a_server_restart(tmp_path):
    cfg = IndexConfig(index_type="HNSW")
    v = _vectors(200, 16)
    ids = [str(i) for i in range(len(v))]
    with milvus_lite_server(tmp_path / "data") as uri:
        with ItemIndex(IndexConfig(milvus_uri=uri)) as idx:
            idx.write("tandem_r1", ids, v)
            idx.write("tandem_r2", ids, v[::-1].copy())
            idx.promote("tandem_r1")
            idx.promote("tandem_r2")
    with milvus_lite_server(tmp_path / "data") as uri:  # same data, new process (and port)
        with ItemIndex(IndexConfig(milvus_uri=uri)) as idx:
            assert idx.live() == "tandem_r2"
            assert idx.rollback_target() == "tandem_r1"
            assert [e["action"] for e in idx.history()] == ["promote", "promote"]
            # the restarted server has released the collections: searching through the alias reloads
            assert idx.search(cfg.alias, v[:1], k=1)[0][0][0] == ids[-1]  # r2 holds v reversed
            assert idx.count("tandem_r1") == len(v)
