"""Action runs under attack: what a worker's output root holds between the parse
and the store steps must be what was parsed — a child swapped for a symbolic link to a file
outside the output root (another run's worker as the same user, or an external worker that goes
on writing after its `_DONE`) is never stored. Real PostgreSQL, Redis, store and workers."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import api, run_here, steps
from hoardfs.jobs.actions.state import load_state, read_work
from tests.test_action_runs import action_home
from tests.test_action_workers import worker_contract

# tier: the module's tests run workers and need PostgreSQL and Redis
pytestmark = pytest.mark.services


@contextlib.contextmanager
def child_swapped_after_parse(cfg, rid: str, secret: Path) -> Iterator[None]:
    """While inside, the parse step, once done, swaps the run's first child for a symbolic link
    to `secret` — another process as the worker's user, between parse and store."""
    real = steps.STEPS["parse"]

    def then_swapped(c, st) -> None:
        real(c, st)
        out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
        first = read_work(cfg, rid, "parsed")["children"][0]["path"]
        os.unlink(out / first)
        os.symlink(secret, out / first)

    steps.STEPS["parse"] = then_swapped
    try:
        yield
    finally:
        steps.STEPS["parse"] = real


def test_child_swapped_for_a_symlink_after_parse_is_not_stored(hoard_home: Path, pg, redis_conn) -> None:
    """After parse, one child file becomes a symbolic link to a secret outside the output root:
    the store step refuses it (failed at store, one line); the secret's bytes are not in the
    store and nothing of the run is in SQL."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=91, items=3)
    worker_contract(cfg, batch)
    secret = hoard_home / "secret.txt"
    secret.write_bytes(b"root:$6$not-for-the-worker\n")
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id

    with child_swapped_after_parse(cfg, rid, secret):
        code = run_here(cfg, rid)
    st = load_state(cfg, rid)
    assert st is not None and st.error is not None
    assert code != 0 and (st.status, st.step) == ("failed", "store"), (code, st.status, st.step, st.error)
    assert "\n" not in st.error and "Traceback" not in st.error
    assert f"`hoard action resume {rid}` runs the worker again" in st.error and "new batch" not in st.error, st.error
    with Store.open(cfg, writable=False) as store:
        assert store.index.lookup(hashlib.sha256(secret.read_bytes()).digest()) is None
    with psycopg.connect(cfg.database_url) as conn:
        # its one ending, failed; no `done`
        assert conn.execute("SELECT status FROM action_event WHERE batch_id = %s", [rid]).fetchall() == [("failed",)]


def test_cancel_after_apply_is_refused(hoard_home: Path, pg, redis_conn) -> None:
    """A run whose one write-intent is applied (queued at finish) cannot be cancelled: its
    results are in SQL, so "cancelled" would be a lie that `status` and the database disagree
    on. The cancel is refused with one line; the same command finishes the run."""
    from hoardfs.jobs.actions.runner import _run_step_locked
    from hoardfs.jobs.actions.state import ActionError
    from tests.test_action_runs import AC1, write_contract

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=92, items=3)
    write_contract(cfg, "check-quality", AC1.format(batch=batch))
    rid = api.submit(cfg, "check-quality", queue=False).state.run_id
    for step in ("plan", "apply"):
        _run_step_locked(cfg, rid, step, then_enqueue=False)
    with pytest.raises(ActionError, match="applied"):
        api.cancel(cfg, rid)
    st = load_state(cfg, rid)
    assert st is not None and (st.status, st.step) == ("queued", "finish")


def test_run_failed_at_store_by_a_swapped_child_resumes_at_run(hoard_home: Path, pg, redis_conn) -> None:
    """A run failed at `store` because a child was swapped after parse: storing that output
    again would refuse it again, so `hoard action resume RUN` runs the worker again on an
    emptied output root (as after a refused parse) and finishes exactly once — the secret never
    stored, one failed event and one done."""
    from tests.test_action_runs import counts
    from tests.test_action_workers import assert_produced_once, inputs_of

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=93, items=3)
    worker_contract(cfg, batch)
    secret = hoard_home / "secret.txt"
    secret.write_bytes(b"root:$6$not-for-the-worker-either\n")
    base = counts(cfg)
    rid = api.submit(cfg, "thumbs", queue=False).state.run_id
    with child_swapped_after_parse(cfg, rid, secret):
        assert run_here(cfg, rid) != 0
    st = load_state(cfg, rid)
    assert st is not None and (st.status, st.step) == ("failed", "store"), (st.status, st.step, st.error)
    assert f"`hoard action resume {rid}`" in (st.error or "")
    sub = api.resume(cfg, rid, queue=False)
    assert sub.how == "resumed" and (sub.state.step, sub.state.done) == ("run", ["plan", "stage"]), sub.state
    assert run_here(cfg, rid) == 0, load_state(cfg, rid).error
    assert_produced_once(cfg, base, rid, len(inputs_of(cfg, batch)))
    with Store.open(cfg, writable=False) as store:
        assert store.index.lookup(hashlib.sha256(secret.read_bytes()).digest()) is None
    with psycopg.connect(cfg.database_url) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT status FROM action_event WHERE batch_id = %s",
                                                 [rid])) == ["done", "failed"]
