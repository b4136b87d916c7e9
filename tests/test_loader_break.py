"""The training loader (hoardfs.loader) against what breaks it: a rotten manifest replica read
around without writing the store, a sample no source places and nothing withholds, manifests
whose lines do not hold one sha256 each — real stores built as tests/test_loader.py builds them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hoardfs.datasets import card
from hoardfs.fsd.store import Store
from hoardfs.loader import Loader, LoaderError
from tests.helpers import flip_byte
from tests.test_datasets import _hoard
from tests.test_loader import SMALL, built, without_index  # noqa: F401  # (built: a fixture)
from tests.test_mount import mounted


@pytest.mark.expect_log(r"loader: manifest .* unreadable on shard .*: (payload checksum mismatch|bytes .* do not "
                        r"match what was read of it) .*; trying another replica", level="WARNING")
@pytest.mark.parametrize("start", ["loader index", "manifest read whole"])
def test_a_rotten_manifest_replica_is_read_around_and_the_store_not_written(built, start: str) -> None:
    """A manifest replica that does not check — flipped before the loader's start (the manifest
    read whole then, or its lines read into the page cache) and, in each replica, a line
    flipped after it (read back as its sample is handed out) — is read around and logged: no
    repair queued, no event recorded in the store's index, a loader writes nothing of the
    store, as for a rotten record."""
    cfg, _ = built
    if start != "loader index":
        without_index(cfg)
    want = [{k: v for k, v in s.items() if k != "bytes"} for s in Loader("pets@1", "train", 7, 0,
                                                                         config_path=cfg.source, **SMALL)]
    sha = bytes.fromhex(Loader("pets@1", "train", config_path=cfg.source).manifest_sha)
    with Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(sha)
        meta = store.index.get_shard(loc.shard_id)
        paths = [d.find(meta.hex) for d in store.replica_order(meta)]
        manifest = store.get(sha.hex())
        before = (store.index.pending_repairs(), store.index.events_since("read_error", 0))
    assert len(paths) >= 2
    flip_byte(paths[0], loc.offset + 100)  # (whichever replica the start reads first: the other then)
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    flip_byte(paths[0], loc.offset + 100)
    for k in (0, len(want) - 1):  # (in both replicas: whichever the loader reads first)
        flip_byte(paths[k % 2], loc.offset + manifest.index(b'"key":"' + want[k]["key"].encode()) + 8)
    assert [{k: v for k, v in s.items() if k != "bytes"} for s in ld] == want
    with Store.open(cfg, writable=False) as store:
        assert (store.index.pending_repairs(), store.index.events_since("read_error", 0)) == before == ([], [])


def test_a_sample_its_locator_places_nowhere_is_one_line_not_lost(built, fuse, tmp_path: Path) -> None:
    """A locator that neither places nor withholds one of the version's samples (a locator
    written by other hands): the loader through the mount stops in one line naming the sample
    and the next step — never an epoch that silently leaves a live sample out."""
    cfg, _ = built
    locators, mnt, host = tmp_path / "locators", tmp_path / "mnt", tmp_path / "host" / "hoard.toml"
    locators.mkdir()
    res = _hoard(cfg, "dataset", "publish", "pets@1", "--json", "--dir", str(locators))
    assert res.returncode == 0, res.stdout + res.stderr
    host.parent.mkdir()
    host.write_text(f'[loader]\nsource = "mount"\nmount = "{mnt}"\nlocators = "{locators}"\n')
    whole = [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)]
    with mounted(str(cfg.source), mnt):
        assert [s["key"] for s in Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)] == whole
        doc = json.loads((locators / "pets@1.json").read_text())
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        victim = next(s for s in ld.samples if s.key == whole[len(whole) // 2])
        del doc["objects"][victim.sha256]
        (locators / "pets@1.json").write_text(json.dumps(doc))
        ld = Loader("pets@1", "train", 7, 0, config_path=host, **SMALL)
        with pytest.raises(LoaderError, match=rf"1 samples of pets@1, e.g. {victim.key} .* are placed nowhere by its "
                                              r"locator and not withheld: publish it again") as e:
            list(ld)
        assert "\n" not in str(e.value)


def test_a_manifest_line_that_is_no_samples_is_one_line_mid_epoch(built) -> None:
    """A manifest whose lines are checked at the start by their sha256 and split alone (a
    remote host's: the bucket's writer made it), one of them lacking its key: the epoch stops
    at that sample with one LoaderError naming the manifest — not a KeyError's traceback."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        manifest = store.get(ld.manifest_sha)
    lines = manifest.split(b"\n")
    k = next(n for n, line in enumerate(lines) if b'"split":"train"' in line and n > len(lines) // 3)
    at = lines[k].index(b'"key":"')
    lines[k] = lines[k][:at] + lines[k][lines[k].index(b'"', at + 7) + 2:]  # ("key":"…", left out)
    ld.samples = card.Samples.of_manifest(b"\n".join(lines)).of_split("train")
    assert ld.samples.shas() == list(ld.shas)
    with pytest.raises(LoaderError, match=rf"the manifest of pets@1 \({ld.manifest_sha[:16]}…\) is not a dataset "
                                          r"manifest \(KeyError: 'key'\): build the version again") as e:
        list(ld)
    assert "\n" not in str(e.value)


def _held(shard_hex: str) -> list[str]:
    """The files of shard `shard_hex` this process holds open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if shard_hex in target:
                out.append(target)
    return out


def test_a_manifest_replica_file_retired_mid_epoch_is_let_go(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's replica file a loader reads its lines off (kept open) is retired mid-epoch
    (gc deletes a shard file it moved): the epoch goes on with every sample's own fields, read off
    another replica, and the loader lets the retired file go — its disk space is not held for the
    life of the training process."""
    from hoardfs.datasets import loader as loader_mod

    monkeypatch.setattr(loader_mod, "LOOK_LINKS", 1)  # (looked for at every line: the version is small)
    cfg, _ = built
    want = [{k: v for k, v in s.items() if k != "bytes"} for s in Loader("pets@1", "train", 7, 0,
                                                                         config_path=cfg.source, **SMALL)]
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(bytes.fromhex(ld.manifest_sha))
        shard_hex = store.index.get_shard(loc.shard_id).hex
    it = iter(ld)
    got = [{k: v for k, v in next(it).items() if k != "bytes"} for _ in range(3)]
    held = _held(shard_hex)
    assert len(set(held)) == 1 and os.path.exists(held[0])
    os.unlink(held[0])
    got += [{k: v for k, v in s.items() if k != "bytes"} for s in it]
    assert got == want
    assert not [f for f in _held(shard_hex) if f.endswith("(deleted)")]


def test_close_lets_go_of_the_manifest_file(built) -> None:
    """`Loader.close()` closes the descriptor its manifest's lines are read through; the loader
    iterated again reads them anew, every sample with its own fields."""
    cfg, _ = built
    ld = Loader("pets@1", "train", 7, 0, config_path=cfg.source, **SMALL)
    with Store.open(cfg, writable=False) as store:
        shard_hex = store.index.get_shard(store.index.lookup(bytes.fromhex(ld.manifest_sha)).shard_id).hex
    first = [{k: v for k, v in s.items() if k != "bytes"} for s in ld]
    assert _held(shard_hex)
    ld.close()
    assert not _held(shard_hex)
    ld.epoch = 0
    assert [{k: v for k, v in s.items() if k != "bytes"} for s in ld] == first


@pytest.mark.expect_log(r"loader: manifest .* (not read striped \(payload checksum mismatch .*\); reading it off one "
                        r"replica after another|unreadable on shard .*; trying another replica)", level="WARNING")
def test_a_manifest_read_striped_is_the_same_and_reads_around_rot(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest read a piece off each replica at once (`_striped_manifest`; its floor and
    piece made small: the test's version is small) gives every sample the fields one read
    replica after replica gives; a bit flipped in one replica's copy is logged and the manifest
    read off one replica after another — the same fields, and nothing written of the store."""
    from hoardfs.datasets import loader as loader_mod

    cfg, _ = built
    without_index(cfg)  # (a version's loader index is read whole, its manifest read back a line at a time)

    def fields() -> list[dict]:
        return [{k: v for k, v in s.items() if k != "bytes"} for s in Loader("pets@1", "train", 7, 0,
                                                                            config_path=cfg.source, **SMALL)]

    want = fields()
    monkeypatch.setattr(loader_mod, "STRIPE_MIN", 0)
    monkeypatch.setattr(loader_mod, "STRIPE_PIECE", 777)
    assert fields() == want
    sha = bytes.fromhex(Loader("pets@1", "train", config_path=cfg.source).manifest_sha)
    with Store.open(cfg, writable=False) as store:
        loc = store.index.lookup(sha)
        meta = store.index.get_shard(loc.shard_id)
        paths = [d.find(meta.hex) for d in store.replica_order(meta)]
        before = (store.index.pending_repairs(), store.index.events_since("read_error", 0))
    assert len(paths) >= 2 and loc.length > 3 * 777
    for start in range(0, loc.length, 777):  # (every piece in the second replica: whichever it is given)
        flip_byte(paths[1], loc.offset + start + 5)
    assert fields() == want
    with Store.open(cfg, writable=False) as store:
        assert (store.index.pending_repairs(), store.index.events_since("read_error", 0)) == before == ([], [])


#: a script's head: every read of the manifest into the page cache (`_ManifestLines.warm`) slowed
#: to `SLOW` seconds a piece of 333 bytes (a slow disk, and many pieces of the test's manifest)
SLOW_WARM = """
import os, sys, threading, time
_preadv = os.preadv
def slow(fd, bufs, off, *a):
    if threading.current_thread().name.startswith("loader-manifest"):
        time.sleep(float(os.environ["SLOW"]))
    return _preadv(fd, bufs, off, *a)
os.preadv = slow
from hoardfs.datasets import loader as loader_mod
loader_mod.STRIPE_PIECE = 333
from hoardfs.loader import Loader, LoaderError
CFG = sys.argv[1]
def held():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if ".shard" in os.readlink(f"/proc/self/fd/{fd}"):
                out.append(int(fd))
        except OSError:
            pass
    return sorted(out)
"""


def _slow_script(cfg, body: str, slow: float) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-c", SLOW_WARM + textwrap.dedent(body), str(cfg.source)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "SLOW": str(slow)})
    return res, time.monotonic() - t


def test_a_script_exits_at_once_whatever_its_manifests_read_into_the_page_cache(built) -> None:
    """A loader made and dropped, and one refused (no such split), while its manifest is still
    being read into the page cache off a slow disk: the script exits at once — the readers stop
    at their next piece and the interpreter's exit does not wait for them (it waited for the
    whole manifest: over a minute here)."""
    cfg, _ = built
    res, took = _slow_script(cfg, """
        ld = Loader("pets@1", "train", 7, 0, config_path=CFG)
        assert ld.from_index
        del ld
        try:
            Loader("pets@1", "nosuch", 7, 0, config_path=CFG)
        except LoaderError as e:
            print("refused:", e, flush=True)
    """, 2.0)
    assert res.returncode == 0 and "refused: dataset pets@1 has no split 'nosuch'" in res.stdout, res.stderr
    assert took < 30, took


def test_a_process_forked_while_the_manifest_is_read_holds_none_of_its_readers_files(built) -> None:
    """A process forked (a DataLoader's worker) while the manifest is read into the page cache:
    it reads every sample's fields, and once its loader is closed holds none of the shard files
    its parent's readers had open (its copies of those readers do not run: it closes their
    descriptors itself) — a file gc retires is not kept from freeing its space."""
    cfg, _ = built
    res, _took = _slow_script(cfg, """
        before = held()
        ld = Loader("pets@1", "train", 7, 0, config_path=CFG)
        pid = os.fork()
        if pid == 0:
            n = len([s["key"] for s in ld])
            ld.close()
            print("child", n, held() == before, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        n = len([s["key"] for s in ld])
        ld.close()
        print("parent", n, flush=True)
    """, 0.2)
    assert res.returncode == 0, res.stderr
    child = next(line for line in res.stdout.splitlines() if line.startswith("child")).split()
    parent = next(line for line in res.stdout.splitlines() if line.startswith("parent")).split()
    assert child[1] == parent[1] != "0" and child[2] == "True", res.stdout


@pytest.mark.parametrize("then", ["closed", "dropped"])
def test_a_process_forked_after_its_loader_went_holds_none_of_the_readers_files(built, then: str) -> None:
    """A loader closed, or dropped and collected, while its manifest's readers are still on a
    slow piece, then a fork (a DataLoader starting its workers): the child holds none of the
    files those readers had open — they are found whatever became of their loader."""
    cfg, _ = built
    res, _took = _slow_script(cfg, f"""
        import gc
        before = held()
        ld = Loader("pets@1", "train", 7, 0, config_path=CFG)
        if {then!r} == "closed":
            ld.close()
        else:
            del ld
            gc.collect()
        pid = os.fork()
        if pid == 0:
            print("child", held() == before, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """, 3.0)
    assert res.returncode == 0 and "child True" in res.stdout, res.stdout + res.stderr


def test_a_ctrl_c_while_the_first_sample_waits_for_the_manifest_is_raised_at_once(built) -> None:
    """Ctrl-C while the first sample waits for its manifest's reads into the page cache (a disk
    that takes minutes a read): the KeyboardInterrupt comes at once, not after the read."""
    cfg, _ = built
    res, _took = _slow_script(cfg, """
        import signal
        ld = Loader("pets@1", "train", 7, 0, config_path=CFG)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t = time.monotonic()
        try:
            for _ in ld:
                pass
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - t, 1), flush=True)
    """, 120.0)
    assert "interrupted after" in res.stdout, res.stdout + res.stderr
    assert float(res.stdout.split("interrupted after")[1].split()[0]) < 30, res.stdout
