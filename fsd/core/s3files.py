"""What an S3 disk keeps beside its shards, as objects in its bucket (hoardfs.fsd.core.beside's `Beside`).

    <bucket>/batches/<name>.json             the pointers and markers: one object each, the bytes a
    <bucket>/views/<name>.json               local disk keeps in the file of that name
    <bucket>/.hoard-db-dump.json
    <bucket>/.hoard-forgotten.json
    <bucket>/marks/log/<stamp>.<nonce>       the marks log, one object per append ("segment")
    <bucket>/marks/pending/<stamp>.<nonce>   a snapshot written, not yet in force
    <bucket>/index-copy/<taken>/<file>       `hoard index backup`'s copy; stamp.json written last

A PUT replaces an object whole or not at all, so a small file needs no tmp → rename; it is as
durable as the engine makes an acknowledged write (docs/scale-out.md: SeaweedFS's `-fsync`).

**The marks log** cannot be appended to in place (S3 has no append), so each append is an object
of its own, `marks/log/<stamp>.<nonce>` — `stamp` the 20-digit, zero-padded stamp of its records
(one per append: hoardfs.fsd.io.copies.log_marks), `nonce` 8 random hex digits, PUT with
`If-None-Match: *` (never over another) — holding exactly the bytes a local disk appends (a
newline, then the record lines with their checks). The log is the segments in key order, i.e.
stamp order, concatenated: the same bytes a local `marks.log` holds, read by the same reader
(hoardfs.fsd.core.marks.read_stream), so a flipped bit is a damaged line here as there. No append is
torn (a PUT is whole), and appends of concurrent writers never interleave inside a line.

A snapshot (hoardfs.fsd.io.copies.snapshot_marks) is written to `marks/pending/` and put in force by the
swap: copied to `marks/log/<its stamp>.<nonce>`, then every segment stamped before it is deleted.
The appends made while it was written are stamped after it (the stamp is taken in a write
transaction, and appends happen inside theirs) and stay after it in key order, as a local
snapshot keeps them after itself. A swap cut short leaves older segments before the snapshot's
`reset` line, which replay ignores (it starts from the newest honoured reset) and the next swap
deletes. Reading a log costs a listing and a GET per segment: `marks_size` counts each segment
as SEGMENT_WEIGHT bytes besides its own, so the compaction gc runs (hoardfs.fsd.io.copies.compact_marks;
also `hoard index rewrite-marks`) replaces a log of many small appends by one snapshot, and a
log of more than CROWDED segments is replaced by the next writable open (`marks_crowded`).

A log kept as objects has no file identity, so no judgement of its prefix is remembered
(hoardfs.fsd.io.judged): `hoard health` reads it whole, as check and verify do.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from hoardfs.fsd.core import marks, pointers
from hoardfs.fsd.core.beside import INDEX_COPY
from hoardfs.fsd.core.diskid import TMP_DIR
from hoardfs.fsd.core.layout import MARKS_DIR, MARKS_LOG
from hoardfs.fsd.core.spill import Spill

#: where the marks log's segments and pending snapshots are (module docstring)
SEGMENTS, PENDING = f"{MARKS_DIR}/log/", f"{MARKS_DIR}/pending/"
#: where a seal claims its shard before its upload (hoardfs.fsd.core.s3, `S3Disk._claim`)
CLAIMS = "claims/"
#: a segment's name after its prefix: the stamp (20 digits) and a nonce
SEGMENT_NAME = re.compile(r"(\d{20})\.([0-9a-f]{8})")
#: what a segment counts for beside its bytes in `marks_size` (the cost of one more GET)
SEGMENT_WEIGHT = 4096
#: a log of more segments than this is replaced by a snapshot at the next writable open
#: (hoardfs.fsd.io.copies.catch_up_marks), not only by gc: each is a GET for every reading
CROWDED = 256
#: a log this large is read into memory; a larger one spills to a file in the staging folder
IN_MEMORY = 8 << 20
#: the bytes `marks_ends` reads at each end of the log (a local disk's hoardfs.fsd.core.marks.ends)
ENDS = 4096


class S3Beside:
    """The objects beside an S3 disk's shards (`disk`: its `hoardfs.fsd.core.s3.S3Disk`, whose requests
    these use: one line with the next step when the engine fails)."""

    def __init__(self, disk: Any) -> None:
        self.disk = disk
        self.where = f"s3://{disk.bucket}"
        self._pending: str | None = None

    def __repr__(self) -> str:
        return f"S3Beside({self.disk.label})"

    # -- small files -----------------------------------------------------------------------

    def shown(self, name: str) -> str:
        return f"{self.where}/{name}".encode("utf-8", "backslashreplace").decode()

    def identity(self, name: str) -> list[int] | None:
        return None  # (an object has no identity a rewrite must change: read every time)

    def read(self, name: str, ident: list[int] | None = None) -> bytes:
        r = self.disk._call(f"reading {name}", self.disk.client.get_object, Bucket=self.disk.bucket, Key=name)
        body = r["Body"]
        try:
            if int(r.get("ContentLength", 0)) > pointers.POINTER_MAX:
                raise ValueError(f"larger than {pointers.POINTER_MAX} bytes: not a pointer")
            data: bytes = body.read()
            return data
        finally:
            body.close()

    def write(self, name: str, body: bytes, wrote: list[int]) -> None:
        self.disk._call(f"writing {name}", self.disk.client.put_object, Bucket=self.disk.bucket, Key=name, Body=body)

    def names(self, folder: str, suffix: str) -> list[str]:
        prefix = f"{folder}/"
        return sorted(k[len(prefix):-len(suffix)] for k in self.disk._keys(prefix)
                      if k.endswith(suffix) and "/" not in k[len(prefix):])

    def planted(self, name: str) -> bool:
        return pointers.foreign_name(PurePosixPath(name))  # (no FIFO is an object: the name alone)

    def in_the_way(self, name: str) -> str:
        return ""  # an object never stands in another's way

    def landed(self, wrote: list[int]) -> bool:
        return True  # (an object is written to the bucket the request names, or not at all)

    # -- the marks log ---------------------------------------------------------------------

    def marks_where(self) -> str:
        return f"{self.where}/{SEGMENTS}"

    def _segments(self) -> list[tuple[str, int]]:
        """(key, size) of each segment, in the log's order (stamp, then nonce)."""
        out = []
        for obj in self.objects(SEGMENTS):
            if SEGMENT_NAME.fullmatch(obj["Key"][len(SEGMENTS):]):
                out.append((obj["Key"], int(obj["Size"])))
        return sorted(out)

    def objects(self, prefix: str) -> Iterator[dict]:
        """Every object under `prefix` (its Key, Size, LastModified), page by page."""
        token: dict = {}
        while True:
            page = self.disk._call(f"listing {prefix}", self.disk.client.list_objects_v2, Bucket=self.disk.bucket,
                                   Prefix=prefix, **token)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _get(self, key: str, span: str | None = None) -> bytes:
        """The object's bytes (`span`: those of an HTTP Range, "bytes=0-4095", "bytes=-4096")."""
        extra = {"Range": span} if span else {}
        r = self.disk._call(f"reading {key}", self.disk.client.get_object, Bucket=self.disk.bucket, Key=key,
                            **extra)
        body = r["Body"]
        try:
            data: bytes = body.read()
            return data
        finally:
            body.close()

    def _put_new(self, prefix: str, stamp: int, body: Any) -> str:
        """PUT under `<prefix><stamp>.<nonce>` only if no object has that key; the key."""
        key = f"{prefix}{stamp:020d}.{secrets.token_hex(4)}"
        self.disk._call(f"writing {key}", self.disk.client.put_object, Bucket=self.disk.bucket, Key=key, Body=body,
                        IfNoneMatch="*", passing=())
        return key

    def marks_append(self, body: bytes, wrote: list[int]) -> None:
        self._put_new(SEGMENTS, _stamp_of(body), body)

    def marks_ends(self) -> tuple[bytes | None, bytes | None]:
        """A window of ENDS bytes at each end, as a local disk reads (hoardfs.fsd.core.marks.ends):
        every marks transaction asks (Index.log_in), and the first segment is a snapshot of
        every mark once one was put in force (~108 bytes a mark)."""
        segs = self._segments()
        if not segs:
            return None, None
        head = b""
        for key, size in segs:  # (a first segment of blank lines only: the next one's first line)
            piece = self._get(key, f"bytes=0-{ENDS - 1}") if size > ENDS else self._get(key)
            if size > ENDS and not piece.strip():
                piece = self._get(key)  # (a window of blank lines only: the segment whole)
            head += piece
            if head.strip():
                break
        key, size = segs[-1]
        if len(segs) == 1 and size <= ENDS:
            return marks.ends_of(head, head)
        # (the window's first line may begin mid-line: ends_of takes only the lines it holds whole)
        tail = self._get(key, f"bytes=-{ENDS}") if size > ENDS else self._get(key)
        return marks.ends_of(head, tail)

    def marks_size(self) -> int:
        return sum(size + SEGMENT_WEIGHT for _, size in self._segments())

    def marks_crowded(self) -> bool:
        return len(self._segments()) > CROWDED

    def _log(self, planted: list[str] | None) -> Any:
        """The log, its segments concatenated in order, as a file at its start (in memory, or
        spilled to the staging folder's tmp/ when large); objects under marks/ that are not
        segments or pending snapshots are named in `planted` (skipped, as a local disk skips a
        FIFO in its marks folder)."""
        if planted is not None:
            planted += [f"{self.where}/{o['Key']}: not a marks log segment" for o in self.objects(f"{MARKS_DIR}/")
                        if not (o["Key"].startswith((SEGMENTS, PENDING))
                                and SEGMENT_NAME.fullmatch(o["Key"].rsplit("/", 1)[-1]))]
        tmp = self.disk.staging.root / TMP_DIR
        tmp.mkdir(exist_ok=True)
        f = tempfile.SpooledTemporaryFile(IN_MEMORY, dir=tmp)
        try:
            for key, _ in self._segments():
                f.write(self._get(key))
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return f

    def _name(self) -> PurePosixPath:
        return PurePosixPath(self.disk.bucket, MARKS_DIR, MARKS_LOG)

    def marks_read(self, planted: list[str] | None = None, label: str = "", spill: Spill | None = None,
                   src: int = 0, cutoff: int | None = None) -> marks.DiskLog:
        with self._log(planted) as f:
            return marks.read_stream(f, self._name(), label, spill, src, cutoff)

    def marks_read_tail(self, label: str, spill: Spill, src: int, cutoff: int, start: int, lines: int,
                        checked: bool) -> marks.DiskLog:
        with self._log(None) as f:
            return marks.read_stream(f, self._name(), label, spill, src, cutoff, start, lines, checked)

    def marks_files(self) -> tuple[list[int] | None, dict[str, list[int]], int]:
        return None, {}, -1  # no file identity: read whole every time (module docstring)

    def marks_tip(self, judged: int, file: list[int] | None) -> str:
        return ""

    def marks_cut(self) -> None:
        return None  # (the swap deletes what is stamped before the snapshot: module docstring)

    def marks_snapshot(self, chunks: Iterable[bytes], wrote: list[int]) -> None:
        self.marks_discard()  # (one snapshot at a time: a killed one's is dropped)
        tmp = self.disk.staging.root / TMP_DIR
        tmp.mkdir(exist_ok=True)
        with tempfile.SpooledTemporaryFile(IN_MEMORY, dir=tmp) as f:
            first = b""
            for piece in chunks:
                first = first or piece
                f.write(piece)
            f.seek(0)
            self._pending = self._put_new(PENDING, _stamp_of(first), f)

    def marks_swap(self, cut: None, wrote: list[int]) -> None:
        pending = self._pending
        if pending is None:
            raise FileNotFoundError(f"disk {self.disk.label}: no snapshot written to put in force")
        name = pending[len(PENDING):]
        key = SEGMENTS + name
        what = "putting the marks snapshot in force"
        self.disk._call(what, self.disk.client.copy, {"Bucket": self.disk.bucket, "Key": pending},
                        self.disk.bucket, key)
        self._pending = None
        self.disk._call(what, self.disk.client.delete_object, Bucket=self.disk.bucket, Key=pending)
        for old, _ in self._segments():
            if old < key:
                self.disk._call(what, self.disk.client.delete_object, Bucket=self.disk.bucket, Key=old)

    def marks_discard(self) -> None:
        self._pending = None
        for obj in self.objects(PENDING):
            self.disk._call("dropping a marks snapshot not put in force", self.disk.client.delete_object,
                            Bucket=self.disk.bucket, Key=obj["Key"])

    def marks_leftover(self) -> bool:
        return any(True for _ in self.objects(PENDING))

    # -- the index copy, the sweep ---------------------------------------------------------

    def put_index_copy(self, fill: Callable[[Path], None]) -> None:
        """Filled in the staging folder, uploaded under `index-copy/<taken>/` (stamp.json last:
        a copy without it is not complete), then the older copies deleted."""
        taken = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        prefix = f"{INDEX_COPY}/{taken}/"
        folder = self.disk.staging.root / TMP_DIR / f"{INDEX_COPY}.tmp"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            fill(folder)
            files = sorted(folder.iterdir(), key=lambda p: p.name == "stamp.json")
            for p in files:
                self.disk._call(f"uploading {prefix}{p.name}", self.disk.client.upload_file, str(p), self.disk.bucket,
                                prefix + p.name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for obj in list(self.objects(f"{INDEX_COPY}/")):
            if not obj["Key"].startswith(prefix):
                self.disk._call("deleting an older index copy", self.disk.client.delete_object,
                                Bucket=self.disk.bucket, Key=obj["Key"])

    def _copy_prefix(self) -> str | None:
        """The prefix of the newest complete index copy (one with its stamp.json), or None."""
        done = sorted(o["Key"][:-len("stamp.json")] for o in self.objects(f"{INDEX_COPY}/")
                      if o["Key"].endswith("/stamp.json"))
        return done[-1] if done else None

    def index_copy_stamp(self) -> bytes | None:
        prefix = self._copy_prefix()
        return None if prefix is None else self._get(prefix + "stamp.json")

    def get_index_copy(self, into: Path) -> None:
        prefix = self._copy_prefix()
        if prefix is None:
            raise FileNotFoundError(f"disk {self.disk.label}: no index copy in bucket {self.disk.bucket}")
        into.mkdir()
        for obj in list(self.objects(prefix)):
            self.disk._call(f"fetching {obj['Key']}", self.disk.client.download_file, self.disk.bucket, obj["Key"],
                            str(into / obj["Key"][len(prefix):]))

    def sweep(self, now: float, grace_s: float, repair: bool) -> tuple[int, list[tuple[str, int]]]:
        """The staging folder's tmp/ and orphans/ as a local disk's, and seals' claims older than
        `grace_s` (counted as tmp files removed); with `repair`, the shards
        set aside in the bucket (`orphans/`) longer than `grace_s` ago deleted."""
        removed, deleted = self.disk.staging.beside.sweep(now, grace_s, repair)
        for obj in list(self.objects(CLAIMS)):
            # a claim left by a seal that failed (or whose delete did not reach the engine), as a
            # local disk's tmp/ file: under the grace a seal may be running
            if now - obj["LastModified"].timestamp() >= grace_s:
                self.disk._call(f"deleting {obj['Key']}", self.disk.client.delete_object, Bucket=self.disk.bucket,
                                Key=obj["Key"])
                removed += 1
        if repair:
            for obj in list(self.objects("orphans/")):
                if now - obj["LastModified"].timestamp() >= grace_s:
                    self.disk._call(f"deleting {obj['Key']}", self.disk.client.delete_object,
                                    Bucket=self.disk.bucket, Key=obj["Key"])
                    deleted.append((f"{self.where}/{obj['Key']}", int(obj["Size"])))
        return removed, deleted


def _stamp_of(body: bytes) -> int:
    """The stamp of the first record line of an append or a snapshot (ValueError: none)."""
    first = body.lstrip(b"\n")
    rec = marks.parse(first[:first.find(b"\n") + 1])
    if rec is None:
        raise ValueError("not a marks log record: no stamp to name its segment by")
    return rec[0]
