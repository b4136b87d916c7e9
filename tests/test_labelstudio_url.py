"""`[label_studio] url` that does not parse — a port that is no number or out of range, a
broken IPv6 host — is refused when hoard.toml is read, in one line naming the key, never a
traceback from the commands that read its port (`hoard labelstudio`, AC5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize("url", ["http://localhost:notaport", "http://127.0.0.1:99999", "http://[::1"])
def test_a_label_studio_url_that_does_not_parse_is_one_line(hoard_home: Path, url: str) -> None:
    """`hoard labelstudio status` and `down` with such a url: exit 2, one line naming
    label_studio.url and how to write it."""
    toml = hoard_home / "hoard.toml"
    text = toml.read_text()
    assert "[label_studio]" not in text
    toml.write_text(text + f'\n[label_studio]\nurl = "{url}"\n')
    for cmd in (["labelstudio", "status"], ["labelstudio", "down"]):
        res = subprocess.run([sys.executable, "-m", "hoardfs", "--config", str(toml), *cmd], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1, lines
        assert "label_studio.url" in lines[0] and "http://HOST:PORT" in lines[0] and "Traceback" not in lines[0]
