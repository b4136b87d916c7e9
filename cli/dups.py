"""`hoard dups [--threshold N] [--json]`: the near-duplicate groups of the hashed images
(hoardfs.sql.neardup; the hashes are the `near-dup-hash` action's: docs/near-dups.md)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hoardfs.base.errors import ExitCode, HoardError
from hoardfs.cli._common import database, err, out, state
from hoardfs.sql import neardup


def dups(
    ctx: typer.Context,
    threshold: Annotated[int, typer.Option(
        "--threshold", help=f"the largest Hamming distance between two images' pHashes (bits of 64) that makes them "
                            f"near-duplicates, 0–{neardup.MAX_THRESHOLD}; default {neardup.DEFAULT_THRESHOLD}")
    ] = neardup.DEFAULT_THRESHOLD,
    no_flips: Annotated[bool, typer.Option("--no-flips", help="do not match mirrored copies (by the mirrored image's "
                                                              "pHash)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document: threshold, hashed, groups (each its "
                                                         "size, members and the members matched as mirror images)")
                       ] = False,
) -> None:
    """Near-duplicate groups, one a line: the members' sha256s, largest group first. Images are
    near-duplicates when their pHashes differ in at most `--threshold` bits, or one's pHash and
    the other's mirrored pHash do; a chain of such pairs is one group. Only images the
    `near-dup-hash` action has hashed are compared (`hoard action run near-dup-hash`)."""
    try:
        neardup.check_threshold(threshold)
    except neardup.ThresholdError as e:
        raise HoardError(f"--threshold: {e}", ExitCode.USAGE) from None
    with database(state(ctx).settings, needed_for="the images' hashes are kept in the database") as conn:
        hashed = neardup.hashed_count(conn)
        found = neardup.groups(conn, threshold, flips=not no_flips) if hashed else []
    if as_json:
        out.print(json.dumps({"threshold": threshold, "flips": not no_flips, "hashed": hashed, "groups": [
            {"size": len(g), "members": [m.sha256 for m in g], "mirrored": [m.sha256 for m in g if m.flipped]}
            for g in found]}), markup=False)
        return
    for g in found:
        out.print(" ".join(m.sha256 for m in g), markup=False)
    if not hashed:
        err.print("no image has been hashed yet: `hoard action run near-dup-hash` hashes the stored images "
                  "(docs/near-dups.md)", markup=False)
    else:
        err.print(f"{len(found)} groups of {sum(map(len, found))} images among {hashed} hashed "
                  f"(threshold {threshold}{'' if not no_flips else ', mirror images not matched'})", markup=False)
