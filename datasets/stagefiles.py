"""Files a stage writes beside its inputs, for workers with a fixed folder contract.

An action's `[stage_layout]` places each input by its template (hoardfs.datasets.layouts); the
keys read here add what such a worker reads besides the files themselves:

* `index`: files in the input root listing the staged inputs, one row each — CSV (a header
  and the columns), JSON Lines, JSON (a list) or a plain list of paths — whose columns are
  value templates over the input (`{sha256}`, `{path}`, `{stem}`, `{size}`, `{kind}`), its
  metadata (`{meta.title}`, `{meta.<raw key>}`), its labels (`{label.KEY}`, `{labels}`) and its
  parents' and children's staged paths (`{parents}`, `{children}`);
* `parent_template`, `meta_template`: a folder per input — the input's parent file and a JSON
  of the input's fields placed by path templates over the input (`{stem}/parent{ext}`,
  `{stem}/meta.json`);
* `labels`: label files from stored labels — YOLO txt per input, one COCO JSON, a JSON per input;
* `convert`: the inputs (and parents) converted to one image format on stage (Pillow).

Every value here may come from scraped metadata and is hostile: a CSV cell never starts a
formula (`csv_cell`), JSON is written by `json.dumps`, and a value only becomes a path through
a layout template, whose every value passes `hoardfs.base.paths.hostile_reason`. A template
that ends in a fixed extension stages only bytes of that type (`sniff`), unless `convert` makes
them so. Format and examples: docs/layouts.md, "Files for a worker's folder contract".

Nothing here reads the database or the store: hoardfs.jobs.outputs gathers the rows, the
placements and the bytes, and writes what `build` returns.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from hoardfs.base.paths import CONTROL, hostile_reason
from hoardfs.datasets import layouts
from hoardfs.datasets.layouts import Layout, PlacementError

_strict = ConfigDict(extra="forbid")

#: the file formats `convert` writes (Pillow's names) and the extension each is staged with
CONVERT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: the same type under another extension
SAME_TYPE = {"jpeg": "jpg", "jpe": "jpg", "tiff": "tif"}
#: leading bytes → the type they start
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"II*\x00", "tif"), (b"MM\x00*", "tif"), (b"BM", "bmp"))
#: the types `sniff` knows: a template ending in one of them stages only bytes of that type
KNOWN = frozenset({"jpg", "png", "gif", "tif", "bmp", "webp"})

#: the value fields of an index column or a path list line (besides meta.KEY and label.KEY)
VALUE_FIELDS = {
    "sha256": "the content's sha256 (hex)",
    "node_id": "the node's id in the database",
    "path": "the staged file's path, relative to the input root",
    "name": "the staged file's name",
    "stem": "the staged file's name without its extension (the output parser's `stem`)",
    "ext": "the staged file's extension with its dot",
    "size": "the staged file's size in bytes",
    "kind": "the node's file type (png, jpg, mp4 …; '' when unknown)",
    "orig_path": "the file's path inside the ingest batch it is staged from",
    "batch": "that ingest batch",
    "source": "the source its metadata came from",
    "labels": "every label of the node: {KEY: [values]} (text: KEY=VALUE;…)",
    "parents": "the staged paths of its parents, relative to the input root",
    "children": "the staged paths of its children, relative to the input root",
    "parent": "the staged path of its first parent (by path), '' when none",
}
#: common metadata `{meta.NAME}` reads from the node's common record (other names: raw metadata)
COMMON = ("title", "author", "user_name", "view_count", "download_time", "source")
#: fields whose value is a whole number (kept a number in JSON)
_NUMBERS = {"node_id", "size"}
_SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_KEY = re.compile(r"[A-Za-z0-9_:.\-]{1,200}")
#: a CSV cell starting with one of these is a formula to a spreadsheet (OWASP "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")

Template = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


def csv_cell(text: str) -> str:
    """A CSV cell that no spreadsheet runs: text starting with `=`, `+`, `-`, `@`, a tab or a
    carriage return gets a leading `'` (OWASP's rule for CSV injection; the csv writer quotes
    it where needed). A plain number (`-5`, `1.5e3`) is left as it is: it is data, not a formula."""
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def sniff(head: bytes) -> str | None:
    """The image type the bytes start (jpg, png, gif, tif, bmp, webp), None for anything else."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def same_type(ext: str) -> str:
    """An extension (without its dot) as the type `sniff` names: jpeg → jpg, tiff → tif."""
    ext = ext.lower()
    return SAME_TYPE.get(ext, ext)


def literal_ext(layout: Layout) -> str | None:
    """The extension a template fixes in its own text (`images/{stem}.png` → "png"), None when
    its file name ends in a field (`{sha256}{ext}`)."""
    last = layout.parts[-1] if layout.parts else None
    if not isinstance(last, str) or "/" in last or "." not in last:
        return None
    ext = last.rpartition(".")[2]
    return same_type(ext) if re.fullmatch(r"[A-Za-z0-9]{1,10}", ext) else None


# -- the contract's keys --------------------------------------------------------------------------

@dataclass(frozen=True)
class ValueSlot:
    field: str      # a VALUE_FIELDS name, "meta" or "label"
    key: str = ""   # meta.KEY / label.KEY


def parse_value_template(text: str) -> tuple[str | ValueSlot, ...]:
    """A value template's parts (text and fields), or ValueError naming what is wrong."""
    if CONTROL.search(text.replace("\t", "")):
        raise ValueError("the template holds a control character")
    out: list[str | ValueSlot] = []
    at = 0
    for m in _SLOT.finditer(text):
        if m.start() > at:
            out.append(text[at:m.start()])
        tok = m.group(0)
        if tok in ("{", "}"):
            raise ValueError(f"unmatched {tok!r} in {text!r} (write {tok * 2} for the character itself)")
        out.append(tok[0] if tok in ("{{", "}}") else _value_slot(m.group(1)))
        at = m.end()
    if at < len(text):
        out.append(text[at:])
    merged: list[str | ValueSlot] = []
    for p in out:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + p
        else:
            merged.append(p)
    return tuple(merged)


def _value_slot(spec: str) -> ValueSlot:
    name, dot, key = spec.partition(".")
    if name in ("meta", "label"):
        if not dot or not _KEY.fullmatch(key):
            raise ValueError(f"{{{spec}}}: {name} needs a key, e.g. {{{name}.{'title' if name == 'meta' else 'class'}}}")
        return ValueSlot(name, key)
    if dot or name not in VALUE_FIELDS:
        raise ValueError(f"unknown field {{{spec}}}; known: {', '.join('{' + f + '}' for f in VALUE_FIELDS)}, "
                         "{meta.KEY}, {label.KEY} (docs/layouts.md)")
    return ValueSlot(name)


def _fixed_path(value: str) -> str:
    """A path of the input root the contract fixes (an index file, a COCO file, a class list)."""
    why = hostile_reason(value)
    if "{" in value or "}" in value:
        raise ValueError(f"{value!r} is a fixed path: it takes no field")
    if why is not None:
        raise ValueError(f"{value!r} cannot be a path in the input root: {why}")
    return value


FixedPath = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class IndexFile(BaseModel):
    """One file listing every staged input: `columns` = {header: value template}."""

    model_config = _strict
    path: FixedPath
    format: Literal["csv", "jsonl", "json", "paths"]
    #: csv/jsonl/json: the columns, in order; a template that is one field alone keeps that
    #: field's type in JSON (a number, a list, an object)
    columns: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], Template] = {}
    #: paths: each line's template
    line: Template = "{path}"
    #: csv: write the header row
    header: bool = True

    @model_validator(mode="after")
    def _fits(self) -> IndexFile:
        _fixed_path(self.path)
        if self.format == "paths":
            if self.columns:
                raise ValueError("format \"paths\" writes one `line` per input; remove `columns`")
            parse_value_template(self.line)
            if any(isinstance(p, ValueSlot) and p.field in ("parents", "children", "labels")
                   for p in parse_value_template(self.line)):
                raise ValueError("a `line` holds one value per input: {parents}, {children}, {labels} are lists")
        else:
            if not self.columns:
                raise ValueError(f"format {self.format!r} needs `columns` = {{ name = \"{{stem}}\", … }}")
            if self.line != "{path}":
                raise ValueError("`line` goes with format \"paths\"; the others have `columns`")
            for name, tpl in self.columns.items():
                if CONTROL.search(name):
                    raise ValueError(f"column {name!r} holds a control character")
                try:
                    parse_value_template(tpl)
                except ValueError as e:
                    raise ValueError(f"column {name!r}: {e}") from None
        if self.format != "csv" and not self.header:
            raise ValueError("`header` goes with format \"csv\"")
        return self


class LabelFiles(BaseModel):
    """Label files from the inputs' stored labels, in the format the worker reads."""

    model_config = _strict
    format: Literal["yolo", "coco", "json"]
    #: yolo, json: a path template per input (docs/layouts.md's fields: "labels/{stem}.txt");
    #: coco: the one file's path ("annotations.json")
    path: Template
    #: the label key whose values are boxes (yolo, coco: required; Label Studio's rectangles,
    #: `ls:<name>`); json: the keys written (none: all of the node's labels)
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    keys: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = []
    #: yolo, coco: the class names, their ids by position (none: the names found, sorted)
    classes: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = []
    #: yolo: also write the class names, one a line, here ("classes.txt")
    classes_path: FixedPath | None = None

    @model_validator(mode="after")
    def _fits(self) -> LabelFiles:
        if self.format in ("yolo", "coco") and not self.key:
            raise ValueError(f"format {self.format!r} needs `key`: the label key holding the boxes (e.g. \"ls:box\")")
        if self.format != "json" and self.keys:
            raise ValueError("`keys` goes with format \"json\"; yolo and coco read the boxes of `key`")
        if self.format == "json" and self.key:
            raise ValueError("format \"json\" writes the labels of `keys` (none: all of them); remove `key`")
        if self.format == "coco":
            _fixed_path(self.path)
        else:
            try:
                layouts.parse(self.path, "stage")
            except layouts.LayoutError as e:
                raise ValueError(e.message.removeprefix("layout stage: ")) from None
        if self.classes_path is not None:
            if self.format != "yolo":
                raise ValueError("`classes_path` goes with format \"yolo\"")
            _fixed_path(self.classes_path)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("`classes` names a class twice")
        return self


class StageFiles(BaseModel):
    """The `[stage_layout]` keys that add files beside the staged inputs (docs/layouts.md)."""

    model_config = _strict
    #: stage every input (and parent) as this image type: bytes of another type are converted
    convert: Literal["jpg", "png", "webp"] | None = None
    #: each input's parent (one edge up, physical, not hidden) placed by this template over the
    #: INPUT's fields, `{ext}` being the parent's: "{stem}/parent{ext}"
    parent_template: Template | None = None
    #: a JSON of each input's fields, metadata, labels, parents and children: "{stem}/meta.json"
    meta_template: Template | None = None
    index: list[IndexFile] = []
    labels: list[LabelFiles] = []

    @model_validator(mode="after")
    def _templates(self) -> StageFiles:
        for key in ("parent_template", "meta_template"):
            tpl = getattr(self, key)
            if tpl is not None:
                try:
                    layouts.parse(tpl, "stage")
                except layouts.LayoutError as e:
                    raise ValueError(f"{key}: " + e.message.removeprefix("layout stage: ")) from None
        if self.convert and self.parent_template:
            lit = literal_ext(layouts.parse(self.parent_template, "stage"))
            if lit is not None and lit != self.convert:
                raise ValueError(f"parent_template ends in .{lit} but convert = {self.convert!r}: end it in "
                                 f".{self.convert} or {{ext}}")
        return self

    def used(self) -> bool:
        return bool(self.convert or self.parent_template or self.meta_template or self.index or self.labels)

    def uses(self, name: str) -> bool:
        """Whether a value template (an index's column or line) names field `name`."""
        tpls = [t for ix in self.index for t in (*ix.columns.values(), ix.line)]
        return any(isinstance(p, ValueSlot) and p.field == name for t in tpls for p in parse_value_template(t))


FIELDS_OF_STAGE = tuple(StageFiles.model_fields)


# -- building the files ---------------------------------------------------------------------------

@dataclass
class Staged:
    """One staged input: its row (hoardfs.sql.layout_rows), where it lies (relative to the input
    root), the batch and original path its place was rendered from, and its parents' and
    children's staged paths (relative to the input root)."""

    row: dict[str, Any]
    path: str
    batch: str | None = None
    rel: str | None = None
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


def _meta(row: dict[str, Any], key: str) -> Any:
    if key in COMMON:
        common: Any = row.get(key)
        return common.isoformat() if hasattr(common, "isoformat") else common
    specific = row.get("specific") or {}
    if key in specific:  # the source's own fields, nested ones flat: {meta.user.name}
        return specific[key]
    v: Any = row.get("raw_metadata") or {}
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def value_of(slot: ValueSlot, s: Staged) -> Any:
    """One field's value for one staged input (typed: a number, a list, an object or text)."""
    row, f = s.row, slot.field
    name = s.path.rpartition("/")[2]
    if f == "sha256":
        return row["sha256"]
    if f in _NUMBERS:
        return int(row[f])
    if f == "path":
        return s.path
    if f == "name":
        return name
    if f == "stem":
        return name.rpartition(".")[0] if "." in name.lstrip(".") else name
    if f == "ext":
        return "." + name.rpartition(".")[2] if "." in name.lstrip(".") else ""
    if f == "kind":
        return row.get("file_type") or ""
    if f == "orig_path":
        return s.rel or ""
    if f == "batch":
        return s.batch or ""
    if f == "source":
        return row.get("source") or (row.get("batch_sources") or {}).get(s.batch) or ""
    if f == "labels":
        return dict(row.get("labels") or {})
    if f == "parents":
        return list(s.parents)
    if f == "children":
        return list(s.children)
    if f == "parent":
        return s.parents[0] if s.parents else ""
    if f == "meta":
        return _meta(row, slot.key)
    if f == "label":
        return list((row.get("labels") or {}).get(slot.key) or [])
    raise AssertionError(f)  # parse_value_template admits no other


def _text(v: Any) -> str:
    """A value inside text: a list joined by `;`, an object as JSON, none as ''."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ";".join(_text(x) for x in v)
    if isinstance(v, dict):
        if all(isinstance(x, list) for x in v.values()):  # labels: KEY=VALUE;…
            return ";".join(f"{k}={x}" for k, xs in sorted(v.items()) for x in xs)
        return json.dumps(v, sort_keys=True, ensure_ascii=False)
    return str(v)


def render_value(parts: Sequence[str | ValueSlot], s: Staged, typed: bool) -> Any:
    """A template's value for one input: `typed` and one field alone → that field's value as it
    is (a number stays a number in JSON); else the text."""
    if typed and len(parts) == 1 and isinstance(parts[0], ValueSlot):
        v = value_of(parts[0], s)
        return v[0] if parts[0].field == "label" and len(v) == 1 else (None if v == [] and parts[0].field == "label"
                                                                         else v)
    return "".join(p if isinstance(p, str) else _text(value_of(p, s)) for p in parts)


def index_bytes(ix: IndexFile, staged: Sequence[Staged]) -> bytes:
    """One index file's bytes."""
    if ix.format == "paths":
        parts = parse_value_template(ix.line)
        lines = [render_value(parts, s, False) for s in staged]
        for s, line in zip(staged, lines, strict=True):
            if "\n" in line or "\r" in line or CONTROL.search(line.replace("\t", "")):
                # a value from the web would split one input's line in two, or hide in a terminal
                raise PlacementError(f"node {s.row['node_id']} ({s.row['sha256'][:12]}…): the line of index {ix.path} "
                                     f"holds a line break or control character from its metadata ({_short(line)}); "
                                     "use format \"jsonl\" or \"csv\" for such values, or leave the field out")
        return "".join(line + "\n" for line in lines).encode()
    cols = [(name, parse_value_template(tpl)) for name, tpl in ix.columns.items()]
    if ix.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if ix.header:
            w.writerow([csv_cell(name) for name, _ in cols])
        for s in staged:
            w.writerow([csv_cell(render_value(parts, s, False)) for _, parts in cols])
        return buf.getvalue().encode()
    rows = [{name: render_value(parts, s, True) for name, parts in cols} for s in staged]
    if ix.format == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    return (json.dumps(rows, ensure_ascii=False, indent=1) + "\n").encode()


def meta_doc(s: Staged) -> dict[str, Any]:
    """What `meta_template` writes for one input."""
    row = s.row
    return {"sha256": row["sha256"], "node_id": row["node_id"], "path": s.path, "size": row["size"],
            "kind": row.get("file_type"), "source": value_of(ValueSlot("source"), s), "batch": s.batch,
            "orig_path": s.rel,
            "metadata": {k: _meta(row, k) for k in COMMON if k != "source"} | {"raw": row.get("raw_metadata"),
                                                                               "specific": row.get("specific")},
            "labels": row.get("labels") or {}, "parents": s.parents, "children": s.children}


# -- boxes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    label: str
    x: float  # pixels, top left
    y: float
    w: float
    h: float


def boxes_of(s: Staged, key: str, size: Callable[[], tuple[int, int]]) -> list[Box]:
    """The boxes label `key` holds for one input: Label Studio's rectangles (percent of the image,
    `original_width`/`original_height` beside them, else the image's own size) — what an AC5 run
    stores. A value that is no rectangle is refused, naming the node."""
    out = []
    for raw in sorted((s.row.get("labels") or {}).get(key) or []):
        try:
            doc = json.loads(raw)
            v = doc["value"]
            names = v.get("rectanglelabels") or v.get("labels") or []
            x, y, w, h = (float(v[k]) for k in ("x", "y", "width", "height"))
            ow, oh = (int(doc["original_width"]), int(doc["original_height"])) if "original_width" in doc else size()
            if not names or not isinstance(names[0], str):
                raise ValueError("no class")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PlacementError(f"node {s.row['node_id']} ({s.row['sha256'][:12]}…): label {key!r} = "
                                 f"{_short(raw)} is not a rectangle (Label Studio's rectanglelabels JSON); take it off "
                                 f"(`hoard label rm {key}`) or stage another key") from None
        out.append(Box(names[0], x * ow / 100, y * oh / 100, w * ow / 100, h * oh / 100))
    return out


def _short(raw: str) -> str:
    return repr(raw[:60] + "…") if len(raw) > 60 else repr(raw)


def class_ids(lf: LabelFiles, found: dict[str, list[Box]], staged: Sequence[Staged]) -> dict[str, int]:
    names = lf.classes or sorted({b.label for bs in found.values() for b in bs})
    ids = {n: i for i, n in enumerate(names)}
    for s in staged:
        for b in found[s.row["sha256"]]:
            if b.label not in ids:
                raise PlacementError(f"node {s.row['node_id']} ({s.row['sha256'][:12]}…) has a box of class "
                                     f"{_short(b.label)} that stage_layout.labels.classes does not list; add it there")
    return ids


def label_files(lf: LabelFiles, staged: Sequence[Staged], per_input_path: Callable[[Staged], str],
                size_of: Callable[[str], tuple[int, int]]) -> list[tuple[str, bytes]]:
    """The files of one `[[stage_layout.labels]]`: (path relative to the input root, bytes)."""
    if lf.format == "json":
        out = []
        for s in staged:
            labels = s.row.get("labels") or {}
            doc = {"sha256": s.row["sha256"], "path": s.path,
                   "labels": {k: v for k, v in sorted(labels.items()) if not lf.keys or k in lf.keys}}
            out.append((per_input_path(s), (json.dumps(doc, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode()))
        return out
    assert lf.key is not None  # LabelFiles._fits: yolo and coco have one
    sizes: dict[str, tuple[int, int]] = {}

    def size(s: Staged) -> tuple[int, int]:
        sha = s.row["sha256"]
        if sha not in sizes:
            sizes[sha] = size_of(sha)
        return sizes[sha]

    found = {s.row["sha256"]: boxes_of(s, lf.key, lambda s=s: size(s)) for s in staged}  # type: ignore[misc]
    ids = class_ids(lf, found, staged)
    if lf.format == "yolo":
        out = []
        for s in staged:
            boxes = found[s.row["sha256"]]
            w, h = size(s) if boxes else (1, 1)
            lines = [f"{ids[b.label]} {(b.x + b.w / 2) / w:.6f} {(b.y + b.h / 2) / h:.6f} {b.w / w:.6f} {b.h / h:.6f}\n"
                     for b in boxes]
            out.append((per_input_path(s), "".join(lines).encode()))
        if lf.classes_path:
            out.append((lf.classes_path, "".join(n + "\n" for n in ids).encode()))
        return out
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, s in enumerate(staged):
        w, h = size(s)
        images.append({"id": i, "file_name": s.path, "width": w, "height": h, "hoard_sha256": s.row["sha256"]})
        for b in found[s.row["sha256"]]:
            annotations.append({"id": len(annotations), "image_id": i, "category_id": ids[b.label],
                                "bbox": [round(b.x, 3), round(b.y, 3), round(b.w, 3), round(b.h, 3)],
                                "area": round(b.w * b.h, 3), "iscrowd": 0})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i, "name": n} for n, i in ids.items()]}
    return [(lf.path, (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode())]


def build(files: StageFiles, staged: Sequence[Staged], per_input_path: Callable[[str, Staged], str],
          size_of: Callable[[str], tuple[int, int]]) -> list[tuple[str, bytes]]:
    """Every file `files` adds to the input root (paths relative to it): the index files, the
    per-input JSONs, the label files. `per_input_path(template, s)`: a per-input template's path
    for `s`, checked as a layout's (hoardfs.jobs.outputs renders it); `size_of(sha256)`: an
    image's (width, height)."""
    out: list[tuple[str, bytes]] = [(ix.path, index_bytes(ix, staged)) for ix in files.index]
    if files.meta_template:
        tpl = files.meta_template
        out += [(per_input_path(tpl, s), (json.dumps(meta_doc(s), ensure_ascii=False, indent=1, sort_keys=True,
                                                     default=str) + "\n").encode()) for s in staged]
    for lf in files.labels:
        out += label_files(lf, staged, lambda s, lf=lf: per_input_path(lf.path, s), size_of)  # type: ignore[misc]
    return out


def image_size(data: bytes, who: str) -> tuple[int, int]:
    """(width, height) of an image's bytes (Pillow reads the header only), or PlacementError."""
    from PIL import Image, UnidentifiedImageError  # deferred: Pillow loads only where an image is read

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width), int(im.height)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PlacementError(f"{who} is not an image Pillow reads ({str(e)[:100]}); a label file needs its size — "
                             "narrow the selector to images") from None


def convert(data: bytes, to: str, who: str) -> bytes:
    """The image `data` as type `to` (jpg, png, webp), or PlacementError naming the node."""
    from PIL import Image, UnidentifiedImageError  # deferred: Pillow loads only where an image is converted

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            im: Image.Image = opened.convert("RGB") if to == "jpg" and opened.mode not in ("RGB", "L") else opened
            out = io.BytesIO()
            im.save(out, format=CONVERT[to], **({"quality": 95} if to in ("jpg", "webp") else {}))
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PlacementError(f"{who} cannot be converted to {to} ({str(e)[:100]}): it is not an image Pillow "
                             "reads — narrow the selector (e.g. file_types) or drop `convert`") from None


def check_type(data: bytes, want: str, who: str, template: str) -> None:
    """Refuse bytes of another type than the fixed extension `want` of `template` says."""
    got = sniff(data[:16])
    if got == want or (got is None and want not in KNOWN):
        return
    shown = f"{CONVERT.get(got, got.upper())} bytes" if got else "not an image of a known type"
    raise PlacementError(f"{who} is {shown}, but the template {template!r} stages it as .{want}: set "
                         f"`convert = \"{want}\"` in [stage_layout] to convert it on stage, or end the template "
                         "with {ext}" if want in CONVERT else
                         f"{who} is {shown}, but the template {template!r} stages it as .{want}: end the template "
                         "with {ext}, or narrow the selector to that type")

