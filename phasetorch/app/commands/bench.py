"""``phasetorch bench``: run ``scripts/benchmark.py`` of the source checkout with the given arguments.

Everything after ``bench`` (``--help`` included) goes to the script untouched, so
:func:`phasetorch.app.cli.main` calls :func:`run_bench` before parsing; the subparser registered here
only lists the command in ``phasetorch --help``. The harness itself is ``benchmarks/harness.py``
of the checkout (not installed with the package).
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Sequence

from ... import io as pio
from ..common import CLIError

__all__ = ["register", "benchmark_script", "run_bench"]


def register(sub, common) -> None:
    p = sub.add_parser("bench", help="run scripts/benchmark.py with the given arguments",
                       description="Run the source repository's scripts/benchmark.py; every argument after "
                       "'bench' is passed to it ('phasetorch bench --help' also shows its options).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for scripts/benchmark.py")
    p.set_defaults(handler=None)


def benchmark_script() -> Path:
    """``scripts/benchmark.py`` of the source repository this package was loaded from."""
    return pio.REPO_ROOT / "scripts" / "benchmark.py"


def run_bench(argv: Sequence[str], script: Path) -> int:
    """Run ``script`` as ``__main__`` with ``argv``; its exit status is the command's."""
    if list(argv) in (["-h"], ["--help"]):
        print("usage: phasetorch bench [ARGS ...]\n\nRun the source repository's scripts/benchmark.py; every "
              "argument after 'bench' is passed to it.\n")
        if not script.is_file():
            print(f"(the script {script} is not present in this copy of phasetorch)")
            return 0
        print("Options of scripts/benchmark.py:", flush=True)
    if not script.is_file():
        raise CLIError(f"the benchmark script {script} is not present: 'phasetorch bench' needs a source checkout "
                       f"of phasetorch (git clone, then pip install -e .)")
    old_argv = sys.argv
    sys.argv = [str(script)] + list(argv)
    os.environ["PHASETORCH_BENCH_VIA_CLI"] = "1"          # the script's usage then says 'phasetorch bench'
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(f"phasetorch: error: {code}", file=sys.stderr)
        return 1
    finally:
        sys.argv = old_argv
        os.environ.pop("PHASETORCH_BENCH_VIA_CLI", None)
    return 0
