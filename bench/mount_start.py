"""What `hoard mount` spends before it serves, step by step, on stores of different sizes taken
in turn (does the mount's start grow with the store?).

    python bench/mount_start.py CONFIG [CONFIG …] [--rounds 5]
    python bench/mount_start.py --render      # docs/benchmarks.md's section from the newest JSON

Each CONFIG is a kept store's hoard.toml (`bench/scale.py --keep --work DIR`: DIR/hoard.toml).
Every round starts, for each store in turn, one process that does what `hoardfs.fsd.mount.run_mount`
does before `pyfuse3.init` — the imports, `Store.open` (read-only, the `readers` lock), the
reader, the namespace, the watcher and its three refreshes (deletion marks, names, disk space)
— timing each step (wall and CPU: `time.process_time`), and then one real `hoard mount
--foreground` (seconds until the mount answers, and the daemon's CPU then: what bench/scale.py's
"mount start" reports). The stores are taken in turn in every round so that a machine that
drifts meets each of them alike; the median of each figure is reported. Warm figures: the first
round reads the modules and the index pages into the page cache, as a second mount would find
them. Raw JSON: bench/results/mount-start-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, RESULTS, hoard_mounted, report, run_timed, write_doc_section

BEGIN, END = "<!-- mount-start:begin -->", "<!-- mount-start:end -->"
#: the steps in the order a start takes them
ORDER = ["interpreter", "imports", "Store.open", "reader, namespace, watcher", "refresh_marks", "refresh_names",
         "refresh_space"]

#: what a start does before it serves (fsd/mount/__init__.py, run_mount), each step timed
STEPS = r"""
import json, sys, time
from pathlib import Path
got, cpu = {}, {"interpreter": time.process_time()}  # (its wall time began before this process could look)
t0, c0 = time.perf_counter(), time.process_time()
def step(name):
    global t0, c0
    got[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
import pyfuse3, trio
from hoardfs.base import config
from hoardfs.fsd.mount import ops as mount_ops
from hoardfs.fsd.mount.namespace import Namespace
from hoardfs.fsd.mount.reader import Reader
from hoardfs.fsd.mount.watch import Watcher
from hoardfs.fsd.store import Store
step("imports")
cfg = config.load(Path(sys.argv[1]))
store = Store.open(cfg, writable=False, lock="readers", what="bench/mount_start.py")
step("Store.open")
reader = Reader(store)
ns = Namespace(store.index, str(cfg.ssd.zone_path("3A")), reader.get_object)
watcher = Watcher(store, reader, ns, "bench", mount_ops.NO_OPEN)
ns.visible = watcher.visible
step("reader, namespace, watcher")
watcher.refresh_marks()
step("refresh_marks")
watcher.refresh_names()
step("refresh_names")
watcher.refresh_space()
step("refresh_space")
views, batches = watcher.names
facts = {"views": len(views), "batches": len(batches), "unshown": len(watcher.dead),
         "index_bytes": store.index.env.info()["last_pgno"] * store.index.env.stat()["psize"]}
reader.close()
store.close()
print(json.dumps({"seconds": got, "cpu_s": cpu, **facts}))
"""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(cfg_path: Path, mnt: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", STEPS, str(cfg_path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"{cfg_path}: the steps failed: {res.stderr.strip().splitlines()[-1:]}")
    got = json.loads(res.stdout)
    t0 = time.monotonic()
    with hoard_mounted(cfg_path, mnt) as proc:
        got["mount_s"], got["mount_cpu_s"] = time.monotonic() - t0, _cpu_s(proc.pid)
    return got


def _objects(cfg_path: Path) -> int | None:
    built = cfg_path.parent / "built.json"
    return json.loads(built.read_text()).get("size") if built.exists() else None


def measure(configs: list[Path], rounds: int) -> None:
    runs: dict[str, list[dict]] = {str(c): [] for c in configs}
    for n in range(rounds):
        for c in configs:
            got = one_round(c, c.parent / "mnt")
            runs[str(c)].append(got)
            print(f"round {n + 1}: {c}: mount {got['mount_s']:.3f} s ({got['mount_cpu_s']:.2f} s CPU); steps "
                  + ", ".join(f"{k} {v:.3f}" for k, v in got["cpu_s"].items()), flush=True)
    stores = []
    for c in configs:
        got = runs[str(c)]
        steps = list(got[0]["cpu_s"])
        stores.append({
            "config": str(c), "objects": _objects(c),
            **{k: got[-1][k] for k in ("views", "batches", "unshown", "index_bytes")},
            "mount_s": statistics.median(g["mount_s"] for g in got),
            "mount_cpu_s": statistics.median(g["mount_cpu_s"] for g in got),
            "mount_s_runs": [round(g["mount_s"], 3) for g in got],
            "step_cpu_s": {s: statistics.median(g["cpu_s"][s] for g in got) for s in steps},
            "step_s": {s: statistics.median(g["seconds"][s] for g in got) for s in steps if s in got[0]["seconds"]}})
    rows = [(f"{s['objects']:,} objects" if s["objects"] else s["config"],
             f"mount {s['mount_s']:.3f} s ({s['mount_cpu_s']:.2f} s CPU); "
             + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in s["step_cpu_s"].items())) for s in stores]
    report("hoard mount: the start, step by step", rows, {"rounds": rounds, "stores": stores})


def render() -> None:
    newest = max(RESULTS.glob("mount-start-*.json"), key=lambda p: json.loads(p.read_text())["when"])
    doc = json.loads(newest.read_text())
    steps = [s for s in ORDER if s in doc["stores"][0]["step_cpu_s"]]  # (the JSON's keys are sorted)
    lines = [BEGIN, "", f"`python bench/mount_start.py` at {doc['commit']}, {doc['when'][:10]} ({newest.relative_to(REPO)}): the kept "
             f"stores taken in turn, {doc['rounds']} rounds; CPU milliseconds of each step before the mount serves "
             "(the median), then the whole `hoard mount` start (wall seconds until it answers, and the daemon's CPU).",
             "", "| objects | batches | views | index | " + " | ".join(steps) + " | mount start | its CPU |",
             "|" + "---|" * (len(steps) + 6)]
    for s in doc["stores"]:
        lines.append(f"| {s['objects']:,} | {s['batches']} | {s['views']} | {s['index_bytes'] / 2**30:.2f} GiB | "
                     + " | ".join(f"{s['step_cpu_s'][k] * 1000:.0f}" for k in steps)
                     + f" | {s['mount_s']:.3f} s | {s['mount_cpu_s']:.2f} s |")
    lines += ["", END]
    write_doc_section(BEGIN, END, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", type=Path, help="kept stores' hoard.toml")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    if args.render:
        render()
    elif args.configs:
        measure(args.configs, args.rounds)
    else:
        ap.error("give kept stores' hoard.toml, or --render")


if __name__ == "__main__":
    run_timed(main)
