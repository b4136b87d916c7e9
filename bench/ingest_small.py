"""Ingest N small files (4–64 KB) with 2 copies: hoardfs vs the strongest fair copies.

    python bench/ingest_small.py [--files 20000] [--profile lab4|unthrottled]

Runs on lab disks (root, loop devices, blkio, direct-IO loops). Every variant writes the
same bytes to the same two disks (lab1, lab2) and is timed up to the moment its data is
durable:

- hoardfs `put_many` with `write_ack = 2` (each group fdatasync'ed on both before indexing);
- `cp -r` to both disks **in parallel**, then one `sync -f` (syncfs) per disk: as durable
  as hoardfs for a batch (nothing is acknowledged before the syncfs returns);
- `rsync -a` to both disks in parallel, then syncfs;
- `cp -r` + `sync -d` of every file (per-file durability, what a naive durable copy does).

cgroup v1 cannot charge writeback done by the kernel's flusher threads to the lab's cgroup,
so the buffered baselines are *not* held to the disks' write limits on the
lab4 profile: their times can beat physics. That is why every row also gives the share of
the physical bound: the bytes each disk must take divided by the slower disk's write
limit in MiB/s (2^20 bytes/s, the unit blkio throttles in).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from _common import LAB4, Lab, MiB, drop_caches, lab_profile, lab_store, parallel, report, run_timed, timed

from hoardfs.adapters.synth import flat_files


def _clean(*paths: Path) -> None:
    subprocess.run(["rm", "-rf", *map(str, paths)], check=True)
    subprocess.run(["sync"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--profile", choices=["lab4", "unthrottled"], default="lab4")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-", dir="/var/tmp"))
    src = work / "src"
    files = flat_files(src, args.files, seed=20000)
    total = sum(p.stat().st_size for p in files)
    t: dict[str, float] = {}
    with Lab(LAB4, throttle=args.profile == "lab4", direct_io=True) as lab:
        store = lab_store(lab, work, ["lab1", "lab2"], shard_size_mb=256, write_ack=2, copy_of_raw=2)
        a, b = (lab.disks[x].mountpoint for x in ("lab1", "lab2"))  # same disks for every variant
        slower_write = min(lab.disks[x].profile.write_mbps for x in ("lab1", "lab2"))
        profile = lab_profile(lab)
        with lab.throttled():
            drop_caches()
            for p in files:  # the source is read from the page cache in every variant
                p.read_bytes()
            with timed(t, "hoardfs"):
                results = store.put_many(files)
            store.close()
            with timed(t, "cp_parallel_syncfs"):
                parallel([["cp", "-r", str(src), str(d / "cp")] for d in (a, b)])
                parallel([["sync", "-f", str(d / "cp")] for d in (a, b)])
            _clean(a / "cp", b / "cp")
            with timed(t, "rsync_parallel_syncfs"):
                parallel([["rsync", "-a", f"{src}/", str(d / "rsync")] for d in (a, b)])
                parallel([["sync", "-f", str(d / "rsync")] for d in (a, b)])
            _clean(a / "rsync", b / "rsync")
            with timed(t, "cp_fsync_per_file"):
                parallel([["sh", "-c", 'cp -r "$1" "$2" && find "$2" -type f -exec sync -d {} +', "cp", str(src),
                        str(d / "durable")] for d in (a, b)])
            _clean(a / "durable", b / "durable")
        assert all(r.status == "new" for r in results)
    n, mib = args.files, total / MiB
    bound_s = total / (slower_write * MiB) if args.profile == "lab4" else None
    rows = [("files / bytes", f"{n} files, {mib:.0f} MiB, 2 copies (lab1 + lab2), profile {args.profile}")]
    if bound_s:
        rows.append(("physical bound", f"{bound_s:7.2f} s  (each disk takes {mib:.0f} MiB; the slower writes "
                                       f"{slower_write:g} MiB/s)"))
    for k in ("hoardfs", "cp_parallel_syncfs", "rsync_parallel_syncfs", "cp_fsync_per_file"):
        share = f"  {bound_s / t[k]:6.0%} of bound" if bound_s else ""
        rows.append((k, f"{t[k]:7.2f} s  {n / t[k]:8.0f} files/s  {mib / t[k]:7.1f} MiB/s{share}"))
    for k in ("cp_parallel_syncfs", "rsync_parallel_syncfs", "cp_fsync_per_file"):
        rows.append((f"hoardfs vs {k}", f"{t[k] / t['hoardfs']:.2f}x"))
    if bound_s:
        rows.append(("note", "buffered baselines' writeback is not throttled by cgroup v1: they may beat the bound"))
    report("ingest of small files", rows, {"files": n, "mib": round(mib, 1), "profile": args.profile,
                                            "lab": profile, "bound_s": bound_s and round(bound_s, 3),
                                            **{k: round(v, 3) for k, v in t.items()}})
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    run_timed(main)
