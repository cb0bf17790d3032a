"""Training throughput: pairs/s, seconds per step and peak memory of HotelMatch-LLM and NoteLLM-2.

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--warmup 2] [--batch-size N] [--items 2000]
        [--recipe-hotelmatch R] [--recipe-notellm2 R] [--families hotelmatch,notellm2] [--threads N]
        [--image-px 128] [--seed 0] [--note TEXT] [--no-write]

Both seed families train through the real trainer (`tandem.training.trainer.fit`, accelerate, AdamW,
bf16 autocast on CUDA via TrainConfig.mixed_precision='auto') on a seeded synthetic
catalogue made in a temp folder: --items items with 1-3 JPEG images each (--image-px square,
resized to the recipe's image_size by the loader), a title, topics, content, city, country
and facilities (~30-60 words of text), and uniformly random pairs. The recipes default to
training/{hotelmatch,notellm2}_cpu.yaml, or the *_gpu.yaml ones when CUDA is available
(their Hugging Face ids must be in the local cache or reachable); each recipe's model and
train settings are used as they are, except max_steps (--warmup + --steps), the batch size
(--batch-size, when given), no TensorBoard, no validation and no checkpoints.

Each (family, catalogue) runs in a fresh subprocess, so its memory high-water mark is its
own: the multimodal catalogue, and as the same-run reference the same catalogue without
images (the text-only path; the image path's cost shows as the ratio of the two).

- Steady-state time: a global optimizer step hook stamps the end of every optimizer step
  (after a CUDA synchronize on GPU); s/step is the mean over the last --steps steps, i.e.
  (end of the last step - end of step --warmup) / --steps. The first --warmup steps
  (AdamW state allocation, kernel selection, caches) are excluded, and so are model
  loading and the trainer's set-up. A step includes the batch's collation (tokenising,
  reading and resizing images: the DataLoader runs in the training process), whose share
  is reported; "fit pairs/s" is the trainer's own end-to-end figure (set-up included).
- Peak memory: on CUDA, torch.cuda.max_memory_allocated during fit (the trainer resets it
  at the start); on CPU the worker process's peak RSS (ru_maxrss), which includes the
  interpreter, torch, the model and everything loaded before training; the RSS after the
  model was built is given beside it.
- CPU threads: torch's default (--threads to change), with OMP_WAIT_POLICY=PASSIVE in the
  workers unless the environment sets it: OpenMP threads that spin while waiting lose most
  of their time slices when another job shares the cores (a 2-thread transformer layer ran
  ~4.5x slower than with 1 thread on the busy 2-core box this was written on; PASSIVE
  recovered it). Set OMP_WAIT_POLICY=ACTIVE to measure the spinning default.
- HotelMatch's towers: after training, the forward time (eval mode, no grad, the trainer's
  precision) of the query tower and of the item tower on one collated batch of the run's
  catalogue, median of 5 alternating runs, and their ratio.

A NoteLLM-2 pair embeds two items (the query item and its partner); a HotelMatch pair one
query text and one item. Prints a Markdown report and writes it to
benchmarks/results/train_throughput.md. Ratios within one run hold on a noisy machine;
absolute seconds are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "train_throughput.md"
FAMILIES = ("hotelmatch", "notellm2")
NAMES = {"hotelmatch": "HotelMatch-LLM", "notellm2": "NoteLLM-2"}
VARIANTS = ("multimodal", "text-only")
OMP_DEFAULT = "PASSIVE"  # the workers' OpenMP wait policy unless the caller's environment sets one

# --- synthetic catalogue ---------------------------------------------------------------------

WORDS = (
    "quiet bright spacious modern classic cosy elegant simple durable light soft warm fresh clean "
    "comfortable compact large small family friendly central historic sunny airy stylish practical "
    "room suite view garden terrace balcony kitchen breakfast dinner coffee table chair lamp shelf "
    "window door floor wall bed sofa desk mirror cotton linen wool leather wood glass steel stone "
    "river lake beach mountain park street market station museum harbour square bridge tower "
    "walk minutes from near close to the old town centre with and for a of in on at by our your "
    "guests travellers couples business weekend summer winter morning evening night daily service"
).split()
TOPICS = (
    "hotel apartment hostel villa resort cabin shirt shoe lamp mug jacket dress bag watch "
    "chair table sofa rug kitchen garden outdoor travel sport home office kids vintage"
).split()
CITIES = ("Paris", "Lisbon", "Berlin", "Prague", "Vienna", "Porto", "Seville", "Krakow", "Turin", "Ghent")
COUNTRIES = ("France", "Portugal", "Germany", "Czechia", "Austria", "Spain", "Poland", "Italy", "Belgium")
FACILITIES = ("wifi", "pool", "parking", "gym", "spa", "bar", "restaurant", "pets", "airport shuttle", "laundry")


def _sentence(rng: np.random.Generator, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1))))


def _image(path: Path, rng: np.random.Generator, px: int) -> None:
    from PIL import Image, ImageDraw

    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", (px, px), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, px // 2, 2))
        x1, y1 = x0 + int(rng.integers(px // 8, px // 2)), y0 + int(rng.integers(px // 8, px // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    image.save(path, quality=90)


def make_catalogue(folder: Path, n_items: int, image_px: int, seed: int) -> pd.DataFrame:
    """n_items rows with 1-3 images each (absolute paths) and ~30-60 words of text."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_items):
        paths = []
        for j in range(int(rng.integers(1, 4))):
            path = folder / "images" / f"{i}_{j}.jpg"
            _image(path, rng, image_px)
            paths.append(str(path))
        rows.append(
            {
                "item_id": f"it{i}",
                "title": _sentence(rng, 4, 8),
                "topics": "|".join(rng.choice(TOPICS, size=int(rng.integers(2, 5)), replace=False)),
                "content": _sentence(rng, 20, 40),
                "city": str(rng.choice(CITIES)),
                "country": str(rng.choice(COUNTRIES)),
                "facilities": "|".join(rng.choice(FACILITIES, size=int(rng.integers(1, 5)), replace=False)),
                "images": "|".join(paths),
            }
        )
    return pd.DataFrame(rows)


def make_pairs(n_items: int, n_pairs: int, seed: int) -> pd.DataFrame:
    """Uniformly random (item, other item) pairs."""
    rng = np.random.default_rng([seed, 1])
    a = rng.integers(0, n_items, n_pairs)
    b = (a + rng.integers(1, n_items, n_pairs)) % n_items  # never the item itself
    return pd.DataFrame({"item_id": [f"it{i}" for i in a], "related_item_id": [f"it{i}" for i in b]})


# --- worker: one (family, catalogue) in a fresh process, prints one JSON line ----------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _tower_times(model, batch: dict, mixed_precision: str, reps: int = 5) -> dict:
    """Median forward ms of HotelMatch's query and item towers on one collated batch."""
    import torch

    cuda = model.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and mixed_precision == "bf16")

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - started) * 1000

    def query():
        return model._queries(batch)

    def item():
        return model._items(batch, mask_geography=False)

    model.eval()
    times: dict[str, list[float]] = {"query": [], "item": []}
    with torch.no_grad(), autocast:
        query()  # warm-up
        item()
        for _ in range(reps):  # alternate, so drift on a busy machine hits both alike
            times["query"].append(timed(query))
            times["item"].append(timed(item))
    return {f"{k}_forward_ms": statistics.median(v) for k, v in times.items()}


def worker(spec: dict) -> dict:
    import logging
    from dataclasses import replace

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from tandem.core.config import load_config
    from tandem.models import build_loss, build_model
    from tandem.training.data import PairDataset
    from tandem.training.trainer import fit

    logging.basicConfig(level=logging.WARNING)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    rc = load_config(spec["recipe_path"])
    if rc.model.family != spec["family"]:
        return {"error": f"{spec['recipe']} is a {rc.model.family} recipe, not {spec['family']}"}
    train = replace(
        rc.train,
        epochs=1,
        max_steps=spec["warmup"] + spec["steps"],
        batch_size=spec["batch_size"] or rc.train.batch_size,
        tensorboard=False,
        eval_every=0,
        patience=0,
        checkpoint_every=0,
    )
    catalog = pd.read_parquet(spec["catalog"])
    if spec["variant"] == "text-only":
        catalog["images"] = ""
    pairs = pd.read_parquet(spec["pairs"])

    torch.manual_seed(train.seed)
    started = time.perf_counter()
    try:
        model = build_model(rc.model, catalog)
    except ValueError as err:  # a recipe's model cannot be loaded (not cached, no network, wrong id)
        return {"error": str(err)}
    loss = build_loss(rc.model, train)
    build_s = time.perf_counter() - started
    rss_built = _rss_mb()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # one collated batch: what the model is fed (and HotelMatch's tower timing input)
    data = PairDataset(pairs, catalog)
    batch = model.collate([data[i] for i in range(train.batch_size)])
    if spec["family"] == "hotelmatch":
        rows = len(batch["image_counts"])
        images = int(batch["image_counts"].sum())
        text_tokens = float(batch["item_attention_mask"].sum(1).float().mean())
        query_tokens = float(batch["query_attention_mask"].sum(1).float().mean())
        visual = model.num_visual_tokens
    else:
        rows = len(batch["input_ids"])
        images = int(batch["pixels"].shape[0])
        text_tokens = float(batch["attention_mask"].sum(1).float().mean())  # prompt tokens, visual ones excluded
        query_tokens = None
        visual = model.num_visual

    # end of every optimizer step; the collation calls (the DataLoader runs in this process)
    ends: list[float] = []
    collations: list[tuple[float, float]] = []
    cuda = torch.cuda.is_available() and train.device != "cpu"

    def stamp(*_):
        if cuda:
            torch.cuda.synchronize()
        ends.append(time.perf_counter())

    collate = model.collate

    def timed_collate(examples):
        t0 = time.perf_counter()
        out = collate(examples)
        collations.append((t0, time.perf_counter()))
        return out

    model.collate = timed_collate
    handle = register_optimizer_step_post_hook(stamp)
    try:
        stats = fit(model, loss, pairs, catalog, train, progress=False)
    finally:
        handle.remove()
        del model.collate

    if len(ends) != stats["steps"] or stats["steps"] <= spec["warmup"]:
        raise RuntimeError(f"{len(ends)} optimizer steps stamped for {stats['steps']} trainer steps")
    lo, hi = ends[spec["warmup"] - 1], ends[-1]
    measured = len(ends) - spec["warmup"]
    step_s = (hi - lo) / measured
    pairs_per_step = train.batch_size * train.grad_accum * stats["num_processes"]
    collate_s = sum(b - a for a, b in collations if lo <= a < hi)
    result = {
        "family": spec["family"],
        "variant": spec["variant"],
        "recipe": spec["recipe"],
        "device": stats["device"],
        "mixed_precision": stats["mixed_precision"],
        "threads": torch.get_num_threads(),
        "batch_size": train.batch_size,
        "grad_accum": train.grad_accum,
        "pairs_per_step": pairs_per_step,
        "steps": stats["steps"],
        "measured_steps": measured,
        "step_s": step_s,
        "pairs_per_s": pairs_per_step / step_s,
        "collate_share": collate_s / (hi - lo),
        "fit_pairs_per_s": stats["pairs_per_s"],
        "fit_s": stats["seconds"],
        "build_s": build_s,
        "peak_memory_mb": stats["peak_memory_mb"],
        "rss_built_mb": rss_built,
        "params": params,
        "trainable": trainable,
        "image_size": rc.model.image_size,
        "patch_size": rc.model.patch_size,
        "visual_tokens": visual,
        "rows_per_pair": rows / train.batch_size,
        "images_per_row": images / rows,
        "text_tokens": text_tokens,
        "query_tokens": query_tokens,
        "final_loss": stats["final_loss"],
    }
    if cuda:
        result["peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    if spec["family"] == "hotelmatch":
        result |= _tower_times(model, batch, stats["mixed_precision"])
    return result


# --- the parent: makes the data, runs the workers, writes the report --------------------------


def run_worker(spec: dict) -> dict:
    """This script as a worker on `spec` (its stderr passes through); its JSON result."""
    env = {"OMP_WAIT_POLICY": OMP_DEFAULT, **os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"{spec['family']} ({spec['variant']}) worker failed (rc={proc.returncode}); see above")
    result = json.loads(lines[-1])
    if "error" in result:
        raise SystemExit(
            f"{NAMES[spec['family']]}: cannot build the model of {spec['recipe']}: {result['error']}\n"
            "Cache the recipe's Hugging Face models first (e.g. `huggingface-cli download <id>`), point the "
            "recipe at local folders, or pass --recipe-hotelmatch / --recipe-notellm2 with the *_cpu.yaml recipes."
        )
    return result


def machine(cuda: bool) -> str:
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = (
        f"{platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    if cuda:
        props = torch.cuda.get_device_properties(0)
        return f"{text}, GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"{text}, no GPU"


def _m(n: float) -> str:
    return f"{n / 1e6:.1f}M"


def report(args, results: list[dict], cuda: bool, load: tuple[float, float], seconds: float) -> str:
    by = {(r["family"], r["variant"]): r for r in results}
    families = list(dict.fromkeys(r["family"] for r in results))
    threads = sorted({r["threads"] for r in results})
    omp = os.environ.get("OMP_WAIT_POLICY")
    omp = f"{omp} (from the environment)" if omp else f"{OMP_DEFAULT} (this script's default)"
    memory = "peak CUDA memory allocated MB" if cuda else "peak RSS MB (process)"
    lines = [
        "# Training throughput: HotelMatch-LLM and NoteLLM-2",
        "",
        f"Command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {machine(cuda)}; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end",
        f"Workers: {'/'.join(map(str, threads))} torch thread(s), OMP_WAIT_POLICY={omp}.",
        f"Data: {args.items} synthetic items (seed {args.seed}; 1-3 JPEG images of {args.image_px} px each, "
        "~30-60 words of title/topics/content, city, country, facilities), uniformly random pairs. "
        f"Each row: {args.warmup} warm-up + the measured optimizer steps in a fresh process.",
        "",
    ]
    if args.note:
        lines += [f"**Note:** {args.note}", ""]
    lines += [
        "| family | catalogue | device, precision | pairs/step | steady s/step | steady pairs/s | collation share "
        f"| fit pairs/s (end to end) | {memory} | RSS after build MB | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {NAMES[r['family']]} | {r['variant']} | {r['device']}, {r['mixed_precision']} | {r['pairs_per_step']} "
            f"| {r['step_s']:.2f} | {r['pairs_per_s']:.1f} | {r['collate_share']:.0%} | {r['fit_pairs_per_s']:.1f} "
            f"| {r['peak_memory_mb']:,.0f} | {r['rss_built_mb']:,.0f} | {r['final_loss']:.3f} |"
        )
    lines += [
        "",
        "| family | recipe | params total / trainable | batch x accumulation | image size / patch | visual tokens "
        "per item | images per item (fed) | text tokens per item (fed) | items per pair |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for family in families:
        r = by[(family, "multimodal")]
        lines.append(
            f"| {NAMES[family]} | `{r['recipe']}` | {_m(r['params'])} / {_m(r['trainable'])} "
            f"| {r['batch_size']} x {r['grad_accum']} | {r['image_size']} / {r['patch_size']} | {r['visual_tokens']} "
            f"| {r['images_per_row']:.2f} | {r['text_tokens']:.1f}"
            + (f" (query {r['query_tokens']:.1f})" if r["query_tokens"] is not None else "")
            + f" | {r['rows_per_pair']:.0f} |"
        )
    lines += ["", "Same-run ratios (these hold on a noisy machine; the seconds above are indicative only):", ""]
    for family in families:
        mm, text = by[(family, "multimodal")], by[(family, "text-only")]
        lines.append(
            f"- {NAMES[family]}: a multimodal step takes {mm['step_s'] / text['step_s']:.2f}x the text-only step "
            f"({mm['step_s']:.2f} s vs {text['step_s']:.2f} s); peak memory {mm['peak_memory_mb']:,.0f} vs "
            f"{text['peak_memory_mb']:,.0f} MB."
        )
    for variant in VARIANTS if "hotelmatch" in families else ():
        hm = by[("hotelmatch", variant)]
        lines.append(
            f"- HotelMatch-LLM towers, {variant} (forward, eval mode, no grad, batch {hm['batch_size']}, after "
            f"training): item tower {hm['item_forward_ms']:.0f} ms, query tower {hm['query_forward_ms']:.0f} ms, "
            f"item / query {hm['item_forward_ms'] / hm['query_forward_ms']:.1f}x."
        )
    lines += [
        "",
        f"Steady s/step: mean over the last {args.steps} optimizer steps (from the end of warm-up step {args.warmup} "
        "to the end of the last step, stamped by an optimizer step hook), collation (tokenising, reading and "
        "resizing images in the training process) included; collation share = its part of that time. "
        "Fit pairs/s: the trainer's figure, set-up and warm-up included. "
        + (
            "Peak memory: torch.cuda.max_memory_allocated over the fit."
            if cuda
            else "Peak RSS: the worker's high-water mark (interpreter, torch, the model and the data included), "
            "so the training part is roughly peak RSS minus RSS after build."
        )
        + " A NoteLLM-2 pair embeds 2 items; a HotelMatch pair 1 query and 1 item.",
        "",
    ]
    if not cuda:
        lines += [
            "No GPU was visible in this run, so the CPU recipes ran without mixed precision. On a CUDA machine "
            "(bf16 autocast, the GPU recipes `training/hotelmatch_gpu.yaml` and `training/notellm2_gpu.yaml`, "
            "whose Hugging Face models BAAI/bge-large-en-v1.5, BAAI/bge-small-en-v1.5, openai/clip-vit-base-patch32, "
            "Qwen/Qwen2.5-1.5B and openai/clip-vit-base-patch16 must be in the local cache) run:",
            "",
            "    .venv/bin/python benchmarks/train_throughput.py --steps 50",
            "",
        ]
    lines += [f"Total wall time {seconds:.0f} s.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="measured optimizer steps (0 = 6 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps before the measured ones (>= 1)")
    parser.add_argument("--batch-size", type=int, default=0, help="pairs per step (0 = the recipe's)")
    parser.add_argument("--items", type=int, default=2000, help="catalogue items")
    parser.add_argument("--image-px", type=int, default=128, help="side of the synthetic JPEG images")
    parser.add_argument("--recipe-hotelmatch", default="", help="default: training/hotelmatch_{cpu,gpu}.yaml")
    parser.add_argument("--recipe-notellm2", default="", help="default: training/notellm2_{cpu,gpu}.yaml")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {FAMILIES}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in the workers (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="a remark to put in the report (e.g. what else ran)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # internal: one measurement in this fresh process
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.warmup < 1 or args.steps < 0 or args.batch_size == 1 or args.items < 2 or args.threads < 0:
        parser.error("--warmup must be >= 1, --steps >= 0, --batch-size >= 2 (or 0), --items >= 2, --threads >= 0")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--families: a comma-separated subset of {', '.join(FAMILIES)}")

    import torch

    cuda = torch.cuda.is_available()
    args.steps = args.steps or (50 if cuda else 6)
    kind = "gpu" if cuda else "cpu"
    given = {"hotelmatch": args.recipe_hotelmatch, "notellm2": args.recipe_notellm2}
    recipes = {f: given[f] or f"training/{f}_{kind}.yaml" for f in families}
    from tandem.core.config import load_config

    paths = {f: str(Path(r) if Path(r).is_file() else ROOT / r) for f, r in recipes.items()}
    largest = 0
    for family, recipe in recipes.items():
        rc = load_config(paths[family])
        if rc.model.family != family:
            parser.error(f"{recipe} is a {rc.model.family} recipe, not {family}")
        largest = max(largest, (args.batch_size or rc.train.batch_size) * rc.train.grad_accum)

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="tandem-throughput-") as tmp:
        folder = Path(tmp)
        make_catalogue(folder, args.items, args.image_px, args.seed).to_parquet(folder / "catalog.parquet")
        n_pairs = largest * (args.warmup + args.steps) + largest  # one epoch covers every step
        make_pairs(args.items, n_pairs, args.seed).to_parquet(folder / "pairs.parquet")
        made = time.perf_counter() - started
        print(f"catalogue of {args.items} items and {n_pairs} pairs in {made:.1f} s", flush=True)
        for family in families:
            for variant in VARIANTS:
                spec = {
                    "family": family,
                    "variant": variant,
                    "recipe": recipes[family],
                    "recipe_path": paths[family],
                    "catalog": str(folder / "catalog.parquet"),
                    "pairs": str(folder / "pairs.parquet"),
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "batch_size": args.batch_size,
                    "threads": args.threads,
                }
                result = run_worker(spec)
                shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
                print(json.dumps(shown), flush=True)
                results.append(result)

    text = report(args, results, cuda, (load_start, os.getloadavg()[0]), time.perf_counter() - started)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
