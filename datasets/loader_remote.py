"""A training loader's samples on a host that has neither the store's index nor its database
(docs/datasets.md, "From another host"): read through the S3 disks' sealed shards or through a
hoard mount, from a version's published locator (hoardfs.datasets.publish).

    [loader]                    # the host's hoard.toml (hoardfs.base.config.LoaderConfig)
    source = "s3"               # or "mount" (mount = PATH, locators = DIR)
    disk = "s3a"                # the S3 disk whose bucket holds loaders/<name>@<N>.json

The locator gives the version's manifest (read from its own place, its sha256 checked) and each
sample's record place — shard, offset, length — as the index had it at publish time, so the
loader (hoardfs.datasets.loader) plans the epoch from exactly what it plans from on the store's
server: the same order, the same resume.

**S3** (`S3Located`): each run is read from an S3 disk of this host holding its shard (the
runs balanced over them by bytes), its records coalesced into ranged GETs as the store's loader
coalesces them (hoardfs.fsd.outputs.runs.ranges), `read_streams` GETs in flight per disk,
one reader thread per disk at most `ahead` runs ahead. Each record's header and xxh3-128 are
checked (`verified_view`); a record that does not check, or a shard object not there, is read
from the next S3 disk of this host holding its shard (logged, counted as a fallback); with none
left the loader stops in one line naming the record and the next step.

**Mount** (`MountLocated`): each sample's object read as the file `by-hash/<aa>/<bb>/<sha256>.<ext>`
of the mount (every object the store shows is there, whatever the version's mode), its sha256
checked; a file that is not there is an object the store no longer shows (deleted since the
publish, or collected): withheld, as the store's loader withholds it.

What a host withholds: the samples the locator lists as withheld (deleted, black-listed or
hidden when it was published); through the mount also those deleted since. Through S3 a sample
deleted after the publish is read while its shard holds it: publish again after a delete
(`hoard dataset publish NAME@N`). Nothing is written anywhere.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from hoardfs.base.config import LoaderHost
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.datasets import card
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.records import verify_record
from hoardfs.fsd.outputs.runs import AHEAD, Rec, Run, RunRead, disk_ranges, read_assigned, read_checked

__all__ = ["Loc", "Located", "MountLocated", "RemoteLoaderError", "S3Located", "open_located"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the locator's format (hoardfs.datasets.publish.LOCATOR; datasets may not import each other's
#: server side here: the host runs this module alone)
LOCATOR = 1
#: the most bytes of a locator read (about 130 bytes a sample: some 8 million samples); a larger
#: object or file is refused before a byte of it is read or parsed
LOCATOR_MAX = 1 << 30
#: files read through the mount at once by the mount reader (the mount's own read queues
#: spread them over the replicas)
MOUNT_STREAMS = 4
#: a shard staging folder that is never there: a host reads sealed objects only, and an S3
#: disk's read of a key that is not there looks on its staging folder next
_NO_STAGING = Path("/nonexistent/hoard-loader-no-staging")

_SHA = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{24}")
_EXT = re.compile(r"[A-Za-z0-9._+-]{0,32}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*@[1-9][0-9]{0,8}")


class RemoteLoaderError(HoardError):
    exit_code = ExitCode.UNAVAILABLE


def _kind(e: BaseException) -> str:
    """What a failed record read says of its replica: "data" (bytes that do not check out),
    "gone" (no such shard object), "engine" (any other failed request: the engine does not
    answer, refuses, has no such bucket)."""
    if isinstance(e, fmt.ShardFormatError) or not isinstance(e, OSError):
        return "data"
    return "gone" if isinstance(e, FileNotFoundError) else "engine"


class Loc(NamedTuple):
    """A record's place, as the index's ObjectLoc gives it to the plan."""

    shard_id: bytes
    offset: int
    length: int


def _checked(raw: bytes, where: str, ref: str) -> dict[str, Any]:
    """The locator's document, each field checked (a bucket's object is what whoever may write
    the bucket put there); RemoteLoaderError (one line) naming the first thing wrong."""
    def bad(why: str) -> RemoteLoaderError:
        return RemoteLoaderError(f"the locator of {ref} at {where} {why}: publish it again on the store's server "
                                 f"(`hoard dataset publish {ref}`)", ExitCode.DATA)

    try:
        doc = json.loads(raw)
    except ValueError:
        raise bad("is not JSON") from None
    if not isinstance(doc, dict) or doc.get("locator") != LOCATOR:
        raise bad(f"is not a locator of format {LOCATOR}")
    if doc.get("dataset") != ref:
        raise bad(f"names dataset {str(doc.get('dataset'))[:80]!r}")
    if not isinstance(doc.get("manifest_sha256"), str) or not _SHA.fullmatch(doc["manifest_sha256"]):
        raise bad("names no manifest")
    objects, withheld = doc.get("objects"), doc.get("withheld")
    if not isinstance(objects, dict) or not isinstance(withheld, list):
        raise bad("has no objects or withheld list")
    for sha, place in objects.items():
        ok = isinstance(place, list) and len(place) == 5
        shard, offset, length, labels, ext = place if ok else (None, 0, 0, None, None)
        if not (ok and isinstance(sha, str) and _SHA.fullmatch(sha) and isinstance(shard, str)
                and _SHARD.fullmatch(shard) and type(offset) is int and type(length) is int
                and offset >= fmt.RECORD_HEADER_SIZE and length >= 0 and isinstance(labels, list)
                and all(isinstance(x, str) for x in labels) and isinstance(ext, str) and _EXT.fullmatch(ext)):
            raise bad(f"places object {str(sha)[:80]!r} nowhere a record can be")
    if not all(isinstance(h, str) and _SHA.fullmatch(h) for h in withheld):
        raise bad("withholds something that is not a sha256")
    if doc["manifest_sha256"] not in objects:
        raise bad("does not place its manifest")
    return doc


class Located:
    """What the loader asks of where it reads (the store's `_StoreSource` answers the same):
    the version, its samples' places, what is withheld, the runs read."""

    source = ""

    def __init__(self, ref: str, doc: dict[str, Any], where: str) -> None:
        self.ref, self.where = ref, where
        self.manifest_sha: str = doc["manifest_sha256"]
        self.objects: dict[str, list[Any]] = doc["objects"]
        self.withheld_at_publish = {bytes.fromhex(h) for h in doc["withheld"]}
        self.unshown: set[bytes] = set()  # found gone since the publish (the mount)

    def manifest(self) -> card.Samples:
        """The version's samples, from the manifest's own place, its sha256 checked."""
        rec = self._rec(bytes.fromhex(self.manifest_sha))
        data = self.read_one(rec, self.objects[self.manifest_sha][3])
        if data is None or hashlib.sha256(data).hexdigest() != self.manifest_sha:
            raise RemoteLoaderError(f"the manifest of {self.ref} ({self.manifest_sha[:16]}…) cannot be read whole "
                                    f"through {self.where}: publish it again on the store's server (`hoard dataset "
                                    f"publish {self.ref}`)", ExitCode.DATA)
        try:
            samples = card.Samples.of_manifest(data)  # (each sha256 read as one: the plan needs it)
            if len(samples):  # (a manifest's lines all have one shape: its first and last are built whole)
                _ = samples[0], samples[-1]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # (UnicodeDecodeError: a ValueError)
            raise RemoteLoaderError(f"the object {self.manifest_sha[:16]}… the locator of {self.ref} names as its "
                                    "manifest is not a dataset manifest: publish it again on the store's server "
                                    f"(`hoard dataset publish {self.ref}`)", ExitCode.DATA) from None
        return samples

    def _rec(self, sha: bytes) -> Rec:
        shard, offset, length, _labels, _ext = self.objects[sha.hex()]
        return Rec(sha, offset, length)

    def locs(self, shas: Sequence[bytes]) -> dict[bytes, Loc]:
        out = {}
        for h in shas:
            place = self.objects.get(h.hex())
            if place is not None:
                out[h] = Loc(bytes.fromhex(place[0]), place[1], place[2])
        return out

    def withheld(self, shas: Sequence[bytes]) -> set[bytes]:
        return self.withheld_at_publish | self.unshown

    def since(self) -> tuple[Callable[[], int], int | None]:
        """No index to look at (`_StoreSource.since`): `live` is asked of every sample."""
        return int, None

    def live(self, sha: bytes) -> bool:
        return sha not in self.withheld_at_publish and sha not in self.unshown

    def read_one(self, rec: Rec, labels: list[str]) -> bytes | None:
        raise NotImplementedError

    def read_runs(self, runs: Sequence[Run], ahead: int = AHEAD) -> Generator[RunRead, None, None]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what reading holds open (the S3 disks' connections); reading again reopens it."""


# -- S3 ----------------------------------------------------------------------------------------

def _open_s3(host: LoaderHost, label: str, uuid: str | None = None) -> Any:
    """This host's S3 disk `label`: its bucket checked to be that hoardfs disk (its identity),
    or, given the `uuid` that check found, opened as that disk without asking again."""
    from hoardfs.fsd.core.s3 import S3Disk  # deferred: boto3 is loaded only where an S3 disk is read

    dc = next((d for d in host.disks if d.kind == "s3" and d.label == label), None)
    if dc is None:
        raise RemoteLoaderError(f"S3 disk {label}: {host.source} declares no such disk: add its [[disks]] table "
                                "(kind = \"s3\") on this host")
    if dc.path is None:  # (a host has no SSD: its S3 disks stage nothing, it reads sealed objects)
        dc = dc.model_copy(update={"path": _NO_STAGING / dc.label})
    if uuid is not None:
        return S3Disk.configured(dc, uuid)
    probe = S3Disk.configured(dc)
    try:
        ident = probe.read_identity()  # (an engine that does not answer: EngineError, one line)
    finally:
        _close_s3(probe)
    if ident is None or ident.get("label") != dc.label:
        raise RemoteLoaderError(f"disk {dc.label}: bucket {dc.bucket} at {dc.endpoint} is not that hoardfs disk (its "
                                f"identity: {ident and ident.get('label')}); correct disks.bucket in {host.source}")
    return S3Disk.configured(dc, str(ident["uuid"]))


def _close_s3(disk: Any) -> None:
    """Close what an S3 disk of the loader holds open — its ranged GETs' connection pool and its
    boto3 client's — now, not whenever the cyclic collector reaches them (the client is part of
    reference cycles): each is a socket, a file descriptor of the training process."""
    disk._pool.clear()
    disk.client.close()


class S3Located(Located):
    """The version read through this host's S3 disks (the module's docstring)."""

    source = "s3"

    def __init__(self, host: LoaderHost, ref: str) -> None:
        s3 = [d.label for d in host.disks if d.kind == "s3"]
        label = host.loader.disk or (s3[0] if s3 else None)
        if label is None:
            raise RemoteLoaderError(f"[loader] source = \"s3\" in {host.source}, which declares no S3 disk: add the "
                                    "[[disks]] table (kind = \"s3\") of the store's S3 disk holding the locators",
                                    ExitCode.USAGE)
        #: the S3 disks read, by label, while open (`_disk`; `close` closes them); `_uuids`: the
        #: identity each was checked to have, so a disk closed and opened again is not asked again
        self.disks: dict[str, Any] = {}
        self._uuids: dict[str, str] = {}
        self._lock = threading.Lock()
        self.host = host
        try:
            self._init(host, ref, label, s3)
        except BaseException:
            self.close()
            raise

    def _init(self, host: LoaderHost, ref: str, label: str, s3: list[str]) -> None:
        home = self._disk(label)
        ref = self._resolve(home, ref)
        where = f"s3://{home.bucket}/loaders/{ref}.json"
        try:
            raw = home.get_published(f"{ref}.json", LOCATOR_MAX)
        except ValueError as e:  # (larger than LOCATOR_MAX: not read)
            raise _too_large(where, ref, str(e)) from None
        if raw is None:
            raise RemoteLoaderError(f"no locator of {ref} in bucket {home.bucket} (S3 disk {label}): publish it on the "
                                    f"store's server (`hoard dataset publish {ref}`)")
        super().__init__(ref, _checked(raw, where, ref), f"S3 disk {label}")
        for other in sorted({x for p in self.objects.values() for x in p[3]} & set(s3) - {label}):
            self._disk(other)  # (each checked now: a wrong bucket is one line before a byte is read)

    def _disk(self, label: str) -> Any:
        """This host's S3 disk `label`, open (opened again after a `close`)."""
        with self._lock:  # (the readers of several disks fall back to others at once)
            disk = self.disks.get(label)
            if disk is None:
                disk = self.disks[label] = _open_s3(self.host, label, self._uuids.get(label))
                self._uuids[label] = disk.uuid
            return disk

    @staticmethod
    def _resolve(disk: Any, ref: str) -> str:
        """`NAME@N` as given; `NAME` alone: the highest version published in the bucket."""
        if "@" in ref:
            return ref
        found = [n[:-5] for n in disk.published_names(f"{ref}@") if n.endswith(".json") and _REF.fullmatch(n[:-5])]
        if not found:
            raise RemoteLoaderError(f"no version of dataset {ref} is published in bucket {disk.bucket}: publish one on "
                                    f"the store's server (`hoard dataset publish {ref}@N`)")
        return max(found, key=lambda r: int(r.rpartition("@")[2]))

    def _here(self, labels: list[str]) -> list[Any]:
        return [self._disk(x) for x in labels if x in self._uuids]

    def _missing(self, rec: Rec, labels: list[str]) -> RemoteLoaderError:
        return RemoteLoaderError(f"object {rec.sha.hex()} of {self.ref} lies on S3 disk(s) {', '.join(labels) or 'none'}"
                                 f", none of which {self.host.source} declares: add its [[disks]] table (kind = \"s3\") "
                                 "on this host")

    def read_one(self, rec: Rec, labels: list[str]) -> bytes | None:
        disks = self._here(labels)
        if not disks:
            raise self._missing(rec, labels)
        return self._fallback(rec, self.objects[rec.sha.hex()][0], disks)

    def _fallback(self, rec: Rec, shard_hex: str, disks: list[Any], tried: Any = None,
                  err: Exception | None = None) -> bytes:
        """The record from the first of `disks` (not `tried`, which failed with `err`) that gives
        it whole and checked; RemoteLoaderError (one line) when none does, its next step the
        failures': a shard not in any bucket (gc) — publish again; an engine that does not
        answer — start it and resume; a record that does not check — `hoard verify`."""
        why, kinds = (first_line(err), {_kind(err)}) if err is not None else ("", set())
        for disk in disks:
            if disk is tried:
                continue
            where = f" (shard {shard_hex} on S3 disk {disk.label})"
            try:
                buf = disk.read_exact(shard_hex, rec.offset - fmt.RECORD_HEADER_SIZE,
                                      fmt.RECORD_HEADER_SIZE + rec.length)
                return verify_record(memoryview(buf), 0, rec.sha, rec.length, where)
            except (fmt.ShardFormatError, OSError) as e:  # (EngineError is an OSError: DiskGone)
                why = first_line(e)
                kinds.add(_kind(e))
                log.warning("loader: record %s…%s cannot be used (%s); trying another S3 disk", rec.sha.hex()[:12],
                            where, why)
        head = f"object {rec.sha.hex()} of {self.ref}: no S3 disk of this host gives its record in shard {shard_hex} "
        if "data" not in kinds and "engine" in kinds:
            raise RemoteLoaderError(head + f"({why}); start the S3 engine (or correct this host's [[disks]] table "
                                    f"in {self.host.source}), then resume from the loader's state_dict()")
        raise RemoteLoaderError(
            head + f"whole ({why}); " + (
                "the shard is not in the bucket: the store moved or dropped it since the publish (gc) — "
                f"publish again on the store's server (`hoard dataset publish {self.ref}`)" if kinds <= {"gone"} else
                "run `hoard verify` on the store's server (it repairs the replica), then resume; if it finds the "
                f"replica sound, the locator places the object wrongly: publish it again (`hoard dataset publish "
                f"{self.ref}`)"),
            ExitCode.DATA)

    def _assign(self, runs: Sequence[Run]) -> list[str]:
        """The S3 disk each run is read from: of this host's disks holding its shard, the one with
        the fewest bytes given so far (ties: the label) — the store's balance, by bytes."""
        load: dict[str, int] = {}
        out = []
        for run in runs:
            rec = run.records[0]
            labels = self.objects[rec.sha.hex()][3]
            here = [x for x in labels if x in self._uuids]
            if not here:
                raise self._missing(rec, labels)
            best = min(here, key=lambda x: (load.get(x, 0), x))
            load[best] = load.get(best, 0) + run.size
            out.append(best)
        return out

    def read_runs(self, runs: Sequence[Run], ahead: int = AHEAD) -> Generator[RunRead, None, None]:
        return read_assigned(self._assign(runs), lambda i, label: self._read_run(i, runs[i], label), ahead)

    def _read_run(self, number: int, run: Run, label: str) -> RunRead:
        disk = self._disk(label)
        shard_hex = run.shard_id.hex()
        out = RunRead(number, {}, label)
        failed = read_checked(disk, shard_hex, disk_ranges(disk, run.records), f"S3 disk {label}", out,
                              "another S3 disk")
        for r, why in failed:
            labels = self.objects[r.sha.hex()][3]
            out.payloads[r.sha] = self._fallback(r, shard_hex, self._here(labels), disk, why)
            out.fallbacks += 1
        return out

    def __getstate__(self) -> dict[str, Any]:
        """As pickled: no disk open (the other process opens its own as it reads)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("disks", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, disks={}, _lock=threading.Lock())

    def close(self) -> None:
        """Close the S3 disks opened (their sockets); a later read opens them again."""
        with self._lock:
            disks, self.disks = list(self.disks.values()), {}
        for disk in disks:
            _close_s3(disk)


# -- the mount ---------------------------------------------------------------------------------

class MountLocated(Located):
    """The version read through a hoard mount (the module's docstring)."""

    source = "mount"

    def __init__(self, host: LoaderHost, ref: str) -> None:
        root = host.loader.mount or host.mount.path
        if root is None:
            raise RemoteLoaderError(f"[loader] source = \"mount\" in {host.source} names no mount: set [loader] mount "
                                    "(or [mount] path) to the hoard mount's path", ExitCode.USAGE)
        self.root, self.timeout = root, host.loader.timeout_s
        try:
            shown = self._within(lambda: (root / "by-hash").is_dir() and (root / ".hoard").is_dir(), root)
        except OSError as e:  # (a mount whose daemon is gone: ENOTCONN)
            raise _mount_error(root, e) from None
        if not shown:
            raise RemoteLoaderError(f"{root}: not a hoard mount (no by-hash/ and .hoard/ there): mount the store there "
                                    "(`hoard mount PATH`), or correct [loader] mount", ExitCode.UNAVAILABLE)
        folder = host.loader.locators
        if folder is None:
            raise RemoteLoaderError(f"[loader] source = \"mount\" in {host.source} names no locators directory: set "
                                    "[loader] locators to where `hoard dataset publish NAME@N --dir DIR` writes",
                                    ExitCode.USAGE)
        if "@" not in ref:
            found = [p.stem for p in folder.glob(f"{ref}@*.json") if _REF.fullmatch(p.stem)]
            if not found:
                raise RemoteLoaderError(f"no version of dataset {ref} is published in {folder}: publish one on the "
                                        f"store's server (`hoard dataset publish {ref}@N --dir {folder}`)")
            ref = max(found, key=lambda r: int(r.rpartition("@")[2]))
        path = folder / f"{ref}.json"
        try:
            raw = _read_locator(path, ref)
        except FileNotFoundError:
            raise RemoteLoaderError(f"{path}: no locator of {ref} there: publish it on the store's server (`hoard "
                                    f"dataset publish {ref} --dir {folder}`)") from None
        except OSError as e:
            raise RemoteLoaderError(f"{path}: cannot read the locator of {ref} ({e.strerror})") from None
        super().__init__(ref, _checked(raw, str(path), ref), f"the mount {root}")

    def path(self, sha: bytes) -> Path:
        h = sha.hex()
        ext = self.objects[h][4]
        return self.root / "by-hash" / h[:2] / h[2:4] / (h + (f".{ext}" if ext else ""))

    def _within(self, call: Callable[[], T], path: Path) -> T:
        """`call()` in a thread of its own, given `timeout` seconds ([loader] timeout_s): a mount
        whose daemon is stopped or stuck answers nothing, and a read of it waits in the kernel
        for as long — RemoteLoaderError (one line) then, the thread left to its read (a daemon
        thread: it ends once the mount answers or goes)."""
        got: list[Any] = []

        def run() -> None:
            try:
                got.append((True, call()))
            except BaseException as e:  # handed to the caller
                got.append((False, e))

        t = threading.Thread(target=run, name="loader-mount", daemon=True)
        t.start()
        t.join(self.timeout)
        if not got:
            raise self._stuck(path)
        ok, value = got[0]
        if not ok:
            raise value
        return cast(T, value)

    def _stuck(self, path: Path) -> RemoteLoaderError:
        return RemoteLoaderError(f"{path}: the hoard mount gave nothing for {self.timeout:g} s ([loader] timeout_s): "
                                 "its daemon is stopped or stuck — see `hoard health` on the store's server, or mount "
                                 "it again, then resume from the loader's state_dict()")

    def read_one(self, rec: Rec, labels: list[str]) -> bytes | None:
        return self._within(lambda: self._read_file(rec), self.path(rec.sha))

    def _read_file(self, rec: Rec) -> bytes | None:
        """The object's by-hash file, its sha256 checked; None when the mount does not show it."""
        path = self.path(rec.sha)
        try:
            with open(path, "rb", buffering=0) as f:  # (unbuffered: no isatty round trip, docs/mount.md)
                data = f.read(rec.length + 1)  # (more than the record's length: not its object)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _mount_error(path, e) from None
        if len(data) != rec.length or hashlib.sha256(data).digest() != rec.sha:
            raise RemoteLoaderError(f"{path}: its bytes are not object {rec.sha.hex()} ({len(data)} bytes read); "
                                    "`hoard health` on the store's server says why", ExitCode.DATA)
        return data

    def read_runs(self, runs: Sequence[Run], ahead: int = AHEAD) -> Generator[RunRead, None, None]:
        return read_assigned(["mount"] * len(runs), lambda i, _u: self._read_run(i, runs[i]), ahead)

    def _read_run(self, number: int, run: Run) -> RunRead:
        """The run's files, MOUNT_STREAMS at once in daemon threads (`_within`'s reason); one that
        gives nothing for `timeout` seconds stops it in one line."""
        out = RunRead(number, {}, "mount")
        todo, done = deque(enumerate(run.records)), queue.Queue[tuple[int, bool, Any]]()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    j, rec = todo.popleft()
                except IndexError:
                    return
                try:
                    done.put((j, True, self._read_file(rec)))
                except BaseException as e:  # handed to the run's reader
                    done.put((j, False, e))

        for _ in range(min(MOUNT_STREAMS, len(run.records))):
            threading.Thread(target=work, name="loader-mount", daemon=True).start()
        datas: list[bytes | None] = [None] * len(run.records)
        try:
            for _ in run.records:
                try:
                    j, ok, value = done.get(timeout=self.timeout)
                except queue.Empty:
                    raise self._stuck(self.root) from None
                if not ok:
                    raise value
                datas[j] = value
        finally:
            stop.set()
        for r, data in zip(run.records, datas, strict=True):
            if data is None:  # not shown by the store any more: deleted since the publish, or collected
                self.unshown.add(r.sha)
                out.unshown.append(r.sha)
                continue
            out.payloads[r.sha] = data
            out.nbytes += len(data)
        return out


def _read_locator(path: Path, ref: str) -> bytes:
    """The locator file's bytes: a regular file of at most LOCATOR_MAX bytes (a FIFO, a device or
    a larger file is refused in one line before a byte of it is read; OSError as open raises it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # (a FIFO: no wait for a writer)
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RemoteLoaderError(f"{path}: not a regular file, so no locator of {ref}: publish it on the store's "
                                    f"server (`hoard dataset publish {ref} --dir DIR`)", ExitCode.DATA)
        if st.st_size > LOCATOR_MAX:
            raise _too_large(str(path), ref, f"{st.st_size} bytes")
        raw = f.read(LOCATOR_MAX + 1)
    if len(raw) > LOCATOR_MAX:  # (grown since the fstat)
        raise _too_large(str(path), ref, f"more than {LOCATOR_MAX} bytes")
    return bytes(raw)


def _too_large(where: str, ref: str, size: str) -> RemoteLoaderError:
    return RemoteLoaderError(f"the locator of {ref} at {where} holds {size}, more than a locator may ({LOCATOR_MAX} "
                             f"bytes): not read — publish it again on the store's server (`hoard dataset publish "
                             f"{ref}`)", ExitCode.DATA)


def _mount_error(path: Path, e: OSError) -> RemoteLoaderError:
    """A read through the mount that failed: a mount whose daemon is gone (ENOTCONN, ECONNABORTED)
    named as such, with its next step; any other error with `hoard health`."""
    if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        return RemoteLoaderError(f"{path}: the hoard mount does not answer ({e.strerror}): its daemon is gone — "
                                 "`hoard umount --lazy MOUNTPOINT` and `hoard mount MOUNTPOINT` again, then resume "
                                 "from the loader's state_dict()")
    return RemoteLoaderError(f"{path}: cannot be read through the mount ({e.strerror}); `hoard health` on the "
                             "store's server says why", ExitCode.DATA)


def open_located(host: LoaderHost, ref: str, source: str) -> Located:
    """The version `ref` read through `source` ("s3" or "mount") as `host` configures it."""
    if source == "s3":
        return S3Located(host, ref)
    return MountLocated(host, ref)
