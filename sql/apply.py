"""Applying a write-intent: `apply_write_intent(conn, intent)`, which

1. records the intent's idempotency key with the sha256 of its canonical body — the same
   key again is a no-op that says so, the same key with another body is refused;
2. checks references (an edge's or a label's nodes must be in the intent or the
   database; sources and relationship types must be registered or declared);
3. applies everything in one transaction, in bulk: COPY into temporary tables, then
   INSERT … SELECT … ORDER BY <the table's key> ON CONFLICT (batches in batch_id order) —
   every intent takes the rows' locks in one order, so two intents writing the same rows
   listed in other orders wait for each other, never deadlock (one of them was refused by
   PostgreSQL and its job retried); of two rows with one key in an intent, the one listed
   first is kept (the order's last column is the row's place in the intent);
4. returns counts of what changed.

A physical node the intent names is live: the intent is written once the store acknowledged
its object, and storing an object again takes its type-B tombstone off (`Index.lookup_keep`),
so a node `hoard delete --batch` marked deleted is marked live again in the transaction that
adds its batch membership (`nodes_live_again`) — unless the store hides it (deletion type A,
`is_hidden`), which storing it again does not undo. An intent that adds physical nodes or batch
members holds `MEMBERSHIP_LOCK` shared, and `hoardfs.sql.deletion.drop_batch` holds it exclusively: a
deletion's "no other batch holds it" is decided either before such an apply (which then marks
the node live) or after it committed (and sees its members), never beside it.

Every sha256 the intent names is looked up in `node` once (`NodeIds`: one statement for all
of them, one more for the nodes the intent adds) and every row after that travels with its
node's id: the reference checks are lookups in that map, and no statement joins `node` again
(one pass over the sha256 index per intent instead of five to seven, whose cost would grow
with the database).

Every reference check runs before anything that depends on it, and names the field path
(`edges[12].child`) of the first problem. The bulk body (`apply_body`) runs inside the
transaction `apply_write_intent` opens.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from hoardfs.base.errors import write_conflict
from hoardfs.sql import result_tables
from hoardfs.sql.intents import (
    RESULT_COLUMNS,
    IntentConflict,
    IntentError,
    WriteIntent,
    parse_intent,
    virtual_description,
)
from hoardfs.sql.rows import one
from hoardfs.sql.schema_decider import fill_specific_tables


@dataclass
class ApplyResult:
    key: str
    noop: bool
    counts: dict[str, int] = field(default_factory=dict)


#: the advisory lock (`pg_advisory_xact_lock`) between the writers of batch membership and
#: node liveness: an apply of physical nodes or members takes it shared, a batch deletion
#: exclusively ("hoardm")
MEMBERSHIP_LOCK = 0x686F6172646D


def hold_membership(conn: psycopg.Connection, exclusive: bool) -> None:
    """Take MEMBERSHIP_LOCK for the rest of the transaction (shared: applies run side by side)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)" if exclusive else "SELECT pg_advisory_xact_lock_shared(%s)",
                 [MEMBERSHIP_LOCK])


#: how many times an intent is applied again after PostgreSQL rolled it back for another
#: transaction's writes to the same rows (a deadlock, a serialization failure)
CONFLICT_RETRIES = 4


def apply_write_intent(conn: psycopg.Connection, intent: WriteIntent | dict[str, Any]) -> ApplyResult:
    """Apply in one transaction; a re-applied key is a no-op (`noop=True`).

    On a connection outside a transaction, an apply PostgreSQL rolled back for a write
    conflict (deadlock, serialization failure) is applied again, up to CONFLICT_RETRIES times:
    nothing of it was kept, and its key makes a second apply of a committed one a no-op.
    Inside a caller's transaction the conflict is raised: the caller's earlier work is gone
    with it, and only the caller can redo that."""
    if not isinstance(intent, WriteIntent):
        intent = parse_intent(intent)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return _apply_once(conn, intent)
    for attempt in range(CONFLICT_RETRIES + 1):
        try:
            return _apply_once(conn, intent)
        except psycopg.Error as e:  # (DeadlockDetected is no TransactionRollback in psycopg 3)
            if attempt == CONFLICT_RETRIES or not write_conflict(e):
                raise
            time.sleep(random.uniform(0.01, 0.1) * (attempt + 1))  # the other transaction gets ahead
    raise AssertionError("unreachable")


def is_applied(conn: psycopg.Connection, key: str) -> bool:
    """Whether a write-intent of this key was applied (committed)."""
    return conn.execute("SELECT 1 FROM applied_intent WHERE key = %s", [key]).fetchone() is not None


def _apply_once(conn: psycopg.Connection, intent: WriteIntent) -> ApplyResult:
    digest = intent.digest()
    with conn.transaction():
        row = conn.execute("INSERT INTO applied_intent (key, digest, counts) VALUES (%s, %s, '{}') "
                           "ON CONFLICT (key) DO NOTHING RETURNING key", [intent.key, digest]).fetchone()
        if row is None:
            prev_digest, prev_counts = one(conn.execute(
                "SELECT digest, counts FROM applied_intent WHERE key = %s", [intent.key]))
            if bytes(prev_digest) != digest:
                raise IntentConflict(f"write-intent {intent.key!r} was already applied with different content; "
                                     "an intent's key must name exactly one body — use a new key")
            return ApplyResult(intent.key, True, prev_counts)
        try:
            before = _joins_by_index(conn, intent)
            counts = apply_body(conn, intent)
            if before is not None:
                _set_joins(conn, before)
        except psycopg.errors.CheckViolation as e:
            raise IntentError(f"write-intent {intent.key!r} rejected: {e.diag.message_primary}") from None
        conn.execute("UPDATE applied_intent SET counts = %s WHERE key = %s", [json.dumps(counts), intent.key])
    return ApplyResult(intent.key, False, counts)


#: the planner's ways an intent's statements go without (`_joins_by_index`): hash and merge
#: joins, and reading a whole table (a temporary table, which has no index, is still read whole)
_JOINS = ("enable_hashjoin", "enable_mergejoin", "enable_seqscan")
#: an intent joins by index when the node table holds this many times its largest list of rows
BY_INDEX_RATIO = 8


def _joins_by_index(conn: psycopg.Connection, it: WriteIntent) -> list[str] | None:
    """Join by index lookups only for the rest of the transaction (no hash or merge joins, no
    whole-table reads) when
    the node table is large beside the intent — `BY_INDEX_RATIO` times its largest list of
    rows, by the table's statistics; returns the settings before (None: left to the planner).
    An intent's statements meet rows of the intent's size (its temporary tables, its arrays)
    with tables of the database's size (`node` in `NodeIds`' one lookup; `physical_content`,
    `label`, `common_metadata`) on their indexes. Left to the
    planner, tens of thousands of rows meet a node table of millions by a hash join over the
    whole table — a read of every node in each of ten statements, spilling to disk at 1 M nodes:
    an intent's cost would grow with the database, not with the intent (a 100,000-node intent
    3.2× slower per node at 10 M nodes than at 1 M; docs/benchmarks.md). Into a small
    database (a first bulk load, an intent larger than it) hash joins stay the faster way.
    SET LOCAL: a rolled back intent leaves nothing."""
    rows = max(len(it.nodes), len(it.edges), len(it.labels), len(it.metadata), len(it.unlabels), len(it.results),
               len(it.black_list), sum(len(b.members) for b in it.batches))
    nodes = one(conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'node'::regclass"))[0]
    if nodes < BY_INDEX_RATIO * max(rows, 1):
        return None
    was = [str(v) for v in one(conn.execute(f"SELECT {', '.join(f'current_setting({s!r})' for s in _JOINS)}"))]
    _set_joins(conn, ["off"] * len(_JOINS))
    return was


def _set_joins(conn: psycopg.Connection, values: Sequence[str]) -> None:
    """Set `_JOINS` to `values` for the rest of the transaction."""
    for name, value in zip(_JOINS, values, strict=True):
        conn.execute("SELECT set_config(%s, %s, true)", [name, value])


def _copy(conn: psycopg.Connection, table: str, columns: str, rows: Iterable[Sequence]) -> None:
    """COPY rows into a temporary table, then ANALYZE it so the planner knows its size
    (temporary tables have no statistics; without them it picks nested loops)."""
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)
    conn.execute(f"ANALYZE {table}")


def _temp(conn: psycopg.Connection, name: str, columns: str) -> None:
    """An empty temporary table (kept for the session: several intents may share a transaction)."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})")
    conn.execute(f"TRUNCATE {name}")


def _ids(conn: psycopg.Connection, table: str, key: str, names: set[str]) -> dict[str, int]:
    if not names:
        return {}
    rows = conn.execute(f"SELECT name, {key} FROM {table} WHERE name = ANY(%s)", [list(names)]).fetchall()
    return dict(rows)


class NodeIds:
    """The node id (and kind) of each sha256 an intent names, looked up in `node` once; keyed
    by the sha256 as the intent writes it (64 lowercase hex digits: `hoardfs.sql.intents.Sha`), so each
    is decoded once, for the lookup, and every row after it finds its id by the intent's own
    string (decoded again for the checks and for the rows, a 100,000-node intent spends about
    1 s of client CPU in the decodes)."""

    def __init__(self, conn: psycopg.Connection, shas: Iterable[str]) -> None:
        self.conn = conn
        self.ids: dict[str, tuple[int, bool]] = {}
        self.look_up(set(shas))

    def look_up(self, shas: set[str]) -> None:
        if not shas:
            return
        with self.conn.cursor(binary=True) as cur:
            cur.execute("SELECT sha256, node_id, is_virtual FROM node WHERE sha256 = ANY(%s)",
                        [[bytes.fromhex(s) for s in shas]])
            self.ids.update((bytes(sha).hex(), (node_id, virtual)) for sha, node_id, virtual in cur)

    def __getitem__(self, sha: str) -> int:
        return self.ids[sha][0]

    def check(self, refs: Iterable[tuple[str, str]], what: str) -> None:
        """Refuse the first (field path, sha) whose node is not in the database (after the intent's
        own nodes went in)."""
        for path, sha in refs:
            if sha not in self.ids:
                raise IntentError(f"{what}[{path}: node {sha} is neither in this intent nor in the database")


def _named(it: WriteIntent) -> set[str]:
    """Every sha256 an intent names."""
    return {*(n.sha256 for n in it.nodes), *(m.node for m in it.metadata), *(e.parent for e in it.edges),
            *(e.child for e in it.edges), *(lb.node for lb in it.labels), *(lb.node for lb in it.unlabels),
            *(m for b in it.batches for m in b.members), *(r.node for r in it.results), *it.black_list,
            *(m.node for m in it.memo)}


#: the columns common_metadata and metadata_version share besides their keys
VERSION_COLUMNS = ("is_raw, is_root, title, view_count, update_time, download_time, author, user_name, "
                    "raw_metadata, specific")


def apply_body(conn: psycopg.Connection, it: WriteIntent) -> dict[str, int]:
    counts: dict[str, int] = {}
    # Every id this function writes comes from a lookup of the row it references, inside this
    # transaction (`NodeIds`; no code deletes a node row — a deleted node is flagged — so an id
    # looked up stays valid), and every reference is checked first (`NodeIds.check`, `_ids`): the
    # row-level foreign-key triggers would only repeat those checks, one row at a time (about
    # half the time of a bulk apply). A superuser may skip them for this transaction; the
    # one trigger with a rule of its own (sealed batches) is then checked here instead.
    # Restore-verify counts orphans per foreign key, so a bug here would not go unnoticed.
    trusted = one(conn.execute("SELECT current_setting('is_superuser') = 'on'"))[0]
    if trusted:
        conn.execute("SET LOCAL session_replication_role = replica")
    # -- names: sources and relationship types ------------------------------------------------
    for name in it.sources:
        conn.execute("INSERT INTO source (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", [name])
    # a relationship type is (name, action): an action's edges are its own type, whoever used
    # the name first (migration 019)
    for rel in it.relationships:
        conn.execute("INSERT INTO relationship_type (name, action_id) VALUES (%s, %s) "
                     "ON CONFLICT (name, action_id) DO NOTHING", [rel.name, rel.action])
    wanted_sources = ({m.source for m in it.metadata} | {n.virtual.source for n in it.nodes if n.virtual}
                      | {b.source for b in it.batches if b.source})
    sources = _ids(conn, "source", "source_id", wanted_sources)
    for path, name in ([(f"metadata[{i}].source", m.source) for i, m in enumerate(it.metadata)]
                       + [(f"nodes[{i}].virtual.source", n.virtual.source) for i, n in enumerate(it.nodes) if n.virtual]
                       + [(f"batches[{i}].source", b.source) for i, b in enumerate(it.batches) if b.source]):
        if name not in sources:
            raise IntentError(f"{path}: unknown source {name!r}; declare it in the intent's `sources`")
    rels = _relationship_ids(conn, it)
    for i, e in enumerate(it.edges):
        if e.relationship not in rels:
            raise IntentError(f"edges[{i}].relationship: unknown relationship {e.relationship!r}; "
                              "declare it in the intent's `relationships`")

    # -- nodes ------------------------------------------------------------------------------
    if any(n.physical for n in it.nodes) or any(b.members for b in it.batches):
        hold_membership(conn, exclusive=False)  # before any row of theirs is locked (a deletion takes it first too)
    named = _named(it)
    ids = NodeIds(conn, named)
    if it.nodes:
        shas = [n.sha256 for n in it.nodes]
        _clash(it, shas, ids)
        new = {sha: n.virtual is not None for sha, n in zip(shas, it.nodes, strict=True) if sha not in ids.ids}
        counts["nodes_new"] = 0
        added: list[tuple[str, tuple[int, bool]]] = []
        if new:
            _temp(conn, "tmp_node", "sha bytea, is_virtual bool")
            _copy(conn, "tmp_node", "sha, is_virtual", ((bytes.fromhex(sha), v) for sha, v in new.items()))
            with conn.cursor(binary=True) as cur:
                cur.execute("INSERT INTO node (sha256, is_virtual, is_physical) SELECT sha, is_virtual, NOT is_virtual "
                            "FROM tmp_node ORDER BY sha ON CONFLICT (sha256) DO NOTHING RETURNING sha256, node_id, is_virtual")
                added = [(bytes(sha).hex(), (node_id, virtual)) for sha, node_id, virtual in cur]
            ids.ids.update(added)
            counts["nodes_new"] = len(added)
            # a node this insert found taken (added meanwhile by a transaction that committed; the
            # insert waited on its key), and any other name such a transaction committed: looked
            # up again, not refused
            raced = new.keys() - ids.ids.keys()
            unknown = named - ids.ids.keys()
            if unknown:
                ids.look_up(unknown)
            if raced:
                _clash(it, shas, ids)
        physical = {ids[sha]: n.physical for sha, n in zip(shas, it.nodes, strict=True) if n.physical}
        virtual = {ids[sha]: n.virtual for sha, n in zip(shas, it.nodes, strict=True) if n.virtual}
        counts["physical_new"] = counts["virtual_new"] = 0
        if physical:
            _temp(conn, "tmp_physical", "node_id bigint, size bigint, file_type text")
            _copy(conn, "tmp_physical", "node_id, size, file_type",
                  ((node_id, p.size, p.file_type) for node_id, p in physical.items()))
            counts["physical_new"] = conn.execute(
                "INSERT INTO physical_content (node_id, size, file_type) SELECT t.node_id, t.size, ft.ext "
                "FROM tmp_physical t LEFT JOIN file_type ft ON ft.ext = t.file_type "
                "ORDER BY t.node_id ON CONFLICT (node_id) DO NOTHING").rowcount
            # the nodes the database had before: one deleted by type B is live again (the module's doc)
            before = sorted(physical.keys() - {node_id for _sha, (node_id, _v) in added})
            live = conn.execute("UPDATE physical_content SET is_deleted = false WHERE node_id = ANY(%s) "
                                "AND is_deleted AND NOT is_hidden", [before]).rowcount if before else 0
            if live:
                counts["nodes_live_again"] = live
        if virtual:
            _temp(conn, "tmp_virtual", "node_id bigint, kind text, source_id smallint, stable_id text, description text")
            _copy(conn, "tmp_virtual", "node_id, kind, source_id, stable_id, description",
                  ((node_id, v.kind, sources[v.source], v.stable_id,
                    virtual_description(v.kind, v.source, v.stable_id)) for node_id, v in virtual.items()))
            counts["virtual_new"] = conn.execute(
                "INSERT INTO virtual_asset (node_id, kind, source_id, stable_id, description) "
                "SELECT node_id, kind, source_id, stable_id, description FROM tmp_virtual "
                "ORDER BY node_id ON CONFLICT (node_id) DO NOTHING").rowcount
        paths = [(ids[sha], loc) for sha, n in zip(shas, it.nodes, strict=True) if n.physical
                 for loc in n.physical.locators]
        if paths:
            _temp(conn, "tmp_path", "node_id bigint, locator text")
            _copy(conn, "tmp_path", "node_id, locator", paths)
            counts["paths_new"] = conn.execute("INSERT INTO physical_path (node_id, locator) SELECT node_id, locator "
                                               "FROM tmp_path ORDER BY node_id, locator ON CONFLICT DO NOTHING").rowcount

    # -- check every node the rest names; then write it ------------------------------------------
    ids.check(((f"{i}].node", m.node) for i, m in enumerate(it.metadata)), "metadata")
    ids.check(((f"{i}].parent", e.parent) for i, e in enumerate(it.edges)), "edges")
    ids.check(((f"{i}].child", e.child) for i, e in enumerate(it.edges)), "edges")
    ids.check(((f"{i}].node", lb.node) for i, lb in enumerate(it.labels)), "labels")
    ids.check(((f"{i}].node", lb.node) for i, lb in enumerate(it.unlabels)), "unlabels")
    ids.check(((f"{i}].members[{j}]", s) for i, b in enumerate(it.batches)
               for j, s in enumerate(b.members)), "batches")
    ids.check(((f"{i}].node", r.node) for i, r in enumerate(it.results)), "results")
    black = _physical_nodes(conn, it.black_list, ids)
    if it.metadata:
        _temp(conn, "tmp_meta", "idx int, node_id bigint, source_id smallint, is_raw bool, is_root bool, title text, "
              "view_count bigint, update_time timestamptz, download_time timestamptz, author text, "
              "user_name text, raw_metadata jsonb, raw_object bytea, specific jsonb")
        _copy(conn, "tmp_meta", "idx, node_id, source_id, is_raw, is_root, title, view_count, update_time, "
              "download_time, author, user_name, raw_metadata, raw_object, specific",
              ((i, ids[m.node], sources[m.source], m.is_raw, m.is_root, m.title, m.view_count,
                m.update_time, m.download_time, m.author, m.user,
                json.dumps(m.raw_metadata) if m.raw_metadata is not None else None,
                bytes.fromhex(m.raw_object) if m.raw_object else None,
                json.dumps(m.specific) if m.specific else None) for i, m in enumerate(it.metadata)))
        # the newest download wins when two batches describe the same node differently (a tie:
        # the one listed last)
        cur = conn.execute("""
            INSERT INTO common_metadata (node_id, source_id, is_raw, is_root, title, view_count, update_time,
                                         download_time, author, user_name, raw_metadata, raw_object, specific)
            SELECT DISTINCT ON (t.node_id, t.source_id) t.node_id, t.source_id, t.is_raw, t.is_root, t.title,
                   t.view_count, t.update_time, t.download_time, t.author, t.user_name, t.raw_metadata, t.raw_object,
                   t.specific
            FROM tmp_meta t
            ORDER BY t.node_id, t.source_id, t.download_time DESC NULLS LAST, t.idx DESC
            ON CONFLICT (node_id, source_id) DO UPDATE SET
                is_raw = EXCLUDED.is_raw, is_root = EXCLUDED.is_root, title = EXCLUDED.title,
                view_count = EXCLUDED.view_count, update_time = EXCLUDED.update_time,
                download_time = EXCLUDED.download_time, author = EXCLUDED.author, user_name = EXCLUDED.user_name,
                raw_metadata = EXCLUDED.raw_metadata, raw_object = EXCLUDED.raw_object, specific = EXCLUDED.specific
            WHERE common_metadata.download_time IS NULL
               OR EXCLUDED.download_time >= common_metadata.download_time""")
        counts["metadata_rows"] = cur.rowcount
        # every document's version too: deleting its batch later recomputes common_metadata from the rest
        conn.execute(f"""
            INSERT INTO metadata_version (node_id, source_id, raw_object, {VERSION_COLUMNS})
            SELECT DISTINCT ON (t.node_id, t.source_id, t.raw_object) t.node_id, t.source_id, t.raw_object,
                   {', '.join('t.' + c for c in VERSION_COLUMNS.split(', '))}
            FROM tmp_meta t WHERE t.raw_object IS NOT NULL
            ON CONFLICT DO NOTHING""")

        fill_specific_tables(conn, {sources[m.source] for m in it.metadata}, "tmp_meta")
    if it.edges:
        _temp(conn, "tmp_edge", "parent_id bigint, child_id bigint, rel_id smallint")
        _copy(conn, "tmp_edge", "parent_id, child_id, rel_id",
              ((ids[e.parent], ids[e.child], rels[e.relationship]) for e in it.edges))
        counts["edges_new"] = conn.execute("INSERT INTO edge (parent_id, child_id, rel_id) SELECT parent_id, child_id, "
                                           "rel_id FROM tmp_edge ORDER BY parent_id, child_id, rel_id "
                                           "ON CONFLICT DO NOTHING").rowcount
    if it.labels:
        _temp(conn, "tmp_label", "idx int, node_id bigint, key text, value text, origin text")
        _copy(conn, "tmp_label", "idx, node_id, key, value, origin",
              ((i, ids[lb.node], lb.key, lb.value, lb.origin) for i, lb in enumerate(it.labels)))
        counts["labels_new"] = conn.execute("INSERT INTO label (node_id, key, value, origin) SELECT node_id, key, "
                                            "value, origin FROM tmp_label ORDER BY node_id, key, value, idx "
                                            "ON CONFLICT DO NOTHING").rowcount
    if it.unlabels:  # a NULL value takes every value of the key off
        _temp(conn, "tmp_unlabel", "node_id bigint, key text, value text")
        _copy(conn, "tmp_unlabel", "node_id, key, value",
              ((ids[lb.node], lb.key, lb.value) for lb in it.unlabels))
        cur = conn.execute("DELETE FROM label l USING tmp_unlabel t WHERE l.node_id = t.node_id AND l.key = t.key "
                           "AND (t.value IS NULL OR (md5(l.value) = md5(t.value) AND l.value = t.value))")
        counts["labels_removed"] = cur.rowcount

    # -- batches and events ---------------------------------------------------------------------
    # in batch_id order (a batch listed twice: its entries as listed), as every table's rows are
    for i, b in sorted(enumerate(it.batches), key=lambda ib: ib[1].batch_id):
        conn.execute("INSERT INTO action_batch (batch_id, action_id, source_id) VALUES (%s, %s, %s) "
                     "ON CONFLICT (batch_id) DO NOTHING", [b.batch_id, b.action, sources.get(b.source) if b.source else None])
        have = one(conn.execute("SELECT action_id FROM action_batch WHERE batch_id = %s", [b.batch_id]))
        if have[0] != b.action:
            raise IntentError(f"batches[{i}].action: batch {b.batch_id} belongs to action {have[0]}, not {b.action}")
        if b.members:
            if trusted:  # what the batch_member_open trigger says, since it does not fire here
                sealed = one(conn.execute("SELECT sealed_at IS NOT NULL FROM action_batch WHERE batch_id = %s",
                                      [b.batch_id]))[0]
                if sealed:
                    raise IntentError(f"write-intent {it.key!r} rejected: batch {b.batch_id} is sealed and takes "
                                      "no new members")
            cur = conn.execute("INSERT INTO batch_member (batch_id, node_id) SELECT %s, n FROM "
                               "unnest(%s::bigint[]) n ORDER BY n ON CONFLICT DO NOTHING", [b.batch_id, [ids[s] for s in b.members]])
            counts["members_new"] = counts.get("members_new", 0) + cur.rowcount
        if b.seal:
            conn.execute("UPDATE action_batch SET sealed_at = now() WHERE batch_id = %s AND sealed_at IS NULL",
                         [b.batch_id])
    for i, ev in enumerate(it.events):
        if not conn.execute("SELECT 1 FROM action_batch WHERE batch_id = %s", [ev.batch_id]).fetchone():
            raise IntentError(f"events[{i}].batch_id: no batch {ev.batch_id!r}")
        conn.execute("INSERT INTO action_event (batch_id, action_id, status, started_at, ended_at, detail) "
                     "VALUES (%s, %s, %s, %s, %s, %s)",
                     [ev.batch_id, ev.action, ev.status, ev.started_at, ev.ended_at, json.dumps(ev.detail)])
    counts["events"] = len(it.events)
    if it.results:  # after the batches: a result row names the batch that produced it
        counts["results_new"] = _write_results(conn, it, ids)
    if it.memo:  # after the batches: a memo row names the run (its batch) that did the input
        ids.check(((f"{i}].node", m.node) for i, m in enumerate(it.memo)), "memo")
        _temp(conn, "tmp_memo", "action_id int, version int, params_digest bytea, node_id bigint, run_id text")
        _copy(conn, "tmp_memo", "action_id, version, params_digest, node_id, run_id",
              ((m.action, m.version, bytes.fromhex(m.params), ids[m.node], m.run) for m in it.memo))
        counts["memo_new"] = conn.execute(
            "INSERT INTO action_memo (action_id, version, params_digest, node_id, run_id) SELECT action_id, version, "
            "params_digest, node_id, run_id FROM tmp_memo ORDER BY action_id, version, params_digest, node_id "
            # the run that ran it last (a --rerun) holds the input: its results are the newest
            "ON CONFLICT (action_id, version, params_digest, node_id) DO UPDATE SET run_id = EXCLUDED.run_id "
            "WHERE action_memo.run_id <> EXCLUDED.run_id").rowcount
    if it.black_list:
        cur = conn.execute("UPDATE physical_content SET in_black_list = true "
                           "WHERE node_id = ANY(%s) AND NOT in_black_list", [black])
        counts["black_listed"] = cur.rowcount
    return counts


def _relationship_ids(conn: psycopg.Connection, it: WriteIntent) -> dict[str, int]:
    """The type id of each relationship the intent's edges name: the type of the action the
    intent declares it for, else the ingest's (action 0), else the one type of that name."""
    names = {e.relationship for e in it.edges}
    if not names:
        return {}
    declared = {rel.name: rel.action for rel in it.relationships}
    found: dict[str, dict[int, int]] = {}
    for name, action, rel_id in conn.execute("SELECT name, action_id, rel_id FROM relationship_type "
                                             "WHERE name = ANY(%s)", [sorted(names)]).fetchall():
        found.setdefault(name, {})[action] = rel_id
    out = {}
    for name in names:
        types = found.get(name, {})
        pick = types.get(declared[name]) if name in declared else types.get(0)
        if pick is None and name not in declared and len(types) == 1:
            pick = next(iter(types.values()))
        if pick is not None:
            out[name] = pick
    return out


def _clash(it: WriteIntent, shas: list[str], ids: NodeIds) -> None:
    """Refuse the first of the intent's nodes the database has as the other kind."""
    for i, (sha, n) in enumerate(zip(shas, it.nodes, strict=True)):
        if sha in ids.ids and ids.ids[sha][1] != (n.virtual is not None):
            raise IntentError(f"nodes[{i}]: the database has this node as the other kind (physical/virtual)")


def _physical_nodes(conn: psycopg.Connection, shas: list[str], ids: NodeIds) -> list[int]:
    """The node ids of the black-listed nodes; each must be a physical node of the database (or
    of this intent)."""
    if not shas:
        return []
    wanted = [ids.ids.get(s, (-1, True))[0] for s in shas]  # (-1: no node)
    found = {r[0] for r in conn.execute("SELECT node_id FROM physical_content WHERE node_id = ANY(%s)",
                                        [wanted]).fetchall()}
    for i, (s, node_id) in enumerate(zip(shas, wanted, strict=True)):
        if node_id not in found:
            raise IntentError(f"black_list[{i}]: node {s} is not a physical node of this intent or the database")
    return wanted


def _write_results(conn: psycopg.Connection, it: WriteIntent, ids: NodeIds) -> int:
    """Insert the result rows, table by table; a row already there (same node, batch and, for
    boxes, number) is kept. Each row's batch must exist (in this intent or the database)."""
    new = 0
    batches = {r.batch_id for r in it.results}
    have = {r[0] for r in conn.execute("SELECT batch_id FROM action_batch WHERE batch_id = ANY(%s)",
                                       [sorted(batches)]).fetchall()}
    for i, r in enumerate(it.results):
        if r.batch_id not in have:
            raise IntentError(f"results[{i}].batch_id: no batch {r.batch_id!r}")
    for table, (allowed, _required) in RESULT_COLUMNS.items():
        rows = [r for r in it.results if r.table == table]
        if not rows:
            continue
        cols = sorted(allowed)
        _temp(conn, f"tmp_{table}", "idx int, node_id bigint, batch_id text, " + ", ".join(
            f"{c} {_RESULT_TYPES.get(c, 'real')}" for c in cols))
        _copy(conn, f"tmp_{table}", "idx, node_id, batch_id, " + ", ".join(cols),
              ((i, ids[r.node], r.batch_id, *(r.values.get(c) for c in cols)) for i, r in enumerate(rows)))
        cur = conn.execute(f"INSERT INTO {table} (node_id, batch_id, {', '.join(cols)}) "  # fixed names
                           f"SELECT t.node_id, t.batch_id, {', '.join(_RESULT_EXPR.get(c, 't.' + c) for c in cols)} "
                           f"FROM tmp_{table} t ORDER BY {', '.join('t.' + k for k in _RESULT_KEYS[table])}, t.idx "
                           "ON CONFLICT DO NOTHING")
        new += cur.rowcount
    for table in sorted({r.table for r in it.results} - RESULT_COLUMNS.keys()):  # actions' own tables
        new += result_tables.write_rows(conn, table, ((ids[r.node], r.batch_id, r.values)
                                                      for r in it.results if r.table == table))
    return new


#: each result table's key (its primary key's columns): its rows go in in this order, and of
#: two rows with one key the one listed first (`idx`) is kept, as before the order was set
_RESULT_KEYS = {"result_ocr_box": ("node_id", "batch_id", "box_no"), "result_canny": ("node_id", "batch_id"),
                "result_image_hash": ("node_id",), "result_image_embedding": ("node_id", "model")}
#: the SQL type of each result column that is not `real`
_RESULT_TYPES = {"status": "text", "text": "text", "box_no": "integer", "phash": "bigint", "dhash": "bigint",
                 "phash_flip": "bigint", "model": "text", "embedding": "text"}
#: how a column's value is written when not as it came: an embedding comes as base64, is kept as bytes
_RESULT_EXPR = {"embedding": "decode(t.embedding, 'base64')"}
