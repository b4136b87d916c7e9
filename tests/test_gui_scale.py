"""The GUI's pages answer in under a second with 100,000 nodes in the database: every page
reads the snapshot or runs bounded, indexed queries (`sql.browse`), never a full scan."""

from __future__ import annotations

import time

import pytest
from nicegui import run

from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(600)

N = 100_000
BATCHES = 200


def _fill(gui_home) -> str:
    """100,000 physical nodes (images), each with metadata and a path, in 200 sealed batches
    of two sources; returns one node's sha256."""
    import psycopg

    from fsd.base import config

    with psycopg.connect(config.load(gui_home).database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO source (name) VALUES ('gallery'), ('forum') ON CONFLICT DO NOTHING")
        conn.execute("""INSERT INTO node (sha256, is_virtual, is_physical, created_at)
            SELECT sha256(int8send(i)), false, true, now() - (i %% 60) * interval '1 day'
            FROM generate_series(1, %s) i""", [N])
        conn.execute("""INSERT INTO physical_content (node_id, size, file_type)
            SELECT node_id, 1000 + node_id % 5000, CASE WHEN node_id % 3 = 0 THEN 'json' ELSE 'png' END FROM node""")
        conn.execute("""INSERT INTO physical_path (node_id, locator)
            SELECT node_id, 'batch:scale-' || (node_id %% %s) || '/f' || node_id || '.png' FROM node""", [BATCHES])
        conn.execute("""INSERT INTO common_metadata (node_id, source_id, title, author)
            SELECT n.node_id, s.source_id, 'title ' || n.node_id, 'author ' || (n.node_id % 97)
            FROM node n JOIN source s ON s.name = CASE WHEN n.node_id % 2 = 0 THEN 'gallery' ELSE 'forum' END""")
        conn.execute("""INSERT INTO action_batch (batch_id, action_id, source_id)
            SELECT 'scale-' || b, 0, (SELECT source_id FROM source WHERE name = 'gallery')
            FROM generate_series(0, %s - 1) b""", [BATCHES])
        conn.execute("""INSERT INTO batch_member (batch_id, node_id)
            SELECT 'scale-' || (node_id %% %s), node_id FROM node""", [BATCHES])
        conn.execute("UPDATE action_batch SET sealed_at = now() WHERE batch_id LIKE 'scale-%'")
        conn.execute("ANALYZE")
        return conn.execute("SELECT encode(sha256, 'hex') FROM node ORDER BY node_id LIMIT 1 OFFSET 5000").fetchone()[0]


async def test_pages_answer_in_under_a_second_on_100k_nodes(user, gui_home) -> None:
    from gui.context import ctx

    sha = await run.io_bound(_fill, gui_home)
    await run.io_bound(ctx().cache.refresh)
    await sign_in(user, "vera")
    slow = {}
    for path, expect in (("/", "Overview"), ("/storage", "SSD zones"), ("/runs", "runs"),
                         ("/batches", "200 batches"), ("/assets", "assets on page 1"),
                         ("/assets?source=forum&q=author%2042", "assets on page 1"),
                         ("/assets?batch=scale-7&kind=image", "assets on page 1"),
                         ("/assets?since=2000-01-01&until=2000-01-02", "nothing matches"),
                         (f"/node/{sha}?depth=3", "title "), ("/launch", "Maintenance")):
        t0 = time.monotonic()
        await user.open(path)
        await user.should_see(expect, retries=20)  # polls every 0.1 s: the time counts
        took = time.monotonic() - t0
        if took >= 1.0:
            slow[path] = round(took, 2)
    r = await user.http_client.get("/metrics")
    assert r.status_code == 200
    assert not slow, f"pages slower than 1 s on {N:,} nodes: {slow}"
