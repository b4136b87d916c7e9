"""`read_striped` (a loader's manifest at its start): a large object read a part off each
replica at once comes back byte for byte as `Store.get` gives it; a part off a rotten replica
is never handed out — the object is read whole from a good one."""

from __future__ import annotations

import hashlib
import random

import pytest

from hoardfs.base import config
from hoardfs.fsd.outputs.runs import STRIPE_MIN, read_striped
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, flip_byte


def _store_with(tmp_path, size: int) -> tuple[Store, str, bytes]:
    cfg = config.load(dir_disks_config(tmp_path, 3, copy_of_raw=2, write_ack=2, shard_size_mb=64))
    data = random.Random(size).randbytes(size)
    (tmp_path / "big.bin").write_bytes(data)
    store = Store.open(cfg, init=True)
    (res,) = store.put_many([tmp_path / "big.bin"])
    return store, res.sha256, data


def test_a_large_object_read_striped_is_the_object(tmp_path) -> None:
    """Striped over its replicas (each disk reads a part), a large object is its bytes exactly."""
    store, sha, data = _store_with(tmp_path, STRIPE_MIN * 3 + 12345)
    with store:
        meta = store.index.get_shard(store.index.lookup(bytes.fromhex(sha)).shard_id)
        assert len(meta.replicas) == 2
        got = read_striped(store, sha)
        assert got == data == store.get(sha)
        assert hashlib.sha256(got).hexdigest() == sha


@pytest.mark.expect_log(r"a part off one of its replicas failed", level="WARNING")
@pytest.mark.expect_log(r"read error on shard .*: payload checksum mismatch", level="WARNING")
def test_a_rotten_part_is_read_around(tmp_path) -> None:
    """A flipped byte in either replica's part: the object comes back right, read whole from
    the other replica (Store.get names the rotten one); never the rotten bytes."""
    for victim in (0, 1):
        root = tmp_path / f"v{victim}"
        root.mkdir()
        store, sha, data = _store_with(root, STRIPE_MIN * 2 + 999)
        with store:
            loc = store.index.lookup(bytes.fromhex(sha))
            meta = store.index.get_shard(loc.shard_id)
            disks = store.replica_order(meta)
            # a byte in the first part (off the first disk) or the last one (off the second)
            at = loc.offset + (100 if victim == 0 else loc.length - 100)
            flip_byte(disks[victim].find(meta.hex), at)
            assert read_striped(store, sha) == data


def test_a_small_object_is_read_whole(tmp_path) -> None:
    """An object under STRIPE_MIN is read as Store.get reads it, its bytes exact."""
    store, sha, data = _store_with(tmp_path, STRIPE_MIN // 2)
    with store:
        assert read_striped(store, sha) == data
