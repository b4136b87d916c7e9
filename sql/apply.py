"""Applying a write-intent: `apply_write_intent(conn, intent)`, which

1. records the intent's idempotency key with the sha256 of its canonical body — the same
   key again is a no-op that says so, the same key with another body is refused;
2. checks references (an edge's or a label's nodes must be in the intent or the
   database; sources and relationship types must be registered or declared);
3. applies everything in one transaction, in bulk: COPY into temporary tables, then
   INSERT … SELECT … ON CONFLICT;
4. returns counts of what changed.

Every reference check runs before anything that depends on it, and names the field path
(`edges[12].child`) of the first problem. The bulk body (`apply_body`) runs inside the
transaction `apply_write_intent` opens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sql.intents import RESULT_COLUMNS, IntentConflict, IntentError, WriteIntent, parse_intent, virtual_description
from sql.rows import one
from sql.schema_decider import fill_specific_tables


@dataclass
class ApplyResult:
    key: str
    noop: bool
    counts: dict[str, int] = field(default_factory=dict)


def apply_write_intent(conn: psycopg.Connection, intent: WriteIntent | dict[str, Any]) -> ApplyResult:
    """Apply in one transaction; a re-applied key is a no-op (`noop=True`)."""
    if not isinstance(intent, WriteIntent):
        intent = parse_intent(intent)
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


#: the planner's join methods an intent's statements go without (`_joins_by_index`)
_JOINS = ("enable_hashjoin", "enable_mergejoin")
#: an intent joins by index when the node table holds this many times its largest list of rows
BY_INDEX_RATIO = 8


def _joins_by_index(conn: psycopg.Connection, it: WriteIntent) -> list[str] | None:
    """Join by index lookups only for the rest of the transaction (no hash or merge joins) when
    the node table is large beside the intent — `BY_INDEX_RATIO` times its largest list of
    rows, by the table's statistics; returns the settings before (None: left to the planner).
    Every statement of an intent joins rows of the intent's size (its temporary tables, its
    arrays) with tables of the database's size (`node` above all) on their indexes. Left to the
    planner, tens of thousands of rows met a node table of millions by a hash join over the
    whole table — a read of every node in each of ten statements, spilling to disk at 1 M nodes:
    an intent's cost grew with the database, not with the intent (issue 37: a 100,000-node
    intent 3.2× slower per node at 10 M nodes than at 1 M; docs/benchmarks.md). Into a small
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


def _missing_nodes(conn: psycopg.Connection, shas: list[tuple[int, str, str]], what: str) -> None:
    """(index, field, sha) triples whose node is not in the database (after the intent's upserts)."""
    if not shas:
        return
    _temp(conn, "tmp_ref", "idx int, field text, sha bytea")
    _copy(conn, "tmp_ref", "idx, field, sha", ((i, f, bytes.fromhex(s)) for i, f, s in shas))
    row = conn.execute("SELECT r.idx, r.field, encode(r.sha, 'hex') FROM tmp_ref r "
                       "LEFT JOIN node n ON n.sha256 = r.sha WHERE n.node_id IS NULL "
                       "ORDER BY r.idx, r.field LIMIT 1").fetchone()
    if row:
        raise IntentError(f"{what}[{row[0]}].{row[1]}: node {row[2]} is neither in this intent nor in the database")


def _check_refs(conn: psycopg.Connection, table: str, what: str, *columns: tuple[str, str]) -> None:
    """The first row of a loaded temporary table naming a node that does not exist."""
    for column, name in columns:
        row = conn.execute(f"SELECT t.idx, encode(t.{column}, 'hex') FROM {table} t "
                           f"LEFT JOIN node n ON n.sha256 = t.{column} WHERE n.node_id IS NULL "
                           "ORDER BY t.idx LIMIT 1").fetchone()
        if row:
            raise IntentError(f"{what}[{row[0]}].{name}: node {row[1]} is neither in this intent nor in the database")


#: the columns common_metadata and metadata_version share besides their keys
VERSION_COLUMNS = ("is_raw, is_root, title, view_count, update_time, download_time, author, user_name, "
                    "raw_metadata, specific")


def apply_body(conn: psycopg.Connection, it: WriteIntent) -> dict[str, int]:
    counts: dict[str, int] = {}
    # Every id this function writes comes from a join against the row it references, inside
    # this transaction, and every reference is checked first (`_check_refs`, `_ids`): the
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
    for rel in it.relationships:
        conn.execute("INSERT INTO relationship_type (name, action_id) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO NOTHING", [rel.name, rel.action])
    wanted_sources = ({m.source for m in it.metadata} | {n.virtual.source for n in it.nodes if n.virtual}
                      | {b.source for b in it.batches if b.source})
    sources = _ids(conn, "source", "source_id", wanted_sources)
    for path, name in ([(f"metadata[{i}].source", m.source) for i, m in enumerate(it.metadata)]
                       + [(f"nodes[{i}].virtual.source", n.virtual.source) for i, n in enumerate(it.nodes) if n.virtual]
                       + [(f"batches[{i}].source", b.source) for i, b in enumerate(it.batches) if b.source]):
        if name not in sources:
            raise IntentError(f"{path}: unknown source {name!r}; declare it in the intent's `sources`")
    rels = _ids(conn, "relationship_type", "rel_id", {e.relationship for e in it.edges})
    for i, e in enumerate(it.edges):
        if e.relationship not in rels:
            raise IntentError(f"edges[{i}].relationship: unknown relationship {e.relationship!r}; "
                              "declare it in the intent's `relationships`")

    # -- nodes ------------------------------------------------------------------------------
    if it.nodes:
        _temp(conn, "tmp_node", "idx int, sha bytea, is_virtual bool, size bigint, file_type text, kind text, "
              "source_id smallint, stable_id text, description text")
        _copy(conn, "tmp_node", "idx, sha, is_virtual, size, file_type, kind, source_id, stable_id, description",
              ((i, bytes.fromhex(n.sha256), n.virtual is not None,
                n.physical.size if n.physical else None, n.physical.file_type if n.physical else None,
                n.virtual.kind if n.virtual else None, sources[n.virtual.source] if n.virtual else None,
                n.virtual.stable_id if n.virtual else None,
                virtual_description(n.virtual.kind, n.virtual.source, n.virtual.stable_id) if n.virtual else None)
               for i, n in enumerate(it.nodes)))
        clash = conn.execute("SELECT t.idx FROM tmp_node t JOIN node n ON n.sha256 = t.sha "
                             "WHERE n.is_virtual <> t.is_virtual ORDER BY t.idx LIMIT 1").fetchone()
        if clash:
            raise IntentError(f"nodes[{clash[0]}]: the database has this node as the other kind (physical/virtual)")
        cur = conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) "
                           "SELECT DISTINCT ON (sha) sha, is_virtual, NOT is_virtual FROM tmp_node "
                           "ON CONFLICT (sha256) DO NOTHING")
        counts["nodes_new"] = cur.rowcount
        cur = conn.execute("INSERT INTO physical_content (node_id, size, file_type) "
                           "SELECT DISTINCT ON (n.node_id) n.node_id, t.size, ft.ext FROM tmp_node t "
                           "JOIN node n ON n.sha256 = t.sha LEFT JOIN file_type ft ON ft.ext = t.file_type "
                           "WHERE NOT t.is_virtual ON CONFLICT (node_id) DO NOTHING")
        counts["physical_new"] = cur.rowcount
        cur = conn.execute("INSERT INTO virtual_asset (node_id, kind, source_id, stable_id, description) "
                           "SELECT DISTINCT ON (n.node_id) n.node_id, t.kind, t.source_id, t.stable_id, t.description "
                           "FROM tmp_node t JOIN node n ON n.sha256 = t.sha WHERE t.is_virtual "
                           "ON CONFLICT (node_id) DO NOTHING")
        counts["virtual_new"] = cur.rowcount
        paths = [(bytes.fromhex(n.sha256), loc) for n in it.nodes if n.physical for loc in n.physical.locators]
        if paths:
            _temp(conn, "tmp_path", "sha bytea, locator text")
            _copy(conn, "tmp_path", "sha, locator", paths)
            cur = conn.execute("INSERT INTO physical_path (node_id, locator) SELECT n.node_id, p.locator "
                               "FROM tmp_path p JOIN node n ON n.sha256 = p.sha ON CONFLICT DO NOTHING")
            counts["paths_new"] = cur.rowcount

    # -- load metadata, edges, labels; check every node they name; then write them -------------------
    if it.metadata:
        _temp(conn, "tmp_meta", "idx int, sha bytea, source_id smallint, is_raw bool, is_root bool, title text, "
              "view_count bigint, update_time timestamptz, download_time timestamptz, author text, "
              "user_name text, raw_metadata jsonb, raw_object bytea, specific jsonb")
        _copy(conn, "tmp_meta", "idx, sha, source_id, is_raw, is_root, title, view_count, update_time, "
              "download_time, author, user_name, raw_metadata, raw_object, specific",
              ((i, bytes.fromhex(m.node), sources[m.source], m.is_raw, m.is_root, m.title, m.view_count,
                m.update_time, m.download_time, m.author, m.user,
                json.dumps(m.raw_metadata) if m.raw_metadata is not None else None,
                bytes.fromhex(m.raw_object) if m.raw_object else None,
                json.dumps(m.specific) if m.specific else None) for i, m in enumerate(it.metadata)))
        _check_refs(conn, "tmp_meta", "metadata", ("sha", "node"))
    if it.edges:
        _temp(conn, "tmp_edge", "idx int, parent bytea, child bytea, rel_id smallint")
        _copy(conn, "tmp_edge", "idx, parent, child, rel_id",
              ((i, bytes.fromhex(e.parent), bytes.fromhex(e.child), rels[e.relationship])
               for i, e in enumerate(it.edges)))
        _check_refs(conn, "tmp_edge", "edges", ("parent", "parent"), ("child", "child"))
    if it.labels:
        _temp(conn, "tmp_label", "idx int, sha bytea, key text, value text, origin text")
        _copy(conn, "tmp_label", "idx, sha, key, value, origin",
              ((i, bytes.fromhex(lb.node), lb.key, lb.value, lb.origin) for i, lb in enumerate(it.labels)))
        _check_refs(conn, "tmp_label", "labels", ("sha", "node"))
    if it.unlabels:
        _temp(conn, "tmp_unlabel", "idx int, sha bytea, key text, value text")
        _copy(conn, "tmp_unlabel", "idx, sha, key, value",
              ((i, bytes.fromhex(lb.node), lb.key, lb.value) for i, lb in enumerate(it.unlabels)))
        _check_refs(conn, "tmp_unlabel", "unlabels", ("sha", "node"))
    _missing_nodes(conn, [(i, f"members[{j}]", s) for i, b in enumerate(it.batches) for j, s in enumerate(b.members)],
                   "batches")
    if it.results:
        _missing_nodes(conn, [(i, "node", r.node) for i, r in enumerate(it.results)], "results")
    if it.black_list:
        _physical_nodes(conn, it.black_list)
    if it.metadata:
        # the newest download wins when two batches describe the same node differently
        cur = conn.execute("""
            INSERT INTO common_metadata (node_id, source_id, is_raw, is_root, title, view_count, update_time,
                                         download_time, author, user_name, raw_metadata, raw_object, specific)
            SELECT DISTINCT ON (n.node_id, t.source_id) n.node_id, t.source_id, t.is_raw, t.is_root, t.title,
                   t.view_count, t.update_time, t.download_time, t.author, t.user_name, t.raw_metadata, t.raw_object,
                   t.specific
            FROM tmp_meta t JOIN node n ON n.sha256 = t.sha
            ORDER BY n.node_id, t.source_id, t.download_time DESC NULLS LAST
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
            SELECT DISTINCT ON (n.node_id, t.source_id, t.raw_object) n.node_id, t.source_id, t.raw_object,
                   {', '.join('t.' + c for c in VERSION_COLUMNS.split(', '))}
            FROM tmp_meta t JOIN node n ON n.sha256 = t.sha WHERE t.raw_object IS NOT NULL
            ON CONFLICT DO NOTHING""")

        fill_specific_tables(conn, {sources[m.source] for m in it.metadata}, "tmp_meta")
    if it.edges:
        cur = conn.execute("INSERT INTO edge (parent_id, child_id, rel_id) SELECT p.node_id, c.node_id, t.rel_id "
                           "FROM tmp_edge t JOIN node p ON p.sha256 = t.parent JOIN node c ON c.sha256 = t.child "
                           "ON CONFLICT DO NOTHING")
        counts["edges_new"] = cur.rowcount
    if it.labels:
        cur = conn.execute("INSERT INTO label (node_id, key, value, origin) SELECT n.node_id, t.key, t.value, "
                           "t.origin FROM tmp_label t JOIN node n ON n.sha256 = t.sha ON CONFLICT DO NOTHING")
        counts["labels_new"] = cur.rowcount
    if it.unlabels:  # a NULL value takes every value of the key off
        cur = conn.execute("DELETE FROM label l USING tmp_unlabel t, node n WHERE n.sha256 = t.sha "
                           "AND l.node_id = n.node_id AND l.key = t.key AND (t.value IS NULL OR (md5(l.value) = md5(t.value) "
                           "AND l.value = t.value))")
        counts["labels_removed"] = cur.rowcount

    # -- batches and events ---------------------------------------------------------------------
    for i, b in enumerate(it.batches):
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
            cur = conn.execute("INSERT INTO batch_member (batch_id, node_id) SELECT %s, n.node_id "
                               "FROM unnest(%s::bytea[]) AS m(sha) JOIN node n ON n.sha256 = m.sha "
                               "ON CONFLICT DO NOTHING", [b.batch_id, [bytes.fromhex(s) for s in b.members]])
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
        counts["results_new"] = _write_results(conn, it)
    if it.black_list:
        cur = conn.execute("UPDATE physical_content pc SET in_black_list = true "
                           "FROM unnest(%s::bytea[]) AS b(sha) JOIN node n ON n.sha256 = b.sha "
                           "WHERE n.node_id = pc.node_id AND NOT pc.in_black_list",
                           [[bytes.fromhex(s) for s in it.black_list]])
        counts["black_listed"] = cur.rowcount
    return counts


def _physical_nodes(conn: psycopg.Connection, shas: list[str]) -> None:
    """Each black-listed node must be a physical node of the database (or of this intent)."""
    found = {bytes(r[0]) for r in conn.execute(
        "SELECT n.sha256 FROM unnest(%s::bytea[]) AS b(sha) JOIN node n ON n.sha256 = b.sha "
        "JOIN physical_content pc USING (node_id)",
        [[bytes.fromhex(s) for s in shas]]).fetchall()}
    for i, s in enumerate(shas):
        if bytes.fromhex(s) not in found:
            raise IntentError(f"black_list[{i}]: node {s} is not a physical node of this intent or the database")


def _write_results(conn: psycopg.Connection, it: WriteIntent) -> int:
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
        _temp(conn, f"tmp_{table}", "sha bytea, batch_id text, " + ", ".join(
            f"{c} {_RESULT_TYPES.get(c, 'real')}" for c in cols))
        _copy(conn, f"tmp_{table}", "sha, batch_id, " + ", ".join(cols),
              ((bytes.fromhex(r.node), r.batch_id, *(r.values.get(c) for c in cols)) for r in rows))
        cur = conn.execute(f"INSERT INTO {table} (node_id, batch_id, {', '.join(cols)}) "  # noqa: S608 - fixed names
                           f"SELECT n.node_id, t.batch_id, {', '.join(_RESULT_EXPR.get(c, 't.' + c) for c in cols)} FROM tmp_{table} t "
                           "JOIN node n ON n.sha256 = t.sha ON CONFLICT DO NOTHING")
        new += cur.rowcount
    return new


#: the SQL type of each result column that is not `real`
_RESULT_TYPES = {"status": "text", "text": "text", "box_no": "integer", "phash": "bigint", "dhash": "bigint",
                 "phash_flip": "bigint", "model": "text", "embedding": "text"}
#: how a column's value is written when not as it came: an embedding comes as base64, is kept as bytes
_RESULT_EXPR = {"embedding": "decode(t.embedding, 'base64')"}
