"""fsd — the file-store daemon: S01 of the design card, hoardfs's content-addressed shard
store on the HDDs and everything that keeps it whole. Its parts, bottom to top (the
```layers block of docs/ARCHITECTURE.md, enforced by tests/test_layering.py):

- `hoardfs.base`: the leaf every package imports — config, errors and exit codes, paths,
  file modes, units, logs, progress.
- `hoardfs.fsd.core`: the formats and facts — shards, records, disks, layout, marks, pointers,
  the LMDB index, placement, the store lock.
- `hoardfs.fsd.io` and the `hoardfs.fsd.store` facade: writing, sealing, recovering, replicating and
  scrubbing shards; the integrity judgement check, verify and health share.
- `hoardfs.fsd.outputs`: zones, seal, stage/export trees, views, batch manifests, named puts,
  thumbnails.
- `hoardfs.fsd.maintenance`: gc, deletion, rebuild, disk life cycle, index rebuild and copies,
  check, orphans, health.
- `hoardfs.fsd.mount`: the FUSE mount; `hoardfs.cli`: the `hoard` command line (`hoardfs.cli.entry`,
  `python -m hoardfs`).

This file imports nothing: every import of `hoardfs.base` runs it first.
"""
