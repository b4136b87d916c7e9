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

    For a short CPU-bound block — no I/O — that builds many objects which outlive it and holds
    no cycles of its own: the batch planner's per-record plan. Every allocation in it counts
    toward the collector's thresholds, and once those objects are promoted CPython runs a full
    collection, which walks every object the process holds: 120 ms of a 40 ms plan in a
    process holding ~260,000 (docs/benchmarks.md, "The batch read's client work"). Built with
    the collector off, the plan's objects are looked at once, young, when it runs again.

    The state is the process's: a thread that turns the collector off while a block runs has
    it turned on again when the last block ends, and a child forked meanwhile starts with it
    off. A KeyboardInterrupt never leaves it off: the count is raised before the collector is
    turned off, and the way out is retried until it is done (the interrupt raised after)."""
    global _depth, _was_enabled
    counted = False
    try:
        with _lock:
            if _depth == 0:
                _was_enabled = gc.isenabled()
            _depth += 1
            counted = True  # (no signal is taken between these two: no call, no backward jump)
            gc.disable()  # (a signal taken after it: counted, so the way out turns it on again)
        yield
    finally:
        if counted:
            _leave()


def _leave() -> None:
    global _depth
    interrupted: BaseException | None = None
    while True:
        try:
            with _lock:
                _depth -= 1
                if _depth == 0 and _was_enabled:
                    gc.enable()
            break
        except BaseException as e:  # (a KeyboardInterrupt while the lock was awaited: nothing done yet)
            interrupted = e
    if interrupted is not None:
        raise interrupted
