"""An S3 disk on each real S3 engine (SeaweedFS; Ceph RGW where installed) behind a real proxy
that answers 5xx or answers slowly (tests/s3fault.py): a 5xx now and then is retried and never seen; an engine that keeps failing
or keeps everyone waiting is one line naming the disk and the next step — from a replication, a
put, `hoard health` — and loses nothing acknowledged: every object still reads from the local
replicas, and once the engine answers again replication puts every shard on the bucket."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.store import Store
from tests.helpers import make_files
from tests.s3fault import FaultProxy
from tests.test_cli import hoard
from tests.test_s3_backend import engine_env  # noqa: F401  # (a fixture)
from tests.test_s3_store import _bucket, _config, _on
from tests.test_store import check_store

# tier: an S3 engine (SeaweedFS; Ceph RGW where installed) and hoard processes
pytestmark = pytest.mark.services


def _behind(cfg_path: Path, proxy: FaultProxy, engine, timeout_s: float | None = None) -> Path:
    """hoard.toml with the S3 disk reached through `proxy` (and its `timeout_s`)."""
    text = cfg_path.read_text().replace(f'endpoint = "{engine.endpoint}"', f'endpoint = "{proxy.endpoint}"')
    if timeout_s is not None:
        text = text.replace('kind = "s3"\n', f'kind = "s3"\ntimeout_s = {timeout_s}\n', 1)
    cfg_path.write_text(text)
    return cfg_path


def _store(tmp_path: Path, engine, proxy: FaultProxy, bucket: str, copies: int,
           timeout_s: float | None = None) -> Path:
    return _behind(_config(tmp_path, engine, bucket, copies=copies), proxy, engine, timeout_s)


def _shards(store: Store) -> int:
    return sum(1 for _ in store.index.iter_shards())


def _local_first(tmp_path: Path, engine, proxy: FaultProxy, name: str, seed: int) -> tuple[Path, list]:
    """30 objects stored on the local disks alone (the S3 disk draining meanwhile), then the
    config asking for a third copy — on the bucket, behind `proxy`."""
    bucket = _bucket(engine, name)
    cfg_path = _store(tmp_path, engine, proxy, bucket, copies=2)
    with Store.open(config.load(cfg_path), init=True) as store:
        store.set_disk_state("s3a", DiskState.DRAINING, "test: nothing placed here")
        res = store.put_many(make_files(tmp_path / f"in{seed}", 30, seed=seed, hi=96 * 1024))
        store.set_disk_state("s3a", DiskState.ACTIVE, "")
    return _store(tmp_path, engine, proxy, bucket, copies=3), res


def test_a_5xx_now_and_then_is_retried_and_never_seen(tmp_path: Path, s3_engine, engine_env) -> None:
    """Every upload of a replication meets one 503 first: each is tried again and lands, and
    the bucket's replicas read back and verify."""
    engine_env(s3_engine)
    with FaultProxy(s3_engine.endpoint) as proxy:
        cfg_path, res = _local_first(tmp_path, s3_engine, proxy, "hoard-fault-a", seed=5)
        proxy.flaky()
        with Store.open(config.load(cfg_path)) as store:
            replicate_once(store, rate_mb_s=None)
            assert _on(store, "s3a") == _shards(store) > 1
        proxy.flaky(False)
        assert proxy.faults > _shards_of(cfg_path)  # a 503 met by every upload, and by the requests beside them
        with Store.open(config.load(cfg_path)) as store:
            assert check_store(store) == len({r.sha256 for r in res})
        done = hoard("--config", str(cfg_path), "verify")
        assert done.returncode == 0, done.stdout + done.stderr


def _shards_of(cfg_path: Path) -> int:
    with Store.open(config.load(cfg_path)) as store:
        return _shards(store)


@pytest.mark.expect_log(r"disk s3a: replicate error on shard .*failed \(503 SlowDown\)", level="WARNING")
@pytest.mark.expect_log(r"replication of shard .* postponed: .*s3a missing \(disk s3a: .*failed \(503 SlowDown\)",
                        level="WARNING")
def test_an_engine_that_keeps_failing_is_one_line_and_loses_nothing(tmp_path: Path, s3_engine,
                                                                    engine_env) -> None:
    """An engine that answers 503 to everything: the replication names the disk, the status and
    the next step for each shard it could not copy and names no replica on the bucket; a put
    goes to the local disks; `hoard health` says the disk is missing and why; every object
    reads back; once the engine answers, replication puts every shard on the bucket and verify
    is clean."""
    engine_env(s3_engine)
    with FaultProxy(s3_engine.endpoint) as proxy:
        cfg_path, first = _local_first(tmp_path, s3_engine, proxy, "hoard-fault-b", seed=6)
        with Store.open(config.load(cfg_path)) as store:
            proxy.fail(10**9)  # from here on: 503 to every request
            replicate_once(store, rate_mb_s=None)
            assert _on(store, "s3a") == 0
            assert check_store(store) == len({r.sha256 for r in first})
        health = hoard("--config", str(cfg_path), "health", "--json")
        disks = {d["label"]: d for d in json.loads(health.stdout)["disks"]}
        assert disks["s3a"]["state"] == "missing", disks["s3a"]
        said = json.dumps(disks["s3a"])
        assert "failed (503 SlowDown)" in said and "try again" in said, said
        src = tmp_path / "b"
        make_files(src, 5, seed=7, hi=8 * 1024)
        put = hoard("--config", str(cfg_path), "put", str(src))
        assert put.returncode == 0, put.stdout + put.stderr  # two local copies: acknowledged, durable
        assert "Traceback" not in put.stderr
        proxy.fail(0)
        with Store.open(config.load(cfg_path)) as store:
            assert store.records[next(u for u, r in store.records.items() if r.label == "s3a")].state \
                == DiskState.ACTIVE
            replicate_once(store, rate_mb_s=None)
            assert _on(store, "s3a") == _shards(store)
            assert check_store(store) == len({r.sha256 for r in first}) + 5
    done = hoard("--config", str(cfg_path), "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_slow_engine_is_one_line_within_its_timeout(tmp_path: Path, s3_engine, engine_env) -> None:
    """An engine that answers slower than the disk's `timeout_s`: `hoard health` and `hoard
    verify` end (no hang) and name the disk as not answering, with the key to raise; an engine
    slow within it is only slow — the same commands succeed."""
    engine_env(s3_engine)
    with FaultProxy(s3_engine.endpoint) as proxy:
        bucket = _bucket(s3_engine, "hoard-fault-c")
        cfg_path = _store(tmp_path, s3_engine, proxy, bucket, copies=3, timeout_s=1)
        with Store.open(config.load(cfg_path), init=True) as store:
            res = store.put_many(make_files(tmp_path / "in", 10, seed=8, hi=32 * 1024))
            replicate_once(store, rate_mb_s=None)  # (the open shard sealed, and copied to the bucket)
            assert _on(store, "s3a") == _shards(store)
        proxy.delay(3.0)  # each request: 3 s before an answer, the disk waits 1 s
        health = hoard("--config", str(cfg_path), "health", "--json")
        disks = {d["label"]: d for d in json.loads(health.stdout)["disks"]}
        said = json.dumps(disks["s3a"])
        assert disks["s3a"]["state"] == "missing" and "does not answer" in said and "timeout_s" in said, said
        verify = hoard("--config", str(cfg_path), "verify")
        assert "Traceback" not in verify.stderr
        assert verify.returncode == 0, verify.stdout + verify.stderr  # the local replicas are good
        assert "not verified: 1 replica(s) on disk s3a, which is missing: " in verify.stderr, verify.stderr
        assert "does not answer within its timeout_s = 1 s" in verify.stderr, verify.stderr
        proxy.delay(0.2)  # slow, within the timeout
        health = hoard("--config", str(cfg_path), "health", "--json")
        disks = {d["label"]: d for d in json.loads(health.stdout)["disks"]}
        assert disks["s3a"]["state"] == "active", disks["s3a"]
        with Store.open(config.load(cfg_path)) as store:
            assert check_store(store) == len({r.sha256 for r in res})


def _large_on_the_bucket(tmp_path: Path, engine, bucket: str, proxy: FaultProxy, locals_: tuple[str, ...],
                         mib: int = 40) -> tuple[Path, Path]:
    """hoard.toml with the S3 disk behind `proxy`, and one object of `mib` MiB stored and sealed
    on the bucket — its only copy (the bucket's `copies` 2) without `locals_`, else one on the
    bucket and one on a local disk."""
    path = _behind(_config(tmp_path, engine, bucket, copies=2, locals_=locals_, weight=1 if locals_ else 2,
                           shard_size_mb=1, write_ack=1), proxy, engine)
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(mib).randbytes(mib << 20))
    with Store.open(config.load(path), init=True) as store:
        store.put_many([big])
        replicate_once(store, rate_mb_s=None)  # (sealed: an object on the bucket; its other copies made)
    return path, big


def test_a_large_objects_stream_that_breaks_off_costs_a_few_gets_not_the_read(tmp_path: Path, s3_engine,
                                                                             engine_env) -> None:
    """A large object on the bucket comes off ONE ranged GET (S3Disk.stream_at), checked piece
    by piece as it arrives. The engine breaking that body off part way (the proxy cuts it after
    12 MiB) is not a bad replica: the pieces already checked stand, the rest is read piece by
    piece — `copy_object_to` (what `hoard get` runs) hands over every byte, nothing is queued
    for repair, and the bucket's only copy is still the store's (before, each 8 MiB piece was a
    GET of its own: 5 for this object)."""
    engine_env(s3_engine)
    bucket = _bucket(s3_engine, "hoard-fault-cut")
    with FaultProxy(s3_engine.endpoint) as proxy:
        path, big = _large_on_the_bucket(tmp_path, s3_engine, bucket, proxy, locals_=())
        want = big.read_bytes()
        sha = bytes.fromhex(hashlib.sha256(want).hexdigest())
        with Store.open(config.load(path)) as store:
            before = proxy.requests
            out = io.BytesIO()
            assert store.copy_object_to(sha, out) == len(want) and out.getvalue() == want
            assert proxy.requests - before == 1  # one GET for 40 MiB
            proxy.cut(12 << 20)
            before = proxy.requests
            out = io.BytesIO()
            assert store.copy_object_to(sha, out) == len(want) and out.getvalue() == want
            assert proxy.cuts == 1 and proxy.requests - before == 1 + 4  # the stream, then 8 MiB pieces from byte 8 Mi
            assert list(store.index.pending_repairs()) == []
        done = hoard("--config", str(path), "get", sha.hex(), "-o", str(tmp_path / "back.bin"))
        assert done.returncode == 0 and (tmp_path / "back.bin").read_bytes() == want, done.stderr


#: the log line of the damaged piece the tests below plant
PIECE_17 = pytest.mark.expect_log(r"disk s3a: read error on shard [0-9a-f]+: piece 17 of [0-9a-f]{12}… does not "
                                  r"match its chunk map", level="WARNING")


@contextlib.contextmanager
def _damaged_17_mib_in(tmp_path: Path, engine, name: str) -> Iterator[tuple]:
    """A 40 MiB object with one copy on the bucket (behind a proxy) and one on the local disk d0,
    one byte of the bucket's copy flipped 17 MiB in: (store, proxy, sha, the bytes, shard, s3a, d0)."""
    from tests.test_s3_backend import damage

    bucket = _bucket(engine, name)
    with FaultProxy(engine.endpoint) as proxy:
        path, big = _large_on_the_bucket(tmp_path, engine, bucket, proxy, locals_=("d0",))
        want = big.read_bytes()
        sha = bytes.fromhex(hashlib.sha256(want).hexdigest())
        with Store.open(config.load(path)) as store:
            loc = store.index.lookup(sha)
            meta = store.index.get_shard(loc.shard_id)
            s3a, d0 = (next(d for d in store.disks.values() if d.label == label) for label in ("s3a", "d0"))
            assert sorted(meta.replicas) == sorted([s3a.uuid, d0.uuid])
            damage(s3a, meta.hex, loc.offset + (17 << 20))
            yield store, proxy, sha, want, meta, s3a, d0


@PIECE_17
def test_a_damaged_piece_in_a_large_objects_stream_is_read_from_another_replica(tmp_path: Path, s3_engine,
                                                                               engine_env) -> None:
    """One flipped byte in the bucket's copy of a large object, 17 MiB in: the stream's third
    piece does not match the object's chunk map, so no reader is handed it — the pieces before
    it stand, that piece and the rest come from the local replica, and the bucket's copy is
    reported and queued for repair, as any bad read's."""
    engine_env(s3_engine)
    with _damaged_17_mib_in(tmp_path, s3_engine, "hoard-fault-flip") as (store, _, sha, want, meta, s3a, _):
        assert b"".join(store.iter_object(sha, first=s3a.uuid)) == want
        assert [r[:2] for r in store.index.pending_repairs()] == [(meta.shard_id, s3a.uuid)]


@PIECE_17
def test_a_damaged_piece_the_stream_found_is_reported_though_the_replicas_order_changed(
        tmp_path: Path, s3_engine, engine_env) -> None:
    """The stream off the bucket's copy (the first replica when the read began) meets a damaged
    piece 17 MiB in and stops there; that piece is read again from the same replica first, so
    the bucket's copy is reported and queued for repair — even when the replicas' order changed
    meanwhile (the writes in flight on each disk order them: Store.queue_changed, as a writer
    calls it) and the local replica now comes first. Else the damage the stream saw is
    forgotten: the reader gets good bytes, the store believes in a copy it does not have."""
    engine_env(s3_engine)
    with _damaged_17_mib_in(tmp_path, s3_engine, "hoard-fault-order") as (store, proxy, sha, want, meta, s3a, d0):
        store.queue_changed([d0], +1)  # a write in flight on d0: the read begins on the bucket
        before = proxy.requests
        pieces = store.iter_object(sha)  # (what `hoard get` reads: no disk asked for first)
        got = [next(pieces)]
        assert proxy.requests - before == 1  # (the stream off the bucket)
        store.queue_changed([d0], -1)  # that write ended, one on the bucket began
        store.queue_changed([s3a], +1)
        got += list(pieces)
        assert b"".join(got) == want
        assert [r[:2] for r in store.index.pending_repairs()] == [(meta.shard_id, s3a.uuid)]
