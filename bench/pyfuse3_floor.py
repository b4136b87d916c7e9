"""What a warm epoch costs through any pyfuse3 file system, hoardfs aside: the floor under
the mount's `warm` figures (bench/mount_read.py), with an OPEN per file and with FUSE's no-open.

    python bench/pyfuse3_floor.py [--files 100000] [--readers 4]

A minimal pyfuse3 file system (this script again, `--serve MOUNTPOINT [--no-open]`) shows
FILES files of 2 KiB, 1,000 per directory, all holding the same bytes, their names and
attributes kept an hour by the kernel, served two ways:

open     OPEN answered with `keep_cache`, RELEASE answered — as `hoard mount` does with
         pyfuse3 as released: each open() of a file whose pages are cached costs the daemon
         an OPEN and a RELEASE;
no-open  OPEN answered ENOSYS, after which the kernel sends no OPEN or RELEASE at all
         (`FUSE_NO_OPEN_SUPPORT`) and every READ carries file handle 0 — as `hoard mount`
         does with pyfuse3 built with hoardfs's patch, which hands read() the inode then
         (fsd/mount/pyfuse3-noopen.patch; docs/mount.md). This file system needs no inode:
         every file holds the same bytes.

Each is read once in name order and then, timed, in a seeded random order by `--readers`
threads (reader i takes items i, i+N, …), as are the same files as plain files on this
machine's disk, all in the page cache. Reported: files/s of the warm epoch and the CPU
seconds the daemon spent on it. Nothing throttled; needs /dev/fuse.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import _wait_mount, read_all, report, run_timed

DATA = b"x" * 2048
PER_DIR = 1000
FIRST_FILE = 1 << 20  # inode numbers: directories 2…, files from here


def serve(mountpoint: str, no_open: bool) -> None:
    # deferred: only the serving child loads pyfuse3 and trio
    import pyfuse3
    import trio

    class Ops(pyfuse3.Operations):
        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            if ino < FIRST_FILE:
                a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
            else:
                a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, len(DATA)
            a.entry_timeout = a.attr_timeout = 3600
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent_inode, name, ctx=None):
            text = name.decode(errors="replace")
            if parent_inode == pyfuse3.ROOT_INODE and text[:1] == "d" and text[1:].isdigit():
                return self._attr(2 + int(text[1:]))
            if 2 <= parent_inode < FIRST_FILE and text[:1] == "f" and text[1:].isdigit():
                return self._attr(FIRST_FILE + (parent_inode - 2) * PER_DIR + int(text[1:]))
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def open(self, inode, flags, ctx):
            if no_open:
                raise pyfuse3.FUSEError(errno.ENOSYS)
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return DATA[off:off + size]

        async def release(self, fh):
            pass

    pyfuse3.init(Ops(), mountpoint, set(pyfuse3.default_options) | {"fsname=floor", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rel(k: int) -> str:
    return f"d{k // PER_DIR}/f{k % PER_DIR}"


def _epochs(root: Path, n: int, readers: int, pid: int | None) -> tuple[float, float]:
    """(seconds of the warm epoch, the daemon's CPU seconds in it) after a first pass."""
    paths = [root / _rel(k) for k in range(n)]
    assert read_all(paths, readers) == n * len(DATA)
    random.Random(12).shuffle(paths)
    cpu0, t0 = (_cpu_s(pid) if pid else 0.0), time.monotonic()
    assert read_all(paths, readers) == n * len(DATA)
    return time.monotonic() - t0, (_cpu_s(pid) - cpu0 if pid else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--no-open", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.no_open)
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-floor-", dir="/var/tmp"))
    n, t = args.files, {}
    try:
        plain = work / "plain"
        for k in range(n):
            if k % PER_DIR == 0:
                (plain / _rel(k)).parent.mkdir(parents=True)
            (plain / _rel(k)).write_bytes(DATA)
        t["plain"], _ = _epochs(plain, n, args.readers, None)
        for kind in ("open", "no_open"):
            mnt = work / kind
            mnt.mkdir()
            proc = subprocess.Popen([sys.executable, __file__, "--serve", str(mnt)]
                                    + (["--no-open"] if kind == "no_open" else []))
            try:
                _wait_mount(mnt, proc)
                t[kind], t[f"{kind}_daemon_cpu_s"] = _epochs(mnt, n, args.readers, proc.pid)
            finally:
                subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
                proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [("warm epoch", f"{n:,} files of 2 KiB, {args.readers} readers, shuffled, all in the page cache")]
    for kind, label in (("plain", "plain files"), ("open", "pyfuse3, OPEN + RELEASE per file"),
                        ("no_open", "pyfuse3, no-open (no request)")):
        cpu = t.get(f"{kind}_daemon_cpu_s")
        rows.append((f"  {label}", f"{t[kind]:6.2f} s {n / t[kind]:8.0f} files/s  {t['plain'] / t[kind]:4.0%} of plain"
                                   + ("" if cpu is None else f"  ({cpu:.2f} s daemon CPU)")))
    report("pyfuse3 floor", rows, {"files": n, "readers": args.readers,
                                   **{k: round(v, 4) for k, v in t.items()}})


if __name__ == "__main__":
    main() if "--serve" in sys.argv else run_timed(main)
