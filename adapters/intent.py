"""Records + the store's digests → one write-intent for a batch (pure data; S05 applies it)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from hoardfs.adapters.base import File, Node, Record
from hoardfs.adapters.records import RAW_LIMIT, UNSTORABLE, small_raw
from hoardfs.base.paths import file_ext
from hoardfs.sql.intents import virtual_sha256

#: relationships the built-in adapters use beyond the ones migration 001 registers
RELATIONSHIPS = ("thumbnail_of", "subtitle_of", "attachment_of", "quote_of", "retweet_of")

__all__ = ["RAW_LIMIT", "RELATIONSHIPS", "IntentStats", "build_intent", "small_raw"]


@dataclass
class IntentStats:
    records: int = 0
    skipped_records: int = 0  # their node's file was rejected after parsing
    edges: int = 0
    virtual: int = 0
    notes: list[str] = field(default_factory=list)


def build_intent(key: str, batch_id: str, source: str, records: list[Record], stored: dict[str, tuple[str, int]],
                 download_time: dt.datetime, labels: dict[str, dict[str, str]] | None = None,
                 ) -> tuple[dict[str, Any], IntentStats]:
    """`stored`: relative path → (sha256 hex, size) of every file the store took; `labels`:
    relative path → the labels (key → value) its file gets, with origin `ingest:<source>`
    (the rendered files' labels, e.g. a drawing's word)."""
    stats = IntentStats()
    nodes: dict[str, dict[str, Any]] = {}
    for rel, (sha, size) in stored.items():
        node = nodes.setdefault(sha, {"sha256": sha, "physical": {
            "size": size, "file_type": file_ext(rel) or None, "locators": []}})
        node["physical"]["locators"].append(f"batch:{batch_id}/{rel}")

    def sha_of(n: Node) -> str | None:
        if isinstance(n, File):
            return stored[n.rel][0] if n.rel in stored else None
        sha = virtual_sha256(n.kind, source, n.id)
        if sha not in nodes:
            nodes[sha] = {"sha256": sha, "virtual": {"kind": n.kind, "source": source, "stable_id": n.id[:1024]}}
            stats.virtual += 1
        return sha

    metadata, edges, seen_meta = [], {}, set()
    for rec in records:
        me = sha_of(rec.node)
        if me is None:
            stats.skipped_records += 1
            continue
        stats.records += 1
        if me not in seen_meta:  # one row per node and source: the first record of the batch wins
            seen_meta.add(me)
            metadata.append(_metadata(rec, me, source, stored, download_time))
        for parent, child, rel_name in rec.edges:
            p, c = sha_of(parent), sha_of(child)
            if p and c and p != c:
                edges[(p, c, rel_name)] = {"parent": p, "child": c, "relationship": rel_name}
    stats.edges = len(edges)
    members = sorted({sha for sha, _ in stored.values()})
    intent = {"key": key, "sources": [source],
              "relationships": [{"name": r} for r in RELATIONSHIPS],
              "nodes": list(nodes.values()), "metadata": metadata, "edges": list(edges.values()),
              "batches": [{"batch_id": batch_id, "source": source, "members": members, "seal": True}]}
    marks = _no_nul([{"node": stored[rel][0], "key": k, "value": v, "origin": f"ingest:{source}"}
                     for rel, kv in sorted((labels or {}).items()) if rel in stored for k, v in sorted(kv.items())])
    if marks:  # only then: an intent of a batch without labels hashes as before
        intent["labels"] = marks
    return intent, stats


def _metadata(rec: Record, sha: str, source: str, stored: dict[str, tuple[str, int]],
              download_time: dt.datetime) -> dict[str, Any]:
    raw_object = stored[rec.doc][0] if rec.doc and rec.doc in stored else None
    return _no_nul({"node": sha, "source": source, "title": rec.title, "view_count": rec.view_count,
                    "update_time": rec.update_time, "download_time": rec.download_time or download_time,
                    "author": rec.author, "user": rec.user, "raw_metadata": small_raw(rec.raw),
                    "raw_object": raw_object, "specific": _bounded(_no_nul(rec.specific))})


def _no_nul(v: Any) -> Any:
    """PostgreSQL text and jsonb cannot hold NUL (U+0000) nor a lone surrogate (JSON's `\\ud800`);
    scraped text sometimes does. The stored document keeps the original; the database gets
    U+FFFD in its place. (A key holding one refuses its document at the scan: `unstorable`.)"""
    if isinstance(v, str):
        return UNSTORABLE.sub("\ufffd", v) if UNSTORABLE.search(v) else v
    if isinstance(v, dict):
        return {_no_nul(k): _no_nul(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nul(x) for x in v]
    return v


def _bounded(specific: dict[str, Any], limit: int = 16000) -> dict[str, Any] | None:
    """Specific fields up to the intent's 16 KB limit (the raw object has the rest)."""
    if not specific:
        return None
    out, size = {}, 2
    for k, v in specific.items():
        if isinstance(v, str) and len(v) > 2000:
            v = v[:2000]
        item = len(json.dumps({k: v}, ensure_ascii=False, default=str).encode())
        if size + item > limit:
            break
        out[k] = v
        size += item
    return out
