"""What each disk's own SMART says, and the one judgement of it that `hoard health`, `hoard
check` and `hoard verify` share (docs/operations.md, "SMART"; docs/design.md, "One judgement,
three tools").

A configured disk is a directory; the drive behind it is found through the mount table: the
file system holding the directory (`/proc/self/mountinfo`, matched by its device number) →
its block device → the whole disk (`/sys/class/block`: a partition's parent; a device-mapper
volume — LUKS, LVM — over one disk: that disk). `smartctl --json=c -a -n standby DEVICE`
(smartmontools ≥ 7) reads it; its JSON is hostile input: only the fields below are taken, as
numbers or short strings.

    reading = parse(json.loads(smartctl_output))   # the figures, or why there are none
    found = judge("hd1", reading)                  # [(PROBLEM | WARNING, line naming the next step)]

smartctl needs root (ATA pass-through needs CAP_SYS_RAWIO, NVMe admin commands
CAP_SYS_ADMIN): run by anyone else, `read_all` only reads the cache root's
`hoard disks smart` (systemd/hoard-smart.timer) keeps, `<ssd.root>/state/smart.json`. A
smartctl that hangs (a disk or USB bridge that does not answer) is given TIMEOUT_S and left;
a disk asleep is not woken (`-n standby`): its last reading stands.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoardfs.base.config import Settings
from hoardfs.base.files import atomic_write
from hoardfs.base.modes import ensure_dir

log = logging.getLogger(__name__)

#: how long one smartctl run may take: `-a` on a busy drive answers in a second or two
TIMEOUT_S = 10.0
#: a reading younger than this is used as it is by `hoard health` (and the GUI, `hoard
#: check`); an older one is read again (by root; others only say how old it is)
FRESH_S = 3600.0
#: `hoard disks smart` and `hoard health --record` read afresh when the last reading is older
#: (the timers fire every 5 and 30 minutes; smartd's own default is 30 minutes)
REFRESH_S = 20 * 60.0
#: reallocated sectors that grew within this window are a warning (a count stable for a month
#: is history, not news: it stops warning by itself)
GROWTH_DAYS = 30
#: a drive at or above this temperature (°C) is a warning: most HDDs are rated to 60 °C
HOT_C = 60
#: the cache of the last readings, under `ssd.root`
CACHE = Path("state") / "smart.json"
FORMAT = 1

PROBLEM, WARNING = "problem", "warning"

#: what a whole disk with no SMART of its own is, by its kernel name's start
_KINDS = (("loop", "a loop device"), ("vd", "a virtio virtual disk"), ("xvd", "a Xen virtual disk"),
          ("zram", "a compressed RAM disk"), ("ram", "a RAM disk"), ("nbd", "a network block device"),
          ("rbd", "a Ceph RBD volume"), ("md", "an md RAID volume"), ("dm-", "a device-mapper volume"),
          ("sr", "an optical drive"), ("mmcblk", "an SD/MMC card"))


@dataclass(frozen=True)
class Device:
    """The whole disk behind a configured path (`dev`: /dev/NAME), or why there is none
    (`dev` None, `why` says what the path is on)."""

    dev: str | None
    what: str  # "a loop device (backed by /x.img)", "a disk", "a tmpfs file system", …

    def no_smart(self, detail: str = "") -> str:
        where = f"{self.dev} is {self.what}" if self.dev else f"on {self.what}"
        return f"no SMART: {where}" + (f" ({detail})" if detail else "")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_of(path: Path, mountinfo: str) -> tuple[str, str, str] | None:
    """(major:minor, source, fstype) of the file system holding `path`: the mountinfo entry
    with its device number whose mount point holds the path (the longest, the last mounted)."""
    st = os.stat(path)
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    real = os.path.realpath(path)
    best: tuple[int, tuple[str, str, str]] | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 2 or f[2] != want:
            continue
        point = _unescape(f[4])
        if real == point or real.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= best[0]:
                best = (len(point), (want, _unescape(r[1]), r[0]))
    return best[1] if best else None


def _whole(sysdir: Path, depth: int = 0) -> Device:
    """The whole disk of a block device's sysfs directory: a partition's parent; a device-mapper
    or md volume over one device: that device's disk."""
    sysdir = sysdir.resolve()
    if (sysdir / "partition").exists():
        sysdir = sysdir.parent
    name = sysdir.name
    slaves = sorted(p.name for p in (sysdir / "slaves").iterdir()) if (sysdir / "slaves").is_dir() else []
    if len(slaves) == 1 and depth < 8:  # LUKS, LVM on one disk: that disk's SMART
        return _whole(Path("/sys/class/block") / slaves[0], depth + 1)
    if len(slaves) > 1:
        return Device(None, f"/dev/{name}, a volume over several disks ({', '.join(slaves)}): read each with "
                            "`smartctl -a /dev/NAME`")
    what = next((w for p, w in _KINDS if name.startswith(p)), "a disk")
    if name.startswith("loop"):
        try:
            what += f" backed by {(sysdir / 'loop' / 'backing_file').read_text().strip()}"
        except OSError:
            pass
    return Device(f"/dev/{name}", what)


def device_of(path: Path) -> Device:
    """The whole disk behind the directory `path`, or what it is on instead."""
    try:
        found = _mount_of(path, Path("/proc/self/mountinfo").read_text())
    except OSError as e:
        return Device(None, f"a path that cannot be read ({e.strerror})")
    if found is None:
        return Device(None, "a file system not in the mount table")
    majmin, source, fstype = found
    sysdir = Path("/sys/dev/block") / majmin
    if not sysdir.exists() and source.startswith("/dev/"):  # btrfs and others: an anonymous device number
        try:
            rdev = os.stat(source).st_rdev
            sysdir = Path("/sys/dev/block") / f"{os.major(rdev)}:{os.minor(rdev)}"
        except OSError:
            pass
    if not sysdir.exists():
        return Device(None, f"a {fstype} file system ({source}), not a block device")
    dv = _whole(sysdir)
    if dv.dev is not None and not os.path.exists(dv.dev):  # sysfs shows the host's disks, /dev does not
        return Device(None, f"{dv.dev}, which is not in this system's /dev (a container or a chroot: read it "
                            "on the host)")
    return dv


def _count(attr: dict[str, Any]) -> int | None:
    """An ATA attribute's raw count: the raw string's leading number (some drives pack more
    fields into the raw 48 bits: "33 (0 3 0 0 0)"), else the raw value."""
    raw = _obj(attr, "raw")
    m = re.match(r"\s*(\d{1,20})(?!\d)", str(raw.get("string", "")))  # (more digits: no count a drive keeps)
    if m:
        return int(m.group(1))
    v = raw.get("value")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """`doc[key]` when it is a JSON object, else {} (hostile input: any field may be anything)."""
    v = doc.get(key)
    return v if isinstance(v, dict) else {}


def _text(v: Any, n: int = 80) -> str | None:
    return str(v)[:n] if isinstance(v, (str, int)) and not isinstance(v, bool) else None


def parse(doc: Any) -> dict[str, Any]:
    """The figures of one `smartctl --json -a` document: overall health (`passed`: None when
    not given), reallocated / pending / offline-uncorrectable sectors (ATA 5, 197, 198; SCSI's
    grown defect list), NVMe media errors and critical warning, temperature, power-on hours,
    attributes failing now; `available` False with `why` when the device has no SMART."""
    if not isinstance(doc, dict):
        return {"available": False, "why": "smartctl printed no JSON object"}
    ctl = _obj(doc, "smartctl")
    said = ctl.get("messages")
    msgs = [str(m["string"]) for m in (said if isinstance(said, list) else [])
            if isinstance(m, dict) and isinstance(m.get("string"), str)]
    status = _int(ctl.get("exit_status")) or 0
    dev = _obj(doc, "device")
    out: dict[str, Any] = {"available": True, "protocol": _text(dev.get("protocol"), 16),
                           "model": _text(doc.get("model_name") or doc.get("scsi_model_name")),
                           "serial": _text(doc.get("serial_number"), 40), "exit_status": status}
    health = _obj(doc, "smart_status")
    passed = health.get("passed")
    out["passed"] = passed if isinstance(passed, bool) else None
    if out["passed"] is None and status & 0x02:  # open failed, or asleep (-n standby)
        asleep = any("STANDBY" in m or "SLEEP" in m for m in msgs)
        return {"available": False, "asleep": asleep,
                "why": "asleep (not woken to read it)" if asleep else "; ".join(msgs)[:200] or "smartctl could not open it"}
    support = doc.get("smart_support")
    if out["passed"] is None and (support is None or (isinstance(support, dict) and support.get("available") is False)):
        return {"available": False, "why": "; ".join(msgs)[:200] or "the device has no SMART"}
    table = _obj(doc, "ata_smart_attributes").get("table")
    attrs = {a["id"]: a for a in table if isinstance(a, dict) and _int(a.get("id")) is not None} \
        if isinstance(table, list) else {}
    out["reallocated"] = _count(attrs[5]) if 5 in attrs else _int(doc.get("scsi_grown_defect_list"))
    out["pending"] = _count(attrs[197]) if 197 in attrs else None
    out["uncorrectable"] = _count(attrs[198]) if 198 in attrs else None
    out["failing_now"] = [_text(a.get("name"), 40) or f"#{i}" for i, a in attrs.items() if a.get("when_failed") == "now"]
    nvme = _obj(doc, "nvme_smart_health_information_log")
    out["media_errors"] = _int(nvme.get("media_errors"))
    out["critical_warning"] = _int(nvme.get("critical_warning"))
    out["temperature_c"] = _int(_obj(doc, "temperature").get("current"))
    out["power_on_hours"] = _int(_obj(doc, "power_on_time").get("hours"))
    return out


def judge(label: str, s: dict[str, Any], state: str = "active") -> list[tuple[str, str]]:
    """The findings of one disk's reading (`s`: `parse`'s, with `reallocated_before` and
    `before_day` from the cache; `state`: the disk's in the index): PROBLEM when the drive says
    it is failing, WARNING when it is losing sectors or running hot — each naming the next
    step. A disk with no SMART (a loop device, a virtual disk, smartctl absent or not allowed)
    is no finding."""
    if not s.get("available"):
        return []
    who = f"disk {label} ({s.get('device') or '?'}" + (f", {s['model']}" if s.get("model") else "") + \
        (f", serial {s['serial']}" if s.get("serial") else "") + ")"
    retire = (f"retire it while it still reads: `hoard disks retire {label}`, `hoard replicate` (copies its shards "
              f"to the other disks), then `hoard disks forget {label}` and remove its [[disks]] table "
              "(docs/operations.md, \"Retiring a disk\"; `hoard disks add` a new disk first if the others lack room)")
    if state == "draining":  # retired already: what is left of the retirement
        retire = (f"it is retired already: `hoard replicate` copies its shards to the other disks, then `hoard "
                  f"disks forget {label}` and remove its [[disks]] table")
    out: list[tuple[str, str]] = []
    crit = s.get("critical_warning") or 0
    if s.get("passed") is False or crit:
        why = ("its SMART overall health check FAILED" if s.get("passed") is False
               else f"its NVMe critical warning is set (0x{crit:02x}: spare, temperature, reliability or read-only)")
        failing = f" (failing now: {', '.join(s['failing_now'])})" if s.get("failing_now") else ""
        out.append((PROBLEM, f"{who}: {why}{failing} — the drive predicts its own failure; {retire}"))
    bad = [f"{s[k]} {what}" for k, what in (("pending", "sectors pending reallocation (unreadable now)"),
                                            ("uncorrectable", "offline-uncorrectable sectors"),
                                            ("media_errors", "NVMe media errors")) if s.get(k)]
    before, now = s.get("reallocated_before"), s.get("reallocated")
    if before is not None and now is not None and now > before:
        bad.append(f"reallocated sectors grew from {before} to {now} since {s.get('before_day')}")
    if s.get("failing_now") and s.get("passed") is not False:
        bad.append(f"attributes at or below their threshold: {', '.join(s['failing_now'])}")
    if bad:
        then = "; see its failing health above" if out else f"; if the count keeps growing, {retire}"
        out.append((WARNING, f"{who}: {'; '.join(bad)} — it is losing sectors: `hoard verify --disk {label} --repair` "
                             f"reads every replica there and re-copies bad ones from good replicas{then}"))
    if (s.get("temperature_c") or 0) >= HOT_C:
        out.append((WARNING, f"{who}: {s['temperature_c']} °C (at or above {HOT_C} °C) — check its cooling and airflow"))
    return out


def _smartctl() -> str | None:
    return shutil.which("smartctl", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def run_smartctl(program: str, dev: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """One reading of `dev` (`parse`'s figures), never raising: a smartctl that does not answer
    in `timeout_s` is killed and left (one stuck in the kernel cannot be waited for)."""
    cmd = [program, "--json=c", "-a", "-n", "standby", dev]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        return {"available": False, "why": f"smartctl cannot run: {e.strerror}"}
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            pass
        return {"available": False, "why": f"smartctl did not answer within {timeout_s:g} s (a disk or bridge that "
                                           "hangs: see `dmesg`)", "error": True}
    try:
        return parse(json.loads(stdout))
    except (ValueError, RecursionError):  # (JSON nested deeper than Python's recursion limit)
        last = (stderr or stdout).decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {"available": False, "why": f"smartctl printed no JSON (exit {proc.returncode}): {last[0][:200]}"}


def cache_path(cfg: Settings) -> Path:
    return cfg.ssd.root / CACHE


_COUNTS = ("exit_status", "reallocated", "pending", "uncorrectable", "media_errors", "critical_warning",
           "temperature_c", "power_on_hours")


def _sound(entry: Any) -> bool:
    """Whether a cached entry has the shape `_remember` writes. The cache lies in a directory the
    `hoard` user may write, and root's `hoard disks smart` reads it: anything else is dropped
    (that drive is read again), never trusted."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(entry, dict) or not isinstance(r := entry.get("reading"), dict):
        return False
    days = entry.get("days", {})
    return (all(number(entry.get(k, 0)) for k in ("read_at", "tried_at"))
            and all(r.get(k) is None or _int(r[k]) is not None for k in _COUNTS)
            and r.get("passed") in (True, False, None)
            and isinstance(r.get("failing_now", []), list) and all(isinstance(n, str) for n in r.get("failing_now", []))
            and isinstance(days, dict) and all(isinstance(d, str) and _int(n) is not None for d, n in days.items()))


def _load(cfg: Settings) -> dict[str, Any]:
    try:
        doc = json.loads(cache_path(cfg).read_bytes())
        if isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("devices"), dict):
            return {dev: e for dev, e in doc["devices"].items() if _sound(e)}
    except (OSError, ValueError, RecursionError):
        pass
    return {}


def _remember(entry: dict[str, Any], reading: dict[str, Any], at: float) -> None:
    """Keep `reading` and its day's reallocated count (per serial: a swapped drive starts anew),
    only the last GROWTH_DAYS days of them."""
    days = entry.get("days") if entry.get("serial") == reading.get("serial") else None
    days = dict(days) if isinstance(days, dict) else {}
    if reading.get("available") and reading.get("reallocated") is not None:
        today = dt.date.fromtimestamp(at)
        days.setdefault(today.isoformat(), reading["reallocated"])
        oldest = (today - dt.timedelta(days=GROWTH_DAYS)).isoformat()
        days = {d: n for d, n in sorted(days.items()) if d >= oldest}
    if reading.get("available") or "reading" not in entry or not entry["reading"].get("available"):
        entry["reading"], entry["read_at"] = reading, at  # (asleep, hung: the last real reading stands)
    entry.update(serial=entry["reading"].get("serial"), days=days, tried_at=at, last_try=reading.get("why"))


def _keep(cfg: Settings, cache: dict[str, Any]) -> None:
    """Write the readings (as root) into the SSD's state directory — only a real directory
    there: `hoard` owns the SSD's root and could put a link in its place, which root would
    follow to write (and re-mode) a directory of the system's; nor does root make the
    directory (one it made, hoard could not write: `hoard init` makes it)."""
    state = cache_path(cfg).parent
    if not os.path.lexists(state):  # an SSD `hoard init` has not prepared: nothing wrong, nothing kept
        log.info("the SMART readings are not kept: %s does not exist (`hoard init` makes it)", state)
        return
    try:
        st = os.lstat(state)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory (a link is not followed as root): `hoard init` makes it")
        ensure_dir(state)  # (the `hoard` group's, set-group-id: root's readings are readable)
        atomic_write(cache_path(cfg), json.dumps({"format": FORMAT, "devices": cache}).encode())
    except OSError as e:
        log.warning("the SMART readings are not kept at %s: %s", cache_path(cfg), e.strerror or e)


def read_all(cfg: Settings, max_age_s: float = FRESH_S, labels: list[str] | None = None,
             now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per configured disk label (or those of `labels`): its SMART reading (`parse`'s figures,
    `device`, `read_at`, `age_s`, and `reallocated_before`/`before_day` for `judge`), or
    `available` False and `why`. A device read less than `max_age_s` ago is not read again;
    the others are read in parallel, each within TIMEOUT_S — by root only (anyone else gets
    the cache). Never raises."""
    now = time.time() if now is None else now
    devices: dict[str, Device] = {}
    for d in cfg.disks:
        if labels is None or d.label in labels:
            try:
                devices[d.label] = device_of(d.path)
            except OSError as e:
                devices[d.label] = Device(None, f"a path that cannot be read ({e.strerror or e})")
    cache = _load(cfg)
    program = _smartctl()
    root = os.geteuid() == 0
    todo = sorted({dv.dev for dv in devices.values() if dv.dev and program and root
                   and now - float((cache.get(dv.dev) or {}).get("tried_at") or 0) >= max_age_s})
    fresh: dict[str, dict[str, Any]] = {}

    def one(dev: str) -> None:
        try:
            fresh[dev] = run_smartctl(program or "smartctl", dev)
        except Exception as e:  # a bug here is one line in the reading, not a thread's traceback
            log.exception("reading %s's SMART", dev)
            fresh[dev] = {"available": False, "why": f"smartctl could not be read: {e}"[:200], "error": True}

    threads = [threading.Thread(target=one, args=(dev,), daemon=True, name=f"smartctl {dev}") for dev in todo]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT_S + 2
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for dev in todo:
        entry = cache.setdefault(dev, {})
        _remember(entry, fresh.get(dev) or {"available": False, "why": "smartctl did not answer", "error": True}, now)
    if todo:  # (root: only root reads the drives)
        _keep(cfg, cache)
    out: dict[str, dict[str, Any]] = {}
    for label, dv in devices.items():
        out[label] = _shown(dv, cache.get(dv.dev or ""), program, root, now)
    return out


def _shown(dv: Device, entry: dict[str, Any] | None, program: str | None, root: bool, now: float) -> dict[str, Any]:
    """One disk's reading as `read_all` gives it: the cached figures with their age, or why none."""
    if dv.dev is None:
        return {"available": False, "device": None, "why": dv.no_smart()}
    base: dict[str, Any] = {"device": dv.dev, "device_kind": dv.what}
    if not entry or "reading" not in entry:
        if program is None:
            return base | {"available": False, "why": "no SMART read: smartctl is not installed (Debian package "
                                                      "smartmontools)"}
        if not root:
            return base | {"available": False, "why": "no SMART read yet: smartctl needs root — enable "
                                                      "hoard-smart.timer (docs/operations.md, \"SMART\")"}
        return base | {"available": False, "why": "no SMART read"}
    r = dict(entry["reading"])
    if not r.get("available"):
        # smartctl's own words for a loop device or a virtual disk: "Unable to detect device type"
        said = str(r.get("why", "")).removeprefix(f"{dv.dev}: ")
        r["why"] = dv.no_smart(said) if dv.what != "a disk" or "detect device type" in r.get("why", "") \
            else f"no SMART read: {said}"
    read_at = float(entry.get("read_at") or 0)
    r |= base | {"read_at": read_at, "age_s": round(now - read_at, 1)}
    if entry.get("last_try") and entry.get("tried_at", 0) > read_at:  # asleep or hung since: say so
        r["last_try"] = str(entry["last_try"])[:200]
    days = entry.get("days") if isinstance(entry.get("days"), dict) else {}
    if days and r.get("reallocated") is not None:
        first = min(days)
        r["reallocated_before"], r["before_day"] = days[first], first
    return r


def summary(s: dict[str, Any]) -> str:
    """One short line of a disk's reading for the `hoard health` table and the GUI card."""
    if not s.get("available"):
        kind = str(s.get("device_kind") or "")
        if s.get("asleep"):
            return "asleep (not woken)"
        if kind and kind != "a disk":  # "a loop device backed by /x.img" → "none (loop device)"
            return f"none ({re.sub(r'^an? ', '', kind).split(' backed by ')[0]})"
        return "none" if s.get("device") is None else "not read"
    parts = [{True: "passed", False: "FAILED", None: "health not given"}[s.get("passed")]]
    for k, what in (("reallocated", "reallocated"), ("pending", "pending"), ("uncorrectable", "uncorrectable"),
                    ("media_errors", "media errors")):
        if s.get(k) is not None:
            parts.append(f"{s[k]} {what}")
    if s.get("temperature_c") is not None:
        parts.append(f"{s['temperature_c']} °C")
    if s.get("power_on_hours") is not None:
        parts.append(f"{s['power_on_hours']} h on")
    return ", ".join(parts)
