"""Where the store keeps things besides shards, on each HDD and on the SSD (docs/design.md,
"Where things are").

    <disk root>/batches/<batch_id>.json   names an ingested batch's manifest object
    <disk root>/views/<name>.json         names a view's manifest object
    <disk root>/marks/marks.log           the deletion marks, in order (replayed by index rebuild)
    <disk root>/.hoard-forgotten.json     a disk `hoard disks forget` let go of
    <ssd.root>/.hoard-ssd.json            the SSD's identity (no identity: not mounted)
    <ssd.root>/state/pins/<name>.json     objects a running job relies on (gc keeps them)
    <index_dir>/../                       the store's lock files (hoardfs.fsd.core.storelock)

Who may enter which of them (`protect_ssd`, `protect_disk`; docs/security.md): a disk's root
and the SSD's are passages (0751), what holds data below them 0750, zones 3A and 3C 1770 with
the sticky bit.

A leaf of the store: the facade, gc, reindex and lifecycle import it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from hoardfs.base import modes
from hoardfs.base.config import ZONES, Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.paths import NAME_PATTERN
from hoardfs.fsd.core import storelock
from hoardfs.fsd.core.diskid import SHARDS_DIR, TMP_DIR, read_identity, write_identity

log = logging.getLogger(__name__)

#: per disk: `<root>/batches/<batch_id>.json` names each ingested batch's manifest object
BATCHES_DIR = "batches"
#: per disk: `<root>/views/<name>.json` names each view's manifest object
VIEWS_DIR = "views"
#: per disk: `<root>/marks/*.log`, the deletion marks (hidden, deleted) and their clearing, in order
MARKS_DIR = "marks"
MARKS_LOG = "marks.log"
#: the record kinds of the marks log: set / clear a type-A hidden mark, set / clear a type-B
#: tombstone, set / release a root (`hoard put` acknowledged the object: it is kept until
#: `hoard delete --object`), and "drop" (gc freed the object: every mark goes with it)
MARK_OPS = ("hide", "show", "delete", "keep", "root", "unroot", "drop")
#: written on a forgotten disk's root (`hoard disks forget`), so that a hoard.toml still listing
#: it gets "forgotten: remove it from hoard.toml" instead of the refusal of a disk holding
#: shards the index does not know (the guard against a lost index)
FORGOTTEN = ".hoard-forgotten.json"
#: on the SSD's root: its identity (see check_ssd)
SSD_IDENTITY = ".hoard-ssd.json"


#: the zones others write besides this service: a scraper account 3A, a trainer's job 3C
DROP_ZONES = ("3A", "3C")
#: what a disk's root holds that only the service and its group may read
DISK_PRIVATE = (SHARDS_DIR, TMP_DIR, BATCHES_DIR, VIEWS_DIR, MARKS_DIR)


def protect_ssd(cfg: Settings, make: bool = False) -> None:
    """The SSD's directories with their modes (hoardfs.base.modes): `make` creates the missing ones
    (`hoard init`), otherwise the existing ones are tightened (every writable open: a store
    made by an older hoardfs, 0755 everywhere, is closed to others at its next write)."""
    root = cfg.ssd.root
    dirs = [(root, modes.PASSAGE), (cfg.index_dir, modes.PRIVATE), (root / "state", modes.PRIVATE),
            (root / "locks", modes.PRIVATE)]
    dirs += [(cfg.ssd.zone_path(z), modes.DROP if z in DROP_ZONES else modes.PRIVATE) for z in ZONES]
    for path, mode in dirs:
        if make or path.is_dir():
            modes.ensure_dir(path, mode)


def protect_disk(root: Path) -> None:
    """A disk's root as a passage (PostgreSQL's user reaches its pgBackRest repository there),
    what holds shards, pointers and marks below it closed to others."""
    modes.ensure_dir(root, modes.PASSAGE)
    for name in DISK_PRIVATE:
        if (root / name).is_dir():
            modes.ensure_dir(root / name, modes.PRIVATE)


def pins_dir(cfg: Settings) -> Path:
    """`<ssd.root>/state/pins/<name>.json`: objects jobs rely on (see Store.pin)."""
    return cfg.ssd.root / "state" / "pins"


def pinned(cfg: Settings) -> tuple[set[bytes], list[str]]:
    """Every pinned object, and the pin files that could not be read (gc refuses then)."""
    shas: set[bytes] = set()
    bad = []
    for p in sorted(pins_dir(cfg).glob("*.json")):
        try:
            shas.update(bytes.fromhex(h) for h in json.loads(p.read_bytes())["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            bad.append(f"{p}: {e}")
    return shas, bad


def pin_path(cfg: Settings, name: str) -> Path:
    """The pin file `name` (e.g. `ingest-<batch_id>`) names; a name that is not a valid name is a bug."""
    if not re.match(NAME_PATTERN, name):
        raise HoardError(f"pin name {name!r} is not a valid name", ExitCode.BUG)
    return pins_dir(cfg) / f"{name}.json"


def names_lock(cfg: Settings) -> Path:
    """The lock file held while a batch or view is registered or unregistered with what follows
    from it (hoardfs.fsd.outputs.manifest.naming_lock)."""
    return cfg.ssd.root / "locks" / "names.lock"


def naming_busy(cfg: Settings) -> bool:
    """Whether a process holds the naming lock now (its pending `held` records are work under way,
    not work a killed process left: hoardfs.fsd.io.integrity). A lock file this user cannot read: taken
    as busy (nothing is reported that may be under way)."""
    try:
        return storelock.taken(names_lock(cfg))
    except OSError:
        return True


def lock_root(cfg: Settings) -> Path:
    """Where the store's lock files live (beside the index, on the SSD)."""
    return cfg.index_dir.parent


#: what `hoard index rebuild` and `restore` work in beside the index, `<index>.<kind>/`: the new
#: index (`rebuild`), its spilled sorted runs (`spill`), the index copy a restore reads
#: (`restore`). Removed when the command ends; a killed one leaves them (`index_leftovers`).
INDEX_WORK = ("rebuild", "spill", "restore")


def index_work(cfg: Settings, kind: str) -> Path:
    """`<index>.<kind>/` (INDEX_WORK)."""
    return cfg.index_dir.with_name(f"{cfg.index_dir.name}.{kind}")


def index_rebuild_busy(cfg: Settings) -> bool:
    """Whether an index rebuild or restore runs now: only they hold the readers lock exclusively
    (hoardfs.fsd.core.storelock), for as long as their work folders are in use. A lock file this user
    cannot read: taken as busy (nothing is reported or removed that may be in use)."""
    try:
        return storelock.taken(lock_root(cfg) / "locks" / f"{storelock.READERS}.lock")
    except OSError:
        return True


def index_leftovers(cfg: Settings) -> list[Path]:
    """The work folders (INDEX_WORK) a killed index rebuild or restore left beside the index —
    none while a rebuild or restore runs (they are its own, or it removes them as it starts).
    The one judgement `hoard health`, `hoard check` and `hoard verify` share (hoardfs.fsd.io.integrity),
    and what a writer's open removes (`remove_index_leftovers`)."""
    found = [p for p in (index_work(cfg, kind) for kind in INDEX_WORK) if p.exists() or p.is_symlink()]
    if not found or index_rebuild_busy(cfg):
        return []
    # looked at again: a rebuild that ended while the lock was probed removed its own
    return [p for p in found if p.exists() or p.is_symlink()]


def remove_index_work(p: Path, ignore_errors: bool = False) -> None:
    """Remove `p`, one of INDEX_WORK: a folder with what it holds, a symlink or a file itself —
    never what a symlink points at (`shutil.rmtree` refuses a symlink, and with `ignore_errors`
    it stayed: a rebuild built its new index through it, then renamed the symlink into place as
    the index; a file there stopped it). One that is not there is gone already."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=ignore_errors)
        return
    try:
        p.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def remove_index_leftovers(cfg: Settings) -> tuple[list[Path], list[str]]:
    """Remove `index_leftovers` (a writer's open: it holds the store lock, so no rebuild or
    restore can start meanwhile): those removed, and each that stays with why ("<path>
    (<reason>)"; `hoard index migrate` fails naming them)."""
    gone, stuck = [], []
    for p in index_leftovers(cfg):
        try:
            remove_index_work(p)
        except OSError as e:  # (INFO, not a WARNING at every writer's open: health and check name it)
            log.info("%s (left by a killed index rebuild or restore) not removed: %s", p, e.strerror or e)
            stuck.append(f"{p} ({e.strerror or e})")
            continue
        gone.append(p)
    return gone, stuck


def check_ssd(cfg: Settings, init: bool) -> str:
    """The SSD's uuid from `<ssd.root>/.hoard-ssd.json`, or a refusal before anything is written.

    Without it, an SSD that is not mounted would get a new, empty index on the root
    filesystem and every job would carry on there (dedupe stops, objects land in the wrong
    index). `init` (`hoard init`) creates the identity on a new SSD, and adopts an SSD that
    already holds an index from before SSD identities existed."""
    root = cfg.ssd.root
    ident = read_identity(root, SSD_IDENTITY) if root.is_dir() else None
    if ident is None:
        legacy = (cfg.index_dir / "data.mdb").is_file()
        if not (init or legacy):
            raise HoardError(f"the SSD at {root} has no {SSD_IDENTITY}: it is not mounted, or not initialised — "
                             "nothing was written; mount it, or run `hoard init` for a new SSD",
                             ExitCode.UNAVAILABLE)
        root.mkdir(parents=True, exist_ok=True)
        ident = write_identity(root, "ssd", SSD_IDENTITY)
    if not ident.get("uuid"):
        raise HoardError(f"the SSD identity {root / SSD_IDENTITY} is unreadable ({ident.get('error')}); check the "
                         "SSD, then restore the file or run `hoard index rebuild`", ExitCode.UNAVAILABLE)
    return str(ident["uuid"])
