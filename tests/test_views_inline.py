"""View-3 manifests (inline small directories) under every reader of manifests: files named
only inside inline directories survive gc, view removal, batch deletion and an index
rebuild, are read back through `hoard get` and the mount, `hoard check` stays clean; mixed
view-2 and view-3 manifests; kill -9 during definitions; random trees against Tree."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoardfs.base import config
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.deletion import drop_batch, release
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.outputs import manifest
from hoardfs.fsd.outputs.manifest import Tree, build_view, iter_files, manifest_objects
from hoardfs.fsd.outputs.views import define_view_rows, remove_view
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_cli import hoard

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def _view2(store, name, rows, monkeypatch):
    """A view-2 manifest as written before view-3 (one dir-1 object per directory)."""
    with monkeypatch.context() as m:
        m.setattr(manifest, "VIEW_FORMAT", "hoardfs-view-2")
        m.setattr(manifest, "DIR_FORMAT", "hoardfs-dir-1")
        m.setattr(manifest, "INLINE_ENTRIES", -1)
        return define_view_rows(store, name, rows)


def _register(store, batch_id, items):
    body = json.dumps({"batch_id": batch_id, "files": [{"path": p, "sha256": s, "size": 0} for p, s in items]}).encode()
    put = store.put_bytes(body)
    store.register_batch(batch_id, {"source": "test", "manifest": put.sha256, "files": len(items), "bytes": 0})


@pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")
def test_files_only_inline_survive_every_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files no root, pin or batch keeps, named only inside inline directories (16 entries, 17,
    nested, long and non-ASCII names), beside a view-2 manifest of the same files: removing
    a view owning some of them, dropping a batch naming them, removing the view-2 view, gc,
    an index rebuild — each file is still read back (index, `hoard get`, the mount, sha256
    checked) and `hoard check` says nothing is wrong."""
    from tests.test_mount import mounted
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 80, lo=100, hi=3000))
        shas = [r.sha256 for r in res]
        release(store, [bytes.fromhex(s) for s in shas], "only manifests")
        rows = {}
        for k in range(20):
            rows[f"a/d{k:02d}/f.bin"] = shas[k]
        for j in range(16):
            rows[f"exact16/f{j:02d}"] = shas[20 + j]
        for j in range(17):
            rows[f"seventeen/f{j:02d}"] = shas[36 + j]
        rows["n/e/s/t/é/" + "ü" * 60 + "/x"] = shas[53]
        rows["only/" + "L" * 200] = shas[54]
        rows["wide/" + "\u4e2d" * 80 + "/" + "😀" * 40] = shas[55]
        _register(store, "b1", [(f"p{i}", s) for i, s in enumerate(shas[:60])])
        define_view_rows(store, "v3", rows.items())
        v2 = _view2(store, "v2", [("old/" + p, s) for p, s in rows.items()] + [("x/y", shas[70])], monkeypatch)
        assert json.loads(store.get(v2["manifest"]))["format"] == "hoardfs-view-2"
        define_view_rows(store, "w", [("x/" + p, s) for p, s in list(rows.items())[:30]], owned=shas[:30])
        remove_view(store, "w")
        drop_batch(store, "b1")
        gc(store, threshold=1.0)
        remove_view(store, "v2")
        gc(store, threshold=1.0)
        assert not check(store).problems
        dead = store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in rows.values()])
        assert not dead
    shutil.rmtree(cfg.index_dir)
    r = hoard("--config", str(cfg_path), "index", "rebuild")
    assert r.returncode == 0, r.stderr
    with Store.open(cfg) as store:
        gc(store, threshold=1.0)
        assert not check(store).problems
    r = hoard("--config", str(cfg_path), "check")
    assert r.returncode == 0, r.stdout + r.stderr
    for s in list(rows.values())[:5]:
        g = hoard("--config", str(cfg_path), "get", s, "-o", str(tmp_path / "g.bin"))
        assert g.returncode == 0, g.stderr
        assert hashlib.sha256((tmp_path / "g.bin").read_bytes()).hexdigest() == s
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt):
        top = mnt / "views" / "v3"
        seen = {}
        for dirpath, _dirs, files in os.walk(top):
            for f in files:
                full = Path(dirpath) / f
                seen[str(full.relative_to(top))] = hashlib.sha256(full.read_bytes()).hexdigest()
        assert seen == rows
        assert sorted(os.listdir(top / "a")) == [f"d{k:02d}" for k in range(20)]


_DEFINE = r"""
import sys
from hoardfs.base import config
from hoardfs.fsd.outputs import manifest
from hoardfs.fsd.store import Store
from hoardfs.fsd.outputs.views import define_view_rows
manifest._Builder.FLUSH_BYTES = 2048
cfg_path, shas = sys.argv[1], sys.argv[2].split(",")
with Store.open(config.load(cfg_path)) as store:
    n = 0
    while True:
        rows = [(f"r{n}/small/d{k}/f.bin", shas[k % len(shas)]) for k in range(400)]
        rows += [(f"r{n}/big/f{k:03d}.bin", shas[k % len(shas)]) for k in range(40)]
        define_view_rows(store, f"v{n % 3}", rows)
        print(n, flush=True)
        n += 1
"""


@pytest.mark.parametrize("delay", [0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.2, 1.5, 1.8, 2.2])
def test_kill_9_during_view_definitions(tmp_path: Path, delay: float) -> None:
    """A process redefining views (inline directories, objects, several group commits) is
    killed at a random moment: every registered view reads whole, after a gc too, and
    `hoard check` finds nothing wrong."""
    cfg_path = dir_disks_config(tmp_path, 3, shard_size_mb=1, copy_of_raw=2)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 10))]
    p = subprocess.Popen([sys.executable, "-c", _DEFINE, str(cfg_path), ",".join(shas)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    out, err = p.communicate()
    assert "Traceback" not in err, err
    with Store.open(cfg) as store:
        for _name, info in store.index.iter_views():
            for _path, sha, _ in iter_files(store.get, info["manifest"]):
                assert hashlib.sha256(store.get(sha.hex())).hexdigest() == sha.hex()
        from hoardfs.fsd.maintenance.gc import gc
        gc(store, threshold=1.0)
        for _name, info in store.index.iter_views():
            for _path, sha, _ in iter_files(store.get, info["manifest"]):
                assert hashlib.sha256(store.get(sha.hex())).hexdigest() == sha.hex()
        rep = check(store)
        assert not rep.problems, (out, rep.problems)


NAMES = st.sampled_from(["a", "b", "a b", "a.b", "a-", "é", "e\u0301", "\u4e2d", "😀", "Z", "aa", "L" * 120, "ü" * 50, "0"])


def test_random_trees_read_as_built(store_factory, tmp_path: Path) -> None:
    """Random trees (names of 1 to 4 bytes a character, long ones, prefixes of each other) built
    with random page sizes: inline directories, objects and pages list, look up and walk as
    the rows say, and the build's objects are the manifest's own."""
    store = store_factory(n_disks=2)
    shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 5))]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(paths=st.lists(st.lists(NAMES, min_size=1, max_size=5).map("/".join), min_size=1, max_size=120,
                          unique=True), page=st.integers(2, 40))
    def one(paths, page) -> None:
        ps = sorted(set(paths))
        files = [p for p in ps if not any(q.startswith(p + "/") for q in ps)]  # none is another's directory
        rows = {p: shas[i % 5] for i, p in enumerate(files)}
        built = build_view(store, "p", list(rows.items()), page_entries=page)
        assert {p: s.hex() for p, s, _ in iter_files(store.get, built["manifest"])} == rows
        assert set(built["objects"]) == {s.hex() for s in manifest_objects(store.get, built["manifest"])}
        tree = Tree(store.get, built["manifest"])
        dirs = {""} | {"/".join(p.split("/")[:i]) for p in rows for i in range(1, p.count("/") + 1)}
        for d in dirs:
            kids = sorted({(q[len(d) + 1:] if d else q).split("/")[0] for q in rows if not d or q.startswith(d + "/")})
            listed = tree.list_dir(d)
            assert [e.name for e in listed] == kids, (d, page)
            for e in listed:
                full = f"{d}/{e.name}" if d else e.name
                assert tree.lookup(d, e.name) == e
                if e.is_dir:
                    assert e.files == sum(1 for q in rows if q.startswith(full + "/"))
                else:
                    assert e.sha.hex() == rows[full]
            assert tree.lookup(d, "nope") is None
        assert all(tree.list_dir(p) is None for p in rows)

    one()
