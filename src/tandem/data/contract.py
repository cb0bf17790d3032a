"""Load the user's inputs (behaviour logs, catalogue) into the data contract.

Every row either comes out normalised or goes to a quarantine table with its reason, so
that `rows in = rows kept + rows quarantined` always holds: among them timestamps outside the
plausible window (contract.min_ts .. contract.max_ts), NaN, inf and numbers too large for an
epoch (seconds, ms, us and ns are told apart by magnitude). Problems that make a whole file
unusable (missing, empty, unknown format, missing or duplicated column, wrong column type, a
NUL byte, ragged CSV rows) raise `ContractError` naming the file, the line or column and the fix.
Catalogue images must be regular files under the catalogue's folder or contract.image_roots
(URLs only with contract.allow_image_urls); others are dropped from their item with the reason.
The checks themselves live in `tandem.data.contract_checks`.

Normalised logs:      user_id str, item_id str, event str, ts datetime64[UTC], query str|None
Normalised catalogue: item_id str, title str, topics list[str], content str,
                      images list[str] (absolute paths), + city, country, facilities if given
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from tandem.core.config import ContractConfig
from tandem.data.compaction import live_files
from tandem.data.contract_checks import (
    ContractError,
    check_csv,
    check_parquet_names,
    error_column,
    image_path_problem,
    image_roots,
    is_url,
    missing_id_sql,
    resolve_image,
    ts_parts_sql,
    ts_reason_sql,
    ts_window,
)
from tandem.data.contract_checks import ts_sql as ts_sql  # re-exported: partitions read ts the same way

log = logging.getLogger(__name__)

LOG_COLUMNS = ("user_id", "item_id", "event", "ts")
CATALOG_COLUMNS = ("item_id", "title")
LIST_COLUMNS = ("topics", "images", "facilities")
TEXT_COLUMNS = ("title", "content", "city", "country")
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Loaded:
    """A normalised table, its quarantined rows (with `reason`), and the input row count."""

    kept: pd.DataFrame
    quarantined: pd.DataFrame
    rows_in: int
    dropped_images: pd.DataFrame = field(default_factory=pd.DataFrame)  # item stays, image goes

    def __post_init__(self) -> None:
        assert self.rows_in == len(self.kept) + len(self.quarantined), "row accounting broken"

    def counts(self) -> dict[str, int]:
        return {"rows_in": self.rows_in, "rows_kept": len(self.kept), "rows_quarantined": len(self.quarantined)}

    def require_kept(self, what: str, quarantine: str | Path | None = None) -> None:
        """Raise a ContractError naming the commonest reasons and one example row when no row was kept
        (call it after writing the quarantine file, so that the file lists every row)."""
        if len(self.kept) or not self.rows_in:
            return
        q = self.quarantined
        top = q["reason"].str.split(":").str[0].value_counts().head(3)
        first = q.iloc[0]
        where = f" of {first['file']}" if "file" in q.columns else ""
        hint = (
            " Epochs in seconds, ms, us or ns are read by their magnitude; if the times are real, widen "
            "contract.min_ts / contract.max_ts in the recipe."
            if top.index[0].startswith("ts")
            else ""
        )
        raise ContractError(
            f"{what}: none of the {self.rows_in} rows is usable ({', '.join(f'{r}: {n}' for r, n in top.items())}); "
            f"e.g. row {first['row']}{where}: {first['reason']}."
            + (f" Every row and its reason: {quarantine}." if quarantine else "")
            + hint
        )


def _format(path: Path, what: str) -> str:
    if not path.exists():
        raise ContractError(f"{what} file {path} does not exist; pass an existing CSV/Parquet file.")
    fmt = FORMATS.get(path.suffix.lower())
    allowed = ["csv", "parquet"] + (["jsonl"] if what == "catalogue" else [])
    if fmt is None or fmt not in allowed:
        raise ContractError(
            f"{what} file {path}: unknown format '{path.suffix}'; use one of " + ", ".join(f".{a}" for a in allowed)
        )
    if path.stat().st_size == 0:
        raise ContractError(f"{what} file {path} is empty; it needs a header and at least one row.")
    return fmt


def _require_columns(columns, required, path: Path, what: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ContractError(
            f"{what} file {path} has no column {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(str, columns))}). The contract needs {', '.join(required)}: "
            "rename or add the column (see README, 'Data contract')."
        )


INT_LIKE = r"^(-?[0-9]+)\.0+$"  # "12.0": an integer id that went through a float column or a spreadsheet


def _id_sql(col: str, dtype: str) -> str:
    # Ids are strings everywhere; "12", 12 and 12.0 must all become "12".
    if dtype in ("FLOAT", "DOUBLE") or dtype.startswith("DECIMAL"):
        # NaN and inf are no ids (NULL: quarantined); only whole numbers that fit a BIGINT lose their '.0'.
        as_int = f"CAST(CAST({col} AS BIGINT) AS VARCHAR)"
        whole = f"abs({col}) < 9e18 AND {col} = floor({col})"
        text = f"CAST({col} AS VARCHAR)"
        return f"CASE WHEN isnan({col}) OR isinf({col}) THEN NULL WHEN {whole} THEN {as_int} ELSE {text} END"
    return f"NULLIF(regexp_replace(trim(CAST({col} AS VARCHAR)), '{INT_LIKE}', '\\1'), '')"


def log_files(path: str | Path | list) -> tuple[list[str], str]:
    """A log is one file, a folder of files (e.g. date partitions) or a list of files and folders, one format."""
    files: list[Path] = []
    for entry in path if isinstance(path, (list, tuple)) else [path]:
        if Path(entry).is_dir():  # e.g. date partitions, or the search service's serving/events/
            found = sorted(p for p in Path(entry).rglob("*") if p.suffix.lower() in FORMATS and p.is_file())
            found = live_files(found)  # served events: parts a compacted file replaces are read once, from it
            if not found:
                raise ContractError(f"logs folder {entry} holds no .csv or .parquet files")
            files += found
        else:
            files.append(Path(entry))
    formats = {_format(f, "logs") for f in files}
    if len(formats) != 1:
        raise ContractError(f"logs {path}: mixes formats {sorted(formats)}; convert them to one format")
    fmt = formats.pop()
    for f in files:  # NUL bytes, duplicated or ragged columns: readers would guess silently
        check_csv(f, "logs") if fmt == "csv" else check_parquet_names(f, "logs")
    return [str(f) for f in files], fmt


def reader_sql(files: list[str], fmt: str, filename: bool = False) -> str:
    """A DuckDB table function reading `files` (CSV as text, so nothing is coerced on the way in)."""
    quoted = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    options = "union_by_name=true" + (", filename=true" if filename else "")
    if fmt == "parquet":
        return f"read_parquet({quoted}, {options})"
    return f"read_csv({quoted}, all_varchar=true, header=true, {options})"


def load_logs(
    path: str | Path | list, cfg: ContractConfig = ContractConfig(), catalog_ids: pd.Series | None = None
) -> Loaded:
    """Read a CSV/Parquet behaviour log (a file, a folder or a list of files); quarantine rows
    that cannot be used, with the reason."""
    files, fmt = log_files(path)
    path = files[0] if len(files) == 1 else f"{Path(files[0]).parent} ({len(files)} files)"  # for messages
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    reader = reader_sql(files, fmt, filename=True)
    try:
        con.execute(f"CREATE TEMP VIEW raw AS SELECT * FROM {reader}")
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE raw)").fetchall())
    except duckdb.Error as e:
        raise ContractError(f"logs {path} cannot be read as {fmt}: {e}") from e
    _require_columns(list(types), LOG_COLUMNS, path, "logs")
    known = [*cfg.view_events, *cfg.click_events, *cfg.other_events]
    con.register("catalog_ids", pd.DataFrame({"item_id": catalog_ids if catalog_ids is not None else []}, dtype=str))
    query_sql = "NULLIF(trim(CAST(query AS VARCHAR)), '')" if "query" in types else "CAST(NULL AS VARCHAR)"
    ts_expr, ts_note = ts_parts_sql(types["ts"], path)
    try:
        kept, quarantined, rows_in = _judge(con, types, query_sql, (ts_expr, ts_note), cfg, catalog_ids, known)
    except duckdb.Error as e:  # the conversions above cannot raise; a reader can (e.g. a timestamp overflow)
        column = error_column(types, str(e))
        where = f"column '{column}' holds a value that" if column else "a value"
        raise ContractError(
            f"logs {path}: {where} cannot be converted ({str(e).splitlines()[0]}); fix or remove that row "
            "(e.g. a timestamp outside the years 290308 BC .. 294246 AD)."
        ) from e
    finally:
        con.close()
    if rows_in == 0:
        raise ContractError(f"logs file {path} has a header but no rows; it needs at least one event.")
    _warn_quarantine("logs", path, quarantined, rows_in)
    return Loaded(kept, quarantined, rows_in)


def _judge(con, types: dict, query_sql: str, ts: tuple[str, str], cfg, catalog_ids, known: list[str]):
    """Normalise the raw rows and give each unusable one its reason: (kept, quarantined, rows in)."""
    con.execute(
        f"""
        CREATE TEMP TABLE norm AS
        SELECT row_number() OVER () AS row,
               {_id_sql("user_id", types["user_id"])} AS user_id,
               {_id_sql("item_id", types["item_id"])} AS item_id,
               lower(trim(CAST(event AS VARCHAR))) AS event,
               {ts[0]} AS ts,
               {ts[1]} AS ts_note,
               CAST(ts AS VARCHAR) AS ts_raw,
               {query_sql} AS query,
               filename AS file,
               CAST(user_id AS VARCHAR) AS user_id_raw,
               CAST(item_id AS VARCHAR) AS item_id_raw,
               CAST(event AS VARCHAR) AS event_raw
        FROM raw
        """
    )
    check_catalog = "TRUE" if catalog_ids is None else "item_id IN (SELECT item_id FROM catalog_ids)"
    con.execute(
        f"""
        CREATE TEMP TABLE judged AS
        SELECT *, CASE
            WHEN user_id IS NULL THEN {missing_id_sql("user_id")}
            WHEN item_id IS NULL THEN {missing_id_sql("item_id")}
            WHEN event IS NULL OR event = '' THEN 'missing event'
            WHEN ts_reason IS NOT NULL THEN ts_reason
            WHEN event NOT IN (SELECT unnest(?)) THEN 'unknown event: ' || event
            WHEN NOT ({check_catalog}) THEN 'item_id not in catalogue'
            WHEN row_number() OVER (PARTITION BY user_id, item_id, event, ts ORDER BY row) > 1 THEN 'duplicate event'
        END AS reason
        FROM (SELECT *, {ts_reason_sql("ts", "ts_raw", "ts_note", ts_window(cfg))} AS ts_reason FROM norm)
        """,
        [known],
    )
    kept = con.sql("SELECT user_id, item_id, event, ts, query FROM judged WHERE reason IS NULL ORDER BY ts, row").df()
    # Quarantined rows keep their values as they were in the file, the file, and the row in it
    # (1 = the first data row), so they can be found and fixed at the source.
    quarantined = con.sql(
        "SELECT file, line AS row, user_id_raw AS user_id, item_id_raw AS item_id, event_raw AS event, "
        "ts_raw AS ts, query, reason FROM ("
        "  SELECT *, row - min(row) OVER (PARTITION BY file) + 1 AS line FROM judged"
        ") WHERE reason IS NOT NULL ORDER BY row"
    ).df()
    return kept, quarantined, con.execute("SELECT count(*) FROM norm").fetchone()[0]


def _read_frame(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        check_csv(path, "catalogue", delimiter=",")  # NUL bytes, duplicated or ragged columns
    elif fmt == "parquet":
        check_parquet_names(path, "catalogue")
    try:
        if fmt == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise ContractError(f"catalogue file {path} cannot be read as {fmt}: {e}") from e


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):  # NaN, inf: no id, no text
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_list(value) -> list[str]:
    """A list column may arrive as a list, an array, or a `|`-separated string."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [s for s in (_as_text(v) for v in value) if s]
    text = _as_text(value)
    return [s.strip() for s in text.split("|") if s.strip()] if text else []


def _image_problem(path: str, roots: list[Path], cfg: ContractConfig) -> str | None:
    """Why an image cannot be used: where it is and what it is (always), then whether Pillow reads it."""
    problem = image_path_problem(path, roots, cfg)
    if problem or is_url(path) or not cfg.check_images:
        return problem
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        return "image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"image unreadable: {type(e).__name__}: {e}"
    return None


def load_catalog(path: str | Path, cfg: ContractConfig = ContractConfig()) -> Loaded:
    """Read a CSV/Parquet/JSONL catalogue.

    Rows without an id, duplicate ids (the first wins) and rows with no text and no image
    are quarantined. An image that is missing, unreadable, not a regular file, outside the
    allowed folders or a URL (unless allowed) is dropped from its item (the item stays) and
    listed in `dropped_images` with its reason, so nothing disappears silently.
    """
    path = Path(path)
    frame = _read_frame(path, _format(path, "catalogue"))
    if frame.empty:
        raise ContractError(f"catalogue file {path} has no rows; it needs at least one item.")
    if not any(c in frame.columns for c in ("title", "content", "topics", "images")):  # else a title may be absent
        _require_columns(frame.columns, CATALOG_COLUMNS, path, "catalogue")  # (an image-only catalogue)
    _require_columns(frame.columns, ("item_id",), path, "catalogue")
    base, roots = path.parent.resolve(), image_roots(path, cfg)
    out = pd.DataFrame({"item_id": frame["item_id"].map(_as_text).str.replace(INT_LIKE, r"\1", regex=True)})
    for col in TEXT_COLUMNS:
        if col in frame.columns:
            out[col] = frame[col].map(_as_text)
    out["title"], out["content"] = out.get("title", ""), out.get("content", "")
    for col in LIST_COLUMNS:
        if col in frame.columns:
            out[col] = frame[col].map(_as_list)
        elif col != "facilities":  # topics and images are always present, possibly empty
            out[col] = [[] for _ in range(len(frame))]
    out["images"] = out["images"].map(lambda ps: [resolve_image(p, base) for p in ps])
    out.insert(0, "row", np.arange(1, len(out) + 1))

    reason = pd.Series(None, index=out.index, dtype=object)
    reason[out["item_id"] == ""] = "missing item_id"
    dup = out["item_id"].duplicated() & reason.isna()
    reason[dup] = "duplicate item_id (first row kept)"
    empty = (
        (out["title"] == "") & (out["content"] == "") & (out["topics"].map(len) == 0) & (out["images"].map(len) == 0)
    )
    reason[empty & reason.isna()] = "no title, topics, content or images"

    bad_images = []
    for idx, paths in out["images"].items():
        good = []
        for p in paths:
            problem = _image_problem(p, roots, cfg)
            if problem:
                bad_images.append(
                    {"row": out.at[idx, "row"], "item_id": out.at[idx, "item_id"], "image": p, "reason": problem}
                )
            else:
                good.append(p)
        out.at[idx, "images"] = good
    quarantined = out[reason.notna()].assign(reason=reason[reason.notna()]).reset_index(drop=True)
    quarantined = pd.DataFrame(
        {
            "file": str(path),
            "row": quarantined["row"],
            "item_id": quarantined["item_id"],
            "title": quarantined["title"],
            "reason": quarantined["reason"],
        }
    )
    kept = out[reason.isna()].drop(columns="row").reset_index(drop=True)
    _warn_quarantine("catalogue", path, quarantined, len(out))
    if bad_images:
        log.warning("catalogue %s: %d images dropped from their items (reasons: dropped_images)", path, len(bad_images))
    dropped = pd.DataFrame(bad_images, columns=["row", "item_id", "image", "reason"])
    return Loaded(kept, quarantined, len(out), dropped_images=dropped)


def _warn_quarantine(what: str, path: Path, quarantined: pd.DataFrame, rows_in: int) -> None:
    if len(quarantined):
        top = quarantined["reason"].str.split(":").str[0].value_counts().head(5)
        log.warning(
            "%s %s: %d of %d rows quarantined (%s)",
            what,
            path,
            len(quarantined),
            rows_in,
            ", ".join(f"{r}: {n}" for r, n in top.items()),
        )
