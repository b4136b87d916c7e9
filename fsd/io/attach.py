"""Which configured disks a store uses, and in what state: each `[[disks]]` table matched to
the index's disk record by its identity file, probed (mounted, its identity, writable), the
refusals that keep a store from writing onto the wrong disk or index (a disk with shards the
index does not know, an index of another SSD, an unmounted disk at `hoard init`), and a
disk's last-seen time. The store facade calls these at every open and refresh.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmdb

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import PlantedLink, open_dir
from hoardfs.base.threads import each_at_once
from hoardfs.fsd.core import formats
from hoardfs.fsd.core.disks import (
    IDENTITY,
    IDENTITY_COPY,
    SHARDS_DIR,
    DiskGone,
    DiskRecord,
    DiskState,
    LocalDisk,
    keep_identity_copy,
    probe,
    read_identity,
    shard_files_under,
    write_identity,
)
from hoardfs.fsd.core.layout import FORGOTTEN, SSD_IDENTITY, protect_disk

if TYPE_CHECKING:
    from hoardfs.fsd.store import Store

log = logging.getLogger(__name__)
#: a disk found at its path notes it in the index (Index.saw_disk, shown for a disk that went
#: missing) at most this often: every status refresh opens the store, and one LMDB write per disk
#: per open would be churn
SEEN_EVERY_S = 600.0


def refuse_lost_index(cfg: Settings) -> None:
    """Before a new, empty index is made: refuse when a configured disk already holds shards
    (the index was lost, and an empty one would hide them) or, without an identity, is not
    mounted (it may hold the shards of a lost index)."""
    for dc in cfg.disks:
        if dc.kind == "s3":  # (a bucket holding shards is refused when it is attached: attach_s3)
            continue
        ident = read_identity(dc.path) if dc.path.is_dir() else None
        if not forgotten(dc.path, ident):
            refuse_disk_with_shards(cfg, dc, ident, True)
            if ident is None:
                refuse_unmounted(cfg, dc)


def identity_formats(cfg: Settings) -> dict[str, Any]:
    """The `format` of the SSD's and each configured disk's identity file (None: none or
    unreadable) — one small read each, all at once: cold, each costs its disk a few seeks
    (a stage's cold start on four throttled disks spent 0.4–0.9 s on them one by one)."""
    files = [("ssd", cfg.ssd.root, SSD_IDENTITY)] + [(f"disk {dc.label}", dc.path, IDENTITY) for dc in cfg.disks]
    got = each_at_once(lambda f: read_identity(f[1], f[2]), files, "identity")
    return {what: (ident or {}).get("format") for (what, _, _), ident in zip(files, got, strict=True)}


def formats_found(cfg: Settings, index_format: int | None) -> dict[str, Any]:
    """`formats` of `hoard health --json` and `hoard check --json` (hoardfs.fsd.core.formats.survey)."""
    return formats.survey(index_format, identity_formats(cfg))


def refuse_planted_links(cfg: Settings) -> None:
    """Before the store is opened: the SSD root and every disk's folder reached through no
    link another account owns (`files.open_dir`'s rule) — else that account chooses where the
    index, the shards and the identities are read and written, as root (shards would be
    written through the link). One line naming the link; a folder missing or unreadable is
    judged where it is used."""
    for what, path in (("ssd.root", cfg.ssd.root), *((f"disk {d.label}", d.path) for d in cfg.disks)):
        try:
            os.close(open_dir(path))
        except PlantedLink as e:
            raise HoardError(f"{what} {path}: {e.strerror}", ExitCode.USAGE) from None
        except OSError:
            continue


def refuse_newer_identities(cfg: Settings) -> None:
    """Before a writable open writes anything: an identity a later hoardfs wrote is refused."""
    for name, found in identity_formats(cfg).items():
        if isinstance(found, int):
            formats.refuse_newer(f"the identity of {name}", found, formats.IDENTITY)


def check_index_owner(store: Store, ssd_uuid: str) -> None:
    """The index must be this SSD's (an index copied from another store, or a fresh one on
    an SSD that was not mounted, must not take writes)."""
    owner = store.index.get_meta("ssd_uuid")
    if owner is None:
        store.index.set_meta("ssd_uuid", ssd_uuid)
    elif owner != ssd_uuid:
        raise HoardError(f"the index at {store.cfg.index_dir} belongs to SSD {owner}, but {store.cfg.ssd.root} "
                         f"is SSD {ssd_uuid}: wrong ssd.root/index_dir in the config, or an index copied from "
                         "another store; fix the config, or `hoard index rebuild` for this SSD",
                         ExitCode.UNAVAILABLE)


def probed(cfg: Settings, known: dict[str, DiskRecord]) -> dict[str, tuple[DiskState, str]]:
    """`probe` of each configured local disk the index knows (by label), all at once: cold, a
    probe is a few small reads of its disk (the identity's inode and data) — one disk after
    another they add up (a loader's cold start on four throttled disks spent 0.7 s on them, all
    at once the slowest disk's 0.4; a disk spun down costs its spin-up)."""
    allow_dir = cfg.store.allow_directory_disks
    local = [(dc.label, dc.path, known[dc.label].uuid) for dc in cfg.disks
             if dc.kind != "s3" and dc.label in known]
    got = each_at_once(lambda d: probe(d[1], d[2], allow_dir), local, "probe")
    return {label: state for (label, _, _), state in zip(local, got, strict=True)}


def attach_disks(store: Store, init: bool) -> None:
    known = {r.label: r for r in store.index.get_disks()}
    noted, _ = store.index.disks_seen()
    allow_dir = store.cfg.store.allow_directory_disks
    early = probed(store.cfg, known)
    for dc in store.cfg.disks:
        rec = known.pop(dc.label, None)
        if dc.kind == "s3":
            attach_s3(store, dc, rec, init)
            continue
        if rec is None:
            ident = read_identity(dc.path) if dc.path.is_dir() else None
            if ident is not None and forgotten(dc.path, ident):  # forgotten, still in hoard.toml
                rec = DiskRecord(ident.get("uuid") or "forgotten-" + dc.label, dc.label, str(dc.path),
                                 DiskState.MISSING, "", reason="forgotten by `hoard disks forget`: remove its "
                                 f"[[disks]] table from {store.cfg.source}")
                store.records[rec.uuid] = rec
                continue
            refuse_disk_with_shards(store.cfg, dc, ident, init)
            if ident is None and init:
                refuse_unmounted(store.cfg, dc)
                ident = write_identity(dc.path, dc.label)
            if ident is None or not ident.get("uuid"):
                rec = DiskRecord("unregistered-" + dc.label, dc.label, str(dc.path), DiskState.MISSING,
                                 "", reason=f"no disk identity at {dc.path} (not initialised, or not mounted)")
                store.records[rec.uuid] = rec
                continue
            rec = DiskRecord(ident["uuid"], dc.label, str(dc.path), DiskState.ACTIVE, ident.get("created", ""))
            store.index.put_disk(rec)
        # (a disk the index knows was probed with the others, `probed`: the same record's uuid)
        state, why = early.pop(dc.label) if dc.label in early else probe(dc.path, rec.uuid, allow_dir)
        if state == DiskState.ACTIVE:
            note_seen(store, rec, noted.get(rec.uuid, 0.0))
            if store.writable:
                try:
                    protect_disk(dc.path)
                    keep_identity_copy(dc.path, rec.uuid)
                except OSError as e:  # a read-only or full disk: the copy waits for the next open
                    log.warning("disk %s: cannot write the copy of its identity: %s", dc.label, e)
        if rec.path != str(dc.path):
            rec.path = str(dc.path)
            store.index.put_disk(rec)
        # a user's or rebuild's decision sticks: failed stays failed (even if also unmounted),
        # draining stays draining while the disk is there
        if rec.state == DiskState.FAILED or (rec.state == DiskState.DRAINING and state == DiskState.ACTIVE):
            state, why = rec.state, rec.reason
        rec.state, rec.reason = state, why
        store.records[rec.uuid] = rec
        cap = int(dc.capacity_gb * (1 << 30)) if dc.capacity_gb else None
        store.disks[rec.uuid] = LocalDisk(dc.label, dc.path, rec.uuid, cap, require_mount=not allow_dir)
        store.queue[rec.uuid] = 0
    for rec in known.values():  # registered, but no longer in hoard.toml
        rec.state, rec.reason = DiskState.MISSING, (
            f"registered in the index but not listed in {store.cfg.source}: `hoard disks forget {rec.label}` "
            "once no shard needs it (or put its [[disks]] table back)")
        store.records[rec.uuid] = rec


def attach_s3(store: Store, dc: config_mod.DiskConfig, rec: DiskRecord | None, init: bool) -> None:
    """An S3 disk: its bucket's identity matched to the index's record (a new bucket given one
    by `init`, If-None-Match: never over another disk's), its staging folder given the same
    identity if it has none, its state the engine's answer (`S3Disk.check`: an engine that does
    not answer, refuses the credentials or lost the bucket is `missing`, in its one line)."""
    # deferred: boto3 (hoardfs.fsd.core.s3) is loaded only by a store that has an S3 disk
    from hoardfs.fsd.core.s3 import EngineError, S3Disk

    disk = S3Disk.configured(dc, rec.uuid if rec else "")
    try:
        ident, answered = disk.read_identity(), True
    except EngineError as e:
        ident, answered, why = None, False, e.message
        if rec is None and _no_bucket(disk):  # a new disk's bucket not made yet: not "deleted, its shards lost"
            why = (f"bucket {dc.bucket} does not exist at {dc.endpoint}: create it with the engine's tools (hoard "
                   "does not create buckets), then run `hoard init`; or correct disks.bucket")
    else:
        why = f"bucket {dc.bucket} at {dc.endpoint} has no {IDENTITY} (not initialised: `hoard init`)"
    if rec is None:
        if ident is not None and forgotten_s3(disk):  # forgotten, still in hoard.toml
            rec = DiskRecord(ident["uuid"], dc.label, disk.where, DiskState.MISSING, "", reason="forgotten by "
                             f"`hoard disks forget`: remove its [[disks]] table from {store.cfg.source}")
            store.records[rec.uuid] = rec
            return
        if ident is not None:
            if disk.shard_ids():
                raise HoardError(f"disk {dc.label}: bucket {dc.bucket} at {dc.endpoint} holds shards, but the index "
                                 f"at {store.cfg.index_dir} does not know this disk: if the SSD's index was lost, run "
                                 "`hoard index restore` (or `hoard index rebuild`); if the bucket belongs to another "
                                 "store, remove it from the config", ExitCode.UNAVAILABLE)
        if ident is None and init and answered:  # an empty bucket: this disk's from now on
            dc.path.mkdir(parents=True, exist_ok=True)
            ident = S3Disk.initialise(dc.label, disk.endpoint, disk.bucket, dc.path, disk.capacity_bytes,
                                      client=disk.client).read_identity()
        if ident is None:
            rec = DiskRecord("unregistered-" + dc.label, dc.label, disk.where, DiskState.MISSING, "", reason=why)
            store.records[rec.uuid] = rec
            return
        rec = DiskRecord(ident["uuid"], dc.label, disk.where, DiskState.ACTIVE, ident.get("created", ""))
        store.index.put_disk(rec)
        disk = S3Disk.configured(dc, rec.uuid)
    if store.writable and ident is not None and ident.get("uuid") == rec.uuid and read_identity(dc.path) is None:
        try:  # a staging folder lost or new: it names this disk again
            dc.path.mkdir(parents=True, exist_ok=True)
            write_identity(dc.path, dc.label, uuid=rec.uuid)
        except OSError as e:
            log.warning("disk %s: cannot give its staging folder %s its identity: %s", dc.label, dc.path, e)
    try:
        disk.check()
        state, why = DiskState.ACTIVE, ""
    except DiskGone as e:
        state, why = DiskState.MISSING, (e.message if isinstance(e, EngineError) else str(e.strerror))
    if state == DiskState.ACTIVE:
        note_seen(store, rec, store.index.disks_seen()[0].get(rec.uuid, 0.0))
    if rec.path != disk.where:
        rec.path = disk.where
        store.index.put_disk(rec)
    if rec.state == DiskState.FAILED or (rec.state == DiskState.DRAINING and state == DiskState.ACTIVE):
        state, why = rec.state, rec.reason
    rec.state, rec.reason = state, why
    store.records[rec.uuid] = rec
    store.disks[rec.uuid] = disk
    store.queue[rec.uuid] = 0


def _no_bucket(disk: Any) -> bool:
    """Whether the engine answers that the S3 disk's bucket does not exist."""
    try:
        return not disk.bucket_exists()
    except (OSError, HoardError):  # (EngineError: the engine does not answer, refuses us)
        return False


def forgotten_s3(disk: Any) -> bool:
    """Whether the bucket carries the marker of `hoard disks forget` (as `forgotten`)."""
    try:
        marker = json.loads(disk.beside.read(FORGOTTEN))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and bool(marker.get("uuid"))


def note_seen(store: Store, rec: DiskRecord, noted: float) -> None:
    """The disk is at its path with its identity now: note it (at most every SEEN_EVERY_S
    after the time `noted`)."""
    now = time.time()
    if now - noted < SEEN_EVERY_S or store.index.env.refused is not None:  # (an index a later hoardfs wrote)
        return
    try:
        store.index.saw_disk(rec.uuid, now)
    except lmdb.Error as e:  # a full or read-only SSD: the open goes on, the time stays old
        log.warning("index: cannot note that disk %s was seen: %s", rec.label, e)


def forgotten(root: Path, ident: dict | None) -> bool:
    """Whether the disk at `root` (with identity `ident`) was forgotten by `hoard disks forget`
    (an unreadable marker is no marker, as in the rebuild: it must not let a live disk pass)."""
    if not ident:
        return False
    marker = read_identity(root, FORGOTTEN)
    return bool(marker and marker.get("uuid"))


def refuse_disk_with_shards(cfg: Settings, dc: config_mod.DiskConfig, ident: dict | None, init: bool) -> None:
    """Refuse a disk with shards that the index does not know: the index was lost or replaced
    (an unmounted SSD), or the disk is another store's. Registering it would hide its objects
    from dedupe and from every read. With `init`, a disk with shards but no readable identity
    is refused too: it is no new disk, and a new identity would rename it."""
    known = bool(ident and ident.get("uuid"))
    if not (known or init) or not holds_shards(dc.path):
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


def refuse_unmounted(cfg: Settings, dc: config_mod.DiskConfig) -> None:
    """`hoard init` gives a disk its identity only where one is mounted (checked before an
    index is created: a disk not mounted may hold the shards of a lost index)."""
    if not cfg.store.allow_directory_disks and not os.path.ismount(dc.path):
        raise HoardError(f"disk {dc.label}: {dc.path} is not a mount point; mount the disk first (or set "
                         "store.allow_directory_disks for a test setup)", ExitCode.UNAVAILABLE)


def holds_shards(root: Path) -> bool:
    try:
        return shard_files_under(root)
    except OSError as e:  # a disk that does not list may hold shards: nothing is decided on it
        raise HoardError(f"cannot list {root / SHARDS_DIR}: {e.strerror or e}; nothing was written — check the disk (dmesg, "
                         "`hoard health`), then run this again", ExitCode.UNAVAILABLE) from None
