"""Hostile text (scraped metadata, file names, tracebacks, worker output) shown as text.

Nothing here parses markup: `pre` is a `<pre>` element whose content is a text node (Vue sets
it, the browser never reads it as HTML), so no value can close a block and start markup the way
`ui.code` allowed (it renders a Markdown code block split with `str.splitlines()`, which also
breaks at U+2028/U+2029/U+0085: a value holding one of them and a ``` fence closed the block).
`shown` writes the characters that would hide or disguise what a value says — line and
paragraph separators, other control characters, the bidi controls that reorder text (a file
name `exe.txt` that is really `txt.exe`) — as `\\uXXXX`: the way JSON writes them, so a JSON
view stays valid JSON.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from nicegui import ui
from nicegui.elements.mixins.text_element import TextElement

#: shown escaped: C0 controls but tab and newline, DEL and C1 controls (U+0085 NEL among them),
#: Unicode's line and paragraph separators, the bidi embeddings, overrides, isolates and marks
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def shown(text: object) -> str:
    """`text` with every HIDDEN character written as `\\uXXXX`."""
    return HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))


def pre(text: object) -> TextElement:
    """A `<pre>` of `text` (a raw-metadata or traceback viewer): a text node only, white space
    kept, long lines wrapped, HIDDEN characters escaped."""
    return TextElement(tag="pre", text=shown(text)).classes("text-mono text-caption w-full q-pa-sm bg-grey-2").style(
        "white-space: pre-wrap; overflow-wrap: anywhere; margin: 0")


def label(text: object) -> ui.label:
    """`ui.label` of a value from outside (scraped, a worker's): HIDDEN characters escaped."""
    return ui.label(shown(text))


def run_log(records: Iterable[dict[str, Any]], failed: bool) -> None:
    """A run's log (hoardfs.jobs.runlog records) under its heading, one safe line a record; WARNING and
    worse in red. Shared by the run pages of every kind."""
    ui.label("Log" + (" (warnings and errors first)" if failed else "")).classes("text-h6 q-mt-md")
    with ui.column().classes("gap-0").mark("run-log"):
        for rec in records:
            when = time.strftime("%H:%M:%S", time.localtime(rec.get("time", 0)))
            label(f"{when} {rec.get('level', '?'):7} {rec.get('message', '')}").classes(
                "text-caption text-mono" + (" text-negative" if rec.get("level") in
                                            ("WARNING", "ERROR", "CRITICAL") else ""))
