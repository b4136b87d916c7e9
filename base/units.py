"""Bytes as every command, the GUI, the mount's `.hoard/health` and every refusal show them:
binary units, named as such (KiB, MiB, GiB, TiB). hoard.toml's `capacity_gb`, `quota_gb`
and `batch_size_gb` are GiB too (the keys keep their names: they are contracts), so a disk
of `capacity_gb = 4` shows as "4.00 GiB" everywhere.
"""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def fmt_bytes(n: float | None) -> str:
    """'1.50 GiB', '12.3 MiB', '512 KiB', '10 B'; '-' when unknown."""
    if n is None:
        return "-"
    for unit, f, places in (("TiB", TiB, 2), ("GiB", GiB, 2), ("MiB", MiB, 1), ("KiB", KiB, 0)):
        if abs(n) >= f:
            return f"{n / f:.{places}f} {unit}"
    return f"{int(n)} B"
