"""WebDataset: `<split>-000000.tar` shards, and the one tar writer whose bytes depend on the
members alone."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO

from hoardfs.datasets.formats.base import TarMember, TarShard, Tree, check_samples, class_names, finish, json_bytes, who
from hoardfs.datasets.layouts import LayoutError, PlacementError
from hoardfs.datasets.model import Sample
from hoardfs.fsd.outputs.materialize import Assembled

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: a shard's size before the next starts (the spec's `[webdataset] shard_bytes`)
SHARD_BYTES = 256 * 1024 * 1024
#: what a member costs in a tar: a 512-byte header and its data padded to 512
BLOCK = 512
#: the members a sample's own file must not be named like
META_EXTS = (".json", ".cls")


def member_cost(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


class WebDataset:
    """`<split>-NNNNNN.tar`, NNNNNN from 000000 in each split. A sample's members share its key:
    `<key><ext>` (its file), `<key>.json` (its manifest line but for path and key: class,
    class_index, labels, annotations, lineage, source) and `<key>.cls` (the class index, when
    it has a class). Within a split, samples go in key order (sha256 order: the classes mixed),
    a new shard starting when the next sample would pass `shard_bytes` (default 256 MiB) or the
    shard holds `shard_samples`. Members are sorted by name, so a sample's members are adjacent
    (a key is hex or digits; '.' sorts before both) — WebDataset groups adjacent members only."""

    name = "webdataset"
    needs_class = False
    needs_size = False
    view_ok = False

    def place(self, sample: Sample) -> str:
        """The member's name inside its shard (the shard is known only with every sample: `shards`)."""
        return f"{sample.key}{sample.ext or '.bin'}"

    def shards(self, samples: list[Sample], options: dict) -> list[tuple[str, list[tuple[Sample, bytes]]]]:
        """(shard path, its samples with their `.json` member) in order, after the checks."""
        shard_bytes = options.get("shard_bytes", SHARD_BYTES)
        shard_samples = options.get("shard_samples")
        if not isinstance(shard_bytes, int) or isinstance(shard_bytes, bool) or shard_bytes < BLOCK:
            raise LayoutError(f"[webdataset] shard_bytes = {shard_bytes!r}: give a whole number of bytes ≥ {BLOCK}")
        if shard_samples is not None and (not isinstance(shard_samples, int) or isinstance(shard_samples, bool)
                                          or shard_samples < 1):
            raise LayoutError(f"[webdataset] shard_samples = {shard_samples!r}: give a whole number ≥ 1, or leave "
                              "it out")
        out: list[tuple[str, list[tuple[Sample, bytes]]]] = []
        split: str | None = None
        used, current = 0, []  # type: ignore[var-annotated]
        for s in check_samples(self, samples, image=False):
            if s.ext.lower() in META_EXTS:
                raise PlacementError(f"{who(s)}: a {s.ext} file would share its name with the sample's own "
                                     f"{s.ext} member in layout {self.name}; narrow the selector to other file types")
            meta = json_bytes({k: v for k, v in s.to_json().items() if k not in ("path", "key")})
            cost = member_cost(s.size) + member_cost(len(meta)) + member_cost(len(str(s.class_index)))
            full = current and (used + cost > shard_bytes or (shard_samples and len(current) >= shard_samples))
            if s.split != split or full:
                n = 0 if s.split != split else int(out[-1][0][-10:-4]) + 1
                split, used, current = s.split, 0, []
                out.append((f"{s.split}-{n:06d}.tar", current))
            current.append((s, meta))
            used += cost
        return out

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        tree = Tree()
        classes = class_names(samples, doc)
        for path, group in self.shards(samples, options):
            members = []
            for s, meta in group:
                members.append(TarMember(self.place(s), s.sha256, None, s.size))
                members.append(TarMember(f"{s.key}.json", None, meta, len(meta)))
                if s.class_index is not None:
                    cls = f"{s.class_index}".encode()
                    members.append(TarMember(f"{s.key}.cls", None, cls, len(cls)))
            tree.tars.append(TarShard(path, tuple(sorted(members, key=lambda m: m.name))))
        del classes  # checked (each sample's class at its index), not written: dataset.json holds the map
        return finish(tree, self.name, options.get("prefix", ""))


class _Member(io.RawIOBase):
    """A stored member's bytes as the file tarfile copies from: its pieces one at a time
    (bounded memory), counted and hashed on the way through."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._left = memoryview(b"")
        self.size = 0
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: WriteableBuffer) -> int:
        """Fill `buf` whole unless the pieces end (tarfile takes a short read for the end)."""
        out = memoryview(buf).cast("B")
        done = 0
        while done < len(out):
            if not self._left:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._left = memoryview(piece)
                self.size += len(piece)
                self.sha.update(piece)
            n = min(len(out) - done, len(self._left))
            out[done:done + n] = self._left[:n]
            self._left = self._left[n:]
            done += n
        return done


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, 0, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_size(shard: TarShard) -> int:
    """The exact size `write_tar` gives the shard: each member's header (as tarfile encodes
    it: a pax record only for a name that does not fit) and its data padded to 512, the two
    zero blocks of the end, the whole padded to tarfile's record size."""
    n = sum(len(_info(m.name, m.size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")) + member_cost(m.size)
            - BLOCK for m in shard.members) + 2 * BLOCK
    return -(-n // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def tar_layout(shard: TarShard) -> Assembled:
    """The shard as `write_tar` writes it, with its stored members' places instead of their
    bytes: each header (and pax record) and each member made here at its offset, each stored
    member's data at its own, the rest zeros up to `tar_size`. Its bytes are known before any
    member is read, so the builder reads every shard's members in one pass of the batch
    planner and writes each where it goes (tests compare it with `write_tar`)."""
    fixed: list[tuple[int, bytes]] = []
    objects: list[tuple[int, str, int]] = []
    pos = 0
    for m in shard.members:
        size = len(m.data) if m.data is not None else m.size
        header = _info(m.name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        fixed.append((pos, header))
        pos += len(header)
        if m.data is not None:
            if m.data:
                fixed.append((pos, m.data))
        elif m.sha256 is None:
            raise PlacementError(f"{shard.path}: member {m.name} has neither bytes nor a sha256")
        else:
            objects.append((pos, m.sha256, m.size))
        pos += -(-size // BLOCK) * BLOCK
    return Assembled(shard.path, tar_size(shard), tuple(fixed), tuple(objects))


def write_tar(shard: TarShard, read: Callable[[str], bytes | Iterable[bytes]], out: BinaryIO) -> None:
    """The shard's bytes: members in the given order, each a regular file with mtime 0, uid
    and gid 0, empty uname and gname, mode 0644 — nothing of the machine or the hour, so the
    same members give the same tar (webdataset's own TarWriter stamps the current time:
    webdataset PR#126). POSIX ustar headers; a name that does not fit gets a pax record
    (tarfile.PAX_FORMAT writes one only then). `read(sha256)` gives a stored member's bytes,
    whole or as an iterable of pieces (the builder streams them from the store: one member at
    a time, in pieces, whatever its size); they must have its size and hash, else
    PlacementError: a tar is never sealed around other bytes."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for m in shard.members:
            if m.data is not None:
                tar.addfile(_info(m.name, len(m.data)), io.BytesIO(m.data))
                continue
            if m.sha256 is None:
                raise PlacementError(f"{shard.path}: member {m.name} has neither bytes nor a sha256")
            got = read(m.sha256)
            src = _Member([bytes(got)] if isinstance(got, (bytes, bytearray, memoryview)) else got)
            try:
                tar.addfile(_info(m.name, m.size), src)
            except OSError:  # tarfile: the source ended before the member's size
                pass
            if src.read(1) or src.size != m.size or src.sha.hexdigest() != m.sha256:
                raise PlacementError(f"{shard.path}: the store gave other bytes for {m.name} ({src.size} bytes, "
                                     f"expected {m.size} with sha256 {m.sha256[:12]}…); run `hoard verify`")


def tar_bytes(shard: TarShard, read: Callable[[str], bytes]) -> bytes:
    """`write_tar` into memory (tests, small shards)."""
    buf = io.BytesIO()
    write_tar(shard, read, buf)
    return buf.getvalue()
