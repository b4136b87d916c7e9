"""A failed disk is read as the last resort: a disk failed for one EIO is read by
nothing else, so an object whose other replica rotted was unreadable — and `hoard rebuild
--disk` of that disk, which copies from the other replicas only, gave up on the whole rebuild
at the first such shard. Each test tries to lose an acknowledged object that the failed disk
still holds whole, and fails on the old code. Real files on directory disks, the real CLI."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.rebuild import rebuild
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, flip_byte, make_files
from tests.test_store import check_store


def _store(tmp_path: Path, disks: int = 3, files: int = 40, shard_size_mb: int = 64):
    cfg = config.load(dir_disks_config(tmp_path, disks, shard_size_mb=shard_size_mb, copy_of_raw=2))
    store = Store.open(cfg, init=True)
    paths = make_files(tmp_path / "in", files, seed=41, lo=2000, hi=20000)
    shas = [r.sha256 for r in store.put_many(paths)]
    return store, paths, shas


def _rot(store: Store, disk_uuid: str, sha_hex: str) -> None:
    """One bit of the object's payload flips in its replica on that disk."""
    loc = store.index.lookup(bytes.fromhex(sha_hex))
    meta = store.index.get_shard(loc.shard_id)
    flip_byte(store.disks[disk_uuid].find(meta.hex), loc.offset + 5)


def _replicas(store: Store, sha_hex: str) -> list[str]:
    return store.index.get_shard(store.index.lookup(bytes.fromhex(sha_hex)).shard_id).replicas


@pytest.mark.expect_log(r"disk d\d: read error on shard \w+: .*checksum", level="WARNING")
@pytest.mark.expect_log(r"read from failed disk d\d, the last good replica of shard \w+", level="WARNING")
def test_an_object_whose_other_replica_rotted_reads_from_the_failed_disk_and_is_copied(tmp_path: Path) -> None:
    store, paths, shas = _store(tmp_path)
    victim = shas[7]
    failed, rotted = _replicas(store, victim)
    label = store.records[failed].label
    store.set_disk_state(label, DiskState.FAILED, "test: an EIO once")
    _rot(store, rotted, victim)
    assert store.get(victim) == paths[7].read_bytes()  # old code: DataError, no good replica
    # the warning's step: replicate mends the rotted replica (queued by the read) from the failed
    # disk, then copies the shard back up to its target on active disks
    got = replicate_once(store, rate_mb_s=None)
    assert got.repaired == 1 and got.copied_shards >= 1
    active = [u for u in _replicas(store, victim) if store.records[u].state == DiskState.ACTIVE]
    assert len(active) == 2
    rebuild(store, label)  # the failed disk's replicas dropped: every object reads from active disks alone
    assert failed not in _replicas(store, victim)
    assert check_store(store) == len(shas)
    assert check(store).counts == {}
    for p, sha in zip(paths, shas, strict=True):
        assert store.get(sha) == p.read_bytes()
    store.close()


def test_batch_reads_of_a_shard_whose_disks_all_failed_come_from_them(tmp_path: Path) -> None:
    """Both disks of a shard failed (each gave one EIO): the batch planner (ingest's export,
    datasets, `hoard get --batch`) reads them as the last resort instead of calling every
    object of the shard "not in the store"; `hoard check` reads its footer there too."""
    store, paths, shas = _store(tmp_path, disks=2)
    for label in ("d0", "d1"):
        store.set_disk_state(label, DiskState.FAILED, "test: an EIO once")
    got: dict[str, bytes] = {}
    store.read_batch(shas, lambda sha, data: got.__setitem__(sha.hex(), bytes(data)))
    assert got == {sha: p.read_bytes() for p, sha in zip(paths, shas, strict=True)}
    found = check(store)  # its footer read from a failed disk: not "no readable replica footer"
    assert found.counts == {} and found.problems == []
    store.close()


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: rebuild error on shard \w+: .*checksum", level="WARNING")
def test_rebuild_copies_from_the_lost_disk_when_the_other_replica_rotted(tmp_path: Path) -> None:
    """`hoard rebuild --disk L` of a disk still attached: a shard whose other replica rotted is
    copied from L itself (the last resort), not given up on."""
    store, paths, shas = _store(tmp_path)
    victim = shas[3]
    lost, rotted = _replicas(store, victim)
    label = store.records[lost].label
    _rot(store, rotted, victim)
    cfg = store.cfg
    store.close()
    got = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "rebuild", "--disk", label,
                          "--yes"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert got.returncode == 0, got.stderr  # old code: ExitCode.DATA, "no replica could be copied"
    with Store.open(cfg) as store:
        assert lost not in _replicas(store, victim)
        assert replicate_once(store, rate_mb_s=None).repaired == 1  # the rotted replica, queued by the rebuild
        assert check_store(store) == len(shas)  # every replica of every object reads whole
        for p, sha in zip(paths, shas, strict=True):
            assert store.get(sha) == p.read_bytes()


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: rebuild error on shard \w+: .*checksum", level="WARNING")
def test_rebuild_goes_on_past_a_shard_it_cannot_copy_and_names_it(tmp_path: Path) -> None:
    """Both replicas of one shard rotted (the lost disk's too): the rebuild copies every other
    shard, names that one with what each replica said, exits with ExitCode.DATA, and keeps the lost
    disk's replica listed — nothing dropped from the index (old code: stopped at the shard)."""
    store, paths, shas = _store(tmp_path, disks=3, files=600, shard_size_mb=1)
    by_shard: dict[bytes, list[str]] = {}
    for sha in shas:
        by_shard.setdefault(store.index.lookup(bytes.fromhex(sha)).shard_id, []).append(sha)
    held = {u: [sid for sid in by_shard if u in store.index.get_shard(sid).replicas] for u in store.records}
    lost = max(held, key=lambda u: len(held[u]))  # (placement is random: the disk holding most)
    label = store.records[lost].label
    on_lost = held[lost]
    assert len(on_lost) >= 2, "the test needs several shards on the lost disk"
    # the shard created first is the first the rebuild copies (shards_on sorts by creation)
    first = min(on_lost, key=lambda sid: store.index.get_shard(sid).created)
    victim = by_shard[first][0]
    for uuid in _replicas(store, victim):
        _rot(store, uuid, victim)
    cfg = store.cfg
    store.close()
    got = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "rebuild", "--disk", label,
                          "--yes"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert got.returncode == ExitCode.DATA, got.stderr
    said = " ".join(got.stderr.split())
    assert f"not copied: shard {first.hex()}: no replica could be copied" in said
    assert "its replica on the lost disk stays listed" in said
    assert f"{len(on_lost) - 1} copied" in got.stdout
    with Store.open(cfg, writable=False) as store:
        assert lost in store.index.get_shard(first).replicas
        for sid in on_lost:
            if sid != first:
                assert lost not in store.index.get_shard(sid).replicas
        for sha in shas:
            if sha != victim:
                assert hashlib.sha256(store.get(sha)).hexdigest() == sha


def _hoard(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: (read|rebuild) error on shard \w+: .*checksum", level="WARNING")
def test_replacing_a_disk_by_one_that_holds_its_shards_keeps_two_copies(tmp_path: Path) -> None:
    """`hoard disks replace d1 d2`, d2 already holding the shards d1 shared with it,
    counted d2's copy as the rebuilt one and dropped d1's: one copy left, and none when d2's had
    rotted (exit 0). Now the shard gets its second copy on another disk (from d1 if need be)."""
    store, paths, shas = _store(tmp_path, disks=4)
    victim = shas[3]
    lost, other = _replicas(store, victim)
    lost_label, other_label = store.records[lost].label, store.records[other].label
    store.set_disk_state(lost_label, DiskState.FAILED, "test: an EIO once")
    _rot(store, other, victim)
    cfg = store.cfg
    store.close()
    got = _hoard(cfg, "disks", "replace", lost_label, other_label, "--yes")
    assert got.returncode == 0, got.stderr
    with Store.open(cfg) as store:
        assert lost not in _replicas(store, victim) and len(_replicas(store, victim)) == 2
        assert store.get(victim) == paths[3].read_bytes()  # old code: DataError, d1's good copy dropped
        assert replicate_once(store, rate_mb_s=None).repaired == 1  # the rotted one, queued by the rebuild
        assert check_store(store) == len(shas) and check(store).counts == {}


@pytest.mark.services  # starts hoard processes
def test_a_disk_is_not_rebuilt_onto_itself(tmp_path: Path) -> None:
    """`hoard rebuild --disk d0 --onto d0` marked d0 failed, then counted its copies
    as rebuilt and dropped them all from the index (exit 0). Now refused, nothing changed."""
    store, paths, shas = _store(tmp_path)
    label = store.records[_replicas(store, shas[0])[0]].label
    cfg = store.cfg
    store.close()
    got = _hoard(cfg, "rebuild", "--disk", label, "--onto", label, "--yes")
    assert got.returncode == ExitCode.USAGE and f"disk {label} cannot be rebuilt onto itself" in got.stderr
    with Store.open(cfg) as store:
        assert {r.state for r in store.records.values()} == {DiskState.ACTIVE}
        assert all(len(_replicas(store, sha)) == 2 for sha in shas)


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: (read|rebuild) error on shard \w+: .*checksum", level="WARNING")
@pytest.mark.expect_log(r"read from failed disk d\d, the last good replica of shard \w+", level="WARNING")
@pytest.mark.parametrize("how", ["forget", "rebuild of a rotted one"])
def test_a_failed_disk_is_not_dropped_while_the_copies_counted_instead_are_known_bad(tmp_path: Path,
                                                                                   how: str) -> None:
    """A failed disk d1 holds the last good replica; the shard's two active replicas
    were read bad (queued for repair). `hoard disks forget d1` (and `hoard rebuild --disk` of one
    of the bad ones) counted those as copies and dropped d1's: the object was lost. Now a
    replica queued for repair is not counted: forget is refused, the rebuild copies from d1."""
    store, paths, shas = _store(tmp_path, disks=4)
    victim = shas[3]
    failed = _replicas(store, victim)[0]
    label = store.records[failed].label
    store.set_disk_state(label, DiskState.FAILED, "test: an EIO once")
    from hoardfs.fsd.io.replicate import _copy_one

    meta = store.index.get_shard(store.index.lookup(bytes.fromhex(victim)).shard_id)
    assert _copy_one(store, meta, None)  # `hoard replicate` made a copy while d1 was failed
    actives = [u for u in _replicas(store, victim) if u != failed]
    assert len(actives) == 2
    for u in actives:
        _rot(store, u, victim)
    assert store.get(victim) == paths[3].read_bytes()  # from d1, the two bad ones queued for repair
    assert {uuid for _, uuid, _ in store.index.pending_repairs()} == set(actives)
    cfg = store.cfg
    store.close()
    if how == "forget":
        got = _hoard(cfg, "disks", "forget", label)
        assert got.returncode == ExitCode.DATA and "shards still need its replica" in got.stderr
    else:
        got = _hoard(cfg, "rebuild", "--disk", store.records[actives[0]].label, "--yes")
        assert got.returncode == 0, got.stderr
    with Store.open(cfg) as store:
        assert store.get(victim) == paths[3].read_bytes()  # old code: DataError, d1's replica dropped


@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+: .*checksum", level="WARNING")
def test_verify_repair_mends_a_rotted_replica_from_the_failed_disk(tmp_path: Path) -> None:
    """`hoard verify --repair` looked for a good copy among the usable replicas only,
    so a shard whose one active replica rotted stayed bad (exit 5, no step) while the failed
    disk held it whole; now it is repaired from there, as the docs say."""
    from hoardfs.fsd.io.scrub import verify

    store, paths, shas = _store(tmp_path)
    victim = shas[5]
    failed, rotted = _replicas(store, victim)
    store.set_disk_state(store.records[failed].label, DiskState.FAILED, "test: an EIO once")
    _rot(store, rotted, victim)
    rep = verify(store, repair=True)
    assert rep.repaired == [f"shard {store.index.get_shard(store.index.lookup(bytes.fromhex(victim)).shard_id).hex} "
                            f"on {store.records[rotted].label}"] and not rep.unrepaired
    assert verify(store).bad == [] and check_store(store) == len(shas)
    store.close()


@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+: .*checksum", level="WARNING")
def test_verify_repair_assembles_a_shard_whose_replicas_rotted_at_different_records(tmp_path: Path) -> None:
    """Two replicas, each rotted at another record: every object still read (from the
    one that holds it whole), yet no command could mend the shard — copies were whole-shard
    only. `hoard verify --repair` now assembles a copy record by record onto one bad replica's
    disk, then repairs the other from it."""
    from hoardfs.fsd.io.scrub import verify

    store, paths, shas = _store(tmp_path)
    a, b = _replicas(store, shas[2])
    _rot(store, a, shas[2])
    _rot(store, b, shas[9])
    assert len(verify(store).bad) == 2
    rep = verify(store, repair=True)
    assert len(rep.repaired) == 2 and not rep.unrepaired, rep
    assert any("assembled record by record" in r for r in rep.repaired)
    assert verify(store, sha256=True).bad == [] and check_store(store) == len(shas)
    assert any(e["kind"] == "assembled" for e in store.index.recent_events(20))
    for p, sha in zip(paths, shas, strict=True):
        assert store.get(sha) == p.read_bytes()
    store.close()


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: rebuild error on shard \w+: .*checksum", level="WARNING")
@pytest.mark.expect_log(r"no replica is whole; a copy assembled record by record", level="WARNING")
def test_rebuild_assembles_a_copy_when_the_lost_and_the_other_replica_rotted_at_different_records(
        tmp_path: Path) -> None:
    store, paths, shas = _store(tmp_path)
    lost, other = _replicas(store, shas[2])
    label = store.records[lost].label
    _rot(store, lost, shas[2])
    _rot(store, other, shas[9])
    cfg = store.cfg
    store.close()
    got = _hoard(cfg, "rebuild", "--disk", label, "--yes")
    assert got.returncode == 0, got.stderr  # old code: exit 5, not copied
    with Store.open(cfg) as store:
        assert lost not in _replicas(store, shas[2])
        assert replicate_once(store, rate_mb_s=None).repaired == 1  # the other, queued by the rebuild
        assert check_store(store) == len(shas)
        for p, sha in zip(paths, shas, strict=True):
            assert store.get(sha) == p.read_bytes()


@pytest.mark.expect_log(r"disk d\d: (verify|read) error on shard \w+", level="WARNING")
@pytest.mark.expect_log(r"no copy could be assembled from its replicas", level="WARNING")
def test_another_shards_file_under_a_shards_name_is_never_assembled_from(tmp_path: Path) -> None:
    """Two shards of the same size and count (same-size objects); one
    replica of A is B's file (a cross-link), A's other replica has one rotted record. The
    assembly took B's footer and records (they check against B's names) and `verify --repair`
    overwrote A's last good copy with them: every object of A lost, verify and check clean.
    Now a replica whose header names another shard, or whose footer disagrees with the index,
    gives nothing: nothing is overwritten, and every object that read still reads."""
    import shutil

    from hoardfs.fsd.io.scrub import verify

    # (one open shard: the test counts one shard's records)
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2, open_shards=1))
    store = Store.open(cfg, init=True)
    paths = make_files(tmp_path / "in", 50, seed=42, lo=50000, hi=50000)
    shas = [r.sha256 for r in store.put_many(paths)]
    by_shard: dict[bytes, list[int]] = {}
    for i, sha in enumerate(shas):
        by_shard.setdefault(store.index.lookup(bytes.fromhex(sha)).shard_id, []).append(i)
    a, b = (store.index.get_shard(sid) for sid in list(by_shard)[:2])
    assert (a.size, a.records) == (b.size, b.records)
    shutil.copyfile(store.disks[b.replicas[0]].find(b.hex), store.disks[a.replicas[0]].find(a.hex))
    in_a = by_shard[a.shard_id]
    _rot(store, a.replicas[1], shas[in_a[3]])
    readable = [i for i in in_a if i != in_a[3]]
    verify(store, repair=True)
    for i in readable:
        assert store.get(shas[i]) == paths[i].read_bytes()  # old code: DataError, A's good copy overwritten
    store.close()


@pytest.mark.expect_log(r"disk d\d: read error on shard \w+: .*checksum", level="WARNING")
@pytest.mark.expect_log(r"repair of shard \w+ on d\d from d\d failed: payload checksum mismatch", level="WARNING")
def test_the_repair_queue_assembles_what_no_whole_copy_mends(tmp_path: Path) -> None:
    """Reads queued both rotted replicas for repair and `hoard health` said
    `hoard replicate` — which copied whole replicas only, so it never converged. Now the
    repair queue assembles a copy record by record when no whole one exists."""
    store, paths, shas = _store(tmp_path)
    a, b = _replicas(store, shas[2])
    _rot(store, a, shas[2])
    _rot(store, b, shas[9])
    for i in (2, 9):
        assert store.get(shas[i]) == paths[i].read_bytes()  # each from the replica that holds it whole
    queued = {u for _, u, _ in store.index.pending_repairs()}  # (the replica read first for each)
    assert queued and queued <= {a, b}
    got = replicate_once(store, rate_mb_s=None)
    assert got.repaired == len(queued) and not list(store.index.pending_repairs())  # old code: 0, forever
    fixed = next(iter(queued))  # it now reads every object whole:
    for sha in shas:
        loc = store.index.lookup(bytes.fromhex(sha))
        meta = store.index.get_shard(loc.shard_id)
        if fixed in meta.replicas:
            store._read_record(store.disks[fixed], meta.hex, loc.offset, loc.length, bytes.fromhex(sha))
    store.close()


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+", level="WARNING")
@pytest.mark.expect_log(r"no copy could be assembled from its replicas: no replica holds the record at", level="WARNING")
def test_what_verify_repair_cannot_mend_is_said_with_what_still_reads(tmp_path: Path) -> None:
    """The same record rotted in both replicas: no whole copy, none assembled. `hoard verify
    --repair` exits 5 with a line that says so and where to read on (it printed no step), and
    every other object of the shard still reads."""
    store, paths, shas = _store(tmp_path)
    for u in _replicas(store, shas[4]):
        _rot(store, u, shas[4])
    cfg = store.cfg
    store.close()
    got = _hoard(cfg, "verify", "--repair")
    said = " ".join(got.stderr.split())
    assert got.returncode == ExitCode.DATA, got.stderr
    assert "2 bad replicas could not be repaired: no replica holds every record of their shard whole" in said
    assert 'docs/operations.md "A shard no replica holds whole"' in said
    assert "## A shard no replica holds whole" in (REPO / "docs" / "operations.md").read_text()
    with Store.open(cfg, writable=False) as store:
        for i, (p, sha) in enumerate(zip(paths, shas, strict=True)):
            if i != 4:
                assert store.get(sha) == p.read_bytes()


@pytest.mark.services  # starts hoard processes
@pytest.mark.expect_log(r"disk d\d: (verify|read|rebuild|replicate) error on shard \w+: not a regular file", level="WARNING")
def test_a_fifo_in_a_shard_files_place_hangs_nothing_and_is_repaired(tmp_path: Path) -> None:
    """A FIFO where a replica's file should be hung `hoard rebuild` (the open waited
    for a writer). Now every open of a shard file refuses what is not a regular file: reads
    come from the other replica, `hoard verify` names it, `--repair` puts the file back."""
    import os

    store, paths, shas = _store(tmp_path)
    fifo_disk, _other = _replicas(store, shas[0])
    path = store.disks[fifo_disk].find(store.index.get_shard(store.index.lookup(bytes.fromhex(shas[0])).shard_id).hex)
    label = store.records[fifo_disk].label
    path.unlink()
    os.mkfifo(path)
    for p, sha in zip(paths, shas, strict=True):
        assert store.get(sha) == p.read_bytes()
    cfg = store.cfg
    store.close()
    found = _hoard(cfg, "verify")  # (_hoard's timeout: a hang fails the test)
    assert found.returncode == ExitCode.DATA and f"on {label}: not a regular file" in found.stderr, found.stderr
    mended = _hoard(cfg, "verify", "--repair")
    assert mended.returncode == 0, mended.stderr
    assert path.is_file() and not path.is_symlink()
    with Store.open(cfg, writable=False) as store:
        assert check_store(store) == len(shas)


@pytest.mark.expect_log(r"disk d\d: read error on shard \w+: (Input/output error|payload checksum mismatch)",
                        level="WARNING")
def test_a_disk_failed_by_this_very_read_is_not_read_again_as_its_last_resort(tmp_path: Path) -> None:
    """One replica answers EIO (its disk is failed during the read), the other is rotted: the
    dying disk must not then come back as a last resort within the same read (a second slow
    EIO), as `Store.sources` already leaves out the disks it yielded."""
    import errno as errno_

    from hoardfs.fsd.core.records import DataError

    store, paths, shas = _store(tmp_path)
    sha = bytes.fromhex(shas[6])
    dying, rotted = _replicas(store, shas[6])
    _rot(store, rotted, shas[6])
    calls: list[str] = []

    def read(disk, meta, loc) -> bytes:
        calls.append(disk.uuid)
        if disk.uuid == dying:
            raise OSError(errno_.EIO, "Input/output error")
        return store._read_record(disk, meta.hex, loc.offset, loc.length, sha)

    with pytest.raises(DataError):
        store.from_replicas(sha, read, first=dying)
    assert store.records[dying].state == DiskState.FAILED
    assert calls == [dying, rotted]  # old code: [dying, rotted, dying]
    store.close()


def _every_replica_reads_every_object(store: Store, paths: list[Path], shas: list[str]) -> None:
    """Each object read back byte for byte from each of its replicas, one by one."""
    for p, sha in zip(paths, shas, strict=True):
        loc = store.index.lookup(bytes.fromhex(sha))
        meta = store.index.get_shard(loc.shard_id)
        for u in meta.replicas:
            got = store._read_record(store.disks[u], meta.hex, loc.offset, loc.length, bytes.fromhex(sha))
            assert got == p.read_bytes(), (sha, store.records[u].label)


@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+", level="WARNING")
def test_a_replica_whose_header_rotted_gives_its_records_to_the_assembly(tmp_path: Path) -> None:
    """One replica rotted only in its 32-byte shard header (it names another shard now), the
    other at one record: every object reads, yet `hoard verify --repair` said "no replica holds
    every record whole" — the header-rotted replica was left out as another shard's file though
    its records are whole. Its records now go into the copy (each checked against the footer
    of the replica whose header names the shard, which gives the header too): both replicas
    are mended and every object reads back from each."""
    from hoardfs.fsd.io.scrub import verify

    store, paths, shas = _store(tmp_path)
    header_rot, record_rot = _replicas(store, shas[3])
    meta = store.index.get_shard(store.index.lookup(bytes.fromhex(shas[3])).shard_id)
    flip_byte(store.disks[header_rot].find(meta.hex), 18)  # inside the header's shard id
    _rot(store, record_rot, shas[3])
    for p, sha in zip(paths, shas, strict=True):
        assert store.get(sha) == p.read_bytes()  # every object reads: the header is not read by a read
    rep = verify(store, repair=True)
    assert len(rep.bad) == 2 and not rep.unrepaired, rep  # old code: 2 unrepaired
    assert verify(store, sha256=True).bad == [] and check(store).counts == {}
    _every_replica_reads_every_object(store, paths, shas)
    store.close()


@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+", level="WARNING")
def test_a_replica_cut_short_gives_the_records_before_its_cut(tmp_path: Path) -> None:
    """One replica cut short after the record the other one rotted at: the only whole copy of
    that record is in the short file, which assembly left out (not of the shard's size). It now
    gives the records before its cut, and both replicas are mended."""
    import os

    from hoardfs.fsd.io.scrub import verify

    store, paths, shas = _store(tmp_path)
    short, rotted = _replicas(store, shas[2])
    loc = store.index.lookup(bytes.fromhex(shas[2]))
    meta = store.index.get_shard(loc.shard_id)
    os.truncate(store.disks[short].find(meta.hex), loc.offset + loc.length + 100)  # (into the next record)
    _rot(store, rotted, shas[2])
    rep = verify(store, repair=True)
    assert len(rep.bad) == 2 and not rep.unrepaired, rep  # old code: 2 unrepaired
    assert verify(store, sha256=True).bad == [] and check(store).counts == {}
    _every_replica_reads_every_object(store, paths, shas)
    store.close()


@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+", level="WARNING")
def test_a_record_larger_than_a_piece_is_assembled_in_pieces(tmp_path: Path) -> None:
    """Assembly reads and writes a record in pieces of STREAM_PIECE, checked as a whole: a
    20 MiB object rotted in one replica at its third piece, the other replica rotted at a small
    record — the copy takes the large one whole from the second and the small one from the
    first, and both replicas are mended."""
    from hoardfs.fsd.io.scrub import verify

    # (one open shard: the small files and the big one share a shard, as the test needs)
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=64, copy_of_raw=2, open_shards=1))
    store = Store.open(cfg, init=True)
    paths = make_files(tmp_path / "in", 6, seed=43, lo=2000, hi=20000)
    big = tmp_path / "in" / "big.bin"
    big.write_bytes(hashlib.sha256(b"big").digest() * (20 * 1024 * 1024 // 32))
    paths.append(big)
    shas = [r.sha256 for r in store.put_many(paths)]
    a, b = _replicas(store, shas[-1])
    assert _replicas(store, shas[1]) == [a, b]  # (one shard)
    loc = store.index.lookup(bytes.fromhex(shas[-1]))
    flip_byte(store.disks[a].find(store.index.get_shard(loc.shard_id).hex), loc.offset + (17 << 20))
    _rot(store, b, shas[1])
    rep = verify(store, repair=True)
    assert len(rep.bad) == 2 and not rep.unrepaired, rep
    assert verify(store, sha256=True).bad == []
    _every_replica_reads_every_object(store, paths, shas)
    store.close()
