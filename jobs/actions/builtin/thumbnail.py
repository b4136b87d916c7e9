"""`hoard-builtin thumbnail IN OUT [--size N]`: each input image → `thumbs/<sha256>.jpg`, its
longer side at most N pixels (EXIF orientation applied; never enlarged), JPEG of a fixed quality."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from hoardfs.jobs.actions.builtin import _image, _io


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=256, help="the longer side of a thumbnail, in pixels (16–4096)")


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    if not 16 <= args.size <= 4096:
        raise _io.WorkerError(f"--size {args.size}: give 16–4096 pixels")
    for inp in _io.inputs(input_root):
        try:
            im, _ = _image.open_image(inp.path)
        except _image.Undecodable as e:
            _io.warn(inp.rel, str(e))
            continue
        im = _image.rgb(im)
        im.thumbnail((args.size, args.size), Image.Resampling.LANCZOS)
        _io.write_bytes(output_root, f"thumbs/{inp.sha256}.jpg", _image.jpeg(im))
    return 0
