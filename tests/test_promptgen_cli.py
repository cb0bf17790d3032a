"""`tandem promptgen train` and `tandem promptgen generate` (old name: `tandem generate`, hidden) on a handmade
catalogue with the tiny preset."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("tokenizers")
pytest.importorskip("sklearn")

from tandem.cli import app  # noqa: E402
from tandem.promptgen import TASKS  # noqa: E402
from tandem.promptgen.train import load  # noqa: E402

ITEMS = [
    ("i1", "red wool scarf", "accessories", "a warm red scarf"),
    ("i2", "blue denim jacket", "outerwear", "a classic jacket"),
    ("i3", "leather hiking boots", "footwear", "boots for trails"),
    ("i4", "ceramic coffee mug", "kitchen", "a glossy mug"),
    ("i5", "oak dining table", "furniture", "solid oak table"),
    ("i6", "cotton bath towel", "bathroom", "soft towel"),
    ("i7", "steel water bottle", "outdoor", "keeps drinks cold"),
    ("i8", "linen summer dress", "womenswear", "light dress"),
    ("i9", "desk lamp with dimmer", "lighting", "adjustable lamp"),
    ("i10", "running shoes", "footwear", "light trainers"),
]

runner = CliRunner()
GENERATE = ["promptgen", "generate", "--model"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("promptgen")
    catalog = d / "catalog.csv"
    pd.DataFrame(ITEMS, columns=["item_id", "title", "topics", "content"]).to_csv(catalog, index=False)
    out = d / "model"
    args = ["promptgen", "train", "--catalog", str(catalog), "-n", "60", "--out", str(out), "--epochs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_generator_detector_and_meta(trained):
    out, output = trained
    assert (out / "generator" / "generator.json").exists()
    assert (out / "intent" / "intent.json").exists()
    meta = json.loads((out / "promptgen.json").read_text())
    assert set(meta["thresholds"]) == {"short", "medium", "long"}
    assert all(lo <= hi for lo, hi in meta["thresholds"].values())
    assert meta["examples"] == 60
    assert meta["scorer"] == {"kind": "similarity", "encoder_path": None}  # generate verifies with the same
    assert sum(meta["relevance_counts"].values()) == 60
    assert len(meta["generator"]["fit"]["epoch_loss"]) == 2
    generator, detector, loaded_meta = load(out)
    assert loaded_meta == meta
    assert detector.predict(["draw me a red scarf"])[0] in TASKS
    assert f"out: {out}" in output


def test_generate_prints_n_prompts(trained):
    out, _ = trained
    args = [*GENERATE, str(out), "--intent", "looking for a red wool scarf", "-n", "4", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].removeprefix("task: ") in TASKS  # task auto -> the intent detector's answer
    assert [line.split(".")[0] for line in lines[1:]] == ["1", "2", "3", "4"]
    fixed = runner.invoke(app, args + ["--task", "image"])
    assert fixed.stdout.splitlines()[0] == "task: image"


def test_generate_verified_picks_from_the_same_samples(trained):
    """Default: best n of --candidates samples; --candidates 1 = the generator alone. With n equal to the
    candidates, verification only reorders the very same samples."""
    out, _ = trained
    args = [*GENERATE, str(out), "--intent", "oak table", "--task", "search", "-n", "4", "--seed", "3"]
    verified = runner.invoke(app, args + ["--candidates", "4"])
    alone = runner.invoke(app, args + ["--candidates", "1"])
    assert verified.exit_code == 0 and alone.exit_code == 0, verified.output + alone.output

    def prompts(result):
        return sorted(line.split(". ", 1)[1] for line in result.stdout.splitlines()[1:])

    assert len(prompts(verified)) == 4
    assert set(prompts(verified)) <= set(prompts(alone))


def test_generate_same_seed_same_prompts(trained):
    out, _ = trained
    args = [*GENERATE, str(out), "--intent", "oak table", "--task", "search", "-n", "3", "--seed", "7"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "poem"], "'recommendation'"),
        (["--length", "huge"], "'medium'"),
        (["--top-p", "0"], "top_p"),
        (["--steer", "-1"], "--steer"),
    ],
)
def test_generate_bad_args_exit_2(trained, extra, message):
    out, _ = trained
    result = runner.invoke(app, ["promptgen", "generate", "--model", str(out), "--intent", "a scarf", *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_generate_missing_model_exit_2(tmp_path):
    result = runner.invoke(app, ["promptgen", "generate", "--model", str(tmp_path), "--intent", "a scarf"])
    assert result.exit_code == 2
    assert "promptgen.json" in result.output


def test_train_needs_exactly_one_teacher(tmp_path):
    result = runner.invoke(app, ["promptgen", "train", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "--catalog" in result.output
    bad = runner.invoke(
        app, ["promptgen", "train", "--out", str(tmp_path / "m"), "--catalog", "x.csv", "--preset", "xl"]
    )
    assert bad.exit_code == 2
    assert "preset" in bad.output


def test_generate_as_in_the_readme(trained):
    """The README's example, every flag as written there."""
    out, _ = trained
    args = ["promptgen", "generate", "--model", str(out), "--intent", "I liked the red wool scarf", "-n", "3"]
    args += ["--task", "auto", "--length", "short", "--relevance", "high", "--candidates", "4", "--steer", "3"]
    args += ["--temperature", "0.8", "--top-p", "0.95", "--seed", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].removeprefix("task: ") in TASKS and len(lines) == 4


def test_old_generate_name_still_works(trained):
    out, _ = trained
    args = ["--model", str(out), "--intent", "oak table", "--task", "search", "-n", "2", "--seed", "5"]
    args += ["--candidates", "1"]
    old, new = runner.invoke(app, ["generate", *args]), runner.invoke(app, ["promptgen", "generate", *args])
    assert old.exit_code == 0 and old.stdout == new.stdout
    assert "deprecated" in old.stderr.lower()


def test_train_from_teacher_jsonl(tmp_path):
    """`tandem promptgen train --teacher-jsonl teacher.jsonl --out DIR --preset ...` (tiny here, not base)."""
    rows = [
        {"intent": f"something like the {title}", "task": task, "prompt": f"{title} {topic}"}
        for _, title, topic, _ in ITEMS
        for task in TASKS
    ]
    lines = [json.dumps(r) for r in rows] + ['{"intent": "no task"}']  # one bad row: quarantined
    (tmp_path / "teacher.jsonl").write_text("\n".join(lines) + "\n")
    args = ["promptgen", "train", "--teacher-jsonl", str(tmp_path / "teacher.jsonl"), "--out", str(tmp_path / "m")]
    result = runner.invoke(app, [*args, "--preset", "tiny", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "1 rows quarantined" in result.output
    assert json.loads((tmp_path / "m" / "promptgen.json").read_text())["examples"] == len(rows)
