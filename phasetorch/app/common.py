"""What every part of the application layer shares: the user-facing errors, the printer, devices, number text.

* :class:`CLIError` — a failure of a job the user can fix (printed by the command as one line
  ``phasetorch: error: …``, exit status 1); :class:`UsageError` — a bad option value (exit status 2).
* :class:`Echo` — prints chatter unless quiet, result lines always, warnings (stderr) always.
* :func:`resolve_device` — ``cpu`` / ``cuda`` / ``cuda:N`` → :class:`torch.device`, refusing an absent GPU.
* :func:`fmt_value` — a number, None or a per-sample list as short text (``n/a``, ``inf``, ``[a, b]``).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional, Tuple

import torch

from ..tensors import as_device

__all__ = ["CLIError", "UsageError", "Echo", "resolve_device", "fmt_value", "choose_threads", "usable_cores", "THREAD_ENV"]


class CLIError(Exception):
    """A user-facing failure: printed as one ``phasetorch: error: …`` line."""


class UsageError(CLIError):
    """Bad command-line syntax or option value (exit status 2)."""


class Echo:
    """Prints informational lines unless quiet; ``result`` lines always."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream or sys.stdout, flush=True)

    def result(self, msg: str) -> None:
        print(msg, file=self.stream or sys.stdout, flush=True)

    def warn(self, msg: str) -> None:
        """``warning: msg`` on stderr, quiet or not."""
        print(f"warning: {msg}", file=sys.stderr, flush=True)


#: environment variables with which a user already fixed the thread count (then the CLI leaves it alone)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(cores: Optional[int] = None, load: Optional[float] = None) -> Tuple[int, str]:
    """The CLI's default intra-op thread count and why: ``max(1, min(cores, round(cores − load)))``.

    ``load`` is the 1-minute load average (:func:`os.getloadavg`: processes running or waiting),
    ``cores`` the usable cores. On an idle machine that is every core (torch's own default); on a
    busy one only the idle cores, because torch's threads synchronise at every operation and one
    descheduled thread stalls the rest: measured (scripts/threads_study.py, results/threads.md) on
    this 2-core machine with one busy process, 2 threads ran a 64² CDP reconstruction 2.4× and a
    Gaussian n = 1024 L-BFGS run 1.7× slower than 1 thread (idle: equal). ``--threads N`` (or ``OMP_NUM_THREADS``) overrides this.
    """
    cores = usable_cores() if cores is None else max(1, int(cores))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            return cores, f"{cores} threads (all usable cores; the load average is unknown)"
    n = max(1, min(cores, int(round(cores - float(load)))))
    return n, f"{n} of {cores} cores (1-minute load average {float(load):.2f})"


def resolve_device(name: str) -> torch.device:
    """A torch.device (:func:`phasetorch.tensors.as_device`), with a clear error when CUDA is asked for
    but unavailable."""
    try:
        return as_device(name, "--device")
    except ValueError as err:
        raise CLIError(str(err)) from None


def fmt_value(v, fmt: str = "{:.3g}") -> str:
    """``v`` as text: a one-element list as its element, a list as ``[a, b]``, None as ``n/a``, ∞ as ``inf``."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return fmt_value(v[0], fmt)
        return "[" + ", ".join(fmt_value(u, fmt) for u in v) + "]"
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return fmt.format(v)
