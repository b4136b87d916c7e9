"""Deterministic synthetic scraped batches (S08 fixture generator).

`generate(out, Spec(seed=…))` writes batch directories the way scrapers leave them in
zone 3A, one source per batch, in the formats the built-in adapters read:

* `ytdlp`   — `<id>.mp4` + `<id>.info.json` (yt-dlp `--write-info-json` fields)
* `gallery` — `<name>.png` + `<name>.png.json` (gallery-dl `--write-metadata` sidecars)
* `forum`   — `manifest.csv` + `media/…png` + `posts/<post>.txt` (a CSV-manifest source
  with reply chains through `parent_post_id`)

About 95 % of the media files are small (1–64 KB, real PNG images of noise) and a few
are large (1 MB..`large_max_mb`, `.mp4` with a real `ftyp` box). Some content reappears
in later batches, also across sources, with different metadata (F_03). Derived children —
crops of images and frames of videos — go to `_derived/<batch>/` with `derived.json`
naming each child's parent. `truth.json` lists every file with its sha256 so tests can
check what the store and the database end up holding.

The same `Spec` gives the same bytes on every run (with the same Pillow version).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

SOURCES = ("ytdlp", "gallery", "forum")


@dataclass(frozen=True)
class Spec:
    seed: int = 1
    batches: int = 3
    items_per_batch: int = 100
    sources: tuple[str, ...] = SOURCES
    #: share of media files that are large (1 MB .. large_max_mb)
    large_fraction: float = 0.03
    large_max_mb: int = 50
    #: share of items whose content already appeared in an earlier batch
    repeat_fraction: float = 0.10
    #: share of images that get a crop child; every video gets one frame
    crop_fraction: float = 0.10
    ready_signal: bool = False


@dataclass
class Item:
    path: str  # relative to the batch directory
    sha256: str
    size: int
    kind: str  # image | video | text | sidecar | manifest
    meta: str | None = None  # the sidecar or manifest that describes it


@dataclass
class Batch:
    batch_id: str
    source: str
    items: list[Item] = field(default_factory=list)
    derived: list[dict[str, Any]] = field(default_factory=list)


def generate(out: Path, spec: Spec = Spec()) -> list[Batch]:
    """Write `spec.batches` batches under `out` (cycling through sources); idempotent."""
    unknown = [s for s in spec.sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown synthetic source(s) {unknown}; allowed: {', '.join(SOURCES)}")
    out.mkdir(parents=True, exist_ok=True)
    pool: list[tuple[str, bytes]] = []  # (kind, content) seen so far, for repeats
    batches = []
    for b in range(spec.batches):
        source = spec.sources[b % len(spec.sources)]
        batch = Batch(f"{source}-s{spec.seed}-b{b:03d}", source)
        writer = _Writer(out / batch.batch_id, batch)
        _MAKERS[source](writer, spec, b, pool)
        _derive(out / "_derived" / batch.batch_id, batch, spec)
        if spec.ready_signal:
            (out / batch.batch_id / "_READY").write_text(source + "\n")  # the signal names the source
        batches.append(batch)
    truth = {"spec": asdict(spec), "batches": [asdict(x) for x in batches]}
    _write_if_changed(out / "truth.json", json.dumps(truth, indent=1, sort_keys=True).encode())
    return batches


def flat_files(out: Path, n: int, seed: int = 0, lo: int = 4 << 10, hi: int = 64 << 10) -> list[Path]:
    """`n` files of pseudo-random bytes, sizes uniform in [lo, hi], for store tests and benchmarks."""
    rng = random.Random(f"flat:{seed}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = out / f"f{i:06d}.bin"
        _write_if_changed(p, rng.randbytes(rng.randint(lo, hi)))
        paths.append(p)
    return paths


# -- content ---------------------------------------------------------------------------

def _rng(spec: Spec, *parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in (spec.seed, *parts)))


def _png(rng: random.Random, target: int) -> bytes:
    """A real PNG of noise of about `target` bytes (uncompressed so the size is steady)."""
    side = max(4, int((target / 3) ** 0.5))
    img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def _mp4(rng: random.Random, size: int) -> bytes:
    ftyp = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    body = size - len(ftyp) - 8
    return ftyp + (body + 8).to_bytes(4, "big") + b"mdat" + rng.randbytes(body)


def _media(rng: random.Random, spec: Spec, kind: str, pool: list[tuple[str, bytes]]) -> bytes:
    if pool and rng.random() < spec.repeat_fraction:
        same = [c for k, c in pool if k == kind]
        if same:
            return rng.choice(same)
    if kind == "video" or rng.random() < spec.large_fraction:
        size = rng.randint(1 << 20, spec.large_max_mb << 20)
        data = _mp4(rng, size) if kind == "video" else _png(rng, size)
    else:
        data = _png(rng, rng.randint(1 << 10, 64 << 10))
    pool.append((kind, data))
    return data


class _Writer:
    def __init__(self, root: Path, batch: Batch) -> None:
        self.root, self.batch = root, batch

    def file(self, rel: str, data: bytes, kind: str, meta: str | None = None) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(path, data)
        self.batch.items.append(Item(rel, hashlib.sha256(data).hexdigest(), len(data), kind, meta))

    def json(self, rel: str, doc: Any) -> None:
        self.file(rel, json.dumps(doc, indent=1, ensure_ascii=False).encode(), "sidecar")


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.write_bytes(data)


# -- sources ---------------------------------------------------------------------------

_AUTHORS = ["ada", "brook", "cyd", "dara", "eli", "fern", "gus", "hale"]
_TS0 = 1_700_000_000


def _ytdlp(w: _Writer, spec: Spec, b: int, pool: list) -> None:
    n_videos = max(1, spec.items_per_batch // 20)  # videos are large: keep them few
    for i in range(spec.items_per_batch):
        rng = _rng(spec, "ytdlp", b, i)
        vid = f"v{b:03d}{i:05d}"
        is_video = i < n_videos
        kind = "video" if is_video else "image"
        data = _media(rng, spec, kind, pool)
        ext = "mp4" if is_video else "png"
        author = rng.choice(_AUTHORS)
        ts = _TS0 + b * 86400 + i * 60
        w.file(f"{vid}.{ext}", data, kind, meta=f"{vid}.info.json")
        w.json(f"{vid}.info.json", {
            "id": vid, "title": f"clip {vid} by {author}", "ext": ext, "extractor": "youtube",
            "webpage_url": f"https://video.example/watch?v={vid}",
            "uploader": author.title(), "uploader_id": f"@{author}", "channel": f"{author} channel",
            "channel_id": f"UC{author}", "view_count": rng.randint(0, 10**6), "timestamp": ts,
            "upload_date": _date(ts), "duration": rng.randint(5, 600), "tags": rng.sample(_TAGS, 2),
            "playlist_id": f"PL{author}{b}" if i % 5 == 0 else None,
        })


def _gallery(w: _Writer, spec: Spec, b: int, pool: list) -> None:
    for i in range(spec.items_per_batch):
        rng = _rng(spec, "gallery", b, i)
        post = 9000 + b * 1000 + i // 3
        name = f"gallery_{post}_{i % 3}"
        author = rng.choice(_AUTHORS)
        w.file(f"{name}.png", _media(rng, spec, "image", pool), "image", meta=f"{name}.png.json")
        w.json(f"{name}.png.json", {
            "category": "gallery", "subcategory": "user", "id": post * 10 + i % 3, "post_id": post,
            "num": i % 3 + 1, "filename": name, "extension": "png",
            "date": f"{_date(_TS0 + b * 86400 + i, '-')} 12:{i % 60:02d}:00",
            "user": {"id": _AUTHORS.index(author), "name": author},
            "description": f"post {post} image {i % 3 + 1}", "tags": rng.sample(_TAGS, 3),
        })


def _forum(w: _Writer, spec: Spec, b: int, pool: list) -> None:
    rows = []
    for i in range(spec.items_per_batch):
        rng = _rng(spec, "forum", b, i)
        post = f"p{b:03d}{i:05d}"
        thread = f"t{b:03d}{i // 10:04d}"
        parent = f"p{b:03d}{i - 1:05d}" if i % 10 else ""
        if i == 0 and b > 0:  # the thread goes on from the previous batch: a reply across batches
            parent = f"p{b - 1:03d}{spec.items_per_batch - 1:05d}"
        author = rng.choice(_AUTHORS)
        if i % 2:
            rel, kind, data = f"media/{post}_0.png", "image", _media(rng, spec, "image", pool)
        else:
            rel, kind = f"posts/{post}.txt", "text"
            data = f"{author} wrote in {thread}: {' '.join(rng.sample(_TAGS, 4))}\n".encode()
        w.file(rel, data, kind, meta="manifest.csv")
        rows.append({"path": rel, "post_id": post, "thread_id": thread, "parent_post_id": parent,
                     "author": author, "title": f"re: {thread}" if parent else f"thread {thread}",
                     "posted_at": _date(_TS0 + b * 86400 + i * 30, "-"), "views": rng.randint(0, 5000)})
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    wr.writeheader()
    wr.writerows(rows)
    w.file("manifest.csv", buf.getvalue().encode(), "manifest")


_MAKERS = {"ytdlp": _ytdlp, "gallery": _gallery, "forum": _forum}
_TAGS = ["cat", "dog", "street", "night", "food", "sky", "car", "tree", "sea", "snow", "bird", "city"]


def _date(ts: int, sep: str = "") -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime(f"%Y{sep}%m{sep}%d")


# -- derived children (crops, frames) ------------------------------------------------------

def _derive(root: Path, batch: Batch, spec: Spec) -> None:
    children = []
    for item in list(batch.items):
        rng = _rng(spec, "derive", batch.batch_id, item.path)
        if item.kind == "image" and item.size < (1 << 20) and rng.random() < spec.crop_fraction:
            src = Image.open(root.parent.parent / batch.batch_id / item.path)
            wdt, hgt = src.size
            crop = src.crop((0, 0, max(1, wdt // 2), max(1, hgt // 2)))
            buf = io.BytesIO()
            crop.save(buf, format="PNG", compress_level=0)
            children.append(("crop", item, f"{Path(item.path).stem}.crop0.png", buf.getvalue()))
        elif item.kind == "video":
            children.append(("frame", item, f"{Path(item.path).stem}.frame0001.png", _png(rng, 8 << 10)))
    for relation, parent, name, data in children:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_if_changed(path, data)
        batch.derived.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                              "relation": relation, "parent_sha256": parent.sha256, "parent_path": parent.path})
    if children:
        _write_if_changed(root / "derived.json", json.dumps(batch.derived, indent=1).encode())
