"""What `hoard action collect RUN` wrote for a run still waiting, taken back by the run's own
apply (jobs/actions/collect.py, jobs/actions/steps.py `_step_apply`): the run's final outputs
are the truth, so a row collected from a file the worker had not finished, or a label a
labeller changed since, does not stay.

    labels_present(conn, triples)    which (sha256, key, value) labels are there already: collect
                                     records as its own only the labels it adds
    withdraw(conn, run, tables, labels, origin)
                                     in the apply's transaction, before its intent: every row of
                                     batch `run` in `tables` (the intent writes the final ones
                                     again) and each of `labels` that still has `origin`
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

#: a result table's name as hoardfs makes them (result_<action>, the built-ins')
_TABLE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def labels_present(conn: psycopg.Connection, triples: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """The (node sha256 in hex, key, value) of `triples` that the label table holds now."""
    wanted = sorted(set(triples))
    if not wanted:
        return set()
    rows = conn.execute(
        "SELECT encode(n.sha256, 'hex'), l.key, l.value FROM label l JOIN node n USING (node_id) "
        "JOIN unnest(%s::text[], %s::text[], %s::text[]) AS t(sha, key, value) "
        "ON n.sha256 = decode(t.sha, 'hex') AND l.key = t.key AND l.value = t.value",
        [[t[0] for t in wanted], [t[1] for t in wanted], [t[2] for t in wanted]]).fetchall()
    return {(str(s), str(k), str(v)) for s, k, v in rows}


def withdraw(conn: psycopg.Connection, run: str, tables: Iterable[str], labels: Iterable[tuple[str, str, str]],
             origin: str) -> dict[str, int]:
    """Remove what collects of run `run` wrote: its rows (batch_id = run) in each result table
    of `tables` that exists, and the labels `labels` (sha256 hex, key, value) whose origin is
    still `origin` (one a person set since is theirs). Returns how many of each went."""
    out = {"results": 0, "labels": 0}
    for table in sorted(set(tables)):
        if not table.startswith("result_") or not set(table) <= _TABLE_CHARS:
            continue  # not a result table's name: nothing of the kind was collected
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
        if not exists or not exists[0]:
            continue
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(sql.Identifier(table)), [run])
        out["results"] += max(cur.rowcount, 0)
    gone = sorted(set(labels))
    if gone:
        cur = conn.execute(
            "DELETE FROM label l USING node n, unnest(%s::text[], %s::text[], %s::text[]) AS t(sha, key, value) "
            "WHERE l.node_id = n.node_id AND n.sha256 = decode(t.sha, 'hex') AND l.key = t.key "
            "AND l.value = t.value AND l.origin = %s",
            [[t[0] for t in gone], [t[1] for t in gone], [t[2] for t in gone], origin])
        out["labels"] = max(cur.rowcount, 0)
    return out
