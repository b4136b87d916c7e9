"""`quickdraw`: stroke drawings in Quick, Draw! ndjson, one drawing a line.

A batch holds `*.ndjson` (or `*.jsonl`) files, one JSON document a line, or `*.json` files
holding a list of such documents (the way some projects ship a sample of them):

    {"word": "angel", "countrycode": "US", "timestamp": "2017-03-03 20:39:08.85189 UTC",
     "recognized": true, "key_id": "6665588124418048",
     "drawing": [[[x0, x1, …], [y0, y1, …]], …]}      # a stroke; the raw format adds [t0, t1, …]

Each drawing becomes a virtual `drawing` node (`virtual:drawing:<source>:<key_id>`) whose
metadata holds the word (its title), the time, the country, `recognized` and the strokes
themselves (`specific.drawing`). The file is stored whole, as the raw object of every
drawing in it. The ingest then draws each drawing as a PNG (`QuickDraw.render`, run by the
ingest job from the strokes it checks again, not in the parser's sandbox, which may write
nothing) and stores it as the drawing's `media_of` child, labelled `word` — what the asset
browser shows and a dataset takes (docs/adapters.md, "Stroke data").

A bad line — not JSON, no word, strokes of the wrong shape or out of range, too many points,
a key_id seen before — is one reject naming the file and the line; the file's other lines are
ingested. A file without one good line goes to quarantine with every line's reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from typing import Any

from hoardfs.adapters.base import (
    JSON_ERRORS,
    Adapter,
    Asset,
    BadDocument,
    BatchView,
    Parsed,
    Record,
    Rendition,
    json_fault,
    short,
    text,
    to_time,
)

#: the longest line (or list item, as JSON) taken; a longer one is refused unread
MAX_LINE_BYTES = 1 << 20
#: strokes and points of one drawing (Quick, Draw!'s own drawings have a few dozen strokes and
#: at most a few thousand points)
MAX_STROKES = 1000
MAX_POINTS = 20_000
#: a coordinate's bound, either sign: the simplified format is 0-255, the raw format the
#: canvas's pixels
MAX_COORD = 1 << 16
#: a time value's bound (the raw format's t: milliseconds since the drawing's first point)
MAX_T = 1 << 31
#: the strokes kept in a node's metadata, as compact JSON: a node's specific fields hold at most
#: 16 KB (hoardfs.sql.intents), and the drawing shares them with its other fields
DRAWING_BYTES = 14_000
#: a key_id becomes a file name (`rendered/<key_id>.png`) and a virtual asset's id
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the PNG: a square of this side, the drawing scaled to fit and centred (the simplified
#: format's 0-255 box is drawn at scale 1), black strokes of this width on white, 8-bit grey
SIZE = 256
LINE_WIDTH = 3
#: the longest word (a category's name) taken
MAX_WORD = 200

_SUFFIXES = (".ndjson", ".jsonl", ".json")


def drawing_fault(drawing: Any) -> str | None:
    """What is wrong with a `drawing` value (strokes of `[xs, ys]` or `[xs, ys, ts]`, x and y
    finite numbers within ±MAX_COORD, t within 0…MAX_T, as many of each, at least one point a
    stroke, at most MAX_STROKES strokes and MAX_POINTS points), or None. The adapter checks
    each line with it, and the ingest again before it draws (the parser's answer is not
    trusted: it read the hostile bytes)."""
    if not isinstance(drawing, list):
        return "`drawing` is not a list of strokes" if drawing is not None else "there is no `drawing`"
    if not drawing:
        return "the drawing is empty (no stroke)"
    if len(drawing) > MAX_STROKES:
        return f"the drawing has {len(drawing):,} strokes, more than {MAX_STROKES:,}"
    points = 0
    for s, stroke in enumerate(drawing, 1):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3) or not all(isinstance(a, list) for a in stroke):
            return f"stroke {s} is not [[x, …], [y, …]] (or with a third list [t, …])"
        n = len(stroke[0])
        if n == 0:
            return f"stroke {s} has no point"
        for name, values in zip("yt", stroke[1:], strict=False):
            if len(values) != n:
                return f"stroke {s} has {n} x but {len(values)} {name} values"
        points += n
        if points > MAX_POINTS:
            return f"the drawing has more than {MAX_POINTS:,} points"
        for name, values in zip("xyt", stroke, strict=False):
            low, high = (0, MAX_T) if name == "t" else (-MAX_COORD, MAX_COORD)
            for i, v in enumerate(values):
                if type(v) not in (int, float):  # not isinstance: a boolean is no number here
                    return f"stroke {s} {name}[{i}] is not a number ({_shown(v)})"
                if not (low <= v <= high):  # NaN compares false too
                    what = "not a finite number" if isinstance(v, float) and not math.isfinite(v) else "out of range"
                    return f"stroke {s} {name}[{i}] = {v!r} is {what} ({low:,} to {high:,})"
    return None


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def _shown(v: Any, limit: int = 40) -> str:
    """A JSON value for a message: compact, cut to `limit` characters."""
    s = _compact(v)
    return s if len(s) <= limit else s[:limit] + "…"


class QuickDraw(Adapter):
    format = "quickdraw"
    description = "Quick, Draw! ndjson: one drawing a line (word, countrycode, timestamp, recognized, key_id, drawing)"

    def parse(self, batch: BatchView) -> Parsed:
        parsed = Parsed()
        first: dict[str, str] = {}  # key_id → where it was first seen
        for rel in batch.by_suffix(*_SUFFIXES):
            try:
                items = self._items(batch, rel)
            except BadDocument as e:
                parsed.reject(f"{e}; fix the file and drop it in a new batch", rel)
                continue
            taken, bad = [], []
            for kind, n, item in items:
                where = f"{kind} {n}"
                try:
                    if isinstance(item, BadDocument):
                        raise item
                    rec, key = self._drawing(rel, (kind, n), item, first)
                except BadDocument as e:
                    bad.append(f"{rel} {where}: {e}")
                    continue
                first[key] = f"{rel} {where}"
                taken.append(rec)
            if not taken:
                why = "holds no drawing" if not bad else f"holds no good drawing ({len(bad)} bad)"
                parsed.reject(f"{rel} {why}; fix it and drop it in a new batch", rel)
            else:
                parsed.claim(rel)
                parsed.records += taken
            for reason in bad:  # one line each; the file itself is stored when a drawing in it is good
                parsed.reject(f"{reason}; left out (the stored file keeps it)" if taken else reason)
        return parsed

    @staticmethod
    def _items(batch: BatchView, rel: str) -> list[tuple[str, int, Any]]:
        """("line", its number, the parsed document or the BadDocument saying why not) per line
        of an ndjson file (blank lines count, unread), ("item", …) per item of a `.json` list.
        A `.json` that is not a list is one BadDocument."""
        if rel.endswith(".json"):
            doc = batch.read_json(rel)
            if not isinstance(doc, list):
                raise BadDocument(f"{rel} is not a JSON list of drawings (a .json file holds a list; one "
                                  "drawing a line is the .ndjson format)")
            out: list[tuple[str, int, Any]] = []
            for n, item in enumerate(doc, 1):
                size = len(_compact(item).encode())
                out.append(("item", n, item if size <= MAX_LINE_BYTES else BadDocument(
                    f"is {size:,} bytes of JSON, more than {MAX_LINE_BYTES:,}")))
            return out
        out = []
        for n, line in enumerate(batch.read_bytes(rel).split(b"\n"), 1):
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                out.append(("line", n, BadDocument(f"is {len(line):,} bytes long, more than {MAX_LINE_BYTES:,}")))
                continue
            try:
                out.append(("line", n, json.loads(line)))
            except JSON_ERRORS as e:
                out.append(("line", n, BadDocument(json_fault(e, line))))
        return out

    def _drawing(self, rel: str, where: tuple[str, int], doc: Any, first: dict[str, str]) -> tuple[Record, str]:
        """The record of one drawing (`where`: line or item, its number) and its key_id;
        BadDocument says what is wrong with it."""
        if not isinstance(doc, dict):
            what = {list: "a list", str: "text", bool: "a boolean", type(None): "null"}.get(type(doc), "a number")
            raise BadDocument(f"is {what}, not a JSON object with `word` and `drawing`")
        word = doc.get("word")
        if not isinstance(word, str) or not word.strip():
            raise BadDocument("has no `word` (the drawing's category, text)" if word in (None, "") or
                              isinstance(word, str) else f"has a `word` that is not text ({_shown(word)})")
        if len(word) > MAX_WORD:
            raise BadDocument(f"has a `word` of {len(word):,} characters, more than {MAX_WORD}")
        fault = drawing_fault(doc.get("drawing"))
        if fault:
            raise BadDocument(fault)
        drawing = doc["drawing"]
        key = doc.get("key_id")
        if key is None:  # a drawing's own content names it (prefixed: never a Quick, Draw! key_id)
            key = "sha256-" + hashlib.sha256(_compact([word, drawing]).encode()).hexdigest()[:40]
        elif type(key) is int and key >= 0:
            key = str(key)
        if not isinstance(key, str) or not KEY_ID.fullmatch(key):
            raise BadDocument(f"has a `key_id` that is not 1-64 letters, digits, `_` or `-` "
                              f"({_shown(key)})")
        if key in first:
            raise BadDocument(f"repeats key_id {key} (first at {first[key]})")
        for name, kind in (("countrycode", str), ("recognized", bool), ("timestamp", str)):
            if doc.get(name) is not None and not isinstance(doc[name], kind):
                raise BadDocument(f"has a `{name}` that is not {'text' if kind is str else 'true or false'}")
        stamp = doc.get("timestamp")
        when = to_time(stamp.removesuffix(" UTC")) if isinstance(stamp, str) else None
        specific: dict[str, Any] = {"word": word, "key_id": key, where[0]: where[1],
                                    "strokes": len(drawing), "points": sum(len(s[0]) for s in drawing),
                                    "timed": any(len(s) == 3 for s in drawing)}
        for name in ("countrycode", "recognized", "timestamp"):
            if doc.get(name) is not None:
                specific[name] = doc[name] if name != "countrycode" else text(doc[name], 16)
        kept = drawing
        if len(_compact(kept)) > DRAWING_BYTES:  # the times stay in the stored file, x and y here
            kept = [s[:2] for s in drawing]
            specific["times_in_document"] = specific["timed"]
        size = len(_compact(kept))
        if size > DRAWING_BYTES:
            raise BadDocument(f"has too many points for a node's metadata ({specific['points']:,} points, "
                              f"{size:,} bytes of x and y as JSON, more than {DRAWING_BYTES:,}); simplify it "
                              "(Quick, Draw!'s simplified format) or split it")
        specific["drawing"] = kept
        raw = {k: doc[k] for k in ("word", "countrycode", "timestamp", "recognized", "key_id") if k in doc}
        return Record(Asset("drawing", key), doc=rel, raw=raw, title=word.strip(), update_time=when,
                      specific=specific), key

    def render(self, record: dict[str, Any]) -> Rendition | None:
        """The drawing as a PNG (`SIZE`² pixels, grey), labelled `word`, drawn by the ingest job
        from the record's strokes — checked again here (`drawing_fault`), as the key_id that
        names the file: the parser that made the record read the hostile bytes. ValueError
        when either is not what `parse` makes."""
        node = record.get("node")
        if not (isinstance(node, list) and node[:2] == ["a", "drawing"]):
            return None
        specific = record.get("specific") or {}
        drawing: Any = specific.get("drawing")
        word: Any = specific.get("word")
        key = node[2]
        fault = drawing_fault(drawing) or (None if KEY_ID.fullmatch(key) else "a key_id that is no file name") or (
            None if isinstance(word, str) and word.strip() and len(word) <= MAX_WORD else "no word")
        if fault:
            raise ValueError(f"drawing {short(key, 70)}: {fault}")
        return Rendition(f"{key}.png", draw_png(drawing), "media_of", {"word": word.strip()})


def draw_png(drawing: list[list[list[float]]]) -> bytes:
    """The strokes (x and y; t is not drawn) scaled into a SIZE × SIZE square, centred, as PNG
    bytes: the same strokes give the same bytes (with one Pillow version)."""
    from PIL import Image, ImageDraw  # deferred: Pillow only where a drawing is rendered, not in every parser

    xs = [x for s in drawing for x in s[0]]
    ys = [y for s in drawing for y in s[1]]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    scale = (SIZE - 1) / span if span > 0 else 1.0
    ox = (SIZE - 1 - (max(xs) - min(xs)) * scale) / 2 - min(xs) * scale
    oy = (SIZE - 1 - (max(ys) - min(ys)) * scale) / 2 - min(ys) * scale
    img = Image.new("L", (SIZE, SIZE), 255)
    pen = ImageDraw.Draw(img)
    for stroke in drawing:
        pts = [(round(x * scale + ox), round(y * scale + oy)) for x, y in zip(stroke[0], stroke[1], strict=False)]
        if len(pts) == 1:
            (x, y), r = pts[0], LINE_WIDTH // 2
            pen.ellipse((x - r, y - r, x + r, y + r), fill=0)
        else:
            pen.line(pts, fill=0, width=LINE_WIDTH, joint="curve")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
