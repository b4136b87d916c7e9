"""API dumps of social networks: the responses as the API returned them, plus the media
files the scraper downloaded (named `<media id>.<ext>` or after the URL's last segment).

* `twitter`  — Twitter API v2 pages (`data` / `includes.users|tweets|media`), `.json` or
               twarc2 `.jsonl` (one page per line)
* `reddit`   — Reddit listings (`/r/<sub>/<sort>.json`) and comment trees (`/comments/<id>.json`)
* `mastodon` — Mastodon Status entities, one or a list (a timeline) per `.json`

Posts, users and comments are virtual assets; replies join by id across batches. Media a
response names but the batch does not hold become virtual `media` assets (their URL is in
the metadata), so a later batch that brings the file links up.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from hoardfs.adapters.base import (
    Adapter,
    Asset,
    BadDocument,
    BatchView,
    File,
    Parsed,
    Record,
    match_media,
    one_document,
    specific_fields,
    text,
    to_int,
    to_time,
)


class _ApiDump(Adapter):
    suffixes: tuple[str, ...] = (".json",)

    def page(self, batch: BatchView, parsed: Parsed, rel: str, page: Any) -> None:
        """Take one document of a dump (each API dump's own shape)."""
        raise NotImplementedError

    def parse(self, batch: BatchView) -> Parsed:
        parsed = Parsed()
        self.done: set[tuple[str, str]] = set()
        for rel in batch.by_suffix(*self.suffixes):
            mine = Parsed()
            self.new: set[tuple[str, str]] = set()  # what this file adds to `done`, if it is taken
            self.items = 0  # items the file holds, new or already seen in another file
            try:
                with one_document(rel):
                    docs = batch.read_jsonl(rel) if rel.endswith(".jsonl") else [batch.read_json(rel)]
                    for doc in docs:
                        self.page(batch, mine, rel, doc)
                if not self.items:
                    raise BadDocument(f"{rel} holds no {self.format} items")
            except BadDocument as e:
                parsed.reject(f"{e}; check the file is an unmodified {self.format} API response", rel)
                continue
            self.done |= self.new
            parsed.records += mine.records
            parsed.claim(rel, *mine.claimed)
        return parsed

    def first_time(self, kind: str, ident: str) -> bool:
        """True once per (kind, id) and batch: a tweet in two pages is one record (a rejected
        file's items do not count: a good file may hold them too)."""
        self.items += 1
        if (kind, ident) in self.done or (kind, ident) in self.new:
            return False
        self.new.add((kind, ident))
        return True

    def media(self, batch: BatchView, parsed: Parsed, rel: str, owner: Record, ident: str, url: str | None,
              raw: dict[str, Any]) -> None:
        """Link a post's attachment: the downloaded file if the batch has it, else a virtual media asset."""
        files = match_media(batch, [ident], [url] if url else [])
        if files:
            parsed.claim(*files)
            owner.edges.extend((owner.node, File(f), "media_of") for f in files)
        else:
            node = Asset("media", ident)
            owner.edges.append((owner.node, node, "media_of"))
            if self.first_time("media", ident):
                parsed.records.append(Record(node, doc=rel, raw=raw, title=text(raw.get("description") or url),
                                             specific=specific_fields(raw)))


class Twitter(_ApiDump):
    format = "twitter"
    description = "Twitter API v2 responses (.json, or twarc2 .jsonl with one page per line)"
    suffixes = (".json", ".jsonl")
    _EXCLUDE = frozenset({"text", "created_at", "author_id", "entities", "edit_history_tweet_ids", "attachments"})

    def page(self, batch: BatchView, parsed: Parsed, rel: str, page: Any) -> None:
        if not isinstance(page, dict) or "data" not in page:
            raise BadDocument(f"{rel}: a Twitter v2 page is an object with `data`")
        inc = page.get("includes") or {}
        users = {u.get("id"): u for u in inc.get("users", []) if isinstance(u, dict)}
        media = {m.get("media_key"): m for m in inc.get("media", []) if isinstance(m, dict)}
        for u in users.values():
            if u.get("id") and self.first_time("user", u["id"]):
                parsed.records.append(Record(Asset("user", str(u["id"])), doc=rel, raw=u, title=text(u.get("name")),
                                             author=text(u.get("name"), 200), user=text(u.get("username"), 200),
                                             update_time=to_time(u.get("created_at")), specific=specific_fields(u)))
        data = page["data"] if isinstance(page["data"], list) else [page["data"]]
        for tweet in data + [t for t in inc.get("tweets", []) if isinstance(t, dict)]:
            if not isinstance(tweet, dict) or not tweet.get("id"):
                raise BadDocument(f"{rel}: a tweet without an id")
            tid = str(tweet["id"])
            if not self.first_time("tweet", tid):
                continue
            node = Asset("tweet", tid)
            author = users.get(tweet.get("author_id"), {})
            metrics = tweet.get("public_metrics") or {}
            rec = Record(node, doc=rel, raw=tweet, title=text(tweet.get("text")),
                         view_count=to_int(metrics.get("impression_count")),
                         update_time=to_time(tweet.get("created_at")), author=text(author.get("username"), 200),
                         user=text(tweet.get("author_id"), 200), specific=specific_fields(tweet, self._EXCLUDE))
            if tweet.get("author_id"):
                rec.edges.append((Asset("user", str(tweet["author_id"])), node, "author_of"))
            for ref in tweet.get("referenced_tweets") or []:
                kind = {"replied_to": "reply_to", "quoted": "quote_of", "retweeted": "retweet_of"}.get(ref.get("type"))
                if kind and ref.get("id"):
                    rec.edges.append((Asset("tweet", str(ref["id"])), node, kind))
            if tweet.get("conversation_id") and str(tweet["conversation_id"]) != tid:
                rec.edges.append((Asset("tweet", str(tweet["conversation_id"])), node, "thread_of"))
            parsed.records.append(rec)
            for key in (tweet.get("attachments") or {}).get("media_keys", []):
                m = media.get(key, {"media_key": key})
                self.media(batch, parsed, rel, rec, str(key), m.get("url") or m.get("preview_image_url"), m)


class Reddit(_ApiDump):
    format = "reddit"
    description = "Reddit listings and /comments/<id>.json trees (kind/data envelopes)"
    _EXCLUDE = frozenset({"title", "selftext", "body", "author", "created_utc", "created", "replies",
                          "preview", "media_metadata", "all_awardings", "body_html", "selftext_html"})

    def page(self, batch: BatchView, parsed: Parsed, rel: str, doc: Any) -> None:
        listings = doc if isinstance(doc, list) else [doc]
        for listing in listings:
            if not isinstance(listing, dict) or listing.get("kind") != "Listing":
                raise BadDocument(f"{rel}: expected a Reddit Listing (kind=Listing), found "
                                  f"{listing.get('kind') if isinstance(listing, dict) else type(listing).__name__}")
            self.children(batch, parsed, rel, listing)

    def children(self, batch: BatchView, parsed: Parsed, rel: str, listing: dict[str, Any]) -> None:
        for child in (listing.get("data") or {}).get("children", []):
            kind, d = child.get("kind"), child.get("data") or {}
            if kind not in ("t1", "t3") or not d.get("id"):
                continue  # "more" stubs and other kinds carry no content
            name = d.get("name") or f"{kind}_{d['id']}"
            node = Asset("post" if kind == "t3" else "comment", name)
            if self.first_time(node.kind, name):
                rec = Record(node, doc=rel, raw=d, title=text(d.get("title") or d.get("body")),
                             view_count=to_int(d.get("view_count")), update_time=to_time(d.get("created_utc")),
                             author=text(d.get("author"), 200), user=text(d.get("author_fullname"), 200),
                             specific=specific_fields(d, self._EXCLUDE))
                if d.get("author") and d["author"] != "[deleted]":
                    rec.edges.append((Asset("user", d["author"]), node, "author_of"))
                if d.get("subreddit"):
                    rec.edges.append((Asset("community", d["subreddit"]), node, "thread_of"))
                parent = d.get("parent_id")
                if kind == "t1" and parent:
                    rec.edges.append((Asset("post" if parent.startswith("t3_") else "comment", parent), node,
                                      "reply_to"))
                parsed.records.append(rec)
                if kind == "t3" and d.get("url") and not d.get("is_self"):
                    files = match_media(batch, [d["id"], name], [d["url"]])
                    parsed.claim(*files)
                    rec.edges.extend((node, File(f), "media_of") for f in files)
            replies = d.get("replies")
            if isinstance(replies, dict):
                self.children(batch, parsed, rel, replies)


class Mastodon(_ApiDump):
    format = "mastodon"
    description = "Mastodon Status entities (one status or a timeline list per .json)"
    _EXCLUDE = frozenset({"content", "account", "media_attachments", "created_at", "reblog", "emojis", "mentions"})

    def page(self, batch: BatchView, parsed: Parsed, rel: str, doc: Any) -> None:
        for status in doc if isinstance(doc, list) else [doc]:
            if not isinstance(status, dict) or "id" not in status or "account" not in status:
                raise BadDocument(f"{rel}: a Mastodon status needs `id` and `account`")
            self.status(batch, parsed, rel, status)

    def status(self, batch: BatchView, parsed: Parsed, rel: str, s: dict[str, Any]) -> Asset:
        node = Asset("status", str(s["id"]))
        if not self.first_time("status", node.id):
            return node
        acct = s.get("account") or {}
        user = Asset("user", str(acct.get("acct") or acct.get("id")))
        rec = Record(node, doc=rel, raw=s, title=text(_strip_html(s.get("content") or s.get("spoiler_text") or "")),
                     update_time=to_time(s.get("created_at")), author=text(acct.get("display_name"), 200),
                     user=text(acct.get("acct"), 200), specific=specific_fields(s, self._EXCLUDE))
        rec.edges.append((user, node, "author_of"))
        if s.get("in_reply_to_id"):
            rec.edges.append((Asset("status", str(s["in_reply_to_id"])), node, "reply_to"))
        parsed.records.append(rec)
        if self.first_time("user", user.id):
            parsed.records.append(Record(user, doc=rel, raw=acct, title=text(acct.get("display_name")),
                                         author=text(acct.get("display_name"), 200), user=text(acct.get("acct"), 200),
                                         update_time=to_time(acct.get("created_at")),
                                         specific=specific_fields(acct, frozenset({"note", "emojis", "fields"}))))
        for att in s.get("media_attachments") or []:
            self.media(batch, parsed, rel, rec, str(att.get("id")), att.get("url") or att.get("remote_url"), att)
        if isinstance(s.get("reblog"), dict):
            rec.edges.append((self.status(batch, parsed, rel, s["reblog"]), node, "retweet_of"))
        return node


def _strip_html(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html)).strip()
