"""One shard copy (hoardfs.fsd.io.replica.copy_shard, under rebuild, replicate, scrub and drain): the
footer goes first, each piece is pushed to the disk and read back while the next is written.
These tests try to get a bad copy named as a good one: odd geometries (a footer spanning
pieces, one piece, a record spanning many), a damaged source, a destination that stops
taking writes, and a rebuild whose first source is the damaged one."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.io import replica
from hoardfs.fsd.io.replica import check_replica, copy_shard
from hoardfs.fsd.io.replicate import repair_reported
from hoardfs.fsd.maintenance.rebuild import rebuild
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, flip_byte, write_config
from tests.lab import DiskProfile
from tests.terminal import as_foreground
from tests.test_store import check_store

PIECE = 16 << 10  # small pieces, so a few KiB of records already make several


def _sealed(store) -> list:
    metas = [m for m in store.index.iter_shards() if m.sealed]
    assert metas, "the batch left no sealed shard"
    return metas


def _spare(store, meta):
    """A disk that holds no replica of the shard."""
    return next(d for u, d in store.disks.items() if u not in meta.replicas)


@pytest.mark.parametrize("sizes", [
    [40] * 400,  # many tiny records: the footer spans several pieces
    [300_000, 500_000],  # records spanning many pieces
    [10],  # the whole shard is smaller than one piece
    [PIECE - 7, PIECE * 3 + 1, 5, PIECE],  # boundaries off the pieces' edges
], ids=["footer-spans-pieces", "records-span-pieces", "one-piece", "odd-boundaries"])
def test_the_copy_is_the_source_byte_for_byte(store_factory, monkeypatch, sizes) -> None:
    monkeypatch.setattr(replica, "COPY_CHUNK", PIECE)
    store = store_factory(n_disks=3, caps=None, write_ack=2, copy_of_raw=2)
    rng = random.Random(len(sizes))
    store.put_bytes_many([rng.randbytes(n) for n in sizes])
    for meta in _sealed(store):
        src = store.disks[meta.replicas[0]]
        dst = _spare(store, meta)
        assert copy_shard(src, dst, meta.hex) == meta.size
        assert dst.find(meta.hex).read_bytes() == src.find(meta.hex).read_bytes()
        assert check_replica(dst, meta, sha256=True) == meta.size
        assert not any((dst.root / "tmp").iterdir())


@pytest.mark.parametrize("where", ["first record", "last record", "footer", "shard id"])
def test_a_damaged_source_gives_no_copy(store_factory, monkeypatch, where) -> None:
    """A flipped byte in the source: the copy raises, leaves no file (neither the temporary
    nor a named one) and the source is as it was. (The header's shard id is covered by no
    checksum: a copy with a wrong one was named, and `hoard index rebuild` refuses it later.)"""
    monkeypatch.setattr(replica, "COPY_CHUNK", PIECE)
    store = store_factory(n_disks=3, caps=None, write_ack=2, copy_of_raw=2)
    store.put_bytes_many([os.urandom(9_000) for _ in range(30)])
    meta = _sealed(store)[0]
    src, dst = store.disks[meta.replicas[0]], _spare(store, meta)
    path = src.find(meta.hex)
    size = path.stat().st_size
    offset = {"first record": fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE + 100,
              "last record": size - fmt.TRAILER_SIZE - meta.records * fmt.FOOTER_ENTRY_SIZE - 50,
              "footer": size - fmt.TRAILER_SIZE - 10,
              "shard id": 16 + 5}[where]  # magic 8, version 2, class 1, flags 1, reserved 4, shard_id 12
    flip_byte(path, offset)
    before = hashlib.sha256(path.read_bytes()).digest()
    with pytest.raises(fmt.ShardFormatError):
        copy_shard(src, dst, meta.hex)
    assert not dst.path(meta.hex, True).exists()
    assert not any((dst.root / "tmp").iterdir())
    assert hashlib.sha256(path.read_bytes()).digest() == before


def test_a_damaged_first_record_stops_the_copy_early(store_factory, monkeypatch) -> None:
    """The check runs behind the writes: a bad first record ends the copy long before the
    whole shard is written (here: a rate of 2 MB/s and 4 MB to go — it would take 2 s)."""
    monkeypatch.setattr(replica, "COPY_CHUNK", 256 << 10)
    # (one open shard: the 4 MB the test copies are in one shard)
    store = store_factory(n_disks=3, caps=None, write_ack=2, copy_of_raw=2, shard_size_mb=8, open_shards=1)
    store.put_bytes_many([os.urandom(200_000) for _ in range(20)])
    meta = max(_sealed(store), key=lambda m: m.size)
    assert meta.size > 3_500_000
    src, dst = store.disks[meta.replicas[0]], _spare(store, meta)
    flip_byte(src.find(meta.hex), fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE + 5)
    t0 = time.monotonic()
    with pytest.raises(fmt.PayloadChecksumMismatch):
        copy_shard(src, dst, meta.hex, rate_mb_s=2)
    assert time.monotonic() - t0 < 1.0
    assert not any((dst.root / "tmp").iterdir())


@pytest.mark.expect_log(r"disk d\d: (rebuild|read) error on shard", level="WARNING")
def test_rebuild_skips_a_damaged_source_for_a_whole_one(store_factory, monkeypatch) -> None:
    """Three copies; one disk is lost and one of the two left is damaged in every shard: the
    rebuild copies from the whole one and queues the damaged one for repair, which mends
    it; every object reads back with its sha256 and every replica checks out."""
    monkeypatch.setattr(replica, "COPY_CHUNK", PIECE)
    store = store_factory(n_disks=4, caps=None, write_ack=3, copy_of_raw=3, copy_of_generated=3)
    datas = [os.urandom(7_000 + i) for i in range(150)]
    results = store.put_bytes_many(datas)
    lost = store.disks[_sealed(store)[0].replicas[0]]
    on_lost = [m for m in _sealed(store) if lost.uuid in m.replicas]
    damaged = set()
    for meta in on_lost:
        one = next(u for u in meta.replicas if u != lost.uuid)
        flip_byte(store.disks[one].find(meta.hex), fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE + 1)
        damaged.add((meta.shard_id, one))
    for f in lost.root.joinpath("shards").rglob("*.shard"):
        f.unlink()
    rep = rebuild(store, lost.label)
    assert not rep.lost and rep.copied == len(on_lost)
    for r, data in zip(results, datas, strict=True):
        assert store.get(r.sha256) == data
    assert {(sid, uuid) for sid, uuid, _why in store.index.pending_repairs()} == damaged
    assert repair_reported(store) == len(on_lost)
    assert check_store(store) == len(datas)


def _t1_lost(lab_factory, tmp_path: Path, n_mib: int, **lab_options):
    """Three fast lab disks, `n_mib` objects of 1 MiB stored with 2 copies on t1 and t2 (t3
    kept empty), t1 lost (lazy unmount) and t3 ready to take its copies."""
    lab = lab_factory([DiskProfile(f"t{i}", 300, 500, 500, 5000) for i in (1, 2, 3)], **lab_options)
    disks = [(label, lab.disks[label].mountpoint, None) for label in ("t1", "t2", "t3")]
    store = Store.open(config.load(write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=4, write_ack=2,
                                                copy_of_raw=2)), init=True)
    store.set_disk_state("t3", DiskState.DRAINING, "kept empty for the rebuild")
    datas = [os.urandom(1 << 20) for _ in range(n_mib)]
    results = store.put_bytes_many(datas)
    lab.vanish("t1")
    store.set_disk_state("t3", DiskState.ACTIVE, "the rebuild's target")
    return lab, store, datas, results


@pytest.mark.lab
@pytest.mark.expect_log(r"disk t3: rebuild error", level="WARNING")
def test_a_target_that_stops_writing_is_blamed_not_the_source(lab_factory, tmp_path: Path) -> None:
    """The disk a rebuild copies onto starts failing writes (EIO) mid-copy: the rebuild stops
    with a message naming that disk, starting no further copy; the source disk stays active
    (it was once marked failed for the target's error — every healthy disk a rebuild tried,
    one after the other); no copy on the target is indexed; every object reads back."""
    lab, store, datas, results = _t1_lost(lab_factory, tmp_path, 40)
    failer = threading.Timer(0.3, lab.fail_writes, args=("t3",))
    failer.start()
    try:
        with pytest.raises(HoardError) as e:
            rebuild(store, "t1", onto="t3", rate_mb_s=20)
    finally:
        failer.join()
        subprocess.run(["chattr", "-i", str(lab.disks["t3"].image)], check=False)
    assert "writing its copy onto disk t3 failed" in e.value.message and "nothing was lost" in e.value.message
    # the copies under way when it failed (3 streams) failed with it; the other shards were not tried
    errors = [ev for ev in store.index.recent_events(100) if ev["kind"] == "rebuild_error"]
    assert 1 <= len(errors) <= 3 and {ev["disk"] for ev in errors} == {"t3"}
    states = {r.label: r.state for r in store.records.values()}
    assert states["t2"] == DiskState.ACTIVE and states["t3"] != DiskState.ACTIVE
    t3 = next(u for u, r in store.records.items() if r.label == "t3")
    assert all(t3 not in m.replicas for m in store.index.iter_shards())
    for r, data in zip(results, datas, strict=True):
        assert store.get(r.sha256) == data
    store.close()


@pytest.mark.lab
@pytest.mark.expect_log(r"disk t3: rebuild error", level="WARNING")
def test_a_target_that_dropped_off_gets_no_copy_on_the_root_filesystem(lab_factory, tmp_path: Path) -> None:
    """The disk a rebuild copies onto drops off the bus (lazy unmount: an empty directory is
    left) after the store was opened: the rebuild stops naming that disk and marks it
    missing; nothing is written under the empty mount point (the root filesystem), and no
    shard names t3 unless t3, mounted again, holds a good copy of it."""
    lab, store, datas, results = _t1_lost(lab_factory, tmp_path, 12, throttle=False)
    lab.vanish("t3")
    with pytest.raises(HoardError) as e:
        try:
            rebuild(store, "t1", onto="t3")
        finally:
            mnt = lab.disks["t3"].mountpoint
            assert not os.path.ismount(mnt) and list(mnt.iterdir()) == [], "written onto the root filesystem"
    assert "disk t3" in e.value.message
    states = {r.label: r.state for r in store.records.values()}
    assert states["t2"] == DiskState.ACTIVE and states["t3"] == DiskState.MISSING
    lab.reappear("t3")
    t3 = next(u for u, r in store.records.items() if r.label == "t3")
    for meta in store.index.iter_shards():
        if t3 in meta.replicas:
            check_replica(store.disks[t3], meta)
    for r, data in zip(results, datas, strict=True):
        assert store.get(r.sha256) == data
    store.close()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_rebuild_stops_at_once_and_the_next_run_finishes(tmp_path: Path, sig) -> None:
    """`hoard rebuild` slowed to 1 MB/s is interrupted (Ctrl-C, or kill -9) a few shards in:
    it is gone within a few seconds (Ctrl-C: exit 130 — it once went on with every shard
    left, 25 s here, hours on a real disk), and the next run finishes the job: every object
    reads back and every replica checks out (after Ctrl-C no temporary file is left)."""
    cfg_path = dir_disks_config(tmp_path, 4, first=1, shard_size_mb=1, write_ack=2, copy_of_raw=2)
    store = Store.open(config.load(cfg_path), init=True)
    datas = [os.urandom(900_000) for _ in range(40)]
    results = store.put_bytes_many(datas)
    store.close()
    cmd = [sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "rebuild", "--disk", "d1", "--yes"]
    proc = subprocess.Popen([*cmd, "--rate-mb-s", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=as_foreground)
    try:
        time.sleep(3)
        assert proc.poll() is None, "the rebuild ended before it was interrupted"
        proc.send_signal(sig)
        t0 = time.monotonic()
        proc.communicate(timeout=60)
        # (the copies under way end at their next piece; going on with every shard left takes
        # 20-30 s here)
        assert time.monotonic() - t0 < 10, "the rebuild went on after it was interrupted"
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    store = Store.open(config.load(cfg_path))
    try:
        if sig == signal.SIGINT:  # (kill -9 may leave one; `hoard verify --orphans --repair` removes it)
            for d in store.disks.values():
                assert not any((d.root / "tmp").glob("*")), f"a temporary file is left on {d.label}"
        d1 = next(u for u, r in store.records.items() if r.label == "d1")
        assert all(d1 not in m.replicas for m in store.index.iter_shards())
        for r, data in zip(results, datas, strict=True):
            assert store.get(r.sha256) == data
        assert check_store(store) == len(datas)
    finally:
        store.close()


@pytest.mark.expect_log(r"disk d\d: rebuild error on shard .*gave back other bytes", level="WARNING")
def test_a_target_that_gives_back_other_bytes_is_blamed_not_the_source(store_factory, monkeypatch) -> None:
    """The copy's read-back finds wrong bytes while the source is whole: the target is at
    fault (a disk that returns other bytes than it took) — it is marked failed, the source
    stays active and is not queued for repair, the rebuild stops naming the target. (The lab
    has no device-mapper to build such a disk: the copy's check is made to see one bad record,
    the seam being `replica.verify_shard`; the source check that decides runs for real.)"""
    # (one open shard: one shard to copy, so the error the rebuild ends with is that copy's)
    store = store_factory(n_disks=3, caps=None, write_ack=2, copy_of_raw=2, open_shards=1)
    datas = [os.urandom(9_000) for _ in range(60)]
    results = store.put_bytes_many(datas)
    lost = store.disks[_sealed(store)[0].replicas[0]]

    def wrong_bytes(read, size, name, sha256=False, shard_hex=None):
        raise fmt.PayloadChecksumMismatch("payload checksum mismatch in record at 32")

    monkeypatch.setattr(replica, "verify_shard", wrong_bytes)
    for f in lost.root.joinpath("shards").rglob("*.shard"):
        f.unlink()
    with pytest.raises(HoardError, match=r"writing its copy onto disk d\d failed .*gave back other bytes"):
        rebuild(store, lost.label)
    states = {r.label: r.state for r in store.records.values()}
    assert list(states.values()).count(DiskState.FAILED) == 2  # the lost disk and the target
    assert not list(store.index.pending_repairs())
    monkeypatch.undo()
    for r, data in zip(results, datas, strict=True):
        assert store.get(r.sha256) == data
