"""sql.browse outside the GUI: the per-day ingest counts a status refresh gathers; a node's
parents and children as the node page walks and draws them; a video's poster."""

from __future__ import annotations

import psycopg

from gui import charts
from sql import browse
from sql.browse import ingested_per_day_at
from sql.migrate import migrate


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
    today = pg.execute("SELECT current_date").fetchone()[0]
    assert ingested_per_day_at(url) == [{"day": today, "source": "gallery", "items": 3}]
    assert ingested_per_day_at("postgresql:///nosuchdb?host=/nonexistent&connect_timeout=2") == []


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
