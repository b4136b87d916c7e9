"""The GUI as NiceGUI's `user` fixture runs it (pyproject: main_file): built for the config
in $HOARD_CONFIG, which the test's fixture writes (real test PostgreSQL and Redis)."""

import os

from nicegui import ui

from hoardfs.base import config
from hoardfs.gui.app import build

build(config.load(os.environ["HOARD_CONFIG"]))
ui.run(storage_secret="test secret", reload=False, show=False)
