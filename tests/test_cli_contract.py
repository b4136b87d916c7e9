"""The CLI contract: every `hoard` command (found by typer introspection, so a new command
cannot be forgotten) keeps its promises when the world is hostile — PostgreSQL down, Redis
down, a missing, special or unwritable path, a closed stdout:

* never a traceback;
* an exit code from the README's table that means what it says (3 a service is unreachable,
  5 data, 6 space, 2 usage, …);
* a failure is one line on stderr that names the thing (and the next step).

Each run is a real subprocess against a real store on directory disks and the real test
servers (or a socket path where nothing listens)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer.main

from hoardfs.cli import app
from tests.helpers import use_schema

REPO = Path(__file__).resolve().parent.parent
ALLOWED = {0, 2, 3, 4, 5, 6, 9, 130, 141}

#: one invocation per command, shaped as a user would type it; placeholders are filled per run
COMMANDS: dict[str, list[str]] = {
    "action cancel": ["nosuch"],
    "action collect": ["nosuch"],
    "action list": [],
    "action release": ["nosuch"],
    "action resume": ["nosuch"],
    "action run": ["nosuch"],
    "action runs": [],
    "action show": ["nosuch"],
    "action status": ["nosuch"],
    "action validate": ["{FILE}"],  # a text file, no contract: exit 2
    "check": [],
    "db backup": [],
    "db migrate": [],
    "db proposals": [],
    "db restore": ["--from", "dump"],
    "db shell": [],  # stdin is closed: the typed confirmation is declined
    "db status": [],
    "db system-backup": ["--conf", "{MISSING}"],  # not run as postgres: refused in one line
    "db verify-backup": [],
    "dataset build": ["{MISSING}"],  # no such spec file: exit 2
    "dataset diff": ["nosuch@1", "nosuch@2"],
    "dataset list": [],
    "dataset materialize": ["nosuch@1"],
    "dataset publish": ["nosuch@1"],  # no S3 disk and no --dir: refused in one line (exit 2)
    "dataset rm": ["nosuch@1"],
    "dataset show": ["nosuch"],
    "delete": ["--batch", "no-such-batch", "--yes"],
    "demo": [],
    "disks activate": ["nosuch"],
    "disks add": ["{MISSING}", "--label", "hdd9"],
    "disks forget": ["nosuch"],
    "disks list": [],
    "disks replace": ["hdd4", "nosuch"],
    "disks retire": ["nosuch"],
    "disks smart": [],
    "dups": [],
    "events": [],
    "export": [],
    "fixtures generate": ["{OUTDIR}", "--items", "3", "--batches", "1", "--large-max-mb", "1"],
    "gc": [],
    "get": ["{SHA}", "-o", "{OUT}"],
    "gui": [],  # no users in this world: refused (exit 2) before it would serve
    "health": [],
    "index backup": [],
    "info": ["{SHA}"],
    "index rebuild": [],
    "index restore": [],
    "index rewrite-marks": [],
    "index rewrite-pointers": [],
    "index migrate": [],
    "index recount": [],
    "ingest": ["--ready"],
    # (never without --dry-run here: a root it cannot find has no config, and the flags name no disk)
    "install": ["--dry-run", "--root", "{MISSING}"],
    "label add": ["class=cat", "{SHA}"],
    "label rm": ["class", "--nodes", "{FILE}"],
    "labelstudio down": [],
    "labelstudio status": [],
    "labelstudio token": [],
    "labelstudio up": ["--venv", "{MISSING}"],  # no Label Studio there: refused in one line, nothing started
    "init": [],
    "ls": [],
    "mount": ["{MISSING}"],
    "pipeline advance": ["nosuch", "no-such-batch"],
    "pipeline define": ["p", "nosuch"],  # no such action: exit 2
    "pipeline show": [],
    "pipeline watch": ["nosuch", "--source", "nosuch"],  # no such pipeline: one line
    "put": ["{FILE}"],
    "rebuild": ["--disk", "nosuch"],
    "replicate": ["--budget-s", "5"],
    "search": ["a red car"],  # no search.clip_weights in the test config: one line, exit 2
    "select": ["--type", "txt"],
    "services down": [],
    "services status": [],
    "services up": [],
    "stage": [],
    "tokens add": ["bot"],
    "tokens list": [],
    "tokens rm": ["nosuch"],
    "umount": ["{MISSING}"],
    "uninstall": ["--dry-run", "--root", "{MISSING}"],
    "users add": ["alice", "--role", "viewer"],  # stdin is closed: no password, exit 2
    "users hash": [],
    "users list": [],
    "users passwd": ["nosuch"],
    "users rm": ["nosuch"],
    "verify": [],
    "view add": ["v1", "{FILE}"],
    "view list": [],
    "view rm": ["nosuch"],
    "webhooks deliveries": [],
    "webhooks list": [],
    "webhooks requeue": [],
    "webhooks test": [],  # no webhooks in this world: exit 2 in one line
    "worker": ["--burst"],
    "zones clean": ["nosuch"],
    "zones list": [],
}

#: commands whose work needs the service: with it down they must say so (exit 3, naming it)
NEEDS_DATABASE = {"dataset diff", "dataset list", "dataset materialize", "dataset rm", "dataset show",
                  "db backup", "db migrate", "db proposals", "db status", "db verify-backup", "delete", "demo", "dups",
                  "events", "gc", "label add", "pipeline advance", "pipeline show", "pipeline watch", "select", "webhooks deliveries",
                  "webhooks requeue"}
NEEDS_REDIS = {"demo", "worker"}


def _leaves() -> list[tuple[str, Any]]:
    """Every command that runs (not a group), by its words: `db backup`, `put`, …"""
    found = []

    def walk(cmd: Any, prefix: list[str]) -> None:
        if hasattr(cmd, "list_commands"):  # a group; a lazy one's commands load when asked for
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), prefix + [name])
        else:
            found.append((" ".join(prefix), cmd))

    walk(typer.main.get_command(app), [])
    return sorted(found, key=lambda x: x[0])


def _commands() -> list[str]:
    return [name for name, _ in _leaves()]


def test_every_command_is_in_the_contract() -> None:
    """A command added to the CLI must get a line in COMMANDS (and so be run below)."""
    assert _commands() == sorted(COMMANDS)


@pytest.fixture(scope="module")
def world(tmp_path_factory, servers):
    """A real store with one object, and configs with PostgreSQL or Redis unreachable; after
    every command has run with every bad input, that object still reads back intact."""
    from tests.helpers import fresh_schema

    home = tmp_path_factory.mktemp("contract")
    disks = "\n".join(f'[[disks]]\nlabel = "hdd{i}"\npath = "disks/hdd{i}"\ncapacity_gb = 1\n' for i in range(1, 5))
    zones = "\n".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D"))
    (home / "hoard.toml").write_text(
        f"database_url = {servers['database_url']!r}\nredis_url = {servers['redis_url']!r}\n\n"
        f"[store]\nshard_size_mb = 4\nallow_directory_disks = true\n\n{disks}\n[ssd]\nroot = \"ssd\"\n\n{zones}")
    with fresh_schema(servers["database_url"]) as conn:
        use_schema(home, conn)
        ok = _run(home / "hoard.toml", ["init"])
        assert ok.returncode == 0, ok.stderr
        assert _run(home / "hoard.toml", ["db", "migrate"]).returncode == 0
        sample = home / "sample.txt"
        sample.write_text("a sample object\n")
        (home / "adir").mkdir()
        (home / "adir" / "one.txt").write_text("one\n")
        put = _run(home / "hoard.toml", ["put", str(sample)])
        assert put.returncode == 0, put.stderr
        text = (home / "hoard.toml").read_text()
        (home / "pg-down.toml").write_text(text.replace("database_url = ", f"database_url = 'postgresql:///x?host="
                                                        f"{home}/nothing-listens'\n#"))
        (home / "redis-down.toml").write_text(text.replace("redis_url = ", f"redis_url = 'unix://{home}/no.sock'\n#"))
        yield {"home": home, "sha": put.stdout.split()[0], "file": sample}
        back = _run(home / "hoard.toml", ["get", put.stdout.split()[0]])
        assert back.returncode == 0 and back.stdout == sample.read_text(), back.stderr


def _run(config: Path, args: list[str], stdout=subprocess.PIPE, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "HOARD_DATABASE_URL", "HOARD_REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(config), *args], cwd=config.parent,
                          stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          timeout=timeout, env=env | {"COLUMNS": "200"})


def _args(command: str, world: dict, **over: str) -> list[str]:
    home = world["home"]
    fill = {"{MISSING}": str(home / "does-not-exist"), "{FILE}": str(world["file"]), "{SHA}": world["sha"],
            "{OUT}": str(home / "out.bin"), "{OUTDIR}": str(home / "fixtures-out")} | over
    return command.split() + [fill.get(a, a) for a in COMMANDS[command]]


def _check(command: str, res: subprocess.CompletedProcess, scenario: str) -> None:
    what = f"`hoard {command}` with {scenario}: exit {res.returncode}\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr, what
    assert res.returncode in ALLOWED, what
    if res.returncode not in (0, 4, 141):
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines, what
        if res.returncode in (3, 5, 6):
            errors = [ln for ln in lines if ln.startswith("hoard: error:")]
            rejects = [ln for ln in lines if ln.startswith("rejected ")]  # put names each rejected file
            assert (len(errors) == 1 and len(errors[0]) > 30) or (res.returncode == 5 and rejects), what


def _scenario(world: dict, config: str, scenario: str, needs: set[str], service: str) -> list[str]:
    failures = []

    def one(command: str) -> None:
        res = _run(world["home"] / config, _args(command, world))
        try:
            _check(command, res, scenario)
            if command in needs:
                assert res.returncode == 3 and service.lower() in res.stderr.lower(), \
                    f"`hoard {command}` with {scenario}: exit {res.returncode}, must be 3 naming {service}\n{res.stderr}"
        except AssertionError as e:
            failures.append(str(e))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, sorted(COMMANDS)))
    return failures


def test_postgresql_down(world) -> None:
    """With PostgreSQL unreachable every command answers in one line or works without it;
    the commands that need it exit 3 naming the database."""
    failures = _scenario(world, "pg-down.toml", "PostgreSQL down", NEEDS_DATABASE, "database")
    assert not failures, "\n\n".join(failures)


def test_redis_down(world) -> None:
    """With Redis unreachable the same holds; the commands that need it exit 3 naming Redis."""
    failures = _scenario(world, "redis-down.toml", "Redis down", NEEDS_REDIS, "redis")
    assert not failures, "\n\n".join(failures)


def test_a_database_without_hoardfs_tables(world, servers) -> None:
    """A database that lacks hoardfs's tables (never migrated, or a dump of an older schema
    restored): every command answers in one line or works without them, and those that read
    them exit 3 naming `hoard db migrate` — before, psycopg's UndefinedTable traceback (exit 1)
    from select, label, delete, db backup, stage and export."""
    import psycopg

    from tests.helpers import fresh_schema

    home = world["home"]
    text = (home / "hoard.toml").read_text()
    with fresh_schema(servers["database_url"]) as bare:
        schema = bare.execute("SELECT current_schema()").fetchone()[0]
        url = psycopg.conninfo.make_conninfo(servers["database_url"], options=f"-c search_path={schema}")
        (home / "unmigrated.toml").write_text(text.replace("database_url = ", f"database_url = {url!r}\n#", 1))
        failures = []
        reads = {"dataset list", "dataset show", "db backup", "db proposals", "db verify-backup", "delete", "dups", "events",
                 "label add", "select", "webhooks deliveries", "webhooks requeue"}

        def one(command: str) -> None:
            res = _run(home / "unmigrated.toml", _args(command, world))
            try:
                _check(command, res, "an unmigrated database")
                if command in reads:
                    assert res.returncode == 3 and "`hoard db migrate`" in res.stderr, \
                        f"`hoard {command}`: exit {res.returncode}, must be 3 naming `hoard db migrate`\n{res.stderr}"
            except AssertionError as e:
                failures.append(str(e))

        with ThreadPoolExecutor(4) as pool:  # (not the commands that would migrate it, or start and stop services)
            list(pool.map(one, [c for c in sorted(COMMANDS) if c not in ("db migrate", "db restore", "demo",
                                                                          "services down", "services up")]))
        for kind in ("export", "stage"):
            sel = home / "all.json"
            sel.write_text("{}")
            res = _run(home / "unmigrated.toml", [kind, f"{kind}-unmigrated", "--layout", "by_sha256", "--selector",
                                                  str(sel), "--here"])
            try:
                _check(kind, res, "an unmigrated database")
                assert res.returncode == 3 and "`hoard db migrate`" in res.stderr, res.stderr
            except AssertionError as e:
                failures.append(str(e))
    assert not failures, "\n\n".join(failures)


def test_closed_stdout(world) -> None:
    """Every command whose reader went away (`| head` closed before it wrote) stops quietly
    with 141 or finishes; never a traceback, never 'internal error'."""
    failures = []

    def one(command: str) -> None:
        r, w = os.pipe()
        os.close(r)
        try:
            res = _run(world["home"] / "hoard.toml", _args(command, world, **{"{OUT}": "-"} if False else {}),
                       stdout=w)
        finally:
            os.close(w)
        try:
            _check(command, res, "stdout closed")
            assert "internal error" not in res.stderr
        except AssertionError as e:
            failures.append(str(e))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [c for c in sorted(COMMANDS) if c not in ("demo", "services down", "services up")]))
    assert not failures, "\n\n".join(failures)


BAD_PATHS = {
    "missing": "{home}/no/such/dir/x",
    "a directory": "{home}",
    "unwritable": "/proc/1/no-such-file",
    "/dev/full": "/dev/full",
}


@pytest.mark.parametrize("kind", sorted(BAD_PATHS))
def test_bad_path_arguments(world, kind: str) -> None:
    """Path arguments that are missing, a directory, unwritable or a full device: one line
    naming the path, an exit code that says what kind of problem it is."""
    home = world["home"]
    bad = BAD_PATHS[kind].format(home=home)
    runs = {
        "put": ["put", bad] if kind != "a directory" else ["put", str(world["file"].parent / "adir")],
        "get -o": ["get", world["sha"], "-o", bad],
        "view add": ["view", "add", "v2", bad],
        "put --manifest": ["put", "--manifest", bad],
        "disks add": ["disks", "add", bad, "--label", "hdd8"],
        "mount": ["mount", bad],
        "action validate": ["action", "validate", bad],
        "fixtures generate": ["fixtures", "generate", bad, "--items", "2", "--batches", "1", "--large-max-mb", "1"],
    }
    # walking a directory is fine; an output directory that does not exist yet is created
    valid = {"a directory": {"put", "disks add", "fixtures generate"}, "missing": {"fixtures generate"}}.get(kind, set())
    failures = []
    for name, args in runs.items():
        res = _run(home / "hoard.toml", args)
        try:
            _check(name, res, f"a {kind} path")
            if name not in valid:
                assert res.returncode != 0, f"`hoard {name}` accepted a {kind} path {bad}\n{res.stdout}"
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n\n".join(failures)
    assert Path("/dev/full").is_char_device(), "a command replaced /dev/full by a file"


def _json_commands() -> list[str]:
    return [name for name, cmd in _leaves() if any(p.name == "as_json" for p in cmd.params)]


def test_json_output_parses(world) -> None:
    """Every command with --json prints JSON (one document, or one per line for streams)."""
    import json

    assert {"disks list", "verify", "replicate", "rebuild", "db proposals", "db status", "view list", "health",
            "put", "gc", "zones list"} <= set(_json_commands())
    failures = []
    for command in _json_commands():
        res = _run(world["home"] / "hoard.toml", _args(command, world) + ["--json"])
        if res.returncode not in (0, 4):
            continue  # a refusal (e.g. rebuild of an unknown disk) is checked by the other tests
        try:
            try:
                json.loads(res.stdout)
            except ValueError:
                for line in res.stdout.splitlines():
                    json.loads(line)
        except ValueError as e:
            failures.append(f"`hoard {command} --json`: {e}: {res.stdout[:300]!r}")
    assert not failures, "\n".join(failures)
