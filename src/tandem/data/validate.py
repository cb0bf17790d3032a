"""Great Expectations (1.24) checks on the three tables of one run: logs, catalog, pairs.

Each table gets one ExpectationSuite, ValidationDefinition and Checkpoint (with an
UpdateDataDocsAction) in a file-backed context under `out_dir`, so an HTML Data Docs report
lands on disk. GX is imported lazily: the import alone costs several seconds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.core.setup import set_env_defaults
from tandem.data.contract_checks import ts_window

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext

SPLITS = ("train", "valid", "test")
LOG_COLUMNS = ("user_id", "item_id", "event", "ts")
# Derived pairs columns (computed on a copy), because GX 1.24 has no "A != B" pair expectation.
SELF_PAIR_COL = "self_pair_item_id"  # item_id where item_id == related_item_id, else null
N_RELATED_COL = "n_related_per_item_split"  # rows per (item_id, split)


class DataValidationError(ValueError):
    """Raised when a suite fails; its message names each failed expectation (suite, column, what was
    expected, a few unexpected values/count) and ends with the path to the Data Docs index.html and
    a hint on how to fix the data."""

    result: ValidationResult

    def __init__(self, message: str, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ValidationResult:
    success: bool
    suites: dict[str, dict]  # name -> {"success", "evaluated", "failed": [{"expectation", "column", "details"}]}
    docs_path: Path  # .../index.html of the Data Docs site


def _is_list_column(s: pd.Series) -> bool:
    return s.dtype == object and bool(s.map(lambda v: not isinstance(v, str) and pd.api.types.is_list_like(v)).any())


def _expectations(
    logs: pd.DataFrame, catalog: pd.DataFrame, pairs: pd.DataFrame, contract: ContractConfig, cfg: PairsConfig
) -> dict[str, tuple[pd.DataFrame, list]]:
    """Suite name -> (the frame GX sees, its expectations)."""
    import great_expectations.expectations as gxe

    events = sorted({*contract.view_events, *contract.click_events, *contract.other_events})
    # Bounds must be tz-aware datetimes: GX coerces strings to `date` and naive datetimes fail
    # to compare against a UTC column (the expectation then errors instead of checking). The window
    # is the loader's (contract.min_ts .. contract.max_ts), so a row it keeps never fails here.
    ts_min, ts_max = ts_window(contract)
    logs_exp = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    logs_exp += [gxe.ExpectColumnToExist(column=c) for c in LOG_COLUMNS]
    logs_exp += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in LOG_COLUMNS]
    logs_exp += [
        gxe.ExpectColumnValuesToBeInSet(column="event", value_set=events),
        gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=ts_min, max_value=ts_max),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(LOG_COLUMNS), meta={"why": "no duplicate events (same user_id, item_id, event, ts)"}
        ),
    ]
    # Ids are strings after loading ("12", 12 and 12.0 are one id); an int/float here means the
    # frame skipped the contract loader and joins on ids would silently miss.
    logs_exp += [gxe.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in ("user_id", "item_id")]

    # GX cannot hash/serialise list cells (topics, images, facilities): give it scalar columns only.
    cat = catalog[[c for c in catalog.columns if not _is_list_column(catalog[c])]]
    cat_exp = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToBeOfType(column="item_id", type_="str"),
        gxe.ExpectColumnToExist(column="title"),
        gxe.ExpectColumnValuesToBeOfType(column="title", type_="str"),
    ]

    pr = pairs.copy()
    if {"item_id", "related_item_id"} <= set(pr.columns):
        pr[SELF_PAIR_COL] = pr["item_id"].where(pr["item_id"] == pr["related_item_id"], None)
    if {"item_id", "split"} <= set(pr.columns):
        pr[N_RELATED_COL] = pr.groupby(["item_id", "split"], dropna=False)["item_id"].transform("size")
    pairs_exp = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="related_item_id"),
        gxe.ExpectColumnValuesToBeOfType(column="item_id", type_="str"),
        gxe.ExpectColumnValuesToBeOfType(column="related_item_id", type_="str"),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["item_id", "related_item_id", "split"],
            meta={"why": "one row per (item_id, related_item_id, split)"},
        ),
        gxe.ExpectColumnValuesToBeNull(
            column=SELF_PAIR_COL, meta={"why": "no self-pairs (item_id == related_item_id)"}
        ),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=cfg.low, max_value=cfg.up),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeBetween(column="support", min_value=1),
        gxe.ExpectColumnMaxToBeBetween(
            column=N_RELATED_COL,
            max_value=(limit := max(cfg.top_t, cfg.train_top_t)),
            meta={"why": f"at most {limit} related items per item (top_t={cfg.top_t}, train_top_t={cfg.train_top_t})"},
        ),
    ]
    return {"logs": (logs, logs_exp), "catalog": (cat, cat_exp), "pairs": (pr, pairs_exp)}


def _fmt(v: Any) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v.item() if hasattr(v, "item") else v)  # numpy scalars print as np.int64(4)


def _details(res: Any) -> str:
    """One line: what was expected and what was seen."""
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")}
    why = (cfg.meta or {}).get("why")
    wanted = why or ", ".join(f"{k}={_fmt(v)}" for k, v in kwargs.items())
    parts = [f"expected {wanted or cfg.type.removeprefix('expect_').replace('_', ' ')}"]
    # exception_info is either one info dict or {metric id: info dict} (e.g. a missing column).
    info = res.exception_info or {}
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    errors = {str(i.get("exception_message", "")).strip() for i in infos if i.get("raised_exception")}
    if errors:
        parts.append(f"error: {'; '.join(sorted(errors))}")
    r = res.result or {}
    if r.get("unexpected_count"):
        examples = list(dict.fromkeys(map(str, r.get("partial_unexpected_list") or [])))[:5]
        parts.append(f"{r['unexpected_count']} unexpected value(s), e.g. {examples}")
    elif "observed_value" in r:
        parts.append(f"observed {_fmt(r['observed_value'])}")
    return "; ".join(parts)


def _summarise(suite_result: Any) -> dict:
    failed = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column")
            or ", ".join(r.expectation_config.kwargs.get("column_list") or []),
            "details": _details(r),
        }
        for r in suite_result.results
        if not r.success
    ]
    return {"success": bool(suite_result.success), "evaluated": len(suite_result.results), "failed": failed}


def _context(out_dir: Path) -> AbstractDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(out_dir))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm noise in logs/CI
    return ctx


def _docs_path(ctx: AbstractDataContext) -> Path:
    urls = [s["site_url"] for s in ctx.get_docs_sites_urls() if s.get("site_url")]
    return Path(unquote(urlparse(urls[0]).path))


def validate_run(
    logs: pd.DataFrame,
    catalog: pd.DataFrame,
    pairs: pd.DataFrame,
    out_dir: Path,
    contract: ContractConfig,
    pairs_cfg: PairsConfig,
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate logs/catalog/pairs, write Data Docs under `out_dir/gx`, raise DataValidationError on failure."""
    set_env_defaults()
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = _context(out_dir)
    # Re-creating the datasource drops stale assets, so re-running into one out_dir is idempotent.
    ds = ctx.data_sources.add_or_update_pandas(name="tandem")
    summaries: dict[str, dict] = {}
    for name, (frame, expectations) in _expectations(logs, catalog, pairs, contract, pairs_cfg).items():
        batch_def = ds.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        # One checkpoint per table: a checkpoint passes the same batch_parameters (one "dataframe")
        # to all its validation definitions, so three frames cannot share one run.
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"tandem_{name}", validation_definitions=[vd], actions=[UpdateDataDocsAction(name="docs")]
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        summaries[name] = _summarise(next(iter(run.run_results.values())))

    result = ValidationResult(
        success=all(s["success"] for s in summaries.values()), suites=summaries, docs_path=_docs_path(ctx)
    )
    if raise_on_failure and not result.success:
        raise DataValidationError(_message(result), result)
    return result


def _message(result: ValidationResult) -> str:
    bad = [n for n, s in result.suites.items() if not s["success"]]
    lines = [f"Data validation failed in suite(s) {', '.join(bad)}:"]
    for name in bad:
        for f in result.suites[name]["failed"]:
            col = f"column '{f['column']}'" if f["column"] else "table"
            lines.append(f"  - [{name}] {col}: {f['expectation']}: {f['details']}")
    lines.append(
        "Fix the offending rows upstream (or the contract / pairs config if the rule is wrong) and re-run; "
        f"full report in the Data Docs: {result.docs_path}"
    )
    return "\n".join(lines)
