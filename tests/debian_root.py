"""A pristine Debian 12 root for the install test (tests/test_install_root.py): debootstrap's
minbase plus what a README may assume (git, make, python3 with venv, ca-certificates), cached
as a tarball and unpacked fresh for each run. It shares this machine's kernel: /dev, /proc and
/sys are bound in, so FUSE works inside as on a real server.

    python -m tests.debian_root [CACHE]      # build the cached tarball only (slow: minutes)

Everything system-level of the test (apt-get, PostgreSQL, Redis, the `hoard` user) happens
inside the root, never on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import needs_private_mounts

#: the cached base (about 250 MB); HOARD_DEBIAN_ROOT_CACHE moves it
CACHE = Path(os.environ.get("HOARD_DEBIAN_ROOT_CACHE", "/tmp/hoard-debian12-base.tar"))
SUITE = "bookworm"
BASE_PKGS = "git make python3 python3-venv ca-certificates"
ENV = ["env", "-i", "HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG=C.UTF-8"]
BINDS = ("dev", "dev/pts", "proc", "sys")


def _mirror() -> str:
    """The mirror this machine's apt uses (its deb822 sources, else its sources.list)."""
    for f in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if f.exists():
            for line in f.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or (words[:1] == ["deb"] and len(words) > 1):
                    return words[1]
    return "http://deb.debian.org/debian"


def build_base(cache: Path = CACHE) -> Path:
    """The cached tarball, debootstrapped first if missing (needs root and `debootstrap`)."""
    if cache.exists():
        return cache
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (Debian package debootstrap; the Makefile's deps install it)")
    build = cache.with_name(cache.name + ".build")
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(["nice", "-n", "19", "debootstrap", "--variant=minbase", SUITE, str(build), _mirror()],
                   check=True, stdout=subprocess.DEVNULL)
    # this machine's apt sources, settings and extra CA certificates (a TLS-inspecting proxy, if
    # any) hold inside too, so apt-get and pip reach what they reach here
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.exists():
        shutil.copy(src, build / "etc/apt/sources.list.d/")
        (build / "etc/apt/sources.list").unlink(missing_ok=True)
    for conf in Path("/etc/apt/apt.conf.d").glob("99*"):
        shutil.copy(conf, build / "etc/apt/apt.conf.d/")
    shutil.copy("/etc/resolv.conf", build / "etc/resolv.conf", follow_symlinks=True)
    certs = build / "usr/local/share/ca-certificates"
    certs.mkdir(parents=True, exist_ok=True)
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, certs)
    subprocess.run(["chroot", str(build), *ENV, "bash", "-c",
                    f"apt-get update -qq && apt-get install -y -qq {BASE_PKGS} >/dev/null && "
                    "update-ca-certificates >/dev/null"], check=True)
    (build / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    tmp = cache.with_name(cache.name + ".part")
    subprocess.run(["tar", "-C", str(build), "-cf", str(tmp), "."], check=True)
    os.replace(tmp, cache)
    shutil.rmtree(build, ignore_errors=True)
    return cache


class DebianRoot:
    """A fresh copy of the base at `path` with /dev, /proc and /sys bound in (`with` unbinds)."""

    def __init__(self, path: Path, cache: Path = CACHE) -> None:
        self.path = path
        self.cache = cache

    def __enter__(self) -> DebianRoot:
        base = build_base(self.cache)
        self._unbind()
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(self.path), "-xf", str(base)], check=True)
        for m in BINDS:
            subprocess.run(["mount", "--bind", f"/{m}", str(self.path / m)], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unbind()

    def _unbind(self) -> None:
        for m in reversed(BINDS):
            subprocess.run(["umount", "-l", str(self.path / m)], capture_output=True)

    def run(self, cmd: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
        """`cmd` in the root as root (bash -lc, a clean environment); output captured."""
        res = subprocess.run(["chroot", str(self.path), *ENV, "bash", "-lc", cmd], capture_output=True,
                             text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"in the Debian root: {cmd!r} exited {res.returncode}\n"
                                 f"stdout: {res.stdout[-4000:]}\nstderr: {res.stderr[-4000:]}")
        return res


if __name__ == "__main__":
    print(build_base(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE))


# -- booting the root with systemd (systemd-nspawn -b) -------------------------------------------

NSPAWN_DIR = Path(os.environ.get("HOARD_NSPAWN_DIR", "/tmp/hoard-nspawn"))
NSPAWN_RUN = Path("/run/systemd/nspawn")
#: held while a root is booted: a booted root shares this machine's network (apt and pip need it),
#: so two at once (a test run beside another) have two PostgreSQL servers on localhost:5432, and the
#: second one's restart by `hoard install` fails ("No such file or directory" at its socket)
BOOT_LOCK = Path("/run/lock/hoard-booted-root.lock")


def nspawn() -> str:
    """systemd-nspawn: the installed one, else the one in Debian's systemd-container package,
    downloaded (`apt-get download`) and unpacked into NSPAWN_DIR — not installed: its package
    brings machined and importd, services this machine must not get."""
    found = shutil.which("systemd-nspawn")
    if found:
        return found
    binary = NSPAWN_DIR / "usr/bin/systemd-nspawn"
    if not binary.exists():
        NSPAWN_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "-qq", "systemd-container"], cwd=NSPAWN_DIR, check=True,
                       capture_output=True)
        [deb] = NSPAWN_DIR.glob("systemd-container_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(NSPAWN_DIR)], check=True)
    return str(binary)


class Booted:
    """The root booted by `systemd-nspawn -b` (systemd is its PID 1) — `run` enters it with
    nsenter. What nspawn needs on a machine whose PID 1 is not systemd (found on this sandbox,
    a Firecracker VM; docs/testing.md): a mount namespace of its own with a tmpfs on
    /run/systemd/nspawn (nspawn refuses to clean a directory there that is not on a tmpfs:
    "Attempted to remove disk file system under /run/systemd/nspawn/propagate/…, and we can't
    allow that"), --register=no and --keep-unit (no machined, no system bus to ask for a scope:
    "Failed to open system bus"), and a console that reads nothing."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root.resolve()
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.leader = 0
        self.made_run_dir = False

    def __enter__(self) -> Booted:
        needs_private_mounts()  # systemd-nspawn boots it in a mount namespace of its own
        BOOT_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self.lock = open(BOOT_LOCK, "a")  # (held until __exit__)
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # another booted root's run finishes first
        # the mount point of the private tmpfs (an empty directory of this machine's, removed after)
        self.made_run_dir = not NSPAWN_RUN.exists()
        NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
        boot = (f"mount -t tmpfs tmpfs /run/systemd/nspawn && exec {nspawn()} --register=no --keep-unit "
                f"--console=read-only --bind=/dev/fuse -D {self.root} -b")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", boot],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            return self._wait_booted()
        except BaseException:
            self.__exit__()
            raise

    def _wait_booted(self) -> Booted:
        assert self.proc is not None
        for _ in range(600):  # the leader appears in a second; the boot takes some more
            self.leader = self._leader()
            if self.leader:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)
        raise AssertionError(f"the container did not finish booting; its console: {self.log.read_text()[-2000:]}")

    def _leader(self) -> int:
        """The container's PID 1 as this machine numbers it: a descendant of our nspawn that is
        pid 1 of its own pid namespace (its /proc/PID/root reads "/" from here: another mount
        namespace)."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            except OSError:
                continue
            nspid = status.get("NSpid", "").split()
            if len(nspid) == 2 and nspid[1] == "1" and self._descends(int(entry.name)):
                return int(entry.name)
        return 0

    def _descends(self, pid: int) -> bool:
        assert self.proc is not None
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                stat = (Path("/proc") / str(pid) / "stat").read_text()
            except OSError:
                return False
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        return False

    def run(self, cmd: str, check: bool = True, timeout: float = 3600) -> subprocess.CompletedProcess:
        """`cmd` inside the booted container as root (bash -lc, a clean environment)."""
        res = subprocess.run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                              *ENV, "bash", "-lc", cmd], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"in the container: {cmd!r} exited {res.returncode}\n"
                                 f"stdout: {res.stdout[-4000:]}\nstderr: {res.stderr[-4000:]}")
        return res

    def __exit__(self, *exc: object) -> None:
        try:
            self._halt()
        finally:
            self.lock.close()  # (the flock goes with it)

    def _halt(self) -> None:
        if self.proc is None:
            return
        if self.leader and self.proc.poll() is None:
            self.run("systemctl poweroff", check=False, timeout=60)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # nspawn's own way out: it halts the container
            self.proc.wait(timeout=60)
        if self.made_run_dir:
            with contextlib.suppress(OSError):
                NSPAWN_RUN.rmdir()
