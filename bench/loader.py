"""One epoch of `hoardfs.loader.Loader` over a dataset version on lab4, against file loaders
over the same samples (the mount's view, plain files, the 3D export copy), cold and warm.

    python bench/loader.py [--items 100000] [--large 200] [--results DIR]
    python bench/loader.py --render          # docs/benchmarks.md's section from the JSON

Corpus: `--items` samples of 4–64 KiB and `--large` of 1–4 MiB (seeded pseudo-random bytes,
recorded as `.jpg` images, 10 classes), stored on lab4 with two copies (256 MiB shards), and
recorded in the test PostgreSQL (a fresh schema, dropped afterwards) as an ingest leaves them,
as two sealed batches: the first quarter of the samples, and the rest. Two view-mode dataset
versions: `ldr-small` (the first batch) and `ldr-full` (both). lab4's read and IOPS limits;
its disks are grown in proportion when the corpus's three copies (the store's two, the plain
one) would not fit them (the default size: ~4 GB of samples, ~22 GB in /var/tmp all told).
Everything runs in the lab's throttled cgroup, each side as its own process (its time, CPU
seconds, peak RSS — VmHWM of the main process, a DataLoader's workers apart — and the bytes the
lab's disks read, measured from outside).

Every side reads every sample of `ldr-full` once, whole, as bytes (nothing decoded on any
side: the figure is the reading); **cold** = page cache, dentries and inodes dropped first
(`drop_caches`), listing and planning inside the time; **warm** = the same again at once (a
loader side: the next epoch, as training reads it — its plan orders and balances the runs its
own way, and a run the last epoch read off one replica may be balanced to the other) — a
warm pass that read more than a quarter per cent of its bytes off the disks is run again (up
to three in all; the table shows what the kept one read): this VM's kernel pages out what was
not touched for a minute (DAMON's `pageout` scheme), so a side whose cold pass lasted minutes
finds its first pages gone; the warm goal is judged only when the loader's warm epoch and the
floor's kept pass both read no more than that:

- **loader, 1 process**: `Loader("ldr-full", split=None)` (its own reader per disk); also over
  `ldr-small`, for the peak RSS at two dataset sizes (a goal: flat in the size); its
  `stats()` — the mix over windows of 1,000 samples, bytes read per disk, fallbacks;
- **loader, N processes** (4, 8): `TorchDataset(…, decode=len, transform=itemgetter("data"))`
  under `DataLoader(num_workers=N, batch_size=None)` — the same process count as the file
  loaders, each worker handing over the sample's size alone as theirs do (no side pickles the
  bytes, nor the loader's other fields, through the DataLoader's pipes);
- **mount, N processes**: `bench/loader_example.py`'s `ImageFiles` listing of the version's
  view through `hoard mount` (its daemon in the cgroup), each item one file read whole, under
  `DataLoader(shuffle=True, num_workers=N)`;
- **plain, N processes**: the same files as plain files on the same disks (file k on the disk
  of replica k mod 2 of its shard, as the store placed it), shuffled as above; and, with the
  reading-order freedom the loader has, `inode` order: each disk's files in inode order, the
  disks interleaved evenly, dealt to the N processes in turn — the friendliest order for plain
  files, not mixed at all;
- **page-cache floor**: right after that side's warm pass (every plain file in the page
  cache), one process reading the same files in inode order in a plain loop (open, read whole,
  close; no DataLoader, nothing else between the reads): the fastest a file loader could hand
  out page-cached samples — the bar for "warm at page-cache speed";
- **warm parts**: right after, one process timing in turn, three rounds, the floor's loop, the
  loader's plan with every record read and checked as it does it written as one loop, the same
  with each sample's manifest line read, checked and parsed too, and the loader itself
  (`warm_parts`) — where a warm epoch's time goes beyond the page cache's;
- **3D export, then read**: `hoard export` (what `--here` runs) of the same nodes into zone 3D
  (this machine's disk: the SSD of a real host), cold, then its files read by the file loader
  (8 processes, shuffled): the time of both.

Bound: the samples' bytes over the summed read MiB/s of all four disks (as blkio throttles
them); *share* = bound time / measured time. The same bound at the read MiB/s `dd` measures
through the throttle once the store is written (`bound_measured_s`) judges the cold goal.
Goals: the loader cold ≥ 90 % of the (dd-measured)
bound — the median of the one-process loader's three cold epochs (the table's and the RSS
rounds' below: one pass varies by a few per cent) — and ≥ 3× the mount's file loader in the same run; RSS flat in the dataset size (the peak
over `ldr-full`, four times the samples of `ldr-small`, at most 1.05× its peak — the medians of
three cold epochs each, taken in turn: one process's peak varies by a tenth run to run); warm at
page-cache speed (the one-process warm epoch, its start apart, at least as fast as the
page-cache floor's reads, its listing apart). Raw
JSON: bench/results/loader-lab4.json (other sizes: loader-lab4-<items>-<large>.json;
`--results DIR` puts it elsewhere, e.g. a smoke run's), with the date, the commit,
the machine and the load at start and end; a run of the default size into bench/results/
rewrites docs/benchmarks.md's section (`--render` alone does it again from the JSON).
Needs root (the lab), torch (`make search` installs it) and the test servers (`make test` set them up).
`HOARD_BENCH_PROFILE=DIR`: each one-process loader epoch profiled (cProfile) into DIR — its
figures then carry the profiler's cost.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import operator
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    LAB4,
    RESULTS,
    MiB,
    bench_schema,
    bench_servers,
    disk_reads,
    drop_caches,
    hoard_mounted,
    lab_config,
    lab_profile,
    measured_reads,
    report,
    run_timed,
    write_doc_section,
)
from dataset_build import record
from loader_example import ImageFiles

from hoardfs.adapters.synth import flat_files
from hoardfs.base import config
from hoardfs.datasets import api
from hoardfs.datasets.spec import load_spec
from hoardfs.fsd.store import Store
from hoardfs.jobs import outputs
from hoardfs.loader import Loader
from tests.helpers import peak_memory
from tests.lab import Lab

BEGIN = "<!-- bench/loader.py: begin (written by `bench/loader.py --render`; do not edit) -->"
END = "<!-- bench/loader.py: end -->"
GOAL_SHARE, GOAL_VS_MOUNT = 0.90, 3.0
#: "RSS flat in the dataset size": the peak at four times the samples at most this much higher
GOAL_RSS_FLAT = 1.05
#: cold epochs of each one-process loader side whose peak RSS is measured (the goal: their medians)
RSS_ROUNDS = 3
#: a warm pass is warm when it reads at most this share of the samples' bytes off the disks: the
#: warm goal is judged only then (this machine's reclaim takes back pages a while after they are read)
WARM_DISK_SHARE = 0.0025
#: a warm side's passes at most, until one is warm (`warm`)
WARM_PASSES = 3
SMALL, FULL = "ldr-small", "ldr-full"
BATCHES = ("ldr-a", "ldr-b")
PROCS = (4, 8)
#: `--sides`: the prefixes of the sides that run (empty: all)
ONLY: list[str] = []


def wanted(name: str) -> bool:
    return not ONLY or any(name.startswith(p) for p in ONLY)

SPEC = """name = "{name}"
layout = "imagefolder"
mode = "view"
class_label = "class"
[selector]
batches = {batches}
[split]
ratios = {{ train = 0.8, val = 0.2 }}
salt = "bench"
group = "root"
"""


# -- the sides, each in its own process (`--child JSON`) --------------------------------------------

class Files:
    """`ImageFiles`'s listing (bench/loader_example.py) of the `.jpg` files under `root`, in
    `order` (`shuffled` is the DataLoader's: sorted here; `inode`: each disk's files by inode, the
    disks' sequences interleaved so that every disk advances at the same pace); an item
    is the file's bytes read whole (no decode, as the loader yields them)."""

    def __init__(self, root: Path, order: str) -> None:
        self.paths = [p for p in ImageFiles(root).paths if p.suffix == ".jpg"]
        if order == "inode":  # each disk's files in inode order, the disks interleaved evenly
            disks: dict[int, list[tuple[int, Path]]] = {}
            for p in self.paths:
                st = os.stat(p)
                disks.setdefault(st.st_dev, []).append((st.st_ino, p))
            self.paths = [p for _at, _dev, p in sorted((k / len(mine), dev, p) for dev, mine in disks.items()
                                                       for k, (_ino, p) in enumerate(sorted(mine)))]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        with open(self.paths[i], "rb", buffering=0) as f:
            return len(f.read())


def child(job: dict) -> None:
    """One epoch of one side; its figures as JSON to `job["out"]` (torch imported before the
    clock starts, and only by the sides that run it: it is not in the one-process loader's RSS)."""
    if job["procs"]:
        import torch  # deferred: `make search` installs it; only the sides that run it
        from torch.utils.data import DataLoader

        from hoardfs.loader import TorchDataset  # deferred: imports torch
    busy = _time_disk_reads() if job["kind"] == "loader" and job["procs"] == 0 else None
    t0 = time.monotonic()
    out: dict = {}
    n = nbytes = 0
    if job["kind"] == "loader" and job["procs"] == 0:
        ld = Loader(job["ref"], split=None, epoch=job.get("epoch", 0), config_path=job["config"])
        out["setup_s"] = time.monotonic() - t0
        prof = _profiler()
        trace = [[0, _rss_anon_kb()]]  # (RssAnon every TRACE_EVERY samples: where the peak is reached)
        for s in ld:
            n, nbytes = n + 1, nbytes + len(s["bytes"])
            if not n % TRACE_EVERY:
                trace.append([n, _rss_anon_kb()])
        out["rss_anon_kb_by_sample"] = trace
        if prof is not None:
            prof.disable()
            prof.dump_stats(Path(os.environ["HOARD_BENCH_PROFILE"]) / f"loader-{time.time_ns()}.prof")
        out["stats"] = ld.stats()
        out["from_index"] = ld.from_index
    elif job["kind"] == "parts":
        out |= warm_parts(job)
        n, nbytes = out["samples"], out["bytes"]
    elif job["kind"] == "loader":
        # (each worker hands the DataLoader the sample's size alone, as a file loader's worker does
        # below: no side pickles the bytes, nor the loader's other fields, through the DataLoader's pipes)
        ds = TorchDataset(job["ref"], split=None, epoch=job.get("epoch", 0), config_path=job["config"], decode=len,
                          transform=operator.itemgetter("data"))
        out["setup_s"] = time.monotonic() - t0
        for size in DataLoader(ds, batch_size=None, num_workers=job["procs"]):
            n, nbytes = n + 1, nbytes + int(size)
    elif job["procs"] == 0:  # files read in one plain loop: no DataLoader, nothing between the reads
        files = Files(Path(job["root"]), job["order"])
        out["setup_s"] = time.monotonic() - t0
        for i in range(len(files)):
            n, nbytes = n + 1, nbytes + files[i]
    else:
        files = Files(Path(job["root"]), job["order"])
        out["setup_s"] = time.monotonic() - t0
        gen = torch.Generator().manual_seed(0)
        for size in DataLoader(files, batch_size=None, shuffle=job["order"] == "shuffled", generator=gen,
                               num_workers=job["procs"]):
            n, nbytes = n + 1, nbytes + int(size)
    out |= {"samples": n, "bytes": nbytes, "seconds": out.get("seconds", time.monotonic() - t0)}
    if busy is not None:  # each disk's seconds in reads, and from the start to its first read's start
        out["disk_reads_timed"] = ["read_exact", "read_exact_into"]
        out["disk_read_s"] = {k: round(v[0], 3) for k, v in sorted(busy.items())}  # and its last's end
        out["disk_first_read_s"] = {k: round(v[2] - t0, 3) for k, v in sorted(busy.items())}
        out["disk_last_read_end_s"] = {k: round(v[1] - t0, 3) for k, v in sorted(busy.items())}
    Path(job["out"]).write_text(json.dumps(out))


#: rounds of the warm parts (`warm_parts`): each part once a round, in turn
PART_ROUNDS = 3


def warm_parts(job: dict) -> dict:
    """Where a warm one-process epoch's time goes: each part timed in this one process, warm,
    in turn, PART_ROUNDS times (this VM's CPU is shared: a part timed in a burst of another
    guest's load runs slower — each part's fastest round is kept, every round with it), each
    part's start apart (the listing; the loader made, as `Loader(…)` returns it — the store
    held open throughout, by all alike):

    - `floor`: the page-cache floor's plain loop (`Files`, inode order);
    - `records`: the loader's plan of the epoch (made and dealt as it makes it, in the time),
      then as one loop what its warm epoch does for the bytes: each run's pages looked at
      (`records_cached`) and its records looked up (`live_many`), each record read (header and
      payload, two preads off the shard's file on the disk the plan gives the run) and checked
      (header, xxh3-128), the payloads handed out in the epoch's order through a dict, the
      index's last write looked at a sample;
    - `records + lines`: each sample's manifest line read too, checked against its xxh3-64,
      parsed, and the fields the loader yields made of it — the loader's work, as one loop;
    - `loader`: `Loader` itself, iterated as the one-process side iterates it.

    The plan, the disks and the lines are the loader's own (its private parts: a diagnostic)."""
    files = Files(Path(job["root"]), "inode")
    times: dict[str, list[float]] = {"floor": [], "records": [], "records + lines": [], "loader": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # (the process's CPU seconds: another guest's burst apart)

    def took(part: str, t: float, c: float) -> None:
        times[part].append(time.monotonic() - t)
        cpu[part].append(time.process_time() - c)

    n = nbytes = 0
    with Loader(job["ref"], split=None, config_path=job["config"])._store():  # (open for every part)
        # (the store's pages into the page cache first — this VM pages out what was not touched
        # for a minute, and the loader's sides ran long before — and the plain files' again)
        sum(1 for _ in Loader(job["ref"], split=None, config_path=job["config"]))
        sum(files[i] for i in range(len(files)))
        for _ in range(PART_ROUNDS):
            t, c = time.monotonic(), time.process_time()
            got = sum(files[i] for i in range(len(files)))
            took("floor", t, c)
            for lines in (False, True):
                ld = Loader(job["ref"], split=None, config_path=job["config"])
                with ld._source() as src:
                    t, c = time.monotonic(), time.process_time()
                    p, _withheld = ld._plan_and_withheld(src)
                    n, nbytes = _one_loop(ld, src.store, p, lines)
                    took("records + lines" if lines else "records", t, c)
                ld.close()
            ld = Loader(job["ref"], split=None, config_path=job["config"])
            t, c = time.monotonic(), time.process_time()
            k = sum(1 for _ in ld)
            took("loader", t, c)
            ld.close()
            if not got == nbytes or not k == n == len(files):
                raise SystemExit(f"warm parts: {got} bytes of files, {nbytes} of records; {k}, {n}, {len(files)} "
                                 "samples")
    best = {k: min(v) for k, v in times.items()}
    return {"parts_s": {k: round(v, 3) for k, v in best.items()},
            "parts_rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "parts_cpu_rounds_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "parts_epochs": len(times) * PART_ROUNDS,
            "samples": n, "bytes": nbytes, "seconds": sum(sum(v) for v in times.values()), "setup_s": 0.0}


def _one_loop(ld: Loader, store: Store, p: Any, lines: bool) -> tuple[int, int]:
    """`warm_parts`' `records` (`lines`: and `records + lines`): the samples and bytes handed out."""
    import orjson  # deferred: the child's alone
    import xxhash

    from hoardfs.fsd.core import shardfmt as fmt
    from hoardfs.fsd.outputs import runs

    disk_of = runs.assign(store, p.runs, warm=True)
    post, run_of = p.post, p.run_of
    samples = ld.samples
    if lines:
        samples._lines._warmed()  # (as the loader's first line waits for the manifest's read into the page cache)
        if samples._lines._at is None:
            raise SystemExit("warm parts: the manifest's lines are read off no local replica")
    fds, base, piece_of, piece = samples._lines._at if lines else ((), 0, None, 1)
    starts, lens, xxh, blob = samples._starts, samples._lens, samples._xxh, samples._sha
    names, split_of = samples._names, samples._split_of
    sound, hs = fmt.sound_parts, fmt.RECORD_HEADER_SIZE
    pread, x64 = os.pread, xxhash.xxh3_64_intdigest
    generation, since = store.index.generation, store.index.snapshot()
    held: dict[int, bytes] = {}
    done, n, nbytes = -1, 0, 0
    for k in range(len(post)):
        i = post[k]
        r = run_of[i]
        while done < r:
            done += 1
            disk, shard_hex, recs = store.disks[disk_of[done]], p.shard(done).hex(), p.records(done)
            # (looked at as the loader looks; a run not all in the page cache is read all the same:
            # the side's disk reads tell)
            runs.records_cached(disk, shard_hex, recs)
            if not all(store.index.live_many([r.sha for r in recs])):
                raise SystemExit(f"warm parts: run {done}'s records are not all live")
            read: dict[bytes, bytes] = {}
            with disk.descriptor(shard_hex) as fd:
                for rec in recs:
                    head, data = pread(fd, hs, rec.offset - hs), pread(fd, rec.length, rec.offset)
                    if not sound(head, data, rec.sha, rec.length):  # (the loader's own check)
                        raise SystemExit(f"warm parts: record {rec.sha.hex()} does not check out")
                    read[rec.sha] = data
            for j in p.samples_of(done):  # (a record of samples held twice: each its own)
                held[j] = read[blob[32 * j:32 * j + 32]]
        data = held.pop(i)
        if generation() != since:
            raise SystemExit("warm parts: the index was written during the epoch")
        out = {"bytes": data}
        if lines:
            at = starts[i]
            fd = fds[0] if piece_of is None else fds[piece_of[min(at // piece, len(piece_of) - 1)]]
            line = pread(fd, lens[i], base + at)
            doc = orjson.loads(line) if x64(line) == xxh[i] else None
            if not doc or bytes.fromhex(doc["sha256"]) != blob[32 * i:32 * i + 32] or \
                    doc["split"] != names[split_of[i]]:
                raise SystemExit(f"warm parts: sample {i}'s manifest line does not check out")
            get = doc.get
            out |= {"key": doc["key"], "sha256": doc["sha256"], "labels": get("labels", {}), "split": doc["split"],
                    "class": get("class"), "class_index": get("class_index"), "path": doc["path"],
                    "node_id": doc["node_id"], "epoch": 0, "position": k}
        n, nbytes = n + 1, nbytes + len(out["bytes"])
    return n, nbytes


#: the one-process loader's RssAnon is read once in this many samples (`rss_anon_kb_by_sample`)
TRACE_EVERY = 2500


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(row.split()[1]) for row in f if row.startswith("RssAnon:"))


def _profiler() -> Any:
    """With HOARD_BENCH_PROFILE=DIR: a running cProfile of the one-process loader's epoch (its
    start apart), dumped into DIR when the epoch ends — for finding where an epoch's time goes,
    not for the table (the profiler's own cost is in its times)."""
    if not os.environ.get("HOARD_BENCH_PROFILE"):
        return None
    import cProfile  # deferred: only a profiled run

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _time_disk_reads() -> dict[str, list[float]]:
    """Each local disk's time in `read_exact` and `read_exact_into` (the loader's reads: a range
    into a reader's buffer, a long one or the manifest into bytes of its own), summed, when its
    last read ended and when its first began: label → [seconds, monotonic end, monotonic start].
    (A disk idle before or between its reads is a disk the epoch does not keep busy. The seconds
    in reads leave out what the kernel read ahead on a hint.)"""
    from hoardfs.fsd.core.disks import LocalDisk  # deferred: only the one-process loader side times its reads

    busy: dict[str, list[float]] = {}

    def timing(plain: Any) -> Any:
        def timed(self: Any, *args: Any) -> Any:
            t = time.monotonic()
            try:
                return plain(self, *args)
            finally:
                e = time.monotonic()
                b = busy.setdefault(self.label, [0.0, 0.0, t])
                b[0] += e - t
                b[1] = e
        return timed

    LocalDisk.read_exact = timing(LocalDisk.read_exact)  # type: ignore[method-assign]
    LocalDisk.read_exact_into = timing(LocalDisk.read_exact_into)  # type: ignore[method-assign]
    return busy


def side(lab, work: Path, job: dict) -> dict:
    """`job` run as its own process (in the cgroup this one is in): its JSON, time, CPU, peak
    RSS, and the bytes the lab's disks read meanwhile."""
    job = {**job, "out": str(work / "side.json")}
    before = disk_reads(lab)
    got = peak_memory([sys.executable, __file__, "--child", json.dumps(job)], cwd=Path(__file__).parent.parent,
                      poll_s=0.05)
    if got["exit"] != 0:
        raise SystemExit(f"{job['kind']} side failed ({got['exit']}): {got['stderr'][-2000:]}")
    res = json.loads(Path(job["out"]).read_text())
    return {**res, "seconds": round(res["seconds"], 3), "setup_s": round(res["setup_s"], 3),
            "process_s": round(got["seconds"], 3), "cpu_s": round(got["cpu_s"], 3), "vmhwm_kb": got["vmhwm_kb"],
            "peak_anon_kb": got["peak_anon_kb"], "disk_read_bytes": disk_reads(lab) - before,
            "load_1m_after": os.getloadavg()[0]}


def cold_warm(lab, work: Path, name: str, job: dict, out: dict, expect: int) -> None:
    """`job` cold (caches dropped), then warm (at once, `warm`); into `out[name]` (when `--sides`
    wants it)."""
    if not wanted(name):
        return
    drop_caches()
    out[name] = {"cold": checked_side(lab, work, name, "cold", job, expect)}
    # (a loader's warm pass: the next epoch — `warm` runs it again, the same epoch, when it read off the disks)
    out[name]["warm"] = warm(lab, work, name, {**job, "epoch": 1} if job["kind"] == "loader" else job, expect)


def checked_side(lab, work: Path, name: str, temp: str, job: dict, expect: int) -> dict:
    """`side`, its samples counted (SystemExit when they are not `expect`) and its line printed."""
    r = side(lab, work, job)
    if r["samples"] != expect:
        raise SystemExit(f"{name} {temp}: {r['samples']} samples, not {expect}")
    print(f"{name:>22} {temp}: {r['seconds']:8.2f} s  {r['samples'] / r['seconds']:8.0f} samples/s  "
          f"RSS {r['vmhwm_kb'] / 1024:6.0f} MiB  {r['disk_read_bytes'] >> 20} MiB off the disks", flush=True)
    return r


def warm(lab, work: Path, name: str, job: dict, expect: int) -> dict:
    """`job` again at once, warm: a pass that read more than WARM_DISK_SHARE of its bytes off
    the disks (the pages this VM's reclaim took back since they were read — it pages out what
    was not touched for a minute, and a cold pass lasts minutes) is run again, up to
    WARM_PASSES in all; the last one kept, every pass's seconds and disk bytes with it."""
    passes = []
    for _ in range(WARM_PASSES):
        os.sync()
        r = checked_side(lab, work, name, "warm", job, expect)
        passes.append({"seconds": r["seconds"], "setup_s": r["setup_s"], "disk_read_bytes": r["disk_read_bytes"]})
        if r["disk_read_bytes"] <= WARM_DISK_SHARE * r["bytes"]:
            break
    return {**r, "passes": passes}


def page_cache_floor(lab, work: Path, plain: Path, expect: int) -> dict:
    """One process reading the plain files out of the page cache in a plain loop, in inode
    order, warm (`warm`: its first pass follows the plain files' own warm passes)."""
    return warm(lab, work, "page-cache floor", {"kind": "files", "procs": 0, "order": "inode", "root": str(plain)},
                expect)


def rss_rounds(lab, work: Path, sides: dict, refs: dict[str, tuple[str, int]],
               conf: str) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """The peak RSS (VmHWM, KiB) and the time (s) of each one-process loader side over
    RSS_ROUNDS cold epochs: the one `cold_warm` measured, then the sides again in turn (a
    process's peak varies by a tenth from one run to the next with the allocator's and the
    threads' timing; its time by a few per cent)."""
    out = {name: [sides[name]["cold"]["vmhwm_kb"]] for name in refs}
    times = {name: [sides[name]["cold"]["seconds"]] for name in refs}
    for _ in range(RSS_ROUNDS - 1):
        for name, (ref, expect) in refs.items():
            drop_caches()
            job = {"kind": "loader", "procs": 0, "ref": ref, "config": conf}
            r = checked_side(lab, work, name, "cold (RSS round)", job, expect)
            out[name].append(r["vmhwm_kb"])
            times[name].append(r["seconds"])
    print("  peak RSS over the rounds: " + "; ".join(f"{n} {', '.join(f'{kb / 1024:.0f}' for kb in v)} MiB"
                                                   for n, v in out.items()), flush=True)
    return out, times


# -- the corpus, the store, the datasets ----------------------------------------------------------------

def corpus(work: Path, items: int, large: int) -> list[Path]:
    """`items` files of 4–64 KiB and `large` of 1–4 MiB, seeded; in a seeded mixed order."""
    files = flat_files(work / "src" / "small", items, seed=6767, lo=4 << 10, hi=64 << 10)
    rng = random.Random("loader-large")
    (work / "src" / "large").mkdir(parents=True)
    for i in range(large):
        p = work / "src" / "large" / f"l{i:05d}.bin"
        p.write_bytes(rng.randbytes(rng.randint(1 << 20, 4 << 20)))
        files.append(p)
    random.Random(67).shuffle(files)
    return files


def profiles(total: int):
    """lab4, its disks grown in proportion when three copies of `total` bytes (+ 50 %: the file
    systems, and the plain copy following the replicas' uneven placement) would not fit (the
    speeds are lab4's: the bound does not change)."""
    room = sum(p.size_mb for p in LAB4) << 20
    scale = max(1.0, 3 * total * 1.5 / room)
    return tuple(replace(p, size_mb=int(p.size_mb * scale) + 1) for p in LAB4), scale


def place_plain(store, lab, files: list[Path], shas: list[str]) -> Path:
    """File k as a plain file on the disk of replica k mod 2 of its shard, under
    `<disk>/plain/c<class>/`; a tree of symlinks to them in `work/plain-view` (one root to list)."""
    view = Path(lab.root) / "plain-view"
    for k, (path, sha) in enumerate(zip(files, shas, strict=True)):
        meta = store.index.get_shard(store.index.lookup(bytes.fromhex(sha)).shard_id)
        disk = store.disks[meta.replicas[k % len(meta.replicas)]]
        dst = disk.root / "plain" / f"c{k % 10}" / f"{path.stem}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        link = view / f"c{k % 10}" / dst.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(dst)
    os.sync()
    return view


def lab_settings(work: Path, lab: Lab, url: str, redis_url: str) -> config.Settings:
    """The store on the lab's disks (their read MB/s given to the planner), two copies, 256 MiB
    shards, the mount's path (view mode needs it); zones 3A-3D on `work/ssd`."""
    disks = "".join(f'[[disks]]\nlabel = "{k}"\npath = "{lab.disks[k].mountpoint}"\n'
                    f"read_mb_s = {lab.disks[k].profile.read_mbps * MiB / 1e6:.3f}\n" for k in lab.disks)
    return lab_config(work, url, redis_url, "[store]\nshard_size_mb = 256\ncopy_of_raw = 2\ncopy_of_generated = 2\n"
                      f'write_ack = 2\n[mount]\npath = "{work / "mnt"}"\n{disks}', quota_gb=40)


def build(cfg, work: Path, name: str, batches: list[str]) -> dict:
    spec = work / f"{name}.toml"
    spec.write_text(SPEC.format(name=name, batches=json.dumps(batches)))
    rep = api.build(cfg, load_spec(spec))
    return {k: rep.get(k) for k in ("version", "samples", "bytes", "view")}


def export(cfg, oid: str, batches: list[str]) -> tuple[float, Path]:
    """`hoard export OID --selector … --layout by_sha256 --here` into 3D: (seconds, its directory)."""
    t0 = time.monotonic()
    outputs.submit(cfg, outputs.make_spec("export", oid, "by_sha256", selector={"batches": batches}))
    outputs.run(cfg, oid)
    return time.monotonic() - t0, cfg.ssd.zone_path("3D") / oid


# -- the run ----------------------------------------------------------------------------------------

def run(args) -> dict:
    db_url, redis_url = bench_servers()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-loader-", dir="/var/tmp"))
    data: dict = {"items": args.items, "large": args.large, "procs": list(PROCS), "sides": {}}
    sides = data["sides"]
    try:
        files = corpus(work, args.items, args.large)
        total = sum(p.stat().st_size for p in files)
        profs, data["disk_scale"] = profiles(total)
        with Lab(profs, direct_io=True) as lab, bench_schema(db_url) as url:
            cfg = lab_settings(work, lab, url, redis_url)
            data["lab"] = lab_profile(lab)
            read_mib_s = sum(d.profile.read_mbps for d in lab.disks.values())
            with lab.throttled():
                t0 = time.monotonic()
                with Store.open(cfg) as store:
                    res = store.put_many(files)
                    shas = [r.sha256 for r in res]
                    plain = place_plain(store, lab, files, shas)
                cut = len(files) // 4
                with psycopg.connect(url, autocommit=True) as conn:
                    for batch, part in zip(BATCHES, (slice(0, cut), slice(cut, None)), strict=True):
                        record(conn, batch, [bytes.fromhex(h) for h in shas[part]], [r.size for r in res[part]])
                data["datasets"] = {SMALL: build(cfg, work, SMALL, [BATCHES[0]]),
                                    FULL: build(cfg, work, FULL, list(BATCHES))}
                data["setup_s"] = round(time.monotonic() - t0, 1)
                os.sync()
                # each disk's read as dd gets it through the throttle: the bound the goal is judged by
                data["read_mib_s_measured"] = measured_reads(lab)
                data["bound_measured_s"] = round(total / MiB / sum(data["read_mib_s_measured"].values()), 3)
                n_full, n_small = len(files), cut
                data |= {"samples": n_full, "bytes": total, "mib": round(total / MiB, 1),
                         "read_mib_s_sum": read_mib_s, "bound_s": round(total / MiB / read_mib_s, 3),
                         "small_samples": n_small,
                         "small_bytes": sum(p.stat().st_size for p in files[:cut])}
                full, small = f"{FULL}@{data['datasets'][FULL]['version']}", \
                    f"{SMALL}@{data['datasets'][SMALL]['version']}"
                conf = str(cfg.source)
                cold_warm(lab, work, "loader x1", {"kind": "loader", "procs": 0, "ref": full, "config": conf},
                          sides, n_full)
                cold_warm(lab, work, "loader x1 (small)", {"kind": "loader", "procs": 0, "ref": small,
                                                           "config": conf}, sides, n_small)
                if wanted("loader x1") and wanted("loader x1 (small)"):
                    data["rss_rounds"], data["cold_rounds_s"] = rss_rounds(lab, work, sides, {
                        "loader x1": (full, n_full), "loader x1 (small)": (small, n_small)}, conf)
                for n in PROCS:
                    cold_warm(lab, work, f"loader x{n}", {"kind": "loader", "procs": n, "ref": full,
                                                          "config": conf}, sides, n_full)
                view = data["datasets"][FULL]["view"]
                mnt = work / "mnt"
                with hoard_mounted(cfg.source, mnt):
                    for n in PROCS:
                        cold_warm(lab, work, f"mount x{n}", {"kind": "files", "procs": n, "order": "shuffled",
                                                             "root": str(mnt / "views" / view)}, sides, n_full)
                for n in PROCS:
                    cold_warm(lab, work, f"plain x{n}", {"kind": "files", "procs": n, "order": "shuffled",
                                                         "root": str(plain)}, sides, n_full)
                cold_warm(lab, work, f"plain x{PROCS[-1]} inode", {"kind": "files", "procs": PROCS[-1],
                                                                   "order": "inode", "root": str(plain)},
                          sides, n_full)
                if wanted(f"plain x{PROCS[-1]} inode"):  # (its warm pass read every plain file)
                    data["page_cache_floor"] = page_cache_floor(lab, work, plain, n_full)
                    # where the warm epoch's time goes, each part beside the floor in one process
                    data["warm_parts"] = checked_side(lab, work, "warm parts", "warm", {
                        "kind": "parts", "procs": 0, "ref": full, "config": conf, "root": str(plain)}, n_full)
                if not wanted("3D"):
                    return data
                drop_caches()
                secs, where = export(cfg, "ldr-export", list(BATCHES))
                data["export_s"] = round(secs, 3)
                print(f"{'3D export':>22} cold: {secs:8.2f} s", flush=True)
                cold_warm(lab, work, f"3D copy x{PROCS[-1]}", {"kind": "files", "procs": PROCS[-1],
                                                                "order": "shuffled", "root": str(where)},
                          sides, n_full)
                os.sync()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data


# -- the report ------------------------------------------------------------------------------------

def side_names() -> list[str]:
    """The sides in the order they run (and are shown)."""
    return (["loader x1", "loader x1 (small)"] + [f"loader x{n}" for n in PROCS] + [f"mount x{n}" for n in PROCS]
            + [f"plain x{n}" for n in PROCS] + [f"plain x{PROCS[-1]} inode", f"3D copy x{PROCS[-1]}"])


def rows(d: dict) -> list[tuple[str, str]]:
    bound = d["bound_s"]
    out = [("corpus", f"{d['samples']:,} samples ({d['items']:,} of 4-64 KiB + {d['large']} of 1-4 MiB), "
                      f"{d['mib']:,.0f} MiB, 2 copies on lab4; bound {bound:.2f} s (Σ read "
                      f"{d['read_mib_s_sum']:.0f} MiB/s)")]
    for name in side_names():
        if name not in d["sides"]:
            continue
        r = d["sides"][name]
        line = []
        for temp in ("cold", "warm"):
            x = r[temp]
            b = bound if "small" not in name else d["small_bytes"] / (1 << 20) / d["read_mib_s_sum"]
            line.append(f"{temp} {x['seconds']:7.2f} s {b / x['seconds']:5.0%} {x['samples'] / x['seconds']:7.0f}/s")
        out.append((name, "  ".join(line) + f"  RSS {r['cold']['vmhwm_kb'] / 1024:.0f} MiB"))
    if "export_s" not in d:  # (`--sides` left it out)
        return out + [("loader x1 stats (cold)", json.dumps(d["sides"].get("loader x1", {}).get("cold")))]
    e = d["export_s"] + d["sides"][f"3D copy x{PROCS[-1]}"]["cold"]["seconds"]
    out.append(("3D export + read (cold)", f"{d['export_s']:.2f} + {e - d['export_s']:.2f} s = {bound / e:.0%} of "
                                          "the bound"))
    out.append(("loader x1 stats (cold)", json.dumps(d["sides"]["loader x1"]["cold"].get("stats"))))
    return out


def goals(d: dict) -> list[str]:
    s = d["sides"]
    if set(side_names()) - set(s):  # (`--sides` left some out: no goal is judged)
        return []
    # the one-process loader's cold epochs (the table's and the RSS rounds'): their median — a run
    # before the rounds kept their times, the fastest of the loader's sides
    times = d.get("cold_rounds_s", {}).get("loader x1")
    cold = statistics.median(times) if times else min(s[f"loader x{n}"]["cold"]["seconds"] for n in (1, *PROCS))
    which = (f"the median of the one-process loader's {len(times)} cold epochs "
             f"({', '.join(f'{t:.2f}' for t in times)} s)") if times else "the loader's fastest cold epoch"
    mount = min(s[f"mount x{n}"]["cold"]["seconds"] for n in PROCS)
    same = ", ".join(f"{n} processes {s[f'mount x{n}']['cold']['seconds'] / s[f'loader x{n}']['cold']['seconds']:.1f}×"
                     for n in PROCS)
    rounds = d.get("rss_rounds")  # (a run before the rounds: its one cold epoch each)
    rss_full, rss_small = (statistics.median(rounds["loader x1"]), statistics.median(rounds["loader x1 (small)"])) \
        if rounds else (s["loader x1"]["cold"]["vmhwm_kb"], s["loader x1 (small)"]["cold"]["vmhwm_kb"])
    of = (f" (the median of {len(rounds['loader x1'])} cold epochs each: "
          + "; ".join(f"{'smaller' if 'small' in n else 'larger'} {', '.join(f'{kb / 1024:.0f}' for kb in v)}"
                      for n, v in rounds.items()) + " MiB)") if rounds else ""
    share = d["bound_s"] / cold
    judged, dd = share, ""
    if "bound_measured_s" in d:  # (a run before the dd-measured bound: the set limits' alone)
        judged = d["bound_measured_s"] / cold
        dd = f", {judged:.1%} of the bound at the read speeds dd measured ({d['bound_measured_s']:.1f} s)"
    return [f"{which}: {share:.1%} of the bound{dd} (goal ≥ {GOAL_SHARE:.0%}): "
            f"{'met' if judged >= GOAL_SHARE else 'missed'}",
            f"against the mount's fastest file loader: {mount / cold:.1f}× (goal ≥ {GOAL_VS_MOUNT:.0f}×): "
            f"{'met' if mount / cold >= GOAL_VS_MOUNT else 'missed'}; with the same processes: {same}",
            f"peak RSS {rss_small / 1024:.0f} MiB at {d['small_samples']:,} samples, {rss_full / 1024:.0f} MiB at "
            f"{d['samples']:,}{of} ({rss_full / rss_small:.2f}×, "
            f"{(rss_full - rss_small) * 1024 / (d['samples'] - d['small_samples']) / 1000:.2f} KB a sample more; "
            f"goal: flat, ≤ {GOAL_RSS_FLAT:.2f}×): {'met' if rss_full / rss_small <= GOAL_RSS_FLAT else 'missed'}"
            + _rss_over_the_epoch(d),
            *_warm_goal(d)]


def _rss_over_the_epoch(d: dict) -> str:
    """Where the larger cold epoch's RssAnon stood once it had handed out as many samples as
    the smaller dataset holds, and where its readings peaked (nothing for a run without them)."""
    trace = d["sides"]["loader x1"]["cold"].get("rss_anon_kb_by_sample")
    if not trace:
        return ""
    at = next((kb for n, kb in trace if n >= d["small_samples"]), trace[-1][1])
    top = max(kb for _n, kb in trace)
    where = next(n for n, kb in trace if kb == top)
    small = d["sides"]["loader x1 (small)"]["cold"]["peak_anon_kb"]
    return (f"; RssAnon of the larger epoch after {d['small_samples']:,} samples {at / 1024:.0f} MiB (the smaller "
            f"one's peak {small / 1024:.0f} MiB), its highest reading {top / 1024:.0f} MiB at sample {where:,}")


def _warm_goal(d: dict) -> list[str]:
    """The loader's warm epoch against the page-cache floor (one process reading each sample's
    plain file out of the page cache in a plain loop): at page-cache speed is at least as fast.
    Each side's start apart (the loader's manifest and plan, the floor's listing — its inode
    order stats every file): the samples handed out, side by side."""
    floor = d.get("page_cache_floor")
    if floor is None:
        return []
    w = d["sides"]["loader x1"]["warm"]
    warm, base = w["seconds"] - w["setup_s"], floor["seconds"] - floor["setup_s"]
    line = (f"warm, each side's start apart: the loader's one-process epoch {warm:.2f} s, one process reading the "
            f"same samples' files out of the page cache in a plain loop {base:.2f} s ({base / warm:.2f}×; goal: at "
            "page-cache speed, at least as fast)")
    cold_mib = {"the loader": w["disk_read_bytes"] >> 20, "the plain loop": floor["disk_read_bytes"] >> 20}
    if any(side_["disk_read_bytes"] > WARM_DISK_SHARE * d["bytes"] for side_ in (w, floor)):
        return [f"{line}: not judged — a side was not warm (" + ", ".join(f"{k} read {v} MiB" for k, v in
                                                                             cold_mib.items())
                + f" off the disks; at most {WARM_DISK_SHARE:.2%} of the bytes counts as warm)"]
    return [f"{line}: {'met' if warm <= base else 'missed'}" + _warm_parts(d)]


def _warm_parts(d: dict) -> str:
    """`warm_parts`' figures, as the warm goal's line goes on (nothing for a run without them)."""
    side_ = d.get("warm_parts", {})
    parts = side_.get("parts_s")
    if not parts:
        return ""
    # (its warm-up — one loader epoch, the plain files once — may read up to the store's bytes again)
    extra = side_["disk_read_bytes"] - side_["bytes"]
    caveat = (f"; not all warm: the side read {extra >> 20} MiB off the disks beyond one epoch's bytes for its "
              "warm-up" if extra > WARM_DISK_SHARE * side_["bytes"] * side_["parts_epochs"] else "")
    floor, recs, lines, ld = parts["floor"], parts["records"], parts["records + lines"], parts["loader"]
    return (f". Where it goes (`warm_parts`: each part's fastest of {PART_ROUNDS} rounds in one process, in turn, "
            f"its start apart): the plain loop {floor:.2f} s; the loader's plan, then as one loop what its warm epoch "
            f"does for the bytes (each run's pages and records looked at, every record read and checked, the index's "
            f"last write looked at a sample) {recs:.2f} s ({recs / floor:.2f}× the plain loop); "
            f"each sample's manifest line read, checked and parsed into the fields the loader yields too, "
            f"{lines:.2f} s (+{lines - recs:.2f} s); the loader itself {ld:.2f} s (+{ld - lines:.2f} s of its own "
            f"bookkeeping: the runs handed over, the samples held, the stats and the mix, its calls a sample{caveat})")


def _dd_bound(d: dict) -> str:
    """The dd-measured bound, as the render's header says it (nothing for a run without it)."""
    if "bound_measured_s" not in d:
        return ""
    dd = d["read_mib_s_measured"]
    return (f"; {d['bound_measured_s']:.1f} s at the Σ {sum(dd.values()):.0f} MiB/s `dd` read through the throttle: "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(dd.items())))


def render(results: Path | None = None) -> None:
    path = (results or RESULTS) / "loader-lab4.json"
    if not path.exists():
        raise SystemExit(f"no {path}: run `bench/loader.py` (default sizes) first")
    d = json.loads(path.read_text())
    bound, read = d["bound_s"], d["read_mib_s_sum"]
    lines = [BEGIN, "", f"`bench/loader.py` at {d['commit']}, {d['when'][:16].replace('T', ' ')}: one epoch of "
             f"{d['samples']:,} samples ({d['items']:,} of 4–64 KiB and {d['large']} of 1–4 MiB, {d['mib']:,.0f} "
             f"MiB) stored with two copies on lab4; bound {bound:.1f} s (the bytes over Σ {read:.0f} MiB/s of the "
             f"four disks{_dd_bound(d)}); 1-minute load {d['machine']['loadavg_1m_at_start']:.1f} at the start, "
             f"{d['machine']['loadavg_1m_at_end']:.1f} at the end. Each side is its own process in the lab's cgroup; "
             "samples read whole as bytes, none decoded.", "",
             "| side | processes | cold s | cold share | cold samples/s | warm s | warm samples/s | warm: MiB off the disks "
             "| peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in side_names():
        r = d["sides"][name]
        c, w = r["cold"], r["warm"]
        b = bound if "small" not in name else d["small_bytes"] / (1 << 20) / read
        what, _, procs = name.partition(" x")
        procs, _, extra = procs.partition(" ")
        lines.append(f"| {what}{' (' + extra.strip('()') + ')' if extra else ''} | {procs} "
                     f"| {c['seconds']:.2f} | {b / c['seconds']:.0%} | {c['samples'] / c['seconds']:,.0f} | "
                     f"{w['seconds']:.2f} | {w['samples'] / w['seconds']:,.0f} | {w['disk_read_bytes'] >> 20:,} | "
                     f"{c['vmhwm_kb'] / 1024:.0f} |")
    e = d["export_s"] + d["sides"][f"3D copy x{PROCS[-1]}"]["cold"]["seconds"]
    mix = d["sides"]["loader x1"]["cold"].get("stats", {}).get("mix", {})
    per_disk = d["sides"]["loader x1"]["cold"].get("stats", {}).get("per_disk_bytes", {})
    mixed = (f"at least {mix['distinct_shards_min']} distinct shards, {mix['distinct_shards_mean']} on average, "
             f"one shard's largest share {mix['largest_shard_share']:.0%}" if mix.get("windows")
             else "fewer samples than one window")
    lines += ["", "Peak RSS is the main process's (VmHWM; the DataLoader's workers apart). 3D export then "
              f"reading it: {d['export_s']:.1f} s + {e - d['export_s']:.1f} s = {bound / e:.0%} of the bound. The "
              f"loader's mix (one process, cold, windows of {mix.get('window')} samples): {mixed}; MiB read per "
              "disk: " + ", ".join(f"{k} {v / (1 << 20):,.0f}" for k, v in sorted(per_disk.items())) + "."]
    not_warm = [name for name in side_names()
                if d["sides"][name]["warm"]["disk_read_bytes"] > WARM_DISK_SHARE * d["sides"][name]["warm"]["bytes"]]
    if not_warm:
        again = "" if d["sides"][not_warm[0]]["warm"].get("passes") else ", and the run did not pass them again"
        lines += [f"Not warm (their kept warm pass read more than {WARM_DISK_SHARE:.2%} of its bytes off the "
                  f"disks{again}): {', '.join(not_warm)} — their warm times include those reads."]
    one = d["sides"]["loader x1"]["cold"]
    # (a run that timed `read_exact` alone missed the ranges read into a reader's buffer: not shown)
    if one.get("disk_first_read_s") and "read_exact_into" in one.get("disk_reads_timed", []):
        # (the manifest's read is the first read of the disks holding it: every disk reads samples
        # once the last one has begun)
        first, last = max(one["disk_first_read_s"].values()), max(one["disk_last_read_end_s"].values())
        lines += [f"Where the one-process cold epoch's {one['seconds']:.1f} s go: its start until every disk reads "
                  f"samples, {first:.1f} s (the loader made in {one['setup_s']:.1f} s: {_made(one)}; then the plan "
                  f"and the withheld query); the disks reading, {last - first:.1f} "
                  f"s ({bound / (last - first):.0%} of the bound while they read); after the last read, "
                  f"{one['seconds'] - last:.1f} s."]
    lines += [""] + [f"- {g}" for g in goals(d)] + ["", END]
    write_doc_section(BEGIN, END, lines)


def _made(one: dict) -> str:
    """What making the one-process loader did, as its side's JSON says (a run before it said
    whether its loader index was read: either)."""
    index = "its loader index read, the samples' places looked up, its manifest read into the page cache meanwhile"
    whole = "its manifest read whole off both replicas, each line's sha256 and split found"
    if "from_index" not in one:
        return f"the store opened, then {index} (a version built before indexes were kept: {whole})"
    return f"the store opened, then {index if one['from_index'] else whole}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000, help="samples of 4-64 KiB (default 100000)")
    ap.add_argument("--large", type=int, default=200, help="samples of 1-4 MiB (default 200)")
    ap.add_argument("--results", type=Path, help="directory for the JSON (default bench/results)")
    ap.add_argument("--sides", help="only the sides whose names start with these (comma-separated, e.g. "
                    "'loader x1,mount'): a probe, its JSON named -sides, no goal judged, no docs")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.render:
        return render(args.results)
    if not _has_torch():
        raise SystemExit("bench/loader.py: torch is missing; install it with `make search` and run again")
    # a SIGTERM (timeout, kill) unwinds like Ctrl-C: the lab's disks, the mount and the schema go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ONLY[:] = [p.strip() for p in (args.sides or "").split(",") if p.strip()]
    data = run(args)
    profile = ("lab4" if (args.items, args.large) == (100_000, 200) else f"lab4-{args.items}-{args.large}") \
        + ("-sides" if ONLY else "")
    results = args.results or RESULTS
    tmp = Path(tempfile.mkdtemp(prefix="hoard-bench-loader-json-"))
    report(f"the loader's epoch ({profile})", rows(data) + [("goal", g) for g in goals(data)], data, results=tmp)
    results.mkdir(parents=True, exist_ok=True)
    (only,) = tmp.iterdir()
    shutil.move(only, results / f"loader-{profile}.json")
    tmp.rmdir()
    print(f"json: {results / f'loader-{profile}.json'}")
    if profile == "lab4" and args.results is None:
        render()


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


if __name__ == "__main__":
    if "--child" in sys.argv:
        main()
    else:
        run_timed(main)
