"""logQ correction and mixed (uniform) negatives: the loss side and the trainer side."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tandem.core.config import ModelConfig, TrainConfig
from tandem.models.losses import CandidateLogQ, HotelMatchLoss, NoteLLM2Loss, contrastive
from tandem.training.data import PairDataset
from tandem.training.negatives import ExtraNegatives, set_logq


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_logq_table_looks_up_keys_and_floors_unknown_ones():
    table = CandidateLogQ()
    assert table(torch.tensor([1, 2])) is None  # empty: no correction
    table.set(np.array([30, 10, 20]), np.array([1, 6, 3]), in_batch=10)
    got = table(torch.tensor([10, 20, 30, 99]))
    assert torch.allclose(got[:3], torch.log(torch.tensor([6.0, 3.0, 1.0]))), got  # 10 * count / 10 pairs
    assert got[3] == got[:3].min()  # an item never a candidate counts as the rarest
    table.set(np.array([10]), np.array([5]), in_batch=4, uniform=2, catalog_size=100)
    assert math.isclose(float(table(torch.tensor([10]))[0]), math.log(4 + 0.02), rel_tol=1e-5)
    assert math.isclose(float(table(torch.tensor([11]))[0]), math.log(0.02), rel_tol=1e-5)  # uniform rate only


def test_contrastive_subtracts_log_q_from_every_logit():
    anchors, candidates = unit(3, 8, 0), unit(4, 8, 1)
    positive, keys = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3, 4])
    logq = torch.tensor([0.0, -1.0, -2.0, 3.0])
    got = contrastive(anchors, candidates, positive, torch.tensor([7, 8, 9]), keys, torch.tensor(5.0), logq)
    logits = 5.0 * anchors @ candidates.T - logq[None]
    assert torch.allclose(got, F.cross_entropy(logits, positive))
    plain = contrastive(anchors, candidates, positive, torch.tensor([7, 8, 9]), keys, torch.tensor(5.0))
    assert not torch.allclose(got, plain)


def test_a_frequent_candidate_is_demoted_less_with_logq():
    """The popular item (a frequent negative) gets pushed down less: its logit is corrected upwards
    less than a rare one's, so the gradient on the popular negative shrinks."""
    anchors, candidates = unit(2, 4, 3), unit(3, 4, 4)
    candidates.requires_grad_(True)
    positive = torch.tensor([0, 1])
    keys, akeys = torch.tensor([1, 2, 3]), torch.tensor([8, 9])
    grads = []
    for logq in (None, torch.log(torch.tensor([0.1, 0.1, 0.8]))):  # candidate 2: a popular negative
        candidates.grad = None
        contrastive(anchors, candidates, positive, akeys, keys, torch.tensor(10.0), logq).backward()
        grads.append(candidates.grad[2].norm().item())
    assert grads[1] < grads[0]


def test_hotelmatch_loss_uses_uniform_negatives_and_logq_in_training_only():
    loss = HotelMatchLoss(ModelConfig(), TrainConfig())
    out = {"query": unit(2, 8, 0), "item": unit(2, 8, 1), "query_keys": torch.tensor([1, 2]),
           "item_keys": torch.tensor([3, 4])}  # fmt: skip
    base = loss(out)[0]
    with_neg = loss(out | {"neg_item": unit(3, 8, 2), "neg_keys": torch.tensor([5, 6, 7])})[0]
    assert with_neg > base  # more negatives, more to beat
    loss.logq.set(np.array([3, 4]), np.array([9, 1]), in_batch=2)
    corrected = loss(out)[0]
    assert not torch.isclose(corrected, base)
    loss.eval()
    assert torch.isclose(loss(out)[0], base)


def test_notellm2_loss_with_uniform_negatives():
    loss = NoteLLM2Loss()
    out = {"n_m": unit(4, 8, 0), "keys": torch.tensor([1, 2, 3, 4])}
    base = loss(out)[0]
    more = loss(out | {"neg_n_m": unit(2, 8, 5), "neg_keys": torch.tensor([5, 6])})[0]
    assert more > base


def _data():
    catalog = pd.DataFrame({"item_id": [f"i{n}" for n in range(6)], "title": [f"t{n}" for n in range(6)]})
    pairs = pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3"], "related_item_id": ["i5", "i5", "i5", "i4"]})
    return PairDataset(pairs, catalog)


def test_set_logq_counts_the_candidate_side():
    data = _data()
    loss = HotelMatchLoss(ModelConfig(), TrainConfig())
    info = set_logq(loss, data, TrainConfig(batch_size=2))
    assert info == {"candidate_items": 2, "top_share": 0.75}  # i5 is 3 of the 4 positives
    both = NoteLLM2Loss()
    assert set_logq(both, data, TrainConfig(batch_size=2))["candidate_items"] == 6
    assert set_logq(HotelMatchLoss(ModelConfig(), TrainConfig()), data, TrainConfig(logq=False)) is None


class Prep:
    def prepare_items(self, rows):
        return {"titles": [r["title"] for r in rows]}


def test_uniform_negatives_are_seeded_by_the_batch():
    data = _data()
    draw = ExtraNegatives(Prep(), data, 3, seed=0)
    examples = [data[0], data[1]]
    a, b = draw(examples), draw(examples)
    assert a["keys"].tolist() == b["keys"].tolist() and len(set(a["keys"].tolist())) == 3
    assert a["items"]["titles"] == [data.rows[data.keys.index(k)]["title"] for k in a["keys"].tolist()]
    assert any(draw([data[i], data[j]])["keys"].tolist() != a["keys"].tolist() for i, j in ((2, 3), (0, 3), (1, 2)))
