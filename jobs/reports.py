"""A run's report read as a person reads it: labelled figures, not a dictionary.

Every kind of run (an ingest, a stage or export, a maintenance job) returns a dictionary of
its own keys; the run page and `hoard ingest|stage|export --status` show it through
`figures`, so `intent_was_applied_before False` reads "intent was applied before: no",
`quarantine None` is left out (nothing to say), sizes carry their unit and times read as
durations. `errors` tells whether a finished run is a success: a run whose report counts
errors is not shown as plain `done`.
"""

from __future__ import annotations

from typing import Any

from hoardfs.base.units import fmt_bytes

#: keys shown on their own (the rejected files, each with its reason) or not at all
NOT_FIGURES = frozenset({"rejected", "already_done"})


def duration(seconds: float | None) -> str:
    """`0.42 s`, `12.3 s`, `4 min 05 s`, `2 h 03 min`; `-` for none."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


#: keys whose words would mislead
LABELS = {"seconds": "took", "mib_s": "rate"}


def _label(key: str) -> str:
    return LABELS.get(key) or key.replace("_", " ").strip()


def _value(key: str, v: Any) -> str | None:
    """One value as text, by what its key says it is; None when there is nothing to show."""
    if v is None or v == "" or v == [] or v == {}:
        return None
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return f"{len(v)}"
    if isinstance(v, (int, float)):
        if key == "seconds" or key.endswith(("_seconds", "_s")) and not key.endswith("mib_s"):
            return duration(v)
        if key == "bytes" or key.endswith(("_bytes", "bytes_")) or key.startswith("bytes_"):
            return f"{fmt_bytes(v)} ({int(v):,} bytes)"
        if key.endswith("mib_s"):
            return f"{v} MiB/s"
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"
    return str(v)


def figures(report: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(label, value) of each figure of `report`, in its order; a nested dictionary's figures
    are labelled `outer: inner`. Keys of NOT_FIGURES and empty values are left out."""
    out: list[tuple[str, str]] = []
    for key, v in report.items():
        if key in NOT_FIGURES:
            continue
        if isinstance(v, dict):
            out += figures(v, f"{prefix}{_label(key)}: ")
            continue
        text = _value(key, v)
        if text is not None:
            out.append((prefix + _label(key), text))
    return out


def errors(report: Any) -> int:
    """How many errors a report counts (its `errors`: a number or a list); 0 if none or no report."""
    if not isinstance(report, dict):
        return 0
    e = report.get("errors")
    if isinstance(e, bool):
        return int(e)
    if isinstance(e, (int, float)):
        return int(e)
    if isinstance(e, list):
        return len(e)
    return 0
