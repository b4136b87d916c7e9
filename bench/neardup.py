"""Near-duplicate groups: recall per transform, images hashed per second per core, and the
grouping's time at scale.

    python bench/neardup.py [--images DIR] [--rounds 3] [--scale 100000,1000000]
    python bench/neardup.py --render      # docs/benchmarks.md's section from the JSON

The set is made here (tests/near_variants.py) from a few real pictures — `--images`, by
default ../shared/realdata/images (drawn pictures when it is missing) —: 20 distinct 640×480
JPEG originals (4 pictures whole and 4 windows of each), and of each its resized (½), quality-60,
10 %-cropped, mirrored, 90°-turned and EXIF-rotated copies. Every file is hashed by the action's
own code (`near_dup_hash.hashes`), with and without JPEG draft decoding; images per second per
core = files / the process's CPU seconds (one process, one thread). Recall of a transform = the
share of originals whose copy `hoardfs.sql.neardup.group` puts in the original's group, at thresholds
0–16 (the default's row is the goal's); `false joins` = groups holding two originals.

Scale: `group` over N hashes (a quarter random, the rest 1, 3 and 6 bits from them: every value
has near neighbours; real pHashes are less even, which makes more candidates) at the default
threshold, mirrored pHashes included — its seconds and peak memory (RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, report, run_timed, write_doc_section

from hoardfs.jobs.actions.builtin.near_dup_hash import hashes
from hoardfs.sql import neardup
from tests.helpers import REALDATA
from tests.near_variants import TRANSFORMS, write_set

BEGIN = "<!-- bench/neardup.py: begin (written by `bench/neardup.py --render`; do not edit) -->"
END = "<!-- bench/neardup.py: end -->"
RESULT = RESULTS / "neardup-default.json"
#: the transforms whose recall has a goal: ≥ 0.95 at the default threshold
GOALS = ("resize", "quality60", "exif_rotated")


def _hash_all(files: list[Path], draft: bool) -> tuple[dict[Path, dict[str, int]], float, float]:
    """(each file's hashes as ints, CPU seconds, wall seconds)."""
    c0, w0 = time.process_time(), time.monotonic()
    out = {p: {k: int(v, 16) for k, v in hashes(p, draft=draft).items()} for p in files}
    return out, time.process_time() - c0, time.monotonic() - w0


def _recall(made: dict[str, dict[str, Path]], h: dict[Path, dict[str, int]], t: int) -> dict[str, object]:
    files = [p for d in made.values() for p in d.values()]
    pos = {p: i for i, p in enumerate(files)}
    ph = np.array([h[p]["phash"] for p in files], np.uint64)
    pf = np.array([h[p]["phash_flip"] for p in files], np.uint64)
    grouping = neardup.group(ph, pf, t)
    group_of = {p: gi for gi, g in enumerate(grouping.groups) for p in g}
    rec = {}
    for kind in TRANSFORMS:
        hit = [group_of.get(pos[d["original"]], -1) == group_of.get(pos[d[kind]], -2) for d in made.values()]
        rec[kind] = sum(hit) / len(hit)
    origins = [pos[d["original"]] for d in made.values()]
    false = sum(1 for g in grouping.groups if sum(1 for o in origins if o in set(g)) > 1)
    return {"recall": rec, "false_joins": false}


def _clustered(n: int, seed: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(-2**63, 2**63 - 1, size=n // 4, dtype=np.int64).view(np.uint64)
    out = [base]
    for k in (1, 3, 6):
        v = base.copy()
        for _ in range(k):
            v ^= np.uint64(1) << rng.integers(0, 64, size=len(base)).astype(np.uint64)
        out.append(v)
    return np.concatenate(out)


def _scale(n: int, t: int) -> dict[str, float]:
    ph = _clustered(n)
    pf = _clustered(n, seed=41)
    c0, t0 = time.process_time(), time.monotonic()
    g = neardup.group(ph, pf, t)
    took, cpu = time.monotonic() - t0, time.process_time() - c0
    return {"n": n, "threshold": t, "seconds": round(took, 2), "cpu_s": round(cpu, 2), "groups": len(g.groups),
            "plan": [list(s) for s in neardup.plan(len(np.unique(ph)), t)],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=REALDATA / "images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", default="100000,1000000", help="numbers of hashes to group ('' none)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md's section from the JSON")
    args = ap.parse_args()
    if args.render:
        render()
        return
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-neardup-", dir="/var/tmp"))
    try:
        made = write_set(work, args.images if args.images.is_dir() else None)
        files = sorted(p for d in made.values() for p in d.values())
        _hash_all(files[:4], True)  # imports and caches warm
        speed: dict[str, dict[str, float]] = {}
        hashed: dict[Path, dict[str, int]] = {}
        for draft in (True, False):
            cpu, wall = [], []
            for _ in range(args.rounds):
                hashed_now, c, w = _hash_all(files, draft)
                cpu.append(c)
                wall.append(w)
                if draft:
                    hashed = hashed_now
            speed["draft" if draft else "full_decode"] = {
                "files": len(files), "cpu_s_median": round(statistics.median(cpu), 3),
                "images_per_s_per_core": round(len(files) / statistics.median(cpu), 1),
                "wall_s_median": round(statistics.median(wall), 3)}
        by_t = {t: _recall(made, hashed, t) for t in range(0, neardup.MAX_THRESHOLD + 1, 2)}
        distances = {kind: sorted(bin(hashed[d["original"]]["phash"] ^ hashed[d[kind]]["phash"]).count("1")
                                  for d in made.values()) for kind in TRANSFORMS}
        flip_distances = sorted(bin(hashed[d["original"]]["phash_flip"] ^ hashed[d["flip"]]["phash"]).count("1")
                                for d in made.values())
        scale = [_scale(int(n), neardup.DEFAULT_THRESHOLD) for n in args.scale.split(",") if n]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    default = by_t[neardup.DEFAULT_THRESHOLD]
    data = {"images_source": "realdata" if args.images.is_dir() else "drawn", "originals": len(made),
            "default_threshold": neardup.DEFAULT_THRESHOLD, "speed": speed,
            "recall_by_threshold": {str(t): v for t, v in by_t.items()}, "phash_distances": distances,
            "flip_distance_to_phash_flip": flip_distances, "scale": scale,
            "goals_met": {"recall": all(default["recall"][k] >= 0.95 for k in GOALS),  # type: ignore[index]
                          "speed": speed["draft"]["images_per_s_per_core"] >= 200}}
    rows = [(f"{k} images/s/core", str(v["images_per_s_per_core"])) for k, v in speed.items()]
    rows += [(f"recall {k} (t={neardup.DEFAULT_THRESHOLD})", f"{v:.2f}")
             for k, v in default["recall"].items()]  # type: ignore[union-attr]
    rows += [(f"group {s['n']:,} hashes", f"{s['cpu_s']} CPU s ({s['seconds']} s wall), {s['peak_rss_mib']} MiB peak")
             for s in scale]
    report("near-duplicate hashes and groups", rows, data)
    if not any(a != "--images" and a.startswith("--") for a in sys.argv[1:]):
        render()  # the default run's JSON is the one the docs show


def render() -> None:
    doc = json.loads(RESULT.read_text())
    m = doc["machine"]
    t = doc["default_threshold"]
    rec = doc["recall_by_threshold"]
    kinds = list(rec[str(t)]["recall"])
    lines = [BEGIN, "", "## Near-duplicate groups", "",
             f"`bench/neardup.py` at {doc['commit']}, {doc['when'][:10]}: {doc['originals']} distinct 640×480 JPEG "
             f"originals made from the {doc['images_source']} pictures and six copies of each "
             "(tests/near_variants.py), hashed by the action's own code. **The machine was loaded** (other runs beside "
             f"it): {m['cpus']} CPUs, 1-minute load {m['loadavg_1m_at_start']:.1f} at the start and "
             f"{m['loadavg_1m_at_end']:.1f} at the end — images per second per core are counted in the process's "
             "own CPU seconds, which a loaded machine changes less than the wall time. Raw JSON: "
             "`bench/results/neardup-default.json`.", "",
             "| decoding | images/s per core | goal |", "|---|---|---|"]
    for k, v in doc["speed"].items():
        lines.append(f"| {'JPEG draft (the action)' if k == 'draft' else 'whole JPEG'} | "
                     f"{v['images_per_s_per_core']} | {'≥ 200' if k == 'draft' else ''} |")
    lines += ["", f"Recall per transform (the share of originals grouped with their copy) by threshold; "
              f"the default is {t}:", "",
              "| threshold | " + " | ".join(kinds) + " | false joins |", "|---" * (len(kinds) + 2) + "|"]
    for th, v in sorted(rec.items(), key=lambda kv: int(kv[0])):
        bold = "**" if int(th) == t else ""
        lines.append(f"| {bold}{th}{bold} | " + " | ".join(f"{v['recall'][k]:.2f}" for k in kinds)
                     + f" | {v['false_joins']} |")
    dist = doc["phash_distances"]
    lines += ["", "pHash distance of each copy to its original (sorted): "
              + "; ".join(f"{k} {min(v)}–{max(v)} (median {statistics.median(v):g})" for k, v in dist.items())
              + f"; a mirrored copy's pHash to the original's mirrored pHash {min(doc['flip_distance_to_phash_flip'])}–"
              f"{max(doc['flip_distance_to_phash_flip'])}. A 90° turn without an EXIF tag is not found (no hash of "
              "the turned image is kept); a 10 % crop needs a larger threshold (its distances above), where unrelated "
              "pictures begin to join (false joins).", ""]
    if doc["scale"]:
        lines += ["Grouping at scale (`hoardfs.sql.neardup.group`, mirrored pHashes included, default threshold; hashes a "
                  "quarter random and the rest 1, 3 and 6 bits from them):", "",
                  "| hashes | CPU seconds (one core) | wall seconds (loaded) | peak RSS | substrings (shift, bits, radius) |",
                  "|---|---|---|---|---|"]
        for s in doc["scale"]:
            lines.append(f"| {s['n']:,} | {s['cpu_s']} | {s['seconds']} | {s['peak_rss_mib']} MiB | "
                         + ", ".join(f"({a}, {b}, {c})" for a, b, c in s["plan"]) + " |")
    goals = doc["goals_met"]
    lines += ["", f"Goals (≥ 0.95 recall for resize, re-encode and EXIF-rotated; ≥ 200 images/s per core): "
              f"recall {'met' if goals['recall'] else 'NOT met'}, speed {'met' if goals['speed'] else 'NOT met'}.",
              "", END]
    write_doc_section(BEGIN, END, lines)


if __name__ == "__main__":
    run_timed(main)
