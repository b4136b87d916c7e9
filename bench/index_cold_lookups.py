"""What a batch's lookups cost on a cold index (as in a `put` of one batch at 10 M objects).

    python bench/index_cold_lookups.py WORK [--lookups 20000] [--rounds 2]

WORK is a store `bench/scale.py --keep` (or `--only … --work WORK`) left: its index
(WORK/ssd/index) and the digests it stored (WORK/shas.bin). Each run drops the page cache and
looks up `--lookups` random stored objects in one read transaction, as a put's dedup check
does, with LMDB's readahead on (hoardfs's setting: py-lmdb's default) and off (MDB_NORDAHEAD),
taken in turn: seconds and the bytes this process read from the disk (/proc/self/io). Cold
figures by construction. Raw JSON: bench/results/index-cold-lookups-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import report, run_timed

ONE = r"""
import json, os, random, sys, time
import lmdb
work, n, readahead = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
shas = open(os.path.join(work, "shas.bin"), "rb").read()
pick = [shas[i * 32:(i + 1) * 32] for i in random.Random(n).sample(range(len(shas) // 32), n)]
def read():
    return int(next(ln.split()[1] for ln in open("/proc/self/io") if ln.startswith("read_bytes")))
env = lmdb.open(os.path.join(work, "ssd", "index"), readonly=True, lock=False, max_dbs=24, readahead=readahead)
db = env.open_db(b"objects", create=False)
r0, t0 = read(), time.monotonic()
with env.begin(db=db) as txn:
    found = sum(txn.get(s) is not None for s in pick)
print(json.dumps({"seconds": time.monotonic() - t0, "read_bytes": read() - r0, "found": found,
                  "index_bytes": os.path.getsize(os.path.join(work, "ssd", "index", "data.mdb"))}))
"""


def cold(work: Path, n: int, readahead: str) -> dict:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    res = subprocess.run([sys.executable, "-c", ONE, str(work), str(n), readahead], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for ra in ("on", "off"):
            runs[ra].append(cold(args.work, args.lookups, ra))
    objects = os.path.getsize(args.work / "shas.bin") // 32
    data = {"objects": objects, "lookups": args.lookups, "runs": runs,
            **{f"readahead_{ra}": {"seconds": statistics.median(r["seconds"] for r in got),
                                   "read_mib": statistics.median(r["read_bytes"] for r in got) / 2**20}
               for ra, got in runs.items()}}
    rows = [(f"readahead {ra}", f"{data[f'readahead_{ra}']['seconds']:.2f} s, "
                                f"{data[f'readahead_{ra}']['read_mib']:.0f} MiB read") for ra in runs]
    report(f"{args.lookups:,} lookups on the cold index of {objects:,} objects", rows, data)


if __name__ == "__main__":
    run_timed(main)
