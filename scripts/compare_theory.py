#!/usr/bin/env python
"""Theory over simulation for spectral-initialised regularized Wirtinger flow (the seed paper's figure).

For each δ in --deltas and λ in --l2s: a multi-seed simulation on real Gaussian phase retrieval
(`phasetorch train`) and the DMFT prediction (`phasetorch theory`), each into OUT/delta{δ}_lambda{λ}/,
then OUT/comparison.png — overlap, estimation error and training loss versus iteration, DMFT lines
over the simulation mean ± 1 SE — and OUT/comparison.json with the sup gaps. After Chen & Shen,
"Learning single index model with gradient descent: spectral initialization and precise
asymptotics", arXiv 2509.23527 (2025). All logic is in phasetorch.app.demo.theory_comparison.

Example (about 10 minutes on 2 CPU cores with the defaults):
    python scripts/compare_theory.py --out out/theory
    python scripts/compare_theory.py --deltas 4 --l2s 0.1 --dim 500 --samples 20000 --out out/quick
"""

import argparse
import sys

from phasetorch.app.common import Echo, resolve_device
from phasetorch.app.demo import theory_comparison


def run(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deltas", default="3,4,6", help="comma list of δ (default 3,4,6)")
    p.add_argument("--l2s", default="0,0.1", help="comma list of ridge λ (default 0,0.1)")
    p.add_argument("--dim", type=int, default=1000, help="simulation dimension d (default 1000)")
    p.add_argument("--seeds", type=int, default=8, help="simulation seeds (default 8)")
    p.add_argument("--steps", type=int, default=40, help="GD steps (default 40)")
    p.add_argument("--step", type=float, default=0.1, help="constant step η (default 0.1)")
    p.add_argument("--preprocessing", default="optimal", help="spectral preprocessing (default optimal)")
    p.add_argument("--samples", type=int, default=50_000, help="DMFT Monte-Carlo samples (default 5e4)")
    p.add_argument("--replicates", type=int, default=4, help="DMFT replicates (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    res = theory_comparison(a.out, deltas=[float(v) for v in a.deltas.split(",")],
                            l2s=[float(v) for v in a.l2s.split(",")], dim=a.dim, seeds=a.seeds, steps=a.steps,
                            step=a.step, preprocessing=a.preprocessing, samples=a.samples,
                            replicates=a.replicates, seed=a.seed, device=resolve_device(a.device),
                            echo=Echo(a.quiet))
    print(f"wrote {res['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
