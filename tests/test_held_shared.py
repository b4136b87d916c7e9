"""The `held` table's short keys (fsd/core/held.py: an object's first 12 bytes, a manifest's
first 4; index format 5): a prefix two things share may keep an object, never free one. Two
registered batch manifests that share their 4 bytes — found by varying a field of the
manifests, then stored and registered as an ingest does — and an entry of another object's 12
bytes written into the table stand for the collisions; the deletions, gc, `hoard info` and
check, health and verify run on them as on any store. And an index of format 4, whose keys are
16 + 8 bytes, is read through its manifests until the migration to 5 has cut them."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from hoardfs.base import config
from hoardfs.fsd.core import formats, held
from hoardfs.fsd.core.txnlog import KILL_VAR
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.outputs.manifest import PAGE_ENTRIES, VIEW_FORMAT, _Builder, batch_manifest
from hoardfs.fsd.outputs.views import define_view_rows, remove_view
from hoardfs.fsd.store import Store
from tests.helpers import REPO, dir_disks_config, freed, reads_back
from tests.test_held import SMALL, _clean, _drop, _fresh, _hoard, _objects, _table

# tier: the module's tests start hoard processes
pytestmark = pytest.mark.services


def _sharing_bodies(files: dict[str, dict[str, tuple[str, int]]]) -> dict[str, bytes]:
    """A batch manifest for each name in `files` (two), the two of sha256 sharing their first
    `held.MAN` bytes and no more: their `signalled` field varied until two prefixes meet (a few
    hundred thousand hashes)."""
    (na, fa), (nb, fb) = files.items()
    ta, tb = (batch_manifest(n, "t", "@SIGNALLED@", f, dict.fromkeys(f, 0), [], []) for n, f in ((na, fa), (nb, fb)))
    seen: tuple[dict[bytes, bytes], dict[bytes, bytes]] = ({}, {})
    for i in itertools.count():
        for side, template in enumerate((ta, tb)):
            body = template.replace(b"@SIGNALLED@", b"2026-%d" % i)
            prefix = hashlib.sha256(body).digest()[:held.MAN]
            seen[side][prefix] = body
            if prefix in seen[1 - side]:
                a, b = (body, seen[1][prefix]) if side == 0 else (seen[0][prefix], body)
                return {na: a, nb: b}
    raise AssertionError("unreachable")


def _register(store: Store, name: str, body: bytes, files: int) -> bytes:
    manifest = store.put_bytes(body).sha256
    store.register_batch(name, {"source": "t", "manifest": manifest, "files": files, "bytes": 0})
    return bytes.fromhex(manifest)


def _pair(tmp_path: Path, unregistered: str = "") -> tuple[Path, dict[str, list[bytes]], dict[str, bytes]]:
    """Batches A and B whose manifests share their first 4 bytes, naming objects of their own and
    some both name; a batch C apart (`unregistered`: that one's manifest only stored). Returns the
    config, the objects by kind, the manifests."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    with Store.open(config.load(cfg_path), init=True) as store:
        every = _objects(store, 150, 7)
        kinds = {"a_only": every[:50], "shared": every[50:70], "b_only": every[70:120], "c": every[120:]}
        names = {"A": kinds["a_only"] + kinds["shared"], "B": kinds["shared"] + kinds["b_only"]}
        files = {n: {f"f{i}": (s.hex(), 1) for i, s in enumerate(shas)} for n, shas in names.items()}
        bodies = _sharing_bodies(files)
        manifests = {n: bytes.fromhex(store.put_bytes(bodies[n]).sha256) if n == unregistered
                     else _register(store, n, bodies[n], len(names[n])) for n in names}
        c = {f"c{i}": (s.hex(), 1) for i, s in enumerate(kinds["c"])}
        manifests["C"] = _register(store, "C", batch_manifest("C", "t", "now", c, dict.fromkeys(c, 0), [], []), len(c))
    assert manifests["A"][:held.MAN] == manifests["B"][:held.MAN] and manifests["A"] != manifests["B"]
    return cfg_path, kinds, manifests


def _judged_alike(cfg_path: Path) -> list[str]:
    """The `held` findings of check, which health and verify must name alike."""
    check = [p for p in json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
             if "held" in p]
    health = [p for p in json.loads(_hoard(cfg_path, "health", "--json").stdout)["problems"] if "held" in p]
    verify = _hoard(cfg_path, "verify", "--sample", "1")
    assert len(health) == len(check) and all(h.endswith(c) for h, c in zip(health, check, strict=True)), (check, health)
    assert all(c in verify.stdout + verify.stderr for c in check) and verify.returncode == (5 if check else 0), verify
    return check


def test_batches_sharing_a_manifest_prefix_each_free_only_their_own(tmp_path: Path) -> None:
    """A's deletion tombstones A's own objects and none B names — the files B shows in the mount
    stay shown —, its gc frees them (with A's manifest) and keeps B's, the table is then what B
    and C make; B's deletion and gc free the rest of B. The old code cut its keys to these
    prefixes would tombstone B's shared files with A's (the prefix left out with A) and keep A's
    entries while B is registered: gc then kept every object of A, and the entries outlived B."""
    cfg_path, kinds, manifests = _pair(tmp_path)
    with Store.open(config.load(cfg_path)) as store:
        assert drop_batch(store, "A") == (len(kinds["a_only"]) + 1, len(kinds["shared"]))
        keep = set(kinds["shared"] + kinds["b_only"])
        assert store.index.marked_among(store.index.deleted, keep) == set()
        with store.index.env.begin(db=store.index.held) as txn:  # (B's entries and C's: none of A's alone)
            assert {bytes(k) for k in txn.cursor().iternext(values=False)} == _fresh(store)
        gc(store, threshold=1.0)
    freed(cfg_path, kinds["a_only"] + [manifests["A"]])
    reads_back(cfg_path, kinds["shared"] + kinds["b_only"] + kinds["c"] + [manifests["B"]])
    _clean(cfg_path)
    assert _judged_alike(cfg_path) == []
    with Store.open(config.load(cfg_path)) as store:
        assert drop_batch(store, "B") == (len(kinds["shared"]) + len(kinds["b_only"]) + 1, 0)
        gc(store, threshold=1.0)
    freed(cfg_path, kinds["shared"] + kinds["b_only"])
    reads_back(cfg_path, kinds["c"])
    assert not [k for k in _table(config.load(cfg_path).index_dir)[0] if k[held.OBJ:] == manifests["A"][:held.MAN]]
    _clean(cfg_path)


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.pointers:keep_pointer:1", "hoardfs.fsd.core.held:unhold:1"])
def test_a_killed_deletion_beside_a_sharing_manifest_is_one_finding_and_loses_nothing(tmp_path: Path,
                                                                                      site: str) -> None:
    """A's deletion killed after its unregistration or its first removal of entries, B sharing
    A's prefix: check, health and verify name only the pending record (check counted B's prefix
    with A's entries left: "has N entries and names M objects", `hoard index rebuild`); the gc
    they name finishes it — A's own objects freed, every object B names read back — and check is
    clean."""
    cfg_path, kinds, manifests = _pair(tmp_path)
    res = _drop(cfg_path, "A", {**SMALL, KILL_VAR: site})
    assert res.returncode == -9, res.stderr[-2000:]
    [line] = _judged_alike(cfg_path)
    assert "batch A" in line and "`hoard gc`" in line, line
    res = _hoard(cfg_path, "gc", "--no-database", "--threshold", "1.0", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    freed(cfg_path, kinds["a_only"] + [manifests["A"]])
    reads_back(cfg_path, kinds["shared"] + kinds["b_only"] + kinds["c"])
    _clean(cfg_path)
    assert _judged_alike(cfg_path) == []


@pytest.mark.parametrize("site", ["hoardfs.fsd.core.held:hold:2", "hoardfs.fsd.core.held:hold:3"])
def test_a_registration_killed_beside_a_sharing_manifest_is_finished_by_gc(tmp_path: Path, site: str) -> None:
    """A's registration killed while its entries are added, B registered with A's prefix: check,
    health and verify name the pending record alike; the gc they name removes A's entries but
    not those of objects B names (the table then what B and C make: the old code cut to 4 bytes
    left every entry of A, for good), and a deletion of B frees all of B."""
    cfg_path, kinds, manifests = _pair(tmp_path, unregistered="A")
    code = ("import sys; from hoardfs.base import config; from hoardfs.fsd.store import Store; "
            "from hoardfs.fsd.outputs.manifest import naming_lock; s = Store.open(config.load(sys.argv[1]))\n"
            "with naming_lock(s):\n"
            "    s.register_batch('A', {'source': 't', 'manifest': sys.argv[2], 'files': 70, 'bytes': 0})")
    res = subprocess.run([sys.executable, "-c", code, str(cfg_path), manifests["A"].hex()], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO), **SMALL, KILL_VAR: site}, cwd=REPO,
                         timeout=600)
    assert res.returncode == -9, res.stderr[-2000:]
    [line] = _judged_alike(cfg_path)
    assert "batch A" in line and "`hoard gc`" in line, line
    res = _hoard(cfg_path, "gc", "--no-database", env=SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    _clean(cfg_path)
    with Store.open(config.load(cfg_path)) as store:
        assert drop_batch(store, "B") == (len(kinds["shared"]) + len(kinds["b_only"]) + 1, 0)
        gc(store, threshold=1.0)
    freed(cfg_path, kinds["shared"] + kinds["b_only"])
    reads_back(cfg_path, kinds["c"])
    _clean(cfg_path)


def test_an_entry_of_another_objects_prefix_keeps_it_and_misleads_nothing(tmp_path: Path) -> None:
    """An entry under an object's 12 bytes naming B (as if B named another object of those 12
    bytes, 1 in 2^96 per pair) keeps that object through the deletion of C, its one batch, and
    gc; `hoard info` names C alone for it (it reads B too and finds no path), and check finds
    nothing in the table."""
    cfg_path, kinds, manifests = _pair(tmp_path)
    lone = kinds["c"][0]
    with Store.open(config.load(cfg_path)) as store:
        with store.index.env.begin(write=True, db=store.index.held) as txn:
            assert txn.put(held.pair(lone, manifests["B"]), b"")
        assert store.index.holders(lone) == {manifests["B"][:held.MAN], manifests["C"][:held.MAN]}
    info = _hoard(cfg_path, "info", lone.hex(), "--json")
    assert info.returncode == 0, info.stderr[-2000:]
    assert json.loads(info.stdout)["in_manifests"] == [{"batch": "C", "path": "c0"}]
    with Store.open(config.load(cfg_path)) as store:
        assert drop_batch(store, "C") == (len(kinds["c"]), 1)  # its other files and its manifest
        assert not store.index.marked_among(store.index.deleted, {lone})
        gc(store, threshold=1.0)
    reads_back(cfg_path, [lone] + kinds["a_only"] + kinds["shared"] + kinds["b_only"])
    freed(cfg_path, kinds["c"][1:])
    lines = [p for p in json.loads(_hoard(cfg_path, "check", "--no-database", "--json").stdout)["problems"]
             if "held" in p]
    assert lines == []  # (B's prefix is A's: its entries are counted against what both name)


def _long(store: Store) -> set[bytes]:
    """The `held` keys formats 3 and 4 wrote for the registered manifests (16 + 8 bytes)."""
    return {sha[:held.LONG_OBJ] + bytes.fromhex(info["manifest"])[:held.LONG_MAN]
            for _kind, _name, info in held.named(store.index) for sha in held.named_by(store.get, info["manifest"])}


def _as_format_4(cfg_path: Path, at: Path | None = None) -> None:
    """The index (or its copy `at`) as format 4 wrote it: the `held` table of 16 + 8-byte keys,
    format 4."""
    cfg = config.load(cfg_path)
    with Store.open(cfg, writable=False) as store:
        keys = _long(store)
    env = lmdb.open(str(at or cfg.index_dir), max_dbs=24, map_size=1 << 40)
    with env.begin(write=True) as txn:
        db = env.open_db(b"held", txn=txn)
        txn.drop(db, delete=False)
        for k in keys:
            txn.put(k, b"", db=db)
        txn.put(formats.INDEX_KEY.encode(), b"4", db=env.open_db(b"meta", txn=txn))
    env.close()


def _a_deleted_keeps_b(cfg_path: Path, kinds: dict[str, list[bytes]]) -> None:
    """A's deletion and gc free A's own objects and keep every object B (sharing A's 4 bytes)
    and C name; check is clean after."""
    with Store.open(config.load(cfg_path)) as store:
        drop_batch(store, "A")
        gc(store, threshold=1.0)
    reads_back(cfg_path, kinds["shared"] + kinds["b_only"] + kinds["c"])
    freed(cfg_path, kinds["a_only"])
    _clean(cfg_path)


@pytest.mark.parametrize("kill", [None, "hoardfs.fsd.core.held:_sweep:2"])
def test_an_index_of_format_4_is_read_by_its_manifests_until_its_keys_are_cut(tmp_path: Path, kill: str | None) -> None:
    """An index of format 4 (keys of 16 + 8 bytes) is not asked by these keys — a deletion of A
    on it as it is asks the manifests —; `hoard index migrate` (killed in its pass: the index
    stays at 4, the next one finishes) cuts them to the table the store's manifests make; then
    A's deletion and gc keep every object B names (the old keys read as 12 + 4 name no
    registered manifest: B's shared files were freed)."""
    cfg_path, kinds, manifests = _pair(tmp_path)
    cfg = config.load(cfg_path)
    with Store.open(cfg, writable=False) as store:
        fresh = _fresh(store)
    _as_format_4(cfg_path)
    with Store.open(cfg, writable=False) as store:
        assert store.index.format == 4 and not store.index.held_ready()
    assert _hoard(cfg_path, "check", "--no-database").returncode == 0
    if kill is not None:
        res = _hoard(cfg_path, "index", "migrate", env={**SMALL, KILL_VAR: kill})
        assert res.returncode == -9, res.stderr[-2000:]
        with Store.open(cfg, writable=False) as store:
            assert store.index.format == 4 and not store.index.held_ready()
            raw = store.index.get_meta(formats.INDEX_KEY)
        # a release of format 4 would read the keys cut as missing entries — A's deletion there
        # tombstoned what B names, its gc freed it —: by its reading (parse_version, no other
        # since the key exists) the index is newer, which it refuses
        assert formats.parse_version(raw) > 4, raw
        assert {len(k) for k in _table(cfg.index_dir)[0]} == {held.OBJ + held.MAN, held.LONG_OBJ + held.LONG_MAN}
    res = _hoard(cfg_path, "index", "migrate", env=SMALL)
    assert res.returncode == 0 and "(migrated from format 4)" in res.stdout, res.stdout + res.stderr[-2000:]
    assert _table(cfg.index_dir) == (dict.fromkeys(fresh, b""), {})
    _a_deleted_keeps_b(cfg_path, kinds)


class _Unstored(_Builder):
    """A view's directory objects and manifest as build_view makes them, hashed and not stored."""

    def flush(self) -> None:
        self.pending, self.pending_bytes = [], 0


def _view_sha(name: str, rows: list[tuple[str, bytes, int]]) -> str:
    """The sha256 of the manifest `build_view` makes of `rows` (path, sha256, size; in path order)."""
    builder = _Unstored(None, name, PAGE_ENTRIES)
    root, files, total = builder.build((path.split("/"), sha.hex(), size) for path, sha, size in rows)
    body = json.dumps({"format": VIEW_FORMAT, "name": name, "files": files, "bytes": total, "root": root},
                      sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()


def test_an_output_view_sharing_a_batch_manifest_prefix_releases_its_files(tmp_path: Path) -> None:
    """An output's view (3B-…) whose manifest shares its first 4 bytes with a registered batch's:
    cleaning the output releases the files it served that nothing else holds — tombstoned, freed
    by gc — and keeps the batch's. The release asked `held` before the view's entries were
    removed, counting them as the batch's (its prefix is registered): the files were kept for as
    long as the batch is, untombstoned — a leak no check names."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1)
    name = "3B-shared"
    with Store.open(config.load(cfg_path), init=True) as store:
        every = _objects(store, 40, 11)
        served, kept = every[:20], every[20:]
        sizes = {sha: store.index.lookup(sha).length for sha in served}
        files = {f"k{i}": (s.hex(), 1) for i, s in enumerate(kept)}
        template = batch_manifest("B", "t", "@SIGNALLED@", files, dict.fromkeys(files, 0), [], [])
        views: dict[bytes, str] = {}
        batches: dict[bytes, bytes] = {}
        for i in itertools.count():  # (both sides varied: a few hundred thousand hashes)
            tag = f"v{i}"
            view_sha = _view_sha(name, sorted((f"{tag}/s{j:02d}", s, sizes[s]) for j, s in enumerate(served)))
            views[bytes.fromhex(view_sha)[:held.MAN]] = tag
            body = template.replace(b"@SIGNALLED@", b"2026-%d" % i)
            batches[hashlib.sha256(body).digest()[:held.MAN]] = body
            meet = views.keys() & batches.keys()
            if meet:
                prefix = meet.pop()
                break
        manifest_b = _register(store, "B", batches[prefix], len(kept))
        tag = views[prefix]
        info = define_view_rows(store, name, [(f"{tag}/s{j:02d}", s.hex()) for j, s in enumerate(served)],
                                for_output=True)
        assert bytes.fromhex(info["manifest"])[:held.MAN] == manifest_b[:held.MAN] == prefix
        remove_view(store, name, for_output=True)
        assert store.index.marked_among(store.index.deleted, set(served)) == set(served)
        assert store.index.marked_among(store.index.deleted, set(kept)) == set()
        gc(store, threshold=1.0)
    freed(cfg_path, served)
    reads_back(cfg_path, kept + [manifest_b])
    _clean(cfg_path)


def test_an_index_copy_of_format_4_restores_to_the_short_keys(tmp_path: Path) -> None:
    """`hoard index restore` from a copy format 4 wrote (its `held` keys 16 + 8 bytes), the index
    lost: the restored index is of this format with the table the manifests make, check is
    clean, and A's deletion and gc keep every object B (sharing A's 4 bytes) names."""
    cfg_path, kinds, manifests = _pair(tmp_path)
    cfg = config.load(cfg_path)
    res = _hoard(cfg_path, "index", "backup")
    assert res.returncode == 0, res.stderr[-2000:]
    with Store.open(cfg, writable=False) as store:
        fresh = _fresh(store)
    copies = [d.path / "index-copy" for d in cfg.disks if (d.path / "index-copy" / "data.mdb").exists()]
    assert copies
    for copy in copies:
        _as_format_4(cfg_path, copy)
    shutil.rmtree(cfg.index_dir)
    res = _hoard(cfg_path, "index", "restore")
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    with Store.open(cfg) as store:
        assert store.index.format == formats.INDEX and store.index.held_ready()
    assert _table(cfg.index_dir) == (dict.fromkeys(fresh, b""), {})
    _clean(cfg_path)
    _a_deleted_keeps_b(cfg_path, kinds)
