"""`hoard demo` / `make demo`: the main job on the embedded default.

Today: check every part is up, drop sample scraped batches into zone 3A with a `_READY`
signal, ingest them (UA_1 on RQ: store with dedup and write_ack replicas, metadata and
cross-batch edges in PostgreSQL, a package per batch in 3B, 3A emptied), bring every
shard to its replica target, read everything back with the batch read planner, verified,
and query the database; stage the first batch into 3C and export the images into 3D; run
the built-in actions `thumbnail` and `canny` (behind the GPU gate, released as a user would)
on the batches' images, their children stored and linked in PostgreSQL; build a small
training dataset of those children (ImageFolder, class = the variant each action labelled:
`hoard dataset`), sealed in 3D; take the database's
first backup (a dump, restore-verified), so `hoard health` is green after it.
It ends with the GUI's address and a login (a `demo` admin, made on the first run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import asdict

import psycopg
import typer

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, state
from hoardfs.datasets.spec import parse_spec
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.store import Store
from hoardfs.jobs import datasets as dataset_jobs
from hoardfs.jobs import outputs
from hoardfs.jobs import users as logins
from hoardfs.jobs.actions import api as actions
from hoardfs.jobs.actions import run_here
from hoardfs.jobs.actions.state import Status as ActionStatus
from hoardfs.jobs.actions.state import load_state as load_action
from hoardfs.jobs.health import collect
from hoardfs.jobs.ingest import Status, load_state, submit, work_here
from hoardfs.sql.backup import dump_backup, latest_dump, verify_dump
from hoardfs.sql.browse import edge_counts, nodes_in_several_batches, run_children
from hoardfs.sql.selectors import query_nodes

DEMO_SPEC = Spec(seed=7, batches=3, items_per_batch=60, large_max_mb=4, ready_signal=True)


def run_demo(cfg: Settings) -> None:
    report = collect(cfg)
    if not report["database"]["ok"] or not report["redis"]["ok"]:
        for p in report["problems"]:
            err.print(f"problem: {p}")
        raise HoardError("the demo needs PostgreSQL and Redis; run `hoard services up` (make demo does)",
                         ExitCode.UNAVAILABLE)
    out.print(f"[bold]1. services[/]  PostgreSQL {report['database']['server_version']}, "
              f"Redis {report['redis']['redis_version']}")
    out.print("[bold]2. disks[/]     " + ", ".join(
        f"{d['label']} {fmt_bytes(d.get('total_bytes'))}" for d in report["disks"]))
    batches = _sample_batches(cfg)
    states = _ingest(cfg, batches)
    _read_back(cfg, batches)
    _describe(cfg, batches)
    staged, exported = _stage_and_export(cfg, batches)
    child = _actions(cfg, batches)
    dataset = _dataset(cfg)
    _first_backup(cfg)
    out.print("\n[bold]next:[/]")
    out.print("  .venv/bin/hoard health                    status of disks, zones, ingest, PostgreSQL, Redis")
    out.print(f"  .venv/bin/hoard ingest --status {states[0].batch_id}   one batch's report")
    out.print(f"  ls {cfg.ssd.zone_path('3B')}          the packages for cold storage")
    out.print(f"  ls {staged}   a worker's input (and its empty output/)")
    out.print(f"  ls {exported}   an exported dataset, one directory per source")
    if child:
        out.print(f"  .venv/bin/hoard info {child[:16]}       a thumbnail: its parent image, labels, replicas")
    out.print("  .venv/bin/hoard action runs               the action runs (thumbnail, canny) and their steps")
    out.print(f"  ls {dataset}   a training dataset (ImageFolder: split/class/file, manifest.jsonl, README.md)")
    out.print(f"  .venv/bin/hoard dataset show {DEMO_DATASET['name']}          its versions, counts and class map "
              "(docs/datasets.md)")
    out.print("  .venv/bin/hoard zones                     the SSD zones: used, reserved, sealed outputs")
    out.print("  .venv/bin/hoard db proposals              typed tables proposed for the sources' own fields")
    out.print("  .venv/bin/hoard disks list                where the replicas went, per disk")
    out.print("  mkdir -p /tmp/hoard && .venv/bin/hoard mount /tmp/hoard   browse batches/, sources/, by-hash/ "
              "(the thumbnails and edge maps too)")
    out.print("  .venv/bin/hoard --help                    every command")
    name, password = _demo_login(cfg)
    out.print(f"\n[bold]GUI:[/] .venv/bin/hoard gui, then open http://{cfg.gui.host}:{cfg.gui.port}/ and sign in as "
              f"[bold]{name}[/] / [bold]{password}[/]", soft_wrap=True)


def _demo_login(cfg: Settings) -> tuple[str, str]:
    """The demo's GUI login: a `demo` admin with a random password, made once and kept
    (mode 0600) beside the users file, so every run of the demo prints the same one."""
    kept = cfg.gui_users_file.with_name("demo-login.txt")
    if kept.exists() and "demo" in logins.users(cfg):
        return "demo", kept.read_text().strip()
    password = secrets.token_urlsafe(9)
    while logins.weak_password(password, "demo"):  # chance can make a repeat (`Ma-Ma-`): the policy's to judge
        password = secrets.token_urlsafe(9)
    if "demo" in logins.users(cfg):
        logins.passwd(cfg, "demo", password)
    else:
        logins.add(cfg, "demo", "admin", password)
    kept.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return "demo", password


def _sample_batches(cfg: Settings) -> list:
    """The demo's scraped batches, dropped in 3A with a _READY signal — unless a previous run
    ingested them already (then only their reports are shown again)."""
    zone3a = cfg.ssd.zone_path("3A")
    names = [f"{src}-s{DEMO_SPEC.seed}-b{b:03d}" for b, src in
             zip(range(DEMO_SPEC.batches), DEMO_SPEC.sources * DEMO_SPEC.batches, strict=False)]
    done = {n for n in names if (st := load_state(cfg, n)) is not None and st.finished}
    sample = cfg.ssd.root / "state" / "demo-sample"
    batches = generate(sample, DEMO_SPEC)  # with its `_derived/` and truth.json, which stay out of 3A
    zone3a.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n not in done and not (zone3a / n).exists():  # (one there already: an interrupted run's drop)
            shutil.move(sample / n, zone3a / n)  # a rename: the zones and state/ are on the SSD root
    _forget_old_leftovers(zone3a, names)
    files = sum(len(b.items) for b in batches)
    size = sum(i.size for b in batches for i in b.items)
    out.print(f"[bold]3. sample[/]    {len(batches)} scraped batches, {files} files, {fmt_bytes(size)}"
              + (" (ingested by an earlier run)" if len(done) == len(names) else f", dropped in {zone3a}"))
    return batches


def _forget_old_leftovers(zone3a, names: list[str]) -> None:
    """What the demo left in 3A before it generated its sample elsewhere: `_derived/<batch>`
    of its own batches and its truth.json (only the demo's: another `_derived/` stays)."""
    for n in names:
        shutil.rmtree(zone3a / "_derived" / n, ignore_errors=True)
    with contextlib.suppress(OSError):
        (zone3a / "_derived").rmdir()  # only if empty
    truth = zone3a / "truth.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(truth.read_bytes()).get("spec") == asdict(DEMO_SPEC):
            truth.unlink()


def _ingest(cfg: Settings, batches: list) -> list:
    """UA_1 for each batch, on RQ, with the jobs run in this process."""
    t0 = time.monotonic()
    for b in batches:
        submit(cfg, cfg.ssd.zone_path("3A") / b.batch_id, None)
    work_here(cfg)
    states = [load_state(cfg, b.batch_id) for b in batches]
    out.print(f"[bold]4. ingest[/]    UA_1 (scan → store → database → 3B package → 3A emptied) "
              f"in {time.monotonic() - t0:.2f} s:")
    for st in states:
        assert st is not None  # submitted above
        r = st.report
        out.print(f"               {st.batch_id} ({st.source}): {st.status}; {r.get('stored_new', 0)} new, "
                  f"{r.get('stored_existing', 0)} already stored, {r.get('metadata_rows', 0)} metadata rows, "
                  f"{r.get('edges', 0)} edges, package {r.get('package', {}).get('parts', 0)} tar part(s)")
        if st.status == Status.FAILED.value:
            raise HoardError(f"ingest of {st.batch_id} failed at {st.step}: {st.error}", ExitCode.DATA)
        if not st.finished:  # another worker on the same Redis took its jobs and has not finished them
            raise HoardError(f"ingest of {st.batch_id} is still {st.status} at step {st.step} (another worker "
                             f"took its jobs?); `hoard ingest --status {st.batch_id}`, then run the demo again",
                             ExitCode.UNAVAILABLE)
    return states


def _read_back(cfg: Settings, batches: list) -> None:
    with Store.open(cfg) as store:
        rep = replicate_once(store, budget_s=120, rate_mb_s=None)
        out.print(f"[bold]5. replicate[/] {rep.copied_shards} shard copies made; "
                  f"{store.status()['replication']['shards_below_target']} shards below the target of "
                  f"{cfg.store.copy_of_raw} copies")
        manifests = [store.batch_manifest(b.batch_id) for b in batches]
        assert None not in manifests  # each batch was packaged by its ingest above
        shas = sorted({f["sha256"] for m in manifests if m for f in m["files"]})
        good = 0
        lock = threading.Lock()

        def record(ok: bool) -> None:
            nonlocal good
            with lock:
                good += ok

        def check(sha: bytes, payload) -> None:
            record(hashlib.sha256(payload).digest() == sha)

        def check_large(sha: bytes, pieces) -> None:  # a large video: verified piece by piece
            h = hashlib.sha256()
            for piece in pieces:
                h.update(piece)
            record(h.digest() == sha)

        plan, stats = store.read_batch(shas, check, check_large)
        labels = {u: d.label for u, d in store.disks.items()}
        per_disk = ", ".join(f"{labels[u]} {fmt_bytes(b)}" for u, b in plan.bytes_per_disk.items())
        out.print(f"[bold]6. read back[/] {good}/{len(shas)} objects of the batch manifests verified by sha256 in "
                  f"{stats.seconds:.2f} s with the batch planner ({per_disk})")
        if good != len(shas):
            raise HoardError(f"{len(shas) - good} objects did not read back correctly; see `hoard health`",
                             ExitCode.DATA)


def _stage_and_export(cfg: Settings, batches: list):
    """Stage the first batch into 3C for a worker, export the images into 3D (a second demo
    run finds both done and says so)."""
    first = batches[0].batch_id
    done = []
    for kind, oid, layout, selector in (("stage", f"demo-{first}", "by_batch", {"batches": [first]}),
                                        ("export", "demo-images", "by_batch", {"kinds": ["image"]})):
        spec = outputs.make_spec(kind, oid, layout, selector)
        st = outputs.submit(cfg, spec)
        rep = st.report if st.status == "done" else outputs.run(cfg, oid)
        path = cfg.ssd.zone_path(spec.zone) / oid / layout
        done.append(path / "input" if kind == "stage" else path)
        out.print(f"[bold]{8 if kind == 'stage' else 9}. {kind}[/]{' ' * (9 - len(kind))}{rep['files']} files, "
                  f"{fmt_bytes(rep['bytes'])} sealed in {cfg.ssd.zone_path(spec.zone) / oid}"
                  + (f" at {rep['mib_s']} MiB/s" if "mib_s" in rep else ""))
    return done


#: the built-in actions the demo runs on its batches' images, in order, with what each makes
DEMO_ACTIONS = (("thumbnail", "thumbnail_of"), ("canny", "edges_of"))


def _actions(cfg: Settings, batches: list) -> str | None:
    """The built-in `thumbnail` (AC2) and `canny` (AC4: OpenCV on the CPU standing in for a GPU
    program, behind the GPU gate) on the demo batches' images, run in this process; the gate
    is released as a user would (`hoard action release RUN`). A second demo run finds both
    done. Returns a thumbnail's sha256 (for `hoard info`)."""
    selector = {"batches": [b.batch_id for b in batches]}
    child = None
    for step, (name, relationship) in enumerate(DEMO_ACTIONS, start=10):
        head = f"[bold]{step}. {name}[/]{' ' * max(1, 10 - len(name) - len(str(step)))}"
        t0 = time.monotonic()
        sub = actions.submit(cfg, name, selector=selector, queue=False)
        rid = sub.state.run_id
        if sub.how != "done already":
            run_here(cfg, rid, until_waiting=True)
            st = load_action(cfg, rid)
            if st is not None and st.status == ActionStatus.WAIT_GPU_READY.value:
                out.print(f"{head}run {rid} waits at the GPU gate ({st.status}, holding no worker); the demo "
                          f"releases it as you would: hoard action release {rid}", soft_wrap=True)
                actions.release(cfg, rid, queue=False)  # (the steps run here, in this process)
                run_here(cfg, rid, until_waiting=True)
            st = load_action(cfg, rid)
            assert st is not None  # submitted above
            shown, why = actions.describe(cfg, st)
            if shown != ActionStatus.DONE.value:
                raise HoardError(f"the demo's {name} run {rid} is {shown} at step {st.step}: {why} "
                                 f"(`hoard action status {rid}`)", ExitCode(st.exit_code or ExitCode.DATA))
        with psycopg.connect(cfg.database_url, autocommit=True) as conn:
            made, first, results = run_children(conn, rid, relationship)
        inputs = sub.state.inputs
        out.print(f"{head}run {rid}: {inputs} images → {made} children ({relationship}, stored as class "
                  "generated)" + (f", {results} result_canny rows" if results else "")
                  + (" — done by an earlier run" if sub.how == "done already"
                     else f" in {time.monotonic() - t0:.2f} s"), soft_wrap=True)
        if name == "thumbnail":
            child = first
    return child


#: the demo's dataset (docs/datasets.md): the children the actions made, class = the `variant`
#: label each wrote (thumbnail | canny), split by their root so an image's thumbnail and edge
#: map never straddle train and val; at most 20 of a class in train (and 5 in val, its ratio's
#: share): a small one
DEMO_DATASET = {"name": "demo-variants", "layout": "imagefolder", "class_label": "variant",
                "classes": [name for name, _ in DEMO_ACTIONS], "max_per_class": 20,
                "selector": {"kinds": ["image"], "labels": [{"key": "variant"}]},
                "split": {"ratios": {"train": 0.8, "val": 0.2}, "salt": "demo", "group": "root"}}


def _dataset(cfg: Settings) -> str:
    """Build the demo's dataset (version 1; a second demo run finds it unchanged) into 3D;
    the directory it sealed."""
    t0 = time.monotonic()
    r = dataset_jobs.build(cfg, parse_spec(DEMO_DATASET, "the demo's dataset spec"))  # (its dataset_built event too)
    counts = "; ".join(f"{split}: " + ", ".join(f"{c} {n}" for c, n in by.items()) for split, by in r["counts"].items())
    out.print(f"[bold]12. dataset[/]  {r['name']}@{r['version']} ({DEMO_DATASET['layout']}, class = variant): "
              f"{counts} — " + (f"unchanged since version {r['version']}, " if r.get("unchanged") else
                                f"built in {time.monotonic() - t0:.2f} s, ")
              + f"sealed in {r['path']}", soft_wrap=True)
    return str(r["path"])


def _first_backup(cfg: Settings) -> None:
    """A database dump, restore-verified, unless one is recorded already: `hoard health`
    counts a store whose database was never backed up as a problem."""
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        row = latest_dump(conn)
    if row is not None and row[1]:
        out.print(f"[bold]13. backup[/]   dump {row[0]} taken by an earlier run, verified")
        return
    with Store.open(cfg) as store:
        made = dump_backup(cfg.database_url, store, cfg.ssd.zone_path("3B"))
        checked = verify_dump(cfg.database_url, store, made.backup_id)
    if not checked.ok:
        raise HoardError(f"the demo's database dump {made.backup_id} failed its restore-verify: {checked.detail}; "
                         "see `hoard health`", ExitCode.DATA)
    out.print(f"[bold]13. backup[/]   dump {made.backup_id} of the database ({fmt_bytes(made.size)}) stored and "
              f"copied to 3B, verified by a restore ({checked.detail}); nightly: hoard-backup.timer (systemd/)")


def _describe(cfg: Settings, batches: list) -> None:
    """What the database now knows: a selector and the cross-batch links."""
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        images = query_nodes(conn, {"kinds": ["image"], "batches": [b.batch_id for b in batches]})
        videos = query_nodes(conn, {"kinds": ["video"]})
        counts = edge_counts(conn)
        shared = nodes_in_several_batches(conn)
    out.print(f"[bold]7. database[/]  selector: {len(images)} images ({fmt_bytes(images.total_bytes)}), "
              f"{len(videos)} videos ({fmt_bytes(videos.total_bytes)}); {shared} files appear in more than "
              "one batch (stored once)")
    out.print("               edges: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


def demo(ctx: typer.Context) -> None:
    """The main job on the embedded default (grows as the issues land)."""
    run_demo(state(ctx).settings)
