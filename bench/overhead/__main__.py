"""``python -m bench.overhead``."""

import sys

from bench.overhead.cli import main

sys.exit(main())
