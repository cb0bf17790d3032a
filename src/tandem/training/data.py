"""What the trainer feeds the model: pairs resolved against the catalogue, seeded batches, collation,
and the validation set: held-out real queries when there are enough, else the validation item pairs
(`choose_validation`), ranked among the validation items."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import RetrievalEvaluator, resolve_protocol
from tandem.evaluation.queries import query_eval_set
from tandem.models.base import PairExample, item_key
from tandem.models.text import query_text


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


class Collate:
    """(pairs in the batch, model.collate(examples)): the trainer counts pairs without
    knowing what the model's batch holds; `negatives(examples)`, when given, goes in as "negatives"."""

    def __init__(self, collate, negatives=None):
        self.collate, self.negatives = collate, negatives

    def __call__(self, examples):
        batch = self.collate(examples)
        if self.negatives is not None:  # extra candidates (tandem.training.negatives), beside the model's batch
            batch = {**batch, "negatives": self.negatives(examples)}
        return len(examples), batch


def validation_set(valid_pairs: pd.DataFrame, catalog: pd.DataFrame, eval_cfg: EvalConfig, trained=None):
    """(evaluator, pool): the pool is the catalogue rows of the items in the validation pairs; with
    `eval.hide_trained_clicks` a query item's partners in the `trained` pairs are left out of its ranking."""
    data = PairDataset(valid_pairs, catalog, "validation pairs")
    used = np.unique(np.concatenate([data.left, data.right]))
    pool = catalog.iloc[used].reset_index(drop=True)
    ids = catalog["item_id"].to_numpy()
    resolved = pd.DataFrame({"item_id": ids[data.left], "related_item_id": ids[data.right]})
    return RetrievalEvaluator.from_pairs(resolved, pool, eval_cfg, trained), pool


def query_validation_set(
    query_valid: pd.DataFrame, catalog: pd.DataFrame, eval_cfg: EvalConfig, valid_pairs=None, trained=None
):
    """(evaluator, pool) of held-out real queries, bound as the test binds them (`query_eval_set`: each distinct
    text one query, its clicked items the targets, with `eval.hide_trained_clicks` its clicks among the `trained`
    pairs left out); the pool is the catalogue rows of the validation items, the clicked ones and both sides of
    `valid_pairs`: a ranking as cheap as the item pairs' and with their items."""
    used = set(query_valid["related_item_id"].astype(str))
    if valid_pairs is not None:
        used |= set(valid_pairs["item_id"].astype(str)) | set(valid_pairs["related_item_id"].astype(str))
    pool = catalog[catalog["item_id"].astype(str).isin(used)].reset_index(drop=True)
    return RetrievalEvaluator(query_eval_set(query_valid, pool, eval_cfg, trained_clicks=trained)), pool


def choose_validation(
    valid_pairs: pd.DataFrame | None,
    query_valid: pd.DataFrame | None,
    catalog: pd.DataFrame,
    eval_cfg: EvalConfig,
    symmetric: bool,
    trained: pd.DataFrame | None = None,
) -> tuple[RetrievalEvaluator | None, pd.DataFrame | None, dict]:
    """(evaluator, pool, counts): the validation that picks the best weights, chosen as the evaluate stage chooses
    the test's (`tandem.evaluation.queries.eval_set`), so that training keeps the weights that do best on what the
    test measures: for a query-tower model under the hotelmatch protocol, the held-out real queries when there
    are at least `eval.min_query_pairs` validation query pairs (or no validation item pairs), else the item pairs.
    `trained`: the training pairs (their query clicks and item partners are hidden as the test hides them). No
    validation (None, None, validated_on None) when neither is given."""
    n_queries = 0 if query_valid is None else len(query_valid)
    no_items = valid_pairs is None or valid_pairs.empty
    hotelmatch = not symmetric and resolve_protocol(eval_cfg.protocol, symmetric) == "hotelmatch"
    if hotelmatch and n_queries and (n_queries >= eval_cfg.min_query_pairs or no_items):
        (evaluator, pool), on = query_validation_set(query_valid, catalog, eval_cfg, valid_pairs, trained), "queries"
    elif valid_pairs is not None:
        (evaluator, pool), on = validation_set(valid_pairs, catalog, eval_cfg, trained), "item pairs"
    else:
        return None, None, {"validated_on": None}
    counts = {"pairs": len(evaluator.target), "queries": len(evaluator.query_texts), "pool": len(pool)}
    return evaluator, pool, {"validated_on": on, "validation": counts}
