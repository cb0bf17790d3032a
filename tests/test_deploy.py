"""`tandem init DIR`: the deployment folder written from the package's tandem/deploy/ files, the checkout's
top-level copies equal to them (one source), no overwrite without --force."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from tandem.cli import app
from tandem.orchestration import deploy

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "dags/tandem_daily.py",
    "dags/tandem_index_audit.py",
    "dags/tandem_rollout_guard.py",
    "features/definitions.py",
    "features/feature_store.yaml",
    "dvc.yaml",
    "params.yaml",
    "plots/recall_at_k.json",
    "training/hotelmatch_cpu.yaml",
    "training/hotelmatch_gpu.yaml",
    "training/notellm2_cpu.yaml",
    "training/notellm2_gpu.yaml",
}


def test_init_writes_the_deployment_folder_and_the_checkout_is_what_it_writes(tmp_path):
    result = CliRunner().invoke(app, ["init", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    site = tmp_path / "site"
    written = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file() and not p.is_symlink()}
    assert written == EXPECTED == set(deploy.files())
    for path in EXPECTED:
        assert f"wrote {site / path}" in result.output
        assert (ROOT / path).read_bytes() == (site / path).read_bytes(), (
            f"{path} differs from the package's src/tandem/deploy/ copy: edit that one, then `tandem init . --force`"
        )
    assert os.readlink(site / "features" / "feast") == "../work/feast"
    assert os.readlink(ROOT / "features" / "feast") == "../work/feast"
    # the DAG files import their DAGs from the package; the Feast definitions call its builder
    assert "from tandem.orchestration.airflow_dags import tandem_daily" in (site / "dags/tandem_daily.py").read_text()
    assert "tandem.data.features" in (site / "features/definitions.py").read_text()
    # every checkout recipe is shipped
    assert {p.name for p in (ROOT / "training").glob("*.yaml")} == {p.name for p in (site / "training").iterdir()}


def test_init_refuses_to_overwrite_unless_forced(tmp_path):
    deploy.write(tmp_path)
    (tmp_path / "params.yaml").write_text("edited: true\n")
    (tmp_path / "dvc.yaml").unlink()
    result = CliRunner().invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 2 and "params.yaml" in result.output and "--force" in result.output
    assert (tmp_path / "params.yaml").read_text() == "edited: true\n" and not (tmp_path / "dvc.yaml").exists()
    forced = CliRunner().invoke(app, ["init", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    assert f"replaced {tmp_path / 'params.yaml'}" in forced.output and f"wrote {tmp_path / 'dvc.yaml'}" in forced.output
    assert (tmp_path / "params.yaml").read_text() == deploy.read("params.yaml")
    file = tmp_path / "a-file"
    file.write_text("x")
    bad = CliRunner().invoke(app, ["init", str(file)])
    assert bad.exit_code == 2 and "is a file" in bad.output


def test_no_python_module_is_shipped_as_a_deployment_file():
    """The DAG and Feast files are NAME.py-tpl in the package: no module of tandem, never imported by it."""
    shipped = ROOT / "src" / "tandem" / "deploy"
    assert not list(shipped.rglob("*.py")) and len(list(shipped.rglob("*.py-tpl"))) == 4
