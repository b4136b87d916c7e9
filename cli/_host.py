"""The system `hoard install` changes: a root directory (`/`, or another system's root: a
chroot), whether this is a dry run, and the one way every change is made and reported.

Every step first looks (reads files, asks programs that only read) and then changes only what
differs, printing one line per change — in a dry run the same line with "would", and nothing
is changed. Programs run inside the root (`chroot ROOT …` when it is not `/`), files are
written under it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import PlantedLink, atomic_write, open_regular
from hoardfs.cli._common import out

PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class Host:
    def __init__(self, root: Path, dry_run: bool) -> None:
        self.root = root.resolve()
        self.dry_run = dry_run
        self.changes = 0

    # -- looking ------------------------------------------------------------------------------
    def p(self, path: str | Path) -> Path:
        """`path` of the target system as seen from here."""
        return self.root / str(path).lstrip("/")

    def has(self, program: str) -> bool:
        return any(os.access(self.p(d) / program, os.X_OK) for d in PATH)

    def systemd_runs(self) -> bool:
        """Whether systemd is PID 1 of the target system (sd_booted(3): /run/systemd/system)."""
        return self.root == Path("/") and Path("/run/systemd/system").is_dir()

    def argv(self, cmd: Sequence[str], user: str | None = None, group: str | None = None) -> list[str]:
        cmd = list(cmd)
        if user is not None:
            cmd = ["runuser", "-u", user, *(["-g", group] if group else []), "--", *cmd]
        return (["chroot", str(self.root)] if self.root != Path("/") else []) + cmd

    def probe(self, cmd: Sequence[str], user: str | None = None) -> subprocess.CompletedProcess[str] | None:
        """Run a command that only reads (also in a dry run); None when its program is missing."""
        if not self.has(cmd[0]) or (user is not None and not self.has("runuser")):
            return None
        return subprocess.run(self.argv(cmd, user), capture_output=True, text=True, cwd="/", timeout=120)

    def _ids(self, table: str) -> dict[str, int]:
        """Name → id in the target system's /etc/passwd or /etc/group (fields 0 and 2)."""
        path = self.p(table)
        if not path.exists():
            return {}
        rows = (line.split(":") for line in path.read_text().splitlines())
        return {f[0]: int(f[2]) for f in rows if len(f) > 2 and f[2].isdigit()}

    def name_of(self, uid: int) -> str | None:
        """The target system's name of user `uid`."""
        return next((name for name, ident in self._ids("/etc/passwd").items() if ident == uid), None)

    def user_exists(self, name: str) -> bool:
        return name in self._ids("/etc/passwd")

    def group_exists(self, name: str) -> bool:
        return name in self._ids("/etc/group")

    def owner_ids(self, owner: str) -> tuple[int, int]:
        """`user:group` as the target system numbers them (its own files: a chroot's users are
        not this system's)."""
        user, _, group = owner.partition(":")
        uid, gid = self._ids("/etc/passwd").get(user), self._ids("/etc/group").get(group or user)
        if uid is None or gid is None:
            raise HoardError(f"owner {owner}: no such {'user' if uid is None else 'group'} in {self.p('/etc')} "
                             "(`hoard install` makes its own user and group first)", ExitCode.UNAVAILABLE)
        return uid, gid

    # -- changing -----------------------------------------------------------------------------
    def say(self, what: str) -> None:
        out.print(f"{'would: ' if self.dry_run else ''}{what}", markup=False)

    def change(self, what: str, action: Callable[[], object] | None = None) -> None:
        """Report a change and make it (a dry run only reports)."""
        self.changes += 1
        self.say(what)
        if not self.dry_run and action is not None:
            action()

    def run(self, what: str, cmd: Sequence[str], user: str | None = None, group: str | None = None,
            timeout: float = 1800, check: bool = True, change: bool = True) -> int:
        """A change made by a program; its failure is one line naming `what` and its last words.
        `change=False`: a program that changes only what differs itself (`hoard db migrate`): run
        every time, not counted as a change."""
        self.changes += change
        line = f"{what}: {shlex.join(cmd)}" + (f" (as {user})" if user else "")
        if change:
            self.say(line)
        else:
            out.print(f"{'would run' if self.dry_run else 'ran'}: {line}", markup=False)
        if self.dry_run:
            return 0
        res = subprocess.run(self.argv(cmd, user, group), capture_output=True, text=True, cwd="/", timeout=timeout)
        if check and res.returncode != 0:
            tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
            raise HoardError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}", ExitCode.UNAVAILABLE)
        return res.returncode

    def write(self, path: str | Path, text: str, mode: int, owner: str = "root:root", keep: bool = False) -> bool:
        """Write a file of the target system if its text differs (`keep`: only if it is missing);
        True if it was (or would be) written. A file with the same text but another owner or
        mode gets them set (`keep` files are the operator's: left as they are). What is there
        is looked at without following a link or blocking on a FIFO (`_regular_text`): anything
        but a regular file of ours is replaced."""
        real = self.p(path)
        found = _regular_text(real)
        if found is not None and (keep or found[0] == text):
            if not keep:
                self._mend(path, real, found[1], mode, owner)
            return False
        exists = os.path.lexists(real)

        def act() -> None:
            real.parent.mkdir(parents=True, exist_ok=True)
            uid, gid = self.owner_ids(owner)

            def prepare(fd: int) -> None:  # by the descriptor, before it has a name: never through a link
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)

            try:
                atomic_write(real, text.encode(), prepare)
            except PlantedLink as e:  # (files.open_dir's words name the link)
                raise HoardError(f"{path} not written: {e.strerror}", ExitCode.USAGE) from None

        self.change(f"{'replace' if exists else 'write'} {path} ({owner}, {mode:04o})", act)
        return True

    def _mend(self, path: str | Path, real: Path, st: os.stat_result, mode: int, owner: str) -> None:
        """Set a file's owner and mode where they differ, by a descriptor opened without
        following a link (the file may have been swapped since it was looked at: then the
        descriptor's file is checked again and left alone if it is not the one looked at)."""
        uid, gid = self.owner_ids(owner)
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode):
            return

        def act() -> None:
            try:
                fd = open_regular(real, walk=True)
            except OSError as e:  # (swapped since it was looked at: a link, a FIFO, gone)
                raise HoardError(f"{real} changed while `hoard install` looked at it ({e.strerror}); run it again",
                                 ExitCode.UNAVAILABLE) from None
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise HoardError(f"{real} changed while `hoard install` looked at it; run it again",
                                     ExitCode.UNAVAILABLE)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

        self.change(f"set owner and mode of {path} ({owner}, {mode:04o}; was "
                    f"{self.name_of(st.st_uid) or st.st_uid}:{st.st_gid}, {st.st_mode & 0o7777:04o})", act)

    def remove(self, path: str | Path) -> None:
        real = self.p(path)
        if real.is_dir() and not real.is_symlink():
            self.change(f"remove {path}/", lambda: shutil.rmtree(real))
        elif real.exists() or real.is_symlink():
            self.change(f"remove {path}", real.unlink)


#: the largest file `hoard install` compares before replacing it (its own files are a few KB)
_LOOK_MAX = 1 << 20


def _regular_text(real: Path) -> tuple[str, os.stat_result] | None:
    """A regular file's text and its stat, looked at through a descriptor opened without
    following a link (O_NOFOLLOW) or waiting on a FIFO (O_NONBLOCK); None when there is no
    such file — a link, a FIFO, a device, a directory, a file too large or not text: what
    `Host.write` replaces."""
    try:
        fd = open_regular(real, walk=True)
    except PlantedLink as e:  # (on the way to it: the write would be refused too — say it now, dry run or not)
        raise HoardError(f"{real} not written: {e.strerror}", ExitCode.USAGE) from None
    except OSError:  # missing, a link (ELOOP), not a regular file, unreadable: written anew
        return None
    try:
        st = os.fstat(fd)
        if st.st_size > _LOOK_MAX:
            return None
        data = os.read(fd, _LOOK_MAX + 1)
    finally:
        os.close(fd)
    try:
        return data.decode(), st
    except UnicodeDecodeError:
        return None
