#!/usr/bin/env python3
"""phasetorch benchmark: side by side with solvephase / deepinv and with the raw-tensor limit.

    python scripts/benchmark.py [--quick] [--dry-run] [--json PATH] [--markdown PATH]
                                [--device cpu|cuda] [--rows 1,2,...] [--repeats N] [--no-peers]

The peers are optional (``pip install -e '.[bench]'``, best in a separate virtualenv). The harness
itself is ``benchmarks/harness.py`` of the source checkout (not installed with the package).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import phasetorch  # noqa: F401  (installed, or the checkout below)
except ModuleNotFoundError as exc:
    if exc.name != "phasetorch":       # phasetorch is there but broken: show that error
        raise
    sys.path.insert(1, str(ROOT))

from harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
