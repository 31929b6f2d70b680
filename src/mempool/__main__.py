"""``python -m mempool``: see mempool.cli."""

import sys

from .cli import main

sys.exit(main())
