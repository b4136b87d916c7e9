"""What a `hoard put` of one batch really writes, with the LMDB index cold and cached
(bench/scale.py's "put (one batch; index cached)" reported 5.5–9.6 GB of `write_bytes` at 10 M
objects against 0.3–0.5 GB for the same put with the page cache dropped).

    python bench/put_write_bytes.py --work DIR [--rounds 2]

DIR is a store `bench/scale.py --keep --work DIR` kept (its cluster in DIR/kept-pg is started
for the gc that removes each batch again). Each round, in turn: "cold" (the page cache dropped)
and "cached" (the whole index then read once, as scale.py's cached state reads it), each a
`hoard put` of 20,000 new files of 0.5–4 KB written and synced first; for each, the put
process's `write_bytes` (/proc/PID/io, as `_common.hoard_process` reads it) and what the machine's block device
wrote from just before the put until a sync after it (/sys/block/DEV/stat: sectors written —
the store's disks, index and SSD zones are all on it here), then the batch deleted and collected.
Raw JSON: bench/results/put-write-bytes-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _common import RESULTS, hoard_process, private_cluster, stamp
from scale import batch_to_put

from hoardfs.base import config

FILES = 20_000


def device_of(path: Path) -> str:
    """The whole block device under `path` (vda for vda1)."""
    dev = os.stat(path).st_dev
    name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
    parent = Path(f"/sys/class/block/{name}/partition")
    return Path(f"/sys/class/block/{name}").resolve().parent.name if parent.exists() else name


def written(dev: str) -> int:
    """Bytes the block device `dev` has written since boot (sectors written × 512)."""
    return int(Path(f"/sys/block/{dev}/stat").read_text().split()[6]) * 512


def one_put(work: Path, cfg_path: Path, state: str, seed: int, dev: str) -> dict:
    put_dir = work / "put-write-bytes"
    batch_to_put(put_dir, Path(config.load(cfg_path).index_dir), seed, FILES, state)
    time.sleep(2)
    before = written(dev)
    name = f"write-bytes-{state}-{time.time_ns()}"
    put = hoard_process(cfg_path, ["put", "--name", name, str(put_dir)], ok=(0,))
    os.sync()
    time.sleep(2)
    os.sync()
    device = written(dev) - before
    for args in (["delete", "--put", name, "--yes"], ["gc"]):
        hoard_process(cfg_path, args, ok=(0,))
    shutil.rmtree(put_dir)
    got = {"state": state, "seconds": round(put["seconds"], 2), "process_write_bytes": put["write_bytes"],
           "device_written_bytes": device}
    print(f"  {state}: {got['seconds']:.2f} s, the process's write_bytes {got['process_write_bytes'] / 1e6:,.0f} MB, "
          f"the device wrote {device / 1e6:,.0f} MB", flush=True)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a store bench/scale.py --keep left")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--label", default="10m")
    args = ap.parse_args()
    cfg_path = args.work / "hoard.toml"
    built = json.loads((args.work / "built.json").read_text())
    dev = device_of(config.load(cfg_path).index_dir)
    runs = []
    with private_cluster(args.work, keep=True):
        for r in range(args.rounds):
            for state in ("cold", "cached"):
                runs.append(one_put(args.work, cfg_path, state, 10**14 + 2 * r + (state == "cached"), dev) | {"round": r})
    doc = {"benchmark": "put-write-bytes", **stamp(), "objects": built.get("size"), "device": dev,
           "kernel": os.uname().release, "files": FILES, "runs": runs}
    out = RESULTS / f"put-write-bytes-{args.label}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out.relative_to(RESULTS.parent.parent)} written", flush=True)


if __name__ == "__main__":
    main()
