"""Finding what is stored: `hoard ls`, `hoard info`, `hoard select` (and its view manifest
piped into `hoard view add NAME -`), on a really ingested batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hoardfs.adapters.synth import Spec, generate
from tests.test_ingest import ingest_all, ingest_home

REPO = Path(__file__).resolve().parent.parent


def _hoard(cfg, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), *args], cwd=REPO,
                          input=stdin, capture_output=True, text=True, timeout=60)


def ingest_one(hoard_home: Path, pg, redis_conn, seed: int):
    """A home with one ingested yt-dlp batch of 8 items: (its settings, the generated batch)."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    [b] = generate(zone3a, Spec(seed=seed, batches=1, items_per_batch=8, sources=("ytdlp",), large_max_mb=1,
                                ready_signal=True))
    [st] = ingest_all(cfg, redis_conn, [zone3a / b.batch_id])
    assert st.status == "done", st.error
    return cfg, b


def test_ls_info_select_on_an_ingested_batch(hoard_home: Path, pg, redis_conn, tmp_path: Path) -> None:
    """`ls` lists the batch and its files; `info PREFIX` names size, replicas, the batch and
    original path, the metadata and mount paths — and still answers, saying so, with the
    database down; `select --batch B --view` makes a view manifest `view add NAME -` accepts."""
    cfg, b = ingest_one(hoard_home, pg, redis_conn, seed=31)
    listing = _hoard(cfg, "ls")
    assert listing.returncode == 0 and b.batch_id in listing.stdout and "ytdlp" in listing.stdout
    files = [json.loads(line) for line in _hoard(cfg, "ls", "--batch", b.batch_id, "--json").stdout.splitlines()]
    item = b.items[0]
    assert {"sha256": item.sha256, "size": item.size, "path": item.path} in files
    info = _hoard(cfg, "info", item.sha256[:10])
    assert info.returncode == 0, info.stderr
    assert item.sha256 in info.stdout and f"{item.size:,} bytes" in info.stdout
    assert f"batch {b.batch_id}: {item.path}" in info.stdout
    assert "metadata:  [ytdlp]" in info.stdout and f"<mount>/batches/{b.batch_id}/{item.path}" in info.stdout
    doc = json.loads(_hoard(cfg, "info", item.sha256, "--json").stdout)
    assert len(doc["replicas"]) >= 2 and doc["database"]["batches"] == [b.batch_id]
    manifest = _hoard(cfg, "select", "--batch", b.batch_id, "--view")
    assert manifest.returncode == 0, manifest.stderr
    assert f"{item.sha256}  {item.path}" in manifest.stdout.splitlines()
    added = _hoard(cfg, "view", "add", "picked", "-", stdin=manifest.stdout)
    assert added.returncode == 0, added.stderr
    assert "picked" in _hoard(cfg, "view", "list").stdout
    text = Path(cfg.source).read_text()
    Path(cfg.source).write_text(text.replace("database_url = ", f"database_url = 'postgresql:///x?host={tmp_path}'\n#"))
    down = _hoard(cfg, "info", item.sha256)
    assert down.returncode == 0 and "database:  not reachable" in down.stdout
    assert f"batch {b.batch_id}: {item.path}" in down.stdout
    assert _hoard(cfg, "info", "zzzz").returncode == 2
