"""`python -m hoardfs.jobs.actions.builtin NAME INPUT_ROOT OUTPUT_ROOT …` = `hoard-builtin …`."""

import sys

from hoardfs.jobs.actions.builtin import main

sys.exit(main())
