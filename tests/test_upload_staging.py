"""An HTTP upload's own directory under 3A/.tmp (hoardfs.jobs.ingest.upload), in-process on real files:
everything of it is made and reached from descriptors held from `begin` — a link planted inside
it, or the directory swapped for another, never leads a file anywhere; what it holds of 3A
grows with what arrives, and one token's uploads are capped (docs/http-ingest.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hoardfs.base import config
from hoardfs.fsd.outputs import zones
from hoardfs.jobs.ingest.upload import AHEAD_MIN, BLOCK, Upload, UploadError
from tests.test_zones import zone_config

MiB = 1 << 20


@pytest.fixture
def cfg(tmp_path: Path) -> config.Settings:
    """Four 10 MiB zones (no servers: an upload up to its `finish` needs none)."""
    return zone_config(tmp_path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory of the service's that no upload may write into."""
    path = tmp_path / "state-actions"
    path.mkdir()
    return path


@pytest.fixture
def upload(cfg: config.Settings) -> Iterator[Upload]:
    """An upload begun (its directory made, a little of 3A held) and aborted after the test."""
    up = Upload.begin(cfg, 64 << 10, "scraper")
    try:
        yield up
    finally:
        up.abort()


@pytest.mark.expect_log(r"a symbolic link at sub in its own directory; not followed", level="WARNING")
def test_a_link_planted_in_an_uploads_directory_is_never_followed(upload: Upload, victim: Path) -> None:
    """A link `sub -> <dir>` found in the upload's own directory (3A/.tmp is the service's: only
    something else running as the service puts one there) is not followed by the part
    `sub/x`: 503 naming the link, nothing written in <dir>; abort removes the link, not <dir>'s
    files."""
    (victim / "kept").write_bytes(b"the service's own file")
    (upload.dir / "sub").symlink_to(victim)
    with pytest.raises(UploadError) as e:
        upload.open_file(2, "sub/x")
    assert e.value.status == 503 and e.value.part == 2, e.value.message
    assert "symbolic link 'sub'" in e.value.message and str(upload.dir) in e.value.message
    assert "\n" not in e.value.message
    assert sorted(p.name for p in victim.iterdir()) == ["kept"]
    upload.abort()
    assert not upload.dir.exists() and (victim / "kept").read_bytes() == b"the service's own file"


@pytest.mark.expect_log(r"is no longer the directory it made; nothing put in 3A", level="WARNING")
def test_an_uploads_directory_swapped_mid_upload_is_not_put_in_3a(cfg: config.Settings, upload: Upload,
                                                                   victim: Path) -> None:
    """The upload's directory renamed away and another put at its name holding `sub -> <dir>`
    between two parts: the next part is still written into the upload's own directory (held,
    whatever its name), never through the link; `finish` sees the name is not that directory
    any more and puts nothing in 3A (503); abort empties the directory it made."""
    upload.open_file(1, "a.png")
    upload.write(b"png bytes")
    upload.close_file()
    moved = upload.dir.with_name(upload.dir.name + ".moved")
    os.rename(upload.dir, moved)
    upload.dir.mkdir()
    (upload.dir / "sub").symlink_to(victim)
    upload.open_file(2, "sub/x")
    upload.write(b"#!/bin/sh\n")
    upload.close_file()
    assert list(victim.iterdir()) == [] and (moved / "sub" / "x").read_bytes() == b"#!/bin/sh\n"
    with pytest.raises(UploadError) as e:
        upload.finish("sidecar", "swapped-1")
    assert e.value.status == 503 and "no longer the directory this upload made" in e.value.message
    assert not (cfg.ssd.zone_path("3A") / "swapped-1").exists()
    upload.abort()
    assert list(moved.iterdir()) == [] and list(victim.iterdir()) == []
    assert (upload.dir / "sub").is_symlink()  # (not the upload's: left where it is, never followed)


def test_an_upload_holds_what_has_arrived_not_what_it_declares(tmp_path: Path) -> None:
    """An upload declaring 80 MiB of a 102 MiB zone (deny at 92) holds a step ahead of what has
    arrived, not the 80 MiB: another token's upload of 40 MiB is taken beside it (not 507); the
    held room grows with the bytes, up to the declared size, and is released at the end."""
    zone_config(tmp_path)
    text = (tmp_path / "hoard.toml").read_text()
    (tmp_path / "hoard.toml").write_text(text.replace("[ssd.zones.3A]\nquota_gb = 0.01", "[ssd.zones.3A]\nquota_gb = 0.1"))
    cfg = config.load(tmp_path / "hoard.toml")
    slow = Upload.begin(cfg, 80 * MiB, "slow")
    try:
        [held] = zones.reservations(cfg, "3A")
        assert held.bytes == BLOCK + AHEAD_MIN < 80 * MiB
        other = Upload.begin(cfg, 40 * MiB, "other")
        other.abort()
        slow.open_file(1, "a.bin")
        for _ in range(20):
            slow.write(b"x" * MiB)
        assert slow.res is not None and 20 * MiB < slow.res.bytes <= 80 * MiB
        [held] = zones.reservations(cfg, "3A")  # (what it adds to 3A's usage: held, not written yet)
        assert held.bytes == slow.res.bytes and 0 < held.outstanding <= AHEAD_MIN
    finally:
        slow.abort()
    assert zones.reservations(cfg, "3A") == []


def test_one_token_is_capped_in_uploads_and_declared_bytes(tmp_path: Path) -> None:
    """api.max_uploads_per_token refuses a token's next upload while that many are under way,
    api.max_reserved_mb_per_token one whose size would take its uploads past it (429, one
    line naming the key); another token is not held back, and an ended upload frees its place."""
    cfg = zone_config(tmp_path)
    text = (tmp_path / "hoard.toml").read_text()
    (tmp_path / "hoard.toml").write_text(text + "\n[api]\nmax_batch_mb = 3\nmax_uploads_per_token = 2\n"
                                         "max_reserved_mb_per_token = 4\n")
    cfg = config.load(tmp_path / "hoard.toml")
    first, second = Upload.begin(cfg, 1 * MiB, "a"), Upload.begin(cfg, 2 * MiB, "a")
    try:
        with pytest.raises(UploadError) as e:
            Upload.begin(cfg, 1024, "a")
        assert e.value.status == 429 and "api.max_uploads_per_token = 2" in e.value.message
        second.abort()
        with pytest.raises(UploadError) as e:
            Upload.begin(cfg, 3 * MiB + 1, "a")
        assert e.value.status == 429 and "api.max_reserved_mb_per_token = 4 MiB" in e.value.message
        assert "\n" not in e.value.message
        Upload.begin(cfg, 3 * MiB, "b").abort()  # another token: its own caps
        Upload.begin(cfg, 3 * MiB, "a").abort()  # 1 + 3 MiB: within the cap
    finally:
        first.abort()
        second.abort()
    assert zones.reservations(cfg, "3A") == []


def test_a_per_token_cap_below_one_upload_is_refused_in_one_line(tmp_path: Path) -> None:
    """api.max_reserved_mb_per_token below api.max_batch_mb would refuse every upload of the
    largest size allowed: the configuration is refused, naming both keys."""
    zone_config(tmp_path)
    text = (tmp_path / "hoard.toml").read_text()
    (tmp_path / "hoard.toml").write_text(text + "\n[api]\nmax_batch_mb = 100\nmax_reserved_mb_per_token = 50\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(tmp_path / "hoard.toml")
    assert "max_reserved_mb_per_token = 50 is less than max_batch_mb = 100" in str(e.value)
    assert "\n" not in str(e.value)
