"""`parse_isolated`: `parse_batch` run in a child process that writes nothing and reads only the
batch and Python's own files — the scraped documents are hostile, and the process that
ingests them otherwise holds the store, the database and the GUI's accounts.

The child (`python -m adapters.isolated FORMAT SOURCE SETTLE_S BATCH_DIR`, one per batch, not
per document) imports the parsers, confines itself with Landlock (fsd.base.landlock: no
write anywhere, reads below the batch directory, the standard library, site-packages, the
packages it loaded and the system's shared libraries; no program may be started), then
screens and parses the batch exactly as in-process, and prints one JSON document on its
stdout: the records (adapters.records), the rejects with their reasons, the claimed files,
the screen's files and identities. It has only its three standard descriptors (subprocess
closes the rest: Landlock leaves a descriptor opened before the restriction its rights).
Nothing else changes: the parent quarantines the rejects, a bad document is still one
reject, and the screen's errors (a batch directory swapped for a link) are the same lines.

Where the kernel has no Landlock the child runs unconfined (`hoard health` warns); the unit's
systemd sandboxing is then the only wall.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from adapters import FORMATS, parse_batch
from adapters.base import Adapter, BatchView, Parsed, Reject
from adapters.records import record_json
from fsd.base import landlock
from fsd.base.errors import ExitCode, HoardError
from fsd.base.paths import display

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def parse_isolated(root: Path, adapter: Adapter,
                   settle_s: float = 0.0) -> tuple[Parsed, BatchView, list[dict[str, Any]]]:
    """`parse_batch(root, adapter, settle_s)` in a confined child: the rejects and claimed files
    (a Parsed whose `records` is left empty), a BatchView with the screen's files and
    identities, and the records in their JSON form (`adapters.records.record_json`: what the
    ingest keeps; rebuilding 20,000 Records only to turn them back took ~2 s of CPU)."""
    cmd = [sys.executable, "-P", "-s", "-m", "adapters.isolated", adapter.format, adapter.source, repr(settle_s),
           str(root)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0 or not proc.stdout:
        log.error("the parser of %s ended with exit %s:\n%s", root, proc.returncode, err)
        last = err.splitlines()[-1] if err else "no message"
        raise HoardError(f"the {adapter.format} parser of batch {display(root.name)} failed ({last[:200]}); a bug: "
                         f"its traceback is in the worker log. After a fix, `hoard ingest --resume {root.name}`",
                         ExitCode.BUG)
    if err:
        log.info("the parser of %s said: %s", root, err)
    doc = json.loads(proc.stdout)
    if "error" in doc:
        raise HoardError(doc["error"], ExitCode(doc["exit_code"]))
    parsed = Parsed(rejects=[Reject(paths, reason) for paths, reason in doc["rejects"]], claimed=set(doc["claimed"]))
    view = BatchView(root, doc["files"])
    view.identity = {rel: tuple(v) for rel, v in doc["identity"].items()}
    return parsed, view, doc["records"]


def confine_parser(root: str) -> bool:
    """The parser's walls: no write anywhere, no program started, reads only below `root` (the
    batch directory, unless it is a link: the screen then refuses it) and Python's own files.
    False where the kernel has no Landlock."""
    batch = [root] if os.path.isdir(root) and not os.path.islink(root) else []
    return landlock.confine_reader(batch)


def _child(argv: list[str]) -> int:
    importlib.import_module("_strptime")  # datetime.strptime imports it lazily: loaded before the walls go up
    fmt, source, settle_s, root = argv
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # a worker killed (-9) takes its parser along
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a parser prints goes to stderr, never into the result
    try:
        confine_parser(root)
        parsed, view = parse_batch(Path(root), FORMATS[fmt](source), float(settle_s))
    except HoardError as e:
        json.dump({"error": e.message, "exit_code": int(e.exit_code)}, out)
        return 0
    json.dump({"records": [record_json(r) for r in parsed.records],
               "rejects": [[r.paths, r.reason] for r in parsed.rejects], "claimed": sorted(parsed.claimed),
               "files": view.files, "identity": view.identity}, out)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
