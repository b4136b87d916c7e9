"""Near-duplicate groups: the perceptual hashes of the `near-dup-hash` action
(EXIF orientation applied, the mirror image's pHash), their rows in PostgreSQL as bigints, the
multi-index grouping against brute force, and `hoard dups` over an ingested batch of real
pictures and their copies (resized, re-encoded, mirrored, stored sideways) and bad images."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from hoardfs.jobs.actions.builtin import _image
from hoardfs.jobs.actions.builtin.near_dup_hash import hashes
from hoardfs.sql import neardup
from tests.helpers import REALDATA, worker_reachable_home
from tests.near_variants import originals, variants, write_set
from tests.test_ingest import ingest_home

REPO = Path(__file__).resolve().parent.parent


def _bits(v: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """`v` with k random bits of each value turned over (fewer when two draws hit one bit)."""
    out = v.copy()
    for _ in range(k):
        out ^= np.uint64(1) << rng.integers(0, 64, size=len(v)).astype(np.uint64)
    return out


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    """n/4 random hashes and copies of each 1, 3 and 6 bits away: pairs at every distance."""
    base = rng.integers(-2**63, 2**63 - 1, size=n // 4, dtype=np.int64).view(np.uint64)
    return np.concatenate([base, *(_bits(base, rng, k) for k in (1, 3, 6))])


def _brute(a: np.ndarray, b: np.ndarray, t: int) -> set[tuple[int, int]]:
    d = np.bitwise_count(a[:, None] ^ b[None, :])
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(d <= t), strict=True)}


@pytest.mark.parametrize("t", [0, 1, 3, 6, 10, 16])
def test_near_pairs_are_exactly_the_pairs_brute_force_finds(t: int) -> None:
    """Multi-index hashing finds every pair within t and no other, for every plan it makes (a
    query set apart from the index: the mirrored pHashes)."""
    rng = np.random.default_rng(t)
    index = np.unique(_clustered(rng, 2400))
    queries = _bits(index[rng.permutation(len(index))[:700]], rng, t // 2 + 1)
    for q_set in (index, queries):
        q, i = neardup.near_pairs(index, q_set, t)
        assert set(zip(q.tolist(), i.tolist(), strict=True)) == _brute(q_set, index, t)


def test_groups_are_the_connected_pairs_flips_included() -> None:
    """`group`: the connected components of the pairs within t (union–find over brute force),
    identical hashes one value, a mirror image linked through its phash_flip and marked."""
    rng = np.random.default_rng(7)
    ph = _clustered(rng, 400)
    ph = np.concatenate([ph, ph[:5]])  # identical pHashes (the same picture stored twice)
    pf = rng.integers(-2**63, 2**63 - 1, size=len(ph), dtype=np.int64).view(np.uint64)
    pf[-1] = ph[3] ^ np.uint64(0b101)  # the last one's mirror is 2 bits from the fourth's pHash
    for t in (2, 6):
        parent = list(range(len(ph)))

        def find(x: int, parent: list[int] = parent) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        for a, b in _brute(ph, ph, t) | _brute(pf, ph, t):
            parent[find(a)] = find(b)
        want: dict[int, list[int]] = {}
        for x in range(len(ph)):
            want.setdefault(find(x), []).append(x)
        expected = sorted((sorted(g) for g in want.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
        got = neardup.group(ph, pf, t)
        assert got.groups == expected
        assert not neardup.group(ph, pf, t, flips=False).flipped
    assert neardup.to_hex(neardup.to_signed(0xFFFF_0000_0000_0001)) == "ffff000000000001"
    none = np.zeros(0, np.uint64)
    assert neardup.group(none, none, 6).groups == []


def test_hashes_see_resized_requality_exif_rotated_and_mirrored_copies(tmp_path: Path) -> None:
    """On real pictures (../shared/realdata, else drawn ones): a resized, a quality-60 and an
    EXIF-rotated copy's pHash lie within 2 bits of the original's, a mirrored copy's within 2 of
    its phash_flip; the bits are imagehash's own on the whole decoded image."""
    for name, data in originals(REALDATA / "images").items():
        src = tmp_path / f"{name}.jpg"
        src.write_bytes(data)
        base = {k: int(v, 16) for k, v in hashes(src).items()}
        for kind, blob in variants(data).items():
            p = tmp_path / f"{name}.{kind}.jpg"
            p.write_bytes(blob)
            h = {k: int(v, 16) for k, v in hashes(p).items()}
            if kind in ("resize", "quality60", "exif_rotated"):
                assert bin(h["phash"] ^ base["phash"]).count("1") <= 2, (name, kind)
            if kind == "flip":
                assert bin(h["phash"] ^ base["phash_flip"]).count("1") <= 2, (name, kind)
                assert bin(h["phash"] ^ base["phash"]).count("1") > neardup.DEFAULT_THRESHOLD
    png = tmp_path / "a.png"
    Image.open(src).save(png)
    full = ImageOps.exif_transpose(Image.open(png))
    got = hashes(png)
    assert got["phash"] == str(imagehash.phash(full)) and got["dhash"] == str(imagehash.dhash(full))
    assert got["phash_flip"] == str(imagehash.phash(full.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def test_the_action_s_hex_hashes_become_bigints_and_bad_ones_are_refused(tmp_path: Path) -> None:
    """The contract's parse of hashes.jsonl: 16 hex digits → the signed bigint of that bit
    pattern (ffff… negative); a hash that is not 16 hex digits refuses the run's output naming
    the line and the field. A write-intent's hash outside bigint, or not a whole number, is refused
    naming results[i]."""
    from hoardfs.jobs.actions import contract
    from hoardfs.jobs.actions.builtin import CONTRACTS
    from hoardfs.jobs.actions.parse import InputFile, OutputProblem, parse_outputs
    from hoardfs.sql.intents import IntentError, parse_intent

    c = contract.load_file(CONTRACTS / "near-dup-hash.toml")
    shas = [hashlib.sha256(f"image {i}".encode()).hexdigest() for i in range(2)]
    inputs = [InputFile(s, f"flat/{s}.jpg") for s in shas]
    root = tmp_path / "out"
    root.mkdir()
    recs = [{"sha256": shas[0], "phash": "ffffffffffffffff", "dhash": "0000000000000001", "phash_flip": "8000000000000000"},
            {"sha256": shas[1], "phash": "7fffffffffffffff", "dhash": "00000000000000ff", "phash_flip": "0123456789abcdef"}]
    (root / "hashes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    got = parse_outputs(c, root, inputs, a4_scale=1)
    values = {r.node_sha256: r.values for r in got.records}
    assert values[shas[0]] == {"phash": -1, "dhash": 1, "phash_flip": -(1 << 63)}
    assert values[shas[1]] == {"phash": (1 << 63) - 1, "dhash": 255, "phash_flip": 0x0123456789ABCDEF}
    assert all(r.into == "result_image_hash" for r in got.records)
    for bad in ("ffff", "zzzzzzzzzzzzzzzz", 12345, "0x12345678901234"):
        (root / "hashes.jsonl").write_text(json.dumps(recs[0] | {"dhash": bad}) + "\n")
        with pytest.raises(OutputProblem, match=r"line 1: field 'dhash' \(result_image_hash.dhash\) must be a 64-bit hash"):
            parse_outputs(c, root, inputs, a4_scale=1)
    row = {"table": "result_image_hash", "node": shas[0], "batch_id": "run-1",
           "values": {"phash": 1, "dhash": 2, "phash_flip": 3}}
    assert parse_intent({"key": "k", "results": [row]}).results[0].values["phash"] == 1
    for bad_value in (1 << 63, -(1 << 63) - 1, 1.5, "ff"):
        with pytest.raises(IntentError, match=r"results\[0\]: result_image_hash.phash takes a 64-bit hash"):
            parse_intent({"key": "k", "results": [row | {"values": {**row["values"], "phash": bad_value}}]})
    with pytest.raises(IntentError, match=r"results\[0\]: result_image_hash needs column 'phash_flip'"):
        parse_intent({"key": "k", "results": [row | {"values": {"phash": 1, "dhash": 2}}]})


def _bomb(path: Path) -> None:
    """A PNG whose header claims 30000×30000 pixels (900 M): refused before a pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 30001)) + chunk(b"IEND", b""))


def _bad_images(root: Path, good: bytes) -> dict[str, str]:
    """A truncated JPEG, a text file named .jpg and a decompression bomb in `root`; name → why."""
    files = {"truncated.jpg": good[: len(good) // 3], "text.jpg": b"not an image at all"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    _bomb(root / "bomb.png")
    return {"truncated.jpg": "cannot decode", "text.jpg": "not an image Pillow can read",
            "bomb.png": "pixels"}


@pytest.mark.services  # starts `hoard-builtin` as its own process
def test_hoard_builtin_hashes_good_images_and_names_each_bad_one(tmp_path: Path) -> None:
    """`hoard-builtin near-dup-hash IN OUT`: one hashes.jsonl record per decodable image (16 hex
    digits each); a truncated JPEG, a text file and a 900-megapixel bomb are one stderr line
    each naming the file, and the run exits 0."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    good = next(iter(originals(REALDATA / "images").values()))
    (inp / "good.jpg").write_bytes(good)
    bad = _bad_images(inp, good)
    res = subprocess.run([sys.executable, "-m", "hoardfs.jobs.actions.builtin", "near-dup-hash", str(inp), str(out)],
                         capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == len(bad), lines
    for name, why in bad.items():
        assert sum(name in ln and why in ln and ln.startswith("hoard-builtin: skipped ") for ln in lines) == 1, lines
    recs = [json.loads(ln) for ln in (out / "hashes.jsonl").read_text().splitlines()]
    assert [r["sha256"] for r in recs] == [hashlib.sha256(good).hexdigest()]
    assert all(len(recs[0][k]) == 16 for k in ("phash", "dhash", "phash_flip"))
    with pytest.raises(_image.Undecodable, match="pixels"):
        hashes(inp / "bomb.png")


@pytest.mark.services  # starts `hoard-builtin` as its own process
def test_an_image_with_corrupt_exif_is_hashed_with_one_line_naming_it(tmp_path: Path) -> None:
    """A JPEG whose EXIF block claims more data than it holds (a scraped file's, or a hostile
    one) is hashed by its pixels; what Pillow warns of is one stderr line naming the file — not
    Pillow's own warnings, two lines each naming Pillow's source and not the input."""
    import io

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    good = next(iter(originals(REALDATA / "images").values()))
    (inp / "good.jpg").write_bytes(good)
    buf = io.BytesIO()
    with Image.open(io.BytesIO(good)) as im:  # an orientation tag whose count points past the block
        im.convert("RGB").save(buf, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\xff\xff\xff\xff"
                               b"\0\x06\0\0")
    (inp / "odd exif.jpg").write_bytes(buf.getvalue())
    res = subprocess.run([sys.executable, "-m", "hoardfs.jobs.actions.builtin", "near-dup-hash", str(inp), str(out)],
                         capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoard-builtin: odd exif.jpg: hashed; ") and "EXIF" in lines[0], lines
    recs = [json.loads(ln) for ln in (out / "hashes.jsonl").read_text().splitlines()]
    assert sorted(r["sha256"] for r in recs) == sorted(hashlib.sha256(b).hexdigest() for b in (good, buf.getvalue()))
    odd = next(r for r in recs if r["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest())
    assert odd["phash"] == hashes(inp / "good.jpg")["phash"]  # the same pixels (re-encoded): near, here equal


def write_hashes(conn, key: str, ph: list[int], flip: list[int]) -> list[str]:
    """Image nodes with these pHashes and mirrored pHashes (64-bit patterns), written as the
    action writes them (result rows of a write-intent); their sha256s."""
    from hoardfs.sql.apply import apply_write_intent

    shas = [hashlib.sha256(f"{key} image {i}".encode()).hexdigest() for i in range(len(ph))]
    apply_write_intent(conn, {
        "key": key, "nodes": [{"sha256": s, "physical": {"size": 10, "file_type": "jpg"}} for s in shas],
        "batches": [{"batch_id": f"{key}-run", "seal": True}],
        "results": [{"table": "result_image_hash", "node": s, "batch_id": f"{key}-run",
                     "values": {"phash": neardup.to_signed(p), "dhash": 0, "phash_flip": neardup.to_signed(f)}}
                    for s, p, f in zip(shas, ph, flip, strict=True)]})
    return shas


@pytest.mark.services
def test_deleted_images_leave_their_groups_and_near_of_uses_the_quarter_indexes(pg) -> None:
    """hoardfs.sql.neardup over real PostgreSQL: an image hidden by a type-A delete is in no group and no
    one's neighbour; near_of finds neighbours within t whose differing bits are spread over all
    four quarters (t = 7: 1 bit in three quarters, 4 in one) and through a mirror, nearest first,
    and its query uses the quarter indexes (EXPLAIN)."""
    from hoardfs.sql.deletion import hide_nodes
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    base = 0x1234_5678_9ABC_DEF0
    spread = base ^ (1 << 63) ^ (1 << 40) ^ (1 << 20) ^ 0b1111  # 7 bits, in every quarter
    ph = [base, base ^ 0b1, spread, 0x0F0F_0F0F_0F0F_0F0F, base ^ (0b11 << 30)]
    # the fourth is the first's mirror image: each one's mirrored pHash near the other's pHash
    flip = [0x0F0F_0F0F_0F0F_0F0E, 0x5555, 0x6666, base ^ (1 << 50), 0x7777]
    shas = write_hashes(pg, "del", ph, flip)
    found = neardup.groups(pg, 7)
    assert [sorted(m.sha256 for m in g) for g in found] == [sorted(shas)]
    assert {m.sha256 for g in found for m in g if m.flipped} == {shas[3]}
    near = neardup.near_of(pg, shas[0], 7)
    assert near == sorted([(shas[1], 1, False), (shas[4], 2, False), (shas[2], 7, False), (shas[3], 1, True)],
                          key=lambda x: (x[1], x[0]))
    assert neardup.near_of(pg, shas[0], 0) == []
    plan = "\n".join(r[0] for r in pg.execute(
        "EXPLAIN SELECT 1 FROM result_image_hash r WHERE ((r.phash >> 48) & 65535) = ANY(%s) "
        "OR (r.phash & 65535) = ANY(%s)", [[1, 2], [3]]))
    assert "result_image_hash_q0" in plan and "result_image_hash_q3" in plan, plan
    hide_nodes(pg, [bytes.fromhex(shas[1])])
    assert neardup.hashed_count(pg) == 4
    assert [sorted(m.sha256 for m in g) for g in neardup.groups(pg, 7)] == [sorted(set(shas) - {shas[1]})]
    assert shas[1] not in {s for s, _, _ in neardup.near_of(pg, shas[0], 7)}


@pytest.mark.services
def test_near_of_finds_every_image_hoard_dups_groups_with_one_through_a_mirror(pg) -> None:
    """A mirrored copy that was also re-encoded is not an exact mirror: one image's mirrored
    pHash can lie within t of the other's pHash while the other's mirrored pHash lies farther
    from the first's. `hoard dups` (groups) links the two either way; the node page's
    near-duplicates (near_of) must show each from the other — the same facts judged the same way."""
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    p = 0x1234_5678_9ABC_DEF0
    # b's mirrored pHash is a's pHash (1 bit off); a's mirrored pHash is 20 bits from b's pHash
    q = 0x0F0F_0F0F_0F0F_0F0F
    a, b = write_hashes(pg, "mirror-one-way", [p, q], [q ^ 0xFFFFF, p ^ 1])
    assert [sorted(m.sha256 for m in g) for g in neardup.groups(pg, 6)] == [sorted([a, b])]
    assert [s for s, _, _ in neardup.near_of(pg, b, 6)] == [a]
    assert [s for s, _, _ in neardup.near_of(pg, a, 6)] == [b]


def _hoard(cfg, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.services
def test_dups_groups_an_ingested_batch_of_copies(hoard_home: Path, pg) -> None:
    """A sidecar batch of 3 pictures, their resized, quality-60, EXIF-rotated and mirrored
    copies, a cropped and a turned copy, and bad images, ingested; `hoard action run
    near-dup-hash` stores one bigint row per good image; `hoard dups` gives one group per
    picture (the mirror through phash_flip, marked), the crop joins at a larger threshold, and
    `--no-flips` leaves the mirrors out; a bad threshold is one line, exit 2."""
    with worker_reachable_home(hoard_home) as home:  # the built-in action's worker runs as nobody under root
        _dups_of_copies(home, pg)


def _dups_of_copies(hoard_home: Path, pg) -> None:
    cfg = ingest_home(hoard_home, pg)
    batch = cfg.ssd.zone_path("3A") / "copies-1"
    batch.mkdir()
    made = write_set(hoard_home / "set", REALDATA / "images")
    chosen = sorted(made)[:3]
    kinds = ("original", "resize", "quality60", "exif_rotated", "flip")
    sha = {}
    for name in chosen:
        for kind, path in made[name].items():
            if kind in kinds or (name == chosen[0] and kind in ("crop10", "rotate90")):
                data = path.read_bytes()
                (batch / f"{name}-{kind}.jpg").write_bytes(data)
                (batch / f"{name}-{kind}.jpg.json").write_text(json.dumps({"title": f"{name} {kind}"}))
                sha[(name, kind)] = hashlib.sha256(data).hexdigest()
    bad = _bad_images(batch, made[chosen[0]]["original"].read_bytes())
    for b in bad:
        (batch / f"{b}.json").write_text(json.dumps({"title": b}))
    done = _hoard(cfg, "ingest", str(batch), "--source", "sidecar", "--here")
    assert done.returncode == 0, done.stdout + done.stderr

    empty = _hoard(cfg, "dups")
    assert empty.returncode == 0 and empty.stdout == "" and "hoard action run near-dup-hash" in empty.stderr

    spec = hoard_home / "copies.toml"
    spec.write_text('name = "copies"\nlayout = "webdataset"\ndedup = "by_near_dup"\n[selector]\nkinds = ["image"]\n'
                    '[split]\nratios = { train = 0.5, val = 0.5 }\ngroup = "near_dup"\n')
    unhashed = _hoard(cfg, "dataset", "build", str(spec), "--dry-run")
    assert unhashed.returncode == 5 and "hoard action run near-dup-hash" in unhashed.stderr, unhashed.stderr

    run = _hoard(cfg, "action", "run", "near-dup-hash", "--here", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["status"] == "done"
    rows = {bytes(s).hex(): (p, d, f) for s, p, d, f in pg.execute(
        "SELECT n.sha256, r.phash, r.dhash, r.phash_flip FROM result_image_hash r JOIN node n USING (node_id)")}
    assert set(rows) == set(sha.values())  # the bad images have none
    first = made[chosen[0]]["original"]
    want = hashes(first)
    assert tuple(neardup.to_hex(v) for v in rows[sha[(chosen[0], "original")]]) == (
        want["phash"], want["dhash"], want["phash_flip"])

    res = _hoard(cfg, "dups", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["threshold"] == neardup.DEFAULT_THRESHOLD and doc["hashed"] == len(sha)
    groups = {frozenset(g["members"]): set(g["mirrored"]) for g in doc["groups"]}
    expected = {frozenset(sha[(n, k)] for k in kinds) for n in chosen}
    assert set(groups) == expected, doc
    for n in chosen:
        assert groups[frozenset(sha[(n, k)] for k in kinds)] == {sha[(n, "flip")]}
    text = _hoard(cfg, "dups")
    assert text.returncode == 0
    assert {frozenset(ln.split()) for ln in text.stdout.splitlines()} == expected
    assert f"3 groups of 15 images among {len(sha)} hashed" in text.stderr

    no_flips = json.loads(_hoard(cfg, "dups", "--json", "--no-flips").stdout)
    assert {frozenset(g["members"]) for g in no_flips["groups"]} == {g - {sha[(n, "flip")]} for n, g in zip(
        chosen, (frozenset(sha[(n, k)] for k in kinds) for n in chosen), strict=True)}
    wide = json.loads(_hoard(cfg, "dups", "--json", "--threshold", "16").stdout)
    assert any(sha[(chosen[0], "crop10")] in g["members"] and sha[(chosen[0], "original")] in g["members"]
               for g in wide["groups"])
    assert not any(sha[(chosen[0], "rotate90")] in g["members"] for g in doc["groups"])

    near = neardup.near_of(pg, sha[(chosen[0], "original")])
    assert {s for s, _, _ in near} == {sha[(chosen[0], k)] for k in kinds[1:]}
    assert [m for s, _, m in near if s == sha[(chosen[0], "flip")]] == [True]

    built = _hoard(cfg, "dataset", "build", str(spec), "--here", "--json")
    assert built.returncode == 0, built.stdout + built.stderr
    manifest = Path(json.loads(built.stdout)["path"]) / "manifest.jsonl"
    samples = {json.loads(ln)["sha256"]: json.loads(ln)["split"] for ln in manifest.read_text().splitlines()}
    for n in chosen:  # one sample of each group, the others' images each (bad images included: no hash, no group)
        assert len({sha[(n, k)] for k in kinds} & set(samples)) == 1
    assert len(samples) == len(sha) + len(bad) - 3 * (len(kinds) - 1)

    for bad_t in ("17", "-1"):
        refused = _hoard(cfg, "dups", "--threshold", bad_t)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
