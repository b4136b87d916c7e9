"""`hoard init`: the directories the configuration names, and the embedded default config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.config import ZONES, embedded_config_text
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.modes import PASSAGE, ensure_dir, own_dir
from hoardfs.cli._common import out, state
from hoardfs.fsd.core.layout import protect_ssd
from hoardfs.fsd.outputs.zones import TMP
from hoardfs.fsd.store import Store
from hoardfs.jobs import jobkey


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
        if d.kind == "s3":  # its path is its staging folder (the bucket is given its identity by the open)
            ensure_dir(d.path)
        elif cfg.store.allow_directory_disks:
            ensure_dir(d.path, PASSAGE)
        elif not d.path.is_dir():
            raise HoardError(f"disk {d.label}: {d.path} does not exist; mount the disk there first",
                             ExitCode.UNAVAILABLE)

    protect_ssd(cfg, make=True)  # the zones and the index, each with its mode (docs/security.md)
    # where HTTP uploads are staged: the service's own before any upload (a scraper that made it
    # first could lead an upload's files anywhere); one that is not is refused, in one line
    own_dir(cfg.ssd.zone_path("3A") / TMP)

    with Store.open(cfg, init=True) as store:  # identity files for new disks, orphan recovery
        # an S3 disk whose bucket could not be given its identity (no such bucket, an engine that
        # does not answer or refuses the credentials): named with its step, not passed over
        s3 = {d.label for d in cfg.disks if d.kind == "s3"}
        unready = [r for r in store.records.values() if r.label in s3 and r.uuid.startswith("unregistered-")]
    if not cfg.worker.remote:  # the key that signs the server's jobs (a remote host holds none)
        jobkey.of(cfg).secret(make=True)
    where = {d.label: d.path if d.kind == "local" else f"{d.endpoint}/{d.bucket}" for d in cfg.disks}
    out.print(f"disks:  {', '.join(f'{label}={w}' for label, w in where.items())}")
    out.print(f"ssd:    {cfg.ssd.root} (zones {', '.join(ZONES)}; index {cfg.index_dir})")
    if unready:
        raise HoardError("; ".join(f"disk {r.label} is not initialised: {r.reason}" for r in unready)
                         + " (the SSD and the other disks are)", ExitCode.UNAVAILABLE)
