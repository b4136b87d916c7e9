"""`hoard mount`, `hoard umount`, `hoard view …`: browse the store with ordinary tools."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base import logs
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import open_input, out, state
from hoardfs.fsd.core.index import open_existing
from hoardfs.fsd.mount import check_mountpoint, is_mounted, run_mount
from hoardfs.fsd.outputs.views import define_view_rows, manifest_rows, remove_view
from hoardfs.fsd.store import Store

view_app = typer.Typer(help="Named views: a manifest of path → sha256 shown under `<mount>/views/NAME`.",
                       no_args_is_help=True)


def mount(
    ctx: typer.Context,
    mountpoint: Annotated[Path, typer.Argument(help="an empty directory")],
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="stay attached (systemd, debugging)")] = False,
    debug: Annotated[bool, typer.Option(help="log every FUSE request")] = False,
    log_file: Annotated[Path | None, typer.Option(help="background mode: log here (default <ssd.root>/mount.log)")] = None,
    nonempty: Annotated[bool, typer.Option("--nonempty", help="mount over a directory that holds files (they are "
                                           "hidden until unmounted)")] = False,
) -> None:
    """Mount the store read-only: by-hash/, batches/, sources/, views/, .hoard/health, inbox → 3A."""
    cfg = state(ctx).settings
    if foreground:
        logs.setup(logging.DEBUG if debug else logging.INFO, force=True)  # the CLI set WARNING
        run_mount(cfg, mountpoint, debug, nonempty=nonempty)
        return
    mountpoint = check_mountpoint(mountpoint, nonempty)  # refused here, before a daemon is started
    before = os.stat(mountpoint).st_dev
    log_path = log_file or cfg.ssd.root / "mount.log"
    cmd = [sys.executable, "-m", "hoardfs"] + (["--config", str(cfg.source)] if cfg.source else []) + [
        "mount", "--foreground", str(mountpoint)] + (["--debug"] if debug else []) + (
        ["--nonempty"] if nonempty else [])
    with open(log_path, "ab") as logf:
        child = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # served = our daemon is alive and a stat of the mount point reaches a new file system
        # (the daemon answered it); a mount point that merely is a mount proves nothing
        if child.poll() is None and _served(mountpoint, before):
            out.print(f"mounted at {mountpoint} (pid {child.pid}, log {log_path}); `hoard umount {mountpoint}` "
                      "to unmount")
            return
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise HoardError(f"the mount daemon exited with {child.returncode}: {tail[0] if tail else ''} "
                             f"(log: {log_path})", ExitCode.UNAVAILABLE)
        time.sleep(0.05)
    raise HoardError(f"{mountpoint} did not appear within 30 s; see {log_path}", ExitCode.UNAVAILABLE)


def _served(mountpoint: Path, before: int) -> bool:
    try:
        return os.stat(mountpoint).st_dev != before
    except OSError:
        return False


def umount(
    mountpoint: Annotated[Path, typer.Argument()],
    lazy: Annotated[bool, typer.Option("--lazy", "-z", help="detach now even if files are open")] = False,
) -> None:
    """Unmount a hoard mount (fusermount3 -u; --lazy when readers are still busy or its daemon died)."""
    if not is_mounted(Path(os.path.realpath(mountpoint.parent)) / mountpoint.name):
        raise HoardError(f"{mountpoint} is not mounted", ExitCode.USAGE)
    r = subprocess.run(["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise HoardError(f"fusermount3: {r.stderr.strip()}" + ("" if lazy else "; if a reader keeps it busy, "
                         f"`hoard umount --lazy {mountpoint}`"), ExitCode.UNAVAILABLE)
    out.print(f"unmounted {mountpoint}")


@view_app.command("add")
def view_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="letters, digits, . _ -")],
    manifest: Annotated[Path, typer.Argument(help="JSON {\"files\": [{\"path\", \"sha256\"}]} or lines `SHA256  PATH`; - for stdin")],
) -> None:
    """Define (or replace) a view: the manifest is checked and stored in the store itself.
    Line manifests are read as a stream: a list of 10 M files needs no memory for itself."""

    with open_input(manifest, "view manifest") as stream, Store.open(state(ctx).settings) as store:
        info = define_view_rows(store, name, manifest_rows(stream))
    out.print(f"view {name}: {info['files']} files, {fmt_bytes(info['bytes'])} → <mount>/views/{name}/")


@view_app.command("list")
def view_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The defined views."""

    index = open_existing(state(ctx).settings.index_dir)
    views = index.iter_views()
    index.close()
    if as_json:  # (one JSON document: the lines below followed it)
        out.print(json.dumps(dict(views)), markup=False)
        return
    for name, info in views:
        out.print(f"{name}: {info['files']} files, {fmt_bytes(info['bytes'])}, created {info['created']}")


@view_app.command("rm")
def view_rm(ctx: typer.Context, name: str) -> None:
    """Remove a view (its files stay in the store)."""

    with Store.open(state(ctx).settings, writable=False) as store:
        remove_view(store, name)
    out.print(f"view {name} removed")
