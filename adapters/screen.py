"""Screen a batch directory before any adapter sees it, and quarantine what is bad.

The framework, not each adapter, refuses what no format may accept: names that are not
UTF-8 or hold control characters, paths over `MAX_PATH_BYTES`, empty files, symlinks
that leave the batch, fifos/sockets/devices, and files still changing after the signal.
Rejected files are moved (a rename inside zone 3A — nothing is copied or lost) to
`3A/_quarantine/<batch_id>/<same relative path>`, and `_REASONS.txt` there says why.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from pathlib import Path

from adapters.base import SIGNAL_FILES, BatchView, Reject, hostile_reason
from fsd.base.paths import display

QUARANTINE = "_quarantine"


def screen(root: Path, settle_s: float = 0.0) -> tuple[BatchView, list[Reject]]:
    """The batch's acceptable files (relative path → size) and the rejects, with reasons.

    With `settle_s` > 0 every file is looked at twice that far apart; one that changed
    is still being written and is rejected rather than stored half-done."""
    files: dict[str, tuple[int, int]] = {}
    rejects: list[Reject] = []
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for d in list(dirnames):
            rel = rel_dir + d
            why = _name_problem(rel) or ("a symlinked directory; copy the files in instead"
                                          if os.path.islink(os.path.join(dirpath, d)) else None)
            if why:
                dirnames.remove(d)
                rejects.append(Reject([rel], why))
        for f in filenames:
            rel = rel_dir + f
            if rel in SIGNAL_FILES:
                continue
            why = _name_problem(rel)
            full = os.path.join(dirpath, f)
            st = None
            if why is None:
                st, why = _file_problem(full, real_root)
            if why:
                rejects.append(Reject([rel], why))
            else:
                assert st is not None
                files[rel] = (st.st_size, st.st_mtime_ns)
    if settle_s > 0 and files:
        time.sleep(settle_s)
        for rel, (size, mtime) in list(files.items()):
            try:
                st = os.stat(root / rel)
            except OSError as e:
                rejects.append(Reject([], f"{display(rel)} vanished while the batch was screened ({e.strerror})"))
                del files[rel]
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                rejects.append(Reject([rel], f"still being written after the signal (size {size} → {st.st_size} "
                                             "bytes); drop it in a new batch once complete"))
                del files[rel]
    return BatchView(root, {rel: size for rel, (size, _) in files.items()}), rejects


def _name_problem(rel: str) -> str | None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8; rename it"
    why = hostile_reason(rel)
    return f"{why}; rename it" if why else None


def _file_problem(full: str, real_root: str) -> tuple[os.stat_result | None, str | None]:
    try:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(full)
            if not target.startswith(real_root + os.sep):
                return None, f"a symlink to {display(target)}, outside the batch; copy the file in instead"
            st = os.stat(full)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file (fifo, socket or device)"
    if st.st_size == 0:
        return None, "an empty file (0 bytes); a scraper that failed mid-download leaves these"
    return st, None


def quarantine(zone3a: Path, batch_id: str, rejects: list[Reject]) -> Path:
    """Move rejected files to `<zone3a>/_quarantine/<batch_id>/` and append their reasons to
    `_REASONS.txt` there. Idempotent: a file already moved is not looked for again."""
    qdir = zone3a / QUARANTINE / batch_id
    src_root = zone3a / batch_id
    lines = []
    for rej in rejects:
        for rel in rej.paths or [""]:
            if rel:
                src, dst = src_root / rel, qdir / rel
                if os.path.lexists(src):
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
            lines.append(f"{display(rel) or '-'}\t{rej.reason}\n")
    if lines:
        qdir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with open(qdir / "_REASONS.txt", "a", encoding="utf-8") as fh:
            fh.write(f"# {stamp}  batch {batch_id}: path<TAB>reason\n")
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
    return qdir
