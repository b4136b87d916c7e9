"""What every format shares: the tree a render returns, the Format protocol, and the checks
that keep a tree one the output contract accepts (names from the web are not trusted)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from hoardfs.base.paths import MAX_NAME_BYTES, display, hostile_reason
from hoardfs.datasets.layouts import LayoutError, PlacementError
from hoardfs.datasets.model import Sample, canonical


@dataclass(frozen=True)
class StoredFile:
    """A sample's file: its bytes come from the store."""
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Generated:
    """A file made here (JSON, text, YAML, XML)."""
    path: str
    data: bytes


@dataclass(frozen=True)
class TarMember:
    """One member of a shard: a stored file (`sha256`) or bytes made here (`data`)."""
    name: str
    sha256: str | None
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

    def paths(self) -> list[str]:
        return sorted([f.path for f in self.files] + [g.path for g in self.generated] + [t.path for t in self.tars])


class Format(Protocol):
    name: str
    needs_class: bool   # every sample must have a class
    needs_size: bool    # every sample must have width and height
    view_ok: bool       # its files can be shown by a view (False: bytes made here hold the samples, e.g. tars)

    def place(self, sample: Sample) -> str:
        """The sample's file path in the tree."""
        ...

    def render(self, samples: list[Sample], doc: dict, options: dict) -> Tree:
        """The whole tree; the same input (in any order) gives the same bytes."""
        ...


#: file types the readers of the image layouts load (torchvision's IMG_EXTENSIONS ∩ Ultralytics'
#: IMG_FORMATS ∩ Hugging Face's image extensions): a file of another type is skipped by them
#: silently, so it is refused here
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_EXT = re.compile(r"\.[a-z0-9]{1,16}")
_KEY = re.compile(r"[0-9a-z_-]{1,64}")


def who(s: Sample) -> str:
    return f"node {s.node_id} ({s.sha256[:12]}…)"


def json_bytes(doc: object) -> bytes:
    """Canonical JSON with a trailing newline (every JSON file of a dataset)."""
    return (canonical(doc) + "\n").encode()


def check_name(value: str, what: str) -> str:
    """A one-segment name from the data (a class, a split): refused if it would escape or
    reshape the tree, or if the output contract refuses it."""
    why = ("a '/' would make it a directory" if "/" in value else
           f"'{value}' would leave the output directory" if value in (".", "..") else hostile_reason(value))
    if why is None and len(value.encode()) > MAX_NAME_BYTES - 32:
        why = f"{len(value.encode())} bytes is too long for a directory name (at most {MAX_NAME_BYTES - 32})"
    if why is not None:
        raise PlacementError(f"{what} is {display(value[:60])!r}: {why}; rename it (relabel the nodes, or pin "
                             "`classes` / `[split]` names that are plain words)")
    return value


def check_samples(fmt: Format, samples: list[Sample], image: bool = True) -> list[Sample]:
    """The samples sorted (split, key) — the order every format writes in — after the checks
    every format needs: a unique key and node, a plain file type, a class when the format needs
    one, a size when it needs one. PlacementError naming the node otherwise."""
    by_key: dict[str, Sample] = {}
    by_node: dict[int, Sample] = {}
    splits: set[str] = set()
    for s in samples:
        if not _KEY.fullmatch(s.key):
            raise PlacementError(f"{who(s)}: sample key {display(s.key[:40])!r} is not 1-64 of 0-9 a-z _ -; "
                                 "the plan gives sha256[:16] or the node id")
        if s.ext and not _EXT.fullmatch(s.ext):
            raise PlacementError(f"{who(s)}: file type {display(s.ext[:20])!r} is not '.' and 1-16 of a-z 0-9; "
                                 "narrow the selector to files of a plain type")
        if image and s.ext.lower() not in IMAGE_EXTS:
            raise PlacementError(f"{who(s)}: file type {s.ext or '(unknown)'!r} is not an image the readers of "
                                 f"layout {fmt.name} load ({', '.join(sorted(IMAGE_EXTS))}), which would skip it "
                                 "silently; narrow the selector (e.g. `kinds = [\"image\"]`)")
        if fmt.needs_class and (s.cls is None or s.class_index is None):
            raise PlacementError(f"{who(s)} has no class; layout {fmt.name} needs one per sample — set "
                                 "`class_label` in the spec and narrow the selector to nodes that have that label")
        if fmt.needs_size and not (isinstance(s.width, int) and isinstance(s.height, int) and s.width > 0
                                   and s.height > 0):
            raise PlacementError(f"{who(s)} has no width/height; layout {fmt.name} needs the image size — narrow "
                                 "the selector to images hoard has measured (`min_width`), or use imagefolder")
        if s.split not in splits:  # a name is checked once: the first sample holding a bad one is named
            check_name(s.split, f"{who(s)}: split")
            splits.add(s.split)
        other = by_key.setdefault(s.key, s)
        if other is s:
            other = by_node.setdefault(s.node_id, s)
        if other is not s:
            raise PlacementError(f"{who(other)} and {who(s)} share a sample key or node; a dataset holds a sample "
                                 "once — dedup the selection (`dedup = \"by_sha256\"`)")
    return sorted(samples, key=lambda s: (s.split, s.key))


def class_names(samples: Iterable[Sample], doc: dict) -> list[str]:
    """The class map, index = position: the dataset document's `classes` when it has them,
    else the samples' own (class, class_index), which must then number 0…n-1 without a gap.
    Every sample's class must sit at its index; PlacementError naming the node otherwise."""
    pinned = doc.get("classes")
    if pinned is not None and not (isinstance(pinned, list) and all(isinstance(c, str) for c in pinned)):
        raise LayoutError("dataset.json: `classes` must be a list of class names (the class map)")
    names: dict[int, str] = dict(enumerate(pinned or []))
    for s in samples:
        if s.cls is None or s.class_index is None:
            continue
        at = names.setdefault(s.class_index, s.cls) if pinned is None else names.get(s.class_index)
        if at != s.cls:
            raise PlacementError(f"{who(s)}: class {s.cls!r} has index {s.class_index}, but the class map has "
                                 f"{at!r} there; build the manifest again (hoard dataset build)")
    out = [names.get(i) for i in range(len(names))]
    if any(n is None for n in out) or (names and max(names) != len(names) - 1):
        raise PlacementError(f"the samples' class indices {sorted(names)} leave a gap; give `classes` in the "
                             "dataset document (the pinned class map)")
    for n in out:
        check_name(n or "", "class")
    return [n for n in out if n is not None]


def _fold(p: str) -> str:
    """A path as a case- and accent-insensitive file system compares it."""
    return p.lower() if p.isascii() else unicodedata.normalize("NFC", p).lower()


def finish(tree: Tree, fmt: str, prefix: str = "", case_sensitive: bool = False) -> Tree:
    """The tree sorted by path, after the checks every path gets: the output contract's rule
    (with `prefix`, the directory the tree goes in, in front), no two paths equal or equal but
    for case or accents (a case-insensitive consumer keeps one), no two directories so either
    (classes `Cat` and `cat`: it merges them) — unless `case_sensitive` (a template that says
    so) — and no file under another file."""
    tree.files.sort(key=lambda f: f.path)
    tree.generated.sort(key=lambda g: g.path)
    tree.tars.sort(key=lambda t: t.path)
    folded: dict[str, str] = {}
    paths = tree.paths()
    for p in paths:
        why = hostile_reason(prefix + p)
        if why is None and any(len(seg.encode()) > MAX_NAME_BYTES for seg in p.split("/")):
            why = f"a name is over {MAX_NAME_BYTES} bytes"
        if why is not None:
            raise PlacementError(f"layout {fmt} gives {display(p[:80])!r}, which the output contract refuses: {why}")
        f = p if case_sensitive else _fold(p)
        if f in folded:
            raise PlacementError(f"layout {fmt} gives {display(folded[f])!r} and {display(p)!r}, one path but for "
                                 "case or accents; rename one of the classes or splits")
        folded[f] = p
    dirs: set[str] = set()
    for p in paths:
        parent = p.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    # two directories one but for case or accents (classes `Cat` and `cat`): a case-insensitive
    # consumer (macOS, exFAT, NTFS, a Windows share) merges them, and every reader then labels
    # both classes' files as one
    folded_dirs: dict[str, str] = {}
    for d in sorted(dirs):
        other = folded_dirs.setdefault(d if case_sensitive else _fold(d), d)
        if other != d:
            raise PlacementError(f"layout {fmt} gives directories {display(other)!r} and {display(d)!r}, one "
                                 "directory but for case or accents (a case-insensitive file system merges them); "
                                 "rename one of the classes or splits")
    clash = dirs.intersection(paths)
    if clash:
        raise PlacementError(f"layout {fmt}: {sorted(clash)[0]!r} is both a file and a directory; rename the class "
                             "or split of that name")
    return tree
