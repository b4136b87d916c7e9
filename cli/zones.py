"""`hoard zones [list] [--json]` and `hoard zones clean ID`: the SSD zones' quotas, reservations
and outputs (hoardfs.fsd.outputs.zones)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hoardfs.base.config import ZONES
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, state
from hoardfs.fsd.outputs import zones as zones_mod
from hoardfs.jobs import outputs

app = typer.Typer(help="The SSD zones: quota, used, reserved, free, state, reservations and outputs; "
                       "`clean ID` removes a sealed output.", invoke_without_command=True)


@app.callback()
def _zones(ctx: typer.Context,
           as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False) -> None:
    """The SSD zones (the same as `hoard zones list`)."""
    if ctx.invoked_subcommand is None:
        list_(ctx, as_json)


@app.command("list")
def list_(ctx: typer.Context,
          as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False) -> None:
    """Per zone: quota, bytes on disk, reserved, free and state (ok / warn / deny / emergency);
    each reservation (job, bytes, age, stale?) and output (sealed, running or incomplete)."""
    report = zones_mod.usage(state(ctx).settings)
    if as_json:
        out.print(json.dumps({"zones": report}), markup=False)
        return
    t = Table(title="ssd zones", title_justify="left")
    for c in ("zone", "quota", "used", "reserved", "free", "state"):
        t.add_column(c, justify="right" if c in ("quota", "used", "reserved", "free") else "left")
    for z, s in report.items():
        t.add_row(z, fmt_bytes(s["quota_bytes"]), fmt_bytes(s["used_bytes"]), fmt_bytes(s["reserved_bytes"]),
                  fmt_bytes(s["free_bytes"]), _state(s))
    out.print(t)
    for z, s in report.items():
        if s["error"]:
            err.print(f"[bold red]zone {z}:[/] {escape(s['error'])}")
        for r in s["reservations"]:
            out.print(f"{z} reserved  {escape(r['id'])}: {fmt_bytes(r['bytes'])} by job {escape(r['job'])} "
                      f"(pid {r['pid']} on {escape(r['host'])}, {_age(r['age_s'])} old)"
                      + (" [red]stale: its process is gone[/]" if r["stale"] else ""))
        for o in s["outputs"]:
            what = (f"sealed {o['sealed']} ({o['kind']})" if o["state"] == "sealed"
                    else f"running (job {escape(o['job'])}, pid {o['pid']})" if o["state"] == "running"
                    else f"[yellow]incomplete[/], {_age(o['age_s'])} old — `hoard zones clean {escape(o['id'])}`")
            out.print(f"{z} output    {escape(o['id'])}: {fmt_bytes(o['bytes'])}, {what}")


def _state(s: dict[str, Any]) -> str:
    if not s["present"]:
        return "missing (`hoard init`)"
    return s["level"] + (f", file system: {fmt_bytes(s['fs_free_bytes'])} free" if s["fs_short"] else "")


@app.command()
def clean(
    ctx: typer.Context,
    output_id: Annotated[str, typer.Argument(metavar="ID", help="the output's directory name in its zone")],
    zone: Annotated[str | None, typer.Option("--zone", help="3B, 3C or 3D (when the id is in several)")] = None,
) -> None:
    """Remove a sealed output (or an incomplete one no job writes) and release its quota;
    refused while its job still runs."""
    if zone is not None and zone not in ZONES:
        raise HoardError(f"--zone {zone}: no such zone; zones are {', '.join(ZONES)}", ExitCode.USAGE)

    res: dict[str, Any] = outputs.clean(state(ctx).settings, output_id, zone)
    # what finished action runs set aside (a delete cut short included) goes now too
    trash = zones_mod.empty_trash(state(ctx).settings)
    stale = res["stale_reservation"]
    if res["view_removed"]:  # a view-mode output: its view goes too (gc then frees what only it named)
        out.print(f"view {escape(res['view'])} removed")
    if res["request_forgotten"]:
        out.print(f"the request of {escape(output_id)} is forgotten: the id is free again")
    out.print(f"zone {res['zone']}: removed {res['state']} output {escape(output_id)} "
              f"({fmt_bytes(res['freed_bytes'])} freed)"
              + (f"; reclaimed the stale reservation of job {escape(stale['job'])} (pid {stale['pid']} gone)"
                 if stale else ""))
    if trash["entries"]:
        out.print(f"deleted {trash['entries']} output(s) set aside in the zones' .trash by finished action runs "
                  f"({fmt_bytes(trash['freed_bytes'])} freed)")


def _age(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
