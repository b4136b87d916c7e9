"""Train from the store (hoardfs.loader, datasets/loader.py): a dataset version's samples read
from the shards in an order fixed by (manifest, split, seed, epoch) alone — the same for any
worker split, resumable from any position, verified record by record, never yielding a deleted
or hidden sample — against real PostgreSQL, Redis and the store, a version built by `hoard
dataset build`."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import mmap
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.datasets import loader as loader_mod
from hoardfs.datasets.loader import Mix, plan
from hoardfs.fsd.core import disks
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.maintenance.deletion import hide
from hoardfs.fsd.outputs import runs as runs_mod
from hoardfs.fsd.outputs.runs import Rec, Run, assign, read_run, read_runs
from hoardfs.fsd.store import Store
from hoardfs.loader import Loader, LoaderError
from hoardfs.sql import datasets as sqld
from tests.helpers import flip_byte, worker_reachable_home
from tests.test_datasets import _build, _hoard, _label, _spec
from tests.test_ingest import ingest_sample

#: small runs, lanes and buffer: a few dozen samples still make many runs, mixed and buffered
SMALL = {"buffer": 7, "lanes": 3, "run_bytes": 96 << 10}


@pytest.fixture
def built(hoard_home: Path, pg, redis_conn, tmp_path: Path):
    """Three gallery batches ingested, their png images labelled cat | dog, and dataset pets@1
    built from them (copy mode): (cfg, the spec file)."""
    cfg, _ = ingest_sample(hoard_home, pg, redis_conn, Spec(seed=71, batches=3, items_per_batch=30, large_max_mb=1,
                                                            ready_signal=True, sources=("gallery",)))
    shas = [r[0] for r in pg.execute(
        "SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc USING (node_id) "
        "WHERE pc.file_type = 'png' ORDER BY n.node_id")]
    assert len(shas) >= 20
    _label(pg, "setup", [(h, "class", "cat" if i % 2 else "dog") for i, h in enumerate(shas)])
    spec = _spec(tmp_path, ratios="train = 0.8, val = 0.2")
    assert _build(cfg, spec)["version"] == 1
    return cfg, spec


def _keys(ld: Loader) -> list[str]:
    return [s["key"] for s in ld]


def without_index(cfg, name: str = "pets", version: int = 1) -> None:
    """The version as one built before loader indexes were kept: its row names none, its loader
    reads the manifest whole."""
    import psycopg

    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        conn.execute("UPDATE dataset_version SET loader_index_sha256 = NULL WHERE name = %s AND version = %s",
                     [name, version])


def _fields(ld: Loader) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "bytes"} for s in ld]


def test_a_version_is_started_from_its_loader_index_as_from_its_manifest(built, pg) -> None:
    """A build keeps the version's loader index (each sample's sha256, split and manifest line:
    58 bytes a sample) as an object its dataset_object rows name; a loader starts from it — the
    manifest not read whole — and yields what a loader reading the manifest whole yields: the
    same samples, fields, bytes and order, for every split, and the same resumed state."""
    cfg, _ = built
    row = sqld.version(pg, "pets", 1)
    assert row is not None and row["loader_index_sha256"]
    assert pg.execute("SELECT count(*) FROM dataset_object WHERE name = 'pets' AND version = 1 AND sha256 = %s",
                      [bytes.fromhex(row["loader_index_sha256"])]).fetchone() == (1,)
    with Store.open(cfg, writable=False) as store:
        index = store.get(row["loader_index_sha256"])
    kept = {}
    for split in ("train", "val", None):
        ld = Loader("pets@1", split, 7, 0, config_path=cfg.source, **SMALL)
        assert ld.from_index
        kept[split] = (list(ld), ld.state_dict(), len(ld))
    n = len(kept[None][0])
    assert len(index) < 200 + 58 * n
    # (a DataLoader's workers each read a part of the plan its parent made: positions dealt too)
    made = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL).planned()
    assert made._plan is not None and made._plan.deal is None
    without_index(cfg)
    for split, (got, state, size) in kept.items():
        ld = Loader("pets@1", split, 7, 0, config_path=cfg.source, **SMALL)
        assert not ld.from_index and len(ld) == size and list(ld) == got and ld.state_dict() == state


@pytest.mark.expect_log(r"loader: (loader index .* (unreadable on shard .*: payload checksum mismatch.*; trying another "
                        r"replica|not read striped \(payload checksum mismatch .*\); reading it off one replica after "
                        r"another)|the loader index of pets@1 .* is not used \(.*\); reading its manifest whole instead)",
                        level="WARNING")
def test_a_rotten_or_foreign_loader_index_is_read_around_or_left_for_the_manifest(built, pg) -> None:
    """A bit flipped in one replica of the loader index: logged, the other replica read; in
    every replica, or an index of another manifest named by the row: logged, the manifest read
    whole — each time the same fields in the same order, and nothing written of the store."""
    cfg, _ = built
    want = _fields(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    row = sqld.version(pg, "pets", 1)
    sha = bytes.fromhex(row["loader_index_sha256"])
    with Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(sha)
        meta = store.index.get_shard(loc.shard_id)
        paths = [d.find(meta.hex) for d in store.replica_order(meta)]
        before = (store.index.pending_repairs(), store.index.events_since("read_error", 0))
    assert len(paths) >= 2
    flip_byte(paths[0], loc.offset + loc.length // 2)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert ld.from_index and _fields(ld) == want
    for path in paths[1:]:
        flip_byte(path, loc.offset + loc.length // 2)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert not ld.from_index and _fields(ld) == want
    for path in paths:
        flip_byte(path, loc.offset + loc.length // 2)  # (whole again)
    _build(cfg, _spec(Path(cfg.source).parent, name="kin", ratios="train = 0.5, val = 0.5"))
    other = sqld.version(pg, "kin", 1)["loader_index_sha256"]
    assert other and other != row["loader_index_sha256"]
    pg.execute("UPDATE dataset_version SET loader_index_sha256 = %s WHERE name = 'pets' AND version = 1",
               [bytes.fromhex(other)])
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert not ld.from_index and _fields(ld) == want
    with Store.open(cfg, writable=False) as store:
        assert (store.index.pending_repairs(), store.index.events_since("read_error", 0)) == before == ([], [])


def test_a_loader_index_and_its_manifest_read_striped_give_the_same(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader index read a piece off each replica at once, and the manifest read into the
    page cache the same way (pieces made small: the test's version is small) — each line then
    read off the replica that read its piece: every sample with its own fields, as with the
    pieces the loader uses."""
    cfg, _ = built
    want = _fields(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    monkeypatch.setattr(loader_mod, "STRIPE_PIECE", 777)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert ld.from_index and _fields(ld) == want
    with Store.open(cfg, writable=False) as store:
        sha = bytes.fromhex(ld.manifest_sha)
        meta = store.index.get_shard(store.index.lookup(sha).shard_id)
        disks = [d for d in store.replica_order(meta)]
        assert len({k for k, _a, _n in loader_mod._stripes(store, disks, store.index.lookup(sha).length)}) >= 2


def test_the_loader_index_survives_a_delete_and_gc(built, pg) -> None:
    """`hoard delete --object` of the loader index, then `hoard gc`: the index is kept (no node
    names it; the version's dataset_object row does) and the next loader starts from it (with
    the index not named by that row, gc freed it)."""
    cfg, _ = built
    index = sqld.version(pg, "pets", 1)["loader_index_sha256"]
    for args in (("delete", "--object", index), ("gc", "--threshold", "1.0")):
        res = _hoard(cfg, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert ld.from_index and len(list(ld)) == len(ld)


def _epochs(cfg, n: int = 2, **kw) -> list[tuple[int, str]]:
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **kw)
    return [(s["epoch"], s["key"]) for _ in range(n) for s in ld]


def test_every_sample_once_verified_and_the_same_order_for_any_worker_split(built) -> None:
    """An epoch yields each train sample once, its bytes those of its sha256, with its labels; the
    order is the plan's (`order()`, no byte read) and comes back the same from 1, 2, 4 and 8
    workers (blocks of 1 and of 3) interleaved; another seed or epoch is another order."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    got = list(ld)
    assert len(got) == len(ld) and len({s["key"] for s in got}) == len(got) and len(got) >= 15
    assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] and s["split"] == "train"
               and s["labels"]["class"] == [s["class"]] for s in got)
    keys = [s["key"] for s in got]
    assert Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL).order() == keys
    st = ld.stats()
    assert st["samples"] == len(got) and st["bytes"] == sum(len(s["bytes"]) for s in got)
    assert sum(st["per_disk_bytes"].values()) == st["read_bytes"] >= st["bytes"] and len(st["per_disk_bytes"]) >= 2
    with Store.open(cfg, writable=False) as store:
        longest = max(len(r) for r in ld.plan(store).run_samples)
    assert 0 < st["held_max"] <= SMALL["buffer"] + SMALL["lanes"] * longest  # memory: the buffer and the lanes
    for block in (1, 3):
        for workers in (1, 2, 4, 8):
            parts = [_keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, worker=w, workers=workers,
                                  block=block, **SMALL)) for w in range(workers)]
            assert sorted(k for p in parts for k in p) == sorted(keys)
            rejoined = []
            blocks = [[p[i:i + block] for i in range(0, len(p), block)] for p in parts]
            for b in range(max(len(x) for x in blocks)):
                for w in range(workers):
                    if b < len(blocks[w]):
                        rejoined += blocks[w][b]
            assert rejoined == keys, (block, workers)
    assert _keys(Loader("pets@1", "train", 8, 0, config_path=cfg.source, **SMALL)) != keys
    assert _keys(Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)) != keys


def test_resume_from_100_points_gives_the_same_sequence(built) -> None:
    """Stopped after any number of samples of two epochs — mid-buffer, at the epoch boundary —
    and resumed from its JSON state (< 1 KB), twice in a row, the loader yields exactly the
    rest of the uninterrupted sequence."""
    cfg, _ = built
    whole = _epochs(cfg, **SMALL)
    n = len(whole) // 2
    rng = random.Random(5)
    points = sorted({0, 1, 3, SMALL["buffer"] - 1, SMALL["buffer"] + 1, n - 1, n, n + 1, 2 * n - 1}
                    | {rng.randrange(2 * n) for _ in range(200)})[:100]
    assert len(points) >= min(100, 2 * n)
    for p in points:
        ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
        got: list[tuple[int, str]] = []
        while len(got) < p:  # a kill after p samples
            for s in ld:
                got.append((s["epoch"], s["key"]))
                if len(got) == p:
                    break
        raw = json.dumps(ld.state_dict())
        assert len(raw) <= 1024, raw
        again = Loader.from_state_dict(json.loads(raw), config_path=cfg.source)
        q = p + (len(whole) - p) // 2  # killed again half-way through the rest
        while len(got) < q:
            for s in again:
                got.append((s["epoch"], s["key"]))
                if len(got) == q:
                    break
        third = Loader.from_state_dict(json.loads(json.dumps(again.state_dict())), config_path=cfg.source)
        while third.epoch < 2:
            got += [(s["epoch"], s["key"]) for s in third]
        assert got == whole, p


@pytest.mark.parametrize("start", ["loader index", "manifest read whole"])
def test_the_places_looked_up_as_the_manifest_is_read_plan_the_first_epoch(built, start: str) -> None:
    """The places found at the start (from the loader index, or as the manifest was read) plan
    the first epoch (none looked up after), the sequence the index's places give then; a
    split's are its samples' own."""
    cfg, _ = built
    if start != "loader index":
        without_index(cfg)
    for split in ("train", "val", None):
        ld = Loader("pets@1", split, 7, 0, config_path=cfg.source, **SMALL)
        assert ld.from_index == (start == "loader index")
        assert ld._early is not None and len(ld._early[1]) == len(ld)
        late = Loader("pets@1", split, 7, 0, config_path=cfg.source, **SMALL)
        late._early = None
        assert _keys(ld) == _keys(late) and ld._early is None


def test_the_buffer_bounded_in_bytes_bounds_what_an_epoch_holds(built) -> None:
    """A shuffle buffer of `buffer_bytes`: an epoch holds at most those bytes plus the lanes'
    runs read (a record larger counted whole) — fewer than the same buffer by count alone holds
    — yields every sample once, and resumes from its state; a state saved without
    `buffer_bytes` (a loader whose buffer had no bound in bytes) resumes that loader's sequence."""
    cfg, _ = built
    kw = {"buffer": 1000, "lanes": 2, "run_bytes": 96 << 10}
    free = Loader("pets@1", "train", 7, 0, config_path=cfg.source, buffer_bytes=0, **kw)
    keys = _keys(free)
    cap = 200 << 10
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, buffer_bytes=cap, **kw)
    got = list(ld)
    assert sorted(s["key"] for s in got) == sorted(keys) and [s["key"] for s in got] != keys
    largest = max(len(s["bytes"]) for s in got)
    held = ld.stats()["held_bytes_max"]
    # (the bound, and below what the buffer by count alone held: a lane's record of ~1 MB in
    # this data can make the bound itself larger than the whole split)
    assert held <= cap + kw["lanes"] * (kw["run_bytes"] + largest)
    assert held < free.stats()["held_bytes_max"], (held, free.stats()["held_bytes_max"])
    state = Loader("pets@1", "train", 7, 0, config_path=cfg.source, buffer_bytes=cap, **kw).state_dict()
    # (format 2: a reader of format 1 would drop `buffer_bytes` and resume another sequence)
    assert state["buffer_bytes"] == cap and state["state"] == 2 and free.state_dict()["state"] == 1
    state["position"] = 5
    assert _keys(Loader.from_state_dict(state, config_path=cfg.source)) == [s["key"] for s in got][5:]
    with pytest.raises(LoaderError, match="buffer_bytes=…\\): the state gives it"):
        Loader.from_state_dict(state, config_path=cfg.source, buffer_bytes=cap)
    del state["buffer_bytes"]
    state["state"] = 1  # (as a loader before `buffer_bytes` saved it)
    assert _keys(Loader.from_state_dict(state, config_path=cfg.source)) == keys[5:]
    with pytest.raises(LoaderError, match="buffer_bytes=-1"):
        Loader("pets@1", "train", config_path=cfg.source, buffer_bytes=-1)


def test_the_pages_freed_as_samples_are_handed_out_go_back_and_nothing_else_changes(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch hands the allocator's free pages back each time `TRIM_BYTES` of samples went
    out — here after every sample — and yields the same samples, bytes and order as one that
    does it once an epoch only."""
    cfg, _ = built
    once = [(s["key"], s["bytes"]) for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    trims: list[int] = []
    real = loader_mod.give_back_freed
    monkeypatch.setattr(loader_mod, "give_back_freed", lambda: (trims.append(1), real())[1])
    monkeypatch.setattr(loader_mod, "TRIM_BYTES", 1)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    at_start = len(trims)
    assert [(s["key"], s["bytes"]) for s in ld] == once
    assert len(trims) - at_start == len(once) + 1  # (a sample each, and the epoch's plan)


@pytest.mark.expect_log(r"loader: record .* does not check out", level="WARNING")
def test_a_rotten_replica_is_read_around(built) -> None:
    """A flipped byte in the replica the loader reads a sample from: the sample comes from
    another replica, its bytes right, the fallback counted and the record named in the log (the
    store is not written: a reader's rule); nothing else changes."""
    cfg, _ = built
    whole = list(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    victim = whole[len(whole) // 2]
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        sha = bytes.fromhex(victim["sha256"])
        loc = store.index.lookup(sha)
        p = ld.plan(store)
        r = next(r for r, run in enumerate(p.runs) if any(rec.sha == sha for rec in run.records))
        uuid = assign(store, p.runs)[r]
        meta = store.index.get_shard(loc.shard_id)
        assert len(meta.replicas) >= 2
        path = store.disks[uuid].find(meta.hex)
    flip_byte(path, loc.offset + 5)
    got = list(ld)
    assert [s["key"] for s in got] == [s["key"] for s in whole]
    assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] for s in got)
    assert ld.stats()["fallbacks"] == 1


@pytest.mark.expect_log(r"loader: record .* does not check out", level="WARNING")
def test_a_record_hidden_while_its_run_is_read_is_not_read_off_another_replica(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that does not check out on its run's disk, hidden by `hoard delete --node` while
    its run is read, is not read off another replica: passed over as the store no longer shows
    it, the run's other records read."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        p = ld.plan(store)
        runs = [Run(r.shard_id, r.records) for r in p.runs]
        disk_of = assign(store, runs)
        j = next(b for b in range(len(runs)) if len(runs[b].records) >= 2 and disk_of[b])
        victim = runs[j].records[1]
        meta = store.index.get_shard(runs[j].shard_id)
        assert len(meta.replicas) >= 2
        flip_byte(store.disks[disk_of[j]].find(meta.hex), victim.offset + 5)
        real = runs_mod.read_checked

        def checked_then_hidden(*a: object) -> object:
            failed = real(*a)
            assert [r.sha for r, _why in failed] == [victim.sha]
            res = _hoard(cfg, "delete", "--node", victim.sha.hex())  # (another process, as a user's)
            assert res.returncode == 0, res.stderr
            return failed

        monkeypatch.setattr(runs_mod, "read_checked", checked_then_hidden)
        got = read_run(store, j, runs[j], disk_of[j])
    assert victim.sha not in got.payloads and victim.sha in got.unshown and got.fallbacks == 0
    assert {r.sha for r in runs[j].records} - {victim.sha} <= set(got.payloads)


def test_a_forked_worker_reads_the_manifests_lines_off_the_replicas_the_start_read(built) -> None:
    """A forked process (a DataLoader's worker) reads each sample's manifest line through the
    descriptors it inherited — off the replica whose page cache holds that piece — not through
    the store opened anew (which read every line off one replica, half of them off the disks
    after a striped start): the child's fields are the parent's, with the store's way shut."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    want = [ld.samples.fields(i)["key"] for i in range(len(ld))]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: any read through the store is a failure
        os.close(r)
        code = 1
        try:
            def shut(cfg_: Any) -> Any:
                raise AssertionError("a line read through the store")

            loader_mod._shared_store = shut
            got = [ld.samples.fields(i)["key"] for i in range(len(ld))]
            os.write(w, json.dumps(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and json.loads(out) == want


@pytest.mark.expect_log(r"loader: manifest .* unreadable on shard .* do not match what was read of it", level="WARNING")
def test_the_manifests_lines_are_read_back_checked(built) -> None:
    """A loader keeps no manifest: each sample's line is read back from the store as it is
    handed out, checked against what was read at the start. A bit flipped after the start in
    the replica read first: every sample still comes with its own fields (the line read off
    the other replica); flipped in every replica: the epoch stops with one line naming the
    manifest — never a sample with another's key or labels."""
    from hoardfs.fsd.core.records import DataError

    cfg, _ = built
    want = [{k: v for k, v in s.items() if k != "bytes"} for s in Loader("pets@1", "train", 7, 0,
                                                                         config_path=cfg.source, **SMALL)]
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)  # (its manifest read now)
    with Store.open(cfg, writable=False) as store:
        sha = bytes.fromhex(ld.manifest_sha)
        loc = store.index.lookup(sha)
        meta = store.index.get_shard(loc.shard_id)
        paths = [d.find(meta.hex) for d in store.replica_order(meta)]
        manifest = store.get(ld.manifest_sha)
    assert len(paths) >= 2
    victims = [want[k]["key"].encode() for k in (0, len(want) // 2, len(want) - 1)]
    spots = [loc.offset + manifest.index(b'"key":"' + key) + 8 for key in victims]
    for at in spots:
        flip_byte(paths[0], at)
    assert [{k: v for k, v in s.items() if k != "bytes"} for s in ld] == want
    for path in paths[1:]:
        for at in spots:
            flip_byte(path, at)
    with pytest.raises(DataError, match=f"object {ld.manifest_sha}: no good replica"):
        list(ld)


def test_a_deleted_or_hidden_sample_is_never_yielded(built) -> None:
    """`hoard delete --node` (the database's flag and the store's mark) before the epoch, and a
    hidden mark in the store alone: neither sample is yielded nor read — a run holding the
    hidden one between two others is read in two ranges, its bytes left on the disk —; the
    rest come in the same order, and the positions stay those of the whole sequence."""
    cfg, _ = built
    whole = list(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    wide = Loader("pets@1", "train", 7, 0, config_path=cfg.source, run_bytes=64 << 20)  # a shard, a run
    with Store.open(cfg, writable=False) as store:
        run = max(wide.plan(store).runs, key=lambda run: len(run.records))
    assert len(run.records) >= 3
    middle = run.records[len(run.records) // 2]
    b = next(s for s in whole if s["sha256"] == middle.sha.hex())
    a = next(s for s in whole if s["key"] != b["key"])
    res = _hoard(cfg, "delete", "--node", a["sha256"])
    assert res.returncode == 0, res.stderr
    with Store.open(cfg) as store:
        hide(store, [middle.sha], "test: the store's mark alone")
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    planned = ld.order()
    got = list(ld)
    assert [s["key"] for s in got] == [s["key"] for s in whole if s["key"] not in (a["key"], b["key"])] == planned
    assert [s["position"] for s in got] == [s["position"] for s in whole if s["key"] not in (a["key"], b["key"])]
    assert ld.stats()["withheld"] == 2
    # the wide run, read as the loader reads it: not a byte of the hidden record
    with Store.open(cfg, writable=False) as store:
        got_run = read_run(store, 0, run, assign(store, [run])[0])
    assert middle.sha in got_run.unshown and middle.sha not in got_run.payloads
    assert set(got_run.payloads) == {rec.sha for rec in run.records} - set(got_run.unshown)
    span = run.records[-1].offset + run.records[-1].length - run.records[0].offset + fmt.RECORD_HEADER_SIZE
    assert got_run.nbytes <= span - middle.length - fmt.RECORD_HEADER_SIZE


def test_samples_the_database_alone_marks_are_withheld_whether_few_or_many_nodes_are_marked(built, pg) -> None:
    """A node black-listed or flagged deleted in the database alone (the store still shows its
    object) is withheld at the epoch's start: with few nodes marked, found by one walk of the
    marked rows (tests/test_dataset_lineage.py: from their partial indexes); with more than a
    quarter of the samples marked, asked of each sample — the same samples left out either way."""
    cfg, _ = built
    whole = list(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    assert len(whole) >= 16

    def mark(rows: list[dict[str, Any]], column: str) -> None:
        pg.execute(f"UPDATE physical_content SET {column} = true WHERE node_id = ANY(%s)",
                   [[r["node_id"] for r in rows]])

    def left(marked: list[dict[str, Any]], walked: bool) -> None:
        from hoardfs.datasets import api  # (the store's reader side: the same call the loader makes)
        assert (api.withheld_marked(pg, len(whole)) is not None) is walked
        ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
        shas = {r["sha256"] for r in marked}  # (a sample of the same content as a marked one: withheld too)
        gone = {s["key"] for s in whole if s["sha256"] in shas}
        planned = ld.order()
        got = list(ld)
        assert [s["key"] for s in got] == [s["key"] for s in whole if s["key"] not in gone] == planned
        assert [s["position"] for s in got] == [s["position"] for s in whole if s["key"] not in gone]
        assert ld.stats()["withheld"] == len(gone)

    few = [whole[1], whole[-2]]
    mark(few[:1], "in_black_list")
    mark(few[1:], "is_deleted")
    left(few, walked=True)
    many = whole[::3]
    assert len(many) > len(whole) // 4
    mark(many, "is_deleted")
    left(many + few, walked=False)


def test_a_sample_hidden_after_its_run_was_read_is_not_handed_out(built) -> None:
    """A sample whose run was read (its bytes held, its position still to come) and which
    `hoard delete --node` then hides is not handed out: the check at hand-out looks at the index again once
    anything was written to it since the reads began; the others come as before."""
    cfg, _ = built
    whole = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, buffer=len(whole), lanes=1, run_bytes=64 << 20)
    with Store.open(cfg, writable=False) as store:
        p = ld.plan(store)
    it = iter(ld)
    first = next(it)
    i0 = p.post[0]
    run = p.samples_of(p.run_of[i0])  # read whole before the first sample came
    victim = next(i for i in run if i != i0 and ld.shas[i] != ld.shas[i0])
    res = _hoard(cfg, "delete", "--node", ld.shas[victim].hex())  # (another process, as a user's)
    assert res.returncode == 0, res.stderr
    rest = list(it)
    keys = [first["key"], *(s["key"] for s in rest)]
    held = ld.samples.fields(victim)["key"]
    assert held not in keys and sorted(keys + [held]) == sorted(whole)
    assert ld.stats()["withheld"] == 1


def _hinted_run(store: Store, ld: Loader) -> tuple[list[Run], list[str], int, bytes]:
    """The epoch's runs as read, each one's disk, and a run j read right after another off the
    same disk (so it is hinted) holding two records or more; its second record's sha256."""
    runs = [Run(r.shard_id, r.records) for r in ld.plan(store).runs]
    disk_of = assign(store, runs)
    j = next(b for b in range(1, len(runs)) if len(runs[b].records) >= 2 and disk_of[b] in disk_of[:b])
    return runs, disk_of, j, runs[j].records[1].sha


@pytest.mark.expect_log(r"loader: record .* does not check out", level="WARNING")
def test_every_record_read_into_a_readers_one_buffer_is_its_own(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader thread reads each range of a local disk into its one buffer: every record it
    hands out is a copy the next range's read does not overwrite — with each record a range of
    its own (no gap read through), every payload of every run, all held at once, is its own
    bytes; and a record that fails its check is still read from its other replica."""
    cfg, _ = built
    monkeypatch.setattr(runs_mod, "GAP_BYTES", -1)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs = [Run(r.shard_id, r.records) for r in ld.plan(store).runs]
        assert any(len(r.records) >= 2 for r in runs)
        bad = next(r for r in runs if len(r.records) >= 2)
        disk = store.disks[assign(store, runs)[runs.index(bad)]]
        flip_byte(disk.find(bad.shard_id.hex()), bad.records[1].offset + 3)
        disk.forget(bad.shard_id.hex())
        got = list(read_runs(store, runs))
    payloads = {sha: data for g in got for sha, data in g.payloads.items()}
    assert set(payloads) == {rec.sha for r in runs for rec in r.records}
    assert all(hashlib.sha256(data).digest() == sha for sha, data in payloads.items())
    assert sum(g.fallbacks for g in got) == 1


def test_a_record_hidden_after_its_run_was_hinted_is_not_read(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's plan made when its disk's previous run ended (the hint of its first range) is
    read on only while nothing was written to the index since: a record `hoard delete --node`
    hides in between is not read — its run planned again — and the run's others are."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    hinted: list[int] = []
    with Store.open(cfg, writable=False) as store:
        runs, disk_of, j, victim = _hinted_run(store, ld)
        real = runs_mod._prefetch_first

        def hint_then_hide(store_: Store, number: int, run: Run, uuid: str, lead: bool = False) -> object:
            got = real(store_, number, run, uuid, lead)
            if number == j:
                hinted.append(number)
                res = _hoard(cfg, "delete", "--node", victim.hex())  # (another process, as a user's)
                assert res.returncode == 0, res.stderr
            return got

        monkeypatch.setattr(runs_mod, "_prefetch_first", hint_then_hide)
        got = {g.number: g for g in read_runs(store, runs)}
    assert hinted == [j]  # (the plan was made ahead, then the record hidden)
    assert victim not in got[j].payloads and victim in got[j].unshown
    assert {r.sha for r in runs[j].records} - {victim} <= set(got[j].payloads)


def _later_runs(store: Store, ld: Loader) -> tuple[list[Run], list[runs_mod.RunRead]]:
    """The epoch's runs, and each one as `read_runs(later=True)` hands it out — every run left
    to its consumer (the test store's shards are all in the page cache)."""
    runs = [Run(r.shard_id, r.records) for r in ld.plan(store).runs]
    for run, uuid in zip(runs, assign(store, runs), strict=True):  # (the shards read once: in the page cache)
        disk, shard_hex = store.disks[uuid], run.shard_id.hex()
        size = len(Path(disk.find(shard_hex)).read_bytes())
        if not disk.cached(shard_hex, 0, size):
            pytest.skip("this file system does not tell what its page cache holds (mincore)")
    got = list(read_runs(store, runs, later=True))
    assert all(g.later is not None and not g.payloads for g in got)
    return runs, got


def test_a_warm_epochs_runs_are_planned_by_their_consumer_until_one_is_not_cached(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs the page cache holds whole are planned in the consumer's own thread (no reader
    thread hands them over); from the first run whose shard the page cache dropped on, the
    disks' readers read — every run handed out in order, every record right."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, _ = _later_runs(store, ld)
        disk_of = assign(store, runs)
        k = next((j for j in range(1, len(runs)) if runs[j].shard_id not in {r.shard_id for r in runs[:j]}), None)
        if k is None:
            pytest.skip("the epoch's runs are all of one shard")
        _drop_pages(store, runs[k].shard_id)  # (off every replica: none is read warm)
        if store.disks[disk_of[k]].cached(runs[k].shard_id.hex(), *runs_mod.span(runs[k].records)):
            pytest.skip("the page cache kept the shard's pages (posix_fadvise DONTNEED)")
        threads: list[str] = []
        real = runs_mod.read_run

        def traced(*a: Any, **kw: Any) -> runs_mod.RunRead:
            threads.append(threading.current_thread().name)
            return real(*a, **kw)

        monkeypatch.setattr(runs_mod, "read_run", traced)
        got = list(read_runs(store, runs, later=True))
        payloads = [{rec.sha: g.take(rec.sha) for rec in run.records} for run, g in zip(runs, got, strict=True)]
    main = threading.current_thread().name
    assert [g.number for g in got] == list(range(len(runs)))
    assert threads[:k] == [main] * k and all(t.startswith("loader-read") for t in threads[k:])
    assert got[k].later is None  # (read off the disk by its reader, not left to the consumer)
    assert all(v is not None and hashlib.sha256(v).digest() == sha for p in payloads for sha, v in p.items())


def _drop_pages(store: Store, shard_id: bytes) -> None:
    """The page cache's pages of the shard's file dropped on every disk holding it."""
    meta = store.index.get_shard(shard_id)
    assert meta is not None
    for disk in store.replica_order(meta):
        _uncached(Path(disk.find(shard_id.hex())))


def test_a_next_epoch_reads_each_run_off_the_replica_the_page_cache_holds(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch's plan orders its runs its own way, and the balance alone would send a run to
    another replica than the one the last epoch read it off: a warm epoch's runs are read off
    the replica whose pages the page cache holds — every one left to the consumer, the bytes
    each disk hands over those of the runs it holds — where the balance would have chosen the
    other one for many of them; a cold epoch's plan is the balance's, its looks ending early."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        planned = ld.plan(store).runs  # (the loader's own runs: their ranges from its arrays)
        runs = [Run(r.shard_id, r.records) for r in planned]
        balanced = assign(store, runs)
        meta = {run.shard_id: store.index.get_shard(run.shard_id) for run in runs}
        if any(len(store.replica_order(m)) < 2 for m in meta.values()):
            pytest.skip("a shard of the test store has one replica")
        for shard_id in meta:
            _drop_pages(store, shard_id)
        if any(store.disks[u].cached(run.shard_id.hex(), *runs_mod.span(run.records))
               for run, u in zip(runs, balanced, strict=True)):
            pytest.skip("the page cache kept the shards' pages (posix_fadvise DONTNEED)")
        # each shard's runs read off a replica the balance does not choose for its first run
        warm_on: dict[bytes, str] = {}
        for run, u in zip(runs, balanced, strict=True):
            on = warm_on.setdefault(run.shard_id, next(d.uuid for d in store.replica_order(meta[run.shard_id])
                                                       if d.uuid != u))
            store.disks[on].read_at(run.shard_id.hex(), *runs_mod.span(run.records))
        if not all(store.disks[warm_on[run.shard_id]].cached(run.shard_id.hex(), *runs_mod.span(run.records))
                   for run in runs):
            pytest.skip("this file system does not tell what its page cache holds (mincore)")
        wanted = [warm_on[run.shard_id] for run in runs]
        assert assign(store, planned, warm=True) == assign(store, runs, warm=True) == wanted != balanced
        # a run whose warm replica the kernel reclaimed in part: still read there, not off the other
        j = next(j for j, u in enumerate(balanced) if u != wanted[j])
        a, n = runs_mod.span(runs[j].records)
        _uncached(Path(store.disks[wanted[j]].find(runs[j].shard_id.hex())), a, n // 2)
        assert not store.disks[wanted[j]].cached(runs[j].shard_id.hex(), a, n)
        assert assign(store, runs, warm=True)[j] == wanted[j]
        store.disks[wanted[j]].read_at(runs[j].shard_id.hex(), a, n)
        got = list(read_runs(store, runs, later=True))
        labels = [store.disks[u].label for u in wanted]
        assert [g.later is not None and g.disk for g in got] == labels
        for run, g in zip(runs, got, strict=True):
            assert all(hashlib.sha256(v).digest() == r.sha  # type: ignore[arg-type]
                       for r, v in zip(run.records, g.take_many([r.sha for r in run.records]), strict=True))
        # the loader's next epoch itself: each disk hands over the bytes of the runs it holds
        per_disk: dict[str, int] = {}
        for run, label in zip(runs, labels, strict=True):
            per_disk[label] = per_disk.get(label, 0) + run.size
    expect = [(s["key"], s["sha256"]) for s in Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)]
    ld = Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)
    assert [(s["key"], hashlib.sha256(s["bytes"]).hexdigest()) for s in ld] == expect
    assert ld.stats()["per_disk_bytes"] == per_disk and ld.stats()["fallbacks"] == 0
    # a cold epoch's plan: the balance's, the looks ended after the first COLD_RUNS runs
    looks: list[str] = []
    real = disks.LocalDisk.cached_pages

    def counted(self: disks.LocalDisk, *a: Any, **kw: Any) -> int:
        looks.append(self.uuid)
        return real(self, *a, **kw)

    monkeypatch.setattr(disks.LocalDisk, "cached_pages", counted)
    monkeypatch.setattr(runs_mod, "COLD_RUNS", 2)
    with Store.open(cfg, writable=False) as store:
        for shard_id in meta:
            _drop_pages(store, shard_id)
        assert assign(store, runs, warm=True) == balanced
        most = 2 * max(len(store.replica_order(m)) for m in meta.values())  # (two runs' replicas)
    assert 0 < len(looks) <= most < 2 * len(runs)


def test_a_worker_looking_after_the_leaders_first_reads_chooses_as_it_chose(built) -> None:
    """A DataLoader's workers each choose their runs' disks, the followers a moment after the
    leader, whose first reads are in the page cache by then: the pages those runs share with
    their neighbours do not send a neighbour off the leader's choice (a follower then follows a
    disk the leader does not read for it)."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs = [Run(r.shard_id, r.records) for r in ld.plan(store).runs]
        for shard_id in {r.shard_id for r in runs}:
            _drop_pages(store, shard_id)
        leader = assign(store, runs, warm=True)
        assert leader == assign(store, runs) and len(runs) > 8
        for j in range(8):  # (its readers' first runs, read as they read: no read-ahead)
            store.disks[leader[j]].read_exact(runs[j].shard_id.hex(), *runs_mod.span(runs[j].records))
        if not store.disks[leader[0]].cached(runs[0].shard_id.hex(), *runs_mod.span(runs[0].records)):
            pytest.skip("this file system does not tell what its page cache holds (mincore)")
        assert assign(store, runs, warm=True) == leader


def test_a_partly_warm_epoch_yields_the_same_wherever_the_readers_take_over(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch whose first run the page cache does not hold whole, at the second run, in the
    middle or at the last — the consumer plans the runs before it, the readers the rest —
    yields what a cold epoch yields, bytes and positions, with right stats and no reader left."""
    cfg, _ = built

    def pairs(ld: Loader) -> list[tuple[str, bytes, int]]:
        return [(s["key"], hashlib.sha256(s["bytes"]).digest(), s["position"]) for s in ld]

    whole = pairs(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, _ = _later_runs(store, ld)
    real = runs_mod.records_cached
    main = threading.current_thread().name
    for at in sorted({0, 1, len(runs) // 2, len(runs) - 1}):
        looked: list[tuple[str, str]] = []

        def cold_at(disk: Any, shard_hex: str, records: list[Rec], cold: str = runs[at].shard_id.hex(),
                    looked: list[tuple[str, str]] = looked) -> bool:
            looked.append((threading.current_thread().name, shard_hex))
            return shard_hex != cold and real(disk, shard_hex, records)

        monkeypatch.setattr(runs_mod, "records_cached", cold_at)
        ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
        assert pairs(ld) == whole, at
        st = ld.stats()
        assert st["fallbacks"] == 0 and sum(st["per_disk_bytes"].values()) == st["read_bytes"] >= st["bytes"]
        assert not [t for t in threading.enumerate() if t.name.startswith("loader-read")]
        first = next(j for j, r in enumerate(runs) if r.shard_id == runs[at].shard_id)
        assert [s for t, s in looked if t == main] == [r.shard_id.hex() for r in runs[:first + 1]], at


def _record_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The payload offset of each record read from now on by `LocalDisk.read_record`."""
    reads: list[int] = []
    real = disks.LocalDisk.read_record

    def counted(self: disks.LocalDisk, shard_hex: str, offset: int, head: int, length: int) -> tuple[bytes, bytes]:
        reads.append(offset)
        return real(self, shard_hex, offset, head, length)

    monkeypatch.setattr(disks.LocalDisk, "read_record", counted)
    return reads


def _payload_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offset of each pread from now on (`RunRead.take_many` reads a `Later` run's records
    with os.pread on the shard's descriptor: a header's read and its payload's)."""
    reads: list[int] = []
    real = os.pread

    def counted(fd: int, n: int, offset: int) -> bytes:
        reads.append(offset)
        return real(fd, n, offset)

    monkeypatch.setattr(os, "pread", counted)
    return reads


def _taken(g: runs_mod.RunRead, shas: list[bytes], many: bool) -> dict[bytes, bytes | None]:
    """The records taken one at a time (`RunRead.take`) or all at once, as a loader takes a
    run's (`RunRead.take_many`)."""
    return dict(zip(shas, g.take_many(shas) if many else [g.take(sha) for sha in shas], strict=True))


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "all at once"])
def test_a_run_the_page_cache_holds_is_read_record_by_record_as_it_is_taken(
        built, monkeypatch: pytest.MonkeyPatch, many: bool) -> None:
    """A run whose records the page cache holds is not read by its disk's reader but left to
    the consumer: each record read as it is taken, straight into its own bytes, verified — the
    same payloads the range reads give, only the records' bytes read (no gap read through); one
    taken twice is read twice, the same bytes, as the range read's view gives them twice."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, later = _later_runs(store, ld)
        ranged = list(read_runs(store, runs))  # (range buffers: the consumer copies out of them)
        reads = _payload_reads(monkeypatch) if many else _record_reads(monkeypatch)
        for run, g, r in zip(runs, later, ranged, strict=True):
            got = _taken(g, [rec.sha for rec in run.records], many)
            assert got == {sha: bytes(v) for sha, v in r.payloads.items()} and len(got) == len(run.records)
            assert all(v is not None and hashlib.sha256(v).digest() == sha for sha, v in got.items())
            assert g.nbytes == run.size <= r.nbytes
            first = run.records[0].sha  # (taken again — a sample a version holds twice —: read again, as a view is)
            assert _taken(g, [first, first], many)[first] == got[first] == r.take(first)
            r.release()
    # (each run's records, and its first twice more: a pread of the header and one of the payload
    # a record taken all at once, one `read_record` a record taken one by one)
    assert len(reads) == sum((len(run.records) + 2) * (2 if many else 1) for run in runs)


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "all at once"])
def test_a_record_hidden_before_its_consumer_takes_it_is_not_read(built, monkeypatch: pytest.MonkeyPatch,
                                                                  many: bool) -> None:
    """A run left to its consumer (`runs.Later`), one of its records hidden by `hoard delete
    --node` (another process) before the consumer takes it: that record is not read — not a
    byte of it — and is named unshown; the run's others are read."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, later = _later_runs(store, ld)
        j = next(b for b in range(len(runs)) if len(runs[b].records) >= 2)
        victim = runs[j].records[1]
        res = _hoard(cfg, "delete", "--node", victim.sha.hex())
        assert res.returncode == 0, res.stderr
        reads = _payload_reads(monkeypatch) if many else _record_reads(monkeypatch)
        got = _taken(later[j], [rec.sha for rec in runs[j].records], many)
    assert got[victim.sha] is None and victim.sha in later[j].unshown and victim.offset not in reads
    assert victim.offset - fmt.RECORD_HEADER_SIZE not in reads and reads
    assert all(v is not None and hashlib.sha256(v).digest() == sha for sha, v in got.items() if sha != victim.sha)


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "all at once"])
def test_a_record_hidden_before_its_warm_run_is_planned_is_not_read(built, monkeypatch: pytest.MonkeyPatch,
                                                                    many: bool) -> None:
    """A record hidden by `hoard delete --node` (another process) before the warm epoch plans
    its run (`read_runs(later=True)`: the run planned by its consumer, `runs._later`): named
    unshown at once, not a byte of it read as the run's records are taken — whatever the
    snapshot the takes compare the index with; the run's others read."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, _ = _later_runs(store, ld)  # (every shard in the page cache)
        j = next(b for b in range(len(runs)) if len(runs[b].records) >= 2)
        victim = runs[j].records[1]
        res = _hoard(cfg, "delete", "--node", victim.sha.hex())
        assert res.returncode == 0, res.stderr
        later = list(read_runs(store, runs, later=True))  # (planned now: after the delete)
        assert later[j].later is not None and victim.sha in later[j].unshown
        reads = _payload_reads(monkeypatch) if many else _record_reads(monkeypatch)
        got = _taken(later[j], [rec.sha for rec in runs[j].records], many)
    assert got[victim.sha] is None and victim.offset not in reads and reads
    assert victim.offset - fmt.RECORD_HEADER_SIZE not in reads
    assert all(v is not None and hashlib.sha256(v).digest() == sha for sha, v in got.items() if sha != victim.sha)


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "all at once"])
def test_a_shard_gc_retired_before_its_consumer_takes_its_records_is_read_elsewhere_one_line(
        built, caplog: pytest.LogCaptureFixture, many: bool) -> None:
    """A run left to its consumer whose shard file is gone when the consumer takes its records
    (gc retired it — its records moved — and no descriptor of it is kept): each record comes
    from another replica, looked up again, its bytes right; one INFO line names the shard, no
    warning (gc's retirement is no fault)."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, later = _later_runs(store, ld)
        disk_of = assign(store, runs)
        j = next(b for b in range(len(runs)) if len(runs[b].records) >= 2
                 and len(store.index.get_shard(runs[b].shard_id).replicas) >= 2)
        disk, shard_hex = store.disks[disk_of[j]], runs[j].shard_id.hex()
        path = Path(disk.find(shard_hex))
        saved = path.read_bytes()
        path.unlink()
        disk.forget(shard_hex)
        try:
            with caplog.at_level("INFO", logger=runs_mod.log.name):
                shas = [r.sha for r in runs[j].records]
                got = _taken(later[j], [*shas, shas[0]], many)  # (the first again: a sample held twice, read once)
        finally:
            path.write_bytes(saved)
    assert all(v is not None and hashlib.sha256(v).digest() == sha for sha, v in got.items())
    assert later[j].fallbacks == len(runs[j].records)
    lines = [r.getMessage() for r in caplog.records if r.name == runs_mod.log.name]
    assert len(lines) == 1 and f"shard {shard_hex} on {disk.label} unreadable" in lines[0], lines


@pytest.mark.parametrize("many", [False, True], ids=["one by one", "all at once"])
@pytest.mark.expect_log(r"loader: record .* unreadable or does not check out", level="WARNING")
def test_a_rotten_record_its_consumer_reads_comes_from_another_replica(built, many: bool) -> None:
    """A flipped byte in a record of a run left to its consumer: taken, it is read from another
    replica (looked up again), its bytes right, the fallback counted and the replica named in
    the log — never handed out as read; taken again (a sample held twice), the bytes read
    elsewhere are copied, not read there again."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, later = _later_runs(store, ld)
        j = next(b for b in range(len(runs)) if len(store.index.get_shard(runs[b].shard_id).replicas) >= 2)
        victim = runs[j].records[0]
        flip_byte(store.disks[assign(store, runs)[j]].find(runs[j].shard_id.hex()), victim.offset + 5)
        others = [r.sha for r in runs[j].records[1:]]
        # (taken twice — a sample the version holds twice —: read from the other replica once)
        got = _taken(later[j], [victim.sha, victim.sha, *others], many)
    assert all(v is not None and hashlib.sha256(v).digest() == sha for sha, v in got.items())
    assert later[j].fallbacks == 1


def _lock_txnid(cfg, txnid: int | None = None) -> int:
    """The last committed write's id in the index's LMDB lock file — the snapshot a read
    transaction begun now takes — set to `txnid` when given (LMDB 0.9's MDB_txbody on 64-bit
    Linux: magic and format, a robust pthread mutex, then the id, at byte 48)."""
    path = cfg.index_dir / "lock.mdb"
    fd = os.open(path, os.O_RDWR)
    try:
        was = struct.unpack("<Q", os.pread(fd, 8, 48))[0]
        if txnid is not None:
            os.pwrite(fd, struct.pack("<Q", txnid), 48)
        return int(was)
    finally:
        os.close(fd)


def _hide_landing(cfg, index: Index, sha: bytes) -> int:
    """`hoard delete --node` of `sha` (another process), its commit then held in its last
    moment — LMDB's meta page written, the lock file's id not yet (the meta page's write is
    synced to the disk in between): a read transaction of `index` (the store's, open) begun now
    still sees the object shown. The id the commit lands at (`_lock_txnid(cfg, it)` lands it)."""
    res = _hoard(cfg, "delete", "--node", sha.hex())
    assert res.returncode == 0, res.stderr
    g = index.generation()
    assert _lock_txnid(cfg) == g  # (the layout read right: the lock file names the same write)
    assert index.shown(sha) is False
    _lock_txnid(cfg, g - 1)
    assert index.shown(sha) is True and index.generation() == g  # (the snapshot before the hide)
    return g


def test_a_sample_hidden_by_a_commit_landing_as_the_reads_begin_is_not_handed_out(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hide whose commit is still landing as the reads begin (LMDB's meta page already names
    it, a read transaction does not see it yet) is seen at hand-out once it has landed: the
    reads' starting point is the snapshot they read, not the meta page's id."""
    cfg, _ = built
    whole = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, buffer=len(whole), lanes=1, run_bytes=64 << 20)
    with Store.open(cfg, writable=False) as store:
        p = ld.plan(store)
    i0 = p.post[0]
    run = p.samples_of(p.run_of[i0])  # read whole before the first sample comes
    victim = next(i for i in run if i != i0 and ld.shas[i] != ld.shas[i0])
    real, landing = Loader._reads, []

    def reads_as_a_hide_lands(self: Loader, *a: object) -> object:
        out = real(self, *a)  # (the epoch planned and its withheld asked: the reads begin next)
        landing.append(_hide_landing(cfg, loader_mod._OPEN[str(cfg.index_dir)][0].index, ld.shas[victim]))
        return out

    monkeypatch.setattr(Loader, "_reads", reads_as_a_hide_lands)
    it = iter(ld)
    first = next(it)
    _lock_txnid(cfg, landing[0])  # the commit has landed
    keys = [first["key"], *(s["key"] for s in it)]
    held = ld.samples.fields(victim)["key"]
    assert held not in keys and sorted(keys + [held]) == sorted(whole)
    assert ld.stats()["withheld"] == 1


def test_a_record_hidden_by_a_commit_landing_as_its_run_is_hinted_is_not_read(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hint's plan made while a hide's commit lands (LMDB's meta page names it, the plan's
    read transaction does not see it) is not read on once it has landed: the run is planned
    again, the hidden record not read, the run's others are."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        runs, disk_of, j, victim = _hinted_run(store, ld)
        real_checked, real_first, landing = runs_mod.read_checked, runs_mod._prefetch_first, []

        before = max(b for b in range(j) if disk_of[b] == disk_of[j])  # (its last range read: j hinted)

        def checked(*a: object) -> object:
            out, then = a[4], a[7]
            if then is not None and getattr(out, "number", None) == before:
                def hide_then_hint() -> None:
                    landing.append(_hide_landing(cfg, store.index, victim))
                    then()
                a = (*a[:7], hide_then_hint)
            return real_checked(*a)

        def first(store_: Store, number: int, run: Run, uuid: str, lead: bool = False) -> object:
            got = real_first(store_, number, run, uuid, lead)
            if number == j:
                _lock_txnid(cfg, landing[0])  # the commit has landed, the plan made before
            return got

        monkeypatch.setattr(runs_mod, "read_checked", checked)
        monkeypatch.setattr(runs_mod, "_prefetch_first", first)
        got = {g.number: g for g in read_runs(store, runs)}
    assert landing
    assert victim not in got[j].payloads and victim in got[j].unshown
    assert {r.sha for r in runs[j].records} - {victim} <= set(got[j].payloads)


def test_a_dataset_built_twice_yields_the_same_order(built) -> None:
    """`hoard dataset build --force` makes version 2 of the same data: the same keys in the same
    order for the same seed (the order is the manifest's, not the version number's)."""
    cfg, spec = built
    assert _build(cfg, spec, "--force")["version"] == 2
    one = _keys(Loader("pets@1", "train", 3, 0, config_path=cfg.source))
    assert _keys(Loader("pets@2", "train", 3, 0, config_path=cfg.source)) == one
    assert _keys(Loader("pets", "val", 3, 0, config_path=cfg.source))  # the newest version, another split


def test_the_store_is_found_as_the_cli_finds_it_and_bad_input_is_one_line(built, pg, monkeypatch) -> None:
    """No config_path: HOARD_CONFIG names the store; split=None reads every split, decode=
    yields `data`; an unknown version or split, a bad seed, a state that is not one, a decode
    that is not a function, a version still building: each a LoaderError or DatasetError of one
    line."""
    cfg, _ = built
    monkeypatch.setenv("HOARD_CONFIG", str(cfg.source))
    ld = Loader("pets@1", split="train", seed=7, epoch=0)
    assert ld.ref == "pets@1" and len(ld) == len(_keys(ld))
    every = list(Loader("pets@1", split=None, decode=lambda b: hashlib.sha256(b).hexdigest()))
    assert {s["split"] for s in every} == {"train", "val"} and len(every) == len(ld) + len(Loader("pets@1", "val"))
    assert all(s["data"] == s["sha256"] and "bytes" not in s for s in every)
    for bad, match in ((lambda: Loader("pets@9"), r"no dataset pets@9 \(its versions: 1\)"),
                       (lambda: Loader("pets@1", split="test"), r"no split 'test' \(its splits: train, val\)"),
                       (lambda: Loader("pets@1", seed=-1), r"seed=-1: a whole number"),
                       (lambda: Loader.from_state_dict({"x": 1}), r"not a loader state"),
                       (lambda: Loader("pets@1", decode="jpeg"), r"decode='jpeg': a function of a sample's bytes")):
        with pytest.raises(Exception, match=match) as e:
            bad()
        assert "\n" not in str(e.value)
    assert isinstance(pytest.raises(LoaderError, lambda: Loader("pets@1", workers=2, worker=2)).value, LoaderError)
    sqld.set_status(pg, "pets", 1, "building")  # as a killed build leaves it
    with pytest.raises(LoaderError, match=r"pets@1 is building \(or its build was killed\): read a finished"):
        Loader("pets@1")


def test_the_mix_counts_distinct_shards_and_the_largest_share() -> None:
    """Mix: over every window, the fewest and mean distinct shards and the largest one-shard share."""
    m = Mix(window=4)
    for s in [b"a", b"a", b"b", b"c", b"a", b"a", b"a", b"a"]:
        m.add(s)
    rep = m.report()
    # windows: aabc(3, 2/4) abca(3, 2/4) bcaa(3, 2/4) caaa(2, 3/4) aaaa(1, 4/4)
    assert rep == {"window": 4, "windows": 5, "distinct_shards_min": 1, "distinct_shards_mean": 2.4,
                   "largest_shard_share": 1.0}


@pytest.mark.parametrize("seed", range(40))
def test_the_mix_kept_as_it_goes_is_every_windows_count(seed: int) -> None:
    """Mix, kept sample by sample, reports what counting each window afresh gives: any window,
    any number of shards, runs of one shard growing and shrinking the largest count — counted
    in folds of any size (shorter or longer than the window), and asked for between them."""
    rng = random.Random(seed)
    window = rng.choice([1, 2, 5, 17, 50])
    shards = [rng.choice([b"a", b"b", 7, (3, 4)]) if seed % 4 == 3 else rng.randrange(rng.choice([1, 3, 10]))
              for _ in range(rng.randrange(400))]
    m = Mix(window, fold=rng.choice([1, 3, window, 64, Mix.FOLD]))
    for k, s in enumerate(shards):
        m.add(s)
        if k % 97 == 0:
            m.report()
    assert m.report() == _mix_counted(shards, window)


def _mix_counted(shards: list[Any], window: int) -> dict[str, Any]:
    """What `Mix.report` says of `shards`, each window counted afresh."""
    windows = [shards[i:i + window] for i in range(len(shards) - window + 1)]
    if not windows:
        return {"window": window, "windows": 0}
    distinct = [len(set(w)) for w in windows]
    return {"window": window, "windows": len(windows), "distinct_shards_min": min(distinct),
            "distinct_shards_mean": round(sum(distinct) / len(windows), 1),
            "largest_shard_share": round(max(max(w.count(s) for s in w) for w in windows) / window, 4)}


def test_a_loaders_mix_runs_on_across_epochs_by_each_samples_shard(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stats()["mix"]` of a split's loader over two epochs counts every window of the samples
    it yielded by the shard each one's record is in — the windows across the epochs' boundary
    too (each epoch's plan numbers the shards its own way: the first's from the manifest's
    order, every split's samples, the next from the split's)."""
    cfg, _ = built
    noted: list[Any] = []

    class Noted(Mix):
        def add(self, shard: Any) -> None:
            noted.append(shard)
            super().add(shard)

    monkeypatch.setattr(loader_mod, "Mix", lambda: Noted(window=5))
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    got = [s["sha256"] for _ in range(2) for s in ld]
    with Store.open(cfg, writable=False) as store:
        shards = [store.index.lookup(bytes.fromhex(h)).shard_id for h in got]
    assert len(set(shards)) > 1 and noted == shards and ld.stats()["mix"] == _mix_counted(shards, 5)


def test_the_plan_keeps_each_shards_runs_in_offset_order_and_mixes_lanes() -> None:
    """The plan (no store): every sample once; a shard's records come in offset order before the
    buffer; neighbours before the buffer come from `lanes` different runs; the same inputs give
    the same plan and another seed another."""
    from hoardfs.datasets.model import Sample
    from hoardfs.fsd.core.entries import ObjectLoc

    samples, locs = [], {}
    for i in range(300):
        sha = hashlib.sha256(f"s{i}".encode()).digest()
        samples.append(Sample(path=f"p{i}", sha256=sha.hex(), size=100, ext=".png", key=sha.hex()[:16], node_id=i,
                              root_id=i, lineage=(i,), source_url=None, date=None, labels={}, cls=None,
                              class_index=None, split="train"))
        locs[sha] = ObjectLoc(bytes([i % 5]) * 16, 1000 + (i // 5) * 200, 100)
    a = plan(samples, locs, "m", "train", 1, 0, buffer=1, lanes=4, run_bytes=1000)
    assert sorted(a.post) == list(range(300))
    assert all(len(r.records) <= 10 for r in a.runs)
    for r in a.runs:
        assert [x.offset for x in r.records] == sorted(x.offset for x in r.records)
    # buffer 1 = no shuffle: four runs take turns
    assert [a.run_of[i] for i in a.post[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    firsts = {}
    for run in a.runs:  # a shard's runs come in offset order
        firsts.setdefault(run.shard_id, []).append(run.records[0].offset)
    assert all(v == sorted(v) for v in firsts.values())
    assert plan(samples, locs, "m", "train", 1, 0).post == plan(samples, locs, "m", "train", 1, 0).post
    assert plan(samples, locs, "m", "train", 2, 0).post != plan(samples, locs, "m", "train", 1, 0).post


TORCH = importlib.util.find_spec("torch") is not None


def _lengths(sample: dict[str, Any]) -> tuple[int, int]:
    """A transform (a module's function: a worker started by spawn unpickles it)."""
    return len(sample["bytes"]), len(sample["key"])


@pytest.mark.services  # (importing PyPI's torch starts a process)
@pytest.mark.needs(TORCH, "TORCH MISSING (the search extra): make search")
def test_the_torch_wrapper_under_a_dataloader_with_two_workers(built) -> None:
    """TorchDataset under a real DataLoader(num_workers=2): the sequence of the Loader itself,
    each sample once; resumed from state_dict(consumed) with 1 worker it goes on identically."""
    from torch.utils.data import DataLoader

    from hoardfs.loader import TorchDataset

    cfg, _ = built
    keys = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    ds = TorchDataset("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    got = [s["key"] for s in DataLoader(ds, batch_size=None, num_workers=2)]
    assert got == keys
    state = ds.state_dict(5)
    rest = TorchDataset.from_state_dict(state, config_path=cfg.source)
    handed = list(DataLoader(rest, batch_size=None, num_workers=1))
    assert [s["key"] for s in handed] == keys[5:]
    assert ds.state_dict(last=handed[0]) == rest.state_dict(1) == {**state, "position": 6}
    assert TorchDataset.from_state_dict({**state, "block": 3, "worker": 0}, block=4, config_path=cfg.source).block == 4
    batched = TorchDataset("pets@1", "train", 7, 0, block=4, config_path=cfg.source, **SMALL)
    batches = list(DataLoader(batched, batch_size=4, num_workers=2, collate_fn=lambda b: [s["key"] for s in b]))
    assert [k for b in batches for k in b] == keys
    # a transform each worker applies: (the bytes' length, the key's length) through the default collate
    shaped = TorchDataset("pets@1", "train", 7, 0, block=4, config_path=cfg.source,
                          transform=_lengths, **SMALL)
    sizes = {s["key"]: (len(s["bytes"]), len(s["key"])) for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source,
                                                                       **SMALL)}
    collated = list(DataLoader(shaped, batch_size=4, num_workers=2))
    assert [(int(a), int(b)) for x, y in collated for a, b in zip(x, y, strict=True)] == [sizes[k] for k in keys]
    assert TorchDataset.from_state_dict(shaped.state_dict(3), transform=len, config_path=cfg.source).transform is len
    with pytest.raises(LoaderError, match=r"state_dict\(last=…\) takes a sample as the loader hands it out") as e:
        shaped.state_dict(last=collated[0])
    assert "\n" not in str(e.value)
    for bad, match in (({"x": 1}, r"not a loader state"), ({**state, "workers": 2, "worker": 0, "block": 1},
                                                             r"is worker 0's of 2: a TorchDataset resumes from the whole")):
        with pytest.raises(LoaderError, match=match) as e:
            TorchDataset.from_state_dict(bad, config_path=cfg.source)
        assert "\n" not in str(e.value)


@pytest.mark.services  # (importing PyPI's torch starts a process)
@pytest.mark.needs(TORCH, "TORCH MISSING (the search extra): make search")
def test_a_sample_deleted_before_the_epoch_leaves_dataloader_batches_in_order(built) -> None:
    """A sample deleted before the epoch (`hoard delete --node`): a DataLoader over 2 or 3
    workers in batches of 4 (drop_last or not) hands out the one-worker sequence without it —
    no worker's batch filled from its next block —, and resuming after a batch with
    `state_dict(last=…)` repeats and skips nothing."""
    from torch.utils.data import DataLoader

    from hoardfs.loader import TorchDataset

    cfg, _ = built
    whole = list(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    res = _hoard(cfg, "delete", "--node", whole[1]["sha256"])
    assert res.returncode == 0, res.stderr
    keys = [s["key"] for s in whole if s["key"] != whole[1]["key"]]
    assert _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)) == keys
    for workers in (2, 3):
        for drop_last in (False, True):
            ds = TorchDataset("pets@1", "train", 7, 0, block=4, config_path=cfg.source, **SMALL)
            batches = list(DataLoader(ds, batch_size=4, num_workers=workers, drop_last=drop_last,
                                      collate_fn=lambda b: b))
            got = [s["key"] for b in batches for s in b]
            assert got == (keys[:len(keys) // 4 * 4] if drop_last else keys), (workers, drop_last)
            seen = got[:8]
            rest = _keys(Loader.from_state_dict(ds.state_dict(last=batches[1][-1]), config_path=cfg.source))
            assert seen + rest == keys, (workers, drop_last)


def test_an_epoch_goes_on_through_a_batch_deletion_and_a_gc(built, pg) -> None:
    """Mid-epoch, `hoard delete --batch` then `hoard gc --threshold 1.0` (which frees the batch's
    shards, their files deleted — some already read ahead, or open): the epoch goes on — the
    samples still live come in the planned order with their right bytes, and none of the
    deleted batch's after the deletion, read ahead or not."""
    cfg, _ = built
    whole = [(s["key"], s["sha256"]) for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, ahead=1, **SMALL)
    it = iter(ld)
    got = [next(it) for _ in range(3)]
    res = _hoard(cfg, "delete", "--batch", "gallery-s71-b001", "--yes")
    assert res.returncode == 0, res.stderr
    gc = _hoard(cfg, "gc", "--threshold", "1.0", "--json")
    assert gc.returncode == 0, gc.stderr
    rep = json.loads(gc.stdout)
    assert rep["compacted"] >= 1 and rep["replicas_deleted"] >= 1, rep
    got += list(it)
    dead = {r[0] for r in pg.execute("SELECT encode(n.sha256, 'hex') FROM node n JOIN physical_content pc "
                                     "USING (node_id) WHERE pc.is_deleted")}
    assert dead & {sha for _, sha in whole[3:]}
    assert [s["key"] for s in got] == [k for k, _ in whole[:3]] + [k for k, sha in whole[3:] if sha not in dead]
    assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] for s in got)


def test_a_train_and_a_val_loader_iterate_at_once(built) -> None:
    """Two loaders of one store iterating at the same time in one process (train and val, the
    usual loop) share its index: each yields what it yields alone."""
    cfg, _ = built
    train = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    val = _keys(Loader("pets@1", "val", 7, 0, config_path=cfg.source, **SMALL))
    a = iter(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    b = iter(Loader("pets@1", "val", 7, 0, config_path=cfg.source, **SMALL))
    pairs = list(zip(a, b, strict=False))
    assert [x["key"] for x, _ in pairs] == train[:len(pairs)] and [y["key"] for _, y in pairs] == val[:len(pairs)]
    assert len(pairs) == len(val) >= 3 and len(train) > len(val)
    assert [x["key"] for x in a] == train[len(pairs) + 1:]  # (zip took one more of `a` before `b` ended)


#: a training loop: each sample's epoch and key appended to OUT, then the loader's state saved
#: (atomically) to STATE; SIGKILLed by itself after KILL_AT samples of this run
TRAINER = """
import json, os, signal, sys
from hoardfs.loader import Loader
state, out, kill_at, cfg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
small = json.loads(sys.argv[5])
if os.path.exists(state):
    with open(state) as f:
        ld = Loader.from_state_dict(json.load(f), config_path=cfg)
else:
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg, **small)
done = 0
with open(out, "a") as f:
    while ld.epoch < 2:
        for s in ld:
            f.write(f"{s['epoch']} {s['key']}\\n")
            f.flush()
            with open(state + ".tmp", "w") as g:
                json.dump(ld.state_dict(), g)
            os.replace(state + ".tmp", state)
            done += 1
            if done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_training_loop_killed_twice_resumes_the_same_sequence(built, tmp_path: Path) -> None:
    """A training process SIGKILLed mid-epoch (its readers mid-read), then again mid-way through
    the next epoch after resuming from its saved state, then run to the end: the samples it saw,
    in order, are exactly those of two uninterrupted epochs."""
    cfg, _ = built
    whole = [f"{e} {k}" for e, k in _epochs(cfg, **SMALL)]
    state, out = tmp_path / "state.json", tmp_path / "seen.txt"
    n = len(whole) // 2
    for kill_at in (n // 3, n, 0):  # mid-epoch; in the second epoch (n more); not killed
        res = subprocess.run([sys.executable, "-c", TRAINER, str(state), str(out), str(kill_at), str(cfg.source),
                              json.dumps(SMALL)], capture_output=True, text=True, timeout=300)
        assert res.returncode == (-9 if kill_at else 0), res.stderr
    assert out.read_text().splitlines() == whole


def test_an_epoch_goes_on_while_a_batch_is_ingested(built) -> None:
    """`hoard ingest --here` of a new batch mid-epoch (new shards written, the index changed
    under the loader's read-only store): the epoch yields exactly its planned sequence."""
    cfg, _ = built
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    zone3a = cfg.ssd.zone_path("3A")
    batch = generate(zone3a, Spec(seed=99, batches=1, items_per_batch=25, large_max_mb=1, ready_signal=True,
                                  sources=("gallery",)))[0]
    it = iter(Loader("pets@1", "train", 7, 0, config_path=cfg.source, ahead=1, **SMALL))
    got = [next(it)["key"] for _ in range(3)]
    res = _hoard(cfg, "ingest", "--here", str(zone3a / batch.batch_id))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (zone3a / batch.batch_id).exists()  # ingested, done
    got += [s["key"] for s in it]
    assert got == whole


def test_a_workers_own_state_resumes_that_worker(built) -> None:
    """One worker of a split (2 workers in blocks of 1, 3 in blocks of 2) stopped after two
    samples resumes from its own state with exactly the rest of its part; that state is refused
    in one line for another split, and the whole sequence's state splits over any workers."""
    cfg, _ = built
    keys = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    for workers, block in ((2, 1), (3, 2)):
        for w in range(workers):
            split = {"worker": w, "workers": workers, "block": block}
            part = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **split, **SMALL))
            ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **split, **SMALL)
            it = iter(ld)
            got = [next(it)["key"] for _ in range(2)]
            state = json.loads(json.dumps(ld.state_dict()))
            it.close()
            assert got + _keys(Loader.from_state_dict(state, config_path=cfg.source)) == part, (workers, block, w)
    with pytest.raises(LoaderError, match=r"it resumes that worker only; to split over other workers") as e:
        Loader.from_state_dict(state, config_path=cfg.source, workers=4)
    assert "\n" not in str(e.value)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    it = iter(ld)
    seen = [next(it)["key"] for _ in range(5)]
    whole_state = ld.state_dict()
    it.close()
    parts = [_keys(Loader.from_state_dict(whole_state, config_path=cfg.source, worker=w, workers=2))
             for w in range(2)]
    rest = [k for pair in zip(*parts, strict=False) for k in pair] + parts[0][len(parts[1]):]
    assert seen + rest == keys


def test_forged_or_foreign_states_are_refused_in_one_line(built, pg) -> None:
    """A state past the end of its epoch, with a dataset that is not a name, or saved from
    another dataset of the same name and version (another manifest): a LoaderError of one line
    naming it, never an epoch silently skipped or another order."""
    cfg, _ = built
    state = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL).state_dict()
    n = len(Loader("pets@1", "train", config_path=cfg.source))
    for bad, match in (({**state, "position": n + 1}, rf"position={n + 1}: past the end of pets@1's train split"),
                       ({**state, "dataset": 5}, r"dataset 5 or split 'train' is not a name"),
                       ({**state, "manifest": "0" * 16}, r"the loader state is of another pets@1 \(manifest 0000"),
                       ({**state, "origin": state["position"] + 1}, r"origin=1: at most position=0")):
        with pytest.raises(LoaderError, match=match) as e:
            Loader.from_state_dict(bad, config_path=cfg.source)
        assert "\n" not in str(e.value)


def test_a_user_who_may_only_read_the_store_is_told_in_one_line(built) -> None:
    """A loader made by the store's user, iterated by a user who may only read the store's files
    (nobody, a copy of the home readable by all): refused by a LoaderError of one line naming
    the file and what to run it as — no PermissionError traceback, nothing written."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with worker_reachable_home(Path(cfg.source).parent) as home:
        shutil.rmtree(home)
        shutil.copytree(Path(cfg.source).parent, home, symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(home)], check=True)
        ld.cfg = config.load(home / "hoard.toml")
        (home / "loader.pickle").write_bytes(pickle.dumps(ld))
        before = sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*"))
        code = ("import pickle, sys\nld = pickle.load(open(sys.argv[1], 'rb'))\ntry:\n    list(ld)\n"
                "except Exception as e:\n    print(type(e).__name__, e)\n")
        res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                              "-c", code, str(home / "loader.pickle")], capture_output=True, text=True, timeout=120,
                             cwd="/")
        assert sorted((str(p), p.stat().st_mtime_ns) for p in home.rglob("*")) == before
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert res.stdout.startswith("LoaderError this user cannot open the store for a training loader (Permission "
                                 "denied: ") and "run it as the store's user or a member of its group" in res.stdout
    assert res.stdout.count("\n") == 1


@pytest.mark.services  # (importing PyPI's torch starts a process)
@pytest.mark.needs(TORCH, "TORCH MISSING (the search extra): make search")
def test_each_dataloader_iteration_is_the_next_epoch(built) -> None:
    """Persistent DataLoader workers (which never see the main process's `set_epoch`) and
    num_workers=0 without `set_epoch` read epoch 1 on the second iteration — not epoch 0 again —,
    and the state after it names epoch 1."""
    from torch.utils.data import DataLoader

    from hoardfs.loader import TorchDataset

    cfg, _ = built
    e0, e1 = (_keys(Loader("pets@1", "train", 7, e, config_path=cfg.source, **SMALL)) for e in (0, 1))
    assert e0 != e1
    for workers, persistent in ((2, True), (0, False)):
        ds = TorchDataset("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
        dl = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=persistent)
        assert [s["key"] for s in dl] == e0
        ds.set_epoch(1)
        second = list(dl)
        assert [s["key"] for s in second] == e1, (workers, persistent)
        assert ds.state_dict(3)["epoch"] == ds.state_dict(last=second[2])["epoch"] == 1
        assert ds.state_dict(last=second[2])["position"] == 3
    ds = TorchDataset("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    assert [[s["key"] for s in ds] for _ in range(2)] == [e0, e1]
    assert ds.state_dict(3) == {**ds.state_dict(0), "position": 3} and ds.state_dict(0)["epoch"] == 1


def test_the_first_worker_reads_every_run_whole_and_the_others_their_own_records(built) -> None:
    """Of 2 or 4 workers (blocks of 1 and of 3), the first reads every run whole, off the disk
    one process reads it from, in the same ranges — its own samples' runs and the others' — so
    the disks are read once for all; each other worker takes only its own records, off the
    same disks (from the page cache the workers share: `runs.Follow`). Each yields only its own
    samples, verified, all of them between them."""
    cfg, _ = built
    one = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        p = one.plan(store)  # (epoch 0's: iterating moves on to epoch 1)
        assert sorted(i for r in p.run_samples for i in r) == list(range(len(one)))  # nothing withheld
        per_run = [(g.disk, g.nbytes) for g in read_runs(store, [Run(r.shard_id, r.records) for r in p.runs])]
    keys = _keys(one)
    whole: dict[str, int] = {}
    records: dict[str, int] = {}  # (a run the page cache holds is read record by record: `runs.Later`)
    for r, (disk, n) in enumerate(per_run):
        whole[disk] = whole.get(disk, 0) + n
        records[disk] = records.get(disk, 0) + p.runs[r].size
    alone = one.stats()["per_disk_bytes"]
    assert set(alone) == set(whole) and len(whole) >= 2
    assert all(records[d] <= alone[d] <= whole[d] for d in whole), (records, alone, whole)
    for block in (1, 3):
        for workers in (2, 4):
            yielded: list[str] = []
            for w in range(workers):
                ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, worker=w, workers=workers, block=block,
                            **SMALL)
                got = list(ld)
                assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] for s in got)
                yielded += [s["key"] for s in got]
                expect: dict[str, int] = {}
                if w == 0:
                    for r in set(p.run_of):
                        expect[per_run[r][0]] = expect.get(per_run[r][0], 0) + per_run[r][1]
                else:
                    for k, i in enumerate(p.post):
                        if (k // block) % workers == w:
                            rec = next(x for x in p.runs[p.run_of[i]].records if x.sha == one.shas[i])
                            disk = per_run[p.run_of[i]][0]
                            expect[disk] = expect.get(disk, 0) + rec.length + fmt.RECORD_HEADER_SIZE
                assert ld.stats()["per_disk_bytes"] == expect, (block, workers, w)
            assert sorted(yielded) == sorted(keys)


def _uncached(path: Path, offset: int = 0, length: int = 0) -> None:
    """The file's pages out of the page cache (written back first) — those of offset..offset+
    length alone when `length` is given."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _file_out_of_the_cache(tmp_path: Path, size: int) -> Iterator[tuple[int, bytes, Path]]:
    """A file of `size` random bytes, open, its pages out of the page cache: (fd, bytes, path)."""
    data = os.urandom(size)
    path = tmp_path / "shard"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        _uncached(path)
        yield fd, data, path
    finally:
        os.close(fd)


def test_in_page_cache_tells_cached_bytes_without_reading_them(tmp_path: Path) -> None:
    """`in_page_cache` (mincore of an untouched mapping): a file's range out of the page cache is
    not cached, and asking leaves it so (nothing read, no read started); read, it is; an empty
    range is; a range past the end of the file is not."""
    with _file_out_of_the_cache(tmp_path, 16 << 20) as (fd, data, _path):
        if disks.in_page_cache(fd, 0, len(data)):
            pytest.skip("this file system keeps the file's pages cached (no page cache to ask)")
        assert not disks.in_page_cache(fd, 5000, 70_000) and not disks.in_page_cache(fd, 5000, 70_000)
        assert os.pread(fd, 200_000, 0) == data[:200_000]
        assert disks.in_page_cache(fd, 5000, 70_000) and disks.in_page_cache(fd, 0, 4096)
        assert not disks.in_page_cache(fd, 0, len(data)) and not disks.in_page_cache(fd, 12 << 20, 4096)  # (never read)
        assert disks.in_page_cache(fd, 10, 0)
        assert not disks.in_page_cache(fd, len(data) + (1 << 20), 4096)
        # parts of a range (a run's records): only their pages count, not the gaps between them
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # (no read-ahead past what is read)
        far = 8 << 20
        assert os.pread(fd, 10_000, far) == data[far:far + 10_000]
        parts = [(5000, 3000), (130_000, 100), (far + 500, 9000)]
        assert not disks.in_page_cache(fd, 5000, far + 9500) and disks.in_page_cache(fd, 5000, far + 9500, parts)
        assert not disks.in_page_cache(fd, 5000, far + 9500, [*parts, (4 << 20, 1)])
        assert disks.in_page_cache(fd, 0, far, [(8191, 1), (0, 0)])


def test_pages_cached_counts_the_cached_pages_of_points_without_reading_them(tmp_path: Path) -> None:
    """`pages_cached` (the warm replica's choice): how many of the points' pages the page cache
    holds — a point outside the range never counted, an empty range none, asking reads nothing."""
    with _file_out_of_the_cache(tmp_path, 16 << 20) as (fd, data, _path):
        if disks.in_page_cache(fd, 0, len(data)):
            pytest.skip("this file system keeps the file's pages cached (no page cache to ask)")
        points = [0, 1 << 20, 2 << 20, 9 << 20, 15 << 20]
        assert disks.pages_cached(fd, 0, len(data), points) == 0
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # (no read-ahead past what is read)
        assert os.pread(fd, 4096, 1 << 20) == data[1 << 20:(1 << 20) + 4096]
        assert os.pread(fd, 10, 9 << 20) == data[9 << 20:(9 << 20) + 10]
        assert disks.pages_cached(fd, 0, len(data), points) == 2
        assert disks.pages_cached(fd, 0, len(data), points) == 2  # (and asking read none of the others)
        assert disks.pages_cached(fd, 2 << 20, 1 << 20, points) == 0  # (points outside the range)
        assert disks.pages_cached(fd, 1 << 20, 0, points) == 0
        assert disks.pages_cached(fd, 0, len(data), [(9 << 20) + 4095, (1 << 20) + 4096]) == 1


def test_in_page_cache_asks_a_ranges_parts_to_the_page(tmp_path: Path) -> None:
    """`in_page_cache` with parts (a run's records): a part's first and last byte decide which
    pages it needs, whatever the span's alignment; zero-length parts need none; a part outside
    the span is never said cached; parts far apart are asked apart, the pages between them not
    (a version's run may span most of a shard)."""
    page = mmap.PAGESIZE
    with _file_out_of_the_cache(tmp_path, 512 * page) as (fd, data, _path):
        if disks.in_page_cache(fd, 0, len(data)):
            pytest.skip("this file system keeps the file's pages cached (no page cache to ask)")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # (no read-ahead past what is read)
        far = 4 * page + disks.CACHE_LOOK_JOIN + 8 * page
        for at in (4 * page, far):
            assert os.pread(fd, page, at) == data[at:at + page]
        if any(disks.in_page_cache(fd, at, 1) for at in (3 * page, 5 * page, far - page, far + page)):
            pytest.skip("read-ahead around the pages read")
        assert disks.in_page_cache(fd, 0, 16 * page, [(4 * page, page)])
        assert disks.in_page_cache(fd, 0, 16 * page, [(5 * page - 1, 1)])
        assert not disks.in_page_cache(fd, 0, 16 * page, [(4 * page, page + 1)])  # (its last byte on page 5)
        assert not disks.in_page_cache(fd, 0, 16 * page, [(4 * page - 1, 2)])  # (its first byte on page 3)
        assert disks.in_page_cache(fd, 3 * page + 100, 10 * page, [(4 * page, page)])  # (a span not page aligned)
        assert not disks.in_page_cache(fd, 3 * page + 100, 10 * page, [(3 * page + 100, 1)])
        assert not disks.in_page_cache(fd, 3 * page + 100, 10 * page, [(13 * page + 99, 1)])  # (the span's last byte)
        assert disks.in_page_cache(fd, 0, 16 * page, [(4 * page, 0), (9 * page, 0), (4 * page + 7, 1)])
        # a part outside the span: not cached, whatever its pages hold
        assert not disks.in_page_cache(fd, 4 * page, page, [(4 * page, page), (10 * page, page)])
        assert not disks.in_page_cache(fd, 4 * page, page, [(0, 1)])
        assert not disks.in_page_cache(fd, 5 * page, page, [(4 * page, page)])
        # parts further apart than CACHE_LOOK_JOIN: the pages between them are not asked
        assert disks.in_page_cache(fd, 4 * page, far + page - 4 * page, [(far, page), (4 * page, page)])
        assert not disks.in_page_cache(fd, 4 * page, far + page - 4 * page, [(4 * page, page), (far - page, 2 * page)])


def test_a_follower_takes_a_range_from_the_page_cache_as_another_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pread_cached_into`: the bytes a leader reads off the disk meanwhile, all from the page
    cache; with no leader, the same bytes (its looks start the reads); where the file system
    takes no page-cache-only reads, the same bytes read plainly, said so; a range past the
    file's end: what there is."""
    with _file_out_of_the_cache(tmp_path, 3 << 20) as (fd, data, path):
        try:
            os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
            pytest.skip("this file system keeps the file's pages cached (no page cache to follow)")
        except BlockingIOError:
            pass
        buf = memoryview(bytearray(len(data)))
        assert disks.pread_cached_into(fd, buf, 0, wait_s=10)[0] == len(data) and bytes(buf) == data
        _uncached(path)
        with monkeypatch.context() as m:
            m.delattr(os, "RWF_NOWAIT")
            buf = memoryview(bytearray(len(data)))
            assert disks.pread_cached_into(fd, buf, 0) == (len(data), False) and bytes(buf) == data
        _uncached(path)
        out: list[tuple[int, bool]] = []
        buf = memoryview(bytearray(len(data)))
        follower = threading.Thread(target=lambda: out.append(disks.pread_cached_into(fd, buf, 0, wait_s=10)))
        follower.start()
        assert os.pread(fd, len(data), 0) == data  # the leader, reading as the follower looks
        follower.join(10)
        assert out == [(len(data), True)] and bytes(buf) == data
        tail = memoryview(bytearray(1 << 20))
        assert disks.pread_cached_into(fd, tail, len(data) - 100) == (100, True)
        assert bytes(tail[:100]) == data[-100:]


def test_workers_follow_the_first_ones_reads_and_one_alone_reads_for_itself(
        built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers but the first of a split take their ranges from the page cache as the first reads
    them off the disks: two workers iterating at once, the shard files out of the page cache,
    yield their own samples, verified, between them each once. A follower alone (a worker's
    state resumed by itself) gets the same samples."""
    cfg, _ = built
    monkeypatch.setattr(disks, "FOLLOW_WAIT_S", 0.3)
    keys = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    shard_files = [p for d in cfg.disks for p in (Path(d.path) / "shards").rglob("*") if p.suffix in (".shard", ".open")]
    assert shard_files

    def part(w: int, out: dict) -> None:
        ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, worker=w, workers=2, block=3, **SMALL)
        out[w] = list(ld)

    alone: dict[int, list] = {}
    for f in shard_files:
        _uncached(f)
    part(1, alone)
    both: dict[int, list] = {}
    for f in shard_files:
        _uncached(f)
    threads = [threading.Thread(target=part, args=(w, both)) for w in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [s["key"] for s in both[1]] == [s["key"] for s in alone[1]]
    assert sorted(s["key"] for w in (0, 1) for s in both[w]) == sorted(keys)
    assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] for w in (0, 1) for s in both[w])
    # the files in the page cache now: the first reads every run whole, the other its own records alone
    read = {}
    for w in (0, 1):
        ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, worker=w, workers=2, block=3, **SMALL)
        assert [s["key"] for s in ld] == [s["key"] for s in both[w]]
        read[w] = ld.stats()["read_bytes"]
    assert 0 < read[1] < read[0] * 0.8, read


def test_a_loaders_parts_are_the_worker_loaders_on_its_own_plan(built) -> None:
    """`Loader.part(w, W, epoch, position)` yields what `Loader(…, worker=w, workers=W)` does, for
    1, 2, 4 and 8 workers and from a position mid-epoch, its parts together the whole sequence —
    on the plan the loader made (no manifest read, no plan made again), as a TorchDataset's
    DataLoader workers use it; another epoch's part plans its own epoch."""
    cfg, _ = built
    whole = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL).planned()
    keys = _keys(whole.part(0, 1, 0, 0))
    assert keys == _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    for workers in (1, 2, 4, 8):
        for position in (0, 5):
            parts = [whole.part(w, workers, 0, position) for w in range(workers)]
            assert all(p._plan is whole._plan for p in parts)  # (shared, not made again)
            got = [_keys(p) for p in parts]
            assert got == [_keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, position=position,
                                        worker=w, workers=workers, **SMALL)) for w in range(workers)]
            assert [got[k % workers][k // workers] for k in range(len(keys) - position)] == keys[position:]
    later = whole.part(0, 1, 1, 0)
    assert _keys(later) == _keys(Loader("pets@1", "train", 7, 1, config_path=cfg.source, **SMALL)) != keys
    assert later._plan is not whole._plan and whole._plan_epoch == 0
    with pytest.raises(LoaderError, match=r"Loader.part\(2, 2, 0, 0\): a worker of 0..1") as e:
        whole.part(2, 2, 0, 0)
    assert "\n" not in str(e.value)


def test_close_from_a_signal_handler_mid_sample_ends_the_epoch_there_and_loses_no_sample(built) -> None:
    """`Loader.close()` from a signal handler while the loader makes a sample does not raise: the
    iteration ends (its readers stopped), and the next one goes on with no sample lost or repeated."""
    cfg, _ = built
    whole = _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    errors: list[BaseException] = []
    closed: list[int] = []

    def handler(_signum: int, _frame: object) -> None:
        if not closed:
            closed.append(1)
            try:
                ld.close()
            except BaseException as e:  # (recorded: the test names it)
                errors.append(e)

    got: list[str] = []
    old = signal.signal(signal.SIGALRM, handler)
    try:
        for s in ld:
            got.append(s["key"])
            if len(got) == 1:
                signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert closed and errors == []
    assert 0 < len(got) < len(whole)
    assert not [t for t in threading.enumerate() if t.name.startswith("loader-read")]
    assert got + _keys(ld) == whole


ABANDONED = """
import sys, threading, time
from hoardfs.loader import Loader
ld = Loader("pets@1", "train", 7, 0, config_path=sys.argv[1], buffer=7, lanes=3, run_bytes=96 << 10)
it = iter(ld)
print(next(it)["key"], flush=True)
val = Loader("pets@1", "val", 7, 0, config_path=sys.argv[1], buffer=7, lanes=3, run_bytes=96 << 10)
started = threading.Event()

def consume():
    for s in val:
        started.set()
        time.sleep(0.05)

threading.Thread(target=consume, daemon=True).start()
started.wait(30)
"""


def test_a_script_ending_mid_epoch_exits_at_once(built) -> None:
    """A script that ends with an iteration still going (held by a global, as `it = iter(ld);
    next(it)` leaves it) and another being read by a daemon thread: the interpreter exits at
    once and quietly — no wait for readers its teardown froze, no store closed under them."""
    cfg, _ = built
    res = subprocess.run([sys.executable, "-c", ABANDONED, str(cfg.source)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() and not res.stderr.strip(), res.stderr


FORKED = """
import os, sys, time
from hoardfs.loader import Loader
ld = Loader("pets@1", "train", 7, 0, config_path=sys.argv[1], buffer=7, lanes=3, run_bytes=96 << 10)
it = iter(ld)
seen = [next(it)["key"] for _ in range(3)]
from hoardfs.datasets import loader
index = next(iter(loader._OPEN.values()))[0].index
txn = index.env.begin()  # (a read the parent has going as the child ends: its slot in LMDB's reader table)
loader._OPEN_LOCK.acquire()  # (held by another thread of the parent's at the fork, say)
pid = os.fork()
if pid == 0:
    it.close()  # a forked child ending its copy of the iteration (its readers, its store's use),
    sys.exit(0)  # then as a script ends: its exit hooks, then the teardown
loader._OPEN_LOCK.release()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), str(os.getpid()) in index.env.readers().split(), flush=True)
txn.abort()
seen += [s["key"] for s in it]
print(" ".join(seen), flush=True)
"""


def test_a_child_forked_mid_epoch_exits_and_leaves_the_epoch_to_its_parent(built) -> None:
    """A process forked mid-epoch (the iteration, its readers and its store inherited) that ends
    normally: it exits at once, closing none of what its parent reads with (an LMDB environment
    closed in the child frees the parent's reader slots) — the parent's epoch goes on to the
    same sequence as one never forked."""
    cfg, _ = built
    res = subprocess.run([sys.executable, "-c", FORKED, str(cfg.source)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    status, keys = res.stdout.splitlines()
    assert status == "0 True"  # (exited; the parent's reader slot still its own)
    assert keys.split() == _keys(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
