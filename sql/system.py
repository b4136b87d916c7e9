"""The system PostgreSQL cluster of a production install (`hoard install`): Debian's
`postgresql` package, peer authentication, a service role that is not a superuser, and a
pgBackRest stanza whose repository is on an HDD.

What is text and SQL lives here; `hoardfs.cli.install` runs it (as the postgres user) and
`hoardfs.sql.pgbackrest.BackRest.system` reads the configuration back for the backup unit.
"""

from __future__ import annotations

import configparser
import glob
from dataclasses import dataclass
from pathlib import Path

#: the stanza's configuration, readable by postgres (the archive_command runs as postgres)
BACKREST_CONF = Path("/etc/pgbackrest/hoard.conf")
STANZA = "hoard"
ROLE = "hoard"
DATABASE = "hoard"
SOCKET_DIR = Path("/var/run/postgresql")
#: pgBackRest's locks beside the cluster, not in /tmp: the backup unit has a /tmp of its own
#: (PrivateTmp), the archive_command (PostgreSQL's service) the real one, and a lock is only a
#: lock where both see it
LOCK_DIR = Path("/var/lib/postgresql/pgbackrest-lock")
RETENTION_FULL = 4  # weekly fulls kept: four weeks
RETENTION_DIFF = 14  # daily differentials kept


def pg_versions(root: Path = Path("/")) -> list[str]:
    """The installed PostgreSQL major versions, newest first."""
    found = glob.glob(str(root / "usr/lib/postgresql/*/bin/postgres"))
    return sorted((p.split("/")[-3] for p in found), key=int, reverse=True)


@dataclass(frozen=True)
class SystemCluster:
    """Debian's `main` cluster of one PostgreSQL version."""

    version: str
    name: str = "main"

    @property
    def data_dir(self) -> Path:
        return Path(f"/var/lib/postgresql/{self.version}/{self.name}")

    @property
    def conf_d(self) -> Path:
        return Path(f"/etc/postgresql/{self.version}/{self.name}/conf.d")

    @property
    def pg_bin(self) -> Path:
        return Path(f"/usr/lib/postgresql/{self.version}/bin")

    @property
    def unit(self) -> str:
        return f"postgresql@{self.version}-{self.name}.service"


def archive_command(conf: Path = BACKREST_CONF) -> str:
    return f"pgbackrest --config={conf} --stanza={STANZA} archive-push %p"


def archive_settings_text(conf: Path = BACKREST_CONF) -> str:
    """conf.d/hoard-pgbackrest.conf: WAL archived into the stanza's repository."""
    return ("# written by `hoard install` (sql/system.py): WAL goes to pgBackRest's repository on an HDD\n"
            "archive_mode = on\nwal_level = replica\n"
            f"archive_command = '{archive_command(conf)}'\n")


def backrest_conf_text(repo: Path, cluster: SystemCluster) -> str:
    return ("# written by `hoard install` (sql/system.py); hoard-pgbackrest@.service and the\n"
            "# archive_command read it. The repository is on an HDD: it outlives the SSD.\n"
            f"[global]\nrepo1-path={repo}\nrepo1-retention-full={RETENTION_FULL}\n"
            f"repo1-retention-diff={RETENTION_DIFF}\nlock-path={LOCK_DIR}\nstart-fast=y\n"
            "log-level-console=warn\nlog-level-file=info\ncompress-type=zst\n\n"
            f"[{STANZA}]\npg1-path={cluster.data_dir}\npg1-socket-path={SOCKET_DIR}\n")


def read_backrest_conf(conf: Path = BACKREST_CONF) -> tuple[Path, Path, Path]:
    """(repository, data directory, socket directory) of the stanza in `conf`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(conf.read_text())
    return (Path(parser["global"]["repo1-path"]), Path(parser[STANZA]["pg1-path"]),
            Path(parser[STANZA].get("pg1-socket-path", str(SOCKET_DIR))))


#: the role: it owns its database and may create the scratch database a dump's restore-verify
#: uses (CREATEDB), nothing more — no superuser, no CREATEROLE
ROLE_QUERY = f"SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = '{ROLE}'"
DATABASE_QUERY = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DATABASE}'"

#: what a bulk apply does for a role that is not a superuser (sql/apply.py `apply_body`)
NOT_SUPERUSER_NOTE = (f"role {ROLE} is not a superuser: a bulk apply keeps PostgreSQL's foreign-key triggers "
                      "(sql/apply.py; the same rows, each reference checked twice — slower on big batches)")
