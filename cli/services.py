"""`hoard services up|down|status`: the private PostgreSQL and Redis of the embedded default."""

from __future__ import annotations

import os

import typer

from hoardfs.base.config import Settings
from hoardfs.base.errors import ConfigError, ExitCode, HoardError
from hoardfs.cli._common import out, state
from hoardfs.cli.db import backrest_for
from hoardfs.jobs.redis_server import PrivateRedis
from hoardfs.sql.cluster import PrivateCluster, ensure_database

app = typer.Typer(help="Start, stop and show the private PostgreSQL and Redis (embedded default).",
                  no_args_is_help=True)


def _embedded(cfg: Settings):
    if cfg.embedded is None:
        raise ConfigError(f"{cfg.source}: no [embedded] section; PostgreSQL and Redis are external "
                          "(database_url / redis_url), start them with systemd")
    return cfg.embedded


def _private(cfg: Settings):
    """The private servers this config runs, skipping those overridden by the environment."""

    e = _embedded(cfg)
    pg = (PrivateCluster(e.pg_dir, e.pg_socket_dir)
          if e.postgres and not os.environ.get("HOARD_DATABASE_URL") else None)
    rd = (PrivateRedis(e.redis_dir, e.redis_socket)
          if e.redis and not os.environ.get("HOARD_REDIS_URL") else None)
    return pg, rd


@app.command()
def up(ctx: typer.Context) -> None:
    """Start what is not running and create the working and the test database."""

    cfg = state(ctx).settings
    pg, rd = _private(cfg)
    if pg is not None:
        out.print(f"postgresql: {'started' if pg.start() else 'already running'} ({pg.data_dir})")
    if rd is not None:
        out.print(f"redis:      {'started' if rd.start() else 'already running'} ({rd.socket})")
    assert cfg.database_url and cfg.test_database_url
    for url in (cfg.database_url, cfg.test_database_url):
        ensure_database(url)
    if pg is not None:
        br = backrest_for(cfg)
        if br is not None:
            for line in br.setup(cfg.database_url, pg):
                out.print(f"pgbackrest: {line}")
            if br.note:
                out.print(f"pgbackrest: note: {br.note}")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the private servers (data stays under the embedded root)."""
    pg, rd = _private(state(ctx).settings)
    if rd is not None:
        out.print(f"redis:      {'stopped' if rd.stop() else 'not running'}")
    if pg is not None:
        out.print(f"postgresql: {'stopped' if pg.stop() else 'not running'}")


@app.command()
def status(ctx: typer.Context) -> None:
    """Say whether each private server runs."""
    pg, rd = _private(state(ctx).settings)
    stopped = []
    if pg is not None:
        up = pg.is_running()
        out.print(f"postgresql: {'running' if up else 'stopped'} ({pg.data_dir})")
        stopped += [] if up else ["postgresql"]
    if rd is not None:
        up = rd.is_running()
        out.print(f"redis:      {'running' if up else 'stopped'} ({rd.socket})")
        stopped += [] if up else ["redis"]
    if pg is None and rd is None:
        out.print("no private servers: this config uses running ones (database_url, redis_url); "
                  "`hoard health` checks them")
    if stopped:
        raise HoardError(f"{' and '.join(stopped)} stopped; start with `hoard services up`", ExitCode.UNAVAILABLE)
