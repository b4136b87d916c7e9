"""View manifests (hoardfs-view-2): built in bounded memory from rows in any order, read a
directory at a time, kept by gc, checked by `hoard check`; old one-document manifests still
read. Real stores on directory disks; one 10 M-entry view (also through the mount)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import re
import subprocess
import time
from pathlib import Path

import pytest

from fsd.base import config
from fsd.check import check
from fsd.gc import gc
from fsd.manifest import DIR_FORMAT, VIEW_FORMAT, Tree, WouldBlock, build_view, iter_files, manifest_objects
from fsd.records import ObjectNotFound
from fsd.store import Store
from fsd.views import ViewError, define_view, define_view_rows, remove_view
from tests.conftest import dir_disks_config, make_files

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


def test_gc_keeps_live_pages_and_frees_replaced_ones(store_factory, tmp_path: Path) -> None:
    """A redefined view's old manifest objects are tombstoned; gc frees those no manifest
    references and keeps every object of the live views (a directory both share included)."""
    store = store_factory(n_disks=3, caps=None, shard_size_mb=1, copy_of_raw=2)
    res = store.put_many(make_files(tmp_path / "in", 30))
    shared = {f"common/{k}": r.sha256 for k, r in enumerate(res[:10])}
    first = define_view_rows(store, "v", {**shared, "only/old": res[20].sha256}.items())
    old_objects = set(manifest_objects(store.get, first["manifest"]))
    other = define_view_rows(store, "w", shared.items())  # shares the `common` directory object
    second = define_view_rows(store, "v", {**shared, "only/new": res[21].sha256}.items())
    live = set(manifest_objects(store.get, second["manifest"])) | set(manifest_objects(store.get, other["manifest"]))
    assert old_objects & live, "the two views should share the `common` directory object"
    gc(store, threshold=0.99)
    for sha in live:
        store.get(sha.hex())
    for sha in old_objects - live:
        with pytest.raises(ObjectNotFound):
            store.get(sha.hex())
    assert {p for p, _, _ in iter_files(store.get, second["manifest"])} == {*shared, "only/new"}
    for r in res[:10] + [res[21]]:  # files are not the views' to free
        assert hashlib.sha256(store.get(r.sha256)).hexdigest() == r.sha256
    remove_view(store, "w")
    gc(store, threshold=0.99)
    assert {p for p, _, _ in iter_files(store.get, second["manifest"])} == {*shared, "only/new"}


def test_check_reports_a_lost_page(store_factory, tmp_path: Path) -> None:
    store = store_factory(n_disks=2)
    res = store.put_many(make_files(tmp_path / "in", 4))
    built = define_view_rows(store, "v", [(f"d{k}/f", r.sha256) for k, r in enumerate(res)])
    doc = json.loads(store.get(built["manifest"]))
    page = next(e[2] for e in json.loads(store.get(doc["root"]))["entries"] if e[0] == "d2")
    assert "manifest" not in check(store).counts
    with store.index.env.begin(write=True) as txn:  # the page's object is lost from the index
        txn.delete(bytes.fromhex(page), db=store.index.objects)
    rep = check(store)
    assert rep.counts.get("manifest") == 1
    found = [p for p in rep.problems if "view v" in p]
    assert found and "cannot be read" in found[0] and page in found[0], rep.problems


def test_design_doc_worked_example_decodes(store_factory, tmp_path: Path) -> None:
    """docs/design.md's view-2 example: the JSON shown there is what build_view writes for
    its rows, object for object (the sha256s in the doc are those of the JSON shown)."""
    text = (REPO / "docs" / "design.md").read_text()
    block = text[text.index("<!-- view-2 example -->"):text.index("<!-- /view-2 example -->")]
    docs = [json.loads(m) for m in re.findall(r"^(\{.*\})$", block, re.M)]
    shas = re.findall(r"^([0-9a-f]{64}):$", block, re.M)
    assert len(docs) == len(shas) >= 3
    by_sha = {}
    for sha, doc in zip(shas, docs):
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() if doc["format"] == DIR_FORMAT \
            else json.dumps(doc, sort_keys=True).encode()
        assert hashlib.sha256(raw).hexdigest() == sha
        by_sha[sha] = doc
    root = next(d for d in docs if d["format"] == VIEW_FORMAT)
    assert root["root"] in by_sha
    store = store_factory(n_disks=2)
    res = {}
    for name, content in (("cat.jpg", b"meow\n"), ("dog.jpg", b"woof\n"), ("readme.txt", b"hello\n")):
        (tmp_path / name).write_bytes(content)
        res[name] = store.put_many([tmp_path / name])[0]
    rows = [("train/cats/1.jpg", res["cat.jpg"].sha256), ("train/dogs/1.jpg", res["dog.jpg"].sha256),
            ("README.txt", res["readme.txt"].sha256)]
    built = build_view(store, root["name"], rows)
    assert set(built["objects"]) == set(shas)


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
