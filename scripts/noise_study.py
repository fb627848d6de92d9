#!/usr/bin/env python3
"""Every preset at its defaults on noisy data: does it finish, and how far is the default from the best?

    python scripts/noise_study.py [--out results/noise_defaults] [--quick]

Problems: the bundled 64×64 photo with coded diffraction (4 and 8 octanary masks) and a complex
Gaussian signal (n = 256, m = 8n). Noise: relative Gaussian σ ∈ {0.05, 0.1, 0.3} (standard deviation
σ·mean(y) per sample) and Poisson at 10, 100 and 10⁴ expected photons per measurement. Each preset
runs with its defaults (seed 0). Writes ``OUT.json`` and ``OUT.md`` (the table of final relative
errors, statuses, and the ratio default / best preset) and prints the table.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import phasetorch as pt
from phasetorch.io import save_json
from phasetorch.optim.presets import PRESETS

NOISES = {"gaussian σ=0.05": ("g", 0.05), "gaussian σ=0.1": ("g", 0.1), "gaussian σ=0.3": ("g", 0.3),
          "poisson 10/meas.": ("p", 10.0), "poisson 100/meas.": ("p", 100.0), "poisson 1e4/meas.": ("p", 1e4)}


def problems(quick: bool):
    img = pt.io.load_image(pt.io.bundled("grace_hopper.png"), size=32 if quick else 64, dtype=torch.float64)
    x_img = img.to(torch.complex128).unsqueeze(0)
    for L in ((4,) if quick else (4, 8)):
        yield f"CDP {img.shape[0]}², L={L}", pt.CodedDiffraction(img.shape, n_masks=L, seed=0, dtype=torch.float64), x_img
    n = 64 if quick else 256
    x = torch.randn(1, n, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    yield f"Gaussian n={n}, m=8n", pt.GaussianMeasurement(n, 8 * n, seed=0, dtype=torch.float64), x


def noisy(op, y, kind, level):
    noise = pt.GaussianNoise(level, seed=2, relative=True) if kind == "g" else pt.PoissonNoise(level, seed=2,
                                                                                              per_measurement=True)
    return pt.MeasurementModel(op, noise=noise).add_noise(y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/noise_defaults")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    algs = list(PRESETS)
    rows, t0 = [], time.perf_counter()
    for pname, op, x in problems(args.quick):
        y = op(x)
        for nname, (kind, level) in NOISES.items():
            yn = noisy(op, y, kind, level)
            cells = {}
            for a in algs:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        rec = pt.reconstruct(op, yn, a, progress=False, seed=0)
                        err = float(pt.metrics.relative_error(rec.x, x, op=op)[0])
                        cells[a] = {"error": err, "status": rec.status_names()[0], "finite": bool(torch.isfinite(rec.x).all()),
                                    "iterations": int(rec.iterations[0]), "warnings": len(caught)}
                    except pt.DivergenceError as exc:
                        cells[a] = {"error": None, "status": "diverged", "finite": False, "message": str(exc)[:200]}
            errs = {a: c["error"] for a, c in cells.items() if c["error"] is not None}
            best = min(errs, key=errs.get)
            ratio = cells["auto"]["error"] / errs[best] if cells["auto"]["error"] is not None else float("inf")
            rows.append({"problem": pname, "noise": nname, "cells": cells, "best": best, "default_over_best": ratio})
            print(f"{pname:20s} {nname:18s} auto {cells['auto']['error']:.4f}  best {best} {errs[best]:.4f}  "
                  f"ratio {ratio:.3f}  finished: {all(c['finite'] and c['status'] != 'diverged' for c in cells.values())}",
                  flush=True)
    lines = ["| problem | noise | " + " | ".join(algs) + " | default/best |", "|" + "---|" * (len(algs) + 3)]
    for r in rows:
        fmt = [f"{c['error']:.3f}" + ("" if c["status"] in ("converged", "max_iter") else f" ({c['status']})")
               if c["error"] is not None else "diverged" for c in (r["cells"][a] for a in algs)]
        lines.append(f"| {r['problem']} | {r['noise']} | " + " | ".join(fmt) + f" | {r['default_over_best']:.2f} |")
    ok_finish = all(c["finite"] and c["status"] != "diverged" for r in rows for c in r["cells"].values())
    worst = max(r["default_over_best"] for r in rows)
    summary = (f"every preset finished with a finite x: {ok_finish}; default (auto) / best preset: worst "
               f"{worst:.2f} (goal ≤ 1.2); {time.perf_counter() - t0:.0f} s")
    md = "\n".join(["# Every preset at its defaults on noisy data", "", f"`scripts/noise_study.py{' --quick' if args.quick else ''}`"
                    " — final relative error (global phase removed), seed 0, 1 thread.", "", *lines, "", summary, ""])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json({"rows": rows, "summary": summary, "quick": args.quick}, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print(summary)
    return 0 if ok_finish and worst <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
