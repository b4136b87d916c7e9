"""Where a write-intent's time goes in the server, statement by statement (the
100,000-node intent 1.31x from 1 M to 10 M with its block reads flat).

    PGOPTIONS="-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=40 \\
      -c auto_explain.log_analyze=on -c auto_explain.log_buffers=on -c auto_explain.log_timing=off \\
      -c auto_explain.log_nested_statements=on" \\
      python bench/scale.py --only write-intent --work DIR --pg-set ...      # the re-time, explained
    python bench/intent_explain.py DIR/kept-pg/pg/postgres.log --since 'YYYY-MM-DD HH:MM' --label L

Every statement the server ran for longer than auto_explain.log_min_duration after `--since`
(the re-time's own deletion of the rows included, as `DELETE FROM node`): its duration, its
shared buffers hit / read / dirtied / written (a backend writing dirty buffers out itself: the
buffers were full), and the first words of its text. Raw JSON:
bench/results/intent-explain-<label>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from _common import RESULTS

_ENTRY = re.compile(r"^(\d{4}-\d\d-\d\d [\d:.]+) UTC \[\d+\] LOG:  duration: ([\d.]+) ms  plan:\n\s*Query Text: (.*)$",
                    re.M)
_BUFFERS = re.compile(r"Buffers: shared ((?:\w+=\d+ ?)+)")


def statements(log: str, since: str) -> list[dict]:
    """The explained statements logged at or after `since` (the log's own time format)."""
    found = []
    starts = list(_ENTRY.finditer(log))
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        if m.group(1) < since:
            continue
        body = log[m.end():nxt.start() if nxt else len(log)]
        top = _BUFFERS.search(body)  # (the plan's top node: the statement's whole)
        buffers = {k: int(v) for k, v in (kv.split("=") for kv in top.group(1).split())} if top else {}
        found.append({"at": m.group(1), "ms": float(m.group(2)), "query": " ".join(m.group(3).split())[:160],
                      **{f"shared_{k}": v for k, v in buffers.items()}})
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--since", required=True, help="the first time to take, as the log writes it")
    ap.add_argument("--label", required=True)
    args = ap.parse_args()
    rows = statements(args.log.read_text(errors="replace"), args.since)
    if not rows:
        sys.exit(f"{args.log}: no auto_explain entry since {args.since}")
    out = RESULTS / f"intent-explain-{args.label}.json"
    out.write_text(json.dumps({"benchmark": "intent-explain", "argv": sys.argv[1:], "statements": rows}, indent=1) + "\n")
    for r in sorted(rows, key=lambda r: -r["ms"]):
        print(f"{r['ms']:9.1f} ms  hit {r.get('shared_hit', 0):>9,}  read {r.get('shared_read', 0):>7,}  "
              f"written {r.get('shared_written', 0):>6,}  {r['query'][:90]}")
    print(f"{out.relative_to(RESULTS.parent.parent)} written")


if __name__ == "__main__":
    main()
