"""Kubeflow Pipelines v2 components for the prompt generator (issue 7), and the pipeline that wires them.

Same shape as `tandem.orchestration.kfp_pipeline`: lightweight components of a few lines that call
`tandem.promptgen.pipeline_steps` inside the project image. `tandem.orchestration.kubeflow` imports this
module; `tandem kfp compile --pipeline promptgen` writes `components/promptgen.yaml`.

    teacher (GPU: an HF causal LM, few-shot; or a teacher JSONL; or the catalogue demo teacher)
        -> train_promptgen (GPU: hindsight relabelling -> GPT-2 generator + intent detector)
"""

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input, Metrics, Model, Output

HF_SECRET = "tandem-hf"  # optional Kubernetes Secret with key `token` -> HF_TOKEN (gated models)


# ------------------------------------------------------------------------------ components
# Each function body runs alone inside the image: imports stay inside, no module-level names.
def teacher(
    teacher_model: str,
    catalog: str,
    intents: str,
    teacher_jsonl: str,
    n: int,
    seed: int,
    few_shot: str,
    max_new_tokens: int,
    batch_size: int,
    temperature: float,
    workdir: str,
    allow_download: bool,
    examples: Output[Dataset],
):
    """Teacher examples (examples.parquet) with the rows left out (quarantine.jsonl) and their counts."""
    from tandem.promptgen.pipeline_steps import run_teacher

    summary = run_teacher(
        examples.path,
        workdir=workdir,
        allow_download=allow_download,
        teacher_model=teacher_model,
        catalog=catalog,
        intents=intents,
        teacher_jsonl=teacher_jsonl,
        n=n,
        seed=seed,
        few_shot=few_shot,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
    )
    examples.metadata.update(summary)


def train_promptgen(
    preset: str, epochs: int, seed: int, examples: Input[Dataset], model: Output[Model], metrics: Output[Metrics]
):
    """Relabel the examples and fit the generator and the intent detector; the Model is their folder."""
    from tandem.promptgen.pipeline_steps import run_train, train_metrics

    meta = run_train(examples.path, model.path, preset=preset, epochs=epochs, seed=seed)
    model.metadata.update({"framework": "tandem.promptgen", "preset": preset, "examples": meta["examples"]})
    for name, value in train_metrics(meta).items():
        metrics.log_metric(name, value)


# -------------------------------------------------------------------------------- pipeline
def components(image: str) -> dict:
    """The components by name. The image has tandem and kfp installed, so KFP installs nothing."""
    return {
        f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in (teacher, train_promptgen)
    }


def gpu(t, cpu: str, memory: str):
    """One `nvidia.com/gpu`, CPU and memory request = limit, and the GPU taint tolerated (as in pipeline.py)."""
    t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    t.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_toleration(t, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    return t


def by_name(component, parameters: dict, **others) -> dict:
    """A component's arguments: each input takes the pipeline parameter of the same name; `others`
    gives the rest (an input named otherwise, an upstream output). A missing one fails the compile."""
    names = set(component.component_spec.inputs or {}) - set(others)
    return {name: parameters[name] for name in names if name in parameters} | others


def build(image: str, mount_path: str):
    """The pipeline, its components running in `image`, the shared volume mounted at `mount_path`
    (the inputs, a teacher model saved there, and the Hub cache `WORKDIR/hf-cache` live on it)."""
    c = components(image)

    @dsl.pipeline(
        name="tandem-promptgen",
        description="teacher (HF causal LM few-shot, teacher JSONL or catalogue demo) -> hindsight relabelling "
        "-> prompt generator (GPT-2) + intent detector",
    )
    def tandem_promptgen(
        teacher_model: str = "catalogue",
        catalog: str = "",
        intents: str = "",
        teacher_jsonl: str = "",
        n: int = 600,
        few_shot: str = "",
        max_new_tokens: int = 48,
        teacher_batch_size: int = 8,
        temperature: float = 0.7,
        allow_download: bool = False,
        preset: str = "small",
        epochs: int = 3,
        seed: int = 0,
        workdir: str = mount_path,
        pvc: str = "tandem-workdir",
    ) -> Model:
        parameters = dict(locals())  # first: the pipeline's parameters (and the closure's c, mount_path)
        # reads files that may change under the same path: never cached
        taught = c["teacher"](**by_name(c["teacher"], parameters, batch_size=teacher_batch_size))
        taught.set_caching_options(False)
        kubernetes.mount_pvc(taught, pvc_name=pvc, mount_path=mount_path)
        kubernetes.use_secret_as_env(taught, HF_SECRET, {"token": "HF_TOKEN"}, optional=True)
        gpu(taught, cpu="8", memory="48G")  # host memory to load an 8B checkpoint (~16 GB in bf16, the GPU default)
        # a function of its input artifact and parameters: cached
        trained = c["train_promptgen"](**by_name(c["train_promptgen"], parameters, examples=taught.outputs["examples"]))
        trained.set_caching_options(True)
        gpu(trained, cpu="8", memory="32G")
        return trained.outputs["model"]

    return tandem_promptgen
