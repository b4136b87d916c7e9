"""Two cProfile dumps side by side: the cumulative and own seconds of the functions whose
`file:line(name)` contains one of the patterns, matched by module path and name (a function
that moved between lines, or from `datasets/` to `hoardfs/datasets/`, is one row), largest
first in A — the A/B of a benchmark's `--cprofile` dumps from two commits.

    python bench/profile_compare.py A.prof B.prof [--match PATTERN ...] [--top 30] [--json OUT]

`--json OUT` writes the rows (and both dumps' totals) for bench/results/. Under cProfile each
Python call costs more than it does without it: compare the two columns, not a column with an
unprofiled run's wall time.
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
from pathlib import Path


def _key(path: str, name: str) -> str:
    """A function's name across trees: its module's path from the package root on (`hoardfs/`
    dropped; a path outside the project keeps its file name), and its name."""
    m = re.search(r"(?:hoardfs/)?((?:datasets|sql|fsd|jobs|cli|base|adapters|gui)/.*)$", path)
    return f"{m.group(1) if m else Path(path).name}:{name}"


def table(prof: Path) -> tuple[dict[str, tuple[float, float, int]], float]:
    """{function key: (cumulative s, own s, calls)} of a dump, and its total seconds."""
    st = pstats.Stats(str(prof))
    out: dict[str, tuple[float, float, int]] = {}
    for (path, _line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        k = _key(path, name)
        c0, t0, n0 = out.get(k, (0.0, 0.0, 0))
        out[k] = (max(c0, ct), t0 + tt, n0 + nc)
    return out, st.total_tt  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--match", nargs="*", default=["datasets/", "sql/", "fsd/"])
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    (ta, tot_a), (tb, tot_b) = table(args.a), table(args.b)
    keys = [k for k in ta.keys() | tb.keys() if any(p in k for p in args.match)]
    keys.sort(key=lambda k: -max(ta.get(k, (0, 0, 0))[0], tb.get(k, (0, 0, 0))[0]))
    rows = []
    print(f"{'function':<64} {'A cum':>8} {'B cum':>8} {'A own':>8} {'B own':>8}")
    for k in keys[:args.top]:
        a, b = ta.get(k, (0.0, 0.0, 0)), tb.get(k, (0.0, 0.0, 0))
        rows.append({"function": k, "a_cum_s": round(a[0], 3), "b_cum_s": round(b[0], 3),
                     "a_own_s": round(a[1], 3), "b_own_s": round(b[1], 3), "a_calls": a[2], "b_calls": b[2]})
        print(f"{k[-64:]:<64} {a[0]:8.2f} {b[0]:8.2f} {a[1]:8.2f} {b[1]:8.2f}")
    print(f"{'total':<64} {tot_a:8.2f} {tot_b:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "a_total_s": round(tot_a, 3),
                                         "b_total_s": round(tot_b, 3), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
