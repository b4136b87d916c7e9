"""RQ jobs of the store (queue `maintenance`). Module-level functions, importable by path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from hoardfs.base import config
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.store import Store


def replicate(config_path: str | None = None, budget_s: float = 300.0, rate_mb_s: float | None = 100.0,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """Bring shards to their replica target within `budget_s`; returns the report as a dict.

    Idempotent: a second run copies only what is still below target.
    """
    with Store.open(config.load(config_path)) as store:
        return asdict(replicate_once(store, budget_s, rate_mb_s, progress=progress))
