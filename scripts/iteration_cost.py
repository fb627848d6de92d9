#!/usr/bin/env python3
"""Per-iteration cost of every preset, and of the spectral start, on one device.

    python scripts/iteration_cost.py [--device cpu|cuda] [--n 1024] [--delta 8] [--batch 1]
                                     [--dtype float32|float64] [--compare-graphs] [--json PATH]

Each preset runs as a user runs it (its spectral start, default stopping; complex Gaussian, m = δn)
once with ``max_iter=0`` (the start alone: t₀) and once to convergence (t, k iterations); the table
gives k, t, and (t − t₀)/k, the cost of one iteration with all its bookkeeping (line-search trials,
loss, residual, stopping, log record). At a small n this is the fixed overhead per iteration
(Python dispatch, kernel launches, host reads); at a large n it approaches the products with A.
The spectral start (``spectral_init``, Lanczos to 1e-6) is timed alone too, with its product count.
Times are the minimum of ``--repeats`` runs after a warm-up (the accelerator synchronised).
``--compare-graphs`` times every preset twice, with the loop's blocks captured and replayed as CUDA graphs
(``PHASETORCH_GRAPHS`` unset, the default on CUDA) and plainly (``PHASETORCH_GRAPHS=0``), and says whether
the two results are the same bit for bit (on a CPU both are the plain loop).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

try:
    import phasetorch  # noqa: F401
except ModuleNotFoundError as exc:  # a source checkout that is not installed
    if exc.name != "phasetorch":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phasetorch import io as pio  # noqa: E402
from phasetorch.app.jobs import ALGORITHMS, SUPPORT_ALGORITHMS  # noqa: E402
from phasetorch.init.spectral import spectral_init  # noqa: E402
from phasetorch.physics import GaussianMeasurement  # noqa: E402
from phasetorch.solve import reconstruct  # noqa: E402

#: Every preset that applies to a Gaussian model (those needing a support are left out).
PRESETS = tuple(a for a in ALGORITHMS if a not in SUPPORT_ALGORITHMS)


def _best(fn, device, repeats):
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    once()
    return min(once() for _ in range(repeats))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--delta", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--max-iter", dest="max_iter", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare-graphs", dest="compare_graphs", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    op = GaussianMeasurement(a.n, a.delta * a.n, seed=0, dtype=dtype).to(dev)
    g = torch.Generator().manual_seed(1)
    x = torch.view_as_complex(torch.randn(a.batch, a.n, 2, generator=g, dtype=torch.float64)).to(dev, op.signal_dtype)
    y = op(x)
    rows = []
    print(f"device {dev}{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}, "
          f"complex Gaussian n={a.n}, m={a.delta * a.n}, batch {a.batch}, {a.dtype}, torch {torch.__version__}")
    modes = ("1", "0") if a.compare_graphs else (os.environ.get("PHASETORCH_GRAPHS"),)
    for alg in PRESETS:
        results = {}
        for mode in modes:
            if mode is not None:
                os.environ["PHASETORCH_GRAPHS"] = mode

            def run(k, alg=alg):
                return reconstruct(op, y, alg, max_iter=k, progress=False, seed=0)
            rec = run(a.max_iter)
            k = int(rec.iterations.max())
            t0 = _best(lambda: run(0), dev, a.repeats)
            t1 = _best(lambda: run(a.max_iter), dev, a.repeats)
            per = (t1 - t0) / max(k, 1)
            row = {"algorithm": alg, "iterations": k, "start_s": t0, "total_s": t1, "per_iteration_s": per}
            label = ""
            if a.compare_graphs:
                row["graphs"] = mode == "1"
                row["captured_blocks"] = rec.log.config.get("captured_blocks")
                label = " graphs" if mode == "1" else "  plain"
                results[mode] = rec
            rows.append(row)
            print(f"  {alg:6s}{label} {k:5d} iterations in {t1 * 1e3:8.1f} ms: {per * 1e6:8.1f} µs per iteration "
                  f"(start {t0 * 1e3:.1f} ms)")
        if a.compare_graphs:
            same = torch.equal(results["1"].x, results["0"].x) and \
                torch.equal(results["1"].iterations, results["0"].iterations)
            ratio = rows[-1]["per_iteration_s"] / max(rows[-2]["per_iteration_s"], 1e-12)
            rows[-2]["same_as_plain"] = same
            rows[-2]["plain_over_graphs"] = ratio
            blocks = rows[-2]["captured_blocks"]
            note = f"blocks {blocks}" if blocks else "no graph backend on this device: both runs are the plain loop"
            print(f"         graphs vs plain: {ratio:.2f}x faster per iteration, same result: {same}; {note}")
    _, info = spectral_init(op, y, tol=1e-6, return_info=True)
    products = int(info.matvecs.max())
    ts = _best(lambda: spectral_init(op, y, tol=1e-6), dev, a.repeats)
    rows.append({"algorithm": "spectral_init", "seconds": ts, "products": products})
    print(f"  spectral_init (Lanczos, tol 1e-6): {ts * 1e3:.2f} ms, {products} products "
          f"({ts / max(products, 1) * 1e6:.1f} µs per product)")
    if a.json:
        pio.save_json({"device": str(dev), "n": a.n, "m": a.delta * a.n, "batch": a.batch, "dtype": a.dtype,
                       "torch": torch.__version__, "rows": rows}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
