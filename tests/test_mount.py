"""The FUSE mount in a real subprocess, exercised with real clients (find, sha256sum, rsync, tar)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from hoardfs.adapters.synth import Spec, generate
from hoardfs.base import config
from hoardfs.fsd.store import Store
from tests.test_ingest import ingest_all, ingest_home

SPEC = Spec(seed=21, batches=3, items_per_batch=40, large_max_mb=12, large_fraction=0.05, ready_signal=True)

pytestmark = pytest.mark.needs(os.path.exists("/dev/fuse"), "MOUNT TESTS SKIPPED: no /dev/fuse")


@contextmanager
def mounted(cfg_path: str, mnt: Path, wrap=None):
    """`hoard mount --foreground` as a child process (`wrap(cmd)`: e.g. the lab's, to run it
    under the lab's throttles); unmounted (and reaped) afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    log = open(mnt.parent / f"{mnt.name}.log", "wb")
    cmd = [sys.executable, "-m", "hoardfs", "--config", cfg_path, "mount", "--foreground", str(mnt)]
    proc = subprocess.Popen(wrap(cmd) if wrap else cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, (mnt.parent / f"{mnt.name}.log").read_text()
            assert time.monotonic() < deadline, "mount did not appear"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
                proc.kill()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
        log.close()


@pytest.fixture
def ingested(hoard_home: Path, pg, redis_conn, tmp_path: Path):
    """Three generated batches ingested (store + database + manifests); their originals regenerated
    under tmp_path/original for byte-for-byte comparison."""
    cfg = ingest_home(hoard_home, pg)
    zone3a = cfg.ssd.zone_path("3A")
    batches = generate(zone3a, SPEC)
    states = ingest_all(cfg, redis_conn, [zone3a / b.batch_id for b in batches])
    assert all(s.status == "done" for s in states)
    generate(tmp_path / "original", SPEC)
    return cfg, batches


def test_find_and_sha256sum_by_hash(ingested, tmp_path: Path) -> None:
    """`find by-hash -type f | wc -l` equals the store's object count and `sha256sum` of every
    file matches its name."""
    cfg, _ = ingested
    with Store.open(cfg, writable=False) as store:
        count = store.index.count_objects()
    mnt = tmp_path / "mnt"
    with mounted(str(cfg.source), mnt):
        found = subprocess.run(f"find {mnt}/by-hash -type f | wc -l", shell=True, capture_output=True, text=True)
        assert int(found.stdout) == count
        sums = subprocess.run(f"cd {mnt}/by-hash && find . -type f -print0 | xargs -0 sha256sum", shell=True,
                              capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(sums) == count
        for line in sums:
            digest, name = line.split(None, 1)
            assert Path(name).name.split(".")[0] == digest


def test_rsync_and_tar_reproduce_batches(ingested, tmp_path: Path) -> None:
    """`rsync -a` and `tar c` of batches/<id> (and sources/<src>/<id>) equal the batch as dropped."""
    cfg, batches = ingested
    mnt = tmp_path / "mnt"
    with mounted(str(cfg.source), mnt):
        for b in batches:
            orig = tmp_path / "original" / b.batch_id
            (orig / "_READY").unlink(missing_ok=True)
            dst = tmp_path / "rsynced" / b.batch_id
            dst.parent.mkdir(exist_ok=True)
            subprocess.run(["rsync", "-a", f"{mnt}/batches/{b.batch_id}/", f"{dst}/"], check=True)
            assert subprocess.run(["diff", "-r", str(orig), str(dst)]).returncode == 0
            untar = tmp_path / "untarred" / b.batch_id
            untar.mkdir(parents=True)
            subprocess.run(f"tar -C {mnt}/sources/{b.source}/{b.batch_id} -cf - . | tar -C {untar} -xf -",
                           shell=True, check=True)
            assert subprocess.run(["diff", "-r", str(orig), str(untar)]).returncode == 0
        assert sorted(os.listdir(mnt / "sources")) == sorted({b.source for b in batches})
        health = (mnt / ".hoard" / "health").read_text()
        assert "objects:" in health and "batches: 3" in health and "read queue" in health


def test_concurrent_readers_large_and_small(ingested, tmp_path: Path) -> None:
    """8 threads reading every batch file at once (large ones streamed in pieces) all get the
    right bytes."""
    cfg, batches = ingested
    mnt = tmp_path / "mnt"
    want = {f"{b.batch_id}/{i.path}": i.sha256 for b in batches for i in b.items}
    assert any(i.size > 8 << 20 for b in batches for i in b.items), "the spec should include large objects"
    errors: list[str] = []
    with mounted(str(cfg.source), mnt):
        paths = sorted(want)

        def reader(k: int) -> None:
            for rel in paths[k::8] + paths[(k + 4) % 8::8]:
                h = hashlib.sha256()
                with open(mnt / "batches" / rel, "rb") as f:
                    while chunk := f.read(1 << 17):
                        h.update(chunk)
                if h.hexdigest() != want[rel]:
                    errors.append(rel)

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_writes_refused_inbox_lands_in_3a(ingested, tmp_path: Path) -> None:
    """Writing into views is EROFS; `inbox` is zone 3A, so a batch written there is ingestible."""
    cfg, batches = ingested
    mnt = tmp_path / "mnt"
    with mounted(str(cfg.source), mnt):
        target = mnt / "batches" / batches[0].batch_id / "new.txt"
        with pytest.raises(OSError) as e:
            target.write_text("x")
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            (mnt / "by-hash" / "zz").mkdir()
        assert e.value.errno == errno.EROFS
        assert os.readlink(mnt / "inbox") == str(cfg.ssd.zone_path("3A"))
        (mnt / "inbox" / "dropped-1").mkdir()
        (mnt / "inbox" / "dropped-1" / "a.png").write_bytes(b"\x89PNG fake")
        assert (cfg.ssd.zone_path("3A") / "dropped-1" / "a.png").exists()


def test_views_from_manifest(ingested, tmp_path: Path) -> None:
    """`hoard view add` publishes a manifest under views/<name>/ with the named bytes; bad
    manifests are refused naming the path."""
    cfg, batches = ingested
    items = [i for i in batches[0].items if i.kind == "image"][:5]
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{i.sha256}  train/cats/{k}.png\n" for k, i in enumerate(items)))
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    subprocess.run(hoard + ["view", "add", "train-v1", str(manifest)], check=True, capture_output=True)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{items[0].sha256}  ../escape.png\n")
    r = subprocess.run(hoard + ["view", "add", "evil", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "climbs out" in r.stderr
    unknown = tmp_path / "unknown.txt"
    unknown.write_text(f"{'0' * 64}  x.png\n")
    r = subprocess.run(hoard + ["view", "add", "ghost", str(unknown)], capture_output=True, text=True)
    assert r.returncode == 2 and "not an object in the store" in r.stderr
    mnt = tmp_path / "mnt"
    with mounted(str(cfg.source), mnt):
        got = sorted(os.listdir(mnt / "views" / "train-v1" / "train" / "cats"))
        assert got == [f"{k}.png" for k in range(5)]
        for k, i in enumerate(items):
            data = (mnt / "views" / "train-v1" / "train" / "cats" / f"{k}.png").read_bytes()
            assert hashlib.sha256(data).hexdigest() == i.sha256
        assert os.listdir(mnt / "views") == ["train-v1"]
        manifest.write_text(f"{items[0].sha256}  only/one.png\n")  # redefine it while mounted
        subprocess.run(hoard + ["view", "add", "train-v1", str(manifest)], check=True, capture_output=True)
        deadline = time.monotonic() + 15  # the views/ entry may be cached by the kernel for 5 s
        while not (mnt / "views" / "train-v1" / "only").exists():
            assert time.monotonic() < deadline, os.listdir(mnt / "views" / "train-v1")
            time.sleep(0.5)
        assert os.listdir(mnt / "views" / "train-v1" / "only") == ["one.png"]


def test_sigterm_with_open_reader_unmounts_cleanly(ingested, tmp_path: Path) -> None:
    """With a reader holding a file open, `hoard umount` says busy and names --lazy; SIGTERM to
    the daemon unmounts and it exits 0."""
    cfg, batches = ingested
    mnt = tmp_path / "mnt"
    hoard = [sys.executable, "-m", "hoardfs", "--config", str(cfg.source)]
    with mounted(str(cfg.source), mnt) as proc:
        f = open(mnt / "batches" / batches[0].batch_id / batches[0].items[0].path, "rb")
        f.read(10)
        r = subprocess.run(hoard + ["umount", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 3 and "--lazy" in r.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not os.path.ismount(mnt)
        f.close()


def test_mount_refuses_bad_mountpoints(hoard_home: Path, tmp_path: Path) -> None:
    """A missing directory or an existing mount point is refused with the next step."""
    cfg_path = str(hoard_home / "hoard.toml")
    for d in config.load(cfg_path).disks:
        d.path.mkdir(parents=True, exist_ok=True)
    Store.open(config.load(cfg_path), init=True).close()
    hoard = [sys.executable, "-m", "hoardfs", "--config", cfg_path]
    r = subprocess.run(hoard + ["mount", "--foreground", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "mkdir -p" in r.stderr
    r = subprocess.run(hoard + ["mount", "--foreground", "/proc"], capture_output=True, text=True)
    assert r.returncode == 2 and "already a mount point" in r.stderr


def test_mount_refusals_and_dead_mount(hoard_home: Path, tmp_path: Path) -> None:
    """A second mount on a mount point is refused before anything is printed; a non-empty
    directory is refused unless --nonempty; the background `hoard mount` says "mounted" only
    when the daemon serves; a mount whose daemon was killed is named with `hoard umount --lazy`,
    which then detaches it."""
    cfg_path = str(hoard_home / "hoard.toml")
    for d in config.load(cfg_path).disks:
        d.path.mkdir(parents=True, exist_ok=True)
    Store.open(config.load(cfg_path), init=True).close()
    hoard = [sys.executable, "-m", "hoardfs", "--config", cfg_path]
    r = subprocess.run(hoard + ["mount", "/proc"], capture_output=True, text=True)
    assert r.returncode == 2 and "already a mount point" in r.stderr and "mounted" not in r.stdout
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    r = subprocess.run(hoard + ["mount", str(full)], capture_output=True, text=True)
    assert r.returncode == 2 and "not empty" in r.stderr and "--nonempty" in r.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(hoard + ["mount", str(mnt)], capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0 and "mounted at" in r.stdout, r.stderr
        assert "by-hash" in os.listdir(mnt)  # served at once, not merely attached
        again = subprocess.run(hoard + ["mount", str(mnt)], capture_output=True, text=True)
        assert again.returncode == 2 and "already a mount point" in again.stderr and not again.stdout
        pid = int(r.stdout.split("(pid ")[1].split(",")[0])
        os.kill(pid, signal.SIGKILL)  # the daemon dies; the kernel keeps the mount attached
        deadline = time.monotonic() + 10
        while True:
            try:
                os.stat(mnt)
            except OSError as e:
                assert e.errno == errno.ENOTCONN
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        dead = subprocess.run(hoard + ["mount", str(mnt)], capture_output=True, text=True)
        assert dead.returncode == 2 and f"hoard umount --lazy {mnt}" in dead.stderr and not dead.stdout
    finally:
        subprocess.run(hoard + ["umount", "--lazy", str(mnt)], capture_output=True, text=True)
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []


def test_large_object_without_chunk_map(hoard_home: Path, tmp_path: Path) -> None:
    """A large object stored before chunk maps existed (map deleted here) is verified in full
    on first open, then served; the map is recorded for next time."""
    cfg_path = str(hoard_home / "hoard.toml")
    cfg = config.load(cfg_path)
    for d in cfg.disks:
        d.path.mkdir(parents=True, exist_ok=True)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(21 << 20))
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    with Store.open(cfg, init=True) as store:
        store.put_many([big])
        assert store.index.get_chunks(bytes.fromhex(sha)) is not None
        with store.index.env.begin(write=True, db=store.index.chunks) as txn:
            txn.delete(bytes.fromhex(sha))
    mnt = tmp_path / "mnt"
    with mounted(cfg_path, mnt):
        data = (mnt / "by-hash" / sha[:2] / sha[2:4] / f"{sha}.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    with Store.open(cfg, writable=False) as store:
        assert len(store.index.get_chunks(bytes.fromhex(sha))) == 16 * 21  # one digest per MiB


# the victim is the disk holding the most replicas: placement's choice, not always lab1
# (optional: on a loaded machine the disks refresh's probe can mark the disk failed before a read meets it)
@pytest.mark.expect_log(r"mount: replica of shard \w+ on lab\d unreadable: .*; trying another", level="WARNING",
                        optional=True)
@pytest.mark.expect_log(r"disk lab\d: read error on shard \w+", level="WARNING", optional=True)
def test_disk_failing_during_reads(lab_factory, servers, tmp_path: Path) -> None:
    """A lab disk answering EIO while the mount reads: every file still reads correctly (from
    the other replica) and the disk is marked failed."""
    from tests.helpers import write_config
    from tests.lab import LAB4

    lab = lab_factory(LAB4[:3])
    disks = [(k, d.mountpoint, None) for k, d in lab.disks.items()]
    cfg_path = write_config(tmp_path, disks, allow_dirs=False, shard_size_mb=4, copy_of_raw=2, write_ack=2)
    cfg = config.load(cfg_path)
    files = []
    for k in range(60):
        p = tmp_path / "in" / f"f{k:03d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(200_000 + k * 1000 if k % 20 else 10 << 20))
        files.append(p)
    with Store.open(cfg, init=True) as store:
        results = store.put_many(files)
        per_disk: dict[str, int] = {}
        for sid_meta in store.index.iter_shards():
            for u in sid_meta.replicas:
                per_disk[store.disks[u].label] = per_disk.get(store.disks[u].label, 0) + 1
    victim = max(per_disk, key=per_disk.get)
    # the mount sends each read to the replica it expects to finish first: make that the victim
    cfg_path.write_text(cfg_path.read_text().replace(f'label = "{victim}"', f'label = "{victim}"\nread_mb_s = 1000'))
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt):
        lab.fail_eio(victim)
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
        for r in results:
            name = f"{r.sha256}.bin"
            data = (mnt / "by-hash" / r.sha256[:2] / r.sha256[2:4] / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r.sha256
    with Store.open(cfg, writable=False) as store:
        states = {rec.label: rec.state.value for rec in store.records.values()}
    assert states[victim] == "failed"
    log = (tmp_path / "mnt.log").read_text()
    # the reader meets the EIO, or — on a loaded machine, reads slower — the disks refresh's
    # probe marks the disk failed first and no read is sent to it
    assert (f"on {victim} unreadable" in log or f"{victim} (failed)" in log) and "Traceback" not in log, log


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
def test_browsing_needs_no_database(tmp_path: Path) -> None:
    """With database_url pointing at nothing, the mount still lists batches and reads files:
    names come from the index and the manifests in the store."""
    import json as _json

    from tests.helpers import dir_disks_config, make_files

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)  # its database_url is unreachable
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        res = store.put_many(make_files(tmp_path / "in", 12))
        body = _json.dumps({"files": [{"path": f"pics/{Path(r.path).name}", "sha256": r.sha256, "size": r.size}
                                      for r in res]}).encode()
        store.register_batch("offline-1", {"source": "t", "manifest": store.put_bytes(body).sha256})
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt):
        names = sorted(os.listdir(mnt / "batches" / "offline-1" / "pics"))
        assert names == sorted(Path(r.path).name for r in res)
        for r in res:
            data = (mnt / "batches" / "offline-1" / "pics" / Path(r.path).name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r.sha256


@pytest.mark.services  # starts hoard processes, servers or a FUSE mount
@pytest.mark.expect_log(r"left out of a listing: the index entry of (object|batch) \S+ is malformed", level="WARNING")
def test_a_damaged_index_entry_hides_itself_not_its_folder(tmp_path: Path) -> None:
    """One malformed objects-table value, or batch entry, made its whole by-hash folder (or
    `batches/`) answer EIO, hiding every good object beside it: now the damaged entry alone is
    left out (logged once; `hoard check` names it) and the rest lists and reads."""
    import json as _json

    from tests.helpers import dir_disks_config

    by_prefix: dict[bytes, bytes] = {}
    i = 0
    while True:  # two objects in one by-hash folder (the first 2 bytes of their sha256 alike)
        data = f"object {i}\n".encode()
        head = hashlib.sha256(data).digest()[:2]
        if head in by_prefix:
            pair = [by_prefix[head], data]
            break
        by_prefix[head] = data
        i += 1
    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=1)
    cfg = config.load(cfg_path)
    with Store.open(cfg, init=True) as store:
        good, bad = (store.put_bytes(d).sha256 for d in pair)
        for name in ("good-batch", "bad-batch"):
            body = _json.dumps({"files": [{"path": "a.txt", "sha256": good, "size": len(pair[0])}]}).encode()
            store.register_batch(name, {"source": "t", "manifest": store.put_bytes(body).sha256})
        with store.index.env.begin(write=True) as txn:
            txn.put(bytes.fromhex(bad), b"short", db=store.index.objects)
            txn.put(b"bad-batch", b"{not json", db=store.index.batches)
    mnt = tmp_path / "mnt"
    with mounted(str(cfg_path), mnt):
        folder = mnt / "by-hash" / good[:2] / good[2:4]
        assert [n.split(".")[0] for n in os.listdir(folder)] == [good]
        assert hashlib.sha256((folder / os.listdir(folder)[0]).read_bytes()).hexdigest() == good
        assert os.listdir(mnt / "batches") == ["good-batch"]
        assert (mnt / "batches" / "good-batch" / "a.txt").read_bytes() == pair[0]
    log = (tmp_path / "mnt.log").read_text()
    assert log.count(f"the index entry of object {bad} is malformed") == 1, log
    assert "the index entry of batch bad-batch is malformed" in log, log
