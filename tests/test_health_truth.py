"""`hoard health` tells the truth about the store: shards below their replica target, disks
too full for a new shard, a store that can no longer place copy_of_raw replicas."""

from __future__ import annotations

import shutil
from pathlib import Path

from fsd.base import config
from fsd.store import Store
from jobs.health import collect
from tests.conftest import dir_disks_config, make_files


def _store_problems(cfg) -> list[str]:
    return [p for p in collect(cfg)["problems"] if p.startswith(("store:", "disk "))]


def test_below_target_and_full_disks_are_problems(tmp_path: Path) -> None:
    """After puts at write_ack (2) with copy_of_raw 3, health names the shards below target;
    once the small disks fill up, it names each full disk and says new raw shards cannot reach
    copy_of_raw on distinct disks."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=3)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 40, seed=1))
    problems = _store_problems(cfg)
    assert any("below their replica target" in p and "hoard replicate" in p for p in problems), problems
    assert not any(p.startswith("disk ") for p in problems)
    text = cfg_path.read_text()
    for i in (1, 2):  # two disks end up with under one shard of room
        text = text.replace(f'path = "{tmp_path / f"d{i}"}"', f'path = "{tmp_path / f"d{i}"}"\ncapacity_gb = 0.0005')
    cfg_path.write_text(text)
    cfg = config.load(cfg_path)
    problems = _store_problems(cfg)
    assert sum("takes no new shard" in p for p in problems) == 2, problems
    assert any(p.startswith("store: only 1 disks have room for a new shard") and "new writes are refused" in p
               for p in problems), problems


def test_verified_by_disk(tmp_path: Path) -> None:
    """fsd.health.verified_by_disk: per disk label, the age of its least recently verified
    replica — small right after the writes that sealed its shards, None for a disk holding no
    sealed shard, and {} (not an error) when the store cannot be opened."""
    from fsd.health import verified_by_disk

    cfg_path = dir_disks_config(tmp_path, 4, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 60, seed=2))
    with Store.open(cfg, writable=False) as store:
        holding = {store.records[u].label for m in store.index.iter_shards() if m.sealed for u in m.replicas}
    ages = verified_by_disk(cfg)
    assert set(ages) == {d.label for d in cfg.disks} and holding, ages
    assert all(ages[label] is not None and 0 <= ages[label] < 300 for label in holding), ages
    assert all(ages[label] is None for label in set(ages) - holding), ages
    shutil.rmtree(cfg.index_dir)
    assert verified_by_disk(cfg) == {}
