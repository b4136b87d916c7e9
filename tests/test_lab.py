"""The disk lab itself: real loop devices, real ext4, kernel-enforced throttles and faults."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import BLKIO, LAB4, MB, DiskProfile, Lab, drop_caches

pytestmark = pytest.mark.lab

SMALL = (DiskProfile("fast", 300, 200, 200, 5000), DiskProfile("slow", 200, 10, 8, 40))


def _direct_write(path: Path, nbytes: int) -> None:
    buf = mmap.mmap(-1, MB)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(MB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    try:
        for _ in range(nbytes // MB):
            os.write(fd, buf)
    finally:
        os.close(fd)


def _direct_read(path: Path) -> int:
    buf = mmap.mmap(-1, MB)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    total = 0
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


def _loops_backed_by(root: Path) -> list[str]:
    out = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True).stdout or '{"loopdevices": []}'
    return [d["name"] for d in json.loads(out)["loopdevices"] if (d.get("back-file") or "").startswith(str(root))]


def test_lab4_disks_are_ext4_mounts_of_unequal_size(lab: Lab) -> None:
    """lab4 gives four mounted ext4 loop disks whose sizes follow the profile."""
    sizes = {}
    for label, d in lab.disks.items():
        assert os.path.ismount(d.mountpoint)
        assert d.device.startswith("/dev/loop")
        st = os.statvfs(d.mountpoint)
        sizes[label] = st.f_blocks * st.f_frsize / MB
    for p in LAB4:
        assert p.size_mb * 0.9 < sizes[p.label] <= p.size_mb
    assert sizes["lab1"] > sizes["lab2"] > sizes["lab3"] > sizes["lab4"]
    knobs = (lab.cgroup / "blkio.throttle.read_bps_device").read_text()
    assert f"{lab.disks['lab4'].majmin} {25 * MB}" in knobs


def test_throttle_limits_direct_writes_and_reads(lab_factory) -> None:
    """Inside the group O_DIRECT IO on the slow disk runs at its configured MB/s; outside it does not."""
    lab = lab_factory(SMALL)
    target = lab.disks["slow"].mountpoint / "blob"
    with lab.throttled():
        t0 = time.monotonic()
        _direct_write(target, 8 * MB)
        write_s = time.monotonic() - t0
        t0 = time.monotonic()
        assert _direct_read(target) == 8 * MB
        read_s = time.monotonic() - t0
    assert write_s >= 8 / 8 * 0.8, f"8 MB at 8 MB/s took only {write_s:.2f} s"
    assert read_s >= 8 / 10 * 0.8, f"8 MB at 10 MB/s took only {read_s:.2f} s"
    t0 = time.monotonic()
    _direct_read(target)
    assert time.monotonic() - t0 < read_s / 2, "reads outside the group must not be throttled"


def test_throttle_limits_iops(lab_factory) -> None:
    """Small random O_DIRECT reads on a 40 IOPS disk are held to about 40 per second."""
    lab = lab_factory(SMALL)
    target = lab.disks["slow"].mountpoint / "blob"
    _direct_write(target, 4 * MB)
    buf = mmap.mmap(-1, 4096)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECT)
    try:
        with lab.throttled():
            t0 = time.monotonic()
            for i in range(30):
                os.preadv(fd, [buf], ((i * 37) % 1024) * 4096)
            took = time.monotonic() - t0
    finally:
        os.close(fd)
    assert took >= 30 / 40 * 0.7, f"30 reads at 40 IOPS took only {took:.2f} s"


def test_wrapped_subprocess_is_throttled(lab_factory) -> None:
    """lab.wrap(cmd) puts the child in the throttled group before it runs."""
    lab = lab_factory(SMALL)
    out = subprocess.run(lab.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True, check=True).stdout
    assert lab.cgroup.name in out


@pytest.mark.parametrize("direct_io", [False, True])
def test_truncated_image_answers_eio(lab_factory, direct_io: bool) -> None:
    """fail_eio: data written before fails to read back afterwards (EIO), like a dying drive,
    on a direct-IO lab too."""
    lab = lab_factory(SMALL, direct_io=direct_io)
    d = lab.disks["fast"]
    victim = d.mountpoint / "victim"
    with open(victim, "wb") as f:
        f.write(os.urandom(40 * MB))
        f.flush()
        os.fsync(f.fileno())
    drop_caches()
    lab.fail_eio("fast")
    with pytest.raises(OSError) as exc:
        with open(victim, "rb") as f:
            while f.read(MB):
                pass
    # EIO for data blocks; EBADMSG if an ext4 metadata block (extent tree) is hit first
    assert exc.value.errno in (5, 74)


def test_vanished_disk_leaves_empty_directory(lab_factory) -> None:
    """vanish: the mount is gone, an empty directory that is no mount point stays."""
    lab = lab_factory(SMALL)
    d = lab.disks["slow"]
    (d.mountpoint / "file").write_bytes(b"x")
    lab.vanish("slow")
    assert d.mountpoint.is_dir()
    assert not os.path.ismount(d.mountpoint)
    assert list(d.mountpoint.iterdir()) == []


def test_close_removes_loops_mounts_and_cgroup(lab_factory) -> None:
    """close() detaches every loop device, unmounts, removes the cgroup and the images."""
    lab = lab_factory(SMALL)
    root, group = lab.root, lab.cgroup
    mounts = [d.mountpoint for d in lab.disks.values()]
    assert _loops_backed_by(root)
    lab.close()
    assert _loops_backed_by(root) == []
    assert not group.exists()
    assert not root.exists()
    assert not any(str(m) in Path("/proc/mounts").read_text() for m in mounts)


def test_a_fresh_lab_disk_writes_nothing_by_itself(lab_factory) -> None:
    """Nothing writes to a new lab disk nobody uses: ext4's lazy inode-table zeroing would
    (for seconds to minutes after mkfs), and a power cut waits for idle disks — CI once timed
    out a chaos seed's cut that way. The disks are 400 MB, as the chaos worlds' are."""
    lab = lab_factory((DiskProfile("a", 400, 200, 200, 5000), DiskProfile("b", 400, 200, 200, 5000)),
                      throttle=False, direct_io=True)
    before = lab._io_counters()
    time.sleep(3)
    assert lab._io_counters() == before


def test_power_cut_keeps_synced_writes_and_loses_dirty_pages(lab_factory) -> None:
    """A power cut's copy holds what was fsynced and not what sat in the page cache, while
    the running disk keeps both; the copy mounts read-write and is a clean ext4."""
    lab = lab_factory(SMALL[:1], throttle=False, direct_io=True)
    mnt = lab.disks["fast"].mountpoint
    synced, dirty = os.urandom(4 * MB), os.urandom(4 * MB)
    with open(mnt / "synced", "wb") as f:
        f.write(synced)
        os.fsync(f.fileno())
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)  # the directory entry too
    os.close(fd)
    (mnt / "dirty").write_bytes(dirty)  # written back only after dirty_expire (30 s)
    with lab.power_cut() as cut:
        copy = cut.mount()["fast"]
        assert os.path.ismount(copy)
        assert (copy / "synced").read_bytes() == synced
        assert not (copy / "dirty").exists() or (copy / "dirty").read_bytes() != dirty
        (copy / "written-after-reboot").write_bytes(b"x")
        cut.unmount()
        assert cut.fsck() == {}
    assert (mnt / "dirty").read_bytes() == dirty
    assert _loops_backed_by(lab.root / "cuts") == []


def test_reboot_puts_the_cut_copies_in_place(lab_factory) -> None:
    """After reboot(cut) each disk's mount point shows what the cut kept (the synced file, not
    the dirty one), on a new direct-IO loop device, writable; a disk left out keeps its state."""
    lab = lab_factory(SMALL, throttle=False, direct_io=True)
    mnt, other = lab.disks["fast"].mountpoint, lab.disks["slow"].mountpoint
    synced = os.urandom(MB)
    with open(mnt / "synced", "wb") as f:
        f.write(synced)
        os.fsync(f.fileno())
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    (mnt / "dirty").write_bytes(b"x" * MB)
    (other / "kept").write_bytes(b"y")  # dirty too, but "slow" is not rebooted
    before = lab.disks["fast"].device
    lab.reboot(lab.power_cut(), ["fast"])
    assert os.path.ismount(mnt)
    assert (mnt / "synced").read_bytes() == synced
    assert not (mnt / "dirty").exists() or (mnt / "dirty").read_bytes() != b"x" * MB
    assert (other / "kept").read_bytes() == b"y"
    dev = lab.disks["fast"].device
    listing = subprocess.run(["losetup", "-n", "-l", "-O", "BACK-FILE,DIO", dev], capture_output=True, text=True)
    assert listing.stdout.split() == [str(lab.disks["fast"].image), "1"], (before, listing.stdout)
    (mnt / "after").write_bytes(b"z")
    assert _loops_backed_by(lab.root / "cuts") == []


def test_killed_owner_is_swept(lab_support) -> None:
    """A lab whose process was killed -9 — and its mounted power-cut copies — are cleaned up
    by sweep_stale() (run at session start)."""
    script = (
        "import sys, time; sys.path.insert(0, %r)\n"  # noqa: UP031  # a script: %-format keeps its braces literal
        "from tests.lab import Lab, DiskProfile\n"
        "lab = Lab([DiskProfile('k', 100, 50, 50, 500)], direct_io=True)\n"
        "lab.power_cut().mount()\n"
        "print(lab.root, lab.cgroup, flush=True); time.sleep(60)\n" % str(Path(__file__).parent.parent)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        root, group = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
    assert _loops_backed_by(Path(root)), "the lab should exist after its owner died"
    from tests.lab import sweep_stale

    removed = sweep_stale()
    assert root in removed
    assert _loops_backed_by(Path(root)) == []
    assert root not in Path("/proc/mounts").read_text()
    assert not Path(group).exists()
    assert not Path(root).exists()
    assert BLKIO.exists()
