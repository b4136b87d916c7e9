"""`python -m hoardfs ARGS` is `hoard ARGS`."""

from hoardfs.cli.entry import main

main()
