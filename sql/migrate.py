"""Versioned SQL migrations: `sql/migrations/NNN_name.sql`, applied in order by `hoard db migrate`.

Each migration runs in its own transaction together with its row in `schema_version`,
under an advisory lock, so two processes migrating at once apply each file exactly once
and a failing file leaves the database at the previous version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.rows import one

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x686F617264  # "hoard"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def available() -> list[Migration]:
    out = []
    for p in sorted(MIGRATIONS.glob("*.sql")):
        m = re.fullmatch(r"(\d{3})_([a-z0-9_]+)\.sql", p.name)
        if not m:
            raise HoardError(f"{p}: migration files are named NNN_name.sql", ExitCode.BUG)
        out.append(Migration(int(m.group(1)), m.group(2), p))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise HoardError(f"migrations must be numbered 1..n without gaps, found {versions}", ExitCode.BUG)
    return out


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    return one(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version"))[0]


def migrate(conn: psycopg.Connection, target: int | None = None) -> list[int]:
    """Apply every migration above the current version (up to `target`); return what was applied."""
    migrations = available()
    target = migrations[-1].version if target is None else target
    applied = []
    with conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                     " version integer PRIMARY KEY, name text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")
    for m in migrations:
        if m.version > target:
            break
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
            if current_version(conn) >= m.version:
                continue
            try:
                conn.execute(m.path.read_text())
            except psycopg.Error as e:
                raise HoardError(f"migration {m.path.name} failed: {str(e).strip().splitlines()[0]}; "
                                 f"the database stays at version {m.version - 1}", ExitCode.BUG) from None
            conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", [m.version, m.name])
            applied.append(m.version)
    latest = current_version(conn)
    if latest > migrations[-1].version:
        raise HoardError(f"the database is at schema version {latest}, newer than this hoardfs knows "
                         f"({migrations[-1].version}); upgrade hoardfs", ExitCode.USAGE)
    return applied
