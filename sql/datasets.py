"""SQL of datasets (datasets/plan.py, datasets/api.py): what a sample needs of its node —
labels, lineage to the root, the root's source URL and date, boxes of the result tables — in
a few set-based queries per chunk (no query per node), and the `dataset` / `dataset_version`
rows of migration 011."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import psycopg

#: nodes per round trip
CHUNK = 50_000
#: a lineage longer than this is cut (a cycle the edge table does not forbid would never end)
MAX_DEPTH = 64
#: raw_metadata keys naming where a root came from, first found wins
URL_KEYS = ("source_url", "webpage_url", "url", "permalink", "original_url")


def sample_rows(conn: psycopg.Connection, node_ids: Sequence[int], ocr_boxes: bool = False) -> dict[int, dict[str, Any]]:
    """node_id → {sha256 (hex), size, file_type, labels {key: [values, sorted]}, lineage [node, parent,
    …, root] (at each step the parent with the lowest node id), root_id, source_url, date
    (YYYY-MM-DD of the root's download time), raw_metadata of the node (licences), ocr boxes
    [(x, y, w, h, text)] when `ocr_boxes`}."""
    rows: dict[int, dict[str, Any]] = {}
    for i in range(0, len(node_ids), CHUNK):
        ids = list(node_ids[i:i + CHUNK])
        for nid, sha, size, ftype in conn.execute(
                "SELECT n.node_id, encode(n.sha256, 'hex'), pc.size, pc.file_type FROM node n "
                "JOIN physical_content pc USING (node_id) WHERE n.node_id = ANY(%s) "
                # a dataset's own manifest and dataset.json (located only `dataset:…`) are never its samples
                "AND NOT (EXISTS (SELECT 1 FROM physical_path pp WHERE pp.node_id = n.node_id "
                "             AND pp.locator LIKE 'dataset:%%') "
                "         AND NOT EXISTS (SELECT 1 FROM physical_path pp WHERE pp.node_id = n.node_id "
                "             AND pp.locator NOT LIKE 'dataset:%%'))", [ids]):
            rows[nid] = {"node_id": nid, "sha256": sha, "size": size, "file_type": ftype, "labels": {},
                         "lineage": [nid], "boxes": [], "licences": []}
        for nid, key, values in conn.execute(
                "SELECT node_id, key, array_agg(value ORDER BY value COLLATE \"C\") FROM label WHERE node_id = ANY(%s) "
                "GROUP BY node_id, key", [ids]):
            if nid in rows:
                rows[nid]["labels"][key] = values
        for start, path in conn.execute(
                "WITH RECURSIVE up(start, node_id, depth) AS ("
                " SELECT s, s, 0 FROM unnest(%s::bigint[]) s"
                " UNION ALL SELECT up.start, (SELECT min(e.parent_id) FROM edge e WHERE e.child_id = up.node_id),"
                " up.depth + 1 FROM up WHERE up.depth < %s"
                " AND EXISTS (SELECT 1 FROM edge e WHERE e.child_id = up.node_id))"
                "SELECT start, array_agg(node_id ORDER BY depth) FROM up GROUP BY start", [ids, MAX_DEPTH]):
            if start in rows:
                rows[start]["lineage"] = list(path)
        wanted = sorted({r["lineage"][-1] for r in rows.values()} | set(ids))
        meta: dict[int, tuple[Any, Any]] = {}
        for nid, dl, raw in conn.execute(
                "SELECT DISTINCT ON (cm.node_id) cm.node_id, cm.download_time, cm.raw_metadata "
                "FROM common_metadata cm JOIN source s USING (source_id) WHERE cm.node_id = ANY(%s) "
                "ORDER BY cm.node_id, s.name", [wanted]):
            meta[nid] = (dl, raw)
        for nid in ids:
            if nid not in rows:
                continue
            r = rows[nid]
            dl, raw = meta.get(r["lineage"][-1], (None, None))
            r["root_id"] = r["lineage"][-1]
            r["source_url"] = next((str(raw[k]) for k in URL_KEYS if isinstance(raw, dict) and raw.get(k)), None)
            r["date"] = dl.astimezone(dt.UTC).date().isoformat() if dl is not None else None
            licences = set()
            for holder in (meta.get(nid, (None, None))[1], raw):
                if isinstance(holder, dict):
                    licences |= {str(holder[k]) for k in ("license", "licence") if holder.get(k)}
            r["licences"] = sorted(licences)
        if ocr_boxes:
            for nid, x, y, w, h, text in conn.execute(
                    "SELECT node_id, x, y, w, h, text FROM result_ocr_box WHERE node_id = ANY(%s) "
                    "ORDER BY node_id, batch_id, box_no", [ids]):
                if nid in rows:
                    rows[nid]["boxes"].append((float(x), float(y), float(w), float(h), text))
    return rows


# -- dataset and dataset_version ------------------------------------------------------------------

COLUMNS = ("name", "version", "spec", "spec_sha256", "manifest_sha256", "doc_sha256", "fingerprint", "output_id",
           "path", "mode", "files", "bytes", "counts", "status", "built_at")


def class_map(conn: psycopg.Connection, name: str) -> list[str] | None:
    row = conn.execute("SELECT class_map FROM dataset WHERE name = %s", [name]).fetchone()
    return list(row[0]) if row else None


def class_maps(conn: psycopg.Connection) -> dict[str, list[str]]:
    return {name: list(cm) for name, cm in conn.execute("SELECT name, class_map FROM dataset ORDER BY name")}


def drop_building(conn: psycopg.Connection, name: str, number: int) -> None:
    """Forget a version whose build was refused before a byte moved (the zone too full)."""
    conn.execute("DELETE FROM dataset_version WHERE name = %s AND version = %s AND status = 'building'",
                 [name, number])


def save_class_map(conn: psycopg.Connection, name: str, classes: list[str]) -> None:
    conn.execute("INSERT INTO dataset (name, class_map) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                 "SET class_map = EXCLUDED.class_map", [name, json.dumps(classes)])


def _row(r: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(COLUMNS, r))
    for k in ("manifest_sha256", "doc_sha256"):
        d[k] = bytes(d[k]).hex() if d[k] is not None else None
    d["built_at"] = d["built_at"].isoformat(timespec="seconds")
    order = (d["spec"].get("split") or {}).get("order") or []  # jsonb sorts keys: the splits in the spec's order
    d["counts"] = {k: d["counts"][k] for k in [*order, *sorted(set(d["counts"]) - set(order))] if k in d["counts"]}
    return d


def versions(conn: psycopg.Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every version (of `name`), by name then version."""
    cols = ", ".join(COLUMNS)
    if name is None:
        rows = conn.execute(f"SELECT {cols} FROM dataset_version ORDER BY name, version").fetchall()
    else:
        rows = conn.execute(f"SELECT {cols} FROM dataset_version WHERE name = %s ORDER BY version", [name]).fetchall()
    return [_row(r) for r in rows]


def version(conn: psycopg.Connection, name: str, number: int) -> dict[str, Any] | None:
    r = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM dataset_version WHERE name = %s AND version = %s",
                     [name, number]).fetchone()
    return _row(r) if r else None


def unfinished(status: str, manifest_sha256: Any) -> bool:
    """A version whose build never finished (killed): `building` and no manifest recorded yet.
    Only such a version is resumed by the next build; one that finished once (it has its
    manifest) is never built over, whatever its status says."""
    return status == "building" and manifest_sha256 is None


def begin_version(conn: psycopg.Connection, name: str, spec: dict, spec_sha: str, fingerprint: str, mode: str,
                  output_path: str) -> int:
    """The version a build writes: the newest one if it never finished (`unfinished`: a killed
    build; the re-run resumes its output), else a new one. Its row says `building` until `finish_version`."""
    with conn.transaction():
        conn.execute("INSERT INTO dataset (name) VALUES (%s) ON CONFLICT DO NOTHING", [name])
        conn.execute("SELECT 1 FROM dataset WHERE name = %s FOR UPDATE", [name])
        last = conn.execute("SELECT version, status, manifest_sha256 FROM dataset_version WHERE name = %s "
                            "ORDER BY version DESC LIMIT 1", [name]).fetchone()
        n = last[0] if last and unfinished(last[1], last[2]) else (last[0] + 1 if last else 1)
        out = f"{name}-v{n}"
        conn.execute(
            "INSERT INTO dataset_version (name, version, spec, spec_sha256, fingerprint, output_id, path, mode, status) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'building') ON CONFLICT (name, version) DO UPDATE SET "
            "spec = EXCLUDED.spec, spec_sha256 = EXCLUDED.spec_sha256, fingerprint = EXCLUDED.fingerprint, "
            "mode = EXCLUDED.mode, built_at = now()",
            [name, n, json.dumps(spec), spec_sha, fingerprint, out, f"{output_path}/{out}", mode])
    return n


def finish_version(conn: psycopg.Connection, name: str, number: int, manifest_sha: str, doc_sha: str, files: int,
                   nbytes: int, counts: dict, path: str) -> None:
    conn.execute("UPDATE dataset_version SET manifest_sha256 = %s, doc_sha256 = %s, files = %s, bytes = %s, "
                 "counts = %s, status = 'done', path = %s WHERE name = %s AND version = %s",
                 [bytes.fromhex(manifest_sha), bytes.fromhex(doc_sha), files, nbytes, json.dumps(counts), path, name,
                  number])


def drop_stale_locators(conn: psycopg.Connection, located: Sequence[tuple[str, str]]) -> list[str]:
    """Take each locator off the nodes it names other than its given sha256 (hex); mark those
    nodes deleted when nothing else holds them (no other locator, no batch). The sha256s of
    the nodes that lost a locator, sorted. Run in the caller's transaction."""
    stale: set[int] = set()
    shas: set[str] = set()
    for locator, sha in located:
        for nid, h in conn.execute(
                "DELETE FROM physical_path pp USING node n WHERE pp.node_id = n.node_id AND pp.locator = %s "
                "AND n.sha256 <> %s RETURNING n.node_id, encode(n.sha256, 'hex')", [locator, bytes.fromhex(sha)]):
            stale.add(nid)
            shas.add(h)
    if stale:
        conn.execute("UPDATE physical_content pc SET is_deleted = true WHERE pc.node_id = ANY(%s) "
                     "AND NOT EXISTS (SELECT 1 FROM physical_path pp WHERE pp.node_id = pc.node_id) "
                     "AND NOT EXISTS (SELECT 1 FROM batch_member bm WHERE bm.node_id = pc.node_id)", [sorted(stale)])
    return sorted(shas)


def undelete(conn: psycopg.Connection, shas: Sequence[str]) -> None:
    conn.execute("UPDATE physical_content pc SET is_deleted = false FROM node n WHERE n.node_id = pc.node_id "
                 "AND n.sha256 = ANY(%s) AND pc.is_deleted", [[bytes.fromhex(h) for h in shas]])


def set_status(conn: psycopg.Connection, name: str, number: int, status: str) -> None:
    conn.execute("UPDATE dataset_version SET status = %s WHERE name = %s AND version = %s", [status, name, number])
