"""Events and webhooks: facts recorded as `event` rows where they happen,
POSTed to the [[webhooks]] of hoard.toml with an HMAC-SHA256 signature, retried with
exponential backoff on the RQ queue `events`, every try logged in `webhook_delivery`.

The receivers are real HTTP servers on localhost (http.server in a thread) that check each
signature with their own HMAC (as README's receiver does), not with hoard's function; the
deliveries run in RQ workers guarded as `hoard worker` is (hoardfs.jobs.guard), with RQ's scheduler
running the retries; PostgreSQL and Redis are the test servers."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rq import SimpleWorker

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.base.errors import ConfigError
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.store import Store
from hoardfs.jobs import events
from hoardfs.jobs import ingest as ua1
from hoardfs.jobs.guard import SERIALIZER, GuardedWorker, HoardJob, refusal
from hoardfs.jobs.queues import QUEUES, fetch_job, rq_queue
from hoardfs.sql import events as sql_events
from tests.helpers import use_schema
from tests.test_ingest import ingest_home

SECRET = "s3cret-of-the-receiver-0123456789"


class Receiver:
    """A webhook receiver on 127.0.0.1: answers the n-th POST with `answers[n]` (the last one
    after that) and keeps every request with whether its signature is right (its own HMAC)."""

    def __init__(self, answers: list[tuple[int, str]], secret: str = SECRET) -> None:
        self.answers, self.secret = answers, secret
        self.got: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mac = "sha256=" + hmac.new(outer.secret.encode(), raw, hashlib.sha256).hexdigest()
                outer.got.append({"headers": dict(self.headers), "body": raw, "path": self.path,
                                  "signed": hmac.compare_digest(mac, self.headers.get("X-Hoard-Signature", ""))})
                status, text = outer.answers[min(len(outer.got), len(outer.answers)) - 1]
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/t0ken-in-the-path"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(answers: list[tuple[int, str]]) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


def with_webhooks(cfg_path: str | Path, *hooks: dict[str, Any]) -> config.Settings:
    """`cfg_path` with a [[webhooks]] table per hook, loaded."""
    with open(cfg_path, "a") as fh:
        for h in hooks:
            fh.write("\n[[webhooks]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in h.items()))
    return config.load(cfg_path)


def hook(url: str, **over: Any) -> dict[str, Any]:
    return {"url": url, "events": ["*"], "secret": SECRET, "tries": 5, "backoff_s": 0.2} | over


class _Worker(GuardedWorker, SimpleWorker):
    """An RQ worker that runs only what `hoard worker` would (hoardfs.jobs.guard)."""


def work(cfg: config.Settings, redis_conn, pg, queues: tuple[str, ...] = ("events",),
         rounds: int = 20) -> list[tuple[int, dt.timedelta | None]]:
    """Run the queues' jobs (RQ's scheduler enqueueing the retries that are due) until no
    delivery is pending; per round, each pending delivery's (tries made, the wait it was given)."""
    waits: dict[tuple[int, dt.timedelta | None], None] = {}  # (a round that ran nothing adds nothing)
    for _ in range(rounds):
        w = _Worker([rq_queue(q, redis_conn) for q in queues], connection=redis_conn, serializer=SERIALIZER,
                    job_class=HoardJob)
        w.config_path = cfg.source
        w.work(burst=True, with_scheduler=True, logging_level="WARNING")
        pending = pg.execute("SELECT attempts, next_attempt_at - last_attempt_at, next_attempt_at - now() "
                             "FROM webhook_delivery WHERE state = 'pending' ORDER BY next_attempt_at").fetchall()
        if not pending:
            return list(waits)
        waits.update({(n, wait): None for n, wait, _ in pending})
        # RQ's scheduler keeps whole seconds: a retry is enqueued within a second of its time
        time.sleep(max(0.0, max(p[2].total_seconds() for p in pending)) + 1.1)
    raise AssertionError(f"deliveries still pending after {rounds} rounds: {pending}")


def deliveries(pg) -> list[sql_events.Delivery]:
    return sql_events.deliveries(pg, 1000)


def home_with(hoard_home: Path, pg, *hooks: dict[str, Any]) -> config.Settings:
    cfg = with_webhooks(use_schema(hoard_home, pg), *hooks)
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    return cfg


# -- the delivery: signature, retries, failures ----------------------------------------------------

def test_fails_twice_then_delivered_on_the_third_try(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """A receiver that answers 500, 500, then 200: the delivery is retried after 0.2 s, then
    0.4 s (backoff_s doubled), and delivered at the third try; each try carries the same body,
    delivery id and a valid signature of that body under the secret, and its try number."""
    rx = receivers([(500, "busy"), (503, "still busy"), (200, "ok")])
    cfg = home_with(hoard_home, pg, hook(rx.url, name="ops"))
    eid = events.emit(cfg, "batch_ingested", "batch_ingested:b-1", "b-1", {"files": 3})
    assert eid is not None
    waits = work(cfg, redis_conn, pg)
    (d,) = deliveries(pg)
    assert (d.state, d.attempts, d.last_status, d.last_error) == ("delivered", 3, 200, None), d
    assert d.webhook == "ops" and d.delivered_at is not None and d.next_attempt_at is None
    assert waits == [(1, dt.timedelta(seconds=0.2)), (2, dt.timedelta(seconds=0.4))], waits
    assert len(rx.got) == 3 and all(g["signed"] for g in rx.got), rx.got
    assert len({g["body"] for g in rx.got}) == 1 and rx.got[0]["path"] == "/hooks/t0ken-in-the-path"
    assert [g["headers"]["X-Hoard-Attempt"] for g in rx.got] == ["1", "2", "3"]
    assert {g["headers"]["X-Hoard-Delivery"] for g in rx.got} == {str(d.delivery_id)}
    assert {g["headers"]["X-Hoard-Event"] for g in rx.got} == {"batch_ingested"}
    doc = json.loads(rx.got[0]["body"])
    assert (doc["id"], doc["event"], doc["subject"], doc["detail"]) == (eid, "batch_ingested", "b-1", {"files": 3})
    # the same fact again (a step re-run): no second event, no second delivery
    assert events.emit(cfg, "batch_ingested", "batch_ingested:b-1", "b-1", {"files": 3}) is None
    assert len(deliveries(pg)) == 1 and len(rx.got) == 3
    # `hoard webhooks test ops`: a signed ping, recorded nowhere
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "webhooks", "test", "ops"],
                         capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout) == (0, "ops: answered HTTP 200\n"), res.stdout + res.stderr
    assert rx.got[3]["signed"] and json.loads(rx.got[3]["body"])["event"] == "ping" and len(deliveries(pg)) == 1


@pytest.mark.expect_log(r"failed for good", "WARNING")
def test_always_500_is_marked_failed_after_its_tries_with_the_last_error(hoard_home: Path, pg, redis_conn,
                                                                          receivers) -> None:
    """A receiver that always answers 500: tried `tries` times (3), then failed, with the
    status and the first line of the last answer — markup and control characters in it kept as
    text, one line; `hoard webhooks deliveries` shows it in one line, never the secret or the
    URL's path."""
    rx = receivers([(500, "<b>boom</b>\n\x1b[31mstack line\x1b[0m")])
    cfg = home_with(hoard_home, pg, hook(rx.url, tries=3))
    events.emit(cfg, "run_failed", "run_failed:r-1:a", "r-1", {"error": "x"})
    work(cfg, redis_conn, pg)
    (d,) = deliveries(pg)
    assert (d.state, d.attempts, d.max_tries, d.last_status) == ("failed", 3, 3, 500), d
    assert d.last_error == "HTTP 500 Internal Server Error: <b>boom</b> \x1b[31mstack line\x1b[0m", d.last_error
    assert d.next_attempt_at is None and d.delivered_at is None and len(rx.got) == 3
    assert events.warnings(cfg) == [  # `hoard health` warns of it
        f"webhook {d.webhook}: 1 deliveries failed in the last 24 h; `hoard webhooks deliveries --state failed` says "
        f"why, `hoard webhooks test {d.webhook}` tries it now"]
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "webhooks", "deliveries"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"#{d.delivery_id}") and "failed" in line and "try 3/3, HTTP 500" in line, line
    assert SECRET not in res.stdout + res.stderr and "t0ken" not in res.stdout + res.stderr
    as_json = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "webhooks", "deliveries",
                              "--json", "--state", "failed"], capture_output=True, text=True, timeout=120)
    (row,) = json.loads(as_json.stdout)["deliveries"]
    assert row["state"] == "failed" and row["last_error"] == d.last_error and "t0ken" not in as_json.stdout


@pytest.mark.expect_log(r"failed for good", "WARNING")
def test_an_unreachable_url_is_one_clear_line(hoard_home: Path, pg, redis_conn) -> None:
    """Nothing listens at the URL: the delivery fails in one line naming the webhook and the
    connection's error (no traceback, no secret)."""
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        cfg = home_with(hoard_home, pg, hook(f"http://127.0.0.1:{port}/x", tries=1))
        events.emit(cfg, "disk_failed", "disk_failed:hdd9:1", "hdd9")
        work(cfg, redis_conn, pg)
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "webhooks", "test"],
                             capture_output=True, text=True, timeout=120)
    (d,) = deliveries(pg)
    assert (d.state, d.attempts, d.last_status, d.webhook) == ("failed", 1, None, f"http://127.0.0.1:{port}"), d
    assert d.last_error == "cannot connect: Connection refused", d.last_error
    # `hoard webhooks test`: a signed ping now, its failure one line naming the webhook (exit 3)
    assert res.returncode == 3 and res.stderr == (f"hoard: error: http://127.0.0.1:{port}: cannot connect: Connection "
                                                  "refused — fix the receiver or the url in hoard.toml\n"), res.stderr


@pytest.mark.expect_log(r"event batch_ingested of b-2 not recorded, dropped: .*(connect|socket)", "WARNING")
def test_a_database_down_drops_the_event_with_one_warning(hoard_home: Path, servers) -> None:
    """PostgreSQL unreachable: `emit` returns, having logged one warning — the step it
    reports goes on."""
    text = (hoard_home / "hoard.toml").read_text()
    (hoard_home / "hoard.toml").write_text(text.replace(
        "database_url = ", f"database_url = {'host=' + str(hoard_home / 'no-pg') + ' dbname=x'!r}\n#", 1))
    cfg = with_webhooks(hoard_home / "hoard.toml", hook("http://127.0.0.1:9/x"))
    assert events.emit(cfg, "batch_ingested", "batch_ingested:b-2", "b-2") is None


@pytest.mark.expect_log(r"not queued: Redis at .* does not answer", "WARNING")
def test_redis_down_keeps_deliveries_pending_until_requeued(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """Redis unreachable when the event is emitted: the event and its delivery are recorded
    pending (one warning); `hoard webhooks requeue` queues it once Redis answers, and it is
    delivered."""
    rx = receivers([(204, "")])
    cfg = home_with(hoard_home, pg, hook(rx.url))
    down = cfg.model_copy(update={"redis_url": f"unix://{hoard_home}/no-redis.sock?db=0"})
    assert events.emit(down, "dataset_built", "dataset_built:pets@1", "pets@1") is not None
    (d,) = deliveries(pg)
    assert (d.state, d.attempts) == ("pending", 0) and not rx.got
    assert sql_events.trouble(pg, dt.timedelta(days=1), dt.timedelta(0))["overdue"] == 1  # health warns past OVERDUE
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "webhooks", "requeue"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 overdue deliveries queued again" in res.stdout, res.stdout + res.stderr
    work(cfg, redis_conn, pg)
    (d,) = deliveries(pg)
    assert (d.state, d.attempts, d.last_status) == ("delivered", 1, 204) and len(rx.got) == 1


def test_only_the_events_a_webhook_asks_for_are_sent(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """Two webhooks, each with its own events: each event is delivered to those that ask for it."""
    a, b = receivers([(200, "")]), receivers([(200, "")])
    cfg = home_with(hoard_home, pg, hook(a.url, events=["run_finished"], name="a"),
                    hook(b.url, events=["run_failed", "run_finished"], name="b"))
    events.emit(cfg, "run_finished", "run_finished:r-9", "r-9")
    events.emit(cfg, "run_failed", "run_failed:r-8:x", "r-8")
    events.emit(cfg, "gate_waiting", "gate_waiting:r-7:x:y", "r-7")
    work(cfg, redis_conn, pg)
    assert sorted((d.webhook, d.event) for d in deliveries(pg)) == [("a", "run_finished"), ("b", "run_failed"),
                                                                    ("b", "run_finished")]
    assert [json.loads(g["body"])["event"] for g in a.got] == ["run_finished"]
    assert sorted(json.loads(g["body"])["event"] for g in b.got) == ["run_failed", "run_finished"]


def test_events_older_than_the_kept_days_are_pruned_with_their_deliveries(pg) -> None:
    """Recording an event deletes those older than KEEP (90 days) and their deliveries: the
    table does not grow for ever."""
    from hoardfs.sql.migrate import migrate

    migrate(pg)
    t = [sql_events.Target("w", "0" * 64, 3)]
    old = sql_events.record(pg, "run_finished", "old", "r-old", targets=t,
                            at=dt.datetime.now(dt.UTC) - sql_events.KEEP - dt.timedelta(hours=1))
    kept = sql_events.record(pg, "run_finished", "kept", "r-kept", targets=t,
                             at=dt.datetime.now(dt.UTC) - sql_events.KEEP + dt.timedelta(hours=1))
    assert old.event_id and kept.event_id and kept.pruned == 1  # the next recording pruned the old one
    new = sql_events.record(pg, "run_finished", "new", "r-new", targets=t)
    assert new.pruned == 0
    assert [e.key for e in sql_events.events(pg)] == ["new", "kept"]
    assert {d.event_id for d in sql_events.deliveries(pg)} == {kept.event_id, new.event_id}


# -- the configuration and the guard -------------------------------------------------------------

def test_webhook_configuration_is_checked_and_the_secret_never_echoed(tmp_path: Path) -> None:
    """A short secret, an unknown event name or a URL with a password is refused in one line
    naming the key; the refused secret is not in the line."""
    base = ("database_url = \"postgresql:///x\"\nredis_url = \"redis://localhost/0\"\n"
            "[[disks]]\nlabel = \"hdd1\"\npath = \"d1\"\n[[disks]]\nlabel = \"hdd2\"\npath = \"d2\"\n"
            "[ssd]\nroot = \"ssd\"\n"
            + "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D")))
    cases = {'url = "http://h/x"\nevents = ["*"]\nsecret = "short-Pa55"\n': ("webhooks.0.secret", "short-Pa55"),
             f'url = "http://h/x"\nevents = ["batch_done"]\nsecret = "{SECRET}"\n': ("webhooks.0.events", None),
             f'url = "http://u:pw@h/x"\nevents = ["*"]\nsecret = "{SECRET}"\n': ("webhooks.0.url", None),
             f'url = "http://h/x"\nevents = ["*"]\nsecret = "{SECRET}"\n[[webhooks]]\nurl = "http://h/x"\n'
             f'events = ["run_failed"]\nsecret = "{SECRET}"\n': ("webhooks[1]: the same url as webhooks[0]", None)}
    for body, (key, hidden) in cases.items():
        (tmp_path / "hoard.toml").write_text(base + "[[webhooks]]\n" + body)
        with pytest.raises(ConfigError) as e:
            config.load(tmp_path / "hoard.toml")
        assert key.replace(".0.", "[0].") in str(e.value) or key in str(e.value), str(e.value)
        if hidden:
            assert hidden not in str(e.value), str(e.value)
    (tmp_path / "hoard.toml").write_text(base + f'[[webhooks]]\nurl = "https://hooks.example/T0/B1/tok3n"\n'
                                                f'events = ["disk_failed"]\nsecret = "{SECRET}"\n')
    cfg = config.load(tmp_path / "hoard.toml")
    (w,) = cfg.webhooks
    assert w.display == "https://hooks.example" and SECRET not in repr(cfg) and SECRET not in repr(w)


def test_the_worker_guard_allows_the_delivery_job_and_only_it(hoard_home: Path, redis_conn) -> None:
    """hoardfs.jobs.guard lets `hoardfs.jobs.events.deliver` naming the worker's configuration through, and
    refuses it naming another file."""
    cfg = config.load(hoard_home / "hoard.toml")
    q = rq_queue("events", redis_conn)
    ok = q.enqueue("hoardfs.jobs.events.deliver", str(cfg.source), 1, 1)
    other = q.enqueue("hoardfs.jobs.events.deliver", str(hoard_home / "other.toml"), 1, 1)
    assert refusal(fetch_job(ok.id, redis_conn), cfg.source) == ""  # (as a worker reads it: JSON)
    assert "names configuration" in refusal(fetch_job(other.id, redis_conn), cfg.source)
    assert "events" in QUEUES


# -- where the facts happen ------------------------------------------------------------------------

def test_an_ingested_batch_is_announced_once(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """UA_1 end to end through RQ: the finish step records `batch_ingested` with the batch's
    figures, its webhook receives it signed; `hoard events --json` lists it."""
    rx = receivers([(200, "")])
    cfg = with_webhooks(ingest_home(hoard_home, pg).source, hook(rx.url, events=["batch_ingested"]))
    zone3a = cfg.ssd.zone_path("3A")
    (b,) = generate(zone3a, Spec(seed=41, batches=1, items_per_batch=4, large_max_mb=1, ready_signal=True))
    ua1.submit(cfg, zone3a / b.batch_id, None, redis_conn)
    work(cfg, redis_conn, pg, queues=QUEUES)
    st = ua1.load_state(cfg, b.batch_id)
    assert st.status == "done"
    (got,) = rx.got
    doc = json.loads(got["body"])
    assert got["signed"] and doc["event"] == "batch_ingested" and doc["subject"] == b.batch_id
    assert doc["detail"]["batch"] == b.batch_id and doc["detail"]["files_accepted"] == st.report["files_accepted"] > 0
    res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg.source), "events", "--json"],
                         capture_output=True, text=True, timeout=120)
    (ev,) = json.loads(res.stdout)["events"]
    assert (ev["name"], ev["subject"], ev["event_id"]) == ("batch_ingested", b.batch_id, doc["id"])


def test_a_failed_disk_is_relayed_once_from_the_index(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """A disk marked failed in the index (as the store does on EIO, in whatever process):
    every health collection relays it as one `disk_failed` event, delivered once."""
    from hoardfs.jobs.health import collect

    rx = receivers([(200, "")])
    cfg = home_with(hoard_home, pg, hook(rx.url, events=["disk_failed"]))
    for d in cfg.disks:
        d.path.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg, init=True) as store:
        store.set_disk_state("hdd2", DiskState.FAILED, "I/O error during read: test")
    collect(cfg)
    collect(cfg)
    work(cfg, redis_conn, pg)
    (ev,) = sql_events.events(pg)
    assert (ev.name, ev.subject, ev.detail["reason"]) == ("disk_failed", "hdd2", "I/O error during read: test")
    (got,) = rx.got
    assert got["signed"] and json.loads(got["body"])["subject"] == "hdd2"


def test_a_runs_gate_failure_and_finish_are_announced_once_each(hoard_home: Path, pg, redis_conn, receivers) -> None:
    """An AC3 run whose GPU gate is not ready (its hook says exit 1): `gate_waiting` once, however
    often the gate is polled; past gate.timeout_s the run fails: `run_failed` with the error line;
    resumed with the gate ready, it finishes: `run_finished`. Each is delivered once, signed."""
    from tests.test_action_gate import hooked
    from tests.test_action_runs import action_home, hoard

    rx = receivers([(200, "")])
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=141, items=3)
    d = hooked(cfg, batch, hoard_home, timeout=2, poll=5)
    cfg = with_webhooks(cfg.source, hook(rx.url, events=["gate_waiting", "run_failed", "run_finished"]))
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 3 and "failed at step gate" in res.stdout + res.stderr, res.stdout + res.stderr
    (d / "ready").touch()
    (rid,) = [p.stem for p in (cfg.ssd.root / "state" / "actions").glob("thumbs-v*.json") if p.stem.count(".") == 0]
    res = hoard(cfg.source, "action", "resume", rid, "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    work(cfg, redis_conn, pg)
    got = [json.loads(g["body"]) for g in rx.got]
    assert all(g["signed"] for g in rx.got)
    assert sorted(g["event"] for g in got) == ["gate_waiting", "run_failed", "run_finished"], got
    assert {g["subject"] for g in got} == {rid}
    failed = next(g for g in got if g["event"] == "run_failed")
    assert "not released within 2 s" in failed["detail"]["error"] and failed["detail"]["step"] == "gate", failed
    finished = next(g for g in got if g["event"] == "run_finished")
    assert finished["detail"]["action"] == "thumbs" and finished["detail"]["inputs"] == 3, finished
    assert {d.state for d in deliveries(pg)} == {"delivered"}


def test_a_built_dataset_version_is_announced_and_an_unchanged_one_is_not(hoard_home: Path, pg, redis_conn,
                                                                           receivers, tmp_path: Path) -> None:
    """`hoard dataset build --here`: version 1 is `dataset_built` (NAME@1, its counts); the same
    spec again over the same data builds nothing and announces nothing."""
    from tests.test_datasets import _build, _spec, labelled

    rx = receivers([(200, "")])
    cfg, _shas = labelled.__wrapped__(hoard_home, pg, redis_conn)
    cfg = with_webhooks(cfg.source, hook(rx.url, events=["dataset_built"]))
    spec = _spec(tmp_path)
    assert _build(cfg, spec)["version"] == 1
    assert _build(cfg, spec)["unchanged"]
    work(cfg, redis_conn, pg)
    (got,) = [json.loads(g["body"]) for g in rx.got]
    assert (got["event"], got["subject"], got["detail"]["version"]) == ("dataset_built", "pets@1", 1), got
    assert got["detail"]["files"] > 0 and got["detail"]["counts"], got


def test_a_maintenance_job_relays_a_failed_disk_at_its_end(hoard_home: Path, pg, redis_conn) -> None:
    """A disk failed in the index (the writer or the mount met EIO): the next maintenance job
    (here replicate) relays it as `disk_failed` when it ends, without waiting for a health
    collection; a second job relays nothing new."""
    from hoardfs.jobs import maintenance

    cfg = home_with(hoard_home, pg)
    for d in cfg.disks:
        d.path.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg, init=True) as store:
        store.set_disk_state("hdd3", DiskState.FAILED, "I/O error during write: test")
    maintenance.run("replicate", str(cfg.source))
    maintenance.run("replicate", str(cfg.source))
    assert [(e.name, e.subject) for e in sql_events.events(pg)] == [("disk_failed", "hdd3")]


@pytest.mark.parametrize("looked", [True, False], ids=["health-looked", "resumed-unseen"])
def test_a_run_whose_process_died_is_announced_once(hoard_home: Path, pg, redis_conn, receivers,
                                                    looked: bool) -> None:
    """A runner killed -9 in the middle of a step records no ending of its own: the next health
    collection announces `run_failed` (the step, the line health shows), once however often it
    looks, and not again when the run is resumed (the same attempt); resumed before any health
    collection looked, the resume announces it. The resumed run that completes is
    `run_finished`."""
    from hoardfs.jobs.health import collect
    from tests.test_action_faults import KILLED_IN_STAGE
    from tests.test_action_runs import action_home, hoard
    from tests.test_action_workers import worker_contract

    rx = receivers([(200, "")])
    cfg, batch = action_home(hoard_home, pg, redis_conn, seed=142, items=3)
    worker_contract(cfg, batch)
    cfg = with_webhooks(cfg.source, hook(rx.url, events=["run_failed", "run_finished"]))
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_STAGE, str(cfg.source)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    (rid,) = [p.stem for p in (cfg.ssd.root / "state" / "actions").glob("thumbs-v*.json") if p.stem.count(".") == 0]
    if looked:
        collect(cfg)
        collect(cfg)
        work(cfg, redis_conn, pg)
        (ev,) = [e for e in sql_events.events(pg) if e.name.startswith("run_")]
        assert (ev.name, ev.subject, ev.detail["step"]) == ("run_failed", rid, "stage"), ev
        assert "stopped (killed, or its host went down)" in ev.detail["error"], ev.detail
    res = hoard(cfg.source, "action", "run", "thumbs", "--here")
    assert res.returncode == 0, res.stdout + res.stderr
    work(cfg, redis_conn, pg)
    collect(cfg)  # (the resumed run: nothing died)
    work(cfg, redis_conn, pg)
    got = [json.loads(g["body"]) for g in rx.got]
    assert sorted(g["event"] for g in got) == ["run_failed", "run_finished"], got
    assert all(g["signed"] for g in rx.got) and {g["subject"] for g in got} == {rid}
