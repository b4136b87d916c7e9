"""`hoard gc`: free the space of deleted objects by compacting shards.

A sealed shard's *live ratio* is the payload of the records the index still points at —
minus those tombstoned by a type-B delete — over the payload its records hold (`payload`:
the size without framing, so a whole shard of small objects is 100 % live). Shards below the
threshold are compacted, in this order (docs/design.md, "gc order"):

1. **plan + reserve**: the live bytes are each shard's `live` count (index format 4,
   hoardfs.fsd.core.live) less its dead objects' lengths — a lookup per dead object, no pass over
   the objects table —, a candidate's members its footer's records the index points there.
   Live bytes × replica target must fit in the disks' free space
   (with one shard of slack per disk); the space is claimed with `fallocate`d reservation
   files (`<disk>/tmp/gc-reserve`) so a concurrent ingest cannot take it; else refuse.
2. **copy**: live records are read (verified) and appended to new shards by an ordinary
   writer (fsync on `write_ack` disks), sealed, then replicated to the target.
3. **swap** (one LMDB transaction): every live object that still points at an old shard
   is pointed at its new copy; objects still tombstoned are dropped with their marks
   (and 16 bytes of each kept in `dropped`, for the mount's by-hash numbers);
   the old shard moves from `shards` to `retired`. An object whose tombstone was cleared
   meanwhile (stored again) but was not copied keeps its old shard alive: that shard is
   not retired this round — nor is one whose `live` count the moves and drops would not
   bring to 0 (an object the index points there that its members lack: `kept_damaged`).
4. **delete**: the retired shards' replica files are removed, then the `retired` entry.

A crash before 3 leaves unreferenced new shards (garbage for the next gc); after 3, the
next run finishes step 4 first. Nothing the index points at is ever deleted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.disks import DiskGone
from hoardfs.fsd.core.index import ObjectLoc, ShardMeta
from hoardfs.fsd.core.layout import pinned
from hoardfs.fsd.core.live import Tally
from hoardfs.fsd.core.placement import Need, simulate, space_report
from hoardfs.fsd.core.records import STREAM_THRESHOLD
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES, chunked
from hoardfs.fsd.io import integrity
from hoardfs.fsd.io.replicate import _replicate
from hoardfs.fsd.io.writer import ReplicaFailed, ShardWriter
from hoardfs.fsd.outputs import holders
from hoardfs.fsd.outputs.manifest import naming_lock
from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)

RESERVE_NAME = "gc-reserve"


class GcNoSpace(HoardError):
    exit_code = ExitCode.NO_SPACE


@dataclass
class GcReport:
    candidates: int = 0
    compacted: int = 0
    kept_back: int = 0  # an object was stored again meanwhile: retried next run
    #: shards left as they are: no replica's footer lists the whole body, or the index counts more
    #: objects in them than gc moved or dropped — `hoard check` names each, with its next step
    kept_damaged: int = 0
    live_bytes_copied: int = 0
    objects_dropped: int = 0
    replicas_deleted: int = 0
    bytes_freed: int = 0
    bytes_written: int = 0  # the new shards' replica files (live data × its copies)
    stale_cleared: int = 0  # chunk maps and extensions of objects not in the store
    seconds: float = 0.0
    plan: list[dict] = field(default_factory=list)


Roots = Callable[[set[bytes]], set[bytes]]


def referenced(store: Store, among: set[bytes], extra: Roots | None = None,
               manifests: Roots | None = None) -> set[bytes]:
    """Which of `among` something still references *now*: a registered batch or view manifest
    (and the manifest objects themselves), a root (`hoard put` acknowledged it), a pin (a job
    between acknowledgement and manifest, see Store.pin), or — through `extra` (the CLI
    passes the database's nodes) — a row.

    Reachability is computed here, at gc time, not from marks set earlier: a tombstone only
    says "someone asked to delete this"; an object is dropped only if it is tombstoned *and*
    unreferenced when gc swaps. `manifests` (holders.referencer, one per gc run): the `held`
    table, a lookup per digest — or, on an index not migrated yet, each registered manifest read
    once for the plan and the swaps together."""
    if not among:
        return set()
    refs = (manifests or holders.referencer(store))(among) | store.index.marked_among(store.index.rooted, among)
    pins, bad = pinned(store.cfg)
    if bad:
        raise HoardError(f"gc: pin files cannot be read ({'; '.join(bad)}); nothing was deleted — fix or remove "
                         "them (each names the job that relies on objects)", ExitCode.DATA)
    refs |= pins & among
    if extra is not None:
        refs |= extra(among - refs) & among
    return refs


def live_bytes(store: Store, dead: set[bytes], members_of: set[bytes] | None = None
               ) -> tuple[dict[bytes, int], dict[bytes, list[bytes]]]:
    """Per shard: live payload bytes, and every object pointing there (dead ones too) — of
    the shards in `members_of` only (None: every shard). One pass over the objects table's
    values, no object made of each entry."""
    live: dict[bytes, int] = {}
    members: dict[bytes, list[bytes]] = {}
    idx = store.index
    with idx.env.begin(db=idx.objects) as txn:
        for k, v in txn.cursor():
            loc = ObjectLoc.unpack(v, bytes(k))
            sid = loc.shard_id
            if members_of is None or sid in members_of:
                members.setdefault(sid, []).append(bytes(k))
            if not dead or bytes(k) not in dead:
                live[sid] = live.get(sid, 0) + loc.length
    return live, members


def payload(meta: ShardMeta) -> int:
    """The bytes a sealed shard's records hold: its size without the shard header, the
    trailer and each record's framing (header + footer entry, 128 bytes). Against the whole
    size a shard of 1 KiB objects was ~89 % live with nothing deleted, and every gc with a
    high threshold rewrote it again, for nothing."""
    framing = fmt.SHARD_HEADER_SIZE + fmt.TRAILER_SIZE + meta.records * (fmt.RECORD_HEADER_SIZE + fmt.FOOTER_ENTRY_SIZE)
    return max(meta.size - framing, 1)


#: the most members of the shards holding dead objects that `plan` collects in its one pass over
#: the objects table (~75 bytes each); a deletion spread over more shards takes a second pass
PLAN_MEMBERS = 1_000_000

Candidate = tuple[ShardMeta, int, list[bytes]]


def plan(store: Store, threshold: float, dead: set[bytes], members: bool = True,
         left: list[ShardMeta] | None = None) -> list[Candidate]:
    """The sealed shards below `threshold` live, with their live bytes and members (`members`
    False: an empty list each, for `--dry-run`). From the `live` table (hoardfs.fsd.core.live) once the
    index has it complete: a shard's count less the lengths of its dead objects (one lookup
    each), the members from each candidate's footer — the work grows with the dead objects and
    the shards, not with the store. Else (an index not migrated yet) by passes over the objects
    table (`_plan_by_pass`). A shard whose footer cannot be taken for its members goes to
    `left`, not to the plan."""
    metas = [meta for meta in store.index.iter_shards() if meta.sealed and meta.size > 0]
    if not store.index.live_ready():
        return _plan_by_pass(store, threshold, dead, metas)
    idx = store.index
    with idx.env.begin() as txn:  # (one moment: the counts and the dead objects' entries)
        counts = idx.live_counts(txn)
        less: dict[bytes, int] = {}
        for sha in dead:
            raw = txn.get(sha, db=idx.objects)
            if raw is not None:
                loc = ObjectLoc.unpack(raw, sha)
                less[loc.shard_id] = less.get(loc.shard_id, 0) + loc.length
    below = []
    for meta in metas:
        live = max(0, counts.get(meta.shard_id, (0, 0))[1] - less.get(meta.shard_id, 0))
        if live / payload(meta) < threshold:
            below.append((meta, live))
    if not members:
        return [(meta, live, []) for meta, live in below]
    out = []
    for meta, live in below:
        shas = footer_members(store, meta)
        if shas is None:
            log.warning("gc: shard %s left as it is this round: no replica's footer lists its whole body (`hoard "
                        "verify` names the damage, `hoard verify --repair` mends it)", meta.hex)
            if left is not None:
                left.append(meta)
            continue
        out.append((meta, live, shas))
    return out


def footer_members(store: Store, meta: ShardMeta) -> list[bytes] | None:
    """The objects the index points at in `meta` (sealed), from the shard's own record list (its
    footer, from the first replica whose footer lists its whole body) checked against the index:
    a record whose entry points elsewhere (a copy stored twice) is no member. None when no
    replica's footer does: a footer that leaves out a record the index points at would leave
    that object behind in a shard about to be freed — the swap's `live` count check guards it
    only while the count is right (a count lowered by one beside such a footer lost the
    object). The swap retires the shard only when these leave its `live` count at 0 (`_swap`)."""
    recs, _size = integrity.first_footer(store, meta, whole=True)
    if recs is None:
        return None
    idx = store.index
    with idx.env.begin(db=idx.objects) as txn:
        return [sha for sha in dict.fromkeys(r.sha256 for r in recs)
                if (v := txn.get(sha)) is not None and bytes(v[:12]) == meta.shard_id]


def _plan_by_pass(store: Store, threshold: float, dead: set[bytes], metas: list[ShardMeta]) -> list[Candidate]:
    """`plan` on an index without its `live` counts. Memory for the candidates' members only, not
    for every object (a list of every object's sha256 by shard would make `gc --dry-run` grow
    ~100 B per object): the objects table is read once, for the live bytes and the members of the
    shards the dead objects are in (found by their lookups: the shards a deletion made sparse, up
    to PLAN_MEMBERS members), and once more only when a shard below the threshold is not one of
    them."""
    records = {meta.shard_id: meta.records for meta in metas}
    hit = {loc.shard_id for sha in dead if (loc := store.index.lookup(sha)) is not None}
    if sum(records.get(sid, 0) for sid in hit) > PLAN_MEMBERS:
        hit = set()
    live, members = live_bytes(store, dead, members_of=hit)
    below = [(meta, live.get(meta.shard_id, 0)) for meta in metas
             if live.get(meta.shard_id, 0) / payload(meta) < threshold]
    rest = {meta.shard_id for meta, _ in below} - hit
    if rest:
        members |= live_bytes(store, dead, members_of=rest)[1]
    return [(meta, got, members.get(meta.shard_id, [])) for meta, got in below]


def gc(store: Store, threshold: float = 0.5, dry_run: bool = False, roots: Roots | None = None,
       wait_s: float = 0.0, progress: Callable[[int, int], None] | None = None) -> GcReport:
    """Compact shards whose live share is below `threshold`. `roots(candidates)` names which
    tombstoned objects something outside the store (the database) still references; they
    are kept and their tombstones cleared. Holds the maintenance lock throughout and the
    store lock exclusively while it decides what is unreferenced and swaps."""
    with store.maintenance("gc", wait_s=wait_s):
        return _gc(store, threshold, dry_run, roots, wait_s, progress)


def _gc(store: Store, threshold: float, dry_run: bool, roots: Roots | None, wait_s: float,
        progress: Callable[[int, int], None] | None = None) -> GcReport:
    t0 = time.monotonic()
    rep = GcReport()
    rep.replicas_deleted, rep.bytes_freed = _finish_retired(store)  # a crashed run's step 4
    if not dry_run:
        rep.stale_cleared = _clear_stale(store)
        with naming_lock(store):  # a deletion a killed process left half done: its tombstones first
            holders.finish(store)
    tombstoned = store.index.marked(store.index.deleted)
    manifests = holders.referencer(store)  # (an index not migrated: each manifest read once, plan and swaps)
    wanted = referenced(store, tombstoned, roots, manifests)
    if wanted and not dry_run:
        store.index.unmark(store.index.deleted, wanted)  # referenced again: not deleted after all
    dead = tombstoned - wanted
    left: list[ShardMeta] = []
    todo = plan(store, threshold, dead, members=not dry_run, left=left)
    rep.kept_damaged = len(left)
    rep.candidates = len(todo)
    rep.plan = [{"shard": m.hex, "size": m.size, "live": live, "ratio": round(live / payload(m), 3)}
                for m, live, _ in todo]
    if dry_run or not todo:
        if not dry_run:
            store.compact_marks()  # marks churn frees nothing, and the logs still grow
        rep.seconds = time.monotonic() - t0
        return rep
    by_class: dict[str, list] = {}
    for item in todo:
        by_class.setdefault(item[0].klass, []).append(item)
    for klass, items in by_class.items():
        reservation = _reserve(store, klass, sum(live for _, live, _ in items))
        try:
            total = sum(live for _, live, _ in todo)
            moved, written = _copy_live(store, klass, items, dead,
                               functools.partial(_shifted, progress, rep.live_bytes_copied, total) if progress else None)
        finally:
            reservation.release()
        rep.live_bytes_copied += sum(live for _, live, _ in items)
        rep.bytes_written += written
        with store.exclusive("gc swap", wait_s=max(wait_s, 60)):
            # who references what is decided again now, with every writer stopped: objects
            # stored again, pinned or named by a new manifest since the plan are kept
            candidates = {sha for _, _, shas in items for sha in shas if sha not in moved}
            still = referenced(store, candidates & store.index.marked(store.index.deleted), roots, manifests)
            done, kept, damaged, dropped = _swap(store, items, moved, still)
        rep.compacted += done
        rep.kept_back += kept
        rep.kept_damaged += damaged
        rep.objects_dropped += dropped
    deleted, freed = _finish_retired(store)
    rep.replicas_deleted += deleted
    rep.bytes_freed += freed
    store.compact_marks()  # the drops above end the history of these objects' marks
    rep.seconds = time.monotonic() - t0
    return rep


def _shifted(progress: Callable[[int, int], None], base: int, total: int, n: int) -> None:
    """`progress` of one class's copy, counted on from the bytes the classes before it copied."""
    progress(base + n, total)


def _clear_stale(store: Store) -> int:
    """Drop chunk maps and extensions of objects the store does not hold (a `hoard put` that
    failed or was killed between recording an object's chunk map and storing it). They only
    describe bytes, are in no marks log, and an object stored later learns its map again on
    its first read (Store.chunk_map); the marks (deleted, hidden, root) are left to check."""
    idx = store.index
    cleared = 0
    for db in (idx.chunks, idx.exts):
        with idx.env.begin() as txn:  # read first, written in bounded transactions (txnlog.chunked)
            stale = [bytes(k) for k in txn.cursor(db=db).iternext(values=False)
                     if txn.get(bytes(k), db=idx.objects) is None]
        for part in chunked(stale, 1):
            with idx.env.begin(write=True) as txn:
                # (stored meanwhile: the put that stores an object writes its extension with it)
                cleared += sum(1 for sha in part if txn.get(sha, db=idx.objects) is None and txn.delete(sha, db=db))
    return cleared


# -- 1. reserve ------------------------------------------------------------------------------

def _reserve(store: Store, klass: str, live: int) -> Reservation:
    """Place the copies on paper first — the live bytes as new shards, each with the class's
    replica target on distinct disks, a shard of slack left on every disk — and reserve what
    each disk would take; refuse before anything is written when they do not fit."""
    size, target, slack = store.shard_bytes, store.target(klass), store.shard_bytes
    needs = [Need(min(size, live - off), target, what=f"new {klass} shard {i + 1}")
             for i, off in enumerate(range(0, live, size))]
    cands = store.candidates()
    taken, unplaced = simulate(cands, needs, slack)
    if unplaced:
        raise GcNoSpace(f"gc needs room for {fmt_bytes(live * target)} of copies before it can free anything: "
                        f"{space_report(cands, unplaced, slack)}; raise --threshold less (fewer shards), add a "
                        "disk, or delete more first — nothing was changed")
    res = Reservation(store)
    try:
        for u, nbytes in taken.items():
            res.add(store.disks[u], nbytes)
    except OSError as e:
        res.release()
        raise GcNoSpace(f"gc could not reserve {fmt_bytes(live * target)} ({e.strerror}); free space first") from None
    return res


class Reservation:
    """Space set aside on the disks with `fallocate`d files (`<disk>/tmp/gc-reserve`), so a
    concurrent ingest cannot take what gc's copies need. It is handed over piece by piece:
    the store counts it as free for this process's own placement (Store.reservations), and
    each shard or replica gc places on a disk shrinks that disk's file first."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.files: dict[str, tuple[str, int]] = {}  # disk uuid → (path, bytes still reserved)
        store.reservations = self

    def add(self, disk, nbytes: int) -> None:
        if not has_files(disk):  # an S3 disk: its space is the capacity granted, which only hoard spends
            self.files[disk.uuid] = ("", nbytes)
            return
        path = disk.tmp_path(RESERVE_NAME)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        finally:
            os.close(fd)
        self.files[disk.uuid] = (str(path), nbytes)

    def remaining(self, uuid: str) -> int:
        return self.files.get(uuid, ("", 0))[1]

    def take(self, uuid: str, nbytes: int) -> None:
        """Give `nbytes` of the disk's reservation back to the filesystem for a write about to happen."""
        if uuid not in self.files:
            return
        path, left = self.files[uuid]
        left = max(0, left - nbytes)
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(path, left)
        self.files[uuid] = (path, left)

    def release(self) -> None:
        for path, _ in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.files.clear()
        if self.store.reservations is self:
            self.store.reservations = None


# -- 2. copy ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _stopped_by_a_failing_disk(writer: ShardWriter):
    """A disk the copies go to fails (vanishes, EIO, full): its state is recorded and gc stops
    with a message naming it — nothing is freed until the copies are whole and indexed, so every
    object is still where it was (a re-run writes to the other disks)."""
    try:
        yield
    except ReplicaFailed as f:
        writer.disk_failed(f)
        raise HoardError(f"gc stopped: {f} (while live objects were copied out of sparse shards). Nothing was "
                         "freed: every object is where it was. `hoard health` names the disk; run `hoard gc` "
                         "again (it writes to the other disks)", ExitCode.UNAVAILABLE) from None


def _copy_live(store: Store, klass: str, items, dead: set[bytes],
               progress: Callable[[int], None] | None = None) -> tuple[dict[bytes, ObjectLoc], int]:
    """Append every live record of the candidates to new shards; return sha → new location,
    and the bytes of the new shards' replica files (each shard's size × its copies)."""
    writer = ShardWriter(store, klass)
    writer.log_written = True
    moved: dict[bytes, ObjectLoc] = {}
    copied = 0
    try:
        with store.lock, _stopped_by_a_failing_disk(writer):
            for _meta, _live, shas in items:
                for sha in shas:
                    if sha in dead:
                        continue
                    loc = store.index.lookup(sha)
                    if loc is not None and loc.length > STREAM_THRESHOLD:  # streamed: never whole in memory
                        writer.append_stream(sha, store.record_digest(sha), loc.length, store.iter_object(sha))
                        writer.commit()
                        n = loc.length
                    else:
                        data = store.get(sha.hex())  # verified, from any good replica
                        writer.append(sha, data)
                        n = len(data)
                    copied += n
                    if progress:
                        progress(copied)
                    if writer.shard and len(writer.shard.pending) >= 256:
                        writer.commit()
                        moved.update(writer.drain_written())
                writer.commit()
                moved.update(writer.drain_written())
            writer.seal()
    finally:
        writer.close()
    new_shards = {loc.shard_id for loc in moved.values()}
    for _ in range(3):  # bring the copies to the replica target before the old ones go
        _replicate(store, budget_s=3600, rate_mb_s=None)
        short = [s for s in new_shards if store.copies_of(store.index.get_shard(s) or ShardMeta(s, klass))
                 < store.target(klass)]
        if not short:
            break
    else:
        raise HoardError(f"gc: {len(short)} new shards stay below {store.target(klass)} replicas; nothing was "
                         "deleted — see `hoard health`", ExitCode.UNAVAILABLE)
    metas = [m for s in new_shards if (m := store.index.get_shard(s)) is not None]
    return moved, sum(m.size * len(m.replicas) for m in metas)


# -- 3. swap ---------------------------------------------------------------------------------

def _swap(store: Store, items, moved: dict[bytes, ObjectLoc], referenced_now: set[bytes]
          ) -> tuple[int, int, int, int]:
    """Point lookups of each candidate shard's members (known from the plan: a sealed shard
    gains no objects), never a scan of the whole index — in write transactions of a bounded
    size (txnlog.TXN_ENTRIES), several shards to one, a large shard over several: first its
    live members are pointed at their copies (already at the replica target), in slices;
    then, in one transaction, its dead members are dropped and the shard retired. A gc
    stopped between two transactions leaves every object pointing at a listed shard that
    holds it (its old one or its copy's), and no record of a listed shard outside the index
    (a dropped object's shard is retired with it) — what check, verify and health expect.
    One shard's drops are never split, so a transaction may hold one shard's dead members
    (SWAP_ENTRIES entries each): bounded by the shard size, not by the store. A member
    wanted again since the plan keeps its shard this round (`kept`); the next gc compacts it. One
    whose `live` count disagrees is kept too (`damaged`: `hoard check` names it)."""
    idx = store.index
    done = kept = damaged = dropped = 0
    per = TXN_ENTRIES - SLACK
    parts = []  # (meta, members, repoint only?, weight in entries)
    for meta, _live, shas in items:
        live = [sha for sha in shas if sha in moved]
        parts += [(meta, live[i:i + per], True, len(live[i:i + per])) for i in range(0, len(live), per)]
        parts.append((meta, [sha for sha in shas if sha not in moved], False, SWAP_ENTRIES * (len(shas) - len(live))))
    for chunk in _fill(parts, per):
        gone: list[bytes] = []
        with idx.env.begin(write=True) as txn:
            tally = Tally(idx, txn)  # (the `live` counts change with the entries, in this transaction)
            for meta, shas, repoint, _ in chunk:
                sid = meta.shard_id
                here = {sha: ObjectLoc.unpack(v, sha).length for sha in shas
                        if (v := txn.get(sha, db=idx.objects)) is not None and bytes(v[:12]) == sid}
                if repoint:
                    for sha, length in here.items():
                        txn.put(sha, moved[sha].pack(), db=idx.objects)
                        tally.remove(sha, sid, length)
                        tally.add(sha, moved[sha].shard_id, moved[sha].length)
                    continue
                if any(txn.get(sha, db=idx.deleted) is None or txn.get(sha, db=idx.rooted) is not None
                       or sha in referenced_now for sha in here):
                    kept += 1  # wanted again since the plan and not copied: keep the shard this round
                    continue
                left = tally.entries(txn, sid)
                if left is not None and left != len(here):
                    # the index points more objects at the shard than its members (a footer that
                    # lacks one): never retire a shard an entry may still need — kept, check names it
                    log.warning("gc: shard %s kept: the index counts %d objects in it, %d were moved or dead "
                                "(`hoard check` names what disagrees, with its next step)", meta.hex, left, len(here))
                    damaged += 1
                    continue
                for sha, length in here.items():
                    txn.delete(sha, db=idx.objects)
                    tally.remove(sha, sid, length)
                    for db in (idx.deleted, idx.hidden, idx.rooted, idx.exts, idx.chunks):
                        txn.delete(sha, db=db)
                    dropped += 1
                current = txn.get(sid, db=idx.shards)
                if current is not None:
                    txn.put(sid, current, db=idx.retired)
                    txn.delete(sid, db=idx.shards)
                done += 1
                gone.extend(here)
            tally.apply(txn)
            idx.note_dropped(txn, gone)  # (the mount's by-hash numbers: Index.sole_owner)
            idx.log_in(txn, "drop", gone)  # an object stored anew later must not get the old marks back
    return done, kept, damaged, dropped


#: the most entries one dropped object writes in the swap: its object entry, a tombstone, a
#: hide, a root, an extension, a chunk map, its `dropped` entry and its marks-log record
SWAP_ENTRIES = 8


def _fill(parts: Iterable[tuple[ShardMeta, list[bytes], bool, int]],
          per: int) -> Iterator[list[tuple[ShardMeta, list[bytes], bool, int]]]:
    """The parts grouped into transactions of at most `per` entries (a part is never split; one
    heavier than `per` is a transaction of its own)."""
    chunk: list[tuple[ShardMeta, list[bytes], bool, int]] = []
    n = 0
    for part in parts:
        if chunk and n + part[3] > per:
            yield chunk
            chunk, n = [], 0
        chunk.append(part)
        n += part[3]
    if chunk:
        yield chunk


# -- 4. delete --------------------------------------------------------------------------------

def _finish_retired(store: Store) -> tuple[int, int]:
    idx = store.index
    with idx.env.begin(db=idx.retired) as txn:
        retired = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    deleted = freed = 0
    for sid, raw in retired:
        meta = ShardMeta.from_json(sid, raw)  # IndexDamaged if malformed (exit 5, names the rebuild)
        remaining, removed = [], {}
        for uuid in meta.replicas:
            disk = store.disks.get(uuid)
            if disk is None or not store.usable(uuid):
                remaining.append(uuid)  # a missing disk keeps its copy until it is back or replaced
                continue
            try:
                try:
                    size = disk.size(meta.hex)
                except FileNotFoundError:
                    disk.check()  # gone already (an earlier run deleted it) — unless the disk itself is gone
                else:
                    disk.delete(meta.hex)  # DiskGone if it dropped off since the size: not counted
                    deleted += 1
                    freed += size
            except DiskGone as e:
                log.warning("gc: shard %s on %s kept for later: %s", meta.hex, disk.label, e)
                remaining.append(uuid)
                continue
            except OSError as e:
                log.warning("gc: cannot delete shard %s on %s: %s", meta.hex, disk.label, e)
                remaining.append(uuid)
                continue
            removed[uuid] = -meta.size  # what sealing or copying it counted, whatever run deleted it
        with idx.env.begin(write=True) as txn:
            idx._adjust_used(txn, removed)  # with the record of the replicas left: counted once
            if remaining:
                meta.replicas = remaining
                txn.put(sid, meta.to_json(), db=idx.retired)
            else:
                txn.delete(sid, db=idx.retired)
                txn.delete(sid, db=idx.shards)
    return deleted, freed

