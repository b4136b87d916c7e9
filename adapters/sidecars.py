"""Formats where each media file has a JSON sidecar next to it.

* `ytdlp`      — yt-dlp `--write-info-json`: `<name>.info.json` + `<name>.<ext>` (and the
                 thumbnails / subtitles yt-dlp writes as `<name>.*`)
* `gallery_dl` — gallery-dl `--write-metadata`: `<file>.<ext>.json` beside `<file>.<ext>`
* `sidecar`    — any scraper: `<file>.<ext>.json` or `<file>.json`, common keys by alias
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

from hoardfs.adapters.base import (
    MEDIA_EXT,
    Adapter,
    Asset,
    BadDocument,
    BatchView,
    File,
    Parsed,
    Record,
    one_document,
    specific_fields,
    split_media,
    text,
    to_int,
    to_time,
)

#: the way on for a sidecar that cannot be read
REDO = "fix or re-download the sidecar and drop both files in a new batch"


def _stems(batch: BatchView) -> dict[str, list[str]]:
    """`dir/stem` → media files `dir/stem.<ext>`."""
    out: dict[str, list[str]] = defaultdict(list)
    for rel in batch.files:
        stem, ext = split_media(rel)
        if ext in MEDIA_EXT:
            out[stem].append(rel)
    return out


def _load(batch: BatchView, parsed: Parsed, rel: str, also: list[str]) -> dict[str, Any] | None:
    """The sidecar's document, or None after rejecting it together with its media."""
    try:
        doc = batch.read_json(rel)
    except BadDocument as e:
        parsed.reject(f"{e}; {REDO}", rel, *also)
        return None
    if not isinstance(doc, dict):
        parsed.reject(f"{rel} holds a JSON {type(doc).__name__}, not an object", rel, *also)
        return None
    return doc


class YtDlp(Adapter):
    format = "ytdlp"
    aliases = ("yt-dlp",)
    description = "yt-dlp --write-info-json: <name>.info.json beside <name>.<ext>"
    _EXCLUDE = frozenset({"formats", "thumbnails", "requested_formats", "automatic_captions", "subtitles",
                          "heatmap", "http_headers", "fragments", "requested_downloads", "chapters",
                          "title", "view_count", "timestamp", "uploader", "uploader_id", "epoch", "description"})

    def parse(self, batch: BatchView) -> Parsed:
        parsed = Parsed()
        names = sorted(r for r in batch.files if not r.endswith(".info.json"))
        taken: set[str] = set()
        seen: dict[str, str] = {}
        # longest prefix first, so `a.b.mp4` belongs to `a.b.info.json`, not to `a.info.json`
        for rel in sorted(batch.by_suffix(".info.json"), key=len, reverse=True):
            prefix = rel[: -len(".info.json")] + "."
            at = bisect.bisect_left(names, prefix)
            mine = []
            while at < len(names) and names[at].startswith(prefix):
                if names[at] not in taken:
                    mine.append(names[at])
                at += 1
            taken.update(mine)
            prefix = prefix[:-1]
            doc = _load(batch, parsed, rel, mine)
            if doc is None:
                continue
            try:
                with one_document(rel):
                    self._one(batch, parsed, rel, prefix, mine, doc, seen)
            except BadDocument as e:
                parsed.reject(f"{e}; {REDO}", rel, *mine)
        return parsed

    def _one(self, batch: BatchView, parsed: Parsed, rel: str, prefix: str, mine: list[str], doc: dict[str, Any],
             seen: dict[str, str]) -> None:
        """The record of one info.json and the files `mine` that share its name; claims them
        only once the record is built (a document of the wrong shape raises half-way)."""
        media = [r for r in mine if split_media(r)[1] in MEDIA_EXT]
        main = self._main(media, doc)
        if main is None:
            parsed.reject(f"{rel} describes a download ({prefix}.{doc.get('ext', '<ext>')}) that is not in the "
                          "batch; add the media file or drop the sidecar", rel, *mine)
            return
        vid = text(doc.get("id"), 200)
        key = f"{doc.get('extractor_key') or doc.get('extractor') or ''}:{vid}"
        if vid and key in seen:
            parsed.reject(f"{rel} describes video {vid!r} again (first in {seen[key]}); "
                          "keep one copy per batch", rel, *mine)
            return
        rec = Record(
            File(main), doc=rel, raw=doc, title=text(doc.get("title")), view_count=to_int(doc.get("view_count")),
            update_time=to_time(doc.get("timestamp") or doc.get("upload_date")),
            download_time=to_time(doc.get("epoch")), author=text(doc.get("uploader") or doc.get("channel"), 200),
            user=text(doc.get("uploader_id") or doc.get("channel_id"), 200),
            specific=specific_fields(doc, self._EXCLUDE))
        if vid:
            rec.edges.append((Asset("video", key), File(main), "media_of"))
        channel = text(doc.get("channel_id") or doc.get("uploader_id"), 200)
        if channel:
            rec.edges.append((Asset("channel", channel), File(main), "channel_of"))
        if doc.get("playlist_id"):
            rec.edges.append((Asset("playlist", str(doc["playlist_id"])), File(main), "playlist_of"))
        for extra in mine:
            if extra == main:
                continue
            ext = split_media(extra)[1]
            rel_name = ("subtitle_of" if ext in ("vtt", "srt", "ass") else
                        "thumbnail_of" if ext in ("jpg", "jpeg", "png", "webp") else "attachment_of")
            rec.edges.append((File(main), File(extra), rel_name))
        seen[key] = rel
        parsed.claim(rel, *mine)
        parsed.records.append(rec)

    @staticmethod
    def _main(media: list[str], doc: dict[str, Any]) -> str | None:
        if not media:
            return None
        want = str(doc.get("ext") or "").lower()
        exact = [m for m in media if split_media(m)[1] == want]
        if exact:
            return exact[0]
        videos = [m for m in media if split_media(m)[1] in ("mp4", "webm", "mkv", "mov", "m4a", "mp3", "opus")]
        return (videos or media)[0]


class _PairedSidecars(Adapter):
    """`<file>.<ext>.json` (or `<file>.json`) describes `<file>.<ext>`."""

    _EXCLUDE: frozenset[str] = frozenset()

    def parse(self, batch: BatchView) -> Parsed:
        parsed = Parsed()
        stems = _stems(batch)
        sidecars = batch.by_suffix(".json")
        is_sidecar = set(sidecars)
        for rel in sidecars:
            base = rel[:-5]
            if batch.has(base) and base not in is_sidecar:
                media = [base]
            else:
                media = stems.get(base, [])
            if len(media) != 1:
                why = ("names no file of the batch (expected "
                       f"{base} or {base}.<media ext>)" if not media else
                       f"fits several files ({', '.join(media)}); name it after exactly one")
                doc = _load(batch, parsed, rel, [])
                if doc is not None:
                    parsed.reject(f"sidecar {rel} {why}", rel)
                continue
            doc = _load(batch, parsed, rel, media)
            if doc is None:
                continue
            try:
                with one_document(rel):
                    rec = self.record(File(media[0]), rel, doc)
            except BadDocument as e:
                parsed.reject(f"{e}; {REDO}", rel, *media)
                continue
            parsed.claim(rel, media[0])
            parsed.records.append(rec)
        return parsed

    def record(self, node: File, rel: str, doc: dict[str, Any]) -> Record:  # pragma: no cover - interface
        raise NotImplementedError


class GalleryDl(_PairedSidecars):
    format = "gallery_dl"
    aliases = ("gallery-dl",)
    description = "gallery-dl --write-metadata: <file>.<ext>.json beside <file>.<ext>"
    _EXCLUDE = frozenset({"title", "description", "date", "user", "author", "uploader", "owner", "view_count", "views"})

    def record(self, node: File, rel: str, doc: dict[str, Any]) -> Record:
        who = next((doc[k] for k in ("user", "author", "uploader", "owner", "artist") if doc.get(k)), None)
        if isinstance(who, dict):
            name = text(who.get("name") or who.get("username") or who.get("nick"), 200)
            uid = text(who.get("id") or name, 200)
        else:
            name = uid = text(who, 200)
        site = text(doc.get("category"), 60) or "site"
        rec = Record(node, doc=rel, raw=doc,
                     title=text(doc.get("title") or (str(doc.get("description") or "").split("\n")[0] or None)),
                     view_count=to_int(doc.get("view_count") or doc.get("views")),
                     update_time=to_time(doc.get("date")), author=name, user=uid,
                     specific=specific_fields(doc, self._EXCLUDE))
        post = doc.get("post_id") or doc.get("gallery_id") or doc.get("id")
        if post is not None:
            rec.edges.append((Asset("post", f"{site}:{post}"), node, "media_of"))
            if uid:
                rec.edges.append((Asset("user", f"{site}:{uid}"), Asset("post", f"{site}:{post}"), "author_of"))
        elif uid:
            rec.edges.append((Asset("user", f"{site}:{uid}"), node, "author_of"))
        return rec


#: common-field aliases of the generic sidecar format (first present wins)
ALIASES: dict[str, tuple[str, ...]] = {
    "title": ("title", "name", "caption", "description"),
    "view_count": ("view_count", "views", "play_count"),
    "update_time": ("updated_at", "update_time", "timestamp", "date", "created_at", "posted_at"),
    "download_time": ("downloaded_at", "download_time", "fetched_at"),
    "author": ("author", "uploader", "creator", "owner"),
    "user": ("user", "username", "user_id", "author_id"),
    "id": ("id", "post_id", "item_id"),
    "parent": ("parent_id", "parent", "in_reply_to"),
}


def first(doc: dict[str, Any], field: str) -> Any:
    return next((doc[k] for k in ALIASES[field] if doc.get(k) not in (None, "")), None)


class Sidecar(_PairedSidecars):
    format = "sidecar"
    description = "any scraper: <file>.<ext>.json or <file>.json with common keys (title, author, views, date …)"
    _EXCLUDE = frozenset(k for v in ALIASES.values() for k in v)

    def record(self, node: File, rel: str, doc: dict[str, Any]) -> Record:
        author = first(doc, "author")
        if isinstance(author, dict):
            author = author.get("name") or author.get("id")
        rec = Record(node, doc=rel, raw=doc, title=text(first(doc, "title")),
                     view_count=to_int(first(doc, "view_count")), update_time=to_time(first(doc, "update_time")),
                     download_time=to_time(first(doc, "download_time")), author=text(author, 200),
                     user=text(first(doc, "user"), 200), specific=specific_fields(doc, self._EXCLUDE))
        item, parent = text(first(doc, "id"), 200), text(first(doc, "parent"), 200)
        if item:
            rec.edges.append((Asset("item", item), node, "media_of"))
            if parent:
                rec.edges.append((Asset("item", parent), Asset("item", item), "reply_to"))
        if rec.author:
            rec.edges.append((Asset("user", rec.author), Asset("item", item) if item else node, "author_of"))
        return rec
