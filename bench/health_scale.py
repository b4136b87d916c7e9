"""`hoard health --json` as the store grows, and a zone reservation beside 200,000 sealed files
(the goals: "`health` and the GUI storage page ≤ 2 s at 10 M"; "every command's cost flat").

    python bench/health_scale.py [--sizes 100000,1000000] [--before DIR] [--zone-files 200000]

The store: small objects (0.5–4 KB) on two *directory* disks on this machine's disk, two
copies, built through the public write path with every object rooted — one marks-log record
per object on every disk, the worst case for health's judgement of the logs (bench/mem_scale.py
`grow`). At each size `hoard health --json` runs as its own process (this worktree's
PostgreSQL and Redis, from its hoard.toml): `whole` — no judgement remembered, every log read
(what every refresh cost before); `tail` — run again, nothing appended; `tail+5000` — after a
batch of 5,000 more rooted objects. `--before DIR` (a checkout of the old code, e.g. `git
archive main | tar -x -C DIR`) runs its health on the same store right after.

The zone: `3C/big/` holds `--zone-files` files of 1 KB in 200 directories and `_SEALED` (a
sealed output); the time of `zones.reserve` + `release` of a 4 KB output beside it, three
times, each in a new process, with this code and with `--before`'s. Raw JSON in
bench/results/health-scale-*.json (bench/_common.report), the load stated there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import report, run_timed  # noqa: E402
from bench.mem_scale import grow  # noqa: E402
from hoardfs.base import config  # noqa: E402
from tests.helpers import dir_disks_config  # noqa: E402


def write_config(root: Path) -> Path:
    """Two directory disks, the SSD under `root`, this worktree's PostgreSQL and Redis."""
    home = config.load(REPO / "hoard.toml")
    path = dir_disks_config(root, 2, database_url=home.database_url, redis_url=home.redis_url, quota_gb=20,
                            write_ack=2, copy_of_raw=2)
    for z in ("3A", "3B", "3C", "3D"):
        (root / "ssd" / z).mkdir(parents=True, exist_ok=True)
    return path


def health(cfg: Path, repo: Path) -> dict:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "health", "--json"], cwd=repo,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    took = time.monotonic() - t0
    if res.returncode not in (0, 4):
        raise SystemExit(f"health failed ({res.returncode}): {res.stderr[-2000:]}")
    doc = json.loads(res.stdout)
    return {"seconds": round(took, 2), "exit": res.returncode,
            "read": doc["store"].get("integrity", {}).get("read", {}),
            "store_problems": [p for p in doc["problems"] if p.startswith(("store:", "disk "))]}


RESERVE = """
import sys, time
from hoardfs.base import config
from hoardfs.fsd.outputs import zones
cfg = config.load(sys.argv[1])
t0 = time.monotonic()
r = zones.reserve(cfg, "3C", "small", "bench:small", 4096)
zones.release(cfg, r.zone, r.id)
print(time.monotonic() - t0)
"""


def reserve_times(cfg: Path, repo: Path, n: int = 3) -> list[float]:
    out = []
    for _ in range(n):
        res = subprocess.run([sys.executable, "-c", RESERVE, str(cfg)], cwd=repo, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(repo)), check=True)
        out.append(round(float(res.stdout.strip()), 3))
    return out


def big_zone(cfg: Path, files: int) -> None:
    """`3C/big/`: `files` files of 1 KB in 200 directories, sealed (an empty `_SEALED`)."""
    big = config.load(cfg).ssd.zone_path("3C") / "big"
    per = max(1, files // 200)
    body = os.urandom(1024)
    for i in range(files):
        d = big / f"d{i // per:03d}"
        if i % per == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(body)
    (big / "_SEALED").write_bytes(b"")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--before", type=Path, help="a checkout of the old code, run on the same store")
    ap.add_argument("--zone-files", type=int, default=200_000)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hoard-health-", dir="/var/tmp"))
    cfg = write_config(work)
    variants = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    rows: list[dict] = []
    have = 0
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            built = grow(cfg, have, n, True, seed=37)
            print(f"{n} objects (+{n - have} in {built:.0f} s)", flush=True)
            have = n
            # (no judgement remembered: every log read, as after a snapshot or with no memory yet)
            (work / "ssd" / "state" / "marks-judged.json").unlink(missing_ok=True)
            runs = [("whole", health(cfg, REPO)), ("tail", health(cfg, REPO))]
            grow(cfg, have, have + 5000, True, seed=38)
            have += 5000
            runs.append(("tail+5000", health(cfg, REPO)))
            if args.before:
                runs.append(("before", health(cfg, args.before.resolve())))
            for name, got in runs:
                rows.append({"objects": n, "run": name, **got})
                print(f"  health {name:<10} {got['seconds']:7.2f} s  read {got['read']}", flush=True)
        big_zone(cfg, args.zone_files)
        zone = {v: reserve_times(cfg, repo) for v, repo in variants}
        print(f"reservation beside {args.zone_files} sealed files: {zone}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = [(f"{r['objects']:>9} objects, health {r['run']}", f"{r['seconds']:.2f} s") for r in rows]
    table += [(f"reserve beside {args.zone_files} files ({v})", ", ".join(f"{t:.3f} s" for t in ts))
              for v, ts in zone.items()]
    report("health and zone reservations at scale", table,
           {"health": rows, "reserve_s": zone, "zone_files": args.zone_files,
            "store": "two directory disks on this machine's disk, 2 copies, every object rooted"})


if __name__ == "__main__":
    run_timed(main)
