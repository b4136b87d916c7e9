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
