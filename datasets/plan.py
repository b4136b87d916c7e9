"""A dataset spec → its samples (docs/datasets.md): the selection (sql.selectors, tree
predicates included), each node's labels, lineage to the root, the root's source URL and
date, the class and its index in the class map, the split by hash of (salt, group key),
dedup, per-class caps, each sample's path in the layout — checked whole, before a byte moves.

Everything after the database reads is a pure function of the rows (`samples_from_rows`):
the same rows and spec give the same samples, in the same order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from datasets.formats import Format, plan_paths
from datasets.layouts import PlacementError
from datasets.model import LS_SHAPES, Annotation, Sample, annotations_from_ls
from datasets.spec import DatasetError, DatasetSpec
from fsd.base.errors import ExitCode
from fsd.base.paths import display, hostile_reason
from sql.datasets import sample_rows
from sql.selectors import query_nodes

#: the labels an image's size is read from (the `exif` action writes them)
WIDTH, HEIGHT = "image.width", "image.height"
#: the counts' name of "no class" (a layout that needs none, a spec without class_label)
NO_CLASS = "-"
THUMBNAILS = 8


@dataclass
class Plan:
    spec: DatasetSpec
    samples: list[Sample]  # in build order: split (ratios' order), class index, sha256
    class_map: list[str]
    new_classes: list[str] = field(default_factory=list)  # appended to the frozen map (allow_new_classes)
    selected: int = 0  # nodes the selector picked
    unlabelled: int = 0  # selected nodes without the class label (left out)
    dropped_dup: int = 0
    capped: int = 0
    licences: list[str] = field(default_factory=list)  # found in the samples' metadata (`license`/`licence`)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.samples)

    def counts(self) -> dict[str, dict[str, int]]:
        return counts_of(self.samples, list(self.spec.split.ratios))

    def thumbnails(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for s in self.samples:
            got = out[s.cls or NO_CLASS]
            if len(got) < THUMBNAILS:
                got.append(s.sha256)
        return dict(out)


def counts_of(samples: list[Sample], splits: list[str]) -> dict[str, dict[str, int]]:
    """samples per split × class (every split of the ratios, even an empty one)."""
    out: dict[str, dict[str, int]] = {s: {} for s in splits}
    for s in samples:
        by = out.setdefault(s.split, {})
        by[s.cls or NO_CLASS] = by.get(s.cls or NO_CLASS, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def unit(salt: str, key: str) -> float:
    """The sample's place in [0, 1): it depends on the salt and its group key only, so adding
    data never moves an existing sample."""
    return int.from_bytes(hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8], "big") / 2 ** 64


def split_of(ratios: dict[str, float], salt: str, key: str) -> str:
    u, acc = unit(salt, key), 0.0
    names = list(ratios)
    for name in names:
        acc += ratios[name]
        if u < acc:
            return name
    return names[-1]  # the float sum fell a hair short of 1


def order_key(s: Sample, splits: list[str]) -> tuple[int, int, str, str]:
    """Build order: split (the ratios' order), class index, sha256, path."""
    return (splits.index(s.split) if s.split in splits else len(splits),
            s.class_index if s.class_index is not None else -1, s.sha256, s.path)


def plan(conn, spec: DatasetSpec, fmt: Format, frozen_map: list[str] | None) -> Plan:
    """Read the selection and its rows (sql.datasets) and make the samples; DatasetError — one
    line naming the problem and what to do — for anything that would make a wrong dataset."""
    node_ids = query_nodes(conn, spec.selector).node_ids
    if not node_ids:
        raise DatasetError(f"dataset {spec.name}: the selection is empty — no node matches its [selector]; check it "
                           "with `hoard select` (nothing was written)", ExitCode.DATA)
    rows = sample_rows(conn, node_ids, ocr_boxes=spec.annotations == "result_ocr_box")
    if not rows:
        raise DatasetError(f"dataset {spec.name}: the selection is empty — its [selector] matches only manifests of "
                           "datasets; check it with `hoard select` (nothing was written)", ExitCode.DATA)
    return samples_from_rows(spec, fmt, [rows[n] for n in node_ids if n in rows], frozen_map)


def samples_from_rows(spec: DatasetSpec, fmt: Format, rows: list[dict[str, Any]],
                      frozen_map: list[str] | None) -> Plan:
    name = spec.name
    _check_keys(spec, rows)
    if fmt.needs_class and spec.class_label is None:
        raise DatasetError(f"dataset {name}: layout {fmt.name} needs a class: set class_label to the label key that "
                           "holds it")
    # the class of each node
    classed: list[tuple[dict[str, Any], str | None]] = []
    unlabelled = 0
    for r in rows:
        cls = None
        if spec.class_label is not None:
            values = r["labels"].get(spec.class_label, [])
            if len(values) > 1:
                raise DatasetError(f"dataset {name}: node {r['sha256']} has {len(values)} values of "
                                   f"{spec.class_label!r} ({', '.join(map(repr, values[:3]))}); a sample has one class — "
                                   "take the others off (`hoard label rm`)", ExitCode.DATA)
            if not values:
                unlabelled += 1
                continue
            cls = values[0]
        classed.append((r, cls))
    if not classed:
        raise DatasetError(f"dataset {name}: none of the {len(rows)} selected nodes has a {spec.class_label!r} label; "
                           "label them or widen the selector", ExitCode.DATA)
    found = sorted({c for _, c in classed if c is not None})
    cmap, new = _class_map(spec, frozen_map, found, classed)
    index = {c: i for i, c in enumerate(cmap)}
    # one sample per node; dedup by content or node
    seen: set[str | int] = set()
    dropped = 0
    out: list[Sample] = []
    keys = Counter(r["sha256"][:16] for r, _ in classed)
    splits = list(spec.split.ratios)
    groups = group_keys(spec, [r for r, _ in classed])
    drawn: dict[str, str] = {}  # group key → split (the samples of a group share their draw)
    for r, cls in sorted(classed, key=lambda rc: rc[0]["node_id"]):
        ident = r["sha256"] if spec.dedup == "by_sha256" else r["node_id"]
        if ident in seen:
            dropped += 1
            continue
        seen.add(ident)
        key = r["sha256"][:16] if keys[r["sha256"][:16]] == 1 else f"{r['sha256'][:16]}-{r['node_id']}"
        split = _split(spec, r, splits, groups[r["node_id"]], drawn)
        labels = {k: tuple(v) for k, v in sorted(r["labels"].items())}
        width, height = _int(labels.get(WIDTH)), _int(labels.get(HEIGHT))
        anns, w2, h2 = _annotations(spec, r, cls)
        out.append(Sample(path="", sha256=r["sha256"], size=int(r["size"]),
                          ext=f".{r['file_type']}" if r.get("file_type") else "", key=key, node_id=r["node_id"],
                          root_id=r["root_id"], lineage=tuple(r["lineage"]), source_url=r["source_url"],
                          date=r["date"], labels=labels, cls=cls, class_index=index[cls] if cls is not None else None,
                          split=split, annotations=anns, width=width or w2, height=height or h2))
    out, capped = _caps(spec, out)
    kept = {s.node_id for s in out}
    licences = sorted({lic for r, _ in classed if r["node_id"] in kept for lic in r.get("licences", ())})
    placed = place(fmt, out, name, spec.webdataset.model_dump())
    placed.sort(key=lambda s: order_key(s, splits))
    return Plan(spec, placed, cmap, new, selected=len(rows), unlabelled=unlabelled, dropped_dup=dropped, capped=capped,
                licences=licences)


def place(fmt: Format, samples: list[Sample], name: str, options: dict[str, Any] | None = None) -> list[Sample]:
    """Each sample with its path in the layout (datasets.formats.plan_paths: a webdataset
    sample's is `<shard>/<member>`, with the spec's shard options); a path that is no safe
    relative path, or two samples at one path, is refused naming them."""
    at: dict[str, str] = {}
    placed = plan_paths(fmt, samples, options)
    for s in placed:
        why = hostile_reason(s.path)
        if why:
            raise DatasetError(f"dataset {name}: node {s.sha256} would lie at {display(s.path)} in layout {fmt.name}: "
                               f"{why}; change its label or the layout", ExitCode.DATA)
        if s.path in at:
            raise DatasetError(f"dataset {name}: nodes {at[s.path]} and {s.sha256} both map to {display(s.path)} in "
                               f"layout {fmt.name}; dedup or narrow the selection", ExitCode.DATA)
        at[s.path] = s.sha256
    return placed


def _check_keys(spec: DatasetSpec, rows: list[dict[str, Any]]) -> None:
    """A label key the spec names that no selected node has is a typo until proven otherwise."""
    have: set[str] = set()
    for r in rows:
        have.update(r["labels"])
    named = [("class_label", spec.class_label), ("split.field", spec.split.field),
             ("split.group", spec.split.group[6:] if spec.split.group.startswith("label:") else None),
             ("annotations", spec.annotations if spec.annotations != "result_ocr_box" else None)]
    for what, key in named:
        if key is not None and key not in have:
            near = sorted(have)[:8]
            raise DatasetError(f"dataset {spec.name}: {what} = {key!r}: no selected node has that label key"
                               + (f" (their keys: {', '.join(near)}{', …' if len(have) > 8 else ''})" if near else
                                  " (they have no labels at all)") + "; fix the key or the selector", ExitCode.DATA)


def _class_map(spec: DatasetSpec, frozen: list[str] | None, found: list[str],
               classed: list[tuple[dict[str, Any], str | None]]) -> tuple[list[str], list[str]]:
    if spec.class_label is None:
        return [], []
    base = list(spec.classes) if spec.classes is not None else (list(frozen) if frozen else [])
    if not base:  # the first build without pinned classes: the sorted names found, frozen from now on
        return found, []
    new = [c for c in found if c not in base]
    if new and not spec.allow_new_classes:
        node = next(r["sha256"] for r, c in classed if c == new[0])
        pinned = "the spec's classes" if spec.classes is not None else "the class map frozen at its first build"
        raise DatasetError(f"dataset {spec.name}: class {new[0]!r} (of node {node}"
                           + (f", and {len(new) - 1} more class(es)" if len(new) > 1 else "")
                           + f") is not in {pinned}; add it to classes, set allow_new_classes = true (it is appended: "
                           "no index moves), or leave those nodes out of the selector", ExitCode.DATA)
    if spec.classes is not None:
        empty = [c for c in spec.classes if c not in found]
        if empty:
            raise DatasetError(f"dataset {spec.name}: class {empty[0]!r} has no samples; drop it from classes or widen "
                               "the selector", ExitCode.DATA)
    return base + new, new


def group_keys(spec: DatasetSpec, rows: list[dict[str, Any]]) -> dict[int, str]:
    """node id → the key its split is drawn from: `node:<id>`, `root:<root id>`, or with
    `group = "label:KEY"` one key for every sample linked by a root or a value of KEY — a
    near-duplicate group and every sample of each post it touches lie in one split (keyed by
    the group's least value, `label:<value>`; `root:<id>` for a post none of whose samples has
    the label). Taking a node's label alone would put a labelled image in its group's split and
    its unlabelled siblings of the same post in their root's: one post in two splits."""
    g = spec.split.group
    if g == "node":
        return {r["node_id"]: f"node:{r['node_id']}" for r in rows}
    if not g.startswith("label:"):
        return {r["node_id"]: f"root:{r['root_id']}" for r in rows}
    key = g[6:]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        root = find(f"root:{r['root_id']}")
        for v in r["labels"].get(key, ()):
            a, b = sorted((root, find(f"label:{v}")))  # a label key sorts before a root key: it names the group
            parent[b] = a
            root = a
    return {r["node_id"]: find(f"root:{r['root_id']}") for r in rows}


def _split(spec: DatasetSpec, r: dict[str, Any], splits: list[str], group: str, drawn: dict[str, str]) -> str:
    sp = spec.split
    if sp.field is not None and r["labels"].get(sp.field):
        values = r["labels"][sp.field]
        if len(values) > 1 or values[0] not in sp.ratios:
            raise DatasetError(f"dataset {spec.name}: node {r['sha256']} says {sp.field} = "
                               f"{', '.join(map(repr, values))}, which is not one split of {', '.join(splits)}; fix "
                               "its label or the ratios", ExitCode.DATA)
        return values[0]
    split = drawn.get(group)
    if split is None:
        split = drawn[group] = split_of(sp.ratios, sp.salt, group)
    return split


def _caps(spec: DatasetSpec, samples: list[Sample]) -> tuple[list[Sample], int]:
    """At most the cap of each class per split, keeping the lowest sha256(salt, key) first (a
    stable choice: adding data replaces a kept sample only by one that sorts before it)."""
    if not spec.caps and spec.max_per_class is None:
        return samples, 0
    groups: dict[tuple[str, str | None], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.split, s.cls)].append(s)
    kept: list[Sample] = []
    for (_split_name, cls), members in groups.items():
        cap = (spec.caps or {}).get(cls or "", spec.max_per_class)
        members.sort(key=lambda s: hashlib.sha256(f"{spec.split.salt}\0{s.key}".encode()).digest())
        kept.extend(members if cap is None else members[:cap])
    return kept, len(samples) - len(kept)


def _int(values: tuple[str, ...] | None) -> int | None:
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None


def _annotations(spec: DatasetSpec, r: dict[str, Any], cls: str | None
                 ) -> tuple[tuple[Annotation, ...], int | None, int | None]:
    """Boxes and polygons in pixels: of result_ocr_box, or of Label Studio regions under the
    `annotations` label key (datasets.model.annotations_from_ls: percent of original_width /
    original_height → pixels; docs/actions.md "What comes back"), with the image's size."""
    if spec.annotations is None:
        return (), None, None
    if spec.annotations == "result_ocr_box":
        return tuple(Annotation(cls or (text or "text"), (x, y, w, h), None) for x, y, w, h, text in r["boxes"]), None, None
    values = r["labels"].get(spec.annotations, [])
    try:
        anns = annotations_from_ls(values, who=f"dataset {spec.name}: node {r['sha256']}")
    except PlacementError as e:
        raise DatasetError(e.message, ExitCode.DATA) from None
    width = height = None
    for raw in values:  # the image's size, as Label Studio saw it
        region = json.loads(raw)
        if isinstance(region, dict) and region.get("type") in LS_SHAPES:
            width, height = int(region["original_width"]), int(region["original_height"])
            break
    return anns, width, height
