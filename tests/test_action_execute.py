"""Running an action's worker (jobs/actions/execute.py) and typing its `--param`s
(jobs/actions/params.py): real processes — a worker that exits, fails, hangs, is cancelled or
leaves a TERM-ignoring grandchild behind, as the user it must run as, with its log capped."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.base.errors import ExitCode
from hoardfs.jobs.actions.contract import Contract, ContractError, parse
from hoardfs.jobs.actions.execute import (
    CONTAINER_INPUT,
    CONTAINER_OUTPUT,
    ExecError,
    Roots,
    command_for,
    done_marker_present,
    gate_ready,
    render,
    run_worker,
    worker_identity,
)
from hoardfs.jobs.actions.params import ParamError, canonical, parse_params

ROOT = os.geteuid() == 0
needs_root = pytest.mark.needs(ROOT, "NOT ROOT: these tests switch the worker to another user")
PARAMS = {"size": {"type": "int", "default": 256, "min": 16, "max": 4096},
          "low": {"type": "float", "default": 0.1, "min": 0, "max": 1},
          "gray": {"type": "bool", "default": False},
          "preset": {"type": "choice", "choices": ["small", "medium", "large"]},
          "tag": {"type": "str", "default": "x"}}


def contract(run_spec: dict, *, params: dict | None = None, gate: dict | None = None) -> Contract:
    doc = {"action_id": "t", "action_type": "AC3" if gate else "AC2", "version": 1, "input_selector": {},
           "stage_layout": {"layout": "flat"}, "run_spec": run_spec, "output_parser": {}, "params": params or {}}
    if gate:
        doc["gate"] = gate
    return parse(doc, "t.toml")


def sh(script: str, params: dict | None = None, **rs: object) -> Contract:
    return contract({"kind": "local", "command": ["/bin/sh", "-c", script], **rs}, params=params)


@pytest.fixture
def roots() -> Iterator[Roots]:
    """An input and an output root under a directory every user may enter (pytest's tmp_path is
    root's own, mode 0700: the worker user could not reach it)."""
    d = Path(tempfile.mkdtemp(prefix="hoard-exec-", dir="/tmp"))
    d.chmod(0o755)
    (d / "input").mkdir()
    (d / "input" / "a.jpg").write_bytes(b"jpeg")
    yield Roots(d / "input", d / "output", "t-v1-0123456789ab")
    shutil.rmtree(d)


def run(c: Contract, roots: Roots, params: dict | None = None, **kw: object):
    kw.setdefault("heartbeat", lambda: None)
    kw.setdefault("should_stop", lambda: False)
    kw.setdefault("grace_s", 0.5)
    return run_worker(c, roots, params or {}, log_path=roots.output_root.parent / "worker.log", **kw)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """No process `pid`, not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


# -- parameters -------------------------------------------------------------------------------

def test_params_are_typed_and_defaults_filled() -> None:
    """Given values are typed by the declared type, the others take their defaults."""
    c = contract({"kind": "local", "command": ["/bin/true"]}, params=PARAMS)
    got = parse_params(c, ["size=+512", "gray=YES", "preset=large", "low=1"])
    assert got == {"size": 512, "low": 1.0, "gray": True, "preset": "large", "tag": "x"}
    assert isinstance(got["low"], float)


@pytest.mark.parametrize("given, line", [
    (["preset=small", "nope=1"], "--param nope: not a parameter of action t; declared: gray, low, preset, size, tag"),
    ([], "--param preset: required (it has no default); give --param preset=VALUE (one of small, medium, large)"),
    (["preset=small", "size=12a"], "--param size: '12a' is not a whole number (digits, e.g. size=42)"),
    (["preset=small", "size=5_000"], "--param size: '5_000' is not a whole number (digits, e.g. size=42)"),
    (["preset=small", "low=nan"], "--param low: 'nan' is not a finite number (e.g. low=0.5)"),
    (["preset=small", "low=1e999"], "--param low: '1e999' is not a finite number (e.g. low=0.5)"),
    (["preset=small", "gray=maybe"], "--param gray: 'maybe' is not a bool; give true/false, yes/no or 1/0"),
    (["preset=huge"], "--param preset: 'huge' is not allowed; one of small, medium, large"),
    (["preset=small", "size=8"], "--param size: 8 is outside the allowed range 16..4096"),
    (["preset=small", "low=1.5"], "--param low: 1.5 is outside the allowed range 0..1"),
    (["preset=small", "size=20", "size=30"], "--param size: given twice; give it once"),
    (["preset"], "--param 'preset': write NAME=VALUE (declared: gray, low, preset, size, tag)"),
    (["preset=small", "tag=a\0b"], "--param tag: the value holds a NUL character; give text without it"),
])
def test_each_bad_param_is_one_line(given: list[str], line: str) -> None:
    """Every bad `--param` is one line naming the parameter and what is allowed, exit 2."""
    c = contract({"kind": "local", "command": ["/bin/true"]}, params=PARAMS)
    with pytest.raises(ParamError) as e:
        parse_params(c, given)
    assert e.value.message == line
    assert e.value.exit_code == ExitCode.USAGE


def test_param_without_params_declared() -> None:
    """A contract without parameters says so."""
    with pytest.raises(ParamError, match=r"^--param x: not a parameter of action t; action t declares no parameters$"):
        parse_params(contract({"kind": "local", "command": ["/bin/true"]}), ["x=1"])


def test_canonical_is_one_text_per_value() -> None:
    """Two spellings of the same values give one canonical text (sorted keys, shortest floats)."""
    c = contract({"kind": "local", "command": ["/bin/true"]}, params=PARAMS)
    a = canonical(parse_params(c, ["preset=small", "low=0.10", "size=0256"]))
    b = canonical(parse_params(c, ["low=.1", "preset=small"]))
    assert a == b == '{"gray":false,"low":0.1,"preset":"small","size":256,"tag":"x"}'
    assert canonical(parse_params(c, ["preset=small", "low=-0"])) == canonical(parse_params(c, ["preset=small", "low=0"]))


# -- placeholders -----------------------------------------------------------------------------

def test_render_fills_every_placeholder() -> None:
    """{input_root} {output_root} {action_batch_id} {param:NAME} and {{ }} are filled."""
    r = Roots(Path("/z/in"), Path("/z/out"), "b-v1-1")
    text = "{input_root}|{output_root}|{action_batch_id}|{param:size}|{param:low}|{param:gray}|{{x}}"
    assert render(text, r, {"size": 3, "low": 0.25, "gray": True}) == "/z/in|/z/out|b-v1-1|3|0.25|true|{x}"


@pytest.mark.parametrize("text, params, line", [
    ("{nope}", {}, "cmd: unknown placeholder {nope}; known: {input_root}, {output_root}, {action_batch_id}, {parents_root}, {children_root}, "
                   "{param:NAME}"),
    ("{param:size}", {}, "cmd: {param:size} has no value; declare [params.size] in the contract and give --param"),
    ("a { b", {}, "cmd: an unmatched '{'; write {{ for the character itself"),
    ("a } b", {}, "cmd: an unmatched '}'; write }} for the character itself"),
    ("{param:tag}", {"tag": "a\0b"}, "cmd: the value of {param:tag} holds a NUL character; it cannot be passed on"),
])
def test_render_refuses(text: str, params: dict, line: str) -> None:
    """A placeholder nobody fills, an unmatched brace or a value holding a NUL is one line."""
    with pytest.raises(ExecError) as e:
        render(text, Roots(Path("/i"), Path("/o"), "b"), params, key="cmd")
    assert e.value.message == line


# -- commands ---------------------------------------------------------------------------------

@pytest.fixture
def clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`docker` and `kubectl` on PATH (looked up, never run: no daemon, no cluster here)."""
    for name in ("docker", "kubectl"):
        (tmp_path / name).write_text("#!/bin/sh\nexit 99\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return tmp_path


@needs_root
def test_docker_command_is_exact(clients: Path) -> None:
    """docker run: --rm, named by the run, --user of the worker, input read-only at /input, output
    at /output, --gpus all, env by -e; the roots render to the container paths."""
    c = contract({"kind": "docker", "image": "registry.example/canny:1.4", "gpus": True, "run_as": "1000",
                  "env": {"OUT": "{output_root}/x"},
                  "args": ["--in", "{input_root}", "--out", "{output_root}", "--low", "{param:low}"]},
                 params={"low": {"type": "float", "default": 0.1}})
    r = Roots(Path("/ssd/3C/b/flat/input"), Path("/ssd/3C/b/flat/output"), "canny-v1-0123456789ab")
    cmd = command_for(c, r, {"low": 0.5})
    assert cmd.argv == (str(clients / "docker"), "run", "--rm", "--name", "hoard-canny-v1-0123456789ab",
                        "--user", "1000:1000", "--network", "none", "-v", f"/ssd/3C/b/flat/input:{CONTAINER_INPUT}:ro",
                        "-v", f"/ssd/3C/b/flat/output:{CONTAINER_OUTPUT}",
                        "--security-opt", "no-new-privileges", "--cap-drop", "ALL", "--gpus", "all",
                        "-e", "OUT=/output/x", "registry.example/canny:1.4",
                        "--in", "/input", "--out", "/output", "--low", "0.5")
    assert cmd.user is None and cmd.worker.uid == 1000  # the client runs as hoard; the container as 1000
    assert cmd.stop is not None and cmd.stop.argv == (str(clients / "docker"), "rm", "--force",
                                                      "hoard-canny-v1-0123456789ab")
    assert set(cmd.env) == {"PATH", "LANG", "HOME"}


def test_docker_refuses_a_root_it_cannot_mount(clients: Path) -> None:
    """A root whose path holds ':' cannot be given to `docker run -v`: one line naming it."""
    c = contract({"kind": "docker", "image": "x"})
    with pytest.raises(ExecError, match=r"^output_root: /o:x cannot be mounted into a container"):
        command_for(c, Roots(Path("/i"), Path("/o:x"), "b"), {})


def test_docker_network_is_none_unless_the_contract_names_one(clients: Path) -> None:
    """`--network none` by default; a named network is passed on; "host" is refused without allow_root."""
    r = Roots(Path("/ssd/in"), Path("/ssd/out"), "b")
    argv = command_for(contract({"kind": "docker", "image": "x"}), r, {}).argv
    assert argv[argv.index("--network") + 1] == "none"
    argv = command_for(contract({"kind": "docker", "image": "x", "network": "lab-net"}), r, {}).argv
    assert argv[argv.index("--network") + 1] == "lab-net"
    with pytest.raises(ContractError, match=r"^t.toml: run_spec.network: 'host' shares this host's network"):
        contract({"kind": "docker", "image": "x", "network": "host"})
    assert contract({"kind": "docker", "image": "x", "network": "host", "run_as": "root",
                     "allow_root": True}).run_spec.network == "host"  # type: ignore[union-attr]


def test_docker_worker_cannot_gain_root_in_its_container(clients: Path) -> None:
    """Without allow_root the container gets no capabilities and no new privileges: a setuid
    program in the image cannot make the worker root (before: docker's default capabilities,
    CAP_MKNOD and CAP_CHOWN among them, were there for a setuid binary to take)."""
    r = Roots(Path("/ssd/in"), Path("/ssd/out"), "b")
    argv = list(command_for(contract({"kind": "docker", "image": "x", "run_as": "1000"}), r, {}).argv)
    before_image = argv[:argv.index("x")]
    assert before_image[before_image.index("--security-opt") + 1] == "no-new-privileges"
    assert before_image[before_image.index("--cap-drop") + 1] == "ALL"
    argv = list(command_for(contract({"kind": "docker", "image": "x", "run_as": "root", "allow_root": True}),
                            r, {}).argv)
    assert "--cap-drop" not in argv and "no-new-privileges" not in argv  # allow_root: the contract said so


def test_kubectl_applies_then_waits(clients: Path) -> None:
    """kubectl: the rendered manifest is applied from stdin, then the Job waited for (as long as
    timeout_s), and deleted on a stop; a value that could change the YAML is refused."""
    template = "kind: Job\nmetadata: {{name: w-{action_batch_id}}}\nargs: [{input_root}, '{param:tag}']\n"
    c = contract({"kind": "kubectl", "template": template, "namespace": "work", "timeout_s": 600},
                 params={"tag": {"type": "str"}})
    r = Roots(Path("/ssd/in"), Path("/ssd/out"), "k-v1-ab")
    cmd = command_for(c, r, {"tag": "v2"})
    k = str(clients / "kubectl")
    manifest = b"kind: Job\nmetadata: {name: w-k-v1-ab}\nargs: [/ssd/in, 'v2']\n"
    assert (cmd.argv, cmd.stdin) == ((k, "--namespace", "work", "apply", "-f", "-"), manifest)
    assert cmd.then is not None and cmd.then.stdin == manifest
    assert cmd.then.argv == (k, "--namespace", "work", "wait", "--for=condition=complete", "--timeout=600s", "-f", "-")
    assert cmd.stop is not None and cmd.stop.argv == (k, "--namespace", "work", "delete", "--ignore-not-found",
                                                      "--wait=false", "-f", "-")
    with pytest.raises(ExecError, match=r"^run_spec.template: the value of \{param:tag\} \('x\\x0aprivileged: true'\) "
                                        r"may hold only letters"):
        command_for(c, r, {"tag": "x\nprivileged: true"})


def test_missing_command_names_it_and_the_key(clients: Path) -> None:
    """A command found neither beside the venv's python nor on PATH is one line naming it and the key."""
    with pytest.raises(ExecError) as e:
        command_for(contract({"kind": "local", "command": ["no-such-worker-xyz", "{input_root}"]}),
                    Roots(Path("/i"), Path("/o"), "b"), {})
    assert e.value.message.startswith("run_spec.command[0]: command 'no-such-worker-xyz' not found in ")
    with pytest.raises(ExecError, match=r"^run_spec.command\[0\]: command /nowhere/w does not exist"):
        command_for(contract({"kind": "local", "command": ["/nowhere/w"]}), Roots(Path("/i"), Path("/o"), "b"), {})
    with pytest.raises(ExecError, match=r"^run_spec.command\[0\]: 'bin/w' is a relative path"):
        command_for(contract({"kind": "local", "command": ["bin/w"]}), Roots(Path("/i"), Path("/o"), "b"), {})


def test_who_the_worker_is() -> None:
    """As root: run_as, else actions.worker_user, never root without allow_root; not root: hoard's
    own user, and a run_as naming another is one line."""
    assert worker_identity(None, False, "nobody", euid=0).name == "nobody"
    assert worker_identity("daemon", False, "nobody", euid=0).name == "daemon"
    assert worker_identity("root", True, "nobody", euid=0).uid == 0
    with pytest.raises(ExecError, match=r"^actions.worker_user: the worker would run as root \(root\)"):
        worker_identity(None, False, "root", euid=0)
    with pytest.raises(ExecError, match=r"^run_spec.run_as: no user 'nosuchuser' on this host; create it"):
        worker_identity("nosuchuser", False, "nobody", euid=0)
    assert worker_identity(None, False, "nobody", euid=65534).uid == 65534
    with pytest.raises(ExecError, match=r"^run_spec.run_as: cannot switch to user daemon: hoard runs as nobody"):
        worker_identity("daemon", False, "nobody", euid=65534)


def test_done_marker(roots: Roots) -> None:
    """The marker counts only as a regular file in the output root: absent, a link, a directory: no."""
    c = contract({"kind": "external", "timeout_s": 60, "done_marker": "FINISHED"})
    assert not done_marker_present(c, roots)  # not even an output root yet
    roots.output_root.mkdir()
    assert not done_marker_present(c, roots)
    (roots.input_root / "real").write_text("")
    (roots.output_root / "FINISHED").symlink_to(roots.input_root / "real")
    assert not done_marker_present(c, roots)
    (roots.output_root / "FINISHED").unlink()
    (roots.output_root / "FINISHED").mkdir()
    assert not done_marker_present(c, roots)
    (roots.output_root / "FINISHED").rmdir()
    (roots.output_root / "FINISHED").write_text("")
    assert done_marker_present(c, roots)


# -- running ----------------------------------------------------------------------------------

@pytest.mark.services
def test_worker_exits_zero_and_non_zero(roots: Roots) -> None:
    """Its exit status is the outcome's; stdout and stderr are in the log; the env is clean plus the contract's."""
    os.environ["HOARD_SECRET_OF_THE_RUNNER"] = "leak"
    try:
        ok = run(sh("echo out; echo err >&2; env > {output_root}/env; ls {input_root}",
                    env={"MODE": "fast-{param:size}"}, params={"size": {"type": "int"}}), roots, {"size": 3})
    finally:
        del os.environ["HOARD_SECRET_OF_THE_RUNNER"]
    assert (ok.reason, ok.exit_code) == ("exited", 0)
    log = (roots.output_root.parent / "worker.log").read_text()
    assert "out\nerr\na.jpg\n" in log
    env = dict(line.split("=", 1) for line in (roots.output_root / "env").read_text().splitlines())
    assert env["MODE"] == "fast-3" and "HOARD_SECRET_OF_THE_RUNNER" not in env
    assert {"PATH", "LANG", "HOME"} <= set(env)
    bad = run(sh("exit 7"), roots)
    assert (bad.reason, bad.exit_code) == ("exited", 7)


@pytest.mark.services
@needs_root
def test_worker_runs_as_the_worker_user(roots: Roots) -> None:
    """As root, the worker runs as actions.worker_user (nobody) and owns the output root."""
    run(sh("id -u > {output_root}/uid; id -G > {output_root}/groups"), roots)
    assert (roots.output_root / "uid").read_text().strip() == "65534"
    assert (roots.output_root / "groups").read_text().split() == ["65534"]  # root's groups dropped
    assert os.stat(roots.output_root).st_uid == 65534


@pytest.mark.services
@needs_root
def test_root_only_with_allow_root(roots: Roots) -> None:
    """A worker user that is root is refused before anything starts; allow_root lets it be root."""
    with pytest.raises(ExecError, match=r"^actions.worker_user: the worker would run as root"):
        run(sh("touch {output_root}/ran"), roots, worker_user="root")
    assert not (roots.output_root / "ran").exists()
    run(sh("id -u > {output_root}/uid", run_as="root", allow_root=True), roots)
    assert (roots.output_root / "uid").read_text().strip() == "0"


@pytest.mark.services
@needs_root
def test_worker_user_must_reach_the_roots(roots: Roots) -> None:
    """An input root the worker user cannot read is one line naming it, before the worker starts."""
    roots.input_root.chmod(0o700)
    with pytest.raises(ExecError, match=r"^input_root: the worker user nobody cannot reach .*/input \(mode drwx------"):
        run(sh("touch {output_root}/ran"), roots)
    assert not (roots.output_root / "ran").exists()


@pytest.mark.services
@needs_root
def test_the_worker_user_is_let_into_its_own_run_only(tmp_path: Path) -> None:
    """As root, zone 3C (1770) and a staged run (0750 directories, 0640 files, as hoard makes
    them) are closed to the worker user: given the run's directory, run_worker lets that user
    pass 3C and read its own run's input — by ACL entries for it alone, the modes unchanged —
    while it still cannot list 3C nor enter another run (before: refused at 3C, one line)."""
    top = Path(tempfile.mkdtemp(prefix="hoard-exec-", dir="/tmp"))
    try:
        top.chmod(0o755)
        zone = top / "3C"
        zone.mkdir(mode=0o1770)
        zone.chmod(0o1770)
        run_dir = zone / "t-v1-0123456789ab"
        for d in (run_dir / "flat" / "input" / "sub", zone / "other-run" / "flat" / "input"):
            d.mkdir(parents=True, mode=0o750)
        for d in (run_dir, run_dir / "flat", zone / "other-run", zone / "other-run" / "flat"):
            d.chmod(0o750)  # as staging makes them (hoard's umask 027), not mkdir's parents
        for f in (run_dir / "flat" / "input" / "sub" / "a.jpg", zone / "other-run" / "flat" / "input" / "b.jpg"):
            f.write_bytes(b"jpeg")
            f.chmod(0o640)
        modes = {p: os.stat(p).st_mode for p in (zone, run_dir, run_dir / "flat" / "input" / "sub" / "a.jpg")}
        rts = Roots(run_dir / "flat" / "input", run_dir / "flat" / "output", run_dir.name)
        with pytest.raises(ExecError, match=r"^output_root: the worker user nobody cannot reach .*/3C \(mode"):
            run(sh("true"), rts)  # not told it is a run's directory: nothing granted
        other = zone / "other-run" / "flat" / "input" / "b.jpg"
        script = ("cat {input_root}/sub/a.jpg > {output_root}/copy; ls {input_root}/.. > /dev/null && echo ok > "
                  "{output_root}/listed; ls " + str(zone) + " > {output_root}/zone 2>&1; cat " + str(other)
                  + " > {output_root}/other 2>&1; true")
        out = run(sh(script), rts, run_dir=run_dir)
        assert out.reason == "exited" and out.exit_code == 0
        assert (rts.output_root / "copy").read_bytes() == b"jpeg" and (rts.output_root / "listed").exists()
        assert "Permission denied" in (rts.output_root / "zone").read_text()
        assert "Permission denied" in (rts.output_root / "other").read_text()
        assert {p: os.stat(p).st_mode for p in modes} == modes
        # the next run's worker is the same user: once this run's worker has ended, this run's
        # tree is closed to it (it read run A's input and wrote into A's output before)
        run_b = zone / "u-v1-ba9876543210"
        (run_b / "flat" / "input").mkdir(parents=True, mode=0o750)
        for d in (run_b, run_b / "flat"):
            d.chmod(0o750)
        rts_b = Roots(run_b / "flat" / "input", run_b / "flat" / "output", run_b.name)
        steal = (f"cat {rts.input_root}/sub/a.jpg > {{output_root}}/stolen 2>&1; "
                 f"echo planted > {rts.output_root}/planted; true")
        assert run(sh(steal), rts_b, run_dir=run_b).exit_code == 0
        assert "Permission denied" in (rts_b.output_root / "stolen").read_text()
        assert not (rts.output_root / "planted").exists()
        assert {p: os.stat(p).st_mode for p in modes} == modes
    finally:
        shutil.rmtree(top)


@pytest.mark.services
def test_missing_command_starts_nothing(roots: Roots) -> None:
    """run_worker with a command that is not there: one line, exit 2."""
    with pytest.raises(ExecError) as e:
        run(contract({"kind": "local", "command": ["no-such-worker-xyz"]}), roots)
    assert "no-such-worker-xyz" in e.value.message and e.value.exit_code == ExitCode.USAGE


@pytest.mark.services
def test_heartbeat_is_called_while_it_runs(roots: Roots) -> None:
    """heartbeat() keeps being called while the worker runs: the worker waits for a file only
    the third heartbeat writes."""
    beats: list[int] = []

    def beat() -> None:
        beats.append(1)
        if len(beats) == 3:
            (roots.output_root / "go").write_text("")

    out = run(sh("while [ ! -e go ]; do sleep 0.05; done"), roots, heartbeat=beat, poll_s=0.05)
    assert (out.reason, out.exit_code) == ("exited", 0) and len(beats) >= 3


@pytest.mark.services
def test_timeout_ends_the_worker(roots: Roots) -> None:
    """A worker that never ends is ended at timeout_s: outcome timeout, nothing left running."""
    out = run(sh("echo $$ > {output_root}/pid; exec sleep 1000", timeout_s=1), roots)
    assert (out.reason, out.exit_code) == ("timeout", None)
    assert gone(int((roots.output_root / "pid").read_text()))


@pytest.mark.services
def test_cancel_kills_a_term_ignoring_grandchild(roots: Roots) -> None:
    """Cancelled: the worker and a grandchild that ignore TERM are KILLed after the grace; no
    process and no zombie is left."""
    script = ("trap '' TERM; (echo $$ > /dev/null; exec sh -c 'echo $$ > {output_root}/gc; exec sleep 1000') & "
              "echo $$ > {output_root}/pid; while :; do sleep 0.05; done")
    stop = lambda: (roots.output_root / "gc").exists() and (roots.output_root / "pid").exists()  # noqa: E731
    out = run(sh(script), roots, should_stop=stop, poll_s=0.05)
    assert (out.reason, out.exit_code) == ("cancelled", None)
    for name in ("pid", "gc"):
        assert gone(int((roots.output_root / name).read_text())), name


@pytest.mark.services
def test_nothing_is_left_after_a_normal_exit(roots: Roots) -> None:
    """A worker that exits leaving a TERM-ignoring process behind: it is ended too (an orphan is
    re-parented to us and reaped, not left to pid 1)."""
    out = run(sh("trap '' TERM; sh -c 'echo $$ > {output_root}/gc; exec sleep 1000' & "
                 "while [ ! -s gc ]; do sleep 0.05; done; exit 0"), roots)
    assert (out.reason, out.exit_code) == ("exited", 0)
    assert gone(int((roots.output_root / "gc").read_text()))


@pytest.mark.services
def test_log_is_capped_to_its_tail(roots: Roots) -> None:
    """A chatty worker's log keeps its last bytes, with a line saying how much was dropped."""
    cap = 64 << 10
    out = run(sh("i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"), roots, log_cap=cap)
    assert out.exit_code == 0
    log = roots.output_root.parent / "worker.log"
    text = log.read_text()
    assert log.stat().st_size <= cap
    assert "earlier bytes of this log were dropped" in text
    assert "\nline-19999\n" in text and "\nline-0\n" not in text


@pytest.mark.services
def test_gate_hook(roots: Roots) -> None:
    """gate_ready: exit 0 → ready; non-zero → not; a hook that hangs is ended → not ready, nothing left."""
    def gate(script: str) -> Contract:
        return contract({"kind": "local", "command": ["/bin/true"]},
                        gate={"hook": ["/bin/sh", "-c", script]})
    roots.output_root.mkdir()
    roots.output_root.chmod(0o777)
    log = roots.output_root.parent / "gate.log"
    assert gate_ready(gate("echo waking {action_batch_id}"), roots, {}, log_path=log)
    assert "waking t-v1-0123456789ab" in log.read_text()
    assert not gate_ready(gate("exit 1"), roots, {}, log_path=log)
    hang = gate("trap '' TERM; echo $$ > " + str(roots.output_root / "hook") + "; exec sleep 1000")
    assert not gate_ready(hang, roots, {}, log_path=log, timeout_s=0.5, grace_s=0.5)
    assert gone(int((roots.output_root / "hook").read_text()))
    assert stat.S_ISREG(os.stat(log).st_mode)


@pytest.mark.services
def test_a_daemon_in_its_own_session_is_ended_too(roots: Roots) -> None:
    """A worker that starts a process in a new session (setsid) and exits: the orphan comes back
    to us as subreaper and is ended and reaped."""
    out = run(sh("setsid sh -c 'trap \"\" TERM; echo $$ > {output_root}/daemon; exec sleep 1000' & "
                 "while [ ! -s daemon ]; do sleep 0.05; done; exit 0"), roots)
    assert (out.reason, out.exit_code) == ("exited", 0)
    assert gone(int((roots.output_root / "daemon").read_text()))


@pytest.mark.services
def test_a_failing_heartbeat_ends_the_worker(roots: Roots) -> None:
    """When heartbeat() raises (the state file cannot be written, Ctrl-C), the error goes on and
    the worker does not outlive its watcher."""
    def beat() -> None:
        if (roots.output_root / "pid").exists():
            raise OSError("state file: no space left")

    with pytest.raises(OSError, match="no space left"):
        run(sh("echo $$ > {output_root}/pid.tmp; mv {output_root}/pid.tmp {output_root}/pid; exec sleep 1000"),
            roots, heartbeat=beat, poll_s=0.05)
    assert gone(int((roots.output_root / "pid").read_text()))
