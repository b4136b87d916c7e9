"""A worker making one child per input image: out/crops/<stem>_crop.png, the image's top-left
quarter (Pillow)."""

import os
import sys

from PIL import Image

inp, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "crops"), exist_ok=True)
for name in sorted(os.listdir(inp)):
    with Image.open(os.path.join(inp, name)) as im:
        w, h = im.size
        im.crop((0, 0, max(1, w // 2), max(1, h // 2))).save(
            os.path.join(out, "crops", os.path.splitext(name)[0] + "_crop.png"))
