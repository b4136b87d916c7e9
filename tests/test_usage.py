"""Usage history: `hoard health --record` keeps the health document's figures as a sample in
PostgreSQL (at most one per 10 minutes, 90 days), a disk the store cannot read is recorded as
such, and the storage page draws the history — real store, real PostgreSQL, the CLI itself."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import time
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.jobs.usage import rows
from hoardfs.sql.migrate import migrate
from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import use_schema
from tests.test_cli import hoard

pytestmark = pytest.mark.timeout(180)


def _home(hoard_home: Path, pg: psycopg.Connection) -> str:
    cfg = use_schema(hoard_home, pg)
    assert hoard("--config", cfg, "init").returncode == 0
    migrate(pg)
    pg.commit()
    return cfg


def _samples(pg: psycopg.Connection) -> dict[dt.datetime, dict[tuple[str, str], tuple]]:
    out: dict[dt.datetime, dict[tuple[str, str], tuple]] = {}
    for at, kind, name, state, used, total, reserved, objects in pg.execute(
            "SELECT taken_at, kind, name, state, used_bytes, total_bytes, reserved_bytes, objects "
            "FROM usage_sample ORDER BY taken_at"):
        out.setdefault(at, {})[(kind, name)] = (state, used, total, reserved, objects)
    pg.commit()
    return out


def test_record_twice_within_ten_minutes_keeps_one_sample(hoard_home: Path, pg) -> None:
    """The first `hoard health --record` records every disk, zone and the store with the health
    document's own figures; a second one right after records nothing and says why."""
    cfg = _home(hoard_home, pg)
    (hoard_home / "f.bin").write_bytes(b"x" * 100_000)
    assert hoard("--config", cfg, "put", str(hoard_home / "f.bin")).returncode == 0
    first = hoard("--config", cfg, "health", "--json", "--record")
    assert first.returncode == 4, first.stderr  # a fresh install has no backup: health still says so
    report = json.loads(first.stdout)  # stdout stays the JSON document
    assert "usage: sample of 9 disks, zones and the store recorded" in first.stderr
    second = hoard("--config", cfg, "health", "--record")
    assert second.returncode == 4 and "usage: not recorded — the last sample" in second.stderr, second.stderr
    assert "younger than 10 minutes" in second.stderr
    samples = _samples(pg)
    assert len(samples) == 1
    [sample] = samples.values()
    assert set(sample) == {("disk", f"hdd{i}") for i in range(1, 5)} | {("zone", z) for z in ("3A", "3B", "3C", "3D")} \
        | {("store", "store")}
    for d in report["disks"]:
        assert sample[("disk", d["label"])] == ("active", d["used_bytes"], d["total_bytes"], None, None)
    assert sum(sample[("disk", f"hdd{i}")][1] for i in range(1, 5)) > 2 * 100_000  # the object's replicas
    for z, s in report["zones"].items():
        assert sample[("zone", z)] == (s["level"], s["used_bytes"], s["quota_bytes"], s["reserved_bytes"], None)
    assert sample[("store", "store")] == ("ok", report["store"]["shard_bytes"], None, None, 1)
    assert report["store"]["shard_bytes"] >= 100_000


def test_a_missing_disk_is_recorded_missing_not_empty(hoard_home: Path, pg) -> None:
    """A disk gone from its path is recorded with state `missing` and no bytes; with the store
    unreadable every disk is `unknown` — never `active` with 0 bytes. The database refuses a
    missing disk with bytes."""
    cfg = _home(hoard_home, pg)
    shutil.rmtree(hoard_home / "disks" / "hdd4")  # as an unmounted disk leaves an absent mount point
    res = hoard("--config", cfg, "health", "--record")
    assert res.returncode == 4 and "recorded" in res.stderr, res.stderr
    [sample] = _samples(pg).values()
    assert sample[("disk", "hdd4")] == ("missing", None, None, None, None)
    assert sample[("disk", "hdd1")][0] == "active" and sample[("disk", "hdd1")][2] == 4 * 1024**3

    # the store cannot be opened at all (no index): the disks' states are not known
    from hoardfs.jobs.health import collect

    shutil.rmtree(config.load(cfg).index_dir)
    report = collect(config.load(cfg))
    assert not report["store"]["ok"]
    made = {(r.kind, r.name): r for r in rows(report)}
    assert made[("disk", "hdd1")].state == "unknown" and made[("disk", "hdd1")].used_bytes is None
    assert made[("disk", "hdd4")].state == "missing"
    assert made[("store", "store")].state == "unreadable" and made[("store", "store")].objects is None

    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes) "
                   "VALUES (now() - interval '1 day', 'disk', 'hdd4', 'missing', 0, 100)")
    pg.rollback()


def test_record_prunes_samples_older_than_90_days(hoard_home: Path, pg) -> None:
    """Recording deletes the rows older than 90 days and keeps the younger ones."""
    cfg = _home(hoard_home, pg)
    for days in (200, 91, 89, 1):
        pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes) "
                   "VALUES (now() - make_interval(days => %s), 'disk', 'hdd1', 'active', %s, 100)", [days, days])
    pg.commit()
    res = hoard("--config", cfg, "health", "--record")
    assert "2 rows older than 90 days pruned" in res.stderr, res.stderr
    kept = sorted(r[0] for r in pg.execute("SELECT used_bytes FROM usage_sample WHERE used_bytes IN (1, 89, 91, 200)"))
    assert kept == [1, 89]
    assert len(_samples(pg)) == 3  # the two kept and the new one


def test_record_without_the_table_names_the_migration(hoard_home: Path, pg) -> None:
    """A database not migrated to the usage table: one line naming `hoard db migrate`, exit 3."""
    cfg = use_schema(hoard_home, pg)
    assert hoard("--config", cfg, "init").returncode == 0
    migrate(pg, target=6)
    pg.commit()
    res = hoard("--config", cfg, "health", "--record")
    assert res.returncode == 3 and "no usage_sample table" in res.stderr and "`hoard db migrate`" in res.stderr
    assert "Traceback" not in res.stderr


async def test_storage_page_draws_the_usage_history(user, gui_home: Path, pg) -> None:
    """With samples over two days (hdd4 missing in the middle one) the storage page draws disk
    usage over time, with a gap where hdd4 was not readable, and zone usage over time with the
    80/90/95 % marks."""
    for hours, hdd4 in ((48, 10 << 30), (24, None), (1, 12 << 30)):
        for label, used in (("hdd1", 1 << 30), ("hdd4", hdd4)):
            pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes) "
                       "VALUES (now() - make_interval(hours => %s), 'disk', %s, %s, %s, %s)",
                       [hours, label, "active" if used else "missing", used, (16 << 30) if used else None])
        pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes, reserved_bytes) "
                   "VALUES (now() - make_interval(hours => %s), 'zone', '3D', 'warn', %s, 1000, 50)", [hours, 800])
    pg.commit()
    await sign_in(user, "vera")
    await user.open("/storage")
    await user.should_see("Usage over the last 30 days")
    disk_chart = user.find(marker="disk-history").elements.pop()
    zone_chart = user.find(marker="zone-history").elements.pop()
    series = {s["name"]: s["data"] for s in disk_chart.options["series"]}
    assert [v for _, v in series["hdd4"]] == [10.0, None, 12.0]
    assert [v for _, v in series["hdd1"]] == [1.0, 1.0, 1.0]
    [zone] = zone_chart.options["series"]
    assert zone["name"] == "3D" and [v for _, v in zone["data"]] == [85.0, 85.0, 85.0]
    assert [(m["name"], m["yAxis"]) for m in zone["markLine"]["data"]] == [("warn", 80), ("deny", 90),
                                                                          ("emergency", 95)]


async def test_storage_page_without_samples_says_how_to_get_them(user) -> None:
    await sign_in(user, "vera")
    await user.open("/storage")
    await user.should_see("no usage samples yet: `hoard health --record` takes one")


async def test_storage_page_shows_when_the_database_hangs(user, gui_home: Path, monkeypatch) -> None:
    """A PostgreSQL that takes connections and never answers (stopped with SIGSTOP, or behind a
    network that drops its packets): /storage still shows the disks from the snapshot and says
    the history is not shown — not NiceGUI's error page after its 3 s response timeout."""
    from hoardfs.gui.context import ctx

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # never accepted: the kernel completes the handshake, then nothing answers
    try:
        await sign_in(user, "vera")
        if ctx().cache.snapshot is None:
            ctx().cache.refresh()
        url = f"postgresql://hoard@127.0.0.1:{hung.getsockname()[1]}/hoard"
        monkeypatch.setattr(ctx(), "cfg", ctx().cfg.model_copy(update={"database_url": url}))
        t0 = time.monotonic()
        await user.open("/storage")
        await user.should_see("hdd1")
        await user.should_see("usage history not shown: the database did not answer")
        assert time.monotonic() - t0 < 3
    finally:
        hung.close()


async def test_storage_page_views_share_one_history_read(user, gui_home: Path, pg, monkeypatch) -> None:
    """The history is read at most once per HISTORY_KEEP_S per GUI, not on every view of
    /storage: the bucketed query reads a row per disk and zone per sample of 30 days (~120,000
    rows, 0.5 s with 24 disks; 1.5 s with 96) and samples change only every 10 minutes."""
    from hoardfs.gui import storage

    calls = []
    real = storage.usage.histories
    monkeypatch.setattr(storage.usage, "histories", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes) "
               "VALUES (now() - interval '1 hour', 'disk', 'hdd1', 'active', 1073741824, 4294967296)")
    await sign_in(user, "vera")
    for _ in range(3):
        await user.open("/storage")
        await user.should_see(marker="disk-history")
    assert len(calls) == 1, calls


def test_a_clock_set_back_does_not_stop_the_recording(pg) -> None:
    """The database's clock ran a day ahead and was set back (NTP stepping a wrong RTC): the
    sample stamped in the 'future' must not stop recording for a day (now - last < 10 min held
    for any sample after now), nor stay in the charts where it lies about when it was taken."""
    from hoardfs.sql.usage import UsageRow, history, record

    migrate(pg)
    pg.execute("INSERT INTO usage_sample (taken_at, kind, name, state, used_bytes, total_bytes) "
               "VALUES (now() + interval '1 day', 'disk', 'hdd1', 'active', 7, 100)")
    rec = record(pg, [UsageRow(kind="disk", name="hdd1", state="active", used_bytes=5, total_bytes=100)])
    assert rec.taken_at is not None, rec
    assert [p.used_bytes for p in history(pg)] == [5]
    assert pg.execute("SELECT count(*) FROM usage_sample WHERE taken_at > now()").fetchone()[0] == 0


def test_zone_chart_shows_a_zone_over_its_quota() -> None:
    """3A fills from outside hoardfs (scrapers write there whatever the quota says): a zone at
    130 % of its quota is drawn at 130 %, not cut off flat at the chart's 100 % top."""
    from hoardfs.gui import charts
    from hoardfs.sql.usage import HistoryPoint

    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    points = [HistoryPoint(at=at + dt.timedelta(hours=h), kind="zone", name="3A", state="emergency",
                           used_bytes=used, total_bytes=1000, reserved_bytes=0) for h, used in ((0, 900), (1, 1300))]
    option = charts.zone_history(points, (0.8, 0.9, 0.95))
    assert [v for _, v in option["series"][0]["data"]] == [90.0, 130.0]
    assert option["yAxis"].get("max", 130) >= 130, option["yAxis"]


def test_a_zone_whose_reservations_cannot_be_read_records_them_unknown(hoard_home: Path, pg) -> None:
    """A damaged reservation file in 3D: health shows the zone without its reservations (and
    says why); the sample must record its reserved bytes as not known (NULL), not 0 — the
    table's rule, so the chart does not show the zone emptier than it may be."""
    cfg = _home(hoard_home, pg)
    from hoardfs.fsd.outputs import zones

    d = zones.reservations_dir(config.load(cfg), "3D")
    d.mkdir(parents=True, exist_ok=True)
    (d / "exp-1.json").write_text('{"id": "exp-1", "bytes": ')  # a person's edit cut short
    res = hoard("--config", cfg, "health", "--json", "--record")
    assert "recorded" in res.stderr, res.stderr
    assert json.loads(res.stdout)["zones"]["3D"]["error"]
    [sample] = _samples(pg).values()
    state, used, total, reserved, _ = sample[("zone", "3D")]
    assert used is not None and reserved is None, sample[("zone", "3D")]
