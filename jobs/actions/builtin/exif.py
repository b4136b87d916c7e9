"""`hoard-builtin exif IN OUT`: for each input image, records of `exif.jsonl` — one per label:
`{"sha256", "key", "value"}` with keys `image.format`, `image.width`, `image.height` (as
stored), `exif.orientation` (1–8) and `exif.make`, `exif.model`, `exif.datetime_original`,
`exif.lens_model`, `exif.software` when the file has them. EXIF text comes from anywhere:
control characters and bidirectional overrides are taken out, values cut at 200 characters."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from PIL import ExifTags

from hoardfs.jobs.actions.builtin import _image, _io

#: EXIF tags read (IFD0 and the Exif IFD) → the label key
TAGS = {ExifTags.Base.Make: "exif.make", ExifTags.Base.Model: "exif.model",
        ExifTags.Base.Software: "exif.software", ExifTags.Base.DateTimeOriginal: "exif.datetime_original",
        ExifTags.Base.LensModel: "exif.lens_model"}
MAX_VALUE = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return _UNSAFE.sub("", str(value)).strip()[:MAX_VALUE]


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def labels(raw: Any) -> dict[str, str]:
    out = {"image.format": clean(raw.format or ""), "image.width": str(raw.width), "image.height": str(raw.height)}
    exif = raw.getexif()
    orientation = exif.get(ExifTags.Base.Orientation)
    if isinstance(orientation, int) and 1 <= orientation <= 8:
        out["exif.orientation"] = str(orientation)
    tags = dict(exif.items())
    try:
        tags.update(exif.get_ifd(ExifTags.IFD.Exif))
    except (KeyError, ValueError, TypeError, OSError):
        pass  # a broken Exif IFD: the base tags are still good
    for tag, key in TAGS.items():
        if tag in tags:
            value = clean(tags[tag])
            if value:
                out[key] = value
    return out


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    records: list[dict[str, Any]] = []
    for inp in _io.inputs(input_root):
        try:
            _, raw = _image.open_image(inp.path, transpose=False)
            found = labels(raw)
        except _image.Undecodable as e:
            _io.warn(inp.rel, str(e))
            continue
        except (OSError, ValueError, SyntaxError) as e:  # EXIF parsing of a hostile file
            _io.warn(inp.rel, f"unreadable EXIF: {e}")
            continue
        records.extend({"sha256": inp.sha256, "key": k, "value": v} for k, v in sorted(found.items()))
    _io.write_jsonl(output_root, "exif.jsonl", records)
    return 0
