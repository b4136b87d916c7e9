"""ECharts options for the dashboards' charts, built from the snapshot (no query of their own)."""

from __future__ import annotations

from typing import Any

GIB = 1024**3


def disk_usage(disks: list[dict[str, Any]]) -> dict[str, Any]:
    """Used and free GB per disk, stacked."""
    labels = [d["label"] for d in disks]
    used = [round((d.get("used_bytes") or 0) / GIB, 3) for d in disks]
    free = [round((d.get("free_bytes") or 0) / GIB, 3) for d in disks]
    return {"title": {"text": "disks (GB)", "textStyle": {"fontSize": 14}},
            "tooltip": {"trigger": "axis"}, "legend": {"data": ["used", "free"], "right": 0, "top": 0},
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
                                   ("end", "start", "end"))]
    return {"title": {"text": "SSD zones (% of quota)", "textStyle": {"fontSize": 14}},
            "tooltip": {"trigger": "axis"}, "grid": {"left": 60, "right": 30, "top": 40, "bottom": 40},
            "xAxis": {"type": "value", "max": 100}, "yAxis": {"type": "category", "data": names},
            "series": [{"name": "used", "type": "bar", "data": pct, "itemStyle": {"color": "#1e88e5"},
                        "markLine": {"symbol": "none", "label": {"formatter": "{b}"}, "data": lines}}]}


def ingested_per_day(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Files ingested per day, one line per source."""
    days = sorted({str(r["day"]) for r in rows})
    sources = sorted({r["source"] for r in rows})
    by = {(str(r["day"]), r["source"]): r["items"] for r in rows}
    return {"title": {"text": "files ingested per day", "textStyle": {"fontSize": 14}},
            "tooltip": {"trigger": "axis"}, "legend": {"data": sources, "right": 0, "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 30},
            "xAxis": {"type": "category", "data": days}, "yAxis": {"type": "value"},
            "series": [{"name": s, "type": "bar", "stack": "s", "data": [by.get((d, s), 0) for d in days]}
                       for s in sources]}
