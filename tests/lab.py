"""The disk lab: ext4 images on loop devices as "HDDs" of unequal size and speed.

Speeds are enforced by the kernel through cgroup v1 blkio throttling
(`/sys/fs/cgroup/blkio/<group>/blkio.throttle.*_device`); a process is throttled once
its pid is in the group's `cgroup.procs`. Note: reads are throttled
whether buffered or O_DIRECT, writes only when O_DIRECT, because buffered writeback is
not charged to the writer's group.

Faults: `fail_eio(label)` truncates the image, so the kernel answers EIO for what lies
beyond (a dying drive); `fail_writes(label)` makes the image immutable, so every write
reaching the disk fails with EIO and ext4 soon turns read-only (a drive that stopped
writing); `vanish(label)` lazily unmounts it, leaving an empty directory (a disk that
dropped off the bus). `close()` always detaches and removes everything, and
`sweep_stale()` cleans up after a lab whose process was killed.

Power cuts (`power_cut`, for a lab built with `direct_io=True`). The model: with
`losetup --direct-io=on` every write the loop device has completed is in the image file,
while the lab filesystem's dirty pages (and requests not yet sent down) are not. So a copy
of the images taken at one instant is what the disks would hold had the power failed
then; `CutImages.mount()` attaches the copies to fresh loop devices and mounts them
read-write, which replays the ext4 journal as the first mount after a reboot does.
- Captured: everything fsync/fdatasync ordering decides. Data written but not synced may
  be missing; a create or rename whose directory was not fsynced may be undone; an LMDB
  commit is there only if its fsync returned before the cut. A dirty page the kernel
  happened to write back before the cut is in the copy, one it did not is not: both are
  legal crash states, and which one a cut sees is up to the kernel's writeback timing.
- One instant across disks: a real power loss stops every disk at once, but the copies
  are taken one after another (this ext4 has no reflink, so each copy takes time). So
  `paused(pid)` SIGSTOPs the writer, and `power_cut` waits until no lab disk has a request
  in flight, copies every image, and checks that no loop device's write or discard
  counter (/sys/block/loopN/stat) moved meanwhile, else copies again: kernel writeback of
  the stopped writer's dirty pages and jbd2 commits go on, and a copy that saw part of
  them would mix two instants (it keeps copying for up to 2 minutes, past the kernel's
  30 s writeback expiry; lab disks are mounted `noinit_itable` so ext4's background inode
  table zeroing does not keep them busy). Unpaused, each disk is cut at its own instant — a state no
  real power loss produces (an index copied after the shard it points at was deleted, or
  before it was written), so tests always pause. Pausing moves the cut to the end of the
  syscalls in progress (an fsync under way completes), which is still a point the writer
  really passes; random pause times cover seals, commits and acks alike.
- Not captured: a drive's volatile write cache losing or reordering writes it reported
  done (here "done" means "in the image"), torn sectors, misdirected writes. Lock files
  and flock()s do not survive a cut: on the copy nobody holds them, exactly what recovery
  after a reboot sees.
The copies live under the lab's root: `CutImages.close()`, `Lab.close()` and
`sweep_stale()` unmount and detach them. `Lab.reboot(cut)` instead puts the copies in the
disks' places — same mount points, so every path into the lab stays valid — for a test that
goes on with the machine after the cut (the chaos harness's power worlds).

Used by tests (the `lab` fixtures in conftest.py) and by benchmarks in bench/.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")
PREFIX = "hoardlab-"
MB = 1 << 20
#: how every lab disk (and every power-cut copy) is mounted. `noinit_itable`: the images are
#: fresh sparse files, so their inode tables already read as zeros; without it the kernel's
#: ext4lazyinit thread zeroes them in the background for seconds to minutes after mkfs (longer
#: on a busy machine), and those writes keep `power_cut` from ever seeing the disks idle
MOUNT_OPTIONS = "noatime,noinit_itable"


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
        as on a real HDD. Off by default because then a truncated image may read back as
        zeros or EBADMSG instead of EIO, depending on the kernel (6.18 answers EIO either
        way), and fault tests need the EIO of a dying drive: `fail_eio` switches a direct-IO
        disk to buffered IO first."""
        check_support()
        self.direct_io = direct_io
        self.throttle = throttle
        self.root = Path(root or tempfile.mkdtemp(prefix=PREFIX, dir="/var/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.cgroup = BLKIO / f"{PREFIX}{os.getpid()}-{self.root.name}"
        self.disks: dict[str, LabDisk] = {}
        self.cuts: list[CutImages] = []
        self._cut_seq = itertools.count(1)
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
        _sh("mount", "-o", MOUNT_OPTIONS, device, str(mnt))
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
        """The disk starts answering EIO: cut its image down to `keep_mb`. On a direct-IO lab
        the disk's loop device goes over to buffered IO first (LOOP_SET_DIRECT_IO), so the
        dying disk fails as it does in a buffered lab, whatever the kernel makes of a direct
        read past the end of an image (`__init__`; kernel 6.18 answers EIO both ways). The
        dead disk's image is no power-cut evidence afterwards: leave it out of a `reboot`."""
        d = self.disks[label]
        if self.direct_io:
            _sh("losetup", "--direct-io=off", d.device)
        os.sync()  # write back first: writeback after the cut would re-grow the image with holes
        os.truncate(d.image, keep_mb * MB)
        drop_caches()

    def fail_eio_in(self, label: str, *paths: Path) -> None:
        """The disk dies while the kernel still has most of it cached: only `paths` answer EIO.
        Every file on it is read into the page cache, the image is cut as `fail_eio` cuts it
        (the caches kept), and the pages of `paths` are dropped (POSIX_FADV_DONTNEED) — so the
        identity and the folders still read, these files do not. (Under memory pressure the
        kernel may drop more: more of the disk then answers EIO.)"""
        d = self.disks[label]
        for p in d.mountpoint.rglob("*"):
            if p.is_file():
                p.read_bytes()
        if self.direct_io:
            _sh("losetup", "--direct-io=off", d.device)
        os.sync()
        os.truncate(d.image, MB)
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def rot_inode(self, label: str, path: Path) -> None:
        """Bit rot in the filesystem's own records: one bit of `path`'s inode (its mtime) flips
        on the disk, so its checksum fails and ext4 answers EBADMSG to the next open — what a
        dying drive's bad sector under an inode table looks like. The file must not be open:
        the caches are dropped so the inode is read from the disk again."""
        d = self.disks[label]
        os.sync()
        where = _sh("debugfs", "-R", f"imap <{os.stat(path).st_ino}>", d.device)
        m = re.search(r"located at block (\d+), offset (0x[0-9a-f]+)", where)
        assert m, f"debugfs imap: {where!r}"
        pos = int(m.group(1)) * os.statvfs(d.mountpoint).f_bsize + int(m.group(2), 16) + 0x10  # i_mtime
        fd = os.open(d.device, os.O_RDWR)  # the block device's cache is the one ext4 reads through
        try:
            os.pwrite(fd, bytes([os.pread(fd, 1, pos)[0] ^ 1]), pos)
            os.fsync(fd)
        finally:
            os.close(fd)
        drop_caches()

    def fail_writes(self, label: str) -> None:
        """Writes to the disk start failing with EIO (reads still work until ext4 gives up):
        the image file is made immutable, so the loop driver's writes to it are refused.
        (Truncating the image does not fail writes: the loop device just re-grows the file.)"""
        _sh("chattr", "+i", str(self.disks[label].image))

    def vanish(self, label: str) -> None:
        """The disk drops off: lazy unmount, an empty directory stays behind."""
        _sh("umount", "-l", str(self.disks[label].mountpoint))

    def reappear(self, label: str) -> None:
        """A vanished disk comes back: its device is mounted again where it was."""
        d = self.disks[label]
        if not os.path.ismount(d.mountpoint):
            _sh("mount", "-o", MOUNT_OPTIONS, d.device, str(d.mountpoint))

    # -- power cuts -----------------------------------------------------------------
    @contextlib.contextmanager
    def paused(self, *pids: int, timeout: float = 5.0) -> Iterator[None]:
        """SIGSTOP the processes for the body of the with-block (SIGCONT after, always),
        once every one of their threads has stopped, so no new write starts meanwhile."""
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(stopped(pid) for pid in pids):
                time.sleep(0.001)
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def power_cut(self, patience_s: float = 120.0) -> CutImages:
        """Copy every disk's image as it is now: what the disks hold after a power loss at
        this instant (module docstring; call it inside `paused(writer)` for one instant
        across disks). The copies are not mounted yet: `.mount()` them."""
        if not self.direct_io:
            raise ValueError("power_cut needs Lab(direct_io=True): otherwise the loop device's own "
                             "page cache holds written blocks the image file does not show")
        dest = self.root / "cuts" / f"cut{next(self._cut_seq)}"
        dest.mkdir(parents=True)
        cut = CutImages(dest, {label: dest / f"{label}.img" for label in self.disks})
        self.cuts.append(cut)
        try:
            # the stopped writers' dirty pages and jbd2 commits drain within the kernel's
            # writeback expiry (vm.dirty_expire_centisecs, 30 s by default): keep copying until
            # one copy saw no write, for longer than that
            t0 = time.monotonic()
            deadline, attempts = t0 + patience_s, 0
            while True:
                attempts += 1
                before = self._quiet_counters()
                for label, d in self.disks.items():
                    _sh("cp", "--reflink=auto", "--sparse=always", str(d.image), str(cut.images[label]))
                idle = all(in_flight == 0 for _, _, in_flight in before.values())
                if idle and self._io_counters() == before:
                    cut.waited_s, cut.copies = round(time.monotonic() - t0, 2), attempts
                    return cut
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the lab disks never stayed idle for a whole copy in {patience_s:.0f} s "
                                       f"({attempts} copies); pause the writer (Lab.paused) before cutting")
        except BaseException:
            cut.close()
            raise

    def reboot(self, cut: CutImages, labels: Sequence[str] | None = None) -> None:
        """The machine comes back after the power cut `cut` recorded: each disk of `labels`
        (default: all) is unmounted and detached, its image replaced by its copy, attached
        again and mounted at the same mount point (its ext4 journal replays), so every path
        into the lab stays valid. Whatever held a file on those disks must be gone (killed)
        first: an unmount that finds the disk busy raises. A disk left out keeps its running
        image (a dead one, say); the cut's other copies are removed."""
        for label in labels if labels is not None else list(self.disks):
            d = self.disks[label]
            if os.path.ismount(d.mountpoint):
                _sh("umount", str(d.mountpoint))
            _sh("losetup", "-d", d.device)
            os.replace(cut.images.pop(label), d.image)
            d.device = _sh("losetup", "--find", "--show", f"--direct-io={'on' if self.direct_io else 'off'}",
                           str(d.image))
            _sh("mount", "-o", MOUNT_OPTIONS, d.device, str(d.mountpoint))
            st = os.stat(d.device)
            d.majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            if self.throttle:  # the limits are set per device
                self.set_throttle(label, d.profile.read_mbps, d.profile.write_mbps, d.profile.iops)
        cut.close()

    def _io_counters(self) -> dict[str, tuple[int, int, int]]:
        """Per disk: (write requests done, discards done, requests in flight), from sysfs."""
        out = {}
        for label, d in self.disks.items():
            f = (Path("/sys/block") / Path(d.device).name / "stat").read_text().split()
            out[label] = (int(f[4]), int(f[11]) if len(f) > 11 else 0, int(f[8]))
        return out

    def _quiet_counters(self, timeout: float = 10.0) -> dict[str, tuple[int, int, int]]:
        """The counters once no disk has a request in flight (or at the timeout; the copy
        made then is not accepted)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self._io_counters()
            if all(c[2] == 0 for c in now.values()) or time.monotonic() > deadline:
                return now
            time.sleep(0.002)

    # -- cleanup --------------------------------------------------------------------
    def close(self) -> None:
        for cut in self.cuts:
            cut.close()
        self.cuts.clear()
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


class CutImages:
    """Copies of a lab's disk images taken at a power cut; mount them to see what a reboot sees."""

    def __init__(self, root: Path, images: dict[str, Path]) -> None:
        self.root, self.images = root, images
        #: how long `power_cut` waited for a copy no write disturbed, and how many it made: a cut
        #: that waited past the kernel's writeback expiry (30 s) holds the stopped writers'
        #: dirty pages — still a legal crash state, but not the instant the writer was paused
        self.waited_s, self.copies = 0.0, 0
        self.devices: dict[str, str] = {}
        self.mountpoints: dict[str, Path] = {}

    def mount(self) -> dict[str, Path]:
        """Attach each copy to a fresh loop device and mount it read-write at
        `<root>/mnt/<label>` (mounting replays the ext4 journal); returns label → mount point."""
        try:
            for label, image in self.images.items():
                self.devices[label] = _sh("losetup", "--find", "--show", str(image))
                mnt = self.root / "mnt" / label
                mnt.mkdir(parents=True, exist_ok=True)
                _sh("mount", "-o", MOUNT_OPTIONS, self.devices[label], str(mnt))
                self.mountpoints[label] = mnt
        except BaseException:
            self.unmount()
            raise
        return dict(self.mountpoints)

    def unmount(self) -> None:
        for mnt in self.mountpoints.values():
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        self.mountpoints.clear()
        for dev in self.devices.values():
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.devices.clear()

    def fsck(self) -> dict[str, str]:
        """`e2fsck -fn` on every copy (unmounted, so after its journal replay): label → the
        complaint, for each copy that has one. A power cut must leave consistent ext4."""
        assert not self.mountpoints, "unmount() first"
        out = {}
        for label, image in self.images.items():
            res = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
            if res.returncode != 0:
                out[label] = (res.stdout + res.stderr).strip()
        return out

    def close(self) -> None:
        self.unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> CutImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (or gone)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return True
    for t in tasks:
        try:
            state = (t / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


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


def _mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first (/proc/self/mounts escapes a space as \\040)."""
    points = [line.split()[1].replace("\\040", " ") for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(f"{root}/")), key=len, reverse=True)


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
        for mnt in _mounts_under(root):  # the lab's disks and any power-cut copies
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        # after the unmounts: a walk into a damaged lab disk meets EBADMSG/EIO (os.walk skips what it cannot read)
        for parent, _, names in os.walk(root):
            for img in (n for n in names if n.endswith(".img")):
                subprocess.run(["chattr", "-i", os.path.join(parent, img)], capture_output=True)
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
