"""Threads whose end a Ctrl-C cannot fake.

CPython before 3.13 marks a thread as ended when a signal handler's exception — the
KeyboardInterrupt of a Ctrl-C — interrupts a `join()` on it: the next `join()` returns at once
and `is_alive()` says False while the thread still runs (python/cpython#90882). Code that must
not go on until its helpers have stopped — the batch read's "no sink is called once `execute`
has returned", a loader's "no reader uses the store once the consumer went" — waits for them
here instead: on an event the thread sets as its last step, which an interrupted wait leaves
as it was."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Thread(threading.Thread):
    """A daemon thread running `target(*args)` whose `join` and `is_alive` go by an event set
    when `target` returns or raises, so an interrupted `join` can be waited on again. In a
    process forked from the one that started it, the thread does not run (a fork copies only
    the thread that forked): ended there."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self._ended = threading.Event()
        self._pid = os.getpid()

    def start(self) -> None:
        self._pid = os.getpid()
        super().start()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._ended.set()

    def _elsewhere(self) -> bool:
        return os.getpid() != self._pid

    def join(self, timeout: float | None = None) -> None:
        if self._elsewhere():
            return
        if self._ended.wait(timeout):
            super().join()  # (its code is done: what is left is the interpreter's own teardown)

    def is_alive(self) -> bool:
        return super().is_alive() and not self._ended.is_set() and not self._elsewhere()


def join_all(threads: Iterable[Thread], on_interrupt: Callable[[], None] | None = None) -> None:
    """Return once every one of `threads` has ended. An exception raised while waiting (a
    Ctrl-C's KeyboardInterrupt) calls `on_interrupt()` — which should tell the threads to
    stop — and is raised once they all have ended: never does this return, or raise, with one
    of them still running. A second Ctrl-C meanwhile waits too. Nothing is waited for in the
    interpreter's teardown (a generator holding readers, kept in a script's global, closed as
    the globals are cleared): its daemon threads are frozen for good then — none runs again,
    and waiting for one would hang the exit."""
    if sys.is_finalizing():
        return
    caught: BaseException | None = None
    for t in threads:
        while t.ident is not None:  # (one never started has nothing to wait for)
            try:
                t.join()
                break
            except BaseException as e:  # raised below, once every thread has ended
                if caught is None:
                    caught = e
                    if on_interrupt is not None:
                        on_interrupt()
    if caught is not None:
        raise caught


def each_at_once(fn: Callable[[T], R], items: Sequence[T], name: str) -> list[R]:
    """`fn(item)` of every item at once, each on a daemon thread of its own: their results in
    order, or the first item's exception. For small blocking reads of many disks (their
    identities): a Ctrl-C while waiting is raised at once, and neither it nor the interpreter's
    exit waits for a read stuck on a hung disk (a pool's threads are joined by both) — the
    threads are left to end on their own, so `fn` must hold nothing its caller lets go."""
    if len(items) < 2:
        return [fn(item) for item in items]
    got: list[Any] = [None] * len(items)
    raised: list[BaseException | None] = [None] * len(items)
    ended = [threading.Event() for _ in items]

    def one(k: int) -> None:
        try:
            got[k] = fn(items[k])
        except BaseException as e:  # (raised by the caller, in its order)
            raised[k] = e
        finally:
            ended[k].set()

    for k in range(len(items)):
        threading.Thread(target=one, args=(k,), name=f"{name}-{k}", daemon=True).start()
    for k, ev in enumerate(ended):
        ev.wait()
        if raised[k] is not None:
            raise raised[k]  # type: ignore[misc]
    return got
