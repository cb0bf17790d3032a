"""Crash-safe writes: a file appears complete or not at all, a folder is trusted only with its marker.

`write_atomic` writes a file next to its target under a hidden temporary name, fsyncs it and renames
it over the target (a reader sees the old file or the new one, never half of one). `atomic_dir`
builds a folder under a temporary name, writes the marker `_DONE` in it last and renames it into
place; `is_done` is what a reader checks. A process killed at any moment leaves at most a hidden
`.NAME.tmp-*` file or folder behind, which no reader looks at and the next write removes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

DONE = "_DONE"  # the marker file, written last into a folder that is complete


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _clear_stale(path: Path) -> None:
    """Temporary leftovers of earlier writes of `path` by processes that are gone."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        parts = stale.name.rsplit(".tmp-", 1)[-1].split("-")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid() and not _alive(int(parts[0])):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function writing to a binary file) to `path` by
    temp-then-rename, fsynced; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def mark_done(folder: str | Path, **info) -> Path:
    """Write `folder/_DONE` (holding `info` as JSON, nothing time-dependent: a folder's hash stays a function
    of its content): the folder is complete."""
    return write_atomic(Path(folder) / DONE, json.dumps(info, sort_keys=True) + "\n")


def is_done(folder: str | Path) -> bool:
    """Whether `folder` holds the marker written last by `atomic_dir` / `mark_done`."""
    return (Path(folder) / DONE).is_file()


@contextmanager
def atomic_dir(path: str | Path, **info) -> Iterator[Path]:
    """`with atomic_dir(path) as tmp:` write the folder's files into `tmp`; on a clean exit the files are
    fsynced, `_DONE` is written last and `tmp` replaces `path` (an older `path` is removed). On an
    exception `tmp` is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        mark_done(tmp, **info)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Rename the folder `src` to `dst`, replacing a folder there (moved aside first, then removed).
    Killed between the two renames, `dst` is missing (never half old, half new)."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.tmp-{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
