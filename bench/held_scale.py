"""`hoard delete --batch` and the gc that frees it at two store sizes, this checkout against an
older one (without the `held` table both read every registered manifest, so their time grew
with the store, not with the one batch; the `held` table, docs/design.md "Which manifests hold
an object", answers from the index).

    python bench/held_scale.py --old CHECKOUT [--sizes 50000,200000] [--batch 10000] [--work DIR]
                               [--object-bytes 512-4096]

For each size a store of that many small objects (0.5–4 KB by default, two directory disks
under --work, on this machine's disk) is grown in batches of --batch through `put_bytes_many`, each batch's
manifest stored and registered as the ingest does; its index is then made the format the old
checkout writes (2: no `held` table) and the store copied, one copy per checkout. On each copy,
in turn: `hoard index migrate` (this checkout's fills `held`: every manifest read once), then
two rounds of the store's side of `hoard delete --batch` of the newest batch
(`hoardfs.fsd.maintenance.deletion.drop_batch`, as the CLI calls it), `hoard gc --no-database --dry-run`
and `hoard gc --no-database`, each its own process: seconds, VmHWM and peak RssAnon (with
`--migrate-old`, this checkout's `hoard index migrate` of the old copy's index after its rounds
too: the upgrade's migration). Raw JSON in bench/results/held-scale-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import lmdb
from _common import REPO, RESULTS, _commit, _machine, hoard_process

from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.outputs.manifest import batch_manifest, naming_lock
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config

DROP = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
        "from hoardfs.fsd.maintenance.deletion import drop_batch; "
        "s = Store.open(config.load(sys.argv[1])); print(drop_batch(s, sys.argv[2])); s.close()")


def grow(root: Path, size: int, batch: int, low: int, high: int) -> Path:
    """A store of `size` objects of `low`–`high` bytes in batches of `batch` (two replicas of
    each shard); its config."""
    cfg_path = dir_disks_config(root, 2, shard_size_mb=64)
    with Store.open(config.load(cfg_path), init=True) as store:
        for first in range(0, size, batch):
            rng = random.Random(first)
            stored: dict[str, tuple[str, int]] = {}
            for part in range(0, min(batch, size - first), 5000):
                n = min(5000, size - first - part, batch - part)
                for r in store.put_bytes_many([rng.randbytes(rng.randint(low, high)) for _ in range(n)]):
                    stored[f"{len(stored):05d}.bin"] = (r.sha256, r.size)
            bid = f"b{first // batch:05d}"
            put = store.put_bytes(batch_manifest(bid, "bench", "2026-01-01T00:00:00Z", stored,
                                                 dict.fromkeys(stored, 0), [], []))
            with naming_lock(store):
                store.register_batch(bid, {"source": "bench", "manifest": put.sha256, "files": len(stored),
                                           "bytes": sum(s for _, s in stored.values())},
                                     holds=[bytes.fromhex(h) for h, _ in stored.values()] + [bytes.fromhex(put.sha256)])
    return cfg_path


def as_format_2(index_dir: Path) -> None:
    """The index as the checkout before `held` wrote it: format 2, no `held` table."""
    env = lmdb.open(str(index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"held", txn=txn), delete=True)
        txn.put(formats.INDEX_KEY.encode(), b"2", db=env.open_db(b"meta", txn=txn))
    env.close()


def held_size(index_dir: Path) -> dict | None:
    """The `held` table's entries and the bytes of its B-tree pages, its key length, and the
    bytes of every table's pages (`index_bytes`: the index without its free pages) — None:
    the index has no `held` table."""
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            try:
                held = env.open_db(b"held", txn=txn, create=False)
            except lmdb.NotFoundError:
                return None
            st = txn.stat(held)
            objects = txn.stat(env.open_db(b"objects", txn=txn, create=False))["entries"]
            cur = txn.cursor(db=held)
            key = bytes(cur.key()) if cur.first() else b""
            tables = [bytes(k) for k in txn.cursor().iternext(values=False)]
            index = sum(pages(txn.stat(env.open_db(t, txn=txn, create=False))) for t in tables) + pages(txn.stat())
    finally:
        env.close()
    return {"entries": st["entries"], "bytes": pages(st), "objects": objects, "key_bytes": len(key),
            "bytes_per_object": round(pages(st) / max(objects, 1), 1), "index_bytes": index,
            "index_bytes_per_object": round(index / max(objects, 1), 1)}


def pages(st: dict) -> int:
    """The bytes of a table's B-tree pages (from its `stat`)."""
    return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]


def copy_store(src: Path, dst: Path) -> Path:
    """A copy of the store's folder (config, SSD, disks) with the config's paths moved to it."""
    shutil.copytree(src, dst, symlinks=True)
    cfg = dst / "hoard.toml"
    cfg.write_text(cfg.read_text().replace(str(src), str(dst)))
    return cfg


def rounds(cfg_path: Path, repo: Path, n: int) -> dict:
    with Store.open(config.load(cfg_path), writable=False) as store:
        batches = sorted(name for name, _ in store.index.iter_batches())
    out: dict = {"index migrate": hoard_process(cfg_path, ["index", "migrate"], repo=repo, ok=(0,)), "rounds": [],
                 "held table": held_size(config.load(cfg_path).index_dir)}
    for _ in range(n):
        victim = batches.pop()
        out["rounds"].append({
            "batch": victim,
            "delete --batch": hoard_process(cfg_path, [str(cfg_path), victim], repo=repo,
                                            prog=[sys.executable, "-c", DROP]),
            "gc --dry-run": hoard_process(cfg_path, ["gc", "--no-database", "--dry-run"], repo=repo, ok=(0,)),
            "gc (one deleted batch)": hoard_process(cfg_path, ["gc", "--no-database"], repo=repo, ok=(0,))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the checkout to compare with (`git archive` of it)")
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--object-bytes", default="512-4096", help="the objects' sizes, LOW-HIGH")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--label", default=None)
    ap.add_argument("--migrate-old", action="store_true",
                    help="after the old checkout's rounds, time this one's `hoard index migrate` of its index")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(f"/var/tmp/held-scale-{os.getpid()}")
    label = args.label or "-".join(f"{s // 1000}k" for s in sizes)
    low, high = (int(x) for x in args.object_bytes.split("-"))
    doc: dict = {"commit": _commit(), "machine": _machine(), "batch": args.batch, "object_bytes": [low, high],
                 "load_before": os.getloadavg(), "sizes": {}}
    path = RESULTS / f"held-scale-{label}.json"
    try:
        for size in sizes:
            base = work / f"{size}"
            t0 = time.monotonic()
            cfg_path = grow(base / "grown", size, args.batch, low, high)
            as_format_2(config.load(cfg_path).index_dir)
            built_s = time.monotonic() - t0
            got: dict = {"objects": size, "batches": -(-size // args.batch), "build_s": round(built_s, 1)}
            for who, repo in (("old", args.old.resolve()), ("new", REPO)):
                copy = copy_store(base / "grown", base / who)
                got[who] = rounds(copy, repo, args.rounds)
                if who == "old" and args.migrate_old:  # the old checkout's index, migrated by this one
                    got["old migrated"] = {"index migrate": hoard_process(copy, ["index", "migrate"], ok=(0,)),
                                           "held table": held_size(config.load(copy).index_dir)}
                shutil.rmtree(base / who)
                print(f"{size}: {who}: " + "; ".join(
                    f"{k} {r[k]['seconds']:.2f} s" for r in got[who]["rounds"]
                    for k in ("delete --batch", "gc --dry-run", "gc (one deleted batch)")), flush=True)
            shutil.rmtree(base)
            doc["sizes"][str(size)] = got
            doc["load_after"] = os.getloadavg()
            path.write_text(json.dumps(doc, indent=1) + "\n")  # after each size: a run stopped keeps it
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{path.relative_to(REPO)} written", flush=True)


if __name__ == "__main__":
    main()
