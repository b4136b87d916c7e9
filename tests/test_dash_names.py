"""A path component starting with `-` is refused wherever a name enters hoardfs (`hostile_reason`):
an HTTP upload's file, a worker's output, a dataset's name and the class names it lays out.
(The ingest of a scraped batch: tests/test_ingest_unstorable.py.)"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from hoardfs.base.paths import hostile_reason
from hoardfs.datasets.formats.base import PlacementError, check_name
from hoardfs.datasets.spec import DatasetError, parse_text
from tests.http_ingest import Server, multipart, server  # noqa: F401 - fixtures
from tests.test_action_parse import THUMBS, make, problem, put

DASH = "starts with `-`"


@pytest.mark.parametrize("rel", ["-x", "--checkpoint-action=exec=sh x.sh", "a/-rf", "a/-/b", "-d/x.png"])
def test_a_part_starting_with_a_dash_is_hostile(rel: str) -> None:
    """Every place a component may start: the first, a middle one, the last, a lone `-`."""
    assert DASH in (hostile_reason(rel) or ""), rel


@pytest.mark.parametrize("rel", ["a-b/c-d.png", "x/a-", "x.-y", "\u2010x", "\u2212x"])
def test_a_dash_inside_a_name_or_another_character_passes(rel: str) -> None:
    """A dash after the first character, and the Unicode dashes (no option parser reads them), pass."""
    assert hostile_reason(rel) is None, rel


def test_an_upload_part_named_with_a_leading_dash_is_400(server: Server) -> None:  # fixture
    """`POST /api/v1/batches` with a file part named `-x` is 400 naming the part; nothing is kept."""
    before = server.batches()
    headers, body = multipart([("source", None, b"sidecar"), ("files", b"ok.png", b"fine"),
                               ("files", b"-x", b"payload")])
    r = httpx.post(f"{server.url}/api/v1/batches", headers=server.auth() | headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["part"] == 3 and r.json()["error"].startswith("part 3: file name") and DASH in r.json()["error"]
    assert server.batches() == before


def test_a_worker_output_named_rf_is_refused(tmp_path: Path) -> None:
    """A worker that writes `thumbs/-rf` beside its thumbnails: the output is refused in one line
    naming the file, nothing of it taken."""
    root = put(tmp_path / "out", {"thumbs/cat_1.jpg": "c"})
    (root / "thumbs" / "-rf").write_text("x")
    problem(make(THUMBS), root, f"{root}/thumbs/-rf: ", DASH)


def test_a_dataset_or_class_named_with_a_leading_dash_is_refused() -> None:
    """A dataset named `-x` is refused by its spec; a class `-rf`, which would be a directory of
    the dataset, is refused naming it and how to go on."""
    with pytest.raises(DatasetError, match=r"name: .*starting with a letter or digit"):
        parse_text('name = "-x"\nlayout = "imagefolder"\n')
    with pytest.raises(PlacementError, match=rf"class is '-rf': .*{DASH}.*; rename it"):
        check_name("-rf", "class")
