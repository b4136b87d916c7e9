"""Relative paths that name files inside a batch or a view: what is safe to accept, and how a
name is shown."""

from __future__ import annotations

import os
import re

#: a batch id or a view name (the same rule as the database's CHECK on action_batch.batch_id)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

#: longest relative path (bytes, UTF-8) accepted inside a batch or a view
MAX_PATH_BYTES = 1000


#: longest name (one part of a path, bytes, UTF-8) a view may hold: NAME_MAX of Linux file
#: systems. The mount would serve a longer one, but `cp -r` out of it could not create it.
MAX_NAME_BYTES = 255


def long_name(rel: str) -> str | None:
    """The first part of `rel` longer than MAX_NAME_BYTES bytes (UTF-8), or None."""
    if len(rel) * 4 <= MAX_NAME_BYTES:  # (no part of so short a path can be: the common case)
        return None
    return next((part for part in rel.split("/") if len(part) * 4 > MAX_NAME_BYTES
                 and len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES), None)


#: the characters no accepted path holds (C0, DEL and C1): `hostile_reason` refuses them
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: bidirectional embeddings, overrides and isolates: they make a name display as another
#: ("Trojan Source": `cod\u202egnp.exe` shows as `codexe.png`); letters of right-to-left
#: scripts are not among them and pass
BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
#: Unicode's line and paragraph separators: `str.splitlines()` and Markdown break lines there
#: (a name holding one would close a code block in the GUI); U+0085 is a C1 control
SEPARATOR = re.compile("[\u2028\u2029]")


#: any character `hostile_reason` may object to, in one search; with a few substring tests
#: for the shape (`/` first or last, `//`, a part starting with `.` or `-`), it decides most paths:
#: the checks below say what is wrong with the others (a view of millions of paths calls it
#: for each, most of them fine; one regex with the shape's alternatives in it took 4× as long)
_SUSPECT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def hostile_reason(rel: str) -> str | None:
    """Why a relative path from a document, a listing or a view manifest is unsafe, or None."""
    if (rel and len(rel) * 4 <= MAX_PATH_BYTES and not _SUSPECT.search(rel) and rel[0] not in "/.-" and rel[-1] != "/"
            and "//" not in rel and "/." not in rel and "/-" not in rel):
        return None  # short (even if every character took 4 bytes) and nothing suspect
    if not rel:
        return "an empty path"
    if "\x00" in rel:
        return "the path contains a NUL byte"
    if CONTROL.search(rel):
        return "the path contains control characters"
    if SEPARATOR.search(rel):
        return "the path contains a line or paragraph separator (U+2028, U+2029), which splits it where it is shown"
    if BIDI_CONTROL.search(rel):
        return ("the path contains a bidirectional override (U+202A–U+202E, U+2066–U+2069), which makes a name "
                "display as another")
    try:
        size = len(rel.encode("utf-8"))
    except UnicodeEncodeError:
        return "the path is not valid UTF-8"
    if size > MAX_PATH_BYTES:
        return f"the path is {size} bytes long; at most {MAX_PATH_BYTES} are accepted"
    if rel.startswith("/"):
        return "an absolute path"
    if any(part in ("..", ".") for part in rel.split("/")) or "//" in rel or rel.endswith("/"):
        return "the path climbs out of the batch (`..`) or is not normalised"
    if rel[0] == "-" or "/-" in rel:
        # `tar cf b.tar *` in the folder, or any tool given a glob, takes `--checkpoint-action=exec=…`
        # for an option: a name must never be one
        return "a part of the path starts with `-`, which a command given the name takes for an option"
    return None


def display(name: str) -> str:
    """A path or name as one safe line for a terminal, a report or the database: undecodable
    bytes and control characters (C0, DEL and C1 — ESC and CSI start terminal escape
    sequences; a newline would split the line) are shown as `\\xNN`, bidirectional overrides
    (which would reorder the line around them) and U+2028/U+2029 as `\\uNNNN`."""
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 0x7f <= ord(c) < 0xa0 else
                   f"\\u{ord(c):04x}" if BIDI_CONTROL.match(c) or SEPARATOR.match(c) else c for c in shown)


def by_hash_path(sha256_hex: str, ext: str | None) -> str:
    """Where an object shows in the mount, under its root (docs/mount.md): by-hash/aa/bb/<sha256>.<ext>."""
    return f"by-hash/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}" + (f".{ext}" if ext else "")


def file_ext(name: str) -> str:
    """The extension a file is shown with in by-hash/ (lower case, alphanumeric, ≤ 10), or ''."""
    ext = os.path.splitext(name)[1][1:].lower()
    return ext if ext and len(ext) <= 10 and ext.isascii() and ext.isalnum() else ""
