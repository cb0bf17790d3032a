"""Human-readable run report: a Markdown page with the metric table and a Recall@K plot."""

from __future__ import annotations

from pathlib import Path


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


def _table(metrics: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(metrics.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v[c]:.4f}" for c in columns) + " |" for name, v in metrics.items()]
    return "\n".join(lines)


def write_report(report: dict, run_dir: Path) -> dict[str, Path]:
    """Write report.md and recall.png next to report.json; returns their paths."""
    plot = plot_recall(report["metrics"], run_dir / "recall.png")
    gate, data, pairs, idx = report["gate"], report["data"], report["pairs"], report["index"]
    logs, cat, valid = data["logs"], data["catalog"], report["validation"]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items())
    lines = [
        f"# tandem run {report['run_id']}",
        "",
        f"Logs `{report['inputs']['logs']}`, catalogue `{report['inputs']['catalog']}`.",
        "",
        "## Data",
        f"- logs: {logs['rows_in']} rows in = {logs['rows_kept']} kept + {logs['rows_quarantined']} quarantined",
        f"- catalogue: {cat['rows_in']} rows in = {cat['rows_kept']} kept + {cat['rows_quarantined']} quarantined; "
        f"{cat['images_dropped']} unreadable images dropped",
        f"- quarantine: `{data['quarantine_dir']}`",
        f"- pairs: {pairs['train']} train, {pairs['valid']} valid, {pairs['test']} test "
        f"(test window from {pairs['cutoff']})",
        f"- validation: {'passed' if valid['success'] else 'FAILED'}; Data Docs `{valid['data_docs']}`",
        "",
        f"## Retrieval on the test pairs ({report['eval']['test_pairs']} pairs, pool: {report['eval']['pool']})",
        "",
        _table(report["metrics"]),
        "",
        f"![Recall@K]({plot.name})",
        "",
        "## Gate",
        f"**{gate['decision']}** on `{gate['primary_metric']}`: {gate['reason']}.",
        "",
        f"Collection `{idx['collection']}` ({idx['vectors']} vectors for {idx['items']} items); "
        f"alias `{idx['alias']}` -> `{idx['live_collection']}`.",
        "",
        f"Stage timings: {timings}.",
        "",
    ]
    text = "\n".join(lines)
    md = run_dir / "report.md"
    md.write_text(text)
    return {"markdown": md, "plot": plot}
