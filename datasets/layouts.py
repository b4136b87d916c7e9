"""Layouts: where each selected node's file goes in a staged (3C) or exported (3D) tree.

A layout is a path template over a node's fields, e.g. `{source}/{batch}/{orig_path}`,
`{sha256:2}/{sha256}{ext}` or `images/{label:class}/{sha256}{ext}`, plus options (a JSON
sidecar next to each file; one file per original path instead of one per node). The whole
plan — every node's relative path — is computed and checked before a byte moves: an
unknown field, a value that would escape the tree (`..`, an absolute path, NUL, `/` inside
a one-segment field), a missing label and two nodes mapped to one path are refused naming
the node and the field. Every path the output will hold (each file's and its sidecar's,
under the directory stage/export put them in) is held to the output contract's own rule,
`hoardfs.base.paths.hostile_reason` — the rule hoardfs.fsd.outputs.seal applies when it seals — and to the file
system's name length, so nothing the plan admits is refused after the bytes were copied.
Format and examples: docs/layouts.md.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import CONTROL, display, hostile_reason

#: one node's fields as hoardfs.sql.layout_rows returns them
Row = dict


class LayoutError(HoardError):
    """A template or layout file that cannot be used (exit 2)."""

    exit_code = ExitCode.USAGE


class PlacementError(HoardError):
    """The selected nodes cannot be laid out (a value, a missing field, a collision; exit 5)."""

    exit_code = ExitCode.DATA


#: field → (what it is, needs an argument?)
FIELDS = {
    "sha256": ("the content's sha256 (hex); {sha256:N}: its first N digits", False),
    "node_id": ("the node's id in the database", False),
    "size": ("the file's size in bytes", False),
    "ext": ("the file type with its dot ('.jpg'; '' when unknown)", False),
    "source": ("the source the node's metadata came from (else its ingest batch's)", False),
    "batch": ("the ingest batch the file came in", False),
    "orig_path": ("the file's path inside that batch (may hold '/')", False),
    "name": ("the last part of orig_path", False),
    "stem": ("name without its extension", False),
    "title": ("common metadata: title", False),
    "author": ("common metadata: author", False),
    "user_name": ("common metadata: user_name", False),
    "view_count": ("common metadata: view_count", False),
    "download_date": ("common metadata: download_time as YYYY-MM-DD", False),
    "label": ("{label:KEY}: the node's value of label KEY", True),
    "meta": ("{meta:KEY}: a scalar of the node's raw metadata", True),
}
#: fields read from a node's common metadata (`_value`)
METADATA_FIELDS = {"source", "title", "author", "user_name", "view_count", "download_date", "meta"}
#: fields whose value may hold '/' (each part is checked like a segment)
MULTI_SEGMENT = {"orig_path"}
#: fields whose values we make (hex, digits, a checked file type): nothing to check
SAFE = {"sha256", "node_id", "size"}
BUILTIN = {
    "by_sha256": "{sha256:2}/{sha256}{ext}",
    "by_batch": "{source}/{batch}/{orig_path}",
    "by_label": "{label:class}/{sha256}{ext}",
    "flat": "{sha256}{ext}",
}
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PART = re.compile(r"\{([^{}]*)\}|\{\{|\}\}|[^{}]+|[{}]")
_SPEC = re.compile(r"([a-z_0-9]+)(?::([^|]*))?(?:\|(.*))?", re.S)
MAX_SEGMENT = 255  # bytes, the usual NAME_MAX (the seal does not check it: the file system refuses a longer name)
#: what a sidecar's path adds to its file's
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class Slot:
    field: str
    arg: str | None
    default: str | None


@dataclass(frozen=True)
class Layout:
    name: str
    template: str
    sidecars: bool = False
    #: one file per original path (physical_path locator) instead of one per node
    per_locator: bool = False
    #: allow two paths that differ only in case ("A.jpg", "a.jpg"): only for outputs every
    #: consumer reads on a case-sensitive file system (a Windows or macOS worker, an SMB share
    #: or exFAT would keep one of the two)
    case_sensitive: bool = False
    parts: tuple[str | Slot, ...] = field(default=(), compare=False)

    def needs(self) -> set[str]:
        return {p.field for p in self.parts if isinstance(p, Slot)}

    def row_parts(self) -> set[str]:
        """The parts of a node's row (hoardfs.sql.layout_rows) this layout's paths and
        sidecars read: a sidecar holds them all."""
        if self.sidecars:  # (hoardfs.sql.layout_rows.PARTS: not imported here, it brings psycopg to every start)
            return {"metadata", "labels", "batch_sources"}
        needs = self.needs()
        return ({"metadata"} if needs & METADATA_FIELDS else set()) | ({"labels"} if "label" in needs else set()) \
            | ({"batch_sources"} if "source" in needs else set())


def parse(template: str, name: str = "custom", sidecars: bool = False, per_locator: bool = False,
          case_sensitive: bool = False) -> Layout:
    """A Layout from a template, or LayoutError naming what is wrong with it."""
    if not NAME.fullmatch(name):
        raise LayoutError(f"layout name {name!r}: use 1-64 of a-z 0-9 _ - (starting with a letter or digit)")
    if not template or template.startswith("/"):
        raise LayoutError(f"layout {name}: the template {template!r} must be a relative path")
    if CONTROL.search(template):
        raise LayoutError(f"layout {name}: the template holds a control character ({display(template)})")
    parts: list[str | Slot] = []
    for m in _PART.finditer(template):
        text = m.group(0)
        if text in ("{{", "}}"):
            parts.append(text[0])
        elif text in ("{", "}"):
            raise LayoutError(f"layout {name}: unmatched {text!r} in {template!r} (write {text * 2} for the "
                              "character itself)")
        elif m.group(1) is not None:
            parts.append(_slot(name, m.group(1)))
        else:
            parts.append(text)
    if not any(isinstance(p, Slot) for p in parts):
        raise LayoutError(f"layout {name}: the template {template!r} names no field: every node would get the "
                          "same path")
    # the template's own text, each field standing for a one-character value: a '.' or empty
    # part here ('./x', 'a//x', 'x/') is in every path, not the fault of a node's value
    skeleton = "".join(p if isinstance(p, str) else "x" for p in parts)
    for seg in skeleton.split("/"):
        if seg == "..":
            raise LayoutError(f"layout {name}: '..' in the template would leave the output directory")
        if seg in ("", "."):
            raise LayoutError(f"layout {name}: the template {template!r} has an empty or '.' part (a leading "
                              "'./', a '//' or a trailing '/'); write it as a/b/{sha256}")
    why = hostile_reason(skeleton)
    if why:
        raise LayoutError(f"layout {name}: the template {template!r} cannot give an accepted path: {why}")
    return Layout(name, template, sidecars, per_locator, case_sensitive, tuple(parts))


def _slot(name: str, spec: str) -> Slot:
    m = _SPEC.fullmatch(spec)
    if m is None or m.group(1) not in FIELDS:
        known = ", ".join(FIELDS)
        raise LayoutError(f"layout {name}: unknown field {{{spec}}}; known fields: {known} (docs/layouts.md)")
    fld, arg, default = m.group(1), m.group(2), m.group(3)
    if FIELDS[fld][1] and not arg:
        raise LayoutError(f"layout {name}: {{{fld}}} needs a key, e.g. {{{fld}:class}}")
    if fld == "sha256" and arg is not None and not (arg.isdigit() and 1 <= int(arg) <= 64):
        raise LayoutError(f"layout {name}: {{sha256:{arg}}}: the prefix length must be 1-64")
    if not FIELDS[fld][1] and fld != "sha256" and arg is not None:
        raise LayoutError(f"layout {name}: {{{fld}}} takes no argument (got {arg!r})")
    if default is not None:
        _check_value(default, f"the default of {{{spec}}}", lambda why: LayoutError(f"layout {name}: {why}"))
    return Slot(fld, arg, default)


#: a layout file's true/false options (Layout's fields of the same names)
FLAGS = ("sidecars", "per_locator", "case_sensitive")


def load(spec: str) -> Layout:
    """A built-in layout by name, or a TOML file: `template = "…"`, optional `sidecars`,
    `per_locator`, `case_sensitive` (the file's stem is the layout's name)."""
    if spec in BUILTIN:
        return parse(BUILTIN[spec], spec)
    path = Path(spec)
    if not path.suffix == ".toml":
        raise LayoutError(f"layout {spec!r}: not a built-in ({', '.join(BUILTIN)}) nor a .toml file")
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"layout file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise LayoutError(f"layout file {path}: {e}") from None
    extra = set(doc) - {"template", *FLAGS}
    if extra or not isinstance(doc.get("template"), str):
        raise LayoutError(f"layout file {path}: needs `template = \"...\"` (and optionally `sidecars`, "
                          f"`per_locator`, `case_sensitive` = true/false)"
                          f"{'; unknown keys: ' + ', '.join(sorted(extra)) if extra else ''}")
    flags = {k: doc.get(k, False) for k in FLAGS}
    if any(not isinstance(v, bool) for v in flags.values()):
        raise LayoutError(f"layout file {path}: {', '.join(FLAGS)} are true or false")
    return parse(doc["template"], path.stem, **flags)


# -- placing nodes --------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    path: str  # relative, '/'-separated
    node_id: int
    sha256: str
    size: int
    sidecar: bytes | None = None  # the JSON written at path + ".json"
    #: the ingest batch and the path inside it the place was rendered from (a stage's files
    #: beside each input are rendered from the same: hoardfs.datasets.stagefiles)
    batch: str | None = field(default=None, compare=False)
    rel: str | None = field(default=None, compare=False)


def _check_value(value: str, what: str | tuple[Row, Slot], error: Callable[[str], Exception],
                 multi: bool = False) -> None:
    """Refuse a value that would escape or reshape the tree, or that the output contract
    refuses (`hostile_reason`, as the seal applies it); `what` names it (a string, or (row,
    slot): the message is built only for a refusal)."""
    why = hostile_reason(value)
    if why is not None or (not multi and "/" in value):
        _refuse(value, f"{_who(what[0])}: {_label(what[1])}" if isinstance(what, tuple) else what, error, multi,
                why)


def _refuse(value: str, what: str, error: Callable[[str], Exception], multi: bool, why: str | None) -> None:
    if CONTROL.search(value):
        raise error(f"{what} holds a control character ({display(value)}); narrow the selector or use a template "
                    "without this field")
    if not multi and "/" in value:
        raise error(f"{what} is {value!r}: a '/' would make it a directory; pick another field or a template "
                    "that does not use it")
    for seg in value.split("/"):
        if seg in (".", ".."):
            raise error(f"{what} is {value!r}: '{seg}' would leave the output directory")
    if multi and (value.startswith("/") or value.endswith("/") or "//" in value):
        raise error(f"{what} is {value!r}: an absolute path or an empty part")
    raise error(f"{what} is {_short(value)}: {why}; narrow the selector or use a template without this field")


def _short(value: str) -> str:
    return repr(value) if len(value) <= 60 else f"'{display(value[:40])}…' ({len(value.encode())} bytes)"


def _locators(row: Row) -> list[tuple[str | None, str | None]]:
    """(batch, path inside it) per physical_path locator `batch:<id>/<rel>`, sorted."""
    out = []
    locs = row.get("locators") or []
    for loc in sorted(locs) if len(locs) > 1 else locs:
        if loc.startswith("batch:") and "/" in loc:
            batch, rel = loc[len("batch:"):].split("/", 1)
            out.append((batch, rel))
    return out or [(None, None)]


def _value(slot: Slot, row: Row, batch: str | None, rel: str | None) -> str | None:
    f = slot.field
    if f == "sha256":
        return row["sha256"][:int(slot.arg)] if slot.arg else row["sha256"]
    if f in ("node_id", "size"):
        return str(row[f])
    if f == "ext":
        ext = row.get("file_type") or (PurePosixPath(rel).suffix[1:].lower() if rel else "")
        return f".{ext}" if ext else ""
    if f == "batch":
        return batch
    if f == "source":  # the metadata's source; a file nothing describes has its batch's
        return row.get("source") or (row.get("batch_sources") or {}).get(batch)
    if f == "orig_path":
        return rel
    if f == "name":
        return PurePosixPath(rel).name if rel else None
    if f == "stem":
        return PurePosixPath(rel).stem if rel else None
    if f == "download_date":
        t = row.get("download_time")
        return t.date().isoformat() if t is not None else None
    if f == "label":
        values = (row.get("labels") or {}).get(slot.arg) or []
        if len(values) > 1:
            raise PlacementError(f"node {row['node_id']} ({row['sha256'][:12]}…) has {len(values)} values of label "
                                 f"{slot.arg!r} ({', '.join(values[:5])}); the layout needs one — narrow the "
                                 "selector or use another field")
        return values[0] if values else None
    if f == "meta":
        v = (row.get("raw_metadata") or {}).get(slot.arg)
        if isinstance(v, (dict, list)):
            raise PlacementError(f"node {row['node_id']} ({row['sha256'][:12]}…): raw metadata {slot.arg!r} is "
                                 "not a single value; a layout can use only strings and numbers")
        return None if v is None else str(v)
    v = row.get(f)
    return None if v is None else str(v)


def root(layout: Layout) -> str:
    """The deepest directory stage/export put a layout's tree under in their output (a
    stage's `<name>/input/`; an export's `<name>/` is shorter): `plan` checks every path with
    it in front, so the output contract's length limit holds for both."""
    return f"{layout.name}/input/"


def render(layout: Layout, row: Row, batch: str | None = None, rel: str | None = None,
           prefix: str | None = None, accepted: set[str] | None = None) -> str:
    """One node's relative path, or PlacementError naming the node and the field. The path
    (and its sidecar's) must pass the output contract's rule below `prefix` (`root(layout)`
    when None) — the seal would refuse it after the copy otherwise. `accepted`: one-segment
    values already checked (a plan's nodes share a few sources, batches, labels), added to."""
    out = []
    spans: list[tuple[Slot, int, int]] = []  # where each field's value lies in the path
    at = 0
    for part in layout.parts:
        if isinstance(part, str):
            out.append(part)
            at += len(part)
            continue
        value = _value(part, row, batch, rel)
        if value is None or value == "":
            if part.default is None:
                if part.field == "ext":
                    continue
                raise PlacementError(f"{_who(row)} has no {_label(part)}; layout {layout.name} needs it — give a "
                                     f"default ({{{_label(part)}|unknown}}) or narrow the selector")
            value = part.default
        if part.field in MULTI_SEGMENT:
            _check_value(value, (row, part), PlacementError, True)
        elif part.field not in SAFE and (accepted is None or value not in accepted):
            _check_value(value, (row, part), PlacementError)  # (a one-segment value is refused by any node)
            if accepted is not None:
                accepted.add(value)
        out.append(value)
        spans.append((part, at, at + len(value)))
        at += len(value)
    path = "".join(out)
    prefix = root(layout) if prefix is None else prefix
    for each in (path, path + SIDECAR_SUFFIX) if layout.sidecars else (path,):
        _check_path(layout, row, each, each is not path, spans, prefix)
    return path


def _check_path(layout: Layout, row: Row, path: str, is_sidecar: bool, spans: list[tuple[Slot, int, int]],
                prefix: str) -> None:
    why = hostile_reason(prefix + path)
    if why is None and len(path) * 4 <= MAX_SEGMENT:
        # what the loop below refuses, the rule refuses too (an empty, '.' or '..' part), but
        # a name over MAX_SEGMENT bytes, which a path this short cannot hold: nothing to say
        return
    what = f"{_who(row)}: layout {layout.name} gives {'the sidecar ' if is_sidecar else ''}"
    start = 0
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise PlacementError(f"{what}{path!r}, which has an empty, '.' or '..' part; a field is empty — give it "
                                 "a default")
        if len(seg) > MAX_SEGMENT // 4 and len(seg.encode()) > MAX_SEGMENT:
            raise PlacementError(f"{what}a name of {len(seg.encode())} bytes (at most {MAX_SEGMENT}, the file "
                                 f"system's limit): '{display(seg[:40])}…'{_widest(spans, start, start + len(seg))}")
        start += len(seg) + 1
    if why is not None:
        raise PlacementError(f"{what}'{display(path[:40])}…' (in the output: {prefix}…), which the output contract "
                             f"refuses: {why}{_widest(spans, 0, len(path))}")


def _widest(spans: list[tuple[Slot, int, int]], start: int, end: int) -> str:
    """The message's next step: the field that takes most of path[start:end]."""
    inside = [(min(e, end) - max(s, start), slot) for slot, s, e in spans if min(e, end) > max(s, start)]
    if not inside:
        return "; shorten the template"
    n, slot = max(inside, key=lambda t: t[0])
    if sum(k for k, _ in inside) * 2 < end - start:  # mostly the template's own text
        return f"; most of it is the template's own text ({end - start - sum(k for k, _ in inside)} characters): shorten it"
    return (f"; its longest field is {{{_label(slot)}}} ({n} characters) — use a shorter field (e.g. {{sha256}}) "
            "or fewer of them, or narrow the selector")


def _who(row: Row) -> str:
    return f"node {row['node_id']} ({row['sha256'][:12]}…)"


def _label(slot: Slot) -> str:
    return f"{slot.field}:{slot.arg}" if slot.arg and slot.field != "sha256" else slot.field


def sidecar(row: Row, batch: str | None, rel: str | None) -> bytes:
    doc = {"sha256": row["sha256"], "node_id": row["node_id"], "size": row["size"], "file_type": row.get("file_type"),
           "source": row.get("source"), "batch": batch, "orig_path": rel,
           "metadata": {k: row.get(k) for k in ("title", "author", "user_name", "view_count")} |
           {"download_time": row["download_time"].isoformat() if row.get("download_time") else None,
            "raw": row.get("raw_metadata")},
           "labels": row.get("labels") or {}}
    return (json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode()


def _places(layout: Layout, row: Row, batches: Collection[str]) -> list[tuple[str | None, str | None]]:
    """The original paths a node is placed under: every one with `per_locator`; otherwise
    those in the selected `batches` (a stage of one batch uses that batch's paths), or when
    it is in none of them, those in the first batch that has it — all of that batch's paths,
    so a file a batch holds twice is placed twice (where the template tells them apart)."""
    locs = _locators(row)
    if layout.per_locator:
        return locs
    return [loc for loc in locs if loc[0] in batches] or [loc for loc in locs if loc[0] == locs[0][0]]


def plan(layout: Layout, rows: Iterable[Row], prefix: str | None = None,
         batches: Collection[str] = ()) -> list[Placement]:
    """Every file's place, sorted by path (see `_places`: `batches` are those the selection
    named); PlacementError (naming both nodes) if two files would share a path, or a file's
    path is another file's directory; PlacementError naming the node and the field if a path
    (below `prefix`, see `render`) is one the seal refuses."""
    placed: dict[str, Placement] = {}
    folded: dict[str, str] = {}  # _fold(path) → the path that has it (unless case_sensitive)
    accepted: set[str] = set()
    prefix = root(layout) if prefix is None else prefix
    for row in rows:
        mine: set[str] = set()
        for batch, rel in _places(layout, row, batches):
            path = render(layout, row, batch, rel, prefix, accepted)
            if path in mine and not layout.per_locator:
                continue  # the same bytes on the same path: a template without {orig_path} folds a node's paths
            mine.add(path)
            car = sidecar(row, batch, rel) if layout.sidecars else None
            p = Placement(path, row["node_id"], row["sha256"], row["size"], car, batch, rel)
            for taken in (path, path + SIDECAR_SUFFIX) if car is not None else (path,):
                other = placed.get(taken)
                if other is not None:
                    _collide(layout, taken, other, p)
                if not layout.case_sensitive:
                    twin = folded.setdefault(_fold(taken), taken)
                    if twin != taken:
                        _collide_case(layout, twin, placed[twin], taken, p)
                placed[taken] = p
    _no_file_is_a_directory(layout, placed)
    # a Placement is in `placed` twice (its file and its sidecar) only with sidecars
    unique = {id(p): p for p in placed.values()}.values() if layout.sidecars else placed.values()
    return sorted(unique, key=lambda p: p.path)


def _collide(layout: Layout, path: str, a: Placement, b: Placement) -> None:
    if a.node_id == b.node_id:
        raise PlacementError(f"node {a.node_id} ({a.sha256[:12]}…) comes twice to {path!r} in layout "
                             f"{layout.name} (two original paths): add {{batch}} or {{orig_path}} to the template")
    raise PlacementError(f"nodes {a.node_id} ({a.sha256[:12]}…) and {b.node_id} ({b.sha256[:12]}…) both map to "
                         f"{path!r} in layout {layout.name}: add {{sha256}} (or another field that tells them "
                         "apart) to the template")


def _fold(path: str) -> str:
    """What a case-insensitive file system compares: case (lower(): NTFS and APFS fold single
    characters, so "Straße" and "STRASSE" stay two names) and, for APFS/HFS+, the Unicode
    normalisation (an "é" composed or not)."""
    return path.lower() if path.isascii() else unicodedata.normalize("NFC", path).lower()


def _collide_case(layout: Layout, path_a: str, a: Placement, path_b: str, b: Placement) -> None:
    if a.node_id == b.node_id:
        raise PlacementError(f"node {a.node_id} ({a.sha256[:12]}…) comes twice, to {display(path_a)!r} and "
                             f"{display(path_b)!r}, in layout {layout.name}: they differ only in case or accents, "
                             "which a case-insensitive consumer keeps as one — add {batch} to the template, or set "
                             "`case_sensitive = true` in the layout file if every consumer reads it on Linux")
    raise PlacementError(f"node {a.node_id} ({a.sha256[:12]}…) maps to {display(path_a)!r} and node {b.node_id} "
                         f"({b.sha256[:12]}…) to {display(path_b)!r} in layout {layout.name}: they differ only in "
                         "case or accents, and a case-insensitive consumer (a Windows or macOS worker, an SMB share, exFAT) "
                         "would keep one of the two — add {sha256} to the template, or set `case_sensitive = true` "
                         "in the layout file if every consumer reads it on Linux")


def _no_file_is_a_directory(layout: Layout, placed: dict[str, Placement]) -> None:
    dirs: set[str] = set()  # every path's directories, each walked up once
    for path in placed:
        parent = path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    if dirs.isdisjoint(placed):
        return
    for path in placed:  # (rare) name a file and a path below it
        above = path.rsplit("/", 1)[0] if "/" in path else None
        while above:
            other = placed.get(above)
            if other is not None:
                raise PlacementError(f"{above!r} is the file of node {other.node_id} and a directory holding "
                                     f"{path!r} in layout {layout.name}: make the template end every path at the "
                                     "same depth")
            above = above.rsplit("/", 1)[0] if "/" in above else None


def describe() -> Iterator[str]:
    """Lines for `--help`-like listings: the fields and the built-in layouts."""
    for f, (what, _) in FIELDS.items():
        yield f"{{{f}}}  {what}"
    for name, tpl in BUILTIN.items():
        yield f"{name}: {tpl}"
