"""Prometheus metrics of the search service (`GET /metrics`, text exposition format), one registry per app.

tandem_request_seconds{route,method}    latency histogram per route template (unmatched paths: "other")
tandem_responses_total{route,status}    responses by status: errors are the 4xx and 5xx
tandem_batch_size{kind}                 requests answered by one micro-batch call (search, similar)
tandem_event_queue_depth                served events buffered, not yet written
tandem_events_written                   served events written since start-up
tandem_event_flush_failures             consecutive failed part writes; tandem_event_flusher_up: 1 while it runs
tandem_clicks_total{result}             counted, duplicate, unserved (not shown by that request), refused
tandem_click_memory_requests / _bytes   requests remembered for their clicks, and their rough size
tandem_expand_in_flight                 expanded searches running; tandem_expand_rejected_total: 429s

The values live in this object (a prometheus_client custom collector), not in prometheus_client's value
classes: a library that switches those to multiprocess files on import (feast does) would otherwise make
two apps of one process (tests) share their counts.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GAUGES = {
    "tandem_event_queue_depth": "served events buffered, not yet written",
    "tandem_events_written": "served events written since start-up",
    "tandem_event_flush_failures": "consecutive failed writes of served events (0: the last one succeeded)",
    "tandem_event_flusher_up": "1 while the thread writing served events runs",
    "tandem_click_memory_requests": "served requests remembered for their clicks",
    "tandem_click_memory_bytes": "rough size of the click memory",
    "tandem_expand_in_flight": "expanded searches running",
}


class _Histogram:
    def __init__(self, buckets: tuple):
        self.buckets = buckets
        self.data: dict[tuple, list] = {}  # labels -> [count per bucket (+Inf last), sum]

    def observe(self, labels: tuple, value: float) -> None:
        row = self.data.setdefault(labels, [[0] * (len(self.buckets) + 1), 0.0])
        row[0][bisect_left(self.buckets, value)] += 1
        row[1] += value

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=label_names)
        for labels, (counts, total) in sorted(self.data.items()):
            cumulative, running = [], 0
            for bound, n in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((bound, running))
            family.add_metric(list(labels), cumulative, total)
        return family


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._latency, self._batch = _Histogram(LATENCY_BUCKETS), _Histogram(BATCH_BUCKETS)
        self._counters: dict[str, defaultdict] = {
            name: defaultdict(int) for name in ("responses", "clicks", "expand_rejected")
        }
        self._reads: dict[str, Callable[[], float]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._latency.observe((route, method), seconds)
            self._counters["responses"][(route, str(status))] += 1

    def batch(self, kind: str, size: int) -> None:
        with self._lock:
            self._batch.observe((kind,), size)

    def count(self, counter: str, *labels: str) -> None:
        """Add one to `counter` ("clicks" with its result, or "expand_rejected")."""
        with self._lock:
            self._counters[counter][labels] += 1

    def watch(self, name: str, read: Callable[[], float]) -> None:
        """Gauge `name` (one of GAUGES) reads `read()` at each scrape."""
        if name not in GAUGES:
            raise ValueError(f"unknown gauge {name}: one of {', '.join(GAUGES)}")
        self._reads[name] = read

    def watch_service(self, events, memory) -> None:
        """The gauges read the service's event log (tandem.serve.events.EventLog) and click memory."""
        self.watch("tandem_event_queue_depth", lambda: events.buffered)
        self.watch("tandem_events_written", lambda: events.written)
        self.watch("tandem_event_flush_failures", lambda: events.failures)
        self.watch("tandem_event_flusher_up", lambda: float(events.alive))
        self.watch("tandem_click_memory_requests", lambda: len(memory))
        self.watch("tandem_click_memory_bytes", lambda: memory.bytes)

    def describe(self):
        return []  # no samples at registration (collect would read gauges of a service not started yet)

    def collect(self):
        with self._lock:
            yield self._latency.family("tandem_request_seconds", "request latency by route", ["route", "method"])
            yield self._batch.family("tandem_batch_size", "requests per micro-batch call", ["kind"])
            for name, doc, label_names in (
                ("responses", "responses by route and status", ["route", "status"]),
                ("clicks", "clicks by outcome", ["result"]),
                ("expand_rejected", "expanded searches refused (429)", []),
            ):
                family = CounterMetricFamily(f"tandem_{name}", doc, labels=label_names)
                for labels, value in sorted(self._counters[name].items()):
                    family.add_metric(list(labels), value)
                yield family
        for name, doc in GAUGES.items():
            read = self._reads.get(name)
            if read is not None:
                yield GaugeMetricFamily(name, doc, value=float(read()))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI: times each HTTP request and counts its status, labelled by the matched route's template
    (FastAPI puts the route in the scope), so client-chosen paths cannot grow the label set."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.request(route, scope["method"], status[0], time.perf_counter() - started)
