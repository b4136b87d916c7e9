"""`hoard-builtin clip-embed IN OUT --model M --weights W [--device D]`: for each input image, one
record of `embeddings.jsonl` — `{"sha256", "model", "embedding"}`, the embedding base64 of
float32 little-endian, L2-normalised — that `hoard search "TEXT"` finds images by
(docs/search.md).

The model is loaded by hoardfs.jobs.clip_model from the weights file the user installed (nothing is
downloaded). The image is the image as shown (first frame, EXIF orientation applied), opened as
every built-in opens a hostile image (hoardfs.jobs.actions.builtin._image: the pixel count checked from
the header first); one that cannot be decoded is one line on stderr naming it and the run goes
on. `model` is `<model name>@<first 16 hex of the weights' sha256>`: embeddings of other weights
are never compared with these.

`hoard-builtin gpu-ready DEVICE` is the contract's gate hook: exit 0 when DEVICE is "cpu" or a
CUDA device is there, 1 otherwise (docs/search.md, "GPU").
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from hoardfs.base import landlock
from hoardfs.jobs import clip_model
from hoardfs.jobs.actions.builtin import _image, _io

#: the address space this program may take (MB): torch's CPU libraries map some 2 GB at import,
#: a ViT-L's weights 1.7 GB more, a batch of decoded images and activations the rest
MEMORY_MB = 12288


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an open_clip model name (ViT-B-32) or a model config JSON")
    p.add_argument("--weights", required=True, help="the weights file (search.clip_weights)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs")


def reads(args: argparse.Namespace) -> list[Path]:
    """What this program reads besides its inputs and Python once confined (`_io.confine`): the
    weights file and a model config JSON (`load` refuses one that is missing)."""
    files = [Path(args.weights)] + ([Path(args.model)] if args.model.endswith(".json") else [])
    if args.device == "cuda":  # the NVIDIA driver's description of the GPUs, which CUDA reads at its start
        files += [Path(p) for p in _CUDA_READS]
    return [p for p in files if p.exists()]


#: what CUDA reads besides its libraries (site-packages, /usr/lib): the driver's /proc entries and
#: the PCI devices in /sys
_CUDA_READS = ("/proc/driver/nvidia", "/sys/bus/pci/devices", "/sys/devices")


def devices(args: argparse.Namespace) -> list[Path]:
    """The device files this program opens to read and write, and drives by ioctls, once
    confined: with `--device cuda` the NVIDIA driver's (/dev/nvidiactl, /dev/nvidia0…,
    /dev/nvidia-uvm); none on the CPU."""
    if args.device != "cuda":
        return []
    return sorted(p for p in Path("/dev").glob("nvidia*") if p.is_char_device())


def gpu_ready(device: str) -> int:
    """The gate hook: 0 when the run may start on `device`."""
    if device == "cpu":
        return 0
    try:
        import torch  # deferred: torch (~1 GB) only where the gate asks for cuda
    except ImportError:
        print(f"hoard-builtin gpu-ready: {clip_model.NOT_INSTALLED}; the run waits", file=sys.stderr)
        return 1

    if torch.cuda.is_available():
        return 0
    print(f"hoard-builtin gpu-ready: no CUDA device here (torch {torch.__version__}); the run waits", file=sys.stderr)
    return 1


def run(input_root: Path, output_root: Path, args: argparse.Namespace) -> int:
    landlock.limit_memory(MEMORY_MB)
    Image.MAX_IMAGE_PIXELS = _image.MAX_PIXELS
    # At import torch makes its compile cache's directory, and CUDA's library finder writes a
    # temporary file (ctypes.util.find_library): in TMPDIR, else /tmp, else the working directory.
    # Confined, this program writes only in its output root: a scratch directory there, gone
    # again once the model is loaded (nothing is compiled here), before any output is written
    scratch = output_root / ".torch-scratch"
    scratch.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch)
    tempfile.tempdir = None  # (asked again, from TMPDIR)
    try:
        m = clip_model.load(args.model, args.weights, args.device)
    except clip_model.ClipError as e:
        raise _io.WorkerError(str(e)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    records: list[dict[str, Any]] = []
    pending: list[tuple[str, Any]] = []

    def flush() -> None:
        vecs = clip_model.encode_prepared(m, [x for _, x in pending])
        for (sha, _), v in zip(pending, vecs, strict=True):
            records.append({"sha256": sha, "model": m.model_id,
                            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()})
        pending.clear()

    for inp in _io.inputs(input_root):
        try:
            shown, _raw = _image.open_image(inp.path)
            # transformed now, one at a time: the batch holds the model's small tensors, not
            # decoded images, and one that cannot be transformed is skipped alone
            pending.append((inp.sha256, clip_model.prepare(m, shown.convert("RGB"))))
        except _image.Undecodable as e:
            _io.warn(inp.rel, str(e))
            continue
        except MemoryError:
            _io.warn(inp.rel, f"needs more than the {MEMORY_MB} MB this program may take")
            continue
        except (ValueError, OSError) as e:  # a shape or mode the model's transform refuses
            _io.warn(inp.rel, f"cannot be given to the model: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if len(pending) >= clip_model.BATCH:
            flush()
    if pending:
        flush()
    _io.write_jsonl(output_root, "embeddings.jsonl", records)
    return 0
