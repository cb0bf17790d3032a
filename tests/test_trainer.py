"""The accelerate trainer on a toy encoder (hashed-token bags, no model family needed)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tandem.core.config import EvalConfig, TrainConfig
from tandem.evaluation.evaluate import RetrievalEvaluator
from tandem.models.base import Encoder
from tandem.models.losses import LogitScale, contrastive, gather
from tandem.training import trainer
from tandem.training.data import PairDataset, validation_set
from tandem.training.optim import optimizer_groups, warmup_linear
from tandem.training.trainer import fit

GROUPS, PER_GROUP = 12, 4


class ToyEncoder(Encoder):
    """Query tower and item tower: mean of hashed word embeddings, dropout, linear, unit norm."""

    family = "toy"

    def __init__(self, buckets: int = 251, width: int = 24, dim: int = 16, dropout: float = 0.1):
        super().__init__()
        self.buckets = buckets
        self.query_bag = nn.EmbeddingBag(buckets, width, mode="mean")
        self.item_bag = nn.EmbeddingBag(buckets, width, mode="mean")
        self.query_proj = nn.Linear(width, dim)
        self.item_proj = nn.Linear(width, dim)
        self.drop = nn.Dropout(dropout)
        self.seen_batches: list[list[int]] = []  # query keys of each training batch, in order

    @property
    def dim(self) -> int:
        return self.query_proj.out_features

    def _tokens(self, texts):
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids += [zlib.crc32(w.encode()) % self.buckets for w in (str(text).lower().split() or [""])]
        return torch.tensor(ids), torch.tensor(offsets)

    def collate(self, examples):
        q_ids, q_off = self._tokens([e.query_text for e in examples])
        i_ids, i_off = self._tokens([e.item["title"] for e in examples])
        self.seen_batches.append([e.query_key for e in examples])
        return {
            "q_ids": q_ids,
            "q_off": q_off,
            "i_ids": i_ids,
            "i_off": i_off,
            "query_keys": torch.tensor([e.query_key for e in examples]),
            "item_keys": torch.tensor([e.item_key for e in examples]),
        }

    def _query(self, ids, off):
        return F.normalize(self.query_proj(self.drop(self.query_bag(ids, off))), dim=-1)

    def _item(self, ids, off):
        return F.normalize(self.item_proj(self.drop(self.item_bag(ids, off))), dim=-1)

    def forward(self, batch):
        return {
            "query": self._query(batch["q_ids"], batch["q_off"]),
            "item": self._item(batch["i_ids"], batch["i_off"]),
            "query_keys": batch["query_keys"],
            "item_keys": batch["item_keys"],
        }

    def param_groups(self, cfg):
        def group(name, modules, lr):
            params = [p for m in modules for p in m.parameters()]
            return {"name": name, "params": params, "lr": lr, "weight_decay": cfg.weight_decay}

        return [
            group("query", [self.query_bag], cfg.lr_query),
            group("item", [self.item_bag], cfg.lr_item),
            group("new", [self.query_proj, self.item_proj], cfg.lr_new),
        ]

    def _embed(self, fn, texts):
        was = self.training
        self.eval()
        with torch.inference_mode():
            ids, off = self._tokens(texts)
            out = fn(ids.to(self.device), off.to(self.device)).float().cpu().numpy()
        self.train(was)
        return out

    def embed_items(self, catalog, batch_size=128, progress=True):
        return self._embed(self._item, catalog["title"].tolist())

    def embed_queries(self, texts, batch_size=256, progress=True):
        return self._embed(self._query, list(texts))


class Interrupted(RuntimeError):
    pass


class ToyLoss(nn.Module):
    """Query -> item in-batch contrastive with negatives from every process; can simulate a
    crash at its `fail_at`-th call."""

    def __init__(self, init_scale: float = 20.0, fail_at: int = 0):
        super().__init__()
        self.scale = LogitScale(init_scale)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, out):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted(f"simulated crash at call {self.calls}")
        items, offset = gather(out["item"])
        item_keys, _ = gather(out["item_keys"])
        positive = offset + torch.arange(len(out["query"]), device=items.device)
        ret = contrastive(out["query"], items, positive, out["query_keys"], item_keys, self.scale())
        parts = {"retrieval": ret}
        if int(out["query_keys"][0]) % 2 == 0:  # a part some batches lack (like HotelMatch's MLM term)
            parts["alignment"] = (out["query"] * out["item"]).sum(-1).mean().detach()
        return ret, parts


def make_catalog() -> pd.DataFrame:
    rows = []
    for g in range(GROUPS):
        for j in range(PER_GROUP):
            rows.append({"item_id": f"i{g * PER_GROUP + j}", "title": f"w{g}a w{g}b t{g * PER_GROUP + j}"})
    return pd.DataFrame(rows)


def make_pairs() -> pd.DataFrame:
    """Every ordered pair of items in the same group (groups share title words)."""
    rows = []
    for g in range(GROUPS):
        ids = [f"i{g * PER_GROUP + j}" for j in range(PER_GROUP)]
        rows += [{"item_id": a, "related_item_id": b, "score": 1.0} for a, b in itertools.permutations(ids, 2)]
    return pd.DataFrame(rows)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


@pytest.fixture(scope="module")
def catalog():
    return make_catalog()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs()


def toy(seed: int = 0) -> ToyEncoder:
    torch.manual_seed(seed)
    return ToyEncoder()


def base_cfg(**kw) -> TrainConfig:
    values = dict(
        epochs=2,
        batch_size=8,
        lr_query=5e-2,
        lr_item=5e-2,
        lr_new=5e-2,
        warmup_fraction=0.1,
        device="cpu",
        tensorboard=False,
        seed=0,
    )
    values.update(kw)
    return TrainConfig(**values)


def mean_loss(model: ToyEncoder, pairs, catalog) -> float:
    """Deterministic in-batch loss over the pairs in order (eval mode, fixed scale)."""
    data = PairDataset(pairs, catalog)
    loss = ToyLoss(20.0)
    model.eval()
    total = []
    with torch.no_grad():
        for start in range(0, len(data), 16):
            batch = model.collate([data[i] for i in range(start, min(start + 16, len(data)))])
            total.append(loss(model({k: v.to(model.device) for k, v in batch.items()}))[0].item())
    return float(np.mean(total))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- basics


def test_warmup_then_linear_decay():
    factor = warmup_linear(warmup_steps=2, total_steps=10)
    values = [factor(s) for s in range(10)]
    assert values[:2] == [0.5, 1.0]
    assert all(a > b for a, b in itertools.pairwise(values[1:]))
    assert values[-1] > 0 and factor(10) == 0.0


def test_loss_goes_down_and_stats(catalog, pairs):
    model = toy()
    before = mean_loss(model, pairs, catalog)
    cfg = base_cfg(epochs=6)
    stats = fit(model, ToyLoss(cfg.init_scale), pairs, catalog, cfg, progress=False)
    after = mean_loss(model, pairs, catalog)
    steps_per_epoch = math.ceil(len(pairs) / 8)  # 144 pairs: 18 full batches
    assert stats["steps"] == 6 * steps_per_epoch == len(stats["step_losses"])
    assert stats["pairs_seen"] == 6 * len(pairs)
    assert len(stats["epoch_losses"]) == 6 and stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    assert stats["final_loss"] == stats["step_losses"][-1]
    assert after < 0.6 * before, (before, after)
    assert set(stats["loss_parts"]) == {"retrieval", "alignment"}
    assert stats["device"] == "cpu" and stats["mixed_precision"] == "no" and stats["num_processes"] == 1
    assert stats["pairs_per_s"] > 0 and stats["peak_memory_mb"] > 0 and stats["seconds"] > 0
    assert stats["logit_scale"] != pytest.approx(cfg.init_scale)  # the scale is trained (its group)
    assert stats["history"] == [] and stats["best_step"] is None and stats["resumed_from"] is None
    assert not model.training


def test_param_groups_reach_the_optimizer(catalog, pairs, monkeypatch):
    cfg = base_cfg(lr_query=1e-3, lr_item=1e-5, lr_new=5e-2, weight_decay=0.01, max_steps=3, warmup_fraction=0.0)
    model, loss = toy(), ToyLoss()
    groups = optimizer_groups(model, loss, cfg)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("query", 1e-3, 0.01),
        ("item", 1e-5, 0.01),
        ("new", 5e-2, 0.01),
        ("loss", 5e-2, 0.0),
    ]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in [*model.parameters(), *loss.parameters()])

    lrs = []
    real = torch.optim.AdamW

    def spy(param_groups, *a, **kw):
        opt = real(param_groups, *a, **kw)
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append({g["name"]: g["lr"] for g in o.param_groups}))
        return opt

    monkeypatch.setattr(trainer.torch.optim, "AdamW", spy)
    fit(model, loss, pairs, catalog, cfg, progress=False)
    # one warm-up step, then linear decay over the 3 steps: each group at its own rate x 1, 2/3, 1/3
    base = {"query": 1e-3, "item": 1e-5, "new": 5e-2, "loss": 5e-2}
    assert len(lrs) == 3
    for got, factor in zip(lrs, [1.0, 2 / 3, 1 / 3]):
        assert got == pytest.approx({k: v * factor for k, v in base.items()})


def test_grad_accumulation_steps_half_as_often(catalog, pairs):
    plain = fit(toy(), ToyLoss(), pairs, catalog, base_cfg(epochs=1, batch_size=4), progress=False)
    accum = fit(toy(), ToyLoss(), pairs, catalog, base_cfg(epochs=1, batch_size=4, grad_accum=2), progress=False)
    assert plain["steps"] == 36 and accum["steps"] == 18  # 144 pairs / 4 = 36 batches
    assert plain["pairs_seen"] == accum["pairs_seen"] == 144
    # odd batch count: the epoch's last, incomplete accumulation window still makes a step
    odd = fit(
        toy(), ToyLoss(), pairs.iloc[:20], catalog, base_cfg(epochs=2, batch_size=4, grad_accum=2), progress=False
    )
    assert odd["steps"] == 2 * 3


def test_batches_shuffle_per_epoch_and_drop_single_pair(catalog, pairs):
    model = toy()
    fit(model, ToyLoss(), pairs.iloc[:17], catalog, base_cfg(epochs=2, batch_size=8), progress=False)
    sizes = [len(b) for b in model.seen_batches]
    assert sizes == [8, 8, 8, 8]  # 17 = 8 + 8 + 1: the lone pair has no negatives
    assert model.seen_batches[:2] != model.seen_batches[2:]  # a new order each epoch


def test_seeded_runs_are_identical(catalog, pairs):
    runs = []
    for junk in (1, 2):
        model = toy(seed=5)
        torch.manual_seed(100 + junk)  # a different global state: fit() must seed itself
        stats = fit(model, ToyLoss(), pairs, catalog, base_cfg(max_steps=6, seed=3), progress=False)
        runs.append((stats["step_losses"], weights(model)))
    assert runs[0][0] == runs[1][0] and same_weights(runs[0][1], runs[1][1])
    other = fit(toy(seed=5), ToyLoss(), pairs, catalog, base_cfg(max_steps=6, seed=4), progress=False)
    assert other["step_losses"] != runs[0][0]  # the seed does matter (shuffle, dropout)


def test_query_column_overrides_title(catalog, pairs):
    with_query = pairs.iloc[:4].assign(query=pd.Series(["red  shoes ", "", None, pd.NA], dtype=object))
    data = PairDataset(with_query, catalog)
    assert [data[i].query_text for i in range(4)] == ["red shoes", "w0a w0b t0", "w0a w0b t0", "w0a w0b t1"]
    assert PairDataset(pairs, catalog).fingerprint() == PairDataset(pairs, catalog.iloc[::-1]).fingerprint()
    assert PairDataset(pairs, catalog).fingerprint() != PairDataset(with_query, catalog).fingerprint()
    assert data[0].item["item_id"] == pairs.iloc[0]["related_item_id"]


def test_bad_pairs_are_rejected(catalog, pairs):
    with pytest.raises(ValueError, match="related_item_id"):
        fit(toy(), ToyLoss(), pairs[["item_id"]], catalog, base_cfg(), progress=False)
    bad = pd.DataFrame({"item_id": ["i1", "ghost"], "related_item_id": ["phantom", "i2"]})
    with pytest.raises(ValueError, match="2 item id.*not in the catalogue: ghost, phantom"):
        fit(toy(), ToyLoss(), bad, catalog, base_cfg(), progress=False)
    with pytest.raises(ValueError, match="validation pairs.*ghost"):
        fit(toy(), ToyLoss(), pairs, catalog, base_cfg(), valid_pairs=bad.iloc[1:], progress=False)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        fit(toy(), ToyLoss(), pairs.iloc[:1], catalog, base_cfg(), progress=False)


# ----------------------------------------------------------------------------- validation


def test_validation_pool_is_the_validation_items(catalog, pairs):
    valid = pairs.iloc[:24]  # groups 0 and 1
    evaluator, pool = validation_set(valid, catalog, EvalConfig(ks=(1, 5), mrr_k=5))
    assert sorted(pool["item_id"]) == sorted(set(valid["item_id"]) | set(valid["related_item_id"]))
    assert len(pool) == 8 and len(evaluator.target) == 24


def test_real_validation_tracks_history(catalog, pairs):
    eval_cfg = EvalConfig(ks=(1, 3), mrr_k=3, primary_metric="mrr@3")
    cfg = base_cfg(epochs=3)
    stats = fit(toy(), ToyLoss(), pairs, catalog, cfg, valid_pairs=pairs.iloc[::5], eval_cfg=eval_cfg, progress=False)
    assert [h["step"] for h in stats["history"]] == [18, 36, 54] and [h["epoch"] for h in stats["history"]] == [1, 2, 3]
    assert set(stats["history"][0]["metrics"]) == {"recall@1", "recall@3", "mrr@3"}
    best = max(stats["history"], key=lambda h: h["metrics"]["mrr@3"])
    assert stats["best_metric"] == best["metrics"]["mrr@3"] and stats["best_step"] == best["step"]
    model, bad_metric = toy(), EvalConfig(ks=(1, 3), mrr_k=3, primary_metric="recall@100")
    with pytest.raises(ValueError, match="primary_metric 'recall@100' is not one of mrr@3, recall@1, recall@3"):
        fit(model, ToyLoss(), pairs, catalog, cfg, valid_pairs=pairs.iloc[:8], eval_cfg=bad_metric, progress=False)
    assert model.seen_batches == []  # before any training


def scripted_metrics(monkeypatch, values):
    """score_encoder returns the next scripted recall@100; records the weights it was shown."""
    shown = []

    def fake(self, model, catalog, item_vecs=None, progress=True):
        shown.append(weights(model))
        return {"recall@100": values[len(shown) - 1], "mrr@10": 0.0}, None

    monkeypatch.setattr(RetrievalEvaluator, "score_encoder", fake)
    return shown


def test_early_stopping_restores_the_best_weights(catalog, pairs, monkeypatch, tmp_path):
    shown = scripted_metrics(monkeypatch, [0.1, 0.5, 0.3, 0.4, 0.9, 0.9])
    model = toy()
    cfg = base_cfg(epochs=5, eval_every=3, patience=2, checkpoint_every=1, keep_checkpoints=2)
    stats = fit(model, ToyLoss(), pairs, catalog, cfg, valid_pairs=pairs.iloc[:8], out_dir=tmp_path, progress=False)
    # validations at steps 3, 6, 9, 12: best 0.5 at step 6, then two without improvement -> stop
    assert [h["step"] for h in stats["history"]] == [3, 6, 9, 12]
    assert stats["stopped_early"] and stats["steps"] == 12
    assert stats["best_step"] == 6 and stats["best_metric"] == 0.5
    assert same_weights(weights(model), shown[1])
    assert not same_weights(weights(model), shown[3])  # the assertion above can fail
    # the best checkpoint is kept next to the last keep_checkpoints ones
    kept = sorted(int(d.name[5:]) for d in (tmp_path / "checkpoints").iterdir())
    assert kept == [6, 11, 12]
    on_disk = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert same_weights(on_disk, {k: v for k, v in shown[1].items() if k in on_disk})
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 6


def test_no_patience_runs_to_the_end_and_restores_best(catalog, pairs, monkeypatch):
    shown = scripted_metrics(monkeypatch, [0.2, 0.7, 0.1, 0.3])
    model = toy()
    cfg = base_cfg(epochs=2, eval_every=9)
    stats = fit(model, ToyLoss(), pairs, catalog, cfg, valid_pairs=pairs.iloc[:8], progress=False)
    assert not stats["stopped_early"] and stats["steps"] == 36 and len(stats["history"]) == 4
    assert stats["best_step"] == 18 and same_weights(weights(model), shown[1])


# ----------------------------------------------------------------------------- checkpoints, resume, logs


def test_checkpoints_are_safetensors_and_pruned(catalog, pairs, tmp_path):
    cfg = base_cfg(epochs=1, checkpoint_every=4, keep_checkpoints=2)
    fit(toy(), ToyLoss(), pairs, catalog, cfg, out_dir=tmp_path, progress=False)
    dirs = sorted((tmp_path / "checkpoints").iterdir(), key=lambda d: int(d.name[5:]))
    assert [d.name for d in dirs] == ["step-16", "step-18"]  # 4, 8, 12 pruned; 18 = end of the epoch
    files = {p.name for p in dirs[-1].iterdir()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json"} <= files
    state = json.loads((dirs[-1] / "trainer_state.json").read_text())
    assert state["step"] == 18 and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    assert len(state["step_losses"]) == 18 and state["config"]["batch_size"] == 8
    state = json.loads((dirs[0] / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and state["batch_in_epoch"] == 16


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_interruption_is_identical(catalog, pairs, tmp_path, caplog, grad_accum):
    cfg = base_cfg(epochs=3, batch_size=8, grad_accum=grad_accum, eval_every=4, checkpoint_every=5)
    valid, eval_cfg = pairs.iloc[::5], EvalConfig(ks=(1, 3), mrr_k=3, primary_metric="mrr@3")

    def run(model, loss, out, progress=False):
        return fit(model, loss, pairs, catalog, cfg, valid, eval_cfg, out_dir=tmp_path / out, progress=progress)

    model_a = toy(seed=1)
    a = run(model_a, ToyLoss(), "a")
    assert len(a["history"]) >= 5 and a["best_step"] is not None

    # run B crashes at its 32nd batch (epoch 2, batch 14), after checkpoints every 5 steps
    with pytest.raises(Interrupted):
        run(toy(seed=1), ToyLoss(fail_at=32), "b", progress=True)
    model_b = toy(seed=7)  # a new process would build a new model: the checkpoint overwrites it
    with caplog.at_level(logging.INFO, logger="tandem.training.trainer"):
        b = run(model_b, ToyLoss(), "b")
    last_ckpt = 30 if grad_accum == 1 else 15  # both in the middle of epoch 2 (its 12th batch)
    assert b["resumed_from"].endswith(f"step-{last_ckpt}") and "resuming from" in caplog.text
    assert b["steps"] == a["steps"] == 54 // grad_accum
    assert b["step_losses"] == a["step_losses"]  # exactly, step by step
    assert b["history"] == a["history"] and b["best_step"] == a["best_step"]
    assert b["pairs_seen"] == a["pairs_seen"] and b["epoch_losses"] == a["epoch_losses"]
    assert b["logit_scale"] == a["logit_scale"]
    assert same_weights(weights(model_b), weights(model_a))
    # a finished run is not trained again: same result, no new steps or validations
    model_c = toy(seed=9)
    again = run(model_c, ToyLoss(), "b")
    assert again["step_losses"] == a["step_losses"] and again["history"] == a["history"]
    assert same_weights(weights(model_c), weights(model_a))
    # checkpoints of a run on other pairs (late data: a rerun of the interval) are moved aside, not resumed
    old_steps = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*"))
    with caplog.at_level(logging.WARNING, logger="tandem.training.trainer"):
        other = fit(toy(), ToyLoss(), pairs.iloc[:100], catalog, cfg, out_dir=tmp_path / "b", progress=False)
    assert other["resumed_from"] is None and other["steps"] > 0 and "training from scratch" in caplog.text
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints.superseded").glob("step-*")) == old_steps
    rerun = fit(toy(), ToyLoss(), pairs.iloc[:100], catalog, cfg, out_dir=tmp_path / "b", progress=False)
    assert rerun["resumed_from"] is not None and rerun["step_losses"] == other["step_losses"]  # unchanged: resumes


def test_tensorboard_event_files(catalog, pairs, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = base_cfg(epochs=1, max_steps=4, tensorboard=True)
    fit(toy(), ToyLoss(), pairs, catalog, cfg, out_dir=tmp_path, progress=False)
    events = list((tmp_path / "tandem").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tandem"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/retrieval", "train/logit_scale", "lr/query", "lr/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- DDP


def run_processes(fn, args: tuple, nprocs: int = 2, timeout: float = 120.0) -> None:
    """`fn(rank, *args)` in `nprocs` forked processes (they reuse this process's imports:
    spawning fresh interpreters that import torch costs far more than the work); fails
    instead of hanging if they do not finish in time."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{nprocs} processes did not finish in {timeout:.0f} s")


def _fit_on_rank(rank: int, port: int, out: str) -> None:
    """One DDP process as `accelerate launch` / torchrun would start it (CPU, gloo): a run
    that crashes at its 25th batch, then the same run again, resumed from its checkpoint."""
    import os

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    )
    os.environ.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    catalog, pairs = make_catalog(), make_pairs()
    cfg = base_cfg(epochs=2, batch_size=4, eval_every=9, checkpoint_every=5)
    valid, eval_cfg = pairs.iloc[::5], EvalConfig()
    torch.manual_seed(3)
    try:
        fit(ToyEncoder(dropout=0.0), ToyLoss(fail_at=25), pairs, catalog, cfg, valid, eval_cfg, f"{out}/run", False)
    except Interrupted:
        pass
    model = ToyEncoder(dropout=0.0)
    stats = fit(model, ToyLoss(), pairs, catalog, cfg, valid, eval_cfg, out_dir=f"{out}/run", progress=False)
    torch.save({"stats": stats, "weights": weights(model)}, f"{out}/rank{rank}.pt")


def test_two_processes_train_like_one_with_the_global_batch(tmp_path, monkeypatch):
    """DDP over 2 processes with 4 pairs each = 1 process with the same 8 pairs: the sampler's
    batches of 4 go to the ranks in turn, so the gathered candidates are the same 8 items in
    the same order; DDP averages the gradients (the logit scale's too). Also on 2 processes:
    checkpoints, resuming in the middle of an epoch, validation results and the best weights
    reaching every process."""
    import socket

    scripted_metrics(monkeypatch, [0.2, 0.7, 0.1, 0.3])  # best at step 18 of 36, on every process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_processes(_fit_on_rank, (port, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    torch.manual_seed(3)
    model = ToyEncoder(dropout=0.0)
    valid, eval_cfg = make_pairs().iloc[::5], EvalConfig()
    cfg = base_cfg(epochs=2, batch_size=8, eval_every=9)
    one = fit(model, ToyLoss(), make_pairs(), make_catalog(), cfg, valid, eval_cfg, progress=False)
    assert {p.name for p in (tmp_path / "run" / "checkpoints" / "step-36").iterdir()} >= {
        "random_states_0.pkl",
        "random_states_1.pkl",
        "model.safetensors",
        "trainer_state.json",
    }
    for r in ranks:
        stats = r["stats"]
        assert stats["num_processes"] == 2 and stats["resumed_from"].endswith("step-20")
        assert stats["steps"] == one["steps"] == 36 and stats["pairs_seen"] == one["pairs_seen"]
        np.testing.assert_allclose(stats["step_losses"], one["step_losses"], rtol=1e-4, atol=1e-5)
        assert stats["loss_parts"]["retrieval"] == pytest.approx(one["loss_parts"]["retrieval"], rel=1e-4)
        assert stats["history"] == one["history"] and stats["best_step"] == one["best_step"] == 18
        for k, v in r["weights"].items():
            torch.testing.assert_close(v, weights(model)[k], rtol=1e-3, atol=1e-4)
