"""RQ job (queue `io`): build a dataset (`hoard dataset build SPEC` without --here;
datasets.api.submit queues it). The spec travels in the job, checked again here."""

from __future__ import annotations

from typing import Any

from fsd.base import config as config_mod


def run_job(config_path: str | None, spec_doc: dict[str, Any], force: bool = False) -> dict[str, Any]:
    from datasets import api
    from datasets.spec import DatasetSpec, parse_spec

    cfg = config_mod.load(config_path)
    spec = parse_spec(DatasetSpec.from_doc(spec_doc).model_dump(mode="json"), f"the spec of dataset job {spec_doc.get('name')}")
    return api.build(cfg, spec, force=force)
