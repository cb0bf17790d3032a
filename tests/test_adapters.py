"""The public-dataset adapters write the tandem contract: what `load` accepts, rows accounted for."""

from __future__ import annotations

import pandas as pd
import pytest

from tandem.data.adapters import movielens


def test_movielens_to_contract_keeps_every_rating():
    if movielens.importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole's ml-100k files are not installed (make env installs them)")
    logs, catalog = movielens.to_contract()
    assert len(logs) == 100_000 and len(catalog) == 1_682  # the published sizes of ml-100k
    assert set(logs["event"]) == {"click", "view"}
    assert logs["ts"].is_monotonic_increasing
    assert logs["ts"].min() >= pd.Timestamp("1997-09-01") and logs["ts"].max() < pd.Timestamp("1998-05-01")
    assert set(logs["item_id"]) <= set(catalog["item_id"])
    toy = catalog.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story" and "animation" in toy["topics"].split("|")


def test_movielens_slice_and_threshold(tmp_path):
    if movielens.importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole's ml-100k files are not installed (make env installs them)")
    strict, _ = movielens.to_contract(max_items=50, min_rating=5)
    loose, catalog = movielens.to_contract(max_items=50, min_rating=1)
    assert catalog["item_id"].nunique() == 50 and len(strict) == len(loose)
    assert (loose["event"] == "click").all() and (strict["event"] == "view").any()
    logs_path, catalog_path = movielens.write(tmp_path, max_items=50)
    assert len(pd.read_parquet(logs_path)) == len(strict) and len(pd.read_parquet(catalog_path)) == 50


def test_movielens_bad_threshold_names_the_field():
    with pytest.raises(ValueError, match="min_rating"):
        movielens.to_contract(min_rating=0)
