"""Peak memory of the whole-store commands does not grow with the store — at 10 M
objects `hoard check` and `hoard index rebuild` once took 13–16 GB (1.2–1.5 KB per object), gc
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

from hoardfs.base import config
from hoardfs.fsd.store import Store
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
            got = peak_memory([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args], env=env)
            assert got["exit"] == 0 and got["peak_anon_kb"] > 0, (name, got["stderr"][-2000:])
            peaks[name].append(got["peak_anon_kb"] * 1024)
    per_object = {name: (b - a) / (SIZES[1] - SIZES[0]) for name, (a, b) in peaks.items()}
    assert all(v < GROWTH for v in per_object.values()), per_object


#: objects per batch in the batch-deletion test, and in the batch it deletes: the work of the
#: deletion and of its gc, the same at both sizes — small, so that its LMDB write transactions
#: dirty a page per object at both (a transaction's dirty pages are RssAnon: ~4 KiB for each
#: leaf it touches, until the tables have more leaves than it has entries)
BATCH, VICTIM = 5000, 200
#: the store's side of `hoard delete --batch` (the CLI's needs the database), in its own process
DROP = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
        "from hoardfs.fsd.maintenance.deletion import drop_batch; "
        "s = Store.open(config.load(sys.argv[1])); print(drop_batch(s, sys.argv[2])); s.close()")


def _grow_batches(cfg: config.Settings, have: int, want: int, init: bool) -> str:
    """Batches of BATCH small objects up to `want`, then one of VICTIM, each with its manifest
    stored and registered as an ingest's package step does; returns the last one's id."""
    from hoardfs.fsd.outputs.manifest import batch_manifest, naming_lock

    rng = random.Random(have)
    with Store.open(cfg, init=init) as store:
        for n in [*range(have, want, BATCH), want]:
            got = store.put_bytes_many([rng.randbytes(rng.randint(64, 1024)) for _ in range(BATCH if n < want
                                                                                            else VICTIM)])
            stored = {f"f{i:05d}": (r.sha256, r.size) for i, r in enumerate(got)}
            body = batch_manifest(f"b{n}", "t", "now", stored, dict.fromkeys(stored, 0), [], [])
            with naming_lock(store):
                store.register_batch(f"b{n}", {"source": "t", "manifest": store.put_bytes(body).sha256})
    return f"b{want}"


@pytest.mark.services  # starts hoard processes
def test_peak_memory_of_a_batch_deletion_and_its_gc_does_not_grow_per_object(tmp_path: Path) -> None:
    """Deleting one batch and the gc that frees it: the same work at both sizes, so their peak
    RssAnon may not grow per object of the store. The old deletion held every sha256 every
    other manifest named (~110 B per object of the store)."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4, copy_of_raw=2, write_ack=2)
    cfg = config.load(cfg_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    peaks: dict[str, list[int]] = {"delete --batch": [], "gc (one deleted batch)": []}
    have = 0
    for size in SIZES:
        victim = _grow_batches(cfg, have, size, init=have == 0)
        have = size
        for name, argv in (("delete --batch", [sys.executable, "-c", DROP, str(cfg_path), victim]),
                           ("gc (one deleted batch)", [sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "gc",
                                                       "--no-database", "--threshold", "0.99"])):
            got = peak_memory(argv, env=env)
            assert got["exit"] == 0 and got["peak_anon_kb"] > 0, (name, got["stderr"][-2000:])
            peaks[name].append(got["peak_anon_kb"] * 1024)
        with Store.open(cfg) as store:  # the gc did its work: the batch's objects are gone
            assert store.index.get_batch(victim) is None and not store.index.marked(store.index.deleted)
    per_object = {name: (b - a) / (SIZES[1] - SIZES[0]) for name, (a, b) in peaks.items()}
    assert all(v < GROWTH for v in per_object.values()), per_object
