"""The shard backend contract (fsd/core/backend.py), one test body for the local disk and for
a bucket on each real S3 engine — SeaweedFS (tests/seaweedfs.py) and, where Ceph is installed,
Ceph RGW (tests/ceph_rgw.py; fsd/core/s3.py) — then what only an
engine can do wrong: a seal retried with other bytes, the engine killed mid-upload, credentials
refused, the bucket deleted — each one line with the next step, nothing sealed that the engine
does not hold. docs/scale-out.md."""

from __future__ import annotations

import errno
import hashlib
import inspect
import io
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import lmdb
import pytest

from hoardfs.base import config
from hoardfs.base.errors import ConfigError, HoardError
from hoardfs.base.proc import booted_ns, pid_start
from hoardfs.fsd.core import backend, s3
from hoardfs.fsd.core import shardfmt as fmt
from hoardfs.fsd.core.disks import DiskGone, LocalDisk, write_identity
from tests import ceph_rgw as ceph_mod
from tests import seaweedfs as weed_mod
from tests.helpers import ENGINE_FIXTURES, REPO, S3_ENGINES, flip_byte, missing

_HOST = s3._HOST  # (this host as a claim names it: name, machine, boot, pid namespace)
#: small parts, so a 12 MiB shard goes up in three (S3 wants ≥ 5 MiB for all but the last)
PART = 5 << 20


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point boto3's usual chain (the environment) at a server's identity, and at nothing else."""
    def use(engine: weed_mod.Engine | ceph_mod.Gateway, secret: str | None = None) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", engine.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or engine.secret_key)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
            monkeypatch.delenv(var, raising=False)
    return use


def s3_disk(engine: weed_mod.Engine | ceph_mod.Gateway, staging: Path) -> s3.S3Disk:
    bucket = "hoard-" + secrets.token_hex(6)
    engine.client().create_bucket(Bucket=bucket)
    return s3.S3Disk.initialise("s3a", engine.endpoint, bucket, staging, capacity_bytes=10 << 30, part_size=PART)


#: the backends of the contract's tests: a local disk, and a bucket on each S3 engine
BACKENDS = ["local", *(pytest.param(p, marks=pytest.mark.services) if isinstance(p, str)
                      else pytest.param(*p.values, marks=[pytest.mark.services, *p.marks]) for p in S3_ENGINES)]


@pytest.fixture(params=BACKENDS)
def disk(request, tmp_path: Path, engine_env):
    """The backend under test: a local directory disk, or a fresh bucket on the session's engine."""
    if request.param == "local":
        root = tmp_path / "hdd1"
        root.mkdir()
        return LocalDisk("hdd1", root, write_identity(root, "hdd1")["uuid"], require_mount=False)
    engine = request.getfixturevalue(ENGINE_FIXTURES[request.param][0])
    engine_env(engine)
    return s3_disk(engine, tmp_path / "staging")


def shard_bytes(payloads: list[bytes], sid: bytes) -> tuple[bytes, bytes]:
    """(records part, footer) of a raw shard holding `payloads`, as the writer lays them out."""
    body = bytearray(fmt.encode_shard_header(fmt.ShardHeader(sid, fmt.CLASSES["raw"])))
    infos = []
    for p in payloads:
        sha = hashlib.sha256(p).digest()
        infos.append(fmt.RecordInfo(sha, len(body) + fmt.RECORD_HEADER_SIZE, len(p), fmt.xxh3(p)))
        body += fmt.encode_record(sha, p)
    return bytes(body), fmt.encode_footer(infos, len(body))


def write_shard(disk, payloads: list[bytes], seal: bool = True, sid: bytes | None = None) -> tuple[str, bytes]:
    """A shard written through the contract: create, append, sync, footer, seal."""
    sid = sid or os.urandom(12)
    body, footer = shard_bytes(payloads, sid)
    sink = disk.create(sid.hex())
    try:
        sink.write(body)
        sink.sync()
        if seal:
            sink.write(footer)
            sink.sync()
    finally:
        sink.close()
    if seal:
        disk.seal(sid.hex())
        return sid.hex(), body + footer
    return sid.hex(), body


def damage(disk, shard_hex: str, at: int) -> None:
    """Flip one byte of the sealed replica where the backend keeps it (the test's own hands)."""
    if isinstance(disk, LocalDisk):
        with open(disk.path(shard_hex, True), "r+b") as f:
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))
        disk.forget(shard_hex)
        return
    c, key = disk.client, disk.key(shard_hex)
    obj = c.get_object(Bucket=disk.bucket, Key=key)
    data = bytearray(obj["Body"].read())
    data[at] ^= 0xFF
    c.put_object(Bucket=disk.bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


# -- the contract, one body for both backends -------------------------------------------------


def test_write_seal_read_ranges(disk) -> None:
    """An open shard reads; sealed, it keeps its size and bytes: any range, a short read at the end, verify."""
    big = os.urandom(20 << 20)  # four parts of an upload; longer than a verify's window (s3.WINDOW)
    payloads = [b"hello hoard\n", big, os.urandom(1000)]
    shard, body = write_shard(disk, payloads, seal=False)
    assert disk.state(shard) == "open"
    assert disk.read_at(shard, 0, 32) == body[:32]  # an open shard reads too
    assert disk.size(shard) == len(body)
    sink = disk.reopen(shard)
    _, footer = shard_bytes(payloads, bytes.fromhex(shard))
    sink.write(footer)
    sink.sync()
    sink.close()
    disk.seal(shard)
    data = body + footer
    assert disk.state(shard) == "sealed"
    assert disk.size(shard) == len(data)
    for off, n in ((0, 32), (100, 12), (5 << 20, 1 << 20), (len(data) - 10, 10), (len(data) - 10, 1000)):
        assert disk.read_at(shard, off, n) == data[off:off + n]
        assert disk.read_exact(shard, off, n) == data[off:off + n]
    assert disk.read_at(shard, len(data), 10) == b""  # past the end: nothing, as a short read
    assert disk.verify(shard) == (len(data), 3)
    assert disk.verify(shard, sha256=True) == (len(data), 3)


def test_list_and_delete(disk) -> None:
    """The listing names sealed and open shards; delete removes one durably, a second time is FileNotFoundError."""
    sealed, _ = write_shard(disk, [b"a" * 100])
    open_, _ = write_shard(disk, [b"b" * 100], seal=False)
    assert sorted(disk.shard_ids()) == sorted([(sealed, True), (open_, False)])
    disk.delete(sealed)
    assert disk.state(sealed) is None
    with pytest.raises(FileNotFoundError):
        disk.delete(sealed)
    with pytest.raises(FileNotFoundError):
        disk.size(sealed)
    disk.delete(open_)
    assert disk.shard_ids() == []
    assert disk.free_bytes(0) > 0


def test_damage_is_caught_by_verify(disk) -> None:
    """One flipped byte in a payload of the stored replica fails verify."""
    shard, data = write_shard(disk, [os.urandom(3000), os.urandom(5000)])
    damage(disk, shard, len(data) // 2)  # inside the second payload
    with pytest.raises(fmt.ShardFormatError, match="checksum"):
        disk.verify(shard)


def test_a_seal_retried_after_a_crash_keeps_the_shard(disk) -> None:
    """The open file is still there after the sealed copy was made (a crash between the two):
    appended again and sealed again, the shard is sealed once, with its bytes."""
    shard, data = write_shard(disk, [os.urandom(6 << 20)])
    write_shard(disk, [bytes(data[fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE:-96])], sid=bytes.fromhex(shard))
    assert disk.state(shard) == "sealed"
    assert disk.shard_ids() == [(shard, True)]
    assert disk.read_at(shard, 0, len(data)) == data
    assert disk.verify(shard, sha256=True) == (len(data), 1)


def test_unseal_and_set_aside(disk) -> None:
    """Unseal makes a sealed shard open again with its bytes; set aside moves it out of the listing."""
    shard, data = write_shard(disk, [os.urandom(2000)])
    assert disk.unseal(shard)
    assert disk.state(shard) == "open"
    assert disk.read_at(shard, 0, len(data)) == data
    disk.seal(shard)
    assert disk.state(shard) == "sealed"
    where = disk.set_aside(shard)
    assert shard in where.name
    assert disk.state(shard) is None
    assert disk.shard_ids() == []


def test_a_sealed_shard_s_staging_file_goes_after_the_seal_never_one_staged_again(s3_engine, engine_env,
                                                                                    tmp_path: Path) -> None:
    """The seal does not wait for its staging file's unlink (50–80 ms for 256 MiB cached: done by a
    thread of its own), yet the file is gone from its name when the seal returns; a shard of the
    same id staged again meanwhile (unsealed) is never the file removed, and one a crash leaves
    in tmp/ is the orphan sweep's."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    held, unlinking = threading.Event(), threading.Event()
    inner = disk._unlink_dropped

    def slow_unlink(path: Path) -> None:
        unlinking.set()
        assert held.wait(30)
        inner(path)

    disk._unlink_dropped = slow_unlink  # type: ignore[method-assign]
    shard, data = write_shard(disk, [os.urandom(3000), os.urandom(5000)])
    assert unlinking.wait(10)  # the seal returned with its unlink still under way
    assert disk.state(shard) == "sealed" and disk.staging.state(shard) is None
    dropped = list((disk.staging.root / "tmp").iterdir())
    assert [p.name.split(".")[0] for p in dropped] == [shard]
    assert disk.unseal(shard)  # staged again under its own name while the unlink waits
    held.set()
    disk.close_all()  # (waits for the unlinks under way)
    assert list((disk.staging.root / "tmp").iterdir()) == []
    assert disk.state(shard) == "open" and disk.read_at(shard, 0, len(data)) == data
    disk.seal(shard)
    disk.close_all()
    assert disk.read_at(shard, 0, len(data)) == data and disk.verify(shard)[0] == len(data)

    # a crash between the rename and the unlink: the file is a stale tmp file
    held.clear()
    unlinking.clear()
    other, _ = write_shard(disk, [os.urandom(1000)])
    assert unlinking.wait(10)
    removed, _ = disk.beside.sweep(time.time() + 3600, 60, repair=False)
    assert removed == 1 and list((disk.staging.root / "tmp").iterdir()) == []
    held.set()
    disk.close_all()  # (the unlink finds it gone: nothing raised, nothing logged as lost)
    assert disk.state(other) == "sealed"


def test_the_tmp_sweep_skips_a_file_a_seal_unlinks_under_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seal unlinks its staging file in the staging folder's tmp/ without the maintenance lock
    the orphan sweep holds: one gone between the sweep's listing and its look at it is skipped,
    not an internal error (as for `hoard verify --orphans` beside a writer)."""
    from hoardfs.fsd.core.beside import LocalBeside

    (tmp_path / "tmp").mkdir()
    dropped, old = tmp_path / "tmp" / "aa.sealed.0001", tmp_path / "tmp" / "copy.tmp"
    dropped.write_bytes(b"x")
    old.write_bytes(b"y")
    stat_of = Path.stat

    def unlinked_after_a_look(self: Path, **kw):  # the seal's thread lands just after a look at it
        st = stat_of(self, **kw)
        if self.name == dropped.name:
            os.unlink(self)
        return st

    monkeypatch.setattr(Path, "stat", unlinked_after_a_look)
    removed, _ = LocalBeside(tmp_path).sweep(time.time() + 10, 1, repair=False)
    assert removed >= 1 and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("how", ["gone", "emptied"])
def test_a_staging_folder_lost_as_its_seal_ends_is_the_disk_gone(seaweedfs, engine_env, tmp_path: Path,
                                                                  how: str) -> None:
    """The staging folder gone (or its mount point left empty) once the upload is done: the seal
    raises DiskGone — the store takes the disk out of use — and makes nothing under the empty
    mount point (before, it raised FileNotFoundError, or left a tmp/ there)."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    shard, _ = write_shard(disk, [os.urandom(2000)], seal=False)
    inner = disk._upload

    def upload_then_lose_the_folder(*a, **kw) -> None:
        inner(*a, **kw)
        os.rename(disk.staging.root, tmp_path / "elsewhere")
        if how == "emptied":
            disk.staging.root.mkdir()

    disk._upload = upload_then_lose_the_folder  # type: ignore[method-assign]
    with pytest.raises(DiskGone):
        disk.seal(shard)
    assert not disk.staging.root.exists() or list(disk.staging.root.iterdir()) == []


def test_ctrl_c_while_a_store_waits_for_its_disks_still_closes_it(store_factory) -> None:
    """Store.close waits for an S3 disk's staging files' unlinks (`close_all`): Ctrl-C there still
    closes the index and lets go of the store lock."""
    from hoardfs.fsd.core import storelock
    from hoardfs.fsd.store import lock_root

    store = store_factory(n_disks=2)
    disk = next(iter(store.disks.values()))

    def interrupted() -> None:
        raise KeyboardInterrupt

    disk.close_all = interrupted  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            store.close()
    finally:
        del disk.close_all  # (the fixture closes the store again)
    assert store.held == ""
    assert storelock._get(lock_root(store.cfg), storelock.STORE).shared == 0
    with pytest.raises(lmdb.Error):  # (the index's environment is closed)
        store.index.count_objects()


def test_both_backends_meet_the_contract() -> None:
    """Every method of ShardBackend is S3Disk's too, with the same parameters (the local disk's
    is tests/test_layering.py's)."""
    for name, fn in vars(backend.ShardBackend).items():
        if inspect.isfunction(fn) and not name.startswith("_"):
            have = getattr(s3.S3Disk, name)
            assert list(inspect.signature(have).parameters) == list(inspect.signature(fn).parameters), name


# -- what only an engine does --------------------------------------------------------------------


def test_a_different_object_under_the_key_is_refused_not_replaced(s3_engine, engine_env, tmp_path: Path) -> None:
    """A shard sealed again with other bytes is refused in one line; the object there stays."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, data = write_shard(disk, [b"first" * 100])
    with pytest.raises(s3.ObjectMismatch, match="already holds a different object") as err:
        write_shard(disk, [b"other" * 100], sid=bytes.fromhex(shard))
    assert isinstance(err.value, HoardError) and "hoard check" in err.value.message
    assert disk.read_at(shard, 0, len(data)) == data  # the first is untouched
    assert disk.staging.state(shard) == "open"  # the second stays where it was


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
def test_an_upload_racing_another_never_replaces_it(seaweedfs, engine_env, tmp_path: Path, same: bool) -> None:
    """Another object lands under the key between the seal's look and its upload's completion:
    the engine refuses the completion (`If-None-Match: *`, 412) and the seal judges what is
    there — the same shard is taken as sealed, another is refused and kept as it was. (An
    engine's own guard, which Ceph RGW 16.2 lacks: it replaces the object; a seal's claim
    guards against another seal on any engine — the test below.)"""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    payload = os.urandom(7 << 20)
    sid = os.urandom(12)
    body, footer = shard_bytes([payload if same else payload[::-1]], sid)
    theirs = body + footer
    meta = {s3.SHA_KEY: hashlib.sha256(theirs).hexdigest()}
    completes = []

    def the_other_sealer(**_kw) -> None:
        completes.append(1)
        seaweedfs.client().put_object(Bucket=disk.bucket, Key=disk.key(sid.hex()), Body=theirs, Metadata=meta)

    disk.client.meta.events.register("before-call.s3.CompleteMultipartUpload", the_other_sealer)
    if same:
        write_shard(disk, [payload], sid=sid)
        assert disk.staging.state(sid.hex()) is None
    else:
        with pytest.raises(s3.ObjectMismatch, match="already holds a different object"):
            write_shard(disk, [payload], sid=sid)
        assert disk.staging.state(sid.hex()) == "open"
    assert completes == [1]
    assert disk.read_at(sid.hex(), 0, len(theirs)) == theirs
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []  # ours aborted


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
def test_two_seals_of_one_shard_never_replace_each_other(s3_engine, engine_env, tmp_path: Path, same: bool) -> None:
    """A second seal of the same shard (another process: its own staging folder) runs while the
    first completes its upload: with the same bytes both end sealed on the one object; with
    other bytes the second is refused at its claim, before its upload is completed, and keeps its open
    shard — the object is the first's on every engine, Ceph RGW 16.2 too (it ignores
    `If-None-Match: *` on a multipart completion); no claim is left."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    (tmp_path / "staging2").mkdir()
    write_identity(tmp_path / "staging2", "s3a", uuid=disk.uuid)
    other = s3.S3Disk("s3a", disk.uuid, disk.endpoint, disk.bucket, tmp_path / "staging2", 10 << 30, part_size=PART)
    payload, sid = os.urandom(7 << 20), os.urandom(12)
    raced: list[object] = []

    def the_other_seal(**_kw) -> None:
        if raced:
            return
        raced.append("ran")
        try:
            write_shard(other, [payload if same else payload[::-1]], sid=sid)
        except s3.ObjectMismatch as e:
            raced.append(e)

    disk.client.meta.events.register("before-call.s3.CompleteMultipartUpload", the_other_seal)
    _, ours = write_shard(disk, [payload], sid=sid)
    assert disk.state(sid.hex()) == "sealed" and disk.staging.state(sid.hex()) is None
    assert disk.read_at(sid.hex(), 0, len(ours)) == ours and disk.verify(sid.hex(), sha256=True)[1] == 1
    if same:
        assert raced == ["ran"] and other.staging.state(sid.hex()) is None
    else:
        assert len(raced) == 2 and isinstance(raced[1], s3.ObjectMismatch), raced
        assert "is being sealed with other bytes" in raced[1].message and "\n" not in raced[1].message
        assert other.staging.state(sid.hex()) == "open"
    assert disk.client.list_objects_v2(Bucket=disk.bucket, Prefix=s3.CLAIM_PREFIX).get("KeyCount") == 0
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []


def _claims(disk: s3.S3Disk) -> list[str]:
    listed = disk.client.list_objects_v2(Bucket=disk.bucket, Prefix=s3.CLAIM_PREFIX).get("Contents", [])
    return [disk.client.get_object(Bucket=disk.bucket, Key=o["Key"])["Body"].read().decode() for o in listed]


def _open_shard(disk: s3.S3Disk, payloads: list[bytes]) -> tuple[str, bytes]:
    """An open shard with its footer written, not sealed: what recovery leaves before its seal."""
    sid = os.urandom(12)
    body, footer = shard_bytes(payloads, sid)
    sink = disk.create(sid.hex())
    try:
        sink.write(body + footer)
        sink.sync()
    finally:
        sink.close()
    return sid.hex(), body + footer


@pytest.fixture
def a_process():
    """(pid, start time) of a process on this host, running while the test runs: `.end()` it."""
    proc = subprocess.Popen(["sleep", "60"])

    class Handle:
        pid, start = proc.pid, pid_start(proc.pid)

        @staticmethod
        def end() -> None:
            proc.kill()
            proc.wait()
    yield Handle
    Handle.end()


def test_a_claim_left_by_a_seal_that_is_gone_never_blocks_the_next_seal(s3_engine, engine_env, a_process,
                                                                        tmp_path: Path) -> None:
    """A seal that failed (killed, or the engine down) leaves its claim naming its bytes;
    recovery then cuts the open shard back to what the index acknowledges and seals other
    bytes. Once the claim's seal is gone — its process ended on this host, or it was this very
    process's own seal, no longer running — the claim is replaced and the seal goes through
    (before: refused as "being sealed with other bytes" for the 24 h of `verify --orphans`'
    grace, and the refusal escaped recovery inside every writable Store.open)."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    a_process.end()
    theirs = {"a dead process": f"{_HOST} {a_process.pid} {a_process.start} 0011223344556677",
              "this process, an earlier seal": f"{_HOST} {os.getpid()} {pid_start(os.getpid())} 8899aabbccddeeff"}
    for who, seal in theirs.items():
        shard, data = _open_shard(disk, [os.urandom(3000), os.urandom(500)])
        old = f"{len(data) + 4096} {hashlib.sha256(data + b'cut').hexdigest()} {seal}"
        disk.client.put_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard, Body=old.encode())
        disk.seal(shard)
        assert disk.state(shard) == "sealed" and disk.staging.state(shard) is None, who
        assert disk.read_at(shard, 0, len(data)) == data and disk.verify(shard, sha256=True)[1] == 2, who
        assert _claims(disk) == [], who


def test_a_live_seal_s_claim_with_other_bytes_still_refuses(s3_engine, engine_env, a_process, tmp_path: Path) -> None:
    """A claim naming other bytes whose seal may still run — its process alive on this host,
    another host's (its process cannot be asked), or a claim in the older form that names no
    seal — refuses the seal as before, in one line: a SealRefused, which is an OSError as every
    other failed seal of a replica (the writer and recovery leave the replica out and go on)
    and an ObjectMismatch; the shard stays open and the claim is left as it was."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    seals = {"a live process": f"{_HOST} {a_process.pid} {a_process.start} 0011223344556677",
             "another host": f"{_HOST}-other 1 1 0011223344556677", "the older form": ""}
    for who, seal in seals.items():
        shard, data = _open_shard(disk, [os.urandom(2000)])
        old = f"{len(data) + 1} {hashlib.sha256(data + b'x').hexdigest()} {seal}".strip()
        disk.client.put_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard, Body=old.encode())
        with pytest.raises(s3.SealRefused) as err:
            disk.seal(shard)
        assert isinstance(err.value, OSError) and isinstance(err.value, s3.ObjectMismatch), who
        assert "is being sealed with other bytes" in err.value.message and "\n" not in err.value.message, who
        assert disk.state(shard) == "open" and disk.read_at(shard, 0, len(data)) == data, who
        assert old in _claims(disk), who
        disk.client.delete_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard)


CLAIM_AND_WAIT = """
import secrets, sys, time
from pathlib import Path
from hoardfs.fsd.core import s3
disk = s3.S3Disk("s3a", sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), 10 << 30)
nonce = secrets.token_hex(8)
s3._SEALING.add(nonce)  # a seal of this process under way: its claim put, its upload not yet
disk._claim(sys.argv[5], int(sys.argv[6]), sys.argv[7], nonce)
print("claimed", flush=True)
time.sleep(60)
"""


def test_a_live_seal_in_another_pid_namespace_of_this_host_name_still_refuses(s3_engine, engine_env,
                                                                             tmp_path: Path) -> None:
    """A seal whose process runs in another pid namespace under this host's name — a container
    sharing the host's UTS namespace (host networking), or another machine of the same name: a
    clone — names a pid that is some other process here, or none. Its claim is live: a seal
    with other bytes is refused at it (before: judged by this host's /proc, its claim looked
    gone and was replaced, and on an engine that ignores `If-None-Match` on a multipart
    completion the second seal's object could replace the first's)."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        missing("UNSHARE --PID (ROOT) IS NEEDED for a seal in another pid namespace")
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    (tmp_path / "staging2").mkdir()
    write_identity(tmp_path / "staging2", "s3a", uuid=disk.uuid)
    shard, data = _open_shard(disk, [os.urandom(2000)])
    other = hashlib.sha256(data + b"x").hexdigest()
    seal = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", CLAIM_AND_WAIT,
                             disk.uuid, disk.endpoint, disk.bucket, str(tmp_path / "staging2"), shard,
                             str(len(data) + 1), other], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert seal.stdout is not None and seal.stdout.readline().strip() == "claimed"
        with pytest.raises(s3.SealRefused):
            disk.seal(shard)
        assert disk.state(shard) == "open" and len(_claims(disk)) == 1 and other in _claims(disk)[0]
    finally:
        seal.kill()
        seal.wait()
    disk.client.delete_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard)
    disk.seal(shard)
    assert disk.state(shard) == "sealed" and disk.read_at(shard, 0, len(data)) == data and _claims(disk) == []


def test_a_claim_of_another_boot_made_since_this_boot_began_still_refuses(s3_engine, engine_env,
                                                                          tmp_path: Path) -> None:
    """A claim naming this host name and machine id but another boot id is an earlier boot's —
    its seal gone, the claim replaced — only if its object was made before this boot began
    (`btime`; its LastModified, with `CLAIM_CLOCK_SLACK` for the engine's clock). One made
    since came from another kernel with this machine's name and id (a VM cloned with its
    machine id, a sandbox with a kernel of its own): its seal may run, so a seal with other
    bytes is refused at it and the claim is left (before: judged by boot id alone, it was
    replaced, as zone reservations were before they passed their creation time)."""
    name, machine, boot, pidns = s3._HOST.split("/")
    booted = booted_ns()
    if "-" in (machine, boot) or booted is None:
        pytest.skip("no machine id, boot id or boot time to tell a boot by")
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, data = _open_shard(disk, [os.urandom(2000)])
    clone = f"{len(data) + 1} {hashlib.sha256(data + b'x').hexdigest()} {name}/{machine}/{'0' * 32}/{pidns} 1 1 " \
            "0011223344556677"
    disk.client.put_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard, Body=clone.encode())
    with pytest.raises(s3.SealRefused, match="is being sealed with other bytes"):
        disk.seal(shard)
    assert disk.state(shard) == "open" and _claims(disk) == [clone]
    # the same claim made before this boot began is an earlier boot's: every process of it is gone
    assert disk._gone(clone, booted - s3.CLAIM_CLOCK_SLACK - 10**9)
    assert not disk._gone(clone, booted - s3.CLAIM_CLOCK_SLACK // 2) and not disk._gone(clone, None)


def test_a_ranged_read_whose_signature_is_refused_is_signed_again(s3_engine, engine_env, tmp_path: Path) -> None:
    """A ranged GET goes to a URL presigned for its shard's key (`S3Disk._get`: boto3's CPU per
    request was the read's limit). One the engine refuses — signed with credentials rotated
    since, or a bad signature — is asked again through boto3 and the key signed anew: the read
    returns the bytes asked for, and the next one goes to the new URL."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, data = write_shard(disk, [os.urandom(5000), os.urandom(700)])
    key = disk.key(shard)
    assert disk.read_at(shard, 10, 100) == data[10:110]
    url, until = disk._signed[key]
    bad = re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=" + "0" * 64, url)
    assert bad != url
    disk._signed[key] = (bad, until)
    assert disk.read_exact(shard, 200, 300) == data[200:500]
    assert disk.read_at(shard, 0, len(data)) == data and disk._signed[key][0] not in (bad, "")


def test_a_stored_sha256_that_differs_is_caught(s3_engine, engine_env, tmp_path: Path) -> None:
    """Bytes whose records all check but which are not what was uploaded (the object's sha256
    is not the one stored at upload) fail verify."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, data = write_shard(disk, [b"x" * 100])
    disk.client.put_object(Bucket=disk.bucket, Key=disk.key(shard), Body=data, Metadata={s3.SHA_KEY: "0" * 64})
    with pytest.raises(s3.ObjectMismatch, match="stored at upload"):
        disk.verify(shard)


def test_engine_killed_mid_upload_leaves_the_shard_open(s3_engine_own, engine_env, tmp_path: Path) -> None:
    """The engine dies between two parts of the upload: seal fails in one line, the shard is
    still open (nothing reported sealed that the engine does not hold), and once the engine is
    back the same seal completes."""
    engine = s3_engine_own
    engine_env(engine)
    disk = s3_disk(engine, tmp_path / "staging")
    kept, kept_data = write_shard(disk, [b"sealed before" * 100])
    parts = []

    def kill_at_second_part(**_kw) -> None:
        parts.append(1)
        if len(parts) == 2:
            engine.stop()  # SIGKILL, as a crash

    disk.client.meta.events.register("before-call.s3.UploadPart", kill_at_second_part)
    with pytest.raises(s3.EngineError) as err:
        write_shard(disk, [os.urandom(12 << 20)])
    msg = err.value.message
    assert "disk s3a" in msg and "does not answer" in msg and "start it" in msg and "\n" not in msg
    assert isinstance(err.value, DiskGone) and isinstance(err.value, HoardError)
    with pytest.raises(s3.EngineError, match="does not answer while reading shard"):
        disk.read_at(kept, 0, 10)  # the read path says the same while the engine is down
    disk.client.meta.events.unregister("before-call.s3.UploadPart", kill_at_second_part)
    engine.start()
    assert disk.read_at(kept, 0, len(kept_data)) == kept_data
    shard = disk.staging.shard_ids()[0][0]
    assert disk.state(shard) == "open"
    assert disk.shard_ids() == sorted([(kept, True), (shard, False)])
    disk.seal(shard)  # past the claim the killed seal left: it names these bytes
    assert disk.state(shard) == "sealed"
    assert disk.verify(shard, sha256=True)[1] == 1
    assert disk.client.list_objects_v2(Bucket=disk.bucket, Prefix=s3.CLAIM_PREFIX).get("KeyCount") == 0


def test_a_seal_uploads_parts_side_by_side_and_a_failed_part_sends_no_more(seaweedfs, engine_env,
                                                                             tmp_path: Path) -> None:
    """A seal keeps UPLOAD_STREAMS parts of its upload in flight (one after the other left the
    engine's PUT rate unused: bench/s3_backend.py); when a part fails, the parts not started are
    never sent, the upload is aborted and the shard stays open — sealed by the next seal whole."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    assert disk.upload_streams == s3.UPLOAD_STREAMS >= 2
    together = threading.Barrier(2, timeout=20)  # the first two parts are sent at once, or it breaks
    sent: list[int] = []

    def two_at_once(params, **_kw) -> None:
        sent.append(params["PartNumber"])
        if len(sent) <= 2:
            together.wait()

    disk.client.meta.events.register("before-parameter-build.s3.UploadPart", two_at_once)
    shard, data = write_shard(disk, [os.urandom(3 * PART)])  # 4 parts
    disk.client.meta.events.unregister("before-parameter-build.s3.UploadPart", two_at_once)
    assert sorted(sent) == [1, 2, 3, 4] and disk.read_at(shard, 0, len(data)) == data
    assert disk.verify(shard, sha256=True)[1] == 1

    sent.clear()
    disk.upload_streams = 1  # (so which parts were started is certain)

    def second_fails(params, **_kw) -> None:
        sent.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise s3.EngineError("disk s3a: test: the second part failed")

    disk.client.meta.events.register("before-parameter-build.s3.UploadPart", second_fails)
    with pytest.raises(s3.EngineError, match="the second part failed"):
        write_shard(disk, [os.urandom(3 * PART)])
    disk.client.meta.events.unregister("before-parameter-build.s3.UploadPart", second_fails)
    assert sent == [1, 2]  # parts 3 and 4 never went
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []  # aborted
    opened = next(h for h, sealed in disk.shard_ids() if not sealed)
    assert disk.state(opened) == "open"
    disk.seal(opened)
    assert disk.state(opened) == "sealed" and disk.verify(opened, sha256=True)[1] == 1


def test_a_seal_claims_beside_its_parts_and_completes_only_after_the_claim(seaweedfs, engine_env, a_process,
                                                                          tmp_path: Path) -> None:
    """The seal's claim and its look for the object run beside the upload's parts (one after the
    other, a seal cost the engine's multipart PUT plus their round trips: bench/s3_backend.py);
    the upload is completed only after both. A claim refused once parts went up — another live
    seal's, naming other bytes — leaves no object and no upload behind, the shard open and the
    other seal's claim as it was; a look that finds the object there (a seal retried after its
    upload) sends no more parts, aborts its upload and takes the object as the shard's."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    disk.upload_streams = 1  # (which parts went up before the claim is certain)
    first_part = threading.Event()
    events: list[str] = []

    def on_part(params, **_kw) -> None:
        events.append(f"part {params['PartNumber']}")
        first_part.set()

    def on_claim(params, **_kw) -> None:
        if params["Key"].startswith(s3.CLAIM_PREFIX):  # (the seal's claim: it waits for a part)
            assert first_part.wait(15), "no part went up while the claim was made"
            events.append("claim")

    hooks = {"before-parameter-build.s3.UploadPart": on_part, "before-parameter-build.s3.PutObject": on_claim,
             "before-call.s3.CompleteMultipartUpload": lambda **_kw: events.append("complete")}
    for event, fn in hooks.items():
        disk.client.meta.events.register(event, fn)
    shard, data = write_shard(disk, [os.urandom(3 * PART)])  # 4 parts
    assert events[0] == "part 1" and events.index("claim") < events.index("complete") == len(events) - 1, events
    assert disk.state(shard) == "sealed" and disk.verify(shard, sha256=True)[1] == 1 and _claims(disk) == []

    # another live seal's claim, other bytes: refused after a part went up, nothing completed
    shard2, data2 = _open_shard(disk, [os.urandom(3 * PART)])
    theirs = f"{len(data2) + 1} {hashlib.sha256(data2 + b'x').hexdigest()} {_HOST} {a_process.pid} " \
             f"{a_process.start} 0011223344556677"
    seaweedfs.client().put_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard2, Body=theirs.encode())
    events.clear()
    first_part.clear()
    with pytest.raises(s3.SealRefused, match="is being sealed with other bytes"):
        disk.seal(shard2)
    assert "part 1" in events and "complete" not in events, events
    assert disk.state(shard2) == "open" and disk.read_at(shard2, 0, len(data2)) == data2
    assert disk._head(disk.key(shard2)) is None and _claims(disk) == [theirs]
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []

    # the object there already (the crash came after the upload, before the open file went)
    events.clear()
    first_part.clear()
    write_shard(disk, [bytes(data[fmt.SHARD_HEADER_SIZE + fmt.RECORD_HEADER_SIZE:-96])], sid=bytes.fromhex(shard))
    assert "complete" not in events and len([e for e in events if e.startswith("part")]) < 4, events
    assert disk.state(shard) == "sealed" and disk.read_at(shard, 0, len(data)) == data
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == [] and _claims(disk) == [theirs]


def test_a_part_failing_beside_a_refused_claim_is_the_claim_s_refusal(seaweedfs, engine_env, a_process,
                                                                        tmp_path: Path) -> None:
    """A part fails while the claim is being refused (another live seal's, other bytes): the
    seal says SealRefused — the replica is left out, the disk stays in service — as when the
    claim ran before the parts, not the part's EngineError, which takes the disk out of service;
    nothing is left behind but the other seal's claim, the shard stays open."""
    from botocore.exceptions import EndpointConnectionError

    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    shard, data = _open_shard(disk, [os.urandom(3 * PART)])
    theirs = f"{len(data) + 1} {hashlib.sha256(data + b'x').hexdigest()} {_HOST} {a_process.pid} " \
             f"{a_process.start} 0011223344556677"
    seaweedfs.client().put_object(Bucket=disk.bucket, Key=s3.CLAIM_PREFIX + shard, Body=theirs.encode())

    def slow_claim(params, **_kw) -> None:
        if params["Key"].startswith(s3.CLAIM_PREFIX):
            time.sleep(0.5)  # (the part fails first)

    def part_fails(**_kw) -> None:
        raise EndpointConnectionError(endpoint_url=disk.endpoint)

    disk.client.meta.events.register("before-parameter-build.s3.PutObject", slow_claim)
    disk.client.meta.events.register("before-call.s3.UploadPart", part_fails)
    with pytest.raises(s3.SealRefused, match="is being sealed with other bytes"):
        disk.seal(shard)
    assert disk.state(shard) == "open" and _claims(disk) == [theirs]
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []


def test_ctrl_c_during_a_seal_is_not_held_up_by_its_claim(seaweedfs, engine_env, tmp_path: Path) -> None:
    """Ctrl-C while the upload's parts go up and the claim is slow (an engine that answers
    late): the seal ends at once, its upload aborted and the shard open — it does not wait out
    the claim (before, 3.8 s here, up to the claim's timeouts on an engine that stopped)."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    disk.upload_streams = 1
    shard, _data = _open_shard(disk, [os.urandom(3 * PART)])
    main, fired = threading.get_ident(), []

    def slow_claim(params, **_kw) -> None:
        if params["Key"].startswith(s3.CLAIM_PREFIX):
            if not fired:  # Ctrl-C in 0.2 s; the claim takes 4
                fired.append(time.monotonic() + 0.2)
                threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGINT)).start()
            time.sleep(4)

    disk.client.meta.events.register("before-parameter-build.s3.PutObject", slow_claim)
    # Ctrl-C as a terminal's: the process's SIGINT raises KeyboardInterrupt (a pytest-xdist
    # worker ignores SIGINT)
    was = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            disk.seal(shard)
    finally:
        signal.signal(signal.SIGINT, was)
    assert time.monotonic() - fired[0] < 2.0
    assert disk.state(shard) == "open"
    time.sleep(4)  # (the claim's thread ends; what it leaves is a gone seal's claim)
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []
    disk.client.meta.events.unregister("before-parameter-build.s3.PutObject", slow_claim)
    disk.seal(shard)  # past the claim the interrupted seal left
    assert disk.state(shard) == "sealed" and _claims(disk) == []


def test_a_staging_file_changed_after_its_bytes_were_appended_is_not_sealed(seaweedfs, engine_env,
                                                                             tmp_path: Path) -> None:
    """The seal takes the shard's sha256 from the bytes as they were appended (no second read of
    the staging file: it reads the file once, for the parts) and hashes the parts as they go up:
    a staging file whose bytes changed since — a bit flipped on the staging disk — is refused
    (EBADMSG, nothing sealed, no upload left behind, the shard still open). Before, the seal hashed
    the changed file and sealed its bytes as the shard's. A shard reopened (recovery) or cut
    back is hashed from the file, as before."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    reads: list[int] = []
    real_read = disk.staging.read_exact

    def counted(shard_hex: str, offset: int, length: int) -> bytes:
        reads.append(length)
        return real_read(shard_hex, offset, length)

    bad, data = write_shard(disk, [os.urandom(PART + 100)], seal=False)
    flip_byte(disk.staging.path(bad, False), len(data) // 2)  # the staging disk's own doing
    with pytest.raises(OSError, match="no longer holds the bytes appended") as err:
        disk.seal(bad)
    assert err.value.errno == errno.EBADMSG
    assert disk.state(bad) == "open"
    assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == []
    assert disk.client.list_objects_v2(Bucket=disk.bucket, Prefix=s3.SHARD_PREFIX).get("Contents", []) == []

    disk.staging.read_exact = counted
    shard, data = write_shard(disk, [os.urandom(PART), os.urandom(PART // 2)])
    assert sum(reads) == len(data)  # each byte read once: for its part, not for a hash pass as well
    assert disk.verify(shard, sha256=True)[1] == 2

    for how in ("reopened", "cut back"):
        sid = os.urandom(12)
        body, footer = shard_bytes([os.urandom(1000)], sid)
        sink = disk.create(sid.hex())
        if how == "reopened":  # (recovery's reopen: the bytes came from before it)
            sink.write(body)
            sink.close()
            disk.close_all()
            sink = disk.reopen(sid.hex())
        else:  # (the writer's rollback of an uncommitted group)
            sink.write(body + b"a group cut off")
            sink.truncate(len(body))
        sink.write(footer)
        sink.sync()
        sink.close()
        reads.clear()
        disk.seal(sid.hex())
        assert sum(reads) == 2 * len(body + footer), how  # hashed from the file, then its part
        assert disk.verify(sid.hex(), sha256=True)[1] == 1, how


def test_each_part_is_checked_against_the_bytes_appended_in_it(seaweedfs, engine_env, tmp_path: Path) -> None:
    """The upload checks each part against the xxh3-128 its bytes had as they were appended
    (`_Appended.part_digests`: appends of any size, cut at the part boundaries): a shard
    appended in odd pieces that straddle the parts seals; a byte changed on the staging file in
    its first, a middle or its last (short) part is refused — EBADMSG, nothing sealed, no
    upload left behind, the shard still open."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    rng = random.Random(3)

    def appended() -> tuple[str, bytes]:
        sid = os.urandom(12)
        body, footer = shard_bytes([rng.randbytes(PART - 7), rng.randbytes(PART + 11), rng.randbytes(PART + 5000)], sid)
        data = body + footer
        sink = disk.create(sid.hex())
        at = 0
        while at < len(data):  # odd pieces: none ends on a part boundary by design
            n = rng.choice((1, 4093, 65537, 1 << 20, 3 << 20))
            sink.write(memoryview(data)[at:at + n])
            at += n
        sink.sync()
        sink.close()
        return sid.hex(), data

    good, data = appended()
    assert len(data) > 3 * PART
    disk.seal(good)
    assert disk.state(good) == "sealed" and disk.verify(good, sha256=True)[1] == 3
    for where in (10, 2 * PART - 1, None):
        bad, data = appended()
        flip_byte(disk.staging.path(bad, False), len(data) - 3 if where is None else where)
        with pytest.raises(OSError, match="no longer holds the bytes appended") as err:
            disk.seal(bad)
        assert err.value.errno == errno.EBADMSG
        assert disk.state(bad) == "open", where
        assert disk.client.list_multipart_uploads(Bucket=disk.bucket).get("Uploads", []) == [], where
        keys = [o["Key"] for o in disk.client.list_objects_v2(Bucket=disk.bucket, Prefix=s3.SHARD_PREFIX)
                .get("Contents", [])]
        assert keys == [disk.key(good)], where


def test_a_write_cut_off_while_it_was_hashed_and_a_changed_part_size_still_seal_right(seaweedfs, engine_env,
                                                                                       tmp_path: Path) -> None:
    """(1) An exception while a write's bytes were hashed — in the sha256 but not yet
    in the parts' hashes — and the writer's cut back to the end it had: the seal named the
    object with a sha256 its bytes do not have (the parts still checked). Now any exception in
    a write drops the hashes and the seal hashes the file. (2) A disk's part size changed after
    the shard was appended, to one that cuts it into as many parts: a good shard was refused
    (EBADMSG); now the parts are hashed again."""
    engine_env(seaweedfs)
    disk = s3_disk(seaweedfs, tmp_path / "staging")
    rng = random.Random(11)
    sid = os.urandom(12).hex()
    sink = disk.create(sid)
    data = rng.randbytes(PART + 17)
    sink.write(data)
    real = sink.sha

    class Cut:
        def update(self, b) -> None:
            real.update(b)
            sink.sha = real
            raise MemoryError

    sink.sha = Cut()
    with pytest.raises(MemoryError):
        sink.write(rng.randbytes(4096))  # (a group the writer then cuts off)
    sink.truncate(len(data))
    footer = rng.randbytes(64)
    sink.write(footer)
    sink.close()
    data += footer
    disk.seal(sid)
    got = disk.client.get_object(Bucket=disk.bucket, Key=disk.key(sid))
    assert got["Body"].read() == data
    assert got["Metadata"][s3.SHA_KEY] == hashlib.sha256(data).hexdigest()

    sid = os.urandom(12).hex()
    sink = disk.create(sid)
    data = os.urandom(2 * PART - 100)
    sink.write(data)
    sink.close()
    disk.part_size = 6 << 20  # (two parts either way)
    disk.seal(sid)
    got = disk.client.get_object(Bucket=disk.bucket, Key=disk.key(sid))
    assert got["Body"].read() == data and got["Metadata"][s3.SHA_KEY] == hashlib.sha256(data).hexdigest()


def test_credentials_refused(s3_engine, engine_env, tmp_path: Path) -> None:
    """A secret the engine refuses: reads, lookups, verify and writes each say so in one line."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, _ = write_shard(disk, [b"x" * 100])
    engine_env(s3_engine, secret="not-the-secret")
    wrong = s3.S3Disk("s3a", disk.uuid, disk.endpoint, disk.bucket, tmp_path / "staging", 10 << 30)
    for call in (lambda: wrong.read_at(shard, 0, 10), lambda: wrong.state(shard), lambda: wrong.verify(shard),
                 lambda: write_shard(wrong, [b"y"])):
        with pytest.raises(s3.EngineError, match="refused the credentials") as err:
            call()
        assert "AWS_ACCESS_KEY_ID" in err.value.message and "\n" not in err.value.message


def test_no_credentials_at_all(s3_engine, engine_env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere in boto3's chain: one line naming where to put them."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bare = s3.S3Disk("s3a", disk.uuid, disk.endpoint, disk.bucket, tmp_path / "staging", 10 << 30)
    with pytest.raises(s3.EngineError, match="no S3 credentials found .*AWS_ACCESS_KEY_ID"):
        bare.state("00" * 12)


def test_bucket_deleted(s3_engine, engine_env, tmp_path: Path) -> None:
    """The bucket deleted under the disk: every call says so in one line with the next step."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, _ = write_shard(disk, [b"x" * 100])
    client = s3_engine.client()
    for obj in client.list_objects_v2(Bucket=disk.bucket)["Contents"]:  # (RGW refuses a non-empty bucket)
        client.delete_object(Bucket=disk.bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=disk.bucket)
    for call in (lambda: disk.read_at(shard, 0, 10), lambda: disk.state(shard), lambda: disk.size(shard),
                 lambda: disk.delete(shard), lambda: disk.verify(shard), lambda: write_shard(disk, [b"y"])):
        with pytest.raises(s3.EngineError, match=f"bucket {disk.bucket} does not exist") as err:
            call()
        assert "hoard disks forget s3a" in err.value.message and "\n" not in err.value.message


def test_a_bucket_of_another_disk_is_not_written(s3_engine, engine_env, tmp_path: Path) -> None:
    """A bucket holding a disk identity is not taken by another disk, nor written by a disk it does not name."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    with pytest.raises(s3.EngineError, match="already holds a disk identity"):
        s3.S3Disk.initialise("s3b", disk.endpoint, disk.bucket, tmp_path / "staging2", 1 << 30)
    other = s3.S3Disk("s3a", "not-its-uuid", disk.endpoint, disk.bucket, tmp_path / "staging", 1 << 30)
    with pytest.raises(s3.EngineError, match="another disk's bucket"):
        other.create("00" * 12)


# -- hoard.toml ----------------------------------------------------------------------------------


def s3_entry(**over: object) -> dict:
    return {"label": "s3a", "kind": "s3", "endpoint": "http://127.0.0.1:8333", "bucket": "hoard-a",
            "capacity_gb": 100} | over


def test_an_s3_disk_entry_parses() -> None:
    """A [[disks]] table with kind = "s3" parses with its keys; one without kind is a local disk."""
    d = config.DiskConfig(**s3_entry())
    assert (d.kind, d.endpoint, d.bucket, d.capacity_gb) == ("s3", "http://127.0.0.1:8333", "hoard-a", 100)
    assert config.DiskConfig(label="hdd1", path="/srv/hdd1").kind == "local"


@pytest.mark.parametrize(("entry", "said"), [
    (s3_entry(endpoint="ftp://x"), "endpoint 'ftp://x' is not an engine's S3 URL"),
    (s3_entry(endpoint="http://x:8333/some/path"), "is not an engine's S3 URL"),
    (s3_entry(bucket="Hoard_A"), "bucket 'Hoard_A' is not an S3 bucket name"),
    (s3_entry(bucket=None), 'needs bucket'),
    (s3_entry(capacity_gb=None), "needs capacity_gb"),
    (s3_entry(kind="nfs"), "kind"),
    ({"label": "hdd1", "path": "/x", "bucket": "b-b-b"}, 'bucket is a key of kind = "s3" disks'),
    ({"label": "hdd1", "path": "/x", "copies": 3}, 'copies is a key of kind = "s3" disks'),
    (s3_entry(copies=0), "copies: Input should be greater than or equal to 1"),
    ({"label": "hdd1"}, "path is required"),
])
def test_a_bad_disk_entry_is_one_line(tmp_path: Path, entry: dict, said: str) -> None:
    """Each mistake in a [[disks]] table is one line naming the entry and what to write."""
    toml = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in entry.items() if v is not None)
    cfg = tmp_path / "hoard.toml"
    cfg.write_text(f"[[disks]]\n{toml}\n[ssd]\nroot = \"ssd\"\n")
    with pytest.raises(ConfigError) as err:
        config.load(cfg)
    assert said in err.value.message and "disks[0]" in err.value.message and "\n" not in err.value.message


def test_an_s3_disk_entry_is_taken_with_its_staging_folder_on_the_ssd(tmp_path: Path) -> None:
    """A valid S3 disk entry is taken (tests/test_s3_store.py uses one); without a `path`, its
    staging folder is `<ssd.root>/s3-staging/<label>` (docs/config.md)."""
    cfg = tmp_path / "hoard.toml"
    cfg.write_text('database_url = "postgresql:///x"\nredis_url = "redis://localhost:1/0"\n'
                   '[[disks]]\nlabel = "hdd1"\npath = "d1"\n[[disks]]\nlabel = "hdd2"\npath = "d2"\n'
                   '[[disks]]\nlabel = "s3a"\nkind = "s3"\nendpoint = "http://127.0.0.1:8333"\n'
                   'bucket = "hoard-a"\ncapacity_gb = 100\n[ssd]\nroot = "ssd"\n'
                   + "".join(f"[ssd.zones.{z}]\nquota_gb = 1\n" for z in ("3A", "3B", "3C", "3D")))
    s3a = config.load(cfg).disks[2]
    assert (s3a.kind, s3a.bucket, s3a.capacity_gb, s3a.copies) == ("s3", "hoard-a", 100, 1)
    assert s3a.path == config.load(cfg).ssd.root / "s3-staging" / "s3a"
    # an engine that keeps 3 copies of its own: the store's targets count it as 3, write_ack as one disk
    text = cfg.read_text().replace("capacity_gb = 100\n", "capacity_gb = 100\ncopies = 3\n")
    cfg.write_text(text + "[store]\ncopy_of_raw = 5\n")
    assert (config.load(cfg).disks[2].copies, config.load(cfg).store.copy_of_raw) == (3, 5)
    for store, said in (("copy_of_raw = 6", "copy_of_raw=6 needs that many disks; allowed 2..5 with 3 disks (an S3 "
                                            "disk counts as its `copies`)"),
                        ("copy_of_raw = 5\nwrite_ack = 4", "write_ack=4 needs that many disks: an acknowledged "
                                                           "write is on write_ack distinct disks; allowed 1..3")):
        cfg.write_text(text + f"[store]\n{store}\n")
        with pytest.raises(ConfigError) as err:
            config.load(cfg)
        assert said in err.value.message, err.value.message


def test_verify_s_stream_holds_a_few_pieces_and_reads_every_range_right() -> None:
    """`_Stream` (what verify reads an object through): in-order reads of small records, re-reads
    inside its window, reads behind it and far ahead each give the object's bytes; and it holds a
    few pieces of up to CHUNK, not one per read — the window of 8 MiB held hundreds of a small
    record's header and payload pieces, each walked for every read (4× the CPU of the rest of a
    verify of small records)."""
    rng = random.Random(5)
    data = rng.randbytes(20 << 20)
    gets: list[tuple[int, int]] = []

    def get(off: int, n: int) -> bytes:
        gets.append((off, n))
        return data[off:off + n]

    stream = s3._Stream(get, lambda: io.BytesIO(data), len(data))
    most, off = 0, 0
    while off < len(data) - 70_000:
        for n in (48, rng.randrange(1, 65_000)):  # a record's header, then its payload
            assert stream.read(off, n) == data[off:off + n]
            off += n
            most = max(most, len(stream.chunks))
        if rng.random() < 0.05:  # a sha256 pass's re-read of the record just read
            back = off - rng.randrange(1, 60_000)
            assert stream.read(back, off - back) == data[back:off]
    assert most <= s3.WINDOW // s3._Stream.CHUNK + 2, f"{most} pieces held"
    assert gets == []  # every in-order read and re-read came off the one stream
    assert stream.read(1000, 5000) == data[1000:6000] and gets == [(1000, 5000)]  # behind the window
    tail = len(data) - 100
    assert stream.read(tail, 500) == data[tail:]  # at the end: what is there
    assert stream.finish() == hashlib.sha256(data).hexdigest()


def test_verify_of_many_small_records_checks_each(s3_engine, engine_env, tmp_path: Path) -> None:
    """A shard of 3,000 small records verifies whole off one stream, and a byte flipped in a
    record past its first MiB is caught there."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    rng = random.Random(9)
    shard, data = write_shard(disk, [rng.randbytes(rng.randrange(200, 3000)) for _ in range(3000)])
    assert disk.verify(shard, sha256=True) == (len(data), 3000)
    damage(disk, shard, (3 << 20) + 12_345)
    with pytest.raises(fmt.ShardFormatError):
        disk.verify(shard)


def test_verify_streams_with_bounded_memory(s3_engine, engine_env, tmp_path: Path) -> None:
    """A shard larger than anything verify may hold is checked whole (records, sha256 of each and
    of the object) with its Python allocations well under the shard's size."""
    engine_env(s3_engine)
    disk = s3_disk(s3_engine, tmp_path / "staging")
    shard, data = write_shard(disk, [os.urandom(24 << 20) for _ in range(3)])
    tracemalloc.start()
    try:
        assert disk.verify(shard, sha256=True) == (len(data), 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"verify of {len(data) >> 20} MiB: peak {peak / 2**20:.1f} MiB")
    assert peak < 40 << 20, f"verify held {peak / 2**20:.1f} MiB of a {len(data) >> 20} MiB shard"
