"""How far a long job is, for whoever shows it — without ever slowing the job down.

The store's long operations (verify, rebuild, replicate, gc, copies) call a hook
`progress(done, total)` while they stream, often from reader threads and while holding the
store's locks (scrub and rebuild call it under their own lock; gc under the store lock). So
the hook must cost a few assignments and never wait on anything slow. `Progress.update` is
that hook: it only stores the latest figures in memory.

Showing them is someone else's work, on its own daemon thread (`published`): a Redis key for
the GUI (`hoardfs.jobs.progress`), a progress bar or a line per 10 % for the CLI (`hoardfs.cli._common`).
That thread reads the latest figures at most every `every_s` and hands them to a *sink*; a
sink that blocks or fails (Redis paused, a terminal stopped with Ctrl-S) stalls only that
thread: updates keep landing in memory, the job runs on, and the figures simply do not show
meanwhile. When the job ends, the thread hands the last figures over once more — never
throttled away — and the job waits for that only briefly, and not at all when the sink is
already known to be stuck or failing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0
"""How often `published` hands the latest figures to its sink (at most)."""

FINAL_WAIT_S = 1.0
"""How long the end of a job waits for its last figures to reach a sink that has been
answering; a sink that is failing or stuck is not waited for."""


@dataclass(frozen=True)
class Snapshot:
    """The figures at one moment: `rate` per second since the start, `eta_s` None when not known."""

    what: str
    unit: str  # "bytes", or a noun for counted things ("steps")
    done: int
    total: int | None
    rate: float
    eta_s: float | None
    elapsed_s: float
    state: str  # "running" | "done" | "failed"

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Progress:
    """The latest (done, total) of one job. `update` is safe to call from any thread, at any
    rate, with any lock held: it takes an internal lock that no one holds across IO."""

    def __init__(self, what: str, total: int | None = None, unit: str = "bytes") -> None:
        self.what, self.unit = what, unit
        self._lock = threading.Lock()
        self._done, self._total = 0, total
        self._t0 = time.monotonic()
        self._state = "running"

    def update(self, done: int, total: int | None = None) -> None:
        """The hook: `done` so far (of `total`, when it changes). Reader threads may report out
        of order: with the same total, done never goes back."""
        with self._lock:
            if total is not None and total != self._total:
                self._total, self._done = total, done
            elif done > self._done:
                self._done = done

    def finish(self, failed: bool = False) -> None:
        with self._lock:
            self._state = "failed" if failed else "done"

    def snapshot(self) -> Snapshot:
        with self._lock:
            done, total, state = self._done, self._total, self._state
        elapsed = time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        if state != "running":
            eta: float | None = 0.0
        elif total is None or rate <= 0:
            eta = None
        else:
            eta = max(0, total - done) / rate
        return Snapshot(self.what, self.unit, done, total, round(rate, 1), None if eta is None else round(eta, 1),
                        round(elapsed, 2), state)


@contextlib.contextmanager
def published(progress: Progress, sink: Callable[[Snapshot], None], every_s: float = PUBLISH_EVERY_S,
              final_wait_s: float = FINAL_WAIT_S) -> Iterator[Progress]:
    """Hand `progress`'s figures to `sink` from a daemon thread while the block runs (at most
    every `every_s`), then once more at the end (state done, or failed if the block raised).
    The block's end waits up to `final_wait_s` for that last call, only if the sink's calls
    have been succeeding and none is stuck in flight. A sink's exception is logged at DEBUG:
    figures that cannot be shown are not the job's problem."""
    stop = threading.Event()
    health: dict[str, Any] = {"ok": True, "busy_since": None}  # read by the block's end, written by the thread
    delivered = threading.Event()

    def deliver(snap: Snapshot) -> None:
        health["busy_since"] = time.monotonic()
        try:
            sink(snap)
            health["ok"] = True
        except Exception as e:  # never the job's problem
            health["ok"] = False
            log.debug("progress of %s not shown: %s", progress.what, e)
        finally:
            health["busy_since"] = None

    def loop() -> None:
        while not stop.wait(every_s):
            deliver(progress.snapshot())
        deliver(progress.snapshot())  # the final figures: always handed over, never throttled
        delivered.set()

    thread = threading.Thread(target=loop, name=f"progress {progress.what}", daemon=True)
    thread.start()
    failed = True
    try:
        yield progress
        failed = False
    finally:
        progress.finish(failed)
        stop.set()
        busy = health["busy_since"]
        stuck = busy is not None and time.monotonic() - busy > min(0.1, every_s)
        if health["ok"] and not stuck:
            delivered.wait(final_wait_s)
