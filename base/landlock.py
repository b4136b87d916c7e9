"""Landlock: a process takes away, irrevocably, its own right to write (and to read) outside
the paths it names — the code that reads hostile scraped input runs so (docs/security.md).

    from hoardfs.base import landlock
    landlock.confine(write=[output_root])            # writes only below output_root
    landlock.confine(read=[batch_dir], write=[])     # reads only there (+ Python), writes nowhere

The kernel's three system calls through ctypes (no dependency: the ABI is three calls and two
structs; the PyPI bindings were a pre-release covering ABI 1–2 or a months-old 0.x project).
What Landlock does not cover, said where it matters: descriptors opened before `confine`
keep their rights (a child process should be started with only the pipes it needs), and
`truncate(2)` of a path is restricted from ABI 3 (kernel 6.2) on — below it (Debian 12's 6.1)
`confine` adds a seccomp filter that refuses truncate(2) outright (`refuse_syscalls`).

Where the kernel has no Landlock (built without it, or left out of its `lsm=` list), or only
ABI 1 (5.13–5.18: a rename between two directories is refused under any ruleset, which
the writers here need), `confine` does nothing and returns False; `hoard health` warns once
(`status`), and the systemd units' own sandboxing still applies. Where it has Landlock but
installs no seccomp filter (`seccomp_missing`), `confine` restricts with Landlock alone and
`status` — which asks a confined child of its own, the same fact the parser meets — says so.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import resource
import stat
import struct
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["MIN_ABI", "abi", "child_env", "confine", "confine_reader", "limit_memory", "python_runtime", "refuse_metadata",
           "refuse_other_abis", "refuse_read_truncate", "refuse_ioctls", "refuse_requests", "refuse_secrets", "refuse_sockets",
           "refuse_syscalls", "status", "unavailable"]

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same number on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# access rights (include/uapi/linux/landlock.h)
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER = 1 << 13     # ABI 2: link or rename into another directory
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5: ioctl(2) on a device file (a terminal's TIOCSTI)
#: ABI 6: what a confined process may no longer reach outside its own domain
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

#: the rights that change the filesystem, by the ABI that knows them
_WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
          | MAKE_BLOCK | MAKE_SYM | REFER)
_READ = READ_FILE | READ_DIR
#: the rights a rule on a file (not a directory) may carry
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
#: test-only: `HOARD_TEST_LANDLOCK_ABI=N` makes this process (and every one that inherits its
#: environment) take the kernel's ABI for the lower of N and its real one, so that the tests
#: confine as on Debian 12's ABI 2 with a newer kernel. A lower ABI only trades Landlock's own
#: rules for the seccomp filters that stand in for them below it; no unit or command sets it
TEST_ABI = "HOARD_TEST_LANDLOCK_ABI"
#: REFER is what ABI 1 lacks: without it a process under any ruleset cannot rename across
#: directories (EXDEV), and the built-in workers move their outputs so
MIN_ABI = 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]  # the ABI 1–3 struct; later ones extend it


class _RulesetAttrScoped(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # ABI 6


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel's header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(nr: int, *args: object) -> int:
    ctypes.set_errno(0)
    res = int(_libc().syscall(ctypes.c_long(nr), *args))
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


#: what to do about each reason Landlock cannot be used (`hoard health` prints it)
_NEXT = {
    "built": "boot a kernel built with CONFIG_SECURITY_LANDLOCK=y (Debian 12's linux-image-amd64 is)",
    "boot": ("add landlock to the kernel's boot parameter lsm= (e.g. lsm=landlock, then the list in "
             "/sys/kernel/security/lsm) and reboot"),
    "old": "boot Linux 5.19 or later (Debian 12's 6.1 has ABI 2)",
}


@functools.cache
def _probe() -> tuple[int, str | None, str | None]:
    """(ABI version, why it cannot be used or None, the next step)."""
    try:
        version = _call(_CREATE_RULESET, ctypes.c_void_p(None), ctypes.c_size_t(0),
                        ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return 0, "Landlock is built into this kernel but not enabled at boot (not in its lsm= list)", _NEXT["boot"]
        if e.errno == errno.ENOSYS:
            return 0, "this kernel was built without Landlock", _NEXT["built"]
        return 0, f"the kernel refused the Landlock version query ({e.strerror})", _NEXT["built"]
    except AttributeError:  # no syscall() in this C library
        return 0, "this C library offers no syscall()", _NEXT["built"]
    forced = os.environ.get(TEST_ABI, "")
    if forced.isdigit() and int(forced) > 0:  # test-only: never above what the kernel has
        version = min(version, int(forced))
    if version < MIN_ABI:
        return version, (f"this kernel has Landlock ABI {version} (Linux 5.13–5.18), which cannot allow a rename "
                         f"between directories (ABI {MIN_ABI})"), _NEXT["old"]
    return version, None, None


def unavailable() -> tuple[str, str] | None:
    """Why this kernel cannot confine at all and the next step, or None where it can (Landlock
    at `MIN_ABI` or above; whether seccomp installs too is known only to a process that tries)."""
    _, why, next_step = _probe()
    return None if why is None else (why, next_step or _NEXT["built"])


def abi() -> int:
    """The kernel's Landlock ABI version; 0 where it has none."""
    return _probe()[0]


def status() -> dict[str, object]:
    """`{"abi": N, "enforced": bool, "reason": why not, "next_step": …, "landlock": bool,
    "seccomp": bool, "effect": what runs without it, "fails": bool}` for `hoard health`: what a
    confined child of this process gets (`_probe_child`, run once) — enforced is both walls;
    fails, that such a child cannot even start (every batch and thumbnail would fail)."""
    version, why, next_step = _probe()
    unconfined = ("ingest parsers and built-in actions read scraped input without Landlock's walls: one taken over "
                  "may write, and read the service's secrets, wherever the service's user may (the systemd units' "
                  "sandboxing still applies); a team's own local workers are refused unless their contract says "
                  "confine = false")
    if why is not None:
        return {"abi": version, "enforced": False, "reason": why, "next_step": next_step, "landlock": False,
                "seccomp": False, "effect": unconfined, "fails": False}
    confined, why_not, fails = _child_status()
    if not confined:
        return {"abi": version, "enforced": False, "reason": why_not and why_not[0],
                "next_step": why_not and why_not[1], "landlock": False, "seccomp": False,
                "effect": "every ingest batch and thumbnail fails" if fails else unconfined, "fails": fails}
    return {"abi": version, "enforced": why_not is None, "reason": why_not and why_not[0],
            "next_step": why_not and why_not[1], "landlock": True, "seccomp": why_not is None,
            "effect": why_not and ("ingest parsers, the thumbnail decoder and built-in actions run behind "
                                   "Landlock's file walls alone: they may open sockets (the service's Redis and "
                                   "PostgreSQL), take flocks, change files' modes, times and flags, hand what "
                                   "they read to other users through System V IPC, message queues or keyrings, "
                                   "leave their process group and signal the service's processes" + (", and truncate any file their user may write"
                                                                 if version < 3 else "")
                                   + "; a team's own local workers are refused unless their contract says "
                                     "confine = false"), "fails": False}


@functools.cache
def _child_status() -> tuple[bool, tuple[str, str] | None, bool]:
    """`_probe_child`'s answer from a child process (`python -m hoardfs.base.landlock`): (Landlock
    applied, why seccomp or Landlock is missing or None, the child failed)."""
    try:
        res = subprocess.run([sys.executable, "-P", "-s", "-m", __name__], capture_output=True, text=True,
                             env=child_env(), timeout=120)
        got = json.loads(res.stdout)
        if res.returncode == 0 and isinstance(got, dict):
            why = (str(got["why"][0]), str(got["why"][1])) if got["why"] else None
            return bool(got["landlock"]), why, False
        failed = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
    except (OSError, ValueError, KeyError, TypeError, subprocess.TimeoutExpired) as e:
        failed = f"{type(e).__name__}: {e}"
    return False, (f"a confined child process fails here ({failed[:200]})",
                   f"run `{sys.executable} -m {__name__}` as the service's user to see why, and tell the developers"), True


def _handled(version: int, reads: bool) -> int:
    rights = _WRITE | (TRUNCATE if version >= 3 else 0) | (IOCTL_DEV if version >= 5 else 0)
    return rights | (_READ | EXECUTE if reads else 0)


def confine(*, write: Iterable[Path | str] = (), read: Iterable[Path | str] | None = None,
            write_files: Iterable[Path | str] = ("/dev/null",), execute: Iterable[Path | str] = (),
            network: bool = False, flock: bool = False, leave_group: bool = False,
            own: Iterable[Path | str] = ()) -> bool:
    """Restrict this thread and every process it starts from now on, for good: files and
    directories are created, written, renamed or removed only below `write` (and the single
    files of `write_files`, devices among them driven by ioctls too). With `read` given, files are also read (and listed) only below
    `read` and `write`, and programs started (execve) only below `write` and the single files
    of `execute` (read too); without it, reading and starting programs are not restricted. A
    path that does not exist raises FileNotFoundError (a rule cannot name it); a rule that would
    let the process read the service's secrets raises SecretInReach (`secrets_near`). False,
    with nothing done, where the kernel cannot (`status()` says why); True once restricted.
    Call it before any other thread starts: one started earlier would keep its rights and share
    the memory (RuntimeError).

    What Landlock leaves open and a confined process must not reach either is refused too: a
    socket (a seccomp filter on socket(2) and io_uring: the Redis socket would take an RQ job
    that runs unconfined, PostgreSQL's would take SQL); System V IPC, POSIX message queues and
    the kernel's keyrings (`_IPC`: a shared memory segment made 0666 hands what it read to any
    local user); leaving its process group (`_LEAVE_GROUP`); a signal to another process — below
    ABI 6 by seccomp (`refuse_signals_to_others`), from ABI 6 by Landlock outside its own domain,
    with an abstract socket — and through a file's owner (F_SETOWN: `refuse_file_owners`); another
    process's limits, priority or processors (`refuse_others_limits`); an ioctl on a device it opens from ABI 5, and always pushing
    input into a terminal it inherited or setting a file's attribute flags (`refuse_ioctls`);
    an flock (ENOLCK), which would hold the service's own locks.

    A team's own worker (hoardfs.base.confine) is let loosen three of these: `network` allows
    socket(2) for IPv4 and IPv6 (every other family stays refused, `refuse_sockets`), `flock`
    allows flock(2) (what it may open holds none of the service's locks) and `leave_group`
    allows setsid(2) and setpgid(2) (its runner ends its whole session and the orphans it is
    handed as their subreaper, hoardfs.jobs.actions.execute).

    `own`: directories written like `write` that are the program's own although they lie in the
    service's state (Label Studio's data, `<ssd.root>/state/labelstudio/data`): the secrets
    check lets them lie below `state/`, never hold a secret."""
    version, why, _ = _probe()
    if why is not None:
        return False
    threads = _threads()
    if threads > 1:  # Landlock and seccomp confine the calling thread and what it starts from then on
        raise RuntimeError(f"confine: {threads - 1} other thread(s) of this process run already (a library that "
                           "starts a pool at import?) and would stay outside the sandbox, sharing its memory")
    handled = _handled(version, read is not None)
    own = list(own)
    rules: list[tuple[Path | str, int]] = [(p, handled) for p in [*write, *own]]
    # a device among them (a GPU's) is driven by ioctls, which Landlock refuses from ABI 5 without the right
    rules += [(p, handled & (WRITE_FILE | TRUNCATE | READ_FILE | IOCTL_DEV)) for p in write_files if os.path.exists(p)]
    rules += [(p, handled & _READ) for p in read or ()]  # reading a library is not executing it (mmap)
    if read is not None:
        rules += [(p, handled & (READ_FILE | EXECUTE)) for p in execute]
        _refuse_secrets([p for p, _ in rules if p not in own], own)
    attr: ctypes.Structure = _RulesetAttr(handled)
    if version >= 6:
        attr = _RulesetAttrScoped(handled, 0, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    ruleset = _call(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    try:
        for path, rights in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= _FILE_RIGHTS
                if rights:
                    rule = _PathBeneathAttr(rights, fd)
                    _call(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                          ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # required by restrict_self without CAP_SYS_ADMIN
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        filters = [refuse_other_abis,
                   (lambda: refuse_sockets(_INET)) if network else (lambda: refuse_syscalls(_SOCKETS, errno.EACCES)),
                   *([] if flock else [lambda: refuse_syscalls(_FLOCK, errno.ENOLCK)]),
                   lambda: refuse_syscalls(_IPC if leave_group else _joined(_IPC, _LEAVE_GROUP), errno.EPERM),
                   refuse_ioctls, lambda: refuse_others_limits(os.getpid())]
        if version < 6:  # Landlock scopes signals from ABI 6 on: below it, any process of the same user
            pid = os.getpid()
            filters.append(lambda: refuse_signals_to_others(pid))
            filters.append(refuse_file_owners)
        if version < 3:  # Landlock cannot refuse truncate(2) of a path yet: a shard the uid may write
            # nor an open(O_RDONLY | O_TRUNC), which truncates what it may read
            filters = [lambda: refuse_syscalls(_TRUNCATE, errno.EACCES), refuse_read_truncate, *filters]
        _seccomp(filters)
        _call(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return True


def with_interpreter(programs: Iterable[Path | str]) -> list[str]:
    """`programs` and the ELF interpreter each names (its PT_INTERP: the dynamic loader, which
    the kernel opens to run as Landlock's EXECUTE right checks): what `confine`'s `execute` needs
    to start them. A file that is not a 64-bit little-endian ELF adds nothing."""
    out: list[str] = []
    for prog in programs:
        out.append(str(prog))
        try:
            with open(prog, "rb") as f:
                head = f.read(64)
                if head[:6] != b"\x7fELF\x02\x01":  # ELFCLASS64, ELFDATA2LSB: x86_64 and aarch64
                    continue
                phoff, = struct.unpack_from("<Q", head, 32)
                phentsize, phnum = struct.unpack_from("<HH", head, 54)
                f.seek(phoff)
                table = f.read(phentsize * phnum)
                for i in range(phnum):
                    p_type, _flags, offset, _vaddr, _paddr, size = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                    if p_type == 3:  # PT_INTERP: a NUL-terminated path
                        f.seek(offset)
                        interp = f.read(size).split(b"\0")[0].decode()
                        if interp not in out and os.path.exists(interp):
                            out.append(interp)
        except (OSError, struct.error, UnicodeDecodeError):
            continue
    return out


class SecretInReach(ValueError):
    """A read rule `confine` was given would let confined code read the service's secrets."""


#: where an installed hoardfs keeps its configuration (hoard.toml, the database's password)
_CONFIG_DIRS = ("/etc/hoard",)


def secrets_near(paths: Iterable[Path | str]) -> list[str]:
    """What confined code must never read, found from the paths it is to be let read: the
    configuration directory (/etc/hoard), the file $HOARD_CONFIG names, and beside every
    directory above one of `paths` (or one of them) its `hoard.toml` and, where that directory is
    an SSD root (`state/` and `3C/` in it), its `state/` — the GUI's cookie key, the users and
    API tokens, the runs' state. Only what exists is named."""
    found = {d for d in _CONFIG_DIRS if os.path.isdir(d)}
    named = os.environ.get("HOARD_CONFIG")
    if named and os.path.isfile(named):
        found.add(os.path.abspath(named))
    seen: set[str] = set()
    for p in paths:
        a = os.path.abspath(p)
        while a not in seen:
            seen.add(a)
            if os.path.isfile(os.path.join(a, "hoard.toml")):
                found.add(os.path.join(a, "hoard.toml"))
            if os.path.isdir(os.path.join(a, "state")) and os.path.isdir(os.path.join(a, "3C")):
                found.add(os.path.join(a, "state"))
            a = os.path.dirname(a)
    return sorted(found)


def _refuse_secrets(paths: list[Path | str], own: list[Path | str] | None = None) -> None:
    """SecretInReach when a rule on one of `paths` would cover a secret (`secrets_near`): the
    path is the secret, a directory above it, or (a secret directory) below it. Landlock only
    allows: a rule on a parent of `state/` (a venv or an input root that holds the SSD) could
    not be narrowed afterwards. A path of `own` (`confine`'s) may lie below a secret directory."""
    mine = list(own or ())
    secrets = secrets_near([*paths, *mine])
    for p in [*paths, *mine]:
        a = os.path.realpath(p)
        below_ok = p in mine
        for secret in secrets:
            s = os.path.realpath(secret)
            if a == s or s.startswith(a.rstrip("/") + "/") or (not below_ok and os.path.isdir(s)
                                                               and a.startswith(s + "/")):
                raise SecretInReach(f"{p} would let confined code read {secret} (the service's configuration or "
                                    "secrets): keep the SSD, hoard.toml and /etc/hoard outside Python's installation "
                                    "and the actions' input and output directories")


def refuse_secrets(paths: Iterable[Path | str], own: Iterable[Path | str] = ()) -> None:
    """SecretInReach when a rule on one of `paths` would let confined code read the service's
    secrets (`secrets_near`, found from `own` too): what `confine` checks, for a caller that
    names the rules first."""
    _refuse_secrets(list(paths), list(own))


def _joined(*tables: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {m: tuple(nr for t in tables for nr in t.get(m, ())) for m in _AUDIT_ARCH}


#: why this process's seccomp filters could not be installed (None: they were, or none was
#: tried): `confine` then confines with Landlock alone, and `status` says so
seccomp_missing: tuple[str, str] | None = None

#: what to do about each reason seccomp cannot be used
_NEXT_SECCOMP = {
    "kernel": "boot a kernel built with CONFIG_SECCOMP_FILTER=y (Debian 12's linux-image-amd64 is)",
    "refused": ("let hoard's processes call prctl(2) and seccomp(2): a container's seccomp profile or a "
                "SystemCallFilter= set on hoard's units refuses them"),
    "arch": "run hoardfs on x86_64 or aarch64 (the machines whose system call numbers it knows)",
}


def _seccomp(filters: list[Callable[[], bool]]) -> None:
    """Install `filters` (each a seccomp filter, False where this machine has no numbers for it);
    where one cannot be, the rest are not tried and `seccomp_missing` says why — the caller
    goes on with Landlock alone, as `status` reports (every batch failing would leave the
    ingest down for a hole `hoard health` can name)."""
    global seccomp_missing
    for install in filters:
        try:
            if not install():
                seccomp_missing = (f"no seccomp filter is known for this machine ({os.uname().machine})",
                                   _NEXT_SECCOMP["arch"])
                return
        except OSError as e:
            why = "kernel" if e.errno == errno.EINVAL else "refused"
            seccomp_missing = (f"this kernel does not install seccomp filters ({os.strerror(e.errno or 0)})"
                               if why == "kernel" else f"seccomp filters are refused here ({os.strerror(e.errno or 0)})",
                               _NEXT_SECCOMP[why])
            return


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc (a bare chroot): Python's own count, which misses a C library's pool
        return threading.active_count()


#: seccomp_data.arch and the number of truncate(2) on the architectures hoardfs runs on
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_TRUNCATE: dict[str, tuple[int, ...]] = {"x86_64": (76,), "aarch64": (45,)}
#: socket(2), and io_uring_setup(2) (its SOCKET/CONNECT operations do not pass through seccomp)
_SOCKETS: dict[str, tuple[int, ...]] = {"x86_64": (41, 425), "aarch64": (198, 425)}
#: the socket families a worker with `network` may open: AF_INET and AF_INET6 (the same numbers
#: on every architecture); AF_UNIX stays refused — Landlock cannot limit which named socket it
#: reaches, and the service's Redis and PostgreSQL listen on such sockets
_INET = (2, 10)
#: flock(2): it needs only a descriptor open to read, and a built-in (which reads anywhere) held
#: the service's own locks (`<ssd>/locks/`: the store, the zones' reservations) while it ran
_FLOCK: dict[str, tuple[int, ...]] = {"x86_64": (73,), "aarch64": (32,)}
#: what a process that changes nothing has no use for and Landlock does not cover: a file's
#: mode, owner, times and extended attributes (chmod 000 of a shard, of the index), and
#: signals (SIGKILL to the mount or a worker of the same user; Landlock scopes them from ABI 6)
_METADATA: dict[str, tuple[int, ...]] = {
    "x86_64": (90, 91, 268, 452, 92, 93, 94, 260, 132, 235, 261, 280, 188, 189, 190, 197, 198, 199, 463, 466),
    "aarch64": (52, 53, 452, 54, 55, 88, 5, 6, 7, 14, 15, 16, 463, 466)}
_SIGNALS: dict[str, tuple[int, ...]] = {"x86_64": (62, 200, 234, 129, 297, 424),
                                        "aarch64": (129, 130, 131, 138, 240, 424)}
#: setpgid(2) and setsid(2): the parent kills a reader's whole process group when it ends
#: (`hoardfs.base.proc.end_group`), and a process the reader forked that left the group outlived it
_LEAVE_GROUP: dict[str, tuple[int, ...]] = {"x86_64": (109, 112), "aarch64": (154, 157)}
#: System V IPC (shared memory, semaphores, message queues: every call, by id too — shmat(2) of a
#: segment another process made needs no shmget), POSIX message queues and the kernel's keyrings
#: (add_key, request_key, keyctl): what a process can leave behind for another user to read, with
#: no path Landlock could see — a built-in taken over put the GUI's cookie key into a 0666
#: segment that `nobody` read. (The multiplexed ipc(2) exists only in other ABIs: ENOSYS there.)
_IPC: dict[str, tuple[int, ...]] = {
    "x86_64": (29, 30, 31, 67, 64, 65, 66, 220, 68, 69, 70, 71, 240, 241, 242, 243, 244, 245, 248, 249, 250),
    "aarch64": (194, 195, 196, 197, 190, 191, 192, 193, 186, 187, 188, 189, 180, 181, 182, 183, 184, 185,
                217, 218, 219)}
#: the signals a process sends to one target it names by the first argument — kill(2) (0: its
#: own group), tkill(2), tgkill(2), rt_sigqueueinfo(2), rt_tgsigqueueinfo(2) — and
#: pidfd_send_signal(2), whose target a filter cannot see
_PIDFD_SEND_SIGNAL = 424  # the same number on every architecture
_SIGNAL_TARGET: dict[str, dict[int, bool]] = {  # number → whether 0 (its own process group) is a target it may name
    "x86_64": {62: True, 200: False, 234: False, 129: False, 297: False, 424: False},
    "aarch64": {129: True, 130: False, 131: False, 138: False, 240: False, 424: False}}
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW, _RET_ERRNO, _LD_W_ABS, _JEQ_K, _RET_K = 0x7FFF0000, 0x00050000, 0x20, 0x15, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def refuse_syscalls(numbers: dict[str, tuple[int, ...]], err: int) -> bool:
    """A seccomp filter, for this thread and what it starts, for good: the system calls
    `numbers[machine]` fail with `err`, every other call runs (another ABI's calls — i386
    compatibility — pass it: `confine` refuses those first, `refuse_other_abis`). False on an
    architecture `numbers` does not name. The caller must have set no_new_privs (`confine` has)."""
    machine = os.uname().machine
    arch, nrs = _AUDIT_ARCH.get(machine), numbers.get(machine)
    if arch is None or not nrs:
        return False
    n = len(nrs)
    code = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, n + 1, arch), (_LD_W_ABS, 0, 0, 0)]
    code += [(_JEQ_K, n - i, 0, nr) for i, nr in enumerate(nrs)]  # equal: to the ERRNO return, past ALLOW
    code += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | err)]
    _install(code)
    return True


#: the x32 ABI's bit in a system call number: its calls reach a filter as x86_64's, numbered apart
_X32_BIT = 0x40000000
_JGE_K = 0x35


def _dispatch(arch: int, calls: Iterable[int]) -> list[tuple[int, int | str, int | str, int | str] | str]:
    """The head of a filter that looks at some calls' arguments: another architecture is
    allowed (its calls are refused by the filters that name them), each call in `calls` jumps
    to its block (labelled `call<nr>`), every other call is allowed. A BPF jump goes forward
    only: each call's block comes after this head, ALLOW and EPERM last."""
    prog: list[tuple[int, int | str, int | str, int | str] | str] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, "allow", arch), (_LD_W_ABS, 0, 0, 0)]
    prog += [(_JEQ_K, f"call{nr}", 0, nr) for nr in calls]
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    return prog


def refuse_signals_to_others(pid: int) -> bool:
    """A seccomp filter, for this thread and what it starts, for good: a signal to any process
    but `pid` (this one: raise(3), abort(3), Python's own os.kill(os.getpid(), …)) or its own
    process group (kill(0, …)) fails with EPERM — below Landlock ABI 6, which scopes signals
    itself, a confined process could otherwise signal every process of its user (the mount, the
    GUI, the service's workers). What it starts inherits the filter with the same `pid`, so a
    program it runs cannot signal even itself. False on an architecture `_SIGNAL_TARGET` does not
    name. The caller must have set no_new_privs."""
    machine = os.uname().machine
    arch, calls = _AUDIT_ARCH.get(machine), _SIGNAL_TARGET.get(machine)
    if arch is None or not calls:
        return False
    prog = _dispatch(arch, calls)
    for nr, group in calls.items():
        targets = [] if nr == _PIDFD_SEND_SIGNAL else [pid, 0] if group else [pid]
        prog += [f"call{nr}", (_LD_W_ABS, 0, 0, 16)]  # the first argument's low 32 bits (a pid_t)
        prog += [(_JEQ_K, "allow", 0, t) for t in targets]
        prog.append((_JA, 0, 0, "eperm"))
    prog += ["allow", (_RET_K, 0, 0, _RET_ALLOW), "eperm", (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    _install(_assemble(prog))
    return True


#: fcntl(2)'s number, and the commands that make another process a file's owner (F_SETOWN,
#: F_SETOWN_EX): the kernel then signals it — SIGIO, whose default action ends a process, or the
#: signal F_SETSIG names — on the file's input, a signal no kill(2) filter sees
_FCNTL = {"x86_64": 72, "aarch64": 25}
_SET_OWNER = (8, 15)


def refuse_file_owners() -> bool:
    """A seccomp filter, for this thread and what it starts, for good: fcntl(F_SETOWN) and
    fcntl(F_SETOWN_EX) fail with EPERM — below Landlock ABI 6 (which scopes these signals
    itself) a confined process could otherwise have the kernel signal any process of its user
    through a pipe it owns (`refuse_signals_to_others` covers the calls that name a target).
    False on an architecture `_FCNTL` does not name. The caller must have set no_new_privs."""
    machine = os.uname().machine
    arch, nr = _AUDIT_ARCH.get(machine), _FCNTL.get(machine)
    if arch is None or nr is None:
        return False
    prog: list[tuple[int, int | str, int | str, int | str] | str] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, "allow", arch), (_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, "allow", nr),
        (_LD_W_ABS, 0, 0, 24)]  # the second argument's low 32 bits: the command
    prog += [(_JEQ_K, "eperm", 0, cmd) for cmd in _SET_OWNER]
    prog += ["allow", (_RET_K, 0, 0, _RET_ALLOW), "eperm", (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    _install(_assemble(prog))
    return True


#: the calls that change another process's limits, priority or processors, which Landlock does
#: not scope at any ABI (it scopes ptrace and signals only): number → (the argument that names
#: the process, the value the argument before it must have — its `which`: a process, never a
#: group or a user — or None). prlimit64, sched_setaffinity, sched_setparam, sched_setscheduler,
#: sched_setattr, setpriority, ioprio_set
_OTHERS_LIMITS: dict[str, dict[int, tuple[int, int | None]]] = {
    "x86_64": {302: (0, None), 203: (0, None), 142: (0, None), 144: (0, None), 314: (0, None), 141: (1, 0),
               251: (1, 1)},
    "aarch64": {261: (0, None), 122: (0, None), 118: (0, None), 119: (0, None), 274: (0, None), 140: (1, 0),
                30: (1, 1)}}


def refuse_others_limits(pid: int) -> bool:
    """A seccomp filter, for this thread and what it starts, for good: changing the resource
    limits, priority, I/O priority, scheduling or processors of any process but `pid` (this one)
    or the caller itself (0) fails with EPERM — a confined process could otherwise set the hard
    RLIMIT_FSIZE of the mount or the GUI to 0 (their next write ends them with SIGXFSZ), their
    RLIMIT_NOFILE to 3, renice every process of its user (setpriority(PRIO_USER)) or pin them to
    one processor. False on an architecture `_OTHERS_LIMITS` does not name. The caller must have
    set no_new_privs."""
    machine = os.uname().machine
    arch, calls = _AUDIT_ARCH.get(machine), _OTHERS_LIMITS.get(machine)
    if arch is None or not calls:
        return False
    prog = _dispatch(arch, calls)
    for nr, (arg, which) in calls.items():
        prog.append(f"call{nr}")
        if which is not None:  # its `which` (the argument before): a single process, or refused
            prog += [(_LD_W_ABS, 0, 0, 16 + 8 * (arg - 1)), (_JEQ_K, 0, "eperm", which)]
        prog.append((_LD_W_ABS, 0, 0, 16 + 8 * arg))  # the low 32 bits of the pid
        prog += [(_JEQ_K, "allow", 0, t) for t in (0, pid)]
        prog.append((_JA, 0, 0, "eperm"))
    prog += ["allow", (_RET_K, 0, 0, _RET_ALLOW), "eperm", (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    _install(_assemble(prog))
    return True


def _assemble(prog: list[tuple[int, int | str, int | str, int | str] | str]) -> list[tuple[int, int, int, int]]:
    """BPF instructions from `prog`, where a string is a label (the next instruction's) and a jump
    may name one: jt and jf of a conditional jump, k of `_JA`, turned into forward offsets."""
    at, labels = 0, {}
    for item in prog:
        if isinstance(item, str):
            labels[item] = at
        else:
            at += 1
    code: list[tuple[int, int, int, int]] = []
    for item in prog:
        if isinstance(item, str):
            continue
        op, *args = item
        here = len(code)
        jt, jf, k = (labels[a] - here - 1 if isinstance(a, str) else a for a in args)
        if not (0 <= jt <= 255 and 0 <= jf <= 255 and (op != _JA or k >= 0)):
            raise ValueError("seccomp filter: a jump backwards or past 255 instructions")  # a bug here
        code.append((op, jt, jf, k))
    return code


def refuse_other_abis() -> bool:
    """A seccomp filter, for this thread and what it starts, for good: a system call made through
    another ABI than this machine's own — i386's (`int 0x80` on x86_64), arm32's (on aarch64),
    x32's — fails with ENOSYS. Their numbers are not this machine's, so without it each filter
    here (`refuse_syscalls`) is passed by the same call made that way: setsid(2) is 66 on i386,
    socketcall(2) reaches a socket. Nothing hoardfs confines uses them (it starts no program).
    False on an architecture `_AUDIT_ARCH` does not name. The caller must have set no_new_privs."""
    arch = _AUDIT_ARCH.get(os.uname().machine)
    if arch is None:
        return False
    _install([(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, 3, arch),  # another ABI: to ENOSYS
              (_LD_W_ABS, 0, 0, 0), (_JGE_K, 1, 0, _X32_BIT),  # x32: to ENOSYS
              (_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)])
    return True


#: open(2) (x86_64 only) and openat(2) with the argument index of their flags; openat2(2)
_OPENS: dict[str, tuple[tuple[int, int], ...]] = {"x86_64": ((2, 1), (257, 2)), "aarch64": ((56, 2),)}
_OPENAT2 = 437
_O_TRUNC, _O_ACCMODE = 0o1000, 3  # the same on x86_64 and aarch64
_ALU_AND_K, _JA = 0x54, 0x05


def refuse_read_truncate() -> bool:
    """A seccomp filter, for this thread and what it starts, for good: an open that truncates
    but asks only to read (O_RDONLY | O_TRUNC: Linux truncates a file the uid may write, and
    Landlock below ABI 3 checks only the read right) fails with EACCES; openat2(2), whose
    flags a filter cannot see, with ENOSYS (the C library and Python do not use it). False on
    an architecture `_OPENS` does not name. The caller must have set no_new_privs."""
    machine = os.uname().machine
    arch, opens = _AUDIT_ARCH.get(machine), _OPENS.get(machine)
    if arch is None or not opens:
        return False
    # layout: [0] arch [1] jeq arch [2] nr, one jeq per open, [k] jeq openat2, ALLOW, one load+jump per
    # open, the check (and, jeq), ALLOW, EACCES, ENOSYS
    n = len(opens)
    allow = 4 + n  # index of the first ALLOW
    loads = allow + 1  # each open's load is 2 instructions (load, jump to the check)
    check = loads + 2 * n
    eacces, enosys = check + 3, check + 4  # check + 2: ALLOW
    code: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, allow - 2, arch), (_LD_W_ABS, 0, 0, 0)]
    for i, (nr, _arg) in enumerate(opens):
        code.append((_JEQ_K, loads + 2 * i - (3 + i) - 1, 0, nr))
    code.append((_JEQ_K, enosys - (3 + n) - 1, 0, _OPENAT2))
    code.append((_RET_K, 0, 0, _RET_ALLOW))
    for i, (_nr, arg) in enumerate(opens):
        at = loads + 2 * i
        code += [(_LD_W_ABS, 0, 0, 16 + 8 * arg),  # the low 32 bits of the flags (little-endian)
                 (_JA, 0, 0, check - (at + 1) - 1)]
    code += [(_ALU_AND_K, 0, 0, _O_TRUNC | _O_ACCMODE), (_JEQ_K, eacces - (check + 1) - 1, 0, _O_TRUNC),
             (_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.EACCES),
             (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    assert len(code) == enosys + 1
    _install(code)
    return True


#: ioctl(2)'s number, and the requests refused (`refuse_ioctls`)
_IOCTL = {"x86_64": 16, "aarch64": 29}
#: pushing input into a terminal (TIOCSTI, TIOCLINUX's paste): a descriptor a confined process
#: inherited is not Landlock's, and a GUI started from a shell hands its decoder that terminal
_TERMINAL_INPUT = (0x5412, 0x541C)
#: a file's attribute flags (FS_IOC_SETFLAGS, its 32-bit twin, FS_IOC_FSSETXATTR): on a file
#: opened only to read, which Landlock allows — root made a shard or the index immutable
#: (chattr +i), another user may set sync or noatime on its own files
_FILE_FLAGS = (0x40086602, 0x40046602, 0x401C5820)


def refuse_ioctls() -> bool:
    """A seccomp filter, for this thread and what it starts, for good: the ioctl(2) requests
    `_TERMINAL_INPUT` and `_FILE_FLAGS` fail with EPERM (a process with CAP_SYS_ADMIN — root —
    may otherwise push keystrokes into any terminal it holds, another only into its controlling
    one). False on an architecture `_IOCTL` does not name. The caller must have set no_new_privs."""
    return refuse_requests(_IOCTL, 1, _TERMINAL_INPUT + _FILE_FLAGS, errno.EPERM)


def refuse_requests(numbers: dict[str, int], arg: int, values: tuple[int, ...], err: int) -> bool:
    """A seccomp filter, for this thread and what it starts, for good: the system call
    `numbers[machine]` fails with `err` when the low 32 bits of its argument `arg` (0-based) are
    one of `values`; every other call runs. False on an architecture `numbers` does not name.
    The caller must have set no_new_privs."""
    machine = os.uname().machine
    arch, nr = _AUDIT_ARCH.get(machine), numbers.get(machine)
    if arch is None or nr is None:
        return False
    allow = 5 + len(values)
    code = [(_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, allow - 2, arch), (_LD_W_ABS, 0, 0, 0), (_JEQ_K, 0, allow - 4, nr),
            (_LD_W_ABS, 0, 0, 16 + 8 * arg)]  # the argument's low 32 bits (little-endian)
    code += [(_JEQ_K, allow - (5 + i), 0, v) for i, v in enumerate(values)]  # equal: past ALLOW
    code += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | err)]
    _install(code)
    return True


def refuse_sockets(families: tuple[int, ...]) -> bool:
    """A seccomp filter, for this thread and what it starts, for good: socket(2) of a family not
    in `families` fails with EACCES, io_uring_setup(2) always (its socket operations do not pass
    through seccomp); socketpair(2), which makes a connected pair and reaches nothing, runs.
    False on an architecture `_SOCKETS` does not name. The caller must have set no_new_privs."""
    machine = os.uname().machine
    arch, calls = _AUDIT_ARCH.get(machine), _SOCKETS.get(machine)
    if arch is None or not calls:
        return False
    socket_nr, *others = calls
    prog: list[tuple[int, int | str, int | str, int | str] | str] = [
        (_LD_W_ABS, 0, 0, 4), (_JEQ_K, 0, "allow", arch), (_LD_W_ABS, 0, 0, 0)]
    prog += [(_JEQ_K, "eacces", 0, nr) for nr in others]
    prog += [(_JEQ_K, 0, "allow", socket_nr), (_LD_W_ABS, 0, 0, 16)]  # socket's family: its first argument
    prog += [(_JEQ_K, "allow", 0, f) for f in families]
    prog += ["eacces", (_RET_K, 0, 0, _RET_ERRNO | errno.EACCES), "allow", (_RET_K, 0, 0, _RET_ALLOW)]
    _install(_assemble(prog))
    return True


def _install(code: list[tuple[int, int, int, int]]) -> None:
    insns = (_SockFilter * len(code))(*[_SockFilter(*c) for c in code])
    prog = _SockFprog(len(code), insns)
    if _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


#: what the dynamic loader reads besides the libraries (a file rule: /etc itself stays closed)
_LOADER_FILES = ("/etc/ld.so.cache",)
_SYSTEM_LIBS = ("/usr/lib", "/lib", "/usr/lib64", "/lib64")


def python_runtime() -> list[str]:
    """What Python needs to read once confined: the standard library (and its extension
    modules), site-packages, every top-level package already imported (a source checkout's
    `adapters/`, `fsd/` — not the checkout itself, which may hold hoard.toml), the system's
    shared libraries and the loader's cache."""
    paths = {sysconfig.get_path(n) for n in ("stdlib", "platstdlib", "purelib", "platlib")}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if "." not in name and f:
            p = Path(f)
            paths.add(str(p.parent if p.name == "__init__.py" else p))
    paths.update(_SYSTEM_LIBS + _LOADER_FILES)
    return sorted(p for p in paths if p and os.path.exists(p))


#: the variables a confined child keeps (`child_env`)
_CHILD_ENV = ("PATH", "PYTHONPATH", "PYTHONIOENCODING", "PYTHONUTF8", "LANG", "LANGUAGE", "TZ")


def child_env() -> dict[str, str]:
    """The environment for a child that confines itself: what Python and the C library use
    (PATH, PYTHONPATH, the locale, TZ), none of the service's own (HOARD_DATABASE_URL may
    carry the database's password, which a parser taken over would put in a title)."""
    return {k: v for k, v in os.environ.items() if k in _CHILD_ENV or k.startswith("LC_")}


def limit_memory(mb: int) -> None:
    """This process (and what it starts) gets at most `mb` MB of address space (RLIMIT_AS), for
    good: an allocation beyond fails (Python: MemoryError) instead of taking the server's
    memory — the hostile input a confined child reads may expand (a JSON bomb, an image bomb)."""
    limit = mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def confine_reader(read: Iterable[Path | str] = ()) -> bool:
    """A decoder of hostile bytes: it writes nothing, starts no program and reads only below
    `read` and `python_runtime()` — import what it needs first. Nor does it change a file's
    mode, owner, times or attributes, send a signal, or leave its process group — nor does what
    it forks (`_METADATA`, `_SIGNALS`, `_LEAVE_GROUP`)."""
    if not confine(read=[*python_runtime(), *read], write=[], write_files=()):
        return False
    if refuse_metadata():
        _seccomp([lambda: refuse_syscalls(_SIGNALS, errno.EPERM)])
    return True


def refuse_metadata() -> bool:
    """After `confine`: no file's mode, owner, times or extended attributes change any more,
    its own or another's (Landlock does not cover them; `_METADATA`) — EPERM. False, with
    nothing done, where seccomp cannot be used here (`seccomp_missing`)."""
    if seccomp_missing is None:
        _seccomp([lambda: refuse_syscalls(_METADATA, errno.EPERM)])
    return seccomp_missing is None


def _probe_child() -> dict[str, object]:
    """What a confined child of this process gets: `confine_reader` run in one (the same
    kernel, the same system-call filters around it, the same code as the parser's)."""
    confined = confine_reader()
    _, why, next_step = _probe()
    return {"landlock": confined, "seccomp": seccomp_missing is None and confined,
            "why": seccomp_missing if confined else (why or "Landlock refused", next_step or _NEXT["built"])}


if __name__ == "__main__":  # `status`'s probe
    print(json.dumps(_probe_child()))
