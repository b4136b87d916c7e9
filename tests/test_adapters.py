"""Adapters on real public samples (../shared/realdata when present) and on generated batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoardfs.adapters import FORMATS, Asset, File, adapter_for, parse_batch
from hoardfs.adapters.base import hostile_reason, specific_fields, to_time
from hoardfs.adapters.intent import build_intent, small_raw
from hoardfs.adapters.synth import Spec, generate
from hoardfs.base.config import SOURCE_FORMATS
from hoardfs.sql.intents import parse_intent
from tests.helpers import REALDATA, needs_realdata


def _batch(tmp_path: Path, files: dict[str, Path | bytes]) -> Path:
    root = tmp_path / "batch"
    root.mkdir()
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    return root


def _ok(parsed) -> None:
    assert not parsed.rejects, [(r.paths, r.reason) for r in parsed.rejects]


def test_config_names_every_format() -> None:
    """hoard.toml accepts exactly the formats that have an adapter, listed in the same order."""
    assert tuple(FORMATS) == SOURCE_FORMATS


@needs_realdata
def test_ytdlp_real_info_json(tmp_path: Path) -> None:
    """Every real yt-dlp/youtube-dl info.json parses, paired with a media file named per its `ext`."""
    files: dict[str, Path | bytes] = {}
    video = REALDATA / "video" / "imageio_cockatoo.mp4"
    for p in sorted((REALDATA / "ytdlp_info_json").glob("*.info.json")):
        doc = json.loads(p.read_bytes())
        stem = p.name[: -len(".info.json")]
        files[p.name] = p
        files[f"{stem}.{doc.get('ext') or 'mp4'}"] = video.read_bytes() + stem.encode()
    parsed, view = parse_batch(_batch(tmp_path, files), adapter_for("ytdlp", {}))
    _ok(parsed)
    assert len(parsed.records) == 4 and parsed.claimed == set(view.files)
    by_doc = {r.doc: r for r in parsed.records}
    tube = by_doc["tubesync_metadata_2023-06-29.info.json"]
    assert tube.title and tube.view_count and tube.update_time and tube.author
    assert ("channel" in {e[0].kind for e in tube.edges if isinstance(e[0], Asset)})
    assert "formats" not in tube.specific and "duration" in tube.specific  # lists of objects stay in the raw object
    assert len(json.dumps(small_raw(tube.raw), ensure_ascii=False).encode()) <= 1024


@needs_realdata
def test_twitter_real_pages(tmp_path: Path) -> None:
    """twarc2 v2 pages: tweets and users become virtual assets with author/reply/quote edges;
    media the batch lacks become virtual media assets."""
    social = REALDATA / "social_api"
    parsed, _ = parse_batch(_batch(tmp_path, {p.name: p for p in social.glob("twitter_*.jsonl")}),
                            adapter_for("twitter", {}))
    _ok(parsed)
    kinds = {r.node.kind for r in parsed.records}
    assert {"tweet", "user", "media"} <= kinds
    rels = {e[2] for r in parsed.records for e in r.edges}
    assert {"author_of", "media_of"} <= rels
    tweet = next(r for r in parsed.records if r.node == Asset("tweet", "1558553189766631429"))
    assert tweet.update_time.year == 2022 and tweet.author and "public_metrics.like_count" in tweet.specific


@needs_realdata
def test_twitter_media_file_links_when_present(tmp_path: Path) -> None:
    """A downloaded attachment named after its media_key is linked as the tweet's physical media."""
    social = REALDATA / "social_api"
    page = social / "twitter_v2_tweet_lookup_media.twarc.jsonl"
    key = json.loads(page.read_text().splitlines()[0])["includes"]["media"][0]["media_key"]
    parsed, _ = parse_batch(_batch(tmp_path, {page.name: page, f"{key}.jpg": REALDATA / "images" / "pillow_flower.jpg"}),
                            adapter_for("twitter", {}))
    _ok(parsed)
    assert any(e[1] == File(f"{key}.jpg") and e[2] == "media_of" for r in parsed.records for e in r.edges)


@needs_realdata
def test_reddit_real_listing_and_comment_tree(tmp_path: Path) -> None:
    """Posts, nested comments (reply_to their parent fullname), authors and subreddits."""
    social = REALDATA / "social_api"
    parsed, _ = parse_batch(_batch(tmp_path, {p.name: p for p in social.glob("reddit_*.json")}),
                            adapter_for("reddit", {}))
    _ok(parsed)
    posts = [r for r in parsed.records if r.node.kind == "post"]
    comments = [r for r in parsed.records if r.node.kind == "comment"]
    assert posts and comments
    assert all(any(e[2] == "reply_to" and e[1] == c.node for e in c.edges) for c in comments)
    assert all(p.update_time is not None and p.title for p in posts)


@needs_realdata
def test_mastodon_real_status(tmp_path: Path) -> None:
    """A status with an image attachment: status, its author, and the attachment."""
    p = REALDATA / "social_api" / "mastodon_status_with_attachment.json"
    parsed, _ = parse_batch(_batch(tmp_path, {p.name: p}), adapter_for("mastodon", {}))
    _ok(parsed)
    status = next(r for r in parsed.records if r.node.kind == "status")
    assert status.user == "konstantin" and "coffee" in status.title and "<" not in status.title
    assert {"author_of", "media_of"} <= {e[2] for r in parsed.records for e in r.edges}


@needs_realdata
def test_wrong_format_is_rejected_with_reason(tmp_path: Path) -> None:
    """Feeding Reddit JSON to the mastodon adapter rejects the file, naming what was expected."""
    p = REALDATA / "social_api" / "reddit_listing_subreddit_posts.json"
    parsed, _ = parse_batch(_batch(tmp_path, {p.name: p}), adapter_for("mastodon", {}))
    assert not parsed.records
    assert "needs `id` and `account`" in parsed.rejects[0].reason


@needs_realdata
def test_real_images_with_generic_sidecars(tmp_path: Path) -> None:
    """Real JPEG/PNG/GIF/WebP files with `<file>.json` sidecars through the generic adapter."""
    files: dict[str, Path | bytes] = {}
    for img in sorted((REALDATA / "images").iterdir()):
        files[img.name] = img
        files[img.name + ".json"] = json.dumps({"title": img.stem, "author": "pillow", "date": "2024-01-02"}).encode()
    parsed, view = parse_batch(_batch(tmp_path, files), adapter_for("sidecar", {}))
    _ok(parsed)
    assert len(parsed.records) == len(view.files) // 2


def test_generated_batches_parse_cleanly(tmp_path: Path) -> None:
    """The synthetic ytdlp / gallery / forum batches parse with no rejects, every file claimed."""
    batches = generate(tmp_path, Spec(seed=12, batches=3, items_per_batch=20, large_max_mb=1))
    for b in batches:
        fmt = {"gallery": "gallery_dl", "forum": "csv_manifest"}.get(b.source, b.source)
        parsed, view = parse_batch(tmp_path / b.batch_id, FORMATS[fmt](b.source))
        _ok(parsed)
        assert parsed.claimed == set(view.files) == {i.path for i in b.items}


def test_intent_from_records_validates(tmp_path: Path) -> None:
    """build_intent output passes the write-intent schema; virtual ids are deterministic."""
    b = generate(tmp_path, Spec(seed=13, batches=1, items_per_batch=10, large_max_mb=1))[0]
    parsed, _ = parse_batch(tmp_path / b.batch_id, FORMATS["ytdlp"]("ytdlp"))
    stored = {i.path: (i.sha256, i.size) for i in b.items}
    import datetime as dt

    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    one, _ = build_intent("k", b.batch_id, "ytdlp", parsed.records, stored, t)
    two, _ = build_intent("k", b.batch_id, "ytdlp", parsed.records, stored, t)
    assert parse_intent(one).digest() == parse_intent(two).digest()
    assert len(one["metadata"]) == len({m["node"] for m in one["metadata"]})


def test_hostile_reason_cases() -> None:
    """Each kind of unsafe relative path gets its own reason; normal names pass."""
    assert hostile_reason("a/b.png") is None
    assert "climbs out" in hostile_reason("a/../../b")
    assert "absolute" in hostile_reason("/etc/passwd")
    assert "NUL" in hostile_reason("a\x00b")
    assert "control" in hostile_reason("a\nb")
    assert "control" in hostile_reason("a\x9bb")  # C1: CSI, a terminal escape on its own
    assert "bidirectional override" in hostile_reason("x/cod\u202egnp.exe")
    assert "starts with `-`" in hostile_reason("x/--checkpoint-action=exec=sh x.sh")  # an option to `tar … *`
    assert hostile_reason("x/a-b-") is None
    assert hostile_reason("שלום/مرحبا.jpg") is None  # right-to-left letters are not controls
    assert "1000" in hostile_reason("x" * 1001)


def test_helpers() -> None:
    """Timestamps in the shapes scrapers write; flattening keeps scalars and drops object lists."""
    assert to_time(1700000000).year == 2023 and to_time("20240102").day == 2
    assert to_time("2022-08-13T20:36:51.000Z").hour == 20 and to_time("nonsense") is None
    flat = specific_fields({"a": {"b": {"c": {"d": 1}, "e": 2}}, "l": [1, 2], "o": [{"x": 1}], "n": None})
    assert flat == {"a.b.e": 2, "l": [1, 2]}


def test_unknown_source_lists_known(tmp_path: Path) -> None:
    """A configured source maps to a format; an unknown one names every known source."""
    assert adapter_for("forum", {"forum": "csv_manifest"}).format == "csv_manifest"
    with pytest.raises(Exception, match="known: .*gallery_dl"):
        adapter_for("forum", {})


def test_duplicate_video_in_one_batch(tmp_path: Path) -> None:
    """Two info.json files describing the same video id: the first is kept, the second and its
    media are rejected naming the first."""
    doc = {"id": "abc", "title": "t", "ext": "mp4", "extractor": "youtube"}
    files = {"one.info.json": json.dumps(doc).encode(), "one.mp4": b"\x00" * 100,
             "two.info.json": json.dumps(doc).encode(), "two.mp4": b"\x01" * 100}
    parsed, _ = parse_batch(_batch(tmp_path, files), adapter_for("ytdlp", {}))
    assert len(parsed.records) == 1
    [rej] = parsed.rejects
    assert "again (first in" in rej.reason and len(rej.paths) == 2


def test_hostile_reason_fast_path_agrees_with_the_full_checks() -> None:
    """`hostile_reason` answers most paths with one regex search; on any path it must say
    what the full checks say (random paths over the characters that matter)."""
    import random
    import re

    import hoardfs.base.paths as paths

    alphabet = ["a", "é", "😀", "/", ".", "-", "\x00", "\x1f", "\x7f", "\x85", "\u202e", "\u2067", "\ud800", "ש", " "]
    rng = random.Random(5)
    cases = ["".join(rng.choice(alphabet) for _ in range(rng.choice((1, 2, 3, 6, 20, 249, 251, 260))))
             for _ in range(20000)]
    fast = [hostile_reason(c) for c in cases]
    saved, paths._SUSPECT = paths._SUSPECT, re.compile("")  # every path takes the full checks
    try:
        assert [hostile_reason(c) for c in cases] == fast
    finally:
        paths._SUSPECT = saved
    assert sum(f is None for f in fast) > 100  # fine paths were among them
