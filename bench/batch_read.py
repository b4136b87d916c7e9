"""Batch read of N small files on lab4 with 2 replicas, page cache dropped: the planner vs
the strongest per-object and per-file readers.

    python bench/batch_read.py [--files 20000]

Everything runs inside the lab's throttled cgroup. Variants:

- planner: `Store.read_batch` (coalesced reads, spread over replicas by the disks' speed);
- naive: `Store.get()` one object at a time, but one reader thread per disk, each taking
  the objects whose shard's first replica is on its disk, in request order;
- per-file: the same files as plain files placed like the store placed them (a copy on
  each disk holding a replica of the object's shard); each file is read from the replica
  disk that finishes its share earliest (greedy by bytes / read MiB/s), one reader per disk.

Bound: the bytes over the summed read MiB/s of **all four** lab disks (as blkio throttles
them) — what any reader of these bytes could reach; every variant's share is of it. The
planner's own bound (`Plan.bound_s`, its makespan at the disks' read limits over the disks
its plan uses) and the ideal over the disks holding replicas (`Plan.ideal_s`) are printed
beside it: the placement may leave a disk without replicas of these files.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import threading
from pathlib import Path

from _common import (
    LAB4,
    Lab,
    MiB,
    balanced_per_disk,
    drop_caches,
    in_threads,
    lab_profile,
    lab_store,
    measured_limits,
    place_plain,
    replica_roots,
    report,
    run_timed,
    timed,
)

from hoardfs.adapters.synth import flat_files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-", dir="/var/tmp"))
    files = flat_files(work / "src", args.files, seed=20001)
    total = sum(p.stat().st_size for p in files)
    order = list(range(len(files)))
    random.Random(7).shuffle(order)  # the order a dataset query asks for them
    t: dict[str, float] = {}
    with Lab(LAB4, direct_io=True) as lab:
        store = lab_store(lab, work, shard_size_mb=256, write_ack=2, copy_of_raw=2)
        profile = lab_profile(lab)
        with lab.throttled():
            results = store.put_many(files)
            measured = measured_limits(lab)  # each disk's read (and write) as dd gets it through the throttle
            shas = [results[i].sha256 for i in order]
            # the same files as plain files, on the disks the store put their replicas on
            plain = place_plain([files[i] for i in order], replica_roots(store, shas))

            drop_caches()
            got = [0]
            lock = threading.Lock()

            def sink(sha: bytes, payload) -> None:
                with lock:
                    got[0] += len(payload)

            with timed(t, "planner"):
                plan, stats = store.read_batch(shas, sink)
            assert got[0] == total, (got[0], total)

            drop_caches()
            first: dict[str, list[str]] = {}  # disk → the objects whose shard's first replica is there
            for h in shas:
                meta = store.index.get_shard(store.index.lookup(bytes.fromhex(h)).shard_id)
                first.setdefault(meta.replicas[0], []).append(h)
            n_bytes = [0]

            def get_all(hashes: list[str]) -> None:
                got_here = sum(len(store.get(h)) for h in hashes)
                with lock:
                    n_bytes[0] += got_here

            with timed(t, "naive"):
                in_threads(get_all, first.values())
            assert n_bytes[0] == total

            drop_caches()
            per_disk = balanced_per_disk(lab, plain)  # request order; each file from the copy that finishes first

            def read_all(paths: list[Path]) -> None:
                for p in paths:
                    with open(p, "rb") as f:
                        f.read()

            with timed(t, "per_file"):
                in_threads(read_all, per_disk.values())
        labels_by_uuid = {u: d.label for u, d in store.disks.items()}
        summary = plan.summary(labels_by_uuid)
        store.close()
    mib = total / MiB
    read_mib_s = sum(d["read_mib_s"] for d in profile.values())
    bound_s = mib / read_mib_s
    dd_read = sum(m["read_mib_s"] for m in measured.values())
    bound_dd_s = mib / dd_read
    rows = [("files / bytes", f"{args.files} files, {mib:.0f} MiB, 2 replicas on lab4, cache dropped (cold)"),
            ("bound (bytes / all four disks' read MiB/s)", f"{bound_s:7.2f} s  (Σ {read_mib_s:g} MiB/s)"),
            ("bound, dd-measured", f"{bound_dd_s:7.2f} s  (Σ {dd_read:.1f} MiB/s as dd reads through the throttle; "
                                   f"the planner {bound_dd_s / t['planner']:.0%} of it)")]
    for k in ("planner", "naive", "per_file"):
        rows.append((k, f"{t[k]:7.2f} s  {mib / t[k]:7.1f} MiB/s  {bound_s / t[k]:5.0%} of the bound"))
    rows.append(("planner bound (own plan)", f"{plan.bound_s:7.2f} s  -> achieved {plan.bound_s / t['planner']:.0%} of it"))
    rows.append(("ideal over the disks holding replicas", f"{plan.ideal_s:7.2f} s"))
    rows.append(("planner vs naive", f"{t['naive'] / t['planner']:.1f}x"))
    rows.append(("planner vs per-file", f"{t['per_file'] / t['planner']:.1f}x"))
    rows.append(("plan", str(summary["disks"])))
    report("batch read of small files", rows, {"files": args.files, "mib": round(mib, 1), "lab": profile,
                                                "plan": summary["disks"],
                                                "bound_all_disks_s": round(bound_s, 3), "read_mib_s_sum": read_mib_s,
                                                "read_mib_s_measured": measured, "bound_measured_s": round(bound_dd_s, 3),
                                                "share_of_measured_bound": round(bound_dd_s / t["planner"], 3),
                                                "bound_s": round(plan.bound_s, 3), "ideal_s": round(plan.ideal_s, 3),
                                                **{k: round(v, 3) for k, v in t.items()}})
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    run_timed(main)
