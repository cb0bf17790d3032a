"""HotelMatch's query tower as ONNX (fp32 and dynamic int8) for serving without torch.

`export_onnx(model_dir)` writes MODEL_DIR/onnx/query.onnx (query tower + projection + L2
normalisation; inputs input_ids / attention_mask with dynamic batch and sequence axes, output
`query`), query.int8.onnx (onnxruntime's dynamic quantisation, int8 weights) and export.json
(opset, width, the source files' hashes). Tokenising stays in Python with the model's own
query tokenizer, so `OnnxQueryEncoder.embed_queries` is a drop-in for the torch model's.

NoteLLM-2 has no query tower: its queries are items embedded by the LLM (images + prompt), so
it is refused with a ValueError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tandem.models.popularity import PopularityTerm

FORMAT = "tandem.OnnxQuery"
FORMAT_VERSION = 1
EXPORT_DIR = "onnx"
META_FILE = "export.json"
FILES = {"fp32": "query.onnx", "int8": "query.int8.onnx"}
SOURCES = ("config.json", "model.safetensors")  # what the graph is built from; a change makes it stale
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "query"
# Sample queries of different lengths: the export's example input (with padding, so the masked
# path is traced) and the parity check recorded in export.json.
SAMPLES = (
    "red dress",
    "hotel with a pool near the old town of lisbon",
    "",
    "men's navy blue running shoes size 44 with extra cushioning for long distances",
)
QUANTIZATION = {"per_channel": True, "reduce_range": False}  # weights QInt8, activations dynamic uint8
_EXPORT_TOLERANCE = 1e-3  # fp32 ONNX vs torch, max abs difference of unit vectors


def _fingerprint(path: Path, digest: bool = True) -> dict:
    stat = path.stat()
    out = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if digest:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out["sha256"] = h.hexdigest()
    return out


def _family(model_dir: Path) -> str:
    config = model_dir / "config.json"
    if not config.is_file():
        raise ValueError(f"{model_dir} holds no saved tandem model (no config.json); train one first")
    return json.loads(config.read_text()).get("model", {}).get("family", "hotelmatch")


def _require_hotelmatch(model_dir: Path) -> None:
    family = _family(model_dir)
    if family != "hotelmatch":
        raise ValueError(
            f"{model_dir} is a {family!r} model; ONNX export covers HotelMatch's query tower only "
            "(NoteLLM-2 is symmetric: its queries are items embedded by the LLM with images, serve it with torch)"
        )


def export_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / EXPORT_DIR


def _query_graph(model):
    """The query path of a loaded HotelMatch as a module of (input_ids, attention_mask)."""
    import torch.nn.functional as F
    from torch import nn

    from tandem.models.base import mean_pool

    class QueryGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.proj = model.query_encoder, model.query_proj

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return F.normalize(self.proj(mean_pool(hidden, attention_mask)), dim=-1)

    return QueryGraph().eval()


def export_onnx(model_dir: str | Path, opset: int | None = None, int8: bool = True) -> Path:
    """Export the query tower of the HotelMatch model saved in `model_dir` to MODEL_DIR/onnx/;
    returns that folder. fp32 ONNX must match torch (max abs diff < 1e-3 on sample queries)."""
    import onnx
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tandem.models import load_model

    model_dir = Path(model_dir)
    _require_hotelmatch(model_dir)
    source = {name: _fingerprint(model_dir / name) for name in SOURCES}  # of what is loaded next
    model = load_model(model_dir)
    graph = _query_graph(model)
    out = export_dir(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in [*FILES.values(), META_FILE]:
        (out / name).unlink(missing_ok=True)  # a failed export leaves no stale half

    tokens = model.tokenize_queries(list(SAMPLES))
    example = (tokens["query_input_ids"], tokens["query_attention_mask"])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            example,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            opset_version=opset,
            dynamo=True,
            external_data=False,  # one file; protobuf caps it at 2 GB, far above a query tower
            verbose=False,
        )
    program.save(str(out / FILES["fp32"]))
    if int8:
        # Per-channel scales: per-tensor ones cost MiniLM's query tower ~0.03 cosine to torch, these ~0.003.
        # (onnxruntime's advice to pre-process first does not apply: its shape inference fails on this
        # graph and skipping it changed nothing.)
        quantize_dynamic(out / FILES["fp32"], out / FILES["int8"], **QUANTIZATION, weight_type=QuantType.QInt8)

    with torch.no_grad():
        reference = graph(*example).numpy()
    feeds = {"input_ids": example[0].numpy(), "attention_mask": example[1].numpy()}
    check = {}
    for precision, name in FILES.items():
        if (out / name).is_file():
            session = onnxruntime.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            got = session.run([OUTPUT], feeds)[0]
            check[precision] = {
                "max_abs_diff": float(np.abs(got - reference).max()),
                "min_cosine": float((got * reference).sum(1).min()),
            }
    if check["fp32"]["max_abs_diff"] > _EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export of {model_dir} differs from torch: {check['fp32']}")

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "opset": next(o.version for o in onnx.load(out / FILES["fp32"]).opset_import if o.domain in ("", "ai.onnx")),
        "exporter": "torch.onnx.export(dynamo=True)",
        "dim": model.dim,
        "max_query_tokens": model.cfg.max_query_tokens,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "quantization": {"weight_type": "QInt8", **QUANTIZATION} if int8 else None,
        "files": {p: n for p, n in FILES.items() if (out / n).is_file()},
        "check_on_samples": check,
        "source": source,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def check_export(model_dir: str | Path, precision: str = "int8") -> dict:
    """The export.json of `model_dir`, or a ValueError when the export is missing, lacks `precision`
    or is stale (the model's config or weights changed since). Size and mtime unchanged means
    unchanged; otherwise the files are hashed (a copied model folder is still fresh)."""
    model_dir = Path(model_dir)
    _require_hotelmatch(model_dir)
    if precision not in FILES:
        raise ValueError(f"precision must be one of {', '.join(FILES)}, got {precision!r}")
    fix = f"run `tandem export-onnx --model {model_dir}`"
    path = export_dir(model_dir) / META_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir} has no ONNX export ({path} missing); {fix}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} is not a {FORMAT} export of version <= {FORMAT_VERSION}; {fix}")
    name = meta.get("files", {}).get(precision)
    if not name or not (export_dir(model_dir) / name).is_file():
        raise ValueError(f"{model_dir} has no {precision} ONNX query encoder; {fix}")
    for source, recorded in meta["source"].items():
        current = model_dir / source
        if not current.is_file():
            raise ValueError(f"{current} is missing; the model folder is incomplete")
        now = _fingerprint(current, digest=False)
        if now["size"] == recorded["size"] and now["mtime_ns"] == recorded["mtime_ns"]:
            continue
        if _fingerprint(current)["sha256"] != recorded["sha256"]:
            raise ValueError(f"the ONNX export of {model_dir} is stale ({source} changed since the export); {fix}")
    return meta


class OnnxQueryEncoder:
    """HotelMatch query embeddings from the ONNX export; `embed_queries` matches the torch model's.

    precision: 'int8' (dynamic quantisation, fastest on CPU) or 'fp32' (equal to torch).
    threads: onnxruntime intra-op threads (None: onnxruntime's default, one per physical core).
    With OMP_WAIT_POLICY=PASSIVE in the environment (as for torch's OpenMP threads) idle
    onnxruntime threads sleep instead of spinning, which helps on a shared CPU.
    """

    family = "hotelmatch"
    symmetric = False

    def __init__(self, model_dir: str | Path, precision: str = "int8", threads: int | None = None):
        import onnxruntime
        from transformers import AutoTokenizer

        from tandem.models.towers import prepare_tokenizer

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1 (or None for onnxruntime's default), got {threads}")
        self.model_dir = Path(model_dir)
        self.precision = precision
        self.meta = check_export(self.model_dir, precision)
        self.dim = int(self.meta["dim"])
        self.max_query_tokens = int(self.meta["max_query_tokens"])
        self.tokenizer = prepare_tokenizer(
            AutoTokenizer.from_pretrained(self.model_dir / "query_tokenizer"), "query_encoder"
        )
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            # the same promise as for torch's OpenMP: idle workers sleep instead of spinning
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = export_dir(self.model_dir) / self.meta["files"][precision]
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.popularity = PopularityTerm.load(self.model_dir)  # the query side of its coordinate, as the model's

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        from tandem.models.text import query_text

        tokens = self.tokenizer(
            [query_text(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_query_tokens,
            return_tensors="np",
        )
        return {name: tokens[name].astype(np.int64) for name in INPUTS}

    def embed_queries(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """float32 (n, dim) unit query embeddings, in input order (similar lengths batched together)."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort(-np.asarray([len(t) for t in texts]), kind="stable")
        for start in tqdm(range(0, len(order), batch_size), desc="queries", disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            out[idx] = self.session.run([OUTPUT], self.tokenize([texts[i] for i in idx]))[0]
        return self.popularity.augment_queries(out) if self.popularity is not None and self.popularity.active else out
