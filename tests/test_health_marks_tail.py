"""`hoard health` reads only what each disk's marks log gained since the last judgement
(fsd/io/judged.py) — and still judges the marks logs as `hoard check` and `hoard verify` do.
Each test tries to make the three disagree: a flipped bit in the part judged before, one in
the appended tail, a log cut shorter, a log replaced by another file; then follows the next
step they name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import marks
from hoardfs.jobs.health import collect
from tests.helpers import make_files
from tests.test_cli_put import _hoard
from tests.test_cli_put import _store as _cli_store

# tier: the module's tests start hoard processes and the services
pytestmark = pytest.mark.services


def _health(cfg: Path) -> tuple[list[str], dict]:
    """(health's marks-log problems, how it read the logs: `store.integrity.read`)."""
    doc = collect(config.load(cfg))
    return ([p for p in doc["problems"] if "marks log" in p or "mark of" in p],
            doc["store"]["integrity"]["read"])


def _check(cfg: Path) -> tuple[int, list[str]]:
    res = _hoard(cfg, "check")
    return res.returncode, [line.removeprefix("disagrees: ") for line in res.stderr.splitlines()
                            if line.startswith("disagrees: ") and ("marks log" in line or "mark of" in line)]


def _verify(cfg: Path) -> tuple[int, list[str]]:
    res = _hoard(cfg, "verify")
    return res.returncode, [line.removeprefix("bad ") for line in res.stderr.splitlines()
                            if line.startswith("bad ") and ("marks log" in line or "mark of" in line)]


def _put(cfg: Path, tmp_path: Path, n: int, seed: int) -> None:
    res = _hoard(cfg, "put", *map(str, make_files(tmp_path / f"in{seed}", n, seed=seed)))
    assert res.returncode == 0, res.stdout + res.stderr


def _flip_in_place(log: Path, at: int) -> None:
    """One hex digit of the record line that holds byte `at`, changed where it is (the same
    file, the same size: what bit rot does)."""
    with open(log, "r+b") as f:
        data = f.read()
        start = data.rfind(b"\n", 0, at) + 1
        pos = start + data[start:].index(b" ", data[start:].index(b" ") + 1) + 10  # inside the sha256
        f.seek(pos)
        f.write(b"0" if data[pos:pos + 1] != b"0" else b"1")
        f.flush()
        os.fsync(f.fileno())


def _store(tmp_path: Path) -> Path:
    cfg = _cli_store(tmp_path)
    _put(cfg, tmp_path, 20, seed=401)
    return cfg


def test_health_reads_only_the_tail_and_finds_what_check_finds_there(tmp_path: Path) -> None:
    """Every object a root: health's second reading reads the lines appended since its first,
    not the logs again; a bit flipped in that tail makes it read every log whole, and it names
    what check names there, in check's words (the damaged line, and what the log alone replays)."""
    cfg = _store(tmp_path)
    first, how = _health(cfg)
    assert first == [] and not how["tail"], (first, how)
    whole = how["lines_read"]
    assert whole >= 2 * 20, how  # two disks, a root per object
    again, how = _health(cfg)
    assert again == [] and how["tail"] and how["lines_read"] == 0, how
    _put(cfg, tmp_path, 5, seed=402)
    again, how = _health(cfg)
    assert again == [] and how["tail"] and 2 * 5 <= how["lines_read"] < whole, how  # 5 roots a disk, and blank lines
    log = marks.log_path(tmp_path / "d1")
    size = log.stat().st_size
    _put(cfg, tmp_path, 5, seed=404)
    _flip_in_place(log, size + 10)  # in the appended part
    health, how = _health(cfg)
    # a tail that is not all checked records: every log read whole, as check reads them
    assert not how["tail"] and how["lines_read"] > whole, how
    assert len(health) == 2 and health[0].startswith("disk d1: 1 damaged line(s) in its marks log (line "), health
    code, check = _check(cfg)
    assert code == 5 and health == check, (health, check)
    code, verify = _verify(cfg)
    assert code == 5 and verify == check, verify
    assert _hoard(cfg, "index", "rewrite-marks").returncode == 0  # the next step all three name
    assert _health(cfg)[0] == [] and _check(cfg) == (0, []) and _verify(cfg) == (0, [])


def test_a_flip_in_the_judged_part_is_named_by_health_once_check_or_verify_read_it(tmp_path: Path) -> None:
    """Bit rot in lines health judged before: health does not read them again — verify and
    check read every byte — and from their reading on health names it too, in their words,
    saying how old that reading is; until the next step clears it."""
    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    log = marks.log_path(tmp_path / "d0")
    _flip_in_place(log, 200)  # an early root line, judged already
    health, how = _health(cfg)
    assert health == [] and how["tail"], (health, how)  # (not read: the rot is verify's to find)
    code, verify = _verify(cfg)
    assert code == 5 and len(verify) == 1 and verify[0].startswith("disk d0: 1 damaged line(s)"), verify
    health, how = _health(cfg)
    assert health == verify and how["tail"] and how["whole_by"] == "verify", (health, how)
    _put(cfg, tmp_path, 3, seed=403)  # appends after it do not hide it
    health, how = _health(cfg)
    code, check = _check(cfg)
    assert code == 5 and health == check == verify, (health, check)
    assert _health(cfg)[1]["whole_by"] == "check"
    assert _hoard(cfg, "index", "rewrite-marks").returncode == 0
    assert _health(cfg)[0] == [] and _check(cfg) == (0, [])


def test_a_log_cut_shorter_is_read_whole_by_health(tmp_path: Path) -> None:
    """A log truncated behind the store's back (its last records gone) is shorter than the part
    health judged: health reads it whole and names what check names — the roots a rebuild from
    that log alone would lose."""
    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    log = marks.log_path(tmp_path / "d1")
    data = log.read_bytes()
    cut = data.rstrip(b"\n")
    cut = cut[:cut.rfind(b"\n") + 1]
    cut = cut[:cut.rstrip(b"\n").rfind(b"\n") + 1]  # the last two records gone
    os.truncate(log, len(cut))
    health, how = _health(cfg)
    assert not how["tail"] and health, how
    code, check = _check(cfg)
    assert code == 5 and health == check, (health, check)
    assert any("alone replays 2 mark(s) differently" in p for p in health), health
    assert _hoard(cfg, "index", "rewrite-marks").returncode == 0
    assert _health(cfg)[0] == [] and _check(cfg) == (0, [])


def test_a_log_replaced_by_another_file_is_read_whole_by_health(tmp_path: Path) -> None:
    """The log replaced by a copy (another inode, the same size, one line damaged): health
    reads it whole at once, before check or verify read it, and names what they name."""
    cfg = _store(tmp_path)
    assert _health(cfg)[0] == []
    log = marks.log_path(tmp_path / "d0")
    copy = log.with_name("copy.tmp")
    copy.write_bytes(log.read_bytes())
    _flip_in_place(copy, 200)
    os.replace(copy, log)
    health, how = _health(cfg)
    assert not how["tail"] and len(health) == 1 and "damaged line(s)" in health[0], (health, how)
    assert _check(cfg) == (5, health) and _verify(cfg) == (5, health)


def test_no_memory_is_trusted_for_another_index_or_a_snapshot(tmp_path: Path) -> None:
    """A snapshot (the logs replaced: a writer's catch-up, gc, rewrite-marks) and another index
    (a rebuild swaps one in) each make health read every log whole; the memory names the
    reading it keeps."""
    cfg = _store(tmp_path)
    _health(cfg)
    assert _health(cfg)[1]["tail"]
    assert _hoard(cfg, "index", "rewrite-marks").returncode == 0
    health, how = _health(cfg)
    assert health == [] and not how["tail"] and how["whole_by"] == "health", how
    assert _health(cfg)[1]["tail"]
    assert _hoard(cfg, "index", "rebuild").returncode == 0
    assert not _health(cfg)[1]["tail"]
