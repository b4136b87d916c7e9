"""The scan step of a stroke-data batch (`quickdraw`): the sandboxed parse of N drawings
(`parse_isolated`), then the drawing of each one's PNG as the scan step does it (`render_all`:
`QuickDraw.render`'s checks, Pillow, a file each in the work directory, one syncfs) — wall
time, CPU, and drawings per second of each part.

    python bench/quickdraw_scan.py [--drawings 20000] [--rounds 3]

One generated ndjson file of N drawings shaped like Quick, Draw!'s simplified ones (1–12
strokes of 2–40 points in the 0–255 box, seeded), parsed where it was generated (no services).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

from _common import report, run_timed

from hoardfs.adapters import FORMATS
from hoardfs.adapters.isolated import parse_isolated
from hoardfs.base import config, landlock
from hoardfs.jobs.ingest.render import render_all
from tests.helpers import write_config


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _batch(root: Path, n: int) -> None:
    rng = random.Random(40)
    root.mkdir(parents=True)
    with open(root / "drawings.ndjson", "w") as fh:
        for i in range(n):
            strokes = []
            for _ in range(rng.randint(1, 12)):
                k = rng.randint(2, 40)
                strokes.append([[rng.randint(0, 255) for _ in range(k)], [rng.randint(0, 255) for _ in range(k)]])
            fh.write(json.dumps({"word": rng.choice(["cat", "dog", "angel", "house"]), "countrycode": "US",
                                 "timestamp": "2017-03-03 20:39:08.85189 UTC", "recognized": True,
                                 "key_id": str(5_000_000_000_000_000 + i), "drawing": strokes}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drawings", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-quickdraw-", dir="/var/tmp"))
    runs = []
    try:
        # the state directory render_all writes in is the SSD root's; no service or disk is opened
        cfg = config.load(write_config(work, [("d0", work / "d0", None), ("d1", work / "d1", None)]))
        root = cfg.ssd.root / "3A" / "qd-bench"
        _batch(root, args.drawings)
        adapter = FORMATS["quickdraw"]("quickdraw")
        for _ in range(args.rounds):
            t, c = time.perf_counter(), _cpu()
            parsed, _, records = parse_isolated(root, adapter)
            parse = (time.perf_counter() - t, _cpu() - c)
            assert len(records) == args.drawings and not parsed.rejects, parsed.rejects[:3]
            t, c = time.perf_counter(), _cpu()
            made = render_all(cfg, "qd-bench", adapter, records, {})
            draw = (time.perf_counter() - t, _cpu() - c)
            assert len(made) == args.drawings
            runs.append({"parse": parse, "draw": draw})
        size = (root / "drawings.ndjson").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [("batch", f"{args.drawings:,} drawings in one ndjson of {size / 1e6:.1f} MB; Landlock ABI "
                      f"{landlock.abi()}")]
    for part in ("parse", "draw"):
        rows.append((part, "; ".join(f"{r[part][0]:.2f} s wall, CPU {r[part][1]:.2f} s" for r in runs)))
        best = min(r[part][1] for r in runs)
        rows.append((f"{part}: drawings per CPU second", f"{args.drawings / best:,.0f} (best round)"))
    report("The scan of a stroke-data batch: sandboxed parse, then the PNGs", rows,
           {"drawings": args.drawings, "ndjson_bytes": size, "landlock_abi": landlock.abi(),
            **{part: [{"wall_s": round(r[part][0], 3), "cpu_s": round(r[part][1], 3)} for r in runs]
               for part in ("parse", "draw")}})


if __name__ == "__main__":
    run_timed(main)
