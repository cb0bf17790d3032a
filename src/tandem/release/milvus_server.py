"""A local Milvus standalone server without Docker, from the PyPI package `milvus` (2.3.5).

That package ships the real Milvus server binary (embedded etcd, local storage, rocksmq); this
module starts it detached in a folder of its own (`tandem milvus up`: WORKDIR/milvus-server),
records its pid and port in `server.json` there, finds it again, and stops it. Milvus Lite is
the default index (a file, in-process); a server is for serving under concurrency and for large
catalogues: the Lite engine scans rows in Python per search, the server runs the HNSW index
natively. Importing this module starts nothing and does not import `milvus`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)
STATE = "server.json"
DEFAULT_PORT = 19530
HEALTH_PORT = 9091  # the first port tried for the server's /healthz (its metrics port)
# Starts tried while `timeout` lasts when the server exits during start-up: another process can take a port
# between our check and the server's bind. (Sessions a killed server left in etcd are removed while it
# starts: see `drop_stale_sessions`.)
MAX_STARTS = 8
SESSIONS = "by-dev/meta/session/"  # etcd.rootPath + metaSubPath + the session root of Milvus 2.3
INSTALL_HINT = "the PyPI package `milvus` (the server binary) is not installed: pip install 'tandem[server]'"


@dataclass(frozen=True)
class ServerInfo:
    """One running server: its process, gRPC port (the URI clients use) and health port."""

    pid: int
    port: int
    health_port: int
    base_dir: str
    started_at: float
    etcd_port: int = 0  # its embedded etcd's client port (0: a record written before it was kept)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def missing_reason() -> str | None:
    """Why a server cannot be started here (None when the `milvus` package is importable)."""
    import importlib.util

    return None if importlib.util.find_spec("milvus") else INSTALL_HINT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_ours(pid: int, base_dir: Path) -> bool:
    """True if `pid` is alive and runs this folder's milvus binary (a recycled pid is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (not Linux): trust the pid file
    return bool(cmdline) and cmdline[0].decode(errors="replace") == str(base_dir / "bin" / "milvus")


def healthy(info: ServerInfo, timeout: float = 2.0) -> bool:
    """The server's own health check answers OK."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{info.health_port}/healthz", timeout=timeout) as resp:
            return b"OK" in resp.read()
    except OSError:
        return False


def answers(uri: str, timeout: float = 5.0) -> bool:
    """A Milvus client can connect to `uri` and list its collections."""
    from pymilvus import MilvusClient

    try:
        client = MilvusClient(uri=uri, timeout=timeout)
        try:
            client.list_collections()
        finally:
            client.close()
        return True
    except Exception:
        return False


def status(base_dir: str | Path) -> ServerInfo | None:
    """The server recorded in `base_dir` if its process is still running (a stale record is removed)."""
    base_dir = Path(base_dir).resolve()
    path = base_dir / STATE
    try:
        info = ServerInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _is_ours(info.pid, base_dir):
        return info
    path.unlink(missing_ok=True)
    return None


def start(
    base_dir: str | Path,
    port: int | None = None,
    timeout: float = 180.0,
    detach: bool = True,
    settings: dict | None = None,
) -> ServerInfo:
    """Start a server storing its data under `base_dir` on `port` (default 19530, or the next free
    port after it) and wait until a client can use it; return the running one if there is one.

    `detach` puts it in a session of its own, so it outlives this process (`tandem milvus up`);
    otherwise it stays in this process group (a test session's server). `settings` overrides
    keys of the package's milvus.yaml by dotted path (e.g. {"queryCoord.checkInterval": 200}). Raises RuntimeError
    (the log's tail included) if it exits or does not answer within `timeout` seconds."""
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    base_dir = Path(base_dir).resolve()
    running = status(base_dir)
    if running is not None:
        if port is not None and port != running.port:
            raise RuntimeError(f"a server already runs from {base_dir} on port {running.port}; stop it first")
        return running
    if missing_reason():
        raise RuntimeError(INSTALL_HINT)
    base_dir.mkdir(parents=True, exist_ok=True)
    logs = base_dir / "logs"
    deadline = time.monotonic() + timeout
    for attempt in range(1, MAX_STARTS + 1):
        proc, info = _launch(base_dir, port, detach, settings or {})
        while not (healthy(info) and answers(info.uri)):
            drop_stale_sessions(info.etcd_port)
            exited = proc.poll() is not None
            if exited or time.monotonic() > deadline:
                stop(base_dir)
                if exited and attempt < MAX_STARTS and time.monotonic() < deadline - 10:
                    log.info("Milvus server exited at start-up (attempt %d); starting it again", attempt)
                    time.sleep(2)
                    break
                why = f"exited with code {proc.returncode}" if exited else f"no answer in {timeout:.0f} s"
                raise RuntimeError(f"Milvus server {why} (start {attempt}); log {logs}: {_tail(logs)}")
            time.sleep(0.2)
        else:
            return info
    raise AssertionError("unreachable")


def _launch(base_dir: Path, port: int | None, detach: bool, settings: dict) -> tuple[subprocess.Popen, ServerInfo]:
    """Write the configuration (free ports for every component), unpack the binary, start it, record it."""
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(base_dir))
    if port is not None:
        config.update(proxy_port=int(port))  # a taken port is an error, not a silent other port
    for key, value in settings.items():
        config.set(key, value)
    try:
        config.resolve()  # picks free ports for etcd and every component, writes configs/milvus.yaml
    except RuntimeError as e:
        raise RuntimeError(f"cannot start Milvus on port {port}: {e}") from e
    _embedded_etcd_ports(base_dir, int(config.get("etcd_port")))
    milvus._initialize_data_files(str(base_dir))  # the binaries, unpacked once per folder (cached by checksum)
    health_port, sock = config.resolve_port(HEALTH_PORT)
    sock.close()
    exe = base_dir / "bin" / "milvus"
    env = os.environ | {
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": str(health_port),
        "MILVUS_RUN_DIR": str(base_dir / "run"),
        "TMPDIR": str(base_dir / "run"),  # its server_id_<pid> files, else in the machine's /tmp/milvus
        "LD_LIBRARY_PATH": ":".join(filter(None, [str(exe.parent), os.environ.get("LD_LIBRARY_PATH")])),
    }
    logs = base_dir / "logs"
    logs.mkdir(exist_ok=True)
    (base_dir / "run").mkdir(exist_ok=True)
    with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
        proc = subprocess.Popen(
            [str(exe), "run", "standalone"],
            cwd=base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=detach,
        )
    etcd_port = int(config.get("etcd_port"))
    info = ServerInfo(proc.pid, int(config.get("proxy_port")), health_port, str(base_dir), time.time(), etcd_port)
    (base_dir / STATE).write_text(json.dumps(asdict(info), indent=1))
    return proc, info


def drop_stale_sessions(etcd_port: int) -> int:
    """Delete the service sessions an earlier server process left in this folder's embedded etcd; return how many.

    A killed server's sessions outlive it: etcd renews their leases when it restarts, so they stay for
    common.session.ttl after every start. Their addresses are ports that a restart may give to other
    components (its ports shift when old ones linger), and the new proxy, dialling a stale "querycoord",
    aborts ("unknown service milvus.proto.query.QueryCoord"), every try. A process allocates its server id
    (the `id` key) before it registers, so a session written before the id's last change is stale; each
    delete is conditional on the key being unchanged, so a session the new process just wrote stays.
    Best effort: an etcd that does not answer yet is asked again on the next poll."""
    if not etcd_port:
        return 0
    prefix = SESSIONS.encode()
    try:
        found = _etcd(etcd_port, "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + b"0")})
        kvs = {base64.b64decode(kv["key"]): int(kv["mod_revision"]) for kv in found.get("kvs", [])}
        allocated = kvs.pop(prefix + b"id", None)
        if allocated is None:  # no server id allocated yet: nothing registered, stale or new
            return 0
        stale = [key for key, rev in kvs.items() if rev < allocated]
        for key in stale:
            same = {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(kvs[key])}
            _etcd(
                etcd_port, "/v3/kv/txn", {"compare": [same], "success": [{"request_delete_range": {"key": _b64(key)}}]}
            )
    except (OSError, ValueError, KeyError):
        return 0
    if stale:
        log.info(
            "removed %d stale Milvus sessions: %s", len(stale), ", ".join(k[len(prefix) :].decode() for k in stale)
        )
    return len(stale)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _etcd(port: int, path: str, body: dict) -> dict:
    """One call to etcd's JSON gateway (part of the embedded etcd; no client library needed)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=2) as resp:
        return json.loads(resp.read())


def _embedded_etcd_ports(base_dir: Path, client_port: int) -> None:
    """Give the embedded etcd the client port the package chose and a free peer port. Without its own
    config file etcd listens on 2379 / 2380 whatever the package chose: a second server on the
    machine (another workdir, a test session) would abort at start-up."""
    peer = f"http://127.0.0.1:{free_port()}"
    client = f"http://127.0.0.1:{client_port}"
    etcd = base_dir / "configs" / "embedEtcd.yaml"
    etcd.write_text(
        f"name: default\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
    )
    path = base_dir / "configs" / "milvus.yaml"
    text = path.read_text()
    if "\netcd:\n" not in text:
        raise RuntimeError(f"no etcd section in {path}: not the milvus 2.3 configuration this code knows")
    path.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd}\n", 1))


def stop(base_dir: str | Path, timeout: float = 10.0) -> ServerInfo | None:
    """Stop the server recorded in `base_dir` (SIGTERM, SIGKILL after `timeout` s: Milvus 2.3 standalone often
    hangs in its own shutdown); the data it flushed stays (`ItemIndex.write` flushes).
    Returns what was stopped, or None if nothing ran."""
    base_dir = Path(base_dir).resolve()
    info = status(base_dir)
    if info is None:
        return None
    _signal(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_ours(info.pid, base_dir) and time.monotonic() < deadline:
        _reap(info.pid)
        time.sleep(0.2)
    if _is_ours(info.pid, base_dir):
        _signal(info.pid, signal.SIGKILL)
        while _is_ours(info.pid, base_dir):
            _reap(info.pid)
            time.sleep(0.1)
    (base_dir / STATE).unlink(missing_ok=True)
    return info


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if the server is this process's child (else it stays a zombie: 'alive')."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(logs: Path, chars: int = 800) -> str:
    parts = []
    for name in ("milvus-stderr.log", "milvus-stdout.log"):
        path = logs / name
        if path.is_file():
            parts.append(path.read_text(errors="replace")[-chars:])
    return " | ".join(p.strip() for p in parts if p.strip()) or "(empty)"
