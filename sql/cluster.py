"""The private PostgreSQL cluster of the embedded default (initdb/pg_ctl under ./var/pg).

It listens on a unix socket only (`listen_addresses = ''`), so it never clashes with a
system PostgreSQL. PostgreSQL refuses to run as root; when we are root the cluster runs
as the `postgres` system user that Debian's package creates. That user must be able to
reach the data directory: if the checkout lives under a private home (e.g. /root), the
data directory is placed under /var/lib/hoardfs/ and ./var/pg becomes a symlink to it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write
from hoardfs.base.modes import passage
from hoardfs.base.proc import run, which

PG_BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
SERVER_USER = "postgres"
SUPERUSER = "hoard"


#: what the embedded default adds to the cluster's postgresql.conf, once (its first line says
#: it is there: a person may have changed the values since)
EMBEDDED_MARK = "# --- hoardfs embedded default ---"
EMBEDDED_SETTINGS = (
    f"\n{EMBEDDED_MARK}\n"
    "port = 5432\n"
    "max_connections = 100\n"
    "shared_buffers = 256MB\n"
    "logging_collector = off\n"
)


class PrivateCluster:
    """initdb / start / stop of one cluster; every step is idempotent."""

    def __init__(self, pg_dir: Path, socket_dir: Path) -> None:
        self.link = pg_dir
        self.socket_dir = socket_dir

    # -- where things are -------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.link.resolve() / "data"

    @property
    def log_file(self) -> Path:
        return self.link.resolve() / "postgres.log"

    def _run_as(self) -> list[str]:
        return run_as_server()

    def _pg(self, args: list[str], what: str) -> None:
        # cwd=/ because the server user may not be allowed into the caller's directory
        run(self._run_as() + args, what, cwd="/")

    def _bin(self, name: str) -> str:
        return which(name, "postgresql", PG_BIN_DIRS)

    def _prepare_dirs(self) -> None:
        """Create ./var/pg (or its /var/lib/hoardfs stand-in) owned by the server user."""
        if not self.link.exists():
            passage(self.link.parent)
            if os.geteuid() == 0 and not _reachable_by(SERVER_USER, self.link.parent):
                key = hashlib.sha256(str(self.link.absolute()).encode()).hexdigest()[:12]
                real = passage(Path("/var/lib/hoardfs")) / f"pg-{key}"
                real.mkdir(exist_ok=True)
                self.link.symlink_to(real)
            else:
                self.link.mkdir()
        self.socket_dir.mkdir(parents=True, exist_ok=True)  # inside the link (see EmbeddedConfig)
        give_to_server(self.link.resolve(), self.socket_dir)
        if os.geteuid() == 0:
            os.chmod(self.link.resolve(), 0o700)
            os.chmod(self.socket_dir, 0o755)

    # -- lifecycle ----------------------------------------------------------------
    def initdb(self) -> bool:
        """Create the cluster if it does not exist; True if it was created now. Durable when it
        returns: initdb syncs what it wrote, and the embedded settings replace postgresql.conf
        tmp → fsync → rename (appended in place, a power cut soon after left the file cut short
        — the server refused it — or without them). A cluster without them, cut between the
        two, gets them at the next call (every start calls this)."""
        self._prepare_dirs()
        created = not (self.data_dir / "PG_VERSION").exists()
        if created:
            self._pg([self._bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                 "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
                f"initdb of the private PostgreSQL cluster in {self.data_dir}")
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        if EMBEDDED_MARK not in text:
            _replace_durably(conf, text + EMBEDDED_SETTINGS)
        return created

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        res = subprocess.run(self._run_as() + [self._bin("pg_ctl"), "-D", str(self.data_dir), "status"],
                             capture_output=True, text=True, cwd="/")
        return res.returncode == 0

    def start(self) -> bool:
        """Start the server if it is not running; True if it was started now."""
        self.initdb()
        if self.is_running():
            return False
        # Socket and listen address follow the config at every start (not baked into the cluster).
        opts = f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir.resolve()}'"
        self._pg([self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
             "-o", opts, "-w", "-t", "60", "start"],
            f"starting PostgreSQL (log: {self.log_file})")
        return True

    def stop(self) -> bool:
        if not self.is_running():
            return False
        self._pg([self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
            "stopping PostgreSQL")
        return True


    def destroy(self) -> None:
        """Stop the server and delete the cluster (tests and `make clean`)."""
        self.stop()
        if self.link.is_symlink():
            shutil.rmtree(self.link.resolve(), ignore_errors=True)
            self.link.unlink()
        else:
            shutil.rmtree(self.link, ignore_errors=True)


def run_as_server() -> list[str]:
    """The command prefix that runs a program as the PostgreSQL server user (none unless root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise HoardError(
            f"running as root but there is no `{SERVER_USER}` user to run PostgreSQL; "
            "install the Debian package `postgresql` (make demo does this)", ExitCode.UNAVAILABLE,
        ) from None
    return [which("runuser", "util-linux"), "-u", SERVER_USER, "--"]


def _replace_durably(path: Path, text: str) -> None:
    """Replace a file of the server's (`atomic_write`: a power cut leaves the old file or the
    new one), the new one with the old one's mode and the server as its owner."""
    def as_the_old(fd: int) -> None:
        os.fchmod(fd, path.stat().st_mode & 0o777)
        give_fd_to_server(fd)

    atomic_write(path, text.encode(), as_the_old)


def give_fd_to_server(fd: int) -> None:
    """chown an open file to the server user (when root). By its descriptor, never a path: a
    file made in a directory the server owns could be swapped for a link before a chown by
    name, which follows it — root would give the server any file the link names."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVER_USER)
        os.fchown(fd, pw.pw_uid, pw.pw_gid)


def give_to_server(*paths: Path) -> None:
    """chown paths to the server user (when root: the server must own what it writes). A link
    at one of them is given, never followed: these are made in directories the server owns
    (pgBackRest's home), where it could have put a link to /etc in their place."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(SERVER_USER)
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def ensure_database(url: str) -> bool:
    """Create the database named in `url` on its server if missing; True if created."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    name = str(params.get("dbname") or "hoard")
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                return False
            conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
            return True
    except psycopg.OperationalError as e:
        raise HoardError(f"cannot create database {name!r}: {str(e).strip().splitlines()[0]}",
                         ExitCode.UNAVAILABLE) from None


def _reachable_by(user: str, path: Path) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return True  # _run_as reports the missing user
    res = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(path.resolve())],
                         capture_output=True, cwd="/")
    return res.returncode == 0
