"""The store facade: open the disks and the index, put, get, read batches, health.

    store = Store.open(cfg)                        # a writer: recovers orphaned open shards
    results = store.put_many(paths, klass="raw")   # per file: sha256, new/existing, replicas
    data = store.get(sha256_hex)                   # verified bytes, from any good replica
    store.close()
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lmdb

from fsd.core import marks, pointers
from fsd.core import shardfmt as fmt
from fsd.core import storelock
from fsd.base import config as config_mod
from fsd.base.config import Settings
from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import atomic_write, fsync_dir, size_or_zero
from fsd.base.modes import FILE
from fsd.base.paths import file_ext
from fsd.base.units import fmt_bytes
from fsd.core.disks import (IDENTITY, IDENTITY_COPY, DiskGone, DiskRecord, DiskState, LocalDisk, keep_identity_copy,
                        probe, read_identity, write_identity)
from fsd.core.index import MARKS_NS, Index, ShardMeta, has_index, index_error, open_existing
from fsd.core.layout import (BATCHES_DIR, FORGOTTEN, VIEWS_DIR, check_ssd, lock_root, pin_path, protect_disk,
                        protect_ssd)
from fsd.core.placement import Candidate, choose
from fsd.io.planner import execute, make_plan
from fsd.io.put import put_files, put_payloads
from fsd.core.records import GET_MAX, ITER_READ, MAP_PIECE, DataError, ObjectNotFound, PutResult, learn_map, sha_bytes, verify_record
from fsd.io.recovery import recover_orphans
from fsd.io.replicate import replication_lag
from fsd.io.scrub import oldest_unverified_age
from fsd.io.writer import ShardWriter, writer_alive

log = logging.getLogger(__name__)
#: a disk whose marks log refused a snapshot is tried again after this long (not by every open)
MARKS_RETRY_S = 600.0
#: the same for a disk that failed to take the batch and view pointers it missed
POINTERS_RETRY_S = 600.0
#: a disk found at its path notes it in the index (Index.saw_disk, shown for a disk that went
#: missing) at most this often: every status refresh opens the store, and one LMDB write per disk
#: per open would be churn
SEEN_EVERY_S = 600.0


class Store:
    def __init__(self, cfg: Settings, index: Index, writable: bool) -> None:
        self.cfg, self.index, self.writable = cfg, index, writable
        self.shard_bytes = cfg.store.shard_size_mb << 20
        self.disks: dict[str, LocalDisk] = {}
        self.records: dict[str, DiskRecord] = {}
        self.queue: dict[str, int] = {}
        self.measured_bw: dict[str, float] = {}  # MB/s seen by the batch reader, per disk uuid
        self.lock = threading.RLock()
        self.rng = random.Random()
        self._writers: dict[str, ShardWriter] = {}
        self.held = ""  # the lock this store holds shared until close() (see Store.open)
        self.reservations = None  # gc's Reservation while it runs: space set aside for this process

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, cfg: Settings, writable: bool = True, init: bool = False, lock: str | None = None,
             what: str = "") -> Store:
        """Open the index and check every configured disk; `init` gives a new SSD and new disks
        their identity. A writer holds the `store` lock shared until `close()` (gc's swap, an
        index rebuild and rebuild's switch-over wait for it); a long-lived reader such as the
        mount passes `lock="readers"` (only an index rebuild or restore waits for that)."""
        ssd_uuid = check_ssd(cfg, init)
        if writable:
            protect_ssd(cfg)
        hold = lock if lock is not None else (storelock.STORE if writable else "")
        if hold:
            storelock.acquire_shared(lock_root(cfg), what or ("a writer" if writable else "a reader"), hold)
        try:
            if init:
                if not has_index(cfg.index_dir):  # a lost index: refuse before an empty one takes its place
                    for dc in cfg.disks:
                        ident = read_identity(dc.path) if dc.path.is_dir() else None
                        if not _forgotten(dc.path, ident):
                            _refuse_disk_with_shards(cfg, dc, ident, init)
                            if ident is None:
                                _refuse_unmounted(cfg, dc)
                try:
                    index = Index(cfg.index_dir)
                except lmdb.Error as e:
                    raise index_error(cfg.index_dir, e) from None
            else:
                index = open_existing(cfg.index_dir)
            store = cls(cfg, index, writable)
            store.held = hold
            index.mark_log = store.log_marks
            try:
                store._check_index_owner(ssd_uuid)
                store._attach_disks(init)
                if writable:
                    recover_orphans(store)
                    store.catch_up_marks()
                    store._catch_up_pointers_or_warn()
            except BaseException:
                store.index.close()
                raise
        except BaseException:
            if hold:
                storelock.release_shared(lock_root(cfg), hold)
            raise
        return store

    def _check_index_owner(self, ssd_uuid: str) -> None:
        """The index must be this SSD's (an index copied from another store, or a fresh one on
        an SSD that was not mounted, must not take writes)."""
        owner = self.index.get_meta("ssd_uuid")
        if owner is None:
            self.index.set_meta("ssd_uuid", ssd_uuid)
        elif owner != ssd_uuid:
            raise HoardError(f"the index at {self.cfg.index_dir} belongs to SSD {owner}, but {self.cfg.ssd.root} "
                             f"is SSD {ssd_uuid}: wrong ssd.root/index_dir in the config, or an index copied from "
                             "another store; fix the config, or `hoard index rebuild` for this SSD",
                             ExitCode.UNAVAILABLE)

    def _attach_disks(self, init: bool) -> None:
        known = {r.label: r for r in self.index.get_disks()}
        noted, inside = self.index.disks_seen()
        if inside:  # records the version that kept `seen` in them wrote: the previous release cannot read them
            self._move_seen_out()
        allow_dir = self.cfg.store.allow_directory_disks
        for dc in self.cfg.disks:
            rec = known.pop(dc.label, None)
            if rec is None:
                ident = read_identity(dc.path) if dc.path.is_dir() else None
                if _forgotten(dc.path, ident):  # forgotten, still in hoard.toml
                    rec = DiskRecord(ident.get("uuid") or "forgotten-" + dc.label, dc.label, str(dc.path),
                                     DiskState.MISSING, "", reason="forgotten by `hoard disks forget`: remove its "
                                     f"[[disks]] table from {self.cfg.source}")
                    self.records[rec.uuid] = rec
                    continue
                _refuse_disk_with_shards(self.cfg, dc, ident, init)
                if ident is None and init:
                    _refuse_unmounted(self.cfg, dc)
                    ident = write_identity(dc.path, dc.label)
                if ident is None or not ident.get("uuid"):
                    rec = DiskRecord("unregistered-" + dc.label, dc.label, str(dc.path), DiskState.MISSING,
                                     "", reason=f"no disk identity at {dc.path} (not initialised, or not mounted)")
                    self.records[rec.uuid] = rec
                    continue
                rec = DiskRecord(ident["uuid"], dc.label, str(dc.path), DiskState.ACTIVE, ident.get("created", ""))
                self.index.put_disk(rec)
            state, why = probe(dc.path, rec.uuid, allow_dir)
            if state == DiskState.ACTIVE:
                self._note_seen(rec, noted.get(rec.uuid, 0.0))
                if self.writable:
                    try:
                        protect_disk(dc.path)
                        keep_identity_copy(dc.path, rec.uuid)
                    except OSError as e:  # a read-only or full disk: the copy waits for the next open
                        log.warning("disk %s: cannot write the copy of its identity: %s", dc.label, e)
            if rec.path != str(dc.path):
                rec.path = str(dc.path)
                self.index.put_disk(rec)
            # a user's or rebuild's decision sticks: failed stays failed (even if also unmounted),
            # draining stays draining while the disk is there
            if rec.state == DiskState.FAILED or (rec.state == DiskState.DRAINING and state == DiskState.ACTIVE):
                state, why = rec.state, rec.reason
            rec.state, rec.reason = state, why
            self.records[rec.uuid] = rec
            cap = int(dc.capacity_gb * (1 << 30)) if dc.capacity_gb else None
            self.disks[rec.uuid] = LocalDisk(dc.label, dc.path, rec.uuid, cap, require_mount=not allow_dir)
            self.queue[rec.uuid] = 0
        for rec in known.values():  # registered, but no longer in hoard.toml
            rec.state, rec.reason = DiskState.MISSING, (
                f"registered in the index but not listed in {self.cfg.source}: `hoard disks forget {rec.label}` "
                "once no shard needs it (or put its [[disks]] table back)")
            self.records[rec.uuid] = rec

    def _note_seen(self, rec: DiskRecord, noted: float) -> None:
        """The disk is at its path with its identity now: note it (at most every SEEN_EVERY_S
        after the time `noted`)."""
        now = time.time()
        if now - noted < SEEN_EVERY_S:
            return
        try:
            self.index.saw_disk(rec.uuid, now)
        except lmdb.Error as e:  # a full or read-only SSD: the open goes on, the time stays old
            log.warning("index: cannot note that disk %s was seen: %s", rec.label, e)

    def _move_seen_out(self) -> None:
        try:
            self.index.move_seen_out()
        except lmdb.Error as e:  # as _note_seen: the open goes on; the next one tries again
            log.warning("index: cannot move the disks' last-seen times out of their records: %s", e)

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
            fresh._attach_disks(init=False)
        except HoardError as e:
            log.warning("disks not refreshed: %s", e.message)
            return False
        before = {u: (r.state, r.path, r.reason) for u, r in self.records.items()}
        after = {u: (r.state, r.path, r.reason) for u, r in fresh.records.items()}
        if before == after:
            return False
        disks = {u: self.disks[u] if u in self.disks and self.disks[u].root == d.root else d
                 for u, d in fresh.disks.items()}
        with self.lock:
            self.records, self.disks = fresh.records, disks
            for u in disks:
                self.queue.setdefault(u, 0)
            self.cfg = self.cfg.model_copy(update={"disks": cfg.disks})
        self._catch_up_pointers_or_warn()  # a disk back (or added) takes them now, not at the next open
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
            for d in self.disks.values():
                d.close_all()
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

    def gone(self, disk: LocalDisk, err: DiskGone) -> None:
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
        for uuid, rec in self.records.items():
            disk = self.disks.get(uuid)
            if disk is None or not self.usable(uuid, for_write=True):
                out.append(Candidate(uuid, rec.label, 0, usable=False, why_not=rec.state.value + (
                    f" ({rec.reason})" if rec.reason else "")))
                continue
            fresh = self._disk_record(uuid)
            try:
                free = disk.free_bytes(fresh.used_bytes)
            except OSError as e:  # it dropped off since the store was opened: nothing goes there
                out.append(Candidate(uuid, rec.label, 0, usable=False, why_not=f"unreachable ({e.strerror})"))
                continue
            if self.reservations is not None:  # what gc set aside is free for gc itself
                free += self.reservations.remaining(uuid)
            out.append(Candidate(uuid, rec.label, free, self.queue.get(uuid, 0)))
        return out

    def _disk_record(self, uuid: str) -> DiskRecord:
        """The index's current record (used_bytes moves as other processes write)."""
        return self.index.get_disk(uuid) or self.records[uuid]

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

    def place(self, n: int, need: int, exclude: set[str], why_excluded: str = "excluded after an error"
              ) -> list[LocalDisk]:
        """`n` distinct disks with room for `need` bytes; a reservation of this process's on
        them is shrunk by `need` first, so the write about to happen finds the space."""
        disks = [self.disks[c.uuid] for c in choose(self.candidates(), n, need, self.rng, exclude, why_excluded)]
        if self.reservations is not None:
            for d in disks:
                self.reservations.take(d.uuid, need)
        return disks

    def queue_changed(self, disks: list[LocalDisk], delta: int) -> None:
        for d in disks:
            self.queue[d.uuid] = self.queue.get(d.uuid, 0) + delta

    def disk_error(self, disk: LocalDisk, op: str, err: OSError | Exception, shard: str = "") -> None:
        """Record an error; a disk that is gone (unmounted, foreign) stops being used at once."""
        detail = getattr(err, "strerror", None) or str(err)
        log.warning("disk %s: %s error%s: %s", disk.label, op, f" on shard {shard}" if shard else "", detail)
        try:
            self.index.record_event(f"{op}_error", disk=disk.label, shard=shard, detail=detail,
                                    errno=getattr(err, "errno", None))
        except lmdb.Error as e:  # a full SSD must not turn a replica fallback into a failure
            log.error("index: cannot record the %s error of disk %s: %s", op, disk.label, e)
        if isinstance(err, DiskGone):
            self.gone(disk, err)
        elif getattr(err, "errno", None) == errno.EIO:
            # a disk answering EIO is dying: stop using it now, and say so until it is replaced
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

    def writer(self, klass: str) -> ShardWriter:
        if not self.writable:
            raise HoardError("the store was opened read-only", ExitCode.USAGE)
        if klass not in fmt.CLASSES:
            raise HoardError(f"unknown class {klass!r}; allowed: raw, generated", ExitCode.USAGE)
        w = self._writers.get(klass)
        if w is None:
            w = self._writers[klass] = ShardWriter(self, klass)
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
        file there is rejected (see fsd.io.put.put_files)."""
        with self.lock:
            results = put_files(self, self.writer(klass), [Path(p) for p in paths], on_result, stop, root, expect)
        self.index.put_exts({bytes.fromhex(r.sha256): ext for r in results
                             if r.status != "rejected" and (ext := file_ext(r.path))})
        return results

    def put_bytes(self, data: bytes, klass: str = "raw") -> PutResult:
        """Store one in-memory object (used for dumps, manifests, generated data)."""
        return self.put_bytes_many([data], klass)[0]

    def put_bytes_many(self, datas: list[bytes], klass: str = "raw") -> list[PutResult]:
        """Store in-memory objects in one batch (one group commit, one seal)."""
        with self.lock:
            return put_payloads(self, self.writer(klass), [("<bytes>", d) for d in datas])

    # -- the read path ------------------------------------------------------------------------
    def register_batch(self, batch_id: str, info: dict | None) -> None:
        """Name an ingested batch's manifest object in the index and, so that `hoard index
        rebuild` finds it again, in `batches/<batch_id>.json` on every disk in service; None
        unregisters it (type-B deletion)."""
        self._pointing(lambda write: self.index.name_pointer(BATCHES_DIR, batch_id, info, write))

    def register_view(self, name: str, info: dict | None) -> None:
        """The same for a view (`views/<name>.json`); None removes it."""
        self._pointing(lambda write: self.index.name_pointer(VIEWS_DIR, name, info, write))

    def keep_pointer(self, key: str, doc: dict) -> None:
        """A pointer at the disks' root (fsd.core.pointers.ROOT_FILES: the newest database dump) on
        every disk in service, kept in the index as a batch's is: a disk added or back later
        gets it, and an index rebuild takes the newest."""
        self._pointing(lambda write: self.index.keep_pointer(key, doc, write))

    def _pointing(self, name: Callable[[Callable[[str, bytes], list[str]]], bytes]) -> None:
        """`name(write)` with write_pointer as `write`; the disks' errors are reported after
        the index transaction (reporting one writes to the index)."""
        failed: list[tuple[LocalDisk, OSError]] = []
        try:
            name(lambda key, body: self.write_pointer(key, body, failed=failed))
        finally:
            for disk, e in failed:
                self.disk_error(disk, "write", e)

    def write_pointer(self, rel: str, body: bytes, failed: list[tuple[LocalDisk, OSError]] | None = None
                      ) -> list[str]:
        """Write (tmp → fsync → rename) a pointer's bytes (fsd/core/pointers.py: stamped by
        Index.name_pointer, so a disk that missed later writes holds an older one and rebuild
        takes the newest; a removal record for a removed name) at `rel` under every disk in
        service (active or draining) — what `hoard index rebuild` or a person
        needs with only the HDDs left. Returns the uuids of the disks that took it; raises when
        none did (the index then names nothing new). `failed`: a disk's error goes there, to
        be reported by the caller after its index transaction, instead of at once."""
        took, errors = [], []
        for uuid, disk in list(self.disks.items()):
            if self.usable(uuid):
                try:
                    with _on_disk(self, disk) as wrote:
                        _put_pointer(disk, rel, body, wrote)
                    took.append(uuid)
                except OSError as e:  # a dying disk (EIO: marked failed) must not stop the others
                    if failed is None:
                        self.disk_error(disk, "write", e)
                    else:
                        failed.append((disk, e))
                    errors.append(_disk_error_text(disk, e))
        if not took:
            raise HoardError(f"no disk took {rel} ({'; '.join(errors) or 'no disk in service'}); nothing was "
                             "changed — `hoard health` names the disks' problems", ExitCode.UNAVAILABLE)
        return took

    def pointers_behind(self, state: tuple[int | None, dict[str, int], dict[str, float]] | None = None) -> list[str]:
        """Disks in service that miss pointers the index holds (the index knows which disk took
        each: Index.name_pointer) — added later, replaced onto, back from failed or unplugged,
        a failed write — and that did not fail to take them in the last POINTERS_RETRY_S."""
        last, at, failed = state or self.index.pointers_state()
        now = time.time()
        return [u for u in self.disks if self.usable(u) and (last is None or at.get(u, -1) < last)
                and now - failed.get(u, 0.0) > POINTERS_RETRY_S]

    def catch_up_pointers(self, uuids: Iterable[str] | None = None) -> list[str]:
        """Every writable open: the disks that are behind (or `uuids`, whatever they hold) get
        the index's batch and view pointers. An index from before the `pointers` table gets it
        filled first (Index.align_pointers). Returns the labels brought up."""
        if not self.writable or self.index.pointers is None:
            return []
        state = self.index.pointers_state()
        if state[0] is None:
            self.index.align_pointers()
            state = self.index.pointers_state()
        chosen = self.pointers_behind(state) if uuids is None else list(uuids)
        done = [self.disks[u].label for u in chosen if self.usable(u) and self._bring_pointers(u)]
        if done:
            log.info("batch and view pointers of %s brought up to the index", ", ".join(done))
        return done

    def _catch_up_pointers_or_warn(self) -> None:
        """catch_up_pointers, where it must not stop the caller (an open, a refresh): a full
        SSD leaves the disks behind, and the next writer tries again."""
        try:
            self.catch_up_pointers()
        except (HoardError, lmdb.Error) as e:
            log.warning("batch and view pointers not brought up to the index: %s", getattr(e, "message", e))

    def _bring_pointers(self, uuid: str) -> bool:
        """Write to the disk each pointer it does not hold as the index does (most of them
        outside any transaction: a new disk takes thousands); then, inside one, those named
        meanwhile and removal records for the names on the disk the index has no pointer for
        (Index.pointers_brought). False when the disk did not take them all."""
        disk = self.disks[uuid]
        since, bodies = self.index.pointer_bodies()
        stale: dict[str, int] = {}
        errors: list[OSError] = []

        def put(items: Iterable[tuple[str, bytes]]) -> bool:
            try:
                with _on_disk(self, disk) as wrote:
                    for key, body in items:
                        if _pointer_on(disk, key) != body:
                            _put_pointer(disk, key, body, wrote)
                return True
            except OSError as e:  # reported after the index transaction (it writes to the index)
                errors.append(e)
                return False

        ok = put(bodies.items())
        if ok:
            try:
                for folder in pointers.KINDS:
                    for path in (disk.root / folder).glob("*.json"):
                        key = pointers.rel(folder, path.stem)
                        if key not in bodies and not pointers.planted(path):
                            stale[key] = _pointer_stamp(disk, key)
            except OSError as e:
                log.warning("disk %s: cannot list its pointers: %s", disk.label, e)
                ok = False
        try:
            return self.index.pointers_brought(uuid, since, stale if ok else {},
                                               lambda newer: ok and put(newer.items()))
        finally:
            for e in errors:
                self.disk_error(disk, "write", e)

    def log_marks(self, op: str, shas: list[bytes], stamp: int) -> list[str]:
        """Append marks-log records (`op` is one of MARK_OPS) to `marks/marks.log` on every
        writable disk, fsynced — what `hoard index rebuild` replays (fsd/core/marks.py); returns the
        uuids of the disks that took them (Index.log_in notes them). Called by the index
        inside the transaction that applies them: raising here (no disk took the records)
        leaves the index unchanged too. Each append starts with a newline, so the torn rest of
        an append that failed half-way is a line of its own, never glued to the next record."""
        body = b"\n" + marks.records(stamp, op, shas)
        took, errors = [], []
        for uuid, disk in self.disks.items():
            if not self.usable(uuid, for_write=True):
                continue
            path = marks.log_path(disk.root)
            try:
                with _on_disk(self, disk) as wrote:
                    _marks_log(disk)
                    # O_APPEND: records of concurrent processes interleave whole (one write each)
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, FILE)
                    try:
                        marks.regular(fd, path)
                        view = memoryview(body)
                        while view:
                            view = view[os.write(fd, view):]
                        os.fsync(fd)
                        wrote.append(os.fstat(fd).st_dev)
                    finally:
                        os.close(fd)
                took.append(uuid)
            except OSError as e:
                log.warning("disk %s: cannot append to %s: %s", disk.label, path, e)
                errors.append(_disk_error_text(disk, e))
        if not took:
            raise HoardError(f"no disk took the marks (roots, hides, deletions: {'; '.join(errors) or 'no writable disk'}); "
                             "nothing was changed — `hoard health` names the disks' problems", ExitCode.UNAVAILABLE)
        return took

    def marks_behind(self, state: tuple[int, dict[str, int], dict[str, float]] | None = None) -> list[str]:
        """Writable disks whose marks log misses records the index holds (the index knows which
        disk took each record: Index.log_in) — added later, back from failed or unplugged, a
        failed or short append — and that did not refuse a snapshot in the last
        MARKS_RETRY_S (a disk gone read-only is not rewritten by every open)."""
        last, at, failed = state or self.index.marks_state()
        now = time.time()
        return [u for u in self.disks if self.usable(u, for_write=True)
                and (u not in at or at[u] < last) and now - failed.get(u, 0.0) > MARKS_RETRY_S]

    def catch_up_marks(self) -> list[str]:
        """Every writable open: no stamp is handed out again that a disk's log already holds
        (a writer that appended and died before its commit), and the disks that are behind
        get a snapshot of the index's marks."""
        tails: dict[str, int] = {}
        legacy: list[str] = []  # logs written before lines had checks: rewritten (fsd/core/marks.py)
        for u, d in self.disks.items():
            if self.usable(u):
                try:
                    stamp, old_format = marks.log_ends(d.root)
                    tails[u] = stamp or 0
                    if old_format and self.usable(u, for_write=True):
                        legacy.append(u)
                except OSError as e:  # a dying disk, a hostile file: health's and check's business
                    log.warning("disk %s: cannot read the end of its marks log: %s", d.label, e)
        if tails and max(tails.values()) > int(self.index.get_meta(MARKS_NS.decode()) or 0):
            self.index.raise_stamp(max(tails.values()))
        state = self.index.marks_state()
        at = state[1]
        # a log ending after what the index knows it took: a record whose transaction died
        # (or one committing right now: checked again inside the snapshot's transaction)
        ahead = [u for u, t in tails.items() if u in at and t > at[u] and self.usable(u, for_write=True)]
        behind = self.marks_behind(state)
        # (a legacy log that refused its rewrite waits MARKS_RETRY_S like a disk behind: each try
        # reads every disk's whole log and takes a write transaction)
        behind += [u for u in legacy if u not in behind and time.time() - state[2].get(u, 0.0) > MARKS_RETRY_S]
        if not (behind or ahead):
            return []
        done = self.snapshot_marks(behind + ahead, recheck=set(ahead) - set(behind))
        if done:
            log.info("marks log of %s brought up to the index", ", ".join(done))
        return done

    def compact_marks(self) -> list[str]:
        """Snapshot the writable disks whose marks log has grown past twice what a snapshot
        would take (plus 1 MiB): the history is replaced by the state."""
        n = sum(self.index.count(getattr(self.index, t)) for t in marks.TABLES)
        limit = 2 * (n + 1) * marks.RECORD_BYTES + (1 << 20)
        big = [u for u, d in self.disks.items()
               if self.usable(u, for_write=True) and size_or_zero(marks.log_path(d.root)) > limit]
        return self.snapshot_marks(big) if big else []

    def snapshot_marks(self, uuids: Iterable[str] | None = None, recheck: set[str] | None = None) -> list[str]:
        """Replace the marks log of disks `uuids` (default: every disk in service, draining
        included) by a snapshot of the index's marks (fsd/core/marks.py), inside an index write
        transaction — plus the marks the logs hold for objects the index does not know. Returns
        the labels written; a disk that cannot take it is logged and skipped (still behind: a
        writer tries again after MARKS_RETRY_S)."""
        # every disk in service: a draining one's log is still read by an index rebuild
        chosen = [u for u in (self.disks if uuids is None else uuids) if self.usable(u)]
        done: list[str] = []

        def write(stamp: int, tables: dict[str, list[bytes]], at: dict[str, int]) -> tuple[list[str], list[str]]:
            body = marks.snapshot(stamp, tables)
            written, failed = [], []
            for uuid in chosen:
                disk = self.disks[uuid]
                if uuid in (recheck or ()):  # "ahead" — still, now that no transaction is in flight?
                    try:
                        if (marks.last_stamp(disk.root) or 0) <= at.get(uuid, -1):
                            continue
                    except OSError:
                        continue
                path = marks.log_path(disk.root)
                try:
                    with _on_disk(self, disk) as wrote:
                        atomic_write(_marks_log(disk), body, prepare=lambda fd, _: wrote.append(os.fstat(fd).st_dev))
                    done.append(disk.label)
                    written.append(uuid)
                except DiskGone as e:  # not a refusal: tried again by the first writer that finds it back
                    log.warning("disk %s: cannot rewrite %s from the index: %s", disk.label, path, e)
                except OSError as e:
                    log.warning("disk %s: cannot rewrite %s from the index: %s", disk.label, path, e)
                    failed.append(uuid)
            return written, failed

        if chosen:
            self.index.snapshot_marks(write, self._logged_marks())
        return done

    def _logged_marks(self) -> dict[str, list[bytes]]:
        """What the readable disks' logs replay to (the index keeps, of these, the marks of
        objects it does not know: Index.snapshot_marks)."""
        logs = []
        for u, d in self.disks.items():
            if self.usable(u):
                try:
                    logs.append(marks.read_log(marks.log_path(d.root).parent, label=d.label))
                except OSError:
                    continue
        return marks.replay(marks.agree(logs)[0])

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

    def replica_order(self, meta: ShardMeta, avoid: set[str] = frozenset()) -> list[LocalDisk]:
        usable = [u for u in meta.replicas if self.usable(u) and u not in avoid]
        usable.sort(key=lambda u: (self.records[u].state != DiskState.ACTIVE, self.queue.get(u, 0)))
        return [self.disks[u] for u in usable]

    def get(self, sha256_hex: str, avoid: set[str] = frozenset()) -> bytes:
        """The object's bytes, verified (xxh3-128 and sha256), from the first good replica."""
        sha = sha_bytes(sha256_hex)
        loc = self.index.lookup(sha)
        if loc is not None and loc.length > GET_MAX:
            raise HoardError(f"object {sha256_hex} is {fmt_bytes(loc.length)}, too large to read into memory: "
                             f"`hoard get {sha256_hex} -o FILE` streams it (Store.iter_object)", ExitCode.USAGE)
        return self.from_replicas(sha, lambda disk, meta, loc: self._read_record(
            disk, meta.hex, loc.offset, loc.length, sha), avoid)

    # -- large objects: verified pieces, bounded memory ----------------------------------------
    def iter_object(self, sha: bytes, avoid: set[str] = frozenset(), first: str = "", exact: bool = False):
        """The object's bytes in verified pieces (each MAP_PIECE checked against the object's
        chunk map before it is yielded; a piece that fails on one replica is read from the
        next), whatever its size, in bounded memory. An object without a chunk map (stored
        from memory, or its map lost with the index) is first read once in full — its
        xxh3-128 and sha256 checked, streaming — to learn the map. Pieces come from the disk
        `first` while it holds a good replica (the batch planner's choice); `exact` reads
        them with the disk's read-ahead off (the planner, which reads ahead itself)."""
        loc = self.index.lookup(sha)
        if loc is None:
            raise ObjectNotFound(f"object {sha.hex()} is not in the store (check the digest)")
        digests = self.chunk_map(sha, loc.length)
        for start in range(0, loc.length, ITER_READ):
            n = min(ITER_READ, loc.length - start)
            piece0 = start // MAP_PIECE  # (not `first`: that is the disk the caller wants read)

            def read(disk, meta, loc, start=start, n=n, piece0=piece0) -> bytes:
                buf = (disk.read_exact if exact else disk.read_at)(meta.hex, loc.offset + start, n)
                if len(buf) != n:
                    raise fmt.TruncatedShard(f"shard {meta.hex} on {disk.label} ends inside object {sha.hex()[:12]}…")
                view = memoryview(buf)
                for i in range(0, n, MAP_PIECE):
                    k = piece0 + i // MAP_PIECE
                    if fmt.xxh3(view[i:i + MAP_PIECE]) != digests[k * 16:(k + 1) * 16]:
                        raise fmt.PayloadChecksumMismatch(f"piece {k} of {sha.hex()[:12]}… does not match its "
                                                          f"chunk map (shard {meta.hex} on {disk.label})")
                return buf

            yield self.from_replicas(sha, read, avoid, first=first)

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

    def from_replicas(self, sha: bytes, read, avoid: set[str] = frozenset(), on_bad=None, first: str = ""):
        """`read(disk, meta, loc)` on the object's usable replicas in order (the disk `first`
        first, when it holds one: the mount's choice by queue depth) until one succeeds.

        A replica that fails is reported (an EIO marks its disk failed) and queued for repair.
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
            order = self.replica_order(meta, avoid) if meta else []
            order.sort(key=lambda d: d.uuid != first)  # stable: the rest keep their order
            for disk in order:
                try:
                    return read(disk, meta, loc)
                except FileNotFoundError as e:
                    tried.append(f"{disk.label} (shard file missing)")
                    missing.append((disk, e))
                except (OSError, fmt.ShardFormatError) as e:
                    tried.append(f"{disk.label} ({getattr(e, 'strerror', None) or e})")
                    report(disk, meta, e)
            if not missing:
                break
        for disk, e in missing:
            report(disk, meta, e)
        raise DataError(f"object {sha.hex()}: no good replica of shard {loc.shard_id.hex()}; tried "
                        + (", ".join(tried) or "none usable") + "; see `hoard health`")

    def bad_replica(self, disk: LocalDisk, meta: ShardMeta, op: str, err: Exception) -> None:
        """A replica gave an error or wrong bytes: report it and queue it for repair (the
        replicator re-copies it from a good replica)."""
        self.disk_error(disk, op, err, meta.hex)
        try:
            self.index.queue_repair(meta.shard_id, disk.uuid, getattr(err, "strerror", None) or str(err))
        except lmdb.Error as e:
            log.error("index: cannot queue the repair of shard %s on %s: %s", meta.hex, disk.label, e)

    def _read_record(self, disk: LocalDisk, shard_hex: str, offset: int, length: int, sha: bytes) -> bytes:
        buf = disk.read_at(shard_hex, offset - fmt.RECORD_HEADER_SIZE, fmt.RECORD_HEADER_SIZE + length)
        return verify_record(memoryview(buf), 0, sha, length, f" (shard {shard_hex} on {disk.label})")

    def read_batch(self, shas_hex: list[str], sink, large_sink=None) -> tuple:
        """Read many objects with the batch planner; sink(sha_bytes, payload) per object, and
        large_sink(sha_bytes, pieces) for objects too large to hold whole (fsd.io.planner.execute)."""
        plan = make_plan(self, [sha_bytes(h) for h in shas_hex])
        if plan.missing:
            raise ObjectNotFound(f"{len(plan.missing)} of the objects are not in the store, e.g. "
                                 f"{plan.missing[0].hex()}")
        return plan, execute(self, plan, sink, large_sink)

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict:
        disks = []
        seen = self.index.disks_seen()[0]
        for uuid, rec in self.records.items():
            d = self.disks.get(uuid)
            fresh = self._disk_record(uuid) if d else rec
            entry = {"label": rec.label, "uuid": uuid, "path": rec.path, "state": rec.state.value,
                     "reason": rec.reason, "used_bytes": fresh.used_bytes, "seen": seen.get(uuid)}
            if d is not None and rec.state != DiskState.MISSING:
                try:
                    entry.update(total_bytes=d.total_bytes(), free_bytes=d.free_bytes(fresh.used_bytes))
                except OSError:
                    pass  # a failed disk may be gone altogether
            disks.append(entry)

        shards = list(self.index.iter_shards())
        stuck = [m.hex for m in shards if not m.sealed and not writer_alive(self.lock_path(m.hex))]
        return {"objects": self.index.count_objects(), "shard_bytes": sum(m.size for m in shards),
                "disks": disks, "replication": replication_lag(self),
                "open_without_writer": stuck,
                "oldest_unverified_s": oldest_unverified_age(self),
                "pending_repairs": len(self.index.pending_repairs()),
                "recent_errors": [e for e in self.index.recent_events(50) if e["kind"].endswith("_error")][:10],
                "recovery_incomplete": [e for e in self.index.recent_events(200)
                                        if e["kind"] == "recovery_incomplete" and e.get("shard") in stuck][:10]}



def _disk_error_text(disk: LocalDisk, e: OSError) -> str:
    """"LABEL: what went wrong", without the label twice (a DiskGone names its disk itself)."""
    text = e.strerror or str(e)
    return text if text.startswith(f"disk {disk.label}") else f"{disk.label}: {text}"


@contextlib.contextmanager
def _on_disk(store: Store, disk: LocalDisk) -> Iterator[list[int]]:
    """Small files (marks logs, pointers) written by path inside: the disk is checked to be
    there before (a vanished mount leaves an empty directory on the root filesystem that takes
    any write) and after (one that vanished during the write took it beside the disk, not on
    it: chaos seed 1025 — the index counted the roots as on the disk's log, and they were not).
    The body adds the device of each file it wrote (fstat) to the list it is given: a disk
    that dropped off before the file was opened and was mounted again before the check after
    passes both checks, and only the device tells that the file is not on it. Any of these
    raises DiskGone, and this process stops using the disk."""
    wrote: list[int] = []
    try:
        disk.check()
        yield wrote
        disk.check()
        if any(dev != os.stat(disk.root).st_dev for dev in wrote):
            raise DiskGone(f"disk {disk.label}: a file was written beside it, not on it (the disk dropped off "
                           "and came back during the write)")
    except DiskGone as e:
        store.gone(disk, e)
        raise


def _put_pointer(disk: LocalDisk, key: str, body: bytes, wrote: list[int]) -> None:
    """A pointer's bytes at `key` under the disk's root (inside `_on_disk`)."""
    path = disk.root / key
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, body, prepare=lambda fd, _: wrote.append(os.fstat(fd).st_dev))


def _pointer_on(disk: LocalDisk, key: str) -> bytes | None:
    """The bytes of the disk's pointer at `key`; None when there is none that reads."""
    try:
        return pointers.read(disk.root / key)
    except (OSError, ValueError):
        return None


def _pointer_stamp(disk: LocalDisk, key: str) -> int:
    """The stamp of the disk's pointer at `key` (0 when it does not read as one)."""
    try:
        return pointers.decode(pointers.read(disk.root / key)).get(pointers.STAMP, 0)
    except (OSError, ValueError):
        return 0


def _marks_log(disk: LocalDisk) -> Path:
    """The disk's marks log path, its directory made (and made durable) if it is new."""
    path = marks.log_path(disk.root)
    if not path.parent.is_dir():
        path.parent.mkdir()
        fsync_dir(disk.root)
    return path


def _forgotten(root: Path, ident: dict | None) -> bool:
    """Whether the disk at `root` (with identity `ident`) was forgotten by `hoard disks forget`
    (an unreadable marker is no marker, as in the rebuild: it must not let a live disk pass)."""
    if not ident:
        return False
    marker = read_identity(root, FORGOTTEN)
    return bool(marker and marker.get("uuid"))


def _refuse_disk_with_shards(cfg: Settings, dc: config_mod.DiskConfig, ident: dict | None, init: bool) -> None:
    """Refuse a disk with shards that the index does not know: the index was lost or replaced
    (an unmounted SSD), or the disk is another store's. Registering it would hide its objects
    from dedupe and from every read. With `init`, a disk with shards but no readable identity
    is refused too: it is no new disk, and a new identity would rename it."""
    known = bool(ident and ident.get("uuid"))
    if not (known or init) or not _holds_shards(dc.path):
        return
    if known:
        raise HoardError(f"disk {dc.label} at {dc.path} holds shards, but the index at {cfg.index_dir} does not "
                         "know this disk: if the SSD's index was lost, run `hoard index restore` (or `hoard index "
                         "rebuild`); if the disk belongs to another store, remove it from the config",
                         ExitCode.UNAVAILABLE)
    why = ident["error"] if ident else f"it has no {IDENTITY}"
    raise HoardError(f"disk {dc.label} at {dc.path} holds shards, but {why}: it is no new disk, and nothing was "
                     f"written. Put its identity back (from {dc.path / IDENTITY_COPY} if that is intact), then, if "
                     "the SSD's index was lost, run `hoard index restore` (or `hoard index rebuild`); if the disk "
                     "belongs to another store, remove it from the config", ExitCode.UNAVAILABLE)


def _refuse_unmounted(cfg: Settings, dc: config_mod.DiskConfig) -> None:
    """`hoard init` gives a disk its identity only where one is mounted (checked before an
    index is created: a disk not mounted may hold the shards of a lost index)."""
    if not cfg.store.allow_directory_disks and not os.path.ismount(dc.path):
        raise HoardError(f"disk {dc.label}: {dc.path} is not a mount point; mount the disk first (or set "
                         "store.allow_directory_disks for a test setup)", ExitCode.UNAVAILABLE)


def _holds_shards(root: Path) -> bool:
    shards = root / "shards"
    try:
        return shards.is_dir() and any(f.suffix in (".shard", ".open") for d in shards.iterdir() if d.is_dir()
                                       for f in d.iterdir())
    except OSError as e:  # a disk that does not list may hold shards: nothing is decided on it
        raise HoardError(f"cannot list {shards}: {e.strerror or e}; nothing was written — check the disk (dmesg, "
                         "`hoard health`), then run this again", ExitCode.UNAVAILABLE) from None


