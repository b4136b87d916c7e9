"""A team's worker that cannot change: scores every staged input and writes its own files.

    scorer.py INPUT_ROOT OUTPUT_ROOT MODE

Each input file (walked in path order) gets score = (size % 1000) / 1000, rounded to 3 places.
MODE says what the output root gets:

    csv       scores.csv: name,score,passed,note (name: the file's name; passed: true/false)
    jsonl     results/scores.jsonl: {"input": {"file": STEM}, "mask": {"score", "pixels", "box"}, "tags"}
    mapping   map.csv: id,source (id: item0001…, source: the file's name); masks/<id>.png, one
              child per input; scores.csv: id,score
    bad       scores.csv as csv, but the second row's score is "n/a"
"""

import json
import os
import sys

inp, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
files = []
for d, _, names in os.walk(inp):
    for n in names:
        p = os.path.join(d, n)
        files.append((os.path.relpath(p, inp), p))
files.sort()


def score(path):
    return round((os.path.getsize(path) % 1000) / 1000, 3)


def csv_scores(bad_row=None):
    with open(os.path.join(out, "scores.csv"), "w") as f:
        f.write("name,score,passed,note\n")
        for i, (_, p) in enumerate(files):
            s = score(p)
            shown = "n/a" if i == bad_row else str(s)
            f.write(f"{os.path.basename(p)},{shown},{'true' if s > 0.5 else 'false'},size {os.path.getsize(p)}\n")


if mode == "csv":
    csv_scores()
elif mode == "bad":
    csv_scores(bad_row=1)
elif mode == "jsonl":
    os.makedirs(os.path.join(out, "results"))
    with open(os.path.join(out, "results", "scores.jsonl"), "w") as f:
        for _, p in files:
            stem = os.path.splitext(os.path.basename(p))[0]
            f.write(json.dumps({"input": {"file": stem},
                                "mask": {"score": score(p), "pixels": os.path.getsize(p), "box": [1, 2, 3.5, 4]},
                                "tags": ["scored", mode]}) + "\n")
elif mode == "mapping":
    os.makedirs(os.path.join(out, "masks"))
    with open(os.path.join(out, "map.csv"), "w") as m, open(os.path.join(out, "scores.csv"), "w") as s:
        m.write("id,source\n")
        s.write("id,score\n")
        for i, (_, p) in enumerate(files, 1):
            item = f"item{i:04d}"
            m.write(f"{item},{os.path.basename(p)}\n")
            s.write(f"{item},{score(p)}\n")
            with open(p, "rb") as src, open(os.path.join(out, "masks", item + ".png"), "wb") as dst:
                dst.write(b"mask of " + src.read(32))
else:
    sys.exit(f"scorer.py: unknown mode {mode!r}")
