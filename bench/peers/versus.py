"""hoardfs and its peers on one corpus, one table.

    make peers [ARGS='--items 500 --profile lab4|unthrottled']   (installs git-annex and snapraid)
    python bench/peers/versus.py [--items 500] [--profile lab4|unthrottled]

One corpus from the S08 generator (adapters.synth: gallery-dl, forum and API batches, ~97 %
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

mergerfs pools disks but keeps one copy of each file: it has no row here (its reads are
compared in bench/mount_read.py).

Then each exports the whole corpus (a small-file export: copy everything out to a directory
off the lab, the way a stage to 3C or an export to 3D does, then one syncfs): hoardfs with
`fsd.materialize` (the batch planner: every record from the replica that balances the two
disks); cp with two `cp -r` in parallel, half of the batches from each disk's copy (the
strongest use of two plain copies); git-annex and SnapRAID with `cp -rL` from the one disk
holding their files (git-annex's working tree on lab1, SnapRAID's data disk). Bound: corpus
bytes / (lab1 read + lab2 read) — both copies read at their limits; a peer reading one disk
can reach at most that disk's share.

Then lab1 is lost (lazy unmount) and each system restores what it held onto lab3 (30 MiB/s
write) from what lab2 holds: `hoard rebuild --onto`, `cp -r` of lab2's copy, `git clone` +
`git annex get`, `snapraid fix -d` with the data disk moved to lab3.

Units are the lab's: MiB/s (blkio throttles in 2^20 bytes/s). Bounds: ingest = corpus
bytes / the slower disk's write limit (both disks take every byte); restore = bytes
restored / min(lab2 read, lab3 write). cgroup v1 does not throttle buffered writeback
(ECOSYSTEM.md), so the buffered peers can beat a bound on the lab4 profile — their shares
are upper limits, hoardfs's (it syncs every group) are not. Bytes on disk are
allocated bytes (`du --block-size=1`, what the filesystem spends, 4 KiB blocks included)
per byte of corpus. Cold: the page cache is dropped before each ingest and restore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import LAB4, Lab, MiB, drop_caches, lab_profile, lab_store, parallel, report, run_timed  # noqa: E402

from adapters.synth import Spec, generate  # noqa: E402
from fsd.base import config  # noqa: E402
from fsd.disks import DiskState  # noqa: E402
from fsd.materialize import Item, materialize  # noqa: E402
from fsd.rebuild import rebuild  # noqa: E402
from fsd.store import Store  # noqa: E402

PEERS = ("hoardfs", "cp_x2_syncfs", "git_annex", "snapraid")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def _allocated(*paths: Path) -> int:
    out = _run(["du", "-s", "--block-size=1", *map(str, paths)])
    return sum(int(line.split()[0]) for line in out.splitlines())


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=500, help="items per generated batch (4 batches)")
    ap.add_argument("--profile", choices=["lab4", "unthrottled"], default="lab4")
    args = ap.parse_args()
    for tool in ("git-annex", "snapraid"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: `apt-get install git-annex snapraid` (`make peers` does)")
    work = Path(tempfile.mkdtemp(prefix="hoard-peers-", dir="/var/tmp"))
    src, n_files, total = corpus(work, args.items)
    t: dict[str, float] = {}
    restore_bytes: dict[str, int] = {}
    on_disk: dict[str, int] = {}
    env = os.environ | {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "bench",
                        "GIT_COMMITTER_EMAIL": "b@x"}
    os.environ.update(env)
    with Lab(LAB4, throttle=args.profile == "lab4", direct_io=True) as lab:
        m = {label: lab.disks[label].mountpoint for label in lab.disks}
        profile = lab_profile(lab)
        slower_write = min(lab.disks[x].profile.write_mbps for x in ("lab1", "lab2"))
        restore_bw = min(lab.disks["lab2"].profile.read_mbps, lab.disks["lab3"].profile.write_mbps)
        lab_read = {d: lab.disks[d].profile.read_mbps for d in ("lab1", "lab2")}
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
            on_disk["hoardfs"] = _allocated(*shard_dirs) + _allocated(Path(store.cfg.ssd.index_dir))
            on_disk["cp_x2_syncfs"] = _allocated(m["lab1"] / "cp", m["lab2"] / "cp")
            on_disk["git_annex"] = _allocated(annex, bare)
            on_disk["snapraid"] = _allocated(m["lab1"] / "snap", m["lab2"] / "snapraid.parity",
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
    mib = total / MiB
    throttled = args.profile == "lab4"
    bound_ingest = total / (slower_write * MiB) if throttled else None
    rows = [("corpus", f"{n_files} files, {mib:.0f} MiB (S08 generator, seed 7, {args.items} items x 4 batches), "
                       f"profile {args.profile}")]
    if bound_ingest:
        rows.append(("ingest bound", f"{bound_ingest:.2f} s (both disks take every byte; lab2 writes "
                                     f"{slower_write:g} MiB/s)"))
    for name in PEERS:
        s = t[f"ingest_{name}"]
        share = f"  {bound_ingest / s:5.0%} of bound" if bound_ingest else ""
        rows.append((f"ingest {name}", f"{s:7.2f} s  {n_files / s:7.0f} files/s  {mib / s:6.1f} MiB/s{share}"))
    read_bw = sum(lab_read[d] for d in ("lab1", "lab2"))
    for name in PEERS:
        s = t[f"export_{name}"]
        share = f"  {total / (read_bw * MiB) / s:5.0%} of bound" if throttled else ""
        rows.append((f"export {name}", f"{s:7.2f} s  {n_files / s:7.0f} files/s  {mib / s:6.1f} MiB/s{share}"))
    for name in PEERS:
        s, nbytes = t[f"restore_{name}"], restore_bytes[name]
        share = f"  {nbytes / (restore_bw * MiB) / s:5.0%} of bound" if throttled else ""
        rows.append((f"restore {name}", f"{s:7.2f} s  {nbytes / MiB:6.0f} MiB  {nbytes / MiB / s:6.1f} MiB/s{share}"))
    for name in PEERS:
        rows.append((f"on disk {name}", f"{on_disk[name] / total:5.2f} bytes per corpus byte"))
    versions = [_version(p) for p in ("git-annex", "snapraid", "coreutils")]
    rows.append(("versions", "; ".join(versions)))
    report("hoardfs and its peers", rows, {
        "files": n_files, "bytes": total, "profile": args.profile, "lab": profile,
        "bound_ingest_s": bound_ingest and round(bound_ingest, 3), "restore_bound_mib_s": restore_bw,
        "export_bound_mib_s": read_bw,
        "seconds": {k: round(v, 3) for k, v in t.items()}, "restore_bytes": restore_bytes,
        "allocated_bytes": on_disk,
        "versions": versions})
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    run_timed(main)
