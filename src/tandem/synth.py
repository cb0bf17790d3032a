"""A small seeded dataset in the contract, with images drawn by Pillow: for tests and smoke runs.

Items belong to kinds (a colour and a product word); users browse one kind: they view an
item and click another item of the same kind shortly after. So co-occurrence pairs link
items of the same kind, which share words and image colour, and a model can learn them.
"""

from __future__ import annotations

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
