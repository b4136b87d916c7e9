"""JPEG files for the layouts that hold JPEG only (Pascal VOC: torchvision's `VOCDetection`
opens `JPEGImages/<key>.jpg` whatever the image was): each sample's image is opened, its
size and depth taken from it, and one that is not a JPEG is converted — or refused in one
line with `convert = false`.

The conversion is a pure function of the stored bytes and the quality: Pillow's encoder with
fixed settings (baseline, not optimised, 4:4:4, no EXIF, the ICC profile kept when the colour
model is), so a rebuild writes the same bytes. Pixels are those every other layout's reader
sees of the original (Pillow's `convert("RGB")`, which drops an alpha channel as the readers
do); greyscale stays greyscale (depth 1), 16-bit greyscale is scaled to 8 bits. The store is
not imported here: `read` gives a stored object's bytes, `put_many` stores the JPEGs made and
returns their sha256s (hoardfs.datasets.api passes the store's).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace

from hoardfs.datasets.layouts import PlacementError
from hoardfs.datasets.model import Sample

#: the JPEG quality a spec does not name (`jpeg_quality`)
QUALITY = 95
#: what Pillow calls a JPEG file (MPO: a camera's multi-picture JPEG, whose first frame is a JPEG)
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
#: the file types a JPEG keeps when it is written as `<key>.jpg` (only its name changes)
JPEG_EXTS = frozenset({".jpg", ".jpeg"})
#: the JPEGs held in memory before they are stored in one batch (one seal per batch)
FLUSH_BYTES = 64 << 20


def who(s: Sample) -> str:
    return f"node {s.sha256} (sample key {s.key})"


def not_jpeg(dataset: str, s: Sample, kind: str) -> str:
    """The one line `convert = false` refuses a sample with (the dry run's and the build's)."""
    return (f"dataset {dataset}: {who(s)} is a {kind} file, not a JPEG, and the spec says convert = false — layout "
            "voc holds JPEG files only (JPEGImages/<key>.jpg); set convert = true (the build converts it and records "
            "both sha256s), or narrow the selector to JPEG files (file_types = [\"jpg\", \"jpeg\"])")


def encode(im: object, quality: int = QUALITY) -> tuple[bytes, int]:
    """(the JPEG bytes of an open Pillow image, its depth: 1 greyscale, 3 colour)."""
    from PIL import Image  # deferred: only a build of a JPEG-only layout opens images

    assert isinstance(im, Image.Image)
    mode = im.mode
    if mode in ("L", "1", "LA", "La"):
        out = im.convert("L")
    elif mode.startswith("I") or mode == "F":  # 16- or 32-bit greyscale: its range scaled to 0-255
        wide = im.convert("I") if mode != "I" else im
        hi = wide.getextrema()[1]
        scale = 1 / 257 if isinstance(hi, (int, float)) and hi > 255 else 1
        out = wide.point(lambda v: v * scale).convert("L")
    else:
        out = im.convert("RGB")
    keep_icc = out.mode == mode or (mode in ("RGBA", "RGBa", "P", "PA") and out.mode == "RGB")
    icc = im.info.get("icc_profile") if keep_icc else None
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=quality, subsampling=0, optimize=False, progressive=False,
             **({"icc_profile": icc} if icc else {}))
    return buf.getvalue(), 1 if out.mode == "L" else 3


def prepare(dataset: str, samples: Iterable[Sample], read: Callable[[str], bytes],
            put_many: Callable[[list[bytes]], list[str]], convert: bool = True,
            quality: int = QUALITY) -> list[Sample]:
    """The samples with `width`, `height` and `depth` read from their images, and each that is
    not a JPEG given `converted` (the JPEG's sha256 and size, the JPEG stored by `put_many`).
    PlacementError naming the node and its sample key for an image that cannot be opened, and —
    with `convert` False — for the first that is not a JPEG (before anything is stored)."""
    from PIL import Image  # deferred: as in encode

    samples = list(samples)
    if not convert:  # every sample looked at first (by node id, as the dry run): a refusal stores nothing
        for s in sorted(samples, key=lambda s: s.node_id):
            kind = _kind(dataset, s, read(s.sha256))
            if kind not in JPEG_FORMATS:
                raise PlacementError(not_jpeg(dataset, s, kind))
    out: list[Sample] = []
    pending: list[tuple[int, bytes]] = []  # (index in out, JPEG bytes) not stored yet
    held = 0

    def flush() -> None:
        nonlocal held
        if pending:
            shas = put_many([data for _, data in pending])
            for (i, data), sha in zip(pending, shas, strict=True):
                out[i] = replace(out[i], converted=(sha, len(data)))
            pending.clear()
            held = 0

    for s in samples:
        data = read(s.sha256)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    size = im.size
                    if im.format in JPEG_FORMATS:
                        out.append(replace(s, width=size[0], height=size[1], depth=_depth(im.mode)))
                        continue
                    im.load()
                    jpeg, depth = encode(im, quality)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise PlacementError(f"dataset {dataset}: {who(s)} cannot be read as an image ({str(e)[:120]}); "
                                 "leave it out of the selector") from None
        out.append(replace(s, width=size[0], height=size[1], depth=depth))
        pending.append((len(out) - 1, jpeg))
        held += len(jpeg)
        if held >= FLUSH_BYTES:
            flush()
    flush()
    return out


def _depth(mode: str) -> int:
    """A JPEG's channels as its reader sees them: 1 greyscale, 4 CMYK, 3 otherwise."""
    return 1 if mode in ("L", "1") else 4 if mode == "CMYK" else 3


def _kind(dataset: str, s: Sample, data: bytes) -> str:
    """The image's file type as Pillow reads it ("PNG", "JPEG", …)."""
    from PIL import Image  # deferred: as in encode

    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PlacementError(f"dataset {dataset}: {who(s)} cannot be read as an image ({str(e)[:120]}); "
                             "leave it out of the selector") from None
