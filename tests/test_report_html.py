"""report.html: self-contained (plot inline, no external URL), the numbers of report.json, gate evidence,
data accounting, a relative Data Docs link, and every value from data escaped."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from tandem.pipeline.report import write_report

EVIL = '<img src=x onerror="alert(1)">'  # must come out as text, never as markup


class Page(HTMLParser):
    """The page's tags with their attributes, and its text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _report(run_dir) -> dict:
    docs = run_dir / "validation" / "gx" / "data_docs" / "index.html"
    docs.parent.mkdir(parents=True)
    docs.write_text("<html>docs</html>")
    metrics = {"recall@10": 0.5, "recall@100": 0.9, "mrr@10": 0.25, "short_query/recall@100": 0.8}
    ci = {m: [v - 0.05, v + 0.05] for m, v in metrics.items()}
    guard = {"metric": "mrr@10", "tolerance": 0.02, "challenger": 0.25, "champion": 0.24, "delta": 0.01}
    return {
        "run_id": "r<1>",
        "created_at": "2026-01-01T00:00:00+00:00",
        "inputs": {"logs": ["/in/logs-a.csv", "/in/logs-b.csv"], "catalog": f"/in/{EVIL}.csv"},
        "config": {"index": {"token": "***"}},
        "data": {
            "logs": {"rows_in": 1000, "rows_kept": 990, "rows_quarantined": 10},
            "catalog": {"rows_in": 50, "rows_kept": 48, "rows_quarantined": 2, "images_dropped": 3},
            "quarantine_dir": str(run_dir / "quarantine"),
        },
        "pairs": {"train": 128, "valid": 15, "valid_by": "time", "test": 40, "cutoff": "2024-01-24T22:53:09+00:00"},
        "validation": {"success": True, "data_docs": str(docs), "suites": {"logs": True, "catalog": True}},
        "metrics": {"model": metrics, "champion": {m: v - 0.1 for m, v in metrics.items()}, EVIL: metrics},
        "ci": {"model": ci, "champion": ci},
        "latency_ms": {"model": 2.5, "champion": 2.4},
        "eval": {
            "test_pairs": 40,
            "query_items": 33,
            "pool": "catalogue minus the query item",
            "primary_metric": "recall@100",
            "protocol": "hotelmatch",
            "counts": {"pairs_in": 41, "pairs_evaluated": 40, "dropped": {"no target": 1}, "queries": 33},
        },
        "gate": {
            "decision": "promote",
            "reason": f"beats the champion {EVIL}",
            "primary_metric": "recall@100",
            "challenger": 0.9,
            "champion": 0.8,
            "champion_collection": "tandem_old",
            "evidence": {
                "primary": {
                    "metric": "recall@100",
                    "challenger": 0.9,
                    "champion": 0.8,
                    "diff": 0.1,
                    "ci": [0.04, 0.16],
                    "confidence": 0.9,
                    "p_value": 0.0,
                    "margin": 0.0,
                    "alpha": 0.05,
                    "n_boot": 1000,
                    "n_units": 33,
                    "unit": "query",
                    "n_pairs": 40,
                },
                "guards": [
                    guard | {"ok": True, "status": "ok"},
                    guard | {"metric": "query_latency_ms", "tolerance": 1.5, "ok": False, "status": "failed"},
                ],
            },
        },
        "index": {
            "collection": "tandem_r1",
            "vectors": 48,
            "items": 48,
            "alias": "live",
            "live_collection": "tandem_r1",
        },
        "timings_s": {"load": 1.25, "train": 30.0},
        "training": {
            "family": "hotelmatch",
            "steps": 3,
            "final_loss": 2.0,
            "step_losses": [3.0, 2.5, float("nan"), 2.0],
        },
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    report = _report(run_dir)
    paths = write_report(report, run_dir)
    text = paths["html"].read_text()
    page = Page()
    page.feed(text)
    return report, paths, text, page


def test_html_is_written_beside_the_markdown(written):
    _, paths, _, _ = written
    assert set(paths) == {"markdown", "plot", "html"}
    assert paths["html"].name == "report.html" and paths["html"].parent == paths["markdown"].parent
    assert not list(paths["html"].parent.glob("*.tmp"))  # written temp-then-rename


def test_plot_is_inline_and_nothing_is_fetched(written):
    _, paths, text, page = written
    (plot,) = [a for t, a in page.tags if t == "img"]
    prefix = "data:image/png;base64,"
    assert plot["src"].startswith(prefix)
    assert base64.b64decode(plot["src"][len(prefix) :]) == paths["plot"].read_bytes()
    for tag, attrs in page.tags:  # no CDN, no remote font, no remote anything: it opens offline
        for name in ("src", "href"):
            assert not re.match(r"(https?:)?//", attrs.get(name) or ""), (tag, attrs)
    assert "<script" not in text


def test_metrics_with_intervals_per_model_and_the_gate_evidence(written):
    _, _, text, page = written
    words = " ".join(" ".join(page.text).split())
    for model in ("model", "champion"):
        assert re.search(rf"<td>{model}</td><td>0\.\d{{4}} <span class=\"ci\">\[0\.\d{{3}}, 0\.\d{{3}}\]</span>", text)
    assert "0.9000 [0.850, 0.950]" in words  # model recall@100 with its interval
    assert 'class="primary">recall@100</th>' in text  # the gate's metric is marked
    assert "Subset short_query" in words
    assert "difference +0.1000" in words and "[+0.0400, +0.1600]" in words
    assert "p-value < 0.0010" in words  # 0 of 1000 rounds
    assert "paired bootstrap, 1000 rounds over 33 queries, 40 pairs" in words
    assert re.search(r"query_latency_ms .* ratio <= 1\.5 failed", words)
    assert "model 2.5 ms, champion 2.4 ms" in words


def test_data_accounting_docs_link_and_timings(written):
    _, _, text, page = written
    words = " ".join(" ".join(page.text).split())
    assert "logs 1000 990 10" in words and "catalogue 50 48 2 3" in words
    assert "128 15 time 40" in words
    (docs,) = [a["href"] for t, a in page.tags if t == "a"]
    assert docs == "validation/gx/data_docs/index.html"  # relative: the run folder can move
    assert "load 1.2 train 30.0 total 31.2" in words
    assert "family hotelmatch steps 3 final_loss 2.000" in words
    (svg,) = [a for t, a in page.tags if t == "polyline"]  # the loss curve, inline; a NaN step is left out
    assert len(svg["points"].split()) == 3


def test_values_from_data_are_escaped(written):
    _, _, text, page = written
    assert EVIL not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert [t for t, _ in page.tags].count("img") == 1  # only the plot
    assert "tandem run r&lt;1&gt;" in text


def test_kubeflow_report_task_of_a_rejecting_gate(tmp_path):
    """The rejected branch's report task: no promote.json (promote did not run), validate's summary and Data Docs
    arrive as an artifact from a scratch folder; the page is the task's HTML artifact and says the alias stayed."""
    from tandem.orchestration import kubeflow as pipelines

    workdir, run_id = tmp_path / "work", "r1"
    run_dir = workdir / "runs" / run_id
    run_dir.mkdir(parents=True)
    docs = tmp_path / "docs"  # the validate task's artifact, written in its scratch run folder
    report = _report(tmp_path / "scratch" / "runs" / run_id)  # data_docs points into that scratch folder
    report["gate"] |= {"decision": "reject", "reason": "not significant"}
    shutil.copytree(tmp_path / "scratch" / "runs" / run_id, docs)
    (docs / "validate.json").write_text(json.dumps(report["validation"]))
    summaries = {
        "load": {"inputs": report["inputs"], **report["data"]},
        "pairs": report["pairs"],
        "train": {"family": "hotelmatch"},
        "evaluate": report["eval"] | {k: report[k] for k in ("metrics", "ci", "latency_ms")},
        "index": {k: report["index"][k] for k in ("collection", "vectors", "items")},
        "gate": report["gate"],
    }
    for stage, summary in summaries.items():
        (run_dir / f"{stage}.json").write_text(json.dumps(summary))
    component = pipelines.definitions().components(pipelines.DEFAULT_IMAGE)["report"]
    page = tmp_path / "out" / "page"
    page.parent.mkdir()
    args = dict(config="{}", run_id=run_id, workdir=str(workdir), docs=SimpleNamespace(path=str(docs)))
    written = component.python_func(**args, decision="reject", page=SimpleNamespace(path=str(page)))
    assert written == str(run_dir / "report.html") and page.read_text() == (run_dir / "report.html").read_text()
    assert not (run_dir / "promote.json").exists()
    text = " ".join(page.read_text().split())
    assert 'class="badge reject" id="decision">reject<' in text and "alias <code>live</code> not moved" in text
    (link,) = re.findall(r'href="([^"]+)"', text)
    assert link == "validation/gx/data_docs/index.html" and (run_dir / link).is_file()
    assert "`live` not moved" in (run_dir / "report.md").read_text()
    with pytest.raises(ValueError, match="the gate task said 'promote'"):
        component.python_func(**args, decision="promote", page=SimpleNamespace(path=str(page)))


def test_first_table_is_the_model_beside_the_baselines_all_warm_cold(tmp_path):
    report = _report(tmp_path)
    for values in report["metrics"].values():
        values.update({"warm/recall@100": 0.95, "cold/recall@100": 0.4})
    report["metrics"]["popularity"] = {m: 0.5 for m in report["metrics"]["model"]}
    report["eval"]["unavailable"] = {"bm25": "no pool item has text"}
    report["eval"]["counts"] |= {"warm": 30, "cold": 10}
    report["gate"]["evidence"]["baselines"] = {"metric": "recall@100", "baseline": "popularity", "diff": 0.4,
                                               "challenger": 0.9, "baseline_value": 0.5, "ci": [0.3, 0.5],
                                               "tolerance": 0.01, "ok": True, "status": "ok"}  # fmt: skip
    paths = write_report(report, tmp_path)
    page = Page()
    page.feed(paths["html"].read_text())
    tables = [attrs.get("id") for tag, attrs in page.tags if tag == "table"]
    assert tables[0] == "versus"
    text = " ".join(page.text)
    assert "recall@100 warm" in text and "recall@100 cold" in text and "(strongest baseline)" in text
    assert "bm25: n/a: no pool item has text" in text and "30 pairs" in text
    md = paths["markdown"].read_text()
    first = md.index("| model |")
    assert md.index("## Model vs baselines") < first < md.index("## Data")
    header = md[first : md.index("\n", first)]
    assert "recall@100 all | recall@100 warm | recall@100 cold" in header
    assert "| bm25 | n/a |" in md and "- bm25: n/a: no pool item has text" in md
    assert "| popularity | 0.5000 |" in md and "**ok**" in md
