"""The store's part of `hoard health`: the disks, the SSD zones, the store's status and the
problems they show. `hoardfs.jobs.health` puts every part together."""

from __future__ import annotations

import os
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.errors import HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.fsd.core import smart
from hoardfs.fsd.core.disks import IDENTITY
from hoardfs.fsd.core.index import has_index
from hoardfs.fsd.io import attach, integrity
from hoardfs.fsd.io.scrub import oldest_unverified_by_disk
from hoardfs.fsd.outputs import unreadable, zones
from hoardfs.fsd.store import Store

GB = 1024**3


def disk_status(cfg: Settings) -> list[dict[str, Any]]:
    out = []
    for d in cfg.disks:
        entry: dict[str, Any] = {"label": d.label, "path": str(d.path), "present": d.path.is_dir(),
                                 "mount_point": os.path.ismount(d.path), "backend": d.kind}
        if d.kind == "s3":  # (its path is the staging folder; its space is the capacity granted)
            entry.update(endpoint=d.endpoint, bucket=d.bucket, total_bytes=int((d.capacity_gb or 0) * GB))
        elif entry["present"]:
            st = os.statvfs(d.path)
            total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            if d.capacity_gb is not None:
                total = min(total, int(d.capacity_gb * GB))
            entry.update(total_bytes=total, free_bytes=min(free, total))
        out.append(entry)
    return out


def zone_status(cfg: Settings) -> dict[str, dict[str, Any]]:
    """Per zone: quota, bytes on disk, reserved, free, level, reservations and outputs (the
    figures of `hoard zones`, hoardfs.fsd.outputs.zones)."""
    return zones.usage(cfg)


def disk_holdings(store: Store) -> dict[str, dict[str, int]]:
    """Per disk uuid, what the index says the disk holds: `replicas` (shards with a complete copy
    there), `replica_bytes` (their sizes), and `only_here` — shards whose every other replica is
    unreadable now (on a failed or missing disk, or none): lost if this disk is gone for good."""
    out: dict[str, dict[str, int]] = {u: {"replicas": 0, "replica_bytes": 0, "only_here": 0} for u in store.records}
    for meta in store.index.iter_shards():
        for u in meta.replicas:
            held = out.setdefault(u, {"replicas": 0, "replica_bytes": 0, "only_here": 0})
            held["replicas"] += 1
            held["replica_bytes"] += meta.size
            if not any(store.usable(other) for other in meta.replicas if other != u):
                held["only_here"] += 1
    return out


def disk_next_step(d: dict[str, Any]) -> str:
    """What a person does about a disk that is not active, with the `hoard` commands that do it
    in that state (`d`: a disk entry of `store_status`, with its holdings). Each branch is
    followed command by command on a real store in tests/test_disk_next_step.py."""
    label, path, state = d["label"], d["path"], d.get("state", "active")
    held, only, reason = d.get("replicas", 0), d.get("only_here", 0), d.get("reason", "")
    table = "remove its [[disks]] table from hoard.toml"
    back = f"`hoard disks activate {label}` checks its replicas and takes it back"
    if reason.startswith("forgotten by"):  # dropped from the index, still in hoard.toml
        return f"{table} and unmount it"
    if state == "draining":
        # the replicator does not count a draining disk's replicas: it copies its shards to
        # active disks; forget then finds every shard at its target without it
        return (f"`hoard replicate` copies its shards to the other disks (until it reports 0 still below target), "
                f"then `hoard disks forget {label}`, then {table}; or {back} to keep it")
    if str(d.get("uuid", "")).startswith("unregistered-") and d.get("backend") == "s3":
        # no identity in its bucket: a bucket to make (or name correctly), or an engine to reach — its
        # reason says which; nothing is mounted at a URL
        return (f"`hoard init` gives its bucket its identity once the engine answers and the bucket exists (hoard "
                f"does not create buckets: the engine's tools do); a disk `hoard disks forget` dropped: {table}; "
                "else correct disks.endpoint or disks.bucket there")
    if str(d.get("uuid", "")).startswith("unregistered-"):
        # no identity at its path: a new disk not initialised yet, or one `forget` dropped (the
        # index no longer knows it) and unmounted before its table was removed
        return (f"a new disk: mount it at {path} and run `hoard init` (it gives the disk its identity); a disk "
                f"`hoard disks forget` dropped: {table}; else correct its path there")
    if "not listed in" in reason:
        # not in hoard.toml: its replicas do not count and cannot be read, so `replicate`
        # copies its shards from their other replicas; those with none need it back
        if only:
            return (f"put its [[disks]] table back (and the disk at its path): {only} shards have no other "
                    "readable replica")
        return (f"`hoard replicate` copies its shards from their other replicas, then `hoard disks forget {label}`; "
                "or put its [[disks]] table back")
    replace = (f"`hoard disks add PATH --label NEW`, then `hoard disks replace {label} NEW` (copies its {held} "
               f"replicas from the other disks; `hoard rebuild --disk {label}` spreads them over any disks with "
               f"room instead), then `hoard disks forget {label}` and {table}")
    if state == "failed":
        if not d.get("present", True) or not d.get("identity", True):
            # not at its path (unmounted after it failed): activate reads its identity first
            back = f"mount it again at {path}, then {back}"
        if only and d.get("present", True) and d.get("identity", True):
            # (attached: read as the last resort, and copied from by the rebuild)
            return (f"{only} shards have no other readable replica: they are read from it while it still reads; "
                    f"{replace} — those are copied from {label} itself; if its errors have passed, {back}")
        if only:
            return (f"{only} shards have no other readable replica: if the disk reads again, {back}; a disk "
                    f"holding their other replicas, back in service, makes them copyable. Until then `hoard disks "
                    f"replace {label} NEW` copies only the others and `hoard disks forget {label}` is refused")
        if not held:
            return f"it holds no replica: `hoard disks forget {label}`, then {table}; or, if its errors have passed, {back}"
        return f"{replace}; if its errors have passed, {back}"
    if state == "missing" and d.get("backend") == "s3":
        # nothing is mounted at a URL: the engine, its bucket or the staging folder is what is gone
        back = ("it is used again as soon as its engine answers with its bucket and its staging folder is there (the "
                "reason says which is not; a writing command such as `hoard init` makes a lost staging folder again)")
        if not held:
            return f"it holds no replica: {back}; or, if the bucket is gone for good, `hoard disks forget {label}`, then {table}"
        if only:
            return f"{back}: {only} shards have no other readable replica (lost if the bucket is gone for good)"
        return f"{back}; if the bucket is lost: {replace}"
    if state == "missing":
        # `forget` takes a missing disk once no shard needs its replicas (as it takes a
        # retired one); a forgotten disk that comes back matches no index record
        if not held:
            return (f"it holds no replica: mount it again at {path}; or, if it is gone for good, `hoard disks forget "
                    f"{label}`, then {table}")
        mount = f"mount it again at {path} (it is used as soon as it is back)"
        if only:
            return f"{mount}: {only} shards have no other readable replica (lost if it is gone for good)"
        return f"{mount}; if it is lost: {replace}"
    return "see `hoard disks list`"


def store_status(cfg: Settings) -> dict[str, Any]:
    """The store's view (disk states and what each disk holds, objects, replication lag); never
    raises. A disk that is not active carries `next_step`."""
    if not has_index(cfg.index_dir):  # (as the store's open: a directory or an empty file there is none either)
        # not `hoard init` alone: on a store whose index was removed it refuses (its disks hold
        # shards) after making an empty index there; during a rebuild's swap it is back at once
        return {"ok": False, "error": f"no index at {cfg.index_dir}: for a new store run `hoard init`; if it was "
                                      "removed, `hoard index restore` or `hoard index rebuild` (while one of them "
                                      "swaps it in, it is back in a moment)"}
    try:
        with Store.open(cfg, writable=False) as store:
            st = store.status()
            st["formats"] = attach.formats_found(cfg, store.index.format)
            # the marks logs and pointers, judged as `hoard check` and `hoard verify` judge them
            # (from where the last judgement stopped: only what the logs gained since is read —
            # `read` says how old the last reading of every byte is; `hoard verify` reads them all)
            found = integrity.judge(store, by="health", tail=True)
            st["integrity"] = {"problems": [line for _, line in found.lines()], "counts": found.counts,
                               "read": found.read}
            # a scan of every shard: only when a card needs it (a disk not active), not on
            # every refresh of a healthy store
            holdings = disk_holdings(store) if any(d["state"] != "active" for d in st["disks"]) else {}
    except Exception as e:  # health reports, it does not crash
        return {"ok": False, "error": f"cannot open the store: {e}"}
    for d in st["disks"]:
        d["present"] = os.path.isdir(d["path"])
        d["mount_point"] = os.path.ismount(d["path"])
        if holdings:  # (figured only while some disk is not active)
            d.update(holdings.get(d["uuid"], {"replicas": 0, "replica_bytes": 0, "only_here": 0}))
        if d["state"] != "active":
            # an unmounted disk's mount point is an empty directory: its identity file says
            # whether the disk itself is there (one stat; nothing is read from a failed disk)
            d["identity"] = d["present"] and os.path.exists(os.path.join(d["path"], IDENTITY))
            d["next_step"] = disk_next_step(d)
    return {"ok": True, **st}


def verified_by_disk(cfg: Settings) -> dict[str, float | None]:
    """Per disk label, seconds since its least recently verified replica was verified (or
    written); None for a disk with no sealed shard (`hoardfs.fsd.io.scrub.oldest_unverified_by_disk`).
    {} when the store cannot be opened — `store_status` says why. Opens the store read-only: a
    process that may open it from several threads serialises the opens (LMDB opens an
    environment once per process)."""
    if not has_index(cfg.index_dir):
        return {}  # (not the store's wait for an index being swapped in: health answers at once)
    try:
        with Store.open(cfg, writable=False) as store:
            return oldest_unverified_by_disk(store)
    except (HoardError, OSError):
        return {}


#: one line of a disk's SMART reading, for the health table and the GUI's disk card
smart_line = smart.summary


def smart_status(cfg: Settings, disks: list[dict[str, Any]], max_age_s: float = smart.FRESH_S) -> dict[str, dict[str, Any]]:
    """Per disk label (of `disks`: entries of `disk_status` or `store_status`), its drive's SMART
    reading (`hoardfs.fsd.core.smart.read_all`: the cached one while younger than `max_age_s`). Only a
    disk at its path is read — a mount point, or a directory holding the disk's identity file:
    an unmounted disk's mount point is an empty directory on another drive, whose SMART is not
    this disk's."""
    paths = {d.label: d.path for d in cfg.disks if d.kind == "local"}  # (an S3 disk has no drive of its own)
    labels = [d["label"] for d in disks if d["label"] in paths and d.get("present", True)
              and d.get("state", "active") != "missing"
              and (d.get("mount_point") or (paths[d["label"]] / IDENTITY).exists())]
    return smart.read_all(cfg, max_age_s, labels)


def smart_of_store(store: Store, max_age_s: float = smart.FRESH_S,
                   labels: list[str] | None = None) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """The SMART readings of an open store's disks (or those of `labels`), judged by their
    states in its index: (readings by label, problems, warnings) — what `hoard check` and
    `hoard verify` report, in `hoard health`'s words."""
    states = {r.label: r.state.value for r in store.records.values()}
    disks = [{"label": d.label, "state": states.get(d.label, "active"), "present": d.path.is_dir(),
              "mount_point": os.path.ismount(d.path)} for d in store.cfg.disks
             if (labels is None or d.label in labels) and d.kind == "local"]
    readings = smart_status(store.cfg, disks, max_age_s)
    for d in disks:
        if d["label"] in readings:
            d["smart"] = readings[d["label"]]
    return readings, *smart_findings(disks)


def smart_findings(disks: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the disks' SMART readings (each entry's `smart`, which gets its
    own as `findings`: [{level, line}]): the one judgement `hoard check` and `hoard verify`
    make too (`hoardfs.fsd.core.smart.judge`)."""
    found = []
    for d in disks:
        if d.get("smart"):
            mine = smart.judge(d["label"], d["smart"], d.get("state", "active"))
            d["smart"]["findings"] = [{"level": level, "line": line} for level, line in mine]
            found += mine
    return [line for level, line in found if level == smart.PROBLEM], [line for level, line in found if level == smart.WARNING]


def _space_problems(cfg: Settings, disks: list[dict[str, Any]]) -> list[str]:
    """Disks too full to take a new shard, and whether the store can still place a new raw
    shard's `copy_of_raw` replicas on distinct disks (writes need `write_ack` of them)."""
    shard = cfg.store.shard_size_mb << 20
    weight = cfg.disk_copies  # an S3 disk counts as its `copies` toward copy_of_raw
    out = []
    roomy = copies = 0
    for d in disks:
        if d.get("state", "active") != "active" or d.get("free_bytes") is None:
            continue
        free, total = d["free_bytes"], d.get("total_bytes") or 0
        if free >= shard:
            roomy += 1
            copies += weight.get(d["label"], 1)
        if free < 2 * shard or (total and free < 0.02 * total):
            out.append(f"disk {d['label']}: {fmt_bytes(free)} free of {fmt_bytes(total)} — it "
                       f"{'takes no new shard' if free < shard else 'is nearly full'}; free space "
                       "(`hoard delete` + `hoard gc`) or add a disk (`hoard disks add`)")
    if roomy < cfg.store.write_ack or copies < cfg.store.copy_of_raw:
        what = ("new writes are refused" if roomy < cfg.store.write_ack
                else f"new raw shards cannot reach copy_of_raw = {cfg.store.copy_of_raw}")
        out.append(f"store: only {roomy} disks have room for a new shard ({fmt_bytes(shard)}): {what}; add a disk "
                   "or free space")
    return out


def unmendable_problems(stuck: list[dict[str, Any]]) -> list[str]:
    """The lines of the queued repairs no copy can mend (Store.status's `unmendable_repairs`):
    running `hoard replicate` again does nothing for them, so the line says what does — and a
    batch or view whose manifest is a record no replica holds whole is named with the command
    that unregisters it (nothing tombstoned: what it named stays stored)."""
    if not stuck:
        return []
    first = stuck[0]
    out = [f"store: {len(stuck)} bad replicas cannot be mended — `hoard replicate` and `hoard verify --repair` found "
           f"some record of their shard whole in no replica (e.g. shard {first['shard']} on {first['disk']}: "
           f"{first['why']}); every object a replica holds whole still reads: see docs/operations.md \"A shard no "
           "replica holds whole\""]
    for what in sorted({m for s in stuck for m in s.get("manifests", [])}):
        kind, name = what.split(" ", 1)
        out.append(f"{what}: its manifest is a record no replica holds whole, so it cannot be read: "
                   + unreadable.unregister_step(kind, name))
    return out


def store_problems(cfg: Settings, store: dict[str, Any], disks: list[dict[str, Any]],
                   zones: dict[str, dict[str, Any]]) -> list[str]:
    """The lines of `hoard health` about the store, the disks and the SSD zones, each naming
    the next step (`store`: store_status; `disks`: its disks, else disk_status; `zones`: zone_status)."""
    problems: list[str] = []
    if not store["ok"]:
        problems.append(f"store: {store['error']}")
    else:
        risk = store["replication"]["at_risk"]
        if risk:
            lost = sum(r["readable_replicas"] == 0 for r in risk)
            problems.append(f"store: {len(risk)} shards have fewer than write_ack readable replicas"
                            + (f", {lost} have none" if lost else "")
                            + "; run `hoard replicate` (or `hoard rebuild --disk LABEL` for a failed disk)")
        stuck_repairs = store.get("unmendable_repairs") or []
        if store.get("pending_repairs", 0) > len(stuck_repairs):
            problems.append(f"store: {store['pending_repairs'] - len(stuck_repairs)} replicas were found bad by readers "
                            "or verify and are not repaired yet; run `hoard replicate` (it re-copies them from good "
                            "replicas)")
        problems += unmendable_problems(stuck_repairs)
        lag = store["replication"]
        if lag["shards_below_target"]:
            problems.append(f"store: {lag['shards_below_target']} shards ({fmt_bytes(lag['bytes_below_target'])}) are "
                            "below their replica target (copy_of_raw / copy_of_generated); run `hoard replicate` "
                            "(the replicator timer does it on a schedule)")
        problems += _space_problems(cfg, disks)
        # (each line names its next step: `hoard index rewrite-marks`, `rewrite-pointers`, or what to remove)
        problems += [line if line.startswith("disk ") else f"store: {line}"
                     for line in store.get("integrity", {}).get("problems", [])]
        stuck = store.get("open_without_writer") or []
        if stuck:
            problems.append(f"store: {len(stuck)} open shards have no writer left (e.g. {stuck[0]}): the next "
                            "writer seals them; if they stay, no replica holds every acknowledged record — "
                            "see `hoard check` and the `recovery_incomplete` events in `hoard health --json`")
    for d in disks:
        if d.get("state", "active") != "active":
            problems.append(f"disk {d['label']}: {d['state']}: {d.get('reason') or 'not usable'}; "
                            + (d.get("next_step") or disk_next_step(d)))
    for z, s in zones.items():
        if not s["present"]:
            problems.append(f"zone {z}: {s['path']} does not exist; run `hoard init`")
        elif s["level"] != "ok":
            sealed = [o["id"] for o in s["outputs"] if o["state"] == "sealed"][:3]
            problems.append(f"zone {z}: {s['used_ratio']:.0%} of its quota used or reserved ({s['level']}); "
                            + (f"`hoard zones clean ID` removes a sealed output (biggest: {', '.join(sealed)})"
                               if sealed else f"free space in {s['path']}"))
        if s.get("fs_short"):
            room = max(0, s["quota_bytes"] - s["used_bytes"] - s["reserved_bytes"])
            problems.append(f"zone {z}: the file system holding {s['path']} has {fmt_bytes(s['fs_free_bytes'])} "
                            f"free, though the zone's quota promises {fmt_bytes(room)} more: new work there is "
                            "refused or fails; free space on that file system (the other zones and anything outside "
                            f"hoardfs share it) or lower ssd.zones.{z}.quota_gb")
        if s.get("error"):
            problems.append(f"zone {z}: {s['error']}")
        sealed_ids = {o["id"] for o in s.get("outputs", []) if o["state"] == "sealed"}
        for r in s.get("reservations", []):
            if r["stale"] and r["id"] in sealed_ids:  # the output is whole: only the release is missing
                problems.append(f"zone {z}: job {r['job']} died (pid {r['pid']} on {r['host']}) after sealing output "
                                f"{r['id']}, before releasing its reservation; the output is whole — run the job "
                                "again (it finds the output done and releases it), or any new job in the zone does")
            elif r["stale"] and str(r["job"]).startswith("dataset:"):  # a dataset's build or materialize
                ref = str(r["job"])[len("dataset:"):]
                problems.append(f"zone {z}: the build (or materialize) of dataset {ref} died (pid {r['pid']} on "
                                f"{r['host']} is gone) before sealing {r['id']}; run the same `hoard dataset build "
                                f"SPEC` (or `hoard dataset materialize {ref}`) again — it resumes, keeping what "
                                f"checks — or give it up: `hoard dataset rm {ref}`")
            elif r["stale"] and z == "3A":  # 3A holds no job outputs: an HTTP upload (hoardfs.jobs.ingest.upload)
                problems.append(f"zone {z}: {r['job']} was cut short (pid {r['pid']} on {r['host']} is gone): "
                                f"{s['path']}/.tmp/{r['id']} holds what it received and nothing was ingested; start "
                                "`hoard gui` again — it removes both at start — and have the scraper send the batch "
                                "again")
            elif r["stale"]:
                problems.append(f"zone {z}: the reservation of job {r['job']} for {r['id']} is stale (pid {r['pid']} "
                                f"on {r['host']} is gone); `hoard zones clean {r['id']}` reclaims it and removes "
                                "what it wrote")
        for o in s.get("outputs", []):
            if o["state"] == "incomplete" and not any(r["id"] == o["id"] for r in s.get("reservations", [])):
                problems.append(f"zone {z}: output {o['id']} is incomplete (not sealed, no job writes it; "
                                f"{o['age_s'] / 3600:.1f} h old); `hoard zones clean {o['id']}` removes it")
    return problems
