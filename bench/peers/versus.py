"""hoardfs and its peers on one corpus, one table.

    make peers [ARGS='--items 250 --profile lab4|unthrottled']   (installs git-annex, snapraid, mergerfs, time)
    python bench/peers/versus.py [--items 250] [--profile lab4|unthrottled] [--readers 4]
                                 [--large-n 2 --large-mb 256] [--ram-objects 1000000 --ram-read 100000
                                 --ram-annex 50000] [--ram-only]

One corpus from the S08 generator (hoardfs.adapters.synth: gallery-dl, forum and API batches, ~97 %
files under 1 MiB, some content repeated across batches, a few files of up to 8 MiB) is
stored with two copies on the lab's lab1 (50 MiB/s write) and lab2 (40 MiB/s write) by:

- **hoardfs** — `put_many` with `write_ack = 2`, `copy_of_raw = 2` (each group fdatasync'ed
  on both disks before it is indexed);
- **cp ×2 + syncfs** — `cp -r` to both disks in parallel, then one `sync -f` per disk;
- **git-annex** (numcopies 2, its defaults otherwise) — the corpus copied into a repository
  on lab1, `git annex add`, `git commit`, `git annex copy --to` a bare repository on lab2
  with as many jobs as CPUs, then `sync -f` of both (git-annex does not fsync content);
- **SnapRAID** — the corpus copied to a data disk (lab1), `snapraid sync` writes the parity
  to lab2 (one data disk + one parity = two copies' protection), content files on both.

**mergerfs** pools disks but keeps one copy of each file: it has no ingest, export, restore
or bytes-on-disk row, only the read and RAM rows (a pool over the four lab disks,
`category.create=pfrd`, the corpus copied in once, untimed).

Rows (cold: page cache dropped first; warm: said so):

- **ingest** (source warm: every variant reads the corpus from the page cache; timed until
  durable) — files/s, MiB/s; bound = corpus bytes / the slower disk's write limit (both disks
  take every byte).
- **small-file export** (cold) — copy everything out to a directory off the lab, the way a
  stage to 3C or an export to 3D does, then one syncfs: hoardfs with `hoardfs.fsd.outputs.materialize` (the
  batch planner: every record from the replica that balances the two disks); cp with two
  `cp -r` in parallel, half of the batches from each disk's copy (the strongest use of two
  plain copies); git-annex and SnapRAID with `cp -rL` from the one disk holding their files
  (git-annex's working tree on lab1, SnapRAID's data disk). Bound: corpus bytes / (lab1 read
  + lab2 read) — both copies read at their limits; a peer reading one disk can reach at most
  that disk's share.
- **small-file reads, shuffled and sequential** (cold data, warm names) — every file of the
  corpus under 1 MiB read whole by `--readers` threads (reader i takes items i, i+N, …, as a
  DataLoader's workers) in (a) a seeded shuffled order, (b) the corpus's own order (sorted
  paths: the order it was stored in). Every path is stat'ed first (a loader lists its
  dataset), then the page cache is dropped (`echo 1`: inodes and dentries stay, on every
  side). hoardfs: through `hoard mount`, a view naming every corpus path, a fresh daemon per
  run; cp: each file from the copy a reader knowing both would choose (greedy, in the read
  order: the copy whose disk finishes its share first at its read limit — both disks busy
  all along); git-annex: its working tree (symlinks into its object store on lab1); SnapRAID:
  its data disk (lab1); mergerfs: the pool. Every daemon and reader runs in the lab's
  throttled cgroup. files/s, MiB/s; bound = bytes / the summed read limits of the disks that
  hold a copy (hoardfs: its replicas' disks, lab1 + lab2; cp and git-annex: lab1 + lab2 —
  git-annex's second copy is in a bare repository, not readable as files; SnapRAID: lab1,
  the parity is no copy; mergerfs: the disks its pool put files on). Plain small files are
  also bound by the disks' IOPS (files / the summed IOPS limits: one read per file at
  least): each row shows its share of that bound too — hoardfs, whose files sit packed in
  shards, is not held to one read per file and can pass it; git-annex's working tree costs
  more than one (each open follows a symlink into .git/annex/objects). The JSON has the
  bytes the lab disks read during each read run (`*_disk_bytes`, /sys/block/<loop>/stat).
- **large-file read** (cold) — `--large-n` files of `--large-mb` MiB, in a lab of their own
  (lab1 + lab2 of lab4, so that the other rows' disks hold only the corpus): stored by
  hoardfs with two copies, each read whole, one after the other, by one reader through the
  mount (by-hash/) vs straight from a plain copy on the disk the mount reads it from (its
  fastest replica: the direct read cp, git-annex and SnapRAID give) vs through a mergerfs
  pool holding that plain copy. Goal: the mount ≥ 95 % of direct.
- **restore of a lost disk** (cold) — lab1 is lost (lazy unmount) and each system restores
  what it held onto lab3 (30 MiB/s write) from what lab2 holds: `hoard rebuild --onto`,
  `cp -r` of lab2's copy, `git clone` + `git annex get`, `snapraid fix -d` with the data disk
  moved to lab3. Bound = bytes restored / min(lab2 read, lab3 write).
- **bytes on disk** — allocated bytes (`du --block-size=1`, what the filesystem spends, 4 KiB
  blocks included) per byte of corpus, index and content files included.
- **RAM at `--ram-objects` objects** (warm; bench/peers/ram.py says how each is measured):
  hoardfs's mount daemon's memory after listing and reading through a view and by-hash/ —
  anonymous (its heap) and file-backed (the LMDB index's mapped pages, page cache the kernel
  can drop) shown apart, and the peak of both (VmHWM) — with its LMDB index's size;
  mergerfs's daemon's memory over the same files, split the same way; the peak RSS
  of `snapraid sync` and of `git annex add` / `git annex find` (git-annex at `--ram-annex`
  files, which the row names when it is below `--ram-objects`). `--ram-only` runs these rows
  alone.

Every bound divides by the disks' limits as `dd` gets them through the throttle at the start
of the run (O_DIRECT, `measured_mib_s` in the JSON: a few per cent above the set limits),
except the large-file row's, which is a share of the direct read. hoardfs stores a repeated
content once: its ingest and export shares are over the bytes it holds (`unique_bytes`), the
share over the whole corpus — a credit the peers do not get — shown apart.
Units are the lab's: MiB/s (blkio throttles in 2^20 bytes/s). cgroup v1 does not throttle
buffered writeback, so the buffered peers can beat a write bound on the lab4
profile — their ingest shares are upper limits, hoardfs's (it syncs every group) are not.
Reads are throttled for everyone. With `--profile unthrottled` no share of a bound is shown.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    LAB4,
    Lab,
    MiB,
    allocated,
    drop_caches,
    fair_copies,
    hoard_mounted,
    lab_profile,
    lab_store,
    measured_limits,
    mergerfs_mounted,
    names_warm_data_cold,
    parallel,
    read_file,
    report,
    run_timed,
    timed,
)
from ram import measure as measure_ram

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.fsd.core.disks import DiskState
from hoardfs.fsd.maintenance.rebuild import rebuild
from hoardfs.fsd.outputs.materialize import Item, materialize
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store

PEERS = ("hoardfs", "cp_x2_syncfs", "git_annex", "snapraid")
READERS = (*PEERS, "mergerfs")  # mergerfs keeps one copy: it has read rows only
SMALL = 1 << 20  # a small file: under 1 MiB (the generator's large files are 1-8 MiB)
ORDERS = ("shuffled", "sequential")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _version(package: str) -> str:
    """The Debian package's version (snapraid's own --version says "none" in Debian's build)."""
    res = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    return f"{package} {res.stdout.strip() or '?'}"


def corpus(root: Path, items: int) -> tuple[Path, int, int]:
    """The generated batches' files under root/corpus (generator bookkeeping removed)."""
    generate(root / "corpus", Spec(seed=7, batches=4, items_per_batch=items, large_max_mb=8, repeat_fraction=0.10))
    shutil.rmtree(root / "corpus" / "_derived", ignore_errors=True)
    (root / "corpus" / "truth.json").unlink(missing_ok=True)
    files = [p for p in (root / "corpus").rglob("*") if p.is_file()]
    return root / "corpus", len(files), _size(root / "corpus")


def warm(src: Path) -> None:
    """Every variant reads the corpus from the page cache (it is not what is measured)."""
    for p in src.rglob("*"):
        if p.is_file():
            p.read_bytes()


def check_room(m: dict[str, Path], src: Path, total: int, items: int) -> None:
    """Stop before hours are spent if the corpus cannot fit: lab2 holds three copies
    (hoardfs, cp, git-annex's bare repository) and SnapRAID's parity (at least one 256 KiB
    block per file); lab3 takes four restored copies."""
    parity = sum(-(-p.stat().st_size // (256 << 10)) * (256 << 10) for p in src.rglob("*") if p.is_file())
    for label, need in (("lab2", 3 * total + parity), ("lab3", 4 * total)):
        st = os.statvfs(m[label])
        if need > st.f_bavail * st.f_frsize * 0.97:  # some room for directories, content files, journals
            raise SystemExit(f"--items {items} does not fit {label}: it needs {need / MiB:.0f} MiB, "
                             f"{st.f_bavail * st.f_frsize / MiB:.0f} MiB free; choose fewer --items")


def small_reads(lab: Lab, store: Store, results: list, src: Path, annex: Path, work: Path, readers: int,
                speed: dict[str, float]) -> dict:
    """The small-file read rows (module docstring): every system, both orders, cold data
    and warm names, inside the lab's throttled cgroup (the caller's); `speed`: each disk's read
    MiB/s (dd's, measured). Sets up hoardfs's view and the mergerfs pool (untimed) and removes
    the pool's files after."""
    m = {label: d.mountpoint for label, d in lab.disks.items()}
    iops = {label: d.profile.iops for label, d in lab.disks.items()}
    small = [(str(Path(r.path).relative_to(src)), r) for r in results if r.size < SMALL]  # sorted: stored order
    define_view_rows(store, "corpus", ((str(Path(r.path).relative_to(src)), r.sha256) for r in results))
    pool = [m[d] / "pool" for d in sorted(m)]
    for b in pool:
        b.mkdir()
    pool_mnt, hoard_mnt = work / "pool", work / "hoard-mnt"
    # one copy per file, placed by mergerfs (pfrd; minfreespace: its 4 GiB default is more than a lab disk holds)
    with mergerfs_mounted(pool, pool_mnt, "category.create=pfrd,minfreespace=64M"):
        _run(["cp", "-r", f"{src}/.", str(pool_mnt)])
    holders = {
        "hoardfs": {store.disks[u].label for _, r in small
                    for u in store.index.get_shard(store.index.lookup(bytes.fromhex(r.sha256)).shard_id).replicas},
        "cp_x2_syncfs": {"lab1", "lab2"}, "git_annex": {"lab1", "lab2"}, "snapraid": {"lab1"},
        "mergerfs": {b.parent.name for b in pool for rel, _ in small if (b / rel).exists()}}
    nbytes = sum(r.size for _, r in small)
    out: dict = {"files": len(small), "bytes": nbytes, "readers": readers,
                 "disks": {k: "+".join(sorted(v)) for k, v in holders.items()},
                 "bound_s": {k: nbytes / (sum(speed[d] for d in v) * MiB) for k, v in holders.items()},
                 "iops_bound_s": {k: len(small) / sum(iops[d] for d in v) for k, v in holders.items()}}
    shuffled = list(small)
    random.Random(11).shuffle(shuffled)
    for order, files in (("shuffled", shuffled), ("sequential", small)):
        cp_copies = fair_copies(speed, [(r.size, [(d, m[d] / "cp" / rel) for d in ("lab1", "lab2")])
                                        for rel, r in files])
        for name in READERS:
            drop_caches()
            if name == "hoardfs":
                with hoard_mounted(store.cfg.source, hoard_mnt):
                    got, secs, disk = names_warm_data_cold(lab, [hoard_mnt / "views" / "corpus" / rel
                                                                 for rel, _ in files], readers)
            elif name == "mergerfs":
                with mergerfs_mounted(pool, pool_mnt):
                    got, secs, disk = names_warm_data_cold(lab, [pool_mnt / rel for rel, _ in files], readers)
            else:
                root = {"git_annex": annex, "snapraid": m["lab1"] / "snap"}.get(name)
                paths = cp_copies if root is None else [root / rel for rel, _ in files]
                got, secs, disk = names_warm_data_cold(lab, paths, readers)
            if got != nbytes:
                raise SystemExit(f"{order} reads by {name}: {got} bytes read, the small files have {nbytes}")
            out[f"{order}_{name}_s"], out[f"{order}_{name}_disk_bytes"] = secs, disk
    for b in pool:  # lab3 must be empty again for the restore
        shutil.rmtree(b)
    return out


def large_files(root: Path, n: int, mib: int) -> list[Path]:
    """`n` files of `mib` MiB of seeded pseudo-random bytes (made 1 MiB at a time: flat_files
    makes a file in one piece, and `randbytes` stops at 256 MiB)."""
    root.mkdir(parents=True)
    paths = [root / f"large-{i}.bin" for i in range(n)]
    for i, p in enumerate(paths):
        rng = random.Random(f"large:{i}")
        with open(p, "wb") as f:
            for _ in range(mib):
                f.write(rng.randbytes(MiB))
    return paths


def large_reads(args, work: Path) -> dict:
    """The large-file row (module docstring), in a lab of its own: lab1 + lab2 of lab4."""
    files = large_files(work / "large", args.large_n, args.large_mb)
    t: dict = {}
    (work / "large-store").mkdir()
    with Lab(LAB4[:2], throttle=args.profile == "lab4", direct_io=True) as lab:
        store = lab_store(lab, work / "large-store", ["lab1", "lab2"], shard_size_mb=256, write_ack=2,
                          copy_of_raw=2)
        res = store.put_many(files)
        plain, pool = [], [d.mountpoint / "plain" for d in lab.disks.values()]
        for b in pool:
            b.mkdir()
        for r in res:  # a plain copy on the disk the mount streams it from: its fastest replica
            meta = store.index.get_shard(store.index.lookup(bytes.fromhex(r.sha256)).shard_id)
            disk = max(store.replica_order(meta), key=lambda d: lab.disks[d.label].profile.read_mbps)
            plain.append(disk.root / "plain" / Path(r.path).name)
            shutil.copyfile(r.path, plain[-1])
            t["disk"] = disk.label
        store.close()
        os.sync()
        mnt = work / "large-mnt"
        with lab.throttled():
            drop_caches()
            with timed(t, "direct_s"):
                for p in plain:
                    read_file(p)
            drop_caches()
            with hoard_mounted(store.cfg.source, mnt), timed(t, "hoardfs_s"):
                for r in res:
                    read_file(mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / f"{r.sha256}.bin")
            drop_caches()
            with mergerfs_mounted(pool, work / "large-pool"), timed(t, "mergerfs_s"):
                for p in plain:
                    read_file(work / "large-pool" / p.name)
        t["read_mib_s"] = lab.disks[t["disk"]].profile.read_mbps
    t["bytes"] = sum(r.size for r in res)
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    # 500 (~490 MiB) does not fit lab2: three copies and SnapRAID's parity (a 256 KiB block per
    # file) need 2,760 MiB of its 1,915; 250 (256 MiB, 1,751 files) need 1,429
    ap.add_argument("--items", type=int, default=250, help="items per generated batch (4 batches)")
    ap.add_argument("--profile", choices=["lab4", "unthrottled"], default="lab4")
    ap.add_argument("--readers", type=int, default=4, help="concurrent readers of the small-file reads")
    ap.add_argument("--large-n", type=int, default=2, help="large files for the large-file read")
    ap.add_argument("--large-mb", type=int, default=256, help="their size in MiB")
    ap.add_argument("--ram-objects", type=int, default=1_000_000, help="objects for the RAM rows")
    ap.add_argument("--ram-read", type=int, default=100_000, help="of them, read through the mounts")
    ap.add_argument("--ram-annex", type=int, default=50_000,
                    help="at most this many for git-annex's RAM row (`git annex add` ran ~115 files/s here)")
    ap.add_argument("--ram-only", action="store_true", help="only the RAM rows")
    args = ap.parse_args()
    for tool in ("git-annex", "snapraid", "mergerfs", "/usr/bin/time"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `apt-get install git-annex snapraid mergerfs time` "
                             "(`make peers` does)")
    work = Path(tempfile.mkdtemp(prefix="hoard-peers-", dir="/var/tmp"))
    try:
        run(args, work)
    finally:  # the RAM rows leave millions of files behind
        subprocess.run(["rm", "-rf", str(work)])


def run(args, work: Path) -> None:
    env = os.environ | {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench",
                        "GIT_COMMITTER_EMAIL": "b@x"}
    os.environ.update(env)
    versions = [_version(p) for p in ("git-annex", "snapraid", "mergerfs", "coreutils")]
    if args.ram_only:
        rows, ram = measure_ram(work / "ram", args.ram_objects, args.ram_read, args.ram_annex, args.readers)
        rows.append(("versions", "; ".join(versions)))
        report("hoardfs and its peers: RAM", rows, {"ram": ram, "versions": versions})
        return
    src, n_files, total = corpus(work, args.items)
    t: dict[str, float] = {}
    restore_bytes: dict[str, int] = {}
    on_disk: dict[str, int] = {}
    with Lab(LAB4, throttle=args.profile == "lab4", direct_io=True) as lab:
        m = {label: lab.disks[label].mountpoint for label in lab.disks}
        check_room(m, src, total, args.items)
        profile = lab_profile(lab)
        # every bound from what dd gets through the throttle (a few per cent above the set limits)
        limits = None
        if args.profile == "lab4":
            with lab.throttled():
                limits = measured_limits(lab)
        lim = limits or {d: {"read_mib_s": lab.disks[d].profile.read_mbps,
                             "write_mib_s": lab.disks[d].profile.write_mbps} for d in lab.disks}
        slower_write = min(lim[x]["write_mib_s"] for x in ("lab1", "lab2"))
        restore_bw = min(lim["lab2"]["read_mib_s"], lim["lab3"]["write_mib_s"])
        lab_read = {d: lim[d]["read_mib_s"] for d in ("lab1", "lab2")}
        store = lab_store(lab, work, ["lab1", "lab2", "lab3"], shard_size_mb=256, write_ack=2, copy_of_raw=2)
        # hoardfs places on the two emptiest disks with room; lab3 is kept out of the ingest
        store.set_disk_state("lab3", DiskState.DRAINING, "kept empty for the restore")
        # set-up that is not timed: repositories and configuration
        annex, bare = m["lab1"] / "annex", m["lab2"] / "annex.git"
        _run(["git", "init", "-q", "--bare", str(bare)])
        _run(["git", "annex", "init", "lab2"], cwd=bare)
        _run(["git", "init", "-q", str(annex)])
        _run(["git", "annex", "init", "lab1"], cwd=annex)
        _run(["git", "annex", "numcopies", "2"], cwd=annex)
        _run(["git", "remote", "add", "lab2", str(bare)], cwd=annex)
        snap_conf = work / "snapraid.conf"
        snap_conf.write_text(f"parity {m['lab2']}/snapraid.parity\ncontent {m['lab1']}/snapraid.content\n"
                             f"content {m['lab2']}/snapraid.content\ndata d1 {m['lab1']}/snap/\n")
        (m["lab1"] / "snap").mkdir()
        with lab.throttled():
            for name in PEERS:
                drop_caches()
                warm(src)
                t0 = time.monotonic()
                if name == "hoardfs":
                    results = [r for r in store.put_many(sorted(p for p in src.rglob("*") if p.is_file()))]
                    assert not [r for r in results if r.status == "rejected"]
                elif name == "cp_x2_syncfs":
                    parallel([["cp", "-r", str(src), str(m[d] / "cp")] for d in ("lab1", "lab2")])
                    parallel([["sync", "-f", str(m[d] / "cp")] for d in ("lab1", "lab2")])
                elif name == "git_annex":
                    _run(["cp", "-r", f"{src}/.", str(annex)])
                    _run(["git", "annex", "add", "--quiet", "."], cwd=annex)
                    _run(["git", "commit", "-q", "-m", "corpus"], cwd=annex)
                    _run(["git", "annex", "copy", "--quiet", f"--jobs={os.cpu_count()}", "--to", "lab2", "."],
                         cwd=annex)
                    _run(["git", "annex", "sync", "--quiet", "--no-content", "lab2"], cwd=annex)  # branches + location log
                    parallel([["sync", "-f", str(annex)], ["sync", "-f", str(bare)]])
                else:
                    _run(["cp", "-r", f"{src}/.", str(m["lab1"] / "snap")])
                    _run(["snapraid", "-c", str(snap_conf), "sync"])
                    parallel([["sync", "-f", str(m["lab1"])], ["sync", "-f", str(m["lab2"])]])
                t[f"ingest_{name}"] = time.monotonic() - t0
            shard_dirs = [m[d] / "shards" for d in ("lab1", "lab2")]
            on_disk["hoardfs"] = allocated(*shard_dirs) + allocated(Path(store.cfg.ssd.index_dir))
            on_disk["cp_x2_syncfs"] = allocated(m["lab1"] / "cp", m["lab2"] / "cp")
            on_disk["git_annex"] = allocated(annex, bare)
            on_disk["snapraid"] = allocated(m["lab1"] / "snap", m["lab2"] / "snapraid.parity",
                                             m["lab1"] / "snapraid.content", m["lab2"] / "snapraid.content")
            # small-file export: everything out to a directory off the lab, then syncfs
            out = work / "export"
            for name in PEERS:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                drop_caches()
                t0 = time.monotonic()
                if name == "hoardfs":
                    items = [Item(str(Path(r.path).relative_to(src)), r.sha256, r.size) for r in results]
                    materialize(store, items, out)
                elif name == "cp_x2_syncfs":
                    batches = sorted(p.name for p in (m["lab1"] / "cp").iterdir())
                    parallel([["cp", "-r", *[str(m[d] / "cp" / b) for b in batches[i::2]], str(out)]
                              for i, d in enumerate(("lab1", "lab2"))])
                    _run(["sync", "-f", str(out)])
                elif name == "git_annex":
                    _run(["cp", "-rL", *[str(p) for p in annex.iterdir() if p.name != ".git"], str(out)])
                    _run(["sync", "-f", str(out)])
                else:
                    _run(["cp", "-r", f"{m['lab1'] / 'snap'}/.", str(out)])
                    _run(["sync", "-f", str(out)])
                t[f"export_{name}"] = time.monotonic() - t0
                if _size(out) != total:
                    raise SystemExit(f"export by {name}: {_size(out)} bytes out, the corpus has {total}")
            shutil.rmtree(out, ignore_errors=True)
            reads = small_reads(lab, store, results, src, annex, work, args.readers,
                                {d: v["read_mib_s"] for d, v in lim.items()})
            store.close()
            # lab1 is lost; each system restores what it held onto lab3 from lab2
            lab.vanish("lab1")
            for name in PEERS:
                drop_caches()
                t0 = time.monotonic()
                if name == "hoardfs":
                    with Store.open(config.load(store.cfg.source)) as s:
                        s.set_disk_state("lab3", DiskState.ACTIVE, "the restore target")
                        rep = rebuild(s, "lab1", onto="lab3")
                    assert not rep.lost, rep.lost
                    restore_bytes[name] = rep.bytes
                elif name == "cp_x2_syncfs":
                    _run(["cp", "-r", str(m["lab2"] / "cp"), str(m["lab3"] / "cp")])
                    _run(["sync", "-f", str(m["lab3"] / "cp")])
                    restore_bytes[name] = total
                elif name == "git_annex":
                    clone = m["lab3"] / "annex"
                    _run(["git", "clone", "-q", str(bare), str(clone)])
                    _run(["git", "annex", "init", "lab3"], cwd=clone)
                    _run(["git", "annex", "get", "--quiet", f"--jobs={os.cpu_count()}", "."], cwd=clone)
                    _run(["sync", "-f", str(clone)])
                    restore_bytes[name] = _size(clone / ".git" / "annex" / "objects")
                else:
                    fix_conf = work / "snapraid-fix.conf"
                    fix_conf.write_text(f"parity {m['lab2']}/snapraid.parity\ncontent {m['lab2']}/snapraid.content\n"
                                        f"data d1 {m['lab3']}/snap/\n")
                    (m["lab3"] / "snap").mkdir()
                    _run(["snapraid", "-c", str(fix_conf), "-d", "d1", "fix"])
                    _run(["sync", "-f", str(m["lab3"])])
                    restore_bytes[name] = total
                t[f"restore_{name}"] = time.monotonic() - t0
        lab.reappear("lab1")
    large = large_reads(args, work)
    ram_rows, ram = measure_ram(work / "ram", args.ram_objects, args.ram_read, args.ram_annex, args.readers)
    mib = total / MiB
    throttled = args.profile == "lab4"
    bound_ingest = total / (slower_write * MiB) if throttled else None
    # hoardfs stores a repeated content once: its shares over the bytes it holds, the corpus's apart
    unique = sum({r.sha256: r.size for r in results}.values())
    rows = [("corpus", f"{n_files} files, {mib:.0f} MiB (S08 generator, seed 7, {args.items} items x 4 batches), "
                       f"profile {args.profile}")]
    rows.append(("ingest", "2 copies, source warm (in the page cache), each timed until durable"
                           + (f"; bound {bound_ingest:.2f} s (both disks take every byte; lab2 writes "
                              f"{slower_write:g} MiB/s)" if bound_ingest else "")))
    rows.append(("  repeated contents", f"{(total - unique) / MiB:.1f} MiB of the corpus repeat a content: hoardfs "
                                        f"writes and reads {unique / MiB:.1f} MiB; its shares are over those bytes, "
                                        "the share over the whole corpus (a credit the peers do not get) apart"))
    for name in PEERS:
        s = t[f"ingest_{name}"]
        share = f"  {bound_ingest / s:5.0%} of bound" if bound_ingest else ""
        if bound_ingest and name == "hoardfs":
            share = f"  {bound_ingest * unique / total / s:5.0%} of bound ({bound_ingest / s:.0%} over the corpus)"
        rows.append((f"ingest {name}", f"{s:7.2f} s  {n_files / s:7.0f} files/s  {mib / s:6.1f} MiB/s{share}"))
    read_bw = sum(lab_read[d] for d in ("lab1", "lab2"))
    rows.append(("small-file export", "the whole corpus to a directory off the lab + syncfs, cold"))
    for name in PEERS:
        s = t[f"export_{name}"]
        share = f"  {total / (read_bw * MiB) / s:5.0%} of bound" if throttled else ""
        if throttled and name == "hoardfs":
            share = (f"  {unique / (read_bw * MiB) / s:5.0%} of bound ({total / (read_bw * MiB) / s:.0%} over the "
                     "corpus)")
        rows.append((f"export {name}", f"{s:7.2f} s  {n_files / s:7.0f} files/s  {mib / s:6.1f} MiB/s{share}"))
    rows.append(("small-file reads", f"{reads['files']} files under 1 MiB ({reads['bytes'] / MiB:.0f} MiB), "
                                     f"{args.readers} readers, cold data (names warm: every path stat'ed first)"))
    for order in ORDERS:
        for name in READERS:
            s = reads[f"{order}_{name}_s"]
            share = (f"  {reads['bound_s'][name] / s:5.0%} of bound ({reads['disks'][name]}; by IOPS "
                     f"{reads['iops_bound_s'][name] / s:4.0%})" if throttled else "")
            rows.append((f"read {order} {name}", f"{s:7.2f} s  {reads['files'] / s:7.0f} files/s  "
                                                 f"{reads['bytes'] / MiB / s:6.1f} MiB/s{share}"))
    lmib = large["bytes"] / MiB
    rows.append(("large-file read", f"{args.large_n} x {args.large_mb} MiB, one reader, cold; plain copy on "
                                    f"{large['disk']}, the disk the mount reads from"))
    for name, what in (("direct", "plain file (cp, git-annex, SnapRAID)"), ("hoardfs", "through hoard mount"),
                       ("mergerfs", "through mergerfs")):
        s = large[f"{name}_s"]
        share = f"  {lmib / large['read_mib_s'] / s:5.0%} of the disk's read limit" if throttled else ""
        vs = f"  {large['direct_s'] / s:5.0%} of direct" if name != "direct" else ""
        rows.append((f"large {name}", f"{s:7.2f} s  {lmib / s:6.1f} MiB/s{vs}{share}  — {what}"))
    rows.append(("restore", "lab1 lost, what it held restored onto lab3 from lab2, cold"))
    for name in PEERS:
        s, nbytes = t[f"restore_{name}"], restore_bytes[name]
        share = f"  {nbytes / (restore_bw * MiB) / s:5.0%} of bound" if throttled else ""
        rows.append((f"restore {name}", f"{s:7.2f} s  {nbytes / MiB:6.0f} MiB  {nbytes / MiB / s:6.1f} MiB/s{share}"))
    for name in PEERS:
        rows.append((f"on disk {name}", f"{on_disk[name] / total:5.2f} bytes per corpus byte"))
    rows += ram_rows
    rows.append(("versions", "; ".join(versions)))
    report("hoardfs and its peers", rows, {
        "files": n_files, "bytes": total, "unique_bytes": unique, "profile": args.profile, "lab": profile,
        "measured_mib_s": limits,
        "bound_ingest_s": bound_ingest and round(bound_ingest, 3), "restore_bound_mib_s": restore_bw,
        "export_bound_mib_s": read_bw,
        "seconds": {k: round(v, 3) for k, v in t.items()}, "restore_bytes": restore_bytes,
        "allocated_bytes": on_disk, "reads": {k: round(v, 3) if isinstance(v, float) else v for k, v in reads.items()},
        "large": {k: round(v, 3) if isinstance(v, float) else v for k, v in large.items()}, "ram": ram,
        "versions": versions})


if __name__ == "__main__":
    run_timed(main)
