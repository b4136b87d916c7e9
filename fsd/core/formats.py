"""Every on-disk format hoardfs writes, the version of each this hoardfs knows, and how an older
index is brought up to it (docs/operations.md "Upgrade"; docs/design.md names the byte layouts).

    thing                 where                                   version (this hoardfs)
    index                 the LMDB `meta` key `format`            INDEX (an index without the key is 1)
    shard header, record  shard files on the HDDs (u16 / u8)      SHARD
    disk identity         `.hoard-disk.json`, `.hoard-ssd.json`   IDENTITY (`format`)
    marks log             `<disk>/marks/marks.log`                MARKS_LOG (no number in the file: 1 is
                                                                  three fields a line, 2 adds the check)
    index judgement       `state/marks-judged.json` (SSD)         JUDGED (a cache: any other is redone)
    manifests, documents  objects in the store, `"format"`        MANIFESTS: `hoardfs-<kind>-<n>`

**A newer format is never written to.** It is what a later hoardfs wrote; this one cannot
know what its bytes mean, and writing beside them could break what it relies on. So:

- a *writable* open of a newer index refuses with one line (`NewerFormat`: the thing, the
  version found, the version known, "upgrade hoardfs") before a byte of it changes; a
  read-only open goes on (`hoard get`, the mount, `health`, `check`) and every write
  transaction it would take is refused with that same line — a read is safe because every
  object read is checked against its sha256, so an entry this version misreads is an error,
  never wrong bytes;
- a shard (header or record) or a manifest of a newer version is refused where it is read
  (`refuse_newer`): recovery does not seal or cut a newer open shard, gc does not collect
  what a newer manifest may name, the mount answers an error for it;
- a disk or SSD identity of a newer format keeps the store from opening for writes.

**An older index is migrated** at the first writable open (`migrate_index`), by the ordered
steps of MIGRATIONS, each idempotent and each committing in bounded write transactions
(hoardfs.fsd.core.txnlog.TXN_ENTRIES); the new version is written only after the last one. A process
killed in the middle leaves the old version in `meta`: the next writable open runs every step
again, and the ones done find nothing to do. Read-only opens of an older index read it as it
is (the tables it lacks read as empty); `hoard check` and `hoard health` judge its pointers only
once it is migrated (INDEX_POINTERS: a table the migration fills is not a disagreement).

What other code upgrades in place, not in the index, stays with its owner and is named here
so one page lists them: an SSD that holds an index from before SSD identities is given one
(hoardfs.fsd.core.layout.check_ssd); a disk initialised before identity copies gets its copy
(hoardfs.fsd.core.disks.keep_identity_copy); a marks log of format 1 is rewritten as a snapshot by
the next writer (hoardfs.fsd.io.copies.catch_up_marks); files made before the `hoard` group get its
modes at their next write (hoardfs.base.modes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.fsd.core.spill import spill_parent

if TYPE_CHECKING:
    from hoardfs.fsd.core.index import Index

log = logging.getLogger(__name__)

#: the index's format. 1: every index before this key existed (no `format` in `meta`; disk
#: records may carry `seen`; the `pointers` table may be empty). 2: `seen` in `meta`
#: (`disk_seen:<uuid>`), every batch and view named in `pointers`, the version in `meta`. 3: the
#: `held` table (hoardfs.fsd.core.held) names, for every object a registered manifest names, that manifest.
#: 4: the `live` table (hoardfs.fsd.core.live) counts, for every shard, the objects the index points at
#: there and their payload bytes. 5: the `held` table's keys are 12 + 4 bytes (3 and 4: 16 + 8).
INDEX = 5
#: the first index format whose `held` table is complete and keyed as this hoardfs reads it
#: (12 + 4 bytes). Until then the manifests are read: an index before INDEX_HELD_LONG gets its
#: table filled by the migration to 3 (every registered manifest read), one of 3 or 4 gets its
#: keys cut by the migration to 5 (one pass over the table)
INDEX_HELD = 5
#: the first index format with a `held` table, keyed by 16 + 8 bytes up to INDEX_HELD
INDEX_HELD_LONG = 3
#: the first index format whose `live` table is complete (an older one's is filled by its
#: migration, one pass over the objects: until then gc's plan makes that pass)
INDEX_LIVE = 4
#: the first index format whose `pointers` table names every batch and view (an older one's is
#: filled by its migration: until then its pointers are not judged)
INDEX_POINTERS = 2
#: the `meta` key that holds it (ascii digits)
INDEX_KEY = "format"
#: an index without INDEX_KEY
INDEX_UNVERSIONED = 1
#: the shard header's u16 and each record header's u8 version (hoardfs.fsd.core.shardfmt)
SHARD = 1
#: the `format` field of a disk's and the SSD's identity file (hoardfs.fsd.core.disks)
IDENTITY = 1
#: the marks log (hoardfs.fsd.core.marks): 1 = `<stamp> <op> <sha256>` lines, 2 = the same with a check
MARKS_LOG = 2
#: the remembered judgements of the marks logs (hoardfs.fsd.io.judged): a cache, redone when it differs
JUDGED = 1

#: the documents stored as objects (manifests) or written beside outputs, each `"format":
#: "hoardfs-<kind>-<version>"`: the one written now, and the older ones still read
BATCH_MANIFEST = "hoardfs-batch-manifest-1"
VIEW_MANIFEST = "hoardfs-view-3"
#: view-1 is one document (still read); view-2 and view-3 are trees of directory objects
VIEW_TREES = ("hoardfs-view-2", VIEW_MANIFEST)
VIEW_DIR = "hoardfs-dir-2"
VIEW_OWNED = "hoardfs-view-owned-1"
OUTPUT = "hoardfs-output-1"
OUTPUT_MANIFEST = "hoardfs-output-manifest-1"
DATASET = "hoardfs-dataset-1"
ACTION: Final = "hoardfs-action-1"  # (Final: the ActionContract model types its `format` as this literal)
#: kind → the newest version of it this hoardfs reads
MANIFESTS = {kind: int(n) for kind, n in (
    f.rsplit("-", 1) for f in (BATCH_MANIFEST, VIEW_MANIFEST, VIEW_DIR, VIEW_OWNED, OUTPUT, OUTPUT_MANIFEST,
                               DATASET, ACTION))}
_VERSIONED = re.compile(r"(hoardfs-[a-z-]+?)-([0-9]+)")

#: the next step of every refusal of a newer format
UPGRADE = "upgrade hoardfs to the release that wrote it (docs/operations.md, \"Upgrade\")"


class NewerFormat(HoardError):
    """A later hoardfs wrote this; nothing was written to it (see the module's docstring)."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, thing: str, found: int | str, known: int | str) -> None:
        super().__init__(f"{thing} is format {found}, newer than this hoardfs knows ({known}); nothing was written "
                         f"to it — {UPGRADE}")
        self.thing, self.found, self.known = thing, found, known


def refuse_newer(thing: str, found: int, known: int) -> None:
    """Raise NewerFormat when `found` is a later version than `known`."""
    if found > known:
        raise NewerFormat(thing, found, known)


def check_document(doc: Any, what: str) -> None:
    """Refuse a stored document (a manifest, a directory object) written in a later version of
    a format this hoardfs knows (`hoardfs-view-4`): its readers would misread it, and gc must
    not collect what it may name."""
    fmt = doc.get("format") if isinstance(doc, dict) else None
    m = _VERSIONED.fullmatch(fmt) if isinstance(fmt, str) else None
    if m and m.group(1) in MANIFESTS:
        refuse_newer(what, int(m.group(2)), MANIFESTS[m.group(1)])


# -- the index ---------------------------------------------------------------------------------

def index_version(index: Index) -> int:
    """The index's format (INDEX_UNVERSIONED when it has no key; a value that is no number is
    taken as newer: it is nothing this version wrote)."""
    raw = index.get_meta(INDEX_KEY)
    return INDEX_UNVERSIONED if raw is None else parse_index_version(raw)


#: the mark after an index's format while a migration step rewrites, in place, a table that
#: format's release reads (`_held_shortened`): "4+" is format 4 to this hoardfs — the step is
#: done again —, and no number to a release of format 4 (parse_version), which then refuses it
#: as newer instead of reading a table half rewritten (a `held` half cut: the objects whose keys
#: were cut look unheld to it, and its deletion and gc would free what a batch still names)
REWRITING = "+"


def parse_index_version(raw: str) -> int:
    """The index's stored format (parse_version), a step rewriting it in place (REWRITING) read
    as the format it started from."""
    return parse_version(raw[:-len(REWRITING)] if raw.endswith(REWRITING) else raw)


def parse_version(raw: str) -> int:
    """A stored version (ascii digits); anything else is taken as newer: this version never
    wrote it."""
    return int(raw) if raw.isdigit() and len(raw) < 10 else 1 << 30


@dataclass(frozen=True)
class Migration:
    """One step from version `to - 1` to `to`: `run(index)` returns how many entries it changed.
    A step that `reads` objects (the manifests) is `run(index, get)`: it runs once the store's
    disks are attached (Store.open migrates in two calls)."""

    to: int
    name: str
    run: Callable[..., int]
    reads: bool = False


def _seen_out(index: Index) -> int:
    # disk records written by the version that kept `seen` inside them: the release before it
    # cannot read them (it builds a record from every field); the time moves to `meta`
    return index.move_seen_out()


def _pointers_filled(index: Index) -> int:
    # an index from before the `pointers` table: every batch and view gets its stamped pointer
    return index.align_pointers()


def _held_filled(index: Index, get: Callable[[str], bytes]) -> int:
    # the object → manifests table (hoardfs.fsd.core.held): every registered manifest read once, its keys
    # sorted in runs beside the index (on the SSD, when this process may write there)
    return index.fill_held(get, spill_parent(index.path.parent))


def _live_filled(index: Index) -> int:
    # the shard → live count table (hoardfs.fsd.core.live): one pass over the objects — unless another
    # process migrated the index since this one read its format (its gc may plan from the counts)
    if index_version(index) >= INDEX_LIVE:
        return 0
    return index.fill_live()


def _held_shortened(index: Index) -> int:
    # the `held` keys of formats 3 and 4 (16 + 8 bytes) cut to 12 + 4: one pass over the table —
    # only on an index of those formats (a table the migration to 3 just filled has these keys;
    # one another process migrated meanwhile is cut already)
    found = index_version(index)
    if not INDEX_HELD_LONG <= found < INDEX_HELD:
        return 0
    # (a release of that format must not read the table half cut: it refuses the index until
    # the version this migration writes last)
    index.set_meta(INDEX_KEY, f"{found}{REWRITING}")
    return index.shorten_held()


#: every step, oldest first; a step must be idempotent and commit in bounded transactions
MIGRATIONS = (
    Migration(2, "disk last-seen times out of the disk records", _seen_out),
    Migration(2, "batch and view pointers into the pointers table", _pointers_filled),
    Migration(3, "which manifests name each object into the held table", _held_filled, reads=True),
    Migration(4, "each shard's live objects and bytes counted into the live table", _live_filled),
    Migration(5, "the held table's keys cut to 12 + 4 bytes", _held_shortened),
)


def migrate_index(index: Index, found: int | None = None, get: Callable[[str], bytes] | None = None) -> list[str]:
    """Bring an older index up to INDEX (see the module's docstring); returns what was done,
    one line per step that changed something. The version is written last. Without `get` (the
    store's disks not attached yet) the steps that read objects are left for the next call, and
    the version written is the one the steps before them make."""
    found = index_version(index) if found is None else found
    done: list[str] = []
    for step in MIGRATIONS:
        if step.to > found:
            if step.reads and get is None:
                if step.to - 1 > found:  # the steps before are done: the index is of that format now
                    index.set_meta(INDEX_KEY, str(step.to - 1))
                return done
            n = step.run(index, get) if step.reads else step.run(index)
            if n:
                done.append(f"{step.name}: {n}")
    index.set_meta(INDEX_KEY, str(INDEX))
    if done or found < INDEX:
        log.info("index at %s migrated from format %d to %d%s", index.path, found, INDEX,
                 "".join(f"; {d}" for d in done))
    return done


def index_state(found: int) -> dict[str, Any]:
    """The index's part of `formats` in `hoard health --json` and `hoard check --json`."""
    state = "ok" if found == INDEX else ("older" if found < INDEX else "newer")
    out: dict[str, Any] = {"found": found, "known": INDEX, "state": state}
    if state == "older":
        out["next"] = "any writable command migrates it (or `hoard index migrate`)"
    elif state == "newer":
        out["next"] = UPGRADE
    return out


def survey(index_found: int | None, identities: dict[str, Any]) -> dict[str, Any]:
    """What `hoard health --json` and `hoard check --json` show as `formats` — the one judgement
    of both: the formats known, the index's (None: not opened), each identity's `format`
    (`identities`: name → the value found, None when unreadable) and `problems`, one line per
    thing a later hoardfs wrote (an older one is no problem: the next writer migrates it)."""
    problems = []
    if index_found is not None and index_found > INDEX:
        problems.append(NewerFormat("the index", index_found, INDEX).message)
    for name, found in identities.items():
        if isinstance(found, int) and found > IDENTITY:
            problems.append(NewerFormat(f"the identity of {name}", found, IDENTITY).message)
    return {"known": known(), "index": None if index_found is None else index_state(index_found),
            "identities": identities, "problems": problems}


def known() -> dict[str, Any]:
    """Every format this hoardfs knows, as `hoard health --json` `formats.known` shows it."""
    return {"index": INDEX, "shard": SHARD, "identity": IDENTITY, "marks_log": MARKS_LOG, "judged": JUDGED,
            "documents": dict(sorted(MANIFESTS.items()))}
