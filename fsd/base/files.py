"""Durable small-file writes: tmp → fsync → rename → fsync the directory.

What every package writes beside its data (identity files, pointers, job state, backups)
must either be there whole after a power cut or not at all (docs/design.md, durability rules).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy a file of any size (streamed) as `atomic_write` writes one: tmp → fsync → rename."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 8 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(tmp, dest)
    fsync_dir(dest.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
