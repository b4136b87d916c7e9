"""Named views: manifest checks that keep every path visible in the mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from hoardfs.fsd.outputs.views import ViewError, define_view
from tests.helpers import make_files


def test_file_that_is_another_paths_directory_is_refused(store_factory, tmp_path: Path) -> None:
    """A manifest naming both `a` and `a/b` is refused naming both paths (one of them would
    vanish from the mount); `a/x` beside `a/b` is fine."""
    store = store_factory(n_disks=2)
    one, two = store.put_many(make_files(tmp_path / "in", 2))
    with pytest.raises(ViewError, match=r"path 'train/cats' is a file, but 'train/cats/1.png' needs it"):
        define_view(store, "bad", f"{one.sha256}  train/cats\n{two.sha256}  train/cats/1.png\n".encode())
    assert store.index.get_view("bad") is None
    info = define_view(store, "good", f"{one.sha256}  train/a.png\n{two.sha256}  train/b/c.png\n".encode())
    assert info["files"] == 2


_RACER = r"""
import sys, time
from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.fsd.outputs.views import define_view_rows, remove_view

cfg_path, me, rounds, shas = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
with Store.open(config.load(cfg_path)) as store:
    for _ in range(rounds):
        define_view_rows(store, me, [(f"f{i}.bin", s) for i, s in enumerate(shas)], owned=shas)
        time.sleep(0.002)
        dead = store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in shas])
        if dead:  # named by this registered view, yet tombstoned: the mount would hide them
            print(f"{me}: {len(dead)} named files tombstoned", flush=True)
            sys.exit(1)
        remove_view(store, me)
"""


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_view_removed_while_another_is_defined_never_tombstones_what_the_other_names(
        store_factory, tmp_path: Path) -> None:
    """Removing a view tombstones the objects it owned (made for it) that no other view names.
    Two processes define and remove views owning the same (unrooted) objects, in a loop: a
    file that a registered view names is never left tombstoned (the mount would hide it and
    gc would wait to free it); once neither view exists the files are tombstoned, for gc."""
    import subprocess
    import sys

    from hoardfs.fsd.maintenance.deletion import release

    store = store_factory(n_disks=2)
    shas = [r.sha256 for r in store.put_many(make_files(tmp_path / "in", 5))]
    release(store, [bytes.fromhex(s) for s in shas], "test: only views name them")
    cfg = str(store.cfg.source)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, cfg, name, "40", ",".join(shas)],
                              cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("va", "vb")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    assert store.index.get_view("va") is None and store.index.get_view("vb") is None
    assert store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in shas]) == \
        {bytes.fromhex(s) for s in shas}


def test_removing_a_view_tombstones_only_what_it_owned(store_factory, tmp_path: Path) -> None:
    """A view names objects something else may need without naming them in a manifest (a
    database dump only backup_log knows, an object whose batch was dropped): removing the
    view leaves them alone — only objects made for it (`owned`) are tombstoned."""
    from hoardfs.fsd.maintenance.deletion import release
    from hoardfs.fsd.outputs.views import define_view_rows, remove_view

    store = store_factory(n_disks=2)
    a, b, c = (r.sha256 for r in store.put_many(make_files(tmp_path / "in", 3)))
    release(store, [bytes.fromhex(s) for s in (a, b, c)], "test: nothing roots them")
    define_view_rows(store, "mixed", [("a.bin", a), ("b.bin", b), ("c.json", c)], owned=[c])
    assert store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in (a, b, c)]) == set()
    remove_view(store, "mixed")
    assert store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in (a, b, c)]) == {bytes.fromhex(c)}


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_view_is_named_only_after_every_object_of_its_manifest_is_durable(
        store_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write order of a definition, followed call by call: an index transaction never
    finds a shard replica with bytes written and not fsynced; the root is indexed no earlier
    than any directory object it names (inline or not); the view is named — its pointers on
    the disks, its index entry — only after every manifest object is indexed. (A build that
    indexed before its fsyncs, or stored the root first, or registered before its last
    group commit would leave a name pointing at bytes a power cut can take.)"""
    from hoardfs.fsd.core import disks
    from hoardfs.fsd.io import copies
    from hoardfs.fsd.outputs import manifest
    from hoardfs.fsd.outputs.manifest import manifest_objects
    from hoardfs.fsd.outputs.views import define_view_rows

    store = store_factory(n_disks=3, caps=None)
    res = store.put_many(make_files(tmp_path / "in", 8))
    # directories inline (small/d*) and as objects (small, big, the top), in several group commits
    rows = [(f"small/d{k}/f.bin", res[k % 8].sha256) for k in range(300)]
    rows += [(f"big/f{k:04d}.bin", res[k % 8].sha256) for k in range(manifest.INLINE_ENTRIES + 30)]
    monkeypatch.setattr(manifest._Builder, "FLUSH_BYTES", 4096)
    events: list[tuple[str, object]] = []
    dirty: set[int] = set()
    real_write, real_sync = disks._FileSink.write, disks._FileSink.sync

    def write(sink, data):
        real_write(sink, data)
        dirty.add(id(sink))

    def sync(sink):
        real_sync(sink)
        dirty.discard(id(sink))

    real_add, real_pointer = store.index.add_objects, copies.write_pointer

    def add_objects(entries, *a, **kw):
        assert not dirty, "an index transaction while a replica holds bytes not fsynced"
        events.append(("index", {sha.hex() for sha, _loc in entries}))
        return real_add(entries, *a, **kw)

    def pointer(*a, **kw):
        events.append(("pointer", None))
        return real_pointer(*a, **kw)

    monkeypatch.setattr(disks._FileSink, "write", write)
    monkeypatch.setattr(disks._FileSink, "sync", sync)
    monkeypatch.setattr(store.index, "add_objects", add_objects)
    monkeypatch.setattr(copies, "write_pointer", pointer)  # what Index.name_pointer's write calls
    info = define_view_rows(store, "ordered", rows)

    own = {sha.hex() for sha in manifest_objects(store.get, info["manifest"])}
    assert len(own) == 4  # the root, the top, `small` and `big`
    indexed_at: dict[str, int] = {}
    for i, (kind, shas) in enumerate(events):
        if kind == "index":
            indexed_at.update({sha: i for sha in shas & own if sha not in indexed_at})
    assert set(indexed_at) == own and len(set(indexed_at.values())) > 1  # several groups
    assert indexed_at[info["manifest"]] == max(indexed_at.values())
    first_name = min(i for i, (kind, _) in enumerate(events) if kind != "index")
    assert max(indexed_at.values()) < first_name
    # the pointer is written inside the transaction that names the view (Index.name_pointer)
    assert [k for k, _ in events[first_name:]] == ["pointer"] and store.index.get_view("ordered") == info


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_view_add_refuses_names_and_paths_a_copy_out_of_the_mount_cannot_make(tmp_path: Path) -> None:
    """A name over 255 bytes (which the mount would serve but `cp -r` out of it cannot
    create) and a path over 4096 bytes are refused in one line naming the path, nothing is
    defined; a name of exactly 255 bytes is accepted. `view list --json` prints only JSON."""
    import json

    from hoardfs.base import config
    from hoardfs.fsd.store import Store
    from tests.helpers import dir_disks_config
    from tests.test_cli import hoard

    cfg = str(dir_disks_config(tmp_path, 2, shard_size_mb=1))
    with Store.open(config.load(cfg), init=True) as store:
        sha = store.put_many(make_files(tmp_path / "in", 1))[0].sha256
    cases = {"long-name": f"ok/{'é' * 128}/f.bin",  # 256 bytes in 128 characters
             "long-path": "/".join(["d" * 200] * 21)}  # 4220 bytes, every name short
    for view, path in cases.items():
        manifest = tmp_path / f"{view}.txt"
        manifest.write_text(f"{sha}  {path}\n")
        res = hoard("--config", cfg, "view", "add", view, str(manifest))
        assert res.returncode == 2, (view, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr and path[:40] in lines[0], (view, res.stderr)
    fine = tmp_path / "fine.txt"
    fine.write_text(f"{sha}  ok/{'é' * 127}x/f.bin\n")  # 255 bytes
    assert hoard("--config", cfg, "view", "add", "fine", str(fine)).returncode == 0
    listing = hoard("--config", cfg, "view", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert set(json.loads(listing.stdout)) == {"fine"}  # the whole of stdout is one JSON document
