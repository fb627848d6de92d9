#!/usr/bin/env python3
"""How the CPU heap of a large solve grows while it runs (glibc), iteration by iteration.

    python scripts/heap_study.py [--shape 1024] [--masks 4] [--iters 40] [--presets wf,lbfgs] [--out results]

A coded-diffraction problem (``--shape``², ``--masks`` octanary masks, complex128: 64 MiB per
measurement-sized tensor at 1024², L = 4) is solved from a fixed start (no spectral start, ``tol = 0``) by
each preset, twice: first as a fresh ``reconstruct`` (which returns its freed memory to the system when it
ends, :mod:`phasetorch.allocator`), then once more inside one outer ``allocator.retained()`` block after a
first solve there (the heap that solve grew is kept). A callback records after every iteration glibc's
heap size and its free part (``mallinfo2``) and the process's minor page faults (``getrusage``): a fresh
page of the heap costs one fault when it is first touched. Linux with glibc only.

Writes ``<out>/heap_growth.{json,md}``. What it shows on the 2-core VM of 2026-12-03 is discussed under
"Large problems on the CPU" in the README.
"""

import argparse
import ctypes
import datetime
import platform
import resource
import sys
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


def solve(op, y, x0, preset: str, iters: int, info) -> list:
    """One reconstruct of ``iters`` iterations; per iteration (heap MiB, free MiB, minor faults so far)."""
    rows = []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def record(t, x, state):
        m = info()
        rows.append({"iteration": t, "heap_mib": m.arena / 2**20, "free_mib": m.fordblks / 2**20,
                     "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0})
        return False

    pt.reconstruct(op, y, algorithm=preset, init=x0, max_iter=iters, tol=0, progress=False, seed=0,
                   callback=record)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, default=1024, help="image side")
    ap.add_argument("--masks", type=int, default=4)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--presets", default="wf,lbfgs")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    if not allocator.supported():
        raise SystemExit(f"heap_study needs glibc on Linux: {allocator.status()['reason']}")
    info = _mallinfo()
    shape = (args.shape, args.shape)
    g = torch.Generator().manual_seed(1)
    x = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g,
                                                                                        dtype=torch.float64))
    op = pt.CodedDiffraction(shape, args.masks, seed=0, dtype=torch.float64)
    y = op(x)
    x0 = (x + 0.5 * torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                                  torch.randn(shape, generator=g, dtype=torch.float64))).contiguous()
    runs = {}
    for preset in args.presets.split(","):
        fresh = solve(op, y, x0, preset, args.iters, info)
        with allocator.retained("cpu"):
            solve(op, y, x0, preset, args.iters, info)              # grows the heap the next one keeps
            held = solve(op, y, x0, preset, args.iters, info)
        runs[preset] = {"fresh": fresh, "one retained block, second solve": held}
        for name, rows in runs[preset].items():
            half = rows[len(rows) // 2]
            print(f"{preset:<6} {name:<34} heap {rows[0]['heap_mib']:7.0f} → {rows[-1]['heap_mib']:7.0f} MiB "
                  f"(free {rows[-1]['free_mib']:5.0f}); faults after iteration {half['iteration']}: "
                  f"{rows[-1]['faults'] - half['faults']} in the last {rows[-1]['iteration'] - half['iteration']} "
                  f"iterations")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python scripts/heap_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, glibc {platform.libc_ver()[1]}, torch "
                       f"{torch.__version__}", "shape": list(shape), "masks": args.masks, "iters": args.iters}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pio.save_json({"meta": meta, "runs": runs}, out / "heap_growth.json")
    lines = ["# Heap growth of a large CPU solve (glibc)", "", f"- date: {meta['date']}",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
             f"- problem: CodedDiffraction {shape[0]}×{shape[1]}, L = {args.masks}, complex128, {args.iters} "
             "iterations from a fixed start, tol = 0", "",
             "| preset | solve | heap after iteration 1 | heap at the end (free in it) | faults, first half | "
             "faults, second half |", "|---|---|---|---|---|---|"]
    for preset, by in runs.items():
        for name, rows in by.items():
            h = len(rows) // 2
            lines.append(f"| {preset} | {name} | {rows[0]['heap_mib']:.0f} MiB | {rows[-1]['heap_mib']:.0f} MiB "
                         f"({rows[-1]['free_mib']:.0f}) | {rows[h]['faults']} | {rows[-1]['faults'] - rows[h]['faults']} |")
    lines += ["", "A minor fault is one fresh 4 KiB page; 16384 of them are one 64 MiB tensor's worth."]
    pio.atomic_write(out / "heap_growth.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    print(f"wrote {out / 'heap_growth.json'} and {out / 'heap_growth.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
