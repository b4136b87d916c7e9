"""ECharts options for the dashboards' charts, built from the snapshot (no query of their own)."""

from __future__ import annotations

import math
from typing import Any

from hoardfs.gui.text import shown

GIB = 1024**3
#: ECharts' tooltips are HTML by default; drawn on the canvas instead, a name in them (a disk
#: label, a source named by a _READY file) can never be markup (docs/security.md)
TOOLTIP = {"trigger": "axis", "renderMode": "richText"}


def disk_usage(disks: list[dict[str, Any]]) -> dict[str, Any]:
    """Used and free GiB per disk, stacked."""
    labels = [d["label"] for d in disks]
    used = [round((d.get("used_bytes") or 0) / GIB, 3) for d in disks]
    free = [round((d.get("free_bytes") or 0) / GIB, 3) for d in disks]
    return {"title": {"text": "disks (GiB)", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "legend": {"data": ["used", "free"], "right": 0, "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 30},
            "xAxis": {"type": "value"}, "yAxis": {"type": "category", "data": labels},
            "series": [{"name": "used", "type": "bar", "stack": "d", "data": used, "itemStyle": {"color": "#1e88e5"}},
                       {"name": "free", "type": "bar", "stack": "d", "data": free, "itemStyle": {"color": "#cfd8dc"}}]}


def zone_usage(zones: dict[str, dict[str, Any]], marks: tuple[float, float, float]) -> dict[str, Any]:
    """Used + reserved share of each zone's quota, with the warn/deny/emergency lines."""
    names = list(zones)
    pct = [round(100 * zones[z].get("used_ratio", 0), 1) for z in names]
    # deny's name below the axis, the others above: 90 and 95 % are too close for two names
    lines = [{"xAxis": round(100 * m), "name": n, "lineStyle": {"color": c}, "label": {"position": p}}
             for m, n, c, p in zip(marks, ("warn", "deny", "emergency"), ("#ef6c00", "#d84315", "#b71c1c"),
                                   ("end", "start", "end"), strict=True)]
    return {"title": {"text": "SSD zones (% of quota)", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "grid": {"left": 60, "right": 30, "top": 40, "bottom": 40},
            "xAxis": {"type": "value", "max": 100}, "yAxis": {"type": "category", "data": names},
            "series": [{"name": "used", "type": "bar", "data": pct, "itemStyle": {"color": "#1e88e5"},
                        "markLine": {"symbol": "none", "label": {"formatter": "{b}"}, "data": lines}}]}


def ingested_per_day(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Files ingested per day, one line per source."""
    days = sorted({str(r["day"]) for r in rows})
    sources = sorted({r["source"] for r in rows})
    by = {(str(r["day"]), r["source"]): r["items"] for r in rows}
    return {"title": {"text": "files ingested per day", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "legend": {"data": sources, "right": 0, "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 30},
            "xAxis": {"type": "category", "data": days}, "yAxis": {"type": "value"},
            "series": [{"name": s, "type": "bar", "stack": "s", "data": [by.get((d, s), 0) for d in days]}
                       for s in sources]}


def _series_by_name(points: list[Any], kind: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in points:
        if p.kind == kind:
            out.setdefault(p.name, []).append(p)
    return out


def disk_history(points: list[Any]) -> dict[str, Any]:
    """Used GiB per disk over time (`hoardfs.jobs.usage.history`); a bucket in which the disk could not
    be read has no value, so its line breaks there instead of falling to zero."""
    series = [{"name": name, "type": "line", "showSymbol": False,
               "data": [[p.at.isoformat(), None if p.used_bytes is None else round(p.used_bytes / GIB, 3)]
                        for p in pts]}
              for name, pts in sorted(_series_by_name(points, "disk").items())]
    return {"title": {"text": "disk usage over time (GiB used)", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "legend": {"data": [s["name"] for s in series], "right": 0, "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 30},
            "xAxis": {"type": "time"}, "yAxis": {"type": "value"}, "series": series}


def smart_history(points: list[Any]) -> dict[str, Any]:
    """Each drive's temperature (°C, left axis) and its reallocated, pending and uncorrectable
    sectors (right axis) over time (`hoardfs.jobs.usage.histories`: `smart_sample`); a bucket with no
    reading has no value, so the line breaks."""
    by: dict[str, list[Any]] = {}
    for p in points:
        by.setdefault(p.disk, []).append(p)
    series: list[dict[str, Any]] = []
    for disk, pts in sorted(by.items()):
        series.append({"name": f"{disk} °C", "type": "line", "showSymbol": False, "yAxisIndex": 0,
                       "data": [[p.at.isoformat(), p.temperature_c] for p in pts]})
        for field, what in (("reallocated", "reallocated"), ("pending", "pending"), ("uncorrectable", "uncorrectable"),
                            ("media_errors", "media errors")):
            if any(getattr(p, field) is not None for p in pts):
                series.append({"name": f"{disk} {what}", "type": "line", "step": "end", "showSymbol": False,
                               "yAxisIndex": 1, "data": [[p.at.isoformat(), getattr(p, field)] for p in pts]})
    return {"title": {"text": "drives' SMART over time (°C; sectors)", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "legend": {"data": [s["name"] for s in series], "right": 0, "top": 0, "type": "scroll"},
            "grid": {"left": 50, "right": 60, "top": 40, "bottom": 30}, "xAxis": {"type": "time"},
            "yAxis": [{"type": "value", "name": "°C"}, {"type": "value", "name": "sectors", "minInterval": 1}],
            "series": series}


def zone_history(points: list[Any], marks: tuple[float, float, float]) -> dict[str, Any]:
    """Used + reserved share of each zone's quota over time, with the warn/deny/emergency lines."""
    def pct(p: Any) -> float | None:
        if p.used_bytes is None or not p.total_bytes:
            return None
        return round(100 * (p.used_bytes + (p.reserved_bytes or 0)) / p.total_bytes, 1)

    series = [{"name": name, "type": "line", "showSymbol": False, "data": [[p.at.isoformat(), pct(p)] for p in pts]}
              for name, pts in sorted(_series_by_name(points, "zone").items())]
    lines = [{"yAxis": round(100 * m), "name": n, "lineStyle": {"color": c, "type": "dashed"}}
             for m, n, c in zip(marks, ("warn", "deny", "emergency"), ("#ef6c00", "#d84315", "#b71c1c"), strict=True)]
    # 100 % at the top, or the highest value above it: 3A fills from outside and can pass its quota
    top = max([100.0] + [v for s in series for _, v in s["data"] if v is not None])
    if series:
        series[0]["markLine"] = {"symbol": "none", "silent": True, "label": {"formatter": "{b} {c}%"}, "data": lines}
    return {"title": {"text": "SSD zones over time (% of quota)", "textStyle": {"fontSize": 14}},
            "tooltip": {**TOOLTIP}, "legend": {"data": [s["name"] for s in series], "right": 0, "top": 0},
            "grid": {"left": 60, "right": 60, "top": 40, "bottom": 30},
            "xAxis": {"type": "time"}, "yAxis": {"type": "value", "max": math.ceil(top / 10) * 10}, "series": series}


def relative_name(r: dict[str, Any], sha_chars: int) -> str:
    """How a parent or child (a row of `hoardfs.sql.browse.node`'s walk) is called: a virtual node by
    its kind and stable id (scraped: its hidden characters written out, hoardfs.gui.text.shown), a file
    by its type and the start of its sha256."""
    if r["is_virtual"]:
        return shown(f"{r['virtual_kind']} {r['stable_id']}")
    return f"{r['file_type'] or 'file'} {r['sha256'][:sha_chars]}…"


#: the most parents (and children) the lineage graph draws: the nearest, so each one's `via` is
#: drawn too; 200 labelled nodes and edges took a browser most of a second (the list has them all)
GRAPH_MAX = 60


def lineage(node: dict[str, Any]) -> dict[str, Any]:
    """A node's parents (left) and children (right) as a graph, one column per depth, each edge
    drawn parent → child with its relationship (`hoardfs.sql.browse.node`'s walk: `via` is the node a
    relative was reached from). A node reached both ways shows on both sides. Names are drawn
    on the canvas and there is no tooltip: stable ids come from scraped metadata, and ECharts'
    tooltips are HTML."""
    root = node["node_id"]
    nodes = [{"id": "root", "name": "this node", "x": 0, "y": 0, "symbolSize": 22, "itemStyle": {"color": "#1e88e5"}}]
    links = []
    for direction, side in (("parents", -1), ("children", 1)):
        drawn = node[direction][:GRAPH_MAX]  # nearest first (hoardfs.sql.browse.node): their vias are drawn too
        key = {r["node_id"]: f"{direction}:{r['node_id']}" for r in drawn} | {root: "root"}
        rows_at: dict[int, int] = {}
        for r in drawn:
            row = rows_at[r["depth"]] = rows_at.get(r["depth"], -1) + 1
            nodes.append({"id": key[r["node_id"]], "name": relative_name(r, 8)[:32], "x": side * r["depth"] * 200,
                          "y": row * 40, "symbolSize": 14,
                          "itemStyle": {"color": "#90a4ae" if r["is_virtual"] else "#43a047"}})
            if r["via"] not in key:  # reached through a relative the walk's limit left out
                continue
            ends = (key[r["node_id"]], key[r["via"]]) if side < 0 else (key[r["via"]], key[r["node_id"]])
            links.append({"source": ends[0], "target": ends[1], "label": {"show": True, "formatter": shown(r["rel"])}})
    return {"tooltip": {"show": False}, "animation": False,
            "series": [{"type": "graph", "layout": "none", "roam": True, "data": nodes, "links": links,
                        "label": {"show": True, "position": "bottom", "fontSize": 11},
                        "edgeSymbol": ["none", "arrow"], "edgeLabel": {"fontSize": 10},
                        "lineStyle": {"color": "#78909c"}}]}
