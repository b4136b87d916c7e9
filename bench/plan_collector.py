"""What a full cyclic collection costs a batch plan, and what `hoardfs.base.collect.heap_frozen`
saves (docs/benchmarks.md, "The batch read's client work per record, without I/O").

    python bench/plan_collector.py [--held 130000] [--made 80000] [--rounds 12]

A process holding `--held` pairs of tracked objects (a list and a str each: ~260,000 the
collector walks, as the S3 bench's process held) builds `--made` plan records (the planner's
own `Wanted`, one list per shard: 80,000 — about the tracked objects a plan of 40,000 objects
makes, a location and a record each), `--rounds` times without and with the rest of the heap frozen,
the two in turn; the milliseconds of each build, and how many full collections ran in it
(`gc.get_stats`). No I/O: the plan's index lookups are left out, as they allocate the same.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from _common import report, run_timed

from hoardfs.base.collect import heap_frozen
from hoardfs.fsd.io.planner import Wanted


def build(made: int) -> list[list[Wanted]]:
    shards: list[list[Wanted]] = [[] for _ in range(64)]
    for i in range(made):
        shards[i % 64].append(Wanted(i.to_bytes(32, "big"), i * 100, 50))
    return shards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--held", type=int, default=130000)
    ap.add_argument("--made", type=int, default=80000)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    held = [[i, str(i)] for i in range(args.held)]
    runs: dict[str, list[dict]] = {"plain": [], "heap_frozen": []}
    for _ in range(args.rounds):
        for name in runs:
            full = gc.get_stats()[2]["collections"]
            t0 = time.perf_counter()
            if name == "plain":
                plan = build(args.made)
            else:
                with heap_frozen():
                    plan = build(args.made)
            ms = (time.perf_counter() - t0) * 1000
            runs[name].append({"ms": round(ms, 2), "full_collections": gc.get_stats()[2]["collections"] - full})
            del plan
    data = {"held_objects": len(gc.get_objects()), "made": args.made, "rounds": args.rounds, "runs": runs,
            "summary": {k: {"median_ms": round(statistics.median(r["ms"] for r in v), 2),
                            "max_ms": max(r["ms"] for r in v),
                            "full_collections": sum(r["full_collections"] for r in v)} for k, v in runs.items()}}
    assert held
    rows = [(k, f"median {v['median_ms']} ms, max {v['max_ms']} ms, {v['full_collections']} full collections")
            for k, v in data["summary"].items()]
    report(f"a plan of {args.made:,} records in a process holding {data['held_objects']:,} objects", rows, data)


if __name__ == "__main__":
    run_timed(main)
