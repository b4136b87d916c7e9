"""Verified reads for the mount, on per-disk threads, bridged to trio without a hop per request.

* Small objects (≤ `SMALL_MAX`): the shard bytes around the record are read in
  `BLOCK`-sized, shard-aligned blocks into an LRU block cache — neighbours stored in the
  same shard (a batch's files, usually) then come from memory, and the next blocks are
  read ahead from all replicas at once. The record is checked (its header names the
  sha256 and length the index expects, the payload matches its xxh3-128 — as every store
  read) before a byte is served; the whole object is kept with the open file.
* Large objects: 1 MiB pieces (`MAP_PIECE`) read ahead (`READ_AHEAD` pieces) on the disk's threads,
  each checked against the object's chunk map (xxh3-128 per piece, recorded when it was
  stored) before it is served. Without a chunk map, the object is read and sha256-checked
  once in full, and the map is recorded for next time.

A piece that fails (EIO, mismatch) is read from the next replica; the disk answering EIO
is marked failed (as everywhere in the store). Only when no replica is good does the
caller get `ReadFailed` (→ EIO). Each disk has `THREADS_PER_DISK` threads: a slow disk
slows only the files on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import trio
import xxhash

from fsd import shardfmt as fmt
from fsd.disks import pread_full
from fsd.store import MAP_PIECE, STREAM_THRESHOLD, Store, learn_map, verify_record

log = logging.getLogger(__name__)

BLOCK = 4 << 20
SMALL_MAX = STREAM_THRESHOLD
READ_AHEAD = 8
THREADS_PER_DISK = 2
CACHE_BYTES = 256 << 20
#: blocks read ahead of a small-object read, spread over the shard's replicas (32 MiB)
PREFETCH_BLOCKS = 8


class ReadFailed(Exception):
    """No replica gave good bytes."""


@dataclass
class _Stream:
    """Read-ahead state of one open large object."""

    sha: bytes
    size: int
    pieces: dict[int, cf.Future] = field(default_factory=dict)
    chunk_digests: bytes | None = None


def _pread(disk, shard_hex: str, offset: int, length: int, willneed: bool = False) -> bytes:
    fd = os.open(disk.find(shard_hex), os.O_RDONLY)
    try:
        if willneed:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        return pread_full(fd, length, offset)
    finally:
        os.close(fd)


def _read_block(disk, shard_hex: str, b: int) -> bytes:
    # Blocks are read every other one per replica: the kernel would not see a sequential
    # reader and would fetch 4 MiB in small synchronous steps (about half the disk's rate).
    # WILLNEED asks for the whole block at once.
    return _pread(disk, shard_hex, b * BLOCK, BLOCK, willneed=True)


class Reader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pools = {u: cf.ThreadPoolExecutor(THREADS_PER_DISK, thread_name_prefix=f"read-{d.label}")
                      for u, d in store.disks.items()}
        # prefetches run on their own thread per disk: a foreground read may wait for one,
        # and must never wait for work queued behind itself
        self.prefetchers = {u: cf.ThreadPoolExecutor(1, thread_name_prefix=f"ahead-{d.label}")
                            for u, d in store.disks.items()}
        self.inflight: dict[tuple[bytes, int], cf.Future] = {}
        self.queued = {u: 0 for u in store.disks}  # prefetches waiting or running, per disk
        speeds = {d.label: d.read_mb_s for d in store.cfg.disks}
        self.speed = {u: speeds.get(d.label) or 100.0 for u, d in store.disks.items()}
        self.blocks: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self.cached = 0
        self.lock = threading.Lock()
        self.token: trio.lowlevel.TrioToken | None = None

    def close(self) -> None:
        for p in [*self.pools.values(), *self.prefetchers.values()]:
            p.shutdown(wait=False, cancel_futures=True)

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

    # -- small objects -------------------------------------------------------------------------
    async def read_small(self, sha: bytes) -> bytes:
        """The whole (small) object, verified. When its blocks are cached (a neighbour was read
        before) it is checked and returned right here, without a thread hop."""
        data = self._small_cached(sha)
        if data is not None:
            return data
        return await self.wait(self._first_disk_pool(sha).submit(self._small_sync, sha))

    def _small_cached(self, sha: bytes) -> bytes | None:
        loc = self.store.index.lookup(sha)
        if loc is None:
            return None
        start = loc.offset - fmt.RECORD_HEADER_SIZE
        end = loc.offset + loc.length
        first, last = start // BLOCK, (end - 1) // BLOCK
        with self.lock:
            blocks = [self.blocks.get((loc.shard_id, b)) for b in range(first, last + 1)]
        if any(b is None for b in blocks):
            return None
        probe = (loc.shard_id, last + PREFETCH_BLOCKS // 2)  # refill the read-ahead when half of it is used
        if probe not in self.blocks and probe not in self.inflight:
            meta = self.store.index.get_shard(loc.shard_id)
            if meta is not None:
                self._prefetch(meta, last)
        joined = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        lo = start - first * BLOCK
        try:  # header names this sha256 and length, payload matches its xxh3-128 (as every store read)
            return verify_record(memoryview(joined)[lo:lo + end - start], 0, sha, loc.length)
        except fmt.ShardFormatError:
            return None  # the threaded path re-reads it and tries other replicas

    def _first_disk_pool(self, sha: bytes) -> cf.ThreadPoolExecutor:
        loc = self.store.index.lookup(sha)
        meta = self.store.index.get_shard(loc.shard_id) if loc else None
        order = self.store.replica_order(meta) if meta else []
        return self.pools[order[0].uuid] if order else next(iter(self.pools.values()))

    def _from_replicas(self, sha: bytes, what: str, read):
        """`read(disk, meta, loc)` on the object's usable replicas in order until one gives
        good bytes (Store.from_replicas: a replica that fails is reported — EIO marks its disk
        failed — and skipped; if gc moved the object meanwhile it is looked up again)."""
        from fsd.errors import HoardError

        try:
            return self.store.from_replicas(sha, read, on_bad=self._bad_replica)
        except HoardError as e:
            raise ReadFailed(f"{what}: {e.message}") from None

    def _small_sync(self, sha: bytes) -> bytes:
        def read(disk, meta, loc) -> bytes:
            start, end = loc.offset - fmt.RECORD_HEADER_SIZE, loc.offset + loc.length
            try:
                buf = self._span(disk, meta.hex, loc.shard_id, start, end)
                self._prefetch(meta, (end - 1) // BLOCK)
                return verify_record(memoryview(buf), 0, sha, loc.length, f" (shard {meta.hex} on {disk.label})")
            except (OSError, fmt.ShardFormatError):
                self._evict(loc.shard_id, start, end)  # bad blocks must not be served to the next reader
                raise

        return self._from_replicas(sha, f"object {sha.hex()}", read)

    def _span(self, disk, shard_hex: str, sid: bytes, start: int, end: int) -> bytes:
        first, last = start // BLOCK, (end - 1) // BLOCK
        parts = [self._get_block(disk, shard_hex, sid, b) for b in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        lo = start - first * BLOCK
        return joined[lo:lo + (end - start)]

    def _get_block(self, disk, shard_hex: str, sid: bytes, b: int) -> bytes:
        key = (sid, b)
        with self.lock:
            blk = self.blocks.get(key)
            if blk is not None:
                self.blocks.move_to_end(key)
                return blk
            fut = self.inflight.get(key)
        if fut is not None:
            blk = fut.result()  # a prefetch thread is reading it right now
            if blk is not None:
                return blk
        blk = _read_block(disk, shard_hex, b)
        self._keep(key, blk)
        return blk

    def _prefetch(self, meta, after: int) -> None:
        """Read the next blocks of the shard in the background, alternating replicas, so a
        directory of small files streams at the speed of all its copies together."""
        disks = self.store.replica_order(meta)
        if not disks or not meta.size:
            return
        last = (meta.size - 1) // BLOCK
        for b in range(after + 1, min(after + 1 + PREFETCH_BLOCKS, last + 1)):
            key = (meta.shard_id, b)
            with self.lock:
                if key in self.blocks or key in self.inflight:
                    continue
                # the replica that would finish it first, by its queue and its speed (disks[].read_mb_s)
                disk = min(disks, key=lambda d: (self.queued[d.uuid] + 1) / self.speed[d.uuid])
                self.queued[disk.uuid] += 1
                self.inflight[key] = self.prefetchers[disk.uuid].submit(self._prefetch_one, disk, meta.hex, key)

    def _prefetch_one(self, disk, shard_hex: str, key: tuple[bytes, int]) -> bytes | None:
        try:
            blk = _read_block(disk, shard_hex, key[1])
            self._keep(key, blk)
            return blk
        except OSError:
            return None  # the foreground read tries again and handles the error
        finally:
            with self.lock:
                self.inflight.pop(key, None)
                self.queued[disk.uuid] -= 1

    def _keep(self, key: tuple[bytes, int], blk: bytes) -> None:
        with self.lock:
            if key in self.blocks:
                return
            self.blocks[key] = blk
            self.cached += len(blk)
            while self.cached > CACHE_BYTES:
                _, old = self.blocks.popitem(last=False)
                self.cached -= len(old)

    def _evict(self, sid: bytes, start: int, end: int) -> None:
        with self.lock:
            for b in range(start // BLOCK, (end - 1) // BLOCK + 1):
                old = self.blocks.pop((sid, b), None)
                if old is not None:
                    self.cached -= len(old)

    def _bad_replica(self, disk, meta, e: Exception) -> None:
        log.warning("mount: replica of shard %s on %s unreadable: %s; trying another", meta.hex, disk.label, e)
        if isinstance(e, OSError) and e.errno in (errno.EIO, errno.EBADMSG):
            e = OSError(errno.EIO, e.strerror or "I/O error")
        self.store.disk_error(disk, "read", e, meta.hex)
        self.store.index.queue_repair(meta.shard_id, disk.uuid, str(e))

    # -- large objects -------------------------------------------------------------------------
    def open_stream(self, sha: bytes, size: int) -> _Stream:
        """Read-ahead state for a large object; its first pieces are requested right away, so
        the disk is busy while the kernel is still between open() and the first read()."""
        digests = self.store.index.get_chunks(sha)
        if digests is not None and len(digests) != 16 * -(-size // MAP_PIECE):
            digests = None  # a map of another granularity: learn it again
        st = _Stream(sha, size, chunk_digests=digests)
        if digests is not None:
            pool = self._first_disk_pool(sha)
            for i in range(min(READ_AHEAD, -(-size // MAP_PIECE))):
                st.pieces[i] = pool.submit(self._piece_sync, st, i)
        return st

    async def read_stream(self, st: _Stream, off: int, size: int) -> bytes:
        end = min(off + size, st.size)
        if off >= end:
            return b""
        first, last = off // MAP_PIECE, (end - 1) // MAP_PIECE
        if first == last:  # the common case: a 128 KiB request inside one verified piece
            fut = st.pieces.get(first)
            ahead = first + READ_AHEAD // 2  # refill the read-ahead when it runs half empty
            if fut is not None and fut.done() and (ahead in st.pieces or ahead * MAP_PIECE >= st.size):
                piece = fut.result()
                lo = off - first * MAP_PIECE
                return piece[lo:lo + end - off]
        pool = self._first_disk_pool(st.sha)
        if st.chunk_digests is None:
            await self.wait(pool.submit(self._learn_chunks, st))
        for i in range(first, min(last + READ_AHEAD, (st.size - 1) // MAP_PIECE) + 1):
            if i not in st.pieces:
                st.pieces[i] = pool.submit(self._piece_sync, st, i)
        for i in [k for k in st.pieces if k < first - 1]:  # keep one piece behind for small re-reads
            st.pieces.pop(i).cancel()
        out = []
        for i in range(first, last + 1):
            piece = await self.wait(st.pieces[i])
            lo = max(off - i * MAP_PIECE, 0)
            hi = min(end - i * MAP_PIECE, len(piece))
            out.append(piece[lo:hi])
        return out[0] if len(out) == 1 else b"".join(out)

    def _piece_sync(self, st: _Stream, i: int) -> bytes:
        length = min(MAP_PIECE, st.size - i * MAP_PIECE)
        want = st.chunk_digests[i * 16:(i + 1) * 16]

        def read(disk, meta, loc) -> bytes:
            piece = _pread(disk, meta.hex, loc.offset + i * MAP_PIECE, length)
            if len(piece) != length or xxhash.xxh3_128_digest(piece) != want:
                raise fmt.ShardFormatError(f"piece {i} of {st.sha.hex()[:12]}… does not match its chunk map")
            return piece

        return self._from_replicas(st.sha, f"object {st.sha.hex()} piece {i}", read)

    def _learn_chunks(self, st: _Stream) -> None:
        """No chunk map yet (stored before maps existed, or index rebuilt): stream the record
        once from the first good replica — header, xxh3-128 and sha256 of the whole payload
        checked, one piece in memory at a time — and record the map for next time."""
        def read(disk, meta, loc) -> bytes:
            return learn_map(lambda off, n: _pread(disk, meta.hex, off, n), f"shard {meta.hex} on {disk.label}",
                             loc, st.sha)

        st.chunk_digests = self._from_replicas(st.sha, f"object {st.sha.hex()}", read)
        self.store.index.put_chunks(st.sha, st.chunk_digests)
