"""The training loader on another host (hoardfs.datasets.loader_remote; docs/datasets.md, "From
another host"): a version published by `hoard dataset publish` and read, by a Loader whose
hoard.toml has only `[loader]` and the S3 disks, through a real SeaweedFS's sealed shards — or,
with `[loader] source = "mount"`, through a real FUSE mount — in the same order, resumed the
same, verified record by record."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import pickle
import random
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from hoardfs.base import config
from hoardfs.base.errors import ConfigError, ExitCode
from hoardfs.datasets.loader_remote import LOCATOR_MAX, RemoteLoaderError
from hoardfs.fsd.core import s3
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.store import Store
from hoardfs.loader import Loader, LoaderError
from tests.test_datasets import _hoard
from tests.test_loader import SMALL, built  # noqa: F401  # (built: a fixture)
from tests.test_mount import mounted
from tests.test_s3_backend import engine_env, s3_disk  # noqa: F401  # (engine_env: a fixture)

# tier: PostgreSQL, Redis, an S3 engine (SeaweedFS) and a FUSE mount
pytestmark = pytest.mark.services


def _add_s3(cfg_path: Path, engine, label: str) -> str:
    """S3 disk `label` (a new bucket of `engine`) added to the server's hoard.toml and initialised."""
    bucket = f"hoard-{label}-" + secrets.token_hex(4)
    engine.client().create_bucket(Bucket=bucket)
    cfg_path.write_text(cfg_path.read_text().replace(
        "\n[ssd]", f'\n[[disks]]\nlabel = "{label}"\nkind = "s3"\nendpoint = "{engine.endpoint}"\n'
                   f'bucket = "{bucket}"\ncapacity_gb = 2\n\n[ssd]', 1))
    Store.open(config.load(cfg_path), init=True).close()
    return bucket


def _onto_the_buckets(cfg_path: Path, copies: int) -> None:
    """Every shard replicated until it has `copies` replicas (every disk: the S3 ones too)."""
    text = cfg_path.read_text()
    head, _, rest = text.partition("[store]\n")
    rest = "\n".join(line for line in rest.split("\n") if not line.startswith("copy_of_"))
    cfg_path.write_text(f"{head}[store]\ncopy_of_raw = {copies}\ncopy_of_generated = {copies}\n{rest}")
    with Store.open(config.load(cfg_path)) as store:
        replicate_once(store, rate_mb_s=None)


def _host(root: Path, engine, buckets: dict[str, str], **loader: str) -> Path:
    """A host's hoard.toml: `[loader]` and the S3 disks `buckets` (label → bucket) — no database,
    no Redis, no SSD, no local disk."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[loader]"] + [f"{k} = {json.dumps(v)}" for k, v in loader.items()]
    for label, bucket in buckets.items():
        lines += ["", "[[disks]]", f'label = "{label}"', 'kind = "s3"', f'endpoint = "{engine.endpoint}"',
                  f'bucket = "{bucket}"', "capacity_gb = 2"]
    path = root / "hoard.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _seq(ld: Loader, epochs: int = 2) -> list[tuple[int, str]]:
    return [(s["epoch"], s["key"]) for _ in range(epochs) for s in ld]


def _publish(cfg, *args: str) -> dict:
    res = _hoard(cfg, "dataset", "publish", "pets@1", "--json", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def _mount_host(cfg, root: Path, more: str = "") -> tuple[Path, Path, Path]:
    """pets@1 published into root/locators, and a host's hoard.toml reading it through a mount
    at root/mnt (`[loader]` alone, with `more`): (the locators, the mount point, the file)."""
    locators, mnt, host = root / "locators", root / "mnt", root / "host" / "hoard.toml"
    locators.mkdir()
    _publish(cfg, "--dir", str(locators))
    host.parent.mkdir()
    host.write_text(f'[loader]\nsource = "mount"\nmount = "{mnt}"\nlocators = "{locators}"\n{more}')
    return locators, mnt, host


def _flip(engine, bucket: str, shard_hex: str, at: int) -> None:
    """Flip one byte of the sealed shard's object in the bucket (the test's own hands)."""
    c, key = engine.client(), f"shards/{shard_hex[-2:]}/{shard_hex}"
    obj = c.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[at] ^= 0xFF
    c.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


def test_a_host_reads_the_published_version_through_s3_in_the_same_order(built, seaweedfs, engine_env,
                                                                         tmp_path: Path) -> None:
    """Publish is refused in one line while a sample is on no S3 disk (nothing written); once
    replicated it writes the locator into the bucket. A host whose hoard.toml has only `[loader]
    source = "s3"` and the S3 disk yields the server's own sequence — every key, in the same
    order, for two epochs, split over 3 workers too — its bytes right, every byte read off the
    S3 disk; its state resumes from any point on the host and on the server alike; a node
    deleted before a new publish is withheld; after a gc retires the shards it names, the host
    stops in one line until the version is published again, then follows the server's new
    order; the host never opens a database or an index."""
    cfg, _ = built
    engine_env(seaweedfs)
    bucket = _add_s3(Path(cfg.source), seaweedfs, "s3a")
    res = _hoard(cfg, "dataset", "publish", "pets@1")
    assert res.returncode == 3, res.stdout + res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "on no sealed replica on S3 disk s3a" in line
    assert "hoard replicate" in line
    assert "Contents" not in seaweedfs.client().list_objects_v2(Bucket=bucket, Prefix="loaders/")
    _onto_the_buckets(Path(cfg.source), 5)
    rep = _publish(cfg)
    assert rep["dataset"] == "pets@1" and rep["withheld"] == 0 and rep["written"] == [
        f"s3://{bucket}/loaders/pets@1.json (s3a)"]

    host = _host(tmp_path / "host", seaweedfs, {"s3a": bucket}, source="s3", disk="s3a")
    here = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    whole = _seq(here)
    there = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
    assert there.source == "s3" and there.cfg is None and there.ref == "pets@1"
    got = []
    for _ in range(2):
        for s in there:
            assert hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"]
            got.append((s["epoch"], s["key"]))
    assert got == whole and len(whole) >= 30
    st = there.stats()
    assert set(st["per_disk_bytes"]) == {"s3a"} and st["read_bytes"] >= st["bytes"] > 0 and st["fallbacks"] == 0
    assert Loader("pets", "train", 7, 1, config_path=host, **SMALL).order() == [k for e, k in whole if e == 1]
    parts = [[s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=host, worker=w, workers=3, **SMALL)]
             for w in range(3)]
    assert [parts[i % 3][i // 3] for i in range(len(whole) // 2)] == [k for e, k in whole if e == 0]

    n = len(whole) // 2
    rng = random.Random(3)
    for p in sorted({0, 1, SMALL["buffer"] - 1, SMALL["buffer"] + 1, n - 1, n, n + 1}
                    | {rng.randrange(2 * n) for _ in range(8)}):
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        seen: list[tuple[int, str]] = []
        while len(seen) < p:  # stopped after p samples
            for s in ld:
                seen.append((s["epoch"], s["key"]))
                if len(seen) == p:
                    break
        state = json.loads(json.dumps(ld.state_dict()))
        on_host = Loader.from_state_dict(state, config_path=host)
        on_server = Loader.from_state_dict(state, config_path=cfg.source)
        for again in (on_host, on_server):
            rest = []
            while again.epoch < 2:
                rest += [(s["epoch"], s["key"]) for s in again]
            assert seen + rest == whole, (p, again.source)

    gone = whole[3][1]
    sha = next(s.sha256 for s in here.samples if s.key == gone)
    res = _hoard(cfg, "delete", "--node", sha)
    assert res.returncode == 0, res.stderr
    assert _publish(cfg)["withheld"] == 1
    kept = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
    assert [s["key"] for s in kept] == [k for e, k in whole if e == 0 and k != gone]
    assert kept.stats()["withheld"] == 1

    # a gc moves records and retires the shards the locator names: one line, then a new publish
    res = _hoard(cfg, "delete", "--batch", "gallery-s71-b001", "--yes")
    assert res.returncode == 0, res.stderr
    res = _hoard(cfg, "gc", "--threshold", "1.0", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["compacted"] >= 1, res.stdout + res.stderr
    with pytest.raises(RemoteLoaderError, match=r"publish again on the store's server") as e:
        list(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL))
    assert "\n" not in str(e.value)
    _onto_the_buckets(Path(cfg.source), 5)  # (the compacted shards' new replicas onto the bucket)
    assert _publish(cfg)["withheld"] > 1
    assert _seq(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL), 1) == _seq(
        Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL), 1)


@pytest.mark.expect_log(r"loader: record [0-9a-f]+….* does not check out .*; read from another S3 disk", level="WARNING")
@pytest.mark.expect_log(r"loader: record [0-9a-f]+….* cannot be used .*; trying another S3 disk", level="WARNING")
def test_a_rotten_record_on_a_bucket_is_read_around_or_refused_in_one_line(built, seaweedfs, engine_env,
                                                                          tmp_path: Path) -> None:
    """Two S3 disks hold every shard: a byte flipped in the record of the one the host reads the
    sample from gives the sample from the other (its bytes right, the fallback counted and
    logged); the same record flipped on both stops the loader in one line naming the object and
    `hoard verify` — never handing the rotten bytes out."""
    cfg, _ = built
    engine_env(seaweedfs)
    buckets = {label: _add_s3(Path(cfg.source), seaweedfs, label) for label in ("s3a", "s3b")}
    _onto_the_buckets(Path(cfg.source), 6)
    _publish(cfg)
    host = _host(tmp_path / "host", seaweedfs, buckets, source="s3")
    whole = list(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL))
    doc = json.loads(seaweedfs.client().get_object(Bucket=buckets["s3a"], Key="loaders/pets@1.json")["Body"].read())
    victim = whole[len(whole) // 2]
    shard_hex, offset, _length, on, _ext = doc["objects"][victim["sha256"]]
    assert on == ["s3a", "s3b"]
    ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
    first = ld._located._assign(ld.plan(ld._located).runs)  # type: ignore[union-attr]
    r = next(r for r, run in enumerate(ld.plan(ld._located).runs)  # type: ignore[arg-type]
             if any(rec.sha.hex() == victim["sha256"] for rec in run.records))
    _flip(seaweedfs, buckets[first[r]], shard_hex, offset + 3)
    got = list(ld)
    assert [s["key"] for s in got] == [s["key"] for s in whole]
    assert all(hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"] for s in got)
    assert ld.stats()["fallbacks"] == 1
    _flip(seaweedfs, buckets["s3b" if first[r] == "s3a" else "s3a"], shard_hex, offset + 3)
    with pytest.raises(RemoteLoaderError) as e:
        list(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL))
    msg = str(e.value)
    assert "\n" not in msg and f"object {victim['sha256']}" in msg and "hoard verify" in msg


def test_a_host_reads_the_published_version_through_the_mount(built, fuse, tmp_path: Path) -> None:
    """`hoard dataset publish --dir` writes the locator for a mount reader; a Loader configured
    with `[loader] source = "mount"` (the mount and the locators' directory, nothing else) yields
    the server's sequence through a real FUSE mount, each file's sha256 checked; a node deleted
    after the publish is gone from the mount and withheld; a path that is no hoard mount, a
    locator not published and an unknown source are each one line."""
    cfg, _ = built
    locators = tmp_path / "locators"
    locators.mkdir()
    rep = _publish(cfg, "--dir", str(locators))
    assert rep["written"] == [str(locators / "pets@1.json")]
    whole = _seq(Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL))
    mnt = tmp_path / "mnt"
    host = tmp_path / "host" / "hoard.toml"
    host.parent.mkdir()
    host.write_text(f'[loader]\nsource = "mount"\nmount = "{mnt}"\nlocators = "{locators}"\n')
    with mounted(str(cfg.source), mnt):
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        got = []
        for _ in range(2):
            for s in ld:
                assert hashlib.sha256(s["bytes"]).hexdigest() == s["sha256"]
                got.append((s["epoch"], s["key"]))
        assert got == whole and ld.stats()["per_disk_bytes"] == {"mount": ld.stats()["read_bytes"]}
        gone = whole[2][1]
        sha = next(s.sha256 for s in ld.samples if s.key == gone)
        res = _hoard(cfg, "delete", "--node", sha)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 15
        ext = json.loads((locators / "pets@1.json").read_text())["objects"][sha][4]
        while os.path.exists(mnt / "by-hash" / sha[:2] / sha[2:4] / f"{sha}.{ext}"):
            assert time.monotonic() < deadline, "the mount still shows the deleted object"
            time.sleep(0.2)
        kept = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        assert [s["key"] for s in kept] == [k for e, k in whole if e == 0 and k != gone]
        assert kept.stats()["withheld"] == 1
        with pytest.raises(RemoteLoaderError, match=r"no locator of pets@2 there: publish it .*--dir") as e:
            Loader("pets@2", "train", config_path=host)
    with pytest.raises(RemoteLoaderError, match=rf"{mnt}: not a hoard mount .*`hoard mount PATH`") as e:
        Loader("pets@1", "train", config_path=host)
    assert "\n" not in str(e.value)
    with pytest.raises(LoaderError, match=r"Loader source='nfs': one of store, s3, mount"):
        Loader("pets@1", source="nfs", config_path=host)
    host.write_text('[loader]\nsource = "nfs"\n')
    with pytest.raises(ConfigError, match=r"loader\.source") as e:
        Loader("pets@1", config_path=host)
    assert "\n" not in str(e.value)


def test_a_locator_is_checked_before_anything_is_read(tmp_path: Path) -> None:
    """A locator file that is not one — not JSON, another dataset's, a place no record can be,
    no manifest placed — is refused in one line naming the file and `hoard dataset publish`."""
    from hoardfs.datasets.loader_remote import _checked

    sha, shard = "ab" * 32, "cd" * 12
    good = {"locator": 1, "dataset": "pets@1", "manifest_sha256": sha, "published": "t",
            "objects": {sha: [shard, fmt.RECORD_HEADER_SIZE, 10, ["s3a"], "jsonl"]}, "withheld": []}
    assert _checked(json.dumps(good).encode(), "f", "pets@1")["manifest_sha256"] == sha
    for bad, why in ((b"{", "is not JSON"), (json.dumps({**good, "dataset": "cats@1"}).encode(), "names dataset"),
                     (json.dumps({**good, "objects": {sha: [shard, 3, 10, [], ""]}}).encode(), "nowhere a record"),
                     (json.dumps({**good, "objects": {}}).encode(), "does not place its manifest"),
                     (json.dumps({**good, "withheld": ["x"]}).encode(), "withholds something")):
        with pytest.raises(RemoteLoaderError, match=why) as e:
            _checked(bad, "f", "pets@1")
        assert "\n" not in str(e.value) and "hoard dataset publish pets@1" in str(e.value)


@pytest.mark.expect_log(r"loader: shard [0-9a-f]+ on S3 disk s3a unreadable .*does not answer", level="WARNING")
def test_an_s3_engine_that_stalls_or_stops_mid_epoch_is_one_line_then_resumes(built, seaweedfs_own, engine_env,
                                                                              tmp_path: Path) -> None:
    """The host's S3 engine stalled (SIGSTOP) mid-epoch stops the loader within its disks.timeout_s
    retries, and stopped (killed) at once — each in one line naming the engine and a resume, not
    `hoard verify` (no record is rotten); once it answers again, the state saved where it stopped
    resumes to the uninterrupted sequence."""
    cfg, _ = built
    engine = seaweedfs_own
    engine_env(engine)
    bucket = _add_s3(Path(cfg.source), engine, "s3a")
    _onto_the_buckets(Path(cfg.source), 5)
    _publish(cfg)
    host = _host(tmp_path / "host", engine, {"s3a": bucket}, source="s3")
    host.write_text(host.read_text() + "timeout_s = 1\n")
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)]
    assert engine.proc is not None
    for stall in (True, False):
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        it = iter(ld)
        seen = [next(it)["key"] for _ in range(3)]
        if stall:
            os.killpg(engine.proc.pid, signal.SIGSTOP)
        else:
            engine.stop()
        t0 = time.monotonic()
        try:
            with pytest.raises(RemoteLoaderError) as e:
                for s in it:  # (what was read before it stalled is yielded first)
                    seen.append(s["key"])
        finally:
            if stall:
                os.killpg(engine.proc.pid, signal.SIGCONT)
            else:
                engine.start()
        msg = str(e.value)
        assert time.monotonic() - t0 < 60
        assert "\n" not in msg and "disk s3a" in msg and "start the S3 engine" in msg and "state_dict" in msg, msg
        assert "hoard verify" not in msg and e.value.exit_code == ExitCode.UNAVAILABLE
        rest = [s["key"] for s in Loader.from_state_dict(ld.state_dict(), config_path=host)]
        assert seen + rest == whole


def test_a_dead_mount_and_a_locator_no_host_should_read_are_one_line(built, fuse, tmp_path: Path) -> None:
    """A locator larger than LOCATOR_MAX (a sparse file), a FIFO in its place, or an S3 object
    over the limit is refused in one line before a byte of it is read; a mount whose daemon was
    killed (ENOTCONN) is one line naming `hoard umount --lazy`, when the loader is made and
    mid-epoch alike."""
    cfg, _ = built
    locators, mnt, host = _mount_host(cfg, tmp_path)
    with mounted(str(cfg.source), mnt) as proc:
        with open(locators / "pets@2.json", "wb") as f:
            f.truncate(LOCATOR_MAX + 1)
        with pytest.raises(RemoteLoaderError, match=rf"holds {LOCATOR_MAX + 1} bytes, more than a locator may") as e:
            Loader("pets@2", "train", config_path=host)
        assert "\n" not in str(e.value)
        (locators / "pets@2.json").unlink()
        os.mkfifo(locators / "pets@2.json")
        with pytest.raises(RemoteLoaderError, match=r"pets@2\.json: not a regular file"):
            Loader("pets@2", "train", config_path=host)
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        it = iter(ld)
        next(it)
        proc.kill()  # the daemon dies; the kernel keeps the mount attached (`mounted` leaves it)
        proc.wait()
        deadline = time.monotonic() + 10
        while True:
            try:
                os.stat(mnt)
            except OSError as err:
                assert err.errno == errno.ENOTCONN
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        try:
            for make in (lambda: list(it), lambda: Loader("pets@1", "train", config_path=host)):
                with pytest.raises(RemoteLoaderError, match=r"the hoard mount does not answer .*hoard umount --lazy") \
                        as e:
                    make()
                assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_a_locator_object_over_the_limit_is_not_read(seaweedfs, engine_env, tmp_path: Path) -> None:
    """An S3 disk's get_published refuses an object larger than its limit (naming its size)
    without reading it, and gives one within it whole."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    disk.put_published("pets@1.json", b"x" * 100)
    assert disk.get_published("pets@1.json", 100) == b"x" * 100
    with pytest.raises(ValueError, match=r"^101 bytes$"):
        disk.put_published("pets@1.json", b"x" * 101) or disk.get_published("pets@1.json", 100)
    assert disk.get_published("pets@9.json", 100) is None


def test_a_mount_that_hangs_is_one_line_within_the_loaders_timeout(built, fuse, tmp_path: Path) -> None:
    """A mount whose daemon is stopped (SIGSTOP: every read waits in the kernel) stops an epoch
    within `[loader] timeout_s`, and a new Loader as well, each in one line naming the timeout —
    never a hang; once the daemon goes on, the state saved where it stopped resumes to the
    uninterrupted sequence."""
    cfg, _ = built
    _locators, mnt, host = _mount_host(cfg, tmp_path, "timeout_s = 2\n")
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    with mounted(str(cfg.source), mnt) as proc:
        stuck = r"the hoard mount gave nothing for 2 s \(\[loader\] timeout_s\): its daemon is stopped or stuck"
        for first in (True, False):  # a new Loader on a mount not read yet; an epoch under way
            if not first:
                ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
                it = iter(ld)
                seen = [next(it)["key"]]
            proc.send_signal(signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                with pytest.raises(RemoteLoaderError, match=stuck) as e:
                    if first:
                        Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
                    for s in it:  # (what was read before it stopped is yielded first)
                        seen.append(s["key"])
            finally:
                proc.send_signal(signal.SIGCONT)
            assert time.monotonic() - t0 < 30 and "\n" not in str(e.value)
        rest = [s["key"] for s in Loader.from_state_dict(ld.state_dict(), config_path=host)]
        assert seen + rest == whole


def test_a_host_with_read_only_credentials_reads_and_trusts_only_a_manifest(built, seaweedfs_own, engine_env,
                                                                             tmp_path: Path) -> None:
    """A publish whose --dir cannot be written is refused before any bucket is written. A host
    whose S3 credentials may only read and list (a PUT with them is refused) reads the newest
    published version, the server's sequence — it writes nothing; a locator that names another
    object (a sample, its sha256 right) as the manifest is one line, not a traceback."""
    cfg, _ = built
    engine = seaweedfs_own
    engine_env(engine)
    bucket = _add_s3(Path(cfg.source), engine, "s3a")
    _onto_the_buckets(Path(cfg.source), 5)
    res = _hoard(cfg, "dataset", "publish", "pets@1", "--dir", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "not a directory this user may write" in res.stderr.strip().splitlines()[-1]
    assert "Contents" not in engine.client().list_objects_v2(Bucket=bucket, Prefix="loaders/")  # (none half made)
    _publish(cfg)
    ids = json.loads((engine.base / "identities.json").read_text())
    ids["identities"].append({"name": "reader", "credentials": [{"accessKey": "hoardreader", "secretKey": "r" * 24}],
                              "actions": ["Read", "List"]})
    (engine.base / "identities.json").write_text(json.dumps(ids))
    engine.stop()
    engine.start()
    host = _host(tmp_path / "host", engine, {"s3a": bucket}, source="s3")
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    admin = seaweedfs_own.client()
    doc = json.loads(admin.get_object(Bucket=bucket, Key="loaders/pets@1.json")["Body"].read())
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = "hoardreader", "r" * 24
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.client_for(engine.endpoint).put_object(Bucket=bucket, Key="loaders/x.json", Body=b"{}")
    assert [s["key"] for s in Loader("pets", "train", 7, 0, config_path=host, **SMALL)] == whole
    sample = next(h for h in doc["objects"] if h != doc["manifest_sha256"])
    admin.put_object(Bucket=bucket, Key="loaders/pets@1.json",
                     Body=json.dumps({**doc, "manifest_sha256": sample}).encode())
    with pytest.raises(RemoteLoaderError, match=r"names as its manifest is not a dataset manifest: publish it again") \
            as e:
        Loader("pets@1", "train", config_path=host)
    assert "\n" not in str(e.value)


def test_a_workers_state_resumes_only_while_the_same_samples_are_withheld(built, seaweedfs, engine_env,
                                                                          tmp_path: Path) -> None:
    """Three workers (blocks of 4) stopped mid-epoch with a sample withheld: each one's state
    resumes its own uninterrupted sequence, on the host and on the server alike. After a sample
    one of them already handed out is deleted and the version published again, the shares
    would deal otherwise (some samples twice, others never): each worker's state is refused in
    one line naming the whole sequence's state."""
    cfg, _ = built
    engine_env(seaweedfs)
    bucket = _add_s3(Path(cfg.source), seaweedfs, "s3a")
    _onto_the_buckets(Path(cfg.source), 5)
    here = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    whole = [s["key"] for s in here]
    sha_of = {s.key: s.sha256 for s in here.samples}
    assert _hoard(cfg, "delete", "--node", sha_of[whole[5]]).returncode == 0
    _publish(cfg)
    host = _host(tmp_path / "host", seaweedfs, {"s3a": bucket}, source="s3")
    kw = dict(SMALL, workers=3, block=4)
    states, seen, full = [], [], []
    for w in range(3):
        full.append([s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=host, worker=w, **kw)])
        ld = Loader("pets@1", "train", 7, 0, config_path=host, worker=w, **kw)
        mine: list[str] = []
        for s in ld:
            mine.append(s["key"])
            if len(mine) == 6:
                break
        states.append(json.loads(json.dumps(ld.state_dict())))
        seen.append(mine)
        assert "withheld" in states[w] and len(json.dumps(states[w])) <= 1024
    for where in (host, cfg.source):
        for w in range(3):
            assert seen[w] + [s["key"] for s in Loader.from_state_dict(states[w], config_path=where)] == full[w]
    assert _hoard(cfg, "delete", "--node", sha_of[seen[0][1]]).returncode == 0
    _publish(cfg)
    for w in range(3):
        with pytest.raises(LoaderError, match=rf"worker {w}'s of 3 of pets@1, saved while other samples were "
                                              r"withheld .*resume from the whole sequence's state") as e:
            list(Loader.from_state_dict(states[w], config_path=host))
        assert "\n" not in str(e.value)


def test_a_remote_loader_holds_no_file_descriptor_after_an_epoch_or_an_abandoned_one(built, seaweedfs, engine_env,
                                                                                     tmp_path: Path) -> None:
    """With the cyclic collector off (so it cannot close what the loader leaves open), a loader
    reading two S3 disks holds no more file descriptors than before it was made: once made,
    after a whole epoch, after an iteration abandoned mid-epoch (its generator closed), and
    after `close` (a `with` block) ends an iteration still going; it reads again after that, and
    a pickled copy (a DataLoader worker's) opens its own disks and reads the same."""
    cfg, _ = built
    engine_env(seaweedfs)
    buckets = {label: _add_s3(Path(cfg.source), seaweedfs, label) for label in ("s3a", "s3b")}
    _onto_the_buckets(Path(cfg.source), 5)
    _publish(cfg)
    host = _host(tmp_path / "host", seaweedfs, buckets, source="s3", disk="s3a")
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        before = fds()
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        assert fds() == before
        assert [s["key"] for s in ld] == whole
        assert fds() == before
        it = iter(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL))
        assert next(it)["key"] == whole[0]
        assert fds() > before  # (its S3 connections, open while it reads)
        it.close()
        assert fds() == before
        with Loader("pets@1", "train", 7, 0, config_path=host, **SMALL) as ld2:
            going = iter(ld2)
            assert [next(going)["key"] for _ in range(3)] == whole[:3]
        assert fds() == before
        assert [s["key"] for s in ld2] == whole[3:]  # (closed, it reads on from there, opening anew)
        assert fds() == before
        copy = pickle.loads(pickle.dumps(Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)))
        assert [s["key"] for s in copy] == whole  # (pickled, as for a DataLoader's worker: it opens its own)
        assert fds() == before
    finally:
        gc.enable()
