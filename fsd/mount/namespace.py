"""The mount's directory tree, computed from the LMDB index and manifests (never SQL).

    /by-hash/<aa>/<bb>/<sha256>.<ext>        every stored object (≤ 256 × 256 fan-out; only
                                             prefixes that hold objects are listed)
    /batches/<batch_id>/<original path>      each ingested batch as the scraper left it
    /sources/<source>/<batch_id>/<path>      the same, grouped by source
    /views/<name>/<path>                     named views: a manifest of path → sha256
    /.hoard/health                           the store's status, as text
    /inbox -> <zone 3A>                      a symlink: files written there are a batch to ingest

**Inode numbers** are what a node *is*, so they are the same after a remount. Under
by-hash/ they are kept in no table, in the numbers from DERIVED (2^62) up: a directory is
its hex bytes, a file the first PREFIX_BITS (61) bits of its sha256 (its FUSE generation the
next 64) — while no other stored object shares those bits; one that does is numbered like
the rest (nearly never: ~10^-6 at 10^6 objects, or an attacker's doing). A number whose bits
an object stored later shares names nothing from then on (ESTALE: the kernel looks the name
up again) — never the newcomer, even when its own object was collected first (gc keeps the
bits of what it collects: Index.sole_owner). Every other node's number is a 62-bit hash (xxh64) of its
identity: a file is its object and its time (`("file", sha256, mtime_ns)`), a directory its
place — and, inside a batch or view, the manifest it comes from. So a file shown in two
places of one batch is one inode (nlink 1: `tar`/`rsync -H` do not treat it as a hard
link), and a view redefined to point a path at another object gives that path another
inode: no cached page of the old object can be served for it. (Two identities hashing to
the same number — about one in 10^11 for 10^4 nodes the kernel holds — are told apart by
probing the next number; only then does a number depend on the order of lookups.)

A node with a hashed number enters the inode table when the kernel is told of it (lookup,
readdirplus) and leaves when the kernel forgets it, so the table holds one per name the
kernel knows outside by-hash/ (N after a `find` over a view of N objects; a `find` over
by-hash/ adds a bit per by-hash directory: whether a name in it was told, so that a deleted
object's name there is invalidated). Files
— nearly all of them — are rows of flat arrays (`inodes.Files`, ~64 bytes each): inode,
sha256, time, the kernel's count and the directory the kernel learnt the name in; the size
comes from the index when asked (getattr, open: one short LMDB read) and the names to
invalidate when an object is deleted are derived from the directory (by-hash/: the sha256
and its extension; a view or batch: its manifest's listing of that directory). Everything
else (directories, `.hoard/health`, `inbox`) is a `Node` in a dict. A node sits at
inode_of(its key), which is how it is found again; only one that probed past a collision
is also in `moved` (key → inode). `nodes.get(inode)` gives a file as a fresh `Node`.

Listings come from LMDB (short read transactions) and from manifests (`Tree` objects,
cached); loading a manifest page never happens on the trio thread (`children`/`lookup` are
async and hop to a worker thread only for a page that is not loaded yet).

Kept whole past 500 lines: the tree's nodes, their inode numbers and lookups are one mapping
from the index and manifests to the kernel's view — a number is right only with the node it
names; the number tables themselves are inodes.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio
import xxhash

from hoardfs.base.errors import HoardError
from hoardfs.fsd.mount.inodes import Files
from hoardfs.fsd.outputs.manifest import Tree, WouldBlock
from hoardfs.fsd.outputs.views import OUTPUT_VIEW

__all__ = ["DERIVED", "Namespace", "Node", "ROOT", "inode_of"]

log = logging.getLogger(__name__)

ROOT = 1
TOP = ("by-hash", "batches", "sources", "views", ".hoard", "inbox")
#: numbers from here up are what they name and are kept in no table: by-hash directories
#: (`_HASH1 | a`, `_HASH2 | a << 8 | b`) and by-hash files (`DERIVED | _FILE | the sha256's
#: first PREFIX_BITS bits`); below it, a node's number is the hash of what it is
DERIVED = 1 << 62
_FILE = 1 << 61
_HASH1 = DERIVED | 1 << 16
_HASH2 = DERIVED | 2 << 16


def inode_of(key: tuple) -> int:
    """The inode number of a node's identity (before collision probing): below DERIVED."""
    ino = xxhash.xxh64_intdigest(repr(key).encode()) >> 2
    return ino if ino > ROOT else ino + 2


#: the service and its `hoard` group read (the kernel checks: `default_permissions`); other
#: local users read nothing through the mount, as they read no shard (docs/security.md)
FILE_MODE = stat.S_IFREG | 0o440
DIR_MODE = stat.S_IFDIR | 0o550
LINK_MODE = stat.S_IFLNK | 0o777


class Node:
    """One node of the tree, as handed to the FUSE operations. Directories and the few other
    nodes are kept as these; a file is built from its row of the table when asked for (and
    its key is rebuilt from `sha` and `mtime_ns`, not kept)."""

    __slots__ = ("inode", "_key", "mode", "size", "mtime_ns", "sha", "lookups")

    def __init__(self, inode: int, key: tuple, mode: int, size: int = 0, mtime_ns: int = 0,
                 sha: bytes | None = None, lookups: int = 0) -> None:
        self.inode, self.mode, self.size, self.lookups = inode, mode, size, lookups
        self.mtime_ns, self.sha = mtime_ns, sha
        self._key = None if key == ("file", sha, mtime_ns) else key

    @property
    def key(self) -> tuple:
        """What it is: ("dir", kind, …) | ("file", sha, mtime_ns) | ("health",) | ("link", target)."""
        return ("file", self.sha, self.mtime_ns) if self._key is None else self._key

    def __repr__(self) -> str:
        return f"Node({self.inode}, {self.key!r}, lookups={self.lookups})"


class _Nodes:
    """inode → Node over both parts of the table and the numbers kept in none (read-only; the
    Namespace changes it)."""

    def __init__(self, files: Files, others: dict[int, Node], size_of: Callable[[bytes], int],
                 derive: Callable[[int], Node | None]) -> None:
        self.files, self.others, self.size_of, self.derive = files, others, size_of, derive

    def get(self, inode: int, default=None) -> Node | None:
        if inode >= DERIVED:
            n = self.derive(inode)
            return default if n is None else n
        n = self.others.get(inode)
        if n is not None:
            return n
        r = self.files.row(inode)
        if r < 0:
            return default
        sha = self.files.sha_of(r)
        return Node(inode, ("file", sha, self.files.mtime_of(r)), FILE_MODE, self.size_of(sha),
                    self.files.mtime_of(r), sha, self.files.count_of(r))

    def __getitem__(self, inode: int) -> Node:
        n = self.get(inode)
        if n is None:
            raise KeyError(inode)
        return n

    def __contains__(self, inode: int) -> bool:
        if inode >= DERIVED:
            return self.derive(inode) is not None
        return inode in self.others or self.files.row(inode) >= 0

    def __len__(self) -> int:
        return len(self.others) + len(self.files)

    def __iter__(self):
        yield from list(self.others)
        yield from [ino for ino in self.files.ino if ino]

    def items(self):
        return [(ino, self[ino]) for ino in self]


async def _blocking(fn, *args):
    """`fn(*args)` in a worker thread; a cancelled request abandons it (a dying disk under a
    manifest must not hold up the unmount)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


class Namespace:
    """Inode table + listings. `get(sha_hex)` returns a stored object's verified bytes (the
    manifests); `visible(sha)` says whether an object is shown (not deleted)."""

    TREE_CACHE = 64
    #: parsed manifest pages kept per batch or view (the estimate Tree counts, 4× their JSON:
    #: ~1.25× the memory they take), and over all of them. A page serves the listing of its
    #: directory; the kernel then keeps the names (an hour), so pages are needed again only for
    #: lookups after that: the
    #: library's default (64 MiB a tree) held ~38 MB of a 1,000,000-name view after one `find`,
    #: for nothing, and a `find` over batches/ kept up to TREE_CACHE trees of them
    TREE_BYTES = 4 << 20
    TREES_BYTES = 16 << 20
    inode_of = staticmethod(inode_of)  # (a test gives a coarser hash to make numbers collide)
    #: a by-hash file's number holds this many leading bits of its sha256 (a test gives fewer,
    #: to make objects share them)
    PREFIX_BITS = 61

    def __init__(self, index: Any, zone3a: str, get: Callable[[str], bytes],
                 visible: Callable[[bytes], bool] = lambda sha: True,
                 get_nowait: Callable[[str], bytes | None] | None = None) -> None:
        self.index, self.zone3a = index, zone3a
        self.get, self.visible = get, visible
        #: a manifest page without waiting for a disk (in the page cache), else None: a lookup
        #: whose page is not parsed yet then needs no worker thread (Reader.get_object_nowait)
        self.get_nowait = get_nowait
        self.started_ns = time.time_ns()
        #: inode → node, every node the kernel holds: files in columns, the rest as Nodes; a
        #: node is at inode_of(its key) …
        self.files = Files()
        self.others: dict[int, Node] = {}
        self.nodes = _Nodes(self.files, self.others, self._size_of, self.derived_node)
        #: the by-hash directories the kernel was told a file name in (bit a·256+b), whose names
        #: are invalidated when an object is deleted: by-hash files have no rows to say so
        self.hash2_told = bytearray(256 * 256 // 8)
        #: … unless that number was taken when it came (a hash collision): key → its number
        self.moved: dict[tuple, int] = {}
        self.lock = threading.Lock()
        self.trees: OrderedDict[str, Tree] = OrderedDict()
        root = Node(ROOT, ("dir", "root"), DIR_MODE, mtime_ns=self.started_ns, lookups=1)
        self.others[ROOT], self.moved[root.key] = root, ROOT  # (its number is fixed, not its hash)

    # -- inodes -------------------------------------------------------------------------------
    @staticmethod
    def _derived(key: tuple) -> int:
        """The number a by-hash directory is (0 for any other key than a by-hash directory's)."""
        if key[0] == "dir" and key[1] == "hash1":
            return _HASH1 | key[2]
        if key[0] == "dir" and key[1] == "hash2":
            return _hash2_number(key[2], key[3])
        return 0

    def _file_number(self, sha: bytes) -> int:
        """The number a by-hash file is while it is its bits' sole owner (Index.sole_owner)."""
        return DERIVED | _FILE | int.from_bytes(sha[:8], "big") >> (64 - self.PREFIX_BITS)

    def _alone(self, sha: bytes) -> bool:
        """Whether `sha` is the sole owner of its number's bits (a short LMDB read)."""
        owner = self.index.sole_owner(self._file_number(sha) - (DERIVED | _FILE), self.PREFIX_BITS)
        return owner is not None and owner[0] == sha

    def derived_node(self, inode: int) -> Node | None:
        """The node a number from DERIVED up is; None if it names nothing (now): an object
        collected, or one that now shares its number's bits with another, stored or collected
        (ops answer ESTALE, and the kernel looks the name up again, getting a number from the
        table). The bits' owner and its size come from one LMDB read."""
        if inode & _FILE:
            top = inode - (DERIVED | _FILE)
            if not 0 <= top < 1 << self.PREFIX_BITS:
                return None
            owner = self.index.sole_owner(top, self.PREFIX_BITS)
            if owner is None:
                return None
            sha, loc = owner
            return Node(inode, ("file", sha, 0), FILE_MODE, loc.length, 0, sha)
        kind, low = (inode - DERIVED) >> 16, inode & 0xFFFF
        if kind == 1 and low < 256:
            key: tuple = ("dir", "hash1", low)
        elif kind == 2:
            key = ("dir", "hash2", low >> 8, low & 0xFF)
        else:
            return None
        return Node(inode, key, DIR_MODE, mtime_ns=self.started_ns)

    @staticmethod
    def generation(node: Node) -> int:
        """The FUSE generation of a node: a by-hash file's is more of its sha256, so a number that
        came to name another object (a collected one's, shared bits) is a new inode to the kernel —
        no page it cached of the old object is served for the new one."""
        return int.from_bytes(node.sha[8:16], "big") if node.inode >= DERIVED and node.sha else 0

    def _number(self, key: tuple) -> int:
        """Where `key` is if the kernel holds it: its home number, or where it moved."""
        ino = self.moved.get(key)
        return self.inode_of(key) if ino is None else ino

    def _file_row(self, key: tuple) -> int:
        r = self.files.row(self._number(key))
        return r if r >= 0 and self.files.is_(r, key[1], key[2]) else -1

    def known(self, key: tuple) -> Node | None:
        """The node the kernel holds for `key`, if any. Every known key is at its home number
        (inode_of) or in `moved`: `forget` keeps that true, so a node forgotten in the middle of
        a run of collided numbers does not hide the nodes after it."""
        if key[0] == "file":  # (a by-hash file given its number from the sha256 is in no table)
            return self.nodes.get(self._number(key)) if self._file_row(key) >= 0 else None
        if d := self._derived(key):
            return self.derived_node(d)
        n = self.others.get(self._number(key))
        return n if n is not None and n.key == key else None

    def make(self, key: tuple, mode: int, size: int = 0, sha: bytes | None = None,
             mtime_ns: int | None = None) -> Node:
        """A node for `key` (a directory: the known one if the kernel holds it); not yet in
        the table. A file's node is a new one whatever the table holds: `remember` finds it."""
        if key[0] != "file":
            known = self.known(key)
            if known is not None:
                return known
        return Node(self._derived(key), key, mode, size, self.started_ns if mtime_ns is None else mtime_ns, sha)

    def _free_number(self, key: tuple, home: int | None = None) -> int:
        """The first number from `key`'s home (its hash) no node holds; a number past the
        home is recorded in `moved`."""
        home = ino = self.inode_of(key) if home is None else home
        while ino in self.others or self.files.row(ino) >= 0:
            ino = ino + 1 if ino + 1 < DERIVED else ROOT + 1  # a hash collision: the next free number
        if ino != home:
            self.moved[key] = ino
        return ino

    def remember(self, node: Node, parent: int = 0, name: bytes = b"") -> Node:
        """The kernel is told of `node` (one more lookup it will forget), as `name` in directory
        `parent`: give it its inode. A file's node comes back with its number and count set;
        any other node is the one the table holds."""
        key = node.key
        if key[0] == "file":
            sha = node.sha
            assert sha is not None  # a file's node carries its sha256
            if key[2] == 0 and self._alone(sha):
                # a by-hash file (time 0: no other file has it): numbered by its sha256, kept in
                # no table; its directory is marked for the invalidation of its name when it is deleted
                node.inode = self._file_number(sha)
                byte, bit = _told_bit(sha)
                self.hash2_told[byte] |= bit
                return node
            files, home = self.files, self.inode_of(key)  # (hashed once, outside the lock)
            with self.lock:
                r = files.row(self.moved.get(key, home))
                if r < 0 or not files.is_(r, sha, node.mtime_ns):
                    r = files.add(self._free_number(key, home), sha, node.mtime_ns)
                node.inode, node.lookups = files.ino[r], files.looked_up(r, 1)
                if parent:
                    files.link(r, parent)
                return node
        if node.inode >= DERIVED:  # a by-hash directory (a file told before, from a listing's
            return node            # snapshot, may not own its bits now)
        with self.lock:
            known = self.known(key)
            if known is None:
                known = node
                node.inode = self._free_number(key)
                self.others[node.inode] = node
            known.lookups += 1
            return known

    def forget(self, inode: int, count: int) -> None:
        """The kernel dropped `count` references; a node nobody references leaves the table
        (its number is the same when it comes back)."""
        if inode == ROOT or inode >= DERIVED:  # (numbers from DERIVED up are kept in no table)
            return
        with self.lock:
            n = self.others.get(inode)
            if n is not None:
                n.lookups -= count
                if n.lookups <= 0:
                    del self.others[inode]
                    if self.moved.get(n.key) == inode:
                        del self.moved[n.key]
                return
            r = self.files.row(inode)
            if r >= 0 and self.files.looked_up(r, -count) == 0:
                key = ("file", self.files.sha_of(r), self.files.mtime_of(r))
                self.files.remove(r)
                if self.moved.get(key) == inode:
                    del self.moved[key]

    def known_inode(self, key: tuple) -> int | None:
        """The number of `key`'s node if the kernel holds it (from any thread)."""
        with self.lock:
            if key[0] == "file":
                return self._number(key) if self._file_row(key) >= 0 else None
            n = self.known(key)
            return None if n is None else n.inode

    def with_object(self, dead: set[bytes] | frozenset[bytes]) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every known file whose object is in `dead`. Blocking (a
        manifest page may be read to name a view's file): call it from a worker thread."""
        found: dict[int, set[bytes]] = {}  # parent inode → the dead files the kernel knows there
        step = 1 << 16
        hi = len(self.files.ino)
        for lo in range(0, hi, step):  # the lock a chunk at a time: the trio thread waits ≤ a few ms
            with self.lock:
                for r in self.files.rows_with(dead, lo, min(hi, lo + step, len(self.files.ino))):
                    for p in self.files.parents(r):
                        found.setdefault(p, set()).add(self.files.sha_of(r))
        for sha in dead:  # by-hash names numbered by their sha256: in no row
            byte, bit = _told_bit(sha)
            if self.hash2_told[byte] & bit:
                found.setdefault(_hash2_number(sha[0], sha[1]), set()).add(sha)
        out: set[tuple[int, bytes]] = set()
        for p, shas in found.items():  # each directory listed once, whatever it holds of them
            out.update((p, name) for name in self._names_in(p, shas))
        return sorted(out)

    def names_of(self, inode: int, sha: bytes | None) -> list[tuple[int, bytes]]:
        """(parent inode, name) the kernel may know file `inode` by, a file that is gone: those
        of its object `sha`, or, for a by-hash number that names nothing now (`derived_node`),
        those of every stored object with its bits — which one it named is not known (a
        collected object's by-hash name cannot be derived: its extension may be gone).
        Blocking: a worker thread."""
        if sha is not None:
            shas = {sha}
        elif inode >= DERIVED | _FILE:
            shas = set(self.index.with_bits(inode - (DERIVED | _FILE), self.PREFIX_BITS))
        else:
            return []
        return self.with_object(shas) if shas else []

    def _names_in(self, parent: int, shas: set[bytes]) -> list[bytes]:
        """The names of files `shas` in directory `parent` (none if the kernel forgot it)."""
        if parent >= DERIVED:
            d = self.derived_node(parent)
        else:
            with self.lock:
                d = self.others.get(parent)
        if d is None or d.key[0] != "dir":
            return []
        kind = d.key[1]
        if kind == "hash2":
            return [self._hash_name(sha) for sha in shas]
        if kind == "tree":
            if _sealed(d.key[2], d.key[3]):
                return []  # shows its files whatever their marks: nothing to invalidate
            try:
                entries = self._tree(d.key[4]).list_dir(d.key[5]) or []
            except HoardError as e:  # (the manifest of a view redefined under a reader, collected since)
                log.warning("mount: names of deleted objects under %s/%s not invalidated, their manifest cannot "
                            "be read (%s); they expire with the kernel's entry timeout", d.key[3], d.key[5], e.message)
                return []
            return [e[0].encode() for e in entries if not e[1] and e[2] in shas]
        return []

    def _size_of(self, sha: bytes) -> int:
        loc = self.index.lookup(sha)
        return 0 if loc is None else loc.length  # (gone: collected after it was deleted)

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
            return [(b"health", self.make(("health",), FILE_MODE))]
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
        if kind in ("by-hash", "hash1"):  # one prefix, not the listing of the 256 (as `children`)
            prefix = bytes([parent.key[2]]) if kind == "hash1" else b""
            try:
                byte = int(name, 16) if len(name) == 2 else -1
            except ValueError:
                return None
            if not 0 <= byte < 256 or name != b"%02x" % byte or not self.index.has_prefix(prefix + bytes([byte])):
                return None
            return self._dir(("dir", "hash1", byte) if kind == "by-hash" else ("dir", "hash2", parent.key[2], byte))
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
            return self.make(("link", self.zone3a), LINK_MODE, len(self.zone3a.encode()))
        return self._dir(("dir", name))

    def _dir(self, key: tuple, mtime_ns: int = 0) -> Node:
        return self.make(key, DIR_MODE, mtime_ns=mtime_ns or None)

    def _file(self, sha: bytes, size: int, mtime_ns: int) -> Node:
        # by-hash files have no time of their own: mtime 0 keeps their inode the same on every mount
        return self.make(("file", sha, mtime_ns), FILE_MODE, size, sha, mtime_ns)

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
        if not self.shown(parent_key, sha):
            return None
        return self._file(sha, size, mtime_ns)

    def shown(self, parent_key: tuple, sha: bytes) -> bool:
        """Whether the file `sha` in directory `parent_key` is shown: it is not deleted, or the
        directory is part of a view-mode output's view (`_sealed`)."""
        return self.visible(sha) or (parent_key[:2] == ("dir", "tree") and _sealed(parent_key[2], parent_key[3]))

    def _tree(self, manifest_sha_hex: str) -> Tree:
        with self.lock:
            t = self.trees.get(manifest_sha_hex)
            if t is None:
                t = self.trees[manifest_sha_hex] = Tree(self.get, manifest_sha_hex, self.TREE_BYTES, self.get_nowait)
                while len(self.trees) > self.TREE_CACHE:
                    self.trees.popitem(last=False)
            else:
                self.trees.move_to_end(manifest_sha_hex)
            while len(self.trees) > 1 and sum(tree.used for tree in self.trees.values()) > self.TREES_BYTES:
                self.trees.popitem(last=False)  # the least recently used manifest, all its pages
            return t


def _sealed(what: str, name: str) -> bool:
    """Whether a tree is a view-mode output's view (`<zone>-<id>`): it shows every file it
    sealed, hidden (`hoard delete --node`) or tombstoned since or not — a sealed output's
    selection never changes under its consumer (docs/design.md, "View mode"); its objects
    stay in the store while the view names them (gc keeps what a manifest references)."""
    return what == "view" and OUTPUT_VIEW.match(name) is not None


def _hash2_number(a: int, b: int) -> int:
    """The number of by-hash directory <a>/<b> (two hex bytes)."""
    return _HASH2 | a << 8 | b


def _told_bit(sha: bytes) -> tuple[int, int]:
    """Where Namespace.hash2_told keeps sha's by-hash directory: (byte, bit mask)."""
    i = sha[0] << 8 | sha[1]
    return i >> 3, 1 << (i & 7)


def _mtime_ns(iso: str | None) -> int:
    if not iso:
        return 0

    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1e9)
    except ValueError:
        return 0
