"""The batch planner's reads alone: where copy-mode export loses time against its bound.

    python bench/planner_read.py [--small 20000] [--large 30] [--results DIR]

The export corpus (bench/export.py: `--small` files of 4–64 KiB, `--large` of 1–50 MiB, two
copies on lab4, 256 MiB shards), cold (page cache dropped before each variant), inside the
lab's throttled cgroup. Variants, each timed against its own plan's bound (`Plan.bound_s`,
the makespan at the disks' read MiB/s):

- **all / small / large — read only**: `planner.execute` with sinks that only touch the
  payload (every record still verified: header + xxh3-128; large records piece by piece
  against their chunk map): what the readers achieve with nothing downstream;
- **all — materialize**: `hoardfs.fsd.outputs.materialize` of the same selection to a directory (sha256 of
  every file, one file per object, one syncfs): what `hoard export` runs.

Per disk, the seconds its reader took next to its share of the bound tell which disk (and
which kind of record) finishes late. Each variant also against the ideal over every disk at
the read speeds `dd` measures through the throttle after the store is written
(`ideal_measured_s`: the plan's bytes over their sum).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import LAB4, Lab, MiB, drop_caches, lab_profile, lab_store, measured_limits, report, run_timed, timed
from export import _fresh, _large

from hoardfs.adapters.synth import flat_files
from hoardfs.fsd.io.planner import execute, make_plan
from hoardfs.fsd.outputs.materialize import Item, materialize


def read_only(store, shas: list[bytes]) -> tuple[object, object]:
    """Plan and read (timed by the caller; the page cache is dropped before, outside the time)."""
    plan = make_plan(store, shas)

    def sink(sha, payload) -> None:
        pass

    def large_sink(sha, pieces) -> None:
        for _ in pieces:
            pass

    return plan, execute(store, plan, sink, large_sink)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--large", type=int, default=30)
    ap.add_argument("--results", type=Path, help="directory for the JSON (default bench/results)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-plread-", dir="/var/tmp"))
    small = flat_files(work / "src" / "small", args.small, seed=5151, lo=4 << 10, hi=64 << 10)
    large = _large(work / "src" / "large", args.large, seed=5152)
    files = small + large
    random.Random(9).shuffle(files)
    t: dict[str, float] = {}
    out: dict[str, dict] = {}
    with Lab(LAB4, direct_io=True) as lab:
        store = lab_store(lab, work, shard_size_mb=256, write_ack=2, copy_of_raw=2)
        profile = lab_profile(lab)
        labels = {u: d.label for u, d in store.disks.items()}
        with lab.throttled():
            results = store.put_many(files)
            subprocess.run(["sync"], check=True)
            measured = measured_limits(lab)  # each disk's read (and write) as dd gets it through the throttle
            dd_read = sum(m["read_mib_s"] for m in measured.values())
            by_path = {Path(r.path): bytes.fromhex(r.sha256) for r in results}
            sets = {"all": [by_path[p] for p in files], "small": [by_path[p] for p in small],
                    "large": [by_path[p] for p in large]}
            for name, shas in sets.items():
                drop_caches()
                with timed(t, f"read_{name}"):
                    plan, stats = read_only(store, shas)
                out[name] = {"bound_s": round(plan.bound_s, 3), "ideal_s": round(plan.ideal_s, 3),
                             "ideal_measured_s": round(sum(plan.bytes_per_disk.values()) / MiB / dd_read, 3),
                             "mib": round(stats.bytes / MiB, 1), "seconds": round(t[f"read_{name}"], 3),
                             "disks": {labels[u]: {"plan_s": round(b / plan.bandwidth[u], 2),
                                                   "took_s": round(stats.per_disk_seconds.get(labels[u], 0.0), 2),
                                                   "large_mib": round(sum(w.length for w in plan.large_by_disk.get(u, []))
                                                                      / MiB, 1)}
                                       for u, b in plan.bytes_per_disk.items()}}
            items = [Item(f"{i:06d}-{p.name}", by_path[p].hex(), p.stat().st_size) for i, p in enumerate(files)]
            dest = work / "ssd"
            _fresh(dest)
            drop_caches()
            with timed(t, "materialize_all"):
                rep = materialize(store, items, dest)
            out["materialize"] = {"bound_s": out["all"]["bound_s"], "seconds": round(t["materialize_all"], 3),
                                  "disks": {k: round(v, 2) for k, v in rep.per_disk_seconds.items()},
                                  "phases": {k: round(v, 3) for k, v in rep.phases.items()}}
    rows = []
    for name in ("all", "small", "large"):
        o = out[name]
        rows.append((f"read only: {name}", f"{o['seconds']:7.2f} s  {o['mib'] / o['seconds']:6.1f} MiB/s  "
                                           f"{o['bound_s'] / o['seconds']:5.0%} of its plan's bound ({o['bound_s']:.2f} s), "
                                           f"{o['ideal_measured_s'] / o['seconds']:.0%} of the dd-measured all-disk one "
                                           f"({o['ideal_measured_s']:.2f} s)"))
        rows.append(("  per disk (plan s / took s / large MiB)",
                     "  ".join(f"{k} {v['plan_s']}/{v['took_s']}/{v['large_mib']}" for k, v in sorted(o["disks"].items()))))
    m = out["materialize"]
    rows.append(("materialize: all", f"{m['seconds']:7.2f} s  {out['all']['mib'] / m['seconds']:6.1f} MiB/s  "
                                     f"{m['bound_s'] / m['seconds']:5.0%} of the bound; per disk took "
                                     + "  ".join(f"{k} {v}" for k, v in sorted(m["disks"].items()))))
    rows.append(("  materialize phases (s)", "  ".join(f"{k} {v}" for k, v in m["phases"].items())))
    report("planner reads", rows, {"small": args.small, "large": args.large, "lab": profile,
                                   "read_mib_s_measured": measured, **out}, results=args.results)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_timed(main)
