"""Power cuts (not kill -9): acknowledged objects survive a cut at any point after their ack.

A writer child stores files on a direct-IO lab (3 HDDs and the SSD holding the LMDB index)
and, after each `put_many` returns, appends the acknowledged sha256s to an fsynced ack log
outside the lab. The test pauses it at random moments (and right after an ack), copies
every disk image (`Lab.power_cut`, see tests/lab.py for what that models), resumes it, and
"reboots" the copies: mount (journal replay), `Store.open` (recovery), then every object
acknowledged before the cut must read back verified, no shard may be left open, every
index entry must verify on every replica, a second open must find nothing to recover, and
e2fsck must find each filesystem clean. Each run prints what the cuts interrupted (open
shards, seals, replica copies, gc) and the files recovery left that nothing refers to.

Run time here, on 2 shared cores: 70–100 s for the module, depending on load — 60 cuts
during put_many (60–85 s), 12 during replicate + gc (~10 s), one right after gc (~2 s,
an expected failure until gc makes its deletes durable), one right after an index rebuild
(~3 s: the rebuilt index must come back, not the one it set aside).

The embedded servers' own files are cut too (the chaos suite's power worlds found both):
the private PostgreSQL cluster right after its set-up (~4 s) and the private Redis with
appends it has not synced yet (~10 s).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.core.records import DataError, ObjectNotFound
from hoardfs.fsd.maintenance.gc import RESERVE_NAME
from hoardfs.fsd.store import Store
from tests.helpers import private_cluster, write_config
from tests.lab import CutImages, DiskProfile, Lab, stopped
from tests.test_store import check_store

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent
HDDS = ("p1", "p2", "p3")
#: sizes only matter for space (images are sparse); the lab is not throttled
POWER_LAB = tuple(DiskProfile(label, 400, 100, 100, 10000) for label in HDDS) + (
    DiskProfile("ssd", 200, 100, 100, 10000),)

#: argv: hoard.toml, scratch dir (outside the lab), ack log, seed, mode ("put" or "maint").
#: Ack log lines: "+<sha256>" acknowledged; "-<sha256>" about to be deleted (maint mode drops
#: half of each round's files and runs gc), so no longer owed after a cut.
CHILD = """
import os, random, sys
from pathlib import Path
from hoardfs.base import config
from hoardfs.fsd.store import Store
cfg, scratch, acklog, seed, mode = sys.argv[1:6]
rng = random.Random(int(seed))
scratch = Path(scratch)
scratch.mkdir(exist_ok=True)
ack = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def log(sign, shas):
    os.write(ack, "".join(f"{sign}{s}\\n" for s in shas).encode())
    os.fsync(ack)

with Store.open(config.load(cfg)) as store:
    if mode == "maint":
        from hoardfs.fsd.maintenance.deletion import drop_batch
        from hoardfs.fsd.maintenance.gc import gc
        from hoardfs.fsd.io.replicate import replicate_once
        from tests.test_gc import _register
    n = 0
    for rnd in range(10**9):
        paths = []
        for _ in range(rng.randint(1, 20) if mode == "put" else 24):
            p = scratch / f"{n}.bin"
            n += 1
            p.write_bytes(rng.randbytes(rng.randint(1, 40 << 10)))
            paths.append(p)
        if mode == "put" and rng.random() < 0.03:  # streamed, and bigger than a shard
            p = scratch / f"{n}.big"
            n += 1
            p.write_bytes(rng.randbytes(9 << 20))
            paths.append(p)
        res = store.put_many(paths)
        log("+", [r.sha256 for r in res if r.status in ("new", "existing")])
        for p in paths:
            p.unlink()
        if mode == "maint":
            _register(store, f"keep-{rnd}", res[:12])
            _register(store, f"drop-{rnd}", res[12:])
            log("-", [r.sha256 for r in res[12:]])
            drop_batch(store, f"drop-{rnd}")
            gc(store, threshold=0.6)
            replicate_once(store, rate_mb_s=None)
"""


@dataclass
class CutReport:
    """What one cut found; `problems` is empty when the store came back whole."""

    owed: int
    recovered: int = 0
    phase: str = ""  # what the cut interrupted, when the disks show it
    problems: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)  # files recovery left that nothing refers to


def _owed(ack_log: Path) -> set[str]:
    """The sha256s acknowledged (and not since marked for deletion) in the log's complete lines."""
    text = ack_log.read_text() if ack_log.exists() else ""
    owed: set[str] = set()
    for line in text[:text.rfind("\n") + 1].splitlines():
        (owed.add if line[0] == "+" else owed.discard)(line[1:])
    return owed


def _config(root: Path, mounts: dict[str, Path], **store: object) -> Path:
    return write_config(root, [(label, mounts[label], None) for label in HDDS], allow_dirs=False,
                        ssd=mounts["ssd"], **{"shard_size_mb": 1, **store})


def _recovered(store: Store) -> int:
    return sum(1 for e in store.index.recent_events(10**6) if e["kind"] == "recovered_shard")


def _phase(cfg: config.Settings) -> str:
    """What the cut interrupted, as far as the copies show it before recovery touches them:
    a seal (an unsealed shard already renamed on some replica), a gc (retired shards not yet
    deleted, or its space reservation), a replica copy (a file in a disk's tmp/)."""
    idx = Index(cfg.index_dir, readonly=True)
    try:
        unsealed = [m.hex for m in idx.iter_shards() if not m.sealed]
        retired = idx.marked(idx.retired)
    finally:
        idx.close()
    if any((d.path / "shards" / h[-2:] / f"{h}.shard").exists() for h in unsealed for d in cfg.disks):
        return "mid-seal"
    if retired or any((d.path / "tmp" / RESERVE_NAME).exists() for d in cfg.disks):
        return "mid-gc"
    if any(p.name.endswith(".shard.tmp") for d in cfg.disks for p in (d.path / "tmp").glob("*")):
        return "mid-replicate"
    return ""


def _leaks(store: Store) -> list[str]:
    """Files no index entry (shard replica or retired shard) refers to: space, not data, lost."""
    known = {(u, m.hex) for m in store.index.iter_shards() for u in m.replicas}
    retired = {sid.hex() for sid in store.index.marked(store.index.retired)}
    out = []
    for uuid, d in store.disks.items():
        for p in (d.root / "shards").rglob("*.*"):
            if (uuid, p.stem) not in known and p.stem not in retired:
                out.append(f"{d.label}:{p.relative_to(d.root)}")
        out += [f"{d.label}:{p.relative_to(d.root)}" for p in (d.root / "tmp").glob("*")]
    return out


def _reboot_and_check(cut: CutImages, owed: set[str], **store_opts: object) -> CutReport:
    """Mount the copies, open the store (recovery) and check it; unmount and fsck them."""
    rep = CutReport(len(owed))
    cfg = config.load(_config(cut.root, cut.mount(), **store_opts))
    rep.phase = _phase(cfg)
    with Store.open(cfg) as store:
        rep.recovered = _recovered(store)
        for sha in sorted(owed):
            try:
                if hashlib.sha256(store.get(sha)).hexdigest() != sha:
                    rep.problems.append(f"{sha}: wrong bytes")
            except (ObjectNotFound, DataError) as e:
                rep.problems.append(f"acknowledged object lost: {e}")
        rep.problems += [f"left open: {p}" for d in store.disks.values() for p in (d.root / "shards").rglob("*.open")]
        rep.problems += [f"unsealed in the index: {m.hex}" for m in store.index.iter_shards() if not m.sealed]
        try:
            check_store(store)
        except (AssertionError, OSError, fmt.ShardFormatError) as e:
            rep.problems.append(f"check_store: {type(e).__name__}: {e}")
        rep.leaks = _leaks(store)
    with Store.open(cfg) as store:
        if _recovered(store) != rep.recovered:
            rep.problems.append("a second Store.open recovered more shards")
    cut.unmount()
    rep.problems += [f"e2fsck {label}: {msg[-300:]}" for label, msg in cut.fsck().items()]
    return rep


def _cut_while_running(lab: Lab, tmp_path: Path, mode: str, cuts: int, gap: tuple[float, float],
                       seed: int, **store_opts: object) -> list[CutReport]:
    """Run the writer child in `mode` and cut the power `cuts` times, `gap` seconds of writing
    apart (every fifth cut right after an ack instead); return what each reboot found."""
    cfg_path = _config(tmp_path, {label: d.mountpoint for label, d in lab.disks.items()}, **store_opts)
    Store.open(config.load(cfg_path), init=True).close()
    ack_log = tmp_path / "acks.log"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_path), str(tmp_path / "scratch"), str(ack_log),
                              str(seed), mode], cwd=REPO)
    rng = random.Random(seed)
    reports = []
    try:
        _wait(lambda: ack_log.exists() and ack_log.stat().st_size > 0, child, 60)
        for i in range(cuts):
            if i % 5 == 4:
                size = ack_log.stat().st_size
                _wait(lambda size=size: ack_log.stat().st_size != size, child, 30)
            else:
                time.sleep(rng.uniform(*gap))
            assert child.poll() is None, f"the writer died (exit {child.returncode}); see its stderr above"
            # paused while the copies are checked too: the writer's run time is the sum of
            # the gaps, which bounds the space it needs and keeps the 2 cores for the checks
            with lab.paused(child.pid):
                owed = _owed(ack_log)  # only acks logged before the cut count
                with lab.power_cut() as cut:
                    reports.append(_reboot_and_check(cut, owed, **store_opts))
    finally:
        child.kill()
        child.wait()
    return reports


def _wait(cond, child: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert child.poll() is None, f"the writer died (exit {child.returncode}); see its stderr above"
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.001)


def _summary(reports: list[CutReport]) -> str:
    kinds = Counter(r.phase or ("open shard" if r.recovered else "all sealed") for r in reports)
    leaks = [f"cut {i + 1}: {', '.join(r.leaks)}" for i, r in enumerate(reports) if r.leaks]
    return (f"{len(reports)} cuts ({dict(kinds)}), up to {max(r.owed for r in reports)} acknowledged objects; "
            f"{sum(1 for r in reports if r.problems)} with problems; {len(leaks)} left unreferenced files"
            + "".join(f"\n  {line}" for line in leaks))


def _failures(reports: list[CutReport]) -> list[str]:
    return [f"cut {i + 1} ({r.owed} owed, {r.recovered} shards recovered): {p}"
            for i, r in enumerate(reports) for p in r.problems[:5]]


def test_power_cuts_during_batch_writes_lose_no_acknowledged_object(lab_factory, tmp_path: Path) -> None:
    """After a power cut at any of 60 points of a stream of put_many calls (mid-write, mid-seal,
    right after an ack), recovery leaves every acknowledged object readable and the store clean."""
    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    reports = _cut_while_running(lab, tmp_path, "put", cuts=60, gap=(0.01, 0.15), seed=20261122)
    print(_summary(reports))
    assert not _failures(reports), "\n".join(_failures(reports))
    assert sum(1 for r in reports if r.recovered) >= 8, "too few cuts hit an open shard: " + _summary(reports)


def test_power_cuts_during_replicate_and_gc_lose_no_acknowledged_object(lab_factory, tmp_path: Path) -> None:
    """After a power cut while shards are replicated to a third disk and gc compacts half-deleted
    shards, every acknowledged object not deleted since reads back and the store is clean."""
    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    reports = _cut_while_running(lab, tmp_path, "maint", cuts=12, gap=(0.05, 0.5), seed=7, copy_of_raw=3)
    print(_summary(reports))
    assert not _failures(reports), "\n".join(_failures(reports))


def test_power_cut_right_after_gc_leaves_no_unreferenced_shard(lab_factory, tmp_path: Path) -> None:
    """A power cut right after gc returns finds no shard file the index has forgotten: gc's
    deletes are durable before the index stops naming them, as docs/design.md's gc order says."""
    from hoardfs.fsd.maintenance.deletion import drop_batch
    from hoardfs.fsd.maintenance.gc import gc
    from tests.helpers import make_files
    from tests.test_gc import _check_all, _register

    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    for d in lab.disks.values():
        # ext4 commits its journal every 5 s anyway: push that out so the cut surely comes
        # first, as it may on any real machine (the window is what a missing fsync opens)
        subprocess.run(["mount", "-o", "remount,commit=300", str(d.mountpoint)], check=True)
    cfg = config.load(_config(tmp_path, {label: d.mountpoint for label, d in lab.disks.items()}))
    with Store.open(cfg, init=True) as store:
        results = store.put_many(make_files(tmp_path / "in", 40, seed=5))
        _register(store, "keep", results[:20])
        _register(store, "drop", results[20:])
        drop_batch(store, "drop")
        assert gc(store, threshold=0.6).replicas_deleted > 0
        with lab.power_cut() as cut:  # this process is idle now: no pause needed
            with Store.open(config.load(_config(cut.root, cut.mount()))) as rebooted:
                _check_all(rebooted, results[:20])
                leaks = _leaks(rebooted)
    assert leaks == [], f"{len(leaks)} shard files nobody refers to: {leaks[:4]}"


def test_power_cut_right_after_an_index_rebuild_keeps_the_rebuilt_index(lab_factory, tmp_path: Path) -> None:
    """A power cut right after `hoard index rebuild` returns brings back the index it swapped in
    (the same directory, its objects readable), not the one it set aside: the swap's two renames
    are durable when the command returns (the SSD's directory is fsynced after them)."""
    from hoardfs.fsd.maintenance.reindex import rebuild_index
    from tests.helpers import make_files

    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    # ext4 commits its journal every 5 s anyway: push that out so the cut surely comes first
    subprocess.run(["mount", "-o", "remount,commit=300", str(lab.disks["ssd"].mountpoint)], check=True)
    cfg = config.load(_config(tmp_path, {label: d.mountpoint for label, d in lab.disks.items()}))
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 20, seed=11))]
    rebuild_index(cfg)
    rebuilt = cfg.index_dir.stat().st_ino  # (a copied image keeps its inode numbers)
    with lab.power_cut() as cut:  # this process is idle now: no pause needed
        after = config.load(_config(cut.root, cut.mount()))
        assert after.index_dir.stat().st_ino == rebuilt, "the index set aside came back, not the rebuilt one"
        assert [p.name for p in after.index_dir.parent.glob("index.rebuild*")] == []
        with Store.open(after) as store:
            assert all(hashlib.sha256(store.get(sha)).hexdigest() == sha for sha in shas)


def test_power_cut_right_after_initdb_leaves_a_cluster_that_starts_as_configured(lab_factory) -> None:
    """The private PostgreSQL cluster's set-up is durable when initdb returns: after a power cut
    right then, it starts with the embedded settings (they were appended to postgresql.conf
    without an fsync: the file came back cut short, and the server refused it)."""
    import psycopg

    from hoardfs.sql.cluster import PrivateCluster

    lab = lab_factory(POWER_LAB[-1:], throttle=False, direct_io=True)
    os.chmod(lab.root, 0o711)  # the server user must reach its data directory on the lab disk
    mnt = lab.disks["ssd"].mountpoint
    first = private_cluster(mnt)
    assert first.initdb()
    lab.reboot(lab.power_cut())  # nothing runs: no pause needed
    cluster = PrivateCluster(first.link, first.socket_dir)
    cluster.start()
    try:
        with psycopg.connect(host=str(cluster.socket_dir), user="hoard", dbname="postgres") as conn:
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "256MB"
    finally:
        cluster.stop()


@pytest.mark.expect_log(r"Redis: cut \d+ NUL bytes off the end of .*appendonly", level="WARNING")
def test_power_cut_before_redis_syncs_its_appends_leaves_a_redis_that_starts(lab_factory) -> None:
    """The private Redis starts after a power cut that kept the new size of its append-only
    file but not its last appends' bytes (ext4 commits the size of an append into an allocated
    block with its journal, the page only at writeback): the zeros are cut off and every entry
    synced before the cut is there (Redis refused the file, "Bad file format", and never came
    up — found by chaos seed 102)."""
    from hoardfs.jobs.redis_server import PrivateRedis

    lab = lab_factory(POWER_LAB[-1:], throttle=False, direct_io=True)
    mnt = lab.disks["ssd"].mountpoint
    redis = PrivateRedis(mnt / "redis", lab.root / "redis.sock")
    redis.start()
    try:
        client = redis.client()
        for i in range(100):
            client.rpush("q", f"synced-{i}")
        time.sleep(2.5)  # appendfsync everysec has synced them
        # the up to one second everysec leaves unsynced, held open: appends written, not fsynced
        client.config_set("appendfsync", "no")
        for i in range(5):
            client.rpush("q", f"unsynced-{i}")
        with lab.paused(int((mnt / "redis" / "redis.pid").read_text())):
            # a journal commit, as ext4's 5 s timer makes one (another file's fsync forces it now):
            # the file's new size reaches the disk, its last page does not
            with open(mnt / "another-file", "wb") as f:
                os.fsync(f.fileno())
            cut = lab.power_cut()
    finally:
        redis.stop()
    lab.reboot(cut)
    aof = next((redis.data_dir / "appendonlydir").glob("*.incr.aof")).read_bytes()
    assert aof.endswith(b"\0"), "the cut kept no zeros at the end of the append-only file: nothing to test"
    redis.start()
    try:
        entries = [e.decode() for e in redis.client().lrange("q", 0, -1)]
    finally:
        redis.stop()
    assert entries[:100] == [f"synced-{i}" for i in range(100)]
    assert all(e.startswith("unsynced-") for e in entries[100:]), entries[100:]


#: argv: hoard.toml, scratch dir, ack log, stops. One put_many of ~10 MiB in groups of 256 KiB:
#: each group's fdatasync overlaps the reading and appending of the next (hoardfs.fsd.io.put). Every
#: file reported stored (on_result) is logged at once. Every fourth path names no file: its
#: rejection is reported as it is read, and the first one read after the ack count passed the
#: next of `stops` stops the writer — a complete group reported, the next one being appended.
#: The writer reads slowly (a pause at each of those), as from a slow source: a group's
#: fdatasync then returns while the next group is half appended (its records in memory or
#: written but not synced), and that group is reported from there, not at the next commit.
OVERLAP_CHILD = """
import os, random, signal, sys, time
from pathlib import Path
from hoardfs.base import config
from hoardfs.fsd.store import Store
cfg, scratch, acklog, stops = sys.argv[1:5]
stops = sorted(int(s) for s in stops.split(","))
rng = random.Random(35)
scratch = Path(scratch)
scratch.mkdir(exist_ok=True)
paths = []
for n in range(800):
    p = scratch / f"{n}.bin"
    if n % 4 == 3:
        paths.append(scratch / f"missing-{n}")
        continue
    p.write_bytes(rng.randbytes(rng.randint(4 << 10, 30 << 10)))
    paths.append(p)
ack = os.open(acklog, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
acked = 0

def on_result(res):
    global acked
    if res.status == "rejected":
        time.sleep(0.01)
        if stops and acked >= stops[0]:
            stops.pop(0)
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.write(ack, f"+{res.sha256}\\n".encode())
    os.fsync(ack)
    acked += 1

with Store.open(config.load(cfg)) as store:
    store.group_bytes = 256 << 10
    store.put_many(paths, on_result=on_result)
"""


def test_power_cut_right_after_a_group_is_acknowledged_while_the_next_is_written(lab_factory,
                                                                                  tmp_path: Path) -> None:
    """A group's files are reported once its fdatasync returned on every replica, while the
    next group is already being read and written: a power cut right after such a report loses
    none of them — only the next group's files, unreported, may be gone. (Fails when the
    writer reports records queued after the group's fdatasync — its bytes still in memory.)"""
    lab = lab_factory(POWER_LAB, throttle=False, direct_io=True)
    cfg_path = _config(tmp_path, {label: d.mountpoint for label, d in lab.disks.items()}, shard_size_mb=64)
    Store.open(config.load(cfg_path), init=True).close()
    ack_log = tmp_path / "acks.log"
    stops = (1, 40, 150, 300)
    child = subprocess.Popen([sys.executable, "-c", OVERLAP_CHILD, str(cfg_path), str(tmp_path / "scratch"),
                              str(ack_log), ",".join(map(str, stops))], cwd=REPO)
    reports = []
    try:
        for _ in stops:
            deadline = time.monotonic() + 60
            while not stopped(child.pid):
                assert child.poll() is None, f"the writer ended (exit {child.returncode}) before its stop"
                assert time.monotonic() < deadline, "the writer never stopped itself after an ack"
                time.sleep(0.001)
            with lab.paused(child.pid):  # stopped already; SIGCONT after the cut
                owed = _owed(ack_log)
                with lab.power_cut() as cut:
                    reports.append(_reboot_and_check(cut, owed))
            time.sleep(0.05)  # let it leave the stopped state before looking again
    finally:
        child.kill()
        child.wait()
    print(_summary(reports))
    assert [r.owed for r in reports] == sorted(r.owed for r in reports) and reports[-1].owed >= stops[-1]
    assert not _failures(reports), "\n".join(_failures(reports))


def test_power_cut_right_after_an_action_ran_its_worker_keeps_what_parse_reads(
        lab_factory, tmp_path: Path, servers, pg, redis_conn) -> None:
    """An action's run step is recorded done only once its worker's output is on the disk: a
    power cut right after it (the worker's files still in the page cache) left them empty or
    missing, and parse read that — or, a cut after parse, store refused them as unlike what
    parse had read (the chaos suite's power world). After the cut and the reboot every output
    file holds what the worker wrote, and the run, resumed, is done with children of those
    bytes."""
    from hoardfs.jobs.actions import api
    from hoardfs.jobs.actions.runner import _run_step_locked
    from hoardfs.jobs.actions.state import load_state, read_work
    from hoardfs.jobs.actions.steps import contract_of, roots_of
    from tests.conftest import write_home
    from tests.helpers import worker_contract
    from tests.test_action_runs import action_home, hoard

    lab = lab_factory(POWER_LAB[-1:], throttle=False, direct_io=True)
    home = write_home(tmp_path, servers)
    toml = home / "hoard.toml"
    toml.write_text(toml.read_text().replace('root = "ssd"', f'root = "{lab.disks["ssd"].mountpoint}"'))
    cfg, batch = action_home(home, pg, redis_conn, seed=131, items=4)
    worker_contract(cfg, batch)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    for step in ("plan", "stage", "run"):
        _run_step_locked(cfg, rid, step, then_enqueue=False)
    st = load_state(cfg, rid)
    out = roots_of(cfg, contract_of(cfg, st), st).output_root
    wrote = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert len(wrote) == 5 and all(wrote.values()), wrote  # (4 thumbnails and edges.jsonl)
    lab.reboot(lab.power_cut())  # nothing runs: no pause needed
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == wrote
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0 and f"run {rid}: done" in res.stdout, res.stdout + res.stderr
    stored = read_work(cfg, rid, "stored")
    assert {str(p) for p in wrote if p.suffix == ".txt"} == set(stored), stored
    assert all(size == len(wrote[Path(p)]) for p, (_sha, size) in stored.items()), stored
