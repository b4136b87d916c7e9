"""StageTo3C and ExportTo3D: selected nodes, laid out, copied out of the store into a sealed
output (`hoard stage`, `hoard export`; RQ queue `io`, or in this process with --here).

    hoard export train-v1 --layout by_label --selector sel.json          → 3D/train-v1/by_label/…
    hoard stage ab-0042 --layout worker.toml --nodes shas.txt            → 3C/ab-0042/worker/{input/…, output/}

One run: plan (the selector or the listed sha256s → nodes → their fields → the layout's
paths, every path checked: datasets/layouts.py) → reserve the bytes in the zone (refused
before a byte moves: fsd/outputs/zones.py) → copy with the batch planner into `<zone>/.tmp/<id>/`
(fsd/outputs/materialize.py: each file checked against its sha256; a re-run keeps what is already
there) → seal (fsd/outputs/seal.py: `_MANIFEST.json`, rename, `_JOB.json`, `_SEALED` last).

Ids are immutable: the same id with the same request after success does nothing and says
so; with another request it is refused. A failed or killed run keeps its partial tree and
its request: the same command resumes it. A request refused before it started (a bad
layout for the data, an empty selection, a full zone, PostgreSQL down: nothing written,
nothing reserved) keeps nothing: with --here its id is free at once; a worker's leaves a
`refused` state saying why, which holds no id and is no health problem. The state of each
id is a JSON file under `<ssd>/state/outputs/` (the run-state store `hoardfs.jobs.runs`).

Kept whole past 500 lines: one job from request to seal — its state file, submission, run
and clean share `OutputState` and the output id's lock; the steps it runs are hoardfs.fsd.outputs'
(zones, materialize, seal).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hoardfs.base import config as config_mod
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import flocked, fsync_dir
from hoardfs.datasets import layouts, stagefiles
from hoardfs.fsd.outputs import seal, zones
from hoardfs.fsd.outputs.manifest import ViewError
from hoardfs.fsd.outputs.materialize import Item
from hoardfs.fsd.outputs.write import require_stored, write_copy, write_view
from hoardfs.jobs import runlog, runs
from hoardfs.jobs.runs import Status

OUTPUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ZONE_OF = {"stage": "3C", "export": "3D"}
QUEUE = "io"
JOB_TIMEOUT_S = 24 * 3600


class OutputError(HoardError):
    exit_code = ExitCode.USAGE


class DamagedState(OutputError):
    exit_code = ExitCode.DATA


class OutputSpec(BaseModel):
    """What was asked for: an id's request, compared when the id comes again."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["stage", "export"]
    id: str = Field(pattern=OUTPUT_ID.pattern)
    layout: dict[str, Any]  # name, template, sidecars, per_locator[, case_sensitive: only when true]
    selector: dict[str, Any] | None = None
    nodes: list[str] | None = None  # sha256 hex, for --nodes
    dedup: Literal["by_node", "by_sha256"] = "by_node"
    mode: Literal["copy", "view"] = "copy"
    #: a stage's files beside its inputs, by role (`parents`, `children`: sha256 hex): laid out
    #: like the inputs, under `<layout>/<role>/` (an action's stage_layout.include_parents/_children)
    context: dict[Literal["parents", "children"], list[str]] | None = None
    #: a stage's files beside its inputs for a worker's folder contract (index files, a folder
    #: per input, label files, conversion: hoardfs.datasets.stagefiles.StageFiles, dumped)
    stage: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _context_is_a_stage_copy(self) -> OutputSpec:
        if self.context is not None and (self.kind != "stage" or self.mode != "copy"):
            raise ValueError("parents/children beside the inputs are staged in copy mode only")
        if self.stage is not None:
            if self.kind != "stage" or self.mode != "copy":
                raise ValueError("a worker's index, label and converted files are staged in copy mode only")
            stagefiles.StageFiles.model_validate(self.stage)
        return self

    @property
    def zone(self) -> str:
        return ZONE_OF[self.kind]

    def digest(self) -> str:
        """The request's identity: key order of its dicts does not count (state files sort them).
        `context` and `stage` count only when set: a request's digest stays what it was before
        they existed."""
        doc = self.model_dump(exclude={k for k in ("context", "stage") if getattr(self, k) is None})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def the_layout(self) -> layouts.Layout:
        lay = self.layout
        per_locator = bool(lay.get("per_locator")) and self.dedup == "by_node"
        return layouts.parse(lay["template"], lay["name"], bool(lay.get("sidecars")), per_locator,
                             bool(lay.get("case_sensitive")))


def make_spec(kind: str, output_id: str, layout_spec: str, selector: dict | None = None,
              nodes: list[str] | None = None, dedup: str = "by_node", mode: str = "copy") -> OutputSpec:
    """A checked request (layout read and parsed, selector validated, one of selector/nodes)."""
    if not OUTPUT_ID.fullmatch(output_id or ""):
        raise OutputError(f"output id {output_id!r}: 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    if (selector is None) == (nodes is None):
        raise OutputError("give one of --selector FILE or --nodes FILE")
    if mode not in ("copy", "view"):
        raise OutputError(f"--mode {mode!r}: copy or view")
    if mode == "view" and len(output_id) > 125:  # its view is named <zone>-<id>, at most 128
        raise OutputError(f"output id {output_id[:20]}…: at most 125 characters in view mode (its view is named "
                          f"{ZONE_OF.get(kind, '3D')}-<id>)")
    lay = layouts.load(layout_spec)
    if selector is not None:
        from hoardfs.sql.selectors import parse_selector  # deferred: validation only; the run queries

        parse_selector(selector)
    if nodes is not None:
        bad = [n for n in nodes if not re.fullmatch(r"[0-9a-f]{64}", n)]
        if bad:
            raise OutputError(f"--nodes: {bad[0]!r} is not a sha256 (64 lower-case hex digits)"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    try:
        # validated as a dict: kind, dedup and mode are the caller's strings until the model checks them
        return OutputSpec.model_validate({
            "kind": kind, "id": output_id, "selector": selector, "nodes": sorted(set(nodes)) if nodes else None,
            "layout": {"name": lay.name, "template": lay.template, "sidecars": lay.sidecars,
                       "per_locator": lay.per_locator,
                       # only when set: a request's digest (its id's identity) stays
                       # what it was before the option existed
                       **({"case_sensitive": True} if lay.case_sensitive else {})},
            "dedup": dedup, "mode": mode})
    except ValidationError as e:
        raise OutputError(f"request rejected: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None


# -- state ------------------------------------------------------------------------------------

@dataclass
class OutputState:
    id: str
    spec: dict[str, Any]
    status: str = Status.QUEUED.value  # one of STATUSES
    error: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    updated: str = ""
    #: a run of it reserved room and began writing (`seal.begin` returned): from then on a
    #: failure keeps what was written for the same command to resume; before, it is a refusal
    started: bool = False
    #: a refusal's exit code (README), for `--wait` and `--status` to exit with it
    exit_code: int = 0


#: the statuses a stage or export takes (`Status`, the one of every kind of run)
STATUSES = runs.STATUSES["outputs"]


def state_dir(cfg: Settings) -> Path:
    return runs.state_dir(cfg, "outputs")


def load_state(cfg: Settings, output_id: str) -> OutputState | None:
    """The recorded request of `output_id`, None if there is none; a damaged state file (not
    JSON, not an output's state, not a request: `hoardfs.jobs.runs.load`), or one the service did
    not write (another account's, one others may write: `load_owned`), is named (DamagedState,
    one line), never a traceback."""
    if not OUTPUT_ID.fullmatch(output_id or ""):
        raise OutputError(f"{output_id!r} is not an output id (1-128 of A-Z a-z 0-9 . _ -)")
    path = state_dir(cfg) / f"{output_id}.json"
    what = f"the state of output {output_id}"
    way_on = f"`hoard zones clean {output_id}` forgets the request (and removes its output)"
    # (a file the service did not write is never `hoard zones clean`'s: it would remove the real output of that id)
    st = runs.load(path, OutputState, "outputs", what, way_on, DamagedState, DamagedState)
    if st is None:
        return None
    try:
        OutputSpec(**st.spec)
    except (ValueError, TypeError) as e:  # (pydantic's ValidationError is a ValueError)
        raise DamagedState(f"{what} ({path}) is damaged (its request: {first_line(e)[:120]}); {way_on}") from None
    return st


def forget(cfg: Settings, output_id: str) -> bool:
    """Drop the recorded request of `output_id` (its output was removed): the id is free again."""
    try:
        (state_dir(cfg) / f"{output_id}.json").unlink()
    except FileNotFoundError:
        return False
    fsync_dir(state_dir(cfg))
    return True


def is_running(cfg: Settings, output_id: str) -> bool:
    """True while a process (this host's CLI or a worker's work horse) runs `output_id`: it
    holds the id's lock, which the kernel drops when that process dies."""
    try:
        with flocked(state_dir(cfg) / f"{output_id}.lock", wait=False):
            return False
    except BlockingIOError:
        return True


def sealed(cfg: Settings, spec: OutputSpec) -> dict[str, Any] | None:
    """The `_JOB` document of the id's sealed output, None when there is none (never made,
    cleaned, removed by hand, or a crash before its `_SEALED`)."""
    try:
        return seal.check_sealed(cfg.ssd.zone_path(spec.zone) / spec.id)
    except seal.OutputIncomplete:
        return None


def describe(cfg: Settings, st: OutputState) -> tuple[str, str]:
    """(status, why) as a person should read them: `done` only with its seal in place,
    `running` only while a process runs it."""
    spec = OutputSpec(**st.spec)
    if st.status == "done" and sealed(cfg, spec) is None:
        return "gone", (f"its output {spec.zone}/{spec.id} is no longer there (cleaned or removed by hand); the same "
                        "command makes it again")
    if st.status == "running" and not is_running(cfg, st.id):
        return "interrupted", ("the process running it died (killed, or the worker's work horse was); the same "
                               "command resumes it")
    return st.status, st.error


def save_state(cfg: Settings, st: OutputState) -> None:
    runs.save(state_dir(cfg) / f"{st.id}.json", st, sort_keys=True)


@contextlib.contextmanager
def _id_lock(cfg: Settings, output_id: str) -> Iterator[None]:
    """One run of an id at a time, across processes (a killed worker's work horse may still
    run: a resumed run waits for it). The kernel drops the lock with its holder."""
    with flocked(state_dir(cfg) / f"{output_id}.lock"):
        yield


def problems(cfg: Settings) -> list[str]:
    """`hoard health`'s lines about stages and exports: each failed or interrupted one (a
    queued one waits for a worker; a done one is fine, or `gone` if its output was removed by
    hand — not a problem of the store)."""
    found = []
    for path in sorted(state_dir(cfg).glob("*.json")):
        try:
            st = load_state(cfg, path.stem)
        except OutputError as e:
            found.append(f"output {path.stem}: {e.message}")
            continue
        if st is None:
            continue
        shown, why = describe(cfg, st)
        if shown in ("failed", "interrupted"):
            kind = st.spec["kind"]
            found.append(f"{kind} {st.id}: {shown} — {why}; the same `hoard {kind} {st.id} …` command resumes it, "
                         f"or `hoard zones clean {st.id}` gives it up")
    return found


def submit(cfg: Settings, spec: OutputSpec) -> OutputState:
    """Record the request. Ids are immutable: the same request again is fine (a done one whose
    output is gone is made again), another one — of either kind, queued, running, failed or
    done — is refused until `hoard zones clean ID` forgets it. One submit of an id at a time."""
    final = cfg.ssd.zone_path(spec.zone) / spec.id
    with flocked(state_dir(cfg) / f"{spec.id}.submit.lock", transient=True):
        st = load_state(cfg, spec.id)
        if st is not None and st.status == "refused":
            st = None  # a refusal holds no id: any request may take it
        if st is not None and OutputSpec(**st.spec).digest() != spec.digest():
            other = OutputSpec(**st.spec)
            raise OutputError(f"output id {spec.id} is taken by another request ({other.kind}, "
                              f"{describe(cfg, st)[0]}: `hoard {other.kind} --status {spec.id}`); ids are immutable — "
                              f"choose a new id, or `hoard zones clean {spec.id}` first to reuse it")
        if st is None and final.exists():
            raise OutputError(f"{final} exists but no {spec.kind} made it; choose another id, or `hoard zones clean "
                              f"{spec.id}` first")
        if st is None or st.status == "done" and sealed(cfg, spec) is None:
            st = OutputState(spec.id, spec.model_dump(), status="queued")
            save_state(cfg, st)
        return st


# -- the run ------------------------------------------------------------------------------------

def run_job(config_path: str | None, output_id: str) -> dict[str, Any]:
    """RQ job (queue `io`): run the recorded request of `output_id` (a refusal stays recorded
    as `refused`, saying why, for `--status` and the run page)."""
    cfg = config_mod.load(config_path)
    return run(cfg, output_id, keep_refusal=True)


#: what a run does between its state's `running` and `done`: (cfg, spec, progress, started) → report
Body = Callable[[Settings, OutputSpec, Callable[[int, int], None] | None, Callable[[], None]], dict[str, Any]]


def run(cfg: Settings, output_id: str, progress: Callable[[int, int], None] | None = None,
        keep_refusal: bool = False, body: Body | None = None) -> dict[str, Any]:
    """Plan, reserve, copy, seal; the report. Idempotent: a sealed output of the same request
    is reported as it is. A HoardError before the run started (nothing reserved, nothing
    written) is a refusal: the request is forgotten (`keep_refusal`: kept as `refused`, which
    holds no id) and the error raised as it is; so is a Ctrl-C before it started (--here).
    `body`: the run itself (default: planned here and read from this host's store; a remote
    worker's is planned on the store's server, hoardfs.jobs.remote)."""
    with _id_lock(cfg, output_id):
        st = load_state(cfg, output_id)
        if st is None:
            raise OutputError(f"no request recorded for output {output_id}; `hoard stage` / `hoard export` it first")
        spec = OutputSpec(**st.spec)
        if st.status == "done" and sealed(cfg, spec) is not None:
            return {**st.report, "already_done": True}
        st.status, st.error, st.exit_code = "running", "", 0
        zone_dir = cfg.ssd.zone_path(spec.zone)
        # an earlier attempt left files (a state from before `started` was recorded)
        st.started = st.started or (zone_dir / zones.TMP / spec.id).exists() or (zone_dir / spec.id).exists()
        save_state(cfg, st)

        def started() -> None:
            if not st.started:
                st.started = True
                save_state(cfg, st)

        try:
            with runlog.captured(cfg, spec.kind, output_id):
                report = (body or _run)(cfg, spec, progress, started)
        except BaseException as e:
            if isinstance(e, HoardError) and not st.started:
                if keep_refusal:
                    st.status, st.error, st.exit_code = "refused", e.message, int(e.exit_code)
                    save_state(cfg, st)
                else:
                    forget(cfg, output_id)
                raise
            if isinstance(e, KeyboardInterrupt) and not st.started and not keep_refusal:
                forget(cfg, output_id)  # Ctrl-C while it planned (--here): nothing written or reserved, nothing kept
                raise
            st.status = "failed"
            st.error = e.message if isinstance(e, HoardError) else f"{type(e).__name__}: {e}"
            save_state(cfg, st)
            raise
        st.status, st.report = "done", report
        save_state(cfg, st)
        return report


def plan_items(cfg: Settings, spec: OutputSpec) -> tuple[list[Item], int]:
    """The files of the output (paths relative to `<zone>/<id>/`) and the nodes selected."""
    lay = spec.the_layout()
    rows = _selected_rows(cfg, spec, lay.row_parts())  # (only what its paths and sidecars read: a query a part)
    prefix = f"{lay.name}/input/" if spec.kind == "stage" else f"{lay.name}/"
    batches = (spec.selector or {}).get("batches") or ()  # a stage of one batch: that batch's paths
    placed = layouts.plan(lay, rows, prefix, batches)  # paths checked as they will lie in the output
    items = [Item(prefix + p.path, p.sha256, p.size, p.sidecar) for p in placed]
    for role, shas in sorted((spec.context or {}).items()):
        items += _context_items(cfg, spec, lay, role, shas)
    return items, len(rows)


def _selected_rows(cfg: Settings, spec: OutputSpec, parts: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The layout fields (hoardfs.sql.layout_rows; of `parts`, default all) of every selected
    node, or OutputError: the database down, an empty selection, a listed node unknown or hidden."""
    # deferred: the planning step is the only one that needs the database
    import psycopg

    from hoardfs.sql.layout_rows import PARTS, layout_rows
    from hoardfs.sql.selectors import physical_nodes, query_nodes

    parts = PARTS if parts is None else parts
    try:
        conn = psycopg.connect(cfg.database_url, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise OutputError(f"cannot reach the database ({first_line(e)}) to plan {spec.kind} {spec.id}; nothing was "
                          "written — start it (`hoard services up`) and run the same command again",
                          ExitCode.UNAVAILABLE) from None
    with conn, _planning_db(spec):
        if spec.selector is not None:
            node_ids = query_nodes(conn, spec.selector).node_ids
        else:
            physical = physical_nodes(conn, [bytes.fromhex(h) for h in spec.nodes or []])
            found = {h: node_id for h, node_id, _hidden in physical}
            hidden = sorted(h for h, _, is_hidden in physical if is_hidden)
            unknown = [h for h in spec.nodes or [] if h not in found]
            if unknown:
                raise OutputError(f"--nodes: {len(unknown)} sha256(s) are not physical nodes in the database, e.g. "
                                  f"{unknown[0]}; nothing was staged", ExitCode.DATA)
            if hidden:  # as a selector leaves them out (`hoard delete --node`, black-listed)
                raise OutputError(f"--nodes: {len(hidden)} of the listed nodes are deleted or black-listed, e.g. "
                                  f"{hidden[0]}; take them off the list — nothing was staged", ExitCode.DATA)
            node_ids = [found[h] for h in spec.nodes or []]
        if not node_ids:
            raise OutputError(f"the selection is empty: no node matches, so there is nothing to {spec.kind}; "
                              "check the selector (`hoard select`)", ExitCode.DATA)
        rows = layout_rows(conn, node_ids, parts)
    missing = len(node_ids) - len(rows)
    if missing:  # selected, then gone before the fields were read (a concurrent deletion)
        raise OutputError(f"{missing} selected node(s) vanished while the {spec.kind} was planned; run it again",
                          ExitCode.DATA)
    return rows


#: where a stage with a worker's files (`OutputSpec.stage`) lists its inputs — `[[path relative
#: to the input root, the node's sha256]]` —, beside (not in) the input root: the index and
#: label files, the parents and the converted bytes in the input root are not inputs
INPUTS_FILE = "staged-inputs.json"


def plan_stage(cfg: Settings, spec: OutputSpec, store: Any) -> tuple[list[Item], list[tuple[str, bytes]], int]:
    """A stage with a worker's files (hoardfs.datasets.stagefiles): the items copied from the
    store (inputs, parents, context), the files made here (index, per-input JSON, label files,
    converted images, INPUTS_FILE) and the nodes selected. Every bytes check (a template's fixed
    extension, `convert`) reads the object from `store`; every refusal is one line (PlacementError,
    exit 5) before a byte is written."""
    files = stagefiles.StageFiles.model_validate(spec.stage)
    lay = spec.the_layout()
    rows = _selected_rows(cfg, spec)
    prefix = f"{lay.name}/input/"
    want = files.convert
    # with `convert`, {ext} is the type staged
    lrows = {r["node_id"]: ({**r, "file_type": want} if want else r) for r in rows}
    by_id = {r["node_id"]: r for r in rows}
    batches = (spec.selector or {}).get("batches") or ()
    placed = layouts.plan(lay, list(lrows.values()), prefix, batches)
    context = [it for role, shas in sorted((spec.context or {}).items())
               for it in _context_items(cfg, spec, lay, role, shas)]
    parents, children, prow = _neighbours(cfg, spec, [r["node_id"] for r in rows], files)
    ctx_path = {(it.path.split("/", 2)[1], it.sha256): "../" + it.path.split("/", 1)[1] for it in context}
    items: list[Item] = list(context)
    made: list[tuple[str, bytes]] = []
    last: dict[str, bytes] = {}  # the object read last only: a stage of many images never holds them all

    def data(sha: str) -> bytes:
        if sha not in last:
            last.clear()
            last[sha] = store.get(sha)
        return last[sha]

    def head(sha: str) -> bytes:
        """The object's first bytes, which tell its type (a video is not read whole for them)."""
        if sha in last:
            return last[sha][:16]
        pieces = store.iter_object(bytes.fromhex(sha))
        try:
            return bytes(next(pieces, b""))[:16]
        finally:
            pieces.close()

    def place(path: str, sha: str, size: int, who: str, tpl_lay: layouts.Layout, sidecar: bytes | None = None) -> None:
        lit = stagefiles.literal_ext(tpl_lay)
        if want is not None and stagefiles.sniff(head(sha)) != want:
            made.append((prefix + path, stagefiles.convert(data(sha), want, who)))
            if sidecar is not None:
                made.append((prefix + path + layouts.SIDECAR_SUFFIX, sidecar))
            return
        if want is None and lit is not None:
            stagefiles.check_type(head(sha), lit, who, tpl_lay.template)
        items.append(Item(prefix + path, sha, size, sidecar))

    parent_lay = layouts.parse(files.parent_template, lay.name) if files.parent_template else None
    staged: list[stagefiles.Staged] = []
    for p in placed:
        row = lrows[p.node_id]
        who = f"node {p.node_id} ({p.sha256[:12]}…)"
        place(p.path, p.sha256, p.size, who, lay, p.sidecar)
        s = stagefiles.Staged(row=by_id[p.node_id], path=p.path, batch=p.batch, rel=p.rel)
        ups = parents.get(p.node_id, [])
        if parent_lay is not None and ups:
            if len(ups) > 1:
                raise layouts.PlacementError(f"{who} has {len(ups)} parents; stage_layout.parent_template places one "
                                             "— narrow the selector, or stage them with include_parents")
            par = prow[ups[0]]
            path = layouts.render(parent_lay, {**row, "file_type": want or par.get("file_type")}, p.batch, p.rel,
                                  prefix)
            place(path, par["sha256"], par["size"], f"the parent {par['node_id']} ({par['sha256'][:12]}…) of {who}",
                  parent_lay)
            s.parents = [path]
        else:
            s.parents = sorted(ctx_path[("parents", prow[u]["sha256"])] for u in ups
                               if ("parents", prow[u]["sha256"]) in ctx_path)
        s.children = sorted(ctx_path[("children", prow[d]["sha256"])] for d in children.get(p.node_id, [])
                            if ("children", prow[d]["sha256"]) in ctx_path)
        staged.append(s)
    parsed: dict[str, layouts.Layout] = {}

    def per_input(tpl: str, s: stagefiles.Staged) -> str:
        if tpl not in parsed:
            parsed[tpl] = layouts.parse(tpl, lay.name)
        return layouts.render(parsed[tpl], lrows[s.row["node_id"]], s.batch, s.rel, prefix)

    def size_of(sha: str) -> tuple[int, int]:
        return stagefiles.image_size(data(sha), f"node {sha[:12]}…")

    made += [(prefix + path, b) for path, b in stagefiles.build(files, staged, per_input, size_of)]
    made.append((f"{lay.name}/{INPUTS_FILE}",
                 json.dumps([[s.path, s.row["sha256"]] for s in staged], indent=0).encode()))
    _one_file_per_path(lay, [it.path for it in items] + [it.path + layouts.SIDECAR_SUFFIX for it in items
                                                         if it.sidecar is not None] + [p for p, _ in made])
    return items, made, len(rows)


def _neighbours(cfg: Settings, spec: OutputSpec, node_ids: list[int], files: stagefiles.StageFiles
                ) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, dict[str, Any]]]:
    """(node → its parents, node → its children, their layout rows by node id), as far as the
    stage places them (a parent_template, include_parents/_children) — else empty."""
    # deferred: as in plan_items, only planning needs the database
    import psycopg

    from hoardfs.sql.layout_rows import layout_rows, neighbour_ids

    ctx = spec.context or {}
    up, down = bool(files.parent_template or "parents" in ctx), "children" in ctx
    if not (up or down):
        return {}, {}, {}
    with _planning_db(spec), psycopg.connect(cfg.database_url, connect_timeout=10) as conn:
        parents = neighbour_ids(conn, node_ids, up=True) if up else {}
        children = neighbour_ids(conn, node_ids, up=False) if down else {}
        ids = sorted({n for m in (parents, children) for v in m.values() for n in v})
        return parents, children, {r["node_id"]: r for r in layout_rows(conn, ids)}


def _one_file_per_path(lay: layouts.Layout, paths: list[str]) -> None:
    """Refuse two of a stage's files on one path, or a file where another's directory is."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise layouts.PlacementError(f"stage {lay.name}: two files would be written to {path!r} (an input, a "
                                         "parent, an index or a label file): give them templates that tell them apart")
        seen.add(path)
    for path in paths:
        above = path.rpartition("/")[0]
        while above:
            if above in seen:
                raise layouts.PlacementError(f"stage {lay.name}: {above!r} is a file and the directory of {path!r}: "
                                             "make the templates end every path at the same depth")
            above = above.rpartition("/")[0]


def _context_items(cfg: Settings, spec: OutputSpec, lay: layouts.Layout, role: str, shas: list[str]) -> list[Item]:
    """The files of one role beside a stage's inputs (`<layout>/<role>/…`, the inputs' layout):
    what of them is still a visible physical node (one deleted or black-listed since the run
    was planned is left out, as a selector leaves it out)."""
    # deferred: as in plan_items, only planning needs the database
    import psycopg

    from hoardfs.sql.layout_rows import layout_rows
    from hoardfs.sql.selectors import physical_nodes

    if not shas:
        return []
    # (the database gone since plan_items asked it: one line, as there, not psycopg's error)
    with _planning_db(spec), psycopg.connect(cfg.database_url, connect_timeout=10) as conn:
        ids = [node_id for _h, node_id, hidden in physical_nodes(conn, [bytes.fromhex(h) for h in shas])
               if not hidden]
        rows = layout_rows(conn, sorted(ids))
    prefix = f"{lay.name}/{role}/"
    try:
        placed = layouts.plan(lay, rows, prefix)
    except layouts.PlacementError:
        # the inputs' layout cannot place one of them — a field it lacks (a child an action made
        # has no batch, source or original path; a parent has not the label the layout files by)
        # or a path two of them share: this role is laid out by sha256, which places any node
        # (the context is fixed at plan: failing here, a resumed run would fail the same way)
        placed = layouts.plan(layouts.parse(layouts.BUILTIN["by_sha256"], lay.name, lay.sidecars), rows, prefix)
    return [Item(prefix + p.path, p.sha256, p.size, p.sidecar) for p in placed]


@contextlib.contextmanager
def _planning_db(spec: OutputSpec) -> Iterator[None]:
    """A database error while planning (the server went away, a schema older than this hoardfs)
    is a refusal, as the database down is: nothing was reserved or written yet — not a failed
    output holding its id and a health problem, and no traceback."""
    import psycopg  # deferred: as in plan_items, only planning needs the database

    try:
        yield
    except psycopg.Error as e:
        old = isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn))
        raise OutputError(f"the database failed while {spec.kind} {spec.id} was planned ({first_line(e)}); nothing "
                          "was written — " + ("its schema is older than this hoardfs: `hoard db migrate`, then run "
                                              "the same command again" if old else "run the same command again"),
                          ExitCode.UNAVAILABLE) from None


def _run(cfg: Settings, spec: OutputSpec, progress: Callable[[int, int], None] | None,
         started: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The run; `started()` is called once the zone admitted it (room reserved, its tree
    made): what fails before that was refused, and has written and reserved nothing."""
    # deferred: the store opens only when there is something to copy
    from hoardfs.fsd.io.planner import warming
    from hoardfs.fsd.store import Store

    t0 = time.monotonic()
    if (done := _sealed_report(cfg, spec)) is not None:
        return done
    if spec.mode == "view" and cfg.mount.path is None:
        raise OutputError("--mode view needs the mount: set `[mount] path = \"/srv/hoard\"` in hoard.toml (where "
                          "`hoard mount` / hoard-mount.service serves), or use --mode copy")
    if spec.stage is not None:  # a worker's folder contract: its files are made from the objects' bytes
        with Store.open(cfg) as store:
            require_stored(store, spec.nodes or [], OutputError)
            with warming(store, [bytes.fromhex(h) for h in spec.nodes or []]) as planned:
                items, made, n_nodes = plan_stage(cfg, spec, store)
                require_stored(store, [it.sha256 for it in items], OutputError)
                planned()
                return copy_planned(cfg, spec, store, items, n_nodes, progress, started, t0, generated=made)
    if spec.nodes and spec.mode == "copy":
        # the objects to read are known before the plan (its SQL, its paths): the disks start
        # reading them into the page cache meanwhile, and the copy finds them there
        with Store.open(cfg) as store:
            with warming(store, [bytes.fromhex(h) for h in spec.nodes]) as planned:
                items, n_nodes = plan_items(cfg, spec)
                require_stored(store, [it.sha256 for it in items], OutputError)
                planned()
                return copy_planned(cfg, spec, store, items, n_nodes, progress, started, t0)
    items, n_nodes = plan_items(cfg, spec)
    with Store.open(cfg) as store:
        require_stored(store, [it.sha256 for it in items], OutputError)
        if spec.mode == "view":
            return _run_view(cfg, spec, store, items, n_nodes, t0, started)
        return copy_planned(cfg, spec, store, items, n_nodes, progress, started, t0)


def _sealed_report(cfg: Settings, spec: OutputSpec) -> dict[str, Any] | None:
    """The report of the id's output when it is sealed already (for this request: another's
    is refused), else None."""
    zone, final = spec.zone, cfg.ssd.zone_path(spec.zone) / spec.id
    if not (final / seal.SEALED).is_file():
        return None
    doc = seal.check_sealed(final)
    if doc.get("selector") != _request(spec):
        raise OutputError(f"{final} is sealed for another request; ids are immutable", ExitCode.DATA)
    zones.release_stale(cfg, zone, spec.id)  # a run killed after its seal, before its release
    return {"id": spec.id, "zone": zone, "path": str(final), "files": doc["actual_files"],
            "bytes": doc["actual_bytes"], "already_done": True}


def copy_planned(cfg: Settings, spec: OutputSpec, store: Any, items: list[Item], n_nodes: int,
                 progress: Callable[[int, int], None] | None, started: Callable[[], None],
                 t0: float | None = None, generated: list[tuple[str, bytes]] | None = None) -> dict[str, Any]:
    """Copy mode of a planned output: `items` read through `store` (its `read_batch`: the store,
    or a remote worker's reader of located records) into the zone, and the `generated` (path,
    bytes) files made by the plan (plan_stage), sealed; the report."""
    t0 = time.monotonic() if t0 is None else t0
    if (done := _sealed_report(cfg, spec)) is not None:
        return done
    zone, final = spec.zone, cfg.ssd.zone_path(spec.zone) / spec.id
    # the worker's output directory, and a root per staged role (parents, children) even with no file
    empty = [f"{spec.layout['name']}/{role}" for role in ("output", *(spec.context or {}))] if spec.kind == "stage" else []
    doc, rep = write_copy(cfg, store, zone, spec.id, job=f"{spec.kind}:{spec.id}", kind=spec.kind, items=items,
                          generated=generated or (), selector=_request(spec), layout=spec.layout, progress=progress, started=started,
                          empty_dirs=empty)
    return {"id": spec.id, "zone": zone, "path": str(final), "layout": spec.layout["name"], "nodes": n_nodes,
            "files": doc["actual_files"], "bytes": doc["actual_bytes"], "copied_files": rep.written,
            "copied_bytes": rep.bytes_written, "kept_files": rep.kept, "fallbacks": rep.fallbacks,
            "seconds": round(time.monotonic() - t0, 3),
            "mib_s": round(rep.bytes_written / (1 << 20) / max(rep.seconds, 1e-9), 1)}


def clean(cfg: Settings, output_id: str, zone: str | None = None, aside: bool = False) -> dict[str, Any]:
    """`hoard zones clean ID`: remove the output (hoardfs.fsd.outputs.zones.clean: sealed, or incomplete with
    no live job), the view a view-mode output published, and the recorded request — the id is
    free again. Refused while a stage/export of the id runs (ZoneBusy). `aside`: its directories
    renamed into the zone's trash (hoardfs.fsd.outputs.zones.clean), deleted later by `empty_trash`."""
    from hoardfs.fsd.outputs.views import remove_view  # deferred: only a view-mode output opens the store here

    damaged = False
    try:
        st = load_state(cfg, output_id) if OUTPUT_ID.fullmatch(output_id) else None
    except DamagedState:
        st, damaged = None, True
    spec = OutputSpec(**st.spec) if st is not None else None
    if spec is not None and zone not in (None, spec.zone):
        st = spec = None  # the request is of another zone's output (a 3B package may share its id)
    if spec is not None and is_running(cfg, output_id):
        raise zones.ZoneBusy(f"{spec.kind} {output_id} is running (`hoard {spec.kind} --status {output_id}`); let it "
                             "finish or stop it first")
    try:
        res = zones.clean(cfg, output_id, zone, aside=aside)
    except zones.NoSuchOutput:
        if st is None and not damaged:
            raise
        res = {"zone": spec.zone if spec is not None else "-", "id": output_id, "state": "request only", "freed_bytes": 0,
               "view": None, "stale_reservation": None}
    if spec is not None and res["zone"] != spec.zone:
        st = spec = None  # what was removed is not this request's output
    view = res["view"] or (view_name(spec) if spec is not None and spec.mode == "view" else None)
    res["view_removed"] = False
    if view:  # gc then frees what only it named
        from hoardfs.fsd.store import Store  # deferred: the store opens only for a view

        with Store.open(cfg) as store, contextlib.suppress(ViewError):
            remove_view(store, view, for_output=True)
            res["view_removed"] = True
    res["view"] = view
    res["request_forgotten"] = (st is not None or damaged) and forget(cfg, output_id)
    return res


def view_name(spec: OutputSpec) -> str:
    return f"{spec.zone}-{spec.id}"


def _run_view(cfg: Settings, spec: OutputSpec, store, items: list[Item], n_nodes: int, t0: float,
              started: Callable[[], None]) -> dict[str, Any]:
    """Zero bytes copied (write_view): the files become the view `<zone>-<id>`; a worker on
    another machine needs copy mode."""
    name, lay = view_name(spec), spec.layout["name"]
    doc, info, n_rows = write_view(cfg, store, spec.zone, spec.id, job=f"{spec.kind}:{spec.id}", kind=spec.kind,
                                   view=name, items=items, entries=[f"{lay}/input" if spec.kind == "stage" else lay],
                                   selector=_request(spec), layout=spec.layout, started=started,
                                   empty_dirs=[f"{lay}/output"] if spec.kind == "stage" else [])
    return {"id": spec.id, "zone": spec.zone, "path": str(cfg.ssd.zone_path(spec.zone) / spec.id), "layout": lay,
            "nodes": n_nodes, "files": n_rows, "bytes": info.get("bytes", sum(it.size for it in items)),
            "view": name, "mode": "view", "copied_files": 0, "copied_bytes": 0, "kept_files": 0, "fallbacks": 0,
            "seconds": round(time.monotonic() - t0, 3), "sealed_files": doc["actual_files"]}


def _request(spec: OutputSpec) -> dict[str, Any]:
    """What `_JOB.json` records as the output's selector: enough to tell two requests apart."""
    return {"selector": spec.selector, "nodes_sha256": hashlib.sha256("\n".join(spec.nodes).encode()).hexdigest()
            if spec.nodes else None, "dedup": spec.dedup, "mode": spec.mode, "request_sha256": spec.digest(),
            "view": view_name(spec) if spec.mode == "view" else None}
