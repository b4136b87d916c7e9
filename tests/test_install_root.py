"""`make install` for real, on a pristine Debian 12 root booted with systemd (systemd-nspawn -b):
the services run as hoard, the mount appears, a worker takes a job inside its sandbox, the
backups run once and `pgbackrest info` shows the backup, every installed unit passes
`systemd-analyze verify`, a second install changes nothing, and `make uninstall` removes the
units and the venv but no data. Tier `system` (root, network for apt and pip; about 3 minutes,
docs/testing.md). What is installed is this checkout's last commit (it is cloned)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.debian_root import Booted, DebianRoot
from tests.helpers import REPO

ARGS = ("--disk hd1=/srv/hd1 --disk hd2=/srv/hd2 --ssd /srv/ssd --allow-directory-disks "
        "--quota 3A=2 --quota 3B=2 --quota 3C=2 --quota 3D=2")
HOARD = "runuser -u hoard -- env HOARD_CONFIG=/etc/hoard/hoard.toml /opt/hoardfs/venv/bin/hoard"
PGBACKREST = "runuser -u postgres -- pgbackrest --config=/etc/pgbackrest/hoard.conf --stanza=hoard"
TOOLS = ("debootstrap", "unshare", "nsenter", "apt-get", "dpkg-deb")
#: what a failed start of the backups prints: each unit's runs (a timer's too: hoard-backup.timer fires
#: at 02:00, and a start that comes while that run is active gets its result), every hoard unit's
#: journal, the system's warnings (an OOM kill) and PostgreSQL's log — one such failure, in 1 of 5
#: runs (between 02:00 and 03:20 UTC), was never explained (docs/testing.md)
BACKUP_FAILED = ("date -u; systemctl list-timers --all --no-pager; for u in hoard-backup hoard-pgbackrest@full; do "
                 "systemctl show -p Result,ExecMainStartTimestamp,ExecMainExitTimestamp,ExecMainStatus,NRestarts $u; "
                 "done; journalctl -u 'hoard-*' -n 300 --no-pager -o short-precise; journalctl -p warning -n 100 "
                 "--no-pager; tail -n 60 /var/log/postgresql/postgresql-*-main.log; ls -laR /srv/ssd/state /srv/ssd/locks")

pytestmark = [
    pytest.mark.system,
    pytest.mark.timeout(3600),
    pytest.mark.needs(os.geteuid() == 0 and all(shutil.which(t) for t in TOOLS),
                      f"ROOT AND {', '.join(TOOLS).upper()} NEEDED (a Debian root is debootstrapped and booted)"),
]


def main_user(box: Booted, unit: str) -> str:
    pid = box.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
    assert pid != "0", f"{unit} runs no process: {box.run(f'journalctl -u {unit} -n 20 --no-pager').stdout}"
    # right after `systemctl start` the main process may still be systemd's fork, root and named
    # "(unit…)", before it drops to User= and execs: the user is read once it has exec'd
    return box.run(f"for i in $(seq 600); do case \"$(ps -o comm= -p {pid})\" in '('*) sleep 0.1;; *) break;; esac; "
                   f"done; ps -o user= -p {pid}").stdout.strip()


def test_make_install_on_a_pristine_debian_12_boots_its_units(tmp_path: Path) -> None:
    """From a clone on a fresh Debian 12 (its systemd as PID 1): `make install ARGS=…` gives
    running services under hoard, a FUSE mount, a worker that ingests a batch and cannot write
    outside its zones, a verified pgBackRest backup of the system PostgreSQL, verified units;
    run again it changes nothing; `make uninstall` keeps every byte of data."""
    root = tmp_path / "root"
    with DebianRoot(root) as chroot:
        # a booted system has an init and D-Bus; debootstrap's minbase has neither (a VM image would)
        chroot.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd systemd-sysv dbus >/dev/null")
    subprocess.run(["git", "clone", "-q", str(REPO), str(root / "root/project")], check=True)
    for disk in ("hd1", "hd2", "ssd"):
        (root / "srv" / disk).mkdir(parents=True)

    try:
        _install_and_check(root, tmp_path / "console.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 1.5 GB once installed; the console's log stays


def _install_and_check(root: Path, console: Path) -> None:
    with Booted(root, console) as box:
        # Debian's udev gives /dev/fuse mode 0666; the container's is this machine's node, bound in
        # (0600 here): a node of its own with the mode a real server has (the host's stays as it is)
        box.run("umount /dev/fuse && rm -f /dev/fuse && mknod -m 0666 /dev/fuse c 10 229")
        first = box.run(f"cd /root/project && make install ARGS='{ARGS}'")
        assert "systemd is not PID 1" not in first.stdout
        assert "role hoard is not a superuser: a bulk apply keeps PostgreSQL's foreign-key triggers" in first.stdout
        assert "pgbackrest: stanza hoard checked: WAL archives into /srv/hd1/pgbackrest" in first.stdout

        # every service as hoard (Redis as redis); the mount appears, readable by hoard
        for unit in ("hoard-mount.service", "hoard-worker@all.service"):
            assert main_user(box, unit) == "hoard", unit
        assert main_user(box, "hoard-redis.service") == "redis"
        assert box.run("findmnt -n -o FSTYPE /srv/hoard").stdout.strip() == "fuse.hoard"
        assert box.run(f"{HOARD.split(' -- ')[0]} -- head -1 /srv/hoard/.hoard/health").stdout.startswith("objects: ")

        # a worker takes the jobs of an ingest; what it stored shows in the mount
        box.run(f"{HOARD} fixtures generate /var/lib/hoard/fx --batches 1 --items 5 --large-max-mb 1 "
                "--sources ytdlp --ready && runuser -u hoard -- sh -c 'mv /var/lib/hoard/fx/*/ /srv/ssd/3A/'")
        ingest = box.run(f"cd / && {HOARD} ingest --ready --wait --timeout 900")
        assert "rejected files: 0" in ingest.stdout
        worker_log = box.run("journalctl -u hoard-worker@all.service -o verbose --no-pager").stdout
        assert "ytdlp-s1-b000" in worker_log and "LOGGER=rq.worker" in worker_log  # structured journal entries
        assert "ytdlp-s1-b000" in box.run("runuser -u hoard -- ls /srv/hoard/batches").stdout

        # the worker's sandbox: its zones are writable, the rest of the system is not
        pid = box.run("systemctl show -p MainPID --value hoard-worker@all.service").stdout.strip()
        inside = f"nsenter -t {pid} -m -- runuser -u hoard --"
        box.run(f"{inside} touch /srv/ssd/3C/sandbox-probe && rm /srv/ssd/3C/sandbox-probe")
        # a directory hoard owns outside its zones: only the sandbox stops the write
        box.run("install -d -o hoard -g hoard /srv/outside")
        for outside in ("/srv/outside/probe", "/var/lib/hoard-redis/probe", "/etc/hoard/probe",
                        "/opt/hoardfs/venv/probe"):
            denied = box.run(f"{inside} touch {outside}", check=False)
            assert denied.returncode != 0 and ("Read-only file system" in denied.stderr
                                               or "Permission denied" in denied.stderr), outside
        assert "Read-only file system" in box.run(f"{inside} touch /srv/outside/probe", check=False).stderr
        # /tmp and /var/tmp are its own (PrivateTmp): what it leaves there is not the system's
        box.run(f"{inside} touch /var/tmp/sandbox-probe")
        assert box.run("test -e /var/tmp/sandbox-probe", check=False).returncode != 0
        # a worker for a queue list: ':' joins the queues in a unit name (a comma is not allowed)
        box.run("systemctl start hoard-worker@ingest:io.service")
        assert main_user(box, "hoard-worker@ingest:io.service") == "hoard"
        assert "--queues ingest,io" in box.run("ps -o args= -p $(systemctl show -p MainPID --value "
                                                 "hoard-worker@ingest:io.service)").stdout

        # the backups, once: the index and a dump (as hoard), pgBackRest's full backup (as postgres)
        started = box.run("systemctl start hoard-backup.service hoard-pgbackrest@full.service", check=False)
        assert started.returncode == 0, started.stderr + box.run(BACKUP_FAILED, check=False).stdout
        info = box.run(f"{PGBACKREST} info").stdout
        assert "status: ok" in info and "full backup: " in info, info
        backup_log = box.run("journalctl -u hoard-pgbackrest@full.service --no-pager").stdout
        assert "restored and checked" in backup_log and ": OK — backup " in backup_log, backup_log
        health = box.run(f"{HOARD} health --json", check=False)
        assert health.returncode in (0, 4), health.stderr
        assert '"full"' in health.stdout and '"dump"' in health.stdout

        # SMART: the root unit's timer is enabled with the others; a container has no drive of its own to read
        assert box.run("systemctl is-enabled hoard-smart.timer").stdout.strip() == "enabled"
        box.run("systemctl start hoard-smart.service")
        assert box.run("systemctl show -p Result --value hoard-smart.service").stdout.strip() == "success"
        assert box.run("systemctl show -p DevicePolicy --value hoard-smart.service").stdout.strip() == "closed"
        smart = box.run("env HOARD_CONFIG=/etc/hoard/hoard.toml /opt/hoardfs/venv/bin/hoard disks smart", check=False)
        assert smart.returncode == 0 and "Traceback" not in smart.stderr, smart.stdout + smart.stderr
        assert [line.split()[0] for line in smart.stdout.splitlines() if line[:1].strip()] == ["hd1", "hd2"], smart.stdout
        assert smart.stdout.count("no SMART: ") == 2 and "container" in smart.stdout, smart.stdout

        # every installed unit passes systemd-analyze verify, on the system it was installed on
        verify = box.run("cd /etc/systemd/system && systemd-analyze verify --man=no hoard-*.service hoard-*.timer "
                         "hoard-worker@all.service hoard-pgbackrest@full.service hoard-pgbackrest@diff.service",
                         check=False)
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr

        # the system cluster restored from pgBackRest, as root (#38): a table made after the full backup
        # (its WAL archived: `pgbackrest check` switches and waits) is back after a restore of everything
        # archived, and gone after one to that backup's own state
        label = json.loads(box.run(f"{PGBACKREST} --output=json info").stdout)[0]["backup"][-1]["label"]
        box.run("runuser -u hoard -- psql -XAtq -d hoard -c 'CREATE TABLE restore_probe (x int)'")
        box.run(f"{PGBACKREST} check")
        root_hoard = "env HOARD_CONFIG=/etc/hoard/hoard.toml /opt/hoardfs/venv/bin/hoard"
        probe = "runuser -u hoard -- psql -XAtq -d hoard -c \"SELECT to_regclass('restore_probe') IS NOT NULL\""
        for target, present in (("", "t"), (f" --set {label}", "f")):
            restored = box.run(f"cd / && {root_hoard} db restore --from pgbackrest{target} --yes", check=False)
            assert restored.returncode == 0 and "restored; the previous data directory is kept at " \
                "/var/lib/postgresql/15/main.before-restore-" in restored.stdout, restored.stdout + restored.stderr
            assert box.run(probe).stdout.strip() == present, target
        denied = box.run(f"cd / && {HOARD} db restore --from pgbackrest --yes", check=False)
        assert denied.returncode != 0 and "run `hoard db restore --from pgbackrest` as root" in denied.stderr, \
            denied.stdout + denied.stderr
        assert box.run(f"{HOARD} health --json", check=False).returncode in (0, 4)

        # idempotent: the same install again changes nothing
        again = box.run(f"cd /root/project && make install ARGS='{ARGS}'")
        assert again.stdout.rstrip().endswith("\n0 changes"), again.stdout

        # uninstall: units and venv gone, every byte of data kept
        gone = box.run("cd /root/project && make uninstall")
        assert "kept (data is never removed): disk hd1 (/srv/hd1); disk hd2 (/srv/hd2); the SSD (/srv/ssd)" in gone.stdout
        assert box.run("ls /etc/systemd/system/hoard-* /opt/hoardfs/venv 2>&1", check=False).returncode != 0
        assert box.run("test -f /etc/hoard/hoard.toml && ls /srv/hd1/shards /srv/hd1/pgbackrest/backup/hoard "
                       "&& runuser -u postgres -- psql -XAtq -d hoard -c 'SELECT count(*) > 0 FROM node'").stdout \
            .strip().endswith("t")
        assert "full backup: " in box.run(f"{PGBACKREST} info").stdout
