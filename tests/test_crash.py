"""kill -9 in the middle of a batch write: nothing partial is visible, a re-run stores nothing twice."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_store import check_store

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from hoardfs.base import config
from hoardfs.fsd.store import Store
paths = open(sys.argv[2]).read().split()
with Store.open(config.load(sys.argv[1])) as store:
    store.put_many(paths)
print("finished", flush=True)
"""


def _open_shards(index_dir: Path) -> list[str]:
    idx = Index(index_dir)
    try:
        return [m.hex for m in idx.iter_shards() if not m.sealed]
    finally:
        idx.close()


def _objects(index_dir: Path) -> int:
    idx = Index(index_dir)
    try:
        return idx.count_objects()
    finally:
        idx.close()


def _write_and_kill(root: Path, kill_after: int) -> tuple[Path, list[Path]]:
    """A store under `root` whose writer was killed -9 after `kill_after` objects were indexed,
    at a moment the index showed an open shard; returns its config and the files it was given."""
    root.mkdir()
    cfg_path = dir_disks_config(root, 3, shard_size_mb=1)
    cfg = config.load(cfg_path)
    Store.open(cfg, init=True).close()
    files = make_files(root / "in", 1500, seed=kill_after, lo=2000, hi=30000)
    listing = root / "list.txt"
    listing.write_text("\n".join(map(str, files)))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_path), str(listing)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if ((cfg.index_dir / "data.mdb").exists() and _objects(cfg.index_dir) >= kill_after
                and _open_shards(cfg.index_dir)):
            break
        time.sleep(0.002)
    child.kill()
    child.wait()
    assert child.returncode == -9, "the writer finished before it could be killed; raise the file count"
    return cfg_path, files


@pytest.mark.parametrize("kill_after", [1, 150, 900])
def test_kill_9_during_batch_write(tmp_path: Path, kill_after: int) -> None:
    """After a kill -9, every index entry verifies, no open shard is left, a re-run completes,
    and every object is stored exactly once."""
    for attempt in range(10):  # the writer may seal its shard between the look and the kill
        cfg_path, files = _write_and_kill(tmp_path / f"try{attempt}", kill_after)
        cfg = config.load(cfg_path)
        if _open_shards(cfg.index_dir):
            break
    orphans = _open_shards(cfg.index_dir)
    with Store.open(cfg) as store:  # a writer: recovers the orphaned open shard
        recovered = [e["shard"] for e in store.index.recent_events(100) if e["kind"] == "recovered_shard"]
        assert orphans, "the kill left no open shard: nothing here tests recovery"
        # every orphaned open shard is dealt with at open: sealed (an event says so), or dropped
        # because the writer died before it committed a byte to it
        dropped = [h for h in orphans if store.index.get_shard(bytes.fromhex(h)) is None]
        assert sorted(recovered + dropped) == sorted(orphans)
        indexed_before = check_store(store)
        assert indexed_before >= kill_after
        leftovers = [p for d in store.disks.values() for p in (d.root / "shards").rglob("*.open")]
        assert leftovers == []
        assert all(m.sealed for m in store.index.iter_shards())
        results = store.put_many(files)
        assert not [r for r in results if r.status == "rejected"]
        counts = Counter(r.status for r in results)
        assert counts["existing"] >= indexed_before
        assert check_store(store) == len({r.sha256 for r in results})
        stored = Counter()
        for meta in store.index.iter_shards():
            disk = store.replica_order(meta)[0]
            read = lambda off, n, d=disk, h=meta.hex: d.read_at(h, off, n)  # noqa: E731
            stored.update(r.sha256 for r in fmt.scan_records(read, disk.size(meta.hex), sealed=True))
        assert stored and max(stored.values()) == 1, "some content is stored twice"
        assert len(stored) == len({r.sha256 for r in results})
