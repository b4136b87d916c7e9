"""Each run's own log: the INFO-and-above records logged while a run works (a UA_1 step, a
stage or export, a maintenance job), as JSON lines in `<ssd>/state/logs/<kind>-<id>.jsonl`,
appended by whichever process runs it (a worker's work horse, or the CLI with --here). The
GUI's run page shows them, errors first when the run failed (`read`).

A handler on the root logger for the length of the run: RQ runs one job per work horse and
the CLI one run at a time, so every record of that process in that time is the run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.logs import JsonLinesHandler, run_context

#: what a run's log keeps (INFO: what it did; WARNING/ERROR: what went wrong)
LEVEL = logging.INFO
#: the most records `read` returns (the newest)
READ_MAX = 500


def path(cfg: Settings, kind: str, run_id: str) -> Path:
    return cfg.ssd.root / "state" / "logs" / f"{kind}-{run_id}.jsonl"


@contextlib.contextmanager
def captured(cfg: Settings, kind: str, run_id: str) -> Iterator[None]:
    """Append this process's records to the run's log for the with-block (and, under systemd,
    give them the run's journal fields: hoardfs.base.logs.run_context)."""
    p = path(cfg, kind, run_id)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # the SSD itself is the trouble: the run reports that on its own
        with run_context(kind, run_id):
            yield
        return
    handler = JsonLinesHandler(str(p), LEVEL)
    root = logging.getLogger()
    old_level = root.level
    # the process's own handlers (stderr) keep printing what they printed: INFO goes to the
    # run's log only
    quiet = [h for h in root.handlers if h.level == logging.NOTSET]
    for h in quiet:
        h.setLevel(root.getEffectiveLevel())
    root.addHandler(handler)
    if root.getEffectiveLevel() > LEVEL:
        root.setLevel(LEVEL)
    try:
        with run_context(kind, run_id):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for h in quiet:
            h.setLevel(logging.NOTSET)


def read(cfg: Settings, kind: str, run_id: str, failed: bool = False) -> list[dict[str, Any]]:
    """The run's records, oldest first — with `failed`, its WARNING/ERROR ones first — at most
    READ_MAX (the newest); a line that does not parse is skipped."""
    try:
        lines = path(cfg, kind, run_id).read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines[-READ_MAX:]:
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
    if failed:
        records.sort(key=lambda r: r.get("level") not in ("WARNING", "ERROR", "CRITICAL"))
    return records
