"""How the mount reads from its disks: each disk's queue serves readers in turn, shuffled
reads fetch only what they serve, a frozen disk delays only its own readers, a hung replica
is bypassed. The queue alone, then real FUSE mounts on the disk lab."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from hoardfs.base import config
from hoardfs.fsd.mount.queue import BACKGROUND, DiskQueue
from hoardfs.fsd.mount.reader import BLOCK, PREFETCH_BLOCKS
from hoardfs.fsd.outputs.views import define_view
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files, write_config
from tests.test_mount import mounted

pytestmark = pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")


def test_no_open_keeps_the_files_being_read_within_bounds() -> None:
    """No-open: what the files being read need is kept per inode (nothing releases it), least
    recently read first out, within its bounds of bytes, files and streams; a file evicted
    while its bytes were being read is not counted; a stream evicted or forgotten has its
    pieces cancelled."""
    import concurrent.futures as cf

    from hoardfs.fsd.mount.namespace import Node
    from hoardfs.fsd.mount.ops import _Open, _Recent
    from hoardfs.fsd.mount.reader import SMALL_MAX, _Stream

    def small(ino: int, size: int) -> _Open:
        return _Open(Node(ino, ("file", b"s", 0), 0o100440, size, 0, b"s"))

    r = _Recent(max_bytes=10, max_streams=2, max_files=3)
    a, b, c = small(1, 4), small(2, 4), small(3, 4)
    for h in (a, b, c):
        r.add(h.node.inode, h)
    for h in (a, b):
        h.data = b"x" * 4
        r.loaded(h)
    assert r.get(1) is a  # 1 read again: 2 is now the least recently read
    c.data = b"x" * 4
    r.loaded(c)  # 12 bytes > 10: 2 goes
    assert (2 in r, 1 in r, 3 in r, r.bytes) == (False, True, True, 8)
    late = small(4, 4)
    r.add(4, late)
    for k in (5, 6):  # files: 3 at most — 1 and 3 go, the one being read (4) stays
        r.add(k, small(k, 1))
    assert (1 in r, 3 in r, 4 in r, r.bytes) == (False, False, True, 0)
    r.add(7, small(7, 1))  # 4 evicted while its bytes are read: not counted when they come
    late.data = b"x" * 4
    r.loaded(late)
    assert 4 not in r and r.bytes == 0
    streams = []
    for k in (10, 11, 12):
        h = _Open(Node(k, ("file", b"l", 0), 0o100440, SMALL_MAX + 1, 0, b"l"))
        h.stream = _Stream(b"l", SMALL_MAX + 1, k, pieces={0: cf.Future()})
        streams.append(h)
        r.add(k, h)
    assert 10 not in r and streams[0].stream.pieces[0].cancelled()  # 2 streams at most
    r.drop(11)  # the kernel forgot it
    assert 11 not in r and streams[1].stream.pieces[0].cancelled() and not streams[2].stream.pieces[0].cancelled()


def test_disk_queue_serves_readers_in_turn() -> None:
    """A reader with 40 queued requests does not make a reader with one wait behind them all;
    a queued request can be taken over; read-ahead never runs on a foreground thread."""
    q = DiskQueue("t", threads=1, seconds_per_read=0.01)
    order: list[str] = []
    gate = threading.Event()

    def job(tag: str) -> str:
        gate.wait(5)
        order.append(tag)
        time.sleep(0.005)
        return tag

    try:
        futs = [q.submit("bulk", job, f"bulk{i}") for i in range(40)]
        late = q.submit("one", job, "one")
        assert q.pending == 41 and q.cost() > 0.4
        gate.set()
        assert late.result(5) == "one"
        assert order.index("one") <= 2, order
        ahead = q.submit(BACKGROUND, threading.current_thread)
        assert ahead.result(5).name.startswith("ahead-")
        for f in futs:
            f.result(5)
        assert q.pending == 0 and q.served == 42
        blocker = q.submit("x", time.sleep, 0.3)
        queued = q.submit("x", lambda: "late")
        assert queued.cancel()  # not started: the caller may do it itself
        blocker.result(5)
    finally:
        q.close()


def _lab_store(lab_factory, tmp_path: Path, labels: int, **store):
    from tests.lab import LAB4

    lab = lab_factory(LAB4[:labels])
    disks = [(k, d.mountpoint, None) for k, d in lab.disks.items()]
    cfg_path = write_config(tmp_path, disks, allow_dirs=False, **store)
    return lab, cfg_path, config.load(cfg_path)


def _disk_reads(lab) -> tuple[int, int]:
    """(read requests completed, bytes read) over the lab's disks, from /sys/block/*/stat."""
    reqs = total = 0
    for d in lab.disks.values():
        f = (Path("/sys/block") / Path(d.device).name / "stat").read_text().split()
        reqs += int(f[0])
        total += int(f[2]) * 512
    return reqs, total


def _drop_caches() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)


def test_shuffled_reads_fetch_only_what_they_serve(lab_factory, tmp_path: Path) -> None:
    """Small files read in random order through the mount (cold caches): the disks read at
    most 1.5× the bytes served; read in stored order they stream (blocks read ahead)."""
    lab, cfg_path, cfg = _lab_store(lab_factory, tmp_path, 2, shard_size_mb=64, copy_of_raw=2, write_ack=2)
    files = make_files(tmp_path / "in", 1500, seed=3, lo=4096, hi=64 * 1024)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files)
    paths = {r.sha256: Path(r.path) for r in res}
    mnt = tmp_path / "mnt"
    rng = random.Random(5)
    sample = rng.sample(res, 150)
    with mounted(str(cfg_path), mnt):
        def by_hash(r) -> Path:
            return mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin"

        for r in sample:  # names first: the lookups' LMDB pages are not what is measured
            os.stat(by_hash(r))
        _drop_caches()
        before = _disk_reads(lab)
        served = 0
        for r in sample:
            data = by_hash(r).read_bytes()
            assert data == paths[r.sha256].read_bytes()
            served += len(data)
        after = _disk_reads(lab)
        amplification = (after[1] - before[1]) / served
        assert amplification <= 1.5, f"shuffled reads read {amplification:.2f}x the bytes served"
        rest = [r for r in res if r not in sample][:600]  # stored order (put_many's order)
        for r in rest:
            os.stat(by_hash(r))
        _drop_caches()
        before = _disk_reads(lab)
        served = sum(len(by_hash(r).read_bytes()) for r in rest)
        after = _disk_reads(lab)
        extra = after[1] - before[1] - served
    # the read-ahead window ends up to PREFETCH_BLOCKS × BLOCK (32 MiB) past the last file read:
    # a bound in bytes, not a ratio (here ~20 MB are served). Measured: 39–45 MiB extra, of
    # which up to ~13 MiB are read on both replicas while the window ramps up and moves between
    # the disks (not yet avoided); the bound allows that overlap (4 blocks) and fails on anything
    # like a second window
    assert extra <= (PREFETCH_BLOCKS + 4) * BLOCK, f"stored-order reads read {extra >> 20} MiB more than served"
    # streamed in large reads, not one request per file (4 MiB blocks hold ~120 of these files)
    assert after[0] - before[0] < len(rest) / 4, f"stored order took {after[0] - before[0]} disk reads"


def test_frozen_disk_delays_only_its_own_readers(lab_factory, tmp_path: Path) -> None:
    """One view's files and manifest on two disks throttled to 8 KB/s (frozen, for a mount),
    the other view's on two healthy disks: while readers hang on the frozen one — its manifest
    included — the other view is listed and read at full speed, `.hoard/health` and `df`
    answer."""
    from hoardfs.fsd.core.disks import DiskState

    lab, cfg_path, cfg = _lab_store(lab_factory, tmp_path, 4, shard_size_mb=16, copy_of_raw=2, write_ack=2)
    labels = sorted(lab.disks)
    slow, fast = labels[:2], labels[2:]
    slow_files = make_files(tmp_path / "slow", 30, seed=1, lo=64 << 10, hi=256 << 10)
    fast_files = make_files(tmp_path / "fast", 200, seed=2)
    Store.open(cfg, init=True).close()
    for mine, files, view, others in ((slow, slow_files, "slow", fast), (fast, fast_files, "fast", slow)):
        with Store.open(cfg) as store:  # each view on its own pair of disks: the others drain meanwhile
            for label in others:
                store.set_disk_state(label, DiskState.DRAINING, "test placement")
            for label in mine:
                store.set_disk_state(label, DiskState.ACTIVE, "")
            res = store.put_many(files)
            # the slow view's manifest is large (each file under 40 names): loading it takes long
            copies = 40 if view == "slow" else 1
            define_view(store, view, "".join(f"{r.sha256}  d{k % 4}/{c}-{Path(r.path).name}\n" for k, r in
                                             enumerate(res) for c in range(copies)).encode())
    with Store.open(cfg) as store:
        for label in slow:
            store.set_disk_state(label, DiskState.ACTIVE, "")
        for view, where in (("slow", slow), ("fast", fast)):
            msha = bytes.fromhex(store.index.get_view(view)["manifest"])
            meta = store.index.get_shard(store.index.lookup(msha).shard_id)
            assert sorted(store.disks[u].label for u in meta.replicas) == where, view
    mnt = tmp_path / "mnt"
    hangers = []
    with mounted(str(cfg_path), mnt, wrap=lab.wrap) as proc:
        _drop_caches()
        for label in slow:
            lab.set_throttle(label, read_mbps=8 / 1024, write_mbps=1, iops=5)
        try:
            for k in range(3):  # readers stuck on the frozen disk: a listing (its manifest) and files
                cmd = ["ls", "-lR", str(mnt / "views" / "slow")] if k == 0 else \
                      ["sh", "-c", f"cat {mnt}/views/slow/d{k}/* > /dev/null"]
                hangers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1)
            t0 = time.monotonic()
            names = []
            for d in sorted(os.listdir(mnt / "views" / "fast")):
                for name in sorted(os.listdir(mnt / "views" / "fast" / d)):
                    names.append(name)
                    data = (mnt / "views" / "fast" / d / name).read_bytes()
                    assert data == (tmp_path / "fast" / name[2:]).read_bytes()
            assert (mnt / ".hoard" / "health").read_text().startswith("objects:")
            os.statvfs(mnt)
            elapsed = time.monotonic() - t0
            assert len(names) == 200
            assert elapsed < 10, f"the healthy view took {elapsed:.1f} s while another disk was frozen"
            assert any(h.poll() is None for h in hangers), "the frozen disk's readers were not held up at all"
        finally:
            for label in slow:
                lab.set_throttle(label, read_mbps=0, write_mbps=0, iops=0)
            for h in hangers:
                try:
                    h.wait(60)
                except subprocess.TimeoutExpired:
                    h.kill()
        assert proc.poll() is None


def test_hung_replica_is_bypassed(lab_factory, tmp_path: Path) -> None:
    """One of two disks holding every object stops answering (1 KB/s) before anything is
    read: listings (manifest pages), small files in random order and a large file all come
    from the other copy within seconds — a request stuck on the hung disk is also asked of
    the other replica, and the hung disk gets no new requests."""
    lab, cfg_path, cfg = _lab_store(lab_factory, tmp_path, 2, shard_size_mb=16, copy_of_raw=2, write_ack=2)
    files = make_files(tmp_path / "in", 60, seed=4, lo=8 << 10, hi=128 << 10)
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(5).randbytes(12 << 20))
    with Store.open(cfg, init=True) as store:
        res = store.put_many(files + [big])
        define_view(store, "v", "".join(f"{r.sha256}  d{k % 3}/{Path(r.path).name}\n"
                                        for k, r in enumerate(res[:-1])).encode())
    hung = sorted(lab.disks)[0]
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt, wrap=lab.wrap) as proc:
        _drop_caches()
        lab.set_throttle(hung, read_mbps=1 / 1024, write_mbps=1, iops=2)
        try:
            t0 = time.monotonic()
            listed = subprocess.run(["ls", "-R", str(mnt / "views" / "v")], capture_output=True, text=True,
                                    timeout=60).stdout
            assert all(Path(f).name in listed for f in files)
            for k, r in random.Random(6).sample(list(enumerate(res[:-1])), 60):
                data = (mnt / "views" / "v" / f"d{k % 3}" / Path(r.path).name).read_bytes()
                assert hashlib.sha256(data).hexdigest() == r.sha256
            r = res[-1]
            data = (mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin").read_bytes()
            assert hashlib.sha256(data).hexdigest() == r.sha256
            elapsed = time.monotonic() - t0
            assert elapsed < 30, f"reads with one hung replica took {elapsed:.1f} s"
        finally:
            lab.set_throttle(hung, read_mbps=0, write_mbps=0, iops=0)
        assert proc.poll() is None
    log = (tmp_path / "mnt.log").read_text()
    assert "Traceback" not in log


class _Gate:
    """Every foreground thread of the reader's disk queues held (real requests wait queued
    behind them) until `open()`: what a reader's READs find when the disks are busy."""

    def __init__(self, reader) -> None:
        self.release, self.started = threading.Event(), threading.Semaphore(0)
        self.n = 0
        for q in reader.queues.values():
            for _ in range(sum(1 for t in q.threads if not t.name.startswith("ahead-"))):
                q.submit(("gate", self.n), self._hold)
                self.n += 1
        for _ in range(self.n):
            assert self.started.acquire(timeout=30)

    def _hold(self) -> None:
        self.started.release()
        self.release.wait()

    def open(self) -> None:
        self.release.set()


def _no_open_ops(tmp_path: Path, sizes: list[int], **recent):
    """A no-open HoardOps (the mount daemon's, without FUSE) over a real store of objects of
    `sizes` (large ones are streamed): (ops, [(inode, bytes)], closer)."""
    from hoardfs.fsd.mount.namespace import Namespace
    from hoardfs.fsd.mount.ops import HoardOps, _Recent
    from hoardfs.fsd.mount.reader import Reader
    from hoardfs.fsd.mount.watch import Watcher

    cfg = config.load(dir_disks_config(tmp_path, 2))
    store = Store.open(cfg, init=True)
    rng = random.Random(7)
    datas = [rng.randbytes(n) for n in sizes]
    shas = [r.sha256 for r in store.put_bytes_many(datas)]
    reader = Reader(store)
    ns = Namespace(store.index, str(cfg.ssd.zone_path("3A")), reader.get_object, get_nowait=reader.get_object_nowait)
    watcher = Watcher(store, reader, ns, "no-open", True)
    ns.visible = watcher.visible
    ops = HoardOps(ns, reader, watcher, no_open=True)
    if recent:
        ops.recent = _Recent(**recent)
    files = [(ns._file_number(bytes.fromhex(s) if isinstance(s, str) else s), d)
             for s, d in zip(shas, datas, strict=True)]

    def close() -> None:
        reader.close()
        store.close()

    return ops, files, close


async def _read(ops, inode: int, off: int, size: int, out: dict, key) -> None:
    import pyfuse3

    try:
        out[key] = await ops.read(inode, off, size)
    except pyfuse3.FUSEError as e:
        out[key] = f"errno {e.errno}"


def _two_reads(ops, first: tuple, second: tuple) -> dict:
    """READ `first` (inode, off, size) waiting on the gated disks, then READ `second`, then
    the disks let go: what each READ answered."""
    out: dict = {}

    async def main() -> None:
        ops.reader.token = trio.lowlevel.current_trio_token()
        gate = await trio.to_thread.run_sync(_Gate, ops.reader)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read, ops, *first, out, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_read, ops, *second, out, "second")
            await trio.testing.wait_all_tasks_blocked()
            gate.open()

    trio.run(main)
    return out


def test_no_open_two_readers_of_one_large_file_both_get_their_bytes(tmp_path: Path) -> None:
    """No-open: two readers of one large file share its stream (one state per inode). A READ
    far from the other reader's position moves the read-ahead window there — the pieces the
    other reader's READ is waiting for must still come, not be cancelled under it (EIO)."""
    from hoardfs.fsd.mount.reader import MAP_PIECE, SMALL_MAX

    ops, [(ino, data)], close = _no_open_ops(tmp_path, [SMALL_MAX + 4 * MAP_PIECE])
    try:
        far = SMALL_MAX + 2 * MAP_PIECE
        out = _two_reads(ops, (ino, 0, 128 << 10), (ino, far, 128 << 10))
        assert out["first"] == data[:128 << 10], out["first"] if isinstance(out["first"], str) else "wrong bytes"
        assert out["second"] == data[far:far + (128 << 10)]
    finally:
        close()


def test_no_open_a_read_in_flight_survives_its_file_being_evicted(tmp_path: Path) -> None:
    """No-open: more large files read at once than streams kept (RECENT_STREAMS; a data
    loader with many workers) evicts a file whose READ is still waiting for its pieces — that
    READ must still get its bytes, not EIO."""
    from hoardfs.fsd.mount.reader import MAP_PIECE, SMALL_MAX

    ops, [(a, da), (b, db)], close = _no_open_ops(tmp_path, [SMALL_MAX + MAP_PIECE] * 2, max_streams=1)
    try:
        out = _two_reads(ops, (a, MAP_PIECE - 10, 20), (b, 0, 128 << 10))
        assert out["first"] == da[MAP_PIECE - 10:MAP_PIECE + 10], out["first"] if isinstance(out["first"], str) else "wrong bytes"
        assert out["second"] == db[:128 << 10]
    finally:
        close()


def _served_when_idle(reader) -> int:
    """Requests the disk queues' threads have served, once none is pending (`served` counts a
    request just after its reader was handed the bytes)."""
    deadline = time.monotonic() + 10
    while any(q.pending for q in reader.queues.values()):
        assert time.monotonic() < deadline, "disk queues still busy"
        time.sleep(0.01)
    return sum(q.served for q in reader.queues.values())


def _shard_pages(root: Path, advice: int) -> None:
    """Every shard file under `root` read into the page cache (WILLNEED), or dropped from it."""
    for p in root.rglob("*.shard"):
        fd = os.open(p, os.O_RDONLY)
        try:
            if advice == os.POSIX_FADV_DONTNEED:
                os.posix_fadvise(fd, 0, 0, advice)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)


def _nowait_root(tmp_path: Path) -> Path:
    """A directory for the store whose file system reads with RWF_NOWAIT: tmp_path, or one in
    /var/tmp where tmp_path is a tmpfs (`make test-fast` puts it in /dev/shm), which refuses
    RWF_NOWAIT (EOPNOTSUPP) — there the reader always takes a disk thread, as it should."""
    probe = tmp_path / "nowait-probe"
    probe.write_bytes(b"x" * 4096)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        return tmp_path
    except OSError:
        return Path(tempfile.mkdtemp(prefix="hoard-nowait-", dir="/var/tmp"))
    finally:
        os.close(fd)
        probe.unlink()


def test_first_reads_of_page_cached_records_need_no_disk_thread(tmp_path: Path) -> None:
    """A first READ of a small object whose shard pages the page cache holds (cachestat) is
    read right on the trio thread — no disk queue request — once a replica file of its shard
    is kept open; with those pages evicted it goes to a disk thread, and the bytes are right."""
    root = _nowait_root(tmp_path)
    ops, files, close = _no_open_ops(root, [4096] * 200)
    try:
        reader = ops.reader
        assert any(root.rglob("*.shard"))

        def pages(advice: int) -> None:
            _shard_pages(root, advice)

        async def read_each(picked: list[tuple[int, bytes]]) -> None:
            ops.reader.token = trio.lowlevel.current_trio_token()
            for ino, data in picked:
                assert await ops.read(ino, 0, 1 << 20) == data

        trio.run(read_each, files[:1])  # the shard's first read: a disk thread, which keeps its file open
        first = _served_when_idle(reader)
        assert first >= 1
        # every page of the shards cached (not read by the mount), then records apart: none
        # continues the last, none read before. Another test dropping the machine's caches
        # meanwhile (drop_caches, in a parallel run) sends them to a disk thread: tried anew
        for picked in (files[20::20], files[25::40], files[45::40]):
            pages(os.POSIX_FADV_WILLNEED)
            trio.run(read_each, picked)
            if _served_when_idle(reader) == first:
                break
            first = _served_when_idle(reader)
        else:
            raise AssertionError("a page-cached record went to a disk thread, three times")
        pages(os.POSIX_FADV_DONTNEED)
        trio.run(read_each, files[30::40])  # (not the ones read above: ops keeps their bytes)
        assert _served_when_idle(reader) > first, "an evicted record was read on the trio thread"
    finally:
        close()
        if root != tmp_path:
            shutil.rmtree(root)


def test_a_lookup_in_a_page_cached_manifest_page_needs_no_disk_thread(tmp_path: Path) -> None:
    """A LOOKUP in a view directory whose manifest page is not parsed yet is answered on the
    trio thread when the page's bytes are in the page cache (no disk queue request, once a
    file of its shard is kept open); with them evicted it goes to a disk thread. The names
    found are the right objects either way."""
    from hoardfs.fsd.mount.namespace import ROOT

    root = _nowait_root(tmp_path)
    ops, files, close = _no_open_ops(root, [1000] * 60)
    try:
        reader = ops.reader
        shas = [ops.ns.nodes[ino].sha for ino, _ in files]
        # three directories of 20 files: a directory object each (more than INLINE_ENTRIES)
        define_view(reader.store, "v", "".join(f"{s.hex()}  d{k // 20}/f{k:03d}\n" for k, s in enumerate(shas)).encode())

        async def look(*names: str) -> bytes:
            ino = ROOT
            for name in names:
                ino = (await ops.lookup(ino, name.encode())).st_ino
            return ops.ns.nodes[ino].sha

        def lookups(*paths: str) -> list[bytes]:
            async def main() -> list[bytes]:
                reader.token = trio.lowlevel.current_trio_token()
                return [await look(*p.split("/")) for p in paths]
            ops.ns.trees.clear()  # no page parsed: each lookup needs its directory's page
            return trio.run(main)

        assert lookups("views/v/d0/f000") == [shas[0]]  # a disk thread, which keeps the shard file open
        first = _served_when_idle(reader)
        for _ in range(3):  # (tried anew when a parallel test's drop_caches evicted the pages meanwhile)
            _shard_pages(root, os.POSIX_FADV_WILLNEED)
            assert lookups("views/v/d1/f021", "views/v/d2/f042") == [shas[21], shas[42]]
            if _served_when_idle(reader) == first:
                break
            first = _served_when_idle(reader)
        else:
            raise AssertionError("a page-cached manifest page went to a disk thread, three times")
        _shard_pages(root, os.POSIX_FADV_DONTNEED)
        assert lookups("views/v/d1/f033") == [shas[33]]
        assert _served_when_idle(reader) > first, "an evicted manifest page was read on the trio thread"
    finally:
        close()
        if root != tmp_path:
            shutil.rmtree(root)
