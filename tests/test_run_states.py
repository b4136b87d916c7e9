"""The state file of every kind of run — an ingest batch, an action run, a stage — is read through
the one run-state store (hoardfs.jobs.runs): a file cut short, or one whose fields are not its
kind's (a value of another type, a status another kind of run takes), is named in one line with
the next step and exit 5 by `hoard ingest --status B`, `hoard action status R` and `hoard stage
--status ID` — never a traceback, never shown as if it were a run. Real `hoard` processes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.base.files import write_owned
from hoardfs.jobs import outputs, runs
from hoardfs.jobs.actions import state as action_state
from hoardfs.jobs.ingest import state as ingest_state

REPO = Path(__file__).resolve().parent.parent
INPUTS = [f"{i:064x}" for i in (1, 2, 3)]
KINDS = ("ingest", "actions", "outputs")


def good(cfg: config.Settings, kind: str) -> tuple[Path, dict, tuple[str, ...]]:
    """A state of `kind` that reads as a run (its file, its document, the command showing it);
    an action run's recorded contract and inputs written beside it (it proves itself)."""
    if kind == "ingest":
        st = ingest_state.BatchState("b1", "gallery", status=runs.Status.FAILED.value, step="store", done=["scan"],
                                     error="PostgreSQL unreachable; start it, then `hoard ingest --resume`")
        return ingest_state.state_dir(cfg) / "b1.json", asdict(st), ("ingest", "--status", "b1")
    if kind == "actions":
        c, _path, _builtin = action_state.own_contract(cfg, "thumbnail")
        params = action_state.typed_params(c, {}, cfg)  # (its defaults)
        rid = action_state.run_id_of(c.action_id, c.version, params, INPUTS)
        action_state.write_work(cfg, rid, "contract", c.model_dump(mode="json"))
        action_state.write_work(cfg, rid, "inputs", INPUTS)
        rs = action_state.RunState(rid, c.action_id, c.version, c.action_type, 1, params, action_state.steps_of(c),
                                   len(INPUTS), status=runs.Status.FAILED.value, error="interrupted during step plan")
        return action_state.state_dir(cfg) / f"{rid}.json", asdict(rs), ("action", "status", rid)
    spec = outputs.make_spec("stage", "s1", "by_sha256", nodes=INPUTS)
    ost = outputs.OutputState("s1", spec.model_dump(), status=runs.Status.FAILED.value, error="the disk went away")
    return outputs.state_dir(cfg) / "s1.json", asdict(ost), ("stage", "--status", "s1")


def hoard(cfg: config.Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def assert_named(cfg: config.Settings, kind: str, path: Path, command: tuple[str, ...], why: str) -> None:
    """`command` says in one line that `path` is damaged (with `why`) and the next step, exit 5;
    the loader raises the same line."""
    res = hoard(cfg, *command)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stdout + res.stderr
    assert res.returncode == 5 and f"({path}) is damaged (" in lines[0] and why in lines[0], lines[0]
    next_step = {"ingest": "`hoard ingest --resume b1`", "actions": "remove it and run the action again",
                 "outputs": "`hoard zones clean s1` forgets the request"}[kind]
    assert next_step in lines[0], lines[0]
    load = {"ingest": ingest_state.load_state, "actions": action_state.load_state, "outputs": outputs.load_state}[kind]
    with pytest.raises(HoardError) as raised:
        load(cfg, command[-1])
    assert raised.value.exit_code == 5 and raised.value.message in lines[0], raised.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_state_file_is_named_in_one_line(hoard_home: Path, kind: str) -> None:
    """A state file of each kind cut short (empty, at its first byte, midway, before its last
    brace) is one line naming the file and the next step, exit 5; whole, it reads as its run."""
    cfg = config.load(hoard_home / "hoard.toml")
    path, doc, command = good(cfg, kind)
    raw = json.dumps(doc, indent=1).encode()
    write_owned(path, raw)
    whole = hoard(cfg, *command)
    assert "is damaged" not in whole.stdout + whole.stderr and "Traceback" not in whole.stderr, whole.stderr
    assert "failed" in whole.stdout + whole.stderr, whole.stdout + whole.stderr
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):
        write_owned(path, raw[:cut])
        assert_named(cfg, kind, path, command, "JSONDecodeError")


#: per kind: (field, a value of another type, what the line says of it)
WRONG = {
    "ingest": [("report", [], "its field 'report' is not a table"),
               ("seconds", "x", "its field 'seconds' is not a table"),
               ("source", 7, "its field 'source' is not a string"),
               ("done", ["scan", "bake"], "its step or steps done are not among scan, store"),
               ("status", "cancelled", "its status 'cancelled' is not one of"),
               ("batch_id", None, "its field 'batch_id' is not a string")],
    "actions": [("report", [], "its field 'report' is not a table"),
                ("error", 3, "its field 'error' is not a string or null"),
                ("status", "done with rejects", "its status 'done with rejects' is not one of")],
    "outputs": [("report", [], "its field 'report' is not a table"),
                ("status", 4, "its field 'status' is not a string"),
                ("status", "gone", "its status 'gone' is not one of"),
                ("error", None, "its field 'error' is not a string"),
                ("spec", {"kind": "stage"}, "its request:")],
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_file_whose_fields_are_not_its_kinds_is_named_in_one_line(hoard_home: Path, kind: str) -> None:
    """A state file of each kind that is JSON but not its kind's record — a field of another type,
    a step UA_1 has not, a status another kind of run takes, an unknown or a missing field — is
    one line naming the file, what is wrong and the next step, exit 5 (before: the ingest status
    command's traceback, or a stage shown with status `4`)."""
    cfg = config.load(hoard_home / "hoard.toml")
    path, doc, command = good(cfg, kind)
    required = {"ingest": "source", "actions": "action_num", "outputs": "spec"}[kind]
    cases = [*WRONG[kind], ("surplus", 1, "no such field 'surplus'"), (required, ..., f"its field {required!r} is missing")]
    for name, value, why in cases:
        changed = {k: v for k, v in doc.items() if k != name} | ({} if value is ... else {name: value})
        write_owned(path, json.dumps(changed).encode())
        assert_named(cfg, kind, path, command, why)


def test_every_kind_takes_statuses_of_the_one_enum() -> None:
    """Ingest, actions and outputs name one Status (each module's `Status` is it), and each kind's
    statuses are values of it."""
    assert ingest_state.Status is action_state.Status is runs.Status
    for kind in KINDS:
        assert set(runs.STATUSES[kind]) <= set(runs.Status), kind
    assert str(runs.Status.DONE_WITH_REJECTS.value) == "done with rejects"


def test_state_and_seal_json_reads_back_whatever_it_holds() -> None:
    """`json_bytes` (run states, a seal's manifest and _JOB.json) reads back to the same data:
    a path with undecodable bytes (a surrogate escape), an integer past 64 bits, text not
    ASCII, a dataclass — what orjson refuses is written by the json module, escaped."""
    import dataclasses
    import json

    from hoardfs.base.files import json_bytes

    @dataclasses.dataclass
    class St:
        path: str
        nodes: list[int]

    odd = b"caf\xe9-\xff.jpg".decode("utf-8", "surrogateescape")
    for doc in ({"b": 1, "a": [1, 2.5, None, True], "é": "ü\u2028"}, {"path": odd}, {"n": 2 ** 70},
                {"files": [{"path": f"x/{i}", "size": i} for i in range(3)]}):
        assert json.loads(json_bytes(doc, sort_keys=True)) == doc
        assert json.loads(json_bytes(doc)) == doc
    assert json.loads(json_bytes({"b": 1, "a": 2}, sort_keys=True)) == {"a": 1 + 1, "b": 1}
    assert list(json.loads(json_bytes({"b": 1, "a": 2}, sort_keys=True))) == ["a", "b"]
    for st in (St("p", [1, 2]), St(odd, [2 ** 70])):
        assert json.loads(json_bytes(st)) == dataclasses.asdict(st)
