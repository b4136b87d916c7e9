"""`hoard gui`'s /dups page: the near-duplicate groups of `hoard dups` at the
threshold chosen, each member a thumbnail linking to its node, mirror images marked. Real test
PostgreSQL; the hashes are result rows written by a write-intent, as the action writes them."""

from __future__ import annotations

from pathlib import Path

import psycopg
from nicegui import ui

from hoardfs.base import config
from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.test_near_dups import write_hashes


def _hashed(cfg: config.Settings) -> list[str]:
    """Five images: three whose pHashes are 0–3 bits apart, the mirror image of the first, and
    one apart from all; their sha256s in that order."""
    base = 0xF0F0_1234_5678_9ABC
    ph = [base, base ^ 0b1, base ^ 0b111, 0x0123_4567_89AB_CDEF, 0xFFFF_0000_FFFF_0000]
    flip = [0x0123_4567_89AB_CDEE, 0x1111, 0x2222, base ^ 0b10, 0x3333]  # the 4th is the 1st's mirror
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        return write_hashes(conn, "gui-dups", ph, flip)


async def test_dups_page_groups_at_the_chosen_threshold_mirror_marked(user, gui_home: Path) -> None:
    """No hashes: the page says how to make them. Then one group of four at the default
    threshold — the three near ones and the mirror image, marked — the fifth in none; at
    threshold 0 with mirror images off, no group. The first image's node page lists its three
    near-duplicates with their distances, the fifth's none."""
    cfg = config.load(gui_home)
    await sign_in(user, "vera")
    await user.open("/dups")
    await user.should_see(marker="none", retries=50)
    shas = _hashed(cfg)
    await user.open("/dups")
    await user.should_see(marker="groups", retries=50)
    await user.should_see("1 groups among 5 hashed images")
    await user.should_see("4 images")
    for s in shas[:3]:
        await user.should_see(s[:16], retries=20)
    await user.should_see(f"{shas[3][:16]}  (mirror image)", retries=20)
    await user.should_not_see(shas[4][:16])
    assert len(user.find(marker="member").elements) == 4
    await user.should_not_see(kind=ui.html)
    await user.open("/dups?threshold=0&flips=false")
    await user.should_see("0 groups among 5 hashed images", retries=50)
    await user.open(f"/node/{shas[0]}")  # the node page: its near-duplicates, nearest first
    await user.should_see(marker="node-near", retries=50)
    await user.should_see("1 bits")
    await user.should_see("1 bits, mirror image")
    await user.should_see("3 bits")
    await user.open(f"/node/{shas[4]}")
    await user.should_see(marker="node-near-none", retries=50)
