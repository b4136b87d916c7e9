"""A disk's life-cycle both ways: `activate` (a failed or draining disk back to active) and
`forget` (a retired or replaced disk dropped from the index).

Marking a disk failed (`hoard rebuild`, an EIO) and retiring it (`hoard disks retire`) are
decisions the store keeps (see hoardfs.fsd.io.attach.attach_disks); these two are the ways back out of them,
each guarded so it cannot lose data: activate only a disk that proves to be the registered
one and whose replicas are checked, forget only a disk no shard still needs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.disks import (
    IDENTITY_COPY,
    DiskGone,
    DiskState,
    corrupt_fs,
    fsck_step,
    probe,
    read_identity,
    restore_identity,
)
from hoardfs.fsd.core.layout import FORGOTTEN
from hoardfs.fsd.io.scrub import verify
from hoardfs.fsd.maintenance.rebuild import shards_on

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    from hoardfs.base.config import DiskConfig
    from hoardfs.fsd.core.disks import DiskRecord
    from hoardfs.fsd.store import Store


@dataclass
class ActivateReport:
    adopted: int = 0  # shard files on the disk the index had stopped listing there (a rebuild dropped them)
    checked: int = 0  # replicas verified
    bad: list[str] = field(default_factory=list)  # left for repair (`hoard verify --repair`, the replicator)
    unreadable: list[str] = field(default_factory=list)  # shard files on it that did not read: not listed again


def _record(store: Store, label: str) -> DiskRecord:
    """The registered disk's record with its state as the store found it at open: the index
    keeps "active" for a disk that is not there now (missing is what the probe says, not a
    decision stored), and a missing disk must not be told it is active."""
    rec = next((r for r in store.index.get_disks() if r.label == label), None)
    if rec is None:
        raise HoardError(f"no disk labelled {label} in the index; `hoard disks list` shows them", ExitCode.USAGE)
    return store.records.get(rec.uuid, rec)


def activate(store: Store, label: str) -> ActivateReport:
    """Put a failed or draining disk back into service. Refused unless its identity file names
    the registered uuid (a swapped or re-initialised disk must not be trusted as the old one).
    Shard files on it that the index still knows (a rebuild dropped them from the index but
    not from the disk) are listed again, then every replica on it is verified; bad ones are
    reported and queued for repair, the good ones serve reads at once."""
    rec = _record(store, label)
    if rec.state == DiskState.ACTIVE:
        raise HoardError(f"disk {label} is already active", ExitCode.USAGE)
    dc = next((d for d in store.cfg.disks if d.label == label), None)
    if dc is None or rec.uuid not in store.disks:
        raise HoardError(f"disk {label} is not in {store.cfg.source}; add its [[disks]] table back first",
                         ExitCode.USAGE)
    if dc.kind == "s3":  # the bucket's identity, and its staging folder's, checked by the disk itself
        try:
            store.disks[rec.uuid].check()
        except DiskGone as e:
            raise HoardError(f"disk {label} cannot be used: {e.strerror}", ExitCode.UNAVAILABLE) from None
    else:
        _same_local_disk(store, dc, rec, label)
    rep = ActivateReport()
    with store.maintenance(f"activate {label}"):
        # readable but not writable while it is checked: verify reads it, nothing places shards on it
        store.records[rec.uuid].state = DiskState.DRAINING
        disk = store.disks[rec.uuid]
        for meta in store.index.iter_shards():
            if not meta.sealed or rec.uuid in meta.replicas:
                continue
            try:
                found = disk.state(meta.hex)
            except OSError as e:  # a rotted inode is one file's; anything else: the disk stays failed
                store.disk_error(disk, "activate", e, meta.hex)
                if not corrupt_fs(e):  # (no stat of every other file, each a slow EIO)
                    store.records[rec.uuid].state = DiskState.FAILED
                    raise HoardError(f"disk {label} failed while its shard files were listed ({e.strerror or e}); "
                                     "it stays failed", ExitCode.UNAVAILABLE) from None
                rep.unreadable.append(f"shard {meta.hex}: its file on {label} does not read ({e.strerror or e}): "
                                      f"{fsck_step(label)}")
                continue
            if found == "sealed":
                rep.adopted += store.index.update_shard(meta.shard_id, _adopt(rec.uuid)) is not None
        before = {m.shard_id for m in shards_on(store, rec.uuid)}
        # (its marks log and pointers are behind by nature: brought up below, not judged bad)
        result = verify(store, disk_label=label, logs=False) if before else None
        if result is not None:
            rep.checked, rep.bad = result.replicas, result.bad
        if store.records[rec.uuid].state != DiskState.DRAINING:  # verify saw an I/O error: it failed again
            raise HoardError(f"disk {label} failed while its replicas were checked "
                             f"({store.records[rec.uuid].reason}); it stays failed", ExitCode.UNAVAILABLE)
        store.set_disk_state(label, DiskState.ACTIVE, "")
        # batch and view pointers and marks it missed while out of service (index rebuild takes
        # the newest pointer and replays the marks from the newest snapshot on)
        if label not in store.catch_up_pointers([rec.uuid]):
            raise HoardError(f"disk {label}: its batch and view pointers could not be brought up to the index (see "
                             "the warning above); it is active, and the next writer tries again", ExitCode.UNAVAILABLE)
        if label not in store.snapshot_marks([rec.uuid]):
            raise HoardError(f"disk {label}: its marks log could not be brought up to the index (see the "
                             "warning above); it is active, and the next writer tries again", ExitCode.UNAVAILABLE)
    store.index.record_event("disk_activated", disk=label, detail=f"{rep.adopted} adopted, {len(rep.bad)} bad")
    return rep


def _same_local_disk(store: Store, dc: DiskConfig, rec: DiskRecord, label: str) -> None:
    """Refuse unless the local disk at `dc.path` is the one registered as `rec` and usable (a
    damaged identity put back from its copy first)."""
    ident = read_identity(dc.path) if dc.path.is_dir() else None
    if ident and ident.get("damaged"):
        if not restore_identity(dc.path, rec.uuid):
            raise HoardError(f"disk {label} at {dc.path}: {ident['error']}, and the copy of it ({IDENTITY_COPY}) is "
                             f"missing or names another disk: hoard cannot tell this is the disk registered as "
                             f"{label}; treat it as lost — `hoard disks replace {label} NEW` or `hoard rebuild --disk "
                             f"{label}`", ExitCode.UNAVAILABLE)
        log.warning("disk %s: %s; put back from its copy %s", label, ident["error"], IDENTITY_COPY)
        store.index.record_event("identity_restored", disk=label, detail=ident["error"])
        ident = read_identity(dc.path)
    if not ident or ident.get("uuid") != rec.uuid:
        found = (ident or {}).get("uuid") or (ident or {}).get("error") or "no identity file"
        raise HoardError(f"disk {label} at {dc.path}: its identity says {found}, the index registered {rec.uuid}; "
                         "this is not the same disk — mount the right one there, or add this one as a new disk",
                         ExitCode.UNAVAILABLE)
    now, why = probe(dc.path, rec.uuid, store.cfg.store.allow_directory_disks)
    if now != DiskState.ACTIVE:
        raise HoardError(f"disk {label} at {dc.path} cannot be used: {why}", ExitCode.UNAVAILABLE)


def _adopt(uuid: str):
    def add(meta) -> dict[str, int]:
        if uuid in meta.replicas:
            return {}
        meta.replicas.append(uuid)
        return {uuid: meta.size}
    return add


def forget(store: Store, label: str) -> int:
    """Drop a disk from the index; returns how many of its replicas were released. A shard
    that lists it must still have its replica target on other active disks (the replicator
    has re-homed a retired disk's shards, or a rebuild has replaced a failed one); otherwise
    the disk is refused, naming how many shards still need it."""
    rec = _record(store, label)
    if rec.state == DiskState.ACTIVE and rec.uuid in store.disks:
        raise HoardError(f"disk {label} is active; `hoard disks retire {label}` and `hoard replicate` first",
                         ExitCode.USAGE)
    with store.maintenance(f"forget {label}"):
        listing = [m for m in store.index.iter_shards() if rec.uuid in m.replicas]
        bad = store.known_bad()  # (a replica queued for repair is not a copy to count on)
        short = [m for m in listing
                 if store.copies_of(m, without=rec.uuid, bad=bad) < store.target(m.klass)]
        if short:
            step = ("`hoard replicate` (it copies a draining disk's shards elsewhere)" if rec.state ==
                    DiskState.DRAINING else f"`hoard rebuild --disk {label}`")
            raise HoardError(f"disk {label}: {len(short)} shards still need its replica (too few copies on other "
                             f"active disks); run {step}, then forget it", ExitCode.DATA)
        for meta in listing:
            store.index.update_shard(meta.shard_id, _release(rec.uuid))
        store.index.release_retired(rec.uuid)  # gc's old replicas on it: nothing left to delete
        for sid, uuid, _ in store.index.pending_repairs():
            if uuid == rec.uuid:
                store.index.clear_repair(sid, uuid)
        store.index.drop_disk(rec.uuid)
    store.index.record_event("disk_forgotten", disk=label, detail=f"{len(listing)} replicas released")
    store.records.pop(rec.uuid, None)
    disk = store.disks.pop(rec.uuid, None)
    if disk is not None:
        try:
            disk.beside.write(FORGOTTEN, json.dumps({"uuid": rec.uuid, "label": label, "time": time.time()}).encode(),
                              [])
        except OSError:
            pass  # a dead disk cannot be told; its identity no longer matches any index record anyway
    return len(listing)


def _release(uuid: str):
    def drop(meta) -> dict[str, int]:
        if uuid not in meta.replicas:
            return {}
        meta.replicas.remove(uuid)
        return {}  # the disk's record goes: its used_bytes need no update
    return drop
