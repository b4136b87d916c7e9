"""`hoard disks list|add|retire|replace|activate|forget|smart`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from hoardfs.base import config as config_mod
from hoardfs.base.errors import ConfigError, ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, finite, out, state
from hoardfs.cli.rebuild import run_rebuild
from hoardfs.cli.store import open_store
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.maintenance import lifecycle
from hoardfs.fsd.maintenance.health import disk_status, smart_findings, smart_line, smart_status
from hoardfs.fsd.store import Store

app = typer.Typer(help="The HDDs: list, add, retire, replace, activate, forget; their drives' SMART.",
                  no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False
          ) -> None:
    """Every disk with its state, size, space used by hoardfs and free space."""
    with open_store(ctx, writable=False) as store:
        st = store.status()
    if as_json:
        out.print(json.dumps({"disks": st["disks"]}), markup=False)
        return
    for d in st["disks"]:
        out.print(f"{d['label']:<10} {d['state']:<9} {fmt_bytes(d.get('total_bytes')):>10} total "
                  f"{fmt_bytes(d['used_bytes']):>10} used {fmt_bytes(d.get('free_bytes')):>10} free  {d['path']}"
                  + (f"  ({d['reason']})" if d["reason"] else ""))


@app.command()
def add(
    ctx: typer.Context,
    where: Annotated[str, typer.Argument(metavar="PATH|s3://BUCKET",
                                         help="where the new disk is mounted, or s3://BUCKET: a bucket on an "
                                              "S3-compatible engine (with --endpoint and --capacity-gb)")],
    label: Annotated[str, typer.Option("--label", "-l", help="name for the disk, e.g. wd4t")],
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="s3://BUCKET: the engine's S3 URL, "
                                                 "http://host:port")] = None,
    capacity_gb: Annotated[float | None, typer.Option("--capacity-gb", min=0, callback=finite,
                                                      help="the space hoard may use on the disk (required for "
                                                           "s3://: S3 reports no free space)")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout-s", min=0, callback=finite,
                                                    help="s3://BUCKET: how long one request waits for an answer "
                                                         "(default 60)")] = None,
    copies: Annotated[int | None, typer.Option("--copies", min=1, max=16,
                                               help="s3://BUCKET: the copies the engine keeps of its own, which one "
                                                    "replica there counts as (default 1; docs/scale-out.md)")] = None,
) -> None:
    """Give a mounted disk (or an empty bucket) its identity, register it and append it to hoard.toml."""

    st = state(ctx)
    cfg = st.settings
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", label):
        raise HoardError(f"label {label!r}: use 1-32 of a-z 0-9 _ - (starting with a letter or digit)", ExitCode.USAGE)
    if any(d.label == label for d in cfg.disks):
        raise HoardError(f"a disk labelled {label} is already in {cfg.source}", ExitCode.USAGE)
    if cfg.source is None:
        raise ConfigError("cannot add a disk: the configuration has no file to record it in")
    if where.startswith("s3://"):
        table = _s3_table(cfg, where, label, endpoint, capacity_gb, timeout_s, copies)
        shown = f"bucket {table['bucket']} at {table['endpoint']}"
    else:
        for key, given in (("--endpoint", endpoint), ("--timeout-s", timeout_s), ("--copies", copies)):
            if given is not None:
                raise HoardError(f"{key} is for an S3 disk (s3://BUCKET); {where} is a local disk's path",
                                 ExitCode.USAGE)
        path = Path(where).resolve()
        if any(d.path == path for d in cfg.disks):
            raise HoardError(f"{path} is already a disk in {cfg.source}", ExitCode.USAGE)
        if not path.is_dir():
            raise HoardError(f"{path} does not exist; mount the disk there first", ExitCode.UNAVAILABLE)
        if not cfg.store.allow_directory_disks and not os.path.ismount(path):
            raise HoardError(f"{path} is not a mount point; mount the disk first", ExitCode.UNAVAILABLE)
        table = {"label": label, "path": str(path)} | ({"capacity_gb": capacity_gb} if capacity_gb else {})
        shown = f"at {path}"
    with open(cfg.source, "a") as f:
        f.write("\n[[disks]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    st._settings = config_mod.load(cfg.source)
    with Store.open(st.settings, init=True) as store:
        rec = next(r for r in store.records.values() if r.label == label)
    if rec.state != DiskState.ACTIVE:  # (checked before: an engine that stopped answering since)
        raise HoardError(f"disk {label} is in {cfg.source} but {rec.state.value}: {rec.reason}; `hoard disks "
                         f"activate {label}` once it answers", ExitCode.UNAVAILABLE)
    out.print(escape(f"disk {label} added: {shown}; `hoard replicate` spreads replicas onto it"))


def _s3_table(cfg: config_mod.Settings, where: str, label: str, endpoint: str | None, capacity_gb: float | None,
              timeout_s: float | None, copies: int | None = None) -> dict[str, Any]:
    """The [[disks]] table of an S3 disk `where` (s3://BUCKET), checked — its keys, and that the
    engine answers and its bucket exists and is no hoardfs disk yet — before hoard.toml is
    touched."""
    bucket = where.removeprefix("s3://").rstrip("/")
    table: dict[str, Any] = {"label": label, "kind": "s3", "endpoint": endpoint, "bucket": bucket,
                             "capacity_gb": capacity_gb} | (
        {"timeout_s": timeout_s} if timeout_s is not None else {}) | ({"copies": copies} if copies is not None else {})
    for key, flag in (("endpoint", "--endpoint URL"), ("capacity_gb", "--capacity-gb N")):
        if table[key] is None:
            raise HoardError(f"an S3 disk needs {flag}: see `hoard disks add --help`", ExitCode.USAGE)
    try:
        dc = config_mod.DiskConfig(**table, path=cfg.ssd.root / config_mod.S3_STAGING / label)
    except ValidationError as e:
        raise HoardError(config_mod.describe_validation_error(e, config_mod.DiskConfig), ExitCode.USAGE) from None
    if any(d.kind == "s3" and d.bucket == bucket and d.endpoint == dc.endpoint for d in cfg.disks):
        raise HoardError(f"bucket {bucket} at {endpoint} is already a disk in {cfg.source}", ExitCode.USAGE)
    # deferred: boto3 (hoardfs.fsd.core.s3) is loaded only for an S3 disk
    from hoardfs.fsd.core.s3 import S3Disk

    disk = S3Disk.configured(dc)
    if not disk.bucket_exists():
        raise HoardError(f"bucket {bucket} does not exist at {endpoint}: create it with the engine's tools (e.g. "
                         f"`aws --endpoint-url {endpoint} s3 mb s3://{bucket}`), then run this again",
                         ExitCode.UNAVAILABLE)
    if disk.read_identity() is not None:
        raise HoardError(f"bucket {bucket} at {endpoint} is a hoardfs disk already (it has an identity): give "
                         "this disk an empty bucket", ExitCode.USAGE)
    return table


@app.command()
def retire(
    ctx: typer.Context,
    label: Annotated[str, typer.Argument(help="the disk to take out of service")],
) -> None:
    """Stop new writes to a disk; the replicator copies its shards elsewhere."""

    with open_store(ctx) as store:
        store.set_disk_state(label, DiskState.DRAINING, "retired by the user")
    out.print(escape(f"disk {label} is draining: run `hoard replicate` to copy its shards to other disks, then "
                     f"`hoard disks forget {label}`, then remove its [[disks]] table from hoard.toml and unmount it"))


@app.command()
def replace(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="the lost or dying disk")],
    new: Annotated[str, typer.Argument(help="an added, active disk to hold its replicas")],
    rate_mb_s: Annotated[float, typer.Option(min=0, callback=finite, help="copy at most this fast (0 = no limit)")] = 0,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask when OLD is still healthy")] = False,
) -> None:
    """Rebuild every replica of OLD onto NEW (same as `hoard rebuild --disk OLD --onto NEW`);
    afterwards `hoard disks forget OLD` and remove OLD's [[disks]] table from hoard.toml."""
    run_rebuild(ctx, old, new, rate_mb_s, yes)


@app.command()
def activate(
    ctx: typer.Context,
    label: Annotated[str, typer.Argument(help="a failed or draining disk")],
) -> None:
    """Put a failed or draining disk back into service, after checking it is the registered
    disk and verifying its replicas (bad ones are reported and left for repair)."""
    with open_store(ctx) as store:
        rep = lifecycle.activate(store, label)
    out.print(f"disk {label} is active: {rep.checked} replicas verified, {rep.adopted} shard files listed again, "
              f"{len(rep.bad)} bad")
    for b in rep.bad:
        err.print(f"[red]bad[/] {b}")
    if rep.bad:
        err.print("bad replicas are queued for repair: `hoard verify --repair` or `hoard replicate`")
    for line in rep.unreadable:  # (not listed again: the index keeps the shard's other replicas)
        err.print(escape(f"unreadable {line}"), style="red")


@app.command()
def forget(
    ctx: typer.Context,
    label: Annotated[str, typer.Argument(help="a retired or replaced disk")],
) -> None:
    """Drop a disk from the index once every shard it held has its copies on other disks."""
    with open_store(ctx) as store:
        released = lifecycle.forget(store, label)
    out.print(escape(f"disk {label} forgotten ({released} replicas released); now remove its [[disks]] table from "
                     f"{state(ctx).settings.source} and unmount it"))


@app.command()
def smart(
    ctx: typer.Context,
    labels: Annotated[list[str] | None, typer.Argument(help="these disks only (default: every disk at its path)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
    max_age_s: Annotated[float, typer.Option("--max-age-s", min=0, callback=finite,
                                             help="read again only drives read longer ago than this")] = 0,
) -> None:
    """Read each disk's drive with `smartctl` (root only; others see the last reading) and judge it as `hoard health` does.

    Keeps the readings for `hoard health` and the GUI (systemd/hoard-smart.timer runs it as root).
    Exit 4 if a drive says it is failing; a warning (lost sectors, heat) is printed and does not change it.
    """
    cfg = state(ctx).settings
    known = {d.label for d in cfg.disks}
    for label in labels or []:
        if label not in known:
            raise HoardError(f"no disk {label!r} in {cfg.source}; `hoard disks list` names them", ExitCode.USAGE)
    # (the disks' paths only: the store is not opened — the timer runs this as root, sandboxed)
    disks = [d for d in disk_status(cfg) if not labels or d["label"] in labels]
    readings = smart_status(cfg, disks, max_age_s)
    for d in disks:
        if d["label"] in readings:
            d["smart"] = readings[d["label"]]
    problems, warnings = smart_findings(disks)
    if as_json:
        out.print(json.dumps({"disks": {d["label"]: d.get("smart") for d in disks}, "problems": problems,
                              "warnings": warnings}), markup=False)
    else:
        for d in disks:
            s = d.get("smart")
            out.print(f"{d['label']:<10} {(s or {}).get('device') or '-':<14} "
                      + (smart_line(s) if s else "not read: the disk is not at its path"), markup=False)
            if s and not s.get("available") and s.get("why"):
                out.print(f"{'':<10} {s['why']}", markup=False)
        for w in warnings:
            err.print(f"warning: {w}", markup=False)
        for p in problems:
            err.print(f"problem: {p}", markup=False)
    if problems:
        raise typer.Exit(ExitCode.DEGRADED)
