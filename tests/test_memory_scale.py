"""Peak memory of the whole-store commands does not grow with the store (issue 37): at 10 M
objects `hoard check` and `hoard index rebuild` took 13–16 GB (1.2–1.5 KB per object), gc
--dry-run ~100 B per object. Measured here, not timed: each command's peak RssAnon — what
the process allocated; VmHWM also counts the index pages a scan maps, page cache — at two
store sizes, and the growth per object between them must stay under GROWTH bytes.
bench/mem_scale.py measures the same at larger sizes (docs/benchmarks.md)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from fsd.base import config
from fsd.store import Store
from tests.helpers import REPO, dir_disks_config, peak_memory

#: the store sizes compared: both past the rebuild's old chunk of index writes (50,000; now
#: txnlog.TXN_ENTRIES)
SIZES = (50_000, 110_000)
#: the most a command's peak may grow per object between them (measured: 0–11; the old code: gc
#: --dry-run 88–94, check ~1,400, index rebuild ~1,570)
GROWTH = 50
COMMANDS = {"check": ("check", "--no-database"), "index rebuild": ("index", "rebuild"),
            "gc --dry-run": ("gc", "--dry-run", "--no-database")}


def _grow(cfg: config.Settings, have: int, want: int, init: bool) -> None:
    """Small objects (64 B – 1 KB) through the write path in batches, each rooted as `hoard
    put` roots what it stores (a marks-log record per object on every disk)."""
    rng = random.Random(have)
    with Store.open(cfg, init=init) as store:
        for n in range(have, want, 5000):
            got = store.put_bytes_many([rng.randbytes(rng.randint(64, 1024)) for _ in range(min(5000, want - n))])
            store.index.mark(store.index.rooted, [bytes.fromhex(r.sha256) for r in got], "hoard put")


@pytest.mark.services  # starts hoard processes
def test_peak_memory_of_check_rebuild_and_gc_does_not_grow_per_object(tmp_path: Path) -> None:
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4, copy_of_raw=2, write_ack=2)
    cfg = config.load(cfg_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    peaks: dict[str, list[int]] = {name: [] for name in COMMANDS}
    have = 0
    for size in SIZES:
        _grow(cfg, have, size, init=have == 0)
        have = size
        for name, args in COMMANDS.items():
            got = peak_memory([sys.executable, "-m", "fsd", "--config", str(cfg_path), *args], env=env)
            assert got["exit"] == 0 and got["peak_anon_kb"] > 0, (name, got["stderr"][-2000:])
            peaks[name].append(got["peak_anon_kb"] * 1024)
    per_object = {name: (b - a) / (SIZES[1] - SIZES[0]) for name, (a, b) in peaks.items()}
    assert all(v < GROWTH for v in per_object.values()), per_object
