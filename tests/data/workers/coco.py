"""A worker reading COCO annotations: in/annotations.json (images with file_name relative to
the input root, width, height; annotations with bbox [x, y, w, h] in pixels; categories);
writes out/coco.csv (file, key, value): each image's boxes as `name:x,y,w,h` joined by `;`
and its size as `WxH`. Exits 2 when an image's file is missing or its size is not the PNG's."""

import csv
import json
import os
import struct
import sys

inp, out = sys.argv[1], sys.argv[2]
with open(os.path.join(inp, "annotations.json"), encoding="utf-8") as f:
    doc = json.load(f)
names = {c["id"]: c["name"] for c in doc["categories"]}
with open(os.path.join(out, "coco.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["file", "key", "value"])
    for im in doc["images"]:
        with open(os.path.join(inp, im["file_name"]), "rb") as g:
            head = g.read(24)
        if struct.unpack(">II", head[16:24]) != (im["width"], im["height"]):
            sys.exit(f"{im['file_name']}: the annotations' size is not the image's")
        boxes = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        stem = os.path.splitext(os.path.basename(im["file_name"]))[0]
        shown = ";".join(f"{names[a['category_id']]}:" + ",".join(f"{v:g}" for v in a["bbox"]) for a in boxes)
        w.writerow([stem, "coco", shown])
        w.writerow([stem, "coco_size", f"{im['width']}x{im['height']}"])
