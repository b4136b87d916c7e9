"""View manifests (hoardfs-view-2): built in bounded memory from rows in any order, read a
directory at a time, kept by gc, checked by `hoard check`; old one-document manifests still
read. Real stores on directory disks; one 10 M-entry view (also through the mount)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import subprocess
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core.records import ObjectNotFound
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.outputs.manifest import (
    DIR_FORMAT,
    INLINE_ENTRIES,
    VIEW_FORMAT,
    Tree,
    WouldBlock,
    build_view,
    iter_files,
    manifest_objects,
)
from hoardfs.fsd.outputs.views import ViewError, define_view, define_view_rows, remove_view
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files

REPO = Path(__file__).resolve().parents[1]


def _paths(res) -> dict[str, str]:
    """A little tree: files at the top, nested directories, names that sort tricky."""
    names = ["a.txt", "a/b.png", "a/c/d.png", "a-b/x", "a.b/y", "z", "a/c/e/f/g.bin", "a/ü/ñ.jpg"]
    return {p: res[i % len(res)].sha256 for i, p in enumerate(names)}


def _expected_dirs(rows: dict[str, str]) -> dict[str, list[str]]:
    dirs: dict[str, set[str]] = {"": set()}
    for p in rows:
        parts = p.split("/")
        for i in range(len(parts)):
            dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
    return {d: sorted(kids) for d, kids in dirs.items()}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.parametrize("page_entries", [2, 4096])
def test_view2_roundtrip_any_order(store_factory, tmp_path: Path, page_entries: int) -> None:
    """Rows in random order → list_dir/lookup/iter_files give back exactly the input, in
    component order; with 2 entries per page every directory is split into pages."""
    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 5))
    size = {r.sha256: r.size for r in res}
    rows = _paths(res)
    for k in range(40):  # a directory large enough to be split
        rows[f"big/f{k:03d}"] = res[k % 5].sha256
    shuffled = list(rows.items())
    random.Random(1).shuffle(shuffled)
    built = build_view(store, "t", shuffled, page_entries=page_entries)
    assert built["files"] == len(rows) and built["bytes"] == sum(size[s] for s in rows.values())
    tree = Tree(store.get, built["manifest"])
    with pytest.raises(WouldBlock):
        tree.list_dir_nowait("")
    for d, kids in _expected_dirs(rows).items():
        got = tree.list_dir(d)
        assert [e.name for e in got] == kids, d
        for e in got:
            full = f"{d}/{e.name}" if d else e.name
            assert e.is_dir == (full not in rows)
            if not e.is_dir:
                assert e.sha.hex() == rows[full] and e.size == size[rows[full]]
            assert tree.lookup_nowait(d, e.name) == e  # loaded now: no WouldBlock
    assert tree.list_dir("a.txt") is None and tree.list_dir("nope") is None
    assert tree.lookup("a/c", "missing") is None and tree.lookup("nope", "x") is None
    files = list(iter_files(store.get, built["manifest"]))
    assert {p: s.hex() for p, s, _ in files} == rows
    assert [p for p, _, _ in files] == sorted(rows, key=lambda p: p.split("/"))
    own = set(manifest_objects(store.get, built["manifest"]))
    assert bytes.fromhex(built["manifest"]) in own and len(own) == len(set(built["objects"]))
    if page_entries == 2:
        top = json.loads(store.get(json.loads(store.get(built["manifest"]))["root"]))
        assert "pages" in top and top["format"] == DIR_FORMAT


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_nowait_reads_fetch_what_comes_without_waiting(store_factory, tmp_path: Path) -> None:
    """Given a getter that answers without waiting (the mount's page cache reads), the
    `_nowait` calls fetch and parse pages themselves — a lookup its path's objects, a
    listing at most NOWAIT_PAGES missing pages (more: WouldBlock, for a worker thread) —;
    a getter answering None leaves them to the blocking calls, as before."""
    from hoardfs.fsd.outputs.manifest import NOWAIT_PAGES

    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 5))
    rows = {f"big/f{k:03d}": res[k % 5].sha256 for k in range(40)} | {"small/x": res[0].sha256}
    built = build_view(store, "t", list(rows.items()), page_entries=2)  # big/: 20 pages
    fetched: list[str] = []

    def nowait(sha: str) -> bytes:
        fetched.append(sha)
        return store.get(sha)

    tree = Tree(store.get, built["manifest"], get_nowait=nowait)
    e = tree.lookup_nowait("big", "f007")
    assert e is not None and e.sha.hex() == rows["big/f007"] and fetched
    assert [x.name for x in tree.list_dir_nowait("small") or []] == ["x"]
    with pytest.raises(WouldBlock):
        tree.list_dir_nowait("big")  # 19 pages not parsed yet
    assert len(tree.list_dir("big") or []) == 40
    assert len(tree.list_dir_nowait("big") or []) == 40 and NOWAIT_PAGES < 19
    cold = Tree(store.get, built["manifest"], get_nowait=lambda sha: None)
    with pytest.raises(WouldBlock):
        cold.lookup_nowait("big", "f007")
    assert cold.lookup("big", "f007") == e


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_bad_rows_refused_with_the_path(store_factory, tmp_path: Path) -> None:
    store = store_factory(n_disks=2)
    one, two = store.put_many(make_files(tmp_path / "in", 2))
    cases = [
        ([("x/a.png", one.sha256), ("x/a.png", two.sha256)], r"path 'x/a.png' appears twice"),
        ([("a/b/c", one.sha256), ("a/b", two.sha256)], r"path 'a/b' is a file, but 'a/b/c' needs it as a directory"),
        ([("../up", one.sha256)], r"climbs out"),
        ([("tab\there", one.sha256)], r"control characters"),
        ([("ok", "0" * 64)], r"ok: '0{64}' is not an object in the store"),
        ([("ok", "not-a-digest")], r"is not an object in the store"),
    ]
    for rows, message in cases:
        with pytest.raises(ViewError, match=message):
            define_view_rows(store, "bad", rows)
        assert store.index.get_view("bad") is None
    with pytest.raises(ViewError, match=r"line 2: expected `SHA256  PATH`"):
        define_view(store, "bad", f"{one.sha256}  a\nonlyonefield\n".encode())
    with pytest.raises(ViewError, match=r"not UTF-8"):
        define_view(store, "bad", b"\xff\xfe  a\n")
    with pytest.raises(ViewError, match=r"view name"):
        define_view(store, "../evil", f"{one.sha256}  a\n".encode())
    for raw, message in ((b"", r"names no files; nothing changed"), (b"# only a comment\n\n", r"names no files"),
                         (b"a" * 5000, r"line 1 is longer than"),
                         (b'{"files": [{"path": "j/a", "sha256": 5}]}', r"files\[0\] is not"),
                         (b'{"files": [{"path": 7, "sha256": "x"}]}', r"files\[0\] is not"),
                         (b"[1, 2]", r"is not \{\"files\""), (b"{nope", r"not valid JSON")):
        with pytest.raises(ViewError, match=message):
            define_view(store, "bad", raw)
    assert store.index.get_view("bad") is None
    # what Windows tools write: a byte-order mark, CRLF, upper-case digests (PowerShell Get-FileHash)
    info = define_view(store, "win", b"\xef\xbb\xbf" + f"{one.sha256.upper()}  a/1.png\r\n{two.sha256}  a/2.png\r\n".encode())
    assert info["files"] == 2
    tree = Tree(store.get, info["manifest"])
    assert [e.name for e in tree.list_dir("a")] == ["1.png", "2.png"]
    info = define_view(store, "json", json.dumps({"files": [{"path": "x", "sha256": one.sha256}]}).encode())
    assert info["files"] == 1


def test_view1_manifests_still_read(store_factory, tmp_path: Path) -> None:
    """A view stored as one `hoardfs-view-1` document (before view-2) lists and walks as before."""
    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 3))
    doc = {"format": "hoardfs-view-1", "name": "old", "files": [
        {"path": f"d/{k}.bin", "sha256": r.sha256, "size": r.size} for k, r in enumerate(res)]}
    sha = store.put_bytes(json.dumps(doc).encode(), klass="generated").sha256
    store.register_view("old", {"manifest": sha, "files": 3, "bytes": sum(r.size for r in res)})
    tree = Tree(store.get, sha)
    assert [e.name for e in tree.list_dir("")] == ["d"]
    assert [e.name for e in tree.list_dir("d")] == ["0.bin", "1.bin", "2.bin"]
    assert tree.lookup("d", "1.bin").sha.hex() == res[1].sha256
    assert [p for p, _, _ in iter_files(store.get, sha)] == ["d/0.bin", "d/1.bin", "d/2.bin"]
    assert list(manifest_objects(store.get, sha)) == [bytes.fromhex(sha)]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_gc_keeps_live_pages_and_frees_replaced_ones(store_factory, tmp_path: Path) -> None:
    """A redefined view's old manifest objects are tombstoned; gc frees those no manifest
    references and keeps every object of the live views (a directory both share included)."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 30))
    # more than INLINE_ENTRIES files: `common` is an object of its own (a smaller one is inline)
    shared = {f"common/{k}": r.sha256 for k, r in enumerate(res[:INLINE_ENTRIES + 4])}
    first = define_view_rows(store, "v", {**shared, "only/old": res[-2].sha256}.items())
    old_objects = set(manifest_objects(store.get, first["manifest"]))
    other = define_view_rows(store, "w", shared.items())  # shares the `common` directory object
    second = define_view_rows(store, "v", {**shared, "only/new": res[-1].sha256}.items())
    live = set(manifest_objects(store.get, second["manifest"])) | set(manifest_objects(store.get, other["manifest"]))
    assert old_objects & live, "the two views should share the `common` directory object"
    gc(store, threshold=0.99)
    for sha in live:
        store.get(sha.hex())
    for sha in old_objects - live:
        with pytest.raises(ObjectNotFound):
            store.get(sha.hex())
    assert {p for p, _, _ in iter_files(store.get, second["manifest"])} == {*shared, "only/new"}
    for r in res[:INLINE_ENTRIES + 4] + [res[-1]]:  # files are not the views' to free
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    remove_view(store, "w")
    gc(store, threshold=0.99)
    assert {p for p, _, _ in iter_files(store.get, second["manifest"])} == {*shared, "only/new"}


def test_check_reports_a_lost_page(store_factory, tmp_path: Path) -> None:
    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 4))
    built = define_view_rows(store, "v", [(f"d{k}/f{j:02d}", r.sha256) for k, r in enumerate(res)
                                          for j in range(INLINE_ENTRIES + 1)])  # each directory an object
    doc = json.loads(store.get(built["manifest"]))
    page = next(e[2] for e in json.loads(store.get(doc["root"]))["entries"] if e[0] == "d2")
    assert "manifest" not in check(store).counts
    with store.index.env.begin(write=True) as txn:  # the page's object is lost from the index
        txn.delete(bytes.fromhex(page), db=store.index.objects)
    rep = check(store)
    assert rep.counts.get("manifest") == 1
    found = [p for p in rep.problems if "view v" in p]
    assert found and "cannot be read" in found[0] and page in found[0], rep.problems


def _doc_example(version: str) -> tuple[list[str], list[dict]]:
    """The sha256s and the objects of docs/design.md's view-N example block."""
    text = (REPO / "docs" / "design.md").read_text()
    block = text[text.index(f"<!-- {version} example -->"):text.index(f"<!-- /{version} example -->")]
    docs = [json.loads(m) for m in re.findall(r"^(\{.*\})$", block, re.M)]
    shas = re.findall(r"^([0-9a-f]{64}):$", block, re.M)
    assert len(docs) == len(shas) >= 2
    for sha, doc in zip(shas, docs, strict=True):
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() if "format" in doc and \
            doc["format"].startswith("hoardfs-dir-") else json.dumps(doc, sort_keys=True).encode()
        assert hashlib.sha256(raw).hexdigest() == sha
    return shas, docs


def _pets(store, tmp_path: Path) -> dict[str, str]:
    res = {}
    for name, content in (("cat.jpg", b"meow\n"), ("dog.jpg", b"woof\n"), ("readme.txt", b"hello\n")):
        (tmp_path / name).write_bytes(content)
        res[name] = store.put_many([tmp_path / name])[0].sha256
    return {"train/cats/1.jpg": res["cat.jpg"], "train/dogs/1.jpg": res["dog.jpg"], "README.txt": res["readme.txt"]}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_design_doc_worked_example_decodes(store_factory, tmp_path: Path) -> None:
    """docs/design.md's view-3 example: the JSON shown there is what build_view writes for
    its rows, object for object (the sha256s in the doc are those of the JSON shown)."""
    shas, docs = _doc_example("view-3")
    root = next(d for d in docs if d["format"] == VIEW_FORMAT)
    assert root["root"] in shas and all(d["format"] == DIR_FORMAT for d in docs if d is not root)
    store = store_factory(n_disks=2)
    built = build_view(store, root["name"], list(_pets(store, tmp_path).items()))
    assert built["objects"] == shas


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_view2_manifests_still_read(store_factory, tmp_path: Path) -> None:
    """docs/design.md's view-2 example (one object per directory, as stored before view-3)
    stored as it is: listed, looked up and walked as the view-3 one, its own objects found."""
    shas, docs = _doc_example("view-2")
    assert {d["format"] for d in docs} == {"hoardfs-view-2", "hoardfs-dir-1"}
    store = store_factory(n_disks=2)
    rows = _pets(store, tmp_path)
    for sha, doc in zip(shas, docs, strict=True):
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() if doc["format"] == "hoardfs-dir-1" \
            else json.dumps(doc, sort_keys=True).encode()
        assert store.put_bytes(raw, klass="generated").sha256 == sha
    manifest = next(sha for sha, d in zip(shas, docs, strict=True) if d["format"] == "hoardfs-view-2")
    new = build_view(store, "pets", list(rows.items()))["manifest"]
    for sha in (manifest, new):
        tree = Tree(store.get, sha)
        assert [(e.name, e.is_dir, e.size, e.files) for e in tree.list_dir("")] == [("README.txt", False, 6, 0),
                                                                                  ("train", True, 10, 2)]
        assert [e.name for e in tree.list_dir("train")] == ["cats", "dogs"]
        assert tree.lookup("train/dogs", "1.jpg").sha.hex() == rows["train/dogs/1.jpg"]
        assert tree.list_dir("train/cats/1.jpg") is None and tree.lookup("train/cats", "2.jpg") is None
        assert {p: s.hex() for p, s, _ in iter_files(store.get, sha)} == rows
    assert sorted(s.hex() for s in manifest_objects(store.get, manifest)) == sorted(shas)


def test_inline_directories_under_pages(store_factory, tmp_path: Path) -> None:
    """Small directories inline, big ones objects, both in a parent split into pages: every
    directory lists and looks up as built, the nowait lookups answer once loaded, and each
    page holds at most page_entries - 1 + INLINE_ENTRIES + 1 weight."""
    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 5))
    rows = {}
    for k in range(30):  # d00..d29: sizes 1..30 — inline up to INLINE_ENTRIES, objects beyond
        for j in range(k + 1):
            rows[f"top/d{k:02d}/s/f{j:02d}" if k % 7 == 3 else f"top/d{k:02d}/f{j:02d}"] = res[j % 5].sha256
    rows["top/d05/deeper/x/y/z"] = res[0].sha256
    built = build_view(store, "t", sorted(rows.items()), page_entries=40)
    tree = Tree(store.get, built["manifest"])
    for d, kids in _expected_dirs(rows).items():
        got = tree.list_dir(d)
        assert [e.name for e in got] == kids, d
        for e in got:
            full = f"{d}/{e.name}" if d else e.name
            assert tree.lookup_nowait(d, e.name) == e
            if not e.is_dir:
                assert e.sha.hex() == rows[full]
            else:
                assert e.files == sum(1 for p in rows if p.startswith(full + "/"))
    assert {p: s.hex() for p, s, _ in iter_files(store.get, built["manifest"])} == rows
    top = json.loads(store.get(json.loads(store.get(built["manifest"]))["root"]))
    inner = json.loads(store.get(top["entries"][0][2]))
    assert "pages" in inner and len(inner["pages"]) > 1
    kinds = set()
    for _first, page, _n in inner["pages"]:
        entries = json.loads(store.get(page))["entries"]
        kinds |= {e[1] for e in entries}
        weight = sum(1 + _weight(e) for e in entries)
        assert weight <= 40 - 1 + INLINE_ENTRIES + 1
    assert kinds == {"i", "d"}
    assert len(set(built["objects"])) == len(set(manifest_objects(store.get, built["manifest"])))


def _weight(e: list) -> int:
    return sum(1 + _weight(c) for c in e[2]) if e[1] == "i" else 0


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_ten_million_entry_view(tmp_path: Path) -> None:
    """A view of 10,000,000 entries (10,000 directories of 1,000) is defined through the
    streaming path in bounded memory, read a directory at a time, and listed through the
    mount with the daemon's memory bounded."""
    from tests.test_mount import mounted

    n = 10_000_000
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=256)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 300))
        shas = [r.sha256 for r in res]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        info = define_view_rows(store, "big", ((f"d{i // 1000:05d}/f{i:08d}.jpg", shas[i % 300]) for i in range(n)))
        define_s = time.monotonic() - t0
        grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        assert info["files"] == n
        assert grew_mb < 200, f"defining the view grew this process by {grew_mb:.0f} MB"
        tree = Tree(store.get, info["manifest"])
        assert len(tree.list_dir("")) == 10_000
        assert tree.lookup("d09999", "f09999999.jpg").sha.hex() == shas[9999999 % 300]
    print(f"10 M-entry view defined in {define_s:.0f} s (+{grew_mb:.0f} MB)")
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt) as proc:
        top = mnt / "views" / "big"
        names = os.listdir(top)
        assert len(names) == 10_000 and names[0] == "d00000"
        for d in random.Random(3).sample(names, 5):
            inner = os.listdir(top / d)
            assert len(inner) == 1000
            k = int(inner[7][1:9])
            assert hashlib.sha256((top / d / inner[7]).read_bytes()).hexdigest() == shas[k % 300]
        rss_mb = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 1024
        assert rss_mb < 300, f"the mount grew to {rss_mb:.0f} MB"
        assert subprocess.run(["stat", str(top / "d05000" / "f05000123.jpg")], capture_output=True).returncode == 0
