"""Type-mutation fuzz of every JSON adapter: one document of a batch with values of the wrong
JSON type (an object where a list belongs, a number where text belongs, …) is rejected with
one line naming its file (quickdraw: a line naming its line) — never an exception out of the
adapter, its renderer or the intent builder — and the batch's other documents still give their records and a valid write-intent. (csv_manifest
is not here: its cells are all text, there are no JSON types to mutate.)"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoardfs.adapters import FORMATS, parse_batch
from hoardfs.adapters.intent import build_intent
from hoardfs.adapters.records import record_json
from hoardfs.sql.intents import parse_intent
from tests.helpers import REALDATA

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8ff"
                    "ff3f0005fe02fea7d6a4a00000000049454e44ae426082")

TWEET_PAGE = {"data": [{"id": "1", "text": "hi", "author_id": "10", "created_at": "2022-01-01T00:00:00Z",
                        "conversation_id": "0", "attachments": {"media_keys": ["3_1"]},
                        "referenced_tweets": [{"type": "replied_to", "id": "0"}],
                        "public_metrics": {"impression_count": 5, "like_count": 1}}],
              "includes": {"users": [{"id": "10", "name": "A", "username": "a", "created_at": "2020-01-01T00:00:00Z"}],
                           "media": [{"media_key": "3_1", "url": "https://x.example/y.jpg"}],
                           "tweets": [{"id": "0", "text": "root", "author_id": "10"}]}}
REDDIT_LISTING = {"kind": "Listing", "data": {"children": [
    {"kind": "t3", "data": {"id": "p1", "name": "t3_p1", "title": "T", "author": "u", "subreddit": "s",
                            "created_utc": 1600000000, "url": "https://i.example/x.jpg", "is_self": False,
                            "view_count": 4, "replies": {"kind": "Listing", "data": {"children": [
                                {"kind": "t1", "data": {"id": "c1", "name": "t1_c1", "body": "b", "author": "v",
                                                        "parent_id": "t3_p1"}}]}}}}]}}
MASTODON_STATUS = {"id": "100", "content": "<p>hi</p>", "created_at": "2022-01-01T00:00:00Z", "in_reply_to_id": "99",
                   "account": {"id": "1", "acct": "k", "display_name": "K", "created_at": "2020-01-01T00:00:00Z"},
                   "media_attachments": [{"id": "5", "url": "https://m.example/5.png", "description": "d"}],
                   "reblog": {"id": "101", "account": {"id": "2", "acct": "j"}, "content": "x"}}
YTDLP_INFO = {"id": "v1", "title": "t", "ext": "mp4", "view_count": 3, "timestamp": 1600000000, "uploader": "u",
              "channel_id": "c", "playlist_id": "p", "extractor_key": "Youtube", "formats": [{"format_id": "18"}],
              "tags": ["a", "b"]}
GALLERY_DOC = {"category": "site", "id": 5, "user": {"name": "n", "id": 7}, "title": "t",
               "date": "2024-01-01 00:00:00", "tags": ["x"], "width": 1}
SIDECAR_DOC = {"title": "t", "author": {"name": "n"}, "views": 3, "date": "2024-01-02", "id": "i", "parent_id": "p"}
QUICKDRAW = [{"word": "cat", "countrycode": "US", "timestamp": "2017-03-03 20:39:08.85189 UTC", "recognized": True,
              "key_id": f"{n}", "drawing": [[[1, 2 + n, 3], [4, 5, 6 + n]], [[7, 8], [9, 10], [0, 12]]]} for n in (1, 2)]


def _jsonl(*pages: Any) -> bytes:
    return b"".join(json.dumps(p).encode() + b"\n" for p in pages)


def _cases() -> list[tuple[str, str, Any, dict[str, bytes]]]:
    """(format, victim file, victim document, the rest of the batch). The victim sorts first
    and shares ids with a bystander: a rejected victim must not hide the bystander's items."""
    cases = [
        ("twitter", "a.jsonl", [TWEET_PAGE], {"b.jsonl": _jsonl(TWEET_PAGE)}),
        ("twitter", "a.json", TWEET_PAGE, {"b.json": json.dumps(TWEET_PAGE).encode()}),
        ("reddit", "a.json", [REDDIT_LISTING], {"b.json": json.dumps(REDDIT_LISTING).encode()}),
        ("mastodon", "a.json", [MASTODON_STATUS], {"b.json": json.dumps(MASTODON_STATUS).encode()}),
        ("ytdlp", "a.info.json", YTDLP_INFO, {"a.mp4": b"\0\0\0\x18ftypmp42", "b.mp4": b"\0\0\0\x18ftypmp42",
                                               "b.info.json": json.dumps({**YTDLP_INFO, "id": "v2"}).encode()}),
        ("gallery_dl", "a.png.json", GALLERY_DOC, {"a.png": PNG, "b.png": PNG + b"b",
                                                   "b.png.json": json.dumps(GALLERY_DOC).encode()}),
        ("sidecar", "a.png.json", SIDECAR_DOC, {"a.png": PNG, "b.png": PNG + b"b",
                                                "b.png.json": json.dumps(SIDECAR_DOC).encode()}),
        # a drawing repeated in another file is a line refused there (a repeated key_id): the
        # bystander's drawings are others
        ("quickdraw", "a.json", QUICKDRAW, {"b.ndjson": _jsonl(*({**d, "key_id": f"b{d['key_id']}"} for d in QUICKDRAW))}),
    ]
    social = REALDATA / "social_api"
    if social.is_dir():  # the real samples when ../shared/realdata is there
        for p in sorted(social.glob("*")):
            fmt = p.name.split("_")[0]
            doc = ([json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.suffix == ".jsonl"
                   else json.loads(p.read_text()))
            cases.append((fmt, "a" + p.suffix, doc, {"b" + p.suffix: p.read_bytes()}))
        infos = sorted((REALDATA / "ytdlp_info_json").glob("*.info.json"))
        if len(infos) >= 2:
            cases.append(("ytdlp", "a.info.json", json.loads(infos[0].read_text()),
                          {"a.mp4": b"\0\0\0\x18ftypmp42", "b.mp4": b"\0\0\0\x18ftypmp42",
                           "b.info.json": infos[1].read_bytes()}))
    return cases


CASES = _cases()
#: a value of each JSON type put where a value of another type was
REPLACEMENTS: dict[type, list[Any]] = {
    dict: [["not-an-object"], [], "not-an-object", 7, None, True],
    list: [{"x": 1}, {}, "a list", 7, None, ["x", {"y": [1]}]],
    str: [7, -1, 1e308, ["text"], {"t": "x"}, None, ""],
    int: ["7", [7], {"n": 7}, None, 10**30, -7],
    float: ["1.5", [1.5], None],
    bool: ["true", 1, [True]],
    type(None): [{"x": None}, ["x"], "null", 0],
}


def _paths(v: Any, at: tuple = ()) -> list[tuple]:
    out = [at]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*at, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*at, i))
    return out


def _get(v: Any, path: tuple) -> Any:
    for k in path:
        v = v[k]
    return v


def _set(v: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    _get(v, path[:-1])[path[-1]] = new
    return v


def _write(fmt: str, victim: str, doc: Any) -> bytes:
    if victim.endswith(".jsonl") and isinstance(doc, list):
        return _jsonl(*doc)
    return json.dumps(doc).encode()


def _nodes(parsed, doc_rel: str | None = None) -> set:
    return {r.node for r in parsed.records if doc_rel is None or r.doc == doc_rel}


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mistyped_document_is_rejected_alone(tmp_path: Path, case: int, data) -> None:
    """Mutate 1..3 values of the victim's JSON to another type: the adapter raises nothing, the
    victim is rejected with a reason naming it (or taken, if the change is harmless), the
    bystander is taken and — the victim rejected — gives all its items, and the records make a
    valid write-intent."""
    fmt, victim, doc, rest = CASES[case]
    root = tmp_path / "batch"
    if not root.is_dir():
        root.mkdir()
        for rel, body in rest.items():
            (root / rel).write_bytes(body)
    adapter = FORMATS[fmt](fmt)
    bystanders = {rel for rel in rest if not rel.startswith("a.")}  # a.*: the victim's own media
    (root / victim).unlink(missing_ok=True)
    alone, _ = parse_batch(root, adapter)  # the batch without the victim
    assert alone.records and not [r for r in alone.rejects if set(r.paths) & bystanders], alone.rejects

    mutated = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(mutated)), label="path")
        old = _get(mutated, path)
        new = data.draw(st.sampled_from(REPLACEMENTS[type(old)]), label="new")
        mutated = _set(mutated, path, copy.deepcopy(new))
    (root / victim).write_bytes(_write(fmt, victim, mutated))

    parsed, view = parse_batch(root, adapter)  # must not raise

    victim_rejects = [r for r in parsed.rejects if victim in r.paths]
    assert all(r.reason and "\n" not in r.reason for r in victim_rejects), victim_rejects
    assert not [r for r in parsed.rejects if set(r.paths) & bystanders], parsed.rejects
    assert bystanders <= parsed.claimed
    if victim_rejects:  # the bystander gives everything it gives alone (with the victim taken, items
        assert _nodes(alone) <= _nodes(parsed), _nodes(alone) - _nodes(parsed)  # both hold are the victim's)
    for rec in parsed.records:  # a record the parse made is one the ingest can render (stroke data)
        adapter.render(record_json(rec))
    stored = {rel: (hashlib.sha256((root / rel).read_bytes()).hexdigest(), size)
              for rel, size in view.files.items() if rel in parsed.claimed}
    intent, _ = build_intent("fuzz", "b1", fmt, parsed.records, stored, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    parse_intent(json.loads(json.dumps(intent, default=str)))


#: JSON that json.loads refuses with neither JSONDecodeError nor UnicodeDecodeError
UNREADABLE = {"nested past the recursion limit": ("[" * 100_000 + "]" * 100_000, "nested deeper than can be read"),
              "a 5,000-digit number": ('{"id": 1' + "0" * 5000 + "}", "a number of more than 4,300 digits")}


@pytest.mark.parametrize("what", list(UNREADABLE))
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_json_too_deep_or_too_long_to_read_rejects_its_document_alone(tmp_path: Path, case: int, what: str) -> None:
    """A document nested past Python's recursion limit, or holding an integer of more digits
    than Python converts, is one reject naming it — json.loads raises RecursionError and
    ValueError there, which ended the whole batch's parse — and the other documents are taken."""
    fmt, victim, _doc, rest = CASES[case]
    root = tmp_path / "batch"
    root.mkdir()
    for rel, body in rest.items():
        (root / rel).write_bytes(body)
    body, phrase = UNREADABLE[what]
    (root / victim).write_text(body)
    parsed, _ = parse_batch(root, FORMATS[fmt](fmt))
    mine = [r.reason for r in parsed.rejects if victim in r.paths]
    start = f"{victim} line 1 is JSON " if victim.endswith(".jsonl") else f"{victim} is JSON "
    assert len(mine) == 1 and mine[0].startswith(start) and phrase in mine[0], parsed.rejects
    assert {rel for rel in rest if not rel.startswith("a.")} <= parsed.claimed


def test_a_csv_header_past_the_field_limit_rejects_its_manifest_alone(tmp_path: Path) -> None:
    """A manifest whose header holds a cell past csv's field limit (128 KB) is one reject naming
    it (csv.Error was raised outside the rows' reading, and ended the batch's parse)."""
    root = tmp_path / "batch"
    root.mkdir()
    (root / "a.csv").write_text('"' + "x" * 200_000 + '"\n')
    (root / "b.csv").write_text("path,title\nb.png,t\n")
    (root / "b.png").write_bytes(PNG)
    parsed, _ = parse_batch(root, FORMATS["csv_manifest"]("csv_manifest"))
    assert [r.paths for r in parsed.rejects] == [["a.csv"]]
    assert parsed.rejects[0].reason.startswith("manifest a.csv line 1: field larger than field limit")
    assert parsed.claimed == {"b.csv", "b.png"}


def test_a_list_of_strings_as_attachments_fails_only_its_file(tmp_path: Path) -> None:
    """The reported case: `"media_attachments": ["not-an-object"]` rejects that status's file
    with one line naming it; the good status in the other file is ingested."""
    root = tmp_path / "batch"
    root.mkdir()
    (root / "bad.json").write_text(json.dumps({**MASTODON_STATUS, "id": "200", "media_attachments": ["not-an-object"]}))
    (root / "good.json").write_text(json.dumps(MASTODON_STATUS))
    parsed, _ = parse_batch(root, FORMATS["mastodon"]("mastodon"))
    assert [r.paths for r in parsed.rejects] == [["bad.json"]]
    assert parsed.rejects[0].reason.startswith("bad.json: a field holds the wrong type of JSON value")
    assert {("status", "100"), ("status", "101")} <= {(n.kind, n.id) for n in _nodes(parsed)}
