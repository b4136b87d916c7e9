"""`hoard install` / `hoard uninstall`: from a checkout to running services under the `hoard`
user on Debian 12 (docs/operations.md, "Production install").

install, in this order, each step changing only what differs (idempotent; `--dry-run` prints
every change and makes none): the `hoard` system user and group; the disks, the SSD and the
mount point owned by it; /etc/hoard/hoard.toml from the flags, only if absent; the package
into /opt/hoardfs/venv from the checkout; /etc/fuse.conf's user_allow_other (a shared mount
only); the units and timers (systemd/, with this install's paths); the PostgreSQL role and
database on the system cluster; Redis; `hoard init` and `hoard db migrate`; pgBackRest for
the system cluster; the units started; `hoard health`.

Where systemd is not PID 1 (a chroot, a container without it) the units are written but not
started, and PostgreSQL and Redis are started with their own tools (pg_ctlcluster,
redis-server --daemonize): one line says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.config import ZONES, load
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import out
from hoardfs.cli._host import Host
from hoardfs.cli._takeover import SHARED_ZONES, Accounts, take_over
from hoardfs.sql import system as pgsys

VENV = Path("/opt/hoardfs/venv")
CONFIG = Path("/etc/hoard/hoard.toml")
UNIT_DIR = Path("/etc/systemd/system")
USER = "hoard"
HOME = Path("/var/lib/hoard")
MARK = "# installed by `hoard install`"
REDIS_UNIT = "hoard-redis.service"
#: started and enabled (the timers start the oneshot services)
ENABLE = (REDIS_UNIT, "hoard-mount.service", "hoard-worker@all.service", "hoard-gui.service",
          "hoard-backup.timer", "hoard-ingest.timer", "hoard-replicate.timer", "hoard-scrub.timer",
          "hoard-usage.timer", "hoard-smart.timer", "hoard-pgbackrest-full.timer", "hoard-pgbackrest-diff.timer")
#: what the shipped units name, replaced by this install's paths
SHIPPED_RW = "-/srv/hdd -/srv/ssd"
#: what hoard-ingest.service (the timer's `hoard ingest --ready`: 3A's signals, the batch states) may
#: write: the SSD alone
SHIPPED_SSD_RW = "-/srv/ssd"
#: the one path hoard-smart.service (root) may write: the SSD's state directory (its readings)
SHIPPED_SMART_RW = "-/srv/ssd/state"
SHIPPED_MOUNT = "/srv/hoard"
#: pgBackRest's repository on its disk (postgres's: not taken over with the disk)
REPO_DIR = "pgbackrest"


def _checkout() -> Path | None:
    """The checkout this `hoard` runs from (an editable install), if it is one."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() and (here / "systemd").is_dir() else None


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise HoardError(f"{flag} {v!r}: write it as {flag} NAME=VALUE", ExitCode.USAGE)
        pairs.append((key, val))
    return pairs


def config_text(disks: list[tuple[str, str]], ssd: Path, quotas: dict[str, float], mount: Path,
                shared_mount: bool, directory_disks: bool) -> str:
    """/etc/hoard/hoard.toml of a production install (docs/config.md names every key)."""
    lines = ["# written by `hoard install` from its flags; never overwritten — edit it (docs/config.md)",
             f'database_url = "postgresql://{pgsys.ROLE}@/{pgsys.DATABASE}?host={pgsys.SOCKET_DIR}"',
             '# a unix socket only the hoard group may open (systemd/hoard-redis.service)',
             'redis_url = "unix:///run/hoard-redis/redis.sock?db=0"', ""]
    if directory_disks:
        lines += ["[store]", "allow_directory_disks = true", ""]
    for label, path in disks:  # (TOML's basic strings take JSON's escapes: a quote in a flag stays a quote)
        lines += ["[[disks]]", f"label = {json.dumps(label)}", f"path = {json.dumps(str(path))}", ""]
    lines += ["[ssd]", f"root = {json.dumps(str(ssd))}", f"index_dir = {json.dumps(str(ssd / 'index'))}", ""]
    for zone in ZONES:
        lines += [f"[ssd.zones.{zone}]", f"quota_gb = {quotas[zone]:g}", ""]
    lines += ["[mount]", f"path = {json.dumps(str(mount))}"] + (["allow_other = true"] if shared_mount else []) + [""]
    lines += ["[gui]", '# localhost only: reach it through a TLS proxy (docs/operations.md, "The GUI behind a proxy")',
              'host = "127.0.0.1"', "port = 8080", ""]
    return "\n".join(lines)


def render_unit(text: str, rw_paths: list[Path], mount: Path, repo: Path | None, source: Path,
                ssd: Path = Path("/srv/ssd")) -> str:
    """A shipped unit with this install's paths: what the services may write, the mount point,
    the pgBackRest repository, the SSD's state directory (SMART's readings)."""
    text = text.replace(f"ReadWritePaths={SHIPPED_RW}", "ReadWritePaths=" + " ".join(map(str, rw_paths)))
    text = text.replace(f"ReadWritePaths={SHIPPED_SSD_RW}\n", f"ReadWritePaths={ssd}\n")
    text = text.replace(f"ReadWritePaths={SHIPPED_SMART_RW}", f"ReadWritePaths={ssd / 'state'}")
    if repo is not None:
        text = text.replace(" -/srv/hdd\n", f" {repo}\n")
    text = text.replace(SHIPPED_MOUNT, str(mount))
    return f"{MARK} from {source}/systemd; edit it there and run `hoard install` again\n{text}"


def unit_exec_start(text: str) -> list[list[str]]:
    """The ExecStart= commands of a unit's text (continuation lines joined, `-` prefixes dropped)."""
    joined = text.replace("\\\n", " ")
    cmds = []
    for line in joined.splitlines():
        if line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart="))
            argv[0] = argv[0].lstrip("-@+!")
            cmds.append(argv)
    return cmds


class Installer:
    def __init__(self, host: Host, source: Path, disks: list[tuple[str, str]], ssd: Path | None,
                 quotas: dict[str, float], shared_mount: bool, directory_disks: bool, backup_disk: str | None) -> None:
        self.h = host
        self.source = source
        self.flags = (disks, ssd, quotas, shared_mount, directory_disks)
        self.backup_disk = backup_disk
        self.systemd = host.systemd_runs()
        self.pending: str | None = None  # the configuration a dry run would write

    # -- what the configuration says ------------------------------------------------------------
    def load_config(self):
        """The installed configuration (the one written now, or kept; in a dry run of a first
        install, the one it would write)."""
        real = self.h.p(CONFIG)
        return _load(real.read_text() if real.exists() else self.pending)

    def hoard(self, *args: str) -> list[str]:
        return ["env", f"HOARD_CONFIG={CONFIG}", str(VENV / "bin" / "hoard"), *args]

    # -- the steps --------------------------------------------------------------------------------
    def user(self) -> None:
        if not self.h.group_exists(USER):
            self.h.run("the hoard group", ["groupadd", "--system", USER])
        if not self.h.user_exists(USER):
            self.h.run("the hoard user (no login, no shell)", ["useradd", "--system", "--gid", USER, "--home-dir",
                                                                str(HOME), "--shell", "/usr/sbin/nologin", USER])
        if not self.h.p(HOME).is_dir():
            self.h.run("its home", ["install", "-d", "-o", USER, "-g", USER, "-m", "0750", str(HOME)])

    def planned(self) -> str | None:
        """The configuration the flags make, when there is none yet — checked before the first
        step changes anything: the flags given, paths absolute, every key valid, every disk
        there (a refused install leaves no config behind that the next run would keep)."""
        disks, ssd, quotas, shared, dir_disks = self.flags
        if self.h.p(CONFIG).exists():
            return None
        if not disks or ssd is None:
            raise HoardError(f"{CONFIG} does not exist: give the disks and the SSD (--disk LABEL=PATH, one per HDD, "
                             "and --ssd PATH)", ExitCode.USAGE)
        for flag, path in [*((f"--disk {label}={path}", path) for label, path in disks), (f"--ssd {ssd}", str(ssd))]:
            if not Path(path).is_absolute():
                raise HoardError(f"{flag}: give an absolute path (the services do not run in this directory)",
                                 ExitCode.USAGE)
        text = config_text(disks, ssd, quotas, Path("/srv/hoard"), shared, dir_disks)
        cfg = _load(text, f"{CONFIG} (as the flags make it)")  # one line naming the key
        self.missing_disks(cfg)
        return text

    def missing_disks(self, cfg) -> None:
        if cfg.store.allow_directory_disks:
            return
        for d in cfg.disks:
            if not self.h.p(d.path).is_dir():
                raise HoardError(f"disk {d.label}: {d.path} does not exist; mount the disk there first",
                                 ExitCode.UNAVAILABLE)

    def config(self, text: str | None) -> None:
        disks, ssd = self.flags[0], self.flags[1]
        if text is None:
            out.print(f"config: {CONFIG} exists, kept" + (" (--disk/--ssd/--quota not applied: edit it)"
                                                          if disks or ssd else ""), markup=False)
            return
        if not self.h.p("/etc/hoard").is_dir():
            self.h.run("the configuration's directory", ["install", "-d", "-o", "root", "-g", USER, "-m", "0750",
                                                         "/etc/hoard"])
        self.h.write(CONFIG, text, 0o640, f"root:{USER}")
        self.pending = text

    def directories(self, cfg) -> None:
        """The disks, the SSD and the mount point: the services write there as hoard."""
        disks = [(d.label, d.path) for d in cfg.disks]
        ssd = cfg.ssd.root
        mount = cfg.mount.path or Path(SHIPPED_MOUNT)
        self.missing_disks(cfg)
        for label, path in disks:
            self._own(f"disk {label}", Path(path), "0751", skip=(REPO_DIR,))
        self._own("ssd", ssd, "0751", shared=SHARED_ZONES)
        if not cfg.index_dir.is_relative_to(ssd):
            self._own("the index", cfg.index_dir, "0750")
        self._own("the mount point", mount, "0755", tree=False)

    def _own(self, what: str, path: Path, mode: str, skip: tuple[str, ...] = (), shared: tuple[str, ...] = (),
             tree: bool = True) -> None:
        """`path` a directory of hoard's, of `mode`: made if missing; one whose top is not hoard's
        was made before the install (by a root-run hoardfs, another server's): what it holds is
        taken over once (cli/_takeover.py: `skip` and `shared` as there), or — not a `tree`
        — its top only."""
        real = _followed(self.h, path)
        try:
            real.stat()
        except PermissionError:  # a FUSE mount without allow_other: even root may not look (hoard's mount)
            out.print(f"{what}: {path} is mounted by another user (the running hoard-mount.service), kept", markup=False)
            return
        except FileNotFoundError:
            pass
        if not tree and os.path.ismount(real):  # a shared mount, running: the mount's nodes, never chowned
            out.print(f"{what}: {path} is mounted (the running hoard-mount.service), kept", markup=False)
            return
        if not real.is_dir():
            self.h.run(f"{what}: make {path}", ["install", "-d", "-o", USER, "-g", USER, "-m", mode, str(path)])
            return
        st = real.stat()
        if not self.h.user_exists(USER) or self.h.name_of(st.st_uid) != USER:
            if tree:
                self._take_over(what, path, USER, "the services run as it", skip, shared)
            else:
                self.h.run(f"{what}: to {USER}", ["chown", f"{USER}:{USER}", str(path)])
        if st.st_mode & 0o777 != int(mode, 8):  # (the setgid bit hoard gives its directories stays: chmod keeps it)
            self.h.run(f"{what}: mode {mode}", ["chmod", mode, str(path)])

    def _take_over(self, what: str, path: Path, owner: str, why: str, skip: tuple[str, ...] = (),
                   shared: tuple[str, ...] = ()) -> None:
        """Give `owner` the tree at `path` made before the install (cli/_takeover.py), once:
        one change for all its entries; a file it keeps is named with the command to give it."""
        acc = Accounts.of(self.h.p("/etc"))
        uid, gid, real = acc.users.get(owner), acc.groups.get(owner), _followed(self.h, path)
        found = take_over(real, uid, gid, acc, skip, shared)
        if found.others:
            raise HoardError(f"{what}: {path} holds files of other accounts ({', '.join(found.others[:3])}"
                             f"{' …' if len(found.others) > 3 else ''}): not a tree hoardfs made, and nothing of it was "
                             f"given to {owner} — name an empty directory or a hoardfs one; if these are hoardfs's, "
                             f"`find {path} ! -user root ! -user {owner}` lists them: give them to root and install "
                             "again", ExitCode.USAGE)
        for rel in found.linked[:5]:
            out.print(f"{what}: problem: {path / rel} has more than one hard link: kept as it is (a link another "
                      f"account made would hand over the file it names); if it is hoardfs's, `chown {owner}:{owner} "
                      f"{path / rel}`", markup=False)
        if len(found.linked) > 5:
            out.print(f"{what}: problem: {len(found.linked) - 5} more such files kept under {path}: `find {path} "
                      f"-type f -links +1 ! -user {owner}` lists them", markup=False)
        if found.entries:
            self.h.change(f"{what}: {found.entries} entr{'y' if found.entries == 1 else 'ies'} of {path} made before "
                          f"the install (by root, or by a user or group this system does not have) given to {owner} "
                          f"({why}; once)", lambda: take_over(real, uid, gid, acc, skip, shared, apply=True))

    def venv(self) -> None:
        stamp = self.h.p(VENV / ".hoard-source")
        want = _source_stamp(self.source)
        if not self.h.p(VENV / "bin" / "python").exists():
            self.h.run("the virtual environment", ["/usr/bin/python3", "-m", "venv", str(VENV)])
        if stamp.exists() and stamp.read_text() == want:
            out.print(f"venv: {VENV} has hoardfs from {self.source} at {want.split()[-1]}, kept", markup=False)
            return
        self.h.run("hoardfs into the venv", [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                                             str(self.source)])
        self.h.write(VENV / ".hoard-source", want, 0o644)

    def fuse(self, cfg) -> None:
        shared = cfg.mount.allow_other
        conf = self.h.p("/etc/fuse.conf")
        text = conf.read_text() if conf.exists() else ""
        on = any(line.strip() == "user_allow_other" for line in text.splitlines())
        if shared and not on:
            self.h.write("/etc/fuse.conf", text.rstrip("\n") + "\n# hoard install: a shared mount (mount.allow_other)\n"
                         "user_allow_other\n", 0o644)
        elif not shared:
            out.print("fuse: the mount is the hoard group's only (mount.allow_other unset): /etc/fuse.conf "
                      "left as it is", markup=False)
        dev = self.h.p("/dev/fuse")
        if dev.exists() and not dev.stat().st_mode & 0o006:
            # libfuse opens /dev/fuse as the mount's user before it calls fusermount3: "fuse: failed to open
            # /dev/fuse: Permission denied", and no fallback
            out.print(f"fuse: problem: /dev/fuse is mode {dev.stat().st_mode & 0o777:04o}: hoard-mount.service (user "
                      f"{USER}) cannot open it; Debian's udev makes it 0666 — `chmod 0666 /dev/fuse` (and find what "
                      "changed it)", markup=False)

    def units(self, cfg, repo: Path | None) -> list[str]:
        """Write the units; the names written."""
        rw = sorted({*(d.path for d in cfg.disks), cfg.ssd.root, cfg.index_dir}, key=str)
        mount = cfg.mount.path or Path(SHIPPED_MOUNT)
        written = []
        for unit in sorted((self.source / "systemd").iterdir()):
            text = render_unit(unit.read_text(), rw, mount, repo if unit.name.startswith("hoard-pgbackrest@") else None,
                               self.source, cfg.ssd.root)
            if self.h.write(UNIT_DIR / unit.name, text, 0o644):
                written.append(unit.name)
        if written and self.systemd:
            self.h.run("systemd reads the units", ["systemctl", "daemon-reload"])
        return written

    def postgresql(self) -> pgsys.SystemCluster:
        versions = pgsys.pg_versions(self.h.root)
        if not versions:
            if self.h.dry_run:
                out.print("postgresql: not installed here yet (make install installs the Debian package first); "
                          "its version is taken as 15 below", markup=False)
                return pgsys.SystemCluster("15")
            raise HoardError("PostgreSQL is not installed: install the Debian package postgresql "
                             "(make install does)", ExitCode.UNAVAILABLE)
        cluster = pgsys.SystemCluster(versions[0])
        if not self.h.p(cluster.data_dir / "PG_VERSION").exists():
            self.h.run("the system cluster", ["pg_createcluster", cluster.version, cluster.name])
        self._start_postgresql(cluster)
        role = self.h.probe(["psql", "-XAtq", "-c", pgsys.ROLE_QUERY], user="postgres")
        row = role.stdout.strip() if role is not None and role.returncode == 0 else ""
        if not row:
            self.h.run(f"role {pgsys.ROLE} (peer authentication: the hoard user only; no superuser, may create "
                       "the scratch database of a restore-verify)",
                       ["createuser", "--no-superuser", "--createdb", "--no-createrole", pgsys.ROLE], user="postgres")
        elif row.split("|")[1] != "t":
            self.h.run(f"role {pgsys.ROLE}: CREATEDB (a dump's restore-verify makes a scratch database)",
                       ["psql", "-XAtq", "-c", f"ALTER ROLE {pgsys.ROLE} CREATEDB"], user="postgres")
        if row.startswith("t|"):
            out.print(f"postgresql: role {pgsys.ROLE} is a superuser: kept (`ALTER ROLE {pgsys.ROLE} NOSUPERUSER` "
                      "takes it away)", markup=False)
        else:
            out.print(f"postgresql: {pgsys.NOT_SUPERUSER_NOTE}", markup=False)
        db = self.h.probe(["psql", "-XAtq", "-c", pgsys.DATABASE_QUERY], user="postgres")
        if db is None or db.returncode != 0 or not db.stdout.strip():
            self.h.run(f"database {pgsys.DATABASE}", ["createdb", "-O", pgsys.ROLE, pgsys.DATABASE], user="postgres")
        return cluster

    def _start_postgresql(self, cluster: pgsys.SystemCluster) -> None:
        if self.systemd:
            if self._down(["postgresql.service"]):
                self.h.run("PostgreSQL started and enabled", ["systemctl", "enable", "--now", "postgresql.service"])
            return
        st = self.h.probe(["pg_lsclusters", "-h", cluster.version, cluster.name])
        if st is None or "online" not in st.stdout:
            self.h.run("PostgreSQL started with its own tool (no systemd)",
                       ["pg_ctlcluster", cluster.version, cluster.name, "start"])

    def redis(self) -> None:
        if self.systemd:
            return  # enabled with the other units
        sock = Path("/run/hoard-redis/redis.sock")
        ping = self.h.probe(["redis-cli", "-s", str(sock), "ping"])
        if ping is not None and ping.stdout.strip() == "PONG":
            out.print(f"redis: running at {sock}", markup=False)
            return
        [argv] = unit_exec_start((self.source / "systemd" / REDIS_UNIT).read_text())
        argv = [a for a in argv if a not in ("--supervised", "systemd")]
        argv[argv.index("--daemonize") + 1] = "yes"
        argv += ["--pidfile", "/run/hoard-redis/redis.pid", "--logfile", "/var/lib/hoard-redis/redis.log"]
        for d in ("/run/hoard-redis", "/var/lib/hoard-redis"):
            if not self.h.p(d).is_dir():
                self.h.run(f"Redis's directory {d}", ["install", "-d", "-o", "redis", "-g", USER, "-m", "0750", d])
        self.h.run("Redis started with its own tool (no systemd), as the unit would",
                   ["sh", "-c", "umask 0007 && exec " + shlex.join(argv)], user="redis", group=USER)

    def store(self) -> None:
        """`hoard init` and `hoard db migrate` as hoard: each changes only what is missing."""
        self.h.run("the store's directories and identity files", self.hoard("init"), user=USER, change=False)
        self.h.run("the database schema", self.hoard("db", "migrate"), user=USER, change=False)

    def repo(self, cfg) -> tuple[str, Path]:
        """(disk label, path) of pgBackRest's repository: on --backup-disk, else the first disk."""
        label = self.backup_disk or cfg.disks[0].label
        disk = next((d for d in cfg.disks if d.label == label), None)
        if disk is None:
            raise HoardError(f"--backup-disk {label}: no such disk in {CONFIG} (its disks: "
                             f"{', '.join(d.label for d in cfg.disks)})", ExitCode.USAGE)
        return label, disk.path / REPO_DIR

    def backrest(self, cfg, cluster: pgsys.SystemCluster) -> Path:
        label, repo = self.repo(cfg)
        if not self.h.p(repo).is_dir():
            self.h.run(f"pgBackRest's repository on disk {label}",
                       ["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0750", str(repo)])
        elif self.h.name_of(self.h.p(repo).stat().st_uid) != "postgres":  # another server's, moved here
            self._take_over(f"pgBackRest's repository on disk {label}", repo, "postgres", "pgBackRest runs as it")
        if not self.h.p(pgsys.LOCK_DIR).is_dir():
            self.h.run("pgBackRest's lock directory", ["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0750",
                                                       str(pgsys.LOCK_DIR)])
        self.h.write(pgsys.BACKREST_CONF, pgsys.backrest_conf_text(repo, cluster), 0o640, "root:postgres")
        changed = self.h.write(cluster.conf_d / "hoard-pgbackrest.conf", pgsys.archive_settings_text(), 0o644,
                               "postgres:postgres")
        mode = self.h.probe(["psql", "-XAtq", "-c", "SHOW archive_mode"], user="postgres")
        if changed or mode is None or mode.stdout.strip() != "on":
            if self.systemd:
                self.h.run("PostgreSQL restarted (archive_mode)", ["systemctl", "restart", cluster.unit])
            else:
                self.h.run("PostgreSQL restarted (archive_mode)", ["pg_ctlcluster", cluster.version, cluster.name,
                                                                  "restart"])
        br = ["pgbackrest", f"--config={pgsys.BACKREST_CONF}", f"--stanza={pgsys.STANZA}"]
        if changed or not self.h.p(repo / "backup" / pgsys.STANZA / "backup.info").exists():
            self.h.run("the pgBackRest stanza", [*br, "stanza-create"], user="postgres")
        if not self.h.dry_run:  # a WAL switch and its archiving: changes nothing worth a line
            check = self.h.probe([*br, "check"], user="postgres")
            if check is None or check.returncode != 0:
                tail = " | ".join(((check.stderr or check.stdout) if check else "pgbackrest missing").strip().splitlines()[-2:])
                raise HoardError(f"pgBackRest's check failed ({tail}); its log is in /var/log/pgbackrest",
                                 ExitCode.UNAVAILABLE)
            out.print(f"pgbackrest: stanza {pgsys.STANZA} checked: WAL archives into {repo}", markup=False)
        return repo

    def start(self) -> None:
        if not self.systemd:
            out.print("units: written, not started — systemd is not PID 1 here (a chroot or a container); they "
                      "start at the next boot under systemd", markup=False)
            return
        wanted = list(ENABLE)
        if not self._gui_users():
            wanted.remove("hoard-gui.service")
            out.print("gui: not started — no GUI users yet: `hoard users add NAME --role admin`, then `systemctl "
                      "enable --now hoard-gui` (it listens on 127.0.0.1:8080; docs/operations.md for the TLS proxy)",
                      markup=False)
        down = self._down(wanted)
        if down:
            self.h.run("the services and timers started and enabled", ["systemctl", "enable", "--now", *down])
        else:
            out.print(f"units: the {len(wanted)} services and timers are enabled and running", markup=False)

    def _gui_users(self) -> bool:
        res = self.h.probe(self.hoard("users", "list", "--json"), user=USER)
        return res is not None and res.returncode == 0 and res.stdout.strip() not in ("", "[]")

    def _down(self, units: list[str]) -> list[str]:
        """Those of `units` that are not both enabled and active."""
        down = []
        for unit in units:
            active = self.h.probe(["systemctl", "is-active", "--quiet", unit])
            enabled = self.h.probe(["systemctl", "is-enabled", "--quiet", unit])
            if not (active and enabled and active.returncode == 0 and enabled.returncode == 0):
                down.append(unit)
        return down

    def health(self) -> None:
        if self.h.dry_run:
            out.print(f"health: `hoard health` runs as {USER} at the end", markup=False)
            return
        res = subprocess.run(self.h.argv(self.hoard("health"), user=USER), capture_output=True, text=True, cwd="/")
        for line in (res.stdout + res.stderr).strip().splitlines():
            out.print(f"health: {line}", markup=False)
        if res.returncode not in (0, int(ExitCode.DEGRADED)):
            raise HoardError(f"`hoard health` exited {res.returncode} after the install: fix what it names, then run "
                             "`hoard install` again", ExitCode.UNAVAILABLE)


def _load(text: str | None, named: str = str(CONFIG)):
    """The settings of a configuration's text (its errors are one line naming the key, and
    `named`, not the scratch file it was read from)."""
    if text is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hoard.toml"
        path.write_text(text)
        try:
            return load(path)
        except HoardError as e:
            raise HoardError(e.message.replace(str(path), named), ExitCode.USAGE) from None


def _followed(host: Host, path: Path) -> Path:
    """`path` of the target system as seen from here, a link at it followed inside that system
    (a disk reached through one: its own directory, as `chown -R` in a chroot of it would) — an
    absolute link's target is the target system's, not this host's."""
    real = host.p(path)
    for _ in range(40):  # (the kernel's own bound on a chain of links)
        try:
            if not real.is_symlink():
                return real
        except PermissionError:  # a FUSE mount without allow_other (hoard's): no link; `_own` says what it is
            return real
        target = Path(os.readlink(real))
        real = host.p(target) if target.is_absolute() else real.parent / target
    raise HoardError(f"{path}: too many levels of symbolic links", ExitCode.DATA)


def _source_stamp(source: Path) -> str:
    """What the venv was installed from: the checkout and its commit (plus a digest of
    uncommitted changes), so the same checkout is not installed twice."""
    git = shutil.which("git")
    if git is None or not (source / ".git").exists():
        return f"{source} unversioned-{os.urandom(4).hex()}"
    head = subprocess.run([git, "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    diff = subprocess.run([git, "-C", str(source), "diff", "HEAD"], capture_output=True).stdout
    dirty = f"+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else ""
    return f"{source} {head}{dirty}"


def _quotas(values: list[str], ssd: Path | None, root: Path) -> dict[str, float]:
    """Each zone's quota: as given (`--quota 3A=300`), else a tenth of the SSD's file system."""
    given = {}
    for zone, gb in _pairs(values, "--quota"):
        if zone not in ZONES:
            raise HoardError(f"--quota {zone}={gb}: the zones are {', '.join(ZONES)}", ExitCode.USAGE)
        try:
            given[zone] = float(gb)
        except ValueError:
            raise HoardError(f"--quota {zone}={gb}: the quota is a number of GiB", ExitCode.USAGE) from None
    probe = root / str(ssd or "/").lstrip("/")
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    tenth = max(1, round(st.f_blocks * st.f_frsize / 10 / 2**30))
    return {z: given.get(z, tenth) for z in ZONES}


def install(
    disk: Annotated[list[str] | None, typer.Option("--disk", metavar="LABEL=PATH",
                                                   help="an HDD (repeat for each)")] = None,
    ssd: Annotated[Path | None, typer.Option("--ssd", help="the SSD's root (zones 3A-3D and the index)")] = None,
    quota: Annotated[list[str] | None, typer.Option("--quota", metavar="ZONE=GB", help="a zone's quota in GiB "
                                                    "(default: a tenth of the SSD's file system each)")] = None,
    shared_mount: Annotated[bool, typer.Option("--shared-mount", help="others may look the mount up (allow_other; "
                                               "user_allow_other in /etc/fuse.conf)")] = False,
    directory_disks: Annotated[bool, typer.Option("--allow-directory-disks", help="accept directories as disks "
                                                  "(tests and trials: store.allow_directory_disks)")] = False,
    backup_disk: Annotated[str | None, typer.Option("--backup-disk", metavar="LABEL", help="the HDD of pgBackRest's "
                                                    "repository (default: the first disk)")] = None,
    source: Annotated[Path | None, typer.Option("--source", help="the checkout to install (default: the one this "
                                                "hoard runs from)")] = None,
    root: Annotated[Path, typer.Option("--root", help="install into the system rooted here (a chroot; its programs "
                                       "run with chroot)")] = Path("/"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print every change and make none")] = False,
) -> None:
    """Install hoardfs as services of the `hoard` user (root; idempotent). docs/operations.md."""
    if os.geteuid() != 0 and not dry_run:
        raise HoardError("hoard install changes the system: run it as root (or see what it would do with --dry-run)",
                         ExitCode.USAGE)
    # what it installs is everyone's to read (the venv, the units: the hoard and postgres users
    # run them), not hoard's own umask (0027: hoardfs.base.modes) — the venv's modules unreadable
    # to hoard failed its first `hoard init`; the files that must be closed get their mode
    os.umask(0o022)
    src = (source or _checkout())
    if src is None or not (src / "systemd").is_dir():
        raise HoardError("no checkout to install from: give --source (the directory with pyproject.toml and "
                         "systemd/)", ExitCode.USAGE)
    disks = _pairs(disk or [], "--disk")
    if backup_disk and disks and backup_disk not in dict(disks):
        raise HoardError(f"--backup-disk {backup_disk}: not one of the --disk labels ({', '.join(dict(disks))})",
                         ExitCode.USAGE)
    host = Host(root, dry_run)
    inst = Installer(host, src.resolve(), disks, ssd, _quotas(quota or [], ssd, host.root), shared_mount, directory_disks,
                     backup_disk)
    text = inst.planned()  # a bad flag or a missing disk stops here, before the first change
    if not inst.systemd:
        out.print("systemd is not PID 1 here (a chroot or a container): PostgreSQL and Redis are started with their "
                  "own tools, the units are written but not started", markup=False)
    inst.user()
    inst.config(text)
    cfg = inst.load_config()
    _, repo = inst.repo(cfg)  # a wrong --backup-disk stops here, before anything else changes
    inst.directories(cfg)
    inst.venv()
    inst.fuse(cfg)
    cluster = inst.postgresql()
    inst.units(cfg, repo)
    inst.redis()
    inst.store()
    inst.backrest(cfg, cluster)
    inst.start()
    inst.health()
    out.print(f"{'dry run: ' if dry_run else ''}{host.changes} change{'s' * (host.changes != 1)}"
              f"{' would be made' if dry_run else ''}", markup=False)


def uninstall(
    root: Annotated[Path, typer.Option("--root", help="the system rooted here (a chroot)")] = Path("/"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print every change and make none")] = False,
) -> None:
    """Remove the units and the venv; never data (disks, SSD, database, /etc/hoard are kept)."""
    if os.geteuid() != 0 and not dry_run:
        raise HoardError("hoard uninstall changes the system: run it as root (or --dry-run)", ExitCode.USAGE)
    host = Host(root, dry_run)
    ours = sorted(p.name for p in host.p(UNIT_DIR).glob("hoard-*") if p.is_file() and p.read_text().startswith(MARK))
    if ours and host.systemd_runs():
        running = [u for u in ENABLE if u in ours or u.replace("@all", "@") in ours]
        host.run("the services and timers stopped and disabled", ["systemctl", "disable", "--now", *running],
                 check=False)
    for name in ours:
        host.remove(UNIT_DIR / name)
    if ours and host.systemd_runs():
        host.run("systemd forgets the units", ["systemctl", "daemon-reload"])
    cfg = _load(host.p(CONFIG).read_text()) if host.p(CONFIG).exists() else None
    kept = [f"{CONFIG.parent}/ (the configuration)", f"the {USER} user and group",
            f"PostgreSQL's role and database {pgsys.DATABASE}, pgBackRest's stanza ({pgsys.BACKREST_CONF}) and "
            "archiving", "Redis's queues (/var/lib/hoard-redis)"]
    if cfg is not None:
        kept[:0] = [f"disk {d.label} ({d.path})" for d in cfg.disks] + [f"the SSD ({cfg.ssd.root})"]
    out.print("kept (data is never removed): " + "; ".join(kept), markup=False)
    if not host.systemd_runs():
        out.print("systemd is not PID 1 here: PostgreSQL and Redis, if running, were left running", markup=False)
    host.remove(VENV)  # last: this hoard may run from it
