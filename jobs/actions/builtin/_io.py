"""What every built-in worker shares: reading the staged input tree and writing inside the
output root only.

Rules the programs keep (the run key and exactly-once depend on them):
- inputs are read in sorted order, regular files only; a link, a directory entry that is not
  a regular file or a name that is not UTF-8 is skipped with one line on stderr;
- an input that cannot be decoded is one line on stderr naming it and is skipped: the run goes on;
- every output path is built from a fixed pattern and the input's sha256 (never from a name
  the input supplies), created below the output root without following a link, written to a
  temporary name and renamed into place: a rerun gives the same bytes at the same paths;
- no timestamps, no host names, no library versions in what is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoardfs.base import landlock
from hoardfs.base.paths import display

#: bytes read per call while hashing an input
_CHUNK = 1 << 20


class WorkerError(Exception):
    """The whole run cannot go on (a missing input root, an output root that is a link):
    one line, exit 2."""


def warn(path: str, why: str) -> None:
    """One line on stderr for one input that is skipped."""
    print(f"hoard-builtin: skipped {display(path)}: {why}", file=sys.stderr, flush=True)


def note(path: str, what: str) -> None:
    """One line on stderr for one input that was used, with something said about it."""
    print(f"hoard-builtin: {display(path)}: {what}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Input:
    path: Path       # absolute, inside the input root
    rel: str         # relative to the input root, as staged
    sha256: str      # hex of its content (the node's sha256: content-addressed)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def inputs(root: Path) -> Iterator[Input]:
    """The regular files under `root`, sorted by relative path, links never followed."""
    check_input_root(root)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath) / name
            rel = os.path.relpath(full, root)
            found.append((rel, full))
    seen: set[str] = set()  # the same content staged at two paths is one input
    for rel, full in sorted(found):
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            warn(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "the name is not UTF-8")
            continue
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode):
            warn(rel, "not a regular file (a link, a pipe or a device)")
            continue
        try:
            sha = _sha256(full)
        except OSError as e:
            warn(rel, f"cannot read: {e.strerror}")
            continue
        if sha not in seen:
            seen.add(sha)
            yield Input(full, rel, sha)


def _under(root: Path, rel: str) -> Path:
    """`root/rel` with every directory between made, none of them a link."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise WorkerError(f"output path {rel!r} would leave the output root")  # a bug, never an input's doing
    d = root
    for p in parts[:-1]:
        d = d / p
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(d).st_mode):
                raise WorkerError(f"{display(str(d))} is not a directory (a link or a file) in the output "
                                  "root; empty the output root and run again") from None
    return d / parts[-1]


def check_output_root(root: Path) -> None:
    """The output root exists and is a directory, not a link (made when missing)."""
    try:
        os.mkdir(root, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise WorkerError(f"output root {display(str(root))}: {e.strerror}") from None
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise WorkerError(f"output root {display(str(root))} is not a directory (a link or a file); "
                          "give an empty directory")


def check_input_root(root: Path) -> None:
    """The input root exists and is a directory, not a link (`inputs` says the same again):
    checked before `confine` names it in a rule, which would follow a link."""
    try:
        st = os.lstat(root)
    except OSError as e:
        raise WorkerError(f"input root {display(str(root))}: {e.strerror}; stage the inputs first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WorkerError(f"input root {display(str(root))} is not a directory (a link or a file); "
                          "give the staged input directory")


def confine(output_root: Path, input_root: Path, *, read: Iterable[Path] = (), programs: Iterable[Path] = (),
            devices: Iterable[Path] = ()) -> bool:
    """From here on this process and every program it starts (ffmpeg) write below the output
    root only, and read only the input root, the output root, Python's and the system's
    libraries (`landlock.python_runtime`), the processors' description (`_SYSTEM`) and the
    files of `read` (clip-embed's weights); they start only `programs` (keyframes' ffmpeg and
    ffprobe) and open to write only /dev/null and `devices` (clip-embed's GPU). The inputs are scraped media that
    Pillow, OpenCV and ffmpeg decode: one taken over read the GUI's cookie key, the users and
    the API tokens in the SSD's `state/` and put them in a result every viewer sees. False where
    the kernel has no Landlock (`hoard health` says so); WorkerError where a rule would reach the
    service's secrets (`landlock.SecretInReach`). Nor does it change any file's mode, owner or
    times: a worker taken over made a shard mode 000, or hoard.toml world-readable (Landlock does
    not cover chmod) — its outputs get their 0644 from the umask set here instead (readable by
    the service when the worker runs as another user). docs/security.md, "Sandboxed parsers"."""
    os.umask(0o022)
    check_input_root(input_root)
    runtime = [*landlock.python_runtime(), *_SYSTEM]
    try:
        if not landlock.confine(write=[output_root], read=[*runtime, input_root, *(p for p in read if p.exists())],
                                execute=landlock.with_interpreter(programs), write_files=["/dev/null", *devices]):
            return False
    except landlock.SecretInReach as e:
        raise WorkerError(f"cannot confine this worker: {e}") from None
    landlock.refuse_metadata()  # where seccomp cannot be, Landlock alone (`hoard health` says so)
    return True


#: what a built-in reads of the system besides its libraries: the processors and memory nodes
#: (the C library counts processors there, OpenCV's, numpy's and torch's pools size themselves
#: by it, ffmpeg's libnuma and torch's cpuinfo read the topology and the processor's features)
#: and /dev/urandom (ffmpeg seeds its random numbers there; /dev/null is a write rule of its own)
_SYSTEM = tuple(p for p in ("/sys/devices/system/cpu", "/sys/devices/system/node", "/proc/cpuinfo", "/dev/urandom")
                if os.path.exists(p))


def write_bytes(root: Path, rel: str, data: bytes) -> Path:
    """Write `data` to `root/rel` atomically (a temporary file renamed over the name, which
    replaces a link there rather than writing through it)."""
    path = _under(root, rel)
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def move_into(root: Path, rel: str, src: Path) -> Path:
    """Rename `src` (a file this program wrote in the output root's scratch: its mode 0644 from
    the umask `confine` set) to `root/rel`."""
    path = _under(root, rel)
    os.replace(src, path)
    return path


def write_jsonl(root: Path, rel: str, records: list[dict[str, Any]]) -> Path:
    """One JSON object per line, keys sorted, in the order given (the caller sorts)."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    return write_bytes(root, rel, text.encode("utf-8"))
