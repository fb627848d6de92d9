r"""The ``phasetorch`` command: the parser, error handling and dispatch to one module per subcommand.

=====================  ==========================================================================
subcommand             job (module in :mod:`phasetorch.app.commands`)
=====================  ==========================================================================
``demo``               reconstruct a bundled image from noisy coded-diffraction data, and overlay
                       the DMFT prediction on a spectral-initialised regularized-WF simulation
``simulate``           image → measurements.pt + operator.pt (the pair ``reconstruct`` reads)
``reconstruct``        image (or saved measurements + operator) → reconstruction, figures, log
``train``              batched multi-seed Gaussian simulation in the theory's units → log.json/csv
``theory``             solve the DMFT (optionally for the settings of a log) → prediction + overlay
``sweep``              success rate vs δ for several algorithms (resumable) → results.json + PNG
``bench``              run ``scripts/benchmark.py`` of the source repository with the given args
=====================  ==========================================================================

Every error (missing file, unreadable image, bad option value, a library ``ValueError``) is one
line ``phasetorch: error: …`` on stderr and a non-zero exit status (2 for usage errors, 1 for
failures of the job itself); ``--debug`` (or ``PHASETORCH_DEBUG=1``) shows the traceback instead.
Figures use matplotlib's headless Agg backend. The jobs themselves are functions of
:mod:`phasetorch.app.jobs` (importable for scripts); this module only parses and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

import torch

from .. import __version__
from .. import distributed as dist
from .. import io as pio
from ..errors import DivergenceError
from .commands import COMMANDS
from .commands.bench import benchmark_script, run_bench
from .commands.options import THREADS_HELP, Parser, common_options, positive_int
from .common import THREAD_ENV, CLIError, Echo, UsageError, choose_threads

__all__ = ["main", "main_with_defaults", "build_parser", "benchmark_script", "apply_threads"]

#: What a job may raise that is the user's to fix: one error line, exit status 1.
JOB_ERRORS = (CLIError, ValueError, TypeError, OSError, RuntimeError, KeyError, ArithmeticError, DivergenceError)


def build_parser() -> argparse.ArgumentParser:
    """The ``phasetorch`` parser: top-level options, then one subparser per module of :data:`COMMANDS`."""
    top = Parser(add_help=False)
    top.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter (results still print)")
    top.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    top.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    parser = Parser(prog="phasetorch", description="Phase retrieval in PyTorch: reconstruct images from intensity "
                    "measurements, simulate, and compare with the DMFT theory.", parents=[top])
    parser.add_argument("--version", action="version", version=f"phasetorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common = common_options()
    for command in COMMANDS:
        command.register(sub, common)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)


def _guarded(job: Callable[[], int], debug: bool) -> int:
    """Run ``job``; turn any exception into one ``phasetorch: error: …`` line and an exit status."""
    try:
        return int(job() or 0)
    except KeyboardInterrupt:
        print("phasetorch: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        if debug:
            raise
        print(f"phasetorch: error: {exc}", file=sys.stderr)
        return 2
    except JOB_ERRORS as exc:
        if debug:
            raise
        print(f"phasetorch: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug rather than a user error: still one line, with the way to the traceback
        if debug:
            raise
        print(f"phasetorch: error: internal error ({exc.__class__.__name__}: {_one_line(exc)}); rerun with "
              f"--debug for the traceback and please report it", file=sys.stderr)
        return 1


def main_with_defaults(command: str, defaults: dict, argv: Sequence[str], given: Sequence[str] = ()) -> int:
    """Run ``phasetorch <command>`` with ``defaults`` ({"--flag": "value"}) for every flag that
    ``argv`` (or ``given``) does not set; the scripts in ``scripts/`` are this with their own defaults."""
    argv = list(argv)
    present = {a.split("=")[0] for a in argv if a.startswith("--")} | set(given)
    extra = [t for k, v in defaults.items() if k not in present for t in (k, v)]
    return main([command] + extra + argv)


def apply_threads(threads: Optional[int], echo: Echo, verbose: bool = False) -> int:
    """Set torch's intra-op threads: ``threads`` (``--threads``) if given; else leave a user's
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` alone; else :func:`~phasetorch.app.common.choose_threads`
    (the idle cores). Returns the count in force; ``verbose`` (``--debug``) says why."""
    if threads:
        torch.set_num_threads(int(threads))
    elif not any(os.environ.get(v) for v in THREAD_ENV):
        n, why = choose_threads()
        torch.set_num_threads(n)
        if verbose:
            echo(f"threads: {why} (--threads N to choose)")
    return torch.get_num_threads()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 success, 1 job failure, 2 usage error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("PHASETORCH_DEBUG", "") not in ("", "0")
    # `bench` passes everything after it to the script untouched (including --help).
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "bench":
        return _guarded(lambda: run_bench(argv[first + 1:], benchmark_script()), debug or "--debug" in argv[:first])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"phasetorch: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 2
    pio.use_agg()
    echo = Echo(getattr(args, "quiet", False))
    apply_threads(getattr(args, "threads", None), echo, getattr(args, "debug", False))
    if getattr(args, "distributed", False):
        return _guarded(lambda: run_distributed(args, echo, argv), debug or getattr(args, "debug", False))
    return _guarded(lambda: args.handler(args, echo), debug or getattr(args, "debug", False))


class RankEcho(Echo):
    """The printer of the ranks other than 0 in a distributed run: silent (rank 0 prints for the job)."""

    def __call__(self, msg: str) -> None:
        return None

    def result(self, msg: str) -> None:
        return None

    def warn(self, msg: str) -> None:
        return None


def run_distributed(args, echo: Echo, argv: Sequence[str]) -> int:
    """A command with ``--distributed``: join the process group (``torchrun``'s environment; gloo on
    CPU, NCCL for ``--device cuda``), check that every rank got the same command line, run the job on
    every rank — rank 0 prints, shows progress and writes; the others are silent and write nothing —
    and leave the group. A dead or silent rank ends the job everywhere after ``--dist-timeout``."""
    device = getattr(args, "device", "cpu") or "cpu"
    with dist.process_group(timeout=float(getattr(args, "dist_timeout", dist.DEFAULT_TIMEOUT)),
                            device="cuda" if str(device).startswith("cuda") else "cpu"):
        dist.check_same(list(argv), "command line")
        if not dist.is_main():
            args.quiet, args.write = True, False
            echo = RankEcho(quiet=True)
        return int(args.handler(args, echo) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
