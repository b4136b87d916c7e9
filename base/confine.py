"""`python -I -m hoardfs.base.confine [--write P]… [--own P]… [--read P]… [--execute P]… [--network]
[--name NAME] [--opt-out TEXT] -- PROGRAM ARG…`: confine this process as a team's own worker
(`run_spec.kind = "local"`, docs/actions.md "Confinement") or the local Label Studio
(hoardfs.jobs.actions.labelstudio_local) and then become PROGRAM (execve: the same pid, session
and environment).

The runner (hoardfs.jobs.actions.execute) starts this launcher as the worker's process, as the
worker's user, instead of the program itself: the confinement is applied by the new process
before it runs a line of the team's code, and the runner — a process with threads, where a
preexec hook is unsafe — does nothing in its child between fork and exec but what it did before.
The launcher is single-threaded (Python starts none), so `landlock.confine` covers all of it.

What the program may then do (hoardfs.base.landlock.confine): create, write, rename and remove
files only below `--write` (its output root and its own temporary directory), `--own` (a
directory of the service's state that is the program's own: Label Studio's data) and /dev/null;
read only below `--read`, `--write` and `--own`; run programs only below `--execute` and `--write`; open
no socket but a connected pair unless `--network` (then IPv4 and IPv6 too); no System V IPC,
message queues or keyrings, no other process's limits, no terminal input, no file attribute flags,
and below Landlock ABI 6 no signal to another process. It may take flocks and start its own
sessions and process groups (its runner ends them all).

Where the kernel cannot confine it — no Landlock (or ABI 1), no seccomp — nothing runs: one
line on stderr naming `confine = false`, the contract key that runs a worker unconfined (or
`--opt-out`'s text, for a program `--name` names), and exit `REFUSED`. The runner checks Landlock before it starts anything (`landlock.unavailable`);
this is the check at the place that counts.
"""

from __future__ import annotations

import os
import sys

from hoardfs.base import landlock

#: the exit status of a launcher that ran nothing: the worker could not be confined or started
REFUSED = 126
_OPT_OUT = "set confine = false in the contract's [run_spec] to run it unconfined"


def _refuse(line: str, name: str = "worker") -> int:
    print(f"hoard: {name} not started: {line}", file=sys.stderr, flush=True)
    return REFUSED


def parse(argv: list[str]) -> tuple[dict[str, list[str]], bool, list[str]]:
    """(paths by option — `--name` and `--opt-out` too, their last value counting —, network,
    the program's argv) from the launcher's arguments; ValueError naming what is wrong."""
    paths: dict[str, list[str]] = {"--write": [], "--own": [], "--read": [], "--execute": [], "--name": [],
                                   "--opt-out": []}
    network = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            if i + 1 >= len(argv):
                raise ValueError("no program after --")
            return paths, network, argv[i + 1:]
        if arg == "--network":
            network = True
            i += 1
            continue
        if arg not in paths or i + 1 >= len(argv):
            raise ValueError(f"unknown option {arg!r}")
        paths[arg].append(argv[i + 1])
        i += 2
    raise ValueError("no -- before the program")


def main(argv: list[str]) -> int:
    try:
        paths, network, program = parse(argv)
    except ValueError as e:
        print(f"usage: python -m hoardfs.base.confine [--write P]… [--own P]… [--read P]… [--execute P]… "
              f"[--network] [--name NAME] [--opt-out TEXT] -- PROGRAM ARG… ({e})", file=sys.stderr)
        return 2
    name = (paths.pop("--name") or ["worker"])[-1]
    opt_out = (paths.pop("--opt-out") or [_OPT_OUT])[-1]
    # a rule cannot name a path that does not exist: a system directory this host lacks is left out
    existing = {k: [p for p in v if os.path.exists(p)] for k, v in paths.items()}
    try:
        confined = landlock.confine(write=existing["--write"], own=existing["--own"], read=existing["--read"],
                                    execute=existing["--execute"], network=network, flock=True, leave_group=True)
    except landlock.SecretInReach as e:
        return _refuse(f"{e}", name)
    except (OSError, RuntimeError) as e:
        return _refuse(f"cannot confine it ({e}); {opt_out}", name)
    if not confined:
        why, next_step = landlock.unavailable() or ("Landlock refused", "")
        return _refuse(f"this kernel cannot confine it: {why}; {next_step}, or {opt_out}", name)
    if landlock.seccomp_missing is not None:
        why, next_step = landlock.seccomp_missing
        return _refuse(f"this host cannot confine its network and processes: {why}; {next_step}, or {opt_out}", name)
    try:
        os.execve(program[0], program, os.environ)
    except OSError as e:
        return _refuse(f"cannot start {program[0]}: {e.strerror}" + (
            " (it runs confined: name what it needs to read or run in run_spec.read)" if name == "worker" else ""),
            name)
    return REFUSED  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
