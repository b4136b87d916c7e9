"""At most `gui.login_concurrency` password checks at once (docs/security.md, Logins).

An argon2 check takes 64 MiB and about 0.1 s of every core it is given; 300 logins at once used
to run 300 of them and slowed every page for most of a minute. A login waits here (on the event
loop, holding no thread) for a turn: at most `wait_s`, and only while fewer than `queue` others
of its kind wait and its client holds fewer than `per_client` places (waiting or checked);
otherwise it is told the GUI is busy (`Busy`: HTTP 429 with Retry-After, or the form's message)
and nothing of it was checked.

Who goes next: a login from a recognised device (a browser that signed in as that name before,
hoardfs.gui.devices) before any stranger's, so a flood of strangers' logins cannot keep an owner out;
among each kind, one client after another in turn, so one client's backlog delays another's
login by one check, not by its whole length. Strangers from every loopback address are one
client (hoardfs.gui.auth.client_key): a local user's flood fills its own places, not the queue.
"""

from __future__ import annotations

import asyncio
import collections
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


#: the two kinds of waiting login, in the order they are served
KNOWN, STRANGER = 0, 1


class LoginGate:
    def __init__(self, at_once: int | None = None, wait_s: float = 3.0, queue: int | None = None,
                 per_client: int | None = None) -> None:
        self.at_once = at_once or default_at_once()
        self.wait_s = wait_s
        #: the most logins of one kind waiting at once
        self.queue = queue if queue is not None else 16 * self.at_once
        #: the most places (waiting, or being checked) one client — or one device — holds: a
        #: quarter of the queue, about what `wait_s` lets be checked anyway
        self.per_client = per_client if per_client is not None else 4 * self.at_once
        self._free = self.at_once  # turns nobody holds; while any is free, nobody waits
        #: per kind: the waiting logins of each client, clients in turn order
        self._queues: tuple[collections.OrderedDict[str, collections.deque[asyncio.Future[None]]], ...] = (
            collections.OrderedDict(), collections.OrderedDict())
        self._waiting = [0, 0]
        self._held: collections.Counter[str] = collections.Counter()
        self.running = 0
        #: for /metrics: checks run, logins turned away busy, the most checks ever running at once
        self.checks = self.busy = self.most_at_once = 0

    @property
    def waiting(self) -> int:
        return sum(self._waiting)

    @contextlib.asynccontextmanager
    async def turn(self, client: str = "", known: bool = False) -> AsyncIterator[None]:
        """A turn to check one password (raises Busy when none comes soon). `client`: whom the
        per-client cap counts — the client's address, or a recognised device's id (`known`)."""
        kind = KNOWN if known else STRANGER
        holder = f"{kind}:{client}"
        if self._held[holder] >= self.per_client or (not self._free and self._waiting[kind] >= self.queue):
            self.busy += 1
            raise Busy(self.wait_s)
        self._held[holder] += 1
        try:
            if self._free:
                self._free -= 1
            else:
                await self._wait(kind, holder)
            self.running += 1
            self.checks += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                yield
            finally:
                self.running -= 1
                self._pass_on()
        finally:
            self._held[holder] -= 1
            if not self._held[holder]:
                del self._held[holder]

    async def _wait(self, kind: int, holder: str) -> None:
        """Wait in line until `_pass_on` hands this login a turn, or raise Busy after `wait_s`."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[kind].setdefault(holder, collections.deque()).append(turn)
        self._waiting[kind] += 1
        try:
            await asyncio.wait([turn], timeout=self.wait_s)  # (leaves `turn` as it is on a timeout)
        except BaseException:  # cancelled (the GUI stopping): a turn handed over meanwhile goes on
            if turn.done():
                self._pass_on()
            else:
                self._leave(kind, holder, turn)
            raise
        if not turn.done():
            self._leave(kind, holder, turn)
            self.busy += 1
            raise Busy(self.wait_s)

    def _leave(self, kind: int, holder: str, turn: asyncio.Future[None]) -> None:
        line = self._queues[kind][holder]
        line.remove(turn)
        if not line:
            del self._queues[kind][holder]
        self._waiting[kind] -= 1
        turn.cancel()

    def _pass_on(self) -> None:
        """A turn ends: to the next waiting login — a known device's first, then the next client
        in turn — or back to the free ones."""
        for kind, clients in enumerate(self._queues):
            if clients:
                holder, line = next(iter(clients.items()))
                turn = line.popleft()
                if line:
                    clients.move_to_end(holder)
                else:
                    del clients[holder]
                self._waiting[kind] -= 1
                turn.set_result(None)
                return
        self._free += 1
