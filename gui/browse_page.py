"""`/batches`, `/assets`, `/node/{sha256}`: what was ingested, found by source, batch, date and
metadata; one node with its metadata, labels, parents and children (depth-limited), its paths
in the FUSE mount, and the low-quality flag (`in_black_list`). Reads go through `hoardfs.sql.browse`
(bounded queries); thumbnails are `hoardfs.fsd.outputs.thumbs`'s, served here."""

from __future__ import annotations

import datetime as dt
import html
import json
from urllib.parse import urlencode

import psycopg
from fastapi.responses import FileResponse, Response
from nicegui import app, ui

from hoardfs.base.errors import HoardError
from hoardfs.base.paths import by_hash_path
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.outputs import thumbs
from hoardfs.gui import charts, text
from hoardfs.gui.auth import require
from hoardfs.gui.context import AppStopping, ctx, in_thread, page, stopping
from hoardfs.gui.frame import db_down, frame, page_number
from hoardfs.gui.state import STORE_LOCK
from hoardfs.gui.text import shown
from hoardfs.jobs import clip_model, ingest
from hoardfs.sql import browse, neardup

PER_PAGE = 48
#: an image's near-duplicates its node page shows (the nearest)
NEAR_SHOWN = 24


def _db(fn, *args, **kwargs):
    """Run one hoardfs.sql.browse call on its own connection (blocking: run it `in_thread`)."""
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        return fn(conn, *args, **kwargs)


def _date(s: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(s) if s else None
    except ValueError:
        return None


def mount_paths(sha256: str, ext: str | None, locators: list[str]) -> list[str]:
    """Where the node shows in the FUSE mount (docs/mount.md): by-hash/ and each batch path."""
    root = str(ctx().cfg.mount.path or "<mount>")
    out = [f"{root}/{by_hash_path(sha256, ext)}"]
    out += [f"{root}/batches/{loc.removeprefix('batch:')}" for loc in locators if loc.startswith("batch:")]
    return out


def thumb_img(sha256: str, size: str) -> ui.element:
    """A plain <img> of the object's thumbnail, loaded lazily: a page of 48 Quasar QImg
    components (spinner, ratio box, transitions each) took seconds to render in a browser."""
    return ui.element("img").props(f'src="/thumb/{sha256}" loading="lazy" alt=""').classes(
        f"{size} object-contain").mark("thumb")


def relatives_list(rows: list[dict]) -> ui.html:
    """A node's parents or children as one HTML list (a row of two elements each took a 200-child
    post's page past a second); stable ids and types come from scraped data: every value
    HTML-escaped, its hidden characters written out (`shown`; `relative_name` does it for the
    name) — the one `ui.html` of the GUI, audited in docs/security.md."""
    items = []
    for r in rows:
        what = charts.relative_name(r, 16)
        items.append(f'<li style="margin-left:{(r["depth"] - 1) * 1.5}em"><span class="text-caption">'
                     f'{html.escape(shown(r["rel"]))} (depth {r["depth"]})</span> '
                     f'<a href="/node/{html.escape(r["sha256"])}">{html.escape(what)}</a></li>')
    return ui.html(f'<ul class="q-ml-md" style="list-style:none;padding:0">{"".join(items)}</ul>')


async def _near_duplicates(sha256: str) -> None:
    """The node page's near-duplicates of an image (hoardfs.sql.neardup.near_of, by the indexed quarters
    of its pHash), nearest first, each a thumbnail linking to its node; the /dups page groups them all."""
    try:
        near = await in_thread(_db, neardup.near_of, sha256, neardup.DEFAULT_THRESHOLD, limit=NEAR_SHOWN)
    except (psycopg.Error, HoardError) as e:  # a missing table included (`hoard db migrate`)
        text.label(f"near-duplicates: {e}").classes("text-caption text-negative")
        return
    with ui.row().classes("items-center"):
        ui.label("Near-duplicates").classes("text-h6")
        ui.link("all groups", f"/dups?threshold={neardup.DEFAULT_THRESHOLD}").classes("q-ml-sm")
    if not near:
        ui.label(f"none within {neardup.DEFAULT_THRESHOLD} bits among the hashed images (the action near-dup-hash "
                 "hashes them)").classes("text-caption").mark("node-near-none")
        return
    with ui.row().classes("gap-2").mark("node-near"):
        for sha, d, mirrored in near:
            with ui.link(target=f"/node/{sha}").classes("column items-center"):
                thumb_img(sha, "w-24 h-24")
                ui.label(f"{d} bits" + (", mirror image" if mirrored else "")).classes("text-caption")


def _search_text(text_: str) -> tuple[str, list]:
    with psycopg.connect(ctx().cfg.database_url, connect_timeout=5) as conn:
        return clip_model.search_text(ctx().cfg, conn, text_, PER_PAGE, lambda line: None)


async def _looks_like(query: str) -> None:
    """The images nearest a text by their CLIP embeddings (hoardfs.jobs.clip_model.search_text, as `hoard
    search`), nearest first, each a thumbnail with its similarity linking to its node. The query
    and every name are shown as text, never as markup."""
    try:
        model, hits = await in_thread(_search_text, query)
    except clip_model.NothingEmbedded as e:
        text.label(e.message).classes("text-caption").mark("assets-looks-none")
        return
    except HoardError as e:
        text.label(e.message).classes("text-negative").mark("assets-refused")
        return
    except psycopg.Error as e:
        db_down(e)
        return
    text.label(f"{len(hits)} images nearest “{query}” ({model}); the other filters do not apply to this "
               "search").classes("text-caption").mark("assets-looks-caption")
    with ui.row().classes("w-full").mark("assets-looks-results"):
        for h in hits:
            with ui.link(target=f"/node/{h.sha256}").classes("no-underline text-black"):
                with ui.card().classes("w-44 q-pa-xs").props(f'data-testid="look-{h.sha256[:12]}"'):
                    thumb_img(h.sha256, "w-40 h-40")
                    text.label(h.locator.split("/")[-1][:40] or h.sha256[:16]).classes("text-caption")
                    ui.label(f"similarity {h.score:.3f}").classes("text-caption text-grey-7")


def register() -> None:
    @app.get("/thumb/{sha256}")
    async def thumb(sha256: str) -> Response:
        try:
            p = await in_thread(thumbs.thumbnail, ctx().cfg, sha256, STORE_LOCK)
        except HoardError as e:
            return Response(e.message, status_code=503, media_type="text/plain")
        except AppStopping:
            return stopping()
        if p is None:
            return Response(status_code=404)
        return FileResponse(p, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @page("/batches")
    async def batches_page(source: str = "", page: int = 1) -> None:
        page = page_number(page)
        with frame("Batches"):
            try:
                rows, total = await in_thread(_db, browse.batches, source or None, PER_PAGE, (page - 1) * PER_PAGE)
                names = await in_thread(_db, browse.sources)
            except psycopg.Error as e:
                db_down(e)
                return
            ui.select({"": "every source", **{n: n for n in names}}, value=source, label="source",
                      on_change=lambda e: ui.navigate.to(f"/batches?{urlencode({'source': e.value} if e.value else {})}")
                      ).classes("w-48")
            ingested = ctx().cache.get().ingested
            if ingested:
                ui.echart(charts.ingested_per_day(ingested)).classes("w-full h-56")
            ui.label(f"{total} batches").classes("text-caption")
            with ui.grid(columns=6).classes("gap-x-6 gap-y-1 items-center"):
                for head in ("batch", "source", "members", "ingest", "created", "sealed"):
                    ui.label(head).classes("text-bold")
                for r in rows:
                    try:
                        st = ingest.load_state(ctx().cfg, r["batch_id"])
                    except HoardError:  # not the service's own file, or damaged: its run page says which
                        st = None
                    ui.link(shown(r["batch_id"]), f"/assets?{urlencode({'batch': r['batch_id']})}")
                    text.label(r["source"] or r["action"])
                    ui.label(f"{r['members']:,}")
                    ui.link("deleted" if r["deleted"] else st.status if st else (r["last_event"] or "-"),
                            f"/runs/ingest/{r['batch_id']}")
                    ui.label(f"{r['created_at']:%Y-%m-%d %H:%M}")
                    ui.label(f"{r['sealed_at']:%Y-%m-%d %H:%M}" if r["sealed_at"] else "open")
            with ui.row():
                if page > 1:
                    ui.link("← newer", f"/batches?{urlencode({'source': source, 'page': page - 1})}")
                if page * PER_PAGE < total:
                    ui.link("older →", f"/batches?{urlencode({'source': source, 'page': page + 1})}")

    @page("/assets")
    async def assets_page(source: str = "", batch: str = "", since: str = "", until: str = "", q: str = "",
                          kind: str = "", label: str = "", looks: str = "", page: int = 1) -> None:
        page = page_number(page)
        current = {"source": source, "batch": batch, "since": since, "until": until, "q": q, "label": label,
                   "kind": kind, "looks": looks}

        def go(**change: str) -> None:
            ui.navigate.to(f"/assets?{urlencode({k: v for k, v in (current | change).items() if v})}")

        with frame("Assets"):
            with ui.row().classes("items-end"):
                fields = {}
                for key, caption in (("source", "source"), ("batch", "batch"), ("since", "from (YYYY-MM-DD)"),
                                     ("until", "until (YYYY-MM-DD)"), ("q", "words in title, author, metadata"),
                                     ("label", "label (key or key=value)"),
                                     ("looks", "images that look like (text)")):
                    fields[key] = ui.input(caption, value=current[key]).classes("w-44").mark(f"assets-{key}")
                    fields[key].on("keydown.enter", lambda: go(**{k: f.value.strip() for k, f in fields.items()}))
                ui.select({"": "any kind", "image": "image", "video": "video", "audio": "audio", "text": "text"},
                          value=kind, label="kind", on_change=lambda e: go(kind=e.value)).classes("w-32")
                ui.button("Search", on_click=lambda: go(**{k: f.value.strip() for k, f in fields.items()})).mark(
                    "assets-search")
            if looks.strip():
                await _looks_like(looks.strip())
                return
            bad = [label for value, label in ((since, "from"), (until, "until")) if value and _date(value) is None]
            if bad:  # never an unfiltered listing for a filter that did not parse
                ui.label(f"{' and '.join(bad)}: not a date; write it as YYYY-MM-DD").classes("text-negative")
                return
            try:
                rows = await in_thread(_db, browse.search, source or None, batch or None, _date(since),
                                       _date(until), q or None, kind or None, PER_PAGE + 1, (page - 1) * PER_PAGE,
                                       label=label or None)
            except browse.BadSearch as e:
                ui.label(e.message).classes("text-negative").mark("assets-refused")
                return
            except psycopg.Error as e:
                db_down(e)
                return
            more, rows = len(rows) > PER_PAGE, rows[:PER_PAGE]
            ui.label(f"{len(rows)} assets on page {page}" if rows else "nothing matches").classes("text-caption")
            with ui.row().classes("w-full"):
                for r in rows:
                    with ui.link(target=f"/node/{r['sha256']}").classes("no-underline text-black"):
                        with ui.card().classes("w-44 q-pa-xs").props(f'data-testid="asset-{r["sha256"][:12]}"'):
                            if r["kind"] == "image" or r["poster"]:
                                thumb_img(r["poster"] or r["sha256"], "w-40 h-40")
                            else:
                                ui.icon({"video": "movie", "audio": "audiotrack", "text": "description"}.get(
                                    r["kind"], "insert_drive_file"), size="5em").classes("q-mx-auto")
                            text.label((r["title"] or (r["locator"] or r["sha256"][:16]).split("/")[-1])[:40]).classes(
                                "text-caption")
                            ui.label(f"{r['file_type'] or '?'} · {r['size']:,} B"
                                     + (" · flagged" if r["in_black_list"] else "")).classes("text-caption text-grey-7")
            with ui.row():
                if page > 1:
                    ui.link("← newer", f"/assets?{urlencode({k: v for k, v in current.items() if v} | {'page': page - 1})}")
                if more:
                    ui.link("older →", f"/assets?{urlencode({k: v for k, v in current.items() if v} | {'page': page + 1})}")

    @page("/node/{sha256}")
    async def node_page(sha256: str, depth: int = 1) -> None:
        with frame(f"node {sha256[:16]}…") as user:
            try:
                n = await in_thread(_db, browse.node, sha256, depth)
            except HoardError as e:
                ui.label(e.message).classes("text-negative")
                return
            except psycopg.Error as e:
                db_down(e)
                return
            ui.label(n["sha256"]).classes("text-mono text-caption")
            with ui.row().classes("items-start w-full"):
                if n.get("kind") == "image" or n["poster"]:
                    thumb_img(n["poster"] or n["sha256"], "w-64 h-64")
                with ui.column():
                    if n["is_virtual"]:
                        text.label(f"virtual {n['virtual_kind']}: {n['description']}")
                    else:
                        ui.label(f"{n['file_type'] or 'unknown type'} ({n['kind'] or '-'}), {fmt_bytes(n['size'])} "
                                 f"({n['size']:,} bytes)" + (", deleted (type A)" if n["is_deleted"] else ""))
                        ui.label("flagged low quality (in_black_list): selectors leave it out"
                                 if n["in_black_list"] else "not flagged").mark("node-flag-state")
                        if user.may("flag"):
                            async def toggle(to: bool) -> None:
                                require("flag")
                                await in_thread(_db, browse.set_black_list, n["sha256"], to)
                                ui.navigate.reload()

                            ui.button("Unflag" if n["in_black_list"] else "Flag low quality",
                                      on_click=lambda: toggle(not n["in_black_list"])).mark("node-flag")
                    text.label(f"batches: {', '.join(n['batches']) or '-'}")
                    for m in n.get("made_by", []):
                        text.label(f"made by {m['action']}" + (f" v{m['version']}" if m["version"] else "")
                                   + f", run {m['run']}").mark("node-made-by")
                    ui.label("In the FUSE mount:").classes("text-bold q-mt-sm")
                    for p in mount_paths(n["sha256"], n.get("file_type"), n["paths"]):
                        text.label(p).classes("text-mono text-caption")
                    if not ctx().cfg.mount.path:
                        ui.label("(mount.path is not set in hoard.toml: `hoard mount PATH` serves the store)").classes(
                            "text-caption text-grey-7")
            if n["metadata"]:
                ui.label("Metadata").classes("text-h6")
                for m in n["metadata"]:
                    with ui.card().classes("w-full"):
                        text.label(f"source {m['source']}").classes("text-bold")
                        for k in ("title", "author", "user_name", "view_count", "update_time", "download_time"):
                            if m.get(k) is not None:
                                text.label(f"{k}: {m[k]}")
                        if m.get("raw_metadata"):
                            text.pre(json.dumps(m["raw_metadata"], indent=1, ensure_ascii=False, default=str)
                                     ).mark("node-raw-metadata")
            if n.get("kind") == "image":
                await _near_duplicates(n["sha256"])
            ui.label("Labels").classes("text-h6")
            for lab in n["labels"]:
                text.label(f"{lab['key']} = {lab['value']} ({lab['origin']})")
            if not n["labels"]:
                ui.label("none").classes("text-caption")
            with ui.row().classes("items-center"):
                ui.label("Parents and children").classes("text-h6")
                for d in range(1, browse.MAX_DEPTH + 1):
                    ui.link(f"depth {d}", f"/node/{n['sha256']}?depth={d}").classes("q-ml-sm")
            if n["parents"] or n["children"]:
                ui.echart(charts.lineage(n)).classes("w-full h-72").mark("lineage")
                if max(len(n["parents"]), len(n["children"])) > charts.GRAPH_MAX:
                    ui.label(f"the graph draws the nearest {charts.GRAPH_MAX} on each side; the lists below "
                             "have them all").classes("text-caption")
            for direction in ("parents", "children"):
                ui.label(f"{direction} ({len(n[direction])}" + (f"; more exist: the nearest {browse.MAX_RELATIVES} "
                         "are shown)" if n[f"{direction}_cut"] else ")")).classes("text-bold")
                if n[direction]:
                    relatives_list(n[direction]).mark(f"node-{direction}")
