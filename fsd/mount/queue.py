"""One disk's read queue for the mount: bounded worker threads, readers served in turn.

    q = DiskQueue("hdd1", threads=2, seconds_per_read=0.01)
    fut = q.submit(lane, fn, *args)        # a concurrent.futures.Future
    q.cost()                               # expected seconds before a new read would finish

Each reader (the mount passes the process id of the reader that opened the file) has its
own *lane*; the foreground threads take one request from each waiting lane in turn, so a
reader with a thousand queued requests does not make a reader with one wait behind all of
them (like the kernel's CFQ/BFQ between processes). Read-ahead runs on its own thread in a
background lane: a foreground read may wait for a prefetch, never behind one — and one that
has not started yet is cancelled and read by the foreground instead (`take_over`).

`cost()` is what the replica choice uses: when a request submitted now would be done.
Each disk has a seconds-per-request figure — its recent average (exponential, of what it
measured; seeded from the configured `read_mb_s`) or, if longer, the age of its oldest
running request, so a disk that stops answering looks slower every second — and an
expected free time that each submitted request pushes back by that figure (a device
serves so many requests per second: a lone reader's requests then alternate between
replicas in proportion to their speed). Cost = the later of that free time and queue
depth × seconds per request, plus one request. A slow, busy or hung disk loses new
requests to the other replicas; requests already stuck on it are hedged by the reader.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["DiskQueue", "BACKGROUND"]

#: the lane of read-ahead: served by its own thread, never ahead of a reader's request
BACKGROUND = "ahead"
#: weight of the newest measurement in the seconds-per-request average
ALPHA = 0.2
#: read-ahead is not queued on a disk that already has this many background requests
MAX_BACKGROUND = 16


class DiskQueue:
    def __init__(self, label: str, threads: int = 2, seconds_per_read: float = 0.01) -> None:
        self.label = label
        lock = threading.Lock()
        self.cv = threading.Condition(lock)  # foreground threads wait here
        self.bg_cv = threading.Condition(lock)  # the read-ahead thread here (a submit wakes one thread)
        self.lanes: OrderedDict[Any, deque] = OrderedDict()
        self.background: deque = deque()
        self.pending = 0  # foreground requests queued or running
        self.pending_bg = 0
        self.served = 0
        self.seconds_per_read = seconds_per_read
        self.running: dict[int, float] = {}  # worker thread → when its request started
        self.last_submit = 0.0
        self.busy_until = 0.0  # when the requests submitted so far should be done (monotonic)
        self.closed = False
        self.threads = [threading.Thread(target=self._work, args=(False,), name=f"read-{label}-{i}", daemon=True)
                        for i in range(threads)]
        self.threads.append(threading.Thread(target=self._work, args=(True,), name=f"ahead-{label}", daemon=True))
        for t in self.threads:
            t.start()

    # -- submitting ------------------------------------------------------------------------------
    def submit(self, lane: Any, fn: Callable, *args: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        with self.cv:
            if self.closed:
                fut.set_exception(RuntimeError(f"disk {self.label}: the mount is stopping"))
                return fut
            if lane == BACKGROUND:
                self.background.append((fut, fn, args))
                self.pending_bg += 1
                self.bg_cv.notify()
            else:
                self.lanes.setdefault(lane, deque()).append((fut, fn, args))
                self.pending += 1
                self.last_submit = now = time.monotonic()
                self.busy_until = max(now, self.busy_until) + self._per(now)
                self.cv.notify()
        return fut

    def background_full(self) -> bool:
        return self.pending_bg >= MAX_BACKGROUND

    def _per(self, now: float) -> float:
        running = list(self.running.values())
        return max(self.seconds_per_read, now - min(running)) if running else self.seconds_per_read

    def cost(self) -> float:
        """Expected seconds until a request submitted now would be done."""
        now = time.monotonic()
        per = self._per(now)
        return max(self.busy_until - now, self.pending * per) + per

    def close(self) -> None:
        with self.cv:
            self.closed = True
            for lane in [*self.lanes.values(), self.background]:
                for fut, _fn, _args in lane:
                    fut.cancel()
            self.lanes.clear()
            self.background.clear()
            self.cv.notify_all()
            self.bg_cv.notify_all()

    # -- the worker threads ---------------------------------------------------------------------
    def _next(self, background: bool):
        with self.cv:
            while True:
                if self.closed:
                    return None
                if background and self.background:
                    return self.background.popleft()
                if not background and self.lanes:
                    lane, q = next(iter(self.lanes.items()))
                    item = q.popleft()
                    if q:
                        self.lanes.move_to_end(lane)  # round robin: the next lane goes first
                    else:
                        del self.lanes[lane]
                    return item
                (self.bg_cv if background else self.cv).wait()

    def _work(self, background: bool) -> None:
        while (item := self._next(background)) is not None:
            fut, fn, args = item
            try:
                if not fut.set_running_or_notify_cancel():
                    continue  # cancelled while queued (a foreground read took it over)
                t0 = time.monotonic()
                me = threading.get_ident()
                self.running[me] = t0
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # handed to the waiting reader
                    fut.set_exception(e)
                dt = time.monotonic() - t0
                with self.cv:
                    self.running.pop(me, None)
                    self.seconds_per_read += ALPHA * (dt - self.seconds_per_read)
                    self.served += 1
            finally:
                with self.cv:
                    if background:
                        self.pending_bg -= 1
                    else:
                        self.pending -= 1


def take_over(fut: cf.Future) -> bool:
    """Cancel a queued (not yet running) request so the caller can do it itself; False if it
    is already running or done (then wait for it)."""
    return fut.cancel()
