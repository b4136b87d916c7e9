"""One user-error type and the exit codes the `hoard` CLI documents.

A `HoardError` is something a person can act on: its message names the thing (file,
config key, disk label, batch id) and the next step. The CLI prints it as one line and
exits with its code; anything else is a bug and gets a full traceback (exit 1).
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of `hoard` (also listed in README.md)."""

    OK = 0
    #: an unexpected internal error: a bug, printed with a traceback
    BUG = 1
    #: bad command line or bad configuration file
    USAGE = 2
    #: a service the command needs (PostgreSQL, Redis, a disk) is unreachable
    UNAVAILABLE = 3
    #: `hoard health`: the system works but something needs attention
    DEGRADED = 4
    #: data problem: missing object, checksum mismatch, corrupt shard
    DATA = 5
    #: refused for lack of space: disks full, zone quota reached
    NO_SPACE = 6
    #: two commands or jobs changed the same rows at once and PostgreSQL stopped this one (a
    #: deadlock or a serialization failure): nothing of it was kept; run it again
    CONFLICT = 7
    #: interrupted by the user (Ctrl-C)
    INTERRUPTED = 130
    #: the reader of our output went away (`hoard ... | head`): stopped early, as SIGPIPE would
    OUTPUT_CLOSED = 141


class HoardError(Exception):
    """An error a user can fix; printed as one line, never as a traceback."""

    exit_code: ExitCode = ExitCode.BUG

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(HoardError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = ExitCode.USAGE


class ServiceUnavailable(HoardError):
    """PostgreSQL, Redis or another service the command needs does not answer."""

    exit_code = ExitCode.UNAVAILABLE


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (a driver's error often runs on with a
    DETAIL or a HINT), or its type's name when it has none: for one-line reports."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


#: SQLSTATEs of a transaction PostgreSQL rolled back because another wrote the same rows at
#: once: serialization_failure, deadlock_detected. Not a server gone: the same command run
#: again goes through.
WRITE_CONFLICT_STATES = frozenset({"40001", "40P01"})


def write_conflict(e: BaseException) -> bool:
    """Whether `e` is a database error of WRITE_CONFLICT_STATES (read off the driver's
    `sqlstate`, so this leaf needs no psycopg)."""
    return getattr(e, "sqlstate", None) in WRITE_CONFLICT_STATES


def conflict_line(e: BaseException) -> str:
    """The one line a write conflict is reported with, never "cannot reach the database"."""
    return (f"two commands wrote the same rows at once and PostgreSQL stopped this one ({first_line(e)}); "
            "nothing of it was kept — run it again")


#: SQLSTATE disk_full: PostgreSQL could not extend a file; the server is up
DB_DISK_FULL = "53100"


def db_disk_full(e: BaseException) -> bool:
    """Whether `e` is PostgreSQL's disk_full (read off the driver's `sqlstate`)."""
    return getattr(e, "sqlstate", None) == DB_DISK_FULL


def db_disk_full_line(e: BaseException) -> str:
    """The one line for PostgreSQL's disk full: the server answers, its file system is full."""
    return (f"the database's file system is full ({first_line(e)}); nothing of this was kept — free space where "
            "PostgreSQL keeps its data (`hoard health` names it), then run it again")
