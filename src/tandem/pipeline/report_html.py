"""The run report as one self-contained HTML page (`report.html` beside `report.md`).

Everything is inline (the Recall@K plot as a base64 PNG, the styles), and nothing is fetched from
elsewhere, so the page opens offline, from a file share, or as a Kubeflow HTML artifact. The only
link goes to the run's Great Expectations Data Docs, relative to the run folder. Every value taken
from data or configuration (paths, ids, titles, reasons) is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

from tandem.evaluation.compare import comparison
from tandem.evaluation.gate import plural

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem;
margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
td.primary,th.primary{background:#fff8c5}
.ci{color:#57606a;font-size:.85em}.muted{color:#57606a}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.promote{background:#1a7f37}.reject{background:#cf222e}.ok{color:#1a7f37}.fail{color:#cf222e}
img.plot{max-width:100%;border:1px solid #d0d7de}
code{background:#f6f8fa;padding:0 .25rem;border-radius:3px;font-size:.9em;word-break:break-all}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else esc(value)


def _row(cells: list[str], header: bool = False, classes: list[str] | None = None) -> str:
    tag = "th" if header else "td"
    classes = classes or [""] * len(cells)
    return (
        "<tr>"
        + "".join(f'<{tag} class="{c}">{v}</{tag}>' if c else f"<{tag}>{v}</{tag}>" for v, c in zip(cells, classes))
        + "</tr>"
    )


def table(header: list[str], rows: list[list[str]], classes: list[str] | None = None, table_id: str = "") -> str:
    """An HTML table of already-escaped cells; `classes` marks columns (e.g. the primary metric)."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    body = "".join(_row(r, classes=classes) for r in rows)
    return f"<table{ident}><thead>{_row(header, True, classes)}</thead><tbody>{body}</tbody></table>"


def metric_cell(mean, ci) -> str:
    """`0.4123 [0.390, 0.431]`: the mean and, when known, its bootstrap interval."""
    if mean is None or mean != mean:
        return "-"
    interval = f' <span class="ci">[{ci[0]:.3f}, {ci[1]:.3f}]</span>' if ci and ci[0] == ci[0] else ""
    return f"{mean:.4f}{interval}"


def metric_table(metrics: dict, ci: dict, columns: list[str], primary: str, table_id: str) -> str:
    classes = [""] + ["primary" if c == primary else "" for c in columns]
    rows = [
        [esc(name)] + [metric_cell(values.get(c), ci.get(name, {}).get(c)) for c in columns]
        for name, values in metrics.items()
    ]
    return table(["model"] + [esc(c) for c in columns], rows, classes, table_id)


def docs_link(docs: str, run_dir: Path) -> str:
    """The Data Docs page relative to the run folder, so that the folder can move. The validate stage writes under
    the run's validation/; where it ran in another folder (a Kubeflow step's scratch folder), the same part of the
    path is taken."""
    if not docs:
        return ""
    path = Path(docs)
    if path.is_relative_to(run_dir):
        return path.relative_to(run_dir).as_posix()
    if "validation" in path.parts:
        parts = path.parts
        return Path(*parts[len(parts) - 1 - parts[::-1].index("validation") :]).as_posix()
    return Path(os.path.relpath(path, run_dir)).as_posix()


def versus_section(report: dict, evaluation: dict) -> list[str]:
    """The page's first table: the model beside the champion and every baseline on all / warm / cold pairs."""
    primary = evaluation.get("primary_metric") or report["gate"].get("primary_metric", "")
    cmp = comparison(report["metrics"], evaluation.get("ci", {}), primary, evaluation.get("unavailable"))
    counts = evaluation.get("counts", {})
    classes = [""] + ["primary" if metric == primary else "" for metric, _ in cmp.columns]
    rows = []
    for name, cells in cmp.rows:
        label = esc(name) + (' <span class="muted">(strongest baseline)</span>' if name == cmp.strongest else "")
        if isinstance(cells, str):
            rows.append([label] + [f'<span class="muted" title="{esc(cells)}">n/a</span>'] * len(cmp.columns))
        else:
            rows.append([label] + [metric_cell(m, c) for m, c in cells])
    out = [
        "<h2>Model vs baselines</h2>",
        f"<p>Same test pairs and pool for every row; warm = the target item is in a training pair "
        f"({esc(counts.get('warm', '-'))} pairs), cold = in none ({esc(counts.get('cold', '-'))} pairs). "
        "Mean with its 95 % bootstrap interval.</p>",
        table(["model"] + [esc(h) for h in cmp.header], rows, classes, table_id="versus"),
    ]
    notes = [f"<li>{esc(name)}: {esc(cells)}</li>" for name, cells in cmp.rows if isinstance(cells, str)]
    versus = (report["gate"].get("evidence") or {}).get("baselines") or {}
    if versus.get("status") in ("ok", "failed"):
        css = "ok" if versus["ok"] else "fail"
        notes.append(
            f"<li>Gate: the model against {esc(versus['baseline'])} on <code>{esc(versus['metric'])}</code>: "
            f"diff {versus['diff']:+.4f} (tolerance {esc(versus['tolerance'])}): "
            f'<strong class="{css}">{esc(versus["status"])}</strong></li>'
        )
    return out + ([f"<ul>{''.join(notes)}</ul>"] if notes else [])


def data_section(report: dict, run_dir: Path) -> list[str]:
    data, pairs, valid = report["data"], report["pairs"], report["validation"]
    logs, cat = data["logs"], data["catalog"]
    rows = [
        ["logs", *(esc(logs[k]) for k in ("rows_in", "rows_kept", "rows_quarantined")), "-"],
        ["catalogue", *(esc(cat[k]) for k in ("rows_in", "rows_kept", "rows_quarantined")), esc(cat["images_dropped"])],
    ]
    link = docs_link(valid.get("data_docs") or "", run_dir)
    suites = ", ".join(
        f'{esc(name)} <span class="{"ok" if ok else "fail"}">{"passed" if ok else "FAILED"}</span>'
        for name, ok in (valid.get("suites") or {}).items()
    )
    keys = ("train", "valid", "valid_by", "test", "test_dropped_seen", "test_dropped_reverse", "cutoff")
    pair_rows = [[esc(pairs.get(k, "-")) for k in keys]]
    return [
        "<h2>Data</h2>",
        "<p>Every row in is either kept or quarantined (with its reason) in "
        f"<code>{esc(data['quarantine_dir'])}</code>.</p>",
        table(["source", "rows in", "kept", "quarantined", "unreadable images dropped"], rows, table_id="data"),
        table(
            [
                "train pairs",
                "valid pairs",
                "valid drawn by",
                "test pairs",
                "test dropped: trained",
                "test dropped: reverse trained",
                "test window from",
            ],
            pair_rows,
            table_id="pairs",
        ),  # fmt: skip
        f'<p>Validation: <strong class="{"ok" if valid["success"] else "fail"}">'
        f"{'passed' if valid['success'] else 'FAILED'}</strong> ({suites}). "
        + (f'<a href="{esc(link)}">Great Expectations Data Docs</a>' if link else "no Data Docs")
        + "</p>",
    ]


def metrics_section(report: dict, evaluation: dict, plot: Path | None) -> list[str]:
    metrics, ev = report["metrics"], evaluation
    ci, counts = ev.get("ci", {}), ev.get("counts", {})
    primary = ev.get("primary_metric") or report["gate"].get("primary_metric", "")
    names = list(next(iter(metrics.values())))
    main, subsets = [c for c in names if "/" not in c], [c for c in names if "/" in c]
    out = [f"<h2>Retrieval on the test pairs ({esc(ev.get('test_pairs', '-'))} pairs)</h2>"]
    out.append(f"<p>Pool: {esc(ev.get('pool', '-'))}.")
    if counts:
        dropped = ", ".join(f"{n} {why}" for why, n in counts.get("dropped", {}).items() if n) or "none"
        out.append(
            f" Protocol <code>{esc(ev.get('protocol'))}</code>: {esc(counts.get('queries'))} queries "
            f"({esc(counts.get('queries_are', 'query items'))}), "
            f"{esc(counts.get('pairs_evaluated'))} of {esc(counts.get('pairs_in'))} pairs evaluated "
            f"(dropped: {esc(dropped)})."
        )
    out.append(
        f" Intervals: {esc(ev.get('ci_method', 'none'))}. The gate's metric, <code>{esc(primary)}</code>, "
        "is highlighted.</p>"
    )
    if counts.get("ks_above_pool"):
        out.append(
            f"<p><strong>Note:</strong> K = {esc(counts['ks_above_pool'])} is not below the pool size: "
            "recall there is 1.</p>"
        )
    out.append(metric_table(metrics, ci, main, primary, "metrics"))
    for subset in dict.fromkeys(c.split("/")[0] for c in subsets):  # one table per subset, columns as above
        columns = [c for c in subsets if c.startswith(subset + "/")]
        size = f"{counts[subset]} pairs; " if subset in counts else ""
        means = {"warm": "target in a training pair", "cold": "target in no training pair"}
        meaning = means.get(subset, counts.get("short_means", ""))
        out.append(f"<p>Subset <code>{esc(subset)}</code> ({esc(size)}{esc(meaning)}):</p>")
        renamed = {n: {c.split("/", 1)[1]: v.get(c) for c in columns} for n, v in metrics.items()}
        ci_renamed = {n: {c.split("/", 1)[1]: v.get(c) for c in columns} for n, v in ci.items()}
        short = [c.split("/", 1)[1] for c in columns]
        out.append(metric_table(renamed, ci_renamed, short, primary, f"subset-{subset}"))
    if ev.get("latency_ms"):
        latency = ", ".join(f"{esc(name)} {ms:.1f} ms" for name, ms in ev["latency_ms"].items())
        out.append(f"<p>Median query embedding latency (one query): {latency}.</p>")
    if plot is not None and plot.is_file():
        encoded = base64.b64encode(plot.read_bytes()).decode("ascii")
        out.append(
            f'<p><img class="plot" id="recall-plot" alt="Recall@K per model" src="data:image/png;base64,{encoded}"></p>'
        )
    return out


def loss_svg(losses: list[float], width: int = 480, height: int = 160) -> str:
    """The training loss per step as an inline SVG polyline (no image file, nothing to fetch)."""
    values = [float(v) for v in losses if v == v]
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    span, pad = (hi - lo) or 1.0, 24
    x = [pad + i * (width - 2 * pad) / (len(values) - 1) for i in range(len(values))]
    y = [height - pad - (v - lo) / span * (height - 2 * pad) for v in values]
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    return (
        f'<svg id="loss-plot" role="img" aria-label="training loss per step" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" style="border:1px solid #d0d7de;background:#fff">'
        f'<polyline fill="none" stroke="#0969da" stroke-width="2" points="{points}"/>'
        f'<text x="{pad}" y="14" font-size="11" fill="#57606a">training loss per step (max {hi:.3f})</text>'
        f'<text x="{pad}" y="{height - 6}" font-size="11" fill="#57606a">min {lo:.3f}; steps 1 to {len(values)}</text>'
        "</svg>"
    )


def training_section(training: dict) -> list[str]:
    if not training:
        return []
    keys = ("family", "steps", "pairs_seen", "final_loss", "best_step", "best_metric", "stopped_early", "device",
            "mixed_precision", "num_processes", "seconds", "pairs_per_s", "peak_memory_mb")  # fmt: skip
    rows = [[esc(k), _num(training[k], 3)] for k in keys if k in training]
    return [
        "<h2>Training</h2>",
        table(["measure", "value"], rows, table_id="training"),
        loss_svg(training.get("step_losses") or []),
    ]


def gate_section(gate: dict) -> list[str]:
    decision = str(gate.get("decision", ""))
    badge = "promote" if decision == "promote" else "reject"
    out = [
        "<h2>Gate</h2>",
        f'<p><span class="badge {badge}" id="decision">{esc(decision)}</span> on '
        f"<code>{esc(gate.get('primary_metric'))}</code>: {esc(gate.get('reason'))}.</p>",
    ]
    evidence = gate.get("evidence") or {}
    primary = evidence.get("primary")
    if primary:
        lo, hi = primary["ci"]
        p = primary["p_value"]
        rows = [
            ["metric", f"<code>{esc(primary['metric'])}</code>"],
            ["challenger", _num(primary["challenger"])],
            [f"champion (<code>{esc(gate.get('champion_collection'))}</code>)", _num(primary["champion"])],
            ["difference", f"{primary['diff']:+.4f}"],
            [f"{primary['confidence']:.0%} interval of the difference", f"[{lo:+.4f}, {hi:+.4f}]"],
            ["p-value", f"{p:.4f}" if p else f"&lt; {1 / primary['n_boot']:.4f}"],
            ["margin, alpha", f"{esc(primary['margin'])}, {esc(primary['alpha'])}"],
            [
                "test",
                f"paired bootstrap, {esc(primary['n_boot'])} rounds over {esc(primary['n_units'])} "
                f"{esc(plural(primary['unit']))}, {esc(primary['n_pairs'])} pairs",
            ],
        ]
        out.append(table(["evidence", "value"], rows, table_id="gate-evidence"))
    if evidence.get("guards"):
        rows = []
        for g in evidence["guards"]:
            limit = (
                f"ratio &lt;= {esc(g['tolerance'])}"
                if "latency" in str(g["metric"])
                else f"drop &lt;= {esc(g['tolerance'])}"
            )
            status = esc(g.get("status", ""))
            css = "ok" if g.get("ok") else ("fail" if g.get("ok") is False else "muted")
            rows.append(
                [esc(g["metric"])]
                + [_num(g.get(k)) for k in ("challenger", "champion", "delta")]
                + [limit, f'<span class="{css}">{status}</span>']
            )
        out.append(table(["guard", "challenger", "champion", "delta", "tolerance", "status"], rows, table_id="guards"))
    return out


def other_sections(report: dict) -> list[str]:
    idx, timings = report["index"], report.get("timings_s") or {}
    out = [
        "<h2>Index</h2>",
        f"<p>Collection <code>{esc(idx['collection'])}</code> ({esc(idx['vectors'])} vectors for {esc(idx['items'])} "
        f"items); alias <code>{esc(idx['alias'])}</code> "
        + (f"&rarr; <code>{esc(idx['live_collection'])}</code>.</p>" if idx["live_collection"] else "not moved.</p>"),
        "<h2>Timings</h2>",
    ]
    if timings:
        rows = [[esc(k), f"{v:.1f}"] for k, v in timings.items()] + [["total", f"{sum(timings.values()):.1f}"]]
        out.append(table(["stage", "seconds"], rows, table_id="timings"))
    else:
        out.append(
            '<p class="muted">Not recorded here: the stages ran as separate orchestrator tasks '
            "(see the orchestrator's task durations).</p>"
        )
    config = json.dumps(report.get("config", {}), indent=2, sort_keys=True, default=str)
    out.append(f"<details><summary>Configuration (secrets masked)</summary><pre>{esc(config)}</pre></details>")
    return out


def render(report: dict, run_dir: Path, evaluation: dict, plot: Path | None) -> str:
    """The page's HTML text."""
    inputs = report.get("inputs", {})
    logs = inputs.get("logs", "")
    if isinstance(logs, list) and len(logs) > 3:  # daily partitions: the count, the first and the last
        listed = "".join(f"<li><code>{esc(p)}</code></li>" for p in logs)
        logs_html = (
            f"<details><summary>{len(logs)} log files, <code>{esc(logs[0])}</code> &hellip; "
            f"<code>{esc(logs[-1])}</code></summary><ul>{listed}</ul></details>"
        )
    else:
        logs_html = f"<code>{esc(', '.join(logs) if isinstance(logs, list) else logs)}</code>"
    body = [
        f"<h1>tandem run {esc(report['run_id'])}</h1>",
        f'<p class="muted">Written {esc(report.get("created_at", ""))}. '
        f"Catalogue <code>{esc(inputs.get('catalog', ''))}</code>. Logs:</p>{logs_html}",
        *versus_section(report, evaluation),
        *data_section(report, run_dir),
        *metrics_section(report, evaluation, plot),
        *gate_section(report["gate"]),
        *training_section(report.get("training") or {}),
        *other_sections(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tandem run {esc(report['run_id'])}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(report: dict, run_dir: Path, evaluation: dict, plot: Path | None) -> Path:
    """Write report.html in `run_dir` (temp then rename: a reader never sees half a page)."""
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(report, run_dir, evaluation, plot), encoding="utf-8")
    tmp.replace(path)
    return path
