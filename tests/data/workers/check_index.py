"""A worker that reads an index of its inputs — argv[3], JSON Lines (*.jsonl) or a JSON list —
whose records give `file` (relative to the input root), `sha`, `size` (a number), `title` and
`tags`; checks each file's size and sha256 against its record and writes out/checked.jsonl
(sha, key, value). Exits 2 on the first record that does not match its file."""

import hashlib
import json
import os
import sys

inp, out, index = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(inp, index), encoding="utf-8") as f:
    records = [json.loads(line) for line in f] if index.endswith(".jsonl") else json.load(f)
with open(os.path.join(out, "checked.jsonl"), "w", encoding="utf-8") as f:
    for rec in records:
        with open(os.path.join(inp, rec["file"]), "rb") as g:
            data = g.read()
        if not isinstance(rec["size"], int) or rec["size"] != len(data):
            sys.exit(f"{rec['file']}: size {rec['size']!r} in the index, {len(data)} bytes on disk")
        if hashlib.sha256(data).hexdigest() != rec["sha"]:
            sys.exit(f"{rec['file']}: not the content the index names")
        f.write(json.dumps({"sha": rec["sha"], "key": "checked",
                            "value": f"{rec['title']}|{json.dumps(rec['tags'])}"}) + "\n")
