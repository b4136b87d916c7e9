"""The store facade: open the disks and the index, put, get, read batches, health.

    store = Store.open(cfg)                        # a writer: recovers orphaned open shards
    results = store.put_many(paths, klass="raw")   # per file: sha256, new/existing, replicas
    data = store.get(sha256_hex)                   # verified bytes, from any good replica
    store.close()

Just past 500 lines and kept whole: it is the facade — opening, the put and get paths, batch
reads and the store's health, each a few calls into hoardfs.fsd.core and hoardfs.fsd.io; attaching disks
(fsd/io/attach.py) and the copies of marks and pointers (fsd/io/copies.py) are apart.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Set
from pathlib import Path
from typing import Protocol

import lmdb

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write
from hoardfs.base.paths import file_ext
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.core import formats, storelock
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.backend import Disk
from hoardfs.fsd.core.disks import DiskGone, DiskRecord, DiskState, corrupt_fs, fsck_step
from hoardfs.fsd.core.entries import ObjectLoc
from hoardfs.fsd.core.held import iter_named, named
from hoardfs.fsd.core.index import Index, ShardMeta, has_index, index_error, open_existing
from hoardfs.fsd.core.layout import (
    BATCHES_DIR,
    VIEWS_DIR,
    check_ssd,
    lock_root,
    pin_path,
    protect_ssd,
    remove_index_leftovers,
)
from hoardfs.fsd.core.placement import Candidate, choose
from hoardfs.fsd.core.records import (
    GET_MAX,
    GROUP_BYTES,
    GROUP_OBJECTS,
    ITER_READ,
    MAP_PIECE,
    DataError,
    ObjectNotFound,
    PutResult,
    learn_map,
    sha_bytes,
    verify_record,
)
from hoardfs.fsd.io import attach, copies
from hoardfs.fsd.io.planner import execute, in_order, make_plan
from hoardfs.fsd.io.put import put_files, put_payloads
from hoardfs.fsd.io.recovery import recover_orphans
from hoardfs.fsd.io.replicate import replication_lag
from hoardfs.fsd.io.scrub import oldest_unverified_age
from hoardfs.fsd.io.spread import SpreadWriter
from hoardfs.fsd.io.writer import writer_alive

log = logging.getLogger(__name__)

#: how far back `status()` lists the disks' failures (the health document's `store.disk_failures`,
#: which hoardfs.jobs.events relays as `disk_failed` events: a relay missed for this long misses one)
DISK_FAILURES_S = 7 * 86400


class SetAside(Protocol):
    """Space set aside for this process on each disk (gc's Reservation, a layer above)."""

    def remaining(self, uuid: str) -> int: ...

    def take(self, uuid: str, nbytes: int) -> None: ...


def _migrate_reading(store: Store) -> None:
    """The migration steps that read objects (the `held` table reads every registered manifest),
    once the disks are attached. A manifest that cannot be read leaves the index at its older
    format — deletion and gc then read the manifests, as that format did — and says so."""
    try:
        store.index.migrate(get=store.get)
    except (HoardError, ValueError, KeyError, TypeError) as e:  # (a manifest that does not decode)
        why = e.message if isinstance(e, HoardError) else f"a manifest does not decode: {e!r}"
        store.migration_error = e  # (`hoard index migrate` names the step for it: hoardfs.fsd.outputs.unreadable)
        log.warning("the index stays at format %d (%s); deletion and gc read every manifest until `hoard index "
                    "migrate` succeeds — `hoard check` names a damaged manifest", store.index.format, why)


class Store:
    def __init__(self, cfg: Settings, index: Index, writable: bool) -> None:
        self.cfg, self.index, self.writable = cfg, index, writable
        self.shard_bytes = cfg.store.shard_size_mb << 20
        self._copies = cfg.disk_copies  # label → what one replica there counts as (`weight`)
        #: bytes, or objects, of new files appended before their group's fdatasync is queued (hoardfs.fsd.io.put)
        self.group_bytes, self.group_objects = GROUP_BYTES, GROUP_OBJECTS
        self.disks: dict[str, Disk] = {}
        self.records: dict[str, DiskRecord] = {}
        self.queue: dict[str, int] = {}
        self._last_resort_said: set[tuple[bytes, str]] = set()  # (shard, disk) warned of once
        self.measured_bw: dict[str, float] = {}  # MB/s seen by the batch reader, per disk uuid
        self.lock = threading.RLock()
        self.rng = random.Random()
        self._writers: dict[str, SpreadWriter] = {}
        self.held = ""  # the lock this store holds shared until close() (see Store.open)
        self.reservations: SetAside | None = None  # gc's Reservation while it runs
        #: why the open's migration left the index at an older format (a manifest it could not read)
        self.migration_error: Exception | None = None

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, cfg: Settings, writable: bool = True, init: bool = False, lock: str | None = None,
             what: str = "") -> Store:
        """Open the index and check every configured disk; `init` gives a new SSD and new disks
        their identity. A writer holds the `store` lock shared until `close()` (gc's swap, an
        index rebuild and rebuild's switch-over wait for it); a long-lived reader such as the
        mount passes `lock="readers"` (only an index rebuild or restore waits for that)."""
        attach.refuse_planted_links(cfg)
        ssd_uuid = check_ssd(cfg, init)
        if writable:
            attach.refuse_newer_identities(cfg)
            protect_ssd(cfg)
        hold = lock if lock is not None else (storelock.STORE if writable else "")
        if hold:
            storelock.acquire_shared(lock_root(cfg), what or ("a writer" if writable else "a reader"), hold)
        try:
            if init:
                if not has_index(cfg.index_dir):  # a lost index: refuse before an empty one takes its place
                    attach.refuse_lost_index(cfg)
                try:
                    index = Index(cfg.index_dir)
                except lmdb.Error as e:
                    raise index_error(cfg.index_dir, e) from None
            else:
                index = open_existing(cfg.index_dir)
            store = cls(cfg, index, writable)
            store.held = hold
            index.mark_log = store.log_marks
            index.mark_tails = store.marks_tails
            try:
                if writable:  # an older index is migrated, a newer one refused, before anything is written
                    index.migrate()
                attach.check_index_owner(store, ssd_uuid)
                attach.attach_disks(store, init)
                if writable and index.format < formats.INDEX:
                    _migrate_reading(store)
                if writable:
                    recover_orphans(store)
                    # (under the store lock: no index rebuild or restore can be using them)
                    for gone in remove_index_leftovers(cfg)[0]:
                        log.info("removed %s, left by a killed index rebuild or restore", gone)
                    store.catch_up_marks()
                    copies.catch_up_pointers_or_warn(store)
            except BaseException:
                store.index.close()
                raise
        except BaseException:
            if hold:
                storelock.release_shared(lock_root(cfg), hold)
            raise
        return store

    def refresh_disks(self) -> bool:
        """Look again at hoard.toml's `[[disks]]` and the index's disk records, as a long-lived
        reader (the mount) must: a disk added, replaced, failed or reactivated by another
        process is seen. Disks already attached keep their objects. True if anything changed."""
        cfg = self.cfg
        if cfg.source is not None:
            try:
                cfg = config_mod.load(cfg.source)
            except HoardError as e:
                log.warning("disks not refreshed: %s", e.message)
                return False
        fresh = Store(cfg, self.index, self.writable)
        try:
            attach.attach_disks(fresh, init=False)
        except HoardError as e:
            log.warning("disks not refreshed: %s", e.message)
            return False
        before = {u: (r.state, r.path, r.reason) for u, r in self.records.items()}
        after = {u: (r.state, r.path, r.reason) for u, r in fresh.records.items()}
        if before == after:
            return False
        disks = {u: self.disks[u] if u in self.disks and self.disks[u].where == d.where else d
                 for u, d in fresh.disks.items()}
        with self.lock:
            self.records, self.disks = fresh.records, disks
            for u in disks:
                self.queue.setdefault(u, 0)
            self.cfg = self.cfg.model_copy(update={"disks": cfg.disks})
        copies.catch_up_pointers_or_warn(self)  # a disk back (or added) takes them now, not at the next open
        return True

    def close(self) -> None:
        try:
            with self.lock:
                for w in self._writers.values():
                    w.commit()
                    w.seal()
                    w.close()
                self._writers.clear()
        finally:
            try:
                for d in self.disks.values():
                    d.close_all()  # (an S3 disk's waits for its staging files' unlinks: Ctrl-C may land there)
            finally:
                self.index.close()
                if self.held:
                    storelock.release_shared(lock_root(self.cfg), self.held)
                    self.held = ""

    def exclusive(self, what: str, wait_s: float = 0.0):
        """The store lock held exclusively (this process's shared hold is converted): no other
        writer, worker or mount runs meanwhile. Refuses, naming them, after `wait_s`."""
        return storelock.exclusive(lock_root(self.cfg), what, wait_s=wait_s)

    def maintenance(self, what: str, wait_s: float = 0.0):
        """The maintenance lock: one of gc, replicate, rebuild, verify --repair at a time."""
        return storelock.exclusive(lock_root(self.cfg), what, name=storelock.MAINTENANCE, wait_s=wait_s)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers used by the writer ---------------------------------------------------------
    def lock_path(self, shard_hex: str) -> Path:
        return self.cfg.index_dir.parent / "locks" / f"{shard_hex}.lock"

    def readable_replicas(self, meta: ShardMeta) -> int:
        """Replicas on disks that can be read now (active or draining; not failed or missing)."""
        return sum(1 for u in meta.replicas if self.usable(u))

    def weight(self, uuid: str) -> int:
        """The copies one replica on this disk counts as toward a class's target: an S3 disk's
        `copies` (the engine's own durability: docs/scale-out.md), 1 for any other."""
        rec = self.records.get(uuid)
        return 1 if rec is None else self._copies.get(rec.label, 1)

    def copies_of(self, meta: ShardMeta, without: str | None = None, readable: bool = False,
                  bad: Set[tuple[bytes, str]] = frozenset()) -> int:
        """The copies a shard has toward its class's target (`target`): its replicas on active
        disks — or on any disk that can be read now, `readable` — each counted as its disk's
        `weight`, leaving out `without`'s and those in `bad` ((shard id, disk uuid) pairs:
        `known_bad`, replicas a reader found bad and queued for repair)."""
        return sum(self.weight(u) for u in meta.replicas if u != without and (meta.shard_id, u) not in bad and (
            self.usable(u) if readable else (u in self.records and self.records[u].state == DiskState.ACTIVE)))

    def known_bad(self) -> set[tuple[bytes, str]]:
        """(shard id, disk uuid) of every replica queued for repair: found bad by a reader and
        not yet mended — not to be counted on when another replica is dropped: a rebuild or
        forget that counted them could drop a failed disk's good replica, the last one."""
        return {(sid, uuid) for sid, uuid, _ in self.index.pending_repairs()}

    def gone(self, disk: Disk, err: DiskGone) -> None:
        """The disk's mount or identity is gone: this process stops using it at once (its
        state in the index is not changed: it may come back)."""
        rec = self.records.get(disk.uuid)
        if rec is not None:
            rec.state, rec.reason = DiskState.MISSING, err.strerror or str(err)

    def usable(self, uuid: str, for_write: bool = False) -> bool:
        rec = self.records.get(uuid)
        if rec is None or uuid not in self.disks:
            return False
        return rec.state == DiskState.ACTIVE or (not for_write and rec.state == DiskState.DRAINING)

    def candidates(self) -> list[Candidate]:
        out = []
        open_bytes = self.open_bytes()
        for uuid, rec in self.records.items():
            disk = self.disks.get(uuid)
            if disk is None or not self.usable(uuid, for_write=True):
                out.append(Candidate(uuid, rec.label, 0, usable=False, why_not=rec.state.value + (
                    f" ({rec.reason})" if rec.reason else "")))
                continue
            fresh = self._disk_record(uuid)
            written, to_come = open_bytes.get(uuid, (0, 0))
            try:
                free = disk.free_bytes(fresh.used_bytes + written)
            except OSError as e:  # it dropped off since the store was opened: nothing goes there
                out.append(Candidate(uuid, rec.label, 0, usable=False, why_not=f"unreachable ({e.strerror})"))
                continue
            if self.reservations is not None:  # what gc set aside is free for gc itself
                free += self.reservations.remaining(uuid)
            out.append(Candidate(uuid, rec.label, free, self.queue.get(uuid, 0), copies=self.weight(uuid),
                                 promised=to_come))
        return out

    def open_bytes(self) -> dict[str, tuple[int, int]]:
        """Per disk uuid, of the shards this process's writers have open there: the bytes
        appended, and those they may still append until full. Free space leaves both out:
        the first are in the filesystem's count already but in the index's `used_bytes` (a
        disk's `capacity_gb`, an S3 disk's) only from the seal; placement keeps the second for
        them — with several open shards a disk would otherwise take a new one with room for
        one shard while two are open there, and answer ENOSPC to the three."""
        out: dict[str, tuple[int, int]] = {}
        for spread in list(self._writers.values()):
            for w in spread.writers:
                if (sh := w.shard) is not None:
                    for d in sh.disks:
                        written, to_come = out.get(d.uuid, (0, 0))
                        out[d.uuid] = (written + sh.pos, to_come + max(0, self.shard_bytes - sh.pos))
        return out

    def _disk_record(self, uuid: str) -> DiskRecord:
        """The index's current record (used_bytes moves as other processes write)."""
        return self.index.get_disk(uuid) or self.records[uuid]

    def status_disk_failures(self) -> list[dict]:
        """The disks' failures the index recorded in the last DISK_FAILURES_S, oldest first: what
        hoardfs.jobs.events relays as `disk_failed` events (each once, by the time of its index key)."""
        return [{"at_ns": at, "disk": e.get("disk"), "detail": e.get("detail")}
                for at, e in self.index.events_since("disk_failed", time.time() - DISK_FAILURES_S)]

    def set_disk_state(self, label: str, state: DiskState, reason: str) -> str:
        """Persist a disk's state (with an event when it changes) and use it at once; returns its uuid."""
        rec = next((r for r in self.index.get_disks() if r.label == label), None)
        if rec is None:
            raise HoardError(f"no disk labelled {label}; `hoard disks list` shows them", ExitCode.USAGE)
        if rec.state != state:
            rec.state, rec.reason = state, reason
            self.index.put_disk(rec)
            self.index.record_event(f"disk_{state.value}", disk=label, detail=reason)
        if rec.uuid in self.records:
            self.records[rec.uuid].state, self.records[rec.uuid].reason = rec.state, rec.reason
        return rec.uuid

    def place(self, n: int, need: int, exclude: set[str], why_excluded: str = "excluded after an error",
              spread: list[frozenset[str]] | None = None) -> list[Disk]:
        """`n` distinct disks with room for `need` bytes; a reservation of this process's on
        them is shrunk by `need` first, so the write about to happen finds the space. `spread`:
        the disk sets of the caller's other open shards (hoardfs.fsd.core.placement)."""
        disks = [self.disks[c.uuid]
                 for c in choose(self.candidates(), n, need, self.rng, exclude, why_excluded, spread)]
        if self.reservations is not None:
            for d in disks:
                self.reservations.take(d.uuid, need)
        return disks

    def queue_changed(self, disks: list[Disk], delta: int) -> None:
        for d in disks:
            self.queue[d.uuid] = self.queue.get(d.uuid, 0) + delta

    def disk_error(self, disk: Disk, op: str, err: OSError | Exception, shard: str = "") -> None:
        """Record an error; a disk that is gone (unmounted, foreign) stops being used at once."""
        detail = getattr(err, "strerror", None) or str(err)
        log.warning("disk %s: %s error%s: %s%s", disk.label, op, f" on shard {shard}" if shard else "", detail,
                    f"; {fsck_step(disk.label)}" if corrupt_fs(err) else "")
        try:
            self.index.record_event(f"{op}_error", disk=disk.label, shard=shard, detail=detail,
                                    errno=getattr(err, "errno", None))
        except lmdb.Error as e:  # a full SSD must not turn a replica fallback into a failure
            log.error("index: cannot record the %s error of disk %s: %s", op, disk.label, e)
        if isinstance(err, DiskGone):
            self.gone(disk, err)
        elif getattr(err, "errno", None) == errno.EIO:
            # a disk answering EIO is dying: stop using it now, and say so until it is replaced
            # (EBADMSG/EUCLEAN, a filesystem's corrupt records, is not: `corrupt_fs`)
            self.set_disk_state(disk.label, DiskState.FAILED,
                                f"I/O error during {op} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {detail}; "
                                f"run `hoard rebuild --disk {disk.label}`")
        elif getattr(err, "errno", None) == errno.EROFS and self.records[disk.uuid].state == DiskState.ACTIVE:
            # the kernel turned the filesystem read-only after errors: readable, not writable
            self.set_disk_state(disk.label, DiskState.DRAINING,
                                f"its filesystem turned read-only during {op} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                                f"(usually after write errors); copies are still read from it — replace it: "
                                f"`hoard disks replace {disk.label} NEW`")

    def target(self, klass: str) -> int:
        return self.cfg.store.copy_of_raw if klass == "raw" else self.cfg.store.copy_of_generated

    def writer(self, klass: str) -> SpreadWriter:
        """This process's writer of `klass`: `store.open_shards` shards open at once (hoardfs.fsd.io.spread)."""
        if not self.writable:
            raise HoardError("the store was opened read-only", ExitCode.USAGE)
        if klass not in fmt.CLASSES:
            raise HoardError(f"unknown class {klass!r}; allowed: raw, generated", ExitCode.USAGE)
        w = self._writers.get(klass)
        if w is None:
            w = self._writers[klass] = SpreadWriter(self, klass)
        return w

    # -- the write path ------------------------------------------------------------------------
    def put_many(self, paths: Iterable[str | os.PathLike[str]], klass: str = "raw",
                 on_result: Callable[[PutResult], None] | None = None,
                 stop: threading.Event | None = None, root: str | None = None,
                 expect: dict[str, tuple[int, int, int, int]] | None = None) -> list[PutResult]:
        """Store files; dedupe by sha256; acknowledge after fsync on write_ack disks.
        `on_result` sees each file as soon as its outcome is final; `stop` ends the call at the
        next file boundary; `root` makes each stored file a root gc keeps until released
        (`hoard put`); `expect`: path → (device, inode, size, mtime_ns) a scan saw — another
        file there is rejected (see hoardfs.fsd.io.put.put_files)."""
        with self.lock:
            results = put_files(self, self.writer(klass), [p if isinstance(p, Path) else Path(p) for p in paths],
                                on_result, stop, root, expect)
        # a file appended here had its extension indexed with it (ShardWriter.finish_commit);
        # one the index held already may not have one yet
        if exts := {bytes.fromhex(r.sha256): ext for r in results
                    if r.status == "existing" and (ext := file_ext(r.path))}:
            self.index.put_exts(exts)
        return results

    def put_bytes(self, data: bytes, klass: str = "raw") -> PutResult:
        """Store one in-memory object (used for dumps, manifests, generated data)."""
        return self.put_bytes_many([data], klass)[0]

    def put_bytes_many(self, datas: list[bytes], klass: str = "raw") -> list[PutResult]:
        """Store in-memory objects in one batch (one group commit, one seal)."""
        with self.lock:
            return put_payloads(self, self.writer(klass), [("<bytes>", d) for d in datas])

    # -- the read path ------------------------------------------------------------------------
    def register_batch(self, batch_id: str, info: dict | None, holds: list[bytes] | None = None) -> None:
        """Name an ingested batch's manifest object in the index and, so that `hoard index
        rebuild` finds it again, in `batches/<batch_id>.json` on every disk in service; None
        unregisters it (type-B deletion: the caller then tombstones and removes its `held`
        entries, hoardfs.fsd.outputs.holders.forget — or the next gc does). What the manifest names is
        held first (hoardfs.fsd.core.held): `holds`, its files and itself, when the caller has them;
        else the manifest is read. Called under `naming_lock` (hoardfs.fsd.outputs.manifest)."""
        self._register(BATCHES_DIR, "batch", batch_id, info, holds)

    def register_view(self, name: str, info: dict | None, holds: list[bytes] | None = None) -> None:
        """The same for a view (`views/<name>.json`); None removes it."""
        self._register(VIEWS_DIR, "view", name, info, holds)

    def _register(self, folder: str, kind: str, name: str, info: dict | None, holds: list[bytes] | None) -> None:
        manifest: str = info["manifest"] if info is not None else ""
        held = bool(manifest) and self.index.held is not None
        if held:
            # every entry committed before the registration: a registered manifest's objects are all held
            # (streamed when read: a view of 10 M files is one directory object at a time)
            self.index.hold(manifest, iter_named(self.get, manifest) if holds is None else holds, kind, name)
        also = self.index.registration(kind, name, manifest or None)
        try:
            copies.pointing(self, lambda write: self.index.name_pointer(folder, name, info, write, also))
        except BaseException:
            if held:  # not registered (no disk took its pointer): its entries go again — or, when
                # they cannot (the manifest no longer reads), they stay with their pending record
                # for the next gc; the registration's own error is the one to tell
                with contextlib.suppress(HoardError, OSError, lmdb.Error):
                    self.index.unhold(manifest, iter_named(self.get, manifest) if holds is None else holds, "add",
                                      get=self.get)
            raise

    def keep_pointer(self, key: str, doc: dict) -> None:
        """A pointer at the disks' root (hoardfs.fsd.core.pointers.ROOT_FILES: the newest database dump) on
        every disk in service, kept in the index as a batch's is: a disk added or back later
        gets it, and an index rebuild takes the newest."""
        copies.pointing(self, lambda write: self.index.keep_pointer(key, doc, write))

    # -- the marks logs and pointers beside the shards: hoardfs.fsd.io.copies ---------------------------
    def write_pointer(self, rel: str, body: bytes, failed: list[tuple[Disk, OSError]] | None = None
                      ) -> list[str]:
        return copies.write_pointer(self, rel, body, failed)

    def pointers_behind(self, state: tuple[int | None, dict[str, int], dict[str, float]] | None = None) -> list[str]:
        return copies.pointers_behind(self, state)

    def catch_up_pointers(self, uuids: Iterable[str] | None = None) -> list[str]:
        return copies.catch_up_pointers(self, uuids)

    def log_marks(self, op: str, shas: list[bytes], stamp: int) -> list[str]:
        return copies.log_marks(self, op, shas, stamp)

    def marks_tails(self) -> dict[str, int | None]:
        """Each writable disk's last marks-log stamp; None where the log's end did not read."""
        tails = copies.marks_tails(self, for_write=True)[0]
        return {u: tails.get(u) for u in self.disks if self.usable(u, for_write=True)}

    def marks_behind(self, state: tuple[int, dict[str, int], dict[str, float]] | None = None) -> list[str]:
        return copies.marks_behind(self, state)

    def catch_up_marks(self) -> list[str]:
        return copies.catch_up_marks(self)

    def compact_marks(self) -> list[str]:
        return copies.compact_marks(self)

    def snapshot_marks(self, uuids: Iterable[str] | None = None, recheck: set[str] | None = None) -> list[str]:
        return copies.snapshot_marks(self, uuids, recheck)

    # -- pins: acknowledged objects a job holds before a manifest names them -------------------
    def pin(self, name: str, shas_hex: Iterable[str], why: str) -> None:
        """Record that a job (an ingest between its store and package steps, a stage/export)
        relies on these objects: gc treats them as referenced until `unpin`. Write it before
        the store is closed, i.e. while the shared store lock is held — gc decides what is
        unreferenced under the exclusive lock, so it never sees the gap between the
        acknowledgement and the pin."""
        path = pin_path(self.cfg, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"why": why, "time": time.time(), "sha256": sorted(set(shas_hex))}).encode())

    def unpin(self, name: str) -> None:
        pin_path(self.cfg, name).unlink(missing_ok=True)

    def batch_manifest(self, batch_id: str) -> dict | None:
        """The manifest of an ingested batch (from the store, verified), or None if unknown."""
        info = self.index.get_batch(batch_id)
        return json.loads(self.get(info["manifest"])) if info else None

    def replica_order(self, meta: ShardMeta, avoid: Set[str] = frozenset(), first: str = "") -> list[Disk]:
        """The usable disks holding `meta`, active ones first, then by the reads queued on each;
        the disk `first` (a uuid) ahead of them all when it holds one (the caller's choice)."""
        usable = [u for u in meta.replicas if self.usable(u) and u not in avoid]
        usable.sort(key=lambda u: (u != first, self.records[u].state != DiskState.ACTIVE, self.queue.get(u, 0)))
        return [self.disks[u] for u in usable]

    def sources(self, meta: ShardMeta, avoid: Set[str] = frozenset()) -> Iterator[Disk]:
        """The disks to read or copy `meta` from, in turn: `replica_order`, then — only once
        those are used up — `last_resort` (its probe of each failed disk made only then)."""
        order = self.replica_order(meta, avoid)
        yield from order
        # (not one of those again: a disk a copy just failed on is a last resort now)
        yield from self.last_resort(meta, set(avoid) | {d.uuid for d in order})

    def last_resort(self, meta: ShardMeta, avoid: Set[str] = frozenset()) -> list[Disk]:
        """The disks holding `meta` that were failed but are still attached: read only when
        every usable replica failed: a failed disk may still hold whole an object whose other
        replica rotted, and read by nothing it would leave that object unreadable.
        Never written to; a read that fails there is not reported again (the disk is failed).
        Only a disk still at its path with its own identity (`check`): one that is gone holds
        nothing to read, and another disk mounted in its place must not be read as it."""
        out = []
        for u in meta.replicas:
            rec = self.records.get(u)
            if u in avoid or u not in self.disks or rec is None or rec.state != DiskState.FAILED:
                continue
            try:
                self.disks[u].check()
            except OSError:  # (DiskGone: unmounted, another disk, its identity damaged)
                continue
            out.append(self.disks[u])
        return out

    def get(self, sha256_hex: str, avoid: Set[str] = frozenset()) -> bytes:
        """The object's bytes, verified (xxh3-128 and sha256), from the first good replica."""
        sha = sha_bytes(sha256_hex)
        loc = self.index.lookup(sha)
        if loc is not None and loc.length > GET_MAX:
            raise HoardError(f"object {sha256_hex} is {fmt_bytes(loc.length)}, too large to read into memory: "
                             f"`hoard get {sha256_hex} -o FILE` streams it (Store.iter_object)", ExitCode.USAGE)
        return self.from_replicas(sha, lambda disk, meta, loc: self._read_record(
            disk, meta.hex, loc.offset, loc.length, sha), avoid)

    # -- large objects: verified pieces, bounded memory ----------------------------------------
    def iter_object(self, sha: bytes, avoid: Set[str] = frozenset(), first: str = "", exact: bool = False):
        """The object's bytes in verified pieces (each MAP_PIECE checked against the object's
        chunk map before it is yielded; a piece that fails on one replica is read from the
        next), whatever its size, in bounded memory. An object without a chunk map (stored
        from memory, or its map lost with the index) is first read once in full — its
        xxh3-128 and sha256 checked, streaming — to learn the map. Pieces come from the disk
        `first` while it holds a good replica (the batch planner's choice); `exact` reads
        them with the disk's read-ahead off (the planner, which reads ahead itself). Off a
        disk that streams large objects (`stream_large`: an S3 engine) the pieces come off
        one streamed read of the whole record (`_streamed`), one piece in memory; should that
        stop (the engine broke off, a piece did not check), the rest is read piece by piece,
        `read_streams` at once, yielded in order."""
        loc = self.index.lookup(sha)
        if loc is None:
            raise ObjectNotFound(f"object {sha.hex()} is not in the store (check the digest)")
        digests = self.chunk_map(sha, loc.length)
        length = loc.length

        def checked(buf: bytes, start: int, disk: Disk, meta: ShardMeta) -> bytes:
            n = min(ITER_READ, length - start)
            if len(buf) != n:
                raise fmt.TruncatedShard(f"shard {meta.hex} on {disk.label} ends inside object {sha.hex()[:12]}…")
            view = memoryview(buf)
            piece0 = start // MAP_PIECE
            for i in range(0, n, MAP_PIECE):
                k = piece0 + i // MAP_PIECE
                if fmt.xxh3(view[i:i + MAP_PIECE]) != digests[k * 16:(k + 1) * 16]:
                    raise fmt.PayloadChecksumMismatch(f"piece {k} of {sha.hex()[:12]}… does not match its "
                                                      f"chunk map (shard {meta.hex} on {disk.label})")
            return buf

        def piece(start: int, prefer: str) -> bytes:
            n = min(ITER_READ, length - start)

            def read(disk, meta, loc) -> bytes:  # (not `first`: that is the disk the caller wants read)
                return checked((disk.read_exact if exact else disk.read_at)(meta.hex, loc.offset + start, n),
                               start, disk, meta)

            return self.from_replicas(sha, read, avoid, first=prefer)

        done, then = 0, first
        streaming = self._stream_disk(loc, avoid, first) if length > ITER_READ else None
        if streaming is not None:
            disk, meta = streaming
            # the piece a stream stops at, and the rest, are read from its replica first: a piece
            # that did not check there is reported, whatever order the replicas are in by then
            then = disk.uuid
            with contextlib.closing(self._streamed(sha, loc, disk, meta, checked)) as streamed:
                for buf in streamed:
                    done += len(buf)
                    yield buf
        calls = (functools.partial(piece, start, then) for start in range(done, length, ITER_READ))
        yield from in_order(calls, self._read_streams(loc.shard_id, avoid, then))

    def _stream_disk(self, loc: ObjectLoc, avoid: Set[str], first: str) -> tuple[Disk, ShardMeta] | None:
        """The replica an object's first piece would come from, and its shard, when that disk
        streams large objects (`stream_large`); else None."""
        meta = self.index.get_shard(loc.shard_id)
        if meta is None:
            return None
        order = self.replica_order(meta, avoid, first)
        return (order[0], meta) if order and order[0].stream_large else None

    def _streamed(self, sha: bytes, loc: ObjectLoc, disk: Disk, meta: ShardMeta,
                  checked: Callable[[bytes, int, Disk, ShardMeta], bytes]):
        """The object's checked pieces off ONE streamed read (`stream_at`) of `disk`'s replica;
        ends quietly at the first piece that does not come whole or does not check — the caller
        reads that piece and the rest through `from_replicas` with `disk` first, which reports
        its fault as any read's and tries every other replica."""
        start = 0
        try:
            with contextlib.closing(disk.stream_at(meta.hex, loc.offset, loc.length, ITER_READ)) as pieces:
                for buf in pieces:
                    yield checked(buf, start, disk, meta)
                    start += len(buf)
        except (OSError, fmt.ShardFormatError) as e:
            log.info("object %s…: its stream off disk %s stopped at byte %d (%s); the rest is read piece by piece",
                     sha.hex()[:12], disk.label, start, e)

    def _read_streams(self, shard_id: bytes, avoid: Set[str], first: str) -> int:
        """How many pieces of an object to fetch at once: the `read_streams` of the disk its
        pieces will come from (`first`, else the first usable replica) — several ranged GETs in
        flight on an S3 engine, one read at a time on a local disk."""
        disk = self.disks.get(first)
        if disk is None:
            meta = self.index.get_shard(shard_id)
            order = self.replica_order(meta, avoid) if meta else []
            disk = order[0] if order else None
        return disk.read_streams if disk is not None else 1

    def copy_object_to(self, sha: bytes, f) -> int:
        """Write the object's verified bytes to the binary file `f`, piece by piece; returns
        the size. (A piece is only written after it was checked.)"""
        n = 0
        for piece in self.iter_object(sha):
            f.write(piece)
            n += len(piece)
        return n

    def chunk_map(self, sha: bytes, length: int) -> bytes:
        """The object's chunk map (xxh3-128 per MAP_PIECE), learned from a verified full read
        and recorded when the index has none."""
        digests = self.index.get_chunks(sha)
        if digests is not None and len(digests) == 16 * -(-length // MAP_PIECE):
            return digests
        digests = self.from_replicas(sha, lambda disk, meta, loc: learn_map(
            lambda off, n: disk.read_at(meta.hex, off, n), f"shard {meta.hex} on {disk.label}", loc, sha))
        if self.index.env.refused is None:  # (a cache: an index a later hoardfs wrote takes no write)
            self.index.put_chunks(sha, digests)
        return digests

    def record_digest(self, sha: bytes) -> bytes:
        """The xxh3-128 of the whole payload, from the record header (what a copy must carry)."""
        def read(disk, meta, loc) -> bytes:
            head = disk.read_at(meta.hex, loc.offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE)
            got, length, digest, _ = fmt.decode_record_header(head)
            if got != sha or length != loc.length:
                raise fmt.ShardFormatError(f"record header of {sha.hex()[:12]}… does not match the index")
            return digest

        return self.from_replicas(sha, read)

    def from_replicas(self, sha: bytes, read, avoid: Set[str] = frozenset(), on_bad=None, first: str = ""):
        """`read(disk, meta, loc)` on the object's usable replicas in order (the disk `first`
        first, when it holds one: the mount's choice by queue depth) until one succeeds.

        A replica that fails is reported (an EIO marks its disk failed) and queued for repair;
        when every usable replica failed, those on failed but attached disks are read last
        (`last_resort`) before giving up.
        If every replica's file was missing, the object may have moved meanwhile (a gc swap
        re-points it, then deletes the old shard): the lookup is done once more before
        anything is reported. Raises ObjectNotFound or DataError naming what was tried.
        `on_bad(disk, meta, err)` replaces the default report (the mount logs its own line)."""
        report = on_bad or (lambda disk, meta, e: self.bad_replica(disk, meta, "read", e))
        loc = None
        tried: list[str] = []
        for _attempt in range(2):
            new = self.index.lookup(sha)
            if new is None:
                raise ObjectNotFound(f"object {sha.hex()} is not in the store (check the digest; "
                                     "`hoard index rebuild` if the index was lost)")
            if new == loc:
                break  # it did not move: the missing files are really missing
            loc, tried, missing = new, [], []
            meta = self.index.get_shard(loc.shard_id)
            order = self.replica_order(meta, avoid, first) if meta else []
            for disk in order:
                try:
                    return read(disk, meta, loc)
                except FileNotFoundError as e:
                    tried.append(f"{disk.label} (shard file missing)")
                    missing.append((disk, e))
                except (OSError, fmt.ShardFormatError) as e:
                    tried.append(f"{disk.label} ({getattr(e, 'strerror', None) or e})")
                    report(disk, meta, e)
            if meta is not None:  # (not a disk just tried: one whose EIO failed it above would be read again)
                for disk in self.last_resort(meta, set(avoid) | {d.uuid for d in order}):
                    try:
                        got = read(disk, meta, loc)
                    except (OSError, fmt.ShardFormatError) as e:
                        tried.append(f"{disk.label}, failed ({getattr(e, 'strerror', None) or e})")
                        continue
                    if (meta.shard_id, disk.uuid) not in self._last_resort_said:  # (once, not per piece)
                        self._last_resort_said.add((meta.shard_id, disk.uuid))
                        log.warning("object %s: read from failed disk %s, the last good replica of shard %s; `hoard "
                                    "replicate` copies it while the disk still reads", sha.hex(), disk.label, meta.hex)
                    return got
            if not missing:
                break
        for disk, err in missing:
            report(disk, meta, err)
        assert loc is not None  # looked up above
        raise DataError(f"object {sha.hex()}: no good replica of shard {loc.shard_id.hex()}; tried "
                        + (", ".join(tried) or "none usable") + "; see `hoard health`")

    def bad_replica(self, disk: Disk, meta: ShardMeta, op: str, err: Exception) -> None:
        """A replica gave an error or wrong bytes: report it and queue it for repair (the
        replicator re-copies it from a good replica)."""
        self.disk_error(disk, op, err, meta.hex)
        try:
            self.index.queue_repair(meta.shard_id, disk.uuid, getattr(err, "strerror", None) or str(err))
        except (lmdb.Error, formats.NewerFormat) as e:
            log.error("index: cannot queue the repair of shard %s on %s: %s", meta.hex, disk.label, e)

    def _read_record(self, disk: Disk, shard_hex: str, offset: int, length: int, sha: bytes) -> bytes:
        buf = disk.read_at(shard_hex, offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE + length)
        return verify_record(memoryview(buf), 0, sha, length, f" (shard {shard_hex} on {disk.label})")

    def read_batch(self, shas_hex: list[str], sink, large_sink=None) -> tuple:
        """Read many objects with the batch planner; sink(sha_bytes, payload) per object, and
        large_sink(sha_bytes, pieces) for objects too large to hold whole (hoardfs.fsd.io.planner.execute)."""
        plan = make_plan(self, [sha_bytes(h) for h in shas_hex])
        if plan.missing:
            raise ObjectNotFound(f"{len(plan.missing)} of the objects are not in the store, e.g. "
                                 f"{plan.missing[0].hex()}")
        return plan, execute(self, plan, sink, large_sink)

    # -- status --------------------------------------------------------------------------------
    def unmendable_repairs(self, repairs: list[tuple[bytes, str, dict]] | None = None) -> list[dict]:
        """The queued repairs that found no copy to make (`Index.note_unmendable`): shard, disk,
        why, how many records no replica holds whole, and the batches and views whose manifest
        is one of them (what `hoard delete --batch` / `hoard view rm` unregisters)."""
        found = [(sid, uuid, doc) for sid, uuid, doc in (self.index.pending_repairs() if repairs is None else repairs)
                 if doc.get("unmendable") and self.index.get_shard(sid) is not None]  # (not one gc retired since)
        if not found:
            return []
        lost = {h for _, _, doc in found for h in doc.get("lost", [])}
        manifests = {info.get("manifest"): f"{kind} {name}" for kind, name, info in named(self.index)
                     if info.get("manifest") in lost}
        return [{"shard": sid.hex(), "disk": self.records[uuid].label if uuid in self.records else uuid,
                 "why": doc["unmendable"], "lost": doc.get("lost_count", len(doc.get("lost", []))),
                 "manifests": sorted({manifests[h] for h in doc.get("lost", []) if h in manifests})}
                for sid, uuid, doc in found]

    def status(self) -> dict:
        disks = []
        seen = self.index.disks_seen()[0]
        backends = {d.label: d.kind for d in self.cfg.disks}
        for uuid, rec in self.records.items():
            d = self.disks.get(uuid)
            fresh = self._disk_record(uuid) if d else rec
            entry = {"label": rec.label, "uuid": uuid, "path": rec.path, "state": rec.state.value,
                     "reason": rec.reason, "used_bytes": fresh.used_bytes, "seen": seen.get(uuid),
                     "backend": backends.get(rec.label, "local")}
            if d is not None and rec.state != DiskState.MISSING:
                try:
                    entry.update(total_bytes=d.total_bytes(), free_bytes=d.free_bytes(fresh.used_bytes))
                except OSError:
                    pass  # a failed disk may be gone altogether
            disks.append(entry)

        shards = list(self.index.iter_shards())  # (read once: 2,500 at 10 M objects, three passes before)
        stuck = [m.hex for m in shards if not m.sealed and not writer_alive(self.lock_path(m.hex))]
        repairs = self.index.pending_repairs()
        return {"objects": self.index.count_objects(), "shard_bytes": sum(m.size for m in shards),
                "disks": disks, "replication": replication_lag(self, shards),
                "open_without_writer": stuck,
                "oldest_unverified_s": oldest_unverified_age(self, shards),
                "pending_repairs": len(repairs),
                "unmendable_repairs": self.unmendable_repairs(repairs),
                "recent_errors": [e for e in self.index.recent_events(50) if e["kind"].endswith("_error")][:10],
                "disk_failures": self.status_disk_failures(),
                "recovery_incomplete": [e for e in self.index.recent_events(200)
                                        if e["kind"] == "recovery_incomplete" and e.get("shard") in stuck][:10]}
