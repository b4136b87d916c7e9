"""`hoard disks list|add|retire` and `hoard replicate` through the real CLI; two writer processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_cli import hoard
from tests.test_store import check_store

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def _setup(tmp_path: Path, **opts) -> str:
    cfg = str(dir_disks_config(tmp_path, 2, first=1, cap=2, shard_size_mb=1, **opts))
    assert hoard("--config", cfg, "init").returncode == 0
    return cfg


def test_add_retire_and_replicate(tmp_path: Path) -> None:
    """A disk added later takes replicas; a retired one drains onto the others."""
    cfg = _setup(tmp_path)
    files = make_files(tmp_path / "in", 60)
    assert hoard("--config", cfg, "put", str(tmp_path / "in")).returncode == 0
    (tmp_path / "d3").mkdir()
    res = hoard("--config", cfg, "disks", "add", str(tmp_path / "d3"), "--label", "d3")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "d3" / ".hoard-disk.json").exists()
    assert 'label = "d3"' in Path(cfg).read_text()
    dup = hoard("--config", cfg, "disks", "add", str(tmp_path / "d3"), "--label", "d4")
    assert dup.returncode == 2 and "already a disk" in dup.stderr
    listing = hoard("--config", cfg, "disks", "list").stdout
    assert all(f"d{i} " in listing and "active" in listing for i in (1, 2, 3))

    res = hoard("--config", cfg, "disks", "retire", "d1")
    assert res.returncode == 0 and "draining" in res.stdout
    health = json.loads(hoard("--config", cfg, "health", "--json").stdout)
    assert {d["label"]: d["state"] for d in health["disks"]}["d1"] == "draining"
    assert health["store"]["replication"]["shards_below_target"] > 0
    rep = hoard("--config", cfg, "replicate", "--rate-mb-s", "0")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 still below target" in rep.stdout
    with Store.open(config.load(cfg), writable=False) as store:
        d1 = next(u for u, r in store.records.items() if r.label == "d1")
        for meta in store.index.iter_shards():
            assert len([u for u in meta.replicas if u != d1]) >= 2
        assert check_store(store) == len({f.read_bytes() for f in files})
    assert "no disk labelled nope" in hoard("--config", cfg, "disks", "retire", "nope").stderr


def test_add_refuses_a_directory_that_is_no_mount_point(tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    text = Path(cfg).read_text().replace("allow_directory_disks = true", "allow_directory_disks = false")
    Path(cfg).write_text(text)
    (tmp_path / "plain").mkdir()
    res = hoard("--config", cfg, "disks", "add", str(tmp_path / "plain"), "--label", "x1")
    assert res.returncode == 3 and "is not a mount point" in res.stderr


WRITER = """
import sys
from hoardfs.base import config
from hoardfs.fsd.store import Store
with Store.open(config.load(sys.argv[1])) as store:
    res = store.put_many(sys.argv[2:])
print(sum(r.status == "new" for r in res))
"""


def test_two_writer_processes_share_the_index(tmp_path: Path) -> None:
    """Two processes storing overlapping files at once: each object indexed once, all verify."""
    cfg = _setup(tmp_path)
    files = make_files(tmp_path / "in", 600, lo=2000, hi=20000)
    a = [str(p) for p in files[:400]]
    b = [str(p) for p in files[200:]]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, cfg, *chunk], cwd=REPO, stdout=subprocess.PIPE,
                              text=True) for chunk in (a, b)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    new = sum(int(o.strip()) for o in outs)
    assert new == 600  # a file both stored is "new" in exactly one of them (put-if-absent in LMDB)
    with Store.open(config.load(cfg)) as store:
        assert check_store(store) == 600
        assert all(m.sealed for m in store.index.iter_shards())
        assert Counter(r.status for r in store.put_many(files)) == {"existing": 600}
