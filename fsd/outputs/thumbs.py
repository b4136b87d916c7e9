"""Thumbnails of stored images, made on first request from the store and kept under
`<ssd.root>/state/gui/thumbs/` — content-addressed, so a cached one is never stale. The GUI
serves the file `thumbnail` returns (`/thumb/{sha256}`). Pillow decodes them in a confined
process of its own (hoardfs.fsd.outputs.thumb_decoder), never in the caller's."""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
from pathlib import Path

from hoardfs.base.config import Settings
from hoardfs.base.files import atomic_write
from hoardfs.fsd.outputs.thumb_decoder import FORMATS, MAX_PIXELS, SIZE, Decoder
from hoardfs.fsd.store import Store

__all__ = ["FORMATS", "MAX_BYTES", "MAX_PIXELS", "NONE", "SIZE", "path", "thumbnail"]

log = logging.getLogger(__name__)
#: images larger than this are not read into memory for a thumbnail
MAX_BYTES = 64 << 20
#: one decoder process, one decode at a time: a page asks for dozens of thumbnails at once
_DECODER = Decoder()
atexit.register(_DECODER.close)
#: the store lock of a caller that opens the store from one thread only (nullcontext is reusable)
_NO_LOCK = contextlib.nullcontext()
SHA = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` would let a trailing newline through
#: what the cache holds for an object that has no thumbnail (not an image, too large, a
#: file Pillow cannot decode): it is not read again on every page view
NONE = b""
#: a decoder process that fails on an image (killed, ended, out of time) may have failed for a
#: cause of the moment: the image is tried again on its next view, and only after this many
#: failures in a row is it remembered as having none (an image that kills every decoder)
PROCESS_TRIES = 3
_failures: dict[str, int] = {}


def path(cfg: Settings, sha256_hex: str) -> Path:
    return cfg.ssd.root / "state" / "gui" / "thumbs" / sha256_hex[:2] / f"{sha256_hex}.jpg"


def thumbnail(cfg: Settings, sha256_hex: str,
              store_lock: contextlib.AbstractContextManager = _NO_LOCK) -> Path | None:
    """The cached JPEG thumbnail of an object, made now if missing; None if it is not an image
    Pillow reads (or is too large), or if the decoder process failed on it (tried again on the
    next call, up to PROCESS_TRIES). Blocking: run it in a thread. The store is opened under
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
    _DECODER.set_memory(cfg.gui.thumbnail_memory_mb)
    jpeg, why, lasting = _DECODER.decode(data)
    if not lasting:
        tries = _failures[sha256_hex] = _failures.get(sha256_hex, 0) + 1
        if tries < PROCESS_TRIES:
            log.info("no thumbnail of %s for now: %s; tried again on its next view", sha256_hex, why)
            return None
        log.warning("no thumbnail of %s: %s, %d times in a row; remembered as none — remove %s to try again",
                    sha256_hex, why, tries, out)
    _failures.pop(sha256_hex, None)
    if jpeg is None:
        if lasting and why.startswith("decoding it needs more than"):
            log.warning("no thumbnail of %s: %s; if the image is genuine, raise gui.thumbnail_memory_mb in "
                        "hoard.toml and remove %s", sha256_hex, why, out)
        elif lasting and why:
            log.info("no thumbnail of %s: %s", sha256_hex, why)
        _none(out)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, jpeg)
    return out


def _none(out: Path) -> None:
    """Remember that this object has no thumbnail (an empty cache file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, NONE)
    return None
