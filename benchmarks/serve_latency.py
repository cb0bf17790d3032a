"""/search and /similar latency (p50/p95/p99) and QPS of `tandem serve` over 100k items, on loopback:
micro-batching off / on, and the torch vs ONNX int8 query encoder, at concurrency 1, 8 and 32.

    .venv/bin/python benchmarks/serve_latency.py [--items 100000] [--requests 500] [--concurrency 8]
        [--high-concurrency 32] [--window-ms 5] [--workdir /tmp/tandem-serve-bench]

The items are synthetic: random unit vectors of the query tower's dimension with a title and
category / city / country scalar fields (quality is not measured here, only latency). The query
tower is real: the bundled all-MiniLM-L6-v2 HotelMatch model (untrained; its 2-layer query
tower embeds every query). The collection is written once and reused from --workdir.

`tandem serve` runs under uvicorn in a subprocess on 127.0.0.1, once per configuration
(query encoder x batching; the ONNX export is made by the service on its first start); a
bounded async load generator (httpx.AsyncClient, a fixed number of concurrent workers, a fixed
request count after a warm-up) measures each scenario. As the in-run references, the same search
(query tower + ItemIndex.search_rows) is called in-process without HTTP, and Milvus Lite's cost
per search call is timed with 1 and with 32 query vectors. The load generator and the server
share the machine's cores: read the same-run ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tandem.cli import setup_logging
from tandem.core.config import ModelConfig
from tandem.core.config_release import IndexConfig
from tandem.release.index import ItemIndex, collection_name

RESULTS = Path(__file__).parent / "results" / "serve_latency.md"
RUN_ID = "bench"
WORDS = (
    "red blue green black white small large cotton leather wooden steel summer winter lamp mug shirt shoe "
    "chair table sofa bag hat coat dress jacket boots sandals watch ring necklace phone case cable charger "
    "camera lens tripod hotel beach city pool spa view quiet family modern vintage classic cheap luxury"
).split()
CATEGORIES, CITIES, COUNTRIES = 20, 50, 10


def prepare(workdir: Path, n_items: int, seed: int = 0, milvus_uri: str = "") -> tuple[int, float]:
    """The model under runs/bench/model and its collection of n_items synthetic vectors (cached), in
    WORKDIR's Milvus Lite or on the server at `milvus_uri`; returns (dim, seconds spent writing vectors,
    0 when cached)."""
    from tandem.models import build_model, load_model

    model_dir = workdir / "runs" / RUN_ID / "model"
    if not (model_dir / "config.json").is_file():
        import torch

        torch.manual_seed(seed)
        build_model(ModelConfig()).save(model_dir)
    dim = load_model(model_dir).dim
    name = collection_name(RUN_ID)
    with ItemIndex(IndexConfig(milvus_uri=milvus_uri), workdir) as index:
        if index.client.has_collection(name) and index.count(name) == n_items:
            spent = 0.0
        else:
            started = time.perf_counter()
            if index.client.has_collection(name):
                index.client.drop_collection(name)
            rng = np.random.default_rng(seed)
            vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            scalars = {
                "title": [" ".join(rng.choice(WORDS, 4)) for _ in range(n_items)],
                "category": [f"cat{c}" for c in rng.integers(CATEGORIES, size=n_items)],
                "city": [f"city{c}" for c in rng.integers(CITIES, size=n_items)],
                "country": [f"country{c}" for c in rng.integers(COUNTRIES, size=n_items)],
            }
            index.write(name, [f"item{i}" for i in range(n_items)], vectors, scalars, batch=5000)
            spent = time.perf_counter() - started
        if index.live() != name:
            index.promote(name)
    return dim, spent


def queries(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 5)))) for _ in range(n)]


def timing(header: str) -> tuple[float, float, int]:
    """(ms the request's batch spent embedding / fetching and searching, ms it waited, batch size), from
    the Server-Timing header."""
    spent = waited = 0.0
    size = 1
    for part in header.split(","):
        name = part.strip().split(";")[0]
        if "dur=" in part:
            ms = float(part.split("dur=")[1])
            waited, spent = (waited + ms, spent) if name == "wait" else (waited, spent + ms)
        elif name == "batch":
            size = int(part.split("desc=")[1].strip('"'))
    return spent, waited, size


def summary(latencies_s: list[float], wall_s: float, errors: int, timings: list[tuple] | None = None) -> dict:
    ms = np.asarray(latencies_s) * 1000
    spent, waited, sizes = zip(*timings) if timings else ([float("nan")], [float("nan")], [float("nan")])
    return {
        "handler_p50": float(np.median(spent)),
        "wait_p50": float(np.median(waited)),
        "batch_mean": float(np.mean(sizes)),
        "n": len(ms),
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "qps": len(ms) / wall_s,
        "errors": errors,
    }


async def load(base: str, requests: list[tuple[str, dict]], concurrency: int, warmup: int) -> dict:
    """GET each (path, params) with `concurrency` workers; the first `warmup` requests are not measured."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        for path, params in requests[:warmup]:
            (await client.get(path, params=params)).raise_for_status()
        todo = iter(requests[warmup:])
        latencies: list[float] = []
        timings: list[tuple] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            for path, params in todo:  # a shared iterator: each request is sent once
                started = time.perf_counter()
                response = await client.get(path, params=params)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200
                timings.append(timing(response.headers.get("server-timing", "")))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summary(latencies, time.perf_counter() - started, errors, timings)


def in_process(workdir: Path, texts: list[str], warmup: int) -> dict:
    """The same search without HTTP: query tower + ItemIndex.search_rows, one request at a time."""
    from tandem.models import load_model

    model = load_model(workdir / "runs" / RUN_ID / "model")
    with ItemIndex(IndexConfig(), workdir) as index:
        latencies = []
        started = None
        for n, text in enumerate(texts):
            if n == warmup:
                started = time.perf_counter()
            t = time.perf_counter()
            index.search_rows(collection_name(RUN_ID), model.embed_queries([text], batch_size=1, progress=False), k=10)
            if n >= warmup:
                latencies.append(time.perf_counter() - t)
        reference = summary(latencies, time.perf_counter() - started, 0, [(x * 1000, 0.0, 1) for x in latencies])
        # Milvus Lite's cost per search call: the same vectors searched 1 and 32 per call
        vectors = model.embed_queries(texts[:32], batch_size=32, progress=False)
        per_call = {}
        for nq in (1, 32):
            index.search_rows(collection_name(RUN_ID), vectors[:nq], k=10)  # warm
            took = []
            for _ in range(10):
                t = time.perf_counter()
                index.search_rows(collection_name(RUN_ID), vectors[:nq], k=10)
                took.append(time.perf_counter() - t)
            per_call[nq] = float(np.median(took) * 1000)
        return reference | {"call_1": per_call[1], "call_32": per_call[32]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(workdir: Path, port: int, encoder: str, window_ms: float, milvus_uri: str = "") -> subprocess.Popen:
    """`tandem serve` over WORKDIR's Milvus Lite, or over the server at `milvus_uri`, once it answers /healthz."""
    command = [sys.executable, "-m", "tandem.cli", "serve", "--workdir", str(workdir), "--port", str(port)]
    command += ["--query-encoder", encoder, "--batch-window-ms", str(window_ms)]
    command += ["--milvus-uri", milvus_uri] if milvus_uri else []
    env = {k: v for k, v in os.environ.items() if k != "TANDEM_MILVUS_URI"}
    env |= {"OMP_WAIT_POLICY": "PASSIVE"}  # idle torch / onnxruntime threads sleep: a shared CPU
    backend = "server" if milvus_uri else "lite"
    log = workdir / f"serve-{backend}-{encoder}-{window_ms:g}ms.log"  # a file, not a pipe: a full pipe would block it
    with log.open("w") as err:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    import httpx

    deadline = time.monotonic() + 600  # the first ONNX start exports the query tower
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tandem serve exited with {server.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"tandem serve did not answer /healthz within 600 s; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500, help="measured requests per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests of the loaded scenarios")
    parser.add_argument("--high-concurrency", type=int, default=32, help="and of the most loaded (0: skip them)")
    parser.add_argument("--window-ms", type=float, default=5.0, help="serve.batch_window_ms when batching is on")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests before each scenario")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-serve-bench"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the model and the collection")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    setup_logging(verbose=False)
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    shutil.rmtree(args.workdir / "serving", ignore_errors=True)  # events of earlier runs
    load_start = os.getloadavg()[0]
    # Milvus Lite lets one process hold a database: write it from a child process that then exits.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        dim, write_s = pool.submit(prepare, args.workdir, args.items).result()

    n = args.warmup + args.requests
    texts = queries(n, seed=1)
    rng = np.random.default_rng(2)
    search = [("/search", {"q": t, "k": 10, "user_id": f"u{i % 500}"}) for i, t in enumerate(texts)]
    filtered = [(p, q | {"category": f"cat{rng.integers(CATEGORIES)}"}) for p, q in search]
    similar = [(f"/similar/item{rng.integers(args.items)}", {"k": 10, "user_id": f"u{i}"}) for i in range(n)]
    c, high = args.concurrency, args.high_concurrency
    searches = [("/search", 1, search), ("/search", c, search)] + ([("/search", high, search)] if high else [])
    others = [("/search?category=", c, filtered), ("/similar/{item_id}", c, similar)]
    servers = [  # (query encoder, batch window ms, scenarios)
        ("torch", 0.0, searches + others),
        ("torch", args.window_ms, searches + others),
        ("onnx-int8", 0.0, searches),
        ("onnx-int8", args.window_ms, searches),
    ]
    rows = []
    started = time.perf_counter()
    for encoder, window, scenarios in servers:
        port = free_port()
        server = serve(args.workdir, port, encoder, window)
        try:
            for label, concurrency, requests in scenarios:
                result = asyncio.run(load(f"http://127.0.0.1:{port}", requests, concurrency, args.warmup))
                rows.append((encoder, window, label, concurrency, result))
                print(encoder, window, label, concurrency, {k: round(v, 2) for k, v in result.items()}, flush=True)
        finally:
            server.terminate()  # SIGTERM: uvicorn shuts down, the lifespan flushes the event log
            server.wait(timeout=60)
    reference = in_process(args.workdir, texts, args.warmup)  # after the servers let go of Milvus Lite
    print("in-process", {k: round(v, 2) for k, v in reference.items()})
    write(args, dim, write_s, rows, reference, load_start, time.perf_counter() - started)


def _get(rows: list, encoder: str, batched: bool, label: str, concurrency: int) -> dict:
    return next(r for e, w, lab, c, r in rows if (e, w > 0, lab, c) == (encoder, batched, label, concurrency))


def write(args, dim: int, write_s: float, rows: list, reference: dict, load_start: float, wall_s: float) -> None:
    import torch

    from tandem.serve import read_events

    served = read_events(args.workdir)
    off = lambda label, c, encoder="torch": _get(rows, encoder, False, label, c)  # noqa: E731
    on = lambda label, c, encoder="torch": _get(rows, encoder, True, label, c)  # noqa: E731
    c, high = args.concurrency, args.high_concurrency
    table = [
        "| query encoder | batching | scenario | concurrency | requests | p50 ms | p95 ms | p99 ms | QPS | errors "
        "| handler p50 ms | wait p50 ms | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {e} | {f'{w:g} ms' if w else 'off'} | {label} | {conc} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} "
            f"| {r['p99']:.1f} | {r['qps']:.1f} | {r['errors']} | {r['handler_p50']:.1f} | {r['wait_p50']:.1f} "
            f"| {r['batch_mean']:.1f} |"
            for e, w, label, conc, r in rows
        ),
        f"| torch | - | in-process reference (no HTTP) | 1 | {reference['n']} | {reference['p50']:.1f} "
        f"| {reference['p95']:.1f} | {reference['p99']:.1f} | {reference['qps']:.1f} | 0 "
        f"| {reference['handler_p50']:.1f} | - | 1 |",
    ]
    ratios = []
    for encoder in ("torch", "onnx-int8"):
        for conc in (c, high) if high else (c,):
            a, b = off("/search", conc, encoder), on("/search", conc, encoder)
            ratios.append(
                f"- /search, {encoder}, concurrency {conc}: batching on/off QPS {b['qps'] / a['qps']:.2f}x, "
                f"p50 {a['p50']:.0f} -> {b['p50']:.0f} ms ({a['p50'] / b['p50']:.2f}x), p99 {a['p99']:.0f} -> "
                f"{b['p99']:.0f} ms ({a['p99'] / b['p99']:.2f}x); mean batch {b['batch_mean']:.1f}"
            )
    for label in ("/search?category=", "/similar/{item_id}"):
        a, b = off(label, c), on(label, c)
        ratios.append(
            f"- {label}, torch, concurrency {c}: batching on/off QPS {b['qps'] / a['qps']:.2f}x, p99 {a['p99']:.0f} "
            f"-> {b['p99']:.0f} ms; mean batch {b['batch_mean']:.1f}"
        )
    for batched in (False, True):
        t, o = _get(rows, "torch", batched, "/search", 1), _get(rows, "onnx-int8", batched, "/search", 1)
        ratios.append(
            f"- /search at concurrency 1, batching {'on' if batched else 'off'}: onnx-int8 vs torch p50 {t['p50']:.1f} "
            f"-> {o['p50']:.1f} ms ({t['p50'] / o['p50']:.2f}x), handler p50 {t['handler_p50']:.1f} -> "
            f"{o['handler_p50']:.1f} ms"
        )
    http1 = off("/search", 1)
    ratios.append(
        f"- HTTP overhead at concurrency 1 (torch, batching off): p50 {http1['p50']:.1f} ms vs {reference['p50']:.1f} "
        f"ms in-process = {http1['p50'] / reference['p50']:.2f}x"
    )
    lines = [
        "# Serving latency: `tandem serve` on loopback, micro-batching and the ONNX int8 query encoder",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, no GPU; load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at "
        f"the end (other jobs shared the cores); the servers ran with OMP_WAIT_POLICY=PASSIVE. Wall time of the "
        f"scenarios {wall_s / 60:.1f} min.",
        "",
        f"Data: {args.items:,} synthetic items (random unit vectors, dim {dim}, with title / category / city / country "
        f"fields) in a Milvus Lite HNSW collection (COSINE); "
        + (f"written in {write_s:.0f} s this run." if write_s else "reused from the workdir.")
        + " Query tower: the bundled all-MiniLM-L6-v2 HotelMatch model, untrained (2-layer query tower); "
        "onnx-int8 = its ONNX export with int8 weights (`tandem.models.onnx_export`), made by the service.",
        f"Load: one uvicorn worker per configuration (query encoder x batching) in a subprocess; httpx.AsyncClient "
        f"with a fixed number of workers, {args.warmup} warm-up + {args.requests} measured requests per scenario, "
        f"k=10; batching on = `serve.batch_window_ms` {args.window_ms:g}, `serve.max_batch` 64. Every request logs "
        f"its impressions (event log flushed off the request path): {len(served):,} events written.",
        "",
        *table,
        "",
        "Handler = the time of the request's batch in the query tower (or fetching the items' vectors) and the "
        "Milvus search; wait = the rest of the time in the endpoint (the batching window, and waiting for the "
        "batch before to finish); mean batch = requests answered by the same calls (all from the Server-Timing "
        "header).",
        "",
        "Same-run ratios:",
        "",
        *ratios,
        "",
        "Requests with different filters cannot share a Milvus call (a search takes one filter expression): "
        "/search?category= draws one of 20 categories per request, so at concurrency 8 its batches rarely form "
        "(mean batch ~1) and it gains nothing; the window itself adds at most `batch_window_ms` to a request.",
        "",
        "Why batching pays here: Milvus Lite (the pure-Python `milvus_lite`) dedups rows by their latest write and "
        "drops deleted ones by looping in Python over every row of the collection once per search call "
        "(`milvus_lite/search/executor_indexed.py`, `_update_max_seqs` and `_build_local_mask`), while the HNSW "
        f"search itself costs about a millisecond per query vector. Measured in-process in this run: one search "
        f"call with 1 query vector {reference['call_1']:.0f} ms, with 32 vectors {reference['call_32']:.0f} ms "
        f"({reference['call_32'] / reference['call_1']:.2f}x the time for 32x the queries). One call per batch pays "
        "that scan once for the whole batch, and the query tower embeds the batch in one forward pass. A Milvus "
        "server (`--milvus-uri`) has no such per-call scan; batching there saves less, and was not measured here.",
        "",
        "The load generator runs on the same cores as the server, and other jobs shared the machine: the "
        "milliseconds are indicative, the same-run ratios are the result.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
