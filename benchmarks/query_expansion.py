"""Query expansion (issue 7): plain search vs intent -> k generated prompts -> RRF-fused multi-query search.

    .venv/bin/python benchmarks/query_expansion.py [--queries 300] [--generator DIR] [--epochs 10]

Data: fashion-small (../shared/data/fashion-small/styles.csv; the benchmark exits with a message
when it is absent). Items are split 4/5 : 1/5; the generator only ever sees the first part. Intents
are the OFFLINE DEMO catalogue teacher's search intents for held-out items (templates such as
"looking for a {title}", not an LLM, and not real user queries).

Relevance: (a) "attribute": every catalogue item with the intent item's subCategory + baseColour +
gender is relevant; recall@K is capped recall |relevant in top K| / min(K, |relevant|), MRR@10 the
reciprocal rank of the first relevant item; (b) "own item": the intent's own item only.

Index: every item (title + subCategory, baseColour, usage) embedded with the bundled
all-MiniLM-L6-v2 (mean pooled, normalised; `SimilarityScorer.embed`), in a Milvus Lite HNSW
collection through `tandem.release.index.ItemIndex`. The SAME encoder embeds the queries: a symmetric,
untrained text encoder, not a trained HotelMatch query tower. Every configuration goes through the
service's own code (`tandem.serve.answering.expanded`: one embedding call and one Milvus call per request,
fused by `tandem.promptgen.expand.fuse`), one request at a time, so the latencies are per request.

Generator: `--generator DIR` (a `tandem promptgen train` folder) or, by default, the small preset
trained here on catalogue-teacher examples of the training items (relabelled with MiniLM).
Writes benchmarks/results/query_expansion.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tandem.cli import setup_logging
from tandem.core.config_release import IndexConfig
from tandem.evaluation.metrics import bootstrap_ci, bootstrap_cis, per_pair_metrics, target_ranks
from tandem.promptgen.expand import QueryExpander
from tandem.promptgen.model import GeneratorConfig, GeneratorTrainConfig
from tandem.promptgen.relabel import SimilarityScorer
from tandem.promptgen.teacher import catalogue_teacher
from tandem.promptgen.train import load, train_generator
from tandem.release.index import ItemIndex
from tandem.serve.answering import expanded

RESULTS = Path(__file__).parent / "results" / "query_expansion.md"
FASHION = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-small"
DEPTH = 100  # items retrieved per query and kept after fusion: recall@100 needs 100
KS = (2, 4, 8)
METRICS = ("attr recall@10", "attr recall@100", "attr mrr@10", "own recall@10", "own recall@100", "own mrr@10")


def catalogue(items: int | None) -> pd.DataFrame:
    s = pd.read_csv(FASHION / "styles.csv").dropna(subset=["productDisplayName", "subCategory", "baseColour"])
    s = s.sample(frac=1.0, random_state=0).reset_index(drop=True).head(items)  # the split below is random
    return pd.DataFrame(
        {
            "item_id": s["id"].astype(str),
            "title": s["productDisplayName"].astype(str),
            "topics": [[a, b, str(c)] for a, b, c in zip(s["subCategory"], s["baseColour"], s["usage"], strict=True)],
            "content": s["gender"] + " " + s["masterCategory"] + " " + s["season"].fillna(""),
            "relevance_key": s["subCategory"] + "|" + s["baseColour"] + "|" + s["gender"],
        }
    )


def item_text(row) -> str:
    return " ".join([row.title, *row.topics])


def attribute_metrics(found: list[str], key: str, keys: dict[str, str], n_relevant: int) -> dict[str, float]:
    relevant = [keys[i] == key for i in found]
    first = next((r for r, hit in enumerate(relevant[:10]) if hit), None)
    return {
        "attr recall@10": sum(relevant[:10]) / min(10, n_relevant),
        "attr recall@100": sum(relevant[:100]) / min(100, n_relevant),
        "attr mrr@10": 0.0 if first is None else 1.0 / (first + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=None, help="catalogue items (default: all)")
    parser.add_argument("--queries", type=int, default=300, help="held-out search intents evaluated")
    parser.add_argument("--generator", type=Path, default=None, help="a trained promptgen folder (default: train)")
    parser.add_argument("--examples", type=int, default=3000, help="teacher examples when training the generator")
    parser.add_argument("--epochs", type=int, default=10, help="generator epochs when training it")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-query-expansion"))
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    if not (FASHION / "styles.csv").exists():
        print(f"skipped: {FASHION / 'styles.csv'} is absent; this benchmark needs the fashion-small data set")
        return
    setup_logging(verbose=False)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    import torch

    catalog = catalogue(args.items)
    cut = len(catalog) * 4 // 5
    train_items, held_items = catalog.iloc[:cut], catalog.iloc[cut:]
    scorer = SimilarityScorer()

    started = time.perf_counter()
    if args.generator is None:
        examples = catalogue_teacher(train_items, args.examples, seed=0)
        generator_dir = args.workdir / "promptgen"
        train_cfg = GeneratorTrainConfig(epochs=args.epochs)
        train_generator(examples, generator_dir, GeneratorConfig.small(), train_cfg, scorer)
    else:
        generator_dir = args.generator
    train_s = time.perf_counter() - started
    generator, _, meta = load(generator_dir)
    fit = meta["generator"]["fit"]

    intents = catalogue_teacher(held_items, args.queries * 4, seed=1)
    intents = intents[intents["task"] == "search"].drop_duplicates("intent").head(args.queries).reset_index(drop=True)
    own = [t[0] for t in intents["target_items"]]
    keys = dict(zip(catalog["item_id"], catalog["relevance_key"], strict=True))
    counts = catalog["relevance_key"].value_counts().to_dict()

    started = time.perf_counter()
    vectors = scorer.embed([item_text(r) for r in catalog.itertuples()])
    embed_s = time.perf_counter() - started
    index = ItemIndex(IndexConfig(), args.workdir)
    index.write("fashion", catalog["item_id"].tolist(), vectors, {"title": catalog["title"].tolist()})
    arm = SimpleNamespace(
        collection="fashion", queries=SimpleNamespace(embed_queries=lambda texts, **_: scorer.embed(texts))
    )
    expanded(index, arm, "", ["warm-up"], DEPTH, QueryExpander(generator, depth=DEPTH))  # loads the collection

    # (name, k, include the original, its fusion weight: None = all prompts together, the default)
    configs = [("plain (intent text only)", None, True, None)]
    configs += [(f"k={k} + original (weight k)", k, True, None) for k in KS]
    configs += [("k=4 + original, plain RRF (weight 1)", 4, True, 1.0), ("k=4, prompts only", 4, False, None)]
    results, examples_shown = {}, {}
    for name, k, original, weight in configs:
        expander = QueryExpander(
            generator, k=k or 1, include_original=original, depth=DEPTH, seed=0, original_weight=weight
        )
        per_query: dict[str, list[float]] = {m: [] for m in METRICS[:3]}
        ranked, gen_ms, total_ms, n_queries = [], [], [], []
        for intent, target in zip(intents["intent"], own, strict=True):
            t0 = time.perf_counter()
            queries = [intent] if k is None else expander.prompts([intent])[0]
            t1 = time.perf_counter()
            got = expanded(index, arm, "", queries, DEPTH, expander)
            total_ms.append((time.perf_counter() - t0) * 1000)
            gen_ms.append((t1 - t0) * 1000)
            n_queries.append(len(queries))
            found = [r["item_id"] for r in got.rows]
            for m, v in attribute_metrics(found, keys[target], keys, counts[keys[target]]).items():
                per_query[m].append(v)
            ranked.append(found + [""] * (DEPTH - len(found)))
        own_pp = per_pair_metrics(target_ranks(np.array(ranked), np.array(own)), ks=(10, 100), mrr_k=10)
        per_query |= {f"own {m}": own_pp[m] for m in ("recall@10", "recall@100", "mrr@10")}
        results[name] = {
            "per_query": {m: np.asarray(v, dtype=float) for m, v in per_query.items()},
            "gen_ms": np.array(gen_ms),
            "total_ms": np.array(total_ms),
            "queries": float(np.mean(n_queries)),
        }
        if k == 4 and original and weight is None:
            examples_shown = {intents["intent"][i]: expander.prompts([intents["intent"][i]])[0][1:] for i in range(3)}
        print(name, {m: round(float(v.mean()), 3) for m, v in results[name]["per_query"].items()})
    index.close()

    plain = results[configs[0][0]]["per_query"]
    rows, deltas = [], []
    for name, r in results.items():
        cis = bootstrap_cis(r["per_query"], n_boot=1000, seed=0)
        cells = [f"{r['per_query'][m].mean():.3f} [{cis[m][0]:.3f}, {cis[m][1]:.3f}]" for m in METRICS]
        rows.append(
            f"| {name} | {r['queries']:.1f} | "
            + " | ".join(cells)
            + f" | {np.median(r['gen_ms']):.0f} | {np.median(r['total_ms']):.0f} |"
        )
        if name != configs[0][0]:
            diff = []
            for m in ("attr recall@10", "attr mrr@10", "own recall@10", "own mrr@10"):
                d = r["per_query"][m] - plain[m]
                lo, hi = bootstrap_ci(d, n_boot=1000, seed=0)
                diff.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
            deltas.append(f"| {name} | " + " | ".join(diff) + " |")
    fit_line = (
        f"small preset ({fit['parameters']:,} parameters) trained here on {meta['examples']} catalogue-teacher "
        f"examples of the {cut} training items, {args.epochs} epochs, {train_s:.0f} s incl. MiniLM relabelling; "
        f"final loss {fit['epoch_loss'][-1]:.3f}"
        if args.generator is None
        else f"loaded from {args.generator} ({fit['parameters']:,} parameters, {meta['examples']} examples)"
    )
    lines = [
        "# Query expansion: plain search vs generated prompts fused by RRF (fashion-small)",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), no GPU; shared and noisy, milliseconds are indicative",
        "",
        f"Catalogue: {len(catalog)} fashion-small items, all indexed (Milvus Lite HNSW via `ItemIndex`, embedded in "
        f"{embed_s:.0f} s); the generator saw only the first {cut} (random split). {len(intents)} held-out search "
        "intents from the OFFLINE DEMO catalogue teacher (templates that contain the item's title, e.g. "
        "'looking for a {title}'), one per held-out item at most.",
        "Encoder: bundled all-MiniLM-L6-v2 for items (title + subCategory, baseColour, usage) AND queries: an "
        "untrained, symmetric text encoder, not a trained HotelMatch query tower.",
        f"Generator: {fit_line}. Expansion: length=medium, relevance=high, sampling temperature 1.0 / top-p 0.95, "
        f"seed 0, 2k samples de-duplicated to at most k; each query retrieves {DEPTH} items, fused by RRF (k=60) "
        "with the original query weighted as much as all prompts together (`original_weight`, default) or "
        "equally (plain RRF).",
        "Relevance: attr = same subCategory + baseColour + gender as the intent's item (recall@K capped: "
        "|relevant in top K| / min(K, |relevant|)); own = the intent's item alone. 95 % bootstrap intervals "
        "(1000 resamples over intents).",
        "",
        "| configuration | queries / request | " + " | ".join(METRICS) + " | generation ms p50 | request ms p50 |",
        "|---" * (len(METRICS) + 4) + "|",
        *rows,
        "",
        "Paired difference to plain search (mean over intents, 95 % bootstrap interval):",
        "",
        "| configuration | Δ attr recall@10 | Δ attr mrr@10 | Δ own recall@10 | Δ own mrr@10 |",
        "|---|---|---|---|---|",
        *deltas,
        "",
        "Generated prompts (k=4) for the first held-out intents:",
        "",
        *(f"- `{intent}` -> {', '.join(f'`{p}`' for p in prompts)}" for intent, prompts in examples_shown.items()),
        "",
        "Request ms = generation + one embedding call for all queries + one Milvus search + fusion, one request at a "
        "time (the service path `tandem.serve.answering.expanded`); generation samples 2k prompts at batch 1.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
