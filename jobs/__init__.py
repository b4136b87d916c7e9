"""S02 jobs: RQ queues, the workflows that run on them (UA_1 ingest, store maintenance), and
the `hoard health` document that puts every part's status together (`hoardfs.jobs.health`).

Job functions live at module level so workers import them by dotted path
(`hoardfs.jobs.ingest.run_step`, `hoardfs.jobs.store_jobs.replicate`); the NiceGUI pages only enqueue
and watch them.
"""

from hoardfs.jobs.queues import QUEUES as QUEUES
from hoardfs.jobs.queues import connect as connect

__all__ = ["QUEUES", "connect"]
