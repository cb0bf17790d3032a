"""Served events survive a killed service (issue 19, item 2): the spool, its recovery, failed writes.

The service test starts `tandem serve` as its own process, serves requests, kills it with SIGKILL while
every event is still buffered (flush_seconds is an hour) and counts what is on disk after recovery.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_VISION

from tandem.data.synth import make_dataset
from tandem.serve import events_dir, read_events
from tandem.serve.events import SPOOL_SUFFIX, EventLog

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROW = {"user_id": "u", "arm": "champion", "experiment": "", "query": "q", "position": 0, "event": "impression"}


def spooled(workdir: Path) -> list[Path]:
    return sorted(events_dir(workdir).with_name("events.spool").glob(f"*{SPOOL_SUFFIX}"))


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ the spool
WRITER = textwrap.dedent(
    """
    import sys
    from tandem.serve.events import EventLog
    log = EventLog(sys.argv[1], flush_rows=10**6, flush_seconds=3600, spool_fsync_seconds=0.2).start()
    row = {"user_id": "u", "arm": "champion", "experiment": "", "query": "q", "position": 0, "event": "impression"}
    for n in range(int(sys.argv[2])):
        log.add([row | {"item_id": f"i{n}", "request_id": f"r{n}"}])
        print(n, flush=True)  # acknowledged
    sys.stdin.readline()  # wait to be killed
    """
)


def test_events_of_a_killed_writer_are_recovered_from_the_spool(tmp_path):
    folder = events_dir(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), "500"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    acked = [int(proc.stdout.readline()) for _ in range(500)]  # each printed after its add() returned
    assert acked == list(range(500))
    proc.kill()  # SIGKILL: no shutdown flush
    proc.wait(10)
    assert read_events(tmp_path).empty and len(spooled(tmp_path)) == 1  # nothing in a part, all in the spool
    log = EventLog(folder).start()  # what the service does at start-up
    assert log.recovered == 500 and not spooled(tmp_path)[:-1]  # only the new process's own spool left
    log.close()
    events = read_events(tmp_path)
    assert sorted(events["request_id"]) == sorted(f"r{n}" for n in range(500)) and not spooled(tmp_path)
    assert EventLog(folder).start().recovered == 0  # recovered once, not twice


def test_a_failed_write_requeues_the_rows_and_the_flusher_survives_any_error(tmp_path, monkeypatch):
    log = EventLog(events_dir(tmp_path), flush_rows=2, flush_seconds=0.2, spool_fsync_seconds=0.05)
    real = EventLog._write_part
    errors = [OSError(28, "No space left on device"), RuntimeError("something else")]

    def failing(self, rows, tag):
        if errors:
            raise errors.pop(0)
        return real(self, rows, tag)

    monkeypatch.setattr(EventLog, "_write_part", failing)
    log.start()
    log.add([ROW | {"item_id": "a", "request_id": "r1"}, ROW | {"item_id": "b", "request_id": "r2"}])
    wait_for(lambda: log.failures >= 1)
    health = log.health()
    assert health["events_last_error"].startswith(("OSError", "RuntimeError")) and not log.healthy
    assert health["events_flusher_alive"] and log.buffered == 2  # requeued, thread still running
    log.add([ROW | {"item_id": "c", "request_id": "r3"}])
    wait_for(lambda: log.written == 3)  # after two failures (backoff) the third try writes everything
    assert log.written == 3 and log.healthy and log.failures == 0 and log.health()["events_last_flush_at"]
    assert sorted(read_events(tmp_path)["request_id"]) == ["r1", "r2", "r3"]
    log.close()
    assert not spooled(tmp_path)  # each spool file was deleted once its rows were in a durable part


def test_a_write_failing_at_shutdown_leaves_the_rows_in_the_spool(tmp_path, monkeypatch):
    log = EventLog(events_dir(tmp_path), flush_seconds=3600).start()
    log.add([ROW | {"item_id": "a", "request_id": "r1"}])
    monkeypatch.setattr(EventLog, "_write_part", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    log.close()  # logged, not raised
    assert read_events(tmp_path).empty and spooled(tmp_path)
    monkeypatch.undo()
    again = EventLog(events_dir(tmp_path)).start()
    again.close()
    assert again.recovered == 1 and read_events(tmp_path)["request_id"].tolist() == ["r1"]


def test_the_spool_is_fsynced_within_spool_fsync_seconds(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    log = EventLog(events_dir(tmp_path), flush_seconds=3600, spool_fsync_seconds=0.1).start()
    synced.clear()
    log.add([ROW | {"item_id": "a", "request_id": "r1"}])
    added = time.monotonic()
    wait_for(lambda: any(p.endswith(SPOOL_SUFFIX) for p in synced), 2)
    assert any(p.endswith(SPOOL_SUFFIX) for p in synced) and time.monotonic() - added < 1.0
    synced.clear()
    time.sleep(0.3)
    assert not synced  # nothing appended since: no fsync
    log.close()


def test_a_live_services_spool_is_not_recovered_by_another(tmp_path):
    first = EventLog(events_dir(tmp_path), flush_seconds=3600).start()
    first.add([ROW | {"item_id": "a", "request_id": "r1"}])
    second = EventLog(events_dir(tmp_path), flush_seconds=3600).start()  # a second worker on the same workdir
    assert second.recovered == 0 and len(spooled(tmp_path)) == 2  # the first one's file is locked: left alone
    first.close()
    second.close()
    assert read_events(tmp_path)["request_id"].tolist() == ["r1"] and not spooled(tmp_path)


def test_without_a_spool_rows_are_still_written_and_the_error_shown(tmp_path, monkeypatch):
    import tandem.serve.events as events

    log = EventLog(events_dir(tmp_path), flush_seconds=3600).start()
    log.add([ROW | {"item_id": "a", "request_id": "r1"}])

    def no_space(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(events, "_Spool", no_space)
    log.flush()  # rotates: the next spool file cannot be created
    log.add([ROW | {"item_id": "b", "request_id": "r2"}])  # kept in memory, loudly
    assert log.health()["events_last_error"] == "spool OSError: [Errno 28] No space left on device"
    assert not log.healthy and log.buffered == 1
    log.close()
    assert sorted(read_events(tmp_path)["request_id"]) == ["r1", "r2"]


# ------------------------------------------------------------------------------------------ the service
@pytest.fixture(scope="module")
def served_workdir(tiny_encoder_dir, tmp_path_factory):
    """A workdir with a live collection, built by `tandem run` in its own process (Milvus Lite's database
    must not stay open in this one: the service opens it)."""
    logs, catalog = make_dataset(tmp_path_factory.mktemp("data"), n_items=48, n_users=80)
    workdir = tmp_path_factory.mktemp("work")
    recipe = workdir.parent / "recipe.yaml"
    values = {
        "model": {"item_encoder": tiny_encoder_dir, "query_layers": 1, **TINY_VISION},
        "train": {"epochs": 1, "batch_size": 16, "lr_item": 1e-3, "lr_query": 1e-3},
        "eval": {"batch_size": 32, "n_boot": 100, "latency_queries": 4},
        "serve": {"flush_seconds": 3600, "flush_rows": 100000, "spool_fsync_seconds": 0.2},
    }
    recipe.write_text(json.dumps(values))  # JSON is YAML
    argv = ["run", "--logs", logs, "--catalog", catalog, "--workdir", workdir, "--config", recipe]
    done = subprocess.run([str(BIN / "tandem"), *map(str, argv)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return workdir, recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkilled_service_loses_no_acknowledged_event(served_workdir):
    """300 searches (5 impressions each) and 30 clicks; SIGKILL with all of them buffered; after recovery
    every acknowledged event is in a part."""
    workdir, recipe = served_workdir
    port = free_port()
    argv = ["serve", "--workdir", workdir, "--host", "127.0.0.1", "--port", port, "--config", recipe]
    env = {k: v for k, v in os.environ.items() if k != "TANDEM_API_KEY"}
    proc = subprocess.Popen(
        [str(BIN / "tandem"), *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    base, acked = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tandem serve did not start"
            time.sleep(0.3)
        with httpx.Client(base_url=base, timeout=30) as http:
            for n in range(300):
                r = http.get("/search", params={"q": f"item {n}", "k": 5, "user_id": f"u{n % 40}"})
                assert r.status_code == 200, r.text
                body = r.json()
                acked += [(body["request_id"], "impression", i["item_id"]) for i in body["items"]]
                if n % 10 == 0:
                    click = {"request_id": body["request_id"], "item_id": body["items"][0]["item_id"]}
                    assert http.post("/click", json=click).status_code == 200
                    acked.append((body["request_id"], "click", click["item_id"]))
            health = http.get("/healthz").json()
        assert health["events_buffered"] == len(acked) and health["events_written"] == 0  # all still buffered
        time.sleep(1.2)  # the goal: events acknowledged more than 1 s before the kill are kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert read_events(workdir).empty and spooled(workdir)  # nothing was flushed: only the spool holds them
    log = EventLog(events_dir(workdir)).start()  # what the next start-up of the service does
    log.close()
    events = read_events(workdir)
    kept = sorted(zip(events["request_id"], events["event"], events["item_id"], strict=True))
    assert len(acked) == 300 * 5 + 30 and log.recovered == len(acked) and kept == sorted(acked)
