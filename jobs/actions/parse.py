"""Read an S04 worker's output root back into child files and result records.

What a worker wrote is hostile input: the tree is walked once, from a descriptor of the
output root, one `os.scandir` per directory, never following a link — a symbolic link (to
anywhere: out of the root, absolute, or to a directory), a fifo, a socket, a device, a name
that is not UTF-8, holds control characters or a bidi override, or is longer than a file
system allows is each refused, never read. Result files are opened from their directory's
descriptor with O_NOFOLLOW and must still be the file the walk saw; each is read only up to
`MAX_RESULT_FILE_BYTES`.

Everything is decided before anything is written: the number of children against
`a4_scale` × the inputs first (the walk stops as soon as it is over), then every file
against the contract's `output_parser` rules — a child's parent, each result record's node
and typed values. The first thing wrong is one `OutputProblem` line naming the file (and the
line, record and field) and the next step. Children and records come back sorted by path,
so the same output gives the same write-intent. Format: docs/actions.md, "Reading the
output".
"""

from __future__ import annotations

import array
import base64
import binascii
import csv
import errno
import io
import json
import math
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import open_nofollow
from hoardfs.base.paths import MAX_NAME_BYTES, display, hostile_reason, long_name
from hoardfs.base.units import fmt_bytes
from hoardfs.jobs.actions.contract import (
    _TEMPLATE_PART,
    RESULT_TABLES,
    ChildFiles,
    Contract,
    MappingFile,
    OutputParser,
    ResultFiles,
    ResultMapping,
    RunExternal,
    table_of,
)
from hoardfs.sql import result_tables
from hoardfs.sql.intents import RESULT_HASH_COLUMNS

#: the largest result file read (a JSON array is parsed whole; records are held until stored)
MAX_RESULT_FILE_BYTES = 64 << 20
#: the most bytes of result files one run reads, all files together
MAX_RESULT_BYTES = 256 << 20
#: the most entries (files and directories) an output root may hold
MAX_ENTRIES = 2_000_000
#: the deepest directory nesting an output root may hold
MAX_DEPTH = 64
#: the most numbers an embedding (result_image_embedding.embedding) may hold
MAX_EMBEDDING_DIM = 4096
#: a real (float4) column's largest magnitude
_REAL_MAX = 3.4e38
#: the next step of a problem in what the worker wrote
_AGAIN = "fix the worker (or the contract's output_parser) and run the action again"


class OutputProblem(HoardError):
    """What a worker wrote cannot be taken: one line naming the file and the next step (exit 5)."""

    exit_code = ExitCode.DATA

    def __init__(self, message: str) -> None:
        super().__init__(display(message), ExitCode.DATA)


@dataclass(frozen=True)
class InputFile:
    sha256: str            # hex of the input node
    staged_path: str       # relative to the input root, e.g. "by_sha256/ab/abcd….jpg"


@dataclass(frozen=True)
class Child:
    path: str                   # relative to the output root
    parent_sha256: str | None   # the parent input's sha256, or None when parent_path names another child
    parent_path: str | None     # the parent child's path (parent_key = "output_path": video → scene → frame)
    relationship: str
    labels: dict[str, str]
    size: int
    #: (device, inode, size, mtime_ns) of the file the walk saw: the store step takes only that
    #: file (Store.put_many's `expect`), never one swapped in (or a link) since
    seen: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), compare=False)


@dataclass(frozen=True)
class Record:
    rule: str                   # output_parser.results name
    into: str                   # "labels" | "result_canny" | "result_ocr_box" | "result_image_hash"
    node_sha256: str | None     # an input's sha256 …
    child_path: str | None      # … or a child's path (node_key = "output_path")
    values: dict[str, Any]      # every column of `into` (but node and batch) → its value, typed


@dataclass
class Parsed:
    children: list[Child]
    records: list[Record]
    #: the files the rules took (children and result files) and their bytes
    files: int = 0
    bytes: int = 0


# -- globs -------------------------------------------------------------------------------------

def glob_regex(pattern: str) -> re.Pattern[str]:
    """A contract glob as a regular expression over a relative path (matched whole): `*` is
    any characters but `/` (a leading `.` included), `?` one of them, `[abc]`/`[!abc]` a set,
    and a part that is exactly `**` any number of directories, none included (`**/*.png`
    matches `a.png` and `x/y/a.png`; `out/**` everything under out/)."""
    parts = pattern.split("/")
    rx = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            rx += ".+" if last else "(?:[^/]+/)*"
            continue
        rx += _segment(part) + ("" if last else "/")
    return re.compile(rx, re.S)


def _segment(part: str) -> str:
    out, i = "", 0
    while i < len(part):
        ch = part[i]
        i += 1
        if ch == "*":
            out += "[^/]*"
            while i < len(part) and part[i] == "*":
                i += 1
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            j = i + (1 if part[i:i + 1] in ("!", "]") else 0)
            j += 1 if part[j:j + 1] == "]" else 0
            end = part.find("]", j)
            if end < 0:
                out += re.escape(ch)
                continue
            body = part[i:end]
            i = end + 1
            body = re.sub(r"([&~|\\\[])", r"\\\1", body)
            body = "^" + body[1:] if body.startswith("!") else ("\\" + body if body.startswith("^") else body)
            out += f"(?!/)[{body}]"
        else:
            out += re.escape(ch)
    return out


# -- the walk ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _File:
    rel: str
    size: int
    dev: int
    ino: int
    rules: tuple[int, ...]   # indexes into _Rules.globs
    mtime_ns: int = 0


@dataclass
class _Rules:
    parser: OutputParser
    globs: list[re.Pattern[str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    n_children: int = 0

    @classmethod
    def of(cls, parser: OutputParser) -> _Rules:
        r = cls(parser, n_children=len(parser.children))
        for i, ch in enumerate(parser.children):
            r.globs.append(glob_regex(ch.glob))
            r.names.append(f"output_parser.children[{i}] (glob {ch.glob!r})")
        for res in parser.results:
            r.globs.append(glob_regex(res.glob))
            r.names.append(f"output_parser.results {res.name!r} (glob {res.glob!r})")
        if parser.mapping is not None:
            r.globs.append(glob_regex(parser.mapping.glob))
            r.names.append(f"output_parser.mapping (glob {parser.mapping.glob!r})")
        return r


def _link_target(name: str, dfd: int) -> str:
    try:
        target = os.readlink(name, dir_fd=dfd)
    except OSError:
        return "?"
    return display(target if len(target) <= 200 else target[:200] + "…")


def _name_problem(rel: str) -> str | None:
    why = hostile_reason(rel)
    if why is None and (part := long_name(rel)) is not None:
        why = f"a name of {len(part.encode('utf-8', 'surrogatepass'))} bytes (at most {MAX_NAME_BYTES})"
    return why


def _kind(mode: int) -> str:
    return ("a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file")


class _Walk:
    """One pass over the output root: regular files with the rules their path matches; the
    first thing refused (and how many more), the children counted against the limit."""

    def __init__(self, root: str, rules: _Rules, done_marker: str | None, limit: int, a4_scale: int,
                 n_inputs: int, max_bytes: int | None = None) -> None:
        self.root, self.rules, self.done_marker = root, rules, done_marker
        self.limit, self.a4_scale, self.n_inputs = limit, a4_scale, n_inputs
        self.max_bytes, self.child_bytes = max_bytes, 0
        self.files: list[_File] = []
        self.refused: str | None = None   # the first thing refused …
        self.more = 0                     # … and how many after it
        self.children = 0
        self.entries = 0

    def shown(self, rel: str) -> str:
        return display(os.path.join(self.root, rel))

    def refuse(self, line: str) -> None:
        if self.refused is None:
            self.refused = line
        else:
            self.more += 1

    def dir(self, dfd: int, rel_dir: str, depth: int) -> None:
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self.refuse(f"{self.shown(rel_dir or '.')}: cannot be read ({err.strerror}); {_AGAIN}")
            return
        for e in entries:
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise OutputProblem(f"{display(self.root)}: more than {MAX_ENTRIES} files and directories; "
                                    f"nothing was stored — {_AGAIN}")
            rel = rel_dir + e.name
            if depth == 0 and e.name == self.done_marker and e.is_file(follow_symlinks=False):
                continue  # the worker's "done" signal, not an output
            why = _name_problem(rel)
            if why:
                self.refuse(f"{self.shown(rel)}: {why}; the worker must write plain names (UTF-8, no control "
                            "characters or bidi overrides, at most 255 bytes a name) — fix it and run the action "
                            "again")
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                self.refuse(f"{self.shown(rel)}: cannot be read ({err.strerror}); {_AGAIN}")
                continue
            if stat.S_ISLNK(st.st_mode):
                self.refuse(f"{self.shown(rel)}: a symbolic link (to {_link_target(e.name, dfd)}), never followed "
                            "in a worker's output; the worker must write the file itself there — fix it and run "
                            "the action again")
            elif stat.S_ISDIR(st.st_mode):
                self.subdir(dfd, e.name, rel, depth)
            elif not stat.S_ISREG(st.st_mode):
                self.refuse(f"{self.shown(rel)}: {_kind(st.st_mode)}, not a regular file; only files are read from "
                            f"a worker's output — {_AGAIN}")
            elif st.st_nlink > 1:
                # a hard link names the same file as another path, which may be outside the output
                # root (a worker allowed root, or a host without fs.protected_hardlinks, can link
                # /etc/shadow): only files with one name, the worker's own, are read
                self.refuse(f"{self.shown(rel)}: a hard link ({st.st_nlink} names for one file), never read from "
                            "a worker's output — it may name a file outside the output root; the worker must "
                            "write (copy) the file itself — fix it and run the action again")
            else:
                self.file(rel, st)

    def subdir(self, dfd: int, name: str, rel: str, depth: int) -> None:
        if depth + 1 >= MAX_DEPTH:
            self.refuse(f"{self.shown(rel)}: directories nested deeper than {MAX_DEPTH}; {_AGAIN}")
            return
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as err:
            what = "became a symbolic link while it was read" if err.errno in (errno.ELOOP, errno.ENOTDIR) \
                else f"cannot be read ({err.strerror})"
            self.refuse(f"{self.shown(rel)}: {what}; {_AGAIN}")
            return
        try:
            self.dir(sub, rel + "/", depth + 1)
        finally:
            os.close(sub)

    def file(self, rel: str, st: os.stat_result) -> None:
        hits = tuple(i for i, rx in enumerate(self.rules.globs) if rx.fullmatch(rel))
        if any(i < self.rules.n_children for i in hits):
            self.children += 1
            if self.children > self.limit:
                raise OutputProblem(
                    f"{display(self.root)}: the worker wrote more than {self.limit} children, more than "
                    f"a4_scale × inputs allows ({self.a4_scale} × {self.n_inputs}); nothing was stored — raise "
                    "`a4_scale` in the contract (or store.a4_scale in hoard.toml) if it really makes that many, "
                    "or fix the worker")
            self.child_bytes += st.st_size
            if self.max_bytes is not None and self.child_bytes > self.max_bytes:
                # by the size the file claims (a sparse file is its size to hash and copy): before
                # a byte of it is read or stored
                raise OutputProblem(
                    f"{self.shown(rel)}: with this file ({fmt_bytes(st.st_size)}) the children reach "
                    f"{fmt_bytes(self.child_bytes)} ({self.child_bytes} bytes), more than max_output_bytes allows "
                    f"({fmt_bytes(self.max_bytes)}); nothing was stored — raise `max_output_bytes` in the contract "
                    "(or actions.max_output_bytes in hoard.toml) if it really writes that much, or fix the worker")
        self.files.append(_File(rel, st.st_size, st.st_dev, st.st_ino, hits, st.st_mtime_ns))


# -- nodes -------------------------------------------------------------------------------------

def _strip_ext(path: str) -> str:
    head, _, name = path.rpartition("/")
    stem = os.path.splitext(name)[0]
    return f"{head}/{stem}" if head else stem


class _Nodes:
    """Inputs and children by each way a worker may name them."""

    def __init__(self, inputs: list[InputFile]) -> None:
        self.by: dict[str, dict[str, list[str]]] = {"sha256": {}, "stem": {}, "staged_path": {}, "name": {},
                                                    "mapping": {}}
        for f in inputs:
            self.by["sha256"].setdefault(f.sha256.lower(), []).append(f.sha256)
            self.by["name"].setdefault(f.staged_path.rpartition("/")[2], []).append(f.sha256)
            self.by["stem"].setdefault(_strip_ext(f.staged_path).rpartition("/")[2], []).append(f.sha256)
            self.by["staged_path"].setdefault(_strip_ext(f.staged_path), []).append(f.sha256)
        self.children: set[str] = set()
        self.child_stems: dict[str, list[str]] = {}

    def add_children(self, paths: list[str]) -> None:
        self.children.update(paths)
        for p in paths:
            self.child_stems.setdefault(_strip_ext(p), []).append(p)

    def input(self, key: str, value: str) -> tuple[str | None, str]:
        """(the input's sha256, '') or (None, why not)."""
        found = self.by[key].get(value.lower() if key == "sha256" else value, [])
        if len(found) == 1:
            return found[0], ""
        what = {"sha256": "sha256", "stem": "staged file name without extension",
                "staged_path": "staged path without extension", "name": "staged file name",
                "mapping": "id in the mapping file (output_parser.mapping)"}[key]
        if not found:
            return None, f"names no input by its {what} ({display(value)!r})"
        if len(set(found)) > 1:
            return None, (f"is ambiguous: {len(set(found))} inputs have the {what} {display(value)!r}; name "
                          "them by sha256 (parent_key / node_key = \"sha256\")")
        return found[0], ""


# -- reading result files ----------------------------------------------------------------------

def _open_as_scanned(root_fd: int, f: _File, shown: str) -> int:
    """A descriptor of `f`, opened without following a link and still the file the walk saw."""
    try:
        out = open_nofollow(root_fd, f.rel)
    except OSError as e:
        raise OutputProblem(f"{shown}: changed while it was read ({e.strerror}); {_AGAIN}") from None
    st = os.fstat(out)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (f.dev, f.ino):
        os.close(out)
        raise OutputProblem(f"{shown}: changed while it was read (another file is there now); {_AGAIN}")
    return out


def _read(root_fd: int, f: _File, shown: str, budget: int) -> bytes:
    cap = min(MAX_RESULT_FILE_BYTES, budget)
    if f.size > cap:
        raise OutputProblem(f"{shown}: {f.size} bytes, more than a result file may hold ({cap >> 20} MiB"
                            + (" left of the run's results" if cap < MAX_RESULT_FILE_BYTES else "")
                            + "); have the worker split its results over several files (the glob may match "
                              "several), each under 64 MiB")
    fd = _open_as_scanned(root_fd, f, shown)
    chunks, left = [], cap + 1
    try:
        while left > 0 and (chunk := os.read(fd, min(left, 8 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise OutputProblem(f"{shown}: grew past {cap >> 20} MiB while it was read; {_AGAIN}")
    return b"".join(chunks)


def _text(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise OutputProblem(f"{shown} line {line}: not UTF-8 (byte {e.start}); the worker must write UTF-8 — "
                            f"{_AGAIN}") from None


def _rows(text: str, fmt: str, shown: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of a result file, where = "line N" or "record N"."""
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise OutputProblem(f"{shown} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); "
                                f"{_AGAIN}") from None
        except (ValueError, RecursionError) as e:
            raise OutputProblem(f"{shown}: not JSON this reader takes ({type(e).__name__}: {str(e)[:100]}); "
                                f"{_AGAIN}") from None
        if not isinstance(doc, list):
            raise OutputProblem(f"{shown}: a JSON {type(doc).__name__}, not an array of objects (format = \"json\"); "
                                f"{_AGAIN}")
        for n, rec in enumerate(doc, 1):
            if not isinstance(rec, dict):
                raise OutputProblem(f"{shown} record {n}: a JSON {type(rec).__name__}, not an object; {_AGAIN}")
            yield f"record {n}", rec
    elif fmt == "jsonl":
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise OutputProblem(f"{shown} line {n} column {e.colno}: not valid JSON ({e.msg}); {_AGAIN}") from None
            except (ValueError, RecursionError) as e:
                raise OutputProblem(f"{shown} line {n}: not JSON this reader takes ({type(e).__name__}); "
                                    f"{_AGAIN}") from None
            if not isinstance(rec, dict):
                raise OutputProblem(f"{shown} line {n}: a JSON {type(rec).__name__}, not an object; {_AGAIN}")
            yield f"line {n}", rec
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise OutputProblem(f"{shown} line 1: no header line (format = \"csv\" needs one naming the "
                                    f"fields); {_AGAIN}")
            dups = sorted({h for h in header if header.count(h) > 1})
            if dups:
                raise OutputProblem(f"{shown} line 1: the header names field {display(dups[0])!r} twice; {_AGAIN}")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise OutputProblem(f"{shown} line {reader.line_num}: {len(row)} fields, the header has "
                                        f"{len(header)}; {_AGAIN}")
                yield f"line {reader.line_num}", dict(zip(header, row, strict=True))
        except csv.Error as e:
            raise OutputProblem(f"{shown} line {reader.line_num}: not valid CSV ({e}); {_AGAIN}") from None


def _string(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
        return str(v)
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    if isinstance(v, (int, float)) and math.isfinite(float(v)) and abs(float(v)) <= _REAL_MAX:
        return float(v)
    return None


def _hash64(v: Any) -> int | None:
    """16 hex digits (imagehash's notation of a 64-bit hash) → the signed bigint of that bit
    pattern (migration 015)."""
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-fA-F]{16}", v):
        return None
    n = int(v, 16)
    return n - (1 << 64) if n >= 1 << 63 else n


#: column → (what it must be, convert: value → typed value or None when it is not)
def _typed(table: str, col: str, v: Any) -> tuple[Any, str]:
    """(the value typed for the column, '') or (None, what it must be)."""
    if table == "labels" or col == "text":
        s = _string(v)
        limit = 200 if col == "key" else 2000
        if s is None:
            return None, "must be a string"
        if "\x00" in s:
            return None, "holds NUL, which PostgreSQL cannot store"
        if not s.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in s):
            return None, "holds a lone surrogate, which is not Unicode text"
        if col == "key" and not s:
            return None, "must not be empty"
        if len(s) > limit:
            return None, f"is {len(s)} characters long; at most {limit}"
        return s, ""
    if col == "model":
        s = _string(v)
        if s is None or not 1 <= len(s) <= 200 or not s.isprintable():
            return None, "must be a model's name: 1 to 200 printable characters"
        return s, ""
    if col == "embedding":
        return _embedding(v)
    if col == "status":
        ok = ("ok", "failed", "skipped")
        return (v, "") if v in ok else (None, "must be one of " + ", ".join(ok))
    if col in RESULT_HASH_COLUMNS:
        h = _hash64(v)
        return (h, "") if h is not None else (None, "must be a 64-bit hash: 16 hex digits")
    if col == "box_no":
        n = _number(v)
        if n is None or not n.is_integer() or not 0 <= n <= 2**31 - 1:
            return None, "must be a whole number ≥ 0"
        return int(n), ""
    n = _number(v)
    if n is None:
        return None, "must be a number"
    if col in ("edge_ratio", "confidence") and not 0 <= n <= 1:
        return None, "must be a number from 0 to 1"
    if col in ("w", "h") and n < 0:
        return None, "must be a number ≥ 0"
    return n, ""


def _embedding(v: Any) -> tuple[Any, str]:
    """An embedding: base64 of float32 little-endian, 1 to MAX_EMBEDDING_DIM finite numbers."""
    s = _string(v)
    try:
        raw = base64.b64decode(s, validate=True) if s is not None and s.isascii() else None
    except binascii.Error:
        raw = None
    if raw is None or not raw or len(raw) % 4 or len(raw) // 4 > MAX_EMBEDDING_DIM:
        return None, f"must be base64 of 1 to {MAX_EMBEDDING_DIM} float32 numbers (little-endian)"
    vec = array.array("f", raw)
    if sys.byteorder != "little":
        vec.byteswap()
    if not all(math.isfinite(x) for x in vec):
        return None, "holds a number that is not finite (NaN or infinity)"
    return s, ""


#: the value a column gets when the record has none (the table's default; None: NULL)
_DEFAULTS = {"value": "", "text": "", "edge_ratio": None, "confidence": None}


# -- the whole ---------------------------------------------------------------------------------

def parse_outputs(c: Contract, output_root: Path, inputs: list[InputFile], *, a4_scale: int,
                  done_marker: str | None = None, max_bytes: int | None = None, partial: bool = False) -> Parsed:
    """The children and result records the worker wrote in `output_root`, sorted by path, or
    OutputProblem (one line) for the first thing that cannot be taken. `done_marker` (an
    external run's `_DONE`, the contract's when not given) in the root is not an output.
    `max_bytes`: the most bytes the children may hold together (their sizes as stat says, a
    sparse file's included), refused as soon as the walk passes it (None: the contract's
    `max_output_bytes`, else no bound). `partial`: what a worker still at work wrote so far
    (`hoard action collect`): a declared output not written yet is no problem."""
    parser = c.output_parser or OutputParser()
    if done_marker is None and isinstance(c.run_spec, RunExternal):
        done_marker = c.run_spec.done_marker
    root = str(output_root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        what = ("a symbolic link, never followed" if e.errno == errno.ELOOP or os.path.islink(root)
                else "missing" if e.errno == errno.ENOENT else f"not a directory that can be read ({e.strerror})")
        raise OutputProblem(f"output root {display(root)}: {what}; the run's output directory must be a "
                            "directory the worker wrote into — run the action again") from None
    try:
        return _parse(parser, c, root, root_fd, inputs, a4_scale, done_marker,
                      max_bytes if max_bytes is not None else c.max_output_bytes, partial)
    finally:
        os.close(root_fd)


def _parse(parser: OutputParser, c: Contract, root: str, root_fd: int, inputs: list[InputFile], a4_scale: int,
           done_marker: str | None, max_bytes: int | None = None, partial: bool = False) -> Parsed:
    rules = _Rules.of(parser)
    walk = _Walk(root, rules, done_marker, a4_scale * len(inputs), a4_scale, len(inputs), max_bytes)
    walk.dir(root_fd, "", 0)
    if walk.refused is not None:
        raise OutputProblem(walk.refused + (f" (and {walk.more} more refused in the output)" if walk.more else ""))
    files = sorted(walk.files, key=lambda f: f.rel)
    if not files and (parser.children or parser.results) and not partial:
        raise OutputProblem(f"{display(root)}: the worker wrote nothing (the contract declares "
                            + " and ".join(w for w, on in (("children", parser.children), ("results", parser.results))
                                           if on) + "); see the worker's log, fix it and run the action again")
    taken: list[list[_File]] = [[] for _ in rules.globs]
    for f in files:
        if len(f.rules) > 1:
            raise OutputProblem(f"{walk.shown(f.rel)}: matched by {rules.names[f.rules[0]]} and "
                                f"{rules.names[f.rules[1]]}; narrow a glob so each file has one rule")
        if f.rules:
            taken[f.rules[0]].append(f)
        elif parser.unmatched == "error":
            raise OutputProblem(f"{walk.shown(f.rel)}: no output_parser rule takes this file (unmatched = \"error\"); "
                                "add a rule for it, set output_parser.unmatched = \"ignore\", or fix the worker")
    for i, got in enumerate(taken):
        if not got and not partial:
            raise OutputProblem(f"{display(root)}: no file matches {rules.names[i]}: the worker did not write a "
                                f"declared output; {_AGAIN}")
    nodes = _Nodes(inputs)
    budget = MAX_RESULT_BYTES
    n_results = rules.n_children + len(parser.results)
    if parser.mapping is not None:
        for f in taken[n_results]:
            data = _read(root_fd, f, walk.shown(f.rel), budget)
            budget -= len(data)
            _read_mapping(parser.mapping, _text(data, walk.shown(f.rel)), walk.shown(f.rel), nodes)
    child_files = sorted((f for i in range(rules.n_children) for f in taken[i]), key=lambda f: f.rel)
    nodes.add_children([f.rel for f in child_files])
    children = [_child(parser.children[f.rules[0]], f, nodes, walk) for f in child_files]
    _no_loops(children, walk)
    records: list[Record] = []
    result_files = sorted((f for i in range(rules.n_children, n_results) for f in taken[i]), key=lambda f: f.rel)
    for f in result_files:
        rule = parser.results[f.rules[0] - rules.n_children]
        data = _read(root_fd, f, walk.shown(f.rel), budget)
        budget -= len(data)
        records.extend(_records(c, rule, f, _text(data, walk.shown(f.rel)), nodes, walk))
    _no_duplicates(records, walk)
    used = child_files + result_files + (taken[n_results] if parser.mapping is not None else [])
    return Parsed(children, records, files=len(used), bytes=sum(f.size for f in used))


def _child(rule: ChildFiles, f: _File, nodes: _Nodes, walk: _Walk) -> Child:
    m = _compiled(rule.parent_match).fullmatch(f.rel)
    if m is None:
        raise OutputProblem(f"{walk.shown(f.rel)}: its path does not match parent_match {rule.parent_match!r} "
                            f"(glob {rule.glob!r}), so its parent is unknown; {_AGAIN}")
    group = m.group("input") or ""
    if rule.parent_key == "output_path":
        found = nodes.child_stems.get(group, [])
        if len(found) != 1:
            why = (f"names no child {display(group)!r} (another output file, without its extension)" if not found
                   else f"is ambiguous: {len(found)} children are {display(group)!r} without extension "
                        f"({', '.join(display(p) for p in found[:3])})")
            raise OutputProblem(f"{walk.shown(f.rel)}: its parent {why}; {_AGAIN}")
        if found[0] == f.rel:
            raise OutputProblem(f"{walk.shown(f.rel)}: its parent_match names the file itself as its parent; {_AGAIN}")
        return Child(f.rel, None, found[0], rule.relationship, dict(rule.labels), f.size, _seen(f))
    sha, why = nodes.input(rule.parent_key, group)
    if sha is None:
        raise OutputProblem(f"{walk.shown(f.rel)}: its parent {why}; {_AGAIN}")
    return Child(f.rel, sha, None, rule.relationship, dict(rule.labels), f.size, _seen(f))


def _seen(f: _File) -> tuple[int, int, int, int]:
    return (f.dev, f.ino, f.size, f.mtime_ns)


_RX: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    rx = _RX.get(pattern)
    if rx is None:
        rx = _RX[pattern] = re.compile(pattern, re.S)
    return rx


def _no_loops(children: list[Child], walk: _Walk) -> None:
    """Every chain of child → parent child ends at an input."""
    parent = {ch.path: ch.parent_path for ch in children}
    rooted: set[str] = set()
    for ch in children:
        seen: list[str] = []
        p: str | None = ch.path
        while p is not None and p not in rooted:
            if p in seen:
                raise OutputProblem(f"{walk.shown(ch.path)}: its parents (parent_key = \"output_path\") go round in a "
                                    f"loop through {display(p)}; no input is its ancestor — {_AGAIN}")
            seen.append(p)
            p = parent.get(p)
        rooted.update(seen)


def _get(rec: dict[str, Any], ref: str) -> Any:
    """A record's field by name, or by a JSON path (`$.mask.score`, `$.boxes[0]`): None when
    it is not there."""
    if not ref.startswith("$"):
        return rec.get(ref)
    v: Any = rec
    for step in re.findall(r"\.([^.\[\]]+)|\[([0-9]+)\]", ref):
        if step[0]:
            v = v.get(step[0]) if isinstance(v, dict) else None
        else:
            v = v[int(step[1])] if isinstance(v, list) and int(step[1]) < len(v) else None
        if v is None:
            return None
    return v


def _read_mapping(m: MappingFile, text: str, shown: str, nodes: _Nodes) -> None:
    """The worker's mapping file: each id → the input it names (by `input_key`)."""
    for where, rec in _rows(text, m.format, shown):
        ident, named = _get(rec, m.id_field), _get(rec, m.input_field)
        for ref, v in ((m.id_field, ident), (m.input_field, named)):
            if _string(v) is None or isinstance(v, (bool, float)) or v == "":
                raise OutputProblem(f"{shown} {where}: field {ref!r} is " + ("missing" if v in (None, "") else
                                    "not a string") + f"; each row of the mapping file names an id and its input — "
                                    f"{_AGAIN}")
        sha, why = nodes.input(m.input_key, str(named))
        if sha is None:
            raise OutputProblem(f"{shown} {where}: field {m.input_field!r} {why}; {_AGAIN}")
        have = nodes.by["mapping"].setdefault(str(ident), [])
        if have and have[0] != sha:
            raise OutputProblem(f"{shown} {where}: id {display(str(ident))!r} is mapped to two inputs; {_AGAIN}")
        if not have:
            have.append(sha)


def _records(c: Contract, rule: ResultFiles, f: _File, text: str, nodes: _Nodes, walk: _Walk) -> Iterator[Record]:
    mapping = c.result_mapping[rule.name]
    table = table_of(c, mapping.into)
    own = mapping.into == "result_table" and c.result_table is not None
    if own:
        assert c.result_table is not None
        allowed, required = frozenset(c.result_table.columns), frozenset[str]()
    else:
        allowed, required = RESULT_TABLES[table]
    shown = walk.shown(f.rel)
    for where, rec in _rows(text, rule.format, shown):
        name = _get(rec, rule.node_field)
        value = _string(name) if not isinstance(name, (bool, float)) else None
        if value is None:
            raise OutputProblem(f"{shown} {where}: field {rule.node_field!r} (node_field) is "
                                + ("missing" if name is None else "not a string")
                                + f"; each record names its node there — {_AGAIN}")
        sha: str | None = None
        child: str | None = None
        if rule.node_key == "output_path":
            if value not in nodes.children:
                raise OutputProblem(f"{shown} {where}: field {rule.node_field!r} names no child ({display(value)!r} "
                                    f"is not the path of a child file in the output root); {_AGAIN}")
            child = value
        else:
            sha, why = nodes.input(rule.node_key, value)
            if sha is None:
                raise OutputProblem(f"{shown} {where}: field {rule.node_field!r} {why}; {_AGAIN}")
        if mapping.into == "labels" and not mapping.columns:
            yield from _labels(rule, mapping, rec, sha, child, shown, where)
            continue
        values: dict[str, Any] = {}
        for col in sorted(allowed):
            src = mapping.columns.get(col)
            raw = _get(rec, src) if src is not None else None
            if raw is None or (raw == "" and (own or col not in ("value", "text", "key"))):
                if col in required:
                    raise OutputProblem(f"{shown} {where}: field {src!r} ({table}.{col}) is missing; "
                                        f"{table}.{col} needs a value — {_AGAIN}")
                if not own or src is not None:
                    values[col] = None if own else _DEFAULTS.get(col)
                continue
            if own:
                assert c.result_table is not None
                typed, why = _typed_own(c.result_table.columns[col], raw, cell=rule.format == "csv")
            else:
                typed, why = _typed(table, col, raw)
            if why:
                raise OutputProblem(f"{shown} {where}: field {src!r} ({table}.{col}) {why} (got "
                                    f"{display(json.dumps(raw, ensure_ascii=False)[:80])}); {_AGAIN}")
            values[col] = typed
        yield Record(rule.name, table, sha, child, values)
        yield from _labels(rule, mapping, rec, sha, child, shown, where)


def _labels(rule: ResultFiles, mapping: ResultMapping, rec: dict[str, Any], sha: str | None, child: str | None,
            shown: str, where: str) -> Iterator[Record]:
    """The labels of a mapping's `labels` templates for one record."""
    for i, lv in enumerate(mapping.labels):
        got = {}
        for part, template in (("key", lv.key), ("value", lv.value)):
            text = _render(template, rec, f"{shown} {where}: result_mapping.{rule.name}.labels[{i}].{part}")
            typed, why = _typed("labels", part, text)
            if why:
                raise OutputProblem(f"{shown} {where}: the label {part} of result_mapping.{rule.name}.labels[{i}] "
                                    f"{why} (got {display(text[:80])!r}); {_AGAIN}")
            got[part] = typed
        yield Record(rule.name, "labels", sha, child, got)


def _render(template: str, rec: dict[str, Any], where: str) -> str:
    """A label template with each `{FIELD}` / `{$.path}` replaced by the record's value."""
    out = []
    pos = 0
    for m in _TEMPLATE_PART.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        part = m.group(0)
        if part in ("{{", "}}"):
            out.append(part[0])
            continue
        v = _get(rec, m.group(1) or "")
        text = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else _string(v)
        if v is None or text is None:
            raise OutputProblem(f"{where}: {{{display(m.group(1) or '')}}} is "
                                + ("missing" if v is None else "not a value a label can hold")
                                + f" in this record; {_AGAIN}")
        out.append(text)
    out.append(template[pos:])
    return "".join(out)


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _typed_own(typ: str, v: Any, cell: bool = False) -> tuple[Any, str]:
    """A worker's value converted to a declared column's type (a CSV `cell` is text: "42", "0.5",
    "true", "[1, 2, 3, 4]"; a json column's cell is JSON text, a JSON record's string is a
    string), checked as hoardfs.sql.result_tables checks it again before SQL: (value, '') or
    (None, what it must be)."""
    out: Any = None
    if typ == "int":
        if isinstance(v, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,19}\s*", v):
            out = int(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out = v
        elif isinstance(v, float) and v.is_integer():
            out = int(v)
    elif typ == "float":  # a double: any finite number (not _number's float4 bound)
        try:
            out = float(v.strip()) if isinstance(v, str) else float(v) if isinstance(v, (int, float)) \
                and not isinstance(v, bool) else None
        except (ValueError, OverflowError):
            out = None
        if out is not None and not math.isfinite(out):
            out = None
    elif typ == "bool":
        out = v if isinstance(v, bool) else _BOOLS.get(v.strip().lower()) if isinstance(v, str) else None
    elif typ == "text":
        out = _string(v) if not isinstance(v, (list, dict)) else json.dumps(v, ensure_ascii=False)
    elif typ == "json":
        out = v
        if cell and isinstance(v, str):
            try:
                out = json.loads(v)
            except (ValueError, RecursionError):
                return None, "must be JSON text (a CSV cell of a json column)"
    elif typ == "box":
        out = v
        if isinstance(v, str):
            try:
                out = json.loads(v) if v.strip().startswith("[") else [float(x) for x in re.split(r"[\s,]+", v.strip())]
            except (ValueError, RecursionError):
                out = None
        if isinstance(out, dict) and set(out) == {"x", "y", "w", "h"}:
            out = [out["x"], out["y"], out["w"], out["h"]]
    if out is None:
        what = {"int": "a whole number", "float": "a number", "bool": "true or false", "text": "text",
                "json": "JSON", "box": "a box [x, y, w, h]"}[typ]
        return None, f"is not {what} (column type {typ})"
    why = result_tables.problem(typ, out)
    return (None, f"{why} (column type {typ})") if why else (out, "")


def _no_duplicates(records: list[Record], walk: _Walk) -> list[Record]:
    """A result table's row is one per node (and box): two records for one are refused."""
    seen: dict[tuple, Record] = {}
    for r in records:
        if r.into == "labels":
            continue
        key = (r.into, r.node_sha256, r.child_path) + ((r.values["box_no"],) if r.into == "result_ocr_box" else ())
        if key in seen:
            node = display(r.child_path or r.node_sha256 or "")
            raise OutputProblem(f"{display(walk.root)}: two {r.into} records for node {node}"
                                + (f" box {r.values['box_no']}" if r.into == "result_ocr_box" else "")
                                + f" (rules {seen[key].rule!r} and {r.rule!r}); one row per node — {_AGAIN}")
        seen[key] = r
    return records


def open_output(output_root: Path, child: Child) -> BinaryIO:
    """A child file to store, opened as `parse_outputs` saw it: no link followed on the way, a
    regular file of the size it had (OutputProblem if not)."""
    shown = display(os.path.join(str(output_root), child.path))
    try:
        root_fd = os.open(output_root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = open_nofollow(root_fd, child.path)
        finally:
            os.close(root_fd)
    except OSError as e:
        raise OutputProblem(f"{shown}: cannot be opened as it was read ({e.strerror}); run the action again") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != child.size:
        os.close(fd)
        raise OutputProblem(f"{shown}: changed since the output was read ({child.size} bytes then); run the action "
                            "again")
    return open(fd, "rb")
