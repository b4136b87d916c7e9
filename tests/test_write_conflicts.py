"""A deadlock or a serialization failure is named as two writers meeting, never as a dead server."""

from __future__ import annotations

import threading

import psycopg
import pytest

from hoardfs.base.errors import ExitCode


def _real_deadlock(url: str) -> psycopg.Error:
    """The error PostgreSQL raises in one of two sessions that take two advisory locks in
    opposite orders."""
    errors: list[psycopg.Error] = []
    with psycopg.connect(url) as a, psycopg.connect(url) as b:
        a.execute("SELECT pg_advisory_xact_lock(7001)")
        b.execute("SELECT pg_advisory_xact_lock(7002)")

        def take(conn: psycopg.Connection, key: int) -> None:
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])
            except psycopg.Error as e:
                errors.append(e)
                conn.rollback()

        other = threading.Thread(target=take, args=(a, 7002))
        other.start()
        take(b, 7001)
        b.rollback()
        other.join(30)
        a.rollback()
    assert len(errors) == 1, errors
    return errors[0]


def test_a_deadlock_is_named_as_a_write_conflict_by_the_cli_and_the_jobs(servers) -> None:
    """The CLI's one line and a job's condition line for a real deadlock say two writers met and
    to run it again (exit 7), never "cannot reach the database" (exit 3)."""
    from hoardfs import cli
    from hoardfs.jobs.queues import condition_exit_code, condition_line, is_condition

    e = _real_deadlock(servers["database_url"])
    assert isinstance(e, psycopg.errors.DeadlockDetected)
    err = cli._service_down(e)
    assert err is not None and err.exit_code == ExitCode.CONFLICT
    for line in (err.message, condition_line(e)):
        assert "wrote the same rows at once" in line and "run it again" in line and "\n" not in line
        assert "reach" not in line and "services up" not in line
    assert is_condition(e) and condition_exit_code(e) == ExitCode.CONFLICT


@pytest.mark.parametrize("error", [psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected])
def test_both_conflict_states_are_told_from_a_server_gone(error) -> None:
    """serialization_failure and deadlock_detected are conflicts; a refused connection is not."""
    from hoardfs import cli

    assert cli._service_down(error("x")).exit_code == ExitCode.CONFLICT  # type: ignore[union-attr]
    gone = cli._service_down(psycopg.OperationalError("connection refused"))
    assert gone is not None and gone.exit_code == ExitCode.UNAVAILABLE
