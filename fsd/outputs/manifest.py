"""Manifests: the one place that reads them, and writes them (batch and view manifests).

A manifest names files: path → (sha256, size). Three formats are stored (all objects in
the store, JSON, UTF-8):

* `hoardfs-batch-manifest-1` — an ingested batch (`batch_manifest`, written by the ingest's
  package step into 3B and stored), one document with `"files": [{"path", "sha256", "size",
  "part"}]`, its metadata documents, its rejects and its write-intent;
* `hoardfs-view-1` — a view as one document (views defined before view-2; still read);
* `hoardfs-view-2` — a view as a tree of directory objects, so a view of 10 M entries is
  never one document in memory: a lookup loads one object per directory level (one more
  for a directory split into pages), a listing one directory. See docs/design.md
  ("View manifests") for the layout and a worked example;
* `hoardfs-view-3` (written now) — view-2 whose directory objects (`hoardfs-dir-2`) may
  hold a small directory inline, in its parent's object, instead of as an object of its
  own: a view of many tiny directories is a few objects, not one per directory.

    tree = Tree(store.get, info["manifest"])      # the mount; any format
    tree.list_dir("train/cats") / tree.lookup("train", "cats")
    for path, sha, size in iter_files(store.get, manifest_sha_hex): …   # streaming
    iter_placed / files_in(store.get, object, prefix)   # where each entry is; one object's files
    manifest_objects(store.get, manifest_sha_hex)   # the manifest's own objects (gc, check)
    build_view(store, name, rows)                   # rows: (path, sha256 hex), any order
    batch_manifest(batch_id, source, signalled, stored, parts, docs, rejected)   # the bytes

Past 500 lines, whole by design: it is the one module that knows the manifest formats, to
read and to write them, so a format changes in one place (the view tree's builder writes the
tree its reader walks) — but for `iter_files`, the walk of what a manifest names, which lives in
hoardfs.fsd.core.held (re-exported here): the index's migration and rebuild fill its `held` table with
it, below this layer.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import ssd_full, ssd_space
from hoardfs.base.modes import FILE
from hoardfs.base.paths import MAX_NAME_BYTES, hostile_reason, long_name
from hoardfs.fsd.core import formats
from hoardfs.fsd.core.held import iter_files, named
from hoardfs.fsd.core.layout import names_lock
from hoardfs.fsd.outputs import unreadable as unreadable_mod

__all__ = ["Entry", "Tree", "WouldBlock", "ViewError", "build_view", "files_in", "iter_files", "iter_placed",
           "manifest_objects", "named", "references", "References", "PAGE_ENTRIES", "VIEW_FORMAT", "DIR_FORMAT"]

VIEW_FORMAT = formats.VIEW_MANIFEST
DIR_FORMAT = formats.VIEW_DIR
#: the tree formats read (view-2's directory objects are dir-1: dir-2 without inline entries)
TREE_FORMATS = formats.VIEW_TREES
#: entries per directory object; a larger directory is split into pages of this many (an
#: inline directory counts with every entry it holds)
PAGE_ENTRIES = 4096
#: a directory holding at most this many entries (its inline ones' included) is written
#: inline in its parent's object, not as an object of its own
INLINE_ENTRIES = 16
#: memory for parsed directory objects in a Tree
CACHE_BYTES = 64 << 20

Get = Callable[[str], bytes]
#: pages a `_nowait` listing may fetch and parse itself (~1 ms each at PAGE_ENTRIES); a listing
#: missing more raises WouldBlock, for a worker thread
NOWAIT_PAGES = 2
#: an object's verified bytes only if they can be had without waiting for a disk, else None
GetNowait = Callable[[str], "bytes | None"]


class Entry(NamedTuple):
    name: str
    is_dir: bool
    sha: bytes | None  # a file's object (None for a directory)
    size: int  # a file's size; a directory's bytes below it (view-2) or 0
    files: int = 0  # a directory's files below it (view-2) or 0


class WouldBlock(Exception):
    """The answer needs a manifest object that is not loaded yet (load it off the trio thread)."""


class ViewError(HoardError):
    exit_code = ExitCode.USAGE


# -- reading ------------------------------------------------------------------------------------

class _Dir:
    """A parsed directory object: its entries (sorted), or the index of its pages. A
    directory written inline (dir-2 `"i"` entries) is a _Dir in `inline`, by name. The rows
    are kept as JSON parsed them and an Entry is made only for a row asked for: a lookup in
    a page not parsed yet (a shuffled first epoch) pays for the JSON, not for 4,096 Entries."""

    __slots__ = ("names", "rows", "firsts", "pages", "cost", "inline")

    def __init__(self, doc: dict, cost: int) -> None:
        self.cost = cost
        self.rows: list[list] = []
        self.names: list[str] = []
        self.firsts: list[str] = []
        self.pages: list[str] = []
        self.inline: dict[str, _Dir] = {}
        if "pages" in doc:
            for first, sha, _count in doc["pages"]:
                self.firsts.append(first)
                self.pages.append(sha)
        else:
            self.rows = doc["entries"]
            self.names = [e[0] for e in self.rows]
            for e in self.rows:
                if e[1] == "i":  # its entries are here; it has no object (sha None)
                    self.inline[e[0]] = _Dir({"entries": e[2]}, 0)

    @property
    def entries(self) -> list[Entry]:
        return [_entry(e) for e in self.rows]

    def find(self, name: str) -> Entry | None:
        i = bisect.bisect_left(self.names, name)
        return _entry(self.rows[i]) if i < len(self.names) and self.names[i] == name else None


def _entry(e: list) -> Entry:
    """A directory object's row as an Entry: `["name", "f", sha, size]`, `["name", "d", sha,
    size, files]`, `["name", "i", entries, size, files]`."""
    if e[1] == "f":
        return Entry(e[0], False, bytes.fromhex(e[2]), e[3])
    if e[1] == "d":
        return Entry(e[0], True, bytes.fromhex(e[2]), e[3], e[4])
    return Entry(e[0], True, None, e[3], e[4])


class Tree:
    """A manifest as directories, loaded lazily. `list_dir`/`lookup` may load objects
    (blocking: call them from a worker thread); the `_nowait` versions answer only from what
    is loaded — or, given `get_nowait`, can be fetched without waiting for a disk (a page in
    the page cache) — and raise WouldBlock otherwise. Thread-safe."""

    def __init__(self, get: Get, manifest_sha_hex: str, cache_bytes: int = CACHE_BYTES,
                 get_nowait: GetNowait | None = None) -> None:
        self.get, self.sha, self.get_nowait = get, manifest_sha_hex, get_nowait
        self.cache_bytes = cache_bytes
        self.lock = threading.RLock()
        self.kind: str | None = None  # "v2" or "flat"
        self.root: str | None = None  # v2: the root directory object's sha256
        self.flat: dict[str, list[Entry]] | None = None  # one-document formats
        self.objects: OrderedDict[str, _Dir] = OrderedDict()
        self.used = 0
        self.paths: OrderedDict[str, str | None] = OrderedDict()  # v2: dir path → object (None: not a dir)

    # -- loading ------------------------------------------------------------------------------
    def _head(self, block: bool) -> None:
        if self.kind is not None:
            return
        doc = json.loads(self._fetch(self.sha, block))
        formats.check_document(doc, f"the manifest {self.sha}")
        with self.lock:
            if self.kind is not None:
                return
            if doc.get("format") in TREE_FORMATS:
                self.root, self.kind = doc["root"], "v2"
            else:
                self.flat, self.kind = _flat_dirs(doc["files"]), "flat"

    def _dir(self, sha: str, block: bool) -> _Dir:
        """The directory `sha` names: an object's sha256, or `<sha256>/<name>/…` for a
        directory written inline in that object (a page's, for a split parent)."""
        if "/" in sha:
            holder, *names = sha.split("/")
            d = self._dir(holder, block)
            for name in names:
                d = d.inline[name]
            return d
        with self.lock:
            cached = self.objects.get(sha)
            if cached is not None:
                self.objects.move_to_end(sha)
                return cached
        raw = self._fetch(sha, block)
        d = _Dir(json.loads(raw), len(raw) * 4)
        with self.lock:
            if sha not in self.objects:
                self.objects[sha] = d
                self.used += d.cost
                while self.used > self.cache_bytes and len(self.objects) > 1:
                    _, old = self.objects.popitem(last=False)
                    self.used -= old.cost
        return d

    def _fetch(self, sha: str, block: bool) -> bytes:
        if block:
            return self.get(sha)
        raw = self.get_nowait(sha) if self.get_nowait is not None else None
        if raw is None:
            raise WouldBlock(sha)
        return raw

    def _find(self, dir_sha: str, name: str, block: bool) -> Entry | None:
        return self._find_in(dir_sha, name, block)[0]

    def _find_in(self, dir_sha: str, name: str, block: bool) -> tuple[Entry | None, str]:
        """The entry and the key (see `_dir`) of the directory or page that holds it."""
        d = self._dir(dir_sha, block)
        if d.pages:
            i = bisect.bisect_right(d.firsts, name) - 1
            if i < 0:
                return None, dir_sha
            dir_sha = d.pages[i]
            d = self._dir(dir_sha, block)
        return d.find(name), dir_sha

    def _dir_of(self, path: str, block: bool) -> str | None:
        """The v2 directory object of `path`, or None if it is not a directory."""
        with self.lock:
            if path in self.paths:
                self.paths.move_to_end(path)
                return self.paths[path]
        if path == "":
            found = self.root
        else:
            parent, _, name = path.rpartition("/")
            psha = self._dir_of(parent, block)
            e, holder = self._find_in(psha, name, block) if psha is not None else (None, "")
            found = None
            if e is not None and e.is_dir:
                found = e.sha.hex() if e.sha is not None else f"{holder}/{name}"
        with self.lock:
            self.paths[path] = found
            while len(self.paths) > 65536:
                self.paths.popitem(last=False)
        return found

    def _list(self, path: str, block: bool) -> list[Entry] | None:
        self._head(block)
        if self.kind == "flat":
            assert self.flat is not None  # set with the kind
            return self.flat.get(path)
        sha = self._dir_of(path, block)
        if sha is None:
            return None
        d = self._dir(sha, block)
        if not d.pages:
            return list(d.entries)
        if not block:
            with self.lock:
                missing = sum(1 for page in d.pages if page not in self.objects)
            if missing > NOWAIT_PAGES:  # parsing them all here would hold up the caller's other work
                raise WouldBlock(sha)
        out: list[Entry] = []
        for page in d.pages:
            out.extend(self._dir(page, block).entries)
        return out

    def _lookup(self, path: str, name: str, block: bool) -> Entry | None:
        self._head(block)
        if self.kind == "flat":
            assert self.flat is not None  # set with the kind
            kids = self.flat.get(path)
            if kids is None:
                return None
            i = bisect.bisect_left(kids, (name,))
            return kids[i] if i < len(kids) and kids[i].name == name else None
        sha = self._dir_of(path, block)
        return None if sha is None else self._find(sha, name, block)

    # -- the API ------------------------------------------------------------------------------
    def list_dir(self, path: str) -> list[Entry] | None:
        """The entries of directory `path` ("" is the top), sorted by name; None if `path`
        is not a directory of this manifest."""
        return self._list(path, True)

    def lookup(self, path: str, name: str) -> Entry | None:
        return self._lookup(path, name, True)

    def list_dir_nowait(self, path: str) -> list[Entry] | None:
        return self._list(path, False)

    def lookup_nowait(self, path: str, name: str) -> Entry | None:
        return self._lookup(path, name, False)


def _flat_dirs(files: list[dict]) -> dict[str, list[Entry]]:
    """A one-document manifest's files as directories: dir path → sorted entries."""
    children: dict[str, dict[str, Entry]] = {"": {}}
    for f in files:
        parts = f["path"].split("/")
        for i in range(1, len(parts)):
            parent, name = "/".join(parts[:i - 1]), parts[i - 1]
            children.setdefault(parent, {})[name] = Entry(name, True, None, 0)
            children.setdefault("/".join(parts[:i]), {})
        children.setdefault("/".join(parts[:-1]), {})[parts[-1]] = Entry(parts[-1], False,
                                                                         bytes.fromhex(f["sha256"]), int(f["size"]))
    return {d: sorted(kids.values()) for d, kids in children.items()}


#: the format of an ingested batch's manifest
BATCH_FORMAT = formats.BATCH_MANIFEST


def batch_manifest(batch_id: str, source: str, signalled: str, stored: dict[str, tuple[str, int]],
                   parts: dict[str, int], docs: Iterable[str], rejected: list) -> bytes:
    """An ingested batch's manifest (BATCH_FORMAT): `stored` path → (sha256 hex, size), `parts`
    path → its tar part in 3B, `docs` the paths of its metadata documents (each stored),
    `rejected` the scan's rejects. Sorted keys and paths: the same batch gives the same bytes."""
    doc = {"format": BATCH_FORMAT, "batch_id": batch_id, "source": source, "signalled": signalled,
           "files": [{"path": rel, "sha256": sha, "size": size, "part": parts[rel]}
                     for rel, (sha, size) in sorted(stored.items())],
           "metadata_documents": [{"path": d, "sha256": stored[d][0]} for d in sorted(docs)],
           "rejected": rejected, "intent": f"ingest:{batch_id}"}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def iter_placed(get: Get, manifest_sha_hex: str) -> Iterator[tuple[bytes, str, str]]:
    """(sha256, object, prefix) of every file a manifest names: the object whose entries hold
    it — the manifest itself for a one-document format, else a directory object or a page —
    and the path of that object's directory ("" or "a/b/"). `files_in(get, object, prefix)`
    reads that object alone (hoardfs.fsd.outputs.members keeps these places)."""
    doc = json.loads(get(manifest_sha_hex))
    formats.check_document(doc, f"the manifest {manifest_sha_hex}")
    if doc.get("format") not in TREE_FORMATS:
        for f in doc["files"]:
            yield bytes.fromhex(f["sha256"]), manifest_sha_hex, ""
        return
    yield from _walk_placed(get, doc["root"], "")


def _walk_placed(get: Get, dir_sha: str, prefix: str) -> Iterator[tuple[bytes, str, str]]:
    doc = json.loads(get(dir_sha))
    formats.check_document(doc, f"the directory object {dir_sha}")
    for obj in [p[1] for p in doc["pages"]] if "pages" in doc else [dir_sha]:
        entries = json.loads(get(obj))["entries"] if obj != dir_sha else doc["entries"]
        yield from _placed_entries(get, entries, prefix, obj, prefix)


def _placed_entries(get: Get, entries: list, prefix: str, obj: str, obj_prefix: str
                    ) -> Iterator[tuple[bytes, str, str]]:
    for e in entries:
        if e[1] == "f":
            yield bytes.fromhex(e[2]), obj, obj_prefix
        elif e[1] == "d":
            yield from _walk_placed(get, e[2], f"{prefix}{e[0]}/")
        else:  # inline: its files are in this object
            yield from _placed_entries(get, e[2], f"{prefix}{e[0]}/", obj, obj_prefix)


def files_in(get: Get, obj_sha_hex: str, prefix: str) -> Iterator[tuple[str, bytes, int]]:
    """(path, sha256, size) of the files whose entries one object holds (a place of
    `iter_placed`): a one-document manifest's files; a directory object's or page's entries
    and those of the directories inline in it — not the directories that are objects."""
    doc = json.loads(get(obj_sha_hex))
    if "files" in doc:
        for f in doc["files"]:
            yield f["path"], bytes.fromhex(f["sha256"]), int(f.get("size", 0))
    elif "entries" in doc:
        yield from _entries_here(doc["entries"], prefix)


def _entries_here(entries: list, prefix: str) -> Iterator[tuple[str, bytes, int]]:
    for e in entries:
        if e[1] == "f":
            yield prefix + e[0], bytes.fromhex(e[2]), e[3]
        elif e[1] == "i":
            yield from _entries_here(e[2], f"{prefix}{e[0]}/")


def manifest_objects(get: Get, manifest_sha_hex: str) -> list[bytes]:
    """The sha256 of every object the manifest itself is made of (the document; for view-2
    also every directory object and page), so gc keeps them and check can find them."""
    own: list[bytes] = []
    for _ in iter_files(get, manifest_sha_hex, own):
        pass
    return own


def references(store, among: set[bytes], skip: tuple[str, str] | None = None,
               unreadable: list[HoardError] | None = None) -> set[bytes]:
    """Which of `among` the registered manifests name — their files and their own objects —
    leaving out manifest `skip` = (kind, name). Memory for `among`, not for all they name.
    `unreadable` (References): a manifest that does not read is put there and skipped."""
    return References(store, skip, unreadable)(among)


class References:
    """Which of some digests the registered manifests name (files and the manifests' own
    objects), each manifest read at most once per instance however often it is asked (gc asks
    for its plan, then again under the exclusive lock for its swap). A manifest is an object:
    what it names is fixed by its sha256, so what it named stays true while it is registered;
    one registered since is read when asked next, and every manifest again for digests not
    asked before. Memory: what each manifest named among the digests asked, never all it names.

        refs = References(store)
        refs(tombstoned)            # reads every registered manifest
        refs(candidates)            # reads only manifests registered since (or all, for new digests)

    Every registered manifest is still read once: which manifests name an object is known
    only from them (docs/benchmarks.md, "Where hoardfs is behind")."""

    def __init__(self, store, skip: tuple[str, str] | None = None, unreadable: list[HoardError] | None = None) -> None:
        self.store, self.skip, self.unreadable = store, skip, unreadable
        self.whose: dict[str, tuple[str, str]] = {}  # manifest sha256 hex → (kind, name) registering it
        self.asked: set[bytes] = set()
        self.named: dict[str, set[bytes]] = {}  # manifest sha256 hex → what it names among `asked`
        self.reads = 0  # manifests read (a regression test counts them)

    def __call__(self, among: set[bytes]) -> set[bytes]:
        new = among - self.asked
        self.whose = {info["manifest"]: (kind, name) for kind, name, info in named(self.store.index)
                      if (kind, name) != self.skip}
        current = set(self.whose)
        for sha in set(self.named) - current:
            del self.named[sha]  # unregistered: it references nothing now
        everything = self.asked | new
        for sha in current:
            if sha not in self.named:
                self.named[sha] = self._read(sha, everything)
            elif new:
                self.named[sha] |= self._read(sha, new)
        self.asked = everything
        return set().union(*self.named.values()) & among

    def _read(self, manifest: str, among: set[bytes]) -> set[bytes]:
        """What of `among` the manifest names. One that does not read raises the error that
        names its step (hoardfs.fsd.outputs.unreadable: gc frees nothing then) — or, given a list
        `unreadable` (a deletion: its tombstones are requests, and gc reads every manifest
        again before it frees anything), is put there and names nothing here."""
        self.reads += 1
        own: list[bytes] = []
        reading = unreadable_mod.Reading(self.store)
        try:
            got = {sha for _path, sha, _size in iter_files(reading, manifest, own) if sha in among}
        except unreadable_mod.UNREADABLE as e:
            bad = unreadable_mod.judge(self.store, *self.whose[manifest], manifest, e, reading.last)
            if self.unreadable is None:
                raise bad from None
            self.unreadable.append(bad)
            return set()
        return got | (set(own) & among)


# -- writing a view-2 manifest ---------------------------------------------------------------------

#: path separator in sort keys: sorting "a\x01b" puts a directory's contents right after it
#: and before any sibling that merely starts with its name ("a.txt"), i.e. component order
_SEP = "\x01"
#: a sha256 in lowercase hex (what a view row names)
_HEX64 = re.compile("[0-9a-f]{64}")


#: how long `naming_lock` waits for another holder before it says so
NAMING_WAIT_S = 300.0


@contextlib.contextmanager
def naming_lock(store) -> Iterator[None]:
    """Held while a batch or view manifest is registered or unregistered together with the
    tombstones that follow from it (view define/remove, batch delete): a view defined while
    another is removed either is seen as a reference, or clears the tombstone after it."""
    path = names_lock(store.cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE)
    try:
        deadline = time.monotonic() + NAMING_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HoardError(f"another process has been registering or removing a batch or view for "
                                     f"{NAMING_WAIT_S:.0f} s ({path} is held; a disk that hangs while "
                                     "its pointers are written?); `hoard health` names a hung disk; then try again",
                                     ExitCode.UNAVAILABLE) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # the kernel drops the lock with its last descriptor


def build_view(store, name: str, rows: Iterable[tuple[str, str]], page_entries: int = PAGE_ENTRIES) -> dict:
    """Check and store a view-3 manifest from (path, sha256 hex) rows in any order; returns
    {manifest, files, bytes, objects: the manifest's own objects, file_objects: the distinct
    sha256s of its files}. Memory stays bounded whatever the number of rows: rows are
    spooled to a temporary file, sorted there (`sort`, only if they were not in order
    already), and directories are written bottom-up as they are completed."""
    sizes: dict[str, int] = {}  # each distinct object looked up once
    tmpdir = store.cfg.ssd.root / "state" / "tmp"
    what = f"view {name}: spooling its manifest in {tmpdir}"
    with ssd_space(store.cfg.ssd.root, what):
        tmpdir.mkdir(parents=True, exist_ok=True)
        spooled = tempfile.TemporaryDirectory(dir=tmpdir, prefix="view-")
    with spooled as tmp:
        spool = os.path.join(tmp, "rows")
        in_order, last = True, None
        with ssd_space(store.cfg.ssd.root, what, spool), open(spool, "w", encoding="utf-8", newline="\n") as out:
            for path, sha in rows:
                why = hostile_reason(path)
                if why:
                    raise ViewError(f"view {name}: path {path[:80]!r}: {why}")
                part = long_name(path)
                if part is not None:
                    raise ViewError(f"view {name}: path {path[:80]!r} has a name of {len(part.encode())} bytes "
                                    f"({part[:40]!r}…); at most {MAX_NAME_BYTES}, the file system's limit (a copy "
                                    "out of the mount could not create it) — shorten it in the manifest")
                size = sizes.get(sha)
                if size is None:
                    loc = None
                    if _HEX64.fullmatch(sha):
                        # a view wants its objects: a type-B tombstone on one is cleared
                        loc = store.index.lookup_keep(bytes.fromhex(sha))
                    if loc is None:
                        raise ViewError(f"view {name}: {path}: {sha[:64]!r} is not an object in the store")
                    size = sizes[sha] = loc.length
                key = path.replace("/", _SEP)
                if last is not None and key <= last:
                    in_order = False
                last = key
                out.write(f"{key}\t{sha}\t{size}\n")
        if not in_order:  # (its spill files go to `tmp` too)
            done = subprocess.run(["sort", "-t", "\t", "-k1,1", "-S", "256M", "-T", tmp, "-o", spool, spool],
                                  env={**os.environ, "LC_ALL": "C"}, capture_output=True, text=True)
            if done.returncode != 0:
                if "No space" in done.stderr:
                    raise ssd_full(store.cfg.ssd.root, what, done.stderr.strip())
                raise HoardError(f"view {name}: sorting the manifest in {tmpdir} failed: {done.stderr.strip()}",
                                 ExitCode.UNAVAILABLE)
        builder = _Builder(store, name, page_entries)
        with open(spool, encoding="utf-8", newline="\n") as f:
            root, files, total = builder.build(
                (key.split(_SEP), sha, int(size)) for key, sha, size in (line.rstrip("\n").split("\t") for line in f))
    if not files:  # e.g. `hoard select … --view | hoard view add NAME -` whose left side failed
        raise ViewError(f"view {name}: the manifest names no files; nothing changed (`hoard view rm {name}` "
                        "removes a view)")
    body = json.dumps({"format": VIEW_FORMAT, "name": name, "files": files, "bytes": total, "root": root},
                      sort_keys=True).encode()
    # the root goes in the last group of directory objects: one commit makes them all durable
    # before any is indexed, so the root is never acknowledged before a directory it names
    sha = builder.put_body(body)
    builder.flush()
    return {"manifest": sha, "files": files, "bytes": total, "objects": builder.written,
            "file_objects": list(sizes)}


class _Frame:
    """An open directory while a view is built."""

    __slots__ = ("name", "entries", "pages", "files", "bytes", "last", "weight")

    def __init__(self, name: str) -> None:
        self.name, self.files, self.bytes = name, 0, 0
        self.entries: list[Any] = []
        self.pages: list[Any] = []
        self.last: tuple[str, str] | None = None  # (name, kind) of the newest entry, across pages
        self.weight = 0  # entries in `entries`, each inline directory's counted with it


class _Builder:
    """Directories bottom-up from files in component order: a stack of open directories,
    each written (inline in its parent, as one object, or as pages plus a page index) when
    the walk leaves it. Objects are stored in groups (`flush`); the caller flushes the last."""

    #: directory objects are stored in batches of this many bytes (one group commit each)
    FLUSH_BYTES = 16 << 20

    def __init__(self, store, name: str, page_entries: int) -> None:
        self.store, self.name, self.page_entries = store, name, page_entries
        self.written: list[str] = []
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def _put(self, doc: dict) -> str:
        """A directory object's sha256; the object is stored with the next batch (`flush`)."""
        return self.put_body(json.dumps({"format": DIR_FORMAT, **doc}, separators=(",", ":"),
                                        ensure_ascii=False).encode())

    def put_body(self, body: bytes) -> str:
        sha = hashlib.sha256(body).hexdigest()
        self.written.append(sha)
        self.pending.append(body)
        self.pending_bytes += len(body)
        if self.pending_bytes >= self.FLUSH_BYTES:
            self.flush()
        return sha

    def flush(self) -> None:
        if self.pending:
            for res in self.store.put_bytes_many(self.pending, klass="generated"):
                if res.status not in ("new", "existing"):
                    raise HoardError(f"view {self.name}: a directory object could not be stored: {res.reason}",
                                     ExitCode.UNAVAILABLE)
            self.pending, self.pending_bytes = [], 0

    def build(self, rows: Iterator[tuple[list[str], str, int]]) -> tuple[str, int, int]:
        stack = [_Frame("")]  # the top, then the open directories of the current path
        prev: list[str] | None = None
        for comps, sha, size in rows:
            if comps == prev:
                raise ViewError(f"view {self.name}: path {'/'.join(comps)!r} appears twice")
            prev = comps
            common = 0  # open directories this path shares
            while common < len(stack) - 1 and common < len(comps) - 1 and stack[common + 1].name == comps[common]:
                common += 1
            while len(stack) - 1 > common:
                self._close(stack)
            for d in comps[common:-1]:
                if stack[-1].last == (d, "f"):  # in component order a file `a` comes right before `a/…`
                    raise ViewError(f"view {self.name}: path {'/'.join(comps[:len(stack)])!r} is a file, but "
                                    f"{'/'.join(comps)!r} needs it as a directory; rename one of them in the manifest")
                stack.append(_Frame(d))
            self._add(stack[-1], [comps[-1], "f", sha, size], 1, size)
        while len(stack) > 1:
            self._close(stack)
        root = stack[0]
        return self._finish(root), root.files, root.bytes

    def _add(self, frame: _Frame, entry: list, files: int, size: int, weight: int = 1) -> None:
        frame.entries.append(entry)
        frame.last = (entry[0], entry[1])
        frame.files += files
        frame.bytes += size
        frame.weight += weight
        if frame.weight >= self.page_entries:
            self._page(frame)

    def _page(self, frame: _Frame) -> None:
        frame.pages.append([frame.entries[0][0], self._put({"entries": frame.entries}), len(frame.entries)])
        frame.entries, frame.weight = [], 0

    def _close(self, stack: list[_Frame]) -> None:
        frame = stack.pop()
        if not frame.pages and frame.weight <= INLINE_ENTRIES:
            # a small directory is held in its parent's object: no object, no record, no
            # index entry of its own (a by-batch export of 100,000 files has ~97,000 of them)
            self._add(stack[-1], [frame.name, "i", frame.entries, frame.bytes, frame.files], frame.files,
                      frame.bytes, 1 + frame.weight)
            return
        self._add(stack[-1], [frame.name, "d", self._finish(frame), frame.bytes, frame.files], frame.files, frame.bytes)

    def _finish(self, frame: _Frame) -> str:
        """The directory's object: its entries, or (split) the index of its pages."""
        if not frame.pages:
            return self._put({"entries": frame.entries})
        if frame.entries:
            self._page(frame)
        return self._put({"pages": frame.pages})
