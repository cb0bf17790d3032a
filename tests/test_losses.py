"""The contrastive loss against a hand-written reference, and across 2 processes (gloo)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tandem.models.losses import LogitScale, contrastive, gather


def reference(anchors, candidates, positive, anchor_keys, candidate_keys, scale) -> float:
    """Mean over anchors of -log softmax at the positive, the softmax taken over the
    candidates that may be negatives: not the anchor's own item, not a copy of its positive."""
    sims = (anchors @ candidates.T).tolist()
    total = 0.0
    for i, p in enumerate(positive.tolist()):
        allowed = [
            j
            for j in range(len(candidates))
            if j == p or (candidate_keys[j] != candidate_keys[p] and candidate_keys[j] != anchor_keys[i])
        ]
        log_norm = math.log(sum(math.exp(scale * sims[i][j]) for j in allowed))
        total += -(scale * sims[i][p] - log_norm)
    return total / len(positive)


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_contrastive_matches_reference_with_false_negatives():
    anchors, candidates = unit(5, 8, 0), unit(7, 8, 1)
    positive = torch.tensor([0, 1, 2, 3, 6])
    # candidates 0 and 4 are the same item (a copy of anchor 0's positive); anchor 2's own item is candidate 5
    candidate_keys = torch.tensor([10, 11, 12, 13, 10, 20, 14])
    anchor_keys = torch.tensor([30, 31, 20, 33, 34])
    scale = 7.5
    got = contrastive(anchors, candidates, positive, anchor_keys, candidate_keys, torch.tensor(scale))
    want = reference(anchors, candidates, positive, anchor_keys.tolist(), candidate_keys.tolist(), scale)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # the exclusions matter: with all-distinct keys the loss is different
    plain = contrastive(anchors, candidates, positive, torch.arange(100, 105), torch.arange(7), torch.tensor(scale))
    assert plain.item() == pytest.approx(
        reference(anchors, candidates, positive, list(range(100, 105)), list(range(7)), scale), rel=1e-10
    )
    assert plain.item() != pytest.approx(got.item(), rel=1e-3)


def test_symmetric_form_is_the_notellm2_loss():
    """2B items, each one's partner is its positive, every other item a negative (SEEDS.md §1)."""
    b, s = 3, 5.0
    n = unit(2 * b, 6, 2)  # rows 0..b-1 pair with rows b..2b-1
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    keys = torch.arange(2 * b)
    got = contrastive(n, n, partner, keys, keys, torch.tensor(s)).item()
    cos = (n @ n.T).tolist()
    want = 0.0
    for i in range(2 * b):
        j_pos = int(partner[i])
        want -= s * cos[i][j_pos] - math.log(sum(math.exp(s * cos[i][j]) for j in range(2 * b) if j != i))
    assert got == pytest.approx(want / (2 * b), rel=1e-10)


def test_logit_scale_is_capped():
    scale = LogitScale(init_scale=10.0, max_scale=100.0)
    assert scale().item() == pytest.approx(10.0)
    with torch.no_grad():
        scale.log_scale.fill_(math.log(1000.0))
    assert scale().item() == pytest.approx(100.0)


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    y, offset = gather(x)
    assert y is x and offset == 0


# ----------------------------------------------------------------------------- across processes


def run_processes(fn, args: tuple, nprocs: int = 2, timeout: float = 120.0) -> None:
    """`fn(rank, *args)` in `nprocs` forked processes (they reuse this process's imports:
    spawning fresh interpreters that import torch costs far more than the work); fails
    instead of hanging if they do not finish in time."""
    import time

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{nprocs} processes did not finish in {timeout:.0f} s")


WORLD, LOCAL, DIM = 2, 4, 8


def full_batch():
    """Queries, items and keys of 2 x 4 pairs; item 1 (rank 0) and item 6 (rank 1) are the same
    item, so each is a false negative of the other's query across devices."""
    queries, items = unit(WORLD * LOCAL, DIM, 3), unit(WORLD * LOCAL, DIM, 4)
    item_keys = torch.tensor([100, 101, 102, 103, 104, 105, 101, 107])
    query_keys = torch.arange(WORLD * LOCAL)
    return queries, items, query_keys, item_keys


def _loss_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, items, query_keys, item_keys = full_batch()
        part = slice(rank * LOCAL, (rank + 1) * LOCAL)
        q = queries[part].clone().requires_grad_()
        d = items[part].clone().requires_grad_()
        log_scale = torch.tensor(math.log(12.0), dtype=torch.float64, requires_grad=True)
        all_items, offset = gather(d)
        all_keys, _ = gather(item_keys[part])
        positive = offset + torch.arange(LOCAL)
        loss = contrastive(q, all_items, positive, query_keys[part], all_keys, log_scale.exp())
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "q": q.grad, "d": d.grad, "scale": log_scale.grad, "offset": offset},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process(tmp_path):
    """Each process averages over its local anchors against all gathered candidates: the mean
    of the per-process losses is the one-process loss, and the gradients averaged over
    processes (what DDP does) are the one-process gradients."""
    run_processes(_loss_on_rank, (str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert [r["offset"] for r in ranks] == [0, LOCAL]

    queries, items, query_keys, item_keys = full_batch()
    q, d = queries.clone().requires_grad_(), items.clone().requires_grad_()
    log_scale = torch.tensor(math.log(12.0), dtype=torch.float64, requires_grad=True)
    loss = contrastive(q, d, torch.arange(WORLD * LOCAL), query_keys, item_keys, log_scale.exp())
    loss.backward()

    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(loss.item(), rel=1e-12)
    # the item in two places is excluded as a negative on both ranks
    assert loss.item() == pytest.approx(
        reference(queries, items, torch.arange(8), query_keys.tolist(), item_keys.tolist(), 12.0), rel=1e-10
    )
    torch.testing.assert_close(torch.cat([r["q"] for r in ranks]) / WORLD, q.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat([r["d"] for r in ranks]) / WORLD, d.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack([r["scale"] for r in ranks]).mean(), log_scale.grad, rtol=1e-10, atol=0)
