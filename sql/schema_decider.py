"""Seed 001 SchemaDecider: propose a typed table for a source's specific fields.

From up to `MAX_SAMPLES` documents (flattened to `a.b.c` keys, depth 3) the decider measures
each field's presence (share of documents that have it, non-null) and type stability
(share of its values with the most common JSON type). A field becomes a SQL column when

    presence ≥ COLUMN_PRESENCE  and  type stability ≥ COLUMN_STABILITY  and  it is a scalar;

strings that parse as timestamps in that share become `timestamptz`; integers `bigint`;
numbers `double precision`; booleans `boolean`; other strings `text`. Everything else
(rare, unstable or list-valued fields) stays in the table's `extra jsonb`. The proposal is
stored as provisional with its DDL; `hoard db proposals --accept N` runs the DDL (under the
migration lock), backfills the table from `common_metadata.specific`, and from then on
every write-intent fills it. `common_metadata.specific` keeps every field either way, so a
value of the wrong type in a typed column is NULL there but never lost.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.rows import one

MAX_SAMPLES = 128
COLUMN_PRESENCE = 0.5
COLUMN_STABILITY = 0.95
_LOCK_ID = 0x686F617264  # the migration lock (hoardfs.sql.migrate)


class ProposalError(HoardError):
    exit_code = ExitCode.USAGE


@dataclass
class Proposal:
    proposal_id: int
    source: str
    status: str
    sample_count: int
    fields: list[dict[str, Any]]
    ddl: str
    created_at: dt.datetime | None = None


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "timestamp" if _is_time(v) else "string"
    return "list" if isinstance(v, list) else "object"


def _is_time(s: str) -> bool:
    if not (10 <= len(s) <= 35 and s[:4].isdigit() and s[4:5] == "-"):
        return False
    try:
        dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


_SQL_TYPE = {"boolean": "boolean", "integer": "bigint", "number": "double precision",
             "timestamp": "timestamptz", "string": "text"}


def column_name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_") or "field"
    if base[0].isdigit() or base in ("node_id", "extra"):
        base = "f_" + base
    name, n = base[:60], 2
    while name in taken:
        name, n = f"{base[:56]}_{n}", n + 1
    taken.add(name)
    return name


def decide(source: str, samples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Fields (with the decision for each) and the DDL of `src_<source>`."""
    samples = samples[:MAX_SAMPLES]
    if not samples:
        raise ProposalError(f"no sample documents for source {source!r}; ingest a batch first")
    types: dict[str, Counter[str]] = {}
    for doc in samples:
        for path, v in doc.items():
            if v is not None:
                types.setdefault(path, Counter())[_json_type(v)] += 1
    fields: list[dict[str, Any]] = []
    taken: set[str] = set()
    for path in sorted(types):
        c = types[path]
        present = sum(c.values())
        # integers are numbers too: a field of mixed ints and floats is a stable number
        if set(c) == {"integer", "number"}:
            c = Counter({"number": present})
        top, n_top = c.most_common(1)[0]
        presence, stability = present / len(samples), n_top / present
        column = presence >= COLUMN_PRESENCE and stability >= COLUMN_STABILITY and top in _SQL_TYPE
        fields.append({"path": path, "presence": round(presence, 3), "type": top, "type_share": round(stability, 3),
                       "column": column_name(path, taken) if column else None,
                       "sql_type": _SQL_TYPE[top] if column else None})
    table = f"src_{source}"[:63]
    cols = "".join(f",\n    {f['column']} {f['sql_type']}" for f in fields if f["column"])
    ddl = (f"CREATE TABLE {table} (\n    node_id bigint PRIMARY KEY REFERENCES node ON DELETE CASCADE{cols},\n"
           f"    extra jsonb\n);\nCOMMENT ON TABLE {table} IS 'Source-specific fields of {source} "
           f"(SchemaDecider, {len(samples)} samples); fields that are not columns are in extra'")
    return fields, ddl


def propose(conn: psycopg.Connection, source: str, samples: list[dict[str, Any]]) -> Proposal:
    """Store a provisional proposal (replacing an older provisional one of the source)."""
    fields, ddl = decide(source, samples)
    with conn.transaction():
        row = conn.execute("SELECT source_id, specific_table FROM source WHERE name = %s", [source]).fetchone()
        if row is None:
            raise ProposalError(f"unknown source {source!r}")
        if row[1]:
            raise ProposalError(f"source {source!r} already has its table {row[1]}")
        conn.execute("UPDATE schema_proposal SET status = 'superseded', decided_at = now() "
                     "WHERE source_id = %s AND status = 'provisional'", [row[0]])
        pid = one(conn.execute("INSERT INTO schema_proposal (source_id, sample_count, fields, ddl) "
                           "VALUES (%s, %s, %s, %s) RETURNING proposal_id",
                           [row[0], min(len(samples), MAX_SAMPLES), json.dumps(fields), ddl]))[0]
    return Proposal(pid, source, "provisional", min(len(samples), MAX_SAMPLES), fields, ddl)


def propose_if_new(conn: psycopg.Connection, source: str, samples: list[dict[str, Any]]) -> Proposal | None:
    """A proposal for a source that has neither a table nor any proposal yet (first batch)."""
    samples = [s for s in samples if s]
    if not samples:
        return None
    row = conn.execute("SELECT s.specific_table, (SELECT count(*) FROM schema_proposal p "
                       "WHERE p.source_id = s.source_id) FROM source s WHERE s.name = %s", [source]).fetchone()
    if row is None or row[0] or row[1]:
        return None
    return propose(conn, source, samples)


def list_proposals(conn: psycopg.Connection, include_decided: bool = False) -> list[Proposal]:
    rows = conn.execute("SELECT p.proposal_id, s.name, p.status, p.sample_count, p.fields, p.ddl, p.created_at "
                        "FROM schema_proposal p JOIN source s USING (source_id) "
                        f"{'' if include_decided else 'WHERE p.status = %s '}ORDER BY p.proposal_id",
                        [] if include_decided else ["provisional"]).fetchall()
    return [Proposal(*r) for r in rows]


def accept(conn: psycopg.Connection, proposal_id: int) -> Proposal:
    """Create the table, backfill it, and point the source at it — one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
        row = conn.execute("SELECT p.proposal_id, s.name, p.status, p.sample_count, p.fields, p.ddl, p.created_at, "
                           "s.source_id FROM schema_proposal p JOIN source s USING (source_id) "
                           "WHERE p.proposal_id = %s FOR UPDATE", [proposal_id]).fetchone()
        if row is None:
            raise ProposalError(f"no proposal {proposal_id}; `hoard db proposals` lists them")
        prop, source_id = Proposal(*row[:7]), row[7]
        if prop.status != "provisional":
            raise ProposalError(f"proposal {proposal_id} is {prop.status}; only a provisional one can be accepted")
        conn.execute(prop.ddl)
        conn.execute("UPDATE source SET specific_table = %s WHERE source_id = %s", [f"src_{prop.source}"[:63], source_id])
        conn.execute("UPDATE schema_proposal SET status = 'accepted', decided_at = now() WHERE proposal_id = %s",
                     [proposal_id])
        fill_specific_tables(conn, {source_id}, None)
    prop.status = "accepted"
    return prop


def reject(conn: psycopg.Connection, proposal_id: int) -> None:
    """Drop a provisional proposal; its fields stay in common_metadata.specific."""
    cur = conn.execute("UPDATE schema_proposal SET status = 'rejected', decided_at = now() "
                       "WHERE proposal_id = %s AND status = 'provisional'", [proposal_id])
    if cur.rowcount == 0:
        raise ProposalError(f"no provisional proposal {proposal_id}; `hoard db proposals --all` lists them")


def fill_specific_tables(conn: psycopg.Connection, source_ids: set[int], tmp_table: str | None) -> int:
    """Upsert `src_<source>` rows from `common_metadata.specific` — for the nodes in
    `tmp_table` (a write-intent's metadata) or, with None, for every node of the source."""
    if not source_ids:
        return 0
    rows = conn.execute("SELECT s.source_id, s.specific_table, p.fields FROM source s JOIN schema_proposal p "
                        "ON p.source_id = s.source_id AND p.status = 'accepted' "
                        "WHERE s.source_id = ANY(%s) AND s.specific_table IS NOT NULL", [list(source_ids)]).fetchall()
    done = 0
    for source_id, table, fields in rows:
        cols = [f for f in fields if f["column"]]
        exprs = [_cast(f) for f in cols]
        names = [sql.Identifier(f["column"]) for f in cols]
        only = (sql.SQL("AND cm.node_id IN (SELECT t.node_id FROM {} t)")
                .format(sql.Identifier(tmp_table)) if tmp_table else sql.SQL(""))
        q = sql.SQL("INSERT INTO {table} (node_id, {cols}extra) SELECT cm.node_id, {exprs}cm.specific - {paths} "
                    "FROM common_metadata cm WHERE cm.source_id = {sid} AND cm.specific IS NOT NULL {only} "
                    "ON CONFLICT (node_id) DO UPDATE SET {sets}extra = EXCLUDED.extra").format(
            table=sql.Identifier(table),
            cols=sql.SQL("").join(sql.SQL("{}, ").format(n) for n in names),
            exprs=sql.SQL("").join(sql.SQL("{}, ").format(e) for e in exprs),
            paths=sql.Literal([f["path"] for f in cols]) + sql.SQL("::text[]"),
            sid=sql.Literal(source_id), only=only,
            sets=sql.SQL("").join(sql.SQL("{0} = EXCLUDED.{0}, ").format(n) for n in names))
        done += conn.execute(q).rowcount
    return done


def _cast(f: dict[str, Any]) -> sql.Composable:
    v = sql.SQL("cm.specific -> {}").format(sql.Literal(f["path"]))
    t = sql.SQL("cm.specific ->> {}").format(sql.Literal(f["path"]))
    return {
        "bigint": sql.SQL("CASE WHEN jsonb_typeof({v}) = 'number' AND {t} ~ '^-?[0-9]{{1,18}}$' THEN ({t})::bigint END"),
        "double precision": sql.SQL("CASE WHEN jsonb_typeof({v}) = 'number' THEN ({t})::double precision END"),
        "boolean": sql.SQL("CASE WHEN jsonb_typeof({v}) = 'boolean' THEN ({t})::boolean END"),
        "timestamptz": sql.SQL("hoard_try_timestamptz(CASE WHEN jsonb_typeof({v}) = 'string' THEN {t} END)"),
        "text": sql.SQL("CASE WHEN jsonb_typeof({v}) IN ('string', 'number', 'boolean') THEN {t} END"),
    }[f["sql_type"]].format(v=v, t=t)


def source_table_rows(conn: psycopg.Connection, source: str) -> int:
    """The rows of an accepted proposal's table `src_<source>`."""
    return one(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(f"src_{source}"))))[0]
