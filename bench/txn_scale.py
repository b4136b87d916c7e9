"""The longest LMDB write transaction of the maintenance commands as the store grows (the goal:
no write transaction held longer than 1 s — writers and the mount never stall behind
maintenance).

    python bench/txn_scale.py [--size 200000] [--before /tmp/old-checkout] [--json out.json]

A store of `--size` small objects (0.5–4 KB of random bytes, every one rooted as `hoard put`
roots what it stores) on two *directory* disks under `--work` (this machine's disk, as
bench/mem_scale.py), two copies. Then each command runs as its own `python -m hoardfs` process
with HOARD_LMDB_TXN_LOG set (fsd/core/txnlog.py), and its line gives the longest write
transaction (seconds, site, entries written) and the one that wrote most entries:

- `index rewrite-marks`: the marks snapshot of every disk (a root per object);
- `delete --objects-from`: a fifth of the objects released (unrooted, tombstoned) — the
  index side of `hoard delete --batch` (both go through Index.mark), without the database;
- `gc --no-database`: a real gc of them (copy the live rest, swap, delete the old shards);
- `index backup`, `index rebuild`, `index restore`.

`--before DIR` runs the same sequence with another checkout (a `git worktree add` of the
commit before the fix, which has the instrumentation) on a copy of the same store, right
after. Raw figures go to `--json` (bench/results/txn_scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import stamp  # noqa: E402
from bench.mem_scale import grow, write_config  # noqa: E402

STEPS = [("rewrite-marks", ["index", "rewrite-marks"]),
         ("delete-objects", ["delete", "--objects-from", "{released}", "--yes"]),
         ("gc", ["gc", "--no-database", "--threshold", "0.9"]),
         ("index-backup", ["index", "backup"]),
         ("index-rebuild", ["index", "rebuild"]),
         ("index-restore", ["index", "restore"])]


def run(cfg_path: Path, argv: list[str], repo: Path, log_path: Path) -> dict:
    import subprocess

    log_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(repo), HOARD_LMDB_TXN_LOG=str(log_path))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *argv], env=env, cwd=repo,
                       capture_output=True, text=True)
    secs = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr[-2000:]}")
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    top = max(lines, key=lambda r: r["longest_write_txn_s"])
    most = max(lines, key=lambda r: r.get("most_write_txn_writes", 0))
    return {"seconds": round(secs, 2), "longest_write_txn_s": top["longest_write_txn_s"],
            "longest_write_txn_site": top["longest_write_txn_site"],
            "longest_write_txn_writes": top["longest_write_txn_writes"],
            "most_write_txn_writes": most.get("most_write_txn_writes"), "most_write_txn_site": most.get("most_write_txn_site"),
            "write_txns": sum(r["write_txns"] for r in lines)}


def sequence(work: Path, repo: Path, size: int) -> list[dict]:
    cfg_path = work / "hoard.toml"
    from hoardfs.base import config
    from hoardfs.fsd.store import Store

    with Store.open(config.load(cfg_path)) as store:  # the last fifth, in sha256 order
        shas = [sha for sha, _ in store.index.iter_objects()]
    released = work / "released.txt"
    released.write_text("".join(s.hex() + "\n" for s in shas[-size // 5:]))
    rows = []
    for name, argv in STEPS:
        got = run(cfg_path, [a.format(released=released) for a in argv], repo, work / "txn.jsonl")
        rows.append({"step": name, **got})
        print(f"  {name:<16} {got['seconds']:7.1f} s  longest write txn {got['longest_write_txn_s']:7.3f} s "
              f"({got['longest_write_txn_writes']} entries, {got['longest_write_txn_site']}); most entries "
              f"{got['most_write_txn_writes']} ({got['most_write_txn_site']})", flush=True)
        for old in (work / "ssd").glob("index.old-*"):
            shutil.rmtree(old)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=200_000)
    ap.add_argument("--work", type=Path, help="where the store goes (default: a new folder in /var/tmp)")
    ap.add_argument("--before", type=Path, help="another checkout whose commands run on a copy of the same store")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hoard-txn-", dir="/var/tmp"))
    base = work / "store"
    cfg_path = write_config(base)
    out: dict = {"objects": args.size, "roots": True}
    try:
        t = grow(cfg_path, 0, args.size, True, seed=37)
        print(f"{args.size} objects in {t:.0f} s", flush=True)
        variants = [("after", REPO)] + ([("before", args.before.resolve())] if args.before else [])
        copies = {}
        for variant, _ in variants[1:]:  # copied first: each variant starts from the same store
            copies[variant] = work / variant
            shutil.copytree(base, copies[variant], symlinks=True)
            cfg = copies[variant] / "hoard.toml"
            cfg.write_text(cfg.read_text().replace(str(base), str(copies[variant])))
        for variant, repo in variants:
            print(variant, flush=True)
            out[variant] = sequence(copies.get(variant, base), repo, args.size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.update(stamp())
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
