"""Records a killed writer left in the marks logs (appended inside its transaction, never
committed): `hoard check` gave any writer AHEAD_WAIT_S to commit them, once per disk holding
one — every check of a store with such records waited 5 s per disk, though no writer was left.
It now waits only while a writer holds the store, and once for all the disks."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.layout import lock_root
from hoardfs.fsd.io import integrity
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, make_files

#: a writer killed right after its marks records reached every disk, before its commit
APPEND_THEN_DIE = """
import os, sys
from hoardfs.base import config
from hoardfs.fsd.io import copies
from hoardfs.fsd.store import Store

append = copies.log_marks

def append_then_die(*args, **kwargs):
    append(*args, **kwargs)
    os._exit(9)

copies.log_marks = append_then_die
store = Store.open(config.load(sys.argv[1]))
store.index.mark(store.index.hidden, [bytes.fromhex(s) for s in sys.argv[2:]], "test: killed before its commit")
"""

AHEAD = "stamped after anything the index gave out"


def _killed_writer(tmp_path: Path, n: int = 1) -> tuple[Path, list[str]]:
    """A store of three directory disks (made unless there) whose every marks log ends in `n`
    records (one append) never committed."""
    cfg_path = dir_disks_config(tmp_path, 3)
    with Store.open(config.load(cfg_path), init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 4, seed=8))]
    res = subprocess.run([sys.executable, "-c", APPEND_THEN_DIE, str(cfg_path), *shas[:n]], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 9, res.stderr[-2000:]
    return cfg_path, shas


def _hoard(cfg_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`hoard --config CFG ARGS…` run as a user runs it."""
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _only_d0_took_it(logs: list[Path]) -> None:
    """The cut came before the killed writer reached the disks after the first: their logs lose
    its append (each append begins with a newline)."""
    for log in logs[1:]:
        data = log.read_bytes()
        log.write_bytes(data[:data.rfind(b"\n\n") + 1])


def _hidden(cfg: config.Settings) -> list[bytes]:
    with Store.open(cfg, writable=False) as store:
        return [bytes(k) for k, _ in store.index.env.begin(db=store.index.hidden).cursor()]


@pytest.mark.services  # starts hoard processes
def test_records_no_writer_can_commit_are_named_at_once(tmp_path: Path) -> None:
    """No writer holds the store: `hoard check` names each disk's record ahead at once (old
    code: it waited AHEAD_WAIT_S for each of the three disks first)."""
    cfg_path, _ = _killed_writer(tmp_path)
    res = _hoard(cfg_path, "check", "--no-database", "--json", timeout=120)
    doc = json.loads(res.stdout)
    assert res.returncode == 5 and len([p for p in doc["problems"] if AHEAD in p]) == 3, doc["problems"]
    assert doc["seconds"] < integrity.AHEAD_WAIT_S, doc["seconds"]  # old code: over 3 × 5 s


#: a writer that holds the store (its lock, shared) until its stdin closes
HOLD = """
import sys
from hoardfs.base import config
from hoardfs.fsd.store import Store

with Store.open(config.load(sys.argv[1])):
    print("open", flush=True)
    sys.stdin.read()
"""


@pytest.mark.services  # starts hoard processes
def test_beside_a_writer_records_ahead_are_waited_for_once(tmp_path: Path, monkeypatch) -> None:
    """A writer holds the store (its records may be committing): the check waits AHEAD_WAIT_S
    once for all the disks, not once per disk, and then names the records still ahead."""
    monkeypatch.setattr(integrity, "AHEAD_WAIT_S", 1.0)
    cfg_path = dir_disks_config(tmp_path, 3)
    Store.open(config.load(cfg_path), init=True).close()
    # (opened before the records are left: a writer's open mends what it finds)
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(cfg_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        _killed_writer(tmp_path)
        with Store.open(config.load(cfg_path), writable=False) as store:
            t0 = time.monotonic()
            rep = check(store)
            took = time.monotonic() - t0
    finally:
        writer.communicate("", timeout=60)
    assert len([p for p in rep.problems if AHEAD in p]) == 3, rep.problems
    assert 1.0 <= took < 2.5, took  # old code: 3 × 1 s


@pytest.mark.services  # starts hoard processes
def test_after_a_cut_the_claim_is_true_and_the_next_writer_mends_it(tmp_path: Path) -> None:
    """A power cut between a writer's marks append and its commit: `hoard health` names each
    disk's record ahead with its count, which the chaos harness reads off the log file itself
    (a claim it could not check counted as false); `hoard replicate`, the first step of
    docs/operations.md "After a power loss", is a writer and rewrites those logs: health and
    check name nothing ahead after it, and the marks the index holds are all still there."""
    from tests.chaos.harness import _stamped_after

    cfg_path, shas = _killed_writer(tmp_path)
    cfg = config.load(cfg_path)

    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    ahead = [p for p in doc["problems"] if AHEAD in p]
    assert len(ahead) == 3, doc["problems"]
    with Store.open(cfg, writable=False) as store:
        stamp = int(store.index.get_meta("marks_ns") or 0)
        roots = {bytes(k) for k in store.index.env.begin(db=store.index.rooted).cursor().iternext(values=False)}
    for d in cfg.disks:
        assert f"disk {d.label}: its marks log holds {_stamped_after(d.path, stamp)} record(s)" in " ".join(ahead)
        assert _stamped_after(d.path, stamp) == 1
    assert _hoard(cfg_path, "replicate").returncode == 0
    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    assert not [p for p in doc["problems"] if AHEAD in p], doc["problems"]
    res = _hoard(cfg_path, "check", "--no-database", "--json")
    assert res.returncode == 0, res.stdout[-3000:]
    with Store.open(cfg, writable=False) as store:
        assert not store.index.env.begin(db=store.index.hidden).stat()["entries"]  # never committed: not hidden
        after = {bytes(k) for k in store.index.env.begin(db=store.index.rooted).cursor().iternext(values=False)}
        assert after == roots
        files = sorted((tmp_path / "in").iterdir())
        assert sorted(hashlib.sha256(store.get(s)).hexdigest() for s in shas) == sorted(
            hashlib.sha256(f.read_bytes()).hexdigest() for f in files)  # every acknowledged object reads


@pytest.mark.services  # starts hoard processes
def test_a_record_the_cut_left_without_its_newline_is_counted_by_neither(tmp_path: Path) -> None:
    """A power cut can tear a writer's append right before a record's newline (the page holding
    the record reached the disk, the next one did not): the log's last line then has a check
    that holds and no newline. `hoard health` takes it for no record (the torn rest of an
    append, as a rebuild does) and names the whole ones ahead; the chaos harness counted it
    too, and so took health's true claim for a false one (test_chaos[0], a loaded CI run:
    "put with powercut at 0.39")."""
    from tests.chaos.harness import _stamped_after

    cfg_path, _ = _killed_writer(tmp_path, 3)
    cfg = config.load(cfg_path)
    torn = cfg.disks[0].path / "marks" / "marks.log"
    data = torn.read_bytes()
    assert data.endswith(b"\n")
    torn.write_bytes(data[:-1])
    res = _hoard(cfg_path, "health", "--json", timeout=120)
    ahead = [p for p in json.loads(res.stdout)["problems"] if AHEAD in p]
    with Store.open(cfg, writable=False) as store:
        stamp = int(store.index.get_meta("marks_ns") or 0)
    assert len(ahead) == 3, ahead
    for d, n in zip(cfg.disks, (2, 3, 3), strict=True):
        assert f"disk {d.label}: its marks log holds {n} record(s)" in " ".join(ahead), ahead
        assert _stamped_after(d.path, stamp) == n  # old harness: 3 on the torn log


@pytest.mark.services  # starts hoard processes
@pytest.mark.parametrize("alone", [False, True], ids=["every-disk", "one-disk"])
def test_the_next_writer_mends_a_log_whose_append_the_cut_tore(tmp_path: Path, alone: bool) -> None:
    """A power cut tore a writer's append on one disk in its last record (its first records
    whole, ahead of the index); `alone`: the cut came before the writer reached the other
    disks. The next writer (`hoard replicate`, docs/operations.md "After a power loss") took
    the log's torn last line for no stamp at all (marks.last_stamp: None) and left the log as
    it was: health went on naming its records ahead — or, once another disk's raised the
    index's stamp past them, that it alone replays marks the index never held — and, the one
    disk holding them, an index rebuild hid objects nobody hid. It now sees the records before
    the torn line, and snapshots the log."""
    cfg_path, _ = _killed_writer(tmp_path, 3)
    cfg = config.load(cfg_path)
    logs = [d.path / "marks" / "marks.log" for d in cfg.disks]
    logs[0].write_bytes(logs[0].read_bytes()[:-40])  # torn in its third record
    if alone:
        _only_d0_took_it(logs)

    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    assert "disk d0: its marks log holds 2 record(s)" in " ".join(doc["problems"]), doc["problems"]
    assert _hoard(cfg_path, "replicate").returncode == 0
    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    assert not [p for p in doc["problems"] if "marks log" in p], doc["problems"]  # old code: disk d0 named
    res = _hoard(cfg_path, "check", "--no-database", "--json")
    assert res.returncode == 0, res.stdout[-3000:]
    assert b" hide " not in logs[0].read_bytes()  # the records that never committed are gone
    assert not _hidden(cfg)
    if alone:  # what a rebuild replays: no other disk's snapshot is newer than those records
        shutil.rmtree(cfg.index_dir)
        assert _hoard(cfg_path, "index", "rebuild").returncode == 0
        assert not _hidden(cfg)  # old code: 2


@pytest.mark.services  # starts hoard processes
@pytest.mark.parametrize("alone", [False, True], ids=["every-disk", "one-disk"])
def test_a_record_cut_before_its_newline_is_never_made_whole_by_the_next_append(tmp_path: Path, alone: bool) -> None:
    """A power cut took only the newline of a one-record append on one disk: its last line is
    the whole, checked record of a hide that never committed, without its end. The next
    writer's append begins with a newline (which ends a torn line) — here it ended the record:
    from then on a whole line, obeyed by an index rebuild (`alone`: that disk the only one
    holding it) and named by health as a mark the disk alone replays. The next writer now
    takes such a line for the last record, ahead of the index, and snapshots the log first."""
    cfg_path, shas = _killed_writer(tmp_path, 1)
    cfg = config.load(cfg_path)
    logs = [d.path / "marks" / "marks.log" for d in cfg.disks]
    logs[0].write_bytes(logs[0].read_bytes()[:-1])  # the record whole, its newline lost
    if alone:
        _only_d0_took_it(logs)
    with Store.open(cfg) as store:  # the next writer: one hide of its own, committed
        store.index.mark(store.index.hidden, [bytes.fromhex(shas[3])], "test: the next writer's mark")
    assert shas[0].encode() not in logs[0].read_bytes()  # the record that never committed is gone

    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    assert not [p for p in doc["problems"] if "marks log" in p], doc["problems"]
    assert _hoard(cfg_path, "check", "--no-database", "--json").returncode == 0
    if alone:
        shutil.rmtree(cfg.index_dir)
        assert _hoard(cfg_path, "index", "rebuild").returncode == 0
    assert _hidden(cfg) == [bytes.fromhex(shas[3])]  # old code: the uncommitted hide of shas[0] too


#: the next writer: opens the store (catching its marks logs up) and commits one hide of its own
NEXT_WRITER = """
import sys
from hoardfs.base import config
from hoardfs.fsd.store import Store
with Store.open(config.load(sys.argv[1])) as store:
    store.index.mark(store.index.hidden, [bytes.fromhex(sys.argv[2])], "test: the next writer's mark")
"""


@pytest.mark.services  # starts a hoard process
def test_a_writer_opening_beside_a_snapshot_mends_the_logs_ahead_before_it_appends(tmp_path: Path) -> None:
    """Two writers open at once after a cut: one takes the snapshot lock and reads every log
    (seconds at millions of marks); the other found the lock taken and went on — and its first
    append buried the records ahead, which the snapshot's recheck then took for mended (the
    log's last line no later than the index's): an uncommitted hide or delete for good, obeyed
    by an index rebuild. A writer that finds logs ahead now waits for the lock to mend them."""
    cfg_path, shas = _killed_writer(tmp_path, 1)
    cfg = config.load(cfg_path)
    (lock_root(cfg) / "locks").mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_root(cfg) / "locks" / "marks-snapshot", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's snapshot under way
        proc = subprocess.Popen([sys.executable, "-c", NEXT_WRITER, str(cfg_path), shas[3]], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None  # it waits (old code: appended at once, and was done)
    finally:
        os.close(fd)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    for d in cfg.disks:
        assert shas[0].encode() not in (d.path / "marks" / "marks.log").read_bytes(), d.label
    assert _hidden(cfg) == [bytes.fromhex(shas[3])]


@pytest.mark.services  # starts hoard processes
def test_a_writer_already_open_when_another_dies_leaves_the_dead_records_to_a_snapshot(tmp_path: Path) -> None:
    """Writer A (a mount, a worker) has the store open when writer B appends a hide to every
    disk's marks log and is killed before its commit. A's catch-up ran at its open, before
    that: its next mark appended after B's records, and the index took every disk as
    complete — B's hide buried under a committed record, ahead no more, never mended; an
    index rebuild hid the object nobody hid, and health named a mark the disks alone replay.
    A now leaves those disks behind: health names them, and the next writer (`hoard
    replicate`) replaces their logs by a snapshot; a rebuild hides only what A hid."""
    cfg_path = dir_disks_config(tmp_path, 3)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 4, seed=8))]
    logs = [d.path / "marks" / "marks.log" for d in cfg.disks]
    with Store.open(cfg) as a:
        res = subprocess.run([sys.executable, "-c", APPEND_THEN_DIE, str(cfg_path), shas[0]], capture_output=True,
                             text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert res.returncode == 9, res.stderr[-2000:]
        assert all(shas[0].encode() in log.read_bytes() for log in logs)
        a.index.mark(a.index.hidden, [bytes.fromhex(shas[3])], "test: A's own hide")
        assert sorted(a.marks_behind()) == sorted(a.disks)  # old code: none
        stamps = [int(line.split()[0]) for line in logs[0].read_bytes().split(b"\n") if line.strip()]
        assert stamps == sorted(stamps), "A's record is stamped before B's"

    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    named = [p for p in doc["problems"] if "marks log" in p]
    assert sum("misses records the index holds" in p for p in named) == 3, doc["problems"]
    assert any(shas[0] in p for p in named), doc["problems"]  # B's hide, which a rebuild would obey
    assert all("hoard index rewrite-marks" in p for p in named), doc["problems"]
    assert _hoard(cfg_path, "replicate").returncode == 0  # "the next writer rewrites it"
    doc = json.loads(_hoard(cfg_path, "health", "--json").stdout)
    assert not [p for p in doc["problems"] if "marks log" in p], doc["problems"]
    assert _hoard(cfg_path, "check", "--no-database", "--json").returncode == 0
    assert all(shas[0].encode() not in log.read_bytes() for log in logs)  # B's hide is gone
    shutil.rmtree(cfg.index_dir)
    assert _hoard(cfg_path, "index", "rebuild").returncode == 0
    assert _hidden(cfg) == [bytes.fromhex(shas[3])]  # old code: B's uncommitted hide of shas[0] too


@pytest.mark.expect_log(r"cannot read the end of its marks log", level="WARNING")
def test_a_log_whose_end_does_not_read_is_not_taken_for_complete(tmp_path: Path, monkeypatch) -> None:
    """A transaction's read of each log's end fails on one disk (a GET the engine refused
    once) and its append there succeeds: that log may hold a dead writer's records under the
    new one, so the disk is left behind — and the next writer snapshots it."""
    from hoardfs.fsd.core.beside import LocalBeside

    cfg = config.load(dir_disks_config(tmp_path, 3))
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 2, seed=9))]
        d1 = next(u for u, d in store.disks.items() if d.label == "d1")
        real = LocalBeside.marks_ends

        def refused(self):
            if self.root == store.disks[d1].root:
                raise OSError(5, "Input/output error (once)")
            return real(self)

        monkeypatch.setattr(LocalBeside, "marks_ends", refused)
        store.index.mark(store.index.hidden, [bytes.fromhex(shas[0])], "test: a hide")
        monkeypatch.undo()
        assert store.marks_behind() == [d1]  # old code: none
    with Store.open(cfg) as store:
        assert store.marks_behind() == []
