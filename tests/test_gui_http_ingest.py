"""HTTP ingest (hoardfs.gui.api, hoardfs.jobs.ingest.upload, hoardfs.jobs.tokens): a real `hoard gui` process on the
test PostgreSQL and Redis, driven by real HTTP clients — httpx, and a raw socket where a
client must stop half-way (a dropped connection, a body the server refuses to read)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.gui_browser import child_env
from tests.gui_fixtures import PASSWORDS, gui_process
from tests.http_ingest import Server, answer, connect, files_of, gallery, multipart, prepare, raw_request, server, until  # noqa: F401 - fixtures


def test_tokens_are_printed_once_and_kept_as_hashes(server: Server) -> None:
    """`hoard tokens add` prints the token once and keeps only its sha256 (0600); `list --json`
    names it without it; `rm` revokes it: its next upload is 401."""
    add = server.hoard("tokens", "add", "second")
    assert add.returncode == 0, add.stderr
    token = add.stdout.strip()
    assert token.startswith("hoard_") and len(token) > 40 and "shown this once" in add.stderr
    path = Path(server.cfg_path).parent / "ssd" / "state" / "gui" / "tokens.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text() and server.token not in path.read_text()
    assert json.loads(path.read_text())["second"]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    listed = json.loads(server.hoard("tokens", "list", "--json").stdout)
    assert {r["name"] for r in listed} == {"scraper", "second"} and token not in json.dumps(listed)
    again = server.hoard("tokens", "add", "second")
    assert again.returncode == 2 and "exists" in again.stderr
    ok = httpx.get(f"{server.url}/api/v1/batches/nothing-here", headers=server.auth(token))
    assert ok.status_code == 404, ok.text
    assert server.hoard("tokens", "rm", "second").returncode == 0
    gone = httpx.get(f"{server.url}/api/v1/batches/nothing-here", headers=server.auth(token))
    assert gone.status_code == 401, gone.text


@pytest.mark.expect_log(r"cannot read the tokens file", level="WARNING")
def test_a_damaged_tokens_file_is_one_line_not_a_500(server: Server) -> None:
    """A tokens file that is not JSON: `hoard tokens list` names it and what removing it does
    (exit 5), and an upload is 503 saying where its operator sees why — nothing of the file's
    path or content goes to the client."""
    path = Path(server.cfg_path).parent / "ssd" / "state" / "gui" / "tokens.json"
    kept = path.read_bytes()
    try:
        path.write_text('{"scraper": ')
        res = server.hoard("tokens", "list")
        assert res.returncode == 5 and "Traceback" not in res.stderr
        assert f"{path}: cannot read the tokens file" in res.stderr and "revokes every token" in res.stderr
        r = httpx.get(f"{server.url}/api/v1/batches/x", headers=server.auth())
        assert r.status_code == 503 and "`hoard tokens list`" in r.json()["error"] and str(path) not in r.text
    finally:
        path.write_bytes(kept)
    assert httpx.get(f"{server.url}/api/v1/batches/x", headers=server.auth()).status_code == 404


def test_an_upload_is_ingested_and_its_status_is_hoard_ingest_status(server: Server, gallery: Path) -> None:
    """A gallery-dl batch POSTed with a token lands whole in 3A with its `_READY` (202, the
    batch id and its status URL), is ingested by the workers' job, and the status URL serves
    the document `hoard ingest --status BATCH --json` prints."""
    from hoardfs.base import config
    from hoardfs.jobs.ingest import work_here

    before = server.batches()
    r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), data={"source": "gallery"},
                   files=files_of(gallery), timeout=60)
    assert r.status_code == 202, r.text
    body = r.json()
    batch = body["batch"]
    assert body["status_url"] == f"{server.url}/api/v1/batches/{batch}" and body["source"] == "gallery"
    landed = server.zone3a / batch
    sent = {p.relative_to(gallery).as_posix(): p.read_bytes() for p in gallery.rglob("*") if p.is_file()}
    assert {p.relative_to(landed).as_posix(): p.read_bytes() for p in landed.rglob("*") if p.is_file()} == (
        sent | {"_READY": b"gallery\n"})
    assert server.batches() == before | {batch}  # nothing left in 3A/.tmp
    queued = httpx.get(body["status_url"], headers=server.auth()).json()
    assert queued["batch_id"] == batch and queued["status"] == "queued" and queued["step"] == "scan"

    work_here(config.load(server.cfg_path))
    doc = httpx.get(body["status_url"], headers=server.auth()).json()
    cli = server.hoard("ingest", "--status", batch, "--json")
    assert cli.returncode == 0, cli.stderr
    assert doc == json.loads(cli.stdout)
    assert doc["status"] == "done" and doc["report"]["stored_new"] + doc["report"].get("stored_existing", 0) > 0
    assert not landed.exists()  # taken out of 3A by the ingest


def test_a_missing_or_wrong_token_is_401(server: Server, gallery: Path) -> None:
    """No token, a wrong one, another scheme or a person's login (HTTP Basic) is 401 with
    `WWW-Authenticate: Bearer`, and nothing reaches 3A."""
    before = server.batches()
    for headers in ({}, server.auth("hoard_" + "x" * 43), server.auth(server.token + "x"),
                    {"Authorization": f"Token {server.token}"}):
        r = httpx.post(f"{server.url}/api/v1/batches", headers=headers, data={"source": "gallery"},
                       files=files_of(gallery))
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer") and "hoard tokens add" in r.json()["error"]
    basic = httpx.post(f"{server.url}/api/v1/batches", auth=("ada", PASSWORDS["ada"]), data={"source": "gallery"},
                       files=files_of(gallery))
    assert basic.status_code == 401, basic.text
    assert httpx.get(f"{server.url}/api/v1/batches/x", headers=server.auth("nope")).status_code == 401
    assert server.batches() == before


def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer(server: Server, gallery: Path) -> None:
    """The same upload sent again under its Idempotency-Key answers the first 202 (marked
    replayed) and makes no second batch; another key makes another batch."""
    key = str(uuid.uuid4())
    before = server.batches()
    first = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | {"Idempotency-Key": key},
                       data={"source": "gallery"}, files=files_of(gallery))
    assert first.status_code == 202, first.text
    again = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | {"Idempotency-Key": key},
                       data={"source": "gallery"}, files=files_of(gallery))
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert server.batches() == before | {first.json()["batch"]}
    other = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | {"Idempotency-Key": key + "2"},
                       data={"source": "gallery"}, files=files_of(gallery))
    assert other.status_code == 202 and other.json()["batch"] != first.json()["batch"]
    bad = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | {"Idempotency-Key": "a key"},
                     data={"source": "gallery"}, files=files_of(gallery))
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]


def test_a_retry_sent_while_the_first_upload_runs_waits_for_its_answer(server: Server) -> None:
    """A retry under the same key that arrives while the first upload is still being received
    (the client gave up waiting, the server did not) waits, then gets the first's answer: one batch."""
    import threading

    key = str(uuid.uuid4())
    before = server.batches()
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"a.png", os.urandom(300_000)),
                                ("files", b"a.png.json", b"{}")])
    sock = connect(server.url)
    raw_request(sock, server.url, server.auth() | headers | {"Content-Length": str(len(body)), "Idempotency-Key": key},
                 body[:100_000])
    until(lambda: any((server.zone3a / ".tmp").glob("upload-*/a.png")), "the first upload under way")
    retry: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: retry.append(httpx.post(
        f"{server.url}/api/v1/batches", headers=server.auth() | headers | {"Idempotency-Key": key}, content=body,
        timeout=60)))
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and not retry  # waiting for the first (its body is not all sent)
    sock.sendall(body[100_000:])
    status, first = answer(sock)
    sock.close()
    thread.join(60)
    assert status == 202 and retry[0].status_code == 202 and retry[0].json() == first
    assert retry[0].headers["idempotent-replayed"] == "true"
    assert server.batches() == before | {first["batch"]}


def test_a_full_3a_is_507_before_the_body_is_read(server: Server) -> None:
    """With 3A past its deny threshold an upload is answered 507 naming zone 3A and the next
    step as soon as its headers arrive: the client sent none of its body."""
    filler = server.zone3a / "_filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 47 << 20)  # allocated blocks: what `du`, and so the quota, counts
    finally:
        os.close(fd)
    before = server.batches()
    try:
        with connect(server.url) as sock:
            headers, body = multipart([("source", None, b"gallery"), ("files", b"a.png", b"x" * 4096)])
            raw_request(sock, server.url, server.auth() | headers | {"Content-Length": str(len(body))})
            status, doc = answer(sock)  # the body never sent
        assert status == 507, doc
        assert doc["zone"] == "3A" and "zone 3A" in doc["error"] and "free space in zone 3A" in doc["next_step"]
        assert server.batches() == before
    finally:
        filler.unlink()


def test_a_dropped_connection_leaves_nothing_half_ingested(server: Server) -> None:
    """A client that goes away mid-file leaves no batch in 3A, no temporary directory and no
    reservation: the bytes it sent are removed, and the next upload goes through."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import zones

    before = server.batches()
    headers, body = multipart([("source", None, b"gallery"), ("files", b"big.png", os.urandom(1 << 20))])
    sock = connect(server.url)
    raw_request(sock, server.url, server.auth() | headers | {"Content-Length": str(len(body))}, body[:600_000])
    tmp = server.zone3a / ".tmp"
    until(lambda: any(f.stat().st_size > 100_000 for f in tmp.glob("upload-*/big.png")), "the upload's file written")
    sock.close()
    until(lambda: server.batches() == before, "the dropped upload's temporary directory removed")
    # (the directory goes first, then the reservation that covered its bytes)
    until(lambda: zones.reservations(config.load(server.cfg_path), "3A") == [],
          "the dropped upload's reservation released")
    whole = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), data={"source": "sidecar"},
                       files=[("files", ("a.png", b"\x89PNG...")), ("files", ("a.png.json", b"{}"))])
    assert whole.status_code == 202, whole.text


def test_an_upload_cut_by_a_killed_server_is_removed_at_its_next_start(hoard_home: Path, pg, redis_conn) -> None:
    """`hoard gui` killed (SIGKILL) mid-upload leaves its temporary directory and reservation in
    3A, which `hoard health` names with the step that removes them — the next start, which does;
    no batch ever appeared."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import zones
    from tests.gui_browser import serving

    with gui_process(hoard_home, pg, prepare) as (_, cfg_path):
        pass  # (the home, its config and database made once)
    server = Server("", cfg_path, subprocess.run(
        [sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "tokens", "add", "scraper"],
        capture_output=True, text=True, env=child_env()).stdout.strip())
    cfg = config.load(cfg_path)
    headers, body = multipart([("source", None, b"gallery"), ("files", b"big.png", os.urandom(1 << 20))])
    started: list[subprocess.Popen] = []
    with serving(cfg_path, hoard_home / "gui-1.log", cfg.gui.port, started=started) as url:
        sock = connect(url)
        raw_request(sock, url, server.auth() | headers | {"Content-Length": str(len(body))}, body[:600_000])
        until(lambda: any(f.stat().st_size > 100_000 for f in (server.zone3a / ".tmp").glob("upload-*/big.png")),
               "the upload's file written")
        started[0].kill()
        started[0].wait()
        sock.close()
    left = [p.name for p in (server.zone3a / ".tmp").iterdir()]
    assert len(left) == 1 and [r.id for r in zones.reservations(cfg, "3A")] == left
    health = json.loads(server.hoard("health", "--json").stdout)
    said = [p for p in health["problems"] if left[0] in p]
    assert len(said) == 1 and "start `hoard gui` again" in said[0] and "zones clean" not in said[0], said
    with serving(cfg_path, hoard_home / "gui-2.log", cfg.gui.port):
        until(lambda: not any((server.zone3a / ".tmp").iterdir()), "the killed upload's directory removed")
        assert zones.reservations(cfg, "3A") == [] and server.batches() == set()


@pytest.mark.parametrize(("name", "why"), [
    (b"../escape.png", "climbs out"), (b"/etc/cron.d/x", "an absolute path"), (b"a\x00b.png", "NUL"),
    (b"x" * 300 + b".png", "at most 255"), (b"d/" * 600 + b"f", "at most 1000"), (b"_READY", "hoardfs writes"),
    (b"a/./b.png", "not normalised"), (b"\xff\xfe.png", "not valid UTF-8"), (b"ev\xe2\x80\xaeil.png", "bidirectional"),
])
def test_a_hostile_file_name_is_400_naming_its_part(server: Server, name: bytes, why: str) -> None:
    """A file name that climbs out, is absolute, holds a NUL, a control or an override, is too
    long or is the batch's own signal is refused with 400 naming the part; nothing is kept."""
    before = server.batches()
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"ok.png", b"fine"),
                                ("files", name, b"payload")])
    r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["part"] == 3 and r.json()["error"].startswith("part 3: file name") and why in r.json()["error"]
    assert server.batches() == before


def test_a_manifest_signals_a_batch_copied_into_3a(server: Server, gallery: Path) -> None:
    """A scraper that copied its files into 3A/<batch> itself sends a manifest of them: the
    batch is signalled and queued only when the directory holds exactly those files, of those
    sizes and digests — a missing, short, changed or extra file is refused by name, no _READY."""

    root = server.zone3a / "copied-1"
    shutil.copytree(gallery, root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    listed = [{"path": f, "size": (root / f).stat().st_size, "sha256": hashlib.sha256((root / f).read_bytes()).hexdigest()}
              for f in files]

    def send(entries: list[dict]) -> httpx.Response:
        return httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), data={"source": "gallery",
                          "batch": "copied-1"}, files=[("manifest", ("manifest.json", json.dumps({"files": entries})))])

    last = root / files[-1]
    whole = last.read_bytes()
    last.unlink()
    r = send(listed)
    assert r.status_code == 409 and "no such file" in r.json()["error"] and files[-1] in r.json()["error"], r.text
    last.write_bytes(whole[:-1])
    r = send(listed)
    assert r.status_code == 409 and f"{len(whole) - 1} bytes in 3A, {len(whole)} in the manifest" in r.json()["error"]
    last.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
    r = send(listed)
    assert r.status_code == 409 and "sha256" in r.json()["error"], r.text
    last.write_bytes(whole)
    (root / ".partial.rsync-tmp").write_bytes(b"x")
    r = send(listed)
    assert r.status_code == 409 and "does not list (.partial.rsync-tmp)" in r.json()["error"], r.text
    assert not (root / "_READY").exists()
    (root / ".partial.rsync-tmp").unlink()
    r = send([{"path": "../x", "size": 1}])
    assert r.status_code == 400 and "manifest entry 1" in r.json()["error"] and "climbs out" in r.json()["error"]
    r = send(listed)
    assert r.status_code == 202, r.text
    assert r.json()["batch"] == "copied-1" and r.json()["files"] == len(files)
    assert (root / "_READY").read_text() == "gallery\n"
    assert httpx.get(r.json()["status_url"], headers=server.auth()).json()["status"] == "queued"
    again = send(listed)
    assert again.status_code == 409 and "signalled or ingested already" in again.json()["error"]


def test_bad_forms_are_refused_by_name(server: Server) -> None:
    """An unknown source (with the names that exist), no source, an unknown field, a used
    batch id, a part without a file name, a body that is not multipart and an empty one each
    get one line."""
    before = server.batches()
    cases = [
        ([("source", None, b"galery"), ("files", b"a.png", b"x")], 400, "did you mean gallery"),
        ([("files", b"a.png", b"x")], 400, "no `source` field"),
        ([("source", None, b"sidecar"), ("color", None, b"red")], 400, "unknown field 'color'"),
        ([("source", None, b"sidecar"), ("files", None, b"x")], 400, "needs its file name"),
        ([("source", None, b"sidecar"), ("files", b"a.png", b"x"), ("files", b"a.png", b"y")], 400, "comes twice"),
        ([("source", None, b"sidecar"), ("files", b"d", b"x"), ("files", b"d/a.png", b"y")], 400, "both a file and"),
        ([("source", None, b"sidecar"), ("files", b"d/a.png", b"x"), ("files", b"d", b"y")], 400, "both a file and"),
        ([("source", None, b"sidecar")], 400, "holds no file"),
        ([("source", None, b"sidecar"), ("batch", None, b"../up"), ("files", b"a.png", b"x")], 400, "not a batch id"),
    ]
    for parts, status, words in cases:
        headers, body = multipart(parts)
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
        assert r.status_code == status and words in r.json()["error"], (parts, r.text)
    headers, body = multipart([("source", None, b"sidecar"), ("batch", None, b"mine-1"), ("files", b"a.png", b"x")])
    assert httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body).status_code == 202
    used = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
    assert used.status_code == 409 and "mine-1 exists already" in used.json()["error"]
    plain = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), json={"source": "sidecar"})
    assert plain.status_code == 415
    empty = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=b"")
    assert empty.status_code == 400 and "the body is empty" in empty.json()["error"]
    assert server.batches() == before | {"mine-1"}


def test_oversize_uploads_are_413(server: Server) -> None:
    """An upload whose Content-Length passes api.max_batch_mb is 413 before its body is read;
    a file past api.max_file_mb is 413 naming its part; neither leaves anything in 3A."""
    before = server.batches()
    with connect(server.url) as sock:
        headers, _ = multipart([])
        raw_request(sock, server.url, server.auth() | headers | {"Content-Length": str(9 << 20)})
        status, doc = answer(sock)
    assert status == 413 and "api.max_batch_mb = 8" in doc["error"]
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"small.png", b"x"),
                                ("files", b"huge.png", b"x" * ((2 << 20) + 1))])
    r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body, timeout=60)
    assert r.status_code == 413 and r.json()["part"] == 3 and "api.max_file_mb = 2" in r.json()["error"], r.text
    assert server.batches() == before


def test_the_openapi_schema_describes_the_routes(server: Server) -> None:
    """/api/v1/openapi.json is FastAPI's schema of the ingest routes, the multipart form included."""
    doc = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert set(doc["paths"]) == {"/api/v1/batches", "/api/v1/batches/{batch_id}"}
    form = doc["paths"]["/api/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["source"] and {"files", "manifest", "batch"} <= set(form["properties"])
    post = doc["paths"]["/api/v1/batches"]["post"]
    assert {"408", "422", "507"} <= set(post["responses"])
    assert "another request" in post["responses"]["422"]["description"]
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"] and "422" in post["parameters"][0]["description"]


def test_a_manifest_nested_too_deep_is_400_not_a_500(server: Server) -> None:
    """A manifest of JSON nested deeper than the parser goes (a hostile client's `[[[[…`) is
    one line naming the manifest, not a 500; nothing is signalled."""
    root = server.zone3a / "deep-1"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    try:
        headers, body = multipart([("source", None, b"sidecar"), ("batch", None, b"deep-1"),
                                    ("manifest", b"manifest.json", b"[" * 200_000)])
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body, timeout=60)
        assert r.status_code == 400, r.text
        assert "the manifest is not JSON" in r.json()["error"] and "Traceback" not in r.text
        assert not (root / "_READY").exists()
    finally:
        shutil.rmtree(root)


def test_a_manifest_never_reads_through_a_linked_directory(server: Server, tmp_path: Path) -> None:
    """A directory of 3A/<batch> that is a symbolic link to elsewhere on the server (a scraper
    writes 3A itself: rsync copies links) is never followed by the manifest's checks, whatever
    the order of its entries: the answer tells nothing of the file behind it (its size, its
    sha256) and nothing is signalled."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"the server's own file, outside 3A\n")
    root = server.zone3a / "linked-1"
    root.mkdir()
    (root / "sub").symlink_to(secret.parent)
    try:
        entries = [{"path": "sub/secret.txt", "size": 1, "sha256": "0" * 64}, {"path": "sub", "size": 0}]
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), data={"source": "sidecar",
                       "batch": "linked-1"}, files=[("manifest", ("manifest.json", json.dumps({"files": entries})))])
        assert r.status_code == 400 and "symbolic link" in r.json()["error"], r.text
        assert hashlib.sha256(secret.read_bytes()).hexdigest() not in r.text
        assert str(secret.stat().st_size) not in r.text
        assert not (root / "_READY").exists()
    finally:
        shutil.rmtree(root)


def test_a_manifest_listing_a_fifo_is_refused_not_waited_on(server: Server) -> None:
    """A fifo in 3A/<batch> (rsync --specials copies one) listed by the manifest is refused as
    not a regular file: the check never waits for a writer that never comes (a worker thread
    of the GUI held for ever, per request)."""
    import contextlib

    root = server.zone3a / "fifo-1"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    try:
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), timeout=30,
                       data={"source": "sidecar", "batch": "fifo-1"},
                       files=[("manifest", ("manifest.json", json.dumps({"files": [{"path": "pipe.png", "size": 0}]})))])
        assert r.status_code == 400 and "not a regular file" in r.json()["error"], r.text
        assert not (root / "_READY").exists()
    finally:
        with contextlib.suppress(OSError):  # (the old code's reader, still waiting: let it go)
            os.close(os.open(root / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        shutil.rmtree(root)


def test_a_batch_id_naming_another_batchs_work_file_is_refused(server: Server) -> None:
    """`<batch>.records` and `<batch>.stored` name the ingest's work files of <batch>
    (state/ingest/<batch>.<work>.json, beside its <batch>.json): a batch sent under such an id
    would have its state written over the other batch's work (and removed when that batch
    ends); it is refused, and asking the status of such a name is 404, not a 500."""
    from hoardfs.base import config
    from hoardfs.jobs.ingest.state import state_dir

    before = server.batches()
    for work in ("records", "stored"):
        headers, body = multipart([("source", None, b"sidecar"), ("batch", None, f"victim-1.{work}".encode()),
                                    ("files", b"a.png", b"x")])
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
        assert r.status_code == 400 and f"victim-1.{work}" in r.json()["error"], r.text
    assert server.batches() == before
    copied = server.zone3a / "victim-1.records"  # (copied into 3A by the scraper itself)
    copied.mkdir()
    (copied / "a.png").write_bytes(b"x")
    try:
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth(), data={"source": "sidecar",
                       "batch": "victim-1.records"}, files=[("manifest", ("manifest.json", json.dumps(
                           {"files": [{"path": "a.png", "size": 1}]})))])
        assert r.status_code == 400 and "work file" in r.json()["error"], r.text
        assert not (copied / "_READY").exists()
        res = server.hoard("ingest", str(copied), "--source", "sidecar")
        assert res.returncode != 0 and "work file" in res.stderr and "Traceback" not in res.stderr, res.stderr
    finally:
        shutil.rmtree(copied)
    stored = state_dir(config.load(server.cfg_path)) / "victim-2.stored.json"
    stored.write_text("{}")  # (as the ingest leaves it between its steps: an empty stored map)
    try:
        r = httpx.get(f"{server.url}/api/v1/batches/victim-2.stored", headers=server.auth())
        assert r.status_code == 404, r.text
    finally:
        stored.unlink()


@pytest.mark.expect_log(r"cannot be read", level="WARNING")
def test_a_damaged_ingest_record_or_token_entry_is_one_line_not_a_500(server: Server) -> None:
    """An ingest record (state/ingest/<batch>.json) that is not JSON: its status is 503 saying
    where the operator sees why, and an upload under its id is 409 (the id is used). A tokens
    file entry whose hash is not text (a person's edit) matches no token and stops no other."""
    from hoardfs.base import config
    from hoardfs.jobs.ingest.state import state_dir

    record = state_dir(config.load(server.cfg_path)) / "dmg-1.json"
    record.write_text('{"batch_id": ')
    path = Path(server.cfg_path).parent / "ssd" / "state" / "gui" / "tokens.json"
    kept = path.read_bytes()
    try:
        r = httpx.get(f"{server.url}/api/v1/batches/dmg-1", headers=server.auth())
        assert r.status_code == 503 and "dmg-1" in r.json()["error"] and str(record) not in r.text, r.text
        headers, body = multipart([("source", None, b"sidecar"), ("batch", None, b"dmg-1"), ("files", b"a.png", b"x")])
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
        assert r.status_code == 409 and "dmg-1 exists already" in r.json()["error"], r.text
        path.write_text(json.dumps(json.loads(kept) | {"edited": {"sha256": 5}, "accented": {"sha256": "é" * 64}}))
        assert httpx.get(f"{server.url}/api/v1/batches/x", headers=server.auth()).status_code == 404
        assert httpx.get(f"{server.url}/api/v1/batches/x", headers=server.auth("hoard_" + "x" * 43)).status_code == 401
    finally:
        record.unlink()
        path.write_bytes(kept)
    assert "dmg-1" not in server.batches()


def test_many_small_files_cannot_fill_3a_past_its_quota(server: Server) -> None:
    """Each file takes at least a block of the SSD (what the quota counts), far more than its
    few bytes of the body: an upload of 2,600 one-byte files (a Content-Length of ~200 KB that
    3A has room for) would take ~10 MiB. Its reservation grows as its files take room, and the
    upload is 507 naming its part once 3A cannot take more; nothing of it is kept."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import zones

    cfg = config.load(server.cfg_path)
    filler = server.zone3a / "_filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, (40 << 20) - zones.du(server.zone3a))  # 3A at 40 of its 50 MiB (deny: 45)
    finally:
        os.close(fd)
    before = server.batches()
    try:
        headers, body = multipart([("source", None, b"sidecar")]
                                   + [("files", f"f{n:04}.png".encode(), b"x") for n in range(2600)])
        assert len(body) < 256 << 10
        r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body, timeout=300)
        assert r.status_code == 507 and "zone 3A" in r.json()["error"] and r.json()["part"] > 1500, r.text
        assert server.batches() == before and zones.reservations(cfg, "3A") == []
        assert zones.du(server.zone3a) <= cfg.ssd.thresholds.deny * zones.quota(cfg, "3A")
    finally:
        filler.unlink()


def test_a_batch_id_with_a_dot_is_counted_with_the_others(server: Server) -> None:
    """A batch id may hold `.` (`hoard ingest` itself proposes `<batch>.2` for a re-used id):
    a batch sent as `shots.v2` is in the ingest's counts (`hoard health`, the runs page) like
    any other, not taken for another batch's work file and left out."""
    from hoardfs.base import config
    from hoardfs.jobs.ingest.health import ingest_status

    cfg = config.load(server.cfg_path)
    queued = ingest_status(cfg)["batches"].get("queued", 0)
    headers, body = multipart([("source", None, b"sidecar"), ("batch", None, b"shots.v2"), ("files", b"a.png", b"x")])
    r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    assert ingest_status(cfg)["batches"].get("queued", 0) == queued + 1


@pytest.mark.expect_log(r"HTTP upload upload-\w+ of midway: its token was revoked while it was received", level="WARNING")
def test_a_token_revoked_mid_upload_gets_no_batch(server: Server) -> None:
    """`hoard tokens rm` while the token's upload is being received: the upload is 401 when its
    body ends — no batch in 3A, nothing queued, nothing left in 3A/.tmp, no reservation (the
    token was checked only before the body was read: the revoked scraper's batch was taken)."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import zones

    add = server.hoard("tokens", "add", "midway")
    assert add.returncode == 0, add.stderr
    token, before = add.stdout.strip(), server.batches()
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"a.png", os.urandom(300_000)),
                               ("files", b"a.png.json", b"{}")])
    sock = connect(server.url)
    raw_request(sock, server.url, server.auth(token) | headers | {"Content-Length": str(len(body))}, body[:200_000])
    until(lambda: any(f.stat().st_size > 100_000 for f in (server.zone3a / ".tmp").glob("upload-*/a.png")),
          "the upload's file written")
    assert server.hoard("tokens", "rm", "midway").returncode == 0
    sock.sendall(body[200_000:])
    status, doc = answer(sock)
    sock.close()
    assert status == 401 and "hoard tokens add" in doc["error"], (status, doc)
    assert server.batches() == before
    assert zones.reservations(config.load(server.cfg_path), "3A") == []
