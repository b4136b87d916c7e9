"""Recovery of a shard whose writer died tries to lose acknowledged objects and fails: with a
corrupt replica it keeps the healthy one, with no whole replica it cuts nothing, and a sealed
record of a sealed replica is never cut. Real files on directory disks; the writer dies in a
real process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, flip_byte, make_files
from tests.test_store import check_store

DIE_BEFORE_SEAL = """
import os, sys
from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.fsd.io.writer import ShardWriter
ShardWriter.seal = lambda self: os._exit(9)  # the process dies after its last commit, before sealing
paths = open(sys.argv[2]).read().split()
store = Store.open(config.load(sys.argv[1]))
store.put_many(paths)
"""


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def _died_before_seal(tmp_path: Path, disks: int, n: int, seed: int, hi: int):
    """A store whose writer committed `n` files into one shard and died before sealing it:
    (config, the files, the open shard's metadata, the index's objects)."""
    cfg = config.load(dir_disks_config(tmp_path, disks, shard_size_mb=64))
    Store.open(cfg, init=True).close()
    files = make_files(tmp_path / "in", n, seed=seed, lo=2000, hi=hi)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    child = _run_child(DIE_BEFORE_SEAL, str(cfg.source), str(listing))
    assert child.returncode == 9, child.stderr
    idx = Index(cfg.index_dir)
    [meta] = [m for m in idx.iter_shards() if not m.sealed]
    objects = dict(idx.iter_objects())
    idx.close()
    return cfg, files, meta, objects


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"set aside to .*verified records end at", level="WARNING")
def test_recovery_keeps_the_healthy_replica(tmp_path: Path) -> None:
    """200 committed files, the writer dies before sealing, one bit flips on the second replica:
    recovery keeps the good replica whole (all 200 readable), sets the bad one aside (renamed,
    not cut) and the replicator brings the shard back to its target."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 3, 200, 11, 20000)
    assert len(objects) == 200 and len(meta.replicas) == 2
    with Store.open(cfg, writable=False) as store:
        second = store.disks[meta.replicas[1]]
        victim = second.find(meta.hex)
        victim_bytes = victim.stat().st_size
    locs = sorted(loc.offset for loc in objects.values())
    flip_byte(victim, locs[48] + 10)  # inside the payload of the 49th record
    with Store.open(cfg) as store:  # a writer: recovery runs
        fresh = store.index.get_shard(meta.shard_id)
        assert fresh.sealed and fresh.replicas == [meta.replicas[0]]
        for f in files:
            data = f.read_bytes()
            assert store.get(hashlib.sha256(data).hexdigest()) == data
        aside = list((second.root / "orphans").iterdir())
        assert len(aside) == 1 and aside[0].stat().st_size == victim_bytes  # renamed whole, not cut
        assert not victim.exists()
        from hoardfs.fsd.io.replicate import replicate_once

        replicate_once(store, rate_mb_s=None)
        assert len(store.index.get_shard(meta.shard_id).replicas) == 2
        assert check_store(store) == 200
    with Store.open(cfg) as store:
        assert not [e for e in store.index.recent_events(50) if e["kind"] == "recovered_shard"][1:]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"no replica holds all .* indexed bytes", level="ERROR")
@pytest.mark.expect_log(r"disk d\d: read error on shard .*payload checksum mismatch", level="WARNING")
def test_recovery_cuts_nothing_when_no_replica_is_whole(tmp_path: Path) -> None:
    """Both replicas damaged (at different records): nothing is truncated or moved, the shard
    stays open, the event names it, and the intact records stay readable by offset."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 2, 100, 12, 8000)
    offsets = sorted(loc.offset for loc in objects.values())
    paths = [tmp_path / f"d{i}" / "shards" / meta.hex[-2:] / f"{meta.hex}.open" for i in range(2)]
    sizes = [p.stat().st_size for p in paths]
    flip_byte(paths[0], offsets[10] + 5)
    flip_byte(paths[1], offsets[70] + 5)
    with Store.open(cfg) as store:
        assert not store.index.get_shard(meta.shard_id).sealed
        assert [p.stat().st_size for p in paths] == sizes
        assert any(e["kind"] == "recovery_incomplete" for e in store.index.recent_events(20))
        good = [f.read_bytes() for f in files]
        assert all(store.get(hashlib.sha256(d).hexdigest()) == d for d in good)  # each from a good copy
        status = store.status()
        assert status["open_without_writer"] == [meta.hex]
        assert status["recovery_incomplete"][0]["shard"] == meta.hex
    from hoardfs.jobs.health import collect

    problems = [p for p in collect(cfg)["problems"] if p.startswith("store:")]
    assert any("open shards have no writer left" in p for p in problems), problems
    assert any("replicas were found bad" in p for p in problems), problems


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_sealed_record_is_never_cut_by_recovery_of_a_sealed_replica(tmp_path: Path) -> None:
    """A crash between the seal rename and the index update: the renamed replica's footer
    decides, the other (still open) replica is sealed to match, nothing is lost."""
    cfg, files, meta, objects = _died_before_seal(tmp_path, 2, 50, 21, 64000)
    records = [fmt.RecordInfo(sha, loc.offset, loc.length, b"") for sha, loc in
               sorted(objects.items(), key=lambda kv: kv[1].offset)]
    p0 = tmp_path / "d0" / "shards" / meta.hex[-2:] / f"{meta.hex}.open"
    if not p0.exists():
        p0 = tmp_path / "d1" / "shards" / meta.hex[-2:] / f"{meta.hex}.open"
    end = records[-1].end
    with open(p0, "r+b") as f:  # what the dead writer's seal had done on this replica
        f.truncate(end)
        f.seek(end)
        f.write(fmt.encode_footer(records, end))
    os.rename(p0, p0.with_suffix(".shard"))
    with Store.open(cfg) as store:
        assert store.index.get_shard(meta.shard_id).sealed
        assert len(store.index.get_shard(meta.shard_id).replicas) == 2
        assert check_store(store) == 50
