"""The one row of a query that always returns one (an aggregate, SHOW, current_setting,
INSERT … RETURNING without ON CONFLICT): `one(conn.execute(...))[0]` instead of
`fetchone()[0]`, so that the type checker knows the row is there and a query breaking
that promise says so instead of "'NoneType' object is not subscriptable"."""

from __future__ import annotations

from typing import TypeVar

import psycopg

Row = TypeVar("Row")


def one(cur: psycopg.Cursor[Row]) -> Row:
    row = cur.fetchone()
    if row is None:
        # a bug here, not a user's mistake: the traceback shows which query
        raise RuntimeError(f"no row from a query that always returns one ({cur.statusmessage})")
    return row
