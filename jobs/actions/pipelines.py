"""Pipelines: ordered stages of actions that a batch goes through (`hoard pipeline
define|show|advance`, docs/actions.md "Pipelines").

    define(cfg, "clean", ["blacklist-small-images", "thumbnail"])   # the stages, once
    advance(cfg, "clean", "gallery-s7-b000", mode="here")           # run what is next
    show(cfg, "clean")                                              # each batch: last stage done, next run

A stage's run over a batch is the stage's action over the batch's members — those its
contract's `input_selector` takes (`hoard action run ACTION --selector {"batches": [BATCH]}`)
— with the default parameters; the run key (hoardfs.jobs.actions.state) makes "that run" exact, so
`advance` needs no memory of its own beyond `batch_stage` (hoardfs.sql.batches): it records as done
every stage whose run is done, in order, then submits the next stage's run. Repeating it is
harmless; one batch may be in several pipelines (a run shared by two of them is one run).

    watch(cfg, "clean", source="gallery")                           # every new gallery batch …
    watched_of_batch(cfg, "gallery-s7-b001")                        # … goes through it, stage after stage

A pipeline bound to a source (or every source) and a selector (`hoard pipeline watch`,
hoardfs.sql.watch) is advanced over each batch ingested from that source whose members the
selector matches: the ingest's finish step queues `pipelines_of_batch`, which runs the stages
one after the other in that job (as `advance --here`), to the end or to a gate.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.contract import TYPES, ContractError
from hoardfs.jobs.actions.runner import run_here
from hoardfs.jobs.actions.state import WAITING, ActionError, Status, load_state
from hoardfs.jobs.queues import redis_required
from hoardfs.sql import batches as sqlb
from hoardfs.sql import watch as sqlw
from hoardfs.sql.selectors import parse_selector, query_nodes

log = logging.getLogger(__name__)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Mode = Literal["queue", "here", "wait"]


class PipelineError(HoardError):
    """One line naming the pipeline, the batch or the stage, and the next step; `doc` is where
    the pipeline stands (for --json)."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None, doc: dict | None = None) -> None:
        super().__init__(message, exit_code)
        self.doc = doc


@dataclass
class Next:
    """The next stage of a batch and its run: `status` is the run's (`describe`), or
    "not submitted"; `error` why it cannot be run (a contract gone, no input)."""

    position: int
    action: str
    run: str | None = None
    status: str = "not submitted"
    error: str | None = None
    released: bool = False

    def doc(self) -> dict[str, Any]:
        return {"position": self.position, "action": self.action, "run": self.run, "status": self.status,
                "error": self.error}


@dataclass
class Standing:
    pipeline: str
    batch: str
    stages: list[str]
    done_position: int
    next: Next | None = None
    submitted: list[str] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "batch": self.batch, "stages": self.stages,
                "done_position": self.done_position,
                "last_done": self.stages[self.done_position] if self.done_position >= 0 else None,
                "next": self.next.doc() if self.next else None, "submitted": self.submitted}


def _connect(cfg: Settings) -> psycopg.Connection:
    try:
        conn = psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise PipelineError(f"the database is unreachable ({first_line(e)}); start it (`hoard services up`), then the "
                            "same command again", ExitCode.UNAVAILABLE) from None
    return conn  # (a database without hoardfs's tables: the CLI names `hoard db migrate`)


def _check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise PipelineError(f"{name!r:.80} is not a pipeline name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter "
                            "or digit)")
    return name


def define(cfg: Settings, name: str, actions: list[str]) -> bool:
    """Define pipeline `name` with these stages (actions by contract id, each registered as an
    `action` row); True if new, False if it exists with the same stages. Stages never change:
    other stages for an existing name are refused."""
    _check_name(name)
    if not actions:
        raise PipelineError(f"pipeline {name}: give its stages, the actions in order "
                            f"(`hoard pipeline define {name} ACTION [ACTION…]`)")
    twice = sorted({a for a in actions if actions.count(a) > 1})
    if twice:
        raise PipelineError(f"pipeline {name}: action {twice[0]} is given twice; a stage's run is its action over "
                            "the batch, so a second one would be the same run — give each action once")
    contracts = []
    for a in actions:
        try:
            contracts.append(api.load_contract(cfg, a))
        except ContractError as e:
            raise PipelineError(f"pipeline {name}: {e.lines[0]}", ExitCode.USAGE) from None
    with _connect(cfg) as conn:
        old = sqlb.pipeline_stages(conn, name)
        if old is not None and old != actions:
            raise PipelineError(f"pipeline {name} exists with stages {' → '.join(old) or '(none)'}; a pipeline's "
                                f"stages never change — define the new stages under a new name "
                                f"(`hoard pipeline define {name}-2 {' '.join(actions)}`)")
        ids = [sqlb.register_action(conn, c.action_id, TYPES[c.action_type], c.description) for c in contracts]
        sqlb.define_pipeline(conn, name, ids)
    return old is None


def _stages(conn: psycopg.Connection, name: str) -> list[str]:
    stages = sqlb.pipeline_stages(conn, name)
    if stages is None:
        raise PipelineError(f"no pipeline {name!r:.80}; `hoard pipeline show` lists them, `hoard pipeline define "
                            f"{name} ACTION…` makes it")
    return stages


def _next(cfg: Settings, batch: str, stages: list[str], done: int) -> Next | None:
    """The stage after `done` and its run, looked up by the run key (nothing is written)."""
    if done + 1 >= len(stages):
        return None
    nxt = Next(done + 1, stages[done + 1])
    try:
        _c, _p, _inputs, nxt.run = api.prepare(cfg, nxt.action, selector={"batches": [batch]})
    except (ActionError, ContractError) as e:
        nxt.status, nxt.error = "cannot run", (e.lines[0] if isinstance(e, ContractError) else e.message)
        return nxt
    st = load_state(cfg, nxt.run)
    if st is not None:
        nxt.status, why = api.describe(cfg, st)
        nxt.error = why or None
        nxt.released = bool(st.gate.get("released"))
    return nxt


def show(cfg: Settings, name: str | None = None) -> list[dict[str, Any]]:
    """Every pipeline (or `name`): its stages, its binding to a source (`watch`, None when it
    has none) and each batch in it with the last stage done and the next stage's run."""
    with _connect(cfg) as conn:
        names = [_check_name(name)] if name is not None else sqlb.pipeline_names(conn)
        found = [(n, _stages(conn, n), sqlb.pipeline_batches(conn, n), sqlw.watch_of(conn, n)) for n in names]
    return [{"name": n, "stages": stages, "watch": watching,
             "batches": [Standing(n, b, stages, done, _next(cfg, b, stages, done)).doc() for b, done in batches]}
            for n, stages, batches, watching in found]


def advance(cfg: Settings, name: str, batch: str, *, mode: Mode = "queue", retry: bool = False,
            poll_s: float = 0.5) -> Standing:
    """Move `batch` along pipeline `name`: record as done every stage whose run is done, then
    submit the next stage's run — queued for `hoard worker` (`mode="queue"`), run here
    (`"here"`, every stage to the end or to a gate), or queued and waited for (`"wait"`).
    A failed or cancelled run is an error naming `hoard action status RUN` (`retry`: resumed);
    a run waiting at its gate is one naming `hoard action release RUN`."""
    _check_name(name)
    retried: set[str] = set()
    submitted: list[str] = []
    with _connect(cfg) as conn:
        stages = _stages(conn, name)
        try:
            sqlb.enter_pipeline(conn, batch, name)
        except sqlb.BatchError:
            raise PipelineError(f"no batch {batch!r:.140}; `hoard ingest --status` and the GUI's batches page list "
                                "the batches") from None
        while True:
            done = sqlb.current_stage(conn, batch, name)
            here = Standing(name, batch, stages, len(stages) - 1 if done is None else done - 1, submitted=submitted)
            if done is None:
                return here
            nxt = here.next = _next(cfg, batch, stages, here.done_position)
            assert nxt is not None and (nxt.run is not None or nxt.error)  # done < len(stages)
            where = f"pipeline {name}, batch {batch}: stage {nxt.position} ({nxt.action})"
            if nxt.status == "cannot run":
                raise PipelineError(f"{where}: {nxt.error}", ExitCode.DATA, here.doc())
            assert nxt.run is not None
            if nxt.status == Status.DONE.value:
                sqlb.stage_done(conn, batch, name, nxt.position)
                continue
            if nxt.status in (Status.FAILED.value, Status.CANCELLED.value, "interrupted"):
                if not retry or nxt.run in retried:
                    st = load_state(cfg, nxt.run)
                    raise PipelineError(
                        f"{where}: run {nxt.run} {nxt.status} at step {st.step if st else '?'} — `hoard action "
                        f"status {nxt.run}` says why; once fixed, `hoard pipeline advance {name} {batch} --retry` "
                        "resumes it", ExitCode(st.exit_code) if st and st.exit_code else ExitCode.DATA, here.doc())
                retried.add(nxt.run)
            if nxt.status == Status.WAIT_GPU_READY.value and not nxt.released:
                raise PipelineError(f"{where}: run {nxt.run} waits at the GPU gate — `hoard action release "
                                    f"{nxt.run}` (once the GPU host is up), then `hoard pipeline advance {name} "
                                    f"{batch}` again", ExitCode.UNAVAILABLE, here.doc())
            if nxt.status == Status.WAITING_EXTERNAL.value and mode != "wait":
                raise PipelineError(f"{where}: run {nxt.run} waits for its external worker's done marker — "
                                    f"`hoard action status {nxt.run}` says where; `hoard pipeline advance {name} "
                                    f"{batch}` again once it is done", ExitCode.UNAVAILABLE, here.doc())
            if nxt.status in (Status.RUNNING.value, Status.QUEUED.value) + WAITING and mode == "queue":
                return here  # already on its way: a worker moves it on
            _submit(cfg, batch, nxt, mode)
            if nxt.run not in submitted:
                submitted.append(nxt.run)
            if mode == "queue":
                nxt.status = Status.QUEUED.value
                return here
            if mode == "wait":
                _wait(cfg, nxt.run, poll_s)


def _submit(cfg: Settings, batch: str, nxt: Next, mode: Mode) -> None:
    """Submit the next stage's run over the batch: run here to its end or its gate, or queued."""
    selector = {"batches": [batch]}
    if mode == "here":
        sub = api.submit(cfg, nxt.action, selector=selector, queue=False)
        run_here(cfg, sub.state.run_id, until_waiting=True)
        return
    assert cfg.redis_url
    with redis_required(cfg.redis_url):
        api.submit(cfg, nxt.action, selector=selector)


def _wait(cfg: Settings, rid: str, poll_s: float) -> None:
    """Until run `rid` is done, failed, cancelled or waits at a gate nobody released (the
    caller looks at which); a worker moves a released or external run on meanwhile."""
    while True:
        st = load_state(cfg, rid)
        if st is None:
            return
        shown = api.describe(cfg, st)[0]
        if shown == Status.WAIT_GPU_READY.value and not st.gate.get("released"):
            return
        if shown not in (Status.QUEUED.value, Status.RUNNING.value) + WAITING:
            return
        time.sleep(poll_s)


def watch(cfg: Settings, name: str, *, source: str | None = None, selector: dict[str, Any] | None = None) -> None:
    """Bind pipeline `name` to `source` (None: every source) and `selector` (None: every batch):
    each batch ingested from then on that matches goes through its stages (`watched_of_batch`).
    A selector that does not parse is refused in one line; binding again replaces the binding."""
    _check_name(name)
    if selector is not None:
        try:
            parse_selector(selector)
        except HoardError as e:
            raise PipelineError(f"pipeline {name}: the selector does not parse: {first_line(e)}; nothing was "
                                "changed") from None
    with _connect(cfg) as conn:
        _stages(conn, name)
        sqlw.set_watch(conn, name, source, selector)


def unwatch(cfg: Settings, name: str) -> bool:
    """Unbind pipeline `name`; False when it was not bound."""
    _check_name(name)
    with _connect(cfg) as conn:
        _stages(conn, name)
        return sqlw.drop_watch(conn, name)


def watch_doc(cfg: Settings, name: str) -> dict[str, Any] | None:
    """Pipeline `name`'s binding (source, selector, since), None when it has none."""
    with _connect(cfg) as conn:
        return sqlw.watch_of(conn, _check_name(name))


def watched_of_batch(cfg: Settings, batch: str) -> list[Standing]:
    """Advance ingested batch `batch` along every pipeline bound to its source whose selector
    matches one of its members: each stage's run in this process (`advance`, mode "here"), to
    the end or to a gate. A pipeline that stops (a failed run, a gate) is logged with its way
    on and the others go on."""
    with _connect(cfg) as conn:
        bound = sqlw.watching(conn, batch)
        chosen = [name for name, sel in bound
                  if sel is None or query_nodes(conn, parse_selector(sel | {"batches": [batch]})).sha256]
    out = []
    for name in chosen:
        try:
            out.append(advance(cfg, name, batch, mode="here"))
        except PipelineError as e:
            log.warning("pipeline %s, batch %s (watched): %s", name, batch, e.message)
    return out


def pipelines_of_batch(config_path: str | None, batch_id: str) -> list[str]:
    """RQ job the ingest's finish step queues by name when a pipeline is bound
    (hoardfs.jobs.ingest cannot import this package): `watched_of_batch`; the pipelines it moved."""
    return [st.pipeline for st in watched_of_batch(config_mod.load(config_path), batch_id)]
