"""What the mount daemon keeps in memory, over a real store, without FUSE: its inode table
(fsd/mount/namespace.py, inodes.py) — what it keeps per node, numbers that collide — and
its read cache (reader.py). The mount itself: test_mount*.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fsd.base import config
from fsd.mount.namespace import ROOT, Namespace, Node, inode_of
from fsd.mount.reader import Reader
from fsd.store import Store
from fsd.views import define_view_rows
from tests.conftest import dir_disks_config


@pytest.fixture
def namespace(tmp_path: Path):
    """A Namespace (and a factory for more: a remount) over 300 tiny objects and a view of
    them, 100 per directory, whose last two paths name objects 0 and 1 again (1 by its hash)."""
    cfg = config.load(dir_disks_config(tmp_path, 2))
    store = Store.open(cfg, init=True)
    shas = [r.sha256 for r in store.put_bytes_many([b"object %03d\n" % i for i in range(300)])]
    rows = [(f"d{i // 100}/f{i:03d}.txt", sha) for i, sha in enumerate(shas)] + [("d2/again.txt", shas[0]),
                                                                                  (f"d2/{shas[1]}.bin", shas[1])]
    define_view_rows(store, "v", rows)
    reader = Reader(store)

    def new(cls=Namespace) -> Namespace:
        return cls(store.index, str(cfg.ssd.zone_path("3A")), reader.get_object)

    yield new, shas
    reader.close()
    store.close()


async def _walk(ns: Namespace, top: bytes) -> list[tuple[int, bytes, Node]]:
    """Every (parent inode, name, node) below /<top>, each remembered as readdirplus does."""
    top_node = ns.remember(await ns.lookup(ns.nodes[ROOT], top), ROOT, top)
    told, todo = [(ROOT, top, top_node)], [top_node]
    while todo:
        d = todo.pop()
        for name, node in await ns.children(d):
            node = ns.remember(node, d.inode, name)
            told.append((d.inode, name, node))
            if node.key[0] == "dir":
                todo.append(node)
    return told


def test_one_small_entry_per_node(namespace) -> None:
    """What the table keeps per node (the mount daemon's memory grows with it): a node has no
    __dict__, a file does not keep its key tuple besides its sha, a file known under one name
    keeps it in two slots, and a node at its own hash's number has no entry besides `nodes`."""
    new, shas = namespace
    ns = new()
    told = trio.run(_walk, ns, b"by-hash") + trio.run(_walk, ns, b"views")
    nodes = {id(n): n for _, _, n in told}
    assert len(ns.nodes) == len(nodes) + 1  # (and the root)
    assert ns.moved == {("dir", "root"): ROOT}  # no collision among these few
    files = [n for n in nodes.values() if n.sha is not None]
    # by-hash/ (mtime 0: and the view's manifest objects) and the view (its time): two identities each
    assert len([n for n in files if n.mtime_ns]) == 300 and len([n for n in files if not n.mtime_ns]) > 300
    for n in nodes.values():
        assert not hasattr(n, "__dict__")
        assert ns.nodes[n.inode] is n and n.inode == inode_of(n.key)
    for n in files:
        assert n._key is None and n.key == ("file", n.sha, n.mtime_ns)
    view = [(p, name, n) for p, name, n in told if n.sha is not None and n.mtime_ns]
    for p, name, n in view:
        assert (p, name) in n.links()
        assert (n.more is None) == (n.sha.hex() not in shas[:2])
    twice = next(n for _, _, n in view if n.sha == bytes.fromhex(shas[0]))
    assert sorted(name for _, name in twice.links()) == [b"again.txt", b"f000.txt"]
    # a name made of the object's hash is kept as its suffix: all of by-hash/, one in the view
    assert all(type(n.name) is str for n in files if not n.mtime_ns)
    hashed = next(n for _, _, n in view if n.sha == bytes.fromhex(shas[1]))
    assert sorted(type(name).__name__ for name in [hashed.name, *(name for _, name in hashed.more)]) == ["bytes", "str"]
    # deleted objects: every name the kernel knows them under, in by-hash/ and in the view
    dead = {bytes.fromhex(shas[0]), bytes.fromhex(shas[1]), bytes.fromhex(shas[7])}
    assert sorted(ns.with_object(dead)) == sorted((p, name) for p, name, n in told if n.sha in dead)
    assert len(ns.with_object(dead)) == 3 + 5  # by-hash/, and f000, again, f001, <sha1>.bin, f007
    # a remount: the same numbers; a node forgotten and told again: the same number
    again = new()
    remounted = trio.run(_walk, again, b"views")
    assert len(remounted) > 300 and all(ns.known(n.key).inode == n.inode for _, _, n in remounted)
    n = view[5][2]
    ns.forget(n.inode, n.lookups)
    assert n.inode not in ns.nodes and ns.known(n.key) is None
    fresh = ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns)
    assert fresh is not n and ns.remember(fresh).inode == n.inode


class _Colliding(Namespace):
    """Every identity hashes to one of 3 numbers: collisions are the rule, not 1 in 10^11."""
    inode_of = staticmethod(lambda key: 100 + inode_of(key) % 3)


def test_colliding_numbers_and_forgetting_inside_a_probe_run(namespace) -> None:
    """Nodes whose numbers collide take the next free ones; forgetting one in the middle of
    such a run neither hides the nodes after it (they would be told to the kernel again under
    a second number) nor gives a number to two nodes."""
    new, _ = namespace
    ns = new(_Colliding)
    told = trio.run(_walk, ns, b"views")
    nodes = list({id(n): n for _, _, n in told}.values())
    assert len(nodes) > 300 and len(ns.nodes) == len(nodes) + 1  # (and the root)
    assert sorted(ns.nodes) == [ROOT] + list(range(100, 100 + len(nodes)))
    for ino, n in ns.nodes.items():
        assert n.inode == ino and ns.known(n.key) is n
        assert (n.key in ns.moved) == (ino != ns.inode_of(n.key))
    # forget every other node, from the middle of the runs: the rest are still found, at their numbers
    gone = nodes[::2]
    for n in gone:
        ns.forget(n.inode, n.lookups)
    for n in nodes[1::2]:
        assert ns.known(n.key) is n and ns.nodes[n.inode] is n
        again = ns.remember(ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns))
        assert again is n
    for n in gone:
        assert ns.known(n.key) is None and n.key not in ns.moved
    # those forgotten come back: each at a free number, none shared, the table consistent
    for n in gone:
        ns.remember(ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns))
    assert len(ns.nodes) == len(nodes) + 1
    for ino, n in ns.nodes.items():
        assert n.inode == ino and ns.known(n.key) is n
        assert (n.key in ns.moved) == (ino != ns.inode_of(n.key))
    assert set(ns.moved) <= {n.key for n in ns.nodes.values()}


def test_lone_records_kept_apart_from_read_ahead(tmp_path: Path) -> None:
    """Shuffled reads of tiny objects keep at most LONE_BYTES of their pages (the kernel's
    page cache has them too) and never push out what read-ahead fetched; reading in order
    still grows a window and serves the following records from memory."""
    from fsd.mount import reader as reader_mod

    cfg = config.load(dir_disks_config(tmp_path, 2))
    store = Store.open(cfg, init=True)
    payloads = [b"tiny %05d\n" % i + bytes(3000) for i in range(3000)]  # ~3 KB: about one page each
    shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(payloads)]
    reader = reader_mod.Reader(store)
    cache = reader.cache
    cache.lone_budget = 64 << 10  # 16 pages: the test's scale, not 8 MiB

    async def read(order) -> None:
        for k in order:
            assert await reader.read_small(shas[k]) == payloads[k]

    async def main() -> None:  # (one trio run: the reader keeps its trio token)
        # each read ~290 KB past the last (beyond SEQ_SLACK): none continues another
        shuffled = [k * 97 % 3000 for k in range(3000)]
        await read(shuffled)
        assert cache.used == 0 and 0 < cache.lone_used <= cache.lone_budget
        assert len(cache.lone) <= 17 and not cache.lru
        await read(range(1000, 1600))  # in order: the window grows, read-ahead kept in the main part
        assert cache.used > 0 and cache.lone_used <= cache.lone_budget
        kept = dict(cache.lru)
        await read(shuffled[:600])  # shuffled again: the read-ahead stays
        assert all(k in cache.lru for k in kept) and cache.lone_used <= cache.lone_budget
        for k in range(1600, 1650):  # what comes next is in memory already, checked, served inline
            assert reader._small_cached(shas[k], store.index.lookup(shas[k])) == payloads[k]
        # tiny records sharing pages: a page another read uses moves to the main part
        before = cache.used
        await read([1, 2999, 2, 2998])  # (neighbours: their 4 KiB-rounded extents overlap)
        assert cache.used > before

    try:
        trio.run(main)
    finally:
        reader.close()
        store.close()
