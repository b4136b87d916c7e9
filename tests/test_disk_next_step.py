"""The next step `hoard health` and the storage page give for a disk that is not active
(hoardfs.fsd.maintenance.health.disk_next_step) works: in each state, the `hoard` commands it names are run
through the real CLI, in the order it names them, on a small store of directory disks —
each succeeds and the disk ends where the advice said (gone from the store, or active)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.maintenance.health import store_status
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_cli import hoard


def _store(tmp_path: Path) -> tuple[Path, list]:
    cfg_path = dir_disks_config(tmp_path, 4, shard_size_mb=1, copy_of_raw=2)
    with Store.open(config.load(cfg_path), init=True) as st:
        results = st.put_many(make_files(tmp_path / "in", 40))
    return cfg_path, results


def _cards(cfg_path: Path) -> dict[str, dict]:
    status = store_status(config.load(cfg_path))
    assert status["ok"], status
    return {d["label"]: d for d in status["disks"]}


def _held(cfg_path: Path) -> dict[str, int]:
    """Per disk label, the replicas the index lists on it."""
    with Store.open(config.load(cfg_path), writable=False) as st:
        held = {rec.label: 0 for rec in st.records.values()}
        for m in st.index.iter_shards():
            for u in m.replicas:
                held[st.records[u].label] += 1
    return held


def _follow(cfg_path: Path, advice: str, steps: list[str], **subst: str) -> None:
    """Run `steps`, commands the advice names (with its placeholders), in the order it names
    them, each with `subst`'s values for the placeholders; each must succeed."""
    at = 0
    for step in steps:
        assert f"`{step}`" in advice[at:], (step, advice)
        at = advice.index(f"`{step}`", at) + len(step)
        for name, value in subst.items():
            step = step.replace(name, value)
        r = hoard("--config", str(cfg_path), *step.split()[1:])
        assert r.returncode == 0, (step, r.stdout, r.stderr)


def _remove_table(cfg_path: Path, label: str, advice: str) -> None:
    """Do what the advice says last: remove the disk's [[disks]] table from hoard.toml."""
    assert "remove its [[disks]] table from hoard.toml" in advice, advice
    text = cfg_path.read_text()
    table = next(t for t in text.split("\n\n") if f'label = "{label}"' in t)
    cfg_path.write_text(text.replace(table, ""))


def _all_read_back(cfg_path: Path, results: list) -> None:
    with Store.open(config.load(cfg_path), writable=False) as st:
        for res in results:
            assert hashlib.sha256(st.get(res.sha256)).hexdigest() == res.sha256


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_draining_then_forgotten(tmp_path: Path) -> None:
    """A retired (draining) disk: `hoard replicate`, then `hoard disks forget` — or `hoard disks
    activate` to keep it; once forgotten, removing its table leaves no card."""
    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    keep, drain = sorted(held, key=lambda label: -held[label])[:2]
    for label in (keep, drain):
        assert hoard("--config", str(cfg_path), "disks", "retire", label).returncode == 0
    card = _cards(cfg_path)[keep]
    assert card["state"] == "draining", card
    _follow(cfg_path, card["next_step"], [f"hoard disks activate {keep}"])
    assert _cards(cfg_path)[keep]["state"] == "active"

    advice = _cards(cfg_path)[drain]["next_step"]
    _follow(cfg_path, advice, ["hoard replicate", f"hoard disks forget {drain}"])
    card = _cards(cfg_path)[drain]
    assert card["state"] == "missing" and card["reason"].startswith("forgotten by"), card
    assert "hoard disks forget" not in card["next_step"] and "mount it again" not in card["next_step"], card
    _remove_table(cfg_path, drain, card["next_step"])
    assert set(_cards(cfg_path)) == set(held) - {drain}
    assert all(d["state"] == "active" for d in _cards(cfg_path).values())
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_unregistered_new_disk_and_forgotten_unmounted_disk(tmp_path: Path) -> None:
    """A [[disks]] table whose path has no identity: a new disk gets one from `hoard init`; a
    disk forgotten and unmounted before its table was removed shows the same, and the advice
    also says to remove its table."""
    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    gone = max(held, key=lambda label: held[label])
    assert hoard("--config", str(cfg_path), "disks", "retire", gone).returncode == 0
    _follow(cfg_path, _cards(cfg_path)[gone]["next_step"], ["hoard replicate", f"hoard disks forget {gone}"])
    path = tmp_path / gone
    path.rename(path.with_name(gone + ".away"))  # unmounted, as forget's output says, table still there
    with cfg_path.open("a") as f:
        f.write(f'\n[[disks]]\nlabel = "new"\npath = "{tmp_path / "new"}"\n')  # not mounted yet
    cards = _cards(cfg_path)
    for label in (gone, "new"):
        assert cards[label]["state"] == "missing" and cards[label]["uuid"].startswith("unregistered-"), cards[label]
        assert "not initialised, or not mounted" in cards[label]["reason"], cards[label]
    # (first: `hoard init` makes every disk's directory, or refuses one that is not there)
    _remove_table(cfg_path, gone, cards[gone]["next_step"])
    (tmp_path / "new").mkdir()  # "mounted"
    _follow(cfg_path, cards["new"]["next_step"], ["hoard init"])
    cards = _cards(cfg_path)
    assert gone not in cards and cards["new"]["state"] == "active", cards
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_registered_but_not_in_the_config(tmp_path: Path) -> None:
    """A disk whose table was removed while it held replicas: `hoard disks forget` alone is
    refused, `hoard replicate` then `hoard disks forget` (as advised) works."""
    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    label = max(held, key=lambda label: held[label])
    text = cfg_path.read_text()
    cfg_path.write_text(text.replace(next(t for t in text.split("\n\n") if f'label = "{label}"' in t), ""))
    card = _cards(cfg_path)[label]
    assert "not listed in" in card["reason"] and card["replicas"] == held[label] and not card["only_here"], card
    assert hoard("--config", str(cfg_path), "disks", "forget", label).returncode == 5  # shards still need it
    _follow(cfg_path, card["next_step"], ["hoard replicate", f"hoard disks forget {label}"])
    assert label not in _cards(cfg_path)
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_failed_disk(tmp_path: Path) -> None:
    """A failed disk holding replicas: add a disk, `hoard disks replace`, `hoard disks forget`,
    remove its table; one holding none: `hoard disks forget` at once; one whose shards have no
    other readable replica: forget is refused, as said, and `hoard disks activate` takes it back."""
    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    holders = sorted((label for label in held if held[label]), key=lambda label: -held[label])
    empty = [label for label in held if not held[label]]
    with Store.open(config.load(cfg_path), writable=False) as st:
        # two disks sharing a shard: one failed and the other missing leave it no readable replica
        pair = next(sorted(st.records[u].label for u in m.replicas) for m in st.index.iter_shards()
                    if len(m.replicas) == 2)
    with Store.open(config.load(cfg_path)) as st:
        st.set_disk_state(pair[0], DiskState.FAILED, "I/O error during read (test)")
    other, failed_disk = tmp_path / pair[1], tmp_path / pair[0]
    other.rename(other.with_name(pair[1] + ".away"))
    failed_disk.rename(failed_disk.with_name(pair[0] + ".away"))  # (unplugged too: nothing to read it from)
    card = _cards(cfg_path)[pair[0]]
    assert card["state"] == "failed" and card["only_here"] > 0, card
    r = hoard("--config", str(cfg_path), "disks", "forget", pair[0])
    assert f"`hoard disks forget {pair[0]}` is refused" in card["next_step"] and r.returncode == 5, r.stderr
    assert f"mount it again at {failed_disk}" in card["next_step"], card
    failed_disk.with_name(pair[0] + ".away").rename(failed_disk)
    _follow(cfg_path, card["next_step"], [f"hoard disks activate {pair[0]}"])
    other.with_name(pair[1] + ".away").rename(other)
    assert all(d["state"] == "active" for d in _cards(cfg_path).values())

    failed = [holders[0]] + empty[:1]
    with Store.open(config.load(cfg_path)) as st:
        for label in failed:
            st.set_disk_state(label, DiskState.FAILED, "I/O error during read (test)")
    cards = _cards(cfg_path)
    (tmp_path / "d9").mkdir()
    _follow(cfg_path, cards[holders[0]]["next_step"], ["hoard disks add PATH --label NEW",
                                                       f"hoard disks replace {holders[0]} NEW",
                                                       f"hoard disks forget {holders[0]}"],
            PATH=str(tmp_path / "d9"), NEW="d9")
    _remove_table(cfg_path, holders[0], cards[holders[0]]["next_step"])
    if empty:  # (placement is random: a disk may hold nothing)
        _follow(cfg_path, cards[empty[0]]["next_step"], [f"hoard disks forget {empty[0]}"])
        _remove_table(cfg_path, empty[0], cards[empty[0]]["next_step"])
    cards = _cards(cfg_path)
    assert set(cards) == set(held) - set(failed) | {"d9"}, cards
    assert all(d["state"] == "active" for d in cards.values()), cards
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_failed_disk_still_attached_holding_the_only_readable_replicas_is_replaced_from_itself(
        tmp_path: Path) -> None:
    """A failed disk still at its path, whose shards' other replicas are on a missing disk: it
    is read as the last resort, so the advice is to replace it — and the replacement copies
    those shards from the failed disk itself (before, the advice said the replacement copies
    only the others, and that was so)."""
    cfg_path, results = _store(tmp_path)
    with Store.open(config.load(cfg_path), writable=False) as st:
        pair = next(sorted(st.records[u].label for u in m.replicas) for m in st.index.iter_shards()
                    if len(m.replicas) == 2)
    with Store.open(config.load(cfg_path)) as st:
        st.set_disk_state(pair[0], DiskState.FAILED, "I/O error during read (test)")
    other = tmp_path / pair[1]
    other.rename(other.with_name(pair[1] + ".away"))
    card = _cards(cfg_path)[pair[0]]
    assert card["state"] == "failed" and card["only_here"] > 0, card
    assert f"those are copied from {pair[0]} itself" in card["next_step"], card
    (tmp_path / "d9").mkdir()
    _follow(cfg_path, card["next_step"], ["hoard disks add PATH --label NEW", f"hoard disks replace {pair[0]} NEW"],
            PATH=str(tmp_path / "d9"), NEW="d9")
    _all_read_back(cfg_path, results)  # with the other disk still away: the copies came from the failed one
    other.with_name(pair[1] + ".away").rename(other)
    _follow(cfg_path, card["next_step"], [f"hoard disks forget {pair[0]}"])
    _remove_table(cfg_path, pair[0], card["next_step"])
    cards = _cards(cfg_path)
    assert pair[0] not in cards and all(d["state"] == "active" for d in cards.values()), cards
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_missing_disk(tmp_path: Path) -> None:
    """A missing disk holding replicas: `hoard rebuild --disk`, then `hoard disks forget` (refused
    before the rebuild: its shards still need it); one holding none: `hoard disks forget`."""
    cfg_path, results = _store(tmp_path)
    with cfg_path.open("a") as f:  # a disk that surely holds nothing
        f.write(f'\n[[disks]]\nlabel = "d9"\npath = "{tmp_path / "d9"}"\n')
    (tmp_path / "d9").mkdir()
    assert hoard("--config", str(cfg_path), "init").returncode == 0
    held = _held(cfg_path)
    lost = max(held, key=lambda label: held[label])
    for label in (lost, "d9"):
        (tmp_path / label).rename(tmp_path / (label + ".away"))
    cards = _cards(cfg_path)
    assert cards["d9"]["state"] == "missing" and cards["d9"]["replicas"] == 0, cards["d9"]
    early = hoard("--config", str(cfg_path), "disks", "forget", lost)
    assert early.returncode == 5 and f"hoard rebuild --disk {lost}" in early.stderr, early.stdout + early.stderr
    _follow(cfg_path, cards["d9"]["next_step"], ["hoard disks forget d9"])
    _remove_table(cfg_path, "d9", cards["d9"]["next_step"])
    card = cards[lost]
    assert card["state"] == "missing" and card["replicas"] and not card["only_here"], card
    _follow(cfg_path, card["next_step"], [f"hoard rebuild --disk {lost}", f"hoard disks forget {lost}"])
    _remove_table(cfg_path, lost, card["next_step"])
    cards = _cards(cfg_path)
    assert set(cards) == set(held) - {lost, "d9"} and all(d["state"] == "active" for d in cards.values()), cards
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_failed_and_unmounted_disk_is_told_to_mount_it_before_activate(tmp_path: Path) -> None:
    """A failed disk that is no longer at its path (unmounted after it failed): activate there
    refuses (no identity), so the advice says to mount it again first; following it works."""
    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    label = max(held, key=lambda x: held[x])
    with Store.open(config.load(cfg_path)) as st:
        st.set_disk_state(label, DiskState.FAILED, "I/O error during read (test)")
    disk = tmp_path / label
    disk.rename(disk.with_name(label + ".away"))
    disk.mkdir()  # the empty mount point
    card = _cards(cfg_path)[label]
    assert card["state"] == "failed" and not card["identity"], card
    assert f"mount it again at {disk}, then `hoard disks activate {label}`" in card["next_step"], card
    assert hoard("--config", str(cfg_path), "disks", "activate", label).returncode != 0  # why the advice says so
    disk.rmdir()
    disk.with_name(label + ".away").rename(disk)  # mounted again
    _follow(cfg_path, card["next_step"], [f"hoard disks activate {label}"])
    assert all(d["state"] == "active" for d in _cards(cfg_path).values())
    _all_read_back(cfg_path, results)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"is damaged \(not an identity\); put back from its copy", level="WARNING")
def test_a_damaged_identity_is_put_back_from_its_copy_by_activate(tmp_path: Path) -> None:
    """A disk's identity file is damaged: the disk is failed, the advice's `hoard disks
    activate` puts the identity back from its copy (the disk is the registered one: the copy
    names its uuid) and checks its replicas. Without a copy, activate refuses and says to treat
    the disk as lost — not that another disk is mounted there."""
    from hoardfs.fsd.core.disks import IDENTITY, IDENTITY_COPY

    cfg_path, results = _store(tmp_path)
    held = _held(cfg_path)
    label, other = sorted(held, key=lambda x: -held[x])[:2]
    good = (tmp_path / label / IDENTITY).read_bytes()
    (tmp_path / label / IDENTITY).write_bytes(b'{"uuid": 7, "lab')
    card = _cards(cfg_path)[label]
    assert card["state"] == "failed" and "is damaged" in card["reason"], card
    _follow(cfg_path, card["next_step"], [f"hoard disks activate {label}"])
    assert (tmp_path / label / IDENTITY).read_bytes() == good
    assert all(d["state"] == "active" for d in _cards(cfg_path).values())
    _all_read_back(cfg_path, results)

    (tmp_path / other / IDENTITY_COPY).unlink()
    (tmp_path / other / IDENTITY).write_bytes(b"\x00" * 40)
    r = hoard("--config", str(cfg_path), "disks", "activate", other)
    assert r.returncode == 3 and "treat it as lost" in r.stderr and "not the same disk" not in r.stderr, r.stderr
    _all_read_back(cfg_path, results)


def test_a_disk_without_a_copy_of_its_identity_gets_one_at_the_next_open(tmp_path: Path) -> None:
    """Disks initialised before copies were kept get theirs from the next writable open."""
    from hoardfs.fsd.core.disks import IDENTITY, IDENTITY_COPY

    cfg_path, _ = _store(tmp_path)
    disks = [p for p in tmp_path.iterdir() if (p / IDENTITY).is_file()]
    for d in disks:
        (d / IDENTITY_COPY).unlink()
    with Store.open(config.load(cfg_path), writable=False):
        assert not any((d / IDENTITY_COPY).exists() for d in disks)  # a reader writes nothing
    with Store.open(config.load(cfg_path)):
        pass
    assert all((d / IDENTITY_COPY).read_bytes() == (d / IDENTITY).read_bytes() for d in disks)


@pytest.mark.services  # starts hoard processes
def test_a_put_of_a_file_whose_stored_copies_cannot_be_read_says_so(tmp_path: Path) -> None:
    """A file put again while every disk holding its stored copies is failed or
    missing was answered `existing` (0/2) with exit 0 and "already present" — the team then
    deleted its only readable copy, the one it had just put. Now a line names it (keep the
    file; `hoard health`), the summary counts it and the exit is 5; the files whose copies read
    are `existing` as before."""
    cfg_path, results = _store(tmp_path)
    with Store.open(config.load(cfg_path), writable=False) as st:
        pair = next(sorted(st.records[u].label for u in m.replicas) for m in st.index.iter_shards()
                    if len(m.replicas) == 2)
        lost = [r for r in results if sorted(st.records[u].label for u in st.index.get_shard(
            st.index.lookup(bytes.fromhex(r.sha256)).shard_id).replicas) == pair]
    assert lost
    with Store.open(config.load(cfg_path)) as st:
        st.set_disk_state(pair[0], DiskState.FAILED, "I/O error during read (test)")
    (tmp_path / pair[1]).rename(tmp_path / (pair[1] + ".away"))  # the other one unplugged
    res = hoard("--config", str(cfg_path), "put", str(tmp_path / "in"))
    assert res.returncode == 5, res.stdout + res.stderr
    for r in lost:
        assert f"already stored as {r.sha256}, but none of its copies can be read now" in res.stderr, res.stderr
    assert f"{len(results)} already present ({len(lost)} with no readable copy now)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / (pair[1] + ".away")).rename(tmp_path / pair[1])
    with Store.open(config.load(cfg_path)) as st:
        st.set_disk_state(pair[0], DiskState.ACTIVE, "")
    res = hoard("--config", str(cfg_path), "put", str(tmp_path / "in"))
    assert res.returncode == 0 and "none of its copies" not in res.stderr, res.stderr
