"""The service's operations routes: `GET /metrics` (Prometheus; needs the API key when one is set) and
`GET /readyz` (ready to serve: 200, else 503 with the failing checks), beside `GET /healthz` (liveness and
what is served, in `tandem.serve.app`)."""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tandem.serve.metrics import Metrics
from tandem.serve.schemas import Ready

log = logging.getLogger(__name__)


class Cap:
    """`with cap:` around work of which at most `limit` may run at once; one more is an HTTP 429 (Retry-After: 1)
    at once, not queued. Entered and left on the event loop only (async endpoints), so it needs no lock."""

    def __init__(self, limit: int, metrics: Metrics, what: str):
        self.limit, self.metrics, self.what, self.running = limit, metrics, what, 0
        metrics.watch("tandem_expand_in_flight", lambda: self.running)

    def __enter__(self) -> Cap:
        if self.running >= self.limit:
            self.metrics.count("expand_rejected")
            raise HTTPException(429, f"{self.limit} {self.what} are running", headers={"Retry-After": "1"})
        self.running += 1
        return self

    def __exit__(self, *exc) -> None:
        self.running -= 1


def _index_answers(index) -> bool:
    try:
        return index.live() is not None
    except Exception:  # any failure of the Milvus call means: not ready
        log.warning("readiness: the index does not answer", exc_info=True)
        return False


def add_ops_routes(app: FastAPI, metrics: Metrics, require_key) -> None:
    """Add /metrics (behind the `require_key` dependency) and /readyz to `app`."""

    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics (latency per route, batch sizes, errors, event-queue depth, clicks, expand)."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready to serve: the champion's model loaded, the index answering, the event writer healthy
        (200; else 503 naming the failed checks). /healthz only says the process is up."""
        state = request.app.state
        checks = {
            "model": state.router.loaded(),
            "index": await run_in_threadpool(_index_answers, state.index),
            "events": state.events.healthy,
        }
        ready = all(checks.values())
        return JSONResponse(Ready(ready=ready, checks=checks).model_dump(), status_code=200 if ready else 503)
