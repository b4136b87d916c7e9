"""A dataset spec → its samples (docs/datasets.md): the selection (hoardfs.sql.selectors, tree
predicates included), each node's labels, lineage to the root, the source URL, date, author
and licence of its nearest item, the class and its index in the class map, its group, the
split of its group (hoardfs.datasets.splits: the ratios honoured, or refused), dedup,
per-class caps, each sample's path in the layout — checked whole, before a byte moves.

Everything after the database reads is a pure function of the rows (`samples_from_rows`):
the same rows and spec give the same samples, in the same order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hoardfs.base.errors import ExitCode
from hoardfs.base.paths import display, hostile_reason
from hoardfs.datasets.formats import Format, plan_paths
from hoardfs.datasets.layouts import PlacementError
from hoardfs.datasets.model import LS_SHAPES, Annotation, Sample, annotations_from_ls
from hoardfs.datasets.spec import DatasetError, DatasetSpec
from hoardfs.datasets.splits import Balance, balance, tolerance, unit
from hoardfs.datasets.splits import report as split_report
from hoardfs.sql import datasets as sqld
from hoardfs.sql import neardup
from hoardfs.sql.datasets import sample_rows
from hoardfs.sql.selectors import parse_selector, query_nodes, selector_query

if TYPE_CHECKING:
    import psycopg

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
    #: split → {samples, share, ratio}: the realised split (after the caps), as `check_capped` judged it
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the groups over split.max_group_share of the samples: [{group, samples, share}], largest first
    large_groups: list[dict[str, Any]] = field(default_factory=list)

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


def split_of(ratios: dict[str, float], salt: str, key: str) -> str:
    u, acc = unit(salt, key), 0.0
    names = list(ratios)
    for name in names:
        acc += ratios[name]
        if u < acc:
            return name
    return names[-1]  # the float sum fell a hair short of 1


def build_order(splits: list[str]) -> Callable[[Sample], tuple[int, int, str, str]]:
    """The build order's key over these splits: split (the ratios' order; one not among them
    last), class index, sha256, path — the split's rank looked up once per name."""
    rank = {sp: i for i, sp in reversed(list(enumerate(splits)))}
    last = len(splits)

    def key(s: Sample) -> tuple[int, int, str, str]:
        return (rank.get(s.split, last), s.class_index if s.class_index is not None else -1, s.sha256, s.path)
    return key


def plan(conn: psycopg.Connection, spec: DatasetSpec, fmt: Format, frozen_map: list[str] | None) -> Plan:
    """Read the selection and its rows (hoardfs.sql.datasets) and make the samples; DatasetError — one
    line naming the problem and what to do — for anything that would make a wrong dataset."""
    node_ids = query_nodes(conn, spec.selection()).node_ids
    if not node_ids:
        raise DatasetError(f"dataset {spec.name}: the selection is empty — no node matches its [selector]; check it "
                           "with `hoard select` (nothing was written)", ExitCode.DATA)
    rows = sample_rows(conn, node_ids, ocr_boxes=spec.annotations == "result_ocr_box")
    if not rows:
        raise DatasetError(f"dataset {spec.name}: the selection is empty — its [selector] matches only manifests of "
                           "datasets; check it with `hoard select` (nothing was written)", ExitCode.DATA)
    if uses_near_dups(spec):
        near = near_dup_groups(conn, spec)
        for r in rows.values():
            r["near_dup"] = near.get(r["node_id"])
    if spec.split.group in sqld.GROUP_KINDS:
        for nid, key in sqld.group_keys(conn, list(rows), spec.split.group).items():
            rows[nid]["group"] = key
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
                raise _two_classes(spec, r["sha256"], values)
            if not values:
                unlabelled += 1
                continue
            cls = values[0]
        classed.append((r, cls))
    if not classed:
        raise _no_class(spec, len(rows))
    found = sorted({c for _, c in classed if c is not None})
    cmap, new = _class_map(spec, frozen_map, found, lambda c: next(r["sha256"] for r, k in classed if k == c))
    index = {c: i for i, c in enumerate(cmap)}
    # one sample per node; dedup by content or node
    seen: set[str | int] = set()
    dropped = 0
    keys = Counter(r["sha256"][:16] for r, _ in classed)
    splits = list(spec.split.ratios)
    groups = group_keys(spec, [r for r, _ in classed])
    kept_rows: list[tuple[dict[str, Any], str | None]] = []
    for r, cls in sorted(classed, key=lambda rc: rc[0]["node_id"]):
        ident = r["sha256"] if spec.dedup == "by_sha256" else r["node_id"] if spec.dedup == "by_node" else \
            f"near_dup:{r.get('near_dup') or r['sha256']}"
        if ident in seen:
            dropped += 1
            continue
        seen.add(ident)
        kept_rows.append((r, cls))
    # the groups' sizes → their splits (hoardfs.datasets.splits.balance: the ratios honoured)
    sizes = Counter(groups[r["node_id"]] for r, _ in kept_rows)
    bal = balance(spec.split.ratios, spec.split.salt, dict(sizes))
    out: list[Sample] = []
    for r, cls in kept_rows:
        group = groups[r["node_id"]]
        split = _split(spec, r, splits, splits[bal.assign[group]])
        out.append(_sample(spec, r, cls, index[cls] if cls is not None else None, keys[r["sha256"][:16]] > 1, split,
                           group))
    realised = Counter(s.split for s in out)
    check_splits(spec, bal, [realised.get(sp, 0) for sp in splits], sizes)
    large = large_groups(spec, sizes)
    out, capped = _caps(spec, out)
    final = Counter(s.split for s in out)
    report = check_capped(spec, bal, [final.get(sp, 0) for sp in splits], capped, sizes)
    kept = {s.node_id for s in out}
    licences = sorted({lic for r, _ in classed if r["node_id"] in kept for lic in r.get("licences", ())})
    placed = place(fmt, out, name, spec.webdataset.model_dump())
    placed.sort(key=build_order(splits))
    return Plan(spec, placed, cmap, new, selected=len(rows), unlabelled=unlabelled, dropped_dup=dropped, capped=capped,
                licences=licences, splits=report, large_groups=large)


def _sample(spec: DatasetSpec, r: dict[str, Any], cls: str | None, class_index: int | None, shared: bool,
            split: str, group: str | None = None) -> Sample:
    """A node's row (hoardfs.sql.datasets.sample_rows) as a sample without its path; `shared`: another
    classed node has the same sha256[:16] (the key then names the node too)."""
    key = f"{r['sha256'][:16]}-{r['node_id']}" if shared else r["sha256"][:16]
    labels = {k: tuple(v) for k, v in sorted(r["labels"].items())}
    width, height = _int(labels.get(WIDTH)), _int(labels.get(HEIGHT))
    anns, w2, h2 = _annotations(spec, r, cls)
    return Sample(path="", sha256=r["sha256"], size=int(r["size"]), ext=f".{r['file_type']}" if r.get("file_type") else "",
                  key=key, node_id=r["node_id"], root_id=r["root_id"], lineage=tuple(r["lineage"]),
                  source_url=r["source_url"], date=r["date"], labels=labels, cls=cls, class_index=class_index,
                  split=split, annotations=anns, width=width or w2, height=height or h2, author=r.get("author"),
                  licences=tuple(r.get("licences", ())), group=group)


def sample_of(spec: DatasetSpec, r: dict[str, Any], split: str, class_map: list[str], shared: bool) -> Sample:
    """The sample a build makes of a node's row whose split is known (a dry run's few)."""
    cls = r["labels"][spec.class_label][0] if spec.class_label is not None else None
    return _sample(spec, r, cls, class_map.index(cls) if cls is not None else None, shared, split)


def place(fmt: Format, samples: list[Sample], name: str, options: dict[str, Any] | None = None) -> list[Sample]:
    """Each sample with its path in the layout (hoardfs.datasets.formats.plan_paths: a webdataset
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


def _named_keys(spec: DatasetSpec) -> list[tuple[str, str]]:
    named = [("class_label", spec.class_label), ("split.field", spec.split.field),
             ("split.group", spec.split.group[6:] if spec.split.group.startswith("label:") else None),
             ("annotations", spec.annotations if spec.annotations != "result_ocr_box" else None)]
    return [(what, key) for what, key in named if key is not None]


def _no_key(spec: DatasetSpec, what: str, key: str, have: set[str]) -> DatasetError:
    near = sorted(have)[:8]
    return DatasetError(f"dataset {spec.name}: {what} = {key!r}: no selected node has that label key"
                        + (f" (their keys: {', '.join(near)}{', …' if len(have) > 8 else ''})" if near else
                           " (they have no labels at all)") + "; fix the key or the selector", ExitCode.DATA)


def _check_keys(spec: DatasetSpec, rows: list[dict[str, Any]]) -> None:
    """A label key the spec names that no selected node has is a typo until proven otherwise;
    one named for plain values (`plain_keys`) that holds a JSON blob is refused (`_json_key`)."""
    have: set[str] = set()
    for r in rows:
        have.update(r["labels"])
    for what, key in _named_keys(spec):
        if key not in have:
            raise _no_key(spec, what, key, have)
    for what, key in plain_keys(spec):
        for r in rows:
            blob = next((v for v in r["labels"].get(key, ()) if json_blob(v)), None)
            if blob is not None:
                raise _json_key(spec, what, key, r["sha256"], blob, have)


def plain_keys(spec: DatasetSpec) -> list[tuple[str, str]]:
    """The label keys the spec reads as plain values — the class, the explicit split, the
    label group — not `annotations`, whose values are Label Studio's regions (JSON)."""
    return [(what, key) for what, key in _named_keys(spec) if what != "annotations"]


def json_blob(value: str) -> bool:
    """A label value that is a JSON document with structure — an object with a key, or an array
    holding an object or an array (a Label Studio result or region kept raw, e.g.
    `ls:scene={"type":"choices",…}`): never a class, a split or a group's name. Text that is
    only shaped like JSON — `[1]`, `[0, 1]` (a multi-hot target), `["a"]`, `{}`, `[]` — is a
    plain value a user may mean."""
    v = value.lstrip()
    if not v.startswith(("{", "[")):
        return False
    try:
        doc = json.loads(v)
    except ValueError:
        return False
    if isinstance(doc, dict):
        return bool(doc)
    return isinstance(doc, list) and any(isinstance(x, (dict, list)) for x in doc)


def _json_key(spec: DatasetSpec, what: str, key: str, sha: str, value: str, have: set[str]) -> DatasetError:
    plain = key[3:] if key.startswith("ls:") else None
    if plain is not None and plain in have:
        step = f"name the plain key instead ({what} = {plain!r}, which holds Label Studio's answers as values)"
    else:
        step = ("name a key of plain KEY=VALUE labels (`hoard label add KEY=VALUE`; Label Studio's choices come back "
                "as `<control>=<choice>`, docs/actions.md \"What comes back\")")
    shown = display(value[:60]) + ("…" if len(value) > 60 else "")
    return DatasetError(f"dataset {spec.name}: {what} = {key!r} holds JSON blobs, not plain values (node {sha}: "
                        f"{shown}); a class, a split or a group is one plain value — {step} (nothing was written)",
                        ExitCode.DATA)


def _two_classes(spec: DatasetSpec, sha: str, values: list[str]) -> DatasetError:
    return DatasetError(f"dataset {spec.name}: node {sha} has {len(values)} values of "
                        f"{spec.class_label!r} ({', '.join(map(repr, values[:3]))}); a sample has one class — "
                        "take the others off (`hoard label rm`)", ExitCode.DATA)


def _no_class(spec: DatasetSpec, selected: int) -> DatasetError:
    return DatasetError(f"dataset {spec.name}: none of the {selected} selected nodes has a {spec.class_label!r} label; "
                        "label them or widen the selector", ExitCode.DATA)


def _bad_field(spec: DatasetSpec, sha: str, values: list[str]) -> DatasetError:
    return DatasetError(f"dataset {spec.name}: node {sha} says {spec.split.field} = "
                        f"{', '.join(map(repr, values))}, which is not one split of {', '.join(spec.split.ratios)}; fix "
                        "its label or the ratios", ExitCode.DATA)


def _class_map(spec: DatasetSpec, frozen: list[str] | None, found: list[str],
               node_of: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """(the class map, the classes appended to it); `node_of(class)`: a node of it (sha256), to name."""
    if spec.class_label is None:
        return [], []
    base = list(spec.classes) if spec.classes is not None else (list(frozen) if frozen else [])
    if not base:  # the first build without pinned classes: the sorted names found, frozen from now on
        return found, []
    new = [c for c in found if c not in base]
    if new and not spec.allow_new_classes:
        node = node_of(new[0])
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


def uses_near_dups(spec: DatasetSpec) -> bool:
    return spec.split.group == "near_dup" or spec.dedup == "by_near_dup"


def near_dup_groups(conn: psycopg.Connection, spec: DatasetSpec) -> dict[int, str]:
    """node id → its near-duplicate group's name (hoardfs.sql.neardup.group_of_nodes, over every hashed
    image, selected or not: two selected copies linked through a third are one group); refused
    in one line when no image has been hashed."""
    if not neardup.hashed_count(conn):
        raise DatasetError(f"dataset {spec.name}: split.group = \"near_dup\" and dedup = \"by_near_dup\" need the "
                           "images' perceptual hashes, and no image has them: run `hoard action run near-dup-hash` "
                           "first (docs/near-dups.md)", ExitCode.DATA)
    return neardup.group_of_nodes(conn, spec.near_dup_threshold)


def group_keys(spec: DatasetSpec, rows: list[dict[str, Any]]) -> dict[int, str]:
    """node id → the key of the group its split is drawn for (docs/datasets.md "Groups"):
    `node:<id>` (none, node); `root:<root id>`; the row's `group` for post / author / thread /
    channel / lineage (hoardfs.sql.datasets.group_keys fills it in); `near_dup:<name>` for a
    member of a near-duplicate group and `node:<id>` for an image in none (near_dup: nothing
    else joined); with `group = "label:KEY"` one key for every sample linked by a root or a
    value of KEY — each group and every sample of each post it touches lie in one split (keyed
    by the group's least value, `label:<value>`; `root:<id>` for a post none of whose samples
    has the label). Taking a node's label alone would put a labelled image in its group's split
    and its unlabelled siblings of the same post in their root's: one post in two splits."""
    g = spec.split.group
    if g in ("node", "none"):
        return {r["node_id"]: f"node:{r['node_id']}" for r in rows}
    if g == "root":
        return {r["node_id"]: f"root:{r['root_id']}" for r in rows}
    if g == "near_dup":
        return {r["node_id"]: f"near_dup:{r['near_dup']}" if r.get("near_dup") else f"node:{r['node_id']}"
                for r in rows}
    if not g.startswith("label:"):
        missing = next((r["node_id"] for r in rows if not r.get("group")), None)
        if missing is not None:
            raise DatasetError(f"dataset {spec.name}: node {missing} has no {g} group key; this is a bug — report it",
                               ExitCode.BUG)
        return {r["node_id"]: r["group"] for r in rows}
    key = g[6:]
    prefix = "label:"

    def values(r: dict[str, Any]) -> Any:
        return r["labels"].get(key, ())

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        root = find(f"root:{r['root_id']}")
        for v in values(r):
            a, b = sorted((root, find(f"{prefix}{v}")))  # a label key sorts before a root key: it names the group
            parent[b] = a
            root = a
    return {r["node_id"]: find(f"root:{r['root_id']}") for r in rows}


def _split(spec: DatasetSpec, r: dict[str, Any], splits: list[str], drawn: str) -> str:
    """The sample's split: its explicit `split.field` value, else its group's (`drawn`)."""
    sp = spec.split
    if sp.field is not None and r["labels"].get(sp.field):
        values = r["labels"][sp.field]
        if len(values) > 1 or values[0] not in sp.ratios:
            raise _bad_field(spec, r["sha256"], values)
        return values[0]
    return drawn


#: the groups a refusal or report names at most
NAMED = 3


def check_splits(spec: DatasetSpec, bal: Balance, counts: list[int], sizes: Counter[str] | dict[str, int]) -> None:
    """DatasetError — before a byte moves — when a split of the realised `counts` (explicit split
    values included) is empty or off its ratio by more than the tolerance (2 percentage points
    or the largest group, whichever is larger), naming the largest groups and how to change the
    grouping; `split.allow_skew` builds anyway."""
    total = sum(counts)
    if spec.split.allow_skew:
        return
    bad = [(sp, n, r) for sp, n, r in zip(bal.splits, counts, bal.ratios, strict=True)
           if n == 0 or abs(n - total * r) > bal.tolerance]
    if not bad:
        return
    sp, n, r = bad[0]
    big = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:NAMED]
    named = ", ".join(f"{k} ({v} samples)" for k, v in big)
    finer = "split.group = \"none\"" if spec.split.group != "none" else "more data or other ratios"
    raise DatasetError(
        f"dataset {spec.name}: split {sp!r} would hold {n} of {total} samples ({n / total if total else 0:.1%}, ratio "
        f"{r:g}) — {len(sizes)} group(s) of split.group = {spec.split.group!r} cannot be cut closer; the largest: "
        f"{named}; choose a finer grouping ({finer}, or lineage / post instead of author / thread / channel), "
        "change the ratios, or set split.allow_skew = true to build anyway (nothing was written)", ExitCode.DATA)


def large_groups(spec: DatasetSpec, sizes: Counter[str] | dict[str, int]) -> list[dict[str, Any]]:
    """The groups holding more than split.max_group_share of the samples, largest first."""
    total = sum(sizes.values())
    over = [(k, n) for k, n in sizes.items() if total and n / total > spec.split.max_group_share]
    return [{"group": k, "samples": n, "share": round(n / total, 4)}
            for k, n in sorted(over, key=lambda kv: (-kv[1], kv[0]))]


def split_caps(spec: DatasetSpec) -> dict[str, dict[str, int | None]]:
    """split → class ("" for the default) → its cap there: a cap holds in the split of the largest
    ratio and each other split keeps its ratio's share of it (at least 1), so that capping keeps
    the ratios asked for (`max_per_class = 20` with train 0.8 / val 0.2: 20 and 5)."""
    top = max(spec.split.ratios.values())
    scaled = {**{c: n for c, n in (spec.caps or {}).items()}, "": spec.max_per_class}
    return {sp: {c: None if n is None else max(1, round(n * r / top)) for c, n in scaled.items()}
            for sp, r in spec.split.ratios.items()}


def check_capped(spec: DatasetSpec, bal: Balance, counts: list[int], capped: int,
                 sizes: Counter[str] | dict[str, int]) -> dict[str, dict[str, Any]]:
    """split → {samples, share, ratio} of the samples kept after the caps; DatasetError — before a
    byte moves — when the caps leave a split empty or off its ratio by more than the tolerance
    (the classes then hold too few samples in some split for its share of the cap)."""
    total = sum(counts)
    report = split_report(bal.splits, bal.ratios, counts)
    if not capped or spec.split.allow_skew:
        return report
    for sp, n, r in zip(bal.splits, counts, bal.ratios, strict=True):
        if n == 0 or abs(n - total * r) > tolerance(total, max(sizes.values(), default=0)):
            raise DatasetError(
                f"dataset {spec.name}: after the caps split {sp!r} would hold {n} of {total} samples "
                f"({n / total if total else 0:.1%}, ratio {r:g}) — some classes hold too few samples in a split for "
                "its share of the cap; raise or drop caps / max_per_class, or set split.allow_skew = true to build "
                "anyway (nothing was written)", ExitCode.DATA)
    return report


def _caps(spec: DatasetSpec, samples: list[Sample]) -> tuple[list[Sample], int]:
    """At most the cap of each class per split (`split_caps`), keeping the lowest sha256(salt, key)
    first (a stable choice: adding data replaces a kept sample only by one that sorts before it)."""
    if not spec.caps and spec.max_per_class is None:
        return samples, 0
    by_split = split_caps(spec)
    groups: dict[tuple[str, str | None], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.split, s.cls)].append(s)
    kept: list[Sample] = []
    for (split_name, cls), members in groups.items():
        table = by_split[split_name]
        cap = table.get(cls or "", table[""])
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
    `annotations` label key (hoardfs.datasets.model.annotations_from_ls: percent of original_width /
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


# -- the dry run ---------------------------------------------------------------------------------

@dataclass
class DryPlan:
    """What a build of the spec would hold, computed in the database (hoardfs.sql.datasets' dry_*): the
    same rules as `plan` — class, class map, dedup, split, caps — aggregated per split × class,
    never a Sample per node."""
    spec: DatasetSpec
    class_map: list[str]
    new_classes: list[str]
    counts: dict[str, dict[str, int]]
    samples: int
    bytes: int            # the samples' bytes (dataset.json's `bytes`)
    block_bytes: int      # the samples' files in whole blocks (zones.charge of them but the directories)
    member_bytes: int     # the samples as tar members (header + data padded to 512)
    thumbnails: dict[str, list[str]]
    selected: int
    unlabelled: int
    dropped_dup: int
    capped: int
    table: str            # the temp table of the final samples (node_id, sha256, size, cls, split_idx)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # as Plan.splits
    large_groups: list[dict[str, Any]] = field(default_factory=list)  # as Plan.large_groups


def dry_plan(conn: psycopg.Connection, spec: DatasetSpec, fmt: Format, frozen_map: list[str] | None,
             block: int = 4096) -> DryPlan:
    """The counts and bytes of `plan(conn, spec, fmt, frozen_map)` without its samples: the
    selection, classes, groups, splits, dedup and caps are computed in PostgreSQL (temp tables
    in the caller's transaction) and Python sees one row per split × class (and per label group
    with `group = "label:KEY"`). It refuses what `plan` refuses before the samples are laid out
    (the same lines): an empty selection, a label key no selected node has, a node with two
    classes, no node with the class label, a class not in the map, a pinned class without
    samples, an explicit split that is not one of the ratios. What only the build checks: each
    sample's path (hostile names, collisions, case), its file type and size for the layout, its
    annotations, that its object is still in the store (docs/datasets.md)."""
    name = spec.name
    sel = parse_selector(spec.selection())
    by_id = sel.order == "node_id" and sel.limit is None  # the selection's order is the node ids': not sorted
    query, params = selector_query(conn, sel, ordered=not by_id)
    g = spec.split.group
    parents = g == "root" or g.startswith("label:")  # the groups made of roots need each node's parent
    selected, classed = sqld.dry_select(conn, query, params, spec.class_label, parents=parents, by_id=by_id)
    if not selected:
        empty = sqld.dry_count(conn, query, params)
        raise DatasetError(f"dataset {name}: the selection is empty — " + (
            "its [selector] matches only manifests of datasets" if empty else "no node matches its [selector]")
            + "; check it with `hoard select` (nothing was written)", ExitCode.DATA)
    named = _named_keys(spec)
    have = sqld.dry_keys(conn, [k for _, k in named])
    for what, key in named:
        if key not in have:
            raise _no_key(spec, what, key, sqld.dry_all_keys(conn))
    for what, key in plain_keys(spec):
        blob = sqld.dry_json_value(conn, key, json_blob)
        if blob is not None:
            raise _json_key(spec, what, key, *blob, sqld.dry_all_keys(conn))
    if fmt.needs_class and spec.class_label is None:
        raise DatasetError(f"dataset {name}: layout {fmt.name} needs a class: set class_label to the label key that "
                           "holds it")
    if spec.class_label is not None:
        two = sqld.dry_two_classes(conn, spec.class_label)
        if two is not None:
            raise _two_classes(spec, *two)
    if not classed:
        raise _no_class(spec, selected)
    cmap, new = _class_map(spec, frozen_map, sqld.dry_found(conn), lambda c: sqld.dry_node_of(conn, c))
    splits = list(spec.split.ratios)
    near = near_dup_groups(conn, spec) if uses_near_dups(spec) else {}
    root_keys: dict[int, str] | None = None
    if g == "root" or g.startswith("label:"):
        sqld.dry_roots(conn, spec.split.ratios, spec.split.salt)
    if g.startswith("label:"):
        pairs = sqld.dry_label_pairs(conn, g[6:])
        rows: list[dict[str, Any]] = [{"node_id": i, "root_id": root, "labels": {g[6:]: [v]}}
                                      for i, (root, v) in enumerate(pairs)]
        keys = group_keys(spec, rows)  # the same union of roots and values as the build's
        root_keys = {r["root_id"]: keys[r["node_id"]] for r in rows}
    sqld.dry_groups(conn, g, near, root_keys)
    copies: list[int] = []
    if spec.dedup == "by_near_dup":  # as the build: of each group's classed members, the lowest node id stays
        seen: set[str] = set()
        for n in sqld.dry_kept_ids(conn, sorted(near)):
            if near[n] in seen:
                copies.append(n)
            seen.add(near[n])
    sizes = sqld.dry_sizes(conn, copies)
    bal = balance(spec.split.ratios, spec.split.salt, sizes)
    sqld.dry_kept(conn, bal.assign, copies)
    dropped = len(copies)
    if spec.split.field is not None:
        bad = sqld.dry_field(conn, spec.split.field, splits)
        if bad is not None:
            raise _bad_field(spec, *bad)
    realised = sqld.dry_split_counts(conn)
    check_splits(spec, bal, [realised.get(i, 0) for i in range(len(splits))], sizes)
    caps = split_caps(spec) if spec.caps or spec.max_per_class is not None else None
    table = sqld.dry_caps(conn, None if caps is None else [caps[sp] for sp in splits], spec.split.salt)
    counts: dict[str, dict[str, int]] = {s: {} for s in splits}
    first: dict[str | None, tuple[int, int]] = {}
    total = nbytes = blocks = members = 0
    for idx, cls, n, size, in_blocks, as_members in sorted(sqld.dry_counts(conn, table, block), key=lambda r: r[0]):
        counts[splits[idx]][cls or NO_CLASS] = n
        first.setdefault(cls, (idx, n))
        total, nbytes, blocks, members = total + n, nbytes + size, blocks + in_blocks, members + as_members
    got: dict[str | None, list[str]] = {}
    for cls, sha in sqld.dry_thumbnails(conn, table, THUMBNAILS, total, first):
        got.setdefault(cls, []).append(sha)
    # in build order, as Plan.thumbnails: the first split holding the class, then its index
    thumbs = {c or NO_CLASS: got[c] for c in sorted(got, key=lambda c: (first[c][0],
                                                                         cmap.index(c) if c in cmap else -1))}
    capped = classed - dropped - total
    report = check_capped(spec, bal, [sum(counts[sp].values()) for sp in splits], capped, sizes)
    return DryPlan(spec, cmap, new, {k: dict(sorted(v.items())) for k, v in counts.items()}, total, nbytes, blocks,
                   members, thumbs, selected=selected, unlabelled=selected - classed if spec.class_label else 0,
                   dropped_dup=dropped, capped=capped, table=table, splits=report,
                   large_groups=large_groups(spec, sizes))

