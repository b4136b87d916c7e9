"""Batch and view pointers reach every disk in service and survive an index rebuild or restore:
a disk added, replaced onto or back from being unplugged gets them, `hoard check` names a
disk that lacks one, and the newest definition always wins. Real stores on directory disks,
through the real CLI."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config, make_files
from tests.test_cli import hoard


def _ok(res) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _store(tmp_path: Path, n: int = 2, first: int = 1) -> tuple[str, list]:
    """A store on disks d<first>.. with 12 files put, batch b1 (a real manifest) registered and
    view v defined from the first 4 files: (config path, the put results)."""
    cfg = str(dir_disks_config(tmp_path, n, first=first, shard_size_mb=1))
    _ok(hoard("--config", cfg, "init"))
    with Store.open(config.load(cfg)) as st:
        results = st.put_many(make_files(tmp_path / "in", 12))
        files = [{"sha256": r.sha256, "size": r.size, "path": f"f{k}.bin"} for k, r in enumerate(results[:6])]
        manifest = st.put_bytes(json.dumps({"files": files}).encode())
        st.register_batch("b1", {"source": "t", "manifest": manifest.sha256, "files": 6, "bytes": 0})
    _define(tmp_path, cfg, "v", results[:4])
    return cfg, results


def _define(tmp_path: Path, cfg: str, name: str, results: list) -> None:
    rows = tmp_path / f"{name}.sha256"
    rows.write_text("".join(f"{r.sha256}  {name}/{k}.bin\n" for k, r in enumerate(results)))
    _ok(hoard("--config", cfg, "view", "add", name, str(rows)))


def _views(cfg: str) -> dict:
    return json.loads(_ok(hoard("--config", cfg, "view", "list", "--json")))


def _view_paths(cfg: str, name: str) -> list[str]:
    from hoardfs.fsd.outputs.manifest import iter_files

    with Store.open(config.load(cfg), writable=False) as st:
        return sorted(p for p, _, _ in iter_files(st.get, st.index.get_view(name)["manifest"]))


def _drop_disk_table(cfg: str, label: str) -> None:
    """Remove disk `label`'s [[disks]] table from hoard.toml (the last step of a replacement)."""
    text = Path(cfg).read_text()
    new = re.sub(rf'\n\[\[disks\]\]\nlabel = "{label}"\npath = "[^"]*"\n(capacity_gb = .*\n)?', "\n", text)
    assert new != text
    Path(cfg).write_text(new)


def _replace(tmp_path: Path, cfg: str, old: str, new: str) -> None:
    """The documented procedure: `disks add NEW`, `disks replace OLD NEW`, `disks forget OLD`,
    its [[disks]] table removed."""
    (tmp_path / new).mkdir()
    _ok(hoard("--config", cfg, "disks", "add", str(tmp_path / new), "--label", new))
    _ok(hoard("--config", cfg, "disks", "replace", old, new, "--yes"))
    _ok(hoard("--config", cfg, "disks", "forget", old))
    _drop_disk_table(cfg, old)


def _lose_index(cfg: str) -> None:
    index = config.load(cfg).index_dir
    index.rename(index.with_name(index.name + ".lost"))


def _check(cfg: str):
    return hoard("--config", cfg, "check", "--no-database")


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_every_disk_replaced_then_the_index_lost_keeps_batches_and_views(tmp_path: Path) -> None:
    """Both disks replaced by the documented procedure, then the index lost and rebuilt: the
    batch (`hoard ls`, its files) and the view with its whole definition are back — the new
    disks never got a pointer, and the rebuild found none (`view list` empty, "no ingested
    batch"), while `hoard check` said nothing."""
    cfg, _ = _store(tmp_path)
    before = _views(cfg)
    _replace(tmp_path, cfg, "d1", "d3")
    _replace(tmp_path, cfg, "d2", "d4")
    assert _check(cfg).returncode == 0
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert _views(cfg) == before
    assert _view_paths(cfg, "v") == [f"v/{k}.bin" for k in range(4)]
    assert "b1" in _ok(hoard("--config", cfg, "ls"))
    assert len(_ok(hoard("--config", cfg, "ls", "--batch", "b1")).splitlines()) == 6
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_restore_takes_views_from_the_index_copy_newest_wins(tmp_path: Path) -> None:
    """`hoard index restore` takes batches and views from the copy too: with the pointer files
    of view v and batch b1 gone from the disks after the backup, they come back from the copy; a view
    removed after the backup stays removed (the disks' removal record is newer than the copy's
    definition), and one redefined after it has its new definition."""
    cfg, results = _store(tmp_path)
    _define(tmp_path, cfg, "w", results[4:6])
    _define(tmp_path, cfg, "x", results[6:8])
    _ok(hoard("--config", cfg, "index", "backup"))
    _ok(hoard("--config", cfg, "view", "rm", "w"))
    _define(tmp_path, cfg, "x", results[8:11])
    for d in ("d1", "d2"):  # (as on disks replaced before this change: they never got them)
        (tmp_path / d / "views" / "v.json").unlink()
        (tmp_path / d / "batches" / "b1.json").unlink()
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "restore"))
    assert sorted(_views(cfg)) == ["v", "x"]
    assert _view_paths(cfg, "x") == [f"x/{k}.bin" for k in range(3)]
    assert "b1" in _ok(hoard("--config", cfg, "ls"))
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_redefinition_a_disk_missed_wins_after_replacement_and_rebuild(tmp_path: Path) -> None:
    """View v redefined while d2 was unplugged; d2 back, then d1 and d3 replaced by d4 and d5
    and the index lost: the rebuild serves the NEW definition — d2 held the old pointer and
    the new disks none, so the old one won."""
    cfg, results = _store(tmp_path, n=3)
    d2 = tmp_path / "d2"
    d2.rename(tmp_path / "d2.away")
    d2.mkdir()
    _define(tmp_path, cfg, "v", results[6:9])  # d2 is missing: d1 and d3 take it
    d2.rmdir()
    (tmp_path / "d2.away").rename(d2)
    _replace(tmp_path, cfg, "d1", "d4")
    _replace(tmp_path, cfg, "d3", "d5")
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert _view_paths(cfg, "v") == [f"v/{k}.bin" for k in range(3)]
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_redefinition_after_the_clock_went_back_still_wins(tmp_path: Path, monkeypatch) -> None:
    """The clock set back an hour, view v is redefined while d2 is unplugged; d2 back, the index
    lost before any writer brought d2 up: the rebuild reads d2's old pointer beside the new
    one, and the new one must be the newer (pointer_ns was the wall clock: the OLD one won)."""
    from hoardfs.fsd.outputs.views import define_view_rows

    cfg, results = _store(tmp_path, n=3)
    d2 = tmp_path / "d2"
    d2.rename(tmp_path / "d2.away")
    d2.mkdir()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)
    with Store.open(config.load(cfg)) as st:
        define_view_rows(st, "v", [("new/a.bin", results[9].sha256)])
    monkeypatch.undo()
    d2.rmdir()
    (tmp_path / "d2.away").rename(d2)
    res = _check(cfg)  # (read-only: nothing brought d2 up yet)
    assert res.returncode == 5 and "disk d2: holds an older pointer of view v" in res.stdout + res.stderr, res.stdout
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert _view_paths(cfg, "v") == ["new/a.bin"]


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_check_names_a_disk_without_a_pointer_and_its_advice_fixes_it(tmp_path: Path) -> None:
    """A pointer file gone from one disk behind the index's back (the index counts the disk as
    complete, so no writer rewrites it): `hoard check` names the disk and the view and advises
    `hoard index rewrite-pointers`; once that ran, check exits 0."""
    cfg, _ = _store(tmp_path)
    (tmp_path / "d2" / "views" / "v.json").unlink()
    res = _check(cfg)
    assert res.returncode == 5, res.stdout + res.stderr
    text = res.stdout + res.stderr
    assert "disk d2: lacks the pointer of view v" in text and "`hoard index rewrite-pointers`" in text, text
    assert "disk d1" not in text, text
    assert "rewritten on d1, d2" in _ok(hoard("--config", cfg, "index", "rewrite-pointers"))
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "d2" / "views" / "v.json").read_bytes() == (tmp_path / "d1" / "views" / "v.json").read_bytes()


def _flip(path: Path, at: int, bit: int) -> None:
    body = bytearray(path.read_bytes())
    body[at] ^= 1 << bit
    path.write_bytes(bytes(body))


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_flipped_bit_in_one_disks_pointer_neither_loses_nor_rolls_back(tmp_path: Path) -> None:
    """One bit flipped in the manifest digest of d3's view pointer (still hex, the same stamp)
    and garbage in its batch pointer, the other disks' good: `hoard check` names d3's two
    pointers, and after an index rebuild (d3 read last: it won the tie) the view and the batch
    are there with their definitions, and check is clean."""
    cfg, _ = _store(tmp_path, n=3)
    before = _views(cfg)
    view = tmp_path / "d3" / "views" / "v.json"
    digest = json.loads(view.read_text())["manifest"]
    at = view.read_bytes().index(digest.encode())
    k = next(i for i, c in enumerate(digest) if c in "0123456789bc")  # '0'↔'1', 'b'↔'c': one bit, still hex
    _flip(view, at + k, 0)
    assert json.loads(view.read_text())["manifest"] != digest
    (tmp_path / "d3" / "batches" / "b1.json").write_bytes(b'{"manifest": "\x00\x01')
    res = _check(cfg)
    text = res.stdout + res.stderr
    assert res.returncode == 5 and "disk d3: its pointer of view v is damaged" in text, text
    assert "disk d3: its pointer of batch b1 is damaged" in text, text
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert _views(cfg) == before
    assert "b1" in _ok(hoard("--config", cfg, "ls"))
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.parametrize("how", ["added", "unplugged"])
def test_a_disk_added_or_back_gets_the_database_dump_pointer(tmp_path: Path, how: str) -> None:
    """`.hoard-db-dump.json` (what names the database dump once the SSD is lost) is kept like
    the batches' pointers: a disk added later, or one unplugged while a dump was taken, holds
    the newest one after the next writer; it survives an index rebuild."""
    from hoardfs.sql.backup import _point_disks_at

    cfg, _ = _store(tmp_path)
    doc = {"sha256": "ab" * 32, "size": 1, "taken_at": "now"}
    if how == "unplugged":
        (tmp_path / "d2").rename(tmp_path / "d2.away")
        (tmp_path / "d2").mkdir()
    with Store.open(config.load(cfg)) as st:
        _point_disks_at(st, doc)  # what `hoard db backup --type dump` does
    if how == "unplugged":
        (tmp_path / "d2").rmdir()
        (tmp_path / "d2.away").rename(tmp_path / "d2")
        Store.open(config.load(cfg)).close()  # the next writer
        fresh = tmp_path / "d2"
    else:
        fresh = tmp_path / "d3"
        fresh.mkdir()
        _ok(hoard("--config", cfg, "disks", "add", str(fresh), "--label", "d3"))
    assert json.loads((fresh / ".hoard-db-dump.json").read_text())["sha256"] == doc["sha256"]
    _lose_index(cfg)
    (tmp_path / "d1" / ".hoard-db-dump.json").unlink()
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert json.loads((tmp_path / "d1" / ".hoard-db-dump.json").read_text())["sha256"] == doc["sha256"]


def test_the_design_docs_pointer_example_decodes() -> None:
    """docs/design.md's pointer example is what hoardfs.fsd.core.pointers reads and writes, byte for byte."""
    from hoardfs.fsd.core import pointers

    doc_text = (Path(__file__).resolve().parent.parent / "docs" / "design.md").read_text()
    body = re.search(r"```pointer-example\n(.*?)```", doc_text, re.S).group(1).rstrip("\n").encode()
    doc = pointers.decode(body, "views/holiday.json")
    assert pointers.encode(pointers.entry(doc), doc["pointer_ns"], doc["key"]) == body
    with pytest.raises(ValueError, match="file name"):
        pointers.decode(body, "views/holidax.json")
    flipped = body.replace(b'"files": 3', b'"files": 2')  # one bit
    with pytest.raises(ValueError, match="checksum"):
        pointers.decode(flipped)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_an_index_from_before_the_pointers_table_is_brought_along(tmp_path: Path) -> None:
    """An index without the `pointers` table (nor its notes) and disks with pointers as the
    previous release wrote them (no checksum), plus a disk added: the first writer fills the
    table from the index's batches and views and writes them to every disk; check is clean and
    a rebuild from the new disk's pointers alone keeps the view."""
    import lmdb

    cfg, _ = _store(tmp_path)
    index_dir = config.load(cfg).index_dir
    env = lmdb.open(str(index_dir), max_dbs=24)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"pointers", txn=txn), delete=True)
        meta = env.open_db(b"meta", txn=txn)
        for k in [bytes(k) for k, _ in txn.cursor(db=meta) if bytes(k).startswith(b"pointers_")]:
            txn.delete(k, db=meta)
    env.close()
    for p in tmp_path.glob("d*/*/*.json"):
        doc = json.loads(p.read_text())
        doc.pop("check")
        p.write_text(json.dumps(doc, indent=1, sort_keys=True))
    (tmp_path / "d3").mkdir()
    _ok(hoard("--config", cfg, "disks", "add", str(tmp_path / "d3"), "--label", "d3"))
    assert all("check" in json.loads(p.read_text()) for p in tmp_path.glob("d*/*/*.json"))
    res = _check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    before = _views(cfg)
    for d in ("d1", "d2"):
        for p in (tmp_path / d).glob("*/*.json"):
            p.unlink()
    _lose_index(cfg)
    _ok(hoard("--config", cfg, "index", "rebuild"))
    assert _views(cfg) == before
