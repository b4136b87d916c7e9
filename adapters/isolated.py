"""`parse_isolated`: `parse_batch` run in a child process that writes nothing and reads only the
batch and Python's own files — the scraped documents are hostile, and the process that
ingests them otherwise holds the store, the database and the GUI's accounts.

The child (`python -m hoardfs.adapters.isolated FORMAT SOURCE SETTLE_S BATCH_DIR`, one per batch, not
per document) imports the parsers, confines itself with Landlock (hoardfs.base.landlock: no
write anywhere, reads below the batch directory, the standard library, site-packages, the
packages it loaded and the system's shared libraries; no program may be started), then
screens and parses the batch exactly as in-process, and prints one JSON document on its
stdout: the records (hoardfs.adapters.records), the rejects with their reasons, the claimed files,
the screen's files and identities. It has only its three standard descriptors (subprocess
closes the rest: Landlock leaves a descriptor opened before the restriction its rights).
The parent believes that answer only where it cannot send the ingest outside the batch
(`answer`). Nothing else changes: the parent quarantines the rejects, a bad document is still
one reject, and the screen's errors (a batch directory swapped for a link) are the same lines.

Where the kernel has no Landlock the child runs unconfined (`hoard health` warns); the unit's
systemd sandboxing is then the only wall.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hoardfs.adapters import FORMATS, parse_batch
from hoardfs.adapters.base import Adapter, BatchView, Parsed, Reject
from hoardfs.adapters.records import record_fault, record_json
from hoardfs.adapters.screen import open_batch
from hoardfs.base import landlock
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import display, hostile_reason
from hoardfs.base.proc import end_group, ended

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


#: a parse that gives no answer within this (plus the settle time) is taken for a parser a
#: document made loop: killed, the batch refused (20,000 items parse in about 5 s)
PARSE_TIMEOUT_S = 1800.0
#: the largest answer taken (about 600 bytes per file of the batch: some 400,000 files)
MAX_ANSWER = 256 << 20
#: the end of the child's stderr kept for the log
_STDERR_TAIL = 64 << 10
#: the memory (MB of address space) the child may take unless told (ingest.parser_memory_mb)
MEMORY_MB = 2048
#: the child's exit status once its documents needed more memory than it may take
OUT_OF_MEMORY = 86


def parse_isolated(root: Path, adapter: Adapter, settle_s: float = 0.0, *, cmd: list[str] | None = None,
                   timeout_s: float = PARSE_TIMEOUT_S, limit: int = MAX_ANSWER,
                   memory_mb: int = MEMORY_MB) -> tuple[Parsed, BatchView, list[dict[str, Any]]]:
    """`parse_batch(root, adapter, settle_s)` in a confined child: the rejects and claimed files
    (a Parsed whose `records` is left empty), a BatchView with the screen's files and
    identities, and the records in their JSON form (`hoardfs.adapters.records.record_json`: what the
    ingest keeps; rebuilding 20,000 Records only to turn them back took ~2 s of CPU). A child
    that answers more than `limit` bytes, nothing within `timeout_s` (+ settle_s), or something
    that is not a parse refuses the batch in one line, killed and reaped; so does one whose
    documents need more than `memory_mb` MB (`cmd`: another child, only in the tests of what a
    parser made to lie can do)."""
    cmd = cmd or [sys.executable, "-P", "-s", "-m", "hoardfs.adapters.isolated", adapter.format, adapter.source,
                  repr(settle_s), str(root), str(memory_mb)]
    name = display(root.name)
    code, out, err_b = _run(cmd, timeout_s + settle_s, limit, adapter.format, name)
    if code == OUT_OF_MEMORY:  # a lie here only fails the batch it was to parse
        raise HoardError(f"the {adapter.format} parser of batch {name} needed more than {memory_mb} MB "
                         "(ingest.parser_memory_mb) — a document of the batch expands past it (a JSON bomb?): it "
                         "stopped there and nothing of the batch was taken. Keep the batch for inspection; if its "
                         "documents are genuine, raise ingest.parser_memory_mb in hoard.toml, then "
                         f"`hoard ingest --resume {root.name}`", ExitCode.DATA)
    # what it printed, each line shown safe (it is the process that read the hostile bytes: an
    # escape sequence would reach the terminal of `hoard ingest --here` through the log)
    err = "\n".join(display(line) for line in err_b.decode("utf-8", "replace").strip().splitlines())
    if code != 0 or not out:
        log.error("the parser of %s ended with exit %s:\n%s", root, code, err)
        last = err.splitlines()[-1] if err else "no message"
        raise HoardError(f"the {adapter.format} parser of batch {name} failed ({last[:200]}); a bug: "
                         f"its traceback is in the worker log. After a fix, `hoard ingest --resume {root.name}`",
                         ExitCode.BUG)
    if err:
        log.info("the parser of %s said: %s", root, err)
    try:
        doc = json.loads(out)
    except (ValueError, RecursionError):
        doc = None
    return answer(root, adapter, doc)


def _run(cmd: list[str], timeout_s: float, limit: int, fmt: str, name: str) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, the end of stderr) of `cmd`, in a session of its own (no terminal),
    with none of the service's environment (`landlock.child_env`); killed and reaped past
    `timeout_s` or `limit` bytes of stdout (HoardError)."""
    deadline = time.monotonic() + timeout_s
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=landlock.child_env())
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    poller = select.poll()  # not select(): a descriptor above 1023 (a worker with many open) is refused there
    for fd in streams:
        poller.register(fd, select.POLLIN)
    why = None
    try:
        while streams and why is None:
            ready = [fd for fd, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000)]
            if not ready:
                why = f"gave no answer within {timeout_s:.0f} s (a document that makes it loop?)"
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    del streams[fd]
                    poller.unregister(fd)
                    continue
                buf = streams[fd]
                buf += chunk
                if buf is err and len(err) > _STDERR_TAIL:
                    del err[:-_STDERR_TAIL]
                elif buf is out and len(out) > limit:
                    why = f"answered more than {limit >> 20} MB"
        while why is None and not ended(proc):  # (its output closed; its end, not reaped yet)
            if time.monotonic() > deadline:
                why = f"gave no answer within {timeout_s:.0f} s (a document that makes it loop?)"
            time.sleep(0.01)
    finally:
        end_group(proc)  # what it forked too, which may outlive it
        proc.stdout.close()
        proc.stderr.close()
    if why is None:
        return proc.returncode, bytes(out), bytes(err)
    raise HoardError(f"the {fmt} parser of batch {name} {why}: it was stopped and nothing of the batch was taken. "
                     "Keep the batch for inspection and tell the developers; a batch of that many files is split "
                     f"in smaller ones, then `hoard ingest --resume {name}`", ExitCode.DATA)


def answer(root: Path, adapter: Adapter, doc: Any) -> tuple[Parsed, BatchView, list[dict[str, Any]]]:
    """The child's JSON as `parse_isolated` returns it, once checked (`_lies`): the child is the
    process that read the hostile bytes, so what it says is believed only where it cannot send
    the ingest outside the batch — a parser made to name `../../etc/hoard/hoard.toml`, a link out
    of the batch or another file's identity would have the store step store that file as the
    service, and the quarantine move it — nor make it fail with a traceback (`_shape`)."""
    name = display(root.name)
    lie = None
    if isinstance(doc, dict) and "error" in doc:
        # the screen's one refusal (the batch directory is a link, or cannot be read): its line is
        # the parent's own, never the child's text — a parser taken over would otherwise print
        # its own "next step" as hoard's
        os.close(open_batch(root))
        lie = "an error about a batch directory that opens"
    lie = lie or _shape(doc) or _lies(root, doc)
    if lie:
        raise HoardError(f"the {adapter.format} parser of batch {name} named {lie}, which the screen "
                         "never gives: nothing of the batch was taken. A parser that lies has been made to by a "
                         "document of the batch (or is a bug): keep the batch for inspection and tell the developers",
                         ExitCode.DATA)
    parsed = Parsed(rejects=[Reject(list(paths), display(reason)) for paths, reason in doc["rejects"]],
                    claimed=set(doc["claimed"]))
    view = BatchView(root, {rel: int(size) for rel, size in doc["files"].items()})
    view.identity = {rel: (int(v[0]), int(v[1]), int(v[2]), int(v[3])) for rel, v in doc["identity"].items()}
    return parsed, view, list(doc["records"])


def _shape(doc: Any) -> str | None:
    """What in the child's answer is not of the form `_child` writes, or None."""
    def ints(v: Any, n: int) -> bool:
        return isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                           for x in v)

    if not isinstance(doc, dict) or set(doc) != {"records", "rejects", "claimed", "files", "identity"}:
        return "an answer that is not a parse (not the JSON of one)"
    files, identity, claimed, rejects = doc["files"], doc["identity"], doc["claimed"], doc["rejects"]
    if not isinstance(files, dict) or not all(ints([v], 1) for v in files.values()):
        return "files that are not names with sizes"
    if not isinstance(identity, dict) or not all(ints(v, 4) for v in identity.values()):
        return "identities that are not four numbers"
    if not isinstance(claimed, list) or not all(isinstance(c, str) for c in claimed):
        return "claimed files that are not names"
    if not isinstance(rejects, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], list) and isinstance(r[1], str)
            and all(isinstance(p, str) for p in r[0]) for r in rejects):
        return "rejects that are not names with a reason"
    if not isinstance(doc["records"], list):
        return "records that are not a list"
    for i, rec in enumerate(doc["records"]):
        fault = record_fault(rec)
        if fault:
            return f"record {i}, which is malformed ({fault})"
    return None


def _lies(root: Path, doc: dict[str, Any]) -> str | None:
    """What in the child's answer the screen could not have said, or None. Files and claimed
    files: clean relative names (`hostile_reason`) below directories of the batch that are no
    links, each a regular file or a link to a file inside the batch, and the very file (device,
    inode) the child says the screen saw; rejects: paths that cannot climb out (quarantine moves
    them within 3A)."""
    top = os.path.realpath(root)
    files, identity = doc["files"], doc["identity"]
    plain: dict[str, bool] = {"": True}  # batch directory → no link on its way
    for rel in files:
        if not isinstance(rel, str) or hostile_reason(rel) or rel not in identity:
            return f"the file {display(str(rel))}"
        d = rel.rpartition("/")[0]
        if d not in plain:
            plain[d] = os.path.realpath(os.path.join(top, d)) == os.path.join(top, d)
        path = os.path.join(top, rel)
        try:
            st = os.stat(path)
            inside = plain[d] and (not os.path.islink(path) or os.path.realpath(path).startswith(top + "/"))
        except OSError:
            return f"the file {display(rel)} (gone)"
        if not inside or not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != tuple(identity[rel][:2]):
            return f"the file {display(rel)} (outside the batch, or not the file it says)"
        if files[rel] != identity[rel][2]:  # the quota check reads one, the store checks the other
            return f"the file {display(rel)} (two sizes)"
    for rel in [*doc["claimed"], *identity]:
        if rel not in files:
            return f"the file {display(str(rel))} (never screened)"
    claimed = set(doc["claimed"])
    for paths, _reason in doc["rejects"]:
        for rel in paths:
            if rel in claimed:  # parse_batch leaves a file claimed and rejected rejected
                return f"the file {display(rel)} (claimed and rejected)"
            if not isinstance(rel, str) or (rel and (rel.startswith("/") or "\x00" in rel
                                                     or any(p in ("", ".", "..") for p in rel.split("/")))):
                return f"the rejected path {display(str(rel))}"
    return None


def confine_parser(root: str) -> bool:
    """The parser's walls: no write anywhere, no program started, reads only below `root` (the
    batch directory, unless it is a link: the screen then refuses it) and Python's own files.
    False where the kernel has no Landlock."""
    batch = [root] if os.path.isdir(root) and not os.path.islink(root) else []
    return landlock.confine_reader(batch)


def _child(argv: list[str]) -> int:
    importlib.import_module("_strptime")  # datetime.strptime imports it lazily: loaded before the walls go up
    fmt, source, settle_s, root, *memory_mb = argv
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # a worker killed (-9) takes its parser along
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a parser prints goes to stderr, never into the result
    with out:
        try:
            landlock.limit_memory(int(memory_mb[0]) if memory_mb else MEMORY_MB)
            confine_parser(root)
            parsed, view = parse_batch(Path(root), FORMATS[fmt](source), float(settle_s))
        except HoardError as e:
            out.write(json.dumps({"error": e.message, "exit_code": int(e.exit_code)}))
            return 0
        except MemoryError:  # what the documents built is freed by now: the exit needs little
            return OUT_OF_MEMORY
        try:  # one json.dumps, written once: json.dump writes every small piece through Python
            answer = json.dumps({"records": [record_json(r) for r in parsed.records],
                                 "rejects": [[r.paths, r.reason] for r in parsed.rejects],
                                 "claimed": sorted(parsed.claimed), "files": view.files, "identity": view.identity})
        except MemoryError:
            return OUT_OF_MEMORY
        out.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
