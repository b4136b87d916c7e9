"""`hoard demo` / `make demo`: the main job on the embedded default.

Today: check every part is up, generate a sample scraped batch set into zone 3A and show
where it is. Each issue extends this (ingest → browse the mount → stage/export → GUI).
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
    out.print(f"[bold]2. disks[/]     " + ", ".join(
        f"{d['label']} {d.get('total_bytes', 0) / 1024**3:.1f} GB" for d in report["disks"]))
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, DEMO_SPEC)
    files = sum(len(b.items) for b in batches)
    size = sum(i.size for b in batches for i in b.items)
    out.print(f"[bold]3. sample[/]    {len(batches)} scraped batches in zone 3A: {files} files, {size / 1e6:.1f} MB")
    for b in batches:
        out.print(f"               {zone3a / b.batch_id}  ({b.source})")
    out.print("\n[bold]next:[/]")
    out.print("  .venv/bin/hoard health          status of disks, zones, PostgreSQL, Redis")
    out.print(f"  ls {zone3a}      the sample batches as a scraper leaves them")
    out.print("  .venv/bin/hoard --help          every command (put/get, ingest, mount … arrive with issues 3–7)")
