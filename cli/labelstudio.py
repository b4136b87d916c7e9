"""`hoard labelstudio up|down|status|token`: a Label Studio on this host for AC5 (the
`label-studio` action) on the embedded default (hoardfs.jobs.actions.labelstudio_local;
docs/actions.md, "Starting Label Studio")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.cli._common import out, state
from hoardfs.jobs.actions import labelstudio_local as local

app = typer.Typer(help="Start, stop and show a Label Studio on this host for the `label-studio` action "
                       "(`make labelstudio` installs it).",
                  no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout, nothing else")]


@app.command()
def up(ctx: typer.Context,
       venv: Annotated[Path | None, typer.Option(help="the venv holding `label-studio` (default: "
                                                   "label_studio.converter_python's, else `make labelstudio`'s "
                                                   "var/labelstudio/venv)")] = None) -> None:
    """Start Label Studio (its data under `<ssd.root>/state/labelstudio`, serving zone 3C's staged
    files, one user and its token made once) unless it runs; return once it answers."""
    cfg = state(ctx).settings
    got = local.up(cfg, venv=venv)
    where = local.local_of(cfg)
    if got.started:
        out.print(f"label studio: started at {got.url} (pid {got.pid}); sign in as {local.USERNAME} with the "
                  f"password in {display(str(where.password_file))}; `hoard labelstudio token` prints the API "
                  "token", markup=False)
    else:
        out.print(f"label studio: already running at {got.url} (pid {got.pid})", markup=False)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the Label Studio `up` started (nothing else); its data stays."""
    pid = local.down(state(ctx).settings)
    out.print("label studio: not running" if pid is None else f"label studio: stopped (pid {pid})", markup=False)


@app.command()
def status(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Say whether it runs and where (exit 3 when it does not)."""
    doc = local.status(state(ctx).settings)
    if as_json:
        out.print(json.dumps(doc), markup=False)
    else:
        out.print(f"label studio: {'running' if doc['running'] else 'stopped'} at {doc['url']}"
                  + (f" (pid {doc['pid']})" if doc["running"] else ""), markup=False)
    if not doc["running"]:
        raise HoardError(f"Label Studio is not running at {doc['url']}; start it with `hoard labelstudio up`",
                         ExitCode.UNAVAILABLE)


@app.command()
def token(ctx: typer.Context) -> None:
    """Print the API token AC5 uses (for Label Studio's API, or a script of yours)."""
    out.print(local.token(state(ctx).settings), markup=False)
