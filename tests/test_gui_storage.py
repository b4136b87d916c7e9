"""`hoard gui` slice 2: the storage dashboard and the banner on every page, from real states
(a disk gone from its path, a zone past its warn mark, a failed ingest, no backup)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nicegui import run

from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


async def _refresh() -> None:
    """What the background timer does, now (the test changed the world after the app started)."""
    from gui.context import ctx

    await run.io_bound(ctx().cache.refresh)


async def test_storage_page_shows_disks_zones_and_backups(user) -> None:
    await sign_in(user, "vera")
    await user.open("/storage")
    for text in ("hdd1", "hdd4", "active", "used of 4.00 GB", "replication lag: 0 shards",
                 "zone 3A", "zone 3D", "80% warn, 90% deny, 95% emergency",
                 "database: never backed up", "index: no copy on any disk", "no sealed shard here yet"):
        await user.should_see(text)


async def test_banner_names_what_is_on_fire_on_every_page(user, gui_home: Path) -> None:
    """A disk gone from its path, a zone past warn, a failed batch, no backup: one banner line
    each, on every page, each linking where to look."""
    from fsd.base import config
    from jobs.ingest import BatchState, Status, save_state

    cfg = config.load(gui_home)
    shutil.rmtree(cfg.disks[3].path)  # hdd4 vanishes (as an unmounted disk leaves its mount point)
    (cfg.ssd.zone_path("3D") / "big.bin").write_bytes(b"x" * (900 << 10))  # 0.86 of a 1 MiB quota
    save_state(cfg, BatchState("b-0001", "gallery", status=Status.FAILED.value, step="store",
                               error="disk hdd2: read-only file system"))
    cfg_text = gui_home.read_text().replace("[ssd.zones.3D]\nquota_gb = 1", "[ssd.zones.3D]\nquota_gb = 0.0009765625")
    gui_home.write_text(cfg_text)
    from gui.context import ctx

    ctx().cache.cfg = config.load(gui_home)  # the zone's smaller quota, as a restart would read it
    await _refresh()
    await sign_in(user, "vera")
    for page in ("/", "/storage", "/users"):
        await user.open(page)
        for text in ("disk hdd4 is missing", "zone 3D is 8", "(warn)", "batch b-0001 failed at store",
                     "no backup was ever taken"):
            await user.should_see(text)


def test_no_banner_when_all_is_well(gui_home: Path) -> None:
    """With a fresh backup and nothing wrong, no banner line shows."""
    from fsd.base import config
    from jobs.health import collect
    from gui.state import banners

    cfg = config.load(gui_home)
    h = collect(cfg)
    fresh = {"age_s": 60, "size_bytes": 1, "verified": True, "verify_detail": ""}
    h["database"]["backups"] = {"dump": fresh}
    h["problems"] = [p for p in h["problems"] if not p.startswith("database:")]  # as health says with it
    assert banners(h) == []
    from sql.health import database_problems

    h["database"]["backups"] = {"dump": fresh | {"age_s": 9 * 86400},  # the rule is sql.health's, not the GUI's
                                "diff": fresh | {"verified": False, "verify_detail": "3 orphan rows"}}
    h["problems"] = database_problems(h["database"])
    texts = [b.text for b in banners(h)]
    assert any("dump backup is 9 days old" in t for t in texts), texts
    assert any("diff backup failed its restore-verify (3 orphan rows)" in t for t in texts), texts
