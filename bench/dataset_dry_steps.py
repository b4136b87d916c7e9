"""The counts of `hoard dataset build --dry-run` at a million samples, step by step: each SQL
function of `hoardfs.datasets.plan.dry_plan` (and the split balance between them) timed, and,
with `--against DIR`, the same for another checkout's code in the same run — the A/B of a
change to the dry run's SQL.

    python bench/dataset_dry_steps.py [--samples 1000000] [--runs 3] [--against DIR]

The samples are recorded in a fresh schema of the test PostgreSQL as bench/dataset_build.py
records them (set-based SQL: physical nodes with a class label, four to a post): the counts
read only the database, so no store is made. `--against DIR` (a `git worktree` of an older
commit): its own migrations make a second schema, its own bench/dataset_build.py records the
same samples there, and its dry_plan runs alternate with this tree's (old, new, old, new, …),
each in a process of its own, so a drift in the machine's load meets both alike. The imports
follow the tree: `hoardfs.*`, or the top-level packages of a tree from before that root.

The spec is bench/dataset_build.py's dry-run spec (imagefolder, copy, class_label, ratios
0.8/0.2 grouped by root). JSON: bench/results/dataset-dry-steps-*.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: what is timed apart besides the `dry_*` functions of the tree's sql/datasets.py
PLAN_STEPS = ("balance", "check_splits", "near_dup_groups")


def _tree(code: Path) -> dict:
    """The modules of the checkout at `code`, by their role."""
    sys.path[:0] = [str(code / "bench"), str(code)]
    pre = "hoardfs." if (code / "hoardfs").exists() else ""
    base = "hoardfs.base" if pre else "fsd.base"
    names = {"config": f"{base}.config", "cluster": f"{pre}sql.cluster", "migrate": f"{pre}sql.migrate",
             "sqld": f"{pre}sql.datasets", "api": f"{pre}datasets.api", "plan": f"{pre}datasets.plan",
             "spec": f"{pre}datasets.spec", "bench": "dataset_build"}
    mods = {k: importlib.import_module(v) for k, v in names.items()}
    assert Path(mods["plan"].__file__).resolve().is_relative_to(code.resolve()), mods["plan"].__file__
    return mods


def _timed_steps(mods: dict, times: dict[str, float]) -> None:
    """Wrap the tree's dry_* SQL functions and the plan's own steps so that each call adds its
    time to `times`."""
    def wrap(owner, name: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def timed(*a, **k):
            t0 = time.monotonic()
            try:
                return f(*a, **k)
            finally:
                times[name] = times.get(name, 0.0) + time.monotonic() - t0
        setattr(owner, name, timed)

    for name in dir(mods["sqld"]):
        if name.startswith("dry_") and callable(getattr(mods["sqld"], name)):
            wrap(mods["sqld"], name)
    for name in PLAN_STEPS:
        if hasattr(mods["plan"], name):
            wrap(mods["plan"], name)


def worker(code: Path, schema: str, samples: int, db_url: str) -> None:
    """One process's part, printed as JSON: `samples` > 0 records them (and migrates the
    schema first); 0 times one dry_plan."""
    mods = _tree(code)
    import psycopg

    url = psycopg.conninfo.make_conninfo(db_url, options=f"-c search_path={schema}")
    if samples:
        with psycopg.connect(url, autocommit=True) as conn:
            mods["migrate"].migrate(conn)
            rnd = random.Random(36)  # the same samples in both trees' schemas
            t0 = time.monotonic()
            mods["bench"].record(conn, mods["bench"].VIEW_BATCH, [rnd.randbytes(32) for _ in range(samples)],
                                 [40] * samples)
            print(json.dumps({"record_s": round(time.monotonic() - t0, 1)}))
        return
    times: dict[str, float] = {}
    _timed_steps(mods, times)
    with tempfile.TemporaryDirectory() as work:
        spec = mods["spec"].load_spec(mods["bench"].spec_file(Path(work), "dsb-dry", "imagefolder", "copy",
                                                             mods["bench"].VIEW_BATCH))
    fmt = mods["api"].resolve_format(spec)
    with psycopg.connect(url) as conn, conn.transaction():
        frozen = mods["sqld"].class_map(conn, spec.name)
        t0 = time.monotonic()
        d = mods["plan"].dry_plan(conn, spec, fmt, frozen)
        total = time.monotonic() - t0
    print(json.dumps({"counts_s": round(total, 3), "steps": {k: round(v, 3) for k, v in times.items()},
                      "samples": d.samples, "load_1m": os.getloadavg()[0]}))


def _run(code: Path, schema: str, samples: int, db_url: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--worker", str(code), schema, str(samples)],
                         capture_output=True, text=True, cwd=code, env={**os.environ, "HOARD_BENCH_DB": db_url})
    if res.returncode:
        raise SystemExit(f"{code}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _commit(code: Path) -> str:
    return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="dry runs of each tree (default 3)")
    ap.add_argument("--against", type=Path, help="a checkout of another commit, timed alternately with this one")
    ap.add_argument("--results", type=Path, help="directory for the JSON (default bench/results)")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        code, schema, samples = args.worker
        return worker(Path(code), schema, int(samples), os.environ["HOARD_BENCH_DB"])

    sys.path.insert(0, str(HERE))
    from _common import report

    from hoardfs.base import config
    from hoardfs.sql.cluster import ensure_database

    db_url = os.environ.get("HOARD_TEST_DATABASE_URL") or config.load(REPO / "hoard.toml").test_database_url
    ensure_database(db_url)
    import psycopg

    trees = {"this": REPO} | ({"against": args.against.resolve()} if args.against else {})
    schemas = {k: f"bench_{uuid.uuid4().hex[:8]}" for k in trees}
    data: dict = {"samples": args.samples, "runs": args.runs,
                  "trees": {k: {"commit": _commit(code), "runs": []} for k, code in trees.items()}}
    with psycopg.connect(db_url, autocommit=True) as admin:
        try:
            for k, code in trees.items():
                admin.execute(f"CREATE SCHEMA {schemas[k]}")
                data["trees"][k]["setup"] = _run(code, schemas[k], args.samples, db_url)
            for _ in range(args.runs):
                for k, code in reversed(trees.items()):
                    out = _run(code, schemas[k], 0, db_url)
                    data["trees"][k]["runs"].append(out)
                    print(f"{k} ({data['trees'][k]['commit']}): counts {out['counts_s']:.2f} s {out['steps']}",
                          flush=True)
        finally:
            for s in schemas.values():
                admin.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    rows = []
    for k, t in data["trees"].items():
        counts = sorted(r["counts_s"] for r in t["runs"])
        t["median_counts_s"] = counts[len(counts) // 2]
        steps = {s for r in t["runs"] for s in r["steps"]}
        t["median_steps"] = {s: sorted(r["steps"].get(s, 0.0) for r in t["runs"])[len(counts) // 2] for s in steps}
        top = sorted(t["median_steps"].items(), key=lambda kv: -kv[1])[:8]
        rows.append((f"{k} ({t['commit']})", f"counts median {t['median_counts_s']:.2f} s of {counts}; "
                     + ", ".join(f"{s} {v:.2f}" for s, v in top)))
    report("dataset dry-run steps", rows, data, results=args.results)


if __name__ == "__main__":
    main()
