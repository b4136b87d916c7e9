"""Staging small files into zone 3C against the bound, beside `cp -r` through the mount and
through mergerfs, cold and warm, one run.

    python bench/stage_small.py [--items N] [--results DIR] [--cprofile FILE]
    python bench/stage_small.py --render       # docs/benchmarks.md's section from the JSON

Corpus: N images of 4–64 KiB (seeded pseudo-random bytes recorded as `.jpg` nodes of one
sealed batch, as bench/loader.py makes and bench/dataset_build.py records them), stored on
lab4 (four disks, direct-IO loops, throttled) with two copies in 256 MiB shards; the disks are
grown in proportion when the store's two copies and the plain one would not fit. Without
`--items` the run takes 10,000 and then 100,000 images, each on a lab of its own. Zone 3C is on
this machine's disk (the SSD of a real host). Everything runs in the lab's throttled cgroup
(the mount's and mergerfs's daemons too); **cold** = `drop_caches` first, **warm** = the same
again at once (after a sync). Sides:

- **stage**: `hoard stage` of the nodes (`--nodes`, layout `by_sha256`) into 3C, in this
  process as `hoard stage --here` runs it (`hoardfs.jobs.outputs.submit` + `run`: plan in SQL,
  reserve, the batch planner's copy checked against each sha256, seal) — what
  bench/action_overhead.py times as the stage alone;
- **mount cp**: `cp -r` of the same files through `hoard mount` (a view of them in the plain
  side's tree) into a directory beside 3C, then syncfs of it (as durable as the seal);
- **mergerfs cp**: the same files as plain files on the same lab disks (file k on the disk of
  replica k mod 2 of its shard, as bench/loader.py places them), unioned by mergerfs with the
  kernel's caches on (bench/mount_read.py's MERGERFS_CACHED), `cp -r` into a directory beside
  3C, then syncfs.

Each output is renamed out of the way after its measurement (not deleted: on ext4 with online
discard a copy right after many unlinks runs slower, see bench/action_overhead.py).

Bound: the slower of two, measured in the same run — the planner's all-disk read bound (the
bytes over Σ read MiB/s of all four lab disks, each measured with `dd iflag=direct` in the lab's
cgroup as bench/dataset_build.py does; the configured sum is shown too) and the SSD's write
bound (the bytes over the MiB/s of `dd conv=fsync` of 256 MiB into a directory beside 3C).
*Share* = bound seconds / measured seconds. Goal: the stage, cold, ≥ 90 % of the bound and
ahead of both `cp -r` sides in the same run.

Raw JSON: bench/results/stage-small.json (the default run), stage-small-<items>.json with
`--items`; `--results DIR` puts it elsewhere (a smoke run's). Only a default run into
bench/results rewrites docs/benchmarks.md's section; `--render` does it again from the JSON.
`--cprofile FILE`: one cold stage under cProfile, nothing else timed. Needs root (the lab),
mergerfs and the test servers (`make test` set them up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    RESULTS,
    Lab,
    MiB,
    bench_schema,
    bench_servers,
    drop_caches,
    hoard_mounted,
    lab_profile,
    measured_reads,
    mergerfs_mounted,
    report,
    run_timed,
    write_doc_section,
)
from action_overhead import spend, stage_alone
from dataset_build import record
from loader import corpus, lab_settings, place_plain, profiles
from mount_read import MERGERFS_CACHED

from hoardfs.base.files import syncfs
from hoardfs.fsd.io.planner import make_plan
from hoardfs.fsd.outputs.views import define_view
from hoardfs.fsd.store import Store
from hoardfs.jobs import outputs

BEGIN = "<!-- bench/stage_small.py: begin (written by `bench/stage_small.py --render`; do not edit) -->"
END = "<!-- bench/stage_small.py: end -->"
SIZES = (10_000, 100_000)
SIDES = ("stage", "mount_cp", "mergerfs_cp")
GOAL_SHARE = 0.90
BATCH = "stage-small"
VIEW = "stage-small"
SSD_DD_MIB = 256


def ssd_write_bound(where: Path, mib: int = SSD_DD_MIB) -> float:
    """The destination file system's write speed now: `dd conv=fsync` of `mib` MiB into `where`."""
    f = where / "write-bound.bin"
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=1M", f"count={mib}", "conv=fsync"], check=True,
                   capture_output=True)
    speed = round(mib / (time.monotonic() - t0), 1)
    f.unlink()
    return speed


def cp_into(src: Path, dest: Path) -> None:
    """`cp -r src dest`, then syncfs of `dest` (as durable as a sealed stage)."""
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    syncfs(dest)


def measure(temp: str, fn) -> tuple[float, Any]:
    """Seconds of `fn()` from a cold (`drop_caches`) or warm (after a sync) start, and what it returned."""
    drop_caches() if temp == "cold" else os.sync()
    t0 = time.monotonic()
    got = fn()
    return round(time.monotonic() - t0, 3), got


def store_corpus(cfg, lab: Lab, files: list[Path]) -> tuple[list, dict]:
    """The files put into the store, placed as plain files (bench/loader.py's placement) and
    defined as the mount's view VIEW under the plain side's names (c<class>/<name>.jpg); the
    results, and the planner's own plan of reading them all (its makespan at the configured
    read speeds, bytes per disk)."""
    with Store.open(cfg) as store:
        res = store.put_many(files)
        plain = place_plain(store, lab, files, [r.sha256 for r in res])
        rels = (f"c{k % 10}/{p.stem}.jpg" for k, p in enumerate(files))
        define_view(store, VIEW, "".join(f"{r.sha256}  {rel}\n" for r, rel in zip(res, rels, strict=True)).encode())
        plan = make_plan(store, [bytes.fromhex(r.sha256) for r in res])
        planned = {"planner_bound_s": round(plan.bound_s, 3), "planner_ideal_s": round(plan.ideal_s, 3),
                   "plan": plan.summary({u: d.label for u, d in store.disks.items()})["disks"]}
    assert all((plain / f"c{k % 10}" / f"{p.stem}.jpg").is_symlink() for k, p in enumerate(files))
    return res, planned


def one_size(items: int, db_url: str, redis_url: str, cprofile: Path | None) -> dict:
    """The corpus of `items` images on a lab of its own: every side cold and warm; its figures."""
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-stage-", dir="/var/tmp"))
    d: dict = {"items": items, "sides": {s: {} for s in SIDES}}
    try:
        files = corpus(work, items, 0)
        total = sum(p.stat().st_size for p in files)
        profs, d["disk_scale"] = profiles(total)
        with Lab(profs, direct_io=True) as lab, bench_schema(db_url) as url:
            cfg = lab_settings(work, lab, url, redis_url)
            d["lab"] = lab_profile(lab)
            zone = cfg.ssd.zone_path("3C")
            beside, spent = zone.parent, work / "spent"
            spent.mkdir()
            with lab.throttled():
                t0 = time.monotonic()
                res, planned = store_corpus(cfg, lab, files)
                d |= planned
                shas = [r.sha256 for r in res]
                with psycopg.connect(url, autocommit=True) as conn:
                    record(conn, BATCH, [bytes.fromhex(h) for h in shas], [r.size for r in res])
                nodes = sorted(set(shas))
                d["setup_s"] = round(time.monotonic() - t0, 1)
                os.sync()
                d["read_mib_s_measured"] = measured_reads(lab)
                d["ssd_write_mib_s"] = ssd_write_bound(beside)
                if cprofile:
                    import cProfile  # deferred: only a profiling run needs it

                    drop_caches()
                    prof = cProfile.Profile()
                    prof.enable()
                    rep = stage_alone(cfg, "stage-prof", nodes)
                    prof.disable()
                    prof.dump_stats(str(cprofile))
                    print(f"cold stage under cProfile: {rep}\nprofile: {cprofile}; nothing else timed")
                    return {}
                for temp in ("cold", "warm"):
                    oid = f"stage-{temp}"
                    secs, rep = measure(temp, lambda oid=oid: stage_alone(cfg, oid, nodes))
                    d["sides"]["stage"][temp] = {"seconds": secs, "report": rep}
                    outputs.clean(cfg, oid, "3C", aside=True)
                    spend(cfg, work)
                    print(f"{items:,} stage {temp}: {secs:.2f} s", flush=True)
                mnt = work / "mnt"  # (lab_settings's [mount] path)
                assert cfg.source is not None
                with hoard_mounted(cfg.source, mnt):
                    for temp in ("cold", "warm"):
                        dest = beside / f"cp-mount-{temp}"
                        secs, _ = measure(temp, lambda dest=dest: cp_into(mnt / "views" / VIEW, dest))
                        d["sides"]["mount_cp"][temp] = {"seconds": secs}
                        dest.rename(spent / dest.name)
                        print(f"{items:,} mount cp {temp}: {secs:.2f} s", flush=True)
                branches = sorted(m / "plain" for m in (x.mountpoint for x in lab.disks.values())
                                  if (m / "plain").is_dir())
                with mergerfs_mounted(branches, work / "mergerfs", MERGERFS_CACHED):
                    for temp in ("cold", "warm"):
                        dest = beside / f"cp-mergerfs-{temp}"
                        secs, _ = measure(temp, lambda dest=dest: cp_into(work / "mergerfs", dest))
                        d["sides"]["mergerfs_cp"][temp] = {"seconds": secs}
                        dest.rename(spent / dest.name)
                        print(f"{items:,} mergerfs cp {temp}: {secs:.2f} s", flush=True)
                for side in ("mount_cp", "mergerfs_cp"):  # each side copied every file
                    got = sum(len(fs) for _, _, fs in os.walk(spent / f"cp-{side[:-3]}-cold"))
                    if got != items:
                        raise SystemExit(f"{side}: {got} files copied, not {items}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    read_sum = sum(d["read_mib_s_measured"].values())
    d |= {"bytes": total, "mib": round(total / MiB, 1), "read_mib_s_sum": round(read_sum, 1),
          "read_mib_s_configured_sum": sum(v["read_mib_s"] for v in d["lab"].values()),
          "read_bound_s": round(total / MiB / read_sum, 3),
          "ssd_write_bound_s": round(total / MiB / d["ssd_write_mib_s"], 3)}
    d["bound_s"] = max(d["read_bound_s"], d["ssd_write_bound_s"])
    d["binding"] = "read" if d["read_bound_s"] >= d["ssd_write_bound_s"] else "ssd_write"
    return d


# -- the report ------------------------------------------------------------------------------------

def goals(d: dict) -> list[str]:
    """Each size's verdicts, from its figures."""
    out = []
    for size in d["sizes"].values():
        cold = {s: size["sides"][s]["cold"]["seconds"] for s in SIDES}
        share = size["bound_s"] / cold["stage"]
        ahead = all(cold["stage"] < cold[s] for s in SIDES[1:])
        out.append(f"{size['items']:,} images, cold: stage at {share:.0%} of the bound (goal >= 90 %: "
                   f"{'met' if share >= GOAL_SHARE else 'missed'}); "
                   f"{cold['mount_cp'] / cold['stage']:.2f}x the mount's cp -r, "
                   f"{cold['mergerfs_cp'] / cold['stage']:.2f}x mergerfs's (goal: ahead of both: "
                   f"{'met' if ahead else 'missed'})")
    return out


def rows(d: dict) -> list[tuple[str, str]]:
    out = []
    for size in d["sizes"].values():
        n, b = size["items"], size["bound_s"]
        out.append((f"{n:,} images", f"{size['mib']:.0f} MiB, 2 copies on lab4 (disks x{size['disk_scale']:.2f}); "
                                     f"bound {b:.2f} s ({size['binding']}): read {size['read_bound_s']:.2f} s at Σ "
                                     f"{size['read_mib_s_sum']:.0f} MiB/s measured (configured "
                                     f"{size['read_mib_s_configured_sum']}), SSD write {size['ssd_write_bound_s']:.2f} s "
                                     f"at {size['ssd_write_mib_s']:.0f} MiB/s; the planner's own plan "
                                     f"{size['planner_bound_s']:.2f} s"))
        for s in SIDES:
            for temp in ("cold", "warm"):
                secs = size["sides"][s][temp]["seconds"]
                out.append((f"  {s} {temp}", f"{secs:8.2f} s  {n / secs:8.0f} files/s  {b / secs:5.0%} of the bound"))
    return out + [("goal", g) for g in goals(d)]


def render(results: Path | None = None) -> None:
    """docs/benchmarks.md's section, from bench/results/stage-small.json."""
    path = (results or RESULTS) / "stage-small.json"
    if not path.exists():
        raise SystemExit(f"no {path}: run `bench/stage_small.py` (both sizes) first")
    d = json.loads(path.read_text())
    m = d["machine"]
    lines = [BEGIN, "", "## Staging small files into 3C", "",
             f"`bench/stage_small.py` at {d['commit']}, {d['when'][:16].replace('T', ' ')} (its docstring says how each "
             "figure is measured): small images of 4–64 KiB stored with two copies on lab4, staged into zone 3C "
             "(this machine's disk) by `hoard stage` (as `--here` runs it), against `cp -r` of the same files through "
             "`hoard mount` and through mergerfs (caches on) over the same files as plain files on the same disks; "
             "each `cp -r` followed by a syncfs. Bound: the slower of the all-disk read bound (Σ of the four disks' "
             "read MiB/s, measured with `dd`) and the SSD's write bound (`dd conv=fsync`), both measured in the run. "
             f"1-minute load {m['loadavg_1m_at_start']:.1f} at the start, {m['loadavg_1m_at_end']:.1f} at the end. "
             "Raw numbers: `bench/results/stage-small.json`.", "",
             "| images | MiB | bound | side | cold s | cold files/s | cold share | warm s | warm files/s | warm share |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"stage": "`hoard stage`", "mount_cp": "`cp -r` through the mount", "mergerfs_cp": "`cp -r` via mergerfs"}
    for size in d["sizes"].values():
        n, b = size["items"], size["bound_s"]
        which = (f"read: Σ {size['read_mib_s_sum']:.0f} MiB/s" if size["binding"] == "read"
                 else f"SSD write: {size['ssd_write_mib_s']:.0f} MiB/s")
        bound = f"{b:.2f} s ({which})"
        for s in SIDES:
            c, w = size["sides"][s]["cold"]["seconds"], size["sides"][s]["warm"]["seconds"]
            lines.append(f"| {n:,} | {size['mib']:.0f} | {bound} | {names[s]} | {c:.2f} | {n / c:,.0f} | {b / c:.0%} "
                         f"| {w:.2f} | {n / w:,.0f} | {b / w:.0%} |")
    lines += ["", "The planner's own plan of those reads (its makespan at the configured read speeds, over the disks "
              "holding the replicas): " + "; ".join(f"{s['items']:,} images {s['planner_bound_s']:.2f} s"
                                                    for s in d["sizes"].values()) + "."]
    lines += [""] + [f"- {g}" for g in goals(d)] + ["", END]
    write_doc_section(BEGIN, END, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, help="one size of N images (default: 10000, then 100000)")
    ap.add_argument("--results", type=Path, help="directory for the JSON (default bench/results)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    ap.add_argument("--cprofile", type=Path, help="cProfile one cold stage into this file; nothing else timed")
    args = ap.parse_args()
    if args.render:
        return render(args.results)
    if shutil.which("mergerfs") is None:
        raise SystemExit("mergerfs is missing: `apt-get install mergerfs`")
    # a SIGTERM (timeout, kill) unwinds like Ctrl-C: the lab's disks, the mounts and the schema go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    db_url, redis_url = bench_servers()
    sizes = (args.items,) if args.items else SIZES
    data: dict = {"sizes": {}}
    for n in sizes:
        got = one_size(n, db_url, redis_url, args.cprofile)
        if args.cprofile:
            return
        data["sizes"][str(n)] = got
    name = f"stage-small-{args.items}" if args.items else "stage-small"
    results = args.results or RESULTS
    report("small-file stage into 3C", rows(data), data, results=results, name=name)
    if not args.items and args.results is None:
        render()


if __name__ == "__main__":
    run_timed(main)
