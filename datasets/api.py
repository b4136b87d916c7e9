"""Datasets: what the CLI (`hoard dataset …`), the RQ job (jobs/datasets.py) and the GUI call
— no business logic elsewhere (docs/datasets.md).

    build = plan (hoardfs.datasets.plan) → manifest (hoardfs.datasets.card) → files (hoardfs.datasets.formats: a pure
            function of the manifest and dataset.json) → write into zone 3D (hoardfs.jobs.outputs'
            write_copy / write_view: reserve, copy or publish a view, seal)

Every version's manifest.jsonl and dataset.json are objects of the store, recorded as nodes
(located `dataset:<name>@<N>/…`) by one write-intent: `materialize NAME@N` renders the same
files from them, byte for byte, whatever the labels say today.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.files import flocked
from hoardfs.datasets import audit, card, formats, layouts
from hoardfs.datasets.formats import FORMATS, Format, Tree, jpeg, tar_layout, tar_size
from hoardfs.datasets.formats.detection import Voc
from hoardfs.datasets.formats.webdataset import WebDataset, member_cost
from hoardfs.datasets.layouts import PlacementError
from hoardfs.datasets.model import Sample
from hoardfs.datasets.plan import DryPlan, Plan, build_order, counts_of, dry_plan, place, plan, sample_of
from hoardfs.datasets.spec import NAME, DatasetError, DatasetSpec, TemplateSpec
from hoardfs.fsd.core.layout import pin_path
from hoardfs.fsd.outputs import seal, zones
from hoardfs.fsd.outputs.manifest import ViewError
from hoardfs.fsd.outputs.materialize import Item
from hoardfs.fsd.outputs.views import remove_view
from hoardfs.fsd.outputs.write import require_stored, write_copy, write_view
from hoardfs.fsd.store import Store
from hoardfs.sql import datasets as sqld
from hoardfs.sql.apply import apply_write_intent
from hoardfs.sql.selectors import marked_nodes, withheld_nodes

if TYPE_CHECKING:
    import psycopg

ZONE = "3D"
#: where a version's manifest and dataset.json are located as nodes
LOCATOR = "dataset:{name}@{version}/{file}"
REF = re.compile(rf"({NAME.pattern})(?:@([1-9][0-9]{{0,8}}))?")


@dataclass
class DryRun:
    name: str
    layout: str
    mode: str
    counts: dict[str, dict[str, int]]
    samples: int
    bytes: int
    reserve_bytes: int
    zone_free: int
    quota_ok: bool
    class_map: list[str]
    new_classes: list[str]
    thumbnails: dict[str, list[str]]
    selected: int
    unlabelled: int
    capped: int
    dropped_dup: int
    #: split → {samples, share, ratio}: the realised split of `counts`
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the groups over split.max_group_share of the samples: [{group, samples, share}]
    large_groups: list[dict[str, Any]] = field(default_factory=list)
    #: the build's leak audit of these samples (hoardfs.datasets.audit; dataset.json's `leak_audit`)
    leak_audit: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Made:
    """A version's files: the layout's tree and the common ones."""
    tree: Tree
    manifest: bytes
    doc: dict[str, Any]
    doc_bytes: bytes
    readme: bytes
    generated: list[tuple[str, bytes]] = field(default_factory=list)
    #: the objects written that no node names (the JPEGs a voc build converted): the version's
    #: rows name them (hoardfs.sql.datasets.record_objects), so gc keeps them
    own: list[str] = field(default_factory=list)


# -- the pieces ---------------------------------------------------------------------------------

def with_template(spec: DatasetSpec) -> DatasetSpec:
    """The spec with its layout template recorded (`template`) when `layout` is a layout file
    or a built-in template: read once, here, so the versions built from it — and a worker
    given the spec — never need the file again. DatasetError naming the layout otherwise."""
    if spec.layout in FORMATS or spec.template is not None:
        return spec
    try:
        t = layouts.load(spec.layout)
    except layouts.LayoutError as e:
        if spec.layout.endswith(".toml"):
            raise DatasetError(f"dataset {spec.name}: {e.message}; fix `layout` in the spec") from None
        raise DatasetError(f"dataset {spec.name}: layout {spec.layout!r} is not one of {', '.join(sorted(FORMATS))}, "
                           f"a template ({', '.join(layouts.BUILTIN)}) nor a layout .toml file; fix `layout` in the "
                           "spec") from None
    return spec.model_copy(update={"template": TemplateSpec(name=t.name, template=t.template, sidecars=t.sidecars,
                                                            case_sensitive=t.case_sensitive)})


def resolve_format(spec: DatasetSpec) -> Format:
    """The spec's layout: a built-in name, or its recorded template (`with_template`)."""
    spec = with_template(spec)
    if spec.template is None:
        return FORMATS[spec.layout]
    t = spec.template
    try:
        return formats.template_format(layouts.parse(t.template, t.name, sidecars=t.sidecars,
                                                     case_sensitive=t.case_sensitive))
    except layouts.LayoutError as e:
        raise DatasetError(f"dataset {spec.name}: {e.message}; fix the layout") from None


def _connect(cfg: Settings, what: str) -> psycopg.Connection:
    import psycopg  # deferred: only what reads the database needs it (not `hoard dataset --help`)

    try:
        return psycopg.connect(cfg.database_url, connect_timeout=10)
    except psycopg.OperationalError as e:
        raise HoardError(f"cannot reach the database ({first_line(e)}) to {what}; nothing was written — start it "
                         "(`hoard services up`) and run the same command again", ExitCode.UNAVAILABLE) from None


@contextlib.contextmanager
def _db_errors(what: str) -> Iterator[None]:
    import psycopg  # deferred: as in _connect

    try:
        yield
    except psycopg.Error as e:
        old = isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn))
        raise HoardError(f"the database failed while {what} ({first_line(e)}) — " + (
            "its schema is older than this hoardfs: `hoard db migrate`, then run the same command again" if old
            else "run the same command again"), ExitCode.UNAVAILABLE) from None


def _with_mode(spec: DatasetSpec, mode: str | None) -> DatasetSpec:
    if mode is None or mode == spec.mode:
        return spec
    if mode not in ("copy", "view"):
        raise DatasetError(f"--mode {mode!r}: copy or view")
    return spec.model_copy(update={"mode": mode})


def _plan(cfg: Settings, conn: psycopg.Connection, spec: DatasetSpec, fmt: Format) -> Plan:

    with _db_errors(f"dataset {spec.name} was planned"):
        return plan(conn, spec, fmt, sqld.class_map(conn, spec.name))


def _make(spec_doc: dict[str, Any], spec_sha: str, fmt: Format, samples: list[Sample], class_map: list[str],
          licences: list[str], manifest: bytes | None = None, doc_bytes: bytes | None = None,
          leak_audit: dict[str, Any] | None = None) -> _Made:
    """The files of a version (pure): from a plan and its leak audit, or from a stored manifest +
    dataset.json."""
    splits = list(spec_doc["split"].get("order") or spec_doc["split"]["ratios"])
    samples = sorted(samples, key=build_order(splits))
    manifest = manifest if manifest is not None else card.manifest_bytes(samples)
    if doc_bytes is None:
        doc = card.dataset_doc(spec_doc, spec_sha, class_map, counts_of(samples, splits), samples, manifest, licences,
                               leak_audit)
        doc_bytes = card.canonical_bytes(doc)
    else:
        doc = json.loads(doc_bytes)
    tree = fmt.render(samples, doc, dict(spec_doc.get("webdataset", {})))  # shard_bytes, shard_samples
    made = _Made(tree, manifest, doc, doc_bytes, card.readme(doc, samples),
                 own=sorted({s.converted[0] for s in samples if s.converted is not None}))
    taken = {f.path for f in tree.files} | {g.path for g in tree.generated} | {t.path for t in tree.tars}
    clash = sorted(taken & set(card.COMMON))
    if clash:
        raise DatasetError(f"dataset {spec_doc['name']}: layout {fmt.name} writes {clash[0]}, a name every build "
                           "keeps for itself; choose another layout", ExitCode.BUG)
    made.generated = [(g.path, g.data) for g in tree.generated] + [
        (card.MANIFEST, manifest), (card.DOC, doc_bytes), (card.README, made.readme)]
    return made


def _quota(cfg: Settings, sizes: list[int], paths: list[str], mode: str) -> tuple[int, int, bool]:
    """(bytes to reserve, room in 3D, whether it fits under the deny threshold)."""
    if mode == "view":
        need = 0
    else:
        need = zones.charge((cfg, ZONE), sizes, dirs=zones.tree_dirs(paths))
    u = zones.zone_usage(cfg, ZONE)
    if not u["present"]:
        raise HoardError(f"zone {ZONE}: {u['path']} does not exist — the SSD is not mounted, or not initialised; "
                         "nothing was written; mount it, or run `hoard init`", ExitCode.UNAVAILABLE)
    room = max(0, int(cfg.ssd.thresholds.deny * u["quota_bytes"]) - u["used_bytes"] - u["reserved_bytes"])
    room = min(room, max(0, u["fs_free_bytes"]))
    return need, room, need <= room


def _sizes(made: _Made) -> tuple[list[int], list[str]]:
    t = made.tree
    sizes = [f.size for f in t.files] + [len(d) for _, d in made.generated] + [tar_size(s) for s in t.tars]
    paths = [f.path for f in t.files] + [p for p, _ in made.generated] + [s.path for s in t.tars]
    return sizes, paths


# -- the API ------------------------------------------------------------------------------------

def dry_run(cfg: Settings, spec: DatasetSpec, mode: str | None = None) -> DryRun:
    """What a build would make — counts per split × class, the samples' bytes, whether 3D's
    quota admits it, thumbnails per class — with nothing written anywhere. The counts and bytes
    are the build's (hoardfs.datasets.plan.dry_plan: computed in the database, one row per split ×
    class); the files a layout makes beside the samples' (manifest, card, metadata, tar
    headers) are estimated from a couple of thousand samples rendered whole, and the build
    checks the quota again, exactly, before a byte moves."""
    spec = with_template(_with_mode(spec, mode))
    fmt = resolve_format(spec)
    with _connect(cfg, f"plan dataset {spec.name}") as conn, \
            _db_errors(f"dataset {spec.name} was planned"), conn.transaction():
        d = dry_plan(conn, spec, fmt, sqld.class_map(conn, spec.name), zones.zone_block_size((cfg, ZONE)))
        if isinstance(fmt, Voc) and not spec.convert:  # (the build reads each image; here its file type)
            bad = sqld.dry_not_jpeg(conn, d.table)
            if bad is not None:
                sha, ftype, nid, shared = bad
                key = f"{sha[:16]}-{nid}" if shared else sha[:16]
                raise DatasetError(jpeg.not_jpeg(spec.name, _named(sha, key), ftype.upper() or "(unknown)"),
                                   ExitCode.DATA)
        leaks = audit.run_dry(conn, spec, d.table)
        need = 0
        if spec.mode == "copy":
            need = _estimate(cfg, conn, spec, fmt, d)
    _need, room, _ok = _quota(cfg, [], [], "view")
    return DryRun(spec.name, spec.layout, spec.mode, d.counts, d.samples, d.bytes, need, room, need <= room,
                  d.class_map, d.new_classes, d.thumbnails, d.selected, d.unlabelled, d.capped, d.dropped_dup,
                  card.split_shares(d.counts, spec.split.ratios), d.large_groups, leaks)


#: samples rendered whole to estimate the layout's own files in a dry run
ESTIMATE_SAMPLES = 2000


def _estimate(cfg: Settings, conn: psycopg.Connection, spec: DatasetSpec, fmt: Format, d: DryPlan) -> int:
    """What a copy build would reserve in 3D (zones.charge): the samples' files exactly (in
    whole blocks, or as tar members), plus the files the layout and the card make, scaled from
    ESTIMATE_SAMPLES samples (the lowest sha256s) made into a whole tree by the build's own code
    (plan, render); a layout that refuses those few is estimated at 1 KiB a sample (the build names
    the problem)."""
    block = zones.zone_block_size((cfg, ZONE))
    groups = sum(len(by) for by in d.counts.values())
    picked = sqld.dry_subset(conn, d.table, d.samples, ESTIMATE_SAMPLES)
    tars = isinstance(fmt, WebDataset)
    exact = d.member_bytes if tars else d.block_bytes
    try:
        rows = sqld.sample_rows(conn, [nid for nid, _, _ in picked], ocr_boxes=spec.annotations == "result_ocr_box")
        splits = list(spec.split.ratios)
        samples = [sample_of(spec, rows[nid], splits[idx], d.class_map, shared) for nid, idx, shared in picked]
        if isinstance(fmt, Voc):  # a JPEG of each, its size guessed as the original's (the build converts)
            samples = [dataclasses.replace(s, converted=s.written) for s in samples]
        made = _make(spec.doc(), spec.sha256(), fmt, place(fmt, samples, spec.name, spec.webdataset.model_dump()),
                     d.class_map, [])
    except HoardError:
        return exact + 1024 * d.samples + zones.charge((cfg, ZONE), [], dirs=groups + len(d.counts))
    sizes, paths = _sizes(made)
    own = sum(member_cost(s.size) if tars else -(-s.size // block) * block for s in samples)
    made_blocks = sum(-(-n // block) * block for n in sizes)
    scale = d.samples / max(1, len(samples))
    extra = max(0, made_blocks - own) * scale
    dirs = zones.tree_dirs(paths)
    if dirs > 2 * (groups + len(d.counts)):  # directories that grow with the samples (a template's)
        dirs = int(dirs * scale)
    dirs = max(dirs, groups + len(d.counts))  # a split × class the few missed (an imagefolder's directories)
    return exact + int(extra) + zones.charge((cfg, ZONE), [0] * int(len(sizes) * scale), dirs=dirs)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for a build: a million samples are some ten million
    containers (rows, samples, paths, JSON), none of them in a cycle, and each full collection
    walks them all — half the time of planning a million. It is switched back on (if it was)
    on the way out, and collects then whatever cycles were made meanwhile."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _build_lock(cfg: Settings, name: str) -> Iterator[None]:
    d = cfg.ssd.root / "state" / "datasets"
    d.mkdir(parents=True, exist_ok=True)
    try:
        with flocked(d / f"{name}.lock", wait=False, transient=True):
            yield
    except BlockingIOError:
        raise HoardError(f"dataset {name}: another build, materialize or rm of it is running; wait for it",
                         ExitCode.UNAVAILABLE) from None


def build(cfg: Settings, spec: DatasetSpec, mode: str | None = None, force: bool = False,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build version N+1 of the spec's dataset into `3D/<name>-v<N+1>/` (or resume the killed
    build of version N). Refused, with nothing written, for every bad input (hoardfs.datasets.plan) and
    a zone too full; "unchanged since version N" when the spec and the data are those of the
    newest version (unless `force`). The report: name, version, path, mode, files, bytes, …"""
    t0 = time.monotonic()
    spec = with_template(_with_mode(spec, mode))
    fmt = resolve_format(spec)
    if spec.mode == "view":
        _check_view(cfg, spec, fmt)
    with _build_lock(cfg, spec.name), _connect(cfg, f"build dataset {spec.name}") as conn, no_gc(), \
            _jpeg_pin(cfg, spec.name):
        conn.autocommit = True
        p = _plan(cfg, conn, spec, fmt)
        if isinstance(fmt, Voc):
            p.samples = _jpegs(cfg, spec, p.samples)
        with _db_errors(f"dataset {spec.name} was audited"):
            leaks = audit.run(conn, spec, p.samples)
        spec_doc, spec_sha = spec.doc(), spec.sha256()
        made = _make(spec_doc, spec_sha, fmt, p.samples, p.class_map, p.licences, leak_audit=leaks)
        fp = made.doc["state"]["fingerprint"]
        with _db_errors(f"dataset {spec.name} was recorded"):
            every = sqld.versions(conn, spec.name)
        done = [v for v in every if v["status"] != "building"]
        # a killed build of the newest version (never one that finished once: a materialize
        # interrupted leaves a finished version to itself, never to be built over)
        resumed = bool(every) and sqld.unfinished(every[-1]["status"], every[-1]["manifest_sha256"])
        if done and done[-1]["fingerprint"] == fp and done[-1]["mode"] == spec.mode and not force:
            last = done[-1]
            return {"name": spec.name, "version": last["version"], "path": last["path"], "mode": last["mode"],
                    "unchanged": True, "status": last["status"], "files": last["files"], "bytes": last["bytes"],
                    "counts": last["counts"], "samples": len(p.samples), "splits": made.doc["splits"],
                    "large_groups": made.doc["large_groups"], "leak_audit": leaks}
        warning = audit.check(spec, leaks)  # refused here (the default) when a pair leaks across splits
        sizes, paths = _sizes(made)
        need, room, ok = _quota(cfg, sizes, paths, spec.mode)
        if not ok:
            raise zones.ZoneFull(f"dataset {spec.name}: zone {ZONE} has room for {room} bytes under its deny threshold, "
                                 f"the build needs {need}; nothing was written — free space (`hoard zones`, `hoard "
                                 "dataset rm NAME@N`) or raise its quota, then run the same command again")
        _check_stored(cfg, spec.name, made)
        with _db_errors(f"dataset {spec.name} was recorded"):
            n = sqld.begin_version(conn, spec.name, spec_doc, spec_sha, fp, spec.mode, str(cfg.ssd.zone_path(ZONE)))
        try:
            report = _write(cfg, conn, spec.name, n, spec.mode, made, progress, resumed)
        except zones.ZoneFull:
            with contextlib.suppress(Exception):  # refused before a byte moved: no version was made
                sqld.drop_building(conn, spec.name, n)
            raise
        sqld.save_class_map(conn, spec.name, p.class_map)
    return report | {"samples": len(p.samples), "selected": p.selected, "unlabelled": p.unlabelled,
                     "new_classes": p.new_classes, "splits": made.doc["splits"],
                     "large_groups": made.doc["large_groups"], "leak_audit": leaks, "leak_warning": warning,
                     "seconds": round(time.monotonic() - t0, 3)}


def _named(sha: str, key: str) -> Sample:
    """A sample that only names a node and its key (for a line of the dry run's)."""
    return Sample(path="", sha256=sha, size=0, ext="", key=key, node_id=0, root_id=0, lineage=(), source_url=None,
                  date=None, labels={}, cls=None, class_index=None, split="")


def _jpeg_pin_name(name: str) -> str:
    return f"dataset-{name}-jpeg"


@contextlib.contextmanager
def _jpeg_pin(cfg: Settings, name: str) -> Iterator[None]:
    """The JPEGs a build converts are pinned (`_jpegs`) until it ends: its manifest names them then."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            pin_path(cfg, _jpeg_pin_name(name)).unlink(missing_ok=True)


def _jpegs(cfg: Settings, spec: DatasetSpec, samples: list[Sample]) -> list[Sample]:
    """The samples of a JPEG-only layout read from the store (hoardfs.datasets.formats.jpeg.prepare):
    size and depth from each image, and each that is not a JPEG converted — the JPEGs stored
    (class generated) and pinned until the build ends; refused, one line, with `convert = false`."""
    made: list[str] = []
    with Store.open(cfg) as store:
        def put_many(datas: list[bytes]) -> list[str]:
            res = store.put_bytes_many(datas, klass="generated")
            bad = next((r for r in res if r.status not in ("new", "existing")), None)
            if bad is not None:
                raise HoardError(f"dataset {spec.name}: a converted JPEG could not be stored ({bad.reason}); nothing "
                                 "was written — run the same command again", ExitCode.UNAVAILABLE)
            made.extend(r.sha256 for r in res)
            store.pin(_jpeg_pin_name(spec.name), made, f"JPEGs converted for dataset {spec.name}, until built")
            return [r.sha256 for r in res]

        try:
            return jpeg.prepare(spec.name, samples, store.get, put_many, spec.convert, spec.jpeg_quality)
        except PlacementError as e:
            raise DatasetError(e.message, ExitCode.DATA) from None


def _check_view(cfg: Settings, spec: DatasetSpec, fmt: Format) -> None:
    if cfg.mount.path is None:
        raise DatasetError("--mode view needs the mount: set `[mount] path = \"/srv/hoard\"` in hoard.toml (where "
                           "`hoard mount` / hoard-mount.service serves), or use --mode copy")
    if not fmt.view_ok:
        raise DatasetError(f"dataset {spec.name}: layout {fmt.name} cannot be a view (its files are made, not "
                           "stored); use --mode copy")


def _check_stored(cfg: Settings, name: str, made: _Made, ref: str | None = None) -> None:
    """Every object the files are made of is in the store, before a byte moves; else one line.
    `ref` (a materialize's NAME@N): the version names its objects — no selection to narrow —
    so the line says it cannot be made again, and what to build instead."""
    shas = [f.sha256 for f in made.tree.files] + [m.sha256 for t in made.tree.tars for m in t.members if m.sha256]
    with Store.open(cfg) as store:
        if ref is None:
            require_stored(store, shas, DatasetError, f"dataset {name}: ")
            return
        want = sorted({bytes.fromhex(h) for h in shas})
        found = store.index.lookup_many(want)
        gone = [s.hex() for s in want if s not in found]
    if gone:
        raise DatasetError(f"dataset {ref}: {len(gone)} of the {len(want)} objects its files are made of are no longer "
                           f"in the store (their nodes deleted and collected), e.g. {gone[0]}; nothing was written — "
                           "this version cannot be made again: build a new one from its spec (`hoard dataset build "
                           "SPEC`), which leaves out what was deleted", ExitCode.DATA)


def _write(cfg: Settings, conn: psycopg.Connection, name: str, n: int, mode: str, made: _Made,
           progress: Callable[[int, int], None] | None, resumed: bool = False) -> dict[str, Any]:
    """Record the manifest and dataset.json (objects + nodes), then write and seal
    `3D/<name>-v<n>/`; the version is `done` once sealed."""
    out_id = f"{name}-v{n}"
    final = cfg.ssd.zone_path(ZONE) / out_id
    view = f"{ZONE}-{out_id}" if mode == "view" else None
    fp = made.doc["state"]["fingerprint"]
    request = {"dataset": name, "version": n, "fingerprint": fp, "mode": mode, "view": view}
    with Store.open(cfg) as store:
        manifest_sha, doc_sha, index_sha = _record(store, conn, name, n, made, resumed)
        doc = None
        if (final / seal.SEALED).is_file():  # killed after its seal, before the version was marked done
            job = seal.check_sealed(final)
            if job.get("selector") != request:
                raise DatasetError(f"dataset {name}: {final} is sealed for another build; `hoard dataset rm "
                                   f"{name}@{n}` removes it", ExitCode.DATA)
            zones.release_stale(cfg, ZONE, out_id)
            doc = job
        generated = list(made.generated)
        rows: list[tuple[str, str]] = []
        if mode == "view":  # the files as (path, sha256) rows of the view: no Item each
            items: list[Item] = []
            rows = [(f.path, f.sha256) for f in made.tree.files]
            # the manifest and dataset.json are recorded nodes: the view names them, never owns
            # them (a view releases what it owns when it goes: a gc without the database would collect them)
            recorded = {card.MANIFEST: (manifest_sha, len(made.manifest)), card.DOC: (doc_sha, len(made.doc_bytes))}
            items += [Item(p, *recorded[p]) for p, _ in generated if p in recorded]
            generated = [(p, d) for p, d in generated if p not in recorded]
        else:
            items = [Item(f.path, f.sha256, f.size) for f in made.tree.files]

        # the tar shards: their headers known here, their members read with everything else
        assembled = [tar_layout(t) for t in made.tree.tars]
        common: dict[str, Any] = dict(job=f"dataset:{name}@{n}", kind="dataset", selector=request,
                      layout={"name": made.doc["layout"]})
        if doc is None and mode == "copy":
            doc, _rep = write_copy(cfg, store, ZONE, out_id, items=items, generated=generated, progress=progress,
                                   assembled=assembled, **common)
        elif doc is None:
            assert view is not None
            tops = sorted({p.split("/", 1)[0] for p in [*(p for p, _ in rows), *(it.path for it in items),
                                                          *(g for g, _ in generated)]})
            doc, _info, _rows = write_view(cfg, store, ZONE, out_id, view=view, items=items, generated=generated,
                                           entries=tops, rows=rows, **common)
    files = len(rows) + len(items) + len(generated) + len(assembled)
    nbytes = (sum(f.size for f in made.tree.files) if rows else 0) + sum(it.size for it in items) + \
        sum(len(d) for _, d in generated) + sum(a.size for a in assembled)
    with _db_errors(f"dataset {name} was recorded"):
        sqld.finish_version(conn, name, n, manifest_sha, doc_sha, files, nbytes, made.doc["counts"], str(final),
                            index_sha)
    return {"name": name, "version": n, "ref": f"{name}@{n}", "path": str(final), "output_id": out_id, "mode": mode,
            "view": view, "files": files, "bytes": nbytes, "counts": made.doc["counts"],
            "fingerprint": fp, "sealed_files": doc["actual_files"]}


def _record(store: Store, conn: psycopg.Connection, name: str, n: int, made: _Made,
            resumed: bool = False) -> tuple[str, str, str]:
    """Store the manifest and dataset.json (class generated, pinned until the database names
    them) and record them as nodes by one write-intent, and the version's converted JPEGs
    (`made.own`, pinned by the build until it ends) and its loader index (`card.loader_index`)
    as its objects: gc keeps them all while the version is recorded
    (hoardfs.sql.deletion.referenced). The sha256s of the manifest, dataset.json and index.

    A build of version n killed after this, then resumed over other data (labels changed in
    between), records another manifest for n: in the same transaction the nodes an earlier
    attempt located at n's names lose those locators — and, named by nothing else, are marked
    deleted (selectors skip them, gc frees them) — so each name locates exactly one node, the
    one `dataset_version` records. (Only a `resumed` build can meet such nodes: the look-up
    scans the locators.)"""
    manifest_sha = hashlib.sha256(made.manifest).hexdigest()
    res = store.put_bytes_many([made.manifest, made.doc_bytes, card.loader_index(made.manifest, manifest_sha)],
                               klass="generated")
    bad = next((r for r in res if r.status not in ("new", "existing")), None)
    if bad is not None:
        raise HoardError(f"dataset {name}: its manifest could not be stored ({bad.reason}); nothing was written — "
                         "run the same command again", ExitCode.UNAVAILABLE)
    shas = [r.sha256 for r in res]
    pin = f"dataset-{name}-v{n}"
    store.pin(pin, shas, f"manifest, dataset.json and loader index of dataset {name}@{n}, until recorded")
    try:
        files = [(card.MANIFEST, made.manifest, None), (card.DOC, made.doc_bytes, "json")]
        located = [(LOCATOR.format(name=name, version=n, file=fname), sha)
                   for (fname, _, _), sha in zip(files, shas[:2], strict=True)]
        with _db_errors(f"dataset {name} was recorded"), conn.transaction():
            stale = sqld.drop_stale_locators(conn, located) if resumed else []
            intent = {"key": f"dataset:{name}@{n}:{shas[0][:16]}" + (f":replaces:{stale[0][:16]}" if stale else ""),
                      "nodes": [{"sha256": sha, "physical": {"size": len(data), "file_type": ftype,
                                                              "locators": [loc]}}
                                for (loc, sha), (_, data, ftype) in zip(located, files, strict=True)]}
            apply_write_intent(conn, intent)
            sqld.undelete(conn, shas[:2])  # one an earlier attempt dropped as stale is live again
            sqld.record_objects(conn, name, n, [*made.own, shas[2]], only=resumed)
    finally:
        store.unpin(pin)
    return shas[0], shas[1], shas[2]


def withheld(conn: psycopg.Connection, store: Store, shas: Iterable[bytes],
             marked: set[bytes] | None = None) -> set[bytes]:
    """Those of `shas` a reader of a version leaves out: a node the database marks deleted or
    black-listed, or an object the store does not show (hidden, tombstoned) — what a loader
    withholds and a published locator lists as withheld. `marked`: every marked node's sha256
    (`withheld_marked`), matched here instead of asking the database of each of `shas`."""
    every = set(shas)
    nodes = every & marked if marked is not None else withheld_nodes(conn, sorted(every))
    return nodes | store.index.unshown_among(every)


def withheld_marked(conn: psycopg.Connection, samples: int) -> set[bytes] | None:
    """Every deleted or black-listed node's sha256, for `withheld` of `samples` sha256s asked in
    parts: read when there are at most a quarter as many of them (a store's few deletions:
    their ids off two partial indexes in milliseconds, where asking of each of 100,000 samples
    takes 0.25 s), None otherwise (`marked_nodes`)."""
    return marked_nodes(conn, max(1, samples // 4))


def parse_ref(ref: str, need_version: bool = True) -> tuple[str, int | None]:
    m = REF.fullmatch(ref or "")
    if not m or (need_version and m.group(2) is None):
        raise DatasetError(f"{ref!r}: name a version as NAME@N (e.g. pets@2); `hoard dataset list` shows them")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _version(conn: psycopg.Connection, ref: str, need_version: bool = False) -> dict[str, Any]:

    name, n = parse_ref(ref, need_version)
    with _db_errors(f"dataset {name} was read"):
        rows = sqld.versions(conn, name)
    every = rows
    rows = [r for r in rows if r["status"] != "building" or n is not None]
    row = next((r for r in rows if r["version"] == n), None) if n is not None else (rows[-1] if rows else None)
    if row is None and every:  # only a build that never finished: `list` shows it, so say what it is
        raise DatasetError(f"dataset {name} has no finished version: {name}@{every[-1]['version']} is building (its "
                           f"build was killed, or runs now) — run the same `hoard dataset build SPEC` again to resume "
                           f"it, or `hoard dataset rm {name}@{every[-1]['version']}` to give it up")
    if row is None:
        raise DatasetError(f"no dataset {ref}" + ("" if n is None else f" (its versions: "
                           f"{', '.join(str(r['version']) for r in rows) or 'none'})") + "; `hoard dataset list`")
    return row


#: what `list_datasets` and `show` give of each version
VERSION_KEYS = ("version", "status", "mode", "path", "files", "bytes", "built_at", "counts")


def list_datasets(cfg: Settings) -> list[dict[str, Any]]:
    """Every dataset with its versions (newest last) and class map."""
    with _connect(cfg, "list datasets") as conn, _db_errors("datasets were listed"):
        rows = sqld.versions(conn)
        maps = sqld.class_maps(conn)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out.setdefault(r["name"], {"name": r["name"], "class_map": maps.get(r["name"], []), "versions": []})
        d["versions"].append({k: r[k] for k in VERSION_KEYS})
    return list(out.values())


def show(cfg: Settings, name: str, version: int | None = None) -> dict[str, Any]:
    """A version (the newest when `version` is None): its row, its dataset.json, whether its
    output is sealed in 3D, and `versions`: every version of the name, oldest first."""
    ref = f"{name}@{version}" if version is not None else name
    with _connect(cfg, f"show dataset {ref}") as conn:
        row = _version(conn, ref)
        with _db_errors(f"dataset {name} was read"):
            row["versions"] = [{k: v[k] for k in VERSION_KEYS} for v in sqld.versions(conn, name)]
    if row["doc_sha256"]:
        with Store.open(cfg) as store:
            row["dataset"] = json.loads(store.get(row["doc_sha256"]))
    try:
        seal.check_sealed(Path(row["path"]))
        row["sealed"] = True
    except (seal.OutputIncomplete, OSError):
        row["sealed"] = False
    return row


def _samples(cfg: Settings, row: dict[str, Any]) -> list[Sample]:

    if not row["manifest_sha256"]:
        raise DatasetError(f"dataset {row['name']}@{row['version']} was never finished; build it again")
    with Store.open(cfg) as store:
        return card.read_manifest(store.get(row["manifest_sha256"]))


def diff(cfg: Settings, a: str, b: str) -> dict[str, Any]:
    """Samples (by content) added and removed from `a` to `b`, moved between splits, relabelled
    (another class)."""
    with _connect(cfg, f"diff {a} {b}") as conn:
        ra, rb = _version(conn, a, True), _version(conn, b, True)
    sa = {s.sha256: s for s in _samples(cfg, ra)}
    sb = {s.sha256: s for s in _samples(cfg, rb)}
    both = sorted(set(sa) & set(sb))
    return {"a": f"{ra['name']}@{ra['version']}", "b": f"{rb['name']}@{rb['version']}",
            "added": [{"sha256": h, "path": sb[h].path, "split": sb[h].split, "class": sb[h].cls}
                      for h in sorted(set(sb) - set(sa))],
            "removed": [{"sha256": h, "path": sa[h].path, "split": sa[h].split, "class": sa[h].cls}
                        for h in sorted(set(sa) - set(sb))],
            "moved": [{"sha256": h, "from": sa[h].split, "to": sb[h].split} for h in both if sa[h].split != sb[h].split],
            "relabelled": [{"sha256": h, "from": sa[h].cls, "to": sb[h].cls} for h in both if sa[h].cls != sb[h].cls],
            "unchanged": sum(1 for h in both if sa[h].split == sb[h].split and sa[h].cls == sb[h].cls)}


def materialize(cfg: Settings, ref: str, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Make `3D/<name>-v<N>/` again from the version's stored manifest and dataset.json: the
    same bytes as its build, whatever the labels say today. A sealed one is reported as it is."""
    name, n = parse_ref(ref)
    with _build_lock(cfg, name), _connect(cfg, f"materialize dataset {ref}") as conn, no_gc():
        conn.autocommit = True
        row = _version(conn, ref, True)
        final = Path(row["path"])
        if row["status"] == "done" and (final / seal.SEALED).is_file():
            return {"name": name, "version": n, "path": str(final), "mode": row["mode"], "files": row["files"],
                    "bytes": row["bytes"], "already_done": True}
        if not row["manifest_sha256"] or not row["doc_sha256"]:
            raise DatasetError(f"dataset {ref} was never finished; `hoard dataset build` its spec again")
        with Store.open(cfg) as store:
            manifest = store.get(row["manifest_sha256"])
            doc_bytes = store.get(row["doc_sha256"])
        doc = json.loads(doc_bytes)
        spec = DatasetSpec.from_doc(doc["spec"])
        fmt = resolve_format(spec)
        if row["mode"] == "view":
            _check_view(cfg, spec, fmt)
        made = _make(doc["spec"], doc["spec_sha256"], fmt, card.read_manifest(manifest), doc["class_map"],
                     doc.get("licences", []), manifest=manifest, doc_bytes=doc_bytes)
        sizes, paths = _sizes(made)
        need, room, ok = _quota(cfg, sizes, paths, row["mode"])
        if not ok:
            raise zones.ZoneFull(f"dataset {ref}: zone {ZONE} has room for {room} bytes under its deny threshold, it "
                                 f"needs {need}; nothing was written — free space (`hoard zones`) and run the same "
                                 "command again")
        _check_stored(cfg, name, made, ref)
        # its status stays what it is (`removed`, or `done` with its tree gone) until sealed:
        # never `building`, which would let the next build of the name take the version over
        report = _write(cfg, conn, name, int(n or 0), row["mode"], made, progress)
    return report | {"materialized": True}


def remove(cfg: Settings, ref: str) -> dict[str, Any]:
    """Remove the output of `NAME@N` (every version's, for `NAME`) from 3D, and its view; the
    version stays recorded (its manifest in the store): `materialize` makes it again."""
    name, n = parse_ref(ref, need_version=False)
    removed = []
    with _build_lock(cfg, name), _connect(cfg, f"remove dataset {ref}") as conn:
        conn.autocommit = True
        rows = [_version(conn, ref, True)] if n is not None else sqld.versions(conn, name)
        if not rows:
            raise DatasetError(f"no dataset {name}; `hoard dataset list`")
        for row in rows:
            out_id = f"{name}-v{row['version']}"
            try:
                res = zones.clean(cfg, out_id, ZONE)
            except zones.NoSuchOutput:
                res = {"freed_bytes": 0, "view": None}
            view = res["view"] or (f"{ZONE}-{out_id}" if row["mode"] == "view" else None)
            if view:  # gc then frees what only it named
                with Store.open(cfg) as store, contextlib.suppress(ViewError):
                    remove_view(store, view, for_output=True)
            sqld.set_status(conn, name, row["version"], "removed")
            removed.append({"version": row["version"], "path": row["path"], "freed_bytes": res.get("freed_bytes", 0),
                            "view": res.get("view")})
    return {"name": name, "removed": removed, "path": removed[-1]["path"] if removed else None}
