"""Reading through `hoard mount`, side by side with the same bytes read other ways, one run.

    python bench/mount_read.py [--profile lab4|unthrottled] [--parts large,hot,small,entries]

large   sequential read of large objects (cold caches): through the mount vs straight from
        the shard file on the object's fastest replica vs mergerfs over the lab disks holding
        the same files as plain files (on that same disk)
hot     the same objects with the shard files in the page cache, through a fresh mount
        (our daemon's CPU path, not the kernel's FUSE page cache)
small   5,000 small files (4–64 KB) in their stored order: through the mount (a view) vs
        one read per file of the same files as plain files on the lab disks (file k on
        replica k mod 2 of its shard: the disks the store uses)
shuffled  what a training data loader does: 20,000 small files (4–64 KB, 2 replicas, a
        view), a seeded random order, 1, 4 and 16 concurrent readers (reader i reads items
        i, i+N, … like a DataLoader's workers), a fresh mount per run; names warm on both
        sides (every path stat'ed first, as a loader lists its dataset), then the page cache
        dropped (`echo 1`: file data cold, inodes and dentries kept). Baseline in the same run: the same files as plain files on the same lab disks,
        file k on replica k mod 2 of its shard (the store's placement, both copies used),
        read in the same order by the same number of readers. Reported: files/s, MiB/s,
        and amplification = bytes the disks read (sectors read, /sys/block/<loop>/stat,
        summed over the lab disks) / bytes served; bound = max(bytes / the summed read
        limit, files / the summed IOPS limit) of the disks holding the files' replicas,
        also with the read MiB/s `dd` measures through the throttle (`*_bound_measured*`)
entries `find` over a view of 100,000 entries (1,000 per directory) vs `find` over the same
        tree as plain files on one lab disk
warm    a training loader's later epochs: 100,000 small files (0.5–4 KiB, a view of 1,000 per
        directory) read by 4 readers (as `shuffled`) once in name order — the first pass,
        which puts every file's pages in the page cache — and then in a seeded random order:
        the warm epoch, timed. Through the mount, over the same files as plain files in the
        page cache (file k on lab1 or lab2 by k mod 2), and through mergerfs pooling those two
        directories (at its defaults, and with the kernel's caches on). All are mounted at
        once and the shuffled epoch is taken in WARM_ROUNDS rounds, one per way in turn, so
        each way meets the machine as it is then (this VM's kernel time per file swings run to
        run). Nothing here waits for a disk, so it runs outside the lab's throttle. Reported,
        per way, the median epoch: files/s of both passes, the CPU seconds its daemon and the
        readers spent, what the machine read from disk and the CPU time stolen from it by the
        hypervisor; the mount's share of plain and of the faster mergerfs in every round.

`--before DIR`: the small, shuffled and warm parts also mount with the daemon of another checkout
(`git worktree add DIR <commit>`), in the same run: before/after figures on a shared machine.

Runs on lab disks (root, loop devices, blkio; direct IO); every daemon and reader is
started inside the lab's throttled cgroup. Needs mergerfs (`apt-get install mergerfs`),
run at its defaults (and, in the warm part, also with the kernel's caches on: MERGERFS_CACHED). Units: MiB (2^20 bytes), as the lab throttles.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import (
    LAB4,
    REPO,
    Lab,
    disk_reads_by_disk,
    drop_caches,
    hoard_mounted,
    lab_store,
    measured_reads,
    mergerfs_mounted,
    names_warm_data_cold,
    read_all,
    read_file,
    report,
    run_timed,
    timed,
)

from hoardfs.adapters.synth import flat_files
from hoardfs.fsd.io.put import put_payloads
from hoardfs.fsd.outputs.views import define_view

MB = 1 << 20
MiB = 1 << 20
#: mergerfs with the kernel's caches on (the warm part's second mergerfs): its files' pages kept
#: across opens, entries, attributes and misses for an hour
MERGERFS_CACHED = "ro,cache.files=full,cache.entry=3600,cache.attr=3600,cache.negative_entry=3600"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=["lab4", "unthrottled"], default="lab4")
    ap.add_argument("--parts", default="large,hot,small,shuffled,entries,warm")
    ap.add_argument("--shuffled-files", type=int, default=20_000)
    ap.add_argument("--shuffled-n", type=int, default=2_000, help="files read per run (of the shuffled order)")
    ap.add_argument("--readers", default="1,4,16")
    ap.add_argument("--large-n", type=int, default=6)
    ap.add_argument("--large-mb", type=int, default=48)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--warm-files", type=int, default=100_000)
    ap.add_argument("--warm-readers", type=int, default=4)
    ap.add_argument("--open-shards", default="auto", help="the store's `open_shards` (auto, or a number: 1 writes "
                    "one shard at a time — an A/B of how the writer's spread shapes reads in stored order)")
    ap.add_argument("--before", type=Path, help="also mount with the daemon of this checkout (small, shuffled, warm)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    work = Path(tempfile.mkdtemp(prefix="hoard-bench-mount-", dir="/var/tmp"))
    t: dict[str, float] = {}
    rows: list[tuple[str, str]] = []
    with Lab(LAB4, throttle=args.profile == "lab4", direct_io=True) as lab:
        store = lab_store(lab, work, shard_size_mb=256, copy_of_raw=2, write_ack=2,
                          open_shards=args.open_shards if args.open_shards == "auto" else int(args.open_shards))
        cfg_path = store.cfg.source
        large = flat_files(work / "large", args.large_n, seed=7, lo=args.large_mb * MB, hi=args.large_mb * MB)
        small = flat_files(work / "small", args.small, seed=8) if "small" in parts else []
        big_res = store.put_many(large)
        small_res = store.put_many(small)
        if small_res:
            manifest = "".join(f"{r.sha256}  s/{Path(r.path).name}\n" for r in small_res).encode()
            define_view(store, "bench-small", manifest)
        shuf_res = []
        if "shuffled" in parts:
            shuf = flat_files(work / "shuf", args.shuffled_files, seed=9, lo=4096, hi=64 * 1024)
            shuf_res = store.put_many(shuf)
            define_view(store, "bench-shuffled", "".join(
                f"{r.sha256}  d{k // 1000:02d}/{Path(r.path).name}\n" for k, r in enumerate(shuf_res)).encode())
            shuf_where = {}  # sha → (view path, labels of the disks holding its replicas)
            for k, r in enumerate(shuf_res):
                meta = store.index.get_shard(store.index.lookup(bytes.fromhex(r.sha256)).shard_id)
                shuf_where[r.sha256] = (f"d{k // 1000:02d}/{Path(r.path).name}",
                                        [store.disks[u].label for u in meta.replicas])
        entries = []
        if "entries" in parts:
            payloads = [(f"e{i}", f"entry {i}\n".encode()) for i in range(args.entries)]
            entries = put_payloads(store, store.writer("generated"), payloads)
            define_view(store, "bench-entries", "".join(
                f"{r.sha256}  d{i // 1000:03d}/f{i:06d}.txt\n" for i, r in enumerate(entries)).encode())
        warm_rels: list[str] = []
        if "warm" in parts:
            warm = flat_files(work / "warm", args.warm_files, seed=10, lo=512, hi=4096)
            warm_res = store.put_many(warm)
            warm_rels = [f"d{k // 1000:03d}/{Path(r.path).name}" for k, r in enumerate(warm_res)]
            define_view(store, "bench-warm", "".join(
                f"{r.sha256}  {rel}\n" for r, rel in zip(warm_res, warm_rels, strict=True)).encode())
        # each large object straight from its fastest replica (the strongest direct read; the
        # mount picks a replica by its queues and speeds), and every replica's shard file for
        # the page-cache part
        where, replica_files = [], []
        for r in big_res:
            loc = store.index.lookup(bytes.fromhex(r.sha256))
            meta = store.index.get_shard(loc.shard_id)
            disks = store.replica_order(meta)
            disk = max(disks, key=lambda d: lab.disks[d.label].profile.read_mbps)
            where.append((r, disk, disk.find(meta.hex), loc))
            replica_files += [d.find(meta.hex) for d in disks]
        small_disks: set[str] = set()
        small_shards: set[int] = set()  # the shards the small files landed in (the writer's spread)
        small_home = {}  # the store's placement for the plain copies: file k on replica k mod 2
        for k, r in enumerate(small_res):
            loc = store.index.lookup(bytes.fromhex(r.sha256))
            small_shards.add(loc.shard_id)
            meta = store.index.get_shard(loc.shard_id)
            small_disks.update(store.disks[u].label for u in meta.replicas)
            small_home[Path(r.path).name] = store.disks[meta.replicas[k % len(meta.replicas)]].label
        store.close()
        total_large = sum(r.size for r in big_res)
        plain_branches = [d.mountpoint / "plain" for d in lab.disks.values()]
        for b in plain_branches:
            b.mkdir(exist_ok=True)
        for r, disk, _shard, _loc in where:  # mergerfs gets each file on the disk the mount reads from
            shutil.copyfile(r.path, disk.root / "plain" / f"{r.sha256}.bin")
        labels = sorted(lab.disks)
        for p in small:
            shutil.copyfile(p, lab.disks[small_home[p.name]].mountpoint / "plain" / p.name)
        plain_shuf = {}  # the store's placement: file k on replica k mod 2 of its shard
        for k, r in enumerate(shuf_res):
            rel, disks = shuf_where[r.sha256]
            dst = lab.disks[disks[k % len(disks)]].mountpoint / "plain-shuf" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.path, dst)
            plain_shuf[r.sha256] = dst
        warm_branches = [lab.disks[label].mountpoint / "plain-warm" for label in ("lab1", "lab2")]
        for k, rel in enumerate(warm_rels):  # file k on lab1 or lab2 (the disks with the most inodes)
            dst = warm_branches[k % 2] / rel
            if k % 1000 < 2:
                dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(warm[k], dst)
        os.sync()
        mnt, mfs = work / "mnt", work / "mergerfs"
        with lab.throttled():
            if {"small", "shuffled"} & set(parts):  # each disk's read as dd gets it through the throttle
                t["read_mib_s_measured"] = measured_reads(lab)
            if "large" in parts:
                drop_caches()
                with timed(t, "large_direct"):
                    for _r, _disk, shard, loc in where:
                        fd = os.open(shard, os.O_RDONLY)
                        off, end = loc.offset, loc.offset + loc.length
                        while off < end:
                            off += len(os.pread(fd, min(4 * MB, end - off), off))
                        os.close(fd)
                drop_caches()
                with hoard_mounted(cfg_path, mnt), timed(t, "large_mount"):
                    for r, *_ in where:
                        read_file(mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin")
                drop_caches()
                with mergerfs_mounted(plain_branches, mfs), timed(t, "large_mergerfs"):
                    for r, *_ in where:
                        read_file(mfs / f"{r.sha256}.bin")
                mb = total_large / MiB
                rows += [("large objects", f"{args.large_n} × {args.large_mb} MiB, cold caches, profile {args.profile}")]
                for k in ("large_direct", "large_mount", "large_mergerfs"):
                    rows.append((f"  {k[6:]}", f"{t[k]:6.2f} s  {mb / t[k]:7.1f} MiB/s"))
                rows.append(("  mount / direct shard read", f"{t['large_direct'] / t['large_mount']:.0%}"))
                rows.append(("  mount / mergerfs", f"{t['large_mergerfs'] / t['large_mount']:.2f}x"))
            if "hot" in parts:
                for shard in sorted(set(replica_files)):  # every replica's shard bytes into the page cache
                    read_file(shard, 4 * MB)
                with hoard_mounted(cfg_path, mnt), timed(t, "hot_mount"):
                    for r, *_ in where:
                        read_file(mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin", 128 << 10)
                rows.append(("hot (shards in page cache)", f"{t['hot_mount']:6.2f} s  "
                                                           f"{total_large / MiB / t['hot_mount']:7.1f} MiB/s through the mount"))
            if "small" in parts:
                drop_caches()
                with timed(t, "small_plain"):
                    for p in small:
                        read_file(lab.disks[small_home[p.name]].mountpoint / "plain" / p.name)
                drop_caches()
                with hoard_mounted(cfg_path, mnt):
                    read0 = disk_reads_by_disk(lab)
                    with timed(t, "small_mount"):
                        for p in small:
                            read_file(mnt / "views" / "bench-small" / "s" / p.name)
                    read1 = disk_reads_by_disk(lab)
                # each disk's reads while one reader walked stored order, and the seconds they take
                # at its limit: their sum against the wall time says how far the disks overlapped
                read_mib = {d: (read1[d] - read0[d]) / MiB for d in read0}
                t["small_mount_disks"] = {d: {"read_mib": round(m, 1),
                                              "at_limit_s": round(m / lab.disks[d].profile.read_mbps, 2)}
                                          for d, m in read_mib.items()}
                rows += [("small files", f"{len(small)} files, {sum(r.size for r in small_res) / MiB:.0f} MiB, "
                                         "cold caches, in stored order"),
                         ("  per-file plain ext4", f"{t['small_plain']:6.2f} s  {len(small) / t['small_plain']:7.0f} files/s"),
                         ("  through the mount", f"{t['small_mount']:6.2f} s  {len(small) / t['small_mount']:7.0f} files/s"),
                         ("  mount vs plain", f"{t['small_plain'] / t['small_mount']:.1f}x")]
                mbps = sum(lab.disks[d].profile.read_mbps for d in small_disks)
                bound = sum(r.size for r in small_res) / MiB / mbps  # the lab's limits are MiB/s
                t["small_bound"], t["small_disks"] = bound, "+".join(sorted(small_disks))
                t["small_shards"] = len(small_shards)
                dd = sum(t["read_mib_s_measured"][d] for d in small_disks)
                t["small_bound_measured"] = sum(r.size for r in small_res) / MiB / dd
                rows.append(("  disk bound (replicas on " + "+".join(sorted(small_disks)) + ")",
                             f"{bound:6.2f} s — the mount reaches {bound / t['small_mount']:.0%} of it; "
                             f"{t['small_bound_measured']:.2f} s at the dd-measured {dd:.1f} MiB/s: "
                             f"{t['small_bound_measured'] / t['small_mount']:.0%}"))
                if args.before:
                    drop_caches()
                    with hoard_mounted(cfg_path, mnt, repo=args.before), timed(t, "small_before"):
                        for p in small:
                            read_file(mnt / "views" / "bench-small" / "s" / p.name)
                    rows.append(("  through the mount before", f"{t['small_before']:6.2f} s  "
                                                              f"{len(small) / t['small_before']:7.0f} files/s"))
            if "shuffled" in parts:
                rows += shuffled_part(lab, args, cfg_path, mnt, shuf_res, shuf_where, plain_shuf, t)
        if "entries" in parts:
            plain = lab.disks[labels[0]].mountpoint / "entries"
            for i in range(len(entries)):
                d = plain / f"d{i // 1000:03d}"
                if i % 1000 == 0:
                    d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:06d}.txt").write_bytes(f"entry {i}\n".encode())
            drop_caches()
            with lab.throttled(), timed(t, "entries_plain"):
                n_plain = _count(["find", str(plain)])
            with lab.throttled(), hoard_mounted(cfg_path, mnt):
                with timed(t, "entries_mount"):
                    n_mount = _count(["find", str(mnt / "views" / "bench-entries")])
                with timed(t, "entries_mount_ls"):
                    _count(["ls", "-R", str(mnt / "views" / "bench-entries")])
            rows += [("entries", f"{len(entries)} files in {len(entries) // 1000} directories"),
                     ("  find, plain ext4 (cold)", f"{t['entries_plain']:6.2f} s  {n_plain / t['entries_plain']:9.0f} entries/s"),
                     ("  find, mount", f"{t['entries_mount']:6.2f} s  {n_mount / t['entries_mount']:9.0f} entries/s"),
                     ("  ls -R, mount", f"{t['entries_mount_ls']:6.2f} s  {n_mount / t['entries_mount_ls']:9.0f} entries/s")]
        if "warm" in parts:  # the page cache only: no disk is read in the timed epoch, nothing throttled
            rows += warm_part(args, cfg_path, mnt, mfs, warm_rels, warm_branches, t)
    # (the commit and the machine, with its load at the start and the end, are report()'s)
    report("hoard mount reads", rows, {"profile": args.profile, "units": "MiB = 2^20 bytes",
                                       **{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()}})
    shutil.rmtree(work, ignore_errors=True)


def shuffled_part(lab, args, cfg_path: Path, mnt: Path, res, where, plain, t: dict) -> list[tuple[str, str]]:
    import random

    order = list(res)
    random.Random(11).shuffle(order)
    sample = order[:args.shuffled_n]
    served = sum(r.size for r in sample)
    used = sorted({label for r in sample for label in where[r.sha256][1]})
    mib_s = sum(lab.disks[label].profile.read_mbps for label in used)
    iops = sum(lab.disks[label].profile.iops for label in used)
    bound = max(served / MiB / mib_s, len(sample) / iops)
    t["shuffled_files"], t["shuffled_bytes"], t["shuffled_bound_s"] = len(sample), served, bound
    t["shuffled_disks"], t["shuffled_iops"], t["shuffled_mib_s"] = "+".join(used), iops, mib_s
    dd = sum(t["read_mib_s_measured"][label] for label in used)  # (dd measures MiB/s, not IOPS)
    t["shuffled_bound_measured_s"] = max(served / MiB / dd, len(sample) / iops)
    rows = [("shuffled small files", f"{len(sample)} of {len(res)} files (4–64 KB, {served / MiB:.0f} MiB) in "
                                     f"random order, cold, profile {args.profile}; replicas on {'+'.join(used)}; "
                                     f"bound {bound:.2f} s (max of {mib_s:.0f} MiB/s, {iops} IOPS; at the dd-measured "
                                     f"{dd:.1f} MiB/s {t['shuffled_bound_measured_s']:.2f} s)")]
    for n in [int(x) for x in args.readers.split(",")]:
        for kind in ("plain", "mount") + (("before",) if args.before else ()):
            # names warm on both sides (a loader lists its dataset first), file data cold: stat
            # every path, then drop only the page cache — plain ext4 keeps its inodes and
            # directory entries, as the mount keeps its manifests and the kernel its dentries
            drop_caches()
            if kind != "plain":
                with hoard_mounted(cfg_path, mnt, repo=args.before if kind == "before" else REPO):
                    got, secs, disk = names_warm_data_cold(
                        lab, [mnt / "views" / "bench-shuffled" / where[r.sha256][0] for r in sample], n)
            else:
                got, secs, disk = names_warm_data_cold(lab, [plain[r.sha256] for r in sample], n)
            assert got == served, (got, served)
            key = f"shuffled_{kind}_{n}"
            t[key], t[key + "_disk_bytes"] = secs, disk
            rows.append((f"  {kind:<5} {n:>2} reader{'s' if n > 1 else ' '}",
                         f"{secs:6.2f} s {len(sample) / secs:7.0f} files/s {served / MiB / secs:6.1f} MiB/s  "
                         f"read {disk / served:5.2f}x served  {bound / secs:4.0%} of bound"))
        rows.append((f"  mount / plain, {n} readers", f"{t[f'shuffled_plain_{n}'] / t[f'shuffled_mount_{n}']:.2f}x"))
        if args.before:
            rows.append((f"  mount before / plain, {n} readers",
                         f"{t[f'shuffled_plain_{n}'] / t[f'shuffled_before_{n}']:.2f}x"))
    return rows


#: shuffled warm epochs per way of reading, taken in rounds (plain, mergerfs, cached mergerfs,
#: mount, then again): every way sees the machine as it is in that round (on this VM a warm
#: epoch's kernel time per file swung 3x between days, and 64-112 % between single runs)
WARM_ROUNDS = 5


def warm_part(args, cfg_path: Path, mnt: Path, mfs: Path, rels: list[str], branches: list[Path],
              t: dict) -> list[tuple[str, str]]:
    """The `warm` part (module docstring): every way of reading mounted at once; each read once
    in name order (the first pass), then WARM_ROUNDS rounds of one timed shuffled epoch per way,
    in turn. Per way: the median epoch (`warm_<way>`, the one its other figures are of), every
    epoch, the daemon's CPU seconds, the readers' CPU, the disk reads and the machine's steal
    time during it."""
    import random
    import resource
    import statistics
    import time
    from contextlib import ExitStack

    order = list(range(len(rels)))
    random.Random(12).shuffle(order)
    n = args.warm_readers
    ways: dict[str, tuple[list[Path], object]] = {}

    def first_pass(kind: str, root_of, proc=None) -> None:
        paths = [root_of(k) for k in range(len(rels))]
        t0 = time.monotonic()
        t["warm_bytes"] = read_all(paths, n)
        t[f"warm_{kind}_first"] = time.monotonic() - t0
        ways[kind] = ([paths[k] for k in order], proc)

    def epoch(kind: str) -> dict[str, float]:
        paths, proc = ways[kind]
        cpu0 = _cpu_s(proc.pid) if proc else 0.0
        disk0, steal0, ru0 = _vmstat(), _steal_s(), resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        got = read_all(paths, n)
        took = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)  # (the readers are this process's threads)
        assert got == t["warm_bytes"], (kind, got, t["warm_bytes"])
        return {"s": took, "readers_user_s": round(ru1.ru_utime - ru0.ru_utime, 2),
                "readers_sys_s": round(ru1.ru_stime - ru0.ru_stime, 2),
                # (what the whole machine read from block devices: a warm epoch reads nothing,
                # unless its pages were taken away after the first pass)
                "disk_read_kib": _vmstat()["pgpgin"] - disk0["pgpgin"],
                # (CPU time the hypervisor gave other guests while this one wanted it, all CPUs)
                "steal_s": round(_steal_s() - steal0, 2),
                **({"daemon_cpu_s": round(_cpu_s(proc.pid) - cpu0, 2)} if proc else {})}

    kinds = ["plain", "mergerfs", "mergerfs_cached", "mount"]
    mfs_cached = mfs.with_name(mfs.name + "-cached")
    with ExitStack() as mounted:
        first_pass("plain", lambda k: branches[k % 2] / rels[k])
        proc = mounted.enter_context(mergerfs_mounted(branches, mfs))
        first_pass("mergerfs", lambda k: mfs / rels[k], proc)
        # (the strongest fair mergerfs: the kernel keeps its files' pages and its entries and
        # attributes, as the mount's immutable objects let it — at its defaults each
        # warm read goes through its daemon)
        proc = mounted.enter_context(mergerfs_mounted(branches, mfs_cached, MERGERFS_CACHED))
        first_pass("mergerfs_cached", lambda k: mfs_cached / rels[k], proc)
        proc = mounted.enter_context(hoard_mounted(cfg_path, mnt))
        first_pass("mount", lambda k: mnt / "views" / "bench-warm" / rels[k], proc)
        if args.before:
            t["warm_before_commit"] = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                                                     capture_output=True, text=True).stdout.strip()
            before_mnt = mnt.with_name(mnt.name + "-before")
            proc = mounted.enter_context(hoard_mounted(cfg_path, before_mnt, repo=args.before))
            first_pass("before", lambda k: before_mnt / "views" / "bench-warm" / rels[k], proc)
            kinds.append("before")
        rounds = [{kind: epoch(kind) for kind in kinds} for _ in range(WARM_ROUNDS)]
    t["warm_rounds"] = rounds
    for kind in kinds:
        mid = sorted((r[kind] for r in rounds), key=lambda e: e["s"])[len(rounds) // 2]
        t[f"warm_{kind}"] = mid["s"]
        for key, value in mid.items():
            if key != "s":
                t[f"warm_{kind}_{key}"] = value
    files = len(rels)
    rows = [("warm epochs", f"{files:,} files (0.5–4 KiB, {t['warm_bytes'] / MiB:.0f} MiB), {n} readers, page "
                            "cache warm, not throttled: a first pass in name order, then "
                            f"{WARM_ROUNDS} rounds of one shuffled epoch per way (the median shown)")]
    for kind in kinds:
        label = {"plain": "plain files", "mergerfs": "mergerfs", "mergerfs_cached": f"mergerfs -o {MERGERFS_CACHED}",
                 "mount": "hoard mount", "before": f"hoard mount at {t.get('warm_before_commit', '?')}"}[kind]
        cpu = t.get(f"warm_{kind}_daemon_cpu_s")
        rows.append((f"  {label}", f"{t[f'warm_{kind}']:6.2f} s {files / t[f'warm_{kind}']:8.0f} files/s warm epoch"
                                   f"{'' if cpu is None else f' ({cpu:.1f} s daemon CPU)'}, "
                                   f"{t[f'warm_{kind}_disk_read_kib'] / 1024:.0f} MiB read from disk, readers "
                                   f"{t[f'warm_{kind}_readers_user_s']:.1f} s user + {t[f'warm_{kind}_readers_sys_s']:.1f}"
                                   f" s system, {t[f'warm_{kind}_steal_s']:.1f} s stolen; first pass "
                                   f"{files / t[f'warm_{kind}_first']:7.0f} files/s"))
    for kind in kinds[3:]:
        shares = [r["plain"]["s"] / r[kind]["s"] for r in rounds]  # (in the rounds' order)
        vs = [min(r["mergerfs"]["s"], r["mergerfs_cached"]["s"]) / r[kind]["s"] for r in rounds]
        t[f"warm_{kind}_share_of_plain_by_round"] = [round(x, 3) for x in shares]
        t[f"warm_{kind}_vs_faster_mergerfs_by_round"] = [round(x, 3) for x in vs]
        rows.append((f"  {kind} / plain, / the faster mergerfs (each round)",
                     f"median {statistics.median(shares):.0%}, {statistics.median(vs):.2f}x "
                     f"(rounds {', '.join(f'{x:.0%}' for x in shares)}; {', '.join(f'{x:.2f}x' for x in vs)})"))
    return rows


def _steal_s() -> float:
    """Seconds of CPU time stolen from this guest by the hypervisor since boot, all CPUs
    (/proc/stat's `cpu` line, its eighth value)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def _vmstat() -> dict[str, int]:
    """/proc/vmstat's counters (pgpgin: KiB read from block devices since boot)."""
    return {k: int(v) for k, v in (row.split() for row in Path("/proc/vmstat").read_text().splitlines())}


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(cmd: list[str]) -> int:
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return out.count(b"\n")


if __name__ == "__main__":
    run_timed(main)
