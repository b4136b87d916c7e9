"""Physical backups with pgBackRest: a stanza for the embedded cluster, a repository on an
HDD, full + differential backups, restore-verify into a scratch cluster, and restore.

    br = BackRest.for_cluster(cluster, repo_candidates=[disk paths…])
    br.setup(url)                       # archive_mode/archive_command, stanza-create, check
    br.backup(url, "full" | "diff")     # recorded in backup_log
    br.verify_latest(url, store)        # scratch restore on another socket, checks, removed
    br.restore(cluster)                 # the real thing (the CLI asks first)

pgBackRest and the archive_command run as the `postgres` user, so the configuration,
logs and spool live in the cluster's own (postgres-owned) directory, and the repository
must be reachable by that user: it goes to `<first HDD>/pgbackrest` when postgres can
reach it, else to /var/lib/hoardfs/pgbackrest-<hash> (and `note` says why). For a server
hoardfs does not run, `setup_text()` is what to add to its configuration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, create_new
from hoardfs.base.modes import FILE, passage
from hoardfs.sql.backup import Store, VerifyResult, sampled_not_in_store, table_counts
from hoardfs.sql.cluster import (
    SERVER_USER,
    PrivateCluster,
    _reachable_by,
    give_fd_to_server,
    give_to_server,
    run_as_server,
)
from hoardfs.sql.rows import one
from hoardfs.sql.system import BACKREST_CONF, SystemCluster, read_backrest_conf

STANZA = "hoard"
RETENTION_FULL = 4  # weekly fulls kept: four weeks
RETENTION_DIFF = 14  # daily differentials kept


class BackRestError(HoardError):
    exit_code = ExitCode.UNAVAILABLE


@dataclass
class BackRest:
    conf: Path
    repo: Path
    data_dir: Path
    socket_dir: Path
    pg_bin: Path
    note: str = ""
    #: the role a restore-verify signs in to the scratch cluster as
    pg_user: str = "hoard"

    # -- where things are ------------------------------------------------------------
    @classmethod
    def for_cluster(cls, cluster: PrivateCluster, repo_candidates: list[Path]) -> BackRest:
        home = cluster.link.resolve() / "pgbackrest"
        repo, note = None, ""
        for cand in repo_candidates:
            if cand.is_dir() and _reachable_by(SERVER_USER, cand):
                repo = cand / "pgbackrest"
                break
        if repo is None:
            key = hashlib.sha256(str(cluster.link.absolute()).encode()).hexdigest()[:12]
            repo = Path("/var/lib/hoardfs") / f"pgbackrest-{key}"
            note = (f"the repository is in {repo}, not on an HDD: the postgres user cannot reach "
                    f"{', '.join(map(str, repo_candidates)) or 'any disk'}; mount the HDDs where it can")
        return cls(home / "pgbackrest.conf", repo, cluster.data_dir, cluster.socket_dir.resolve(),
                   Path(cluster._bin("pg_ctl")).parent, note)

    @classmethod
    def system(cls, conf: Path = BACKREST_CONF) -> BackRest:
        """The stanza `hoard install` set up for the system cluster (hoardfs.sql.system), for its
        backup unit, which runs as postgres."""
        if not conf.exists():
            raise BackRestError(f"{conf} is missing: `hoard install` sets pgBackRest up for the system cluster")
        repo, data_dir, socket_dir = read_backrest_conf(conf)
        version = (data_dir / "PG_VERSION").read_text().strip()
        return cls(conf, repo, data_dir, socket_dir, Path(f"/usr/lib/postgresql/{version}/bin"),
                   pg_user=pwd.getpwuid(os.geteuid()).pw_name)

    @classmethod
    def system_restorer(cls, conf: Path = BACKREST_CONF) -> BackRest:
        """`system` for `restore_system`, which only root may run (the stanza's files and the
        data directory are not readable by hoard, and a system service is stopped)."""
        if os.geteuid() != 0:
            raise BackRestError("restoring the system cluster stops and starts its service and replaces its data "
                                "directory: run `hoard db restore --from pgbackrest` as root", ExitCode.USAGE)
        return cls.system(conf)

    def run(self, *args: str, what: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = run_as_server() + ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and res.returncode != 0:
            tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-3:]
            raise BackRestError(f"pgbackrest {args[-1]} failed ({what}): {' | '.join(tail)}; "
                                f"log in {self.conf.parent / 'log'}")
        return res

    # -- setup ---------------------------------------------------------------------------
    def write_conf(self) -> bool:
        """Write the configuration; True if it changed."""
        home = self.conf.parent
        passage(self.repo.parent)  # the server user passes through to its repository
        for d in (home, home / "log", home / "lock", home / "spool", self.repo):
            d.mkdir(parents=True, exist_ok=True)
            give_to_server(d)
        os.chmod(self.repo, 0o750)
        text = (f"# written by hoardfs (sql/pgbackrest.py); regenerated by `hoard db backup --setup`\n"
                f"[global]\nrepo1-path={self.repo}\nrepo1-retention-full={RETENTION_FULL}\n"
                f"repo1-retention-diff={RETENTION_DIFF}\nlog-path={home / 'log'}\nlock-path={home / 'lock'}\n"
                f"spool-path={home / 'spool'}\nstart-fast=y\nlog-level-console=warn\nlog-level-file=info\n"
                f"compress-type=zst\n\n[{STANZA}]\npg1-path={self.data_dir}\npg1-socket-path={self.socket_dir}\n"
                f"pg1-user=hoard\npg1-database=postgres\n")
        if self.conf.exists() and self.conf.read_text() == text:
            return False
        # whole or not at all after a power cut, owned by the server from the first byte
        atomic_write(self.conf, text.encode(), give_fd_to_server)
        return True

    def archive_command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"

    def setup(self, url: str, cluster: PrivateCluster) -> list[str]:
        """Idempotent: conf, archiving (restarting the cluster once if archive_mode changes),
        stanza-create, check. Returns what it did."""
        done = []
        changed = self.write_conf()
        with psycopg.connect(url, autocommit=True) as conn:
            mode = one(conn.execute("SHOW archive_mode"))[0]
            command = one(conn.execute("SHOW archive_command"))[0]
            if command != self.archive_command():
                conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(self.archive_command())))
                conn.execute("SELECT pg_reload_conf()")
                done.append("archive_command set")
            if mode != "on":
                conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
                conn.execute("ALTER SYSTEM SET wal_level = 'replica'")
        if mode != "on":
            cluster.stop()
            cluster.start()
            done.append("archive_mode on (PostgreSQL restarted)")
        if not (changed or done):
            return ["pgBackRest already set up"]
        self.run("stanza-create", what="creating the stanza")
        self.run("check", what="checking archiving and the repository")
        done.append(f"stanza {STANZA} checked; repository {self.repo}")
        return done

    @staticmethod
    def setup_text(conf_hint: str = "/etc/pgbackrest/pgbackrest.conf") -> str:
        """For a PostgreSQL server hoardfs does not run: what to configure by hand."""
        return (f"# postgresql.conf\narchive_mode = on\nwal_level = replica\n"
                f"archive_command = 'pgbackrest --stanza={STANZA} archive-push %p'\n\n"
                f"# {conf_hint}\n[global]\nrepo1-path=/srv/hdd/<an HDD>/pgbackrest\n"
                f"repo1-retention-full={RETENTION_FULL}\nrepo1-retention-diff={RETENTION_DIFF}\nstart-fast=y\n\n"
                f"[{STANZA}]\npg1-path=<the data directory>\n\n"
                f"# then, as the postgres user:\npgbackrest --stanza={STANZA} stanza-create\n"
                f"pgbackrest --stanza={STANZA} check\n")

    # -- backup ---------------------------------------------------------------------------
    def info(self) -> list[dict]:
        res = self.run("--output=json", "info", what="reading the backup list")
        data = json.loads(res.stdout or "[]")
        return data[0].get("backup", []) if data else []

    def backup(self, url: str, kind: str) -> dict:
        if kind not in ("full", "diff"):
            raise HoardError(f"backup type {kind!r}: full or diff", ExitCode.USAGE)
        started = dt.datetime.now(dt.UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            schema = one(conn.execute("SELECT current_schema()"))[0]
            counts, writes_before = table_counts(conn, schema), _writes(conn, schema)
        if kind == "diff" and not any(b["type"] == "full" for b in self.info()):
            kind = "full"  # a differential needs a full one first
        self.run(f"--type={kind}", "backup", what=f"{kind} backup")
        latest = self.info()[-1]
        with psycopg.connect(url, autocommit=True) as conn:
            changed = sorted(t for t, n in _writes(conn, schema).items() if n != writes_before.get(t))
            counts["__changed_during_backup__"] = changed  # type: ignore[assignment]
            backup_id = one(conn.execute(
                "INSERT INTO backup_log (kind, started_at, finished_at, size_bytes, location, row_counts) "
                "VALUES (%s, %s, now(), %s, %s, %s) RETURNING backup_id",
                [kind, started, latest["info"]["repository"]["delta"], f"{self.repo}#{latest['label']}",
                 json.dumps(counts)]))[0]
        return {"backup_id": backup_id, "kind": kind, "label": latest["label"],
                "size": latest["info"]["repository"]["delta"], "repo": str(self.repo)}

    # -- restore-verify -------------------------------------------------------------------------
    def verify_latest(self, url: str, store: Store, sample: int = 200, scratch_in: Path | None = None) -> VerifyResult:
        """Restore the newest full/diff backup into a scratch cluster on its own socket, check
        it (row counts, foreign keys, sampled sha256s in the store — without a store, as the
        postgres user's backup unit runs it, not those), remove it. The scratch cluster goes
        under `scratch_in` (default /var/lib/hoardfs as root, else the temporary directory)."""
        t0 = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT backup_id, location, row_counts FROM backup_log WHERE kind IN ('full', 'diff') "
                               "ORDER BY finished_at DESC LIMIT 1").fetchone()
            if row is None:
                raise HoardError("no pgBackRest backup recorded; run `hoard db backup --type full` first",
                                 ExitCode.USAGE)
            backup_id, location, counts = row
            params = psycopg.conninfo.conninfo_to_dict(url)
            schema = one(conn.execute("SELECT current_schema()"))[0]
        label = location.rsplit("#", 1)[1]
        problems = []
        repo_check = self.run("verify", what="checking the repository's checksums", check=False)
        if repo_check.returncode != 0:
            problems.append(f"pgbackrest verify: {(repo_check.stderr or repo_check.stdout).strip().splitlines()[-1:]}")
        base = scratch_in or (Path("/var/lib/hoardfs") if os.geteuid() == 0 else Path(tempfile.gettempdir()))
        if scratch_in is None:
            passage(base)
        scratch = Path(tempfile.mkdtemp(prefix="pgverify-", dir=base))
        data, sock = scratch / "data", scratch / "sock"
        data.mkdir(mode=0o700)
        sock.mkdir()
        give_to_server(scratch, data, sock)
        started = False
        try:
            self.run(f"--set={label}", f"--pg1-path={data}", "--type=immediate", "--target-action=promote",
                     "--archive-mode=off", "restore", what=f"restoring {label} into {data}")
            _own_configuration(data)
            opts = f"-c port=5499 -c listen_addresses='' -c unix_socket_directories='{sock}' -c archive_mode=off"
            res = subprocess.run(run_as_server() + [str(self.pg_bin / "pg_ctl"), "-D", str(data), "-l",
                                                        str(scratch / "pg.log"), "-o", opts, "-w", "-t", "120", "start"],
                                 capture_output=True, text=True, cwd="/")
            if res.returncode != 0:
                raise BackRestError(f"the restored cluster did not start: {(scratch / 'pg.log').read_text()[-300:]}")
            started = True
            s_url = psycopg.conninfo.make_conninfo(host=str(sock), port=5499, user=params.get("user", self.pg_user),
                                                   dbname=params.get("dbname", "hoard"),
                                                   options=f"-c search_path={schema}")
            problems += _check_restored(s_url, schema, counts, store, sample)
        except HoardError as e:
            problems.append(e.message)
        finally:
            if started:
                subprocess.run(run_as_server() + [str(self.pg_bin / "pg_ctl"), "-D", str(data), "-m",
                                                      "immediate", "-w", "stop"], capture_output=True, cwd="/")
            shutil.rmtree(scratch, ignore_errors=True)
        ok = not problems
        detail = "; ".join(problems) if problems else (
            f"backup {label} restored and checked: {sum(v for v in counts.values() if isinstance(v, int))} rows, "
            "foreign keys intact" + (", sampled objects in the store" if store is not None else ""))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE backup_log SET verified_at = now(), verify_ok = %s, verify_detail = %s "
                         "WHERE backup_id = %s", [ok, detail, backup_id])
        return VerifyResult(backup_id, ok, detail, time.monotonic() - t0)

    # -- restore -------------------------------------------------------------------------------
    def restore(self, cluster: PrivateCluster, label: str | None = None) -> Path:
        """Replace the embedded cluster's data with a backup (`replace_data`)."""
        return self.replace_data(cluster.stop, cluster.start, label)

    def restore_system(self, label: str | None = None) -> Path:
        """Replace the system cluster's data with a backup (`replace_data`), stopping and
        starting Debian's unit of it (as root: `hoard db restore --from pgbackrest`)."""
        unit = SystemCluster((self.data_dir / "PG_VERSION").read_text().strip(), self.data_dir.name).unit

        def systemctl(verb: str) -> None:
            res = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True)
            if res.returncode != 0:
                raise BackRestError(f"systemctl {verb} {unit} failed: {(res.stderr or res.stdout).strip()[-300:]}; "
                                    f"`journalctl -u {unit}` says why")
        return self.replace_data(lambda: systemctl("stop"), lambda: systemctl("start"), label)

    def replace_data(self, stop: Callable[[], object], start: Callable[[], object], label: str | None) -> Path:
        """Replace the cluster's data with a backup. Without `label`: the newest backup plus
        every archived WAL (a lost disk: get back everything). With `label`: that backup's
        own consistent state (an accident: go back to before it). The old data directory is
        kept beside the new one (put back, and the cluster started on it, if the restore
        fails); returns where."""
        stop()
        keep = self.data_dir.with_name(f"{self.data_dir.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(self.data_dir, keep)
        self.data_dir.mkdir(mode=0o700)
        give_to_server(self.data_dir)
        try:
            target = [f"--set={label}", "--type=immediate", "--target-action=promote"] if label else []
            self.run(*target, "restore", what="restoring the cluster")
        except HoardError:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            os.rename(keep, self.data_dir)
            start()
            raise
        start()
        return keep


def _own_configuration(data: Path) -> None:
    """A restored Debian cluster has no configuration in its data directory (it lives in
    /etc/postgresql/<version>/<name>, naming the live cluster's directory and port): the scratch
    copy gets its own — settings from the command line, local connections by peer — or
    PostgreSQL refuses to start ("could not access the server configuration file")."""
    for name, text in (("postgresql.conf", "# hoardfs restore-verify: settings on the command line\n"),
                       ("pg_hba.conf", "local all all peer\n"), ("pg_ident.conf", "")):
        if not os.path.lexists(data / name):  # (what the restore wrote, as the server, stays; a link is not written through)
            with create_new(data / name, FILE) as f:
                f.write(text.encode())
                give_fd_to_server(f.fileno())


def _writes(conn: psycopg.Connection, schema: str) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE schemaname = %s",
        [schema]).fetchall()}


def _check_restored(url: str, schema: str, counts: dict[str, Any], store: Store, sample: int) -> list[str]:
    problems = []
    changed = set(counts.get("__changed_during_backup__", []))
    with psycopg.connect(url, autocommit=True) as sc:
        got = table_counts(sc, schema)
        for table, n in counts.items():
            if table.startswith("__") or table in changed:
                continue
            if got.get(table) != n:
                problems.append(f"table {table}: {got.get(table)} rows restored, {n} at backup time")
        for con, child, parent, pairs in _foreign_keys(sc, schema):
            cond = sql.SQL(" AND ").join(sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc))
                                         for cc, pc in pairs)
            notnull = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc, _ in pairs)
            orphans = one(sc.execute(sql.SQL("SELECT count(*) FROM {}.{} c WHERE {} AND NOT EXISTS "
                                         "(SELECT 1 FROM {}.{} p WHERE {})").format(
                sql.Identifier(schema), sql.Identifier(child), notnull, sql.Identifier(schema),
                sql.Identifier(parent), cond)))[0]
            if orphans:
                problems.append(f"foreign key {con}: {orphans} rows of {child} without their {parent}")
        if store is not None:
            problems += sampled_not_in_store(sc, schema, store, sample)
    return problems


def _foreign_keys(conn: psycopg.Connection, schema: str) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    rows = conn.execute("""
        SELECT c.conname, cl.relname, pl.relname,
               array_agg(a.attname ORDER BY k.ord), array_agg(pa.attname ORDER BY k.ord)
        FROM pg_constraint c
        JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace
        JOIN pg_class pl ON pl.oid = c.confrelid
        CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(ck, pk, ord)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.ck
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = k.pk
        WHERE c.contype = 'f' AND n.nspname = %s
        GROUP BY c.conname, cl.relname, pl.relname""", [schema]).fetchall()
    return [(name, child, parent, list(zip(cc, pc, strict=True))) for name, child, parent, cc, pc in rows]
