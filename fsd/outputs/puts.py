"""Named puts: `hoard put --name NAME` records what one put stored, `hoard ls --puts` lists
them, `hoard delete --put NAME` releases it all.

A named put is a view named `put.<NAME>` (hoardfs.fsd.outputs.views: a manifest in the store, a pointer on
every disk — so it survives `hoard index rebuild` like any view — and `<mount>/views/put.NAME/`
shows its files under the paths they were stored from). While the put runs, each file is a
root as with every `hoard put` (nothing is acknowledged that gc could free), but with a
provisional reason (Index.HELD_UNTIL_NAMED); once the view names the files, the roots that
are still this put's are taken off: from then on the view holds them. An object another put
rooted meanwhile keeps that root (Index.mark replaces a provisional root, Index.unmark_held
takes off only its own). `release` removes the view and tombstones its files that no
registered manifest (another named put, a batch, a view), `hoard put` root or pin holds;
gc checks that again when it frees them.
"""

from __future__ import annotations

import os
import re
import time

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import NAME_PATTERN
from hoardfs.fsd.core.index import HELD_UNTIL_NAMED
from hoardfs.fsd.outputs.manifest import iter_files
from hoardfs.fsd.outputs.views import PUT_VIEW, ViewError, define_view_rows, release_owned, remove_view

PREFIX = "put."
NAME = re.compile(NAME_PATTERN)


class PutNameError(HoardError):
    exit_code = ExitCode.USAGE


def view_name(name: str) -> str:
    return PREFIX + name


def check_name(index, name: str) -> None:
    """Refuse a name that is no name, or that a named put has already (before anything is stored)."""
    if not NAME.match(name) or len(PREFIX + name) > 128:
        raise PutNameError(f"put name {name!r}: letters, digits, `.`, `_`, `-`, starting with a letter or digit, "
                           "at most 124")
    have = index.get_view(view_name(name))
    if have is not None:
        raise PutNameError(f"a put named {name!r} exists already ({have['files']} files, {have['created']}); choose "
                           f"another name, or release it first (`hoard delete --put {name}`)")


def held_reason(name: str) -> str:
    """The provisional roots' reason of one run of `hoard put --name NAME` (unique per run)."""
    return f"{HELD_UNTIL_NAMED}{name} {time.time_ns()}"


def view_path(path: str) -> str:
    """A stored file's path in the named put's view: its absolute path without the leading `/`."""
    return os.path.normpath(os.path.abspath(path)).lstrip("/")


def record(store, name: str, rows: dict[str, str], reason: str) -> dict:
    """Name the files a put stored (path → sha256 hex) and take off its provisional roots.
    If the name cannot be recorded, the roots are made ordinary `hoard put` roots (the files
    stay held, as an unnamed put's) and PutNameError says why."""
    shas = [bytes.fromhex(s) for s in dict.fromkeys(rows.values())]
    try:
        check_name(store.index, name)  # again: another put of this name may have finished meanwhile
        info = define_view_rows(store, view_name(name), rows.items(), for_put=True)
    except (ViewError, PutNameError) as e:
        store.index.mark(store.index.rooted, shas, "hoard put")
        raise PutNameError(f"the put was not recorded as {name!r} ({e.message}); its {len(shas)} files are kept as "
                           "an unnamed put's (`hoard delete --object` releases them)") from None
    except BaseException:
        store.index.mark(store.index.rooted, shas, "hoard put")
        raise
    store.index.unmark_held(shas, reason)
    return info


def listing(index) -> list[dict]:
    """Every named put: name, when (ISO time), count (files), bytes."""
    return [{"name": v[len(PREFIX):], "when": info.get("created"), "count": info.get("files", 0),
             "bytes": info.get("bytes", 0)} for v, info in index.iter_views() if PUT_VIEW.match(v)]


def release(store, name: str, reason: str) -> tuple[int, int]:
    """Remove named put `name` and tombstone its files nothing else holds; returns
    (released, kept because something else holds them)."""
    info = store.index.get_view(view_name(name))
    if info is None:
        known = [p["name"] for p in listing(store.index)]
        raise PutNameError(f"no put named {name!r}; " + (f"`hoard ls --puts` lists {len(known)}" if known
                                                        else "there is none (`hoard put --name NAME` makes one)"))
    files = {sha for _path, sha, _size in iter_files(store.get, info["manifest"])}
    remove_view(store, view_name(name), for_put=True)
    released = release_owned(store, files, reason)
    return released, len(files) - released
