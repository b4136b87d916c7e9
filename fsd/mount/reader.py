"""Verified reads for the mount, on per-disk queues, bridged to trio without a hop per request.

* **Small objects** (≤ `SMALL_MAX`) are read whole at open. How much of the shard around
  the record is read depends on how that shard is being read (`Window`, like the kernel's
  read-ahead window): a read that does not continue where the last read of the same shard
  ended — a shuffled data loader — fetches only its record, rounded to `ALIGN`, and so does
  the first that does (one random read in a few hundred lands near the last by chance in a
  shard of tiny records; two in a row do not); from the second in a row on, `MIN_WINDOW`
  ahead, four times more on each further miss up to `BLOCK`; from there on the shard is
  read in `BLOCK`-aligned blocks with up to `PREFETCH_BLOCKS` read ahead on the background
  lanes of all its replicas — a batch's files, stored together, stream at the speed of all
  its copies together. What read-ahead fetched is kept in an extent cache (`CACHE_BYTES`,
  LRU) until the reader comes to it, so neighbours come from memory; a record fetched alone
  is kept only in a small part of it (`LONE_BYTES`). A page read again (tiny objects share
  pages) comes from the kernel's page cache instead, on the trio thread without a hop:
  `preadv(RWF_NOWAIT)` on a replica file a worker thread left open, asked only for pages
  this reader read before, fails rather than waits when the kernel has dropped them.
* **Large objects**: 1 MiB pieces (`MAP_PIECE`), each checked against the object's chunk
  map (xxh3-128 per piece, recorded when it was stored) before it is served. The pieces
  read ahead per open file start at `FIRST_AHEAD`, double on each sequential request up to
  `MAX_AHEAD` and collapse to one on a seek. Without a chunk map, the object is read and
  sha256-checked once in full, and the map is recorded for next time.

Every record is checked (its header names the sha256 and length the index expects, the
payload matches its xxh3-128 — as every store read) before a byte is served. The replica a
request goes to is chosen per request by each disk's `DiskQueue.cost()` (queue depth ×
recent seconds per request), so concurrent readers spread over every disk holding a copy
and a slow or frozen disk loses new requests to the others. A piece that fails (EIO,
mismatch) is read from the next replica; the disk answering EIO is marked failed (as
everywhere in the store). Only when no replica is good does the caller get `ReadFailed`.

It stays one module past 500 lines: the read-ahead window, the replica choice and the one
hedged-read path share each open object's and shard's state and the descriptors kept open,
under one lock; what stands alone is apart already (the extent cache: extents.py; the
per-disk queues: queue.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import errno
import functools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import trio
import xxhash

from hoardfs.base.errors import HoardError
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.disks import pread_full
from hoardfs.fsd.core.records import MAP_PIECE, STREAM_THRESHOLD, ObjectNotFound, learn_map, verify_record
from hoardfs.fsd.mount.extents import Extents, all_set, set_bits
from hoardfs.fsd.mount.queue import BACKGROUND, DiskQueue, take_over
from hoardfs.fsd.store import Store

__all__ = ["Reader", "ReadFailed", "SMALL_MAX"]

log = logging.getLogger(__name__)

SMALL_MAX = STREAM_THRESHOLD
#: reads are rounded to this (the devices' block): a random record costs its size + < 8 KiB
ALIGN = 4096
#: the first read-ahead of a shard read in order; ×4 per miss up to BLOCK
MIN_WINDOW = 128 << 10
#: the read unit once a shard is read in order (and the largest window)
BLOCK = 4 << 20
#: blocks read ahead of an in-order reader at most, spread over the shard's replicas (32 MiB);
#: the window grows to it ×4 per refill (1, 4, 8 blocks)
PREFETCH_BLOCKS = 8
#: a read that starts this close to where the last one of the shard ended is "in order"
#: (a loader skipping a few files still streams): SEQ_SKIP records of its size and a page,
#: at most SEQ_SLACK. (A fixed 256 KiB held ~3,000 tiny records: in a 4 MiB shard of them one
#: shuffled read in eight "continued" the last, two in a row one in sixty — read-ahead nobody
#: came to, 23 MiB of the daemon's memory after 100,000 shuffled reads at 10^6 objects)
SEQ_SKIP = 8
SEQ_SLACK = 256 << 10
#: what read-ahead fetched (windows and blocks of shards read in order), kept for the reader
#: coming to it: up to PREFETCH_BLOCKS × BLOCK per shard being streamed
CACHE_BYTES = 256 << 20
#: records fetched alone (a read that continued nothing: a shuffled loader) are kept only this
#: much: their pages are in the kernel's page cache as well (no O_DIRECT here), and a page
#: read again — tiny objects share pages — is served from there without a thread hop
#: (`_small_nowait`), so a bigger copy in the daemon would be memory spent twice; what this
#: is for is the next read continuing one of the last few (a reader turning sequential
#: before its window has grown)
LONE_BYTES = 8 << 20
THREADS_PER_DISK = 2
#: pieces of a large object read ahead at open, and at most
FIRST_AHEAD = 2
MAX_AHEAD = 16
#: shards whose access pattern is remembered
SEQ_SHARDS = 4096
#: shard replica files kept open for reads from the page cache (`_small_nowait`)
OPEN_SHARDS = 64
#: a request not done after max(HEDGE_MIN, HEDGE_FACTOR × its expected time) is also sent
#: to another replica; whichever answers first is used (a hung disk delays nobody whose
#: data has another copy)
HEDGE_MIN = 0.5
HEDGE_FACTOR = 4


class ReadFailed(Exception):
    """No replica gave good bytes."""


class ObjectGone(ReadFailed):
    """The object is no longer in the store (gc collected it after the kernel was told its name)."""


@dataclass
class _Stream:
    """Read-ahead state of one open large object."""

    sha: bytes
    size: int
    lane: object
    disk: str = ""  # the replica its pieces are read from first (chosen at open)
    pieces: dict[int, cf.Future] = field(default_factory=dict)
    chunk_digests: bytes | None = None
    ahead: int = FIRST_AHEAD
    next_off: int = 0


def _open_read(disk, shard_hex: str, lo: int, hi: int, pattern: int) -> bytes:
    """Bytes [lo, hi) of a shard file (fewer at its end), telling the kernel how it is read:
    POSIX_FADV_RANDOM turns its own read-ahead off (else a 40 KiB read fetches 128 KiB),
    WILLNEED fetches a whole block in one request. A backend without files (an S3 disk) reads
    exactly these bytes with one ranged GET."""
    if not has_files(disk):
        return bytes(disk.read_exact(shard_hex, lo, hi - lo))
    fd = disk.open_fd(shard_hex)
    try:
        os.posix_fadvise(fd, lo, hi - lo, pattern)
        return pread_full(fd, hi - lo, lo)
    finally:
        os.close(fd)


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


#: cachestat(2) (Linux ≥ 6.5; the same number on every architecture): how many pages of a
#: range of a file the page cache holds, without reading or mapping it
_SYS_CACHESTAT = 451
_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_cachestat_works = [hasattr(_libc, "syscall")]


def resident(fd: int, off: int, length: int) -> bool:
    """Whether every page of bytes [off, off+length) of the file is in the page cache now
    (cachestat: no IO, nothing started). False where the kernel has no cachestat (ENOSYS, a
    seccomp filter's EPERM): then only pages this reader read before are asked for."""
    if not _cachestat_works[0] or length <= 0:
        return False
    rng, cs = _CacheStatRange(off, length), _CacheStat()
    if _libc.syscall(_SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(cs), 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            _cachestat_works[0] = False
        return False
    return cs.nr_cache >= (off + length - 1) // _PAGE - off // _PAGE + 1


def _continues(last_end: int, start: int, end: int) -> bool:
    """Whether a record at [start, end) continues a shard's reading that last ended at
    `last_end` (see SEQ_SKIP)."""
    return abs(start - last_end) <= min(SEQ_SLACK, ALIGN + SEQ_SKIP * (end - start))


def _close_all(fds: list[int]) -> None:
    """Close file descriptors taken out of `Reader.fds` — outside the reader's lock, which the
    trio thread takes on every small read: the last close of a shard file gc deleted frees its
    blocks, which a stalled disk can make slow."""
    for fd in fds:
        os.close(fd)


def _wake(token: trio.lowlevel.TrioToken, event: trio.Event, _done: cf.Future) -> None:
    """A done callback of a request's future (a worker thread): wakes the trio task waiting on `event`."""
    token.run_sync_soon(event.set)


class Reader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.queues: dict[str, DiskQueue] = {}
        self.speed: dict[str, float] = {}  # configured read MB/s per disk (disks[].read_mb_s; 100 if unset)
        self.lock = threading.Lock()
        self.cache = Extents(CACHE_BYTES, LONE_BYTES)
        self.inflight: dict[tuple[bytes, int], cf.Future] = {}  # block prefetches
        self.seq: OrderedDict[bytes, list[int]] = OrderedDict()  # shard → [next offset, window]
        #: (shard, disk uuid) → (fd, pages): replica files left open by worker threads for
        #: `_small_nowait`, and a bit per 4 KiB page this reader has read from each (so only
        #: what is likely in the page cache is asked for there: a miss would start a disk read
        #: of its own); read and closed only with the lock held (an fd closed under a reader
        #: could be reused)
        self.fds: OrderedDict[tuple[bytes, str], tuple[int, bytearray]] = OrderedDict()
        self.token: trio.lowlevel.TrioToken | None = None
        self.sync_disks()

    def sync_disks(self) -> None:
        """A queue for every disk the store has now (disks added while mounted get theirs)."""
        speeds = {d.label: d.read_mb_s for d in self.store.cfg.disks}
        queues = dict(self.queues)  # replaced whole: the trio thread reads it without the lock
        for u, d in list(self.store.disks.items()):
            if u not in queues:
                mb_s = self.speed[u] = speeds.get(d.label) or 100.0
                # seeded with a seek plus a 64 KiB transfer; measured from the first reads on
                queues[u] = DiskQueue(d.label, THREADS_PER_DISK, 0.008 + 0.0625 / mb_s)
        self.queues = queues

    def close(self) -> None:
        for q in self.queues.values():
            q.close()
        self.close_shards(lambda sid, uuid: True)

    def close_shards(self, which=None) -> None:
        """Close the kept-open shard files `which(shard id, disk uuid)` names; by default those
        the index no longer has on that disk (gc removed or moved the shard: an open file of it
        would keep its space taken)."""
        if which is None:
            def which(sid: bytes, uuid: str) -> bool:
                meta = self.store.index.get_shard(sid)
                return meta is None or uuid not in meta.replicas

        with self.lock:
            kept = list(self.fds)
        gone = [key for key in kept if which(*key)]  # (LMDB reads: not under the lock)
        with self.lock:
            closing = [self.fds.pop(key)[0] for key in gone if key in self.fds]
        _close_all(closing)

    def statistics(self) -> dict[str, dict[str, float]]:
        return {q.label: {"pending": q.pending, "pending_ahead": q.pending_bg, "served": q.served,
                          "seconds_per_read": round(q.seconds_per_read, 5)} for q in self.queues.values()}

    # -- trio bridge: wait for a future without a thread hop when it is already done ----------
    async def wait(self, fut: cf.Future):
        if not fut.done():
            if self.token is None:
                self.token = trio.lowlevel.current_trio_token()
            event = trio.Event()
            token = self.token
            fut.add_done_callback(lambda _f: token.run_sync_soon(event.set))
            await event.wait()
        return fut.result()

    async def _wait_for(self, fut: cf.Future, timeout: float) -> bool:
        """Wait up to `timeout` seconds for `fut`; whether it is done."""
        with trio.move_on_after(timeout):
            await self.wait(fut)
        return fut.done()

    async def _first_of(self, a: cf.Future, b: cf.Future):
        """The result of whichever of two requests for the same bytes succeeds first."""
        token = self.token or trio.lowlevel.current_trio_token()
        while True:
            for f in (a, b):
                if f.done() and f.exception() is None:
                    return f.result()
            if a.done() and b.done():
                return a.result()  # both failed: the first one's error
            event = trio.Event()
            for f in (a, b):
                f.add_done_callback(functools.partial(_wake, token, event))
            await event.wait()

    def _choose(self, meta, avoid: frozenset = frozenset()) -> str:
        """The replica that would finish a request first (DiskQueue.cost); among those within
        25 % of the best, the one used least recently, so equal disks share a lone reader."""
        costs = [(self.queues[d.uuid].cost(), d.uuid) for d in self.store.replica_order(meta)
                 if d.uuid in self.queues and d.uuid not in avoid]
        if not costs:
            return ""
        best = min(c for c, _ in costs)
        return min((u for c, u in costs if c <= best * 1.25), key=lambda u: self.queues[u].last_submit)

    def _plan(self, sha: bytes) -> tuple[object, str]:
        loc = self.store.index.lookup(sha)
        meta = self.store.index.get_shard(loc.shard_id) if loc is not None else None
        return meta, (self._choose(meta) if meta else "")

    def _deadline(self, uuid: str) -> float:
        return max(HEDGE_MIN, HEDGE_FACTOR * self._queue(uuid).cost())

    def _second(self, meta, first: str, what: str, slow_for: float) -> str:
        """The replica to ask too when `first` has not answered `what` in `slow_for` seconds
        (its deadline): another one the read may use, never the slow one; "" when there is none.
        The one decision of every hedged read (objects, manifest pages, stream pieces)."""
        second = self._choose(meta, avoid=frozenset({first})) if meta is not None else ""
        if second:
            log.info("mount: %s is slow (%.1f s) for %s; asking %s too", self._queue(first).label, slow_for, what,
                     self._queue(second).label)
        return second

    async def _race(self, fut: cf.Future, first: str, meta_of, what: str, again):
        """The hedged read, in the trio thread: `fut` (on `first`'s queue) if it is done by its
        deadline; else, when another replica exists, `again(second)` too (a future on that
        queue), and whichever succeeds first. `meta_of()` gives the shard's replicas, looked up
        only when `first` is slow."""
        deadline = self._deadline(first)
        if await self._wait_for(fut, deadline):
            return fut.result()
        second = self._second(meta_of(), first, what, deadline)
        if not second:
            return await self.wait(fut)
        return await self._first_of(fut, again(second))

    async def _hedged(self, sha: bytes, lane, fn, meta, first: str):
        """`fn(sha, first, avoid)` on the chosen replica's queue, hedged (`_race`)."""
        fut = self._queue(first).submit(lane, fn, sha, first, frozenset())
        return await self._race(fut, first, lambda: meta, f"object {sha.hex()[:12]}",
                                lambda second: self._queue(second).submit(lane, fn, sha, second, frozenset({first})))

    def _hedged_sync(self, sha: bytes, fn):
        """The same from a worker thread (manifest pages for the namespace): `_second` decides,
        concurrent.futures waits."""
        meta, first = self._plan(sha)
        fut = self._queue(first).submit("manifests", fn, sha, first, frozenset())
        deadline = self._deadline(first)
        done, _ = cf.wait([fut], timeout=deadline)
        second = "" if done else self._second(meta, first, f"manifest object {sha.hex()[:12]}", deadline)
        if not second:
            return fut.result()
        other = self._queue(second).submit("manifests", fn, sha, second, frozenset({first}))
        pending = {fut, other}
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in done:
                if f.exception() is None:
                    return f.result()
        return fut.result()

    def get_object(self, sha_hex: str) -> bytes:
        """A stored object's verified bytes (a manifest page), on the disks' queues with the
        replica choice and hedging of every mount read. Blocking: call it from a worker thread."""
        return self._hedged_sync(bytes.fromhex(sha_hex), self._object_sync)

    def get_object_nowait(self, sha_hex: str) -> bytes | None:
        """The same, only when it can be had right here without waiting for a disk (from the
        extent cache, or the page cache: `_small_nowait`); else None. For the trio thread."""
        sha = bytes.fromhex(sha_hex)
        loc = self.store.index.lookup(sha)
        if loc is None or loc.length > SMALL_MAX:
            return None
        data = self._small_cached(sha, loc)
        if data is None:
            data = self._small_nowait(sha, loc)
        return None if data is None else bytes(data)

    def _object_sync(self, sha: bytes, first: str, avoid: frozenset) -> bytes:
        def read(disk, meta, loc) -> bytes:
            data = self.store._read_record(disk, meta.hex, loc.offset, loc.length, sha)
            # its shard file kept open: the next page of it is read without a thread (get_object_nowait)
            self._keep_open(disk, meta, loc.offset - fmt.RECORD_HEADER_SIZE, loc.offset + loc.length)
            return data

        return self.store.from_replicas(sha, read, avoid, on_bad=self._bad_replica, first=first)

    def _choose_stream(self, meta) -> str:
        """The replica a large object streams from: the most bandwidth per request queued
        (a stream is one sequential read: bandwidth, not seek time, decides)."""
        disks = [d for d in self.store.replica_order(meta) if d.uuid in self.queues]
        if not disks:
            return ""
        return max(disks, key=lambda d: self.speed.get(d.uuid, 100.0) / (self.queues[d.uuid].pending + 1)).uuid

    def _queue(self, uuid: str) -> DiskQueue:
        """The disk's queue; with no disk to prefer (the object is not in the index: the read
        reports that) any queue."""
        if not uuid:
            return next(iter(self.queues.values()))
        q = self.queues.get(uuid)
        if q is None:
            self.sync_disks()
            q = self.queues.get(uuid) or next(iter(self.queues.values()))
        return q

    # -- small objects -------------------------------------------------------------------------
    async def read_small(self, sha: bytes, lane: object = 0) -> bytes:
        """The whole (small) object, verified. When its bytes are cached (a neighbour was read
        before) it is checked and returned right here, without a thread hop."""
        loc = self.store.index.lookup(sha)
        if loc is not None:
            data = self._small_cached(sha, loc)
            if data is None:
                data = self._small_nowait(sha, loc)
            if data is not None:
                return data
        meta, first = self._plan(sha)
        return await self._hedged(sha, lane, self._small_sync, meta, first)

    def _small_cached(self, sha: bytes, loc) -> bytes | None:
        sid = loc.shard_id
        start, end = loc.offset - fmt.RECORD_HEADER_SIZE, loc.offset + loc.length
        with self.lock:
            buf = self.cache.span(sid, start, end)
            if buf is None:
                return None
            st = self.seq.get(sid)
            refill = st is not None and st[1] >= BLOCK
            if st is not None:
                st[0] = max(st[0], end)
                # refill the read-ahead when half of it is used, and let it grow
                probe = (end - 1) // BLOCK + max(1, st[1] // BLOCK // 2)
                refill = refill and not self.cache.has(sid, probe * BLOCK) and (sid, probe) not in self.inflight
                if refill:
                    st[1] = min(st[1] * 4, PREFETCH_BLOCKS * BLOCK)
                    ahead = st[1] // BLOCK
        if refill:
            meta = self.store.index.get_shard(sid)
            if meta is not None:
                self._prefetch(meta, (end - 1) // BLOCK, ahead)
        try:  # header names this sha256 and length, payload matches its xxh3-128 (as every store read)
            return verify_record(memoryview(buf), 0, sha, loc.length)
        except fmt.ShardFormatError:
            return None  # the threaded path re-reads it and tries other replicas

    def _small_nowait(self, sha: bytes, loc) -> bytes | None:
        """The record from the kernel's page cache, verified, right here — or None when it is
        not all there. Asked only from a replica file a worker thread keeps open, and only for
        pages this reader read before or that `resident` (cachestat) finds cached now — a first
        read of a shard's page-cached records (written or read by another process: a shuffled
        first epoch) costs no thread hop —, and with RWF_NOWAIT: a page evicted since fails
        with EAGAIN instead of waiting for the disk, so the trio thread never does (the read
        the kernel then starts covers just that page: the file is opened POSIX_FADV_RANDOM)."""
        sid = loc.shard_id
        start, end = loc.offset - fmt.RECORD_HEADER_SIZE, loc.offset + loc.length
        first, last = start // ALIGN, (end - 1) // ALIGN
        with self.lock:
            for uuid in self.queues:  # (the disks: a few)
                kept = self.fds.get((sid, uuid))
                if kept is not None and self.store.usable(uuid) and (
                        all_set(kept[1], first, last) or resident(kept[0], start, end - start)):
                    break
            else:
                return None
            buf = bytearray(end - start)
            try:
                if os.preadv(kept[0], [buf], start, os.RWF_NOWAIT) != len(buf):
                    return None
            except OSError:  # EAGAIN: evicted since (EOPNOTSUPP: no such reads here)
                return None
            set_bits(kept[1], first, last)
            self.fds.move_to_end((sid, uuid))
            st = self.seq.get(sid)  # where this shard's last read ended, as a read from disk sets it
            if st is not None and _continues(st[0], start, end):
                st[0] = max(st[0], end)  # a reader going on in order still counts as one
            elif st is not None:
                st[0], st[1] = end, 0  # a jump: the next read is in order only if it continues this one
        try:
            return verify_record(memoryview(buf), 0, sha, loc.length)
        except fmt.ShardFormatError:
            return None  # the threaded path reads it again and tries other replicas

    def _keep_open(self, disk, meta, lo: int, hi: int) -> None:
        """(A worker thread, after a good read of bytes [lo, hi) of the shard from `disk`.)
        Keep a file of the shard open for `_small_nowait`, and mark those pages read."""
        if not has_files(disk):
            return  # (an S3 disk: no descriptor to keep; each read is a ranged GET)
        key = (meta.shard_id, disk.uuid)
        with self.lock:
            kept = self.fds.get(key)
            if kept is not None:
                set_bits(kept[1], lo // ALIGN, (hi - 1) // ALIGN)
                return
        try:
            fd = disk.open_fd(meta.hex)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:
            return
        closing = []
        with self.lock:
            if key in self.fds:
                closing.append(fd)
            else:
                pages = bytearray()
                set_bits(pages, lo // ALIGN, (hi - 1) // ALIGN)
                self.fds[key] = (fd, pages)
                while len(self.fds) > OPEN_SHARDS:
                    closing.append(self.fds.popitem(last=False)[1][0])
        _close_all(closing)

    def _window(self, sid: bytes, start: int, end: int) -> int:
        """How far past this record to read: 0 for a read that does not continue the shard's
        last one (random), and for the first that does; from the second in a row on, the
        previous window ×4 (from MIN_WINDOW, up to 8 blocks). (A random read lands near the
        last one by chance now and then — see SEQ_SKIP: two in a row almost never do. The
        window -1 marks "continued once".)"""
        with self.lock:
            st = self.seq.get(sid)
            if st is not None and _continues(st[0], start, end):
                window = -1 if st[1] == 0 else min(PREFETCH_BLOCKS * BLOCK, max(MIN_WINDOW, st[1] * 4))
            else:
                window = 0
            self.seq[sid] = [end, window]
            self.seq.move_to_end(sid)
            while len(self.seq) > SEQ_SHARDS:
                self.seq.popitem(last=False)
            return max(window, 0)

    def _small_sync(self, sha: bytes, first: str, avoid: frozenset = frozenset()) -> bytes:
        def read(disk, meta, loc) -> bytes:
            start, end = loc.offset - fmt.RECORD_HEADER_SIZE, loc.offset + loc.length
            window = self._window(loc.shard_id, start, end)
            try:
                if window >= BLOCK:
                    buf: bytes | memoryview = self._blocks(disk, meta, start, end)
                    self._prefetch(meta, (end - 1) // BLOCK, window // BLOCK)
                else:
                    lo = start - start % ALIGN
                    hi = -(-max(end, start + window) // ALIGN) * ALIGN
                    got = _open_read(disk, meta.hex, lo, hi,
                                     os.POSIX_FADV_WILLNEED if window else os.POSIX_FADV_RANDOM)
                    if len(got) < end - lo:
                        raise fmt.ShardFormatError(f"shard {meta.hex} on {disk.label} ends at {lo + len(got)}, "
                                                   f"before the record's end {end}")
                    with self.lock:
                        self.cache.add(loc.shard_id, lo, got, lone=not window)
                    buf = memoryview(got)[start - lo:end - lo]  # (no copy)
                data = verify_record(memoryview(buf), 0, sha, loc.length, f" (shard {meta.hex} on {disk.label})")
                self._keep_open(disk, meta, start, end)
                return data
            except (OSError, fmt.ShardFormatError):
                with self.lock:  # bad bytes must not be served to the next reader
                    self.cache.evict(loc.shard_id, start, end)
                raise

        return self._from_replicas(sha, f"object {sha.hex()}", read, first, avoid)

    def _blocks(self, disk, meta, start: int, end: int) -> bytes:
        first, last = start // BLOCK, (end - 1) // BLOCK
        parts = [self._block(disk, meta, b) for b in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        lo = start - first * BLOCK
        return joined[lo:lo + (end - start)]

    def _block(self, disk, meta, b: int) -> bytes:
        sid = meta.shard_id
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, meta.size or (b + 1) * BLOCK)
        with self.lock:
            blk = self.cache.span(sid, lo, hi)
            fut = self.inflight.get((sid, b)) if blk is None else None
        if blk is not None:
            return blk
        if fut is not None and not take_over(fut):
            try:  # a prefetch thread (maybe another replica's) is reading it right now
                blk = fut.result(timeout=HEDGE_MIN)
            except cf.TimeoutError:
                blk = None  # that disk is slow: read it here (this thread's disk)
            if blk is not None:
                return blk
        with self.lock:  # the part the window reads before it reached BLOCK already hold
            have = self.cache.covered(sid, lo, hi)
        got = _open_read(disk, meta.hex, have, (b + 1) * BLOCK, os.POSIX_FADV_WILLNEED)
        with self.lock:
            self.cache.add(sid, have, got)
            blk = self.cache.span(sid, lo, hi)
        if blk is None:  # evicted in between (a cache far too small): what was just read will do
            blk = got if have == lo else _open_read(disk, meta.hex, lo, (b + 1) * BLOCK, os.POSIX_FADV_WILLNEED)
        return blk

    def _prefetch(self, meta, after: int, count: int) -> None:
        """Read the next `count` blocks of the shard in the background, each from the replica
        that would finish it first, so a directory of small files streams at the speed of all
        its copies together."""
        disks = self.store.replica_order(meta)
        if not disks or not meta.size:
            return
        last = (meta.size - 1) // BLOCK
        for b in range(after + 1, min(after + 1 + count, last + 1)):
            key = (meta.shard_id, b)
            with self.lock:
                if key in self.inflight or self.cache.has(meta.shard_id, b * BLOCK):
                    continue
                open_ = [d for d in disks if d.uuid in self.queues and not self.queues[d.uuid].background_full()]
                if not open_:
                    return
                disk = min(open_, key=lambda d: (self.queues[d.uuid].pending_bg + 1) * self.queues[d.uuid].seconds_per_read)
                fut = self.queues[disk.uuid].submit(BACKGROUND, self._prefetch_one, disk, meta, b)
                self.inflight[key] = fut
            fut.add_done_callback(functools.partial(self._done_prefetch, key))

    def _done_prefetch(self, key, _fut: object = None) -> None:
        with self.lock:
            self.inflight.pop(key, None)

    def _prefetch_one(self, disk, meta, b: int) -> bytes | None:
        try:
            blk = _open_read(disk, meta.hex, b * BLOCK, (b + 1) * BLOCK, os.POSIX_FADV_WILLNEED)
        except OSError:
            return None  # the foreground read tries again and handles the error
        with self.lock:
            self.cache.add(meta.shard_id, b * BLOCK, blk)
        return blk

    # -- replicas ------------------------------------------------------------------------------
    def _from_replicas(self, sha: bytes, what: str, read, first: str = "", avoid: frozenset = frozenset()):
        """`read(disk, meta, loc)` on the object's usable replicas — `first` first — until one
        gives good bytes (Store.from_replicas: a replica that fails is reported — EIO marks its
        disk failed — and skipped; if gc moved the object meanwhile it is looked up again)."""
        try:
            return self.store.from_replicas(sha, read, avoid, on_bad=self._bad_replica, first=first)
        except ObjectNotFound as e:
            raise ObjectGone(f"{what}: {e.message}") from None
        except HoardError as e:
            raise ReadFailed(f"{what}: {e.message}") from None

    def _bad_replica(self, disk, meta, e: Exception) -> None:
        log.warning("mount: replica of shard %s on %s unreadable: %s; trying another", meta.hex, disk.label, e)
        self.store.bad_replica(disk, meta, "read", e)

    # -- large objects -------------------------------------------------------------------------
    def open_stream(self, sha: bytes, size: int, lane: object = 0) -> _Stream:
        """Read-ahead state for a large object; its first pieces are requested right away, so
        the disk is busy while the kernel is still between open() and the first read()."""
        digests = self.store.index.get_chunks(sha)
        if digests is not None and len(digests) != 16 * -(-size // MAP_PIECE):
            digests = None  # a map of another granularity: learn it again
        st = _Stream(sha, size, lane, chunk_digests=digests)
        loc = self.store.index.lookup(sha)
        meta = self.store.index.get_shard(loc.shard_id) if loc else None
        st.disk = self._choose_stream(meta) if meta else ""
        if digests is not None:
            self._want(st, 0, min(FIRST_AHEAD, -(-size // MAP_PIECE)) - 1)
        return st

    def _want(self, st: _Stream, first: int, last: int) -> None:
        q = self._queue(st.disk)
        for i in range(first, min(last, (st.size - 1) // MAP_PIECE) + 1):
            if i not in st.pieces:
                st.pieces[i] = q.submit(st.lane, self._piece_sync, st, i)

    async def read_stream(self, st: _Stream, off: int, size: int) -> bytes:
        end = min(off + size, st.size)
        if off >= end:
            return b""
        first, last = off // MAP_PIECE, (end - 1) // MAP_PIECE
        # in order: near where the last request ended (the kernel may send its read-ahead
        # requests slightly out of order)
        in_order = st.next_off - 2 * MAP_PIECE <= off <= st.next_off + 2 * MAP_PIECE
        st.next_off = max(st.next_off, end) if in_order else end
        if first == last and in_order:  # the common case: a 128 KiB request inside one verified piece
            fut = st.pieces.get(first)
            ahead = first + max(1, st.ahead // 2)  # refill the read-ahead when it runs half empty
            if (fut is not None and fut.done() and not fut.cancelled()
                    and (ahead in st.pieces or ahead * MAP_PIECE >= st.size)):
                piece = fut.result()
                lo = off - first * MAP_PIECE
                return piece[lo:lo + end - off]
        if st.chunk_digests is None:
            q = self._queue(st.disk)
            await self.wait(q.submit(st.lane, self._learn_chunks, st))
        # the window: doubled while the reader goes on in order, one piece after a seek
        st.ahead = min(MAX_AHEAD, st.ahead * 2) if in_order else 1
        self._want(st, first, last + st.ahead)
        for i in [k for k in st.pieces if k < first - 1 or k > last + st.ahead]:  # keep one piece behind
            st.pieces.pop(i).cancel()
        out = []
        for i in range(first, last + 1):
            piece = await self._piece(st, i)
            lo = max(off - i * MAP_PIECE, 0)
            hi = min(end - i * MAP_PIECE, len(piece))
            out.append(piece[lo:hi])
        return out[0] if len(out) == 1 else b"".join(out)

    async def _piece(self, st: _Stream, i: int) -> bytes:
        """Piece i, hedged (`_race`): if its disk does not answer in time, the stream moves to
        another replica (this piece and the ones after it). A piece cancelled while this READ
        waits for it is asked for again: a stream is shared by every reader of its file
        (no-open: state per inode), and another reader's READ elsewhere moves its window, a
        hedge moves it to another disk, an eviction lets it go (ops._Recent) — none of which
        may fail a READ already waiting (EIO)."""
        while True:
            fut = st.pieces.get(i)
            if fut is None or fut.cancelled():
                fut = st.pieces[i] = self._queue(st.disk).submit(st.lane, self._piece_sync, st, i)
            slow = st.disk

            def move(other: str, slow: str = slow) -> cf.Future:
                st.disk = other
                for k in [k for k in st.pieces if k > i and not st.pieces[k].running()]:
                    st.pieces.pop(k).cancel()
                return self._queue(other).submit(st.lane, self._piece_sync, st, i, frozenset({slow}))

            try:
                return await self._race(fut, slow, lambda: self._plan(st.sha)[0],
                                        f"object {st.sha.hex()[:12]} (streamed)", move)
            except cf.CancelledError:
                continue

    def _piece_sync(self, st: _Stream, i: int, avoid: frozenset = frozenset()) -> bytes:
        length = min(MAP_PIECE, st.size - i * MAP_PIECE)
        assert st.chunk_digests is not None  # a stream is read in pieces once its digests are known
        want = st.chunk_digests[i * 16:(i + 1) * 16]

        def read(disk, meta, loc) -> bytes:
            off = loc.offset + i * MAP_PIECE
            piece = _open_read(disk, meta.hex, off, off + length, os.POSIX_FADV_NORMAL)
            if len(piece) != length or xxhash.xxh3_128_digest(piece) != want:
                raise fmt.ShardFormatError(f"piece {i} of {st.sha.hex()[:12]}… does not match its chunk map")
            return piece

        return self._from_replicas(st.sha, f"object {st.sha.hex()} piece {i}", read, st.disk, avoid)

    def _learn_chunks(self, st: _Stream) -> None:
        """No chunk map yet (stored before maps existed, or index rebuilt): stream the record
        once from the first good replica — header, xxh3-128 and sha256 of the whole payload
        checked, one piece in memory at a time — and record the map for next time."""
        def read(disk, meta, loc) -> bytes:
            return learn_map(lambda off, n: _open_read(disk, meta.hex, off, off + n, os.POSIX_FADV_SEQUENTIAL),
                             f"shard {meta.hex} on {disk.label}", loc, st.sha)

        if st.chunk_digests is None:
            st.chunk_digests = self._from_replicas(st.sha, f"object {st.sha.hex()}", read, st.disk)
            self.store.index.put_chunks(st.sha, st.chunk_digests)
