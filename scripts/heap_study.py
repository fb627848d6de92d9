#!/usr/bin/env python3
"""The memory and page faults of a large CPU solve, iteration by iteration, with and without the CPU cache.

    python scripts/heap_study.py [--shape 1024] [--masks 4] [--iters 40] [--presets wf,lbfgs] [--out results]

A coded-diffraction problem (``--shape``², ``--masks`` octanary masks, complex128: 64 MiB per
measurement-sized tensor at 1024², L = 4) is solved from a fixed start (no spectral start, ``tol = 0``) by
each preset in three ways (:mod:`phasetorch.allocator`):

- **fresh** — a plain ``reconstruct``, which installs the caching allocator for torch's CPU tensors while it
  runs (the default) and gives everything back when it ends;
- **fresh, PHASETORCH_CPU_CACHE=0** — the same with glibc's heap alone (the malloc settings kept);
- **one retained block, second solve** — the solve repeated inside one outer ``allocator.retained()`` block
  after a first solve there (the pages that solve faulted in are kept).

A callback records after every iteration the process's resident memory (``/proc/self/statm``), glibc's
heap (``mallinfo2``), the cache's mapped bytes, the minor page faults (``getrusage``: a fresh 4 KiB page
costs one fault when it is first touched) and the time. Each way runs in a fresh process (a process's
earlier solves leave its heap as they found it only in part), after a two-iteration warm-up solve.
Linux with glibc only.

Writes ``<out>/heap_growth.{json,md}``. What it shows is discussed under "Large problems on the CPU" in the
README.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
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

import phasetorch as pt  # noqa: E402
from phasetorch import allocator  # noqa: E402
from phasetorch import io as pio  # noqa: E402

WAYS = ("fresh", "fresh, PHASETORCH_CPU_CACHE=0", "one retained block, second solve")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo():
    libc = ctypes.CDLL(None)
    try:
        fn = libc.mallinfo2
    except AttributeError as err:
        raise SystemExit(f"heap_study needs glibc ≥ 2.33 (mallinfo2): {err}") from None
    fn.restype = _MallInfo2
    return fn


def _resident_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def solve(op, y, x0, preset: str, iters: int, info) -> list:
    """One reconstruct of ``iters`` iterations; per iteration: memory (MiB), faults so far, seconds so far."""
    rows = []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()

    def record(t, x, state):
        m = info()
        st = allocator.cache_stats() if allocator.status()["cache"]["installed"] else None
        rows.append({"iteration": t, "seconds": time.perf_counter() - t0, "resident_mib": _resident_mib(),
                     "heap_mib": m.arena / 2**20, "heap_free_mib": m.fordblks / 2**20,
                     "cache_mib": None if st is None else (st["in_use_bytes"] + st["cached_bytes"]) / 2**20,
                     "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0})
        return False

    pt.reconstruct(op, y, algorithm=preset, init=x0, max_iter=iters, tol=0, progress=False, seed=0,
                   callback=record)
    return rows


def one_way(args, preset: str, way: str) -> dict:
    """Run one (preset, way) in this process (the parent sets the environment)."""
    info = _mallinfo()
    shape = (args.shape, args.shape)
    g = torch.Generator().manual_seed(1)
    cx = lambda: torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),  # noqa: E731
                               torch.randn(shape, generator=g, dtype=torch.float64))
    x = cx()
    op = pt.CodedDiffraction(shape, args.masks, seed=0, dtype=torch.float64)
    y = op(x)
    x0 = (x + 0.5 * cx()).contiguous()
    solve(op, y, x0, preset, 2, info)                              # warm-up: FFT plans, kernels, imports
    if way == WAYS[2]:
        with allocator.retained("cpu"):
            solve(op, y, x0, preset, args.iters, info)              # faults in the pages the next one keeps
            rows = solve(op, y, x0, preset, args.iters, info)
    else:
        rows = solve(op, y, x0, preset, args.iters, info)
    return {"rows": rows, "peak_resident_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def summary(rows: list) -> dict:
    h = len(rows) // 2
    per_it = [b["seconds"] - a["seconds"] for a, b in zip(rows[h:], rows[h + 1:])]
    return {"resident_after_1": rows[0]["resident_mib"], "resident_end": rows[-1]["resident_mib"],
            "faults_first_half": rows[h]["faults"], "faults_second_half": rows[-1]["faults"] - rows[h]["faults"],
            "first_iteration_s": rows[0]["seconds"], "total_s": rows[-1]["seconds"],
            "median_second_half_s": statistics.median(per_it) if per_it else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=1024, help="image side")
    ap.add_argument("--masks", type=int, default=4)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--presets", default="wf,lbfgs")
    ap.add_argument("--out", default="results")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "WAY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not allocator.supported():
        raise SystemExit(f"heap_study needs glibc on Linux: {allocator.status()['reason']}")
    if args.child:
        print(json.dumps(one_way(args, args.child[0], WAYS[int(args.child[1])])))
        return 0
    if not allocator.cache_available():
        raise SystemExit(f"heap_study compares with the CPU cache, which is unavailable: "
                         f"{allocator.status()['cache']['reason']}")
    base = [sys.executable, str(Path(__file__).resolve()), "--shape", str(args.shape), "--masks",
            str(args.masks), "--iters", str(args.iters)]
    runs = {}
    for preset in args.presets.split(","):
        runs[preset] = {}
        for k, way in enumerate(WAYS):
            env = {k_: v for k_, v in os.environ.items() if k_ not in (allocator.CACHE_SWITCH, allocator.ENV_SWITCH)}
            if "PHASETORCH_CPU_CACHE=0" in way:
                env[allocator.CACHE_SWITCH] = "0"
            res = subprocess.run([*base, "--child", preset, str(k)], env=env, capture_output=True, text=True,
                                 check=True)
            run = json.loads(res.stdout.strip().splitlines()[-1])
            run["summary"] = summary(run["rows"])
            runs[preset][way] = run
            s = run["summary"]
            print(f"{preset:<6} {way:<34} resident {s['resident_after_1']:6.0f} → {s['resident_end']:6.0f} MiB "
                  f"(peak {run['peak_resident_mib']:6.0f}); faults {s['faults_first_half']:7d} + "
                  f"{s['faults_second_half']:6d}; {s['total_s']:.2f} s, second half "
                  f"{1e3 * s['median_second_half_s']:.1f} ms/iteration", flush=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python scripts/heap_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, glibc "
                       f"{platform.libc_ver()[1]}, torch {torch.__version__}",
            "shape": [args.shape, args.shape], "masks": args.masks, "iters": args.iters}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pio.save_json({"meta": meta, "runs": runs}, out / "heap_growth.json")
    lines = ["# Memory and page faults of a large CPU solve", "", f"- date: {meta['date']}",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
             f"- problem: CodedDiffraction {args.shape}×{args.shape}, L = {args.masks}, complex128, {args.iters} "
             "iterations from a fixed start, tol = 0; each row in its own process after a 2-iteration warm-up",
             "",
             "| preset | solve | resident after iteration 1 | resident at the end | peak resident | faults, first "
             "half | faults, second half | total | median iteration, second half |",
             "|---|---|---|---|---|---|---|---|---|"]
    for preset, by in runs.items():
        for way, run in by.items():
            s = run["summary"]
            lines.append(f"| {preset} | {way} | {s['resident_after_1']:.0f} MiB | {s['resident_end']:.0f} MiB | "
                         f"{run['peak_resident_mib']:.0f} MiB | {s['faults_first_half']} | "
                         f"{s['faults_second_half']} | {s['total_s']:.2f} s | "
                         f"{1e3 * s['median_second_half_s']:.1f} ms |")
    lines += ["", "A minor fault is one fresh 4 KiB page; 16384 of them are one 64 MiB tensor's worth. Resident "
              "memory includes the problem itself (the truth, the data, the operator's masks) and the warm-up's "
              "leftovers; times come from a shared 2-core VM, so compare rows of one run only."]
    pio.atomic_write(out / "heap_growth.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    print(f"wrote {out / 'heap_growth.json'} and {out / 'heap_growth.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
