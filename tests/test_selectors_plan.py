"""The plans of the selector queries bench/scale.py times, on a graph shaped like its own
(channels → videos → frames → crops, two parents each, a `split` label on every node): what
each candidate costs must not grow with the number of channels or nodes. Real PostgreSQL,
EXPLAIN after ANALYZE (no planner setting changed); the answers are checked against Python's."""

from __future__ import annotations

import psycopg
import pytest

from hoardfs.sql.selectors import query_nodes, selector_query
from tests.helpers import filled_schema

pytestmark = pytest.mark.timeout(300)

N = 30_000        # physical nodes: level g % 3 (video, frame, crop)
PER_CHANNEL = 30  # nodes per channel: 1,000 channels (bench/scale.py: 300 per channel)


def _fill(conn: psycopg.Connection) -> None:
    """bench/scale.py's graph in SQL: node g (1..N) is a video (g % 3 = 0) under channels
    g // PER_CHANNEL and the next, a frame (1) under the videos g - 1 and g - 4, a crop (2)
    under the frames g - 1 and g - 4; `split` = val for g % 10 = 0."""
    conn.execute("INSERT INTO source (name) VALUES ('scale')")
    conn.execute("INSERT INTO relationship_type (name) VALUES ('frame_of'), ('crop_of')")
    conn.execute("INSERT INTO node (node_id, sha256, is_virtual, is_physical) "
                 "SELECT g, sha256(int8send(g)), false, true FROM generate_series(1, %s) g", [N])
    conn.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, 1000, 'png' FROM node")
    chans = N // PER_CHANNEL + 2
    conn.execute("INSERT INTO node (node_id, sha256, is_virtual, is_physical) "
                 "SELECT %(n)s + c + 1, sha256(int8send(-c - 1)), true, false FROM generate_series(0, %(c)s) c",
                 {"n": N, "c": chans})
    conn.execute("INSERT INTO virtual_asset (node_id, kind, source_id, stable_id, description) "
                 "SELECT %(n)s + c + 1, 'channel', 1, c::text, 'virtual:channel:scale:' || c "
                 "FROM generate_series(0, %(c)s) c", {"n": N, "c": chans})
    conn.execute("""
        INSERT INTO edge (parent_id, child_id, rel_id)
        SELECT %(n)s + g / %(per)s + k + 1, g, (SELECT rel_id FROM relationship_type WHERE name = 'channel_of')
          FROM generate_series(1, %(n)s) g, (VALUES (0), (1)) v(k) WHERE g %% 3 = 0
        UNION ALL
        SELECT g - back, g, (SELECT rel_id FROM relationship_type
                             WHERE name = CASE g %% 3 WHEN 1 THEN 'frame_of' ELSE 'crop_of' END)
          FROM generate_series(1, %(n)s) g, (VALUES (1), (4)) b(back) WHERE g %% 3 <> 0 AND g - back >= 1""",
                 {"n": N, "per": PER_CHANNEL})
    conn.execute("INSERT INTO label (node_id, key, value, origin) SELECT g, 'split', "
                 "CASE g %% 10 WHEN 0 THEN 'val' WHEN 1 THEN 'test' ELSE 'train' END, 'bench' "
                 "FROM generate_series(1, %s) g", [N])
    conn.execute("SELECT setval('node_node_id_seq', %s)", [N + chans + 1])
    conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def graph(servers):
    with filled_schema(servers["database_url"], _fill) as conn:
        yield conn


BROAD = {"has_ancestor": [{"kind": "channel", "source": "scale", "max_depth": 3}],
         "labels": [{"key": "split", "value": "val"}]}


def _plan(conn: psycopg.Connection, selector: dict) -> str:
    query, params = selector_query(conn, selector)
    return "\n".join(r[0] for r in conn.execute(b"EXPLAIN " + query.as_bytes(conn), params))


def test_a_kind_ancestor_probes_each_relative(graph) -> None:
    """A selector whose ancestor is named by kind and source (every channel matches) walks up
    from each candidate and tests each relative by its key (virtual_asset's primary key) —
    never a scan of every channel per candidate, which made each candidate cost what the
    channels number (bench/scale.py's broad selector: 1.67× per object from 100 k to 1 M)."""
    plan = _plan(graph, BROAD)
    assert "Seq Scan on virtual_asset" not in plan, plan
    assert "virtual_asset_pkey" in plan, plan
    plan = _plan(graph, {"has_descendant": [{"label": {"key": "split", "value": "val"}, "max_depth": 2}],
                         "labels": [{"key": "split", "value": "train"}]})
    assert "Seq Scan on label" not in plan and "Bitmap Heap Scan on label l_1" not in plan, plan


def test_the_broad_selector_picks_what_the_graph_says(graph) -> None:
    """The answer of the probing plan: every `val` node with a channel within three edges up
    — every one here (a video's parents are channels, a frame's videos, a crop's frames); with
    one edge, only the videos."""
    got = query_nodes(graph, BROAD)
    expect = list(range(10, N + 1, 10))
    assert got.node_ids == expect
    deep = query_nodes(graph, {"has_ancestor": [{"kind": "channel", "max_depth": 1}],
                               "labels": [{"key": "split", "value": "val"}]})
    assert deep.node_ids == [g for g in expect if g % 3 == 0]
