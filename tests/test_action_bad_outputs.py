"""What a worker writes, through whole runs (parse's own cases are in
test_action_parse): a symbolic link out of the output root, a malformed results file, children
bigger than max_output_bytes (a sparse file of many GB). Each: the run fails at parse with the
one parse line, nothing of it stored or in SQL, 3C kept for inspection, no 3C reservation left
— and, the worker fixed, the same command resumes and finishes exactly once. Real PostgreSQL,
Redis, store and worker processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest

from hoardfs.base import config
from hoardfs.fsd.store import Store
from hoardfs.jobs.actions import api
from hoardfs.jobs.actions.state import load_state
from tests.test_action_runs import action_home, counts, hoard
from tests.test_action_workers import assert_produced_once, ending_events, inputs_of, worker_contract

# tier: the module's tests run workers and need PostgreSQL and Redis
pytestmark = pytest.mark.services

#: what each bad worker does besides its good outputs (python, before it exits)
SYMLINK_OUT = ('os.symlink("/etc/passwd", os.path.join(out, "thumbs", '
               'sorted(os.listdir(os.path.join(out, "thumbs")))[0][:64] + "_1.txt"))\n')
MALFORMED = 'open(os.path.join(out, "edges.jsonl"), "a").write("{\\"sha\\": \\"ab\\", oops\\n")\n'
SPARSE = ('f = os.path.join(out, "thumbs", sorted(os.listdir(os.path.join(out, "thumbs")))[0][:64] + "_1.txt")\n'
          'with open(f, "wb") as h:\n    h.truncate(8 << 30)\n')


def bad_worker(cfg: config.Settings, batch: str, extra: str, **kw) -> Path:
    path = worker_contract(cfg, batch, **kw)
    script = cfg.actions_dir / "thumbs-worker.py"
    script.write_text(script.read_text().replace("sys.exit(EXIT)", extra + "sys.exit(EXIT)"))
    return path


def reservations_of(cfg: config.Settings, rid: str) -> list[dict]:
    res = hoard(cfg.source, "zones", "--json")
    assert res.returncode == 0, res.stderr
    return [r for z in json.loads(res.stdout)["zones"].values() for r in z["reservations"] if r["id"] == rid]


@pytest.mark.parametrize(("case", "extra", "words"), [
    ("symlink out", SYMLINK_OUT, "a symbolic link (to /etc/passwd), never followed"),
    ("malformed results", MALFORMED, "edges.jsonl"),
    ("sparse 8 GiB child", SPARSE, "more than max_output_bytes allows (1.0 MiB)"),
])
def test_bad_output_fails_at_parse_keeps_3c_then_resumes_fixed(hoard_home: Path, pg, redis_conn, case: str,
                                                               extra: str, words: str) -> None:
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=111, items=4)
    bound = "a4_scale = 2\nmax_output_bytes = 1048576" if case == "sparse 8 GiB child" else "a4_scale = 2"
    path = bad_worker(cfg, batch, extra)
    path.write_text(path.read_text().replace("a4_scale = 2", bound))
    base = counts(cfg)
    with Store.open(cfg, writable=False) as store:
        objects = store.index.count_objects()
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "failed at step parse" in lines[0] and words in lines[0], lines
    (rid,) = [r["run"] for r in api.runs(cfg)]
    if case == "sparse 8 GiB child":  # the file, the total and the key to raise
        assert "_1.txt: with this file (8.00 GiB)" in lines[0] and "raise `max_output_bytes`" in lines[0], lines
    if case == "malformed results":
        assert re.search(r"edges\.jsonl line \d+ column \d+: not valid JSON", lines[0]), lines
    st = load_state(cfg, rid)
    assert (st.status, st.step) == ("failed", "parse")
    # nothing stored, nothing of the run in SQL but its batch and its failed event
    with Store.open(cfg, writable=False) as store:
        assert store.index.count_objects() == objects
    with psycopg.connect(cfg.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM physical_path WHERE locator LIKE %s",
                            [f"action:{rid}/%"]).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM result_canny WHERE batch_id = %s", [rid]).fetchone() == (0,)
    assert counts(cfg)["node"] == base["node"] and counts(cfg)["edge"] == base["edge"]
    assert [e for e, _ in ending_events(cfg, rid)] == ["failed"]
    # 3C kept for inspection (the worker's output as it wrote it), no reservation held
    out = cfg.ssd.zone_path("3C") / rid / "by_sha256" / "output"
    assert (out / "edges.jsonl").is_file() and any((out / "thumbs").iterdir())
    assert reservations_of(cfg, rid) == []
    worker_contract(cfg, batch)  # the worker fixed; the contract (its version) unchanged: the same run
    path.write_text(path.read_text().replace("a4_scale = 2", bound))
    res = hoard(cfg.source, "action", "run", "thumbs", "--here", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["run"] == rid
    assert_produced_once(cfg, {**base, **{k: counts(cfg)[k] for k in ("action", "action_batch", "batch_member")}},
                         rid, len(inputs_of(cfg, batch)))
    assert reservations_of(cfg, rid) == []


def test_max_output_bytes_defaults_to_the_config_key(hoard_home: Path, pg, redis_conn) -> None:
    """No max_output_bytes in the contract: actions.max_output_bytes of hoard.toml bounds the
    children (here 1 KiB against 4 children of a few dozen bytes plus one of 8 GiB)."""
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=112, items=3)
    bad_worker(cfg, batch, SPARSE)
    text = Path(cfg.source).read_text()
    Path(cfg.source).write_text(text.replace("[actions]", "[actions]\nmax_output_bytes = 1024")
                                if "[actions]" in text else text + "\n[actions]\nmax_output_bytes = 1024\n")
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "more than max_output_bytes allows (1 KiB)" in out, out
    assert "actions.max_output_bytes in hoard.toml" in out
