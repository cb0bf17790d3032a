"""Human-readable run report: a Markdown page with the metric table and a Recall@K plot, and the same
as one self-contained HTML page (`tandem.pipeline.report_html`)."""

from __future__ import annotations

import json
from pathlib import Path

from tandem.evaluation.compare import comparison
from tandem.evaluation.gate import markdown as gate_markdown
from tandem.pipeline.report_html import write_html


def plot_recall(metrics: dict[str, dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, values in metrics.items():
        ks = sorted(int(k.split("@")[1]) for k in values if k.startswith("recall@"))
        ax.plot(ks, [values[f"recall@{k}"] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Recall@K on held-out test pairs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cell(mean: float | None, ci: list[float] | None) -> str:
    if mean is None or mean != mean:  # NaN: no pair in that subset
        return "-"
    return f"{mean:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] == ci[0] else "")


def _table(metrics: dict[str, dict[str, float]], ci: dict | None = None, columns: list[str] | None = None) -> str:
    """A row per model: the mean and, when known, its bootstrap interval, e.g. `0.4123 [0.390, 0.431]`."""
    ci = ci or {}
    columns = columns or list(next(iter(metrics.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(_cell(v.get(c), ci.get(name, {}).get(c)) for c in columns) + " |"
        for name, v in metrics.items()
    ]
    return "\n".join(lines)


def _evaluation(report: dict, run_dir: Path) -> dict:
    """The evaluate stage's summary (protocol, counts, ci, latency): from the report, else evaluate.json."""
    path = run_dir / "evaluate.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved | report.get("eval", {}) | {k: report[k] for k in ("ci", "latency_ms") if k in report}


def versus_section(report: dict, run_dir: Path) -> list[str]:
    """The first table: the model beside the champion and every baseline, all / warm / cold pairs, with
    intervals; a baseline the data cannot support reads n/a with its reason."""
    ev, metrics = _evaluation(report, run_dir), report["metrics"]
    primary = ev.get("primary_metric") or report["gate"].get("primary_metric", "")
    table = comparison(metrics, ev.get("ci", {}), primary, ev.get("unavailable"))
    counts = ev.get("counts", {})
    lines = [
        "## Model vs baselines",
        "",
        f"Same test pairs and pool for every row; warm = the target item is in a training pair "
        f"({counts.get('warm', '-')} pairs), cold = it is in none ({counts.get('cold', '-')} pairs). "
        f"Mean [95 % bootstrap interval]. Strongest baseline on `{primary}`: {table.strongest or '-'}.",
        "",
        "| model | " + " | ".join(table.header) + " |",
        "|---" * (len(table.columns) + 1) + "|",
    ]
    notes = []
    for name, cells in table.rows:
        if isinstance(cells, str):
            lines.append(f"| {name} | " + " | ".join("n/a" for _ in table.columns) + " |")
            notes.append(f"- {name}: {cells}")
        else:
            lines.append(f"| {name} | " + " | ".join(_cell(m, c) for m, c in cells) + " |")
    versus = (report["gate"].get("evidence") or {}).get("baselines") or {}
    if versus.get("status") in ("ok", "failed"):
        notes.append(
            f"- gate: the model against {versus['baseline']} on `{versus['metric']}`: diff {versus['diff']:+.4f} "
            f"(tolerance {versus['tolerance']}): **{versus['status']}**"
        )
    return lines + ([""] + notes if notes else [])


def metrics_section(report: dict, run_dir: Path, plot: Path) -> list[str]:
    """Markdown lines: the protocol and pool, the metric tables with intervals, query latency."""
    ev, metrics = _evaluation(report, run_dir), report["metrics"]
    ci, counts = ev.get("ci", {}), ev.get("counts", {})
    names = list(next(iter(metrics.values())))
    main, subsets = [c for c in names if "/" not in c], [c for c in names if "/" in c]
    lines = [
        f"## Retrieval on the test pairs ({ev['test_pairs']} pairs, pool: {ev['pool']})",
        "",
    ]
    if counts:
        dropped = ", ".join(f"{n} {why}" for why, n in counts.get("dropped", {}).items() if n) or "none"
        lines += [
            f"Protocol `{ev.get('protocol')}`: {counts['queries']} queries "
            f"({counts.get('queries_are', 'query items')}), {counts['pairs_evaluated']} of "
            f"{counts['pairs_in']} pairs evaluated (dropped: {dropped}). Intervals: {ev.get('ci_method', 'none')}.",
            "",
        ]
        if counts.get("ks_above_pool"):
            lines += [f"**Note:** K = {counts['ks_above_pool']} is not below the pool size: recall there is 1.", ""]
    lines += [_table(metrics, ci, main), ""]
    if subsets:
        sizes = ", ".join(
            f"{s} {counts[s]} pairs" for s in ("short_query", "short_target", "warm", "cold") if s in counts
        )
        title = f"Subsets ({sizes}; short = {counts.get('short_means', '')}; cold = target in no training pair):"
        lines += [title, "", _table(metrics, ci, subsets), ""]
    if ev.get("latency_ms"):
        latency = ", ".join(f"{name} {ms:.1f} ms" for name, ms in ev["latency_ms"].items())
        lines += [f"Median query embedding latency (one query): {latency}.", ""]
    return lines + [f"![Recall@K]({plot.name})"]


def _query_pair_line(queries: dict | None, mix: dict | None) -> list[str]:
    """The query -> item pairs of the logs' search clicks, and how many the training mix used."""
    if not queries:
        return []
    used = f"; trained on {mix['query_pairs_used']} of them (pairs.query_ratio {mix['query_ratio']})" if mix else ""
    valid = f"{queries['valid']} valid ({queries.get('valid_queries', '?')} queries), " if "valid" in queries else ""
    return [
        f"- query pairs (search text -> clicked item, from {queries['log_rows_with_query']} log rows with a query): "
        f"{queries['train']} train ({queries['train_queries']} queries), {valid}{queries['test']} test "
        f"({queries['test_queries']} queries; {queries['test_dropped_seen']} dropped as already trained){used}"
    ]


def _training_line(training: dict) -> list[str]:
    """What the trainer validated on and the hard negatives it drew from the live champion (train.hard_negatives)."""
    parts = [f"validated on {training['validated_on']}"] if training.get("validated_on") else []
    hard = training.get("hard_negatives") or {}
    if hard.get("per_batch"):
        parts.append(
            f"hard negatives from `{hard['champion']}`: {hard.get('queries', 0)} of {hard.get('of_queries', '?')} "
            f"queries with a list, {training.get('hard_negatives_drawn', 0)} drawn ({hard['per_batch']} per batch)"
            if hard.get("champion")
            else f"no hard negatives ({hard.get('why', 'none mined')})"
        )
    return [f"- training: {'; '.join(parts)}"] if parts else []


def _vision_line(align: dict | None) -> list[str]:
    """What the align stage did (tandem.pipeline.align): the tower train started from, or why none was aligned."""
    if not align:
        return []
    if "skipped" in align:
        return [f"- vision tower: not aligned ({align['skipped']})"]
    how = "reused from the cache" if align["cached"] else f"aligned in {align['training'].get('seconds', '?')}s"
    return [
        f"- vision tower: {how} on {align['pairs_used']} (photo, text) pairs ({align['pairs_from_text']} item texts, "
        f"{align['pairs_from_queries']} search queries): `{align['vision_encoder']}`"
    ]


def write_report(report: dict, run_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html and recall.png next to report.json; returns their paths."""
    plot = plot_recall(report["metrics"], run_dir / "recall.png")
    gate, data, pairs, idx = report["gate"], report["data"], report["pairs"], report["index"]
    logs, cat, valid = data["logs"], data["catalog"], report["validation"]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items())
    lines = [
        f"# tandem run {report['run_id']}",
        "",
        f"Logs `{report['inputs']['logs']}`, catalogue `{report['inputs']['catalog']}`.",
        "",
        *versus_section(report, run_dir),
        "",
        "## Data",
        f"- logs: {logs['rows_in']} rows in = {logs['rows_kept']} kept + {logs['rows_quarantined']} quarantined",
        f"- catalogue: {cat['rows_in']} rows in = {cat['rows_kept']} kept + {cat['rows_quarantined']} quarantined; "
        f"{cat['images_dropped']} unreadable images dropped",
        f"- quarantine: `{data['quarantine_dir']}`",
        f"- pairs: {pairs['train']} train, {pairs['valid']} valid ({pairs.get('valid_by', 'random')}), "
        f"{pairs['test']} test "
        f"(test window from {pairs['cutoff']}; test pairs dropped as already trained: "
        f"{pairs.get('test_dropped_seen', '-')} the same pair, {pairs.get('test_dropped_reverse', '-')} its reverse)",
        *_query_pair_line(pairs.get("query_pairs"), report.get("training", {}).get("mix")),
        f"- validation: {'passed' if valid['success'] else 'FAILED'}; Data Docs `{valid['data_docs']}`",
        *_vision_line(report.get("vision")),
        *_training_line(report.get("training", {})),
        "",
        *metrics_section(report, run_dir, plot),
        "",
        *gate_markdown(gate),  # decision, reason, primary comparison with CI and p, guard table
        "",
        f"Collection `{idx['collection']}` ({idx['vectors']} vectors for {idx['items']} items); alias `{idx['alias']}` "
        + (f"-> `{idx['live_collection']}`." if idx["live_collection"] else "not moved (not promoted)."),
        "",
        f"Stage timings: {timings}.",
        "",
    ]
    text = "\n".join(lines)
    md = run_dir / "report.md"
    md.write_text(text)
    page = write_html(report, run_dir, _evaluation(report, run_dir), plot)
    return {"markdown": md, "plot": plot, "html": page}
