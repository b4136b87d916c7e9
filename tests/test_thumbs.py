"""Thumbnails of untrusted images (fsd/outputs/thumbs.py) in bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services


def test_a_progressive_jpeg_is_judged_by_its_declared_size(tmp_path: Path) -> None:
    """A progressive JPEG is decoded into whole-image buffers whatever draft() scale;
    judged after draft (at 1/8), a 64 MP one passed the 40 MP limit and its decode grew the
    process by hundreds of MB (a 13000 × 13000 one: the GUI from 156 MB to 1.15 GB). Measured
    in a child process: no thumbnail, and little memory — in it and in its decoder process
    (hoardfs.fsd.outputs.thumb_decoder: Python and Pillow take ~40 MB; the decode would take 190 MB)."""
    import io
    import subprocess
    import sys

    from PIL import Image

    from hoardfs.base import config
    from hoardfs.fsd.store import Store
    from tests.helpers import REPO, dir_disks_config

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4)
    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000), (120, 30, 200)).save(buf, "JPEG", progressive=True, quality=50)
    with Store.open(config.load(cfg_path), init=True) as store:
        sha = store.put_bytes(buf.getvalue()).sha256
    child = ("import resource, sys\nfrom hoardfs.base import config\nfrom hoardfs.fsd.outputs import thumbs\n"
             "cfg = config.load(sys.argv[1])\nbefore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "got = thumbs.thumbnail(cfg, sys.argv[2])\nthumbs._DECODER.close()\n"
             "print(got is None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,\n"
             "      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    res = subprocess.run([sys.executable, "-c", child, str(cfg_path), sha], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    none, grew_kb, decoder_kb = res.stdout.split()
    assert none == "True"
    assert int(grew_kb) < 100 * 1024, f"the thumbnail attempt grew the process by {int(grew_kb) // 1024} MB"
    assert 0 < int(decoder_kb) < 120 * 1024, f"the decoder process took {int(decoder_kb) // 1024} MB"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, (120, 30, 200, 255)[:len(mode)]).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.expect_log(r"^no thumbnail of [0-9a-f]{64}: decoding it needs more than 100 MB", level="WARNING")
def test_an_image_that_decodes_past_the_decoders_memory_gets_no_thumbnail(tmp_path: Path, caplog) -> None:
    """A 150 KB PNG of 6000 × 6000 RGBA pixels (36 MP, under MAX_PIXELS) takes 144 MB to decode:
    the decoder process had no memory bound, and a page of such images took the server's
    memory. It has `gui.thumbnail_memory_mb` (RLIMIT_AS): over it the image gets no thumbnail,
    one line names the object, the key and the next step, and the next image gets its thumbnail
    (from the same decoder, its memory given back)."""
    from hoardfs.base import config
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.fsd.store import Store
    from tests.helpers import dir_disks_config

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4)
    with open(cfg_path, "a") as fh:
        fh.write("\n[gui]\nthumbnail_memory_mb = 100\n")
    cfg = config.load(cfg_path)
    bomb = _png((6000, 6000), "RGBA")
    assert len(bomb) < 200_000
    with Store.open(cfg, init=True) as store:
        big, small = (store.put_bytes(b).sha256 for b in (bomb, _png((64, 48))))
    try:
        assert thumbs.thumbnail(cfg, big) is None
        lines = [r.getMessage() for r in caplog.records if r.name == "hoardfs.fsd.outputs.thumbs"]
        assert len(lines) == 1 and "(gui.thumbnail_memory_mb); if the image is genuine, raise " \
            f"gui.thumbnail_memory_mb in hoard.toml and remove {thumbs.path(cfg, big)}" in lines[0], lines
        pid = thumbs._DECODER._proc.pid if thumbs._DECODER._proc else None
        made = thumbs.thumbnail(cfg, small)
        assert made is not None and made.read_bytes()[:3] == b"\xff\xd8\xff"
        assert thumbs._DECODER._proc is not None and thumbs._DECODER._proc.pid == pid
    finally:
        thumbs._DECODER.close()


#: a decoder process killed while it decodes (by the kernel's OOM killer, an operator, a crash)
KILLED = r'''
import os, signal, struct, sys
head = sys.stdin.buffer.read(9)
sys.stdin.buffer.read(struct.unpack(">cQ", head)[1])
os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.mark.expect_log(r"^no thumbnail of [0-9a-f]{64}: the decoder process ended on it .*, 3 times in a row",
                        level="WARNING")
def test_a_thumbnail_lost_to_a_decoder_that_died_is_made_on_the_next_view(tmp_path: Path, caplog) -> None:
    """An image whose decoder process was killed under it (its failure, not the image's) was
    remembered as having no thumbnail for good. It is tried again on its next view and made by
    the next decoder; only an image whose decoder dies PROCESS_TRIES times in a row is
    remembered as none, with one warning naming it and the cache file to remove."""
    import sys

    from hoardfs.base import config
    from hoardfs.fsd.outputs import thumbs
    from hoardfs.fsd.store import Store
    from tests.helpers import dir_disks_config

    cfg = config.load(dir_disks_config(tmp_path, 2, shard_size_mb=4))
    with Store.open(cfg, init=True) as store:
        lost, killer = (store.put_bytes(_png(size)).sha256 for size in ((64, 48), (48, 64)))
    real = thumbs._DECODER.argv
    thumbs._DECODER.close()
    try:
        thumbs._DECODER.argv = [sys.executable, "-c", KILLED]
        assert thumbs.thumbnail(cfg, lost) is None
        assert not thumbs.path(cfg, lost).exists()  # not remembered
        thumbs._DECODER.argv = real
        made = thumbs.thumbnail(cfg, lost)
        assert made is not None and made.read_bytes()[:3] == b"\xff\xd8\xff"
        thumbs._DECODER.close()  # the next one started is the one killed
        thumbs._DECODER.argv = [sys.executable, "-c", KILLED]
        for _ in range(thumbs.PROCESS_TRIES):
            assert thumbs.thumbnail(cfg, killer) is None
        assert thumbs.path(cfg, killer).read_bytes() == thumbs.NONE
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and str(thumbs.path(cfg, killer)) in warned[0], warned
    finally:
        thumbs._DECODER.argv = real
        thumbs._DECODER.close()
