"""What the mount daemon keeps in memory, over a real store, without FUSE: its inode table
(fsd/mount/namespace.py, inodes.py) — what it keeps per node, numbers that collide — and
its read cache (reader.py). The mount itself: test_mount*.py."""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import time
from pathlib import Path

import pytest
import trio

from hoardfs.base import config
from hoardfs.fsd.mount.namespace import DERIVED, ROOT, Namespace, Node, inode_of
from hoardfs.fsd.mount.reader import Reader
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config


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

    new.store = store  # (a test adds objects)
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


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_files_are_rows_and_names_are_derived(namespace) -> None:
    """What the table keeps per node (the mount daemon's memory grows with it): by-hash/'s
    directories and files are numbered by what they are (a directory's two hex bytes, a
    file's sha256) and kept in no table; a view's file is a row of flat columns (56 bytes: no
    object, no key tuple, no name, no size); other directories are nodes; every node is at
    its own number, the same after a remount and after being forgotten; the names of deleted
    objects — every one the kernel knows, in by-hash/ and in the view, two in one file's
    case — are derived from the directories it was named in."""
    new, shas = namespace
    ns = new()
    in_hash, in_view = trio.run(_walk, ns, b"by-hash"), trio.run(_walk, ns, b"views")
    told = in_hash + in_view
    assert all(n.inode >= DERIVED for _, _, n in in_hash[1:]) and all(n.inode < DERIVED for _, _, n in in_view)
    assert sorted(ns.nodes) == sorted({n.inode for _, _, n in told if n.inode < DERIVED} | {ROOT})
    assert ns.moved == {("dir", "root"): ROOT}  # no collision among these few
    files = {n.inode: n for _, _, n in told if n.sha is not None}
    assert len(ns.files) == 300 and all(n.sha is None for n in ns.others.values())
    f = ns.files
    assert f.ino.itemsize + 32 + f.time.itemsize + f.lookups.itemsize + f.parent.itemsize == 56
    # by-hash/ (mtime 0: and the view's manifest objects) and the view (its time): two identities each
    assert len([n for n in files.values() if n.mtime_ns]) == 300 and len([n for n in files.values() if not n.mtime_ns]) > 300
    for _, _, n in told:
        got = ns.nodes[n.inode]
        assert got.key == n.key and got.size == n.size and got.mode == n.mode
        if n.inode < DERIVED:
            assert n.inode == inode_of(n.key) and ns.known(n.key).inode == n.inode
            assert ns.generation(n) == 0
        elif n.sha is not None:  # a by-hash file: its number is its sha256's first bits, its generation more of them
            assert n.inode == DERIVED | 1 << 61 | int.from_bytes(n.sha[:8], "big") >> 3 and ns.known(n.key) is None
            assert ns.generation(n) == int.from_bytes(n.sha[8:16], "big")
        else:
            assert ns.known(n.key).inode == n.inode
    # a file named in two directories keeps both; names are not kept
    view = [(p, name, n) for p, name, n in told if n.sha is not None and n.mtime_ns]
    twice = next(n for _, _, n in view if n.sha == bytes.fromhex(shas[0]))
    assert sorted(f.parents(f.row(twice.inode))) == sorted(p for p, _, n in view if n.inode == twice.inode)
    assert len(f.parents(f.row(twice.inode))) == 2
    # deleted objects: every name the kernel knows them under, in by-hash/ and in the view
    dead = {bytes.fromhex(shas[0]), bytes.fromhex(shas[1]), bytes.fromhex(shas[7])}
    assert ns.with_object(dead) == sorted({(p, name) for p, name, n in told if n.sha in dead})
    assert len(ns.with_object(dead)) == 3 + 5  # by-hash/, and f000, again, f001, <sha1>.bin, f007
    # a remount: the same numbers; a node forgotten and told again: the same number
    again = new()
    remounted = trio.run(_walk, again, b"views") + trio.run(_walk, again, b"by-hash")
    assert len(remounted) > 600 and all(n.inode in {m.inode for _, _, m in told} for _, _, n in remounted)
    assert again.with_object(dead) == ns.with_object(dead)  # the same names, at the same numbers
    n = view[5][2]
    ns.forget(n.inode, ns.nodes[n.inode].lookups)
    assert n.inode not in ns.nodes and ns.known(n.key) is None and ns.with_object({n.sha}) == sorted(
        {(p, name) for p, name, m in told if m.sha == n.sha and m.inode != n.inode})
    fresh = ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns)
    assert ns.remember(fresh).inode == n.inode and ns.nodes[n.inode].lookups == 1


class _Sharing(Namespace):
    """By-hash numbers from the first 8 bits of a sha256: most of 300 objects share theirs."""
    PREFIX_BITS = 8


def sharing_bytes(sha: bytes, bits: int) -> bytes:
    """New bytes whose sha256 begins with the same `bits` bits as `sha` (found by trying)."""
    top = int.from_bytes(sha[:8], "big") >> (64 - bits)
    for i in itertools.count():
        data = b"collider %d\n" % i
        if int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> (64 - bits) == top:
            return data
    raise AssertionError


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_by_hash_files_whose_number_bits_are_shared_get_rows(namespace) -> None:
    """A by-hash file whose leading sha256 bits another stored object shares is not numbered
    by them: it gets a row at its hashed number like a view's file, and its name is still
    invalidated once when it is deleted. A number given while its object was alone, whose bits
    an object stored later shares, names nothing any more (the mount answers ESTALE and the
    kernel looks the name up again): never the newcomer; looked up again, each of the two gets
    a row of its own."""
    new, _ = namespace
    ns = new(_Sharing)
    told = trio.run(_walk, ns, b"by-hash")[1:]
    files = [(p, name, n) for p, name, n in told if n.sha is not None]
    tops = collections.Counter(n.sha[0] for _, _, n in files)
    alone = [(p, name, n) for p, name, n in files if tops[n.sha[0]] == 1]
    shared = [(p, name, n) for p, name, n in files if tops[n.sha[0]] > 1]
    assert len(alone) > 20 and len(shared) > 100  # (~300 objects in 256 buckets)
    for _p, _name, n in alone:
        assert n.inode == DERIVED | 1 << 61 | n.sha[0] and ns.nodes[n.inode].sha == n.sha
    for p, _name, n in shared:
        assert n.inode < DERIVED and ns.files.row(n.inode) >= 0 and ns.nodes[n.inode].sha == n.sha
        assert ns.files.parents(ns.files.row(n.inode)) == [p]  # the (numbered, not kept) by-hash directory
    dead = {shared[0][2].sha, alone[0][2].sha}
    assert ns.with_object(dead) == sorted((p, name) for p, name, n in files if n.sha in dead)

    p, name, a = alone[1]
    newcomer = new.store.put_bytes(sharing_bytes(a.sha, 8))
    b_sha = bytes.fromhex(newcomer.sha256)
    assert a.inode not in ns.nodes and ns.nodes.get(a.inode) is None  # not the newcomer's
    hash2 = ns.nodes[p]
    again = ns.remember(trio.run(ns.lookup, hash2, name), p, name)
    assert again.inode < DERIVED and ns.nodes[again.inode].sha == a.sha
    b_name, b_dir = ns._hash_name(b_sha), ns.known(("dir", "hash2", b_sha[0], b_sha[1]))  # (8 bits: maybe another)
    b = ns.remember(trio.run(ns.lookup, b_dir, b_name), b_dir.inode, b_name)
    assert b.inode < DERIVED and b.inode != again.inode and ns.nodes[b.inode].sha == b_sha


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_collected_objects_by_hash_bits_stay_taken(namespace) -> None:
    """A by-hash file's number whose object gc collected names nothing (the kernel may still
    hold it: a name not invalidated yet, a file held open), and an object stored later with
    the same leading bits gets a row instead of that number, on this mount and the next; the
    collected object stored again is itself and gets its number back. Two collected objects
    whose first 64 bits agree leave the bits shared for good."""
    from hoardfs.fsd.maintenance.gc import gc

    new, shas = namespace
    store = new.store
    ns = new(_Sharing)
    files = [n for _, _, n in trio.run(_walk, ns, b"by-hash")[1:] if n.sha is not None]
    tops = collections.Counter(n.sha[0] for n in files)
    gone, back = [n for n in files if tops[n.sha[0]] == 1][:2]
    assert gone.inode >= DERIVED and back.inode >= DERIVED
    store.register_view("v", None)  # (which names every object)
    store.index.mark(store.index.deleted, [gone.sha, back.sha], "test")
    assert gc(store, threshold=1.0).objects_dropped == 2
    assert ns.nodes.get(gone.inode) is None and ns.nodes.get(back.inode) is None

    b_sha = bytes.fromhex(store.put_bytes(sharing_bytes(gone.sha, 8)).sha256)
    assert store.put_bytes(b"object %03d\n" % shas.index(back.sha.hex())).sha256 == back.sha.hex()
    for mount in (ns, new(_Sharing)):  # (a remount: the same numbers)
        assert mount.nodes.get(gone.inode) is None  # not the newcomer's
        b_dir = mount.known(("dir", "hash2", b_sha[0], b_sha[1]))
        b = mount.remember(trio.run(mount.lookup, b_dir, mount._hash_name(b_sha)), b_dir.inode, b"")
        assert b.inode < DERIVED and mount.nodes[b.inode].sha == b_sha
        assert mount.nodes[back.inode].sha == back.sha  # stored again: itself
    with store.index.env.begin(write=True) as txn:  # another collected object with back's first 64 bits
        store.index.note_dropped(txn, [back.sha[:8] + bytes(24)])
    assert ns.nodes.get(back.inode) is None


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_listing_told_again_after_bits_came_to_be_shared_gives_the_lookups_number(namespace) -> None:
    """A by-hash directory's listing (opendir's snapshot) whose entry is told to the kernel
    again (readdir resumed where a full buffer stopped, a rewind) after an object sharing the
    entry's bits was stored: readdirplus gives the number a lookup gives (a row's), not the
    number that names nothing any more (it kept the first telling's: the kernel held a
    number that answers ESTALE, and readdirplus and stat disagreed)."""
    new, _ = namespace
    ns = new(_Sharing)
    told = trio.run(_walk, ns, b"by-hash")[1:]
    tops = collections.Counter(n.sha[0] for _, _, n in told if n.sha is not None)
    p, name, a = next((p, name, n) for p, name, n in told if n.sha is not None and tops[n.sha[0]] == 1)
    listing = trio.run(ns.children, ns.nodes[p])
    entry = next(node for child, node in listing if child == name)
    assert ns.remember(entry, p, name).inode == a.inode >= DERIVED
    new.store.put_bytes(sharing_bytes(a.sha, 8))
    again = ns.remember(entry, p, name).inode
    looked_up = ns.remember(trio.run(ns.lookup, ns.nodes[p], name), p, name).inode
    assert again == looked_up < DERIVED and ns.nodes[again].sha == a.sha


class _Reads:
    """The index's real LMDB environment, counting what a request costs it: each `get` and
    each cursor positioning or step (a B-tree descent or a leaf entry)."""

    def __init__(self, env) -> None:
        self.env, self.reads = env, 0

    def __getattr__(self, name: str):
        return getattr(self.env, name)

    def begin(self, *args, **kwargs) -> _Reads._Txn:
        return self._Txn(self, self.env.begin(*args, **kwargs))

    class _Txn:
        def __init__(self, count: _Reads, txn) -> None:
            self.count, self.txn = count, txn

        def __getattr__(self, name: str):
            return getattr(self.txn, name)

        def __enter__(self) -> _Reads._Txn:
            self.txn.__enter__()
            return self

        def __exit__(self, *exc) -> None:
            self.txn.__exit__(*exc)

        def get(self, *args, **kwargs):
            self.count.reads += 1
            return self.txn.get(*args, **kwargs)

        def cursor(self, *args, **kwargs) -> _Reads._Cursor:
            return _Reads._Cursor(self.count, self.txn.cursor(*args, **kwargs))

    class _Cursor:
        def __init__(self, count: _Reads, cur) -> None:
            self.count, self.cur = count, cur

        def __getattr__(self, name: str):
            return getattr(self.cur, name)

        def set_range(self, key: bytes) -> bool:
            self.count.reads += 1
            return self.cur.set_range(key)

        def __iter__(self):
            for item in self.cur.iternext():
                self.count.reads += 1
                yield item


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_by_hash_lookup_reads_the_index_a_few_times_whatever_its_size(namespace) -> None:
    """`stat by-hash/<aa>/<bb>/<sha256>` costs the daemon a few index reads, as many at 300
    objects as at 5,300: a by-hash directory is looked up by one prefix read, not by listing
    its parent (up to 256 prefix reads each, a lookup's cost growing with the index's depth:
    10,000 lookups 1.08 → 1.64 ms each from 10^5 to 10^6 objects, docs/benchmarks.md)."""
    new, shas = namespace
    store = new.store
    costs = {}
    for more in (0, 5000):
        store.put_bytes_many([b"more %05d\n" % i for i in range(more)])
        ns = new()
        env = store.index.env
        store.index.env = count = _Reads(env)
        try:
            for sha in [bytes.fromhex(h) for h in shas[:20]]:
                before = count.reads
                node = ns.nodes[ROOT]
                for name in (b"by-hash", b"%02x" % sha[0], b"%02x" % sha[1], ns._hash_name(sha)):
                    node = ns.remember(trio.run(ns.lookup, node, name), node.inode, name)
                assert node.sha == sha and node.inode >= DERIVED
                costs[more] = max(costs.get(more, 0), count.reads - before)
        finally:
            store.index.env = env
    assert costs[5000] == costs[0] <= 12, costs  # (a listing of the 256 first bytes alone: 256)


class _Colliding(Namespace):
    """Every identity hashes to one of 3 numbers: collisions are the rule, not 1 in 10^11."""
    inode_of = staticmethod(lambda key: 100 + inode_of(key) % 3)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_colliding_numbers_and_forgetting_inside_a_probe_run(namespace) -> None:
    """Nodes whose numbers collide take the next free ones; forgetting one in the middle of
    such a run neither hides the nodes after it (they would be told to the kernel again under
    a second number) nor gives a number to two nodes."""
    new, _ = namespace
    ns = new(_Colliding)
    told = trio.run(_walk, ns, b"views")
    nodes = list({n.inode: n for _, _, n in told}.values())
    assert len(nodes) > 300 and len(ns.nodes) == len(nodes) + 1  # (and the root)
    assert sorted(ns.nodes) == [ROOT] + list(range(100, 100 + len(nodes)))
    for ino, n in ns.nodes.items():
        assert n.inode == ino and ns.known(n.key).inode == ino
        assert (n.key in ns.moved) == (ino != ns.inode_of(n.key))
    # forget every other node, from the middle of the runs: the rest are still found, at their numbers
    gone = nodes[::2]
    for n in gone:
        ns.forget(n.inode, ns.nodes[n.inode].lookups)
    for n in nodes[1::2]:
        assert ns.known(n.key).inode == n.inode and ns.nodes[n.inode].key == n.key
        again = ns.remember(ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns))
        assert again.inode == n.inode
    for n in gone:
        assert ns.known(n.key) is None and n.key not in ns.moved
    # those forgotten come back: each at a free number, none shared, the table consistent
    for n in gone:
        ns.remember(ns.make(n.key, n.mode, n.size, n.sha, n.mtime_ns))
    assert len(ns.nodes) == len(nodes) + 1
    for ino, n in ns.nodes.items():
        assert n.inode == ino and ns.known(n.key).inode == ino
        assert (n.key in ns.moved) == (ino != ns.inode_of(n.key))
    assert set(ns.moved) <= {n.key for _, n in ns.nodes.items()}


@pytest.mark.parametrize("seed", range(4))
def test_file_columns_against_a_dict(seed: int) -> None:
    """The file table's open-addressing index (fsd/mount/inodes.py) against a dict through
    random adds, lookups, counts and removals — inodes chosen to share their low bits (long
    probe runs, wrapping at the table's end, rows freed in the middle of runs and reused)."""
    import random

    from hoardfs.fsd.mount.inodes import Files

    rnd = random.Random(seed)
    files, model = Files(), {}  # inode → (sha, mtime, lookups, parents)
    pool = [(rnd.randrange(4) << 40) | rnd.choice([0, 1, 2, 7, 1023, (1 << 20) - 1]) | 1 for _ in range(400)]
    pool = list(dict.fromkeys(ino for ino in pool if ino))
    for step in range(6000):
        ino = rnd.choice(pool)
        r = files.row(ino)
        assert (r >= 0) == (ino in model)
        if ino not in model:
            sha, mtime = rnd.randbytes(32), rnd.choice([0, 10**18, 2 * 10**18])
            r = files.add(ino, sha, mtime)
            files.looked_up(r, 1)
            model[ino] = (sha, mtime, 1, [])
        elif rnd.random() < 0.5:
            sha, mtime, n, parents = model[ino]
            assert files.is_(r, sha, mtime) and files.sha_of(r) == sha and files.mtime_of(r) == mtime
            assert files.count_of(r) == n
            p = rnd.choice([5, 6, 7])
            files.link(r, p)
            model[ino] = (sha, mtime, files.looked_up(r, 1), parents + [p] if p not in parents else parents)
            assert model[ino][2] == n + 1
        else:
            sha, mtime, n, parents = model[ino]
            k = rnd.randint(1, n)
            if files.looked_up(r, -k) == 0:
                files.remove(r)
                del model[ino]
            else:
                model[ino] = (sha, mtime, n - k, parents)
        if step % 500 == 0:
            assert len(files) == len(model)
            for i, (sha, _mtime, n, parents) in model.items():
                r = files.row(i)
                assert files.sha_of(r) == sha and files.count_of(r) == n
                assert sorted(files.parents(r)) == sorted(parents)
    # the sha256 column searched both ways (a few dead objects, many): every row of theirs
    shas = {m[0] for m in model.values()}
    for dead in (set(list(shas)[:3]), set(list(shas)[:40])):
        rows = files.rows_with(dead, 0, len(files.ino))
        assert sorted(files.sha_of(r) for r in rows) == sorted(m[0] for m in model.values() if m[0] in dead)
    # a count past 2^32 (never seen: the kernel's is 64-bit) is kept whole
    r = files.add(1 << 50, b"x" * 32, 0)  # (no inode of the pool)
    assert files.looked_up(r, 1 << 33) == 1 << 33 and files.looked_up(r, -(1 << 33) + 1) == 1


def _drop_page_cache(root: Path, until=lambda: True) -> None:
    """The kernel's cached pages of every file under `root` dropped, written back first (a
    dirty page or one under writeback is not dropped), again until `until()` holds — on a
    busy machine a page can still be under writeback when the first drop asks; fails after
    ~10 s."""
    for _ in range(100):
        for d, _, names in os.walk(root):
            for name in names:
                fd = os.open(os.path.join(d, name), os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        if until():
            return
        time.sleep(0.1)
    raise AssertionError(f"the kernel kept the pages of {root} cached through 100 drops")


def test_lone_records_kept_apart_from_read_ahead(disk_path: Path, monkeypatch) -> None:
    """Shuffled reads of tiny objects keep at most LONE_BYTES of their pages (the kernel's
    page cache has them too, and serves a page read again without a thread hop) and never
    push out what read-ahead fetched; reading in order still grows a window and serves the
    following records from memory."""
    from hoardfs.fsd.mount import reader as reader_mod

    # no hedging: on a busy machine a read slower than 0.5 s is asked of the other replica too,
    # and that second read of the same record looks like a reader going on in order
    monkeypatch.setattr(reader_mod, "HEDGE_MIN", 60.0)
    cfg = config.load(dir_disks_config(disk_path, 2, shard_size_mb=256))  # (one shard)
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
        # in the shard's order (not the order given), each read ~290 KB past the last (beyond
        # SEQ_SLACK): none continues another
        stored = sorted(range(3000), key=lambda k: store.index.lookup(shas[k]).offset)
        shuffled = [stored[j * 97 % 3000] for j in range(3000)]
        await read(shuffled)
        assert cache.used == 0 and 0 < cache.lone_used <= cache.lone_budget
        assert len(cache.lone) <= 17 and not cache.lru
        # a record read long ago (gone from the small part): from the kernel's page cache,
        # verified, on this thread — and nothing more kept for it
        k = shuffled[5]
        loc = store.index.lookup(shas[k])
        assert reader._small_cached(shas[k], loc) is None
        before = (cache.used, cache.lone_used)
        assert reader._small_nowait(shas[k], loc) == payloads[k]
        assert (cache.used, cache.lone_used) == before
        # … not once the kernel dropped its pages: RWF_NOWAIT refuses to wait for the disk
        _drop_page_cache(disk_path, until=lambda: reader._small_nowait(shas[k], loc) is None)
        assert await reader.read_small(shas[k]) == payloads[k]  # (the threaded path reads it)
        assert reader._small_nowait(shas[k], loc) == payloads[k]
        # in order (pages not cached): the window grows, read-ahead is kept in the main part
        _drop_page_cache(disk_path)
        await read(stored[1000:1600])
        assert cache.used > 0 and cache.lone_used <= cache.lone_budget
        kept = dict(cache.lru)
        await read(shuffled[:600])  # shuffled again: the read-ahead stays
        assert all(k in cache.lru for k in kept) and cache.lone_used <= cache.lone_budget
        for k in stored[1600:1650]:  # what comes next is in memory already, checked, served inline
            assert reader._small_cached(shas[k], store.index.lookup(shas[k])) == payloads[k]
        # the kept-open files of shards the index no longer has on that disk are closed
        reader.close_shards(lambda sid, uuid: True)
        assert not reader.fds and reader._small_nowait(shas[k], store.index.lookup(shas[k])) is None

    try:
        trio.run(main)
    finally:
        reader.close()
        store.close()


def test_deleting_many_files_of_one_directory_lists_it_once(tmp_path: Path) -> None:
    """The names to invalidate when many objects of one directory die at once (a batch of
    N files deleted after a `find` walked it) come from one listing of that directory, not
    one listing per object: N listings of an N-name directory is N² work — and with the
    directory's pages larger than the manifest cache (16 MiB a view: a 1,000,000-name
    directory is ~38 MB) N re-reads of every page from disk, so the deletions refresh runs
    for hours and no later deletion is invalidated meanwhile."""
    cfg = config.load(dir_disks_config(tmp_path, 2))
    store = Store.open(cfg, init=True)
    shas = [r.sha256 for r in store.put_bytes_many([b"object %05d\n" % i for i in range(5000)])]
    define_view_rows(store, "v", [(f"d/f{i:05d}.txt", sha) for i, sha in enumerate(shas)])  # 2 pages
    reader = Reader(store)
    reads: list[str] = []

    def get(sha_hex: str) -> bytes:  # the mount's own manifest reads, counted
        reads.append(sha_hex)
        return reader.get_object(sha_hex)

    class _SmallCache(Namespace):
        TREE_BYTES = 1  # one manifest object kept: the directory's pages do not fit, as at scale

    try:
        ns = _SmallCache(store.index, str(cfg.ssd.zone_path("3A")), get)
        told = trio.run(_walk, ns, b"views")
        dead = {bytes.fromhex(s) for s in shas}
        reads.clear()
        t0 = time.monotonic()
        names = ns.with_object(dead)
        took = time.monotonic() - t0
        assert names == sorted({(p, name) for p, name, n in told if n.sha in dead}) and len(names) == 5000
        assert len(reads) <= 4, f"{len(reads)} manifest objects read to name 5000 files of one directory"
        assert took < 5, took
    finally:
        reader.close()
        store.close()


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_manifest_pages_are_kept_within_one_budget(namespace) -> None:
    """Parsed manifest pages count against one budget over every batch and view (a `find`
    over batches/ kept up to 64 manifests' pages): past it the least recently used manifest
    is dropped whole, and listing it again reads it again — same names, same numbers."""
    new, shas = namespace
    define_view_rows(new.store, "w", [(f"e/{i:03d}.txt", sha) for i, sha in enumerate(shas[:50])])

    class _OneManifest(Namespace):
        TREES_BYTES = 1  # any two manifests' pages are over it

    ns = new(_OneManifest)
    first = trio.run(_walk, ns, b"views")
    assert len(ns.trees) == 1 and len({n.key[4] for _, _, n in first if n.key[:3] == ("dir", "tree", "view")}) == 2
    assert len([n for _, _, n in first if n.sha is not None]) == 302 + 50  # (v: 300 and two names again)
    again = trio.run(_walk, ns, b"views")
    assert [(p, name, n.inode) for p, name, n in again] == [(p, name, n.inode) for p, name, n in first]
    full = new()
    trio.run(_walk, full, b"views")
    assert len(full.trees) == 2


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_deletions_round_whose_search_fails_hands_its_objects_to_the_next(namespace) -> None:
    """The deletions refresh takes objects as dead before it looks for their names; a search
    that fails (an unreadable index page, say) used to lose them — the kernel kept the names
    for its entry timeout, an hour. The next round looks for them again."""
    from hoardfs.fsd.maintenance.deletion import hide
    from hoardfs.fsd.mount.watch import Watcher

    new, shas = namespace

    class _SearchFailsOnce(Namespace):
        failed = False

        def with_object(self, dead):
            if not self.failed:
                self.failed = True
                raise OSError(5, "Input/output error")
            return super().with_object(dead)

    ns = new(_SearchFailsOnce)
    told = trio.run(_walk, ns, b"views")
    watcher = Watcher(new.store, None, ns)
    assert watcher.refresh_marks() == []  # (nothing deleted yet)
    victim = bytes.fromhex(shas[7])
    hide(new.store, [victim], "test")
    with pytest.raises(OSError):
        watcher.refresh_marks()
    assert not watcher.visible(victim)  # taken as dead at once
    assert watcher.refresh_marks() == sorted((p, name) for p, name, n in told if n.sha == victim) != []
    assert watcher.refresh_marks() == []  # and only once


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_the_mount_hides_tombstones_except_roots_and_hidden_objects(namespace) -> None:
    """What the mount takes as deleted: hidden objects, and tombstoned ones that are not roots
    (a racing `delete --batch` may tombstone what `hoard put` acknowledged: gc clears that) —
    the roots asked about the tombstoned only, not read whole each round."""
    from hoardfs.fsd.mount.watch import Watcher

    new, shas = namespace
    idx = new.store.index
    sha = [bytes.fromhex(s) for s in shas[:6]]
    idx.mark(idx.rooted, sha[:3], "test: acknowledged by hoard put")
    idx.mark(idx.deleted, [sha[1], sha[4]], "test: a batch dropped")
    idx.mark(idx.hidden, [sha[2], sha[5]], "test: hidden")
    watcher = Watcher(new.store, None, new())
    watcher.refresh_marks()
    assert [watcher.visible(s) for s in sha] == [True, True, False, True, False, False]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_the_watchers_rounds_read_nothing_while_the_index_is_unchanged(namespace) -> None:
    """The daemon's background rounds over the index cost nothing per object while nothing is
    written to it (they ran every 1–2 s over every deleted object and every batch, and every
    10 s over every shard's record for `.hoard/health`, whatever changed), and what the
    deletions round keeps is 16 bytes per deleted object — no set of
    them (~120 B each) — from which objects are shown or not, a deleted one confirmed by the
    index."""
    from hoardfs.fsd.maintenance.deletion import hide
    from hoardfs.fsd.mount.watch import DEAD_PREFIX, Watcher

    new, shas = namespace
    store = new.store
    ns = new()
    told = trio.run(_walk, ns, b"views")
    reader = Reader(store)
    watcher = Watcher(store, reader, ns)
    assert watcher.refresh_marks() == [] and watcher.refresh_names() == []  # (the first rounds)
    watcher.refresh_health()
    health = watcher.health_text()
    assert health.startswith(f"objects: {store.index.count_objects()}\n".encode()) and b"views: 1\n" in health
    env = store.index.env
    store.index.env = count = _Reads(env)
    try:
        for _ in range(3):
            assert watcher.refresh_marks() == [] and watcher.refresh_names() == []
            watcher.refresh_health()  # (the read queues' lines only: the store's part is kept)
        assert count.reads == 0 and watcher.health_text() == health
    finally:
        store.index.env = env
        reader.close()
    victims = sorted(bytes.fromhex(s) for s in shas[:50])
    hide(store, victims, "test")
    assert watcher.refresh_marks() == sorted((p, name) for p, name, n in told if n.sha in set(victims))
    assert watcher.dead == b"".join(v[:DEAD_PREFIX] for v in victims)  # (the whole of what it keeps)
    assert not any(watcher.visible(v) for v in victims) and all(watcher.visible(bytes.fromhex(s)) for s in shas[50:])
    assert watcher.refresh_marks() == []  # told once
    store.index.unmark(store.index.hidden, victims[:1])  # shown again: so before the next round
    assert watcher.visible(victims[0]) and not watcher.visible(victims[1])


def test_shuffled_reads_of_tiny_records_start_no_read_ahead(tmp_path: Path, monkeypatch) -> None:
    """Shuffled reads of tiny records (~80 bytes) in small shards: with "in order" meaning
    within 256 KiB of the last read, one read in eight continued the last by chance and one
    in sixty started a read-ahead window nobody came to (23 MiB of the daemon after 100,000
    reads at 10^6 objects). Within 8 records' size of it: none here; read in order, the same
    records still stream ahead."""
    import random

    from hoardfs.fsd.mount import reader as reader_mod

    monkeypatch.setattr(reader_mod, "HEDGE_MIN", 60.0)  # (a hedged second read looks like one in order)
    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=4))
    store = Store.open(cfg, init=True)
    payloads = [b"tiny object %06d\n" % i for i in range(40_000)]  # 18 bytes: a 4 MiB shard holds ~50,000
    shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(payloads)]
    reader, fresh = reader_mod.Reader(store), reader_mod.Reader(store)

    async def main() -> None:
        order = random.Random(5).sample(range(len(shas)), 3000)
        for k in order:
            assert await reader.read_small(shas[k]) == payloads[k]
        assert reader.cache.used == 0 and not reader.cache.lru  # no window opened
        stored = sorted(range(len(shas)), key=lambda k: store.index.lookup(shas[k]).offset)
        _drop_page_cache(tmp_path)
        for k in stored[20_000:20_400]:  # (another reader: none of these pages in its cache)
            assert await fresh.read_small(shas[k]) == payloads[k]
        assert fresh.cache.used > 0  # in order: read ahead

    try:
        trio.run(main)
    finally:
        reader.close()
        fresh.close()
        store.close()
