"""One name per stage: dvc.yaml's stages, the daily DAG's tasks, the Kubeflow pipeline's components and the
per-stage command line are the stages of `tandem.pipeline.registry`, in the loop's order, or a group or a
step around the loop declared there. Each orchestrator is read as it is deployed (dvc.yaml parsed, the DAG
loaded by Airflow, the pipeline compiled), so a renamed, missing or reordered step fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tandem.pipeline import registry

ROOT = Path(__file__).resolve().parents[1]


def _ok(steps) -> None:
    problem = registry.drift(steps)
    assert problem == "", problem


def test_drift_names_what_is_wrong():
    assert registry.drift([*registry.BEFORE, *registry.STAGES, *registry.AFTER]) == ""
    assert registry.drift(["load", "mine", "validate", "features", "align", "train", "embed", "publish"]) == ""
    renamed = ["pairs" if s == "mine" else s for s in registry.STAGES]
    assert "unknown step 'pairs'" in registry.drift(renamed)
    swapped = ["load", "validate", "mine", *list(registry.STAGES)[3:]]
    assert "not the loop" in registry.drift(swapped)
    assert "not the loop" in registry.drift(list(registry.STAGES)[:-1])  # promote missing
    assert "not the loop" in registry.drift([*registry.STAGES, "publish"])  # index..promote twice
    assert "before load / after promote" in registry.drift(["report", *registry.STAGES])
    assert registry.expand(["publish"]) == ["index", "evaluate", "gate", "promote"]


def test_groups_are_runs_of_consecutive_stages():
    order = list(registry.STAGES)
    for name, members in registry.GROUPS.items():
        assert name not in registry.STAGES and members, name
        first = order.index(members[0])
        assert list(members) == order[first : first + len(members)], name
    assert not set(registry.BEFORE + registry.AFTER) & (set(registry.STAGES) | set(registry.GROUPS))


def test_dvc_stages_are_registry_names_and_run_their_own_command():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    _ok(list(stages))
    for name, stage in stages.items():
        command = stage["cmd"].split()
        assert command[:2] == ["${stage}", name], f"dvc.yaml stage {name!r} runs {stage['cmd']!r}"


def test_command_line_has_one_command_per_stage_and_group():
    from tandem.orchestration import dvc_stages

    (sub,) = [a for a in dvc_stages.parser()._actions if a.dest == "stage"]
    commands = [c for c in sub.choices if c != "data"]  # `data`: the raw demo data, before the loop
    assert commands == [*registry.STAGES, *registry.GROUPS]
    _ok([c for c in commands if c in registry.STAGES])


def test_command_line_stage_refuses_unknown_names(capsys):
    from tandem.orchestration import dvc_stages

    with pytest.raises(SystemExit) as e:
        dvc_stages.main(["pairs"])
    assert e.value.code == 2 and "invalid choice: 'pairs'" in capsys.readouterr().err


def test_kubeflow_components_are_registry_names_in_the_compiled_order(tmp_path):
    pytest.importorskip("kfp")
    from tandem.orchestration import kubeflow

    definitions = kubeflow.definitions()
    names = [f.__name__ for f in definitions.STEPS]
    _ok(names)
    assert list(definitions.components(kubeflow.DEFAULT_IMAGE)) == names
    spec = next(yaml.safe_load_all(kubeflow.compile(tmp_path / "pipeline.yaml").read_text()))
    tasks, conditions = dict(spec["root"]["dag"]["tasks"]), {}
    for name, component in spec["components"].items():
        if name.startswith("comp-condition"):
            conditions[name.removeprefix("comp-")] = component["dag"]["tasks"]
            tasks |= component["dag"]["tasks"]
    for condition, inside in conditions.items():  # a task in a dsl.If also waits for the If's own upstream
        for task in inside.values():
            task["dependentTasks"] = task.get("dependentTasks", []) + tasks[condition].get("dependentTasks", [])
    step = {t: re.sub(r"-\d+$", "", t) for t in tasks if t not in conditions}  # report-2: the rejected branch's
    assert set(step.values()) == set(names)
    for task, name in step.items():  # every task waits only for steps before it in the loop's order
        before = {step.get(d, d) for d in tasks[task].get("dependentTasks", [])} - set(conditions)
        assert all(names.index(b) < names.index(name) for b in before), (task, before)
        if name != names[0]:
            assert before, f"{task} waits for nothing"


DAG_ORDER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["tandem_daily"]
order = [t.task_id for t in dag.topological_sort()]
chained = all(dag.get_task(b).task_id in dag.get_task(a).downstream_task_ids for a, b in zip(order, order[1:]))
print(json.dumps({"errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "order": order, "chain": chained}))
"""


def test_daily_dag_tasks_are_registry_names_in_order(tmp_path):
    pytest.importorskip("airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TANDEM_"))}
    env |= {"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", DAG_ORDER, str(ROOT / "dags")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dag = json.loads(done.stdout.strip().splitlines()[-1])
    assert dag["errors"] == {}
    _ok(dag["order"])
    assert dag["chain"], f"tandem_daily's tasks are not one chain: {dag['order']}"


def test_stages_the_dag_leaves_to_kubeflow_are_registry_stages_after_train():
    from tandem.orchestration import airflow_schedule

    order = list(registry.STAGES)
    assert set(airflow_schedule.DONE_BY_KFP) <= set(order)
    assert all(order.index(s) > order.index("train") for s in airflow_schedule.DONE_BY_KFP)
