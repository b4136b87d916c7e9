"""The batch read's own client work per record, without any I/O (what the S3 batch
read's client CPU goes on beside the engine's GET loop — docs/benchmarks.md, "The batch read's client
work per record, without I/O").

    python bench/batch_client_cpu.py [--objects 20000] [--rounds 7]
    python bench/batch_client_cpu.py --render

The corpus is bench/s3_backend.py's (`hoardfs.adapters.synth.flat_files`, seed 20001: N files of
4–64 KB, read in a shuffled order, seed 7), put into a store of two local directory disks in
/var/tmp; every range the plan reads is read once into memory. Then, `--rounds` times each,
this process's CPU seconds (`time.process_time`: every thread) for:

- **plan** — `make_plan` of every object (the index looked up, the ranges cut);
- **checks** — every record's header and payload checked as the batch read checks them
  (`hoardfs.fsd.core.records.verified_view`), one thread;
- **xxh3 alone** — the payloads' xxh3-128 only: the part of the checks no code can drop;
- **hand-off** — each payload handed to a sink that adds its length under a lock (the S3
  bench's sink), one thread;
- **the whole read** — `Store.read_batch` with `read_streams` = 4 (as an S3 disk's reader: 4
  ranges in flight, each checked in the thread that read it, a read-ahead thread, a reader
  thread handing payloads out) and every range served from memory: the client's whole work
  with no request sent.

Each as the median of the rounds, in µs per record and in CPU seconds per GiB of the ranges'
bytes — the unit docs/benchmarks.md's S3 section gives the backend's and the engine loop's
client CPU in.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import xxhash
from _common import report, run_timed, write_doc_section

from hoardfs.adapters.synth import flat_files
from hoardfs.base import config
from hoardfs.fsd.core.records import verified_view
from hoardfs.fsd.io import planner
from hoardfs.fsd.store import Store
from tests.helpers import write_config

BEGIN = "<!-- bench/batch_client_cpu.py: begin (written by `bench/batch_client_cpu.py --render`; do not edit) -->"
END = "<!-- bench/batch_client_cpu.py: end -->"
STAGES = (("plan", "the plan (`make_plan`: the index looked up, the ranges cut)"),
          ("checks", "every record checked (`verified_view`: header, its xxh32 check, xxh3-128)"),
          ("xxh3", "— of which the payloads' xxh3-128 alone"),
          ("handoff", "each payload handed to the sink (a lock, a sum)"),
          ("read_batch", "`Store.read_batch`, 4 ranges in flight, ranges served from memory"))


def measure(objects: int, rounds: int, work: Path) -> dict:
    files = flat_files(work / "src", objects, seed=20001)
    disks = [(name, work / name, None) for name in ("d0", "d1")]
    for _, p, _ in disks:
        p.mkdir(parents=True)
    cfg = write_config(work, disks, shard_size_mb=256, copy_of_raw=2, copy_of_generated=2, write_ack=2)
    with Store.open(config.load(cfg), init=True) as store:
        got = store.put_many(files)
        order = list(range(len(got)))
        random.Random(7).shuffle(order)
        shas = [bytes.fromhex(got[i].sha256) for i in order]
        for disk in store.disks.values():
            disk.read_streams = 4
        plan = planner.make_plan(store, shas)
        ranges = [(store.disks[u], r) for u, rs in plan.ranges.items() for r in rs]
        # by shard and range, not disk: a replica holds the same bytes, and the reads' measured
        # speeds may move a range to the other disk in a later plan (read then: `missed`)
        held = {(r.shard_hex, r.start, r.end): planner._read_range(d, r) for d, r in ranges}
        gib = sum(len(b) for b in held.values()) / (1 << 30)
        records = sum(len(r.records) for _, r in ranges)
        lock, total = threading.Lock(), [0]

        def sink(_sha: bytes, data) -> None:
            with lock:
                total[0] += len(data)

        def checks() -> list[list[memoryview]]:
            return [[verified_view(memoryview(held[(r.shard_hex, r.start, r.end)]), w.start - r.start, w.sha,
                                   w.length) for w in r.records] for _d, r in ranges]

        views = checks()
        stop = threading.Event()

        def xxh3() -> None:
            for vs in views:
                for v in vs:
                    xxhash.xxh3_128_digest(v)

        def handoff() -> None:
            for (_d, r), vs in zip(ranges, views, strict=True):
                for w, v in zip(r.records, vs, strict=True):
                    if stop.is_set():
                        return
                    sink(w.sha, v)

        real = planner._read_range
        missed = [0]

        def from_memory(d, r) -> bytes:
            key = (r.shard_hex, r.start, r.end)
            if key not in held:
                missed[0] += 1
                held[key] = real(d, r)
            return held[key]

        planner._read_range = from_memory
        try:
            store.read_batch([s.hex() for s in shas], sink)  # (once before the rounds: what it reads is held)
            missed[0] = 0
            fns: dict[str, Callable[[], object]] = {
                "plan": lambda: planner.make_plan(store, shas), "checks": checks, "xxh3": xxh3,
                "handoff": handoff, "read_batch": lambda: store.read_batch([s.hex() for s in shas], sink)}
            runs: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(rounds):
                for name, fn in fns.items():
                    t0 = time.process_time()
                    fn()
                    runs[name].append(time.process_time() - t0)
        finally:
            planner._read_range = real
    stages = {k: {"cpu_s": round(statistics.median(v), 4), "rounds_cpu_s": [round(x, 4) for x in v],
                  "us_per_record": round(statistics.median(v) / records * 1e6, 2),
                  "s_per_gib": round(statistics.median(v) / gib, 3)} for k, v in runs.items()}
    return {"objects": objects, "records": records, "ranges": len(ranges), "range_bytes": round(gib * (1 << 30)),
            "rounds": rounds, "stages": stages, "ranges_read_in_rounds": missed[0]}


def render() -> None:
    import json

    from _common import RESULTS
    path = RESULTS / "batch-client-cpu-default.json"
    doc = json.loads(path.read_text())
    st = doc["stages"]
    lines = [BEGIN, "", "### The batch read's client work per record, without I/O", "",
             f"`bench/batch_client_cpu.py` at {doc['commit']}, {doc['when'][:16].replace('T', ' ')}: "
             f"{doc['objects']:,} objects of bench/s3_backend.py's corpus, {doc['ranges']} ranges "
             f"({doc['range_bytes'] / (1 << 20):.0f} MiB) read once into memory; this process's CPU, the median of "
             f"{doc['rounds']} rounds. Raw JSON: `bench/results/batch-client-cpu-default.json`.", "",
             "| stage | µs per record | CPU s per GiB |", "|---|---|---|"]
    for key, what in STAGES:
        lines.append(f"| {what} | {st[key]['us_per_record']} | {st[key]['s_per_gib']} |")
    lines += ["", END]
    write_doc_section(BEGIN, END, lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    args = ap.parse_args()
    if args.render:
        render()
        return
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-client-", dir="/var/tmp"))
    try:
        data = measure(args.objects, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [(k, f"{v['us_per_record']} us/record, {v['s_per_gib']} s/GiB") for k, v in data["stages"].items()]
    report("The batch read's client work per record", rows, data)


if __name__ == "__main__":
    run_timed(main)
