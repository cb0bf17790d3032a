"""`tandem init DIR`: a deployment folder written from the files the package ships in `tandem/deploy/`.

    dags/           the Airflow DAG files; each builds its DAG from tandem.orchestration.airflow_dags
    features/       the Feast feature repository (definitions.py, feature_store.yaml) and the link
                    features/feast -> ../work/feast, the default workdir's store, for the feast CLI
    dvc.yaml        the loop as a DVC pipeline (tandem.orchestration.dvc_stages), with params.yaml and
    params.yaml     plots/recall_at_k.json, the Recall@K plot's template
    training/       the recipes (`--config training/NAME.yaml`)

The package's copies are the only source: a checkout's top-level files are what this writes
(tests/test_deploy.py keeps them equal; after editing src/tandem/deploy/, run `tandem init . --force`).
Python files are shipped as NAME.py-tpl, so that no DAG or Feast definition is a module of the package.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

TEMPLATE_SUFFIX = "-tpl"
FEAST_LINK, FEAST_TARGET = "features/feast", "../work/feast"


def files() -> dict[str, Traversable]:
    """Deployment path (relative, '/'-separated) -> the package's file, sorted by path."""
    found: dict[str, Traversable] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                found[prefix + entry.name.removesuffix(TEMPLATE_SUFFIX)] = entry

    walk(resources.files("tandem") / "deploy", "")
    return dict(sorted(found.items()))


def read(path: str) -> str:
    """The text of one deployment file, e.g. read("features/feature_store.yaml")."""
    shipped = files()
    if path not in shipped:
        raise ValueError(f"tandem ships no {path!r}; it ships {', '.join(shipped)}")
    return shipped[path].read_text()


def write(folder: str | Path, force: bool = False) -> list[str]:
    """Write the deployment files into `folder` (created if needed); returns what was written, one line each.

    Nothing is written when any of the files exists already, unless `force`: then they are replaced. The
    `features/feast` link is made when nothing is at that path (never replaced)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; give a folder (new or existing) to write the deployment into")
    shipped = files()
    existing = [path for path in shipped if (folder / path).exists()]
    if existing and not force:
        raise ValueError(f"{folder} already has {', '.join(existing)}; nothing written. Pass --force to overwrite them")
    written = []
    for path, source in shipped.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        written.append(f"{'replaced' if path in existing else 'wrote'} {target}")
    link = folder / FEAST_LINK
    if not link.exists() and not link.is_symlink():
        os.symlink(FEAST_TARGET, link, target_is_directory=True)
        written.append(f"linked {link} -> {FEAST_TARGET}")
    return written
