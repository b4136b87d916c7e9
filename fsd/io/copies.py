"""What every disk keeps a copy of beside its shards — the marks log and the pointers — kept
in step with the index: appended and written on every disk in service, brought up to the
index on a disk that is behind (added, replaced onto, back from failed or unplugged),
snapshotted when a log grows. The index decides what they say (hoardfs.fsd.core.index: the marks
tables and the `pointers` table), hoardfs.fsd.core.marks and hoardfs.fsd.core.pointers their formats; the
store facade delegates here, and each disk's `beside` (hoardfs.fsd.core.beside) keeps them. Each is
written on a disk checked to be there before and after the write (`on_disk`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import lmdb

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.modes import FILE
from hoardfs.fsd.core import marks, pointers
from hoardfs.fsd.core.backend import Disk
from hoardfs.fsd.core.disks import DiskGone
from hoardfs.fsd.core.index import MARKS_NS
from hoardfs.fsd.core.layout import lock_root
from hoardfs.fsd.core.spill import Spill, spill_parent
from hoardfs.fsd.io.integrity import in_index

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)
#: a disk whose marks log refused a snapshot is tried again after this long (not by every open)
MARKS_RETRY_S = 600.0
#: the same for a disk that failed to take the batch and view pointers it missed
POINTERS_RETRY_S = 600.0


def pointing(store: Store, name: Callable[[Callable[[str, bytes], list[str]]], bytes]) -> None:
    """`name(write)` with write_pointer as `write`; the disks' errors are reported after
    the index transaction (reporting one writes to the index)."""
    failed: list[tuple[Disk, OSError]] = []
    try:
        name(lambda key, body: write_pointer(store, key, body, failed=failed))
    finally:
        for disk, e in failed:
            store.disk_error(disk, "write", e)


def write_pointer(store: Store, rel: str, body: bytes, failed: list[tuple[Disk, OSError]] | None = None
                  ) -> list[str]:
    """Write (tmp → fsync → rename) a pointer's bytes (fsd/core/pointers.py: stamped by
    Index.name_pointer, so a disk that missed later writes holds an older one and rebuild
    takes the newest; a removal record for a removed name) at `rel` under every disk in
    service (active or draining) — what `hoard index rebuild` or a person
    needs with only the HDDs left. Returns the uuids of the disks that took it; raises when
    none did (the index then names nothing new). `failed`: a disk's error goes there, to
    be reported by the caller after its index transaction, instead of at once."""
    took, errors = [], []
    for uuid, disk in list(store.disks.items()):
        if store.usable(uuid):
            try:
                with on_disk(store, disk) as wrote:
                    put_pointer(disk, rel, body, wrote)
                took.append(uuid)
            except OSError as e:  # a dying disk (EIO: marked failed) must not stop the others
                if failed is None:
                    store.disk_error(disk, "write", e)
                else:
                    failed.append((disk, e))
                errors.append(disk_error_text(disk, e))
    if not took:
        raise HoardError(f"no disk took {rel} ({'; '.join(errors) or 'no disk in service'}); nothing was "
                         "changed — `hoard health` names the disks' problems", ExitCode.UNAVAILABLE)
    return took


def pointers_behind(store: Store, state: tuple[int | None, dict[str, int], dict[str, float]] | None = None) -> list[str]:
    """Disks in service that miss pointers the index holds (the index knows which disk took
    each: Index.name_pointer) — added later, replaced onto, back from failed or unplugged,
    a failed write — and that did not fail to take them in the last POINTERS_RETRY_S."""
    last, at, failed = state or store.index.pointers_state()
    now = time.time()
    return [u for u in store.disks if store.usable(u) and (last is None or at.get(u, -1) < last)
            and now - failed.get(u, 0.0) > POINTERS_RETRY_S]


def catch_up_pointers(store: Store, uuids: Iterable[str] | None = None) -> list[str]:
    """Every writable open: the disks that are behind (or `uuids`, whatever they hold) get
    the index's batch and view pointers. A new index, which named none yet, gets its table's
    stamp first (Index.align_pointers; an older index had its table filled when it was
    migrated, hoardfs.fsd.core.formats). Returns the labels brought up."""
    if not store.writable or store.index.pointers is None:
        return []
    state = store.index.pointers_state()
    if state[0] is None:
        store.index.align_pointers()
        state = store.index.pointers_state()
    chosen = pointers_behind(store, state) if uuids is None else list(uuids)
    done = [store.disks[u].label for u in chosen if store.usable(u) and bring_pointers(store, u)]
    if done:
        log.info("batch and view pointers of %s brought up to the index", ", ".join(done))
    return done


def catch_up_pointers_or_warn(store: Store) -> None:
    """catch_up_pointers, where it must not stop the caller (an open, a refresh): a full
    SSD leaves the disks behind, and the next writer tries again."""
    try:
        catch_up_pointers(store)
    except (HoardError, lmdb.Error) as e:
        log.warning("batch and view pointers not brought up to the index: %s", getattr(e, "message", e))


def bring_pointers(store: Store, uuid: str) -> bool:
    """Write to the disk each pointer it does not hold as the index does (most of them
    outside any transaction: a new disk takes thousands); then, inside one, those named
    meanwhile and removal records for the names on the disk the index has no pointer for
    (Index.pointers_brought). False when the disk did not take them all."""
    disk = store.disks[uuid]
    since, bodies = store.index.pointer_bodies()
    stale: dict[str, int] = {}
    errors: list[OSError] = []

    def put(items: Iterable[tuple[str, bytes]]) -> bool:
        try:
            with on_disk(store, disk) as wrote:
                for key, body in items:
                    if pointer_on(disk, key) != body:
                        put_pointer(disk, key, body, wrote)
            return True
        except OSError as e:  # reported after the index transaction (it writes to the index)
            errors.append(e)
            return False

    ok = put(bodies.items())
    if ok:
        try:
            for folder in pointers.KINDS:
                for stem in disk.beside.names(folder, ".json"):
                    key = pointers.rel(folder, stem)
                    if key not in bodies and not disk.beside.planted(key):
                        stale[key] = pointer_stamp(disk, key)
        except OSError as e:
            log.warning("disk %s: cannot list its pointers: %s", disk.label, e)
            ok = False
    try:
        return store.index.pointers_brought(uuid, since, stale if ok else {},
                                           lambda newer: ok and put(newer.items()))
    finally:
        for err in errors:
            store.disk_error(disk, "write", err)


def log_marks(store: Store, op: str, shas: list[bytes], stamp: int) -> list[str]:
    """Append marks-log records (`op` is one of MARK_OPS) to the marks log on every
    writable disk (`marks/marks.log`; hoardfs.fsd.core.beside), fsynced — what `hoard index rebuild` replays (fsd/core/marks.py); returns the
    uuids of the disks that took them (Index.log_in notes them). Called by the index
    inside the transaction that applies them: raising here (no disk took the records)
    leaves the index unchanged too. Each append starts with a newline, so the torn rest of
    an append that failed half-way is a line of its own, never glued to the next record."""
    body = b"\n" + marks.records(stamp, op, shas)
    took, errors = [], []
    for uuid, disk in store.disks.items():
        if not store.usable(uuid, for_write=True):
            continue
        try:
            with on_disk(store, disk) as wrote:
                disk.beside.marks_append(body, wrote)
            took.append(uuid)
        except OSError as e:
            log.warning("disk %s: cannot append to %s: %s", disk.label, disk.beside.marks_where(), e)
            errors.append(disk_error_text(disk, e))
    if not took:
        raise HoardError(f"no disk took the marks (roots, hides, deletions: {'; '.join(errors) or 'no writable disk'}); "
                         "nothing was changed — `hoard health` names the disks' problems", ExitCode.UNAVAILABLE)
    return took


def marks_behind(store: Store, state: tuple[int, dict[str, int], dict[str, float]] | None = None) -> list[str]:
    """Writable disks whose marks log misses records the index holds (the index knows which
    disk took each record: Index.log_in) — added later, back from failed or unplugged, a
    failed or short append — and that did not refuse a snapshot in the last
    MARKS_RETRY_S (a disk gone read-only is not rewritten by every open)."""
    last, at, failed = state or store.index.marks_state()
    now = time.time()
    return [u for u in store.disks if store.usable(u, for_write=True)
            and (u not in at or at[u] < last) and now - failed.get(u, 0.0) > MARKS_RETRY_S]


def marks_tails(store: Store, for_write: bool = False) -> tuple[dict[str, int], list[str]]:
    """({disk uuid: the stamp its marks log ends with, 0 for none or a damaged last line},
    the disks whose log is in the format before lines had checks) of the disks in use
    (`for_write`: writable) — a disk whose log's end cannot be read is left out."""
    tails: dict[str, int] = {}
    legacy: list[str] = []
    for u, d in store.disks.items():
        if store.usable(u, for_write=for_write):
            try:
                stamp, old_format = marks.judge_ends(*d.beside.marks_ends())
                tails[u] = stamp or 0
                if old_format and store.usable(u, for_write=True):
                    legacy.append(u)
            except OSError as e:  # a dying disk, a hostile file: health's and check's business
                log.warning("disk %s: cannot read the end of its marks log: %s", d.label, e)
    return tails, legacy


def catch_up_marks(store: Store) -> list[str]:
    """Every writable open: no stamp is handed out again that a disk's log already holds
    (a writer that appended and died before its commit), and the disks that are behind
    get a snapshot of the index's marks."""
    # (legacy: logs written before lines had checks: rewritten, fsd/core/marks.py)
    tails, legacy = marks_tails(store)
    if tails and max(tails.values()) > int(store.index.get_meta(MARKS_NS.decode()) or 0):
        store.index.raise_stamp(max(tails.values()))
    state = store.index.marks_state()
    at = state[1]
    # a log ending after what the index knows it took: a record whose transaction died
    # (or one committing right now: checked again inside the snapshot's transaction)
    ahead = [u for u, t in tails.items() if u in at and t > at[u] and store.usable(u, for_write=True)]
    behind = marks_behind(store, state)
    # a log kept as many objects (hoardfs.fsd.core.s3files) is compacted now, not only by the next gc
    behind += [u for u, d in store.disks.items() if u not in behind and store.usable(u, for_write=True)
               and time.time() - state[2].get(u, 0.0) > MARKS_RETRY_S and _crowded(d)]
    # (a legacy log that refused its rewrite waits MARKS_RETRY_S like a disk behind: each try
    # reads every disk's whole log and takes a write transaction)
    behind += [u for u in legacy if u not in behind and time.time() - state[2].get(u, 0.0) > MARKS_RETRY_S]
    _drop_snapshot_leftovers(store)
    if not (behind or ahead):
        return []
    # a disk behind waits for a later open; one ahead is mended before this writer appends (its
    # append would bury the records ahead, and a snapshot under way then find the log mended)
    done = snapshot_marks(store, behind + ahead, recheck=set(ahead) - set(behind), wait=bool(ahead))
    if done:
        log.info("marks log of %s brought up to the index", ", ".join(done))
    return done


def _crowded(disk: Disk) -> bool:
    try:
        return disk.beside.marks_crowded()
    except OSError as e:  # an engine that does not answer: health's business
        log.warning("disk %s: cannot list its marks log: %s", disk.label, e)
        return False


def compact_marks(store: Store) -> list[str]:
    """Snapshot the writable disks whose marks log has grown past twice what a snapshot
    would take (plus 1 MiB): the history is replaced by the state."""
    n = sum(store.index.count(getattr(store.index, t)) for t in marks.TABLES)
    limit = 2 * (n + 1) * marks.RECORD_BYTES + (1 << 20)
    big = [u for u, d in store.disks.items()
           if store.usable(u, for_write=True) and d.beside.marks_size() > limit]
    return snapshot_marks(store, big) if big else []


def snapshot_marks(store: Store, uuids: Iterable[str] | None = None, recheck: set[str] | None = None,
                   wait: bool = True) -> list[str]:
    """Replace the marks log of disks `uuids` (default: every disk in service, draining
    included) by a snapshot of the index's marks (fsd/core/marks.py) — plus the marks the
    logs hold for objects the index does not know — with the records appended meanwhile
    kept after it (Index.snapshot_marks: no write transaction is held while it is written).
    One snapshot at a time (a lock beside the store's): `wait=False` returns [] at once when
    another process is writing one (a writer's open does not wait: its disks stay behind and
    the next open tries again). Returns the labels written; a disk that cannot take it is
    logged and skipped (still behind: a writer tries again after MARKS_RETRY_S)."""
    # every disk in service: a draining one's log is still read by an index rebuild
    chosen = [u for u in (store.disks if uuids is None else uuids) if store.usable(u)]
    if not chosen:
        return []
    with _snapshot_lock(store, wait) as got:
        if not got:
            return []
        return _snapshot(store, chosen, recheck or set())


@contextlib.contextmanager
def _snapshot_lock(store: Store, wait: bool) -> Iterator[bool]:
    """flock on `<ssd>/locks/marks-snapshot` (a killed holder's goes with its process)."""
    folder = lock_root(store.cfg) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "marks-snapshot", os.O_RDWR | os.O_CREAT, FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _snapshot(store: Store, chosen: list[str], recheck: set[str]) -> list[str]:
    done: list[str] = []
    cuts: dict[str, Any] = {}  # uuid → its log when the stamp was taken (Beside.marks_cut)

    def start(stamp: int, at: dict[str, int]) -> dict[str, Any]:
        for uuid in chosen:
            disk = store.disks[uuid]
            try:
                if uuid in recheck and (marks.judge_ends(*disk.beside.marks_ends())[0] or 0) <= at.get(uuid, -1):
                    continue  # "ahead" — no longer, now that no transaction is in flight
            except OSError:  # (writing the snapshot says why)
                pass
            cuts[uuid] = disk.beside.marks_cut()
        return cuts

    def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
        for piece in chunks:
            store.index.env.count_writes(piece.count(b"\n"))  # (none open: nothing counted)
            yield piece

    def write(stamp: int, tables: Callable[[], dict[str, Iterable[bytes]]],
              todo: dict[str, Any]) -> tuple[list[str], list[str]]:
        written, failed = [], []
        for uuid in todo:
            disk = store.disks[uuid]
            path = disk.beside.marks_where()
            try:
                with on_disk(store, disk) as wrote:
                    disk.beside.marks_snapshot(counted(marks.snapshot_chunks(stamp, tables())), wrote)
                written.append(uuid)
            except DiskGone as e:  # not a refusal: tried again by the first writer that finds it back
                log.warning("disk %s: cannot rewrite %s from the index: %s", disk.label, path, e)
            except OSError as e:
                log.warning("disk %s: cannot rewrite %s from the index: %s", disk.label, path, e)
                failed.append(uuid)
        return written, failed

    def finish(uuid: str) -> bool:
        """Inside a write transaction (no append meanwhile): what the log took since the cut
        goes after the snapshot, which then replaces the log."""
        disk = store.disks[uuid]
        try:
            with on_disk(store, disk) as wrote:
                disk.beside.marks_swap(cuts[uuid], wrote)
        except (DiskGone, OSError) as e:
            log.warning("disk %s: cannot rewrite %s from the index: %s", disk.label, disk.beside.marks_where(), e)
            with contextlib.suppress(OSError):
                disk.beside.marks_discard()
            return False
        done.append(disk.label)
        return True

    store.index.snapshot_marks(start, write, finish, logged_marks(store))
    return done


def _drop_snapshot_leftovers(store: Store) -> None:
    """Remove the snapshot files a killed snapshot left beside the writable disks' logs (a
    whole log each) — only when no snapshot is being written (its lock is free)."""
    found = []
    for u, d in store.disks.items():
        if store.usable(u, for_write=True):
            with contextlib.suppress(OSError):
                if d.beside.marks_leftover():
                    found.append(d)
    if not found:
        return
    with _snapshot_lock(store, wait=False) as got:
        for d in found if got else ():
            d.beside.marks_discard()


def logged_marks(store: Store) -> dict[str, list[bytes]]:
    """The marks the readable disks' logs replay to for objects the index does not know (the
    index keeps them: Index.snapshot_marks). The logs are spilled to disk and replayed object
    by object (marks.settle): every object a root, sets of every record took ~1 KB each."""
    out: dict[str, list[bytes]] = {t: [] for t in marks.TABLES}
    with Spill(spill_parent(store.cfg.ssd.root), marks.SPILLED) as spill:
        logs: list[marks.DiskLog | None] = []
        for u, d in store.disks.items():
            if store.usable(u):
                logs.append(None)  # (a log that fails to read leaves records in the spill: not read)
                try:
                    logs[-1] = d.beside.marks_read(label=d.label, spill=spill, src=len(logs) - 1)
                except OSError:
                    continue
        known = in_index(store)
        for sha, final, _held, _alone in marks.settle(logs, spill):
            if any(final) and not known(sha):
                for t, on in zip(marks.TABLES, final, strict=True):
                    if on:
                        out[t].append(sha)
    return out


@contextlib.contextmanager
def on_disk(store: Store, disk: Disk) -> Iterator[list[int]]:
    """Small files (marks logs, pointers) written by path inside: the disk is checked to be
    there before (a vanished mount leaves an empty directory on the root filesystem that takes
    any write) and after (one that vanished during the write took it beside the disk, not on
    it, and the index must not count those records as on the disk's log).
    The body adds the device of each file it wrote (fstat) to the list it is given: a disk
    that dropped off before the file was opened and was mounted again before the check after
    passes both checks, and only the device tells that the file is not on it. Any of these
    raises DiskGone, and this process stops using the disk."""
    wrote: list[int] = []
    try:
        disk.check()
        yield wrote
        disk.check()
        if not disk.beside.landed(wrote):
            raise DiskGone(f"disk {disk.label}: a file was written beside it, not on it (the disk dropped off "
                           "and came back during the write)")
    except DiskGone as e:
        store.gone(disk, e)
        raise


def put_pointer(disk: Disk, key: str, body: bytes, wrote: list[int]) -> None:
    """A pointer's bytes at `key` beside the disk's shards (inside `on_disk`)."""
    disk.beside.write(key, body, wrote)


def pointer_on(disk: Disk, key: str) -> bytes | None:
    """The bytes of the disk's pointer at `key`; None when there is none that reads."""
    try:
        return disk.beside.read(key)
    except (OSError, ValueError):
        return None


def pointer_stamp(disk: Disk, key: str) -> int:
    """The stamp of the disk's pointer at `key` (0 when it does not read as one)."""
    try:
        return pointers.decode(disk.beside.read(key)).get(pointers.STAMP, 0)
    except (OSError, ValueError):
        return 0


def disk_error_text(disk: Disk, e: OSError) -> str:
    """"LABEL: what went wrong", without the label twice (a DiskGone names its disk itself)."""
    text = e.strerror or str(e)
    return text if text.startswith(f"disk {disk.label}") else f"{disk.label}: {text}"
