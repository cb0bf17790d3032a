"""The checks of bad input under `tandem.data.contract`: the structure of a CSV file, duplicated column
names, timestamps (epoch units, the plausible window), float ids, reader errors and catalogue image paths.

A problem with a whole file is a `ContractError` naming the file, the line or column and the fix; a bad
timestamp or image is a reason string for the contract's quarantine. Timestamps are converted by SQL
that cannot raise: a value DuckDB cannot convert becomes NULL and gets its reason, never a traceback.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import re
import stat
from collections import Counter
from pathlib import Path

from tandem.core.config_contract import ContractConfig, parse_instant


class ContractError(ValueError):
    """An input file does not follow the data contract; the message says how to fix it."""


# ---- CSV structure -------------------------------------------------------------------------------

DELIMITERS = (",", ";", "\t", "|")
CHUNK = 1 << 22


def _nul_line(path: Path) -> tuple[int, int] | None:
    """(line, byte offset) of the first NUL byte of a file, or None."""
    line, offset = 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            at = chunk.find(b"\0")
            if at >= 0:
                return line + chunk.count(b"\n", 0, at), offset + at
            line += chunk.count(b"\n")
            offset += len(chunk)
    return None


def duplicated_names(names, path: Path | str, what: str) -> None:
    """Refuse a header that names a column twice (readers silently keep one of them)."""
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise ContractError(
            f"{what} file {path}: column {', '.join(map(repr, twice))} appears more than once in the header; "
            "rename or drop the extra column (a reader would silently use only one of them)."
        )


def check_csv(path: Path, what: str, delimiter: str | None = None) -> None:
    """Refuse a CSV file with a NUL byte, a duplicated column name or rows whose field count is not the
    header's, naming the line. `delimiter=None` takes the one that splits the header into most fields."""
    nul = _nul_line(path)
    if nul:
        raise ContractError(
            f"{what} file {path}: line {nul[0]} holds a NUL byte (byte offset {nul[1]}); the file is binary, "
            "corrupt or not UTF-8 text (UTF-16?). Remove the byte or re-export the file as UTF-8 CSV."
        )
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
        if delimiter is None:
            delimiter = max(DELIMITERS, key=lambda d: len(next(csv.reader([first], delimiter=d), [])))
        f.seek(0)
        rows = csv.reader(f, delimiter=delimiter)
        header = next(rows, [])
        duplicated_names(header, path, what)
        ragged: list[tuple[int, int]] = []
        for row in rows:
            if row and len(row) != len(header):  # blank lines are skipped, as the readers do
                ragged.append((rows.line_num, len(row)))
    if ragged:
        line, got = ragged[0]
        more = f"; {len(ragged)} rows like this, on lines {', '.join(str(r[0]) for r in ragged[:5])}" + (
            ", ..." if len(ragged) > 5 else ""
        )
        raise ContractError(
            f"{what} file {path}: line {line} has {got} fields, expected {len(header)} (the header's: "
            f"{', '.join(header)}){more}. Quote values that contain {delimiter!r} or fix those rows."
        )


def check_parquet_names(path: Path, what: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as e:
        raise ContractError(f"{what} file {path} cannot be read as parquet: {e}") from e
    duplicated_names(names, path, what)


# ---- timestamps ----------------------------------------------------------------------------------

NUMBER = r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"
NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER"}
NUMERIC_TYPES |= {"UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE"}
# An epoch's unit from its magnitude: (name, |value| below, microseconds per unit). Seconds reach the
# year 5138 before milliseconds start (1e11 ms is 1973), so a plausible time has only one reading.
EPOCH_UNITS = (("seconds", 1e11, 1e6), ("milliseconds", 1e14, 1e3), ("microseconds", 1e17, 1.0))
EPOCH_UNITS += (("nanoseconds", 1e20, 1e-3),)


def _epoch_sql(x: str) -> tuple[str, str]:
    """(TIMESTAMPTZ or NULL, how it was read) for a DOUBLE expression `x` of epoch seconds/ms/us/ns."""
    ts = " ".join(
        f"WHEN abs({x}) < {below:g} THEN CAST(make_timestamp(CAST(round({x} * {per!r}) AS BIGINT)) AS TIMESTAMPTZ)"
        for _, below, per in EPOCH_UNITS
    )
    note = " ".join(f"WHEN abs({x}) < {below:g} THEN 'epoch {name}'" for name, below, _ in EPOCH_UNITS)
    note = (
        f"CASE WHEN isnan({x}) OR isinf({x}) THEN 'not a finite number' {note} "
        f"ELSE 'too large for an epoch in seconds, ms, us or ns' END"
    )
    return f"CASE {ts} ELSE NULL END", note  # NaN and inf fail every `<`: NULL


def ts_parts_sql(dtype: str, path: Path | str) -> tuple[str, str]:
    """SQL for column `ts` of DuckDB type `dtype`: (TIMESTAMPTZ, NULL where unusable; how a number was
    read, e.g. 'epoch milliseconds', NULL for text and timestamps). Neither expression can raise."""
    if dtype.startswith("TIMESTAMP") or dtype == "DATE":
        return "TRY_CAST(ts AS TIMESTAMPTZ)", "CAST(NULL AS VARCHAR)"  # naive timestamps are read as UTC
    if dtype in NUMERIC_TYPES or dtype.startswith("DECIMAL"):
        return _epoch_sql("CAST(ts AS DOUBLE)")
    if dtype == "VARCHAR":
        number = f"regexp_full_match(trim(ts), '{NUMBER}')"
        x = "TRY_CAST(trim(ts) AS DOUBLE)"
        epoch, note = _epoch_sql(x)
        text = "TRY_CAST(trim(ts) AS TIMESTAMPTZ)"
        special = "lower(trim(ts)) IN ('nan', 'inf', '-inf', '+inf', 'infinity', '-infinity', '+infinity')"
        return (
            f"CASE WHEN {number} THEN {epoch} WHEN {special} THEN NULL ELSE {text} END",
            f"CASE WHEN {number} THEN {note} WHEN {special} THEN 'not a finite number' END",
        )
    raise ContractError(
        f"logs file {path}: column 'ts' has type {dtype}; use a timestamp, epoch seconds (or ms, us, ns) "
        "or an ISO-8601 string."
    )


def ts_sql(dtype: str, path: Path | str) -> str:
    """SQL turning column `ts` of DuckDB type `dtype` into TIMESTAMPTZ (NULL where unparsable)."""
    return ts_parts_sql(dtype, path)[0]


def ts_window(cfg: ContractConfig, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The plausible event times (UTC): contract.min_ts .. contract.max_ts (empty = now + 1 day)."""
    upper = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=1)
    return parse_instant(cfg.min_ts), parse_instant(cfg.max_ts) if cfg.max_ts else upper


def ts_reason_sql(ts: str, raw: str, note: str, window: tuple[dt.datetime, dt.datetime]) -> str:
    """SQL: the quarantine reason of a row's timestamp (NULL when it is usable)."""
    lo, hi = (t.isoformat() for t in window)
    span = f"{window[0]:%Y-%m-%d %H:%M} .. {window[1]:%Y-%m-%d %H:%M} UTC"
    read_as = f"coalesce(' (' || {note} || ' = ' || CAST({ts} AS VARCHAR) || ')', '')"
    return f"""CASE
        WHEN {ts} IS NULL THEN 'unparsable ts: ' || coalesce({raw}, 'NULL') || coalesce(' (' || {note} || ')', '')
        WHEN NOT isfinite({ts}) OR {ts} < TIMESTAMPTZ '{lo}' OR {ts} > TIMESTAMPTZ '{hi}'
        THEN 'ts out of range: ' || {raw} || {read_as} || ' is outside the plausible window {span} '
             || '(contract.min_ts, contract.max_ts)'
    END"""


# ---- ids and reader errors ----------------------------------------------------------------------


def error_column(types: dict, error: str) -> str | None:
    """The column a reader's conversion error is about, where the message tells (DuckDB's parquet reader
    fails for the whole file, so columns cannot be tried one by one)."""
    named = re.search(r"column \"?(\w+)", error)
    if named and named.group(1) in types:
        return named.group(1)
    if "timestamp" in error.lower():
        return next((c for c, t in types.items() if t.startswith("TIMESTAMP")), None)
    return None


def missing_id_sql(col: str) -> str:
    """SQL: the reason for a NULL id, saying so when it was a float NaN or inf."""
    special = f"lower(trim({col}_raw)) IN ('nan', 'inf', '-inf')"
    return f"'missing {col}' || CASE WHEN {special} THEN ' (' || trim({col}_raw) || ' is not an id)' ELSE '' END"


# ---- image paths ---------------------------------------------------------------------------------


def image_roots(catalog: Path, cfg: ContractConfig) -> list[Path]:
    """The folders images may come from: the catalogue's own folder and contract.image_roots (relative
    roots are relative to the catalogue's folder)."""
    base = catalog.parent.resolve()
    return [base, *((base / r).resolve() for r in cfg.image_roots)]


def is_url(path: str) -> bool:
    return "://" in path


def image_path_problem(path: str, roots: list[Path], cfg: ContractConfig) -> str | None:
    """Why an image (an absolute path or a URL) cannot be used, checked without opening it; else None."""
    if is_url(path):
        if cfg.allow_image_urls:
            return None
        return "image URL not allowed: nothing here downloads images; list a local path (contract.allow_image_urls)"
    resolved = Path(path)
    if not any(resolved.is_relative_to(r) for r in roots):
        return (
            f"image outside the catalogue's folder {roots[0]}"
            + (f" and contract.image_roots ({', '.join(map(str, roots[1:]))})" if len(roots) > 1 else "")
            + ": move it there or add its folder to contract.image_roots"
        )
    try:
        mode = os.stat(resolved).st_mode  # stat, not open: opening a FIFO would wait for a writer
    except FileNotFoundError:
        return "image file not found"
    except (OSError, ValueError) as e:
        return f"image unreadable: {type(e).__name__}: {e}"
    if not stat.S_ISREG(mode):
        return "image is not a regular file (a folder, FIFO, socket or device)"
    return None


def resolve_image(path: str, base: Path) -> str:
    """An image as listed in the catalogue -> an absolute path (symbolic links followed) or the URL."""
    if is_url(path):
        return path
    try:
        return str((base / path).resolve())
    except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
        return str(base / path)
