"""`tandem serve`: the search service over the live model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from tandem.cli.common import CONFIG, MILVUS, VERBOSE, WORKDIR, build_config, choice, option, setup_logging, user_errors
from tandem.core.config_release import ServeConfig
from tandem.core.config_schema import QUERY_ENCODERS

QueryEncoder = choice(QUERY_ENCODERS)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    host: str | None = option(None, help="address to bind", shown=ServeConfig.host),
    port: int | None = option(None, help="TCP port", shown=ServeConfig.port),
    query_encoder: QueryEncoder | None = option(
        None, help="what embeds /search queries (onnx-*: HotelMatch only)", shown=ServeConfig.query_encoder
    ),
    batch_window_ms: float | None = option(
        None, help="micro-batch concurrent requests for up to this many ms; 0 = off", shown=ServeConfig.batch_window_ms
    ),
    promptgen: Path | None = option(
        None, "--promptgen", help="a `tandem promptgen train` folder: enables /search?expand=true (query expansion)"
    ),
    expand_k: int = option(4, "--expand-k", help="prompts generated per query for expand=true (1..8)"),
    milvus_uri: str | None = MILVUS,
    verbose: bool = VERBOSE,
) -> None:
    """Serve the live model: a search page at /, GET /search, /similar/{item_id}, /healthz, POST /click; API docs
    at /docs. Impressions and clicks go to WORKDIR/serving/events/, a behaviour log for the next `tandem run`."""
    setup_logging(verbose)
    import uvicorn

    from tandem.serve import create_app
    from tandem.serve.routing import preflight

    with user_errors():
        cfg = build_config(config, milvus_uri=milvus_uri)
        given = {"host": host, "port": port, "query_encoder": query_encoder, "batch_window_ms": batch_window_ms}
        cfg = replace(cfg, serve=replace(cfg.serve, **{k: v for k, v in given.items() if v is not None}))
        app_ = create_app(workdir, cfg, promptgen=promptgen, expand_k=expand_k)
        preflight(workdir, cfg)
    typer.echo(f"serving {workdir} on http://{cfg.serve.host}:{cfg.serve.port} (docs: /docs)")
    uvicorn.run(app_, host=cfg.serve.host, port=cfg.serve.port, log_level="debug" if verbose else "warning")
