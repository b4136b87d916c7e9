"""Sealed shards on an S3-compatible engine (SeaweedFS, Ceph RGW): the shard backend contract
(fsd/core/backend.py) over one bucket.

    <bucket>/.hoard-disk.json           identity, the same document as a local disk's; written once
    <bucket>/shards/<xx>/<shard hex>    a sealed shard, one object; metadata `hoard-sha256`: the
                                        sha256 of the whole object (hex)
    <bucket>/orphans/<hex>.<time>       a shard set aside (deleted by `hoard verify --orphans --repair`
                                        after the grace period, as a local disk's)
    <bucket>/transfers/<run>/<sha256>   a --remote action run's child on its way to the store's
                                        server (metadata `hoard-sha256`), and `transfers/<run>/
                                        parsed.json`, what its host parsed; deleted once collected
    <bucket>/loaders/<name>@<N>.json    a dataset version's published locator (hoardfs.datasets.publish): its
                                        manifest's and samples' places, read by a training loader on
                                        another host; replaced by each `hoard dataset publish`
    <bucket>/claims/<shard hex>         while a seal runs: `<size> <sha256 hex> <host> <pid> <pid start>
                                        <nonce>`: the bytes it uploads, and which seal it is (<host>:
                                        `<name>/<machine id>/<boot id>/<pid namespace>`)

`<xx>` is the last two hex digits of the shard id, as on a local disk. An open shard is never
in the bucket: it is appended on a local staging folder (a `LocalDisk` of its own, whose
identity names this disk's uuid) and uploaded at seal as one object — a multipart upload of
`part_size` pieces (`_Appended` hashed the shard and each part as they were appended; the
upload checks each part against its own xxh3-128 as it goes and refuses a staging file that
changed) completed with `If-None-Match: *`, so a
second upload of the same shard
(a seal retried after a crash) never replaces the first: the one there is kept if its
`hoard-sha256` and size are this shard's, and refused loudly if not. Not every engine honours
that header on a multipart completion (Ceph RGW 16.2 replaces the object: docs/scale-out.md),
so a seal claims the shard — a small object under claims/ naming its size and sha256,
put with `If-None-Match: *`, which every engine honours on a plain PUT — and only then looks
for the object, and completes its upload only once both are done: a second seal with other
bytes is refused at the claim, before anything of its upload is completed, on any engine (the
parts it sent meanwhile are aborted: the claim and the look run beside the upload's parts, not
before them; a part that fails meanwhile is reported only when they passed); one with the
same bytes goes on (its upload puts the same bytes); one that finds the object there (a seal
retried after its upload) sends no more parts and judges it. The claim is deleted once the
object is checked. One left by a seal that failed is passed by a retry with the same bytes, and replaced by a seal with other bytes when the seal
that wrote it is gone — its process ended on this host (this boot and pid namespace: a pid
means nothing on another machine of the same name, or in a container sharing the host's name),
it was this process's own (recovery cuts an open shard back to what the index acknowledges, so
the retry's bytes may differ), or it ran in an earlier boot of this machine (another boot id,
and the claim's object made before this boot began: one made since came from another kernel
with this machine's name and id — a cloned VM); a claim from another host is taken as live
until `hoard verify --orphans` removes it after its grace, as a stale tmp file. The sha256 is
ours: a multipart ETag is not the content's MD5. Only once the engine acknowledged the object and a
HEAD shows it whole is the open file removed (renamed aside, unlinked by a thread of its own:
`_drop_staged`); until then the shard is `open` and its reads
come from the staging folder (a GET finds no object first), so nothing is reported sealed that
the engine does not hold.

Reads are ranged GETs (to presigned URLs, with urllib3: `_get`), never a listing: the index
says where a shard lives. `shard_ids` lists
the bucket (for check and rebuild only). `verify` streams the object once (bounded memory:
`_Stream`), checking every record and the whole object's sha256 against `hoard-sha256`.
`free_bytes` is the space granted to hoard on the engine (`capacity_gb`) less what hoard
holds there: S3 does not report an engine's free space.

An engine that does not answer, refuses the credentials or has lost the bucket raises
`EngineError` (a `DiskGone`: the store stops using the disk; and a HoardError: one line with
the next step). Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, a credentials file): never from hoard.toml.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import urllib3
import xxhash
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ReadTimeoutError

from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import fsync_dir
from hoardfs.base.proc import alive_since, earlier_boot, pid_start, process_space
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import (
    IDENTITY,
    STREAM_PIECE,
    DiskGone,
    LocalDisk,
    new_identity,
    verify_shard,
    write_identity,
)
from hoardfs.fsd.core.s3files import CLAIMS, S3Beside

if TYPE_CHECKING:
    from hoardfs.base.config import DiskConfig

#: key prefixes in the bucket (module docstring)
SHARD_PREFIX, ORPHAN_PREFIX, CLAIM_PREFIX = "shards/", "orphans/", CLAIMS
#: a --remote action run's outputs on their way from its host to the store's server
#: (hoardfs.jobs.actions.remote): objects of their own, never read as shards nor listed with them
TRANSFER_PREFIX = "transfers/"
#: dataset versions' published locators (hoardfs.datasets.publish): plain objects, replaced whole by
#: each publish, never read as shards nor listed with them
PUBLISHED_PREFIX = "loaders/"
#: the object metadata key holding the sha256 (hex) of the whole object; S3 sends it as the
#: `x-amz-meta-hoard-sha256` header
SHA_KEY = "hoard-sha256"
#: the piece of a multipart upload: fixed, so a retried upload cuts the same parts (S3 wants
#: ≥ 5 MiB for every part but the last; 64 MiB measured best on SeaweedFS and Ceph RGW)
PART_SIZE, MIN_PART = 64 << 20, 5 << 20
#: a verify's stream keeps this much behind its position: a record's sha256 pass re-reads a
#: payload of up to this size from memory (a longer one with ranged GETs)
WINDOW = STREAM_PIECE
#: ranged GETs one reader keeps in flight (the batch planner's ranges, a large object's pieces):
#: an engine serves requests side by side, and across a network each request's round trip is
#: hidden behind the others'; one at a time, the reader waits out every request alone.
#: bench/s3_backend.py measures this setting against one stream in the same run
#: (docs/benchmarks.md, "The S3 backend against SeaweedFS")
READ_STREAMS = 4
#: parts of one upload in flight (at most this many parts in memory), for the same reason;
#: bench/s3_backend.py seals with this and with one part at a time in the same run
UPLOAD_STREAMS = 2
#: a claim (claims/<shard>) of another boot of this machine is that boot's — its seal gone — only
#: if its object was made this long (ns) before this boot began: the object's time is the
#: engine's clock, the boot's this host's, and a clock behind by less than this never makes a
#: live claim of another kernel look older than this boot. A claim a crash left within it is
#: taken as live: the safe side (`hoard verify --orphans` removes it after its grace)
CLAIM_CLOCK_SLACK = 60 * 10**9
#: a shard's ranged GETs go to a URL presigned for its key (`S3Disk._get`), valid this long (s)
#: and signed again once less than a quarter of it is left; at most SIGNED_KEYS are kept
SIGNED_S, SIGNED_KEYS = 3600, 4096
#: client settings: a few retries with backoff (a 5xx, a dropped connection), then an error;
#: the read timeout is the disk's `timeout_s` (hoardfs.base.config.DiskConfig)
ATTEMPTS, CONNECT_TIMEOUT, READ_TIMEOUT = 3, 5, 60.0


#: this host, as a seal's claim names it (`S3Disk._claim`; hoardfs.base.proc.process_space)
_HOST = process_space()
#: the nonces of this process's seals in flight, on any S3Disk object (`S3Disk._claim`)
_SEALING: set[str] = set()
log = logging.getLogger(__name__)
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
_REFUSED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
            "ExpiredToken", "InvalidSecurity")


def _me() -> tuple[int, int]:
    """(pid, its start time) of this process — asked again after a fork (an RQ work horse)."""
    pid = os.getpid()
    if _ME.get(pid) is None:
        _ME.clear()
        _ME[pid] = pid_start(pid) or 0
    return pid, _ME[pid]


_ME: dict[int, int] = {}


class EngineError(DiskGone, HoardError):
    """The engine does not answer, refuses us, or has no such bucket: the disk is gone for now
    (a DiskGone), said in one line with the next step (a HoardError)."""

    exit_code = ExitCode.UNAVAILABLE

    @property
    def message(self) -> str:
        return str(self.strerror)


class ObjectMismatch(fmt.ShardFormatError, HoardError):
    """An object's bytes are not what hoard uploaded (its sha256 or size differ)."""

    exit_code = ExitCode.DATA


class SealRefused(ObjectMismatch, OSError):
    """A seal refused: another object, or another live seal's claim, names other bytes for the
    shard. An OSError too, as every other failure of a replica's seal: the writer and recovery
    leave this replica out (the shard stays open on it, neither object touched) and go on."""


def client_for(endpoint: str, timeout_s: float = READ_TIMEOUT) -> Any:
    """An S3 client for `endpoint` whose requests wait `timeout_s` for an answer; credentials and
    region from boto3's usual chain."""
    config = Config(retries={"mode": "standard", "max_attempts": ATTEMPTS}, connect_timeout=min(CONNECT_TIMEOUT,
                    timeout_s), read_timeout=timeout_s, s3={"addressing_style": "path"},
                    signature_version="s3v4")  # (presigned URLs too: boto3 signs those SigV2 otherwise)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _code(e: ClientError) -> tuple[str, int]:
    return str(e.response.get("Error", {}).get("Code", "")), int(e.response.get("ResponseMetadata", {})
                                                                   .get("HTTPStatusCode", 0))


class S3Disk:
    """One bucket holding sealed shards, with a local staging folder for the open ones."""

    read_streams, upload_streams = READ_STREAMS, UPLOAD_STREAMS
    #: a large object's pieces come off ONE ranged GET (`stream_at`), read as they arrive: the
    #: engine's fastest way to send an object (bench/s3_backend.py: one GET beats 8 MiB pieces
    #: at any number in flight), one piece in memory at a time
    stream_large = True

    def __init__(self, label: str, uuid: str, endpoint: str, bucket: str, staging: Path, capacity_bytes: int,
                 part_size: int = PART_SIZE, client: Any = None) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size {part_size}: S3 wants parts of at least {MIN_PART} bytes")
        self.label, self.uuid, self.endpoint, self.bucket = label, uuid, endpoint, bucket
        self.capacity_bytes, self.part_size = capacity_bytes, part_size
        self.client = client if client is not None else client_for(endpoint)
        self.staging = LocalDisk(label, staging, uuid, require_mount=False)
        self.where = f"{endpoint}/{bucket}"
        self._appended: dict[str, _Appended] = {}  # open shards this process created: their bytes' sha256
        # ranged GETs: presigned URLs per key (url, when it expires) and a pool of connections of
        # their own, as many as boto3's (`_get`)
        self._signed: dict[str, tuple[str, float]] = {}
        cfg = self.client.meta.config
        self._pool = urllib3.PoolManager(maxsize=cfg.max_pool_connections, block=False, retries=False,
                                         timeout=urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout))
        self.beside = S3Beside(self)  # the marks log, pointers, index copy as objects (hoardfs.fsd.core.s3files)
        # sealed shards' staging files being unlinked (`_drop_staged`; seals of several writers' threads)
        self._dropping: list[threading.Thread] = []
        self._dropping_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Disk({self.label})"

    @classmethod
    def configured(cls, dc: DiskConfig, uuid: str = "") -> S3Disk:
        """The disk a `[[disks]]` table of kind "s3" declares (`uuid`: its identity, once known)."""
        return cls(dc.label, uuid, str(dc.endpoint), str(dc.bucket), dc.path, int((dc.capacity_gb or 0) * (1 << 30)),
                   client=client_for(str(dc.endpoint), dc.timeout_s))

    # -- identity ------------------------------------------------------------------------

    @classmethod
    def initialise(cls, label: str, endpoint: str, bucket: str, staging: Path, capacity_bytes: int,
                   part_size: int = PART_SIZE, client: Any = None) -> S3Disk:
        """Give an empty bucket its identity (If-None-Match: *: never over another disk's) and the
        staging folder one naming the same uuid; the disk, ready."""
        ident = new_identity(label)
        disk = cls(label, ident["uuid"], endpoint, bucket, staging, capacity_bytes, part_size, client)
        body = json.dumps(ident, indent=1).encode()
        try:
            disk._call("writing its identity", disk.client.put_object, Bucket=bucket, Key=IDENTITY, Body=body,
                       IfNoneMatch="*")
        except ClientError as e:
            if _code(e)[0] != "PreconditionFailed":
                raise
            raise EngineError(f"disk {label}: bucket {bucket} at {endpoint} already holds a disk identity "
                              f"({IDENTITY}): not overwritten; give the disk an empty bucket") from None
        staging.mkdir(parents=True, exist_ok=True)
        write_identity(staging, label, uuid=ident["uuid"])
        return disk

    def read_identity(self) -> dict | None:
        """The identity object's document; None when the bucket has none."""
        try:
            body = self._call("reading its identity", self.client.get_object, Bucket=self.bucket, Key=IDENTITY)
        except FileNotFoundError:
            return None
        try:
            ident = json.loads(body["Body"].read())
        except ValueError:
            ident = None
        if not isinstance(ident, dict) or not isinstance(ident.get("uuid"), str):
            raise EngineError(f"disk {self.label}: {IDENTITY} in bucket {self.bucket} is damaged (not an identity): "
                              "put it back from the index's disk record (`hoard disks activate`)")
        return ident

    def bucket_exists(self) -> bool:
        """Whether the engine has the bucket (one that does not answer or refuses: EngineError)."""
        try:
            self._call("looking up its bucket", self.client.head_bucket, Bucket=self.bucket,
                       passing=(*_NOT_FOUND, "NoSuchBucket"))
        except ClientError:
            return False
        return True

    def check(self) -> None:
        """Raise DiskGone unless the bucket is still this disk and the staging folder its own:
        checked before a shard is created or sealed."""
        ident = self.read_identity()
        if ident is None:
            raise EngineError(f"disk {self.label}: bucket {self.bucket} at {self.endpoint} has no {IDENTITY} "
                              "(not a hoardfs disk, or not initialised)")
        if ident["uuid"] != self.uuid:
            raise EngineError(f"disk {self.label}: bucket {self.bucket} holds disk {ident['uuid']}, expected "
                              f"{self.uuid} (another disk's bucket?): correct disks.bucket")
        self.staging.check()

    # -- the contract ----------------------------------------------------------------------

    def key(self, shard_hex: str) -> str:
        return f"{SHARD_PREFIX}{shard_hex[-2:]}/{shard_hex}"

    def create(self, shard_hex: str) -> Any:
        self.check()
        sink = _Appended(self.staging.create(shard_hex), self.part_size)
        self._appended[shard_hex] = sink
        return sink

    def reopen(self, shard_hex: str) -> Any:
        self._appended.pop(shard_hex, None)  # bytes from before this process: the seal hashes the file
        return self.staging.reopen(shard_hex)

    def _written(self, shard_hex: str, size: int) -> tuple[str, list[bytes] | None] | None:
        """The sha256 of the open shard's bytes as they were appended, and the xxh3-128 of each
        of its parts, when every one of its `size` bytes went through this process's sink (no
        reopen, no cut that left a part unhashed); None otherwise."""
        sink = self._appended.get(shard_hex)
        if sink is None or sink.sha is None or sink.pos != size:
            return None
        # parts of another size than the upload's (the disk's part_size changed since): none
        return str(sink.sha.hexdigest()), sink.part_digests() if sink.part_size == self.part_size else None

    def seal(self, shard_hex: str) -> None:
        """Upload the open shard as one object, check the engine holds it whole, then drop the
        open file (module docstring). Raises EngineError (the shard stays open: seal again),
        SealRefused (another object under its key, or another live seal's claim naming other
        bytes: nothing touched, the shard stays open here)."""
        self.check()  # (before anything is sent: never a part into another disk's bucket)
        size = self.staging.size(shard_hex)
        written = self._written(shard_hex, size)
        parts: list[bytes] | None = None
        if written is None:  # (a shard reopened by recovery, or cut back to fewer bytes than were hashed)
            digest = hashlib.sha256()
            for off in range(0, size, STREAM_PIECE):
                digest.update(self.staging.read_exact(shard_hex, off, min(STREAM_PIECE, size - off)))
            sha = digest.hexdigest()
        else:
            sha, parts = written
        key, nonce = self.key(shard_hex), secrets.token_hex(8)
        _SEALING.add(nonce)
        try:
            self._seal(shard_hex, key, size, sha, nonce, parts)
        finally:
            _SEALING.discard(nonce)

    def _seal(self, shard_hex: str, key: str, size: int, sha: str, nonce: str, parts: list[bytes] | None) -> None:
        # the shard claimed and the object looked for in a thread of their own while the parts go
        # up; the upload is completed only once they are done, and not at all when they fail or
        # find an object (a seal retried after its upload: judged below)
        side = ThreadPoolExecutor(1, thread_name_prefix=f"claim {self.label}")
        looked = side.submit(self._claim_and_look, shard_hex, key, size, sha, nonce)
        try:
            self._upload(shard_hex, key, size, sha, parts, looked)
        except Exception:
            side.shutdown()
            raise
        except BaseException:  # Ctrl-C: not held up by a claim under way (one it leaves is a gone seal's)
            side.shutdown(wait=False, cancel_futures=True)
            raise
        side.shutdown()
        head = self._head(key)
        if head is None:
            raise EngineError(f"disk {self.label}: the engine acknowledged shard {shard_hex} but does not show it: "
                              "it stays open; look at the engine's health, then seal again")
        there = (head["ContentLength"], head.get("Metadata", {}).get(SHA_KEY))
        if there != (size, sha):
            raise SealRefused(f"disk {self.label}: bucket {self.bucket} already holds a different object for "
                              f"shard {shard_hex} ({there[0]} bytes, sha256 {there[1]}; this one {size}, {sha}): "
                              "neither touched; run `hoard check`")
        self._drop_staged(shard_hex)
        # best effort: the shard is sealed; a claim left behind names these very bytes (one already
        # gone — a 404 — is what was wanted)
        with contextlib.suppress(EngineError, FileNotFoundError):
            self._call(f"sealing shard {shard_hex}", self.client.delete_object, Bucket=self.bucket,
                       Key=CLAIM_PREFIX + shard_hex)
        self._appended.pop(shard_hex, None)

    def _drop_staged(self, shard_hex: str) -> None:
        """The sealed shard's open file off the staging folder, durably, before this returns: renamed
        into the staging folder's tmp/ (under a name of its own: a shard of this id staged again —
        unsealed, rebuilt here — is never the file dropped) and unlinked there by a thread of its
        own. Unlinking a 256 MiB file whose pages are cached takes the kernel 50–80 ms, 4 % of a
        seal spent waiting for nothing (docs/benchmarks.md). One a crash leaves in
        tmp/ is removed by `hoard verify --orphans`, as any stale tmp file; `close_all` waits for
        the unlinks under way. No open file under the shard's name (gone since): as `delete`."""
        src = self.staging.path(shard_hex, False)
        dest = self.staging.tmp_path(f"{shard_hex}.sealed.{secrets.token_hex(4)}")
        self.staging.check()  # (DiskGone: no tmp/ made under a staging folder's vanished mount)
        dest.parent.mkdir(exist_ok=True)
        self.staging.forget(shard_hex)
        try:
            os.rename(src, dest)
        except FileNotFoundError:
            self.staging.delete(shard_hex)  # (FileNotFoundError, or DiskGone when the folder is gone)
            return
        fsync_dir(src.parent)
        fsync_dir(dest.parent)  # (one journal commit for both on ext4 and XFS; not every file system)
        t = threading.Thread(target=self._unlink_dropped, args=(dest,), name=f"drop {shard_hex}", daemon=True)
        with self._dropping_lock:
            self._dropping = [*(d for d in self._dropping if d.is_alive()), t]
        t.start()

    def _unlink_dropped(self, path: Path) -> None:
        """(`_drop_staged`'s thread) One that fails is left for the orphan sweep, logged."""
        try:
            path.unlink(missing_ok=True)  # (the sweep may have been first)
        except OSError as e:
            log.warning("disk %s: %s was not removed (%s): `hoard verify --orphans` removes it", self.label, path,
                        e.strerror or e)

    def _claim_and_look(self, shard_hex: str, key: str, size: int, sha: str, nonce: str) -> dict | None:
        """What a seal does before its upload may be completed: the shard claimed (`_claim`),
        then the object's HEAD (None: no object yet)."""
        self._claim(shard_hex, size, sha, nonce)
        return self._head(key)

    def _claim(self, shard_hex: str, size: int, sha: str, nonce: str) -> None:
        """Name the bytes this seal uploads under claims/<shard> (If-None-Match: *) before it
        looks for the object (module docstring); raise SealRefused when another live seal's
        claim names other bytes. A claim names its seal too — host, pid, the pid's start time
        and a nonce per seal — so one left by a seal that is gone (its process ended on this
        host, or it was this process's own seal that failed) is replaced: recovery may have cut
        the shard back since, and the bytes now sealed are the ones the index acknowledges."""
        key, what = CLAIM_PREFIX + shard_hex, f"claiming shard {shard_hex}"
        mine = f"{size} {sha} {_HOST} {' '.join(map(str, _me()))} {nonce}"
        for _ in range(3):
            try:
                self._call(what, self.client.put_object, Bucket=self.bucket, Key=key, Body=mine.encode(),
                           IfNoneMatch="*")
                return
            except ClientError:  # 412: a claim is there
                pass
            try:
                got = self._call(what, self.client.get_object, Bucket=self.bucket, Key=key)
                theirs = got["Body"].read().decode(errors="replace")
            except FileNotFoundError:
                continue  # that seal ended meanwhile: claim again
            except BotoCoreError as e:
                raise self._broke(what, e) from None
            if theirs.split()[:2] == mine.split()[:2]:
                return  # the same bytes: a seal of this shard retried, or running beside this one
            made = got.get("LastModified")
            if self._gone(theirs, int(made.timestamp() * 1e9) if made is not None else None):
                log.info("disk %s: shard %s: the claim of a seal that is gone (%s) replaced", self.label, shard_hex,
                         theirs)
                self._call(what, self.client.delete_object, Bucket=self.bucket, Key=key)
                continue
            raise SealRefused(f"disk {self.label}: shard {shard_hex} is being sealed with other bytes "
                              f"({key} in bucket {self.bucket} names {theirs}; this one {mine}): this one "
                              "stays open; run `hoard check`, and delete that claim if no hoard process "
                              "seals the shard")
        raise EngineError(f"disk {self.label}: the claim of shard {shard_hex} in bucket {self.bucket} comes and "
                          "goes while it is sealed: it stays open; seal again")

    def _gone(self, claim: str, made_ns: int | None) -> bool:
        """Whether the seal that wrote `claim` has ended: its process is gone from this host (this
        boot, this pid namespace: hoardfs.base.proc.process_space), it is this process and none of its seals in
        flight wrote it, or it ran in an earlier boot of this machine — which the claim's object
        must show: made (`made_ns`, its LastModified) at least CLAIM_CLOCK_SLACK before this boot
        began. One made since names this machine's name and machine id but came from another
        kernel (a VM cloned with its machine id): its seal may run. A claim from another host,
        machine or pid namespace, one of another boot that no time places before this one, or
        one in an older form, is taken as live (`hoard verify --orphans` removes it after its
        grace)."""
        fields = claim.split()
        if len(fields) != 6 or not (fields[3].isdigit() and fields[4].isdigit()):
            return False
        if fields[2] != _HOST:  # another machine, pid namespace or boot: gone only if an earlier boot of this one
            return made_ns is not None and earlier_boot(fields[2], _HOST, made_ns + CLAIM_CLOCK_SLACK)
        pid, start, nonce = int(fields[3]), int(fields[4]), fields[5]
        if (pid, start) == _me():
            return nonce not in _SEALING
        return not alive_since(pid, start)

    def _upload(self, shard_hex: str, key: str, size: int, sha: str, parts: list[bytes] | None = None,
                looked: Future[dict | None] | None = None) -> None:
        """One multipart upload of the open shard, completed only if no object has the key; its
        parts `upload_streams` at a time, each read from the staging file when its turn comes.
        `looked`: the seal's claim and look (`_claim_and_look`), running beside the parts: the
        upload is completed only once it returned no object; an error of its is raised here,
        an object it found leaves the upload aborted (the caller judges the object), and either
        sends no more parts.
        Each part is checked as it goes against the xxh3-128 its bytes had when they were
        appended (`parts`: `_written` gives them only for this part size and these bytes),
        or, without those (a shard reopened or cut back, whose `sha` the seal has just taken of
        the file), the parts are hashed in order with sha256: bytes that are not the ones `sha`
        was taken of (the staging file changed since they were appended) abort the upload
        before it is completed — EBADMSG (the writer drops this replica and records the error;
        the disk stays in service: its bucket is sound), the shard stays open, nothing sealed."""
        what = f"uploading shard {shard_hex}"
        offsets = range(0, size, self.part_size)
        up = self._call(what, self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                        Metadata={SHA_KEY: sha})
        upload_id = up["UploadId"]
        failed = threading.Event()  # a part failed: the parts not started yet are not sent
        sent = hashlib.sha256()  # what the parts hold, in order (no `parts` to check them against)
        hashed = [threading.Event() for _ in offsets]  # part n + 1 is in `sent`
        if looked is not None:  # the claim refused or failed, or the object there: no more parts
            looked.add_done_callback(lambda f: failed.set() if f.cancelled() or f.exception() is not None
                                     or f.result() is not None else None)

        def object_there() -> bool:
            """The claim's and the look's verdict, once they are done: whether an object has
            the key already (their error raised here)."""
            return looked is not None and looked.result() is not None

        def changed(detail: str) -> OSError:
            return OSError(errno.EBADMSG, f"disk {self.label}: the staging file of shard {shard_hex} no longer "
                                          f"holds the bytes appended to it ({detail}): not uploaded, the shard "
                                          "stays open; look at the staging folder's disk, then run `hoard check`")

        def part(n: int, off: int) -> dict | None:
            if failed.is_set():
                return None  # (never looked at: an earlier part's error is raised first)
            try:
                body = self.staging.read_exact(shard_hex, off, min(self.part_size, size - off))
                if parts is not None:
                    if xxhash.xxh3_128_digest(body) != parts[n - 1]:
                        raise changed(f"part {n} at byte {off} differs")
                else:
                    if n > 1:  # after the part before it
                        while not hashed[n - 2].wait(0.05):
                            if failed.is_set():
                                return None
                    sent.update(body)
                    hashed[n - 1].set()
                r = self._call(what, self.client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id,
                               PartNumber=n, Body=body)
            except BaseException:
                failed.set()
                raise
            return {"PartNumber": n, "ETag": r["ETag"]}

        try:
            with ThreadPoolExecutor(self.upload_streams, thread_name_prefix=f"upload {self.label}") as pool:
                futures = [pool.submit(part, n, off) for n, off in enumerate(offsets, start=1)]
                try:
                    uploaded = [f.result() for f in futures]
                except BaseException:
                    failed.set()  # (Ctrl-C while waiting too) the ones under way end, the rest are not sent
                    raise
        except Exception:
            # a part failed: the claim's and the look's verdict first, as when they ran before
            # the parts — a claim refused (SealRefused: the disk stays in service) or an object
            # found there (the caller judges it) say more than a part that went wrong meanwhile
            self._abort(key, upload_id)
            if object_there():
                return  # the caller judges it
            raise
        except BaseException:  # (Ctrl-C: not waited for)
            self._abort(key, upload_id)
            raise
        try:
            if object_there():
                self._abort(key, upload_id)
                return  # the caller judges it
            if parts is None and sent.hexdigest() != sha:
                raise changed(f"sha256 {sent.hexdigest()}, appended {sha}")
            try:
                self._call(what, self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": uploaded}, IfNoneMatch="*")
                return
            except ClientError as e:  # 412: an object has the key already; the caller judges it
                if _code(e)[0] != "PreconditionFailed":
                    raise
        except BaseException:
            self._abort(key, upload_id)
            raise
        self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        # best effort: an engine that is down keeps the parts until its own cleanup
        # (docs/scale-out.md: a lifecycle rule that aborts incomplete uploads)
        with contextlib.suppress(BotoCoreError, ClientError):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def read_at(self, shard_hex: str, offset: int, length: int) -> bytes:
        """A ranged GET of the sealed object; the open file's bytes when there is no object yet
        (the sealed one first, as a local disk's `find`: an open file left beside it by a crash
        is not what the index points at)."""
        if length <= 0:
            return b""
        try:
            return self._get(self.key(shard_hex), offset, length, f"reading shard {shard_hex}")
        except FileNotFoundError:
            return self.staging.read_at(shard_hex, offset, length)

    def read_exact(self, shard_hex: str, offset: int, length: int) -> bytes:
        """The same ranged GET: the engine sends exactly these bytes."""
        return self.read_at(shard_hex, offset, length)

    def stream_at(self, shard_hex: str, offset: int, length: int, piece: int) -> Generator[bytes, None, None]:
        """`length` bytes at `offset` of the sealed shard in pieces of `piece` bytes, from ONE
        ranged GET to the key's presigned URL, each piece read off the socket as it arrives. A
        GET the engine does not answer with that range (an open shard: no object yet; an error
        status; no answer) is read piece by piece with `read_at` instead, which has boto3's
        retries and errors. A body that breaks off raises EngineError at that piece. A stream
        left before its end is closed, not handed back to the pool half read."""
        if length <= 0:
            return
        r = self._ranged(self.key(shard_hex), offset, length, whole=True)
        if r is None:
            for start in range(0, length, piece):
                yield self.read_at(shard_hex, offset + start, min(piece, length - start))
            return
        what = f"reading shard {shard_hex}"
        whole = False
        try:
            for start in range(0, length, piece):
                n = min(piece, length - start)
                try:
                    buf: bytes = r.read(n)
                except urllib3.exceptions.HTTPError as e:
                    raise self._broke(what, e) from None
                if len(buf) != n:
                    raise self._broke(what, urllib3.exceptions.IncompleteRead(len(buf), n - len(buf)))
                yield buf
            whole = True
        finally:
            if not whole:
                r.close()  # (the rest unread: this connection is not reusable)
            r.release_conn()

    def size(self, shard_hex: str) -> int:
        head = self._head(self.key(shard_hex))
        if head is None:
            return self.staging.size(shard_hex)  # FileNotFoundError when it is not open either
        return int(head["ContentLength"])

    def delete(self, shard_hex: str) -> None:
        """Remove the shard's object and any open file of it; FileNotFoundError when neither was
        there, EngineError when the engine cannot say."""
        removed = False
        self._appended.pop(shard_hex, None)
        with contextlib.suppress(FileNotFoundError):
            self.staging.delete(shard_hex)
            removed = True
        key = self.key(shard_hex)
        if self._head(key) is not None:
            self._call(f"deleting shard {shard_hex}", self.client.delete_object, Bucket=self.bucket, Key=key)
            removed = True
        if not removed:
            raise FileNotFoundError(errno.ENOENT, f"no shard {shard_hex} on disk {self.label}")

    # -- transfers (hoardfs.jobs.actions.remote): plain objects under transfers/, not shards --------------

    def put_transfer(self, key: str, body: Any, sha_hex: str) -> bool:
        """Upload `body` (bytes or a file open for reading) as `key` under transfers/, its sha256
        in the metadata, with If-None-Match: * — True when uploaded, False when the key was there
        already (a retried upload: the key names the content, or the first writer's document)."""
        assert key.startswith(TRANSFER_PREFIX)
        try:
            self._call(f"uploading {key}", self.client.put_object, Bucket=self.bucket, Key=key, Body=body,
                       Metadata={SHA_KEY: sha_hex}, IfNoneMatch="*")
        except ClientError:  # (only a 412 passes _call)
            return False
        return True

    def transfer_sha(self, key: str) -> str | None:
        """The sha256 a transfer object's metadata names; None when there is no such object."""
        head = self._head(key)
        return None if head is None else str(head.get("Metadata", {}).get(SHA_KEY, ""))

    def open_transfer(self, key: str) -> Any:
        """The body of a transfer object (a stream: `read(n)`, `close()`); FileNotFoundError when
        it is not there."""
        return self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]

    def transfer_keys(self, prefix: str) -> list[str]:
        assert prefix.startswith(TRANSFER_PREFIX)
        return sorted(self._keys(prefix))

    def transfer_ages(self, prefix: str = TRANSFER_PREFIX) -> dict[str, float]:
        """Each transfer object under `prefix` and its age in seconds: this host's clock less
        the engine's LastModified (two clocks: close enough for a grace of an hour)."""
        assert prefix.startswith(TRANSFER_PREFIX)
        now = time.time()
        return {obj["Key"]: now - obj["LastModified"].timestamp() for obj in self.beside.objects(prefix)}

    def delete_transfer(self, key: str) -> None:
        assert key.startswith(TRANSFER_PREFIX)
        self._call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=key)

    # -- published locators (hoardfs.datasets.publish): plain objects under loaders/ -------------

    def put_published(self, name: str, body: bytes) -> None:
        """`body` as loaders/<name>, replacing the one there (a PUT is whole or nothing)."""
        self._call(f"publishing {PUBLISHED_PREFIX}{name}", self.client.put_object, Bucket=self.bucket,
                   Key=PUBLISHED_PREFIX + name, Body=body, Metadata={SHA_KEY: hashlib.sha256(body).hexdigest()})

    def get_published(self, name: str, limit: int | None = None) -> bytes | None:
        """The bytes of loaders/<name>; None when there is no such object; ValueError naming its
        size when it holds more than `limit` bytes (none of them read)."""
        try:
            r = self._call(f"reading {PUBLISHED_PREFIX}{name}", self.client.get_object, Bucket=self.bucket,
                           Key=PUBLISHED_PREFIX + name)
        except FileNotFoundError:
            return None
        body = r["Body"]
        try:
            size = int(r.get("ContentLength") or 0)
            if limit is not None and size > limit:
                raise ValueError(f"{size} bytes")
            data: bytes = body.read(None if limit is None else limit + 1)
            if limit is not None and len(data) > limit:
                raise ValueError(f"more than {limit} bytes")
            return data
        except BotoCoreError as e:
            raise self._broke(f"reading {PUBLISHED_PREFIX}{name}", e) from None
        finally:
            body.close()

    def published_names(self, prefix: str = "") -> list[str]:
        """The names under loaders/ starting with `prefix` (a listing)."""
        return sorted(k[len(PUBLISHED_PREFIX):] for k in self._keys(PUBLISHED_PREFIX + prefix))

    def free_bytes(self, used_by_hoard: int) -> int:
        """The space granted to hoard on the engine (`capacity_gb`) less what hoard holds there:
        S3 has no call that reports an engine's free space."""
        return max(0, self.capacity_bytes - used_by_hoard)

    def total_bytes(self) -> int:
        """The space granted to hoard on the engine (`capacity_gb`)."""
        return self.capacity_bytes

    def close_all(self) -> None:
        self.staging.close_all()
        with self._dropping_lock:
            dropping, self._dropping = self._dropping, []
        for t in dropping:
            t.join()  # (Ctrl-C here: Store.close still closes the index and lets go of the store lock)

    def forget(self, shard_hex: str) -> None:
        self.staging.forget(shard_hex)
        self._appended.pop(shard_hex, None)

    def state(self, shard_hex: str) -> str | None:
        if self._head(self.key(shard_hex)) is not None:
            return "sealed"
        return "open" if self.staging.state(shard_hex) == "open" else None

    def shard_ids(self) -> list[tuple[str, bool]]:
        """(shard hex, sealed) of every object under shards/ and every open file on the staging
        folder: a listing, for check and rebuild — never on the read path."""
        found = [(k.rsplit("/", 1)[-1], True) for k in self._keys(SHARD_PREFIX)]
        found += [(h, False) for h, sealed in self.staging.shard_ids() if not sealed]
        return sorted(found)

    def shard_files(self) -> list[Path]:
        """The open shards' files on the staging folder (the sealed ones are objects: `shard_objects`)."""
        return self.staging.shard_files()

    def shard_objects(self) -> list[tuple[str, int, float]]:
        """(shard hex, size, modified time) of every object under shards/: a listing, for the
        orphan sweep — never on the read path."""
        out = []
        for obj in self.beside.objects(SHARD_PREFIX):
            out.append((obj["Key"].rsplit("/", 1)[-1], int(obj["Size"]), obj["LastModified"].timestamp()))
        return sorted(out)

    def verify(self, shard_hex: str, sha256: bool = False) -> tuple[int, int]:
        """(size, records) of the sealed object after checking every record (`verify_shard`) and
        the whole object's sha256 against the one stored at upload, in one streamed GET."""
        key = self.key(shard_hex)
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(errno.ENOENT, f"shard {shard_hex} not on disk {self.label}")
        size = int(head["ContentLength"])
        stream = _Stream(lambda off, n: self._get(key, off, n, f"verifying shard {shard_hex}"),
                         lambda: self._call(f"verifying shard {shard_hex}", self.client.get_object,
                                            Bucket=self.bucket, Key=key)["Body"], size)
        try:
            count = verify_shard(stream.read, size, key, sha256, shard_hex)
            whole = stream.finish()
        except BotoCoreError as e:
            raise self._broke(f"verifying shard {shard_hex}", e) from None
        finally:
            stream.close()
        stored = head.get("Metadata", {}).get(SHA_KEY)
        if whole != stored:
            raise ObjectMismatch(f"{key}: sha256 of the object {whole} differs from the {stored} stored at upload")
        return size, count

    def unseal(self, shard_hex: str) -> bool:
        """sealed → open again: the object is copied back to the staging folder as an open file,
        then deleted. False, and nothing changed, when an open file of the shard is there."""
        if self.staging.state(shard_hex) is not None:
            return False
        key = self.key(shard_hex)
        body = self._call(f"unsealing shard {shard_hex}", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        sink = self.staging.create(shard_hex)
        try:
            for piece in iter(lambda: body.read(STREAM_PIECE), b""):
                sink.write(piece)
            sink.sync()
        except BaseException as e:
            sink.close()
            with contextlib.suppress(OSError):
                self.staging.delete(shard_hex)
            if isinstance(e, BotoCoreError):
                raise self._broke(f"unsealing shard {shard_hex}", e) from None
            raise
        finally:
            body.close()
        sink.close()
        self._call(f"unsealing shard {shard_hex}", self.client.delete_object, Bucket=self.bucket, Key=key)
        return True

    def set_aside(self, shard_hex: str, src: Path | None = None) -> Path:
        """Move the sealed object to orphans/ (a server-side copy, then the delete), or the open
        file (`src`, or the one there when no object is) to the staging folder's orphans;
        where it went (for an object: `<bucket>/<key>`)."""
        key = self.key(shard_hex)
        if src is not None or self._head(key) is None:
            return self.staging.set_aside(shard_hex, src)
        dest = f"{ORPHAN_PREFIX}{shard_hex}.{time.strftime('%Y%m%d-%H%M%S')}"
        what = f"setting shard {shard_hex} aside"
        self._call(what, self.client.copy, {"Bucket": self.bucket, "Key": key}, self.bucket, dest)
        self._call(what, self.client.delete_object, Bucket=self.bucket, Key=key)
        return Path(self.bucket) / dest

    # -- requests --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, passing: tuple[str, ...] = ("PreconditionFailed",),
              **kw: Any) -> Any:
        """One request; its failure as FileNotFoundError (no such key), the ClientError of a code
        in `passing` (the caller's to judge: a 412), or an EngineError in one line with the next
        step."""
        try:
            return fn(*args, **kw)
        except ClientError as e:
            code, status = _code(e)
            if code in passing:
                raise
            if code in _NOT_FOUND and code != "NoSuchBucket":
                if code != "NoSuchKey":  # a HEAD's bare 404 is the key's or the bucket's
                    self._bucket_there(what)
                raise FileNotFoundError(errno.ENOENT, f"disk {self.label}: no {kw.get('Key', '?')} in bucket "
                                                      f"{self.bucket}") from None
            raise self._error(what, e, code, status) from None
        except NoCredentialsError:
            raise EngineError(f"disk {self.label}: no S3 credentials found while {what}: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or a credentials file (boto3's usual chain)") from None
        except ReadTimeoutError:
            wait = self.client.meta.config.read_timeout
            raise EngineError(f"disk {self.label}: the engine at {self.endpoint} does not answer within its "
                              f"timeout_s = {wait:g} s while {what} ({ATTEMPTS} tries): see why it is slow (its "
                              "log, its load), or raise disks.timeout_s") from None
        except BotoCoreError as e:
            raise EngineError(f"disk {self.label}: the engine at {self.endpoint} does not answer while {what} "
                              f"({first_line(e)}): start it, or correct disks.endpoint") from None

    def _error(self, what: str, e: ClientError, code: str, status: int) -> EngineError:
        if code == "NoSuchBucket":
            return EngineError(f"disk {self.label}: bucket {self.bucket} does not exist at {self.endpoint} "
                               f"(deleted, or a wrong disks.bucket) while {what}: if it was deleted its shards "
                               f"are lost there — `hoard disks forget {self.label}` and rebuild from the other "
                               "replicas; else correct disks.bucket")
        if code in _REFUSED or status == 403:
            return EngineError(f"disk {self.label}: the engine at {self.endpoint} refused the credentials ({code}) "
                               f"while {what}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the credentials file "
                               f"to a key allowed on bucket {self.bucket}")
        if status >= 500:
            return EngineError(f"disk {self.label}: the engine at {self.endpoint} failed ({status} {code}) while "
                               f"{what}: see its log, then try again")
        return EngineError(f"disk {self.label}: the engine at {self.endpoint} answered {status} {code} while {what}: "
                           f"{first_line(e)}")

    def _broke(self, what: str, e: BotoCoreError | urllib3.exceptions.HTTPError) -> EngineError:
        """A response body that broke off while it was read (the engine stopped, a timeout)."""
        return EngineError(f"disk {self.label}: the engine at {self.endpoint} broke off while {what} "
                           f"({first_line(e)}): try again once it answers")

    def _bucket_there(self, what: str) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code, status = _code(e)
            raise self._error(what, e, "NoSuchBucket" if code in _NOT_FOUND else code, status) from None
        except BotoCoreError:
            pass  # the request before it said more: the caller reports what it has

    def _head(self, key: str) -> dict | None:
        try:
            head: dict = self._call(f"looking up {key}", self.client.head_object, Bucket=self.bucket, Key=key)
            return head
        except FileNotFoundError:
            return None

    def _get(self, key: str, offset: int, length: int, what: str) -> bytes:
        """`length` bytes at `offset` (fewer only at the end of the object), one ranged GET — to
        a URL presigned for the key (SigV4 in the query: valid for any range) with urllib3, not
        a boto3 call: boto3 spends about 3 ms of CPU per request on its own machinery (hooks,
        endpoint rules, signing, parsing headers it then drops), on the same cores as the engine
        (docs/benchmarks.md, "The S3 backend against SeaweedFS").
        Only a 206 with the range asked for is taken; anything else
        — an error status, no answer, a range ignored — is asked again through boto3
        (`_get_boto`), whose retries and errors are every other request's."""
        r = self._ranged(key, offset, length, whole=False)
        if r is None:
            return self._get_boto(key, offset, length, what)
        try:
            try:
                data: bytes = r.read()
            except urllib3.exceptions.HTTPError as e:  # (a short body: the length is enforced)
                raise self._broke(what, e) from None
            return data
        finally:
            r.release_conn()

    def _ranged(self, key: str, offset: int, length: int, whole: bool) -> Any:
        """One ranged GET of `length` bytes at `offset` to the key's presigned URL, its body not
        read yet (`_get`, `stream_at`): the response when the engine answers 206 with the range
        asked for — from `offset`, and to its last byte when `whole` (else fewer bytes only at
        the end of the object) —, None for anything else (an error status, no answer, a range
        ignored), its connection let go. A 403 drops the URL: a URL signed with credentials
        since changed is signed again."""
        end = offset + length - 1
        try:
            r = self._pool.request("GET", self._url(key), headers={"Range": f"bytes={offset}-{end}"},
                                   preload_content=False)
        except urllib3.exceptions.HTTPError:
            return None
        if r.status == 206 and str(r.headers.get("Content-Range", "")).startswith(
                f"bytes {offset}-{end}/" if whole else f"bytes {offset}-"):
            return r
        if r.status == 403:
            self._signed.pop(key, None)
        r.close()  # (its body unread: not a connection to hand back)
        r.release_conn()
        return None

    def _url(self, key: str) -> str:
        """The key's presigned GET URL, signed again when less than a quarter of its time is left."""
        now = time.monotonic()
        url, until = self._signed.get(key, ("", 0.0))
        if now < until:
            return url
        url = self._call(f"signing a request for {key}", self.client.generate_presigned_url, "get_object",
                         Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=SIGNED_S)
        if len(self._signed) >= SIGNED_KEYS:
            self._signed.clear()
        self._signed[key] = (url, now + SIGNED_S * 3 / 4)
        return url

    def _get_boto(self, key: str, offset: int, length: int, what: str) -> bytes:
        """The same ranged GET through boto3: its retries, and each failure as `_call` says it."""
        try:
            r = self._call(what, self.client.get_object, Bucket=self.bucket, Key=key,
                           Range=f"bytes={offset}-{offset + length - 1}", passing=("InvalidRange",))
        except ClientError:  # at or past the end: nothing there, as a short read
            return b""
        body = r["Body"]
        try:
            data: bytes = body.read()
            return data
        except BotoCoreError as e:
            raise self._broke(what, e) from None
        finally:
            body.close()

    def _keys(self, prefix: str) -> Iterator[str]:
        return (obj["Key"] for obj in self.beside.objects(prefix))

class _Appended:
    """An open shard's sink on the staging folder that hashes what is appended through it, so
    the seal need not read the file once more to learn its sha256 — and the xxh3-128 of each
    `part_size` piece, the upload's parts: the upload checks each part it sends against its
    own (a few ms a part, where a second sha256 pass over the parts, in order, was CPU taken
    from the engine's cores) and so finds a file that changed since. A cut to other than the
    bytes hashed, or a write that failed, leaves no hashes (`sha` None): the seal then hashes
    the file, and the upload hashes its parts again with sha256."""

    def __init__(self, inner: Any, part_size: int) -> None:
        self.inner, self.part_size = inner, part_size
        self.sha: Any = hashlib.sha256()
        self.pos = 0
        self.parts: list[bytes] = []  # the xxh3-128 of each whole part appended so far
        self._part = xxhash.xxh3_128()  # of the part being appended

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.inner.write(data)
            if self.sha is not None:
                self._hash(data)
        except BaseException:
            # some of it may be in the file, or in one hash and not the other (the sha256 may hold
            # a write the parts' hashes lack, and a seal would name the object by it)
            self.sha = None
            raise

    def _hash(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.pos % self.part_size)
            self._part.update(view[:take])
            self.pos += take
            view = view[take:]
            if self.pos % self.part_size == 0:
                self.parts.append(self._part.digest())
                self._part.reset()

    def part_digests(self) -> list[bytes]:
        """The xxh3-128 of every part of the bytes appended, the last (short) one included."""
        return self.parts + ([self._part.digest()] if self.pos % self.part_size else [])

    def sync(self) -> None:
        self.inner.sync()

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)
        if size != self.pos:
            self.sha = None

    def close(self) -> None:
        self.inner.close()


class _Stream:
    """A `read(offset, n)` over one object for `verify_shard`, which reads the footer, then the
    records in order: in-order reads come off one streamed GET (hashed whole as it passes),
    re-reads of the last WINDOW bytes from memory, anything else as a ranged GET of its own.
    It holds at most WINDOW bytes behind the last read's end, plus up to CHUNK read past it and
    the read in hand."""

    CHUNK = 1 << 20

    def __init__(self, get: Callable[[int, int], bytes], open_body: Callable[[], Any], size: int) -> None:
        self.get, self.open_body, self.size = get, open_body, size
        self.body: Any = None
        self.pos = 0  # bytes consumed off the stream
        self.chunks: collections.deque[bytes] = collections.deque()  # the last ones consumed, up to pos
        self.start = 0  # where the first of them begins
        self.sha = hashlib.sha256()

    def _consume(self, n: int, keep: bool = True) -> None:
        if self.body is None:
            self.body = self.open_body()
        while n > 0:
            chunk = self.body.read(min(n, self.CHUNK))
            if not chunk:
                raise fmt.TruncatedShard(f"the object ended at {self.pos} of {self.size} bytes")
            self.sha.update(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
            if keep:
                self.chunks.append(chunk)
            else:
                self.chunks.clear()
                self.start = self.pos

    def _trim(self, keep_from: int) -> None:
        """Drop the chunks that end at or before `keep_from`."""
        while self.chunks and self.start + len(self.chunks[0]) <= keep_from:
            self.start += len(self.chunks.popleft())

    def read(self, offset: int, n: int) -> bytes:
        end = min(offset + n, self.size)
        if offset >= end:
            return b""
        if offset < self.start or offset > self.pos + STREAM_PIECE:
            return self.get(offset, end - offset)  # behind the window, or far ahead (the footer)
        self._trim(min(offset, end - WINDOW))  # what this read and the window after it do not need
        if end > self.pos:
            # at least CHUNK off the stream: a record's header and payload read exactly left the
            # window a deque of hundreds of small pieces, each walked for every read (a 64 MiB
            # shard of small records verified at 140 MiB/s of one core's time)
            self._consume(max(end - self.pos, min(self.CHUNK, self.size - self.pos)))
        # the pieces holding [offset, end), from the newest back: reads go in order, so they are
        # among the last few
        parts, hi_at = [], self.pos
        for chunk in reversed(self.chunks):
            lo_at = hi_at - len(chunk)
            lo, hi = max(offset, lo_at), min(end, hi_at)
            if lo < hi:
                parts.append(chunk if (lo, hi) == (lo_at, hi_at) else chunk[lo - lo_at:hi - lo_at])
            if lo_at <= offset:
                break
            hi_at = lo_at
        self._trim(end - WINDOW)  # (WINDOW behind this read's end: a sha256 pass re-reads it)
        return parts[0] if len(parts) == 1 else b"".join(reversed(parts))

    def finish(self) -> str:
        """The sha256 (hex) of the whole object, once the rest of it has streamed past."""
        self.chunks.clear()
        self.start = self.pos
        self._consume(self.size - self.pos, keep=False)
        return self.sha.hexdigest()

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
