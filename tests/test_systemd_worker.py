"""systemd/hoard-worker@.service: the default instance (`all`) serves every queue, new ones
included (`hoard worker` without --queues); another instance name is a queue list, joined by
':' (a unit name cannot hold a comma)."""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "hoard-worker@.service"


def _exec(instance: str) -> list[str]:
    """What the unit's ExecStart runs for an instance, with `hoard` replaced by echo."""
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string(UNIT.read_text())
    argv = shlex.split(unit["Service"]["ExecStart"].replace("%I", instance).replace("%%", "%"))
    argv = [a.replace("/opt/hoardfs/venv/bin/hoard", "echo") for a in argv]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.split()


@pytest.mark.services  # starts a shell
def test_default_worker_unit_serves_every_queue() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string(UNIT.read_text())
    assert unit["Install"]["DefaultInstance"] == "all"
    assert _exec("all") == ["worker"]  # no --queues: every queue, actions included
    assert _exec("ingest:io") == ["worker", "--queues", "ingest,io"]  # a unit name holds no comma
    assert _exec("ingest,io") == ["worker", "--queues", "ingest,io"]  # %I: systemd-escape's ingest\x2cio
