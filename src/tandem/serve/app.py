"""The FastAPI app behind `tandem serve`: search, similar items, clicks, health; OpenAPI at /docs; a search
page at / with the items' photos (`tandem.serve.page`).

Client input is checked before any work: a bad request gets a 4xx that says what to fix, never
a 5xx. Concurrent /search (and /similar) requests for the same arm are micro-batched
into one query-tower call and one Milvus search per distinct filter (see `tandem.serve.batching` and
`tandem.serve.answering`). Every item shown
is logged as an impression and every click with its request's query and arm (see
`tandem.serve.events`), so that the next run learns from what was served.

Query expansion (`tandem serve --promptgen DIR`, `/search?q=...&expand=true`): the prompt generator
writes k search prompts for q (`tandem.promptgen.expand`), q and the prompts are embedded in one
call and searched in one Milvus call, and the lists are fused by reciprocal rank fusion. Expanded
requests skip the micro-batcher (each already is a batch of k + 1 queries); at most `serve.max_expand` run at
once, and one more gets HTTP 429.

Integrity (`tandem.serve.security`): request ids are signed, users are routed by a keyed hash, responses
name no arm unless `serve.debug`, a click counts once per (request, item) shown, and POST /click and
/metrics need the API key when `TANDEM_API_KEY` is set. Operations: /metrics, /readyz (`tandem.serve.ops`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.data.events import events_dir
from tandem.promptgen.expand import MAX_K, QueryExpander, parse_expand
from tandem.release.index import ItemIndex
from tandem.release.scalars import filter_expression
from tandem.serve.answering import Answer, Ask, answer, expanded
from tandem.serve.batching import MicroBatcher
from tandem.serve.events import EventLog, Served
from tandem.serve.metrics import Metrics, MetricsMiddleware
from tandem.serve.ops import Cap, add_ops_routes
from tandem.serve.page import add_page_routes
from tandem.serve.routing import Arm, Router, Unavailable
from tandem.serve.schemas import Click, Clicked, DebugClicked, DebugResults, Health, Results
from tandem.serve.security import (
    API_KEY_ENV,
    ClickMemory,
    Refused,
    Signer,
    api_key,
    check_click,
    check_key,
    server_secret,
)

log = logging.getLogger(__name__)
USER_HEADER = "X-User-Id"


def _user(value: str | None, header: str | None) -> str | None:
    """The user from the query parameter, else the header; None (anonymous) when neither is given."""
    user = (value if value is not None else header or "").strip()
    return user or None


def _timing(**seconds: float) -> str:
    """A Server-Timing header (milliseconds): where a request's time went, for clients and benchmarks."""
    return ", ".join(f"{name};dur={s * 1000:.2f}" for name, s in seconds.items())


def create_app(
    workdir: str | Path, cfg: RunConfig = RunConfig(), promptgen: str | Path | None = None, expand_k: int = 4
) -> FastAPI:
    """The search service over WORKDIR's live collection (and the rollout's challenger); with
    `promptgen` (a folder written by `tandem promptgen train`), /search?expand=... expands queries
    into `expand_k` generated prompts by default (see `tandem.promptgen.expand`)."""
    workdir = Path(workdir).resolve()
    s = cfg.serve
    filterable = tuple(f for f in cfg.index.scalar_fields if f != "title")
    if not cfg.index.milvus_uri and not layout.milvus_db(workdir).exists():
        raise ValueError(f"no Milvus Lite database in {workdir}: run `tandem run --workdir {workdir}` first")
    if not 1 <= expand_k <= MAX_K:
        raise ValueError(f"--expand-k {expand_k}: give 1 to {MAX_K} prompts per query")
    expander = QueryExpander.load(promptgen, k=expand_k) if promptgen is not None else None
    key, metrics = api_key(), Metrics()
    expand_cap = Cap(s.max_expand, metrics, "expanded searches (serve.max_expand): retry, or search without expand")

    def batch(group: tuple, asks: Sequence[Ask]) -> list[Answer | Exception]:
        metrics.batch(group[0], len(asks))
        return answer(app.state.index, group, asks)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        index = ItemIndex(cfg.index, workdir)
        events = None
        try:
            signer = Signer(server_secret(workdir))
            router = Router(workdir, cfg, index, route_key=signer.route_key)
            router.refresh(force=True)  # fails the start (no live collection, no model) instead of each request
            events = EventLog(events_dir(workdir), s.flush_rows, s.flush_seconds, s.spool_fsync_seconds).start()
            recent = ClickMemory(s.recent_requests, s.click_ttl_seconds, s.click_memory_mb << 20)
            app.state.router, app.state.events, app.state.recent, app.state.signer = router, events, recent, signer
            app.state.index = index
            app.state.batcher = MicroBatcher(batch, s.batch_window_ms, s.max_batch)
            metrics.watch_service(events, recent)  # gauges read at each scrape
            if key is None:
                log.warning(
                    "%s is not set: POST /click and /metrics are open to anyone who reaches the service", API_KEY_ENV
                )
            yield
        finally:
            if events is not None:
                events.close()
            index.close()

    app = FastAPI(
        title="tandem search",
        description="Text search and similar items over the live model's Milvus collection, with A/B routing; "
        "impressions and clicks are logged for the next run.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=s.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: times and counts every response

    def require_key(request: Request) -> None:
        check_key(key, request.headers)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(ValueError)
    async def bad_input(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    ids = {"min_length": 1, "max_length": s.max_id_chars}
    k_query = Query(s.default_k, ge=1, le=s.max_k, description="how many items to return")
    user_query = Query(None, description=f"the user (or header {USER_HEADER}); routes to an arm", **ids)
    user_header = Header(None, alias=USER_HEADER, **ids)
    standard = {"q", "k", "user_id", "expand"}
    filter_docs = {
        "parameters": [
            {
                "name": f,
                "in": "query",
                "required": False,
                "description": f"only items whose {f} is this (repeat the parameter for any of several)",
                "schema": {"type": "array", "items": {"type": "string"}},
            }
            for f in filterable
        ]
    }

    def filters_of(request: Request) -> str:
        given: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            if name in standard:
                continue
            if not value or len(value) > s.max_id_chars or not value.isprintable():
                raise HTTPException(422, f"filter {name}: give a printable value of 1 to {s.max_id_chars} characters")
            given.setdefault(name, []).append(value)
        try:
            return filter_expression(given, filterable) if given else ""
        except ValueError as e:  # an unknown field: the request, not the data, is wrong
            raise HTTPException(422, f"{e} (filterable: {', '.join(filterable)})") from e

    def serve(
        request: Request,
        routed: tuple,
        user: str | None,
        query: str,
        rows: list[dict],
        extra: list[dict],
        expansion: list[str] | None = None,
    ):
        """Log the impressions (and `extra` events), remember the request for its clicks, answer."""
        arm_name, arm, view = routed
        nonce = Signer.nonce()
        user = user or f"anonymous-{nonce}"
        experiment = view.experiment
        request_id = request.app.state.signer.request_id(nonce, user, arm_name, experiment)
        common = {"user_id": user, "arm": arm_name, "experiment": experiment, "request_id": request_id}
        request.app.state.events.add(
            [common | e for e in extra]
            + [
                common | {"item_id": r["item_id"], "event": "impression", "query": query, "position": i}
                for i, r in enumerate(rows)
            ]
        )
        items = tuple(r["item_id"] for r in rows)
        request.app.state.recent.put(nonce, Served(user, query, arm_name, experiment, items))
        if s.debug:
            return DebugResults(
                request_id=request_id,
                user_id=user,
                items=rows,
                expansion=expansion,
                arm=arm_name,
                collection=arm.collection,
            )
        return Results(request_id=request_id, user_id=user, items=rows, expansion=expansion)

    @app.get("/healthz", response_model=Health)
    def healthz(request: Request) -> Health:
        """Liveness and what is served: the champion, the challenger and the traffic share."""
        router: Router = request.app.state.router
        try:
            view = router.refresh()
        except (ValueError, OSError) as e:
            raise Unavailable(str(e)) from e
        champion = router.arm(view.live)
        events: EventLog = request.app.state.events
        return Health(
            status="ok",
            live=view.live,
            challenger=view.challenger,
            experiment=view.experiment,
            share=float(view.state.share) if view.running else 0.0,
            items=champion.items,
            family=champion.family,
            **events.health(),  # queue depth, last flush, last error, the flusher thread
        )

    async def batched(request: Request, response: Response, kind: str, arm: Arm, ask: Ask) -> Answer:
        """The request's answer from its batch (one per kind and arm, any filters: `tandem.serve.answering`);
        Server-Timing tells the batch's calls, the wait, its size and its search calls."""
        started = time.perf_counter()
        got: Answer = await request.app.state.batcher.submit((kind, arm), ask)
        waited = time.perf_counter() - started - sum(got.seconds.values())
        sizes = f', batch;desc="{got.batch}", searches;desc="{got.searches}"'
        response.headers["Server-Timing"] = _timing(**got.seconds, wait=max(waited, 0.0)) + sizes
        return got

    @app.get("/search", response_model=DebugResults if s.debug else Results, openapi_extra=filter_docs)
    async def search(
        request: Request,
        response: Response,
        q: str = Query(..., min_length=1, max_length=s.max_query_chars, description="the search text"),
        k: int = k_query,
        user_id: str | None = user_query,
        x_user_id: str | None = user_header,
        expand: str | None = Query(
            None,
            max_length=20,
            description=f"query expansion (service started with --promptgen): true = {expand_k} generated prompts, "
            f"or their number 0..{MAX_K}; false or 0 = plain search",
        ),
    ) -> Results:
        """Items for a text query: the arm's query tower embeds q, Milvus finds the nearest items.
        With expand, generated prompts are searched beside q and the lists fused by reciprocal rank fusion."""
        if not q.strip():
            raise HTTPException(422, "q is blank: send the words to search for")
        try:
            n_prompts = parse_expand(expand, expand_k)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        if n_prompts and expander is None:
            raise HTTPException(
                400,
                "expand: query expansion is off on this service; start the service with --promptgen DIR "
                "(a folder written by `tandem promptgen train`), or leave expand out",
            )
        expression, user = filters_of(request), _user(user_id, x_user_id)
        routed = await run_in_threadpool(request.app.state.router.route, user)  # may load a model: off the loop
        if not n_prompts:
            got = await batched(request, response, "search", routed[1], Ask(q, k, expression))
            return serve(request, routed, user, q, got.rows, [])
        with expand_cap:  # over serve.max_expand at once: a 429
            started = time.perf_counter()
            queries = (await run_in_threadpool(expander.prompts, [q], n_prompts))[0]
            generated = time.perf_counter() - started
            index = request.app.state.index
            got = await run_in_threadpool(expanded, index, routed[1], expression, queries, k, expander)
        timing = _timing(generate=generated, **got.seconds)
        response.headers["Server-Timing"] = timing + f', queries;desc="{len(queries)}"'
        return serve(request, routed, user, q, got.rows, [], expansion=queries)

    @app.get("/similar/{item_id}", response_model=DebugResults if s.debug else Results, openapi_extra=filter_docs)
    async def similar(
        request: Request,
        response: Response,
        item_id: str = PathParam(..., description="the item being viewed", **ids),
        k: int = k_query,
        user_id: str | None = user_query,
        x_user_id: str | None = user_header,
    ) -> Results:
        """Items like this one (NoteLLM-2: its stored vector's neighbours; HotelMatch: its title's, with its
        click coordinates); logs a view of it."""
        expression, user = filters_of(request), _user(user_id, x_user_id)
        routed = await run_in_threadpool(request.app.state.router.route, user)
        got = await batched(request, response, "similar", routed[1], Ask(item_id, k, expression))
        viewed = {"item_id": item_id, "event": "view", "query": "", "position": None}
        return serve(request, routed, user, "", got.rows, [viewed])

    @app.post("/click", response_model=DebugClicked if s.debug else Clicked, dependencies=[Depends(require_key)])
    def click(request: Request, body: Click) -> Clicked:
        """A click on an item of a recent response (its signed request_id); logged once per request and item,
        with that request's query and arm."""
        state = request.app.state
        for name in ("request_id", "item_id", "user_id"):
            value = getattr(body, name)
            if value is not None and len(value) > s.max_id_chars:
                raise HTTPException(422, f"{name} is longer than {s.max_id_chars} characters")
        try:
            served, position, first = check_click(state.recent, state.signer, body)
        except (HTTPException, Refused) as e:
            metrics.count("clicks", "unserved" if getattr(e, "status_code", 0) == 422 else "refused")
            raise
        metrics.count("clicks", "counted" if first else "duplicate")
        if first:  # a replay of the same click is answered alike, but not logged again
            row = {"user_id": served.user_id, "item_id": body.item_id, "event": "click", "query": served.query}
            row |= {"arm": served.arm, "experiment": served.experiment, "request_id": body.request_id}
            state.events.add([row | {"position": position}])
        answer = {"request_id": body.request_id, "user_id": served.user_id, "item_id": body.item_id}
        answer |= {"position": position, "counted": first}
        return DebugClicked(**answer, arm=served.arm) if s.debug else Clicked(**answer)

    add_ops_routes(app, metrics, require_key)  # GET /metrics, GET /readyz
    add_page_routes(app, workdir, ids)  # GET / (the search page) and GET /items/{item_id}/image
    return app
