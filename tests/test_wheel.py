"""HEAVY (about a minute): tandem installed from its wheel, outside the checkout. The wheel is built without
network (hatchling from the dev environment, no build isolation), installed with `--no-deps --no-index` into a
fresh virtual environment under tmp_path that sees this environment's dependencies through a .pth line (not
its editable tandem: .pth files of an added path are not processed). From a folder outside the checkout:
`tandem init`, `tandem kfp compile` and Airflow parsing the DAG files that init wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.heavy


def _run(args: list, cwd: Path, env: dict, timeout: int = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("hatchling", reason="the dev extra (hatchling) builds the wheel without network")
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TANDEM_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "GX_ANALYTICS_ENABLED": "false"}
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    _run([*build, ROOT, "-w", tmp / "dist"], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("tandem_mlops-*.whl")
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(target)  # pip from the interpreter's bundled wheel: offline
    site = _run([target / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env)
    (Path(site.strip()) / "project-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([target / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp, env=env)
    return {"venv": target, "env": env, "tmp": tmp, "wheel": wheel}


def test_the_wheel_ships_the_deployment_files(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for path in ("dvc.yaml", "params.yaml", "dags/tandem_daily.py-tpl", "features/feature_store.yaml"):
        assert f"tandem/deploy/{path}" in names
    assert "tandem/orchestration/kfp_pipeline.py" in names and "tandem/serve/static/index.html" in names
    assert not [n for n in names if n.startswith(("components/", "dags/", "features/", "training/"))]


def test_init_compile_and_dag_import_outside_the_checkout(installed):
    bin_, env, tmp = installed["venv"] / "bin", installed["env"], installed["tmp"]
    where = _run([bin_ / "python", "-c", "import tandem; print(tandem.__file__)"], cwd=tmp, env=env).strip()
    assert Path(where).is_relative_to(installed["venv"]), where  # the wheel's tandem, not the checkout's

    site = tmp / "site"
    out = _run([bin_ / "tandem", "init", site], cwd=tmp, env=env)
    assert f"wrote {site / 'dags/tandem_daily.py'}" in out and (site / "training/hotelmatch_cpu.yaml").is_file()

    _run([bin_ / "tandem", "kfp", "compile"], cwd=site, env=env)  # as the README: into ./components/
    compiled = list(yaml.safe_load_all((site / "components/pipeline.yaml").read_text()))
    committed = list(yaml.safe_load_all((ROOT / "components/pipeline.yaml").read_text()))
    assert compiled == committed  # the wheel's pipeline definitions are the checkout's

    dags = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(site / "dags")!r})
tandem = sys.modules["tandem"].__file__
print(json.dumps({{"errors": {{str(k): str(v) for k, v in bag.import_errors.items()}}, "dags": sorted(bag.dag_ids),
                  "tasks": bag.dags["tandem_daily"].task_ids, "tandem": tandem}}))
"""
    airflow_env = env | {"AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    parsed = json.loads(_run([bin_ / "python", "-c", dags], cwd=site, env=airflow_env).strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert parsed["dags"] == ["tandem_daily", "tandem_index_audit", "tandem_rollout_guard"]
    assert parsed["tasks"][:3] == ["ingest", "load", "mine"] and parsed["tasks"][-1] == "report"
    assert Path(parsed["tandem"]).is_relative_to(installed["venv"])

    # the Feast repo's definitions build from the installed package too (as `feast apply` in features/ does)
    feast = "import runpy; ns = runpy.run_path('definitions.py'); print(ns['item_features'].name)"
    assert _run([bin_ / "python", "-c", feast], cwd=site / "features", env=env).strip() == "item_features"
