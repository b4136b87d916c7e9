"""`hoard mount`: the store as a read-only FUSE file system (pyfuse3 + trio).

    run_mount(cfg, mountpoint)   # blocks until unmounted or SIGTERM/SIGINT

See `namespace` (the tree), `reader` (verified reads on per-disk threads), `ops` (the FUSE
operations) and docs/mount.md.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
from pathlib import Path

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError

__all__ = ["check_mountpoint", "run_mount"]

log = logging.getLogger(__name__)


def run_mount(cfg: Settings, mountpoint: Path, debug: bool = False, ready=None, nonempty: bool = False) -> None:
    # deferred: pyfuse3, trio and the mount's modules (~0.2 s) load only to serve; the CLI imports
    # this package at every start (check_mountpoint, is_mounted for `hoard umount`)
    import pyfuse3
    import trio

    from hoardfs.fsd.mount import ops as mount_ops
    from hoardfs.fsd.mount.namespace import Namespace
    from hoardfs.fsd.mount.reader import Reader
    from hoardfs.fsd.mount.watch import Watcher
    from hoardfs.fsd.store import Store

    mountpoint = check_mountpoint(mountpoint, nonempty)
    if not os.path.exists("/dev/fuse"):
        raise HoardError("/dev/fuse is missing: load the fuse module (`modprobe fuse`)", ExitCode.UNAVAILABLE)
    # the `readers` lock: `hoard index rebuild`/`restore` refuse while the mount serves the index
    store = Store.open(cfg, writable=False, lock="readers", what=f"hoard mount {mountpoint}")
    store.index.damaged = _warn_once()  # a damaged index entry hides itself, not its folder
    reader = Reader(store)
    ns = Namespace(store.index, str(cfg.ssd.zone_path("3A")), reader.get_object, get_nowait=reader.get_object_nowait)
    no_open = mount_ops.NO_OPEN
    mode = (f"no-open (pyfuse3 {pyfuse3.__version__}): a file whose pages the kernel keeps is read with no "
            "request to the daemon" if no_open else
            f"open per file (pyfuse3 {pyfuse3.__version__} without hoardfs's no-open patch: each open asks the "
            "daemon; `make venv` or `make install` builds the patched one)")
    watcher = Watcher(store, reader, ns, mode, no_open)
    ns.visible = watcher.visible
    # before the first request: the deletions known (a name the kernel learns from now on is
    # invalidated when its object is deleted), the names, the disks' figures (in threads of their
    # own). Not `.hoard/health` ("starting" for a moment): `store.status()` reads every shard's
    # record, a start that grew with the store
    for refresh in (watcher.refresh_marks, watcher.refresh_names, watcher.refresh_space):
        refresh()
    ops = mount_ops.HoardOps(ns, reader, watcher, no_open)
    options = set(pyfuse3.default_options) | {"fsname=hoardfs", "subtype=hoard", "ro"}
    if os.geteuid() == 0 or cfg.mount.allow_other:
        # others may look up the mount, the kernel lets only the owner and the `hoard` group read
        options |= {"allow_other", "default_permissions"}
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, str(mountpoint), options)
    except RuntimeError as e:  # libfuse printed why on stderr just before ("fuse: failed to open /dev/fuse: …")
        reader.close()
        store.close()
        raise HoardError(f"cannot mount at {mountpoint}: {e} (libfuse's reason is on the line above; as a user "
                         "other than root, /dev/fuse must be readable and writable by it, and fusermount3 setuid "
                         "root)", ExitCode.UNAVAILABLE) from None
    log.info("mounted %s at %s; files: %s", cfg.source or "hoardfs", mountpoint, mode)
    if ready is not None:
        ready()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery)
            nursery.start_soon(watcher.run)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        reader.close()
        store.close()
        log.info("unmounted %s", mountpoint)


def check_mountpoint(mountpoint: Path, nonempty: bool = False) -> Path:
    """The resolved mount point, or a refusal naming the next step: not a directory, already a
    mount (a live one, or a FUSE mount whose daemon died — its stat fails with ENOTCONN, which
    `os.path.ismount` reports as "not a mount"), or holding files (hidden under the mount)."""
    # the parent resolved, not the mount point itself: a stat of a dead FUSE mount fails
    mountpoint = Path(os.path.realpath(Path(mountpoint).parent)) / Path(mountpoint).name
    if is_mounted(mountpoint):
        try:
            os.stat(mountpoint)
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise HoardError(f"{mountpoint}: a FUSE mount whose daemon is gone is still attached (transport "
                                 f"endpoint is not connected); `hoard umount --lazy {mountpoint}` first",
                                 ExitCode.USAGE) from None
            raise HoardError(f"{mountpoint}: {e.strerror}", ExitCode.USAGE) from None
        raise HoardError(f"{mountpoint} is already a mount point; `hoard umount {mountpoint}` first",
                         ExitCode.USAGE)
    if not mountpoint.is_dir():
        raise HoardError(f"mount point {mountpoint} is not a directory; `mkdir -p {mountpoint}` first",
                         ExitCode.USAGE)
    mountpoint = mountpoint.resolve()
    if not nonempty and any(os.scandir(mountpoint)):
        raise HoardError(f"mount point {mountpoint} is not empty (its files would be hidden while mounted); "
                         "use an empty directory, or `hoard mount --nonempty`", ExitCode.USAGE)
    return mountpoint


def is_mounted(path: Path) -> bool:
    """Whether something is mounted exactly at `path`, from /proc/self/mountinfo (which, unlike
    `os.path.ismount`, also lists a FUSE mount whose daemon died)."""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                # field 5 is the mount point, with space, tab, newline and backslash as octal escapes
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        return os.path.ismount(target)
    return False


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


async def _stop_on_signal(nursery) -> None:
    # deferred: as in run_mount, which has loaded them already
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return


def _warn_once():
    """A hook for `Index.damaged`: each damaged entry a listing leaves out is logged once."""
    told: set[str] = set()

    def damaged(e) -> None:
        if e.message not in told:
            told.add(e.message)
            log.warning("left out of a listing: %s", e.message)
    return damaged
