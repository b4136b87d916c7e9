"""Where an object is in the registered manifests, without reading every manifest (`hoard info`).

Reading every batch and view manifest to find one object's paths costs what the store holds
(50 manifests and 1 M entries at 1 M objects, 500 and 10 M at 10 M). A manifest is an object:
its sha256 names bytes that never change, so where it holds what can be kept beside it once,
for good — a *members file*, `<ssd.root>/state/members/<manifest sha256>.bin`:

    MembersFile = Header || Pair[Count] || Place[Places] || Paths
    Header      = Magic "HMEMBRS1" (8 B) || Count u64 LE || Places u64 LE || PathsLength u64 LE
    Pair        = Prefix (8 B) || Place index u32 BE        (sorted bytewise, no repeats)
    Place       = object sha256 (32 B) || path offset u64 LE || path length u32 LE
    Paths       = the places' directory paths, UTF-8, one after another

Prefix is the first 8 bytes of the sha256 of a file the manifest names; its Place the object
whose entries hold it — the manifest itself for a batch (one document), a directory object or
page of a view's tree — with that directory's path ("a/b/"). *Reason for 8 bytes*: 12 B per
entry on the SSD, and a prefix two objects share (1 in 2^64 per pair) only costs a read of a
place whose entries are then compared whole: a members file says where to look, never what is
there. A lookup is one binary search per registered manifest that the index's `held` table says
names the object (every registered manifest on an index before format 5: an open, an mmap,
~20 page reads each) and a read of the objects holding the object: a batch's manifest, or one page (at most
4,096 entries) of a view of any size.

Written tmp → fsync → rename (a temporary name per writer): a file there is whole; one whose
size does not match its header is not trusted and written again. Made when a batch or view is
registered (`remember`: the ingest's package step, view define — a view's tree read back once)
and, for a manifest without one (registered before this existed, or its write failed), by the
first lookup that meets it. Nothing here is a source of truth: deleting the folder costs one
read of every manifest at the next lookup. `remember` removes the files of manifests no longer
registered.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hoardfs.base.errors import HoardError
from hoardfs.base.files import fsync_dir
from hoardfs.base.modes import FILE
from hoardfs.fsd.core.held import MAN
from hoardfs.fsd.outputs.manifest import files_in, iter_placed, named

__all__ = ["FOLDER", "MAGIC", "holding", "paths_in", "remember"]

log = logging.getLogger(__name__)

#: under ssd.root
FOLDER = Path("state") / "members"
MAGIC = b"HMEMBRS1"
_HEAD = struct.Struct("<8sQQQ")
_PAIR = struct.Struct(">QL")
_PLACE = struct.Struct("<32sQL")
PREFIX = 8


def _path(store, manifest_hex: str) -> Path:
    return store.cfg.ssd.root / FOLDER / f"{manifest_hex}.bin"


def _body(placed: Iterable[tuple[bytes, str, str]]) -> list[bytes]:
    """The members file of (sha256, object, directory path) triples, in pieces. Memory: the
    pairs sit in one array per first byte (12 B each; an object named twice in one place
    once), sorted a bucket at a time — ~120 MB for a view of 10 M distinct objects."""
    places: dict[tuple[str, str], int] = {}
    buckets = [(array.array("Q"), array.array("I")) for _ in range(256)]
    at, seen = -1, set[int]()
    for sha, obj, prefix in placed:
        here = places.setdefault((obj, prefix), len(places))
        if here != at:
            at, seen = here, set()
        key = int.from_bytes(sha[:PREFIX], "big")
        if key in seen:
            continue
        seen.add(key)
        keys, where = buckets[sha[0]]
        keys.append(key)
        where.append(at)
    pairs: list[bytes] = []
    count = 0
    for keys, where in buckets:
        run = sorted(set(zip(keys, where, strict=True)))
        count += len(run)
        pairs.append(b"".join(_PAIR.pack(k, w) for k, w in run))
    paths = [prefix.encode() for _obj, prefix in places]
    table, offset = [], 0
    for (obj, _prefix), path in zip(places, paths, strict=True):
        table.append(_PLACE.pack(bytes.fromhex(obj), offset, len(path)))
        offset += len(path)
    return [_HEAD.pack(MAGIC, count, len(places), offset), *pairs, *table, *paths]


def _write(store, manifest_hex: str, body: list[bytes]) -> None:
    """Keep a members file; a store whose SSD this process may not write (a read-only user)
    or that is full only loses the shortcut."""
    path = _path(store, manifest_hex)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary name of this writer's own (not atomic_write's one per file): two processes
        # making the same file never rename each other's half-written one into place
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, FILE)
        with os.fdopen(fd, "wb") as f:
            f.writelines(body)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        log.debug("members file %s not written: %s", path, e)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class _Prefixes:
    """The pairs' prefixes of a members file as a sequence `bisect` can search."""

    def __init__(self, buf, count: int) -> None:
        self.buf, self.count = buf, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:
        at = _HEAD.size + i * _PAIR.size
        return self.buf[at:at + PREFIX]


def _places(buf, prefix: bytes) -> list[tuple[str, str]] | None:
    """(object, directory path) of each place the members file `buf` names for `prefix`;
    None if `buf` is no whole members file."""
    if len(buf) < _HEAD.size:
        return None
    magic, count, n_places, paths_len = _HEAD.unpack_from(buf)
    table = _HEAD.size + count * _PAIR.size
    strings = table + n_places * _PLACE.size
    if magic != MAGIC or len(buf) != strings + paths_len:
        return None
    seq = _Prefixes(buf, count)
    out = []
    i = bisect.bisect_left(seq, prefix)
    while i < count and seq[i] == prefix:
        _key, at = _PAIR.unpack_from(buf, _HEAD.size + i * _PAIR.size)
        obj, offset, length = _PLACE.unpack_from(buf, table + at * _PLACE.size)
        out.append((obj.hex(), bytes(buf[strings + offset:strings + offset + length]).decode()))
        i += 1
    return out


def _lookup(store, manifest_hex: str, prefix: bytes) -> list[tuple[str, str]]:
    """The places of the manifest that may hold an object with this prefix (its members file
    says; made now if it has none or a damaged one)."""
    path = _path(store, manifest_hex)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size >= _HEAD.size:
                with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
                    got = _places(buf, prefix)
                if got is not None:
                    return got
    except OSError:  # none yet, or not this user's to read: made (and kept, if it may) here
        pass
    body = _body(iter_placed(store.get, manifest_hex))
    _write(store, manifest_hex, body)
    return _places(b"".join(body), prefix) or []


def paths_in(store, sha: bytes, places: list[tuple[str, str]]) -> list[str]:
    """The paths of `sha` in these places (of `holding`), reading only their objects; in the
    manifest's own order (a view's: component order, as `iter_files` walks it)."""
    found = [path for obj, prefix in places for path, s, _size in files_in(store.get, obj, prefix) if s == sha]
    return found if len(places) < 2 else sorted(found, key=lambda p: p.split("/"))


def holding(store, sha: bytes) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    """("batch" | "view", name, places) of each registered manifest that may name `sha`, with
    the (object, directory path) places to read — all that do, and (1 in 2^64 per entry) one
    that only names an object of the same prefix. Only the manifests the index's `held` table
    may mean for `sha` are looked up — those registered with a prefix its entries name (format
    5: one cursor positioning, whatever the number of batches); every registered one on an
    older index. A manifest that cannot be read is left
    out, as it was when every manifest was read (`hoard check` reports it)."""
    prefix = sha[:PREFIX]
    held = store.index.holders(sha)
    for kind, name, info in named(store.index):
        if held is not None and bytes.fromhex(info["manifest"])[:MAN] not in held:
            continue
        try:
            places = _lookup(store, info["manifest"], prefix)
        except HoardError:
            continue
        if places:
            yield kind, name, places


def remember(store, manifest_hex: str, shas: Iterable[bytes] | None = None) -> None:
    """Write the members file of a manifest just registered — from `shas`, the files a
    one-document manifest (a batch's) names, when the caller has them; else its tree read back
    from the store (its objects are in the page cache) — and remove those of manifests no
    longer registered. Never fails the registration: a members file missing is made by the
    next lookup."""
    try:
        if _places(_read(_path(store, manifest_hex)), b"") is None:
            placed = iter_placed(store.get, manifest_hex) if shas is None else \
                ((sha, manifest_hex, "") for sha in shas)
            _write(store, manifest_hex, _body(placed))
    except (HoardError, OSError) as e:
        log.warning("members file of manifest %s not written (the next `hoard info` makes it): %s",
                    manifest_hex, e)
    _prune(store)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _prune(store) -> None:
    """Remove the members files of manifests no registration names. The folder is listed before
    the registrations are read: a file made for a manifest is made after it was registered, so
    one listed here whose manifest is not among the registrations read after was unregistered."""
    folder = store.cfg.ssd.root / FOLDER
    try:
        files = [p for p in folder.iterdir() if p.suffix == ".bin"]
    except OSError:
        return
    live = {info["manifest"] for _kind, _name, info in named(store.index)}
    for p in files:
        if p.stem not in live:
            try:
                p.unlink()
            except OSError:
                pass
