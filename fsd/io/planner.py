"""The batch read planner: read many objects from their replicas as fast as the disks allow.

1. Look every sha256 up and cut each shard's requested records into pieces of at most
   PIECE_BYTES of neighbouring records (a piece is read from one disk).
2. Assign pieces, largest first, to the replica disk that would finish it earliest
   (load / bandwidth): a longest-processing-time schedule, so the slowest disk finishes
   as early as possible. Bandwidths come from `disks[].read_mb_s` or measurements.
3. On each disk, sort by (shard, offset) and coalesce records whose gap is at most
   GAP_BYTES into one read (reading a small gap is cheaper than a seek).
4. One reader thread per disk; every record is verified (header + xxh3-128) in the thread
   that read its range, then handed to a small pool of sink threads (SINK_THREADS, at most
   SINK_BUDGET bytes of ranges in their hands): the reader goes on to its next range while
   the last one's records are written, so a disk never waits for the sink's work;
   a failed range falls back to `Store.get` on the other replicas. A disk with
   `read_streams` > 1 (an S3 engine) has that many reads in flight, handed on in order
   (`in_order`), and its ranges cut at `range_limit(read_streams)`.
5. The first failure stops the whole read: an exception in a reader or a sink thread, or in
   the caller's thread (Ctrl-C), sets a stop event every reader checks before each range and
   large-record piece, and every sink thread before each record, so `execute` returns within
   about one record's time instead of reading (and handing to the sink) everything that was
   left.

The plan's per-record objects are built with the process's other objects frozen out of the
cyclic collector's walks (`hoardfs.base.collect.heap_frozen`), and the index's locations are
named tuples: a batch of tens of thousands would otherwise set off a full collection of
everything the process holds, several times the plan's own time (docs/benchmarks.md,
"The S3 backend against SeaweedFS").

`Plan.bound_s` is the plan's own makespan at the assumed bandwidths — the bound that
benchmarks compare the achieved time with; `Plan.ideal_s` is total bytes over the summed
bandwidth of the disks involved (no plan can beat it).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hoardfs.base.collect import heap_frozen
from hoardfs.base.threads import Thread, join_all
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.records import verified_view

if TYPE_CHECKING:
    from hoardfs.fsd.core.entries import ShardMeta
    from hoardfs.fsd.store import Store

PIECE_BYTES = 16 << 20
GAP_BYTES = 256 << 10
MAX_RANGE = 32 << 20
#: the longest range of a disk read with several requests in flight (an S3 engine), where
#: MAX_RANGE / read_streams would be shorter: each request is the engine's work too, on the
#: same cores here, and bench/s3_backend.py read 20,000 small objects with 4 in flight at
#: 750 / 925 MiB/s (cold / warm) in 8 MiB ranges, 901 / 1102 in 16 MiB and 886 / 966 in 32 MiB
#: (docs/benchmarks.md, "The S3 backend against SeaweedFS").
#: A reader holds up to read_streams + 3 ranges at once (`execute`)
STREAM_RANGE = 16 << 20
DEFAULT_MB_S = 100.0

Sink = Callable[[bytes, memoryview], None]
T = TypeVar("T")


@dataclass(slots=True)
class Wanted:
    sha: bytes
    offset: int  # payload offset in the shard
    length: int

    @property
    def start(self) -> int:
        return self.offset - fmt.RECORD_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(slots=True)
class ReadRange:
    shard_hex: str
    start: int
    end: int
    records: list[Wanted]


@dataclass
class Plan:
    ranges: dict[str, list[ReadRange]] = field(default_factory=dict)  # disk uuid → reads in order
    bytes_per_disk: dict[str, int] = field(default_factory=dict)
    bandwidth: dict[str, float] = field(default_factory=dict)  # bytes/s assumed per disk
    missing: list[bytes] = field(default_factory=list)  # not in the store
    large: list[Wanted] = field(default_factory=list)  # records over MAX_RANGE: streamed, never read whole
    large_by_disk: dict[str, list[Wanted]] = field(default_factory=dict)  # the disk each large record streams from
    bound_s: float = 0.0
    ideal_s: float = 0.0
    objects: int = 0
    seconds: float = 0.0  # how long making the plan took (index lookups, the balance, sorting)

    def summary(self, labels: dict[str, str]) -> dict:
        return {"objects": self.objects, "missing": len(self.missing), "bound_s": round(self.bound_s, 3),
                "ideal_s": round(self.ideal_s, 3),
                "disks": {labels.get(u, u): {"bytes": b, "mb_s": round(self.bandwidth[u] / 1e6, 1),
                                             "reads": len(self.ranges.get(u, []))}
                          for u, b in self.bytes_per_disk.items()}}


def bandwidths(store: Store, default: float | None = DEFAULT_MB_S) -> dict[str, float]:
    """Bytes/s per disk uuid: the configured `read_mb_s`, else what the batch reader measured,
    else `default` MB/s (None: such a disk is left out)."""
    out = {}
    by_label = {d.label: d for d in store.cfg.disks}
    for uuid, disk in store.disks.items():
        conf = by_label.get(disk.label)
        measured = store.measured_bw.get(uuid)
        mb_s = (conf.read_mb_s if conf and conf.read_mb_s else None) or measured or default
        if mb_s:
            out[uuid] = mb_s * 1e6
    return out


def range_limit(streams: int) -> int:
    """The longest range one read of a disk with `streams` reads in flight asks for, records
    joined: MAX_RANGE with one, MAX_RANGE / streams with several but never below STREAM_RANGE.
    (A single record up to MAX_RANGE is a range of its own, however long.)"""
    return min(MAX_RANGE, max(MAX_RANGE // max(1, streams), STREAM_RANGE))


def make_plan(store: Store, shas: list[bytes], bw: dict[str, float] | None = None) -> Plan:
    """The plan for reading `shas` (the module's steps 1–3)."""
    t0 = time.monotonic()
    bw = bw or bandwidths(store)
    plan = Plan()
    unique = list(dict.fromkeys(shas))
    by_shard: dict[bytes, list[Wanted]] = defaultdict(list)
    # the records' objects, built with the rest of the process's out of the collector's walks:
    # they outlive the block (hoardfs.base.collect)
    with heap_frozen():
        locs = store.index.lookup_many(unique)
        for sha in unique:
            loc = locs.get(sha)
            if loc is None:
                plan.missing.append(sha)
            elif loc.length > MAX_RANGE:
                plan.large.append(Wanted(sha, loc.offset, loc.length))
            else:
                by_shard[loc.shard_id].append(Wanted(sha, loc.offset, loc.length))
    plan.objects = len(unique) - len(plan.missing)
    pieces: list[tuple[int, str, list[str], list[Wanted]]] = []
    large_pieces: list[tuple[int, str, list[str], Wanted]] = []
    for w in plan.large:  # balanced with the rest: a large record is a piece of its own, streamed
        meta = store.index.get_shard(locs[w.sha].shard_id)
        cands = _candidates(store, meta)
        if meta is not None and cands:
            large_pieces.append((w.length, meta.hex, cands, w))
        else:
            plan.missing.append(w.sha)
    plan.large = [p[3] for p in large_pieces]
    for sid, wanted in by_shard.items():
        meta = store.index.get_shard(sid)
        cands = _candidates(store, meta)
        if not cands:
            plan.missing.extend(w.sha for w in wanted)
            continue
        wanted.sort(key=lambda w: w.offset)
        piece: list[Wanted] = []
        size = 0
        for w in wanted:
            if piece and size + w.length > PIECE_BYTES:
                pieces.append((size, sid.hex(), cands, piece))
                piece, size = [], 0
            piece.append(w)
            size += w.length + fmt.RECORD_HEADER_SIZE
        pieces.append((size, sid.hex(), cands, piece))
    load: dict[str, int] = defaultdict(int)
    assigned: dict[str, list[tuple[str, list[Wanted]]]] = defaultdict(list)
    everything = [(size, sh, cands, piece) for size, sh, cands, piece in pieces] + \
                 [(size, sh, cands, w) for size, sh, cands, w in large_pieces]
    everything.sort(key=lambda p: -p[0])  # biggest first: the greedy balance comes out even
    for size, shard_hex, cands, what in everything:
        best = min(cands, key=lambda u: ((load[u] + size) / bw.get(u, DEFAULT_MB_S * 1e6), u))
        load[best] += size
        if isinstance(what, Wanted):
            plan.large_by_disk.setdefault(best, []).append(what)
        else:
            assigned[best].append((shard_hex, what))
    for uuid, chosen in assigned.items():
        # a piece is a run of one shard's records in offset order, and two pieces of a shard
        # never interleave: ordering the pieces orders the records (sorting 20,000 records
        # one by one took half the plan's time)
        chosen.sort(key=lambda p: (p[0], p[1][0].offset))
        longest = range_limit(store.disks[uuid].read_streams)
        ranges: list[ReadRange] = []
        for shard_hex, piece in chosen:
            # the range this shard's records go on into while they fit (the last piece's too)
            last = ranges[-1] if ranges and ranges[-1].shard_hex == shard_hex else None
            for w in piece:
                start, end = w.offset - fmt.RECORD_HEADER_SIZE, w.offset + w.length
                if last is not None and start - last.end <= GAP_BYTES and end - last.start <= longest:
                    last.end = max(last.end, end)
                    last.records.append(w)
                else:
                    last = ReadRange(shard_hex, start, end, [w])
                    ranges.append(last)
        plan.ranges[uuid] = ranges
    for uuid in set(plan.ranges) | set(plan.large_by_disk):
        plan.ranges.setdefault(uuid, [])
        plan.bytes_per_disk[uuid] = (sum(r.end - r.start for r in plan.ranges[uuid])
                                     + sum(w.length for w in plan.large_by_disk.get(uuid, [])))
        plan.bandwidth[uuid] = bw.get(uuid, DEFAULT_MB_S * 1e6)
    if plan.bytes_per_disk:
        plan.bound_s = max(b / plan.bandwidth[u] for u, b in plan.bytes_per_disk.items())
        involved = {u for _, _, cands, _ in everything for u in cands}
        plan.ideal_s = sum(plan.bytes_per_disk.values()) / sum(bw.get(u, DEFAULT_MB_S * 1e6) for u in involved)
    plan.seconds = time.monotonic() - t0
    return plan


@dataclass
class ReadStats:
    objects: int = 0
    bytes: int = 0
    fallbacks: int = 0
    seconds: float = 0.0
    per_disk_seconds: dict[str, float] = field(default_factory=dict)


class Stopped(Exception):
    """Raised inside a reader (from a large record's piece iterator) when the read was stopped:
    a large_sink sees it like a read error and must let it through."""


#: how many reads a disk's helper thread keeps ready ahead of its consumer (each up to
#: MAX_RANGE, or one ITER_READ piece of a large record)
READ_AHEAD = 1

#: the threads that call the sink for the records the readers verified (a stage's file writes
#: and sha256 checks: both let go of the GIL), apart from the readers, so a disk's next range is
#: read while the last one's records are written: bench/stage_small.py
SINK_THREADS = 4
#: the bytes of ranges whose records wait for or are in a sink call (a payload is a view into
#: its range, which stays held until its last record is written): a reader waits for room
#: before it hands a range on; a range longer than the budget goes when nothing else is held
SINK_BUDGET = 128 << 20


class _Handoff:
    """Verified records from the readers to SINK_THREADS threads calling `sink`, with at most
    `budget` bytes of ranges held. A sink's exception goes to `failed` (which stops the read);
    once `stop` is set the records still queued are dropped, not written."""

    def __init__(self, sink: Sink, stop: threading.Event, failed: Callable[[BaseException], None],
                 threads: int | None = None, budget: int | None = None) -> None:
        threads = SINK_THREADS if threads is None else threads
        self.sink, self.stop, self.failed = sink, stop, failed
        self.budget = SINK_BUDGET if budget is None else budget
        self.queue: queue.SimpleQueue = queue.SimpleQueue()  # bounded by the budget, not a count
        self.room = threading.Condition()
        self.held = 0
        self.threads = [Thread(self._run, name=f"sink-{k}") for k in range(threads)]
        for t in self.threads:
            t.start()

    def hand(self, rng: ReadRange, payloads: list[memoryview]) -> bool:
        """Queue the range's verified `payloads` (its first records) once the budget has room
        for the range; False (nothing queued) when the read was stopped meanwhile."""
        size = rng.end - rng.start
        with self.room:
            while self.held and self.held + size > self.budget:
                if self.stop.is_set():
                    return False
                self.room.wait(0.05)
            if self.stop.is_set():
                return False
            self.held += size
        left = [len(payloads), size]  # records of the range not yet done; its bytes
        for w, payload in zip(rng.records, payloads, strict=False):
            self.queue.put((w.sha, payload, left))
        return True

    def _done(self, left: list[int]) -> None:
        with self.room:
            left[0] -= 1
            if left[0] == 0:
                self.held -= left[1]
                self.room.notify_all()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            sha, payload, left = item
            del item  # (the range is let go of with its last record)
            try:
                if not self.stop.is_set():  # a stopped read's queued records are dropped
                    self.sink(sha, payload)
            except BaseException as e:  # the sink's own (a full zone, its disk's EIO): not a disk's
                self.failed(e)
            finally:
                del payload
                self._done(left)

    def close(self) -> None:
        """Wait for every queued record to be written (or dropped, once stopped) and the
        threads to end: no sink is called after this returns, or after what it raises (a Ctrl-C
        meanwhile stops the read, and is raised once the threads have ended)."""
        for _ in self.threads:
            self.queue.put(None)
        join_all(self.threads, on_interrupt=self.stop.set)


def put_unless(q: queue.Queue, item: Any, *stops: threading.Event) -> bool:
    """Put `item` on the bounded queue `q`, waiting for room until one of `stops` is set; False
    then (the consumer left or the read was stopped: the producer ends)."""
    while not any(e.is_set() for e in stops):
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _ahead(source: Iterator, stop: threading.Event, name: str) -> Iterator:
    """The items of `source`, produced by a helper thread READ_AHEAD ahead of the consumer:
    the disk reads the next range while this one is verified, hashed and written (a throttled
    or seeking disk otherwise idles through all the consumer's CPU work). An exception of the
    source is raised here, in its place; Stopped when the read is stopped."""
    q: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    gone = threading.Event()  # the consumer left (done, or an exception of its own)

    def put(item) -> bool:
        return put_unless(q, item, stop, gone)

    def produce() -> None:
        it = iter(source)
        try:
            while not (stop.is_set() or gone.is_set()):  # checked before each read starts
                try:
                    x = next(it)
                except StopIteration:
                    put((False, None))
                    return
                if not put((True, x)):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            put((False, e))

    t = threading.Thread(target=produce, name=name, daemon=True)
    t.start()
    try:
        while True:
            try:
                more, x = q.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    raise Stopped("the batch read was stopped") from None
                continue
            if not more:
                if x is not None:
                    raise x
                return
            yield x
    finally:
        # not joined: a read under way ends on its own and the thread with it (it calls no
        # sink), while the consumer's own exception must reach `stop` at once
        gone.set()
        with contextlib.suppress(queue.Empty):
            q.get_nowait()  # a put waiting for room returns now and sees `gone`


def in_order(calls: Iterable[Callable[[], T]], streams: int) -> Iterator[T]:
    """The results of `calls`, in their order, with up to `streams` of them running at once in
    threads of their own (one after the other when `streams` is 1). An exception is raised in
    its call's place. At most `streams` results are held besides the one handed out; calls not
    started yet are dropped when the consumer leaves (the iterator closed or collected)."""
    if streams <= 1:
        for call in calls:
            yield call()
        return
    pool = ThreadPoolExecutor(streams, thread_name_prefix="in-order")
    try:
        todo = iter(calls)
        window: collections.deque[Future[T]] = collections.deque(
            pool.submit(c) for c in itertools.islice(todo, streams))
        while window:
            first = window.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(nxt))
            yield first.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _range_reads(disk, ranges: list[ReadRange]) -> Iterator[tuple[ReadRange, list[memoryview], Exception | None]]:
    """Each range with its records' payloads, verified (`_verified`), and the read error it met
    (the consumer reports it and reads what was not verified from other replicas);
    `disk.read_streams` ranges at once (an S3 engine: several ranged GETs in flight; a local
    disk: one), each verified in the thread that read it."""
    def read(rng: ReadRange) -> Callable[[], tuple[ReadRange, list[memoryview], Exception | None]]:
        return lambda: (rng, *_verified(disk, rng))

    yield from in_order((read(rng) for rng in ranges), disk.read_streams)


def _verified(disk, rng: ReadRange) -> tuple[list[memoryview], Exception | None]:
    """The range read, and the payloads of its records that check out (header, xxh3-128), in
    order, as views into its bytes — up to the first that does not, with the error that
    stopped it (a read error: none). Done in the thread that read the range, not the one
    handing payloads to the sink: the checks of several ranges run beside each other (xxh3
    lets go of the GIL) and beside the sink's own work (docs/benchmarks.md,
    "The S3 backend against SeaweedFS")."""
    views: list[memoryview] = []
    try:
        buf = memoryview(_read_range(disk, rng))
        where = f" (shard {rng.shard_hex} on {disk.label})"
        for w in rng.records:
            views.append(verified_view(buf, w.start - rng.start, w.sha, w.length, where))
    except (OSError, fmt.ShardFormatError) as e:
        return views, e
    return views, None


def _candidates(store: Store, meta: ShardMeta | None) -> list[str]:
    """The disks a shard's piece may be read from: its usable replicas, or, when it has none,
    those on failed but attached disks (Store.last_resort) rather than calling it missing."""
    if meta is None:
        return []
    return [d.uuid for d in store.replica_order(meta) or store.last_resort(meta)]


def execute(store: Store, plan: Plan, sink: Sink,
            large_sink: Callable[[bytes, Iterator[bytes]], None] | None = None) -> ReadStats:
    """Run the plan: one reader per disk; `sink(sha, payload)` is called from SINK_THREADS sink
    threads the readers hand their verified records to (`_Handoff`), and from the calling
    thread for what a failed range had not delivered (read again from other replicas).
    Records over MAX_RANGE are handed to `large_sink(sha, pieces)` by the reader of the disk
    the plan chose for them, after its ranges — an iterator of verified pieces
    (Store.iter_object, that disk first, another replica for a piece it fails), so no object
    is ever held whole; a plan with such records needs a `large_sink`, and both sinks must be
    safe to call from several threads at once.

    An exception from a sink (or a reader) stops every reader and is raised here; so is one
    the calling thread gets while it waits (KeyboardInterrupt), after the readers stopped —
    no sink is called once `execute` has returned.

    Memory: a disk's reader holds up to `read_streams` + 3 ranges at once with several streams
    — those in flight (`in_order`), one its read-ahead thread waits to queue, one in the queue
    (READ_AHEAD) and the one it waits to hand on — and 3 with one: 4 streams of 16 MiB (an S3
    disk) 112 MiB, one of 32 MiB (a local disk) 96 MiB; a range of one record up to MAX_RANGE
    is that long (an S3 disk's reader: up to 224 MiB). The sink threads hold SINK_BUDGET
    (128 MiB) of ranges besides, or one range longer than that."""
    if plan.large and large_sink is None:
        raise ValueError(f"{len(plan.large)} objects are larger than {MAX_RANGE >> 20} MiB: pass a large_sink "
                         "that consumes them piece by piece")

    stats = ReadStats()
    lock = threading.Lock()
    failed: list[tuple[str, list[Wanted]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []  # the first reader failure is the one raised (the rest stopped because of it)

    def fail(e: BaseException) -> None:
        with lock:
            errors.append(e)
        stop.set()

    def read_disk(uuid: str) -> None:
        try:
            _read_disk(uuid)
        except Stopped:
            pass
        except BaseException as e:
            fail(e)

    def _read_disk(uuid: str) -> None:
        disk = store.disks[uuid]
        t0 = time.monotonic()
        n_obj = n_bytes = 0
        for rng, payloads, err in _ahead(_range_reads(disk, plan.ranges[uuid]), stop, f"read-ahead {disk.label}"):
            if stop.is_set():
                return
            delivered = 0
            try:
                # (the payloads stop at the first record that does not check out)
                if payloads:
                    if not handoff.hand(rng, payloads):
                        return
                    delivered = len(payloads)
                    n_obj += delivered
                    n_bytes += sum(w.length for w in rng.records[:delivered])
                if err is not None:
                    raise err
            except (OSError, fmt.ShardFormatError) as e:
                store.disk_error(disk, "read", e, rng.shard_hex)
                with lock:
                    failed.append((uuid, rng.records[delivered:]))
        for w in plan.large_by_disk.get(uuid, []):  # read errors fail over piece by piece (iter_object)
            if stop.is_set():
                return
            assert large_sink is not None  # checked above: a plan with large records has one
            large_sink(w.sha, _ahead(store.iter_object(w.sha, first=uuid, exact=True), stop, f"read-ahead {disk.label}"))
            n_obj += 1
            n_bytes += w.length
        took = time.monotonic() - t0
        with lock:
            stats.objects += n_obj
            stats.bytes += n_bytes
            stats.per_disk_seconds[disk.label] = took
            if n_bytes >= 8 << 20 and took > 0:  # learn the disk's real speed (EWMA)
                old = store.measured_bw.get(uuid)
                now = n_bytes / took / 1e6
                store.measured_bw[uuid] = now if old is None else 0.7 * old + 0.3 * now

    t0 = time.monotonic()
    handoff = _Handoff(sink, stop, fail)
    readers = [Thread(read_disk, uuid, name=f"reader {store.disks[uuid].label}") for uuid in plan.ranges]
    try:
        try:
            for t in readers:
                t.start()
        except BaseException:
            stop.set()
            raise
        finally:  # a Ctrl-C while waiting stops the readers at their next check, and is raised once they ended
            join_all(readers, on_interrupt=stop.set)
    finally:
        handoff.close()  # every record handed on is written (dropped once stopped) before this returns
    if errors:
        raise errors[0]
    for uuid, rest in failed:  # what a failed range had not delivered, one by one from other replicas
        for w in rest:
            data = store.get(w.sha.hex(), avoid={uuid})
            sink(w.sha, memoryview(data))
            stats.objects += 1
            stats.bytes += w.length
            stats.fallbacks += 1
    stats.seconds = time.monotonic() - t0
    return stats


#: what `warming` asks each disk to read ahead at most, in pieces of WARM_PIECE: the longest
#: a stopped warm-up goes on reading, and no longer than a read-ahead window (the kernel reads
#: one window of what POSIX_FADV_WILLNEED asks: 2.5 MiB on the lab)
WARM_BYTES = 512 << 20
WARM_PIECE = 2 << 20
#: a piece whose last page comes back faster than this was in the page cache already: the
#: rest is taken to be there too (a warm run asks for no more than a piece a disk)
WARM_CACHED_S = 0.0005


@contextlib.contextmanager
def warming(store: Store, shas: list[bytes]) -> Iterator[Callable[[], None]]:
    """While the block runs (a caller still planning what to write where: its SQL, its paths,
    its checks), each local disk reads the start of its share of `make_plan(store, shas)` into
    the page cache, piece by piece in the plan's order, up to WARM_BYTES; `execute` of that
    plan then finds it there instead of starting on idle disks (bench/stage_small.py: a cold
    stage of 10,000 small files on the lab takes 0.5–0.7 s less). Yields `stop`, which ends it (the
    pieces asked for are still read, as the copy would); the block's end stops it too and
    waits for the disks' last pieces. Only a hint: nothing read here is used or trusted —
    `execute` reads and checks every byte itself —, and its errors are left for `execute`
    to meet."""
    stop = threading.Event()

    def warm(disk, ranges: list[ReadRange]) -> None:
        done = 0
        for rng in ranges:
            for off in range(rng.start, rng.end, WARM_PIECE):
                if stop.is_set() or done >= WARM_BYTES:
                    return
                n = min(WARM_PIECE, rng.end - off)
                t0 = time.monotonic()
                try:
                    # the kernel reads the piece into the page cache (no copy here); reading its
                    # last page waits until it is there, so one piece a disk is asked for at a time
                    disk.prefetch(rng.shard_hex, off, n)
                    disk.read_exact(rng.shard_hex, off + n - min(n, 4096), min(n, 4096))
                except Exception:  # (execute meets it: a read error is handled there)
                    return
                done += n
                if time.monotonic() - t0 < WARM_CACHED_S:
                    return  # cached already

    def start() -> None:
        try:
            plan = make_plan(store, shas)
        except Exception:  # (the caller's own plan meets it)
            return
        for uuid, ranges in plan.ranges.items():
            disk = store.disks[uuid]
            # a local disk (the page cache holds what it reads)
            if not disk.stream_large and hasattr(disk, "prefetch") and ranges and not stop.is_set():
                t = Thread(warm, disk, ranges, name=f"warm {disk.label}")
                t.start()
                threads.append(t)

    threads: list[Thread] = []
    starter = Thread(start, name="warm-plan")
    starter.start()
    try:
        yield stop.set
    finally:
        stop.set()
        join_all([starter])  # (then `threads` holds every warm thread started)
        join_all(threads)


def _read_range(disk, rng: ReadRange) -> bytes:
    return disk.read_exact(rng.shard_hex, rng.start, rng.end - rng.start)
