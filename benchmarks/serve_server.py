"""`tandem serve` on a real Milvus server and on Milvus Lite, in the same run: /search, /search with a
filter and /similar at concurrency 1, 8 and 32 over 100k items; p50/p95/p99, QPS, errors and the
server / Lite ratios, and the raw index call without HTTP or query tower on each backend.

    .venv/bin/python benchmarks/serve_server.py [--items 100000] [--requests 400] [--lite-requests 200]
        [--concurrency 1,8,32] [--window-ms 5] [--query-encoder torch] [--workdir /tmp/tandem-serve-server]

The server is the Milvus 2.3 standalone binary of the PyPI package `milvus`, started by
`tandem.release.milvus_server.start` (what `tandem milvus up` runs) in WORKDIR/milvus-server and
stopped at the end. The data, the model and the load generator are those of
`benchmarks/serve_latency.py` (imported, not copied): the same 100k synthetic items (HNSW, COSINE,
the default IndexConfig) written to both backends, the bundled all-MiniLM-L6-v2 HotelMatch query tower,
httpx workers on loopback, micro-batching on (`serve.batch_window_ms`). /search?category= draws one of
20 categories per request. The query tower costs ~100 ms per batch on a 2-core CPU and dominates
/search on either backend, so two figures isolate the index: /similar (fetches the item's stored
vector, then searches; no query tower) and the in-process index call (`ItemIndex.search_rows`, one
precomputed vector per call, threads at each concurrency, no HTTP). Goals of issue 18 are checked
at the end; the HNSW-vs-exact goal is read from `benchmarks/results/hnsw_recall.json` when
`benchmarks/hnsw_recall.py` has written it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serve_latency import CATEGORIES, RUN_ID, free_port, load, prepare, queries, serve, summary

from tandem.cli import setup_logging
from tandem.core.config_release import IndexConfig
from tandem.release import milvus_server
from tandem.release.index import ItemIndex, collection_name

RESULTS = Path(__file__).parent / "results" / "serve_server.md"
HNSW_RESULTS = Path(__file__).parent / "results" / "hnsw_recall.json"
BACKENDS = ("server", "lite")
SCENARIOS = ("/search", "/search?category=", "/similar/{item_id}")


def index_only(workdir: Path, uri: str, dim: int, concurrencies: list[int], calls: int) -> dict:
    """`ItemIndex.search_rows` with one precomputed unit vector per call (k=10), `calls` calls from
    `concurrency` threads, unfiltered and with a category filter: {(label, concurrency): summary}."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(calls + 10, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = {}
    with ItemIndex(IndexConfig(milvus_uri=uri), workdir) as index:
        name = collection_name(RUN_ID)
        for v in vectors[:10]:  # warm-up
            index.search_rows(name, v[None], k=10)
        for label, expression in (("search_rows", ""), ("search_rows, filtered", 'category == "cat3"')):
            for concurrency in concurrencies:

                def one(v, expression=expression):
                    started = time.perf_counter()
                    index.search_rows(name, v[None], k=10, filter=expression)
                    return time.perf_counter() - started

                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    latencies = list(pool.map(one, vectors[10:]))
                out[(label, concurrency)] = summary(latencies, time.perf_counter() - started, 0)
    return out


def requests_for(n: int, items: int) -> dict[str, list[tuple[str, dict]]]:
    texts = queries(n, seed=1)
    rng = np.random.default_rng(2)
    search = [("/search", {"q": t, "k": 10, "user_id": f"u{i % 500}"}) for i, t in enumerate(texts)]
    return {
        "/search": search,
        "/search?category=": [(p, q | {"category": f"cat{rng.integers(CATEGORIES)}"}) for p, q in search],
        "/similar/{item_id}": [
            (f"/similar/item{rng.integers(items)}", {"k": 10, "user_id": f"u{i}"}) for i in range(n)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=400, help="measured requests per scenario on the server")
    parser.add_argument("--lite-requests", type=int, default=200, help="measured requests per scenario on Lite")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent requests per scenario")
    parser.add_argument("--window-ms", type=float, default=5.0, help="serve.batch_window_ms")
    parser.add_argument("--query-encoder", default="torch", choices=["torch", "onnx-int8", "onnx-fp32"])
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests before each scenario")
    parser.add_argument("--index-calls", type=int, default=200, help="in-process index calls per concurrency")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-serve-server"))
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    setup_logging(verbose=False)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    shutil.rmtree(args.workdir / "serving", ignore_errors=True)  # events of earlier runs
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    info = milvus_server.start(args.workdir / "milvus-server", port=milvus_server.free_port(), detach=False)
    server_start_s = time.perf_counter() - started
    uris = {"server": info.uri, "lite": ""}
    rows: list[tuple[str, str, int, dict]] = []
    index_rows: dict[str, dict] = {}
    spawn = multiprocessing.get_context("spawn")
    try:
        write_s = {}
        # Milvus Lite lets one process hold a database: write (and later search) it from child processes.
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            for backend in BACKENDS:
                dim, write_s[backend] = pool.submit(prepare, args.workdir, args.items, 0, uris[backend]).result()
                print(backend, "written in", round(write_s[backend], 1), "s", flush=True)
        for backend in BACKENDS:
            n = args.requests if backend == "server" else args.lite_requests
            requests = requests_for(args.warmup + n, args.items)
            port = free_port()
            service = serve(args.workdir, port, args.query_encoder, args.window_ms, uris[backend])
            try:
                for label in SCENARIOS:
                    for concurrency in concurrencies:
                        result = asyncio.run(
                            load(f"http://127.0.0.1:{port}", requests[label], concurrency, args.warmup)
                        )
                        rows.append((backend, label, concurrency, result))
                        print(backend, label, concurrency, {k: round(v, 2) for k, v in result.items()}, flush=True)
            finally:
                service.terminate()
                service.wait(timeout=60)
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # after the service let go of Milvus Lite
                index_rows[backend] = pool.submit(
                    index_only, args.workdir, uris[backend], dim, concurrencies, args.index_calls
                ).result()
            for key, r in index_rows[backend].items():
                print(backend, "index only", key, {k: round(r[k], 2) for k in ("p50", "p99", "qps")}, flush=True)
    finally:
        milvus_server.stop(args.workdir / "milvus-server", timeout=5)
    wall_s = time.perf_counter() - started
    write(args, dim, write_s, server_start_s, rows, index_rows, concurrencies, load_start, wall_s)


def write(args, dim, write_s, server_start_s, rows, index_rows, concurrencies, load_start, wall_s) -> None:
    from importlib.metadata import version

    get = {(b, label, c): r for b, label, c, r in rows}
    head = "| backend | scenario | concurrency | requests | p50 ms | p95 ms | p99 ms | QPS | errors | mean batch |"
    table = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    table += [
        f"| {b} | {label} | {c} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['qps']:.1f} "
        f"| {r['errors']} | {r['batch_mean']:.1f} |"
        for b, label, c, r in rows
    ]
    index_table = [
        "| backend | call | concurrency | calls | p50 ms | p95 ms | p99 ms | calls/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        for (label, c), r in index_rows[backend].items():
            index_table.append(
                f"| {backend} | {label} | {c} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
                f"| {r['qps']:.1f} |"
            )
    ratios = ["| scenario | concurrency | server / Lite QPS | Lite / server p99 |", "|---|---|---|---|"]
    for label in SCENARIOS:
        for c in concurrencies:
            s, lite = get[("server", label, c)], get[("lite", label, c)]
            ratios.append(f"| {label} | {c} | {s['qps'] / lite['qps']:.1f}x | {lite['p99'] / s['p99']:.1f}x |")
    for label in ("search_rows", "search_rows, filtered"):
        for c in concurrencies:
            s, lite = index_rows["server"][(label, c)], index_rows["lite"][(label, c)]
            ratios.append(
                f"| in-process {label} | {c} | {s['qps'] / lite['qps']:.1f}x | {lite['p99'] / s['p99']:.1f}x |"
            )
    goals = []
    mid = 8 if 8 in concurrencies else concurrencies[len(concurrencies) // 2]
    for label in SCENARIOS:
        s, lite = get[("server", label, mid)], get[("lite", label, mid)]
        ratio = s["qps"] / lite["qps"]
        goals.append(
            f"- {label}, concurrency {mid}: server p99 {s['p99']:.1f} ms, goal <= 30 ms: "
            f"**{'met' if s['p99'] <= 30 else 'missed'}**; server {s['qps']:.1f} vs Lite {lite['qps']:.1f} QPS = "
            f"{ratio:.1f}x, goal >= 20x: **{'met' if ratio >= 20 else 'missed'}**"
        )
    s, lite = index_rows["server"][("search_rows", mid)], index_rows["lite"][("search_rows", mid)]
    goals.append(
        f"- the index alone (in-process search_rows, concurrency {mid}): server p99 {s['p99']:.1f} ms "
        f"({'met' if s['p99'] <= 30 else 'missed'}), {s['qps'] / lite['qps']:.1f}x Lite's calls/s "
        f"({'met' if s['qps'] / lite['qps'] >= 20 else 'missed'})"
    )
    if HNSW_RESULTS.is_file():
        h = json.loads(HNSW_RESULTS.read_text())
        for backend, r in h["backends"].items():
            met = r["speedup_vs_flat"] >= 10 and r["recall"] >= 0.98
            goals.append(
                f"- HNSW vs exact on {backend} ({h['items']:,} items, `{h['command']}`, {h['date']}): recall@10 "
                f"{r['recall']:.4f} at ef {r['ef']}, {r['speedup_vs_flat']:.1f}x the FLAT index's queries/s "
                f"({r['speedup_vs_numpy']:.1f}x numpy exact), goal >= 10x at recall >= 0.98: "
                f"**{'met' if met else 'missed'}**"
            )
    else:
        goals.append("- HNSW vs exact: run benchmarks/hnsw_recall.py (writes benchmarks/results/hnsw_recall.json)")
    counts = f"{args.requests} measured requests per scenario on the server, {args.lite_requests} on Lite"
    lines = [
        "# Serving on a Milvus server vs Milvus Lite: `tandem serve`, 100k items, same run",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU, "
        f"shared with other workers' jobs: load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        f"the end. Milvus server: PyPI `milvus` {version('milvus')} (Milvus 2.3.5 standalone, started in "
        f"{server_start_s:.0f} s by `tandem.release.milvus_server.start`); Milvus Lite: milvus-lite "
        f"{version('milvus-lite')}; pymilvus {version('pymilvus')}. Wall time {wall_s / 60:.1f} min.",
        "",
        f"Data: {args.items:,} synthetic items (random unit vectors, dim {dim}, category / city / country fields; "
        f"`serve_latency.prepare`), HNSW COSINE (IndexConfig defaults), the same rows on both backends; "
        f"written in {write_s['server']:.0f} s (server) and {write_s['lite']:.0f} s (Lite) this run (0 = reused). "
        f"Service: one uvicorn worker, query encoder {args.query_encoder} (the bundled all-MiniLM-L6-v2 "
        f"HotelMatch query tower), micro-batching {args.window_ms:g} ms / 64. Load: httpx workers on loopback, "
        f"{args.warmup} warm-up + {counts} (fewer on Lite: it is ~20x slower), k=10; "
        "/search?category= picks one of 20 categories per request.",
        "",
        "## Over HTTP",
        "",
        *table,
        "",
        "Mean batch = requests answered by the same query-tower call (or vector fetch), from Server-Timing; "
        "filtered requests share it and run one search per distinct category.",
        "",
        "## The index alone (in-process, no HTTP, no query tower)",
        "",
        f"`ItemIndex.search_rows`, one precomputed vector per call, k=10, {args.index_calls} calls per row from a "
        'thread pool of the given size; filtered = `category == "cat3"` (1/20 of the items).',
        "",
        *index_table,
        "",
        "## Server vs Lite (same run)",
        "",
        *ratios,
        "",
        "## Goals (issue 18)",
        "",
        *goals,
        "",
        "/search includes the query tower (the same on both backends) and every request over HTTP pays uvicorn, "
        "FastAPI and the event log; /similar (no query tower) and the in-process calls measure the index. The "
        "load generator, the service, the query tower and the Milvus server share the machine's 2 cores, and "
        "other workers' jobs ran beside them (see the load average): the milliseconds are indicative, the "
        "same-run ratios are the result.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
