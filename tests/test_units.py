"""One unit convention: `hoard disks list`, `hoard health`, the mount's
`.hoard/health` and a zone's refusal show a capacity the same way — binary units named as
such (hoard.toml's capacity_gb and quota_gb are GiB) — and `hoard gc` says exactly what it
removed and what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.maintenance.deletion import release
from hoardfs.fsd.mount.watch import render_health
from hoardfs.fsd.outputs import zones
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files

REPO = Path(__file__).resolve().parent.parent


def _hoard(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("n", "shown"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "2 KiB"),
                                          (5 << 20, "5.0 MiB"), (int(1.5 * (1 << 30)), "1.50 GiB"),
                                          (3 << 40, "3.00 TiB"), (-(2 << 30), "-2.00 GiB")])
def test_fmt_bytes(n, shown) -> None:
    assert fmt_bytes(n) == shown


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_capacity_reads_the_same_in_every_command(tmp_path: Path) -> None:
    """A disk of capacity_gb = 1.5 and a zone of quota_gb = 1: "1.50 GiB" and "1.00 GiB" in
    `disks list`, `health`, `.hoard/health` and the zone's refusal (before: GB of 2^30 in some,
    of 10^9 in others — 1.50 GB in one place, 1.6 GB in another)."""
    cfg_path = dir_disks_config(tmp_path, 2, cap=1.5, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        mount_health = render_health(store).decode()
    listed = _hoard(cfg_path, "disks", "list")
    assert listed.returncode == 0, listed.stderr
    health = _hoard(cfg_path, "health")
    for text in (listed.stdout, health.stdout):
        assert "1.50 GiB" in text and " GB" not in text, text
    assert mount_health.count("1.50 GiB free") == 2, mount_health
    cfg.ssd.zone_path("3C").mkdir(parents=True, exist_ok=True)
    with pytest.raises(zones.ZoneFull) as refused:
        zones.reserve(cfg, "3C", "big", "export:big", 2 << 30)
    assert "2.00 GiB" in refused.value.message and "of its 1.00 GiB quota" in refused.value.message, \
        refused.value.message


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_gc_reports_what_it_removed_and_what_it_wrote(tmp_path: Path) -> None:
    """`gc` reported "freed" bytes larger than what it rewrote, as if the copies cost nothing:
    its report has the replica files removed and the replica files written, and their
    difference is what the disks lost."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 60, lo=16 << 10, hi=48 << 10))
        release(store, [bytes.fromhex(r.sha256) for r in res[::3]], "test")  # a third of each shard
    before = sum(p.stat().st_size for d in cfg.disks for p in (d.path / "shards").rglob("*.shard"))
    got = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9", "--json")
    assert got.returncode == 0, got.stderr
    rep = json.loads(got.stdout)
    after = sum(p.stat().st_size for d in cfg.disks for p in (d.path / "shards").rglob("*.shard"))
    assert rep["compacted"] > 0 and rep["bytes_written"] > 0
    assert rep["bytes_freed"] - rep["bytes_written"] == before - after
    text = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9")
    assert text.returncode == 0 and "net freed" in text.stdout, text.stdout + text.stderr
