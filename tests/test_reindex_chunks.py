"""`hoard index rebuild` in bounded memory loses nothing at its seams: objects are
spilled to disk and written in chunks, the marks logs spilled and replayed object by object
(hoardfs.fsd.core.spill, marks.settle). With chunks of a few entries — every object's records, its
copies on several disks and its marks-log records on each, fall around many boundaries —
the rebuilt index is the index it replaces, table by table, and every object reads back."""

from __future__ import annotations

import shutil
from hashlib import sha256
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.maintenance import reindex
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config


def _tables(store: Store) -> dict:
    idx = store.index
    out = {"objects": {sha: loc.pack() for sha, loc in idx.iter_objects()},
           "shards": {m.shard_id: (m.klass, m.size, m.sealed, sorted(m.replicas), m.records)
                      for m in idx.iter_shards()},
           "used": {r.label: r.used_bytes for r in idx.get_disks()},
           "batches": idx.iter_batches(), "views": idx.iter_views()}
    for t in ("hidden", "deleted", "rooted"):
        out[t] = idx.marked(getattr(idx, t))
    return out


def test_a_rebuild_in_small_chunks_is_the_index_it_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2, write_ack=2))
    datas = [sha256(b"%d" % i).digest() * (1 + i % 97) for i in range(3000)]  # 32 B – 3 KB: several shards
    with Store.open(cfg, init=True) as store:
        shas: list[bytes] = []
        for i in range(0, len(datas), 500):  # batches, as `hoard put` stores them, each rooted
            got = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas[i:i + 500])]
            store.index.mark(store.index.rooted, got, "hoard put")
            shas += got
        idx = store.index
        idx.mark(idx.hidden, shas[::17], "a node deleted")        # marks of every kind, set and cleared
        idx.unmark(idx.hidden, shas[::34])
        idx.mark(idx.deleted, shas[5::23], "a batch deleted")
        idx.unmark(idx.deleted, shas[5::46])
        idx.unmark(idx.rooted, shas[3::11])
        idx.mark(idx.rooted, shas[3::22], "hoard put")                # rooted again: root, unroot, root
        manifest = store.put_bytes(b'{"files": []}')
        store.register_batch("b-1", {"source": "t", "manifest": manifest.sha256})
        store.register_view("v-1", {"manifest": manifest.sha256, "files": 0, "bytes": 0, "created": "now"})
        before = _tables(store)
    assert len(before["shards"]) >= 5 and before["hidden"] and before["deleted"] and before["rooted"]
    shutil.rmtree(cfg.index_dir)  # the SSD died

    monkeypatch.setattr(reindex, "CHUNK", 7)
    rep = reindex.rebuild_index(cfg)
    assert rep.objects == len(before["objects"]) and not rep.damaged, rep
    with Store.open(cfg) as store:
        after = _tables(store)
        for table in before:
            assert after[table] == before[table], table
        for sha, data in zip(shas, datas, strict=True):
            assert store.get(sha.hex()) == data
    assert not list(tmp_path.glob("ssd/*.spill"))  # the sorted runs are removed


def test_an_object_in_two_shards_keeps_the_copy_read_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object can be in two shards (gc stopped between its swap and deleting the old
    shard's files; a copy): the rebuilt index names the copy read first — the first disk's,
    as when every object was held in a dict — even when the other shard's id sorts first, at
    any chunk size (the spill sorts an object's copies by the order they were read in)."""
    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1, copy_of_raw=2, write_ack=2))
    datas = [b"one %d" % i for i in range(50)]
    with Store.open(cfg, init=True) as store:
        shas = [bytes.fromhex(r.sha256) for r in store.put_bytes_many(datas)]
        loc = store.index.lookup(shas[0])
        assert loc is not None
        d0, d1 = (store.disks[u] for u in sorted(store.disks, key=lambda u: store.disks[u].label))
        src = d1.find(loc.shard_id.hex())
    # a copy of the shard under an id that sorts before it, on the second disk only
    other = loc.shard_id[:6] + bytes(5) + loc.shard_id[11:]
    assert other < loc.shard_id
    body = bytearray(src.read_bytes())
    body[16:28] = other
    (d1.root / "shards" / other.hex()[-2:]).mkdir(exist_ok=True)
    d1.path(other.hex(), True).write_bytes(body)
    shutil.rmtree(cfg.index_dir)

    monkeypatch.setattr(reindex, "CHUNK", 3)
    rep = reindex.rebuild_index(cfg)
    assert rep.objects == 50 and rep.shards == 2, rep
    with Store.open(cfg) as store:
        assert store.index.lookup(shas[0]) == loc  # d0's copy, read first
        assert all(store.get(s.hex()) == d for s, d in zip(shas, datas, strict=True))
