"""The model and its loss as one trained module, its optimizer groups and learning-rate schedule,
and the accelerate settings of a `fit`."""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from tandem.core.config import TrainConfig
from tandem.models.base import Encoder

log = logging.getLogger(__name__)


class TrainStep(nn.Module):
    """The model and its loss as one module: what accelerate prepares (one DDP wrapper, so
    the logit scale's gradient is averaged across processes like every other), checkpoints
    and runs under autocast. `forward(batch) -> (total loss, parts)`."""

    def __init__(self, model: Encoder, loss: nn.Module):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        negatives = batch.get("negatives") if isinstance(batch, dict) else None
        if negatives is None:
            return self.loss(self.model(batch))
        from tandem.training.negatives import encode_negatives

        out = self.model({k: v for k, v in batch.items() if k != "negatives"})
        return self.loss({**out, **encode_negatives(self.model, negatives)})


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


def mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


def fresh_accelerate_state() -> None:
    """Forget the accelerate state a previous `fit` in this process left (mixed precision,
    accumulation, dataloader references) so that each call is configured by its own cfg;
    the process-group state is kept when a distributed run is on."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())
    GradientState._reset_state()


def mean_parts(window: list[dict[str, torch.Tensor]], accelerator: Accelerator) -> dict[str, float]:
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
