"""Multimodal evidence on fashion-small: can the image path answer what the text cannot?

    .venv/bin/python benchmarks/fashion_multimodal.py [--train-items 4000] [--test-items 1500] [--epochs 1]

Colour words are removed from every item's text (title = product name without colours, topics =
gender / category / sub-category / season / usage), so only an item's photo tells its colour.
Relevance needs the colour: text->item queries are attribute phrases "<colour> <sub-category>
<gender>" whose relevant items share all three; item->item relevance is the same sub-category and
colour. Items are split into disjoint train and test sets; the test pool is the test items.

1. A fresh CLIP ViT (112 px, 16 px patches: 49 tokens) is aligned to the frozen MiniLM text tower on
   the *train* items' photo/caption pairs (`tandem.models.vision_align`): no pretrained vision
   weights exist offline, so this is "the vision tower trained here".
2. HotelMatch-LLM (text->item): text-only (photos withheld) vs with images; asymmetric (2-layer
   query tower) vs symmetric (the query tower is a full copy of the 6-layer item tower): MRR and
   per-query latency as ratios (goal: >= 95 % of the MRR at <= 50 % of the latency); a 1-layer
   query tower as a second point on that trade-off.
3. NoteLLM-2 (item->item): text-only vs basic prompt with image vs mICL + late fusion; the
   visual-neglect diagnostics: each image model on the photo alone (text removed) and mICL's n_v.

Metrics: MRR@10, nDCG@10 (binary gains), Recall@K = |relevant in top K| / min(|relevant|, K).
Prints a Markdown report and writes it to benchmarks/results/fashion_multimodal.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-small"
RESULTS = Path(__file__).parent / "results" / "fashion_multimodal.md"
EXTRA_COLOURS = ("navy", "off", "multi", "light", "dark", "fluorescent", "turquoise", "burgundy", "sea")


# ------------------------------------------------------------------------------------- data
def colour_pattern(colours: pd.Series) -> re.Pattern:
    words = {w for c in colours.dropna() for w in re.split(r"[\s-]+", c.lower()) if w} | set(EXTRA_COLOURS)
    return re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", re.I)


def load_fashion(data: Path, train_items: int, test_items: int, seed: int) -> dict:
    styles = pd.read_csv(data / "styles.csv").dropna(subset=["productDisplayName", "baseColour", "subCategory"])
    styles = styles[[(data / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    pattern = colour_pattern(styles["baseColour"])

    def strip(text: str) -> str:
        return " ".join(pattern.sub(" ", text).split())

    catalog = pd.DataFrame(
        {
            "item_id": styles["id"].astype(str).to_numpy(),
            "title": styles["productDisplayName"].map(strip).to_numpy(),
            "topics": [
                [str(v) for v in row if isinstance(v, str) and v]
                for row in styles[["gender", "masterCategory", "subCategory", "season", "usage"]].itertuples(
                    index=False
                )
            ],
            "content": "",
            "images": [[str(data / "images" / f"{i}.jpg")] for i in styles["id"]],
            "colour": styles["baseColour"].str.lower().to_numpy(),
            "sub": styles["subCategory"].str.lower().to_numpy(),
            "gender": styles["gender"].str.lower().to_numpy(),
        }
    )
    assert not catalog["title"].str.contains(pattern).any(), "a colour word survived in a title"
    order = np.random.default_rng(seed).permutation(len(catalog))
    test = catalog.iloc[order[:test_items]].reset_index(drop=True)
    train = catalog.iloc[order[test_items : test_items + train_items]].reset_index(drop=True)
    return {"train": train, "test": test, "colour_words": pattern.pattern.count("|") + 1}


def attribute_query(row) -> str:
    return f"{row['colour']} {row['sub']} {row['gender']}"


def text_pairs(items: pd.DataFrame) -> pd.DataFrame:
    """query -> item pairs: every item under its own attribute phrase."""
    return pd.DataFrame(
        {
            "item_id": items["item_id"],
            "related_item_id": items["item_id"],
            "query": [attribute_query(r) for r in items.to_dict("records")],
        }
    )


def item_pairs(items: pd.DataFrame, seed: int) -> pd.DataFrame:
    """item -> item pairs: each item and a random other item of the same sub-category and colour."""
    rng = np.random.default_rng(seed)
    left, right = [], []
    for _, group in items.groupby(["sub", "colour"]):
        ids = group["item_id"].to_numpy()
        if len(ids) < 2:
            continue
        for i, item in enumerate(ids):
            other = rng.integers(len(ids) - 1)
            left.append(item)
            right.append(ids[other + (other >= i)])
    return pd.DataFrame({"item_id": left, "related_item_id": right})


def relevance(test: pd.DataFrame, keys: list[str]) -> list[np.ndarray]:
    """Per test item: indices of the test items sharing `keys` (itself included)."""
    groups = test.groupby(keys).indices
    return [groups[tuple(r[k] for k in keys)] for r in test.to_dict("records")]


# ---------------------------------------------------------------------------------- metrics
def set_metrics(ranked: np.ndarray, relevant: list[np.ndarray], ks=(10, 100)) -> dict[str, float]:
    """MRR@10, nDCG@10 and capped Recall@K of ranked pool indices against relevant index sets."""
    out = {f"recall@{k}": [] for k in ks} | {"mrr@10": [], "ndcg@10": []}
    discounts = 1.0 / np.log2(np.arange(2, 12))
    for row, rel in zip(ranked, relevant):
        hits = np.isin(row, rel)
        first = np.flatnonzero(hits[:10])
        out["mrr@10"].append(1.0 / (first[0] + 1) if len(first) else 0.0)
        ideal = discounts[: min(len(rel), 10)].sum()
        out["ndcg@10"].append(float((hits[:10] * discounts[: len(hits[:10])]).sum() / ideal) if ideal else 0.0)
        for k in ks:
            out[f"recall@{k}"].append(hits[:k].sum() / min(len(rel), k))
    return {k: float(np.mean(v)) for k, v in out.items()}


def rank(queries: np.ndarray, items: np.ndarray, exclude: np.ndarray | None = None, depth: int = 100) -> np.ndarray:
    from tandem.evaluation.evaluate import exact_top_k

    return exact_top_k(queries, items, depth, exclude=exclude)


# ----------------------------------------------------------------------------------- models
def fit_model(cfg, train_cfg, eval_cfg, pairs, valid, catalog, out_dir: Path):
    import torch

    from tandem.models import build_loss, build_model
    from tandem.training.trainer import fit

    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh fit, not a resume of an earlier benchmark run
    torch.manual_seed(train_cfg.seed)
    model = build_model(cfg, catalog)
    started = time.perf_counter()
    stats = fit(model, build_loss(cfg, train_cfg), pairs, catalog, train_cfg, valid, eval_cfg, out_dir, progress=False)
    stats["wall_s"] = time.perf_counter() - started
    return model.eval(), stats


def without_images(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(images=[[] for _ in range(len(frame))])


def query_latency_ms(model, texts: list[str]) -> float:
    """Median wall time of one query through the query tower (tokenise, encode, project), in ms."""
    import torch

    times = []
    model.eval()
    with torch.inference_mode():
        model.encode_queries(texts[:5])  # warm-up
        for text in texts:
            started = time.perf_counter()
            model.encode_queries([text])
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def image_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The items with their text removed: what the model makes of the photo alone."""
    return frame.assign(title="", topics=[[] for _ in range(len(frame))], content="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-items", type=int, default=4000)
    parser.add_argument("--test-items", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--align-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-fashion"))
    parser.add_argument("--only", default="", help="comma list of parts: hotelmatch,notellm2 (default both)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    if not (args.data / "styles.csv").is_file():
        sys.exit(f"fashion-small not found at {args.data}; pass --data")
    from tandem.cli import setup_logging

    setup_logging(verbose=False)
    import torch

    from tandem.core.config import EvalConfig, ModelConfig, TrainConfig
    from tandem.models.vision_align import align_vision

    parts = set(filter(None, args.only.split(","))) or {"hotelmatch", "notellm2"}
    started = time.perf_counter()
    data = load_fashion(args.data, args.train_items, args.test_items, args.seed)
    train, test = data["train"], data["test"]
    catalog = pd.concat([train, test], ignore_index=True)
    vision = dict(image_size=112, patch_size=16, vision_width=192, vision_layers=3, vision_heads=3, max_images=1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    vision_dir = args.workdir / "vision"
    if not (vision_dir / "align.json").is_file():  # aligned on the train items only
        align = align_vision(
            train, ModelConfig(**vision), vision_dir, epochs=args.align_epochs, seed=args.seed, progress=False
        )
        (vision_dir / "align.json").write_text(json.dumps(align))
    align = json.loads((vision_dir / "align.json").read_text())
    base_train = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_query=2e-4,
        lr_item=3e-5,
        lr_new=1e-3,
        lr_vision=5e-5,
        device="cpu",
        tensorboard=False,
        seed=args.seed,
    )
    eval_cfg = EvalConfig(ks=(10, 100), batch_size=128)
    results: dict = {"align": align, "hotelmatch": {}, "notellm2": {}, "training": {}}

    # ------------------------------------------------------------- HotelMatch: text -> item
    if "hotelmatch" in parts:
        queries = sorted({attribute_query(r) for r in test.to_dict("records")})
        relevant_q = [np.flatnonzero([attribute_query(r) == q for r in test.to_dict("records")]) for q in queries]
        pairs = text_pairs(train)
        hm = ModelConfig(
            family="hotelmatch", vision_encoder=str(vision_dir), query_layers=2, max_item_tokens=32, **vision
        )
        variants = {
            "text only": (hm, True),
            "images (asymmetric, 2-layer query tower)": (hm, False),
            "images (symmetric, 6-layer query tower)": (replace(hm, query_layers=6), False),
            "images (asymmetric, 1-layer query tower)": (replace(hm, query_layers=1), False),
        }
        models = {}
        for name, (cfg, text_only) in variants.items():
            cat = without_images(catalog) if text_only else catalog
            model, stats = fit_model(cfg, base_train, eval_cfg, pairs, None, cat, args.workdir / f"hm-{len(models)}")
            items = model.embed_items(without_images(test) if text_only else test, progress=False)
            metrics = set_metrics(rank(model.embed_queries(queries, progress=False), items), relevant_q)
            results["hotelmatch"][name] = metrics
            results["training"][f"hotelmatch: {name}"] = {k: stats[k] for k in ("steps", "pairs_per_s", "wall_s")}
            models[name] = model
        torch.set_num_threads(1)  # latency of one query on one core: stable on a shared machine
        texts = [queries[i % len(queries)] for i in range(args.latency_queries)]
        lat = {name: query_latency_ms(models[name], texts) for name in list(models)[1:]}
        torch.set_num_threads(os.cpu_count() or 1)
        results["latency_ms"] = lat
        symmetric = "images (symmetric, 6-layer query tower)"
        results["asymmetric_vs_symmetric"] = {
            name: {
                "mrr@10 ratio": results["hotelmatch"][name]["mrr@10"]
                / max(results["hotelmatch"][symmetric]["mrr@10"], 1e-9),
                "latency ratio": lat[name] / lat[symmetric],
            }
            for name in lat
            if name != symmetric
        }
        del models

    # ----------------------------------------------------------------- NoteLLM-2: item -> item
    if "notellm2" in parts:
        pairs = item_pairs(train, args.seed)
        relevant_i = relevance(test, ["sub", "colour"])
        keep = np.array([len(r) > 1 for r in relevant_i])  # queries with at least one other relevant item
        relevant_i = [r[r != i] for i, r in enumerate(relevant_i) if keep[i]]
        query_idx = np.flatnonzero(keep)
        nl = ModelConfig(family="notellm2", vision_encoder=str(vision_dir), num_queries=16, qformer_layers=2, **vision)
        variants = {
            "text only (basic prompt, no image)": (replace(nl, prompt="basic", late_fusion=False), True),
            "basic prompt + image": (replace(nl, prompt="basic", late_fusion=False), False),
            "mICL + late fusion": (replace(nl, prompt="micl", late_fusion=True), False),
        }
        for n, (name, (cfg, text_only)) in enumerate(variants.items()):
            cat = without_images(catalog) if text_only else catalog
            model, stats = fit_model(cfg, base_train, eval_cfg, pairs, None, cat, args.workdir / f"nl-{n}")
            items = model.embed_items(without_images(test) if text_only else test, progress=False)
            ranked = rank(items[query_idx], items, exclude=query_idx)
            results["notellm2"][name] = set_metrics(ranked, relevant_i)
            results["training"][f"notellm2: {name}"] = {k: stats[k] for k in ("steps", "pairs_per_s", "wall_s")}
            if not text_only:  # visual-neglect diagnostics: the photo alone
                photo = model.embed_items(image_only(test), progress=False)
                ranked = rank(photo[query_idx], photo, exclude=query_idx)
                results["notellm2"][f"{name}: image only (text removed)"] = set_metrics(ranked, relevant_i)
            if cfg.prompt == "micl":
                visual = model.embed_items(test, progress=False, part="v")
                ranked = rank(visual[query_idx], visual, exclude=query_idx)
                results["notellm2"][f"{name}: n_v (image part of the prompt)"] = set_metrics(ranked, relevant_i)
            del model

    results["seconds"] = time.perf_counter() - started
    report = render(args, data, results)
    print(report)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)


def table(rows: dict[str, dict[str, float]]) -> list[str]:
    if not rows:
        return ["(not run)"]
    cols = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(f"{v[c]:.4f}" for c in cols) + " |" for name, v in rows.items()]
    return lines


def render(args, data, results) -> str:
    import torch

    train, test = data["train"], data["test"]
    lines = [
        "# Multimodal evidence: fashion-small with the colour removed from the text",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        + ("GPU" if torch.cuda.is_available() else "no GPU"),
        f"Data: {len(train)} train items, {len(test)} test items (disjoint); {data['colour_words']} colour words "
        "removed from titles; one photo per item, 112 px, 16 px patches (49 visual tokens).",
        f"Vision tower aligned here: {json.dumps(results['align'])}",
        "",
        "## HotelMatch-LLM, text -> item (query '<colour> <sub-category> <gender>', pool = test items)",
        "",
        *table(results["hotelmatch"]),
        "",
    ]
    if "asymmetric_vs_symmetric" in results:
        lat = results["latency_ms"]
        lines += [
            "Asymmetric vs symmetric (goal: MRR@10 ratio >= 0.95 at query latency ratio <= 0.50); latency = median "
            "ms of one query through the query tower (tokenise, encode, project), batch 1, 1 thread:",
            "",
            "| query tower | ms per query | MRR@10 ratio | latency ratio |",
            "|---|---:|---:|---:|",
            *[
                f"| {k} | {v:.2f} | "
                + (
                    f"{results['asymmetric_vs_symmetric'][k]['mrr@10 ratio']:.3f} | "
                    f"{results['asymmetric_vs_symmetric'][k]['latency ratio']:.3f} |"
                    if k in results["asymmetric_vs_symmetric"]
                    else "1 | 1 |"
                )
                for k, v in lat.items()
            ],
            "",
        ]
    lines += [
        "## NoteLLM-2, item -> item (relevant = same sub-category and colour, pool = test items minus the query)",
        "",
        *table(results["notellm2"]),
        "",
        "## Training",
        "",
        "| run | steps | pairs/s | wall s |",
        "|---|---:|---:|---:|",
        *[
            f"| {k} | {v['steps']} | {v['pairs_per_s']:.1f} | {v['wall_s']:.0f} |"
            for k, v in results["training"].items()
        ],
        "",
        f"Total {results['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
