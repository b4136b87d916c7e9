"""Python's cyclic garbage collector held off while a burst of long-lived objects is built."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = True


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic collection while the block runs (nested and from several threads at once: the
    collector runs again when the last block ends, if it ran before the first began).

    For a short CPU-bound block that builds many objects which outlive it and holds no cycles
    of its own — the batch planner's per-record plan. Every allocation in it counts toward the
    collector's thresholds, and once those objects are promoted CPython runs a full collection,
    which walks every object the process holds: 120 ms of a 40 ms plan in a process holding
    ~260,000 (bench/s3_backend.py; docs/benchmarks.md, "W3-L"). Built with the collector off,
    the plan's objects are looked at once, young, when it runs again; freed by their reference
    counts when the read ends, they never reach the oldest generation."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
