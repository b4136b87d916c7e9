"""Named views: manifest checks that keep every path visible in the mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsd.views import ViewError, define_view
from tests.conftest import make_files


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
from fsd.base import config
from fsd.store import Store
from fsd.views import define_view_rows, remove_view

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


def test_a_view_removed_while_another_is_defined_never_tombstones_what_the_other_names(
        store_factory, tmp_path: Path) -> None:
    """Removing a view tombstones the objects it owned (made for it) that no other view names.
    Two processes define and remove views owning the same (unrooted) objects, in a loop: a
    file that a registered view names is never left tombstoned (the mount would hide it and
    gc would wait to free it); once neither view exists the files are tombstoned, for gc."""
    import subprocess
    import sys

    from fsd.deletion import release

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
    from fsd.deletion import release
    from fsd.views import define_view_rows, remove_view

    store = store_factory(n_disks=2)
    a, b, c = (r.sha256 for r in store.put_many(make_files(tmp_path / "in", 3)))
    release(store, [bytes.fromhex(s) for s in (a, b, c)], "test: nothing roots them")
    define_view_rows(store, "mixed", [("a.bin", a), ("b.bin", b), ("c.json", c)], owned=[c])
    assert store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in (a, b, c)]) == set()
    remove_view(store, "mixed")
    assert store.index.marked_among(store.index.deleted, [bytes.fromhex(s) for s in (a, b, c)]) == {bytes.fromhex(c)}
