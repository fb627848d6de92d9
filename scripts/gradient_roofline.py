#!/usr/bin/env python
r"""Gradient roofline: one full gradient evaluation of the dense Gaussian model vs one read of A.

Side by side in one process (interleaved rounds, alternating order), for each dtype and batch:

* **read limit** — the fastest of a few kernels that read A once and do almost nothing else
  (``view_as_real(A).sum()``, ``.amax()``, ``vector_norm``); the physical limit of any pass over A;
* **torch** — ``loss.evaluate(x, y)`` (value, gradient, r) on the torch path (``PHASETORCH_KERNELS=0``:
  MKL products, fused in row blocks where that pays);
* **kernel** — the same call with the C kernel of :mod:`phasetorch.physics.kernels` (one read of A);
* **kernel pass** — the bare fused kernel call (no loss bookkeeping), to show the Python overhead.

The loss is the amplitude loss (AF, RAF, L-BFGS and auto's first stage descend it) unless
``--loss`` says otherwise. Ratios are medians over ``--repeats`` samples (each ≥ ``--min-sample``
seconds) divided by the read limit's median; minima are written too. Goal: kernel / read ≤ 1.5 for
complex64 and complex128 at batch 1. Writes ``results/gradient_roofline.{json,md}``.

    python scripts/gradient_roofline.py                     # n=1024, m=8n, batch 1 and 16
    python scripts/gradient_roofline.py --quick             # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phasetorch.losses import LOSSES  # noqa: E402
from phasetorch.physics import GaussianMeasurement  # noqa: E402
from phasetorch.physics import kernels  # noqa: E402

DTYPES = {"complex64": (True, torch.float32), "complex128": (True, torch.float64),
          "float32": (False, torch.float32), "float64": (False, torch.float64)}
GOAL = 1.5


def measure(fns: dict, repeats: int, min_sample: float) -> dict:
    """Seconds per call of each function: interleaved rounds (order alternating), each sample ≥ min_sample s."""
    number = {}
    for name, fn in fns.items():
        fn()
        fn()
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        number[name] = max(1, math.ceil(min_sample / max(t, 1e-9)))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, k = fns[name], number[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "samples": len(v), "calls": number[name]}
            for name, v in samples.items()}


def case(dtype_name: str, n: int, m: int, B: int, loss_name: str, repeats: int, min_sample: float, seed: int) -> dict:
    is_complex, rdt = DTYPES[dtype_name]
    op = GaussianMeasurement(n, m, complex=is_complex, seed=seed, dtype=rdt)
    A = op.matrix()
    ra = torch.view_as_real(A) if A.is_complex() else A
    g = torch.Generator().manual_seed(seed + 1)
    shape = (n,) if B == 1 else (B, n)
    if is_complex:
        xs = torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=rdt)) / math.sqrt(2)
        noise = torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=rdt)) / math.sqrt(2)
    else:
        xs, noise = torch.randn(*shape, generator=g, dtype=rdt), torch.randn(*shape, generator=g, dtype=rdt)
    y = op(xs)
    x = xs + 0.3 * noise
    loss = LOSSES[loss_name](op)
    d = loss.prepare(y)
    spec_of = {"amplitude": lambda: kernels.PointwiseMap(kernels.Map.AMPLITUDE, d.psi),
               "intensity": lambda: kernels.PointwiseMap(kernels.Map.INTENSITY, d.y),
               "poisson": lambda: kernels.PointwiseMap(kernels.Map.POISSON, d.y_pos)}.get(loss_name)
    xf = x.reshape(-1, n)
    fns = {"read: sum": lambda: ra.sum(), "read: amax": lambda: ra.amax(),
           "read: vector_norm": lambda: torch.linalg.vector_norm(ra),
           "torch": kernels.switched(False, lambda: loss.evaluate(x, d)),
           "kernel": kernels.switched(True, lambda: loss.evaluate(x, d))}
    if spec_of is not None and kernels.available():
        fns["kernel pass"] = lambda: kernels.fused(A, xf, spec_of(), xf.shape[:1])
    if not kernels.available():
        del fns["kernel"]
    t = measure(fns, repeats, min_sample)
    read_name = min((k for k in t if k.startswith("read")), key=lambda k: t[k]["median_s"])
    read = t[read_name]["median_s"]
    row = {"dtype": dtype_name, "n": n, "m": m, "batch": B, "loss": loss_name,
           "matrix_bytes": ra.numel() * ra.element_size(), "read_kernel": read_name, "read_s": read,
           "read_GBps": ra.numel() * ra.element_size() / read / 1e9, "times": t}
    for key in ("torch", "kernel", "kernel pass"):
        if key in t:
            row[f"{key}_s"] = t[key]["median_s"]
            row[f"{key}_ratio"] = t[key]["median_s"] / read
            row[f"{key}_ratio_min"] = t[key]["min_s"] / t[read_name]["min_s"]
    if "kernel" in t:
        row["speedup"] = t["torch"]["median_s"] / t["kernel"]["median_s"]
        row["met"] = row["kernel_ratio"] <= GOAL if B == 1 and is_complex else None
    return row


def markdown(result: dict) -> str:
    out = ["# Gradient roofline: one gradient evaluation vs one read of A", "",
           f"{result['date']} — {result['machine']['cpu']} — torch {result['machine']['torch']}, "
           f"{result['machine']['threads']} threads, load {result['machine']['loadavg']}", "",
           f"`{result['command']}`", "",
           f"Loss `{result['loss']}`, GaussianMeasurement n={result['n']}, m={result['m']}; medians of "
           f"{result['repeats']} interleaved samples; ratios = time / read-once time (min/min in brackets). "
           f"Goal: kernel ≤ {GOAL}× for complex64/complex128 at batch 1. Kernel path: "
           f"`{result['kernel_status']['path']}`.", "",
           "| dtype | batch | A (MiB) | read once | torch gradient | kernel gradient | kernel pass | torch / read | "
           "kernel / read | speed-up | goal met |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(v):
        return "—" if v is None else f"{v * 1e3:.2f} ms"

    def rt(r, key):
        v = r.get(f"{key}_ratio")
        return "—" if v is None else f"{v:.2f}× ({r[f'{key}_ratio_min']:.2f}×)"
    for r in result["rows"]:
        met = {True: "yes", False: "**no**", None: "—"}[r.get("met")]
        out.append(f"| {r['dtype']} | {r['batch']} | {r['matrix_bytes'] / 2**20:.0f} | {ms(r['read_s'])} "
                   f"({r['read_GBps']:.0f} GB/s, `{r['read_kernel'][6:]}`) | {ms(r.get('torch_s'))} | "
                   f"{ms(r.get('kernel_s'))} | {ms(r.get('kernel pass_s'))} | {rt(r, 'torch')} | {rt(r, 'kernel')} | "
                   f"{r['speedup']:.1f}× | {met} |" if "speedup" in r else
                   f"| {r['dtype']} | {r['batch']} | {r['matrix_bytes'] / 2**20:.0f} | {ms(r['read_s'])} | "
                   f"{ms(r.get('torch_s'))} | — | — | {rt(r, 'torch')} | — | — | — |")
    out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--delta", type=int, default=8)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--loss", default="amplitude", choices=sorted(LOSSES))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--min-sample", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="5 repeats of ≥ 0.02 s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "gradient_roofline"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.min_sample = 5, 0.02
    m = args.n * args.delta
    status = kernels.status()
    print(f"kernel: {status}", flush=True)
    rows = []
    for dt in args.dtypes:
        for B in args.batches:
            r = case(dt, args.n, m, B, args.loss, args.repeats, args.min_sample, args.seed)
            rows.append(r)
            print(f"{dt:>10} B={B:<3} read {r['read_s'] * 1e3:7.2f} ms ({r['read_GBps']:.0f} GB/s)  "
                  f"torch {r['torch_s'] * 1e3:8.2f} ms ({r['torch_ratio']:.2f}×)  "
                  + (f"kernel {r['kernel_s'] * 1e3:8.2f} ms ({r['kernel_ratio']:.2f}×)  "
                     f"pass {r.get('kernel pass_s', float('nan')) * 1e3:7.2f} ms  speed-up {r['speedup']:.1f}×"
                     if "kernel_s" in r else "kernel unavailable"), flush=True)
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "n": args.n, "m": m, "loss": args.loss, "repeats": args.repeats, "goal": GOAL,
              "kernel_status": status,
              "machine": {"cpu": _cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "platform": platform.platform(), "loadavg": load},
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
