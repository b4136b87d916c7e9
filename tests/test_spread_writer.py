"""Several open shards at once (hoardfs.fsd.io.spread) try to lose acknowledged objects and fail:
every disk writes during one batch, a kill -9 or a power cut with several shards open leaves
every acknowledged object readable after recovery, and a replica failing in one of the open
shards has its group written again elsewhere while the others go on. Real files: directory
disks, and lab disks (ext4 on loop devices) for the failing replica and the power cuts."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hoardfs.base import config
from hoardfs.base.errors import ConfigError
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.core.placement import Candidate, NoSpace, choose
from hoardfs.fsd.io.put import _Batch
from hoardfs.fsd.io.replicate import replicate_once, replication_lag
from hoardfs.fsd.io.spread import auto_open_shards
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, make_files, write_config
from tests.lab import DiskProfile
from tests.test_powercut import POWER_LAB, _config, _failures, _owed, _reboot_and_check, _summary
from tests.test_store import check_store


def _disks_with_open_shards(store: Store) -> set[str]:
    return {d.label for d in store.disks.values() if any((d.root / "shards").rglob("*.open"))}


def _spread_batch(store: Store, files: list[Path]) -> tuple[list, int]:
    """Store `files` in one batch of small groups; the most disks seen holding an open shard at once."""
    store.group_bytes = 128 << 10
    batch = _Batch(store, store.writer("raw"))
    most = 0
    for p in files:
        batch.add_file(p)
        most = max(most, len(_disks_with_open_shards(store)))
    return batch.finish(), most


def test_one_batch_writes_on_every_disk_at_once(tmp_path: Path) -> None:
    """With write_ack 2 on four disks, one batch keeps shards open on all four at once (each on
    two distinct disks), and every object reads back from every replica."""
    store = Store.open(config.load(dir_disks_config(tmp_path, 4, shard_size_mb=4)), init=True)
    files = make_files(tmp_path / "in", 600, lo=4000, hi=30000)
    results, most = _spread_batch(store, files)
    assert most == 4, f"open shards covered only {most} of 4 disks at once"
    assert [r.status for r in results] == ["new"] * len(files)
    assert check_store(store) == len(files)
    written = Counter(store.disks[u].label for m in store.index.iter_shards() for u in m.replicas)
    assert set(written) == {"d0", "d1", "d2", "d3"}
    store.close()


def test_open_shards_1_writes_one_shard_at_a_time(tmp_path: Path) -> None:
    """`store.open_shards = 1`: one open shard at a time, on write_ack disks."""
    store = Store.open(config.load(dir_disks_config(tmp_path, 4, shard_size_mb=4, open_shards=1)), init=True)
    files = make_files(tmp_path / "in", 300, lo=4000, hi=30000)
    results, most = _spread_batch(store, files)
    assert most == 2
    assert check_store(store) == len(files) == sum(r.status == "new" for r in results)
    store.close()


def _with_speeds(path: Path, mb_s: dict[str, float], key: str = "read_mb_s") -> Path:
    text = path.read_text()
    for label, speed in mb_s.items():
        text = text.replace(f'label = "{label}"\n', f'label = "{label}"\n{key} = {speed}\n')
    path.write_text(text)
    return path


def test_a_batch_is_shared_by_the_disks_speeds(tmp_path: Path) -> None:
    """Disks of configured speeds 60, 45, 35 and 25 MB/s take a batch's bytes in that proportion
    (within 10 %), whatever their free space (each disk's shares of speed and of free space are
    within a factor of two)."""
    speeds = {"d0": 60, "d1": 45, "d2": 35, "d3": 25}
    path = _with_speeds(dir_disks_config(tmp_path, 4, cap=2, shard_size_mb=2), speeds)
    store = Store.open(config.load(path), init=True)
    files = make_files(tmp_path / "in", 1500, lo=4000, hi=30000)
    _spread_batch(store, files)
    written = Counter[str]()
    for m in store.index.iter_shards():
        for u in m.replicas:
            written[store.disks[u].label] += m.size
    total, speed_total = sum(written.values()), sum(speeds.values())
    for label, speed in speeds.items():
        assert written[label] / total == pytest.approx(speed / speed_total, rel=0.1), written
    store.close()


def test_write_mb_s_sets_the_shares_over_read_mb_s(tmp_path: Path) -> None:
    """`disks[].write_mb_s` 60/45/35/25 with every `read_mb_s` 100: shares by the write speeds."""
    writes = {"d0": 60, "d1": 45, "d2": 35, "d3": 25}
    path = _with_speeds(_with_speeds(dir_disks_config(tmp_path, 4, cap=2), dict.fromkeys(writes, 100)), writes,
                        "write_mb_s")
    with Store.open(config.load(path), init=True) as store:
        shares = {store.disks[u].label: s for u, s in store.writer("raw").shares().items()}
    assert shares == pytest.approx({d: w / sum(writes.values()) for d, w in writes.items()})


def test_shares_by_free_space_when_no_speed_is_known_and_never_twice_the_free_share(tmp_path: Path) -> None:
    """No speed configured or measured: shares follow free space (disks of 8, 4, 2 and 1 GB).
    Equal speeds on empty disks of 8, 4, 2 and 0.1 GB: the small one's share is twice its
    share of the free space, not a quarter; the 8 GB disk, holding more than half the free
    space, takes at least its free share (write_ack 2: the others could not pair with the
    room it would keep), the other two the rest alike."""
    def store_of(root: Path, caps: tuple[float, ...], speed: float | None) -> Store:
        disks = [(f"d{i}", root / f"d{i}", cap) for i, cap in enumerate(caps)]
        for _, p, _ in disks:
            p.mkdir(parents=True)
        path = write_config(root, disks, shard_size_mb=2)
        return Store.open(config.load(_with_speeds(path, {d[0]: speed for d in disks}) if speed else path), init=True)

    for caps, speed in (((8, 4, 2, 1), None), ((8, 4, 2, 0.1), 50)):
        store = store_of(tmp_path / str(caps[-1]), caps, speed)
        free = {store.disks[c.uuid].label: c.free_bytes for c in store.candidates()}
        shares = {store.disks[u].label: s for u, s in store.writer("raw").shares().items()}
        if speed is None:
            assert shares == pytest.approx({d: f / sum(free.values()) for d, f in free.items()})
        else:
            assert shares["d3"] == pytest.approx(2 * free["d3"] / sum(free.values()))
            assert shares["d0"] == pytest.approx(free["d0"] / sum(free.values()))
            assert shares["d1"] == shares["d2"] == pytest.approx((1 - shares["d0"] - shares["d3"]) / 2)
        store.close()


@pytest.mark.parametrize("value", ['"lots"', "0", "65", "true"])
def test_a_bad_open_shards_is_one_line_naming_the_allowed_values(tmp_path: Path, value: str) -> None:
    """`store.open_shards` other than "auto" or 1..64: one line naming the key and what to write."""
    path = dir_disks_config(tmp_path, 4)
    path.write_text(path.read_text().replace("[store]\n", f"[store]\nopen_shards = {value}\n"))
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert "store.open_shards: write \"auto\" or a number of open shards from 1 to 64" in str(e.value)
    assert "\n" not in str(e.value)


def test_auto_open_shards_gives_one_per_disk_set() -> None:
    """"auto": one shard per set of write_ack disks (at most 6); one when there are no more disks than that."""
    assert [auto_open_shards(n, 2) for n in (1, 2, 3, 4, 5)] == [1, 1, 3, 6, 6]
    assert auto_open_shards(4, 3) == 4


def test_spread_placement_opens_every_pair_once() -> None:
    """Six shards opened on pairs of four equal disks, each placed spreading from the others:
    the six distinct pairs, each disk in three."""
    sets: list[frozenset[str]] = []
    queue = Counter[str]()
    rng = random.Random(3)
    for _ in range(6):
        cands = [Candidate(u, u, 1 << 40, queue[u]) for u in "abcd"]
        picked = frozenset(c.uuid for c in choose(cands, 2, 1 << 20, rng, spread=sets))
        sets.append(picked)
        queue.update(picked)
    assert len(set(sets)) == 6 and all(len(s) == 2 for s in sets)
    assert set(queue.values()) == {3}


#: argv: hoard.toml, the list of files, the ack log. One put_many in small groups; every file
#: reported stored is appended to the ack log (fsynced) before the next is read.
SPREAD_CHILD = """
import os, sys
from hoardfs.base import config
from hoardfs.base.errors import ConfigError
from hoardfs.fsd.store import Store
cfg, listing, acklog = sys.argv[1:4]
ack = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def on_result(res):
    if res.status in ("new", "existing"):
        os.write(ack, f"+{res.sha256}\\n".encode())
        os.fsync(ack)

with Store.open(config.load(cfg)) as store:
    store.group_bytes = 128 << 10
    store.put_many(open(listing).read().split(), on_result=on_result)
"""


def _open_replicas(cfg: config.Settings) -> int:
    return sum(1 for d in cfg.disks for _ in (d.path / "shards").rglob("*.open"))


@pytest.mark.services  # starts a hoard process
@pytest.mark.parametrize("acks", [50, 700])
def test_kill_9_with_several_open_shards_loses_no_acknowledged_object(tmp_path: Path, acks: int) -> None:
    """A writer killed -9 while it has several shards open (two disks each, four disks): the
    next open recovers and seals every one of them, every acknowledged object reads back
    verified and the store checks clean."""
    cfg = config.load(dir_disks_config(tmp_path, 4, shard_size_mb=8))
    Store.open(cfg, init=True).close()
    files = make_files(tmp_path / "in", 3000, seed=acks, lo=4000, hi=30000)
    listing, ack_log = tmp_path / "list.txt", tmp_path / "acks.log"
    listing.write_text("\n".join(map(str, files)))
    child = subprocess.Popen([sys.executable, "-c", SPREAD_CHILD, str(cfg.source), str(listing), str(ack_log)],
                             cwd=REPO)
    deadline = time.monotonic() + 120
    while not (len(_owed(ack_log)) >= acks and _open_replicas(cfg) >= 6):
        assert child.poll() is None, f"the writer ended (exit {child.returncode}) before the kill"
        assert time.monotonic() < deadline, "the writer never had three shards open"
        time.sleep(0.002)
    child.kill()
    child.wait()
    owed = _owed(ack_log)
    idx = Index(cfg.index_dir)
    orphans = [m.hex for m in idx.iter_shards() if not m.sealed]
    idx.close()
    assert len(orphans) >= 2, f"only {len(orphans)} open shard(s) in the index at the kill"
    with Store.open(cfg) as store:  # recovery
        recovered = {e["shard"] for e in store.index.recent_events(100) if e["kind"] == "recovered_shard"}
        assert set(orphans) <= recovered | {h for h in orphans if store.index.get_shard(bytes.fromhex(h)) is None}
        assert all(m.sealed for m in store.index.iter_shards())
        assert not [p for d in store.disks.values() for p in (d.root / "shards").rglob("*.open")]
        for sha in owed:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        assert check_store(store) >= len(owed)


@pytest.mark.lab
@pytest.mark.expect_log(r"disk sp\d: write error", level="WARNING")
def test_a_replica_failing_in_one_open_shard_rewrites_only_its_group(lab_factory, tmp_path: Path) -> None:
    """Writes start failing on a disk of an open shard other than the one being appended to:
    that shard's uncommitted group is written again into a new shard on other disks, the other
    open shards go on, every file is reported once, stored and readable, and nothing indexed
    after the failure names the failed disk."""
    labels = [f"sp{i}" for i in range(1, 5)]
    lab = lab_factory([DiskProfile(label, 400, 500, 500, 5000) for label in labels])
    cfg = config.load(write_config(tmp_path, [(label, lab.disks[label].mountpoint, None) for label in labels],
                                   allow_dirs=False, shard_size_mb=8))
    store = Store.open(cfg, init=True)
    store.group_bytes = 128 << 10
    files = make_files(tmp_path / "in", 900, lo=8000, hi=30000)
    reported: list = []
    batch = _Batch(store, store.writer("raw"), reported.append)
    spread = batch.writer
    todo = iter(files)
    while sum(w.shard is not None for w in spread.writers) < 3:
        batch.add_file(next(todo))
    other = next(w for w in spread.writers if w.shard is not None and w is not spread.current)
    victim = other.shard.disks[0]
    lab.fail_writes(victim.label)
    before = {m.shard_id for m in store.index.iter_shards()}
    for p in todo:
        batch.add_file(p)
    results = batch.finish()
    assert sorted(r.path for r in reported) == sorted(map(str, files)), "a file was reported twice or never"
    assert [r.status for r in results] == ["new"] * len(files)
    events = [e for e in store.index.recent_events(200) if e["kind"] == "write_error"]
    assert events and {e["disk"] for e in events} == {victim.label}
    later = [m for m in store.index.iter_shards() if m.shard_id not in before]
    assert later and all(victim.uuid not in m.replicas for m in later)
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    store.close()


#: argv: hoard.toml, scratch dir, ack log. put_many calls of 200–400 files in groups of 128 KiB:
#: each call spreads its groups over several open shards. Acknowledged sha256s are logged
#: (fsynced) when each call returns.
POWER_CHILD = """
import os, random, sys
from pathlib import Path
from hoardfs.base import config
from hoardfs.base.errors import ConfigError
from hoardfs.fsd.store import Store
cfg, scratch, acklog = sys.argv[1:4]
rng = random.Random(68)
scratch = Path(scratch)
scratch.mkdir(exist_ok=True)
ack = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
with Store.open(config.load(cfg)) as store:
    store.group_bytes = 128 << 10
    n = 0
    while True:
        paths = []
        for _ in range(rng.randint(200, 400)):
            p = scratch / f"{n}.bin"
            n += 1
            p.write_bytes(rng.randbytes(rng.randint(1, 24 << 10)))
            paths.append(p)
        res = store.put_many(paths)
        os.write(ack, "".join(f"+{r.sha256}\\n" for r in res if r.status in ("new", "existing")).encode())
        os.fsync(ack)
        for p in paths:
            p.unlink()
"""


@pytest.mark.lab
def test_power_cuts_with_several_open_shards_lose_no_acknowledged_object(lab_factory, tmp_path: Path) -> None:
    """After a power cut at any of 12 points of a stream of batches each spread over several
    open shards (three disks, write_ack 2: three shards), recovery leaves every acknowledged
    object readable and the store clean, and some cuts hit more than one open shard."""
    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    mounts = {label: d.mountpoint for label, d in lab.disks.items()}
    cfg_path = _config(tmp_path, mounts, shard_size_mb=4)
    Store.open(config.load(cfg_path), init=True).close()
    ack_log = tmp_path / "acks.log"
    child = subprocess.Popen([sys.executable, "-c", POWER_CHILD, str(cfg_path), str(tmp_path / "scratch"),
                              str(ack_log)], cwd=REPO)
    rng = random.Random(68)
    reports = []
    try:
        deadline = time.monotonic() + 60
        while not (ack_log.exists() and ack_log.stat().st_size > 0):
            assert child.poll() is None and time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)
        for _ in range(12):
            time.sleep(rng.uniform(0.05, 0.4))
            assert child.poll() is None, f"the writer died (exit {child.returncode}); see its stderr above"
            with lab.paused(child.pid):
                owed = _owed(ack_log)
                with lab.power_cut() as cut:
                    reports.append(_reboot_and_check(cut, owed, shard_size_mb=4))
    finally:
        child.kill()
        child.wait()
    print(_summary(reports))
    assert not _failures(reports), "\n".join(_failures(reports))
    assert max(r.recovered for r in reports) >= 2, "no cut hit several open shards: " + _summary(reports)


def _fast_lab_store(lab_factory, tmp_path: Path, prefix: str, size_mb: int, shard_mb: int) -> tuple[Any, Store]:
    """The lab and a store on its four unthrottled disks <prefix>1..4 of `size_mb` MiB (ext4 on
    loop devices), shards of `shard_mb` MiB, groups of 128 KiB."""
    labels = [f"{prefix}{i}" for i in range(1, 5)]
    lab = lab_factory([DiskProfile(label, size_mb, 500, 500, 5000) for label in labels], throttle=False)
    cfg = config.load(write_config(tmp_path, [(label, lab.disks[label].mountpoint, None) for label in labels],
                                   allow_dirs=False, shard_size_mb=shard_mb))
    store = Store.open(cfg, init=True)
    store.group_bytes = 128 << 10
    return lab, store


@pytest.mark.lab
@pytest.mark.expect_log(r"disk lo\d: write error", level="WARNING")
def test_a_disk_that_failed_one_open_shard_takes_no_more_groups_of_the_others(lab_factory, tmp_path: Path) -> None:
    """A write error confined to one replica file (that file made immutable: EPERM) in an open
    shard other than the one appended to: from then on no open shard on that disk indexes
    another group there — each cuts its group and writes it again on other disks — while every
    file is stored and reads back."""
    _lab, store = _fast_lab_store(lab_factory, tmp_path, "lo", 400, 16)
    files = make_files(tmp_path / "in", 900, lo=8000, hi=30000)
    batch = _Batch(store, store.writer("raw"))
    spread = batch.writer
    todo = iter(files)
    while True:  # a disk shared by two open shards, neither of them the one being appended to
        batch.add_file(next(todo))
        shared = Counter(d.uuid for w in spread.writers if w.shard is not None and w is not spread.current
                         for d in w.shard.disks)
        if any(n >= 2 for n in shared.values()):
            break
    victim = store.disks[next(u for u, n in shared.items() if n >= 2)]
    hit = next(w.shard for w in spread.writers if w.shard is not None and w is not spread.current
               and victim in w.shard.disks)
    stuck = victim.root / "shards" / hit.hex[-2:] / f"{hit.hex}.open"
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        on_victim: dict[bytes, int] | None = None  # each shard on the victim: its records when it was left out
        for p in todo:
            batch.add_file(p)
            if on_victim is None and victim.uuid in spread.excluded:
                on_victim = {m.shard_id: m.records for m in store.index.iter_shards() if victim.uuid in m.replicas}
        results = batch.finish()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert on_victim is not None, "the write error was never met"
    after = {m.shard_id: m.records for m in store.index.iter_shards() if victim.uuid in m.replicas}
    grew = {sid.hex(): (on_victim.get(sid), n) for sid, n in after.items() if n != on_victim.get(sid)}
    assert not grew, f"groups indexed on {victim.label} after the writer left it out: {grew}"
    assert [r.status for r in results] == ["new"] * len(files)
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    store.close()


def _fill(tmp_path: Path, caps_mb: tuple[int, ...], speeds: dict[str, float]) -> tuple[dict[str, int], int]:
    """Disks of `caps_mb` MiB at `speeds` filled by batches of 8 MiB until one is refused: (the
    free bytes left on each disk, the size of a shard)."""
    disks = [(f"d{i}", tmp_path / f"d{i}", cap / 1024) for i, cap in enumerate(caps_mb)]
    for _, p, _ in disks:
        p.mkdir()
    store = Store.open(config.load(_with_speeds(write_config(tmp_path, disks, shard_size_mb=2), speeds,
                                                "write_mb_s")), init=True)
    store.group_bytes = 128 << 10
    for n in range(200):
        try:
            store.put_many(make_files(tmp_path / f"in{n}", 400, seed=n, lo=15000, hi=25000))
        except NoSpace:
            break
    left = {store.disks[c.uuid].label: c.free_bytes for c in store.candidates()}
    check_store(store)
    store.close()
    return left, 2 << 20


def test_disks_of_one_speed_and_unequal_sizes_fill_together(tmp_path: Path) -> None:
    """Disks of 80, 60, 40 and 30 MiB written at one speed, filled until a batch is refused:
    no disk keeps four shards' worth, all of them less than six (5.7 %) — the shares lean to
    free space as the disks fill, so the small disks do not fill first and leave room only the
    big one has (write_ack 2 cannot use it: shares by speed capped at twice the free share
    left 18 MiB on the 80 MiB disk)."""
    left, shard = _fill(tmp_path, (80, 60, 40, 30), dict.fromkeys(("d0", "d1", "d2", "d3"), 50))
    mib = {d: round(v / 2**20, 1) for d, v in left.items()}
    assert max(left.values()) < 4 * shard and sum(left.values()) < 6 * shard, mib


def test_a_disk_takes_no_more_open_shards_than_its_free_space_holds(tmp_path: Path) -> None:
    """Three disks, write_ack 2, three open shards of 4 MiB: the disk with room for one and a
    half shards never has two open at once (each could grow to a full shard: ENOSPC), the
    others take the rest, and a new shard refused for want of room names what is kept."""
    disks = [("d0", tmp_path / "d0", 1.0), ("d1", tmp_path / "d1", 1.0), ("d2", tmp_path / "d2", 6 / 1024)]
    for _, p, _ in disks:
        p.mkdir()
    store = Store.open(config.load(write_config(tmp_path, disks, shard_size_mb=4, open_shards=3)), init=True)
    small = next(u for u, d in store.disks.items() if d.label == "d2")
    store.group_bytes = 128 << 10
    batch = _Batch(store, store.writer("raw"))
    most, named = 0, False
    files = make_files(tmp_path / "in", 200, lo=10000, hi=30000)
    for p in files:
        batch.add_file(p)
        most = max(most, sum(1 for w in batch.writer.writers if w.shard is not None
                             and small in {d.uuid for d in w.shard.disks}))
        if most == 1 and not named:
            with pytest.raises(NoSpace) as e:
                store.place(3, 4 << 20, set())
            assert re.search(r"d2 [\d.]+ MiB free, [\d.]+ MiB of it kept for the shards open there \(too little\)",
                             e.value.message), e.value.message
            named = True
    results = batch.finish()
    assert most == 1, f"d2 (room for 1.5 shards) had {most} shards open at once"
    assert [r.status for r in results] == ["new"] * len(files)
    assert check_store(store) == len(files)
    store.close()


def test_a_batch_fills_the_room_its_open_shards_keep_before_it_is_refused(tmp_path: Path) -> None:
    """Three disks with room for two 4 MiB shards each, three open shards, d0 much the fastest
    (the shards on it fill first): when a full shard's writer finds no disks for a new one
    beside the room the others keep, its records go to those others — 10 MiB of files are
    stored, near three shards' worth — and the next batch is refused in one line naming every
    disk's free space."""
    disks = [(f"d{i}", tmp_path / f"d{i}", 9 / 1024) for i in range(3)]
    for _, p, _ in disks:
        p.mkdir()
    path = write_config(tmp_path, disks, shard_size_mb=4, open_shards=3)
    store = Store.open(config.load(_with_speeds(path, {"d0": 100, "d1": 10, "d2": 10}, "write_mb_s")), init=True)
    store.group_bytes = 128 << 10
    files = make_files(tmp_path / "in", 500, lo=15000, hi=25000)
    assert sum(p.stat().st_size for p in files) < 10.2 * (1 << 20)
    results = store.put_many(files)
    assert [r.status for r in results] == ["new"] * len(files)
    assert check_store(store) == len(files)
    with pytest.raises(NoSpace) as e:
        store.put_many(make_files(tmp_path / "more", 300, seed=1, lo=15000, hi=25000))
    assert re.search(r"only \d can take it: d0 .* free \(too little\), d1 .*, d2 .*; add a disk", e.value.message)
    assert "\n" not in e.value.message
    store.close()


@pytest.mark.lab
@pytest.mark.expect_log(r"disk fw2: write error", level="WARNING")
def test_open_shards_on_a_disk_that_stops_writing_are_sealed_on_their_other_disks(lab_factory,
                                                                                  tmp_path: Path) -> None:
    """A disk stops writing (EIO) with several shards open on it: each is sealed on its other
    disk at once — no shard stays open and locked while the writer lives (replication takes
    only sealed shards) — and one replication pass leaves no shard at risk."""
    lab, store = _fast_lab_store(lab_factory, tmp_path, "fw", 300, 8)
    files = make_files(tmp_path / "in", 1200, lo=8000, hi=30000)
    batch = _Batch(store, store.writer("raw"))
    todo = iter(files)
    for p in todo:
        batch.add_file(p)
        if sum(any(d.label == "fw2" for d in w.shard.disks) for w in batch.writer.writers if w.shard) >= 2:
            break
    lab.fail_writes("fw2")
    for p in todo:
        batch.add_file(p)
    results = batch.finish()
    assert [r.status for r in results] == ["new"] * len(files)
    assert not [m.hex for m in store.index.iter_shards() if not m.sealed], "a shard was left open"
    replicate_once(store, rate_mb_s=None)
    assert replication_lag(store)["at_risk"] == []
    for p, r in zip(files, results, strict=True):
        assert store.get(r.sha256) == p.read_bytes()
    store.close()
