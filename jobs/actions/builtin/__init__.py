"""The built-in actions: S04 worker programs that really run here, and their contracts.

`hoard-builtin NAME INPUT_ROOT OUTPUT_ROOT [--options]` runs one program (`PROGRAMS`) over a
staged input tree and writes only inside the output root (`_io`; where the kernel has Landlock
it cannot write anywhere else, nor read beyond its roots and Python's and the system's files,
hoardfs.base.landlock); each program's contract is
`contracts/<action_id>.toml` (`CONTRACTS`), found by `hoard action list|show` after the
actions directory's own files (a file there of the same id shadows the built-in). What each
takes, writes and its parameters: docs/actions.md, "Built-in actions".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from hoardfs.jobs.actions.builtin import _io

#: the contracts shipped with hoardfs (one `<action_id>.toml` each)
CONTRACTS = Path(__file__).resolve().parent / "contracts"
#: program name → its module (each has add_arguments(parser) and run(input_root, output_root, args))
PROGRAMS = {"thumbnail": "thumbnail", "exif": "exif", "resize-variants": "resize_variants", "canny": "canny",
            "keyframes": "keyframes", "near-dup-hash": "near_dup_hash", "clip-embed": "clip_embed"}

__all__ = ["CONTRACTS", "PROGRAMS", "main"]


def main(argv: list[str] | None = None) -> int:
    """The `hoard-builtin` console script. Exit 0: every input done or skipped (a skipped input is
    one line on stderr); 2: the run could not start (bad arguments, input root missing)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-ready"]:  # the clip-embed contract's gate hook: no input or output root
        if len(argv) != 2 or argv[1] not in ("cpu", "cuda"):
            print("usage: hoard-builtin gpu-ready cpu|cuda", file=sys.stderr)
            return 2
        from hoardfs.jobs.actions.builtin.clip_embed import gpu_ready  # deferred: torch, only for the gate hook

        return gpu_ready(argv[1])
    # numpy's OpenBLAS and OpenCV start thread pools at import, before `_io.confine`: threads
    # outside the sandbox in its memory (`landlock.confine` refuses them). One thread each; a pool
    # a library starts later is started from the confined thread and is confined with it
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    parser = argparse.ArgumentParser(prog="hoard-builtin", description="run one built-in action's worker program "
                                     "(docs/actions.md, Built-in actions)")
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    modules = {}
    # only the program asked for is imported (OpenCV is slow to load); all of them for --help
    chosen = {argv[0]: PROGRAMS[argv[0]]} if argv and argv[0] in PROGRAMS else PROGRAMS
    for name, module in chosen.items():
        mod = importlib.import_module(f"hoardfs.jobs.actions.builtin.{module}")
        p = sub.add_parser(name, help=(mod.__doc__ or "").split("\n")[0])
        p.add_argument("input_root", type=Path, metavar="INPUT_ROOT")
        p.add_argument("output_root", type=Path, metavar="OUTPUT_ROOT")
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)

    try:
        _io.check_output_root(args.output_root)
        mod = modules[args.name]
        # what a program reads, starts or drives beyond its inputs and Python: its own
        # `reads(args)`, `programs(args)` and `devices(args)` (clip-embed's weights and GPU,
        # keyframes' ffmpeg); nothing else is in reach
        def hook(name: str) -> list[Path]:
            return list(getattr(mod, name, lambda a: [])(args))

        _io.confine(args.output_root, args.input_root, read=hook("reads"), programs=hook("programs"),
                    devices=hook("devices"))
        return int(modules[args.name].run(args.input_root, args.output_root, args))
    except _io.WorkerError as e:
        print(f"hoard-builtin {args.name}: error: {e}", file=sys.stderr)
        return 2
