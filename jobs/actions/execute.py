"""Starting, watching and stopping an action's worker process (docs/actions.md, "Running a worker").

`render` fills a contract string's placeholders; `command_for` turns a run spec into the argv,
environment and user of the process to start (local: the command itself; docker: `docker run`
of the image; kubectl: `kubectl apply` of the Job, then `kubectl wait` for it); `run_worker`
runs it, `gate_ready` runs a gate hook once, `done_marker_present` looks for an external
worker's `_DONE`.

Process rules (one place, `_run`): no shell; stdin is /dev/null (or the kubectl manifest); stdout
and stderr go to the run's log, kept to its last `LOG_CAP` bytes; a clean environment (PATH,
LANG, HOME of the user, then the contract's `env`); the process starts its own session, and
everything in that session — and any descendant that left it and was handed to us as their
subreaper — is ended with it: TERM, then KILL after `TERM_GRACE_S`, on a timeout, a cancel, and
also after a normal exit (a worker leaves nothing running behind it). While a worker runs,
this process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): the orphans of the worker's
processes are re-parented to it rather than to init, so they are found, killed and reaped — no
zombie and no orphaned process group is left, even where pid 1 does not reap. A descendant
that starts its own session (a daemon) while its parent lives on is found once that parent is
ended; one that escapes both (a process another service starts for it) is not — run such
workers in a container.

Who the worker is: when hoard runs as root, `run_spec.run_as` or else `actions.worker_user`
(default "nobody"); root only with `allow_root = true`. When hoard is not root, the worker is
hoard's own user, and a `run_as` naming another user is refused. The output root is made the
worker's (chown, when hoard is root): it is the one directory the worker writes; the input root
and the directories above both roots must let that user through (checked before the start).
One exception, for the embedded default cloned under a private home (/root, mode 0700): a
built-in worker that the worker user cannot reach runs as the setup's owner (`as_setup_owner`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from hoardfs.base import landlock
from hoardfs.base.confine import REFUSED
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display
from hoardfs.jobs.actions.contract import _PART, PLACEHOLDERS, Contract, RunDocker, RunExternal, RunKubectl, RunLocal

#: a worker's log is kept to its last this many bytes (older output is dropped, with a line saying so)
LOG_CAP = 8 << 20
#: after TERM, how long a worker's processes have before KILL
TERM_GRACE_S = 10.0
#: how long a stop command (docker rm -f, kubectl delete) may take after a timeout or a cancel
STOP_TIMEOUT_S = 60.0
#: where the roots are inside a docker container ({input_root} and {output_root} render to these)
CONTAINER_INPUT = "/input"
CONTAINER_OUTPUT = "/output"
CONTAINER_CONTEXT = {"parents_root": "/parents", "children_root": "/children"}
#: environment variables the docker / kubectl client keeps from hoard's environment
CLIENT_ENV = {"docker": ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"),
              "kubectl": ("KUBECONFIG",)}
#: what a value substituted into a kubectl manifest may hold (anything else could change its YAML)
_YAML_SAFE = re.compile(r"[A-Za-z0-9._/:=@+-]*")
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
_PR_SET_PDEATHSIG = 1


class ExecError(HoardError):
    """A worker that cannot be started as the contract says: one line naming the contract key
    (or config key) and the next step (exit 2)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Roots:
    input_root: Path      # the staged input tree (3C/<run>/<layout>/input)
    output_root: Path     # where the worker writes (3C/<run>/<layout>/output)
    batch_id: str         # the run id (= action_batch.batch_id)
    parents_root: Path | None = None   # the inputs' parents (3C/<run>/<layout>/parents), if staged
    children_root: Path | None = None  # their children (…/children), if staged

    def context(self) -> dict[str, Path]:
        """The staged roots beside the input root, by placeholder name."""
        return {k: p for k, p in (("parents_root", self.parents_root), ("children_root", self.children_root))
                if p is not None}


@dataclass(frozen=True)
class Identity:
    """A user a process runs as."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Command:
    """One process to start (and what follows it)."""

    argv: tuple[str, ...]
    #: its whole environment
    env: Mapping[str, str]
    #: the contract (or config) key the command comes from, for error lines
    key: str
    #: the user the process runs as; None: hoard's own (the docker and kubectl clients)
    user: Identity | None
    #: the user the worker's code runs as: the output root is made theirs (for docker, `--user`)
    worker: Identity
    #: fed to its stdin (the kubectl manifest); None: /dev/null
    stdin: bytes | None = None
    #: run next when this one exits 0 (kubectl: the wait for the Job)
    then: Command | None = None
    #: run after a timeout or a cancel, to stop what the client started (docker rm -f, kubectl delete)
    stop: Command | None = None
    #: started without any capability (`_no_caps`): a built-in worker that runs as root's uid
    #: on an embedded default (`as_setup_owner`)
    no_caps: bool = False


@dataclass
class Outcome:
    #: exited: the process ended by itself (exit_code: its status; negative = killed by that signal);
    #: timeout: it ran past timeout_s; cancelled: should_stop() said so (both: ended by us)
    reason: Literal["exited", "timeout", "cancelled"]
    exit_code: int | None
    seconds: float
    #: a worker that exited non-zero: the last line it wrote (its error, or the launcher's refusal)
    last_line: str = ""
    #: the worker ran confined (`confined_argv`)
    confined: bool = False


# -- placeholders -----------------------------------------------------------------------------

def value_text(v: object) -> str:
    """A parameter's value as it goes into a command: bool → true/false, float → shortest form."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def render(text: str, roots: Roots, params: Mapping[str, object], *, key: str = "text",
           safe: re.Pattern[str] | None = None) -> str:
    """`text` with {input_root} {output_root} {action_batch_id} {param:NAME} filled and {{ }}
    turned into braces (contract._PART's tokens). ExecError naming `key` for an unknown
    placeholder, an undeclared or unset parameter, an unmatched brace, or a value holding a NUL
    (or, with `safe`, a value that does not match it whole)."""
    fixed = {"input_root": str(roots.input_root), "output_root": str(roots.output_root),
             "action_batch_id": roots.batch_id, **{k: str(p) for k, p in roots.context().items()}}
    out: list[str] = []
    pos = 0
    for m in _PART.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        part, name = m.group(0), m.group(1)
        if part in ("{{", "}}"):
            out.append(part[0])
            continue
        if name is None:
            raise ExecError(f"{key}: an unmatched {part!r}; write {part * 2} for the character itself")
        if name.startswith("param:"):
            pname = name.removeprefix("param:")
            if pname not in params:
                raise ExecError(f"{key}: {{param:{display(pname)}}} has no value; declare [params.{display(pname)}] "
                                "in the contract and give --param")
            value = value_text(params[pname])
        elif name in fixed:
            value = fixed[name]
        else:
            raise ExecError(f"{key}: unknown placeholder {{{display(name)}}}; known: "
                            + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ", {param:NAME}")
        if "\0" in value:
            raise ExecError(f"{key}: the value of {{{display(name)}}} holds a NUL character; it cannot be passed on")
        if safe is not None and not safe.fullmatch(value):
            raise ExecError(f"{key}: the value of {{{display(name)}}} ('{display(value)}') may hold only letters, "
                            "digits and ._/:=@+- here (it could change the manifest's YAML); use an int or a "
                            "choice parameter")
        out.append(value)
    out.append(text[pos:])
    result = "".join(out)
    if "\0" in result:
        raise ExecError(f"{key}: holds a NUL character; it cannot be passed on")
    return result


# -- who runs it ------------------------------------------------------------------------------

def _lookup(user: str, key: str) -> Identity:
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():  # a uid without a passwd entry (a container's user): its own group
            return Identity(user, int(user), int(user), "/")
        raise ExecError(f"{key}: no user '{display(user)}' on this host; create it (useradd --system "
                        f"{display(user)}) or name another") from None
    return Identity(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/")


def worker_identity(run_as: str | None, allow_root: bool, worker_user: str, *, euid: int | None = None) -> Identity:
    """The user a worker runs as (the module docstring says the rules); ExecError when it
    cannot be that user."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        me = _lookup(str(euid), "hoard's user")
        if run_as is not None and _lookup(run_as, "run_spec.run_as").uid != euid:
            raise ExecError(f"run_spec.run_as: cannot switch to user {display(run_as)}: hoard runs as {me.name} "
                            "(only root starts a worker as another user); remove run_as or run hoard's worker "
                            "as root")
        return me
    ident = _lookup(run_as, "run_spec.run_as") if run_as is not None else _lookup(worker_user, "actions.worker_user")
    if ident.uid == 0 and not allow_root:
        key = "run_spec.run_as" if run_as is not None else "actions.worker_user"
        raise ExecError(f"{key}: the worker would run as root ({ident.name}); name an unprivileged user "
                        "(actions.worker_user in hoard.toml, or run_as), or set allow_root = true in the contract")
    return ident


#: the built-in workers' program: the console script beside hoard's Python
BUILTIN = "hoard-builtin"


def as_setup_owner(cmd: Command, c: Contract, setup: Path | None, above: Path | None = None) -> Command:
    """`cmd` as the embedded setup's owner when the worker user cannot reach it; else `cmd`.

    `setup` is the directory of an embedded default's hoard.toml (None: not an embedded default).
    When hoard runs as root there and the command is a built-in worker (`hoard-builtin` of hoard's
    own venv, no `run_as`) that `actions.worker_user` cannot reach — the program, or `above` (the
    directory over zone 3C), lies under a home closed to others such as /root (0700) — the worker
    runs as the owner of `setup` instead: the user whose clone it is, who reaches it already, so
    no directory is opened to anyone. When that owner is root the worker starts with no
    capability at all (`_no_caps`): root's uid owns the clone's files, and nothing else. Either
    way the built-in confines itself as always (Landlock to its roots and Python's files,
    seccomp: hoardfs.base.landlock). A team's own local worker started confined (through the
    launcher, hoard's Python: `confined_argv`) is moved alike, for the same reason — the worker
    user cannot start hoard's Python —, and stays as confined. Any other worker (`confine =
    false`, `run_as`, a container) keeps the worker user's rules."""
    rs = c.run_spec
    ours = cmd.argv[0] == str(_venv_bin() / BUILTIN) or (cmd.argv[0] == sys.executable
                                                          and cmd.argv[2:4] == ("-m", LAUNCHER))
    if (setup is None or os.geteuid() != 0 or not isinstance(rs, RunLocal) or rs.run_as is not None
            or not ours or cmd.user is None):
        return cmd
    try:
        _reachable(Path(cmd.argv[0]), cmd.worker, 5, "run_spec.command[0]")
        _reachable(Path(sys.executable), cmd.worker, 5, "hoard's Python")
        if above is not None:
            _reachable(above, cmd.worker, 1, "zone 3C's directory")
        return cmd  # the worker user reaches all of it: it stays the worker
    except ExecError:
        pass
    owner = _lookup(str(os.stat(setup).st_uid), "the embedded setup's owner")
    env = {**cmd.env, "HOME": owner.home}
    return replace(cmd, env=env, user=owner, worker=owner, no_caps=owner.uid == 0)


# -- the command ------------------------------------------------------------------------------

def _venv_bin() -> Path:
    return Path(sys.executable).parent


def which(name: str, key: str) -> str:
    """The program `name` runs: a path as given (absolute), else the first executable `name`
    in the directory of sys.executable (the venv's bin: the built-in workers) then PATH."""
    if "/" in name:
        p = Path(name)
        if not p.is_absolute():
            raise ExecError(f"{key}: '{display(name)}' is a relative path; give an absolute path or a bare "
                            "command name")
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ExecError(f"{key}: command {display(name)} " + ("is not executable (chmod +x)" if p.is_file()
                            else "does not exist") + "; install it or fix the path")
        return name
    dirs = [str(_venv_bin()), *os.environ.get("PATH", os.defpath).split(os.pathsep)]
    for d in dirs:
        cand = Path(d or ".") / name
        if d and cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise ExecError(f"{key}: command '{display(name)}' not found in {_venv_bin()} or PATH; install it or give "
                    "its absolute path")


def _env(ident: Identity, extra: Mapping[str, str], keep: tuple[str, ...] = ()) -> dict[str, str]:
    env = {"PATH": f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
           "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": ident.home}
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    env.update(extra)
    return env


def _mount_path(p: Path, key: str) -> str:
    s = str(p)
    if not p.is_absolute() or ":" in s or "," in s:
        raise ExecError(f"{key}: {display(s)} cannot be mounted into a container (it must be absolute, without "
                        "':' or ','); stage into a plainer 3C path")
    return s


def command_for(c: Contract, roots: Roots, params: Mapping[str, object], *, worker_user: str = "nobody") -> Command:
    """The process a run spec starts (see the module docstring; docs/actions.md says how the
    roots appear to each kind). ExecError (one line) when it cannot be built."""
    rs = c.run_spec
    if not isinstance(rs, (RunLocal, RunDocker, RunKubectl)):
        raise ExecError(f"run_spec.kind: '{rs.kind if rs is not None else 'none'}' starts no process here "
                        "(local, docker and kubectl do)")
    ident = worker_identity(rs.run_as, rs.allow_root, worker_user)
    if isinstance(rs, RunLocal):
        argv = [render(a, roots, params, key=f"run_spec.command[{i}]") for i, a in enumerate(rs.command)]
        argv[0] = which(argv[0], "run_spec.command[0]")
        env = {k: render(v, roots, params, key=f"run_spec.env.{k}") for k, v in rs.env.items()}
        if argv[0] == str(_venv_bin() / BUILTIN):  # the built-ins confine themselves (hoard-builtin)
            return Command(tuple(argv), _env(ident, env), "run_spec.command[0]", ident, ident)
        env = {"TMPDIR": str(worker_tmp(roots)), **env}
        full = _env(ident, env)
        if rs.confine:
            argv = confined_argv(rs, argv, roots, full.get("PATH", ""))
        return Command(tuple(argv), full, "run_spec.command[0]", ident, ident)
    me = _lookup(str(os.geteuid()), "hoard's user")
    if isinstance(rs, RunDocker):
        inside = Roots(Path(CONTAINER_INPUT), Path(CONTAINER_OUTPUT), roots.batch_id,
                       **{k: Path(CONTAINER_CONTEXT[k]) for k in roots.context()})
        docker = which("docker", "run_spec.kind (docker)")
        name = "hoard-" + re.sub(r"[^A-Za-z0-9_.-]", "-", roots.batch_id)[:100]
        argv = [docker, "run", "--rm", "--name", name, "--user", f"{ident.uid}:{ident.gid}", "--network", rs.network,
                "-v", f"{_mount_path(roots.input_root, 'input_root')}:{CONTAINER_INPUT}:ro",
                "-v", f"{_mount_path(roots.output_root, 'output_root')}:{CONTAINER_OUTPUT}"]
        for k, p in roots.context().items():
            argv += ["-v", f"{_mount_path(p, k)}:{CONTAINER_CONTEXT[k]}:ro"]
        if not rs.allow_root:  # a setuid program in the image would otherwise make the worker root in it
            argv += ["--security-opt", "no-new-privileges", "--cap-drop", "ALL"]
        if rs.gpus:
            argv += ["--gpus", "all"]
        for k, v in sorted(rs.env.items()):
            argv += ["-e", f"{k}={render(v, inside, params, key=f'run_spec.env.{k}')}"]
        argv.append(rs.image)
        argv += [render(a, inside, params, key=f"run_spec.args[{i}]") for i, a in enumerate(rs.args)]
        client = _env(me, {}, CLIENT_ENV["docker"])
        stop = Command((docker, "rm", "--force", name), client, "run_spec.kind (docker)", None, ident)
        return Command(tuple(argv), client, "run_spec.kind (docker)", None, ident, stop=stop)
    manifest = render(rs.template, roots, params, key="run_spec.template", safe=_YAML_SAFE).encode()
    kubectl = which("kubectl", "run_spec.kind (kubectl)")
    base = [kubectl] + (["--namespace", rs.namespace] if rs.namespace else [])
    env = _env(me, {k: render(v, roots, params, key=f"run_spec.env.{k}") for k, v in rs.env.items()},
               CLIENT_ENV["kubectl"])
    key = "run_spec.kind (kubectl)"
    wait = Command((*base, "wait", "--for=condition=complete", f"--timeout={rs.timeout_s}s", "-f", "-"),
                   env, key, None, ident, stdin=manifest)
    stop = Command((*base, "delete", "--ignore-not-found", "--wait=false", "-f", "-"), env, key, None, ident,
                   stdin=manifest)
    return Command((*base, "apply", "-f", "-"), env, key, None, ident, stdin=manifest, then=wait, stop=stop)


# -- confinement of a team's own worker ---------------------------------------------------------

#: the launcher that confines a worker and then runs it (hoardfs.base.confine)
LAUNCHER = "hoardfs.base.confine"
#: the system's programs and libraries: read and run by every confined worker
SYSTEM_PROGRAMS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: what else of the system a confined worker reads: the loader's and the C library's files
#: (users, time zone, name service, certificates), the processors' description, random bytes
SYSTEM_READS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
                "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf", "/etc/resolv.conf", "/etc/gai.conf",
                "/etc/services", "/etc/protocols", "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/mime.types",
                "/etc/magic", "/etc/locale.alias", "/etc/fonts", "/sys/devices/system/cpu", "/sys/devices/system/node",
                "/proc/cpuinfo", "/proc/meminfo", "/dev/urandom", "/dev/random", "/dev/zero")
#: where POSIX shared memory and semaphores live: written by a worker with `shared_memory = true`
SHARED_MEMORY = "/dev/shm"
#: directories too widely shared to let a worker read whole because its program lies there: only
#: the program's file is read there
_SHARED_DIRS = ("/", "/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/opt", "/srv", "/var")


def worker_tmp(roots: Roots) -> Path:
    """The worker's own temporary directory (its TMPDIR): `tmp` beside its output root, made
    empty and the worker's before it starts, removed after (`run_worker`)."""
    return roots.output_root.parent / "tmp"


def _under_system(p: str) -> bool:
    return any(p == d or p.startswith(d + "/") for d in SYSTEM_PROGRAMS)


def _shebang(path: str, search: str) -> list[str]:
    """The interpreter a script names on its `#!` line (and, for `/usr/bin/env NAME`, NAME found
    on `search`, the worker's PATH); [] for a program that is not a script."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return []
    if not head.startswith(b"#!"):
        return []
    words = head[2:].split(b"\n")[0].decode("utf-8", "replace").split()
    if not words:
        return []
    out = [words[0]]
    if Path(words[0]).name == "env":
        name = next((w for w in words[1:] if not w.startswith("-")), None)
        if name is not None:
            for d in search.split(os.pathsep):
                cand = os.path.join(d, name)
                if d and os.path.isfile(cand) and os.access(cand, os.X_OK):
                    out.append(cand)
                    break
    return out


def _prefix(program: str) -> str | None:
    """The installation a program belongs to, where it is not the system's: the directory above
    its `bin/` when that holds a virtual environment (pyvenv.cfg) or a `lib/` (Python's, conda's)."""
    d = Path(program).parent
    if d.name != "bin" or str(d.parent) in _SHARED_DIRS:
        return None
    if (d.parent / "pyvenv.cfg").is_file() or (d.parent / "lib").is_dir():
        return str(d.parent)
    return None


def _home_of(path: str) -> str:
    """What a worker reads for a file it is given: the file's directory (a script and its own
    modules), or the file alone where that directory is a shared one (/tmp, /home…)."""
    d = os.path.dirname(path)
    return path if d in _SHARED_DIRS else d


def confined_argv(rs: RunLocal, argv: list[str], roots: Roots, search: str) -> list[str]:
    """The launcher's argv (hoardfs.base.confine) that confines `argv` and runs it: it writes
    only below its output root and its own TMPDIR (`worker_tmp`); reads its input root, the
    context roots, the system's programs and libraries (`SYSTEM_PROGRAMS`, `SYSTEM_READS`),
    its program — the file, the interpreter a script names, the installation (venv) a program
    lies in, the directory of each file its command names — and `run_spec.read`; runs programs
    from the same places; opens no socket unless `run_spec.network`; writes /dev/shm too with
    `run_spec.shared_memory`. ExecError (one line naming the key) where the kernel cannot
    confine, or a path would let it read the service's secrets."""
    gone = landlock.unavailable()
    if gone is not None:
        raise ExecError(f"run_spec.confine: this kernel cannot confine the worker: {gone[0]}; {gone[1]}, or set "
                        "confine = false in the contract's [run_spec] to run it unconfined")
    reads: list[tuple[str, str]] = [(str(roots.input_root), "input_root")]
    reads += [(str(p), k) for k, p in roots.context().items()]
    if roots.input_root.parent == roots.output_root.parent:  # the run's own directory (3C/<run>/<layout>)
        reads.append((str(roots.output_root.parent), "output_root"))
    runs: list[tuple[str, str]] = []
    for i, p in enumerate(rs.read):
        if not os.path.exists(p):
            raise ExecError(f"run_spec.read[{i}]: {display(p)} does not exist; create it or remove it from the list")
        runs.append((p, f"run_spec.read[{i}]"))
    if sys.prefix != sys.base_prefix:  # hoard's venv: its bin/ is first on every worker's PATH (`_env`)
        runs.append((sys.prefix, "hoard's Python"))
    runs += [(p, "run_spec.command[0]") for p in program_paths(argv[0], search)]
    data = [os.path.realpath(p) for p in (roots.input_root, roots.output_root, *roots.context().values())]
    for i, a in enumerate(argv[1:], 1):
        real = os.path.realpath(a)
        if (os.path.isabs(a) and os.path.isfile(a) and not _under_system(real)
                and not any(real.startswith(d + "/") for d in data)):  # a staged file is data, not its program
            runs.append((_home_of(real), f"run_spec.command[{i}]"))
    for path, key in reads + runs:
        try:
            landlock.refuse_secrets([path])
        except landlock.SecretInReach as e:
            raise ExecError(f"{key}: {e}") from None
    writes = [str(roots.output_root), str(worker_tmp(roots)), *([SHARED_MEMORY] if rs.shared_memory else [])]
    return [*launcher_argv(write=writes, read=[p for p, _ in reads], run=[p for p, _ in runs], network=rs.network),
            "--", *argv]


def program_paths(program: str, search: str) -> list[str]:
    """What a confined process reads and runs to start `program`, none of the system's
    (`SYSTEM_PROGRAMS`): the file, the interpreter a script names (`_shebang`, NAME found on
    `search` for `/usr/bin/env NAME`), the ELF interpreter of each, the installation (venv)
    each lies in, and the directory of each (a script's own modules)."""
    out: list[str] = []
    for prog in [program, *_shebang(program, search)]:
        out += [p for p in landlock.with_interpreter([prog, os.path.realpath(prog)]) if not _under_system(p)]
        for p in (prog, os.path.realpath(prog)):
            pre = _prefix(p)
            if pre is not None and not _under_system(pre):
                out.append(pre)
        if not _under_system(os.path.realpath(prog)):
            out.append(_home_of(os.path.realpath(prog)))
    return out


def launcher_argv(*, write: Iterable[str], read: Iterable[str], run: Iterable[str], network: bool,
                  own: Iterable[str] = (), name: str | None = None, opt_out: str | None = None) -> list[str]:
    """hoard's Python running the launcher (hoardfs.base.confine) with these rules, up to its
    `--`: writes below `write` (and `own`, the program's own directories of the service's
    state); reads below those, `read`, `run`, the system's programs and libraries
    (`SYSTEM_PROGRAMS`) and files (`SYSTEM_READS`); runs programs from `run` and the system's;
    IPv4 and IPv6 sockets with `network`. `name` and `opt_out`: what the launcher's refusals
    call the program and the key that runs it unconfined (default: a team's worker's)."""
    out = [sys.executable, "-I", "-m", LAUNCHER]
    for p in write:
        out += ["--write", p]
    for p in own:
        out += ["--own", p]
    run = list(run)
    for p in dict.fromkeys([*read, *run, *SYSTEM_PROGRAMS, *SYSTEM_READS]):
        out += ["--read", p]
    for p in dict.fromkeys([*run, *SYSTEM_PROGRAMS]):
        out += ["--execute", p]
    if network:
        out.append("--network")
    if name is not None:
        out += ["--name", name]
    if opt_out is not None:
        out += ["--opt-out", opt_out]
    return out


def _fresh_tmp(tmp: Path, worker: Identity) -> None:
    """`tmp` made anew, empty, mode 0700 and the worker's (chown, when hoard is root)."""
    _remove_tmp(tmp)
    os.mkdir(tmp, 0o700)
    if os.geteuid() == 0 and worker.uid != 0:
        os.chown(tmp, worker.uid, worker.gid)


def _remove_tmp(tmp: Path) -> None:
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.unlink(tmp)


def _last_line(log_path: Path) -> str:
    """The last line a worker wrote to its log (not hoard's own notes), shortened."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith("[hoard ")]
    return display(lines[-1][:300]) if lines else ""


# -- processes --------------------------------------------------------------------------------

class _Log:
    """A worker's log file, kept to its last `cap` bytes: when it grows past cap, its last cap/2
    bytes (from a line start) are kept behind a line saying how much was dropped."""

    def __init__(self, path: Path, cap: int) -> None:
        self.cap = cap
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise ExecError(f"worker log {display(str(path))}: cannot open: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ExecError(f"worker log {display(str(path))}: not a regular file; remove it")
        self.size = os.fstat(self.fd).st_size
        self.dropped = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)
        if self.size > self.cap:
            keep = self.cap // 2
            tail = os.pread(self.fd, keep, self.size - keep)
            nl = tail.find(b"\n", 0, 4096)
            tail = tail[nl + 1:] if nl >= 0 else tail
            self.dropped += self.size - len(tail)
            os.ftruncate(self.fd, 0)
            self.size = 0
            self.write(f"[hoard: {self.dropped} earlier bytes of this log were dropped; it keeps the last "
                       f"{self.cap} bytes]\n".encode() + tail)

    def note(self, text: str) -> None:
        self.write(f"[hoard {time.strftime('%Y-%m-%dT%H:%M:%S')}] {display(text)}\n".encode())

    def close(self) -> None:
        os.close(self.fd)


def _dies_with(parent: int) -> Callable[[], None] | None:
    """The worker's preexec_fn: it is killed when its runner dies (kill -9, OOM) — in a session
    of its own, a kill of the runner's process group misses it, and it would go on writing the
    output root a resumed run empties and reads. Set after the switch to the worker's user (which
    would clear it), before exec (which keeps it); prctl is looked up here, before the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None

    def child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the line above
            os._exit(1)

    return child


_PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
#: SECBIT_NOROOT and SECBIT_NO_SETUID_FIXUP with their locks, and SECBIT_KEEP_CAPS locked off:
#: uid 0 gains no capability at execve, nor keeps or regains one by a change of uid
_SECBITS = 0b101111
_CAP_VERSION_3 = 0x20080522


def _no_caps(then: Callable[[], None] | None) -> Callable[[], None]:
    """A preexec function: `then()`, then every capability of the child taken away for good —
    the bounding and ambient sets emptied, the securebits that keep root's uid from gaining any
    at execve set and locked, the effective, permitted and inheritable sets cleared. The child
    keeps root's uid and with it only what owner bits give (the files root owns)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    libc = ctypes.CDLL(None, use_errno=True)

    def child() -> None:
        if then is not None:
            then()
        for cap in range(last + 1):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
        if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 or \
                libc.prctl(_PR_SET_SECUREBITS, _SECBITS, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(securebits)")
        header = struct.pack("<Ii", _CAP_VERSION_3, 0)
        data = ctypes.create_string_buffer(24)  # two (effective, permitted, inheritable) words: all zero
        if libc.capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "capset")

    return child


def _subreaper(on: bool) -> bool:
    """Make this process a child subreaper (or not); returns whether it was one (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        was = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(was.value)
    except (OSError, AttributeError):  # not Linux: the session is still ended, orphans go to init
        return False


def _procs() -> dict[int, tuple[bytes, int, int, int, int]]:
    """pid → (state, ppid, pgrp, session, start time) of every process (/proc/PID/stat)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2:].split()
        out[int(name)] = (rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[19]))
    return out


def _ours(proc: subprocess.Popen, before: set[int], since: int) -> dict[int, tuple[bytes, int]]:
    """The worker's processes: its session, and children of ours it left (orphans re-parented
    to this subreaper) that started after it: pid → (state, ppid)."""
    me = os.getpid()
    return {pid: (st, ppid) for pid, (st, ppid, pgrp, sid, start) in _procs().items()
            if sid == proc.pid or pgrp == proc.pid
            or (ppid == me and pid not in before and start >= since and pid != me)}


def _end(proc: subprocess.Popen, before: set[int], since: int, grace_s: float, log: _Log) -> None:
    """Ends every process of the worker (TERM, KILL after grace_s) and reaps those that are ours."""
    me = os.getpid()
    kill_at = time.monotonic() + grace_s
    sent: set[tuple[int, int]] = set()
    while True:
        proc.poll()
        found = _ours(proc, before, since)
        for pid, (st, ppid) in found.items():
            if st == b"Z" and ppid == me and pid != proc.pid:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        live = [pid for pid, (st, _) in found.items() if st != b"Z"]
        if not live and proc.returncode is not None:
            return
        now = time.monotonic()
        sig = signal.SIGKILL if now >= kill_at else signal.SIGTERM
        if sig == signal.SIGKILL and now >= kill_at + 30:
            log.note(f"processes {live} did not end 30 s after KILL (stuck in the kernel?); left")
            return
        for pid in live:
            if (pid, sig) not in sent:
                sent.add((pid, sig))
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)


def _drain(fd: int, log: _Log) -> bool:
    """Copies what the pipe holds into the log; False at end of file."""
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        log.write(data)


def _start(cmd: Command, cwd: str, out_fd: int) -> subprocess.Popen:
    stdin: int = subprocess.DEVNULL
    if cmd.stdin is not None:
        stdin = os.memfd_create("hoard-stdin", os.MFD_CLOEXEC)
        os.write(stdin, cmd.stdin)
        os.lseek(stdin, 0, os.SEEK_SET)
    kw: dict = {}
    if cmd.user is not None and cmd.user.uid != os.geteuid():
        kw = {"user": cmd.user.uid, "group": cmd.user.gid, "extra_groups": []}
    dies = _dies_with(os.getpid())
    pre = dies if not cmd.no_caps else _no_caps(dies)
    try:
        return subprocess.Popen(list(cmd.argv), stdin=stdin, stdout=out_fd, stderr=out_fd, env=dict(cmd.env),
                                cwd=cwd, start_new_session=True, close_fds=True, preexec_fn=pre, **kw)
    except OSError as e:
        who = cmd.user.name if cmd.user is not None else "hoard's user"
        raise ExecError(f"{cmd.key}: cannot start {display(cmd.argv[0])} as {who}: {e.strerror}; check that "
                        "this user may run it (and reach its interpreter)") from None
    finally:
        if cmd.stdin is not None:
            os.close(stdin)


def _watch(proc: subprocess.Popen, r: int, pidfd: list[int], log: _Log, deadline: float,
           heartbeat: Callable[[], None], should_stop: Callable[[], bool], poll_s: float) -> str:
    """Copies the worker's output to the log until it exits ("exited"), runs past the deadline
    ("timeout") or should_stop() says so ("cancelled"); heartbeat() every poll_s."""
    open_pipe, last = True, -float("inf")
    while True:
        now = time.monotonic()
        if now - last >= poll_s:
            last = now
            heartbeat()
            if should_stop():
                return "cancelled"
        if proc.poll() is not None:
            return "exited"
        if now >= deadline:
            return "timeout"
        wait = max(0.01, min(last + poll_s, deadline) - now)
        if open_pipe or pidfd:
            if r in select.select(([r] if open_pipe else []) + pidfd, [], [], wait)[0]:
                open_pipe = _drain(r, log)
        else:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass


def _run(cmd: Command, *, cwd: str, log: _Log, deadline: float, heartbeat: Callable[[], None],
         should_stop: Callable[[], bool], poll_s: float, grace_s: float,
         on_start: Callable[[int, int], None] | None = None) -> tuple[str, int | None]:
    """Runs one command (and its `then`) by the module's process rules: (reason, exit code)."""
    me = os.getpid()
    before = {pid for pid, (_, ppid, *_rest) in _procs().items() if ppid == me}
    log.note(f"start {shlex.join(cmd.argv)} as {cmd.user.name if cmd.user else 'hoard'} in {cwd}")
    was_reaper = _subreaper(True)
    r, w = os.pipe2(os.O_CLOEXEC)
    pidfd: list[int] = []
    try:
        try:
            proc = _start(cmd, cwd, w)
        finally:
            os.close(w)
        since = _procs().get(proc.pid, (b"", 0, 0, 0, 0))[4]
        try:  # readable when the process ends: no wait for the next poll (Linux ≥ 5.3)
            pidfd.append(os.pidfd_open(proc.pid))
        except (OSError, AttributeError):
            pass
        os.set_blocking(r, False)
        try:
            if on_start is not None:  # the caller records the session (pid = sid = pgid) and its start time
                on_start(proc.pid, since)
            reason = _watch(proc, r, pidfd, log, deadline, heartbeat, should_stop, poll_s)
        except BaseException:  # heartbeat/should_stop raised, or Ctrl-C / SIGTERM of this process
            _end(proc, before, since, grace_s, log)
            _drain(r, log)
            if cmd.stop is not None:  # the container (the Job) the client started outlives the client
                log.note("interrupted: stopping what the worker's client started")
                _stop(cmd.stop, cwd=cwd, log=log, poll_s=poll_s, grace_s=grace_s)
            raise
        _end(proc, before, since, grace_s, log)  # after any end: a worker never outlives its watcher
        _drain(r, log)
    finally:
        os.close(r)
        for fd in pidfd:
            os.close(fd)
        if not was_reaper:
            _subreaper(False)
    code = proc.returncode
    log.note(f"{reason}: exit status {code}" if reason == "exited" else f"{reason}: ended (status {code})")
    if reason != "exited" and cmd.stop is not None:
        _stop(cmd.stop, cwd=cwd, log=log, poll_s=poll_s, grace_s=grace_s)
    if reason == "exited" and code == 0 and cmd.then is not None:
        return _run(replace(cmd.then, stop=cmd.then.stop or cmd.stop), cwd=cwd, log=log, deadline=deadline,
                    heartbeat=heartbeat, should_stop=should_stop, poll_s=poll_s, grace_s=grace_s, on_start=on_start)
    return reason, (code if reason == "exited" else None)


#: POSIX ACLs as Linux keeps them in the `system.posix_acl_access` attribute: a version, then
#: (tag, permissions, id) entries sorted by tag and id (acl(5), linux/posix_acl_xattr.h)
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF


def _acl(path: Path) -> list[tuple[int, int, int]] | None:
    """The entries of `path`'s access ACL, None when it has none beyond its mode."""
    try:
        raw = os.getxattr(path, _ACL_XATTR, follow_symlinks=False)
    except OSError:
        return None
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return None
    return [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]


def _grant(path: Path, uid: int, perm: int) -> None:
    """Give user `uid` `perm` (4/2/1 bits) on `path` by an ACL entry, keeping what its mode
    and other entries allow (the mask becomes the union of the group entries, as setfacl
    makes it). A file system without ACLs is left as it is (`_reachable` then names it)."""
    st = os.lstat(path)
    entries = _acl(path) or [(_ACL_USER_OBJ, (st.st_mode >> 6) & 7, _ACL_NO_ID),
                             (_ACL_GROUP_OBJ, (st.st_mode >> 3) & 7, _ACL_NO_ID),
                             (_ACL_OTHER, st.st_mode & 7, _ACL_NO_ID)]
    if any(t == _ACL_USER and i == uid and p & perm == perm for t, p, i in entries):
        return
    have = next((p for t, p, i in entries if t == _ACL_USER and i == uid), 0)
    entries = [e for e in entries if not (e[0] == _ACL_USER and e[2] == uid) and e[0] != _ACL_MASK]
    entries.append((_ACL_USER, have | perm, uid))
    with contextlib.suppress(OSError):
        _write_acl(path, entries)


def _allowed(p: Path, st: os.stat_result, ident: Identity) -> int:
    """The 4/2/1 bits `ident` (with its own group only) has on `p`, its ACL counted."""
    entries = _acl(p)
    if st.st_uid == ident.uid:
        return (st.st_mode >> 6) & 7
    if entries is None:
        return (st.st_mode >> 3) & 7 if st.st_gid == ident.gid else st.st_mode & 7
    mask = next((q for t, q, _i in entries if t == _ACL_MASK), 7)
    named = next((q for t, q, i in entries if t == _ACL_USER and i == ident.uid), None)
    if named is not None:
        return named & mask
    groups = [q for t, q, i in entries if (t == _ACL_GROUP_OBJ and st.st_gid == ident.gid)
              or (t == _ACL_GROUP and i == ident.gid)]
    if groups:
        return (groups[0] | groups[-1]) & mask  # (its own group: the owning group's entry, a named one, or both)
    return st.st_mode & 7


def grant_run_tree(run_dir: Path, output_root: Path, worker: Identity) -> None:
    """Let the worker user (not root, not hoard's group: untrusted like any local user) pass
    zone 3C and read its own run's staged tree, `run_dir` (3C/<run>), and nothing else: ACL
    entries for that user alone — `--x` on 3C, `r-x` on the run's directories, `r--` on its
    files — the modes (1770, 0750, 0640) stay as they are for everyone else. The output root
    is the worker's own (`prepare_roots`)."""
    _grant(run_dir.parent, worker.uid, 1)
    for d, dirs, files in os.walk(run_dir):
        here = Path(d)
        if here == output_root:
            dirs[:] = []
            continue
        _grant(here, worker.uid, 5)
        for f in files:
            if not os.path.islink(here / f):
                _grant(here / f, worker.uid, 4)
        dirs[:] = [n for n in dirs if not os.path.islink(here / n)]


def _stop(stop: Command, *, cwd: str, log: _Log, poll_s: float, grace_s: float) -> None:
    """Runs a stop command (docker rm --force, kubectl delete) to its end or STOP_TIMEOUT_S; a
    failure to run it is noted in the log, not raised (the stop is the last thing tried)."""
    try:
        _run(stop, cwd=cwd, log=log, deadline=time.monotonic() + STOP_TIMEOUT_S, heartbeat=lambda: None,
             should_stop=lambda: False, poll_s=poll_s, grace_s=grace_s)
    except ExecError as e:
        log.note(f"could not stop it: {e.message}")


def close_run_tree(run_dir: Path, worker: Identity) -> None:
    """Once its worker has ended, the run's directory is closed to the worker user again: its
    ACL entry on `3C/<run>` is taken off, so that the next run's worker — the same user —
    cannot enter this run's tree (its input, the output its parse is about to read, a failed
    run kept for inspection). The entries below stay, unreachable; 3C's `--x` stays for the
    runs still going. A later attempt of this run grants them again (`grant_run_tree`)."""
    entries = _acl(run_dir)
    if not entries or not any(t == _ACL_USER and i == worker.uid for t, _p, i in entries):
        return
    _write_acl(run_dir, [e for e in entries if not (e[0] == _ACL_USER and e[2] == worker.uid)])


def _write_acl(path: Path, entries: list[tuple[int, int, int]]) -> None:
    """Set `path`'s access ACL to `entries` (a mask among them is recomputed): with named user
    or group entries the mask is the union of the group-class entries, as setfacl makes it;
    without any, no mask — a minimal ACL, the mode alone. Links are not followed."""
    entries = [e for e in entries if e[0] != _ACL_MASK]
    if any(t in (_ACL_USER, _ACL_GROUP) for t, _p, _i in entries):
        mask = 0
        for t, p, _i in entries:
            if t in (_ACL_USER, _ACL_GROUP, _ACL_GROUP_OBJ):
                mask |= p
        entries.append((_ACL_MASK, mask, _ACL_NO_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, _ACL_XATTR, blob, follow_symlinks=False)


def _reachable(path: Path, ident: Identity, need: int, what: str, *, parents: bool = True) -> None:
    """ExecError unless `ident` may search every directory down to `path` (with parents=False:
    only `path` itself — a container's mount) and has `need` (R_OK/W_OK/X_OK bits, as 4/2/1) on it (its mode or its ACL)."""
    parts = [*reversed(path.parents), path] if parents else [path]
    for p in parts:
        try:
            st = os.stat(p)
        except OSError as e:
            raise ExecError(f"{what} {display(str(p))}: {e.strerror}") from None
        bits = need if p == path else 1
        if _allowed(p, st, ident) & bits != bits:
            raise ExecError(f"{what}: the worker user {ident.name} cannot reach {display(str(p))} (mode "
                            f"{stat.filemode(st.st_mode)}, owner {st.st_uid}); let it through (chmod o+x) or "
                            "keep zone 3C where it can")


def prepare_roots(roots: Roots, worker: Identity, run_dir: Path | None = None, *, mounted: bool = False) -> None:
    """The output root exists, is a directory (not a link) and is the worker's; the worker can
    read the input root. Only root changes an owner: otherwise the worker is hoard's user.
    `run_dir`: the run's own directory in zone 3C (3C/<run>, holding both roots), which the
    worker user is let into (`grant_run_tree`). `mounted`: the roots are mounted into a
    container (docker) — the daemon reaches them, so the directories above them need not let
    the worker through, only the roots themselves."""
    out = roots.output_root
    out.mkdir(parents=True, exist_ok=True)
    st = os.lstat(out)
    if not stat.S_ISDIR(st.st_mode):
        raise ExecError(f"output_root {display(str(out))}: not a directory (a link or a file); remove it and stage again")
    if os.geteuid() == 0 and worker.uid != 0:
        os.chown(out, worker.uid, worker.gid, follow_symlinks=False)
        if run_dir is not None and run_dir in roots.input_root.parents and run_dir in out.parents:
            grant_run_tree(run_dir, out, worker)
        _reachable(out, worker, 7, "output_root", parents=not mounted)
        _reachable(roots.input_root, worker, 5, "input_root", parents=not mounted)
        for k, p in roots.context().items():
            _reachable(p, worker, 5, k, parents=not mounted)


def run_worker(c: Contract, roots: Roots, params: Mapping[str, object], *, log_path: Path,
               heartbeat: Callable[[], None], should_stop: Callable[[], bool], poll_s: float = 1.0,
               worker_user: str = "nobody", grace_s: float = TERM_GRACE_S, log_cap: int = LOG_CAP,
               on_start: Callable[[int, int], None] | None = None, run_dir: Path | None = None,
               setup: Path | None = None) -> Outcome:
    """Runs the contract's worker to its end: exited (its status), timeout (past run_spec.timeout_s)
    or cancelled (should_stop() said so); heartbeat() is called every poll_s. ExecError (one
    line) when it cannot be started. `worker_user` is `actions.worker_user` of hoard.toml;
    `run_dir` the run's directory in zone 3C, which the worker user is let into; `setup` the
    embedded default's directory, if it is one (`as_setup_owner`).
    `on_start(pid, start)` is called once the worker's process exists: its session id (= its pid)
    and its start time (clock ticks after boot, /proc/PID/stat), for `end_session` by a later
    process if this one dies (kill -9) and leaves the session running."""
    cmd = as_setup_owner(command_for(c, roots, params, worker_user=worker_user), c, setup,
                         run_dir.parent.parent if run_dir is not None else None)
    prepare_roots(roots, cmd.worker, run_dir, mounted=isinstance(c.run_spec, RunDocker))
    assert isinstance(c.run_spec, (RunLocal, RunDocker, RunKubectl))
    confined = cmd.argv[2:4] == ("-m", LAUNCHER)
    tmp = worker_tmp(roots) if "TMPDIR" in cmd.env and isinstance(c.run_spec, RunLocal) else None
    if confined and cmd.user is not None and cmd.user.uid != os.geteuid():  # the launcher is hoard's Python
        _reachable(Path(sys.executable), cmd.worker, 5, "hoard's Python (which confines the worker)")
        _reachable(Path(landlock.__file__), cmd.worker, 4, "hoardfs (which confines the worker)")
    if tmp is not None:
        _fresh_tmp(tmp, cmd.worker)
    log = _Log(log_path, log_cap)
    t0 = time.monotonic()
    try:
        reason, code = _run(cmd, cwd=str(roots.output_root), log=log, deadline=t0 + c.run_spec.timeout_s,
                            heartbeat=heartbeat, should_stop=should_stop, poll_s=poll_s, grace_s=grace_s,
                            on_start=on_start)
    finally:
        log.close()
        if tmp is not None:
            _remove_tmp(tmp)
        if run_dir is not None and cmd.worker.uid != os.geteuid():
            close_run_tree(run_dir, cmd.worker)
    last = _last_line(log_path) if reason == "exited" and code != 0 else ""
    return Outcome(reason, code, time.monotonic() - t0, last, confined)  # type: ignore[arg-type]  # _run's reasons are Outcome's


def gate_ready(c: Contract, roots: Roots, params: Mapping[str, object], *, log_path: Path, timeout_s: float = 60,
               worker_user: str = "nobody", grace_s: float = TERM_GRACE_S, log_cap: int = LOG_CAP) -> bool:
    """Runs gate.hook once, by the worker's process rules (as the worker's user, in /): True iff
    it exits 0 within timeout_s (a hook that hangs is ended: False)."""
    return gate_answer(c, roots, params, log_path=log_path, timeout_s=timeout_s, worker_user=worker_user,
                       grace_s=grace_s, log_cap=log_cap)[0]


def gate_answer(c: Contract, roots: Roots, params: Mapping[str, object], *, log_path: Path, timeout_s: float = 60,
                worker_user: str = "nobody", grace_s: float = TERM_GRACE_S,
                log_cap: int = LOG_CAP, setup: Path | None = None) -> tuple[bool, str]:
    """`gate_ready`, with what the hook said in a few words: "ready", "exit 1", or "killed
    after N s" (it hung: its whole session ended, not ready). `setup`: as for `run_worker`."""
    if c.gate is None or not c.gate.hook:
        raise ExecError("gate.hook: this contract has no gate hook; release the run with `hoard action release RUN`")
    rs = c.run_spec
    run_as, allow_root = (rs.run_as, rs.allow_root) if isinstance(rs, (RunLocal, RunDocker, RunKubectl)) else (None, False)
    ident = worker_identity(run_as, allow_root, worker_user)
    argv = [render(a, roots, params, key=f"gate.hook[{i}]") for i, a in enumerate(c.gate.hook)]
    argv[0] = which(argv[0], "gate.hook[0]")
    cmd = as_setup_owner(Command(tuple(argv), _env(ident, {}), "gate.hook[0]", ident, ident), c, setup)
    log = _Log(log_path, log_cap)
    try:
        reason, code = _run(cmd, cwd="/", log=log, deadline=time.monotonic() + timeout_s, heartbeat=lambda: None,
                            should_stop=lambda: False, poll_s=1.0, grace_s=grace_s)
    finally:
        log.close()
    if reason == "exited":
        return code == 0, "ready" if code == 0 else f"exit {code}"
    return False, f"killed after {timeout_s:.0f} s (it hung)"


def end_session(sid: int, start: int, *, grace_s: float = TERM_GRACE_S) -> int:
    """Ends what is left of a worker session another (now dead) process started: every process
    whose session is `sid` gets TERM, then KILL after grace_s. `start` is the leader's start time
    as `on_start` recorded it: a live process `sid` that started at another time is not that
    worker (the pid was reused, and the kernel reuses no pid while a session of that id lives), so
    nothing is killed. Returns how many processes were signalled."""
    procs = _procs()
    leader = procs.get(sid)
    if leader is not None and leader[4] != start:
        return 0
    kill_at = time.monotonic() + grace_s
    signalled: set[int] = set()
    sent: set[tuple[int, int]] = set()
    while True:
        live = [pid for pid, (st, _pp, _pg, s, _t) in _procs().items() if s == sid and st != b"Z"]
        if not live:
            return len(signalled)
        now = time.monotonic()
        if now >= kill_at + 30:
            return len(signalled)  # stuck in the kernel: left
        sig = signal.SIGKILL if now >= kill_at else signal.SIGTERM
        for pid in live:
            if (pid, sig) not in sent:
                sent.add((pid, sig))
                signalled.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        time.sleep(0.02)


def stop_left(c: Contract, roots: Roots, params: Mapping[str, object], *, log_path: Path,
              worker_user: str = "nobody", grace_s: float = TERM_GRACE_S, log_cap: int = LOG_CAP) -> Command | None:
    """Stops what the client of a docker or kubectl worker started, for a runner that died (kill -9,
    a host that stopped) while it ran: the container `hoard-<run>` (`docker rm --force`) or the
    Job (`kubectl delete`) outlives both that runner and its client's session, which `end_session`
    ends. Returns the stop command run (its output goes to the run's log), None for a kind with
    nothing beyond the session (local). ExecError when it cannot be built (no docker client)."""
    if not isinstance(c.run_spec, (RunDocker, RunKubectl)):
        return None
    stop = command_for(c, roots, params, worker_user=worker_user).stop
    assert stop is not None  # docker and kubectl commands always have one
    log = _Log(log_path, log_cap)
    try:
        log.note("a stopped runner left its worker: stopping what its client started")
        _stop(stop, cwd="/", log=log, poll_s=1.0, grace_s=grace_s)
    finally:
        log.close()
    return stop


def done_marker_present(c: Contract, roots: Roots) -> bool:
    """Whether an external worker wrote its done marker (run_spec.done_marker, `_DONE`) in the
    output root: a regular file, opened without following a link (a link, a directory or a
    fifo there is not the marker)."""
    marker = c.run_spec.done_marker if isinstance(c.run_spec, RunExternal) else "_DONE"
    try:
        dfd = os.open(roots.output_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
            return False
        raise
    finally:
        os.close(dfd)
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


__all__ = ["LAUNCHER", "REFUSED", "Command", "ExecError", "Identity", "Outcome", "Roots", "command_for", "confined_argv",
           "launcher_argv", "program_paths", "worker_tmp", "done_marker_present", "end_session", "gate_ready",
           "prepare_roots", "render", "run_worker", "stop_left", "which", "worker_identity"]
