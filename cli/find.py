"""Finding what is stored: `hoard info`, `hoard ls`, `hoard select`.

`info` and `ls` answer from the store (the index and the batch manifests) and add what the
database knows when it is reachable — so they work with PostgreSQL down, and say so.
`select` is the database's node selector (hoardfs.sql.selectors) from flags or a JSON file; its
`--view` output pipes into `hoard view add NAME -`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from hoardfs.adapters import known_sources
from hoardfs.base.errors import ExitCode, HoardError, first_line
from hoardfs.base.paths import by_hash_path, display
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, print_lines, read_input, state
from hoardfs.fsd.outputs import members
from hoardfs.fsd.outputs.puts import listing
from hoardfs.fsd.store import Store
from hoardfs.sql.browse import locators, node_facts, source_names
from hoardfs.sql.selectors import parse_selector, query_nodes


def _resolve(store, ref: str) -> bytes:
    """A full sha256, or a unique prefix of at least 4 hex digits."""
    ref = ref.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,64}", ref):
        raise HoardError(f"{display(ref)!r} is not a sha256 or a prefix of one (4–64 hex digits)", ExitCode.USAGE)
    if len(ref) == 64:
        return bytes.fromhex(ref)
    whole = bytes.fromhex(ref[: len(ref) // 2 * 2])
    hits = [sha for sha, _ in store.index.objects_with_prefix(whole, limit=1000) if sha.hex().startswith(ref)]
    if not hits:
        raise HoardError(f"no stored object starts with {ref}", ExitCode.DATA)
    if len(hits) > 1:
        shown = ", ".join(h.hex()[:16] + "…" for h in hits[:5])
        raise HoardError(f"{ref} is ambiguous: {len(hits)} objects start with it ({shown}); give more digits",
                         ExitCode.USAGE)
    return hits[0]


def _manifest_paths(store, sha: bytes) -> list[dict[str, str]]:
    """Where this object appears in batch and view manifests (the store's own record): only the
    objects the members files point at are read (hoardfs.fsd.outputs.members), not every manifest."""

    found = []
    for kind, name, places in members.holding(store, sha):
        try:
            found += [{kind: name, "path": path} for path in members.paths_in(store, sha, places)]
        except HoardError:
            continue  # an unreadable manifest is `hoard check`'s to report
    return found


def _db_facts(cfg, sha: bytes) -> dict[str, Any]:
    """What the database says about the node, or why it could not be asked."""

    try:
        with psycopg.connect(cfg.database_url, connect_timeout=5) as conn:
            return node_facts(conn, sha)
    except psycopg.Error as e:
        return {"unavailable": first_line(e)}


def info(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="a sha256, or a unique prefix of one (≥ 4 hex digits)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """Everything known about one object: size, type, replicas and disks, batches and original
    paths, metadata and labels (from the database when it is reachable), mount paths."""

    cfg = state(ctx).settings
    with Store.open(cfg, writable=False) as store:
        sha = _resolve(store, ref)
        loc = store.index.lookup(sha)
        if loc is None:
            raise HoardError(f"object {sha.hex()} is not in the store", ExitCode.DATA)
        meta = store.index.get_shard(loc.shard_id)
        ext = store.index.get_ext(sha)
        doc: dict[str, Any] = {
            "sha256": sha.hex(), "size": loc.length, "ext": ext or None,
            "shard": loc.shard_id.hex(), "class": meta.klass if meta else None,
            "replicas": [{"disk": store.records[u].label if u in store.records else u,
                          "state": store.records[u].state.value if u in store.records else "unknown"}
                         for u in (meta.replicas if meta else [])],
            "target": store.target(meta.klass) if meta else None,
            # toward the target: replicas on active disks, an S3 disk's counted as its `copies`
            "copies": store.copies_of(meta) if meta else None,
            "verified": time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.verified)) if meta and meta.verified
            else None,
            "hidden": store.index.is_marked(store.index.hidden, sha),
            "tombstoned": store.index.is_marked(store.index.deleted, sha),
            "rooted": store.index.is_marked(store.index.rooted, sha),
            "in_manifests": _manifest_paths(store, sha),
        }
    h = sha.hex()
    doc["mount_paths"] = [by_hash_path(h, ext)] + [
        f"batches/{m['batch']}/{m['path']}" if "batch" in m else f"views/{m['view']}/{m['path']}"
        for m in doc["in_manifests"]]
    doc["database"] = _db_facts(cfg, sha)
    if as_json:
        out.print(json.dumps(doc, default=str), markup=False)
        return
    reps = ", ".join(f"{r['disk']} ({r['state']})" for r in doc["replicas"]) or "none"
    marks = (("kept by `hoard put` (until `hoard delete --object`)", doc.get("rooted")),
             ("hidden (type A)", doc.get("hidden")), ("tombstoned (type B)", doc.get("tombstoned")))
    lines = [f"sha256:    {doc['sha256']}",
             f"size:      {doc['size']:,} bytes" + (f", .{ext}" if ext else ""),
             f"replicas:  {len(doc['replicas'])} of {doc['target']}"
             + (f" ({doc['copies']} copies counted)" if doc["copies"] != len(doc["replicas"]) else "")
             + f": {reps}; shard {doc['shard']} ({doc['class']})"
             + (f", verified {doc['verified']}" if doc["verified"] else ", never verified"),
             *(["marks:     " + ", ".join(m for m, on in marks if on)] if any(on for _, on in marks) else [])]
    for m in doc["in_manifests"][:20]:
        lines.append(f"in:        {'batch ' + m['batch'] if 'batch' in m else 'view ' + m['view']}: "
                     f"{display(m['path'])}")
    if len(doc["in_manifests"]) > 20:
        lines.append(f"           … and {len(doc['in_manifests']) - 20} more (--json lists all)")
    db = doc["database"]
    if "unavailable" in db:
        lines.append(f"database:  not reachable ({db['unavailable']}); store facts only")
    elif not db["known"]:
        lines.append("database:  no node with this sha256")
    else:
        flags = [f for f, on in (("deleted", db["deleted"]), ("black-listed", db["black_listed"])) if on]
        lines.append(f"database:  node {db['node_id']}" + (f", {db['file_type']}" if db["file_type"] else "")
                     + (f" ({', '.join(flags)})" if flags else "")
                     + (f"; batches {', '.join(db['batches'])}" if db["batches"] else ""))
        for m in db["metadata"]:
            lines.append(f"metadata:  [{m['source']}] " + "; ".join(
                f"{k} {display(str(v))}" for k, v in m.items() if k != "source" and v not in (None, "")))
        for m in db.get("made_by", []):
            lines.append(f"made by:   {m['action']}" + (f" v{m['version']}" if m["version"] else "") + f", run {m['run']}")
        if db["labels"]:
            lines.append("labels:    " + ", ".join(f"{lb['key']}={lb['value']}" for lb in db["labels"]))
        for e in db["edges"][:10]:
            lines.append(f"{e['direction'] + ':':<11}{e['sha256']} ({e['relationship']}"
                         + (f", made by {e['action']}" if e.get("action") else "") + ")")
        if len(db["edges"]) > 10:
            lines.append(f"           … and {len(db['edges']) - 10} more edges (--json lists them)")
    lines += [f"mount:     <mount>/{p}" for p in doc["mount_paths"][:5]]
    out.print("\n".join(lines), markup=False)


def ls(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Option("--batch", help="list this batch's files")] = None,
    source: Annotated[str | None, typer.Option("--source", help="only batches of this source")] = None,
    puts_: Annotated[bool, typer.Option("--puts", help="the named puts (`hoard put --name`) instead")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The ingested batches (id, source, files, size, when), or one batch's files (sha256, size, path),
    or (`--puts`) the named puts: name, when, count, bytes."""

    with Store.open(state(ctx).settings, writable=False) as store:
        if puts_:
            named = listing(store.index)
            if not named and not as_json:
                err.print("no named put (`hoard put --name NAME FILE…` makes one)", markup=False)
            for p in named:
                out.print(json.dumps(p) if as_json else f"{display(p['name']):<40} {p['when'] or '':<26} "
                          f"{p['count']:>8} files {p['bytes'] / 1e6:>10.1f} MB", markup=False)
            return
        if batch is not None:
            manifest = store.batch_manifest(batch)
            if manifest is None:
                raise HoardError(f"no ingested batch {batch!r}; `hoard ls` lists them", ExitCode.USAGE)
            for f in manifest["files"]:
                if as_json:
                    out.print(json.dumps({k: f[k] for k in ("sha256", "size", "path")}), markup=False)
                else:
                    out.print(f"{f['sha256']}  {f['size']:>12,}  {display(f['path'])}", markup=False)
            return
        batches = [(b, i) for b, i in sorted(store.index.iter_batches()) if source in (None, i.get("source"))]
    if not batches and not as_json:
        err.print("no ingested batch" + (f" of source {source}" if source else ""), markup=False)
    for b, i in batches:
        if as_json:
            out.print(json.dumps({"batch": b} | i), markup=False)
        else:
            out.print(f"{b:<40} {i.get('source', ''):<14} {i.get('files', 0):>8} files "
                      f"{fmt_bytes(i.get('bytes', 0)):>10}  {i.get('sealed', '')}", markup=False)


def select(
    ctx: typer.Context,
    source: Annotated[list[str] | None, typer.Option("--source", help="from this source (repeatable)")] = None,
    batch: Annotated[list[str] | None, typer.Option("--batch", help="in this batch (repeatable)")] = None,
    file_type: Annotated[list[str] | None, typer.Option("--type", help="file type, e.g. jpg or JPG (repeatable)")] = None,
    since: Annotated[str | None, typer.Option(help="downloaded at or after (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")] = None,
    until: Annotated[str | None, typer.Option(help="downloaded before (YYYY-MM-DD or YYYY-MM-DDTHH:MM)")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY or KEY=VALUE (repeatable)")] = None,
    result: Annotated[list[str] | None, typer.Option(
        "--result", help="ACTION.COLUMN OP VALUE of an action's result table, e.g. 'maskr.score>0.5' "
                         "(repeatable)")] = None,
    ancestor: Annotated[str | None, typer.Option("--has-ancestor", help="a node (sha256) above it")] = None,
    text: Annotated[str | None, typer.Option("--text", help="words of the title, author, user name or metadata "
                                                "values, all of them (the GUI's asset search)")] = None,
    black_listed: Annotated[bool, typer.Option("--include-black-listed", help="also black-listed nodes")] = False,
    min_size: Annotated[int | None, typer.Option("--min-size", min=0, help="whose file is at least this many bytes")] = None,
    max_size: Annotated[int | None, typer.Option("--max-size", min=0, help="whose file is at most this many bytes")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many")] = None,
    from_file: Annotated[Path | None, typer.Option("--file", help="a selector as JSON (docs/selectors.md)")] = None,
    view: Annotated[bool, typer.Option("--view", help="print `SHA256  PATH` lines for `hoard view add NAME -`")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per node")] = False,
) -> None:
    """Select nodes from the database: flags, or a selector file (`--file`). Prints sha256 and
    size per node; `--view` prints a view manifest (`hoard select … --view | hoard view add NAME -`)."""


    data = read_selector(from_file) if from_file is not None else {}
    data.setdefault("sources", source or [])
    data.setdefault("batches", batch or [])
    data.setdefault("file_types", [_file_type(t) for t in file_type or []])
    data.setdefault("include_black_listed", black_listed)
    for flag, op, value in (("--since", "ge", since), ("--until", "lt", until)):
        if value is not None:
            data.setdefault("metadata", []).append({"field": "download_time", "op": op, "value": _when(flag, value)})
    for lb in label or []:
        key, _, value = lb.partition("=")
        data.setdefault("labels", []).append({"key": key, "value": value or None})
    for predicate in result or []:  # the short form of a result predicate (docs/selectors.md)
        data.setdefault("results", []).append(predicate)
    if text is not None:
        data["text"] = text
    if ancestor:
        data.setdefault("has_ancestor", []).append({"sha256": ancestor.lower(), "max_depth": 32})
    for key, size in (("min_size", min_size), ("max_size", max_size)):
        if size is not None:
            flag = "--" + key.replace("_", "-")
            if data.get(key, size) != size:  # a flag fills in what the file leaves out, never overrides it
                raise HoardError(f"{flag} {size}: the selector file {display(str(from_file))} says {key} = "
                                 f"{data[key]!r}; give one of them", ExitCode.USAGE)
            data[key] = size
    if min_size is not None and max_size is not None and min_size > max_size:
        raise HoardError(f"--min-size {min_size} is more than --max-size {max_size}: no file is both; swap them",
                         ExitCode.USAGE)
    if limit:
        data["limit"] = limit
    selector = parse_selector(data)
    with psycopg.connect(state(ctx).settings.database_url, connect_timeout=10) as conn:
        try:
            nodes = query_nodes(conn, selector)
        except psycopg.errors.DataError as e:  # a value of the selector file the column cannot take
            raise HoardError(f"selector rejected: {first_line(e)}", ExitCode.USAGE) from None
        paths = _view_paths(conn, nodes.sha256, selector.batches) if view else {}
        if not nodes.sha256:
            _unknown_sources(conn, state(ctx).settings, selector.sources)
    if view:
        print_lines(f"{sha}  {path}" for sha in nodes.sha256 for path in paths.get(sha) or [sha])
    elif as_json:
        print_lines(json.dumps({"sha256": sha, "size": size})
                    for sha, size in zip(nodes.sha256, nodes.sizes, strict=True))
    else:
        print_lines(f"{sha}  {size:>12,}" for sha, size in zip(nodes.sha256, nodes.sizes, strict=True))
    err.print(f"{len(nodes.sha256)} nodes", markup=False)


def read_selector(path: Path) -> dict[str, Any]:
    """The JSON object of a selector file (`-` = stdin; docs/selectors.md), unchecked."""
    try:
        data = json.loads(read_input(path, "selector file"))
    except ValueError as e:
        raise HoardError(f"selector file {display(str(path))} is not JSON: {e}", ExitCode.USAGE) from None
    if not isinstance(data, dict):
        raise HoardError(f"selector file {display(str(path))}: a JSON object is expected (docs/selectors.md)",
                         ExitCode.USAGE)
    return data


def _when(flag: str, value: str) -> str:
    """A --since/--until value, checked here (PostgreSQL's answer to a bad one is a traceback)."""
    try:
        dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise HoardError(f"{flag} {display(value)!r} is not a date; give YYYY-MM-DD or YYYY-MM-DDTHH:MM "
                         f"(e.g. {flag} 2026-01-31)", ExitCode.USAGE) from None
    return value.strip()


def _file_type(value: str) -> str:
    """A --type value: an extension in any case, with or without its dot (`JPG`, `.jpg` → `jpg`)."""
    ext = value.strip().lower().removeprefix(".")
    if not re.fullmatch(r"[a-z0-9]{1,10}", ext):
        raise HoardError(f"--type {display(value)!r} is not a file type; give an extension of 1-10 letters "
                         "or digits, e.g. --type jpg", ExitCode.USAGE)
    return ext


def _unknown_sources(conn, settings, sources: list[str]) -> None:
    """Zero nodes: name each --source no batch or configuration knows, with the closest known names
    (a typo otherwise looks like an empty source)."""

    if not sources:
        return
    known = set(source_names(conn)) | set(known_sources(settings.sources))
    for name in sources:
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        hint = ("did you mean " + " or ".join(repr(c) for c in close) + "?") if close else \
            f"known: {', '.join(sorted(known)) or 'none yet'}"
        err.print(f"no source {name!r}; {hint}", markup=False)


def _view_paths(conn, shas: list[str], batches: list[str]) -> dict[str, list[str]]:
    """The paths of each node in a view: its original paths in the selected batches (all of
    them: a file a batch holds twice appears twice), or, when no batch was selected, in the
    first batch that has it. Unique within the view: a path already taken by other bytes gets
    the sha256 prefix in front."""
    by_sha: dict[str, list[tuple[str | None, str]]] = {}
    for sha, locator in locators(conn, [bytes.fromhex(s) for s in shas]):
        batch, sep, rel = locator.removeprefix("batch:").partition("/")
        if locator.startswith("batch:") and sep:
            by_sha.setdefault(bytes(sha).hex(), []).append((batch, rel))
    out_: dict[str, list[str]] = {}
    taken: dict[str, str] = {}  # path → the sha256 under it
    for h, locs in by_sha.items():
        mine = [rel for b, rel in locs if b in batches] or [rel for b, rel in locs if b == locs[0][0]]
        for path in dict.fromkeys(mine):
            if taken.setdefault(path, h) != h:
                path = f"{h[:12]}-{path.rsplit('/', 1)[-1]}"
                taken[path] = h
            out_.setdefault(h, []).append(path)
    return out_
