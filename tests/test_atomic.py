"""Crash-safe writes (issue 19, item 3): a process SIGKILLed in the middle of a stage's write, a model save
or a log partition leaves the previous complete version (or nothing), and readers trust only the marker.

Each kill runs in its own Python process that kills itself with SIGKILL at the chosen moment (the first
fsync of the write, i.e. after its bytes were written and before the rename, or before `_DONE`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from tandem.core.atomic import DONE, atomic_dir, is_done, write_atomic
from tandem.data.partitions import complete, ingest, select

KILL_AT_FSYNC = "import os, signal\nos.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
KILL_AT_MARKER = (
    "import os, signal, tandem.core.atomic as a\na.mark_done = lambda *x, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
)


def killed(*parts: str) -> None:
    """Run the code `parts` (each dedented) in a new Python process and check that it died of SIGKILL."""
    code = "\n".join(textwrap.dedent(p) for p in parts)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------------------------------ files
def test_write_atomic_replaces_whole_files_and_cleans_up(tmp_path):
    path = write_atomic(tmp_path / "a" / "x.json", '{"v": 1}')
    assert json.loads(path.read_text()) == {"v": 1}
    write_atomic(path, lambda f: f.write(b'{"v": 2}'))
    assert json.loads(path.read_text()) == {"v": 2} and not leftovers(path.parent)
    with pytest.raises(RuntimeError):
        write_atomic(path, lambda f: (f.write(b"{half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert json.loads(path.read_text()) == {"v": 2} and not leftovers(path.parent)


def test_a_stage_killed_while_writing_its_summary_or_outputs_keeps_the_old_ones(tmp_path):
    from tandem.pipeline.stages import RunPaths

    run = RunPaths.of(tmp_path, "r1")
    run.save("embed", {"items": 1})
    write_atomic(run / "vectors" / "items.npy", b"old vectors")
    killed(
        KILL_AT_FSYNC,
        f"""
        import numpy as np
        from tandem.pipeline.stages import RunPaths
        from tandem.core.atomic import write_atomic
        run = RunPaths.of({str(tmp_path)!r}, "r1")
        write_atomic(run / "vectors" / "items.npy", lambda f: np.save(f, np.ones((1000, 64), "float32")))
        """,
    )
    killed(KILL_AT_FSYNC + f"from tandem.pipeline.stages import RunPaths\nRunPaths.of({str(tmp_path)!r}, 'r1')"
           ".save('embed', {'items': 2})")  # fmt: skip
    assert run.summary("embed") == {"items": 1}  # the old summary, whole: the next stage trusts it
    assert (run / "vectors" / "items.npy").read_bytes() == b"old vectors"
    assert len(leftovers(run.dir)) == 1 and len(leftovers(run / "vectors")) == 1  # hidden temporaries only
    run.save("embed", {"items": 3})  # the next write removes the dead process's temporary file
    assert run.summary("embed") == {"items": 3} and not leftovers(run.dir)


# ------------------------------------------------------------------------------------------ models
TOY = """
from torch import nn
from tandem.core.config import ModelConfig
from tandem.models.base import Encoder, read_meta

class Toy(Encoder):
    family = "toy"

    def __init__(self, value=0.0):
        super().__init__()
        self.cfg = ModelConfig()
        self.lin = nn.Linear(64, 64)
        nn.init.constant_(self.lin.weight, value)

    def save(self, directory):
        return self.save_files(directory, "tandem.Toy", 1, {})

    @classmethod
    def load(cls, directory, device="cpu"):
        read_meta(directory, "tandem.Toy", 1, "toy")
        return cls().load_weights(directory, device)
"""
namespace: dict = {}
exec(TOY, namespace)  # the same class in this process and in the killed one
Toy = namespace["Toy"]


def test_a_model_save_killed_half_way_leaves_the_previous_model(tmp_path):
    Toy(1.0).save(tmp_path / "model")
    assert is_done(tmp_path / "model") and json.loads((tmp_path / "model" / "config.json").read_text())
    # killed after config.json and half of the weights: the previous model is what a reader finds
    killed(
        TOY,
        f"""
        import os, signal, safetensors.torch as st
        def half(model, path, metadata=None):
            open(path, "wb").write(b"x" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
        st.save_model = half
        Toy(2.0).save({str(tmp_path / "model")!r})
        """,
    )
    assert torch.equal(Toy.load(tmp_path / "model").lin.weight, torch.full((64, 64), 1.0))
    killed(TOY + KILL_AT_MARKER + f"Toy(3.0).save({str(tmp_path / 'new')!r})")  # the first save of a folder
    assert not (tmp_path / "new").exists()  # nothing that looks saved
    with pytest.raises(ValueError, match="no config.json"):
        Toy.load(tmp_path / "new")


def test_a_model_folder_without_its_marker_is_refused_with_a_clear_message(tmp_path):
    Toy(1.0).save(tmp_path / "m")
    (tmp_path / "m" / DONE).unlink()  # as a save killed before the marker, or written before markers existed
    with pytest.raises(ValueError, match=f"incomplete toy model \\(no {DONE} marker"):
        Toy.load(tmp_path / "m")


def test_atomic_dir_leaves_the_old_folder_on_an_error(tmp_path):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("boom")
    assert (tmp_path / "d" / "a.txt").read_text() == "1" and is_done(tmp_path / "d") and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ partitions
@pytest.fixture
def source(tmp_path):
    ts = ["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z", "2024-01-03T10:00:00Z"]
    df = pd.DataFrame({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "event": ["view"] * 3, "ts": ts})
    df.to_csv(tmp_path / "landing.csv", index=False)
    return tmp_path / "landing.csv"


def test_a_partition_killed_before_its_marker_is_not_complete(source, tmp_path, caplog):
    from tandem.orchestration.airflow_schedule import missing_days

    wh = tmp_path / "wh"
    ingest(source, wh, "2024-01-01", "2024-01-02")  # day 1, complete
    # day 2's part.parquet is written, the process is killed before its _DONE
    killed(KILL_AT_MARKER + f"from tandem.data.partitions import ingest\ningest({str(source)!r}, {str(wh)!r}, "
           "'2024-01-02', '2024-01-04')")  # fmt: skip
    logs = wh / "logs"
    assert not (logs / "date=2024-01-02").exists() and leftovers(logs)  # only a hidden temporary folder
    assert [p.parent.name for p in select(wh, "2024-01-04", days=3)] == ["date=2024-01-01"]
    assert [d.isoformat() for d in missing_days(wh, "2024-01-04", 3)] == ["2024-01-02", "2024-01-03"]
    # a partition folder without its marker (a partial write by an older tandem) is skipped, with a warning
    (logs / "date=2024-01-03").mkdir()
    (logs / "date=2024-01-03" / "part.parquet").write_bytes(b"PAR1 half a file")
    assert not complete(logs / "date=2024-01-03")
    assert len(select(wh, "2024-01-04", days=3)) == 1 and "incomplete log partitions" in caplog.text
    with pytest.raises(ValueError, match="1 incomplete, without _DONE: date=2024-01-03"):
        select(wh, "2024-01-04", days=1)
    ingest(source, wh, "2024-01-02", "2024-01-04")  # the rerun completes both days and removes the temporary
    assert len(select(wh, "2024-01-04", days=3)) == 3 and not leftovers(logs)
