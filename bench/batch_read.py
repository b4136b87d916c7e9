"""Batch read of N small files on lab4 with 2 replicas, page cache dropped:
the planner vs naive (first replica, request order) vs per-file reads of plain files.

    python bench/batch_read.py [--files 20000]

Everything runs inside the lab's throttled cgroup. The planner's own computed bound
(`Plan.bound_s`, its makespan at the disks' configured read MB/s) is printed beside the
achieved time.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import LAB4, Lab, drop_caches, lab_store, report, timed

from adapters.synth import flat_files


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
        with lab.throttled():
            results = store.put_many(files)
            shas = [results[i].sha256 for i in order]
            labels = list(lab.disks)
            plain = []  # the same files as plain files, spread round-robin over the lab disks
            for n, i in enumerate(order):
                dst = lab.disks[labels[n % 4]].mountpoint / "plain" / files[i].name
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(files[i], dst)
                plain.append(dst)
            os.sync()

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
            with timed(t, "naive"):
                n_bytes = sum(len(store.get(h)) for h in shas)
            assert n_bytes == total

            drop_caches()
            per_disk: dict[str, list[Path]] = {}
            for p in plain:
                per_disk.setdefault(p.parent.parent.name, []).append(p)

            def read_all(paths: list[Path]) -> None:
                for p in paths:
                    with open(p, "rb") as f:
                        f.read()

            with timed(t, "per_file"):
                threads = [threading.Thread(target=read_all, args=(ps,)) for ps in per_disk.values()]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
        labels_by_uuid = {u: d.label for u, d in store.disks.items()}
        summary = plan.summary(labels_by_uuid)
        store.close()
    mb = total / 1e6
    rows = [("files / bytes", f"{args.files} files, {mb:.0f} MB, 2 replicas on lab4, cache dropped")]
    for k in ("planner", "naive", "per_file"):
        rows.append((k, f"{t[k]:7.2f} s  {mb / t[k]:7.1f} MB/s"))
    rows.append(("planner bound (own plan)", f"{plan.bound_s:7.2f} s  -> achieved {plan.bound_s / t['planner']:.0%} of it"))
    rows.append(("ideal (all disks summed)", f"{plan.ideal_s:7.2f} s"))
    rows.append(("planner vs naive", f"{t['naive'] / t['planner']:.1f}x"))
    rows.append(("planner vs per-file", f"{t['per_file'] / t['planner']:.1f}x"))
    rows.append(("plan", str(summary["disks"])))
    report("batch read of small files", rows, {"files": args.files, "mb": round(mb, 1),
                                                "bound_s": round(plan.bound_s, 3), "ideal_s": round(plan.ideal_s, 3),
                                                **{k: round(v, 3) for k, v in t.items()}})
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"(benchmark took {time.monotonic() - t0:.0f} s)")
