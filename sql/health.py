"""The database's part of `hoard health`: reachability, version, size, backups, and the
problems they show (`hoardfs.jobs.health` puts every part together)."""

from __future__ import annotations

from typing import Any

import psycopg

from hoardfs.base.errors import first_line
from hoardfs.sql.migrate import available
from hoardfs.sql.rows import one


def database_status(url: str, timeout: float = 5) -> dict[str, Any]:
    """A JSON-able status of the database at `url`; never raises for a down server."""
    try:
        with psycopg.connect(url, connect_timeout=int(max(1, timeout))) as conn:
            row = conn.execute(
                "SELECT current_database(), current_setting('server_version'), "
                "pg_database_size(current_database()), to_regclass('schema_version') IS NOT NULL"
            ).fetchone()
            assert row is not None
            version = one(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version"))[0] \
                if row[3] else 0
            long_tx = one(conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND xact_start < now() - interval '10 minutes'"))[0]
            last, per_kind = None, {}
            if one(conn.execute("SELECT to_regclass('backup_log') IS NOT NULL"))[0]:
                for kind, age, size, ok, detail in conn.execute(
                        "SELECT DISTINCT ON (kind) kind, extract(epoch FROM now() - finished_at), size_bytes, "
                        "verify_ok, verify_detail FROM backup_log ORDER BY kind, finished_at DESC"):
                    per_kind[kind] = {"age_s": round(float(age)), "size_bytes": size, "verified": ok,
                                      "verify_detail": detail}
                b = conn.execute("SELECT kind, extract(epoch FROM now() - finished_at), size_bytes, verify_ok, "
                                 "verify_detail FROM backup_log ORDER BY finished_at DESC LIMIT 1").fetchone()
                if b:
                    last = {"kind": b[0], "age_s": round(float(b[1])), "size_bytes": b[2], "verified": b[3],
                            "verify_detail": b[4]}
            return {"ok": True, "database": row[0], "server_version": row[1], "size_bytes": row[2],
                    "schema_version": version, "long_transactions": long_tx, "last_backup": last,
                    "backups": per_kind}
    except psycopg.Error as e:
        first = first_line(e)
        return {"ok": False, "error": first}


def database_problems(db: dict[str, Any]) -> list[str]:
    """The lines of `hoard health` about the database (`db`: database_status), each naming the
    next step: unreachable, no or failed or old backups, a schema older than this hoardfs."""
    problems: list[str] = []
    if not db["ok"]:
        problems.append(f"database: {db['error']}; start it with `hoard services up` or fix database_url")
    else:
        if not db.get("backups"):
            problems.append("database: no backup was ever taken; run `hoard db backup` and enable "
                            "hoard-backup.timer (systemd/) so one is taken every night")
        for kind, b in (db.get("backups") or {}).items():
            if b["verified"] is False:
                problems.append(f"database: the last {kind} backup failed its restore-verify ({b['verify_detail']}); "
                                f"run `hoard db backup --type {kind}` and `hoard db verify-backup`")
            if b["age_s"] > 8 * 86400 and kind in ("dump", "full"):
                problems.append(f"database: the last {kind} backup is {b['age_s'] // 86400} days old; is "
                                "hoard-backup.timer running?")
        latest = available()[-1].version
        if db["schema_version"] < latest:
            problems.append(f"database: schema version {db['schema_version']}, this hoardfs needs {latest}; "
                            "run `hoard db migrate`")
    return problems
