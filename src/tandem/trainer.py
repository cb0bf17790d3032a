"""Contrastive training of any `Encoder` on behaviour pairs, on `accelerate`.

One loop for every model family and every machine: CPU, one GPU (bf16 autocast), several
GPUs with DDP (`accelerate launch` / `torchrun`). The model turns a batch into embeddings,
the loss module turns them into a number and gathers the in-batch negatives across devices
(`tandem.losses.gather`), so nothing here is specific to a family or to DDP.

    stats = fit(model, loss, pairs, catalog, TrainConfig(...), valid_pairs=valid, out_dir="run/train")

- Batches: `cfg.batch_size` pairs per device and step, shuffled per epoch by a generator
  seeded with `cfg.seed + epoch`; a last batch of one pair is dropped (no negatives). On
  several processes accelerate keeps the batches even (the last ones are filled up with
  pairs from the start of the epoch), which `gather` needs.
- Optimisation: AdamW over the model's parameter groups (`Encoder.param_groups`, one
  learning rate per part) plus a "loss" group (the logit scale, lr_new, no weight decay);
  linear warm-up then linear decay over the optimizer steps (after gradient accumulation).
- Validation (optional): retrieval metrics on the validation pairs, ranked among the
  validation items only (the pool is the catalogue rows of the items in `valid_pairs`);
  the best state by `eval_cfg.primary_metric` is kept and restored at the end, `patience`
  stops early.
- With `out_dir`: resumable checkpoints under `out_dir/checkpoints/step-N/` (accelerate
  state in safetensors + `trainer_state.json`); a new `fit` on the same folder resumes from
  the latest one and ends with the same weights as an uninterrupted run. TensorBoard logs
  under `out_dir/tandem/`, the best weights in `out_dir/best/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    broadcast_object_list,
    gather_object,
    is_tensorboard_available,
    set_seed,
)
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from tandem.config import EvalConfig, TrainConfig
from tandem.evaluate import RetrievalEvaluator
from tandem.metrics import retrieval_metrics
from tandem.models.base import Encoder, PairExample, item_key
from tandem.text import query_text

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"
WEIGHTS_FILE = "model.safetensors"
TRACKER_PROJECT = "tandem"


# ----------------------------------------------------------------------------- data


def _blank(value: object) -> bool:
    """None, NaN, pd.NA or a string of whitespace."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


class PairDataset(Dataset):
    """Pairs resolved against the catalogue; item `i` is the `PairExample` of pair row `i`.

    Ids are compared as strings. A non-empty `query` cell (a search followed by a click) is
    that pair's query text, otherwise the query item's title.
    """

    def __init__(self, pairs: pd.DataFrame, catalog: pd.DataFrame, what: str = "pairs"):
        missing_cols = [c for c in ("item_id", "related_item_id") if c not in pairs.columns]
        if missing_cols:
            raise ValueError(
                f"{what} lack column(s) {', '.join(missing_cols)}; expected item_id, related_item_id "
                "(optional: query, the search text that led to the click)"
            )
        if "item_id" not in catalog.columns:
            raise ValueError("the catalogue has no item_id column")
        ids = pd.Index(catalog["item_id"].astype(str))
        if not ids.is_unique:
            dup = ids[ids.duplicated()].unique()[:5].tolist()
            raise ValueError(f"the catalogue has duplicate item_id values, e.g. {', '.join(dup)}")
        left = pairs["item_id"].astype(str)
        right = pairs["related_item_id"].astype(str)
        self.left = ids.get_indexer(left)
        self.right = ids.get_indexer(right)
        missing = sorted(set(left[self.left < 0]) | set(right[self.right < 0]))
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(
                f"{len(missing)} item id(s) of the {what} are not in the catalogue: {shown}; "
                "filter the pairs to catalogue items before training"
            )
        self.ids = ids.to_numpy(dtype=object)
        self.rows = catalog.to_dict("records")
        self.keys = [item_key(i) for i in ids]
        titles = [r.get("title", "") for r in self.rows]
        queries = pairs["query"].tolist() if "query" in pairs.columns else [None] * len(pairs)
        self.queries = [query_text(titles[li] if _blank(q) else q) for q, li in zip(queries, self.left.tolist())]

    def __len__(self) -> int:
        return len(self.queries)

    def fingerprint(self) -> str:
        """Hash of the pairs as trained on (ids and query texts, in order), to tell runs on
        other data apart."""
        h = hashlib.blake2b(digest_size=16)
        for column in (self.ids[self.left], self.ids[self.right], self.queries):
            h.update("\x00".join(column).encode())
            h.update(b"\x01")
        return h.hexdigest()

    def __getitem__(self, i: int) -> PairExample:
        li, ri = int(self.left[i]), int(self.right[i])
        return PairExample(
            query_text=self.queries[i],
            query_item=self.rows[li],
            item=self.rows[ri],
            query_key=self.keys[li],
            item_key=self.keys[ri],
        )


class PairBatchSampler(Sampler[list[int]]):
    """Shuffled index batches of `batch_size`; the order of epoch e depends only on
    `seed + e` (set `.epoch` before iterating), so a resumed run sees the same batches.
    A last batch of fewer than 2 pairs is dropped. (Not `set_epoch`: accelerate would set
    it from its own iteration counter.)"""

    drop_last = False  # read by accelerate's BatchSamplerShard: it fills the last batches up evenly

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def batches(self) -> list[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return [b.tolist() for b in perm.split(self.batch_size) if len(b) >= 2]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return self.n // self.batch_size + (self.n % self.batch_size >= 2)


class _Collate:
    """(pairs in the batch, model.collate(examples)): the trainer counts pairs without
    knowing what the model's batch holds."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        return len(examples), self.collate(examples)


# ----------------------------------------------------------------------------- model + loss


class TrainStep(nn.Module):
    """The model and its loss as one module: what accelerate prepares (one DDP wrapper, so
    the logit scale's gradient is averaged across processes like every other), checkpoints
    and runs under autocast. `forward(batch) -> (total loss, parts)`."""

    def __init__(self, model: Encoder, loss: nn.Module):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        return self.loss(self.model(batch))


def unwrap(module: nn.Module) -> nn.Module:
    """The caller's model inside whatever wraps it here (DDP, torch.compile, TrainStep)."""
    while True:
        if isinstance(module, TrainStep):
            module = module.model
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel) or hasattr(module, "module"):
            module = module.module
        else:
            return module


def warmup_linear(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over `warmup_steps`, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps + 1))

    return factor


def optimizer_groups(model: Encoder, loss: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The model's groups (trainable parameters only) plus "loss" (lr_new, no weight decay)."""
    groups = []
    for g in model.param_groups(cfg):
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({**g, "params": params})
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"name": "loss", "params": loss_params, "lr": cfg.lr_new, "weight_decay": 0.0})
    seen: set[int] = set()
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if ids & seen:
            raise ValueError(f"parameter group {g.get('name')!r} shares parameters with another group")
        seen |= ids
    left_out = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in seen)
    if left_out:
        log.warning("%d trainable model parameters are in no parameter group: they will not change", left_out)
    return groups


def logit_scale(loss: nn.Module) -> float | None:
    """The loss's logit scale (a `.scale` module, callable or tensor), if it has one."""
    scale = getattr(loss, "scale", None)
    if scale is None:
        return None
    value = scale() if callable(scale) else scale
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the state dict with tied tensors stored once (safetensors refuses shared ones)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        ident = _ident(v)
        if ident not in seen:
            seen.add(ident)
            out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _ident(v: torch.Tensor) -> tuple:
    return (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())


def _restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` (tied tensors possibly stored under one of their names only)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    live = model.state_dict()
    loaded = {_ident(live[k]) for k in weights if k in live}
    untied = [k for k in missing if _ident(live[k]) not in loaded]
    if unexpected or untied:
        raise ValueError(f"saved weights do not fit the model: missing {untied[:5]}, unexpected {unexpected[:5]}")


# ----------------------------------------------------------------------------- state


@dataclass
class TrainerState:
    """Everything besides accelerate's state that a resumed run needs (trainer_state.json)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # 0-based epoch in progress
    batch_in_epoch: int = 0  # batches of that epoch already trained on (per process)
    total_steps: int = 0
    pairs_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_validations: int = 0  # validations since the last improvement (patience counter)
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)  # [{step, epoch (1-based), metrics}]
    step_losses: list[float] = field(default_factory=list)
    step_epochs: list[int] = field(default_factory=list)  # 1-based epoch of each step
    loss_parts: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    data: str = ""  # PairDataset.fingerprint() of the training pairs


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    found = []
    for d in (out / CHECKPOINTS).glob("step-*"):
        if d.is_dir() and (d / STATE_FILE).is_file() and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


def _fresh_accelerate_state() -> None:
    """Forget the accelerate state a previous `fit` in this process left (mixed precision,
    accumulation, dataloader references) so that each call is configured by its own cfg;
    the process-group state is kept when a distributed run is on."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())
    GradientState._reset_state()


def _validation_set(valid_pairs: pd.DataFrame, catalog: pd.DataFrame, eval_cfg: EvalConfig):
    """(evaluator, pool): the pool is the catalogue rows of the items in the validation pairs."""
    data = PairDataset(valid_pairs, catalog, "validation pairs")
    used = np.unique(np.concatenate([data.left, data.right]))
    pool = catalog.iloc[used].reset_index(drop=True)
    ids = catalog["item_id"].to_numpy()
    resolved = pd.DataFrame({"item_id": ids[data.left], "related_item_id": ids[data.right]})
    return RetrievalEvaluator.from_pairs(resolved, pool, eval_cfg), pool


# ----------------------------------------------------------------------------- fit


def fit(
    model: Encoder,
    loss: nn.Module,
    pairs: pd.DataFrame,
    catalog: pd.DataFrame,
    cfg: TrainConfig,
    valid_pairs: pd.DataFrame | None = None,
    eval_cfg: EvalConfig = EvalConfig(),
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train `model` in place (it ends in eval mode on the training device, with the best
    validated weights when `valid_pairs` are given); returns training statistics.

    `loss(model(batch)) -> (total, {part: value})`. With `out_dir`, an interrupted run is
    resumed from its latest checkpoint by calling `fit` again with the same arguments.
    """
    started = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    data = PairDataset(pairs, catalog)
    if len(data) < 2:
        raise ValueError(f"training needs at least 2 pairs (in-batch negatives), got {len(data)}")
    evaluator, valid_catalog = None, None
    if valid_pairs is not None:
        evaluator, valid_catalog = _validation_set(valid_pairs, catalog, eval_cfg)
        names = sorted(retrieval_metrics(np.zeros(1, dtype=np.int64), eval_cfg.ks, eval_cfg.mrr_k))
        if eval_cfg.primary_metric not in names:  # checked before training, on every process
            raise ValueError(f"eval.primary_metric {eval_cfg.primary_metric!r} is not one of {', '.join(names)}")
    if cfg.device not in ("", "cpu", "cuda"):
        raise ValueError(f"train.device: {cfg.device!r} is not '', 'cpu' or 'cuda' (GPUs are chosen by accelerate)")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no GPU is visible")

    _fresh_accelerate_state()
    tensorboard = bool(cfg.tensorboard and out is not None)
    if tensorboard and not is_tensorboard_available():
        log.warning("tensorboard is not installed: no training curves (pip install tensorboard)")
        tensorboard = False
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg),
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(out) if out is not None else None,
        # the scheduler is stepped once per optimizer step by the loop below (accelerate's
        # default steps it num_processes times, for schedules counted in single-process steps)
        step_scheduler_with_optimizer=False,
        # a family may leave parameters without gradient in some batches (no images, no MLM
        # targets, an unused auxiliary head); DDP without this flag fails on those. Frozen
        # parameters (requires_grad=False) are ignored by DDP either way.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    main = accelerator.is_main_process
    nproc = accelerator.num_processes
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)

    optimizer = torch.optim.AdamW(optimizer_groups(model, loss, cfg))
    group_names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
    sampler = PairBatchSampler(len(data), cfg.batch_size, cfg.seed)
    # its own generator: creating an iterator draws a seed from it, not from the global RNG
    # (which dropout uses), so starting an epoch mid-way on resume draws nothing extra
    loader = DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=_Collate(model.collate),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    batches_per_epoch = math.ceil(len(sampler) / nproc)  # per process, after accelerate evens them out
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = max(1, math.ceil(cfg.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(warmup_steps, total_steps))
    step_module = TrainStep(model, loss)
    step_module, optimizer, train_loader, scheduler = accelerator.prepare(step_module, optimizer, loader, scheduler)
    if len(train_loader) != batches_per_epoch:  # accelerate changed how it shards batches
        raise RuntimeError(f"expected {batches_per_epoch} batches per process, the data loader has {len(train_loader)}")

    state = TrainerState(total_steps=total_steps, config=asdict(cfg), data=data.fingerprint())
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from = None
    if out is not None and main:
        for stale in (out / CHECKPOINTS).glob(".tmp-step-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    if out is not None and _checkpoints(out):
        resumed_from = _checkpoints(out)[-1][1]
        saved = TrainerState(**json.loads((resumed_from / STATE_FILE).read_text()))
        if saved.data and saved.data != state.data:
            raise ValueError(
                f"{out} holds checkpoints of a run on other training pairs ({resumed_from}); "
                "train into a new folder or delete its checkpoints/ to start over"
            )
        accelerator.load_state(str(resumed_from))
        state = saved
        changed = sorted(k for k, v in asdict(cfg).items() if state.config.get(k) != v)
        if main:
            log.info(
                "resuming from %s (step %d, epoch %d, batch %d)",
                resumed_from,
                state.step,
                state.epoch + 1,
                state.batch_in_epoch,
            )
            if changed:
                log.warning("training settings changed since the checkpoint: %s", ", ".join(changed))
        if state.best_step is not None and main:
            best_weights = _best_from_checkpoint(out, state.best_step)
        state.total_steps, state.config = total_steps, asdict(cfg)
    if tensorboard:
        accelerator.init_trackers(TRACKER_PROJECT, config={**asdict(cfg), "num_processes": nproc})

    primary = eval_cfg.primary_metric

    def validate(epoch: int) -> None:
        nonlocal best_weights
        record = None
        if main:
            with accelerator.autocast():
                metrics, _ = evaluator.score_encoder(model, valid_catalog, progress=False)
            metrics = {k: float(v) for k, v in metrics.items()}
            improved = state.best_metric is None or metrics[primary] > state.best_metric
            if improved:
                best_weights = _weights(model)
            record = {"step": state.step, "epoch": epoch + 1, "metrics": metrics, "improved": improved}
        if nproc > 1:
            record = broadcast_object_list([record])[0]
        improved = record.pop("improved")
        state.history.append(record)
        if improved:
            state.best_metric, state.best_step, state.bad_validations = record["metrics"][primary], state.step, 0
        else:
            state.bad_validations += 1
        if cfg.patience > 0 and state.bad_validations >= cfg.patience:
            state.stopped_early = True
        accelerator.log({f"valid/{k}": v for k, v in record["metrics"].items()}, step=state.step)
        if main:
            log.info(
                "step %d (epoch %d): %s %.4f (best %.4f at step %d)%s",
                state.step,
                epoch + 1,
                primary,
                record["metrics"][primary],
                state.best_metric,
                state.best_step,
                f"; stopping: no improvement in {cfg.patience} validations" if state.stopped_early else "",
            )

    def checkpoint() -> None:
        root = out / CHECKPOINTS
        final, tmp = root / f"step-{state.step}", root / f".tmp-step-{state.step}"
        if main and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)  # complete checkpoints only: trainer_state.json is in it
            keep = {s for s, _ in _checkpoints(out)[-max(1, cfg.keep_checkpoints) :]} | {state.best_step}
            for s, d in _checkpoints(out):
                if s not in keep:
                    shutil.rmtree(d)
        accelerator.wait_for_everyone()

    session_pairs = 0
    bar = tqdm(
        total=total_steps,
        initial=min(state.step, total_steps),
        desc="train",
        unit="step",
        disable=not (progress and main),
    )
    if main:
        log.info(
            "training on %d pairs: %d steps (%d per epoch), batch %d x %d process(es) x %d accumulation, %s, "
            "mixed precision %s",
            len(data),
            total_steps,
            steps_per_epoch,
            cfg.batch_size,
            nproc,
            cfg.grad_accum,
            accelerator.device,
            accelerator.mixed_precision,
        )
    try:
        step_module.train()
        for epoch in range(state.epoch, cfg.epochs):
            if state.stopped_early or state.step >= total_steps:
                break
            sampler.epoch = epoch
            done = state.batch_in_epoch
            epoch_loader = accelerator.skip_first_batches(train_loader, done) if done else train_loader
            window: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]] = []
            for n_pairs, batch in epoch_loader:
                with accelerator.accumulate(step_module):
                    total, parts = step_module(batch)
                    accelerator.backward(total)
                    if accelerator.sync_gradients and cfg.grad_clip > 0:
                        accelerator.clip_grad_norm_(step_module.parameters(), cfg.grad_clip)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                done += 1
                session_pairs += n_pairs * nproc
                window.append((n_pairs, total.detach().float(), {k: v.detach().float() for k, v in parts.items()}))
                if not accelerator.sync_gradients:
                    continue

                # one optimizer step done: losses are means over its accumulation window and processes
                step_loss = accelerator.reduce(torch.stack([t for _, t, _ in window]).mean(), reduction="mean").item()
                step_parts = _mean_parts([p for _, _, p in window], accelerator)
                state.step += 1
                state.pairs_seen += sum(n for n, _, _ in window) * nproc
                state.step_losses.append(step_loss)
                state.step_epochs.append(epoch + 1)
                state.loss_parts.update(step_parts)
                window = []
                scale = logit_scale(loss)
                logs = {"train/loss": step_loss, **{f"train/{k}": v for k, v in step_parts.items()}}
                logs.update({f"lr/{n}": g["lr"] for n, g in zip(group_names, optimizer.param_groups)})
                if scale is not None:
                    logs["train/logit_scale"] = scale
                accelerator.log(logs, step=state.step)
                bar.update()
                bar.set_postfix(loss=f"{step_loss:.4f}")

                epoch_end = done >= batches_per_epoch
                finishing = state.step >= total_steps
                if evaluator is not None and (
                    (cfg.eval_every > 0 and state.step % cfg.eval_every == 0)
                    or (cfg.eval_every == 0 and epoch_end)
                    or finishing
                ):
                    improved_before = state.best_step
                    validate(epoch)
                    improved = state.best_step != improved_before
                else:
                    improved = False
                stop = finishing or state.stopped_early
                state.epoch, state.batch_in_epoch = (epoch + 1, 0) if epoch_end else (epoch, done)
                if epoch_end and main:
                    ep = [x for x, e in zip(state.step_losses, state.step_epochs) if e == epoch + 1]
                    log.info("epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, cfg.epochs, np.mean(ep), len(ep))
                if out is not None and (
                    epoch_end
                    or stop
                    or improved
                    or (cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0)
                ):
                    checkpoint()
                if stop:
                    break
    finally:
        bar.close()
        for tracker in accelerator.trackers:  # not end_training(): it would end the caller's process group
            tracker.finish()

    if state.best_step is not None:  # early stopping or not: the model ends with the best validated weights
        if main:  # only the main process holds them (one CPU copy per machine, not per process)
            if best_weights is None:
                best_weights = _best_from_checkpoint(out, state.best_step)
            _restore(model, best_weights)
            if out is not None:
                (out / BEST_DIR).mkdir(parents=True, exist_ok=True)
                save_file(best_weights, str(out / BEST_DIR / WEIGHTS_FILE), metadata={"format": "pt"})
                best = {"step": state.best_step, "metric": primary, "value": state.best_metric}
                (out / BEST_DIR / "best.json").write_text(json.dumps(best, indent=1))
            if state.best_step != state.step:
                log.info("restored the best weights (step %d, %s %.4f)", state.best_step, primary, state.best_metric)
        if nproc > 1:  # every process ends with the same model
            for tensor in model.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    accelerator.wait_for_everyone()
    model.eval()

    seconds = time.perf_counter() - started
    device = accelerator.device
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    epochs_seen = sorted(set(state.step_epochs))
    return {
        "steps": state.step,
        "pairs_seen": state.pairs_seen,
        "final_loss": state.step_losses[-1] if state.step_losses else float("nan"),
        "epoch_losses": [
            float(np.mean([x for x, e in zip(state.step_losses, state.step_epochs) if e == ep])) for ep in epochs_seen
        ],
        "step_losses": state.step_losses,
        "loss_parts": state.loss_parts,
        "seconds": seconds,
        "pairs_per_s": session_pairs / seconds if seconds > 0 else float("nan"),
        "peak_memory_mb": peak_mb,
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
        "num_processes": nproc,
        "logit_scale": logit_scale(loss),
        "history": state.history,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "stopped_early": state.stopped_early,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
    }


def _mean_parts(window: list[dict[str, torch.Tensor]], accelerator: Accelerator) -> dict[str, float]:
    """Mean of each loss part over the micro-batches (of every process) that had it: a family
    may leave a part out of a batch (HotelMatch: no masked geography tokens), so processes
    can disagree on which parts exist and the parts travel as Python objects."""
    sums: dict[str, list[float]] = {}
    for parts in window:
        for k, v in parts.items():
            acc = sums.setdefault(k, [0.0, 0])
            acc[0], acc[1] = acc[0] + float(v), acc[1] + 1
    if accelerator.num_processes > 1:
        merged: dict[str, list[float]] = {}
        for local in gather_object([sums]):
            for k, (total, count) in local.items():
                acc = merged.setdefault(k, [0.0, 0])
                acc[0], acc[1] = acc[0] + total, acc[1] + count
        sums = merged
    return {k: total / count for k, (total, count) in sorted(sums.items())}


def _best_from_checkpoint(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The model's weights in the checkpoint of step `step` (kept by the pruning rule)."""
    path = out / CHECKPOINTS / f"step-{step}" / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"the checkpoint of the best step {step} is missing ({path}); cannot restore the best weights")
    prefix = "model."
    weights = {}
    for k, v in load_file(str(path)).items():
        k = k.removeprefix("module.")  # saved from a DDP wrapper
        if k.startswith(prefix):
            weights[k[len(prefix) :]] = v
    return weights
