"""Records as JSON: how they leave the sandboxed parser (hoardfs.adapters.isolated) and wait between
the ingest steps in the batch's work directory."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from hoardfs.adapters.base import Asset, File, Record, short

#: the bytes of a document's fields kept in its metadata row (the whole document is a stored file)
RAW_LIMIT = 1024


def small_raw(doc: dict[str, Any], limit: int = RAW_LIMIT) -> dict[str, Any] | None:
    """The first top-level scalar fields of a document that fit in `limit` bytes of JSON
    (long strings cut to 200 characters); the whole document is the raw object."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, str):
            v = v[:200]
        elif not isinstance(v, (int, float, bool)) or v is None:
            continue
        out[k] = v
        if _jsonb_size(out) > limit:  # measured as PostgreSQL prints jsonb (its CHECK counts that)
            del out[k]
            break
    return out or None


def _jsonb_size(d: dict[str, Any]) -> int:
    # a lone surrogate (JSON's `\ud800`) counts 3 bytes, as the U+FFFD the database gets for it
    return len(json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def node_json(n: File | Asset) -> list[str]:
    return ["f", n.rel] if isinstance(n, File) else ["a", n.kind, n.id]


def node_load(j: list[str]) -> File | Asset:
    return File(j[1]) if j[0] == "f" else Asset(j[1], j[2])


def record_json(r: Record) -> dict[str, Any]:
    """The record as JSON values; `record_json(record_load(d)) == d`."""
    d = {k: getattr(r, k) for k in ("doc", "title", "view_count", "author", "user", "specific")}
    d["raw"] = small_raw(r.raw) or {}  # the whole document is a stored file (raw_object)
    d.update(node=node_json(r.node), edges=[[node_json(p), node_json(c), rel] for p, c, rel in r.edges],
             update_time=r.update_time.isoformat() if r.update_time else None,
             download_time=r.download_time.isoformat() if r.download_time else None)
    return json.loads(json.dumps(d, default=str))


def record_load(d: dict[str, Any]) -> Record:
    t = dt.datetime.fromisoformat
    return Record(node_load(d["node"]), doc=d["doc"], raw=d["raw"], title=d["title"], view_count=d["view_count"],
                  update_time=t(d["update_time"]) if d["update_time"] else None,
                  download_time=t(d["download_time"]) if d["download_time"] else None, author=d["author"],
                  user=d["user"], specific=d["specific"],
                  edges=[(node_load(p), node_load(c), rel) for p, c, rel in d["edges"]])


def record_fault(d: object) -> str | None:
    """What makes `d` no `record_json` answer (a key missing, a value of another type), or None:
    records come from the sandboxed parser, the process that read the hostile bytes."""
    if not isinstance(d, dict) or set(d) != _KEYS:
        return "not a record"
    for k in ("doc", "title", "author", "user"):
        if d[k] is not None and not isinstance(d[k], str):
            return f"its {k} is no text"
    if d["view_count"] is not None and (not isinstance(d["view_count"], int) or isinstance(d["view_count"], bool)):
        return "its view_count is no integer"
    if not isinstance(d["raw"], dict) or not isinstance(d["specific"], dict):
        return "its raw or specific is no object"
    for k in ("update_time", "download_time"):
        if d[k] is not None:
            try:
                dt.datetime.fromisoformat(d[k])
            except (TypeError, ValueError):
                return f"its {k} is no time"
    edges = d["edges"]
    if not _node(d["node"]) or not isinstance(edges, list) or not all(
            isinstance(e, list) and len(e) == 3 and _node(e[0]) and _node(e[1]) and isinstance(e[2], str)
            for e in edges):
        return "its node or edges are malformed"
    return None


#: what PostgreSQL's text and jsonb cannot hold: NUL and the UTF-16 surrogates (JSON's `\ud800`
#: escape gives Python a lone one, which no UTF-8 encodes)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(d: dict[str, Any]) -> str | None:
    """What in a record's JSON (a `record_fault`-free one) the database cannot hold where it cannot
    be replaced, or None: a key of its fields (replaced, two keys could become one), an asset's
    kind or id, or a relationship (identities). Text values are not looked at: the intent takes
    them with U+FFFD in place (hoardfs.adapters.intent); the stored document keeps them."""
    def key_in(v: Any, depth: int = 0) -> tuple[str, str] | None:
        if isinstance(v, dict):
            for k, x in v.items():
                if UNSTORABLE.search(k):
                    return "the key", k
                if depth < 64 and (inner := key_in(x, depth + 1)):
                    return inner
        elif isinstance(v, list) and depth < 64:
            return next((inner for x in v if (inner := key_in(x, depth + 1))), None)
        return None

    nodes = [d["node"], *(n for e in d["edges"] for n in e[:2])]
    found = key_in(d["specific"]) or key_in(d["raw"]) or next(
        ((f"the {short(n[1], 40)} id", n[2] if UNSTORABLE.search(n[2]) else n[1]) for n in nodes
         if n[0] == "a" and (UNSTORABLE.search(n[1]) or UNSTORABLE.search(n[2]))), None) or next(
        (("the relationship", e[2]) for e in d["edges"] if UNSTORABLE.search(e[2])), None)
    if found is None:
        return None
    what, text = found
    c = UNSTORABLE.search(text).group()  # type: ignore[union-attr]
    char = "NUL (U+0000)" if c == "\x00" else f"a lone surrogate (U+{ord(c):04X})"
    return f"{what} {short(text)} holds {char}, which the database cannot hold"


_KEYS = {"doc", "title", "view_count", "author", "user", "specific", "raw", "node", "edges", "update_time",
         "download_time"}


def _node(j: object) -> bool:
    return isinstance(j, list) and (len(j) == 2 and j[0] == "f" or len(j) == 3 and j[0] == "a") and all(
        isinstance(x, str) for x in j)
