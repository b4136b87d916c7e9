"""A batch sent over HTTP (`POST /api/v1/batches` of `hoard gui`, gui.api) into zone 3A, then
into UA_1 as `hoard ingest` takes it (`submit`): the HTTP side parses the request, this module
owns what lands on the SSD.

    up = Upload.begin(cfg, content_length, who)   # quota reserved in 3A, 3A/.tmp/<upload>/ made
    up.open_file(part, "a.jpg"); up.write(b"…"); up.close_file()   # each file streamed to disk
    st = up.finish(source, batch_id)              # fsynced, _READY, renamed to 3A/<batch>, submitted
    up.abort()                                    # (any failure) the temporary directory removed

Rules, and why:

* The upload's size is reserved in 3A (`fsd.outputs.zones.reserve`, the job outputs' own
  accounting) before a byte is read, so a full 3A is refused at once (ZoneFull) and two uploads
  never both take the last room.
* Files are written under `3A/.tmp/<upload>/` and the directory is renamed to `3A/<batch>/`
  only once every file is complete and fsynced and its `_READY` written: the ingest (its timer's
  `--ready` included) never sees a half-sent batch. A dropped connection or any refusal removes
  the temporary directory (`abort`); one a killed server left is removed by the next upload
  (`sweep`: its reservation's process is gone).
* Names are checked with fsd.base.paths (`hostile_reason`, `long_name`) before anything is
  created, and files are created O_EXCL|O_NOFOLLOW inside the fresh directory.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import redis

from adapters import canonical_source
from fsd.base.config import Settings
from fsd.base.errors import ExitCode, HoardError
from fsd.base.files import atomic_write, fsync_dir, open_nofollow
from fsd.base.paths import MAX_NAME_BYTES, display, hostile_reason, long_name
from fsd.outputs import zones
from jobs.ingest.signals import REASON_FILE, REJECTED_SIGNAL, submit
from jobs.ingest.state import BATCH_ID, SIGNAL, WORK, BatchState, load_state, names_work, state_dir
from jobs.queues import condition_line

log = logging.getLogger(__name__)

#: names a batch's top level keeps for hoardfs (the signal it writes itself, and what
#: `hoard ingest` sets aside beside it): an upload holding one is refused
RESERVED = frozenset({SIGNAL, REJECTED_SIGNAL, REASON_FILE})
CHUNK = 1 << 20
#: what a file (and a directory) takes at least on the SSD's file system, as the quota counts
#: it (allocated blocks): an upload of many small files takes far more than its bytes
BLOCK = 4096
#: how much more an upload's reservation grows by at once when its files take more than it
GROW = 64 * BLOCK


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

    def __init__(self, message: str, status: int = 400, part: int | None = None) -> None:
        super().__init__(message)
        self.status, self.part = status, part


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
    except (ValueError, TypeError, OSError) as e:  # a damaged record is a used id all the same
        log.warning("ingest record of batch %s cannot be read: %s", batch_id, e)
        recorded = True
    if (cfg.ssd.zone_path("3A") / batch_id).exists() or recorded:
        raise UploadError(f"batch {batch_id} exists already (in 3A, or ingested before): a batch id is used once; "
                          "send the batch under a new id, or none (the server makes one)", status=409)


class Upload:
    """One upload on its way into 3A (see the module's docstring). Every refusal is an
    UploadError carrying its HTTP status: 400 a bad part, 409 a used batch id, 413 past a
    limit, 507 zone 3A full (its quota or its file system), 503 3A not there."""

    def __init__(self, cfg: Settings, upload_id: str, nbytes: int) -> None:
        self.cfg, self.id, self.nbytes = cfg, upload_id, nbytes
        self.dir = cfg.ssd.zone_path("3A") / zones.TMP / upload_id
        self.files: dict[str, int] = {}
        self.res: zones.Reservation | None = None
        self.charged = BLOCK  # what the files and directories written take on disk, as the quota counts it
        self._dirs: set[str] = set()
        self._fh: BinaryIO | None = None
        self._name = ""
        self._part = 0

    @classmethod
    def begin(cls, cfg: Settings, nbytes: int, who: str) -> Upload:
        """Reserve `nbytes` in 3A and make the temporary directory; UploadError 507 when 3A
        cannot take them, 503 when 3A cannot be used (not there, a damaged reservation file)."""
        up = cls(cfg, f"upload-{secrets.token_hex(8)}", nbytes)
        try:
            sweep(cfg)
            up.res = zones.reserve(cfg, "3A", up.id, f"HTTP upload {up.id} of {who}", nbytes,
                                   next_step="send the batch again")
        except zones.ZoneFull as e:
            raise UploadError(e.message, status=507) from None
        except HoardError as e:  # 3A not there (the SSD not mounted), a reservation file damaged
            raise UploadError(e.message, status=503) from None
        except OSError as e:
            raise written_error(e) from None
        try:
            up.dir.mkdir(parents=True)
        except BaseException:
            zones.release(cfg, "3A", up.id)
            raise
        return up

    def open_file(self, part: int, name: str) -> None:
        self.close_file()
        limits = self.cfg.api
        if len(self.files) >= limits.max_files:
            raise UploadError(f"part {part}: more than api.max_files = {limits.max_files} files in one upload; send "
                              "them in several batches", status=413, part=part)
        if why := refused_name(name):
            raise UploadError(f"part {part}: file name {display(name)!r} is refused: {why}; send the file under a "
                              "relative name inside the batch", part=part)
        path = self.dir / name
        new_dirs = {d for d in _parents(name)[1:] if d not in self._dirs}
        self._charge(part, BLOCK * len(new_dirs))  # (its blocks are charged as they are written)
        self._dirs |= new_dirs
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        except (FileExistsError, NotADirectoryError) as e:
            twice = isinstance(e, FileExistsError) and name in self.files
            raise UploadError(f"part {part}: file name {display(name)!r} " + (
                "comes twice in this upload; give each file its own name" if twice else
                "is both a file and a directory in this upload; rename one"), part=part) from None
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
        """Count `nbytes` more on disk; past the reservation (many small files: each takes a
        block), grow it — UploadError 507 when 3A cannot take them (its emergency threshold)."""
        self.charged += nbytes
        if self.res is None or self.charged <= self.res.bytes:
            return
        try:
            self.res = zones.grow(self.cfg, self.res, self.charged + GROW)
        except zones.ZoneFull as e:
            raise UploadError(f"part {part}: the upload's files take more room in zone 3A than its size (each file "
                              f"takes at least {BLOCK} bytes): {e.message}", status=507, part=part) from None

    def close_file(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()

    def finish(self, source: str, batch_id: str | None) -> Taken:
        """The batch complete: its signal written, the directory renamed into 3A and submitted
        to UA_1 as `hoard ingest` submits it (`_submitted`). UploadError for an unknown source or
        a used batch id."""
        self.close_file()
        if not self.files:
            raise UploadError("the upload holds no file: send `files` parts (each with its file name)")
        source = canonical_source(source, self.cfg.sources)
        batch_id = batch_id or new_batch_id(source)
        check_batch_id(self.cfg, batch_id)
        for d in sorted({self.dir / n for name in self.files for n in _parents(name)}, reverse=True):
            fsync_dir(d)
        atomic_write(self.dir / SIGNAL, f"{source}\n".encode())
        final = self.cfg.ssd.zone_path("3A") / batch_id
        try:
            os.rename(self.dir, final)  # whole, or not there at all
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise UploadError(f"batch {batch_id} appeared in 3A while this upload was received; send it under a "
                              "new id, or none (the server makes one)", status=409) from None
        fsync_dir(final.parent)
        zones.release(self.cfg, "3A", self.id)
        log.info("HTTP upload %s: batch %s (%s, %d files) in 3A", self.id, batch_id, source, len(self.files))
        return _submitted(self.cfg, final, source, len(self.files), sum(self.files.values()))

    def abort(self) -> None:
        """Remove what was received (idempotent): nothing of a failed upload stays in 3A."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        shutil.rmtree(self.dir, ignore_errors=True)
        zones.release(self.cfg, "3A", self.id)


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
    if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
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


def sweep(cfg: Settings) -> list[str]:
    """Remove the temporary directories of uploads whose process is gone (a server killed mid-
    upload): one without a live reservation. A live upload reserves before it makes its
    directory, so none is taken for a dead one. Returns the removed upload ids."""
    tmp = cfg.ssd.zone_path("3A") / zones.TMP
    try:
        found = [p for p in tmp.iterdir() if p.name.startswith("upload-")]
    except FileNotFoundError:
        return []
    if not found:
        return []
    live = {r.id for r in zones.reservations(cfg, "3A") if not r.stale}
    gone = [p for p in found if p.name not in live]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
        zones.release(cfg, "3A", p.name)
        log.info("removed %s, left by an upload whose process is gone", p)
    return [p.name for p in gone]


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
