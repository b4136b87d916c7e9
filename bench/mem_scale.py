"""Peak memory of the whole-store commands as the store grows (the goal: flat): `hoard check`,
`hoard index rebuild` and `hoard gc --dry-run`, time and peak RSS at each size.

    python bench/mem_scale.py [--sizes 100000,400000] [--before /tmp/old-checkout] [--json out.json]

A store of small objects (0.5–4 KB of random bytes) on two *directory* disks under
`--work` (this machine's disk, not the lab's loop devices: the figures are about memory,
not disk speed), two copies of everything, built through the public write path
(`Store.put_bytes_many` in batches, then each batch rooted as `hoard put` roots what it
stores — so every disk's marks log holds one record per object, the worst case for check
and rebuild). It grows to each size in turn; at each one every command runs as its own
`python -m hoardfs` process and its peak RSS is the kernel's figure for that process
(`wait4`'s ru_maxrss: VmHWM, which counts the pages of the LMDB index a scan maps — page
cache, not the process's own) and the highest RssAnon seen (what the process allocated). `--before DIR` runs the same commands of another checkout
(a `git worktree add` of the old commit) on the same store, right after, for a
before/after in one run. `--no-roots` stores the objects without marks (what a `hoard put
--name`, whose view then holds the files, leaves).

The slope (bytes per object between two sizes) is what matters: a command whose memory
does not grow with the store has a slope near zero. Nothing is written under bench/results.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import hoard_process  # noqa: E402

from hoardfs.base import config  # noqa: E402
from hoardfs.fsd.store import Store  # noqa: E402
from tests.helpers import dir_disks_config  # noqa: E402

COMMANDS = {"check": ["check", "--no-database"], "gc-dry-run": ["gc", "--dry-run", "--no-database"],
            "index-rebuild": ["index", "rebuild"]}


def write_config(root: Path) -> Path:
    """Two directory disks under `root`, two copies; no server is contacted."""
    return dir_disks_config(root, 2, write_ack=2, copy_of_raw=2)


def grow(cfg_path: Path, have: int, want: int, roots: bool, seed: int, batch: int = 5000) -> float:
    """Store objects `have`..`want` (deterministic bytes); returns the seconds it took."""
    t0 = time.monotonic()
    rng = random.Random(seed + have)
    with Store.open(config.load(cfg_path), init=have == 0) as store:
        n = have
        while n < want:
            k = min(batch, want - n)
            datas = [rng.randbytes(rng.randint(512, 4096)) for _ in range(k)]
            res = store.put_bytes_many(datas)
            if roots:
                store.index.mark(store.index.rooted, [bytes.fromhex(r.sha256) for r in res], "hoard put")
            n += k
    return time.monotonic() - t0


def measure(cfg_path: Path, argv: list[str], repo: Path) -> dict:
    """`hoard ARGV` from checkout `repo` as its own process (`_common.hoard_process`), in MB."""
    got = hoard_process(cfg_path, argv, repo)
    return {"seconds": round(got["seconds"], 2), "vmhwm_mb": round(got["vmhwm_kb"] / 1024, 1),
            "anon_mb": round(got["peak_anon_kb"] / 1024, 1), "exit": got["exit"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,400000", help="comma-separated object counts, ascending")
    ap.add_argument("--work", type=Path, help="where the store goes (default: a new folder in /var/tmp)")
    ap.add_argument("--before", type=Path, help="another checkout whose commands run on the same store too")
    ap.add_argument("--only", default=",".join(COMMANDS), help=f"commands to run (of {', '.join(COMMANDS)})")
    ap.add_argument("--no-roots", action="store_true", help="do not root the objects (no marks-log records)")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="hoard-mem-", dir="/var/tmp"))
    cfg_path = write_config(work)
    variants = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    rows: list[dict] = []
    have = 0
    try:
        for n in sizes:
            built = grow(cfg_path, have, n, not args.no_roots, seed=37)
            print(f"{n} objects (+{n - have} in {built:.0f} s)", flush=True)
            have = n
            for name in args.only.split(","):
                for variant, repo in variants:
                    got = measure(cfg_path, COMMANDS[name], repo)
                    rows.append({"objects": n, "command": name, "code": variant, **got})
                    print(f"  {name:<14} {variant:<7} {got['seconds']:8.1f} s  VmHWM {got['vmhwm_mb']:8.1f} MB  "
                          f"RssAnon {got['anon_mb']:8.1f} MB", flush=True)
                    for old in (work / "ssd").glob("index.old-*"):  # (each rebuild keeps the old index)
                        shutil.rmtree(old)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nbytes of peak RSS per object between the sizes:")
    for name in args.only.split(","):
        for variant, _ in variants:
            pts = [r for r in rows if r["command"] == name and r["code"] == variant]
            if len(pts) >= 2:
                a, b = pts[0], pts[-1]
                per = {k: (b[k] - a[k]) * 2**20 / (b["objects"] - a["objects"]) for k in ("vmhwm_mb", "anon_mb")}
                print(f"  {name:<14} {variant:<7} VmHWM {per['vmhwm_mb']:6.0f} B/object  RssAnon "
                      f"{per['anon_mb']:6.0f} B/object")
    if args.json:
        args.json.write_text(json.dumps({"roots": not args.no_roots, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
