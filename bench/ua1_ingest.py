"""UA_1 end to end for one generated batch of N items (media + sidecar each): items/s and the
time of each step, against copying the same batch durably to two disks by hand — `cp -r` to
lab1 and lab2 in parallel, then one `sync -f` (syncfs) per disk: stores the bytes twice but
parses nothing, writes no database, packs nothing. cgroup v1 does not throttle that copy's
buffered writeback, so each is also given as a share of its physical bound
in the lab's MiB/s: UA_1 places 2 copies over the four disks (bound: 2 × bytes / the sum
of their write limits), the baseline writes each byte to lab1 and lab2 (bytes / the
slower's write limit).

    python bench/ua1_ingest.py [--items 20000] [--profile lab4|unthrottled]

Runs on lab disks (root, loop devices, blkio; direct IO so writes are really throttled),
zone 3A/3B on this machine's disk, and the test PostgreSQL + Redis of ./hoard.toml (`make
test` starts them) in a fresh schema that is dropped afterwards. The steps run in this
process through RQ (`SimpleWorker`), as a worker runs them (`hoard ingest --here` runs the same
steps without RQ).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
from _common import LAB4, REPO, Lab, MiB, drop_caches, lab_config, parallel, report, run_timed, timed

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.jobs import ingest as ua1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--profile", choices=["lab4", "unthrottled"], default="lab4")
    args = ap.parse_args()
    repo_cfg = config.load(REPO / "hoard.toml")
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-ua1-", dir="/var/tmp"))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    t: dict[str, float] = {}
    with psycopg.connect(repo_cfg.test_database_url, autocommit=True) as admin, \
            Lab(LAB4, throttle=args.profile == "lab4", direct_io=True) as lab:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            url = psycopg.conninfo.make_conninfo(repo_cfg.test_database_url, options=f"-c search_path={schema}")
            cfg = _config(work, lab, url, repo_cfg.test_redis_url)
            import redis

            redis.Redis.from_url(repo_cfg.test_redis_url).flushdb()  # the tests' Redis db: no stale jobs
            zone3a = cfg.ssd.zone_path("3A")
            spec = Spec(seed=20, batches=1, items_per_batch=args.items, sources=("gallery",), large_fraction=0.0,
                        repeat_fraction=0.0, crop_fraction=0.0, ready_signal=True)
            with timed(t, "generate"):
                batch = generate(work / "gen", spec)[0]
            files = len(batch.items)
            mib = sum(i.size for i in batch.items) / MiB
            writes = {k: d.profile.write_mbps for k, d in lab.disks.items()}
            shutil.copytree(work / "gen" / batch.batch_id, zone3a / batch.batch_id)
            a, b = (lab.disks[x].mountpoint for x in ("lab1", "lab2"))
            with lab.throttled():
                drop_caches()
                with timed(t, "ua1"):
                    ua1.submit(cfg, zone3a / batch.batch_id, None)
                    ua1.work_here(cfg)
                st = ua1.load_state(cfg, batch.batch_id)
                assert st.status == "done", st.error
                print(f"UA_1: {t['ua1']:.2f} s, steps {st.seconds}; now the by-hand baseline …", flush=True)
                src = work / "gen" / batch.batch_id
                drop_caches()
                with timed(t, "cp_parallel_syncfs"):
                    parallel([["cp", "-r", str(src), str(d / "by-hand")] for d in (a, b)])
                    parallel([["sync", "-f", str(d / "by-hand")] for d in (a, b)])
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    n = args.items
    throttled = args.profile == "lab4"
    ua1_bound = 2 * mib / sum(writes.values()) if throttled else None
    cp_bound = mib / min(writes["lab1"], writes["lab2"]) if throttled else None
    rows = [("batch", f"{n} items = {files} files (media + sidecar), {mib:.0f} MiB, profile {args.profile}"),
            ("UA_1 end to end", f"{t['ua1']:7.2f} s  {n / t['ua1']:7.0f} items/s  {files / t['ua1']:7.0f} files/s"
                                + (f"  ({ua1_bound / t['ua1']:.0%} of its write bound {ua1_bound:.1f} s)"
                                   if throttled else "")),
            ("  of which", ", ".join(f"{k} {v:.2f} s" for k, v in st.seconds.items())),
            ("  queueing + RQ", f"{t['ua1'] - sum(st.seconds.values()):.2f} s"),
            ("cp x2 parallel + syncfs", f"{t['cp_parallel_syncfs']:7.2f} s  {n / t['cp_parallel_syncfs']:7.0f} items/s"
                                        + (f"  ({cp_bound / t['cp_parallel_syncfs']:.0%} of its write bound "
                                           f"{cp_bound:.1f} s; not throttled by cgroup v1)" if throttled else "")),
            ("UA_1 vs the by-hand copy", f"{t['cp_parallel_syncfs'] / t['ua1']:.2f}x (UA_1 also parses, writes "
                                         "PostgreSQL, packs 3B, empties 3A)")]
    report("UA_1 ingest of one batch", rows, {"items": n, "files": files, "mib": round(mib, 1),
                                              "bound_ua1_s": ua1_bound and round(ua1_bound, 2),
                                              "bound_cp_s": cp_bound and round(cp_bound, 2),
                                              "profile": args.profile, "steps": st.seconds,
                                              **{k: round(v, 3) for k, v in t.items()}})
    shutil.rmtree(work, ignore_errors=True)


def _config(work: Path, lab: Lab, url: str, redis_url: str) -> config.Settings:
    disks = "".join(f'[[disks]]\nlabel = "{k}"\npath = "{d.mountpoint}"\nread_mb_s = {d.profile.read_mbps}\n'
                    for k, d in lab.disks.items())
    return lab_config(work, url, redis_url, "[store]\nshard_size_mb = 256\ncopy_of_raw = 2\nwrite_ack = 2\n"
                      f"[ingest]\nsettle_s = 1.0\n[sources]\ngallery = \"gallery_dl\"\n{disks}", quota_gb=50)


if __name__ == "__main__":
    run_timed(main)
