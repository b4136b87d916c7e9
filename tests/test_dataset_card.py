"""The dataset card (`README.md` of a build in 3D): text from the data — class names, scraped
licences, source hosts — is one escaped line each, so no value adds a section, a link or HTML."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from hoardfs.datasets.card import code
from hoardfs.sql.apply import apply_write_intent
from tests.test_datasets import _build, _spec
from tests.test_ingest import ingest_all, ingest_home
from tests.test_ingest_unstorable import _sidecar_batch

#: a scraped licence that, copied as it was, closed its list and opened a second "Licences"
#: section claiming CC0, with raw HTML and a `javascript:` link
LICENCE = ("CC BY-NC 4.0\n\n## Licences\n\n- CC0-1.0: public domain <script>alert(1)</script>\n"
           "[terms](javascript:alert(1)) <a href='javascript:x'>x</a>")
#: class names that are Markdown or HTML (a `|` would split the counts table)
CLASSES = ["<img src=x onerror=alert(1)>", "`tick``s`", "cat | [x](javascript:y)"]
#: the HTML a card renders to: headings, paragraphs, the table, the lists, code
ALLOWED = {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "ol", "ul", "li", "code"}
SECTIONS = ["Counts", "Classes", "Sources", "Authors", "Dates", "Licences", "Splits", "Leak audit"]


def _md() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")  # CommonMark with GFM's tables, as GitHub shows a card


def _flat(tokens: list[Token]) -> list[Token]:
    return [t for tok in tokens for t in [tok, *_flat(tok.children or [])]]


def test_a_hostile_licence_and_class_names_stay_values_in_the_card(hoard_home: Path, pg, redis_conn,
                                                                    tmp_path: Path) -> None:
    """A build over samples whose scraped licence holds a heading, HTML and a `javascript:` link,
    and whose class names are HTML, backticks and a table's `|`: the card has exactly one
    "## Licences" heading and its eight sections, no HTML and no link anywhere; each value is one
    code span holding it (newlines made spaces), the licence quoted, an SPDX id as it is."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    docs = {f"p{i}.png": json.dumps({"title": f"p{i}", "license": LICENCE if i % 2 else "CC-BY-4.0",
                                     "source_url": f"https://ex<b>ample.org/{i}" if i == 0 else
                                     f"https://example.org/{i}"}) for i in range(6)}
    b, shas = _sidecar_batch(hoard_home, zone3a, "side-card-1", docs)
    assert ingest_all(cfg, redis_conn, [b])[0].status == "done"
    apply_write_intent(pg, {"key": "test:classes", "labels": [
        {"node": sha, "key": "class", "value": CLASSES[i % 3]} for i, sha in enumerate(shas.values())]})
    root = Path(_build(cfg, _spec(tmp_path))["path"])
    text = (root / "README.md").read_text()

    headings = [line for line in text.splitlines() if line.lstrip(" >-*+0123456789.").startswith("#")]
    assert headings == ["# pets", *(f"## {s}" for s in SECTIONS)], text  # one "## Licences" among them
    tokens = _flat(_md().parse(text))
    assert [t.content for t in _flat(_md().parse(text)) if t.type == "inline" and
            tokens[tokens.index(t) - 1].type == "heading_open" and tokens[tokens.index(t) - 1].tag == "h2"] == SECTIONS
    assert not [t for t in tokens if t.type in ("html_inline", "html_block", "link_open", "image")], text
    outside = re.sub(r"<code>.*?</code>", "", _md().render(text))  # what shows as other than a value
    assert set(re.findall(r"</?([a-z0-9]+)[^>]*>", outside)) <= ALLOWED, outside
    assert "javascript:" not in outside and "<a" not in outside and "<img" not in outside
    spans = [t.content for t in tokens if t.type == "code_inline"]
    assert set(CLASSES) <= set(spans), spans  # each class name whole, its backticks and `|` kept
    assert " ".join(LICENCE.split()) in spans and "CC-BY-4.0" in spans, spans
    assert "- `CC-BY-4.0`" in text.splitlines() and any(
        line.startswith("- quoted from the metadata: `CC BY-NC 4.0 ## Licences") for line in text.splitlines())
    assert "ex<b>ample.org" in spans  # a host is scraped text too
    table = tokens[next(i for i, t in enumerate(tokens) if t.type == "table_open"):]
    table = table[:next(i for i, t in enumerate(table) if t.type == "table_close")]  # the counts: the first table
    counts = [t for t in table if t.type == "tr_open"]
    assert len(counts) == 1 + 3 + 1  # the header, one row per class (a `|` in one did not split it), the total


def test_code_spans_take_any_run_of_backticks_and_one_line() -> None:
    """A value's backticks get a longer fence (and a space beside one at an edge); newlines,
    Unicode line separators and control characters never leave the line."""
    md = _md()
    for value, shown in [("a`b", "a`b"), ("``x", "``x"), ("x```", "x```"), ("`", "`"), ("plain", "plain"),
                         ("two\nlines\r\n\u2028three", "two lines three"), ("esc\x1b[2J", "esc\\x1b[2J"),
                         ("rtl\u202eexe.png", "rtl\\u202eexe.png")]:
        span = code(value)
        assert "\n" not in span and "\r" not in span and "\u2028" not in span
        [inline] = [t for t in _flat(md.parse(f"x {span} y")) if t.type == "code_inline"]
        assert inline.content == shown, (value, span)
    cut = code("z" * 500)
    assert len(cut) < 210 and cut.endswith("…`")
    assert hashlib.sha256(code("same").encode()).digest() == hashlib.sha256(code("same").encode()).digest()


def test_a_manifest_reads_back_every_number_and_character_as_written() -> None:
    """A manifest with integers past 64 bits, floats, escapes and U+2028 reads back to the same bytes."""
    from hoardfs.datasets.card import manifest_bytes, read_manifest  # (the card's manifest half)
    from hoardfs.datasets.model import Sample

    def sample(i: int, cls: str | None = None, class_index: int | None = None, date: str | None = None,
               **kw: object) -> Sample:
        return Sample(path=f"d/{i}.jpg", sha256=f"{i:064x}", size=10 + i, ext=".jpg", key=f"{i:016x}",
                      node_id=i, root_id=1, lineage=(i, 1), source_url=None, date=date, labels={"k": ("v",)},
                      cls=cls, class_index=class_index, split="train", **kw)  # type: ignore[arg-type]
    samples = [sample(1, width=2 ** 70, height=-(2 ** 63) - 1, depth=2 ** 64),
               sample(2, width=2 ** 64 - 1, height=-(2 ** 63), author="a\u2028b\x85c\"\\\n\u00e9\U0001f600"),
               sample(3, cls="x", class_index=10 ** 30, licences=("1234567890123456789012",)),
               sample(4, date="0.1", group="g", depth=0)]
    data = manifest_bytes(samples)
    back = read_manifest(data)
    assert back == sorted(samples, key=lambda s: s.path)
    assert [type(s.width) for s in back] == [int, int, type(None), type(None)]
    assert manifest_bytes(back) == data
    assert read_manifest(data.replace(b"\n", b"\r\n") + b"\n\n") == back
    from hoardfs.datasets.card import Samples  # (a loader builds each sample from its line when asked)
    # a converted file's sha256, labels named sha256 and split, splits with an escape or not ASCII
    odd = samples + [dataclasses.replace(sample(5, converted=("ab" * 32, 7)), split='we"ird',
                                         labels={"sha256": ("x",), "split": ('"split":"y"',)}),
                     dataclasses.replace(sample(6), split="v\u00e9l", source_url='http://x/"sha256":"' + "0" * 64)]
    odd_back = read_manifest(manifest_bytes(odd))
    for raw, want in ((data, back), (data.replace(b"\n", b"\r\n") + b"\n\n", back), (b"\n\n" + data, back),
                      (manifest_bytes(odd), odd_back)):
        lazy = Samples.of_manifest(raw)
        assert list(lazy) == want
        assert lazy.shas() == [bytes.fromhex(s.sha256) for s in want]
        assert lazy.splits() == [s.split for s in want]
        assert [lazy.fields(k)["sha256"] for k in range(len(want))] == [s.sha256 for s in want]
        for split in {s.split for s in want}:  # (a split's samples: the same as the whole's of it)
            part = lazy.of_split(split)
            assert list(part) == [s for s in want if s.split == split]
            assert list(part.shas()) == [bytes.fromhex(s.sha256) for s in want if s.split == split]
    assert len(Samples.of_manifest(data).of_split("nowhere")) == 0


def test_long_integers_are_found_across_the_search_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is searched for integers past 64 bits a chunk at a time: a run of digits
    that starts just before, across or just after a chunk's end is found, whatever the chunk,
    and such a line is read by the json module (exact), the others as orjson reads them."""
    from hoardfs.datasets import card
    from hoardfs.datasets.model import Sample

    samples = [Sample(path=f"d/{i:03}.jpg", sha256=f"{i:064x}", size=1, ext=".jpg", key=f"{i:016x}", node_id=i,
                      root_id=1, lineage=(i, 1), source_url=None, date=None, labels={}, cls=None, class_index=None,
                      split="train", width=(2 ** 70 + i) if i % 3 == 0 else i)  # type: ignore[arg-type]
               for i in range(40)]
    data = card.manifest_bytes(samples)
    want = {k for k, s in enumerate(sorted(samples, key=lambda s: s.path)) if s.width > 2 ** 64}
    for chunk in (7, 19, 20, 21, 64, 333, 1 << 20):
        monkeypatch.setattr(card, "_CHUNK", chunk)
        lines, long = card.manifest_lines(data)
        assert long >= want and all(k in want or b"0" * 19 in lines[k].translate(card._ZEROS) for k in long), chunk
        assert card.read_manifest(data) == sorted(samples, key=lambda s: s.path), chunk
        assert list(card.Samples.of_manifest(data)) == sorted(samples, key=lambda s: s.path), chunk


def test_a_line_without_one_sha256_and_split_is_refused_not_shifting_the_rest() -> None:
    """A manifest line whose sha256 is not 64 hex digits (short, or with spaces bytes.fromhex
    skips), or whose split is not a name, or a manifest of more splits than a sample's split
    number holds: ValueError naming the line, whole or read in pieces — never the later
    samples' sha256s shifted onto other samples."""
    from hoardfs.datasets import card
    from hoardfs.datasets.model import Sample

    def sample(i: int, sha: str, split: str = "train") -> Sample:
        return Sample(path=f"d/{i:06}", sha256=sha, size=1, ext=".jpg", key=f"k{i}", node_id=i, root_id=1,
                      lineage=(i,), source_url=None, date=None, labels={}, cls=None, class_index=None, split=split)

    class Whole:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, at: int, n: int, digest: int) -> bytes:
            return self.data[at:at + n]

    good = "11" * 32
    for bad, line in (([sample(0, "abcd"), sample(1, good)], 1), ([sample(0, good), sample(1, "22" * 16 + " " * 32)], 2),
                      ([sample(0, good), sample(1, "ab" * 32, split=None)], 2),  # type: ignore[arg-type]
                      ([sample(i, f"{i:064x}", split=str(i)) for i in range(card._SPLITS + 1)], card._SPLITS + 1)):
        data = card.manifest_bytes(bad)
        with pytest.raises(ValueError, match=rf"manifest line {line}: "):
            card.Samples.of_manifest(data)
        with pytest.raises(ValueError, match=rf"manifest line {line}: "):
            card.Samples.of_pieces([data[:7], data[7:]], Whole(data))


def test_a_line_whose_fields_are_not_those_found_at_the_start_is_refused() -> None:
    """A manifest line not written canonically (a remote host's manifest is whatever its
    bucket's writer made), a key after `split` holding an object with a `split` of its own: the
    sample found in split "val" at the start is never handed out as a "train" sample — asking
    for it is a ValueError naming the line; a canonical line is handed out as parsed."""
    from hoardfs.datasets import card
    from hoardfs.datasets.model import Sample

    doc = Sample(path="d/1", sha256="ab" * 32, size=1, ext=".jpg", key="k1", node_id=1, root_id=1, lineage=(1,),
                 source_url=None, date=None, labels={}, cls=None, class_index=None, split="train").to_json()
    good = card.canonical(doc).encode()
    odd = good[:-1] + b',"zz":{"split":"val"}}'
    samples = card.Samples.of_manifest(good + b"\n" + odd + b"\n")
    assert samples.splits() == ["train", "val"] and samples.fields(0)["split"] == "train"
    for ask in (lambda: samples.fields(1), lambda: samples[1], lambda: samples.of_split("val").fields(0)):
        with pytest.raises(ValueError, match=rf"the manifest line at byte {len(good) + 1}: its sha256 or split is not"):
            ask()


def test_a_loader_index_gives_what_its_manifest_gives_and_refuses_any_other() -> None:
    """A manifest's loader index (`card.loader_index`, made at the build) gives a loader the
    samples reading the manifest whole gives — integers past 64 bits read exactly, escaped and
    non-ASCII splits, every split's own — each line read back and checked as it is asked for;
    an index cut short or overlong, of another manifest, or naming a split or a line it does
    not hold is refused (ValueError: the loader reads the manifest whole then)."""
    import struct

    import xxhash

    from hoardfs.datasets import card
    from hoardfs.datasets.model import Sample

    def sample(i: int, split: str, **kw: object) -> Sample:
        return Sample(path=f"d/{i:03}.jpg", sha256=f"{i:064x}", size=1, ext=".jpg", key=f"{i:016x}", node_id=i,
                      root_id=1, lineage=(i, 1), source_url=None, date=None, labels={"k": (str(i),)}, cls=None,
                      class_index=None, split=split, **kw)  # type: ignore[arg-type]

    samples = [sample(i, ("train", 'we"ird', "v\u00e9l")[i % 3], width=(2 ** 70 + i) if i % 4 == 0 else i)
               for i in range(30)]
    data = card.manifest_bytes(samples)
    sha = hashlib.sha256(data).hexdigest()

    class Checked:
        def read(self, at: int, n: int, digest: int) -> bytes:
            got = data[at:at + n]
            assert xxhash.xxh3_64_intdigest(got) == digest
            return got

        def close(self) -> None:
            pass

    index = card.loader_index(data, sha)
    whole = card.Samples.of_manifest(data)
    got = card.Samples.of_index(index, sha, len(data), Checked())
    assert list(got) == list(whole) == card.read_manifest(data)
    assert got.shas() == whole.shas() and got.splits() == whole.splits()
    assert [got.fields(k) for k in range(len(got))] == [whole.fields(k) for k in range(len(whole))]
    for split in whole.split_names():
        assert list(got.of_split(split)) == list(whole.of_split(split))
        assert [got.of_split(split).fields(k) for k in range(len(got.of_split(split)))] == \
            [whole.of_split(split).fields(k) for k in range(len(whole.of_split(split)))]
    head_end = index.index(b"\n", len(b"hoardfs loader index 1\n")) + 1
    n = len(samples)
    split_at = head_end + 3 * 8 * n  # (the first sample's split number)
    for bad, why in ((index[:-1], "cut short or overlong"), (index + b"\0", "cut short or overlong"),
                     (b"x" + index, "not a loader index"),
                     (b"hoardfs loader index 1\n" + b"[" * 100_000 + b"\n", "is not manifest"),
                     (index[:split_at] + struct.pack("<H", 3) + index[split_at + 2:], "names a split or a line"),
                     (index[:head_end] + struct.pack("<Q", len(data)) + index[head_end + 8:], "names a split or a line")):
        with pytest.raises(ValueError, match=why):
            card.Samples.of_index(bad, sha, len(data), Checked())
    for other_sha, other_len in ((hashlib.sha256(b"other").hexdigest(), len(data)), (sha, len(data) + 1)):
        with pytest.raises(ValueError, match="is not manifest"):
            card.Samples.of_index(index, other_sha, other_len, Checked())
