"""`hoard rebuild` / `hoard disks replace`: a lost disk's replicas re-created; resumable after kill -9."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_cli import hoard
from tests.test_store import check_store

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def _setup(tmp_path: Path, n_files: int = 200) -> tuple[str, list]:
    cfg_path = str(dir_disks_config(tmp_path, 4, shard_size_mb=1))
    with Store.open(config.load(cfg_path), init=True) as store:
        results = store.put_many(make_files(tmp_path / "in", n_files))
    return cfg_path, results


def _shards_on(cfg_path: str, label: str) -> int:
    idx = Index(config.load(cfg_path).index_dir)
    try:
        uuid = next(r.uuid for r in idx.get_disks() if r.label == label)
        return sum(uuid in m.replicas for m in idx.iter_shards())
    finally:
        idx.close()


def test_replace_a_lost_disk(tmp_path: Path) -> None:
    """A disk dies (the one holding most shards: placement decides which hold any); a new disk
    is added; `disks replace DEAD d4` puts every lost replica on d4."""
    cfg_path, results = _setup(tmp_path)
    lost, dead = max((_shards_on(cfg_path, f"d{i}"), f"d{i}") for i in range(4))
    assert lost > 0
    shutil.rmtree(tmp_path / dead)  # the disk is gone
    (tmp_path / "d4").mkdir()
    assert hoard("--config", cfg_path, "disks", "add", str(tmp_path / "d4"), "--label", "d4").returncode == 0
    health = hoard("--config", cfg_path, "health", "--json")
    assert health.returncode == 4
    problems = json.loads(health.stdout)["problems"]
    assert any(p.startswith(f"disk {dead}: missing") for p in problems)
    assert f"store: {lost} shards have fewer than write_ack readable replicas; run `hoard replicate`" in " ".join(problems)
    res = hoard("--config", cfg_path, "disks", "replace", dead, "d4")
    assert res.returncode == 0, res.stderr
    assert f"rebuilt {lost} shards of disk {dead}" in res.stdout and f"{lost} copied" in res.stdout
    assert _shards_on(cfg_path, "d4") == lost and _shards_on(cfg_path, dead) == 0
    report = json.loads(hoard("--config", cfg_path, "health", "--json").stdout)
    assert report["store"]["ok"], report["store"]
    assert {d["label"]: d["state"] for d in report["disks"]}[dead] == "failed"
    assert report["store"]["replication"]["shards_below_target"] == 0
    assert report["store"]["replication"]["at_risk"] == []
    with Store.open(config.load(cfg_path)) as store:
        assert check_store(store) == len({r.sha256 for r in results})
        for meta in store.index.iter_shards():
            assert len(set(meta.replicas)) == len(meta.replicas) == 2


def test_rebuild_without_a_new_disk_spreads_over_the_others(tmp_path: Path) -> None:
    cfg_path, results = _setup(tmp_path)
    shutil.rmtree(tmp_path / "d1")
    res = hoard("--config", cfg_path, "rebuild", "--disk", "d1")
    assert res.returncode == 0, res.stderr
    with Store.open(config.load(cfg_path)) as store:
        d1 = next(u for u, r in store.records.items() if r.label == "d1")
        for meta in store.index.iter_shards():
            assert d1 not in meta.replicas and len(set(meta.replicas)) == 2
        assert check_store(store) == len({r.sha256 for r in results})


def test_rebuild_resumes_after_kill_9(tmp_path: Path) -> None:
    """A rate-limited rebuild killed mid-way: the re-run copies only what is left, no half shard remains."""
    cfg_path, results = _setup(tmp_path, n_files=900)
    lost = _shards_on(cfg_path, "d0")
    shutil.rmtree(tmp_path / "d0")
    (tmp_path / "d4").mkdir()
    assert hoard("--config", cfg_path, "disks", "add", str(tmp_path / "d4"), "--label", "d4").returncode == 0
    child = subprocess.Popen([sys.executable, "-m", "hoardfs", "--config", cfg_path, "rebuild", "--disk", "d0",
                              "--onto", "d4", "--rate-mb-s", "3"], cwd=REPO)
    deadline = time.monotonic() + 60
    while _shards_on(cfg_path, "d4") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()
    child.wait()
    done = _shards_on(cfg_path, "d4")
    assert 0 < done < lost, "the kill should land mid-rebuild"
    res = hoard("--config", cfg_path, "rebuild", "--disk", "d0", "--onto", "d4")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    copied = int(out.split(" copied")[0].split()[-1])
    adopted = int(out.split(" already there")[0].split(", ")[-1].split()[0])
    assert copied + adopted == lost - done and adopted <= 3  # nothing copied twice (3 copies run at once)
    assert list((tmp_path / "d4" / "tmp").glob("*")) == []  # no half shard left behind
    assert _shards_on(cfg_path, "d4") == lost
    with Store.open(config.load(cfg_path)) as store:
        assert check_store(store) == len({r.sha256 for r in results})


def test_two_disks_lost_with_three_copies(tmp_path: Path) -> None:
    """copy_of_raw=3 on five disks: two disks die, every object still reads back, and two
    rebuilds restore three copies of everything."""
    from hoardfs.fsd.io.replicate import replicate_once

    cfg_path = str(dir_disks_config(tmp_path, 5, shard_size_mb=1, copy_of_raw=3))
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        results = store.put_many(make_files(tmp_path / "in", 300))
        replicate_once(store, rate_mb_s=None)
    shutil.rmtree(tmp_path / "d1")
    shutil.rmtree(tmp_path / "d3")
    with Store.open(cfg) as store:
        for r in results:
            assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    for lost in ("d1", "d3"):
        res = hoard("--config", cfg_path, "rebuild", "--disk", lost)
        assert res.returncode == 0 and "0 without a healthy replica" in res.stdout, res.stdout + res.stderr
    with Store.open(cfg) as store:
        alive = {u for u, r in store.records.items() if r.label not in ("d1", "d3")}
        for meta in store.index.iter_shards():
            assert len(set(meta.replicas)) == 3 and set(meta.replicas) <= alive
        assert check_store(store) == len({r.sha256 for r in results})


def _lost_then_replicated(tmp_path: Path) -> tuple[str, list, int]:
    """d0 lost, d4 added, `hoard replicate` run: every shard of d0 has its two readable
    replicas again (almost all on d4: the others are made nearly full) while the index still
    lists d0's (unreadable) copies."""
    cfg_path, results = _setup(tmp_path)
    lost = _shards_on(cfg_path, "d0")
    shutil.rmtree(tmp_path / "d0")
    (tmp_path / "d4").mkdir()
    assert hoard("--config", cfg_path, "disks", "add", str(tmp_path / "d4"), "--label", "d4").returncode == 0
    text = Path(cfg_path).read_text()
    for label in ("d1", "d2", "d3"):
        text = text.replace(f'label = "{label}"\n', f'label = "{label}"\ncapacity_gb = 0.02\n')
    Path(cfg_path).write_text(text)
    rep = hoard("--config", cfg_path, "replicate", "--rate-mb-s", "0")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert 0 < _shards_on(cfg_path, "d4") and _shards_on(cfg_path, "d0") == lost
    return cfg_path, results, lost


def _assert_rebuilt(cfg_path: str, results: list) -> None:
    with Store.open(config.load(cfg_path)) as store:
        d0 = next(u for u, r in store.records.items() if r.label == "d0")
        for meta in store.index.iter_shards():
            assert d0 not in meta.replicas and len(set(meta.replicas)) == len(meta.replicas) == 2
        assert check_store(store) == len({r.sha256 for r in results})


def test_replace_after_replicate_counts_copies_already_made(tmp_path: Path) -> None:
    """`disks replace d0 d4` after `hoard replicate` already put copies on d4: not refused for
    room, and no shard that already has its copies is copied again."""
    cfg_path, results, lost = _lost_then_replicated(tmp_path)
    res = hoard("--config", cfg_path, "disks", "replace", "d0", "d4")
    assert res.returncode == 0, res.stderr
    assert f"rebuilt {lost} shards of disk d0" in res.stdout and ": 0 copied" in res.stdout, res.stdout
    assert _shards_on(cfg_path, "d0") == 0
    _assert_rebuilt(cfg_path, results)


def test_rebuild_after_replicate_copies_nothing_twice(tmp_path: Path) -> None:
    """`rebuild --disk d0` after `hoard replicate`: every shard is at its target already, so
    d0's copies are dropped from the index and nothing is copied."""
    cfg_path, results, lost = _lost_then_replicated(tmp_path)
    res = hoard("--config", cfg_path, "rebuild", "--disk", "d0", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["shards"] == lost and rep["copied"] == 0 and rep["bytes"] == 0, rep
    _assert_rebuilt(cfg_path, results)
