"""No LMDB write transaction grows with the store (the goal: none held longer than 1 s —
writers and the mount never stall behind maintenance). Checked by structure, never by time:
the commands run as processes with HOARD_LMDB_TXN_LOG (fsd/core/txnlog.py) and no write
transaction may write more than TXN_ENTRIES entries (index puts and deletes, marks-log
records appended inside it). And the chunked commands lose nothing when killed between two
chunks (HOARD_LMDB_KILL_AFTER: SIGKILL right after a site's Nth write transaction)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import marks
from hoardfs.fsd.core.txnlog import KILL_VAR, LOG_VAR, TXN_ENTRIES
from hoardfs.fsd.outputs.manifest import batch_manifest
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config

# tier: the module's tests start hoard processes
pytestmark = pytest.mark.services


def _hoard(cfg_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full.pop("HOARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), *args], capture_output=True,
                          text=True, env=full, cwd=REPO, timeout=600)


def _store(tmp_path: Path, n: int, seed: int = 1, shard_mb: int = 4) -> tuple[Path, list[bytes]]:
    """`n` small objects (64 B – 1 KB) on two directory disks, each rooted as `hoard put` roots
    what it stores (a marks-log record per object on every disk); returns their sha256s."""
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=shard_mb, copy_of_raw=2, write_ack=2)
    rng = random.Random(seed)
    shas: list[bytes] = []
    with Store.open(config.load(cfg_path), init=True) as store:
        for i in range(0, n, 5000):
            got = store.put_bytes_many([rng.randbytes(rng.randint(64, 1024)) for _ in range(min(5000, n - i))])
            got_shas = [bytes.fromhex(r.sha256) for r in got]
            store.index.mark(store.index.rooted, got_shas, "hoard put")
            shas += got_shas
    return cfg_path, shas


def _logged(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _log_marks_agree(cfg_path: Path) -> None:
    """Every disk's marks log replays to exactly the index's marks, and no disk is behind."""
    with Store.open(config.load(cfg_path)) as store:
        want = {t: sorted(store.index.marked(getattr(store.index, t))) for t in marks.TABLES}
        assert store.marks_behind() == []
        for d in store.disks.values():
            found: set[marks.Record] = set()
            assert marks.read(marks.log_path(d.root).parent, found) == 0, d.label
            got = marks.replay(found)
            assert {t: sorted(got[t]) for t in marks.TABLES} == want, d.label


def _all_read_back(cfg_path: Path, shas: list[bytes]) -> None:
    with Store.open(config.load(cfg_path)) as store:
        for sha in shas:
            assert store.index.lookup(sha) is not None, sha.hex()
        for sha in shas[::97]:  # (a sample read through the store, checked against its sha256)
            assert store.get(sha.hex()) is not None


def test_no_write_transaction_of_a_maintenance_command_grows_with_the_store(tmp_path: Path) -> None:
    """40,000 objects: the marks snapshot, a release of 12,000 of them, a real gc of them, an
    index backup, rebuild and restore each commit at most TXN_ENTRIES entries per write
    transaction (the old code: one transaction per release — 24,000 — per gc swap, per
    rebuild's 50,000 objects)."""
    cfg_path, shas = _store(tmp_path, 40_000, shard_mb=1)  # (a gc transaction may hold one shard's dead members)
    released = tmp_path / "released.txt"
    released.write_text("".join(s.hex() + "\n" for s in sorted(shas)[-12_000:]))
    log_path = tmp_path / "txn.jsonl"
    steps = {"rewrite-marks": ("index", "rewrite-marks"),
             "delete": ("delete", "--objects-from", str(released), "--yes"),
             "gc": ("gc", "--no-database", "--threshold", "0.9"),
             "backup": ("index", "backup"), "rebuild": ("index", "rebuild"), "restore": ("index", "restore")}
    for name, args in steps.items():
        log_path.unlink(missing_ok=True)
        res = _hoard(cfg_path, *args, env={LOG_VAR: str(log_path)})
        assert res.returncode == 0, (name, res.stderr[-2000:])
        lines = _logged(log_path)
        assert lines and all(x["pid"] > 0 and x["argv"] for x in lines), name
        most = max(x["most_write_txn_writes"] for x in lines)
        assert most <= TXN_ENTRIES, (name, lines)
        if name != "backup":  # (a copy of the index: it writes none)
            assert most > 0 and all(x["longest_write_txn_site"] and x["write_txns"] > 0 for x in lines), (name, lines)
    _all_read_back(cfg_path, sorted(shas)[:-12_000])
    _log_marks_agree(cfg_path)


def test_a_marks_snapshot_lets_writers_in_and_keeps_their_records(tmp_path: Path, monkeypatch) -> None:
    """While a snapshot is being written, another process roots, releases and tombstones
    objects (the old code held the write transaction throughout: that process waited for
    it). Afterwards each disk's log holds the snapshot and those records: it replays to the
    index's marks, no disk is behind, and `hoard check` finds nothing."""
    import hoardfs.fsd.io.copies as copies  # where the snapshot is written

    cfg_path, shas = _store(tmp_path, 3000)
    real = marks.snapshot_chunks
    done: list[subprocess.CompletedProcess[str]] = []

    def meanwhile(stamp, tables, per=10_000):
        for i, piece in enumerate(real(stamp, tables, per=500)):
            if i == 2:  # a writer, half-way through the first disk's snapshot
                t = threading.Thread(target=lambda: done.append(_hoard(
                    cfg_path, "delete", "--yes", "--object", shas[0].hex(), "--object", shas[1].hex())))
                t.start()
                t.join(timeout=120)
                assert done and done[0].returncode == 0, done and done[0].stderr[-2000:]
            yield piece

    monkeypatch.setattr(copies.marks, "snapshot_chunks", meanwhile)
    with Store.open(config.load(cfg_path)) as store:
        labels = store.snapshot_marks()
        assert sorted(labels) == ["d0", "d1"]
        assert store.index.is_marked(store.index.deleted, shas[0])
        assert not store.index.is_marked(store.index.rooted, shas[1])
    monkeypatch.setattr(copies.marks, "snapshot_chunks", real)
    _log_marks_agree(cfg_path)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_marks_snapshot_killed_at_any_step_loses_no_mark(tmp_path: Path, after: int) -> None:
    """`hoard index rewrite-marks` killed right after its first write transaction (the stamp
    taken, the markers set, nothing renamed), after the first disk's rename, after the second's:
    every log still replays to the index's marks, `hoard check` finds nothing, and an index
    rebuild from the logs brings back every root."""
    cfg_path, shas = _store(tmp_path, 2000)
    with Store.open(config.load(cfg_path)) as store:
        store.index.mark(store.index.hidden, shas[:50], "a node deleted")
    res = _hoard(cfg_path, "index", "rewrite-marks", env={KILL_VAR: f"hoardfs.fsd.core.marks:snapshot_marks:{after}"})
    assert res.returncode == -9, res.stderr[-2000:]
    with Store.open(config.load(cfg_path)) as store:  # a writer's open: a disk behind is snapshotted
        store.index.mark(store.index.deleted, shas[50:60], "a batch deleted")
    _log_marks_agree(cfg_path)
    assert not [p for d in ("d0", "d1") for p in (tmp_path / d / "marks").glob(".marks.log.tmp")]  # (a writer's open removed them)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = _hoard(cfg_path, "index", "rebuild")
    assert res.returncode == 0, res.stderr[-2000:]
    with Store.open(config.load(cfg_path)) as store:
        assert store.index.marked(store.index.rooted) == set(shas)
        assert store.index.marked(store.index.hidden) == set(shas[:50])
        assert store.index.marked(store.index.deleted) == set(shas[50:60])


#: chunks of a few dozen entries, so that a small store takes many transactions
SMALL = {"HOARD_LMDB_TXN_ENTRIES": "200"}


def test_a_release_and_a_gc_killed_between_chunks_lose_nothing(tmp_path: Path) -> None:
    """`hoard delete --objects-from` killed after its third transaction, then `hoard gc` killed
    after the second transaction of its swap: `hoard check` finds nothing, every object not
    released reads back; re-run, both finish, and the released objects are freed."""
    cfg_path, shas = _store(tmp_path, 3000, shard_mb=1)
    gone, kept = shas[:1200], shas[1200:]
    listing = tmp_path / "released.txt"
    listing.write_text("".join(s.hex() + "\n" for s in gone))
    res = _hoard(cfg_path, "delete", "--objects-from", str(listing), "--yes",
                 env={**SMALL, KILL_VAR: "hoardfs.fsd.core.marks:_mark:3"})
    assert res.returncode == -9, res.stderr[-2000:]
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert _hoard(cfg_path, "delete", "--objects-from", str(listing), "--yes", env=SMALL).returncode == 0
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9",
                 env={**SMALL, KILL_VAR: "hoardfs.fsd.maintenance.gc:_swap:2"})
    assert res.returncode == -9, res.stderr[-2000:]
    _all_read_back(cfg_path, kept)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    _all_read_back(cfg_path, kept)
    with Store.open(config.load(cfg_path)) as store:
        assert not any(store.index.lookup(s) for s in gone)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _log_marks_agree(cfg_path)


def test_a_batch_deletion_killed_between_chunks_keeps_the_batch_whole(tmp_path: Path) -> None:
    """The store's side of `hoard delete --batch` (drop_batch) killed after its second chunk of
    tombstones: the batch is still registered, so a gc frees none of its files; a re-run
    finishes the deletion and the next gc frees them."""
    cfg_path, shas = _store(tmp_path, 2000, shard_mb=1)
    mine = shas[:800]
    with Store.open(config.load(cfg_path)) as store:
        store.index.unmark(store.index.rooted, mine)  # (a batch's files are not roots)
        body = batch_manifest("b1", "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(mine)},
                              {f"f{i}": 0 for i in range(len(mine))}, [], [])
        store.register_batch("b1", {"source": "t", "manifest": store.put_bytes(body).sha256})
    drop = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
            "from hoardfs.fsd.maintenance.deletion import drop_batch; "
            "s = Store.open(config.load(sys.argv[1])); print(drop_batch(s, 'b1')); s.close()")

    def run(env: dict) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", drop, str(cfg_path)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO, timeout=600)
    res = run({**SMALL, KILL_VAR: "hoardfs.fsd.core.marks:_mark:2"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.99").returncode == 0
    _all_read_back(cfg_path, shas)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = run(SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.99").returncode == 0
    _all_read_back(cfg_path, shas[800:])
    with Store.open(config.load(cfg_path)) as store:
        assert not any(store.index.lookup(s) for s in mine)
    _log_marks_agree(cfg_path)


@pytest.mark.parametrize("site", ["hoardfs.fsd.maintenance.gc:_swap:1", "hoardfs.fsd.maintenance.gc:_swap:3",
                                  "hoardfs.fsd.core.marks:unmark:1"])
def test_a_gc_killed_mid_way_keeps_what_a_batch_view_put_or_pin_names(tmp_path: Path, site: str) -> None:
    """Batch A is deleted; every object it named that something else names — batch B, view V,
    a named put (a root), a running job (a pin) — is tombstoned too (a `delete --object` or a
    race may do that). `hoard gc` killed after a transaction of its swap or of its clearing of
    tombstones, then run again: each of those objects reads back, A's own are freed, check is
    clean. gc decides once per run which manifests name what (manifest.References): a run
    killed mid-way leaves nothing a re-run could take for unreferenced."""
    from hoardfs.fsd.maintenance.deletion import drop_batch
    from hoardfs.fsd.outputs.views import define_view_rows

    cfg_path, shas = _store(tmp_path, 3000, shard_mb=1)
    a, rest = shas[:1200], shas[1200:]
    named = {"batch": a[:40], "view": a[40:80], "put": a[80:120], "pin": a[120:160]}
    cfg = config.load(cfg_path)
    with Store.open(cfg) as store:
        store.index.unmark(store.index.rooted, a)  # (a batch's files are not roots)

        def register(bid: str, files: list[bytes]) -> None:
            body = batch_manifest(bid, "t", "now", {f"f{i}": (s.hex(), 1) for i, s in enumerate(files)},
                                  {f"f{i}": 0 for i in range(len(files))}, [], [])
            store.register_batch(bid, {"source": "t", "manifest": store.put_bytes(body).sha256})

        register("A", a)
        register("B", named["batch"])
        define_view_rows(store, "V", ((f"v/{i}", s.hex()) for i, s in enumerate(named["view"])))
        store.index.mark(store.index.rooted, named["put"], "hoard put --name p")
        store.pin("job", [s.hex() for s in named["pin"]], "a job between its store and package steps")
        drop_batch(store, "A")
        store.index.mark(store.index.deleted, [s for group in named.values() for s in group], "delete --object")
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9", env={**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    kept = [s for group in named.values() for s in group] + rest
    _all_read_back(cfg_path, kept)
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "0.9", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    _all_read_back(cfg_path, kept)
    with Store.open(cfg) as store:
        assert not any(store.index.lookup(s) for s in a[160:])
        assert store.index.marked(store.index.deleted) == set()
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _log_marks_agree(cfg_path)


def _empty_store(tmp_path: Path) -> Path:
    """A new store on two directory disks, two copies (`hoard put` needs one made)."""
    cfg_path = dir_disks_config(tmp_path, 2, copy_of_raw=2, write_ack=2)
    with Store.open(config.load(cfg_path), init=True):
        pass
    return cfg_path


def _small_files(where: Path, n: int, seed: int) -> Path:
    """`n` files of 16–64 B under `where` (a group's 32 MiB would hold hundreds of thousands)."""
    rng = random.Random(seed)
    where.mkdir()
    for i in range(n):
        (where / f"{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(16, 64)))
    return where


def test_a_put_of_many_small_files_commits_in_bounded_transactions(tmp_path: Path) -> None:
    """`hoard put` of 3,000 small files with chunks of 1,000 entries: no write transaction
    writes more (the old code: a group commit per 32 MiB, here all 3,000 files — one
    transaction of an objects entry and an extension each, 6,000 entries; at 10 M objects a
    group of ~14,000 held the index over 1 s)."""
    cfg_path = _empty_store(tmp_path)
    files = _small_files(tmp_path / "in", 3000, seed=5)
    log_path = tmp_path / "txn.jsonl"
    res = _hoard(cfg_path, "put", "--json", str(files), env={"HOARD_LMDB_TXN_ENTRIES": "1000", LOG_VAR: str(log_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    stored = [bytes.fromhex(json.loads(x)["sha256"]) for x in res.stdout.splitlines()]
    assert len(stored) == 3000
    (line,) = _logged(log_path)
    assert 0 < line["most_write_txn_writes"] <= 1000, line
    _all_read_back(cfg_path, stored)


def test_a_put_killed_between_its_group_commits_keeps_what_it_reported(tmp_path: Path) -> None:
    """`hoard put` killed right after its second group's index transaction: every file it
    printed reads back, `hoard check` finds nothing, and the put run again stores the rest —
    each file once, and all of them read back."""
    cfg_path = _empty_store(tmp_path)
    files = _small_files(tmp_path / "in", 3000, seed=6)
    small = {"HOARD_LMDB_TXN_ENTRIES": "1000"}
    res = _hoard(cfg_path, "put", "--json", str(files), env={**small, KILL_VAR: "hoardfs.fsd.core.index:add_objects:2"})
    assert res.returncode == -9, res.stderr[-2000:]
    reported = [bytes.fromhex(json.loads(x)["sha256"]) for x in res.stdout.splitlines()]
    assert 0 < len(reported) < 3000  # (the first group's files, told before the second's commit)
    _all_read_back(cfg_path, reported)
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    res = _hoard(cfg_path, "put", "--json", str(files), env=small)
    assert res.returncode == 0, res.stderr[-2000:]
    again = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(again) == 3000 and {bytes.fromhex(x["sha256"]) for x in again} >= set(reported)
    assert sum(x["status"] == "existing" for x in again) >= len(reported)
    _all_read_back(cfg_path, [bytes.fromhex(x["sha256"]) for x in again])
    with Store.open(config.load(cfg_path)) as store:
        assert store.index.count_objects() == 3000
    res = _hoard(cfg_path, "check", "--no-database")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_a_put_of_files_the_store_has_writes_their_extensions_in_bounded_transactions(tmp_path: Path) -> None:
    """The second `hoard put` of 3,000 small files (all "existing"), chunks of 1,000 entries:
    their extensions are remembered within the chunk too (the old code: one transaction of every
    existing file's extension — an ingest's resume of a 20,000-file batch, 20,000)."""
    cfg_path = _empty_store(tmp_path)
    files = _small_files(tmp_path / "in", 3000, seed=7)
    small = {"HOARD_LMDB_TXN_ENTRIES": "1000"}
    assert _hoard(cfg_path, "put", "--json", str(files), env=small).returncode == 0
    log_path = tmp_path / "txn.jsonl"
    res = _hoard(cfg_path, "put", "--json", str(files), env={**small, LOG_VAR: str(log_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert [json.loads(x)["status"] for x in res.stdout.splitlines()] == ["existing"] * 3000
    (line,) = _logged(log_path)
    assert 0 < line["most_write_txn_writes"] <= 1000, line
