"""fsd — the file-store daemon: S01 of the design card, hoardfs's content-addressed shard
store on the HDDs and everything that keeps it whole. Its parts, bottom to top (the
```layers block of docs/ARCHITECTURE.md, enforced by tests/test_layering.py):

- `fsd.base`: the leaf every package imports — config, errors and exit codes, paths,
  file modes, units, logs, progress.
- `fsd.core`: the formats and facts — shards, records, disks, layout, marks, pointers,
  the LMDB index, placement, the store lock.
- `fsd.io` and the `fsd.store` facade: writing, sealing, recovering, replicating and
  scrubbing shards; the integrity judgement check, verify and health share.
- `fsd.outputs`: zones, seal, stage/export trees, views, batch manifests, named puts,
  thumbnails.
- `fsd.maintenance`: gc, deletion, rebuild, disk life cycle, index rebuild and copies,
  check, orphans, health.
- `fsd.mount`: the FUSE mount; `fsd.cli`: the `hoard` command line (`fsd.entry`,
  `python -m fsd`).

This file imports nothing: every import of `fsd.base` runs it first.
"""
