"""`hoard gui` slice 2: the storage dashboard and the banner on every page, from real states
(a disk gone from its path, a zone past its warn mark, a failed ingest, no backup)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from nicegui import run

from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


async def _refresh() -> None:
    """What the background timer does, now (the test changed the world after the app started)."""
    from hoardfs.gui.context import ctx

    await run.io_bound(ctx().cache.refresh)


async def test_storage_page_shows_disks_zones_and_backups(user) -> None:
    await sign_in(user, "vera")
    await user.open("/storage")
    for text in ("hdd1", "hdd4", "active", "used of 4.00 GiB", "replication lag: 0 shards",
                 "zone 3A", "zone 3D", "80% warn, 90% deny, 95% emergency",
                 "database: never backed up", "index: no copy on any disk", "no sealed shard here yet"):
        await user.should_see(text)


async def test_a_page_answers_while_the_first_status_is_gathered(user) -> None:
    """Right after the GUI started, the first refresh can take longer than NiceGUI's 3 s
    response_timeout (at 10 M objects the storage page answered 500): the page
    answers at once, says so, and fills in when the refresh is done. Here the refresh under
    way holds the cache's lock for 4.5 s, as a slow one does."""
    import threading

    from hoardfs.gui.context import ctx

    await sign_in(user, "vera")
    cache = ctx().cache
    held, release = threading.Event(), threading.Event()

    def slow_refresh() -> None:
        with cache._lock:
            cache.snapshot = None  # as before the first refresh
            held.set()
            release.wait(4.5)

    t = threading.Thread(target=slow_refresh)
    t.start()
    try:
        assert held.wait(5)
        await user.open("/storage")  # asserts a 200 (NiceGUI answers 500 on response_timeout)
        await user.should_see("Gathering the store's status")
        release.set()
        await user.should_see("zone 3A", retries=100)
        await user.should_not_see("Gathering the store's status")
    finally:
        release.set()
        t.join()


async def test_banner_names_what_is_on_fire_on_every_page(user, gui_home: Path) -> None:
    """A disk gone from its path, a zone past warn, a failed batch, no backup: one banner line
    each, on every page, each linking where to look."""
    from hoardfs.base import config
    from hoardfs.jobs.ingest import BatchState, Status, save_state

    cfg = config.load(gui_home)
    shutil.rmtree(cfg.disks[3].path)  # hdd4 vanishes (as an unmounted disk leaves its mount point)
    (cfg.ssd.zone_path("3D") / "big.bin").write_bytes(b"x" * (900 << 10))  # 0.86 of a 1 MiB quota
    save_state(cfg, BatchState("b-0001", "gallery", status=Status.FAILED.value, step="store",
                               error="disk hdd2: read-only file system"))
    cfg_text = gui_home.read_text().replace("[ssd.zones.3D]\nquota_gb = 1", "[ssd.zones.3D]\nquota_gb = 0.0009765625")
    gui_home.write_text(cfg_text)
    from hoardfs.gui.context import ctx

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
    from hoardfs.base import config
    from hoardfs.gui.state import banners
    from hoardfs.jobs.health import collect

    cfg = config.load(gui_home)
    h = collect(cfg)
    fresh = {"age_s": 60, "size_bytes": 1, "verified": True, "verify_detail": ""}
    h["database"]["backups"] = {"dump": fresh}
    h["problems"] = [p for p in h["problems"] if not p.startswith("database:")]  # as health says with it
    assert banners(h) == []
    from hoardfs.sql.health import database_problems

    h["database"]["backups"] = {"dump": fresh | {"age_s": 9 * 86400},  # the rule is hoardfs.sql.health's, not the GUI's
                                "diff": fresh | {"verified": False, "verify_detail": "3 orphan rows"}}
    h["problems"] = database_problems(h["database"])
    texts = [b.text for b in banners(h)]
    assert any("dump backup is 9 days old" in t for t in texts), texts
    assert any("diff backup failed its restore-verify (3 orphan rows)" in t for t in texts), texts


async def test_a_missing_and_a_failed_disk_card(user, gui_home: Path, tmp_path: Path) -> None:
    """A disk gone from its path shows, instead of "used of -": missing, when it was last seen,
    the replicas and bytes it held by the index and the `hoard disks` commands to run; once it
    is back and another disk has failed, that one its state and `hoard disks replace|activate`.
    Both picked from the index (placement decides which disks hold replicas)."""
    from hoardfs.base import config
    from hoardfs.base.units import fmt_bytes
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.store import Store
    from hoardfs.gui.state import STORE_LOCK
    from tests.helpers import make_files

    cfg = config.load(gui_home)
    with STORE_LOCK, Store.open(cfg) as store:  # the app's refresh may open the store too: one at a time
        store.put_many(make_files(tmp_path / "in", 40, seed=5, lo=200_000, hi=400_000))  # several 4 MB shards
    with STORE_LOCK, Store.open(cfg, writable=False) as store:
        held: dict[str, list[int]] = {rec.label: [0, 0] for rec in store.records.values()}
        for m in store.index.iter_shards():
            for u in m.replicas:
                held[store.records[u].label][0] += 1
                held[store.records[u].label][1] += m.size
    missing, failed = sorted((label for label in held if held[label][0]), key=lambda label: -held[label][0])[:2]
    gone = next(d.path for d in cfg.disks if d.label == missing)
    gone.rename(gone.with_name("away"))  # as an unmounted disk leaves its mount point: not there
    await _refresh()
    await sign_in(user, "vera")
    await user.open("/storage")
    card = await _card_text(user, missing, "next:")
    for text in ("missing", "last seen", " s ago (", f"held {held[missing][0]:,} replicas, {fmt_bytes(held[missing][1])}",
                 f"mount it again at {gone}", f"hoard disks replace {missing} NEW", f"hoard disks forget {missing}"):
        assert text in card, (text, card)
    assert "used of" not in card and "no other readable replica" not in card, card  # its replicas have copies

    gone.with_name("away").rename(gone)  # back; another disk fails (one disk at a time: every shard has a copy)
    with STORE_LOCK, Store.open(cfg) as store:
        store.set_disk_state(failed, DiskState.FAILED, "I/O error during read (test)")
    await _refresh()
    await user.open("/storage")
    card = await _card_text(user, failed, "next:")
    for text in ("failed", "last seen", "used of", f"held {held[failed][0]:,} replicas, {fmt_bytes(held[failed][1])}",
                 f"hoard disks replace {failed} NEW", f"hoard disks activate {failed}"):
        assert text in card, (text, card)
    assert "next:" not in await _card_text(user, missing, "active")  # back in service

async def _card_text(user, label: str, until: str) -> str:
    """The text of disk `label`'s card on the page, once it shows `until` (the card is drawn
    again on each refresh: read whole, at one moment)."""
    for _ in range(50):
        found = user.find(marker=f"disk-{label}").elements
        text = " | ".join(str(getattr(e, "text", "")) for card in found for e in card.descendants())
        if until in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"disk {label}'s card never showed {until!r}: {text}")
