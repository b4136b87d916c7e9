"""The disk lab: ext4 images on loop devices as "HDDs" of unequal size and speed.

Speeds are enforced by the kernel through cgroup v1 blkio throttling
(`/sys/fs/cgroup/blkio/<group>/blkio.throttle.*_device`); a process is throttled once
its pid is in the group's `cgroup.procs`. Note (ECOSYSTEM.md): reads are throttled
whether buffered or O_DIRECT, writes only when O_DIRECT, because buffered writeback is
not charged to the writer's group.

Faults: `fail_eio(label)` truncates the image, so the kernel answers EIO for what lies
beyond (a dying drive); `fail_writes(label)` makes the image immutable, so every write
reaching the disk fails with EIO and ext4 soon turns read-only (a drive that stopped
writing); `vanish(label)` lazily unmounts it, leaving an empty directory (a disk that
dropped off the bus). `close()` always detaches and removes everything, and
`sweep_stale()` cleans up after a lab whose process was killed.

Power cuts (`power_cut`, `mount_cut`): kill -9 is no power cut — the page cache survives
it, so fsync ordering is never tested. With `direct_io=True` the loop devices write their
images with O_DIRECT: what a lab filesystem has handed to its "disk" is in the image file,
its dirty page cache is not. `power_cut()` copies every image (sparse) as it is at that
moment — the platters after the power died — and `mount_cut()` mounts the copies on fresh
loop devices (ext4 replays its journal, as after a reboot). The caller stops the writing
process (SIGSTOP) around the copy so every disk is cut at the same instant of the program;
writeback the kernel still does meanwhile, or a copy that races a write, is a crash state
real disks produce too (any unsynced write may or may not have landed). What is not
modelled: a drive that lies about flushes, and torn sectors inside one write.

Used by tests (the `lab` fixtures in conftest.py) and by benchmarks in bench/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")
PREFIX = "hoardlab-"
MB = 1 << 20


@dataclass(frozen=True)
class DiskProfile:
    label: str
    size_mb: int
    read_mbps: float
    write_mbps: float
    iops: int


#: The standard profile: four second-hand disks of unequal size and speed.
LAB4 = (
    DiskProfile("lab1", 3000, 60, 50, 150),
    DiskProfile("lab2", 2000, 45, 40, 120),
    DiskProfile("lab3", 1500, 35, 30, 100),
    DiskProfile("lab4", 1000, 25, 20, 80),
)


@dataclass
class LabDisk:
    profile: DiskProfile
    image: Path
    device: str
    mountpoint: Path
    majmin: str

    @property
    def label(self) -> str:
        return self.profile.label


class LabUnavailable(RuntimeError):
    """The kernel or the privileges here do not allow a disk lab."""


def check_support() -> None:
    """Raise LabUnavailable saying what is missing (root, loop, ext4, blkio)."""
    if os.geteuid() != 0:
        raise LabUnavailable("the disk lab needs root (loop devices, mount, cgroups)")
    if not Path("/dev/loop-control").exists():
        raise LabUnavailable("no /dev/loop-control: the kernel has no loop device support")
    if not (BLKIO / "cgroup.procs").exists():
        raise LabUnavailable(f"no cgroup v1 blkio hierarchy at {BLKIO}")
    if "ext4" not in Path("/proc/filesystems").read_text():
        raise LabUnavailable("the kernel has no ext4")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            raise LabUnavailable(f"`{tool}` is missing (Debian packages util-linux, e2fsprogs, mount)")


def _sh(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
    return res.stdout.strip()


class Lab:
    """A set of throttled lab disks; use as a context manager or call close()."""

    def __init__(self, profiles: Sequence[DiskProfile] = LAB4, root: Path | None = None,
                 throttle: bool = True, direct_io: bool = False) -> None:
        """`direct_io`: the loop devices use O_DIRECT on their images (benchmarks): no second
        page cache under the lab filesystem, so an fsync costs what the backing disk costs,
        as on a real HDD. Off by default because then a truncated image reads back as zeros
        or EBADMSG instead of EIO, and fault tests need the EIO of a dying drive."""
        check_support()
        self.direct_io = direct_io
        self.root = Path(root or tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.cgroup = BLKIO / f"{PREFIX}{os.getpid()}-{self.root.name}"
        self.disks: dict[str, LabDisk] = {}
        try:
            self.cgroup.mkdir()
            for p in profiles:
                self.disks[p.label] = self._make_disk(p)
                if throttle:
                    self.set_throttle(p.label, p.read_mbps, p.write_mbps, p.iops)
        except BaseException:
            self.close()
            raise

    def _make_disk(self, p: DiskProfile) -> LabDisk:
        image = self.root / f"{p.label}.img"
        with open(image, "wb") as f:
            f.truncate(p.size_mb * MB)
        # direct IO between the loop device and its image: no second page cache under the lab
        # filesystem, so fsync costs what the backing disk costs (as on a real HDD)
        device = _sh("losetup", "--find", "--show", f"--direct-io={'on' if self.direct_io else 'off'}", str(image))
        _sh("mkfs.ext4", "-q", "-F", "-m", "0", "-L", p.label,
            "-E", "lazy_itable_init=1,lazy_journal_init=1", device)
        mnt = self.root / "mnt" / p.label
        mnt.mkdir(parents=True)
        _sh("mount", "-o", "noatime", device, str(mnt))
        st = os.stat(device)
        return LabDisk(p, image, device, mnt, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")

    # -- throttling ---------------------------------------------------------------
    def set_throttle(self, label: str, read_mbps: float, write_mbps: float, iops: int) -> None:
        d = self.disks[label]
        for knob, value in (("read_bps_device", int(read_mbps * MB)), ("write_bps_device", int(write_mbps * MB)),
                            ("read_iops_device", iops), ("write_iops_device", iops)):
            (self.cgroup / f"blkio.throttle.{knob}").write_text(f"{d.majmin} {value}\n")

    def join(self, pid: int | None = None) -> None:
        """Put a process (default: this one) under the lab's throttles."""
        (self.cgroup / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")

    @staticmethod
    def leave(pid: int | None = None) -> None:
        (BLKIO / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")

    @contextlib.contextmanager
    def throttled(self) -> Iterator[None]:
        """Run the body of the with-block with this process throttled."""
        self.join()
        try:
            yield
        finally:
            self.leave()

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """A command line that joins the throttled group before it execs `cmd`."""
        return ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "lab", *cmd]

    # -- faults ---------------------------------------------------------------------
    def fail_eio(self, label: str, keep_mb: int = 1) -> None:
        """The disk starts answering EIO: cut its image down to `keep_mb`."""
        d = self.disks[label]
        os.sync()  # write back first: writeback after the cut would re-grow the image with holes
        os.truncate(d.image, keep_mb * MB)
        drop_caches()

    def fail_writes(self, label: str) -> None:
        """Writes to the disk start failing with EIO (reads still work until ext4 gives up):
        the image file is made immutable, so the loop driver's writes to it are refused.
        (Truncating the image does not fail writes: the loop device just re-grows the file.)"""
        _sh("chattr", "+i", str(self.disks[label].image))

    def vanish(self, label: str) -> None:
        """The disk drops off: lazy unmount, an empty directory stays behind."""
        _sh("umount", "-l", str(self.disks[label].mountpoint))

    # -- power cuts -----------------------------------------------------------------
    def power_cut(self, name: str) -> Path:
        """Copy every disk image as it is now (what survives a power cut: only what reached the
        'platter'); returns the directory holding the copies. Needs `direct_io=True`."""
        assert self.direct_io, "a power cut needs direct-IO loops: buffered ones keep writes in the image's cache"
        dest = self.root / "cuts" / name
        dest.mkdir(parents=True)
        for d in self.disks.values():
            # dd reads every block (a SEEK_DATA-based copy can miss extents the loop device is
            # just converting from unwritten); conv=sparse keeps the copy small
            _sh("dd", f"if={d.image}", f"of={dest / d.image.name}", "bs=4M", "conv=sparse", "status=none")
        return dest

    def mount_cut(self, cut: Path) -> dict[str, Path]:
        """Attach and mount the copies of a cut (journal replayed); label → mount point."""
        mounts = {}
        for img in sorted(cut.glob("*.img")):
            device = _sh("losetup", "--find", "--show", str(img))
            with (cut / "devices").open("a") as f:
                f.write(device + "\n")
            mnt = cut / "mnt" / img.stem
            mnt.mkdir(parents=True)
            _sh("mount", "-o", "noatime", device, str(mnt))
            mounts[img.stem] = mnt
        return mounts

    def drop_cut(self, cut: Path) -> None:
        """Unmount, detach and delete a cut's copies."""
        for mnt in sorted((cut / "mnt").glob("*")) if (cut / "mnt").exists() else []:
            subprocess.run(["umount", str(mnt)], capture_output=True)
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        devices = (cut / "devices").read_text().split() if (cut / "devices").exists() else []
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(cut, ignore_errors=True)

    # -- cleanup --------------------------------------------------------------------
    def close(self) -> None:
        for cut in sorted((self.root / "cuts").glob("*")) if (self.root / "cuts").exists() else []:
            self.drop_cut(cut)
        for d in self.disks.values():
            subprocess.run(["chattr", "-i", str(d.image)], capture_output=True)
            subprocess.run(["umount", "-l", str(d.mountpoint)], capture_output=True)
            subprocess.run(["losetup", "-d", d.device], capture_output=True)
        self.disks.clear()
        _remove_cgroup(self.cgroup)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drop_caches() -> None:
    """Write back dirty pages and drop the page cache, so reads hit the (lab) disks."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _remove_cgroup(group: Path) -> None:
    if not group.exists():
        return
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (BLKIO / "cgroup.procs").write_text(pid + "\n")
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def sweep_stale() -> list[str]:
    """Remove the leftovers of labs whose owning process is gone; return what was removed."""
    removed = []
    base = Path("/var/tmp")
    loops = json.loads(_sh("losetup", "-J", "-l") or '{"loopdevices": []}').get("loopdevices", [])
    for root in base.glob(f"{PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = -1
        if owner > 0 and Path(f"/proc/{owner}").exists():
            continue
        for img in root.rglob("*.img"):
            subprocess.run(["chattr", "-i", str(img)], capture_output=True)
        for mnt in sorted((root / "mnt").glob("*")) + sorted(root.glob("cuts/*/mnt/*")):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for dev in loops:
            if (dev.get("back-file") or "").startswith(str(root)):
                subprocess.run(["losetup", "-d", dev["name"]], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    for group in BLKIO.glob(f"{PREFIX}*"):
        pid = group.name[len(PREFIX):].split("-")[0]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            _remove_cgroup(group)
            removed.append(str(group))
    return removed
