"""The state of a `fit`: what a resumed run needs (`trainer_state.json` in each checkpoint), and the
statistics a finished `fit` returns."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tandem.training.optim import logit_scale


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


def statistics(
    state: TrainerState, accelerator, seconds: float, session_pairs: int, loss: nn.Module, resumed_from: Path | None
) -> dict:
    """What `fit` returns: steps, losses, throughput of this session, memory, validation history."""
    acc = accelerator
    device = acc.device
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
        "mixed_precision": acc.mixed_precision,
        "num_processes": acc.num_processes,
        "logit_scale": logit_scale(loss),
        "history": state.history,
        "best_step": state.best_step,
        "best_metric": state.best_metric,
        "stopped_early": state.stopped_early,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
    }
