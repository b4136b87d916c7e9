"""Sum up a chaos run: `python -m tests.chaos.report FILE` (the JSON lines `make chaos` wrote)."""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    faults: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for r in runs:
        faults.update(r["faults"])
        for key, n in r["faults"].items():  # "powercut during put" → powercut; "no fault, put" → none
            kinds["none" if key.startswith("no fault") else key.split()[0]] += n
    power = sum(1 for r in runs if r.get("power"))
    print(f"{len(runs)} seeds passed ({power} power worlds), {sum(r['steps'] for r in runs)} steps, "
          f"{sum(r['acked'] for r in runs)} objects acknowledged and read back")
    print("  by fault: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    for kind, n in sorted(faults.items()):
        print(f"  {n:5d}  {kind}")


if __name__ == "__main__":
    main(sys.argv[1])
