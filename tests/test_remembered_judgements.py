"""What health and the zones remember instead of reading again — the marks logs'
judgement (fsd/io/judged.py) and a sealed output's bytes (fsd/outputs/zones.py) — attacked: a
log cut and grown again, a hostile or damaged memory, a finding that later appends settle, a
record stamped in the future. Each test tries to make the integrity tools disagree or a zone
under-report; each failed on an earlier version of the code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hoardfs.fsd.core import marks
from tests.test_cli_put import _hoard
from tests.test_health_marks_tail import _check, _health, _put, _store

pytestmark = pytest.mark.services


def _without_last_two(data: bytes) -> bytes:
    """A marks log's bytes without its last two records (as test_health_marks_tail cuts one)."""
    cut = data.rstrip(b"\n")
    cut = cut[:cut.rfind(b"\n") + 1]
    return cut[:cut.rstrip(b"\n").rfind(b"\n") + 1]


def test_a_log_cut_and_grown_again_past_the_judged_length_is_read_whole(tmp_path: Path) -> None:
    """The same file (same inode) cut shorter behind the store's back, then grown by appends
    past what health judged: health must not trust the judged part (its last records are gone)
    — it names what check names."""
    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    log = marks.log_path(tmp_path / "d1")
    ino = log.stat().st_ino
    data = log.read_bytes()
    cut = _without_last_two(data)
    os.truncate(log, len(cut))
    _put(cfg, tmp_path, 6, seed=501)
    assert log.stat().st_ino == ino and log.stat().st_size > len(data)
    health, how = _health(cfg)
    code, check = _check(cfg)
    print(health, how, code, check)
    assert code == 5 and health == check, (health, how, check)


@pytest.mark.parametrize("where,edit", [
    ("disk", {"judged": "x"}), ("disk", {"judged": -5}), ("disk", {"lines": None}), ("disk", {"log": {}}),
    ("disk", {"off": "x"}), ("disk", {"checked": "yes"}),
    ("top", {"lost": {"rooted": [["zz"], []]}}), ("top", {"counts": {"rooted": "x"}}), ("top", {"counts": []}),
    ("top", {"whole_by": 5}),
])
def test_a_hostile_remembered_judgement_is_one_clear_reading_not_a_traceback(tmp_path: Path, where: str,
                                                                            edit: dict) -> None:
    """The memory file edited (bit rot, a hand edit, another version), in a disk's entry or at
    its top: health reads every log whole — nothing false named, never "cannot open the store"
    (the old code: a TypeError or KeyError out of the judgement, every refresh, or a false
    "replays x mark(s) differently")."""
    import json

    from hoardfs.base import config
    from hoardfs.fsd.io import judged as judged_mod

    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    path = config.load(cfg).ssd.root / judged_mod.MEMORY
    doc = json.loads(path.read_bytes())
    for r in doc["disks"].values() if where == "disk" else [doc]:
        r.update(edit)
    path.write_text(json.dumps(doc))
    health, how = _health(cfg)
    assert health == [] and not how["tail"], (health, how)  # read whole, nothing false named
    path.write_text(json.dumps(doc))
    res = _hoard(cfg, "health")
    assert "Traceback" not in res.stderr and "cannot open the store" not in res.stdout + res.stderr, res.stdout


def test_a_zone_record_stamped_in_the_future_is_not_trusted_beyond_the_recount(tmp_path: Path) -> None:
    """A sealed output recorded while the clock was ahead (an RTC wrong at boot, set back by
    NTP later): its record must not be trusted for longer than RECOUNT_S — a file grown in
    place since is counted once the record is walked again (the old code trusted it for as
    long as the clock had been ahead)."""
    import json

    from hoardfs.fsd.outputs import zones
    from tests.test_zones import sealed_output, zone_config

    cfg = zone_config(tmp_path)
    final = sealed_output(cfg, "3C", "out", 4096)
    z = cfg.ssd.zone_path("3C")
    [record] = (cfg.ssd.root / "state" / "zone-bytes" / "3C").iterdir()
    doc = json.loads(record.read_bytes())
    record.write_text(json.dumps(doc | {"at": doc["at"] + 30 * zones.RECOUNT_S}))
    with open(final / "data.bin", "ab") as f:
        f.write(os.urandom(256 * 1024))
    assert zones.zone_usage(cfg, "3C")["used_bytes"] == zones.du(z)


@pytest.mark.parametrize("doc", [{"dirs": []}, {"dirs": "x"}, {"bytes": -(10 ** 12)}, {"at": "x"}])
def test_a_damaged_zone_record_is_walked_not_a_traceback(tmp_path: Path, doc: dict) -> None:
    """A record file damaged or edited: the output is walked (the zone counts what `du` counts),
    never a traceback out of a reservation or health's zone card."""
    import json

    from hoardfs.fsd.outputs import zones
    from tests.test_zones import sealed_output, zone_config

    cfg = zone_config(tmp_path)
    sealed_output(cfg, "3C", "out", 4096)
    z = cfg.ssd.zone_path("3C")
    [record] = (cfg.ssd.root / "state" / "zone-bytes" / "3C").iterdir()
    record.write_text(json.dumps(json.loads(record.read_bytes()) | doc))
    assert zones.zone_usage(cfg, "3C")["used_bytes"] == zones.du(z)
    zones.release(cfg, "3C", zones.reserve(cfg, "3C", "next", "test:next", 4096).id)


def test_a_finding_that_appends_resolve_is_not_carried_by_health(tmp_path: Path) -> None:
    """A log cut behind the store's back (two roots gone from d1): health reads it whole and
    remembers "replays 2 mark(s) differently". Then one of the two objects is deleted (an
    unroot and a tombstone appended to every log): d1 alone now differs by 1 — check says 1;
    health, reading only the tail, must say what check says (it carried the old 2)."""
    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    log = marks.log_path(tmp_path / "d1")
    data = log.read_bytes()
    cut = _without_last_two(data)
    lost = [line.split()[2].decode() for line in data[len(cut):].split(b"\n") if line.strip()]
    assert len(lost) == 2, lost
    os.truncate(log, len(cut))
    health, how = _health(cfg)
    assert not how["tail"] and any("alone replays 2 mark(s)" in p for p in health), health
    res = _hoard(cfg, "delete", "--yes", "--object", lost[0])
    assert res.returncode == 0, res.stderr[-2000:]
    health, how = _health(cfg)
    code, check = _check(cfg)
    assert code == 5 and health == check, (health, how, check)
