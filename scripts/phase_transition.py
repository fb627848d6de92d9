#!/usr/bin/env python
"""Empirical phase transition: success rate vs δ = m/n for several algorithms (PhasePack-style).

A thin wrapper of `phasetorch sweep` with the PhasePack figure's defaults: complex Gaussian
measurements, n = 64, δ from 1 to 8 in steps of 0.25, 20 trials per cell, WF/TWF/TAF/RAF/L-BFGS,
success = relative error < 1e-5 within 1000 iterations; the spectral threshold and the injectivity
line (δ = 4 complex, 2 real) are drawn. Resumable: interrupt it and run the same command again.

Example:
    python scripts/phase_transition.py --out out/transition
    python scripts/phase_transition.py --field real --algorithms wf,raf --trials 50 --out out/transition_real

Writes results.json and phase_transition.png into --out.
"""

import sys

from phasetorch.app.cli import main_with_defaults

DEFAULTS = {"--deltas": "1:8:0.25", "--algorithms": "wf,twf,taf,raf,lbfgs", "--trials": "20", "--dim": "64",
            "--field": "complex", "--tol": "1e-5", "--iters": "1000"}


def run(argv):
    return main_with_defaults("sweep", DEFAULTS, argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
