"""`hoard action collect RUN`: what a waiting run has produced so far, taken now — the run goes
on waiting (`hoard action release RUN` keeps its meaning: the gate's, and the end of an AC5
run's wait).

    waiting_external   the output root as the external worker left it by now, read by the
                       contract's output_parser (a declared output not written yet is no
                       problem), its children stored (class generated), then ONE write-intent
                       of the children, edges, labels and result rows, keyed by what it holds
                       (`action-collect:<run>:<digest>`: the same output again changes nothing)
    waiting_labels     AC5: the run's tasks finished in Label Studio now → their label rows,
                       in one write-intent the same way
    WAIT_GPU_READY     nothing: the worker has not run (`hoard action release RUN` opens the gate)

What it writes stands until the run's own apply, which takes it back first — the result rows
of the run's batch in the tables it wrote, the labels it added (work file `collected`) — and
then writes the run's final outputs in the same transaction: a row collected from a file the
worker had not finished, or a label a labeller changed since, does not outlive the run. A
child stored from a file not written whole stays a node of its own (the final file is another
child): an external worker writes each child file whole (write, then rename).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode
from hoardfs.base.files import flocked
from hoardfs.base.paths import display
from hoardfs.fsd.core.layout import pin_path
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import labelstudio, parse
from hoardfs.jobs.actions.contract import RunExternal
from hoardfs.jobs.actions.state import (
    ActionError,
    RunState,
    Status,
    cancel_flag,
    check_id,
    load_state,
    lock_path,
    now,
    read_work,
    save_state,
    write_work,
)
from hoardfs.jobs.actions.steps import (
    COLLECTED,
    _finished,
    contract_of,
    ls_mine,
    origin,
    own_table,
    roots_of,
    staged_inputs,
)
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.collected import labels_present
from hoardfs.sql.migrate import migrate

#: the states a run can be collected from
COLLECTABLE = (Status.WAITING_EXTERNAL.value, Status.WAITING_LABELS.value)


def collect(cfg: Settings, rid: str) -> dict[str, Any]:
    """Take what run `rid` produced so far (the table above), under the run's lock; its figures
    (`children`, `labels`, `results`, `new`: the rows the database did not hold yet, `intent`)
    are returned and kept in its report as `collected`. ActionError (one line, the way on) for a
    run in another state; nothing is written then."""
    with flocked(lock_path(cfg, check_id(rid))):
        st = load_state(cfg, rid)
        if st is None:
            raise ActionError(f"no run {rid}; `hoard action runs` lists them")
        if st.status == Status.WAIT_GPU_READY.value:
            raise ActionError(f"run {rid} waits at its GPU gate: its worker has not run, so there is nothing to "
                              f"collect; `hoard action release {rid}` opens the gate")
        if st.status not in COLLECTABLE:
            raise ActionError(f"run {rid} is {st.status} at step {st.step}: collect takes what a run waiting for an "
                              "external worker or for its labellers produced so far; `hoard action status "
                              f"{rid}` names its next command")
        if cancel_flag(cfg, rid).exists():  # a cancel asked while a step held the lock: nothing more is applied
            raise ActionError(f"run {rid} is being cancelled (`hoard action cancel` asked it while a step ran): "
                              f"nothing collected; `hoard action cancel {rid}` again ends it now")
        intent = _labels_intent(cfg, st) if st.status == Status.WAITING_LABELS.value else _external_intent(cfg, st)
        body = {k: v for k, v in intent.items() if k != "key"}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        intent["key"] = f"action-collect:{rid}:{digest[:16]}"
        c = contract_of(cfg, st)
        counts: dict[str, int] = {}
        if any(intent.get(k) for k in ("nodes", "labels", "results")):
            try:
                with psycopg.connect(cfg.database_url, autocommit=True, connect_timeout=10) as conn:
                    migrate(conn)
                    own_table(conn, c)
                    triples = [(lb["node"], lb["key"], lb["value"]) for lb in intent.get("labels", [])]
                    there = labels_present(conn, triples)
                    _record(cfg, rid, {r["table"] for r in intent.get("results", [])},
                            [t for t in triples if t not in there])
                    res = apply_write_intent(conn, intent)
            except psycopg.OperationalError as e:
                raise ActionError(f"run {rid}: PostgreSQL did not take what was collected ({str(e).strip()[:200]}); "
                                  f"nothing was applied — `hoard action collect {rid}` again once it answers",
                                  ExitCode.UNAVAILABLE) from None
            finally:
                _unpin(cfg, rid)
            counts = {} if res.noop else res.counts  # (the same output again: that intent, applied before)
        figures = {"children": len(intent.get("nodes", [])), "labels": len(intent.get("labels", [])),
                   "results": len(intent.get("results", [])), "new": counts, "intent": intent["key"]}
        before = st.report.get("collected") or {}
        st.report["collected"] = figures | {"at": now(), "times": int(before.get("times", 0)) + 1}
        save_state(cfg, st)
        return figures


def _external_intent(cfg: Settings, st: RunState) -> dict[str, Any]:
    """The children, edges, labels and result rows of an external run's output root now."""
    c = contract_of(cfg, st)
    assert isinstance(c.run_spec, RunExternal)
    roots = roots_of(cfg, c, st)
    try:
        parsed = parse.parse_outputs(c, roots.output_root, staged_inputs(cfg, c, st),
                                     a4_scale=c.a4_scale or cfg.store.a4_scale, done_marker=c.run_spec.done_marker,
                                     max_bytes=c.max_output_bytes or cfg.actions.max_output_bytes, partial=True)
    except parse.OutputProblem as e:
        raise ActionError(f"run {st.run_id}: nothing collected: {e.message}", ExitCode.DATA) from None
    stored: dict[str, tuple[str, int]] = {}
    if parsed.children:
        paths = [roots.output_root / ch.path for ch in parsed.children]
        with Store.open(cfg) as store:
            expect = {str(p): ch.seen for p, ch in zip(paths, parsed.children, strict=True) if any(ch.seen)}
            results = store.put_many(paths, klass="generated", expect=expect)
            bad = next((r for r in results if r.status == "rejected"), None)
            if bad is not None:
                raise ActionError(f"run {st.run_id}: output {display(str(bad.path))} could not be stored: {bad.reason}; "
                                  f"nothing was collected — `hoard action collect {st.run_id}` again once the "
                                  "worker wrote it whole", ExitCode.DATA)
            # referenced by nothing until the intent is applied: pinned so gc leaves them meanwhile
            store.pin(_pin(st.run_id), [r.sha256 for r in results], f"collected children of action run {st.run_id}")
        stored = {ch.path: (r.sha256, r.size) for ch, r in zip(parsed.children, results, strict=True)}
    nodes, edges, labels, results_rows = [], [], [], []
    for ch in parsed.children:
        sha, size = stored[ch.path]
        ext = Path(ch.path).suffix.lstrip(".").lower()
        nodes.append({"sha256": sha, "physical": {"size": size, "file_type": ext if ext.isalnum() and len(ext) <= 10
                                                  else None, "locators": [f"action:{st.run_id}/{ch.path}"]}})
        parent = ch.parent_sha256 or (stored[ch.parent_path][0] if ch.parent_path else sha)
        if parent != sha:
            edges.append({"parent": parent, "child": sha, "relationship": ch.relationship})
        labels += [{"node": sha, "key": k, "value": v, "origin": origin(st)} for k, v in ch.labels.items()]
    for r in parsed.records:
        node = r.node_sha256 or stored[r.child_path or ""][0]
        if r.into == "labels":
            labels.append({"node": node, "key": str(r.values["key"]), "value": str(r.values.get("value") or ""),
                           "origin": origin(st)})
        else:
            results_rows.append({"table": r.into, "node": node, "batch_id": st.run_id, "values": r.values})
    return {"relationships": [{"name": n, "action": st.action_num} for n in sorted({e["relationship"] for e in edges})],
            "nodes": nodes, "edges": edges, "labels": labels, "results": results_rows}


def _labels_intent(cfg: Settings, st: RunState) -> dict[str, Any]:
    """The label rows of an AC5 run's tasks finished in Label Studio now."""
    c = contract_of(cfg, st)
    ls = labelstudio.client_from_settings(cfg)
    project = int(st.report["label_studio"]["project"])
    mine = set(ls_mine(cfg, c, st))  # its own tasks and those it took over from a partial release
    tasks = [t for t in labelstudio.export(ls, project)
             if ((t.get("data") or {}).get(labelstudio.SHA_KEY), (t.get("data") or {}).get(labelstudio.PATH_KEY))
             in mine and _finished(t)]
    rows = labelstudio.annotations_to_labels(tasks)
    return {"labels": [{"node": h, "key": k, "value": v, "origin": origin(st)} for h, k, v in rows]}


def _record(cfg: Settings, rid: str, tables: set[str], labels: list[tuple[str, str, str]]) -> None:
    """Add to the run's work file `collected` the result tables and the labels (those the
    database did not hold) a collect is about to write: the run's own apply takes them back
    before it writes its final outputs (`steps.withdraw_collected`). Written before the apply,
    so an apply that commits is always on record."""
    try:
        doc = read_work(cfg, rid, COLLECTED)
    except FileNotFoundError:
        doc = {"tables": [], "labels": []}
    have = {tuple(t) for t in doc["labels"]}
    doc["tables"] = sorted(set(doc["tables"]) | tables)
    doc["labels"] = doc["labels"] + [list(t) for t in dict.fromkeys(labels) if t not in have]
    write_work(cfg, rid, COLLECTED, doc)


def _pin(rid: str) -> str:
    return f"action-{rid}-collect"


def _unpin(cfg: Settings, rid: str) -> None:
    """The pin dropped (the file alone, no store opened): the rows reference them now."""
    pin_path(cfg, _pin(rid)).unlink(missing_ok=True)
