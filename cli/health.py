"""`hoard health`: the one status document of disks, zones, the store, PostgreSQL and Redis."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hoardfs.base import config as config_mod
from hoardfs.base.errors import ExitCode
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, state
from hoardfs.fsd.core.smart import FRESH_S, REFRESH_S
from hoardfs.fsd.maintenance.health import smart_line
from hoardfs.jobs.health import collect
from hoardfs.jobs.usage import record
from hoardfs.sql.usage import KEEP, SAMPLE_EVERY


def health(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print the machine-readable status")] = False,
    record: Annotated[bool, typer.Option("--record", help="also keep the disks', zones' and store's usage as a "
                                         "sample for the storage page's history (at most one per 10 minutes)")] = False,
) -> None:
    """Status of disks (with their drives' SMART), SSD zones, PostgreSQL and Redis; exit 4 if anything needs attention.

    Warnings (a drive losing sectors) are printed and in --json, and do not change the exit status.
    With --record the same figures become a usage sample (exit 3 if it cannot be recorded); a
    SMART reading older than 20 minutes is read again first."""
    cfg = state(ctx).settings
    report = collect(cfg, REFRESH_S if record else FRESH_S, search_import=True)
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
    rec = record(cfg, report)
    pruned = f"; {rec.pruned} rows older than {KEEP.days} days pruned" if rec.pruned else ""
    if rec.ahead:
        pruned += f"; {rec.ahead} rows stamped after now deleted (the database's clock was set back)"
    if rec.taken_at is None:
        err.print(f"usage: not recorded — the last sample ({rec.last_at:%Y-%m-%d %H:%M:%S %Z}) is younger than "
                  f"{SAMPLE_EVERY.seconds // 60} minutes{pruned}", markup=False)
    else:
        smart = f" with {rec.smart_rows} disks' SMART readings" if rec.smart_rows else ""
        err.print(f"usage: sample of {rec.rows} disks, zones and the store recorded{smart}{pruned}", markup=False)


def _print_health(report: dict) -> None:
    t = Table(title="disks", title_justify="left")
    for c in ("label", "state", "path", "mounted", "size", "used", "free", "SMART"):
        t.add_column(c)
    for d in report["disks"]:
        # (smartctl's words are the drive's: shown as text, never as markup)
        t.add_row(escape(d["label"]), d.get("state", "?"), escape(d["path"]), "yes" if d["mount_point"] else "no (directory)",
                  fmt_bytes(d.get("total_bytes")), fmt_bytes(d.get("used_bytes")), fmt_bytes(d.get("free_bytes")),
                  escape(smart_line(d["smart"])) if d.get("smart") else "-")
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
    if report.get("sandbox", {}).get("enforced"):
        out.print(f"sandbox:  Landlock ABI {report['sandbox']['abi']} (parsers and built-in actions confined)")
    if "search" in report:  # optional: a note, never a problem
        out.print(f"search:   {escape(report['search']['note'])}")
    for w in report.get("warnings", []):
        err.print(f"[bold yellow]warning:[/] {escape(w)}")
    for p in report["problems"]:
        err.print(f"[bold red]problem:[/] {escape(p)}")
    if report["ok"] and not report.get("warnings"):
        out.print("[green]all good[/]")
    elif report["ok"]:  # (a warning is worth a look: never "all good" beside one)
        n = len(report["warnings"])
        out.print(f"[yellow]no problems; {n} warning{'s' * (n > 1)} above[/]")
