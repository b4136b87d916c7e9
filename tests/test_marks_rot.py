"""Bit rot in one disk's marks log must not flip a mark.

The rebuild took the union of every disk's log sorted by stamp, so one flipped bit in the
stamp of an `unroot` (or `drop`) line on ONE disk — a stamp weeks in the future — outvoted
the three good copies: the root `hoard put` set again afterwards was undone, `hoard check`
said nothing (records after the index's stamp were not judged), and after an index rebuild a
batch drop + gc freed an acknowledged object. Each line now carries a check (fsd/core/marks.py),
and a lone freeing record is obeyed only where no other disk contradicts it (`marks.agree`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.core import marks
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
DAY_NS = 86_400 * 10**9


def _ok(res) -> None:
    assert res.returncode == 0, res.stdout + res.stderr


def _flip_stamp_into_the_future(log: Path, op: str, sha: str) -> int:
    """Flip one bit of one digit in the stamp of the (last) `op` line of `sha` so that the stamp
    lands days to weeks in the future; returns the new stamp."""
    data = bytearray(log.read_bytes())
    start = data.rfind(b"\n", 0, data.rfind(f" {op} {sha}".encode())) + 1
    stamp = int(data[start:start + 19])
    for place in (3, 2):  # the digit worth 10^15 ns (~12 days), then 10^16
        digit = data[start + place]
        for bit in (1, 2, 4, 8):
            new = digit ^ bit
            if 0x30 <= new <= 0x39 and new > digit:
                data[start + place] = new
                flipped = int(data[start:start + 19])
                assert DAY_NS < flipped - stamp < 200 * DAY_NS
                log.write_bytes(bytes(data))
                return flipped
    raise AssertionError(f"no single-bit flip of {stamp} moves it days ahead")


def _lose_index_and_rebuild(cfg: Path, tmp_path: Path) -> str:
    shutil.move(config.load(cfg).index_dir, tmp_path / "lost-index")
    res = _hoard(cfg, "index", "rebuild")
    _ok(res)
    return res.stdout + res.stderr


def _drop_batch_and_gc(cfg: Path, batch: str) -> None:
    with Store.open(config.load(cfg)) as store:
        drop_batch(store, batch)
        gc(store, threshold=1.0)


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_a_flipped_unroot_stamp_on_one_disk_loses_no_acknowledged_object(tmp_path: Path) -> None:
    """The issue's reproduction: put X; delete --object X; put X again (acknowledged: kept
    until delete --object); a batch also holds X; one bit of the unroot's stamp flipped on d0
    (weeks ahead). Check names the damaged line; after losing the index, a rebuild, the
    batch's deletion and gc, X still reads back."""
    cfg = _cli_store(tmp_path)
    x = make_files(tmp_path / "in", 1, seed=71)[0]
    first = _hoard(cfg, "put", str(x))
    _ok(first)
    sha = first.stdout.split()[0]
    _ok(_hoard(cfg, "delete", "--object", sha, "--yes"))
    _ok(_hoard(cfg, "put", str(x)))  # acknowledged again
    with Store.open(config.load(cfg)) as store:
        _register(store, "batch-x", store.put_many([x]))
    _flip_stamp_into_the_future(marks.log_path(tmp_path / "d0"), "unroot", sha)

    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr  # the old code: exit 0
    assert "disk d0: 1 damaged line(s) in its marks log" in res.stdout + res.stderr, res.stdout + res.stderr
    assert "hoard index rewrite-marks" in res.stdout + res.stderr

    rebuilt = _lose_index_and_rebuild(cfg, tmp_path)
    assert "1 kept by `hoard put`" in rebuilt, rebuilt  # the old code: 0 kept
    _drop_batch_and_gc(cfg, "batch-x")
    out = tmp_path / "x.out"
    _ok(_hoard(cfg, "get", sha, "-o", str(out)))
    assert out.read_bytes() == x.read_bytes()
    _ok(_hoard(cfg, "check"))  # the rebuild's first writer gave every disk a clean snapshot


def test_a_flipped_drop_stamp_on_one_disk_loses_no_acknowledged_object(store_factory, tmp_path: Path) -> None:
    """The same with a `drop` record: X held by a batch is freed by gc (a drop record), then
    `hoard put` stores it anew (a root). A flipped bit moves the drop past the root on one
    disk: the old rebuild replayed drop after root, and X was lost to the next gc."""
    store = store_factory(n_disks=3, caps=None)
    x = make_files(tmp_path / "in", 1, seed=72)[0]
    _register(store, "b1", store.put_many([x]))
    drop_batch(store, "b1")
    gc(store, threshold=1.0)
    sha = store.put_many([x], root=PUT)[0].sha256  # acknowledged anew
    _register(store, "b2", store.put_many([x]))
    cfg = store.cfg
    store.close()
    _flip_stamp_into_the_future(marks.log_path(tmp_path / "disks" / "d2"), "drop", sha)
    rep = rebuild_index(cfg)
    assert rep.rooted == 1, rep
    assert any("damaged line" in d for d in rep.damaged), rep.damaged
    with Store.open(cfg) as again:
        drop_batch(again, "b2")
        gc(again, threshold=1.0)
        assert _reads_back(again, sha)


def _log_with(tmp_path: Path, name: str, lines: list[str]) -> marks.DiskLog:
    folder = tmp_path / name / "marks"
    folder.mkdir(parents=True)
    (folder / "marks.log").write_text("".join(lines))
    return marks.read_log(folder, label=name)


def test_the_agreement_rule(tmp_path: Path) -> None:
    """A freeing record one disk alone holds, while another disk's log covers its stamp and
    lacks it, is disputed and not obeyed; a lone root is obeyed; a lone unroot where no other
    disk took records then is obeyed; two disks' word is obeyed."""
    a, b = "a" * 64, "b" * 64
    root = [marks.line(10, "root", a), marks.line(11, "root", b)]
    d1 = _log_with(tmp_path, "d1", root + [marks.line(20, "unroot", a), marks.line(30, "root", "c" * 64)])
    d2 = _log_with(tmp_path, "d2", root + [marks.line(30, "root", "c" * 64)])
    agreed, disputed = marks.agree([d1, d2])
    assert disputed == [((20, "unroot", a), "d1")]
    assert set(marks.replay(agreed)["rooted"]) == {bytes.fromhex(h) for h in (a, b, "c" * 64)}
    # d2 took no record after 11 (out of service): d1's lone unroot at 20 is obeyed
    d3 = _log_with(tmp_path, "d3", root)
    agreed, disputed = marks.agree([d1, d3])
    assert not disputed and bytes.fromhex(a) not in marks.replay(agreed)["rooted"]
    # a lone root (protects) is obeyed even where another disk covers its stamp
    d4 = _log_with(tmp_path, "d4", root + [marks.line(25, "root", "d" * 64), marks.line(30, "root", "c" * 64)])
    agreed, _ = marks.agree([d2, d4])
    assert bytes.fromhex("d" * 64) in marks.replay(agreed)["rooted"]
    # two disks' word
    d5 = _log_with(tmp_path, "d5", root + [marks.line(20, "unroot", a), marks.line(30, "root", "c" * 64)])
    agreed, disputed = marks.agree([d1, d2, d5])
    assert not disputed and bytes.fromhex(a) not in marks.replay(agreed)["rooted"]


def test_lines_are_told_apart(tmp_path: Path) -> None:
    """A checked line is a record; a flipped bit anywhere in it is damage; the cut rest of an
    append is not a record but no damage either; a three-field line is a legacy record only
    in a log that has no checked line (else it is an append cut after its sha256)."""
    good = marks.line(1_763_812_345_123_456_789, "unroot", "9f" * 32).encode()
    assert marks.classify(good) == (marks.OK, (1_763_812_345_123_456_789, "unroot", "9f" * 32))
    for i in range(len(good) - 1):  # every bit of every byte but the newline
        for bit in range(8):
            rotten = bytearray(good)
            rotten[i] ^= 1 << bit
            kind, rec = marks.classify(bytes(rotten))
            assert rec is None and kind == marks.DAMAGED, (i, bit, bytes(rotten), kind)
    for cut in range(1, len(good) - 18):  # cut short, then completed by the next append's newline
        kind, _ = marks.classify(good[:cut] + b"\n")
        assert kind in (marks.OTHER, marks.LEGACY), (cut, kind)
    legacy = b"1763812345123456789 root " + b"ab" * 32 + b"\n"
    only_legacy = _log_with(tmp_path, "l1", [legacy.decode()])
    assert only_legacy.legacy == 1 and len(only_legacy.records) == 1
    mixed = _log_with(tmp_path, "l2", [good.decode(), legacy.decode()])
    assert mixed.legacy == 0 and mixed.other == 1 and len(mixed.records) == 1


def test_logs_written_before_checks_are_replayed_then_rewritten(store_factory, tmp_path: Path) -> None:
    """A store whose logs hold three-field lines (written by the previous release): an index
    rebuild replays them, and the first writable open rewrites every log with checked lines."""
    store = store_factory(n_disks=3, caps=None)
    acked = store.put_many(make_files(tmp_path / "a", 3, seed=73), root=PUT)
    cfg = store.cfg
    store.close()
    logs = [marks.log_path(tmp_path / "disks" / f"d{i}") for i in (1, 2, 3)]
    for log in logs:  # as the previous release wrote them
        log.write_bytes(b"".join(line.rsplit(b" ", 1)[0] + b"\n" if line.strip() else line + b"\n"
                                 for line in log.read_bytes().split(b"\n")[:-1]))
        assert marks.tail_is_legacy(log.parent.parent)
    rep = rebuild_index(cfg)  # (its first writer rewrites the logs)
    assert rep.rooted == 3, rep
    for log in logs:
        got = marks.read_log(log.parent)
        assert got.legacy == 0 and not got.damaged, log.read_text()
        assert {bytes.fromhex(r.sha256) for r in acked} <= set(marks.replay(got.records | {(t, marks.RESET, "0" * 64) for t in got.resets})["rooted"])


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_verify_reads_the_marks_logs_and_repairs_them(tmp_path: Path) -> None:
    """`hoard verify` reads each disk's marks log as it reads replicas: a damaged line is bad
    (exit 5), `--repair` rewrites that log from the index, and after it verify and check agree
    that nothing is wrong."""
    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 3, seed=74)))
    _ok(put)
    log = marks.log_path(tmp_path / "d1")
    data = bytearray(log.read_bytes())
    data[data.rfind(b" root ") - 3] ^= 0x01  # a digit of the last root's stamp
    log.write_bytes(bytes(data))
    res = _hoard(cfg, "verify")
    assert res.returncode == 5 and "disk d1: 1 damaged line(s) in its marks log" in res.stdout + res.stderr, res.stdout + res.stderr
    assert _hoard(cfg, "check").returncode == 5
    fixed = _hoard(cfg, "verify", "--repair")
    _ok(fixed)
    assert "2 bad, 2 repaired" in fixed.stdout, fixed.stdout  # (the damaged line, and the log replaying differently: as check names them)
    _ok(_hoard(cfg, "verify"))
    _ok(_hoard(cfg, "check"))


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_check_names_a_record_stamped_after_the_index(tmp_path: Path) -> None:
    """A whole, checked record stamped after anything the index gave out (damage that kept
    its check, a log copied from another store) was not judged at all; now it is named, and
    the advice (`hoard index rewrite-marks`) clears it."""
    cfg = _cli_store(tmp_path)
    put = _hoard(cfg, "put", *map(str, make_files(tmp_path / "in", 2, seed=75)))
    _ok(put)
    sha = put.stdout.split()[0]
    with open(marks.log_path(tmp_path / "d2"), "ab") as f:
        f.write(b"\n" + marks.records(marks.last_stamp(tmp_path / "d2") + 30 * DAY_NS, "unroot", [bytes.fromhex(sha)]))
    res = _hoard(cfg, "check")
    assert res.returncode == 5, res.stdout + res.stderr
    assert "disk d2: its marks log holds 1 record(s) stamped after" in res.stdout + res.stderr, res.stdout + res.stderr
    _ok(_hoard(cfg, "index", "rewrite-marks"))
    _ok(_hoard(cfg, "check"))


@pytest.mark.parametrize("op", ["unroot", "delete"])
def test_a_lone_freeing_record_another_disk_lacks_is_not_obeyed(store_factory, tmp_path: Path, op: str) -> None:
    """Defence beyond the check: a freeing record with a valid check on one disk alone, which
    the other disks' logs (covering its stamp) lack, does not free the object after a rebuild."""
    store = store_factory(n_disks=3, caps=None)
    sha = store.put_many(make_files(tmp_path / "in", 1, seed=76), root=PUT)[0].sha256
    store.put_many(make_files(tmp_path / "more", 1, seed=77), root=PUT)  # later records on every disk
    cfg = store.cfg
    store.close()
    log = marks.log_path(tmp_path / "disks" / "d1")
    first = int(log.read_bytes().split(b" root " + sha.encode())[0].rsplit(b"\n", 1)[-1])
    with open(log, "ab") as f:  # stamped between the two puts: the other logs cover it
        f.write(b"\n" + marks.records(first + 1, op, [bytes.fromhex(sha)]))
    rep = rebuild_index(cfg)
    assert rep.rooted == 2 and rep.deleted == 0, rep
    assert any(f"`{op}` of {sha}" in d and "not obeyed" in d for d in rep.damaged), rep.damaged


def test_the_design_doc_example_decodes() -> None:
    """docs/design.md's example record is one `marks.line` writes and `marks.classify` reads."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "design.md").read_text()
    example = doc.split("Example: `", 1)[1].split("`", 1)[0]
    assert marks.classify(example.encode() + b"\n") == (marks.OK, (1763812345123456789, "delete", example.split()[2]))
