"""A worker that reads only JPEG files: every in/images/<stem>.jpg must start with the JPEG
signature; writes out/jpegs.csv (file, key, value): each stem, "staged_as", "jpeg". Exits 2
on a file that is not a JPEG."""

import csv
import os
import sys

inp, out = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "jpegs.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["file", "key", "value"])
    for name in sorted(os.listdir(os.path.join(inp, "images"))):
        with open(os.path.join(inp, "images", name), "rb") as g:
            if g.read(3) != b"\xff\xd8\xff" or not name.endswith(".jpg"):
                sys.exit(f"images/{name}: not a JPEG")
        w.writerow([os.path.splitext(name)[0], "staged_as", "jpeg"])
