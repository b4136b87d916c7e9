"""hoardfs: a content-addressed data-asset store for ML pipelines on unequal disks.

The one import root: every system is reached as `hoardfs.<folder>` (`hoardfs.fsd` the file
manager, `hoardfs.jobs`, `hoardfs.adapters`, `hoardfs.datasets`, `hoardfs.sql`, `hoardfs.gui`,
`hoardfs.base` the leaf every system imports, `hoardfs.cli` the `hoard` command on top). In a
checkout these are links to the design card's folders; a wheel holds them as real folders.
"""
