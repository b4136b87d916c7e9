"""The leaf base every package may import: errors and exit codes, paths and names, durable
file writes, external programs, the configuration (hoard.toml), the logging set-up and the
figures of long jobs (progress).

Rule (tests/test_layering.py): a module of `hoardfs.base` imports the standard library, third-party
packages and other `hoardfs.base` modules — nothing else of hoardfs. See docs/ARCHITECTURE.md.
"""
