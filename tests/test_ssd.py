"""The SSD (the index, the zones, the job state): one that is not mounted, belongs to another
store or lost its index is refused before any write; a full one is one line and loses nothing
(the disk lab's small SSD)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_store import check_store


def test_ssd_not_mounted_is_refused_before_any_write(tmp_path: Path) -> None:
    """No SSD identity and no index: the store refuses (exit 3) and creates nothing; an index
    belonging to another SSD is refused; a disk holding shards an empty index does not know is
    refused (a lost index must be restored or rebuilt, not silently started afresh)."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with pytest.raises(HoardError) as e:
        Store.open(cfg)
    assert e.value.exit_code == 3 and "not mounted" in e.value.message
    assert not cfg.ssd.root.exists()
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 5, seed=20))
    ident = cfg.ssd.root / ".hoard-ssd.json"
    doc = json.loads(ident.read_text())
    ident.write_text(json.dumps(doc | {"uuid": "another-ssd"}))
    with pytest.raises(HoardError) as e:
        Store.open(cfg)
    assert e.value.exit_code == 3 and "belongs to SSD" in e.value.message
    ident.write_text(json.dumps(doc))
    os.rename(cfg.index_dir, tmp_path / "lost-index")  # the SSD died; a new one is put in
    with pytest.raises(HoardError) as e:
        Store.open(cfg, init=True)
    assert "holds shards" in e.value.message and "hoard index rebuild" in e.value.message
    from hoardfs.fsd.maintenance.reindex import rebuild_index

    assert rebuild_index(cfg).objects == 5
    with Store.open(cfg) as store:
        assert check_store(store) == 5


def _store_on_a_small_ssd(lab_factory, tmp_path: Path, n: int, seed: int) -> tuple[Path, Path, list[str]]:
    """Two directory disks, the index on a 24 MB lab SSD, `n` files put by the CLI: (the
    config, the SSD's mount point, the digests the put reported)."""
    from tests.helpers import write_config
    from tests.lab import DiskProfile
    from tests.test_cli import hoard

    lab = lab_factory((DiskProfile("ssd", 24, 0, 0, 0),))
    disks = [(f"d{i}", tmp_path / f"d{i}", None) for i in range(2)]
    for _, p, _ in disks:
        p.mkdir()
    ssd = lab.disks["ssd"].mountpoint
    cfg_path = write_config(tmp_path, disks, ssd=ssd, shard_size_mb=1)
    Store.open(config.load(cfg_path), init=True).close()
    put = hoard("--config", str(cfg_path), "put", str(make_files(tmp_path / "a", n, seed=seed)[0].parent))
    assert put.returncode == 0, put.stderr
    return cfg_path, ssd, [line.split()[0] for line in put.stdout.splitlines()]


def _all_read_back(cfg_path: Path, stored: list[str]) -> None:
    with Store.open(config.load(cfg_path)) as store:
        for sha in stored:
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        check_store(store)


def test_a_full_ssd_is_one_line_and_loses_nothing(lab_factory, tmp_path: Path) -> None:
    """The SSD under the index fills up during a put: one line saying the SSD is full (exit 6),
    no traceback, and every object the run reported as stored reads back afterwards."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 500, seed=24)
    filler = ssd / "filler"
    st = os.statvfs(filler.parent)
    with open(filler, "wb") as f:  # leave ~200 KB: the index soon cannot grow
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))
    make_files(tmp_path / "b", 4000, seed=25, lo=100, hi=400)
    res = hoard("--config", str(cfg_path), "put", str(tmp_path / "b"))
    assert res.returncode == 6, res.stdout[-500:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "the SSD is full" in res.stderr
    stored += [line.split()[0] for line in res.stdout.splitlines()]
    filler.unlink()
    assert len(stored) >= 500
    _all_read_back(cfg_path, stored)


def test_an_index_rebuild_on_a_full_ssd_is_one_line_and_changes_nothing(lab_factory, tmp_path: Path) -> None:
    """`hoard index rebuild` with no room left on the SSD for the new index: one line saying
    the SSD is full (exit 6), no traceback, and the index in use is the one from before."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 300, seed=26)
    filler = ssd / "filler"
    with open(filler, "wb") as f:  # every block the SSD has left
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    res = hoard("--config", str(cfg_path), "index", "rebuild")
    assert res.returncode == 6, res.stdout[-500:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "the SSD is full" in res.stderr, res.stderr
    assert not list(ssd.glob("**/*.rebuild")), "the half-built index was left behind"
    filler.unlink()
    assert len(stored) == 300
    _all_read_back(cfg_path, stored)


def _fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem under `path` up to `leave` bytes free (every block when 0); the filler."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if leave:
            st = os.statvfs(path)
            os.write(fd, b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
        else:  # smaller and smaller writes, down to a byte: not even a part of a block is left
            chunk = 1 << 16
            while chunk:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    chunk //= 2
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def test_commands_on_a_full_ssd_are_one_line(lab_factory, tmp_path: Path) -> None:
    """With no block left on the SSD, every command that takes a store lock (its holder file)
    or spools on the SSD says so in one line (exit 6) naming the SSD and the next step; then,
    with space back, the same commands run and nothing was lost."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 60, seed=27)
    (tmp_path / "v.txt").write_text("".join(f"{sha}  f/{i}.bin\n" for i, sha in enumerate(stored)))
    filler = _fill(ssd)
    commands = [("gc", "--no-database", "--wait", "0"), ("replicate",), ("verify", "--repair"),
                ("view", "add", "v", str(tmp_path / "v.txt"))]
    for args in commands:
        res = hoard("--config", str(cfg_path), *args)
        assert res.returncode == 6, (args, res.stderr[-2000:])
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, (args, res.stderr)
        assert "the SSD is full" in lines[0] and str(ssd) in lines[0] and "`hoard zones`" in lines[0], lines
    filler.unlink()
    for args in commands:
        res = hoard("--config", str(cfg_path), *args)
        assert res.returncode == 0, (args, res.stderr[-2000:])
    _all_read_back(cfg_path, stored)


def test_view_add_whose_spool_fills_the_ssd_is_one_line(lab_factory, tmp_path: Path) -> None:
    """`hoard view add` with room for its lock but not for its spooled manifest: one line
    naming the SSD (exit 6), no traceback, no view defined and no spool left behind."""
    from tests.test_cli import hoard

    cfg_path, ssd, stored = _store_on_a_small_ssd(lab_factory, tmp_path, 20, seed=28)
    # rows of long paths: the spool outgrows the room left well before the manifest is read
    long = "d" * 200
    (tmp_path / "v.txt").write_text("".join(f"{stored[i % len(stored)]}  {long}/{j}/{i}.bin\n"
                                            for j in range(30) for i in range(400)))
    filler = _fill(ssd, leave=256 << 10)
    res = hoard("--config", str(cfg_path), "view", "add", "v", str(tmp_path / "v.txt"))
    filler.unlink()
    assert res.returncode == 6, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "the SSD is full" in lines[0] and str(ssd) in lines[0], res.stderr
    assert list((ssd / "state" / "tmp").glob("*")) == []
    listing = hoard("--config", str(cfg_path), "view", "list", "--json")
    assert json.loads(listing.stdout) == {}
