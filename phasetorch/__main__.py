"""``python -m phasetorch``: the same command as the ``phasetorch`` console script."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
