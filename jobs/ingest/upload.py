"""A batch sent over HTTP (`POST /api/v1/batches` of `hoard gui`, hoardfs.gui.api) into zone 3A, then
into UA_1 as `hoard ingest` takes it (`submit`): the HTTP side parses the request, this module
owns what lands on the SSD.

    up = Upload.begin(cfg, content_length, who)   # room checked in 3A, 3A/.tmp/<upload>/ made
    up.open_file(part, "a.jpg"); up.write(b"…"); up.close_file()   # each file streamed to disk
    st = up.finish(source, batch_id)              # fsynced, _READY, renamed to 3A/<batch>, submitted
    up.abort()                                    # (any failure) the temporary directory removed

Rules, and why:

* 3A must have room for the upload's size (its Content-Length) below its deny threshold before a
  byte is read, so a full 3A is refused at once (ZoneFull: 507) — but only what has arrived, and
  a step ahead of it (`_ahead`), is held (`hoardfs.fsd.outputs.zones.reserve(hold=…)`, the job outputs'
  own accounting, then `grow` as the bytes come). The sender sets the pace: held whole from
  the start, an upload declaring 2 GB and trickling at 2 KiB/s (above any sane rate floor)
  would hold all of it for the 11 days it takes, and every other upload would be 507 — a
  deadline that scales with the declared size only shortens that. Two uploads never both
  take the last room (each growth is checked under the zone's lock); one that finds it taken
  is 507 part way, nothing of it kept.
* One token holds at most `api.max_uploads_per_token` uploads at once, declaring at most
  `api.max_reserved_mb_per_token` together (429 past either, before a byte is read): what one
  scraper's token can claim of 3A is bounded whatever its uploads' pace. Counted in this
  process (`_claims`): one GUI process serves the endpoint.
* Files are written under `3A/.tmp/<upload>/` and the directory is renamed to `3A/<batch>/`
  only once every file is complete and fsynced and its `_READY` written: the ingest (its timer's
  `--ready` included) never sees a half-sent batch. A dropped connection or any refusal removes
  the temporary directory (`abort`); one a killed server left is removed by the next upload
  (`sweep`: its reservation's process is gone).
* `3A/.tmp` is the service's own (`hoard init` makes it 0750): an upload refuses it (503) unless
  it is a directory, not a link, of this service's that neither its group nor others may write
  (`hoardfs.base.modes.open_own_dir`, the job outputs' `<zone>/.tmp` rule) — a scraper that made it
  could swap an upload's directory for one holding a link `sub -> /anywhere`, and have the
  part `sub/x` written there as the service. Everything of an upload is reached from descriptors
  held from the start — `3A/.tmp`, the upload's directory (made with mkdirat), each
  sub-directory and file made and opened with openat, never following a link (`open_nofollow`)
  — and the directory is renamed into 3A through them, once it is checked to be still the one
  made (device and inode). `abort` and `sweep` remove through the held `3A/.tmp` (shutil.rmtree's
  descriptor walk: a link inside is removed, never followed).
* Names are checked with hoardfs.base.paths (`hostile_reason`, `long_name`) before anything is
  created, and files are created O_EXCL|O_NOFOLLOW inside the fresh directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import redis

from hoardfs.adapters import canonical_source
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, open_nofollow, same_inode
from hoardfs.base.modes import open_own_dir
from hoardfs.base.paths import MAX_NAME_BYTES, display, hostile_reason, long_name
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.outputs import zones
from hoardfs.jobs.ingest.signals import REASON_FILE, REJECTED_SIGNAL, submit
from hoardfs.jobs.ingest.state import BATCH_ID, SIGNAL, WORK, BatchState, load_state, names_work, state_dir
from hoardfs.jobs.queues import condition_line

log = logging.getLogger(__name__)

#: names a batch's top level keeps for hoardfs (the signal it writes itself, and what
#: `hoard ingest` sets aside beside it): an upload holding one is refused
RESERVED = frozenset({SIGNAL, REJECTED_SIGNAL, REASON_FILE})
CHUNK = 1 << 20
#: what a file (and a directory) takes at least on the SSD's file system, as the quota counts
#: it (allocated blocks): an upload of many small files takes far more than its bytes
BLOCK = 4096
#: how much more an upload's reservation grows by at once when its files take more than its
#: declared size (each file at least a block)
GROW = 64 * BLOCK
#: how far ahead of what has arrived an upload holds room in 3A (within its declared size): at
#: least AHEAD_MIN, a quarter of what has arrived up to AHEAD_MAX — a grow measures 3A under its
#: lock, so a 10 GiB upload grows ~40 times, while a trickling one holds AHEAD_MIN at most
AHEAD_MIN, AHEAD_MAX = 16 << 20, 256 << 20


@dataclass(frozen=True)
class Taken:
    """A batch taken: in 3A with its `_READY`, and submitted unless `warning` says why not."""

    batch: str
    state: BatchState | None
    warning: str | None
    files: int
    bytes: int


class UploadError(HoardError):
    """An upload refused: `status` is the HTTP status it is answered with, `part` the multipart
    part (1-based) it names, if any."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, status: int = 400, part: int | None = None, next_step: str | None = None) -> None:
        super().__init__(message)
        self.status, self.part, self.next_step = status, part, next_step


def written_error(e: OSError) -> UploadError:
    """What an upload that could not be written to 3A is answered: 507 for a full file system
    (the quota had room, the SSD did not), else 503 naming the error."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    return UploadError(f"zone 3A: cannot write {e.filename or 'the upload'} ({e.strerror or e})"
                       + ("; its file system is full though the quota had room: free space on it"
                          if full else "; look at the SSD (`hoard health`)") + ", then send the batch again",
                       status=507 if full else 503)


def refused_name(rel: str) -> str | None:
    """Why an uploaded file's name is refused, or None (the rules of a batch's own paths)."""
    why = hostile_reason(rel)
    if why is None and (part := long_name(rel)) is not None:
        why = f"a part of it is {len(part.encode('utf-8', 'surrogatepass'))} bytes long; at most {MAX_NAME_BYTES}"
    if why is None and rel.split("/")[0] in RESERVED:
        why = f"{rel.split('/')[0]} is a name hoardfs writes itself in a batch"
    return why


def new_batch_id(source: str) -> str:
    """`<source>-<UTC time>-<8 hex>`: unique without asking anyone, sorted by time in `ls 3A`."""
    return f"{source}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def check_batch_id(cfg: Settings, batch_id: str) -> None:
    """UploadError (400, 409) unless `batch_id` can name a new batch of 3A."""
    if not BATCH_ID.match(batch_id):
        raise UploadError(f"batch {display(batch_id)!r} is not a batch id: letters, digits, `.`, `_`, `-`, at most "
                          "128, starting with a letter or digit; send another, or none (the server makes one)")
    if names_work(batch_id):
        raise UploadError(f"batch {batch_id} ends in .{batch_id.rpartition('.')[2]}, the name of another batch's "
                          f"ingest work file (.{', .'.join(WORK)}); send another id, or none (the server makes one)")
    try:
        recorded = load_state(cfg, batch_id) is not None
    except (ValueError, TypeError, OSError, HoardError) as e:  # a damaged record is a used id all the same
        log.warning("ingest record of batch %s cannot be read: %s", batch_id, e)
        recorded = True
    if (cfg.ssd.zone_path("3A") / batch_id).exists() or recorded:
        raise UploadError(f"batch {batch_id} exists already (in 3A, or ingested before): a batch id is used once; "
                          "send the batch under a new id, or none (the server makes one)", status=409)


#: what a refused `3A/.tmp` tells to do (`_staging`)
STAGING_STEP = ("remove it and run `hoard init` on the server (it makes 3A/.tmp the service's own, 0750), then send "
                "the batch again")
#: what an upload tells to do when its own directory holds what it did not make: 3A/.tmp is
#: the service's own, so something besides the service writes there
INTRUDED = ("something besides this service writes in 3A/.tmp, which is the service's own: find what (`ls -la` it), "
            "then send the batch again; nothing of the upload was kept")
MiB = 1 << 20

#: each token's uploads under way, in this process: token name → {upload id: its declared
#: bytes} (`_claim`, `_unclaim`; `begin` runs in worker threads: `_claims_lock`)
_claims: dict[str, dict[str, int]] = {}
_claims_lock = threading.Lock()


def _claim(cfg: Settings, who: str, upload_id: str, nbytes: int) -> None:
    """Count an upload of `nbytes` against its token's caps (api.max_uploads_per_token,
    api.max_reserved_mb_per_token); UploadError 429 past one, nothing counted."""
    api = cfg.api
    with _claims_lock:
        mine = _claims.setdefault(who, {})
        held = sum(mine.values())
        if len(mine) >= api.max_uploads_per_token:
            why = (f"token {who} has {len(mine)} uploads under way, as many as api.max_uploads_per_token = "
                   f"{api.max_uploads_per_token}")
        elif held + nbytes > api.max_reserved_mb_per_token * MiB:
            why = (f"token {who}'s uploads under way declare {fmt_bytes(held)} and this one {fmt_bytes(nbytes)}, more "
                   f"than api.max_reserved_mb_per_token = {api.max_reserved_mb_per_token:g} MiB together")
        else:
            mine[upload_id] = nbytes
            return
        if not mine:
            del _claims[who]
    raise UploadError(f"{why}; nothing was read: send it again once one of them is done", status=429,
                      next_step="wait for this token's uploads under way to end, then send the batch again")


def _unclaim(who: str, upload_id: str) -> None:
    with _claims_lock:
        mine = _claims.get(who)
        if mine is not None:
            mine.pop(upload_id, None)
            if not mine:
                del _claims[who]


def _ahead(charged: int) -> int:
    """How much room an upload holds beyond the `charged` bytes it has written (AHEAD_MIN…)."""
    return max(AHEAD_MIN, min(charged // 4, AHEAD_MAX))


def _staging(cfg: Settings) -> tuple[int, int] | None:
    """(3A, 3A/.tmp) held open — `3A/.tmp` made if missing, refused (HoardError, one line naming
    it and STAGING_STEP) unless it is this service's own (`open_own_dir`); None when 3A is not
    there (the SSD not mounted: nothing is made)."""
    zpath = cfg.ssd.zone_path("3A")
    try:
        zone_fd = os.open(zpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return zone_fd, open_own_dir(zpath / zones.TMP, next_step=STAGING_STEP, parent_fd=zone_fd)
    except BaseException:
        os.close(zone_fd)
        raise


def _remove(dir_fd: int, name: str) -> None:
    """Remove the entry `name` of the directory `dir_fd`: a directory with what it holds
    (shutil.rmtree's descriptor walk: a link inside is removed, never followed), anything else
    unlinked. Gone already: nothing to do."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, ignore_errors=True, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


class Upload:
    """One upload on its way into 3A (see the module's docstring). Every refusal is an
    UploadError carrying its HTTP status: 400 a bad part, 409 a used batch id, 413 past a
    limit, 429 past its token's caps, 507 zone 3A full (its quota or its file system), 503 3A
    not there or its `.tmp` not the service's own."""

    def __init__(self, cfg: Settings, upload_id: str, nbytes: int, who: str = "") -> None:
        self.cfg, self.id, self.nbytes, self.who = cfg, upload_id, nbytes, who
        #: where it is written, as a path: what messages name (every step goes through the
        #: descriptors below, never through this path)
        self.dir = cfg.ssd.zone_path("3A") / zones.TMP / upload_id
        self.files: dict[str, int] = {}
        self.res: zones.Reservation | None = None
        self.charged = BLOCK  # what the files and directories written take on disk, as the quota counts it
        self._dirs: set[str] = set()
        self._fh: BinaryIO | None = None
        self._name = ""
        self._part = 0
        #: 3A, 3A/.tmp and the upload's own directory, held from `begin` until `finish` or `abort`
        self._zone_fd = self._tmp_fd = self._fd = -1
        self._ended = False

    @classmethod
    def begin(cls, cfg: Settings, nbytes: int, who: str) -> Upload:
        """Count the upload against its token's caps (429), check 3A has room for `nbytes` and
        hold the first of it, make the temporary directory; UploadError 507 when 3A cannot take
        them, 503 when 3A cannot be used (not there, its `.tmp` not the service's own, a
        damaged reservation file)."""
        up = cls(cfg, f"upload-{secrets.token_hex(8)}", nbytes, who)
        _claim(cfg, who, up.id, nbytes)
        try:
            up._begin()
        except BaseException:
            up.abort()
            raise
        return up

    def _begin(self) -> None:
        cfg = self.cfg
        try:
            held = _staging(cfg)
        except HoardError as e:  # 3A/.tmp not the service's own
            raise UploadError(e.message, status=503, next_step=STAGING_STEP) from None
        except OSError as e:
            raise written_error(e) from None
        if held is None:  # (nothing made, not even a lock file: the SSD may not be mounted)
            raise UploadError(f"zone 3A: {cfg.ssd.zone_path('3A')} does not exist — the SSD is not mounted, or not "
                              "initialised; nothing was written; mount it, or run `hoard init`", status=503)
        self._zone_fd, self._tmp_fd = held
        try:
            sweep(cfg, self._tmp_fd)
            self.res = zones.reserve(cfg, "3A", self.id, f"HTTP upload {self.id} of {self.who}", self.nbytes,
                                     next_step="send the batch again", hold=self.charged + _ahead(self.charged))
            os.mkdir(self.id, 0o750, dir_fd=self._tmp_fd)
            self._fd = os.open(self.id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=self._tmp_fd)
        except zones.ZoneFull as e:
            raise UploadError(e.message, status=507) from None
        except HoardError as e:  # a reservation file damaged
            raise UploadError(e.message, status=503) from None
        except OSError as e:
            raise written_error(e) from None

    def open_file(self, part: int, name: str) -> None:
        self.close_file()
        limits = self.cfg.api
        if len(self.files) >= limits.max_files:
            raise UploadError(f"part {part}: more than api.max_files = {limits.max_files} files in one upload; send "
                              "them in several batches", status=413, part=part)
        if why := refused_name(name):
            raise UploadError(f"part {part}: file name {display(name)!r} is refused: {why}; send the file under a "
                              "relative name inside the batch", part=part)
        new_dirs = {d for d in _parents(name)[1:] if d not in self._dirs}
        self._charge(part, BLOCK * len(new_dirs))  # (its blocks are charged as they are written)
        self._dirs |= new_dirs
        try:  # every directory on the way made and opened from the held upload directory, no link followed
            fd = open_nofollow(self._fd, name, create=0o640)
        except (FileExistsError, NotADirectoryError) as e:
            twice = isinstance(e, FileExistsError) and name in self.files
            raise UploadError(f"part {part}: file name {display(name)!r} " + (
                "comes twice in this upload; give each file its own name" if twice else
                "is both a file and a directory in this upload; rename one"), part=part) from None
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            log.warning("HTTP upload %s: a symbolic link at %s in its own directory; not followed", self.id,
                        display(str(e.filename)))
            raise UploadError(f"part {part}: {self.dir} holds a symbolic link {display(str(e.filename))!r} the upload "
                              f"did not make (never followed): {INTRUDED}", status=503, part=part,
                              next_step=INTRUDED) from None
        self._fh, self._name, self._part = open(fd, "wb"), name, part
        self.files[name] = 0

    def write(self, data: bytes) -> None:
        if self._fh is None:
            return
        size = self.files[self._name] + len(data)
        cap = int(self.cfg.api.max_file_mb * (1 << 20))
        if size > cap:
            raise UploadError(f"part {self._part}: file {display(self._name)!r} is larger than api.max_file_mb = "
                              f"{self.cfg.api.max_file_mb:g} MiB; split it or raise the limit", status=413,
                              part=self._part)
        self._charge(self._part, _blocks(size) - _blocks(self.files[self._name]))
        self._fh.write(data)
        self.files[self._name] = size

    def _charge(self, part: int, nbytes: int) -> None:
        """Count `nbytes` more on disk; past what is held, hold more: within the declared size a
        step ahead (`_ahead`), checked at 3A's deny threshold as `begin` checked the whole;
        past it (many small files: each takes a block) GROW more, up to 3A's emergency
        threshold — UploadError 507 when 3A cannot take them."""
        self.charged += nbytes
        if self.res is None or self.charged <= self.res.bytes:
            return
        declared = self.charged <= self.nbytes
        want = min(self.nbytes, self.charged + _ahead(self.charged)) if declared else self.charged + GROW
        try:
            self.res = zones.grow(self.cfg, self.res, want, limit="deny" if declared else "emergency")
        except zones.ZoneFull as e:
            why = ("zone 3A filled while the upload came (only what has arrived is held)" if declared else
                   f"the upload's files take more room in zone 3A than its size (each file takes at least {BLOCK} "
                   "bytes)")
            raise UploadError(f"part {part}: {why}: {e.message}", status=507, part=part) from None

    def close_file(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()

    def finish(self, source: str, batch_id: str | None) -> Taken:
        """The batch complete: its signal written, the directory renamed into 3A and submitted
        to UA_1 as `hoard ingest` submits it (`_submitted`). UploadError for an unknown source or
        a used batch id, 503 when the upload's directory is no longer the one it made."""
        self.close_file()
        if not self.files:
            raise UploadError("the upload holds no file: send `files` parts (each with its file name)")
        source = canonical_source(source, self.cfg.sources)
        batch_id = batch_id or new_batch_id(source)
        check_batch_id(self.cfg, batch_id)
        with open(open_nofollow(self._fd, SIGNAL, create=0o640), "wb") as fh:  # (a name no part may take)
            fh.write(f"{source}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
        for d in sorted({n for name in self.files for n in _parents(name)}, reverse=True):  # the top one last
            fd = open_nofollow(self._fd, f"{d}/." if d else ".")
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        mine, there = os.fstat(self._fd), _lstat(self._tmp_fd, self.id)
        if not same_inode(mine, there):
            log.warning("HTTP upload %s: %s is no longer the directory it made; nothing put in 3A", self.id, self.dir)
            raise UploadError(f"{self.dir} is no longer the directory this upload made (moved, or replaced): "
                              f"{INTRUDED}", status=503, next_step=INTRUDED)
        final = self.cfg.ssd.zone_path("3A") / batch_id
        try:  # whole, or not there at all; from the held 3A/.tmp into the held 3A
            os.rename(self.id, batch_id, src_dir_fd=self._tmp_fd, dst_dir_fd=self._zone_fd)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise UploadError(f"batch {batch_id} appeared in 3A while this upload was received; send it under a "
                              "new id, or none (the server makes one)", status=409) from None
        os.fsync(self._zone_fd)
        os.fsync(self._tmp_fd)
        self._end()
        log.info("HTTP upload %s: batch %s (%s, %d files) in 3A", self.id, batch_id, source, len(self.files))
        return _submitted(self.cfg, final, source, len(self.files), sum(self.files.values()))

    def abort(self) -> None:
        """Remove what was received (idempotent): nothing of a failed upload stays in 3A. Its
        directory is emptied through the held descriptor (whatever its name is by then), and its
        name removed from the held 3A/.tmp only if it is still that directory."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._ended:
            return
        try:
            if self._fd >= 0:
                for name in os.listdir(self._fd):
                    _remove(self._fd, name)
                mine, there = os.fstat(self._fd), _lstat(self._tmp_fd, self.id)
                if same_inode(mine, there):
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(self.id, dir_fd=self._tmp_fd)
        except OSError as e:  # (a failing SSD: the next upload's sweep removes the rest)
            log.warning("HTTP upload %s: %s not all removed (%s)", self.id, self.dir, e)
        finally:
            self._end()

    def _end(self) -> None:
        """Let go of what the upload holds: its descriptors, its reservation, its token's claim."""
        self._ended = True
        for fd in (self._fd, self._tmp_fd, self._zone_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._tmp_fd = self._zone_fd = -1
        try:
            if self.res is not None:  # (none taken: nothing to release, no lock file made on an unmounted SSD)
                zones.release(self.cfg, "3A", self.id)
        finally:
            _unclaim(self.who, self.id)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def adopt(cfg: Settings, source: str, batch_id: str | None, manifest: bytes) -> Taken:
    """A batch a scraper copied into 3A itself (rsync, a shared mount), signalled over HTTP with
    a manifest of what it sent — `{"files": [{"path": …, "size": N, "sha256": "…"?}, …]}`: the
    directory must hold exactly those files, each of that size (and digest, when given), before
    its `_READY` is written and it is submitted; anything else is refused by name and nothing is
    written (a copy still running, a file missing or left over)."""
    if not batch_id:
        raise UploadError("a manifest names files already in 3A: send the `batch` field naming their directory")
    source = canonical_source(source, cfg.sources)
    if not BATCH_ID.match(batch_id) or names_work(batch_id):
        check_batch_id(cfg, batch_id)  # (its one line)
    root = cfg.ssd.zone_path("3A") / batch_id
    try:  # held from here on: every look below goes through this descriptor, never the path
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise UploadError(f"no batch directory {root}: copy the files there first, or send them as `files` parts",
                          status=404) from None
    try:
        return _adopt_held(cfg, root, root_fd, source, manifest)
    finally:
        os.close(root_fd)


def _adopt_held(cfg: Settings, root: Path, root_fd: int, source: str, manifest: bytes) -> Taken:
    """`adopt` with the batch directory held open (`root_fd`, opened without following a link):
    the walk, each listed file and the `_READY` are reached from it, so a scraper that swaps
    3A/<batch> for a link while the manifest is checked leads none of them through the link —
    and the swap is refused (409) before anything is signalled."""
    batch_id = root.name
    held = Path(f"/proc/self/fd/{root_fd}")  # the held directory itself, whatever its path names now
    if load_state(cfg, batch_id) is not None or os.path.lexists(held / SIGNAL):
        raise UploadError(f"batch {batch_id} is signalled or ingested already; `hoard ingest --status {batch_id}` "
                          "says where it is", status=409)
    listed = _manifest_entries(manifest, cfg.api.max_files)
    present: set[str] = set()
    for here, dirs, names, dfd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
        rel = "" if here == "." else here[2:] + "/"  # (a linked directory is not walked into: listed, as a file)
        present |= {rel + n for n in names + [d for d in dirs if stat.S_ISLNK(os.lstat(d, dir_fd=dfd).st_mode)]}
    extra = sorted(present - set(listed) - RESERVED)
    if extra:
        shown = ", ".join(display(x) for x in extra[:3]) + (", …" if len(extra) > 3 else "")
        raise UploadError(f"{root} holds {len(extra)} file(s) the manifest does not list ({shown}): a copy still "
                          "running, or left over; list them or remove them, then send the manifest again", status=409)
    for n, (path, (size, sha)) in enumerate(listed.items(), start=1):
        _check_listed(root, root_fd, n, path, size, sha)
    mine = os.fstat(root_fd)
    try:
        now = os.lstat(root)
    except OSError:
        now = None
    if not same_inode(mine, now):
        log.warning("HTTP manifest: %s was replaced while its manifest was checked; nothing signalled", root)
        raise UploadError(f"{root} was replaced while its manifest was checked (moved, or a link put in its place): "
                          "nothing was signalled; put the batch's directory back, then send the manifest again",
                          status=409)
    atomic_write(held / SIGNAL, f"{source}\n".encode())
    log.info("HTTP manifest: batch %s (%s, %d files) signalled in 3A", batch_id, source, len(listed))
    return _submitted(cfg, root, source, len(listed), sum(size for size, _ in listed.values()))


def _manifest_entries(manifest: bytes, max_files: int) -> dict[str, tuple[int, str | None]]:
    """path → (size, sha256 or None), every entry checked; UploadError naming the first bad one."""
    try:
        doc = json.loads(manifest)
    except (ValueError, RecursionError) as e:  # (a hostile `[[[[…` nests past the parser's depth)
        raise UploadError(f"the manifest is not JSON ({e}); send {{\"files\": [{{\"path\": …, \"size\": …}}]}}") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not files:
        raise UploadError('the manifest needs a non-empty "files" list of {"path", "size", "sha256" (optional)}')
    if len(files) > max_files:
        raise UploadError(f"the manifest lists {len(files)} files, more than api.max_files = {max_files}; send "
                          "several batches", status=413)
    out: dict[str, tuple[int, str | None]] = {}
    for n, entry in enumerate(files, start=1):
        path, size, sha = ((entry.get("path"), entry.get("size"), entry.get("sha256")) if isinstance(entry, dict)
                           else (None, None, None))
        if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0 or (
                sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef"))):
            raise UploadError(f"manifest entry {n}: needs \"path\" (text), \"size\" (bytes) and optionally "
                              "\"sha256\" (64 lower-case hex)")
        if why := refused_name(path):
            raise UploadError(f"manifest entry {n}: file name {display(path)!r} is refused: {why}")
        if path in out:
            raise UploadError(f"manifest entry {n}: {display(path)!r} is listed twice")
        out[path] = (size, sha)
    return out


def _check_listed(root: Path, root_fd: int, n: int, rel: str, size: int, sha: str | None) -> None:
    """The listed file is a regular file beneath the held batch directory `root_fd`, of its
    size and digest: no link followed on the way (a linked directory listed after a file in it),
    no fifo waited on."""
    where = f"manifest entry {n} ({display(rel)})"
    try:
        fd = open_nofollow(root_fd, rel)
    except FileNotFoundError:
        raise UploadError(f"{where}: no such file in {root}; copy it there, then send the manifest again",
                          status=409) from None
    except OSError as e:
        raise UploadError(f"{where}: cannot be opened ({e.strerror}); a symbolic link is never followed") from None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UploadError(f"{where}: not a regular file")
        if st.st_size != size:
            raise UploadError(f"{where}: {st.st_size} bytes in 3A, {size} in the manifest: a copy still running? "
                              "Send the manifest again when it is whole", status=409)
        if sha is not None:
            h = hashlib.sha256()
            while chunk := f.read(CHUNK):
                h.update(chunk)
            if h.hexdigest() != sha:
                raise UploadError(f"{where}: its sha256 in 3A is {h.hexdigest()}, not the manifest's {sha}; copy it "
                                  "again, then send the manifest again", status=409)


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(len(parts) + 1)]


def _submitted(cfg: Settings, root: Path, source: str, files: int, nbytes: int) -> Taken:
    """Submit a signalled batch of 3A as `hoard ingest` does; one that cannot be queued (Redis
    down) is taken with a warning: the ingest timer's `--ready` takes it later."""
    try:
        return Taken(root.name, submit(cfg, root, source), None, files, nbytes)
    except (HoardError, OSError, redis.RedisError) as e:
        why = condition_line(e)
        log.warning("batch %s is in 3A but not queued: %s", root.name, why)
        return Taken(root.name, None, f"batch {root.name} is in 3A with its {SIGNAL} but was not queued ({why}); the "
                     "ingest timer (`hoard ingest --ready`) takes it once that is fixed", files, nbytes)


def sweep(cfg: Settings, tmp_fd: int | None = None) -> list[str]:
    """Remove the temporary directories of uploads whose process is gone (a server killed mid-
    upload): one without a live reservation. A live upload reserves before it makes its
    directory, so none is taken for a dead one. `tmp_fd`: 3A/.tmp, held (else it is opened
    here, `_staging`: HoardError unless it is the service's own). Returns the removed upload ids."""
    if tmp_fd is None:
        held = _staging(cfg)
        if held is None:
            return []
        try:
            return sweep(cfg, held[1])
        finally:
            for fd in held:
                os.close(fd)
    found = [n for n in os.listdir(tmp_fd) if n.startswith("upload-")]
    if not found:
        return []
    live = {r.id for r in zones.reservations(cfg, "3A") if not r.stale}
    gone = [n for n in found if n not in live]
    tmp = cfg.ssd.zone_path("3A") / zones.TMP
    for name in gone:
        _remove(tmp_fd, name)
        zones.release(cfg, "3A", name)
        log.info("removed %s, left by an upload whose process is gone", tmp / name)
    return gone


def status_document(st: BatchState) -> dict[str, Any]:
    """The batch's state as `hoard ingest --status BATCH --json` prints it."""
    return json.loads(json.dumps(asdict(st), default=str))


# -- idempotency keys -----------------------------------------------------------------------

def _answer_path(cfg: Settings, who: str, key: str) -> Path:
    name = hashlib.sha256(f"{who}\0{key}".encode("utf-8", "surrogateescape")).hexdigest()
    return state_dir(cfg).parent / "http-ingest" / f"{name}.json"


def remembered(cfg: Settings, who: str, key: str) -> dict[str, Any] | None:
    """The answer given to `who`'s first upload under `key`, if within api.idempotency_hours."""
    path = _answer_path(cfg, who, key)
    try:
        if time.time() - path.stat().st_mtime > cfg.api.idempotency_hours * 3600:
            return None
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # (written atomically: a person's edit, or the SSD failing)
        log.warning("Idempotency-Key answer %s cannot be read (%s): the upload is taken as a new one", path, e)
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("body"), dict) else None


def remember(cfg: Settings, who: str, key: str, answer: dict[str, Any]) -> None:
    """Keep the answer of `who`'s upload under `key`; drop answers past api.idempotency_hours.
    One that cannot be written is logged, not raised: the batch is taken either way."""
    path = _answer_path(cfg, who, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(answer).encode())
    except OSError as e:
        log.warning("Idempotency-Key answer %s not kept (%s): a retry would make a second batch", path, e)
        return
    horizon = time.time() - cfg.api.idempotency_hours * 3600
    for old in path.parent.glob("*.json"):
        try:
            if old.stat().st_mtime < horizon:
                old.unlink()
        except FileNotFoundError:
            continue
