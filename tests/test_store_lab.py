"""The store on lab disks (real ext4 mounts on loop devices): full disks, EIO, unreadable sources."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.placement import choose
from hoardfs.fsd.io.put import _Batch
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.store import Store
from tests.helpers import REPO, make_files, write_config
from tests.lab import DiskProfile, drop_caches
from tests.test_recovery import DIE_BEFORE_SEAL, _run_child
from tests.test_store import check_store

pytestmark = pytest.mark.lab


def _lab_store(lab, tmp_path: Path, labels: list[str], **opts) -> Store:
    disks = [(label, lab.disks[label].mountpoint, None) for label in labels]
    cfg = config.load(write_config(tmp_path, disks, allow_dirs=False, **opts))
    return Store.open(cfg, init=True)


def _batch_with_fault(lab_factory, tmp_path: Path, prefix: str, fault: str, group_bytes: int | None = None):
    """600 files stored in one batch on three fast lab disks; after 300, `fault` ("vanish" or
    "fail_writes") hits the first disk of the shard being written. With `group_bytes`, groups
    that small: the fault hits once a group's fdatasync is queued and the next group is being
    appended (hoardfs.fsd.io.put overlaps them). Returns the results and the files reported stored
    (on_result) before the batch ended."""
    lab = lab_factory([DiskProfile(f"{prefix}{i}", 400, 500, 500, 5000) for i in (1, 2, 3)])
    store = _lab_store(lab, tmp_path, [f"{prefix}{i}" for i in (1, 2, 3)], shard_size_mb=4)
    if group_bytes:
        store.group_bytes = group_bytes
    files = make_files(tmp_path / "in", 600, lo=8000, hi=30000)
    reported: list = []
    batch = _Batch(store, store.writer("raw"), reported.append)
    todo = iter(files)
    for _ in files[:300]:
        batch.add_file(next(todo))
    while group_bytes and batch.writer.shard.syncing is None:
        batch.add_file(next(todo))
    victim_uuid = batch.writer.shard.meta.replicas[0]
    getattr(lab, fault)(store.disks[victim_uuid].label)
    for p in todo:
        batch.add_file(p)
    results = batch.finish()
    assert sorted(r.path for r in reported) == sorted(map(str, files)), "a file was reported twice or never"
    return lab, store, files, results, victim_uuid


@pytest.mark.expect_log(r"disk tiny: write error", level="WARNING")
def test_disk_full_mid_shard_rolls_to_other_disks(lab_factory, tmp_path: Path) -> None:
    """A replica disk filling up mid-shard: the group moves to a new shard on other disks,
    nothing is half-indexed, every object reads back."""
    lab = lab_factory([DiskProfile("tiny", 64, 500, 500, 5000), DiskProfile("big1", 600, 500, 500, 5000),
                       DiskProfile("big2", 600, 500, 500, 5000)])
    store = _lab_store(lab, tmp_path, ["tiny", "big1", "big2"], shard_size_mb=16)
    tiny = next(u for u, d in store.disks.items() if d.label == "tiny")
    seed = next(s for s in range(1000)
                if tiny in {c.uuid for c in choose(store.candidates(), 2, 16 << 20, random.Random(s))})
    store.rng = random.Random(seed)
    files = make_files(tmp_path / "in", 1200, lo=20_000, hi=60_000)
    batch = _Batch(store, store.writer("raw"))
    batch.add_file(files[0])
    assert tiny in batch.writer.shard.meta.replicas
    with open(lab.disks["tiny"].mountpoint / "filler", "wb") as f:  # someone else fills the disk
        try:
            while True:
                f.write(os.urandom(1 << 20))
        except OSError:
            pass
    for p in files[1:]:
        batch.add_file(p)
    results = batch.finish()
    assert [r.status for r in results] == ["new"] * len(files)
    assert check_store(store) == len(files)
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    events = [e for e in store.index.recent_events(50) if e["kind"] == "write_error"]
    assert events and events[0]["disk"] == "tiny" and events[0]["errno"] == 28  # ENOSPC
    store.close()


@pytest.mark.expect_log(r"disk lab\d: read error", level="WARNING")
def test_eio_on_one_disk_reads_come_from_the_others(lab, tmp_path: Path) -> None:
    """A disk that starts answering EIO: get and batch reads return correct bytes from other
    replicas, and the disk is failed at once. (Where the cut image hits ext4's metadata first,
    the kernel answers EBADMSG instead — its records fail their checksums — and that alone is
    not a dying disk: stop 55's CI saw only EBADMSG once. Then the disk stays in service.)"""
    store = _lab_store(lab, tmp_path, ["lab1", "lab2", "lab3"], shard_size_mb=4, copy_of_raw=2)
    files = make_files(tmp_path / "in", 400, lo=4000, hi=40000)
    results = store.put_many(files)
    # the disk that is the first choice for the most shards, so reads really hit it
    victim_uuid = max(store.disks, key=lambda u: sum(m.replicas[0] == u for m in store.index.iter_shards()))
    victim = store.disks[victim_uuid].label
    lab.fail_eio(victim)  # while the store is open and in use
    for r in results:
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    errors = [e for e in store.index.recent_events(500) if e["kind"] == "read_error"]
    assert errors and {e["disk"] for e in errors} == {victim}
    seen = {e["errno"] for e in errors}
    assert seen <= {errno.EIO, errno.EBADMSG}
    failed = errno.EIO in seen  # EIO: out of service at once
    assert store.records[victim_uuid].state.value == ("failed" if failed else "active")
    assert any(e["kind"] == "disk_failed" and e["disk"] == victim for e in store.index.recent_events(500)) == failed
    got = {}
    drop_caches()
    plan, stats = store.read_batch([r.sha256 for r in results], lambda s, b: got.__setitem__(s, bytes(b)))
    assert len(got) == len(files) and all(hashlib.sha256(v).digest() == k for k, v in got.items())
    store.close()
    with Store.open(store.cfg) as again:  # reopened, a failed disk is not used at all
        rec = again.records[victim_uuid]
        if failed:
            assert rec.state.value == "failed" and "Input/output error" in rec.reason
        assert all(hashlib.sha256(again.get(r.sha256)).hexdigest() == r.sha256 for r in results[:20])


@pytest.mark.expect_log(r"disk lab\d: read error on shard \w+: Bad message", level="WARNING")
def test_a_rotted_inode_is_read_around_named_by_check_and_mended_by_fsck(lab, tmp_path: Path) -> None:
    """One bit flips in a shard file's inode on one disk: ext4 answers EBADMSG (its checksum
    fails). The objects come from the other replica; the disk stays in service — one file's
    damage is not a dying disk, and a failed disk is read by nothing, not even for an object
    whose other replica rotted too. `hoard check` names the replica with the step
    that mends it, and that step works: `e2fsck -f`, then check is clean and the replica reads."""
    store = _lab_store(lab, tmp_path, ["lab1", "lab2", "lab3"], shard_size_mb=4, copy_of_raw=2)
    files = make_files(tmp_path / "in", 60, lo=4000, hi=40000)
    results = store.put_many(files)
    meta = next(iter(store.index.iter_shards()))
    victim_uuid = meta.replicas[0]  # the first replica read (no reads queued yet)
    victim = store.disks[victim_uuid]
    shard_file = victim.find(meta.hex)
    store.close()
    lab.rot_inode(victim.label, shard_file)
    store = Store.open(store.cfg)
    found = check(store)  # before anything read it
    assert found.counts == {"unreadable replica": 1}
    assert found.problems == [
        f"shard {meta.hex}: its replica on {victim.label} does not read (Bad message): its filesystem finds its own "
        f"records corrupt — unmount {victim.label}, run `e2fsck -f` on its device, mount it again, then `hoard verify`"]
    in_shard = [(p, r) for p, r in zip(files, results, strict=True)
                if store.index.lookup(bytes.fromhex(r.sha256)).shard_id == meta.shard_id]
    assert in_shard
    for p, r in in_shard:
        assert store.get(r.sha256) == p.read_bytes()
    assert store.records[victim_uuid].state.value == "active"
    errors = [e for e in store.index.recent_events(50) if e["kind"] == "read_error"]
    assert errors and {(e["disk"], e["errno"]) for e in errors} == {(victim.label, errno.EBADMSG)}
    store.close()
    device = lab.disks[victim.label].device  # the next step, as an operator takes it
    subprocess.run(["umount", str(lab.disks[victim.label].mountpoint)], check=True)
    assert subprocess.run(["e2fsck", "-fy", device], capture_output=True).returncode in (0, 1)  # 1: corrected
    lab.reappear(victim.label)
    with Store.open(store.cfg) as again:
        assert check(again).counts == {}
        for p, r in in_shard:
            assert again._read_record(again.disks[victim_uuid], meta.hex, *_where(again, r.sha256)) == p.read_bytes()


@pytest.mark.expect_log(r"disk lab\d: recovery error on shard \w+: Bad message", level="WARNING")
def test_a_rotted_inode_on_an_open_shard_does_not_stop_the_store_opening(lab, tmp_path: Path, caplog) -> None:
    """The writer dies before sealing; one bit flips in the inode of one replica's open file
    (EBADMSG on its stat). A writable open runs recovery: it must not raise (before, the
    stat sat outside recovery's error handling, so no writer could open the store) — the good
    replica is sealed, every committed object reads, the disk stays in service, and `hoard
    check` notes the one replica short, and `hoard replicate` (its step) brings it back; the log
    line names the shard, the disk and `e2fsck -f`."""
    store = _lab_store(lab, tmp_path, ["lab1", "lab2"], shard_size_mb=64, copy_of_raw=2)
    cfg = store.cfg
    store.close()
    files = make_files(tmp_path / "in", 80, lo=2000, hi=20000)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    child = _run_child(DIE_BEFORE_SEAL, str(cfg.source), str(listing))
    assert child.returncode == 9, child.stderr
    with Store.open(cfg, writable=False) as ro:
        [meta] = [m for m in ro.index.iter_shards() if not m.sealed]
        victim_uuid = meta.replicas[1]
        victim = ro.disks[victim_uuid]
        open_file = victim.find(meta.hex)
    assert open_file.name.endswith(".open")
    lab.rot_inode(victim.label, open_file)
    with Store.open(cfg) as store:  # a writer: recovery runs, and must not raise
        fresh = store.index.get_shard(meta.shard_id)
        assert fresh.sealed and fresh.replicas == [meta.replicas[0]]
        for f in files:
            data = f.read_bytes()
            assert store.get(hashlib.sha256(data).hexdigest()) == data
        assert store.records[victim_uuid].state.value == "active"
        errors = [e for e in store.index.recent_events(50) if e["kind"] == "recovery_error"]
        assert {(e["disk"], e["errno"]) for e in errors} == {(victim.label, errno.EBADMSG)}
        found = check(store)  # (the good replica is all the index names: one below the target)
        assert found.problems == [] and found.notes == ["1 shards are below their replica target; `hoard replicate`"]
        assert replicate_once(store, rate_mb_s=None).copied_shards == 1  # the note's step works
        assert len(store.index.get_shard(meta.shard_id).replicas) == 2
        assert check(store).counts == {} and check_store(store) == len(files)
    assert f"recovery error on shard {meta.hex}: Bad message; its filesystem finds its own records corrupt — " \
           f"unmount {victim.label}, run `e2fsck -f`" in caplog.text


@pytest.mark.expect_log(r"disk lab\d: activate error on shard \w+: Bad message; its filesystem", level="WARNING")
def test_activate_names_a_rotted_shard_file_and_puts_the_disk_back(lab, tmp_path: Path) -> None:
    """A failed disk was rebuilt away (its files stay on it); one of them has a rotted inode.
    `hoard disks activate` lists the others again and names that one with e2fsck as its step —
    no traceback (before, the stat's EBADMSG escaped), the disk active, every object read.
    (The disk is the one holding most shards: placement follows the disks' room, and a run
    once put none on lab1.)"""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.maintenance.rebuild import rebuild

    store = _lab_store(lab, tmp_path, ["lab1", "lab2", "lab3"], shard_size_mb=1, copy_of_raw=2)
    files = make_files(tmp_path / "in", 120, lo=8000, hi=30000)
    store.put_many(files)
    held = Counter(store.disks[u].label for m in store.index.iter_shards() for u in m.replicas)
    name = max(sorted(held), key=held.__getitem__)
    on_disk = [m for m in store.index.iter_shards() if any(store.disks[u].label == name for u in m.replicas)]
    assert len(on_disk) >= 2
    victim = next(d for d in store.disks.values() if d.label == name)
    store.set_disk_state(name, DiskState.FAILED, "test: pulled out")
    rebuild(store, name)
    assert not [m for m in store.index.iter_shards() if victim.uuid in m.replicas]
    rotted = on_disk[0]
    store.close()
    lab.rot_inode(name, victim.find(rotted.hex))
    got = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(store.cfg.source), "disks", "activate", name],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert got.returncode == 0, got.stderr
    assert f"{len(on_disk) - 1} shard files listed again" in got.stdout
    assert (f"unreadable shard {rotted.hex}: its file on {name} does not read (Bad message): its filesystem finds its "
            f"own records corrupt — unmount {name}, run `e2fsck -f` on its device") in " ".join(got.stderr.split())
    with Store.open(store.cfg) as again:
        assert again.records[victim.uuid].state == DiskState.ACTIVE
        assert len([m for m in again.index.iter_shards() if victim.uuid in m.replicas]) == len(on_disk) - 1
        assert check(again).counts == {} and check_store(again) == len(files)


def _where(store: Store, sha256_hex: str) -> tuple[int, int, bytes]:
    loc = store.index.lookup(bytes.fromhex(sha256_hex))
    return loc.offset, loc.length, bytes.fromhex(sha256_hex)


def test_unreadable_source_is_rejected_with_the_reason(lab, tmp_path: Path) -> None:
    """A source file on a dying disk (EIO) is rejected by name; the other files are stored."""
    store = _lab_store(lab, tmp_path, ["lab1", "lab2"], shard_size_mb=4)
    src = lab.disks["lab4"].mountpoint / "scraped"
    bad = make_files(src, 1, lo=3 << 20, hi=3 << 20)[0]
    good = make_files(tmp_path / "good", 3)
    os.sync()
    lab.fail_eio("lab4")
    results = store.put_many([good[0], bad, *good[1:]])
    assert [r.status for r in results] == ["new", "rejected", "new", "new"]
    assert results[1].path == str(bad)
    assert results[1].reason in ("cannot read it: Input/output error", "cannot read it: Bad message")
    store.close()


@pytest.mark.expect_log(r"disk (v1|v2|v3): write error", level="WARNING")
@pytest.mark.parametrize("group_bytes", [None, 256 << 10], ids=["groups", "overlapped-groups"])
def test_disk_vanishing_mid_batch(lab_factory, tmp_path: Path, group_bytes: int | None) -> None:
    """A disk lazily unmounted during a batch write (also while one group is fsynced and the
    next appended): nothing lands under the empty mount point, the batch completes on the
    other disks, every object reads back, and the replicator restores the copies the
    vanished disk held."""
    from hoardfs.fsd.io.replicate import replicate_once, replication_lag

    lab, store, files, results, victim_uuid = _batch_with_fault(lab_factory, tmp_path, "v", "vanish", group_bytes)
    victim = store.disks[victim_uuid].label
    assert [r.status for r in results] == ["new"] * len(files)
    assert list(lab.disks[victim].mountpoint.iterdir()) == [], "something was written under the empty mount point"
    assert store.records[victim_uuid].state.value == "missing"
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    # a copy on the vanished disk, or none there at all: a shard with groups committed before the
    # disk vanished is sealed on the replicas that remain (the overlapped case), one with none is dropped
    lost_a_copy = sum(victim_uuid in m.replicas or len(m.replicas) < 2 for m in store.index.iter_shards())
    assert replication_lag(store)["shards_below_target"] == lost_a_copy  # copies on the vanished disk do not count
    replicate_once(store, rate_mb_s=None)
    assert replication_lag(store)["shards_below_target"] == 0
    for meta in store.index.iter_shards():
        assert meta.sealed and len([u for u in meta.replicas if store.usable(u)]) >= 2
    assert check_store(store) == len(files)
    store.close()


@pytest.mark.expect_log(r"disk w\d: write error", level="WARNING")
@pytest.mark.parametrize("group_bytes", [None, 256 << 10], ids=["groups", "overlapped-groups"])
def test_write_eio_mid_batch(lab_factory, tmp_path: Path, group_bytes: int | None) -> None:
    """A disk whose writes start failing (EIO) in the middle of a batch (also while one group is
    fsynced and the next appended): the batch completes on the other disks, every object
    reads back, the disk is taken out of writing and named."""
    _lab, store, files, results, victim_uuid = _batch_with_fault(lab_factory, tmp_path, "w", "fail_writes",
                                                                 group_bytes)
    assert [r.status for r in results] == ["new"] * len(files)
    assert store.records[victim_uuid].state.value in ("failed", "draining")
    victim = store.disks[victim_uuid].label
    assert f"--disk {victim}" in store.records[victim_uuid].reason or f"replace {victim}" in \
        store.records[victim_uuid].reason
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    assert check_store(store) == len(files)
    store.close()
