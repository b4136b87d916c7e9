"""What every `hoard` command shares: the lazily loaded config and the consoles."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat as st_mod
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from hoardfs.base import config as _config
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.paths import display
from hoardfs.base.progress import PUBLISH_EVERY_S, Progress, Snapshot, published
from hoardfs.base.units import fmt_bytes

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def finite(value: float | None) -> float | None:
    """Typer callback for a number option: click's `min=` lets `nan` through (every comparison
    with it is false), and a `nan` budget or rate ran with no time or no limit."""
    if value is not None and math.isnan(value):
        raise typer.BadParameter("nan is not a number; give a number of 0 or more")
    return value


@dataclass
class State:
    config_path: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = _config.load(self.config_path)
        return self._settings


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


class OutputFailed(HoardError):
    """Our own output could not be written: the reader went away (`| head`: exit 141, no
    message — it has what it wanted) or the device behind stdout is full or failing."""


class _Guarded:
    """A stream whose write errors become OutputFailed — not an OSError, which click would
    swallow into exit 1 — and after which nothing more is written (the final flush stays quiet)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._dead = False

    def _call(self, fn, *args):
        if self._dead:
            return None
        try:
            return fn(*args)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ENOSPC, errno.EIO, errno.EDQUOT):
                raise
            self._dead = True
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            if e.errno == errno.EPIPE:
                raise OutputFailed("", ExitCode.OUTPUT_CLOSED) from None
            raise OutputFailed(f"cannot write the output: {e.strerror}; send it somewhere with room "
                               "(`-o FILE` or a redirect)",
                               ExitCode.NO_SPACE if e.errno in (errno.ENOSPC, errno.EDQUOT) else ExitCode.UNAVAILABLE
                               ) from None

    def write(self, data):
        n = self._call(self._stream.write, data)
        if isinstance(data, str) or not isinstance(n, int):
            return n
        # an unbuffered stdout (PYTHONUNBUFFERED, `python -u`) is a raw file: a write to a pipe
        # whose reader went away returns short instead of failing; the next one gets EPIPE
        view, done = memoryview(data).cast("B"), n
        while 0 < n and done < len(view):
            n = self._call(self._stream.write, view[done:])
            done += n or 0
        return done

    def writelines(self, lines):
        return self._call(self._stream.writelines, lines)

    def flush(self):
        return self._call(self._stream.flush)

    @property
    def buffer(self) -> _Guarded:
        return _Guarded(self._stream.buffer) if hasattr(self._stream, "buffer") else self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def print_lines(lines: Iterable[str]) -> None:
    """Plain lines to stdout as they are — a listing a program reads (`hoard select`'s rows,
    its view manifest). Not through `out.print`: rich rendered each line (~200 µs, a third of
    the broad selector's time at 100,000 rows) and read `:name:` in a path as an emoji code."""
    write = sys.stdout.write
    for line in lines:
        write(line + "\n")


def print_rows(rows: list[dict[str, Any]], as_json: bool, empty: str, line: Callable[[dict[str, Any]], str]) -> None:
    """A listing: `rows` as one JSON array with --json, else `line(row)` each (plain text, never
    markup: names may come from a file), or `empty` when there is none."""
    if as_json:
        out.print_json(json.dumps(rows))
    elif not rows:
        out.print(empty)
    for r in rows if not as_json else []:
        out.print(line(r), markup=False)


def guard_stdout() -> None:
    if not isinstance(sys.stdout, _Guarded):
        sys.stdout = _Guarded(sys.stdout)


#: the largest list or manifest a command reads (a million paths fit many times over)
MAX_INPUT = 256 << 20


@contextlib.contextmanager
def open_input(path, what: str):
    """A binary stream of a list/manifest the user named: a regular file, a pipe (`<(cmd)`),
    or `-` for stdin — never a device or a directory (`/dev/zero` would never end). Errors,
    also while it is read, are one line naming the file and what to do."""
    name = display(str(path))
    if str(path) == "-":
        stream = sys.stdin.buffer
    else:
        try:
            st = os.stat(path)
        except OSError as e:
            raise HoardError(f"cannot read {what} {name}: {e.strerror}", ExitCode.USAGE) from None
        if not (st_mod.S_ISREG(st.st_mode) or st_mod.S_ISFIFO(st.st_mode)):
            raise HoardError(f"{what} {name} is not a file (a directory or a device); name a file, or `-` for "
                             "standard input", ExitCode.USAGE)
        try:
            stream = open(path, "rb")  # closed below
        except OSError as e:
            raise HoardError(f"cannot read {what} {name}: {e.strerror}", ExitCode.USAGE) from None
    try:
        yield stream
    except OSError as e:
        if e.filename is not None:
            raise
        raise HoardError(f"cannot read {what} {name}: {e.strerror}", ExitCode.USAGE) from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_input(path, what: str, limit: int = MAX_INPUT) -> bytes:
    """The bytes of a list/manifest the user named (see `open_input`), never more than `limit`."""
    with open_input(path, what) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise HoardError(f"{what} {display(str(path))} is larger than {limit >> 20} MiB; split it", ExitCode.USAGE)
    return data


def read_sha_list(path, what: str) -> list[str]:
    """The sha256s of a list file (`-` = stdin), in order, each once: the first field of each
    line, so `hoard select` output (`SHA256  SIZE`) and `sha256sum` output pipe in as they are.
    Blank lines and `#` comments are skipped; a line that is no sha256, or a list without any,
    is one line naming the file (exit 2)."""
    name = display(str(path))
    try:
        text = read_input(path, what).decode("utf-8")
    except UnicodeDecodeError as e:
        raise HoardError(f"{what} {name} is not UTF-8 text (byte {e.start})", ExitCode.USAGE) from None
    shas: dict[str, None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        field = line.split(None, 1)[0].lower() if line.strip() else ""
        if not field or field.startswith("#"):
            continue
        if len(field) != 64 or any(c not in "0123456789abcdef" for c in field):
            raise HoardError(f"{what} {name} line {n}: {display(field[:80])!r} is not a sha256 (64 hex digits); "
                             "nothing was changed", ExitCode.USAGE)
        shas[field] = None
    if not shas:
        raise HoardError(f"{what} {name} lists no sha256 (one per line); nothing was changed", ExitCode.USAGE)
    return list(shas)


def confirm(question: str, typed: str | None = None) -> None:
    """Ask before something that cannot be undone; return only if the user agreed. `typed`:
    the answer must be this word (e.g. the database name). A "no", a wrong word, Ctrl-C or
    no answer at all (stdin closed: pass --yes in scripts) changes nothing: exit 130."""
    try:
        if typed is None:
            agreed = typer.confirm(question, default=False)
        else:
            agreed = typer.prompt(f"{question}\ntype {typed} to continue") == typed
    except (typer.Abort, EOFError):
        agreed = False
    if not agreed:
        raise HoardError("not confirmed; nothing was changed (--yes confirms in a script)", ExitCode.INTERRUPTED)


#: without a terminal and without a known total, a progress line is printed this often
PLAIN_EVERY_S = 10.0
#: how often the bar (on a terminal) takes the latest figures
BAR_EVERY_S = 0.2


class _BytesColumn(ProgressColumn):
    """Done (of total) in the units of every other figure (hoardfs.base.units; rich's own are decimal)."""

    def render(self, task) -> Text:
        done = fmt_bytes(task.completed)
        return Text(f"{done}/{fmt_bytes(task.total)}" if task.total else done, style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{fmt_bytes(speed)}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress(what: str, total: int | None = None, unit: str = "bytes"):
    """Show how far a long job is: on a terminal a rich bar (done, rate, ETA) on stderr;
    otherwise one plain line at each further 10 % (every PLAIN_EVERY_S seconds while the total
    is not known), and none for work done within a second. Yields `update(done, total=None)`:
    `hoardfs.base.progress.Progress.update`, which only stores the figures, so it is safe from
    worker threads and under the store's locks; a daemon thread draws them (a terminal that
    does not take output stalls the drawing, never the work). `unit` is "bytes" or a noun for
    counted things."""
    tracker = Progress(what, total, unit)
    if err.is_terminal:
        cols = ([_BytesColumn(), _RateColumn()] if unit == "bytes"
                else [MofNCompleteColumn(), TextColumn(unit)])
        with RichProgress(TextColumn(what), BarColumn(), *cols, TimeRemainingColumn(), console=err,
                          transient=True) as bar:
            task = bar.add_task(what, total=total)
            with published(tracker, lambda s: bar.update(task, completed=s.done, total=s.total), BAR_EVERY_S):
                yield tracker.update
        return
    shown = {"step": 0, "done": -1, "at": time.monotonic()}

    def fmt(n: int) -> str:
        return fmt_bytes(n) if unit == "bytes" else f"{n} {unit}"

    def line(s: Snapshot) -> None:
        now = time.monotonic()
        if s.state != "running":
            if s.elapsed_s < PUBLISH_EVERY_S or s.done == shown["done"]:
                return  # done within a second, or its last line already said where it ended
        elif s.fraction is not None:
            if int(s.fraction * 10) <= shown["step"]:
                return
            shown["step"] = int(s.fraction * 10)
        elif now - shown["at"] < PLAIN_EVERY_S:
            return
        shown["at"], shown["done"] = now, s.done
        pct = f"{s.fraction:.0%}, " if s.fraction is not None else ""
        speed = f"{fmt_bytes(s.rate)}/s" if unit == "bytes" else f"{s.rate:.1f}/s"
        eta = f", about {s.eta_s:.0f} s left" if s.state == "running" and s.eta_s else ""
        end = {"running": "", "done": ", finished", "failed": ", stopped"}[s.state]
        err.print(f"{what}: {fmt(s.done)}" + (f" of {fmt(s.total)}" if s.total else "") + f" ({pct}{speed}{eta}{end})",
                  markup=False)

    with published(tracker, line):
        yield tracker.update


@contextlib.contextmanager
def database(cfg: Settings, skip: bool = False, needed_for: str | None = None, quiet: bool = False):
    """A connection to the configured database (autocommit, closed afterwards), or None when
    `skip`. Unreachable: with `needed_for` a one-line refusal naming why it is needed (exit 3);
    without, a line saying the command goes on without it (none when `quiet`), and None."""
    # deferred: psycopg loads only in commands that use the database (~15 MiB: the mount daemon does not)
    import psycopg

    if skip or (quiet and not cfg.database_url):
        yield None
        return
    try:
        conn = psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        why = first_line(e)
        if needed_for:
            raise HoardError(f"{needed_for}, and the database is unreachable ({why}); nothing was changed — "
                             "`hoard services up` or check database_url", ExitCode.UNAVAILABLE) from None
        if not quiet:
            err.print(f"database unreachable ({why}): going on without it", markup=False)
        yield None
        return
    with conn:
        yield conn


def print_figures(report: dict[str, Any], seconds: float | None = None, indent: str = "  ") -> None:
    """A run's report as labelled figures, one a line (`--status` of ingest, stage, export:
    what the GUI's run page shows), never as markup: its values come from outside."""
    # deferred: jobs (rq, redis) loads only in the commands that show runs
    from hoardfs.jobs import reports

    if seconds is not None and "seconds" not in report:
        out.print(f"{indent}took: {reports.duration(seconds)}", markup=False)
    for label, value in reports.figures(report):
        out.print(f"{indent}{label}: {value}", markup=False)
