"""hoardfs.sql.browse outside the GUI: the per-day ingest counts a status refresh gathers; a node's
parents and children as the node page walks and draws them; a video's poster."""

from __future__ import annotations

import psycopg

from hoardfs.gui import charts
from hoardfs.sql import browse
from hoardfs.sql.browse import ingested_per_day_at
from hoardfs.sql.migrate import migrate


def test_ingested_per_day_at(servers, pg) -> None:
    """Files that joined ingest batches today, per source, on a connection of its own; [] (not an
    error) from a database that does not answer."""
    migrate(pg)
    pg.execute("INSERT INTO source (name) VALUES ('gallery')")
    pg.execute("""INSERT INTO node (sha256, is_virtual, is_physical)
                  SELECT sha256(int8send(i)), false, true FROM generate_series(1, 3) i""")
    pg.execute("""INSERT INTO action_batch (batch_id, action_id, source_id)
                  VALUES ('b1', 0, (SELECT source_id FROM source WHERE name = 'gallery'))""")
    pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'b1', node_id FROM node")
    pg.commit()
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    url = psycopg.conninfo.make_conninfo(servers["database_url"], options=f"-c search_path={schema}")
    today = pg.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
    assert ingested_per_day_at(url) == [{"day": today, "source": "gallery", "items": 3}]
    assert ingested_per_day_at("postgresql:///nosuchdb?host=/nonexistent&connect_timeout=2") == []


def _members_per_day(conn: psycopg.Connection) -> list[dict]:
    """What ingested_per_day must say, counted the slow way: over every batch_member row."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("""
            SELECT (m.added_at AT TIME ZONE 'UTC')::date AS day, coalesce(s.name, '?') AS source, count(*) AS items
            FROM batch_member m JOIN action_batch b USING (batch_id) LEFT JOIN source s USING (source_id)
            WHERE b.action_id = 0 AND (m.added_at AT TIME ZONE 'UTC')::date >= (now() AT TIME ZONE 'UTC')::date - 30
            GROUP BY 1, 2 ORDER BY 1, 2""").fetchall()


def test_ingested_per_day_follows_every_way_members_come_and_go(pg) -> None:
    """The per-day tally (migration 013) equals a count over batch_member after members are
    added by plain inserts, by a trusted bulk apply (session_replication_role = replica, which
    skips ordinary triggers), at an earlier day, then removed by a batch drop, a node deleted
    (ON DELETE CASCADE) and a batch row deleted — and folding past days changes no figure."""
    from hoardfs.sql.deletion import drop_batch

    migrate(pg)
    pg.execute("INSERT INTO source (name) VALUES ('gallery'), ('forum')")
    pg.execute("""INSERT INTO node (sha256, is_virtual, is_physical)
                  SELECT sha256(int8send(i)), false, true FROM generate_series(1, 300) i""")
    for b, src in (("g1", "gallery"), ("g2", "gallery"), ("f1", "forum")):
        pg.execute("INSERT INTO action_batch (batch_id, action_id, source_id) "
                   "SELECT %s, 0, source_id FROM source WHERE name = %s", [b, src])
    pg.execute("INSERT INTO action VALUES (7, 'thumbs', 'cpu') ON CONFLICT DO NOTHING")
    pg.execute("INSERT INTO action_batch (batch_id, action_id) VALUES ('not-ingest', 7)")
    ids = [r[0] for r in pg.execute("SELECT node_id FROM node ORDER BY node_id")]
    for chunk in range(0, 100, 10):  # many small statements: many tally rows
        pg.execute("INSERT INTO batch_member (batch_id, node_id, added_at) SELECT 'g1', unnest(%s::bigint[]), "
                   "now() - interval '3 days'", [ids[chunk:chunk + 10]])
    pg.commit()
    with pg.transaction():  # its own transaction: SET LOCAL lasts to its end
        pg.execute("SET LOCAL session_replication_role = replica")  # what hoardfs.sql.apply does for a superuser
        pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'g2', unnest(%s::bigint[])", [ids[100:200]])
    pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'f1', unnest(%s::bigint[])", [ids[150:300]])
    pg.execute("INSERT INTO batch_member (batch_id, node_id) SELECT 'not-ingest', unnest(%s::bigint[])", [ids[:50]])
    pg.commit()
    assert browse.ingested_per_day(pg) == _members_per_day(pg)
    assert sum(r["items"] for r in _members_per_day(pg)) == 100 + 100 + 150

    drop_batch(pg, "g2", "test")
    pg.execute("DELETE FROM node WHERE node_id = ANY(%s)", [ids[0:5] + ids[290:300]])
    pg.execute("DELETE FROM action_batch WHERE batch_id = 'not-ingest'")
    pg.commit()
    want = _members_per_day(pg)
    assert sum(r["items"] for r in want) == 95 + 140
    assert browse.ingested_per_day(pg) == want
    assert pg.execute("SELECT count(*) FROM batch_member_tally WHERE batch_id = 'not-ingest'").fetchone()[0] == 0

    removed = browse.fold_member_tally(pg)
    pg.commit()
    assert removed >= 9  # g1's ten statements three days ago (and the deletes' rows) became one
    assert pg.execute("SELECT count(*) FROM batch_member_tally WHERE day < (now() AT TIME ZONE 'UTC')::date "
                      "GROUP BY batch_id, day HAVING count(*) > 1").fetchall() == []
    assert browse.ingested_per_day(pg) == want
    assert browse.fold_member_tally(pg) == 0


def _node(conn: psycopg.Connection, tag: str, file_type: str | None = "png") -> int:
    """A physical node (virtual when `file_type` is None) named by sha256(tag)."""
    virtual = file_type is None
    node_id = conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (sha256(%s::bytea), %s, %s) "
                           "RETURNING node_id", [tag.encode(), virtual, not virtual]).fetchone()[0]
    if not virtual:
        conn.execute("INSERT INTO physical_content (node_id, size, file_type) VALUES (%s, 10, %s)",
                     [node_id, file_type])
    return node_id


def _edge(conn: psycopg.Connection, parent: int, child: int, rel: str = "media_of") -> None:
    assert conn.execute("INSERT INTO edge (parent_id, child_id, rel_id) SELECT %s, %s, rel_id FROM relationship_type "
                 "WHERE name = %s", [parent, child, rel]).rowcount == 1


def _sha(conn: psycopg.Connection, node_id: int) -> str:
    return conn.execute("SELECT encode(sha256, 'hex') FROM node WHERE node_id = %s", [node_id]).fetchone()[0]


def _connected(graph: dict) -> set[str]:
    """The chart's node ids that some edge reaches from its root."""
    links = graph["series"][0]["links"]
    seen, todo = {"root"}, ["root"]
    while todo:
        at = todo.pop()
        for lk in links:
            for a, b in ((lk["source"], lk["target"]), (lk["target"], lk["source"])):
                if a == at and b not in seen:
                    seen.add(b)
                    todo.append(b)
    return seen


def test_a_cut_walk_keeps_the_nearest_relatives(pg) -> None:
    """A node with more relatives than the walk returns (200): the nearest are kept, so each
    kept relative's `via` is kept too and the lineage graph is one connected drawing — not the
    200 lowest node ids (a channel made after its 250 videos lost its one child)."""
    migrate(pg)
    videos = [_node(pg, f"video-{i}") for i in range(250)]
    channel, playlist = _node(pg, "channel", None), _node(pg, "playlist", None)
    _edge(pg, channel, playlist, "playlist_of")
    for v in videos:
        _edge(pg, playlist, v, "playlist_of")
    n = browse.node(pg, _sha(pg, channel), depth=2)
    assert len(n["children"]) == 200 and n["children_cut"] and not n["parents_cut"]  # the page says more exist
    kept = {r["node_id"] for r in n["children"]} | {n["node_id"]}
    assert playlist in kept
    assert all(r["via"] in kept for r in n["children"])
    graph = charts.lineage(n)
    assert _connected(graph) == {d["id"] for d in graph["series"][0]["data"]}
    assert len(graph["series"][0]["data"]) == 1 + charts.GRAPH_MAX  # the nearest drawn, the playlist among them
    assert f"children:{playlist}" in {d["id"] for d in graph["series"][0]["data"]}


def test_a_node_in_a_cycle_is_not_its_own_relative(pg) -> None:
    """Edges may close a cycle (a reply_to b, b reply_to a): the walk comes back to the node
    itself, which is then neither listed as its own parent or child nor drawn a second time
    (it took the root's place in the graph, leaving 'this node' without an edge); the other
    node shows on both sides."""
    migrate(pg)
    a, b = _node(pg, "a"), _node(pg, "b")
    _edge(pg, a, b, "reply_to")
    _edge(pg, b, a, "reply_to")
    n = browse.node(pg, _sha(pg, a), depth=3)
    assert [(r["node_id"], r["via"], r["depth"]) for r in n["parents"]] == [(b, a, 1)]
    assert [(r["node_id"], r["via"], r["depth"]) for r in n["children"]] == [(b, a, 1)]
    graph = charts.lineage(n)
    assert {d["id"] for d in graph["series"][0]["data"]} == {"root", f"parents:{b}", f"children:{b}"}
    assert {(lk["source"], lk["target"]) for lk in graph["series"][0]["links"]} == {
        (f"parents:{b}", "root"), ("root", f"children:{b}")}


def test_a_poster_deleted_or_flagged_is_not_shown(pg) -> None:
    """A video with several thumbnail_of children shows the first that is still stored and not
    flagged: a deleted one has no bytes (its card showed a broken image, /thumb answering 404),
    a flagged one is unwanted content and no video's face; with none left the video has no
    poster (its card shows the movie icon)."""
    migrate(pg)
    pg.execute("INSERT INTO relationship_type (name) VALUES ('thumbnail_of') ON CONFLICT DO NOTHING")
    video = _node(pg, "video", "mp4")
    gone, flagged, fine = (_node(pg, f"thumb-{i}", "jpg") for i in range(3))
    for t in (gone, flagged, fine):
        _edge(pg, video, t, "thumbnail_of")
    pg.execute("UPDATE physical_content SET is_deleted = true WHERE node_id = %s", [gone])
    pg.execute("UPDATE physical_content SET in_black_list = true WHERE node_id = %s", [flagged])

    def posters() -> tuple[str | None, list[str | None]]:
        return (browse.node(pg, _sha(pg, video))["poster"],
                [r["poster"] for r in browse.search(pg, file_kind="video")])

    assert posters() == (_sha(pg, fine), [_sha(pg, fine)])
    pg.execute("UPDATE physical_content SET is_deleted = true WHERE node_id = %s", [fine])
    assert posters() == (None, [None])
