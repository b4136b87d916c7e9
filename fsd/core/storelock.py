"""Store-wide locks on the SSD: who may change the store while whom runs.

Two `flock` files under `<ssd.root>/locks/`:

* `store.lock` — **shared** by everything that writes objects or serves them from a
  long-lived process (writers, RQ work horses, the mount); **exclusive** for the moments
  that must see the store still: gc's reachability + swap, `hoard index rebuild` /
  `restore` (they rename the index away under everyone), and rebuild's switch-over.
* `readers.lock` — **shared** by long-lived readers (the mount, `hoard index backup`); **exclusive** only for
  `hoard index rebuild` / `restore`, which would pull the index out from under them.
* `maintenance.lock` — **exclusive** for the jobs that move replicas around (gc,
  replicate, rebuild, verify --repair), so that two of them never race on one shard.

Each holder leaves `<name>.<pid>.holder` (JSON: pid, command, mode, since) beside the lock
so a refusal can name who is in the way ("held by pid 4242 `hoard mount /srv/hoard`
since …") — as restic names a lock's holder and says how to remove a stale one. flock
locks die with their process, so a holder file whose pid is gone is stale and ignored.

A process holds at most one fd per lock file and counts its users, so several `Store`
objects in one process share one lock (flock on two fds of one file would conflict with
itself). An upgrade from shared to exclusive converts that one fd — and Linux drops the
shared lock when a non-blocking conversion fails, so every acquisition first passes a
*gate* (`<name>.gate`): sharers take it shared for a moment, an exclusive requester holds it
exclusively while it waits. Nobody can slip in while a converting process is without its
lock, and an exclusive requester is not starved by a stream of new sharers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import ssd_space
from hoardfs.base.modes import FILE
from hoardfs.base.proc import pid_alive

STORE = "store"
READERS = "readers"
MAINTENANCE = "maintenance"
#: how long an exclusive request waits for the shared holders to finish, by default
DEFAULT_WAIT_S = 0.0
#: how long an exclusive request waits, whatever it was given, for a lock that no live holder
#: file names: one held for a moment — `taken` probing it (`hoard health`, which the GUI runs
#: every few seconds, judging index leftovers), a sharer passing the gate or between its flock and
#: its holder file. Refused at once, an index rebuild started beside the GUI failed now and then
#: with "held by a process that left no holder file".
MOMENT_S = 1.0


class StoreBusy(HoardError):
    exit_code = ExitCode.UNAVAILABLE


def _command() -> str:
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)[:200]


class _Lock:
    """One lock file, held by this process through one fd with a count per mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.gate: int | None = None
        self.shared = 0
        self.exclusive = 0
        self.what = ""

    @property
    def open_fd(self) -> int:
        """The lock file's fd, between `_open` and `_close_if_unused`."""
        assert self.fd is not None
        return self.fd

    @property
    def open_gate(self) -> int:
        """The gate file's fd, between `_open` and `_close_if_unused`."""
        assert self.gate is not None
        return self.gate

    def holder_path(self, pid: int | None = None) -> Path:
        return self.path.with_name(f"{self.path.stem}.{pid or os.getpid()}.holder")

    def _write_holder(self, mode: str, what: str) -> None:
        doc = {"pid": os.getpid(), "command": _command(), "mode": mode, "what": what,
               "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.holder_path().with_suffix(".tmp")
        # a full SSD is one line (exit 6), not a traceback; the caller gives the lock back
        with ssd_space(self.path.parent.parent, f"{what}: taking {self.path.name}", tmp):
            try:
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, self.holder_path())
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise

    def holders(self) -> list[dict]:
        """Live holders other than this process (stale holder files are removed)."""
        out = []
        for p in self.path.parent.glob(f"{self.path.stem}.*.holder"):
            try:
                doc = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if doc.get("pid") == os.getpid():
                continue
            if not pid_alive(int(doc.get("pid", 0))):
                with contextlib.suppress(OSError):
                    p.unlink()
                continue
            out.append(doc)
        return out

    def _flock(self, op: int, wait_s: float, fd: int | None = None) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.open_fd if fd is None else fd, op | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def refusal(self, what: str) -> StoreBusy:
        held = self.holders()
        who = "; ".join(f"pid {h['pid']} `{h['command']}` ({h['mode']}, {h.get('what', '')}, since {h['since']})"
                        for h in held) or "a process that left no holder file"
        return StoreBusy(f"{what}: the store is busy — {self.path.name} is held by {who}; wait for it to finish "
                         "(or stop it: `hoard umount`, stop the workers) and run this again")


_locks: dict[Path, _Lock] = {}
_guard = threading.RLock()


def taken(path: Path) -> bool:
    """Whether a live process holds an exclusive `flock` on the file (without taking or removing
    it; no file: nobody)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (with the shared lock, if it was taken)


def _get(ssd_root: Path, name: str) -> _Lock:
    path = (ssd_root / "locks" / f"{name}.lock").resolve()
    lk = _locks.get(path)
    if lk is None:
        lk = _locks[path] = _Lock(path)
    return lk


def _open(lk: _Lock, what: str) -> None:
    if lk.fd is None:
        with ssd_space(lk.path.parent.parent, f"{what}: creating {lk.path.name}"):
            lk.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lk.path, os.O_RDWR | os.O_CREAT, FILE)
            try:
                lk.gate = os.open(lk.path.with_suffix(".gate"), os.O_RDWR | os.O_CREAT, FILE)
            except OSError:
                os.close(fd)
                raise
            lk.fd = fd


def _close_if_unused(lk: _Lock) -> None:
    if lk.shared == 0 and lk.exclusive == 0 and lk.fd is not None:
        os.close(lk.fd)  # closing the last fd drops the flock
        os.close(lk.open_gate)
        lk.fd = lk.gate = None
        with contextlib.suppress(OSError):
            lk.holder_path().unlink()


def acquire_shared(ssd_root: Path, what: str, name: str = STORE, wait_s: float = 300.0) -> None:
    """Take the shared lock (waiting up to `wait_s` for an exclusive holder), or raise StoreBusy."""
    with _guard:
        lk = _get(ssd_root, name)
        if lk.shared or lk.exclusive:
            lk.shared += 1
            return
        _open(lk, what)
        deadline = time.monotonic() + wait_s
        got = lk._flock(fcntl.LOCK_SH, wait_s, lk.gate)  # not while an exclusive requester waits
        if got:
            got = lk._flock(fcntl.LOCK_SH, max(0.0, deadline - time.monotonic()))
            fcntl.flock(lk.open_gate, fcntl.LOCK_UN)
        if not got:
            _close_if_unused(lk)
            raise lk.refusal(what)
        lk.shared += 1
        lk.what = what
        try:
            lk._write_holder("shared", what)
        except BaseException:
            lk.shared -= 1
            _close_if_unused(lk)
            raise


def release_shared(ssd_root: Path, name: str = STORE) -> None:
    with _guard:
        lk = _get(ssd_root, name)
        lk.shared = max(0, lk.shared - 1)
        _close_if_unused(lk)


@contextlib.contextmanager
def exclusive(ssd_root: Path, what: str, name: str = STORE, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the lock exclusively (converting this process's shared hold, if any); refuse with
    the holders named when others keep it for longer than `wait_s`."""
    with _guard:
        lk = _get(ssd_root, name)
        if lk.exclusive:
            lk.exclusive += 1
            nested = True
        else:
            nested = False
            _open(lk, what)
            got = _take_exclusive(lk, wait_s)
            if not got and not lk.holders():  # held only for a moment (see MOMENT_S)
                got = _take_exclusive(lk, MOMENT_S)
            if not got:
                _close_if_unused(lk)
                raise lk.refusal(what)
            lk.exclusive = 1
            try:
                lk._write_holder("exclusive", what)
            except BaseException:
                lk.exclusive = 0
                if lk.shared:
                    fcntl.flock(lk.open_fd, fcntl.LOCK_SH)
                _close_if_unused(lk)
                raise
    try:
        yield
    finally:
        with _guard:
            lk.exclusive -= 1
            if not nested:
                if lk.shared:
                    fcntl.flock(lk.open_fd, fcntl.LOCK_SH)  # back to shared: exclusive → shared never blocks
                    # only a label for refusals: a full SSD leaves the old one ("exclusive")
                    with contextlib.suppress(HoardError):
                        lk._write_holder("shared", lk.what)
                _close_if_unused(lk)


def _take_exclusive(lk: _Lock, wait_s: float) -> bool:
    """Convert or take `lk` exclusively within `wait_s`; False (this process's shared hold
    kept) when others keep it."""
    deadline = time.monotonic() + wait_s
    # holding the gate, nobody else acquires anything: a failed conversion below drops
    # this process's shared lock (Linux), and nobody can take the lock meanwhile
    got = lk._flock(fcntl.LOCK_EX, wait_s, lk.gate)
    if got:
        got = lk._flock(fcntl.LOCK_EX, max(0.0, deadline - time.monotonic()))
        if not got and lk.shared:
            fcntl.flock(lk.open_fd, fcntl.LOCK_SH)  # back to shared: only sharers hold it now
        fcntl.flock(lk.open_gate, fcntl.LOCK_UN)
    return got


def held_by_others(ssd_root: Path, name: str = STORE, mine: int = 0) -> bool:
    """Whether anyone but the caller holds the lock: another live process (its holder file: a
    writer writes it before its first change to the store), or more users in this process than
    the caller's own `mine` (a second Store opened beside it)."""
    lk = _get(ssd_root, name)
    with _guard:
        if lk.shared + lk.exclusive > mine:
            return True
    return bool(lk.holders())


def holders(ssd_root: Path, name: str = STORE) -> list[dict]:
    """Who holds the lock now (other processes), for `hoard health` and refusals."""
    return _get(ssd_root, name).holders()
