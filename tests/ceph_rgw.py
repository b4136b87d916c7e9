"""A private single-node Ceph cluster with its S3 gateway (RGW) for the S3 backend's tests (the
`ceph_rgw` fixtures; the optional `ceph` group, docs/testing.md) — and by hand:

    python -m tests.ceph_rgw up DIR [--bucket NAME]   # prints endpoint, keys and bucket as JSON
    python -m tests.ceph_rgw down DIR                 # stops the daemons, removes DIR

Debian 12's Ceph 16.2 Pacific (`ceph-mon ceph-osd ceph-mgr radosgw`); nothing is installed or
started as a system service, nothing is read or written in /etc/ceph, /var/lib/ceph or
/var/run/ceph: every daemon is started with `-c DIR/ceph.conf` and keeps its data, keyrings,
admin sockets and logs under DIR. One monitor (on a free port of 127.0.0.1), one manager, one
BlueStore OSD on a sparse file (`OSD_BYTES` apparent; no loop device or LVM: BlueStore makes
the file itself), pools of one copy, and one gateway per `Cluster.gateway` call (each on a free
port, all on the cluster's one S3 user). The monitor answers in a few seconds, S3 in 15–20 s
on an idle 2-core machine. The OSD and the manager take ports of Ceph's own range (6800–7300),
whichever are free.

A `Gateway` is the S3 engine a test sees, with `tests/seaweedfs.py`'s `Engine` interface
(endpoint, keys, `client`, `stop`, `start`): `stop` (SIGKILL, as a crash) takes the gateway
away mid-request while the cluster keeps the data; `start` brings it back on the same port and
returns once an object round trip works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.helpers import free_ports, log_tail

#: the programs a cluster needs (Debian: ceph-mon, ceph-osd, ceph-mgr, radosgw; ceph-common,
#: a dependency of each, brings the rest)
PROGRAMS = ("ceph-mon", "ceph-mgr", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
#: the OSD's file, apparent size: BlueStore allocates it sparse, so only what is written takes room
OSD_BYTES = 2 << 30
#: the longest one step may take on a loaded machine (each measured at a few seconds)
STEP_S = 180
#: the file naming a cluster directory as this module's (`down` removes nothing else)
MARK = "hoard-ceph.json"
#: the bucket `Gateway.start` writes a probe object to, to know the gateway takes writes
PROBE_BUCKET = "hoard-test-probe"


def missing_programs() -> list[str]:
    """The programs of `PROGRAMS` this machine lacks (none: a cluster can start here)."""
    return [p for p in PROGRAMS if shutil.which(p) is None]


def _conf(base: Path, fsid: str, mon_port: int, osd_bytes: int) -> str:
    # `$name`, `$id`: Ceph's own metavariables, each daemon's and client's name
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {base}/keyring
run dir = {base}/run
admin socket = {base}/run/$name.asok
log file = {base}/log/$name.log
pid file = {base}/run/$name.pid
crash dir = {base}/crash
# one OSD: pools of one copy, placed on it (no host to choose between), few placement groups
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
mon data avail warn = 1
[mon]
mon data = {base}/mon/$id
[mgr]
mgr data = {base}/mgr/$id
[osd]
osd data = {base}/osd/$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {osd_bytes}
bluestore fsck on mount = false
osd memory target = 1073741824
"""


@dataclass
class Gateway:
    """One radosgw of the cluster: its S3 endpoint and the cluster's S3 user."""

    cluster: Cluster
    name: str
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_key(self) -> str:
        return self.cluster.access_key

    @property
    def secret_key(self) -> str:
        return self.cluster.secret_key

    @property
    def log(self) -> Path:
        return self.cluster.base / "log" / f"client.rgw.{self.name}.log"

    def start(self) -> None:
        """Start the gateway (again: same name, same port) and wait until an object round trip works."""
        c = self.cluster
        keyring = c.base / "rgw" / f"{self.name}.keyring"
        if not keyring.exists():
            keyring.write_text(c.ceph("auth", "get-or-create", f"client.rgw.{self.name}", "mon", "allow rw",
                                      "osd", "allow rwx", "mgr", "allow rw"))
        self.proc = c.spawn(f"rgw.{self.name}", "radosgw", "-n", f"client.rgw.{self.name}", "--keyring", str(keyring),
                            "--rgw-frontends", f"beast endpoint=127.0.0.1:{self.port}",
                            "--rgw-data", str(c.base / "rgw" / self.name))
        c.wait(f"radosgw {self.name} to take writes at {self.endpoint}", self._ready, self.proc, self.log)

    def _ready(self) -> bool:
        """Whether a signed object round trip works (the cluster's first gateway: the S3 user is
        made once it answers at all)."""
        client = self.client()
        if not self.cluster.access_key:
            try:
                client.list_buckets()
            except ClientError:
                pass  # refused, as an unknown key should be: it answers
            except BotoCoreError:
                return False
            self.cluster.make_user()
            client = self.client()
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket=PROBE_BUCKET)
            client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
            return bool(client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ready")
        except (BotoCoreError, ClientError):
            return False

    def client(self):
        """A client of the test's own with the cluster's S3 user (makes and breaks buckets)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key or "none",
            aws_secret_access_key=self.secret_key or "none", region_name="us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5))

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """End the gateway (SIGKILL: as a crash; SIGTERM: a clean stop) and wait for it; the
        cluster keeps running."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc, sig)


@dataclass
class Cluster:
    """The daemons of one private cluster under `base` (its `ceph.conf`, data, sockets, logs)."""

    base: Path
    mon_port: int
    #: the OSD's file, apparent size (a benchmark's corpus needs more than a test's)
    osd_bytes: int = OSD_BYTES
    access_key: str = ""
    secret_key: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    gateways: list[Gateway] = field(default_factory=list, repr=False)

    @property
    def conf(self) -> Path:
        return self.base / "ceph.conf"

    # -- running things ------------------------------------------------------------------

    def run(self, *argv: str, stdin: str | None = None) -> str:
        """One Ceph command against this cluster (its conf first); its output, or RuntimeError
        naming the command and the end of what it said."""
        args = [argv[0], "-c", str(self.conf), *argv[1:]]
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=STEP_S, cwd=self.base,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-400:]}")
        return done.stdout

    def ceph(self, *argv: str, stdin: str | None = None) -> str:
        return self.run("ceph", "--connect-timeout", "10", *argv, stdin=stdin)

    def spawn(self, name: str, program: str, *argv: str) -> subprocess.Popen:
        """Start a daemon in the foreground of a session of its own (its log under log/), noted in
        the mark file for `down`."""
        with (self.base / "log" / f"{name}.stderr").open("ab") as err:
            proc = subprocess.Popen([program, "-f", "-c", str(self.conf), *argv], cwd=self.base,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        self.procs[name] = proc
        self._note()
        return proc

    def wait(self, what: str, ready, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < STEP_S:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"Ceph: {proc.args[0]} exited with {proc.returncode} while waiting for {what}: "
                                   f"{log_tail(log) if log else ''}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"Ceph: no {what} within {STEP_S} s: {log_tail(log) if log else ''}")

    def _note(self) -> None:
        (self.base / MARK).write_text(json.dumps({
            "mon_port": self.mon_port, "access_key": self.access_key, "secret_key": self.secret_key,
            "pids": {n: p.pid for n, p in self.procs.items()}, "gateways": {g.name: g.port for g in self.gateways}}))

    def _ok(self, *argv: str) -> bool:
        try:
            self.ceph(*argv)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    # -- the cluster -----------------------------------------------------------------------

    def up(self) -> None:
        """Make and start the monitor, the manager and the OSD; return once the OSD is up."""
        b = self.base
        for d in ("mon/a", "mgr/x", "osd/0", "rgw", "run", "log", "crash"):
            (b / d).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(_conf(b, fsid, self.mon_port, self.osd_bytes))
        self._note()
        keyring = str(b / "keyring")
        self.run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self.run("ceph-authtool", keyring, "--gen-key", "-n", "client.admin", "--cap", "mon", "allow *",
                 "--cap", "osd", "allow *", "--cap", "mgr", "allow *")
        self.run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                 str(b / "monmap"))
        self.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(b / "monmap"), "--keyring", keyring)
        mon = self.spawn("mon.a", "ceph-mon", "-i", "a")
        self.wait("monitor", lambda: self._ok("mon", "stat"), mon, b / "log" / "mon.a.log")

        mgr_keyring = b / "mgr" / "x" / "keyring"
        mgr_keyring.write_text(self.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr",
                                         "osd", "allow *", "mds", "allow *"))
        self.spawn("mgr.x", "ceph-mgr", "-i", "x", "--keyring", str(mgr_keyring))

        osd_uuid, osd_secret = str(uuid.uuid4()), self.run("ceph-authtool", "--gen-print-key").strip()
        osd_id = self.ceph("osd", "new", osd_uuid, "-i", "-", stdin=json.dumps({"cephx_secret": osd_secret})).strip()
        osd_keyring = b / "osd" / osd_id / "keyring"
        osd_keyring.parent.mkdir(parents=True, exist_ok=True)
        self.run("ceph-authtool", "--create-keyring", str(osd_keyring), "--name", f"osd.{osd_id}",
                 "--add-key", osd_secret)
        self.run("ceph-osd", "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid, "--keyring", str(osd_keyring))
        osd = self.spawn(f"osd.{osd_id}", "ceph-osd", "-i", osd_id, "--keyring", str(osd_keyring))
        self.wait("OSD up", lambda: '"num_up_osds":1' in self._osd_stat(), osd, b / "log" / f"osd.{osd_id}.log")

    def _osd_stat(self) -> str:
        try:
            return self.ceph("osd", "stat", "--format", "json").replace(" ", "")
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""

    def make_user(self) -> None:
        """The cluster's one S3 user, with a key pair of its own (once a gateway answers: the
        first one makes RGW's pools)."""
        access, secret = "hoard" + secrets.token_hex(6), secrets.token_hex(20)
        self.run("radosgw-admin", "user", "create", "--uid=hoard", "--display-name=hoard",
                 f"--access-key={access}", f"--secret={secret}")
        self.access_key, self.secret_key = access, secret
        self._note()

    def gateway(self, name: str = "a") -> Gateway:
        """A new radosgw of this cluster on a free port, started."""
        gw = Gateway(self, name, free_ports(1)[0])
        self.gateways.append(gw)
        gw.start()
        return gw

    def down(self) -> None:
        """End every daemon (gateways first, the monitor last): SIGKILL — what the cluster
        holds goes with its directory."""
        for gw in self.gateways:
            gw.stop()
        for proc in reversed(list(self.procs.values())):
            _end(proc, signal.SIGKILL)


def _end(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(base: Path, osd_bytes: int = OSD_BYTES) -> Cluster:
    """A new cluster under `base` (made; it must not exist or be empty) with one gateway, up;
    its OSD's file `osd_bytes` apparent."""
    base.mkdir(parents=True, exist_ok=True)
    if any(base.iterdir()):
        raise RuntimeError(f"{base} is not empty: give the cluster a directory of its own")
    cluster = Cluster(base, free_ports(1)[0], osd_bytes)
    try:
        cluster.up()
        cluster.gateway("a")
    except BaseException:
        cluster.down()
        raise
    return cluster


def serve(base: Path) -> Iterator[Cluster]:
    """The session's cluster under `base` (with gateway "a"), ended and removed after; a plain
    skip where Ceph is not installed: the `ceph` group is optional (docs/testing.md)."""
    if lacking := missing_programs():
        pytest.skip(f"Ceph RGW group: Ceph is not installed here (no {lacking[0]}); the optional `ceph` group "
                    "(docs/testing.md)")
    cluster = start(base)
    try:
        yield cluster
    finally:
        cluster.down()
        shutil.rmtree(base, ignore_errors=True)  # the OSD's file: not left for pytest's last three runs


def stop(base: Path) -> None:
    """End the daemons a `start` under `base` left running (by the pids its mark file names,
    each checked to be one of this cluster's) and remove `base`."""
    mark = base / MARK
    if not mark.is_file():
        raise RuntimeError(f"{base} holds no {MARK}: not a cluster of tests/ceph_rgw.py, nothing removed")
    pids = json.loads(mark.read_text())["pids"]
    for pid in reversed(list(pids.values())):
        try:
            if str(base / "ceph.conf") not in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
                continue  # that pid is another process's by now
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
        for _ in range(120):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.25)
    shutil.rmtree(base)


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.ceph_rgw", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster under DIR; print its S3 endpoint, keys and bucket (JSON)")
    up.add_argument("dir", type=Path)
    up.add_argument("--bucket", default="hoard", help="the bucket to make (default: hoard)")
    down = sub.add_parser("down", help="stop the cluster under DIR and remove DIR")
    down.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    base = args.dir.resolve()
    try:
        if args.cmd == "down":
            stop(base)
            print(f"stopped; {base} removed")
            return 0
        if lacking := missing_programs():
            print(f"Ceph is not installed here (no {', '.join(lacking)}): apt-get install ceph-mon ceph-osd ceph-mgr "
                  "radosgw", file=sys.stderr)
            return 2
        cluster = start(base)
        gw = cluster.gateways[0]
        gw.client().create_bucket(Bucket=args.bucket)
        for proc in cluster.procs.values():
            proc.returncode = 0  # left running on purpose: Popen's finaliser must not wait for them
        print(json.dumps({"endpoint": gw.endpoint, "access_key": gw.access_key, "secret_key": gw.secret_key,
                          "bucket": args.bucket, "dir": str(base)}))
        return 0
    except (RuntimeError, subprocess.TimeoutExpired, ClientError) as e:
        print(f"tests.ceph_rgw {args.cmd} {base}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_main())
