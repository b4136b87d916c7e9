"""ECharts options for the dashboards' charts, built from the snapshot (no query of their own)."""

from __future__ import annotations

import math
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


def _series_by_name(points: list[Any], kind: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in points:
        if p.kind == kind:
            out.setdefault(p.name, []).append(p)
    return out


def disk_history(points: list[Any]) -> dict[str, Any]:
    """Used GB per disk over time (`jobs.usage.history`); a bucket in which the disk could not
    be read has no value, so its line breaks there instead of falling to zero."""
    series = [{"name": name, "type": "line", "showSymbol": False,
               "data": [[p.at.isoformat(), None if p.used_bytes is None else round(p.used_bytes / GIB, 3)]
                        for p in pts]}
              for name, pts in sorted(_series_by_name(points, "disk").items())]
    return {"title": {"text": "disk usage over time (GB used)", "textStyle": {"fontSize": 14}},
            "tooltip": {"trigger": "axis"}, "legend": {"data": [s["name"] for s in series], "right": 0, "top": 0},
            "grid": {"left": 60, "right": 20, "top": 40, "bottom": 30},
            "xAxis": {"type": "time"}, "yAxis": {"type": "value"}, "series": series}


def zone_history(points: list[Any], marks: tuple[float, float, float]) -> dict[str, Any]:
    """Used + reserved share of each zone's quota over time, with the warn/deny/emergency lines."""
    def pct(p: Any) -> float | None:
        if p.used_bytes is None or not p.total_bytes:
            return None
        return round(100 * (p.used_bytes + (p.reserved_bytes or 0)) / p.total_bytes, 1)

    series = [{"name": name, "type": "line", "showSymbol": False, "data": [[p.at.isoformat(), pct(p)] for p in pts]}
              for name, pts in sorted(_series_by_name(points, "zone").items())]
    lines = [{"yAxis": round(100 * m), "name": n, "lineStyle": {"color": c, "type": "dashed"}}
             for m, n, c in zip(marks, ("warn", "deny", "emergency"), ("#ef6c00", "#d84315", "#b71c1c"))]
    # 100 % at the top, or the highest value above it: 3A fills from outside and can pass its quota
    top = max([100.0] + [v for s in series for _, v in s["data"] if v is not None])
    if series:
        series[0]["markLine"] = {"symbol": "none", "silent": True, "label": {"formatter": "{b} {c}%"}, "data": lines}
    return {"title": {"text": "SSD zones over time (% of quota)", "textStyle": {"fontSize": 14}},
            "tooltip": {"trigger": "axis"}, "legend": {"data": [s["name"] for s in series], "right": 0, "top": 0},
            "grid": {"left": 60, "right": 60, "top": 40, "bottom": 30},
            "xAxis": {"type": "time"}, "yAxis": {"type": "value", "max": math.ceil(top / 10) * 10}, "series": series}
