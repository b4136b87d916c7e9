"""`hoard index rebuild` writes the index at this hoardfs's format itself: its `held`
table filled from the manifests and its `objects` table appended, both in key order, before the
swap — not left to a migration by the first writer after it, which put `held`'s keys in the
order the manifests name them (57 % of a rebuild at 10 M objects). The index swapped in is the
one the store grew, table by table, with every transaction a few entries; and the fill's
sorted runs keep a slice of its keys in memory, not all of them."""

from __future__ import annotations

import hashlib
import shutil
import tracemalloc
from pathlib import Path

import lmdb
import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats, held, txnlog
from hoardfs.fsd.core.index import Index
from hoardfs.fsd.maintenance import reindex
from hoardfs.fsd.outputs.manifest import batch_manifest
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, flip_byte


def _tables(index_dir: Path) -> dict[str, dict[bytes, bytes]]:
    """The tables an index rebuild makes from the disks, and its format, as stored."""
    env = lmdb.open(str(index_dir), max_dbs=24, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = {name: {bytes(k): bytes(v) for k, v in txn.cursor(db=env.open_db(name.encode(), txn=txn,
                                                                                     create=False))}
                   for name in ("objects", "held", "live", "batches", "views", "rooted")}
            out["rooted"] = dict.fromkeys(out["rooted"], b"")  # (a replayed mark's time and reason are the rebuild's)
            out["format"] = {b"": bytes(txn.get(formats.INDEX_KEY.encode(), db=env.open_db(b"meta", txn=txn)))}
        return out
    finally:
        env.close()


def _register(store: Store, batch_id: str, shas: list[bytes]) -> None:
    body = batch_manifest(batch_id, "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(shas)},
                          {f"f{i}": 0 for i in range(len(shas))}, [], [])
    manifest = store.put_bytes(body).sha256
    store.register_batch(batch_id, {"source": "t", "manifest": manifest, "files": len(shas), "bytes": 0},
                         holds=shas + [bytes.fromhex(manifest)])


@pytest.mark.services  # (a view's definition starts a process)
def test_a_rebuild_swaps_in_the_grown_index_at_this_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2, write_ack=2))
    datas = [hashlib.sha256(b"%d" % i).digest() * (1 + i % 61) for i in range(1500)]
    with Store.open(cfg, init=True) as store:
        shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]
        for b in range(6):  # batches sharing objects, and a view
            _register(store, f"b{b}", shas[b * 200:b * 200 + 400])
        define_view_rows(store, "V", [(f"v/{i}.bin", s.hex()) for i, s in enumerate(shas[1200::3])])
        store.index.mark(store.index.rooted, shas[1400:], "hoard put")
    grown = _tables(cfg.index_dir)
    assert len(grown["held"]) > 2000 and grown["live"] and grown["format"][b""] == str(formats.INDEX).encode()
    shutil.rmtree(cfg.index_dir)  # the SSD died

    # every write transaction a few entries: the appends and the held runs fall around many seams
    monkeypatch.setattr(txnlog, "TXN_ENTRIES", 200)
    monkeypatch.setattr(reindex, "CHUNK", 7)
    with reindex._store_idle(cfg, "index rebuild") as ssd_uuid:  # (rebuild_index without its first writer)
        rep = reindex._rebuild_index(cfg, ssd_uuid)
    assert rep.objects == len(grown["objects"]) and not rep.damaged, rep
    assert _tables(cfg.index_dir) == grown  # as swapped in: nothing is left for a migration
    assert not list(tmp_path.glob("ssd/*.spill")) and not list(tmp_path.glob("ssd/held-*"))
    with Store.open(cfg) as store:
        assert store.index.held_ready() and store.index.live_ready()
        for sha, data in zip(shas, datas, strict=True):
            assert store.get(sha.hex()) == data


def _fill(folder: Path, manifests: int, files: int) -> tuple[int, int]:
    """A new index at `folder` with `manifests` registered batch manifests of `files` objects each,
    an entry of one of them already there (the fill then puts where it cannot append) and one of a
    manifest nothing registers (the sweep removes it), filled: the fill's peak allocation and how
    many keys it made — the table checked to be every (object, manifest) pair."""
    index = Index(folder / "index")
    docs: dict[str, bytes] = {}
    want: set[bytes] = set()
    for b in range(manifests):
        shas = [hashlib.sha256(b"%d:%d" % (b, i)).digest() for i in range(files)]
        body = batch_manifest(f"b{b}", "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(shas)},
                              {f"f{i}": 0 for i in range(len(shas))}, [], [])
        man = hashlib.sha256(body).digest()
        docs[man.hex()] = body
        index.put_batch(f"b{b}", {"source": "t", "manifest": man.hex(), "files": len(shas), "bytes": 0})
        want |= {held.pair(s, man) for s in [*shas, man]}
    with index.env.begin(write=True, db=index.held) as txn:
        txn.put(sorted(want)[len(want) // 2], b"")
        txn.put(held.pair(b"\x07" * 32, b"\x09" * 32), b"")
    tracemalloc.start()
    try:
        index.fill_held(docs.__getitem__, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with index.env.begin(db=index.held) as txn:
        assert {bytes(k) for k, _ in txn.cursor()} == want
    index.close()
    assert not list(folder.glob("held-*"))  # the sorted runs are removed
    return peak, len(want)


def test_the_held_fill_keeps_a_slice_of_its_keys_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four times the keys add less than a quarter of what the added keys take in memory to the
    fill's peak (what stays: a spill file's buffer per partition, one transaction's keys, one
    manifest read): they wait in sorted runs on disk, a partition in memory at a time."""
    monkeypatch.setattr(txnlog, "TXN_ENTRIES", 2000)
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small, n_small = _fill(tmp_path / "small", 20, 500)
    large, n_large = _fill(tmp_path / "large", 80, 500)
    in_memory = (n_large - n_small) * (held.OBJ + held.MAN + 33 + 8)  # (a bytes object each, a list's pointer)
    assert large - small < in_memory / 4, (small, large, in_memory)


@pytest.mark.expect_log(r"disk d[0-9]: read error on shard [0-9a-f]+: payload checksum mismatch", level="WARNING")
@pytest.mark.expect_log(r"the index stays at format 2 \(batch b1: its manifest [0-9a-f]+ cannot be read \(object "
                        r"[0-9a-f]+: no good replica", level="WARNING")
def test_a_rebuild_that_cannot_read_a_manifest_never_swaps_in_format_5(tmp_path: Path) -> None:
    """A registered batch's manifest damaged on every replica when the SSD is lost: the rebuild
    names it and leaves the index at the format before `held` — never format 5 with the
    batch's entries missing (gc and deletion would take its objects as unheld) —, every
    writable open tries the fill again, and once the manifest reads (here: its shard put
    back) the migration fills `held` to what the store grew."""
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2, write_ack=2))
    datas = [hashlib.sha256(b"%d" % i).digest() * (1 + i % 13) for i in range(120)]
    with Store.open(cfg, init=True) as store:
        shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]
        _register(store, "b0", shas[:80])
        _register(store, "b1", shas[40:])
        manifest = bytes.fromhex(store.index.get_batch("b1")["manifest"])
        loc = store.index.lookup(manifest)
        shard = store.index.get_shard(loc.shard_id).hex
    grown = _tables(cfg.index_dir)
    replicas = sorted(tmp_path.glob(f"d*/shards/*/{shard}.shard"))
    kept = {p: p.read_bytes() for p in replicas}
    for p in replicas:
        flip_byte(p, loc.offset + 3)
    shutil.rmtree(cfg.index_dir)  # the SSD died
    with reindex._store_idle(cfg, "index rebuild") as ssd_uuid:
        rep = reindex._rebuild_index(cfg, ssd_uuid)
    assert any("held table not filled" in d and manifest.hex() in d for d in rep.damaged), rep.damaged
    assert _tables(cfg.index_dir)["format"][b""] == str(formats.INDEX_HELD_LONG - 1).encode()
    with Store.open(cfg) as store:  # (its migration cannot read it either)
        assert not store.index.held_ready()
    for p, raw in kept.items():
        p.write_bytes(raw)
    with Store.open(cfg) as store:
        assert store.index.held_ready()
    rebuilt = _tables(cfg.index_dir)
    assert rebuilt["held"] == grown["held"] and rebuilt["format"] == grown["format"]
