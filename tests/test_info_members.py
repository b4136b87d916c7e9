"""`hoard info` finds an object's manifest paths by reading only the manifests that hold it
(hoardfs.fsd.outputs.members), with the same answer as reading every manifest."""

from __future__ import annotations

from pathlib import Path

from hoardfs.cli.find import _manifest_paths
from hoardfs.fsd.outputs import members
from hoardfs.fsd.outputs.manifest import batch_manifest, iter_files, named, naming_lock
from hoardfs.fsd.outputs.views import define_view_rows
from tests.helpers import make_files

T0 = "2026-01-01T00:00:00+00:00"


def _batches(store, res, per: int) -> list[str]:
    """One registered batch manifest per `per` objects (as the ingest's package step registers
    one), the last object in the first batch too; their manifest sha256s."""
    manifests = []
    for b, first in enumerate(range(0, len(res), per)):
        part = res[first:first + per] + ([res[-1]] if b == 0 else [])
        stored = {f"b{b}/{i:03d}.bin": (r.sha256, r.size) for i, r in enumerate(part)}
        put = store.put_bytes(batch_manifest(f"batch-{b}", "synth", T0, stored, dict.fromkeys(stored, 0), [], []))
        with naming_lock(store):
            store.register_batch(f"batch-{b}", {"source": "synth", "manifest": put.sha256, "files": len(stored),
                                                "bytes": 0, "sealed": T0})
        members.remember(store, put.sha256, [bytes.fromhex(r.sha256) for r in part])
        manifests.append(put.sha256)
    return manifests


def _every_manifest(store, sha: bytes) -> list[dict[str, str]]:
    """The answer by reading every registered manifest (what `hoard info` did before)."""
    return [{kind: name, "path": path} for kind, name, info in named(store.index)
            for path, s, _ in iter_files(store.get, info["manifest"]) if s == sha]


class Reads:
    """The objects read through `store.get` (a manifest read is a read of its objects)."""

    def __init__(self, store) -> None:
        self.shas: list[str] = []
        self._get = store.get
        store.get = self

    def __call__(self, sha: str, *args, **kwargs):
        self.shas.append(sha)
        return self._get(sha, *args, **kwargs)


def test_info_reads_only_the_manifests_holding_the_object(store_factory, tmp_path: Path) -> None:
    """With 8 batches and a view of directories of their own registered, the paths of an object
    come from reading the one batch manifest and the view's directory objects that hold it —
    no other manifest, not the view's root — in the order reading every manifest gives them;
    an object no manifest names reads nothing."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 41, lo=64, hi=256))
    manifests = _batches(store, res[:40], 5)
    # directories of 20 files (more than INLINE_ENTRIES: objects of their own); res[4] in two of them
    rows = [(f"d{k}/{i:02d}.bin", res[(k * 20 + i) % 40].sha256) for k in range(3) for i in range(20)]
    rows += [("d1/zz.bin", res[4].sha256), ("top.bin", res[4].sha256)]
    rows.sort(key=lambda row: row[0].split("/"))  # (in order: no `sort` process)
    view = define_view_rows(store, "v", rows)
    for r in (res[4], res[39], res[21]):
        sha = bytes.fromhex(r.sha256)
        expect = _every_manifest(store, sha)
        reads = Reads(store)
        got = _manifest_paths(store, sha)
        store.get = reads._get
        assert got == expect and expect
        holders = {m for m in manifests if any(s == sha for _, s, _ in iter_files(store.get, m))}
        in_view = {path.rpartition("/")[0] for path, s in rows if s == r.sha256}  # its directories' objects
        assert set(reads.shas) & set(manifests) == holders
        assert view["manifest"] not in reads.shas
        assert len(reads.shas) == len(holders) + len(in_view), (reads.shas, in_view)
    alone = bytes.fromhex(res[40].sha256)
    reads = Reads(store)
    assert _manifest_paths(store, alone) == []
    store.get = reads._get
    assert not reads.shas


def test_members_file_missing_or_damaged_is_made_again(store_factory, tmp_path: Path) -> None:
    """A members file deleted or cut short is not trusted: the lookup reads that manifest,
    answers as reading every manifest does and writes the file whole again."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 12, lo=64, hi=256))
    first, second = _batches(store, res, 6)
    folder = store.cfg.ssd.root / members.FOLDER
    (folder / f"{first}.bin").unlink()
    whole = (folder / f"{second}.bin").read_bytes()
    (folder / f"{second}.bin").write_bytes(whole[:-3])
    for r in res:
        sha = bytes.fromhex(r.sha256)
        assert _manifest_paths(store, sha) == _every_manifest(store, sha)
    assert (folder / f"{second}.bin").read_bytes() == whole
    # header, a pair per distinct prefix, one place (the batch's manifest) and no path
    assert (folder / f"{first}.bin").stat().st_size == 32 + 12 * len({r.sha256[:16] for r in res[:6] + [res[-1]]}) + 44


def test_a_shared_prefix_reads_the_manifest_and_finds_nothing(store_factory, tmp_path: Path) -> None:
    """An object that shares its first 16 bytes with a named one (neither the index's `held`
    table nor the members file can tell them apart) gets no path of the other: the manifest is
    read and whole sha256s compared. One sharing only 8 bytes is told apart by `held`: no
    manifest is read."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 4, lo=64, hi=256))
    [manifest] = _batches(store, res, 4)
    named_sha = bytes.fromhex(res[1].sha256)
    for twin, read in ((named_sha[:16] + bytes(16), True), (named_sha[:8] + bytes(24), False)):
        reads = Reads(store)
        assert _manifest_paths(store, twin) == []
        store.get = reads._get
        assert (manifest in reads.shas) is read


def test_info_looks_up_only_the_manifests_held_names(store_factory, tmp_path: Path) -> None:
    """On an index of format 3, `hoard info` opens the members files of only the manifests whose
    `held` entries name the object — not one per registered batch (its time grew with the
    number of batches): with the members folder emptied, a lookup makes again only the
    holders' files, and answers as reading every manifest does."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 30, lo=64, hi=256))
    manifests = _batches(store, res, 5)
    folder = store.cfg.ssd.root / members.FOLDER
    for r in (res[0], res[29], res[12]):
        for p in folder.iterdir():
            p.unlink()
        sha = bytes.fromhex(r.sha256)
        assert _manifest_paths(store, sha) == _every_manifest(store, sha)
        holders = {m for m in manifests if any(s == sha for _, s, _ in iter_files(store.get, m))}
        assert {p.stem for p in folder.iterdir()} == holders and 0 < len(holders) < len(manifests)


def test_a_replaced_view_leaves_no_members_file(store_factory, tmp_path: Path) -> None:
    """Registering a manifest removes the members files of manifests no longer registered (a
    view's old definition); the new definition's file answers for it."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 4, lo=64, hi=256))
    old = define_view_rows(store, "v", [("a.bin", res[0].sha256)])
    folder = store.cfg.ssd.root / members.FOLDER
    assert (folder / f"{old['manifest']}.bin").exists()
    new = define_view_rows(store, "v", [("b.bin", res[1].sha256)])
    assert sorted(p.stem for p in folder.iterdir()) == [new["manifest"]]
    assert _manifest_paths(store, bytes.fromhex(res[1].sha256)) == [{"view": "v", "path": "b.bin"}]
    assert _manifest_paths(store, bytes.fromhex(res[0].sha256)) == []


def test_a_paged_directory_reads_one_page(store_factory, tmp_path: Path) -> None:
    """A view whose one directory is split into pages (9,000 entries): an object named once is
    found by reading the one page that holds it; one named on every page, on all of them —
    each as reading the whole view finds it."""
    store = store_factory(n_disks=2, caps=None, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 4, lo=64, hi=256))
    rows = [(f"all/{i:05d}.bin", res[i % 3].sha256 if i != 6001 else res[3].sha256) for i in range(9000)]
    define_view_rows(store, "big", rows)
    once, everywhere = bytes.fromhex(res[3].sha256), bytes.fromhex(res[0].sha256)
    reads = Reads(store)
    assert _manifest_paths(store, once) == [{"view": "big", "path": "all/06001.bin"}]
    store.get = reads._get
    assert len(reads.shas) == 1
    assert _manifest_paths(store, everywhere) == _every_manifest(store, everywhere)
