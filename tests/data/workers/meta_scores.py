"""A team's worker with a fixed folder contract: reads in/meta.csv (name, title, author) and
in/images/<name>.png, writes out/scores.csv (file, key, value): each image's pixel count as
`score`, and the title and author it read. Exits 2 when a listed image is missing or not a PNG."""

import csv
import os
import struct
import sys

inp, out = sys.argv[1], sys.argv[2]
with open(os.path.join(inp, "meta.csv"), newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
if not rows or set(rows[0]) != {"name", "title", "author"}:
    sys.exit(f"meta.csv: want the columns name, title, author; got {list(rows[0]) if rows else 'no rows'}")
with open(os.path.join(out, "scores.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["file", "key", "value"])
    for row in rows:
        path = os.path.join(inp, "images", row["name"] + ".png")
        with open(path, "rb") as img:
            head = img.read(24)
        if head[:8] != b"\x89PNG\r\n\x1a\n":
            sys.exit(f"{path}: not a PNG")
        width, height = struct.unpack(">II", head[16:24])
        w.writerow([row["name"], "score", width * height])
        w.writerow([row["name"], "title_read", row["title"]])
        w.writerow([row["name"], "author_read", row["author"]])
