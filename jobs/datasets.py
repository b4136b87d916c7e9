"""RQ job (queue `io`): build a dataset — `hoard dataset build SPEC` without --here (and the
GUI) queue it with `submit`; the spec travels in the job (a worker elsewhere has not the
file) and is checked again here. The work is hoardfs.datasets.api.build's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.datasets import api
from hoardfs.datasets.spec import DatasetSpec, parse_spec
from hoardfs.jobs import events, jobkey
from hoardfs.jobs.queues import connect, enqueue_once, redis_required

QUEUE = "io"
JOB_TIMEOUT_S = 24 * 3600


def submit(cfg: Settings, spec: DatasetSpec, mode: str | None = None, force: bool = False) -> str:
    """Queue a build of `spec` on `io`; the RQ job id (`dataset-<name>`: one build of a name
    waits or runs at a time). The layout is checked before anything is queued."""
    spec = api.with_template(spec)  # the worker may not have the layout file: its template travels in the spec
    api.resolve_format(spec)
    mode = mode or spec.mode
    with redis_required(cfg.redis_url):
        return enqueue_once(connect(cfg.redis_url), QUEUE, "hoardfs.jobs.datasets.run_job",
                            str(cfg.source) if cfg.source else None, spec.doc(), mode, force,
                            job_id=f"dataset-{spec.name}", timeout=JOB_TIMEOUT_S,
                            description=f"dataset build {spec.name}", key=jobkey.of(cfg))


def run_job(config_path: str | None, spec_doc: dict[str, Any], mode: str = "copy", force: bool = False
            ) -> dict[str, Any]:
    cfg = config_mod.load(config_path)
    spec = parse_spec(DatasetSpec.from_doc(spec_doc).model_dump(mode="json"),
                      f"the spec of dataset job {spec_doc.get('name')}")
    return build(cfg, spec, mode=mode, force=force)


def build(cfg: Settings, spec: DatasetSpec, mode: str | None = None, force: bool = False,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """hoardfs.datasets.api.build, then the webhooks' `dataset_built` (hoardfs.jobs.events) of a new version —
    the job and `hoard dataset build --here` both build through this; an unchanged spec built
    nothing and emits nothing."""
    report = api.build(cfg, spec, mode=mode, force=force, progress=progress)
    if not report.get("unchanged"):
        ref = f"{report['name']}@{report['version']}"
        events.emit(cfg, "dataset_built", f"dataset_built:{ref}", ref,
                    {k: report.get(k) for k in ("name", "version", "path", "mode", "status", "files", "bytes",
                                                "counts", "samples", "seconds")})
    return report


def submit_materialize(cfg: Settings, ref: str) -> str:
    """Queue `hoard dataset materialize NAME@N` on `io` (the GUI's Materialize); the RQ job id is
    the dataset's one job, `dataset-<name>`, as a build's: a build or materialize of that name
    already waiting or running is that job, and nothing more is queued."""
    name, _n = api.parse_ref(ref)
    with redis_required(cfg.redis_url):
        return enqueue_once(connect(cfg.redis_url), QUEUE, "hoardfs.jobs.datasets.materialize_job",
                            str(cfg.source) if cfg.source else None, ref, job_id=f"dataset-{name}",
                            timeout=JOB_TIMEOUT_S, description=f"dataset materialize {ref}", key=jobkey.of(cfg))


def materialize_job(config_path: str | None, ref: str) -> dict[str, Any]:
    return api.materialize(config_mod.load(config_path), ref)
