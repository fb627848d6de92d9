#!/usr/bin/env python
"""Multi-seed spectral-initialised (regularized) Wirtinger flow on real Gaussian phase retrieval.

A thin wrapper of `phasetorch train` (batched over seeds, in the theory's units: ‖x*‖ = 1,
E A_ij² = 1, constant step η). Defaults: δ = 4, d = 2000, 8 seeds, 100 steps, λ = 0.1, η = 0.1,
preprocessing `optimal` (theory.md §7, case A). Any option of `phasetorch train` overrides them.

Example:
    python scripts/train.py --out out/train
    python scripts/train.py --delta 6 --l2 0 --steps 200 --out out/train_d6
    phasetorch theory --logs out/train/log.json --out out/theory     # then compare with the DMFT

Writes log.json and log.csv into --out and prints the final overlap (mean ± SE over seeds).
"""

import sys

from phasetorch.app.cli import main_with_defaults

DEFAULTS = {"--delta": "4", "--dim": "2000", "--seeds": "8", "--steps": "100", "--l2": "0.1", "--step": "0.1",
            "--preprocessing": "optimal"}


def run(argv):
    return main_with_defaults("train", DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
