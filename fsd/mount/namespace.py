"""The mount's directory tree, computed from the LMDB index and manifests (never SQL).

    /by-hash/<aa>/<bb>/<sha256>.<ext>        every stored object (≤ 256 × 256 fan-out; only
                                             prefixes that hold objects are listed)
    /batches/<batch_id>/<original path>      each ingested batch as the scraper left it
    /sources/<source>/<batch_id>/<path>      the same, grouped by source
    /views/<name>/<path>                     named views: a manifest of path → sha256
    /.hoard/health                           the store's status, as text
    /inbox -> <zone 3A>                      a symlink: files written there are a batch to ingest

Inodes are handed out on first sight and stay stable while the mount runs; a directory is
listed in name order so readdir offsets are stable. Nothing here does disk IO on the HDDs:
listings come from LMDB and from manifests (objects in the store, read once through the
reader and cached).
"""

from __future__ import annotations

import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

ROOT = 1
#: seconds a deletion may take to disappear from the mount
DEAD_TTL = 5.0
TOP = ("by-hash", "batches", "sources", "views", ".hoard", "inbox")


@dataclass
class Node:
    inode: int
    key: tuple  # what it is: ("dir", kind, …) | ("file", sha) | ("health",) | ("link", target)
    mode: int
    size: int = 0
    mtime_ns: int = 0
    sha: bytes | None = None
    lookups: int = 0


@dataclass
class Tree:
    """A manifest's files as directories: dir path → sorted [(name, is_dir, sha, size)]."""

    dirs: dict[str, list[tuple[str, bool, bytes | None, int]]] = field(default_factory=dict)
    mtime_ns: int = 0
    names: dict[str, dict[str, tuple[str, bool, bytes | None, int]]] = field(default_factory=dict)

    def entry(self, path: str, name: str) -> tuple[str, bool, bytes | None, int] | None:
        """One child by name, without listing the directory (lookups are O(1))."""
        d = self.names.get(path)
        if d is None:
            d = self.names[path] = {e[0]: e for e in self.dirs.get(path, [])}
        return d.get(name)

    @classmethod
    def from_files(cls, files: list[dict[str, Any]], mtime_ns: int) -> Tree:
        children: dict[str, dict[str, tuple[bool, bytes | None, int]]] = {"": {}}
        for f in files:
            parts = f["path"].split("/")
            for i in range(1, len(parts)):
                parent, name = "/".join(parts[:i - 1]), parts[i - 1]
                children.setdefault(parent, {})[name] = (True, None, 0)
                children.setdefault("/".join(parts[:i]), {})
            parent = "/".join(parts[:-1])
            children.setdefault(parent, {})[parts[-1]] = (False, bytes.fromhex(f["sha256"]), int(f["size"]))
        return cls({d: sorted((n, *v) for n, v in kids.items()) for d, kids in children.items()}, mtime_ns)


class Namespace:
    """Inode table + listings. `load_manifest(sha_hex)` returns a manifest's JSON (the reader
    supplies it: verified bytes from the store)."""

    MANIFEST_CACHE = 64

    def __init__(self, index: Any, zone3a: str, health_text, load_manifest) -> None:
        self.index, self.zone3a = index, zone3a
        self.health_text, self.load_manifest = health_text, load_manifest
        self.started_ns = time.time_ns()
        self.nodes: dict[int, Node] = {}
        self.by_key: dict[tuple, int] = {}
        self.next_inode = ROOT + 1
        self.lock = threading.Lock()
        self.trees: OrderedDict[tuple, Tree] = OrderedDict()
        self._dead: set[bytes] = set()
        self._dead_at = -DEAD_TTL
        self.nodes[ROOT] = Node(ROOT, ("dir", "root"), stat.S_IFDIR | 0o555, mtime_ns=self.started_ns)
        self.by_key[("dir", "root")] = ROOT

    # -- inodes -------------------------------------------------------------------------------
    def node(self, key: tuple, mode: int, size: int = 0, sha: bytes | None = None, mtime_ns: int = 0) -> Node:
        with self.lock:
            ino = self.by_key.get(key)
            if ino is not None:
                return self.nodes[ino]
            ino = self.next_inode
            self.next_inode += 1
            n = Node(ino, key, mode, size, mtime_ns or self.started_ns, sha)
            self.nodes[ino] = n
            self.by_key[key] = ino
            return n

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped `count` references; files nobody references are forgotten
        (directories stay: there are few, and their inode keeps listings stable)."""
        with self.lock:
            n = self.nodes.get(inode)
            if n is None:
                return
            n.lookups -= count
            if n.lookups <= 0 and n.key[0] == "file":
                del self.nodes[inode]
                self.by_key.pop(n.key, None)

    # -- listings ------------------------------------------------------------------------------
    def children(self, parent: Node) -> list[tuple[bytes, Node]]:
        """(name, node) of a directory, sorted by name."""
        key = parent.key
        kind = key[1] if key[0] == "dir" else None
        if kind == "root":
            return [(b"by-hash", self._dir(("dir", "by-hash"))), (b"batches", self._dir(("dir", "batches"))),
                    (b"sources", self._dir(("dir", "sources"))), (b"views", self._dir(("dir", "views"))),
                    (b".hoard", self._dir(("dir", ".hoard"))),
                    (b"inbox", self.node(("link", self.zone3a), stat.S_IFLNK | 0o777, len(self.zone3a.encode())))]
        if kind == "by-hash":  # only prefixes some object has: `find` need not walk 65,536 empty dirs
            return [(f"{i:02x}".encode(), self._dir(("dir", "hash1", i))) for i in self.index.used_prefixes(b"")]
        if kind == "hash1":
            return [(f"{j:02x}".encode(), self._dir(("dir", "hash2", key[2], j)))
                    for j in self.index.used_prefixes(bytes([key[2]]))]
        if kind == "hash2":
            prefix = bytes([key[2], key[3]])
            out = []
            for sha, loc in self.index.objects_with_prefix(prefix):
                if not self.visible(sha):
                    continue
                ext = self.index.get_ext(sha)
                name = sha.hex() + (f".{ext}" if ext else "")
                out.append((name.encode(), self.node(("file", "obj", sha), stat.S_IFREG | 0o444, loc.length, sha)))
            return out
        if kind == "batches":
            return [(b.encode(), self._dir(("dir", "tree", "batch", b, ""))) for b, _ in self.index.iter_batches()]
        if kind == "sources":
            names = sorted({info.get("source", "unknown") for _, info in self.index.iter_batches()})
            return [(s.encode(), self._dir(("dir", "source", s))) for s in names]
        if kind == "source":
            return [(b.encode(), self._dir(("dir", "tree", "batch", b, "")))
                    for b, info in self.index.iter_batches() if info.get("source", "unknown") == key[2]]
        if kind == "views":
            return [(v.encode(), self._dir(("dir", "tree", "view", v, ""))) for v, _ in self.index.iter_views()]
        if kind == ".hoard":
            return [(b"health", self.node(("health",), stat.S_IFREG | 0o444))]
        if kind == "tree":
            _, _, what, name, path = key
            tree = self.tree(what, name)
            if tree is None:
                return []
            out = []
            for e in tree.dirs.get(path, []):
                node = self._tree_node(what, name, path, tree, e)
                if node is not None:
                    out.append((e[0].encode(), node))
            return out
        return []

    def lookup(self, parent: Node, name: bytes) -> Node | None:
        kind = parent.key[1] if parent.key[0] == "dir" else None
        if kind == "hash2":  # one object, not the whole directory
            stem = name.split(b".", 1)[0]
            try:
                sha = bytes.fromhex(stem.decode())
            except (ValueError, UnicodeDecodeError):
                return None
            if len(sha) != 32 or sha[:2] != bytes([parent.key[2], parent.key[3]]):
                return None
            loc = self.index.lookup(sha)
            if loc is None or not self.visible(sha):
                return None
            ext = self.index.get_ext(sha)
            if name != (sha.hex() + (f".{ext}" if ext else "")).encode():
                return None
            return self.node(("file", "obj", sha), stat.S_IFREG | 0o444, loc.length, sha)
        if kind == "tree":
            _, _, what, tname, path = parent.key
            tree = self.tree(what, tname)
            try:
                e = tree.entry(path, name.decode()) if tree else None
            except UnicodeDecodeError:
                return None
            if e is None:
                return None
            return self._tree_node(what, tname, path, tree, e)
        for child, node in self.children(parent):
            if child == name:
                return node
        return None

    def _tree_node(self, what: str, name: str, path: str, tree: Tree, e) -> Node | None:
        child, is_dir, sha, size = e
        sub = f"{path}/{child}" if path else child
        if is_dir:
            return self._dir(("dir", "tree", what, name, sub), tree.mtime_ns)
        if not self.visible(sha):
            return None
        return self.node(("file", what, name, sub), stat.S_IFREG | 0o444, size, sha, tree.mtime_ns)

    def visible(self, sha: bytes) -> bool:
        """Not deleted: type A (hidden) and type B (tombstoned) objects are not shown."""
        now = time.monotonic()
        if now - self._dead_at > DEAD_TTL:  # deletions are rare: re-read the marks every few seconds
            self._dead = self.index.marked(self.index.hidden) | self.index.marked(self.index.deleted)
            self._dead_at = now
        return sha not in self._dead

    def tree(self, what: str, name: str) -> Tree | None:
        """A batch's or view's manifest as a tree (None if unknown). Cached by the manifest's
        sha256, so a view redefined with `hoard view add` shows its new content."""
        info = (self.index.get_batch if what == "batch" else self.index.get_view)(name)
        if info is None:
            return None
        key = (what, name, info["manifest"])
        with self.lock:
            t = self.trees.get(key)
            if t is not None:
                self.trees.move_to_end(key)
                return t
        manifest = self.load_manifest(info["manifest"])
        t = Tree.from_files(manifest["files"], _mtime_ns(info.get("sealed") or info.get("created")))
        with self.lock:
            self.trees[key] = t
            while len(self.trees) > self.MANIFEST_CACHE:
                self.trees.popitem(last=False)
        return t


    def _dir(self, key: tuple, mtime_ns: int = 0) -> Node:
        return self.node(key, stat.S_IFDIR | 0o555, mtime_ns=mtime_ns)


def _mtime_ns(iso: str | None) -> int:
    if not iso:
        return 0
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9)
    except ValueError:
        return 0
