"""`hoard mount`: the store as a read-only FUSE file system (pyfuse3 + trio).

    run_mount(cfg, mountpoint)   # blocks until unmounted or SIGTERM/SIGINT

See `namespace` (the tree), `reader` (verified reads on per-disk threads), `ops` (the FUSE
operations) and docs/mount.md.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from fsd.config import Settings
from fsd.errors import ExitCode, HoardError

__all__ = ["run_mount"]

log = logging.getLogger(__name__)


def run_mount(cfg: Settings, mountpoint: Path, debug: bool = False, ready=None) -> None:
    import pyfuse3
    import trio

    from fsd.mount.namespace import Namespace
    from fsd.mount.ops import HoardOps
    from fsd.mount.reader import Reader
    from fsd.store import Store

    mountpoint = Path(mountpoint).resolve()
    if not mountpoint.is_dir():
        raise HoardError(f"mount point {mountpoint} is not a directory; `mkdir -p {mountpoint}` first",
                         ExitCode.USAGE)
    if os.path.ismount(mountpoint):
        raise HoardError(f"{mountpoint} is already a mount point; `hoard umount {mountpoint}` first",
                         ExitCode.USAGE)
    if not os.path.exists("/dev/fuse"):
        raise HoardError("/dev/fuse is missing: load the fuse module (`modprobe fuse`)", ExitCode.UNAVAILABLE)
    # the `readers` lock: `hoard index rebuild`/`restore` refuse while the mount serves the index
    store = Store.open(cfg, writable=False, lock="readers", what=f"hoard mount {mountpoint}")
    reader = Reader(store)
    ns = Namespace(store.index, str(cfg.ssd.zone_path("3A")), _health_text(store),
                   lambda sha_hex: json.loads(store.get(sha_hex)))
    ops = HoardOps(ns, reader)
    options = set(pyfuse3.default_options) | {"fsname=hoardfs", "subtype=hoard", "ro"}
    if os.geteuid() == 0:
        options.add("allow_other")
    if debug:
        options.add("debug")
    pyfuse3.init(ops, str(mountpoint), options)
    log.info("mounted %s at %s", cfg.source or "hoardfs", mountpoint)
    if ready is not None:
        ready()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        reader.close()
        store.close()
        log.info("unmounted %s", mountpoint)


async def _stop_on_signal(nursery) -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return


def _health_text(store, ttl: float = 10.0):
    """`.hoard/health`: a few lines about the store, regenerated at most every `ttl` seconds."""
    cache: dict[str, object] = {"at": 0.0, "text": b""}
    lock = threading.Lock()

    def text() -> bytes:
        with lock:
            if time.monotonic() - cache["at"] > ttl:
                cache["text"], cache["at"] = _render(store), time.monotonic()
            return cache["text"]  # type: ignore[return-value]

    return text


def _render(store) -> bytes:
    try:
        st = store.status()
    except Exception as e:  # noqa: BLE001 - the health file must always answer
        return f"status unavailable: {e}\n".encode()
    lines = [f"objects: {st['objects']}"]
    for d in st["disks"]:
        lines.append(f"disk {d['label']}: {d['state']}" + (f" ({d['reason']})" if d["reason"] else "")
                     + (f", {d['free_bytes'] / 1e9:.1f} GB free" if "free_bytes" in d else ""))
    lag = st["replication"]
    lines.append(f"shards below replica target: {lag['shards_below_target']}; at risk: {len(lag['at_risk'])}")
    lines.append(f"batches: {len(store.index.iter_batches())}; views: {len(store.index.iter_views())}")
    lines.append(f"generated: {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return ("\n".join(lines) + "\n").encode()
