#!/usr/bin/env python
"""Reconstruct an image from simulated phaseless measurements (a thin wrapper of `phasetorch reconstruct`).

With no IMAGE (it must come first), the bundled Grace Hopper photo (data/grace_hopper.png) is used. Every option of
`phasetorch reconstruct` is accepted; the defaults here are coded diffraction with 6 masks,
Poisson noise at 1800 photons per measurement, the default algorithm, 300 iterations, 96×96.

Examples:
    python scripts/reconstruct_image.py --out out/hopper
    python scripts/reconstruct_image.py data/shepp_logan.png --model fourier --iters 500 --out out/cdi
    python scripts/reconstruct_image.py data/complex_object.pt --masks 8 --out out/complex
    python scripts/reconstruct_image.py --measurements sim/measurements.pt --operator sim/operator.pt --out out/r

Writes truth.png, init.png, reconstruction.png, error.png, grid.png, convergence.png, log.json and
summary.json into --out, and prints the final relative error and PSNR.
"""

import sys

from phasetorch.app.cli import main, main_with_defaults
from phasetorch.io import bundled

DEFAULTS = {"--masks": "6", "--noise": "poisson:1800", "--iters": "300", "--size": "96"}


def run(argv):
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return main(["reconstruct", "--help"])
    if (not argv or argv[0].startswith("-")) and "--measurements" not in argv:
        argv = [str(bundled("grace_hopper"))] + argv  # no IMAGE first: the bundled photo
    keep_size = ["--size"] if argv and argv[0].endswith(".pt") else []   # .pt objects keep their stored size
    return main_with_defaults("reconstruct", DEFAULTS, argv, given=keep_size)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
