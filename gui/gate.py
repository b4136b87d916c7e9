"""At most `gui.login_concurrency` password checks at once (docs/security.md, Logins).

An argon2 check takes 64 MiB and about 0.1 s of every core it is given; 300 logins at once used
to run 300 of them and slowed every page for most of a minute. A login waits here (on the event
loop, holding no thread) for a turn: at most `wait_s`, and only while fewer than `queue` others
wait; otherwise it is told the GUI is busy (`Busy`: HTTP 429 with Retry-After, or the form's
message) and nothing of it was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator


def default_at_once() -> int:
    """Half the cores, at least 1 and at most 8: the other half keeps the pages answering."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class Busy(Exception):
    """No turn came within the gate's wait: try again in `retry_s`."""

    def __init__(self, retry_s: float) -> None:
        super().__init__(f"the GUI is busy checking other logins; try again in {math.ceil(retry_s)} s")
        self.retry_s = retry_s


class LoginGate:
    def __init__(self, at_once: int | None = None, wait_s: float = 3.0, queue: int | None = None) -> None:
        self.at_once = at_once or default_at_once()
        self.wait_s = wait_s
        self.queue = queue if queue is not None else 16 * self.at_once
        self._turns: asyncio.Semaphore | None = None  # made on the event loop, at first use
        self.waiting = self.running = 0
        #: for /metrics: checks run, logins turned away busy, the most checks ever running at once
        self.checks = self.busy = self.most_at_once = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A turn to check one password (raises Busy when none comes soon)."""
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.at_once)
        if self.waiting >= self.queue:
            self.busy += 1
            raise Busy(self.wait_s)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._turns.acquire(), self.wait_s)
        except TimeoutError:
            self.busy += 1
            raise Busy(self.wait_s) from None
        finally:
            self.waiting -= 1
        self.running += 1
        self.checks += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            yield
        finally:
            self.running -= 1
            self._turns.release()
