"""Logical backups: `pg_dump -Fc` stored as an object in S01 (replicated on the HDDs, so a
dead SSD loses nothing) and copied to zone 3B for cold storage; restore-verify into a
scratch database. (pgBackRest full/diff backups: hoardfs.sql.pgbackrest.)

The dump and the row counts it is checked against come from one snapshot: a REPEATABLE
READ transaction exports it and `pg_dump --snapshot` uses it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_copy
from hoardfs.base.proc import which
from hoardfs.sql.deletion import sample_held
from hoardfs.sql.rows import one

#: the store the dumps are put into and read back from: a `hoardfs.fsd.store.Store` (sql does not
#: import fsd, its sibling, even for a type)
Store = Any


@dataclass
class DumpResult:
    backup_id: int
    sha256: str
    size: int
    location: Path
    row_counts: dict[str, int]
    seconds: float


@dataclass
class VerifyResult:
    backup_id: int
    ok: bool
    detail: str
    seconds: float


def _tables(conn: psycopg.Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", [schema]).fetchall()]


def table_counts(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    """Each table of `schema` (but the backup log) → its rows."""
    return {t: one(conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(t))
                            ))[0] for t in _tables(conn, schema) if t != "backup_log"}


def dump_backup(url: str, store: Store, zone3b: Path, label: str = "hoard",
                progress: Callable[[int, int], None] | None = None) -> DumpResult:
    """pg_dump the database at `url` (its current schema), store it, copy it to 3B, record it.
    `progress(done, 3)` after each of the three steps (dump, store, cold copy)."""
    step = progress or (lambda done, total: None)
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        schema = one(conn.execute("SELECT current_schema()"))[0]
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = one(conn.execute("SELECT pg_export_snapshot()"))[0]
        counts = table_counts(conn, schema)
        with tempfile.TemporaryDirectory(prefix="hoard-dump-") as tmp:
            out = Path(tmp) / "db.dump"
            res = subprocess.run([which("pg_dump", "postgresql-client"), "-Fc", f"--snapshot={snapshot}",
                                  f"--schema={schema}", "--exclude-table-data=backup_log",
                                  f"--dbname={url}", f"--file={out}"], capture_output=True, text=True)
            conn.execute("ROLLBACK")  # the snapshot is needed only until pg_dump has finished
            if res.returncode != 0:
                raise HoardError(f"pg_dump failed: {res.stderr.strip().splitlines()[-1]}", ExitCode.UNAVAILABLE)
            step(1, 3)
            [put] = store.put_many([out], klass="generated")
            step(2, 3)
            size = out.stat().st_size
            name = f"{label}-{started:%Y%m%dT%H%M%SZ}-{put.sha256[:12]}.dump"
            dest = zone3b / "db-dumps" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(out, dest)  # streamed: a dump may be larger than memory
            step(3, 3)
        _point_disks_at(store, {"sha256": put.sha256, "size": size, "taken_at": started.isoformat(),
                                "schema": schema, "cold_copy": str(dest)})
        backup_id = one(conn.execute(
            "INSERT INTO backup_log (kind, started_at, finished_at, size_bytes, sha256, location, row_counts) "
            "VALUES ('dump', %s, now(), %s, %s, %s, %s) RETURNING backup_id",
            [started, size, bytes.fromhex(put.sha256), str(dest), json.dumps(counts)]))[0]
    return DumpResult(backup_id, put.sha256, size, dest, counts, time.monotonic() - t0)


#: (the store keeps it as hoardfs.fsd.core.pointers.DB_DUMP: sql does not import fsd)
POINTER = ".hoard-db-dump.json"


def _point_disks_at(store: Store, doc: dict[str, Any]) -> None:
    """Write the latest dump's sha256 to every HDD in service's root (and, kept by the index,
    to a disk added or back later): with the SSD (index, database, zone 3B) lost, `cat
    /srv/hdd/*/.hoard-db-dump.json` names the object to `hoard get` after `hoard index rebuild`."""
    store.keep_pointer(POINTER, doc)


def _dump_row(conn: psycopg.Connection, backup_id: int | None) -> tuple[int, str, dict]:
    """(backup_id, sha256 hex, row counts) of a recorded dump: that one, or the latest."""
    row = conn.execute("SELECT backup_id, encode(sha256, 'hex'), row_counts FROM backup_log WHERE kind = 'dump' "
                       + ("AND backup_id = %s " if backup_id else "") + "ORDER BY finished_at DESC LIMIT 1",
                       [backup_id] if backup_id else []).fetchone()
    if row is None:
        raise HoardError("no dump recorded" + (f" with id {backup_id}" if backup_id else "")
                         + "; run `hoard db backup --type dump` first", ExitCode.USAGE)
    return row


def sampled_not_in_store(conn: psycopg.Connection, schema: str, store: Store, sample: int) -> list[str]:
    """The problem, if any, of a restored database's sample of nodes whose bytes the store must
    hold (deleted nodes no batch holds are left out: gc frees their bytes by design)."""
    shas = sample_held(conn, schema, sample)
    missing = [s.hex() for s in shas if store.index.lookup(s) is None]
    return [f"{len(missing)} of {len(shas)} sampled nodes are not in the store, e.g. {missing[0]}"] if missing else []


def verify_dump(url: str, store: Store, backup_id: int | None = None, sample: int = 200) -> VerifyResult:
    """Restore a dump (default: the latest) from the store into a scratch database and check it:
    the restore itself (every constraint, foreign keys included, is re-created and validated),
    row counts against the dump's snapshot, and that sampled physical nodes exist in the store."""
    t0 = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        backup_id, sha, counts = _dump_row(conn, backup_id)
        schema = one(conn.execute("SELECT current_schema()"))[0]
        scratch = f"hoard_verify_{os.getpid()}_{int(time.time())}"
        problems: list[str] = []
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        try:
            with tempfile.TemporaryDirectory(prefix="hoard-verify-") as tmp:
                dump = Path(tmp) / "db.dump"
                with open(dump, "wb") as f:  # streamed: a dump may be larger than memory
                    store.copy_object_to(bytes.fromhex(sha), f)
                scratch_url = psycopg.conninfo.make_conninfo(url, dbname=scratch, options="")
                with psycopg.connect(scratch_url, autocommit=True) as sc:  # `public` exists in a new database
                    sc.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
                res = subprocess.run([which("pg_restore", "postgresql-client"), "--exit-on-error", "--no-owner",
                                      "-j", "2", f"--dbname={scratch_url}", str(dump)], capture_output=True, text=True)
                if res.returncode != 0:
                    problems.append(f"pg_restore failed: {res.stderr.strip().splitlines()[-1]}")
            if not problems:
                with psycopg.connect(scratch_url) as sc:
                    got = table_counts(sc, schema)
                    for table, n in counts.items():
                        if got.get(table) != n:
                            problems.append(f"table {table}: {got.get(table)} rows restored, {n} dumped")
                    problems += sampled_not_in_store(sc, schema, store, sample)
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
        ok = not problems
        detail = "; ".join(problems) if problems else f"restored {sum(counts.values())} rows in {len(counts)} tables"
        conn.execute("UPDATE backup_log SET verified_at = now(), verify_ok = %s, verify_detail = %s WHERE backup_id = %s",
                     [ok, detail, backup_id])
    return VerifyResult(backup_id, ok, detail, time.monotonic() - t0)


def restore_dump(url: str, store: Store, backup_id: int | None = None, sha: str | None = None) -> int:
    """Replace the database's schema with a dump (default: the latest recorded; `sha`: that
    object — the dump the disks name, for a database that recorded none: a new server);
    returns the backup id (0 for `sha`). The backup log survives: its rows are carried over
    from the current database."""
    with psycopg.connect(url, autocommit=True) as conn:
        if sha is None:
            backup_id, sha, _counts_then = _dump_row(conn, backup_id)
        else:
            backup_id = 0
        schema = one(conn.execute("SELECT current_schema()"))[0]
        saved = bytearray()  # the backup log survives the restore (text COPY round-trips exactly)
        with conn.cursor() as cur, cur.copy("COPY backup_log TO STDOUT") as cp:
            for chunk in cp:
                saved += chunk
        with tempfile.TemporaryDirectory(prefix="hoard-restore-") as tmp:
            dump = Path(tmp) / "db.dump"
            with open(dump, "wb") as f:
                store.copy_object_to(bytes.fromhex(sha), f)
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))  # pg_restore recreates it
            res = subprocess.run([which("pg_restore", "postgresql-client"), "--exit-on-error", "--no-owner",
                                  f"--dbname={psycopg.conninfo.make_conninfo(url, options='')}", str(dump)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise HoardError(f"pg_restore failed: {res.stderr.strip().splitlines()[-1]}; the schema {schema} "
                                 "may be incomplete — restore again or from pgBackRest", ExitCode.DATA)
        with conn.cursor() as cur, cur.copy("COPY backup_log FROM STDIN") as cp:
            cp.write(bytes(saved))
        conn.execute("SELECT setval(pg_get_serial_sequence('backup_log', 'backup_id'), "
                     "(SELECT coalesce(max(backup_id), 1) FROM backup_log))")
    return backup_id


def full_backup_within(conn: psycopg.Connection, days: int) -> bool:
    """Whether a full pgBackRest backup finished in the last `days` days (`hoard db backup
    --type auto` takes a differential one then, a full one otherwise)."""
    return conn.execute("SELECT 1 FROM backup_log WHERE kind = 'full' AND finished_at > now() - make_interval(days => %s)",
                        [days]).fetchone() is not None


def has_physical_backup(conn: psycopg.Connection) -> bool:
    """Whether a pgBackRest backup (full or differential) was ever taken."""
    return conn.execute("SELECT 1 FROM backup_log WHERE kind IN ('full', 'diff') LIMIT 1").fetchone() is not None


def latest_dump(conn: psycopg.Connection) -> tuple[int, bool | None] | None:
    """(backup_id, verify_ok) of the newest logical dump, or None."""
    row = conn.execute("SELECT backup_id, verify_ok FROM backup_log WHERE kind = 'dump' "
                       "ORDER BY finished_at DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else None
