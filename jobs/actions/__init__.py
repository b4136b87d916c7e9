"""UA_2, actions: work done on a batch of nodes by an S04 worker (docs/actions.md).

`contract` — the ActionContract files (TOML, one per S04 process): their model, loading a
file safely and listing a directory of them. `params` — `--param K=V`; `execute` — starting,
watching and ending a worker; `parse` — a worker's output root read back into child files and
typed result records, hostile-input safe. Runs: `api` — submit, status, release, cancel;
`collect` — what a waiting run produced so far, taken now; `nextstep` — the command a run's
status names next;
`runner` — the RQ job `run_step` and `run_here`; `steps` — what each step does; `pipelines` —
stages a batch goes through, and the RQ job `pipelines_of_batch` of a watched source; `remote` — a
`--remote` run's steps on the server and its job on another host; `state` — a run's key, id
and state file. `labelstudio` — AC5's client of a real Label Studio
(project, tasks by URL, export, COCO, annotations → labels).
"""

from __future__ import annotations

from hoardfs.jobs.actions.api import near_dups_of_batch
from hoardfs.jobs.actions.pipelines import pipelines_of_batch
from hoardfs.jobs.actions.runner import empty_trash, run_here, run_step

__all__ = ["empty_trash", "near_dups_of_batch", "pipelines_of_batch", "run_here", "run_step"]
