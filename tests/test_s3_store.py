"""A store with two local disks and one S3 disk on each real S3 engine (SeaweedFS; Ceph RGW
where installed; docs/scale-out.md): put, replicate onto the bucket, read back, `hoard verify`,
both local disks lost and rebuilt from the S3 replicas, gc compacting shards on the bucket, `hoard health --json` naming each disk's
backend — then the faults that must not lose an acknowledged object: the engine killed in the
middle of a replication, the bucket deleted."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import s3
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.core.records import DataError
from hoardfs.fsd.io.replicate import replicate_once, replication_lag
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.store import Store
from tests.helpers import REPO, make_files, write_config
from tests.test_cli import hoard
from tests.test_s3_backend import damage, engine_env  # noqa: F401  # (engine_env: a fixture)
from tests.test_store import check_store

# tier: an S3 engine (SeaweedFS; Ceph RGW where installed) and hoard processes
pytestmark = pytest.mark.services


def _config(tmp_path: Path, engine, bucket: str, copies: int, locals_: tuple[str, ...] = ("d0", "d1"),
            weight: int = 1, shard_size_mb: int = 1, write_ack: int | None = None) -> Path:
    """hoard.toml: local directory disks `locals_` and the S3 disk s3a (staging folder on the SSD),
    copy_of_raw = `copies`, s3a's own `copies` = `weight`, write_ack (default: copies, at most 2)."""
    disks = [(label, tmp_path / label, None) for label in locals_]
    for _, p, _ in disks:
        p.mkdir(exist_ok=True)
    path = write_config(tmp_path, disks, shard_size_mb=shard_size_mb, copy_of_raw=copies,
                        write_ack=min(copies, 2) if write_ack is None else write_ack)
    text = path.read_text().replace("\n[ssd]", f'\n[[disks]]\nlabel = "s3a"\nkind = "s3"\nendpoint = "{engine.endpoint}"\n'
                                               f'bucket = "{bucket}"\ncapacity_gb = 2\n'
                                               + (f"copies = {weight}\n" if weight != 1 else "") + "\n[ssd]", 1)
    path.write_text(text)
    return path


def _bucket(engine, name: str) -> str:
    engine.client().create_bucket(Bucket=name)
    return name


def _uuid(store: Store, label: str) -> str:
    return next(u for u, r in store.records.items() if r.label == label)


def _on(store: Store, label: str) -> int:
    uuid = _uuid(store, label)
    return sum(uuid in m.replicas for m in store.index.iter_shards())


def _batch(store: Store, res, name: str) -> None:
    body = json.dumps({"files": [{"path": str(i), "sha256": r.sha256, "size": r.size} for i, r in enumerate(res)]})
    store.register_batch(name, {"source": "t", "manifest": store.put_bytes(body.encode()).sha256, "files": len(res),
                                "bytes": 0})


def test_a_store_with_an_s3_disk(tmp_path: Path, s3_engine, engine_env) -> None:
    """Put, replicate onto the bucket, read back from every replica, verify; lose both local disks
    and rebuild them from the S3 replicas; gc compacts shards on the bucket; health names the
    backend of each disk."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-a")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        assert {r.label: r.state.value for r in store.records.values()} == {"d0": "active", "d1": "active",
                                                                            "s3a": "active"}
        kept = store.put_many(make_files(tmp_path / "keep", 40, seed=1, hi=96 * 1024))
        dropped = store.put_many(make_files(tmp_path / "drop", 40, seed=2, hi=96 * 1024))
        _batch(store, kept, "kept")
        _batch(store, dropped, "dropped")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)  # every shard onto the bucket too
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        shards = sum(1 for _ in store.index.iter_shards())
        assert _on(store, "s3a") == shards > 2
        assert check_store(store) == 82  # every object reads back from every replica, the bucket's too
    keys = [o["Key"] for o in s3_engine.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(k.startswith("shards/") for k in keys) == shards
    assert "batches/kept.json" in keys and any(k.startswith("marks/log/") for k in keys)
    res = hoard("--config", str(cfg_path), "verify")
    assert res.returncode == 0, res.stdout + res.stderr

    for lost in ("d0", "d1"):
        shutil.rmtree(tmp_path / lost)  # both local disks gone: the bucket holds the only replicas
    for new in ("d2", "d3"):
        (tmp_path / new).mkdir()
        res = hoard("--config", str(cfg_path), "disks", "add", str(tmp_path / new), "--label", new)
        assert res.returncode == 0, res.stdout + res.stderr
    for dead, new in (("d0", "d2"), ("d1", "d3")):
        res = hoard("--config", str(cfg_path), "disks", "replace", dead, new)
        assert res.returncode == 0, res.stdout + res.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert _on(store, "d2") == _on(store, "d3") == _on(store, "s3a") == shards
        assert check_store(store) == 82
        before = _on(store, "s3a")
        drop_batch(store, "dropped")
        rep = gc(store, threshold=0.9)
        assert rep.compacted > 0
        assert _on(store, "s3a") < before + rep.compacted  # old shards gone from the bucket, new ones there
        s3a = store.disks[_uuid(store, "s3a")]
        on_bucket = {h for h, _ in s3a.shard_ids()}
        assert on_bucket == {m.hex for m in store.index.iter_shards() if _uuid(store, "s3a") in m.replicas}
        assert check_store(store) == 41
    res = hoard("--config", str(cfg_path), "verify")
    assert res.returncode == 0, res.stdout + res.stderr
    health = hoard("--config", str(cfg_path), "health", "--json")
    report = json.loads(health.stdout)
    backends = {d["label"]: d.get("backend") for d in report["disks"]}
    assert backends["s3a"] == "s3" and backends["d2"] == backends["d3"] == "local", report["disks"]


DIE_BEFORE_SEAL = """
import os, sys
from hoardfs.base import config
from hoardfs.fsd.io.writer import ShardWriter
from hoardfs.fsd.store import Store
ShardWriter.seal = lambda self: os._exit(9)  # killed with the objects committed, the shard open everywhere
store = Store.open(config.load(sys.argv[1]))
store.put_many(sys.argv[2:])
"""


@pytest.mark.expect_log(r"disk s3a: recovery error on shard .*is being sealed with other bytes", level="WARNING")
def test_a_refused_seal_in_recovery_leaves_the_replica_out_and_opens_the_store(tmp_path: Path, s3_engine,
                                                                               engine_env) -> None:
    """The writer dies with a shard open on d0 and s3a; a live seal elsewhere claims the shard
    on the bucket with other bytes. Recovery inside the next Store.open seals the local replica
    and leaves the bucket's out — the refusal is one disk's failed seal, not an error
    of the open (before: the ObjectMismatch escaped recovery and no writable Store.open went
    through). Every acknowledged object reads back; once the claim is gone, replicate puts the
    shard on the bucket."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-claimed")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=2, locals_=("d0",))  # each shard written to d0 and s3a
    with Store.open(config.load(cfg_path), init=True):
        pass
    files = make_files(tmp_path / "in", 12, seed=5, hi=32 * 1024)
    died = subprocess.run([sys.executable, "-c", DIE_BEFORE_SEAL, str(cfg_path), *map(str, files)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    open_shards = sorted(p.name.split(".")[0] for p in (tmp_path / "d0").rglob("*.open"))
    assert len(open_shards) == 1, open_shards
    client = s3_engine.client()
    claim = f"1 {'0' * 64} elsewhere 1 1 0011223344556677"
    client.put_object(Bucket=bucket, Key=s3.CLAIM_PREFIX + open_shards[0], Body=claim.encode())
    with Store.open(config.load(cfg_path)) as store:
        meta = next(store.index.iter_shards())
        assert meta.sealed and [store.records[u].label for u in meta.replicas] == ["d0"]
        assert check_store(store) == len(files)
    client.delete_object(Bucket=bucket, Key=s3.CLAIM_PREFIX + open_shards[0])
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        assert _on(store, "s3a") == 1 and check_store(store) == len(files)


@pytest.mark.expect_log(r"disk s3a: replicate error on shard .*does not answer", level="WARNING")
def test_engine_killed_mid_replication_loses_nothing(tmp_path: Path, s3_engine_own, engine_env,
                                                     monkeypatch) -> None:
    """The engine killed in the middle of a replication (one shard's replica up, the next
    upload starting — tests/test_s3_backend.py kills it between two parts of one): the copy fails
    in one line, no replica on the bucket is named but the one acknowledged, every object still reads from the local replicas; once
    the engine is back, replicate puts every shard on the bucket and verify is clean."""
    engine_env(s3_engine_own)
    bucket = _bucket(s3_engine_own, "hoard-store-b")
    cfg_path = _config(tmp_path, s3_engine_own, bucket, copies=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        store.set_disk_state("s3a", DiskState.DRAINING, "test: nothing placed here")
        res = store.put_many(make_files(tmp_path / "in", 30, seed=3, hi=96 * 1024))
        assert _on(store, "s3a") == 0
        store.set_disk_state("s3a", DiskState.ACTIVE, "")
    real_upload = s3.S3Disk._upload
    uploads = []

    def killed_midway(self, *a, **kw):
        uploads.append(1)
        if len(uploads) == 2:
            s3_engine_own.stop()
        return real_upload(self, *a, **kw)

    monkeypatch.setattr(s3.S3Disk, "_upload", killed_midway)
    cfg_path = _config(tmp_path, s3_engine_own, bucket, copies=3)
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        named = _on(store, "s3a")
        assert named == 1  # the first copy went up before the engine died; nothing after it is named
        assert check_store(store) == len({r.sha256 for r in res})
    monkeypatch.undo()
    s3_engine_own.start()
    engine_env(s3_engine_own)
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        assert _on(store, "s3a") == sum(1 for _ in store.index.iter_shards())
        assert check_store(store) == len({r.sha256 for r in res})
    res_v = hoard("--config", str(cfg_path), "verify")
    assert res_v.returncode == 0, res_v.stdout + res_v.stderr


def test_bucket_deleted_loses_nothing(tmp_path: Path, s3_engine, engine_env) -> None:
    """Every shard on the bucket and on both local disks; the bucket deleted behind the store's
    back: the S3 disk is missing with the line that names the next step, and every object still
    reads from the local replicas."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-c")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 30, seed=4, hi=96 * 1024))
        replicate_once(store, rate_mb_s=None)
        assert _on(store, "s3a") == sum(1 for _ in store.index.iter_shards())
    client = s3_engine.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
    with Store.open(config.load(cfg_path)) as store:
        rec = store.records[_uuid(store, "s3a")]
        assert rec.state.value == "missing"
        assert f"bucket {bucket} does not exist" in rec.reason and "hoard disks forget s3a" in rec.reason
        assert check_store(store) == len({r.sha256 for r in res})
    health = hoard("--config", str(cfg_path), "health", "--json")
    problems = " ".join(json.loads(health.stdout)["problems"])
    assert "disk s3a: missing" in problems and "does not exist" in problems, problems


def test_the_index_is_rebuilt_from_the_bucket_alone(tmp_path: Path, s3_engine, engine_env) -> None:
    """The SSD's index and both local disks lost: `hoard index rebuild` from the S3 disk alone
    (the new disks left out) brings back every object (its shard objects read with ranged GETs), the batch the bucket's
    pointer names and the roots its marks log's segments hold; every object reads back."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-d")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 20, seed=5, hi=96 * 1024), root="hoard put")
        _batch(store, res[:5], "b1")
        replicate_once(store, rate_mb_s=None)
        shards = {m.hex for m in store.index.iter_shards()}
        assert _on(store, "s3a") == len(shards)
        rooted = store.index.count(store.index.rooted)
        assert rooted == len({r.sha256 for r in res})
        index_dir = store.cfg.index_dir
    for lost in ("d0", "d1"):
        shutil.rmtree(tmp_path / lost)
    shutil.rmtree(index_dir)
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=2, locals_=("d2", "d3"))  # new, empty disks
    out = hoard("--config", str(cfg_path), "index", "rebuild", "--without", "d2", "--without", "d3")
    assert out.returncode == 0, out.stdout + out.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert {m.hex for m in store.index.iter_shards()} == shards and _on(store, "s3a") == len(shards)
        assert store.index.count(store.index.rooted) == rooted
        assert [name for name, _ in store.index.iter_batches()] == ["b1"]
        assert check_store(store) == len({r.sha256 for r in res}) + 1  # (+ the batch's manifest)
    res_v = hoard("--config", str(cfg_path), "verify")
    assert res_v.returncode == 0, res_v.stdout + res_v.stderr


def test_a_failed_s3_disk_is_activated_again(tmp_path: Path, s3_engine, engine_env) -> None:
    """`hoard init` gives an empty bucket its identity (its staging folder made on the SSD);
    `hoard disks activate` takes a failed S3 disk back by its bucket's identity (not by its
    staging folder being a mount point) and verifies every replica on the bucket first."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-e")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)
    out = hoard("--config", str(cfg_path), "init")
    assert out.returncode == 0 and f"s3a={s3_engine.endpoint}/{bucket}" in out.stdout, out.stdout + out.stderr
    ident = json.loads(s3_engine.client().get_object(Bucket=bucket, Key=".hoard-disk.json")["Body"].read())
    assert ident["label"] == "s3a"
    assert json.loads((tmp_path / "ssd" / "s3-staging" / "s3a" / ".hoard-disk.json").read_text())["uuid"] == ident["uuid"]
    with Store.open(config.load(cfg_path)) as store:
        store.put_many(make_files(tmp_path / "in", 10, seed=6))
        replicate_once(store, rate_mb_s=None)
        shards = _on(store, "s3a")
        store.set_disk_state("s3a", DiskState.FAILED, "test: failed by hand")
    out = hoard("--config", str(cfg_path), "disks", "activate", "s3a")
    assert out.returncode == 0, out.stdout + out.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert store.records[_uuid(store, "s3a")].state == DiskState.ACTIVE and _on(store, "s3a") == shards


@pytest.mark.expect_log(r"shard \w+ on s3a set aside to hoard-store-f/orphans/", level="WARNING")
def test_orphan_objects_on_the_bucket_are_set_aside_never_lost(tmp_path: Path, s3_engine,
                                                               engine_env) -> None:
    """`hoard verify --orphans` on a bucket: an object under shards/ that no index entry names is
    set aside to orphans/ when every object in it is known, kept and reported when it holds one
    the index does not know (after an index loss it may be the only copy); with --repair what
    was aside longer than the grace is deleted — and every named replica is untouched. A seal's
    claim older than the grace is removed, a younger one kept."""
    import os

    from hoardfs.fsd.maintenance.orphans import sweep
    from tests.test_s3_backend import shard_bytes

    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-f")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)
    client = s3_engine.client()
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 10, seed=7))
        replicate_once(store, rate_mb_s=None)
        named = next(m.hex for m in store.index.iter_shards())
        copy = os.urandom(12).hex()  # a copy of a named shard under a name nothing names
        client.copy_object(Bucket=bucket, Key=f"shards/{copy[-2:]}/{copy}",
                           CopySource={"Bucket": bucket, "Key": f"shards/{named[-2:]}/{named}"})
        sid = os.urandom(12)  # a shard holding an object the index has never seen
        body, footer = shard_bytes([b"only here " + os.urandom(64)], sid)
        client.put_object(Bucket=bucket, Key=f"shards/{sid.hex()[-2:]}/{sid.hex()}", Body=body + footer)
        claim = f"claims/{os.urandom(12).hex()}"  # what a seal that failed leaves (fsd/core/s3.py)
        client.put_object(Bucket=bucket, Key=claim, Body=b"100 " + b"0" * 64)
        sweep(store, grace_s=3600)  # younger than the grace: its seal may be running
        assert claim in {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        rep = sweep(store, grace_s=0)
        assert rep.tmp_removed >= 1 and claim not in {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert rep.found == 2 and len(rep.set_aside) == 1 and f"orphans/{copy}." in rep.set_aside[0], rep
        assert len(rep.unindexed) == 1 and sid.hex() in rep.unindexed[0] and "it is kept" in rep.unindexed[0]
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert f"shards/{sid.hex()[-2:]}/{sid.hex()}" in keys and f"shards/{copy[-2:]}/{copy}" not in keys
        assert check_store(store) == len({r.sha256 for r in res})
        rep = sweep(store, repair=True, grace_s=0)
        assert len(rep.deleted) == 1 and f"orphans/{copy}." in rep.deleted[0] and len(rep.unindexed) == 1
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert not any(k.startswith("orphans/") for k in keys) and f"shards/{sid.hex()[-2:]}/{sid.hex()}" in keys
        assert check_store(store) == len({r.sha256 for r in res})


def test_a_crowded_s3_marks_log_is_compacted_by_the_next_writer(tmp_path: Path, s3_engine, engine_env,
                                                               monkeypatch) -> None:
    """A bucket's marks log of more segments than CROWDED (one per append) is replaced by a
    snapshot at the next writable open, not only by gc: one segment, holding every root."""
    from hoardfs.fsd.core import marks, s3files

    monkeypatch.setattr(s3files, "CROWDED", 3)
    engine_env(s3_engine)
    cfg_path = _config(tmp_path, s3_engine, _bucket(s3_engine, "hoard-store-g"), copies=3)
    with Store.open(config.load(cfg_path), init=True) as store:
        for i in range(5):  # a put per append
            store.put_many(make_files(tmp_path / f"in{i}", 2, seed=10 + i), root="hoard put")
        side = store.disks[_uuid(store, "s3a")].beside
        assert len(side._segments()) > 3
        rooted = sorted(bytes(k) for k in store.index.env.begin().cursor(db=store.index.rooted).iternext(values=False))
    with Store.open(config.load(cfg_path)) as store:
        side = store.disks[_uuid(store, "s3a")].beside
        assert len(side._segments()) == 1
        got = side.marks_read()
        assert got.resets and marks.replay(got.records | {(max(got.resets), marks.RESET, "0" * 64)})["rooted"] == rooted


def test_the_index_is_restored_from_a_copy_in_the_bucket(tmp_path: Path, s3_engine, engine_env) -> None:
    """`hoard index backup` puts its copy on the local disks first, in the bucket when asked for
    more; with the SSD's index and both local disks lost, `hoard index restore` takes the
    bucket's copy and brings it up to date from the bucket: every object and root is back."""
    from hoardfs.fsd.maintenance.reindex import backup_index

    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-h")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 12, seed=8), root="hoard put")
        replicate_once(store, rate_mb_s=None)
        assert sorted(backup_index(store, copies=2)) == ["d0", "d1"]  # local disks first
        assert sorted(backup_index(store, copies=3)) == ["d0", "d1", "s3a"]
        index_dir = store.cfg.index_dir
    keys = [o["Key"] for o in s3_engine.client().list_objects_v2(Bucket=bucket, Prefix="index-copy/")["Contents"]]
    assert any(k.endswith("/stamp.json") for k in keys) and any(k.endswith("/data.mdb") for k in keys)
    for lost in ("d0", "d1"):
        shutil.rmtree(tmp_path / lost)
    shutil.rmtree(index_dir)
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=2, locals_=("d2", "d3"))
    out = hoard("--config", str(cfg_path), "index", "restore", "--without", "d2", "--without", "d3")
    assert out.returncode == 0 and "from disk s3a" in out.stdout, out.stdout + out.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert check_store(store) == len({r.sha256 for r in res})
        assert store.index.count(store.index.rooted) == len({r.sha256 for r in res})


def test_an_s3_disk_is_added_with_hoard_disks_add(tmp_path: Path, s3_engine, engine_env) -> None:
    """`hoard disks add s3://BUCKET --endpoint URL --capacity-gb N`: checked before hoard.toml is
    touched — the flags it needs, the engine answering, the bucket there and no disk's yet —
    then the bucket given its identity, the table appended, the disk active and replicated
    onto; each refusal one line that leaves hoard.toml as it was."""
    engine_env(s3_engine)
    disks = [(label, tmp_path / label, None) for label in ("d0", "d1")]
    for _, p, _ in disks:
        p.mkdir()
    cfg_path = write_config(tmp_path, disks, shard_size_mb=1, copy_of_raw=2, copy_of_generated=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 20, seed=11, hi=64 * 1024))
    before = cfg_path.read_text()
    bucket = _bucket(s3_engine, "hoard-added")
    args = ("--config", str(cfg_path), "disks", "add", f"s3://{bucket}", "--label", "s3x")
    for extra, said in (((), "an S3 disk needs --endpoint URL"),
                        (("--endpoint", s3_engine.endpoint), "an S3 disk needs --capacity-gb N"),
                        (("--endpoint", "ftp://x", "--capacity-gb", "2"), "is not an engine's S3 URL"),
                        (("--endpoint", "http://127.0.0.1:9", "--capacity-gb", "2", "--timeout-s", "2"),
                         "does not answer"),
                        (("--endpoint", s3_engine.endpoint, "--capacity-gb", "2"), None)):
        if said is None:  # the bucket missing: its own line
            args = ("--config", str(cfg_path), "disks", "add", "s3://no-such-bucket", "--label", "s3x")
            said = "bucket no-such-bucket does not exist at"
        done = hoard(*args, *extra)
        assert done.returncode != 0 and said in done.stderr, (extra, done.stdout + done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert cfg_path.read_text() == before
    ok = hoard("--config", str(cfg_path), "disks", "add", f"s3://{bucket}", "--label", "s3x", "--endpoint",
               s3_engine.endpoint, "--capacity-gb", "2", "--timeout-s", "30", "--copies", "2")
    assert ok.returncode == 0 and "disk s3x added: bucket hoard-added at" in ok.stdout, ok.stdout + ok.stderr
    table = config.load(cfg_path).disks[-1]
    assert (table.kind, table.bucket, table.capacity_gb, table.timeout_s, table.copies) == ("s3", bucket, 2, 30, 2)
    again = hoard("--config", str(cfg_path), "disks", "add", f"s3://{bucket}", "--label", "s3y", "--endpoint",
                  s3_engine.endpoint, "--capacity-gb", "2")
    assert again.returncode != 0 and "already a disk in" in again.stderr, again.stderr
    text = cfg_path.read_text().replace("copy_of_raw = 2", "copy_of_raw = 3").replace("copy_of_generated = 2",
                                                                                      "copy_of_generated = 3")
    assert text != cfg_path.read_text()
    cfg_path.write_text(text)
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        assert _on(store, "s3x") == sum(1 for _ in store.index.iter_shards()) > 0
        assert check_store(store) == len({r.sha256 for r in res})
    health = json.loads(hoard("--config", str(cfg_path), "health", "--json").stdout)
    s3x = next(d for d in health["disks"] if d["label"] == "s3x")
    assert (s3x["state"], s3x["backend"]) == ("active", "s3"), s3x


def test_an_engine_s_own_copies_count_toward_the_target_and_never_let_a_copy_go(tmp_path: Path, s3_engine,
                                                                                 engine_env) -> None:
    """s3a keeps 2 copies of its own (`copies = 2`), copy_of_raw = 3: shards written on the two
    local disks get the bucket as their third replica; with a local disk lost, a local disk and
    the bucket are still 3 copies, so its rebuild needs no new disk (without the weights it was
    refused: no disk left to copy to). Replicate, check, health and `hoard info` count the same
    copies; and the bucket's copies are never given up for less — retired, its shards are short,
    `disks forget` refuses it, and every object still reads."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-store-w")
    cfg_path = _config(tmp_path, s3_engine, bucket, copies=3, weight=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        # written on the local disks alone: placement picks the bucket now and then (its 2 GB
        # against the local file system's free space), and a shard on d0 + s3a has its 3 copies
        store.set_disk_state("s3a", DiskState.DRAINING, "test: nothing placed here")
        res = store.put_many(make_files(tmp_path / "in", 60, seed=5, hi=96 * 1024))
        _batch(store, res, "b")
        store.set_disk_state("s3a", DiskState.ACTIVE, "")
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)
        s3a = _uuid(store, "s3a")
        shards = [m for m in store.index.iter_shards() if m.sealed]
        assert shards and all(s3a in m.replicas for m in shards)  # only the bucket could give a third copy
        assert all(store.copies_of(m) == 4 for m in shards)
    shutil.rmtree(tmp_path / "d1")  # a local disk lost: d0 and the bucket are 3 copies
    rebuilt = hoard("--config", str(cfg_path), "rebuild", "--disk", "d1")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert all(len(m.replicas) == 2 and store.copies_of(m) == 3 for m in store.index.iter_shards() if m.sealed)
        assert replication_lag(store)["shards_below_target"] == 0
        assert check_store(store) == 61
    info = json.loads(hoard("--config", str(cfg_path), "info", res[0].sha256, "--json").stdout)
    assert info["copies"] >= info["target"] == 3, info
    health = json.loads(hoard("--config", str(cfg_path), "health", "--json").stdout)
    said = health["problems"] + health.get("warnings", [])
    assert not [p for p in said if "replica target" in p or "cannot reach copy_of_raw" in p], said
    checked = hoard("--config", str(cfg_path), "check")
    assert checked.returncode == 0 and "below their replica target" not in checked.stdout + checked.stderr, \
        checked.stdout + checked.stderr

    res_retire = hoard("--config", str(cfg_path), "disks", "retire", "s3a")
    assert res_retire.returncode == 0, res_retire.stdout + res_retire.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert replication_lag(store)["shards_below_target"] == len(shards)  # draining: its copies count no more
    forget = hoard("--config", str(cfg_path), "disks", "forget", "s3a")
    assert forget.returncode == 5 and "still need its replica" in forget.stderr, forget.stdout + forget.stderr
    with Store.open(config.load(cfg_path)) as store:
        assert all(s3a in m.replicas for m in store.index.iter_shards() if m.sealed)
        assert check_store(store) == 61


def test_a_batch_read_off_a_bucket_keeps_several_ranged_gets_in_flight(tmp_path: Path, seaweedfs,
                                                                        engine_env, monkeypatch) -> None:
    """The planner reads an S3 disk with READ_STREAMS ranged GETs in flight (one at a time left
    the engine idle between requests: docs/benchmarks.md), its ranges no longer than
    `range_limit` (shorter than a local disk's MAX_RANGE); a large object comes off one streamed GET
    (S3Disk.stream_at, test_s3_faults) — every object arrives whole and checked, by the planner
    and by `copy_object_to`."""
    from hoardfs.fsd.io.planner import MAX_RANGE, range_limit

    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-store-streams")
    path = _config(tmp_path, seaweedfs, bucket, copies=2, locals_=(), weight=2, shard_size_mb=1, write_ack=1)
    files = make_files(tmp_path / "in", 150, seed=5, hi=96 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(5).randbytes(MAX_RANGE + (9 << 20)))  # past MAX_RANGE: streamed in pieces
    together = threading.Barrier(2, timeout=20)  # the first two GETs of each read run at once, or it breaks
    gets = []
    real_get = s3.S3Disk._get

    def get(self, key, offset, length, what):
        gets.append(key)
        if len(gets) in (1, 2):
            together.wait()
        return real_get(self, key, offset, length, what)

    with Store.open(config.load(path), init=True) as store:
        res = store.put_many([*files, big])
        want = {bytes.fromhex(r.sha256): p.read_bytes() for r, p in zip(res, [*files, big], strict=True)}
        monkeypatch.setattr(s3.S3Disk, "_get", get)
        got: dict[bytes, bytes] = {}
        lock = threading.Lock()

        def sink(sha: bytes, data) -> None:
            with lock:
                got[sha] = bytes(data)

        def large_sink(sha: bytes, pieces) -> None:
            data = b"".join(bytes(p) for p in pieces)
            with lock:
                got[sha] = data

        plan, stats = store.read_batch([r.sha256 for r in res], sink, large_sink)
        assert got == want and stats.fallbacks == 0
        ranges = next(iter(plan.ranges.values()))
        assert len(ranges) > s3.READ_STREAMS  # more reads than streams: the window moved along
        assert all(r.end - r.start <= range_limit(s3.READ_STREAMS) < MAX_RANGE for r in ranges)
        gets.clear()
        together.reset()
        out = io.BytesIO()
        assert store.copy_object_to(bytes.fromhex(res[-1].sha256), out) == big.stat().st_size
        assert out.getvalue() == want[bytes.fromhex(res[-1].sha256)]


@pytest.mark.expect_log(r"disk s3a: read error on shard [0-9a-f]+: payload checksum mismatch", level="WARNING")
def test_a_damaged_record_on_the_bucket_fails_the_batch_read(tmp_path: Path, seaweedfs,
                                                            engine_env) -> None:
    """One flipped byte in a record's payload on the bucket (the object's only disk) fails the
    batch read and a get of that object, naming it; no sink is handed the damaged bytes and
    every other object arrives whole — the record checks stand whatever client sends the GETs
    (presigned URLs with urllib3: `S3Disk._get`)."""
    engine_env(seaweedfs)
    bucket = _bucket(seaweedfs, "hoard-store-damage")
    path = _config(tmp_path, seaweedfs, bucket, copies=2, locals_=(), weight=2, shard_size_mb=64, write_ack=1)
    files = make_files(tmp_path / "in", 40, seed=9, lo=4096, hi=64 * 1024)
    with Store.open(config.load(path), init=True) as store:
        res = store.put_many(files)
        replicate_once(store, rate_mb_s=None)  # (the open shard sealed: an object on the bucket)
        want = {bytes.fromhex(r.sha256): p.read_bytes() for r, p in zip(res, files, strict=True)}
        bad = bytes.fromhex(res[len(res) // 2].sha256)
        loc = store.index.lookup(bad)
        meta = store.index.get_shard(loc.shard_id)
        assert meta.sealed
        disk = next(d for d in store.disks.values() if d.label == "s3a")
        damage(disk, meta.hex, loc.offset + loc.length // 2)
        got: dict[bytes, bytes] = {}
        lock = threading.Lock()

        def sink(sha: bytes, data) -> None:
            with lock:
                got[sha] = bytes(data)

        with pytest.raises(DataError, match=f"object {bad.hex()}: no good replica"):
            store.read_batch([r.sha256 for r in res], sink)
        assert bad not in got and all(want[sha] == data for sha, data in got.items())
        with pytest.raises(DataError, match="no good replica"):
            store.get(bad.hex())
