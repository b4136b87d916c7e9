"""The ingest's parse of one batch in-process (`parse_batch`, then the records' JSON as the scan
step keeps them) against the same parse in the Landlock-confined child (`parse_isolated`, the
scan step's way): wall time and CPU — this process's and its children's, so the
child's share is counted — alternately, `--rounds` times each.

    python bench/parse_sandbox.py [--items 20000] [--rounds 3]

One generated gallery-dl batch (as bench/ua1_ingest.py: N PNGs of 1–64 KB, each with its
`.png.json` sidecar), parsed where it was generated (no lab, no services, settle 0).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from _common import report, run_timed

from hoardfs.adapters import FORMATS, parse_batch
from hoardfs.adapters.isolated import parse_isolated
from hoardfs.adapters.records import record_json
from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import landlock


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _once(way: str, root: Path) -> tuple[float, float, float]:
    """(wall, CPU here, CPU of children) of one parse with the records in their JSON form."""
    adapter = FORMATS["gallery_dl"]("gallery")
    t, (me, kids) = time.perf_counter(), _cpu()
    if way == "in-process":
        parsed, _ = parse_batch(root, adapter)
        records = [record_json(r) for r in parsed.records]
    else:
        _, _, records = parse_isolated(root, adapter)
    assert records
    wall, (me2, kids2) = time.perf_counter() - t, _cpu()
    return wall, me2 - me, kids2 - kids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-parse-", dir="/var/tmp"))
    try:
        spec = Spec(seed=20, batches=1, items_per_batch=args.items, sources=("gallery",), large_fraction=0.0,
                    repeat_fraction=0.0, crop_fraction=0.0)
        root = work / generate(work, spec)[0].batch_id
        got: dict[str, list[tuple[float, float, float]]] = {"in-process": [], "sandboxed": []}
        for _ in range(args.rounds):
            for way in got:
                got[way].append(_once(way, root))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [("batch", f"{args.items} items = {2 * args.items} files (PNG + sidecar); Landlock ABI {landlock.abi()} "
                      f"({'enforced' if landlock.status()['enforced'] else 'absent: the child runs unconfined'})")]
    for way, runs in got.items():
        rows.append((way, "; ".join(f"{w:.2f} s wall, CPU {m + k:.2f} s (child {k:.2f})" for w, m, k in runs)))
    best = {way: min(m + k for _, m, k in runs) for way, runs in got.items()}
    rows.append(("sandboxed CPU over in-process", f"{best['sandboxed'] - best['in-process']:+.2f} s "
                                                  f"({best['sandboxed'] / best['in-process'] - 1:+.0%}), best of each"))
    report("The ingest's parse, in-process and sandboxed", rows,
           {"items": args.items, "landlock_abi": landlock.abi(),
            **{way: [{"wall_s": round(w, 3), "cpu_self_s": round(m, 3), "cpu_child_s": round(k, 3)}
                     for w, m, k in runs] for way, runs in got.items()}})


if __name__ == "__main__":
    run_timed(main)
