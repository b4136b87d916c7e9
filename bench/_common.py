"""Shared by the benchmarks: lab setup, a store on lab disks, timing, result printing."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fsd.base import config  # noqa: E402
from fsd.store import Store  # noqa: E402
from tests.conftest import write_config  # noqa: E402
from tests.lab import LAB4, Lab, drop_caches  # noqa: E402, F401


MiB = 1 << 20
_LOAD_AT_START = os.getloadavg()[0]  # a benchmark imports this module first


def lab_store(lab: Lab, root: Path, labels: list[str] | None = None, **opts) -> Store:
    """A store whose disks are the lab's mounts, with the profile's read speeds configured."""
    labels = labels or list(lab.disks)
    disks = [(label, lab.disks[label].mountpoint, None) for label in labels]
    path = write_config(root, disks, allow_dirs=False, **opts)
    text = path.read_text()
    for label in labels:  # give the planner the lab's real read bandwidths: blkio throttles in MiB/s,
        mb_s = lab.disks[label].profile.read_mbps * MiB / 1e6  # read_mb_s is in MB/s (10^6 bytes)
        text = text.replace(f'label = "{label}"\n', f'label = "{label}"\nread_mb_s = {mb_s:.3f}\n')
    path.write_text(text)
    return Store.open(config.load(path), init=True)


def _commit() -> str:
    """The commit measured, with `+dirty` when the work tree differs from it."""
    import subprocess

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine() -> dict:
    import platform

    mem = next((int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0)
    # the load when the run started and when it ended: a figure measured on a busy machine says so
    return {"cpus": os.cpu_count(), "mem_mib": mem, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_1m_at_start": _LOAD_AT_START, "loadavg_1m_at_end": os.getloadavg()[0]}


def lab_profile(lab: Lab) -> dict:
    """The lab's disks as the kernel throttles them (MiB/s = 2^20 bytes per second)."""
    return {label: {"size_mb": d.profile.size_mb, "read_mib_s": d.profile.read_mbps, "write_mib_s": d.profile.write_mbps,
                    "iops": d.profile.iops} for label, d in lab.disks.items()}


def parallel(cmds: list[list[str]]) -> None:
    """Run the commands at the same time (one per disk); fail if any fails."""
    import subprocess

    procs = [subprocess.Popen(c) for c in cmds]
    if any(p.wait() for p in procs):
        raise SystemExit(f"a baseline failed: {cmds}")


@contextmanager
def timed(results: dict, name: str):
    t0 = time.monotonic()
    yield
    results[name] = time.monotonic() - t0


#: every run's raw numbers, one JSON file per benchmark and variant (committed with docs/benchmarks.md)
RESULTS = Path(__file__).resolve().parent / "results"


def report(title: str, rows: list[tuple[str, str]], data: dict, results: Path | None = None) -> None:
    """Print the rows and write the raw numbers to `results` (default RESULTS) as
    `<benchmark>-<arguments>.json`."""
    print(f"\n== {title}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("json: " + json.dumps(data, sort_keys=True))
    import re

    results = results or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    variant = "-".join(a.lstrip("-") for a in sys.argv[1:]) or "default"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{Path(sys.argv[0]).stem}-{variant}".lower()).strip("-")
    doc = {"benchmark": title, "argv": sys.argv[1:], "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": _commit(), "machine": _machine(), **data}
    (results / f"{slug}.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def run_timed(main) -> None:
    """A benchmark's `__main__`: run it and say how long the whole run took."""
    t0 = time.monotonic()
    main()
    print(f"(benchmark took {time.monotonic() - t0:.0f} s)")


def replica_roots(store: Store, shas: list[str]) -> list[list[Path]]:
    """For each object, the roots of the disks holding a replica of its shard."""
    out = []
    for sha in shas:
        meta = store.index.get_shard(store.index.lookup(bytes.fromhex(sha)).shard_id)
        out.append([store.disks[uuid].root for uuid in meta.replicas])
    return out


def place_plain(files: list[Path], roots: list[list[Path]]) -> list[tuple[int, list[Path]]]:
    """Each file as a plain file `<root>/plain/<name>` on each of its roots (the store's own
    placement, from `replica_roots`), for per-file baselines. (size, copies)."""
    import shutil

    placed = []
    for path, where in zip(files, roots):
        copies = []
        for root in where:
            dst = root / "plain" / path.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, dst)
            copies.append(dst)
        placed.append((path.stat().st_size, copies))
    os.sync()
    return placed


def balanced_per_disk(lab: Lab, placed: list[tuple[int, list[Path]]]) -> dict[str, list[Path]]:
    """Each file from the copy whose disk finishes its share first (greedy by bytes / the
    disk's read MiB/s), in the given order: disk label → the files its reader takes."""
    speed = {label: d.profile.read_mbps for label, d in lab.disks.items()}  # a mount point's name is its label
    load = dict.fromkeys(speed, 0.0)
    per_disk: dict[str, list[Path]] = {}
    for size, copies in placed:
        best = min(copies, key=lambda c: (load[c.parent.parent.name] + size) / speed[c.parent.parent.name])
        load[best.parent.parent.name] += size
        per_disk.setdefault(best.parent.parent.name, []).append(best)
    return per_disk


def in_threads(fn, groups) -> None:
    """`fn(group)` for every group at the same time, one thread each (one reader per disk)."""
    import threading

    threads = [threading.Thread(target=fn, args=(g,)) for g in groups]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
