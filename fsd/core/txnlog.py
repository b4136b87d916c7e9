"""How long each LMDB write transaction is held, and how much it writes (the rule: no write
transaction held longer than 1 s — writers and the mount never stall behind maintenance).

LMDB lets one writer in at a time across processes: a write transaction held for seconds
stalls every `hoard put`, every mark, every mount refresh behind it. Every write transaction
hoardfs opens goes through `Env.begin` (the `Index`'s `env` is an `Env`), which times it and
names its site (`module:function` of the code that opened it).

- Always: a write transaction held longer than SLOW_S is a debug line naming its site.
- With `HOARD_LMDB_TXN_LOG` naming a file: its puts and deletes are counted too (and the
  marks-log records it appended to the HDDs, `Env.count_writes`), and the process appends at
  exit one JSON line (O_APPEND, one write) — bench/scale.py and the regression tests read it:

      {"argv": [...], "pid": N, "longest_write_txn_s": float, "longest_write_txn_site": "module:function",
       "longest_write_txn_writes": N, "write_txns": N,
       "most_write_txn_writes": N, "most_write_txn_site": "module:function"}

  (`longest_*` is the transaction held longest; `most_*` the one that wrote most entries.)
  Without the variable nothing is counted per entry: a write transaction costs two clock
  reads and a frame lookup more, a read transaction one Python call.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from types import CodeType
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: the environment variable naming the file a process appends its figures to at exit
LOG_VAR = "HOARD_LMDB_TXN_LOG"
#: a write transaction held longer than this is logged (debug) with its site
SLOW_S = 1.0
#: the most entries one write transaction of a command whose work grows with the store may
#: write (puts + deletes + marks-log records): such commands commit in chunks of at most this
#: many. 10,000 entries commit in ~10–30 ms on an SSD (one B-tree page per ~40 objects
#: entries, one fsync), so a writer waits at most that long behind maintenance, while the
#: per-transaction cost (the fsync of the meta page) stays under 1 % of the chunk's work.
TXN_ENTRIES = int(os.environ.get("HOARD_LMDB_TXN_ENTRIES") or 10_000)  # (tests lower it: many chunks, a small store)
#: entries a chunked transaction leaves for its bookkeeping beside its items (the marks
#: log's stamps and each disk's progress in `meta`, a shard's record)
SLACK = 64


def chunked(items: Iterable[T], per_item: int = 1) -> Iterator[list[T]]:
    """`items` in lists small enough for one write transaction each, when each item writes up
    to `per_item` entries: at most (TXN_ENTRIES - SLACK) // per_item items per list."""
    n = max(1, (TXN_ENTRIES - SLACK) // per_item)
    part: list[T] = []
    for item in items:
        part.append(item)
        if len(part) >= n:
            yield part
            part = []
    if part:
        yield part


#: a fault point for the tests that kill a command between two of its chunks:
#: `module:function:N` — the process kills itself (SIGKILL) right after the Nth write
#: transaction opened at that site commits
KILL_VAR = "HOARD_LMDB_KILL_AFTER"


class _Stats:
    def __init__(self) -> None:
        self.txns = 0
        self.longest = 0.0
        self.longest_site = ""
        self.longest_writes = 0
        self.most = 0
        self.most_site = ""

    def line(self) -> bytes:
        return (json.dumps({"argv": sys.argv, "pid": os.getpid(), "longest_write_txn_s": round(self.longest, 6),
                            "longest_write_txn_site": self.longest_site,
                            "longest_write_txn_writes": self.longest_writes, "write_txns": self.txns,
                            "most_write_txn_writes": self.most, "most_write_txn_site": self.most_site})
                + "\n").encode()


_stats = _Stats()
_target = os.environ.get(LOG_VAR) or None
_kill = os.environ.get(KILL_VAR) or None
_kill_site, _, _kill_n = (_kill or "").rpartition(":")
_kill_left = int(_kill_n) if _kill else 0


def _site(code: CodeType, module: str) -> str:
    return f"{module}:{code.co_name}"


def _dump() -> None:
    if _target is None:
        return
    try:
        fd = os.open(_target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, _stats.line())
        finally:
            os.close(fd)
    except OSError as e:  # a measurement, never a reason for a command to fail
        log.debug("cannot append to %s=%s: %s", LOG_VAR, _target, e)


def _forked() -> None:
    global _stats
    _stats = _Stats()  # a forked child reports its own transactions, not its parent's


if _target is not None:
    atexit.register(_dump)
    os.register_at_fork(after_in_child=_forked)


class Env:
    """An `lmdb.Environment` (which cannot be subclassed) whose write transactions are measured;
    everything else is the environment's own."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self._open: _WriteTxn | None = None  # LMDB serialises write transactions: one at a time
        #: set (an error to raise) when no write may be taken: an index a later hoardfs wrote
        #: (hoardfs.fsd.core.formats), opened to read
        self.refused: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def begin(self, db: Any = None, parent: Any = None, write: bool = False, buffers: bool = False) -> Any:
        if not write:
            return self._env.begin(db=db, parent=parent, buffers=buffers)
        if self.refused is not None:
            raise self.refused
        frame = sys._getframe(1)
        return _WriteTxn(self, self._env.begin(db=db, parent=parent, write=True, buffers=buffers),
                         frame.f_code, frame.f_globals.get("__name__", "?"))

    def count_writes(self, n: int) -> None:
        """Count `n` entries the open write transaction wrote outside LMDB (marks-log records
        appended to the HDDs inside it); nothing when none is open or nothing is measured."""
        if self._open is not None and self._open.counted is not None:
            self._open.counted.writes += n


class _Counting:
    """Puts and deletes through `_inner` (a transaction or one of its cursors) counted on
    `_counter` (the transaction's `_Counted`); everything else is the inner object's own."""

    _inner: Any
    _counter: _Counted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put(self, *a: Any, **kw: Any) -> Any:
        self._counter.writes += 1
        return self._inner.put(*a, **kw)

    def putmulti(self, *a: Any, **kw: Any) -> tuple[int, int]:
        consumed, added = self._inner.putmulti(*a, **kw)
        self._counter.writes += consumed
        return consumed, added

    def replace(self, *a: Any, **kw: Any) -> Any:
        self._counter.writes += 1
        return self._inner.replace(*a, **kw)

    def delete(self, *a: Any, **kw: Any) -> Any:
        done = self._inner.delete(*a, **kw)
        self._counter.writes += bool(done)  # (a delete of an absent key writes nothing)
        return done

    def pop(self, *a: Any, **kw: Any) -> Any:
        self._counter.writes += 1
        return self._inner.pop(*a, **kw)


class _Counted(_Counting):
    """A write transaction whose puts and deletes are counted (only with HOARD_LMDB_TXN_LOG),
    its cursors' too."""

    def __init__(self, txn: Any) -> None:
        self._inner = txn
        self._counter = self
        self.writes = 0

    def cursor(self, *a: Any, **kw: Any) -> Any:
        return _CountedCursor(self, self._inner.cursor(*a, **kw))


class _CountedCursor(_Counting):
    def __init__(self, owner: _Counted, cur: Any) -> None:
        self._inner = cur
        self._counter = owner

    def __iter__(self) -> Any:
        return iter(self._inner)


class _WriteTxn:
    """What `Env.begin(write=True)` hands out: the transaction itself inside `with` (counted
    only when measured), timed from begin to commit or abort."""

    def __init__(self, env: Env, txn: Any, code: CodeType, module: str) -> None:
        self._env = env
        self._txn = txn
        self._code = code
        self._module = module
        self.counted = _Counted(txn) if _target is not None else None
        self._t0 = time.monotonic()
        env._open = self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.counted if self.counted is not None else self._txn, name)

    def __enter__(self) -> Any:
        self._txn.__enter__()
        return self.counted if self.counted is not None else self._txn

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._txn.__exit__(*exc)
        finally:
            self._ended()

    def commit(self) -> None:
        try:
            self._txn.commit()
        finally:
            self._ended()

    def abort(self) -> None:
        try:
            self._txn.abort()
        finally:
            self._ended()

    def _ended(self) -> None:
        if self._env._open is not self:
            return  # ended already (commit inside `with`)
        self._env._open = None
        held = time.monotonic() - self._t0
        writes = self.counted.writes if self.counted is not None else 0
        if held > SLOW_S:
            log.debug("LMDB write transaction at %s held %.2f s (%s entries written)",
                      _site(self._code, self._module), held, writes if self.counted is not None else "uncounted")
        s = _stats
        s.txns += 1
        if held > s.longest:
            s.longest, s.longest_site, s.longest_writes = held, _site(self._code, self._module), writes
        if writes > s.most:
            s.most, s.most_site = writes, _site(self._code, self._module)
        if _kill is not None:
            _failpoint(_site(self._code, self._module))


def _failpoint(site: str) -> None:
    global _kill_left
    if site == _kill_site:
        _kill_left -= 1
        if _kill_left == 0:
            os.kill(os.getpid(), signal.SIGKILL)
