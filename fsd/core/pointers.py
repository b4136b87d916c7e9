"""Batch and view pointers: `<disk>/batches/<id>.json` and `<disk>/views/<name>.json`.

A batch's or a view's manifest is an object in the store; its pointer is what lets `hoard
index rebuild` name it again with nothing but the HDDs (docs/design.md, "Batch and view
pointers"). The index keeps the exact bytes of every pointer it wrote (`pointers` table,
removal records included), stamped by Index.name_pointer with a monotonic `pointer_ns`; a
disk that missed some is brought up to them by Store.catch_up_pointers.

    body = encode({"manifest": sha, ...}, stamp)   # the file's bytes (JSON, with its checksum)
    doc = decode(read(path))                        # ValueError: not a pointer, or damaged
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from fsd.core import marks
from fsd.base.paths import NAME_PATTERN
from fsd.core.layout import BATCHES_DIR, VIEWS_DIR

#: the two folders, and what their entries are called in messages
KINDS = {BATCHES_DIR: "batch", VIEWS_DIR: "view"}
#: pointers at a disk's root, kept as the batches' and views' are: sql/backup.py's POINTER, the
#: newest database dump's object (`{sha256, size, taken_at, …}`), which names what to `hoard
#: get` once the SSD (index, database, zone 3B) is lost
DB_DUMP = ".hoard-db-dump.json"
ROOT_FILES = (DB_DUMP,)
#: a pointer is a few hundred bytes of JSON; a larger file is not one (read whole, a 200 GiB
#: sparse file planted there ended the rebuild with a MemoryError)
POINTER_MAX = 1 << 20
#: what a pointer carries besides the batch's or view's entry: its stamp, its checksum, and
#: its own path under the disk's root (under the checksum: a flipped bit in a file *name* —
#: b1.json → b3.json — once made a rebuild register a batch nobody made)
STAMP, CHECK, KEY = "pointer_ns", "check", "key"


def rel(folder: str, name: str) -> str:
    """The pointer's path under a disk's root (and its key in the index's `pointers` table)."""
    return f"{folder}/{name}.json"


def split(key: str) -> tuple[str, str]:
    """(folder, name) of a `rel` path."""
    folder, _, file = key.partition("/")
    return folder, file[:-len(".json")]


def describe(key: str) -> str:
    """What the pointer at `key` names, for a message: "batch b1", "view v", or its file."""
    folder, name = split(key)
    return f"{KINDS[folder]} {name}" if folder in KINDS else f"the pointer {key}"


def _digest(doc: dict) -> str:
    """The checksum of a pointer's content (everything but the checksum itself): a flipped bit
    in a manifest's hex or in the stamp still parses as a pointer, and must not win a rebuild."""
    plain = json.dumps({k: v for k, v in doc.items() if k != CHECK}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(plain.encode()).hexdigest()[:32]


def encode(info: dict | None, stamp: int, key: str = "") -> bytes:
    """The pointer file's bytes: `info` (None: a removal record, `{"removed": true}`) with its
    stamp, its path `key` (`rel`) and checksum."""
    doc = {k: v for k, v in (info or {"removed": True}).items() if k not in (STAMP, CHECK, KEY)}
    doc[STAMP] = stamp
    if key:
        doc[KEY] = key
    doc[CHECK] = _digest(doc)
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def read(path: Path) -> bytes:
    """A pointer's bytes; OSError(EINVAL) if it is not a regular file (a FIFO planted there
    would block a rebuild for good, a directory is not a pointer), ValueError if it is larger
    than POINTER_MAX."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        marks.regular(fd, path)
        with os.fdopen(fd, "rb", closefd=False) as f:
            body = f.read(POINTER_MAX + 1)
    finally:
        os.close(fd)
    if len(body) > POINTER_MAX:
        raise ValueError(f"larger than {POINTER_MAX} bytes: not a pointer")
    return body


def foreign_name(path: Path) -> bool:
    """Whether the file's name is none the store writes: not UTF-8 (no key of the index's
    `pointers` table: it once ended every writable open with a traceback once a disk holding
    one was behind), or in batches/ or views/ a name no batch or view can have
    (fsd.base.paths.NAME_PATTERN: `..`, spaces, shell characters — a rebuild registered such a
    file as a batch or view under a name `hoard view add` and ingest refuse)."""
    try:
        path.name.encode()
    except UnicodeEncodeError:
        return True
    # (a ROOT_FILES pointer sits at a disk's root, whatever that directory is called)
    return path.parent.name in KINDS and path.name not in ROOT_FILES and re.match(NAME_PATTERN, path.stem) is None


def shown(path: Path) -> str:
    """The path for a message: a name that is not UTF-8 with its odd bytes escaped (`\\udcff`),
    never written raw to a terminal or a log."""
    return str(path).encode("utf-8", "backslashreplace").decode()


def planted(path: Path) -> bool:
    """Whether something other than a regular file sits at a pointer's name (a directory, a
    FIFO, a link: not a pointer — a rebuild skips it, and it is left for a person to remove),
    or a file whose name is not UTF-8 (foreign_name)."""
    if foreign_name(path):
        return True
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def decode(body: bytes, key: str = "") -> dict:
    """A pointer's JSON object; ValueError unless it is one as `encode` writes it — a removal
    record, or (a batch's or view's: any `key` but a ROOT_FILES one) a manifest of 64 hex
    digits — with an integer `pointer_ns` and, when it has one, a checksum that matches (a
    pointer from before checksums has none)."""
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not a pointer's object")
    ns = doc.get(STAMP, 0)
    if not isinstance(ns, int) or isinstance(ns, bool):
        raise ValueError(f"pointer_ns is {ns!r}, not a time in nanoseconds")
    manifest = doc.get("sha256" if key in ROOT_FILES else "manifest")
    if not doc.get("removed") and not (isinstance(manifest, str) and marks.HEX64.fullmatch(manifest.encode())):
        raise ValueError(f"{'sha256' if key in ROOT_FILES else 'manifest'} is {manifest!r}, not a sha256 in hex")
    if CHECK in doc and doc[CHECK] != _digest(doc):
        raise ValueError("its checksum does not match its content (damaged)")
    if key and doc.get(KEY, key) != key:  # (a pointer from before the key: none to compare)
        raise ValueError(f"its content says it is {doc[KEY]!r}: a damaged or changed file name")
    return doc


def stamp_of(body: bytes) -> int:
    """The stamp of a pointer the index holds; one that does not decode (damage in the index,
    which `hoard check` names) counts as the newest: it is looked at again, never skipped."""
    try:
        return int(json.loads(body)[STAMP])
    except (ValueError, KeyError, TypeError):
        return 1 << 63


def entry(doc: dict) -> dict | None:
    """The batch's or view's entry a pointer names (None: a removal record)."""
    if doc.get("removed"):
        return None
    return {k: v for k, v in doc.items() if k not in (STAMP, CHECK, KEY)}
