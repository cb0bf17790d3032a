"""`tandem promptgen train | generate`: the prompt generator (issue 7). `tandem generate` is the old,
hidden name of `tandem promptgen generate`, kept so that existing scripts keep working."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.cli.common import CONFIG, build_config, choice, option, setup_logging, user_errors
from tandem.promptgen import LENGTHS, PRESETS, RELEVANCE, TASKS

Preset, Task = choice(PRESETS), choice(("auto", *TASKS))
Length, Relevance = choice(LENGTHS), choice(RELEVANCE)
Scorer = choice(("similarity", "index"))

promptgen_app = typer.Typer(
    help="Prompt generator (issue 7): teacher data -> relabel -> GPT-2 + intent detector; then generate prompts.",
    no_args_is_help=True,
)


@promptgen_app.command("train")
def promptgen_train(
    out: Path = option(..., "--out", help="folder for generator/, intent/ and promptgen.json"),
    catalog: Path | None = option(None, "--catalog", help="catalogue: OFFLINE DEMO teacher from its templates"),
    n: int = option(600, "-n", help="examples the catalogue teacher writes"),
    teacher_jsonl: Path | None = option(None, "--teacher-jsonl", help="teacher outputs, one JSON a line"),
    hf_teacher: str | None = option(
        None, "--hf-teacher", help="HF causal LM that rewrites the prompts of --teacher-jsonl's intents (few-shot)"
    ),
    preset: Preset = option(
        "tiny", "--preset", help="generator size: tiny (tests), small (~3.9M, CPU), base (~100M, GPU)"
    ),
    epochs: int | None = option(None, "--epochs", help="passes over the examples", shown=3),
    seed: int = option(0, "--seed", help="seed for the teacher and training"),
    relevance: Scorer = option(
        "similarity",
        "--relevance",
        help="relevance scorer: similarity (MiniLM cosine intent-prompt) or index (reciprocal rank of the "
        "intent's target items when the prompt is searched in --workdir's live collection)",
    ),
    workdir: Path | None = option(None, "--workdir", help="with --relevance index: a workdir `tandem run` built"),
    config: Path | None = CONFIG,
) -> None:
    """Teacher examples -> hindsight relabelling -> generator + intent detector in --out."""
    from tandem.promptgen import teacher
    from tandem.promptgen.model import GeneratorTrainConfig
    from tandem.promptgen.train import train_generator

    setup_logging(False)
    with user_errors():
        if (relevance == "index") != (workdir is not None):
            raise ValueError("--relevance index needs --workdir (and --workdir is only for --relevance index)")
        if (catalog is None) == (teacher_jsonl is None):
            raise ValueError("give exactly one of --catalog (demo teacher) or --teacher-jsonl")
        if hf_teacher and teacher_jsonl is None:
            raise ValueError("--hf-teacher needs --teacher-jsonl for the intents it writes prompts for")
        if catalog is not None:
            from tandem.data.contract import load_catalog

            examples = teacher.catalogue_teacher(load_catalog(catalog).kept, n, seed=seed)
        else:
            examples, bad = teacher.read_teacher_jsonl(teacher_jsonl)
            if len(bad):
                typer.echo(
                    f"teacher JSONL: {len(bad)} rows quarantined, e.g. line {bad.iloc[0]['line']}: "
                    f"{bad.iloc[0]['reason']}"
                )
            if hf_teacher:
                examples = teacher.hf_teacher(
                    hf_teacher,
                    examples["intent"].tolist(),
                    examples["task"].tolist(),
                    examples["target_items"].tolist(),
                    seed=seed,
                )
        train_cfg = GeneratorTrainConfig(seed=seed, **({"epochs": epochs} if epochs is not None else {}))
        if relevance == "index":
            from tandem.promptgen.relabel import IndexRetrievalScorer

            scorer = IndexRetrievalScorer.live(workdir, build_config(config))
            try:
                meta = train_generator(examples, out, preset, train_cfg, scorer)
            finally:
                scorer.close()
        else:
            meta = train_generator(examples, out, preset, train_cfg)
    fit = meta["generator"]["fit"]
    typer.echo(f"examples: {meta['examples']}; relevance thresholds {meta['thresholds']}")
    typer.echo(f"generator: {fit['parameters']} parameters, loss {fit['epoch_loss'][-1]:.4f}")
    typer.echo(f"out: {out}")


@promptgen_app.command("generate")
def promptgen_generate(
    model: Path = option(..., "--model", help="folder written by `tandem promptgen train`"),
    intent: str = option(..., "--intent", help="what the user wants, in their words"),
    task: Task = option("auto", "--task", help="auto = the intent detector picks"),
    length: Length = option("medium", "--length", help="prompt length bucket"),
    relevance: Relevance = option("high", "--relevance", help="relevance bucket"),
    n: int = option(3, "-n", help="prompts to write"),
    temperature: float = option(0.8, "--temperature", help="sampling temperature (> 0)"),
    top_p: float = option(0.95, "--top-p", help="nucleus sampling mass in (0, 1]"),
    seed: int | None = option(None, "--seed", help="seed for reproducible samples", shown="random"),
    candidates: int = option(
        4, "--candidates", help="sample this many and keep the n that best land in the requested buckets (1 = off)"
    ),
    steer: float = option(
        3.0,
        "--steer",
        help="copy bias >= 0 on the intent's words: + for relevance high, - for low (0 = off; 3 raised relevance "
        "control 0.81 -> 0.86 in benchmarks/results/promptgen_eval.md)",
    ),
) -> None:
    """Write n prompts for an intent with the trained prompt generator."""
    from tandem.promptgen.control import generate_verified, steer_bias
    from tandem.promptgen.train import load, verifier

    setup_logging(False)
    with user_errors():
        if not intent.strip():
            raise ValueError("--intent is empty; describe what the user wants")
        if steer < 0:  # checked here to name the flag, before loading the model
            raise ValueError(f"--steer {steer}; use a value >= 0 (its sign follows --relevance)")
        bias = steer_bias(relevance, steer)
        generator, detector, meta = load(model)
        if task == "auto":
            task = detector.predict([intent])[0]
        sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
        if candidates > 1:
            scorer, thresholds = verifier(meta), meta["thresholds"]
            candidates = max(candidates, n)
            prompts = generate_verified(
                generator, scorer, thresholds, [intent], task, length, relevance, n, candidates, steer, **sampling
            )[0]
        else:
            prompts = generator.generate([intent], task, length, relevance, n=n, copy_bias=bias, **sampling)[0]
    typer.echo(f"task: {task}")
    for i, p in enumerate(prompts, start=1):
        typer.echo(f"{i}. {p}")


def register(app: typer.Typer) -> None:
    app.add_typer(promptgen_app, name="promptgen")
    # The old name: hidden from --help, says it is deprecated when used.
    app.command("generate", hidden=True, deprecated=True, help="Deprecated: use `tandem promptgen generate`.")(
        promptgen_generate
    )
