"""Decoding an input image with Pillow, hostile-input safe, and encoding outputs byte-stable."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: the largest image decoded (pixels); Pillow's own guard raises above 2× its default, this
#: refuses earlier and without a warning that a caller might not see
MAX_PIXELS = 100_000_000
#: the JPEG quality of every JPEG a built-in writes (a fixed number: the same input gives the
#: same bytes)
JPEG_QUALITY = 90


class Undecodable(Exception):
    """Not an image Pillow can decode whole (the message says why, for the stderr line)."""


def open_image(path: Path, *, transpose: bool = True) -> tuple[Image.Image, Image.Image]:
    """(the image as shown: first frame, EXIF orientation applied when `transpose`; the image
    as opened, for its EXIF and format). Truncated or corrupt data, a text file with an image's
    name and a decompression bomb are Undecodable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            raw = Image.open(path)
            if raw.width * raw.height > MAX_PIXELS:
                raise Undecodable(f"{raw.width}x{raw.height} pixels, more than {MAX_PIXELS}")
            raw.load()  # decodes now: a truncated file fails here, not later
            shown = ImageOps.exif_transpose(raw) if transpose else raw.copy()
    except Undecodable:
        raise
    except Image.UnidentifiedImageError:
        raise Undecodable("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as e:
        raise Undecodable(f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return shown, raw


def rgb(im: Image.Image) -> Image.Image:
    """RGB (or L for a grey image), transparent parts on white: what a JPEG can hold."""
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("1", "I;16", "I", "F"):
        return im.convert("L")
    if im.mode == "P" or "A" in im.mode:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def jpeg(im: Image.Image) -> bytes:
    """The image as baseline JPEG of a fixed quality, without EXIF or ICC data."""
    buf = io.BytesIO()
    rgb(im).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False, subsampling=2)
    return buf.getvalue()


def png(im: Image.Image) -> bytes:
    """The image as PNG without text or time chunks."""
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
