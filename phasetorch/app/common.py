"""What every part of the application layer shares: the user-facing errors, the printer, devices, number text.

* :class:`CLIError` — a failure of a job the user can fix (printed by the command as one line
  ``phasetorch: error: …``, exit status 1); :class:`UsageError` — a bad option value (exit status 2).
* :class:`Echo` — prints chatter unless quiet, result lines always, warnings (stderr) always.
* :func:`resolve_device` — ``cpu`` / ``cuda`` / ``cuda:N`` → :class:`torch.device`, refusing an absent GPU.
* :func:`fmt_value` — a number, None or a per-sample list as short text (``n/a``, ``inf``, ``[a, b]``).
"""

from __future__ import annotations

import math
import sys

import torch

__all__ = ["CLIError", "UsageError", "Echo", "resolve_device", "fmt_value"]


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


def resolve_device(name: str) -> torch.device:
    """A torch.device, with a clear error when CUDA is asked for but unavailable."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CLIError("CUDA is not available on this machine; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"no device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    return torch.device("cpu")


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
