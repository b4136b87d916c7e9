"""Rebuild of one lost lab4 disk onto a new disk, vs the bottleneck bound; scrub throughput
vs the disks' sequential read bound.

    python bench/rebuild_scrub.py [--gb 2.4]

lab4 plus a fifth, new disk (3000 MB, 60/50 MiB/s). Objects of 64 MiB are stored with two
copies; the disk holding the most is unmounted (lost) and rebuilt onto the new one.
Bound for the rebuild: bytes / min(target write, target read, sum of the sources' reads):
each copy is also read back from the new disk before it is indexed, and the lab throttles
a disk's reads and writes separately. Units are MiB (2^20 bytes), as the lab throttles.
Bound for the scrub: bytes per disk / its read MiB/s, the slowest disk deciding.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import LAB4, Lab, drop_caches, lab_profile, lab_store, report, run_timed

from hoardfs.fsd.io.scrub import verify
from hoardfs.fsd.maintenance.rebuild import rebuild
from tests.lab import DiskProfile

MB = 1 << 20  # the lab's unit: profiles' read/write figures are MiB/s

NEW = DiskProfile("new", 3000, 60, 50, 150)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-", dir="/var/tmp"))
    n = int(args.gb * 1024 / 64)
    src = work / "src"
    src.mkdir()
    for i in range(n):
        (src / f"o{i:04d}.bin").write_bytes(os.urandom(64 << 20))
    with Lab([*LAB4, NEW], direct_io=True) as lab:
        store = lab_store(lab, work, ["lab1", "lab2", "lab3", "lab4"], shard_size_mb=256)
        lab_profile_of_run = lab_profile(lab)
        with lab.throttled():
            store.put_many(sorted(src.iterdir()))
            per_disk: dict[str, int] = defaultdict(int)
            for m in store.index.iter_shards():
                for u in m.replicas:
                    per_disk[u] += m.size
            # scrub: every replica on every disk
            drop_caches()
            t0 = time.monotonic()
            v = verify(store)
            scrub_s = time.monotonic() - t0
            read_bw = {u: lab.disks[d.label].profile.read_mbps * MB for u, d in store.disks.items()}
            scrub_bound = max(per_disk[u] / read_bw[u] for u in per_disk)
            # rebuild: lose the fullest disk, rebuild onto the new one
            victim = max(per_disk, key=per_disk.get)
            victim_label = store.disks[victim].label
            lost_bytes = per_disk[victim]
            store.close()
            lab.vanish(victim_label)
            extra = work / "new.toml"
            cfg_text = (work / "hoard.toml").read_text()
            cfg_text += f'\n[[disks]]\nlabel = "new"\npath = "{lab.disks["new"].mountpoint}"\n'
            extra.write_text(cfg_text)
            from hoardfs.base import config
            from hoardfs.fsd.store import Store

            store = Store.open(config.load(extra), init=True)
            drop_caches()
            t0 = time.monotonic()
            r = rebuild(store, victim_label, onto="new")
            rebuild_s = time.monotonic() - t0
            sources = {u for m in store.index.iter_shards() for u in m.replicas if u != store_uuid(store, "new")}
            src_bw = sum(read_bw[u] for u in sources if u in read_bw)
            # every copy is written, then read back from the new disk (page cache dropped) before
            # the index names it; the lab throttles a disk's reads and writes separately, so the
            # bound is the slowest of: the sources' reads, the new disk's writes, its reads
            bound = lost_bytes / min(NEW.write_mbps * MB, NEW.read_mbps * MB, src_bw)
            store.close()
    mb = lost_bytes / MB
    rows = [("rebuild", f"{r.shards} shards, {mb:.0f} MiB in {rebuild_s:.1f} s = {mb / rebuild_s:.1f} MiB/s; "
                        f"bound {mb / bound:.1f} MiB/s -> {bound / rebuild_s:.0%} of it; lost objects: {len(r.lost)}"),
            ("scrub", f"{v.replicas} replicas, {v.bytes / MB:.0f} MiB in {scrub_s:.1f} s = {v.bytes / MB / scrub_s:.1f} MiB/s; "
                      f"bound {scrub_bound:.1f} s -> {scrub_bound / scrub_s:.0%} of it; bad: {len(v.bad)}")]
    report("rebuild and scrub on lab4", rows, {"rebuild_s": round(rebuild_s, 2), "rebuild_bound_s": round(bound, 2),
                                               "lost_mib": round(mb), "lab": lab_profile_of_run, "scrub_s": round(scrub_s, 2),
                                               "scrub_bound_s": round(scrub_bound, 2), "lost_objects": len(r.lost)})


def store_uuid(store, label: str) -> str:
    return next(u for u, d in store.disks.items() if d.label == label)


if __name__ == "__main__":
    run_timed(main)
