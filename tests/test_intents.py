"""Write-intents against a real PostgreSQL: bulk apply, idempotency, every rejection names its field."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib

import psycopg
import pytest

from hoardfs.sql.apply import BY_INDEX_RATIO, apply_write_intent
from hoardfs.sql.intents import IntentConflict, IntentError, parse_intent, virtual_sha256
from hoardfs.sql.migrate import migrate

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOSTILE = "x'); DROP TABLE node; --"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def intent(key: str = "batch-1", media: int = 3, author: str = "ada", t: dt.datetime = T0, title: str = "clip") -> dict:
    files = [sha(f"file-{i}") for i in range(media)]
    chan = virtual_sha256("channel", "ytdlp", author)
    return {
        "key": key,
        "sources": ["ytdlp"],
        "relationships": [{"name": "channel_of"}],
        "nodes": [{"sha256": f, "physical": {"size": 100 + i, "file_type": "mp4", "locators": [f"batch:{key}/v{i}.mp4"]}}
                  for i, f in enumerate(files)]
                 + [{"sha256": chan, "virtual": {"kind": "channel", "source": "ytdlp", "stable_id": author}}],
        "metadata": [{"node": f, "source": "ytdlp", "title": f"{title} {i}", "view_count": i, "download_time": t.isoformat(),
                      "author": author, "raw_metadata": {"id": i}} for i, f in enumerate(files)],
        "edges": [{"parent": chan, "child": f, "relationship": "channel_of"} for f in files],
        "labels": [{"node": files[0], "key": "class", "value": "cat"}],
        "batches": [{"batch_id": key, "source": "ytdlp", "members": files, "seal": True}],
        "events": [{"batch_id": key, "action": 0, "status": "done", "started_at": t.isoformat(),
                    "ended_at": (t + dt.timedelta(seconds=5)).isoformat()}],
    }


@pytest.fixture
def db(pg: psycopg.Connection) -> psycopg.Connection:
    migrate(pg)
    return pg


def _graph(conn) -> dict:
    q = lambda sql: sorted(conn.execute(sql).fetchall())  # noqa: E731
    return {
        "nodes": q("SELECT encode(sha256, 'hex'), is_virtual FROM node"),
        "edges": q("SELECT encode(p.sha256, 'hex'), encode(c.sha256, 'hex'), r.name FROM edge e "
                   "JOIN node p ON p.node_id = e.parent_id JOIN node c ON c.node_id = e.child_id "
                   "JOIN relationship_type r USING (rel_id)"),
        "meta": q("SELECT encode(n.sha256, 'hex'), m.title, m.download_time FROM common_metadata m JOIN node n USING (node_id)"),
        "paths": q("SELECT locator FROM physical_path"),
    }


def test_apply_then_reapply_is_a_noop(db) -> None:
    """One intent writes nodes, metadata, edges, labels, batch and event; the same key again changes nothing."""
    res = apply_write_intent(db, intent())
    assert not res.noop
    assert res.counts == {"nodes_new": 4, "physical_new": 3, "virtual_new": 1, "paths_new": 3, "metadata_rows": 3,
                          "edges_new": 3, "labels_new": 1, "members_new": 3, "events": 1}
    before = _graph(db)
    assert len(before["edges"]) == 3 and before["meta"][0][1] == "clip 0"
    assert db.execute("SELECT sealed_at IS NOT NULL FROM action_batch WHERE batch_id = 'batch-1'").fetchone() == (True,)
    again = apply_write_intent(db, intent())
    assert again.noop and again.counts == res.counts
    assert _graph(db) == before
    assert db.execute("SELECT count(*) FROM action_event").fetchone() == (1,)


def test_same_key_other_body_is_refused(db) -> None:
    apply_write_intent(db, intent())
    with pytest.raises(IntentConflict, match="already applied with different content"):
        apply_write_intent(db, intent(title="changed"))


def test_order_of_batches_does_not_matter(pg) -> None:
    """Two batches sharing a channel and content: A then B gives the graph B then A gives."""
    graphs = []
    for order in ((0, 1), (1, 0)):
        pg.execute("DROP SCHEMA IF EXISTS g CASCADE; CREATE SCHEMA g; SET search_path = g")
        migrate(pg)
        a, b = intent("a", media=3), intent("b", media=5, t=T0 + dt.timedelta(days=1), title="later")
        for i in order:
            apply_write_intent(pg, (a, b)[i])
        graphs.append(_graph(pg))
    assert graphs[0] == graphs[1]
    titles = {t for _, t, _ in graphs[0]["meta"]}
    assert titles == {f"later {i}" for i in range(5)}  # the newest download wins for shared nodes


def test_hostile_strings_are_stored_verbatim(db) -> None:
    """Values never reach SQL text: an injection string is just a title."""
    apply_write_intent(db, intent(title=HOSTILE, author=HOSTILE))
    assert db.execute("SELECT count(*) FROM node").fetchone()[0] == 4
    assert db.execute("SELECT title FROM common_metadata ORDER BY title LIMIT 1").fetchone()[0].startswith(HOSTILE)


def _bad(**changes):
    doc = intent()
    for path, value in changes.items():
        target = doc
        parts = path.split(".")
        for p in parts[:-1]:
            target = target[int(p)] if p.isdigit() else target[p]
        last = parts[-1]
        if value is KeyError:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return doc


BAD = [
    (_bad(colour="red"), r"colour: unknown key; allowed here: version, key, sources"),
    (_bad(**{"nodes.0.physical.size": "big"}), r"nodes\[0\]\.physical\.size: Input should be a valid integer"),
    (_bad(**{"nodes.0.sha256": "abc"}), r"nodes\[0\]\.sha256: String should match pattern"),
    (_bad(**{"nodes.3.virtual.stable_id": "bob"}), r"nodes\[3\]: sha256 of a virtual node must be"),
    (_bad(**{"metadata.1.raw_metadata": {"x": "y" * 2000}}), r"metadata\[1\]\.raw_metadata: raw_metadata is limited to 1 KB"),
    (_bad(**{"metadata.0.nodes": 1}), r"metadata\[0\]\.nodes: unknown key; allowed here: node, source"),
    (_bad(version=2), r"version: Input should be 1"),
    (_bad(**{"edges.0.child": sha("nowhere")}), r"edges\[0\]\.child: node [0-9a-f]{64} is neither in this intent nor in the database"),
    (_bad(sources=[]), r"metadata\[0\]\.source: unknown source 'ytdlp'; declare it"),
    (_bad(**{"edges.1.relationship": "nope_rel"}), r"edges\[1\]\.relationship: unknown relationship 'nope_rel'"),
    (_bad(**{"labels.0.node": sha("x")}), r"labels\[0\]\.node: node"),
    (_bad(**{"events.0.batch_id": "zzz"}), r"events\[0\]\.batch_id: no batch 'zzz'"),
    (_bad(**{"edges.0.child": intent()["edges"][0]["parent"]}), r"edges\[0\]: an edge needs two different nodes"),
    (_bad(**{"metadata.0.raw_metadata": {"x": "a\x00b"}}), r"metadata\[0\]\.raw_metadata\.x holds NUL \(U\+0000\)"),
    (_bad(**{"metadata.0.title": "a\x00"}), r"metadata\[0\]\.title holds NUL"),
    (_bad(**{"metadata.0.raw_metadata": {"k\x00": "v"}}), r"metadata\[0\]\.raw_metadata\.'k\\x00' holds NUL"),
]


@pytest.mark.parametrize(("doc", "pattern"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_intents_name_the_field_and_write_nothing(db, doc, pattern) -> None:
    with pytest.raises(IntentError, match=pattern):
        apply_write_intent(db, doc)
    assert db.execute("SELECT count(*) FROM node").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM applied_intent").fetchone() == (0,)


def test_sealed_batch_refuses_members_from_a_later_intent(db) -> None:
    apply_write_intent(db, intent())
    later = intent(key="later", media=4)
    later["batches"][0]["batch_id"] = "batch-1"
    later["events"] = []
    with pytest.raises(IntentError, match="batch batch-1 is sealed"):
        apply_write_intent(db, later)
    assert db.execute("SELECT count(*) FROM batch_member").fetchone() == (3,)


def test_physical_virtual_clash(db) -> None:
    apply_write_intent(db, intent())
    doc = copy.deepcopy(intent(key="k2"))
    chan = doc["nodes"][-1]["sha256"]
    doc["nodes"] = [{"sha256": chan, "physical": {"size": 1}}]
    doc["metadata"], doc["edges"], doc["labels"], doc["batches"], doc["events"] = [], [], [], [], []
    with pytest.raises(IntentError, match=r"nodes\[0\]: the database has this node as the other kind"):
        apply_write_intent(db, doc)


def test_a_node_listed_as_both_kinds_in_one_intent_is_refused(db) -> None:
    """One intent listing a sha256 as a physical node and as a virtual one is refused, naming
    both entries, and writes nothing (before: applied, the node got a physical_content row and
    a virtual_asset row). Listed twice as the same kind, it is one node, as before."""
    doc = intent()
    chan = doc["nodes"][-1]["sha256"]
    doc["nodes"].insert(0, {"sha256": chan, "physical": {"size": 1}})
    with pytest.raises(IntentError, match=rf"nodes\[4\] lists node {chan} as virtual, nodes\[0\] as physical"):
        apply_write_intent(db, doc)
    assert db.execute("SELECT count(*) FROM node").fetchone()[0] == 0
    doc["nodes"][0] = doc["nodes"][-1]
    apply_write_intent(db, doc)
    assert db.execute("SELECT count(*) FROM virtual_asset").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM physical_content pc JOIN node n USING (node_id) "
                      "WHERE n.sha256 = %s", [bytes.fromhex(chan)]).fetchone()[0] == 0


def test_the_text_backslash_u0000_is_no_nul() -> None:
    """The NUL check looks for `\\u0000` in the intent's JSON first: a string holding those six
    characters (no NUL) matches that search, and is still accepted as it is."""
    doc = _bad(**{"metadata.0.title": "C:\\u0000 is not a NUL", "metadata.0.raw_metadata": {"\\u0000": "x"}})
    got = parse_intent(doc)
    assert got.metadata[0].title == "C:\\u0000 is not a NUL"
    assert got.metadata[0].raw_metadata == {"\\u0000": "x"}


def test_parse_from_json() -> None:
    import json

    assert parse_intent(json.dumps(intent())).key == "batch-1"
    with pytest.raises(IntentError, match="write-intent rejected"):
        parse_intent("{not json")


def test_results_and_black_list_apply_exactly_once(db) -> None:
    """An action's result rows and black-list flags land with its intent; the same key again
    changes nothing; an intent without them hashes as it did before the fields existed."""
    base = intent("act-1")
    before = parse_intent(base).digest()
    assert parse_intent({**base, "results": [], "black_list": []}).digest() == before
    files = [n["sha256"] for n in base["nodes"] if "physical" in n]
    doc = {**base, "results": [
        {"table": "result_canny", "node": files[0], "batch_id": "act-1", "values": {"status": "ok", "edge_ratio": 0.25}},
        {"table": "result_ocr_box", "node": files[1], "batch_id": "act-1",
         "values": {"box_no": 0, "x": 1, "y": 2.5, "w": 3, "h": 4, "text": HOSTILE, "confidence": 0.5}}],
           "black_list": [files[2]]}
    res = apply_write_intent(db, doc)
    assert res.counts["results_new"] == 2 and res.counts["black_listed"] == 1
    assert db.execute("SELECT status, edge_ratio FROM result_canny").fetchall() == [("ok", 0.25)]
    assert db.execute("SELECT text, y FROM result_ocr_box").fetchall() == [(HOSTILE, 2.5)]
    flagged = db.execute("SELECT encode(n.sha256, 'hex') FROM physical_content pc JOIN node n USING (node_id) "
                         "WHERE in_black_list").fetchall()
    assert flagged == [(files[2],)]
    assert apply_write_intent(db, doc).noop
    assert db.execute("SELECT (SELECT count(*) FROM result_canny) + (SELECT count(*) FROM result_ocr_box)").fetchone() == (2,)


@pytest.mark.parametrize("results, black_list, pattern", [
    ([{"table": "result_canny", "node": sha("x"), "batch_id": "b", "values": {"ratio": 1}}], [],
     r"results\[0\].*has no column 'ratio'"),
    ([{"table": "result_canny", "node": sha("x"), "batch_id": "b", "values": {"edge_ratio": 1}}], [],
     r"results\[0\].*needs column 'status'"),
    ([{"table": "result_canny", "node": sha("x"), "batch_id": "b", "values": {"status": "ok", "edge_ratio": "a"}}], [],
     r"edge_ratio takes a number"),
    ([{"table": "result_canny", "node": sha("file-0"), "batch_id": "nobatch", "values": {"status": "ok"}}], [],
     r"results\[0\]\.batch_id: no batch 'nobatch'"),
    ([{"table": "result_canny", "node": sha("nowhere"), "batch_id": "b", "values": {"status": "ok"}}], [],
     r"results\[0\]\.node: node [0-9a-f]{64} is neither"),
    ([], [sha("nowhere")], r"black_list\[0\]: node [0-9a-f]{64} is not a physical node"),
])
def test_bad_results_and_black_list_name_the_field(db, results, black_list, pattern) -> None:
    """A result row or a black-list entry that cannot be written names its field; nothing is written."""
    doc = {**intent("b"), "results": results, "black_list": black_list}
    with pytest.raises(IntentError, match=pattern):
        apply_write_intent(db, doc)
    assert db.execute("SELECT count(*) FROM node").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM applied_intent").fetchone() == (0,)


def test_a_role_without_superuser_applies_the_same_rows(pg) -> None:
    """The service role `hoard install` makes is no superuser: the bulk apply then keeps the
    foreign-key triggers (no session_replication_role) and writes the same rows a superuser's
    apply writes; the sealed-batch rule still holds."""
    role = f"svc_{hashlib.sha256(str(id(pg)).encode()).hexdigest()[:8]}"
    schema = pg.execute("SELECT current_schema()").fetchone()[0]
    graphs = []
    pg.execute(f"CREATE ROLE {role} NOSUPERUSER NOCREATEDB NOCREATEROLE")
    try:
        for as_role in (False, True):
            # a connection of its own each: a role's session never sees the other's temporary tables
            with psycopg.connect(pg.info.dsn, autocommit=True, options=f"-c search_path={schema}") as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE; CREATE SCHEMA {schema}")
                migrate(conn)
                if as_role:
                    conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}; "
                                 f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}; "
                                 f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role}; SET ROLE {role}")
                assert conn.execute("SELECT current_setting('is_superuser')").fetchone() == ("off" if as_role else "on",)
                apply_write_intent(conn, intent())
                graphs.append(_graph(conn))
                later = intent(key="later", media=4)
                later["batches"][0]["batch_id"] = "batch-1"
                later["events"] = []
                with pytest.raises(IntentError, match="batch batch-1 is sealed"):
                    apply_write_intent(conn, later)
    finally:
        pg.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert graphs[0] == graphs[1] and len(graphs[0]["nodes"]) == 4


def _rows(key: str, n: int, parents: list[str]) -> dict:
    """An intent of `n` new physical nodes, each with metadata, a label, a batch membership and an
    edge from one of `parents` (none: no edges)."""
    files = [sha(f"{key}-{i}") for i in range(n)]
    return {"key": key, "sources": ["ytdlp"], "relationships": [{"name": "crop_of"}],
            "nodes": [{"sha256": f, "physical": {"size": 1, "file_type": "mp4"}} for f in files],
            "metadata": [{"node": f, "source": "ytdlp", "title": key} for f in files],
            "edges": [{"parent": parents[i % len(parents)], "child": f, "relationship": "crop_of"}
                      for i, f in enumerate(files)] if parents else [],
            "labels": [{"node": f, "key": "split", "value": "train"} for f in files],
            "batches": [{"batch_id": key, "source": "ytdlp", "members": files}]}


def test_an_intent_reads_the_large_tables_by_their_indexes_only(db) -> None:
    """A write-intent of 2,000 nodes — edges from nodes already there, metadata, labels, a batch,
    black-listed and unlabelled nodes — into a database of 20,000 (past BY_INDEX_RATIO times its
    rows) reads `node`, `physical_content` and `label` by their indexes only, never whole: by
    hash joins (the planner's choice for rows of this many against that many) it read the whole
    node table 12 times, so an intent's cost grew with the database, not with the intent (3.2×
    per node from 1 M to 10 M nodes). And it looks each sha256 up in `node` once, not
    once per statement that names it. What it writes is the same."""
    big = _rows("big", 20_000, [])
    assert 20_000 >= BY_INDEX_RATIO * 2_000
    apply_write_intent(db, big)
    db.execute("ANALYZE")  # (the table sizes autovacuum gives the planner)
    parents = [n["sha256"] for n in big["nodes"][:500]]
    small = _rows("small", 2_000, parents) | {"black_list": parents[:50],
                                              "unlabels": [{"node": p, "key": "split"} for p in parents[50:100]]}
    with db.transaction():
        res = apply_write_intent(db, small)
        scans = dict(db.execute("SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
                                "WHERE relname IN ('node', 'physical_content', 'label') "
                                "AND schemaname = current_schema()").fetchall())
        lookups = db.execute("SELECT idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'node' "
                             "AND schemaname = current_schema()").fetchone()[0]
    assert scans == {"node": 0, "physical_content": 0, "label": 0}, scans
    # each sha256 the intent names looked up in `node` once, and each new node's key checked once
    # as it goes in: 4,500 index probes (one statement per join against `node` made it 24,700)
    named = 2_000 + 500
    assert lookups <= named + 2_000, lookups
    assert {k: res.counts[k] for k in ("nodes_new", "edges_new", "labels_new", "members_new", "black_listed",
                                        "labels_removed")} == {"nodes_new": 2000, "edges_new": 2000, "labels_new": 2000,
                                                               "members_new": 2000, "black_listed": 50,
                                                               "labels_removed": 50}
    assert db.execute("SELECT count(*) FROM physical_content WHERE in_black_list").fetchone() == (50,)


def _apply_while_another_commits(db, servers, doc: dict, theirs: list[str]) -> dict:
    """Apply `doc` while another transaction holds `theirs` (sha256s) inserted as physical
    nodes, uncommitted while the intent looks its sha256s up and committed once the intent's
    node insert waits on one of their keys; {"res": ApplyResult} or {"err": exception}."""
    import threading

    schema = db.execute("SELECT current_schema()").fetchone()[0]
    opts = f"-c search_path={schema}"
    url = servers["database_url"]
    with psycopg.connect(url, options=opts) as other, psycopg.connect(url, options=opts) as mine:
        for s in theirs:  # (its transaction stays open)
            other.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)",
                          [bytes.fromhex(s)])
        pid = mine.execute("SELECT pg_backend_pid()").fetchone()[0]
        mine.commit()
        result: dict = {}

        def apply() -> None:
            try:
                result["res"] = apply_write_intent(mine, doc)
            except Exception as e:  # the test reports it
                result["err"] = e

        runner = threading.Thread(target=apply)
        runner.start()
        with psycopg.connect(url, autocommit=True) as watch:
            for _ in range(200):  # until the intent's insert waits on the other transaction's key
                waiting = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                        [pid]).fetchone()
                if waiting and waiting[0] == "Lock":
                    break
                runner.join(0.05)
        assert waiting and waiting[0] == "Lock", "the intent did not wait on the other transaction's node"
        other.commit()
        runner.join(30)
        assert not runner.is_alive()
    return result


def _both_apply_while_a_row_is_held(db, servers, docs: list[dict], hold: str, args: list) -> dict:
    """Apply the two intents `docs` side by side while a third transaction holds one row they
    both write (`hold`, `args`: its INSERT), uncommitted until both intents wait; then let go.
    {intent key: ApplyResult or the exception it raised}."""
    import threading

    schema = db.execute("SELECT current_schema()").fetchone()[0]
    url, opts = servers["database_url"], f"-c search_path={schema}"
    results: dict[str, object] = {}
    with psycopg.connect(url, options=opts) as holder, psycopg.connect(url, autocommit=True) as watch:
        holder.execute(hold, args)  # (held: its transaction stays open)
        pids: list[int] = []

        def apply(doc: dict) -> None:
            with psycopg.connect(url, options=opts) as conn:
                pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                conn.commit()
                try:
                    results[doc["key"]] = apply_write_intent(conn, doc)
                except Exception as e:  # the test reports it
                    results[doc["key"]] = e

        runners = [threading.Thread(target=apply, args=(d,)) for d in docs]
        for t in runners:
            t.start()
        waiting = 0
        for _ in range(400):  # until both intents wait (on the held row, or one on the other)
            waiting = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND "
                                    "wait_event_type = 'Lock'", [pids]).fetchone()[0]
            if len(pids) == 2 and waiting == 2:
                break
            runners[0].join(0.05)
        assert waiting == 2, "the intents did not both wait"
        holder.rollback()
        for t in runners:
            t.join(30)
    assert not any(t.is_alive() for t in runners)
    return results


def _embedding(x: float) -> str:
    import base64
    import struct
    return base64.b64encode(struct.pack("<4f", x, 0, 0, 0)).decode()


@pytest.mark.parametrize("rows", ["labels", "embeddings", "batches"])
def test_two_intents_writing_the_same_rows_in_opposite_orders_never_deadlock(db, servers, rows: str) -> None:
    """Two intents write the same 100 labels of one node (or 100 embeddings of one node, one
    per model; or three batches), one listing them A→Z, the other Z→A, while a third
    transaction holds the middle one — so each has written its half when the third lets go.
    Before, each then waited on a row the other had written: PostgreSQL refused one
    (DeadlockDetected) and its job was retried. Rows go in in their table's key order now (the
    embeddings by node and model, the batches by batch_id): one waits for the other, both
    apply, each row once."""
    base = intent()
    base["batches"].append({"batch_id": "emb-job", "action": 0})
    apply_write_intent(db, base)
    db.commit()
    node = base["nodes"][0]["sha256"]
    node_id = db.execute("SELECT node_id FROM node WHERE sha256 = %s", [bytes.fromhex(node)]).fetchone()[0]
    names = [f"k{i:03d}" for i in range(100)] if rows != "batches" else ["b-a", "b-m", "b-z"]
    middle = names[len(names) // 2]

    def body(order: list[str]) -> dict:
        if rows == "labels":
            return {"labels": [{"node": node, "key": k, "value": "v"} for k in order]}
        if rows == "embeddings":
            return {"results": [{"table": "result_image_embedding", "node": node, "batch_id": "emb-job",
                                 "values": {"model": m, "embedding": _embedding(1.0)}} for m in order]}
        return {"batches": [{"batch_id": b, "action": 0} for b in order]}

    docs = [{"key": f"{rows}-{way}", **body(order)} for way, order in (("up", names), ("down", names[::-1]))]
    hold, args = {"labels": ("INSERT INTO label (node_id, key, value) VALUES (%s, %s, 'v')", [node_id, middle]),
                  "embeddings": ("INSERT INTO result_image_embedding (node_id, batch_id, model, embedding) "
                                 "VALUES (%s, 'emb-job', %s, '\\x00')", [node_id, middle]),
                  "batches": ("INSERT INTO action_batch (batch_id, action_id) VALUES (%s, 0)", [middle])}[rows]
    results = _both_apply_while_a_row_is_held(db, servers, docs, hold, args)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    count = {"labels": ("SELECT count(*) FROM label WHERE node_id = %s AND key LIKE 'k%%'", [node_id]),
             "embeddings": ("SELECT count(*) FROM result_image_embedding WHERE node_id = %s", [node_id]),
             "batches": ("SELECT count(*) FROM action_batch WHERE batch_id LIKE 'b-%%'", [])}[rows]
    assert db.execute(*count).fetchone()[0] == len(names)


def test_an_intent_rolled_back_by_a_deadlock_is_applied_again(db, servers) -> None:
    """An intent PostgreSQL picks as a deadlock's victim is applied again and lands whole.

    A transaction holds label k050 of a node; the intent writes k000..k099 in key order, so it
    waits at k050 holding k000..k049; the holder then writes k000 and waits on the intent. The
    intent waited first, so its deadlock check runs first and PostgreSQL rolls it back; the
    holder lets go, and the intent's second apply goes through."""
    import threading

    base = intent()
    apply_write_intent(db, base)
    db.commit()
    node = base["nodes"][0]["sha256"]
    node_id = db.execute("SELECT node_id FROM node WHERE sha256 = %s", [bytes.fromhex(node)]).fetchone()[0]
    schema = db.execute("SELECT current_schema()").fetchone()[0]
    url, opts = servers["database_url"], f"-c search_path={schema}"
    doc = {"key": "deadlocked", "labels": [{"node": node, "key": f"k{i:03d}", "value": "v"} for i in range(100)]}
    result: dict[str, object] = {}
    with psycopg.connect(url, options=opts) as holder, psycopg.connect(url, autocommit=True) as watch:
        holder.execute("INSERT INTO label (node_id, key, value) VALUES (%s, 'k050', 'v')", [node_id])
        pids: list[int] = []

        def apply() -> None:
            with psycopg.connect(url, options=opts) as conn:
                pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                conn.commit()
                try:
                    result["r"] = apply_write_intent(conn, doc)
                except Exception as e:  # the test reports it
                    result["r"] = e

        runner = threading.Thread(target=apply)
        runner.start()
        for _ in range(400):
            if pids and watch.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND "
                                      "wait_event_type = 'Lock'", [pids[0]]).fetchone()[0]:
                break
            runner.join(0.05)
        else:
            pytest.fail("the intent never waited on the held label")
        holder.execute("INSERT INTO label (node_id, key, value) VALUES (%s, 'k000', 'v') "
                       "ON CONFLICT DO NOTHING", [node_id])  # waits on the intent: the deadlock
        holder.rollback()
        runner.join(30)
    assert not runner.is_alive()
    assert not isinstance(result["r"], Exception), result
    assert db.execute("SELECT count(*) FROM label WHERE node_id = %s AND key LIKE 'k%%'",
                      [node_id]).fetchone()[0] == 100


def test_of_two_rows_with_one_key_in_an_intent_the_one_listed_first_is_kept(db) -> None:
    """Ordering the rows by their table's key kept whichever of two rows with the same key the
    sort left first (a label's origin, a node's hash or embedding from two batches): the one
    listed first is kept, as before the order was set."""
    doc = intent()
    doc["batches"] += [{"batch_id": "zz-job", "action": 0}, {"batch_id": "aa-job", "action": 0}]
    apply_write_intent(db, doc)
    node = doc["nodes"][0]["sha256"]
    labels = []
    for i in range(50):
        pair = [{"node": node, "key": f"t{i:02d}", "value": "v", "origin": o} for o in ("first", "second")]
        labels += pair if i % 2 else pair[::-1]
    results = [{"table": t, "node": node, "batch_id": b, "values": v(x)}
               for x, b in ((1, "zz-job"), (2, "aa-job"))
               for t, v in (("result_image_hash", lambda x: {"phash": x, "dhash": x, "phash_flip": x}),
                            ("result_image_embedding", lambda x: {"model": "m@1", "embedding": _embedding(x)}))]
    apply_write_intent(db, {"key": "ties", "labels": labels, "results": results})
    got = dict(db.execute("SELECT key, origin FROM label WHERE key LIKE 't%'").fetchall())
    assert got == {f"t{i:02d}": "first" if i % 2 else "second" for i in range(50)}
    assert db.execute("SELECT batch_id, phash FROM result_image_hash").fetchall() == [("zz-job", 1)]
    assert db.execute("SELECT batch_id FROM result_image_embedding").fetchall() == [("zz-job",)]


def test_a_node_another_transaction_adds_meanwhile_gets_its_edges(db, servers) -> None:
    """A node the intent adds that another transaction adds first — uncommitted while the
    intent looks its sha256s up, committed while the intent's insert waits on its key — is the
    other transaction's row, and the intent's edge, content and membership go to that row's id:
    nothing is dropped, nothing names a node that is not there."""
    doc = intent()
    target = doc["nodes"][1]["sha256"]
    result = _apply_while_another_commits(db, servers, doc, [target])
    assert result["res"].counts["nodes_new"] == 3  # (four nodes: one was the other transaction's)
    node_id = db.execute("SELECT node_id FROM node WHERE sha256 = %s", [bytes.fromhex(target)]).fetchone()[0]
    assert db.execute("SELECT count(*) FROM edge WHERE child_id = %s", [node_id]).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM batch_member WHERE node_id = %s", [node_id]).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM physical_content WHERE node_id = %s", [node_id]).fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM edge").fetchone() == (3,)


def test_a_node_committed_while_the_intent_waited_is_known_to_its_checks(db, servers) -> None:
    """Another transaction adds X and Y; the intent adds X and Z and names Y only in an edge.
    Y is in the database once the intent's wait on X ends: the edge is written (the first
    NodeIds looked everything up before Y was committed — the check refused
    it; the old join-per-statement code saw it)."""
    x, y, z = sha("x"), sha("y"), sha("z")
    doc = {"key": "k", "relationships": [{"name": "crop_of"}],
           "nodes": [{"sha256": s, "physical": {"size": 1}} for s in (x, z)],
           "edges": [{"parent": y, "child": x, "relationship": "crop_of"}]}
    result = _apply_while_another_commits(db, servers, doc, [x, y])
    assert "err" not in result, result["err"]
    assert db.execute("SELECT count(*) FROM edge e JOIN node p ON p.node_id = e.parent_id "
                      "WHERE p.sha256 = %s", [bytes.fromhex(y)]).fetchone() == (1,)


def test_two_documents_of_one_download_time_the_last_listed_wins(db) -> None:
    """Two metadata rows for one node and source with the same download time (or none): the
    row listed last is the one kept, for every node — not whichever the sort left first."""
    files = [sha(f"tie-{i}") for i in range(200)]
    doc = {"key": "ties", "sources": ["ytdlp"],
           "nodes": [{"sha256": f, "physical": {"size": 1}} for f in files],
           "metadata": [{"node": f, "source": "ytdlp", "title": t, "download_time": T0.isoformat()}
                        for t in ("first", "last") for f in files]
                       + [{"node": f, "source": "ytdlp", "title": "undated"} for f in files[:50]]}
    apply_write_intent(db, doc)
    assert db.execute("SELECT title, count(*) FROM common_metadata GROUP BY title").fetchall() == [("last", 200)]
