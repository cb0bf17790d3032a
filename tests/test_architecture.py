"""The package's architecture, checked from its source: sub-packages by layer, imports pointing down only,
no import cycle, and importing any module has no side effects."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tandem"

# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS = (
    "core",  # configuration, the work-folder layout, process set-up and secrets (and `tandem` itself)
    "data",  # the input contract, partitions, validation, features, synthetic data, served-event schema
    "pairs",  # training pairs from behaviour logs
    "models",  # model families, losses, text and image inputs
    "evaluation",  # metrics, protocols, baselines, the gate
    "training",  # the training loop
    "release",  # the Milvus index and aliases, the A/B rollout, the audit
    "promptgen",  # the prompt generator (reads the index to relabel)
    "serve",  # the search service
    "pipeline",  # the loop's stages, the one-pass run, the report
    "orchestration",  # Airflow, Kubeflow, DVC
    "cli",  # the command line
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the tandem modules it imports, at module level or inside functions (any `import` statement)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(_resolve(a.name, known) for a in node.names if a.name.split(".")[0] == "tandem")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.split(".")[0] == "tandem":
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        targets.add(full if full in known else _resolve(base, known))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def defined_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level (also under `if`/`try`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # `tandem` itself
    assert parts[1] in LAYERS, f"{module}: sub-package {parts[1]!r} is not in LAYERS; place it in a layer"
    return LAYERS.index(parts[1])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports():
    graph = import_graph()
    assert "tandem.core.config" in graph["tandem.data.contract"]
    assert "tandem.release.rollout" in graph["tandem.serve.routing"]
    assert "tandem.pipeline.stages" in graph["tandem.pipeline.run"]  # `from tandem.pipeline import stages`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_imported_name_exists():
    """`from tandem.x import name` (also inside functions, in the library, tests, DAGs and benchmarks)
    names something that tandem.x defines or a submodule of it: a moved name fails here, not at run time."""
    known = modules()
    root = SRC.parent
    missing = []
    paths = [*PACKAGE.rglob("*.py")] + [
        p for d in ("tests", "dags", "benchmarks", "features") for p in (root / d).glob("*.py")
    ]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "tandem":
                if node.module not in known:
                    missing.append(f"{path.relative_to(root)}:{node.lineno} {node.module}")
                    continue
                names = defined_names(known[node.module])
                for alias in node.names:
                    if alias.name not in names and f"{node.module}.{alias.name}" not in known:
                        missing.append(f"{path.relative_to(root)}:{node.lineno} {node.module}.{alias.name}")
    assert missing == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_layers():
    upward = [
        f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert upward == []


def test_every_library_module_lives_in_a_layer():
    top = [m for m in modules() if m.count(".") == 1 and m.split(".")[1] not in LAYERS]
    assert top == [], "modules beside the sub-packages: move them into the layer they belong to"


def test_importing_has_no_side_effects(tmp_path):
    """Importing every module (a fresh interpreter in an empty folder): no file written, no environment
    variable (but torch's own, set when torch is imported) or logging handler set, and no heavy library
    (torch, pymilvus, kfp, airflow, ...) pulled in by `tandem` and the sub-packages' __init__ files."""
    names = sorted(m for m in modules() if not m.endswith("__main__"))
    code = f"""
import json, logging, os, sys
before_env, before_handlers = dict(os.environ), list(logging.getLogger().handlers)
import tandem
packages = {[m for m in names if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()]!r}
for name in packages:
    __import__(name)
heavy = sorted(m for m in ("torch", "pymilvus", "kfp", "airflow", "great_expectations", "feast", "fastapi")
               if m in sys.modules)
for name in {names!r}:
    __import__(name)
changed = set(os.environ.items()) ^ set(before_env.items())
print(json.dumps({{"heavy": heavy, "env": sorted(k for k, _ in changed if not k.startswith("TORCH")),  # torch's own
                   "handlers": len(logging.getLogger().handlers) - len(before_handlers)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heavy": [], "env": [], "handlers": 0}
    assert list(tmp_path.iterdir()) == []


def test_every_stage_is_in_the_registry():
    """The orchestrators look stages up in `tandem.pipeline.registry`: every stage function (one that takes
    the run folder and the config) is there under its own name, and unknown names are refused."""
    import inspect

    from tandem.pipeline import align, registry, stages

    functions = {
        name: f
        for module in (stages, align)  # align: a stage in its own module (stages.py is at the size limit)
        for name, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")
        if list(inspect.signature(f).parameters)[:1] == ["run"] and "cfg" in inspect.signature(f).parameters
    }
    assert set(functions) == set(registry.STAGES)
    assert all(registry.STAGES[name] is f for name, f in functions.items())
    assert registry.WITH_PROGRESS == {
        n for n in functions if "progress" in inspect.signature(registry.STAGES[n]).parameters
    }
    try:
        registry.stage("pairs")
    except ValueError as e:
        assert "unknown stage 'pairs'" in str(e)
    else:
        raise AssertionError("an unknown stage name was accepted")


def test_library_files_stay_short():
    """No library module over 400 lines: a longer one holds more than one responsibility; split it by them."""
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
