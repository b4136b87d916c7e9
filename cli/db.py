"""`hoard db …`: migrations, status, backups (dump and pgBackRest), restore-verify, restore, proposals."""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import psycopg
import psycopg.conninfo
import typer

from hoardfs.base.errors import ExitCode, HoardError, ServiceUnavailable
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import confirm, out, progress, state
from hoardfs.cli.store import open_store
from hoardfs.fsd.core import pointers
from hoardfs.sql.backup import (
    dump_backup,
    full_backup_within,
    has_physical_backup,
    latest_dump,
    restore_dump,
    verify_dump,
)
from hoardfs.sql.cluster import PrivateCluster
from hoardfs.sql.health import database_status
from hoardfs.sql.migrate import available, current_version
from hoardfs.sql.migrate import migrate as run
from hoardfs.sql.pgbackrest import BackRest
from hoardfs.sql.schema_decider import accept as do_accept
from hoardfs.sql.schema_decider import list_proposals, source_table_rows
from hoardfs.sql.schema_decider import reject as do_reject
from hoardfs.sql.system import BACKREST_CONF, DATABASE

app = typer.Typer(help="The PostgreSQL database: migrate, status, backup, verify-backup, restore, proposals.",
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
    target: Annotated[int | None, typer.Option(help="stop at this schema version")] = None,
) -> None:
    """Apply the schema migrations that are missing (idempotent)."""

    with connect(ctx) as conn:
        applied = run(conn, target)
        out.print(f"schema version {current_version(conn)}"
                  + (f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"))


@app.command()
def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Schema version, server version and database size."""

    st = database_status(state(ctx).settings.database_url)
    if st["ok"]:
        with connect(ctx) as conn:
            st["schema_version"] = current_version(conn)
        st["schema_latest"] = available()[-1].version
    if as_json:
        out.print(json.dumps(st), markup=False)
    elif st["ok"]:
        last = st.get("last_backup")
        out.print(f"database:  {st['database']} (PostgreSQL {st['server_version']}), "
                  f"{fmt_bytes(st['size_bytes'])}\n"
                  f"schema:    version {st['schema_version']} of {st['schema_latest']}"
                  + ("" if st["schema_version"] == st["schema_latest"] else " — run `hoard db migrate`") + "\n"
                  "backup:    " + (f"{last['kind']}, {last['age_s'] / 3600:.1f} h ago, verified: {last['verified']}"
                                    if last else "none yet — `hoard db backup`")
                  + (f"\nlong transactions: {st['long_transactions']}" if st["long_transactions"] else ""),
                  markup=False)
    if not st["ok"]:
        raise HoardError(f"the database is unreachable ({st['error']}); `hoard services up` or check database_url",
                         ExitCode.UNAVAILABLE)


def backrest_for(cfg):
    """The pgBackRest stanza of the embedded cluster (None when hoardfs does not run the
    server, or pgbackrest is not installed)."""

    e = cfg.embedded
    if e is None or not e.postgres or os.environ.get("HOARD_DATABASE_URL") or not shutil.which("pgbackrest"):
        return None
    return BackRest.for_cluster(_cluster(cfg), [d.path for d in cfg.disks if d.kind == "local"])


def _cluster(cfg):

    return PrivateCluster(cfg.embedded.pg_dir, cfg.embedded.pg_socket_dir)


def _need_backrest(cfg):
    br = backrest_for(cfg)
    if br is None:
        raise HoardError("pgBackRest runs only for the embedded cluster here; for your own server configure it as "
                         "`hoard db backup --setup` prints, and let its own timer run the backups", ExitCode.USAGE)
    return br


@app.command()
def backup(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option("--type", help="dump (pg_dump stored in S01 + copy in 3B); full|diff: "
                                                     "pgBackRest; auto: full weekly, else diff")] = "dump",
    setup: Annotated[bool, typer.Option("--setup", help="configure pgBackRest (or print how, for your own server)")] = False,
) -> None:
    """Back the database up and record it (see docs/database.md)."""

    cfg = state(ctx).settings
    if setup:
        br = backrest_for(cfg)
        if br is None:

            out.print(BackRest.setup_text())
            return
        for line in br.setup(cfg.database_url, _cluster(cfg)):
            out.print(line)
        if br.note:
            out.print(f"note: {br.note}")
        return
    if kind in ("full", "diff", "auto"):
        br = _need_backrest(cfg)
        br.setup(cfg.database_url, _cluster(cfg))
        if kind == "auto":
            kind = _auto_kind(cfg.database_url)
        res = br.backup(cfg.database_url, kind)
        out.print(f"{res['kind']} backup {res['label']}: {fmt_bytes(res['size'])} into {res['repo']} "
                  f"(backup_log {res['backup_id']})")
        return
    if kind != "dump":
        raise HoardError(f"--type {kind!r}: dump, full, diff or auto", ExitCode.USAGE)
    with open_store(ctx) as store, progress("database dump", 3, unit="steps") as update:
        res = dump_backup(cfg.database_url, store, cfg.ssd.zone_path("3B"), progress=update)
    out.print(f"dump {res.backup_id}: {fmt_bytes(res.size)}, {sum(res.row_counts.values())} rows, stored as "
              f"{res.sha256} and copied to {res.location} in {res.seconds:.1f} s")


def _auto_kind(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return "diff" if full_backup_within(conn, 7) else "full"


@app.command("system-backup")
def system_backup(
    kind: Annotated[str, typer.Option("--type", help="full, diff, or auto (full when the last full one is a week "
                                                     "old)")] = "auto",
    conf: Annotated[Path, typer.Option("--conf", help="the stanza's configuration")] = BACKREST_CONF,
    database: Annotated[str, typer.Option("--database", help="hoardfs's database on that cluster")] = DATABASE,
) -> None:
    """pgBackRest backup of the system cluster, then its restore-verify; as the postgres user
    (hoard-pgbackrest@.service). Recorded in backup_log, which `hoard health` reads."""
    if kind not in ("full", "diff", "auto"):
        raise HoardError(f"--type {kind!r}: full, diff or auto", ExitCode.USAGE)
    if pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        raise HoardError("pgBackRest reads the cluster's files, which only postgres may: run it as postgres "
                         "(`runuser -u postgres -- hoard db system-backup`; hoard-pgbackrest@.service does)",
                         ExitCode.USAGE)
    br = BackRest.system(conf)
    url = psycopg.conninfo.make_conninfo(host=str(br.socket_dir), dbname=database)
    res = br.backup(url, _auto_kind(url) if kind == "auto" else kind)
    out.print(f"{res['kind']} backup {res['label']}: {fmt_bytes(res['size'])} into {res['repo']} "
              f"(backup_log {res['backup_id']})")
    checked = br.verify_latest(url, None, scratch_in=Path.home())
    out.print(f"pgbackrest {checked.backup_id}: {'OK' if checked.ok else 'FAILED'} — {checked.detail} "
              f"({checked.seconds:.1f} s)", markup=False)
    if not checked.ok:
        raise typer.Exit(ExitCode.DATA)


@app.command("verify-backup")
def verify_backup(ctx: typer.Context) -> None:
    """Restore the latest dump (scratch database) and the latest pgBackRest backup (scratch
    cluster) and check both; exit 5 if one fails."""

    cfg = state(ctx).settings
    failed = False
    with open_store(ctx, writable=False) as store:
        res = verify_dump(cfg.database_url, store)
        out.print(f"dump {res.backup_id}: {'OK' if res.ok else 'FAILED'} — {res.detail} ({res.seconds:.1f} s)")
        failed |= not res.ok
        br = backrest_for(cfg)
        if br is not None and _has_physical(cfg.database_url):
            res = br.verify_latest(cfg.database_url, store)
            out.print(f"pgbackrest {res.backup_id}: {'OK' if res.ok else 'FAILED'} — {res.detail} ({res.seconds:.1f} s)")
            failed |= not res.ok
    if failed:
        raise typer.Exit(ExitCode.DATA)


def _has_physical(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return has_physical_backup(conn)


@app.command()
def restore(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--from", help="pgbackrest (the whole cluster) or dump (this database)")],
    set_label: Annotated[str | None, typer.Option("--set", help="pgbackrest: go back to this backup's own "
                                                                   "state (default: everything archived)")] = None,
    backup_id: Annotated[int | None, typer.Option(help="dump: which one (default: the latest)")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="skip the typed confirmation (scripts)")] = False,
) -> None:
    """Replace the database with a backup — asks you to type the database name first."""
    cfg = state(ctx).settings
    dbname = str(psycopg.conninfo.conninfo_to_dict(cfg.database_url).get("dbname", "hoard"))
    what = (f"the whole PostgreSQL cluster (every database) from pgBackRest {set_label or '(latest + WAL)'}"
            if source == "pgbackrest" else f"database {dbname} from dump {backup_id or '(latest)'}")
    if source not in ("pgbackrest", "dump"):
        raise HoardError("--from pgbackrest or --from dump", ExitCode.USAGE)
    if source == "pgbackrest":  # which cluster, and whether this user may restore it, before asking
        br = backrest_for(cfg)
        replace: Callable[[str | None], Path]
        if br is not None:
            replace = functools.partial(br.restore, _cluster(cfg))
        elif BACKREST_CONF.exists():  # the system cluster `hoard install` set pgBackRest up for
            replace = BackRest.system_restorer(BACKREST_CONF).restore_system
        else:
            _need_backrest(cfg)  # says why it cannot
    if not yes:
        confirm(f"This replaces {what}. Changes since that backup are lost (pgbackrest keeps the old data "
                "directory beside the new one).", typed=dbname)
    if source == "pgbackrest":
        kept = replace(set_label)
        out.print(f"restored; the previous data directory is kept at {kept} (delete it when satisfied)")
        return

    with open_store(ctx, writable=False) as store:
        sha = None if backup_id is not None or _recorded_dump(cfg.database_url) else _dump_on_disks(store)
        n = restore_dump(cfg.database_url, store, backup_id, sha)
    which = f"dump {n}" if sha is None else f"the dump the disks name ({sha})"
    out.print(f"database {dbname} restored from {which}; `hoard db migrate` if it is from an older schema")


def _recorded_dump(url: str) -> bool:
    """Whether the database records a dump (a new server's empty one does not: the dump the
    disks name is restored then, docs/operations.md "Move to a new server")."""
    with psycopg.connect(url, autocommit=True) as conn:
        return latest_dump(conn) is not None


def _dump_on_disks(store) -> str:
    """The sha256 of the latest dump the HDDs name (`.hoard-db-dump.json`, kept by the index and
    found again by `hoard index rebuild`)."""
    body = store.index.pointer_bodies()[1].get(pointers.DB_DUMP)
    if body is None:
        raise HoardError("the database records no dump and no disk names one (`.hoard-db-dump.json`): run "
                         "`hoard db backup` on the old server, or `hoard index rebuild` if its disks hold one",
                         ExitCode.USAGE)
    return str(pointers.decode(body, pointers.DB_DUMP)["sha256"])


@app.command()
def proposals(
    ctx: typer.Context,
    accept: Annotated[int | None, typer.Option("--accept", metavar="N", help="create proposal N's table")] = None,
    reject: Annotated[int | None, typer.Option("--reject", metavar="N", help="drop proposal N")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="also accepted, rejected and superseded ones")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the listing as JSON")] = False,
) -> None:
    """SchemaDecider proposals: typed `src_<source>` tables for sources' specific fields."""

    with connect(ctx) as conn:
        if accept is not None:
            prop = do_accept(conn, accept)
            cols = sum(1 for f in prop.fields if f["column"])
            n = source_table_rows(conn, prop.source)
            out.print(f"proposal {accept} accepted: table src_{prop.source} with {cols} columns + extra, "
                      f"{n} rows filled from the metadata already ingested")
            return
        if reject is not None:
            do_reject(conn, reject)
            out.print(f"proposal {reject} rejected; the fields stay in common_metadata.specific")
            return
        props = list_proposals(conn, include_decided=show_all)
    if as_json:
        out.print(json.dumps({"proposals": [p.model_dump(mode="json") if hasattr(p, "model_dump") else vars(p)
                                            for p in props]}, default=str), markup=False)
        return
    if not props:
        out.print("no proposals" + ("" if show_all else " waiting (--all shows decided ones)"))
    for p in props:
        columns = [f for f in p.fields if f["column"]]
        out.print(f"[bold]{p.proposal_id}[/] {p.source}: {p.status}, {p.sample_count} samples, "
                  f"{len(columns)} columns, {len(p.fields) - len(columns)} fields in extra")
        for f in p.fields:
            where = f"{f['column']} {f['sql_type']}" if f["column"] else "extra"
            out.print(f"    {f['path']:<40} {where:<32} present {f['presence']:.0%}, {f['type']} {f['type_share']:.0%}")
        out.print(f"    accept: hoard db proposals --accept {p.proposal_id}")


@app.command("shell")
def db_shell(ctx: typer.Context) -> None:
    """psql on the configured database (the test and working databases are never mixed up)."""
    psql = shutil.which("psql")
    if psql is None:
        raise HoardError("psql is not installed (Debian package postgresql-client)", ExitCode.UNAVAILABLE)
    os.execv(psql, ["psql", state(ctx).settings.database_url])
