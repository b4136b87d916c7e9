"""The objects a process already holds kept out of the cyclic collector's way while a burst of
long-lived objects is built; the memory a burst of short-lived ones freed handed back."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Every object the process holds when the block begins moved out of the cyclic
    collector's walks (`gc.freeze`) until it ends (`gc.unfreeze`); the collector itself keeps
    running, on what the block makes.

    For a short CPU-bound block that builds many objects which outlive it: the batch planner's
    per-record plan. Its allocations count toward the collector's thresholds, and once they
    are promoted CPython runs a full collection, which walks every object the process holds:
    120 ms of a 40 ms plan in a process holding ~260,000 (docs/benchmarks.md, "The batch read's
    client work"); frozen, those are not walked.

    Nothing is left switched off: a block cut short (a Ctrl-C between the freeze and the
    `try`) leaves the objects of then frozen — not collected, never lost — until the next
    block's end unfreezes them. The freeze is the process's: blocks in two threads at once
    unfreeze each other's (the later one then may walk everything: time, not harm), and a
    `gc.freeze()` of other code is undone at a block's end (none in hoardfs's processes)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` (looked up among the process's own symbols: no library search), or
    None where the C library has none (musl, macOS)."""
    try:
        import ctypes  # deferred: a Python built without it trims nothing

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _libc_trim()


def give_back_freed() -> None:
    """Hand the memory the C allocator holds free back to the system (glibc's `malloc_trim`;
    nothing elsewhere): after a burst of short-lived allocations — a training loader's
    manifest read in pieces of 8 MiB, its epoch's plan — the heap keeps their pages, and a
    process that then holds a buffer's worth of samples for hours would keep them too. About a
    millisecond; not for a loop: trimming pages the allocator reuses at once costs their
    faults again."""
    if _TRIM is not None:
        _TRIM(0)
