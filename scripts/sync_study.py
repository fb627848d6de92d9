"""How often the solver loop should read the device (``reconstruct(sync_every=k)``): the measurement
behind :data:`phasetorch.tensors.SYNC_EVERY`.

For k in 1, 4, 16, 64 and a few presets, times a full run (same iterate for every k: the loop decides
on the device, k only sets when the host looks) and counts the host reads. On a CPU a read is free,
so k > 1 only adds idle iterations after the last sample stops; on a GPU each read is a
synchronisation. Writes results/sync_every.{json,md}.

    python scripts/sync_study.py [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import phasetorch as pt
from phasetorch.io import save_json
from phasetorch.logs import write_atomic

KS = (1, 4, 16, 64)


def problems(device):
    g = torch.Generator().manual_seed(1)
    gau = pt.GaussianMeasurement(1024, 8192, complex=True, seed=0).to(device)
    xg = torch.randn(1024, dtype=torch.complex64, generator=g).to(device)
    cdp = pt.CodedDiffraction((128, 128), 4, seed=0).to(device)
    xc = torch.randn(128, 128, dtype=torch.complex64, generator=g).to(device)
    return [("Gaussian n=1024 m=8n c64", gau, gau(xg), ["lbfgs", "raf", "wf"]),
            ("CDP 128² L=4 c64", cdp, cdp(xc), ["auto", "taf"])]


def run(op, y, alg, k, x0):
    if op.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    rec = pt.reconstruct(op, y, alg, init=x0, progress=False, sync_every=k, max_iter=500)
    if op.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name, op, y, algs in problems(device):
        x0 = pt.spectral_init(op, y, seed=0)
        for alg in algs:
            times, iters = {}, {}
            for k in KS:
                best = float("inf")
                for _ in range(args.repeats):
                    sec, rec = run(op, y, alg, k, x0)
                    best = min(best, sec)
                times[k], iters[k] = best, int(rec.iterations.max())
            rows.append({"problem": name, "algorithm": alg, "seconds": times, "iterations": iters[1],
                         "ratio_to_k1": {k: times[k] / times[1] for k in KS}})
            print(f"{name:26s} {alg:6s} {iters[1]:4d} it  " + "  ".join(f"k={k}: {times[k]:.3f} s" for k in KS), flush=True)
    meta = {"device": str(device), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
            "command": "python scripts/sync_study.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    save_json({"meta": meta, "rows": rows}, out / "sync_every.json")
    lines = [f"# Host reads every k iterations ({meta['date']}, {meta['device']}, {meta['threads']} threads, "
             f"torch {meta['torch']})", "", f"`{meta['command'].strip()}` — best of {args.repeats}; same iterates for every k.", "",
             "| problem | algorithm | iterations | " + " | ".join(f"k={k} [s]" for k in KS) + " | " +
             " | ".join(f"k={k} / k=1" for k in KS[1:]) + " |",
             "|---|---|---|" + "---|" * (2 * len(KS) - 1)]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['algorithm']} | {r['iterations']} | "
                     + " | ".join(f"{r['seconds'][k]:.3f}" for k in KS) + " | "
                     + " | ".join(f"{r['ratio_to_k1'][k]:.2f}" for k in KS[1:]) + " |")
    write_atomic(out / "sync_every.md", lambda fh: fh.write("\n".join(lines) + "\n"))
    print(f"wrote {out / 'sync_every.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
