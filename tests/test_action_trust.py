"""A run's state is trusted only when it proves itself (docs/security.md, "Run state"): the files
of a failed action run planted in `state/actions` — a contract whose `run_spec.command` is
`sh -c …` — are refused by `hoard action resume`, the runner and the GUI (no Resume), in one
line naming the file, and the command never runs: planted by another local account (a group
that may write the folder), written as the service with a key that is not the hash of the
contract, parameters and inputs, or with the key right but a contract the service does not
have (swapped in beside a real run). The state files of actions, ingests and outputs are
0600 and refused on load when another account owns them or others may write them. Real
PostgreSQL, Redis, store, `hoard` processes and, for the planting, the user `nobody`."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from nicegui import run

from hoardfs.base import config
from hoardfs.base.errors import HoardError
from hoardfs.base.files import NotOwn, load_owned, write_owned
from hoardfs.jobs import launch
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.contract import parse
from hoardfs.jobs.actions.state import RunRefused, load_state, run_id_of, state_dir, steps_of
from tests.gui_fixtures import BATCH, gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import worker_contract
from tests.test_action_runs import action_home, hoard
from tests.test_action_workers import inputs_of
from tests.test_privileges import GROUP, USER, needs_root

pytestmark = pytest.mark.timeout(400)

#: what a forger writes: a worker contract that runs `sh -c "touch MARKER"` as root
EVIL = """action_id = "{name}"
action_type = "AC2"
version = 1

[input_selector]
batches = ["{batch}"]

[stage_layout]
layout = "by_sha256"

[run_spec]
kind = "local"
command = ["sh", "-c", "touch {marker}"]
timeout_s = 60
run_as = "root"
allow_root = true

[[output_parser.children]]
glob = "out/*.png"
"""


def forged(name: str, batch: str, inputs: list[str], marker: Path, *, key: str | None = None) -> tuple[str, dict]:
    """The three files of a failed run of EVIL over `inputs`, as a forger writes them: its id the
    hash of contract, parameters and inputs (what `hoard action run` computes), or `key`."""
    c = parse(tomllib.loads(EVIL.format(name=name, batch=batch, marker=marker)), f"{name}.toml")
    rid = run_id_of(c.action_id, c.version, {}, inputs) if key is None else f"{c.action_id}-v{c.version}-{key}"
    state = {"run_id": rid, "action": c.action_id, "version": c.version, "action_type": c.action_type,
             "action_num": 1, "params": {}, "steps": steps_of(c), "inputs": len(inputs), "status": "failed",
             "step": "plan", "done": [], "error": "interrupted during step plan"}
    return rid, {f"{rid}.json": state, f"{rid}.contract.json": c.model_dump(mode="json"),
                 f"{rid}.inputs.json": inputs}


def plant(directory: Path, files: dict) -> None:
    """`files` (name → JSON document) written into `directory` by the user `nobody` (its group
    `nogroup`, no other), reached through a descriptor this process opened: the user needs
    no way through the directories above it (pytest's 0700 ones)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = list(files)
        script = " && ".join(f'printf %s "${i + 1}" > /proc/self/fd/{fd}/{name}' for i, name in enumerate(names))
        res = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "--",
                              "/bin/sh", "-c", script, "sh", *(json.dumps(files[n]) for n in names)],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd="/", timeout=60,
                             pass_fds=(fd,))
    finally:
        os.close(fd)
    assert res.returncode == 0, res.stderr


def _one_line(res) -> str:
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def _resume_refused(cfg: config.Settings, rid: str, marker: Path, *words: str) -> str:
    """`hoard action resume RUN --here` refuses in one line holding `words`, exit 5, and the
    command never ran; `status` says the same line (exit 5)."""
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    line = _one_line(res)
    assert res.returncode == 5 and all(w in line for w in words), line
    assert not marker.exists(), "the planted command ran"
    st = hoard(cfg.source, "action", "status", rid)
    assert st.returncode == 5 and line.removeprefix("hoard: error: ") in st.stdout + st.stderr, st.stdout + st.stderr
    return line


@needs_root
@pytest.mark.expect_log(r"action run refused: .*owned by uid \d+, not by this service's user", level="WARNING")
def test_a_run_another_account_planted_is_refused_and_runs_nothing(hoard_home: Path, pg, redis_conn) -> None:
    """`state/actions` writable by a group the user `nobody` is in: it plants the three files of a
    failed run of an `sh -c touch MARKER` contract, its id the right hash. `hoard action resume
    RUN --here` refuses in one line naming the file and its owner (exit 5), the marker never
    appears; `hoard action runs` lists the run as refused with that line, `hoard health` names
    it, and the folder is given back its mode (0750). (Before: the command ran as root.)"""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=171, items=3)
    marker = hoard_home / "planted-ran"
    rid, files = forged("evil", batch, inputs_of(cfg, batch), marker)
    actions = state_dir(cfg)
    gid = grp.getgrnam(GROUP).gr_gid
    for d in (actions.parent, actions):  # the service's group may pass state/ and write state/actions
        os.chown(d, -1, gid)
    actions.chmod(0o2770)
    plant(actions, files)
    assert (actions / f"{rid}.json").stat().st_uid != 0
    line = _resume_refused(cfg, rid, marker, f"{actions}/{rid}", "owned by uid", "remove it")
    assert "`hoard action resume" not in line, line
    runs = hoard(cfg.source, "action", "runs", "--json")
    assert runs.returncode == 0, runs.stderr
    (doc,) = [d for d in json.loads(runs.stdout)["runs"] if d["run"] == rid]
    assert doc["status"] == "refused" and "owned by uid" in doc["error"], doc
    health = json.loads(hoard(cfg.source, "health", "--json").stdout)
    assert any(p.startswith(f"action run {rid}: refused:") for p in health["problems"]), health["problems"]
    assert stat.S_IMODE(actions.stat().st_mode) & 0o027 == 0, oct(actions.stat().st_mode)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["a key that is not its hash", "an action the service does not have"])
@pytest.mark.expect_log(r"refused: .*do not hash to run", level="WARNING", optional=True)
def test_a_run_written_as_the_service_that_does_not_prove_itself_is_refused(hoard_home: Path, pg, redis_conn,
                                                                            how: str) -> None:
    """The same three files written as the service itself (0600, its own): with a run id that is
    not the hash of the contract, parameters and inputs, `resume` refuses in one line saying so;
    with the id right but an action the service has in neither its actions directory nor its
    built-ins, the state proves itself but what it would run is not the service's: refused in one
    line naming the action. The marker never appears; a worker given the step refuses it too."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=172, items=3)
    marker = hoard_home / "forged-ran"
    key = "0123456789ab" if how.startswith("a key") else None
    rid, files = forged("evil", batch, inputs_of(cfg, batch), marker, key=key)
    for name, doc in files.items():
        write_owned(state_dir(cfg) / name, json.dumps(doc).encode())
    if key:
        _resume_refused(cfg, rid, marker, f"{state_dir(cfg)}/{rid}.json",
                        f"its contract, parameters and inputs do not hash to run {rid}", "not written by hoardfs")
        with pytest.raises(RunRefused, match="do not hash to run"):
            load_state(cfg, rid)
        assert [d["status"] for d in api.runs(cfg)] == ["refused"]
        # a step job queued for it (the runner, as a worker takes it): refused, nothing run
        from hoardfs.jobs.actions.runner import run_step

        with pytest.raises(RunRefused, match="do not hash to run"):
            run_step(str(cfg.source), rid, "plan")
        assert json.loads(load_owned(state_dir(cfg) / f"{rid}.json"))["status"] == "failed"  # not written over
    else:
        _resume_refused(cfg, rid, marker, "action evil is not one of this service's now", "not run")
        assert [(d["status"], bool(d["refused"])) for d in api.runs(cfg)] == [("failed", True)]
    assert not marker.exists()


def test_a_contract_swapped_beside_a_real_run_is_not_run(hoard_home: Path, pg, redis_conn) -> None:
    """A real run fails (its worker exits 3); its recorded contract is then rewritten, as the
    service, to run `sh -c touch MARKER` under the same action and version — the run id still
    hashes right. `resume` refuses in one line (the contract it was recorded with is not the
    actions directory's), the marker never appears; `runs` offers no resume for it. The
    contract put back, the same `resume` goes on (the fixed worker: done)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=173, items=3)
    worker_contract(cfg, batch, exit=3)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 5, res.stdout + res.stderr
    (rid,) = [d["run"] for d in api.runs(cfg)]
    recorded = state_dir(cfg) / f"{rid}.contract.json"
    original = load_owned(recorded)
    doc = json.loads(original)
    marker = hoard_home / "swapped-ran"
    doc["run_spec"]["command"] = ["sh", "-c", f"touch {marker}"]
    write_owned(recorded, json.dumps(doc).encode())
    line = _resume_refused(cfg, rid, marker, f"run {rid}: the contract it was recorded with is not action thumbs v1",
                           "raise `version`")
    assert "thumbs.toml" in line, line
    runs = hoard(cfg.source, "action", "runs")
    assert "raise `version`" in runs.stdout, runs.stdout  # the refusal, where a resume was offered
    # a step job of it (the runner, as a worker takes it): refused, recorded failed with that line
    from hoardfs.jobs.actions.runner import run_step
    from hoardfs.jobs.actions.state import save_state

    st = load_state(cfg, rid)
    st.status = "queued"
    save_state(cfg, st)
    with pytest.raises(HoardError, match="the contract it was recorded with is not action thumbs v1"):
        run_step(str(cfg.source), rid, st.step)
    assert not marker.exists()
    after = load_state(cfg, rid)
    assert after.status == "failed" and "raise `version`" in after.error, after.error
    write_owned(recorded, original)
    worker_contract(cfg, batch, exit=0)  # the worker fixed (same contract text: the same run)
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_state(cfg, rid).status == "done" and not marker.exists()


def test_state_files_are_the_services_own(hoard_home: Path, pg, redis_conn) -> None:
    """A run's state and work files, an ingest's and an output's state are written 0600; each
    is refused on load (one line naming the file, no traceback) once others may write it (0666)
    or another account owns it, and read again once it is the service's own again."""
    from hoardfs.jobs import outputs
    from hoardfs.jobs.ingest import state as ingest_state

    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=174, items=3)
    worker_contract(cfg, batch)
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    (rid,) = [d["run"] for d in api.runs(cfg)]
    outputs.submit(cfg, outputs.make_spec("export", "trust-1", "by_sha256", nodes=inputs_of(cfg, batch)[:1]))
    files = {
        "action": (state_dir(cfg) / f"{rid}.json", lambda: load_state(cfg, rid), RunRefused),
        "action work": (state_dir(cfg) / f"{rid}.inputs.json", lambda: load_state(cfg, rid), RunRefused),
        "ingest": (ingest_state.state_dir(cfg) / f"{batch}.json", lambda: ingest_state.load_state(cfg, batch),
                   NotOwn),
        "output": (outputs.state_dir(cfg) / "trust-1.json", lambda: outputs.load_state(cfg, "trust-1"),
                   outputs.OutputError),
    }
    for what, (path, load, refusal) in files.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (what, oct(path.stat().st_mode))
        assert load() is not None
        for change, words in (((lambda p: p.chmod(0o666)), "writable by others (mode 0666)"),
                              ((lambda p: os.chown(p, 65534, -1)), "owned by uid 65534")):
            change(path)
            with pytest.raises(refusal) as e:
                load()
            line = e.value.message
            assert str(path) in line and words in line and "\n" not in line and "remove it" in line, (what, line)
            path.chmod(0o600)
            os.chown(path, os.geteuid(), -1)
            assert load() is not None, what
    link = state_dir(cfg) / "elsewhere.json"
    link.symlink_to(state_dir(cfg) / f"{rid}.json")
    with pytest.raises(NotOwn, match="a symbolic link"):
        load_owned(link)


@pytest.mark.parametrize("gui_home", [{"_batch": True}], indirect=True)
@pytest.mark.expect_log(r"action run refused: .*owned by uid 65534", level="WARNING")
@pytest.mark.expect_log(r"\(action [^)]*: run\) failed: run [^:]*: the worker exited with status 3", level="ERROR")
async def test_the_actions_pages_show_a_refused_run_without_resume(user, gui_home: Path) -> None:
    """A forged failed run in `state/actions` (owned by another account): /actions lists it as
    refused; its page shows the one line naming the file and offers no Resume (nor Cancel) to an
    operator — who sees Resume on a real failed run beside it."""
    from tests.test_gui_actions import _ingested, _work

    cfg = await _ingested(gui_home)
    worker_contract(cfg, BATCH, exit=3)
    sub = await run.io_bound(launch.launch_action, cfg, "thumbs", None, None, [], "otto")
    await run.io_bound(_work, gui_home)
    assert load_state(cfg, sub.state.run_id).status == "failed"
    marker = Path(cfg.source).parent / "gui-planted-ran"
    rid, files = forged("evil", BATCH, inputs_of(cfg, BATCH), marker)
    for name, doc in files.items():
        write_owned(state_dir(cfg) / name, json.dumps(doc).encode())
        os.chown(state_dir(cfg) / name, 65534, -1)  # another account's

    await sign_in(user, "otto")
    await user.open("/actions")
    await user.should_see(rid, retries=50)
    await user.should_see("refused")
    await user.open(f"/runs/action/{rid}")
    await user.should_see(marker="run-error", retries=50)
    await user.should_see("owned by uid 65534")
    await user.should_see("refused")
    await user.should_not_see(marker="run-resume")
    await user.should_not_see(marker="run-cancel")
    await user.open(f"/runs/action/{sub.state.run_id}")
    await user.should_see(marker="run-resume", retries=50)  # the real one still has its Resume
    assert not marker.exists()
