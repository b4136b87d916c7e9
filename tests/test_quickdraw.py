"""Stroke data (`quickdraw`): Quick, Draw! ndjson in, a drawing node with its strokes and a
rendered PNG child out — the adapter on its own, then `hoard ingest` and `hoard worker`
end to end on real PostgreSQL, Redis and store, and a dataset built from the PNGs."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from hoardfs.adapters import adapter_for, parse_batch
from hoardfs.adapters.records import record_json
from hoardfs.adapters.strokes import DRAWING_BYTES, MAX_COORD, MAX_POINTS, SIZE, QuickDraw, draw_png, drawing_fault
from hoardfs.fsd.store import Store
from hoardfs.jobs import ingest as ua1
from tests.helpers import REALDATA, needs_realdata
from tests.test_ingest import ingest_home

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REALDATA / "quickdraw"


def drawing(n: int, seed: str = "", timed: bool = False) -> list:
    """A drawing of `n` strokes of 4 points each inside the simplified format's 0-255 box, its
    coordinates the bytes of sha256(seed): another seed, another drawing (and PNG)."""
    strokes = []
    for s in range(n):
        b = hashlib.sha256(f"{seed}/{s}".encode()).digest()
        strokes.append([list(b[:4]), list(b[4:8]), [i * 16 for i in range(4)]] if timed else [list(b[:4]), list(b[4:8])])
    return strokes


def line(key: str, word: str = "cat", strokes: list | None = None, **extra: object) -> str:
    doc = {"word": word, "countrycode": "DE", "timestamp": "2017-03-05 05:52:48.49661 UTC", "recognized": True,
           "key_id": key, "drawing": strokes if strokes is not None else drawing(3, key)} | extra
    return json.dumps(doc)


#: one bad line each (the line's text, a phrase its one reject must hold)
BAD = {
    "x_y_lengths": (line("9000000000000001", strokes=[[[1, 2, 3], [1, 2]]]), "stroke 1 has 3 x but 2 y values"),
    "t_length": (line("9000000000000002", strokes=[[[1, 2], [1, 2], [0]]]), "stroke 1 has 2 x but 1 t values"),
    "not_a_number": (line("9000000000000003", strokes=[[[1, "2"], [1, 2]]]), "stroke 1 x[1] is not a number"),
    "boolean": (line("9000000000000004", strokes=[[[1, 2], [True, 2]]]), "stroke 1 y[0] is not a number"),
    "out_of_range": (line("9000000000000005", strokes=[[[1, 2], [1, MAX_COORD * 4]]]), "stroke 1 y[1] = 262144 is out"),
    "nan": ('{"word": "cat", "key_id": "9000000000000006", "drawing": [[[1, NaN], [1, 2]]]}',
            "stroke 1 x[1] = nan is not a finite number"),
    "empty_drawing": (line("9000000000000007", strokes=[]), "the drawing is empty"),
    "empty_stroke": (line("9000000000000008", strokes=[[[], []]]), "stroke 1 has no point"),
    "stroke_shape": (line("9000000000000009", strokes=[[1, 2]]), "stroke 1 is not [[x, …], [y, …]]"),
    "too_many_points": (line("9000000000000010", strokes=[[list(range(200)) * 110, list(range(200)) * 110]]),
                        f"more than {MAX_POINTS:,} points"),
    "too_big_for_metadata": (line("9000000000000011", strokes=[[[65000 + i % 500 for i in range(1500)]] * 2]),
                             f"more than {DRAWING_BYTES:,}"),
    "not_json": ('{"word": "cat", "drawing": [[[1, 2], [1, 2]]', "is truncated JSON: Expecting ',' delimiter"),
    "nested_too_deep": ("[" * 100_000 + "]" * 100_000, "is JSON nested deeper than can be read"),
    "number_too_long": ('{"word": "cat", "drawing": [[[1' + "0" * 5000 + '], [1]]]}',
                        "is JSON with a number of more than 4,300 digits"),
    "not_an_object": ("[1, 2, 3]", "is a list, not a JSON object with `word` and `drawing`"),
    "no_word": (json.dumps({"key_id": "9000000000000012", "drawing": drawing(2)}), "has no `word`"),
    "word_not_text": (line("9000000000000013", word=5), "has a `word` that is not text"),  # type: ignore[arg-type]
    "bad_key_id": (line("../../etc/passwd"), "has a `key_id` that is not 1-64 letters"),
    "recognized_not_bool": (line("9000000000000014", recognized="yes"), "`recognized` that is not true or false"),
    "repeated_key_id": (line("1000000000000001"), "repeats key_id 1000000000000001 (first at cats.ndjson line 1)"),
}


def good_lines(n: int, word: str = "cat", base: int = 1000000000000001) -> list[str]:
    return [line(str(base + i), word=word) for i in range(n)]


def _batch(root: Path, name: str, files: dict[str, str | bytes], ready: bool = False) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for rel, body in files.items():
        (d / rel).write_bytes(body.encode() if isinstance(body, str) else body)
    if ready:
        (d / "_READY").write_text("quickdraw\n")
    return d


# -- the adapter on its own ------------------------------------------------------------------------

def test_every_bad_line_is_one_reject_naming_its_line_and_the_rest_is_taken(tmp_path: Path) -> None:
    """Each malformed line of an ndjson file is one reject naming the file, its line number and
    what is wrong; the good lines become drawing records and the file itself is claimed."""
    lines = good_lines(4) + [text for text, _ in BAD.values()]
    d = _batch(tmp_path, "b", {"cats.ndjson": "\n".join(lines) + "\n"})
    parsed, _ = parse_batch(d, adapter_for("quickdraw", {}))
    assert [r.node.id for r in parsed.records] == [str(1000000000000001 + i) for i in range(4)]  # type: ignore[union-attr]
    assert parsed.claimed == {"cats.ndjson"}
    reasons = [r.reason for r in parsed.rejects]
    assert len(reasons) == len(BAD) and all(not r.paths for r in parsed.rejects)
    for no, (name, (_, phrase)) in enumerate(BAD.items(), start=5):
        assert reasons[no - 5].startswith(f"cats.ndjson line {no}: "), (name, reasons[no - 5])
        assert phrase in reasons[no - 5], (name, reasons[no - 5])
        assert reasons[no - 5].endswith("left out (the stored file keeps it)")


def test_a_file_without_a_good_drawing_goes_to_quarantine_with_every_reason(tmp_path: Path) -> None:
    """A file none of whose lines is a good drawing is rejected itself (it moves to quarantine);
    its lines' reasons are given too; the batch's other files go on."""
    d = _batch(tmp_path, "b", {"bad.ndjson": "\n".join(BAD[k][0] for k in ("nan", "no_word")) + "\n",
                               "empty.ndjson": "\n\n", "good.ndjson": "\n".join(good_lines(2, "dog")),
                               "notes.txt": "hello", "deep.json": "[" * 100_000 + "]" * 100_000,
                               "object.json": json.dumps({"word": "cat"})})
    parsed, _ = parse_batch(d, adapter_for("quickdraw", {}))
    assert parsed.claimed == {"good.ndjson"} and len(parsed.records) == 2
    by_path = {r.paths[0]: r.reason for r in parsed.rejects if r.paths}
    assert by_path["bad.ndjson"] == "bad.ndjson holds no good drawing (2 bad); fix it and drop it in a new batch"
    assert by_path["empty.ndjson"].startswith("empty.ndjson holds no drawing")
    assert "not described by any quickdraw metadata" in by_path["notes.txt"]
    assert by_path["deep.json"].startswith("deep.json is JSON nested deeper than can be read; fix")
    assert by_path["object.json"].startswith("object.json is not a JSON list of drawings")
    lines = [r.reason for r in parsed.rejects if not r.paths]
    assert lines[0].startswith("bad.ndjson line 1: stroke 1 x[1] = nan") and lines[1].startswith("bad.ndjson line 2:")


def test_the_record_keeps_the_strokes_and_the_png_draws_them(tmp_path: Path) -> None:
    """A drawing's metadata holds its word, time, country and the strokes as given (with the
    raw format's times); the PNG is SIZE² grey, dark where a stroke passes, and the same strokes
    give the same bytes. Strokes too long for the metadata with their times keep x and y."""
    strokes = drawing(5, "3", timed=True)
    long = [[[i % 256 for i in range(500)], [(i * 3) % 256 for i in range(500)], list(range(1_000_000, 3_000_000, 4000))]
            for _ in range(2)]
    d = _batch(tmp_path, "b", {"a.ndjson": line("1000000000000042", "house", strokes) + "\n"
                               + line("1000000000000043", "house", long)})
    parsed, _ = parse_batch(d, adapter_for("quickdraw", {}))
    rec, big = (record_json(r) for r in parsed.records)
    assert rec["node"] == ["a", "drawing", "1000000000000042"] and rec["title"] == "house"
    assert rec["update_time"] == "2017-03-05T05:52:48.496610+00:00"
    sp = rec["specific"]
    assert sp["drawing"] == strokes and sp["timed"] and sp["countrycode"] == "DE" and sp["line"] == 1
    assert (sp["strokes"], sp["points"]) == (5, 20) and "times_in_document" not in sp
    assert big["specific"]["drawing"] == [s[:2] for s in long] and big["specific"]["times_in_document"] is True
    made = QuickDraw("quickdraw").render(rec)
    assert made is not None and made.name == "1000000000000042.png" and made.labels == {"word": "house"}
    img = Image.open(io.BytesIO(made.data))
    assert img.format == "PNG" and img.size == (SIZE, SIZE) and img.mode == "L"
    assert made.data == draw_png(strokes)
    # the first stroke's first point is drawn (the box is scaled onto the square, centred)
    xs = [x for s in strokes for x in s[0]]
    ys = [y for s in strokes for y in s[1]]
    scale = (SIZE - 1) / max(max(xs) - min(xs), max(ys) - min(ys))
    ox = (SIZE - 1 - (max(xs) - min(xs)) * scale) / 2 - min(xs) * scale
    oy = (SIZE - 1 - (max(ys) - min(ys)) * scale) / 2 - min(ys) * scale
    assert img.getpixel((round(strokes[0][0][0] * scale + ox), round(strokes[0][1][0] * scale + oy))) == 0
    assert img.getpixel((0, 0)) == 255 or img.getpixel((SIZE - 1, SIZE - 1)) == 255


def test_render_checks_the_record_again() -> None:
    """The ingest draws from the parser's answer only after checking it: strokes, a key_id that
    is no plain file name or no word make `render` refuse (ValueError), whatever the parser said."""
    ok = {"node": ["a", "drawing", "1"], "specific": {"word": "cat", "drawing": drawing(1)}}
    assert QuickDraw("quickdraw").render(ok) is not None
    assert QuickDraw("quickdraw").render({"node": ["f", "x.ndjson"], "specific": {}}) is None
    for bad in ({"node": ["a", "drawing", "../x"]}, {"specific": {"word": "cat", "drawing": [[[1] * 30_000] * 2]}},
                {"specific": {"word": " ", "drawing": drawing(1)}}, {"specific": {"word": "cat", "drawing": "x"}}):
        with pytest.raises(ValueError):
            QuickDraw("quickdraw").render(ok | bad)
    assert drawing_fault([[[1.5, 2], [3, -4.25]]]) is None


@needs_realdata
def test_real_quickdraw_samples_parse_and_render(tmp_path: Path) -> None:
    """The real Quick, Draw! samples (simplified format; ndjson and the same records as a JSON
    list) give one drawing per record, each with its strokes, and render."""
    d = _batch(tmp_path, "b", {"angel.ndjson": (SAMPLES / "angel_simplified_first10.ndjson").read_bytes()})
    d2 = _batch(tmp_path, "c", {"angel.json": (SAMPLES / "pts-lab_angel_simplified.json").read_bytes()})
    source = [json.loads(x) for x in (SAMPLES / "angel_simplified_first10.ndjson").read_text().splitlines()]
    for where, n in ((d, 10), (d2, 20)):
        parsed, _ = parse_batch(where, adapter_for("quickdraw", {}))
        assert len(parsed.records) == n and not parsed.rejects
        for rec, doc in zip(parsed.records, source, strict=False):
            assert rec.node.id == doc["key_id"] and rec.specific["drawing"] == doc["drawing"]  # type: ignore[union-attr]
            assert rec.title == "angel" and rec.specific["recognized"] == doc["recognized"]
            assert Image.open(io.BytesIO(draw_png(doc["drawing"]))).size == (SIZE, SIZE)


# -- end to end ---------------------------------------------------------------------------------------

def _hoard(cfg, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_hoard_ingest_stores_drawings_pngs_and_quarantines_bad_lines(hoard_home: Path, pg, redis_conn,
                                                                     tmp_path: Path) -> None:
    """`hoard ingest --ready` and a real `hoard worker`: each good line is a drawing node with
    its strokes as metadata and the ndjson as raw object, whose `media_of` child is its PNG
    (labelled word, stored, in the 3B package and manifest); each bad line is one reason in the
    report and in quarantine's _REASONS.txt; a file of bad lines only is quarantined; the
    rendered files' work directory is gone at the end. A dataset is then built from the PNGs
    with the word as class."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    bad = "\n".join(text for text, _ in BAD.values())
    files: dict[str, str | bytes] = {"cats.ndjson": "\n".join(good_lines(6) + [bad]) + "\n",
                                     "dogs.ndjson": "\n".join(good_lines(6, "dog", 2000000000000001)) + "\n",
                                     "junk.ndjson": BAD["not_json"][0] + "\n"}
    if SAMPLES.is_dir():
        files["angel.ndjson"] = (SAMPLES / "angel_simplified_first10.ndjson").read_bytes()
    batch = _batch(zone3a, "qd-1", files, ready=True)
    queued = _hoard(cfg, "ingest", "--ready")
    assert queued.returncode == 0 and "qd-1" in queued.stdout, queued.stdout + queued.stderr
    worked = _hoard(cfg, "worker", "--burst")
    assert worked.returncode == 0, worked.stderr
    st = ua1.load_state(cfg, "qd-1")
    assert st is not None and st.status == "done with rejects", (st and st.error)
    drawings = 12 + (10 if SAMPLES.is_dir() else 0)
    rejected = st.report["rejected"]
    assert len(rejected) == len(BAD) + 2  # each bad line once; junk.ndjson's line and the file itself
    for no, (_, phrase) in enumerate(BAD.values(), start=7):
        assert any(r["reason"].startswith(f"cats.ndjson line {no}: ") and phrase in r["reason"] for r in rejected)
    assert st.report["files_rendered"] == drawings and st.report["files_accepted"] == len(files) - 1
    shown = _hoard(cfg, "ingest", "--status", "qd-1")
    assert "cats.ndjson line 7: stroke 1 has 3 x but 2 y values" in shown.stdout and "files rendered: " in shown.stdout
    reasons = (zone3a / "_quarantine" / "qd-1" / "_REASONS.txt").read_text()
    assert "cats.ndjson line 18: " in reasons and (zone3a / "_quarantine" / "qd-1" / "junk.ndjson").exists()
    assert not batch.exists() and not ua1.state_dir(cfg).joinpath("qd-1.rendered").exists()

    rows = pg.execute(
        "SELECT v.stable_id, m.title, m.specific, encode(m.raw_object, 'hex'), encode(c.sha256, 'hex'), "
        "l.value, l.origin FROM virtual_asset v JOIN common_metadata m USING (node_id) "
        "JOIN edge e ON e.parent_id = v.node_id JOIN relationship_type r ON r.rel_id = e.rel_id AND r.name = 'media_of' "
        "JOIN node c ON c.node_id = e.child_id JOIN label l ON l.node_id = c.node_id AND l.key = 'word' "
        "WHERE v.kind = 'drawing'").fetchall()
    assert len(rows) == drawings
    by_key = {r[0]: r for r in rows}
    cat = by_key["1000000000000003"]
    assert cat[1] == "cat" and cat[2]["drawing"] == drawing(3, cat[0]) and cat[5] == "cat" and cat[6] == "ingest:quickdraw"
    manifest = json.loads((cfg.ssd.zone_path("3B") / "qd-1" / "qd-1.manifest.json").read_bytes())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed["cats.ndjson"] == cat[3]  # the drawing's raw object is the whole file
    assert listed["rendered/1000000000000003.png"] == cat[4]
    with Store.open(cfg, writable=False) as store:
        png = store.get(cat[4])
    assert png == draw_png(drawing(3, cat[0]))
    packed = {}
    for part in (cfg.ssd.zone_path("3B") / "qd-1").glob("*.tar"):
        with tarfile.open(part) as tar:
            packed |= {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert packed["rendered/1000000000000003.png"] == png and set(packed) == set(listed)
    if SAMPLES.is_dir():
        angel = by_key["6665588124418048"]
        assert angel[1] == "angel" and angel[2]["countrycode"] == "US" and angel[2]["recognized"] is True

    spec = tmp_path / "sketches.toml"
    spec.write_text('name = "sketches"\nlayout = "imagefolder"\nclass_label = "word"\n[selector]\n'
                    'batches = ["qd-1"]\nfile_types = ["png"]\n[split]\nratios = { train = 0.5, val = 0.5 }\n')
    built = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json")
    assert built.returncode == 0, built.stdout + built.stderr
    out = cfg.ssd.zone_path("3D") / "sketches-v1"
    pngs = sorted(p.relative_to(out).parts[1] for p in out.rglob("*.png"))
    assert len(pngs) == drawings and set(pngs) == {"cat", "dog"} | ({"angel"} if SAMPLES.is_dir() else set())


def test_a_record_the_parse_never_gives_refuses_the_batch_before_anything_is_drawn(hoard_home: Path, pg) -> None:
    """The scan step draws from the sandboxed parser's answer only after the adapter's checks:
    a record with strokes out of bounds, a key_id that climbs out of the directory, or a name
    given twice (what a parser made to lie could answer) refuses the batch in one line (exit 5),
    and the files drawn before it are removed from the work directory."""
    from hoardfs.base.errors import HoardError
    from hoardfs.jobs.ingest.render import render_all, rendered_dir

    cfg = ingest_home(hoard_home, pg)
    good = {"node": ["a", "drawing", "1"], "specific": {"word": "cat", "drawing": drawing(2, "1")}, "edges": []}
    made = render_all(cfg, "qd-lie", QuickDraw("quickdraw"), [dict(good, edges=[])], {"a.ndjson": 10})
    assert made == {"rendered/1.png": {"word": "cat"}}
    assert (rendered_dir(cfg, "qd-lie") / "1.png").read_bytes() == draw_png(drawing(2, "1"))
    lies = [[good, {**good, "specific": {"word": "cat", "drawing": [[[0, 10**9], [0, 1]]]}}],
            [{**good, "node": ["a", "drawing", "../../gui/users"]}],
            [dict(good, edges=[]), dict(good, edges=[])]]
    for records in lies:
        with pytest.raises(HoardError) as e:
            render_all(cfg, "qd-lie", QuickDraw("quickdraw"), [dict(r, edges=[]) for r in records], {})
        assert int(e.value.exit_code) == 5 and "\n" not in e.value.message
        assert "gave a record its parse never gives" in e.value.message and "nothing of the batch" in e.value.message
        assert not rendered_dir(cfg, "qd-lie").exists()
    assert not (hoard_home / "gui").exists()


def test_the_pngs_are_deleted_with_their_batch(hoard_home: Path, pg) -> None:
    """`hoard ingest --here` (no worker) of a stroke batch, then `hoard delete --batch` and `hoard
    gc`: the rendered PNGs are members of the batch like the ndjson — marked deleted in the
    database and freed from the store — so no PNG outlives the batch that made it."""
    cfg = ingest_home(hoard_home, pg)
    _batch(cfg.ssd.zone_path("3A"), "qd-del", {"a.ndjson": "\n".join(good_lines(3, "tree"))})
    done = _hoard(cfg, "ingest", str(cfg.ssd.zone_path("3A") / "qd-del"), "--source", "quickdraw", "--here")
    assert done.returncode == 0, done.stdout + done.stderr
    pngs = {bytes(s).hex() for (s,) in pg.execute(
        "SELECT n.sha256 FROM node n JOIN physical_content pc USING (node_id) WHERE pc.file_type = 'png'")}
    assert len(pngs) == 3
    gone = _hoard(cfg, "delete", "--batch", "qd-del", "--yes")
    assert gone.returncode == 0, gone.stderr
    deleted = {bytes(s).hex() for (s,) in pg.execute(
        "SELECT n.sha256 FROM physical_content pc JOIN node n USING (node_id) WHERE pc.is_deleted")}
    assert pngs < deleted  # the ndjson too
    freed = _hoard(cfg, "gc", "--threshold", "1.0")
    assert freed.returncode == 0, freed.stderr
    with Store.open(cfg, writable=False) as store:
        assert all(store.index.lookup(bytes.fromhex(s)) is None for s in pngs)
