"""Thumbnails of stored images, made on first request from the store (Pillow) and kept under
`<ssd.root>/state/gui/thumbs/` — content-addressed, so a cached one is never stale. The GUI
serves the file `thumbnail` returns (`/thumb/{sha256}`); Pillow loads only with this module."""

from __future__ import annotations

import contextlib
import io
import re
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from fsd.base.config import Settings
from fsd.base.files import atomic_write
from fsd.store import Store

SIZE = (256, 256)
#: images larger than this are not read into memory for a thumbnail
MAX_BYTES = 64 << 20
#: nor decoded when their pixels (width × height, from the header) exceed this: a few KB of
#: PNG can declare 20,000 × 20,000 pixels (an "image bomb") and take gigabytes to decode
MAX_PIXELS = 40_000_000
#: one decode at a time: a page asks for dozens of thumbnails at once
_DECODE = threading.Lock()
SHA = re.compile(r"^[0-9a-f]{64}$")


def path(cfg: Settings, sha256_hex: str) -> Path:
    return cfg.ssd.root / "state" / "gui" / "thumbs" / sha256_hex[:2] / f"{sha256_hex}.jpg"


def thumbnail(cfg: Settings, sha256_hex: str,
              store_lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> Path | None:
    """The cached JPEG thumbnail of an object, made now if missing; None if it is not an image
    Pillow reads (or is too large). Blocking: run it in a thread. The store is opened under
    `store_lock`: a process that opens it from several threads (the GUI) passes the lock that
    serialises its opens (LMDB opens an environment once per process)."""
    if not SHA.match(sha256_hex):
        return None
    out = path(cfg, sha256_hex)
    if out.exists():
        return out
    # opened per thumbnail, not kept: a store held open would hold gc's swap and index restores off
    with store_lock, Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(bytes.fromhex(sha256_hex))
        if loc is None or loc.length > MAX_BYTES:
            return None
        data = store.get(sha256_hex)
    try:
        with _DECODE, Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                return None
            im.draft("RGB", SIZE)  # JPEG: decode at a reduced scale
            im.thumbnail(SIZE)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=80)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buf.getvalue())
    return out
