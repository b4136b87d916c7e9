"""`hoard-builtin canny IN OUT [--low N] [--high N]`: each input image → `edges/<sha256>.png`,
OpenCV's Canny edge map of its grey image (EXIF orientation applied; 0 or 255 per pixel), and
one record of `canny.jsonl` per input: `{"sha256", "status": "ok", "edge_ratio"}` (the share
of edge pixels, 6 decimals), or `"status": "failed"` with `edge_ratio` null for an input that
is not a decodable image (and a line on stderr). It runs on the CPU here, standing in for a
GPU program behind the gate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from hoardfs.jobs.actions.builtin import _image, _io


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--low", type=int, default=100, help="the lower hysteresis threshold (0–1000)")
    p.add_argument("--high", type=int, default=200, help="the upper hysteresis threshold (0–1000, ≥ low)")


def edges(im: Image.Image, low: int, high: int) -> np.ndarray:
    grey = np.asarray(_image.rgb(im).convert("L"), dtype=np.uint8)
    return cv2.Canny(grey, low, high)


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    if not (0 <= args.low <= args.high <= 1000):
        raise _io.WorkerError(f"--low {args.low} --high {args.high}: give 0 ≤ low ≤ high ≤ 1000")
    cv2.setNumThreads(1)  # the same result on any machine, and no oversubscribed cores
    records: list[dict[str, Any]] = []
    for inp in _io.inputs(input_root):
        try:
            im, _ = _image.open_image(inp.path)
        except _image.Undecodable as why:
            _io.warn(inp.rel, str(why))
            records.append({"sha256": inp.sha256, "status": "failed", "edge_ratio": None})
            continue
        e = edges(im, args.low, args.high)
        _io.write_bytes(output_root, f"edges/{inp.sha256}.png", _image.png(Image.fromarray(e)))
        ratio = round(float(np.count_nonzero(e)) / e.size, 6) if e.size else 0.0
        records.append({"sha256": inp.sha256, "status": "ok", "edge_ratio": ratio})
    _io.write_jsonl(output_root, "canny.jsonl", records)
    return 0
