"""Read-only views of the database for people browsing it (the GUI's batches and asset
pages), plus the one flag they may change: `in_black_list` (low quality / unwanted).

Every query is bounded (LIMIT, depth) and served by an index, so a page costs the same on
100,000 nodes as on 100.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.sql import memo
from hoardfs.sql.rows import one

#: the deepest parents/children a node page walks
MAX_DEPTH = 3
#: the most parents (and children) a node page lists: the nearest first, so every relative's
#: `via` is listed too (cut by node id, a walk kept depth-2 rows whose depth-1 link it dropped)
MAX_RELATIVES = 200


#: the longest search text taken (a few words; a page of text is refused, not searched)
MAX_SEARCH_CHARS = 500
#: the most different words a search ANDs
MAX_SEARCH_WORDS = 16
#: a shorter word is looked for whole, not as the start of others: "1" as a prefix is every
#: number starting with 1 — thousands of distinct rare words the planner estimates at a few
#: rows, so it read them all through the index and sorted them for one page
MIN_PREFIX_CHARS = 3
#: a search still running after this is refused ("add a word"), never left to hold a page
SEARCH_TIMEOUT_MS = 2000


class NotFound(HoardError):
    exit_code = ExitCode.USAGE


class BadSearch(HoardError):
    """A search text that cannot be searched for (empty of words, too long): its message says why."""

    exit_code = ExitCode.USAGE


def batches(conn: psycopg.Connection, source: str | None = None, limit: int = 50, offset: int = 0
            ) -> tuple[list[dict[str, Any]], int]:
    """Ingest and action batches, newest first: source, members, sealed, last event, deleted
    (`hoard delete --batch` dropped it); and the total."""
    where = ""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if source:
        where, params["source"] = "WHERE s.name = %(source)s", source
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"""
            SELECT b.batch_id, s.name AS source, a.name AS action, b.created_at, b.sealed_at,
                   (SELECT count(*) FROM batch_member m WHERE m.batch_id = b.batch_id) AS members,
                   (SELECT e.status FROM action_event e WHERE e.batch_id = b.batch_id
                     ORDER BY e.started_at DESC LIMIT 1) AS last_event,
                   EXISTS (SELECT 1 FROM action_event e WHERE e.batch_id = b.batch_id
                            AND e.detail->>'deleted' = 'true') AS deleted
            FROM action_batch b JOIN action a USING (action_id) LEFT JOIN source s USING (source_id)
            {where} ORDER BY b.created_at DESC, b.batch_id LIMIT %(limit)s OFFSET %(offset)s""", params).fetchall()
        total = one(cur.execute(f"SELECT count(*) AS n FROM action_batch b LEFT JOIN source s USING (source_id) {where}",
                            params))["n"]
    return rows, total


def search_query(conn: psycopg.Connection, text: str) -> str:
    """The tsquery text (`'zeb':* & 'x2':*`) that finds rows whose metadata has every word of
    `text`, each as a word or — from MIN_PREFIX_CHARS characters on — the start of one.

    The words are cut from `text` by the same parser and config that made the documents
    (`to_tsvector('simple', …)`, migration 008), so `e-mail`, `user@example.com` or `3.14` are
    looked for as the documents hold them, and nothing a person types is ever read as tsquery
    syntax: operators, quotes and backslashes are separators to that parser, and each word is
    quoted again before it becomes a query. Control characters (NUL, which PostgreSQL text
    cannot hold) are blanks, and a lone surrogate a `?`. BadSearch when the text is too long,
    has too many words or none."""
    if len(text) > MAX_SEARCH_CHARS:
        raise BadSearch(f"the search text is {len(text):,} characters long; at most {MAX_SEARCH_CHARS} — "
                        "search for a few words")
    clean = "".join(" " if ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 else c for c in text)
    clean = clean.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate (from a URL) is no text
    words = one(conn.execute("SELECT coalesce(array_agg(w ORDER BY w), '{}') FROM "
                         "unnest(tsvector_to_array(to_tsvector('simple', %s))) w", [clean]))[0]
    if not words:
        raise BadSearch(f"nothing to search for in {text.strip()[:40]!r}: words are letters and digits "
                        "(punctuation and operators are ignored)")
    if len(words) > MAX_SEARCH_WORDS:
        raise BadSearch(f"the search text has {len(words)} different words; at most {MAX_SEARCH_WORDS}")
    return " & ".join("'" + w.replace("\\", "\\\\").replace("'", "''") + "'"
                      + (":*" if len(w) >= MIN_PREFIX_CHARS else "") for w in words)


def sources(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM source ORDER BY name")]


#: a video's poster: the image its source shipped with it (yt-dlp's thumbnail, a `thumbnail_of`
#: child, hoardfs.adapters.sidecars), found through the edge's primary key — the first one still stored
#: (a deleted one has no bytes to show) and not flagged (unwanted content is no video's face)
POSTER = """(SELECT encode(t.sha256, 'hex') FROM edge e JOIN relationship_type r ON r.rel_id = e.rel_id
                     JOIN node t ON t.node_id = e.child_id JOIN physical_content tc ON tc.node_id = e.child_id
                     WHERE e.parent_id = n.node_id AND r.name = 'thumbnail_of' AND ft.kind = 'video'
                       AND NOT tc.is_deleted AND NOT tc.in_black_list
                     ORDER BY e.child_id LIMIT 1)"""


#: a dataset's own files (its manifest.jsonl and dataset.json, recorded as nodes located only
#: `dataset:<name>@<N>/…`: hoardfs.datasets.api) are the dataset's, not assets: the asset search
#: leaves them out, as a dataset's selection does (hoardfs.sql.datasets); a node also located
#: elsewhere (the same bytes ingested) stays. Two look-ups of physical_path's primary key a row.
DATASET_FILE = ("NOT (EXISTS (SELECT 1 FROM physical_path dp WHERE dp.node_id = n.node_id "
                "AND dp.locator LIKE 'dataset:%%') AND NOT EXISTS (SELECT 1 FROM physical_path op "
                "WHERE op.node_id = n.node_id AND op.locator NOT LIKE 'dataset:%%'))")


def search(conn: psycopg.Connection, source: str | None = None, batch: str | None = None,
           since: dt.date | None = None, until: dt.date | None = None, text: str | None = None,
           file_kind: str | None = None, limit: int = 48, offset: int = 0, *,
           label: str | None = None) -> list[dict[str, Any]]:
    """Physical nodes (newest first) by source, batch, ingest date, file kind, a label (`key` or
    `key=value`) and words in their metadata (`search_query`: every word, as a word or the start
    of one, in the title, author, user name or a string value of raw_metadata); deleted nodes
    are left out, black-listed ones shown. A text with nothing to search for, or a label with
    no key or a character no label holds (NUL, a lone surrogate), raises BadSearch."""
    query, params = search_statement(conn, source, batch, since, until, text, file_kind, limit, offset, label=label)
    # Local to a transaction, or a savepoint in the caller's when one is open (a connection that is
    # not autocommit opened one to cut the words): a setting made in a savepoint outlives its
    # release, so the caller's is put back — its next statements are not cut at 2 s.
    started = time.monotonic()
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            callers = one(cur.execute("SELECT current_setting('statement_timeout') AS t"))["t"]
            cur.execute(f"SET LOCAL statement_timeout = {int(SEARCH_TIMEOUT_MS)}")
            rows = cur.execute(query, params).fetchall()
            cur.execute("SELECT set_config('statement_timeout', %s, true)", [callers])
            return rows
    except psycopg.errors.QueryCanceled:
        if time.monotonic() - started < SEARCH_TIMEOUT_MS / 1000:
            raise  # cancelled before its time was up (pg_cancel_backend, a shutdown): not the search's breadth
        raise BadSearch(f"the search did not finish in {SEARCH_TIMEOUT_MS / 1000:g} s: it matches too much to sort "
                        "— add a word, a longer word, or a source, batch or date") from None


def search_statement(conn: psycopg.Connection, source: str | None = None, batch: str | None = None,
                     since: dt.date | None = None, until: dt.date | None = None, text: str | None = None,
                     file_kind: str | None = None, limit: int = 48, offset: int = 0, *,
                     label: str | None = None) -> tuple[str, dict[str, Any]]:
    """The statement `search` runs and its parameters (tests EXPLAIN it)."""
    where = ["NOT pc.is_deleted", DATASET_FILE]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    for what, value in (("source", source), ("batch", batch), ("kind", file_kind), ("label", label)):
        if value and ("\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)):
            # PostgreSQL text holds no NUL, UTF-8 no lone surrogate: no row has one, and the
            # driver would refuse the query (which the pages took for a database down)
            raise BadSearch(f"{what} {value[:40]!r} holds a character no {what} can (NUL, a lone surrogate)")
    if source:
        where.append("EXISTS (SELECT 1 FROM common_metadata cm JOIN source s USING (source_id) "
                     "WHERE cm.node_id = n.node_id AND s.name = %(source)s)")
        params["source"] = source
    if batch:
        where.append("EXISTS (SELECT 1 FROM batch_member m WHERE m.node_id = n.node_id AND m.batch_id = %(batch)s)")
        params["batch"] = batch
    if since:
        where.append("n.created_at >= %(since)s")
        params["since"] = since
    if until:
        where.append("n.created_at < %(until)s::date + 1")
        params["until"] = until
    if file_kind:
        where.append("ft.kind = %(kind)s")
        params["kind"] = file_kind
    if label:
        key, eq, value = label.partition("=")
        if not key.strip():
            raise BadSearch(f"label {label[:40]!r} names no key: write key or key=value (e.g. class=cat)")
        where.append("EXISTS (SELECT 1 FROM label l WHERE l.node_id = n.node_id AND l.key = %(label_key)s"
                     + (" AND md5(l.value) = md5(%(label_value)s) AND l.value = %(label_value)s)" if eq else ")"))
        params |= {"label_key": key.strip(), "label_value": value.strip()}
    if text:
        where.append("n.node_id IN (SELECT cm.node_id FROM common_metadata cm WHERE "
                     "metadata_search_doc(cm.title, cm.author, cm.user_name, cm.raw_metadata) @@ %(words)s::tsquery)")
        params["words"] = search_query(conn, text)
    return f"""
            SELECT n.node_id, encode(n.sha256, 'hex') AS sha256, pc.size, pc.file_type, ft.kind,
                   pc.in_black_list, n.created_at,
                   (SELECT cm.title FROM common_metadata cm WHERE cm.node_id = n.node_id LIMIT 1) AS title,
                   (SELECT min(p.locator) FROM physical_path p WHERE p.node_id = n.node_id) AS locator,
                   {POSTER} AS poster
            FROM node n JOIN physical_content pc USING (node_id) LEFT JOIN file_type ft ON ft.ext = pc.file_type
            WHERE {' AND '.join(where)}
            ORDER BY n.node_id DESC LIMIT %(limit)s OFFSET %(offset)s""", params


def _node_id(conn: psycopg.Connection, sha256_hex: str) -> int:
    try:
        sha = bytes.fromhex(sha256_hex)
    except ValueError:
        raise NotFound(f"{sha256_hex!r} is not a sha256 (64 hex digits)") from None
    row = conn.execute("SELECT node_id FROM node WHERE sha256 = %s", [sha]).fetchone()
    if row is None:
        raise NotFound(f"no node {sha256_hex} in the database")
    return row[0]


def node(conn: psycopg.Connection, sha256_hex: str, depth: int = 1) -> dict[str, Any]:
    """One node: kind, content, paths, metadata per source, labels, batches, and its parents and
    children up to `depth` (≤ MAX_DEPTH) levels, each with the relationship and `via`, the node
    it was reached from (this node's `node_id` at depth 1). A cycle of edges back to this node
    does not make it its own relative."""
    node_id = _node_id(conn, sha256_hex)
    depth = max(1, min(depth, MAX_DEPTH))
    with conn.cursor(row_factory=dict_row) as cur:
        out = one(cur.execute(f"""
            SELECT n.node_id, encode(n.sha256, 'hex') AS sha256, n.is_virtual, n.created_at,
                   pc.size, pc.file_type, ft.kind, pc.in_black_list, pc.is_deleted,
                   va.kind AS virtual_kind, va.description, {POSTER} AS poster
            FROM node n LEFT JOIN physical_content pc USING (node_id)
            LEFT JOIN file_type ft ON ft.ext = pc.file_type LEFT JOIN virtual_asset va USING (node_id)
            WHERE n.node_id = %s""", [node_id]))
        out["paths"] = [r["locator"] for r in cur.execute(
            "SELECT locator FROM physical_path WHERE node_id = %s ORDER BY locator LIMIT 100", [node_id])]
        out["metadata"] = cur.execute("""
            SELECT s.name AS source, cm.title, cm.author, cm.user_name, cm.view_count, cm.update_time,
                   cm.download_time, cm.raw_metadata FROM common_metadata cm JOIN source s USING (source_id)
            WHERE cm.node_id = %s ORDER BY s.name""", [node_id]).fetchall()
        out["labels"] = cur.execute("SELECT key, value, origin FROM label WHERE node_id = %s ORDER BY key, value",
                                    [node_id]).fetchall()
        out["batches"] = [r["batch_id"] for r in cur.execute(
            "SELECT batch_id FROM batch_member WHERE node_id = %s ORDER BY batch_id LIMIT 100", [node_id])]
    out["made_by"] = memo.made_by(conn, node_id)  # the action runs that made it (`hoard info` too)
    with conn.cursor(row_factory=dict_row) as cur:
        for direction, (near, far) in (("parents", ("child_id", "parent_id")), ("children", ("parent_id", "child_id"))):
            out[direction] = cur.execute(f"""
                WITH RECURSIVE walk(node_id, via, rel, depth) AS (
                    SELECT e.{far}, e.{near}, r.name, 1 FROM edge e JOIN relationship_type r USING (rel_id)
                    WHERE e.{near} = %(id)s
                  UNION
                    SELECT e.{far}, e.{near}, r.name, w.depth + 1 FROM walk w JOIN edge e ON e.{near} = w.node_id
                    JOIN relationship_type r USING (rel_id)
                    WHERE w.depth < %(depth)s AND e.{far} <> %(id)s)  -- a cycle back to the node itself
                SELECT * FROM (
                    SELECT DISTINCT ON (w.node_id) w.node_id, w.via, w.rel, w.depth, encode(n.sha256, 'hex') AS sha256,
                           n.is_virtual, va.kind AS virtual_kind, va.stable_id, pc.file_type
                    FROM walk w JOIN node n USING (node_id) LEFT JOIN virtual_asset va USING (node_id)
                    LEFT JOIN physical_content pc USING (node_id)
                    ORDER BY w.node_id, w.depth) nearest
                ORDER BY depth, node_id LIMIT %(limit)s""",
                {"id": node_id, "depth": depth, "limit": MAX_RELATIVES + 1}).fetchall()
            # one more than shown says that more exist (the page says the list is cut)
            out[f"{direction}_cut"] = len(out[direction]) > MAX_RELATIVES
            del out[direction][MAX_RELATIVES:]
    return out


def set_black_list(conn: psycopg.Connection, sha256_hex: str, flagged: bool) -> None:
    """Flag (or unflag) a physical node as low quality / unwanted: selectors leave it out."""
    node_id = _node_id(conn, sha256_hex)
    with conn.transaction():
        n = conn.execute("UPDATE physical_content SET in_black_list = %s WHERE node_id = %s",
                         [flagged, node_id]).rowcount
    if n == 0:
        raise NotFound(f"node {sha256_hex} is virtual: only stored content can be flagged")


def pipelines(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Each pipeline: its stages (action names, in order) and how many batches have finished
    each stage (`done_position`; -1 = none yet)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("""
            SELECT p.pipeline_id, p.name,
                   coalesce((SELECT array_agg(a.name ORDER BY ps.position) FROM pipeline_stage ps
                             JOIN action a USING (action_id) WHERE ps.pipeline_id = p.pipeline_id), '{}') AS stages,
                   coalesce((SELECT jsonb_object_agg(done_position, n) FROM (
                       SELECT done_position, count(*) AS n FROM batch_stage bs
                       WHERE bs.pipeline_id = p.pipeline_id GROUP BY done_position) c), '{}') AS done
            FROM pipeline p ORDER BY p.name""").fetchall()
    return rows


def ingested_per_day(conn: psycopg.Connection, days: int = 30) -> list[dict[str, Any]]:
    """Files that joined an ingest batch per UTC day and source, today and the `days` days
    before (for a chart; the GUI gathers it in its background refresh, not per page view).
    Summed from batch_member_tally (migration 013: a few rows per batch and day), not counted
    over batch_member, which at 10 M members took seconds."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT t.day, coalesce(s.name, '?') AS source, sum(t.items)::bigint AS items
            FROM batch_member_tally t JOIN action_batch b USING (batch_id) LEFT JOIN source s USING (source_id)
            WHERE b.action_id = 0 AND t.day >= (now() AT TIME ZONE 'UTC')::date - %s
            GROUP BY 1, 2 HAVING sum(t.items) > 0 ORDER BY 1, 2""", [days]).fetchall()


def fold_member_tally(conn: psycopg.Connection) -> int:
    """Fold batch_member_tally's rows of past UTC days into one per (batch, day) — each member
    statement appends a row, so a day of many small applies leaves many — and drop the (batch,
    day) pairs that sum to 0 (hoard health --record, after its usage sample). Today's rows are left to the writers. Returns the rows removed.
    Safe beside writers: rows committed after this statement began are not touched."""
    return int(one(conn.execute("""
        WITH loose AS (SELECT batch_id, day FROM batch_member_tally WHERE day < (now() AT TIME ZONE 'UTC')::date
                       GROUP BY 1, 2 HAVING count(*) > 1 OR sum(items) = 0),
             gone AS (DELETE FROM batch_member_tally t USING loose l WHERE t.batch_id = l.batch_id AND t.day = l.day
                      RETURNING t.batch_id, t.day, t.items),
             kept AS (INSERT INTO batch_member_tally (batch_id, day, items)
                      SELECT batch_id, day, sum(items) FROM gone GROUP BY 1, 2 HAVING sum(items) <> 0
                      RETURNING 1)
        SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept)"""))[0])


def ingested_per_day_at(url: str, days: int = 30) -> list[dict[str, Any]]:
    """`ingested_per_day` on a connection of its own, for a status refresh that must not fail:
    [] when the database does not answer (`hoardfs.sql.health.database_status` says why)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return ingested_per_day(conn, days)
    except psycopg.Error:
        return []


def edge_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Edges by relationship name."""
    return dict(conn.execute("SELECT r.name, count(*) FROM edge JOIN relationship_type r USING (rel_id) "
                             "GROUP BY r.name").fetchall())


def nodes_in_several_batches(conn: psycopg.Connection) -> int:
    """Nodes that more than one batch holds (stored once)."""
    return one(conn.execute("SELECT count(*) FROM (SELECT node_id FROM batch_member GROUP BY node_id "
                        "HAVING count(*) > 1) x"))[0]


def run_children(conn: psycopg.Connection, run_id: str, relationship: str) -> tuple[int, str | None, int]:
    """What action run `run_id` made: (its children linked to their parent by `relationship`,
    the smallest such child's sha256 hex, its result_canny rows)."""
    made = one(conn.execute(
        "SELECT count(*), min(encode(n.sha256, 'hex')) FROM edge e JOIN relationship_type r USING (rel_id) "
        "JOIN node n ON n.node_id = e.child_id JOIN physical_path p ON p.node_id = e.child_id "
        "WHERE r.name = %s AND p.locator LIKE %s", [relationship, f"action:{run_id}/%"]))
    results = one(conn.execute("SELECT count(*) FROM result_canny WHERE batch_id = %s", [run_id]))[0]
    return int(made[0]), made[1], int(results)


def node_facts(conn: psycopg.Connection, sha: bytes) -> dict[str, Any]:
    """What the database says about the node of `sha` (`hoard info`): its row, its metadata by
    source, its first 50 labels, its batches and its first 50 edges to parents and to children;
    {"known": False} when there is none."""
    row = conn.execute(
        "SELECT n.node_id, n.is_virtual, pc.size, pc.is_deleted, pc.in_black_list, pc.file_type "
        "FROM node n LEFT JOIN physical_content pc USING (node_id) WHERE n.sha256 = %s", [sha]).fetchone()
    if row is None:
        return {"known": False}
    meta = conn.execute(
        "SELECT s.name, cm.title, cm.author, cm.user_name, cm.view_count, cm.download_time "
        "FROM common_metadata cm JOIN source s USING (source_id) WHERE cm.node_id = %s", [row[0]]).fetchall()
    labels = conn.execute("SELECT key, value FROM label WHERE node_id = %s ORDER BY key LIMIT 50", [row[0]]).fetchall()
    batches = [r[0] for r in conn.execute("SELECT batch_id FROM batch_member WHERE node_id = %s ORDER BY batch_id",
                                          [row[0]])]
    # its first 50 edges each way: an action's child names its parent (thumbnail_of, edges_of …),
    # each with the action whose relationship type it is (None: the ingest's)
    edges = [{"direction": d, "relationship": rel, "sha256": bytes(other).hex(), "action": action}
             for d, rel, other, action in conn.execute(
        "(SELECT 'parent', r.name, n.sha256, a.name FROM edge e JOIN relationship_type r USING (rel_id) JOIN node n "
        " ON n.node_id = e.parent_id LEFT JOIN action a ON a.action_id = r.action_id AND r.action_id <> 0 "
        " WHERE e.child_id = %(id)s ORDER BY 2, 3 LIMIT 50) UNION ALL "
        "(SELECT 'child', r.name, n.sha256, a.name FROM edge e JOIN relationship_type r USING (rel_id) JOIN node n "
        " ON n.node_id = e.child_id LEFT JOIN action a ON a.action_id = r.action_id AND r.action_id <> 0 "
        " WHERE e.parent_id = %(id)s ORDER BY 2, 3 LIMIT 50)", {"id": row[0]}).fetchall()]
    return {"known": True, "node_id": row[0], "virtual": row[1], "deleted": row[3], "black_listed": row[4],
            "file_type": row[5], "batches": batches, "edges": edges, "made_by": memo.made_by(conn, row[0]),
            "metadata": [{"source": m[0], "title": m[1], "author": m[2], "user": m[3], "view_count": m[4],
                          "download_time": m[5].isoformat() if m[5] else None} for m in meta],
            "labels": [{"key": k, "value": v} for k, v in labels]}


def source_names(conn: psycopg.Connection) -> list[str]:
    """Every source the database knows."""
    return [r[0] for r in conn.execute("SELECT name FROM source ORDER BY name").fetchall()]


def locators(conn: psycopg.Connection, shas: list[bytes]) -> list[tuple[bytes, str]]:
    """(sha256, locator) of every original path of these nodes, by sha256 then locator."""
    return [(bytes(s), loc) for s, loc in conn.execute(
        "SELECT n.sha256, pp.locator FROM node n JOIN physical_path pp USING (node_id) "
        "WHERE n.sha256 = ANY(%s) ORDER BY n.sha256, pp.locator", [shas]).fetchall()]
