"""SMART in `hoard health`, `check` and `verify`: real `smartctl --json` outputs of a healthy and
a failing drive (tests/data/smart/, README there names their source) judged the one way
(hoardfs.fsd.core.smart), the failing drive's next step followed command by command on a real store,
a loop disk on the lab (real smartctl run against it) reported as having no SMART, and the
readings recorded into the usage history in a real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import smart
from hoardfs.jobs.usage import smart_rows
from hoardfs.sql.migrate import migrate
from hoardfs.sql.usage import record, smart_history
from tests.helpers import missing, use_schema, write_config
from tests.lab import DiskProfile
from tests.test_cli import hoard

DATA = Path(__file__).parent / "data" / "smart"
HEALTHY, FAILING, NVME = "ata-healthy-wd140edfz.json", "ata-failing-hds721050dle630.json", "nvme-media-errors-970evo.json"


def _doc(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def _raw(doc: dict[str, Any], attr_id: int) -> int:
    """An ATA attribute's raw value as the document states it (read here without hoardfs.fsd.core.smart)."""
    return next(a["raw"]["value"] for a in doc["ata_smart_attributes"]["table"] if a["id"] == attr_id)


def test_healthy_drive_reads_its_figures_and_has_no_finding() -> None:
    """A healthy WD 14 TB (smartctl 7.0 -a -j): passed, its sector counts, temperature and hours
    as the document states them, and nothing to say."""
    doc = _doc(HEALTHY)
    r = smart.parse(doc)
    assert r["available"] and r["passed"] is doc["smart_status"]["passed"] is True
    assert (r["reallocated"], r["pending"], r["uncorrectable"]) == (_raw(doc, 5), _raw(doc, 197), _raw(doc, 198))
    assert r["temperature_c"] == doc["temperature"]["current"] and r["power_on_hours"] == doc["power_on_time"]["hours"]
    assert r["model"] == doc["model_name"]
    assert smart.judge("hd1", r | {"device": "/dev/sdb"}) == []
    assert smart.summary(r).startswith("passed, 0 reallocated, 0 pending, 0 uncorrectable")


def test_failing_drive_is_a_problem_and_its_lost_sectors_a_warning() -> None:
    """A dying Hitachi 500 GB (smartctl 7.1, exit status 216): overall health FAILED with
    Reallocated_Sector_Ct failing now is a problem naming the retirement; its pending sectors
    are a warning naming `hoard verify --repair` — with the counts the document states."""
    doc = _doc(FAILING)
    r = smart.parse(doc)
    assert r["passed"] is False and r["failing_now"] == ["Reallocated_Sector_Ct"]
    assert (r["reallocated"], r["pending"]) == (_raw(doc, 5), _raw(doc, 197)) and r["pending"] > 0
    found = smart.judge("hd1", r | {"device": "/dev/sdc"})
    assert [level for level, _ in found] == [smart.PROBLEM, smart.WARNING]
    problem, warning = found[0][1], found[1][1]
    assert problem.startswith(f"disk hd1 (/dev/sdc, {doc['model_name']}, serial {doc['serial_number']}): its SMART "
                              "overall health check FAILED (failing now: Reallocated_Sector_Ct)")
    assert "`hoard disks retire hd1`, `hoard replicate`" in problem and "`hoard disks forget hd1`" in problem
    assert f"{_raw(doc, 197)} sectors pending reallocation" in warning
    assert "`hoard verify --disk hd1 --repair`" in warning
    # retired already: the problem says what is left of the retirement, not to retire it again
    draining = smart.judge("hd1", r | {"device": "/dev/sdc"}, "draining")[0][1]
    assert "retired already" in draining and "disks retire" not in draining


def test_nvme_media_errors_are_a_warning() -> None:
    """A Samsung 970 EVO whose health log counts media errors (the drive still says passed)."""
    doc = _doc(NVME)
    r = smart.parse(doc)
    errors = doc["nvme_smart_health_information_log"]["media_errors"]
    assert r["passed"] is True and r["media_errors"] == errors > 0 and r["critical_warning"] == 0
    [(level, line)] = smart.judge("nv", r | {"device": "/dev/nvme0"})
    assert level == smart.WARNING and f"{errors} NVMe media errors" in line


def test_reallocated_sectors_that_grew_within_the_window_warn(tmp_path: Path) -> None:
    """The cache keeps a drive's reallocated count per day for GROWTH_DAYS: a count above the
    oldest of them is a warning; a count that stood still for that long is not (nor is a
    swapped drive's history carried over)."""
    r = smart.parse(_doc(FAILING)) | {"passed": True, "pending": 0, "failing_now": []}  # its sectors alone
    day = 86400.0
    entry: dict[str, Any] = {}
    t0 = time.time() - 10 * day
    smart._remember(entry, r | {"reallocated": r["reallocated"] - 75}, t0)
    smart._remember(entry, r, t0 + 9 * day)
    shown = smart._shown(smart.Device("/dev/sdc", "a disk"), entry, "smartctl", True, t0 + 9 * day)
    [(level, line)] = smart.judge("hd1", shown)
    assert level == smart.WARNING and f"grew from {r['reallocated'] - 75} to {r['reallocated']}" in line
    smart._remember(entry, r, t0 + (smart.GROWTH_DAYS + 2) * day)  # a month on: the old count is out of the window
    shown = smart._shown(smart.Device("/dev/sdc", "a disk"), entry, "smartctl", True, t0 + (smart.GROWTH_DAYS + 2) * day)
    assert smart.judge("hd1", shown) == []
    other = smart.parse(_doc(HEALTHY))  # another drive at that device: its own history
    smart._remember(entry, other, t0 + (smart.GROWTH_DAYS + 3) * day)
    assert set(entry["days"].values()) == {other["reallocated"]}


def test_hostile_documents_parse_without_error() -> None:
    """Whatever smartctl (or a device behind it) puts in the JSON, parse takes only numbers and
    short strings, and a document that is not SMART at all says so."""
    for doc in ([], "x", {"smartctl": [], "smart_status": "yes", "temperature": 7},
                {"smart_status": {"passed": True}, "ata_smart_attributes": {"table": [1, {"id": 5, "raw": "x"}]},
                 "model_name": {"a": 1}, "smartctl": {"messages": "no"}},
                {"smart_status": {"passed": True}, "model_name": "m" * 10_000, "serial_number": "<b>x</b>"}):
        r = smart.parse(doc)
        assert isinstance(r, dict) and all(len(str(v)) <= 200 for v in r.values())
        smart.judge("x", r | {"device": "/dev/sdz"})
        smart.summary(r)


def test_hostile_attribute_tables_parse_without_error() -> None:
    """An attribute id that is no number (a list: unhashable) and a raw count of thousands of
    digits (past Python's int conversion limit) are left out, not raised."""
    table = [{"id": [5], "raw": {"value": 1}}, {"id": {"x": 1}}, {"id": 197, "raw": {"string": "9" * 5000}},
             {"id": 198, "raw": {"string": "12 (0 0)"}}]
    r = smart.parse({"smart_status": {"passed": True}, "ata_smart_attributes": {"table": table}})
    assert r["available"] and r["reallocated"] is None and r["pending"] is None and r["uncorrectable"] == 12


def test_a_planted_cache_is_not_trusted(tmp_path: Path) -> None:
    """The readings' cache lies where the hoard user may write and root's `hoard disks smart`
    reads it: entries of any other shape are dropped (read again), never raised on."""
    cfg = config.load(write_config(tmp_path, [(f"d{i}", tmp_path / f"d{i}", None) for i in range(2)]))
    good = {"reading": smart.parse(_doc(HEALTHY)), "read_at": 5.0, "tried_at": 5.0, "days": {"2026-11-01": 0}}
    planted = {"/dev/sda": [1], "/dev/sdb": {"reading": {"temperature_c": "hot"}, "tried_at": 1.0},
               "/dev/sdc": {"reading": {}, "tried_at": "soon"}, "/dev/sdd": {"reading": {}, "days": {"x": "y"}},
               "/dev/sde": {"reading": {"failing_now": [["x"]]}}, "/dev/sdf": good}
    cache = smart.cache_path(cfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"format": smart.FORMAT, "devices": planted}))
    assert smart._load(cfg) == {"/dev/sdf": good}
    cache.write_text('{"format": 1, "devices": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert smart._load(cfg) == {}


def needs_findmnt(path: Path) -> None:
    """findmnt must name the mount holding `path`: in a chroot (freshbox) the mounts lie outside
    it and findmnt names none, so no drive is found. Missing loudly there; a failure in CI."""
    res = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        missing(f"FINDMNT NAMES NO MOUNT FOR {path} (a chroot?): {res.stderr.strip() or f'exit {res.returncode}'}")

@pytest.mark.services  # (runs smartctl)
@pytest.mark.needs(os.geteuid() == 0 and shutil.which("smartctl", path="/usr/sbin:/sbin:/usr/bin") is not None,
                   "ROOT AND SMARTCTL NEEDED (only root reads the drives and keeps their readings)")
@pytest.mark.expect_log("the SMART readings are not kept at", "WARNING")
def test_root_follows_no_link_in_place_of_the_state_directory(tmp_path: Path) -> None:
    """The SSD's root is hoard's: a link it puts in place of `state/` is not followed by root's
    reading (hoard-smart.service) — before, root wrote smart.json into the link's target and
    re-moded it (and gave it the hoard group: /etc, say)."""
    needs_findmnt(tmp_path)  # (a drive must be found for its reading to be kept)
    cfg = config.load(write_config(tmp_path, [(f"d{i}", tmp_path / f"d{i}", None) for i in range(2)]))
    for d in cfg.disks:
        d.path.mkdir()
        (d.path / ".hoard-disk.json").write_text("{}")  # (a disk at its path: read)
    system = tmp_path / "system-dir"
    system.mkdir(mode=0o755)
    system.chmod(0o755)
    cfg.ssd.root.mkdir(parents=True, exist_ok=True)
    (cfg.ssd.root / "state").symlink_to(system)
    before = system.stat()
    smart.read_all(cfg, max_age_s=0)
    assert list(system.iterdir()) == [] and system.stat().st_mode == before.st_mode
    assert (system.stat().st_uid, system.stat().st_gid) == (before.st_uid, before.st_gid)


@pytest.mark.services  # (runs smartctl)
@pytest.mark.needs(os.geteuid() == 0 and shutil.which("smartctl", path="/usr/sbin:/sbin:/usr/bin") is not None,
                   "ROOT AND SMARTCTL NEEDED (only root reads the drives and keeps their readings)")
def test_an_ssd_without_its_state_directory_is_no_warning(tmp_path: Path) -> None:
    """An SSD `hoard init` has not prepared (no `state/`): root's reading keeps nothing, makes
    no directory (one root made, hoard could not write), and warns of nothing — a test home or
    a store opened before init logged "not kept … No such file or directory" on every health
    (no expect_log here: tests/checklogs.py fails the test on any warning)."""
    cfg = config.load(write_config(tmp_path, [(f"d{i}", tmp_path / f"d{i}", None) for i in range(2)]))
    for d in cfg.disks:
        d.path.mkdir()
        (d.path / ".hoard-disk.json").write_text("{}")
    cfg.ssd.root.mkdir(parents=True, exist_ok=True)
    got = smart.read_all(cfg, max_age_s=0)
    assert set(got) == {"d0", "d1"}
    assert not (cfg.ssd.root / "state").exists()


@pytest.mark.services  # (runs a program)
def test_a_hostile_smartctl_gives_one_line(tmp_path: Path) -> None:
    """What a smartctl that is not one prints — no JSON, JSON nested past Python's recursion
    limit, a table that does not parse — or one that hangs: one line saying so, never raised."""
    cases = {"garbage": "echo 'not json at all'; exit 1", "deep": "python3 -c \"print('['*200000 + ']'*200000)\"",
             "badtable": "echo '{\"smart_status\": {\"passed\": true}, \"ata_smart_attributes\": "
                         "{\"table\": [{\"id\": [5]}]}}'", "hangs": "exec sleep 60"}
    said = {}
    for name, body in cases.items():
        prog = tmp_path / name
        prog.write_text(f"#!/bin/sh\n{body}\n")
        prog.chmod(0o755)
        said[name] = smart.run_smartctl(str(prog), "/dev/sdz", timeout_s=2)
    assert said["garbage"] == {"available": False, "why": "smartctl printed no JSON (exit 1): not json at all"}
    assert said["deep"]["available"] is False and "no JSON" in said["deep"]["why"]
    assert said["badtable"]["available"] is True and said["badtable"]["passed"] is True
    assert said["hangs"]["available"] is False and "did not answer within 2 s" in said["hangs"]["why"]
    for r in said.values():
        assert "\n" not in r.get("why", "")


@pytest.mark.services
def test_a_directory_disk_is_found_on_the_drive_findmnt_names(tmp_path: Path) -> None:
    """The drive behind a directory disk is the whole disk of the file system holding it, as
    findmnt and lsblk (util-linux) name it."""
    d = tmp_path / "disk"
    d.mkdir()
    needs_findmnt(d)
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE,MAJ:MIN", "--target", str(d)], capture_output=True,
                            text=True, check=True).stdout.split()
    dev = smart.device_of(d)
    if not source[0].startswith("/dev/"):  # (tmpfs, overlay: no block device under it)
        assert dev.dev is None and dev.no_smart().startswith("no SMART: on a ")
        return
    parent = subprocess.run(["lsblk", "-n", "-s", "-r", "-o", "NAME,TYPE", source[0]], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    disks = [line.split()[0] for line in parent if line.endswith(" disk") or line.endswith(" loop")]
    if len(disks) == 1:
        assert dev.dev == f"/dev/{disks[0]}"


@pytest.mark.services
def test_next_step_of_a_failing_drive_works(tmp_path: Path) -> None:
    """The commands the problem of a failing drive names, run in order on a real store, take
    the disk out with every object still readable from the others."""
    disks = [(f"d{i}", tmp_path / f"d{i}", None) for i in range(3)]
    for _, p, _ in disks:
        p.mkdir()
    cfg = str(write_config(tmp_path, disks, shard_size_mb=4, copy_of_raw=2, write_ack=2))
    assert hoard("--config", cfg, "init").returncode == 0
    files = []
    for i in range(6):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(bytes([i]) * 300_000)
        res = hoard("--config", cfg, "put", str(f))
        assert res.returncode == 0, res.stderr
        files.append((f, res.stdout.split()[0]))
    problem = dict(smart.judge("d0", smart.parse(_doc(FAILING)) | {"device": "/dev/sdc"}))[smart.PROBLEM]
    steps = [c for c in re.findall(r"`(hoard [^`]+)`", problem) if "disks add" not in c]
    assert steps == ["hoard disks retire d0", "hoard replicate", "hoard disks forget d0"]
    for step in steps:
        res = hoard("--config", cfg, *step.split()[1:])
        assert res.returncode == 0, (step, res.stdout, res.stderr)
    assert "remove its [[disks]] table" in problem  # the last step, by hand
    write_config(tmp_path, disks[1:], shard_size_mb=4, copy_of_raw=2, write_ack=2)
    listed = hoard("--config", cfg, "disks", "list", "--json")
    assert [d["label"] for d in json.loads(listed.stdout)["disks"]] == ["d1", "d2"], listed.stderr
    shutil.rmtree(tmp_path / "d0")  # the drive is gone: what it held reads from the others
    for f, sha in files:
        got = hoard("--config", cfg, "get", sha, "-o", str(tmp_path / "back.bin"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "back.bin").read_bytes() == f.read_bytes()


def test_readings_go_into_the_usage_history(pg) -> None:
    """The figures of a health document's disks (here the two real drives' readings) are
    recorded with the usage sample and read back per disk, bucketed, for the chart."""
    migrate(pg)
    pg.commit()
    report = {"disks": [
        {"label": "ok1", "smart": smart.parse(_doc(HEALTHY)) | {"device": "/dev/sdb", "age_s": 12.0}},
        {"label": "bad1", "smart": smart.parse(_doc(FAILING)) | {"device": "/dev/sdc", "age_s": 30.0}},
        {"label": "loop1", "smart": {"available": False, "device": "/dev/loop3", "why": "no SMART: loop device"}}]}
    rows = smart_rows(report)
    assert [r.disk for r in rows] == ["ok1", "bad1"]  # no SMART, no row
    rec = record(pg, [], smart=rows)
    assert rec.smart_rows == 2
    points = {p.disk: p for p in smart_history(pg, days=1)}
    failing = smart.parse(_doc(FAILING))
    assert points["bad1"].passed is False and points["bad1"].pending == failing["pending"]
    assert points["bad1"].reallocated == failing["reallocated"]
    assert points["ok1"].passed is True and points["ok1"].temperature_c == smart.parse(_doc(HEALTHY))["temperature_c"]


@pytest.mark.skipif(shutil.which("smartctl", path="/usr/sbin:/sbin:/usr/bin") is None,
                    reason="smartctl is not installed (Debian package smartmontools)")
def test_loop_disk_reports_no_smart(lab_factory, tmp_path: Path, hoard_home: Path, pg) -> None:
    """A disk on a loop device: smartctl itself finds no SMART there, and `hoard disks smart`,
    `hoard health` and `hoard check` say so plainly — no warning, no problem."""
    lab = lab_factory([DiskProfile("loopy", 64, 500, 500, 5000)], throttle=False)
    loop = lab.disks["loopy"]
    own = subprocess.run(["smartctl", "--json=c", "-a", loop.device], capture_output=True, text=True)
    said = json.loads(own.stdout)
    assert said["smartctl"]["exit_status"] & 0x03 and "smart_status" not in said  # no device type, no SMART
    cfg_path = use_schema(hoard_home, pg)
    text = Path(cfg_path).read_text().replace('path = "disks/hdd1"', f'path = "{loop.mountpoint}"')
    Path(cfg_path).write_text(text)
    assert hoard("--config", cfg_path, "init").returncode == 0
    migrate(pg)
    pg.commit()
    res = hoard("--config", cfg_path, "disks", "smart", "hdd1", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    s = doc["disks"]["hdd1"]
    assert s["available"] is False and s["device"] == loop.device
    assert s["why"].startswith(f"no SMART: {loop.device} is a loop device backed by {loop.image}")
    assert doc["problems"] == doc["warnings"] == []
    health = json.loads(hoard("--config", cfg_path, "health", "--json").stdout)
    disk = next(d for d in health["disks"] if d["label"] == "hdd1")
    assert disk["smart"]["why"] == s["why"] and smart.summary(disk["smart"]) == "none (loop device)"
    # (a kernel without Landlock adds its one "sandbox:" warning, which is not the disk's)
    assert not [w for w in health["warnings"] if not w.startswith("sandbox:")]
    assert not [p for p in health["problems"] if "SMART" in p]
    check = hoard("--config", cfg_path, "check", "--no-database", "--json")
    assert check.returncode == 0 and "SMART" not in check.stdout, check.stdout
    assert config.load(cfg_path).disks[0].path == loop.mountpoint
