"""`hoard delete --batch` and the gc that frees it, two checkouts against each other on a store
`bench/scale.py --keep --work DIR` kept (the goal: both grow with the one batch they work on, not
with the whole store).

    python bench/delete_gc.py --work DIR --old CHECKOUT [--rounds 4] [--label NAME]

Each round takes the newest batch still registered and deletes it — the store's side
(`hoardfs.fsd.maintenance.deletion.drop_batch`, as the CLI calls it: the bench's PostgreSQL is gone
with its run) — then runs `hoard gc --no-database`, each its own process from one checkout,
the checkouts taking turns (old, new, old, …) so that the machine's load falls on both. Time,
VmHWM and peak RssAnon of each; raw JSON in bench/results/delete-gc-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import REPO, RESULTS, hoard_process, stamp

from hoardfs.base import config
from hoardfs.fsd.store import Store

DROP = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
        "from hoardfs.fsd.maintenance.deletion import drop_batch; "
        "s = Store.open(config.load(sys.argv[1])); print(drop_batch(s, sys.argv[2])); s.close()")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="the folder `bench/scale.py --keep --work` kept")
    ap.add_argument("--old", type=Path, required=True, help="the checkout to compare with (e.g. a `git worktree`)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--label", help="the results file's label (default: the store's object count)")
    args = ap.parse_args()
    cfg_path = args.work / "hoard.toml"
    with Store.open(config.load(cfg_path), writable=False) as store:
        batches = sorted(name for name, _ in store.index.iter_batches())
        objects = store.index.count_objects()
    load_before = os.getloadavg()
    rounds = []
    for i in range(min(args.rounds, len(batches))):
        who, repo = ("old", args.old.resolve()) if i % 2 == 0 else ("new", REPO)
        victim = batches.pop()
        got = {"checkout": who, "batch": victim,
               "delete --batch": hoard_process(cfg_path, [str(cfg_path), victim], repo=repo,
                                               prog=[sys.executable, "-c", DROP]),
               "gc (one deleted batch)": hoard_process(cfg_path, ["gc", "--no-database"], repo=repo, ok=(0,))}
        rounds.append(got)
        _write(args, objects, load_before, rounds)  # after each round: a run stopped keeps what it measured
        print(f"{who}: " + "; ".join(f"{k} {got[k]['seconds']:.2f} s, RssAnon {got[k]['peak_anon_kb'] / 1024:.0f} MB"
                                     for k in ("delete --batch", "gc (one deleted batch)")), flush=True)
    print(f"{_write(args, objects, load_before, rounds).relative_to(REPO)} written", flush=True)


def _write(args, objects: int, load_before: tuple[float, float, float], rounds: list[dict]) -> Path:
    doc = {"benchmark": "delete_gc", **stamp(), "load_before": load_before, "load_after": os.getloadavg(),
           "objects": objects, "rounds": rounds}
    out = RESULTS / f"delete-gc-{args.label or objects}.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    main()
