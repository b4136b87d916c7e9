"""`hoard install` / `hoard uninstall` without installing (the real install into a pristine
Debian 12 root, booted: tests/test_install_root.py): the dry run changes nothing and names
every change, an installed root is kept, the units it writes run as `hoard` with least
privilege and pass `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.base.config import load
from hoardfs.base.errors import HoardError
from hoardfs.cli._host import Host
from hoardfs.cli._takeover import Accounts, take_over
from hoardfs.cli.install import ENABLE, SHIPPED_RW, Installer, config_text, render_unit, unit_exec_start
from tests.helpers import REPO, needs_private_mounts

HOARD = [sys.executable, "-m", "hoardfs"]
UNITS = sorted((REPO / "systemd").iterdir())
DISKS = [("hd1", "/srv/hd1"), ("hd2", "/srv/hd2")]
QUOTAS = {"3A": 30, "3B": 20, "3C": 20, "3D": 20}


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOARD, "install", "--root", str(root), "--source", str(REPO), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def tree(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under `root` with its mode, size and mtime."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime)
    return found


def rendered(ssd: Path = Path("/srv/ssd")) -> dict[str, configparser.ConfigParser]:
    """The units as `hoard install` writes them for DISKS and an SSD at `ssd`."""
    units = {}
    for unit in UNITS:
        text = render_unit(unit.read_text(), [Path(p) for _, p in DISKS] + [ssd], Path("/srv/hoard"),
                           Path("/srv/hd1/pgbackrest") if unit.name.startswith("hoard-pgbackrest@") else None, REPO, ssd)
        parsed = configparser.ConfigParser(interpolation=None, strict=False)
        parsed.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
        parsed.read_string(text)
        units[unit.name] = parsed
    return units


@pytest.mark.services  # runs `hoard install` (and git, which it asks about the checkout)
def test_dry_run_names_every_change_and_makes_none(tmp_path: Path) -> None:
    """A dry run of a first install into an empty root prints each change it would make — the
    user, the config, the disks, the venv, every unit, PostgreSQL, Redis, pgBackRest, the
    schema, health — and leaves the root exactly as it was."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    before = tree(root)
    res = install(root, "--dry-run", "--allow-directory-disks", "--ssd", "/srv/ssd",
                  *(f"--disk={label}={path}" for label, path in DISKS), "--quota", "3A=30")
    assert res.returncode == 0, res.stderr
    assert tree(root) == before, "a dry run changed the root"
    lines = res.stdout.splitlines()
    would = [line for line in lines if line.startswith("would: ")]
    for needle in ["groupadd --system hoard", "useradd --system --gid hoard", "write /etc/hoard/hoard.toml",
                   "install -d -o hoard -g hoard -m 0751 /srv/hd1", "install -d -o hoard -g hoard -m 0751 /srv/ssd",
                   "-m venv /opt/hoardfs/venv", f"pip install -q --disable-pip-version-check {REPO}",
                   "write /etc/pgbackrest/hoard.conf",
                   "install -d -o postgres -g postgres -m 0750 /srv/hd1/pgbackrest", "stanza-create (as postgres)",
                   "redis-server --daemonize yes"]:
        assert any(needle in line for line in would), f"no change mentions {needle!r}:\n{res.stdout}"
    for unit in UNITS:
        assert f"would: write /etc/systemd/system/{unit.name} (root:root, 0644)" in would
    assert lines[0].startswith("systemd is not PID 1 here"), "the fallback is not said"
    assert "health: `hoard health` runs as hoard at the end" in lines
    # run every time, changing only what is missing: said, not counted
    for step in ("hoard init (as hoard)", "hoard db migrate (as hoard)"):
        assert any(line.startswith("would run: ") and line.endswith(step) for line in lines), step
    assert lines[-1] == f"dry run: {len(would)} changes would be made"


@pytest.mark.services
def test_dry_run_of_an_installed_root_keeps_its_config(tmp_path: Path) -> None:
    """Where /etc/hoard/hoard.toml exists it is never rewritten: the flags are ignored and said
    so, and the disks and units come from the file kept."""
    root = tmp_path / "root"
    (root / "etc/hoard").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\nhoard:x:998:998::/var/lib/hoard:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nhoard:x:998:\n")
    kept = config_text([("old1", "/srv/old1"), ("old2", "/srv/old2")], Path("/srv/ssd"), QUOTAS, Path("/srv/hoard"),
                       False, True)
    (root / "etc/hoard/hoard.toml").write_text(kept)
    res = install(root, "--dry-run", "--ssd", "/elsewhere", "--disk", "new=/srv/new")
    assert res.returncode == 0, res.stderr
    assert "config: /etc/hoard/hoard.toml exists, kept (--disk/--ssd/--quota not applied: edit it)" in res.stdout
    assert (root / "etc/hoard/hoard.toml").read_text() == kept
    assert "hoard.toml (root:hoard" not in res.stdout and "groupadd" not in res.stdout and "useradd" not in res.stdout
    assert "install -d -o hoard -g hoard -m 0751 /srv/old1" in res.stdout and "/srv/new" not in res.stdout


@pytest.mark.services
def test_install_refuses_without_root_or_disks(tmp_path: Path) -> None:
    """One line each: not root (outside a dry run), no config and no --disk/--ssd, a bad flag."""
    (tmp_path / "etc").mkdir()
    res = install(tmp_path, "--dry-run")
    assert res.returncode == 2 and "give the disks and the SSD (--disk LABEL=PATH" in res.stderr
    assert "Traceback" not in res.stderr
    res = install(tmp_path, "--dry-run", "--disk", "hd1", "--ssd", "/s")
    assert res.returncode == 2 and "--disk 'hd1': write it as --disk NAME=VALUE" in res.stderr
    res = install(tmp_path, "--dry-run", "--disk", "a=/a", "--disk", "b=/b", "--ssd", "/s", "--quota", "3Z=1")
    assert res.returncode == 2 and "the zones are 3A, 3B, 3C, 3D" in res.stderr
    res = install(tmp_path, "--dry-run", "--disk", "a=/a", "--disk", "b=/b", "--ssd", "/s", "--backup-disk", "c")
    assert res.returncode == 2 and "--backup-disk c: not one of the --disk labels (a, b)" in res.stderr
    assert "would:" not in res.stdout  # refused before the first step
    # a relative path, a flag TOML would misread, a disk not there: one line naming the flag or
    # the config it would write (not a scratch file), before the first step — a real run too
    res = install(tmp_path, "--dry-run", "--disk", "a=rel/a", "--disk", "b=/b", "--ssd", "/s")
    assert res.returncode == 2 and res.stderr.strip() == ("hoard: error: --disk a=rel/a: give an absolute path (the "
                                                          "services do not run in this directory)"), res.stderr
    res = install(tmp_path, "--dry-run", "--disk", 'a"b=/a', "--disk", "b=/b", "--ssd", "/s")
    assert res.returncode == 2 and "/etc/hoard/hoard.toml (as the flags make it): disks[0].label: " in res.stderr
    assert "/tmp" not in res.stderr and "would:" not in res.stdout
    if os.geteuid() == 0:
        before = tree(tmp_path)
        res = install(tmp_path, "--disk", "a=/nowhere/a", "--disk", "b=/nowhere/b", "--ssd", "/s")
        assert res.returncode == 3 and res.stderr.strip() == ("hoard: error: disk a: /nowhere/a does not exist; mount "
                                                              "the disk there first"), res.stderr
        assert tree(tmp_path) == before and res.stdout == ""  # no user, no config left for the next run to keep
    if os.geteuid() != 0:
        res = install(tmp_path, "--disk", "a=/a", "--ssd", "/s")
        assert res.returncode == 2 and "run it as root" in res.stderr


def test_written_config_is_valid_and_listens_on_localhost(tmp_path: Path) -> None:
    """The config the flags make loads; the GUI listens on 127.0.0.1; the database is the
    system cluster's over its socket (peer authentication); a shared mount says allow_other."""
    path = tmp_path / "hoard.toml"
    path.write_text(config_text(DISKS, Path("/srv/ssd"), QUOTAS, Path("/srv/hoard"), True, False))
    cfg = load(path)
    assert cfg.gui.host == "127.0.0.1" and cfg.mount.allow_other and cfg.mount.path == Path("/srv/hoard")
    assert cfg.database_url == "postgresql://hoard@/hoard?host=/var/run/postgresql"
    assert [(d.label, str(d.path)) for d in cfg.disks] == DISKS and cfg.ssd.zones["3A"].quota_gb == 30
    assert not cfg.store.allow_directory_disks


def test_units_run_as_hoard_with_least_privilege() -> None:
    """Every hoardfs service runs as hoard (Redis as redis in the hoard group, the pgBackRest
    backup as postgres); those that run hoard's code on scraped input write only the disks and
    the SSD (the ingest timer, which only queues, the SSD alone), see no devices and keep no capability; only the mount keeps CAP_SYS_ADMIN and
    /dev/fuse, and takes no mount namespace (its mount would be seen by itself alone)."""
    units = rendered()
    services = {name: u["Service"] for name, u in units.items() if name.endswith(".service")}
    smart = services.pop("hoard-smart.service")
    owners = {name: s.get("User") for name, s in services.items()}
    assert owners.pop("hoard-redis.service") == "redis" and owners.pop("hoard-pgbackrest@.service") == "postgres"
    assert set(owners.values()) == {"hoard"}, owners
    for name, s in services.items():
        assert s.get("CapabilityBoundingSet") == ("CAP_SYS_ADMIN" if name == "hoard-mount.service" else ""), name
    sandboxed = [n for n in services if n not in ("hoard-mount.service", "hoard-redis.service",
                                                  "hoard-pgbackrest@.service")]
    assert "hoard-worker@.service" in sandboxed and "hoard-ingest.service" in sandboxed
    for name in sandboxed:
        s = services[name]
        assert (s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"], s["NoNewPrivileges"], s["PrivateDevices"]) == \
            ("strict", "yes", "yes", "yes", "yes"), name
        assert s["ReadWritePaths"].split() == (["/srv/ssd"] if name == "hoard-ingest.service" else
                                               ["/srv/hd1", "/srv/hd2", "/srv/ssd"]), name
        assert SHIPPED_RW not in s["ReadWritePaths"]
    mount = services["hoard-mount.service"]
    assert mount["DeviceAllow"] == "/dev/fuse rw" and mount["DevicePolicy"] == "closed"
    # no mount namespace (its mount would be its own), nothing that implies NoNewPrivileges= (fusermount3
    # would stay hoard): the options systemd.exec(5) names for either
    assert not {"ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateDevices", "ReadWritePaths", "ProtectKernelTunables",
                "ProtectControlGroups", "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "RestrictRealtime",
                "RestrictSUIDSGID", "LockPersonality", "RestrictAddressFamilies", "RestrictNamespaces",
                "SystemCallFilter", "MemoryDenyWriteExecute"} & set(mount)
    assert mount["NoNewPrivileges"] == "no"
    # its exit waits while the kernel evicts every cached inode (over 30 s after a walk of 10^7 names): a
    # stop timeout shorter than that kills it mid-unmount on a large store
    assert int(mount["TimeoutStopSec"]) >= 300
    assert services["hoard-pgbackrest@.service"]["ReadWritePaths"].split()[-1] == "/srv/hd1/pgbackrest"
    for timer in ("hoard-pgbackrest-full.timer", "hoard-pgbackrest-diff.timer"):
        assert units[timer]["Timer"]["Unit"] in ("hoard-pgbackrest@full.service", "hoard-pgbackrest@diff.service")
    assert set(ENABLE) - {"hoard-worker@all.service"} <= set(units)
    # the one root unit (smartctl needs raw I/O): it writes the SSD's state directory only, reaches no
    # network, and runs the venv `hoard install` makes
    assert "User" not in smart and (smart["ProtectSystem"], smart["ProtectHome"], smart["PrivateTmp"],
                                    smart["NoNewPrivileges"], smart["PrivateNetwork"]) == ("strict", "yes", "yes",
                                                                                           "yes", "yes")
    assert smart["ReadWritePaths"] == "/srv/ssd/state"
    # its devices: the drives' classes, read-only opens; no other device node, no socket but AF_UNIX
    raw = (REPO / "systemd/hoard-smart.service").read_text().splitlines()
    assert smart["DevicePolicy"] == "closed" and smart["RestrictAddressFamilies"] == "AF_UNIX"
    assert [line.split("=", 1)[1] for line in raw if line.startswith("DeviceAllow=")] == \
        ["block-sd r", "block-blkext r", "char-nvme r"]
    assert unit_exec_start((REPO / "systemd/hoard-smart.service").read_text()) == \
        [["/opt/hoardfs/venv/bin/hoard", "disks", "smart"]]
    assert "hoard-smart.timer" in ENABLE
    assert rendered(Path("/data/ssd"))["hoard-smart.service"]["Service"]["ReadWritePaths"] == "/data/ssd/state"
    assert rendered(Path("/data/ssd"))["hoard-ingest.service"]["Service"]["ReadWritePaths"] == "/data/ssd"
    # every hoard a unit runs is the venv's
    for unit in UNITS:
        for argv in unit_exec_start(unit.read_text()):
            hoards = [a for a in " ".join(argv).split() if a.endswith("/bin/hoard")]
            assert set(hoards) <= {"/opt/hoardfs/venv/bin/hoard"}, (unit.name, hoards)


def test_redis_fallback_runs_the_units_own_command() -> None:
    """Without systemd, Redis is started with the unit's own ExecStart (daemonized): one
    source for its socket, mode and persistence."""
    [argv] = unit_exec_start((REPO / "systemd/hoard-redis.service").read_text())
    assert argv[0] == "/usr/bin/redis-server" and argv[argv.index("--unixsocketperm") + 1] == "770"
    assert argv[argv.index("--save") + 1] == ""


@pytest.mark.services  # runs systemd-analyze
@pytest.mark.needs(shutil.which("systemd-analyze") is not None, "SYSTEMD-ANALYZE MISSING (Debian package systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every unit as installed (and the instances the timers and `hoard install` start) passes
    `systemd-analyze verify` without a word; the venv's path is this checkout's .venv, the one
    thing that differs from an installed system."""
    venv = Path(sys.executable).parent.parent
    for unit in UNITS:
        text = render_unit(unit.read_text(), [Path(p) for _, p in DISKS] + [Path("/srv/ssd")], Path("/srv/hoard"),
                           Path("/srv/hd1/pgbackrest") if unit.name.startswith("hoard-pgbackrest@") else None, REPO)
        (tmp_path / unit.name).write_text(text.replace("/opt/hoardfs/venv", str(venv)))
    # (`systemd-analyze verify` refuses a ':' in its argument, which a unit name may hold: the
    # escaped comma stands for the queue list here, the booted install starts hoard-worker@ingest:io)
    names = [u.name for u in UNITS] + ["hoard-worker@all.service", "hoard-worker@ingest\\x2cio.service",
                                       "hoard-pgbackrest@full.service", "hoard-pgbackrest@diff.service"]
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *names], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


@pytest.mark.services  # runs `hoard uninstall`
def test_uninstall_removes_only_its_units_and_the_venv(tmp_path: Path) -> None:
    """uninstall removes the units `hoard install` wrote (they carry its mark) and the venv —
    a unit of someone else's, the config, the disks and the SSD stay, and it says what it kept."""
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "hoard-worker@.service").write_text(render_unit((REPO / "systemd/hoard-worker@.service").read_text(),
                                                             [Path("/srv/hd1")], Path("/srv/hoard"), None, REPO))
    (units / "hoard-custom.service").write_text("[Service]\nExecStart=/bin/true\n")
    (root / "opt/hoardfs/venv/bin").mkdir(parents=True)
    (root / "etc/hoard").mkdir(parents=True)
    (root / "etc/hoard/hoard.toml").write_text(config_text(DISKS, Path("/srv/ssd"), QUOTAS, Path("/srv/hoard"),
                                                           False, True))
    for disk in ("srv/hd1/shards", "srv/ssd/index"):
        (root / disk).mkdir(parents=True)
    dry = subprocess.run([*HOARD, "uninstall", "--root", str(root), "--dry-run"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert dry.returncode == 0, dry.stderr
    assert "would: remove /etc/systemd/system/hoard-worker@.service" in dry.stdout
    assert "would: remove /opt/hoardfs/venv/" in dry.stdout and "hoard-custom" not in dry.stdout
    assert (units / "hoard-worker@.service").exists() and (root / "opt/hoardfs/venv").exists()
    if os.geteuid() != 0:
        return
    done = subprocess.run([*HOARD, "uninstall", "--root", str(root)], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert not (units / "hoard-worker@.service").exists() and not (root / "opt/hoardfs/venv").exists()
    assert (units / "hoard-custom.service").exists() and (root / "etc/hoard/hoard.toml").exists()
    assert (root / "srv/hd1/shards").is_dir() and (root / "srv/ssd/index").is_dir()
    assert "kept (data is never removed): disk hd1 (/srv/hd1); disk hd2 (/srv/hd2); the SSD (/srv/ssd)" in done.stdout


@pytest.mark.services  # runs `hoard db system-backup`
def test_system_backup_runs_as_postgres_only(tmp_path: Path) -> None:
    """pgBackRest reads the cluster's files, which only postgres may: anyone else gets one line."""
    res = subprocess.run([*HOARD, "db", "system-backup", "--conf", str(tmp_path / "hoard.conf")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and "run it as postgres" in res.stderr and "Traceback" not in res.stderr


#: the accounts of the system the takeover test installs on (a private mount namespace's /etc/passwd
#: and /etc/group): uid 4242 is another server's `hoard`, a user this system does not have
HOARD_ID, POSTGRES_ID, SCRAPER_ID, TRAINER_ID, SCRAPERS_GID, OLD_ID = 64990, 64991, 64992, 64993, 64994, 4242
TAKEOVER = '''
import sys
from pathlib import Path
from hoardfs.base.config import load
from hoardfs.cli._host import Host
from hoardfs.cli.install import Installer
cfg = load(Path(sys.argv[1]))
for mode in sys.argv[2:]:
    host = Host(Path("/"), mode == "dry")
    Installer(host, Path("."), [], None, {}, False, True, None).directories(cfg)
    print("changes:", host.changes)
'''


def _in_namespace(etc: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """TAKEOVER run with `etc`'s passwd and group as the system's: bound over /etc's in a mount
    namespace of its own (this machine's stay as they are), so `chown hoard` names HOARD_ID."""
    needs_private_mounts()
    binds = " && ".join(f"mount --bind {etc / name} /etc/{name}" for name in ("passwd", "group"))
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f'{binds} && exec "$@"', "sh", *prefix, sys.executable, "-c", TAKEOVER, *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def _accounts(tmp_path: Path) -> Path:
    """An /etc with this machine's accounts and the takeover tests' (HOARD_ID, …)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(Path("/etc/passwd").read_text() + "".join(
        f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
        for name, uid in (("hoard", HOARD_ID), ("postgres", POSTGRES_ID), ("scraper", SCRAPER_ID),
                          ("trainer", TRAINER_ID))))
    (etc / "group").write_text(Path("/etc/group").read_text() + "".join(
        f"{name}:x:{gid}:\n" for name, gid in (("hoard", HOARD_ID), ("postgres", POSTGRES_ID), ("scraper", SCRAPER_ID),
                                                ("trainer", TRAINER_ID), ("hoard-scrapers", SCRAPERS_GID))))
    return etc


@pytest.mark.services  # runs `hoard install`'s step in a mount namespace of its own
@pytest.mark.needs(os.geteuid() == 0 and shutil.which("unshare") is not None, "ROOT AND UNSHARE NEEDED (owners are "
                   "changed, the accounts bound in a mount namespace)")
def test_install_takes_over_what_root_made_once_and_nothing_of_anyone_elses(tmp_path: Path) -> None:
    """Disks and an SSD made before the install (by a root-run hoardfs, or another server's whose
    `hoard` had another uid) become hoard's, so the services running as hoard write them — but
    not pgBackRest's repository, lost+found, a scraper's batch or a trainer's run in the zones
    others write, the target of a link, nor a file that has a second hard link (the old `chown -R`
    gave a root-only file linked into 3A to hoard); the dry run changes nothing, and a second
    install takes nothing again (a tree whose top is hoard's is an installed one)."""
    etc = _accounts(tmp_path)
    srv, secret = tmp_path / "srv", tmp_path / "secret"
    secret.write_text("root's only")
    secret.chmod(0o600)

    def made(rel: str, owner: tuple[int, int] = (0, 0), mode: int = 0o750, text: str | None = None) -> Path:
        p = srv / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            p.mkdir(exist_ok=True)
        else:
            p.write_text(text)
        os.chown(p, *owner)
        p.chmod(mode)
        return p

    for disk in ("hd1", "hd2", "ssd"):
        made(disk, mode=0o751)
    made("hd1/shards")
    made("hd1/shards/s1.shard", text="shard", mode=0o640)
    (srv / "hd1/shards/to-secret").symlink_to(secret)
    made("hd1/marks", (OLD_ID, OLD_ID))
    made("hd1/marks/log", (OLD_ID, OLD_ID), text="marks", mode=0o640)
    made("hd1/pgbackrest", (OLD_ID, OLD_ID))
    made("hd1/pgbackrest/backup.info", (OLD_ID, OLD_ID), text="info", mode=0o640)
    made("hd1/lost+found", mode=0o700)
    os.chown(srv / "hd2", HOARD_ID, HOARD_ID)  # installed before: not walked again
    made("hd2/late", text="made by root since", mode=0o640)
    made("ssd/index")
    made("ssd/index/data.mdb", text="index", mode=0o640)
    made("ssd/3B/pkg", (OLD_ID, OLD_ID), text="package", mode=0o640)
    made("ssd/3A", mode=0o1770)
    made("ssd/3A/_quarantine")
    made("ssd/3A/batch1", (SCRAPER_ID, SCRAPERS_GID), mode=0o770)
    made("ssd/3A/batch1/a.json", (SCRAPER_ID, SCRAPERS_GID), text="{}", mode=0o640)
    made("ssd/3A/batch1/_REASON.txt", text="refused", mode=0o640)
    os.link(secret, srv / "ssd/3A/batch1/linked")  # (where fs.protected_hardlinks=0, a scraper can)
    made("ssd/3C", mode=0o1770)
    made("ssd/3C/run1", (TRAINER_ID, TRAINER_ID))
    made("hoard", mode=0o755)  # the mount point, not mounted
    cfg = tmp_path / "hoard.toml"
    cfg.write_text(config_text([("hd1", str(srv / "hd1")), ("hd2", str(srv / "hd2"))], srv / "ssd", QUOTAS,
                               srv / "hoard", False, True))

    def owners() -> dict[str, tuple[int, int]]:
        found = {".": (os.stat(srv).st_uid, os.stat(srv).st_gid), "secret": (0, 0)}
        for dirpath, dirs, files in os.walk(srv):
            for name in dirs + files:
                st = (Path(dirpath) / name).lstat()
                found[str((Path(dirpath) / name).relative_to(srv))] = (st.st_uid, st.st_gid)
        st = secret.stat()
        found["secret"] = (st.st_uid, st.st_gid)
        return found

    before = owners()
    dry = _in_namespace(etc, str(cfg), "dry")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert owners() == before, "the dry run changed an owner"
    real = _in_namespace(etc, str(cfg), "real", "real")
    assert real.returncode == 0, real.stdout + real.stderr
    hoard = (HOARD_ID, HOARD_ID)
    after = owners()
    assert after == {
        **before,
        **{rel: hoard for rel in ("hd1", "hd1/shards", "hd1/shards/s1.shard", "hd1/shards/to-secret", "hd1/marks",
                                  "hd1/marks/log", "ssd", "ssd/index", "ssd/index/data.mdb", "ssd/3B", "ssd/3B/pkg",
                                  "ssd/3A/_quarantine", "ssd/3A/batch1/_REASON.txt", "hoard")},
        "ssd/3A": (0, HOARD_ID), "ssd/3C": (0, HOARD_ID),  # the zones others write stay root's, in hoard's group
    }, {k: v for k, v in after.items() if before.get(k) != v}
    assert f"would: ssd: 9 entries of {srv / 'ssd'} made before the install" in dry.stdout, dry.stdout
    assert (f"ssd: problem: {srv / 'ssd/3A/batch1/linked'} has more than one hard link: kept as it is" in real.stdout
            and f"`chown hoard:hoard {srv / 'ssd/3A/batch1/linked'}`" in real.stdout), real.stdout
    changes = [line for line in real.stdout.splitlines() if line.startswith("changes: ")]
    assert changes == [dry.stdout.splitlines()[-1], "changes: 0"], real.stdout  # the same changes; then none
    # the repository moved with the disk is given to this server's postgres by the same walk (`hoard install`'s
    # pgBackRest step, once its top is not postgres's)
    acc = Accounts.of(etc)
    found = take_over(srv / "hd1/pgbackrest", POSTGRES_ID, POSTGRES_ID, acc, apply=True)
    assert found.entries == 2 and owners()["hd1/pgbackrest/backup.info"] == (POSTGRES_ID, POSTGRES_ID)


@pytest.mark.services  # runs `hoard install`'s step in a mount namespace of its own
@pytest.mark.needs(os.geteuid() == 0 and shutil.which("unshare") is not None, "ROOT AND UNSHARE NEEDED (owners are "
                   "changed, the accounts bound in a mount namespace)")
def test_install_takes_nothing_of_a_directory_hoardfs_did_not_make(tmp_path: Path) -> None:
    """A disk or an SSD named by mistake — a home, a data directory of a user this system has —
    is refused with one line naming its files of other accounts, and nothing in it changes owner
    (the takeover gave every file of that tree to hoard: `--disk hd1=/home` handed over every
    home)."""
    etc = _accounts(tmp_path)
    home = tmp_path / "home"
    (home / "trainer/.ssh").mkdir(parents=True)
    (home / "trainer/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA trainer")
    (home / "notes.txt").write_text("root's")
    for p in (home / "trainer", home / "trainer/.ssh", home / "trainer/.ssh/authorized_keys"):
        os.chown(p, TRAINER_ID, TRAINER_ID)
    srv = tmp_path / "srv"
    for d in ("ssd", "hd2"):
        (srv / d).mkdir(parents=True)
    cfg = tmp_path / "hoard.toml"
    cfg.write_text(config_text([("hd1", str(home)), ("hd2", str(srv / "hd2"))], srv / "ssd", QUOTAS, srv / "hoard",
                               False, True))

    def owners() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(tmp_path)): (p.lstat().st_uid, p.lstat().st_gid)
                for p in [home, *home.rglob("*")]}

    before = owners()
    for mode in ("dry", "real"):
        res = _in_namespace(etc, str(cfg), mode)
        assert res.returncode != 0, res.stdout
        lines = [ln for ln in res.stderr.splitlines() if "not a tree hoardfs made" in ln]
        assert len(lines) == 1 and f"disk hd1: {home} holds files of other accounts (trainer" in lines[0], res.stderr
        assert owners() == before, mode


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (owners are changed)")
def test_a_disk_reached_through_a_link_is_taken_over_inside_the_installed_root(tmp_path: Path) -> None:
    """`hoard install --root`: a disk whose path is an absolute link (/srv/hd1 → /data/hd1) is
    that root's /data/hd1 — the link is followed inside the root, as `chroot … chown -R` followed
    it — never this host's /data/hd1."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nhoard:x:{HOARD_ID}:{HOARD_ID}::/:/bin/false\n")
    (root / "etc/group").write_text(f"root:x:0:\nhoard:x:{HOARD_ID}:\n")
    disk = root / "data/hd1"
    (disk / "shards").mkdir(parents=True)
    (disk / "shards/s1.shard").write_text("shard")
    disk.chmod(0o751)
    (root / "srv").mkdir()
    (root / "srv/hd1").symlink_to("/data/hd1")
    for made in ("srv/hd2", "srv/ssd", "srv/hoard"):  # (already the services': nothing to do there)
        (root / made).mkdir()
        os.chown(root / made, HOARD_ID, HOARD_ID)
    for made in ("srv/hd2", "srv/ssd"):
        (root / made).chmod(0o751)
    (root / "srv/hoard").chmod(0o755)
    cfg = tmp_path / "hoard.toml"
    cfg.write_text(config_text([("hd1", "/srv/hd1"), ("hd2", "/srv/hd2")], Path("/srv/ssd"), QUOTAS, Path("/srv/hoard"),
                               False, True))
    host = Host(root, dry_run=False)
    Installer(host, REPO, [], None, {}, False, True, None).directories(load(cfg))
    assert host.changes == 1
    for p in (disk, disk / "shards", disk / "shards/s1.shard"):
        assert (p.stat().st_uid, p.stat().st_gid) == (HOARD_ID, HOARD_ID), p
    assert (root / "srv/hd1").is_symlink() and os.lstat(root / "srv/hd1").st_uid == 0  # the link itself kept


@pytest.mark.services  # runs `hoard install`'s step in a mount namespace of its own, without root's DAC capabilities
@pytest.mark.needs(os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("setpriv") is not None,
                   "ROOT, UNSHARE AND SETPRIV NEEDED")
def test_a_mount_point_root_may_not_look_at_is_kept(tmp_path: Path) -> None:
    """hoard's running mount (not shared: no allow_other) refuses even root a look at its mount
    point (EACCES — here a directory root may not search, root without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH): the next install says it is kept and changes nothing (following a link
    at the path raised PermissionError there, a traceback)."""
    etc, srv = _accounts(tmp_path), tmp_path / "srv"
    for disk in ("hd1", "hd2", "ssd"):
        (srv / disk).mkdir(parents=True)
        os.chown(srv / disk, HOARD_ID, HOARD_ID)
        (srv / disk).chmod(0o751)
    mount = srv / "closed/hoard"
    mount.mkdir(parents=True)
    (srv / "closed").chmod(0)
    cfg = tmp_path / "hoard.toml"
    cfg.write_text(config_text([("hd1", str(srv / "hd1")), ("hd2", str(srv / "hd2"))], srv / "ssd", QUOTAS, mount,
                               False, True))
    try:
        res = _in_namespace(etc, str(cfg), "real",
                            prefix=("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"))
    finally:
        (srv / "closed").chmod(0o755)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"the mount point: {mount} is mounted by another user (the running hoard-mount.service), kept" in res.stdout
    assert res.stdout.splitlines()[-1] == "changes: 0", res.stdout


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (owners are changed)")
def test_an_entry_swapped_for_a_hard_link_between_its_look_and_its_change_is_not_what_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover looks at an entry, then changes its owner. In a zone others write, a user
    could put a hard link to a root-only file in its place in between (fs.protected_hardlinks=0):
    the change by name gave that file to hoard. Now it changes the entry it looked at, through
    one descriptor. The swap is made at the one moment between the two (the rule's decision)."""
    from hoardfs.cli import _takeover

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nhoard:x:{HOARD_ID}:{HOARD_ID}::/:/bin/false\n")
    (etc / "group").write_text(f"root:x:0:\nhoard:x:{HOARD_ID}:\n")
    top = tmp_path / "ssd"
    (top / "3A" / "batch").mkdir(parents=True)
    entry = top / "3A" / "batch" / "a.jpg"
    entry.write_bytes(b"scraped")  # root's: taken over
    secret = tmp_path / "shadow"  # outside, on the same file system, root-only, as /etc/shadow would be
    secret.write_bytes(b"root:$6$...")
    secret.chmod(0o600)
    real = _takeover._Rule.change

    def swapped(self, st, whole, keep_owner=False):
        answer = real(self, st, whole, keep_owner)
        if st.st_ino == os.lstat(entry).st_ino:  # looked at: now the attacker's hard link in its place
            entry.unlink()
            os.link(secret, entry)
        return answer

    monkeypatch.setattr(_takeover._Rule, "change", swapped)
    found = take_over(top, HOARD_ID, HOARD_ID, Accounts.of(etc), shared=("3A", "3C"), apply=True)
    assert (secret.stat().st_uid, secret.stat().st_gid) == (0, 0)
    assert found.entries == 4  # 3A's group, batch, a.jpg as it was looked at (now unlinked), the top


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (owners are changed)")
def test_a_written_file_is_owned_as_the_root_numbers_its_owner_and_never_written_through_a_link(
        tmp_path: Path) -> None:
    """`Host.write` (the config, units, pgBackRest's conf): the owner is the installed root's
    user and group (its /etc/passwd and /etc/group), set by the descriptor before the file has
    a name. Before, root wrote `.<name>.tmp` with write_text — through a link planted there,
    into any file — and chowned it by path."""
    root = tmp_path / "root"
    (root / "etc/hoard").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nhoard:x:{HOARD_ID}:{HOARD_ID}::/:/bin/false\n")
    (root / "etc/group").write_text(f"root:x:0:\nhoard:x:{HOARD_ID}:\npostgres:x:{HOARD_ID + 1}:\n")
    victim = tmp_path / "elsewhere"
    victim.write_text("someone else's file\n")
    (root / "etc/hoard/.hoard.toml.tmp").symlink_to(victim)
    host = Host(root, dry_run=False)
    assert host.write("/etc/hoard/hoard.toml", "[store]\n", 0o640, "root:hoard")
    written = root / "etc/hoard/hoard.toml"
    st = written.lstat()
    assert written.read_text() == "[store]\n" and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, HOARD_ID, 0o640)
    assert victim.read_text() == "someone else's file\n" and victim.stat().st_uid == 0
    assert not host.write("/etc/hoard/hoard.toml", "[store]\n", 0o640, "root:hoard")  # same text: nothing to do
    with pytest.raises(HoardError, match=r"owner root:nobody: no such group in .*/etc \(`hoard install` makes"):
        host.write("/etc/hoard/other.toml", "x\n", 0o640, "root:nobody")
    assert not (root / "etc/hoard/other.toml").exists()
    assert sorted(p.name for p in (root / "etc/hoard").iterdir()) == [".hoard.toml.tmp", "hoard.toml"]


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (owners are changed)")
def test_what_a_written_file_finds_there_is_looked_at_without_following_or_blocking(tmp_path: Path, capsys) -> None:
    """The same text with the wrong owner or mode was left as it was; a FIFO in the
    file's place hung the install (read_text blocks on it); a link to a file with the same
    text was taken for ours. Now: owner and mode are set by a descriptor, a FIFO or a link
    is replaced by the file (the link's target untouched), all without waiting."""
    import signal

    root = tmp_path / "root"
    (root / "etc/hoard").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nhoard:x:{HOARD_ID}:{HOARD_ID}::/:/bin/false\n")
    (root / "etc/group").write_text(f"root:x:0:\nhoard:x:{HOARD_ID}:\n")
    host = Host(root, dry_run=False)
    same = root / "etc/hoard/hoard.toml"
    same.write_text("[store]\n")
    os.chmod(same, 0o666)
    assert not host.write("/etc/hoard/hoard.toml", "[store]\n", 0o640, "root:hoard")  # the text is right
    st = same.lstat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, HOARD_ID, 0o640)
    assert "set owner and mode of /etc/hoard/hoard.toml (root:hoard, 0640; was root:0, 0666)" in capsys.readouterr().out
    assert not host.write("/etc/hoard/hoard.toml", "[store]\n", 0o640, "root:hoard")
    assert "set owner" not in capsys.readouterr().out  # right already: nothing said, nothing done
    fifo = root / "etc/hoard/unit.conf"
    os.mkfifo(fifo)
    victim = tmp_path / "victim"
    victim.write_text("x\n")
    os.chmod(victim, 0o600)
    link = root / "etc/hoard/linked.conf"
    link.symlink_to(victim)
    def hung(*_: object) -> None:
        raise TimeoutError("Host.write waited on what it found in the file's place")

    before = signal.signal(signal.SIGALRM, hung)  # (a hang fails the test instead of stalling the suite)
    signal.alarm(20)
    try:
        assert host.write("/etc/hoard/unit.conf", "x\n", 0o644)
        assert host.write("/etc/hoard/linked.conf", "x\n", 0o644, "root:hoard")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    for path in (fifo, link):
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode) and path.read_text() == "x\n"
    assert link.lstat().st_gid == HOARD_ID
    assert (victim.stat().st_gid, victim.stat().st_mode & 0o7777) == (0, 0o600)  # the link's target untouched


@pytest.mark.needs(os.geteuid() == 0, "ROOT NEEDED (owners are changed)")
def test_a_file_is_not_written_through_a_directory_another_account_swapped_for_a_link(tmp_path: Path) -> None:
    """PostgreSQL's conf.d is the postgres account's; swapped for a link to /etc, root
    wrote the archive settings there (a parent's link was followed). Now `Host.write` refuses in
    one line naming the link, and nothing is written where it points."""
    root = tmp_path / "root"
    (root / "etc/postgresql/15/main").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\npostgres:x:{HOARD_ID}:{HOARD_ID}::/:/bin/false\n")
    (root / "etc/group").write_text(f"root:x:0:\npostgres:x:{HOARD_ID}:\n")
    main = root / "etc/postgresql/15/main"
    os.chown(main, HOARD_ID, HOARD_ID)
    elsewhere = tmp_path / "etc-cron.d"
    elsewhere.mkdir()
    (main / "conf.d").symlink_to(elsewhere)
    os.lchown(main / "conf.d", HOARD_ID, HOARD_ID)
    host = Host(root, dry_run=False)
    with pytest.raises(HoardError, match=rf"/etc/postgresql/15/main/conf.d/hoard.conf not written: .*/main/conf.d: a "
                                         rf"symbolic link owned by uid {HOARD_ID}, not followed"):
        host.write("/etc/postgresql/15/main/conf.d/hoard.conf", "archive_mode = on\n", 0o644, "root:root")
    assert list(elsewhere.iterdir()) == []
