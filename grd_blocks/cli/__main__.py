"""``python -m grd_blocks.cli``: the `grd` command."""

import sys

from grd_blocks.timeline import mark

mark("main")  # the interpreter is up (GRD_TIMELINE: bench/bench_attempt_cost.py)

from grd_blocks.cli.app import main  # noqa: E402

sys.exit(main())
