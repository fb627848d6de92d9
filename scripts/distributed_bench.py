#!/usr/bin/env python
"""Benchmark of sharded reconstruction (torch.distributed, gloo on CPU, one thread per process).

For N = 1, 2, … processes (``--procs``), a complex Gaussian problem (n unknowns, m = δn rows,
float64) is split by rows (:class:`phasetorch.physics.ShardedGaussian`) and reconstructed by RAF
from a fixed start for ``--iters`` iterations (tol = 0: every run does the same work). Reported per N:

* memory per rank: the operator's stored bytes (this rank's rows of A) and the peak resident set
  size of the process above its size after ``import torch`` (the whole job: A, y, the solver's
  arrays, the replicated n-sized state), against the single-process run — the goal is
  ≤ 1/N of the measurement-sized part plus the replicated part;
* time per iteration (median of ``--repeats`` runs, rank 0's clock) and the strong-scaling speedup
  t(1)/t(N), with the time of one all-reduce of the n-sized gradient for scale;
* the largest relative difference of the result from the single-process run.

Writes ``results/distributed.json`` and ``results/distributed.md`` (``--out`` to change the folder).
The numbers depend on the machine and its load: on a shared machine with fewer idle cores than
processes the speedup is capped (and can fall below 1); the script records ``os.cpu_count()`` and
the load average next to them.

    python scripts/distributed_bench.py                  # n = 2048, δ = 8, N = 1, 2
    python scripts/distributed_bench.py --n 512 --iters 10 --procs 1,2,3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import phasetorch as pt
from phasetorch import distributed as D
from phasetorch.physics import ShardedGaussian

ROOT = Path(__file__).resolve().parent.parent


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _problem(n: int, delta: float, seed: int):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.view_as_complex(torch.randn(n, 2, generator=g, dtype=torch.float64)) / math.sqrt(2)
    x0 = x + 0.3 * torch.view_as_complex(torch.randn(n, 2, generator=g, dtype=torch.float64)) / math.sqrt(2)
    return x, x0, max(1, int(round(delta * n)))


def bench_worker(rank: int, size: int, n: int, delta: float, iters: int, repeats: int, seed: int) -> dict:
    base = _rss_mib()
    x, x0, m = _problem(n, delta, seed)
    t0 = time.perf_counter()
    op = ShardedGaussian(n, m, seed=seed, dtype=torch.float64)
    build = time.perf_counter() - t0
    y = op(x)
    op_bytes = sum(b.numel() * b.element_size() for b in op.buffers())
    pt.reconstruct(op, y, algorithm="raf", init=x0, max_iter=2, tol=0, progress=False)      # warm-up
    times = []
    for _ in range(repeats):
        D.barrier()
        t0 = time.perf_counter()
        rec = pt.reconstruct(op, y, algorithm="raf", init=x0, max_iter=iters, tol=0, progress=False)
        times.append((time.perf_counter() - t0) / iters)
    g = torch.zeros(n, dtype=torch.complex128)
    reduce_times = []
    for _ in range(20):
        t0 = time.perf_counter()
        op.reduce_sum(g)
        reduce_times.append(time.perf_counter() - t0)
    return {"rank": rank, "rows": list(op.rows), "operator_bytes": op_bytes, "build_seconds": build,
            "peak_rss_mib": _rss_mib(), "base_rss_mib": base, "seconds_per_iteration": statistics.median(times),
            "all_times": times, "allreduce_seconds": statistics.median(reduce_times), "x": rec.x}


def run(n: int, delta: float, iters: int, repeats: int, procs, seed: int, timeout: float) -> dict:
    rows = []
    reference = None
    for size in procs:
        res = D.spawn(bench_worker, size, (n, delta, iters, repeats, seed), timeout=timeout, threads=1)
        res.raise_first()
        ranks = res.results
        x = ranks[0].pop("x")
        for r in ranks[1:]:
            r.pop("x")
        if reference is None:
            reference = x
        diff = float((x - reference).abs().max() / reference.abs().max())
        rows.append({"processes": size, "seconds_per_iteration": ranks[0]["seconds_per_iteration"],
                     "allreduce_seconds": ranks[0]["allreduce_seconds"],
                     "operator_mib_per_rank": [r["operator_bytes"] / 2 ** 20 for r in ranks],
                     "peak_rss_mib_per_rank": [r["peak_rss_mib"] - r["base_rss_mib"] for r in ranks],
                     "rows_per_rank": [r["rows"] for r in ranks], "rel_diff_vs_first": diff,
                     "all_times": ranks[0]["all_times"]})
        print(f"N = {size}: {rows[-1]['seconds_per_iteration'] * 1e3:.1f} ms/iteration, operator "
              f"{max(rows[-1]['operator_mib_per_rank']):.1f} MiB/rank, peak RSS +"
              f"{max(rows[-1]['peak_rss_mib_per_rank']):.1f} MiB/rank, diff {diff:.1e}", flush=True)
    t1 = rows[0]["seconds_per_iteration"]
    mem1 = max(rows[0]["peak_rss_mib_per_rank"])
    op1 = max(rows[0]["operator_mib_per_rank"])
    for r in rows:
        r["speedup"] = t1 / r["seconds_per_iteration"]
        r["peak_rss_fraction"] = max(r["peak_rss_mib_per_rank"]) / mem1 if mem1 > 0 else float("nan")
        r["operator_fraction"] = max(r["operator_mib_per_rank"]) / op1
        # the goal: 1/N of the measurement-sized part (here: all but the replicated n-sized state, bounded
        # above by the single-process operator and arrays) plus the replicated part
        r["memory_goal_fraction"] = (1.0 / r["processes"] + (mem1 - op1) / mem1 * (1 - 1.0 / r["processes"])
                                     if mem1 > 0 else float("nan"))   # a problem too small to measure: NaN
    return {"problem": {"operator": "ShardedGaussian (complex, float64, stored)", "n": n, "m": int(round(delta * n)),
                        "delta": delta, "algorithm": "raf", "iterations": iters,
                        "repeats": repeats, "seed": seed, "backend": "gloo", "threads_per_process": 1},
            "machine": {"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                        "platform": platform.platform(), "torch": torch.__version__, "python": sys.version.split()[0]},
            "rows": rows}


def markdown(res: dict) -> str:
    p, mach = res["problem"], res["machine"]
    lines = [f"# Sharded reconstruction: memory per rank and strong scaling (gloo, CPU)", "",
             f"{p['operator']}, n = {p['n']}, m = {p['m']} (δ = {p['delta']:g}), {p['algorithm']} for "
             f"{p['iterations']} iterations from a fixed start, median of {p['repeats']} runs; "
             f"{p['threads_per_process']} thread per process. Machine: {mach['cpu_count']} CPUs, load average "
             f"{', '.join(f'{v:.1f}' for v in mach['load_average'])} at the end (shared), torch {mach['torch']}.", "",
             "| processes | ms / iteration | speedup t(1)/t(N) | all-reduce of ∇f (ms) | operator MiB / rank "
             "| peak RSS MiB / rank | RSS fraction of 1 process | goal (1/N + replicated) | max rel. diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['processes']} | {r['seconds_per_iteration'] * 1e3:.1f} | {r['speedup']:.2f} | "
                     f"{r['allreduce_seconds'] * 1e3:.3f} | {max(r['operator_mib_per_rank']):.1f} | "
                     f"{max(r['peak_rss_mib_per_rank']):.1f} | {r['peak_rss_fraction']:.2f} | "
                     f"{r['memory_goal_fraction']:.2f} | {r['rel_diff_vs_first']:.1e} |")
    lines += ["", "Operator MiB: this rank's rows of A (exactly 1/N of the whole matrix). Peak RSS: the process's "
              "peak resident memory above its size after importing torch (A, y, solver arrays, replicated n-sized "
              "state, the gloo buffers). The goal column is 1/N of the single-process peak's measurement-sized part "
              "(the operator) plus its remainder, replicated. Speedup is bounded by the idle cores: with two cores "
              "shared by other jobs it is an honest lower bound, not the algorithm's.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--delta", type=float, default=8.0)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    procs = [int(p) for p in args.procs.split(",")]
    res = run(args.n, args.delta, args.iters, args.repeats, procs, args.seed, args.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(res, indent=2))
    (out / "distributed.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
