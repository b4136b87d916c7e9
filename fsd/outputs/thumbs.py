"""Thumbnails of stored images, made on first request from the store (Pillow) and kept under
`<ssd.root>/state/gui/thumbs/` — content-addressed, so a cached one is never stale. The GUI
serves the file `thumbnail` returns (`/thumb/{sha256}`); Pillow loads only with this module."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fsd.base.config import Settings
from fsd.base.files import atomic_write
from fsd.store import Store

log = logging.getLogger(__name__)
SIZE = (256, 256)
#: images larger than this are not read into memory for a thumbnail
MAX_BYTES = 64 << 20
#: nor decoded when their pixels (width × height, from the header) exceed this: a few KB of
#: PNG can declare 20,000 × 20,000 pixels (an "image bomb") and take gigabytes to decode
MAX_PIXELS = 40_000_000
#: one decode at a time: a page asks for dozens of thumbnails at once
_DECODE = threading.Lock()
SHA = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` would let a trailing newline through
#: the formats a thumbnail is made of (Pillow would otherwise try every plugin it has on
#: untrusted bytes — EPS runs Ghostscript where it is installed)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
#: what the cache holds for an object that has no thumbnail (not an image, too large, a
#: file Pillow cannot decode): it is not read again on every page view
NONE = b""


def path(cfg: Settings, sha256_hex: str) -> Path:
    return cfg.ssd.root / "state" / "gui" / "thumbs" / sha256_hex[:2] / f"{sha256_hex}.jpg"


def thumbnail(cfg: Settings, sha256_hex: str,
              store_lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> Path | None:
    """The cached JPEG thumbnail of an object, made now if missing; None if it is not an image
    Pillow reads (or is too large). Blocking: run it in a thread. The store is opened under
    `store_lock`: a process that opens it from several threads (the GUI) passes the lock that
    serialises its opens (LMDB opens an environment once per process)."""
    if not SHA.fullmatch(sha256_hex):
        return None
    out = path(cfg, sha256_hex)
    with contextlib.suppress(FileNotFoundError):
        return out if out.stat().st_size else None  # an empty file: known to have none
    # opened per thumbnail, not kept: a store held open would hold gc's swap and index restores off
    with store_lock, Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(bytes.fromhex(sha256_hex))
        if loc is None:
            return None
        if loc.length > MAX_BYTES:
            _none(out)
            return None
        data = store.get(sha256_hex)
    try:
        with _DECODE, Image.open(io.BytesIO(data), formats=FORMATS) as im:
            # the size the header declares, before draft() shrinks it: a progressive JPEG is
            # decoded into whole-image coefficient buffers whatever the scale (a 2 MB 13000 ×
            # 13000 one passed at 1/8 and grew the GUI from 156 MB to 1.15 GB)
            limit = MAX_PIXELS // 4 if im.format == "JPEG" and im.info.get("progressive") else MAX_PIXELS
            if im.width * im.height > limit:
                _none(out)
                return None
            im.draft("RGB", SIZE)  # JPEG: decode at a reduced scale (a 60 MP photo at 1/8)
            im.thumbnail(SIZE)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=80)
    except (UnidentifiedImageError, Image.DecompressionBombError):
        _none(out)
        return None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: Pillow's plugins raise what they like
        log.info("no thumbnail of %s: %s: %s", sha256_hex, type(e).__name__, e)
        _none(out)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buf.getvalue())
    return out


def _none(out: Path) -> None:
    """Remember that this object has no thumbnail (an empty cache file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, NONE)
    return None
