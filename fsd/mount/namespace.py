"""The mount's directory tree, computed from the LMDB index and manifests (never SQL).

    /by-hash/<aa>/<bb>/<sha256>.<ext>        every stored object (≤ 256 × 256 fan-out; only
                                             prefixes that hold objects are listed)
    /batches/<batch_id>/<original path>      each ingested batch as the scraper left it
    /sources/<source>/<batch_id>/<path>      the same, grouped by source
    /views/<name>/<path>                     named views: a manifest of path → sha256
    /.hoard/health                           the store's status, as text
    /inbox -> <zone 3A>                      a symlink: files written there are a batch to ingest

**Inode numbers** are a 63-bit hash (xxh64) of what a node *is*: a file is its object and
its time (`("file", sha256, mtime_ns)`), a directory its place — and, inside a batch or
view, the manifest it comes from. So they are the same after a remount, a file shown in
two places of one batch is one inode (nlink 1: `tar`/`rsync -H` do not treat it as a hard
link), and a view redefined to point a path at another object gives that path another
inode: no cached page of the old object can be served for it. (Two identities hashing to
the same number — about one in 10^11 for 10^4 nodes the kernel holds — are told apart by
probing the next number; only then does a number depend on the order of lookups.)

A node enters the inode table when the kernel is told of it (lookup, readdirplus) and
leaves when the kernel forgets it. Listings come from LMDB (short read transactions) and
from manifests (`Tree` objects, cached); loading a manifest page never happens on the trio
thread (`children`/`lookup` are async and hop to a worker thread only for a page that is
not loaded yet).
"""

from __future__ import annotations

import datetime as dt
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import trio
import xxhash

from fsd.manifest import Tree, WouldBlock

__all__ = ["Namespace", "Node", "ROOT", "inode_of"]

ROOT = 1
TOP = ("by-hash", "batches", "sources", "views", ".hoard", "inbox")


def inode_of(key: tuple) -> int:
    """The inode number of a node's identity (before collision probing)."""
    ino = xxhash.xxh64_intdigest(repr(key).encode()) >> 1
    return ino if ino > ROOT else ino + 2


@dataclass(eq=False)
class Node:
    inode: int
    key: tuple  # what it is: ("dir", kind, …) | ("file", sha, mtime_ns) | ("health",) | ("link", target)
    mode: int
    size: int = 0
    mtime_ns: int = 0
    sha: bytes | None = None
    lookups: int = 0
    #: (parent inode, name) under which the kernel knows it: invalidated when its object is deleted
    links: set = field(default_factory=set)


async def _blocking(fn, *args):
    """`fn(*args)` in a worker thread; a cancelled request abandons it (a dying disk under a
    manifest must not hold up the unmount)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


class Namespace:
    """Inode table + listings. `get(sha_hex)` returns a stored object's verified bytes (the
    manifests); `visible(sha)` says whether an object is shown (not deleted)."""

    TREE_CACHE = 64

    def __init__(self, index: Any, zone3a: str, get: Callable[[str], bytes],
                 visible: Callable[[bytes], bool] = lambda sha: True) -> None:
        self.index, self.zone3a = index, zone3a
        self.get, self.visible = get, visible
        self.started_ns = time.time_ns()
        self.nodes: dict[int, Node] = {}
        self.by_key: dict[tuple, int] = {}
        self.lock = threading.Lock()
        self.trees: OrderedDict[str, Tree] = OrderedDict()
        root = Node(ROOT, ("dir", "root"), stat.S_IFDIR | 0o555, mtime_ns=self.started_ns, lookups=1)
        self.nodes[ROOT], self.by_key[root.key] = root, ROOT

    # -- inodes -------------------------------------------------------------------------------
    def make(self, key: tuple, mode: int, size: int = 0, sha: bytes | None = None,
             mtime_ns: int | None = None) -> Node:
        """A node for `key` (the known one if the kernel holds it); not yet in the table."""
        ino = self.by_key.get(key)
        known = self.nodes.get(ino) if ino is not None else None
        if known is not None:
            return known
        return Node(0, key, mode, size, self.started_ns if mtime_ns is None else mtime_ns, sha)

    def remember(self, node: Node, parent: int = 0, name: bytes = b"") -> Node:
        """The kernel is told of `node` (one more lookup it will forget): give it its inode."""
        with self.lock:
            ino = self.by_key.get(node.key)
            if ino is None:
                ino = inode_of(node.key)
                while ino in self.nodes and self.nodes[ino].key != node.key:
                    ino += 1  # a hash collision: the next free number
                node.inode = ino
                self.nodes[ino], self.by_key[node.key] = node, ino
            known = self.nodes[ino]
            known.lookups += 1
            if parent and known.sha is not None and len(known.links) < 64:
                known.links.add((parent, name))
            return known

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped `count` references; a node nobody references leaves the table
        (its number is the same when it comes back)."""
        with self.lock:
            n = self.nodes.get(inode)
            if n is None or inode == ROOT:
                return
            n.lookups -= count
            if n.lookups <= 0:
                del self.nodes[inode]
                self.by_key.pop(n.key, None)

    def with_object(self, dead: set[bytes]) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every known file whose object is in `dead`."""
        with self.lock:
            return [link for n in self.nodes.values() if n.sha in dead for link in n.links]

    # -- listings ------------------------------------------------------------------------------
    async def children(self, parent: Node) -> list[tuple[bytes, Node]]:
        """(name, node) of a directory, sorted by name."""
        key = parent.key
        kind = key[1] if key[0] == "dir" else None
        if kind == "root":
            return [(name.encode(), self._top(name)) for name in TOP]
        if kind == "by-hash":  # only prefixes some object has: `find` need not walk 65,536 empty dirs
            return [(f"{i:02x}".encode(), self._dir(("dir", "hash1", i))) for i in self.index.used_prefixes(b"")]
        if kind == "hash1":
            return [(f"{j:02x}".encode(), self._dir(("dir", "hash2", key[2], j)))
                    for j in self.index.used_prefixes(bytes([key[2]]))]
        if kind == "hash2":
            out = []
            for sha, loc in self.index.objects_with_prefix(bytes([key[2], key[3]])):
                if self.visible(sha):
                    out.append((self._hash_name(sha), self._file(sha, loc.length, 0)))
            return out
        if kind == "batches":
            return [(b.encode(), self._tree_root("batch", b, info)) for b, info in self.index.iter_batches()]
        if kind == "sources":
            names = sorted({info.get("source", "unknown") for _, info in self.index.iter_batches()})
            return [(s.encode(), self._dir(("dir", "source", s))) for s in names]
        if kind == "source":
            return [(b.encode(), self._tree_root("batch", b, info))
                    for b, info in self.index.iter_batches() if info.get("source", "unknown") == key[2]]
        if kind == "views":
            return [(v.encode(), self._tree_root("view", v, info)) for v, info in self.index.iter_views()]
        if kind == ".hoard":
            return [(b"health", self.make(("health",), stat.S_IFREG | 0o444))]
        if kind == "tree":
            _, _, _what, _name, msha, path, mtime_ns = key
            tree = self._tree(msha)
            try:
                entries = tree.list_dir_nowait(path)
            except WouldBlock:
                entries = await _blocking(tree.list_dir, path)
            out = []
            for e in entries or []:
                node = self._tree_node(key, e)
                if node is not None:
                    out.append((e[0].encode(), node))
            return out
        return []

    async def lookup(self, parent: Node, name: bytes) -> Node | None:
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
            if loc is None or not self.visible(sha) or name != self._hash_name(sha):
                return None
            return self._file(sha, loc.length, 0)
        if kind in ("batches", "source"):
            info = self.index.get_batch(name.decode(errors="replace"))
            if info is None or (kind == "source" and info.get("source", "unknown") != parent.key[2]):
                return None
            return self._tree_root("batch", name.decode(), info)
        if kind == "views":
            info = self.index.get_view(name.decode(errors="replace"))
            return None if info is None else self._tree_root("view", name.decode(), info)
        if kind == "tree":
            tree = self._tree(parent.key[4])
            try:
                text = name.decode()
            except UnicodeDecodeError:
                return None
            try:
                e = tree.lookup_nowait(parent.key[5], text)
            except WouldBlock:
                e = await _blocking(tree.lookup, parent.key[5], text)
            return None if e is None else self._tree_node(parent.key, e)
        for child, node in await self.children(parent):
            if child == name:
                return node
        return None

    # -- nodes -----------------------------------------------------------------------------------
    def _top(self, name: str) -> Node:
        if name == "inbox":
            return self.make(("link", self.zone3a), stat.S_IFLNK | 0o777, len(self.zone3a.encode()))
        return self._dir(("dir", name))

    def _dir(self, key: tuple, mtime_ns: int = 0) -> Node:
        return self.make(key, stat.S_IFDIR | 0o555, mtime_ns=mtime_ns or None)

    def _file(self, sha: bytes, size: int, mtime_ns: int) -> Node:
        # by-hash files have no time of their own: mtime 0 keeps their inode the same on every mount
        return self.make(("file", sha, mtime_ns), stat.S_IFREG | 0o444, size, sha, mtime_ns)

    def _hash_name(self, sha: bytes) -> bytes:
        ext = self.index.get_ext(sha)
        return (sha.hex() + (f".{ext}" if ext else "")).encode()

    def _tree_root(self, what: str, name: str, info: dict) -> Node:
        """A batch's or view's top directory; its identity includes the manifest, so a view
        redefined is a new directory (the old one stays consistent for whoever is inside it)."""
        mtime_ns = _mtime_ns(info.get("sealed") or info.get("created")) or self.started_ns
        return self._dir(("dir", "tree", what, name, info["manifest"], "", mtime_ns), mtime_ns)

    def _tree_node(self, parent_key: tuple, e) -> Node | None:
        child, is_dir, sha, size = e[:4]
        _, _, what, name, msha, path, mtime_ns = parent_key
        if is_dir:
            return self._dir(("dir", "tree", what, name, msha, f"{path}/{child}" if path else child, mtime_ns),
                             mtime_ns)
        if not self.visible(sha):
            return None
        return self._file(sha, size, mtime_ns)

    def _tree(self, manifest_sha_hex: str) -> Tree:
        with self.lock:
            t = self.trees.get(manifest_sha_hex)
            if t is None:
                t = self.trees[manifest_sha_hex] = Tree(self.get, manifest_sha_hex)
                while len(self.trees) > self.TREE_CACHE:
                    self.trees.popitem(last=False)
            else:
                self.trees.move_to_end(manifest_sha_hex)
            return t


def _mtime_ns(iso: str | None) -> int:
    if not iso:
        return 0

    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9)
    except ValueError:
        return 0
