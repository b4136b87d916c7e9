"""Marks-log checks, agreement between disks' logs, pointers: cases that once went wrong."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest

from hoardfs.base import config as config_mod
from hoardfs.fsd.core import marks
from hoardfs.fsd.maintenance.check import check
from hoardfs.fsd.maintenance.deletion import drop_batch
from hoardfs.fsd.maintenance.gc import gc
from hoardfs.fsd.maintenance.reindex import rebuild_index
from hoardfs.fsd.store import Store
from tests.helpers import make_files
from tests.test_cli_put import _hoard
from tests.test_cli_put import _store as _cli_store
from tests.test_gc import _register
from tests.test_roots import _reads_back

PUT = "hoard put"


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout + res.stderr


def _to_legacy(log: Path, torn: bytes = b"") -> None:
    """Rewrite a log as the release before checks wrote it (three fields a line), `torn` appended."""
    body = re.sub(rb" [0-9a-f]{16}\n", b"\n", log.read_bytes())
    log.write_bytes(body + torn)


def _block(spot: Path, where: str) -> tuple[str, Path]:
    """Put what a writer cannot replace at `spot` (`where` "at": a directory there; "folder": a
    file where its folder goes); (what check names, the path to remove)."""
    if where == "at":
        spot.unlink()
        spot.mkdir()
        (spot / "x").write_text("x")
        return f"a directory stands at {spot}", spot
    shutil.rmtree(spot.parent)
    spot.parent.write_text("x")
    return f"{spot.parent} is not a directory", spot.parent


def _check_names_then_fix(cfg: Path, said: str, spot: Path, fix: str, refused: str | None = None) -> None:
    """Check names `said` and what to do; `hoard index <fix>` fails while `spot` is there (naming
    `refused`, if given); once it is removed the fix works and check agrees."""
    res = _hoard(cfg, "check")
    assert res.returncode == 5 and said in res.stdout + res.stderr, res.stdout + res.stderr
    assert "remove it" in res.stdout + res.stderr
    if refused is not None:
        res = _hoard(cfg, "index", fix)
        assert res.returncode == 3, res.stdout + res.stderr  # the old code: 0
        assert refused in res.stderr, res.stderr
    if spot.is_dir():
        shutil.rmtree(spot)
    else:
        spot.unlink()
    _ok(_hoard(cfg, "index", fix))
    _ok(_hoard(cfg, "check"))


def test_a_legacy_log_with_a_torn_last_line_keeps_its_roots(store_factory, tmp_path: Path) -> None:
    """The release before checks crashed during an append (a torn last line on every disk, its
    transaction never committed). After the upgrade the first writable open did not rewrite the
    logs (their last line is torn, not legacy), the next append wrote a checked line, and from
    then on every legacy line of those logs counted as a torn append: a rebuild lost every
    root `hoard put` set before the upgrade, and a batch drop + gc freed the object."""
    store = store_factory(n_disks=3, caps=None)
    x, y = make_files(tmp_path / "in", 2, seed=81)
    sha = store.put_many([x], root=PUT)[0].sha256
    cfg = store.cfg
    store.close()
    for d in ("d1", "d2", "d3"):
        _to_legacy(marks.log_path(tmp_path / "disks" / d), torn=b"\n1763812345123456789 roo")
    with Store.open(cfg) as again:  # the upgraded release's first writer
        _register(again, "b1", again.put_many([x]))
        again.put_many([y], root=PUT)  # a checked append
    for d in ("d1", "d2", "d3"):  # rewritten by the first writable open: no legacy line is left
        got = marks.read_log(marks.log_path(tmp_path / "disks" / d).parent)
        assert got.legacy == 0 and not got.damaged, marks.log_path(tmp_path / "disks" / d).read_text()
    rep = rebuild_index(cfg)
    assert rep.rooted == 2, (rep.rooted, rep.damaged)
    with Store.open(cfg) as again:
        drop_batch(again, "b1")
        gc(again, threshold=1.0)
        assert _reads_back(again, sha)


def test_legacy_lines_before_the_first_checked_line_are_replayed(tmp_path: Path) -> None:
    """A log holding legacy lines, then a torn one, then checked appends (a store whose legacy
    log was not rewritten): the legacy records are replayed; a three-field line after a checked
    one is still a cut append."""
    sha = "ab" * 32
    legacy = f"1763812345123456789 root {sha}\n"
    cut = f"1763812345123456999 unroot {sha}\n"
    log = tmp_path / "marks" / "marks.log"
    log.parent.mkdir()
    log.write_text(legacy + "\n1763812345123456790 roo\n" + marks.line(1763812345123456800, "hide", "cd" * 32) + cut)
    got = marks.read_log(log.parent)
    assert (1763812345123456789, "root", sha) in got.records, got
    assert got.legacy == 1 and got.other == 2 and len(got.records) == 2, got
    assert marks.tail_is_legacy(tmp_path)  # its first line: the next writable open rewrites it


@pytest.mark.services  # starts `hoard` processes
def test_a_pointer_file_whose_name_is_not_utf8_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    """A file with a non-UTF-8 name in a disk's batches/ (a copy from another system, a
    planted name): the index's `pointers` table cannot hold that name, and bringing a disk's
    pointers up (every disk is behind after an index rebuild) ended with a UnicodeEncodeError
    traceback — the rebuild's own first writer, then every writable open (`hoard put`), and
    `hoard index rewrite-pointers`, check's advice. Now it is named as not a pointer, and skipped."""
    cfg = _cli_store(tmp_path)
    x = make_files(tmp_path / "in", 1, seed=83)[0]
    _ok(_hoard(cfg, "put", str(x)))
    batches = tmp_path / "d0" / "batches"
    batches.mkdir(exist_ok=True)
    odd = os.fsencode(batches) + b"/b\xff.json"
    with open(odd, "wb") as f:
        f.write(b'{"manifest": "' + b"a" * 64 + b'", "pointer_ns": 5}')
    res = _hoard(cfg, "index", "rewrite-pointers")
    _ok(res)
    res = _hoard(cfg, "index", "rebuild")
    _ok(res)  # the old code: a traceback from its first writer
    assert "not UTF-8" in res.stdout + res.stderr, res.stdout + res.stderr
    _ok(_hoard(cfg, "put", str(x)))
    res = _hoard(cfg, "check")
    _ok(res)
    assert "not a pointer" in res.stdout + res.stderr, res.stdout + res.stderr
    assert os.path.exists(odd)  # left for a person to remove


@pytest.mark.services  # starts `hoard` processes
@pytest.mark.parametrize("what", ["a directory at the pointer", "a file at batches/"])
def test_a_directory_where_a_pointer_goes_is_named_with_a_fix_that_works(tmp_path: Path, what: str) -> None:
    """A directory stands at a disk's batches/<id>.json of a registered batch (or a file at
    its batches/): check said the pointer cannot be read and advised `hoard index
    rewrite-pointers` — which cannot replace it and failed pointing at `hoard health`, which
    says nothing of it. Check now names what to remove; after that, its advice works."""
    cfg = _cli_store(tmp_path)
    x = make_files(tmp_path / "in", 1, seed=84)[0]
    with Store.open(config_mod.load(cfg)) as store:
        _register(store, "b1", store.put_many([x]))
    where = "at" if what == "a directory at the pointer" else "folder"
    said, spot = _block(tmp_path / "d1" / "batches" / "b1.json", where)
    _check_names_then_fix(cfg, said, spot, "rewrite-pointers")


@pytest.mark.services  # starts `hoard` processes
@pytest.mark.expect_log(r"disk d0: cannot (read the end of|rewrite) .*marks", level="WARNING")
@pytest.mark.parametrize("what", ["a directory at marks.log", "a file at marks/"])
def test_rewrite_marks_that_leaves_a_disk_behind_says_so(tmp_path: Path, what: str) -> None:
    """A directory at a disk's marks/marks.log (or a file at its marks/): `hoard index
    rewrite-marks` (check's advice) printed "rewritten on d1, d2" and exit 0 while d0 kept no
    log; it now fails naming d0 (as rewrite-pointers does), check names what to remove, and
    once it is gone the advice works and check agrees."""
    cfg = _cli_store(tmp_path)
    x = make_files(tmp_path / "in", 1, seed=85)[0]
    _ok(_hoard(cfg, "put", str(x)))
    said, spot = _block(marks.log_path(tmp_path / "d0"), "at" if what == "a directory at marks.log" else "folder")
    _check_names_then_fix(cfg, said, spot, "rewrite-marks", refused="could not be rewritten on d0")


@pytest.mark.expect_log(r"disk d1: cannot rewrite .*marks", level="WARNING")
def test_a_legacy_log_that_refuses_its_rewrite_is_not_retried_by_every_open(store_factory, tmp_path: Path,
                                                                            caplog) -> None:
    """A legacy log on a disk that cannot take the rewrite (here: a directory where its tmp
    goes): every writable open tried again — each reading every disk's whole marks log
    (hoardfs.fsd.io.copies.logged_marks) and taking a write transaction — where a disk that is behind is
    tried again only after MARKS_RETRY_S."""
    store = store_factory(n_disks=2, caps=None)
    x = make_files(tmp_path / "in", 1, seed=86)[0]
    store.put_many([x], root=PUT)
    cfg = store.cfg
    store.close()
    log = marks.log_path(tmp_path / "disks" / "d1")
    _to_legacy(log)
    (log.parent / f".{log.name}.tmp").mkdir()
    caplog.set_level(logging.WARNING, logger="hoardfs.fsd.store")
    for _ in range(3):
        Store.open(cfg).close()
    tries = [r for r in caplog.records if "cannot rewrite" in r.getMessage()]
    assert len(tries) == 1, [r.getMessage() for r in tries]  # the old code: 3


def test_a_pointer_file_under_a_name_no_batch_can_have_is_not_registered(store_factory, tmp_path: Path) -> None:
    """Copies of a batch pointer as batches/...json and batches/a b;$(x).json on every disk: the
    rebuild registered batches named `..` and `a b;$(x)` (names ingest and `hoard view add`
    refuse; as a view, `..` was served by the mount). They are now named and skipped, and
    check notes them as no pointers."""
    store = store_factory(n_disks=3, caps=None)
    x = make_files(tmp_path / "in", 1, seed=87)[0]
    _register(store, "b1", store.put_many([x]))
    cfg = store.cfg
    store.close()
    for d in ("d1", "d2", "d3"):
        folder = tmp_path / "disks" / d / "batches"
        for odd in ("...json", "a b;$(x).json"):
            shutil.copy(folder / "b1.json", folder / odd)
    rep = rebuild_index(cfg)
    assert rep.batches == 1, rep  # the old code: 3
    assert sum("no batch or view name" in d for d in rep.damaged) == 6, rep.damaged
    with Store.open(cfg) as again:
        assert [name for name, _ in again.index.iter_batches()] == ["b1"]
        found = check(again)
        assert not found.problems, found.problems
        assert sum("not a pointer" in n for n in found.notes) == 6, found.notes


def test_a_damaged_pointer_name_on_one_disk_makes_no_phantom_batch(store_factory, tmp_path: Path) -> None:
    """One bit of a pointer's file name flipped on one disk (b1.json → b3.json: '1' is 0x31,
    '3' 0x33): the pointer still decodes, its checksum holds, and a rebuild registers batch b3
    — a batch that never was, holding b1's files (dropping b1 then frees nothing it holds)."""
    store = store_factory(n_disks=3, caps=None)
    x = make_files(tmp_path / "in", 1, seed=88)[0]
    _register(store, "b1", store.put_many([x]))
    cfg = store.cfg
    store.close()
    folder = tmp_path / "disks" / "d2" / "batches"
    (folder / "b1.json").rename(folder / "b3.json")
    rep = rebuild_index(cfg)  # (the pointer says which file it is, under its checksum)
    assert any("b3.json" in d and "file name" in d for d in rep.damaged), rep.damaged
    with Store.open(cfg) as again:
        assert [name for name, _ in again.index.iter_batches()] == ["b1"]
        found = check(again)  # the writer's catch-up gave d2 its b1 again, and b3.json a removal record
        assert found.ok, found.problems
    assert json.loads((folder / "b3.json").read_text()).get("removed") is True
    assert json.loads((folder / "b1.json").read_text())["key"] == "batches/b1.json"


@pytest.mark.services  # starts `hoard` processes
def test_a_stray_log_beside_the_marks_log_gets_advice_that_works(tmp_path: Path) -> None:
    """A text file `notes.log` in a disk's marks/ (every `*.log` there is read): its lines were
    "damaged lines in its marks log" — check advised `hoard index rewrite-marks`, and `hoard
    verify --repair` said it repaired them, yet neither touches that file and the next check
    and verify named them again. Now it is a note naming the file to remove; verify, which
    judges the store's own logs, has nothing to repair."""
    cfg = _cli_store(tmp_path)
    x = make_files(tmp_path / "in", 1, seed=89)[0]
    _ok(_hoard(cfg, "put", str(x)))
    stray = marks.log_path(tmp_path / "d0").parent / "notes.log"
    stray.write_text("hello world\nnot a record\n")
    res = _hoard(cfg, "check")
    _ok(res)  # the old code: exit 5, "rewrite-marks", which changed nothing
    out = res.stdout + res.stderr
    assert f"{stray}: 2 line(s) that are not records" in out and "remove it" in out, out
    _ok(_hoard(cfg, "verify"))
