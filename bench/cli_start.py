"""What starting a `hoard` command costs before it does any work (every `hoard`
process — a user's, a timer's, each of the thousands the test suite starts — pays it).

    python bench/cli_start.py [--repeat 9] [--before DIR]
    python bench/cli_start.py --render      # docs/benchmarks.md's section from the JSON

Each invocation runs as its own process (`python -m hoardfs --config … ARGS`, this worktree's
venv), `--repeat` times one after the other; the first run of each is discarded (it reads the
modules into the page cache: these are warm figures — a cold start also waits for the disk,
which this does not measure). Per run: wall time, and the CPU (user + system) of that process
from its rusage (os.wait4), less sensitive to other load than the wall time. The median of each
is reported.

The floor, measured in the same run: `python -c pass` with the same interpreter and site
(what any Python command costs), and `python -c "import typer, pydantic"` (the two libraries
every `hoard` command needs to parse its arguments and its hoard.toml). `--before DIR` (a
checkout of the old code: `git worktree add --detach DIR <commit>`) runs the same invocations
with that code, its runs and this code's taken in turn, on the same store, with the same interpreter
(`--before-path DIR`: a library the old code needs that this one dropped — pydantic-settings —
installed with `pip install --target DIR`).

The store: two directory disks under a temporary directory, this worktree's PostgreSQL and
Redis (from its hoard.toml), one object of 3 bytes put first. `--help` of a command loads that
command's module and prints; `put`, `get`, `info`, `ls`, `check --no-database` and `health
--json` do their (tiny) work. Raw JSON: bench/results/cli-start-*.json (the newest is rendered).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import RESULTS, report, result_name, run_timed, write_doc_section  # noqa: E402
from hoardfs.base import config  # noqa: E402
from tests.helpers import dir_disks_config  # noqa: E402

#: what is measured: a name → the arguments after `--config CFG` ({sha}: the stored object's)
INVOCATIONS: dict[str, list[str]] = {
    "--version": ["--version"],
    "--help": ["--help"],
    "put --help": ["put", "--help"],
    "stage --help": ["stage", "--help"],
    "action --help": ["action", "--help"],
    "worker --help": ["worker", "--help"],
    "gui --help": ["gui", "--help"],
    "put FILE": ["put", "{file}"],
    "get SHA": ["get", "{sha}", "-o", "/dev/null"],
    "info SHA": ["info", "{sha}"],
    "ls": ["ls"],
    "check --no-database": ["check", "--no-database"],
    "health --json": ["health", "--json"],
}
#: the floor: what any Python command of this interpreter costs, and with the argument and
#: config libraries loaded
FLOOR = {"python -c pass": "pass", "python: import typer, pydantic": "import typer, pydantic"}
OK_EXITS = (0, 4)  # health exits 4 when it has a problem to report (none expected here)

BEGIN = "<!-- bench/cli_start.py: begin (written by `bench/cli_start.py --render`; do not edit) -->"
END = "<!-- bench/cli_start.py: end -->"


def once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one process running `argv`; a failed one stops the benchmark."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in OK_EXITS:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {errors.decode(errors='replace')[-1500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(argv: list[str], cwd: Path, env: dict[str, str], repeat: int) -> dict:
    """Median wall and CPU of `repeat` runs after one discarded (warm)."""
    return measure_each({"this": (argv, cwd, env)}, repeat)["this"]


def measure_each(how: dict[str, tuple[list[str], Path, dict[str, str]]], repeat: int) -> dict[str, dict]:
    """`measure` for each of several ways of running one invocation, their runs taken in turn
    (this, before, this, before …) so that a drift of the machine's load falls on all alike."""
    for argv, cwd, env in how.values():
        once(argv, cwd, env)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in how}
    for _ in range(repeat):
        for name, (argv, cwd, env) in how.items():
            runs[name].append(once(argv, cwd, env))
    return {name: {"wall_s": round(statistics.median(w for w, _ in rs), 4),
                   "cpu_s": round(statistics.median(c for _, c in rs), 4),
                   "runs": [[round(w, 4), round(c, 4)] for w, c in rs]} for name, rs in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--before", type=Path, help="a checkout of the old code, run beside this one")
    ap.add_argument("--before-path", default="", help="more PYTHONPATH for --before's code: a library it needs that "
                    "this code dropped (pip install --target DIR …)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    args = ap.parse_args()
    if args.render:
        return render()
    home = config.load(REPO / "hoard.toml")
    codes = {"this": REPO} | ({"before": args.before.resolve()} if args.before else {})
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        root = Path(tmp)
        cfg = dir_disks_config(root, 2, database_url=home.database_url, redis_url=home.redis_url, quota_gb=1,
                               write_ack=2, copy_of_raw=2)
        for z in ("3A", "3B", "3C", "3D"):
            (root / "ssd" / z).mkdir(parents=True, exist_ok=True)
        obj = root / "object.txt"
        obj.write_bytes(b"hi\n")
        fill = {"{file}": str(obj), "{sha}": hashlib.sha256(obj.read_bytes()).hexdigest()}
        env = {k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTHONPATH")}
        subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "init"], cwd=REPO, env=env, check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), "put", str(obj)], cwd=REPO, env=env,
                       check=True, capture_output=True)
        floor = {name: measure([sys.executable, "-c", code], root, env, args.repeat) for name, code in FLOOR.items()}
        results: dict[str, dict] = {}
        for name, words in INVOCATIONS.items():
            argv = [fill.get(w, w) for w in words]
            how = {}
            for code, where in codes.items():
                path = os.pathsep.join([str(where)] + ([args.before_path] if code == "before" and args.before_path else []))
                how[code] = ([sys.executable, "-m", "hoardfs", "--config", str(cfg), *argv], where, dict(env, PYTHONPATH=path))
            results[name] = measure_each(how, args.repeat)
            print(f"{name}: " + ", ".join(f"{c} {r['cpu_s']:.3f} s CPU / {r['wall_s']:.3f} s"
                                          for c, r in results[name].items()), flush=True)
    data = {"repeat": args.repeat, "floor": floor, "invocations": results,
            "before": str(args.before) if args.before else None,
            "before_commit": _commit_of(args.before) if args.before else None}
    rows = [(name, f"{r['this']['cpu_s']:.3f} s CPU") for name, r in results.items()]
    report("hoard command start-up (warm)", rows, data)
    render()


def _commit_of(path: Path) -> str:
    return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def render() -> None:
    """docs/benchmarks.md's section, from the newest bench/results/cli-start-*.json."""
    doc = max((json.loads(p.read_text()) for p in RESULTS.glob("cli-start-*.json")), key=lambda d: d["when"])
    doc["file"] = result_name("cli_start", doc["argv"]) + ".json"
    m = doc["machine"]
    floor = doc["floor"]
    # (a run with --before also timed another checkout's commands: they stay in its JSON, the
    # section shows this checkout's figures and the floor)
    head = "| invocation | CPU | wall |"
    lines = [
        BEGIN, "",
        "## What starting a `hoard` command costs",
        "",
        "`.venv/bin/python bench/cli_start.py` (its docstring says how) — each invocation its own process, "
        f"{doc['repeat']} runs after one",
        "discarded (warm: the modules in the page cache), the median; CPU = user + system of that process. "
        f"Raw numbers: `bench/results/{doc['file']}` (commit {doc['commit']}, {doc['when']}; 1-minute load "
        f"{m['loadavg_1m_at_start']:.1f} at the start, {m['loadavg_1m_at_end']:.1f} at the end). Written by "
        "`bench/cli_start.py --render`.",
        "",
        f"The floor in the same run: `python -c pass` {floor['python -c pass']['cpu_s']:.3f} s CPU / "
        f"{floor['python -c pass']['wall_s']:.3f} s; `import typer, pydantic` "
        f"{floor['python: import typer, pydantic']['cpu_s']:.3f} s CPU / "
        f"{floor['python: import typer, pydantic']['wall_s']:.3f} s.",
        "",
        head,
        "|---|---|---|",
    ]
    for name, r in doc["invocations"].items():
        lines.append(f"| `hoard {name}` | {r['this']['cpu_s']:.3f} s | {r['this']['wall_s']:.3f} s |")
    lines += ["", END]
    write_doc_section(BEGIN, END, lines)


if __name__ == "__main__":
    run_timed(main)
