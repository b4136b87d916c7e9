"""`csv_manifest`: simple sources that list their files in a CSV.

Every `*.csv` of the batch is a manifest; its rows name files relative to the manifest's
directory in a `path` column (alias `file`, `filename`). Recognised columns (all optional):
`id`/`post_id`, `thread_id`, `parent_post_id`/`parent_id`, `title`, `author`, `user`,
`views`/`view_count`, `posted_at`/`date`/`created_at`, `downloaded_at`; every other column
is a source-specific field. With an id, the row describes a virtual post (the file is its
`media_of` child), so replies across batches join by id.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from hoardfs.adapters.base import (
    Adapter,
    Asset,
    BadDocument,
    BatchView,
    File,
    Parsed,
    Record,
    short,
    text,
    to_int,
    to_time,
)

_PATH = ("path", "file", "filename")
_COLUMNS = {
    "id": ("id", "post_id"), "thread": ("thread_id",), "parent": ("parent_post_id", "parent_id"),
    "title": ("title",), "author": ("author",), "user": ("user", "username"),
    "views": ("views", "view_count"), "time": ("posted_at", "date", "created_at", "updated_at"),
    "downloaded": ("downloaded_at", "download_time"),
}
_KNOWN = frozenset(_PATH) | frozenset(c for cols in _COLUMNS.values() for c in cols)


def _get(row: dict[str, str], what: str) -> str | None:
    return next((row[c].strip() for c in _COLUMNS[what] if (row.get(c) or "").strip()), None)


class CsvManifest(Adapter):
    format = "csv_manifest"
    description = "manifest.csv (any *.csv) with a path column and optional id/thread/parent/title/author/views/date"

    def parse(self, batch: BatchView) -> Parsed:
        parsed = Parsed()
        for man in batch.by_suffix(".csv"):
            try:
                rows = self._rows(batch, man)
            except BadDocument as e:
                parsed.reject(f"{e}; the files it lists are kept in quarantine too", man)
                continue
            parsed.claim(man)
            first_row: dict[str, int] = {}
            for n, row in rows:
                self._row(batch, parsed, man, n, row, first_row)
        return parsed

    @staticmethod
    def _rows(batch: BatchView, man: str) -> list[tuple[int, dict[str, str]]]:
        try:
            body = batch.read_bytes(man).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise BadDocument(f"manifest {man} is not UTF-8 (byte {e.start})") from None
        reader = csv.DictReader(io.StringIO(body, newline=""))
        try:
            header = reader.fieldnames or []
        except csv.Error as e:  # a header cell past csv's field limit (128 KB)
            raise BadDocument(f"manifest {man} line {max(reader.line_num, 1)}: {e}") from None
        if not any(c in header for c in _PATH):
            raise BadDocument(f"manifest {man} has no path column (one of {', '.join(_PATH)}); "
                              f"its header is {', '.join(header) or 'empty'}")
        try:
            return [(n, row) for n, row in enumerate(reader, 2)]
        except csv.Error as e:
            raise BadDocument(f"manifest {man} line {reader.line_num}: {e}") from None

    def _row(self, batch: BatchView, parsed: Parsed, man: str, n: int, row: dict[str, Any],
             first_row: dict[str, int]) -> None:
        where = f"{man} row {n}"
        if None in row:  # more cells than header columns
            # csv.DictReader files the cells past the header under the key None (its restkey)
            parsed.reject(f"{where} has {len(row[None])} cells more than the header; fix the quoting")  # type: ignore[index]
            return
        name = next((row[c] for c in _PATH if row.get(c)), "")
        try:
            rel = batch.ref(man, name)
        except BadDocument as e:
            parsed.reject(f"{where}: {e}")
            return
        if not batch.has(rel):
            parsed.reject(f"{where} names {short(rel)}, which is not in the batch (or was rejected itself)")
            return
        if rel in first_row:
            parsed.reject(f"{where} repeats {rel} (first listed in row {first_row[rel]}); the first row is kept")
            return
        first_row[rel] = n
        parsed.claim(rel)
        specific = {k: v for k, v in row.items() if k not in _KNOWN and v not in (None, "")}
        post, thread, parent = _get(row, "id"), _get(row, "thread"), _get(row, "parent")
        author = text(_get(row, "author"), 200)
        node = Asset("post", post) if post else File(rel)
        rec = Record(node, doc=man, raw={k: v for k, v in row.items() if v}, title=text(_get(row, "title")),
                     view_count=to_int(_get(row, "views")), update_time=to_time(_get(row, "time")),
                     download_time=to_time(_get(row, "downloaded")), author=author,
                     user=text(_get(row, "user"), 200) or author, specific=specific)
        if post:
            rec.edges.append((node, File(rel), "media_of"))
        if thread:
            rec.edges.append((Asset("thread", thread), node, "thread_of"))
        if parent and parent != post:
            rec.edges.append((Asset("post", parent), node, "reply_to"))
        if author:
            rec.edges.append((Asset("user", author), node, "author_of"))
        parsed.records.append(rec)
