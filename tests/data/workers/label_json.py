"""A worker reading a JSON of labels per input: in/labels/<stem>.json ({sha256, path,
labels: {key: [values]}}) beside in/images/<stem>.png; writes out/classes.jsonl (sha, key,
value): the values of its `class` label joined by `,`. Exits 2 when a JSON names another file."""

import json
import os
import sys

inp, out = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "classes.jsonl"), "w", encoding="utf-8") as f:
    for name in sorted(os.listdir(os.path.join(inp, "images"))):
        stem = os.path.splitext(name)[0]
        with open(os.path.join(inp, "labels", stem + ".json"), encoding="utf-8") as g:
            doc = json.load(g)
        if doc["path"] != f"images/{name}":
            sys.exit(f"labels/{stem}.json names {doc['path']!r}, not images/{name}")
        f.write(json.dumps({"sha": doc["sha256"], "key": "json_classes",
                            "value": ",".join(doc["labels"].get("class", []))}) + "\n")
