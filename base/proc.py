"""Running external programs with errors a person can act on."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hoardfs.base.errors import ExitCode, HoardError


def which(program: str, package: str, extra_dirs: Sequence[str] = ()) -> str:
    """Absolute path of `program`, or a HoardError naming the Debian package to install."""
    found = shutil.which(program)
    if found is None:
        for d in extra_dirs:
            found = shutil.which(program, path=d)
            if found:
                break
    if found is None:
        raise HoardError(
            f"`{program}` not found; install the Debian package `{package}` (make demo does this)",
            ExitCode.UNAVAILABLE,
        )
    return found


def run(cmd: Sequence[str], what: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure raise a HoardError quoting `what` and the program's last words."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise HoardError(f"{what}: `{cmd[0]}` did not finish within {timeout:.0f} s", ExitCode.UNAVAILABLE) from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise HoardError(f"{what} failed (exit {res.returncode}): {' | '.join(tail)}", ExitCode.UNAVAILABLE)
    return res


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (on this host) still runs. A zombie (state Z in /proc/<pid>/stat:
    killed or exited, its parent has not reaped it yet) does not: it holds no file, lock or
    memory any more, and a killed job left as one must not block the re-run or a clean-up
    until its parent calls wait()."""
    if pid <= 0:  # (kill(0, 0) would ask about our own process group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:  # gone since kill(): reaped meanwhile
        return False
    except OSError:  # no /proc to look at: as kill() said
        return True
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def pid_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None (no such process, no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def process_space() -> str:
    """This host as the place where a pid names a process: `<name>/<machine id>/<boot id>/<pid
    namespace>` (`-` for a part that cannot be read). A pid and its start time name a process
    only within one boot of one machine and one pid namespace: a host name alone is not that —
    another machine of the same name (a clone), a container sharing the host's name (host
    networking) each has pids of its own. A seal's claim (hoardfs.fsd.core.s3) and `hoard worker`'s
    record (hoardfs.jobs.guard, read by hoardfs.jobs.reaper) name it."""
    def first(*paths: str) -> str:
        for path in paths:
            with contextlib.suppress(OSError):
                return Path(path).read_text().strip().replace("-", "") or "-"
        return "-"
    try:
        ns = os.readlink("/proc/self/ns/pid")  # pid:[4026531836]
        ns = ns[ns.index("[") + 1:ns.index("]")]
    except (OSError, ValueError):
        ns = "-"
    return "/".join([socket.gethostname(), first("/etc/machine-id", "/var/lib/dbus/machine-id"),
                     first("/proc/sys/kernel/random/boot_id"), ns])


def booted_ns() -> int | None:
    """When this boot began, in ns since the epoch (`btime` in /proc/stat; to the second), or
    None (no /proc to read). Something stamped since then cannot come from an earlier boot of
    this machine, whatever its boot id says: another kernel wrote it (a clone that kept the
    machine id, a sandbox with a kernel of its own)."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) * 1_000_000_000
    except (OSError, ValueError):
        pass
    return None


def earlier_boot(space: str, here: str, made_ns: int | None = None) -> bool:
    """Whether `space` (another process's `process_space`) is an earlier boot of this machine,
    whose space is `here`: the same name and machine id, another boot id — and, where `made_ns`
    says when what names it was made, made before this boot began (`booted_ns`: one made since
    came from another kernel). A part not known ("-") is never taken for one."""
    name, machine, boot = (space.split("/") + ["-"] * 3)[:3]
    this = here.split("/")
    if "-" in (machine, boot, this[2]) or (name, machine) != (this[0], this[1]) or boot == this[2]:
        return False
    if made_ns is None:
        return True
    booted = booted_ns()
    return booted is not None and made_ns < booted


def alive_since(pid: int, start: int | None) -> bool:
    """Whether the process `pid` that started at `start` (`pid_start`; None: not known) still
    runs on this host: not gone, not a zombie (`pid_alive`), and not another process that was
    given the same pid since (its start time differs)."""
    if not pid_alive(pid):
        return False
    now = pid_start(pid)
    return start is None or now is None or now == start


def ended(proc: subprocess.Popen) -> bool:
    """Whether child `proc` has ended — without reaping it: until it is reaped its id, and so
    the id of the process group it leads, cannot name another process (`end_group` may still
    kill that group). `Popen.poll()` would reap it. One reaped behind our back (a library's wait
    for any child) has ended: `poll()` records it so, and `end_group` then leaves its id alone."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        proc.poll()  # (ECHILD: Popen takes it as ended, status 0)
        return True


def end_group(proc: subprocess.Popen) -> int:
    """Kill child `proc` and its whole process group, then reap it; its exit status. For a child
    started with `start_new_session=True` (it leads its group) that ran hostile input: what it
    forked is in its group and may outlive it — a process that closed its output and sleeps or
    loops. The group is killed before the child is reaped, while its id cannot name another
    process; so whoever waits on the child until then uses `ended`, never `poll()`. (A process
    that left the group — setsid, setpgid — escapes this: `landlock.confine_reader` refuses both.)"""
    if proc.returncode is None:  # (reaped already by a poll(): its id may be another's now)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
