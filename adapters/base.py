"""The adapter contract: a batch directory in, records and rejects out. No SQL, no store.

An adapter reads one scraped batch (a `BatchView`: the batch's clean files, already
screened for hostile names, empty files and escaping symlinks) and returns `Parsed`:

* `records` — one per metadata document about one node: the node it describes (a file
  of the batch or a virtual asset), the common fields, the source-specific fields, the
  document file it came from (stored whole; `raw_object` points at it) and edges;
* `rejects` — files it cannot use, each with a reason a person can act on;
* `claimed` — every file a record accounts for. Files nobody claims are rejected by the
  framework ("not described by any metadata"), so nothing is silently dropped.

Identity is deterministic (docs/adapters.md): a file is the sha256 of its bytes, a virtual
asset the sha256 of `virtual:<kind>:<source>:<stable id>` — the same author in two
batches is one node, and edges join up whatever order the batches arrive in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from hoardfs.base.paths import MAX_PATH_BYTES, hostile_reason

__all__ = ["MAX_PATH_BYTES", "hostile_reason"]  # re-exported: adapters check names with these

#: file names the framework owns, never handed to an adapter
SIGNAL_FILES = frozenset({"_READY"})
MEDIA_EXT = frozenset({
    "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "avif", "heic", "mp4", "webm", "mkv",
    "mov", "avi", "m4v", "mp3", "wav", "ogg", "flac", "m4a", "opus"})


@dataclass(frozen=True, slots=True)
class File:
    """A physical node: a file of the batch, by its relative path."""

    rel: str


@dataclass(frozen=True, slots=True)
class Asset:
    """A virtual node: `virtual:<kind>:<source>:<id>` (source is the batch's). The id is text
    taken from a scraped document: anything else is that document's fault (BadDocument)."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise BadDocument(f"a {self.kind} id must be non-empty text, found {_json_type(self.id)} {short(str(self.id))}")


Node = File | Asset


@dataclass
class Record:
    node: Node
    doc: str | None = None  # the batch file holding the original document
    raw: dict[str, Any] = field(default_factory=dict)  # the item's own document (trimmed to 1 KB in the DB)
    title: str | None = None
    view_count: int | None = None
    update_time: dt.datetime | None = None
    download_time: dt.datetime | None = None
    author: str | None = None
    user: str | None = None
    specific: dict[str, Any] = field(default_factory=dict)
    edges: list[tuple[Node, Node, str]] = field(default_factory=list)  # (parent, child, relationship)


@dataclass
class Reject:
    paths: list[str]
    reason: str


@dataclass
class Parsed:
    records: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)

    def claim(self, *rels: str | None) -> None:
        self.claimed.update(r for r in rels if r)

    def reject(self, reason: str, *rels: str) -> None:
        self.rejects.append(Reject(list(rels), reason))


@dataclass(frozen=True, slots=True)
class Rendition:
    """A file the ingest makes from a parsed record (`Adapter.render`) and stores as a child of
    the record's node: `name` (letters, digits, `_`, `-`, one extension) under `rendered/` in
    the batch, the edge's `relationship`, and labels the file gets (key → value)."""

    name: str
    data: bytes
    relationship: str
    labels: dict[str, str]


class BadDocument(ValueError):
    """A metadata document that cannot be read; the message says where it breaks."""


#: what reading a document of the wrong shape raises — a list where an object belongs
#: (AttributeError: 'list' object has no attribute 'get'), a number where text belongs
#: (TypeError, AttributeError), an object used as a key (TypeError: unhashable)
SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


@contextlib.contextmanager
def one_document(rel: str) -> Iterator[None]:
    """Read one scraped document inside this: a value of the wrong JSON type anywhere in it
    makes it a BadDocument naming the file and what was wrong, which the adapter rejects (the
    file goes to quarantine with that reason) while the rest of the batch goes on — scraped
    JSON is hostile, and one odd field must not fail the whole batch."""
    try:
        yield
    except BadDocument as e:
        raise BadDocument(str(e) if rel in str(e) else f"{rel}: {e}") from None
    except SHAPE_ERRORS as e:
        raise BadDocument(f"{rel}: a field holds the wrong type of JSON value ({type(e).__name__}: "
                          f"{short(str(e), 160)})") from None


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


class BatchView:
    """The clean files of one batch: relative POSIX paths → size."""

    def __init__(self, root: Path, files: dict[str, int]) -> None:
        self.root, self.files = root, files
        #: relative path → (device, inode, size, mtime_ns) as the screen saw the file (or the
        #: file an in-batch symlink named): the store step stores that file or none (hoardfs.fsd.io.put)
        self.identity: dict[str, tuple[int, int, int, int]] = {}
        self._media: dict[str, list[str]] | None = None

    def path(self, rel: str) -> Path:
        return self.root / rel

    def media_index(self) -> dict[str, list[str]]:
        """Media file name and stem → relative paths (built once per batch)."""
        if self._media is None:
            self._media = {}
            for rel in self.files:
                name = PurePosixPath(rel).name
                stem, ext = split_media(name)
                if ext in MEDIA_EXT:
                    self._media.setdefault(name, []).append(rel)
                    self._media.setdefault(stem, []).append(rel)
        return self._media

    def has(self, rel: str) -> bool:
        return rel in self.files

    def by_suffix(self, *suffixes: str) -> list[str]:
        return sorted(r for r in self.files if r.lower().endswith(suffixes))

    def read_bytes(self, rel: str) -> bytes:
        """The document `rel` as the screen saw it: the file opened must be that one (device and
        inode; for an in-batch link, its target's) and a regular file. Between the screen and
        the parse a scraper can swap a document for a link to a root-only file (the GUI's
        users.json): its text became the record's metadata, shown to every viewer."""
        fd = os.open(self.path(rel), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            seen = self.identity.get(rel)
            if not stat.S_ISREG(st.st_mode) or (seen is not None and (st.st_dev, st.st_ino) != tuple(seen[:2])):
                raise BadDocument(f"{rel} is not the file the scan saw (replaced since); drop it in a new batch")
            with open(fd, "rb", closefd=False) as fh:
                return fh.read()
        finally:
            os.close(fd)

    def read_json(self, rel: str) -> Any:
        raw = self.read_bytes(rel)
        try:
            return json.loads(raw)
        except JSON_ERRORS as e:
            raise BadDocument(f"{rel} {json_fault(e, raw)}") from None

    def read_jsonl(self, rel: str) -> list[Any]:
        out = []
        for n, line in enumerate(self.read_bytes(rel).splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except JSON_ERRORS as e:
                raise BadDocument(f"{rel} line {n} {json_fault(e, line)}") from None
        return out

    def ref(self, base: str, name: str) -> str:
        """A path named inside a document, relative to the document's directory, checked
        like the framework checks file names; BadDocument names what is wrong."""
        bad = hostile_reason(name)
        if bad:
            raise BadDocument(f"{base} names the file {short(name)}: {bad}")
        return str(PurePosixPath(base).parent / name) if "/" in base else name


def short(name: str, limit: int = 80) -> str:
    """A name for a message: quoted, cut to `limit` characters."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"… ({len(name)} characters)"


#: what json.loads raises on bytes it cannot take: JSONDecodeError and UnicodeDecodeError (both
#: ValueErrors), a plain ValueError for an integer past Python's digit limit (4,300), and
#: RecursionError for arrays or objects nested past the interpreter's — a scraped document
#: can be any of them, and each must reject that document, not end the batch's parse
JSON_ERRORS = (ValueError, RecursionError)


def json_fault(e: BaseException, raw: bytes) -> str:
    """Why json.loads refused `raw` (one of JSON_ERRORS), as the end of a sentence that names
    the document: "is truncated JSON: … at line 1 column 9"."""
    if isinstance(e, UnicodeDecodeError):
        return f"is not UTF-8 (byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        what = "truncated" if e.pos >= len(raw.rstrip()) else "malformed"
        return f"is {what} JSON: {e.msg} at line {e.lineno} column {e.colno}"
    if isinstance(e, RecursionError):
        return "is JSON nested deeper than can be read"
    return f"is JSON with a number of more than {sys.get_int_max_str_digits():,} digits"


class Adapter:
    """Base class of a format. Subclasses set `format` and implement `parse`."""

    format: ClassVar[str]
    description: ClassVar[str] = ""
    #: other names people write for this format (the scraper's own command name, e.g. `yt-dlp`);
    #: a batch signalled with one is recorded under `format`, so its assets keep one identity
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, source: str) -> None:
        self.source = source

    def parse(self, batch: BatchView) -> Parsed:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, record: dict[str, Any]) -> Rendition | None:
        """A file to make from a parsed record (its JSON form, `hoardfs.adapters.records.record_json`),
        or None. Run by the ingest job, not by the sandboxed parser (which may write nothing):
        it must check what it takes from the record, which that parser made from hostile
        bytes, and decode nothing (stroke data: hoardfs.adapters.strokes). ValueError if the record is
        not one `parse` makes."""
        return None


# -- helpers for adapters --------------------------------------------------------------------

def to_time(value: Any) -> dt.datetime | None:
    """Epoch seconds, `YYYYMMDD`, ISO 8601 or `YYYY-MM-DD HH:MM:SS` → aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        s = str(value).strip()
        if len(s) == 8 and s.isdigit():
            return dt.datetime.strptime(s, "%Y%m%d").replace(tzinfo=dt.UTC)
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


def to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        return None
    return n if n >= 0 else None


def text(value: Any, limit: int = 500) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s[:limit] if s else None


def specific_fields(doc: dict[str, Any], exclude: frozenset[str] = frozenset(), depth: int = 3,
                    max_list: int = 50) -> dict[str, Any]:
    """Flatten a document to `a.b.c` keys (up to `depth` levels) keeping scalars and short
    lists of scalars; lists of objects (formats, thumbnails …) stay in the raw object."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str, level: int) -> None:
        for k, v in d.items():
            if not isinstance(k, str) or (level == 1 and k in exclude) or k.startswith("__"):
                continue
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                if level < depth:
                    walk(v, key + ".", level + 1)
            elif isinstance(v, list):
                if len(v) <= max_list and all(isinstance(x, (str, int, float, bool)) for x in v):
                    out[key] = v
            elif v is not None:
                out[key] = v

    walk(doc, "", 1)
    return out


def split_media(name: str) -> tuple[str, str]:
    stem, _, ext = name.rpartition(".")
    return (stem, ext.lower()) if stem else (name, "")


def match_media(batch: BatchView, ids: list[str], urls: list[str]) -> list[str]:
    """Media files of the batch named `<id>.<ext>` or after a URL's last path segment —
    how API scrapers usually save attachments next to the responses."""
    wanted = [i for i in ids if i] + [os.path.basename(u.split("?")[0]) for u in urls if u]
    index = batch.media_index()
    return sorted({rel for name in wanted for rel in index.get(name, ())})
