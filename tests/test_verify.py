"""`hoard verify`: a flipped bit is found and repaired from a good replica; sampling; health fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, flip_byte, make_files
from tests.test_cli import hoard
from tests.test_store import check_store


# the victim is the first replica file by path; which disk holds it is placement's choice
@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+: payload checksum mismatch", level="WARNING")
def test_bit_flip_found_and_repaired(tmp_path: Path) -> None:
    cfg_path = str(dir_disks_config(tmp_path, 3, shard_size_mb=1))
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        results = store.put_many(make_files(tmp_path / "in", 120))
        shard_count = sum(1 for _ in store.index.iter_shards())
    victim = sorted(tmp_path.glob("d*/shards/*/*.shard"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3] ^= 0x10  # one bit, somewhere in the records
    victim.write_bytes(raw)

    st = json.loads(hoard("--config", cfg_path, "health", "--json").stdout)["store"]
    assert st["oldest_unverified_s"] is not None

    found = hoard("--config", cfg_path, "verify")
    assert found.returncode == 5
    assert f"verified {2 * shard_count} replicas of {shard_count} shards" in found.stdout
    assert f"shard {victim.stem} on {victim.parent.parent.parent.name}" in found.stderr
    assert "hoard verify --repair" in found.stderr

    fixed = hoard("--config", cfg_path, "verify", "--repair", "--sha256")
    assert fixed.returncode == 0 and "1 bad, 1 repaired" in fixed.stdout
    clean = hoard("--config", cfg_path, "verify", "--sha256")
    assert clean.returncode == 0 and "0 bad" in clean.stdout
    with Store.open(cfg) as store:
        assert check_store(store) == len({r.sha256 for r in results})
        assert all(m.verified for m in store.index.iter_shards())
        assert any(e["kind"] == "repaired" for e in store.index.recent_events(20))


def test_sample_and_budget(tmp_path: Path) -> None:
    """--sample checks part of the shards; the never-verified ones come first."""
    from hoardfs.fsd.io.scrub import verify

    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 200))
        total = sum(1 for _ in store.index.iter_shards())
        part = verify(store, sample_pct=50)
        assert 0 < part.shards < total and not part.bad
        never = {m.shard_id for m in store.index.iter_shards() if m.verified is None}
        assert len(never) == total - part.shards
        rest = verify(store, budget_s=0)  # a zero budget still checks one shard: a never-verified one
        assert rest.shards == 1
        assert len({m.shard_id for m in store.index.iter_shards() if m.verified is None}) == len(never) - 1


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_verify_one_batch(tmp_path: Path) -> None:
    """`--batch ID` checks only the shards that hold that batch's files (and its manifest);
    an unknown batch is a usage error."""
    cfg_path = str(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        first = store.put_many(make_files(tmp_path / "a", 60, seed=1))
        store.put_many(make_files(tmp_path / "b", 60, seed=2))
        body = json.dumps({"files": [{"path": Path(r.path).name, "sha256": r.sha256, "size": r.size}
                                     for r in first]}).encode()
        store.register_batch("a", {"source": "t", "manifest": store.put_bytes(body).sha256})
        want = {store.index.lookup(bytes.fromhex(r.sha256)).shard_id for r in first}
        total = sum(1 for _ in store.index.iter_shards())
    want.add(b"manifest")  # the manifest's shard (the last one written) counts too
    out = hoard("--config", cfg_path, "verify", "--batch", "a")
    assert out.returncode == 0, out.stderr
    n = int(out.stdout.split(" replicas of ")[1].split()[0])
    assert len(want) - 1 <= n <= len(want) < total
    bad = hoard("--config", cfg_path, "verify", "--batch", "nope")
    assert bad.returncode == 2 and "no ingested batch 'nope'" in bad.stderr


def test_sample_is_oldest_verified_first_and_deterministic(tmp_path: Path) -> None:
    """`--sample PCT` checks exactly the first PCT % (at least one) of the sealed shards in
    (verified, created) order: two 50 % runs cover every shard once, and a third starts again
    with the shards verified longest ago."""
    from hoardfs.fsd.io.scrub import verify

    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 200))
        order = [m.shard_id for m in sorted(store.index.iter_shards(), key=lambda m: m.created) if m.sealed]
        half = -(-len(order) // 2)
        verify(store, sample_pct=50)
        first = [m.shard_id for m in store.index.iter_shards() if m.verified]
        assert sorted(first) == sorted(order[:half])
        verify(store, sample_pct=50)
        assert all(m.verified for m in store.index.iter_shards() if m.sealed)
        stamp = {m.shard_id: m.verified for m in store.index.iter_shards()}
        third = verify(store, sample_pct=0.01)
        assert third.shards == 1
        assert min(stamp, key=lambda sid: stamp[sid]) in {m.shard_id for m in store.index.iter_shards()
                                                            if m.verified != stamp[m.shard_id]}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_verify_cli_says_what_it_did(tmp_path: Path) -> None:
    """An unknown --disk is refused listing the labels (exit 2); an empty store says there is
    nothing to verify; a small --sample of a store with shards verifies at least one."""
    cfg_path = str(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    cfg = config.load(cfg_path)
    Store.open(cfg, init=True).close()
    r = hoard("--config", cfg_path, "verify", "--disk", "nosuch")
    assert r.returncode == 2 and "no disk labelled 'nosuch'" in r.stderr and "d0, d1" in r.stderr
    r = hoard("--config", cfg_path, "verify")
    assert r.returncode == 0 and "nothing to verify" in r.stdout
    with Store.open(cfg) as store:
        store.put_many(make_files(tmp_path / "in", 60))
    r = hoard("--config", cfg_path, "verify", "--sample", "10", "--disk", "d1")
    assert r.returncode == 0 and "verified 1 replicas of 1 shards" in r.stdout, r.stdout + r.stderr


@pytest.mark.lab
@pytest.mark.expect_log(r"verify: .*|disk v\d: .*", level="WARNING")
def test_a_disk_vanishing_before_its_repair_is_named_not_a_traceback(lab_factory, tmp_path: Path) -> None:
    """`hoard verify --repair` finds a bad replica; its disk drops off before the repair copies
    onto it (chaos seed 492: TargetError's traceback, exit 1). The repair is not done, the shard
    is reported bad and not stamped verified, every object reads; with the disk back, the
    next `verify --repair` mends it."""
    from hoardfs.fsd.io.scrub import verify
    from tests.helpers import write_config
    from tests.lab import DiskProfile
    lab = lab_factory([DiskProfile(f"v{i}", 200, 500, 500, 5000) for i in (1, 2, 3)], throttle=False)
    disks = [(k, d.mountpoint, None) for k, d in lab.disks.items()]
    cfg = config.load(write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=1, copy_of_raw=2))
    store = Store.open(cfg, init=True)
    results = store.put_many(make_files(tmp_path / "in", 60))
    victim = sorted(p for d in lab.disks.values() for p in (d.mountpoint / "shards").rglob("*.shard"))[0]
    label = next(k for k, d in lab.disks.items() if victim.is_relative_to(d.mountpoint))
    flip_byte(victim, victim.stat().st_size // 3)
    gone, calls = [], []
    replicas = sum(len(m.replicas) for m in store.index.iter_shards() if m.sealed)

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == replicas:  # every replica checked: the repairs come next
            gone.append(lab.vanish(label))

    rep = verify(store, sha256=True, repair=True, progress=progress)
    assert gone and not rep.repaired and any(victim.stem in b and label in b for b in rep.bad), rep
    assert check_store(store) == len({r.sha256 for r in results})  # (from the other copies)
    assert store.index.get_shard(bytes.fromhex(victim.stem)).verified is None
    store.close()
    lab.reappear(label)
    with Store.open(cfg) as store:
        rep = verify(store, sha256=True, repair=True)
        assert rep.repaired == [f"shard {victim.stem} on {label}"], rep
        assert check_store(store) == len({r.sha256 for r in results})
