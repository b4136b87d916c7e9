"""Named views: a manifest of path → sha256, stored in the store itself and shown by the
mount under `views/<name>/` (zero-copy staging for 3C and dataset exports for 3D).

Manifest input: JSON `{"files": [{"path": "a/b.jpg", "sha256": "…"}, …]}` or text lines
`<sha256><whitespace><path>` (what `sha256sum` prints). Every path is checked like a
batch's (no `..`, absolute, NUL, control characters, over-long), every sha256 must be in
the store, and a path may appear once.
"""

from __future__ import annotations

import datetime as dt
import json
import re

from fsd.errors import ExitCode, HoardError
from fsd.paths import NAME_PATTERN, hostile_reason

VIEW_NAME = re.compile(NAME_PATTERN)


class ViewError(HoardError):
    exit_code = ExitCode.USAGE


def parse_manifest(raw: bytes) -> list[tuple[str, str]]:
    text = raw.decode("utf-8", errors="strict")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            return [(f["path"], f["sha256"]) for f in doc["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ViewError(f"view manifest is not {{\"files\": [{{\"path\", \"sha256\"}}]}} JSON ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ViewError(f"view manifest line {n}: expected `SHA256  PATH`")
        rows.append((parts[1].lstrip("*"), parts[0]))
    return rows


def define_view(store, name: str, raw: bytes) -> dict:
    if not VIEW_NAME.match(name):
        raise ViewError(f"view name {name!r}: letters, digits, `.`, `_`, `-`, at most 128")
    try:
        rows = parse_manifest(raw)
    except UnicodeDecodeError as e:
        raise ViewError(f"view manifest is not UTF-8 (byte {e.start})") from None
    files, seen = [], set()
    for path, sha in rows:
        why = hostile_reason(path)
        if why:
            raise ViewError(f"view {name}: path {path[:80]!r}: {why}")
        if path in seen:
            raise ViewError(f"view {name}: path {path!r} appears twice")
        seen.add(path)
        # a view wants its objects: a type-B tombstone on one is cleared (as storing it again would)
        loc = store.index.lookup_keep(bytes.fromhex(sha)) if re.fullmatch(r"[0-9a-f]{64}", sha) else None
        if loc is None:
            raise ViewError(f"view {name}: {path}: {sha[:64]!r} is not an object in the store")
        files.append({"path": path, "sha256": sha, "size": loc.length})
    _refuse_file_over_directory(name, seen)
    body = json.dumps({"format": "hoardfs-view-1", "name": name, "files": sorted(files, key=lambda f: f["path"])},
                      indent=1).encode()
    put = store.put_bytes(body, klass="generated")
    info = {"manifest": put.sha256, "files": len(files), "bytes": sum(f["size"] for f in files),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    store.register_view(name, info)
    return info


def _refuse_file_over_directory(name: str, paths: set[str]) -> None:
    """A path that is also another path's directory (`a` and `a/b`) cannot be both a file and a
    directory in the mount: one of them would silently vanish there."""
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if (prefix := "/".join(parts[:i])) in paths:
                raise ViewError(f"view {name}: path {prefix!r} is a file, but {path!r} needs it as a directory; "
                                "rename one of them in the manifest")


def remove_view(store, name: str) -> None:
    if store.index.get_view(name) is None:
        raise ViewError(f"no view {name!r}; `hoard view list` shows them")
    store.register_view(name, None)
