"""Sum up a chaos run: `python -m tests.chaos.report FILE` (the JSON lines `make chaos` wrote)."""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    entries = [json.loads(line) for line in open(path) if line.strip()]
    failed = [r for r in entries if "failed" in r]
    runs = [r for r in entries if "failed" not in r]
    for r in failed:
        print(f"seed {r['seed']} FAILED: {r['failed'].splitlines()[0]}")
    faults: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for r in runs:
        faults.update(r["faults"])
        for key, n in r["faults"].items():  # "powercut during put" → powercut; "no fault, put" → none
            kinds["none" if key.startswith("no fault") else key.split()[0]] += n
    power = sum(1 for r in runs if r.get("power"))
    print(f"{len(failed)} seed{'s' if len(failed) > 1 else ''} failed" if failed else "no seed failed")
    print(f"{len(runs)} seeds passed ({power} power worlds), {sum(r['steps'] for r in runs)} steps, "
          f"{sum(r['acked'] for r in runs)} objects acknowledged and read back")
    print("  by fault: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    for kind, n in sorted(faults.items()):
        print(f"  {n:5d}  {kind}")


if __name__ == "__main__":
    main(sys.argv[1])
