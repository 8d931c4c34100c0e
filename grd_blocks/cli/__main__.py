"""``python -m grd_blocks.cli``: the `grd` command."""

import sys

from grd_blocks.cli.app import main

sys.exit(main())
