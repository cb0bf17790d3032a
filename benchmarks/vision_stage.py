"""Time and memory of the align stage (tandem.pipeline.align) on a slice of fashion-small, on this machine.

    .venv/bin/python benchmarks/vision_stage.py [--items 500] [--data ../shared/data/fashion-small]
        [--workdir /tmp/tandem-vision-stage] [--threads 0] [--no-write]

The stage runs as the pipeline calls it (`registry.run_stage("align", run, cfg)`) with the recipe defaults
(params.yaml: 224 px images, 32 px patches, a 2-layer 256-wide ViT; vision: 8 epochs, batch 64, the bundled
all-MiniLM-L6-v2 as the frozen text model), on `--items` products with one photo each and their display name
as the text. The items are what the features stage would give back (item_id, title, topics, content, images),
read here from styles.csv instead of through a whole run: only the align stage is timed. Three calls: the first
aligns (cold cache), the second finds the tower by the catalogue's digest (cached), the third is the same
catalogue without images (the no-op every image-free catalogue gets, e.g. the demo's Complete Journey).
Peak memory is the process's maximum resident set (getrusage), before and after the first call.
Writes benchmarks/results/vision_stage.md unless --no-write.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def load_items(data: Path, n: int) -> pd.DataFrame:
    styles = pd.read_csv(data / "styles.csv").dropna(subset=["productDisplayName"])
    styles = styles[[(data / "images" / f"{i}.jpg").is_file() for i in styles["id"]]].head(n)
    return pd.DataFrame(
        {
            "item_id": styles["id"].astype(str),
            "title": styles["productDisplayName"],
            "topics": [[]] * len(styles),
            "content": "",
            "images": [[str(data / "images" / f"{i}.jpg")] for i in styles["id"]],
        }
    ).reset_index(drop=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-small")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-vision-stage"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (args.data / "styles.csv").is_file():
        print(f"no fashion-small data at {args.data}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from tandem.core.config import load_config
    from tandem.pipeline import registry, stages

    cfg = load_config(ROOT / "params.yaml")  # the DVC pipeline's recipe: the defaults a user starts from
    items = load_items(args.data, args.items)
    shutil.rmtree(args.workdir, ignore_errors=True)
    run = stages.RunPaths.of(args.workdir, "bench")
    (run / "pairs").mkdir(parents=True)  # no search logs: no query_train.parquet, every item has a text
    current = {"items": items}
    stages.items = stages.catalog = lambda r: current["items"]  # what the load and features stages would give back

    rss_before = peak_mb()
    start = time.perf_counter()
    first = registry.run_stage("align", run, cfg, progress=False)
    cold = time.perf_counter() - start
    rss_after = peak_mb()
    start = time.perf_counter()
    second = registry.run_stage("align", run, cfg, progress=False)
    cached = time.perf_counter() - start
    current["items"] = items.assign(images=[[]] * len(items))
    start = time.perf_counter()
    third = registry.run_stage("align", run, cfg, progress=False)
    noop = time.perf_counter() - start
    assert not first["cached"] and second["cached"] and third["skipped"] == "no item has an image"

    training = first["training"]
    pairs, steps = first["pairs_used"], training["steps"]
    seen = pairs * cfg.vision.epochs
    command = "python benchmarks/vision_stage.py " + " ".join(sys.argv[1:])
    m, v = cfg.model, cfg.vision
    lines = [
        "# The align stage: time and memory",
        "",
        f"Command: `{command.strip()}`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        + ("GPU" if torch.cuda.is_available() else "no GPU"),
        f"Data: {pairs} fashion-small products, one 224x224 JPEG each, display name as the text, no search logs.",
        f"Recipe: params.yaml (model: {m.image_size} px, {m.patch_size} px patches, width {m.vision_width}, "
        f"{m.vision_layers} layers; vision: {v.epochs} epochs, batch {v.batch_size}, lr {v.lr}, text model: "
        "bundled all-MiniLM-L6-v2).",
        "",
        "| call | seconds | note |",
        "|---|---:|---|",
        f"| first (aligns) | {cold:.1f} | {steps} steps, loss {training['first_loss']:.3f} -> "
        f"{training['last_loss']:.3f} |",
        f"| second, same catalogue | {cached:.2f} | cached: the tower found by the catalogue's digest |",
        f'| catalogue without images | {noop:.3f} | no-op: "{third["skipped"]}" |',
        "",
        f"- Time per photo: {1000 * cold / pairs:.0f} ms per catalogue photo for the whole stage "
        f"({1000 * cold / seen:.1f} ms per photo per epoch, image decoding and text targets included).",
        f"- Peak resident memory: {rss_before:.0f} MB before the first call (torch, transformers, pandas imported), "
        f"{rss_after:.0f} MB after it: +{rss_after - rss_before:.0f} MB for {pairs} photos "
        "(pixels held as float16, 301 kB per 224 px photo, plus the ViT, its optimizer and the text model).",
        f"- Scale: time grows with vision.max_pairs x vision.epochs (default cap {v.max_pairs} pairs: about "
        f"{cold / pairs * v.max_pairs / 60:.1f} min on this machine by linear extrapolation, pixels "
        f"{v.max_pairs * 3 * m.image_size**2 * 2 / 2**20:.0f} MB); a GPU pod (the Kubeflow align component) "
        "runs the steps on the GPU.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "vision_stage.md"
        out.write_text(text)
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
