"""The asset search (hoardfs.sql.browse.search, the GUI's /assets): words in the title, author, user
name and metadata values, each as a word or its start, all required — served by the GIN index
of migration 008 (no extension), safe for any text a person types, and carried by a dump and
restore. Real PostgreSQL, 30,000 rows."""

from __future__ import annotations

import subprocess
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoardfs.base.proc import which
from hoardfs.sql import browse
from hoardfs.sql.migrate import migrate
from tests.gui_fixtures import gui_home, sign_in, user  # noqa: F401 - fixtures
from tests.helpers import filled_schema, fresh_schema

pytestmark = pytest.mark.timeout(300)

N = 30_000


def _fill(conn: psycopg.Connection) -> None:
    """N physical nodes with metadata: every 1000th has 'Zebra crossing' in its title, every
    500th a Hasselblad camera in raw_metadata, authors author0..96, user names nickax..nickmx;
    every 10th a label class=dog, of which every 10th class=cat instead; a few `blurry`."""
    conn.execute("INSERT INTO source (name) VALUES ('gallery')")
    conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) "
                 "SELECT sha256(int8send(i)), false, true FROM generate_series(1, %s) i", [N])
    conn.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, 1000, 'png' FROM node")
    conn.execute("""
        INSERT INTO common_metadata (node_id, source_id, title, author, user_name, raw_metadata)
        SELECT node_id, 1, 'photo number ' || node_id || CASE WHEN node_id % 1000 = 7 THEN ' Zebra crossing' ELSE '' END,
               'author' || (node_id % 97), 'nick' || chr(97 + (node_id % 13)::int) || 'x',
               jsonb_build_object('tags', jsonb_build_array('tag' || (node_id % 50), 'misc'),
                                  'camera', CASE WHEN node_id % 500 = 3 THEN 'Hasselblad X2D' ELSE 'phone' END)
        FROM node""")
    conn.execute("""INSERT INTO label (node_id, key, value, origin)
        SELECT node_id, 'class', CASE WHEN node_id % 100 = 1 THEN 'cat' ELSE 'dog' END, 'human' FROM node
        WHERE node_id % 10 = 1""")
    conn.execute("INSERT INTO label (node_id, key) SELECT node_id, 'blurry' FROM node WHERE node_id % 3000 = 2")
    conn.execute("ANALYZE")


@pytest.fixture(scope="module")
def filled(servers):
    """One schema with N rows for the whole module (filling it takes seconds)."""
    with filled_schema(servers["database_url"], _fill) as conn:
        yield conn


def _ids(conn: psycopg.Connection, text: str, **kw) -> set[int]:
    return {r["node_id"] for r in browse.search(conn, text=text, limit=10_000, **kw)}


def test_the_index_serves_a_search(filled) -> None:
    """EXPLAIN of the statement /assets runs: a selective search reads the GIN index
    common_metadata_search — for one word, a word's start, several words, a metadata value —
    and common_metadata is never scanned whole. No planner setting is changed: at 30,000 rows
    the planner picks the index on its own (a word most rows hold is read in node order with
    the LIMIT instead, also without a scan)."""
    for text in ("zebra", "zeb", "crossing zebra", "hasselblad", "x2d"):
        sql, params = browse.search_statement(filled, text=text)
        plan = "\n".join(r[0] for r in filled.execute("EXPLAIN " + sql, params))
        assert "Bitmap Index Scan on common_metadata_search" in plan, (text, plan)
        assert "Seq Scan on common_metadata" not in plan, (text, plan)
    sql, params = browse.search_statement(filled, text="photo")
    plan = "\n".join(r[0] for r in filled.execute("EXPLAIN " + sql, params))
    assert "Seq Scan on common_metadata" not in plan, plan


def test_search_finds_words_prefixes_and_metadata_values(filled) -> None:
    """Prefixes, several words (all required), any case, the author, user name and the string
    values of raw_metadata — and not its keys."""
    zebras = {i for i in range(1, N + 1) if i % 1000 == 7}
    cameras = {i for i in range(1, N + 1) if i % 500 == 3}
    assert _ids(filled, "zebra") == zebras
    assert _ids(filled, "ZEB") == zebras  # the start of a word, any case
    assert _ids(filled, "zebra crossing") == zebras
    assert _ids(filled, "zebra nothere") == set()  # every word must be there
    assert _ids(filled, "hasselblad") == cameras  # a value in raw_metadata
    assert _ids(filled, "Hasselblad X2D") == cameras
    assert _ids(filled, "camera") == set()  # a key is not a value
    assert _ids(filled, "author42 NICKC") == {i for i in range(1, N + 1) if i % 97 == 42 and i % 13 == 2}
    # a word is cut where the documents' parser cuts it: user_3 is the words "user" and "3"
    assert _ids(filled, "zebra 200") == {i for i in range(1, N + 1) if i % 1000 == 7 and str(i).startswith("200")}
    # a word under three characters is looked for whole, not as the start of others
    assert _ids(filled, "zebra 2") == set() and _ids(filled, "photo 2") == {2}
    assert _ids(filled, "tag49 misc") == {i for i in range(1, N + 1) if i % 50 == 49}
    assert _ids(filled, "photo 12345") == {12345}  # numbers are words; "12345" starts no other here
    assert len(browse.search(filled, text="photo")) == 48  # a page (the default limit), newest first
    assert [r["node_id"] for r in browse.search(filled, text="zebra", limit=2)] == [29007, 28007]


def test_search_by_label(filled) -> None:
    """A label as `key` (any value) or `key=value`, alone or with words; a label with no key is
    refused in one line; what a person types is a parameter, never SQL."""
    def ids(label: str, text: str | None = None) -> set[int]:
        return {r["node_id"] for r in browse.search(filled, text=text, limit=10_000, label=label)}

    cats = {i for i in range(1, N + 1) if i % 100 == 1}
    assert ids("class=cat") == cats
    assert ids(" class = cat ") == cats  # blanks around key and value do not count
    assert ids("class") == {i for i in range(1, N + 1) if i % 10 == 1}
    assert ids("blurry") == {i for i in range(1, N + 1) if i % 3000 == 2}
    assert ids("blurry=") == ids("blurry")  # a label without a value has the empty value
    assert ids("class=cat", "photo 1201") == {1201}
    assert ids("class=Cat") == set() and ids("nothing") == set()  # labels match exactly
    assert ids("class=cat'; DROP TABLE label; --") == set()
    with pytest.raises(browse.BadSearch, match="names no key"):
        browse.search(filled, label="=cat")
    assert filled.execute("SELECT count(*) FROM label").fetchone()[0] > 0
    for label in ("class=cat", "blurry"):  # an index finds the labelled nodes, the label table is never read whole
        sql, params = browse.search_statement(filled, label=label)
        plan = "\n".join(r[0] for r in filled.execute("EXPLAIN " + sql, params))
        assert "Seq Scan on label" not in plan, plan


@pytest.mark.parametrize("text", ["'", "''", "&|!:*()", "\\", "\\\\'", "\x00", "\x00zebra", "zebra\x00crossing",
                                  ":*", "!zebra", "zebra:*B", "zebra & !crossing", "(zebra | photo)",
                                  "'; DROP TABLE node; --", "zebra' | 'photo", "<->", "\ud800zebra", "   "])
def test_hostile_text_gives_results_or_a_clear_refusal(filled, text: str) -> None:
    """Operators, quotes, backslashes, NUL, a lone surrogate: searched as the words they hold
    (operators are not obeyed), or refused with one clear line — never a database error."""
    try:
        rows = browse.search(filled, text=text, limit=10_000)
    except browse.BadSearch as e:
        assert "nothing to search for" in e.message
        return
    got = {r["node_id"] for r in rows}
    if "zebra" in text:  # "zebra & !crossing" is not obeyed as NOT: its words are zebra and crossing
        assert got <= {i for i in range(1, N + 1) if i % 1000 == 7}
    assert filled.execute("SELECT count(*) FROM node").fetchone()[0] == N


def test_long_or_wordy_text_is_refused_clearly(filled) -> None:
    with pytest.raises(browse.BadSearch, match=r"10,000 characters long; at most 500"):
        browse.search(filled, text="zebra " * 1666 + "zebr")
    with pytest.raises(browse.BadSearch, match=r"20 different words; at most 16"):
        browse.search(filled, text=" ".join(f"w{i}" for i in range(20)))


@pytest.mark.parametrize("field", ["text", "label"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(typed=st.text(max_size=80))
def test_anything_typed_is_safe(filled, field: str, typed: str) -> None:
    """Whatever is typed as search words or as a label: a list of rows or BadSearch, never
    another error."""
    try:
        browse.search(filled, limit=5, **{field: typed})
    except browse.BadSearch:
        pass


def test_a_role_without_create_extension_migrates_and_searches(servers) -> None:
    """Migration 008 needs nothing beyond CREATE on the schema: a role that may not create an
    extension migrates from empty and searches."""
    role = f"hoard_noext_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers["database_url"], autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        available = admin.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_trgm'").fetchone()[0]
    try:
        with fresh_schema(servers["database_url"]) as conn:
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            conn.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")
            conn.execute(f"SET ROLE {role}")
            if available:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("CREATE EXTENSION pg_trgm")
            migrate(conn)
            conn.execute("INSERT INTO source (name) VALUES ('s')")
            conn.execute("INSERT INTO node (sha256, is_virtual, is_physical) VALUES (%s, false, true)", [b"\x01" * 32])
            conn.execute("INSERT INTO physical_content (node_id, size) SELECT node_id, 1 FROM node")
            conn.execute("INSERT INTO common_metadata (node_id, source_id, title) SELECT node_id, 1, 'Ünïcode café' "
                         "FROM node")
            assert [r["title"] for r in browse.search(conn, text="CAF")] == ["Ünïcode café"]
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'").fetchone()[0] == 0
            conn.execute("RESET ROLE")
    finally:
        with psycopg.connect(servers["database_url"], autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


def test_dump_and_restore_carry_the_search(filled, servers) -> None:
    """pg_dump -Fc of the schema restored (pg_restore --exit-on-error) into a scratch database:
    the function and index come back and the same search finds the same rows through the index."""
    schema = filled.execute("SELECT current_schema()").fetchone()[0]
    scratch = f"hoard_search_{uuid.uuid4().hex[:8]}_test"
    with psycopg.connect(servers["database_url"], autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch}")
    try:
        dump = subprocess.run([which("pg_dump", "postgresql-client"), "-Fc", f"--schema={schema}",
                               f"--dbname={servers['database_url']}"], capture_output=True, check=True).stdout
        target = psycopg.conninfo.make_conninfo(servers["database_url"], dbname=scratch)
        subprocess.run([which("pg_restore", "postgresql-client"), "--exit-on-error", "--no-owner",
                        f"--dbname={target}"], input=dump, capture_output=True, check=True)
        with psycopg.connect(target, options=f"-c search_path={schema}", autocommit=True) as restored:
            restored.execute("ANALYZE")
            assert _ids(restored, "zebra crossing") == _ids(filled, "zebra crossing") != set()
            sql, params = browse.search_statement(restored, text="hasselblad")
            plan = "\n".join(r[0] for r in restored.execute("EXPLAIN " + sql, params))
            assert "common_metadata_search" in plan, plan
    finally:
        with psycopg.connect(servers["database_url"], autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {scratch}")


async def test_assets_page_says_why_it_cannot_search(user) -> None:
    """/assets with a text of operators only, or a NUL: one line saying why, not an error page
    or an unfiltered listing."""
    await sign_in(user, "vera")
    for query, says in (("q=%26%7C%21%3A%2A%28%29", "nothing to search for in '&|!:*()'"),
                        ("q=%00%27", "nothing to search for"), ("q=zebra", "nothing matches"),
                        ("label=%3Dcat", "names no key"), ("label=class%3D%00cat", "holds a character no label can"),
                        ("source=forum%00", "holds a character no source can"),
                        ("batch=%00", "holds a character no batch can"),
                        ("label=class%3Dcat", "nothing matches")):
        await user.open(f"/assets?{query}")
        await user.should_see(says)


def _rows_read(plan: dict, relation: str) -> int:
    here = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) if plan.get("Relation Name") == relation else 0
    return here + sum(_rows_read(p, relation) for p in plan.get("Plans", []))


def test_a_short_prefix_reads_about_a_page(filled) -> None:
    """A search of one digit, as a person starts typing a number, reads about a page of
    common_metadata rows for the page it shows, not every row holding a number starting so
    (as a prefix, '1' read 11,111 rows: the planner estimates a prefix of many distinct rare
    words at a few rows)."""
    sql, params = browse.search_statement(filled, text="1")
    [[plan]] = filled.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
    assert _rows_read(plan["Plan"], "common_metadata") <= 10 * 48, _rows_read(plan["Plan"], "common_metadata")


def test_a_search_that_runs_too_long_is_refused(filled, monkeypatch) -> None:
    """A search still running at SEARCH_TIMEOUT_MS is cancelled by PostgreSQL and refused in one
    line, and the connection is usable after."""
    monkeypatch.setattr(browse, "SEARCH_TIMEOUT_MS", 1)
    with pytest.raises(browse.BadSearch, match=r"did not finish in 0.001 s: .* add a word"):
        browse.search(filled, text="photo", limit=30_000)
    monkeypatch.setattr(browse, "SEARCH_TIMEOUT_MS", 2000)
    assert len(browse.search(filled, text="zebra")) == 30


def _own_connection(filled, servers, **kw) -> psycopg.Connection:
    """A second connection to the module's schema (not autocommit unless asked, as the GUI's)."""
    schema = filled.execute("SELECT current_schema()").fetchone()[0]
    return psycopg.connect(servers["database_url"], options=f"-c search_path={schema}", **kw)


def test_a_search_leaves_the_callers_transaction_its_timeout(filled, servers) -> None:
    """On a connection that is not autocommit a search runs inside the caller's transaction (the
    words are cut by a statement that opens it), so its SET LOCAL lasted past the search: the
    caller's next statements were cancelled after 2 s. The caller's setting is back after a
    search, with words or without."""
    with _own_connection(filled, servers) as conn:
        conn.execute("SET statement_timeout = '7min'")
        for kw in ({"text": "zebra"}, {"label": "class=cat"}):
            browse.search(conn, **kw)
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7min", kw
            conn.commit()
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "7min", kw


def test_a_search_cancelled_for_another_reason_is_not_called_too_broad(filled, servers) -> None:
    """A search cancelled before its time was up (pg_cancel_backend by an administrator, a
    shutdown) is a database error, not 'the search did not finish in 2 s … add a word'."""
    import threading
    import time

    with _own_connection(filled, servers, autocommit=True) as locker, \
            _own_connection(filled, servers, autocommit=True) as conn:
        got: list[BaseException] = []

        def search() -> None:
            try:
                browse.search(conn, text="zebra")
            except BaseException as e:  # handed to the test
                got.append(e)

        with locker.transaction():
            locker.execute("LOCK TABLE physical_content IN ACCESS EXCLUSIVE MODE")
            t = threading.Thread(target=search)
            t.start()
            pid = conn.info.backend_pid
            deadline = time.monotonic() + 10
            while not locker.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                     [pid]).fetchone()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            locker.execute("SELECT pg_cancel_backend(%s)", [pid])
            t.join(10)
        assert len(got) == 1 and isinstance(got[0], psycopg.errors.QueryCanceled), got
        assert len(browse.search(conn, text="zebra")) == 30  # and the connection is usable


@pytest.mark.parametrize("field", ["source", "batch", "file_kind"])
@pytest.mark.parametrize("value", ["\x00", "forum\x00", "\ud800"])
def test_a_nul_or_surrogate_in_source_batch_or_kind_is_refused_in_one_line(filled, field: str, value: str) -> None:
    """/assets?source=%00… (or batch=, kind=): one clear line (BadSearch), not 'the database
    does not answer' (psycopg refuses a NUL in a parameter) nor a traceback."""
    with pytest.raises(browse.BadSearch) as e:
        browse.search(filled, **{field: value}, limit=5)
    assert f"holds a character no {field.removeprefix('file_')} can" in e.value.message


@pytest.mark.parametrize("label", ["\x00", "class=\x00cat", "cl\x00ass", "\ud800", "class=\ud800", "=", "==", "a==b",
                                   "k" * 20_000, "class=" + "v" * 20_000, "ключ=значение", "class=cat\n", "\t=\t"])
def test_hostile_labels_give_results_or_a_clear_refusal(filled, label: str) -> None:
    """A label typed or pasted into /assets (a NUL from the URL, a lone surrogate, '==', a huge
    one): rows or one clear line (BadSearch) — not 'the database does not answer' (a NUL made
    psycopg refuse the parameter) nor a traceback (UnicodeEncodeError for a surrogate)."""
    try:
        rows = browse.search(filled, label=label, limit=5)
    except browse.BadSearch as e:
        assert "label" in e.message
        return
    assert isinstance(rows, list)


def _blocks(plan: dict, index: str) -> int:
    here = (plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            if plan.get("Index Name") == index else 0)
    return here + sum(_blocks(p, index) for p in plan.get("Plans", []))


def test_a_label_held_by_old_nodes_reads_about_a_page(pg) -> None:
    """A label only the oldest nodes have (a tagger's first run, one early batch) is found by
    reading about a page of the label index, not the index entries of every newer node (the
    planner walked label_pkey backwards: 998,000 entries at 1,000,000 labels; migration 009
    gives a key's nodes in node order)."""
    migrate(pg)
    n = 50_000
    pg.execute("INSERT INTO node (sha256, is_virtual, is_physical) "
               "SELECT sha256(int8send(i)), false, true FROM generate_series(1, %s) i", [n])
    pg.execute("INSERT INTO physical_content (node_id, size, file_type) SELECT node_id, 1000, 'png' FROM node")
    pg.execute("INSERT INTO label (node_id, key, value) SELECT node_id, 'k' || k, (node_id % 10)::text "
               "FROM node, generate_series(1, 2) k")
    pg.execute("INSERT INTO label (node_id, key) SELECT node_id, 'early' FROM node WHERE node_id <= %s", [n // 100])
    pg.execute("ANALYZE")
    sql, params = browse.search_statement(pg, label="early")
    [[plan]] = pg.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()
    assert len(browse.search(pg, label="early", limit=10_000)) == n // 100
    assert _blocks(plan["Plan"], "label_node_key_value") <= 50, _blocks(plan["Plan"], "label_node_key_value")
