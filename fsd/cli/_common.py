"""What every `hoard` command shares: the lazily loaded config and the consoles."""

from __future__ import annotations

from dataclasses import dataclass, field

import typer
from rich.console import Console

from fsd import config as _config
from fsd.config import Settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def gb(n: int | None) -> str:
    """Bytes as the GB of hoard.toml (capacity_gb, quota_gb are GiB), '-' when unknown."""
    return "-" if n is None else f"{n / 1024**3:.2f} GB"


@dataclass
class State:
    config_path: str | None = None
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = _config.load(self.config_path)
        return self._settings


def state(ctx: typer.Context) -> State:
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj
