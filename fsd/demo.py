"""`hoard demo` / `make demo`: the main job on the embedded default.

Today: check every part is up, generate sample scraped batches into zone 3A, store them
in the content-addressed store (dedupe, write_ack replicas), bring every shard to its
replica target, and read everything back with the batch read planner, verified. Each
issue extends this (ingest → browse the mount → stage/export → GUI).
"""

from __future__ import annotations

from adapters.synth import Spec, generate
from fsd.cli._common import err, out
from fsd.config import Settings
from fsd.errors import ExitCode, HoardError
from fsd.health import collect

DEMO_SPEC = Spec(seed=7, batches=3, items_per_batch=60, large_max_mb=4)


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
        f"{d['label']} {d.get('total_bytes', 0) / 1024**3:.1f} GB" for d in report["disks"]))
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, DEMO_SPEC)
    files = sum(len(b.items) for b in batches)
    size = sum(i.size for b in batches for i in b.items)
    out.print(f"[bold]3. sample[/]    {len(batches)} scraped batches in zone 3A: {files} files, {size / 1e6:.1f} MB")
    for b in batches:
        out.print(f"               {zone3a / b.batch_id}  ({b.source})")
    results = _store_and_read_back(cfg, [zone3a / b.batch_id / i.path for b in batches for i in b.items])
    _describe_in_database(cfg, batches, results)
    out.print("\n[bold]next:[/]")
    out.print("  .venv/bin/hoard health          status of disks, zones, PostgreSQL, Redis")
    out.print(f"  ls {zone3a}      the sample batches as a scraper leaves them")
    out.print("  .venv/bin/hoard disks list      where the replicas went, per disk")
    out.print("  .venv/bin/hoard get SHA256 -o FILE   read one object back")
    out.print("  .venv/bin/hoard --help          every command (ingest, mount … arrive with issues 4–7)")


def _store_and_read_back(cfg: Settings, paths: list) -> list:
    import hashlib
    import threading
    import time
    from collections import Counter

    from fsd.replicate import replicate_once
    from fsd.store import Store

    with Store.open(cfg) as store:
        t0 = time.monotonic()
        results = store.put_many(paths, klass="raw")
        took = time.monotonic() - t0
        c = Counter(r.status for r in results)
        out.print(f"[bold]4. store[/]     {len(results)} files in {took:.2f} s: {c['new']} new, "
                  f"{c['existing']} already present (same content seen before), {c['rejected']} rejected; "
                  f"acknowledged with {cfg.store.write_ack} replicas each")
        rep = replicate_once(store, budget_s=120, rate_mb_s=None)
        out.print(f"[bold]5. replicate[/] {rep.copied_shards} shard copies made; "
                  f"{store.status()['replication']['shards_below_target']} shards below target")
        good = 0
        lock = threading.Lock()

        def check(sha: bytes, payload) -> None:
            nonlocal good
            ok = hashlib.sha256(payload).digest() == sha
            with lock:
                good += ok

        shas = sorted({r.sha256 for r in results if r.sha256})
        plan, stats = store.read_batch(shas, check)
        labels = {u: d.label for u, d in store.disks.items()}
        per_disk = ", ".join(f"{labels[u]} {b / 1e6:.1f} MB" for u, b in plan.bytes_per_disk.items())
        out.print(f"[bold]6. read back[/] {good}/{len(shas)} objects verified by sha256 in {stats.seconds:.2f} s "
                  f"with the batch planner ({per_disk})")
        if good != len(shas):
            raise HoardError(f"{len(shas) - good} objects did not read back correctly; see `hoard health`",
                             ExitCode.DATA)
    return results


def _describe_in_database(cfg: Settings, batches, results) -> None:
    """The stored files as nodes in PostgreSQL (one write-intent per batch), then a selector.

    W1-D replaces this with the real adapters (metadata, virtual assets, edges)."""
    from pathlib import PurePath

    import psycopg

    from sql.intents import apply_write_intent
    from sql.migrate import migrate
    from sql.selectors import query_nodes

    by_path = {r.path: r for r in results}
    zone3a = cfg.ssd.zone_path("3A")
    with psycopg.connect(cfg.database_url, autocommit=True) as conn:
        migrate(conn)
        applied = 0
        for b in batches:
            nodes, members = {}, []
            for item in b.items:
                r = by_path[str(zone3a / b.batch_id / item.path)]
                ext = PurePath(item.path).suffix.lstrip(".").lower() or None
                node = nodes.setdefault(r.sha256, {"sha256": r.sha256, "physical": {
                    "size": r.size, "file_type": ext, "locators": []}})
                node["physical"]["locators"].append(f"batch:{b.batch_id}/{item.path}")
                members.append(r.sha256)
            res = apply_write_intent(conn, {"key": f"demo:{b.batch_id}", "sources": [b.source],
                                            "nodes": list(nodes.values()),
                                            "batches": [{"batch_id": b.batch_id, "source": b.source,
                                                         "members": sorted(set(members)), "seal": True}]})
            applied += not res.noop
        images = query_nodes(conn, {"kinds": ["image"], "batches": [b.batch_id for b in batches]})
        videos = query_nodes(conn, {"kinds": ["video"]})
    out.print(f"[bold]7. database[/]  {len(batches)} write-intents ({applied} applied now, the rest already were); "
              f"selector: {len(images)} images ({images.total_bytes / 1e6:.1f} MB), "
              f"{len(videos)} videos ({videos.total_bytes / 1e6:.1f} MB)")
