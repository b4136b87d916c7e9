"""Thumbnails of untrusted images (fsd/outputs/thumbs.py) in bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest

# tier: the module's tests start hoard processes, servers or a FUSE mount
pytestmark = pytest.mark.services


def test_a_progressive_jpeg_is_judged_by_its_declared_size(tmp_path: Path) -> None:
    """W3-X 12: a progressive JPEG is decoded into whole-image buffers whatever draft() scale;
    judged after draft (at 1/8), a 64 MP one passed the 40 MP limit and its decode grew the
    process by hundreds of MB (a 13000 × 13000 one: the GUI from 156 MB to 1.15 GB). Measured
    in a child process: no thumbnail, and little memory — in it and in its decoder process
    (fsd.outputs.thumb_decoder: Python and Pillow take ~40 MB; the decode would take 190 MB)."""
    import io
    import subprocess
    import sys

    from PIL import Image

    from fsd.base import config
    from fsd.store import Store
    from tests.helpers import REPO, dir_disks_config

    cfg_path = dir_disks_config(tmp_path, 2, shard_size_mb=4)
    buf = io.BytesIO()
    Image.new("RGB", (8000, 8000), (120, 30, 200)).save(buf, "JPEG", progressive=True, quality=50)
    with Store.open(config.load(cfg_path), init=True) as store:
        sha = store.put_bytes(buf.getvalue()).sha256
    child = ("import resource, sys\nfrom fsd.base import config\nfrom fsd.outputs import thumbs\n"
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
