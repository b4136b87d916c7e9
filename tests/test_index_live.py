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
