"""A small seeded dataset in the contract, with images drawn by Pillow: for tests and smoke runs.

Items belong to kinds (a colour and a product word); users browse one kind: they view an
item and click another item of the same kind shortly after. So co-occurrence pairs link
items of the same kind, which share words and image colour, and a model can learn them.

`generate_logs` / `write_logs` make large, skewed behaviour logs (no catalogue, no images)
for scale tests and benchmarks: millions of events a second, streamed to Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (230, 210, 40),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
}
PRODUCTS = ("shirt", "shoe", "lamp", "mug")


def make_dataset(
    out_dir: str | Path,
    n_items: int = 48,
    n_kinds: int = 8,
    n_users: int = 80,
    sessions_per_user: int = 6,
    days: int = 30,
    image_size: int = 32,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `logs.csv`, `catalog.csv` and `images/` under `out_dir`; returns (logs, catalog) paths."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kinds = [(c, p) for p in PRODUCTS for c in COLOURS][:n_kinds]
    items = []
    for i in range(n_items):
        colour, product = kinds[i % len(kinds)]
        paths = [_draw(out / "images", f"{i}_{j}.png", COLOURS[colour], j, image_size) for j in range(i % 3)]
        items.append(
            {
                "item_id": f"it{i}",
                "title": f"{colour} {product} {i}",
                "topics": f"{product}|{colour}",
                "content": f"a {colour} {product}, model {i}",
                "images": "|".join(paths),
                "kind": i % len(kinds),
            }
        )
    catalog = pd.DataFrame(items)
    by_kind = catalog.groupby("kind")["item_id"].apply(list).to_dict()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        kind = int(rng.integers(len(by_kind)))
        for _ in range(sessions_per_user):
            t = start + pd.Timedelta(hours=float(rng.uniform(0, days * 24)))
            a, b = rng.choice(by_kind[kind], size=2, replace=len(by_kind[kind]) < 2)
            rows.append((f"u{u}", a, "view", t))
            rows.append((f"u{u}", b, "click", t + pd.Timedelta(minutes=float(rng.uniform(1, 50)))))
    logs = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts"]).sort_values("ts")
    logs["ts"] = logs["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    logs_path, catalog_path = out / "logs.csv", out / "catalog.csv"
    logs.to_csv(logs_path, index=False)
    catalog.drop(columns="kind").to_csv(catalog_path, index=False)
    return logs_path, catalog_path


def _draw(folder: Path, name: str, colour: tuple[int, int, int], variant: int, size: int) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), colour)
    pad = size // 4 + variant
    ImageDraw.Draw(image).ellipse([pad, pad, size - pad, size - pad], fill=(255 - colour[0], 255 - colour[1], 128))
    image.save(folder / name)
    return f"images/{name}"  # relative to the catalogue, as users usually ship them


# --- Behaviour logs at scale ------------------------------------------------------------------
#
# `make_dataset` above is a toy with images; the generator below makes large, skewed logs for
# scale tests and benchmarks, vectorised in numpy and streamed to Parquet block by block.
#
# The world (item popularity, item clusters, user activity) is drawn once from the seed. The log
# is then a sequence of blocks of BLOCK_EVENTS events; block b draws from its own generator
# (seed, b) and holds the sessions that start in the b-th slice of the time span, so the output
# depends only on the arguments (not on how it is chunked) and is roughly ordered by time.
#
# A session: a user drawn by activity (lognormal weights: a few heavy users), a start time,
# a geometric number of events a few seconds to minutes apart, and one item cluster; each event
# takes an item of that cluster (or, with `explore`, any item) by Zipf popularity. The first
# event of a session is a view; the rest are view/click/purchase by `event_mix`. So views are
# followed by clicks and purchases of related items within hours, and co-occurrence exists.

BLOCK_EVENTS = 1_000_000
EVENTS = ("view", "click", "purchase")


def _default_items(n_events: int) -> int:
    return int(np.clip(n_events // 200, 100, 2_000_000))


def _default_users(n_events: int) -> int:
    return int(np.clip(n_events // 20, 50, 5_000_000))


@dataclass(frozen=True)
class LogShape:
    """How a generated log looks: the keyword arguments of `generate_logs` / `write_logs` (see there)."""

    days: float = 30.0
    start: str = "2024-01-01"
    zipf_a: float = 1.1
    user_sigma: float = 1.3
    cluster_size: int = 50
    mean_session_events: float = 6.0
    mean_gap_s: float = 90.0
    event_mix: tuple[float, float, float] = (0.75, 0.20, 0.05)
    explore: float = 0.15


class _World:
    """Item popularity and clusters, user activity: what every block of one log shares."""

    def __init__(self, n_items: int, n_users: int, shape: LogShape, seed: int):
        import pyarrow as pa

        rng = np.random.default_rng([seed, 2**31 - 1])
        # Zipf popularity over ranks, given to items in random order (ids say nothing about rank).
        weight = 1.0 / np.arange(1, n_items + 1) ** shape.zipf_a
        weight = weight[rng.permutation(n_items)]
        cluster = rng.integers(0, max(1, n_items // shape.cluster_size), n_items)
        self.order = np.argsort(cluster, kind="stable")  # items grouped by cluster
        cum = np.cumsum(weight[self.order])
        self.cum = cum / cum[-1]
        sorted_cluster = cluster[self.order]
        first = np.searchsorted(sorted_cluster, sorted_cluster, side="left")
        last = np.searchsorted(sorted_cluster, sorted_cluster, side="right") - 1
        self.lo = np.where(first > 0, self.cum[first - 1], 0.0)  # per sorted item: its cluster's cdf range
        self.hi = self.cum[last]
        activity = rng.lognormal(0.0, shape.user_sigma, n_users)
        self.user_cum = np.cumsum(activity) / activity.sum()
        self.item_ids = pa.array([f"i{i}" for i in range(n_items)], pa.string())
        self.user_ids = pa.array([f"u{u}" for u in range(n_users)], pa.string())
        self.events = pa.array(EVENTS, pa.string())
        self.shape = shape
        self.start_us = int(pd.Timestamp(shape.start, tz="UTC").value // 1000)
        self.span_us = int(shape.days * 86_400e6)

    def items(self, u: np.ndarray) -> np.ndarray:
        """Item index for uniform draws `u` in [0, 1): Zipf over all items."""
        return self.order[np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.cum) - 1)]


def _block(world: _World, b: int, n: int, n_blocks: int, seed: int):
    """One block of `n` events as a pyarrow Table in the contract, sorted by ts."""
    import pyarrow as pa

    mean_session_events, start_us, span_us = world.shape.mean_session_events, world.start_us, world.span_us
    rng = np.random.default_rng([seed, b])
    # Sessions until the block is full; the last one is cut at the block's end.
    n_sessions = int(n / mean_session_events * 1.2) + 16
    lengths = rng.geometric(1.0 / mean_session_events, n_sessions)
    ends = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(ends, n)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= ends[n_sessions - 1] - n
    session = np.repeat(np.arange(n_sessions), lengths)
    first = np.zeros(n, bool)
    first[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True

    user = np.searchsorted(world.user_cum, rng.random(n_sessions), side="right")
    user = np.minimum(user, len(world.user_cum) - 1)
    slice_us = span_us / n_blocks
    session_start = start_us + (b * slice_us + rng.random(n_sessions) * slice_us).astype(np.int64)
    # Gaps of at least one second inside a session, so (user, item, event, ts) never repeats there.
    gaps = (1e6 + rng.exponential(world.shape.mean_gap_s * 1e6, n)).astype(np.int64)
    gaps[first] = 0
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[first], lengths)
    ts = session_start[session] + offset

    # The session's cluster is that of a popular item; each event picks within it, or anywhere.
    pos = np.searchsorted(world.cum, rng.random(n_sessions), side="right")
    pos = np.minimum(pos, len(world.cum) - 1)
    lo, hi = world.lo[pos][session], world.hi[pos][session]
    u = lo + rng.random(n) * (hi - lo)
    wander = rng.random(n) < world.shape.explore
    u[wander] = rng.random(int(wander.sum()))
    item = world.items(u)

    mix = world.shape.event_mix
    event = np.searchsorted(np.cumsum(mix) / sum(mix), rng.random(n), side="right")
    event = np.minimum(event, len(EVENTS) - 1)
    event[first] = 0  # sessions open with a view

    order = np.argsort(ts, kind="stable")
    return pa.table(
        {
            "user_id": world.user_ids.take(pa.array(user[session][order])),
            "item_id": world.item_ids.take(pa.array(item[order])),
            "event": world.events.take(pa.array(event[order])),
            "ts": pa.array(ts[order], pa.timestamp("us", tz="UTC")),
        }
    )


def iter_log_blocks(n_events: int, n_items: int | None = None, n_users: int | None = None, seed: int = 0, **shape):
    """Yield the log as pyarrow Tables of at most BLOCK_EVENTS rows (see `generate_logs`); `shape`: LogShape fields."""
    if n_events < 1:
        raise ValueError(f"n_events={n_events}: ask for at least one event")
    n_items = n_items or _default_items(n_events)
    n_users = n_users or _default_users(n_events)
    if n_items < 2 or n_users < 1:
        raise ValueError(f"n_items={n_items}, n_users={n_users}: need at least 2 items and 1 user")
    world = _World(n_items, n_users, LogShape(**shape), seed)
    n_blocks = -(-n_events // BLOCK_EVENTS)
    for b in range(n_blocks):
        yield _block(world, b, min(BLOCK_EVENTS, n_events - b * BLOCK_EVENTS), n_blocks, seed)


def generate_logs(n_events: int, n_items: int | None = None, n_users: int | None = None, seed: int = 0, **kwargs):
    """A seeded, skewed behaviour log in the contract (user_id, item_id, event, ts UTC), in memory.

    Items have Zipf popularity (`zipf_a`), users lognormal activity (`user_sigma`); events come
    in sessions (`mean_session_events`, `mean_gap_s` apart) within one item cluster
    (`cluster_size` items), opening with a view, then view/click/purchase by `event_mix`, over
    `days` from `start` (these keywords are `LogShape`'s fields, with its defaults). Defaults:
    n_items = n_events/200, n_users = n_events/20 (clipped).
    For large logs use `write_logs`, which never holds more than a chunk.
    """
    import pyarrow as pa

    table = pa.concat_tables(iter_log_blocks(n_events, n_items, n_users, seed, **kwargs))
    return table.to_pandas(types_mapper=None).astype({"user_id": str, "item_id": str, "event": str})


def write_logs(
    path: str | Path,
    n_events: int,
    chunk_events: int = 5_000_000,
    n_items: int | None = None,
    n_users: int | None = None,
    seed: int = 0,
    **kwargs,
) -> Path:
    """Stream `generate_logs(...)` to Parquet, holding at most about `chunk_events` rows.

    A path ending in `.parquet` becomes one file (a row group per chunk); any other path a
    folder of `part-00000.parquet`, ... files, one per chunk. The rows are the same either way.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    single = path.suffix == ".parquet"
    (path.parent if single else path).mkdir(parents=True, exist_ok=True)
    writer, part, pending, n_pending = None, 0, [], 0

    def flush() -> None:
        nonlocal writer, part, pending, n_pending
        table = pa.concat_tables(pending)
        if single:
            writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=max(len(table), 1))
        else:
            pq.write_table(table, path / f"part-{part:05d}.parquet", compression="zstd")
        part, pending, n_pending = part + 1, [], 0

    try:
        for block in iter_log_blocks(n_events, n_items, n_users, seed, **kwargs):
            pending.append(block)
            n_pending += len(block)
            if n_pending >= chunk_events:
                flush()
        if pending:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return path
