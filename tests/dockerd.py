"""A real Docker daemon for the docker run_spec tests (`docker_daemon` fixture, services tier).

Debian's `docker.io` (dockerd, containerd, runc) and `busybox-static`, which `make deps`
installs, started by hand once per test session (no systemd here) as its own daemon: its data
root, exec root and socket in a new directory under /var/tmp (overlay2 on the machine's disk;
vfs when overlay2 cannot run), no iptables and no bridge (`--iptables=false --bridge=none`) —
hoard's containers run with `--network none`, and nothing of the host's networking is touched.
It is stopped at the session's end. $HOARD_TEST_DOCKER_HOST names a running daemon to use
instead (then nothing is started or stopped).

There is no registry here: the test image is `docker import`ed from a tarball of a tiny root
filesystem — busybox-static's /bin/busybox, the applets the worker uses as links to it, and
/worker.sh (WORKER). Needs root (dockerd does); where the daemon cannot run, the tests that
need it are skipped loudly, and fail under CI (helpers.missing).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import missing

#: how long a fresh daemon may take to answer
START_S = 60
#: the test image (`docker import`ed, never pulled)
IMAGE = "hoard-test-worker:1"
BUSYBOX = Path("/bin/busybox")
#: the applets worker.sh runs
APPLETS = ("sh", "echo", "id", "find", "mkdir", "touch", "sleep", "ls", "cat", "rm", "tr")

#: /worker.sh INPUT OUTPUT PAUSE: each input file → copies/<its name>, a line then the input's bytes
#: (a child: an identical copy would be the input itself, one node); facts.jsonl: for
#: each input, the uid the container runs as, whether the input could be written, the container's
#: network interfaces (labels); then sleeps PAUSE seconds (a worker that hangs) unless /fast exists
WORKER = r"""#!/bin/sh
in=$1 out=$2 pause=$3
mkdir -p "$out/copies" || exit 10
uid=$(id -u)
if touch "$in/hoard-write-probe" 2>/dev/null; then input=writable; rm -f "$in/hoard-write-probe"; else input=read-only; fi
net=$(ls /sys/class/net | tr '\n' ' ')
for f in $(find "$in" -type f); do
  name=${f##*/}
  sha=${name%%.*}
  { echo "copied in docker"; cat "$f"; } > "$out/copies/$name" || exit 11
  printf '{"sha": "%s", "key": "docker_uid", "value": "%s"}\n' "$sha" "$uid" >> "$out/facts.jsonl"
  printf '{"sha": "%s", "key": "docker_input", "value": "%s"}\n' "$sha" "$input" >> "$out/facts.jsonl"
  printf '{"sha": "%s", "key": "docker_network", "value": "%s"}\n' "$sha" "${net% }" >> "$out/facts.jsonl"
done
[ -e /fast ] || sleep "$pause"
"""


@dataclass(frozen=True)
class Daemon:
    host: str           # DOCKER_HOST for the client
    docker: str         # the client

    def run(self, *args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": self.host}
        return subprocess.run([self.docker, *args], input=stdin, capture_output=True, env=env, timeout=timeout)

    def containers(self, name: str) -> list[str]:
        """Every container (running or not) whose name is `name`: `docker ps -a`."""
        res = self.run("ps", "--all", "--quiet", "--filter", f"name=^/{name}$")
        assert res.returncode == 0, res.stderr
        return res.stdout.decode().split()

    def import_image(self, tag: str = IMAGE, *, fast: bool = False) -> None:
        """`docker import` of the tiny root filesystem as `tag` (fast: the worker never pauses)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            def add(name: str, data: bytes | None = None, mode: int = 0o755, kind: bytes = tarfile.REGTYPE,
                    link: str = "") -> None:
                info = tarfile.TarInfo(name)
                info.mode, info.type, info.linkname = mode, kind, link
                info.size = len(data) if data is not None else 0
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
            for d in ("bin", "tmp", "input", "output", "sys", "proc", "dev", "etc"):
                add(d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
            add("bin/busybox", BUSYBOX.read_bytes())
            for applet in APPLETS:
                add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
            add("worker.sh", WORKER.encode())
            if fast:
                add("fast", b"", mode=0o644)
        res = self.run("import", "--change", "ENV PATH=/bin", "-", tag, stdin=buf.getvalue())
        assert res.returncode == 0, res.stderr


def _answers(docker: str, host: str) -> bool:
    try:
        return subprocess.run([docker, "version"], env={**os.environ, "DOCKER_HOST": host}, capture_output=True,
                              timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _tail(log: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "level=info" not in ln]
        return " | ".join(lines[-n:])
    except OSError:
        return "(no log)"


def _start(dockerd: str, docker: str, base: Path, driver: str | None) -> tuple[subprocess.Popen, str] | str:
    """dockerd under `base`: (process, DOCKER_HOST) once it answers, else the reason it did not."""
    sock = base / "docker.sock"
    log = base / f"dockerd{'-' + driver if driver else ''}.log"
    argv = [dockerd, "--data-root", str(base / "data"), "--exec-root", str(base / "x"), "--pidfile",
            str(base / "dockerd.pid"), "--host", f"unix://{sock}", "--iptables=false", "--ip6tables=false",
            "--bridge=none"] + (["--storage-driver", driver] if driver else [])
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    host = f"unix://{sock}"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"dockerd exited with status {proc.returncode}: {_tail(log)}"
        if sock.exists() and _answers(docker, host):
            return proc, host
        time.sleep(0.2)
    _stop(proc)
    return f"dockerd did not answer within {START_S} s: {_tail(log)}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def serve() -> Iterator[Daemon]:
    """A Docker daemon for the session with the test image in it (the module docstring)."""
    docker = shutil.which("docker")
    if docker is None:
        missing("DOCKER CLIENT MISSING: install docker.io (`make deps`)")
    assert docker is not None
    given = os.environ.get("HOARD_TEST_DOCKER_HOST")
    if given:
        if not _answers(docker, given):
            missing(f"DOCKER DAEMON AT HOARD_TEST_DOCKER_HOST={given} DOES NOT ANSWER (`docker version`)")
        daemon = Daemon(given, docker)
        daemon.import_image()
        yield daemon
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or not BUSYBOX.is_file():
        missing("DOCKER DAEMON MISSING: install docker.io and busybox-static (`make deps`)")
    assert dockerd is not None
    if os.geteuid() != 0:
        missing("DOCKER DAEMON NEEDS ROOT: run the tests as root, or set HOARD_TEST_DOCKER_HOST to a running daemon")
    base = Path(tempfile.mkdtemp(prefix="hoard-dockerd-", dir="/var/tmp"))
    try:
        started = _start(dockerd, docker, base, None)
        if isinstance(started, str):  # overlay2 cannot run on every filesystem/kernel: vfs copies, but runs
            first = started
            started = _start(dockerd, docker, base, "vfs")
            if isinstance(started, str):
                missing(f"DOCKER DAEMON CANNOT RUN HERE: {first}; with --storage-driver vfs: {started}")
        assert not isinstance(started, str)
        proc, host = started
        try:
            daemon = Daemon(host, docker)
            daemon.import_image()
            yield daemon
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
