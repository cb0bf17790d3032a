"""Train the prompt generator end to end: teacher examples -> hindsight relabelling -> generator +
intent detector, saved side by side in one folder:

    out_dir/generator/     PromptGenerator.save (HF GPT-2 + tokenizer)
    out_dir/intent/        IntentDetector.save
    out_dir/promptgen.json relevance cut points per "task/length" group and per length bucket (reuse
                           them to bucket generated prompts), the relabelling scorer, bucket counts,
                           fit stats
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from tandem.promptgen import LENGTHS, PRESETS, RELEVANCE, TASKS
from tandem.promptgen.model import GeneratorConfig, GeneratorTrainConfig

META_FILE = "promptgen.json"


def preset_config(preset: str) -> GeneratorConfig:
    """`tiny` (tests), `small` (CPU, ~3.9M parameters) or `base` (GPT-2 small shape, ~100M parameters)."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {PRESETS}")
    return getattr(GeneratorConfig, preset)()


def train_generator(
    examples: pd.DataFrame,
    out_dir: str | Path,
    preset: str | GeneratorConfig = "tiny",
    train_cfg: GeneratorTrainConfig | None = None,
    scorer=None,
    progress: bool = False,
) -> dict:
    """Relabel `examples` (teacher columns) with `scorer` (default: SimilarityScorer), fit the generator
    and an intent detector on (intent, task), save both under `out_dir`; returns the metadata written."""
    from tandem.promptgen.intent import IntentDetector
    from tandem.promptgen.model import PromptGenerator
    from tandem.promptgen.relabel import SimilarityScorer, relabel

    config = preset if isinstance(preset, GeneratorConfig) else preset_config(preset)
    scorer = scorer or SimilarityScorer()
    table, thresholds = relabel(examples, scorer)
    out = Path(out_dir)
    generator = PromptGenerator(config)
    fit_stats = generator.fit(table, train_cfg, progress=progress)
    generator.save(out / "generator")
    detector = IntentDetector().fit(table["intent"].astype(str).tolist(), table["task"].astype(str).tolist())
    detector.save(out / "intent")

    def counts(col: str, values: tuple[str, ...]) -> dict[str, int]:
        return {v: int((table[col] == v).sum()) for v in values}

    meta = {
        "thresholds": {b: list(c) for b, c in thresholds.items()},
        "scorer": describe_scorer(scorer),
        "examples": len(table),
        "counts": {"task": counts("task", TASKS), "length": counts("length", LENGTHS)},
        "relevance_counts": counts("relevance", RELEVANCE),
        "generator": {"config": asdict(config), "fit": fit_stats},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    return meta


def describe_scorer(scorer) -> dict:
    """What relabelled the data, so generation can verify its prompts with the same measure."""
    from tandem.promptgen.relabel import SimilarityScorer

    if isinstance(scorer, SimilarityScorer):
        return {"kind": "similarity", "encoder_path": scorer.encoder_path}
    return {"kind": type(scorer).__name__}


def verifier(meta: dict):
    """The relabelling scorer of a trained folder, rebuilt for verified generation (best of N)."""
    from tandem.promptgen.relabel import SimilarityScorer

    spec = meta.get("scorer", {"kind": "similarity", "encoder_path": None})  # folders from before the field
    if spec["kind"] != "similarity":
        raise ValueError(
            f"this generator was relabelled with {spec['kind']}, which needs each intent's target items; "
            "verified generation (candidates > 1) works with the similarity scorer only: use candidates=1"
        )
    return SimilarityScorer(spec.get("encoder_path"))


def load(out_dir: str | Path):
    """(PromptGenerator, IntentDetector, metadata) from a folder written by `train_generator`."""
    from tandem.promptgen.intent import IntentDetector
    from tandem.promptgen.model import PromptGenerator

    out = Path(out_dir)
    if not (out / META_FILE).exists():
        raise ValueError(f"{out} holds no {META_FILE}: train one with `tandem promptgen train --out {out}`")
    meta = json.loads((out / META_FILE).read_text())
    return PromptGenerator.load(out / "generator"), IntentDetector.load(out / "intent"), meta
