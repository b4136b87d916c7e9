"""UA_1 on RQ: a scraped batch in zone 3A → store + database → a 3B package → gone from 3A.

    submit(cfg, batch_dir, source)   # validate, record state, enqueue step 1
    run_step(config_path, batch_id, step)   # an RQ job; on success it enqueues the next step

Steps and their queues (each idempotent by batch id, so a retry or a crash resumes):

    scan     ingest       screen + parse (adapter), quarantine rejects, save the records (no file
                          accepted: the batch fails and nothing moves)
    store    io           put the good files into S01 (dedup, write_ack replicas)
    apply    sql          one write-intent `ingest:<batch>` (S05); a schema proposal for a new source
    package  io           tar parts + manifest in 3B/<batch>/; manifest also stored in S01
    finish   maintenance  check every file is stored, empty 3A/<batch>, event + report

A batch whose signal cannot be taken (an unreadable or empty `_READY`, an unknown source, an
id ingested before) is refused by name; `hoard ingest` sets its `_READY` aside as
`_READY.rejected` with a `_REASON.txt`, and `hoard health` lists it until a person acts.

State lives in `<ssd.root>/state/ingest/<batch>.json` (status, steps done, report), written
atomically after every step; `hoard ingest --status BATCH` and `hoard health` read it.
"""

from __future__ import annotations

from hoardfs.jobs.ingest.health import ingest_status, stalled_batches  # noqa: F401
from hoardfs.jobs.ingest.runner import _run_step_locked, run_here, run_step, work_here  # noqa: F401
from hoardfs.jobs.ingest.signals import (  # noqa: F401
    REASON_FILE,
    REJECTED_SIGNAL,
    SignalRefused,
    enqueue,
    read_signal,
    ready_batches,
    refused_batches,
    set_signal_aside,
    submit,
)
from hoardfs.jobs.ingest.state import (  # noqa: F401
    BATCH_ID,
    QUEUE_OF,
    SIGNAL,
    STEP_TIMEOUT_S,
    STEPS,
    BatchState,
    IngestError,
    Status,
    all_states,
    forget_deleted,
    job_id,
    load_state,
    save_state,
    state_dir,
    work_path,
)
from hoardfs.jobs.ingest.steps import _STEPS, PACKAGE_OVERHEAD_PER_FILE  # noqa: F401
from hoardfs.jobs.queues import unserved_queues  # noqa: F401 - tests wait on it through hoardfs.jobs.ingest
