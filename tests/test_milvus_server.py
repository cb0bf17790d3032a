"""`tandem milvus` without starting a server: a stale or foreign pid file is never taken for a running server (and
never signalled), bad ports are refused. Starting, restarting and stopping a real server: test_readme_commands.py;
the index, rollout and service against it: tests/milvus_server.py and its users."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tandem.cli import app
from tandem.release import milvus_server

runner = CliRunner()


def _record(base, pid: int) -> None:
    base.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "port": 19530, "health_port": 9091, "base_dir": str(base), "started_at": 0.0}
    (base / milvus_server.STATE).write_text(json.dumps(info))


def test_nothing_recorded_is_not_running(tmp_path):
    assert milvus_server.status(tmp_path) is None and milvus_server.stop(tmp_path) is None
    result = runner.invoke(app, ["milvus", "status", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("not running")
    down = runner.invoke(app, ["milvus", "down", "--workdir", str(tmp_path)])
    assert down.exit_code == 0 and "no Milvus server running" in down.output


def test_a_pid_that_is_not_this_folders_milvus_is_stale_and_left_alone(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # alive, but not our server
    try:
        for pid in (os.getpid(), other.pid, 2**22 + 7):  # this process, another live one, no process at all
            _record(tmp_path, pid)
            assert milvus_server.status(tmp_path) is None
            assert not (tmp_path / milvus_server.STATE).exists()  # the stale record is removed
            _record(tmp_path, pid)
            assert milvus_server.stop(tmp_path, timeout=1) is None
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()


def test_bad_ports_are_refused(tmp_path):
    with pytest.raises(ValueError, match="1..65535"):
        milvus_server.start(tmp_path, port=70000)
    result = runner.invoke(app, ["milvus", "up", "--workdir", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2 and not (tmp_path / "milvus-server").exists()


def _sessions(info: milvus_server.ServerInfo) -> dict[str, int]:
    """The server ids of the service sessions registered in the server's etcd, by key."""
    import base64

    prefix = milvus_server.SESSIONS.encode()
    end = base64.b64encode(prefix[:-1] + b"0").decode()
    found = milvus_server._etcd(
        info.etcd_port, "/v3/kv/range", {"key": base64.b64encode(prefix).decode(), "range_end": end}
    )
    keys = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]) for kv in found.get("kvs", [])}
    return {k[len(prefix) :]: json.loads(v)["ServerID"] for k, v in keys.items() if not k.endswith("/id")}


def test_a_killed_servers_sessions_do_not_outlive_its_restart(tmp_path):
    """After a kill -9 the next start removes the old process's sessions (they would otherwise stay registered,
    their leases renewed by the restarted etcd, and a shifted port makes the new proxy dial a stale coordinator:
    the CI failure "unknown service milvus.proto.query.QueryCoord", every try)."""
    import signal

    if milvus_server.missing_reason():
        pytest.skip(milvus_server.missing_reason())
    try:
        first = milvus_server.start(tmp_path, port=milvus_server.free_port(), detach=False)
        before = _sessions(first)
        os.kill(first.pid, signal.SIGKILL)
        os.waitpid(first.pid, 0)
        second = milvus_server.start(tmp_path, detach=False)
    except RuntimeError as e:
        pytest.skip(f"the Milvus server did not start: {e}")
    try:
        assert second.pid != first.pid and len(set(before.values())) == 1
        after = _sessions(second)
        assert "querycoord" in after and "proxy-" + str(after["querycoord"]) in after
        new = max(after.values())
        assert set(after.values()) == {new} and new > max(before.values())  # the new process's sessions only
    finally:
        milvus_server.stop(tmp_path, timeout=2)
