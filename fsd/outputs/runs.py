"""Ordered run reads: records of the store read run by run in an order the caller fixes, every
disk at once — the batch planner's reads (fsd/io/planner.py) for a consumer that needs the
records in a set order and cannot hold them all (the training loader, hoardfs.datasets.loader).

A *run* is records of one shard in offset order, the caller's unit of order. Each run is
given to one replica disk, balanced over all of them as the planner balances its pieces (the
disk that would finish it earliest at its bandwidth) — for a consumer that reads what the
page cache holds itself (`later`), the replica whose page cache holds most of it (`assign`:
a next epoch is not sent to the replica the last one did not read); one reader thread per disk reads its
runs in the caller's order, each run's wanted records coalesced into ranges (gaps up to
GAP_BYTES read through, a range at most `range_limit(read_streams)`), and keeps at most
`ahead` runs read ahead of the consumer. Every record is verified (header, xxh3-128) as the
planner verifies it; a record that does not check out, or whose replica cannot be read (a
shard gc retired meanwhile), is read from the other replicas (`Store.from_replicas`, which
looks the object up again) and never handed out unverified.

A run may name the records `keep` handed out of it (a training loader's worker, which owns
part of every run): on a local disk the whole run is read all the same — the same ranges in
every worker, so the kernel's page cache, which the processes share, has the disk read each
byte once and the others copy it from memory — and only the kept records are verified and
handed out; on a disk whose reads no cache shares (S3) only the kept ones are read.

Read-only: a bad replica is logged, not queued for repair nor its disk marked (the mount's
rule for a reader: the store may be opened read-only, by another user). An object the store
no longer holds or shows (`live`: hidden by a type-A delete, tombstoned by a type-B one,
dropped by gc) when its run comes up is not read at all — not a byte of it.

Memory: each disk's reader holds the run it reads plus up to `ahead` read ones. `read_runs`
reads a local disk's ranges into range buffers (`Buffers`) and hands a run's records out as
views of them: the consumer copies what it keeps — its own thread's allocations — and gives
the buffers back for the next ranges (`RunRead.release`). Other callers (`read_run` alone)
read into one buffer a reader thread keeps, each record copied out of it. A range is at most
`range_limit` long; a longer record is read into bytes of its own, copied out as it is checked.
A run the page cache holds whole is, for a consumer that asks (`read_runs(later=True)`), not
read by the disk's reader but left to the consumer (`Later`): each record read as it is taken,
straight into the bytes kept — no range buffer, one copy, and no reader thread contending for
the interpreter with the consumer for bytes that need no disk.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from hoardfs.base.errors import first_line
from hoardfs.base.threads import Thread, join_all
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import LocalDisk
from hoardfs.fsd.core.records import DataError, ObjectNotFound, verified_parts, verified_view, verify_record
from hoardfs.fsd.io.planner import DEFAULT_MB_S, GAP_BYTES, bandwidths, in_order, put_unless, range_limit

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)

#: runs a disk's reader keeps read ahead of the consumer: lab4's cold epoch of 100,200 samples read
#: at 87-90 % of the all-disk bound with 2, 92 % with 4, 88-92 % with 8 (runs of 8 MiB)
AHEAD = 4


class Rec(NamedTuple):
    """A record to read (a named tuple: a plan makes one per sample, and a frozen dataclass's
    instance takes several times as long to make)."""

    sha: bytes
    offset: int  # the payload's offset in the shard
    length: int


@dataclass(slots=True)
class Run:
    shard_id: bytes
    records: list[Rec]  # in offset order
    # the records handed out (None: all); the others only read through (the module's docstring)
    keep: frozenset[bytes] | None = None

    def kept(self) -> list[Rec]:
        return self.records if self.keep is None else [r for r in self.records if r.sha in self.keep]

    @property
    def size(self) -> int:
        return sum(r.length + fmt.RECORD_HEADER_SIZE for r in self.records)


@dataclass(slots=True)
class RunRead:
    """A run read: the payloads of its records the store shows (sha → bytes, or a view of a
    range buffer of `Buffers`: good until `release`), the disk it came from, the bytes read off
    it, how many records came from another replica."""
    number: int
    payloads: dict[bytes, bytes | memoryview]
    disk: str
    nbytes: int = 0
    fallbacks: int = 0
    unshown: list[bytes] = field(default_factory=list)
    # the range buffers its payload views are of, and the pool they go back to
    buffers: list[bytearray] = field(default_factory=list)
    pool: Buffers | None = None
    # records left in the page cache for the consumer to read as it takes them (`Later`)
    later: Later | None = None

    def take(self, sha: bytes) -> bytes | None:
        """Record `sha`'s payload as bytes of its own, verified (None: not read — the store no
        longer shows it): a copy of its view of a range buffer, or read now (`Later`)."""
        got = self.copied(sha)
        if got is not None:
            return got
        return self.later.take(sha, self) if self.later is not None else None

    def copied(self, sha: bytes) -> bytes | None:
        """Record `sha`'s payload as bytes of its own when the run holds it already (read by its
        reader, or from another replica): None otherwise."""
        v = self.payloads.get(sha)
        return v if v is None or isinstance(v, bytes) else bytes(v)

    def take_many(self, shas: Sequence[bytes]) -> list[bytes | None]:
        """`take` of each record in turn (a consumer taking all it keeps of the run at once: a
        `Later` run's shard file looked up once for all of them)."""
        if self.later is not None:
            return self.later.take_many(shas, self)
        return [self.take(sha) for sha in shas]

    def release(self) -> None:
        """Hand the range buffers back for the next ranges, once whoever keeps the payloads has
        copied them: the payload views are ended (one kept by mistake raises ValueError when
        used; a slice made of one is not a payload view and is not ended — the consumer copies
        each payload it keeps at once). A buffer one of whose payloads is still exported (a
        numpy array made of it, say) is not given back but left to the collector: no range is
        read into bytes someone still looks at."""
        busy = False
        for v in self.payloads.values():
            if isinstance(v, memoryview):
                try:
                    v.release()
                except BufferError:
                    busy = True
        self.payloads.clear()
        self.later = None
        if self.pool is not None and not busy:
            for buf in self.buffers:
                self.pool.give(buf)
        self.buffers.clear()


@dataclass(slots=True)
class Later:
    """A run whose records' bytes are all in the page cache (a warm epoch), left for the
    consumer to read each one itself as it takes it (`RunRead.take`): straight into the bytes
    it keeps, one copy where a range buffer costs two — and no reader thread contending for
    the interpreter with the consumer for bytes that need no disk. Each record is verified as
    `read_checked` verifies it, one that does not check out or cannot be read is read from
    another replica (one line at INFO for a shard file gc retired meanwhile, as `read_checked`
    logs it); when the index was written since the run's plan (`since`), the records the store
    no longer shows as the first is taken are passed over, unread, as `read_run` passes them
    over — the run's records are taken one after the other at once, as a range is read whole
    once planned. A record taken twice (a sample a version holds twice) is read twice."""

    store: Store
    disk: Any
    shard_hex: str
    uuid: str
    since: int | None  # the index's last write before the run's plan (None: unknown)
    recs: dict[bytes, Rec]
    looked: bool = False
    gone: bool = False  # the shard's file is gone off the disk (gc retired it): read elsewhere

    def _look(self, out: RunRead) -> None:
        """At the first take: the records the store no longer shows passed over (`out.unshown`)
        when the index was written since the run's plan."""
        if not self.looked:
            self.looked = True
            if self.since is None or self.store.index.generation() != self.since:
                shas = list(self.recs)
                for s, ok in zip(shas, self.store.index.live_many(shas), strict=True):
                    if not ok:
                        del self.recs[s]
                        out.unshown.append(s)

    def take_many(self, shas: Sequence[bytes], out: RunRead) -> list[bytes | None]:
        """`take` of each in turn, read off the shard's descriptor held for all of them (two
        preads a record, checked as `take` checks it); a record that cannot be read or does
        not check out there — or every one, when the file cannot be opened — goes through
        `take` (read again, logged, read elsewhere)."""
        self._look(out)
        if self.gone:
            return [out.take(sha) for sha in shas]
        got: list[bytes | None] = []
        recs, head_size, sound = self.recs, fmt.RECORD_HEADER_SIZE, fmt.sound_parts
        with contextlib.ExitStack() as held:
            try:
                fd = held.enter_context(self.disk.descriptor(self.shard_hex))
            except OSError:  # (the shard's file cannot be opened: `take` says why, and reads elsewhere)
                return [out.take(sha) for sha in shas]
            payloads = out.payloads
            for sha in shas:
                # (read from another replica already — a sample held twice —: copied)
                v = out.copied(sha) if payloads else None
                if v is not None:
                    got.append(v)
                    continue
                rec = recs.get(sha)
                if rec is None:
                    got.append(None)
                    continue
                try:
                    head, payload = os.pread(fd, head_size, rec.offset - head_size), os.pread(fd, rec.length, rec.offset)
                except OSError:
                    head = payload = b""
                if sound(head, payload, sha, rec.length):
                    out.nbytes += head_size + rec.length
                    got.append(payload)
                else:  # (read again, and reported or read elsewhere, by `take`)
                    got.append(out.take(sha))
        return got

    def take(self, sha: bytes, out: RunRead) -> bytes | None:
        self._look(out)
        # (kept: a record taken again — a sample the version holds twice — is read again, as a
        # range's view is copied again)
        rec = self.recs.get(sha)
        if rec is None:
            return None
        if not self.gone:
            where = f" (shard {self.shard_hex} on {self.disk.label})"
            try:
                head, payload = self.disk.read_record(self.shard_hex, rec.offset, fmt.RECORD_HEADER_SIZE, rec.length)
                out.nbytes += len(head) + len(payload)
                return verified_parts(head, payload, sha, rec.length, where)
            except FileNotFoundError as e:  # (its other records are read elsewhere too, unlogged)
                self.gone = True
                _unreadable(self.shard_hex, self.disk.label, e, ELSEWHERE)
            except (OSError, fmt.ShardFormatError) as e:
                log.warning("loader: record %s…%s unreadable or does not check out (%s); read from %s",
                            sha.hex()[:12], where, first_line(e), ELSEWHERE)
        _elsewhere(self.store, [rec], self.uuid, out)
        return out.copied(sha)


#: where a record a replica failed is read from
ELSEWHERE = "another replica, looked up again"


def _unreadable(shard_hex: str, name: str, err: OSError | None, elsewhere: str) -> None:
    """Log a shard file that could not be read: at INFO when it is gone (gc retired it: its
    records were moved), as a WARNING otherwise."""
    (log.info if isinstance(err, FileNotFoundError) else log.warning)(
        "loader: shard %s on %s unreadable (%s); its records are read from %s", shard_hex, name,
        first_line(err) if err else "?", elsewhere)


def speeds(store: Store, disks: Sequence[Any]) -> list[float]:
    """Each disk's read bandwidth in bytes/s as the batch planner weighs it (a default for one
    not measured yet)."""
    bw = bandwidths(store)
    return [bw.get(d.uuid, DEFAULT_MB_S * 1e6) for d in disks]


def shapes(runs: Sequence[Run]) -> Iterator[tuple[bytes, int]]:
    """Each run's shard and size; of a sequence that makes its runs as they are asked for (a
    training loader's), its `shapes()`, which makes none."""
    made = getattr(runs, "shapes", None)
    return made() if made is not None else ((run.shard_id, run.size) for run in runs)


def extent(runs: Sequence[Run], j: int) -> tuple[int, int]:
    """`span` of run j's records; of a sequence that makes its runs as they are asked for (a
    training loader's), its `span(j)`, which makes none."""
    made = getattr(runs, "span", None)
    return made(j) if made is not None else span(runs[j].records)


def assign(store: Store, runs: Sequence[Run], warm: bool = False) -> list[str]:
    """The disk (uuid) each run is read from: among the usable replicas of its shard (the
    failed but attached ones when it has none, `Store.last_resort`), the one that would finish
    it earliest at its bandwidth — the planner's balance, in the runs' order. "" for a run
    whose shard has no replica to read (its records are read by `Store.from_replicas`).
    `warm`: a run whose bytes (its `extent`) the page cache holds more of on another of its
    replicas than on that one is read there — each epoch's plan orders its runs its own way, so the
    balance sends a run to another replica than the last epoch's: without this, a next epoch
    would read about half its bytes off the disks unless the page cache held every replica of
    them. The balance counts each run on the disk it would have chosen, wherever the run is
    read: its choices do not depend on what the page cache holds, and processes choosing at
    once (`Follow`: a follower reads off the page cache of the disk it chose) differ at most in
    a run the page cache dropped or gained between their looks. Shards of one replica, or none
    on a local disk, are not looked at (nor counted among the COLD_RUNS looked at)."""
    bw = bandwidths(store)
    load: dict[str, int] = {}
    out = []
    # each shard's replicas, and those of them whose page cache can be asked (local disks)
    metas: dict[bytes, tuple[list[str], list[LocalDisk]]] = {}
    looked = cached = 0  # runs looked for in the page cache, found there
    for j, (shard_id, size) in enumerate(shapes(runs)):
        got_meta = metas.get(shard_id)
        if got_meta is None:
            meta = store.index.get_shard(shard_id)
            disks = [] if meta is None else store.replica_order(meta) or store.last_resort(meta)
            got_meta = metas[shard_id] = ([d.uuid for d in disks], [d for d in disks if isinstance(d, LocalDisk)])
        cands, local = got_meta
        if not cands:
            out.append("")
            continue
        best = min(cands, key=lambda u: ((load.get(u, 0) + size) / bw.get(u, DEFAULT_MB_S * 1e6), u))
        load[best] = load.get(best, 0) + size
        if warm and len(cands) > 1 and size > 0 and local:
            got = _cached_choice(local, best, shard_id.hex(), extent(runs, j))
            looked += 1
            if got is not None:
                best, cached = got, cached + 1
            # (the first COLD_RUNS runs looked at found in the page cache nowhere: a cold epoch's
            # plan — the looks end, its disks' first reads wait for none)
            warm = cached > 0 or looked < COLD_RUNS
        out.append(best)
    return out


#: pages of a run's range looked at to choose the replica the page cache holds it on
CACHE_SAMPLES = 9
#: runs `assign` looks for in the page cache before it takes an epoch found nowhere there for cold
COLD_RUNS = 16


def _cached_choice(local: list[LocalDisk], best: str, shard_hex: str, where: tuple[int, int]) -> str | None:
    """The disk (uuid) of `local` whose page cache holds the most of the shard's bytes `where`
    (offset, length) — `best` among those holding as many; None where none holds any of them. Judged by
    CACHE_SAMPLES pages spread over them (`LocalDisk.cached_pages`: a look at every page of a
    run's megabytes costs ~0.2 ms, and a cold epoch's start would wait that long a run); a
    replica whose pages the kernel reclaimed in part still beats one holding none. The run is
    read as `read_run` finds it."""
    a, n = where
    # (pages wholly the run's: its first and last page may be a neighbouring run's too, read
    # off another replica — one such page would outweigh none)
    page = mmap.PAGESIZE
    lo, hi = -(-a // page) * page, (a + n) // page * page
    if hi - lo < page:
        lo, hi = a, a + n
    points = [lo + k * (hi - lo - 1) // (CACHE_SAMPLES - 1) for k in range(CACHE_SAMPLES)]
    held: dict[str, int] = {}
    for d in sorted(local, key=lambda d: d.uuid != best):  # (the balance's first: holding all, it is the one)
        held[d.uuid] = d.cached_pages(shard_hex, a, n, points)
        if held[d.uuid] == CACHE_SAMPLES:
            break
    most = max(held.values(), default=0)
    if not most:
        return None
    return best if held.get(best) == most else next(d.uuid for d in local if held.get(d.uuid) == most)


def ranges(records: list[Rec], longest: int, gap: int = GAP_BYTES) -> list[list[Rec]]:
    """The records (offset order) cut into ranges read whole: a gap up to `gap` read through."""
    out: list[list[Rec]] = []
    start = end = 0
    for r in records:
        a, b = r.offset - fmt.RECORD_HEADER_SIZE, r.offset + r.length
        if out and a - end <= gap and b - start <= longest:
            out[-1].append(r)
            end = max(end, b)
        else:
            out.append([r])
            start, end = a, b
    return out


def disk_ranges(disk: Any, records: list[Rec], gap: int = GAP_BYTES) -> list[list[Rec]]:
    """`ranges` of `records` as one read of `disk` joins them: up to `range_limit` of its reads
    in flight (`read_streams`)."""
    return ranges(records, range_limit(disk.read_streams), gap)


def span(group: list[Rec]) -> tuple[int, int]:
    """(offset, length) of the range that reads `group` whole: its first record's header to its
    last record's end."""
    a = group[0].offset - fmt.RECORD_HEADER_SIZE
    return a, max(r.offset + r.length for r in group) - a


def records_cached(disk: LocalDisk, shard_hex: str, records: list[Rec]) -> bool:
    """Whether the page cache holds every one of the records (header and payload) of the
    shard, whatever it holds of the bytes between them (`LocalDisk.cached`)."""
    if not records:
        return False
    a, n = span(records)
    # (the whole span first, one look: a warm epoch's answer — the records one by one only when
    # some page of it is not there, which may be another object's between them)
    return disk.cached(shard_hex, a, n) or disk.cached(
        shard_hex, a, n, [(r.offset - fmt.RECORD_HEADER_SIZE, r.length + fmt.RECORD_HEADER_SIZE) for r in records])


#: each reader thread's buffer the ranges of a local disk are read into (`read_groups`)
_scratch = threading.local()


def _scratch_of(n: int) -> memoryview:
    """This thread's range buffer, at least `n` bytes (a new one when it is shorter: a buffer
    whose view someone still holds cannot be resized). `read_groups` asks it for a range no
    longer than records are joined into (`range_limit`), so what a reader keeps is bounded
    whatever the records' sizes."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = _scratch.buf = bytearray(scratch_size(n))
    return memoryview(buf)[:n]


#: the least range buffer a reader thread keeps
SCRATCH_BYTES = 1 << 20


def scratch_size(n: int) -> int:
    """The range buffer kept for a range of `n` bytes: the power of two at or above it, at least
    SCRATCH_BYTES — a reader of small runs keeps a small one, and one of runs growing to
    `run_bytes` regrows it a few times at most."""
    return max(SCRATCH_BYTES, 1 << max(0, n - 1).bit_length())


class Buffers:
    """The range buffers of one `read_runs`: each disk reader reads a local range into one
    taken here and hands its records out as views of it (`RunRead.payloads`); the consumer,
    once it has copied what it keeps, gives the buffers back (`RunRead.release`). The copies
    are then the consumer thread's allocations, freed by that thread: a reader thread
    allocating the samples another thread frees in shuffled order grows the C allocator's
    per-thread arenas with the epoch's length. At most `keep_bytes` of buffers wait here (the
    readers' ranges in flight: `ahead` runs a disk, of `run_bytes` each); one given back past
    that is freed."""

    #: sizes are rounded up to this, so that ranges of close sizes reuse each other's buffers
    STEP = 256 << 10

    def __init__(self, keep_bytes: int = 256 << 20) -> None:
        self.keep_bytes = keep_bytes
        self._free: list[bytearray] = []
        self._free_bytes = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bytearray:
        """A buffer of at least `n` bytes: the smallest one waiting that is long enough, or a new one."""
        with self._lock:
            fits = [k for k, b in enumerate(self._free) if len(b) >= n]
            if fits:
                buf = self._free.pop(min(fits, key=lambda k: len(self._free[k])))
                self._free_bytes -= len(buf)
                return buf
        return bytearray(-(-n // self.STEP) * self.STEP)

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if self._free_bytes + len(buf) <= self.keep_bytes:
                self._free.append(buf)
                self._free_bytes += len(buf)


class Follow:
    """A reader following another process's reads of the same runs off the same disks (a
    training loader's workers but the first, hoardfs.datasets.loader): it takes each local
    range from the page cache as the leader (the first worker, `read_runs(lead=True)`: it reads
    every run any worker needs, whole, even one it keeps nothing of) reads it off the disk
    (`LocalDisk.read_cached_into`) and hints no range, so the disk sees one process's reads —
    two processes each reading a range and hinting the next split the disk's reads into twice
    as many of half the size. A
    follower with no leader (a worker's state resumed alone) still gets its ranges where a look
    the page cache cannot answer starts the read (`pread_cached_into`); a disk one of whose
    ranges did not arrive in time is read as any reader reads it from then on."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def follows(self, disk: Any) -> bool:
        return hasattr(disk, "read_cached_into") and disk.label not in self.stopped

    def stop(self, disk: Any) -> None:
        self.stopped.add(disk.label)


def read_groups(disk: Any, shard_hex: str, groups: list[list[Rec]], follow: Follow | None = None,
                buffers: Buffers | None = None) -> Iterator[tuple[list[Rec], Any, OSError | None]]:
    """Each group (`disk_ranges`) of shard `shard_hex` read off `disk` as one range, from its
    first record's header to its last record's end, `read_streams` at once, in order: (the
    group, its bytes or None, the OSError that failed it). Nothing is checked here.

    A local disk read one range at a time (`read_exact_into`) reads each into this thread's
    one buffer: the bytes handed out are a view of it, good until the next group is asked
    for — the caller copies what it keeps before (`read_checked`). A range longer than the
    disk's `range_limit` (one record of its own) is read into bytes of its own, freed with
    them: in the buffer, the epoch's largest record would stay held by the reader to its end
    (every worker process of a training loader reads every run). `buffers`: each range read
    into a buffer of its own taken there instead (the view handed out is of it, good until the
    buffer is given back). `follow`: this reader follows another process's reads (`Follow`)."""
    if disk.read_streams <= 1 and hasattr(disk, "read_exact_into"):
        longest = range_limit(disk.read_streams)
        for rng in groups:
            a, n = span(rng)
            got: tuple[list[Rec], Any, OSError | None]
            try:
                if n > longest:
                    got = (rng, disk.read_exact(shard_hex, a, n), None)
                else:
                    view = _scratch_of(n) if buffers is None else memoryview(buffers.take(n))[:n]
                    if follow is not None and follow.follows(disk):
                        k, cached = disk.read_cached_into(shard_hex, a, view)
                        if not cached:
                            follow.stop(disk)
                    else:
                        k = disk.read_exact_into(shard_hex, a, view)
                    got = (rng, view[:k], None)
            except OSError as e:
                got = (rng, None, e)
            yield got
        return

    def read(rng: list[Rec]) -> Callable[[], tuple[list[Rec], bytes | None, OSError | None]]:
        def call() -> tuple[list[Rec], bytes | None, OSError | None]:
            try:
                return rng, disk.read_exact(shard_hex, *span(rng)), None
            except OSError as e:  # (an S3 engine that does not answer: EngineError, an OSError)
                return rng, None, e
        return call

    yield from in_order((read(g) for g in groups), disk.read_streams)


def read_checked(disk: Any, shard_hex: str, groups: list[list[Rec]], name: str, out: RunRead,
                 elsewhere: str, keep: frozenset[bytes] | None = None,
                 then: Callable[[], None] | None = None, follow: Follow | None = None,
                 buffers: Buffers | None = None) -> list[tuple[Rec, Exception]]:
    """Each group of shard `shard_hex` read off `disk` (`read_groups`) and each of its records
    verified (header, xxh3-128) into `out.payloads`, the bytes read counted in `out.nbytes`; the
    records that could not be read or did not check out, each with why — logged (a shard object
    not there at INFO: gc retired it; the rest as a WARNING) as read from `elsewhere` next.
    `name`: the disk as the log names it; `keep`: the records verified and handed out (None:
    all), the others read through only.

    A disk read one range at a time that takes hints (`LocalDisk.prefetch`) is told the next
    range as soon as one arrives, and `then` (the reader's next run's first range, say) is
    called when the last one has: the disk reads on while this thread checks — unless this
    reader follows another's reads of the disk (`follow`, `Follow`: it hints nothing).

    `buffers` (`Buffers`): a local range is read into a buffer of its own and, when every
    record is handed out (`keep` None) and they fill at least half of it (not a range mostly
    of other objects' gaps: a run of sparse records would hold many times its records' bytes),
    its records are views of it, copied by the consumer, which gives the buffer back
    (`RunRead.release`); else each kept record is copied here, as without `buffers`, and the
    buffer given back at once."""
    where = f" (shard {shard_hex} on {name})"
    failed: list[tuple[Rec, Exception]] = []
    hint = getattr(disk, "prefetch", None) if disk.read_streams <= 1 else None
    if follow is not None and follow.follows(disk):
        hint = None
    for k, (rng, buf, err) in enumerate(read_groups(disk, shard_hex, groups, follow, buffers)):
        if hint is not None:
            if k + 1 < len(groups):
                hint(shard_hex, *span(groups[k + 1]))
            elif then is not None:
                then()
        if buf is None:
            _unreadable(shard_hex, name, err, elsewhere)
            failed += [(r, err or OSError("no answer")) for r in rng if keep is None or r.sha in keep]
            continue
        view = memoryview(buf)
        base = rng[0].offset - fmt.RECORD_HEADER_SIZE
        out.nbytes += len(buf)
        # (a range in a buffer of `buffers`: its records handed out as views of it when all are kept)
        pooled = view.obj if buffers is not None and isinstance(view.obj, bytearray) else None
        as_views = pooled is not None and keep is None and 2 * sum(r.length for r in rng) >= len(pooled)
        for r in rng:
            if keep is not None and r.sha not in keep:
                continue
            try:
                payload = verified_view(view, r.offset - fmt.RECORD_HEADER_SIZE - base, r.sha, r.length, where)
                out.payloads[r.sha] = payload if as_views else bytes(payload)
            except fmt.ShardFormatError as e:
                log.warning("loader: record %s…%s does not check out (%s); read from %s", r.sha.hex()[:12], where,
                            e, elsewhere)
                failed.append((r, e))
        if buffers is not None and pooled is not None:
            if as_views:
                out.buffers.append(pooled)
            else:
                view.release()
                buffers.give(pooled)
    return failed


def _fallback(store: Store, rec: Rec, avoid: str) -> bytes:
    """The record from another replica (looked up again: gc may have moved it), verified."""
    def read(disk, meta, loc) -> bytes:
        buf = disk.read_at(meta.hex, loc.offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE + loc.length)
        return verify_record(memoryview(buf), 0, rec.sha, loc.length, f" (shard {meta.hex} on {disk.label})")

    def bad(disk, meta, e: Exception) -> None:
        log.warning("loader: replica of shard %s on %s unreadable: %s; trying another", meta.hex, disk.label, e)

    return store.from_replicas(rec.sha, read, frozenset({avoid}) if avoid else frozenset(), on_bad=bad)


def live(store: Store, sha: bytes) -> bool:
    """Whether the store holds and shows object `sha`: in the index (gc drops a deleted object
    with its marks) and neither hidden nor tombstoned (`Index.shown`)."""
    return store.index.live_many([sha])[0]


@dataclass(slots=True)
class _Planned:
    """A run's read as the index shows its records now: the ranges off `disk` and the records
    read elsewhere (no disk)."""

    out: RunRead
    disk: Any
    groups: list[list[Rec]]
    elsewhere: list[Rec]


def _planned(store: Store, number: int, run: Run, uuid: str, lead: bool = False,
             follow: Follow | None = None) -> _Planned | None:
    """`read_run`'s ranges of `run` off disk `uuid` (None: it keeps no record, nothing is read —
    unless this reader leads others' reads of the same runs, `lead`: a local run is read whole
    then, for the followers, `Follow`). A follower of the disk's reads (`follow`) reads the run
    whole as the leader does, taking each range from the page cache as the leader reads it —
    unless the whole run is in the page cache already (`LocalDisk.cached`: a warm epoch, or the
    leader done with it): then its kept records alone, each its own range (adjacent ones
    joined). (Looking for its own records as the leader reads the run would start reads ahead
    of the leader's on kernels where a look that misses the cache starts one.)"""
    kept = run.kept()
    disk = store.disks.get(uuid) if uuid else None
    if not kept and not (lead and run.keep is not None and isinstance(disk, LocalDisk)):
        return None
    out = RunRead(number, {}, disk.label if disk is not None else "")
    thin = (follow is not None and isinstance(disk, LocalDisk) and run.keep is not None and follow.follows(disk)
            and disk.cached(run.shard_id.hex(), *span(run.records)))
    span_ = run.records if run.keep is not None and isinstance(disk, LocalDisk) and not thin else kept
    flags = store.index.live_many([r.sha for r in span_])
    wanted = [r for r, ok in zip(span_, flags, strict=True) if ok and (run.keep is None or r.sha in run.keep)]
    out.unshown = [r.sha for r, ok in zip(span_, flags, strict=True)
                   if not ok and (run.keep is None or r.sha in run.keep)]
    if disk is None:
        return _Planned(out, None, [], wanted)
    # a range never reads through a record of the run the store no longer shows: its
    # bytes stay on the disk (only other objects' gaps are read through, as the planner does)
    segments: list[list[Rec]] = [[]]
    for r, ok in zip(span_, flags, strict=True):
        if ok:
            segments[-1].append(r)
        elif segments[-1]:
            segments.append([])
    return _Planned(out, disk, [g for seg in segments for g in disk_ranges(disk, seg, 0 if thin else GAP_BYTES)], [])


#: `read_run` not handed a plan of its run (it plans it then)
_UNPLANNED: Any = object()


def read_run(store: Store, number: int, run: Run, uuid: str,
             then: Callable[[], None] | None = None, planned: _Planned | None = _UNPLANNED,
             follow: Follow | None = None, lead: bool = False, buffers: Buffers | None = None,
             since: int | None = None, later: bool = False, cached: bool = False) -> RunRead:
    """One run off disk `uuid`: what the store still shows of its kept records, verified, each
    record that fails there read from another replica. A run whose `keep` names some of its
    records is read whole off a local disk (the module's docstring), its kept records alone off
    any other; one that keeps none is not read at all. `then`: called once the run's last range
    is read, before it is checked (`read_checked`); `planned`: its plan, made with nothing
    written to the index since (`read_runs`) — and `since`, the index's last write before it
    was made; `follow`, `lead`: `Follow`; `buffers`: the range buffers its records may be views
    of (`read_checked`; the caller then copies what it keeps and calls `RunRead.release`).
    `later`: a run all of whose records a local disk's page cache holds (and every one of them
    kept, no one following) is not read here but left to the consumer, which reads each record
    as it takes it (`Later`); `cached`: the caller found all of the run's records there just now
    (`records_cached`) — the run is handed over as it is (`_later`), no range planned, not
    looked at again."""
    if planned is _UNPLANNED:
        if later:  # (before the plan: a write after it is looked for at a `Later`'s take)
            since = store.index.snapshot()
            if cached and run.keep is None and follow is None and not lead:
                return _later(store, number, run, uuid, since)
        p = _planned(store, number, run, uuid, lead, follow)
    else:
        p = planned
    if p is None:
        return RunRead(number, {}, "")
    out, failed = p.out, list(p.elsewhere)
    out.pool = buffers
    if (later and run.keep is None and follow is None and not lead and isinstance(p.disk, LocalDisk) and p.groups
            and not failed):
        shard_hex, recs = run.shard_id.hex(), [r for g in p.groups for r in g]
        if records_cached(p.disk, shard_hex, recs):
            out.later = Later(store, p.disk, shard_hex, uuid, since, {r.sha: r for r in recs})
            if then is not None:
                then()
            return out
    if p.disk is not None:
        # a shard file gone is a shard gc retired after the plan (its records were moved: looked
        # up again); any other error is the replica's
        failed += [r for r, _why in read_checked(p.disk, run.shard_id.hex(), p.groups, p.disk.label, out,
                                                 ELSEWHERE, run.keep, then, follow,
                                                 buffers)]
    _elsewhere(store, failed, uuid, out)
    return out


def _later(store: Store, number: int, run: Run, uuid: str, since: int) -> RunRead:
    """`read_run` of a run whose every record is kept and in the page cache of local disk
    `uuid` (the caller looked: `records_cached`): its records the store shows left to the
    consumer (`Later`), the others passed over (`unshown`) — no range planned, nothing read."""
    disk, recs = store.disks[uuid], run.records
    out = RunRead(number, {}, disk.label)
    shown = store.index.live_many([r.sha for r in recs])
    out.unshown = [r.sha for r, ok in zip(recs, shown, strict=True) if not ok]
    out.later = Later(store, disk, run.shard_id.hex(), uuid, since,
                      {r.sha: r for r, ok in zip(recs, shown, strict=True) if ok})
    return out


def _elsewhere(store: Store, failed: list[Rec], uuid: str, out: RunRead) -> None:
    """The `failed` records of a run read off disk `uuid` read from other replicas into
    `out.payloads`. A record read elsewhere is read later than its plan: one the store stopped
    showing since (hidden, tombstoned while the run was read) is not read off another replica
    either (`out.unshown`)."""
    shown = store.index.live_many([r.sha for r in failed]) if failed else []
    for r, ok in zip(failed, shown, strict=True):
        if not ok:
            out.unshown.append(r.sha)
            continue
        try:
            out.payloads[r.sha] = _fallback(store, r, uuid)
        except ObjectNotFound:  # freed meanwhile: it was deleted (gc frees nothing else)
            out.unshown.append(r.sha)
            continue
        out.fallbacks += 1


def _prefetch_first(store: Store, number: int, run: Run, uuid: str, lead: bool = False) -> _Planned | None:
    """Hint the disk the first range `read_run` will read of `run` (as the index shows its
    records now: nothing of a record it no longer shows); the plan that range is of."""
    p = _planned(store, number, run, uuid, lead)
    if p is not None and p.groups and hasattr(p.disk, "prefetch"):
        p.disk.prefetch(run.shard_id.hex(), *span(p.groups[0]))
    return p


def read_runs(store: Store, runs: Sequence[Run], ahead: int = AHEAD, follow: Follow | None = None,
              lead: bool = False, later: bool = False) -> Generator[RunRead, None, None]:
    """Each run read (`read_run`), in the order given, every disk reading its own runs at once
    and at most `ahead` runs ahead of the consumer. A reader's error (a record no replica
    holds whole: DataError) is raised here in its run's place. Closing the iterator stops the
    readers. `follow`: the readers follow another process's reads of the same runs; `lead`:
    others follow these readers' (a local run keeping none of its records is read whole all the
    same), `Follow`. A run's payloads may be views of its range buffers (`Buffers`): the
    consumer copies what it keeps, then calls `RunRead.release`. `later`: a run the page cache
    holds whole is left to the consumer to read as it takes its records (`read_run`, `Later`)."""
    buffers = Buffers()
    disk_of = assign(store, runs, warm=later)
    following: dict[int, int] = {}  # run → the next run its disk reads
    last: dict[str, int] = {}
    for i, u in enumerate(disk_of):
        if u in last:
            following[last[u]] = i
        last[u] = i

    # a run hinted (its plan made as the disk's run before it ended) → the index's last write
    # before that plan, the run, the plan: read on that plan when nothing was written since —
    # else planned again, so a record the store stops showing in between is not read either
    hinted: dict[int, tuple[int, Run, _Planned | None]] = {}

    def hint(j: int, u: str) -> None:
        since, run = store.index.snapshot(), runs[j]  # (not generation(): it may name a write the plan misses)
        hinted[j] = (since, run, _prefetch_first(store, j, run, u, lead))

    def read(i: int, u: str) -> RunRead:
        j = following.get(i)
        then = None if j is None else lambda: hint(j, u)
        got = hinted.pop(i, None)
        if got is not None and got[0] == store.index.generation():
            return read_run(store, i, got[1], u, then, got[2], follow, lead, buffers, got[0], later)
        return read_run(store, i, runs[i], u, then, follow=follow, lead=lead, buffers=buffers, later=later)

    first = 0
    if later and follow is None and not lead:
        # a warm epoch: each run whose records the page cache holds is planned here, in the
        # consumer's thread, and handed over as it is asked for (`Later`) — no reader thread
        # hands it over (a wake-up of another thread and a turn of the interpreter's lock a run,
        # for no disk read); the readers start at the first run whose records it does not hold
        while first < len(runs):
            run = runs[first]
            disk = store.disks.get(disk_of[first]) if disk_of[first] else None
            if run.keep is not None or not isinstance(disk, LocalDisk) or \
                    not records_cached(disk, run.shard_id.hex(), run.records):
                break
            yield read_run(store, first, run, disk_of[first], later=True, cached=True)
            first += 1
    if first < len(runs):
        yield from read_assigned(disk_of, read, ahead, first)


def read_assigned(disk_of: Sequence[str], read: Callable[[int, str], RunRead],
                  ahead: int = AHEAD, first: int = 0) -> Generator[RunRead, None, None]:
    """`read(i, disk_of[i])` of each run i from `first` on, handed out in run order: one reader
    thread per disk reading its own runs in that order, at most `ahead` runs ahead of the
    consumer (`read_runs`; a training loader on another host reads its S3 disks or a mount
    through it). A reader's error is raised here in its run's place. Closing the iterator
    stops the readers."""
    mine: dict[str, list[int]] = {}
    for i in range(first, len(disk_of)):
        mine.setdefault(disk_of[i], []).append(i)
    stop = threading.Event()
    queues: dict[str, queue.Queue] = {u: queue.Queue(maxsize=max(1, ahead)) for u in mine}

    def reader(u: str) -> None:
        q = queues[u]
        for i in mine[u]:
            if stop.is_set():
                return
            try:
                item: RunRead | BaseException = read(i, u)
            except BaseException as e:  # handed to the consumer, which raises it
                put_unless(q, e, stop)
                return
            if not put_unless(q, item, stop):
                return

    threads = [Thread(reader, u, name=f"loader-read {u[:8]}") for u in mine]
    try:
        for t in threads:  # (a start that fails, or a Ctrl-C meanwhile, stops those started)
            t.start()
        for i in range(first, len(disk_of)):
            u = disk_of[i]
            while True:
                try:
                    item = queues[u].get(timeout=0.5)
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and queues[u].empty():
                        raise DataError(f"the reader of run {i} stopped without a word") from None
            if isinstance(item, BaseException):
                raise item
            assert item.number == i
            yield item
    finally:
        stop.set()
        # each reader ends within its run (no more than one run's read): joined, so none uses
        # the store after the consumer went and its owner may close it
        join_all(threads)
