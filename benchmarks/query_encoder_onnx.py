"""Query-encoder latency: torch fp32 vs the ONNX export (fp32 and int8), and what int8 costs in quality.

    .venv/bin/python benchmarks/query_encoder_onnx.py [--model MODEL_DIR] [--queries 300] [--threads 1,2]
        [--batch 64] [--items 10000] [--data ../shared/data/fashion-small] [--note TEXT] [--no-write]

The model is a HotelMatch saved by tandem (--model, e.g. WORKDIR/runs/<run_id>/model), or by
default an untrained one at tandem.core.config.ModelConfig's defaults (bundled all-MiniLM-L6-v2 item
tower, a query tower of its first query_layers layers): latency does not depend on training.
It is exported with `tandem.models.onnx_export.export_onnx` unless a fresh export exists.

- Single-query latency: each of --queries real-looking short queries (fashion-small attributes,
  or synthetic ones without that data) is embedded alone (`embed_queries([q], batch_size=1)`,
  tokenising included, as the search service does) by torch, ONNX fp32 and ONNX int8, the three
  interleaved query by query (rotating which goes first) so that load from other jobs on the
  machine hits all of them alike; p50 / p99 / mean after 20 warm-up queries each, at every
  --threads count (torch.set_num_threads and onnxruntime intra-op threads alike).
- Throughput: all queries in batches of --batch, median of 3 interleaved rounds, queries/s.
- Quality of int8 (and fp32): cosine of each query vector to torch's, and the overlap of the top 10
  items against torch's top 10 over (a) the fashion-small titles embedded by the model's item tower
  and (b) --items random unit vectors.
Ratios to torch come from the same run; OMP_WAIT_POLICY=PASSIVE (this script's default) keeps
waiting threads of torch and onnxruntime from spinning on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "query_encoder_onnx.md"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-small"
WARMUP = 20


def make_queries(styles: pd.DataFrame | None, n: int, seed: int = 0) -> list[str]:
    """Short search-box queries: colour + kind, gender/usage + kind, or a product name's first words."""
    rng = np.random.default_rng(seed)
    if styles is None:
        colours = ["red", "navy blue", "black", "white", "green", "beige", "pink", "grey"]
        kinds = ["shirt", "track pants", "handbag", "running shoes", "watch", "kurta", "sunglasses", "jeans"]
        extra = ["men", "women", "kids", "casual", "formal", "sports", "summer", "leather"]
        return [f"{rng.choice(colours)} {rng.choice(kinds)} {rng.choice(extra)}"[: 20 + i % 30] for i in range(n)]
    rows = styles.sample(n, random_state=seed).fillna("")
    out = []
    for i, r in enumerate(rows.itertuples()):
        name = str(r.productDisplayName).split()
        shapes = [
            f"{r.baseColour} {r.subCategory}",
            f"{r.gender} {r.usage} {r.subCategory}",
            " ".join(name[: 2 + i % 4]),
            f"{r.baseColour} {' '.join(name[-2:])} for {r.gender}",
        ]
        out.append(" ".join(shapes[i % len(shapes)].lower().split()))
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def interleaved(encoders: dict, queries: list[str]) -> dict[str, dict[str, float]]:
    """Single-query latency of each encoder, the encoders taking turns query by query."""
    names = list(encoders)
    for name in names:
        for q in queries[:WARMUP]:
            encoders[name]([q])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, q in enumerate(queries):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            encoders[name]([q])
            times[name].append(time.perf_counter() - start)
    return {name: percentiles(t) for name, t in times.items()}


def throughput(encoders: dict, queries: list[str], batch: int, rounds: int = 3) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(rounds):
        for name, embed in encoders.items():
            start = time.perf_counter()
            embed(queries, batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(queries) / float(np.median(s)) for name, s in seconds.items()}


def top10_overlap(queries: np.ndarray, reference: np.ndarray, items: np.ndarray) -> float:
    def top(q: np.ndarray) -> np.ndarray:
        return np.argpartition(-(q @ items.T), 10, axis=1)[:, :10]

    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top(queries), top(reference), strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="saved HotelMatch folder (default: untrained)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-onnx-bench"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--items", type=int, default=10000, help="random unit item vectors for the top-10 overlap")
    parser.add_argument("--data", type=Path, default=DATA, help="fashion-small (styles.csv); optional")
    parser.add_argument("--note", default="", help="a line added to the results (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime start their threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started, load_start = time.perf_counter(), os.getloadavg()[0]

    import onnxruntime
    import torch

    from tandem.core.config import ModelConfig
    from tandem.models import build_model, load_model
    from tandem.models.onnx_export import OnnxQueryEncoder, check_export, export_onnx

    model_dir = args.model
    if model_dir is None:
        model_dir = args.workdir / "model"
        if not (model_dir / "config.json").is_file():
            torch.manual_seed(0)
            build_model(ModelConfig()).save(model_dir)
    model = load_model(model_dir)
    export_s = None
    try:
        check_export(model_dir)
    except ValueError:
        t0 = time.perf_counter()
        export_onnx(model_dir)
        export_s = time.perf_counter() - t0
    meta = check_export(model_dir)
    sizes = {p: (model_dir / "onnx" / n).stat().st_size / 2**20 for p, n in meta["files"].items()}

    styles = pd.read_csv(args.data / "styles.csv") if (args.data / "styles.csv").is_file() else None
    queries = make_queries(styles, args.queries)
    threads = [int(t) for t in args.threads.split(",")]

    latency, qps = {}, {}
    for n in threads:
        torch.set_num_threads(n)
        onnx = {p: OnnxQueryEncoder(model_dir, p, threads=n) for p in ("fp32", "int8")}
        encoders = {
            "torch fp32": lambda q, b=1: model.embed_queries(q, batch_size=b, progress=False),
            "onnx fp32": lambda q, b=1, e=onnx["fp32"]: e.embed_queries(q, batch_size=b),
            "onnx int8": lambda q, b=1, e=onnx["int8"]: e.embed_queries(q, batch_size=b),
        }
        latency[n] = interleaved(encoders, queries)
        qps[n] = throughput(encoders, queries, args.batch)
    tokenizer = OnnxQueryEncoder(model_dir, "int8", threads=1)
    t0 = time.perf_counter()
    for q in queries:
        tokenizer.tokenize([q])
    tokenize_ms = (time.perf_counter() - t0) / len(queries) * 1e3

    # quality: every query vector against torch's, and top-10 items against torch's
    torch.set_num_threads(max(threads))
    reference = model.embed_queries(queries, progress=False)
    vectors = {p: OnnxQueryEncoder(model_dir, p).embed_queries(queries) for p in ("fp32", "int8")}
    rng = np.random.default_rng(0)
    random_items = rng.standard_normal((args.items, model.dim)).astype(np.float32)
    random_items /= np.linalg.norm(random_items, axis=1, keepdims=True)
    item_sets = {f"{args.items:,} random unit vectors": random_items}
    if styles is not None:
        catalog = pd.DataFrame(
            {
                "item_id": styles["id"].astype(str),
                "title": styles["productDisplayName"].fillna(""),
                "topics": styles[["masterCategory", "subCategory", "baseColour"]].fillna("").values.tolist(),
            }
        )
        t0 = time.perf_counter()
        item_sets[f"{len(catalog):,} fashion-small titles (item tower)"] = model.embed_items(catalog, progress=False)
        item_embed_s = time.perf_counter() - t0
    quality = {}
    for p, got in vectors.items():
        cosine = (got * reference).sum(1)
        quality[p] = {
            "max abs diff": float(np.abs(got - reference).max()),
            "mean cosine": float(cosine.mean()),
            "min cosine": float(cosine.min()),
            **{f"top-10 overlap, {what}": top10_overlap(got, reference, items) for what, items in item_sets.items()},
        }
    total = time.perf_counter() - started
    load_end = os.getloadavg()[0]

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    source = f"`{args.model}`" if args.model else "untrained HotelMatch at ModelConfig() defaults"
    lines = [
        "# Query encoder: torch fp32 vs ONNX fp32 / int8",
        "",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {cpu}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, no GPU; load average "
        f"{load_start:.1f} at the start, {load_end:.1f} at the end; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}.",
        *(["", f"**Note:** {args.note}"] if args.note else []),
        "",
        f"Model: {source}; query tower {model.query_encoder.config.num_hidden_layers} layers x "
        f"{model.query_encoder.config.hidden_size} wide, output dim {model.dim}, max {meta['max_query_tokens']} "
        f"query tokens. Export: opset {meta['opset']}, {meta['exporter']}, int8 = onnxruntime quantize_dynamic "
        f"(QInt8 weights, per_channel={meta['quantization']['per_channel']}); files fp32 {sizes['fp32']:.1f} MiB, "
        f"int8 {sizes['int8']:.1f} MiB" + (f"; export took {export_s:.0f} s." if export_s else " (existing export)."),
        f"Queries: {len(queries)} "
        + ("from fashion-small attributes" if styles is not None else "synthetic")
        + f", e.g. {', '.join(repr(q) for q in queries[:4])}; mean {np.mean([len(q) for q in queries]):.0f} chars.",
        "",
        "Single-query latency (batch 1, tokenising included, interleaved), ms; speed-up = torch p50 / p50:",
        "",
        "| threads | encoder | p50 | p99 | mean | speed-up (p50) | batch-"
        + str(args.batch)
        + " queries/s | throughput vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in threads:
        base, base_qps = latency[n]["torch fp32"]["p50"], qps[n]["torch fp32"]
        for name, s in latency[n].items():
            lines.append(
                f"| {n} | {name} | {s['p50']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} | {base / s['p50']:.2f}x "
                f"| {qps[n][name]:,.0f} | {qps[n][name] / base_qps:.2f}x |"
            )
    lines += [
        "",
        f"Tokenising one query (the same Python tokenizer in every row): {tokenize_ms:.2f} ms.",
        "",
        "Quality against torch fp32 (same queries; top-10 overlap = share of torch's 10 best items also "
        "returned, by exact dot product):",
        "",
        "| encoder | " + " | ".join(quality["int8"]) + " |",
        "|---" * (len(quality["int8"]) + 1) + "|",
        *(f"| onnx {p} | " + " | ".join(f"{v:.4g}" for v in q.values()) + " |" for p, q in quality.items()),
        "",
        (f"Item tower over the fashion-small titles: {item_embed_s:.0f} s. " if styles is not None else "")
        + f"Total wall time {total:.0f} s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
