"""Labels set and taken off by hand (`hoard label add|rm`): one write-intent per command, so
the labels arrive the way every other change to the database does (hoardfs.sql.apply), all or
nothing, with their origin recorded in `label.origin`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.intents import parse_intent
from hoardfs.sql.rows import one


class UnknownNodes(HoardError):
    """A sha256 the database has no node for: nothing was labelled."""

    exit_code = ExitCode.DATA


@dataclass
class LabelResult:
    nodes: int  # distinct nodes named
    changed: int  # labelled (add) or unlabelled (rm) now
    already: int  # had it already (add) or did not have it (rm)


def unknown_nodes(conn: psycopg.Connection, shas: list[str]) -> list[str]:
    """The sha256s (hex, in the order given) the database has no node for."""
    rows = conn.execute("SELECT encode(s, 'hex') FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(s, i) "
                        "WHERE NOT EXISTS (SELECT 1 FROM node n WHERE n.sha256 = u.s) ORDER BY i",
                        [[bytes.fromhex(s) for s in shas]]).fetchall()
    return [r[0] for r in rows]


def change_labels(conn: psycopg.Connection, shas: list[str], key: str, value: str | None, *,
                  remove: bool, origin: str) -> LabelResult:
    """Put label `key`=`value` on the nodes `shas` (hex), or take it off (`value` None: every
    value of `key`). Every sha256 must be a node: an unknown one raises UnknownNodes and
    nothing changes. Idempotent: a node that had it (add) or lacked it (rm) counts as `already`."""
    shas = list(dict.fromkeys(shas))
    missing = unknown_nodes(conn, shas)
    if missing:
        raise UnknownNodes(f"{len(missing)} of {len(shas)} sha256s are not nodes in the database (first: "
                           f"{missing[0]}); nothing was {'unlabelled' if remove else 'labelled'} — check the list "
                           "(`hoard info SHA256` says what the store and the database know)")
    key_ = f"label:{'rm' if remove else 'add'}:{uuid.uuid4()}"
    if remove:
        with conn.transaction():
            having = one(conn.execute(
                "SELECT count(DISTINCT l.node_id) FROM label l JOIN node n USING (node_id) "
                "WHERE n.sha256 = ANY(%s) AND l.key = %s AND (%s::text IS NULL OR (md5(l.value) = md5(%s) "
                "AND l.value = %s))", [[bytes.fromhex(s) for s in shas], key, value, value, value]))[0]
            apply_write_intent(conn, parse_intent({"key": key_, "unlabels": [
                {"node": s, "key": key, "value": value} for s in shas]}))
        return LabelResult(len(shas), having, len(shas) - having)
    res = apply_write_intent(conn, parse_intent({"key": key_, "labels": [
        {"node": s, "key": key, "value": value or "", "origin": origin} for s in shas]}))
    new = res.counts.get("labels_new", 0)
    return LabelResult(len(shas), new, len(shas) - new)
