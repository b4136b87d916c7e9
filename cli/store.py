"""`hoard put`, `hoard get`, `hoard replicate`: the store from the command line."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.files import replacing, size_or_zero
from hoardfs.base.modes import FILE
from hoardfs.base.paths import display
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, finite, out, progress, read_input, state
from hoardfs.fsd.core.records import sha_bytes
from hoardfs.fsd.io.replicate import replicate_once
from hoardfs.fsd.outputs import puts
from hoardfs.fsd.store import Store


def open_store(ctx: typer.Context, writable: bool = True):

    return Store.open(state(ctx).settings, writable=writable)


def _expand(paths: list[Path], manifest: Path | None) -> tuple[list[Path], list[str]]:
    """The files to store, and the directories that could not be walked (each a reject line).

    A directory walk lists every entry that is not a directory — FIFOs, sockets, devices and
    dangling symlinks too — so each is rejected by name instead of vanishing silently."""
    items: list[Path] = []
    unreadable: list[str] = []
    if manifest is not None:
        raw = read_input(manifest, "manifest")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HoardError(f"manifest {display(str(manifest))} is not UTF-8 text (byte {e.start})",
                             ExitCode.USAGE) from None
        items += [Path(line) for line in text.splitlines() if line.strip()]
    for p in paths:
        if p.is_dir():
            walked: list[Path] = []
            for top, dirs, files in os.walk(p, onerror=lambda e: unreadable.append(
                    f"{display(str(e.filename))}: cannot list ({e.strerror})")):
                dirs.sort()
                walked += [Path(top) / f for f in files]
            items += sorted(walked)
        else:
            items.append(p)
    if not items and not unreadable:
        empty = [display(str(p)) for p in paths if p.is_dir()]
        if empty:
            raise HoardError(f"nothing to store: {', '.join(empty)} "
                             f"{'holds' if len(empty) == 1 else 'hold'} no files; name a directory with files "
                             "in it, files, or --manifest FILE", ExitCode.USAGE)
        raise HoardError("nothing to store: name files or directories, or --manifest FILE", ExitCode.USAGE)
    return items, unreadable


def put(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(help="files or directories (walked)")] = None,
    klass: Annotated[str, typer.Option("--class", help="raw or generated (sets the replica target)")] = "raw",
    manifest: Annotated[Path | None, typer.Option(help="file with one path per line ('-' = stdin)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per file")] = False,
    name: Annotated[str | None, typer.Option("--name", help="record what this put stored under NAME "
                                                "(`hoard ls --puts`; `hoard delete --put NAME` releases it)")] = None,
) -> None:
    """Store files: prints sha256, new/existing and replicas now/target per file, as each is stored.

    Exit 5 if any file was rejected (each is named on stderr with the reason), or was stored
    before but none of its copies can be read now (its disks failed or missing: keep the file;
    named on stderr). Interrupted,
    it has printed exactly the files that were stored. What it stored is kept until
    `hoard delete --object SHA256` (dropping a batch with the same content does not free it);
    with `--name NAME`, until `hoard delete --put NAME` (an interrupted named put records
    what it stored until then).
    """
    items, unreadable = _expand(paths or [], manifest)
    t0 = time.monotonic()
    counts = {"new": 0, "existing": 0, "rejected": len(unreadable), "bytes": 0, "unreadable": 0}
    for why in unreadable:
        err.print(f"rejected {why}", markup=False)

    seen = [0]

    def done_bytes(r) -> int:
        seen[0] += r.size
        return seen[0]

    stored: dict[str, str] = {}  # a named put's view: path → sha256

    def report(r) -> None:
        counts[r.status] += 1
        if r.status != "rejected":
            stored[puts.view_path(r.path)] = r.sha256
        if r.status == "new":
            counts["bytes"] += r.size
        shown = display(r.path)
        if as_json:
            out.print(json.dumps(r.__dict__ | {"path": shown}), soft_wrap=True, markup=False)
        elif r.status != "rejected":
            out.print(f"{r.sha256}  {r.status:<8} {r.replicas}/{r.target}  {shown}", markup=False)
        if r.status == "rejected":
            err.print(f"rejected {shown}: {r.reason}", markup=False)
        elif r.status == "existing" and r.replicas == 0:  # (stored before, but no copy reads now)
            counts["unreadable"] += 1
            err.print(f"{shown}: already stored as {r.sha256}, but none of its copies can be read now (the disks "
                      "holding them are failed or missing: `hoard health` says which and the next step); keep "
                      "this file until they are back", markup=False)

    stop = _stop_on_first_ctrl_c()
    total = sum(size_or_zero(p) for p in items)
    began = False  # a name refused before a byte is stored is its one line, without a "0 files" summary

    try:
        with open_store(ctx) as store, progress("storing", total) as update:
            if name is not None:
                puts.check_name(store.index, name)  # before a byte is stored
            began = True
            root = puts.held_reason(name) if name is not None else "hoard put"
            try:
                def on_result(r) -> None:
                    report(r)
                    update(done_bytes(r))

                store.put_many(items, klass=klass, stop=stop, root=root, on_result=on_result)
            finally:
                if name is not None and stored:
                    info = puts.record(store, name, stored, root)
                    err.print(f"put {name}: {info['files']} files, {fmt_bytes(info['bytes'])} recorded "
                              f"(`hoard delete --put {name}` releases them)", markup=False)
                elif name is not None:
                    err.print(f"nothing stored: no put named {name} was recorded", markup=False)
    finally:
        if began:
            unread = f" ({counts['unreadable']} with no readable copy now)" if counts["unreadable"] else ""
            err.print(f"{counts['new'] + counts['existing'] + counts['rejected']} files: {counts['new']} new "
                      f"({fmt_bytes(counts['bytes'])}), {counts['existing']} already present{unread}, "
                      f"{counts['rejected']} rejected in {time.monotonic() - t0:.2f} s", markup=False)
    if counts["rejected"] or counts["unreadable"]:
        raise typer.Exit(ExitCode.DATA)


def _stop_on_first_ctrl_c():
    """An event set by the first Ctrl-C (the work stops at a safe point and reports what it
    did); a second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def first(_sig, _frame) -> None:
        # the handler is swapped before anything else: a second Ctrl-C arriving while this one
        # is inside Event.set (its lock held) must interrupt, not run this again (a deadlock)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop.set()
        err.print("hoard: stopping after the current file (Ctrl-C again to stop at once)", markup=False)

    signal.signal(signal.SIGINT, first)
    return stop


def get(
    ctx: typer.Context,
    sha256: Annotated[str, typer.Argument(help="the object's sha256 (64 hex digits)")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
) -> None:
    """Read an object back, verified piece by piece, from the best healthy replicas.

    `-o FILE` is written beside the target and renamed when complete; a device or FIFO
    (`-o /dev/null`) is written in place. Memory stays bounded whatever the object's size."""

    target = check_output(output) if output is not None else None
    sha = sha_bytes(sha256.lower())
    with open_store(ctx, writable=False) as store:
        pieces = store.iter_object(sha)  # verified piece by piece: memory does not grow with the object
        if output is None:
            for piece in pieces:
                sys.stdout.buffer.write(piece)
            sys.stdout.buffer.flush()
            return
        assert target is not None  # checked with `output`
        write_output(output, target, pieces)


def check_output(output: Path) -> str:
    """How `-o PATH` will be written, checked before any work: "file" (a temp file beside it,
    renamed over it when complete) or "device" (an existing FIFO or character device such as
    /dev/null is written in place, as a shell redirect would — never renamed over)."""
    name = display(str(output))
    try:
        st = os.stat(output)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise HoardError(f"cannot write {name}: {e.strerror}", ExitCode.USAGE) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise HoardError(f"{name} is a directory; name the file to write (e.g. {name.rstrip('/')}/object.bin)",
                         ExitCode.USAGE)
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        return "device"
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise HoardError(f"{name} is not a regular file; name a file to write", ExitCode.USAGE)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise HoardError(f"cannot write {name}: the directory {display(str(parent))} does not exist", ExitCode.USAGE)
    if not os.access(parent, os.W_OK):
        raise HoardError(f"cannot write {name}: {display(str(parent))} is not writable", ExitCode.USAGE)
    return "file"


def write_output(output: Path, how: str, chunks) -> None:
    """Write `chunks` to `output` as `check_output` decided; a failure is one line (no room:
    exit 6), and a regular file is only replaced once it is complete and fsynced."""
    name = display(str(output))
    try:
        # a file is made new beside the target, without a name until it is whole (`replacing`):
        # `-o /tmp/x` as root with a link planted at /tmp/.x.part truncated what it pointed at;
        # two commands writing one -o at once renamed each other's half; a killed one left its
        # part for good
        with replacing(output, FILE, "part") if how == "file" else open(output, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if how == "file":
                os.fsync(f.fileno())
    except OSError as e:
        raise HoardError(f"cannot write {name}: {e.strerror}",
                         ExitCode.NO_SPACE if e.errno in (errno.ENOSPC, errno.EDQUOT) else ExitCode.USAGE) from None


def replicate(
    ctx: typer.Context,
    budget_s: Annotated[float, typer.Option(min=0, callback=finite, help="stop after this many seconds")] = 600,
    rate_mb_s: Annotated[float, typer.Option(min=0, callback=finite, help="copy at most this fast (0 = no limit)")] = 100,
    watch: Annotated[bool, typer.Option(help="keep running, checking every 30 s")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="each round's report as JSON")] = False,
) -> None:
    """Copy shards below their replica target (copy_of_raw / copy_of_generated).

    Exit 0: every shard is at its target; 4: some remain below it — each reason on stderr
    (no room, no readable replica, the budget ran out) with its next step."""

    while True:
        with open_store(ctx) as store, progress("replicating") as update:
            rep = replicate_once(store, budget_s, rate_mb_s or None, progress=update)
        if as_json:
            out.print(json.dumps(asdict(rep)), markup=False)
        else:
            out.print(f"replicated {rep.copied_shards} shards ({fmt_bytes(rep.copied_bytes)}) in "
                      f"{rep.seconds:.1f} s; {rep.remaining_shards} still below target"
                      + (f"; {rep.repaired} bad replicas repaired" if rep.repaired else ""), markup=False)
        if rep.no_room and not as_json:
            err.print(f"no room: {rep.no_room_detail}; add a disk (`hoard disks add`) or free space (`hoard gc`)",
                      markup=False)
        if rep.errors and not as_json:
            err.print(f"{rep.errors} shard(s) could not be copied (the warnings above name them): `hoard health` "
                      "lists shards without a readable replica, `hoard verify --repair` mends bad ones", markup=False)
        if not watch:
            if rep.remaining_shards:  # README: exit 4, below target (attention, or another run)
                if not as_json and rep.remaining_shards > rep.errors + rep.no_room:
                    err.print(f"{rep.remaining_shards - rep.errors - rep.no_room} shard(s) left for the next run "
                              "(the --budget-s ran out): run `hoard replicate` again", markup=False)
                raise typer.Exit(ExitCode.DEGRADED)
            return
        time.sleep(30)
