"""bench/scale.py's ratios judged side by side: two kept stores (`bench/scale.py --keep`, a small and a
large size) re-timed in turn, round after round, so that a machine whose speed drifts (this VM's
did by 10–25 % within an hour, and by 2× between days) meets both sizes alike.

    python bench/scale_turns.py --small DIR --large DIR [--rounds 3] [--only NAMES] [--label L]
    python bench/scale_turns.py --render [bench/results/scale-turns-<label>.json]

Each round runs `bench/scale.py --only NAMES --work DIR` on the small store and on the large one
(each a process of its own, each size settled first as scale.py settles it), the small one first
in odd rounds, the large one in even rounds. Per command and
round, the ratio of the large store's cost per unit of work to the small one's (per object for
commands whose work grows with the store, per view entry, per node; absolute for fixed work —
scale.py's units), then the median of the rounds' ratios and their range; a goal (≤ 1.25×) is met
when the median is within it. Raw JSON: bench/results/scale-turns-<label>.json, every round's
scale.py JSON inside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, RESULTS, _commit, _machine, run_timed, write_doc_section
from bench.scale import GOAL_RATIO, _pretty, _units

#: what bench/scale.py's run left over 1.25× against one of its 1 M measurements, and the
#: cheap commands beside them; the store's alone (the write-intent and the GUI need a kept cluster);
#: `index restore` restores the copy `index backup` makes first
ONLY = "put (one batch),put (one batch; index cached),health --json,info,check,index backup,index rebuild,index restore,mount"
BEGIN, END = "<!-- bench/scale_turns.py: begin -->", "<!-- bench/scale_turns.py: end -->"


def run_rounds(small: Path, large: Path, rounds: int, only: str, label: str) -> Path:
    got: list[dict] = []
    done: list[Path] = []  # each round's own JSON, removed once this run's holds them all
    t0 = time.monotonic()
    for n in range(1, rounds + 1):
        pair = [("small", small), ("large", large)]
        for which, work in pair if n % 2 else pair[::-1]:  # (each size first in every other round)
            tag = f"turns-{label}-{which}-r{n}"
            print(f"== round {n}: {which} ({work})", flush=True)
            subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--only", only, "--work", str(work),
                            "--label", tag], check=True, cwd=REPO)
            path = RESULTS / f"scale-only-{tag}.json"
            got.append({"round": n, "which": which, "result": json.loads(path.read_text())})
            done.append(path)
    doc = {"benchmark": "scale turns", "argv": sys.argv[1:], "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": _commit(), "machine": _machine(), "only": only, "rounds": rounds,
           "seconds": round(time.monotonic() - t0), "runs": got}
    out = RESULTS / f"scale-turns-{label}.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for path in done:
        path.unlink()
    print(f"{out.relative_to(REPO)} written", flush=True)
    return out


def ratios(doc: dict) -> tuple[list[int], list[dict]]:
    """The rounds, and per command (every command any run measured): the work unit, each round's
    small and large seconds and ratio (None where a size lacks it), the median of the rounds
    that have both."""
    by_round: dict[int, dict[str, dict]] = {}
    for run in doc["runs"]:
        by_round.setdefault(run["round"], {})[run["which"]] = run["result"]["sizes"][0]
    rounds = sorted(by_round)
    names = list(dict.fromkeys(k for pair in by_round.values() for size in pair.values() for k in size["commands"]))
    out = []
    for name in names:
        rows, work = [], None
        for n in rounds:
            s, lg = by_round[n].get("small"), by_round[n].get("large")
            cs = s["commands"].get(name) if s else None
            cl = lg["commands"].get(name) if lg else None
            if not cs or not cl:
                rows.append(None)
                continue
            work, us = _units(cs, s)
            _, ul = _units(cl, lg)
            rows.append({"round": n, "small_s": cs["seconds"], "large_s": cl["seconds"],
                         "ratio": (cl["seconds"] / ul) / (cs["seconds"] / us)})
        have = [r for r in rows if r]
        if have:
            out.append({"command": name, "work": work, "rounds": rows, "complete": len(have) == len(rows),
                        "median": statistics.median(r["ratio"] for r in have)})
    return rounds, out


def render(path: Path) -> None:
    doc = json.loads(path.read_text())
    rounds, got = ratios(doc)
    first = {r["round"]: r["which"] for r in reversed(doc["runs"])}  # (the first run of each round)
    sizes = {r["which"]: r["result"]["sizes"][0]["objects"] for r in doc["runs"]}
    a, b = _pretty(sizes["small"]), _pretty(sizes["large"])
    disks = doc["runs"][0]["result"]["disks"]
    cluster = doc["runs"][0]["result"].get("cluster", "")
    over = [g["command"] for g in got if g["median"] > GOAL_RATIO]
    lines = [BEGIN, "", f"`python bench/scale_turns.py` at {doc['commit']}, {doc['when'][:10]} ({path.relative_to(REPO)}, "
             f"{doc['seconds'] / 60:.0f} min): a {a} and a {b} store ({disks}; cluster: {cluster}) re-timed in turn, "
             f"{len(rounds)} rounds, each size settled before its measurements. The ratio is the {b} store's cost per "
             f"unit of work over the {a} store's in the same round; a goal (≤ {GOAL_RATIO}×) is judged by the median "
             "of the rounds (— : a size did not measure it that round).",
             "", "| command | work | " + " | ".join(f"round {n} ({_pretty(sizes[first[n]])} first): {a} s / {b} s "
                                                    "(ratio)" for n in rounds) + " | median ratio |",
             "|" + "---|" * (len(rounds) + 3)]
    for g in got:
        cells = " | ".join(f"{r['small_s']:.2f} / {r['large_s']:.2f} ({r['ratio']:.2f}×)" if r else "—"
                           for r in g["rounds"])
        med = f"{g['median']:.2f}×" + ("" if g["complete"] else f" ({sum(1 for r in g['rounds'] if r)} rounds)")
        lines.append(f"| {g['command']} | {g['work']} | {cells} | {f'**{med}**' if g['median'] > GOAL_RATIO else med} |")
    lines += ["", ("Over the goal by the median: " + ", ".join(over) + ".") if over else
              f"Every command within {GOAL_RATIO}× by the median of the rounds.", "", END]
    write_doc_section(BEGIN, END, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=Path, help="the small kept store's --work")
    ap.add_argument("--large", type=Path, help="the large kept store's --work")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=ONLY, help=f"scale.py --only (default: {ONLY})")
    ap.add_argument("--label", default="1m-10m")
    ap.add_argument("--render", nargs="?", const="newest", help="write docs/benchmarks.md's section from a JSON")
    args = ap.parse_args()
    if args.render:
        path = (max(RESULTS.glob("scale-turns-*.json"), key=lambda p: p.stat().st_mtime)
                if args.render == "newest" else Path(args.render).resolve())
        render(path)
    elif args.small and args.large:
        render(run_rounds(args.small.resolve(), args.large.resolve(), args.rounds, args.only, args.label))
    else:
        ap.error("--small DIR --large DIR, or --render")


if __name__ == "__main__":
    run_timed(main)
