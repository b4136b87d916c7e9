"""docs/benchmarks.md's sections of `bench/s3_backend.py` (one per engine measured) and
docs/scale-out.md's table of the engines side by side, written from the committed JSON
(`python bench/s3_backend.py --render`)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from _common import REPO, RESULTS, MiB, write_doc_section

BEGIN = "<!-- bench/s3_backend.py: begin (written by `bench/s3_backend.py --render`; do not edit) -->"
END = "<!-- bench/s3_backend.py: end -->"
#: the default run's results (SeaweedFS): the section the docs show
RESULT = RESULTS / "s3-backend-default.json"
#: the share of the engine's own rate each row of the backend is to reach
GOAL = 0.90


#: the commit from which a seal claims its shard beside the upload's parts (its run's seal
#: time is told apart: `_has`)
CLAIM_BESIDE_PARTS = "86f75de"
#: the commit from which a seal's staging file is renamed aside and unlinked by a thread of its own
STAGING_DROP_BESIDE = "fe1b17d"


def _has(doc: dict, commit: str) -> bool:
    """Whether the run `doc` measured code that has `commit` (git ancestry; a run whose commit
    git does not know: no)."""
    ran = str(doc.get("commit", "")).split("+")[0]
    return bool(ran) and subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", commit, ran],
                                        capture_output=True).returncode == 0


def mib_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / MiB / seconds, 1) if seconds > 0 else 0.0


def best(rows: dict[str, dict]) -> tuple[str, dict]:
    """The fastest of `rows` (by their `mib_s`): the engine's bound a row is judged against."""
    return max(rows.items(), key=lambda kv: kv[1]["mib_s"])


# -- docs/benchmarks.md ------------------------------------------------------------------------------

def pct(x: float) -> str:
    """A share as a whole percent — with a tenth, cut not rounded, where rounding would lift a
    share short of GOAL to it (89.8 %, and 89.9 % for 0.8999: never 90 % for a goal not met)."""
    return f"{math.floor(x * 1000) / 10:.1f}%" if x < GOAL <= round(x, 2) else f"{x:.0%}"


def share(rate: float, bound: float) -> float:
    """`rate` / `bound` to 3 decimals, cut not rounded: a share short of GOAL stays short of it."""
    return math.floor(rate / bound * 1000) / 1000


TITLE = "## The S3 backend against SeaweedFS"
CEPH_TITLE = "## The S3 backend against Ceph RGW"


def render() -> None:
    """docs/benchmarks.md's section of each engine measured, and docs/scale-out.md's table of the
    engines side by side."""
    _render_engine("seaweedfs", RESULT if RESULT.exists() else None)
    ceph = result_of("ceph")
    if ceph is not None:
        _render_engine("ceph", ceph)
    _render_engines()


def result_of(kind: str, like: dict | None = None) -> Path | None:
    """The newest full run's JSON of engine `kind` (not a trial; SeaweedFS: the default run's,
    unless `like` is given) — with `like`, the newest whose sizes are `like`'s."""
    if kind == "seaweedfs" and like is None:
        return RESULT if RESULT.exists() else None
    found = []
    for path in RESULTS.glob("s3-backend-*.json"):
        doc = json.loads(path.read_text())
        if doc.get("trial") or doc.get("engine", "seaweedfs") != kind:
            continue
        if like is not None and _sizes(doc) != _sizes(like):
            continue
        found.append((doc["when"], path))
    return max(found)[1] if found else None


def _sizes(doc: dict) -> tuple:
    return (doc["batch"]["objects"], doc["large"]["bytes"], doc.get("replace", {}).get("objects"), doc["rounds"])


def _markers(kind: str) -> tuple[str, str]:
    if kind == "seaweedfs":
        return BEGIN, END
    return (f"<!-- bench/s3_backend.py --engine {kind}: begin (written by `bench/s3_backend.py --render`; "
            "do not edit) -->", f"<!-- bench/s3_backend.py --engine {kind}: end -->")


def _render_engine(kind: str, path: Path | None) -> None:
    begin, end = _markers(kind)
    title = TITLE if kind == "seaweedfs" else CEPH_TITLE
    if path is None:  # no full run yet: the section says so, and shows no trial's numbers
        trials = sorted(p.name for p in RESULTS.glob("s3-backend-*trial*.json"))
        lines = [begin, "", title, "",
                 "**Not measured yet.** `bench/s3_backend.py` (its docstring says how each row and its bound are "
                 "measured) has run end to end only as trials — small sizes, on a machine busy with another "
                 "benchmark — whose numbers are not results" + (f" (`bench/results/{'`, `bench/results/'.join(trials)}`)"
                                                                  if trials else "") + ". The figures come from its "
                 "default run (20,000 objects, a 256 MiB object, 12,000 objects moved by `hoard disks replace`) on a "
                 "quiet machine: `.venv/bin/python bench/s3_backend.py` writes them here, with the reads and the "
                 "seal at one stream beside `READ_STREAMS` / `UPLOAD_STREAMS` in the same run — on "
                 "the busy machine the trials did not tell the two apart.", "",
                 "What the trials did show, as a matter of kind: the engine's GETs and PUTs run on the same two cores "
                 "as the backend, and the backend's client spends several times the CPU per GiB of a bare GET loop "
                 "(every record's header and xxh3-128 checked, each payload copied out of the response and handed to "
                 "a sink; the per-row CPU seconds are in the JSON); a seal read its whole staging file once more to "
                 "hash it before the upload (S3 takes an object's metadata, where the sha256 goes, only when its "
                 "multipart upload starts); the sha256 is now taken as the shard is appended "
                 "(docs/scale-out.md). Whether the reads and the seal reach 90 % of the engine is for the full "
                 "run to say.", "", end]
        write_doc_section(begin, end, lines)
        return
    doc = json.loads(path.read_text())
    if doc.get("trial"):
        raise SystemExit(f"{path.relative_to(REPO)} is a trial's: not rendered")
    m, sh = doc["machine"], doc["shares"]
    b, big = doc["batch"], doc["large"]
    if kind == "ceph":
        what = (f"Ceph RGW ({doc['engine_version'] or 'radosgw'}; Debian 12's packages) started as the tests start it "
                "(`tests/ceph_rgw.py`: one monitor, one manager, one BlueStore OSD on a sparse file, one radosgw, "
                "pools of one copy)")
        cold = ("the OSD's cache dropped (`ceph tell osd.0 cache drop`: BlueStore reads its file with O_DIRECT and "
                "caches in its own memory) and its file evicted from the page cache (`posix_fadvise`)")
    else:
        what = f"SeaweedFS ({doc['engine_version'] or 'weed'}) started as the tests start it"
        cold = "the engine's files evicted from the page cache (`posix_fadvise`)"
    sizes = [a for a in doc["argv"] if a not in ("--engine", kind)]
    signed = any(k.startswith("signed_") for k in doc["batch_engine"])
    lines = [begin, "", title, "",
             f"`bench/s3_backend.py{' --engine ' + kind if kind != 'seaweedfs' else ''}"
             f"{' ' + ' '.join(sizes) if sizes else ''}` at {doc['commit']}, "
             f"{doc['when'][:16].replace('T', ' ')}: {what}, on this machine (127.0.0.1: client "
             f"and engine share its {m['cpus']} cores); 1-minute load {m['loadavg_1m_at_start']:.1f} at the start, "
             f"{m['loadavg_1m_at_end']:.1f} at the end. Every bound is the engine's own rate for the same bytes, "
             "measured in the same run with the backend's client settings (boto3, `hoardfs.fsd.core.s3.client_for`"
             + ("; and the same GETs to presigned URLs with urllib3, as the backend sends its own"
                if signed else "")
             + f") at 1–8 requests in flight, the best taken. Cold = {cold}, warm = the same read again at once; "
             f"each figure the median of {doc['rounds']} rounds over all the rows in turn (every round's figure is "
             f"in the JSON). Raw JSON: `{path.relative_to(REPO)}`."
             + (" CI and this project's development machine install no Ceph: its run is made in a Debian 12 root "
                "with Debian's packages, the checkout bound in (docs/testing.md, \"Ceph RGW\"). One OSD on one "
                "disk: a cluster's many OSDs share a bucket's load, which this does not measure."
                + ("" if signed else " The code this run measured sent its GETs through boto3, not to presigned URLs "
                   "(its bounds have no such row).")
                if kind == "ceph" else ""),
             "", "| row | cold | warm | bound (best of the engine's) |", "|---|---|---|---|"]

    def row(name: str, backend: dict, key: str, engine_rows: dict) -> None:
        cells = []
        for temp in ("cold", "warm"):
            bname, bound = best({k: v[temp] for k, v in engine_rows.items()})
            cells.append(f"{backend[temp]['mib_s']} MiB/s, **{pct(sh[temp][key]['share'])}** of "
                         f"{bound['mib_s']} ({bname.replace('_', ' ')})")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | the engine's GETs of the same bytes |")

    rs = doc["read_streams"]
    row(f"batch read of {b['objects']:,} small objects (`Store.read_batch`; {b['requests']} ranged GETs, "
        f"{b['range_bytes'] / MiB:.0f} MiB, {rs} in flight)", doc["batch_backend"], "batch", doc["batch_engine"])
    row(f"— the same, one GET at a time ({b['requests_one_stream']} GETs)",
        doc["batch_backend_one_stream"], "batch_one_stream", doc["batch_engine"])
    lb = doc["large_backend"]
    streamed = doc.get("stream_large", False)  # (runs before S3Disk.stream_large read pieces only)
    how = "one streamed GET, checked per 8 MiB piece" if streamed else f"{rs} pieces in flight"
    row(f"large object, {big['bytes'] / MiB:.0f} MiB, through the planner ({how})", lb["planner"], "large_planner",
        doc["large_engine"])
    if "planner_pieces" in lb:
        row(f"— the same in 8 MiB pieces, {rs} in flight", lb["planner_pieces"],
            "large_planner_pieces", doc["large_engine"])
    row("— the same, one piece at a time",
        lb["planner_one_stream"], "large_planner_one_stream", doc["large_engine"])
    row("the same object through `Store.copy_object_to` (`hoard get`)", lb["copy_object_to"],
        "large_copy_object_to", doc["large_engine"])
    if "copy_object_to_pieces" in lb:
        row(f"— in 8 MiB pieces, {rs} in flight", lb["copy_object_to_pieces"],
            "large_copy_object_to_pieces", doc["large_engine"])
    row("— one piece at a time",
        lb["copy_object_to_one_stream"], "large_copy_object_to_one_stream", doc["large_engine"])
    if "verify_backend" in doc:
        v = doc["verify"]
        row(f"`hoard verify` of the corpus's {v['shards']} shards ({v['bytes'] / MiB:.0f} MiB: one GET each, every "
            "record and the object's sha256 checked)", doc["verify_backend"], "verify", doc["verify_engine"])
    p_name, p = best(doc["engine_put"])
    lines.append(f"| seal of a {big['bytes'] / MiB:.0f} MiB shard (hashed, uploaded in 64 MiB parts, "
                 f"{doc['seal']['upload_streams']} in flight, HEAD; median of {len(doc['seal']['rounds'])}) | "
                 f"{sh['seal']['mib_s']} MiB/s, **{pct(sh['seal']['share'])}** of {p['mib_s']} | — | "
                 f"the engine's multipart PUT of as many bytes ({p_name.replace('_', ' ')}) |")
    lines.append(f"| — the same, one part at a time (the rounds alternated) | "
                 f"{sh['seal_one_stream']['mib_s']} MiB/s, **{pct(sh['seal_one_stream']['share'])}** of "
                 f"{p['mib_s']} | — | the same |")
    if "replace" in doc:
        r = doc["replace"]
        lines.append(f"| `hoard disks replace d1 s3b`: {r['shards']} shards, {r['bytes'] / MiB:.0f} MiB moved off a "
                     f"local disk (source cold) | {r['mib_s']} MiB/s, **{pct(sh['replace']['share'])}** of "
                     f"{p['mib_s']} | — | the engine's multipart PUT |")
    if "replace" in doc:
        lines += ["", "A replace does more per shard than a PUT: the shard read off `d0`, written and synced on the "
                  "staging folder, uploaded, then read back whole and checked (its sha256, every record) before the "
                  "index names it, three shards at a time; its seconds are its process's, start included."]
    # the default engine's section in full; another engine's without the engine's rates by
    # requests in flight and the breakdown of the client's CPU (both in its JSON)
    brief = kind != "seaweedfs"
    if brief:
        lines += ["", "The engine's rates by requests in flight (each row's bound is the best of them) and the "
                  "client's CPU seconds per GiB of every row are in the JSON."]
    else:
        lines += ["", "The engine's rates by requests in flight (MiB/s, cold / warm):", "",
                  "| in flight | batch: the plan's ranges (≤ 32 MiB) | batch: the same in 8 MiB pieces | batch: the "
                  "plan's ranges, presigned URLs (urllib3) | large object, 8 MiB pieces | large object, presigned "
                  "URLs | multipart PUT (64 MiB parts) |", "|---|---|---|---|---|---|---|"]

        def pair(rows: dict, k: str) -> str:
            return f"{rows[k]['cold']['mib_s']} / {rows[k]['warm']['mib_s']}" if k in rows else "—"

        be, le = doc["batch_engine"], doc["large_engine"]
        for n in sorted({int(k.split("_")[0]) for k in be if re.fullmatch(r"[0-9]+_in_flight", k)}):
            k = f"{n}_in_flight"
            put = doc["engine_put"].get(k)
            lines.append(f"| {n} | {pair(be, k)} | {pair(be, k + '_8mib')} | {pair(be, 'signed_' + k)} | "
                         f"{pair(le, k)} | {pair(le, 'signed_' + k)} | {put['mib_s'] if put else '—'} |")
        lines.append(f"| one GET of the whole object | — | — | — | {pair(le, 'one_get')} | "
                     f"{pair(le, 'signed_one_get')} | — |")
    small = doc["seal"]["small_shards"]
    if small:
        lines += ["", f"Seals while the small objects were put: {len(small)} shards, "
                  f"{sum(s['bytes'] for s in small) / MiB:.0f} MiB in {sum(s['seconds'] for s in small):.1f} s "
                  f"({mib_s(sum(s['bytes'] for s in small), sum(s['seconds'] for s in small))} MiB/s); the put of "
                  f"{b['objects']:,} objects took {doc['seal']['put_small_s']:.1f} s in all, the large object's "
                  f"{doc['seal']['put_large_s']:.1f} s."]
    met = [sh["cold"]["batch"]["share"] >= GOAL and sh["warm"]["batch"]["share"] >= GOAL,
           sh["cold"]["large_planner"]["share"] >= GOAL and sh["warm"]["large_planner"]["share"] >= GOAL,
           sh["seal"]["share"] >= GOAL]
    lines += ["", f"Goals (≥ 90 % of the engine's rate): batch read {'met' if met[0] else 'NOT met'}, large-object "
              f"read {'met' if met[1] else 'NOT met'}, seal upload {'met' if met[2] else 'NOT met'} "
              f"(S3Disk.read_streams = {doc['read_streams']} ranged GETs in flight per reader)."]
    lines += ["", f"The batch read's time includes its plan (the index looked up for every object, the ranges "
              f"cut): {b['plan_s']:.2f} s; the engine's rows are given ranges made (one stream's plan, up to 32 MiB)."]
    behind = [name for name, ok in zip(("the batch read", "the large-object read", "the seal"), met, strict=True)
              if not ok]
    if behind:
        def cpu_gib(row: dict) -> str:
            return f"{row['cpu_s'] / (row['bytes'] / (1 << 30)):.2f}"

        be, le, lb = doc["batch_engine"], doc["large_engine"], doc["large_backend"]
        bname, _ = best({k: v["warm"] for k, v in be.items()})
        lname, _ = best({k: v["warm"] for k, v in le.items()})
        cut, pieces8 = be.get("4_in_flight_8mib"), le.get("signed_4_in_flight", le.get("4_in_flight"))
        lines += ["", f"Where hoardfs is behind here ({', '.join(behind)}): the client's CPU seconds per GiB read "
                  f"(this process, every thread; warm) — batch read {cpu_gib(doc['batch_backend']['warm'])} against "
                  f"{cpu_gib(be[bname]['warm'])} for the engine's best GET loop ({bname.replace('_', ' ')}); large "
                  f"object {cpu_gib(lb['planner']['warm'])} against {cpu_gib(le[lname]['warm'])} "
                  f"({lname.replace('_', ' ')}). Client and engine share {m['cpus']} cores, so the client's CPU is "
                  "the read's limit." + ("" if brief else " What it goes on, measured in this run:")]
        if cut and pieces8 and not brief:
            cut_mib = b.get("range_limit", 8 * MiB) // MiB  # (runs before range_limit cut at 8 MiB)
            lines += ["", f"- *Requests and threads.* With {rs} GETs in flight a reader cuts the "
                      f"plan's ranges at {cut_mib} MiB ({b['requests']} GETs where one stream makes "
                      f"{b['requests_one_stream']}) "
                      + ("and reads a large object off one streamed GET (S3Disk.stream_large). " if doc.get("stream_large") else
                         "and reads a large object in 8 MiB pieces, each GET in a thread of its own. ")
                      + "The engine's own "
                      "GET loop pays for that cut as well: the same ranges in 8 MiB pieces, 4 in flight, cost "
                      f"{cpu_gib(cut['warm'])} s/GiB (boto3), the object's 8 MiB pieces {cpu_gib(pieces8['warm'])} "
                      f"(presigned URLs), against {cpu_gib(be[bname]['warm'])} and {cpu_gib(le[lname]['warm'])} "
                      "uncut. The batch read one GET at a time (32 MiB ranges) costs "
                      f"{cpu_gib(doc['batch_backend_one_stream']['warm'])} s/GiB and reaches "
                      f"{pct(sh['warm']['batch_one_stream']['share'])} warm: on one machine, loopback, a second "
                      "request in flight hides no round trip and its CPU is paid on the engine's cores; across a "
                      "network it is what READ_STREAMS is for — not re-decided here (no network in this run).",
                      f"- *The checks and the plan* — the plan ({b['plan_s']:.2f} s: every object looked up in the "
                      "index, the ranges cut), every record's header (its xxh32 check) and xxh3-128, every MiB of a "
                      "large object against its chunk map, each payload handed to the sink as a view of its range "
                      "(no copy) — are the rest: the one-stream batch read's "
                      f"{cpu_gib(doc['batch_backend_one_stream']['warm'])} s/GiB against the bound's "
                      f"{cpu_gib(be[bname]['warm'])}."]
            if any(k.startswith("signed_") for k in be):
                lines.append("- boto3's own cost per request — about 3 ms of CPU (hooks, endpoint rules, signing, "
                             "header parsing), some 0.3 s/GiB at 8 MiB pieces — is not paid: the backend's ranged "
                             "GETs go to presigned URLs with urllib3 (`S3Disk._get`), and the bound includes the "
                             "same GETs sent so (the `signed` rows).")
        # (judged by the load before the run: at its end the engine's and the client's own threads
        # count in it, whatever else ran)
        if m["loadavg_1m_at_start"] >= 1.0:
            lines += ["", f"This run shared the machine (1-minute load {m['loadavg_1m_at_start']:.1f} → "
                      f"{m['loadavg_1m_at_end']:.1f} on {m['cpus']} cores: other work ran beside it), so its rates "
                      "and shares move from round to round (every round is in the JSON) — the engine's own among them "
                      "— and the client's CPU seconds per GiB move too (more threads waiting "
                      "on the same cores): compare runs of one commit before reading a change into them."]
    seals = [doc["seal"]["seal_median"]]
    if seals:
        took, up = sum(x["seconds"] for x in seals), sum(x["upload_s"] for x in seals)
        if _has(doc, STAGING_DROP_BESIDE):
            rest = ("the bucket's identity read before it, the HEAD after it, the staging file renamed aside (its "
                    "unlink runs in a thread of its own) and the claim removed (the claim and the first HEAD run "
                    "beside the parts, inside the upload's time)")
        elif _has(doc, CLAIM_BESIDE_PARTS):
            rest = ("the bucket's identity read before it, the HEAD after it, the staging file and the claim removed "
                    "(the claim and the first HEAD run beside the parts, inside the upload's time)")
        else:
            rest = "the bucket's identity read, two HEADs and the staging file removed"
        lines += ["", f"Where the seal's time went (the median seal): {took:.2f} s in all, of which the multipart "
                  f"upload {up:.2f} s ({up / took:.0%}); the rest is {rest} (the sha256 is taken as the shard is "
                  "appended: no second read of the file)."]
    lines += ["", end]
    write_doc_section(begin, end, lines)


ENGINES_BEGIN = ("<!-- bench/s3_backend.py: engines begin (written by `bench/s3_backend.py --render`; "
                 "do not edit) -->")
ENGINES_END = "<!-- bench/s3_backend.py: engines end -->"


def _render_engines() -> None:
    """docs/scale-out.md's table of the two engines, each against its own bounds: the Ceph run and
    the SeaweedFS run of the same sizes (else SeaweedFS's default run, said so)."""
    ceph_path = result_of("ceph")
    if ceph_path is None:
        return
    ceph = json.loads(ceph_path.read_text())
    weed_path = result_of("seaweedfs", like=ceph) or result_of("seaweedfs")
    if weed_path is None:
        return
    weed = json.loads(weed_path.read_text())
    docs = (weed, ceph)

    def both(fn: Callable[[dict], str]) -> str:
        return " | ".join(fn(d) for d in docs)

    def memory(d: dict) -> str:
        mem = d.get("engine_memory_mib")
        if not mem:
            return "— (not recorded by that run)"
        total = sum(v["peak"] for v in mem.values())
        parts = ", ".join(f"{k} {v['peak']:.0f}" for k, v in mem.items())
        return f"{total:.0f} MiB" + (f" ({parts})" if len(mem) > 1 else "")

    def cw(rows: dict) -> str:
        return "{} / {}".format(*(best({k: v[t] for k, v in rows.items()})[1]["mib_s"] for t in ("cold", "warm")))

    def rate_and_share(d: dict, backend: dict, key: str) -> str:
        return (f"{backend['cold']['mib_s']} / {backend['warm']['mib_s']} "
                f"({pct(d['shares']['cold'][key]['share'])} / {pct(d['shares']['warm'][key]['share'])})")

    def started(d: dict) -> str:
        return f"{d['engine_start_s']} s" if "engine_start_s" in d else "— (not recorded by that run)"

    def seal(d: dict) -> str:
        return f"{d['shares']['seal']['mib_s']} ({pct(d['shares']['seal']['share'])})"

    def replace(d: dict) -> str:
        if "replace" not in d:
            return "—"
        return f"{d['replace']['mib_s']} ({pct(d['shares']['replace']['share'])})"

    def run(d: dict, path: Path) -> str:
        return (f"`{path.name}`: {d['batch']['objects']:,} objects, {d['large']['bytes'] / MiB:.0f} MiB object, "
                f"{d.get('replace', {}).get('objects', 0):,} replaced; load {d['machine']['loadavg_1m_at_start']:.1f}"
                f"→{d['machine']['loadavg_1m_at_end']:.1f}")

    lines = [ENGINES_BEGIN, "",
             "| on this machine (2 cores, one disk; client and engine on it) | SeaweedFS | Ceph RGW |", "|---|---|---|",
             f"| the run | {run(weed, weed_path)} | {run(ceph, ceph_path)} |",
             f"| version | {both(lambda d: (d.get('engine_version') or '?').splitlines()[0])} |",
             f"| S3 answers after start (an object round trip) | {both(started)} |",
             f"| engine memory at its peak (VmHWM, MiB) | {both(memory)} |",
             f"| engine disk after the corpus and the object | {both(lambda d: str(d['engine_disk_mib']) + ' MiB')} |",
             f"| engine: multipart PUT, 64 MiB parts, best (MiB/s) | "
             f"{both(lambda d: str(best(d['engine_put'])[1]['mib_s']))} |",
             f"| engine: GETs of the batch's ranges, best (MiB/s, cold / warm) | {both(lambda d: cw(d['batch_engine']))} |",
             f"| engine: GETs of the large object, best (MiB/s, cold / warm) | {both(lambda d: cw(d['large_engine']))} |",
             f"| hoardfs batch read (MiB/s, cold / warm; share of that engine's GETs) | "
             f"{both(lambda d: rate_and_share(d, d['batch_backend'], 'batch'))} |",
             f"| hoardfs large-object read, planner | "
             f"{both(lambda d: rate_and_share(d, d['large_backend']['planner'], 'large_planner'))} |",
             f"| hoardfs seal upload (MiB/s; share of that engine's PUT) | {both(seal)} |",
             f"| `hoard disks replace` onto the bucket (MiB/s; share of PUT) | {both(replace)} |",
             "", ENGINES_END]
    write_doc_section(ENGINES_BEGIN, ENGINES_END, lines, doc=REPO / "docs" / "scale-out.md")

