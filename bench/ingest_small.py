"""Ingest N small files (4–64 KB) with 2 copies: hoardfs vs `cp -r` to two disks (durable and not).

    python bench/ingest_small.py [--files 20000] [--profile lab4|unthrottled]

Runs on lab disks (root, loop devices, blkio). The store and both `cp` baselines run in
the lab's throttled cgroup. Writes are throttled only when O_DIRECT (ECOSYSTEM.md), so
compare wall times *including* the fsync/sync that makes each variant durable.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from _common import LAB4, Lab, drop_caches, lab_store, report, timed

from adapters.synth import flat_files


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
        with lab.throttled():
            drop_caches()
            for p in files:  # the source is read from the page cache in every variant
                p.read_bytes()
            with timed(t, "hoardfs"):
                results = store.put_many(files)
            store.close()
            with timed(t, "cp_durable"):
                for dst in (a / "durable", b / "durable"):
                    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
                    subprocess.run(f"find {dst} -type f -exec sync -d {{}} +", shell=True, check=True)
            subprocess.run(["rm", "-rf", str(a / "durable"), str(b / "durable")], check=True)
            subprocess.run(["sync"], check=True)
            with timed(t, "cp_page_cache"):
                for dst in (a / "plain", b / "plain"):
                    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
        assert all(r.status == "new" for r in results)
    n, mb = args.files, total / 1e6
    rows = [("files / bytes", f"{n} files, {mb:.0f} MB, 2 copies, profile {args.profile}")]
    for k in ("hoardfs", "cp_durable", "cp_page_cache"):
        rows.append((k, f"{t[k]:7.2f} s  {n / t[k]:8.0f} files/s  {mb / t[k]:7.1f} MB/s"))
    rows.append(("hoardfs vs durable cp", f"{t['cp_durable'] / t['hoardfs']:.1f}x faster"))
    rows.append(("hoardfs vs cp (no sync)", f"{t['cp_page_cache'] / t['hoardfs']:.2f}x"))
    report("ingest of small files", rows, {"files": n, "mb": round(mb, 1), "profile": args.profile,
                                            **{k: round(v, 3) for k, v in t.items()}})
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"(benchmark took {time.monotonic() - t0:.0f} s)")
