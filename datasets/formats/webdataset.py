"""WebDataset: `<split>-000000.tar` shards, and the one tar writer whose bytes depend on the
members alone."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from datasets.formats.base import TarMember, TarShard, Tree, check_samples, class_names, finish, json_bytes, who
from datasets.layouts import LayoutError, PlacementError
from datasets.model import Sample

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
    needs_boxes = False
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


def write_tar(shard: TarShard, read: Callable[[str], bytes], out: BinaryIO) -> None:
    """The shard's bytes: members in the given order, each a regular file with mtime 0, uid
    and gid 0, empty uname and gname, mode 0644 — nothing of the machine or the hour, so the
    same members give the same tar (webdataset's own TarWriter stamps the current time:
    webdataset PR#126). POSIX ustar headers; a name that does not fit gets a pax record
    (tarfile.PAX_FORMAT writes one only then). A stored member's bytes (`read(sha256)`) must
    have its size and hash, else PlacementError: a tar is never sealed around other bytes."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for m in shard.members:
            if m.data is not None:
                data = m.data
            elif m.sha256 is not None:
                data = read(m.sha256)
                if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.sha256:
                    raise PlacementError(f"{shard.path}: the store gave other bytes for {m.name} ({len(data)} bytes, "
                                         f"expected {m.size} with sha256 {m.sha256[:12]}…); run `hoard verify`")
            else:
                raise PlacementError(f"{shard.path}: member {m.name} has neither bytes nor a sha256")
            info = tarfile.TarInfo(m.name)
            info.size, info.mtime, info.mode, info.type = len(data), 0, 0o644, tarfile.REGTYPE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def tar_bytes(shard: TarShard, read: Callable[[str], bytes]) -> bytes:
    """`write_tar` into memory (tests, small shards)."""
    buf = io.BytesIO()
    write_tar(shard, read, buf)
    return buf.getvalue()
