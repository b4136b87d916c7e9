"""`hoard-builtin near-dup-hash IN OUT`: for each input image, one record of `hashes.jsonl` —
`{"sha256", "phash", "dhash", "phash_flip"}`, each hash 16 hex digits (imagehash's own
notation) — the perceptual hashes `hoard dups` groups near-duplicates by (docs/near-dups.md).

What is hashed is the image as shown: its first frame with its EXIF orientation applied
(`ImageOps.exif_transpose`), so a photo and the same photo stored sideways with an orientation
tag hash alike. `phash_flip` is the pHash of the horizontally mirrored image: pHash is not
invariant under a flip (a flip moves a copy some 30 bits away), so a mirrored copy is found by
comparing one image's `phash_flip` with the other's `phash`.

Speed: a JPEG is decoded by Pillow's `draft` at the smallest scale (1/2, 1/4, 1/8) that keeps
it at least `DRAFT_SIDE` pixels a side, in grey — the hashes look at 32×32 and 9×8 pixels —
which is what makes ≥ 200 images/s per core (bench/neardup.py). Hostile input: the pixel
count is checked from the header before a pixel is decoded, the process's address space is
bounded (RLIMIT_AS, `MEMORY_MB`), and an image that cannot be decoded is one line on stderr
naming it (`_io.warn`); the run goes on.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import imagehash
import scipy.fftpack  # noqa: F401 - imagehash imports it at its first pHash: here, before the memory limit
from PIL import Image, ImageOps

from hoardfs.base import landlock
from hoardfs.jobs.actions.builtin import _image, _io

#: the address space this program may take (MB): a decoded 100-megapixel PNG in RGBA is 400 MB;
#: numpy and scipy take some 300 MB of it when loaded
MEMORY_MB = 2048
#: the smallest side a JPEG is decoded to (pHash reads a 32×32 reduction; twice that keeps the
#: reduction's antialiasing close to a full decode's: bench/neardup.py measures recall with it)
DRAFT_SIDE = 64
#: hash size in bits per side: 8 → 64-bit hashes, PostgreSQL bigint
HASH_SIZE = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def to_hex(h: imagehash.ImageHash) -> str:
    return str(h)


def hashes(path: Path, *, draft: bool = True) -> dict[str, str]:
    """{"phash", "dhash", "phash_flip"} of the image at `path`, 16 hex digits each.
    _image.Undecodable when it is not an image Pillow can decode whole. `draft` False decodes
    a JPEG whole (bench/neardup.py compares the two)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as raw:
                if raw.width * raw.height > _image.MAX_PIXELS:
                    raise _image.Undecodable(f"{raw.width}x{raw.height} pixels, more than {_image.MAX_PIXELS}")
                if draft and raw.format == "JPEG":
                    raw.draft("L", (DRAFT_SIDE, DRAFT_SIDE))
                raw.load()  # decodes now: a truncated file fails here
                shown = ImageOps.exif_transpose(raw)
                grey = shown.convert("L")
    except _image.Undecodable:
        raise
    except Image.UnidentifiedImageError:
        raise _image.Undecodable("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as e:
        raise _image.Undecodable(f"cannot decode: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    # pHash reduces to 32×32 first (imagehash: convert("L").resize((32, 32), LANCZOS)); doing that
    # once here and hashing the reduction and its mirror gives the same bits as hashing the whole
    # image and the whole mirrored image (a resize to the same size is a copy), at a third of the cost
    side = HASH_SIZE * 4
    small = grey.resize((side, side), Image.Resampling.LANCZOS)
    return {"phash": to_hex(imagehash.phash(small, HASH_SIZE)),
            "dhash": to_hex(imagehash.dhash(grey, HASH_SIZE)),
            "phash_flip": to_hex(imagehash.phash(small.transpose(Image.Transpose.FLIP_LEFT_RIGHT), HASH_SIZE))}


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    landlock.limit_memory(MEMORY_MB)
    Image.MAX_IMAGE_PIXELS = _image.MAX_PIXELS  # Pillow's own check at open, before ours: the same bound
    records: list[dict[str, Any]] = []
    for inp in _io.inputs(input_root):
        try:
            # what Pillow warns of (corrupt EXIF in a hostile file, skipped: its pixels are hashed)
            # is one line naming the input, not Pillow's own two lines naming its source file
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                records.append({"sha256": inp.sha256, **hashes(inp.path)})
            if said:
                told = dict.fromkeys(str(w.message).strip().splitlines()[0] if str(w.message).strip()
                                     else w.category.__name__ for w in said)
                _io.note(inp.rel, f"hashed; Pillow warned: {'; '.join(told)}")
        except _image.Undecodable as e:
            _io.warn(inp.rel, str(e))
        except MemoryError:
            _io.warn(inp.rel, f"needs more than the {MEMORY_MB} MB this program may take")
    _io.write_jsonl(output_root, "hashes.jsonl", records)
    return 0
