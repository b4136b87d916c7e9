"""Durable replacement of a file (hoardfs.base.files.atomic_write / atomic_copy, `hoard get -o`):
two writers at once, a write broken off."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.base import files
from hoardfs.base.errors import HoardError
from hoardfs.base.files import atomic_copy, atomic_write
from hoardfs.cli.store import write_output
from hoardfs.sql.cluster import SERVER_USER, give_fd_to_server, give_to_server
from tests.helpers import REPO

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


@pytest.fixture(params=["unnamed", "named"])
def made(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a new file is made: without a name (O_TMPFILE) and, as on a file system that
    cannot, at its temporary name from the start."""
    if request.param == "named":
        monkeypatch.setattr(files, "_PROC_FD", False)
    return str(request.param)


@pytest.mark.parametrize("how", ["atomic_write", "get -o"])
def test_two_writers_at_once_each_publish_a_whole_file(tmp_path: Path, how: str, made: str) -> None:
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
def test_a_write_broken_off_leaves_the_old_file_and_nothing_beside_it(tmp_path: Path, error: type, made: str) -> None:
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


def test_a_copy_that_fails_keeps_the_old_file(tmp_path: Path, made: str) -> None:
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


#: 80 characters of three bytes each: a name a person gives `-o` (a title in Japanese), 240 bytes
LONG_NAME = "写" * 80


def test_a_name_that_fit_beside_its_old_temporary_name_is_still_written(tmp_path: Path, made: str) -> None:
    """NAME_MAX is 255 bytes. `.<name>.part` added 6 bytes to the name; the writer's own
    `.<name>.<pid>-<8 hex>.part` adds up to 23, so `hoard get -o` of a 240-byte name (80 CJK
    characters) failed `cannot write …: File name too long`, though the name is
    legal. The temporary name is cut to fit, never the target's."""
    out = tmp_path / LONG_NAME
    assert len(os.fsencode(out.name)) == 240
    write_output(out, "file", iter([b"the object"]))
    assert out.read_bytes() == b"the object"
    atomic_write(tmp_path / ("s" * 245), b"state")
    assert (tmp_path / ("s" * 245)).read_bytes() == b"state"
    assert sorted(len(os.fsencode(p.name)) for p in tmp_path.iterdir()) == [240, 245]


@pytest.mark.services  # (a process of its own, killed: no server)
def test_a_killed_get_leaves_no_part_behind_the_next_one(tmp_path: Path) -> None:
    """`hoard get -o` stopped by SIGTERM (`timeout`, systemd, kill) runs no clean-up. With one
    shared temporary name the next `get -o` of that path removed the leftover; with a name of
    each writer's own, nothing did — a retried download left one object-sized
    `.part` per attempt. The file is now made without a name (O_TMPFILE) and named only just
    before the rename: three killed attempts and one that completes leave only the output."""
    out = tmp_path / "object.bin"
    child = ("import pathlib, sys, time\n"
             "from hoardfs.cli.store import write_output\n"
             "def chunks():\n"
             "    yield b'x' * (1 << 20)\n"
             "    print('half', flush=True)\n"
             "    time.sleep(60)\n"
             f"write_output(pathlib.Path({str(out)!r}), 'file', chunks())\n")
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=REPO)
        assert p.stdout is not None and p.stdout.readline() == b"half\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == -signal.SIGTERM
        p.stdout.close()
    write_output(out, "file", iter([b"whole"]))
    assert out.read_bytes() == b"whole"
    left = sorted(p.name for p in tmp_path.iterdir() if p != out)
    assert left == [], f"{len(left)} killed writers' temporary files left beside {out.name}: {left}"


def _server_user() -> bool:
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return False
    return True


@pytest.mark.needs(os.geteuid() == 0 and _server_user(), f"ROOT AND THE USER {SERVER_USER} NEEDED")
@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_the_server_user_cannot_have_root_chown_a_file_through_a_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       named: bool) -> None:
    """pgBackRest's home is the server user's, and root writes `pgbackrest.conf` there giving
    it to the server: `prepare` chowned the temporary file by its name, which follows a link.
    The server user lists the directory (inotify): between the create and the chown it moved
    the file away and put a link to a root-only file at its name, and root made that file the
    server's. The owner is now given by the descriptor (`give_fd_to_server`), on a
    file that has no name yet where the file system allows (`named`: where it does not), and
    `give_to_server` of a path gives a link itself, never what it names. (The generator stands
    in for the server user's process at that moment.)"""
    if named:
        monkeypatch.setattr(files, "_PROC_FD", False)  # (as on a file system without O_TMPFILE)
    home = tmp_path / "pgbackrest"
    home.mkdir()
    give_to_server(home)  # as PgBackRest.write_conf does
    victim = tmp_path / "root-only"
    victim.write_text("root's")
    victim.chmod(0o600)
    swapped = []

    def data() -> Iterator[bytes]:
        yield b"[global]\n"
        for tmp in [p for p in home.iterdir() if p.name.endswith(".tmp")]:
            os.rename(tmp, home / "moved-away")
            os.symlink(victim, tmp)
            swapped.append(tmp)
        yield b"repo1-path=/x\n"

    # (named: the link is then renamed to pgbackrest.conf — which the server, owning the
    # directory, could do itself; what it must not get is root's chown through it)
    atomic_write(home / "pgbackrest.conf", data(), give_fd_to_server)
    assert bool(swapped) == named
    assert victim.stat().st_uid == 0, "root gave a file of its own to the server user through the link"
    (home / "log").symlink_to(victim)  # a directory write_conf makes and gives, swapped for a link
    give_to_server(home / "log")
    assert victim.stat().st_uid == 0


def test_create_new_removes_a_link_planted_at_its_name_and_never_writes_through_it(tmp_path: Path) -> None:
    """`create_new` (the marks snapshot's fixed `.marks.log.tmp`, a rendered file's temporary
    name, the fallback of `replacing`): a link or a leftover file at the name is removed, never
    followed or truncated, and the new file has the mode asked for whatever the umask."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's")
    tmp = tmp_path / ".x.tmp"
    tmp.symlink_to(victim)
    with files.create_new(tmp, 0o600) as f:
        f.write(b"new")
    assert victim.read_bytes() == b"root's" and not tmp.is_symlink()
    assert tmp.read_bytes() == b"new" and oct(tmp.stat().st_mode & 0o777) == oct(0o600)
    with files.create_new(tmp, 0o640) as f:  # a leftover file: made new, not truncated in place
        f.write(b"again")
    assert tmp.read_bytes() == b"again" and oct(tmp.stat().st_mode & 0o777) == oct(0o640)


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (a link another account owns)")
def test_a_link_another_account_planted_on_the_way_is_not_followed(tmp_path: Path) -> None:
    """`replacing` opened the file's directory by its path, following every link on
    the way — PostgreSQL's conf.d is the postgres account's, and a conf.d swapped for a link to
    /etc had root write (and `hoard install` chown) its file there. Now the directory is walked
    to (`files.open_dir`) following only links root or this process owns (the kernel's
    protected_symlinks rule): another account's link is refused, naming it, and nothing is
    written where it points; a link root made is followed as before, `..` and absolute targets
    included; a loop ends in ELOOP."""
    nobody = 65534
    target = tmp_path / "etc"
    target.mkdir()
    owned = tmp_path / "postgresql" / "15" / "main"
    owned.mkdir(parents=True)
    os.chown(owned, nobody, nobody)
    (owned / "conf.d").symlink_to(target)
    os.lchown(owned / "conf.d", nobody, nobody)
    with pytest.raises(files.PlantedLink, match=r"/main/conf.d: a symbolic link owned by uid 65534, not followed"):
        atomic_write(owned / "conf.d" / "hoard.conf", b"archive_command = 'x'\n")
    assert list(target.iterdir()) == []
    for reader in (lambda p: files.open_regular(p, walk=True), files.read_in_zone):
        (target / "secret").write_bytes(b"root's")
        with pytest.raises(files.PlantedLink, match="/main/conf.d: a symbolic link owned by uid 65534, not followed"):
            reader(owned / "conf.d" / "secret")
    (tmp_path / "srv").symlink_to("postgresql/15")  # root's links: followed, relative ones too
    (owned / "up").symlink_to("../../../etc")
    atomic_write(tmp_path / "srv" / "main" / "up" / "ok.conf", b"ok\n")
    assert (target / "ok.conf").read_bytes() == b"ok\n"
    (tmp_path / "abs").symlink_to(target)
    atomic_write(tmp_path / "abs" / "ok2.conf", b"ok\n")
    assert (target / "ok2.conf").read_bytes() == b"ok\n"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="more than 40 links"):
        atomic_write(tmp_path / "loop" / "x", b"x")


@pytest.mark.services
@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (a link another account owns)")
def test_a_store_reached_through_another_accounts_link_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A store whose SSD root is reached through a link another account owns (a
    developer's home) — `hoard init` as root stopped with a traceback when it wrote the disks'
    identities. Now one line naming the link and the next step, exit 2; through a link root
    owns it initialises as before."""
    from tests.helpers import write_config

    real = tmp_path / "real"
    (real / "d1").mkdir(parents=True)
    (real / "d2").mkdir()
    theirs = tmp_path / "home"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    (theirs / "proj").symlink_to(real)
    os.lchown(theirs / "proj", 65534, 65534)
    cfg = write_config(tmp_path, [(d, theirs / "proj" / d, None) for d in ("d1", "d2")], ssd=theirs / "proj" / "ssd")
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "init"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HOARD_CONFIG": ""})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "home/proj: a symbolic link owned by uid 65534 on the way to" in res.stderr, res.stderr
    os.lchown(theirs / "proj", 0, 0)  # the administrator's link: followed
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "init"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HOARD_CONFIG": ""})
    assert res.returncode == 0, res.stdout + res.stderr
    os.lchown(theirs / "proj", 65534, 65534)  # given away later: the store is not opened through it
    (tmp_path / "f").write_bytes(b"x" * 100)
    for args in (["put", str(tmp_path / "f")], ["ls"]):
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HOARD_CONFIG": ""})
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res.stdout + res.stderr)
        assert "ssd.root " in res.stderr and "a symbolic link owned by uid 65534 on the way to" in res.stderr


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (a link another account owns)")
def test_a_link_swapped_between_its_check_and_its_reading_sends_nothing_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`open_dir` checked a link's owner by its name, then read its target by its
    name again: the account owning the directory swapped root's link for its own in between
    and the write went where its link pointed. Both are now done on one descriptor of the link
    (O_PATH): the swap, made right after the owner's check, changes nothing."""
    legit, victim = tmp_path / "legit", tmp_path / "victim"
    legit.mkdir()
    victim.mkdir()
    pgdir = tmp_path / "pgdir"
    pgdir.mkdir()
    os.chown(pgdir, 65534, 65534)
    (pgdir / "conf.d").symlink_to(legit)  # the administrator's (root's) link in the account's directory
    real_fstat, swapped, link_ino = os.fstat, [], (pgdir / "conf.d").lstat().st_ino

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if not swapped and st.st_ino == link_ino:  # (the owner's check of root's link: now swap it)
            (pgdir / "conf.d").unlink()
            (pgdir / "conf.d").symlink_to(victim)
            os.lchown(pgdir / "conf.d", 65534, 65534)
            swapped.append(fd)
        return st

    monkeypatch.setattr(os, "fstat", fstat)
    atomic_write(pgdir / "conf.d" / "hoard.conf", b"x\n")
    monkeypatch.undo()
    assert swapped and list(victim.iterdir()) == [] and (legit / "hoard.conf").read_bytes() == b"x\n"
