"""Taking a batch in: its `_READY` signal read and checked (source, id), the batch's state
recorded and its first step queued; a signal that cannot be taken set aside as
`_READY.rejected` with a `_REASON.txt`."""

from __future__ import annotations

import copy
import itertools
import logging
import os
from pathlib import Path

from hoardfs.adapters import UnknownSource, adapter_for, canonical_source
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode
from hoardfs.base.files import atomic_write, read_in_zone
from hoardfs.jobs import jobkey
from hoardfs.jobs.ingest.state import (
    BATCH_ID,
    QUEUE_OF,
    SIGNAL,
    STEP_TIMEOUT_S,
    BatchState,
    IngestError,
    Status,
    job_id,
    load_state,
    names_work,
    save_state,
    state_dir,
)
from hoardfs.jobs.queues import connect, enqueue_once
from hoardfs.jobs.runs import now

log = logging.getLogger(__name__)


# -- submitting --------------------------------------------------------------------------

#: where `hoard ingest` sets aside a signal it cannot take, and why (docs/adapters.md)
REJECTED_SIGNAL = "_READY.rejected"
REASON_FILE = "_REASON.txt"


class SignalRefused(IngestError):
    """This batch's signal cannot be taken as it is: an unreadable or empty `_READY`, an
    unknown source in it, or a batch id that was ingested before. `hoard ingest` sets the
    signal aside and goes on with the other batches."""

    exit_code = ExitCode.DATA


def submit(cfg: Settings, batch_dir: Path, source: str | None, redis_conn=None, *, queue: bool = True) -> BatchState:
    """Check the batch and its source, record it, enqueue its next step; idempotent.

    With `queue=False` nothing goes to Redis: the caller runs the steps itself (`run_here`).
    A finished batch whose directory is gone is returned as it is; one whose directory is
    back (a new drop under the same id) is refused — it would otherwise never be ingested."""
    batch_dir = _batch_dir(cfg, batch_dir)
    batch_id = batch_dir.name
    if source is not None:
        source = canonical_source(source, cfg.sources)  # UnknownSource: a bad command line
    st = load_state(cfg, batch_id)
    if st is not None and st.finished:
        if batch_dir.exists():
            raise SignalRefused(_reused_id(cfg, st))
        return st
    if st is not None and st.step != "scan" and source in (None, st.source):
        source = st.source  # resuming after the scan: the directory may already be gone
    else:
        if not batch_dir.is_dir():
            raise IngestError(f"no batch directory {batch_dir}")
        source = source or read_signal(cfg, batch_dir)
        for name in (REJECTED_SIGNAL, REASON_FILE):  # a new signal supersedes one set aside
            (batch_dir / name).unlink(missing_ok=True)
    adapter_for(source, cfg.sources)  # a [sources] entry naming a format that does not exist
    before = copy.deepcopy(st)
    if st is None or st.source != source:
        st = BatchState(batch_id, source)
    st.status, st.error = Status.QUEUED.value, None
    save_state(cfg, st)
    if not queue:
        return st
    try:
        enqueue(cfg, st, redis_conn)
    except BaseException:
        # nothing waits in Redis, so the state must not say "queued" (that would stall for ever)
        if before is None:
            (state_dir(cfg) / f"{batch_id}.json").unlink(missing_ok=True)
        else:
            save_state(cfg, before)
        raise
    return st


def _batch_dir(cfg: Settings, batch_dir: Path) -> Path:
    zone3a = cfg.ssd.zone_path("3A").resolve()
    batch_dir = Path(batch_dir).resolve()
    if batch_dir.parent != zone3a:
        raise IngestError(f"{batch_dir} is not a batch directory of zone 3A ({zone3a}/<batch_id>); "
                          "move the batch there first — ingest takes it from the SSD, the scraper's landing zone")
    if not BATCH_ID.match(batch_dir.name):
        raise IngestError(f"batch directory name {batch_dir.name!r} is not a batch id (letters, digits, `.`, `_`, "
                          "`-`, at most 128, starting with a letter or digit); rename the directory")
    if names_work(batch_dir.name):
        raise IngestError(f"batch directory name {batch_dir.name!r} ends in .{batch_dir.name.rpartition('.')[2]}, "
                          "the name of another batch's ingest work file; rename the directory")
    return batch_dir


def _reused_id(cfg: Settings, st: BatchState) -> str:
    """Why a batch dropped again under a finished batch's id is refused, and the new name to give it.

    Refused, not renamed for the person: the id is how they find the batch in reports, the
    mount and the database, so they choose it (docs/adapters.md, "Re-used batch ids")."""
    zone3a = cfg.ssd.zone_path("3A")
    free = next(f"{st.batch_id}.{n}" for n in itertools.count(2)
                if load_state(cfg, f"{st.batch_id}.{n}") is None and not (zone3a / f"{st.batch_id}.{n}").exists())
    when = str(st.report.get("finished_at") or st.updated)[:10]
    return (f"batch {st.batch_id} was already ingested on {when} ({st.status}), so this new drop under the same "
            f"id is not ingested; rename the directory (e.g. `mv {zone3a / st.batch_id} {zone3a / free}`) and "
            "ingest it under the new id")


def read_signal(cfg: Settings, batch_dir: Path) -> str:
    """The source a batch's `_READY` names, as it is recorded (an alias resolved)."""
    sig = batch_dir / SIGNAL
    if not sig.exists():
        raise IngestError(f"{batch_dir} has no {SIGNAL} file; name the source with --source or write it into "
                          f"{sig}")
    try:
        words = read_in_zone(sig, 4096).decode(errors="replace").split()
    except OSError as e:
        raise SignalRefused(f"{sig} cannot be read ({e.strerror or e}); write it again as a file holding the "
                            f"source name (e.g. `echo ytdlp > {sig}`)") from None
    if not words:
        raise SignalRefused(f"{sig} is empty; write the batch's source name into it (e.g. `echo ytdlp > {sig}`)")
    try:
        return canonical_source(words[0], cfg.sources)
    except UnknownSource as e:
        raise SignalRefused(f"{sig}: {e.message}") from None


def set_signal_aside(batch_dir: Path, reason: str) -> str:
    """Rename a refused `_READY` to `_READY.rejected` beside a `_REASON.txt`, so the timer's
    `--ready` does not refuse it again every 30 s while `hoard health` keeps showing it.
    Returns the sentence to add to the reason: how to signal the batch again."""
    atomic_write(batch_dir / REASON_FILE, f"{now()}\t{reason}\n".encode())  # (first: refused, nothing renamed)
    os.replace(batch_dir / SIGNAL, batch_dir / REJECTED_SIGNAL)
    return (f"its signal was set aside as {batch_dir / REJECTED_SIGNAL} (reason in {REASON_FILE}); once fixed, "
            f"write {SIGNAL} again")


def ready_batches(cfg: Settings) -> list[Path]:
    """Batch directories of 3A with a `_READY` signal that were never queued, or whose id was
    ingested before (submit refuses those by name). A failed one waits for a person's
    `--resume`, so a timer does not retry it in a loop."""
    out = []
    for d in _signalled_dirs(cfg):
        if (d / SIGNAL).exists():
            st = load_state(cfg, d.name)
            if st is None or st.finished:
                out.append(d)
    return out


def refused_batches(cfg: Settings) -> list[dict[str, str]]:
    """3A batches whose signal no step will take until a person acts: a signal set aside
    (`_READY.rejected`), or a `_READY` that `--ready` would refuse (checked the same way)."""
    out = []
    for d in _signalled_dirs(cfg):
        if (d / SIGNAL).exists():
            st = load_state(cfg, d.name)
            try:
                if st is not None and st.finished:
                    raise SignalRefused(_reused_id(cfg, st))
                if st is None:
                    read_signal(cfg, d)
            except SignalRefused as e:
                out.append({"batch_id": d.name, "reason": e.message})
        elif (d / REJECTED_SIGNAL).exists():
            try:
                why = read_in_zone(d / REASON_FILE, 4096).decode(errors="replace").strip().split("\t", 1)[-1]
            except OSError:
                why = "its signal was refused"
            out.append({"batch_id": d.name, "reason": f"{why}; {d / REJECTED_SIGNAL} waits: once fixed, "
                                                      f"write {SIGNAL} again"})
    return out


def _signalled_dirs(cfg: Settings) -> list[Path]:
    zone3a = cfg.ssd.zone_path("3A")
    # (a link in 3A is no batch: a scraper's link to another batch would make `--ready` act on
    # that batch under a name it does not own)
    return [d for d in (sorted(zone3a.iterdir()) if zone3a.is_dir() else [])
            if not d.is_symlink() and d.is_dir() and not d.name.startswith("_")
            and ((d / SIGNAL).exists() or (d / REJECTED_SIGNAL).exists())]


def enqueue(cfg: Settings, st: BatchState, redis_conn=None) -> str:
    assert cfg.redis_url
    return enqueue_once(redis_conn or connect(cfg.redis_url), QUEUE_OF[st.step], "hoardfs.jobs.ingest.run_step",
                        str(cfg.source) if cfg.source else None, st.batch_id, st.step,
                        job_id=job_id(st.batch_id, st.step), timeout=STEP_TIMEOUT_S,
                        description=f"ingest {st.batch_id}: {st.step}", key=jobkey.of(cfg))
