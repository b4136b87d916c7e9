"""`hoard label add|rm`: labels by hand, on nodes named by sha256, by a list or by a selector.

The labels go into the database as one write-intent per command (hoardfs.sql.labels), with their
origin — the command and the user who ran it — in `label.origin`.
"""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.cli._common import database, out, read_sha_list, state
from hoardfs.cli.find import read_selector
from hoardfs.sql.labels import change_labels
from hoardfs.sql.selectors import parse_selector, query_nodes

app = typer.Typer(help="Labels on nodes, by hand: `hoard label add|rm KEY[=VALUE] (--nodes FILE | --selector FILE "
                       "| SHA256 …)`; `hoard select --label KEY=VALUE` and by_label layouts see them.",
                  no_args_is_help=True)

_SHA = re.compile(r"[0-9a-f]{64}")

Label = Annotated[str, typer.Argument(metavar="LABEL", help="KEY=VALUE, or KEY (an empty value; "
                                      "for rm: every value of KEY)")]
Shas = Annotated[list[str] | None, typer.Argument(metavar="SHA256...", help="nodes by sha256")]
Nodes = Annotated[Path | None, typer.Option("--nodes", help="a file of sha256s, one per line ('-' = stdin; "
                                               "`hoard select` output works as it is)")]
Sel = Annotated[Path | None, typer.Option("--selector", help="a selector file as `hoard select --file` takes "
                                             "(docs/selectors.md)")]
AsJson = Annotated[bool, typer.Option("--json", help="the counts as one JSON object")]


@app.command("add")
def add(ctx: typer.Context, label: Label, shas: Shas = None, nodes: Nodes = None, selector: Sel = None,
        as_json: AsJson = False) -> None:
    """Put a label on nodes (idempotent: a node that has it already is counted, not changed)."""
    _run(ctx, "add", label, shas, nodes, selector, as_json)


@app.command("rm")
def rm(ctx: typer.Context, label: Label, shas: Shas = None, nodes: Nodes = None, selector: Sel = None,
       as_json: AsJson = False) -> None:
    """Take a label off nodes (KEY alone: every value of KEY; a node without it is counted, not changed)."""
    _run(ctx, "rm", label, shas, nodes, selector, as_json)


def _run(ctx: typer.Context, verb: str, label: str, shas: list[str] | None, nodes: Path | None,
         selector: Path | None, as_json: bool) -> None:

    key, eq, value = label.partition("=")
    key = key.strip()
    if not key:
        raise HoardError(f"label {display(label)!r} names no key: write KEY or KEY=VALUE (e.g. class=cat)",
                         ExitCode.USAGE)
    if sum(map(bool, (shas, nodes, selector))) != 1:
        raise HoardError(f"name the nodes one way: `hoard label {verb} {display(label)} SHA256 …`, --nodes FILE or "
                         "--selector FILE", ExitCode.USAGE)
    wanted: list[str] = []
    if shas:
        for s in shas:
            if not _SHA.fullmatch(s.strip().lower()):
                raise HoardError(f"{display(s)!r} is not a sha256 (64 hex digits); nothing was changed",
                                 ExitCode.USAGE)
        wanted = list(dict.fromkeys(s.strip().lower() for s in shas))
    elif nodes is not None:
        wanted = read_sha_list(nodes, "node list")
    sel = parse_selector(read_selector(selector)) if selector is not None else None
    origin = f"hoard label {verb} ({_user()})"
    with database(state(ctx).settings, needed_for=f"`hoard label {verb}` writes to the database") as conn:
        if sel is not None:
            wanted = query_nodes(conn, sel).sha256
            if not wanted:
                raise HoardError(f"selector {display(str(selector))} selects no node; nothing was changed "
                                 "(`hoard select --file` shows what it selects)", ExitCode.USAGE)
        res = change_labels(conn, wanted, key, value.strip() if eq else (None if verb == "rm" else ""),
                            remove=verb == "rm", origin=origin)
    shown = f"{key}={value.strip()}" if eq else key
    if as_json:
        out.print(json.dumps({"label": shown, "nodes": res.nodes, "changed": res.changed, "already": res.already}),
                  markup=False)
    elif verb == "add":
        out.print(f"label {shown}: {res.changed} nodes labelled, {res.already} had it already", markup=False)
    else:
        out.print(f"label {shown}: {res.changed} nodes unlabelled, {res.already} did not have it", markup=False)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown user"
