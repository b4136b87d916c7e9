"""Which registered manifests name an object, without reading every manifest (`hoard info`).

Reading every batch and view manifest to find one object's paths costs what the store holds
(50 manifests and 1 M entries at 1 M objects, 500 and 10 M at 10 M). A manifest is an object:
its sha256 names bytes that never change, so what it names can be kept beside it once, for
good — a *members file*, `<ssd.root>/state/members/<manifest sha256>.bin`:

    MembersFile = Magic "HMEMBRS1" (8 B) || Count u64 LE || Prefix[Count] (8 B each)

each Prefix the first 8 bytes of the sha256 of a file the manifest names, sorted ascending
(bytewise), without repeats. *Reason for 8 bytes*: 8 B per manifest entry on the SSD, and a
prefix shared by two objects (1 in 2^64 per pair) costs nothing but a read of that manifest,
whose entries are then compared whole — a members file only says which manifests to read.

A lookup is then one binary search per registered manifest (an open, an mmap, ~20 page
reads) and a read of the manifests that hold the object (usually one or two).

Written tmp → fsync → rename (fsd.base.files.atomic_write): a file there is whole; one whose
size does not match its count is not trusted and written again. Made when a batch or view is
registered (`remember`: the ingest's package step, view define) and, for a manifest without
one (registered before this existed, or its write failed), by the first lookup that meets it.
Nothing here is a source of truth: deleting the folder costs one read of every manifest at the
next lookup. `remember` removes the files of manifests no longer registered.
"""

from __future__ import annotations

import array
import bisect
import logging
import mmap
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from fsd.base.errors import HoardError
from fsd.base.files import atomic_write
from fsd.outputs.manifest import iter_files, named

__all__ = ["FOLDER", "MAGIC", "holding", "remember"]

log = logging.getLogger(__name__)

#: under ssd.root
FOLDER = Path("state") / "members"
MAGIC = b"HMEMBRS1"
_HEAD = struct.Struct("<8sQ")
PREFIX = 8


def _path(store, manifest_hex: str) -> Path:
    return store.cfg.ssd.root / FOLDER / f"{manifest_hex}.bin"


def _body(shas: Iterable[bytes]) -> bytes:
    """The members file of the files `shas`. The prefixes are sorted as big-endian integers
    (their bytewise order) in an array: ~40 B per entry while it is made, not a set of bytes."""
    prefixes = array.array("Q", sorted(set(int.from_bytes(sha[:PREFIX], "big") for sha in shas)))
    if sys.byteorder == "little":
        prefixes.byteswap()
    return _HEAD.pack(MAGIC, len(prefixes)) + prefixes.tobytes()


def _write(store, manifest_hex: str, body: bytes) -> None:
    """Keep a members file; a store whose SSD this process may not write (a read-only user)
    or that is full only loses the shortcut."""
    path = _path(store, manifest_hex)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, body)
    except OSError as e:
        log.debug("members file %s not written: %s", path, e)


def _build(store, manifest_hex: str) -> bytes:
    return _body(sha for _path_, sha, _size in iter_files(store.get, manifest_hex))


class _Sorted:
    """The prefixes of a members file as a sequence `bisect` can search (read from the map)."""

    def __init__(self, buf, count: int) -> None:
        self.buf, self.count = buf, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> bytes:
        at = _HEAD.size + i * PREFIX
        return self.buf[at:at + PREFIX]


def _has(buf, prefix: bytes) -> bool | None:
    """Whether the members file `buf` holds `prefix`; None if `buf` is no whole members file."""
    if len(buf) < _HEAD.size:
        return None
    magic, count = _HEAD.unpack_from(buf)
    if magic != MAGIC or len(buf) != _HEAD.size + count * PREFIX:
        return None
    seq = _Sorted(buf, count)
    i = bisect.bisect_left(seq, prefix)
    return i < count and seq[i] == prefix


def _may_hold(store, manifest_hex: str, prefix: bytes) -> bool:
    """Whether the manifest may name an object with this prefix (its members file says; made
    now if it has none or a damaged one)."""
    path = _path(store, manifest_hex)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size >= _HEAD.size:
                with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
                    got = _has(buf, prefix)
                if got is not None:
                    return got
    except FileNotFoundError:
        pass
    body = _build(store, manifest_hex)
    _write(store, manifest_hex, body)
    return bool(_has(body, prefix))


def holding(store, sha: bytes) -> Iterator[tuple[str, str, dict]]:
    """("batch" | "view", name, info) of each registered manifest that may name `sha` — all
    that do, and (1 in 2^64 per entry) one that only names an object of the same prefix: the
    caller reads those and compares whole sha256s. A manifest that cannot be read is yielded
    (its reader reports it as it would have)."""
    prefix = sha[:PREFIX]
    for kind, name, info in named(store.index):
        try:
            hit = _may_hold(store, info["manifest"], prefix)
        except HoardError:
            hit = True  # unreadable: the caller meets the same error reading it
        if hit:
            yield kind, name, info


def remember(store, manifest_hex: str, shas: Iterable[bytes] | None = None) -> None:
    """Write the members file of a manifest just registered — from `shas`, the files it names,
    when the caller has them, else read back from the store (its objects are in the page
    cache) — and remove those of manifests no longer registered. Never fails the
    registration: a members file missing is made by the next lookup."""
    try:
        if _has(_read(_path(store, manifest_hex)), b"") is None:
            _write(store, manifest_hex, _build(store, manifest_hex) if shas is None else _body(shas))
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
