"""`hoard gui`: the scheduler and dashboards (NiceGUI), until interrupted."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from hoardfs.base import logs
from hoardfs.cli._common import out, state
from hoardfs.gui.app import serve, usable


def gui(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="address to listen on (default gui.host: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="TCP port (default gui.port: 8080)")] = None,
) -> None:
    """Serve the scheduler and dashboards (NiceGUI) until interrupted."""
    cfg = state(ctx).settings
    usable(cfg, host, port)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # (the CLI set WARNING; -v: DEBUG)
        logs.setup(logging.INFO, force=True)  # a server's log: its ingests, its snapshots' times
    where = (f"unix socket {cfg.gui.socket}, for the proxy in front" if cfg.gui.socket else f"http://{host or cfg.gui.host}:{port or cfg.gui.port}/")
    out.print(f"hoard gui: {where} (Ctrl-C stops it)")
    serve(cfg, host, port)
