"""Fixed-width records sorted on disk, so that work over every object of a store needs memory
for a slice of them, not for all (a Python object per object costs 1.2–1.5 KB each: 13–16 GB
for `hoard check` or `hoard index rebuild` at 10 M objects).

A `Spill` takes records of one width, writes each to one of 256 partition files by its first
byte, and gives them back in byte order, one partition sorted in memory at a time: a
partition holds 1/256 of the records (records here begin with a sha256, so the partitions
are even). Callers put what they sort by first (a sha256, then a big-endian stamp).

    with Spill(folder, width=42) as sp:
        for rec in records:
            sp.add(rec)
        for rec in sp.sorted():   # every record, in byte order (duplicates kept)
            ...
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.proc import pid_alive

#: partitions: by a record's first byte
PARTS = 256


class Spill:
    def __init__(self, parent: Path | None, width: int, prefix: str = "hoard-spill-") -> None:
        """Partition files in a new folder `<prefix><pid>-<random>` under `parent` (the SSD
        beside the index, where there is room; None: the system's temporary folder); removed
        by `close` — and, when its process was killed before, by the next Spill made there
        (`sweep`)."""
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        sweep(Path(parent if parent is not None else tempfile.gettempdir()), prefix)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        self.width = width
        self.count = 0
        self._files: list[BinaryIO | None] = [None] * PARTS

    def add(self, rec: bytes) -> None:
        f = self._files[rec[0]]
        try:
            if f is None:
                f = self._files[rec[0]] = open(self.folder / f"{rec[0]:02x}", "wb")  # closed in sorted()
            f.write(rec)
        except OSError as e:
            raise self._failed(e) from None
        self.count += 1

    def _failed(self, e: OSError) -> HoardError:
        """One line for a spill that cannot be written (the SSD full: it takes `width` bytes per record)."""
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        return HoardError(f"cannot write sorted runs to {self.folder} ({e.strerror or e}): "
                          + ("free space there (it needs about "
                             f"{self.width} bytes per object and mark) and run this again" if full
                             else "check that folder's disk (`dmesg`, `df`) and run this again"),
                          ExitCode.NO_SPACE if full else ExitCode.UNAVAILABLE)

    def sorted(self) -> Iterator[bytes]:
        """Every record added, in byte order; each partition's file is removed once read."""
        for part, f in enumerate(self._files):
            if f is None:
                continue
            self._files[part] = None
            try:
                f.close()
            except OSError as e:
                raise self._failed(e) from None
            path = self.folder / f"{part:02x}"
            raw = path.read_bytes()
            os.unlink(path)
            w = self.width
            recs = sorted(raw[i:i + w] for i in range(0, len(raw), w))
            del raw
            yield from recs

    def close(self) -> None:
        for f in self._files:
            if f is not None:
                f.close()
        self._files = [None] * PARTS
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep(parent: Path, prefix: str = "hoard-spill-") -> list[Path]:
    """Remove the spill folders under `parent` whose process is gone (`hoard check`, `health` or
    `index rebuild` killed mid-way left them: up to ~70 bytes per object each); returns them.
    The owner is the pid in the name; a folder whose process runs is never touched (nor one
    named without a pid, by the version before: whose it is cannot be told)."""
    gone: list[Path] = []
    try:
        names = [e.name for e in os.scandir(parent) if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return gone
    for name in names:
        pid, sep, _ = name[len(prefix):].partition("-")
        if sep and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(parent / name, ignore_errors=True)
            gone.append(parent / name)
    return gone


def spill_parent(candidate: Path) -> Path | None:
    """`candidate` (the SSD's root) when this process may write there, else None (the system's
    temporary folder: a reader such as `hoard health` run by a member of the hoard group)."""
    return candidate if os.access(candidate, os.W_OK | os.X_OK) else None
