"""`hoard index rebuild`: reconstruct the LMDB index from the disks alone (seed table 01B).

The shards are self-describing (docs/design.md): each disk's identity file names the disk,
each sealed shard's footer lists its records, an open shard's records are found by
scanning. The new index is built beside the old one and swapped in by rename; the old one
is kept as `<index>.old-<time>`. Run it with the store idle (no writer, no mount).

Index rebuild and index copies stay in one module (past 500 lines): restoring a copy is a
rebuild from the disks that takes from the copy what the disks do not hold (`_restore_index`
runs `_rebuild_index`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import lmdb

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import flocked, fsync_dir, size_or_zero
from hoardfs.fsd.core import formats, marks, pointers, storelock
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import has_files
from hoardfs.fsd.core.beside import INDEX_COPY, LocalBeside
from hoardfs.fsd.core.disks import (
    IDENTITY,
    SHARDS_DIR,
    DiskRecord,
    DiskState,
    drop_cache,
    object_name,
    pread_full,
    read_identity,
    shard_files,
    shard_of,
    write_identity,
)
from hoardfs.fsd.core.held import ManifestNotRead
from hoardfs.fsd.core.index import Index, ObjectLoc, ShardMeta
from hoardfs.fsd.core.layout import (
    BATCHES_DIR,
    FORGOTTEN,
    INDEX_WORK,
    MARKS_DIR,
    VIEWS_DIR,
    check_ssd,
    index_work,
    lock_root,
    remove_index_work,
)
from hoardfs.fsd.core.spill import Spill
from hoardfs.fsd.core.txnlog import SLACK, TXN_ENTRIES
from hoardfs.fsd.outputs import unreadable

log = logging.getLogger(__name__)


@dataclass
class IndexRebuildReport:
    disks: int = 0
    shards: int = 0
    replicas: int = 0
    objects: int = 0
    open_shards: int = 0
    batches: int = 0
    hidden: int = 0  # type-A marks replayed from marks/
    deleted: int = 0  # type-B tombstones replayed from marks/
    rooted: int = 0  # roots (objects `hoard put` acknowledged) replayed from marks/
    damaged: list[str] = field(default_factory=list)  # replica files that could not be used
    skipped_disks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _reader(path: Path):
    """(fd, read(offset, n)) of a shard file; OSError(EINVAL) if it is not a regular file (a
    FIFO planted in `shards/` would block the rebuild for good)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        marks.regular(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, (lambda off, n: pread_full(fd, n, off))


@contextlib.contextmanager
def _store_idle(cfg: Settings, what: str) -> Iterator[str]:
    """Both store locks held exclusively: no writer, worker or mount uses the index while it is
    swapped (objects acknowledged after the scan would vanish from the new index). Yields the
    SSD's uuid (a new SSD gets its identity: rebuilding onto it is how a lost SSD is replaced)."""
    ssd_uuid = check_ssd(cfg, init=True)
    with storelock.exclusive(lock_root(cfg), what), storelock.exclusive(lock_root(cfg), what, storelock.READERS):
        yield ssd_uuid


def _set_aside(target: Path) -> None:
    """Rename the current index to `<name>.old-<time>` (a free name, even within one second)."""
    if not target.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = target.with_name(f"{target.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = target.with_name(f"{target.name}.old-{stamp}-{n}")
    os.rename(target, aside)


def rebuild_index(cfg: Settings, progress: Callable[[int, int], None] | None = None,
                  without: Iterable[str] = ()) -> IndexRebuildReport:
    """Build the index from the disks and swap it in; refuses while anything uses the store,
    and while a configured disk cannot be read unless it is named in `without`.
    `progress(bytes_read, bytes_to_read)` as shard files are read."""
    with _store_idle(cfg, "index rebuild") as ssd_uuid:
        rep = _rebuild_index(cfg, ssd_uuid, progress, without=frozenset(without))
    _seed_marks(cfg)
    return rep


def _seed_marks(cfg: Settings) -> None:
    """The rebuilt index knows no disk's log to be complete: the first writer gives every disk
    a snapshot of the replayed marks — done here, so the disks agree with it at once."""
    from hoardfs.fsd.store import Store  # deferred: hoardfs.fsd.store imports this module's siblings

    try:
        Store.open(cfg).close()
    except HoardError as e:  # the rebuild stands; the next writer seeds the logs
        log.warning("marks logs not rewritten after the rebuild: %s", e.message)


def _disks_to_read(cfg: Settings, without: frozenset[str], rep: IndexRebuildReport) -> list[tuple[Any, dict]]:
    """(disk, its identity) of every configured disk the rebuild reads. A disk whose identity
    cannot be read is not left out quietly: its shards would be missing from the new index,
    and the store refuses a disk its index does not know when it is back — the rebuild
    refuses unless the user names it in `without`."""
    unknown = sorted(without - {dc.label for dc in cfg.disks})
    if unknown:
        raise HoardError(f"--without {', '.join(unknown)}: no such disk in the configuration "
                         f"(disks: {', '.join(dc.label for dc in cfg.disks)})", ExitCode.USAGE)
    found: list[tuple[Any, dict]] = []
    missing: list[tuple[str, str]] = []
    for dc in cfg.disks:
        if dc.kind == "s3" and dc.label in without:
            rep.skipped_disks.append(f"{dc.label}: left out (--without {dc.label}){_left_out_bucket(dc)}")
            continue
        if dc.kind == "s3":
            _bucket_to_read(dc, found, missing, rep)
            continue
        ident = read_identity(dc.path) if dc.path.is_dir() else None
        # (an unreadable marker is no marker: an EIO there must not leave a live disk out as "forgotten")
        forgotten = read_identity(dc.path, FORGOTTEN) if ident and ident.get("uuid") else None
        if dc.label in without:
            rep.skipped_disks.append(f"{dc.label}: left out (--without {dc.label})")
        elif not ident or not ident.get("uuid"):
            why = ident["error"] if ident else f"no disk identity at {dc.path}"
            missing.append((dc.label, f"disk {dc.label}: {why}"))
        elif forgotten and not forgotten.get("uuid"):
            missing.append((dc.label, f"disk {dc.label}: {forgotten['error']}"))
        elif forgotten:  # its shards were re-homed; what is left there is stale
            rep.skipped_disks.append(f"{dc.label}: forgotten by `hoard disks forget`; remove it from the config")
        else:
            found.append((dc, ident))
    if missing:
        labels = " ".join(f"--without {label}" for label, _ in missing)
        raise HoardError(f"{'; '.join(why for _, why in missing)} (not mounted, or dead?). Nothing changed: the "
                         f"index is as it was. Mount the disk and run `hoard index rebuild` again; to rebuild from "
                         f"the other disks alone, run `hoard index rebuild {labels}` (its shards are then not in "
                         "the index: a rebuild with the disk back adds them)", ExitCode.UNAVAILABLE)
    return found


@dataclass
class _Bucket:
    """An S3 disk as an index rebuild reads it: its sealed shards, marks log and pointers are
    objects in its bucket (hoardfs.fsd.core.s3files), its open shards files on its staging folder."""

    label: str
    path: Path  # its staging folder
    disk: Any  # its hoardfs.fsd.core.s3.S3Disk
    kind: str = "s3"
    sizes: dict[PurePath, int] = field(default_factory=dict)  # an object's size, by the name it is read as


def _bucket(dc: Any) -> _Bucket:
    """The S3 disk `dc` configures, to be read (its uuid set once its identity is read)."""
    # deferred: boto3 (hoardfs.fsd.core.s3) is loaded only for a configured S3 disk
    from hoardfs.fsd.core.s3 import S3Disk

    return _Bucket(dc.label, dc.path, S3Disk.configured(dc))


def _bucket_to_read(dc: Any, found: list[tuple[Any, dict]], missing: list[tuple[str, str]],
                    rep: IndexRebuildReport) -> None:
    """`_disks_to_read` for an S3 disk: its bucket's identity read (an engine that does not
    answer, or a bucket without one, is a disk that cannot be read: refused unless left out)."""
    # deferred: boto3 (hoardfs.fsd.core.s3) is loaded only for a configured S3 disk
    from hoardfs.fsd.core.s3 import EngineError

    b = _bucket(dc)
    try:
        ident = b.disk.read_identity()
        forgotten = ident is not None and b.disk.beside.read(FORGOTTEN)
    except FileNotFoundError:
        forgotten = False
    except EngineError as e:
        missing.append((dc.label, e.message))
        return
    if ident is None:
        missing.append((dc.label, f"disk {dc.label}: bucket {dc.bucket} at {dc.endpoint} has no {IDENTITY}"))
    elif forgotten:
        rep.skipped_disks.append(f"{dc.label}: forgotten by `hoard disks forget`; remove it from the config")
    else:
        b.disk.uuid = ident["uuid"]
        _remake_staging(dc, ident["uuid"])
        found.append((b, ident))


def _remake_staging(dc: Any, uuid: str) -> None:
    """An S3 disk's staging folder that is gone — lost with the SSD it sits on by default
    (`<ssd.root>/s3-staging/<label>`) — made again, with the disk's identity, before the bucket
    is read (its marks log is read through the folder's tmp/), as every writable open makes a
    lost one again (hoardfs.fsd.io.attach). Without it the rebuild after an SSD loss refused the bucket
    as a disk that does not read and advised leaving it out, and the index built without it
    was refused by every command (the bucket holds shards it does not know). A folder that
    holds an identity is left as it is."""
    if read_identity(dc.path) is not None:
        return
    try:
        dc.path.mkdir(parents=True, exist_ok=True)
        write_identity(dc.path, dc.label, uuid=uuid)
    except OSError as e:
        raise HoardError(f"disk {dc.label}: its staging folder {dc.path} is gone and cannot be made again "
                         f"({e.strerror or e}); nothing changed: make it writable (or correct disks.path of "
                         f"{dc.label}), then run `hoard index rebuild` again", ExitCode.UNAVAILABLE) from None


def _left_out_bucket(dc: Any) -> str:
    """What leaving out an S3 disk whose bucket answers means (a `--without` given for a bucket
    that is healthy): its shards are not in the new index, so every command refuses the store
    until a rebuild reads it too. "" when the bucket does not answer or holds no shards."""
    try:
        b = _bucket(dc)
        if b.disk.read_identity() is None or not b.disk.shard_objects():
            return ""
    except (OSError, HoardError):
        return ""
    return (f"; its bucket answers and holds shards, so every command refuses the store until an index rebuild "
            f"reads it too: run `hoard index rebuild` without --without {dc.label}")


def _still_there(disks: list[tuple[Any, dict]]) -> None:
    """Every disk read still answers with the identity it had: one that vanished during the
    scan gave errors or an empty directory, not its shards (checked before the swap)."""
    for dc, had in disks:
        if dc.kind == "s3":
            try:
                ident = dc.disk.read_identity()
            except OSError as e:
                raise _went_away(dc, f"its bucket's identity no longer reads: {e.strerror or e}") from None
        else:
            ident = read_identity(dc.path) if dc.path.is_dir() else None
        if not ident or ident.get("uuid") != had["uuid"]:
            raise _went_away(dc, "its identity no longer reads")


def _answers(dc: Any) -> bool:
    """Whether an S3 disk's bucket answers with the identity the rebuild read from it."""
    try:
        ident = dc.disk.read_identity()
    except (OSError, HoardError):
        return False
    return bool(ident) and ident.get("uuid") == dc.disk.uuid


#: what opening or reading a file planted in a disk's folders answers (a FIFO or a directory:
#: `marks.regular`'s EINVAL; a loop of links): damage to name. Any other error reading a shard,
#: a marks log or a pointer (EIO) is a disk that does not read — the rebuild stops: a shard
#: file taken as damage left its objects out of the new index when no other disk had them,
#: and `hoard verify --orphans --repair` then deleted the only copy as an orphan.
PLANTED = frozenset({errno.EINVAL, errno.ELOOP, errno.EISDIR})


def _went_away(dc: Any, how: str) -> HoardError:
    if dc.kind == "s3" and _answers(dc):  # (its bucket is fine: never advised to be left out)
        return HoardError(f"disk {dc.label} (bucket {dc.disk.bucket} at {dc.disk.endpoint}, staging folder {dc.path}) "
                          f"stopped reading during the index rebuild ({how}), though its bucket answers: nothing "
                          "changed, the index is as it was. Make its staging folder readable (`hoard init` makes a "
                          "missing one), then run `hoard index rebuild` again", ExitCode.UNAVAILABLE)
    return HoardError(f"disk {dc.label} at {dc.path} went away or stopped reading during the index rebuild ({how}): "
                      "the scan may have missed what it holds (shards, marks, view and batch pointers). Nothing "
                      "changed: the index is as it was. When the disk "
                      f"reads again, run `hoard index rebuild` again (or `hoard index rebuild --without {dc.label}` "
                      "to leave it out; `hoard health` after, and `hoard disks replace` for a dying disk)",
                      ExitCode.UNAVAILABLE)


def _listing(dc: Any, folder: str, pattern: str) -> list[Path]:
    """The paths under the disk's `folder` that match `pattern`, sorted. A listing that fails
    (EIO) is a disk that does not read, not a traceback and not an empty folder."""
    try:
        return sorted((dc.path / folder).glob(pattern))
    except OSError as e:
        raise _went_away(dc, f"listing {folder}/: {e.strerror or e}") from None


def _size(dc: Any, path: PurePath) -> int:
    """A replica's size, for progress: an object's from its bucket's listing."""
    return int(dc.sizes.get(path, 0)) if dc.kind == "s3" else size_or_zero(path)


def _shard_files(dc: Any) -> list[PurePath]:
    """The disk's shard files; of an S3 disk its objects (named as a sealed file of that shard
    would be: `object_name`) and its staging folder's open files."""
    if dc.kind == "s3":
        try:
            names: list[PurePath] = []
            for shard_hex, size, _ in dc.disk.shard_objects():
                names.append(object_name(dc.disk.bucket, shard_hex))
                dc.sizes[names[-1]] = size
            return names + list(dc.disk.shard_files())
        except OSError as e:
            raise _went_away(dc, f"listing its shards: {e.strerror or e}") from None
    try:
        return list(shard_files(dc.path))
    except OSError as e:
        raise _went_away(dc, f"listing {SHARDS_DIR}/: {e.strerror or e}") from None


def _rebuild_index(cfg: Settings, ssd_uuid: str, progress: Callable[[int, int], None] | None = None,
                   backup: Path | None = None, without: frozenset[str] = frozenset()) -> IndexRebuildReport:
    rep = IndexRebuildReport()
    t0 = time.monotonic()
    disks = _disks_to_read(cfg, without, rep)
    target = cfg.index_dir
    work = index_work(cfg, "rebuild")
    spills = index_work(cfg, "spill")  # sorted runs of objects and marks
    # what a killed rebuild or restore left (INDEX_WORK), but the copy this restore reads
    for kind in INDEX_WORK:
        if index_work(cfg, kind) != backup:
            remove_index_work(index_work(cfg, kind), ignore_errors=True)
    try:
        _build(cfg, disks, work, ssd_uuid, target, rep, progress, backup, spills)
        _still_there(disks)
    except BaseException:
        remove_index_work(work, ignore_errors=True)
        raise
    finally:
        remove_index_work(spills, ignore_errors=True)
    # LMDB fsyncs its files, never the directories naming them: the new index's entries in
    # `work`, then both renames in the SSD's directory, are made durable here — without the
    # last fsync a power cut right after the command returned brought the index set aside back
    # (tests/test_powercut.py)
    fsync_dir(work)
    _set_aside(target)
    os.rename(work, target)
    fsync_dir(target.parent)
    rep.seconds = time.monotonic() - t0
    return rep


#: objects written to the new index per transaction (the objects come sorted from a spill)
CHUNK = TXN_ENTRIES - SLACK
#: a spilled object: sha256 (32) ‖ shard's number in reading order (4) ‖ record's number in
#: the shard (4) ‖ the `objects` value (29): sorted, an object's first copy read comes first
_ENTRY = 32 + 4 + 4 + 29


def _build(cfg: Settings, disks: list[tuple[Any, dict]], work: Path, ssd_uuid: str, target: Path,
           rep: IndexRebuildReport, progress: Callable[[int, int], None] | None, backup: Path | None,
           spills: Path) -> None:
    """The new index at `work`, from `disks`. Memory does not grow with the store (a dict of
    every object and every replica's record list would take 1.5 KB per object): a shard's
    copies are read together and its objects spilled to disk (hoardfs.fsd.core.spill), sorted there,
    then written in order; the marks logs are spilled and replayed object by object
    (marks.settle)."""
    index = Index(work)
    index.set_meta("ssd_uuid", ssd_uuid)
    # the format before `held` until its table is filled from the manifests (`_fill_held`, at the
    # end): a fill that cannot read one leaves it to the migration of the first writer
    index.set_meta(formats.INDEX_KEY, str(formats.INDEX_HELD_LONG - 1))
    shards: dict[bytes, ShardMeta] = {}
    found_pointers: dict[str, dict] = {}  # rel path → the newest pointer of that name
    files = {dc.label: _shard_files(dc) for dc, _ in disks}
    total = sum(_size(dc, p) for dc, _ in disks for p in files[dc.label])
    done = 0
    logs: list[marks.DiskLog] = []  # each disk's marks log: replayed as the disks agree (marks.settle)
    kept_states = _old_disk_states(backup or _last_index(target))
    found_disks: list[DiskRecord] = []
    # every replica file of a shard, the shards in the order their first file is listed
    by_name: dict[str, list[tuple[Any, str, Any]]] = {}
    for dc, ident in disks:
        for path in files[dc.label]:
            by_name.setdefault(shard_of(path)[0], []).append((dc, ident["uuid"], path))
    with Spill(spills, _ENTRY, prefix="objects-") as objs, Spill(spills, marks.SPILLED, prefix="marks-") as marked:
        try:
            for number, listed in enumerate(by_name.values()):
                found: list[_Copy] = []
                for dc, uuid, path in listed:
                    if progress:
                        done += _size(dc, path)
                        progress(done, total)
                    copy = _read_copy(dc, uuid, path, rep)
                    if copy is not None:
                        found.append(copy)
                if not found:
                    continue
                meta, records = _resolve(found, rep)
                shards[meta.shard_id] = meta
                head = number.to_bytes(4, "big")
                for i, r in enumerate(records):
                    objs.add(r.sha256 + head + i.to_bytes(4, "big") + ObjectLoc(meta.shard_id, r.offset, r.length).pack())
                del found, records
            for i, (dc, ident) in enumerate(disks):
                uuid = ident["uuid"]
                _read_pointers(dc, found_pointers, rep)
                logs.append(_read_marks(dc, rep, marked, i))
                # a failed or draining disk stays so (a user's or rebuild's decision, as Store.open keeps it)
                state, reason = kept_states.get(uuid, (DiskState.ACTIVE, ""))
                found_disks.append(DiskRecord(uuid, dc.label, dc.disk.where if dc.kind == "s3" else str(dc.path),
                                              state, ident.get("created", ""),
                                              reason=reason))
                rep.disks += 1
            for meta in shards.values():
                index.put_shard(meta)
            # a disk's used bytes as `hoard check` counts them: the recorded size of each sealed
            # shard it holds (a replica file's own size may differ: a longer copy, an open shard)
            for rec in found_disks:
                rec.used_bytes = sum(m.size for m in shards.values() if m.sealed and rec.uuid in m.replicas)
                index.put_disk(rec)
            rep.objects = _put_objects(index, objs)
            in_index = _InIndex(index)
            rep.batches = _name_pointers(index, found_pointers, in_index, rep, backup)
            disputes = marks.Disputes()
            _put_marks(index, marks.settle(logs, marked, disputes=disputes), rep)
            for (stamp, op, sha), label in disputes.first:
                rep.damaged.append(f"marks log on {label}: `{op}` of {sha} (stamp {stamp}) is on that disk alone, "
                                   "and another disk that took records then lacks it: not obeyed (the object is kept)")
            if disputes.count > len(disputes.first):
                rep.damaged.append(f"marks logs: {disputes.count - len(disputes.first)} more such records not obeyed")
            # the disks whose log holds the newest record are current; the others get a snapshot
            # when a writer next opens the store (Store.catch_up_marks)
            last = max([lg.end for lg in logs] + [max(lg.resets) for lg in logs if lg.resets] + [0])
            index.set_marks_stamp(last)
            if backup is not None:
                try:
                    _merge_backup(index, backup, shards.keys())
                except lmdb.Error as e:  # a copy damaged inside: the disks' part stands on its own
                    rep.damaged.append(f"index copy: {e}; the index is rebuilt without its disk states and events")
            rep.shards = len(shards)
            if _fill_held(cfg, index, disks, found_disks, spills, rep):
                # `live` was counted as the objects went in (Index.append_objects): the index is of
                # this hoardfs's format, with nothing for a migration to do
                index.set_meta(formats.INDEX_KEY, str(formats.INDEX))
        finally:
            index.close()


def _fill_held(cfg: Settings, index: Index, disks: list[tuple[Any, dict]], records: list[DiskRecord],
               spills: Path, rep: IndexRebuildReport) -> bool:
    """Fill the new index's `held` table from the manifests it registers, read from the disks
    the rebuild read through the new index (a store of those disks alone, in their states); True
    when it is complete. Before the swap, so the index swapped in is whole — left to the
    migration of the first writer after it, `held` would get its keys in the order the
    manifests name them (57 % of a rebuild at 10 M objects). A manifest that cannot be
    read leaves the index at the format before `held` (deletion and gc read every manifest, as
    that format does) and is named; the next writer's migration tries again."""
    from hoardfs.fsd.core.disks import LocalDisk  # deferred: as _seed_marks's store
    from hoardfs.fsd.store import Store  # deferred: as above

    reading = Store(cfg, index, writable=False)
    for (dc, _), rec in zip(disks, records, strict=True):
        reading.records[rec.uuid] = rec
        reading.disks[rec.uuid] = dc.disk if dc.kind == "s3" else LocalDisk(
            dc.label, dc.path, rec.uuid, require_mount=not cfg.store.allow_directory_disks)
        reading.queue[rec.uuid] = 0
    try:
        index.fill_held(reading.get, spills)
        return True
    except (HoardError, ValueError, KeyError, TypeError) as e:  # (as Store.open's migration: hoardfs.fsd.store)
        if isinstance(e, ManifestNotRead):  # with its step: a disk to bring back, or what unregisters it
            e = unreadable.judge(reading, e.kind, e.name, e.manifest, e)
        why = e.message if isinstance(e, HoardError) else f"a manifest does not decode: {e!r}"
        rep.damaged.append(f"held table not filled ({why}): the index stays at format {formats.INDEX_HELD_LONG - 1} "
                           "— deletion and gc read every manifest until `hoard index migrate` succeeds")
        return False
    finally:
        for d in reading.disks.values():
            d.close_all()  # (the shard files it opened)


def _read_copy(dc: Any, uuid: str, path: Path, rep: IndexRebuildReport) -> _Copy | None:
    """One replica file (or object) as read, or None when it is damage to report (planted, or
    not a shard)."""
    try:
        meta, records, damage = _read_shard(path) if isinstance(path, Path) else _read_object(dc, path)
    except FileNotFoundError:  # listed a moment ago, the store idle: the disk is not what it was
        if os.path.islink(path):  # (unless it is a symbolic link to nothing: planted)
            rep.damaged.append(f"replica {path}: a symbolic link to nothing ({os.readlink(path)})")
            return None
        raise _went_away(dc, f"{path} was listed, then not found") from None
    except OSError as e:
        if e.errno not in PLANTED:  # its objects may be on no other disk: not damage to skip
            raise _went_away(dc, f"reading {path}: {e.strerror or e}") from None
        rep.damaged.append(f"replica {path}: {e}")
        return None
    except fmt.ShardFormatError as e:
        fmt.refuse_newer(e, str(path))  # (left out, its objects would be lost to the new index)
        rep.damaged.append(f"replica {path}: {e}")
        return None
    return _Copy(uuid, path, meta, records, damage)


def _put_objects(index: Index, objs: Spill) -> int:
    """Write the spilled objects to the index in sha256 order, each object's first copy read
    (of the first shard listed, its first record there), appended (Index.append_objects: the
    table is new); returns how many."""
    n = 0
    last = b""
    batch: list[tuple[bytes, bytes]] = []
    for e in objs.sorted():
        sha = e[:32]
        if sha == last:
            continue
        last = sha
        batch.append((sha, e[40:]))
        if len(batch) >= CHUNK:
            index.append_objects(batch)
            n += len(batch)
            batch = []
    if batch:
        index.append_objects(batch)
        n += len(batch)
    return n


def _put_marks(index: Index, settled: Iterable[tuple[bytes, marks.Marks, marks.Marks, dict]],
               rep: IndexRebuildReport) -> None:
    """Set the replayed marks on the objects the new index holds, table by table in chunks."""
    pending: dict[str, list[bytes]] = {t: [] for t in marks.TABLES}
    for t in marks.TABLES:
        setattr(rep, t, 0)

    def flush(table: str) -> None:
        setattr(rep, table, getattr(rep, table) + index.mark(getattr(index, table), pending[table],
                                                             "restored from marks/ by an index rebuild"))
        pending[table] = []
    for sha, final, _held, _alone in settled:
        for t, on in zip(marks.TABLES, final, strict=True):
            if on:
                pending[t].append(sha)
                if len(pending[t]) >= CHUNK:
                    flush(t)
    for t in marks.TABLES:
        if pending[t]:
            flush(t)


class _InIndex:
    """`sha in _InIndex(index)`: whether the index holds the object (a lookup, not a set of them all)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def __contains__(self, sha: object) -> bool:
        with self.index.env.begin(db=self.index.objects) as txn:
            return isinstance(sha, bytes) and txn.get(sha) is not None


@dataclass
class _Copy:
    """One replica file of a shard, as read."""

    uuid: str
    path: Path
    meta: ShardMeta
    records: list[fmt.RecordInfo]
    damage: str = ""  # a `.shard` whose footer does not decode: read as an open copy (its verified records)


def _resolve(found: list[_Copy], rep: IndexRebuildReport) -> tuple[ShardMeta, list[fmt.RecordInfo]]:
    """A shard's metadata and records from its replica files. A sealed copy makes the shard
    sealed, and its replicas are the sealed copies only: an `.open` file beside them is what a
    writer left on a disk that dropped out before the seal (it may lack the last groups) —
    counted as a replica it made the shard "open" with the sealed size as its acknowledged
    end, which no copy could reach (recovery would leave it open for good). It is
    reported, and `hoard verify --orphans` sets it aside. A shard with open copies only (its
    writer died) is open, acknowledged up to its longest verified copy: the next writer's
    recovery keeps every copy that reaches it and sets a shorter one aside — never cuts the
    longer one down to a torn copy's end.

    A `.shard` copy whose footer does not decode (bit rot in its last sector) still holds its
    records, each checked on its own: it counts as an open copy, so when no sealed copy is
    whole its records are indexed and the next writer's recovery seals it again. Skipped, its
    objects were gone from the index — with a stale `.open` copy beside it, the shard was
    made of that copy's first records alone, and a later copy renamed over the damaged file."""
    sealed = [c for c in found if c.meta.sealed]
    use = sealed or found
    for c in found:
        if c.damage and not sealed:
            rep.damaged.append(f"replica {c.path}: {c.damage}; its {len(c.records)} verified records are indexed "
                               "as an open copy's — the next writer's recovery seals it again")
        elif c.damage:
            rep.damaged.append(f"replica {c.path}: {c.damage}; not counted (shard {c.meta.hex} is whole on another "
                               "disk) — `hoard verify --orphans --repair` sets it aside")
        elif sealed and not c.meta.sealed:
            rep.damaged.append(f"replica {c.path}: an open copy of shard {c.meta.hex}, sealed on another disk "
                               "(left when its disk dropped out during the write); not counted — `hoard verify "
                               "--orphans --repair` sets it aside")
    best = max(use, key=lambda c: (c.meta.size, len(c.records)))
    meta = ShardMeta(best.meta.shard_id, best.meta.klass, best.meta.size, bool(sealed), [], len(best.records),
                     best.meta.created)
    if not sealed:  # the end recovery must find on a copy to keep it: the longest verified prefix
        meta.size = max((c.records[-1].end for c in found if c.records), default=0)
        rep.open_shards += 1
    for c in use:
        if c.uuid not in meta.replicas:
            meta.replicas.append(c.uuid)
            rep.replicas += 1
    return meta, best.records


def _last_index(target: Path) -> Path:
    """The index whose disk states a rebuild keeps: `target`; where there is none, the one an
    earlier rebuild set aside last (`_set_aside`). A rebuild or restore killed between its two
    renames leaves no `target`, its finished index in `index.rebuild` (removed as a leftover)
    and the index it replaced set aside — the rebuild every message then advises took the
    disk states from the missing `target`: a retired or failed disk came back active."""
    if target.exists():
        return target

    def stamp(p: Path) -> tuple[str, int]:  # `<name>.old-YYYYmmdd-HHMMSS[-n]`, n from 2 within one second
        rest = p.name.removeprefix(f"{target.name}.old-")
        return rest[:15], int(rest[16:]) if rest[16:].isdigit() else 1

    aside = [p for p in target.parent.glob(f"{target.name}.old-*") if p.is_dir() and not p.is_symlink()]
    if not aside:
        return target
    last = max(aside, key=stamp)
    log.info("no index at %s: the disk states are taken from %s, the index an earlier rebuild set aside", target, last)
    return last


def _old_disk_states(target: Path) -> dict[str, tuple[DiskState, str]]:
    """uuid → (state, reason) of the disks the old index marked failed or draining; empty when
    there is no old index or it cannot be read (the SSD was lost: that is what rebuild is for)."""
    if not (target / "data.mdb").is_file():
        return {}
    try:
        old = Index(target, readonly=True)
    except lmdb.Error:
        return {}
    # a malformed record (what `hoard check` sends the user here for) is left behind
    old.damaged = lambda e: log.warning("a disk state the old index held is not kept: %s", e.what)
    try:
        return {r.uuid: (r.state, r.reason) for r in old.get_disks()
                if r.state in (DiskState.FAILED, DiskState.DRAINING)}
    except lmdb.Error:
        return {}
    finally:
        old.close()


def _read_pointers(dc: Any, found: dict[str, dict], rep: IndexRebuildReport) -> None:
    """Add the disk's batch and view pointers to `found` where they are newer than what it
    holds (a disk that was failed or absent may hold an older one). One that does not read as
    a pointer (planted, or damaged: its checksum) is damage to name; one that does not read
    (EIO) stops the rebuild: the newest pointer may be this disk's alone (a removal too)."""
    if dc.kind == "s3":  # objects in its bucket (hoardfs.fsd.core.s3files); a root file there is read if it is there
        side = dc.disk.beside
        try:
            keys = [pointers.rel(folder, stem) for folder in pointers.KINDS for stem in side.names(folder, ".json")]
        except OSError as e:
            raise _went_away(dc, f"listing its pointers: {e.strerror or e}") from None
        items = [(key, side.shown(key), side.planted(key), lambda k=key: side.read(k))
                 for key in [*keys, *pointers.ROOT_FILES]]
    else:
        paths = [(pointers.rel(folder, p.stem), p) for folder in pointers.KINDS for p in _listing(dc, folder, "*.json")]
        paths += [(key, dc.path / key) for key in pointers.ROOT_FILES if os.path.lexists(dc.path / key)]
        keys = [key for key, _ in paths]
        items = [(key, str(path), pointers.foreign_name(path), lambda p=path: pointers.read(p)) for key, path in paths]
    for key, where, foreign, read in items:
        if foreign:
            shown = where.encode("utf-8", "backslashreplace").decode()  # (as pointers.shown: never raw)
            rep.damaged.append(f"{shown}: a name the store never writes (not UTF-8, or no batch or view name): not a "
                               "pointer, not registered")
            continue
        try:
            doc = pointers.decode(read(), key)
        except FileNotFoundError:  # listed a moment ago, the store idle
            if key not in keys:
                continue  # (a root file a bucket does not hold)
            raise _went_away(dc, f"{where} was listed, then not found") from None
        except OSError as e:
            if e.errno not in PLANTED:
                raise _went_away(dc, f"reading {where}: {e.strerror or e}") from None
            rep.damaged.append(f"{where}: {e.strerror}")  # planted: a directory, a FIFO, a link
            continue
        except ValueError as e:
            rep.damaged.append(f"{where}: {e}")
            continue
        _newer(found, key, doc)


def _newer(found: dict[str, dict], key: str, doc: dict) -> None:
    """Keep `doc` as the pointer of `key` if its stamp is at least that of the one held."""
    if doc.get(pointers.STAMP, 0) >= found.get(key, {}).get(pointers.STAMP, -1):
        found[key] = doc


def _copy_pointers(backup: Path) -> dict[str, dict]:
    """The pointers an index copy holds (its `pointers` table; a copy from before that table:
    its batches and views, stamped 0 — any pointer on a disk is newer)."""
    old = Index(backup, readonly=True)
    try:
        if old.pointers is not None:
            return {key: pointers.decode(body, key) for key, body in old.pointer_bodies()[1].items()}
        return {pointers.rel(folder, name): {**info, pointers.STAMP: 0}
                for folder, entries in ((BATCHES_DIR, old.iter_batches()), (VIEWS_DIR, old.iter_views()))
                for name, info in entries}
    finally:
        old.close()


def _name_pointers(index: Index, found: dict[str, dict], objects: Container[bytes], rep: IndexRebuildReport,
                   backup: Path | None) -> int:
    """Register the batches and views whose newest pointer — of the disks' and, restoring, the
    index copy's — names a manifest the disks hold; the newest pointers (removal records too)
    become the index's `pointers` table, which the disks are then brought up to. Returns how
    many batches were registered."""
    if backup is not None:
        try:
            for key, doc in _copy_pointers(backup).items():
                _newer(found, key, doc)
        except (lmdb.Error, ValueError) as e:  # a copy damaged inside: the disks' pointers stand alone
            rep.damaged.append(f"index copy: its batches and views cannot be read ({e}); those on the disks are used")
    bodies, batches = {}, 0
    for key, doc in found.items():
        folder, name = pointers.split(key)
        info = pointers.entry(doc)
        if folder not in pointers.KINDS:  # a ROOT_FILES pointer: kept, and brought to every disk
            pass
        elif info is not None and bytes.fromhex(info["manifest"]) not in objects:
            rep.damaged.append(f"{pointers.KINDS[folder]} {name}: its newest pointer names manifest "
                               f"{info['manifest']}, which no disk holds; not registered")
        elif info is not None:
            (index.put_batch if folder == BATCHES_DIR else index.put_view)(name, info)
            batches += folder == BATCHES_DIR
        bodies[key] = pointers.encode(info, doc.get(pointers.STAMP, 0), key)
    index.load_pointers(bodies)
    return batches


def _read_marks(dc: Any, rep: IndexRebuildReport, spill: Spill | None = None, src: int = 0) -> marks.DiskLog:
    """The disk's marks logs. A log that does not read (EIO) stops the rebuild as a folder
    that does not list does: taken as damage, the rebuild replayed the other disks' logs
    alone — which lack what was marked while they were unplugged — and swapped in an index
    without those marks, and its writer then seeded every log with it. Only a log that is not
    a regular file (planted content) is damage to report and skip — the folder's other logs
    are still read; a damaged line (its check does not hold) is named and not obeyed."""
    folder = f"{dc.disk.beside.where}/{MARKS_DIR}" if dc.kind == "s3" else dc.path / MARKS_DIR
    planted: list[str] = []
    try:
        if dc.kind == "s3":  # (its segments: hoardfs.fsd.core.s3files)
            got = dc.disk.beside.marks_read(planted, dc.label, spill, src)
        else:
            got = marks.read_log(dc.path / MARKS_DIR, planted, dc.label, spill, src)
    except OSError as e:
        raise _went_away(dc, f"reading {e.filename or MARKS_DIR + '/'}: {e.strerror or e}") from None
    rep.damaged += [f"marks log {p}" for p in planted]
    rep.damaged += [f"{p}: {n} line(s) that are not records, in a file beside the marks log: skipped"
                    for p, n in got.foreign.items()]
    if got.damaged:
        rep.damaged.append(f"marks log in {folder}: {got.damaged} damaged line(s) (line {', '.join(map(str, got.damaged_lines))}"
                           f"{' …' if got.damaged > len(got.damaged_lines) else ''}): not obeyed")
    if got.other or got.broken_resets:  # a torn line is a crash during an append (never committed)
        rep.damaged.append(f"marks log in {folder}: {got.other + got.broken_resets} line(s) that are not records "
                           "(torn appends, or a snapshot cut short) were skipped")
    return got


def _read_shard(path: Path) -> tuple[ShardMeta, list[fmt.RecordInfo], str]:
    """(metadata, records, damage) of one replica file (`_parse_shard`)."""
    name, sealed = shard_of(path)
    fd, read = _reader(path)
    try:
        got = _parse_shard(read, os.fstat(fd).st_size, name, sealed)
        drop_cache(fd)
        return got
    finally:
        os.close(fd)


def _read_object(dc: Any, ref: PurePath) -> tuple[ShardMeta, list[fmt.RecordInfo], str]:
    """(metadata, records, damage) of one sealed shard object of an S3 disk, read with ranged
    GETs (`_parse_shard`)."""
    name = shard_of(ref)[0]
    return _parse_shard(lambda off, n: dc.disk.read_exact(name, off, n), dc.sizes[ref], name, True)


def _parse_shard(read: Callable[[int, int], bytes], size: int, name: str,
                 sealed: bool) -> tuple[ShardMeta, list[fmt.RecordInfo], str]:
    """(metadata, records, damage) of a replica of `size` bytes read through `read`; `damage`
    names what is wrong with a sealed one whose footer does not decode — it is then read as an
    open copy (its verified prefix), never skipped: its records are each checked on their own."""
    damage = ""
    header = fmt.decode_shard_header(read(0, fmt.SHARD_HEADER_SIZE))
    if header.shard_id.hex() != name:
        raise fmt.ShardFormatError(f"file name says {name}, header says {header.shard_id.hex()}")
    records = None
    if sealed:
        try:
            records = fmt.decode_footer(read, size)
            if records is None:
                raise fmt.FooterMismatch("sealed shard without a footer")
        except fmt.FooterMismatch as e:
            damage, sealed = f"its footer does not decode ({e})", False
    if not sealed:  # the verified prefix; the next writer's recovery seals it
        records = []
        try:
            records.extend(fmt.scan_records(read, size, sealed=False))
        except fmt.ShardFormatError:
            pass
    assert records is not None  # a footer that does not decode makes it an open copy, read above
    created = int.from_bytes(header.shard_id[:6], "big") / 1000
    meta = ShardMeta(header.shard_id, fmt.CLASS_NAMES[header.klass], size if sealed else 0, sealed, [],
                     len(records), created)
    return meta, records, damage




#: beside the store's other locks (`lock_root`): held by `hoard index backup`
BACKUP_LOCK = "index-backup.lock"


def backup_index(store, copies: int = 2) -> list[str]:
    """Copy the LMDB index (compacted, consistent) to `copies` HDDs: `<disk>/index-copy/`.

    A disk keeps it beside its shards (Beside.put_index_copy: written to `index-copy.tmp`,
    fsynced, then swapped in by rename, so a crash leaves the previous copy intact). One backup
    at a time (BACKUP_LOCK: the timer's and one run by hand share each disk's `index-copy.tmp`;
    without it the second deleted the first's half-written copy, and the first swapped in the
    second's while it was being written). Returns the labels of the disks that hold a fresh copy."""
    with flocked(lock_root(store.cfg) / BACKUP_LOCK):
        # local disks first (a bucket's copy is fetched, and its age not shown by a status refresh),
        # then those holding a copy already (replaced, not left behind to age beside the new ones:
        # on disks sharing a filesystem, free space alone chose other disks from one run to the next)
        # — while one has room for a second copy beside its old one (the swap keeps both a moment)
        room = 2 * size_or_zero(store.cfg.index_dir / "data.mdb")

        def rank(d: Any) -> tuple[bool, bool, int]:
            local, free = has_files(d), d.free_bytes(0)
            return not local, not (local and free >= room and d.beside.index_copy_stamp() is not None), -free

        disks = sorted((d for u, d in store.disks.items() if store.usable(u, for_write=True)), key=rank)[:copies]
        done = []
        stamp = {"taken_at": time.time(), "objects": store.index.count_objects()}
        for d in disks:
            def fill(folder: Path) -> None:
                store.index.env.copy(str(folder), compact=True)
                (folder / "stamp.json").write_text(json.dumps(stamp))
            d.beside.put_index_copy(fill)
            done.append(d.label)
        return done


def index_copies(cfg: Settings) -> list[dict[str, Any]]:
    """The index copies `hoard index backup` left on the configured disks: `{disk, age_s}` each,
    from the stamp's time on disk (one stat per disk: cheap enough for a status refresh; a disk
    that is gone, or holds no copy, is left out; so is an S3 disk: backups go to local disks first)."""
    out = []
    for d in cfg.disks:
        if d.kind == "s3":
            continue  # (a request to an engine, which may not answer, is not for a status refresh)
        try:
            taken = (d.path / INDEX_COPY / "stamp.json").stat().st_mtime
        except OSError:
            continue
        out.append({"disk": d.label, "age_s": time.time() - taken})
    return out


def restore_index(cfg: Settings, progress: Callable[[int, int], None] | None = None,
                  without: Iterable[str] = ()) -> tuple[str, dict, IndexRebuildReport]:
    """Put the newest index copy found on the disks, brought up to date from the disks, in
    place of the (lost) index; refuses while anything uses the store (and as rebuild_index
    does, while a disk not in `without` cannot be read)."""
    with _store_idle(cfg, "index restore") as ssd_uuid:
        done = _restore_index(cfg, ssd_uuid, progress, frozenset(without))
    _seed_marks(cfg)
    return done


def _restore_index(cfg: Settings, ssd_uuid: str, progress: Callable[[int, int], None] | None = None,
                   without: frozenset[str] = frozenset()) -> tuple[str, dict, IndexRebuildReport]:
    """An index copy is as old as its `hoard index backup`: objects stored, shards sealed,
    replicated or compacted and marks set since then are on the disks only. So the index is
    rebuilt from the disks, which are the truth for all of that, and the copy supplies what
    the disks do not hold: disk states and reasons, events, queued repairs, file extensions,
    large objects' piece digests."""
    found = []
    for dc in cfg.disks:
        side = _bucket(dc).disk.beside if dc.kind == "s3" else LocalBeside(dc.path)
        stamp = side.shown(f"{INDEX_COPY}/stamp.json")
        try:
            body = side.index_copy_stamp()
            if body is None:
                continue
            doc = json.loads(body)
        except (OSError, ValueError) as e:
            log.warning("index copy on %s not usable: %s", dc.label, e)
            continue
        taken = doc.get("taken_at") if isinstance(doc, dict) else None
        if not isinstance(taken, (int, float)) or isinstance(taken, bool):
            log.warning("index copy on %s not usable: %s has no time stamp", dc.label, stamp)
            continue
        found.append((doc, dc, side))
    if not found:
        raise HoardError("no usable index copy on any disk; use `hoard index rebuild` (from the shards)",
                         ExitCode.DATA)
    copy = index_work(cfg, "restore")
    tried = []
    # newest first; a copy that cannot be read (damaged, half-written) gives way to the next
    for stamp, dc, side in sorted(found, key=lambda x: -x[0]["taken_at"]):
        remove_index_work(copy, ignore_errors=True)
        try:
            side.get_index_copy(copy)
            Index(copy, readonly=True).close()
        except (OSError, lmdb.Error) as e:
            why = str(e).replace(str(copy), side.shown(INDEX_COPY))
            tried.append(f"{dc.label}: {why}")
            log.warning("index copy %s not usable: %s", side.shown(INDEX_COPY), why)
            continue
        try:
            rep = _rebuild_index(cfg, ssd_uuid, progress, backup=copy, without=without)
        finally:
            remove_index_work(copy, ignore_errors=True)
        rep.damaged += [f"index copy on {t}" for t in tried]
        return dc.label, stamp, rep
    raise HoardError(f"no index copy can be read ({'; '.join(tried)}); `hoard index rebuild` rebuilds the index "
                     "from the shards alone", ExitCode.DATA)


def _merge_backup(index: Index, backup: Path, shards: Container[bytes]) -> None:
    """Copy into the rebuilt `index` what only an index copy knows, for objects (the rebuilt
    index holds them) and shards that still exist — in transactions of CHUNK entries (every
    object has an extension: one transaction held them all in memory)."""
    old = Index(backup, readonly=True)
    try:
        with old.env.begin() as src:
            for name in ("exts", "chunks", "events", "repairs"):
                cur = src.cursor(db=getattr(old, name))
                more = cur.first()
                while more:
                    with index.env.begin(write=True) as dst:
                        n = 0
                        while more and n < CHUNK:
                            key = bytes(cur.key())
                            if (name == "events" or (key[:12] in shards if name == "repairs"
                                                     else dst.get(key, db=index.objects) is not None)):
                                dst.put(key, bytes(cur.value()), db=getattr(index, name))
                            n += 1
                            more = cur.next()
    finally:
        old.close()
