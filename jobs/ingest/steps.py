"""The five steps of UA_1 (scan, store, apply, package, finish), each idempotent by batch id,
and the records they hand each other in the batch's work directory."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import psycopg

from hoardfs.adapters import Reject, adapter_for, display, quarantine
from hoardfs.adapters.intent import build_intent
from hoardfs.adapters.isolated import parse_isolated
from hoardfs.adapters.records import record_load, unstorable
from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import atomic_write, fsync_dir
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.io.put import UNLIKE_SCAN
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.outputs import members, zones
from hoardfs.fsd.outputs.manifest import batch_manifest, naming_lock
from hoardfs.fsd.store import Store
from hoardfs.jobs import events
from hoardfs.jobs.ingest.render import forget as forget_rendered
from hoardfs.jobs.ingest.render import path_of, render_all
from hoardfs.jobs.ingest.state import SIGNAL, BatchState, IngestError, Status, save_state, work_path
from hoardfs.jobs.runs import now
from hoardfs.sql.apply import apply_write_intent, is_applied
from hoardfs.sql.migrate import migrate
from hoardfs.sql.schema_decider import propose_if_new

log = logging.getLogger(__name__)


#: what a package in 3B reserves per file beyond its bytes (tar header, manifest line)
PACKAGE_OVERHEAD_PER_FILE = 1024


# -- steps --------------------------------------------------------------------------------

def _step_scan(cfg: Settings, st: BatchState) -> None:
    zone3a = cfg.ssd.zone_path("3A")
    root = zone3a / st.batch_id
    if not root.is_dir():
        raise IngestError(f"batch directory {root} is gone; if it was ingested before, `hoard ingest --status "
                          f"{st.batch_id}` says so — otherwise drop the batch again")
    adapter = adapter_for(st.source, cfg.sources)
    parsed, view, records = parse_isolated(root, adapter, cfg.ingest.settle_s,  # records: their JSON form
                                           memory_mb=cfg.ingest.parser_memory_mb)
    records, refused = _storable(records, parsed.claimed)
    for rej in refused:  # the document, and its media no other record describes, go to quarantine
        parsed.rejects.append(rej)
        parsed.claimed.difference_update(rej.paths)
    for rel, why in _beyond_3b(cfg, root, {rel: view.files[rel] for rel in parsed.claimed}).items():
        parsed.reject(why, rel)  # its records are skipped by the intent: their node is not stored
        parsed.claimed.discard(rel)
    files = {rel: view.files[rel] for rel in sorted(parsed.claimed)}
    st.report.update({"format": adapter.format, "files_seen": len(view.files) + sum(
        len(r.paths) for r in parsed.rejects if r.paths and r.paths[0] not in view.files),
        "files_accepted": len(files), "records": len(records),
        "rejected": [{"path": display(p) if p else None, "reason": r.reason}
                     for r in parsed.rejects for p in (r.paths or [""])], "quarantine": None})
    if not files:
        _nothing_accepted(st, root, "accepted", st.report["rejected"])  # --status lists every reason
    # made before anything moves: a record the adapter's checks refuse refuses the batch whole
    rendered = render_all(cfg, st.batch_id, adapter, records, files)
    if rendered:
        st.report["files_rendered"] = len(rendered)
    quarantine(zone3a, st.batch_id, parsed.rejects)
    if parsed.rejects:
        st.report["quarantine"] = str(zone3a / "_quarantine" / st.batch_id)
    atomic_write(work_path(cfg, st.batch_id, "records"),
                 json.dumps({"files": files, "records": records, "rendered": rendered,
                             "identity": {rel: view.identity[rel] for rel in files if rel in view.identity}}).encode())


def _storable(records: list[dict[str, Any]], files: Collection[str]) -> tuple[list[dict[str, Any]], list[Reject]]:
    """The records whose keys and identities the database can hold (`unstorable`), and a Reject
    per document of the others: every record of that document is dropped — one key PostgreSQL
    refuses would fail the whole batch at `apply`, and every resume of it — and the document goes
    to quarantine with the files (of `files`) its records describe that no kept record names."""
    bad: dict[str | None, str] = {}
    for r in records:
        if r["doc"] not in bad and (why := unstorable(r)) is not None:
            bad[r["doc"]] = why
    if not bad:
        return records, []

    def files_of(r: dict[str, Any]) -> set[str]:
        return {r["doc"] or "", *(n[1] for n in [r["node"], *(n for e in r["edges"] for n in e[:2])] if n[0] == "f")}

    kept = [r for r in records if r["doc"] not in bad]
    named = set().union(*map(files_of, kept))
    rejects = []
    for doc, why in bad.items():
        paths = set().union(*(files_of(r) for r in records if r["doc"] == doc)).intersection(files) - named
        shown = f"{display(doc)}: " if doc else "a record: "
        rejects.append(Reject(sorted(paths, key=lambda p: (p != doc, p)),
                              f"{shown}{why}; fix the document and drop it again in a new batch"))
    return kept, rejects


def _beyond_3b(cfg: Settings, root: Path, files: dict[str, int]) -> dict[str, str]:
    """Files too large for the batch's package ever to fit zone 3B (its quota up to the deny
    threshold), each → the reason: refused at scan, before the store step reads them. A sparse
    file (a scraper's preallocated or failed download: holes, no data) takes little of 3A but
    its apparent size is what the store reads and 3B must hold."""
    limit = int(zones.quota(cfg, "3B") * cfg.ssd.thresholds.deny)
    out = {}
    for rel, size in files.items():
        if size + PACKAGE_OVERHEAD_PER_FILE * (1 + 10) <= limit:  # one file: the package's `need`
            continue
        try:
            on_disk = os.lstat(root / rel).st_blocks * 512
        except OSError:
            on_disk = size
        sparse = f" (sparse: {fmt_bytes(on_disk)} on disk)" if on_disk < size // 2 else ""
        out[rel] = (f"{fmt_bytes(size)}{sparse} is more than zone 3B can ever hold for the batch's package "
                    f"({fmt_bytes(limit)}: ssd.zones.3B.quota_gb at the deny threshold); if the file is real, "
                    "raise the quota and drop it in a new batch")
    return out


def _nothing_accepted(st: BatchState, root: Path, what: str, rejected: list[dict[str, Any]]) -> None:
    """Fail a batch none of whose files got through, before they move: a wholly wrong
    `--source` then costs a re-run, not a batch scattered into quarantine and reported done."""
    example = f", e.g. {rejected[0]['path'] or '-'}: {rejected[0]['reason']}" if rejected else ""
    raise HoardError(f"no file of batch {st.batch_id} was {what} ({len(rejected)} rejected{example}); they stay "
                     f"in {root}. If the source is wrong, `hoard ingest {root} --source NAME`; otherwise fix the "
                     f"files, then `hoard ingest --resume {st.batch_id}`", ExitCode.DATA)


def _step_store(cfg: Settings, st: BatchState) -> None:
    work = json.loads(work_path(cfg, st.batch_id, "records").read_bytes())
    root = cfg.ssd.zone_path("3A") / st.batch_id
    rendered = work.get("rendered", {})  # a work file of before rendered files has none
    rels = [*work["files"], *rendered]
    # each file must be the one the scan saw (device, inode, size, mtime): one swapped for a
    # link to a secret since was stored as root, and the world-readable shards gave it back
    # (the device is the batch directory's now, not the scan's: a reboot or a power cut may
    # number the SSD's filesystem anew, and a resume must still find its files; a link to
    # another filesystem stays refused)
    dev = os.lstat(root).st_dev if work.get("identity") else 0  # (a link: its own device, never its target's)
    expect = {str(root / r): (dev, *v[1:]) for r, v in work.get("identity", {}).items()}
    with Store.open(cfg) as store:
        results = store.put_many([path_of(cfg, st.batch_id, root, r, rendered) for r in rels], klass="raw",
                                 expect=expect)
        # referenced from now on, before the store lock is let go: a `hoard delete --batch`
        # of another batch holding the same files cannot let gc free them before this
        # batch's manifest is registered (the package step); the finish step unpins
        store.pin(f"ingest-{st.batch_id}", [r.sha256 for r in results if r.status != "rejected"],
                  f"ingest of {st.batch_id}")
    stored, late = {}, []
    new = existing = bytes_new = 0
    for rel, res in zip(rels, results, strict=True):
        if res.status == "rejected":
            late.append((rel, f"{res.reason} — drop it in a new batch" if res.reason == UNLIKE_SCAN else res.reason))
            continue
        stored[rel] = (res.sha256, res.size)
        new += res.status == "new"
        existing += res.status == "existing"
        bytes_new += res.size if res.status == "new" else 0
    if not stored:
        _nothing_accepted(st, root, "stored", [{"path": display(rel), "reason": why} for rel, why in late])
    if late:
        quarantine(cfg.ssd.zone_path("3A"), st.batch_id, [Reject([rel], why) for rel, why in late])
        st.report["rejected"] += [{"path": display(rel), "reason": why} for rel, why in late]
    atomic_write(work_path(cfg, st.batch_id, "stored"), json.dumps(stored).encode())
    st.report.update({"stored_new": new, "stored_existing": existing, "bytes_new": bytes_new,
                      "bytes_total": sum(size for _, size in stored.values())})


def _step_apply(cfg: Settings, st: BatchState) -> None:
    work = json.loads(work_path(cfg, st.batch_id, "records").read_bytes())
    stored = {k: tuple(v) for k, v in json.loads(work_path(cfg, st.batch_id, "stored").read_bytes()).items()}
    key = f"ingest:{st.batch_id}"
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        migrate(conn)
        samples, refused = _storable(work["records"], stored)  # a work file of a scan that did not check keys
        if refused and not is_applied(conn, key):
            stored = _refuse_late(cfg, st, work, stored, samples, refused)
        # (applied before, its records are in the database: the intent stays the one applied)
        records = [record_load(r) for r in work["records"]]
        intent, stats = build_intent(key, st.batch_id, st.source, records, stored,
                                     dt.datetime.fromisoformat(st.signalled), labels=work.get("rendered"))
        res = apply_write_intent(conn, intent)
        prop = propose_if_new(conn, st.source, [r["specific"] for r in samples[:128]])
    st.report.update({"metadata_rows": len(intent["metadata"]), "edges": stats.edges,
                      "virtual_assets": stats.virtual, "nodes": len(intent["nodes"]),
                      "records_skipped": stats.skipped_records, "database": res.counts,
                      "intent": res.key, "intent_was_applied_before": res.noop})
    if prop:
        st.report["schema_proposal"] = prop.proposal_id


def _refuse_late(cfg: Settings, st: BatchState, work: dict[str, Any], stored: dict[str, tuple[str, int]],
                 kept: list[dict[str, Any]], refused: list[Reject]) -> dict[str, tuple[str, int]]:
    """At `apply`, what `_storable` refuses of records a scan kept (its intent not applied yet):
    the documents and their files quarantined (the store's copies are unpinned at the finish, and
    named by no manifest), the work files written without them; returns the stored files left.
    Run again after a crash, it finds the same records and moves nothing twice."""
    gone = {p for rej in refused for p in rej.paths}
    quarantine(cfg.ssd.zone_path("3A"), st.batch_id, refused)
    shown = st.report.setdefault("rejected", [])
    shown += [line for rej in refused for p in rej.paths or [""]
              if (line := {"path": display(p) if p else None, "reason": rej.reason}) not in shown]
    st.report["quarantine"] = str(cfg.ssd.zone_path("3A") / "_quarantine" / st.batch_id)
    save_state(cfg, st)  # before the work files lose them: a crash in between says them once
    stored = {rel: v for rel, v in stored.items() if rel not in gone}
    work.update(records=kept, files={k: v for k, v in work["files"].items() if k not in gone},
                identity={k: v for k, v in work.get("identity", {}).items() if k not in gone})
    atomic_write(work_path(cfg, st.batch_id, "stored"), json.dumps(stored).encode())
    atomic_write(work_path(cfg, st.batch_id, "records"), json.dumps(work).encode())
    return stored


def _step_package(cfg: Settings, st: BatchState) -> None:
    stored = {k: tuple(v) for k, v in json.loads(work_path(cfg, st.batch_id, "stored").read_bytes()).items()}
    work = json.loads(work_path(cfg, st.batch_id, "records").read_bytes())
    records = work["records"]
    root = cfg.ssd.zone_path("3A") / st.batch_id
    out = cfg.ssd.zone_path("3B") / st.batch_id
    manifest_path = out / f"{st.batch_id}.manifest.json"
    if not manifest_path.exists():
        # reserved before a byte is written, released once the manifest (the package's seal) is
        # there or the step failed; a worker killed meanwhile leaves a stale reservation that
        # the next reserve in 3B reclaims (hoardfs.fsd.outputs.zones)
        need = sum(size for _, size in stored.values()) + PACKAGE_OVERHEAD_PER_FILE * (len(stored) + 10)
        zones.reserve(cfg, "3B", st.batch_id, f"ingest:{st.batch_id}", need,
                      next_step=f"`hoard ingest --resume {st.batch_id}`; the batch stays stored and in 3A until then")
        try:
            rendered = work.get("rendered", {})
            parts = _write_parts(root, out, st.batch_id, stored, int(cfg.store.batch_size_gb * (1 << 30)),
                                 work.get("identity", {}),
                                 {rel: path_of(cfg, st.batch_id, root, rel, rendered) for rel in rendered})
            docs = {r["doc"] for r in records if r.get("doc") and r["doc"] in stored}
            atomic_write(manifest_path, batch_manifest(st.batch_id, st.source, st.signalled, stored, parts, docs,
                                                       st.report.get("rejected", [])))
        finally:
            zones.release(cfg, "3B", st.batch_id)
    else:  # a worker killed after the manifest, before the release, left its reservation
        zones.release_stale(cfg, "3B", st.batch_id)
    body = manifest_path.read_bytes()
    with Store.open(cfg) as store:
        put = store.put_bytes(body, klass="raw")
        with naming_lock(store):
            store.register_batch(st.batch_id, {"source": st.source, "manifest": put.sha256,
                                               "files": len(stored), "bytes": sum(s for _, s in stored.values()),
                                               "sealed": now()},
                                 holds=[bytes.fromhex(h) for h, _ in stored.values()] + [bytes.fromhex(put.sha256)])
            # a batch deleted since the store step may have tombstoned a file this one shares (the
            # pin kept it from gc): named by a registered batch now, it is live — not hidden
            for sha in store.index.marked_among(store.index.deleted, {bytes.fromhex(h) for h, _ in stored.values()}):
                store.index.lookup_keep(sha)
        members.remember(store, put.sha256, [bytes.fromhex(h) for h, _ in stored.values()])
    parts_n = len({p.name for p in out.glob(f"{st.batch_id}.part*.tar")})
    st.report["package"] = {"path": str(out), "parts": parts_n, "manifest_sha256": put.sha256,
                            "bytes": sum(p.stat().st_size for p in out.iterdir())}


def _write_parts(root: Path, out: Path, batch_id: str, stored: dict[str, tuple[str, int]], part_bytes: int,
                 identity: dict[str, list[int]], elsewhere: dict[str, Path]) -> dict[str, int]:
    """Tar archives of at most `part_bytes` (a bigger file gets a part of its own), each
    written to a temporary name, fsynced and renamed; a part already complete is kept.
    `elsewhere`: files of the batch read from another place than `root` (its rendered files).
    Each file must still be the one the scan saw and the store step stored (`identity`: inode,
    size, mtime; the device is the batch directory's, as the store step compares): a file or
    directory of the batch swapped for a link since would put a root-only file in the package."""
    dev = os.stat(root).st_dev
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, int] = {}
    groups: list[list[str]] = [[]]
    size = 0
    for rel, (_, n) in sorted(stored.items()):
        if groups[-1] and size + n + 512 > part_bytes:
            groups.append([])
            size = 0
        groups[-1].append(rel)
        size += n + 1024
    for no, group in enumerate(groups, 1):
        final = out / f"{batch_id}.part{no:04d}.tar"
        for rel in group:
            parts[rel] = no
        if final.exists():
            continue
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in group:
                    with open(elsewhere.get(rel, root / rel), "rb") as src:
                        fst = os.fstat(src.fileno())
                        seen = identity.get(rel)
                        if seen is not None and (dev, *seen[1:]) != (fst.st_dev, fst.st_ino, fst.st_size,
                                                                     fst.st_mtime_ns):
                            raise IngestError(
                                f"{display(rel)} in {root} is not the file the scan saw and the store step stored "
                                "(replaced or changed since, a link perhaps); its package is not made from it: put "
                                f"the file back as it was and `hoard ingest --resume {batch_id}`, or drop the batch")
                        info = tar.gettarinfo(arcname=rel, fileobj=src)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, src)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    fsync_dir(out)
    return parts


def _step_finish(cfg: Settings, st: BatchState) -> None:
    # `finished_at` is saved once 3A is emptied: a finish run again after that (a crash or power
    # cut before the state said done) goes on from the event — the work files it reads before
    # are removed at its end, so a second run must not need them (else it fails on every run)
    if "finished_at" not in st.report:
        stored = {k: tuple(v) for k, v in json.loads(work_path(cfg, st.batch_id, "stored").read_bytes()).items()}
        zone3a = cfg.ssd.zone_path("3A")
        root = zone3a / st.batch_id
        with Store.open(cfg, writable=False) as store:
            short = [rel for rel, (sha, _) in stored.items() if _replicas(store, sha) < cfg.store.write_ack]
        if short:  # a disk failed or was replaced since the store step: copy them again first
            short = _top_up(cfg, stored, short)
        if short:
            raise HoardError(f"{len(short)} files of {st.batch_id} (e.g. {short[0]}) have fewer than "
                             f"{cfg.store.write_ack} readable replicas and no other disk could take a copy now; "
                             f"nothing was removed from 3A — see `hoard health` (a failed disk: `hoard disks replace`; "
                             f"then `hoard replicate`), then `hoard ingest --resume {st.batch_id}`", ExitCode.DATA)
        if root.exists():
            _empty_batch_dir(zone3a, st, stored)
        st.report["finished_at"] = now()  # fixed before the event is written: a retry sends the same intent
        save_state(cfg, st)
    status = Status.DONE_WITH_REJECTS if st.report.get("rejected") else Status.DONE
    summary = {k: v for k, v in st.report.items() if k != "rejected"} | {
        "rejected": len(st.report.get("rejected", [])), "status": status.value}
    detail = json.loads(json.dumps(summary, default=str))
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        apply_write_intent(conn, {"key": f"ingest:{st.batch_id}:event", "events": [{
            "batch_id": st.batch_id, "action": 0, "status": "done", "started_at": st.signalled,
            "ended_at": st.report["finished_at"], "detail": detail}]})
        # the webhooks' event (hoardfs.jobs.events): once per batch whatever re-runs the step; never fails it
        events.emit(cfg, "batch_ingested", f"batch_ingested:{st.batch_id}", st.batch_id,
                    {"batch": st.batch_id, "source": st.source} | detail, conn=conn)
    st.status = status.value
    for what in ("records", "stored"):
        work_path(cfg, st.batch_id, what).unlink(missing_ok=True)
    forget_rendered(cfg, st.batch_id)
    with Store.open(cfg, writable=False) as store:
        store.unpin(f"ingest-{st.batch_id}")  # the registered manifest references the files now


def _top_up(cfg: Settings, stored: dict[str, tuple[str, int]], short: list[str]) -> list[str]:
    """Copy the shards of `short` files to other disks until they have their replicas again
    (the maintenance lock is waited for a while: a gc or rebuild may hold it); the files
    still short afterwards."""
    with Store.open(cfg) as store:
        locs = [store.index.lookup(bytes.fromhex(stored[rel][0])) for rel in short]
        try:
            replicate_once(store, budget_s=3600, rate_mb_s=None, wait_s=60,
                           only={loc.shard_id for loc in locs if loc is not None})
        except HoardError as e:  # the lock stayed busy: said below, with the files still short
            log.warning("batch files short of replicas not copied now: %s", e.message)
        # counted on the disks' states as they are now: the wait and the copies take minutes, and a
        # disk another process failed meanwhile (the mount saw EIO) still counted as readable here
        store.refresh_disks()
        return [rel for rel in short if _replicas(store, stored[rel][0]) < cfg.store.write_ack]


def _replicas(store, sha_hex: str) -> int:
    loc = store.index.lookup(bytes.fromhex(sha_hex))
    meta = store.index.get_shard(loc.shard_id) if loc else None
    return store.readable_replicas(meta) if meta else 0


def _empty_batch_dir(zone3a: Path, st: BatchState, stored: dict[str, tuple[str, int]]) -> None:
    """Remove what was stored; anything else (a file that appeared after the scan) goes to
    quarantine, never to the void."""
    root = zone3a / st.batch_id
    extra = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if rel == SIGNAL:
                continue
            if rel in stored and os.path.getsize(root / rel) == stored[rel][1]:
                continue
            extra.append(rel)
    if extra:
        rej = [Reject([rel], "appeared or changed after the batch was scanned; drop it in a new batch")
               for rel in extra]
        quarantine(zone3a, st.batch_id, rej)
        st.report.setdefault("rejected", []).extend({"path": display(r), "reason": j.reason}
                                                    for r, j in zip(extra, rej, strict=True))
    shutil.rmtree(root)
    fsync_dir(zone3a)


_STEPS = {"scan": _step_scan, "store": _step_store, "apply": _step_apply, "package": _step_package,
          "finish": _step_finish}

