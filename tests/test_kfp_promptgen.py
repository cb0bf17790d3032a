"""The prompt generator's Kubeflow pipeline (`tandem-promptgen`): the committed YAML is fresh and asks
for GPUs; the whole pipeline runs with kfp.local on a tiny random GPT-2 teacher; every teacher source
works and a bad one fails with a message that names the fix."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tandem.cli import app
from tandem.orchestration import kubeflow as pipelines
from tandem.promptgen import TASKS, pipeline_steps
from tandem.promptgen.pipeline_steps import EXAMPLES_FILE, QUARANTINE_FILE, SUMMARY_FILE
from tandem.promptgen.teacher import CATALOGUE_SOURCE, COLUMNS, DEFAULT_FEW_SHOT
from tandem.promptgen.train import load

pytestmark = pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner")
GPU_TASKS = {"teacher", "train-promptgen"}
SOURCE_PARAMS = {"teacher_model", "catalog", "intents", "teacher_jsonl", "workdir", "pvc"}
ITEMS = [
    ("i1", "red wool scarf", "accessories", "a warm red scarf"),
    ("i2", "blue denim jacket", "outerwear", "a classic jacket"),
    ("i3", "leather hiking boots", "footwear", "boots for trails"),
    ("i4", "ceramic coffee mug", "kitchen", "a glossy mug"),
    ("i5", "oak dining table", "furniture", "solid oak table"),
    ("i6", "desk lamp with dimmer", "lighting", "adjustable lamp"),
]
INTENTS = [
    ("find a desk lamp", "search", ["i6"]),
    ("more like the red scarf", "recommendation", ["i1"]),
    ("draw a coffee mug", "image", ["i4"]),
    ("boots for hiking", "search", ["i3"]),
    ("tables like the oak one", "recommendation", ["i5"]),
    ("a picture of a denim jacket", "image", ["i2"]),
]


def _docs(path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def _write_intents(path, extra_lines=()) -> str:
    rows = [json.dumps({"intent": i, "task": t, "target_items": items}) for i, t, items in INTENTS]
    path.write_text("\n".join([*rows, *extra_lines]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def catalog_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "catalog.csv"
    rows = [*ITEMS, ("i1", "a duplicate id", "x", "quarantined by the catalogue contract")]
    pd.DataFrame(rows, columns=["item_id", "title", "topics", "content"]).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random GPT-2 with the bundled MiniLM tokenizer: stands in for an 8B instruct teacher."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tandem.models.base import bundled_minilm

    path = tmp_path_factory.mktemp("teacher_lm")
    tok = AutoTokenizer.from_pretrained(bundled_minilm())
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        path
    )
    tok.save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------ compiled YAML
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _docs(pipelines.compile(tmp_path_factory.mktemp("kfp") / "promptgen.yaml", pipeline="promptgen"))


def test_committed_yaml_is_not_stale(compiled):
    committed = _docs(pipelines.components_dir() / pipelines.PIPELINES["promptgen"][1])
    assert committed == compiled, "components/promptgen.yaml is stale: run `tandem kfp compile --pipeline promptgen`"


def test_yaml_requests_gpus_and_has_the_parameters(compiled):
    spec, platform = compiled
    assert spec["pipelineInfo"]["name"] == "tandem-promptgen"
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {f"exec-{t}" for t in GPU_TASKS} == set(executors)
    for name in GPU_TASKS:
        container = executors[f"exec-{name}"]["container"]
        assert container["image"] == pipelines.DEFAULT_IMAGE
        resources = container["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"]
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        assert toleration in k8s[f"exec-{name}"]["tolerations"]
    # the teacher reads inputs (and a saved model) on the volume, a gated model's token from a Secret
    assert k8s["exec-teacher"]["pvcMount"][0]["mountPath"] == pipelines.MOUNT_PATH
    (secret,) = k8s["exec-teacher"]["secretAsEnv"]
    assert secret["secretName"] == "tandem-hf" and secret["optional"] is True
    assert secret["keyToEnv"] == [{"secretKey": "token", "envVar": "HF_TOKEN"}]
    tasks = spec["root"]["dag"]["tasks"]
    assert not tasks["teacher"]["cachingOptions"].get("enableCache")
    assert tasks["train-promptgen"]["cachingOptions"]["enableCache"] is True
    assert tasks["train-promptgen"]["dependentTasks"] == ["teacher"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == SOURCE_PARAMS | set(pipelines.PROMPTGEN_OPTIONS)
    assert params["teacher_model"]["defaultValue"] == "catalogue"
    assert params["workdir"]["defaultValue"] == pipelines.MOUNT_PATH
    assert params["epochs"]["parameterType"] == "NUMBER_INTEGER" and params["preset"]["parameterType"] == "STRING"
    assert spec["root"]["outputDefinitions"]["artifacts"]["Output"]["artifactType"]["schemaTitle"] == "system.Model"


# ------------------------------------------------------------------- the whole pipeline, kfp.local
@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("run")
    intents = _write_intents(d / "intents.jsonl", ["{not json", json.dumps({"intent": "x", "task": "poetry"})])
    few_shot = {"search": [["need a lamp", "desk lamp"]], "image": [["a cat", "a cat on a sofa, oil painting"]]}
    result = pipelines.run_local_promptgen(
        d / "work",
        teacher_model=tiny_lm,
        intents=intents,
        few_shot=json.dumps(few_shot),
        max_new_tokens=6,
        preset="tiny",
        epochs=1,
    )
    return d, result


def test_local_run_trains_a_loadable_generator(local_run):
    _, result = local_run
    generator, detector, meta = load(result["model"])
    assert meta == result["promptgen"]
    taught = result["teacher"]
    assert taught["source"] == "hf" and taught["examples"] == meta["examples"] >= 1
    # the tiny random LM may write empty prompts: those are quarantined, never lost
    assert taught["examples"] + taught["reasons"].get("teacher wrote an empty prompt", 0) == len(INTENTS)
    assert len(meta["generator"]["fit"]["epoch_loss"]) == 1
    assert detector.predict(["draw a teapot"])[0] in TASKS
    (prompts,) = generator.generate(["find a lamp"], "search", "short", "high", n=2, seed=0)
    assert len(prompts) == 2 and all(isinstance(p, str) for p in prompts)


def test_local_run_quarantines_bad_intents_and_logs_metrics(local_run):
    _, result = local_run
    examples = pd.read_parquet(f"{result['examples']}/{EXAMPLES_FILE}")
    assert list(examples.columns) == COLUMNS and len(examples) == result["teacher"]["examples"]
    assert set(examples["source"]) == {result["teacher"]["teacher_model"]}
    bad = [json.loads(line) for line in open(f"{result['examples']}/{QUARANTINE_FILE}")]
    from_intents = [b for b in bad if b["where"] == "intents"]
    assert [b["line"] for b in from_intents] == [7, 8]
    assert from_intents[0]["reason"].startswith("bad JSON") and from_intents[1]["reason"].startswith("unknown task")
    assert len(bad) == result["teacher"]["quarantined"]
    (run_dir,) = Path(result["pipeline_root"]).iterdir()  # one pipeline run
    out = json.loads((run_dir / "train-promptgen/executor_output.json").read_text())
    logged = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    fit = result["promptgen"]["generator"]["fit"]
    assert logged["final_loss"] == pytest.approx(fit["epoch_loss"][-1])
    assert logged["examples"] == result["promptgen"]["examples"]
    assert sum(logged[f"relevance.{r}"] for r in ("low", "medium", "high")) == logged["examples"]
    teacher_out = json.loads((run_dir / "teacher/executor_output.json").read_text())
    assert teacher_out["artifacts"]["examples"]["artifacts"][0]["metadata"]["quarantined"] == len(bad)


# ------------------------------------------------------------------ sources, in process (cheap)
def _teacher_component():
    return pipelines.definitions("promptgen").components(pipelines.DEFAULT_IMAGE)["teacher"].python_func


def _teacher_args(out, **source) -> dict:
    args = dict(teacher_model="", catalog="", intents="", teacher_jsonl="", n=30, seed=0, few_shot="")
    args |= dict(max_new_tokens=6, batch_size=4, temperature=0.7, workdir="", allow_download=False)
    return args | source | {"examples": out}


def test_catalogue_source_through_the_component(tmp_path, catalog_csv):
    out = SimpleNamespace(path=str(tmp_path / "examples"), metadata={})
    _teacher_component()(**_teacher_args(out, teacher_model="catalogue", catalog=catalog_csv, n=30))
    table = pipeline_steps.read_examples(out.path)
    assert len(table) == 30 and set(table["task"]) == set(TASKS) and set(table["source"]) == {CATALOGUE_SOURCE}
    assert all(isinstance(t, list) and t[0] in {i[0] for i in ITEMS} for t in table["target_items"])
    assert out.metadata["source"] == "catalogue" and out.metadata["tasks"] == {t: 10 for t in TASKS}
    (bad,) = [json.loads(line) for line in open(tmp_path / "examples" / QUARANTINE_FILE)]
    assert bad["where"] == "catalog" and bad["reason"].startswith("duplicate item_id")
    assert json.loads(bad["raw"])["title"] == "a duplicate id"
    assert json.loads((tmp_path / "examples" / SUMMARY_FILE).read_text()) == out.metadata


def test_teacher_jsonl_source_as_is(tmp_path):
    rows = [
        {"intent": i, "task": t, "prompt": f"prompt {k}", "target_items": items}
        for k, (i, t, items) in enumerate(INTENTS)
    ]
    lines = [json.dumps(r) for r in rows] + [json.dumps({"intent": "a", "task": "search", "prompt": " "})]
    (tmp_path / "teacher.jsonl").write_text("\n".join(lines) + "\n")
    examples, quarantine, summary = pipeline_steps.teacher_examples(teacher_jsonl=str(tmp_path / "teacher.jsonl"))
    assert examples["prompt"].tolist() == [f"prompt {k}" for k in range(len(INTENTS))]
    assert summary["source"] == "jsonl" and summary["examples"] == len(INTENTS) and summary["quarantined"] == 1
    assert quarantine.to_dict("records")[0] | {"raw": ""} == {
        "where": "teacher_jsonl",
        "line": 7,
        "reason": "empty prompt",
        "raw": "",
    }
    pipeline_steps.write_teacher(tmp_path / "ex", examples, quarantine, summary)
    again = pipeline_steps.read_examples(tmp_path / "ex")
    assert again["target_items"].tolist() == [items for _, _, items in INTENTS]


def test_hf_teacher_on_catalogue_intents(tiny_lm, catalog_csv):
    examples, _, summary = pipeline_steps.teacher_examples(
        teacher_model=tiny_lm, catalog=catalog_csv, n=6, max_new_tokens=4
    )
    assert summary["source"] == "hf" and len(examples) + summary["reasons"].get("teacher wrote an empty prompt", 0) == 6
    assert set(examples["source"]) <= {tiny_lm} and all(len(t) == 1 for t in examples["target_items"])


def test_hf_teacher_gets_few_shot_and_its_empty_prompts_are_quarantined(tmp_path, monkeypatch):
    from tandem.promptgen import teacher

    seen = {}

    def fake_teacher(model, intents, tasks, target_items, few_shot, **kwargs):  # an LM that fails on one intent
        seen.update(model=model, few_shot=few_shot, kwargs=kwargs)
        prompts = ["" if i == 1 else f"p{i}" for i in range(len(intents))]
        return pd.DataFrame(
            {"intent": intents, "task": tasks, "prompt": prompts, "target_items": target_items, "source": model}
        )

    monkeypatch.setattr(teacher, "hf_teacher", fake_teacher)
    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps({"image": [["a dog", "a dog in the park, watercolour"]]}))
    intents = _write_intents(tmp_path / "intents.jsonl")
    examples, quarantine, summary = pipeline_steps.teacher_examples(
        teacher_model="org/llm-8b-instruct", intents=intents, few_shot=str(shots), temperature=0.0
    )
    assert seen["few_shot"] == {"image": [("a dog", "a dog in the park, watercolour")]}
    assert seen["kwargs"]["temperature"] == 0.0
    assert len(examples) == len(INTENTS) - 1 and "p1" not in examples["prompt"].tolist()
    (row,) = quarantine.to_dict("records")
    assert row["where"] == "teacher" and row["reason"] == "teacher wrote an empty prompt"
    assert json.loads(row["raw"])["intent"] == INTENTS[1][0]
    assert summary["reasons"] == {"teacher wrote an empty prompt": 1}
    pipeline_steps.teacher_examples(teacher_model="org/llm", intents=intents)
    assert seen["few_shot"] is None  # the teacher's DEFAULT_FEW_SHOT
    assert set(DEFAULT_FEW_SHOT) == set(TASKS)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"teacher_model": ""}, "teacher_jsonl"),
        ({"teacher_model": "catalogue"}, "needs catalog only"),
        ({"teacher_model": "catalogue", "catalog": "c.csv", "intents": "i.jsonl"}, "needs catalog only"),
        ({"teacher_model": "org/llm"}, "exactly one of intents"),
        ({"teacher_model": "org/llm", "catalog": "c.csv", "intents": "i.jsonl"}, "exactly one of intents"),
        ({"teacher_model": "org/llm", "teacher_jsonl": "t.jsonl", "intents": "i.jsonl"}, "exactly one of intents"),
        ({"teacher_model": "", "catalog": "c.csv"}, "teacher_jsonl"),
    ],
)
def test_bad_source_combinations(source, match):
    with pytest.raises(ValueError, match=match):
        pipelines.promptgen_arguments(**source)


def test_bad_inputs_fail_before_any_model_loads(tmp_path, tiny_lm):
    with pytest.raises(ValueError, match="does not exist"):
        pipeline_steps.teacher_examples(teacher_model=tiny_lm, intents=str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"intent": "x", "task": "poetry"}\n')
    with pytest.raises(ValueError, match="no usable rows"):
        pipeline_steps.teacher_examples(teacher_model=tiny_lm, intents=str(tmp_path / "bad.jsonl"))
    intents = _write_intents(tmp_path / "intents.jsonl")
    for few_shot, match in (
        ('{"poetry": []}', "not one of"),
        ('{"search": [["x"]]}', "pairs"),
        ("nope.json", "neither"),
    ):
        with pytest.raises(ValueError, match=match):
            pipeline_steps.teacher_examples(teacher_model=tiny_lm, intents=intents, few_shot=few_shot)
    with pytest.raises(ValueError, match="preset"):
        pipelines.promptgen_arguments(catalog="c.csv", preset="huge")
    with pytest.raises(ValueError, match="epochs"):
        pipelines.promptgen_arguments(catalog="c.csv", epochs=0)
    with pytest.raises(ValueError, match="unknown promptgen pipeline parameters"):
        pipelines.promptgen_arguments(catalog="c.csv", learning_rate=1.0)
    with pytest.raises(ValueError, match="examples folder"):
        pipeline_steps.read_examples(tmp_path)


# ------------------------------------------------------------------------------ CLI
def test_cli_compile_run_local_and_submit(tmp_path, monkeypatch):
    import kfp

    runner = CliRunner()
    result = runner.invoke(
        app, ["kfp", "compile", "--pipeline", "promptgen", "-o", str(tmp_path / "p.yaml"), "--image", "reg/t:1"]
    )
    assert result.exit_code == 0, result.output
    assert _docs(tmp_path / "p.yaml")[0]["pipelineInfo"]["name"] == "tandem-promptgen"
    assert "image: reg/t:1" in (tmp_path / "p.yaml").read_text()
    result = runner.invoke(app, ["kfp", "run-local", "--pipeline", "promptgen", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "needs catalog only" in result.output  # the catalogue demo needs --catalog
    result = runner.invoke(app, ["kfp", "run-local", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "needs --logs and --catalog" in result.output
    result = runner.invoke(app, ["kfp", "compile", "--pipeline", "nope", "-o", str(tmp_path / "n.yaml")])
    assert result.exit_code == 2 and "promptgen" in result.output

    calls = {}

    class FakeClient:  # stands in for the KFP API server
        def __init__(self, host):
            calls["host"] = host

        def create_run_from_pipeline_package(self, pipeline_file, arguments, run_name, experiment_name):
            calls.update(package=pipeline_file, arguments=arguments, experiment=experiment_name)
            return SimpleNamespace(run_id="run-7")

    monkeypatch.setattr(kfp, "Client", FakeClient)
    args = ["kfp", "submit", "--host", "http://kfp:80", "--pipeline", "promptgen"]
    args += ["--teacher-model", "meta-llama/Llama-3.1-8B-Instruct", "--intents", "/mnt/tandem/in/intents.jsonl"]
    result = runner.invoke(app, [*args, "--preset", "base", "--epochs", "2", "--allow-download"])
    assert result.exit_code == 0, result.output
    assert calls["package"].endswith("components/promptgen.yaml") and calls["experiment"] == "tandem-promptgen"
    sent = calls["arguments"]
    assert (
        sent["teacher_model"] == "meta-llama/Llama-3.1-8B-Instruct"
        and sent["intents"] == "/mnt/tandem/in/intents.jsonl"
    )
    assert sent["preset"] == "base" and sent["epochs"] == 2 and sent["allow_download"] is True
    assert sent["catalog"] == "" and sent["workdir"] == "/mnt/tandem"


def test_hub_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the image sets it
    pipeline_steps.hub_environment(str(tmp_path), allow_download=False)
    assert os.environ["HF_HOME"] == str(tmp_path / "hf-cache") and os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HOME", "/elsewhere")
    pipeline_steps.hub_environment(str(tmp_path), allow_download=True)
    assert os.environ["HF_HOME"] == "/elsewhere" and os.environ["HF_HUB_OFFLINE"] == "0"
