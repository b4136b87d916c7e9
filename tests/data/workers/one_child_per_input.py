"""A team's worker as hoardfs finds it (written once, never changed for hoardfs): for every
file under INPUT_ROOT it writes OUTPUT_ROOT/made/<stem>.txt — the file's name and its first
bytes reversed — and one line {"name": <stem>, "bytes": <size>} to OUTPUT_ROOT/sizes.jsonl.

    python one_child_per_input.py INPUT_ROOT OUTPUT_ROOT
"""

import json
import os
import sys

inp, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "made"), exist_ok=True)
with open(os.path.join(out, "sizes.jsonl"), "w") as sizes:
    for d, _dirs, files in sorted(os.walk(inp)):
        for f in sorted(files):
            stem = f.split(".")[0]
            with open(os.path.join(d, f), "rb") as src:
                data = src.read()
            with open(os.path.join(out, "made", stem + ".txt"), "wb") as child:
                child.write(b"made from " + stem.encode() + b": " + data[:64][::-1])
            sizes.write(json.dumps({"name": stem, "bytes": len(data)}) + "\n")
