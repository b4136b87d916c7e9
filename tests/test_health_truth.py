"""`hoard health` tells the truth about the store: shards below their replica target, disks
too full for a new shard, a store that can no longer place copy_of_raw replicas."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

from hoardfs.base import config
from hoardfs.fsd.core import formats
from hoardfs.fsd.store import Store
from hoardfs.jobs.health import collect
from tests.helpers import dir_disks_config, make_files


def _store_problems(cfg) -> list[str]:
    return [p for p in collect(cfg)["problems"] if p.startswith(("store:", "disk "))]


def test_below_target_and_full_disks_are_problems(tmp_path: Path) -> None:
    """After puts at write_ack (2) with copy_of_raw 3, health names the shards below target;
    once the small disks fill up, it names each full disk and says new raw shards cannot reach
    copy_of_raw on distinct disks."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=3)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 40, seed=1))
    problems = _store_problems(cfg)
    assert any("below their replica target" in p and "hoard replicate" in p for p in problems), problems
    assert not any(p.startswith("disk ") for p in problems)
    text = cfg_path.read_text()
    for i in (1, 2):  # two disks end up with under one shard of room
        text = text.replace(f'path = "{tmp_path / f"d{i}"}"', f'path = "{tmp_path / f"d{i}"}"\ncapacity_gb = 0.0005')
    cfg_path.write_text(text)
    cfg = config.load(cfg_path)
    problems = _store_problems(cfg)
    assert sum("takes no new shard" in p for p in problems) == 2, problems
    assert any(p.startswith("store: only 1 disks have room for a new shard") and "new writes are refused" in p
               for p in problems), problems


def test_verified_by_disk(tmp_path: Path) -> None:
    """hoardfs.fsd.maintenance.health.verified_by_disk: per disk label, the age of its least recently verified
    replica — small right after the writes that sealed its shards, None for a disk holding no
    sealed shard, and {} (not an error) when the store cannot be opened."""
    from hoardfs.fsd.maintenance.health import verified_by_disk

    cfg_path = dir_disks_config(tmp_path, 4, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 60, seed=2))
    with Store.open(cfg, writable=False) as store:
        holding = {store.records[u].label for m in store.index.iter_shards() if m.sealed for u in m.replicas}
    ages = verified_by_disk(cfg)
    assert set(ages) == {d.label for d in cfg.disks} and holding, ages
    assert all(ages[label] is not None and 0 <= ages[label] < 300 for label in holding), ages
    assert all(ages[label] is None for label in set(ages) - holding), ages
    shutil.rmtree(cfg.index_dir)
    assert verified_by_disk(cfg) == {}


def _held_by_index(cfg) -> tuple[dict[str, tuple[int, int]], dict[str, float]]:
    """Per disk label, (replicas, bytes) as the index lists them, and when it was last seen."""
    with Store.open(cfg, writable=False) as store:
        held = {rec.label: (0, 0) for rec in store.records.values()}
        for m in store.index.iter_shards():
            for u in m.replicas:
                n, b = held[store.records[u].label]
                held[store.records[u].label] = (n + 1, b + m.size)
        noted = store.index.disks_seen()[0]
        seen = {rec.label: noted[u] for u, rec in store.records.items()}
    return held, seen


def _commands_exist(text: str) -> None:
    """Every `hoard …` command a next step names is one the command line has."""
    import typer

    from hoardfs.cli import app

    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    named = re.findall(r"`hoard ([a-z-]+)(?: ([a-z-]+))?", text)
    assert named, text
    for cmd, sub in named:
        assert cmd in group.list_commands(ctx), (cmd, text)
        sub_group = group.get_command(ctx, cmd)  # a lazy group's commands load when asked for
        if hasattr(sub_group, "list_commands"):
            assert sub in sub_group.list_commands(typer.Context(sub_group)), (cmd, sub, text)


def test_a_missing_and_a_failed_disk_say_what_they_held_and_what_to_do(tmp_path: Path) -> None:
    """store_status gives each disk its replicas and bytes by the index and when a store last
    found it at its path; a missing disk and a failed one (picked from the index: placement
    decides which hold replicas) carry a next step naming `hoard disks` commands that exist."""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.maintenance.health import store_status

    cfg_path = dir_disks_config(tmp_path, 4, shard_size_mb=1)
    cfg = config.load(cfg_path)
    t0 = time.time()
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 60, seed=3))
    held, seen = _held_by_index(cfg)
    assert all(t0 <= seen[label] <= time.time() for label in held), seen  # every disk was found there
    holders = sorted((label for label in held if held[label][0]), key=lambda label: -held[label][0])
    assert len(holders) >= 2, held
    missing, failed = holders[0], holders[1]
    path = next(d.path for d in cfg.disks if d.label == missing)
    path.rename(path.with_name(path.name + ".away"))  # unmounted: its mount point is empty or gone
    by_label = {d["label"]: d for d in store_status(cfg)["disks"]}
    d = by_label[missing]
    assert d["state"] == "missing" and (d["replicas"], d["replica_bytes"]) == held[missing], d
    assert d["seen"] == seen[missing] and d["only_here"] == 0, d  # write_ack replicas: the others are readable
    assert f"mount it again at {path}" in d["next_step"] and f"`hoard disks replace {missing} NEW`" in d["next_step"]
    _commands_exist(d["next_step"])
    assert all("next_step" not in e and (e["replicas"], e["replica_bytes"]) == held[e["label"]]
               for e in by_label.values() if e["label"] != missing)
    problems = _store_problems(cfg)
    assert any(p.startswith(f"disk {missing}: missing") and f"hoard disks replace {missing} NEW" in p for p in problems)

    path.with_name(path.name + ".away").rename(path)  # back; then another disk fails
    with Store.open(cfg) as store:
        store.set_disk_state(failed, DiskState.FAILED, "I/O error during read (test)")
    d = {d["label"]: d for d in store_status(cfg)["disks"]}[failed]
    assert d["state"] == "failed" and (d["replicas"], d["replica_bytes"]) == held[failed], d
    assert f"`hoard disks activate {failed}`" in d["next_step"] and f"`hoard disks replace {failed} NEW`" in d["next_step"]
    _commands_exist(d["next_step"])


def test_a_disk_is_noted_as_seen_at_most_every_ten_minutes(tmp_path: Path) -> None:
    """Every store open finds the disks, but writes a disk's `seen` only when the noted one is
    SEEN_EVERY_S old (status refreshes open the store every few seconds: no LMDB write each time)."""
    from hoardfs.fsd.io.attach import SEEN_EVERY_S

    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    Store.open(cfg, init=True).close()
    with Store.open(cfg, writable=False) as store:
        first = store.index.disks_seen()[0]
        assert set(first) == set(store.records), first
    with Store.open(cfg, writable=False) as store:
        assert store.index.disks_seen()[0] == first  # not rewritten
        u = next(iter(store.records))
        store.index.set_meta(f"disk_seen:{u}", repr(first[u] - SEEN_EVERY_S - 1))
    with Store.open(cfg, writable=False) as store:
        assert store.index.disks_seen()[0][u] >= first[u]  # noted again, now


@dataclasses.dataclass
class _PreviousDiskRecord:
    """DiskRecord and its from_json as the release before `seen` had them: a record this
    version writes must still be read by it (a downgrade after an upgrade)."""

    uuid: str
    label: str
    path: str
    state: object
    created: str
    used_bytes: int = 0
    reason: str = ""

    @classmethod
    def from_json(cls, raw: bytes) -> _PreviousDiskRecord:
        from hoardfs.fsd.core.disks import DiskState

        d = json.loads(raw)
        d["state"] = DiskState(d["state"])
        return cls(**d)


def _raw_disk_records(store: Store) -> dict[str, bytes]:
    with store.index.env.begin(db=store.index.disks) as txn:
        return {bytes(k).decode(): bytes(v) for k, v in txn.cursor()}


def test_disk_records_stay_readable_by_the_previous_release(tmp_path: Path) -> None:
    """Every disk record the store writes (at init, on puts, when it notes a disk was seen) is
    read by the previous release's `cls(**json)`; a record that carries `seen` inside (written
    by the version that kept it there, an index of format 1) still gives the missing disk's card
    its time, and the next writable open migrates it: the time moves to the index's meta,
    leaving a record the previous release reads."""
    from hoardfs.fsd.core.disks import DiskState
    from hoardfs.fsd.maintenance.health import store_status

    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1))
    with Store.open(cfg, init=True) as store:
        store.put_many(make_files(tmp_path / "in", 20, seed=4))
    with Store.open(cfg, writable=False) as store:
        raw = _raw_disk_records(store)
        assert len(raw) == 3 and {_PreviousDiskRecord.from_json(r).used_bytes for r in raw.values()} != {0}, raw
        assert set(store.index.disks_seen()[0]) == set(raw)

        # records as the version that kept `seen` inside wrote them, an hour ago (an index without
        # a format: fsd/core/formats.py)
        then = time.time() - 3600
        with store.index.env.begin(write=True) as txn:
            txn.delete(formats.INDEX_KEY.encode(), db=store.index.meta)
            for u, r in raw.items():
                txn.put(u.encode(), json.dumps({**json.loads(r), "seen": then}).encode(), db=store.index.disks)
                txn.delete(b"disk_seen:" + u.encode(), db=store.index.meta)
        assert store.index.disks_seen() == ({u: then for u in raw}, sorted(raw))
        gone = next(iter(raw))
        label = store.records[gone].label
    path = next(d.path for d in cfg.disks if d.label == label)
    path.rename(path.with_name(path.name + ".away"))
    t0 = time.time()
    d = {d["label"]: d for d in store_status(cfg)["disks"]}[label]
    assert d["state"] == DiskState.MISSING.value and d["seen"] == then, d
    with Store.open(cfg) as store:
        raw = _raw_disk_records(store)
        assert all(_PreviousDiskRecord.from_json(r) for r in raw.values())
        seen, inside = store.index.disks_seen()
        assert not inside and seen[gone] == then, seen
        assert all(t0 <= seen[u] <= time.time() for u in raw if u != gone), seen  # found there now
    path.with_name(path.name + ".away").rename(path)


def test_a_library_call_of_health_reads_no_drive(tmp_path: Path) -> None:
    """`collect` as the GUI, the demo and these tests call it shows the drives' last readings
    (hoard-smart.timer's) and starts no smartctl, even as root — which `hoard health` does when
    a reading is old (a unit test that did got a thread's traceback and "smartctl did not
    answer" for the disk)."""
    from hoardfs.fsd.core import smart

    cfg = config.load(dir_disks_config(tmp_path, 3, shard_size_mb=1))
    with Store.open(cfg, init=True):
        pass
    report = collect(cfg)
    assert [d["label"] for d in report["disks"] if d.get("smart")] == ["d0", "d1", "d2"]
    assert not any("did not answer" in str(d["smart"].get("why")) for d in report["disks"])
    assert not smart.cache_path(cfg).exists()  # (root's reading keeps one, even of a drive with no SMART)
