"""Files an adapter makes from its parsed records (`Adapter.render`: a stroke drawing's PNG).

The scan step makes them, in the ingest job, after the sandboxed parse: the parser's child may
write nothing (hoardfs.adapters.isolated), and what it answers is not trusted — the adapter's `render`
checks again every value it draws from. They wait in the batch's work directory,
`<ssd.root>/state/ingest/<batch>.rendered/` (the service's own, never the scraper's 3A), until
the finish step removes it. From the scan on, each is a file of the batch named
`rendered/<name>`: the store step stores it, the apply step makes it the `relationship` child
of its record's node with the adapter's labels (origin `ingest:<source>`), the package step
puts it in the 3B package and the manifest — so a batch's rendered files are held, deleted
and restored with the batch, like the files it brought.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from hoardfs.adapters import Adapter
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import create_new, fsync_dir, ssd_space, syncfs
from hoardfs.base.modes import FILE
from hoardfs.base.paths import display
from hoardfs.jobs.ingest.state import state_dir

#: the directory of a batch's rendered files, in its locators and its package
RENDERED = "rendered"
#: a rendered file's name: it is made from a value the parser gave (a drawing's key_id)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.[a-z0-9]{1,10}")


def rendered_dir(cfg: Settings, batch_id: str) -> Path:
    return state_dir(cfg) / f"{batch_id}.rendered"


def render_all(cfg: Settings, batch_id: str, adapter: Adapter, records: list[dict[str, Any]],
               files: dict[str, int]) -> dict[str, dict[str, str]]:
    """Make every record's rendered file (written anew: a scan run again starts from an empty
    directory), add to each record the edge from its node to the file, and return the files:
    `rendered/<name>` → the labels it gets. Durable when it returns (one syncfs, not an fsync
    a file: a batch holds tens of thousands of drawings). A record the adapter's checks refuse
    — the parser made it; a parse never gives one — refuses the batch in one line (exit 5),
    the files drawn so far removed."""
    where = rendered_dir(cfg, batch_id)
    shutil.rmtree(where, ignore_errors=True)
    out: dict[str, dict[str, str]] = {}
    for rec in records:
        try:
            made = adapter.render(rec)
            if made is None:
                continue
            rel = f"{RENDERED}/{made.name}"
            if not _NAME.fullmatch(made.name) or rel in out or rel in files:
                raise ValueError(f"the file name {made.name!r} twice, or one that is no plain name")
        except ValueError as e:
            shutil.rmtree(where, ignore_errors=True)
            raise HoardError(f"the {adapter.format} parser of batch {display(batch_id)} gave a record its parse never "
                             f"gives ({display(str(e))[:200]}): nothing of the batch was taken. A parser that lies has "
                             "been made to by a document of the batch (or is a bug): keep the batch for inspection "
                             "and tell the developers", ExitCode.DATA) from None
        with ssd_space(cfg.ssd.root, f"the rendered files of batch {batch_id}", where):
            if not out:
                where.mkdir(mode=0o750, parents=True)
            tmp = where / f".{made.name}.tmp"
            with create_new(tmp, FILE) as fh:
                fh.write(made.data)
            os.rename(tmp, where / made.name)
        rec["edges"].append([rec["node"], ["f", rel], made.relationship])
        out[rel] = made.labels
    if out:
        syncfs(where)
        fsync_dir(where.parent)
    return out


def path_of(cfg: Settings, batch_id: str, root: Path, rel: str, rendered: dict[str, Any]) -> Path:
    """Where a file of the batch is read from: its rendered directory for a rendered file, the
    batch directory in 3A for any other."""
    return rendered_dir(cfg, batch_id) / rel.split("/", 1)[1] if rel in rendered else root / rel


def forget(cfg: Settings, batch_id: str) -> None:
    shutil.rmtree(rendered_dir(cfg, batch_id), ignore_errors=True)
