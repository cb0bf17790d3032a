"""/search and /similar latency (p50/p95/p99) and QPS of `tandem serve` over 100k items, on loopback.

    .venv/bin/python benchmarks/serve_latency.py [--items 100000] [--requests 1000] [--concurrency 8]
        [--workdir /tmp/tandem-serve-bench]

The items are synthetic: random unit vectors of the query tower's dimension with a title and
category / city / country scalar fields (quality is not measured here, only latency). The query
tower is real: the bundled all-MiniLM-L6-v2 HotelMatch model (untrained; its 2-layer query
tower embeds every query). The collection is written once and reused from --workdir.

`tandem serve` runs under uvicorn in a subprocess on 127.0.0.1; a bounded async load generator
(httpx.AsyncClient, a fixed number of concurrent workers, a fixed request count after a
warm-up) measures each scenario. As the in-run reference, the same search (query tower +
ItemIndex.search_rows) is called in-process without HTTP, so the service's overhead shows as a
ratio. The load generator and the server share the machine's cores: read the ratios.
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
from tandem.config import IndexConfig, ModelConfig
from tandem.index import ItemIndex, collection_name

RESULTS = Path(__file__).parent / "results" / "serve_latency.md"
RUN_ID = "bench"
WORDS = (
    "red blue green black white small large cotton leather wooden steel summer winter lamp mug shirt shoe "
    "chair table sofa bag hat coat dress jacket boots sandals watch ring necklace phone case cable charger "
    "camera lens tripod hotel beach city pool spa view quiet family modern vintage classic cheap luxury"
).split()
CATEGORIES, CITIES, COUNTRIES = 20, 50, 10


def prepare(workdir: Path, n_items: int, seed: int = 0) -> tuple[int, float]:
    """The model under runs/bench/model and its collection of n_items synthetic vectors (cached);
    returns (dim, seconds spent writing vectors, 0 when cached)."""
    from tandem.models import build_model, load_model

    model_dir = workdir / "runs" / RUN_ID / "model"
    if not (model_dir / "config.json").is_file():
        import torch

        torch.manual_seed(seed)
        build_model(ModelConfig()).save(model_dir)
    dim = load_model(model_dir).dim
    name = collection_name(RUN_ID)
    with ItemIndex(IndexConfig(), workdir) as index:
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


def server_ms(header: str) -> float:
    """Milliseconds the handler spent embedding / fetching and searching (its Server-Timing header)."""
    return sum(float(part.split("dur=")[1]) for part in header.split(",") if "dur=" in part)


def summary(latencies_s: list[float], wall_s: float, errors: int, handler_ms: list[float] | None = None) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {
        "handler_p50": float(np.median(handler_ms)) if handler_ms else float("nan"),
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
        handler: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            for path, params in todo:  # a shared iterator: each request is sent once
                started = time.perf_counter()
                response = await client.get(path, params=params)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200
                handler.append(server_ms(response.headers.get("server-timing", "")))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summary(latencies, time.perf_counter() - started, errors, handler)


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
        return summary(latencies, time.perf_counter() - started, 0, [x * 1000 for x in latencies])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(workdir: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tandem.cli", "serve", "--workdir", str(workdir), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tandem serve exited with {server.returncode}: {server.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError("tandem serve did not answer /healthz within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests of the loaded scenarios")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each scenario")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-serve-bench"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the model and the collection")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    setup_logging(verbose=False)
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    shutil.rmtree(args.workdir / "serving", ignore_errors=True)  # events of earlier runs
    # Milvus Lite lets one process hold a database: write it from a child process that then exits.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        dim, write_s = pool.submit(prepare, args.workdir, args.items).result()

    n = args.warmup + args.requests
    texts = queries(n, seed=1)
    rng = np.random.default_rng(2)
    search = [("/search", {"q": t, "k": 10, "user_id": f"u{i % 500}"}) for i, t in enumerate(texts)]
    filtered = [(p, q | {"category": f"cat{rng.integers(CATEGORIES)}"}) for p, q in search]
    similar = [(f"/similar/item{rng.integers(args.items)}", {"k": 10, "user_id": f"u{i}"}) for i in range(n)]
    scenarios = [
        ("/search", 1, search),
        ("/search", args.concurrency, search),
        ("/search?category=", args.concurrency, filtered),
        ("/similar/{item_id}", args.concurrency, similar),
    ]
    port = free_port()
    server = serve(args.workdir, port)
    rows = []
    try:
        for label, concurrency, requests in scenarios:
            result = asyncio.run(load(f"http://127.0.0.1:{port}", requests, concurrency, args.warmup))
            rows.append((label, concurrency, result))
            print(label, concurrency, {k: round(v, 2) for k, v in result.items()}, flush=True)
    finally:
        server.terminate()  # SIGTERM: uvicorn shuts down, the lifespan flushes the event log
        server.wait(timeout=60)
    reference = in_process(args.workdir, texts, args.warmup)  # after the server let go of Milvus Lite
    print("in-process", {k: round(v, 2) for k, v in reference.items()})
    write(args, dim, write_s, rows, reference)


def write(args, dim: int, write_s: float, rows: list, reference: dict) -> None:
    import torch

    from tandem.serve import read_events

    served = read_events(args.workdir)
    http1 = next(r for label, c, r in rows if label == "/search" and c == 1)
    table = [
        "| scenario | concurrency | requests | p50 ms | p95 ms | p99 ms | QPS | errors | handler p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {c} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['qps']:.1f} "
            f"| {r['errors']} | {r['handler_p50']:.1f} |"
            for label, c, r in rows
        ),
        f"| in-process reference (no HTTP) | 1 | {reference['n']} | {reference['p50']:.1f} | {reference['p95']:.1f} "
        f"| {reference['p99']:.1f} | {reference['qps']:.1f} | 0 | {reference['handler_p50']:.1f} |",
    ]
    lines = [
        "# Serving latency: `tandem serve` on loopback",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}, no GPU; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Data: {args.items:,} synthetic items (random unit vectors, dim {dim}, with title / category / city / country "
        f"fields) in a Milvus Lite HNSW collection (COSINE); "
        + (f"written in {write_s:.0f} s this run." if write_s else "reused from the workdir.")
        + " Query tower: the bundled all-MiniLM-L6-v2 HotelMatch model, untrained (2-layer query tower).",
        f"Load: uvicorn (1 worker) in a subprocess; httpx.AsyncClient with a fixed number of workers, "
        f"{args.warmup} warm-up + {args.requests} measured requests per scenario, k=10. Every request logs its "
        f"impressions (event log flushed off the request path): {len(served):,} events written.",
        "",
        *table,
        "",
        f"HTTP overhead at concurrency 1: /search p50 {http1['p50']:.1f} ms vs {reference['p50']:.1f} ms in-process "
        f"= {http1['p50'] / reference['p50']:.2f}x (p99 {http1['p99'] / reference['p99']:.2f}x). Handler p50 = the "
        "time inside the endpoint embedding (or fetching the item's vector) and searching Milvus, from its "
        "Server-Timing header; the rest is HTTP, validation, routing, event logging and the client.",
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
