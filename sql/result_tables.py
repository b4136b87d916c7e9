"""Result tables an action's contract declares (`[result_table]`, docs/actions.md "Result tables").

hoardfs, never the worker, creates each table `result_<action>` from the contract: the
declared columns plus `node_id`, `batch_id` (the run's action_batch), `run` and `version` (the
run and the contract version that wrote the row), one row per node and batch. The registry
`result_table` says which version the table is at and what it holds (with
`result_table_version`, each version's columns; both made by the first `ensure`, under the
lock every creation and migration holds):

- the same version with other columns or types is refused (a changed table is a new version);
- a higher version migrates it: a new column is added, a column whose type changed is kept
  under `<column>__v<old version>` (its rows keep their values) and added again with the new
  type, a column the version no longer declares stays (NULL in new rows);
- a lower version than the table's is refused.

Names are never SQL text from a user: the table's name is the action id sanitised (a-z 0-9 _)
and every identifier goes through psycopg.sql.Identifier; a row's values are checked against
the registry's types (`problem`) before any statement, and only declared columns are written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from hoardfs.base.errors import ExitCode, HoardError

#: a declared column's type → its PostgreSQL type (a box is [x, y, w, h], w and h ≥ 0)
TYPES: Final = {"int": "bigint", "float": "double precision", "text": "text", "bool": "boolean",
                "json": "jsonb", "box": "double precision[]"}
#: the types a selector compares with lt/gt/…: (json and box are tested only for being there)
COMPARABLE: Final = frozenset({"int", "float", "text", "bool"})
#: a declared column's name: no `__` (kept columns are `<column>__v<N>`)
COLUMN: Final = re.compile(r"[a-z](?:_?[a-z0-9])*")
MAX_COLUMN = 40
#: the columns every result table has; a contract may not declare them
RESERVED: Final = frozenset({"node_id", "batch_id", "run", "version"})
#: the most columns a contract may declare
MAX_COLUMNS = 64
#: the longest text value (characters) and the largest json value (bytes, as JSON)
MAX_TEXT = 1 << 16
MAX_JSON = 1 << 16
_INT = 1 << 63
#: the advisory lock every table creation and migration holds ("hoardrt")
_LOCK = 0x686F61726472


class ResultTableError(HoardError):
    """A result table that cannot be made or written as asked: one line naming it (exit 2)."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


def table_name(action: str) -> str:
    """`result_<action>`: the action id with every character but a-z 0-9 _ as `_`; longer than
    PostgreSQL's 63-byte names, cut and ended by 8 hex of the id's sha256."""
    name = "result_" + re.sub(r"[^a-z0-9_]", "_", action.lower())
    if len(name) > 63:
        name = name[:54] + "_" + hashlib.sha256(action.encode()).hexdigest()[:8]
    return name


def column_problem(name: str) -> str | None:
    """Why `name` cannot be a declared column (None: it can)."""
    if name in RESERVED:
        return f"is a column every result table has ({', '.join(sorted(RESERVED))}); name it otherwise"
    if len(name) > MAX_COLUMN or not COLUMN.fullmatch(name):
        return (f"is not a column name: a-z, 0-9 and single underscores, starting with a letter, at most "
                f"{MAX_COLUMN} characters")
    return None


def problem(typ: str, v: Any) -> str | None:
    """Why `v` (already converted by the parser) is not a value of type `typ` (None: it is)."""
    if v is None:
        return None
    if typ == "int":
        if isinstance(v, bool) or not isinstance(v, int) or not -_INT <= v < _INT:
            return "must be a whole number (64-bit)"
    elif typ == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a finite number"
    elif typ == "bool":
        if not isinstance(v, bool):
            return "must be true or false"
    elif typ == "text":
        if not isinstance(v, str):
            return "must be text"
        if "\x00" in v:
            return "holds NUL, which PostgreSQL cannot store"
        if len(v) > MAX_TEXT:
            return f"is {len(v)} characters long; at most {MAX_TEXT}"
    elif typ == "box":
        if (not isinstance(v, list) or len(v) != 4
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)):
            return "must be a box: four finite numbers [x, y, w, h]"
        if v[2] < 0 or v[3] < 0:
            return "must be a box whose width and height are ≥ 0"
    elif typ == "json":
        try:
            text = json.dumps(v, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return "must be JSON (no NaN or infinity)"
        if "\\u0000" in text:
            return "holds NUL, which PostgreSQL jsonb cannot store"
        if len(text.encode()) > MAX_JSON:
            return f"is {len(text.encode())} bytes as JSON; at most {MAX_JSON}"
    else:
        return f"has an unknown type {typ!r}"
    return None


_REGISTRY = (
    "CREATE TABLE IF NOT EXISTS result_table ("
    " name text PRIMARY KEY,"                 # result_<action>, sanitised
    " action text NOT NULL UNIQUE,"           # the contract's action_id
    " version integer NOT NULL CHECK (version >= 1),"
    " columns jsonb NOT NULL,"                # {column: type} the version declares
    " all_columns jsonb NOT NULL,"            # {column: type} the table has, kept ones included
    " updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS result_table_version ("
    " name text NOT NULL REFERENCES result_table ON DELETE CASCADE,"
    " version integer NOT NULL, columns jsonb NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, version))",
)


def _has_registry(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('result_table') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _registry(conn: psycopg.Connection, name: str) -> tuple[str, int, dict[str, str], dict[str, str]] | None:
    row = conn.execute("SELECT action, version, columns, all_columns FROM result_table WHERE name = %s",
                       [name]).fetchone()
    return None if row is None else (row[0], row[1], dict(row[2]), dict(row[3]))


def _changes(old: dict[str, str], new: dict[str, str]) -> str:
    parts = [f"{c}: {old[c]} → {new[c]}" for c in sorted(old.keys() & new.keys()) if old[c] != new[c]]
    parts += [f"{c} added" for c in sorted(new.keys() - old.keys())]
    parts += [f"{c} removed" for c in sorted(old.keys() - new.keys())]
    return ", ".join(parts)


def ensure(conn: psycopg.Connection, action: str, version: int, columns: dict[str, str]) -> str:
    """The table of `action`'s `[result_table]` at contract `version`, created or migrated
    (module doc) in its own transaction; ResultTableError (one line) when it cannot be."""
    for col, typ in columns.items():
        why = column_problem(col) or (None if typ in TYPES else f"has type {typ!r}; one of {', '.join(TYPES)}")
        if why:
            raise ResultTableError(f"result_table.columns.{col}: {why}")
    name = table_name(action)
    ident = sql.Identifier(name)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        for statement in _REGISTRY:
            conn.execute(statement)
        have = _registry(conn, name)
        if have is None:
            taken = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
            if taken and taken[0]:
                raise ResultTableError(f"action {action}: its result table would be {name}, a table hoardfs holds "
                                       "already; give the action another action_id")
            body: list[sql.Composable] = [sql.SQL("node_id bigint NOT NULL REFERENCES node ON DELETE CASCADE"),
                    sql.SQL("batch_id text NOT NULL REFERENCES action_batch"),
                    sql.SQL("run text NOT NULL"), sql.SQL("version integer NOT NULL")]
            body += [_column(col, typ) for col, typ in columns.items()]
            body.append(sql.SQL("PRIMARY KEY (node_id, batch_id)"))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(body)))
            conn.execute(sql.SQL("CREATE INDEX {} ON {} (batch_id)").format(sql.Identifier(name + "_batch"), ident))
            conn.execute("INSERT INTO result_table (name, action, version, columns, all_columns) "
                         "VALUES (%s, %s, %s, %s, %s)", [name, action, version, Jsonb(columns), Jsonb(columns)])
            conn.execute("INSERT INTO result_table_version (name, version, columns) VALUES (%s, %s, %s)",
                         [name, version, Jsonb(columns)])
            return name
        owner, at, declared, physical = have
        if owner != action:
            raise ResultTableError(f"action {action}: its result table would be {name}, which action {owner} holds "
                                   "(the two ids differ only in characters a table name cannot hold); give one of "
                                   "them another action_id")
        if version == at:
            if declared == columns:
                return name
            raise ResultTableError(f"action {action}: [result_table] changed ({_changes(declared, columns)}) but the "
                                   f"contract is still version {version}, the version {name} is at; a changed "
                                   f"table is a new version — raise `version` to {at + 1}")
        if version < at:
            raise ResultTableError(f"action {action}: {name} is at version {at}, this contract is version {version}; "
                                   f"a table is never taken back — raise `version` to {at + 1}")
        for col, typ in columns.items():
            old = physical.get(col)
            if old == typ:
                continue
            if old is not None:  # the old values are kept, under the version that declared them
                kept = f"{col}__v{at}"
                n = 1
                while kept in physical:
                    n += 1
                    kept = f"{col}__v{at}_{n}"
                conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    ident, sql.Identifier(col), sql.Identifier(kept)))
                physical[kept] = old
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(ident, _column(col, typ)))
            physical[col] = typ
        conn.execute("UPDATE result_table SET version = %s, columns = %s, all_columns = %s, updated_at = now() "
                     "WHERE name = %s", [version, Jsonb(columns), Jsonb(physical), name])
        conn.execute("INSERT INTO result_table_version (name, version, columns) VALUES (%s, %s, %s) "
                     "ON CONFLICT DO NOTHING", [name, version, Jsonb(columns)])
    return name


def _column(col: str, typ: str) -> sql.Composable:
    check: sql.Composable = sql.SQL("")
    if typ == "box":
        check = sql.SQL(" CHECK (cardinality({c}) = 4 AND {c}[3] >= 0 AND {c}[4] >= 0)").format(c=sql.Identifier(col))
    return sql.SQL("{} {}{}").format(sql.Identifier(col), sql.SQL(TYPES[typ]), check)


def declared(conn: psycopg.Connection, action: str) -> tuple[str, int, dict[str, str]] | None:
    """(table, version, {column: type}) of `action`'s result table, or None when it has none."""
    if not _has_registry(conn):
        return None
    row = conn.execute("SELECT name, version, columns FROM result_table WHERE action = %s", [action]).fetchone()
    return None if row is None else (row[0], row[1], dict(row[2]))


def _adapted(typ: str, v: Any) -> Any:
    """A checked value as psycopg sends it: json as jsonb, a box as four floats."""
    if v is None:
        return None
    if typ == "json":
        return Jsonb(v)
    if typ == "box":
        return [float(x) for x in v]
    return v


def write_rows(conn: psycopg.Connection, table: str, rows: Iterable[tuple[int, str, dict[str, Any]]]) -> int:
    """Insert (node_id, batch_id, values) rows into result table `table`, in the caller's
    transaction (an apply's): `run` is the batch's id (an action run is its batch), `version`
    the table's. A row already there (same node and batch) is kept. Every value is checked
    against the registry's type for its column first, and a column the table's version does
    not declare is refused: nothing is written then."""
    got = conn.execute("SELECT columns, version FROM result_table WHERE name = %s",
                       [table]).fetchone() if _has_registry(conn) else None
    if got is None:
        raise ResultTableError(f"results: no result table {table!r} (a contract's [result_table] makes it)")
    types: dict[str, str] = dict(got[0])
    version = int(got[1])
    ordered = sorted(rows, key=lambda r: (r[0], r[1]))  # every intent takes the rows' locks in one order
    for node_id, _batch, values in ordered:
        for col, v in values.items():
            typ = types.get(col)
            if typ is None:
                raise ResultTableError(f"results: {table} has no column {col!r}; its columns: "
                                       + ", ".join(sorted(types)))
            why = problem(typ, v)
            if why:
                raise ResultTableError(f"results: {table}.{col} of node {node_id} {why} (got {json.dumps(v)[:60]})")
    cols = sorted(types)
    target = sql.SQL(", ").join(sql.Identifier(c) for c in ["node_id", "batch_id", "run", "version", *cols])
    holes = sql.SQL(", ").join(sql.Placeholder() for _ in range(4 + len(cols)))
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(sql.Identifier(table), target,
                                                                                     holes)
    with conn.cursor() as cur:  # one pipelined statement per row; rowcount: the rows inserted, all of them
        cur.executemany(query, [[node_id, batch, batch, version, *(_adapted(types[c], values.get(c)) for c in cols)]
                                for node_id, batch, values in ordered])
        return max(cur.rowcount, 0)
