"""`tandem milvus up | down | status`: a local Milvus standalone server for serving (no Docker)."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.cli.common import WORKDIR, option
from tandem.core import layout

milvus_app = typer.Typer(
    help="A local Milvus standalone server (the PyPI package `milvus`, installed by the `server` extra) with its data "
    "in WORKDIR/milvus-server: for serving under concurrency and large catalogues. Milvus Lite (WORKDIR/milvus.db) "
    "stays the default; point commands at the server with --milvus-uri or TANDEM_MILVUS_URI.",
    no_args_is_help=True,
)


def _server(workdir: Path):
    from tandem.release import milvus_server

    return milvus_server, layout.milvus_server_dir(workdir)


@milvus_app.command("up")
def up(
    workdir: Path = WORKDIR,
    port: int | None = option(
        None, "--port", help="gRPC port; a taken port is an error", shown="19530 or the next free", min=1, max=65535
    ),
    timeout: float = option(180.0, "--timeout", help="seconds to wait until the server answers"),
) -> None:
    """Start the server in the background (or find the one already running) and wait until it answers;
    prints the URI to give `tandem run`, `tandem serve` and `tandem rollout` (--milvus-uri / TANDEM_MILVUS_URI)."""
    server, base = _server(workdir)
    if server.missing_reason():
        typer.secho(f"error: {server.missing_reason()}", fg="red", err=True)
        raise typer.Exit(2)
    try:
        info = server.start(base, port=port, timeout=timeout)
    except RuntimeError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"Milvus server on {info.uri} (pid {info.pid}, data {base})")
    typer.echo(f"use it: export TANDEM_MILVUS_URI={info.uri}")


@milvus_app.command("down")
def down(
    workdir: Path = WORKDIR,
    timeout: float = option(10.0, "--timeout", help="seconds to wait for a clean stop before killing it"),
) -> None:
    """Stop the server started by `tandem milvus up` for WORKDIR; its data stays for the next `up`."""
    server, base = _server(workdir)
    info = server.stop(base, timeout=timeout)
    if info is None:
        typer.echo(f"no Milvus server running from {base}")
        return
    typer.echo(f"stopped the Milvus server on {info.uri} (pid {info.pid}); data kept in {base}")


@milvus_app.command("status")
def status(workdir: Path = WORKDIR) -> None:
    """Whether the WORKDIR's server runs and answers (exit 0), or not (exit 1)."""
    server, base = _server(workdir)
    info = server.status(base)
    if info is None:
        typer.echo(f"not running (no server started from {base}; `tandem milvus up`)")
        raise typer.Exit(1)
    answering = server.healthy(info) and server.answers(info.uri)
    state = "running" if answering else "running but not answering (starting, or see its logs/)"
    typer.echo(f"{state}: {info.uri} (pid {info.pid}, data {base})")
    raise typer.Exit(0 if answering else 1)
