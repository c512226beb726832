"""``python -m bench.race``; ``from bench.race.__main__ import main`` works too."""

from __future__ import annotations

import sys

from bench.race.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
