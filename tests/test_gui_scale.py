"""The GUI's pages answer with 100,000 nodes in the database: every page reads the snapshot or
runs bounded, indexed queries (`hoardfs.sql.browse`). How fast: bench/gui_pages.py (a benchmark, not a
timed test); here each page must show its content within the 2 s a `should_see` polls."""

from __future__ import annotations

import pytest
from nicegui import run

from tests.gui_fixtures import fill_nodes, gui_home, scale_pages, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(600)

N = 100_000
BATCHES = 200


async def test_pages_answer_on_100k_nodes(user, gui_home) -> None:
    from hoardfs.base import config
    from hoardfs.gui.context import ctx

    sha = await run.io_bound(fill_nodes, config.load(gui_home).database_url, N, BATCHES)
    await run.io_bound(ctx().cache.refresh)
    await sign_in(user, "vera")
    for path, expect in scale_pages(sha):
        await user.open(path)
        await user.should_see(expect, retries=20)
    r = await user.http_client.get("/metrics")
    assert r.status_code == 200
    assert "hoard_objects" in r.text
