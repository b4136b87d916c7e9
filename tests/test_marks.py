"""The marks log on the HDDs (fsd/core/marks.py) must be able to give back every mark the index
holds — roots above all: an index rebuilt without a root lets a batch drop + gc free an
object `hoard put` acknowledged.

Marks were once appended only to the disks writable at that moment and nothing seeded a disk
added or reactivated later, so after the disks were replaced one by one no log held the old
roots; `hoard index restore` brought back an index copy without the objects and marks since
that copy; one damaged log line made every index rebuild crash.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import marks
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.store import Store
from tests.helpers import make_files
from tests.test_cli_put import _hoard
from tests.test_cli_put import _store as _cli_store
from tests.test_gc import _register
from tests.test_roots import _reads_back

PUT = "hoard put"



def _own_log(disk_root: Path) -> dict[str, list[bytes]]:
    """What one disk's marks log alone replays to."""
    found: set[marks.Record] = set()
    marks.read(marks.log_path(disk_root).parent, found)
    return marks.replay(found)


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout + res.stderr


def _drop_batch_with_same_content_and_gc(cfg: Path, files: list[Path]) -> None:
    with Store.open(config.load(cfg)) as store:
        _register(store, "batch-x", store.put_many(files))
        drop_batch(store, "batch-x")
        gc(store, threshold=1.0)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_replaced_disks_keep_the_roots_through_an_index_rebuild(tmp_path: Path) -> None:
    """`hoard put` on d0-d2, then every disk replaced by a new one (add, replace, forget, the
    old one unplugged), then the index rebuilt from the new disks alone: the roots are there,
    so a batch holding the same bytes, dropped and gc'd, does not free the put objects."""
    cfg = _cli_store(tmp_path)
    files = make_files(tmp_path / "in", 6, seed=21)
    put = _hoard(cfg, "put", *map(str, files[:3]))
    _ok(put)
    acked = [line.split()[0] for line in put.stdout.splitlines()]
    for i in range(3):
        new = tmp_path / f"n{i}"
        new.mkdir()
        _ok(_hoard(cfg, "disks", "add", str(new), "--label", f"n{i}"))
        # a new disk's log replays the index's marks from its first writer on
        assert {m.hex() for m in _own_log(new)["rooted"]} == set(acked)
        _ok(_hoard(cfg, "disks", "replace", f"d{i}", f"n{i}", "--yes"))
        _ok(_hoard(cfg, "disks", "forget", f"d{i}"))
        text = cfg.read_text().replace(f'[[disks]]\nlabel = "d{i}"\npath = "{tmp_path / f"d{i}"}"\n', "")
        cfg.write_text(text)
        shutil.rmtree(tmp_path / f"d{i}")
    _ok(_hoard(cfg, "check"))
    shutil.rmtree(config.load(cfg).index_dir)
    rebuilt = _hoard(cfg, "index", "rebuild")
    _ok(rebuilt)
    assert "3 kept by `hoard put`" in rebuilt.stdout
    _drop_batch_with_same_content_and_gc(cfg, files)
    with Store.open(config.load(cfg), writable=False) as store:
        assert all(_reads_back(store, sha) for sha in acked)
    _ok(_hoard(cfg, "check"))


def test_a_reactivated_disk_gets_the_marks_it_missed(store_factory, tmp_path: Path) -> None:
    """A disk failed while objects were put (its log missed the roots); `hoard disks activate`
    brings its log up to the index: alone it replays every root."""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.maintenance.lifecycle import activate

    store = store_factory(n_disks=3, caps=None)
    early = store.put_many(make_files(tmp_path / "a", 2, seed=22), root=PUT)
    store.set_disk_state("d3", DiskState.FAILED, "test: unplugged for a while")
    late = store.put_many(make_files(tmp_path / "b", 3, seed=23), root=PUT)
    d3 = tmp_path / "disks" / "d3"
    assert len(_own_log(d3)["rooted"]) == 2  # it missed the late roots
    activate(store, "d3")
    assert {m.hex() for m in _own_log(d3)["rooted"]} == {r.sha256 for r in early + late}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_log_cut_or_ahead_behind_the_index_back(tmp_path: Path) -> None:
    """A log that holds a record whose transaction never committed (a crash between the
    append and the commit) is rewritten by the next writer; one the index counts as complete
    but that lost its tail (damage) is named by `hoard check` with the fix, and `hoard index
    rewrite-marks` makes it whole."""
    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 4, seed=24)))
    _ok(put)
    acked = [line.split()[0] for line in put.stdout.splitlines()]
    log = marks.log_path(tmp_path / "d1")
    log.write_bytes(log.read_bytes()[:-100])  # the last root and a half are gone
    with open(marks.log_path(tmp_path / "d2"), "ab") as f:  # never committed: an unroot
        f.write(b"\n" + marks.records(marks.last_stamp(tmp_path / "d2") + 1, "unroot", [bytes.fromhex(acked[0])]))
    # the next writer raises the index's stamp past the dead transaction's (check reads records
    # up to the index's stamp: a commit in flight is no disagreement)
    _ok(_hoard(cfg, "put", *map(str, make_files(tmp_path / "more", 1, seed=25))))
    # ... and sees d2's log ending after what the index knows it took: d2 gets a snapshot
    assert {m.hex() for m in _own_log(tmp_path / "d2")["rooted"]} >= set(acked)
    res = _hoard(cfg, "check")  # the cut log: the index counts it complete, it is not
    assert res.returncode == 5, res.stdout + res.stderr
    assert "disk d1: its marks log alone replays" in res.stdout + res.stderr, res.stdout + res.stderr
    _ok(_hoard(cfg, "index", "rewrite-marks"))
    _ok(_hoard(cfg, "check"))
    for d in ("d0", "d1", "d2"):
        assert {m.hex() for m in _own_log(tmp_path / d)["rooted"]} >= set(acked)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_check_names_a_root_no_log_replays_and_rewrite_marks_fixes_it(tmp_path: Path) -> None:
    """With every marks log gone (a store from before snapshots), `hoard check` names the roots
    an index rebuild would lose and the command that fixes it; after it, check is clean."""
    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 2, seed=25)))
    _ok(put)
    for i in range(3):
        marks.log_path(tmp_path / f"d{i}").unlink()
    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr
    sha = put.stdout.split()[0]
    assert f"rooted mark of {sha} is in the index, but the disks' marks logs do not replay it" in res.stdout + res.stderr
    assert "`hoard index rewrite-marks`" in res.stdout + res.stderr
    fixed = _hoard(cfg, "index", "rewrite-marks")
    _ok(fixed)
    assert "marks log rewritten on d0, d1, d2: 2 marks" in fixed.stdout
    _ok(_hoard(cfg, "check"))


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_restore_brings_the_index_copy_up_to_date_from_the_disks(tmp_path: Path) -> None:
    """`hoard index backup`, then more puts (objects + roots), a release and a gc that frees
    it, then the SSD's index lost: `hoard index restore` has the objects and roots stored
    after the copy, not the one gc freed, and a batch drop + gc afterwards frees no put."""
    cfg = _cli_store(tmp_path)
    files = make_files(tmp_path / "in", 8, seed=26)
    first = _hoard(cfg, "put", *map(str, files[:2]))
    _ok(first)
    _ok(_hoard(cfg, "index", "backup"))
    later = _hoard(cfg, "put", *map(str, files[2:5]))
    _ok(later)
    gone = first.stdout.split()[0]
    _ok(_hoard(cfg, "delete", "--object", gone))
    _ok(_hoard(cfg, "gc", "--no-database", "--threshold", "1.0"))
    kept = [line.split()[0] for line in (first.stdout.splitlines()[1:] + later.stdout.splitlines())]
    shutil.rmtree(config.load(cfg).index_dir)
    restored = _hoard(cfg, "index", "restore")
    _ok(restored)
    assert "brought up to date from the disks" in restored.stdout and "4 kept by `hoard put`" in restored.stdout
    _ok(_hoard(cfg, "check"))
    assert _hoard(cfg, "info", gone).returncode == 5
    _drop_batch_with_same_content_and_gc(cfg, files)
    with Store.open(config.load(cfg), writable=False) as store:
        assert all(_reads_back(store, sha) for sha in kept)
        assert not _reads_back(store, hashlib.sha256(files[7].read_bytes()).hexdigest())


def test_a_damaged_log_line_is_skipped_and_named(store_factory, tmp_path: Path) -> None:
    """Lines that are not records (a non-hex sha, an unknown op, a short line) do not stop an
    index rebuild: they are skipped and named; the good records still replay."""
    from hoardfs.fsd.maintenance.reindex import rebuild_index

    store = store_factory(n_disks=2, caps=None)
    acked = store.put_many(make_files(tmp_path / "a", 2, seed=27), root=PUT)
    for i in (1, 2):
        with open(marks.log_path(tmp_path / "disks" / f"d{i}"), "ab") as f:
            f.write(b"1 root " + b"zz" * 32 + b"\n9 nonsense " + b"ab" * 32 + b"\n12 root abc\n")
    cfg = store.cfg
    store.close()
    rep = rebuild_index(cfg)
    assert rep.rooted == 2
    with Store.open(cfg, writable=False) as again:
        assert {m.hex() for m in again.index.marked(again.index.rooted)} == {r.sha256 for r in acked}
    # a non-hex sha and an unknown op are damage; "12 root abc" is what a cut append leaves
    assert sum("2 damaged line(s)" in d for d in rep.damaged) == 2, rep.damaged
    assert sum("1 line(s) that are not records" in d for d in rep.damaged) == 2, rep.damaged


def test_stamps_never_go_back(store_factory, tmp_path: Path) -> None:
    """A clock set back does not reorder the log: a stamp is always after the last one."""
    from hoardfs.fsd.core.index import MARKS_NS

    store = store_factory(n_disks=2, caps=None)
    future = 4_000_000_000_000_000_000  # year 2096
    with store.index.env.begin(write=True, db=store.index.meta) as txn:
        txn.put(MARKS_NS, str(future).encode())
    store.put_many(make_files(tmp_path / "a", 1, seed=28), root=PUT)
    assert marks.last_stamp(tmp_path / "disks" / "d1") == future + 1


def test_replay_starts_at_the_newest_reset() -> None:
    """A stale log on another disk (a tombstone the index cleared later, before a snapshot)
    does not come back; records after the snapshot apply."""
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    old_disk = {(10, "delete", a.hex()), (11, "root", b.hex())}
    snap = {marks.parse(line + b"\n") for line in marks.snapshot(20, {"rooted": [b]}).splitlines()}
    after = {(21, "delete", c.hex()), (22, "unroot", b.hex())}
    got = marks.replay(old_disk | snap | after)
    assert got == {"hidden": [], "deleted": [c], "rooted": []}
    assert marks.replay(old_disk) == {"hidden": [], "deleted": [a], "rooted": [b]}
