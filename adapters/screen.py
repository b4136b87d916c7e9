"""Screen a batch directory before any adapter sees it, and quarantine what is bad.

The framework, not each adapter, refuses what no format may accept: names that are not
UTF-8 or hold control characters, paths over `MAX_PATH_BYTES`, empty files, symlinks
that leave the batch, fifos/sockets/devices, and files still changing after the signal.
Rejected files are moved (a rename inside zone 3A — nothing is copied or lost) to
`3A/_quarantine/<batch_id>/<same relative path>`, and `_REASONS.txt` there says why.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import stat
import time
from pathlib import Path

from hoardfs.adapters.base import SIGNAL_FILES, BatchView, Reject, hostile_reason
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display

QUARANTINE = "_quarantine"


def open_batch(root: Path) -> int:
    """A descriptor of the batch directory, opened without following a link; HoardError (one
    line, exit 5) when it is a link or no directory that can be read."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:  # (a link is ENOTDIR to O_DIRECTORY | O_NOFOLLOW on Linux, not ELOOP)
        link = e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(root)
        what = "a symbolic link" if link else f"not a directory that can be read ({e.strerror})"
        raise HoardError(f"batch directory {display(str(root))} is {what}; nothing of it was read — drop the batch "
                         "again as a directory of its own", ExitCode.DATA) from None


def screen(root: Path, settle_s: float = 0.0) -> tuple[BatchView, list[Reject]]:
    """The batch's acceptable files (relative path → size) and the rejects, with reasons.

    With `settle_s` > 0 every file is looked at twice that far apart; one that changed
    is still being written and is rejected rather than stored half-done.

    The batch directory is opened without following a link and walked from that descriptor:
    a batch directory swapped for a link to a root-only directory after the signal was
    walked as the batch (its documents parsed, its files stored as root). An in-batch link
    is taken only when it names one of the batch's own files (by device and inode), so no
    race on paths can make it name another."""
    files: dict[str, tuple[int, int, int, int]] = {}
    rejects: list[Reject] = []
    top = open_batch(root)
    links: dict[str, os.stat_result] = {}  # in-batch symbolic links → what they name
    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            rel_dir = "" if dirpath == "." else dirpath[2:] + "/"
            for d in list(dirnames):
                rel = rel_dir + d
                why = _name_problem(rel) or ("a symlinked directory; copy the files in instead"
                                              if stat.S_ISLNK(os.lstat(d, dir_fd=dfd).st_mode) else None)
                if why:
                    dirnames.remove(d)
                    rejects.append(Reject([rel], why))
            for f in filenames:
                rel = rel_dir + f
                if rel in SIGNAL_FILES:
                    continue
                why = _name_problem(rel)
                st = None
                if why is None:
                    st, why = _file_problem(f, dfd)
                if why:
                    rejects.append(Reject([rel], why))
                elif st is None:  # a link: what it names, resolved from this directory's descriptor
                    try:
                        links[rel] = os.stat(f, dir_fd=dfd)
                    except OSError as e:
                        rejects.append(Reject([rel], f"a symlink that cannot be followed ({e.strerror})"))
                else:
                    files[rel] = (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
    finally:
        os.close(top)
    own = {(dev, ino) for _size, _mtime, dev, ino in files.values()}
    for rel, target in links.items():
        if (target.st_dev, target.st_ino) not in own:
            rejects.append(Reject([rel], "a symlink to a file outside the batch; copy the file in instead"))
        else:
            files[rel] = (target.st_size, target.st_mtime_ns, target.st_dev, target.st_ino)
    if settle_s > 0 and files:
        time.sleep(settle_s)
        for rel, (size, mtime, dev, ino) in list(files.items()):
            try:
                st = os.stat(root / rel)
            except OSError as e:
                rejects.append(Reject([], f"{display(rel)} vanished while the batch was screened ({e.strerror})"))
                del files[rel]
                continue
            if (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino) != (size, mtime, dev, ino):
                rejects.append(Reject([rel], f"still being written after the signal (size {size} → {st.st_size} "
                                             "bytes); drop it in a new batch once complete"))
                del files[rel]
    view = BatchView(root, {rel: size for rel, (size, *_) in files.items()})
    view.identity = {rel: (dev, ino, size, mtime) for rel, (size, mtime, dev, ino) in files.items()}
    return view, rejects


def _name_problem(rel: str) -> str | None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8; rename it"
    why = hostile_reason(rel)
    return f"{why}; rename it" if why else None


def _file_problem(name: str, dir_fd: int) -> tuple[os.stat_result | None, str | None]:
    """(the file's lstat, None) for a regular file to take; (None, None) for a symbolic link
    (taken if it names a file of the batch: `screen`); (None, why) for one refused."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return None, None
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file (fifo, socket or device)"
    if st.st_size == 0:
        return None, "an empty file (0 bytes); a scraper that failed mid-download leaves these"
    return st, None


def quarantine(zone3a: Path, batch_id: str, rejects: list[Reject]) -> Path:
    """Move rejected files to `<zone3a>/_quarantine/<batch_id>/` and append their reasons to
    `_REASONS.txt` there. Idempotent: a file already moved is not looked for again.

    3A is writable by the scraper: every directory on the way is opened with O_NOFOLLOW from
    its parent's descriptor, and one under `_quarantine` that is a symbolic link or belongs to
    another user is refused (a link there would let a rejected `users.json` replace the GUI's
    accounts) — one line, nothing moved. The source side is walked the same way (no ownership
    check: the batch is the scraper's), so a directory swapped for a link after the scan cannot
    make a file outside the batch move."""
    qdir = zone3a / QUARANTINE / batch_id
    moves = [(rel, rej) for rej in rejects for rel in rej.paths if rel]
    lines = [f"{display(rel) or '-'}\t{rej.reason}\n" for rej in rejects for rel in rej.paths or [""]]
    if not lines:
        return qdir
    zone = os.open(zone3a, os.O_RDONLY | os.O_DIRECTORY)
    opened = [zone]
    try:
        top = _own_dir(zone, QUARANTINE, zone3a / QUARANTINE, opened)
        home = _own_dir(top, batch_id, qdir, opened)
        for rel, _rej in moves:
            *dirs, name = rel.split("/")
            src = _walk(zone, [batch_id, *dirs], zone3a / batch_id, opened, own=False)
            if src is None or not _lexists(name, src):
                continue
            dst = home
            for i, d in enumerate(dirs):
                dst = _own_dir(dst, d, qdir.joinpath(*dirs[:i + 1]), opened)
            os.replace(name, name, src_dir_fd=src, dst_dir_fd=dst)
        fd = os.open("_REASONS.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640, dir_fd=home)
        with open(fd, "a", encoding="utf-8") as fh:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            fh.write(f"# {stamp}  batch {batch_id}: path<TAB>reason\n")
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fd in opened:
            os.close(fd)
    return qdir


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _own_dir(parent: int, name: str, where: Path, opened: list[int]) -> int:
    """The descriptor of directory `name` under `parent`, made if missing (mode 0750); refused
    when it is a symbolic link, not a directory, or not this service's (nor root's)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o750, dir_fd=parent)
    fd = _walk(parent, [name], where, opened, own=True)
    assert fd is not None
    return fd


def _walk(parent: int, names: list[str], where: Path, opened: list[int], own: bool) -> int | None:
    """Open `names` one directory at a time below `parent`, never following a link; None when
    one is missing (a source directory already moved); HoardError naming `where` when one is a
    link or a file (and, with `own`, another user's directory)."""
    fd = parent
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:  # ELOOP: a symbolic link; ENOTDIR: a file
            raise HoardError(f"{display(str(where))}: {e.strerror} — a symbolic link or a file where zone 3A needs "
                             "a directory of its own; nothing was moved: remove it and run the ingest again "
                             "(`hoard ingest --resume BATCH`)", ExitCode.DATA) from None
        opened.append(fd)
        owner = os.fstat(fd).st_uid
        if own and owner not in (os.geteuid(), 0):
            raise HoardError(f"{display(str(where))} belongs to uid {owner}, not to this service: a directory "
                             "another account made where quarantined files go; nothing was moved: remove it and "
                             "run the ingest again (`hoard ingest --resume BATCH`)", ExitCode.DATA)
    return fd
