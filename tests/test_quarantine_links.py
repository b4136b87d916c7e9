"""Quarantine in a zone 3A that the scraper account can write.

`quarantine()` made `3A/_quarantine/<batch>` and renamed rejects into it without looking at
what it was: a symbolic link there to the GUI's state let a rejected `users.json` replace the
GUI's accounts. Every directory on the way is now opened without following links, and one
under `_quarantine` that is a link or another user's is refused — nothing is moved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hoardfs.adapters.base import Reject
from hoardfs.adapters.screen import quarantine
from hoardfs.base.errors import HoardError


def _zone(tmp_path: Path) -> tuple[Path, Path]:
    zone = tmp_path / "3A"
    batch = zone / "b1"
    (batch / "sub").mkdir(parents=True)
    (batch / "users.json").write_text('{"admin": "the scraper"}')
    (batch / "sub" / "f.txt").write_text("bad")
    secret = tmp_path / "state" / "gui"
    secret.mkdir(parents=True)
    (secret / "users.json").write_text('{"admin": "the real one"}')
    return zone, secret


def test_rejects_are_moved_with_their_reasons(tmp_path: Path) -> None:
    zone, _ = _zone(tmp_path)
    q = quarantine(zone, "b1", [Reject(["users.json"], "not a format"), Reject(["sub/f.txt"], "empty")])
    assert (q / "users.json").is_file() and (q / "sub" / "f.txt").is_file()
    assert not (zone / "b1" / "users.json").exists()
    assert "users.json\tnot a format" in (q / "_REASONS.txt").read_text()
    quarantine(zone, "b1", [Reject(["users.json"], "not a format")])  # again: nothing to move, no error


@pytest.mark.parametrize("where", ["_quarantine", "_quarantine/b1"])
def test_a_link_on_the_way_is_refused(tmp_path: Path, where: str) -> None:
    zone, secret = _zone(tmp_path)
    link = zone / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret if where.endswith("b1") else secret.parent)
    if not where.endswith("b1"):
        (secret.parent / "b1").symlink_to(secret)
    with pytest.raises(HoardError) as e:
        quarantine(zone, "b1", [Reject(["users.json"], "not a format")])
    assert "symbolic link" in e.value.message and "nothing was moved" in e.value.message
    assert (secret / "users.json").read_text() == '{"admin": "the real one"}'  # the old code replaced it
    assert (zone / "b1" / "users.json").is_file()


def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    zone, _ = _zone(tmp_path)
    (zone / "_quarantine" / "b1").mkdir(parents=True)
    os.chown(zone / "_quarantine" / "b1", 65534, 65534)  # the scraper's (nobody here)
    with pytest.raises(HoardError) as e:
        quarantine(zone, "b1", [Reject(["users.json"], "not a format")])
    assert "belongs to uid 65534" in e.value.message
    assert (zone / "b1" / "users.json").is_file()


def test_a_source_directory_swapped_for_a_link_moves_nothing_outside(tmp_path: Path) -> None:
    zone, _ = _zone(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("someone else's")
    for f in (zone / "b1" / "sub").iterdir():
        f.unlink()
    (zone / "b1" / "sub").rmdir()
    (zone / "b1" / "sub").symlink_to(outside)  # after the scan
    with pytest.raises(HoardError):
        quarantine(zone, "b1", [Reject(["sub/f.txt"], "empty")])
    assert (outside / "f.txt").read_text() == "someone else's"
