"""`hoard dataset publish NAME@N`: a dataset version's *locator*, for a training loader on a host
that has neither the store's index nor its database (docs/datasets.md, "From another host").

The locator is one JSON document (LOCATOR), made on the store's server:

    {"locator": 1, "dataset": "pets@1", "manifest_sha256": "<hex>", "published": "<UTC time>",
     "objects": {"<sha256 hex>": ["<shard hex>", <offset>, <length>, ["<S3 disk label>", …], "<ext>"], …},
     "withheld": ["<sha256 hex>", …]}

`objects` places the manifest and every sample the index still holds, as it has them now: the
record's shard, its payload's offset and length, the S3 disks holding a *sealed* replica of that
shard, and the extension the mount names its by-hash file with — the withheld samples' too, so
that the plan, which groups the records by shard and offset, is the store's plan. A training loader on another host
(hoardfs.datasets.loader_remote) reads the manifest from that place, checks its sha256, and
plans an epoch from these places exactly as the store's loader plans it from the index — the
same (shard, offset, length), so the same order. `withheld`: the samples whose node the
database marks deleted or black-listed, or that the store no longer shows, at publish time —
never read, their positions passed over (as the store's loader passes them over).

It is written as `loaders/<name>@<N>.json` into the bucket of every S3 disk (or the one of
`--disk`), replacing the one there, and with `--dir DIR` as `DIR/<name>@<N>.json` (a mount
reader's). A sample (not withheld) on no sealed S3 replica (its shard open, or only on this
server's disks) is refused in one line naming `hoard replicate`, nothing written — unless only `--dir` is asked
for: a mount reads every object the store shows. Publishing again is a read of the manifest
and one index lookup per sample: run it after a delete or a gc to bring hosts up to date.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.datasets import api, card
from hoardfs.datasets.loader_remote import LOCATOR_MAX
from hoardfs.fsd.store import Store

__all__ = ["LOCATOR", "PublishError", "locator_name", "publish"]

#: the locator's format
LOCATOR = 1


class PublishError(HoardError):
    exit_code = ExitCode.USAGE


def locator_name(ref: str) -> str:
    """The locator's file (and key under the bucket's loaders/) of version `NAME@N`."""
    return f"{ref}.json"


def publish(cfg: Settings, ref: str, disk: str | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Make version `ref`'s locator and write it (module docstring); the report: where it went,
    how many samples it places and withholds."""
    s3 = [d.label for d in cfg.disks if d.kind == "s3"]
    if disk is not None and disk not in s3:
        raise PublishError(f"--disk {disk}: not an S3 disk of {cfg.source} (its S3 disks: {', '.join(s3) or 'none'})")
    targets = [disk] if disk is not None else (s3 if out_dir is None else [])
    if not targets and out_dir is None:
        raise PublishError(f"this store has no S3 disk to publish {ref} to: add one (`hoard disks add s3://BUCKET "
                           "…`), or write the locator for a mount reader with --dir DIR")
    if out_dir is not None and not (Path(out_dir).is_dir() and os.access(out_dir, os.W_OK | os.X_OK)):
        raise PublishError(f"--dir {out_dir}: not a directory this user may write: give one (the locator of {ref} "
                           "was written nowhere)")
    with api._connect(cfg, f"publish dataset {ref}") as conn:
        row = api._version(conn, ref)
        if not row["manifest_sha256"] or row["status"] == "building":
            raise PublishError(f"dataset {row['name']}@{row['version']} is building (or its build was killed): publish "
                               "a finished version, or run the same `hoard dataset build SPEC` again to finish it")
        name = f"{row['name']}@{row['version']}"
        manifest_sha: str = row["manifest_sha256"]
        with Store.open(cfg, writable=False, lock="readers", what="publishing a dataset's locator") as store:
            samples = card.read_manifest(store.get(manifest_sha))
            shas = sorted({bytes.fromhex(s.sha256) for s in samples})
            with api._db_errors(f"{name} was published"):
                withheld = api.withheld(conn, store, shas, api.withheld_marked(conn, len(shas)))
            body, placed = _locator(store, name, manifest_sha, shas, withheld, s3, targets)
            written = [_put(store, label, name, body) for label in targets]
    if out_dir is not None:
        written.append(_write(Path(out_dir), name, body))
    return {"dataset": name, "manifest_sha256": manifest_sha, "samples": len(samples), "objects": placed,
            "withheld": len(withheld), "bytes": len(body), "written": written}


def _locator(store: Store, name: str, manifest_sha: str, shas: list[bytes], withheld: set[bytes], s3: list[str],
             targets: list[str]) -> tuple[bytes, int]:
    """The locator's bytes and how many objects it places; PublishError (one line) for an object
    the store lost or one on no sealed replica on the `targets`."""
    labels = {u: r.label for u, r in store.records.items()}
    wanted = [*shas, bytes.fromhex(manifest_sha)]
    found = store.index.lookup_many(wanted)
    objects: dict[str, list[Any]] = {}
    away: list[str] = []
    for h in wanted:
        loc = found.get(h)
        meta = store.index.get_shard(loc.shard_id) if loc is not None else None
        if (loc is None or meta is None) and h in withheld:  # (collected: the index places it nowhere either)
            continue
        if loc is None or meta is None:
            raise PublishError(f"{name}: object {h.hex()} is not in the store and its node is not deleted: the store "
                               "lost it — `hoard health` names what to do; nothing was published", ExitCode.DATA)
        on = sorted(labels[u] for u in meta.replicas if labels.get(u) in s3) if meta.sealed else []
        if targets and not set(on) & set(targets) and h not in withheld:
            away.append(h.hex())
        objects[h.hex()] = [meta.hex, loc.offset, loc.length, on, store.index.get_ext(h)]
    if away:
        where = f"S3 disk {targets[0]}" if len(targets) == 1 else f"any of the S3 disks {', '.join(targets)}"
        raise PublishError(f"{name}: {len(away)} of {len(objects)} objects are on no sealed replica on {where} (only on "
                           f"this server's disks, or in a shard still open), e.g. {away[0]}; nothing was published — "
                           "`hoard replicate` onto the S3 disk first", ExitCode.UNAVAILABLE)
    doc = {"locator": LOCATOR, "dataset": name, "manifest_sha256": manifest_sha,
           "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "objects": objects,
           "withheld": sorted(h.hex() for h in withheld)}
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    if len(body) > LOCATOR_MAX:  # (a host refuses it unread)
        raise PublishError(f"{name}: its locator would hold {len(body)} bytes, more than a training host reads "
                           f"({LOCATOR_MAX}); nothing was published — split the dataset into smaller versions",
                           ExitCode.DATA)
    return body, len(objects)


def _put(store: Store, label: str, name: str, body: bytes) -> str:
    d = next((d for d in store.disks.values() if d.label == label), None)
    if d is None or not hasattr(d, "put_published"):
        raise PublishError(f"S3 disk {label} is not attached now (`hoard disks` says why); the locator of {name} was "
                           "not written there — run the same command once it is", ExitCode.UNAVAILABLE)
    s3disk: Any = d  # (an S3Disk: it has put_published)
    s3disk.put_published(locator_name(name), body)
    return f"s3://{s3disk.bucket}/loaders/{locator_name(name)} ({label})"


def _write(out_dir: Path, name: str, body: bytes) -> str:
    path = out_dir / locator_name(name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(body)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PublishError(f"--dir {out_dir}: cannot write {path.name} ({e.strerror}): give a directory this user may "
                           "write", ExitCode.UNAVAILABLE) from None
    return str(path)
