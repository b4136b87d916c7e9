"""What the GUI's background refresh (`hoardfs.gui.state.StatusCache.refresh`) spends its time on, part
by part, on a store `bench/scale.py --keep` kept (its cluster in DIR/kept-pg started for it):

    python bench/gui_refresh_parts.py --work DIR [--json OUT]

Each part is timed twice (first / again); nothing is written to the store or the database.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import private_cluster

from hoardfs.base import config
from hoardfs.gui.state import ingested_per_day_at, verified_by_disk
from hoardfs.jobs.health import collect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a store kept by `bench/scale.py --keep`")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    if not (args.work / "kept-pg" / "pg").is_dir():
        raise SystemExit(f"{args.work}: no cluster kept in kept-pg (run bench/scale.py --keep --work {args.work})")
    with private_cluster(args.work, keep=True) as (url, _):  # (the kept cluster, stopped again after)
        cfg = config.load(args.work / "hoard.toml")
        parts = {"hoardfs.jobs.health.collect": lambda: collect(cfg), "hoardfs.gui.state.verified_by_disk": lambda: verified_by_disk(cfg),
                 "hoardfs.sql.browse.ingested_per_day_at": lambda: ingested_per_day_at(url)}
        got = {}
        for name, part in parts.items():
            times = []
            for _ in range(2):
                t0 = time.monotonic()
                part()
                times.append(round(time.monotonic() - t0, 3))
            got[name] = {"first_s": times[0], "again_s": times[1]}
            print(f"{name}: first {times[0]:.2f} s, again {times[1]:.2f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "gui_refresh_parts", "work": str(args.work), "parts": got},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
