"""`hoard dataset build|list|show|diff|materialize|publish|rm`: training datasets from a spec
(docs/datasets.md) into zone 3D, as versions; hoardfs.datasets.api does the work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.base.units import fmt_bytes
from hoardfs.cli._common import err, out, progress, state
from hoardfs.datasets import api
from hoardfs.datasets.audit import leak_line
from hoardfs.datasets.spec import load_spec
from hoardfs.jobs import datasets as dataset_jobs
from hoardfs.jobs.queues import connect, fetch_job, redis_required

app = typer.Typer(help="Training datasets from a spec (docs/datasets.md): `hoard dataset build SPEC` makes version "
                       "N+1 in `3D/<name>-v<N>/`; list, show, diff, materialize and rm the versions.",
                  no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="the report as one JSON object (`path`: the sealed directory)")]


def _emit(doc: Any, as_json: bool, line: str) -> None:
    if as_json:
        out.print(json.dumps(doc, sort_keys=True, ensure_ascii=False), markup=False)
    else:
        out.print(line, markup=False)


def _counts(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{split}: " + (", ".join(f"{c} {n}" for c, n in by.items()) or "none")
                     for split, by in counts.items())


def _shares(splits: dict[str, dict[str, Any]] | None, large: list[dict[str, Any]] | None) -> str:
    """The realised split (samples, share, ratio asked) and the groups over the reported share."""
    if not splits:
        return ""
    out = " — split " + ", ".join(f"{sp} {g['samples']} ({g['share']:.1%} of {g['ratio']:.0%})"
                                   for sp, g in splits.items())
    if large:
        out += "; large groups: " + ", ".join(f"{g['group']} {g['samples']} ({g['share']:.1%})" for g in large[:3])
        out += f" and {len(large) - 3} more" if len(large) > 3 else ""
    return out


@app.command("build")
def build(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(metavar="SPEC", help="the dataset spec, a TOML file")],
    mode: Annotated[str | None, typer.Option(help="copy or view (default: the spec's `mode`)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print counts per split × class, bytes and whether "
                                          "3D admits it; write nothing")] = False,
    here: Annotated[bool, typer.Option("--here", help="run in this process (no worker needed)")] = False,
    wait: Annotated[bool, typer.Option(help="queue it and wait for the worker's report")] = False,
    force: Annotated[bool, typer.Option("--force", help="a new version even when nothing changed")] = False,
    as_json: AsJson = False,
    timeout: Annotated[float, typer.Option(help="--wait gives up after this many seconds")] = 24 * 3600,
) -> None:
    """Build the next version of a dataset: plan and check everything before a byte moves, copy (or
    publish a view), seal `3D/<name>-v<N>/` with manifest.jsonl, dataset.json and README.md."""
    cfg = state(ctx).settings
    spec = load_spec(spec_file)
    if dry_run:
        d = api.dry_run(cfg, spec, mode)
        _emit(d.to_json(), as_json, f"dataset {d.name} ({d.layout}, {d.mode}): {d.samples} samples of {d.selected} "
              f"selected, {fmt_bytes(d.bytes)} — {_counts(d.counts)}{_shares(d.splits, d.large_groups)}; zone 3D "
              + ("admits it" if d.quota_ok else f"is too full ({fmt_bytes(d.reserve_bytes)} needed, "
                                                f"{fmt_bytes(d.zone_free)} free)")
              + (f"; new classes: {', '.join(d.new_classes)}" if d.new_classes else "")
              + (f"; {d.unlabelled} selected nodes have no {spec.class_label!r} label and are left out"
                 if d.unlabelled else "") + f"; leak audit: {leak_line(d.leak_audit)}")
        if not d.quota_ok:
            raise typer.Exit(ExitCode.NO_SPACE)
        return
    if here:
        with progress(f"dataset {spec.name}") as update:
            report = dataset_jobs.build(cfg, spec, mode, force, update)
        _report(report, as_json)
        return
    job_id = dataset_jobs.submit(cfg, spec, mode, force)
    if not wait:
        _emit({"job": job_id, "queued": True, "path": None}, as_json,
              f"dataset {spec.name}: queued on `{dataset_jobs.QUEUE}` as job {job_id} (`hoard worker` runs it; add --here to "
              "run it in this process, --wait to wait)")
        return
    _report(_wait(cfg, job_id, timeout), as_json)


def _wait(cfg, job_id: str, timeout: float) -> dict[str, Any]:

    deadline = time.monotonic() + timeout
    with redis_required(cfg.redis_url):
        conn = connect(cfg.redis_url)
        while True:
            job = fetch_job(job_id, conn)
            status = job.get_status(refresh=True)
            if status == "finished":
                return dict(job.return_value() or {})
            if status in ("failed", "stopped", "canceled"):
                res = job.latest_result()
                exc = (res.exc_string if res is not None else "") or ""
                last = [ln for ln in exc.strip().splitlines() if ln.strip()][-1:] or [status]
                raise HoardError(f"dataset job {job_id} {status}: {last[0].split(': ', 1)[-1]}", ExitCode.DATA)
            if time.monotonic() > deadline:
                raise HoardError(f"dataset job {job_id} still {status} after {timeout:.0f} s", ExitCode.UNAVAILABLE)
            time.sleep(0.5)


def _report(r: dict[str, Any], as_json: bool) -> None:
    if r.get("unchanged"):
        line = (f"dataset {r['name']}: unchanged since version {r['version']} ({r['path']}); --force makes a new "
                "version anyway")
    elif r.get("already_done"):
        line = f"{r['path']}: already there ({r['files']} files, {fmt_bytes(r['bytes'])}); nothing to do"
    else:
        line = (f"{r['path']}: sealed — dataset {r['name']}@{r['version']}, {r['files']} files, "
                f"{fmt_bytes(r['bytes'])} ({r['mode']}" + (f", view {r['view']}" if r.get("view") else "") + ") — "
                + _counts(r["counts"]) + _shares(r.get("splits"), r.get("large_groups")))
        if r.get("leak_audit"):
            line += "\n  leak audit: " + leak_line(r["leak_audit"])
    if r.get("leak_warning"):
        err.print(f"warning: {r['leak_warning']}", markup=False)
    _emit(r, as_json, line)


@app.command("list")
def list_(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Every dataset and its versions."""
    rows = api.list_datasets(state(ctx).settings)
    if as_json:
        out.print(json.dumps(rows, sort_keys=True, ensure_ascii=False), markup=False)
        return
    if not rows:
        out.print("no datasets yet: `hoard dataset build SPEC`", markup=False)
    for d in rows:
        out.print(f"{d['name']}  classes: {', '.join(d['class_map']) or '-'}", markup=False)
        for v in d["versions"]:
            out.print(f"  @{v['version']}  {v['status']:8} {v['mode']:4} {v['files']:>7} files "
                      f"{fmt_bytes(v['bytes']):>10}  {v['built_at']}  {v['path']}", markup=False)


@app.command("show")
def show(ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME[@N]")], as_json: AsJson = False) -> None:
    """One version (the newest without @N): its counts, class map, spec, leak audit and where it
    is; without @N every version of the name is listed after it."""
    name, n = api.parse_ref(ref, need_version=False)
    r = api.show(state(ctx).settings, name, n)
    doc = r.get("dataset") or {}
    lines = [f"{r['name']}@{r['version']}: {r['status']}, {r['mode']}, {r['files']} files "
             f"({fmt_bytes(r['bytes'])}), {'sealed' if r['sealed'] else 'not in 3D'} at {r['path']}",
             "  " + _counts(r["counts"]), "  classes: " + ", ".join(doc.get("class_map", []))]
    if doc.get("leak_audit"):
        lines.append("  leak audit: " + leak_line(doc["leak_audit"]))
    if n is None:
        lines.append(f"versions ({len(r['versions'])}):")
        lines += [f"  @{v['version']}  {v['status']:8} {v['mode']:4} {v['files']:>7} files "
                  f"{fmt_bytes(v['bytes']):>10}  {v['built_at']}  {v['path']}" for v in r["versions"]]
    _emit(r, as_json, "\n".join(lines))


@app.command("diff")
def diff(ctx: typer.Context, a: Annotated[str, typer.Argument(metavar="NAME@N")],
         b: Annotated[str, typer.Argument(metavar="NAME@M")], as_json: AsJson = False) -> None:
    """Samples added, removed, moved between splits and relabelled from one version to another."""
    d = api.diff(state(ctx).settings, a, b)
    lines = [f"{d['a']} → {d['b']}: {len(d['added'])} added, {len(d['removed'])} removed, {len(d['moved'])} moved, "
             f"{len(d['relabelled'])} relabelled, {d['unchanged']} unchanged"]
    lines += [f"  + {x['sha256']} {x['split']}/{x['class']}" for x in d["added"]]
    lines += [f"  - {x['sha256']} {x['split']}/{x['class']}" for x in d["removed"]]
    lines += [f"  > {x['sha256']} split {x['from']} → {x['to']}" for x in d["moved"]]
    lines += [f"  ~ {x['sha256']} class {x['from']} → {x['to']}" for x in d["relabelled"]]
    _emit(d, as_json, "\n".join(lines))


@app.command("materialize")
def materialize(ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME@N")],
                as_json: AsJson = False) -> None:
    """Make a version's directory again, byte for byte, from its stored manifest (labels changed
    since do not count)."""
    with progress(f"dataset {ref}") as update:
        r = api.materialize(state(ctx).settings, ref, update)
    _report(r, as_json)


@app.command("publish")
def publish(ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME@N")],
            disk: Annotated[str | None, typer.Option("--disk", metavar="LABEL", help="the S3 disk to publish to "
                                                     "(default: every S3 disk)")] = None,
            out_dir: Annotated[Path | None, typer.Option("--dir", metavar="DIR", help="also write the locator "
                                                         "as DIR/NAME@N.json (a mount reader's `[loader] "
                                                         "locators`); alone: only there")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="the report as one JSON object (`written`: "
                                                  "where the locator went)")] = False) -> None:
    """Publish a version's locator — its manifest's and samples' places on the S3 disks, the
    samples withheld now — for a training loader on another host (docs/datasets.md, "From
    another host"); run it again after a delete or a gc."""
    from hoardfs.datasets import publish as pub  # deferred: opens the store; `hoard dataset --help` needs none of it

    r = pub.publish(state(ctx).settings, ref, disk, out_dir)
    _emit(r, as_json, f"{r['dataset']}: {r['samples']} samples, {r['withheld']} withheld; its locator "
                      f"({fmt_bytes(r['bytes'])}) → " + ", ".join(r["written"]))


@app.command("rm")
def rm(ctx: typer.Context, ref: Annotated[str, typer.Argument(metavar="NAME[@N]")], as_json: AsJson = False) -> None:
    """Remove a version's directory from 3D (every version's, for NAME) and its view; the version
    stays recorded: `hoard dataset materialize NAME@N` makes it again."""
    r = api.remove(state(ctx).settings, ref)
    _emit(r, as_json, "\n".join(f"{x['path']}: removed ({fmt_bytes(x['freed_bytes'])} freed"
                                + (f", view {x['view']} removed" if x["view"] else "") + ")" for x in r["removed"]))
    if not r["removed"]:
        err.print("nothing to remove")
