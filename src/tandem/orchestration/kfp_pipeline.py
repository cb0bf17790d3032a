"""Kubeflow Pipelines v2 components for the tandem loop, and the pipeline that wires them.

Every component is a lightweight Python component of a few lines, named after the stage of
`tandem.pipeline.registry` it runs: KFP copies its source into the compiled YAML (`tandem kfp compile`)
and runs it in the project image (see `components/Dockerfile`), where it calls
`tandem.orchestration.kfp_steps.step`. Stage outputs travel as artifacts (Dataset, Model, Metrics; what
each holds: `kfp_steps.ARTIFACTS`); the shared state (Milvus and the champions' models) lives in the
`workdir` volume. `tandem.orchestration.kubeflow` imports this module.

    load -> mine -> validate -> features -> align (GPU) -> train (GPU) -> embed (GPU) -> index -> evaluate
         -> gate -> [promote] -> report

The report task writes report.json / .md / .html into the run folder, as `tandem run` does, and hands
report.html out as an HTML artifact, which the Kubeflow UI shows (the run's Visualizations).
"""

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


# ------------------------------------------------------------------------------ components
# Each function body runs alone inside the image: imports stay inside, no module-level names.
def load(logs: str, catalog: str, config: str, run_id: str, data: Output[Dataset]) -> str:
    """Read logs + catalogue into the contract (bad rows to quarantine/); returns the run id."""
    from tandem.orchestration.kfp_steps import step
    from tandem.pipeline.run import new_run_id

    run_id = run_id or new_run_id()
    summary = step("load", config, run_id, outputs={"data": data}, logs_path=logs, catalog_path=catalog)
    data.metadata.update({"run_id": run_id, "logs": summary["logs"], "catalog": summary["catalog"]})
    return run_id


def mine(config: str, run_id: str, data: Input[Dataset], pairs: Output[Dataset]):
    """Co-occurrence pairs with their time split, and the training window's popularity."""
    from tandem.orchestration.kfp_steps import step

    summary = step("mine", config, run_id, inputs=[data], outputs={"pairs": pairs})
    pairs.metadata.update({k: v for k, v in summary.items() if isinstance(v, int)})


def validate(config: str, run_id: str, data: Input[Dataset], pairs: Input[Dataset], docs: Output[Artifact]):
    """Great Expectations suites; a failing suite fails the task (and the run) before training."""
    from tandem.orchestration.kfp_steps import step

    summary = step("validate", config, run_id, inputs=[data, pairs], outputs={"docs": docs})
    docs.metadata.update(summary["suites"])


def features(
    config: str, run_id: str, workdir: str, data: Input[Dataset], pairs: Input[Dataset], features: Output[Dataset]
):
    """Item and user features into the workdir's Feast store; later steps read items through it."""
    from tandem.orchestration.kfp_steps import step

    summary = step("features", config, run_id, workdir, [data, pairs], {"features": features})
    features.metadata.update({k: summary[k] for k in ("as_of", "items", "users")})


def align(
    config: str,
    run_id: str,
    workdir: str,
    data: Input[Dataset],
    pairs: Input[Dataset],
    features: Input[Dataset],
    vision: Output[Artifact],
):
    """Align a vision tower on the catalogue's photos when the recipe names none (a no-op without images); the
    tower is cached in the workdir volume by catalogue content, the artifact holds align.json naming it."""
    from tandem.orchestration.kfp_steps import step

    summary = step("align", config, run_id, workdir, [data, pairs, features], {"vision": vision})
    vision.metadata.update({k: summary[k] for k in ("skipped", "cached", "digest", "pairs_used") if k in summary})


def train(
    config: str,
    run_id: str,
    workdir: str,
    data: Input[Dataset],
    pairs: Input[Dataset],
    features: Input[Dataset],
    vision: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Train the recipe's seed model, HotelMatch-LLM or NoteLLM-2 (on the GPU when the pod has one)."""
    from tandem.orchestration.kfp_steps import numbers, step

    summary = step("train", config, run_id, workdir, [data, pairs, features, vision], {"model": model})
    model.metadata["framework"] = f"tandem.models.{summary['family']}"
    for name, value in numbers(summary).items():
        metrics.log_metric(name, value)


def embed(
    config: str,
    run_id: str,
    workdir: str,
    data: Input[Dataset],
    features: Input[Dataset],
    model: Input[Model],
    vectors: Output[Dataset],
):
    """Embed every catalogue item with the trained model."""
    from tandem.orchestration.kfp_steps import step

    vectors.metadata.update(step("embed", config, run_id, workdir, [data, features, model], {"vectors": vectors}))


def index(
    config: str, run_id: str, workdir: str, data: Input[Dataset], features: Input[Dataset], vectors: Input[Dataset]
) -> str:
    """Upsert the vectors into the run's Milvus collection; returns its name."""
    from tandem.orchestration.kfp_steps import step

    return step("index", config, run_id, workdir, [data, features, vectors])["collection"]


def evaluate(
    config: str,
    run_id: str,
    workdir: str,
    data: Input[Dataset],
    pairs: Input[Dataset],
    features: Input[Dataset],
    model: Input[Model],
    vectors: Input[Dataset],
    vision: Input[Artifact],
    metrics: Output[Metrics],
    report: Output[Artifact],
):
    """Recall@K / MRR of the model, the baselines (the untrained one on the aligned tower) and the live champion."""
    from tandem.orchestration.kfp_steps import numbers, step

    inputs = [data, pairs, features, model, vectors, vision]
    summary = step("evaluate", config, run_id, workdir, inputs, {"report": report})
    for name, value in numbers(summary["metrics"]).items():
        metrics.log_metric(name, value)


def gate(config: str, run_id: str, workdir: str, report: Input[Artifact]) -> str:
    """'promote' only if the challenger beats the champion on the primary metric, else 'reject'.

    A single output on purpose: kfp.local resolves a dsl.If on a task's `Output` only.
    """
    from tandem.orchestration.kfp_steps import step

    summary = step("gate", config, run_id, workdir, [report])
    print(f"gate: {summary['decision']} ({summary['reason']})")
    return summary["decision"]


def promote(config: str, run_id: str, workdir: str, decision: str) -> str:
    """Move the live alias to this run's collection; returns the live collection."""
    from tandem.orchestration.kfp_steps import step

    summary = step("promote", config, run_id, workdir)
    if summary["decision"] != decision:
        raise ValueError(f"gate.json says {summary['decision']!r}, the gate task said {decision!r}")
    return summary["live_collection"]


def report(config: str, run_id: str, workdir: str, decision: str, docs: Input[Artifact], page: Output[HTML]) -> str:
    """The run report in the shared run folder (with the validation's Data Docs, which it links); its
    self-contained report.html is this task's HTML artifact. Returns the report's path in the workdir."""
    import json
    import shutil

    from tandem.core.config import config_from_dict
    from tandem.pipeline import run as loop
    from tandem.pipeline.stages import RunPaths

    run = RunPaths.of(workdir, run_id)
    shutil.copytree(docs.path, run.dir, dirs_exist_ok=True)  # validate ran in a scratch folder: its summary, docs
    written = loop.write(run, config_from_dict(json.loads(config or "{}"), "config parameter"))
    if written["gate"]["decision"] != decision:
        raise ValueError(f"gate.json says {written['gate']['decision']!r}, the gate task said {decision!r}")
    shutil.copyfile(written["report_files"]["html"], page.path)
    return written["report_files"]["html"]


# -------------------------------------------------------------------------------- pipeline
# the loop's order
STEPS = (load, mine, validate, features, align, train, embed, index, evaluate, gate, promote, report)


def components(image: str) -> dict:
    """The components by name: the stages of `tandem.pipeline.registry` under their names, then the report
    (registry.AFTER). The image has tandem and kfp installed, so KFP installs nothing."""
    return {f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in STEPS}


def build(image: str, mount_path: str, milvus_secret: str):
    """The pipeline, its components running in `image`, the shared volume mounted at `mount_path`."""
    c = components(image)

    def task(name: str, pvc, cache: bool = False, retry: bool = False, secret: bool = False, **inputs):
        """Every task mounts the workdir volume: the inputs and catalogue images, the Feast store,
        Milvus Lite and the champions' models are there."""
        t = c[name](**inputs)
        kubernetes.mount_pvc(t, pvc_name=pvc, mount_path=mount_path)
        t.set_caching_options(cache)
        if retry:  # storage / Milvus / Feast hiccups; the stages are idempotent
            t.set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0)
        if secret:  # the Milvus server's token, when there is one; never a parameter
            kubernetes.use_secret_as_env(t, milvus_secret, {"token": "TANDEM_MILVUS_TOKEN"}, optional=True)
        return t

    def gpu(t, cpu: str, memory: str):
        t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        t.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
        kubernetes.add_toleration(t, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        return t

    @dsl.pipeline(
        name="tandem",
        description="behaviour logs -> pairs -> validate -> features -> align -> train -> embed "
        "-> index -> evaluate -> gate -> promote: multimodal item-to-item search",
    )
    def tandem(
        logs: str,
        catalog: str,
        workdir: str = mount_path,
        config: str = "{}",
        run_id: str = "",
        pvc: str = "tandem-workdir",
    ) -> str:
        # load reads files that change under the same path: never cached
        loaded = task("load", pvc, retry=True, logs=logs, catalog=catalog, config=config, run_id=run_id)
        common = dict(config=config, run_id=loaded.outputs["Output"])
        data = loaded.outputs["data"]
        # functions of their input artifacts and parameters: cached
        mined = task("mine", pvc, cache=True, data=data, **common)
        pairs = mined.outputs["pairs"]
        checked = task("validate", pvc, cache=True, data=data, pairs=pairs, **common)
        # writes the run's snapshot into the shared Feast store
        featured = task("features", pvc, retry=True, workdir=workdir, data=data, pairs=pairs, **common)
        featured.after(checked)
        feats = featured.outputs["features"]
        # its own cache by catalogue content in the workdir volume: KFP's cache is not asked
        aligned = task("align", pvc, workdir=workdir, data=data, pairs=pairs, features=feats, **common)
        gpu(aligned, cpu="8", memory="32G")
        vision = aligned.outputs["vision"]
        trained = task(
            "train", pvc, cache=True, workdir=workdir, data=data, pairs=pairs, features=feats, vision=vision, **common
        )
        gpu(trained, cpu="8", memory="32G")
        model = trained.outputs["model"]
        embedded = task("embed", pvc, cache=True, workdir=workdir, data=data, features=feats, model=model, **common)
        gpu(embedded, cpu="4", memory="16G")
        vectors = embedded.outputs["vectors"]
        # live state (Milvus, its alias, the champion's model): never cached
        indexed = task(
            "index", pvc, retry=True, secret=True, workdir=workdir, data=data, features=feats, vectors=vectors, **common
        )
        evaluated = task(
            "evaluate",
            pvc,
            retry=True,
            secret=True,
            workdir=workdir,
            data=data,
            pairs=pairs,
            features=feats,
            model=model,
            vectors=vectors,
            vision=vision,
            **common,
        )
        evaluated.after(indexed).set_cpu_limit("4").set_memory_limit("16G")
        gated = task("gate", pvc, workdir=workdir, report=evaluated.outputs["report"], **common)
        decided = dict(workdir=workdir, decision=gated.output, **common)
        docs = checked.outputs["docs"]
        with dsl.If(gated.output == "promote", name="gate-says-promote"):
            promoted = task("promote", pvc, retry=True, secret=True, **decided)
            task("report", pvc, docs=docs, **decided).after(promoted)
        # a task after a dsl.If may not depend on a task inside it: the rejected branch has its own report task
        with dsl.If(gated.output == "reject", name="gate-says-reject"):
            task("report", pvc, docs=docs, **decided)
        return gated.output

    return tandem
