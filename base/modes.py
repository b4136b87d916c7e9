"""Who may read what hoardfs writes (docs/security.md, "File modes and ownership").

Local users are untrusted: shards, database dumps, packages, the index, the GUI's sessions
and thumbnails, Redis's append-only file are for the service and its `hoard` group only.
Files are made 0640 (the umask every `hoard` process sets at its start, `hoardfs.cli.entry`), and
each directory that holds such files is made (or tightened to) one of the modes below by
`ensure_dir` — a directory nobody else can enter protects what is in it whatever the files'
own modes (files written by an older hoardfs, 0644, included).

The group of these directories is `hoard` when that group exists (else root's, as a root
process leaves it), with the set-group-id bit so that what is written inside gets it too.
A group or mode a person set is kept when it is stricter: only bits beyond the mode below
are taken away, and only a directory of root's group is given the `hoard` group.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import stat
from pathlib import Path

from hoardfs.base.errors import ExitCode, HoardError

log = logging.getLogger(__name__)

#: set at every entry point: nothing hoardfs creates is readable or writable by others,
#: nor writable by the group
UMASK = 0o027
#: a file of data or state (what the umask makes of open()'s 0666)
FILE = 0o640
#: a directory of data or state: the service writes, the `hoard` group reads
PRIVATE = 0o750
#: a directory others must pass through but not list: a disk's root (PostgreSQL's user
#: reaches its pgBackRest repository there), the SSD's root (a scraper account reaches 3A)
PASSAGE = 0o751
#: zones 3A and 3C: the service and the writing group (a scraper account, a trainer) write;
#: the sticky bit lets nobody but an entry's owner (and root) rename or remove it
DROP = 0o1770
#: the group that shares the service's files (docs/security.md)
GROUP = "hoard"


def set_umask() -> None:
    """The umask of every hoardfs process (`hoard` and what it starts: workers, the GUI, the
    mount, the private Redis, pg_dump)."""
    os.umask(UMASK)


def group_id() -> int | None:
    """The `hoard` group's id, None when the system has no such group."""
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def ensure_dir(path: Path, mode: int = PRIVATE) -> Path:
    """`path` as a directory of `mode` (its missing parents 0755: passages, as they always
    were): made if missing, an existing one tightened (a stricter mode kept), given the
    `hoard` group if it has root's. A symbolic link at `path` is followed (a disk mounted
    through one); what cannot be changed (a read-only or failing file system, another owner's
    directory) is left as it is."""
    made = False
    if not path.is_dir():
        _make_parents(path.parent)
        try:
            os.mkdir(path, mode & 0o777)
            made = True
        except FileExistsError:
            if not path.is_dir():  # a file where the directory goes: the caller's refusal names it
                return path
    try:
        st = os.stat(path)
        gid = group_id()
        if gid is not None and st.st_gid == 0 and st.st_gid != gid:
            os.chown(path, -1, gid)
            st = os.stat(path)
        perms = mode & 0o777 if made else st.st_mode & mode & 0o777
        special = mode & stat.S_ISVTX
        if gid is not None and st.st_gid == gid:
            special |= stat.S_ISGID  # what is made inside gets the group
        want = perms | special | (stat.S_IMODE(st.st_mode) & stat.S_ISGID)
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(path, want)
    except OSError as e:  # a read-only or failing disk: what needs it next says so, in its own words
        log.debug("%s: mode left as it is (%s)", path, e.strerror)
    return path


#: what a refusal of `refuse_unless_own` tells to do
AGAIN = "remove it and run the command again"


def own_dir(path: Path, mode: int = PRIVATE) -> Path:
    """`path`, a directory inside a zone others write (3A, 3C), as this service's own: made
    (`mode`) if missing; a symbolic link, a file or another user's directory there is refused
    in one line — a link planted where the service writes would send its files elsewhere."""
    os.close(open_own_dir(path, mode))
    return path


def open_own_dir(path: Path, mode: int = PRIVATE, next_step: str = AGAIN, parent_fd: int | None = None) -> int:
    """`own_dir`, held: a descriptor of the directory `path` (made if missing, opened without
    following a link) once `refuse_unless_own`'s rules pass on what was opened — what is made
    through it lands there whatever its path names later. `parent_fd`: the directory holding
    `path`, held already (`path` made and opened there by its name; the whole path names it
    in a refusal); `next_step`: what a refusal tells to do."""
    name, where = (path.name, parent_fd) if parent_fd is not None else (path, None)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode & 0o777, dir_fd=where)
    try:  # (a link with O_DIRECTORY|O_NOFOLLOW is ENOTDIR, as a file is: lstat says which)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=where)
    except NotADirectoryError:
        refuse_unless_own(path, os.lstat(name, dir_fd=where), next_step)
        raise
    try:
        refuse_unless_own(path, os.fstat(fd), next_step)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_unless_own(path: Path, st: os.stat_result | None = None, next_step: str = AGAIN) -> None:
    """Refuse (one line) what is at `path` unless it is a directory of this service's (or
    root's) that neither its group nor others may write: a symbolic link, a file, another
    user's directory, one others could plant entries in, in a zone others write. `st`: what
    was found there (lstat of `path` when not given)."""
    st = os.lstat(path) if st is None else st
    why = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory" if not stat.S_ISDIR(st.st_mode)
           else f"another user's (uid {st.st_uid})" if st.st_uid not in (os.geteuid(), 0)
           else f"writable by its group or others (mode {stat.S_IMODE(st.st_mode):04o})" if st.st_mode & 0o022
           else None)
    if why:
        raise HoardError(f"{path} is {why}, where this service keeps a directory of its own in a zone others may "
                         f"write; nothing was written: {next_step}", ExitCode.DATA)


def passage(path: Path) -> Path:
    """`path` as a directory, the missing parts made 0755 whatever the umask: a directory
    another account must pass through (the PostgreSQL server user to its data and its
    pgBackRest repository under /var/lib/hoardfs)."""
    _make_parents(path)
    return path


def _make_parents(path: Path) -> None:
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        try:
            os.mkdir(p)
            os.chmod(p, 0o755)
        except FileExistsError:
            pass


def rewrite_mode(path: Path) -> int:
    """The mode of a file hoardfs writes at `path` (tmp → rename): 0640, or the stricter mode
    the file there has now (a person's chmod 0600 survives the rewrite)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & FILE
    except OSError:
        return FILE
