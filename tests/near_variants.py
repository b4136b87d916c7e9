"""Near-duplicate variants of pictures, for tests/test_near_dups.py and bench/neardup.py.

From a few real pictures (../shared/realdata/images when present, else pictures drawn here),
`originals` makes distinct pictures — each source whole and four windows of it, fitted to
640×480 — and `variants` the copies a scraper meets: resized, re-encoded at quality 60,
cropped by 10 %, mirrored, turned 90°, and stored sideways with an EXIF orientation tag
(what a phone writes). Every file is made by this code: nothing is copied from the samples.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

#: the size originals are fitted to (the anchor's measure: imagehash on 640×480 JPEG)
SIZE = (640, 480)
#: the sample files taken as sources (one of each picture: the others are its re-encodings)
SOURCES = ("imageio_chelsea.png", "pillow_flower.jpg", "pillow_hopper.png", "imageio_newtonscradle.gif")


def jpeg(im: Image.Image, quality: int = 90, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def _drawn(seed: int) -> Image.Image:
    """A picture with shapes at places drawn from `seed` (when the real samples are missing)."""
    im = Image.radial_gradient("L").resize(SIZE).convert("RGB")
    d = ImageDraw.Draw(im)
    for k in range(12):
        x, y = (seed * 97 + k * 211) % SIZE[0], (seed * 53 + k * 137) % SIZE[1]
        colour = ((seed * 40 + k * 70) % 256, (k * 90) % 256, (seed * 25) % 256)
        d.ellipse([x, y, x + 60 + k * 7, y + 40 + k * 5], fill=colour)
    return im


def sources(images: Path | None) -> list[Image.Image]:
    """The source pictures: the samples' when `images` holds them, else four drawn ones."""
    if images is not None and all((images / name).is_file() for name in SOURCES):
        out = []
        for name in SOURCES:
            with Image.open(images / name) as im:
                out.append(im.convert("RGB"))
        return out
    return [_drawn(s) for s in range(4)]


def originals(images: Path | None) -> dict[str, bytes]:
    """Distinct pictures (name → JPEG bytes, quality 90, 640×480): each source whole and its
    four 60 % windows (corners), each fitted to SIZE."""
    out: dict[str, bytes] = {}
    for i, src in enumerate(sources(images)):
        w, h = src.size
        boxes = {"whole": (0, 0, w, h), "nw": (0, 0, w * 6 // 10, h * 6 // 10),
                 "ne": (w * 4 // 10, 0, w, h * 6 // 10), "sw": (0, h * 4 // 10, w * 6 // 10, h),
                 "se": (w * 4 // 10, h * 4 // 10, w, h)}
        for part, box in boxes.items():
            out[f"s{i}-{part}"] = jpeg(src.crop(box).resize(SIZE, Image.Resampling.LANCZOS))
    return out


def _exif_rotated(im: Image.Image) -> bytes:
    """Stored turned 90° anticlockwise with orientation 6 (shown after a 90° clockwise turn):
    upright once the tag is applied, as a phone held sideways writes it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif)


#: transform name → what it makes of an original (decoded)
TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "resize": lambda im: jpeg(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "quality60": lambda im: jpeg(im, quality=60),
    "crop10": lambda im: jpeg(im.crop((im.width // 20, im.height // 20, im.width - im.width // 20,
                                       im.height - im.height // 20))),
    "flip": lambda im: jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "rotate90": lambda im: jpeg(im.transpose(Image.Transpose.ROTATE_90)),
    "exif_rotated": _exif_rotated,
}


def variants(original: bytes) -> dict[str, bytes]:
    """transform name → the transformed copy's bytes."""
    with Image.open(io.BytesIO(original)) as im:
        im.load()
        return {name: make(im) for name, make in TRANSFORMS.items()}


def write_set(root: Path, images: Path | None) -> dict[str, dict[str, Path]]:
    """The whole set under root: `<original>/original.jpg` and `<original>/<transform>.jpg`;
    returns original → {"original" | transform: path}."""
    out: dict[str, dict[str, Path]] = {}
    for name, data in originals(images).items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        files = {"original": data, **variants(data)}
        out[name] = {}
        for kind, blob in files.items():
            (d / f"{kind}.jpg").write_bytes(blob)
            out[name][kind] = d / f"{kind}.jpg"
    return out
