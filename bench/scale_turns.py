"""Issue 37's ratios judged side by side: two kept stores (`bench/scale.py --keep`, a small and a
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

from bench._common import REPO, RESULTS, _commit, _machine, run_timed, write_doc_section  # noqa: E402
from bench.scale import GOAL_RATIO, _pretty, _units  # noqa: E402

#: what issue 37's run left over 1.25× against one of its 1 M measurements (session 40), and the
#: cheap commands beside them; the store's alone (the write-intent and the GUI need a kept cluster);
#: `index restore` restores the copy `index backup` makes first
ONLY = "put (one batch),health --json,info,check,index backup,index rebuild,index restore,mount"
BEGIN, END = "<!-- bench/scale_turns.py: begin -->", "<!-- bench/scale_turns.py: end -->"


def run_rounds(small: Path, large: Path, rounds: int, only: str, label: str) -> Path:
    got: list[dict] = []
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
            path.unlink()  # (kept inside this run's JSON)
    doc = {"benchmark": "scale turns", "argv": sys.argv[1:], "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": _commit(), "machine": _machine(), "only": only, "rounds": rounds,
           "seconds": round(time.monotonic() - t0), "runs": got}
    out = RESULTS / f"scale-turns-{label}.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{out.relative_to(REPO)} written", flush=True)
    return out


def ratios(doc: dict) -> list[dict]:
    """Per command: the work unit, each round's small and large seconds and ratio, the median ratio."""
    by_round: dict[int, dict[str, dict]] = {}
    for run in doc["runs"]:
        by_round.setdefault(run["round"], {})[run["which"]] = run["result"]["sizes"][0]
    names = list(next(iter(by_round.values()))["small"]["commands"])
    out = []
    for name in names:
        rows = []
        for n, pair in sorted(by_round.items()):
            s, lg = pair["small"], pair["large"]
            cs, cl = s["commands"].get(name), lg["commands"].get(name)
            if not cs or not cl:
                continue
            work, us = _units(cs, s)
            _, ul = _units(cl, lg)
            rows.append({"round": n, "small_s": cs["seconds"], "large_s": cl["seconds"],
                         "ratio": (cl["seconds"] / ul) / (cs["seconds"] / us)})
        if rows:
            out.append({"command": name, "work": work, "rounds": rows,
                        "median": statistics.median(r["ratio"] for r in rows),
                        "sizes": (by_round[1]["small"]["objects"], by_round[1]["large"]["objects"])})
    return out


def render(path: Path) -> None:
    doc = json.loads(path.read_text())
    got = ratios(doc)
    a, b = (_pretty(n) for n in got[0]["sizes"])
    disks = doc["runs"][0]["result"]["disks"]
    over = [g["command"] for g in got if g["median"] > GOAL_RATIO]
    lines = [BEGIN, "", f"`python bench/scale_turns.py` at {doc['commit']} ({path.relative_to(REPO)}, "
             f"{doc['seconds'] / 60:.0f} min): a {a} and a {b} store ({disks}) re-timed in turn, {doc['rounds']} "
             f"rounds, each size settled before its measurements. The ratio is the {b} store's cost per unit of work "
             f"over the {a} store's in the same round; a goal (≤ {GOAL_RATIO}×) is judged by the median of the rounds.",
             "", "| command | work | " + " | ".join(f"round {r['round']}: {a} s / {b} s (ratio)"
                                                    for r in got[0]["rounds"]) + " | median ratio |",
             "|" + "---|" * (len(got[0]["rounds"]) + 3)]
    for g in got:
        cells = " | ".join(f"{r['small_s']:.2f} / {r['large_s']:.2f} ({r['ratio']:.2f}×)" for r in g["rounds"])
        med = f"**{g['median']:.2f}×**" if g["median"] > GOAL_RATIO else f"{g['median']:.2f}×"
        lines.append(f"| {g['command']} | {g['work']} | {cells} | {med} |")
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
