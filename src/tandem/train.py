"""Contrastive training of the dual encoder on (query item, related item) pairs.

For a pair (A, B) the query is A's title through the query tower and the positive is item B
through the item tower; the other items of the batch are the negatives.
"""

from __future__ import annotations

import logging
import math
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tandem.config import TrainConfig
from tandem.model import DualEncoder

log = logging.getLogger(__name__)


class ContrastiveLoss(nn.Module):
    """In-batch softmax of each query over all items of the batch, cosine x learnable scale.

    Items with the same id as a query's positive are not counted as its negatives
    (in-batch false negatives). The scale is stored as a log and capped at `max_scale`.
    """

    def __init__(self, init_scale: float = 20.0, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.max_scale = max_scale

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(
        self,
        queries: torch.Tensor,
        items: torch.Tensor,
        item_ids: list | None = None,
        false_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries, items: (B, d) unit vectors, row i of each is a pair.

        item_ids: the positive's id per row; or false_negatives: a (B, B) bool mask,
        True where item j must not be a negative of query i (the diagonal is ignored).
        """
        logits = self.scale * queries @ items.T
        if item_ids is not None:
            codes = {}
            ids = torch.tensor([codes.setdefault(i, len(codes)) for i in item_ids], device=logits.device)
            false_negatives = ids[:, None] == ids[None, :]
        if false_negatives is not None:
            eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(false_negatives.to(logits.device) & ~eye, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class PairData:
    """Pairs resolved against the catalogue: query texts, positive item rows, positive ids."""

    def __init__(self, pairs: pd.DataFrame, catalog: pd.DataFrame):
        missing_cols = {"item_id", "related_item_id"} - set(pairs.columns)
        if missing_cols:
            raise ValueError(f"pairs lack columns {sorted(missing_cols)}; expected item_id, related_item_id, score")
        rows = {str(r["item_id"]): r for r in catalog.to_dict("records")}
        left = pairs["item_id"].astype(str).tolist()
        right = pairs["related_item_id"].astype(str).tolist()
        missing = sorted({i for i in left + right if i not in rows})
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(
                f"{len(missing)} item id(s) of the pairs are not in the catalogue: {shown}; "
                "filter the pairs to catalogue items before training"
            )
        self.queries = [rows[i].get("title", "") for i in left]
        self.items = [rows[i] for i in right]
        self.item_ids = right

    def __len__(self) -> int:
        return len(self.item_ids)

    def loss(self, model: DualEncoder, loss_fn: ContrastiveLoss, idx) -> torch.Tensor:
        queries = model.encode_queries([self.queries[i] for i in idx])
        items = model.encode_items([self.items[i] for i in idx])
        return loss_fn(queries, items, item_ids=[self.item_ids[i] for i in idx])


def param_groups(model: DualEncoder, loss_fn: ContrastiveLoss, cfg: TrainConfig) -> list[dict]:
    """Three AdamW groups: query tower (lr_query), item tower (lr_item), new parts (lr_new)."""
    decay = cfg.weight_decay
    return [
        {"name": "query", "params": list(model.query_encoder.parameters()), "lr": cfg.lr_query, "weight_decay": decay},
        {"name": "item", "params": list(model.item_encoder.parameters()), "lr": cfg.lr_item, "weight_decay": decay},
        {
            "name": "new",
            "params": model.new_parameters() + list(loss_fn.parameters()),
            "lr": cfg.lr_new,
            "weight_decay": decay,
        },
    ]


def warmup_linear(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over `warmup_steps`, then linear decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / (total_steps - warmup_steps + 1))

    return factor


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch of one pair (no negatives) is dropped."""
    perm = torch.randperm(n, generator=generator)
    return [b for b in perm.split(batch_size) if len(b) >= 2]


def pick_device(name: str = "") -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def pair_loss(
    model: DualEncoder,
    pairs: pd.DataFrame | PairData,
    catalog: pd.DataFrame | None = None,
    loss_fn: ContrastiveLoss | None = None,
    batch_size: int = 64,
) -> float:
    """Mean in-batch loss over `pairs` in their order (eval mode, no dropout)."""
    data = pairs if isinstance(pairs, PairData) else PairData(pairs, catalog)
    loss_fn = loss_fn if loss_fn is not None else ContrastiveLoss().to(model.device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for idx in torch.arange(len(data)).split(batch_size):
        if len(idx) >= 2:
            total += data.loss(model, loss_fn, idx.tolist()).item() * len(idx)
            count += len(idx)
    model.train(was_training)
    return total / count if count else float("nan")


def train(
    model: DualEncoder,
    pairs: pd.DataFrame,
    catalog: pd.DataFrame,
    cfg: TrainConfig | None = None,
    valid_pairs: pd.DataFrame | None = None,
    progress: bool = True,
) -> dict:
    """Train `model` in place; returns training statistics."""
    cfg = cfg if cfg is not None else TrainConfig()
    data = PairData(pairs, catalog)
    valid = PairData(valid_pairs, catalog) if valid_pairs is not None else None
    if len(data) < 2:
        raise ValueError(f"training needs at least 2 pairs (in-batch negatives), got {len(data)}")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device).train()
    loss_fn = ContrastiveLoss(cfg.init_scale).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, loss_fn, cfg))
    steps_per_epoch = len(data) // cfg.batch_size + (len(data) % cfg.batch_size >= 2)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = max(1, math.ceil(cfg.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(warmup_steps, total_steps))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    log.info("training on %d pairs, %d steps, device %s", len(data), total_steps, device)
    step, pairs_seen, step_losses, epoch_losses = 0, 0, [], []
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", disable=not progress, unit="step")
    for epoch in range(cfg.epochs):
        if step >= total_steps:
            break
        epoch_sum, epoch_n = 0.0, 0
        for idx in batches(len(data), cfg.batch_size, generator):
            if step >= total_steps:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = data.loss(model, loss_fn, idx.tolist())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step, pairs_seen = step + 1, pairs_seen + len(idx)
            step_losses.append(loss.item())
            epoch_sum, epoch_n = epoch_sum + step_losses[-1], epoch_n + 1
            bar.update()
            bar.set_postfix(loss=f"{step_losses[-1]:.4f}", scale=f"{loss_fn.scale.item():.1f}")
        epoch_losses.append(epoch_sum / max(epoch_n, 1))
        log.info("epoch %d: mean loss %.4f over %d steps", epoch + 1, epoch_losses[-1], epoch_n)
    bar.close()
    seconds = time.perf_counter() - started

    stats = {
        "steps": step,
        "pairs_seen": pairs_seen,
        "final_loss": step_losses[-1] if step_losses else float("nan"),
        "epoch_losses": epoch_losses,
        "step_losses": step_losses,
        "seconds": seconds,
        "pairs_per_s": pairs_seen / seconds if seconds > 0 else float("nan"),
        "logit_scale": loss_fn.scale.item(),
        "device": str(device),
    }
    if valid is not None:
        stats["valid_loss"] = pair_loss(model, valid, loss_fn=loss_fn, batch_size=cfg.batch_size)
        log.info("validation loss %.4f", stats["valid_loss"])
    model.eval()
    return stats
