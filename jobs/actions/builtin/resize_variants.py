"""`hoard-builtin resize-variants IN OUT [--preset NAME] [--sizes WxH,…]`: each input image →
one child per size, `variants/<sha256>/<W>x<H>.jpg`, fitted inside W×H (aspect kept, EXIF
orientation applied, never enlarged); `sizes.jsonl` gives each child's real width and height
as two records `{"output_path", "key": "width"|"height", "value"}`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from PIL import Image

from hoardfs.jobs.actions.builtin import _image, _io

#: the named presets (`--preset`); `all` is every one of them, `none` only what --sizes gives
PRESETS = {"small": (320, 320), "medium": (640, 640), "large": (1280, 1280)}
MAX_SIDE = 16384
#: at most this many sizes per run (the contract's a4_scale)
MAX_SIZES = 8
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="all", choices=[*PRESETS, "all", "none"],
                   help="named sizes: " + ", ".join(f"{k}={w}x{h}" for k, (w, h) in PRESETS.items()))
    p.add_argument("--sizes", default="", help="more sizes, WxH separated by commas (e.g. 800x600,100x100)")


def sizes(preset: str, given: str) -> list[tuple[int, int]]:
    """The distinct sizes asked for, sorted (WorkerError naming a bad item)."""
    out = set(PRESETS.values()) if preset == "all" else {PRESETS[preset]} if preset in PRESETS else set()
    for item in (s.strip() for s in given.split(",")):
        if not item:
            continue
        m = _SIZE.fullmatch(item)
        if not m or not all(1 <= int(v) <= MAX_SIDE for v in m.groups()):
            raise _io.WorkerError(f"--sizes: {item!r} is not WxH with sides 1–{MAX_SIDE} (e.g. 800x600)")
        out.add((int(m.group(1)), int(m.group(2))))
    if not out:
        raise _io.WorkerError("no size: give --preset small|medium|large|all or --sizes WxH,…")
    if len(out) > MAX_SIZES:
        raise _io.WorkerError(f"{len(out)} sizes, more than {MAX_SIZES} per run; run the action twice")
    return sorted(out)


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    boxes = sizes(args.preset, args.sizes)
    records: list[dict[str, Any]] = []
    for inp in _io.inputs(input_root):
        try:
            im, _ = _image.open_image(inp.path)
        except _image.Undecodable as e:
            _io.warn(inp.rel, str(e))
            continue
        im = _image.rgb(im)
        for w, h in boxes:
            variant = im.copy()
            variant.thumbnail((w, h), Image.Resampling.LANCZOS)
            rel = f"variants/{inp.sha256}/{w}x{h}.jpg"
            _io.write_bytes(output_root, rel, _image.jpeg(variant))
            records += [{"output_path": rel, "key": "width", "value": str(variant.width)},
                        {"output_path": rel, "key": "height", "value": str(variant.height)}]
    _io.write_jsonl(output_root, "sizes.jsonl", records)
    return 0
