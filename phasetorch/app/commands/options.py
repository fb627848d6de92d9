"""What the command modules share: the parser class, option types, and the option groups of several commands.

* :class:`Parser` — an ``argparse.ArgumentParser`` whose errors raise :class:`~phasetorch.app.common.UsageError`
  (one ``phasetorch: error: …`` line, exit status 2) instead of printing usage and exiting;
* option types (argparse ``type=``): :func:`positive_int`, :func:`nonneg_int`, :func:`positive_float`,
  :func:`nonneg_float` (checked by :func:`phasetorch.tensors.check_int` / :func:`~phasetorch.tensors.check_number`),
  :func:`size`, :func:`noise_spec`, :func:`device`;
* :func:`common_options` — ``--quiet``, ``--debug``, ``--threads`` (every command repeats them);
* :func:`problem_options` — the measurement model of ``simulate`` and ``reconstruct``, turned into
  :func:`phasetorch.app.jobs.simulate_problem`'s keyword arguments by :func:`problem_kwargs`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Tuple

from ...tensors import check_int, check_number, parse_dtype
from ..common import UsageError, resolve_device
from ..jobs import MODELS, NOISE_HELP, parse_noise

__all__ = ["Parser", "positive_int", "nonneg_int", "positive_float", "nonneg_float", "size", "device",
           "noise_spec", "common_options", "problem_options", "problem_kwargs"]


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else None
        hint = f" (see 'phasetorch {sub} --help')" if sub else " (see 'phasetorch --help')"
        raise UsageError(message + hint)


def _checked(convert: Callable[[str], Any], check: Callable[[Any], Any], what: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``check(convert(text))``, rejected with "expected WHAT" on a ValueError."""
    def parse(text: str):
        try:
            return check(convert(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    parse.__name__ = what
    return parse


positive_int = _checked(int, lambda v: check_int(v, "value", 1), "a positive integer")
nonneg_int = _checked(int, lambda v: check_int(v, "value", 0), "a non-negative integer")
positive_float = _checked(float, lambda v: check_number(v, "value", 0.0, strict=True), "a positive number")
nonneg_float = _checked(float, lambda v: check_number(v, "value", 0.0), "a number ≥ 0")


def size(text: str) -> Tuple[int, ...]:
    """``64`` (square: centre-crop then resize) or ``64x48`` (H×W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        vals = tuple(check_int(int(p), "size", 1) for p in parts)
        if len(vals) not in (1, 2):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 64 or 64x48, got {text!r}") from None
    return vals


def noise_spec(text: str) -> str:
    """A ``--noise`` specification (checked by :func:`phasetorch.app.jobs.parse_noise`), kept as text."""
    try:
        parse_noise(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("bad --noise ", "")) from None
    return text.strip()


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether that device exists is checked when the job starts)."""
    t = text.strip().lower()
    if t == "cpu":
        return t
    if t == "cuda" or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


THREADS_HELP = ("CPU threads for torch (default: the idle cores, round(cores − 1-minute load average), at least 1; "
                "OMP_NUM_THREADS is respected)")


def common_options() -> Parser:
    """``--quiet``, ``--debug``, ``--threads`` for the subcommands, with SUPPRESS defaults so that
    ``phasetorch --quiet demo`` is not undone by the subparser's own default."""
    common = Parser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or chatter (results still print)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    common.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS, help=THREADS_HELP)
    return common


def problem_options() -> Parser:
    """The measurement-model options shared by ``simulate`` and ``reconstruct``."""
    problem = Parser(add_help=False)
    g = problem.add_argument_group("measurement model")
    g.add_argument("--model", choices=MODELS, default="cdp",
                   help="cdp: coded diffraction (default); gaussian: dense complex Gaussian; structured: "
                        "random-phase layers + FFTs; fourier: oversampled Fourier magnitudes (CDI)")
    g.add_argument("--masks", type=positive_int, default=4, help="cdp: number L of masks (δ = L; default 4)")
    g.add_argument("--mask-type", default="octanary", choices=("octanary", "binary", "uniform", "gaussian"),
                   help="cdp: mask family (default octanary)")
    g.add_argument("--oversampling", type=positive_int, default=2,
                   help="structured/fourier: zero-padding factor per axis (default 2)")
    g.add_argument("--layers", type=positive_int, default=2, help="structured: number of layers (default 2)")
    g.add_argument("--delta", type=positive_float, default=6.0, help="gaussian: m/n (default 6)")
    g.add_argument("--noise", type=noise_spec, default="none", help=NOISE_HELP)
    g.add_argument("--size", type=size, default=None, help="resize the object: 64 (centre-crop to a square, then "
                   "64×64) or 64x48 (H×W); default: the image's own size and shape (a .pt object's stored size); "
                   "a line says what was cropped or resized")
    g.add_argument("--phase-image", action="store_true",
                   help="use the image p as the phase of a unit-amplitude object exp(iπp)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision (default float32)")
    g.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:N")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seed of the operator, noise and solver (default 0)")
    return problem


def problem_kwargs(args) -> Dict[str, Any]:
    """:func:`problem_options`' values as keyword arguments of :func:`phasetorch.app.jobs.simulate_problem`."""
    return dict(model=args.model, size=args.size, masks=args.masks, mask=args.mask_type,
                oversampling=args.oversampling, layers=args.layers, delta=args.delta, noise=args.noise,
                phase_image=args.phase_image, seed=args.seed, dtype=parse_dtype(args.dtype),
                device=resolve_device(args.device))
