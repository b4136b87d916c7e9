"""Sum up a chaos run: `python -m tests.chaos.report FILE` (the JSON lines `make chaos` wrote)."""

from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    faults: Counter[str] = Counter()
    for r in runs:
        faults.update(r["faults"])
    print(f"{len(runs)} seeds passed, {sum(r['steps'] for r in runs)} steps, "
          f"{sum(r['acked'] for r in runs)} objects acknowledged and read back")
    for kind, n in sorted(faults.items()):
        print(f"  {n:5d}  {kind}")


if __name__ == "__main__":
    main(sys.argv[1])
