"""Durable replacement of a file (fsd.base.files.atomic_write / atomic_copy, `hoard get -o`):
two writers at once, a write broken off."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.base.errors import HoardError
from fsd.base.files import atomic_copy, atomic_write
from fsd.cli.store import write_output

PIECE = 4096


def _racing(path: Path, write) -> tuple[bytes, bytes, list[BaseException]]:
    """Writer A starts, writes one piece, then lets writer B (a thread) start and write its
    first piece; A finishes while B waits, then B finishes. What `path` held when A returned,
    what it holds at the end, and B's errors."""
    b_half, b_go_on, errors = threading.Event(), threading.Event(), []

    def b_pieces() -> Iterator[bytes]:
        yield b"B" * PIECE
        b_half.set()
        b_go_on.wait(10)
        yield from [b"B" * PIECE] * 3

    def b() -> None:
        try:
            write(path, b_pieces())
        except BaseException as e:  # (a thread's error is the test's)
            errors.append(e)
            b_half.set()

    thread = threading.Thread(target=b)

    def a_pieces() -> Iterator[bytes]:
        yield b"A" * PIECE
        thread.start()
        assert b_half.wait(10)
        yield from [b"A" * PIECE] * 3

    write(path, a_pieces())
    after_a = path.read_bytes()
    b_go_on.set()
    thread.join(10)
    return after_a, path.read_bytes(), errors


@pytest.mark.parametrize("how", ["atomic_write", "get -o"])
def test_two_writers_at_once_each_publish_a_whole_file(tmp_path: Path, how: str) -> None:
    """One temporary name (`.<name>.tmp`) for every writer: B's start removed A's temporary
    file and made its own there; A, done, renamed B's half-written file over the state file
    — a torn file published, and A's write, acknowledged, gone. (Two `hoard health` saving
    their memory at once; two GUI threads writing a thumbnail; two `hoard get -o` of one
    path.) Each writer now has a temporary name of its own: A's whole file is there when A
    returns, B's when B does, and nothing is left beside them."""
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    write = atomic_write if how == "atomic_write" else (lambda p, chunks: write_output(p, "file", chunks))
    after_a, after_b, errors = _racing(path, write)
    assert after_a == b"A" * 4 * PIECE
    assert not errors, errors
    assert after_b == b"B" * 4 * PIECE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


class _Broken(Exception):
    pass


@pytest.mark.parametrize("error", [_Broken, KeyboardInterrupt])
def test_a_write_broken_off_leaves_the_old_file_and_nothing_beside_it(tmp_path: Path, error: type) -> None:
    """A write whose data fails part way (an error, Ctrl-C) keeps the old file whole and
    removes its temporary file (a leftover once stayed until the next write of that name)."""
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def pieces() -> Iterator[bytes]:
        yield b"new" * PIECE
        raise error

    for write in (atomic_write, lambda p, chunks: write_output(p, "file", chunks)):
        with pytest.raises(error):
            write(path, pieces())
        assert path.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_copy_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    """atomic_copy of a source that cannot be read (a directory) keeps the old destination and
    leaves no temporary file; a good copy replaces it whole."""
    dest = tmp_path / "out" / "dump"
    dest.parent.mkdir()
    dest.write_bytes(b"old dump")
    (tmp_path / "src").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_copy(tmp_path / "src", dest)
    assert dest.read_bytes() == b"old dump" and sorted(p.name for p in dest.parent.iterdir()) == ["dump"]
    (tmp_path / "good").write_bytes(b"new dump" * 100_000)
    atomic_copy(tmp_path / "good", dest)
    assert dest.read_bytes() == b"new dump" * 100_000 and sorted(p.name for p in dest.parent.iterdir()) == ["dump"]


def test_get_o_refusing_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """`hoard get -o` on a full filesystem: one line (exit 6), the old file kept, no `.part`."""
    path = tmp_path / "x"
    path.write_bytes(b"old")

    def pieces() -> Iterator[bytes]:
        yield b"x"
        raise OSError(28, "No space left on device")

    with pytest.raises(HoardError, match="cannot write .*No space left on device") as got:
        write_output(path, "file", pieces())
    assert got.value.exit_code == 6
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x"]
