"""A batch whose manifest no replica reads (rotted at the same record in every replica: nothing
mends it). `hoard delete --batch` of it exited 5, `hoard health` said `hoard replicate` (which
did nothing), `hoard check` said "see `hoard health`", and after an index rebuild the index
stayed below the `held` format and every other batch's deletion failed too, `hoard index
migrate` pointing at the deletion that failed. Each test ingests real batches (PostgreSQL,
Redis, the real workers), flips a byte of the manifest's record in every replica file, follows
what the commands say, and reads every object that must stay back by its sha256. Each fails on
the old code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec
from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.fsd.core import formats
from hoardfs.fsd.store import Store
from tests.helpers import REPO, flip_byte
from tests.test_ingest import ingest_sample

#: three small batches of one source, half of each batch's content seen in an earlier one
SPEC = Spec(seed=63, batches=3, items_per_batch=12, sources=("gallery",), large_fraction=0.0,
            repeat_fraction=0.5, ready_signal=True)

pytestmark = [
    pytest.mark.expect_log(r"disk \w+: (read|verify|repair) error on shard \w+", level="WARNING", optional=True),
    pytest.mark.expect_log(r"no copy could be assembled from its replicas", level="WARNING", optional=True),
    pytest.mark.expect_log(r"repair of shard \w+ on \w+ from \w+ failed", level="WARNING", optional=True),
    pytest.mark.expect_log(r"batch [\w-]+: its manifest \w+ cannot be read from any replica .*: the batch is "
                           r"unregistered and nothing it named is tombstoned", level="WARNING"),
]


def _hoard(cfg: config.Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, input=stdin)


def _said(res: subprocess.CompletedProcess[str]) -> str:
    return " ".join((res.stdout + res.stderr).split())


def _rot_manifest(cfg: config.Settings, batch_id: str) -> str:
    """One byte of the batch manifest's record flipped in every replica file; its sha256."""
    with Store.open(cfg) as store:
        manifest = store.index.get_batch(batch_id)["manifest"]
        loc = store.index.lookup(bytes.fromhex(manifest))
        meta = store.index.get_shard(loc.shard_id)
        assert len(meta.replicas) >= 2
        for u in meta.replicas:
            flip_byte(store.disks[u].find(meta.hex), loc.offset + 7)
            store.disks[u].forget(meta.hex)
    return manifest


def _reads_back(cfg: config.Settings, shas: set[str]) -> None:
    """Every object read back whole: its bytes hash to its name."""
    with Store.open(cfg, writable=False) as store:
        for sha in sorted(shas):
            assert hashlib.sha256(store.get(sha)).hexdigest() == sha, sha


def _members(pg, batch_id: str) -> int:
    return pg.execute("SELECT count(*) FROM batch_member WHERE batch_id = %s", [batch_id]).fetchone()[0]


def test_a_batch_whose_manifest_no_replica_reads_is_dropped_after_asking(hoard_home: Path, pg, redis_conn) -> None:
    """verify --repair, health and check name `hoard delete --batch Y` for a batch whose manifest
    rotted in every replica; the deletion says so and asks — "no" changes nothing — then
    unregisters it with nothing it named tombstoned (its manifest only, which gc frees: the
    shard is whole again); every object of every batch still reads back."""
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, SPEC)
    items = {b.batch_id: {i.sha256 for i in b.items} for b in batches}
    y = batches[1].batch_id
    manifest = _rot_manifest(cfg, y)

    res = _hoard(cfg, "verify", "--repair")
    said = _said(res)
    assert res.returncode == ExitCode.DATA, said
    assert f"batch {y}: its manifest is a record no replica holds whole" in said  # old code: no step named
    assert f"`hoard delete --batch {y}`" in said, said
    problems = json.loads(_hoard(cfg, "health", "--json").stdout)["problems"]
    assert any(f"`hoard delete --batch {y}`" in p for p in problems), problems
    assert not any("run `hoard replicate`" in p for p in problems), problems  # (it mends nothing here)
    assert _hoard(cfg, "replicate").returncode == 0
    check = json.loads(_hoard(cfg, "check", "--json").stdout)["problems"]
    [line] = [p for p in check if manifest in p]
    assert "cannot be read from any replica" in line and f"`hoard delete --batch {y}`" in line, line

    res = _hoard(cfg, "delete", "--batch", y, stdin="y\nn\n")
    assert res.returncode == ExitCode.INTERRUPTED, _said(res)  # old code: exit 5, no question
    assert "cannot be read from any replica" in res.stderr and "tombstoning nothing it named?" in _said(res)
    with Store.open(cfg, writable=False) as store:
        assert store.index.get_batch(y) is not None
    assert _members(pg, y) == len(items[y])  # (the database is changed after the question, never before)

    res = _hoard(cfg, "delete", "--batch", y, stdin="y\ny\n")
    assert res.returncode == 0, _said(res)
    assert f"batch {y} dropped" in res.stdout and "1 objects tombstoned" in res.stdout, res.stdout
    with Store.open(cfg, writable=False) as store:
        assert store.index.get_batch(y) is None
        assert store.index.marked_among(store.index.deleted, {bytes.fromhex(s) for s in items[y]}) == set()
    assert _members(pg, y) == 0
    everything = set().union(*items.values())
    _reads_back(cfg, everything)  # nothing it named is lost, nor anything another batch names

    res = _hoard(cfg, "gc", "--threshold", "1.0")
    assert res.returncode == 0, _said(res)
    _reads_back(cfg, everything)
    with Store.open(cfg, writable=False) as store:
        assert store.index.lookup(bytes.fromhex(manifest)) is None  # the rotted record freed
    res = _hoard(cfg, "verify", "--sha256")
    assert res.returncode == 0, _said(res)
    problems = json.loads(_hoard(cfg, "health", "--json").stdout)["problems"]
    assert not any("cannot be mended" in p or manifest in p for p in problems), problems


@pytest.mark.expect_log(r"the index stays at format 2 \(batch [\w-]+: its manifest", level="WARNING")
@pytest.mark.expect_log(r"what it shares with batch [\w-]+ is not known; gc frees nothing while it stays "
                        r"registered unread", level="WARNING")
def test_after_an_index_rebuild_one_unreadable_manifest_blocks_no_other_deletion(hoard_home: Path, pg,
                                                                                 redis_conn) -> None:
    """An index rebuilt from the disks with one batch's manifest rotted in every replica stays
    at format 2 (its `held` table cannot be filled); the rebuild and `hoard index migrate` name
    `hoard delete --batch Y`. Another batch's deletion goes through (every one failed); gc frees
    nothing while Y stays registered unread, and names the step; `delete --batch Y --yes` (a
    script's) unregisters it, the migration then succeeds, gc frees what only the deleted
    batches held, and every object the third batch names reads back."""
    cfg, batches = ingest_sample(hoard_home, pg, redis_conn, SPEC)
    items = {b.batch_id: {i.sha256 for i in b.items} for b in batches}
    x, y, z = (b.batch_id for b in batches)
    _rot_manifest(cfg, y)

    res = _hoard(cfg, "index", "rebuild")
    assert res.returncode == 0, _said(res)
    assert f"`hoard delete --batch {y}`" in _said(res), _said(res)
    res = _hoard(cfg, "index", "migrate")
    assert res.returncode == ExitCode.DATA and f"`hoard delete --batch {y}`" in _said(res), _said(res)
    with Store.open(cfg, writable=False) as store:
        assert store.index.format < formats.INDEX_HELD_LONG

    res = _hoard(cfg, "delete", "--batch", x, "--yes")
    assert res.returncode == 0, _said(res)  # old code: exit 5 (it read batch Y's manifest)
    res = _hoard(cfg, "gc", "--threshold", "1.0")
    assert res.returncode == ExitCode.DATA and f"`hoard delete --batch {y}`" in _said(res), _said(res)
    _reads_back(cfg, set().union(*items.values()))  # gc freed nothing: what Y shares with X is not known

    res = _hoard(cfg, "delete", "--batch", y, "--yes")
    assert res.returncode == 0, _said(res)
    res = _hoard(cfg, "index", "migrate")
    assert res.returncode == 0 and "migrated from format" in res.stdout, _said(res)
    res = _hoard(cfg, "gc", "--threshold", "1.0")
    assert res.returncode == 0, _said(res)
    _reads_back(cfg, items[z] | (items[y] - items[x]))  # Y's files stay: nothing it named was tombstoned
    with Store.open(cfg, writable=False) as store:
        gone = items[x] - items[y] - items[z]
        assert gone and all(store.index.lookup(bytes.fromhex(s)) is None for s in gone)
    assert _hoard(cfg, "check", "--json").returncode == 0
