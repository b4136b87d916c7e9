"""Write an output into a zone, in copy or view mode — what every producer of zone 3C/3D
shares (hoardfs.jobs.outputs: `hoard stage` / `hoard export`; hoardfs.datasets.api: `hoard dataset build`):
reserve (hoardfs.fsd.outputs.zones: refused before a byte moves), copy with the batch planner
(hoardfs.fsd.outputs.materialize) or publish a view (hoardfs.fsd.outputs.views), then seal (hoardfs.fsd.outputs.seal)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.outputs import seal, zones
from hoardfs.fsd.outputs.materialize import Assembled, Item, MaterializeReport, materialize


def require_stored(store, shas_hex: Sequence[str], error: type[HoardError], what: str = "") -> None:
    """Every selected object is in the store, before a byte is reserved or moved (a node whose
    batch was dropped and collected is still a row until its delete reaches the database):
    else `error` (exit 5) in one line, `what` in front, naming one and how many."""
    shas = sorted({bytes.fromhex(h) for h in shas_hex})
    found = store.index.lookup_many(shas)
    gone = [s.hex() for s in shas if s not in found]
    if gone:
        raise error(f"{what}{len(gone)} of the {len(shas)} selected objects are not in the store (deleted and "
                    f"collected?), e.g. {gone[0]}; nothing was written — narrow the selection "
                    f"(`hoard info {gone[0]}`)", ExitCode.DATA)


def write_copy(cfg: Settings, store, zone: str, output_id: str, *, job: str, kind: str, items: list[Item],
               generated: Sequence[tuple[str, bytes]] = (), selector: Any = None, layout: Any = None,
               progress: Callable[[int, int], None] | None = None, started: Callable[[], None] = lambda: None,
               empty_dirs: Sequence[str] = (),
               assembled: Sequence[Assembled] = ()) -> tuple[dict[str, Any], MaterializeReport]:
    """Copy mode of any output into a zone (an export, a stage, a dataset): reserve what the
    files occupy (zones.ZoneFull before a byte moves), copy `items` out of the store with the
    batch planner into `<zone>/.tmp/<id>/` (what an earlier attempt left and still checks is
    kept), write the `generated` (path, bytes) files made here, make `empty_dirs`, seal. A
    failure keeps the partial tree for the same command to resume. `assembled`: files made of
    bytes known here and stored objects at their offsets (a dataset's tar shards), whose objects
    are read in the same pass as the items'. `started()` is called once the zone admitted it.
    The `_JOB` document and the copy's report."""
    sizes = ([it.size for it in items] + [len(it.sidecar) for it in items if it.sidecar is not None]
             + [len(data) for _, data in generated] + [a.size for a in assembled])
    paths = [it.path for it in items] + [p for p, _ in generated] + [a.path for a in assembled]
    out = seal.begin(cfg, zone, output_id, job=job, kind=kind, expected_bytes=sum(sizes),
                     # what `du` will count (an empty directory is a directory too)
                     reserve_bytes=zones.charge((cfg, zone), sizes, dirs=zones.tree_dirs(paths) + len(empty_dirs)),
                     expected_files=len(sizes), selector=selector, layout=layout, resume=True)
    started()
    try:
        # what an earlier attempt wrote that this plan no longer names (the selection shrank)
        out.prune(set(paths) | {it.path + ".json" for it in items if it.sidecar is not None})
        rep: MaterializeReport = materialize(store, items, out.tmp, progress, assembled)
        for rel in empty_dirs:  # not part of the sealed files
            (out.tmp / rel).mkdir(parents=True, exist_ok=True)
        for rel, data in generated:
            out.write(rel, data)  # seal hashes (and syncs) what it did not see written
        for a in assembled:
            out.declare(a.path, a.size, rep.assembled[a.path], verified=True)
        for it in items:
            out.declare(it.path, it.size, it.sha256, verified=True)
            if it.sidecar is not None:
                out.declare(it.path + ".json", len(it.sidecar), hashlib.sha256(it.sidecar).hexdigest(), verified=True)
        doc = out.seal()
    except BaseException as e:
        out.fail(e, keep=True)  # the partial tree stays: the same command resumes it
        if isinstance(e, OSError):  # sealing met the SSD (full, failing): one line, the re-run resumes
            raise seal.as_error(e, f"output {zone}/{output_id}") from None
        raise
    return doc, rep


def write_view(cfg: Settings, store, zone: str, output_id: str, *, job: str, kind: str, view: str, items: list[Item],
               entries: list[str], generated: Sequence[tuple[str, bytes]] = (),
               selector: Any = None, layout: Any = None, started: Callable[[], None] = lambda: None,
               empty_dirs: Sequence[str] = (), rows: Sequence[tuple[str, str]] = ()
               ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """View mode of any output: zero bytes copied. The files (`items`, their sidecars and the
    `generated` ones, which are stored as objects the view owns) become the named view `view`
    (`<mount>/views/<view>/…`), and the zone holds a sealed output whose `entries` (top-level
    names of the tree) are links into it — the paths a local consumer reads in copy mode. The
    view is defined only after the zone admitted the output, and removed if it fails. `rows`:
    more stored files as (path, sha256), without an Item each (a dataset's million). The
    `_JOB` document, the view's record and the number of files it names."""
    from hoardfs.fsd.outputs.views import (  # deferred: only view mode defines views
        define_view_rows,
        release_owned,
        remove_view,
    )

    assert cfg.mount.path is not None  # the caller refused the request without it
    out = seal.begin(cfg, zone, output_id, job=job, kind=kind, expected_bytes=0, expected_files=0, selector=selector,
                     layout=layout, resume=True)
    started()
    defined, stored = False, []
    try:
        rows = [*rows, *((it.path, it.sha256) for it in items)]
        made = [(it.path + ".json", it.sidecar) for it in items if it.sidecar is not None] + list(generated)
        if made:  # not in the store yet: they become generated objects the view names
            stored = store.put_bytes_many([data for _, data in made], klass="generated")
            if any(r.status not in ("new", "existing") for r in stored):
                bad = next(r for r in stored if r.status not in ("new", "existing"))
                raise HoardError(f"a file made for view {view} could not be stored: {bad.reason}", ExitCode.UNAVAILABLE)
            rows += [(path, r.sha256) for (path, _), r in zip(made, stored, strict=True)]
        info = define_view_rows(store, view, rows, for_output=True, owned=[r.sha256 for r in stored])
        defined = True
        out.prune(set(entries))
        for entry in entries:
            out.link(entry, str(cfg.mount.path / "views" / view / entry))
        for rel in empty_dirs:
            (out.tmp / rel).mkdir(parents=True, exist_ok=True)
        doc = out.seal()
    except BaseException as e:
        out.fail(e)
        if defined:  # nothing sealed names it: a failed output publishes nothing
            with contextlib.suppress(HoardError):
                remove_view(store, view, for_output=True)
        elif stored:  # the files made for a view that never was
            with contextlib.suppress(HoardError):
                release_owned(store, {bytes.fromhex(r.sha256) for r in stored if r.sha256},
                              f"files made for view {view}, not published")
        if isinstance(e, OSError):
            raise seal.as_error(e, f"output {zone}/{output_id}") from None
        raise
    return doc, info, len(rows)

