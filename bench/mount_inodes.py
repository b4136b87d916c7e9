"""The mount daemon's inode table: bytes of Python heap per name the kernel is told of.

    python bench/mount_inodes.py [--objects 100000]

N tiny objects on two directory disks, named by one view (1,000 per directory, as
bench/peers/ram.py names them). A real `Namespace` over the store's index is walked the way
`find` over the mount walks it — every directory listed (readdirplus) and every entry
remembered under its parent, by-hash/ then the view — and the heap it grew by is measured
with tracemalloc (the table: its file columns and index, its directory nodes; not the
manifest pages, which are a cache of their own — all of them loaded before, none counted).
No FUSE: what the kernel would be told, without the kernel.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import trio
from _common import MiB, report

from hoardfs.base import config
from hoardfs.fsd.mount.namespace import ROOT, Namespace
from hoardfs.fsd.mount.reader import Reader
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config

CHUNK = 50_000


async def walk(ns: Namespace, below: list[bytes] = ()) -> int:
    """Remember every node under the root (or under the path `below`) as readdirplus does;
    the count of names remembered."""
    parent = ns.nodes[ROOT]
    for part in below:
        node = await ns.lookup(parent, part)
        parent = ns.remember(node, parent.inode, part)
    told, todo = 0, [parent]
    while todo:
        d = todo.pop()
        for name, node in await ns.children(d):
            node = ns.remember(node, d.inode, name)
            told += 1
            if node.key[0] == "dir":
                todo.append(node)
    return told


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=100_000)
    n = ap.parse_args().objects
    with tempfile.TemporaryDirectory(prefix="hoard-inodes-", dir="/var/tmp") as tmp:
        cfg_path = dir_disks_config(Path(tmp), 2, shard_size_mb=256)
        store = Store.open(config.load(cfg_path), init=True)
        shas: list[str] = []
        for lo in range(0, n, CHUNK):
            shas += [r.sha256 for r in store.put_bytes_many([b"object %07d\n" % i
                                                             for i in range(lo, min(n, lo + CHUNK))])]
        define_view_rows(store, "ram", ((f"d{i // 1000:04d}/f{i:07d}.txt", sha) for i, sha in enumerate(shas)))
        reader = Reader(store)
        try:
            warm = Namespace(store.index, str(store.cfg.ssd.zone_path("3A")), reader.get_object)
            trio.run(walk, warm, [b"views", b"ram"])
            for tree in warm.trees.values():  # every page kept (the mount's budget would evict some
                tree.cache_bytes = 1 << 40    # and the walk below would load them again, counted)
            trio.run(walk, warm, [b"views", b"ram"])
            ns = Namespace(store.index, str(store.cfg.ssd.zone_path("3A")), reader.get_object)
            ns.trees = warm.trees  # the manifest's pages loaded already: not counted
            tracemalloc.start()
            t0 = time.monotonic()
            told = trio.run(walk, ns, [b"by-hash"])
            told += trio.run(walk, ns, [b"views", b"ram"])
            secs = time.monotonic() - t0
            heap = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        finally:
            reader.close()
            store.close()
    known = len(ns.nodes)
    data = {"objects": n, "names_told": told, "nodes": known, "heap_bytes": heap, "walk_s": round(secs, 2)}
    report("mount inode table", [
        ("names", f"{told:,} told to the kernel (by-hash/ and the view), {known:,} nodes in the table"),
        ("heap", f"{heap / MiB:,.1f} MiB: {heap / told:,.0f} bytes per name, {heap / known:,.0f} per node"),
    ], data)


if __name__ == "__main__":
    main()
