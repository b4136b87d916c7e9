"""base/threads.py: a Ctrl-C that interrupts a wait for helper threads is raised only once they
have ended, and never makes one look ended while it runs (python/cpython#90882, which a 3.11
`threading.Thread.join` shows)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from hoardfs.base.threads import Thread, join_all


@pytest.fixture
def ctrl_c_soon() -> Iterator[None]:
    """A SIGINT to the main thread 0.1 s from now, as a Ctrl-C sends it, with a handler that
    raises KeyboardInterrupt (an in-process rq worker may have set its own)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.1, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.join()
        signal.signal(signal.SIGINT, old)


def test_a_join_cut_by_ctrl_c_waits_again(ctrl_c_soon) -> None:
    done = threading.Event()

    def work() -> None:
        time.sleep(0.6)
        done.set()

    t = Thread(work, name="work")
    t.start()
    with pytest.raises(KeyboardInterrupt):
        t.join()
    assert t.is_alive() and not done.is_set()
    t.join()
    assert done.is_set() and not t.is_alive()


def test_join_all_stops_the_threads_and_raises_the_ctrl_c_once_they_ended(ctrl_c_soon) -> None:
    stop = threading.Event()
    ended: list[str] = []

    def work(name: str) -> None:
        stop.wait(10)
        time.sleep(0.5 if name == "w0" else 0.2)  # what it still does once told: a record's write
        ended.append(name)

    threads = [Thread(work, f"w{k}", name=f"w{k}") for k in range(3)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        join_all(threads, on_interrupt=stop.set)
    assert sorted(ended) == ["w0", "w1", "w2"], "join_all raised with a thread still running"
    assert time.monotonic() - t0 < 5, "on_interrupt was not called: the threads waited out their 10 s"
    assert not any(t.is_alive() for t in threads)


def test_join_all_passes_over_a_thread_never_started() -> None:
    ran = threading.Event()
    started, never = Thread(ran.set, name="a"), Thread(ran.set, name="b")
    started.start()
    join_all([started, never])
    assert ran.is_set() and not never.is_alive()


def test_a_loader_reader_that_cannot_start_stops_those_started(monkeypatch) -> None:
    """The training loader's read_assigned starts one reader a disk: when one cannot start
    (no thread left, a Ctrl-C meanwhile) the error is raised and the readers already started
    stop — not left blocked on a full queue for good, reading the store after its owner went."""
    from types import SimpleNamespace

    from hoardfs.fsd.outputs import runs

    started: list[Thread] = []

    class Refusing(Thread):
        def start(self) -> None:
            if started:
                raise RuntimeError("can't start new thread")
            started.append(self)
            super().start()

    monkeypatch.setattr(runs, "Thread", Refusing)
    gen = runs.read_assigned(["a", "b", "a", "a"], lambda i, u: SimpleNamespace(number=i), ahead=1)
    with pytest.raises(RuntimeError):
        next(gen)
    started[0].join(5)
    assert not started[0].is_alive(), "the reader started waits on its full queue for good"
