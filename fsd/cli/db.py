"""`hoard db …`: schema migrations and database status (backup arrives with the rest of W1-C)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import psycopg
import typer

from fsd.cli._common import out, state
from fsd.errors import NotBuilt, ServiceUnavailable

app = typer.Typer(help="The PostgreSQL database: migrate, status (backup, verify-backup, restore: W1-C).",
                  no_args_is_help=True)


def connect(ctx: typer.Context) -> psycopg.Connection:
    url = state(ctx).settings.database_url
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ServiceUnavailable(f"cannot reach the database: {str(e).strip().splitlines()[0]}; "
                                 "`hoard services up` starts the embedded one") from None


@app.command()
def migrate(
    ctx: typer.Context,
    target: Annotated[Optional[int], typer.Option(help="stop at this schema version")] = None,
) -> None:
    """Apply the schema migrations that are missing (idempotent)."""
    from sql.migrate import current_version, migrate as run

    with connect(ctx) as conn:
        applied = run(conn, target)
        out.print(f"schema version {current_version(conn)}"
                  + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Schema version, server version and database size."""
    from sql.health import database_status
    from sql.migrate import available, current_version

    st = database_status(state(ctx).settings.database_url)
    if st["ok"]:
        with connect(ctx) as conn:
            st["schema_version"] = current_version(conn)
        st["schema_latest"] = available()[-1].version
    out.print(json.dumps(st) if as_json else
              ", ".join(f"{k}: {v}" for k, v in st.items()))


@app.command()
def backup(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option("--type", help="dump (pg_dump stored in S01 + copy in 3B); full|diff: pgBackRest")] = "dump",
) -> None:
    """Back the database up and record it (see docs/database.md)."""
    from fsd.cli.store import open_store
    from sql.backup import dump_backup

    if kind != "dump":
        raise NotBuilt(f"`hoard db backup --type {kind}` (pgBackRest) is not built yet; it arrives with W1-C (issue 5)")
    cfg = state(ctx).settings
    with open_store(ctx) as store:
        res = dump_backup(cfg.database_url, store, cfg.ssd.zone_path("3B"))
    out.print(f"dump {res.backup_id}: {res.size / 1e6:.1f} MB, {sum(res.row_counts.values())} rows, stored as "
              f"{res.sha256} and copied to {res.location} in {res.seconds:.1f} s")


@app.command("verify-backup")
def verify_backup(ctx: typer.Context) -> None:
    """Restore the latest dump into a scratch database and check it; exit 5 if it fails."""
    from fsd.cli.store import open_store
    from fsd.errors import ExitCode
    from sql.backup import verify_dump

    with open_store(ctx, writable=False) as store:
        res = verify_dump(state(ctx).settings.database_url, store)
    out.print(f"dump {res.backup_id}: {'OK' if res.ok else 'FAILED'} — {res.detail} ({res.seconds:.1f} s)")
    if not res.ok:
        raise typer.Exit(ExitCode.DATA)


@app.command()
def proposals(
    ctx: typer.Context,
    accept: Annotated[Optional[int], typer.Option("--accept", metavar="N", help="create proposal N's table")] = None,
    reject: Annotated[Optional[int], typer.Option("--reject", metavar="N", help="drop proposal N")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="also accepted, rejected and superseded ones")] = False,
) -> None:
    """SchemaDecider proposals: typed src_<source> tables for sources' specific fields."""
    from sql.schema_decider import ProposalError, accept as do_accept, list_proposals

    with connect(ctx) as conn:
        if accept is not None:
            prop = do_accept(conn, accept)
            cols = sum(1 for f in prop.fields if f["column"])
            n = conn.execute(f"SELECT count(*) FROM src_{prop.source}").fetchone()[0]
            out.print(f"proposal {accept} accepted: table src_{prop.source} with {cols} columns + extra, "
                      f"{n} rows filled from the metadata already ingested")
            return
        if reject is not None:
            cur = conn.execute("UPDATE schema_proposal SET status = 'rejected', decided_at = now() "
                               "WHERE proposal_id = %s AND status = 'provisional'", [reject])
            if cur.rowcount == 0:
                raise ProposalError(f"no provisional proposal {reject}; `hoard db proposals --all` lists them")
            out.print(f"proposal {reject} rejected; the fields stay in common_metadata.specific")
            return
        props = list_proposals(conn, include_decided=show_all)
    if not props:
        out.print("no proposals" + ("" if show_all else " waiting (--all shows decided ones)"))
    for p in props:
        cols = [f for f in p.fields if f["column"]]
        out.print(f"[bold]{p.proposal_id}[/] {p.source}: {p.status}, {p.sample_count} samples, "
                  f"{len(cols)} columns, {len(p.fields) - len(cols)} fields in extra")
        for f in p.fields:
            where = f"{f['column']} {f['sql_type']}" if f["column"] else "extra"
            out.print(f"    {f['path']:<40} {where:<32} present {f['presence']:.0%}, {f['type']} {f['type_share']:.0%}")
        out.print(f"    accept: hoard db proposals --accept {p.proposal_id}")


for _name in ("restore",):
    def _pending(ctx: typer.Context, _n: str = _name) -> None:
        raise NotBuilt(f"`hoard db {_n}` is not built yet; it arrives with W1-C (issue 5)")

    app.command(_name, help="(arrives with W1-C)",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_pending)
