"""Recovery beside an S3 disk on a real SeaweedFS engine: the SSD lost (index and the S3 disk's
staging folder with it) and rebuilt by the documented procedure; a bucket that does not exist
named with its step; an S3 replica as a source of a copy assembled record by record. Each test
fails on the old code; every object reads back byte for byte from every replica after each
repair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import ExitCode
from hoardfs.fsd.core.disks import IDENTITY
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.maintenance.health import store_status
from hoardfs.fsd.store import Store
from tests.helpers import make_files
from tests.test_cli import hoard
from tests.test_s3_backend import damage, engine_env  # noqa: F401  # (engine_env: a fixture)
from tests.test_s3_store import _batch, _bucket, _config, _on, _uuid
from tests.test_store import check_store

# tier: an S3 engine (SeaweedFS) and hoard processes
pytestmark = pytest.mark.services


def _said(res) -> str:
    return " ".join((res.stdout + res.stderr).split())


def _every_replica_reads_every_object(store: Store, paths: list[Path], shas: list[str]) -> None:
    """Each object read back byte for byte from each of its replicas (the bucket's with ranged GETs)."""
    for p, sha in zip(paths, shas, strict=True):
        loc = store.index.lookup(bytes.fromhex(sha))
        meta = store.index.get_shard(loc.shard_id)
        for u in meta.replicas:
            got = store._read_record(store.disks[u], meta.hex, loc.offset, loc.length, bytes.fromhex(sha))
            assert got == p.read_bytes(), (sha, store.records[u].label)


def _filled(tmp_path: Path, engine, bucket: str) -> tuple[Path, list[Path], list[str]]:
    """Two local disks and the S3 disk, every shard on all three, a batch registered."""
    cfg_path = _config(tmp_path, engine, bucket, copies=3)
    paths = make_files(tmp_path / "in", 24, seed=63, hi=64 * 1024)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(paths)
        _batch(store, res[:6], "b1")
        replicate_once(store, rate_mb_s=None)
        assert _on(store, "s3a") == sum(1 for _ in store.index.iter_shards())
    return cfg_path, paths, [r.sha256 for r in res]


@pytest.mark.expect_log(r"marks logs not rewritten after the rebuild: disk s3a: bucket [\w-]+ at \S+ holds shards, "
                        r"but the index .* does not know this disk", level="WARNING")
def test_the_ssd_lost_beside_an_s3_disk_is_rebuilt_as_documented(tmp_path: Path, seaweedfs, engine_env) -> None:
    """docs/operations.md "The SSD dies": a new, empty SSD, then `hoard index rebuild`. The S3
    disk's staging folder lived on the SSD: the rebuild refused the bucket as a disk that does
    not read and advised `--without s3a`, whose index every command then refused (the bucket
    holds shards it does not know). It now makes the folder again (with the disk's identity)
    and reads the bucket; every object reads back from every replica, the bucket's included.
    Leaving the healthy bucket out is said to leave a store every command refuses, and no
    message advises leaving out a bucket that answers."""
    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-ssd-lost")
    cfg_path, paths, shas = _filled(tmp_path, seaweedfs, bucket)
    staging = tmp_path / "ssd" / "s3-staging" / "s3a"
    uuid = json.loads((staging / IDENTITY).read_text())["uuid"]
    shutil.rmtree(tmp_path / "ssd")
    (tmp_path / "ssd").mkdir()  # the new SSD, mounted at ssd.root

    out = hoard("--config", str(cfg_path), "index", "rebuild")
    assert out.returncode == 0, _said(out)  # old code: exit 3, "`hoard index rebuild --without s3a`"
    assert "--without" not in _said(out)
    assert json.loads((staging / IDENTITY).read_text())["uuid"] == uuid

    out = hoard("--config", str(cfg_path), "index", "rebuild", "--without", "s3a")  # (a healthy bucket left out)
    assert out.returncode == 0, _said(out)
    assert "its bucket answers and holds shards" in _said(out) and "without --without s3a" in _said(out), _said(out)
    out = hoard("--config", str(cfg_path), "index", "rebuild")  # (what that line says)
    assert out.returncode == 0, _said(out)
    with Store.open(config.load(cfg_path)) as store:
        assert store.records[_uuid(store, "s3a")].state.value == "active"
        assert [name for name, _ in store.index.iter_batches()] == ["b1"]
        assert check_store(store) == len(set(shas)) + 1  # (+ the batch's manifest)
        _every_replica_reads_every_object(store, paths, shas)
    for cmd in (("check", "--no-database"), ("verify",)):
        out = hoard("--config", str(cfg_path), *cmd)
        assert out.returncode == 0, _said(out)


def test_a_staging_folder_that_does_not_read_never_leaves_a_healthy_bucket_out(tmp_path: Path, seaweedfs,
                                                                               engine_env) -> None:
    """The S3 disk's staging folder stops the rebuild (its tmp/ is a file, so the marks log
    cannot be read through it) while its bucket answers: the refusal names the staging folder
    and `hoard index rebuild` again — not `--without s3a` (old code), which would leave every
    shard on the bucket out of the index; nothing changed, and once the folder is fixed the
    rebuild goes through."""
    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-staging-bad")
    cfg_path, paths, shas = _filled(tmp_path, seaweedfs, bucket)
    tmp = tmp_path / "ssd" / "s3-staging" / "s3a" / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.write_text("not a folder")
    out = hoard("--config", str(cfg_path), "index", "rebuild")
    assert out.returncode == ExitCode.UNAVAILABLE, _said(out)
    assert "staging folder" in _said(out) and "though its bucket answers" in _said(out), _said(out)
    assert "--without" not in _said(out), _said(out)  # old code: "`hoard index rebuild --without s3a`"
    tmp.unlink()
    out = hoard("--config", str(cfg_path), "index", "rebuild")
    assert out.returncode == 0, _said(out)
    with Store.open(config.load(cfg_path), writable=False) as store:
        _every_replica_reads_every_object(store, paths, shas)


def test_a_bucket_that_does_not_exist_is_named_with_its_step(tmp_path: Path, seaweedfs, engine_env) -> None:
    """An S3 disk whose bucket was never made: `hoard init` exited 0 without a word and `hoard
    health` said "mount it at http://…". init now exits 3 naming the bucket and the step (make
    it with the engine's tools, then `hoard init`), health says the same and never "mount it";
    once the bucket exists, `hoard init` gives it its identity and the disk is active."""
    engine_env(seaweedfs)
    cfg_path = _config(tmp_path, seaweedfs, "hoard-not-made-yet", copies=2)
    out = hoard("--config", str(cfg_path), "init")
    said = _said(out)
    assert out.returncode == ExitCode.UNAVAILABLE, said  # old code: 0
    assert "disk s3a is not initialised: bucket hoard-not-made-yet does not exist" in said, said
    assert "create it with the engine's tools" in said and "`hoard init`" in said, said
    problems = json.loads(hoard("--config", str(cfg_path), "health", "--json").stdout)["problems"]
    [line] = [p for p in problems if p.startswith("disk s3a:")]
    assert "bucket hoard-not-made-yet does not exist" in line and "create it" in line, line
    assert "mount it" not in line, line
    _bucket(seaweedfs, "hoard-not-made-yet")
    out = hoard("--config", str(cfg_path), "init")
    assert out.returncode == 0, _said(out)
    with Store.open(config.load(cfg_path), writable=False) as store:
        assert store.records[_uuid(store, "s3a")].state.value == "active"


@pytest.mark.expect_log(r"disk (d\d|s3a): (verify|read|repair) error on shard \w+", level="WARNING")
@pytest.mark.expect_log(r"repair of shard \w+ on \w+ from \w+ failed", level="WARNING", optional=True)
def test_records_are_taken_from_an_s3_replica_to_assemble_a_copy(tmp_path: Path, seaweedfs, engine_env) -> None:
    """Both local replicas rotted at the same record, whole on the bucket, whose object rotted at
    another record: no replica is whole, and assembly left the S3 replica out, so `hoard verify
    --repair` could mend nothing ("no replica holds every record whole"). The bucket's record
    now goes into the copy (ranged GETs, checked by its sha256): every replica is mended, the
    bucket's from the assembled copy, and every object reads back from each."""
    from hoardfs.fsd.io.scrub import verify

    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-assemble-s3")
    cfg_path, paths, shas = _filled(tmp_path, seaweedfs, bucket)
    with Store.open(config.load(cfg_path)) as store:
        locs = [store.index.lookup(bytes.fromhex(s)) for s in shas]
        sid = locs[3].shard_id
        other = next(i for i, loc in enumerate(locs) if loc.shard_id == sid and i != 3 and shas[i] != shas[3])
        meta = store.index.get_shard(sid)
        for u in meta.replicas:
            label = store.records[u].label
            at = locs[other if label == "s3a" else 3].offset + 9
            damage(store.disks[u], meta.hex, at)
        rep = verify(store, repair=True)
        assert len(rep.bad) == 3 and not rep.unrepaired, rep  # old code: 3 unrepaired
        assert verify(store, sha256=True).bad == []
        _every_replica_reads_every_object(store, paths, shas)


def test_a_lost_staging_folder_is_named_with_the_step_that_makes_it_again(tmp_path: Path, seaweedfs,
                                                                          engine_env) -> None:
    """The S3 disk's staging folder removed (the index kept): `hoard health` shows the disk
    missing and said "mount it again at http://…"; it now says what brings it back — a writing
    command such as `hoard init` makes the folder again — and following it works."""
    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-staging-lost")
    cfg_path, paths, shas = _filled(tmp_path, seaweedfs, bucket)
    shutil.rmtree(tmp_path / "ssd" / "s3-staging" / "s3a")
    status = store_status(config.load(cfg_path))  # (what `hoard health` shows of each disk)
    [card] = [d for d in status["disks"] if d["label"] == "s3a"]
    assert card["state"] == "missing" and "mount it" not in card["next_step"], card  # old code: "mount it again at http://…"
    assert "`hoard init` makes a lost staging folder again" in card["next_step"], card
    out = hoard("--config", str(cfg_path), "init")
    assert out.returncode == 0, _said(out)
    with Store.open(config.load(cfg_path), writable=False) as store:
        assert store.records[_uuid(store, "s3a")].state.value == "active"
        _every_replica_reads_every_object(store, paths, shas)
