"""`hoard index rebuild` of two checkouts on one store, interleaved (the rebuild's cost
per object at 10 M was 1.76× its cost at 1 M — the `held` fill).

    python bench/rebuild_ab.py --work DIR --objects 1000000 --old CHECKOUT [--rounds 2] [--label L]

The store (made in DIR when it has none, kept): objects of 64–512 random bytes — small, so the
store fits a few GB beside other work; the rebuild's cost per object is the footers, the
`objects` and `held` tables and the marks, not the bytes — on two directory disks, two copies,
in batches of 20,000, each batch's manifest stored and registered with its `held` entries as
the ingest's package step does (bench/scale.py's `store_batch`, smaller payloads). Then
`hoard index rebuild` runs `--rounds` times per checkout, alternating old, new, old, new — the
machine may be shared, so each pair saw much the same load: wall seconds, the process's CPU
seconds (utime + stime of the child), the bytes it had the filesystem write (its blocks out: the
index's pages, which a commit of keys in hash order rewrote most of), peak RSS (VmHWM) and
RssAnon, the load before each run.

Raw JSON: bench/results/rebuild-ab-<label>.json (label default: the size, e.g. 1m-under-load):
an A/B on a shared machine, not a docs/benchmarks.md figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, RESULTS, _commit, lab_config

from hoardfs.base import config
from hoardfs.fsd.outputs.manifest import batch_manifest, naming_lock
from hoardfs.fsd.store import Store

BATCH = 20_000


def payloads(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(64, 512)) for _ in range(n)]


def build(work: Path, objects: int) -> Path:
    """The store in `work` of `objects` objects (grown to it when it holds fewer); its hoard.toml."""
    cfg_path = work / "hoard.toml"
    state = work / "built.json"
    if not cfg_path.exists():
        disks = "".join(f'[[disks]]\nlabel = "d{i}"\npath = "{work / f"d{i}"}"\n' for i in range(2))
        for i in range(2):
            (work / f"d{i}").mkdir(parents=True, exist_ok=True)
        lab_config(work, "postgresql:///unused?host=/nonexistent", "unix:///nonexistent/redis.sock",
                   "[store]\nallow_directory_disks = true\nwrite_ack = 2\ncopy_of_raw = 2\n" + disks, quota_gb=1)
        state.write_text(json.dumps({"count": 0}))
    count = json.loads(state.read_text())["count"]
    if count >= objects:
        return cfg_path
    store = Store.open(config.load(cfg_path))
    t0 = time.monotonic()
    try:
        while count < objects:
            n = min(BATCH, objects - count)
            stored: dict[str, tuple[str, int]] = {}
            shas: list[bytes] = []
            for part in range(0, n, 5000):
                for r in store.put_bytes_many(payloads(count + part, min(5000, n - part))):
                    stored[f"{len(stored):05d}.bin"] = (r.sha256, r.size)
                    shas.append(bytes.fromhex(r.sha256))
            batch_id = f"ab-{count // BATCH:05d}"
            body = batch_manifest(batch_id, "ab", "2026-01-01T00:00:00+00:00", stored, dict.fromkeys(stored, 0), [], [])
            put = store.put_bytes(body)
            with naming_lock(store):
                store.register_batch(batch_id, {"source": "ab", "manifest": put.sha256, "files": len(stored),
                                                "bytes": sum(s for _, s in stored.values()),
                                                "sealed": "2026-01-01T00:00:00+00:00"},
                                     holds=shas + [bytes.fromhex(put.sha256)])
            count += n
            state.write_text(json.dumps({"count": count}))
            print(f"  {count:,} objects ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        store.close()
    return cfg_path


def rebuild(cfg_path: Path, repo: Path) -> dict:
    """One `hoard index rebuild` of checkout `repo`: wall and CPU seconds, peak memory (KiB)."""
    from tests.helpers import peak_memory

    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = peak_memory([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "index", "rebuild"],
                      env=dict(os.environ, PYTHONPATH=str(repo)), cwd=repo, poll_s=0.05)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if got["exit"] != 0:
        raise SystemExit(f"index rebuild of {repo} failed ({got['exit']}): {got['stderr'][-2000:]}")
    for old in sorted(cfg_path.parent.glob("ssd/**/index.old-*")):  # (each rebuild sets the old index aside)
        subprocess.run(["rm", "-rf", str(old)], check=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    written = (after.ru_oublock - before.ru_oublock) * 512  # (the filesystem's writes it caused: the index's pages)
    return {"seconds": round(got["seconds"], 2), "cpu_s": round(cpu, 2), "written_mb": round(written / 1e6, 1),
            "vmhwm_kb": got["vmhwm_kb"],
            "peak_anon_kb": got["peak_anon_kb"], "load_1min_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the store is (made there when absent; kept)")
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--old", type=Path, required=True, help="the old checkout (`git archive main | tar -x -C DIR`)")
    ap.add_argument("--rounds", type=int, default=2, help="rebuilds per checkout, alternating (default 2; 0: build the store only)")
    ap.add_argument("--label", help="the results file's label (default: <size>-under-load)")
    args = ap.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg_path = build(args.work, args.objects)
    if not args.rounds:  # (the store alone: built now, timed later)
        return
    runs = []
    for r in range(args.rounds):
        for which, repo in (("old", args.old.resolve()), ("new", REPO)):
            got = rebuild(cfg_path, repo)
            runs.append({"round": r, "code": which, **got})
            print(f"  {which}: {got}", flush=True)
    mean = {w: sum(x["seconds"] for x in runs if x["code"] == w) / args.rounds for w in ("old", "new")}
    cpu = {w: sum(x["cpu_s"] for x in runs if x["code"] == w) / args.rounds for w in ("old", "new")}
    label = args.label or f"{args.objects // 1_000_000 or args.objects}{'m' if args.objects >= 1_000_000 else ''}-under-load"
    doc = {"what": "hoard index rebuild, old vs new code interleaved on one store (an A/B under load; "
                   "not a docs figure)", "commit": _commit(), "objects": args.objects, "runs": runs,
           "mean_s": mean, "mean_cpu_s": cpu, "ratio_new_over_old_s": round(mean["new"] / mean["old"], 3),
           "ratio_new_over_old_cpu": round(cpu["new"] / cpu["old"], 3)}
    out = RESULTS / f"rebuild-ab-{label}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("mean_s", "mean_cpu_s", "ratio_new_over_old_s", "ratio_new_over_old_cpu")}))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
