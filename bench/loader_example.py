"""A training data loader over a view of the mount, the way a PyTorch user writes one.

    python bench/loader_example.py DIR [--workers 4] [--epochs 1]     # any directory, e.g.
                                                                      # /srv/hoard/views/train-v1
    python bench/loader_example.py --lab [--images 3000]              # measured on the disk lab

`ImageFiles` is a plain map-style dataset (`__len__`, `__getitem__`): it lists the files
once, and each item opens one file and decodes it with Pillow (any other file is returned
as bytes). With torch installed the items are drawn by `torch.utils.data.DataLoader(...,
shuffle=True, num_workers=N)`; without it, by a multiprocessing pool of N workers over a
shuffled index — the same access pattern: N processes, each reading whole files in random
order. `--lab` builds a lab4 store (2 copies) holding generated JPEGs, defines a view of
them, and runs the loader cold through the mount and over the same files as plain files on
the same disks (file k on replica k mod 2, as the store places them), every process inside
the lab's throttled cgroup; raw numbers go to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from multiprocessing import Pool
from pathlib import Path

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ImageFiles:
    """Every file under `root`; an item is (decoded image size, or byte count, path)."""

    def __init__(self, root: Path) -> None:
        self.paths = sorted(p for p in Path(root).rglob("*") if p.is_file())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        data = path.read_bytes()
        if path.suffix.lower() in IMAGE_EXT:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")  # decoded: what a transform pipeline would start from
                return im.size, str(path)
        return len(data), str(path)


_dataset: ImageFiles | None = None


def _init(root: str) -> None:
    global _dataset
    _dataset = ImageFiles(Path(root))


def _item(i: int):
    return _dataset[i]


def load_epoch(root: Path, workers: int, seed: int = 0) -> tuple[int, float]:
    """One epoch in random order with `workers` processes; (items, seconds)."""
    try:
        import torch
        from torch.utils.data import DataLoader
    except ImportError:
        torch = None
    ds = ImageFiles(root)
    t0 = time.monotonic()
    if torch is not None:
        torch.manual_seed(seed)
        loader = DataLoader(ds, batch_size=None, shuffle=True, num_workers=workers)
        n = sum(1 for _ in loader)
    else:
        order = list(range(len(ds)))
        random.Random(seed).shuffle(order)
        with Pool(workers, initializer=_init, initargs=(str(root),)) as pool:
            n = sum(1 for _ in pool.imap_unordered(_item, order, chunksize=1))
    return n, time.monotonic() - t0


def _lab(args) -> None:
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import LAB4, Lab, drop_caches, hoard_mounted, lab_store, report
    from PIL import Image

    from hoardfs.fsd.outputs.views import define_view

    work = Path(tempfile.mkdtemp(prefix="hoard-bench-loader-", dir="/var/tmp"))
    rng = random.Random(4)
    src = work / "images"
    src.mkdir()
    for k in range(args.images):  # photos-like JPEGs of 20–80 KB
        w, h = rng.choice([(320, 240), (480, 360), (640, 480)])
        im = Image.effect_noise((w, h), rng.uniform(20, 60)).convert("RGB")
        im.save(src / f"img{k:05d}.jpg", quality=rng.choice([70, 85, 92]))
    with Lab(LAB4, throttle=True, direct_io=True) as lab:
        store = lab_store(lab, work, shard_size_mb=256, copy_of_raw=2, write_ack=2)
        res = store.put_many(sorted(src.iterdir()))
        define_view(store, "train", "".join(f"{r.sha256}  c{k % 10}/{Path(r.path).name}\n"
                                            for k, r in enumerate(res)).encode())
        plain = {}
        for k, r in enumerate(res):
            meta = store.index.get_shard(store.index.lookup(bytes.fromhex(r.sha256)).shard_id)
            label = store.disks[meta.replicas[k % len(meta.replicas)]].label
            dst = lab.disks[label].mountpoint / "plain-train" / f"c{k % 10}" / Path(r.path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.path, dst)
            plain[r.sha256] = dst
        cfg_path = store.cfg.source
        store.close()
        os.sync()
        linked = work / "plain-view"  # one directory tree of symlinks to the plain copies
        for k, r in enumerate(res):
            link = linked / f"c{k % 10}" / Path(r.path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(plain[r.sha256])
        t: dict[str, float] = {}
        mnt = work / "mnt"
        with lab.throttled():
            drop_caches()
            n, t["plain"] = load_epoch(linked, args.workers)
            with hoard_mounted(cfg_path, mnt):
                os.listdir(mnt / "views" / "train")
                drop_caches()
                n2, t["mount"] = load_epoch(mnt / "views" / "train", args.workers)
        assert n == n2 == len(res)
        total = sum(r.size for r in res)
        rows = [("loader", f"{n} JPEGs ({total / 2**20:.0f} MiB), {args.workers} worker processes, shuffled, cold, "
                           "decoded with Pillow, lab4"),
                ("  plain files (store's placement)", f"{t['plain']:6.2f} s  {n / t['plain']:6.0f} files/s"),
                ("  through the mount (a view)", f"{t['mount']:6.2f} s  {n / t['mount']:6.0f} files/s"),
                ("  mount / plain", f"{t['plain'] / t['mount']:.2f}x")]
    report("training loader over a view", rows, {"images": n, "bytes": total, "workers": args.workers,
                                                 **{k: round(v, 3) for k, v in t.items()}})
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", help="a directory to load, e.g. <mount>/views/NAME")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lab", action="store_true", help="measure on the disk lab (root)")
    ap.add_argument("--images", type=int, default=3000)
    args = ap.parse_args()
    if args.lab:
        _lab(args)
        return
    if not args.root:
        ap.error("name a directory (or --lab)")
    for epoch in range(args.epochs):
        n, secs = load_epoch(Path(args.root), args.workers, seed=epoch)
        print(f"epoch {epoch}: {n} files in {secs:.2f} s, {n / secs:.0f} files/s ({args.workers} workers)")


if __name__ == "__main__":
    main()
