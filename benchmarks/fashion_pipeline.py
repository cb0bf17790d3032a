"""Issue 17's goals through `tandem run` itself: fashion-small with search logs built from its attributes.

    .venv/bin/python benchmarks/fashion_pipeline.py [--items 2000] [--users 3000] [--arms text,images,image_only]
        [--set KEY=VALUE ...] [--workdir /tmp/tandem-fashion-pipeline] [--no-write]

Colour words are removed from every item's text, as in benchmarks/fashion_multimodal.py (the side benchmark),
so only the photo tells an item's colour. Users search "<colour> <sub-category> <gender>" (the side
benchmark's attribute phrase) and click items of that colour, sub-category and gender, the more popular ones
more often, over 60 days; a user also clicks a second item of the same group (an item -> item pair). Each arm
is one `tandem run` (the command line, as a user types it) on the same logs, with the default recipe:
- text: the catalogue without photos (item_id, title, topics);
- images: the same catalogue with one photo per item: the align stage trains the vision tower on the
  catalogue's photo/text pairs, the encoder trains on text + aligned images (the pipeline default);
- image_only: item_id and the photo only (no text at all): the align stage pairs photos with the search
  queries that led to them, and BM25 is n/a.
The test pairs are the later part of the log's (query, clicked item) pairs that were not trained, evaluated
on the real held-out queries (hotelmatch protocol, pool = the whole catalogue). Goals (issue 17): images vs
text MRR@10 gain >= 90 % of the side benchmark's (0.396 -> 0.636); image_only trained > untrained and every
baseline on Recall@10. The align stage's time (report timings) and each run's peak memory (getrusage of the
child process) are in the table. Writes benchmarks/results/fashion_pipeline.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fashion_multimodal import DATA, colour_pattern  # noqa: E402
from quality import commit, machine  # noqa: E402

OUT = Path(__file__).parent / "results" / "fashion_pipeline.md"
SIDE_TEXT, SIDE_IMAGES = 0.3964, 0.6359  # benchmarks/results/fashion_multimodal.md, HotelMatch MRR@10
ARMS = ("text", "images", "image_only")
RANKERS = ("model", "untrained", "popularity", "cooccurrence", "bm25")
METRICS = ("recall@10", "recall@100", "mrr@10", "ndcg@10")


def catalogue(items: int, seed: int) -> pd.DataFrame:
    """`items` fashion-small products with a photo, from attribute groups of at least 3 items."""
    styles = pd.read_csv(DATA / "styles.csv").dropna(subset=["productDisplayName", "baseColour", "subCategory"])
    styles = styles[[(DATA / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    styles = styles.sample(frac=1.0, random_state=seed).head(items)
    pattern = colour_pattern(styles["baseColour"])
    frame = pd.DataFrame(
        {
            "item_id": styles["id"].astype(str).to_numpy(),
            "title": [" ".join(pattern.sub(" ", t).split()) for t in styles["productDisplayName"]],
            "topics": ["|".join(str(v) for v in r if isinstance(v, str)) for r in styles[
                ["gender", "masterCategory", "subCategory", "season", "usage"]].itertuples(index=False)],
            "images": [str(DATA / "images" / f"{i}.jpg") for i in styles["id"]],
            "query": [f"{c} {s} {g}".lower() for c, s, g in zip(styles["baseColour"], styles["subCategory"],
                                                                 styles["gender"], strict=True)],
        }
    )  # fmt: skip
    assert not frame["title"].str.contains(pattern).any(), "a colour word survived in a title"
    return frame[frame.groupby("query")["item_id"].transform("size") >= 3].reset_index(drop=True)


def search_logs(items: pd.DataFrame, users: int, seed: int) -> pd.DataFrame:
    """Each user: 1-3 searches of a group's phrase, a click on an item of the group (Zipf-popular ones more
    often), then a click on a second item of the group an hour later (no query: an item -> item pair)."""
    rng = np.random.default_rng(seed)
    groups = {q: g["item_id"].to_numpy() for q, g in items.groupby("query")}
    names = sorted(groups)
    weight = np.array([len(groups[q]) for q in names], dtype=float)
    start = pd.Timestamp("2024-03-01", tz="UTC")
    rows = []
    for u in range(users):
        for _ in range(int(rng.integers(1, 4))):
            query = names[rng.choice(len(names), p=weight / weight.sum())]
            ids = groups[query]
            zipf = 1.0 / np.arange(1, len(ids) + 1)
            first, second = rng.choice(len(ids), 2, replace=False, p=zipf / zipf.sum())
            ts = start + pd.Timedelta(hours=float(rng.uniform(0, 24 * 60)))
            rows.append((f"u{u}", ids[first], "click", ts.isoformat(), query))
            rows.append((f"u{u}", ids[second], "click", (ts + pd.Timedelta(hours=1)).isoformat(), ""))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "query"])


def tandem_run(logs: Path, catalog: Path, recipe: Path, workdir: Path) -> dict:
    """One `tandem run` as typed; its report, wall seconds and the child's peak resident memory."""
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "tandem"), "run", "--logs", str(logs), "--catalog", str(catalog),
           "--workdir", str(workdir), "--config", str(recipe)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    printed = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line and line[0] != " ")
    path = Path(printed["report.json"])
    report = json.loads(path.read_text())
    report["unavailable"] = json.loads((path.parent / "evaluate.json").read_text()).get("unavailable", {})
    peak_note = f"{peak / 1024:.0f}" if peak > before else f"<= {before / 1024:.0f}"  # the max over children so far
    return {"report": report, "seconds": seconds, "peak_mb": peak_note, "command": " ".join(cmd)}


def cell(report: dict, ranker: str, metric: str) -> str:
    mean = report["metrics"].get(ranker, {}).get(metric)
    if mean is None or mean != mean:
        return "n/a" if ranker in report["unavailable"] else "-"
    lo, hi = report["ci"].get(ranker, {}).get(metric, [float("nan")] * 2)
    return f"{mean:.4f} [{lo:.3f}, {hi:.3f}]"


def render(args, got: dict, started: datetime, seconds: float) -> str:
    lines = [
        "# Issue 17 through `tandem run`: fashion-small with attribute search logs",
        "",
        f"Command: `python benchmarks/fashion_pipeline.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}  ",
        f"Code at {commit()}; {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.0f} min. Each cell: mean [95 % percentile "
        "bootstrap interval over the test pairs].",
        "",
    ]
    for arm, result in got.items():
        report = result["report"]
        ev = report.get("eval", {})
        lines += [f"## {arm}", "", f"`{result['command']}`", ""]
        lines.append(
            f"Protocol {ev.get('protocol')}, queries: {ev.get('counts', {}).get('queries_are', '?')}; "
            f"pool: {ev.get('pool')}; "
            f"test pairs {ev.get('test_pairs')}; query pairs {report['pairs'].get('query_pairs')}; "
            f"run {result['seconds']:.0f} s (align {report['timings_s'].get('align', 0):.0f} s, train "
            f"{report['timings_s'].get('train', 0):.0f} s), peak resident memory {result['peak_mb']} MB."
        )
        lines += ["", "| ranker | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for ranker in RANKERS:
            lines.append(f"| {ranker} | " + " | ".join(cell(report, ranker, m) for m in METRICS) + " |")
        lines += [f"\n{name}: n/a, {why}" for name, why in report["unavailable"].items()] + [""]
    lines += goals(got)
    return "\n".join(lines) + "\n"


def goals(got: dict) -> list[str]:
    out = ["## Goals", "", "| goal | verdict | figures |", "|---|---|---|"]
    side = SIDE_IMAGES / SIDE_TEXT - 1
    if {"text", "images"} <= set(got):
        text, images = (got[a]["report"]["metrics"]["model"]["mrr@10"] for a in ("text", "images"))
        gain = images / text - 1 if text else float("nan")
        verdict = "met" if gain >= 0.9 * side else "missed"
        out.append(
            f"| images vs text MRR@10 gain >= 90 % of the side benchmark's (+{side:.1%}) | **{verdict}** | "
            f"{text:.4f} -> {images:.4f} ({gain:+.1%}, {gain / side:.0%} of the side gain) |"
        )
    if "image_only" in got:
        m = got["image_only"]["report"]["metrics"]
        model = m["model"]["recall@10"]
        others = {
            r: m[r]["recall@10"] for r in RANKERS[1:] if r in m and m[r].get("recall@10") == m[r].get("recall@10")
        }
        best = max(others, key=others.get)
        verdict = "met" if model > others[best] else "missed"
        out.append(
            f"| image_only: trained > untrained and every baseline, Recall@10 | **{verdict}** | {model:.4f} vs "
            + ", ".join(f"{r} {v:.4f}" for r, v in others.items()) + " |"
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, every arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-fashion-pipeline"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (DATA / "styles.csv").is_file():
        raise SystemExit(f"no fashion-small data at {DATA}")
    started, clock = datetime.now(UTC), time.perf_counter()
    items = catalogue(args.items, args.seed)
    data = args.workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    search_logs(items, args.users, args.seed).to_csv(data / "logs.csv", index=False)
    columns = {"text": ["item_id", "title", "topics"], "images": ["item_id", "title", "topics", "images"],
               "image_only": ["item_id", "images"]}  # fmt: skip
    recipe: dict = {"contract": {"image_roots": [str(DATA / "images")]}, "eval": {"ks": [10, 100, 1000]}}
    for item in args.set:
        dotted, _, raw = item.partition("=")
        section, _, key = dotted.partition(".")
        recipe.setdefault(section, {})[key] = yaml.safe_load(raw)
    (data / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    got = {}
    for arm in args.arms.split(","):
        items[columns[arm]].to_csv(data / f"catalog_{arm}.csv", index=False)
        got[arm] = tandem_run(data / "logs.csv", data / f"catalog_{arm}.csv", data / "recipe.yaml",
                              args.workdir / arm)  # fmt: skip
        text = render(args, got, started, time.perf_counter() - clock)
        print(text)
        if not args.no_write:
            OUT.write_text(text)


if __name__ == "__main__":
    main()
