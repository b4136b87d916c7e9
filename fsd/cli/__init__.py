"""The `hoard` command line: typer + rich, one-line errors, documented exit codes.

The top layer (docs/ARCHITECTURE.md, Layers): commands parse, call downward and print. Every
command module is imported at start, so what only some commands use is imported inside them.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import lmdb
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperOption

from fsd.base import config as config_mod
from fsd.base import logs
from fsd.base.config import ZONES, embedded_config_text
from fsd.base.errors import ExitCode, HoardError, first_line
from fsd.base.modes import PASSAGE, ensure_dir
from fsd.base.units import fmt_bytes
from fsd.cli import db as _db
from fsd.cli import disks as _disks
from fsd.cli import find as _find
from fsd.cli import fixtures as _fixtures
from fsd.cli import index as _index
from fsd.cli import gc as _gc
from fsd.cli import gui as _gui
from fsd.cli import ingest as _ingest
from fsd.cli import label as _label
from fsd.cli import mount as _mount
from fsd.cli import outputs as _outputs
from fsd.cli import rebuild as _rebuild
from fsd.cli import store as _store
from fsd.cli import verify as _verify
from fsd.cli import zones as _zones
from fsd.cli import services as _services
from fsd.cli import skeleton as _skeleton
from fsd.cli._common import OutputFailed, err, guard_stdout, out, state

def _flag_type(self, ctx):  # a flag takes no value: show no `<bool>` type in --help
    return None if self.is_bool_flag else _typer_option_type(self, ctx)


_typer_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type

app = typer.Typer(
    name="hoard",
    help="hoardfs: a content-addressed data-asset store on unequal second-hand disks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # paragraphs reflowed, `code` shown as code
)
app.add_typer(_services.app, name="services")
app.add_typer(_fixtures.app, name="fixtures")
app.add_typer(_disks.app, name="disks")
app.add_typer(_db.app, name="db")
app.add_typer(_index.app, name="index")
app.add_typer(_zones.app, name="zones")
app.add_typer(_gui.app, name="users")
app.add_typer(_label.app, name="label")
_store.register(app)
_find.register(app, _db.app)
app.command()(_verify.verify)
app.command()(_verify.check)
app.command()(_rebuild.rebuild)
app.command()(_ingest.ingest)
app.command()(_outputs.stage)
app.command()(_outputs.export)
_mount.register(app)
_gc.register(app)
_skeleton.register(app)
app.command("gui")(_gui.gui)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Optional[str], typer.Option("--config", "-c", envvar="HOARD_CONFIG",
                                                  help="hoard.toml to use (default ./hoard.toml)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug messages")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=lambda v: _print_version(v),
                                          help="print the version and exit")] = False,
) -> None:
    logs.setup(logging.DEBUG if verbose else logging.WARNING)
    state(ctx).config_path = config


def _print_version(wanted: bool) -> None:
    if wanted:
        out.print(f"hoard (hoardfs) {importlib.metadata.version('hoardfs')}", markup=False)
        raise typer.Exit()


@app.command()
def init(
    ctx: typer.Context,
    embedded: Annotated[bool, typer.Option("--embedded", help="write the embedded default hoard.toml "
                                           "(directory disks and private servers under ./var) if missing")] = False,
) -> None:
    """Create the directories the configuration names (idempotent)."""
    st = state(ctx)
    if embedded:
        path = Path(st.config_path or "hoard.toml")
        if path.exists():
            out.print(f"config: {path} exists, kept")
        else:
            path.write_text(embedded_config_text())
            out.print(f"config: wrote the embedded default to {path}")
        st.config_path = str(path)
    cfg = st.settings
    for d in cfg.disks:
        if cfg.store.allow_directory_disks:
            ensure_dir(d.path, PASSAGE)
        elif not d.path.is_dir():
            raise HoardError(f"disk {d.label}: {d.path} does not exist; mount the disk there first",
                             ExitCode.UNAVAILABLE)

    # deferred: hoard starts without the store's modules
    from fsd.core.layout import protect_ssd
    from fsd.store import Store

    protect_ssd(cfg, make=True)  # the zones and the index, each with its mode (docs/security.md)

    Store.open(cfg, init=True).close()  # identity files for new disks, orphan recovery
    out.print(f"disks:  {', '.join(f'{d.label}={d.path}' for d in cfg.disks)}")
    out.print(f"ssd:    {cfg.ssd.root} (zones {', '.join(ZONES)}; index {cfg.index_dir})")


@app.command()
def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the machine-readable status")] = False,
    record: Annotated[bool, typer.Option("--record", help="also keep the disks', zones' and store's usage as a "
                                         "sample for the storage page's history (at most one per 10 minutes)")] = False,
) -> None:
    """Status of disks, SSD zones, PostgreSQL and Redis; exit 4 if anything needs attention.

    With --record the same figures become a usage sample (exit 3 if it cannot be recorded)."""
    # deferred: hoard starts without jobs (rq, redis)
    from jobs.health import collect

    cfg = state(ctx).settings
    report = collect(cfg)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        _print_health(report)
    if record:
        _record_usage(cfg, report)
    if not report["ok"]:
        raise typer.Exit(ExitCode.DEGRADED)


def _record_usage(cfg: config_mod.Settings, report: dict) -> None:
    """`hoard health --record`: one line on stderr (stdout may be the JSON document)."""
    # deferred: hoard starts without jobs (psycopg work, the sql layer)
    from jobs.usage import record
    from sql.usage import KEEP, SAMPLE_EVERY

    rec = record(cfg, report)
    pruned = f"; {rec.pruned} rows older than {KEEP.days} days pruned" if rec.pruned else ""
    if rec.ahead:
        pruned += f"; {rec.ahead} rows stamped after now deleted (the database's clock was set back)"
    if rec.taken_at is None:
        err.print(f"usage: not recorded — the last sample ({rec.last_at:%Y-%m-%d %H:%M:%S %Z}) is younger than "
                  f"{SAMPLE_EVERY.seconds // 60} minutes{pruned}", markup=False)
    else:
        err.print(f"usage: sample of {rec.rows} disks, zones and the store recorded{pruned}", markup=False)


def _print_health(report: dict) -> None:
    t = Table(title="disks", title_justify="left")
    for c in ("label", "state", "path", "mounted", "size", "used", "free"):
        t.add_column(c)
    for d in report["disks"]:
        t.add_row(d["label"], d.get("state", "?"), d["path"], "yes" if d["mount_point"] else "no (directory)",
                  fmt_bytes(d.get("total_bytes")), fmt_bytes(d.get("used_bytes")), fmt_bytes(d.get("free_bytes")))
    out.print(t)
    st = report["store"]
    if st["ok"]:
        lag = st["replication"]
        out.print(f"store:    {st['objects']} objects; {lag['shards_below_target']} shards "
                  f"({fmt_bytes(lag['bytes_below_target'])}) below their replica target")
    z = Table(title="ssd zones", title_justify="left")
    for c in ("zone", "used", "reserved", "free", "quota", "level", "outputs"):
        z.add_column(c)
    for name, s in report["zones"].items():
        outs = s.get("outputs", [])
        z.add_row(name, fmt_bytes(s["used_bytes"]), fmt_bytes(s["reserved_bytes"]), fmt_bytes(s["free_bytes"]), fmt_bytes(s["quota_bytes"]),
                  s["level"], ", ".join(f"{sum(o['state'] == k for o in outs)} {k}"
                                        for k in ("sealed", "running", "incomplete") if any(o["state"] == k for o in outs))
                  or "-")
    out.print(z)
    ing = report["ingest"]["batches"]
    gone = report["ingest"].get("deleted") or []  # history, not a problem: `hoard delete --batch`
    if ing or gone:
        out.print("ingest:   " + ", ".join([f"{n} {k}" for k, n in sorted(ing.items())]
                                          + ([f"{len(gone)} deleted"] if gone else [])) + " batches"
                  + (f" (with rejects: {', '.join(report['ingest']['with_rejects'][:5])} — "
                     "see `hoard ingest --status BATCH`)" if report["ingest"]["with_rejects"] else ""))
    db, rd = report["database"], report["redis"]
    out.print(f"database: {'ok, PostgreSQL ' + db['server_version'] if db['ok'] else 'DOWN'}")
    out.print(f"redis:    {'ok, Redis ' + str(rd['redis_version']) if rd['ok'] else 'DOWN'}")
    for p in report["problems"]:
        err.print(f"[bold red]problem:[/] {escape(p)}")
    if report["ok"]:
        out.print("[green]all good[/]")


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option("--queues", "-q", help="comma-separated queue names")] = "ingest,io,sql,maintenance",
    burst: Annotated[bool, typer.Option("--burst", help="quit when the queues are empty")] = False,
) -> None:
    """Run an RQ worker on the hoardfs queues."""
    # deferred: hoard starts without jobs (rq, redis)
    from jobs.guard import exposure
    from jobs.queues import QUEUES, HoardWorker, connect, redis_required, rq_queue

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise HoardError(f"unknown queue(s) {', '.join(unknown)}; allowed: {', '.join(QUEUES)}", ExitCode.USAGE)
    cfg = state(ctx).settings
    assert cfg.redis_url
    if open_to := exposure(cfg.redis_url):
        logging.getLogger("jobs.guard").warning("%s", open_to)
    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        HoardWorker([rq_queue(n, conn) for n in names], connection=conn, config_path=cfg.source).work(burst=burst)


@app.command()
def demo(ctx: typer.Context) -> None:
    """The main job on the embedded default (grows as the issues land)."""
    # deferred: the demo runs every part (jobs, rq, redis, the sample generator)
    from fsd.cli.demo import run_demo

    run_demo(state(ctx).settings)


def _service_down(e: Exception) -> HoardError | None:
    """One line for PostgreSQL or Redis being unreachable, wherever in a command it showed."""
    # neither client is imported here: an error of one comes only from a command that loaded it
    # (the mount daemon loads neither: ~15 MiB of resident memory each)
    psycopg, redis = sys.modules.get("psycopg"), sys.modules.get("redis")
    if psycopg is not None and isinstance(e, psycopg.OperationalError):
        first = first_line(e)
        return HoardError(f"cannot reach the database ({first}); start it with `hoard services up` or fix "
                          "database_url — nothing was changed after this point", ExitCode.UNAVAILABLE)
    if redis is not None and isinstance(e, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return HoardError(f"cannot reach Redis ({str(e).strip()}); start it with `hoard services up` or fix "
                          "redis_url", ExitCode.UNAVAILABLE)
    return None


def _index_path(argv: list[str] | None) -> str:
    """The index directory of the config this run uses (only to name it in a message)."""
    args = list(sys.argv[1:] if argv is None else argv)
    explicit = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")), None)
    try:
        return str(config_mod.load(explicit).index_dir)
    except Exception:  # noqa: BLE001 - a message without the path is still a message
        return "(the index)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line for user errors, a traceback only for bugs.

    Typer (standalone mode) answers usage errors itself with exit code 2.
    """
    guard_stdout()  # click would turn a closed stdout (EPIPE) into exit 1, "a bug" in our table
    try:
        try:
            app(args=argv, prog_name="hoard")
        except lmdb.Error as e:  # the SSD under the index is full or failing: a condition, not a bug
            # deferred: hoard starts without the store's modules
            from fsd.core.index import index_error

            raise index_error(_index_path(argv), e) from None
        except Exception as e:  # a server that went away is a condition to report, not a bug
            down = _service_down(e)
            if down is None:
                raise
            raise down from None
    except OutputFailed as e:
        if e.message:
            err.print(f"hoard: error: {e.message}", markup=False)
        sys.exit(int(e.exit_code))
    except HoardError as e:
        err.print(f"[bold red]hoard: error:[/] {escape(e.message)}", soft_wrap=True)
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        err.print("hoard: interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception:
        traceback.print_exc()
        err.print("[bold red]hoard: internal error[/] (a bug: please report the traceback above)")
        sys.exit(ExitCode.BUG)
