"""The align stage, between features and train: a vision tower trained on the catalogue's own photos.

No pretrained vision weights ship offline. Without this stage an empty `model.vision_encoder` means a random
ViT: HotelMatch-LLM trains it from scratch within its one epoch, and NoteLLM-2, whose tower is frozen, would
index what a random ViT outputs. With `vision.align: auto`, items with images and no `model.vision_encoder`,
the stage runs `tandem.models.vision_align.align_vision` (CLIP-style InfoNCE of each photo against the frozen
text embedding of its text) on

- (first readable photo, item text) of every item with both, and
- (photo of the clicked item, typed query): the training window's search clicks (pairs/query_train.parquet,
  never the test window's), at most `vision.queries_per_item` per item, for every item with a photo
  (`vision.queries: all`: users type what they saw, e.g. the colour a product's text leaves out) or only for
  items without text (`textless`),

a seeded sample of `vision.max_pairs` of them. train and evaluate (its untrained baseline) then build the model
on that tower (`tandem.pipeline.vision_tower.with_vision`); the trained model saves its own copy of the weights.

Cache: the tower goes to WORKDIR/vision/<digest>/, the digest of the pairs (item ids, texts, image paths with
their sizes and modification times), the vision settings, the tower's shape and the text encoder; written
under a temporary name with `_DONE` last (`tandem.core.atomic`), so a half-written folder is never used. A
later run over the same catalogue reuses it (`"cached": true`); the `vision.keep` newest are kept.

NoteLLM-2 (and HotelMatch with `model.freeze_vision`) on a catalogue with images, no vision encoder named and no
alignment (`vision.align: off`, or fewer than `vision.min_pairs` pairs) is an error naming the fix, not a run
that silently indexes a random frozen tower. A catalogue without images is a no-op in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict

import pandas as pd

from tandem.core.atomic import DONE, atomic_dir, is_done
from tandem.core.config import ModelConfig, RunConfig
from tandem.core.config_vision import VisionConfig
from tandem.pairs.queries import read_query_pairs
from tandem.pipeline import stages
from tandem.pipeline.vision_tower import aligned_folder

log = logging.getLogger(__name__)
FORMAT = 1  # part of the digest: a change to what the cache holds invalidates it
SHAPE = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads")  # the tower's, from model


def _images(value) -> list[str]:
    from tandem.models.base import as_list

    return [str(p) for p in as_list(value)]


def _text(row) -> str:
    from tandem.models.base import as_list
    from tandem.models.text import item_text

    return item_text(row.get("title", ""), as_list(row.get("topics")), row.get("content", ""))


def training_rows(catalog: pd.DataFrame, queries: pd.DataFrame, vcfg: VisionConfig) -> tuple[pd.DataFrame, dict]:
    """(rows, counts): one row per (photo, text) pair, as `align_vision` reads a catalogue (item_id, title = the
    text, images), from the items with images: their own text, and the search queries that led to them."""
    images = [_images(v) for v in catalog["images"]] if "images" in catalog else [[]] * len(catalog)
    with_image = catalog[[len(img) > 0 for img in images]]
    texts = [_text(r) for r in with_image.to_dict("records")]
    ids, paths = with_image["item_id"].astype(str).tolist(), [img for img in images if img]
    rows = [{"item_id": i, "title": t, "images": img} for i, t, img in zip(ids, texts, paths) if t]
    textless = {i: img for i, t, img in zip(ids, texts, paths) if not t}
    photos = dict(zip(ids, paths)) if vcfg.queries == "all" else textless
    from_queries = 0
    if photos and not queries.empty:
        clicked = queries[queries["item_id"].astype(str).isin(photos)].sort_values(
            ["item_id", "score", "query"], ascending=[True, False, True]
        )
        clicked = clicked.drop_duplicates(["item_id", "query"])
        clicked = clicked[clicked.groupby("item_id").cumcount() < vcfg.queries_per_item]
        pairs = zip(clicked["item_id"], clicked["query"])
        rows += [{"item_id": i, "title": q, "images": photos[i]} for i, q in pairs]
        from_queries = len(clicked)
        textless = {i: v for i, v in textless.items() if i not in set(clicked["item_id"])}
    frame = pd.DataFrame(rows, columns=["item_id", "title", "images"]).assign(topics=[[]] * len(rows), content="")
    if len(frame) > vcfg.max_pairs:
        frame = frame.sample(vcfg.max_pairs, random_state=vcfg.seed).reset_index(drop=True)
    counts = {
        "items": len(catalog),
        "items_with_images": len(with_image),
        "pairs_from_text": len(rows) - from_queries,
        "pairs_from_queries": from_queries,
        "items_with_image_but_no_text_or_query": len(textless),
        "pairs_used": len(frame),
    }
    return frame, counts


def text_encoder(cfg: RunConfig) -> str:
    """The frozen text model the photos are aligned to: `vision.text_encoder`, else the recipe's own."""
    return cfg.vision.text_encoder or (cfg.model.llm if cfg.model.family == "notellm2" else cfg.model.item_encoder)


def digest(rows: pd.DataFrame, cfg: RunConfig) -> str:
    """What the tower is a function of: the pairs (with each image file's size and modification time, cheaper than
    its bytes and changed by any rewrite), the settings that shape training, the tower's shape, the text encoder."""
    settings = {k: v for k, v in asdict(cfg.vision).items() if k not in ("align", "min_pairs", "keep")}
    head = {"format": FORMAT, "vision": settings, "shape": {k: getattr(cfg.model, k) for k in SHAPE}}
    sha = hashlib.sha256(json.dumps(head | {"text_encoder": text_encoder(cfg)}, sort_keys=True).encode())
    for item_id, text, images in zip(rows["item_id"], rows["title"], rows["images"]):
        sha.update(f"{item_id}\0{text}\0".encode())
        for path in images:
            try:
                stat = os.stat(path)
                sha.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            except OSError:
                sha.update(f"{path}\0missing\0".encode())
    return sha.hexdigest()[:20]


def _refuse_random_frozen(model: ModelConfig, with_images: int, why: str) -> None:
    frozen = model.family == "notellm2" or model.freeze_vision
    if frozen:
        who = "NoteLLM-2 keeps its vision tower frozen" if model.family == "notellm2" else "model.freeze_vision is on"
        raise ValueError(
            f"{who} and {with_images} items have images, but no vision tower is aligned ({why}): the model would "
            "index what a random ViT outputs. Set vision.align: auto (it needs vision.min_pairs items with an image "
            "and a text or a search query), or name pretrained CLIP vision weights in model.vision_encoder"
        )


def _device(cfg: RunConfig) -> str:
    import torch

    if cfg.train.device:
        return cfg.train.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _prune(root, keep: int, current) -> list[str]:
    """Remove all but the `keep` newest complete towers (never `current`); leftovers of killed writes go too."""
    done = [p for p in root.iterdir() if p.is_dir() and is_done(p) and p != current]
    done.sort(key=lambda p: (p / DONE).stat().st_mtime, reverse=True)
    gone = done[max(keep - 1, 0) :]
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return [p.name for p in gone]


def align(run: stages.RunPaths, cfg: RunConfig, progress: bool = True) -> dict:
    """Align a vision tower on the catalogue's (photo, text) pairs when it has images and the recipe names none;
    reused from WORKDIR/vision/<digest>/ when the same catalogue was aligned before (see the module doc)."""
    from tandem.models.base import as_list

    start = time.perf_counter()
    base = {"align": cfg.vision.align, "family": cfg.model.family}
    if cfg.model.vision_encoder:
        reason = f"the recipe names a vision encoder (model.vision_encoder: {cfg.model.vision_encoder})"
        return run.save("align", base | {"skipped": reason})
    loaded = stages.catalog(run)  # the loaded catalogue answers "any image?" without a Feast read: a fast no-op
    with_images = int(loaded["images"].map(lambda v: len(as_list(v)) > 0).sum()) if "images" in loaded else 0
    if with_images == 0:
        return run.save("align", base | {"skipped": "no item has an image", "items": len(loaded)})
    catalog = stages.items(run)
    if cfg.vision.align == "off":
        _refuse_random_frozen(cfg.model, with_images, "vision.align is off")
        reason = "vision.align is off: the model starts from a fresh, random vision tower"
        return run.save("align", base | {"skipped": reason, "items_with_images": with_images})
    rows, counts = training_rows(catalog, read_query_pairs(run / "pairs", "train"), cfg.vision)
    if len(rows) < cfg.vision.min_pairs:
        why = f"{len(rows)} (photo, text or search query) pairs, fewer than vision.min_pairs ({cfg.vision.min_pairs})"
        _refuse_random_frozen(cfg.model, with_images, why)
        return run.save("align", base | counts | {"skipped": f"{why}: the model starts from a fresh vision tower"})
    key = digest(rows, cfg)
    folder = aligned_folder(run.workdir, key)
    cached = is_done(folder)
    if cached:
        log.info("vision tower for this catalogue already aligned: %s", folder)
    else:
        from tandem.models.vision_align import align_vision

        device = _device(cfg)
        log.info("aligning a vision tower on %d (photo, text) pairs on %s -> %s", len(rows), device, folder)
        with atomic_dir(folder, digest=key) as tmp:
            stats = align_vision(
                rows, cfg.model, tmp, epochs=cfg.vision.epochs, batch_size=cfg.vision.batch_size, lr=cfg.vision.lr,
                seed=cfg.vision.seed, text_encoder=text_encoder(cfg), progress=progress, device=device,
            )  # fmt: skip
            stats |= {"path": str(folder), "device": device, "seconds": round(time.perf_counter() - start, 2)}
            (tmp / "align.json").write_text(json.dumps(stats | counts, indent=2))
    pruned = _prune(folder.parent, cfg.vision.keep, folder)
    stats = json.loads((folder / "align.json").read_text())
    summary = {"cached": cached, "digest": key, "vision_encoder": str(folder), "training": stats, "pruned": pruned}
    return run.save("align", base | counts | summary | {"seconds": round(time.perf_counter() - start, 2)})
