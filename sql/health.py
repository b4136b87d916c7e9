"""Database health for `hoard health`: reachability, version, size (grows with W1-C)."""

from __future__ import annotations

from typing import Any

import psycopg


def database_status(url: str, timeout: float = 5) -> dict[str, Any]:
    """A JSON-able status of the database at `url`; never raises for a down server."""
    try:
        with psycopg.connect(url, connect_timeout=int(max(1, timeout))) as conn:
            row = conn.execute(
                "SELECT current_database(), current_setting('server_version'), "
                "pg_database_size(current_database())"
            ).fetchone()
            assert row is not None
            return {"ok": True, "database": row[0], "server_version": row[1], "size_bytes": row[2]}
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"ok": False, "error": first}
