"""A training-style worker reading YOLO labels: in/classes.txt, in/images/<stem>.png and
in/labels/<stem>.txt (`class cx cy w h`, fractions of the image); writes out/yolo.csv (file,
key, value): each image's lines as `<class name> cx cy w h` joined by `|`. Exits 2 on a label
file missing, a class id out of range or a number outside 0..1."""

import csv
import os
import sys

inp, out = sys.argv[1], sys.argv[2]
with open(os.path.join(inp, "classes.txt"), encoding="utf-8") as f:
    classes = f.read().split("\n")[:-1]
with open(os.path.join(out, "yolo.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["file", "key", "value"])
    for name in sorted(os.listdir(os.path.join(inp, "images"))):
        stem = os.path.splitext(name)[0]
        with open(os.path.join(inp, "labels", stem + ".txt"), encoding="utf-8") as g:
            lines = g.read().splitlines()
        shown = []
        for line in lines:
            cid, *nums = line.split()
            if not 0 <= int(cid) < len(classes) or len(nums) != 4 or not all(0 <= float(x) <= 1 for x in nums):
                sys.exit(f"labels/{stem}.txt: bad line {line!r}")
            shown.append(" ".join([classes[int(cid)], *nums]))
        w.writerow([stem, "yolo", "|".join(shown)])
