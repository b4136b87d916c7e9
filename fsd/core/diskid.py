"""A disk's identity and what the index remembers of it — the part of hoardfs.fsd.core.disks that the
index, the layout and the files beside the shards (hoardfs.fsd.core.beside) need without the shards.

    <disk root>/.hoard-disk.json          identity: {"uuid", "label", "created", "format"}
    <disk root>/.hoard-disk.copy.json     its second copy
"""

from __future__ import annotations

import datetime as dt
import enum
import errno
import json
import uuid as uuidlib
from dataclasses import asdict, dataclass
from pathlib import Path

from hoardfs.base.files import atomic_write
from hoardfs.fsd.core import formats

IDENTITY = ".hoard-disk.json"
#: a second copy of a disk's identity (as ext4 keeps backup superblocks): a damaged identity
#: file alone does not make a disk a stranger (`hoard disks activate` puts it back)
IDENTITY_COPY = ".hoard-disk.copy.json"
IDENTITY_FORMAT = formats.IDENTITY
#: the folders of a local disk (hoardfs.fsd.core.disks): its shards, copies in progress, what was set aside
SHARDS_DIR, TMP_DIR, ORPHANS_DIR = "shards", "tmp", "orphans"


class DiskGone(OSError):
    """The disk's mount point or identity is gone (unmounted, vanished, replaced)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENODEV, message)


class DiskState(str, enum.Enum):  # noqa: UP042  # StrEnum would change str(member), which messages print
    ACTIVE = "active"  # takes new shards and serves reads
    DRAINING = "draining"  # serves reads, takes no new shards (retire in progress)
    FAILED = "failed"  # errors seen: no reads, no writes until replaced
    MISSING = "missing"  # not mounted, or another disk's identity is there


@dataclass
class DiskRecord:
    """What the index remembers about a disk."""

    uuid: str
    label: str
    path: str
    state: DiskState
    created: str
    used_bytes: int = 0
    reason: str = ""
    # the JSON holds exactly these fields: the previous release reads a record with `cls(**d)`,
    # and a field it does not know would make it fail to open an index written by this one (a
    # downgrade). Whatever else is noted about a disk goes into the index's `meta` — when a
    # store open last found it at its path: Index.disks_seen.

    def to_json(self) -> bytes:
        d = asdict(self)
        d["state"] = self.state.value
        return json.dumps(d).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DiskRecord:
        d = json.loads(raw)
        d["state"] = DiskState(d["state"])
        # a field a later version added is not this version's to read (an index written by it
        # still opens here); a `seen` that records of the version that kept it here carry is read
        # by Index.disks_seen and moved out by the index's migration to format 2 (hoardfs.fsd.core.formats)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def read_identity(root: Path, name: str = IDENTITY) -> dict | None:
    """The identity, None if there is none, or {"uuid": None, "error": why} if unreadable
    (with "damaged": True when the file reads but is not an identity)."""
    try:
        ident = json.loads((root / name).read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"uuid": None, "error": f"cannot read {root / name}: {e.strerror}", "errno": e.errno}
    except ValueError:
        ident = None
    if not isinstance(ident, dict) or not isinstance(ident.get("uuid"), str):
        return {"uuid": None, "error": f"{root / name} is damaged (not an identity)", "damaged": True}
    return ident


def new_identity(label: str, uuid: str | None = None) -> dict:
    """A disk's identity: a fresh uuid (or `uuid`), its label, the format, when it was made (an
    S3 disk keeps the same document as an object: hoardfs.fsd.core.s3)."""
    return {"uuid": uuid or str(uuidlib.uuid4()), "label": label, "format": IDENTITY_FORMAT,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def write_identity(root: Path, label: str, name: str = IDENTITY, uuid: str | None = None) -> dict:
    """Give a fresh disk (or the SSD) its identity (tmp → fsync → rename → fsync dir); a disk's
    is written twice (IDENTITY_COPY). `uuid`: one the identity is to name (an S3 disk's staging
    folder names its disk's), else a fresh one."""
    ident = new_identity(label, uuid)
    _write_identity_file(root / name, ident)
    if name == IDENTITY:
        _write_identity_file(root / IDENTITY_COPY, ident)
    return ident


def _write_identity_file(path: Path, ident: dict) -> None:
    atomic_write(path, json.dumps(ident, indent=1).encode())


def keep_identity_copy(root: Path, uuid: str) -> None:
    """Write the second copy of a disk's identity if it has none (a disk initialised before
    copies were kept); the identity must name `uuid`."""
    if (root / IDENTITY_COPY).exists():
        return
    ident = read_identity(root)
    if ident and ident.get("uuid") == uuid:
        _write_identity_file(root / IDENTITY_COPY, ident)


def restore_identity(root: Path, uuid: str) -> bool:
    """Put a damaged identity back from its copy, if the copy names `uuid` (the disk the index
    registered at this path); True if it did."""
    copy = read_identity(root, IDENTITY_COPY)
    if not copy or copy.get("uuid") != uuid:
        return False
    _write_identity_file(root / IDENTITY, copy)
    return True
