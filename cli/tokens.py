"""`hoard tokens`: the bearer tokens remote scrapers upload batches with (`POST /api/v1/batches`
of `hoard gui`; sha256 hashes in api.tokens_file — hoardfs.jobs.tokens, docs/http-ingest.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from hoardfs.cli._common import err, out, print_rows, state
from hoardfs.jobs import tokens

app = typer.Typer(help="Upload tokens of remote scrapers (HTTP ingest): add, list, rm.", no_args_is_help=True)


@app.command("add")
def add(ctx: typer.Context, name: Annotated[str, typer.Argument(help="the scraper's name")]) -> None:
    """Make a token for scraper NAME and print it once (only its sha256 is kept)."""
    token = tokens.add(state(ctx).settings, name)
    out.print(token, markup=False)  # alone on stdout: `TOKEN=$(hoard tokens add NAME)`
    err.print(f"token {name} added; it is shown this once — give it to the scraper as "
              "`Authorization: Bearer TOKEN` (`hoard tokens rm NAME` revokes it)", markup=False)


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The tokens' names and when each was made (never the tokens)."""
    found = sorted(tokens.tokens(state(ctx).settings).values(), key=lambda t: t.name)
    rows = [{"name": t.name, "created": t.created} for t in found]
    print_rows(rows, as_json, "no tokens; `hoard tokens add NAME` makes one for a scraper",
               lambda r: f"{r['name']:<20} {r['created']}")


@app.command("rm")
def rm(ctx: typer.Context, name: Annotated[str, typer.Argument(help="the scraper's name")]) -> None:
    """Revoke a token: its next request is refused (401)."""
    tokens.remove(state(ctx).settings, name)
    out.print(f"token {name} revoked")
