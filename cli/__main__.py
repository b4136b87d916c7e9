"""`python -m hoardfs.cli ARGS` is `hoard ARGS`."""

from hoardfs.cli.entry import main

main()
