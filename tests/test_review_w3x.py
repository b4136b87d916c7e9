"""The adversarial review of W3-X (issue 41): each hole found, reproduced as the attacker
would — a scraper account that writes 3A (`nobody` in 3A's group, by setpriv), the real
`hoard` CLI as root — and what must hold now."""

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
def test_a_link_planted_at_a_temporary_name_is_not_written_through(home: Path) -> None:
    """Every file hoardfs rewrites goes tmp → rename through `.<name>.tmp` beside it, opened
    O_CREAT|O_TRUNC, following links. In the scraper's own batch directory the ingest (root)
    writes `_REASON.txt` when it sets a refused `_READY` aside: the scraper planted
    `._REASON.txt.tmp` → a root-only file, and `hoard ingest --ready` truncated that file,
    wrote the reason into it and made it 0640. A leftover at the temporary name is now removed,
    never followed, and the file made new (O_EXCL)."""
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
