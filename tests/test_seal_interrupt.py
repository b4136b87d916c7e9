"""A Ctrl-C must never seal a shard whose footer disagrees with its body.

`hoard ingest --here` stopped by Ctrl-C during its store step left a **sealed** shard whose
body held one record more than its footer listed: the signal came between the writer moving
its end past a record and noting the record as pending, and closing the store sealed at that
end. `hoard verify` then called every replica bad, `--repair` had no good copy, `replicate`
could not bring the shard to its target — and `hoard check` said all was well. Now the body
ends at the last record the footer lists, whatever moment the signal picks; `hoard check`
names such a shard; `hoard verify --repair` reseals the ones already on the disks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hoardfs.fsd.io.writer as writer_mod
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.io.scrub import verify
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.store import Store
from tests.helpers import make_files


def test_ctrl_c_between_writing_a_record_and_noting_it_seals_a_whole_shard(store_factory, tmp_path: Path,
                                                                          monkeypatch) -> None:
    store = store_factory(n_disks=2, caps=None, shard_size_mb=16)
    files = make_files(tmp_path / "in", 12, seed=81)
    real, calls = writer_mod._Pending, []

    def pending(*a, **kw):  # the signal lands as the 8th record is noted: its bytes are written
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(writer_mod, "_Pending", pending)
    with pytest.raises(KeyboardInterrupt):
        store.put_many(files)
    cfg = store.cfg
    store.close()  # what `with Store.open(...)` does on the way out: commit, seal
    monkeypatch.setattr(writer_mod, "_Pending", real)
    with Store.open(cfg) as again:
        rep = verify(again)
        assert not rep.bad, rep.bad  # the old code: "8 records, the footer lists 7" on both replicas
        assert check(again).ok
        stored = [f for f in files[:7] if again.index.lookup(_sha(f)) is not None]
        assert len(stored) == 7 and all(again.get(_sha(f).hex()) == f.read_bytes() for f in stored)
        assert again.index.lookup(_sha(files[7])) is None  # not acknowledged: a re-run stores it


def _sha(path: Path) -> bytes:
    import hashlib

    return hashlib.sha256(path.read_bytes()).digest()


def _plant_unlisted_record(store: Store, meta) -> bytes:
    """Rewrite every replica of a sealed shard as the old writer left it: one more record in
    the body (a payload nobody indexed) than the footer lists, the footer after it."""
    payload = os.urandom(5000)
    sha = __import__("hashlib").sha256(payload).digest()
    for uuid in meta.replicas:
        path = store.disks[uuid].find(meta.hex)
        data = path.read_bytes()
        listed = fmt.decode_footer(lambda off, n, data=data: data[off:off + n], len(data))
        body = data[:listed[-1].end] + fmt.encode_record_header(sha, len(payload), fmt.xxh3(payload)) + payload
        path.write_bytes(body + fmt.encode_footer(listed, len(body)))
        store.disks[uuid].forget(meta.hex)
    size = len(path.read_bytes())

    def grown(m) -> dict[str, int]:
        delta, m.size = size - m.size, size
        return {u: delta for u in m.replicas}

    store.index.update_shard(meta.shard_id, grown)
    assert check(store).counts.get("used bytes") is None
    return sha


@pytest.mark.expect_log(r"verify error on shard", level="WARNING")
def test_check_names_it_and_verify_repair_reseals_what_the_old_writer_left(store_factory, tmp_path: Path) -> None:
    store = store_factory(n_disks=2, caps=None, shard_size_mb=16)
    results = store.put_many(make_files(tmp_path / "in", 10, seed=82))
    meta = next(m for m in store.index.iter_shards() if m.sealed)
    stray = _plant_unlisted_record(store, meta)
    rep = check(store)
    assert [p for p in rep.problems if "runs" in p and meta.hex in p and "verify --repair" in p], rep.problems
    found = verify(store)
    assert len(found.bad) == 2 and all("the footer lists" in b for b in found.bad), found.bad  # every replica
    fixed = verify(store, repair=True)
    assert len(fixed.repaired) == 2 and fixed.unrepaired == 0, (fixed.bad, fixed.repaired)
    assert not verify(store).bad
    assert check(store).ok, check(store).problems
    assert store.index.lookup(stray) is None
    assert all(store.get(r.sha256) == Path(r.path).read_bytes() for r in results)


@pytest.mark.expect_log(r"verify error on shard", level="WARNING")
def test_a_record_the_index_names_is_kept_by_the_reseal(store_factory, tmp_path: Path) -> None:
    """If the index does point at the unlisted record (it was committed), the reseal lists it
    instead of dropping it: nothing acknowledged is lost to a repair."""
    store = store_factory(n_disks=2, caps=None, shard_size_mb=16)
    store.put_many(make_files(tmp_path / "in", 4, seed=83))
    meta = next(m for m in store.index.iter_shards() if m.sealed)
    stray = _plant_unlisted_record(store, meta)
    data = store.disks[meta.replicas[0]].find(meta.hex).read_bytes()
    body = list(fmt.scan_records(lambda off, n: data[off:off + n], len(data), sealed=True))
    from hoardfs.fsd.core.index import ObjectLoc

    store.index.add_objects([(stray, ObjectLoc(meta.shard_id, body[-1].offset, body[-1].length))], meta)
    fixed = verify(store, repair=True)
    assert fixed.unrepaired == 0 and len(fixed.repaired) == 2, (fixed.bad, fixed.repaired)
    assert store.get(stray.hex())  # still there, now listed
    assert check(store).ok, check(store).problems
