"""Contrastive training of any `Encoder` on behaviour pairs, on `accelerate`.

One loop for every model family and every machine: CPU, one GPU (bf16 autocast), several
GPUs with DDP (`accelerate launch` / `torchrun`). The model turns a batch into embeddings,
the loss module turns them into a number and gathers the in-batch negatives across devices
(`tandem.models.losses.gather`), so nothing here is specific to a family or to DDP.

    stats = fit(model, loss, pairs, catalog, TrainConfig(...), valid_pairs=valid, out_dir="run/train")

- Batches: `cfg.batch_size` pairs per device and step, shuffled per epoch by a generator
  seeded with `cfg.seed + epoch`; a last batch of one pair is dropped (no negatives). On
  several processes accelerate keeps the batches even (the last ones are filled up with
  pairs from the start of the epoch), which `gather` needs.
- Optimisation: AdamW over the model's parameter groups (`Encoder.param_groups`, one
  learning rate per part) plus a "loss" group (the logit scale, lr_new, no weight decay);
  linear warm-up then linear decay over the optimizer steps (after gradient accumulation).
- Validation (optional): retrieval metrics on held-out real search queries (`query_valid`) when
  the test would use them (a query-tower model, hotelmatch protocol, at least
  `eval_cfg.min_query_pairs` pairs), else on the validation item pairs
  (`tandem.training.data.choose_validation`; `validated_on` in the statistics), ranked among the
  validation items only (the catalogue rows of the items in them); the best state by
  `eval_cfg.primary_metric` is kept and restored at the end, `patience` stops early.
- With `out_dir`: resumable checkpoints under `out_dir/checkpoints/step-N/` (accelerate
  state in safetensors + `trainer_state.json`); a new `fit` on the same folder resumes from
  the latest one and ends with the same weights as an uninterrupted run. TensorBoard logs
  under `out_dir/tandem/`, the best weights in `out_dir/best/`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    broadcast_object_list,
    is_tensorboard_available,
    set_seed,
)
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tandem.core.config import EvalConfig, TrainConfig
from tandem.evaluation.metrics import retrieval_metrics
from tandem.models.base import Encoder
from tandem.training import checkpoints as ckpt
from tandem.training.data import Collate, PairBatchSampler, PairDataset, choose_validation
from tandem.training.negatives import ExtraNegatives, set_logq
from tandem.training.optim import (
    TrainStep,
    fresh_accelerate_state,
    logit_scale,
    mean_parts,
    mixed_precision,
    optimizer_groups,
    warmup_linear,
)
from tandem.training.state import TrainerState, statistics

log = logging.getLogger(__name__)
TRACKER_PROJECT = "tandem"


def fit(*args, **kwargs) -> dict:
    """`Trainer(*args, **kwargs).fit()`: train `model` in place; returns training statistics.

    The arguments are the Trainer's: (model, loss, pairs, catalog, cfg, valid_pairs=None,
    eval_cfg=EvalConfig(), out_dir=None, progress=True, hard_negatives=None, query_valid=None)."""
    return Trainer(*args, **kwargs).fit()


class Trainer:
    """One `fit`: checks its inputs on construction; `fit()` sets accelerate up, resumes, runs the
    epochs (optimizer steps, validation, checkpoints), restores the best weights and returns statistics."""

    def __init__(
        self,
        model: Encoder,
        loss: nn.Module,
        pairs: pd.DataFrame,
        catalog: pd.DataFrame,
        cfg: TrainConfig,
        valid_pairs: pd.DataFrame | None = None,
        eval_cfg: EvalConfig = EvalConfig(),
        out_dir: str | Path | None = None,
        progress: bool = True,
        hard_negatives: Mapping[str, Sequence[int]] | None = None,
        query_valid: pd.DataFrame | None = None,
    ):
        """`model` ends in eval mode on the training device, with the best validated weights when
        `valid_pairs` are given. `loss(model(batch)) -> (total, {part: value})`. With `out_dir`, an
        interrupted run is resumed from its latest checkpoint by training again with the same arguments.
        `hard_negatives`: query text -> catalogue rows (tandem.training.negatives.ExtraNegatives). `query_valid`:
        held-out query -> item pairs (tandem.pairs.queries), validated on instead of `valid_pairs` when enough."""
        self.started = time.perf_counter()
        self.model, self.loss, self.cfg, self.eval_cfg, self.progress = model, loss, cfg, eval_cfg, progress
        self.out = Path(out_dir) if out_dir is not None else None
        self.data = PairDataset(pairs, catalog)
        if len(self.data) < 2:
            raise ValueError(f"training needs at least 2 pairs (in-batch negatives), got {len(self.data)}")
        if cfg.uniform_negatives + cfg.hard_negatives > len(self.data.rows):
            raise ValueError(
                f"train.uniform_negatives + train.hard_negatives ({cfg.uniform_negatives} + {cfg.hard_negatives}) "
                f"exceed the catalogue's {len(self.data.rows)} items; lower them"
            )
        self.hard_negatives = hard_negatives or {}
        self.logq = set_logq(loss, self.data, cfg)
        symmetric = bool(getattr(model, "symmetric", False))
        validation = choose_validation(valid_pairs, query_valid, catalog, eval_cfg, symmetric, pairs)
        self.evaluator, self.valid_catalog, self.validation = validation
        if self.evaluator is not None:
            names = sorted(retrieval_metrics(np.zeros(1, dtype=np.int64), eval_cfg.ks, eval_cfg.mrr_k))
            if eval_cfg.primary_metric not in names:  # checked before training, on every process
                raise ValueError(f"eval.primary_metric {eval_cfg.primary_metric!r} is not one of {', '.join(names)}")
        if cfg.device not in ("", "cpu", "cuda"):
            raise ValueError(f"train.device: {cfg.device!r} is not '', 'cpu' or 'cuda' (GPUs are chosen by accelerate)")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no GPU is visible")
        self.primary = eval_cfg.primary_metric
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.resumed_from: Path | None = None
        self.session_pairs = 0

    # ------------------------------------------------------------------------- set-up
    def _prepare(self) -> None:
        cfg, out = self.cfg, self.out
        fresh_accelerate_state()
        self.tensorboard = bool(cfg.tensorboard and out is not None)
        if self.tensorboard and not is_tensorboard_available():
            log.warning("tensorboard is not installed: no training curves (pip install tensorboard)")
            self.tensorboard = False
        acc = self.accelerator = Accelerator(
            mixed_precision=mixed_precision(cfg),
            gradient_accumulation_steps=cfg.grad_accum,
            cpu=cfg.device == "cpu",
            log_with="tensorboard" if self.tensorboard else None,
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
        self.main, self.nproc = acc.is_main_process, acc.num_processes
        if acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(acc.device)

        optimizer = torch.optim.AdamW(optimizer_groups(self.model, self.loss, cfg))
        self.group_names = [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]
        self.sampler = PairBatchSampler(len(self.data), cfg.batch_size, cfg.seed)
        extra = ExtraNegatives(
            self.model, self.data, cfg.uniform_negatives, cfg.seed, cfg.hard_negatives, self.hard_negatives
        )
        self.extra, negatives = extra, (extra if len(extra) else None)
        # its own generator: creating an iterator draws a seed from it, not from the global RNG
        # (which dropout uses), so starting an epoch mid-way on resume draws nothing extra
        loader = DataLoader(
            self.data,
            batch_sampler=self.sampler,
            collate_fn=Collate(self.model.collate, negatives),
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.batches_per_epoch = math.ceil(len(self.sampler) / self.nproc)  # per process, once accelerate evens them
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        warmup_steps = max(1, math.ceil(cfg.warmup_fraction * self.total_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(warmup_steps, self.total_steps))
        prepared = acc.prepare(TrainStep(self.model, self.loss), optimizer, loader, scheduler)
        self.step_module, self.optimizer, self.train_loader, self.scheduler = prepared
        if len(self.train_loader) != self.batches_per_epoch:  # accelerate changed how it shards batches
            raise RuntimeError(
                f"expected {self.batches_per_epoch} batches per process, the data loader has {len(self.train_loader)}"
            )
        self.state = TrainerState(total_steps=self.total_steps, config=asdict(cfg), data=self.data.fingerprint())

    def _resume(self) -> None:
        """Continue from the latest complete checkpoint in `out_dir`, if there is one."""
        out, cfg, acc = self.out, self.cfg, self.accelerator
        if out is not None and self.main:
            ckpt.clear_partial(out)
            aside = ckpt.set_aside_if_other_data(out, self.state.data)
            if aside is not None:  # e.g. an interval rerun after late data: its pairs changed
                log.warning("%s held checkpoints of other pairs: moved to %s; training from scratch", out, aside)
        acc.wait_for_everyone()
        if out is None or not ckpt.checkpoints(out):
            return
        self.resumed_from = ckpt.checkpoints(out)[-1][1]
        saved = TrainerState(**json.loads((self.resumed_from / ckpt.STATE_FILE).read_text()))
        acc.load_state(str(self.resumed_from))
        state = self.state = saved
        changed = sorted(k for k, v in asdict(cfg).items() if state.config.get(k) != v)
        if self.main:
            log.info(
                "resuming from %s (step %d, epoch %d, batch %d)",
                self.resumed_from,
                state.step,
                state.epoch + 1,
                state.batch_in_epoch,
            )
            if changed:
                log.warning("training settings changed since the checkpoint: %s", ", ".join(changed))
        if state.best_step is not None and self.main:
            self.best_weights = ckpt.best_from_checkpoint(out, state.best_step)
        state.total_steps, state.config = self.total_steps, asdict(cfg)

    # ------------------------------------------------------------------------- the loop
    def fit(self) -> dict:
        self._prepare()
        self._resume()
        cfg, acc, state = self.cfg, self.accelerator, self.state
        if self.tensorboard:
            acc.init_trackers(TRACKER_PROJECT, config={**asdict(cfg), "num_processes": self.nproc})
        self.bar = tqdm(
            total=self.total_steps,
            initial=min(state.step, self.total_steps),
            desc="train",
            unit="step",
            disable=not (self.progress and self.main),
        )
        if self.main:
            log.info(
                "training on %d pairs: %d steps (%d per epoch), batch %d x %d process(es) x %d accumulation, %s, "
                "mixed precision %s",
                len(self.data),
                self.total_steps,
                self.steps_per_epoch,
                cfg.batch_size,
                self.nproc,
                cfg.grad_accum,
                acc.device,
                acc.mixed_precision,
            )
        try:
            self.step_module.train()
            for epoch in range(state.epoch, cfg.epochs):
                if state.stopped_early or state.step >= self.total_steps:
                    break
                self._epoch(epoch)
        finally:
            self.bar.close()
            for tracker in acc.trackers:  # not end_training(): it would end the caller's process group
                tracker.finish()
        self._restore_best()
        seconds = time.perf_counter() - self.started
        stats = statistics(self.state, self.accelerator, seconds, self.session_pairs, self.loss, self.resumed_from)
        stats |= self.validation  # which validation chose the best weights: real queries or item pairs
        hard = {"hard_negatives_drawn": self.extra.drawn} if self.extra.hard else {}  # this session's batches
        return stats | {"logq": self.logq, "uniform_negatives": self.cfg.uniform_negatives, **hard}

    def _epoch(self, epoch: int) -> None:
        """Train on the rest of `epoch`'s batches; returns early when training stops."""
        acc, cfg = self.accelerator, self.cfg
        self.sampler.epoch = epoch
        done = self.state.batch_in_epoch
        epoch_loader = acc.skip_first_batches(self.train_loader, done) if done else self.train_loader
        window: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]] = []
        for n_pairs, batch in epoch_loader:
            with acc.accumulate(self.step_module):
                total, parts = self.step_module(batch)
                acc.backward(total)
                if acc.sync_gradients and cfg.grad_clip > 0:
                    acc.clip_grad_norm_(self.step_module.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            done += 1
            self.session_pairs += n_pairs * self.nproc
            window.append((n_pairs, total.detach().float(), {k: v.detach().float() for k, v in parts.items()}))
            if not acc.sync_gradients:
                continue
            self._log_step(epoch, window)
            window = []
            if self._after_step(epoch, done):
                return

    def _log_step(self, epoch: int, window: list) -> None:
        """One optimizer step done: losses are means over its accumulation window and processes."""
        acc, state = self.accelerator, self.state
        step_loss = acc.reduce(torch.stack([t for _, t, _ in window]).mean(), reduction="mean").item()
        step_parts = mean_parts([p for _, _, p in window], acc)
        state.step += 1
        state.pairs_seen += sum(n for n, _, _ in window) * self.nproc
        state.step_losses.append(step_loss)
        state.step_epochs.append(epoch + 1)
        state.loss_parts.update(step_parts)
        scale = logit_scale(self.loss)
        logs = {"train/loss": step_loss, **{f"train/{k}": v for k, v in step_parts.items()}}
        logs.update({f"lr/{n}": g["lr"] for n, g in zip(self.group_names, self.optimizer.param_groups)})
        if scale is not None:
            logs["train/logit_scale"] = scale
        acc.log(logs, step=state.step)
        self.bar.update()
        self.bar.set_postfix(loss=f"{step_loss:.4f}")

    def _after_step(self, epoch: int, done: int) -> bool:
        """Validate, record progress and checkpoint as due after a step; True when training stops."""
        cfg, state = self.cfg, self.state
        epoch_end = done >= self.batches_per_epoch
        finishing = state.step >= self.total_steps
        improved = False
        if self.evaluator is not None and (
            (cfg.eval_every > 0 and state.step % cfg.eval_every == 0)
            or (cfg.eval_every == 0 and epoch_end)
            or finishing
        ):
            best_before = state.best_step
            self.validate(epoch)
            improved = state.best_step != best_before
        stop = finishing or state.stopped_early
        state.epoch, state.batch_in_epoch = (epoch + 1, 0) if epoch_end else (epoch, done)
        if epoch_end and self.main:
            ep = [x for x, e in zip(state.step_losses, state.step_epochs) if e == epoch + 1]
            log.info("epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, cfg.epochs, np.mean(ep), len(ep))
        if self.out is not None and (
            epoch_end or stop or improved or (cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0)
        ):
            ckpt.save(self.accelerator, self.out, state, cfg.keep_checkpoints)
        return stop

    def validate(self, epoch: int) -> None:
        """Score the model on the validation set (main process), share the verdict, count patience."""
        state, cfg, primary = self.state, self.cfg, self.primary
        record = None
        if self.main:
            with self.accelerator.autocast():
                metrics, _ = self.evaluator.score_encoder(self.model, self.valid_catalog, progress=False)
            metrics = {k: float(v) for k, v in metrics.items()}
            improved = state.best_metric is None or metrics[primary] > state.best_metric
            if improved:
                self.best_weights = ckpt.weights_of(self.model)
            record = {"step": state.step, "epoch": epoch + 1, "metrics": metrics, "improved": improved}
        if self.nproc > 1:
            record = broadcast_object_list([record])[0]
        improved = record.pop("improved")
        state.history.append(record)
        if improved:
            state.best_metric, state.best_step, state.bad_validations = record["metrics"][primary], state.step, 0
        else:
            state.bad_validations += 1
        if cfg.patience > 0 and state.bad_validations >= cfg.patience:
            state.stopped_early = True
        self.accelerator.log({f"valid/{k}": v for k, v in record["metrics"].items()}, step=state.step)
        if self.main:
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

    # ------------------------------------------------------------------------- the end
    def _restore_best(self) -> None:
        """Early stopping or not: the model ends with the best validated weights, on every process."""
        state, out, model = self.state, self.out, self.model
        if state.best_step is not None:
            if self.main:  # only the main process holds them (one CPU copy per machine, not per process)
                if self.best_weights is None:
                    self.best_weights = ckpt.best_from_checkpoint(out, state.best_step)
                ckpt.restore(model, self.best_weights)
                if out is not None:
                    best = {"step": state.best_step, "metric": self.primary, "value": state.best_metric}
                    ckpt.save_best(out, self.best_weights, best)
                if state.best_step != state.step:
                    log.info(
                        "restored the best weights (step %d, %s %.4f)", state.best_step, self.primary, state.best_metric
                    )
            if self.nproc > 1:  # every process ends with the same model
                for tensor in model.state_dict().values():
                    torch.distributed.broadcast(tensor, src=0)
        self.accelerator.wait_for_everyone()
        model.eval()
