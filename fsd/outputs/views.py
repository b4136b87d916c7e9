"""Named views: a manifest of path → sha256, stored in the store itself and shown by the
mount under `views/<name>/` (zero-copy staging for 3C and dataset exports for 3D).

Manifest input: text lines `<sha256><whitespace><path>` (what `sha256sum` prints; read
line by line, so a list of 10 M files streams) or JSON `{"files": [{"path": "a/b.jpg",
"sha256": "…"}, …]}` (read whole). Every path is checked like a batch's (no `..`,
absolute, NUL, control characters, over-long), every sha256 must be in the store, and a
path may appear once. Stored as a `hoardfs-view-3` manifest (fsd/outputs/manifest.py).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import IO

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import MAX_PATH_BYTES, NAME_PATTERN, display
from hoardfs.fsd.core import formats
from hoardfs.fsd.outputs import holders, members
from hoardfs.fsd.outputs.manifest import ViewError, build_view, iter_files, manifest_objects, naming_lock

__all__ = ["ViewError", "define_view", "define_view_rows", "manifest_rows", "remove_view"]

VIEW_NAME = re.compile(NAME_PATTERN)
#: views named `<zone>-<id>` belong to view-mode outputs (hoardfs.jobs.outputs): only the output's
#: own job defines one and only `hoard zones clean` removes it, so a sealed output's entry
#: can never dangle or show another selection
OUTPUT_VIEW = re.compile(r"3[BCD]-")


#: views named `put.<name>` are named puts (hoardfs.fsd.outputs.puts): `hoard put --name` defines one and only
#: `hoard delete --put` removes it
PUT_VIEW = re.compile(r"put\.")


def _check_owner(name: str, for_output: bool, doing: str, for_put: bool = False) -> None:
    if PUT_VIEW.match(name) and not for_put:
        raise ViewError(f"view {name!r}: names starting with `put.` belong to named puts (`hoard put --name`), and "
                        f"cannot be {doing} by hand — `hoard delete --put {name[4:]}` releases such a put; "
                        "choose another name for yours")
    if OUTPUT_VIEW.match(name) and not for_output:
        raise ViewError(f"view {name!r}: names starting with 3B-, 3C- or 3D- belong to view-mode outputs of "
                        f"`hoard stage`/`hoard export`, and cannot be {doing} by hand — `hoard zones clean "
                        f"{name[3:]}` removes such an output with its view; choose another name for yours")


#: a line is a 64-hex digest, whitespace and a path of at most MAX_PATH_BYTES: longer is not a line
MAX_LINE = 64 + 16 + MAX_PATH_BYTES
#: a JSON manifest is read whole: at most this much (line manifests stream, without a limit)
MAX_JSON = 256 << 20


def manifest_rows(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """(path, sha256) rows from a manifest file, streaming when it is `SHA256  PATH` text.
    A JSON manifest (first non-blank character `{`) is read whole, up to MAX_JSON."""
    n = 0
    while True:
        raw = stream.readline(MAX_LINE + 1)
        if not raw:
            return
        n += 1
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors)
            raw = raw[3:]
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            start = (raw.decode("utf-8", "replace").split(None, 1) + [""])[1][:80]
            raise ViewError(f"view manifest line {n} is longer than {MAX_LINE} bytes: its path {display(start)}… "
                            f"is over {MAX_PATH_BYTES} bytes, the most a path in a view may have — shorten it")
        try:
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ViewError(f"view manifest line {n} is not UTF-8 (byte {e.start})") from None
        if not line.strip() or line.startswith("#"):
            continue
        if line.lstrip().startswith(("{", "[")):
            rest = stream.read(MAX_JSON + 1 - len(raw))
            if len(raw) + len(rest) > MAX_JSON:
                raise ViewError(f"view manifest is JSON larger than {MAX_JSON >> 20} MiB; use the line format "
                                "`SHA256  PATH` (it streams)")
            yield from _json_rows(raw + rest)
            return
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ViewError(f"view manifest line {n}: expected `SHA256  PATH`")
        yield parts[1].lstrip("*"), parts[0].lower()


def _json_rows(raw: bytes) -> list[tuple[str, str]]:
    form = "{\"files\": [{\"path\": …, \"sha256\": …}]} JSON"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ViewError(f"view manifest is not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise ViewError(f"view manifest is not valid JSON ({e})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        raise ViewError(f"view manifest is not {form}")
    rows = []
    for k, f in enumerate(files):
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
            raise ViewError(f"view manifest files[{k}] is not {{\"path\": string, \"sha256\": string}}")
        rows.append((f["path"], f["sha256"].lower()))
    return rows


def define_view(store, name: str, raw: bytes) -> dict:
    """Define (or replace) view `name` from a manifest in memory."""
    return define_view_rows(store, name, manifest_rows(io.BufferedReader(io.BytesIO(raw))))


def define_view_rows(store, name: str, rows: Iterable[tuple[str, str]], *, for_output: bool = False,
                     owned: Iterable[str] = (), for_put: bool = False) -> dict:
    """Define (or replace) view `name` from (path, sha256) rows in any order, in bounded
    memory. The objects of the manifest it replaces are tombstoned: gc frees those that no
    other manifest still references (a directory object two share is one). `for_output`:
    the caller is a view-mode output's job (OUTPUT_VIEW names are its alone). `owned`: the
    sha256s of objects made for this view alone (a view-mode output's sidecars), listed in
    an object the view's record names: when the view is removed or replaced they are
    tombstoned too (`release_owned`), and for an output's view the files it named that
    nothing else holds then (see `_retire`)."""
    if not VIEW_NAME.match(name):
        raise ViewError(f"view name {name!r}: letters, digits, `.`, `_`, `-`, at most 128")
    _check_owner(name, for_output, "defined", for_put)
    built = build_view(store, name, rows)
    # Its objects were acknowledged one by one while it was built; one that a concurrent
    # redefinition tombstoned meanwhile is kept (the tombstone cleared, as storing it again
    # would), one a gc already freed means the view cannot be registered.
    own = built.pop("objects")
    for sha in own:
        if store.index.lookup_keep(bytes.fromhex(sha)) is None:
            raise HoardError(f"view {name}: part of its manifest ({sha}) was freed by a gc running meanwhile; "
                             "run `hoard view add` again", ExitCode.DATA)
    named = [bytes.fromhex(s) for s in built.pop("file_objects")]
    named_files = list(named)  # (the files alone: `named` gains the owned list below)
    owned = sorted(set(owned))
    if owned:
        # one list per definition (its name and time in it): two views owning the same sidecars
        # must not share the list, which only its own view's removal tombstones
        head = f"{OWNED_FORMAT} {name} {time.time_ns()}"
        res = store.put_bytes(("\n".join([head, *owned]) + "\n").encode(), klass="generated")
        if res.status not in ("new", "existing"):
            raise HoardError(f"view {name}: the list of its own objects could not be stored: {res.reason}",
                             ExitCode.UNAVAILABLE)
        built["owned"] = listed = res.sha256
        named.append(bytes.fromhex(listed))
    info = {**built, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    with naming_lock(store):
        old = store.index.get_view(name)
        # (what it names — files and its own objects — is held before it is registered: hoardfs.fsd.core.held)
        store.register_view(name, info, holds=named_files + [bytes.fromhex(s) for s in own])
        # a view removed or a batch deleted between the build's lookups and this line may
        # have tombstoned a file this view names: a named file is live, as the build said
        for sha in store.index.marked_among(store.index.deleted, named):
            store.index.lookup_keep(sha)
        if old is not None and old["manifest"] != info["manifest"]:
            _retire(store, name, old)
            holders.unhold(store, old["manifest"])
    members.remember(store, info["manifest"])  # (its tree read back: where each file is)
    return info


def remove_view(store, name: str, *, for_output: bool = False, for_put: bool = False) -> None:
    _check_owner(name, for_output, "removed", for_put)
    with naming_lock(store):  # read inside: a redefinition meanwhile is what gets retired
        old = store.index.get_view(name)
        if old is None:
            raise ViewError(f"no view {name!r}; `hoard view list` shows them")
        store.register_view(name, None)
        _retire(store, name, old)
        holders.unhold(store, old["manifest"])


#: first line of the object listing what a view owns (`define_view_rows(owned=)`)
OWNED_FORMAT = formats.VIEW_OWNED


#: a removed view's files are released this many at a time (bounded memory: each round holds
#: this many digests and reads every registered manifest once)
RELEASE_CHUNK = 1 << 20


def _retire(store, name: str, old: dict) -> None:
    """Tombstone (type B) a replaced or removed view's manifest objects and the objects it
    owned (its record's `owned` list); gc frees those no manifest, root, pin or database row
    references when it swaps. An output's view (`OUTPUT_VIEW`, a selection of nodes) also
    releases the files it named that nothing else holds now (no registered manifest, `hoard
    put` root or pin: `release_owned`): a file a batch deletion kept only because the output
    served it is freed once the output is cleaned. A hand-made view's files are left alone —
    it may name what only the database knows (a dump) or what a user keeps by hand. Called
    under `naming_lock`, after the view is re-registered or unregistered; never raises — the
    view's change is made already, and what cannot be read stays (a leak `hoard check` can
    name, never a loss)."""
    log = logging.getLogger(__name__)
    try:
        store.index.mark(store.index.deleted, manifest_objects(store.get, old["manifest"]), "replaced view manifest")
    except Exception as e:  # an unreadable old manifest is `hoard check`'s to report
        log.warning("the replaced view manifest %s cannot be read (%s): its objects are left in place",
                    old["manifest"], e)
    if old.get("owned"):
        try:
            lines = store.get(old["owned"]).decode().splitlines()
            if not lines or lines[0].split(" ")[0] != OWNED_FORMAT:
                raise ValueError(f"not a {OWNED_FORMAT} list")
            release_owned(store, {bytes.fromhex(h) for h in lines[1:] if h} | {bytes.fromhex(old["owned"])},
                          "made for a view that was removed or replaced", old["manifest"])
        except Exception as e:  # see above
            log.warning("the objects view %s owned (list %s) are left in place: %s", name, old["owned"], e)
    if not OUTPUT_VIEW.match(name):
        return
    try:
        files: set[bytes] = set()
        for _path, sha, _size in iter_files(store.get, old["manifest"]):
            files.add(sha)
            if len(files) >= RELEASE_CHUNK:
                release_owned(store, files, "served by an output that was cleaned or redone", old["manifest"])
                files = set()
        release_owned(store, files, "served by an output that was cleaned or redone", old["manifest"])
    except Exception as e:  # see above
        log.warning("the files of output view %s (manifest %s) are left in place: %s", name, old["manifest"], e)


def release_owned(store, shas: set[bytes], reason: str, departing: str | None = None) -> int:
    """Tombstone objects made for or served by a view that went (its sidecars; an output's
    files) unless a registered manifest, a `hoard put` root or a pin still names them; gc checks
    again when it swaps. `departing`: the manifest of the view that went, whose `held` entries
    are still there — those of its prefix hold only what a registered manifest sharing that
    prefix names (hoardfs.fsd.core.held: else a sharer kept every file it served). Returns how many. A
    pin file that cannot be read keeps them all (as gc would refuse to run)."""
    from hoardfs.fsd.core.layout import pinned  # deferred: only releasing needs the pins

    if not shas:
        return 0

    pins, bad = pinned(store.cfg)
    if bad:
        logging.getLogger(__name__).warning("pin files unreadable (%s): %d objects made for a view are left in place",
                                            "; ".join(bad), len(shas))
        return 0
    kept = (shas & holders.referencer(store, departing)(shas)) | store.index.marked_among(store.index.rooted, shas) \
        | (shas & pins)
    return store.index.mark(store.index.deleted, shas - kept, reason)
