"""`hoard install`'s takeover of the trees made before it (docs/operations.md, "Production
install"): a hoardfs run as root — or another server's, whose `hoard` had another uid — made the
disks and the SSD, and the services now run as `hoard` and must write them. Once (the caller
walks a tree only while its top is not the new owner's), every entry is given to the service's
user, except what is not the service's:

- below a disk's root, pgBackRest's repository (`postgres`'s; `hoard install` gives a moved one
  to the new server's `postgres` the same way) and the file system's `lost+found`;
- in the zones others write (3A, 3C: a scraper's batches, a trainer's outputs, an action's
  worker user's output roots), the entries of other accounts: only root's, and those of a uid
  this system does not name (another server's), are taken; the zones' own directories stay
  root's (1770, sticky), given the `hoard` group if they had root's;
- a file that has more than one hard link: one another account made (where hard links are not
  protected, fs.protected_hardlinks=0) would hand over the file it names — /etc/shadow on the
  SSD's file system. It is kept and named, with the command to give it if it is hoardfs's;
- another file system mounted inside (not descended), a symbolic link's target (its own owner
  changes, never what it names).

A tree that holds, where every entry is taken, an entry of an account this system names (not
root, not the new owner) is not one hoardfs made — a home or a data directory named as a disk
by mistake, whose files the walk would give away: `Found.others` names them, and the caller
refuses the tree, taking nothing.

A group is given only where it is root's or one this system does not name: a group set by hand
is kept. The walk holds each directory open (`os.fwalk`): a directory swapped for a link under
it sends no change elsewhere. The tree's top is changed last, so a takeover cut short is
walked again by the next install.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: below a disk's root: not the service's (the caller adds pgBackRest's repository)
FILE_SYSTEM = "lost+found"
#: the SSD's zones others write too (hoardfs.base.modes.DROP)
SHARED_ZONES = ("3A", "3C")

AT_EMPTY_PATH = 0x1000  # <fcntl.h>: fchownat on the descriptor itself
_libc = ctypes.CDLL(None, use_errno=True)


def _chown_held(fd: int, uid: int, gid: int) -> None:
    """chown the very entry `fd` (O_PATH) was opened on, whatever its name means by now:
    `fchownat(fd, "", …, AT_EMPTY_PATH)` — a link or a hard link put in its place after it was
    looked at is not what changes owner."""
    if _libc.fchownat(fd, b"", ctypes.c_uint32(uid & 0xFFFFFFFF), ctypes.c_uint32(gid & 0xFFFFFFFF),
                      AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True)
class Accounts:
    """The users and groups of the system installed (its /etc/passwd and /etc/group: in a chroot
    install not this host's)."""

    users: dict[str, int]
    groups: dict[str, int]

    @classmethod
    def of(cls, etc: Path) -> Accounts:
        return cls(_ids(etc / "passwd"), _ids(etc / "group"))


def _ids(table: Path) -> dict[str, int]:
    ids = {}
    for line in table.read_text().splitlines() if table.exists() else []:
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            ids[parts[0]] = int(parts[2])
    return ids


@dataclass
class Found:
    #: entries whose owner or group changes (or would)
    entries: int = 0
    #: files kept: more than one hard link (paths below the tree's top, relative)
    linked: list[str] = field(default_factory=list)
    #: entries of an account this system names (not root, not the new owner) where every entry is
    #: taken — a tree hoardfs did not make (a home, a data directory named by mistake): the caller
    #: refuses it, nothing taken (paths below the tree's top, relative; the first few)
    others: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Rule:
    uid: int | None  # the new owner (None: not created yet — a dry run of a first install)
    gid: int | None
    uids: frozenset[int]  # the accounts and groups the system names
    gids: frozenset[int]

    def change(self, st: os.stat_result, whole: bool, keep_owner: bool = False) -> tuple[int, int] | None:
        """(uid, gid) to give an entry, -1 for "unchanged"; None if nothing changes."""
        foreign = st.st_uid == 0 or st.st_uid not in self.uids
        uid = -1 if keep_owner or st.st_uid == self.uid or not (whole or foreign) else self.uid
        gid = -1 if st.st_gid == self.gid or not (st.st_gid == 0 or st.st_gid not in self.gids) else self.gid
        if uid is None or gid is None:  # (the account does not exist yet: it would change)
            return (0, 0)
        return None if uid == gid == -1 else (uid, gid)


def take_over(top: Path, uid: int | None, gid: int | None, acc: Accounts, skip: Iterable[str] = (),
              shared: Iterable[str] = (), apply: bool = False) -> Found:
    """Walk the tree at `top` (a directory, not a link to one: the path as this process sees it)
    and count — `apply`: make — the changes that give it to `uid`:`gid` by the rules above;
    `skip`: names below the top not walked, `shared`: names below the top whose directory keeps
    its owner and whose entries are taken only from root or an account this system lacks."""
    assert not apply or (uid is not None and gid is not None), "take_over: the account does not exist"
    assert not top.is_symlink(), f"take_over: {top} is a link (the caller resolves it in its system)"
    rule, found = _Rule(uid, gid, frozenset(acc.users.values()), frozenset(acc.groups.values())), Found()
    top_st = os.stat(top)
    skip, shared = set(skip) | {FILE_SYSTEM}, set(shared)
    known = set(acc.users.values()) - {0, uid}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        here = Path(dirpath).relative_to(top)
        in_shared = bool(here.parts) and here.parts[0] in shared
        if not here.parts:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in [*dirnames, *filenames]:
            # the entry is looked at and changed through one descriptor: one swapped between the
            # two (for a hard link to /etc/shadow, in a zone others write) is not what changes
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dirfd)
            except FileNotFoundError:  # (gone meanwhile: a running service's temporary file)
                continue
            try:
                st = os.fstat(fd)
                if st.st_dev != top_st.st_dev:  # another file system mounted here: not the tree's
                    if name in dirnames:
                        dirnames.remove(name)
                    continue
                zone_top = not here.parts and name in shared
                if not in_shared and not zone_top and st.st_uid in known and len(found.others) < 5:
                    found.others.append(str(here / name))
                new = rule.change(st, whole=not in_shared, keep_owner=zone_top)
                if new is None:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and new[0] != -1:
                    found.linked.append(str(here / name))
                    continue
                found.entries += 1
                if apply:
                    _chown_held(fd, *new)
            finally:
                os.close(fd)
    new = rule.change(top_st, whole=True)
    if new is not None:
        found.entries += 1
        if apply:
            os.chown(top, *new)
    return found
