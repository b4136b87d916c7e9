"""`Index.live_many` (the loader's and the ordered run reads' liveness check, one read
transaction for many objects) agrees with `lookup` + `shown` for every state an object can be
in: absent, held, hidden (type A), tombstoned (type B), tombstoned but a root."""

from __future__ import annotations

import hashlib

from hoardfs.fsd.core.entries import ObjectLoc
from hoardfs.fsd.core.index import Index


def test_live_many_is_lookup_and_shown_for_every_state(tmp_path) -> None:
    """live_many says live exactly where lookup finds the object and shown shows it."""
    idx = Index(tmp_path / "index")
    try:
        sha = {name: hashlib.sha256(name.encode()).digest()
               for name in ("absent", "held", "hidden", "tombstoned", "rooted", "hidden-rooted")}
        shard = b"\x01" * 16
        held = [v for k, v in sha.items() if k != "absent"]
        with idx.env.begin(write=True) as txn:
            for k, h in enumerate(held):
                txn.put(h, ObjectLoc(shard, 4096 * (k + 1), 100).pack(), db=idx.objects)
            txn.put(sha["hidden"], b"", db=idx.hidden)
            txn.put(sha["hidden-rooted"], b"", db=idx.hidden)
            for name in ("tombstoned", "rooted", "hidden-rooted"):
                txn.put(sha[name], b"", db=idx.deleted)
            if idx.rooted is not None:
                for name in ("rooted", "hidden-rooted"):
                    txn.put(sha[name], b"", db=idx.rooted)
        order = list(sha.values()) + [sha["held"], sha["absent"]]  # (repeats asked again)
        want = [idx.lookup(h) is not None and idx.shown(h) for h in order]
        assert idx.live_many(order) == want
        named = dict(zip(sha, idx.live_many(list(sha.values())), strict=True))
        assert named["held"] and not named["absent"] and not named["hidden"] and not named["tombstoned"]
        assert not named["hidden-rooted"]
        assert named["rooted"] == (idx.rooted is not None)
        assert idx.live_many([]) == []
    finally:
        idx.close()


def test_live_many_with_no_marks_or_one_kind_of_mark_is_lookup_and_shown(tmp_path) -> None:
    """Many objects asked at once, with no mark in the index (one lookup each), then only a
    hidden mark, then only a tombstone: live_many still says live exactly where lookup finds
    the object and shown shows it — the one marked object is never live."""
    idx = Index(tmp_path / "index")
    try:
        shas = [hashlib.sha256(b"%d" % k).digest() for k in range(12)]
        with idx.env.begin(write=True) as txn:
            for k, h in enumerate(shas[:10]):  # (the last two absent)
                txn.put(h, ObjectLoc(b"\x02" * 16, 4096 * (k + 1), 100).pack(), db=idx.objects)

        def agrees() -> list[bool]:
            got = idx.live_many(shas)
            assert got == [idx.lookup(h) is not None and idx.shown(h) for h in shas]
            return got

        assert agrees() == [True] * 10 + [False] * 2
        for table in (idx.hidden, idx.deleted):
            with idx.env.begin(write=True) as txn:
                txn.put(shas[3], b"", db=table)
            assert agrees() == [True] * 3 + [False] + [True] * 6 + [False] * 2
            with idx.env.begin(write=True) as txn:
                txn.delete(shas[3], db=table)
    finally:
        idx.close()


def test_unshown_among_walks_the_marks_or_asks_each_and_agrees_with_shown(tmp_path) -> None:
    """unshown_among gives exactly the asked objects shown refuses, whether it walks the marks
    (fewer than the objects asked) or asks each object (more marks than objects asked)."""
    idx = Index(tmp_path / "index")
    try:
        states = ("held", "hidden", "tombstoned", "rooted", "hidden-rooted")
        sha = {(name, k): hashlib.sha256(f"{name}/{k}".encode()).digest() for name in states for k in range(40)}
        with idx.env.begin(write=True) as txn:
            for n, ((name, _k), h) in enumerate(sha.items()):
                txn.put(h, ObjectLoc(b"\x01" * 12, 4096 * (n + 1), 100).pack(), db=idx.objects)
                if name in ("hidden", "hidden-rooted"):
                    txn.put(h, b"", db=idx.hidden)
                if name in ("tombstoned", "rooted", "hidden-rooted"):
                    txn.put(h, b"", db=idx.deleted)
                if name in ("rooted", "hidden-rooted") and idx.rooted is not None:
                    txn.put(h, b"", db=idx.rooted)
        absent = hashlib.sha256(b"absent").digest()
        few = [sha["held", 0], sha["hidden", 0], sha["tombstoned", 0], sha["rooted", 0], sha["hidden-rooted", 0],
               absent]  # 6 asked, 160 marks: each asked
        every = list(sha.values()) + [absent]  # 201 asked, 160 marks: the marks walked
        for asked in (few, every, every + every[:30]):
            want = {h for h in asked if not idx.shown(h)}
            assert idx.unshown_among(asked) == want
            assert idx.unshown_among(set(asked)) == want
        got = idx.unshown_among(every)
        assert sha["hidden", 3] in got and sha["tombstoned", 3] in got and sha["hidden-rooted", 3] in got
        assert sha["held", 3] not in got and absent not in got
        assert (sha["rooted", 3] in got) == (idx.rooted is None)
        assert idx.unshown_among([]) == set()
    finally:
        idx.close()
