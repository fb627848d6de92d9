#!/usr/bin/env python3
"""phasetorch benchmark: side by side with solvephase / deepinv and with the raw-tensor limit.

    python scripts/benchmark.py [--quick] [--dry-run] [--json PATH] [--markdown PATH]
                                [--device cpu|cuda] [--rows 1,2,...] [--repeats N] [--no-peers]

The peers are optional (``pip install -e '.[bench]'``, best in a separate virtualenv). The harness
itself is :mod:`phasetorch.bench` (importable: the tests and ``phasetorch bench`` call it).
"""

import sys
from pathlib import Path

try:
    from phasetorch.bench import main
except ImportError:  # a source checkout that is not installed: use the package next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from phasetorch.bench import main

if __name__ == "__main__":
    sys.exit(main())
