"""A scraper account (one that may write 3A: `nobody` in 3A's group, by setpriv) and a trainer
(one that may write 3C) against the real `hoard` CLI run as root: files are opened as they
were scanned, never through a link planted or swapped in, never from a fifo; a name that
could split a line is refused (docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_privileges import _gallery, as_user, hoard, home, needs_root, reachable  # noqa: F401 (fixtures)

SECRET = "ROOT-ONLY-TOKEN-4f1c2a"


def _secret(home: Path) -> Path:
    """A root-only file, as the GUI's cookie key or /etc/shadow is."""
    secret = home / "ssd" / "state" / "secret-token"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET + " rest\n")
    secret.chmod(0o600)
    return secret


@needs_root
def test_a_ready_signal_linked_to_a_secret_tells_nothing_of_it(home: Path) -> None:
    """The scraper makes its batch's `_READY` a link to a root-only file. `hoard ingest
    --ready` (root) read the link's target, took its first word for the source name and
    wrote "no source 'ROOT-ONLY-TOKEN…'" into the batch's `_REASON.txt` (which the scraper
    reads, its directory's group set-gid), into its own output and into `hoard health`.
    A signal that is not a regular file of the batch is now refused without being read."""
    cfg_path = home / "hoard.toml"
    secret = _secret(home)
    batch = _gallery(home / "gen")
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && chmod g+s "$2/$4" && rm "$2/$4/_READY" && ln -s "$3" "$2/$4/_READY"',
                  str(batch), str(zone), str(secret), batch.name)
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, "ingest", "--ready", ok=False)
    assert SECRET not in res.stdout + res.stderr, res.stdout + res.stderr
    health = hoard(cfg_path, "health", "--json", ok=False)
    assert SECRET not in health.stdout + health.stderr
    mine = zone / batch.name
    seen = as_user('cat "$1"/_* "$1"/.*.tmp 2>/dev/null; true', str(mine))
    assert SECRET not in seen.stdout
    assert "_READY" in res.stdout + res.stderr and "link" in res.stdout + res.stderr, res.stdout + res.stderr
    # the reason set aside, swapped for a link to the secret: `hoard health` (and the GUI's
    # banner, a viewer's) showed its first line as the reason
    res = as_user('rm -f "$1/_REASON.txt" && ln -s "$2" "$1/_REASON.txt"', str(mine), str(secret))
    assert res.returncode == 0, res.stderr
    health = hoard(cfg_path, "health", "--json", ok=False)
    assert batch.name in health.stdout and SECRET not in health.stdout + health.stderr


@needs_root
def test_a_link_planted_at_a_temporary_name_is_not_written_through(home: Path) -> None:
    """Every file hoardfs rewrites goes tmp → rename through `.<name>.tmp` beside it, opened
    O_CREAT|O_TRUNC, following links. In the scraper's own batch directory the ingest (root)
    writes `_REASON.txt` when it sets a refused `_READY` aside: the scraper planted
    `._REASON.txt.tmp` → a root-only file, and `hoard ingest --ready` truncated that file,
    wrote the reason into it and made it 0640. The temporary name is now the writer's own
    (random, never guessed) and the file made new (O_EXCL|O_NOFOLLOW)."""
    cfg_path = home / "hoard.toml"
    victim = _secret(home)
    batch = _gallery(home / "gen")
    (batch / "_READY").write_text("no-such-source\n")
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && ln -s "$3" "$2/$4/._REASON.txt.tmp"', str(batch), str(zone), str(victim),
                  batch.name)
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, "ingest", "--ready", ok=False)
    assert "no-such-source" in res.stdout + res.stderr, res.stdout + res.stderr
    assert victim.read_text() == SECRET + " rest\n"
    assert oct(victim.stat().st_mode & 0o777) == oct(0o600)
    mine = zone / batch.name
    assert "no-such-source" in (mine / "_REASON.txt").read_text()
    assert not (mine / "_REASON.txt").is_symlink()


@needs_root
def test_a_scrapers_link_in_3a_is_no_batch_and_stops_no_other(home: Path) -> None:
    """The scraper links `3A/0evil` to its own refused batch. `hoard ingest --ready`
    took the link for a batch, renamed the real batch's `_READY` through it, then stopped with
    a traceback when writing its `_REASON.txt` there (a link another account owns, not
    followed) — and every batch after it was skipped at each run. A link in 3A is no batch
    now: the refused batch is set aside under its own name, the good one queued, one line
    each, no traceback."""
    cfg_path = home / "hoard.toml"
    refused = _gallery(home / "gen", seed=3)
    (refused / "_READY").write_text("no-such-source\n")
    good = _gallery(home / "gen2", seed=4)
    zone = home / "ssd" / "3A"
    res = as_user('cp -r "$1" "$2/" && cp -r "$3" "$2/zz-good" && ln -s "$4" "$2/0evil"', str(refused), str(zone),
                  str(good), refused.name)
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, "ingest", "--ready", ok=False)
    both = res.stdout + res.stderr
    assert "Traceback" not in both and "internal error" not in both, both
    assert "0evil" not in both, both
    assert f"{refused.name}:" in both and "no-such-source" in both, both
    assert "zz-good" in both or good.name in both, both
    assert (zone / refused.name / "_READY.rejected").exists() and "no-such-source" in (
        zone / refused.name / "_REASON.txt").read_text()


def test_a_sidecar_swapped_for_a_link_after_the_screen_is_not_read(tmp_path: Path) -> None:
    """The screen saw a batch's sidecar as a file of the batch; before the adapter read it (the
    settle wait's re-check is behind, the parse comes next) the scraper swapped it for a link
    to a root-only JSON file (the GUI's users.json, a session). The adapter, as root, parsed
    the secret as the sidecar's metadata — `raw_metadata` every viewer sees on the node page.
    A document is now read only if it is the file the screen saw (device and inode of what
    was opened); the swapped one is rejected with its media, the others taken."""
    from hoardfs.adapters.screen import screen
    from hoardfs.adapters.sidecars import GalleryDl

    batch = _gallery(tmp_path / "gen")
    secret = tmp_path / "users.json"
    secret.write_text('{"admin": {"password_hash": "%s"}}' % SECRET)  # noqa: UP031  # JSON: braces stay literal
    secret.chmod(0o600)
    view, rejects = screen(batch)
    assert not rejects
    victim = sorted(r for r in view.files if r.endswith(".json"))[0]
    (batch / victim).unlink()
    (batch / victim).symlink_to(secret)
    parsed = GalleryDl("gallery").parse(view)
    assert SECRET not in repr([r.raw for r in parsed.records] + [r.specific for r in parsed.records])
    reasons = {p: r.reason for r in parsed.rejects for p in r.paths}
    assert "not the file the scan saw" in reasons[victim], reasons
    assert victim.removesuffix(".json") in reasons
    assert len(parsed.records) == len([r for r in view.files if r.endswith(".json")]) - 1


@needs_root
def test_the_package_holds_the_files_stored_not_what_3a_holds_later(home: Path, pg) -> None:
    """The store step stores the file the scan saw; the package step then read the batch's
    files from 3A again, by path, following links. After the store step the scraper swapped
    its directory `sub` for a link to a root-only directory holding a file of the same name:
    root wrote that secret into the 3B package (the manifest still naming the stored file's
    checksum). The package is now made of the files the scan saw, or not at all."""
    import hashlib
    import json
    import tarfile

    from hoardfs.base import config
    from hoardfs.jobs import ingest as ua1

    cfg = config.load(home / "hoard.toml")
    zone = cfg.ssd.zone_path("3A")
    src = home / "gen" / "b-swap"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        d = src / "sub" if i == 0 else src
        (d / f"p{i}.png").write_bytes(os.urandom(2000))
        (d / f"p{i}.png.json").write_text(json.dumps({"title": f"t{i}", "id": f"i{i}"}))
    private = home / "ssd" / "state" / "private"  # a root-only directory holding the same names
    private.mkdir(parents=True)
    (private / "p0.png.json").write_text("{}")
    (private / "p0.png").write_text(SECRET * 80)  # as large as the stored file: size alone is no tell
    os.truncate(private / "p0.png", 2000)
    (private / "p0.png").chmod(0o600)
    res = as_user('cp -r "$1" "$2/"', str(src), str(zone))
    assert res.returncode == 0, res.stderr
    mine = zone / "b-swap"
    ua1.submit(cfg, mine, "sidecar", queue=False)
    ua1._run_step_locked(cfg, "b-swap", "scan", then_enqueue=False)
    ua1._run_step_locked(cfg, "b-swap", "store", then_enqueue=False)
    res = as_user('mv "$1/sub" "$1/sub.orig" && ln -s "$2" "$1/sub"', str(mine), str(private))
    assert res.returncode == 0, res.stderr
    ua1._run_step_locked(cfg, "b-swap", "apply", then_enqueue=False)
    with pytest.raises(Exception) as failed:
        ua1._run_step_locked(cfg, "b-swap", "package", then_enqueue=False)
    assert "sub/p0.png" in str(failed.value) and "not the file" in str(failed.value), failed.value
    for part in (cfg.ssd.zone_path("3B") / "b-swap").glob("*.tar"):
        with tarfile.open(part) as tar:
            for m in tar.getmembers():
                assert SECRET.encode() not in tar.extractfile(m).read()
    # put back as it was, the package is made of the stored files
    res = as_user('rm "$1/sub" && mv "$1/sub.orig" "$1/sub"', str(mine))
    assert res.returncode == 0, res.stderr
    ua1._run_step_locked(cfg, "b-swap", "package", then_enqueue=False)
    [part] = (cfg.ssd.zone_path("3B") / "b-swap").glob("*.tar")
    manifest = json.loads((cfg.ssd.zone_path("3B") / "b-swap" / "b-swap.manifest.json").read_text())
    with tarfile.open(part) as tar:
        for f in manifest["files"]:
            assert hashlib.sha256(tar.extractfile(f["path"]).read()).hexdigest() == f["sha256"]


@needs_root
def test_a_link_planted_at_an_outputs_name_takes_no_output_elsewhere(home: Path) -> None:
    """3C is written by a trainer's group too. Every output job starts with `resume` (an
    output renamed into place but not sealed goes back to work): a link planted at `3C/s1` →
    a directory of root's was taken for such an output, renamed to `3C/.tmp/s1`, and
    `hoard stage s1` (root) wrote the staged files through it, then left the link as the
    output. Only the service's own directory is taken back now; a link there is refused in
    one line, nothing written."""
    import grp
    import hashlib
    import shutil

    cfg_path = home / "hoard.toml"
    batch = _gallery(home / "gen")
    shutil.copytree(batch, home / "ssd" / "3A" / batch.name)
    hoard(cfg_path, "ingest", str(home / "ssd" / "3A" / batch.name), "--here")
    zone = home / "ssd" / "3C"
    os.chown(zone, -1, grp.getgrnam("nogroup").gr_gid)
    elsewhere = home / "root-only"
    elsewhere.mkdir()
    nodes = home / "nodes.txt"
    nodes.write_text("".join(hashlib.sha256(p.read_bytes()).hexdigest() + "\n"
                             for p in sorted(batch.iterdir()) if p.suffix == ".png"))
    args = ("stage", "s1", "--layout", "by_sha256", "--nodes", str(nodes))
    hoard(cfg_path, *args)  # requested (queued): the id is known from here on
    res = as_user('ln -s "$1" "$2/s1"', str(elsewhere), str(zone))
    assert res.returncode == 0, res.stderr
    res = hoard(cfg_path, *args, "--here", ok=False)  # the worker's run, or the same command again
    assert list(elsewhere.iterdir()) == []
    assert res.returncode != 0 and "s1" in res.stderr and "link" in res.stderr, res


@needs_root
def test_an_output_signal_in_3c_is_read_never_through_a_link_nor_from_a_fifo(home: Path) -> None:
    """3C is written by a trainer's group too (1770). `hoard health` — and the GUI's refresh,
    every few seconds, as root — lists the outputs of each zone and reads a sealed one's
    `_JOB.json` for its kind, following links and to its end: the trainer (`nobody`) made
    `3C/x/_SEALED` and `3C/x/_JOB.json` a link to a root-only JSON file, and its "kind" was
    shown on the pipelines page and in `hoard health --json`; a fifo there hung `hoard health`
    (and the GUI's refresh) for ever, and a link to /dev/zero would have read until memory ran
    out. The file is now read as 3A's signals are: never through a link, a regular file only,
    at most 64 KB."""
    import grp
    import json
    import subprocess
    import sys

    cfg_path = home / "hoard.toml"
    zone = home / "ssd" / "3C"
    os.chown(zone, -1, grp.getgrnam("nogroup").gr_gid)
    secret = home / "ssd" / "state" / "job-secret.json"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(json.dumps({"kind": SECRET}))
    secret.chmod(0o600)
    res = as_user('mkdir -m 750 "$1/x" "$1/y" && touch "$1/x/_SEALED" "$1/y/_SEALED" && ln -s "$2" "$1/x/_JOB.json" '
                  '&& mkfifo "$1/y/_JOB.json"', str(zone), str(secret))
    assert res.returncode == 0, res.stderr
    try:  # a bound on the hang only: `hoard health` takes seconds
        health = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg_path), "health", "--json"],
                                capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k not in ("HOARD_CONFIG", "PYTEST_CURRENT_TEST")})
    except subprocess.TimeoutExpired:
        pytest.fail("`hoard health` read a fifo the trainer made 3C/y/_JOB.json and never returned")
    assert SECRET not in health.stdout + health.stderr
    shown = {o["id"]: o for o in json.loads(health.stdout)["zones"]["3C"]["outputs"]}
    assert shown["x"]["state"] == shown["y"]["state"] == "sealed", shown  # what it says of itself, kind unknown
    assert shown["x"]["kind"] == shown["y"]["kind"] == "output", shown


@pytest.mark.services  # starts `hoard` processes
def test_an_output_checked_for_its_seal_is_read_never_from_a_fifo(tmp_path: Path) -> None:
    """`seal.check_sealed` (a stage's status, the run pages, `hoard stage` finding its output
    done) read `<id>/_JOB.json` and `_MANIFEST.json` following links, to their end: in 3C, which
    a trainer's group writes, a directory of a cleaned or failed output's id with `_SEALED` and
    a fifo for `_JOB.json` hung the caller for ever. Now refused as incomplete, unread."""
    import subprocess
    import sys

    out = tmp_path / "3C" / "stage-7"
    out.mkdir(parents=True)
    (out / "_SEALED").touch()
    os.mkfifo(out / "_JOB.json")
    (out / "_MANIFEST.json").symlink_to("/dev/zero")
    code = ("import sys\nfrom hoardfs.fsd.outputs import seal\ntry:\n    seal.check_sealed(__import__('pathlib').Path(sys.argv[1]))\n"
            "except seal.OutputIncomplete as e:\n    print(e)\n")
    try:  # a bound on the hang only: the check takes milliseconds
        res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("check_sealed opened the fifo at _JOB.json and never returned")
    assert "stage-7" in res.stdout and "unreadable" in res.stdout, (res.stdout, res.stderr)



def test_a_file_name_with_a_line_separator_is_refused_at_the_screen(tmp_path: Path) -> None:
    """U+2028/U+2029 are refused in file names and escaped in display. U+0085 was
    refused (a C1 control) and the bidi overrides were, but a scraped `a<U+2028>b.png` was
    accepted, stored under that name and printed as two lines by `display`."""
    from hoardfs.adapters.screen import screen
    from hoardfs.base.paths import display

    batch = tmp_path / "b"
    batch.mkdir()
    for name in ("ok.png", "a\u2028b.png", "c\u2029d.png"):
        (batch / name).write_bytes(b"\x89PNG" + os.urandom(64))
    view, rejects = screen(batch)
    assert set(view.files) == {"ok.png"}
    reasons = {p: r.reason for r in rejects for p in r.paths}
    assert set(reasons) == {"a\u2028b.png", "c\u2029d.png"} and "separator" in reasons["a\u2028b.png"], reasons
    assert display("a\u2028b\u2029c") == "a\\u2028b\\u2029c"


def test_get_never_writes_through_a_link_at_its_temporary_name(hoard_home: Path) -> None:
    """`hoard get SHA -o DIR/out` writes `DIR/.out.part`, then renames it. Run as root into a
    directory others write (/tmp), a link planted at `.out.part` had the object written into
    the file it named. The temporary name is now the command's own (`.out.<pid>-<random>.part`,
    hoardfs.base.files.writer_tmp) and made new: the planted link is never written through."""
    import hashlib
    import subprocess
    import sys

    cfg = hoard_home / "hoard.toml"
    env = {k: v for k, v in os.environ.items() if k != "HOARD_CONFIG"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(cfg), *args], capture_output=True,
                              text=True, env=env, timeout=120)

    assert run("init").returncode == 0
    src = hoard_home / "obj.bin"
    src.write_bytes(b"the object " * 100)
    assert run("put", str(src)).returncode == 0
    shared = hoard_home / "shared"
    shared.mkdir()
    victim = hoard_home / "victim"
    victim.write_text(SECRET)
    (shared / ".out.part").symlink_to(victim)
    res = run("get", hashlib.sha256(src.read_bytes()).hexdigest(), "-o", str(shared / "out"))
    assert res.returncode == 0, res.stderr
    assert victim.read_text() == SECRET
    assert (shared / "out").read_bytes() == src.read_bytes() and not (shared / "out").is_symlink()


@needs_root
def test_a_batch_directory_swapped_for_a_link_is_not_scanned(home: Path, pg) -> None:
    """After the batch was signalled (submitted) and before its scan, the scraper replaced its
    batch directory `3A/<batch>` by a link to a root-only directory. The screen walked the
    link's target as the batch (os.walk follows its top), the adapter parsed its documents and
    the store step stored its files as root. The batch directory is now opened without
    following a link, and the scan refuses one in one line, nothing read."""
    import json

    from hoardfs.base import config
    from hoardfs.jobs import ingest as ua1

    cfg = config.load(home / "hoard.toml")
    zone = cfg.ssd.zone_path("3A")
    src = home / "gen" / "b-link"
    src.mkdir(parents=True)
    (src / "p1.png").write_bytes(os.urandom(2000))
    (src / "p1.png.json").write_text(json.dumps({"title": "mine"}))
    private = home / "ssd" / "state" / "private"
    private.mkdir(parents=True)
    (private / "p0.png").write_bytes(os.urandom(3000))
    (private / "p0.png.json").write_text(json.dumps({"title": SECRET}))
    private.chmod(0o700)
    res = as_user('cp -r "$1" "$2/"', str(src), str(zone))
    assert res.returncode == 0, res.stderr
    ua1.submit(cfg, zone / "b-link", "sidecar", queue=False)
    res = as_user('mv "$1/b-link" "$1/b-link.orig" && ln -s "$2" "$1/b-link"', str(zone), str(private))
    assert res.returncode == 0, res.stderr
    with pytest.raises(Exception) as failed:
        ua1._run_step_locked(cfg, "b-link", "scan", then_enqueue=False)
    assert "link" in str(failed.value), failed.value
    assert SECRET not in str(failed.value)
    records = home / "ssd" / "state"
    assert not any(SECRET in p.read_text(errors="replace") for p in records.rglob("*records*") if p.is_file())
    assert sorted(p.name for p in private.iterdir()) == ["p0.png", "p0.png.json"]
