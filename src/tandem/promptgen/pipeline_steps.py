"""What the prompt generator's Kubeflow components run (`components/promptgen.py`): teacher examples
from one source into a folder, and training from that folder. Plain functions over paths, so the
components stay a few lines and everything here is testable without kfp.

Teacher sources (`teacher_model` picks; exactly one input goes with it):

- an HF causal LM id or local path: `hf_teacher` writes one prompt per intent, few-shot per task;
  the intents come from an intents JSONL (`intent`, `task`, optional `target_items`; a teacher
  JSONL works too, its prompts are ignored) or from the catalogue's intent templates.
- `""` (no model): the prompts of a teacher JSONL written elsewhere, as they are.
- `"catalogue"`: the OFFLINE DEMO teacher from catalogue templates (not an LLM; see teacher.py).

The examples folder holds `examples.parquet` (the teacher columns), `quarantine.jsonl` (every row
left out, with where and why) and `teacher.json` (source and counts).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from tandem.core import layout
from tandem.core.setup import set_env_defaults
from tandem.promptgen import TASKS

CATALOGUE = "catalogue"  # teacher_model value that selects the offline demo teacher
EXAMPLES_FILE = "examples.parquet"
QUARANTINE_FILE = "quarantine.jsonl"
SUMMARY_FILE = "teacher.json"
QUARANTINE_COLUMNS = ["where", "line", "reason", "raw"]


# ------------------------------------------------------------------------------ inputs
def read_intents_jsonl(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Intents for a teacher LM, one JSON object a line (keys intent, task; optional target_items):
    (kept rows with intent, task, target_items; quarantined rows with line, raw, reason)."""
    from tandem.promptgen.teacher import read_teacher_jsonl

    return read_teacher_jsonl(path, prompts=False)


def parse_few_shot(value: str) -> dict[str, list[tuple[str, str]]] | None:
    """Few-shot examples per task from JSON text or a JSON file path, as
    `{"search": [["intent", "prompt"], ...], ...}`; empty = the teacher's defaults (None)."""
    if not value.strip():
        return None
    text = value if value.lstrip().startswith("{") else None
    if text is None:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"few_shot {value!r} is neither JSON text nor an existing JSON file")
        text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'few_shot is not valid JSON ({e.msg}); use {{"search": [[intent, prompt], ...]}}') from e
    if not isinstance(raw, dict) or not raw:
        raise ValueError("few_shot must be a non-empty JSON object: task -> list of [intent, prompt] pairs")
    out: dict[str, list[tuple[str, str]]] = {}
    for task, pairs in raw.items():
        if task not in TASKS:
            raise ValueError(f"few_shot task {task!r} is not one of {TASKS}")
        ok = isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) and s.strip() for s in p) for p in pairs
        )
        if not ok:
            raise ValueError(f"few_shot[{task!r}] must be a list of [intent, prompt] pairs of non-empty strings")
        out[task] = [(a, b) for a, b in pairs]
    return out


def _quarantine(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """A loader's quarantined rows in the shared layout (where, line, reason, raw)."""
    if frame.empty:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    if "raw" in frame.columns:
        raw = frame["raw"].astype(str)
    else:  # a catalogue row: keep its fields, as JSON, minus the reason
        raw = frame.drop(columns=["reason"]).apply(lambda r: json.dumps(r.to_dict(), default=str), axis=1)
    line = frame["line"] if "line" in frame.columns else pd.Series([None] * len(frame))
    return pd.DataFrame(
        {"where": where, "line": line.tolist(), "reason": frame["reason"].astype(str).tolist(), "raw": raw.tolist()}
    )


def check_source(teacher_model: str, catalog: str, intents: str, teacher_jsonl: str) -> str:
    """The source kind ('catalogue', 'jsonl' or 'hf'); a clear error for any other combination."""
    given = {name for name, v in (("catalog", catalog), ("intents", intents), ("teacher_jsonl", teacher_jsonl)) if v}
    got = ", ".join(sorted(given)) or "nothing"
    if teacher_model == CATALOGUE:
        if given != {"catalog"}:
            raise ValueError(f"teacher_model='catalogue' (the offline demo teacher) needs catalog only; got {got}")
        return "catalogue"
    if not teacher_model:
        if given != {"teacher_jsonl"}:
            raise ValueError(
                "with no teacher_model give teacher_jsonl (teacher outputs) only; or set teacher_model to an HF "
                f"id/path (intents from intents or catalog) or to 'catalogue' (demo); got {got}"
            )
        return "jsonl"
    if len(given & {"intents", "catalog"}) != 1 or "teacher_jsonl" in given:
        raise ValueError(
            f"teacher_model={teacher_model!r} writes prompts for intents: give exactly one of intents (JSONL) or "
            f"catalog (intents from its templates); got {got}"
        )
    return "hf"


# ------------------------------------------------------------------------------ teacher
def teacher_examples(
    teacher_model: str = "",
    catalog: str = "",
    intents: str = "",
    teacher_jsonl: str = "",
    n: int = 600,
    seed: int = 0,
    few_shot: str = "",
    max_new_tokens: int = 48,
    batch_size: int = 8,
    temperature: float = 0.7,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(examples, quarantine, summary) from the source `teacher_model` selects (module docstring).

    Every input is checked before a model loads. The HF teacher's empty prompts are quarantined
    with the reason `teacher wrote an empty prompt`."""
    from tandem.promptgen import teacher

    kind = check_source(teacher_model, catalog, intents, teacher_jsonl)
    few = parse_few_shot(few_shot) if kind == "hf" else None
    if kind in ("catalogue", "hf") and catalog:
        from tandem.data.contract import load_catalog

        loaded = load_catalog(catalog)
        quarantine = _quarantine(loaded.quarantined, "catalog")
        table = teacher.catalogue_teacher(loaded.kept, n, seed=seed)
    elif kind == "jsonl":
        table, bad = teacher.read_teacher_jsonl(teacher_jsonl)
        quarantine = _quarantine(bad, "teacher_jsonl")
    else:
        table, bad = read_intents_jsonl(intents)
        quarantine = _quarantine(bad, "intents")
    if table.empty:
        raise ValueError(f"the {kind} source gave no usable rows ({len(quarantine)} quarantined); fix the input")
    if kind == "hf":
        table = teacher.hf_teacher(
            teacher_model,
            table["intent"].tolist(),
            table["task"].tolist(),
            table["target_items"].tolist(),
            few_shot=few,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            temperature=temperature,
            seed=seed,
        )
        empty = table["prompt"].astype(str).str.strip() == ""
        dropped = table[empty].drop(columns=["source"])
        raw = [json.dumps({k: v for k, v in r.items() if k != "prompt"}) for r in dropped.to_dict("records")]
        lost = pd.DataFrame(
            {"where": "teacher", "line": None, "reason": "teacher wrote an empty prompt", "raw": raw},
            columns=QUARANTINE_COLUMNS,
        )
        quarantine = pd.concat([quarantine, lost], ignore_index=True) if len(quarantine) else lost
        table = table[~empty].reset_index(drop=True)
        if table.empty:
            raise ValueError(f"teacher {teacher_model!r} wrote only empty prompts; check the model and few_shot")
    summary = {
        "source": kind,
        "teacher_model": teacher_model or f"jsonl:{Path(teacher_jsonl).name}",
        "examples": len(table),
        "quarantined": len(quarantine),
        "tasks": {t: int((table["task"] == t).sum()) for t in TASKS},
        "reasons": dict(Counter(quarantine["reason"].astype(str))),
    }
    return table.reset_index(drop=True), quarantine.reset_index(drop=True), summary


def hub_environment(workdir: str = "", allow_download: bool = False) -> None:
    """Where a teacher model is looked up, set before transformers is imported: the Hub cache on the
    shared volume (`WORKDIR/hf-cache`, unless HF_HOME is set) and downloads only when allowed (the
    image sets HF_HUB_OFFLINE=1: models come from paths on the volume by default)."""
    if workdir and "HF_HOME" not in os.environ:
        os.environ["HF_HOME"] = str(layout.hf_cache(workdir))
    if allow_download:
        os.environ["HF_HUB_OFFLINE"] = "0"
    set_env_defaults(offline_hub=True)


def write_teacher(out_dir: str | Path, examples: pd.DataFrame, quarantine: pd.DataFrame, summary: Mapping) -> Path:
    """Write the examples folder (module docstring); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples.to_parquet(out / EXAMPLES_FILE, index=False)
    with (out / QUARANTINE_FILE).open("w", encoding="utf-8") as f:
        for row in quarantine.to_dict("records"):
            line = row.get("line")
            row["line"] = None if line is None or pd.isna(line) else int(line)
            f.write(json.dumps(row) + "\n")
    (out / SUMMARY_FILE).write_text(json.dumps(dict(summary), indent=2))
    return out


def run_teacher(out_dir: str | Path, workdir: str = "", allow_download: bool = False, **source) -> dict:
    """What the `teacher` component runs: `teacher_examples(**source)` written to `out_dir`; the summary."""
    hub_environment(workdir, allow_download)
    examples, quarantine, summary = teacher_examples(**source)
    write_teacher(out_dir, examples, quarantine, summary)
    return summary


def read_examples(examples_dir: str | Path) -> pd.DataFrame:
    """The example table from a folder written by `write_teacher`."""
    path = Path(examples_dir) / EXAMPLES_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass the examples folder written by the teacher step")
    table = pd.read_parquet(path)
    table["target_items"] = table["target_items"].map(lambda v: [str(t) for t in v])  # numpy arrays from Parquet
    return table


# ------------------------------------------------------------------------------ training
def run_train(
    examples_dir: str | Path, out_dir: str | Path, preset: str = "tiny", epochs: int = 3, seed: int = 0
) -> dict:
    """What the `train_promptgen` component runs: relabel + generator + intent detector from the
    examples folder into `out_dir` (loadable with `tandem.promptgen.train.load`); the metadata."""
    from tandem.promptgen.model import GeneratorTrainConfig
    from tandem.promptgen.train import preset_config, train_generator

    set_env_defaults(offline_hub=True)  # the relabelling encoder is the bundled MiniLM
    preset_config(preset)  # a bad preset fails before reading anything
    train_cfg = GeneratorTrainConfig(epochs=epochs, seed=seed)
    return train_generator(read_examples(examples_dir), out_dir, preset, train_cfg)


def train_metrics(meta: Mapping) -> dict[str, float]:
    """The numbers of `run_train`'s metadata worth logging as KFP metrics (flat names)."""
    fit = meta["generator"]["fit"]
    out = {"examples": float(meta["examples"]), "final_loss": float(fit["epoch_loss"][-1])}
    out |= {f"relevance.{k}": float(v) for k, v in meta["relevance_counts"].items()}
    for group, counts in meta["counts"].items():
        out |= {f"{group}.{k}": float(v) for k, v in counts.items()}
    out |= {
        f"threshold.{key.replace('/', '.')}.{i}": float(t)
        for key, cuts in meta["thresholds"].items()
        for i, t in enumerate(cuts)
    }
    out |= {k: float(fit[k]) for k in ("parameters", "steps", "seconds") if k in fit}
    return out
