"""Dataset layouts: each turns a build's samples into a tree of files, as a pure function
(the same samples and dataset document give the same bytes).

MINIMAL PLACEHOLDER (w7-core): the interface of docs/datasets.md and the `imagefolder` layout
only, enough for the builder and its tests; the full package (hf-imagefolder, coco, yolo, voc,
webdataset, the templates of docs/layouts.md) is w7-formats' and replaces this file.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from datasets.model import Sample


@dataclass(frozen=True)
class StoredFile:
    path: str
    sha256: str
    size: int  # bytes come from the store


@dataclass(frozen=True)
class Generated:
    path: str
    data: bytes  # bytes made here (json, txt, yaml, xml)


@dataclass(frozen=True)
class TarMember:
    name: str
    sha256: str | None  # one of sha256 (bytes from the store) / data
    data: bytes | None
    size: int


@dataclass(frozen=True)
class TarShard:
    path: str
    members: tuple[TarMember, ...]  # sorted by name


@dataclass
class Tree:
    files: list[StoredFile] = field(default_factory=list)
    generated: list[Generated] = field(default_factory=list)
    tars: list[TarShard] = field(default_factory=list)


class Format(Protocol):
    name: str
    needs_class: bool
    needs_boxes: bool
    needs_size: bool
    view_ok: bool

    def place(self, sample: Sample) -> str: ...

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree: ...


class ImageFolder:
    """`<split>/<class>/<key><ext>` (torchvision ImageFolder, one tree per split)."""

    name = "imagefolder"
    needs_class = True
    needs_boxes = False
    needs_size = False
    view_ok = True

    def place(self, sample: Sample) -> str:
        return f"{sample.split}/{sample.cls}/{sample.key}{sample.ext}"

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        return Tree(files=[StoredFile(s.path, s.sha256, s.size) for s in samples])


FORMATS: dict[str, Format] = {"imagefolder": ImageFolder()}


def write_tar(shard: TarShard, read: Callable[[str], bytes], out: BinaryIO) -> None:
    """A deterministic tar: members in the given order, mtime 0, uid/gid 0, no owner names,
    mode 0o644; USTAR when every name fits, else PAX."""
    fmt = tarfile.USTAR_FORMAT if all(len(m.name.encode()) <= 100 for m in shard.members) else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for m in shard.members:
            data = m.data if m.data is not None else read(m.sha256 or "")
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
