"""Promotion safety (issue 19 item 1): every indexing attempt writes a collection of its own, an alias moves
only to a complete one, a served collection is never written in place, and a crash between an alias move
and its history record is repaired. Writers are SIGKILLed in a subprocess, on Milvus Lite and on a real
Milvus 2.3 server (tests/milvus_server.py; skipped where it cannot start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tandem.core import layout
from tandem.core.atomic import atomic_dir, mark_done, write_atomic
from tandem.core.config import RunConfig
from tandem.core.config_release import IndexConfig
from tandem.release import completeness
from tandem.release.index import ItemIndex, model_dir_of

N, DIM = 100, 8
RUN = "daily-20240131"

# Runs in a subprocess: the index stage (or a promotion) with its writes counted; SIGKILL at the chosen one.
WRITER = """
import json, os, signal, sys
import pandas as pd
from pymilvus import MilvusClient
from tandem.core.config import RunConfig
from tandem.core.config_release import IndexConfig
from tandem.pipeline import stages
from tandem.release.index import ItemIndex

args = json.loads(sys.argv[1])
calls = {"upsert": 0}

def killer(method):
    def wrapped(self, *a, **k):
        out = method(self, *a, **k)
        calls["upsert"] += 1
        if calls["upsert"] == args["kill_after_upserts"]:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-write: more batches follow
        return out
    return wrapped

MilvusClient.upsert = killer(MilvusClient.upsert)
write = ItemIndex.write
ItemIndex.write = lambda self, *a, **k: write(self, *a, **{**k, "batch": 20})  # several batches
if args["kill_in_record"]:
    record = ItemIndex._record
    def _record(self, action, *a, **k):
        if action == args["kill_in_record"]:
            os.kill(os.getpid(), signal.SIGKILL)  # the alias has moved, its record is not written
        return record(self, action, *a, **k)
    ItemIndex._record = _record
cfg = RunConfig(index=IndexConfig(**args["index"]))
run = stages.RunPaths.of(args["workdir"], args["run_id"])
if args["promote"]:
    with ItemIndex(cfg.index, run.workdir) as idx:
        getattr(idx, args["promote"])(*args.get("promote_args", []))
else:
    stages.items = lambda r: pd.read_parquet(r / "data" / "catalog.parquet")  # the Feast read is tested elsewhere
    stages.index(run, cfg)
print("finished")
"""


def _spawn(workdir: Path, icfg: IndexConfig, **args) -> subprocess.CompletedProcess:
    if not icfg.milvus_uri:  # Milvus Lite locks its file until this process's Lite server stops
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(layout.milvus_db(workdir)))
    settings = {"milvus_uri": icfg.milvus_uri, "index_type": icfg.index_type, "alias": icfg.alias}
    payload = {"workdir": str(workdir), "run_id": RUN, "index": settings, "kill_after_upserts": 0}
    payload |= {"kill_in_record": "", "promote": ""} | args
    return subprocess.run(
        [sys.executable, "-c", WRITER, json.dumps(payload)], capture_output=True, text=True, timeout=300
    )


def _train(workdir: Path, run_id: str, seed: int) -> np.ndarray:
    """What train + embed leave in a run folder: a model folder (replaced whole, `_DONE` last), the vectors."""
    run = workdir / "runs" / run_id
    vectors = np.random.default_rng(seed).normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with atomic_dir(run / "model") as tmp:
        (tmp / "config.json").write_text(json.dumps({"seed": seed}))
        (tmp / "model.safetensors").write_bytes(vectors.tobytes())
    write_atomic(run / "vectors" / "items.npy", lambda f: np.save(f, vectors))
    catalog = pd.DataFrame({"item_id": [f"i{n}" for n in range(N)], "title": [f"item {n}" for n in range(N)]})
    write_atomic(run / "data" / "catalog.parquet", lambda f: catalog.to_parquet(f, index=False))
    return vectors


@pytest.fixture(params=["lite", "milvus-server"])
def icfg(request):
    uri = request.getfixturevalue("empty_server") if request.param == "milvus-server" else ""
    return IndexConfig(milvus_uri=uri, index_type="FLAT")


def _index(workdir: Path, icfg: IndexConfig, monkeypatch) -> dict:
    from tandem.pipeline import stages

    monkeypatch.setattr(stages, "items", lambda r: pd.read_parquet(r / "data" / "catalog.parquet"))
    return stages.index(stages.RunPaths.of(workdir, RUN), RunConfig(index=icfg))


def test_a_rerun_killed_mid_write_leaves_live_serving_the_complete_previous_collection(tmp_path, icfg, monkeypatch):
    from tandem.release.audit import audit_live

    first = _train(tmp_path, RUN, seed=1)
    done = _index(tmp_path, icfg, monkeypatch)
    with ItemIndex(icfg, tmp_path) as idx:
        idx.promote(done["collection"])
    live = done["collection"]
    assert live == "tandem_daily_20240131"
    again = _index(tmp_path, icfg, monkeypatch)  # the same content again: reused, nothing written
    assert again["collection"] == live and again["reused"]

    second = _train(tmp_path, RUN, seed=2)  # the daily DAG reruns the interval: retrained in the same run folder
    killed = _spawn(tmp_path, icfg, kill_after_upserts=2)  # 40 of 100 rows written
    assert killed.returncode == -9 and "finished" not in killed.stdout, killed.stderr[-3000:]

    with ItemIndex(icfg, tmp_path) as idx:
        assert idx.live() == live and idx.count(live) == N
        stored = idx.vectors_of(idx.cfg.alias, [f"i{n}" for n in range(N)])
        assert len(stored) == N  # was: 40 of them the new model's vectors, the count unchanged
        np.testing.assert_allclose(np.stack([stored[f"i{n}"] for n in range(N)]), first, atol=1e-6)
        assert [h[0] for h in idx.search(idx.cfg.alias, first[:5], k=1)] == [
            (f"i{n}", pytest.approx(1.0, abs=1e-5)) for n in range(5)
        ]
        attempt = next(c for c in idx.run_collections() if c != live)
        assert attempt.startswith(live + "__")  # the killed attempt wrote its own collection
        with pytest.raises(ValueError, match="not complete: .*never marked complete|vector index was never built"):
            idx.promote(attempt)
        assert idx.live() == live
    # the live collection's model is the one it was written with, not the retrained one
    assert json.loads((model_dir_of(tmp_path, live) / "config.json").read_text()) == {"seed": 1}
    assert audit_live(tmp_path, RunConfig(index=icfg), k=1)["ok"]

    rerun = _index(tmp_path, icfg, monkeypatch)  # the next try writes the same attempt afresh
    assert rerun["collection"] == attempt and not rerun["reused"] and rerun["vectors"] == N
    with ItemIndex(icfg, tmp_path) as idx:
        assert idx.promote(attempt) == live and idx.live() == attempt
        assert idx.search(idx.cfg.alias, second[:1], k=1)[0][0][0] == "i0"
        assert idx.rollback() == live and idx.search(idx.cfg.alias, first[:1], k=1)[0][0][0] == "i0"
    assert json.loads((model_dir_of(tmp_path, attempt) / "config.json").read_text()) == {"seed": 2}


def _two_collections(workdir: Path, icfg: IndexConfig) -> None:
    with ItemIndex(icfg, workdir) as idx:
        for n, name in enumerate(("tandem_a", "tandem_b", "tandem_c")):
            idx.write(name, [f"i{k}" for k in range(10)], np.eye(10, DIM, k=n, dtype=np.float32))
        idx.promote("tandem_a")


@pytest.mark.parametrize("killed_in", ["promote", "rollback"])
def test_a_crash_between_the_alias_switch_and_the_history_record_recovers(tmp_path, icfg, killed_in):
    _two_collections(tmp_path, icfg)
    if killed_in == "rollback":
        with ItemIndex(icfg, tmp_path) as idx:
            idx.promote("tandem_b")
        crash = _spawn(tmp_path, icfg, promote="rollback", kill_in_record="rollback")
    else:
        crash = _spawn(tmp_path, icfg, promote="promote", promote_args=["tandem_b"], kill_in_record="promote")
    assert crash.returncode == -9, crash.stderr[-3000:]
    with ItemIndex(icfg, tmp_path) as idx:
        recorded = [(e["action"], e["collection"]) for e in idx.history()]
        if killed_in == "promote":  # the alias moved, its record is missing
            assert idx.live() == "tandem_b" and recorded == [("promote", "tandem_a")]
            assert idx.retain(1) == []  # keeps tandem_c (newest), tandem_b (live), tandem_a (rollback target)
            assert idx.rollback() == "tandem_a"  # reconciles first, then rolls back
            expected = [("promote", "tandem_a"), ("promote", "tandem_b"), ("rollback", "tandem_a")]
        else:
            assert idx.live() == "tandem_a" and recorded == [("promote", "tandem_a"), ("promote", "tandem_b")]
            assert idx.promote("tandem_c") == "tandem_a"
            assert idx.rollback_target() == "tandem_a"  # not tandem_b: the interrupted rollback was recorded
            expected = [
                ("promote", "tandem_a"),
                ("promote", "tandem_b"),
                ("rollback", "tandem_a"),
                ("promote", "tandem_c"),
            ]
        events = idx.history()
        assert [(e["action"], e["collection"]) for e in events] == expected
        recovered = events[len(recorded)]  # the record the crash cut off, written by the next promote/rollback
        assert recovered.get("recovered") is True and recovered["previous"] == recorded[-1][1]
        assert [e.get("recovered") for e in events].count(True) == 1


def test_an_alias_moves_only_to_a_complete_collection(tmp_path):
    icfg = IndexConfig(index_type="FLAT")
    ids = [f"i{k}" for k in range(10)]
    with ItemIndex(icfg, tmp_path) as idx:
        idx.write("tandem_ok", ids, np.eye(10, DIM, dtype=np.float32))
        assert completeness.problems(idx, "tandem_ok") == []
        idx.promote("tandem_ok")
        # a write killed before its index: rows, no index, no marker
        idx._create("tandem_cut", DIM)
        idx.client.upsert(
            "tandem_cut", [{"item_id": i, "vector": [0.5] * DIM} | dict.fromkeys(icfg.scalar_fields, "") for i in ids]
        )
        with pytest.raises(ValueError, match="vector index was never built"):
            idx.promote("tandem_cut")
        idx._build_index("tandem_cut")  # killed after its index, before the marker
        with pytest.raises(ValueError, match="holds 10 rows but was never marked complete"):
            idx.set_alias(icfg.challenger_alias, "tandem_cut")
        completeness.mark_complete(idx, "tandem_cut", 12)
        with pytest.raises(ValueError, match="holds 10 rows, its write marked 12"):
            idx.promote("tandem_cut")
        (tmp_path / "collections/tandem_cut/model").mkdir(parents=True)
        completeness.mark_complete(idx, "tandem_cut", 10, model="collections/tandem_cut/model")
        missing = r"model folder collections/tandem_cut/model \(under .*\) is missing or has no _DONE"
        with pytest.raises(ValueError, match=missing):
            idx.promote("tandem_cut")
        mark_done(tmp_path / "collections/tandem_cut/model")
        assert idx.promote("tandem_cut") == "tandem_ok"
        assert idx.live() == "tandem_cut" and idx.aliases().get(icfg.challenger_alias) is None


def test_an_attempt_is_named_by_what_shapes_the_collection_and_its_serving(tmp_path):
    from dataclasses import replace

    from tandem.release.attempts import content_digest

    _train(tmp_path, RUN, seed=1)
    run = tmp_path / "runs" / RUN
    ids, cfg = [f"i{n}" for n in range(N)], IndexConfig()

    def digest(cfg=cfg, ids=ids, scalars=None):
        return content_digest(run / "model", run / "vectors" / "items.npy", ids, scalars or {}, cfg)

    same = digest()
    assert digest(replace(cfg, keep_collections=1, search_ef=8, alias="staging")) == same  # search and retention
    assert digest(replace(cfg, index_type="FLAT")) != same and digest(ids=ids[::-1]) != same
    assert digest(scalars={"title": ["x"] * N}) != same
    (run / "model" / "config.json").write_text("{}")  # a retrained model, even with the same vectors
    assert digest() != same
