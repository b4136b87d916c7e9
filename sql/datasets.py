"""SQL of datasets (datasets/plan.py, datasets/api.py): what a sample needs of its node —
labels, lineage to the root, its group key, the source URL, date, author and licence of its
nearest item, boxes of the result tables — in
a few set-based queries per chunk (no query per node), and the `dataset` / `dataset_version`
rows of migration 011."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql as psql

#: nodes per round: their ids go into a temp table that each query hash-joins (a million
#: index look-ups one at a time cost PostgreSQL ~15 µs each, a hash join of them ~1 µs)
CHUNK = 1_000_000
#: a lineage longer than this is cut (a cycle the edge table does not forbid would never end)
MAX_DEPTH = 64
#: raw_metadata keys naming where a root came from, first found wins
URL_KEYS = ("source_url", "webpage_url", "url", "permalink", "original_url")
#: raw_metadata keys naming a licence
LICENCE_KEYS = ("license", "licence")


def _array(ids: Sequence[int]) -> str:
    """A bigint[] literal: psycopg dumps a list of 50,000 ints element by element, far slower."""
    return "{" + ",".join(map(str, ids)) + "}"


def _fill(conn: psycopg.Connection, table: str, ids: Sequence[int]) -> str:
    """A temp table `table` (id bigint) holding `ids` (emptied first), analysed: its name."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (id bigint)")
    conn.execute(f"TRUNCATE {table}")
    conn.execute(f"INSERT INTO {table} SELECT unnest(%s::bigint[])", [_array(ids)])
    conn.execute(f"ANALYZE {table}")
    return table


def sample_rows(conn: psycopg.Connection, node_ids: Sequence[int], ocr_boxes: bool = False) -> dict[int, dict[str, Any]]:
    """node_id → {sha256 (hex), size, file_type, labels {key: [values, sorted]}, lineage [node, parent,
    …, root] (at each step the parent with the lowest node id), root_id, source_url, date,
    author, licences (`provenance`: of the nearest item that holds each), ocr boxes
    [(x, y, w, h, text)] when `ocr_boxes`}. Each query joins the chunk's ids (a temp table,
    `_fill`) to one table — no subquery per node, the planner free to hash-join a million."""
    # a million rows hashed in memory, and no JIT compile for one pass (this connection's own)
    conn.execute("SET work_mem = '256MB'")
    conn.execute("SET jit = off")
    try:
        return _sample_rows(conn, node_ids, ocr_boxes)
    finally:
        conn.execute("DROP TABLE IF EXISTS sr_ids, sr_more")


def _sample_rows(conn: psycopg.Connection, node_ids: Sequence[int], ocr_boxes: bool) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    # a dataset's own manifest and dataset.json (located only `dataset:…`) are never its samples
    manifests = {nid for (nid,) in conn.execute(
        "SELECT node_id FROM physical_path pp WHERE locator LIKE 'dataset:%%' AND NOT EXISTS ("
        "SELECT 1 FROM physical_path o WHERE o.node_id = pp.node_id AND o.locator NOT LIKE 'dataset:%%')")}
    parent: dict[int, int] = {}  # child → its parent with the lowest node id
    asked: set[int] = set()
    for i in range(0, len(node_ids), CHUNK):
        ids = list(node_ids[i:i + CHUNK])
        _fill(conn, "sr_ids", ids)
        for nid, sha, size, ftype in conn.execute(
                "SELECT n.node_id, n.sha256, pc.size, pc.file_type FROM sr_ids s "
                "JOIN node n ON n.node_id = s.id JOIN physical_content pc ON pc.node_id = s.id").fetchall():
            if nid not in manifests:
                rows[nid] = {"node_id": nid, "sha256": bytes(sha).hex(), "size": size, "file_type": ftype,
                             "labels": {}, "lineage": [nid], "boxes": [], "licences": []}
        for nid, key, values in conn.execute(
                "SELECT l.node_id, l.key, array_agg(l.value ORDER BY l.value COLLATE \"C\") FROM sr_ids s "
                "JOIN label l ON l.node_id = s.id GROUP BY l.node_id, l.key").fetchall():
            if nid in rows:
                rows[nid]["labels"][key] = values
        # lineage: the parents of a whole level in one query (shared parents asked once)
        level: list[int] = ids
        for _ in range(MAX_DEPTH):
            new = sorted({n for n in level if n not in asked})
            if new:
                asked.update(new)
                _fill(conn, "sr_more", new)
                parent.update(conn.execute("SELECT e.child_id, min(e.parent_id) FROM sr_more s JOIN edge e "
                                           "ON e.child_id = s.id GROUP BY e.child_id").fetchall())
            level = list({parent[n] for n in level if n in parent})
            if not level:
                break
        for nid in ids:
            r = rows.get(nid)
            if r is None:
                continue
            line, at = r["lineage"], nid
            while at in parent and len(line) <= MAX_DEPTH:  # a cycle the edge table allows is cut
                at = parent[at]
                line.append(at)
        for nid in ids:
            if nid in rows:
                rows[nid]["root_id"] = rows[nid]["lineage"][-1]
        # where each sample came from: the nearest item that says (its own post, not its root)
        _fill(conn, "sr_more", [n for n in ids if n in rows])
        for nid, got in provenance(conn, "sr_more").items():
            rows[nid].update(got)
        for nid in ids:
            if nid in rows:
                for k, v in (("source_url", None), ("date", None), ("author", None), ("licences", [])):
                    rows[nid].setdefault(k, v)
        if ocr_boxes:
            for nid, x, y, w, h, text in conn.execute(
                    "SELECT node_id, x, y, w, h, text FROM result_ocr_box WHERE node_id = ANY(%s) "
                    "ORDER BY node_id, batch_id, box_no", [ids]):
                if nid in rows:
                    rows[nid]["boxes"].append((float(x), float(y), float(w), float(h), text))
    return rows


# -- groups and provenance: what each sample's own post says ---------------------------------------

#: the group kinds a query finds (hoardfs.datasets.spec: split.group); root, node, none,
#: label:KEY and near_dup are made without one
GROUP_KINDS = ("post", "author", "thread", "channel", "lineage")
#: the relationships a kind's item is the parent by, first found wins (the nearer item first)
GROUP_RELS = {"author": ("author_of", "channel_of"), "thread": ("thread_of",), "channel": ("channel_of",)}
#: an item chain (a sample's physical ancestors and the items above them) longer than this is
#: cut; a lineage (physical parents and children) is followed whole (`_lineage_table`)
GROUP_DEPTH = 16
#: how far up provenance looks: a frame → its video file → the video item → its channel is 3;
#: a forum's reply chain (each post a parent of the next) is not followed to its start
PROVENANCE_DEPTH = 6

# `up`: each sample and its physical ancestors (derived-from parents: crops, frames, thumbnails),
# with their distance; `post`: the sample's nearest scraped item — the `media_of` parent of the
# nearest of them that has one (the lowest node id of several); `top`: the ancestor farthest up
# (lowest node id), the sample's post when no item holds it
_UP = """WITH RECURSIVE up(start, at, depth) AS (
  SELECT s.id, s.id, 0 FROM {src} s
  UNION
  SELECT u.start, e.parent_id, u.depth + 1 FROM up u JOIN edge e ON e.child_id = u.at
    JOIN node p ON p.node_id = e.parent_id AND p.is_physical WHERE u.depth < %(depth)s),
post AS (
  SELECT DISTINCT ON (u.start) u.start, e.parent_id AS post, u.depth FROM up u JOIN edge e ON e.child_id = u.at
    JOIN relationship_type r ON r.rel_id = e.rel_id AND r.name = 'media_of'
  ORDER BY u.start, u.depth, e.parent_id),
top AS (SELECT DISTINCT ON (start) start, at FROM up ORDER BY start, depth DESC, at)"""


def group_table(conn: psycopg.Connection, src: str, kind: str, out: str, on_commit_drop: bool = False) -> None:
    """A temp table `out` (node_id, gkey) of every node id in the temp table `src` (id): the
    key of its group of `kind` (GROUP_KINDS; docs/datasets.md "Groups"):

    - post: `post:<id>` of its nearest scraped item (the `media_of` parent of it or of the
      nearest image it derives from), else of the top of its lineage;
    - author / thread / channel: `<kind>:<id>` of the nearest `author_of` (then `channel_of`) /
      `thread_of` / `channel_of` parent of it, its lineage or its post; else its post's key;
    - lineage: `lineage:<lowest node id>` of the nodes joined to it by edges between two
      physical nodes (derived children and parents, either way).
    `on_commit_drop`: the table goes with the caller's transaction (the dry run's)."""
    conn.execute(f"DROP TABLE IF EXISTS {out}")
    out = f"{out} ON COMMIT DROP" if on_commit_drop else out
    if kind == "lineage":
        _lineage_table(conn, src, out)
    elif kind == "post":
        conn.execute(f"CREATE TEMP TABLE {out} AS {_UP.format(src=src)} SELECT t.start AS node_id, "
                     "'post:' || coalesce(p.post, t.at) AS gkey FROM top t LEFT JOIN post p ON p.start = t.start",
                     {"depth": GROUP_DEPTH})
    else:
        rels = list(GROUP_RELS[kind])
        conn.execute(
            f"CREATE TEMP TABLE {out} AS {_UP.format(src=src)}, "
            "anchor(start, at, rank) AS (SELECT start, at, 2 * depth FROM up "
            "UNION ALL SELECT start, post, 2 * depth + 1 FROM post), "
            "hit AS (SELECT DISTINCT ON (a.start) a.start, e.parent_id AS g FROM anchor a JOIN edge e "
            "ON e.child_id = a.at JOIN relationship_type r ON r.rel_id = e.rel_id AND r.name = ANY(%(rels)s) "
            "ORDER BY a.start, array_position(%(rels)s, r.name), a.rank, e.parent_id) "
            "SELECT t.start AS node_id, coalesce(%(kind)s || ':' || h.g, 'post:' || coalesce(p.post, t.at)) AS gkey "
            "FROM top t LEFT JOIN post p ON p.start = t.start LEFT JOIN hit h ON h.start = t.start",
            {"depth": GROUP_DEPTH, "rels": rels, "kind": kind})
    conn.execute(f"ANALYZE {out.split()[0]}")


def _lineage_table(conn: psycopg.Connection, src: str, out: str) -> None:
    """`out` (node_id, gkey) for group_table's lineage: `lineage:<lowest node id>` of the
    component each node of `src` lies in, over the edges between physical nodes (either way).

    The nodes the samples reach are walked once, all together — a node is visited once however
    many samples reach it and whatever cycle the edges make — and the edges among them joined
    into components in Python (union-find): time in the nodes and edges of the lineages, never
    samples × lineage size (a walk per sample took a minute over the 500 frames of one video)."""
    edges = conn.execute(
        f"WITH RECURSIVE reach(at) AS (SELECT id FROM {src} UNION "
        "SELECT x.other FROM reach r CROSS JOIN LATERAL ("
        "SELECT e.parent_id FROM edge e JOIN node p ON p.node_id = e.parent_id AND p.is_physical "
        "WHERE e.child_id = r.at UNION ALL "
        "SELECT e.child_id FROM edge e JOIN node k ON k.node_id = e.child_id AND k.is_physical "
        "WHERE e.parent_id = r.at) x(other)) "
        "SELECT DISTINCT e.parent_id, e.child_id FROM reach r JOIN edge e ON e.child_id = r.at "
        "JOIN node p ON p.node_id = e.parent_id AND p.is_physical").fetchall()
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # every node on the way points at the root
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:  # the lower id names the component
            parent[max(ra, rb)] = min(ra, rb)
    name, _, rest = out.partition(" ")  # (out: "NAME" or "NAME ON COMMIT DROP")
    conn.execute(f"CREATE TEMP TABLE {name} (node_id bigint, gkey text) {rest}")
    ids = [nid for (nid,) in conn.execute(f"SELECT DISTINCT id FROM {src}").fetchall()]
    with conn.cursor().copy(f"COPY {name} (node_id, gkey) FROM STDIN") as cp:
        for nid in ids:
            cp.write_row((nid, f"lineage:{find(nid)}"))


def group_keys(conn: psycopg.Connection, node_ids: Sequence[int], kind: str) -> dict[int, str]:
    """node id → its group key of `kind` (group_table)."""
    _fill(conn, "gk_ids", list(node_ids))
    try:
        group_table(conn, "gk_ids", kind, "gk_out")
        return dict(conn.execute("SELECT node_id, gkey FROM gk_out").fetchall())
    finally:
        conn.execute("DROP TABLE IF EXISTS gk_ids, gk_out")


def provenance(conn: psycopg.Connection, src: str) -> dict[int, dict[str, Any]]:
    """node id (of the temp table `src`) → {source_url, date, author, licences}: each from the
    nearest item that holds it — the node, then its parents of every kind (its post, the image
    it derives from), then theirs — at equal distance the lowest node id, then the source
    name. `date` is the YYYY-MM-DD of the download time; `author` the metadata's author, else
    its user name; a value no item holds is None ([] for licences)."""
    out: dict[int, dict[str, Any]] = {}
    for start, _d, _at, dl, author, user, raw in conn.execute(
            f"WITH RECURSIVE up(start, at, depth) AS (SELECT s.id, s.id, 0 FROM {src} s UNION "
            "SELECT u.start, e.parent_id, u.depth + 1 FROM up u JOIN edge e ON e.child_id = u.at "
            "WHERE u.depth < %(depth)s), near AS (SELECT start, at, min(depth) AS d FROM up GROUP BY start, at) "
            "SELECT n.start, n.d, n.at, cm.download_time, cm.author, cm.user_name, CASE WHEN "
            "jsonb_typeof(cm.raw_metadata) = 'object' THEN (SELECT jsonb_object_agg(k, v) FROM "
            "jsonb_each(cm.raw_metadata) AS j(k, v) WHERE k = ANY(%(keys)s)) END "
            "FROM near n JOIN common_metadata cm ON cm.node_id = n.at JOIN source src ON src.source_id = cm.source_id "
            "ORDER BY n.start, n.d, n.at, src.name",
            {"depth": PROVENANCE_DEPTH, "keys": list(URL_KEYS + LICENCE_KEYS)}):
        got = out.setdefault(start, {"source_url": None, "date": None, "author": None, "licences": []})
        if got["source_url"] is None and isinstance(raw, dict):
            got["source_url"] = next((str(raw[k]) for k in URL_KEYS if raw.get(k)), None)
        if got["date"] is None and dl is not None:
            got["date"] = dl.astimezone(dt.UTC).date().isoformat()
        if got["author"] is None and (author or user):
            got["author"] = str(author or user)
        if not got["licences"]:
            got["licences"] = _licences(raw)
    return out


# -- the dry run: counts and bytes aggregated here, never a row per sample in Python ----------------
#
# Temp tables (ON COMMIT DROP: run in one transaction): ds_cls (the selection, each node with
# its class and parent), ds_up (the roots of those parents), ds_kept (the classed nodes with their
# split), ds_final (after the caps). Each computes what hoardfs.datasets.plan computes per sample — the
# same rules — so the dry run's counts are the build's (tests/test_datasets.py compares them).

#: the signed bigint whose XOR maps an unsigned 64-bit value onto a signed one, order kept
_SIGN = "(-9223372036854775807 - 1)"
#: a classed node's root (ds_cls c, ds_up u)
ROOT = "coalesce(u.root_id, c.node_id)"


def _one(conn: psycopg.Connection, query: str, params: Sequence[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def dry_select(conn: psycopg.Connection, query: Any, params: dict[str, object], class_label: str | None,
               parents: bool, by_id: bool = False) -> tuple[int, int]:
    """ds_cls(ord, node_id, sha256, size, cls, n, parent): the selector's nodes in its order,
    less the nodes located only `dataset:…` (a dataset's manifest is never a sample), each with
    its class (the least value of `class_label`, `n` its number of values; n NULL: it has none;
    without `class_label`, cls NULL and n 1) and, with `parents`, the parent with the lowest node
    id. `by_id`: the selection's order is its node ids' (`ord` is the node id: nothing sorted).
    One statement: each table joined once. (selected, classed)."""
    conn.execute("CREATE TEMP TABLE ds_man ON COMMIT DROP AS SELECT DISTINCT node_id FROM physical_path pp "
                 "WHERE locator LIKE 'dataset:%' AND NOT EXISTS (SELECT 1 FROM physical_path o "
                 "WHERE o.node_id = pp.node_id AND o.locator NOT LIKE 'dataset:%')")
    # a million rows hashed and sorted: in memory, and no JIT compile (~1 s) for one run
    conn.execute("SET LOCAL work_mem = '256MB'")
    with contextlib.suppress(psycopg.errors.InvalidParameterValue):  # (only before a session's first temp table)
        with conn.transaction():
            conn.execute("SET LOCAL temp_buffers = '256MB'")  # the temp tables in memory, not written out
    conn.execute("SET LOCAL jit = off")
    sel = psql.SQL("(SELECT {} AS ord, row_number() OVER () AS rn, s.node_id, s.sha, s.size FROM ({}) "
                   "s(node_id, sha, size) WHERE s.node_id NOT IN (SELECT node_id FROM ds_man))").format(
        psql.SQL("s.node_id" if by_id else "row_number() OVER ()"), query)
    # first each table joined as it is: a node with one class value and at most one parent (the
    # usual case) is one row; if any node made two, the rows are grouped instead
    cls = "c.value AS cls, CASE WHEN c.node_id IS NULL THEN NULL ELSE 1 END AS n" if class_label is not None \
        else "NULL::text AS cls, 1 AS n"
    join_c = "LEFT JOIN label c ON c.node_id = s.node_id AND c.key = %(key)s" if class_label is not None else ""
    parent = "p.parent_id AS parent" if parents else "NULL::bigint AS parent"
    join_p = "LEFT JOIN edge p ON p.child_id = s.node_id" if parents else ""
    conn.execute(psql.SQL(f"CREATE TEMP TABLE ds_cls ON COMMIT DROP AS SELECT s.ord, s.rn, s.node_id, "
                          f"decode(s.sha, 'hex') AS sha256, s.size, {cls}, {parent} FROM {{}} s {join_c} {join_p}"
                          ).format(sel), {**params, "key": class_label})
    if _one(conn, "SELECT count(*) <> coalesce(max(rn), 0) FROM ds_cls"):
        conn.execute("DROP TABLE ds_cls")
        cls = "c.cls, c.n" if class_label is not None else "NULL::text AS cls, 1 AS n"
        join_c = ("LEFT JOIN (SELECT l.node_id, min(l.value COLLATE \"C\") AS cls, count(*) AS n FROM label l "
                  "JOIN ds_sel x ON x.node_id = l.node_id WHERE l.key = %(key)s GROUP BY l.node_id) c "
                  "ON c.node_id = s.node_id") if class_label is not None else ""
        parent = "p.parent" if parents else "NULL::bigint AS parent"
        join_p = ("LEFT JOIN (SELECT e.child_id, min(e.parent_id) AS parent FROM edge e JOIN ds_sel x "
                  "ON x.node_id = e.child_id GROUP BY e.child_id) p ON p.child_id = s.node_id") if parents else ""
        conn.execute(psql.SQL("CREATE TEMP TABLE ds_sel ON COMMIT DROP AS SELECT * FROM {} q").format(sel), params)
        conn.execute("ANALYZE ds_sel")
        conn.execute(f"CREATE TEMP TABLE ds_cls ON COMMIT DROP AS SELECT s.ord, s.node_id, decode(s.sha, 'hex') AS "
                     f"sha256, s.size, {cls}, {parent} FROM ds_sel s {join_c} {join_p}", {"key": class_label})
    conn.execute("ANALYZE ds_cls")
    row = conn.execute("SELECT count(*), count(n) FROM ds_cls").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def dry_count(conn: psycopg.Connection, table: Any, params: dict[str, object] | None = None) -> int:
    """Rows of a temp table (a name), or of a query (Composed: the selector's)."""
    q = psql.SQL("SELECT count(*) FROM ({}) q").format(table) if not isinstance(table, str) else \
        f"SELECT count(*) FROM {table}"
    row = conn.execute(q, params).fetchone()
    assert row is not None
    return int(row[0])


def dry_keys(conn: psycopg.Connection, keys: Sequence[str]) -> set[str]:
    """Which of `keys` some selected node has as a label key."""
    return {k for k in keys if _one(
        conn, "SELECT EXISTS (SELECT 1 FROM label l JOIN ds_cls s ON s.node_id = l.node_id WHERE l.key = %s)", [k])}


def dry_all_keys(conn: psycopg.Connection) -> set[str]:
    return {k for (k,) in conn.execute(
        "SELECT DISTINCT l.key FROM label l WHERE l.node_id IN (SELECT node_id FROM ds_cls)")}


#: values of a key that start like JSON fetched from the server at a time, looking for a blob
JSON_CANDIDATES = 10_000


def dry_json_value(conn: psycopg.Connection, key: str, is_blob: Callable[[str], bool]) -> tuple[str, str] | None:
    """The first selected node (selection order) with a value of `key` that `is_blob` says is a
    JSON blob, as (sha256 hex, the value) — as the build finds it: every candidate is asked (the
    values starting with `{` or `[`, streamed JSON_CANDIDATES at a time; PostgreSQL 15 cannot
    test a text for JSON without failing on it), so a dry run never passes what the build refuses."""
    with conn.cursor(name="ds_json_values") as cur:
        cur.itersize = JSON_CANDIDATES
        cur.execute("SELECT encode(s.sha256, 'hex'), l.value FROM label l JOIN ds_cls s ON s.node_id = l.node_id "
                    "WHERE l.key = %s AND l.value ~ '^[[:space:]]*[[{]' ORDER BY s.ord, l.value COLLATE \"C\"",
                    [key])
        return next(((sha, v) for sha, v in cur if is_blob(v)), None)


def dry_not_jpeg(conn: psycopg.Connection, table: str) -> tuple[str, str, int, bool] | None:
    """The dry run's sample (of `table`, dry_caps') with the lowest node id whose file type is
    not jpg/jpeg: (sha256 hex, its file type, node id, whether another sample shares its
    sha256's first 16 digits — its key then names the node too), or None."""
    row = conn.execute(
        f"SELECT encode(t.sha256, 'hex'), coalesce(pc.file_type, ''), t.node_id, EXISTS (SELECT 1 FROM {table} o "
        "WHERE substring(o.sha256 from 1 for 8) = substring(t.sha256 from 1 for 8) AND o.node_id <> t.node_id) "
        f"FROM {table} t JOIN physical_content pc ON pc.node_id = t.node_id "
        "WHERE lower(coalesce(pc.file_type, '')) NOT IN ('jpg', 'jpeg') ORDER BY t.node_id LIMIT 1").fetchone()
    return (row[0], row[1], int(row[2]), bool(row[3])) if row else None


def dry_two_classes(conn: psycopg.Connection, class_label: str) -> tuple[str, list[str]] | None:
    """The first node (selection order) with two values of `class_label`: (sha256 hex, its
    values in code-point order), or None."""
    two = conn.execute(
        "SELECT encode(c.sha256, 'hex'), array_agg(l.value ORDER BY l.value COLLATE \"C\") FROM "
        "(SELECT * FROM ds_cls WHERE n > 1 ORDER BY ord LIMIT 1) c JOIN label l ON l.node_id = c.node_id AND l.key = %s "
        "GROUP BY c.sha256", [class_label]).fetchone()
    return (two[0], list(two[1])) if two else None


def dry_found(conn: psycopg.Connection) -> list[str]:
    """The classes found, sorted by code point."""
    return sorted(c for (c,) in conn.execute("SELECT DISTINCT cls FROM ds_cls WHERE cls IS NOT NULL"))


def dry_node_of(conn: psycopg.Connection, cls: str) -> str:
    """The first node (selection order) of class `cls`: sha256 hex."""
    return _one(conn, "SELECT encode(sha256, 'hex') FROM ds_cls WHERE cls = %s ORDER BY ord LIMIT 1", [cls])


def dry_roots(conn: psycopg.Connection, ratios: dict[str, float], salt: str) -> None:
    """ds_up(start, root_id, split_idx): the root of each distinct parent of a classed node, and
    the split `root:<root id>` draws (split_case) — the climb of
    sample_rows (at each step the parent with the lowest node id, at most MAX_DEPTH steps from
    the sample), made once per parent, not once per sample. A node's root is its parent's, or
    itself when it has none."""
    draw = split_case(ratios, "'root:' || at")
    conn.execute(
        f"CREATE TEMP TABLE ds_up ON COMMIT DROP AS WITH RECURSIVE up(start, at, nxt, depth) AS ("
        "SELECT p.parent, p.parent, (SELECT min(e.parent_id) FROM edge e WHERE e.child_id = p.parent), 1 "
        "FROM (SELECT DISTINCT parent FROM ds_cls WHERE parent IS NOT NULL AND n IS NOT NULL) p "
        "UNION ALL SELECT u.start, u.nxt, (SELECT min(e.parent_id) FROM edge e WHERE e.child_id = u.nxt), u.depth + 1 "
        "FROM up u WHERE u.nxt IS NOT NULL AND u.depth < %(depth)s) "
        f"SELECT start, at AS root_id, {draw} AS split_idx FROM up "
        "WHERE nxt IS NULL OR depth = %(depth)s", {"depth": MAX_DEPTH, "salt": salt.encode() + b"\0"})
    conn.execute("ANALYZE ds_up")


def dry_label_pairs(conn: psycopg.Connection, key: str) -> list[tuple[int, str]]:
    """(root id, value of `key`) of the classed nodes: what the label groups are made of
    (one row per distinct pair, not per sample)."""
    return conn.execute(f"SELECT DISTINCT {ROOT}, l.value FROM ds_cls c LEFT JOIN ds_up u ON u.start = c.parent "
                        "JOIN label l ON l.node_id = c.node_id AND l.key = %s WHERE c.n IS NOT NULL", [key]).fetchall()


def dry_roots_of(conn: psycopg.Connection, node_ids: list[int]) -> list[tuple[int, int]]:
    """(node id, root id) of the classed nodes among `node_ids` (the near-duplicate groups'
    members: what those groups are joined with)."""
    return conn.execute(f"SELECT c.node_id, {ROOT} FROM ds_cls c LEFT JOIN ds_up u ON u.start = c.parent "
                        "WHERE c.n IS NOT NULL AND c.node_id = ANY(%s)", [node_ids]).fetchall()


def dry_drop(conn: psycopg.Connection, node_ids: list[int]) -> int:
    """Take these nodes out of ds_kept (the copies `dedup = "by_near_dup"` drops); how many were there."""
    return conn.execute("DELETE FROM ds_kept WHERE node_id = ANY(%s)", [node_ids]).rowcount


def dry_kept_ids(conn: psycopg.Connection, node_ids: list[int]) -> list[int]:
    """Which of `node_ids` are classed nodes of the selection (ds_cls), in node id order."""
    return [n for (n,) in conn.execute("SELECT node_id FROM ds_cls WHERE n IS NOT NULL AND node_id = ANY(%s) "
                                       "ORDER BY node_id", [node_ids])]


def split_thresholds(ratios: dict[str, float]) -> list[int]:
    """For each split in order, N: a draw n (the first 8 bytes of the hash, unsigned) falls in
    it or before iff n < N — exactly where `hoardfs.datasets.plan.split_of`'s `n / 2**64 < acc` (acc
    summed as it sums it, in floats) changes, found by bisection over the integers."""
    out, acc = [], 0.0
    for r in ratios.values():
        acc += r
        lo, hi = 0, 2 ** 64
        while lo < hi:
            mid = (lo + hi) // 2
            if mid / 2 ** 64 >= acc:
                hi = mid
            else:
                lo = mid + 1
        out.append(lo)
    return out


def split_case(ratios: dict[str, float], expr: str) -> str:
    """SQL: the split index of the group key `expr` (text) drawn as hoardfs.datasets.plan.split_of does:
    sha256(%(salt)s || key), its first 8 bytes an unsigned integer against the thresholds (the
    last split when the float sum of the ratios falls a hair short of 1)."""
    n = (f"(('x' || encode(substring(sha256(%(salt)s::bytea || convert_to({expr}, 'UTF8')) from 1 for 8), 'hex'))"
         f"::bit(64)::bigint # {_SIGN})")
    if len(ratios) == 1:
        return "0"
    arms = [f"WHEN {n} < {t - 2 ** 63} THEN {i}" if t < 2 ** 64 else f"WHEN true THEN {i}"
            for i, t in enumerate(split_thresholds(ratios)[:-1])]
    # past the last threshold but one the draw falls in the last split (split_of's fallback too)
    return f"(CASE {' '.join(arms)} ELSE {len(ratios) - 1} END)"


def dry_groups(conn: psycopg.Connection, group: str, near: dict[int, str], root_keys: dict[int, str] | None) -> None:
    """ds_gk(node_id, gkey): each classed node's group key, as hoardfs.datasets.plan.group_keys
    makes it — `near`: node id → its near-duplicate group's name (near_dup); `root_keys`: root
    id → its label group's key (label:KEY; a root without one keys `root:<id>`). root and
    label:KEY need ds_up (dry_roots)."""
    classed = "FROM ds_cls c LEFT JOIN ds_up u ON u.start = c.parent" if group == "root" or group.startswith(
        "label:") else "FROM ds_cls c"
    if group in GROUP_KINDS:
        conn.execute("CREATE TEMP TABLE ds_cids ON COMMIT DROP AS SELECT node_id AS id FROM ds_cls WHERE n IS NOT NULL")
        group_table(conn, "ds_cids", group, "ds_gk", on_commit_drop=True)
        return
    if group == "near_dup":
        conn.execute("CREATE TEMP TABLE ds_nd (node_id bigint PRIMARY KEY, name text) ON COMMIT DROP")
        with conn.cursor().copy("COPY ds_nd (node_id, name) FROM STDIN") as cp:
            for nid, name in near.items():
                cp.write_row((nid, name))
        key = "coalesce('near_dup:' || d.name, 'node:' || c.node_id)"
        classed += " LEFT JOIN ds_nd d ON d.node_id = c.node_id"
    elif group.startswith("label:"):
        conn.execute("CREATE TEMP TABLE ds_lk (root_id bigint PRIMARY KEY, gkey text) ON COMMIT DROP")
        with conn.cursor().copy("COPY ds_lk (root_id, gkey) FROM STDIN") as cp:
            for root, gkey in (root_keys or {}).items():
                cp.write_row((root, gkey))
        key = f"coalesce(k.gkey, 'root:' || {ROOT})"
        classed += f" LEFT JOIN ds_lk k ON k.root_id = {ROOT}"
    elif group == "root":
        key = f"'root:' || {ROOT}"
    else:  # none, node
        key = "'node:' || c.node_id"
    conn.execute(f"CREATE TEMP TABLE ds_gk ON COMMIT DROP AS SELECT c.node_id, {key} AS gkey {classed} "
                 "WHERE c.n IS NOT NULL")
    conn.execute("ANALYZE ds_gk")


def dry_sizes(conn: psycopg.Connection, leave_out: list[int]) -> dict[str, int]:
    """Group key → its classed nodes (less `leave_out`: the copies dedup drops)."""
    return dict(conn.execute("SELECT gkey, count(*) FROM ds_gk WHERE NOT (node_id = ANY(%s)) GROUP BY gkey",
                             [leave_out]).fetchall())


def dry_kept(conn: psycopg.Connection, assign: dict[str, int], leave_out: list[int]) -> None:
    """ds_kept(node_id, sha256, size, cls, split_idx): the classed nodes (less `leave_out`)
    with the split their group was given (`assign`: group key → split index). No dedup by
    content here: node.sha256 is UNIQUE and a selection names a node once, so `by_sha256` never
    finds two nodes of one content (nor, of course, `by_node` one node twice)."""
    conn.execute("CREATE TEMP TABLE ds_ga (gkey text PRIMARY KEY, split_idx int) ON COMMIT DROP")
    with conn.cursor().copy("COPY ds_ga (gkey, split_idx) FROM STDIN") as cp:
        for gkey, idx in assign.items():
            cp.write_row((gkey, idx))
    conn.execute("CREATE TEMP TABLE ds_kept ON COMMIT DROP AS SELECT c.node_id, c.sha256, c.size, c.cls, a.split_idx "
                 "FROM ds_cls c JOIN ds_gk k ON k.node_id = c.node_id JOIN ds_ga a ON a.gkey = k.gkey "
                 "WHERE c.n IS NOT NULL AND NOT (c.node_id = ANY(%s))", [leave_out])
    conn.execute("ANALYZE ds_kept")


def dry_split_counts(conn: psycopg.Connection) -> dict[int, int]:
    """Split index → samples of ds_kept (the realised split, before caps)."""
    return dict(conn.execute("SELECT split_idx, count(*) FROM ds_kept GROUP BY 1").fetchall())


def dry_field(conn: psycopg.Connection, key: str, splits: list[str]) -> tuple[str, list[str]] | None:
    """The explicit split (`split.field`): a kept node's one value of `key` naming a split wins
    over the draw. The first kept node (by node id) whose values are not one split: (sha256 hex,
    its values) — or None, and ds_kept's split_idx set from the values."""
    conn.execute("CREATE TEMP TABLE ds_fld ON COMMIT DROP AS SELECT k.node_id, k.sha256, "
                 "array_agg(l.value ORDER BY l.value COLLATE \"C\") AS vals FROM ds_kept k "
                 "JOIN label l ON l.node_id = k.node_id AND l.key = %s GROUP BY k.node_id, k.sha256", [key])
    bad = conn.execute("SELECT encode(sha256, 'hex'), vals FROM ds_fld WHERE cardinality(vals) > 1 "
                       "OR NOT vals[1] = ANY(%s) ORDER BY node_id LIMIT 1", [splits]).fetchone()
    if bad:
        return bad[0], list(bad[1])
    conn.execute("UPDATE ds_kept k SET split_idx = array_position(%s::text[], f.vals[1]) - 1 FROM ds_fld f "
                 "WHERE f.node_id = k.node_id", [splits])
    return None


def dry_caps(conn: psycopg.Connection, caps: list[dict[str, int | None]] | None, salt: str) -> str:
    """The caps (hoardfs.datasets.plan._caps): of each (split, class) the cap of that split and
    class (`caps[split index]`: class → cap, "" the default) samples with the lowest
    sha256(salt, sample key) — the key sha256[:16], or with the node id when two classed nodes
    share those digits. The table the counts come from: ds_final, or ds_kept without caps."""
    if caps is None:
        return "ds_kept"
    conn.execute("CREATE TEMP TABLE ds_twice ON COMMIT DROP AS SELECT substring(sha256 from 1 for 8) AS pre "
                 "FROM ds_cls WHERE n IS NOT NULL GROUP BY 1 HAVING count(*) > 1")
    conn.execute(
        "CREATE TEMP TABLE ds_final ON COMMIT DROP AS SELECT node_id, sha256, size, cls, split_idx FROM ("
        "SELECT k.*, row_number() OVER (PARTITION BY k.split_idx, k.cls ORDER BY sha256(%(salt)s::bytea || "
        "convert_to(left(encode(k.sha256, 'hex'), 16) || CASE WHEN t.pre IS NULL THEN '' ELSE '-' || k.node_id END, "
        "'UTF8'))) AS rn, coalesce((%(caps)s::jsonb -> k.split_idx ->> coalesce(k.cls, ''))::bigint, "
        "(%(caps)s::jsonb -> k.split_idx ->> '')::bigint) AS cap "
        "FROM ds_kept k LEFT JOIN ds_twice t ON t.pre = substring(k.sha256 from 1 for 8)) x "
        "WHERE cap IS NULL OR rn <= cap",
        {"salt": salt.encode() + b"\0", "caps": json.dumps(caps)})
    return "ds_final"


def dry_counts(conn: psycopg.Connection, table: str, block: int) -> list[tuple[int, str | None, int, int, int, int]]:
    """(split index, class, samples, bytes, bytes in whole blocks of `block`, bytes as tar members)."""
    return conn.execute(
        f"SELECT split_idx, cls, count(*), sum(size)::bigint, sum((size + {block - 1}) / {block} * {block})::bigint, "
        f"sum(512 + (size + 511) / 512 * 512)::bigint FROM {table} GROUP BY 1, 2").fetchall()


def dry_thumbnails(conn: psycopg.Connection, table: str, n: int, total: int,
                   first: dict[str | None, tuple[int, int]]) -> list[tuple[str | None, str]]:
    """Up to `n` samples of each class in build order (split, sha256): (class, sha256 hex).
    `first`: class → (its first split's index, its samples there). The samples whose sha256
    starts below a bound that leaves ~16·n a class are sorted, not all: exact when each class
    has n of them in its first split (every other sample of that split sorts after them); else
    every sample is."""
    q = (f"SELECT cls, encode(sha256, 'hex'), split_idx FROM (SELECT cls, sha256, split_idx, row_number() OVER "
         f"(PARTITION BY cls ORDER BY split_idx, sha256, node_id) AS rn FROM {table} {{}}) t WHERE rn <= %s "
         "ORDER BY cls, rn")
    frac = 16 * n * max(1, len(first)) / max(1, total)
    if frac < 1:
        bound = max(1, int(frac * 65536)).to_bytes(2, "big")
        rows = conn.execute(q.format("WHERE sha256 < %s"), [bound, n]).fetchall()
        got: dict[str | None, int] = {}
        for cls, _sha, idx in rows:
            if idx == first[cls][0]:
                got[cls] = got.get(cls, 0) + 1
        if all(got.get(c, 0) >= min(n, k) and k >= n for c, (_i, k) in first.items()):
            return [(c, h) for c, h, _ in rows]
    return [(c, h) for c, h, _ in conn.execute(q.format(""), [n]).fetchall()]


def dry_subset(conn: psycopg.Connection, table: str, total: int, want: int) -> list[tuple[int, int, bool]]:
    """About `want` of the samples, those whose sha256 starts lowest (a sample of the contents
    that does not sort them all): (node id, split index, whether its sha256[:16] is shared by
    another classed node) — rendered whole to estimate the files a layout makes beside the
    samples'."""
    bound = min(65535, max(1, int(65536 * 2 * want / max(1, total)))).to_bytes(2, "big")
    rows = conn.execute(f"SELECT node_id, split_idx, substring(sha256 from 1 for 8) FROM {table} WHERE sha256 < %s "
                        "ORDER BY sha256 LIMIT %s", [bound, want]).fetchall()
    shared = {bytes(pre) for (pre,) in conn.execute(
        "SELECT substring(sha256 from 1 for 8) FROM ds_cls WHERE n IS NOT NULL AND substring(sha256 from 1 for 8) "
        "= ANY(%s) GROUP BY 1 HAVING count(*) > 1", [[bytes(r[2]) for r in rows]])}
    return [(nid, idx, bytes(pre) in shared) for nid, idx, pre in rows]


def _licences(raw: Any) -> list[str]:
    """The licences a raw_metadata names (`license` / `licence`), sorted."""
    return sorted({str(raw[k]) for k in LICENCE_KEYS if raw.get(k)}) if isinstance(raw, dict) else []


# -- dataset and dataset_version ------------------------------------------------------------------

COLUMNS = ("name", "version", "spec", "spec_sha256", "manifest_sha256", "doc_sha256", "fingerprint", "output_id",
           "path", "mode", "files", "bytes", "counts", "status", "built_at", "loader_index_sha256")


def class_map(conn: psycopg.Connection, name: str) -> list[str] | None:
    row = conn.execute("SELECT class_map FROM dataset WHERE name = %s", [name]).fetchone()
    return list(row[0]) if row else None


def class_maps(conn: psycopg.Connection) -> dict[str, list[str]]:
    return {name: list(cm) for name, cm in conn.execute("SELECT name, class_map FROM dataset ORDER BY name")}


def drop_building(conn: psycopg.Connection, name: str, number: int) -> None:
    """Forget a version whose build was refused before a byte moved (the zone too full)."""
    conn.execute("DELETE FROM dataset_version WHERE name = %s AND version = %s AND status = 'building'",
                 [name, number])


def save_class_map(conn: psycopg.Connection, name: str, classes: list[str]) -> None:
    conn.execute("INSERT INTO dataset (name, class_map) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                 "SET class_map = EXCLUDED.class_map", [name, json.dumps(classes)])


def _row(r: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, r, strict=True))
    for k in ("manifest_sha256", "doc_sha256", "loader_index_sha256"):
        d[k] = bytes(d[k]).hex() if d[k] is not None else None
    d["built_at"] = d["built_at"].isoformat(timespec="seconds")
    order = (d["spec"].get("split") or {}).get("order") or []  # jsonb sorts keys: the splits in the spec's order
    d["counts"] = {k: d["counts"][k] for k in [*order, *sorted(set(d["counts"]) - set(order))] if k in d["counts"]}
    return d


def versions(conn: psycopg.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every version (of `name`), by name then version."""
    cols = ", ".join(COLUMNS)
    if name is None:
        rows = conn.execute(f"SELECT {cols} FROM dataset_version ORDER BY name, version").fetchall()
    else:
        rows = conn.execute(f"SELECT {cols} FROM dataset_version WHERE name = %s ORDER BY version", [name]).fetchall()
    return [_row(r) for r in rows]


def version(conn: psycopg.Connection, name: str, number: int) -> dict[str, Any] | None:
    r = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM dataset_version WHERE name = %s AND version = %s",
                     [name, number]).fetchone()
    return _row(r) if r else None


def unfinished(status: str, manifest_sha256: Any) -> bool:
    """A version whose build never finished (killed): `building` and no manifest recorded yet.
    Only such a version is resumed by the next build; one that finished once (it has its
    manifest) is never built over, whatever its status says."""
    return status == "building" and manifest_sha256 is None


def begin_version(conn: psycopg.Connection, name: str, spec: dict, spec_sha: str, fingerprint: str, mode: str,
                  output_path: str) -> int:
    """The version a build writes: the newest one if it never finished (`unfinished`: a killed
    build; the re-run resumes its output), else a new one. Its row says `building` until `finish_version`."""
    with conn.transaction():
        conn.execute("INSERT INTO dataset (name) VALUES (%s) ON CONFLICT DO NOTHING", [name])
        conn.execute("SELECT 1 FROM dataset WHERE name = %s FOR UPDATE", [name])
        last = conn.execute("SELECT version, status, manifest_sha256 FROM dataset_version WHERE name = %s "
                            "ORDER BY version DESC LIMIT 1", [name]).fetchone()
        n = last[0] if last and unfinished(last[1], last[2]) else (last[0] + 1 if last else 1)
        out = f"{name}-v{n}"
        conn.execute(
            "INSERT INTO dataset_version (name, version, spec, spec_sha256, fingerprint, output_id, path, mode, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'building') ON CONFLICT (name, version) DO UPDATE SET "
            "spec = EXCLUDED.spec, spec_sha256 = EXCLUDED.spec_sha256, fingerprint = EXCLUDED.fingerprint, "
            "mode = EXCLUDED.mode, built_at = now()",
            [name, n, json.dumps(spec), spec_sha, fingerprint, out, f"{output_path}/{out}", mode])
    return n


def finish_version(conn: psycopg.Connection, name: str, number: int, manifest_sha: str, doc_sha: str, files: int,
                   nbytes: int, counts: dict, path: str, index_sha: str | None = None) -> None:
    conn.execute("UPDATE dataset_version SET manifest_sha256 = %s, doc_sha256 = %s, files = %s, bytes = %s, "
                 "counts = %s, status = 'done', path = %s, loader_index_sha256 = %s WHERE name = %s AND version = %s",
                 [bytes.fromhex(manifest_sha), bytes.fromhex(doc_sha), files, nbytes, json.dumps(counts), path,
                  bytes.fromhex(index_sha) if index_sha else None, name, number])


def drop_stale_locators(conn: psycopg.Connection, located: Sequence[tuple[str, str]]) -> list[str]:
    """Take each locator off the nodes it names other than its given sha256 (hex); mark those
    nodes deleted when nothing else holds them (no other locator, no batch). The sha256s of
    the nodes that lost a locator, sorted. Run in the caller's transaction."""
    stale: set[int] = set()
    shas: set[str] = set()
    for locator, sha in located:
        for nid, h in conn.execute(
                "DELETE FROM physical_path pp USING node n WHERE pp.node_id = n.node_id AND pp.locator = %s "
                "AND n.sha256 <> %s RETURNING n.node_id, encode(n.sha256, 'hex')", [locator, bytes.fromhex(sha)]):
            stale.add(nid)
            shas.add(h)
    if stale:
        conn.execute("UPDATE physical_content pc SET is_deleted = true WHERE pc.node_id = ANY(%s) "
                     "AND NOT EXISTS (SELECT 1 FROM physical_path pp WHERE pp.node_id = pc.node_id) "
                     "AND NOT EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id)", [sorted(stale)])
    return sorted(shas)


def undelete(conn: psycopg.Connection, shas: Sequence[str]) -> None:
    """Mark these nodes live again — not one the store hides (`is_hidden`: `hoard delete --node`)."""
    conn.execute("UPDATE physical_content pc SET is_deleted = false FROM node n WHERE n.node_id = pc.node_id "
                 "AND n.sha256 = ANY(%s) AND pc.is_deleted AND NOT pc.is_hidden", [[bytes.fromhex(h) for h in shas]])


def record_objects(conn: psycopg.Connection, name: str, number: int, shas: Sequence[str], only: bool = False) -> None:
    """Name the objects (sha256 hex) version `number` of `name` wrote that no node names — the
    JPEGs a voc build converted, its loader index — so `hoard gc` keeps them while the version
    is recorded (hoardfs.sql.deletion.referenced). Run again (a materialize), it adds nothing
    twice. `only`: the version's rows name these alone — a build resumed over other data lets
    go of what the killed attempt recorded (gc frees what nothing else holds)."""
    if only:
        conn.execute("DELETE FROM dataset_object WHERE name = %s AND version = %s AND NOT (sha256 = ANY(%s))",
                     [name, number, [bytes.fromhex(h) for h in shas]])
    if shas:
        conn.execute("INSERT INTO dataset_object (name, version, sha256) SELECT %s, %s, unnest(%s::bytea[]) "
                     "ON CONFLICT DO NOTHING", [name, number, [bytes.fromhex(h) for h in shas]])


def set_status(conn: psycopg.Connection, name: str, number: int, status: str) -> None:
    conn.execute("UPDATE dataset_version SET status = %s WHERE name = %s AND version = %s", [status, name, number])
