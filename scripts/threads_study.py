"""How the thread count interacts with machine load: the measurement behind the CLI's default.

For each background load (0, 1, … busy processes, each a pure-Python spin loop pinned to nothing)
and each thread count (1 … cores), time the same reconstructions the CLI runs:
a 64×64 coded-diffraction image (4 masks, auto) and a complex Gaussian n = 1024, m = 8n (lbfgs).
Prints a table and writes results/threads.{json,md}. The CLI's rule (``phasetorch.app.common.choose_threads``):
threads = max(1, min(cores, round(cores − load average))).

    python scripts/threads_study.py [--repeats 3] [--max-load 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch

import phasetorch as pt
from phasetorch.app.common import choose_threads
from phasetorch.io import save_json
from phasetorch.logs import write_atomic


def spin(stop) -> None:
    while not stop.is_set():
        pass


def problems():
    img = pt.io.load_image(pt.io.bundled("grace_hopper.png"), size=64)
    cdp = pt.CodedDiffraction((64, 64), 4, seed=0)
    gau = pt.GaussianMeasurement(1024, 8192, complex=True, seed=0)
    xg = torch.randn(1024, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    return {"CDP 64² L=4, auto": (cdp, cdp(img.to(cdp.signal_dtype)), "auto"),
            "Gaussian n=1024 m=8n c64, lbfgs": (gau, gau(xg), "lbfgs")}


def time_one(op, y, alg, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pt.reconstruct(op, y, alg, progress=False, seed=0)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-load", type=int, default=None, help="largest number of busy processes (default: cores)")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    max_load = cores if args.max_load is None else args.max_load
    probs = problems()
    rows = []
    for load in range(max_load + 1):
        stop = mp.Event()
        procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(load)]
        for p in procs:
            p.start()
        time.sleep(1.0)
        try:
            for name, (op, y, alg) in probs.items():
                times = {}
                for th in range(1, cores + 1):
                    torch.set_num_threads(th)
                    times[th] = time_one(op, y, alg, args.repeats)
                best = min(times, key=times.get)
                rule = max(1, min(cores, round(cores - load)))
                rows.append({"busy_processes": load, "problem": name, "seconds": times, "best_threads": best,
                             "rule_threads": rule, "rule_over_best": times[rule] / times[best],
                             "all_cores_over_best": times[cores] / times[best]})
                print(f"load {load}  {name:34s} " + "  ".join(f"{t} thr {s:.3f} s" for t, s in times.items())
                      + f"  best {best}, rule {rule} ({times[rule] / times[best]:.2f}× best)", flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join()
    out = Path(args.out)
    meta = {"machine": platform.processor() or platform.machine(), "cores": cores, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": "python scripts/threads_study.py " + " ".join(argv or sys.argv[1:])}
    save_json({"meta": meta, "rows": rows}, out / "threads.json")
    lines = [f"# Threads vs load ({meta['date']}, {cores} cores, torch {meta['torch']})", "",
             f"`{meta['command'].strip()}` — best of {args.repeats} per cell; background load = busy spin processes.", "",
             "| busy processes | problem | " + " | ".join(f"{t} thread(s) [s]" for t in range(1, cores + 1))
             + " | best | rule | rule / best | all cores / best |",
             "|---|---|" + "---|" * cores + "---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['busy_processes']} | {r['problem']} | " + " | ".join(f"{r['seconds'][t]:.3f}" for t in range(1, cores + 1))
                     + f" | {r['best_threads']} | {r['rule_threads']} | {r['rule_over_best']:.2f}× | {r['all_cores_over_best']:.2f}× |")
    write_atomic(out / "threads.md", lambda fh: fh.write("\n".join(lines) + "\n"))
    print(f"wrote {out / 'threads.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
