"""Several open shards at once, so that every disk writes: K ShardWriters and a chooser.

With write_ack = 2 on four disks, one open shard keeps two disks writing and two idle. A
SpreadWriter owns K ShardWriters (`store.open_shards`; "auto": `auto_open_shards`), each with
its own open shard on its own set of write_ack disks (placement spreads the sets over the
disks: hoardfs.fsd.core.placement, `spread`), and gives the put path (hoardfs.fsd.io.put) the
interface of one ShardWriter:

- records are appended to the current writer; when a group is complete (`start_commit`) its
  fdatasync is queued and the next group goes to the writer whose disks are least ahead of
  their share of the batch (`shares`: by the disks' bandwidth, the configured or measured
  MB/s; by free space when no speed is known) — so every disk writes all the time at its
  own speed;
- every writer keeps its own fdatasync/commit cycle, so the ack rule is the one of a single
  ShardWriter: a record is acknowledged only once its own shard's group is fsynced on
  write_ack disks and indexed (hoardfs.fsd.io.writer);
- a failing replica is handled in the shard it hit: `abandon_group` cuts that writer's
  uncommitted group, seals its shard and the group is written again into a new shard on
  other disks; the other open shards go on (a disk that failed is excluded for all of them,
  and one of them with a shard there cuts its next group the same way: `LeftOut`);
- a new shard is placed only where there is room for it beside what the open ones may still
  append (hoardfs.fsd.store.Store.open_bytes); when there is none, the record goes to another
  open shard (`_append`), and the batch is refused only once none is left open;
- each shard is sealed when full by its writer; `seal` (the end of a batch) seals them all,
  and `recover_orphans` seals every shard left open by a crash, however many.

Shards are opened lazily: a batch of one group opens one shard.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from hoardfs.fsd.core.placement import NoSpace
from hoardfs.fsd.io.planner import bandwidths
from hoardfs.fsd.io.writer import ReplicaFailed, ShardWriter, _Pending

if TYPE_CHECKING:
    from pathlib import Path

    from hoardfs.fsd.core.index import ObjectLoc
    from hoardfs.fsd.io.writer import OpenShard
    from hoardfs.fsd.store import Store

T = TypeVar("T")

#: the smallest group `group_bytes` gives (a tiny shard size must not make a group a file)
MIN_GROUP = 64 << 10
#: the most open shards "auto" gives
AUTO_MAX = 6


def auto_open_shards(disks: int, write_ack: int) -> int:
    """One shard per set of write_ack disks out of `disks` (at most AUTO_MAX): enough distinct
    sets that the groups can be spread so every disk writes at its own speed (with sets of two
    out of four disks, only pairs that overlap let a fast disk take more than a slow one)."""
    if disks <= write_ack:
        return 1
    return min(math.comb(disks, write_ack), AUTO_MAX)


class SpreadWriter:
    """K ShardWriters of one class and the chooser of the writer each group goes to."""

    def __init__(self, store: Store, klass: str) -> None:
        self.store, self.klass = store, klass
        k = store.cfg.store.open_shards
        if k == "auto":
            k = auto_open_shards(sum(1 for c in store.candidates() if c.usable), store.cfg.store.write_ack)
        self.lanes: dict[str, ThreadPoolExecutor] = {}  # one per disk, shared: a disk's writes stay in order
        self.excluded: set[str] = set()  # disks that failed, for every writer
        spread = self._open_sets if k > 1 else None  # (one open shard: placed as it always was)
        self.writers = [ShardWriter(store, klass, self.lanes, self.excluded, spread) for _ in range(k)]
        self.current = self.writers[0]
        self.choose = False  # the next record's writer is to be chosen (`_next_writer`) first
        self.failed: ShardWriter | None = None  # the writer whose replica raised the last ReplicaFailed
        self.sent: dict[str, int] = {}  # bytes appended per disk uuid since the last seal

    @property
    def shard(self) -> OpenShard | None:
        """The open shard records are appended to now."""
        return self.current.shard

    @property
    def group_bytes(self) -> int:
        """Bytes of new records appended before a group's fdatasync is queued (hoardfs.fsd.io.put).
        With K open shards a group is the store's group × write_ack / K: each writer holds up to
        two groups (one being fsynced, one appended), so together they hold about what one
        shard's writer did; and at most a quarter of a shard, so each shard takes several
        groups and the groups follow the disks' shares even where shards are small."""
        k = len(self.writers)
        if k == 1:
            return self.store.group_bytes
        share = self.store.group_bytes * self.store.cfg.store.write_ack // k
        return max(MIN_GROUP, min(share, self.store.shard_bytes // 4))

    @property
    def committed_log(self) -> list[tuple[bytes, bool]]:
        return [e for w in self.writers for e in w.committed_log]

    def _open_sets(self) -> list[frozenset[str]]:
        return [frozenset(d.uuid for d in w.shard.disks) for w in self.writers if w.shard is not None]

    def _on(self, w: ShardWriter, fn: Callable[[], T]) -> T:
        """fn(), noting `w` as the writer to abandon a group of if a replica fails."""
        try:
            return fn()
        except ReplicaFailed:
            self.failed = w
            raise

    def _each(self, name: str) -> list:
        return [self._on(w, getattr(w, name)) for w in self.writers]

    # -- appending -------------------------------------------------------------------------
    def append(self, sha: bytes, payload: bytes, ext: str = "") -> ObjectLoc | None:
        return self._append(lambda w: w.append(sha, payload, ext), len(payload))

    def append_stream(self, sha: bytes, digest: bytes, length: int, chunks,
                      source: Path | None = None, ext: str = "") -> ObjectLoc | None:
        return self._append(lambda w: w.append_stream(sha, digest, length, chunks, source, ext), length)

    def _append(self, fn: Callable[[ShardWriter], ObjectLoc | None], size: int) -> ObjectLoc | None:
        """fn(the current writer). When that writer needs a new shard and no disks have room
        for one beside what the other open shards keep (NoSpace: hoardfs.fsd.core.placement,
        `promised`), the record goes to another open shard instead: so a batch fills the room
        its open shards keep before it is refused, and is refused only once none is left open
        (a writer that found no room has no shard, and `_room_for` raises before `fn` takes
        any of a stream's chunks)."""
        while True:
            if self.choose:  # (chosen when a record comes: a commit at close reads no disk's state)
                self.current, self.choose = self._next_writer(), False
            w = self.current
            try:
                loc = self._on(w, functools.partial(fn, w))
            except NoSpace:
                others = [o for o in self.writers if o.shard is not None]
                if not others:
                    raise
                self.current = self._next_writer(others)
                continue
            self._count(w, size)
            return loc

    def pending_shas(self) -> set[bytes]:
        return set().union(*(w.pending_shas() for w in self.writers))

    # -- commits ---------------------------------------------------------------------------
    def start_commit(self) -> None:
        """Queue the current group's fdatasync; the next group goes to the writer whose disks are
        least ahead of their share (`_next_writer`)."""
        w = self.current
        self._on(w, w.start_commit)
        self.choose = True

    def commit(self) -> None:
        """Every writer's pending records fsynced and indexed (their fdatasyncs run together)."""
        self._each("start_commit")
        self._each("finish_commit")
        self.choose = True

    def finish_commit(self) -> None:
        self._each("finish_commit")

    def commit_ready(self) -> bool:
        """Finish every group whose fdatasyncs are all done (never waits); whether one was."""
        return any(self._each("commit_ready"))

    def drain_committed(self) -> list[tuple[bytes, bool]]:
        return [e for w in self.writers for e in w.drain_committed()]

    def _next_writer(self, among: list[ShardWriter] | None = None) -> ShardWriter:
        """The writer for the next group (of `among`, by default all): one without an open
        shard first (its shard is placed on the disks the others leave), then the one whose
        disks are least ahead of their share of the batch (`shares`)."""
        share = self.shares()

        def ahead(w: ShardWriter) -> float:
            if w.shard is None:
                return -1.0
            return max((self.sent.get(d.uuid, 0) + self.group_bytes) / share.get(d.uuid, 1e-6)
                       for d in w.shard.disks)

        return min(among or self.writers, key=ahead)

    def shares(self) -> dict[str, float]:
        """Each writable disk's share of a batch: its share of the disks' bandwidth (`write_mb_s`,
        else `read_mb_s` or the measured read speed: hoardfs.fsd.io.planner.bandwidths; a disk of
        unknown speed counts as the mean of the known), or of their free space when no speed is
        known — held near its share `x` of the free space, the nearer the fuller the disks
        (F their free bytes, C their size, a = `write_ack`; the speed shares scaled alike until
        the held shares sum to 1):

        - at most `x · (1 + F/C)`: twice on empty disks, nearing `x` as they fill;
        - at least `x · (1 − (F/C) · ln(1 / (a·x)))` (`x` where `x ≥ 1/a`). Over the W bytes
          written a free share then grows by d ln x ≤ (F/C) ln(1/(a·x)) · dW/F = ln(1/(a·x)) dW/C,
          so it never passes 1/a: no disk is left holding more free space than the others can
          pair with (a group's `write_ack` copies go to distinct disks, so one disk takes at most
          1/a of the writes, and room only it has is unusable). The disks fill together.

        Why not the speeds alone: total time to fill the disks is bound by max(free / speed)
        however the writes are shared, and a small fast disk filled first leaves its slower
        partners to fill alone, slower, with room at the end that cannot be used."""
        free = {c.uuid: c.free_bytes for c in self.store.candidates() if c.usable}
        write = {d.label: d.write_mb_s * 1e6 for d in self.store.cfg.disks if d.write_mb_s}
        read = bandwidths(self.store, default=None)
        known = {u: b for u in free if (b := write.get(self.store.disks[u].label) or read.get(u))}
        mean = sum(known.values()) / len(known) if known else 0.0
        weight = {u: known.get(u, mean) for u in free} if known else {u: float(f) for u, f in free.items()}
        total_w, total_free = sum(weight.values()) or 1.0, sum(free.values())
        if not total_free:
            return {u: max(1e-6, w / total_w) for u, w in weight.items()}
        room = min(1.0, total_free / max(1, self._size(free)))  # F/C
        ack = self.store.cfg.store.write_ack
        x = {u: v / total_free for u, v in free.items()}
        low = {u: v * (1 - min(1.0, room * max(0.0, math.log(1 / (ack * v))))) if v > 0 else 0.0
               for u, v in x.items()}

        def held(scale: float) -> dict[str, float]:
            return {u: min(x[u] * (1 + room), max(low[u], scale * weight[u] / total_w)) for u in free}

        lo, hi = 0.0, 1.0
        while sum(held(hi).values()) < 1 and hi < 1e12:  # (Σ low ≤ 1 ≤ Σ x·(1 + F/C): a scale fits)
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sum(held(mid).values()) < 1 else (lo, mid)
        return {u: max(1e-6, v) for u, v in held(hi).items()}

    def _size(self, free: dict[str, int]) -> int:
        """The summed size of these disks (their free space where a disk cannot say)."""
        total = 0
        for u, f in free.items():
            try:
                total += max(f, self.store.disks[u].total_bytes())
            except OSError:
                total += f
        return total

    def _count(self, w: ShardWriter, size: int) -> None:
        if w.shard is not None:
            for d in w.shard.disks:
                self.sent[d.uuid] = self.sent.get(d.uuid, 0) + size

    # -- failures and the end ----------------------------------------------------------------
    def disk_failed(self, f: ReplicaFailed) -> None:
        self.writers[0].disk_failed(f)  # (the excluded set is shared)

    def abandon_group(self) -> list[_Pending]:
        """After a ReplicaFailed: cut the uncommitted group off the shard it hit (sealing the
        rest of it) and make that writer current, so the group is written again into a new
        shard on other disks; the other open shards are untouched."""
        w, self.failed = self.failed or self.current, None
        self.current, self.choose = w, False
        return w.abandon_group()

    def rollback(self) -> None:
        for w in self.writers:
            w.rollback()

    def seal(self) -> None:
        """Seal every open shard (the end of a batch: the next one starts its shares afresh)."""
        self._each("seal")
        self.sent.clear()

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.shutdown(wait=True)
