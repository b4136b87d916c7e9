"""Scraped documents whose keys the database cannot hold, and names a command takes for an option:
each is one document (or file) quarantined with one line, and the rest of the batch goes on."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs.ingest import steps
from tests.test_ingest import _reasons, ingest_all, ingest_home

REPO = Path(__file__).resolve().parent.parent


def _sidecar_batch(home: Path, zone3a: Path, name: str, docs: dict[str, str], seed: int = 3,
                   ) -> tuple[Path, dict[str, str]]:
    """A sidecar batch in 3A: one distinct PNG per entry of `docs` (media name → its sidecar's
    JSON text), signalled; returns it and media name → sha256."""
    b = zone3a / name
    b.mkdir(parents=True)
    gen = generate(home / "gen", Spec(seed=seed, batches=1, items_per_batch=len(docs) + 2, sources=("gallery",),
                                      large_max_mb=1))[0]
    images = sorted(p for p in (home / "gen" / gen.batch_id).iterdir() if p.suffix == ".png")
    shas = {}
    for (media, doc), img in zip(docs.items(), images, strict=False):
        (b / media).write_bytes(img.read_bytes())
        (b / f"{media}.json").write_text(doc)
        shas[media] = hashlib.sha256(img.read_bytes()).hexdigest()
    (b / "_READY").write_text("sidecar\n")
    return b, shas


#: a key holding NUL, and one holding a lone surrogate (JSON can write both; PostgreSQL's
#: text and jsonb hold neither)
NUL_KEY = '{"title": "nul key", "a\\u0000b": 1}'
SURROGATE_KEY = '{"title": "surrogate key", "x": {"\\ud800": "v"}}'


def test_a_key_the_database_cannot_hold_quarantines_its_document(hoard_home: Path, pg, redis_conn) -> None:
    """A sidecar whose key holds NUL or a lone surrogate, in the first batch of a new source: that
    document and its media go to quarantine with one line naming the key; the other items are
    stored and described (a value holding either with U+FFFD in its place), and the source's
    schema proposal is made."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    b, shas = _sidecar_batch(hoard_home, zone3a, "side-keys-1", {
        "good0.png": json.dumps({"title": "good 0", "width": 1}), "nul.png": NUL_KEY,
        "good1.png": '{"title": "good 1", "width": 2, "note": "lone \\udc00 and \\u0000"}', "sur.png": SURROGATE_KEY})
    st = ingest_all(cfg, redis_conn, [b])[0]
    assert st.status == "done with rejects", st.error
    reasons = _reasons(cfg, "side-keys-1")
    assert set(reasons) == {"nul.png.json", "nul.png", "sur.png.json", "sur.png"}, reasons
    assert "'a\\x00b'" in reasons["nul.png.json"] and "NUL" in reasons["nul.png.json"], reasons
    assert "\\ud800" in reasons["sur.png.json"] and "surrogate" in reasons["sur.png.json"], reasons
    assert all("\n" not in r and "Traceback" not in r for r in reasons.values())
    q = zone3a / "_quarantine" / "side-keys-1"
    assert (q / "nul.png.json").read_text() == NUL_KEY and (q / "sur.png").is_file()  # moved, not lost
    titles = dict(pg.execute("SELECT p.locator, m.title FROM common_metadata m JOIN physical_path p USING (node_id) "
                             "WHERE p.locator LIKE 'batch:side-keys-1/%%'").fetchall())
    assert titles == {"batch:side-keys-1/good0.png": "good 0", "batch:side-keys-1/good1.png": "good 1"}
    notes = [n for (n,) in pg.execute("SELECT specific->>'note' FROM common_metadata WHERE title = 'good 1'")]
    assert notes == ["lone \ufffd and \ufffd"]  # values: U+FFFD in the database, the document as it was
    assert pg.execute("SELECT count(*) FROM schema_proposal").fetchone()[0] == 1
    assert not b.exists()


@pytest.mark.expect_log(r"exception raised while executing", level="ERROR")
def test_a_batch_that_failed_on_such_a_key_resumes(hoard_home: Path, pg, redis_conn,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`hoard ingest --resume` of batches whose scan kept records with such keys (failed at
    `apply`): one whose intent was applied (its schema proposal failed) completes as applied,
    its record kept; one whose intent was not has that document and its media quarantined at
    `apply`, and completes without them."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    nul, _ = _sidecar_batch(hoard_home, zone3a, "side-keys-2", {
        "good0.png": json.dumps({"title": "good 0", "width": 1}), "nul.png": NUL_KEY})
    sur, _ = _sidecar_batch(hoard_home / "two", zone3a, "side-keys-3", {
        "good1.png": json.dumps({"title": "good 1", "width": 2}), "sur.png": SURROGATE_KEY}, seed=4)
    with monkeypatch.context() as m:  # the scan as it was: every record kept
        m.setattr(steps, "_storable", lambda records, files: (records, []), raising=False)
        [one] = ingest_all(cfg, redis_conn, [nul])
        # the other stopped before its intent: the apply failed on the key before anything was written
        ua1.submit(cfg, sur, None, redis_conn)
        for step in ("scan", "store"):
            ua1._run_step_locked(cfg, "side-keys-3", step, then_enqueue=False)
    assert (one.status, one.step) == ("failed", "apply"), one.error
    applied = {k for (k,) in pg.execute("SELECT key FROM applied_intent")}
    assert "ingest:side-keys-2" in applied and "ingest:side-keys-3" not in applied
    for batch, code in (("side-keys-2", 0), ("side-keys-3", 5)):  # 5: done with rejects
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "ingest", "--resume", batch,
                              "--here"], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert res.returncode == code and "Traceback" not in res.stderr + res.stdout, res.stdout + res.stderr
    one, two = ua1.load_state(cfg, "side-keys-2"), ua1.load_state(cfg, "side-keys-3")
    assert one.status == "done", one.error
    keys = {k for (s,) in pg.execute("SELECT specific FROM common_metadata WHERE title = 'nul key'") for k in s}
    assert "a\ufffdb" in keys  # as applied; the stored document keeps the NUL
    assert pg.execute("SELECT count(*) FROM schema_proposal").fetchone()[0] == 1
    assert two.status == "done with rejects", two.error
    assert {r["path"] for r in two.report["rejected"]} == {"sur.png.json", "sur.png"}, two.report["rejected"]
    assert all("surrogate" in r["reason"] for r in two.report["rejected"])
    q = zone3a / "_quarantine" / "side-keys-3"
    assert (q / "sur.png.json").read_text() == SURROGATE_KEY and (q / "sur.png").is_file()  # moved, not lost
    assert "\\ud800" in _reasons(cfg, "side-keys-3")["sur.png.json"]
    titles = {t for (t,) in pg.execute("SELECT title FROM common_metadata")}
    assert titles == {"good 0", "nul key", "good 1"}
    manifest = json.loads(next((cfg.ssd.zone_path("3B") / "side-keys-3").glob("*.manifest.json")).read_bytes())
    assert [f["path"] for f in manifest["files"]] == ["good1.png", "good1.png.json"]
    assert {r["path"] for r in manifest["rejected"]} == {"sur.png.json", "sur.png"}
    assert not nul.exists() and not sur.exists()


def test_a_name_starting_with_a_dash_is_quarantined(hoard_home: Path, pg, redis_conn) -> None:
    """A scraped file named `--checkpoint-action=exec=sh x.sh` (which `tar cf b.tar *` in the
    batch's folder in the mount takes for an option, and runs) and a folder `-d` are quarantined,
    each with one line saying why; the rest of the batch is stored."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    b, shas = _sidecar_batch(hoard_home, zone3a, "side-dash-1", {
        "good0.png": json.dumps({"title": "good 0"}), "--checkpoint-action=exec=sh x.sh": json.dumps({"title": "t"})})
    (b / "-d").mkdir()
    (b / "-d" / "a.png").write_bytes(b"png")
    (b / "-d" / "a.png.json").write_text('{"title": "in -d"}')
    st = ingest_all(cfg, redis_conn, [b])[0]
    assert st.status == "done with rejects", st.error
    lines = [line for line in (zone3a / "_quarantine" / "side-dash-1" / "_REASONS.txt").read_text().splitlines()
             if not line.startswith("#")]
    assert sorted(line.split("\t")[0] for line in lines) == [
        "--checkpoint-action=exec=sh x.sh", "--checkpoint-action=exec=sh x.sh.json", "-d"], lines
    assert all("starts with `-`" in line and "rename it" in line for line in lines), lines
    q = zone3a / "_quarantine" / "side-dash-1"
    assert (q / "--checkpoint-action=exec=sh x.sh").is_file() and (q / "-d" / "a.png").is_file()  # moved, not lost
    assert [t for (t,) in pg.execute("SELECT title FROM common_metadata")] == ["good 0"]
    assert not b.exists()
