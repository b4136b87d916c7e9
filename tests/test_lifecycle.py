"""A disk's life-cycle both ways (activate, forget, the rebuild prompt) and what an index
rebuild keeps (disk states, deletion marks), through the real `hoard` CLI on directory disks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.maintenance.deletion import drop_batch, hide
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files, use_schema

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services


def _hoard(cfg_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, input=stdin, timeout=300)


def _store(tmp_path: Path, n: int = 4, **store: object) -> tuple[Path, list]:
    cfg_path = dir_disks_config(tmp_path, n, shard_size_mb=1, copy_of_raw=2, **store)
    with Store.open(config.load(cfg_path), init=True) as st:
        results = st.put_many(make_files(tmp_path / "in", 40))
    return cfg_path, results


def _states(cfg_path: Path) -> dict[str, str]:
    with Store.open(config.load(cfg_path), writable=False) as st:
        return {r.label: r.state.value for r in st.records.values()}


def test_retire_replicate_forget_then_health_is_clean(hoard_home: Path, pg) -> None:
    """retire → replicate → `disks forget` → remove from hoard.toml leaves `hoard health` clean
    (exit 0), and every object still reads back; forgetting before replicate is refused."""
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    cfg_path = Path(use_schema(hoard_home, pg))
    assert _hoard(cfg_path, "init").returncode == 0
    with Store.open(config.load(cfg_path)) as st:
        results = st.put_many(make_files(hoard_home / "in", 40))
    assert _hoard(cfg_path, "db", "backup").returncode == 0  # health counts a store never backed up
    assert _hoard(cfg_path, "replicate").returncode == 0
    health = _hoard(cfg_path, "health")
    assert health.returncode == 0, health.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:  # a disk that holds replicas
        label = next(st.records[u].label for m in st.index.iter_shards() for u in m.replicas)
    assert _hoard(cfg_path, "disks", "retire", label).returncode == 0
    early = _hoard(cfg_path, "disks", "forget", label)
    assert early.returncode == 5 and "shards still need its replica" in early.stderr and "hoard replicate" in early.stderr
    assert _hoard(cfg_path, "replicate").returncode == 0
    r = _hoard(cfg_path, "disks", "forget", label)
    assert r.returncode == 0 and "remove its [[disks]] table" in r.stdout, r.stderr
    # still listed: reported as forgotten, not "holds shards the index does not know"
    r = _hoard(cfg_path, "health")
    assert r.returncode == 4 and "forgotten by `hoard disks forget`" in r.stdout + r.stderr
    text = cfg_path.read_text()
    table = next(t for t in text.split("\n\n") if f'label = "{label}"' in t)
    cfg_path.write_text(text.replace(table, ""))
    r = _hoard(cfg_path, "health")
    assert r.returncode == 0, r.stdout + r.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:
        for res in results:
            assert hashlib.sha256(st.get(res.sha256)).hexdigest() == res.sha256


def test_rebuild_of_a_healthy_disk_asks_and_activate_brings_it_back(tmp_path: Path) -> None:
    """`hoard rebuild` of an active, present disk asks first (declining changes nothing); done
    anyway with --yes, `hoard disks activate` checks the disk and puts it back: its shard files
    are listed again and serve reads on their own."""
    cfg_path, results = _store(tmp_path)
    with Store.open(config.load(cfg_path), writable=False) as st:  # placement is random: a disk holding shards
        label = next(st.records[u].label for m in st.index.iter_shards() for u in m.replicas)
    r = _hoard(cfg_path, "rebuild", "--disk", label, stdin="n\n")
    assert r.returncode == 130 and "is active and present" in r.stdout and "not confirmed" in r.stderr
    assert _states(cfg_path)[label] == "active"
    r = _hoard(cfg_path, "rebuild", "--disk", label, "--yes")
    assert r.returncode == 0, r.stderr
    assert _states(cfg_path)[label] == "failed"
    r = _hoard(cfg_path, "disks", "activate", label)
    assert r.returncode == 0 and f"disk {label} is active" in r.stdout and "0 bad" in r.stdout, r.stderr
    cfg = config.load(cfg_path)
    with Store.open(cfg, writable=False) as st:
        dz = next(u for u, rec in st.records.items() if rec.label == label)
        assert st.records[dz].state == DiskState.ACTIVE
        on_dz = [m for m in st.index.iter_shards() if dz in m.replicas]
        assert on_dz, "the shard files left on the disk are listed again"
        others = {u for u in st.disks if u != dz}
        for res in results:
            loc = st.index.lookup(bytes.fromhex(res.sha256))
            if dz in st.index.get_shard(loc.shard_id).replicas:  # read from that disk alone
                assert hashlib.sha256(st.get(res.sha256, avoid=others)).hexdigest() == res.sha256


def test_activate_refuses_another_disk(tmp_path: Path) -> None:
    """A failed disk whose identity file names another uuid (a swapped disk) is not activated."""
    cfg_path, _ = _store(tmp_path, n=3)
    assert _hoard(cfg_path, "rebuild", "--disk", "d2", "--yes").returncode == 0
    ident = tmp_path / "d2" / ".hoard-disk.json"
    ident.write_text(ident.read_text().replace('"uuid": "', '"uuid": "x'))
    r = _hoard(cfg_path, "disks", "activate", "d2")
    assert r.returncode == 3 and "not the same disk" in r.stderr
    assert _states(cfg_path)["d2"] == "failed"


# the returning disk is the first that holds a shard: d0 unless placement left it empty
@pytest.mark.expect_log(r"disk d\d: verify error on shard \w+: payload checksum mismatch", level="WARNING")
def test_activate_reports_bad_replicas_for_repair(tmp_path: Path) -> None:
    """A replica on the returning disk that fails its check is reported and queued for repair;
    the disk is activated all the same, and `hoard verify --repair` then fixes the replica."""
    cfg_path, _ = _store(tmp_path, n=3)
    label = next(d.name for d in sorted(tmp_path.glob("d*")) if list(d.glob("shards/*/*.shard")))  # holds one
    assert _hoard(cfg_path, "rebuild", "--disk", label, "--yes").returncode == 0
    victim = sorted((tmp_path / label / "shards").glob("*/*.shard"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(raw)
    r = _hoard(cfg_path, "disks", "activate", label)
    assert r.returncode == 0 and "1 bad" in r.stdout and victim.stem in r.stderr, r.stdout + r.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:
        assert {sid.hex() for sid, _, _ in st.index.pending_repairs()} == {victim.stem}
        assert {rec.label: rec.state for rec in st.records.values()}[label] == DiskState.ACTIVE
    r = _hoard(cfg_path, "verify", "--repair")
    assert r.returncode == 0 and "1 repaired" in r.stdout, r.stdout + r.stderr


def test_activate_lists_again_only_a_regular_shard_file(tmp_path: Path) -> None:
    """`hoard disks activate` lists a shard again on the returning disk only for a regular file
    of it: a directory in the sealed file's place is no replica — listed, it made the index
    name a copy that is not there (and a FIFO there hung activate's verify on its open)."""
    cfg_path, _ = _store(tmp_path, n=3)
    with Store.open(config.load(cfg_path), writable=False) as st:
        meta, d = next((m, d) for m in st.index.iter_shards() if m.sealed
                       for d in st.disks.values() if d.uuid not in m.replicas)
        label, uuid = d.label, d.uuid
    fake = tmp_path / label / "shards" / meta.hex[-2:] / f"{meta.hex}.shard"
    fake.mkdir(parents=True)
    assert _hoard(cfg_path, "disks", "retire", label).returncode == 0
    r = _hoard(cfg_path, "disks", "activate", label)
    assert r.returncode == 0 and "0 bad" in r.stdout, r.stdout + r.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:
        assert uuid not in st.index.get_shard(meta.shard_id).replicas
        assert st.records[uuid].state == DiskState.ACTIVE


def test_index_rebuild_keeps_states_and_deletion_marks(tmp_path: Path) -> None:
    """`hoard index rebuild` keeps a failed and a draining disk as they were, the type-A hidden
    and type-B deleted marks (from marks/ on the HDDs), and a tombstone cleared by storing the
    object again stays cleared; an object gc freed and stored anew carries no old mark."""
    cfg_path, results = _store(tmp_path, n=4)
    files = sorted((tmp_path / "in").iterdir())
    cfg = config.load(cfg_path)
    with Store.open(cfg) as st:
        body = ('{"files": [' + ", ".join(f'{{"path": "{r.sha256}", "sha256": "{r.sha256}"}}' for r in results[:20])
                + "]}").encode()
        put = st.put_bytes(body)
        st.register_batch("b1", {"manifest": put.sha256, "files": 20, "bytes": 0})
        hidden = [bytes.fromhex(r.sha256) for r in results[30:33]]
        assert hide(st, hidden, "test") == 3
        assert drop_batch(st, "b1")[0] == 21
        kept = next(r for r in results[:20] if Path(r.path).name == files[0].name)
        assert st.put_many([files[0]])[0].status == "existing"  # clears kept's tombstone
        st.set_disk_state("d1", DiskState.DRAINING, "retired by the user")
        st.set_disk_state("d2", DiskState.FAILED, "being rebuilt onto other disks")
        want_deleted = st.index.marked(st.index.deleted)
    assert bytes.fromhex(kept.sha256) not in want_deleted and len(want_deleted) == 20
    r = _hoard(cfg_path, "index", "rebuild")
    assert r.returncode == 0 and "3 hidden, 20 tombstoned" in r.stdout, r.stdout + r.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:
        assert st.index.marked(st.index.hidden) == set(hidden)
        assert st.index.marked(st.index.deleted) == want_deleted
        states = {rec.label: rec.state for rec in st.records.values()}
    assert states == {"d0": DiskState.ACTIVE, "d1": DiskState.DRAINING, "d2": DiskState.FAILED,
                      "d3": DiskState.ACTIVE}


def test_gc_drop_is_replayed(tmp_path: Path) -> None:
    """A tombstoned object gc freed, then stored anew, is not tombstoned again by an index rebuild
    (gc's drop is a record in marks/ too)."""
    from hoardfs.fsd.maintenance.gc import gc

    cfg_path, results = _store(tmp_path, n=3)
    cfg = config.load(cfg_path)
    files = sorted((tmp_path / "in").iterdir())
    with Store.open(cfg) as st:
        doomed = [bytes.fromhex(r.sha256) for r in results]
        st.index.mark(st.index.deleted, doomed, "test")
        rep = gc(st, threshold=1.0)
        assert rep.objects_dropped == len(results)
        assert all(r.status == "new" for r in st.put_many(files))
    assert _hoard(cfg_path, "index", "rebuild").returncode == 0
    with Store.open(config.load(cfg_path), writable=False) as st:
        assert st.index.marked(st.index.deleted) == set()
        assert len(st.index.lookup_many(doomed)) == len(results)


def test_index_rebuild_takes_the_newest_view_pointer(tmp_path: Path) -> None:
    """A disk out of service misses a view's redefinition and another view's removal; gc then
    frees the old manifests. `hoard index rebuild` (with that disk back, or still failed)
    registers the newest definition and does not bring the removed view back: every view
    reads whole and `hoard check` agrees."""
    from hoardfs.fsd.maintenance.gc import gc
    from hoardfs.fsd.outputs.manifest import iter_files
    from hoardfs.fsd.outputs.views import define_view_rows, remove_view

    cfg_path, results = _store(tmp_path, n=3)
    cfg = config.load(cfg_path)
    with Store.open(cfg) as st:
        define_view_rows(st, "v", [("old/a", results[0].sha256)])
        define_view_rows(st, "gone", [("x", results[1].sha256)])
        st.set_disk_state("d0", DiskState.FAILED, "test: out of service")
    with Store.open(cfg) as st:  # d0 misses both changes
        define_view_rows(st, "v", [("new/b", results[2].sha256)])
        remove_view(st, "gone")
        gc(st, threshold=1.0)
    for activate in (False, True):
        if activate:
            r = _hoard(cfg_path, "disks", "activate", "d0")
            assert r.returncode == 0, r.stderr
        r = _hoard(cfg_path, "index", "rebuild")
        assert r.returncode == 0, r.stdout + r.stderr
        with Store.open(config.load(cfg_path), writable=False) as st:
            assert [name for name, _ in st.index.iter_views()] == ["v"]
            assert [p for p, _, _ in iter_files(st.get, st.index.get_view("v")["manifest"])] == ["new/b"]
        r = _hoard(cfg_path, "check")
        assert "manifest" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_forget_of_a_missing_disk_names_the_rebuild_not_a_retire(tmp_path: Path) -> None:
    """A disk that is gone (its directory moved away) is missing, not active: `disks forget`
    refuses while shards still need its replicas and names `hoard rebuild`; after the rebuild
    it forgets the disk, and every object still reads back."""
    cfg_path, results = _store(tmp_path)
    with Store.open(config.load(cfg_path), writable=False) as st:
        label = next(st.records[u].label for m in st.index.iter_shards() for u in m.replicas)
        path = Path(next(r.path for r in st.records.values() if r.label == label))
    path.rename(path.with_name(path.name + ".gone"))
    path.mkdir()  # an empty mount point stays behind
    assert _states(cfg_path)[label] == "missing"
    early = _hoard(cfg_path, "disks", "forget", label)
    assert early.returncode == 5, early.stdout + early.stderr
    assert "is active" not in early.stderr and f"hoard rebuild --disk {label}" in early.stderr
    r = _hoard(cfg_path, "rebuild", "--disk", label, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _hoard(cfg_path, "disks", "forget", label)
    assert r.returncode == 0 and "forgotten" in r.stdout, r.stdout + r.stderr
    with Store.open(config.load(cfg_path), writable=False) as st:
        for res in results:
            assert hashlib.sha256(st.get(res.sha256)).hexdigest() == res.sha256
