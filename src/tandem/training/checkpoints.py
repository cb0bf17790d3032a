"""Resumable checkpoints of a `fit` (`out_dir/checkpoints/step-N/`: accelerate's state plus
`trainer_state.json`) and the best validated weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"
WEIGHTS_FILE = "model.safetensors"

if TYPE_CHECKING:
    from tandem.training.state import TrainerState


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
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


def restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load `weights` (tied tensors possibly stored under one of their names only)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    live = model.state_dict()
    loaded = {_ident(live[k]) for k in weights if k in live}
    untied = [k for k in missing if _ident(live[k]) not in loaded]
    if unexpected or untied:
        raise ValueError(f"saved weights do not fit the model: missing {untied[:5]}, unexpected {unexpected[:5]}")


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    found = []
    for d in (out / CHECKPOINTS).glob("step-*"):
        if d.is_dir() and (d / STATE_FILE).is_file() and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return sorted(found)


def best_from_checkpoint(out: Path, step: int) -> dict[str, torch.Tensor]:
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


def save(accelerator, out: Path, state: TrainerState, keep: int) -> None:
    """Checkpoint every process's state at `state.step` (call it on every process). A checkpoint is
    written to a temporary folder and renamed when complete; the newest `keep` and the best one stay."""
    main = accelerator.is_main_process
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
        kept = {s for s, _ in checkpoints(out)[-max(1, keep) :]} | {state.best_step}
        for s, d in checkpoints(out):
            if s not in kept:
                shutil.rmtree(d)
    accelerator.wait_for_everyone()


def set_aside_if_other_data(out: Path, data: str) -> Path | None:
    """When the latest checkpoint in `out` was trained on other pairs (another data fingerprint: late data,
    a rerun of the interval), move `out/checkpoints/` to `out/checkpoints.superseded/` (replacing an older
    one: one generation kept, for a post-mortem) and remove `out/best/`; returns the folder it moved to."""
    found = checkpoints(out)
    if not found or not data:
        return None
    saved = json.loads((found[-1][1] / STATE_FILE).read_text()).get("data")
    if not saved or saved == data:
        return None
    aside = out / f"{CHECKPOINTS}.superseded"
    shutil.rmtree(aside, ignore_errors=True)
    (out / CHECKPOINTS).rename(aside)
    shutil.rmtree(out / BEST_DIR, ignore_errors=True)
    return aside


def clear_partial(out: Path) -> None:
    """Remove the temporary folders of a run killed while saving a checkpoint."""
    for stale in (out / CHECKPOINTS).glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_best(out: Path, weights: dict[str, torch.Tensor], best: dict) -> None:
    """The best validated weights in `out/best/` (safetensors) with `best.json` (step, metric, value)."""
    from safetensors.torch import save_file

    (out / BEST_DIR).mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / BEST_DIR / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / BEST_DIR / "best.json").write_text(json.dumps(best, indent=1))
