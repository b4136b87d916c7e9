"""Which jobs this server queued: the key that signs every job the server's own code queues, and
the record that lets each signed job run to its end once (docs/security.md, "Workers and Redis").

A host that serves the `remote` queue (docs/scale-out.md) reaches the server's Redis with its
password, and with it every queue: with the allow-list of hoardfs.jobs.guard alone it could queue a
backup, a `rebuild`, a `gc` or an export on the server. So every job the server's own code paths queue —
the CLI, the GUI, the timers, the jobs themselves, through `hoardfs.jobs.queues.rq_queue(…, key=)` — is
signed with a key only the server holds, and a worker of the server runs a job that is not one
of hoardfs.jobs.guard.HOST_JOBS only when its signature checks (`JobKey.check`):

- the key: `<ssd.root>/state/jobs/key`, 0600, the service's own (made by `hoard init` on the
  store's server, or by the first process that signs); a remote host has its own SSD and never
  this file;
- the signature (the job's meta `hoard_signature`): HMAC-SHA256 over the job's id, the queue it
  was queued on, a random nonce, when it was signed, and the job's `data` exactly as RQ stores
  it (the function, its args and kwargs) — a job whose function, arguments or id were changed,
  or that was moved onto another queue, does not check;
- a copy: a host sees every job's hash, so it can copy a signed one. A signature is good for
  MAX_AGE_S, and each one runs to its end once: the worker that takes it holds a record of its
  nonce (`state/jobs/ran/<day signed>/<nonce>`) flocked while it runs, marked when the job
  returns. A copy of a job that ran to its end is not run, nor one of a job a live worker runs
  now; a job that failed, or whose worker died (the reaper queues it again), runs again — as
  RQ's requeue of a failed job does; every hoardfs job resumes from its own state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from rq.job import Job

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import create_new, open_dir, open_regular, writer_tmp

#: the job meta field that holds the signature
META = "hoard_signature"
#: the version of what a signature covers (`_message`)
VERSION = 1
#: how long a signature is good for: a job waiting longer (no worker served its queue) is
#: refused, and queued again by the command that made it; the records of the nonces that ran
#: are kept as long. RQ keeps a failed hoardfs job as long (failure_ttl): what can be requeued
#: from rq-dashboard is still signed
MAX_AGE_S = 30 * 86400
#: what the worker's log line ends with when a job is refused for its signature
TAIL = "only the server queues server jobs (docs/security.md)"
#: the length of the key, in bytes (written as hex)
KEY_BYTES = 32


class JobKeyError(HoardError):
    exit_code = ExitCode.USAGE


class JobKey:
    """The signing key and the run records of the store whose SSD state directory is `state`
    (`<ssd.root>/state/jobs`)."""

    def __init__(self, state: Path) -> None:
        self.dir = state
        self.path = state / "key"
        self._pruned = 0.0

    # -- the key -----------------------------------------------------------------------------

    def secret(self, make: bool = False) -> bytes | None:
        """The key; None when there is none and `make` is false (a worker: it checks, never
        makes one). JobKeyError (one line) when it cannot be read or is not the service's alone."""
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            if not make:
                return None
            try:
                self._make()
                fd = open_regular(self.path)
            except OSError as e:
                raise JobKeyError(f"{self.path}: the key that signs this server's jobs cannot be made "
                                  f"({e.strerror or e}); run `hoard init` as the service's account") from None
        except OSError as e:
            raise JobKeyError(f"{self.path}: {e.strerror or e}: the key that signs this server's jobs must be a "
                              "file of the service's own, mode 0600 (`hoard init` makes it)") from None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise JobKeyError(f"{self.path} has mode {mode:04o}: the key that signs this server's jobs must be "
                                  f"its owner's alone; `chmod 600 {self.path}`")
            data = os.read(fd, 4 * KEY_BYTES).strip()
        finally:
            os.close(fd)
        if len(data) < 2 * KEY_BYTES:
            raise JobKeyError(f"{self.path} holds no key (empty or cut short); remove it — the next command that "
                              "queues a job makes a new one — and queue again what waits")
        return data

    def _make(self) -> None:
        """A new key, made whole before it gets its name (a reader never sees half of one); of two
        processes making it at once, the first name wins and both use that key. Made by root
        (`hoard disks smart` announcing a disk), it is the service's: the owner of `state/`."""
        _mkdir_owned(self.dir)
        dfd = open_dir(self.dir)
        try:
            tmp = writer_tmp(self.path).name
            with create_new(tmp, 0o600, dir_fd=dfd) as f:
                f.write(secrets.token_hex(KEY_BYTES).encode() + b"\n")
                f.flush()
                _give_to_owner_of(f.fileno(), dfd)
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                pass  # another process made it first: that one is the key
            finally:
                os.unlink(tmp, dir_fd=dfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- signing and checking ----------------------------------------------------------------

    def sign(self, job: Job) -> None:
        """Sign `job` (just made by a queue: its id, queue and data final) in its meta."""
        secret = self.secret(make=True)
        assert secret is not None
        nonce, at = secrets.token_hex(16), int(time.time())
        job.meta[META] = {"v": VERSION, "nonce": nonce, "at": at,
                          "mac": _mac(secret, job.id, job.origin, nonce, at, job.data)}

    def check(self, job: Job, queue: str, now: float | None = None, max_age_s: float | None = MAX_AGE_S) -> str:
        """Why `job`, taken from `queue`, is not a job this server queued, or "" when it is:
        its signature made with this key over its id, queue and data, made within `max_age_s`
        (None: any age — a run kept to be retried, whose signed data is queued again, signed anew)."""
        sig = job.meta.get(META) if isinstance(job.meta, dict) else None
        if sig is None:
            return "not signed by this server's key"
        if not (isinstance(sig, dict) and sig.get("v") == VERSION and isinstance(sig.get("nonce"), str)
                and len(sig["nonce"]) == 32 and all(c in "0123456789abcdef" for c in sig["nonce"])
                and isinstance(sig.get("at"), int) and not isinstance(sig["at"], bool)
                and isinstance(sig.get("mac"), str)):
            return "not signed by this server's key (its signature is malformed)"
        try:
            secret = self.secret()
        except JobKeyError as e:
            return f"not signed by this server's key (this worker's key: {e.message})"
        if secret is None:
            return f"not signed by this server's key (this worker has none: {self.path})"
        mac = _mac(secret, job.id, job.origin, sig["nonce"], sig["at"], job.data)
        if not hmac.compare_digest(mac, sig["mac"]):
            return "not signed by this server's key"
        if job.origin != queue:
            return f"signed for queue {job.origin!r}, taken from {queue!r}"
        age = (time.time() if now is None else now) - sig["at"]
        if max_age_s is not None and age > max_age_s:
            return (f"its signature is {age / 86400:.0f} days old (good for {MAX_AGE_S // 86400}): queue it again "
                    "with the command that made it (`hoard ingest --resume`, `hoard action resume`, the GUI's Retry)")
        return ""

    # -- each signed job runs to its end once --------------------------------------------------

    def take(self, job: Job) -> tuple[str, int | None]:
        """Take the run of `job` (checked: `check`): ("", a descriptor of its record, flocked —
        hold it while the job runs, `ran` once it returned, close it after), or (why not, None):
        a copy of a job that ran to its end, or of one a live worker runs now. JobKeyError (one
        line) when the record cannot be made: the job is not run unrecorded."""
        sig = job.meta[META]
        day = dt.datetime.fromtimestamp(sig["at"], dt.UTC).strftime("%Y-%m-%d")
        self._prune()
        where = self.dir / "ran" / day
        try:
            _mkdir_owned(where)
            dfd = open_dir(where)
            try:
                fd = os.open(sig["nonce"], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    _give_to_owner_of(fd, dfd)
                except BaseException:
                    os.close(fd)
                    raise
            finally:
                os.close(dfd)
        except OSError as e:
            raise JobKeyError(f"its run cannot be recorded in {where} ({e.strerror or e}); the directory must be the "
                              "service's own") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return f"a copy of job {job.id}, which a worker of this server runs now (signed {_when(sig['at'])})", None
        if os.fstat(fd).st_size > 0:
            os.close(fd)
            return (f"a copy of job {job.id}, which ran to its end (signed {_when(sig['at'])}); a job runs again only "
                    "when the server queues it again"), None
        return "", fd

    @staticmethod
    def ran(fd: int) -> None:
        """The job whose record `fd` (`take`) holds returned: a copy of it never runs. Its length
        says so (a sparse byte: no block is written for it)."""
        os.ftruncate(fd, 1)

    def _prune(self) -> None:
        """The records of days whose signatures are no longer good deleted (at most once an hour)."""
        if time.monotonic() - self._pruned < 3600 and self._pruned:
            return
        self._pruned = time.monotonic()
        oldest = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MAX_AGE_S + 86400)).strftime("%Y-%m-%d")
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir / "ran"):
                if entry.is_dir(follow_symlinks=False) and entry.name < oldest:
                    shutil.rmtree(entry.path, ignore_errors=True)


_KEYS: dict[Path, JobKey] = {}


def of(cfg: Any) -> JobKey:
    """The JobKey of the store `cfg` (its Settings) names: `<ssd.root>/state/jobs`."""
    state = Path(cfg.ssd.root) / "state" / "jobs"
    if state not in _KEYS:
        _KEYS[state] = JobKey(state)
    return _KEYS[state]


def _mac(secret: bytes, job_id: str, queue: str, nonce: str, at: int, data: bytes) -> str:
    """HMAC-SHA256 of what a signature covers: one JSON line (no newline can be inside it) of
    the version, the job's id, its queue, the nonce and the time, then RQ's bytes of the job."""
    head = json.dumps([VERSION, job_id, queue, nonce, at], separators=(",", ":")).encode()
    return hmac.new(secret, b"hoardfs job\n" + head + b"\n" + data, hashlib.sha256).hexdigest()


def _when(at: int) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _mkdir_owned(path: Path) -> None:
    """`path` a directory (0750; its parent made if missing): made by root inside the service's
    tree, it is given to the owner of its parent — the service's workers write records there."""
    if not path.parent.is_dir():
        _mkdir_owned(path.parent)
    try:
        os.mkdir(path, 0o750)
    except FileExistsError:
        return
    if os.geteuid() == 0:
        st = os.stat(path.parent)
        if st.st_uid != 0:
            with contextlib.suppress(OSError):
                os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _give_to_owner_of(fd: int, dir_fd: int) -> None:
    """The file at `fd`, made by root in a directory of the service's (`dir_fd`), given to the
    directory's owner; nothing otherwise."""
    if os.geteuid() != 0:
        return
    st = os.fstat(dir_fd)
    if st.st_uid != 0 and os.fstat(fd).st_uid == 0:
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EROFS):
                raise
