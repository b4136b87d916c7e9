"""RAM at N objects: what hoardfs and each peer keeps in memory to serve N objects.

Imported by versus.py (its RAM rows; `versus.py --ram-only` runs them alone). Every object
is a tiny generated file (`object 0000042\\n`, path `d0000/f0000042.txt`, 1,000 per
directory): what is measured is the count of objects, not their bytes, so nothing is
throttled and the files have just been written (warm). hoardfs and git-annex sit on
directories of this machine's disk; the plain files on two unthrottled lab disks sized for
their inodes (SnapRAID refuses data disks that share a device), a third one holding the
parity.

- **hoardfs**: N objects stored with `Store.put_bytes_many` (2 copies on two directory
  disks) and named by one view; then the mount daemon (`hoard mount --foreground`) lists
  every name — `find -printf %s` over the view and over `by-hash/` (each entry looked up
  and stat'ed) — and 4 readers read `read_n` of them in a shuffled order. Reported: its
  resident memory at the end split into anonymous (RssAnon: the daemon's heap — its inode
  table and read cache) and file-backed (RssFile: mostly the touched pages of the LMDB
  map, which are page cache: clean, shared with any other reader of the index, dropped by
  the kernel under pressure and read again from the SSD), its peak (VmHWM, both kinds), and
  that split after each step (`phases`: mounted, by-hash/ listed, view listed, read). The
  LMDB index's size on the SSD is reported beside it.
- **mergerfs**: the same N files as plain files, one copy each, spread over two disks
  (file i on disk i mod 2, as a pool places one copy per file), pooled by a mergerfs daemon
  at its defaults (read-only); the same listing (the pool's N names) and reads; its memory
  split the same way (it maps no file of its own: nearly all of it is anonymous).
- **SnapRAID**: no daemon; `snapraid sync` over those N files (the two disks as data
  disks d1 and d2, the parity on a third): the peak RSS of the run. `blocksize 1` (KiB):
  every file takes at least one block of parity, so with the default 256 KiB a million tiny
  files would need 122 GiB of parity; for files under 1 KiB the block count, and so
  SnapRAID's memory for them, is the same at any block size.
- **git-annex**: no daemon; `git annex add` of `annex_n` such files (numcopies 2) and
  `git annex find` over them: each run's peak RSS. It is measured at `annex_n`, which may be
  below N (a million `git annex add`s do not finish in minutes here): the row says which N.
- **cp ×2**: nothing runs to serve plain files.

Like with like: a daemon's anonymous memory is what it costs; its file-backed pages and
the kernel's caches are not counted for anyone (the rows show them). Peak RSS of a command
= the larger of its process tree's summed RSS (sampled every 50 ms:
git-annex runs git helpers beside itself) and the largest single process's own peak (GNU
time's %M, exact). Not counted for any system: the kernel's inode, dentry and page
caches (the plain files' inodes and the FUSE mounts' alike).
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Lab, MiB, allocated, hoard_mounted, mergerfs_mounted, read_all

from hoardfs.base import config
from hoardfs.fsd.outputs.views import define_view_rows
from hoardfs.fsd.store import Store
from tests.helpers import dir_disks_config
from tests.lab import DiskProfile

CHUNK = 50_000  # objects per put_bytes_many call (one group commit each)


def name(i: int) -> str:
    return f"d{i // 1000:04d}/f{i:07d}.txt"


def payload(i: int) -> bytes:
    return b"object %07d\n" % i


def vm_kib(pid: int, key: str = "VmHWM") -> int:
    """A /proc/<pid>/status figure in KiB (VmHWM: the process's peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of every process below `root` (not of `root` itself)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_peak(cmd: list[str], cwd: Path | None = None) -> tuple[float, int]:
    """Run `cmd` to its end: (seconds, peak RSS in bytes, as the module docstring says)."""
    with tempfile.NamedTemporaryFile() as rss, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        # under GNU time, a small process: the command's ru_maxrss then starts from its few MiB
        # (a child's starts from its parent's peak at fork: ours would be this Python's)
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))  # GNU time's children
            time.sleep(0.05)
        secs = time.monotonic() - t0
        if proc.returncode:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace")
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
        return secs, max(peak, int(Path(rss.name).read_text().split()[-1]) * 1024)


def _count(cmd: list[str]) -> int:
    return subprocess.run(cmd, capture_output=True, check=True).stdout.count(b"\n")


def memory(pid: int) -> dict:
    """A daemon's resident memory now: anonymous (its heap: what it keeps) and file-backed
    (mapped files' pages — for hoardfs mostly the LMDB index's, page cache the kernel may
    drop and read again), its peak so far (VmHWM, both kinds) and the CPU seconds it has used
    (on a busy machine a steadier measure of its work than the wall clock)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime so far
    return {"anon_bytes": vm_kib(pid, "RssAnon") * 1024, "file_bytes": vm_kib(pid, "RssFile") * 1024,
            "hwm_bytes": vm_kib(pid) * 1024, "cpu_s": round(cpu_s, 2)}


def _cpu(d: dict, before: str, after: str) -> float:
    """The daemon's CPU seconds between two of its phases."""
    return d["phases"][after]["cpu_s"] - d["phases"][before]["cpu_s"]


def _serve(root: Path, paths: list[str], proc, readers: int, idle_kib: int, phases: dict | None = None) -> dict:
    """List every name under `root` and read `paths` through it; the daemon's memory after
    (and `idle_kib`, its RSS when it had just mounted); `phases` gets its memory after each
    step ("listed", "read")."""
    phases = {} if phases is None else phases
    t0 = time.monotonic()
    listed = _count(["find", str(root), "-type", "f", "-printf", "%s\n"])
    t_list = time.monotonic() - t0
    phases["listed"] = memory(proc.pid)
    t0 = time.monotonic()
    got = read_all([root / p for p in paths], readers)
    t_read = time.monotonic() - t0
    phases["read"] = memory(proc.pid)
    return {"listed": listed, "list_s": round(t_list, 2), "read": len(paths), "read_bytes": got,
            "read_s": round(t_read, 2), "idle_bytes": idle_kib * 1024,
            "hwm_bytes": vm_kib(proc.pid) * 1024,
            "rss_anon_bytes": vm_kib(proc.pid, "RssAnon") * 1024, "rss_file_bytes": vm_kib(proc.pid, "RssFile") * 1024,
            "phases": phases}


def hoardfs(work: Path, n: int, sample: list[int], readers: int) -> dict:
    cfg_path = dir_disks_config(work / "hoard", 2, shard_size_mb=256, write_ack=2, copy_of_raw=2)
    store = Store.open(config.load(cfg_path), init=True)
    t0 = time.monotonic()
    shas: list[str] = []
    for lo in range(0, n, CHUNK):
        res = store.put_bytes_many([payload(i) for i in range(lo, min(n, lo + CHUNK))])
        assert all(r.status == "new" for r in res), {r.status for r in res}
        shas += [r.sha256 for r in res]
    t_put = time.monotonic() - t0
    t0 = time.monotonic()
    define_view_rows(store, "ram", ((name(i), sha) for i, sha in enumerate(shas)))
    t_view = time.monotonic() - t0
    index = Path(store.cfg.ssd.index_dir)
    store.close()
    out = {"put_s": round(t_put, 2), "view_s": round(t_view, 2), "index_bytes": allocated(index)}
    mnt = work / "hoard-mnt"
    with hoard_mounted(cfg_path, mnt) as proc:
        idle = vm_kib(proc.pid, "VmRSS")
        phases = {"mounted": memory(proc.pid)}
        t0 = time.monotonic()
        out["by_hash_listed"] = _count(["find", str(mnt / "by-hash"), "-type", "f", "-printf", "%s\n"])
        out["by_hash_list_s"] = round(time.monotonic() - t0, 2)
        phases["by_hash_listed"] = memory(proc.pid)
        out |= _serve(mnt / "views" / "ram", [name(i) for i in sample], proc, readers, idle, phases)
    return out


def lab_disks(n: int) -> tuple[DiskProfile, ...]:
    """Two data disks with an inode for each of their N/2 files (mkfs.ext4 gives one per
    16 KiB) and a parity disk for N/2 blocks of 1 KiB; unthrottled, sparse images."""
    data_mb = max(1000, (n // 2 + 5000) * 16 * 6 // 5 // 1024)
    parity_mb = max(1000, (n // 2) * 3 // 1024)
    return (DiskProfile("ram1", data_mb, 0, 0, 0), DiskProfile("ram2", data_mb, 0, 0, 0),
            DiskProfile("ram3", parity_mb, 0, 0, 0))


def plain_files(lab: Lab, n: int) -> list[Path]:
    """The N objects as plain files, file i on disk ram1 or ram2 by i mod 2 (one copy each)."""
    branches = [lab.disks[label].mountpoint / "files" for label in ("ram1", "ram2")]
    for i in range(0, n, 1000):
        (branches[0] / name(i)).parent.mkdir(parents=True, exist_ok=True)
        (branches[1] / name(i)).parent.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with open(branches[i % 2] / name(i), "wb") as f:
            f.write(payload(i))
    os.sync()
    return branches


def mergerfs(work: Path, branches: list[Path], sample: list[int], readers: int) -> dict:
    with mergerfs_mounted(branches, work / "pool") as proc:
        return _serve(work / "pool", [name(i) for i in sample], proc, readers, vm_kib(proc.pid, "VmRSS"))


def snapraid(work: Path, lab: Lab, branches: list[Path]) -> dict:
    parity = lab.disks["ram3"].mountpoint
    conf = work / "snapraid.conf"
    conf.write_text(f"blocksize 1\nparity {parity}/snapraid.parity\ncontent {parity}/snapraid.content\n"
                    f"content {work}/snapraid.content\ndata d1 {branches[0]}/\ndata d2 {branches[1]}/\n")
    secs, peak = run_peak(["snapraid", "-c", str(conf), "sync"])
    return {"sync_s": round(secs, 2), "sync_peak_bytes": peak}


def git_annex(work: Path, n: int) -> dict:
    repo = work / "annex"
    for i in range(n):
        p = repo / name(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload(i))
    for cmd in (["git", "init", "-q"], ["git", "annex", "init", "ram"], ["git", "annex", "numcopies", "2"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    add_s, add_peak = run_peak(["git", "annex", "add", "--quiet", "."], cwd=repo)
    subprocess.run(["git", "commit", "-q", "-m", "ram"], cwd=repo, check=True, capture_output=True)
    find_s, find_peak = run_peak(["git", "annex", "find"], cwd=repo)
    return {"n": n, "add_s": round(add_s, 2), "add_peak_bytes": add_peak, "find_s": round(find_s, 2),
            "find_peak_bytes": find_peak}


def measure(work: Path, n: int, read_n: int, annex_n: int, readers: int = 4) -> tuple[list[tuple[str, str]], dict]:
    """The RAM rows and their raw numbers, for N objects (git-annex: `annex_n`)."""
    work.mkdir(parents=True, exist_ok=True)
    sample = random.Random(13).sample(range(n), min(read_n, n))
    data: dict = {"objects": n, "read": len(sample), "readers": readers}
    data["hoardfs"] = hoardfs(work, n, sample, readers)
    with Lab(lab_disks(n), throttle=False) as lab:
        t0 = time.monotonic()
        branches = plain_files(lab, n)
        data["plain_write_s"] = round(time.monotonic() - t0, 2)
        data["mergerfs"] = mergerfs(work, branches, sample, readers)
        data["snapraid"] = snapraid(work, lab, branches)
    data["git_annex"] = git_annex(work, min(annex_n, n))
    h, m, s, a = data["hoardfs"], data["mergerfs"], data["snapraid"], data["git_annex"]
    for name_, d in (("hoardfs", h), ("mergerfs", m)):
        assert d["listed"] == n and d["read_bytes"] == sum(len(payload(i)) for i in sample), (name_, d)
    assert h["by_hash_listed"] >= n, h  # and the view's manifest objects

    def mib(b: int) -> str:
        return f"{b / MiB:,.0f} MiB"

    listing = f"after listing {n:,} names and reading {len(sample):,} of them ({readers} readers, shuffled)"
    rows = [("RAM", f"{n:,} tiny objects; what each keeps in memory to serve them; warm (just written, nothing "
                    "throttled); kernel caches not counted"),
            ("RAM hoardfs", f"mount daemon {mib(h['rss_anon_bytes'])} anonymous + {mib(h['rss_file_bytes'])} "
                            f"file-backed (mostly the LMDB index's pages: page cache) {listing}, and "
                            f"{h['by_hash_listed']:,} in by-hash/; peak {mib(h['hwm_bytes'])} (VmHWM, both kinds; "
                            f"{mib(h['idle_bytes'])} just mounted); LMDB index {mib(h['index_bytes'])} on the SSD"),
            ("RAM mergerfs", f"daemon {mib(m['rss_anon_bytes'])} anonymous + {mib(m['rss_file_bytes'])} file-backed "
                             f"{listing}; peak {mib(m['hwm_bytes'])} (VmHWM; {mib(m['idle_bytes'])} just mounted)"),
            ("RAM warm reads", f"the same {len(sample):,} reads, {readers} readers, warm: hoardfs "
                               f"{len(sample) / h['read_s']:,.0f} files/s ({_cpu(h, 'listed', 'read'):.1f} s of the "
                               f"daemon's CPU), mergerfs {len(sample) / m['read_s']:,.0f} files/s "
                               f"({_cpu(m, 'listed', 'read'):.1f} s); listing {n:,} names: hoardfs "
                               f"{n / h['list_s']:,.0f}/s, mergerfs {n / m['list_s']:,.0f}/s"),
            ("RAM snapraid", f"nothing resident; `snapraid sync` of {n:,} files peaks at {mib(s['sync_peak_bytes'])} "
                             f"({s['sync_s']:.0f} s)"),
            ("RAM git_annex", f"nothing resident; at {a['n']:,} files" + (f" (not {n:,}: too slow here, "
                              f"{a['n'] / a['add_s']:,.0f} files/s)" if a["n"] < n else "")
             + f": `git annex add` peaks at {mib(a['add_peak_bytes'])} ({a['add_s']:.0f} s), `git annex find` at "
               f"{mib(a['find_peak_bytes'])}"),
            ("RAM cp_x2_syncfs", "nothing resident (plain files)")]
    return rows, data
