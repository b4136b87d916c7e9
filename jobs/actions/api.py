"""Runs of ActionContracts, the Python API under `hoard action run|status|runs|release|cancel`.

    st = submit(cfg, "thumbnail", selector=None, nodes=None, given=["size=128"])   # recorded, queued
    run_here(cfg, st.run_id)          # or a `hoard worker` runs its steps
    describe(cfg, load_state(cfg, st.run_id))

Inputs: the contract's `input_selector`; `selector` (a dict) narrows it — a node must match
both; `nodes` (sha256s) replaces it — the listed physical nodes, none deleted or black-listed.
A selection that matches nothing is refused and nothing is kept. The run is keyed by (action,
version, parameters, the sorted inputs): the same again is "done already" and changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from rq.exceptions import NoSuchJobError
from rq.registry import ScheduledJobRegistry

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import (
    ExitCode,
    HoardError,
    conflict_line,
    db_disk_full,
    db_disk_full_line,
    first_line,
    write_conflict,
)
from hoardfs.base.files import flocked
from hoardfs.jobs import events
from hoardfs.jobs.actions import contract as contracts
from hoardfs.jobs.actions.contract import TYPES, Contract
from hoardfs.jobs.actions.nextstep import next_command
from hoardfs.jobs.actions.params import parse_params
from hoardfs.jobs.actions.remote import cancel_remote, check_locatable
from hoardfs.jobs.actions.runner import enqueue
from hoardfs.jobs.actions.state import (
    MEMOISED,
    QUEUE_OF,
    STALE_S,
    WAITING,
    ActionError,
    Refusal,
    RunState,
    Status,
    cancel_flag,
    check_id,
    check_runnable,
    heartbeat_age,
    here_lock_path,
    job_id,
    load_state,
    lock_path,
    now,
    params_digest,
    resume_line,
    run_id_of,
    runnable_problem,
    save_state,
    scan_states,
    stamp,
    state_dir,
    steps_of,
    with_way_on,
    work,
    write_work,
)
from hoardfs.jobs.actions.steps import (
    cancel_kept,
    cleanup_cancelled,
    own_table,
    record_ending,
    stage_context,
    write_pending_events,
)
from hoardfs.jobs.queues import connect, fetch_job, rq_queue, running
from hoardfs.sql import memo
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.batches import register_action
from hoardfs.sql.migrate import migrate
from hoardfs.sql.selectors import is_deleted, parse_selector, physical_nodes, query_nodes

log = logging.getLogger(__name__)


@dataclass
class Submitted:
    state: RunState
    #: "new", "resumed", "done already", "running", "waiting"
    how: str


def load_contract(cfg: Settings, name: str) -> Contract:
    """Action `name`'s contract: the actions directory's file, else the built-in of that id."""
    return contracts.load_file(contracts.find_any(cfg.actions_dir, name)[0])


def _params(c: Contract, given: list[str], cfg: Settings | None = None) -> dict[str, Any]:
    if not c.params and not given:
        return {}

    return parse_params(c, given, cfg)


def select_inputs(cfg: Settings, c: Contract, selector: dict | None, nodes: list[str] | None) -> list[str]:
    """The run's inputs (sorted sha256 hex); ActionError naming the selection when it is empty."""
    narrow = parse_selector(selector) if selector is not None else None
    # an AC1 contract that black-lists: its own output must not change its input set (the same
    # command again is the same run, "done already"), so black-listed nodes are selected too
    own = any(r.black_list for r in c.rules)
    base = c.input_selector.model_copy(update={"include_black_listed": True}) if own else c.input_selector
    if own and narrow is not None:
        narrow = narrow.model_copy(update={"include_black_listed": True})
    if nodes is not None:
        bad = [n for n in nodes if len(n) != 64 or any(ch not in "0123456789abcdef" for ch in n)]
        if bad:
            raise ActionError(f"--nodes: {bad[0]!r:.80} is not a sha256 (64 lower-case hex digits); nothing was run")
    try:
        conn = psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise ActionError(f"PostgreSQL unreachable ({first_line(e)}); nothing was run — start it, then the same "
                          "command again", ExitCode.UNAVAILABLE) from None
    with conn:
        migrate(conn)
        if nodes is not None:
            found = {h: hidden for h, _id, hidden in physical_nodes(conn, [bytes.fromhex(n) for n in set(nodes)])}
            unknown = sorted(set(nodes) - set(found))
            if unknown:
                raise ActionError(f"--nodes: {len(unknown)} sha256(s) are not physical nodes in the database, e.g. "
                                  f"{unknown[0]}; nothing was run", ExitCode.DATA)
            hidden = sorted(h for h, is_hidden in found.items() if is_hidden and not (own and not is_deleted(conn, h)))
            if hidden:
                raise ActionError(f"--nodes: {len(hidden)} of the listed nodes are deleted or black-listed, e.g. "
                                  f"{hidden[0]}; take them off the list — nothing was run", ExitCode.DATA)
            chosen = set(nodes)
        else:
            chosen = set(query_nodes(conn, base).sha256)
            if narrow is not None:
                chosen &= set(query_nodes(conn, narrow).sha256)
    if not chosen:
        what = ("the contract's input_selector and --selector together" if narrow is not None
                else "--nodes" if nodes is not None else "the contract's input_selector")
        raise ActionError(f"action {c.action_id}: no node matches {what}, so there is nothing to run; nothing was "
                          "kept — check the selector (`hoard select --file …`)", ExitCode.DATA)
    return sorted(chosen)


def prepare(cfg: Settings, name: str, *, selector: dict | None = None, nodes: list[str] | None = None,
            given: list[str] | None = None) -> tuple[Contract, dict[str, Any], list[str], str]:
    """(contract, typed parameters, inputs, run id) of the run `submit` would record — nothing
    is written (a pipeline looks its stages' runs up by this)."""
    c = load_contract(cfg, name)
    params = _params(c, list(given or []), cfg)
    inputs = select_inputs(cfg, c, selector, nodes)
    return c, params, inputs, run_id_of(c.action_id, c.version, params, inputs)


def submit(cfg: Settings, name: str, *, selector: dict | None = None, nodes: list[str] | None = None,
           given: list[str] | None = None, redis_conn=None, queue: bool = True, by: str = "",
           remote: bool = False, rerun: bool = False) -> Submitted:
    """Record the run of action `name` (the actions directory's contract, else the built-in of
    that id) and queue its next step (`queue=False`: the caller runs the steps itself,
    `run_here`); `by`: who launched it (a GUI login); `remote`: its stage, worker and parse on
    a host of the `remote` queue (hoardfs.jobs.actions.remote: refused in one line, nothing recorded,
    when an input is on no S3 disk). The same run again: done → "done already", nothing
    changed; failed, cancelled or interrupted → resumed at its step; running or waiting → said
    so. An AC2–AC4 run stages and runs only the inputs its action (version, parameters) has not
    run on before (`action_memo`: `inputs_new`, `inputs_reused` in its report); `rerun`: all of
    them, as another run (its key holds the time it was asked for)."""
    if rerun and remote:  # (its host checks the run id against contract, parameters and inputs alone)
        raise ActionError("--rerun is for runs on this server: a --remote run is not memoised (its host stages "
                          "every input); give one of them")
    c, params, inputs, rid = prepare(cfg, name, selector=selector, nodes=nodes, given=given)
    if c.result_table is not None:  # before "done already": a table changed at the same version is refused
        with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10) as conn:
            own_table(conn, c)
    again = stamp() if rerun else ""
    if again:
        rid = run_id_of(c.action_id, c.version, params, inputs, again)
    with flocked(state_dir(cfg) / f"{rid}.submit.lock", transient=True):
        st = load_state(cfg, rid)
        if st is not None:
            if ("remote" in st.steps) != remote:
                way = "with --remote" if "remote" in st.steps else "on this server"
                raise ActionError(f"run {rid} was submitted {way}; it goes on as it began: {resume_line(rid)}")
            return _again(cfg, st, redis_conn, queue)
        try:
            return _record_new(cfg, c, params, inputs, rid, redis_conn=redis_conn, queue=queue, by=by, remote=remote,
                               rerun=again)
        except BaseException:
            if not (state_dir(cfg) / f"{rid}.json").exists():  # not recorded (a full SSD): nothing of it stays
                for what in ("contract", "inputs", "context", "memo"):
                    work(cfg, rid, what).unlink(missing_ok=True)
                lock_path(cfg, rid).unlink(missing_ok=True)
            raise


def _record_new(cfg: Settings, c, params: dict, inputs: list[str], rid: str, *, redis_conn, queue: bool, by: str,
                remote: bool, rerun: str = "") -> Submitted:
    """`submit` of a run not recorded before: its batch in PostgreSQL, its work files (the
    memo split among them), its state, its job — under the run's submit lock."""
    context = None
    if remote:
        if not queue or not cfg.redis_url:
            raise ActionError("--remote queues the run for a host of the `remote` queue: it needs redis_url in "
                              "hoard.toml and no --here")
        context = stage_context(cfg, c, inputs)
        check_locatable(cfg, c, rid, inputs, context)
    with _database(rid):
        conn = psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)
        with conn:
            num = register_action(conn, c.action_id, TYPES[c.action_type], c.description)
            # the inputs become the run's batch, sealed: exactly once by its key
            apply_write_intent(conn, {"key": f"action-batch:{rid}", "batches": [
                {"batch_id": rid, "action": num, "members": inputs, "seal": True}]})
            split = memo_split(conn, c, num, params, inputs, remote=remote, rerun=rerun)
    write_work(cfg, rid, "contract", c.model_dump(mode="json"))
    write_work(cfg, rid, "inputs", inputs)
    if context is not None:  # what was located is what the run stages (the plan step keeps it)
        write_work(cfg, rid, "context", context)
    if split is not None:
        write_work(cfg, rid, "memo", split)
    cancel_flag(cfg, rid).unlink(missing_ok=True)
    st = RunState(rid, c.action_id, c.version, c.action_type, num, params, steps_of(c, remote), len(inputs),
                  by=by, rerun=rerun)
    if split is not None:
        st.report.update(memo_report(split))
    with flocked(lock_path(cfg, rid)):  # saved and queued as one: never seen "queued" without its job
        save_state(cfg, st)
        if queue:
            _queue(cfg, st, redis_conn, forget=True)
    return Submitted(st, "new")


def memo_split(conn: psycopg.Connection, c: Contract, num: int, params: dict[str, Any], inputs: list[str], *,
               remote: bool = False, rerun: str = "") -> dict[str, Any] | None:
    """Which of a run's inputs its action (version, parameters) has run on before (`action_memo`):
    {"key": the parameters' digest, "new": [sha256 …], "reused": {sha256: run}} — `new` is what
    the run stages and runs. None for a run that is not memoised (AC1, AC5, --remote: its host
    stages every input); a --rerun's `reused` is empty."""
    if c.action_type not in MEMOISED or remote:
        return None
    key = params_digest(params)
    reused = {} if rerun else memo.done_by(conn, num, c.version, key, inputs)
    return {"key": key, "new": [h for h in inputs if h not in reused], "reused": reused}


def memo_report(split: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run's memo split for its report: `inputs_new`, `inputs_reused`, and the
    runs whose results the reused inputs keep (`reused_from`: run → how many)."""
    runs: dict[str, int] = {}
    for run in split["reused"].values():
        runs[run] = runs.get(run, 0) + 1
    return {"inputs_new": len(split["new"]), "inputs_reused": len(split["reused"]),
            "reused_from": dict(sorted(runs.items()))}


#: the built-in action `ingest.near_dup_at_ingest` runs over each batch ingested
NEAR_DUP_ACTION = "near-dup-hash"


def near_dups_of(cfg: Settings, batch_id: str, *, queue: bool = True, redis_conn=None) -> Submitted | None:
    """Submit the near-dup-hash run over the images of ingested batch `batch_id`
    (`ingest.near_dup_at_ingest`): the run `hoard action run near-dup-hash --selector
    '{"batches": [BATCH]}'` and a pipeline stage make — its key is its inputs, so it is that
    run, hashed in that sandbox, its rows those. None when the batch holds no image."""
    try:
        return submit(cfg, NEAR_DUP_ACTION, selector={"batches": [batch_id]}, queue=queue, redis_conn=redis_conn,
                      by=f"ingest of {batch_id}")
    except ActionError as e:
        if e.exit_code != ExitCode.DATA:  # (DATA: no node of the batch is an image)
            raise
        log.info("batch %s: no image to hash for near-duplicates", batch_id)
        return None


def near_dups_of_batch(config_path: str | None, batch_id: str) -> str | None:
    """RQ job the ingest's finish step queues by name (`hoardfs.jobs.ingest` cannot import this
    package: it imports the ingest's runner): `near_dups_of`; the run id, or None."""
    sub = near_dups_of(config_mod.load(config_path), batch_id)
    if sub is not None:
        log.info("batch %s: near-dup-hash run %s %s", batch_id, sub.state.run_id, sub.how)
    return sub.state.run_id if sub is not None else None


@contextlib.contextmanager
def _database(rid: str):
    try:
        yield
    except psycopg.OperationalError as e:
        if write_conflict(e):
            raise ActionError(f"run {rid}: {conflict_line(e)}", ExitCode.CONFLICT) from None
        if db_disk_full(e):
            raise ActionError(f"run {rid}: {db_disk_full_line(e)}", ExitCode.NO_SPACE) from None
        raise ActionError(f"PostgreSQL unreachable ({first_line(e)}) while run {rid} was recorded; nothing was run "
                          "— start it, then the same command again", ExitCode.UNAVAILABLE) from None


def _queue(cfg: Settings, st: RunState, redis_conn, forget: bool = False) -> None:
    try:
        enqueue(cfg, st, redis_conn)
    except BaseException:
        if forget:  # nothing waits in Redis: a "queued" state would stall for ever
            (state_dir(cfg) / f"{st.run_id}.json").unlink(missing_ok=True)
        raise


def resume(cfg: Settings, rid: str, *, redis_conn=None, queue: bool = True) -> Submitted:
    """`hoard action resume RUN`: run `rid` again with the inputs and parameters it was recorded
    with (its work files and state — never the contract's selector now): done → "done already",
    nothing changed; running → said so; failed, cancelled or interrupted → resumed at its step;
    queued or waiting whose job Redis lost → queued again (`queue=False`: the caller runs the
    steps itself, `run_here`)."""
    with flocked(state_dir(cfg) / f"{check_id(rid)}.submit.lock", transient=True):
        return _again(cfg, _must(cfg, rid), redis_conn, queue)


def _again(cfg: Settings, st: RunState, redis_conn, queue: bool) -> Submitted:
    st = retry_events(cfg, st)  # an ending PostgreSQL could not take: written first, before another attempt
    shown, why = describe(cfg, st)
    if _died(cfg, st, shown):
        _announce_death(cfg, st, why)  # before its attempt is replaced: no health collection may have seen it
    if shown == Status.DONE.value:
        return Submitted(st, "done already")
    if shown == Status.RUNNING.value:
        return Submitted(st, "running")
    check_runnable(cfg, st)  # the contract it would run is the service's own, as it is now
    if queue and (shown in WAITING or shown == Status.QUEUED.value):
        if job_lost(cfg, st, redis_conn):
            # Redis lost the job that moves it on (restarted without persistence, or the enqueue
            # after the state was saved failed): queued again — enqueue is idempotent by job id;
            # a waiting step runs once now and schedules its own poll again
            with flocked(lock_path(cfg, st.run_id)):
                _queue(cfg, st, redis_conn)
            return Submitted(st, "requeued")
        return Submitted(st, shown)
    # failed, cancelled, interrupted (a dead runner), or waiting/queued and now run here
    cancel_flag(cfg, st.run_id).unlink(missing_ok=True)
    try:
        held = flocked(lock_path(cfg, st.run_id), wait=False)
        held.__enter__()
    except BlockingIOError:  # a hung step (no heartbeat) still holds it: never wait for it for ever
        raise ActionError(f"run {st.run_id} ({shown} at step {st.step}): a process still holds its lock "
                          f"({lock_path(cfg, st.run_id)}) — it hangs: stop it, then {resume_line(st.run_id)}",
                          ExitCode.UNAVAILABLE) from None
    with contextlib.ExitStack() as stack:
        stack.push(held)
        if shown in (Status.FAILED.value, Status.CANCELLED.value, "interrupted"):
            st.gate.pop("since", None)  # a gate or an external wait given up starts its timeout anew
            if (shown == Status.FAILED.value and st.error
                    and (st.step == "parse" or st.report.get("output_refused") == st.step)):
                # what the worker wrote was refused (at parse; or at store: a file swapped after it
                # was parsed): reading or storing it again would refuse it again — the (fixed)
                # worker runs again, on an emptied output root
                back = "remote" if "remote" in st.steps else "run"  # (a --remote run's host runs it)
                first = st.steps.index(back)
                st.step = back
                st.done = [d for d in st.done if st.steps.index(d) < first]
                st.report.pop("output_refused", None)
            if st.step in ("run", "labels"):
                st.waiting_since = None
            st.status, st.error, st.exit_code = Status.QUEUED.value, None, 0
            st.attempt = stamp()  # a new attempt: its ending (if any) is another event
            st.report.pop("enqueue_failed", None)
            save_state(cfg, st)
        if queue:
            _queue(cfg, st, redis_conn)
    return Submitted(st, "resumed")


def job_lost(cfg: Settings, st: RunState, redis_conn=None, strict: bool = False) -> bool | None:
    """A queued or waiting run that nothing in Redis will move on: no job of its step (the step,
    its poll, its release) queued, scheduled or running on a live worker, and no process at it
    (its lock, or a `--here` runner). None when that cannot be told (no Redis configured, Redis
    down; `strict`: Redis's error is raised) or the run is not queued or waiting."""
    if st.status not in (Status.QUEUED.value, *WAITING) or not cfg.redis_url:
        return None
    if is_running(cfg, st.run_id) or _held(here_lock_path(cfg, st.run_id)):
        return False


    try:
        conn = redis_conn or connect(cfg.redis_url)
        for suffix in ("", "-poll", "-release"):
            jid = job_id(st.run_id, st.step, suffix)
            try:
                status = fetch_job(jid, conn).get_status(refresh=True)
            except NoSuchJobError:
                continue
            if status in ("queued", "scheduled", "deferred") or (status == "started" and running(conn, jid)):
                return False
            # a poll that scheduled its next run under its own id is then marked finished by RQ
            # (its hash saved over the new one's) while the scheduler still holds that next run
            if suffix == "-poll" and jid in ScheduledJobRegistry(queue=rq_queue(QUEUE_OF[st.step], conn)):
                return False
        # looked at again: a poll started after the first look replaces its own job (deleted, then
        # scheduled anew) under the run's lock, and a step that ended since saved the state
        after = load_state(cfg, st.run_id)
        return not (is_running(cfg, st.run_id) or after is None or after.updated != st.updated
                    or after.status != st.status)
    except redis.RedisError:
        if strict:
            raise
        return None


def _held(path) -> bool:
    try:
        with flocked(path, wait=False):
            return False
    except BlockingIOError:
        return True


def retry_events(cfg: Settings, st: RunState) -> RunState:
    """Write the ending events PostgreSQL could not take (`hoard action status`, `run`): unless a
    step runs now (it saves the state itself)."""
    if st.pending_events:
        with contextlib.suppress(BlockingIOError), flocked(lock_path(cfg, st.run_id), wait=False):

            st = _must(cfg, st.run_id)
            write_pending_events(cfg, st)
    return st


def is_running(cfg: Settings, rid: str) -> bool:
    """A process holds the run's lock (a step runs now)."""
    try:
        with flocked(lock_path(cfg, rid), wait=False):
            return False
    except BlockingIOError:
        return True


def describe(cfg: Settings, st: RunState, check_jobs: bool = True) -> tuple[str, str]:
    """(status, why) as a person should read them: "running" only while a process runs the
    step (it holds the run's lock, which the kernel drops when it dies: kill -9, OOM) and its
    heartbeat is fresh — a step whose heartbeat is older than STALE_S (a hung process, a host
    that stopped answering) is reported failed too, never left "running" for ever. A queued or
    waiting run whose job Redis lost (`job_lost`) keeps its status, with a why naming the step
    and the way on (`check_jobs=False`: Redis is not asked)."""
    if st.status == Status.RUNNING.value:
        age = heartbeat_age(cfg, st.run_id)
        if not is_running(cfg, st.run_id):
            return Status.FAILED.value, (f"the process running step {st.step} stopped (killed, or its host went "
                                         f"down); {resume_line(st.run_id)} resumes it")
        if age is None or age > STALE_S:
            ago = "no heartbeat" if age is None else f"no heartbeat for {age:.0f} s"
            return Status.FAILED.value, (f"step {st.step} has written {ago} (its process hangs, or its host stopped "
                                         f"answering); stop it, then {resume_line(st.run_id)} resumes it")
    if st.status in (Status.QUEUED.value, *WAITING) and check_jobs:
        lost = job_lost(cfg, st)
        failed = st.report.get("enqueue_failed")
        if lost:
            what = "its poll" if st.status in WAITING else "the job of its next step"
            return st.status, (f"{what} ({st.step}) is not in Redis (Redis restarted without its data, or queueing "
                               f"it failed{': ' + failed if failed else ''}), so nothing will run it; "
                               f"{resume_line(st.run_id)} queues it")
        if lost is None and failed and st.status == Status.QUEUED.value:
            return st.status, (f"step {st.step} could not be queued ({failed}); once Redis is back, "
                               f"{resume_line(st.run_id)} queues it")
    if st.status == Status.CANCELLED.value:
        return st.status, f"{st.error or 'cancelled'}; {resume_line(st.run_id)} resumes it"
    if st.status == Status.FAILED.value and st.error:
        return st.status, with_way_on(st.error, st.run_id)
    return st.status, st.error or ""


def status_doc(cfg: Settings, st: RunState) -> dict[str, Any]:
    """`hoard action status RUN --json`. `refused`: why a run that stopped cannot be resumed as
    it is (its recorded contract is not the service's now: `runnable_problem`), else None —
    the GUI then offers no Resume and `runs` names no `resume`."""
    shown, why = describe(cfg, st)
    stalled = bool(why) and shown in (Status.QUEUED.value, *WAITING)
    stopped = shown in (Status.FAILED.value, Status.CANCELLED.value) or stalled
    refused = runnable_problem(cfg, st) if stopped else None
    return {"run": st.run_id, "action": st.action, "version": st.version, "type": st.action_type,
            "status": shown, "step": st.step, "steps": st.steps, "done": st.done, "inputs": st.inputs,
            "params": st.params, "error": why or None, "seconds": st.seconds, "created": st.created,
            "updated": st.updated, "gate": st.gate, "report": st.report, "by": st.by,
            "stalled": stalled, "refused": refused,
            # the command a person types next (hoardfs.jobs.actions.nextstep), None when none is theirs
            "next": next_command(cfg, st, shown, stalled=stalled, refused=refused)}


def refused_doc(r: Refusal) -> dict[str, Any]:
    """A state file that does not prove itself (`scan_states`) as `status_doc` shapes a run:
    status `refused`, the one line as its error and `refused`; nothing of what the file says
    is shown but its run id (its name)."""
    action, version, _key = r.run_id.rsplit("-", 2)
    return {"run": r.run_id, "action": action, "version": int(version[1:]), "type": "", "status": "refused",
            "step": "-", "steps": [], "done": [], "inputs": 0, "params": {}, "error": r.line, "seconds": {},
            "created": r.changed, "updated": r.changed, "gate": {}, "report": {}, "by": "", "stalled": False,
            "refused": r.line, "next": None}


def release(cfg: Settings, rid: str, redis_conn=None, *, queue: bool = True) -> RunState:
    """`hoard action release RUN`: open the gate; a run waiting there moves on now (its step
    queued again; `queue=False`: the caller runs the steps itself, `run_here`). An AC5 run
    waiting for its labellers imports what is finished now (tasks not labelled yet get no labels)."""
    with flocked(lock_path(cfg, rid)):
        st = _must(cfg, rid)
        if "labels" in st.steps:
            if "labels" in st.done:
                raise ActionError(f"run {rid} has imported its labels already ({st.status} at step {st.step})")
            st.gate["released"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            save_state(cfg, st)
            waiting = st.status == Status.WAITING_LABELS.value
        elif "gate" not in st.steps:
            raise ActionError(f"run {rid} has no gate ({st.action} is {st.action_type}"
                              + (" without [gate]" if st.action_type in ("AC3", "AC4") else "") + ")")
        else:
            if "gate" in st.done:
                raise ActionError(f"run {rid} is past its gate already ({st.status} at step {st.step})")
            st.gate["released"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            save_state(cfg, st)
            waiting = st.status == Status.WAIT_GPU_READY.value
    if queue and waiting and cfg.redis_url:
        with contextlib.suppress(HoardError):
            enqueue(cfg, st, redis_conn, suffix="-release")
    return st


def cancel(cfg: Settings, rid: str) -> RunState:
    """`hoard action cancel RUN`: a running step stops (its worker killed); a queued or waiting
    run is cancelled now. 3C is cleaned; nothing is applied; an AC5 run's unlabelled tasks
    leave its Label Studio project. A done AC5 run released with tasks unlabelled: those leave
    the project and its kept stage goes (`steps.cancel_kept`); it stays done, its labels stand."""
    st = _must(cfg, rid)
    if st.status == Status.DONE.value and (st.report.get("label_studio") or {}).get("kept"):
        # an AC5 run released with tasks unlabelled: they leave Label Studio, its labels stand
        return cancel_kept(cfg, rid)
    if st.status == Status.DONE.value:
        raise ActionError(f"run {rid} is done; nothing to cancel")
    if "apply" in st.done:
        raise ActionError(f"run {rid}: its results are applied already (step apply done), so it cannot be "
                          f"cancelled; {resume_line(st.run_id)} finishes it")
    cancel_flag(cfg, rid).touch()
    try:
        with flocked(lock_path(cfg, rid), wait=False):
            st = _must(cfg, rid)
            if "apply" in st.done:  # applied while the flag was set: too late
                cancel_flag(cfg, rid).unlink(missing_ok=True)
                raise ActionError(f"run {rid}: its results are applied already (step apply done), so it cannot "
                                  f"be cancelled; {resume_line(st.run_id)} finishes it")
            if st.status != Status.CANCELLED.value:

                cleanup_cancelled(cfg, st)
                cancel_remote(cfg, st)
                st.status, st.error = Status.CANCELLED.value, f"cancelled at step {st.step}"
                save_state(cfg, st)
                record_ending(cfg, st, Status.CANCELLED.value)
    except BlockingIOError:
        pass  # a step runs: it sees the flag (the worker is killed) and records the cancel
    return st


def _must(cfg: Settings, rid: str) -> RunState:
    st = load_state(cfg, check_id(rid))
    if st is None:
        raise ActionError(f"no run {rid}; `hoard action runs` lists the runs")
    return st


def runs(cfg: Settings) -> list[dict[str, Any]]:
    """Every run recorded (`status_doc`), and each state file that does not prove itself as a
    `refused` one (`refused_doc`)."""
    trusted, refused = scan_states(cfg)
    return [status_doc(cfg, st) for st in trusted] + [refused_doc(r) for r in refused]


def _died(cfg: Settings, st: RunState, shown: str) -> bool:
    """The process running `st`'s step is gone (its state says running, nothing holds its lock)."""
    return st.status == Status.RUNNING.value and shown == Status.FAILED.value and not is_running(cfg, st.run_id)


def _announce_death(cfg: Settings, st: RunState, why: str) -> None:
    """`run_failed` for an attempt whose process died: keyed as the attempt's ending event would
    be (`run_failed:<run>:<attempt>`), so however often it is seen — each health collection,
    the resume — and whatever ending is written for it later, it is one event."""
    events.emit(cfg, "run_failed", f"run_failed:{st.run_id}:{st.attempt}", st.run_id,
                {"run": st.run_id, "action": st.action, "version": st.version, "step": st.step, "error": why,
                 "ended_at": now()})


def relay_dead_runs(cfg: Settings) -> None:
    """`run_failed` for each run whose process died in a step (killed, out of memory, its host
    down): a dead process records no ending, so every health collection looks (one event per
    attempt). A step that only stopped writing its heartbeat may still end well: not announced."""
    for st in scan_states(cfg)[0]:
        if st.status == Status.RUNNING.value:
            shown, why = describe(cfg, st, check_jobs=False)
            if _died(cfg, st, shown):
                _announce_death(cfg, st, why)


def problems(cfg: Settings) -> list[str]:
    """`hoard health`'s lines about runs: each failed one (a stale heartbeat included), with the way on."""
    out = []
    for doc in runs(cfg):
        if doc["status"] == "refused":
            out.append(f"action run {doc['run']}: refused: {doc['error']}")
        elif doc["status"] == Status.FAILED.value:
            out.append(f"action run {doc['run']}: failed at {doc['step']}: {doc['error']}")
        elif doc["stalled"]:
            out.append(f"action run {doc['run']}: {doc['status']} at {doc['step']}: {doc['error']}")
        if doc["report"].get("ending_event"):
            out.append(f"action run {doc['run']}: its ending event is {doc['report']['ending_event']}")
    return out

