#!/usr/bin/env python
r"""Randomised robustness fuzz of phasetorch's public API and its command line.

Throws a broad, seeded set of bad or edge inputs at the library and the ``phasetorch`` command and
prints one row per input class::

    input class | tried | clear errors | unclear | silent garbage | accepted

* **clear error** — a ``ValueError``/``TypeError`` (also a ``FileNotFoundError`` for a missing file, and
  the library's documented ``DivergenceError`` for a step that blows up) whose message names the
  offending argument or the fix (each case lists the words that count as naming it); for the command
  line: a non-zero exit status with exactly one ``phasetorch: error: …`` line on stderr, no traceback,
  naming the option or the file.
* **unclear** — any other exception (a ``RuntimeError`` from inside torch, ``KeyError``, ``IndexError``,
  ``AttributeError``, ``JSONDecodeError``, ``MemoryError``, …), a message that does not name the
  argument, a refusal that came only after seconds of allocating (huge sizes must be refused at once),
  a traceback or an "internal error" line from the command, a process killed (out of memory), or a
  hang (no answer within the case's timeout: the case is killed and counted here).
* **silent garbage** — a return without error whose result is NaN/inf, of the wrong shape, an unusable
  object (an operator whose products fail or give NaN), or a reconstruction of an *invalid* input
  reported ``converged`` with a relative error > 0.5 against the known truth. Such a return counts as a
  clear error instead when the library warned (a ``UserWarning`` naming the argument, as for a clear
  error): input that is legal but suspicious, such as signed amplitudes passed as intensities.
* **accepted** — a return with a sane result: a valid edge input handled, or an invalid input
  tolerated (those are listed separately under the table, they are not counted as failures).

Input classes: ``operators`` (the six constructors: wrong types, strings, floats for ints, negative
and zero sizes, half dtypes, bad seeds), ``sizes`` (configurations needing > 64 GB, which must be
refused quickly and before allocating), ``intensities`` (y for ``reconstruct``/``spectral_init``),
``reconstruct`` (its arguments), ``noise``, ``losses``, ``metrics``, ``theory`` (dmft, fixed_point,
spectral_overlap/threshold/limits, simulate), ``files`` (loaders on missing, empty, truncated,
directory, FIFO, foreign and tampered files) and ``cli`` (``phasetorch`` subcommands with bad options,
files and sizes).

Every case runs in a worker process (forked, one per class, ``--jobs`` at a time) whose address space
is capped with ``RLIMIT_AS`` at its size after ``import phasetorch`` plus ``--memory-gib`` (default 3),
so nothing can allocate gigabytes. The parent kills a worker that does not answer within a case's
timeout (the case is a hang) or that dies, and goes on with the next case in a fresh worker.
Command-line cases run ``phasetorch.app.cli.main`` in a forked child (stdout/stderr captured, killed at
its timeout); every 8th of them runs the real ``python -m phasetorch`` subprocess instead.

The draws are reproducible: ``--seed`` fixes every case (case i of a class comes from generator family
i mod F of that class, in a seed-shuffled order, with seed-drawn arguments). ``--count N`` cases per
class. The table is printed, written to ``--markdown`` (default ``results/fuzz.md``) with the unclear
and garbage cases (input → message → where it was raised) grouped under it, and, with ``--json``, as
JSON. The exit status is always 0: this is a report.

    python scripts/fuzz.py                      # the full fuzz (≈ 3 minutes on 2 cores)
    python scripts/fuzz.py --count 2 --seed 0 --json /tmp/fuzz.json   # the smoke run of the tests
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import itertools
import json
import math
import multiprocessing as mp
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

torch.set_num_threads(1)

import phasetorch as pt  # noqa: E402
from phasetorch import io as pio  # noqa: E402
from phasetorch import losses as L  # noqa: E402
from phasetorch import metrics as M  # noqa: E402
from phasetorch.logs import TrainingLog  # noqa: E402
from phasetorch.theory import (Prediction, dmft, fixed_point, simulate, spectral_limits,  # noqa: E402
                               spectral_overlap, spectral_threshold)

GIB = 2 ** 30
HUGE_BYTES = 64 * GIB
NAN, INF = float("nan"), float("inf")
CLASSES = ("operators", "sizes", "intensities", "reconstruct", "noise", "losses", "metrics", "theory", "files",
           "cli")
OUTCOMES = ("clear", "unclear", "garbage", "accepted")
DEFAULT_COUNT = 100
#: the timeout of a huge-size case (it must be refused within 5 s; past this it counts as a hang)
SIZES_TIMEOUT = 12.0
#: set by main() before the workers fork; each worker makes its fixtures below it
BASE_TMP: Optional[Path] = None


# ====================================================================================== cases
@dataclass
class Case:
    """One input: ``run()`` executes it; ``names`` are regexes of which one must occur in a clear error's
    message; ``invalid`` says whether the input is wrong (else a valid edge input that may be accepted);
    ``check(result)`` returns why a returned result is garbage (None when sane); ``judge(result)`` replaces
    the exception logic (command-line cases); ``quick``: a refusal slower than this many seconds is unclear."""

    cls: str
    family: str
    label: str
    run: Callable[[], Any]
    names: Tuple[str, ...] = ()
    invalid: bool = True
    check: Optional[Callable[[Any], Optional[str]]] = None
    judge: Optional[Callable[[Any], Tuple[str, str, bool]]] = None
    timeout: float = 30.0
    quick: Optional[float] = None


FAMILIES: Dict[str, List[Callable[[random.Random], Case]]] = {c: [] for c in CLASSES}


def family(cls: str, limit: Optional[int] = None):
    """Register a case generator ``fn(rng) -> dict of Case fields`` for input class ``cls``; ``limit`` caps how
    many of a class's cases it makes (for slow families whose failure repeats: the other families fill in)."""
    def deco(fn):
        def make(rng: random.Random) -> Case:
            fields = fn(rng)
            if cls == "sizes":          # a huge size must be refused at once: a slow case is cut short
                fields.setdefault("timeout", SIZES_TIMEOUT)
            return Case(cls=cls, family=fn.__name__, **fields)
        make.__name__ = fn.__name__
        make.limit = limit
        FAMILIES[cls].append(make)
        return fn
    return deco


def pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    """An element of ``seq``, dealt from a shuffled deck per distinct ``seq`` (stratified: every element comes
    up once before any comes up twice), so a class's draws cover its value pools evenly."""
    decks = rng.__dict__.setdefault("fuzz_decks", {})
    key = repr(list(seq))
    deck = decks.get(key)
    if not deck:
        deck = list(range(len(seq)))
        rng.shuffle(deck)
        decks[key] = deck
    return seq[deck.pop()]


def show(v: Any) -> str:
    """A short readable form of an argument for the case label."""
    if isinstance(v, torch.Tensor):
        dev = "" if v.device.type == "cpu" else f", device={v.device.type}"
        return f"tensor{tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}{dev}"
    if isinstance(v, torch.dtype):
        return str(v)
    if callable(v) and getattr(v, "__name__", "") == "<lambda>":
        return getattr(v, "fuzz_label", "lambda")
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1e6:
        return f"{v:.0e}"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def call(name: str, *args: Any, **kw: Any) -> str:
    parts = [show(a) for a in args] + [f"{k}={show(v)}" for k, v in kw.items()]
    return f"{name}({', '.join(parts)})"


def fn_label(f: Callable, text: str) -> Callable:
    f.fuzz_label = text
    return f


def word(name: str) -> str:
    """A regex matching ``name`` as a whole word (``y`` must not match inside ``every``)."""
    return rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])"


BAD_COUNTS = [0, -1, -(2 ** 31), 2.5, 3.0, "8", None, True, NAN, INF, [4], 1j, b"8"]
BAD_DTYPES = [torch.float16, torch.bfloat16, "float16", "half", torch.int32, torch.bool, "float", 32, None,
              torch.complex32, "complex32"]
BAD_SEEDS = [-1, 2.5, "0", 2 ** 64, NAN, [0], True]
BAD_POSITIVE = [-1.0, 0.0, NAN, INF, -INF, "0.1", [0.1], 1j, None, True]
BAD_NONNEG = [-1.0, -1e-12, NAN, INF, -INF, "0.1", [0.1], 1j, None]


# ====================================================================================== checks
def nonfinite(obj: Any, depth: int = 0) -> Optional[str]:
    """Why ``obj`` holds NaN/inf (tensors, floats, dicts, lists, dataclass-like objects), or None."""
    if depth > 4:
        return None
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and obj.numel() and obj.device.type == "cpu" \
                and not bool(torch.isfinite(obj).all()):
            return f"result holds NaN/inf (tensor{tuple(obj.shape)})"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"result is {obj}"
    if isinstance(obj, dict):
        for v in obj.values():
            why = nonfinite(v, depth + 1)
            if why:
                return why
    if isinstance(obj, (list, tuple)):
        for v in obj:
            why = nonfinite(v, depth + 1)
            if why:
                return why
    return None


def check_op(op: Any) -> Optional[str]:
    """A returned operator must be usable: int sizes ≥ 1 and, when small, finite products of the right shapes."""
    if not isinstance(op, pt.MeasurementOperator):
        return f"returned {type(op).__name__}, not an operator"
    n, m = op.n, op.m
    if not (isinstance(n, int) and isinstance(m, int) and n >= 1 and m >= 1):
        return f"operator has n={n!r}, m={m!r}"
    for name, buf in op.named_buffers():
        if buf.numel() <= 2 ** 24 and (buf.is_floating_point() or buf.is_complex()) and \
                not bool(torch.isfinite(buf).all()):
            return f"operator buffer {name!r} holds NaN/inf"
    if n * m > 2 ** 22 or getattr(op, "streamed", False) or n > 2 ** 20 or m > 2 ** 22:
        return None
    shape = tuple(op.signal_shape)
    count = getattr(op, "count", None)
    if count is not None:
        shape = (count,) + shape
    x = torch.ones(shape, dtype=op.signal_dtype, device=op.device)
    try:
        y = op(x)
    except Exception as exc:  # the operator was built but cannot be applied
        return f"operator built but op(x) fails: {type(exc).__name__}: {one_line(exc)}"
    want = ((count,) if count is not None else ()) + tuple(op.measurement_shape)
    if tuple(y.shape) != want:
        return f"op(x) has shape {tuple(y.shape)}, expected {want}"
    if not bool(torch.isfinite(y).all()):
        return "op(x) holds NaN/inf"
    return None


def check_tensor(shape: Optional[Tuple[int, ...]] = None, allow_inf: bool = False, nonneg: bool = False,
                 unit: bool = False) -> Callable[[Any], Optional[str]]:
    def check(t: Any) -> Optional[str]:
        if not isinstance(t, torch.Tensor):
            return f"returned {type(t).__name__}, expected a tensor"
        if shape is not None and tuple(t.shape) != tuple(shape):
            return f"result has shape {tuple(t.shape)}, expected {tuple(shape)}"
        if t.numel() and (t.is_floating_point() or t.is_complex()):
            if bool(torch.isnan(t).any()) or (not allow_inf and not bool(torch.isfinite(t).all())):
                return f"result holds NaN/inf: {t.flatten()[:4].tolist()}"
            if nonneg and bool((t < 0).any()):
                return "result holds negative values"
            if unit and bool(((t < -1e-6) | (t > 1 + 1e-6)).any()):
                return f"result outside [0, 1]: {t.flatten()[:4].tolist()}"
        return None
    return check


def check_float(low: Optional[float] = None, high: Optional[float] = None) -> Callable[[Any], Optional[str]]:
    def check(v: Any) -> Optional[str]:
        if isinstance(v, torch.Tensor):
            return check_tensor(unit=(low == 0.0 and high == 1.0))(v)
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            return f"result is {v!r}"
        if (low is not None and v < low - 1e-9) or (high is not None and v > high + 1e-9):
            return f"result {v!r} outside [{low}, {high}]"
        return None
    return check


def check_reconstruction(op, batch: Tuple[int, ...], x_true: Optional[torch.Tensor] = None,
                         invalid: bool = True) -> Callable[[Any], Optional[str]]:
    """Shape and finiteness of rec.x; for an invalid input, 'converged' with relative error > 0.5 is garbage."""
    def check(rec: Any) -> Optional[str]:
        if not isinstance(rec, pt.Reconstruction):
            return f"returned {type(rec).__name__}"
        want = tuple(batch) + tuple(op.signal_shape)
        if tuple(rec.x.shape) != want:
            return f"rec.x has shape {tuple(rec.x.shape)}, expected {want}"
        if not bool(torch.isfinite(rec.x).all()):
            return "rec.x holds NaN/inf"
        loss = rec.log["loss"]
        if isinstance(loss, torch.Tensor) and loss.numel() and not bool(torch.isfinite(loss[-1]).all()):
            return "the log's final loss is NaN/inf"
        if invalid and x_true is not None and rec.status is not None:
            try:
                err = M.relative_error(rec.x, x_true.expand_as(rec.x).to(rec.x.dtype), op=op)
            except ValueError:
                return None
            conv = rec.status.reshape(-1) == pt.Status.CONVERGED
            bad = conv & ~(err.reshape(-1) <= 0.5)
            if bool(bad.any()):
                return f"status 'converged' with relative error {float(err.reshape(-1)[bad][0]):.3g} > 0.5"
        return None
    return check


def check_spectral(op, y: torch.Tensor) -> Callable[[Any], Optional[str]]:
    """x0 of the right shape, finite, with ‖x0‖² = mean(y)/entry_energy per sample (its documented scale)."""
    def check(x0: Any) -> Optional[str]:
        k = len(op.measurement_shape)
        batch = tuple(y.shape[: y.dim() - k])
        why = check_tensor(batch + tuple(op.signal_shape))(x0)
        if why:
            return why
        target = y.double().reshape(*batch, -1).mean(-1) / op.entry_energy
        got = x0.abs().double().square().reshape(*batch, -1).sum(-1)
        if bool((target > 0).all()) and not bool(torch.allclose(got, target, rtol=0.05, atol=1e-12)):
            return f"‖x0‖² = {got.flatten()[:3].tolist()} but mean(y)/e = {target.flatten()[:3].tolist()}"
        return None
    return check


def check_log(log: Any) -> Optional[str]:
    if not isinstance(log, TrainingLog):
        return f"returned {type(log).__name__}"
    for col in ("overlap", "loss"):
        try:
            v = log[col]
        except (KeyError, ValueError):
            continue
        if isinstance(v, torch.Tensor) and v.numel() and not bool(torch.isfinite(v).all()):
            return f"log[{col!r}] holds NaN/inf"
    return None


def check_prediction(p: Any) -> Optional[str]:
    if not isinstance(p, Prediction):
        return f"returned {type(p).__name__}"
    v = p["overlap"]
    if not bool(torch.isfinite(v).all()):
        return "prediction['overlap'] holds NaN/inf"
    return None


def check_fixed_point(fp: Any) -> Optional[str]:
    if fp.converged:
        for k in ("m", "q", "kappa", "overlap", "rel_error", "loss"):
            if not math.isfinite(getattr(fp, k)):
                return f"fixed point 'converged' with {k} = {getattr(fp, k)}"
        if not 0 <= fp.overlap <= 1 + 1e-9:
            return f"fixed point 'converged' with overlap {fp.overlap}"
    return None


# ====================================================================================== small problems
_CACHE: Dict[str, Any] = {}

OPS = {
    "gauss-c": lambda: pt.GaussianMeasurement(16, 96, seed=1),
    "gauss-r": lambda: pt.GaussianMeasurement(16, 128, complex=False, seed=2),
    "cdp": lambda: pt.CodedDiffraction((8, 8), 4, seed=3),
    "structured": lambda: pt.StructuredRandom(32, n_layers=2, oversampling=4, seed=4),
    "fourier": lambda: pt.OversampledFourier((8, 8), oversampling=2),
}
#: the problems on which reconstruct(max_iter=60) recovers x (truth checks are meaningful)
RECOVERABLE = ("gauss-c", "gauss-r", "cdp")


def small_op(kind: str):
    key = "op:" + kind
    if key not in _CACHE:
        _CACHE[key] = OPS[kind]()
    return _CACHE[key]


def problem(kind: str, batch: Tuple[int, ...] = ()):
    """(op, x, y) with y = |Ax|² for a seeded x of the operator's natural type (real ≥ 0 for Fourier)."""
    op = small_op(kind)
    g = torch.Generator().manual_seed(7 + len(batch))
    shape = tuple(batch) + tuple(op.signal_shape)
    if kind == "fourier":
        x = torch.rand(shape, generator=g)
    elif op.is_complex:
        x = torch.view_as_complex(torch.randn(*shape, 2, generator=g))
    else:
        x = torch.randn(*shape, generator=g)
    return op, x, op(x).detach()


def reconstruct_quiet(op, y, **kw):
    kw.setdefault("max_iter", 60)
    kw.setdefault("progress", False)
    kw.setdefault("seed", 0)
    return pt.reconstruct(op, y, **kw)


# ====================================================================================== operators
def _ctor(name: str):
    return getattr(pt, name)


@family("operators")
def gaussian_sizes(rng):
    arg = pick(rng, ["n", "m", "block_rows"])
    pool = BAD_COUNTS + ([(4, 0), (4, -2), [], "16", (2.5, 2), (4, None)] if arg == "n" else [])
    kw = {"n": 8, "m": 32, "seed": 0, arg: pick(rng, pool)}
    return dict(label=call("GaussianMeasurement", **kw), run=lambda: pt.GaussianMeasurement(**kw),
                names=(word(arg),), check=check_op)


@family("operators")
def flags_as_strings(rng):
    name, arg = pick(rng, [("GaussianMeasurement", "complex"), ("GaussianMeasurement", "streamed"),
                           ("GaussianEnsemble", "complex")])
    val = pick(rng, ["False", "no", "0", 2, None, [False]])
    base = {"GaussianMeasurement": dict(n=8, m=32, seed=0), "GaussianEnsemble": dict(n=8, m=32, count=2, seed=0)}
    kw = dict(base[name], **{arg: val})
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw), names=(word(arg),), check=check_op)


@family("operators")
def dtypes(rng):
    name = pick(rng, ["GaussianMeasurement", "CodedDiffraction", "StructuredRandom", "OversampledFourier",
                      "GaussianEnsemble"])
    base = {"GaussianMeasurement": dict(n=8, m=32, seed=0), "CodedDiffraction": dict(shape=(4, 4), n_masks=2, seed=0),
            "StructuredRandom": dict(shape=8, seed=0), "OversampledFourier": dict(shape=(4, 4)),
            "GaussianEnsemble": dict(n=8, m=32, count=2, seed=0)}
    kw = dict(base[name], dtype=pick(rng, BAD_DTYPES))
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw),
                names=(r"dtype", r"float32", r"float64", r"half"), check=check_op)


@family("operators")
def seeds(rng):
    name = pick(rng, ["GaussianMeasurement", "CodedDiffraction", "StructuredRandom", "GaussianEnsemble"])
    base = {"GaussianMeasurement": dict(n=8, m=32), "CodedDiffraction": dict(shape=(4, 4), n_masks=2),
            "StructuredRandom": dict(shape=8), "GaussianEnsemble": dict(n=8, m=32, count=2)}
    mode = pick(rng, ["seed", "generator", "both"])
    if mode == "seed":
        extra = dict(seed=pick(rng, BAD_SEEDS))
    elif mode == "generator":
        extra = dict(generator=pick(rng, ["gen", 0, 1.5, torch.device("cpu")]))
    else:
        extra = dict(seed=1, generator=torch.Generator().manual_seed(1))
    kw = dict(base[name], **extra)
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw), names=(r"seed", r"generator"),
                check=check_op)


BAD_SHAPES = [0, -3, (0, 4), (4, -1), (4, 4, 4), "64", 8.5, (8.5, 8), [], None, (True, 4), (2 ** 70,), 1j]


@family("operators")
def coded_diffraction_args(rng):
    arg = pick(rng, ["shape", "n_masks", "mask"])
    val = {"shape": lambda: pick(rng, BAD_SHAPES), "n_masks": lambda: pick(rng, BAD_COUNTS),
           "mask": lambda: pick(rng, ["octal", "", 5, None, "BINARY", "gauss"])}[arg]()
    kw = dict(shape=(4, 4), n_masks=2, seed=0)
    kw[arg] = val
    return dict(label=call("CodedDiffraction", **kw), run=lambda: pt.CodedDiffraction(**kw),
                names=(word(arg), r"mask family"), check=check_op)


BAD_OVERSAMPLING = [0, -1, 1.5, (2,), "2", [2, 2, 2], True, None, (2, 0), NAN, 2 ** 70]


@family("operators")
def fft_operator_args(rng):
    name = pick(rng, ["StructuredRandom", "OversampledFourier"])
    args = ["shape", "oversampling"] + (["n_layers"] if name == "StructuredRandom" else [])
    arg = pick(rng, args)
    val = {"shape": lambda: pick(rng, BAD_SHAPES), "oversampling": lambda: pick(rng, BAD_OVERSAMPLING),
           "n_layers": lambda: pick(rng, BAD_COUNTS)}[arg]()
    kw = dict(shape=(4, 4))
    if name == "StructuredRandom":
        kw["seed"] = 0
    kw[arg] = val
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw), names=(word(arg),), check=check_op)


def _matrix_inputs():
    g = torch.Generator().manual_seed(0)
    good = torch.randn(6, 4, generator=g)
    nan = good.clone()
    nan[2, 1] = NAN
    return {
        "'abc'": ("abc", True, (r"\bA\b", r"tensor")),
        "None": (None, True, (r"\bA\b",)),
        "object()": (object(), True, (r"\bA\b",)),
        "1-D tensor": (torch.ones(4), True, (r"\bA\b", r"2-D")),
        "3-D tensor": (torch.ones(2, 3, 4), True, (r"\bA\b", r"2-D")),
        "empty (0, 4)": (torch.ones(0, 4), True, (r"\bA\b", r"row")),
        "empty (4, 0)": (torch.ones(4, 0), True, (r"\bA\b", r"column")),
        "A with NaN": (nan, True, (r"\bA\b", r"nan")),
        "A with inf": (good * INF, True, (r"\bA\b", r"inf")),
        "all zeros": (torch.zeros(6, 4), True, (r"\bA\b", r"zero")),
        "int64 tensor": (torch.ones(6, 4, dtype=torch.int64), True, (r"\bA\b", r"dtype")),
        "bool tensor": (torch.ones(6, 4, dtype=torch.bool), True, (r"\bA\b", r"dtype")),
        "float16 tensor": (good.half(), True, (r"\bA\b", r"dtype", r"half")),
        "bfloat16 tensor": (good.bfloat16(), True, (r"\bA\b", r"dtype", r"half")),
        "list of lists": (good.tolist(), False, (r"\bA\b",)),
        "ragged list": ([[1.0, 2.0], [3.0]], True, (r"\bA\b",)),
        "numpy float64": (good.double().numpy(), False, (r"\bA\b",)),
        "requires_grad": (good.clone().requires_grad_(), False, (r"\bA\b",)),
        "non-contiguous (A.T)": (good.T, False, (r"\bA\b",)),
        "meta device": (good.to("meta"), True, (r"\bA\b", r"device", r"meta")),
    }


@family("operators")
def matrix_measurement(rng):
    key = pick(rng, sorted(_matrix_inputs()))
    def run():
        A, _, _ = _matrix_inputs()[key]
        return pt.MatrixMeasurement(A)
    _, invalid, names = _matrix_inputs()[key]
    return dict(label=f"MatrixMeasurement(A={key})", run=run, names=names, invalid=invalid, check=check_op)


@family("operators")
def matrix_signal_shape(rng):
    val = pick(rng, [(5,), (2, 3), "4", 0, (-2, -2), (2, 2.0), [], (4, 1), (1, 2, 2), None])
    valid = val in [(4, 1), (1, 2, 2), None]
    return dict(label=call("MatrixMeasurement", "tensor(6, 4)", signal_shape=val),
                run=lambda: pt.MatrixMeasurement(torch.ones(6, 4), signal_shape=val),
                names=(r"signal_shape",), invalid=not valid, check=check_op)


@family("operators")
def ensemble_args(rng):
    mode = pick(rng, ["n", "m", "count", "seeds-length", "seeds-values", "seeds+seed", "seeds-string"])
    kw: Dict[str, Any] = dict(n=4, m=16, count=3)
    names = (word(mode),)
    if mode in ("n", "m", "count"):
        kw[mode] = pick(rng, BAD_COUNTS)
        kw["seed"] = 0
    elif mode == "seeds-length":
        kw["seeds"] = pick(rng, [[1, 2], [1, 2, 3, 4], []])
        names = (r"seeds", r"count")
    elif mode == "seeds-values":
        kw["seeds"] = pick(rng, [[1, -2, 3], [1, 2.5, 3], [1, "2", 3], [1, None, 3], [1, NAN, 3]])
        names = (r"seeds",)
    elif mode == "seeds+seed":
        kw.update(seeds=[1, 2, 3], seed=4)
        names = (r"seeds", r"seed")
    else:
        kw["seeds"] = "123"
        names = (r"seeds",)
    return dict(label=call("GaussianEnsemble", **kw), run=lambda: pt.GaussianEnsemble(**kw), names=names,
                check=check_op)


@family("operators")
def tiny_valid_operators(rng):
    name, kw = pick(rng, [("GaussianMeasurement", dict(n=1, m=1, seed=0)),
                          ("GaussianMeasurement", dict(n=(1, 1), m=1, complex=False, seed=0)),
                          ("CodedDiffraction", dict(shape=1, n_masks=1, seed=0)),
                          ("CodedDiffraction", dict(shape=(1, 1), n_masks=1, mask="binary", seed=0)),
                          ("StructuredRandom", dict(shape=1, n_layers=1, oversampling=1, seed=0)),
                          ("OversampledFourier", dict(shape=(1, 1), oversampling=1)),
                          ("GaussianEnsemble", dict(n=1, m=1, count=1, seed=0)),
                          ("OversampledFourier", dict(shape=(3, 5), oversampling=(1, 3))),
                          ("GaussianMeasurement", dict(n=4, m=2, seed=0, block_rows=1))])
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw), names=(r".",), invalid=False,
                check=check_op)


# ====================================================================================== sizes (> 64 GB)
def _gb(b: float) -> str:
    return f"≈ {b / 1e9:,.0f} GB"


@family("sizes")
def huge_gaussian(rng):
    complex_ = rng.random() < 0.5
    n = rng.randrange(150_000, 2_000_000)
    m = int(n * rng.uniform(2, 8))
    need = m * n * (8 if complex_ else 4)
    kw = dict(n=n, m=m, complex=complex_, seed=0)
    return dict(label=call("GaussianMeasurement", **kw) + f" [{_gb(need)}]", run=lambda: pt.GaussianMeasurement(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"streamed", word("m"), word("n")), quick=5.0,
                check=check_op)


@family("sizes")
def huge_gaussian_image(rng):
    side = rng.randrange(400, 3000)
    m = int(side * side * rng.uniform(4, 8))
    need = m * side * side * 8
    kw = dict(n=(side, side), m=m, seed=0)
    return dict(label=call("GaussianMeasurement", **kw) + f" [{_gb(need)}]", run=lambda: pt.GaussianMeasurement(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"streamed", word("m"), word("n")), quick=5.0,
                check=check_op)


@family("sizes")
def huge_coded_diffraction(rng):
    side = rng.randrange(30_000, 200_000)
    masks = rng.randrange(1, 9)
    need = masks * side * side * 16
    kw = dict(shape=(side, side), n_masks=masks, seed=0)
    return dict(label=call("CodedDiffraction", **kw) + f" [{_gb(need)}]", run=lambda: pt.CodedDiffraction(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"n_masks", r"shape"), quick=5.0, check=check_op)


@family("sizes")
def huge_coded_masks(rng):
    masks = rng.randrange(10 ** 7, 10 ** 9)
    need = masks * 64 * 64 * 16
    kw = dict(shape=(64, 64), n_masks=masks, seed=0)
    return dict(label=call("CodedDiffraction", **kw) + f" [{_gb(need)}]", run=lambda: pt.CodedDiffraction(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"n_masks"), quick=5.0, check=check_op)


@family("sizes")
def huge_structured(rng):
    side = rng.randrange(20_000, 100_000)
    over = rng.randrange(2, 5)
    layers = rng.randrange(1, 5)
    need = layers * (side * over) ** 2 * 16
    kw = dict(shape=(side, side), n_layers=layers, oversampling=over, seed=0)
    return dict(label=call("StructuredRandom", **kw) + f" [{_gb(need)}]", run=lambda: pt.StructuredRandom(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"shape", r"oversampling", r"n_layers"), quick=5.0,
                check=check_op)


@family("sizes", limit=3)
def huge_ensemble(rng):
    n = rng.randrange(500, 2000)
    m = 8 * n
    count = int(HUGE_BYTES * rng.uniform(1.5, 20) / (m * n * 8)) + 1
    need = count * m * n * 8
    kw = dict(n=n, m=m, count=count, seed=0)
    return dict(label=call("GaussianEnsemble", **kw) + f" [{_gb(need)}]", run=lambda: pt.GaussianEnsemble(**kw),
                names=(r"memory", r"GiB|GB", r"too large", r"count", word("m"), word("n")), quick=5.0,
                check=check_op)


@family("sizes", limit=3)
def huge_simulate(rng):
    dim = rng.randrange(20_000, 200_000)
    delta = rng.uniform(4, 10)
    seeds = rng.randrange(2, 16)
    need = seeds * int(delta * dim) * dim * 8
    kw = dict(dim=dim, seeds=seeds, step=0.1, steps=1, progress=False)
    return dict(label=call("theory.simulate", delta, **kw) + f" [{_gb(need)}]",
                run=lambda: simulate(delta, **kw), names=(r"memory", r"GiB|GB", r"too large", r"dim", r"seeds"),
                quick=5.0, check=check_log)


@family("sizes")
def huge_krylov(rng):
    kdim = rng.randrange(10 ** 9, 10 ** 11)
    def run():
        op, _, y = problem("gauss-c", (2,))
        return pt.spectral_init(op, y, krylov_dim=kdim, seed=0)
    return dict(label=f"spectral_init(GaussianMeasurement(16, 96), y(2, 96), krylov_dim={kdim:.2e}) "
                      f"[{_gb(kdim * 16 * 2 * 8)} if allocated]",
                run=run, names=(r"krylov_dim",), quick=5.0, invalid=False, check=check_tensor((2, 16)))


@family("sizes")
def huge_dmft_samples(rng):
    samples = rng.randrange(10 ** 10, 10 ** 12)
    kw = dict(step=0.1, steps=2, samples=samples, replicates=2, progress=False)
    return dict(label=call("theory.dmft", 4.0, **kw) + f" [{_gb(samples * 2 * 8 * 4)} of populations]",
                run=lambda: dmft(4.0, **kw), names=(r"samples", r"memory", r"GiB|GB", r"chunk"), quick=5.0,
                invalid=False, check=check_prediction)


@family("sizes")
def huge_fixed_point_nodes(rng):
    nodes = rng.randrange(10 ** 6, 10 ** 8)
    panels = rng.randrange(10 ** 3, 10 ** 5)
    kw = dict(l2=0.1, nodes=nodes, z_panels=panels)
    return dict(label=call("theory.fixed_point", 4.0, **kw) + f" [{_gb(nodes * panels * 16 * 8)}]",
                run=lambda: fixed_point(4.0, **kw), names=(r"nodes", r"z_panels", r"memory", r"GiB|GB"), quick=5.0,
                invalid=False, check=check_fixed_point)


@family("sizes")
def lazy_operators(rng):
    """Operators that store nothing may accept any size (valid): construction must be instant and cheap."""
    name, kw = pick(rng, [("OversampledFourier", dict(shape=(10 ** 6, 10 ** 6), oversampling=4)),
                          ("GaussianMeasurement", dict(n=10 ** 7, m=10 ** 9, streamed=True, seed=0)),
                          ("OversampledFourier", dict(shape=(2 ** 40,), oversampling=2 ** 20))])
    return dict(label=call(name, **kw), run=lambda: _ctor(name)(**kw), names=(r"memory", r"GiB|GB", r"shape"),
                invalid=False, quick=5.0, check=check_op)


# ====================================================================================== intensities
def _mutations():
    """name → (invalid, names, mutate(op, x, y) → y')."""
    def nan_at(v):
        def f(op, x, y):
            y = y.clone().reshape(-1)
            y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(0))[:3]] = v
            return y.reshape(op(x).shape)
        return f
    Y = (word("y"), r"observations", r"intensit", r"measurement")
    return {
        "one more measurement": (True, Y + (r"shape",), lambda op, x, y: torch.cat([y, y[..., :1]], -1)),
        "one measurement short": (True, Y + (r"shape",), lambda op, x, y: y[..., :-1]),
        "flattened / reshaped": (True, Y + (r"shape",), lambda op, x, y: y.reshape(-1) if y.dim() > 1
                                 else y.reshape(2, -1)),
        "0-d tensor": (True, Y + (r"shape",), lambda op, x, y: torch.tensor(1.0)),
        "complex (op.linear(x))": (True, Y + (r"complex", r"real"), lambda op, x, y: op.linear(x)),
        "NaN entries": (True, (r"nan",), nan_at(NAN)),
        "+inf entries": (True, (r"\binf\b", r"finite"), nan_at(INF)),
        "-inf entries": (True, (r"\binf\b", r"finite"), nan_at(-INF)),
        "all negative (-y)": (True, Y + (r"negative", r"mean", r"≤ 0", r"signal"), lambda op, x, y: -y),
        "noisy, some negative": (False, Y, lambda op, x, y: y + 0.3 * y.mean() * torch.randn(
            y.shape, generator=torch.Generator().manual_seed(1))),
        "all zeros": (False, Y + (r"zero", r"mean", r"signal"), lambda op, x, y: torch.zeros_like(y)),
        "constant ones": (False, Y, lambda op, x, y: torch.ones_like(y)),
        "one non-zero entry": (False, Y + (r"zero", r"T\(y\)"), lambda op, x, y: torch.zeros_like(y).reshape(
            -1).index_fill(0, torch.tensor([3]), 1.0).reshape(y.shape)),
        "empty batch (0, *m)": (True, Y + (r"empty", r"batch"),
                                lambda op, x, y: y.new_zeros((0,) + tuple(op.measurement_shape))),
        "float64 for a float32 operator": (True, Y + (r"dtype", r"float"), lambda op, x, y: y.double()),
        "float16": (True, Y + (r"dtype", r"float", r"half"), lambda op, x, y: y.half()),
        "bfloat16": (True, Y + (r"dtype", r"float", r"half"), lambda op, x, y: y.bfloat16()),
        "int64 (rounded)": (True, Y + (r"dtype", r"float", r"integer"), lambda op, x, y: y.round().long()),
        "bool": (True, Y + (r"dtype", r"float", r"bool"), lambda op, x, y: y > y.mean()),
        "meta device": (True, Y + (r"device", r"meta"), lambda op, x, y: y.to("meta")),
        "python list": (True, Y + (r"tensor",), lambda op, x, y: y.tolist()),
        "numpy array": (True, Y + (r"tensor", r"numpy"), lambda op, x, y: y.numpy()),
        "None": (True, Y + (r"tensor",), lambda op, x, y: None),
        "requires_grad": (False, Y, lambda op, x, y: y.clone().requires_grad_()),
        "non-contiguous batch": (False, Y, lambda op, x, y: y.unsqueeze(0).expand(4, *y.shape)[::2]),
        "two batch dims (2, 3)": (False, Y, lambda op, x, y: y.expand(2, 3, *y.shape).clone()),
        "scaled ×1e30": (False, Y + (r"overflow", r"rescale", r"float64"), lambda op, x, y: y * 1e30),
        "scaled ×1e-30": (False, Y + (r"underflow", r"rescale", r"float64", r"zero"), lambda op, x, y: y * 1e-30),
        "one NaN sample in a batch of 3": (True, (r"nan",), lambda op, x, y: torch.stack(
            [y, y.clone().fill_(NAN), y])),
        "one zero sample in a batch of 3": (False, Y + (r"zero", r"sample", r"mean"), lambda op, x, y: torch.stack(
            [y, torch.zeros_like(y), y])),
    }


@family("intensities")
def intensities(rng):
    target = pick(rng, ["reconstruct", "spectral_init"])
    kind = pick(rng, sorted(OPS))
    mut = pick(rng, sorted(_mutations()))
    invalid, names, _ = _mutations()[mut]

    def run():
        op, x, y = problem(kind)
        y2 = _mutations()[mut][2](op, x, y)
        run.y2, run.op, run.x = y2, op, x
        if target == "reconstruct":
            return reconstruct_quiet(op, y2)
        return pt.spectral_init(op, y2, seed=0)

    def check(res):
        y2, op = run.y2, run.op
        k = len(op.measurement_shape)
        batch = tuple(y2.shape[: y2.dim() - k])
        if target == "reconstruct":
            truth = run.x if kind in RECOVERABLE and mut != "scaled ×1e30" and mut != "scaled ×1e-30" else None
            return check_reconstruction(op, batch, truth, invalid)(res)
        if torch.is_tensor(y2) and y2.is_floating_point() and bool(torch.isfinite(y2).all()):
            return check_spectral(op, y2.detach().float())(res)
        return check_tensor(batch + tuple(op.signal_shape))(res)

    return dict(label=f"{target}({kind} operator, y: {mut})", run=run, names=names, invalid=invalid, check=check)


# ====================================================================================== reconstruct arguments
def _rec_mutations():
    """name → list of (value label, kwargs, invalid, names)."""
    n = 16
    g = torch.Generator().manual_seed(3)
    zx = torch.zeros(n, dtype=torch.complex64)
    out: Dict[str, List[Tuple[str, dict, bool, Tuple[str, ...]]]] = {}

    def add(name, values, names, invalid=True, key=None):
        out.setdefault(name, []).extend((show(v) if not isinstance(v, tuple) or key else show(v), {key or name: v},
                                         invalid, names) for v in values)

    add("algorithm", ["foo", "", None, 3, "raf ", "w f", ["raf"]], (r"algorithm",))
    add("algorithm", ["RAF", "Wf", "hio", "gs"], (r"algorithm",), invalid=False)
    add("max_iter", [-1, 2.5, "10", None, True, 1e3, NAN, 10 ** 30], (r"max_iter",))
    add("max_iter", [0, 1], (r"max_iter",), invalid=False)
    add("tol", [NAN, INF, -INF, "1e-3", [1e-3], 1j, 2.0, 10.0, 1e6], (word("tol"),))
    add("tol", [-1.0, 0.0, 1e-300], (word("tol"),), invalid=False)
    add("step", [-1.0, 0.0, NAN, INF, "fast", [0.1], 1j, 1e6, 1e12], (word("step"), r"μ", r"\bmu\b"))
    add("step", ["armijo", "bb", 0.05, "constant"], (word("step"),), invalid=False)
    add("l2", [-1.0, NAN, INF, "0.1", [0.1], None, 1j], (word("l2"),))
    add("l2", [1e12], (word("l2"),), invalid=False)
    add("log_every", [0, -1, 2.5, None, "1", NAN], (r"log_every",))
    add("init", ["zeros", "Spectral", 5, None, "random ", [0.0] * n], (word("init"),))
    out["init"] += [
        ("tensor of zeros", {"init": zx}, True, (word("init"), r"initial point", r"zero")),
        ("tensor of shape (17,)", {"init": torch.ones(17, dtype=torch.complex64)}, True,
         (word("init"), r"shape")),
        ("tensor with NaN", {"init": torch.full((n,), NAN, dtype=torch.complex64)}, True,
         (word("init"), r"nan", r"initial point")),
        ("int64 tensor", {"init": torch.ones(n, dtype=torch.int64)}, True, (word("init"), r"dtype", r"float")),
        ("float64 tensor", {"init": torch.ones(n, dtype=torch.float64)}, True, (word("init"), r"dtype")),
        ("batch (3, 16) for y (2, 96)", {"init": torch.ones(3, n, dtype=torch.complex64)}, True,
         (word("init"), r"batch")),
        ("meta tensor", {"init": torch.ones(n, dtype=torch.complex64, device="meta")}, True,
         (word("init"), r"device")),
        ("tensor ×1e30", {"init": torch.randn(n, 2, generator=g).mul(1e30)}, True, (word("init"), r"overflow")),
    ]
    out["support"] = [
        ("bool (17,)", {"support": torch.ones(17, dtype=torch.bool)}, True, (r"support",)),
        ("all False", {"support": torch.zeros(n, dtype=torch.bool)}, True, (r"support",)),
        ("float 0.5 mask", {"support": torch.full((n,), 0.5)}, True, (r"support",)),
        ("'yes'", {"support": "yes"}, True, (r"support",)),
        ("NaN mask", {"support": torch.full((n,), NAN)}, True, (r"support",)),
        ("0/1 int mask", {"support": (torch.arange(n) < 8).long()}, False, (r"support",)),
        ("list of bools", {"support": [True] * n}, False, (r"support",)),
    ]
    out["options"] = [
        ("foo=1", {"foo": 1}, True, (r"foo", r"option")),
        ("beta=-1", {"beta": -1.0}, True, (r"beta",)),
        ("beta=NaN", {"beta": NAN}, True, (r"beta",)),
        ("beta='x'", {"beta": "x"}, True, (r"beta",)),
        ("safeguard='no'", {"safeguard": "no"}, True, (r"safeguard",)),
        ("algorithm='lbfgs', memory=0", {"algorithm": "lbfgs", "memory": 0}, True, (r"memory",)),
        ("algorithm='lbfgs', memory=2.5", {"algorithm": "lbfgs", "memory": 2.5}, True, (r"memory",)),
        ("algorithm='lbfgs', loss='poisson'", {"algorithm": "lbfgs", "loss": "poisson"}, True, (r"loss",)),
        ("algorithm='taf', gamma=-1", {"algorithm": "taf", "gamma": -1.0}, True, (r"gamma",)),
        ("algorithm='wf', tau0=-5", {"algorithm": "wf", "tau0": -5.0}, True, (r"tau0",)),
        ("algorithm='wf', mu_max=NaN", {"algorithm": "wf", "mu_max": NAN}, True, (r"mu_max",)),
        ("algorithm='twf', alpha_lb=5, alpha_ub=0.3", {"algorithm": "twf", "alpha_lb": 5.0, "alpha_ub": 0.3}, True,
         (r"alpha_lb", r"alpha_ub")),
        ("algorithm='hio', beta=5", {"algorithm": "hio", "beta": 5.0}, True, (r"beta",)),
        ("algorithm='gs', cg_steps=-1", {"algorithm": "gs", "cg_steps": -1}, True, (r"cg_steps",)),
        ("algorithm='lbfgs', step=0.1", {"algorithm": "lbfgs", "step": 0.1}, True, (word("step"),)),
        ("algorithm='gs', l2=0.1", {"algorithm": "gs", "l2": 0.1}, True, (word("l2"),)),
    ]
    add("seed", [-1, 2.5, "0", NAN, [0], 2 ** 64], (r"seed",))
    add("generator", ["gen", 0], (r"generator",))
    out["seed"].append(("seed=1 and a generator", {"seed": 1, "generator": torch.Generator().manual_seed(1)}, True,
                        (r"seed", r"generator")))
    out["preprocessing"] = [
        ("'foo'", {"preprocessing": "foo"}, True, (r"preprocessing",)),
        ("3", {"preprocessing": 3}, True, (r"preprocessing",)),
        ("T(y) = NaN", {"preprocessing": lambda t: torch.full_like(t, NAN)}, True,
         (r"preprocessing", r"T\(y\)", r"nan")),
        ("T(y) of the wrong shape", {"preprocessing": lambda t: t[..., :3]}, True,
         (r"preprocessing", r"T\(y\)", r"shape")),
        ("T(y) = 0", {"preprocessing": lambda t: torch.zeros_like(t)}, True, (r"preprocessing", r"T\(y\)", r"zero")),
        ("T(y) = -y", {"preprocessing": lambda t: -t}, False, (r"preprocessing",)),
        ("T returns a list", {"preprocessing": lambda t: t.tolist()}, True, (r"preprocessing", r"T\(y\)", r"tensor")),
        ("'optimal' with init='random'", {"preprocessing": "optimal", "init": "random"}, True,
         (r"preprocessing", word("init"))),
    ]
    out["spectral_options"] = [
        ("'x'", {"spectral_options": "x"}, True, (r"spectral_options",)),
        ("{'foo': 1}", {"spectral_options": {"foo": 1}}, True, (r"spectral_options", r"foo")),
        ("{'seed': 1}", {"spectral_options": {"seed": 1}}, True, (r"spectral_options", r"seed")),
        ("{'tol': -1}", {"spectral_options": {"tol": -1.0}}, True, (word("tol"),)),
        ("{'max_iter': 0}", {"spectral_options": {"max_iter": 0}}, True, (r"max_iter",)),
        ("{'solver': 'qr'}", {"spectral_options": {"solver": "qr"}}, True, (r"solver",)),
        ("{'whiten': True} on a Gaussian operator", {"spectral_options": {"whiten": True}}, True,
         (r"whiten", r"gram_diagonal")),
    ]
    out["schedule"] = [
        ("3", {"schedule": 3}, True, (r"schedule",)),
        ("t ↦ -1", {"schedule": lambda t: -1.0}, True, (r"schedule", word("step"), r"μ")),
        ("t ↦ NaN", {"schedule": lambda t: NAN}, True, (r"schedule", word("step"), r"μ")),
        ("t ↦ 'x'", {"schedule": lambda t: "x"}, True, (r"schedule", word("step"), r"μ")),
        ("'ramp'", {"schedule": "ramp"}, True, (r"schedule",)),
        ("with step=0.1", {"schedule": lambda t: 0.1, "step": 0.1}, True, (r"schedule", word("step"))),
    ]
    out["callback"] = [("3", {"callback": 3}, True, (r"callback",)),
                       ("'print'", {"callback": "print"}, True, (r"callback",))]
    out["x_true"] = [
        ("zeros (zero reference)", {"x_true": zx}, True, (r"x_true", r"zero")),
        ("shape (17,)", {"x_true": torch.ones(17, dtype=torch.complex64)}, True, (r"x_true", r"shape")),
        ("NaN", {"x_true": torch.full((n,), NAN, dtype=torch.complex64)}, True, (r"x_true", r"nan")),
        ("int64", {"x_true": torch.ones(n, dtype=torch.int64)}, True, (r"x_true", r"dtype", r"float")),
        ("list", {"x_true": [1.0] * n}, True, (r"x_true", r"tensor")),
    ]
    out["flags"] = [
        ("on_divergence='stop'", {"on_divergence": "stop"}, True, (r"on_divergence",)),
        ("on_divergence=None", {"on_divergence": None}, True, (r"on_divergence",)),
        ("nonnegative=True, real_signal=False", {"nonnegative": True, "real_signal": False}, True,
         (r"nonnegative", r"real_signal")),
        ("real_signal='no'", {"real_signal": "no"}, True, (r"real_signal",)),
        ("nonnegative='no'", {"nonnegative": "no"}, True, (r"nonnegative",)),
        ("op='gaussian'", {"__op": "gaussian"}, True, (word("op"), r"operator")),
        ("op=None", {"__op": None}, True, (word("op"), r"operator")),
    ]
    return out


@family("reconstruct")
def reconstruct_args(rng):
    table = _rec_mutations()
    name = pick(rng, sorted(table))
    idx = rng.randrange(len(table[name]))
    text, _, invalid, names = table[name][idx]
    kind = pick(rng, ["gauss-c", "gauss-r"]) if name not in ("init", "x_true", "support") else "gauss-c"

    def run():
        _, kw, _, _ = _rec_mutations()[name][idx]
        kw = dict(kw)
        op, x, y = problem(kind, (2,))
        run.op, run.x = op, x
        target = kw.pop("__op", op)
        return reconstruct_quiet(target, y, **kw)

    def check(rec):
        why = check_reconstruction(run.op, (2,), run.x, invalid)(rec)
        if why is None and name == "x_true":
            err = rec.log["rel_error"]
            if not bool(torch.isfinite(err).all()):
                return "the log's rel_error holds NaN/inf"
        return why

    label = f"reconstruct({kind} operator, y(2, m), {text if '=' in text else name + '=' + text})"
    return dict(label=label, run=run, names=names, invalid=invalid, check=check)


# ====================================================================================== noise
@family("noise")
def noise_levels(rng):
    kind = pick(rng, ["PoissonNoise", "GaussianNoise"])
    arg = "photons" if kind == "PoissonNoise" else "sigma"
    pool = BAD_POSITIVE if kind == "PoissonNoise" else BAD_NONNEG
    val = pick(rng, pool)

    def run():
        _, _, y = problem("gauss-c")
        return _ctor(kind)(val, seed=0)(y)

    return dict(label=f"{kind}({arg}={show(val)}, seed=0)(y)", run=run, names=(arg,),
                check=check_tensor((96,), nonneg=kind == "PoissonNoise"))


@family("noise")
def noise_extreme_levels(rng):
    kind, val = pick(rng, [("PoissonNoise", 1e-12), ("PoissonNoise", 1e300), ("PoissonNoise", 1e30),
                           ("GaussianNoise", 1e300), ("GaussianNoise", 1e-300), ("GaussianNoise", 0.0)])
    arg = "photons" if kind == "PoissonNoise" else "sigma"

    def run():
        _, _, y = problem("gauss-c")
        return _ctor(kind)(val, seed=0)(y)

    return dict(label=f"{kind}({arg}={val:g}, seed=0)(y float32)", run=run, names=(arg, r"float64", r"overflow"),
                invalid=False, check=check_tensor((96,), nonneg=kind == "PoissonNoise"))


@family("noise")
def noise_event_dims(rng):
    kind = pick(rng, ["PoissonNoise", "GaussianNoise"])
    where = pick(rng, ["constructor", "call"])
    val = pick(rng, [0, -1, 2.5, "1", 5, True, None if where == "call" else 0, 10 ** 9])
    arg0 = 100.0 if kind == "PoissonNoise" else 0.1
    extra = {"relative": True} if kind == "GaussianNoise" else {}

    def run():
        _, _, y = problem("cdp", (2,))
        if where == "constructor":
            return _ctor(kind)(arg0, seed=0, event_dims=val, **extra)(y)
        return _ctor(kind)(arg0, seed=0, **extra)(y, event_dims=val)

    invalid = val is not None
    return dict(label=f"{kind}({arg0}, {'event_dims=' + show(val) + ', ' if where == 'constructor' else ''}"
                      f"{', '.join(f'{k}={v}' for k, v in extra.items())})(y(2, 4, 8, 8)"
                      f"{', event_dims=' + show(val) if where == 'call' else ''})",
                run=run, names=(r"event_dims",), invalid=invalid, check=check_tensor((2, 4, 8, 8)))


@family("noise")
def noise_inputs(rng):
    kind = pick(rng, ["PoissonNoise", "GaussianNoise"])
    mut = pick(rng, ["NaN y", "inf y", "negative y", "complex y", "int64 y", "list y", "0-d y", "empty y",
                     "2-D y without event_dims", "float16 y", "None"])
    arg0 = 100.0 if kind == "PoissonNoise" else 0.1
    makers = {
        "NaN y": lambda y: y.index_fill(0, torch.tensor([2]), NAN),
        "inf y": lambda y: y.index_fill(0, torch.tensor([2]), INF),
        "negative y": lambda y: -y,
        "complex y": lambda y: y.to(torch.complex64),
        "int64 y": lambda y: y.round().long(),
        "list y": lambda y: y.tolist(),
        "0-d y": lambda y: torch.tensor(2.0),
        "empty y": lambda y: y[:0],
        "2-D y without event_dims": lambda y: y.reshape(8, 12),
        "float16 y": lambda y: y.half(),
        "None": lambda y: None,
    }
    valid = mut in ("0-d y", "empty y", "float16 y") or (kind == "GaussianNoise" and mut in (
        "negative y", "2-D y without event_dims"))
    names = (word("y"), r"intensit", r"measurement", r"nan", r"\binf\b", r"finite", r"negative", r"≥ 0",
             r"complex", r"real", r"floating", r"event_dims", r"tensor")

    def run():
        _, _, y = problem("gauss-c")
        run.y = makers[mut](y)
        return _ctor(kind)(arg0, seed=0)(run.y)

    def check(res):
        shape = tuple(run.y.shape) if isinstance(run.y, torch.Tensor) else None
        return check_tensor(shape, nonneg=kind == "PoissonNoise")(res)

    return dict(label=f"{kind}({arg0}, seed=0)({mut})", run=run, names=names, invalid=not valid, check=check)


@family("noise")
def noise_seeds(rng):
    kind = pick(rng, ["PoissonNoise", "GaussianNoise"])
    val = pick(rng, BAD_SEEDS + ["gen"])
    key = "generator" if val == "gen" else "seed"
    kw = {key: val}
    arg0 = 100.0 if kind == "PoissonNoise" else 0.1
    return dict(label=call(kind, arg0, **kw), run=lambda: _ctor(kind)(arg0, **kw), names=(r"seed", r"generator"),
                check=lambda r: None)


@family("noise")
def noise_flags(rng):
    kind, arg = pick(rng, [("PoissonNoise", "per_measurement"), ("GaussianNoise", "relative")])
    val = pick(rng, ["no", "False", 2, None])
    arg0 = 100.0 if kind == "PoissonNoise" else 0.1

    def run():
        _, _, y = problem("gauss-c")
        return _ctor(kind)(arg0, seed=0, **{arg: val})(y)

    return dict(label=f"{kind}({arg0}, {arg}={show(val)})(y)", run=run, names=(arg,),
                check=check_tensor((96,)))


# ====================================================================================== losses
LOSSES = ("IntensityLoss", "AmplitudeLoss", "PoissonLoss", "TruncatedPoissonLoss", "TruncatedAmplitudeLoss",
          "ReweightedAmplitudeLoss")


@family("losses")
def loss_constructors(rng):
    name = pick(rng, LOSSES)
    mode = pick(rng, ["l2", "op", "hyper"])
    if mode == "l2":
        kw = {"l2": pick(rng, BAD_NONNEG)}
        names = (word("l2"),)
    elif mode == "op":
        kw = {"__op": pick(rng, ["op", None, "tensor", 3])}
        names = (word("op"), r"operator")
    else:
        hyper = {"TruncatedPoissonLoss": ["alpha_lb", "alpha_ub", "alpha_h"], "TruncatedAmplitudeLoss": ["gamma"],
                 "ReweightedAmplitudeLoss": ["beta"]}.get(name)
        if hyper is None:
            name = "ReweightedAmplitudeLoss"
            hyper = ["beta"]
        h = pick(rng, hyper)
        kw = {h: pick(rng, [-1.0, NAN, INF, "x", None, 0.0])}
        names = (word(h),)

    def run():
        op, x, y = problem("gauss-c")
        kwargs = dict(kw)
        target = kwargs.pop("__op", op)
        if isinstance(target, str) and target == "tensor":
            target = torch.ones(3, 3)
        loss = getattr(L, name)(target, **kwargs)
        return loss(x, y)

    return dict(label=f"{name}({'op' if '__op' not in kw else show(kw['__op'])}"
                      f"{''.join(f', {k}={show(v)}' for k, v in kw.items() if k != '__op')})(x, y)",
                run=run, names=names, check=check_tensor(()))


@family("losses")
def loss_inputs(rng):
    name = pick(rng, LOSSES)
    mut = pick(rng, ["x (3, n) with y (2, m)", "x (n+1,)", "y (m-1,)", "x int64", "x float64", "x meta",
                     "y NaN", "y complex", "y list", "x list", "x zero", "y zeros", "x (n,) with y (3, m)",
                     "x (3, n) with y (m,)", "y empty batch (0, m)"])
    valid = mut in ("x zero", "y zeros", "x (n,) with y (3, m)", "x (3, n) with y (m,)")
    expect = {"x (n,) with y (3, m)": (3,), "x (3, n) with y (m,)": (3,), "y empty batch (0, m)": (0,)}.get(mut, ())
    names = (word("x"), word("y"), r"batch", r"shape", r"dtype", r"device", r"nan", r"complex", r"tensor",
             r"signal", r"measurement", r"intensit")

    def run():
        op, x, y = problem("gauss-c")
        g = torch.Generator().manual_seed(5)
        x3 = torch.view_as_complex(torch.randn(3, 16, 2, generator=g))
        xs = {"x (3, n) with y (2, m)": (x3, op(x3[:2])), "x (n+1,)": (torch.ones(17, dtype=torch.complex64), y),
              "y (m-1,)": (x, y[:-1]), "x int64": (torch.ones(16, dtype=torch.int64), y),
              "x float64": (x.to(torch.complex128), y), "x meta": (x.to("meta"), y),
              "y NaN": (x, y.index_fill(0, torch.tensor([0]), NAN)), "y complex": (x, op.linear(x)),
              "y list": (x, y.tolist()), "x list": (x.real.tolist(), y), "x zero": (torch.zeros_like(x), y),
              "y zeros": (x, torch.zeros_like(y)), "x (n,) with y (3, m)": (x, op(x3)),
              "x (3, n) with y (m,)": (x3, y), "y empty batch (0, m)": (x3[:0], y.new_zeros(0, 96))}
        xx, yy = xs[mut]
        return getattr(L, name)(op)(xx, yy)

    return dict(label=f"{name}(op)({mut})", run=run, names=names, invalid=not valid, check=check_tensor(expect))


# ====================================================================================== metrics
METRICS = ("relative_error", "overlap", "inner", "psnr", "align_phase")


@family("metrics")
def metric_shapes(rng):
    name = pick(rng, METRICS)
    mut = pick(rng, ["signal (16,) vs (17,)", "batch (3, 16) vs (2, 16), signal_dims=1",
                     "ambiguous (2, 16) vs (2, 16)", "image (8, 8) vs (8, 9), signal_dims=2",
                     "x_hat (16,) vs x (3, 16)", "0-d tensors", "x (4, 4) vs x_hat (2, 4, 4)",
                     "empty signals (0,)"])
    valid = mut in ("x_hat (16,) vs x (3, 16)", "x (4, 4) vs x_hat (2, 4, 4)")
    expect = {"x_hat (16,) vs x (3, 16)": (3,), "x (4, 4) vs x_hat (2, 4, 4)": (2,)}

    def run():
        g = torch.Generator().manual_seed(2)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        pairs = {"signal (16,) vs (17,)": ((r(16), r(17)), {}),
                 "batch (3, 16) vs (2, 16), signal_dims=1": ((r(3, 16), r(2, 16)), {"signal_dims": 1}),
                 "ambiguous (2, 16) vs (2, 16)": ((r(2, 16), r(2, 16)), {}),
                 "image (8, 8) vs (8, 9), signal_dims=2": ((r(8, 8), r(8, 9)), {"signal_dims": 2}),
                 "x_hat (16,) vs x (3, 16)": ((r(16), r(3, 16)), {"signal_dims": 1}),
                 "0-d tensors": ((torch.tensor(1.0), torch.tensor(2.0)), {}),
                 "x (4, 4) vs x_hat (2, 4, 4)": ((r(2, 4, 4), r(4, 4)), {}),
                 "empty signals (0,)": ((r(0), r(0)), {})}
        (a, b), kw = pairs[mut]
        return getattr(M, name)(a, b, **kw)

    def check(res):
        if name == "align_phase":
            return check_tensor()(res)
        return check_tensor(expect.get(mut), allow_inf=False, unit=name == "overlap")(res)


    return dict(label=f"metrics.{name}({mut})", run=run,
                names=(r"shape", r"signal_dims", r"broadcast", r"batch", word("op"), r"zero", r"empty"),
                invalid=not valid, check=check)


@family("metrics")
def metric_values(rng):
    name = pick(rng, METRICS)
    mut = pick(rng, ["zero reference x", "zero estimate x_hat", "int64 tensors", "lists", "real vs complex",
                     "x_hat == x", "float16", "bool tensors"])
    valid = mut in ("zero estimate x_hat", "real vs complex", "x_hat == x", "float16")

    def run():
        g = torch.Generator().manual_seed(4)
        x = torch.randn(3, 16, generator=g)
        xh = torch.randn(3, 16, generator=g)
        if mut == "zero reference x":
            x = torch.zeros(3, 16)
        elif mut == "zero estimate x_hat":
            xh = torch.zeros(3, 16)
        elif mut == "int64 tensors":
            x, xh = x.long(), xh.long()
        elif mut == "lists":
            x, xh = x.tolist(), xh.tolist()
        elif mut == "real vs complex":
            xh = xh.to(torch.complex64)
        elif mut == "x_hat == x":
            xh = x.clone()
        elif mut == "float16":
            x, xh = x.half(), xh.half()
        elif mut == "bool tensors":
            x, xh = x > 0, xh > 0
        return getattr(M, name)(xh, x, signal_dims=1)

    def check(res):
        if name == "align_phase":
            return check_tensor((3, 16))(res)
        return check_tensor((3,), allow_inf=(name == "psnr" and mut == "x_hat == x"), unit=name == "overlap")(res)

    return dict(label=f"metrics.{name}(x_hat, x: {mut}, signal_dims=1)", run=run,
                names=(r"zero", r"norm", r"floating", r"tensor", r"dtype", word("x"), r"x_hat", r"range"),
                invalid=not valid, check=check)


@family("metrics")
def metric_signal_dims(rng):
    name = pick(rng, METRICS)
    val = pick(rng, [0, -1, 5, "1", 2.5, True, [1], NAN])

    def run():
        g = torch.Generator().manual_seed(6)
        return getattr(M, name)(torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g), signal_dims=val)

    return dict(label=f"metrics.{name}(x_hat (3, 16), x (3, 16), signal_dims={show(val)})", run=run,
                names=(r"signal_dims",), check=check_tensor())


@family("metrics")
def metric_op(rng):
    name = pick(rng, METRICS)
    mode = pick(rng, ["op of another signal shape", "op contradicting signal_dims", "op='cdp'"])

    def run():
        g = torch.Generator().manual_seed(6)
        a, b = torch.randn(2, 8, 8, generator=g), torch.randn(2, 8, 8, generator=g)
        if mode == "op of another signal shape":
            return getattr(M, name)(a, b, op=small_op("gauss-c"))
        if mode == "op contradicting signal_dims":
            return getattr(M, name)(a, b, op=small_op("cdp"), signal_dims=1)
        return getattr(M, name)(a, b, op="cdp")

    return dict(label=f"metrics.{name}(x_hat (2, 8, 8), x (2, 8, 8), {mode})", run=run,
                names=(word("op"), r"signal_dims", r"shape", r"operator"),
                check=check_tensor((2, 8, 8) if name == "align_phase" else (2,)))


@family("metrics")
def psnr_data_range(rng):
    val = pick(rng, [-1.0, 0.0, NAN, "x", INF, [1.0, 2.0], torch.tensor([1.0, -1.0, 1.0]), None])
    valid = val is None

    def run():
        g = torch.Generator().manual_seed(8)
        return M.psnr(torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g), data_range=val,
                      signal_dims=1)

    return dict(label=f"metrics.psnr(x_hat (3, 16), x (3, 16), data_range={show(val)})", run=run,
                names=(r"data_range",), invalid=not valid, check=check_tensor((3,)))


# ====================================================================================== theory
DMFT_BASE = dict(step=0.1, steps=2, samples=500, replicates=2, progress=False)
DMFT_BAD = {
    "delta": ([0.0, -1.0, NAN, INF, "4", 0.1, None, [4.0], 1j], (r"delta", r"δ", r"threshold")),
    "steps": ([-1, 2.5, "2", None, True, 0], (r"steps",)),
    "samples": ([0, 1, 2.5, -5, "500", None], (r"samples",)),
    "replicates": ([0, 1, 2.5, -1, "2"], (r"replicates",)),
    "step": ([-0.1, 0.0, NAN, INF, "0.1", 50.0, 1e6], (word("step"), r"μ", r"η")),
    "l2": ([-1.0, NAN, INF, "0.1"], (word("l2"), r"λ")),
    "preprocessing": (["identity", "foo", 3, None, "weighted"], (r"preprocessing",)),
    "noise": ([-1.0, NAN, INF, "0.1"], (r"noise", r"σ")),
    "field": (["complex", "x", None], (r"field",)),
    "seed": ([-1, "0", 2.5, NAN], (r"seed",)),
    "init": (["cold", None, 3], (word("init"),)),
    "init_overlap": ([1.5, -0.1, NAN, "0.5"], (r"init_overlap",)),
    "mu": (["x", None], (word("mu"),)),
    "chunk_size": ([0, -1, 2.5, "10"], (r"chunk_size",)),
    "threads": ([0, -1, 2.5], (r"threads",)),
    "dtype": ([torch.float16, "float32", torch.int64, torch.complex64], (r"dtype",)),
    "device": (["gpu", "cuda:7", "meta", 3], (r"device", r"cuda")),
    "schedule": ([3, "ramp"], (r"schedule",)),
    "power_steps": ([-1, 0, 2.5], (r"power_steps",)),
}


@family("theory")
def dmft_args(rng):
    arg = pick(rng, sorted(DMFT_BAD))
    vals, names = DMFT_BAD[arg]
    val = pick(rng, vals)
    kw = dict(DMFT_BASE, **{arg: val})
    if arg == "schedule":
        kw.pop("step")
    if arg == "power_steps":
        kw["init"] = "power"
    delta = kw.pop("delta", 4.0)
    return dict(label=call("theory.dmft", delta, **kw), run=lambda: dmft(delta, **kw), names=names,
                check=check_prediction, timeout=30.0)


@family("theory")
def dmft_schedules(rng):
    mode = pick(rng, ["t ↦ -1", "t ↦ NaN", "t ↦ 'x'", "step and schedule"])
    sched = {"t ↦ -1": lambda t: -1.0, "t ↦ NaN": lambda t: NAN, "t ↦ 'x'": lambda t: "x",
             "step and schedule": lambda t: 0.1}[mode]
    kw = dict(DMFT_BASE)
    if mode != "step and schedule":
        kw.pop("step")
    return dict(label=f"theory.dmft(4.0, schedule={mode}, steps=2, samples=500, replicates=2)",
                run=lambda: dmft(4.0, schedule=sched, **kw), names=(r"schedule", word("step"), r"μ"),
                check=check_prediction)


FP_BAD = {
    "delta": ([0.0, -1.0, NAN, INF, "4", None], (r"delta",)),
    "l2": ([-1.0, NAN, INF, "0.1", None], (word("l2"),)),
    "noise": ([-1.0, NAN, INF], (r"noise",)),
    "damping": ([0.0, 1.5, NAN, -0.5], (r"damping",)),
    "memory": ([-1, 2.5, "3"], (r"memory",)),
    "tol": ([-1.0, NAN, "1e-9"], (word("tol"),)),
    "max_iter": ([0, -1, 2.5], (r"max_iter",)),
    "nodes": ([0, 2.5, -3], (r"nodes",)),
    "noise_nodes": ([0, 2.5], (r"noise_nodes",)),
    "z_panels": ([0, -1], (r"z_panels",)),
    "preprocessing": (["foo", 3, "identity"], (r"preprocessing",)),
    "start": ([NAN, "0.5", INF], (r"start",)),
    "field": (["complex", "x"], (r"field",)),
}


@family("theory")
def fixed_point_args(rng):
    arg = pick(rng, sorted(FP_BAD))
    vals, names = FP_BAD[arg]
    val = pick(rng, vals)
    kw = dict(l2=0.1, max_iter=200)
    kw[arg] = val
    delta = kw.pop("delta", 4.0)
    return dict(label=call("theory.fixed_point", delta, **kw), run=lambda: fixed_point(delta, **kw), names=names,
                check=check_fixed_point)


@family("theory", limit=2)
def fixed_point_missing_l2(rng):
    return dict(label="theory.fixed_point(4.0)  (l2 missing)", run=lambda: fixed_point(4.0), names=(word("l2"),),
                check=check_fixed_point)


@family("theory")
def spectral_overlap_args(rng):
    mode = pick(rng, ["delta", "preprocessing", "field", "noise"])
    kw: Dict[str, Any] = {}
    delta: Any = 4.0
    if mode == "delta":
        delta = pick(rng, [-1.0, 0.0, NAN, "4", [1.0, -1.0], torch.tensor([NAN]), [], [[1.0, 2.0], [3.0]], None,
                           INF, torch.tensor([2.0, 4.0]), 1j])
        names = (r"delta", r"δ")
    elif mode == "preprocessing":
        kw["preprocessing"] = pick(rng, ["foo", 3, fn_label(lambda y: torch.full_like(y, NAN), "T = NaN"),
                                         fn_label(lambda y: y, "T = y (unbounded)"),
                                         fn_label(lambda y: y[:3], "T = y[:3]"),
                                         fn_label(lambda y: torch.zeros_like(y), "T = 0")])
        names = (r"preprocessing", r"callable", r"T\(", r"unbounded", r"nan", r"finite")
    elif mode == "field":
        kw["field"] = pick(rng, ["x", None, "COMPLEX"])
        names = (r"field",)
    else:
        kw["noise"] = pick(rng, [-1.0, NAN, INF, "0.1"])
        names = (r"noise",)
    valid = (mode == "delta" and (isinstance(delta, torch.Tensor) and bool(torch.isfinite(delta).all())
                                  and bool((delta > 0).all()) or delta is INF))
    return dict(label=call("theory.spectral_overlap", delta, **kw), run=lambda: spectral_overlap(delta, **kw),
                names=names, invalid=not valid, check=check_float(0.0, 1.0))


@family("theory")
def spectral_threshold_args(rng):
    mode = pick(rng, ["preprocessing", "field", "noise", "delta_min", "delta_max"])
    kw: Dict[str, Any] = {}
    if mode == "preprocessing":
        kw["preprocessing"] = pick(rng, ["foo", 3, "identity", fn_label(lambda y: torch.full_like(y, NAN), "T = NaN")])
        names = (r"preprocessing", r"callable", r"nan", r"finite", r"unbounded")
    elif mode == "field":
        kw["field"] = pick(rng, ["x", None])
        names = (r"field",)
    elif mode == "noise":
        kw["noise"] = pick(rng, [-1.0, NAN, INF])
        names = (r"noise",)
    elif mode == "delta_min":
        kw["delta_min"] = pick(rng, [0.0, -1.0, NAN, 2e3, "0.01"])
        names = (r"delta_min",)
    else:
        kw["delta_max"] = pick(rng, [1e-3, NAN, INF, -1.0])
        names = (r"delta_max", r"delta_min")
    return dict(label=call("theory.spectral_threshold", **kw), run=lambda: spectral_threshold(**kw), names=names,
                check=check_float(0.0, None))


@family("theory")
def spectral_limits_args(rng):
    delta = pick(rng, [0.0, -2.0, NAN, "4", None, 0.3])
    valid = delta == 0.3
    def check(lim):
        return nonfinite({k: getattr(lim, k) for k in ("rho", "rho2") if hasattr(lim, k)})
    return dict(label=call("theory.spectral_limits", delta), run=lambda: spectral_limits(delta),
                names=(r"delta", r"δ"), invalid=not valid, check=check)


SIM_BAD = {
    "delta": ([0.0, -1.0, NAN, INF, "4", None, 1e-9], (r"delta", r"measurements")),
    "dim": ([0, 1, 2.5, "16", -4], (r"dim",)),
    "seeds": ([0, -1, [], ["a"], [1, -1], 2.5, [1.5], None], (r"seeds", r"seed")),
    "step": ([-1.0, NAN, INF, "0.1", 0.0], (word("step"),)),
    "steps": ([-1, 2.5, None], (r"steps",)),
    "noise": ([-1.0, NAN, INF], (r"noise",)),
    "l2": ([-1.0, NAN], (word("l2"),)),
    "field": (["x", None], (r"field",)),
    "dtype": ([torch.float16, torch.int32, "float64", torch.complex128], (r"dtype",)),
    "schedule": ([3, "ramp"], (r"schedule",)),
    "preprocessing": (["foo", 3], (r"preprocessing",)),
    "device": (["gpu", "meta"], (r"device",)),
    "seed": ([-1, "0"], (r"seed",)),
}


@family("theory")
def simulate_args(rng):
    arg = pick(rng, sorted(SIM_BAD))
    vals, names = SIM_BAD[arg]
    val = pick(rng, vals)
    kw: Dict[str, Any] = dict(dim=16, seeds=2, step=0.1, steps=3, progress=False)
    kw[arg] = val
    if arg == "schedule":
        kw["step"] = None
    delta = kw.pop("delta", 4.0)
    return dict(label=call("theory.simulate", delta, **kw), run=lambda: simulate(delta, **kw), names=names,
                check=check_log)


# ====================================================================================== files
_COUNTER = itertools.count()


def ws() -> Dict[str, Path]:
    """The worker's fixture folder (valid files of every kind, plus empty/dir/FIFO/text/binary ones)."""
    if "ws" in _CACHE:
        return _CACHE["ws"]
    root = Path(tempfile.mkdtemp(prefix="ws-", dir=str(BASE_TMP) if BASE_TMP else None))
    f: Dict[str, Path] = {"root": root}
    op = pt.CodedDiffraction((8, 8), 2, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.view_as_complex(torch.randn(8, 8, 2, generator=g))
    y = op(x)
    f["operator"] = root / "operator.pt"
    pt.save_operator(op, f["operator"])
    f["operator_other"] = root / "operator_other.pt"
    pt.save_operator(pt.CodedDiffraction((8, 8), 2, seed=1), f["operator_other"])
    f["measurements"] = root / "measurements.pt"
    pio.save_measurements(f["measurements"], y, x_true=x, operator=op)
    f["log"] = root / "log.json"
    simulate(4.0, dim=16, seeds=2, step=0.1, steps=3, progress=False).to_json(f["log"])
    f["prediction"] = root / "prediction.json"
    dmft(4.0, **DMFT_BASE).to_json(f["prediction"])
    f["hopper"] = pio.bundled("grace_hopper")
    f["image"] = root / "image.png"
    pio.save_image(torch.rand(16, 16, generator=g), f["image"])
    f["signal"] = root / "signal.pt"
    torch.save(x, f["signal"])
    f["empty"] = root / "empty.pt"
    f["empty"].write_bytes(b"")
    f["dir"] = root / "folder.pt"
    f["dir"].mkdir()
    f["fifo"] = root / "pipe.pt"
    os.mkfifo(f["fifo"])
    f["text"] = root / "notes.pt"
    f["text"].write_text("hello, not a tensor file\n")
    f["binary"] = root / "noise.pt"
    f["binary"].write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    f["missing"] = root / "missing.pt"
    f["bigpng"] = root / "bomb.png"
    f["bigpng"].write_bytes(_png_header(100_000, 100_000))
    _CACHE["ws"] = f
    return f


def _png_header(width: int, height: int) -> bytes:
    import zlib
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    chunk = len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big")


def fresh(suffix: str) -> Path:
    return ws()["root"] / f"case{next(_COUNTER)}{suffix}"


def _with_operator(p):
    return pio.load_measurements(p, operator=pt.load_operator(ws()["operator"]))


LOADERS = {
    "io.load_measurements": (pio.load_measurements, "measurements", ".pt"),
    "io.load_measurements(operator=…)": (_with_operator, "measurements", ".pt"),
    "physics.load_operator": (pt.load_operator, "operator", ".pt"),
    "TrainingLog.from_json": (TrainingLog.from_json, "log", ".json"),
    "Prediction.from_json": (Prediction.from_json, "prediction", ".json"),
    "io.load_json": (pio.load_json, "log", ".json"),
    "io.load_signal": (pio.load_signal, "signal", ".pt"),
    "io.load_image": (pio.load_image, "image", ".png"),
}
FILE_KINDS = ("missing", "empty", "truncated", "directory", "text", "binary noise", "another kind of file")


def check_loaded(obj: Any) -> Optional[str]:
    if isinstance(obj, pt.MeasurementOperator):
        return check_op(obj)
    if isinstance(obj, TrainingLog):
        return None
    if isinstance(obj, dict) and "y" in obj:
        return nonfinite({k: obj[k] for k in ("y", "x_true") if isinstance(obj.get(k), torch.Tensor)})
    if isinstance(obj, torch.Tensor):
        return check_tensor()(obj)
    return None


@family("files")
def bad_files(rng):
    loader, kind = pick(rng, [(a, b) for a in sorted(LOADERS) for b in FILE_KINDS])
    fn, own, suffix = LOADERS[loader]
    other = pick(rng, [k for k in ("measurements", "operator", "log", "prediction", "image") if k != own])

    def run():
        w = ws()
        if kind == "missing":
            p = w["missing"].with_suffix(suffix)
        elif kind == "empty":
            p = fresh(suffix)
            p.write_bytes(b"")
        elif kind == "truncated":
            data = w[own].read_bytes()
            p = fresh(suffix)
            p.write_bytes(data[: max(1, len(data) // 2)])
        elif kind == "directory":
            p = fresh(suffix)
            p.mkdir()
        elif kind == "FIFO":
            p = fresh(suffix)
            os.mkfifo(p)
        elif kind == "text":
            p = fresh(suffix)
            p.write_text("hello, this is not what you think\n")
        elif kind == "binary noise":
            p = fresh(suffix)
            p.write_bytes(w["binary"].read_bytes())
        else:
            p = fresh(suffix)
            p.write_bytes(w[other].read_bytes())
        return fn(p)

    what = f"{kind} ({other} file)" if kind == "another kind of file" else kind
    return dict(label=f"{loader}(<{what}>)", run=run,
                names=(r"case\d+", r"missing\.", r"file", r"director", r"regular", r"exist", r"empty"),
                check=check_loaded, timeout=8.0)


@family("files")
def fifo_files(rng):
    """A FIFO blocks its reader until a writer appears: every loader must refuse it at once."""
    loader = pick(rng, sorted(LOADERS))
    fn, _, suffix = LOADERS[loader]

    def run():
        p = fresh(suffix)
        os.mkfifo(p)
        return fn(p)

    return dict(label=f"{loader}(<FIFO>)", run=run, names=(r"case\d+", r"regular", r"FIFO"), check=check_loaded,
                timeout=8.0)


def _tampered_operator_payloads():
    """name → (invalid, names, build() → payload dict for torch.save)."""
    def base(op):
        return {"format": "phasetorch-operator", "version": 1, "config": op.config(),
                "state_dict": {k: v.clone() for k, v in op.state_dict().items()}}

    def nan_state(op_fn, key):
        def build():
            p = base(op_fn())
            t = p["state_dict"][key]
            t.view(-1)[:: max(1, t.numel() // 5)] = NAN
            return p
        return build

    def config(op_fn, **changes):
        def build():
            p = base(op_fn())
            p["config"].update(changes)
            if changes.get("_drop_state"):
                p["state_dict"] = {}
            p["config"].pop("_drop_state", None)
            return p
        return build

    cdp = lambda: pt.CodedDiffraction((4, 4), 2, seed=0)  # noqa: E731
    gauss = lambda: pt.GaussianMeasurement(4, 16, seed=0)  # noqa: E731
    mat = lambda: pt.MatrixMeasurement(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))  # noqa: E731
    sr = lambda: pt.StructuredRandom(8, seed=0)  # noqa: E731
    SIZE = (r"\bm\b", r"rows", r"memory", r"GiB|GB", r"too large", r"n_masks", r"state")
    return {
        "NaN in CodedDiffraction masks": (True, (r"nan", r"finite", r"state"), nan_state(cdp, "D")),
        "NaN in GaussianMeasurement matrix": (True, (r"nan", r"finite", r"state"), nan_state(gauss, "A")),
        "NaN in MatrixMeasurement matrix": (True, (r"nan", r"finite", r"state"), nan_state(mat, "A")),
        "NaN in StructuredRandom phases": (True, (r"nan", r"finite", r"state"), nan_state(sr, "D")),
        "MatrixMeasurement config with m=10^10 rows": (True, SIZE, config(mat, m=10 ** 10)),
        "GaussianMeasurement config with m=10^10 (no state)": (True, SIZE, config(gauss, m=10 ** 10, _drop_state=True)),
        "CodedDiffraction config with n_masks=10^9": (True, SIZE, config(cdp, n_masks=10 ** 9)),
        "config type 'Foo'": (True, (r"type", r"Foo"), config(cdp, type="Foo")),
        "config n=-4": (True, (word("n"),), config(gauss, n=-4)),
        "config dtype 'float16'": (True, (r"dtype",), config(cdp, dtype="float16")),
        "config with an unknown key": (True, (r"bogus", r"config"), config(cdp, bogus=1)),
        "config m='16' (a string)": (True, (word("m"), r"config"), config(mat, m="16")),
        "config m=-6 for a matrix": (True, (word("m"), r"row"), config(mat, m=-6)),
        "config shape 'abc'": (True, (r"shape",), config(cdp, shape="abc")),
    }


def _other_payloads():
    def base(op):
        return {"format": "phasetorch-operator", "version": 1, "config": op.config(),
                "state_dict": {k: v.clone() for k, v in op.state_dict().items()}}
    cdp = lambda: pt.CodedDiffraction((4, 4), 2, seed=0)  # noqa: E731

    def edit(fn):
        def build():
            p = base(cdp())
            fn(p)
            return p
        return build
    return {
        "state of another shape": (True, (r"state", r"shape", r"config", r"match"),
                                   edit(lambda p: p["state_dict"].update(D=torch.zeros(3, 4, 4, 2)))),
        "state key renamed": (True, (r"state", r"key", r"config", r"match"),
                              edit(lambda p: p["state_dict"].update(E=p["state_dict"].pop("D")))),
        "version 99": (True, (r"version", r"newer"), edit(lambda p: p.update(version=99))),
        "format 'other'": (True, (r"operator file", r"format"), edit(lambda p: p.update(format="other"))),
        "config is a list": (True, (r"config",), edit(lambda p: p.update(config=[1, 2]))),
        "config without 'type'": (True, (r"type", r"config"), edit(lambda p: p["config"].pop("type"))),
        "version 'x'": (True, (r"version",), edit(lambda p: p.update(version="x"))),
        "state_dict is a list": (True, (r"state",), edit(lambda p: p.update(state_dict=[1]))),
        "state with complex-as-int dtype": (True, (r"state", r"dtype"),
                                            edit(lambda p: p["state_dict"].update(D=p["state_dict"]["D"].long()))),
    }


@family("files")
def tampered_operators(rng):
    table = dict(_tampered_operator_payloads(), **_other_payloads())
    key = pick(rng, sorted(table))
    invalid, names, _ = table[key]

    def run():
        payload = dict(_tampered_operator_payloads(), **_other_payloads())[key][2]()
        p = fresh(".pt")
        torch.save(payload, p)
        return pt.load_operator(p)

    return dict(label=f"physics.load_operator(<{key}>)", run=run, names=names, invalid=invalid, check=check_op,
                quick=5.0 if "10^" in key else None, timeout=15.0)


def _measurement_payloads():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 8, 8, generator=g)
    return {
        "y with NaN": ({"y": y.index_fill(0, torch.tensor([0]), NAN)}, True, (r"nan", r"finite")),
        "complex y": ({"y": y.to(torch.complex64)}, True, (r"complex", r"real", r"dtype")),
        "int64 y": ({"y": y.long()}, True, (r"floating", r"dtype", r"real")),
        "no 'y'": ({"x": y}, True, (r"'y'", r"\by\b")),
        "y as a list": ({"y": y.tolist()}, True, (r"'y'", r"tensor")),
        "format 'other'": ({"y": y, "format": "other"}, True, (r"format",)),
        "version 99": ({"y": y, "version": 99}, True, (r"version",)),
        "version 'x'": ({"y": y, "version": "x"}, True, (r"version",)),
        "meta 'abc'": ({"y": y, "meta": "abc"}, True, (r"meta",)),
        "meta a list": ({"y": y, "meta": [1, 2]}, True, (r"meta",)),
        "nonnegative 'no'": ({"y": y, "nonnegative": "no"}, True, (r"nonnegative",)),
        "x_true a string": ({"y": y, "x_true": "x"}, True, (r"x_true",)),
        "operator identity a string": ({"y": y, "operator": "op"}, True, (r"operator",)),
        "a list of tensors": ([y, y], True, (r"dict", r"'y'")),
        "0-d y": ({"y": torch.tensor(1.0)}, True, (r"\by\b", r"shape")),
        "float16 y": ({"y": y.half()}, False, (r"\by\b", r"dtype")),
    }


def _measurement_payloads_with_operator():
    op = pt.CodedDiffraction((8, 8), 2, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.view_as_complex(torch.randn(8, 8, 2, generator=g))
    y = op(x)
    other = pio.operator_identity(pt.CodedDiffraction((8, 8), 2, seed=1))
    return {
        "y of another shape": ({"y": y[:, :4]}, True, (r"shape", r"operator")),
        "x_true of another shape": ({"y": y, "x_true": x[:4]}, True, (r"x_true", r"shape")),
        "support of another shape": ({"y": y, "support": torch.ones(4, 4, dtype=torch.bool)}, True,
                                     (r"support", r"shape")),
        "support with 0.5 values": ({"y": y, "support": torch.full((8, 8), 0.5)}, True, (r"support",)),
        "identity of another operator": ({"y": y, "operator": other}, True, (r"operator", r"force")),
        "identity without config": ({"y": y, "operator": {"state_sha256": "0"}}, True, (r"operator", r"force")),
        "x_true NaN": ({"y": y, "x_true": torch.full_like(x, NAN)}, True, (r"x_true", r"nan", r"finite")),
    }


@family("files")
def tampered_measurements(rng):
    with_op = rng.random() < 0.4
    table = _measurement_payloads_with_operator() if with_op else _measurement_payloads()
    key = pick(rng, sorted(table))
    _, invalid, names = table[key]

    def run():
        payload = (_measurement_payloads_with_operator() if with_op else _measurement_payloads())[key][0]
        p = fresh(".pt")
        torch.save(payload, p)
        return _with_operator(p) if with_op else pio.load_measurements(p)

    return dict(label=f"io.load_measurements(<{key}>{', operator=…' if with_op else ''})", run=run, names=names,
                invalid=invalid, check=check_loaded)


def _tampered_json(kind: str) -> Dict[str, Callable[[dict], Any]]:
    """name → edit(d) for a TrainingLog ('log') or Prediction ('prediction') JSON dict (returns the new dict)."""
    def upd(**kv):
        def f(d):
            d.update(kv)
            return d
        return f

    def col(fn):
        def f(d):
            data = d["data"] if kind == "log" else d["per_replicate"]
            name = "loss" if kind == "log" else "overlap"
            data[name] = fn(data[name])
            return d
        return f
    common = {
        "format missing": lambda d: {k: v for k, v in d.items() if k != "format"},
        "a JSON list": lambda d: [d],
        "a JSON number": lambda d: 3,
        "version 99": upd(version=99),
        "strings in a column": col(lambda rows: [["x"] * len(r) if isinstance(r, list) else "x" for r in rows]),
        "ragged column": col(lambda rows: rows[:1] + [r[:1] if isinstance(r, list) else r for r in rows[1:]]),
        "a column of objects": col(lambda rows: {"a": 1}),
        "NaN literal (non-strict JSON)": col(lambda rows: [[NAN] * len(r) if isinstance(r, list) else NAN
                                                            for r in rows]),
        "nested too deep": col(lambda rows: [[[v] for v in r] if isinstance(r, list) else [r] for r in rows]),
        "huge numbers 1e999": col(lambda rows: [[1e308 * 10] * len(r) if isinstance(r, list) else 1e999 for r in rows]),
    }
    if kind == "log":
        common.update({
            "batch_shape [10^10]": upd(batch_shape=[10 ** 10]),
            "batch_shape [10^6, 10^6]": upd(batch_shape=[10 ** 6, 10 ** 6]),
            "batch_shape [-1]": upd(batch_shape=[-1]),
            "batch_shape 'x'": upd(batch_shape="x"),
            "columns without 'iteration'": lambda d: dict(d, columns=[c for c in d["columns"] if c != "iteration"]),
            "iteration strings": lambda d: dict(d, data=dict(d["data"], iteration=["a"] * len(d["data"]["iteration"]))),
            "config a list": upd(config=[1]),
            "duplicate columns": lambda d: dict(d, columns=d["columns"] + d["columns"][1:2]),
            "column listed but missing": lambda d: dict(d, columns=d["columns"] + ["ghost"]),
        })
    else:
        common.update({
            "iteration strings": lambda d: dict(d, iteration=["a"] * len(d["iteration"])),
            "iteration empty": upd(iteration=[]),
            "params a list": upd(params=[1]),
            "kernels with strings": lambda d: dict(d, kernels={k: "x" for k in d["kernels"]}),
            "checks malformed": upd(checks={"a": [1]}),
            "per_replicate empty": upd(per_replicate={}),
            "step shorter than iteration": lambda d: dict(d, step=d["step"][:1]),
            "format 'phasetorch.theory.Prediction.v999'": upd(format="phasetorch.theory.Prediction.v999"),
        })
    return common


@family("files")
def tampered_json(rng):
    kind = pick(rng, ["log", "prediction"])
    key = pick(rng, sorted(_tampered_json(kind)))
    loader = TrainingLog.from_json if kind == "log" else Prediction.from_json

    def run():
        d = json.loads(ws()[kind].read_text())
        d = _tampered_json(kind)[key](d)
        p = fresh(".json")
        p.write_text(json.dumps(d))
        return loader(p)

    def check(obj):
        if kind == "log":
            try:
                for c in obj.columns if hasattr(obj, "columns") else ("loss",):
                    obj[c]
            except Exception as exc:  # loaded, but its columns cannot be read back
                return f"loaded, but reading a column fails: {type(exc).__name__}: {one_line(exc)}"
            return None
        return check_prediction(obj)

    names = (r"TrainingLog" if kind == "log" else r"Prediction", r"column", r"batch_shape", r"format", r"version",
             r"iteration", r"config", r"params", r"kernels", r"checks", r"step", r"per_replicate", r"number",
             r"overlap", r"loss")
    return dict(label=f"{'TrainingLog' if kind == 'log' else 'Prediction'}.from_json(<{key}>)", run=run, names=names,
                check=check, quick=5.0, timeout=10.0)


@family("files")
def image_files(rng):
    mode = pick(rng, ["PNG header claiming 100000×100000", "text file named .png", "load_image size=0",
                      "load_image size=(64, 0)", "load_image size=100000", "load_image size='64'",
                      "load_image size=(16, 16, 3)", "load_signal of a .pt holding a dict without 'x'",
                      "load_signal of a .pt holding a string"])

    def run():
        w = ws()
        if mode.startswith("PNG header"):
            return pio.load_image(w["bigpng"])
        if mode == "text file named .png":
            p = fresh(".png")
            p.write_text("not a png")
            return pio.load_image(p)
        if mode.startswith("load_image size="):
            size = {"0": 0, "(64, 0)": (64, 0), "100000": 100000, "'64'": "64", "(16, 16, 3)": (16, 16, 3)}[
                mode.split("=", 1)[1]]
            return pio.load_image(w["image"], size=size)
        p = fresh(".pt")
        torch.save({"y": torch.ones(3)} if "dict" in mode else "hello", p)
        return pio.load_signal(p)

    return dict(label=f"io.{mode}", run=run,
                names=(r"size", r"pixel", r"image", r"case\d+", r"bomb", r"file", r"'x'", r"tensor"),
                check=check_loaded, quick=5.0, timeout=15.0)


# ====================================================================================== command line
@dataclass
class CliResult:
    argv: List[str]
    rc: Optional[int]
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    real: bool


def _cli_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("PHASETORCH_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def cli_fork(argv: List[str], timeout: float, cwd: Path) -> CliResult:
    """``phasetorch.app.cli.main(argv)`` in a forked child (the parent's imports reused), stdout/stderr captured."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: run the command and exit with its status
            code = 1
            try:
                os.chdir(cwd)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                os.environ.pop("PHASETORCH_DEBUG", None)
                from phasetorch.app.cli import main
                try:
                    code = main(list(argv))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)
        timed_out, status = False, 0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        rc = None if timed_out else os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return CliResult(list(argv), rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                         time.perf_counter() - t0, timed_out, False)


def cli_subprocess(argv: List[str], timeout: float, cwd: Path) -> CliResult:
    """The real ``python -m phasetorch`` (inherits this worker's address-space cap)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "phasetorch", *argv], cwd=cwd, env=_cli_env(),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        return CliResult(list(argv), p.returncode, p.stdout.decode("utf-8", "replace"),
                         p.stderr.decode("utf-8", "replace"), time.perf_counter() - t0, False, True)
    except subprocess.TimeoutExpired as exc:
        return CliResult(list(argv), None, (exc.stdout or b"").decode("utf-8", "replace"),
                         (exc.stderr or b"").decode("utf-8", "replace"), time.perf_counter() - t0, True, True)


def judge_cli(names: Sequence[str], invalid: bool) -> Callable[[CliResult], Tuple[str, str, bool]]:
    def judge(res: CliResult) -> Tuple[str, str, bool]:
        if res.timed_out:
            return "unclear", f"no exit within {res.seconds:.0f} s (hang or unbounded work)", True
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        if "Traceback (most recent call last)" in res.stderr:
            return "unclear", f"traceback (exit {res.rc}): {lines[-1] if lines else ''}", False
        if res.rc == 0:
            return "accepted", f"exit 0: {(res.stdout.strip().splitlines() or [''])[-1][:200]}", False
        errors = [ln for ln in lines if ln.startswith("phasetorch: error:")]
        if res.rc is not None and res.rc < 0:
            return "unclear", f"killed by signal {-res.rc} ({signal.Signals(-res.rc).name})", False
        if len(errors) != 1:
            tail = " | ".join(lines[-2:])[:300]
            return "unclear", f"exit {res.rc} without exactly one 'phasetorch: error:' line: {tail}", False
        msg = errors[0]
        if "internal error" in msg or leaked_torch_error(msg):
            return "unclear", msg, False
        if any(re.search(p, msg, re.IGNORECASE) for p in names):
            return "clear", msg, False
        return "unclear", f"does not name the option or file: {msg}", False
    return judge


def _cli_case(rng, argv: List[str], names: Sequence[str], invalid: bool = True, timeout: float = 40.0,
              quick: Optional[float] = None) -> dict:
    # the real subprocess for every 8th case, unless an argument is beyond what exec() takes (128 KiB on
    # Linux, MAX_ARG_STRLEN): that limit is the operating system's, not the command's
    real = rng.random() < 0.125 and max((len(a) for a in argv), default=0) < 100_000

    def run():
        w = ws()
        _prepare_cli()
        out = w["root"] / f"out{next(_COUNTER)}"
        subst = {k: str(v) for k, v in w.items()}
        subst.update(out=str(out), trunc_meas=str(_truncated("measurements", ".pt")),
                     trunc_log=str(_truncated("log", ".json")), trunc_png=str(_truncated("image", ".png")))
        args = [a.format(**subst) for a in argv]
        runner = cli_subprocess if real else cli_fork
        return runner(args, timeout, w["root"])

    label = ("python -m phasetorch " if real else "phasetorch ") + " ".join(
        a.replace("{", "<").replace("}", ">") for a in argv)
    return dict(label=label, run=run, names=tuple(names), invalid=invalid, judge=judge_cli(names, invalid),
                timeout=timeout + 20.0, quick=None if quick is None else quick + (4.0 if real else 0.0))


def _truncated(kind: str, suffix: str) -> Path:
    key = "trunc_" + kind
    w = ws()
    if key not in w:
        data = w[kind].read_bytes()
        p = w["root"] / f"truncated_{kind}{suffix}"
        p.write_bytes(data[: max(1, len(data) // 2)])
        w[key] = p
    return w[key]


def _prepare_cli() -> None:
    """Import what the commands import (matplotlib, torchvision) once, so forked runs do not pay for it."""
    if "cli-ready" not in _CACHE:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot  # noqa: F401
        import torchvision  # noqa: F401
        import phasetorch.app.cli  # noqa: F401
        _CACHE["cli-ready"] = True


SIM = ["--quiet", "simulate", "{image}", "--size", "16", "--out", "{out}"]
SIM_OPTIONS = {
    "--masks": ["0", "-1", "abc", "2.5", ""], "--oversampling": ["0", "x", "-2"], "--layers": ["0", "1.5"],
    "--delta": ["0", "-1", "nan", "inf", "x"], "--size": ["0", "64x0", "64x48x2", "abc", "-5", "x64"],
    "--noise": ["poisson", "poisson:-1", "poisson:abc", "gauss:0.1", "gaussian:nan", "gaussian:inf", "poisson:0",
                ":", "poisson:1e400", "gaussian:-0.1", "poisson-total:-5", "poisson:1:2"],
    "--dtype": ["float16", "half", "int32"], "--device": ["gpu", "cuda:x", "tpu", "cuda:99"],
    "--seed": ["-1", "abc", "1e3"], "--model": ["foo", ""], "--mask-type": ["ternary"],
    "--threads": ["0", "abc", "-2"],
}


@family("cli")
def cli_simulate_options(rng):
    opt = pick(rng, sorted(SIM_OPTIONS))
    val = pick(rng, SIM_OPTIONS[opt])
    names = [re.escape(opt), opt.strip("-").replace("-", "[- ]")]
    if opt == "--device":
        names.append(r"cuda")
    return _cli_case(rng, SIM + [opt, val], names)


@family("cli")
def cli_simulate_model_options(rng):
    model, opt, val = pick(rng, [("structured", "--oversampling", "0"), ("fourier", "--oversampling", "-1"),
                                 ("gaussian", "--delta", "0"), ("structured", "--layers", "0"),
                                 ("gaussian", "--delta", "1e9"), ("cdp", "--masks", "100000"),
                                 ("cdp", "--masks", "1000000"),
                                 ("structured", "--oversampling", "100000"), ("fourier", "--oversampling", "100000"),
                                 ("structured", "--layers", "10000000")])
    # huge settings (refused quickly, before allocating) on the bundled 256×256 image: > 64 GB in all
    huge = val in ("1e9", "100000", "1000000", "10000000")
    argv = ["--quiet", "simulate", "{hopper}" if huge else "{image}", "--model", model, "--out", "{out}", opt, val]
    names = [re.escape(opt), r"GiB", r"--size"] if huge else [re.escape(opt)]
    return _cli_case(rng, argv, names, timeout=40.0, quick=10.0 if huge else None)


@family("cli")
def cli_simulate_images(rng):
    kind = pick(rng, ["missing", "empty", "dir", "fifo", "text", "binary", "bigpng", "trunc_png", "measurements"])
    argv = ["--quiet", "simulate", "{" + kind + "}", "--out", "{out}"]
    return _cli_case(rng, argv, [r"image", r"file", r"regular", r"director", r"exist", r"pixel", r"\.pt", r"\.png",
                                 r"PNG", r"JPEG"], timeout=30.0)


@family("cli", limit=4)
def cli_simulate_huge_size(rng):
    size = pick(rng, ["150000", "200000x200000", "60000"])
    argv = ["--quiet", "simulate", "{image}", "--size", size, "--out", "{out}"]
    return _cli_case(rng, argv, [r"--size", r"GiB", r"pixel"], timeout=40.0, quick=10.0)


@family("cli")
def cli_reconstruct_files(rng):
    which = pick(rng, ["measurements", "operator"])
    kind = pick(rng, ["missing", "empty", "dir", "fifo", "text", "binary", "trunc_meas", "log", "image"])
    meas = "{" + kind + "}" if which == "measurements" else "{measurements}"
    op = "{" + kind + "}" if which == "operator" else "{operator}"
    argv = ["--quiet", "reconstruct", "--measurements", meas, "--operator", op, "--iters", "3", "--out", "{out}"]
    return _cli_case(rng, argv, [r"file", r"regular", r"director", r"exist", r"operator", r"measurements", r"\.pt",
                                 r"\.json", r"\.png"])


@family("cli")
def cli_reconstruct_options(rng):
    opt, val, names = pick(rng, [
        ("--iters", "0", [r"--iters"]), ("--iters", "-5", [r"--iters"]), ("--iters", "1e9", [r"--iters"]),
        ("--step", "-1", [r"--step"]), ("--step", "nan", [r"--step"]), ("--step", "0", [r"--step"]),
        ("--algorithm", "foo", [r"--algorithm"]), ("--init", "foo", [r"--init"]),
        ("--preprocessing", "foo", [r"preprocessing"]), ("--preprocessing", "", [r"preprocessing"]),
        ("--operator", "{operator_other}", [r"operator", r"--force"]), ("--step", "1e9", [r"step"]),
    ])
    argv = ["--quiet", "reconstruct", "--measurements", "{measurements}", "--operator", "{operator}", "--iters", "3",
            "--out", "{out}", opt, val]
    return _cli_case(rng, argv, names, timeout=40.0)


@family("cli")
def cli_reconstruct_usage(rng):
    argv, names = pick(rng, [
        (["--quiet", "reconstruct", "--measurements", "{measurements}", "--out", "{out}"], [r"--operator"]),
        (["--quiet", "reconstruct", "--operator", "{operator}", "--out", "{out}"], [r"--measurements"]),
        (["--quiet", "reconstruct", "{image}", "--measurements", "{measurements}", "--operator", "{operator}",
          "--out", "{out}"], [r"IMAGE", r"--measurements"]),
        (["--quiet", "reconstruct", "--out", "{out}"], [r"IMAGE", r"--measurements"]),
        (["--quiet", "reconstruct", "{image}"], [r"--out"]),
        (["--quiet", "reconstruct", "{measurements}", "--out", "{out}"], [r"image", r"\.pt", r"measurements"]),
    ])
    return _cli_case(rng, argv, names)


TRAIN = ["--quiet", "train", "--delta", "4", "--dim", "16", "--seeds", "2", "--steps", "3", "--out", "{out}"]
TRAIN_OPTIONS = {
    "--delta": ["0", "-1", "nan", "0.1"], "--dim": ["0", "1"], "--seeds": ["0", "-3"], "--steps": ["0", "x"],
    "--l2": ["-1", "nan"], "--step": ["0", "-1", "inf", "1e6"], "--noise": ["poisson:10", "gaussian:-1", "x"],
    "--preprocessing": ["foo", "identity"], "--field": ["x"], "--algorithm": ["foo"], "--device": ["gpu"],
}


@family("cli")
def cli_train_options(rng):
    opt = pick(rng, sorted(TRAIN_OPTIONS))
    val = pick(rng, TRAIN_OPTIONS[opt])
    names = [re.escape(opt), opt.strip("-")]
    if opt == "--delta" and val == "0.1":
        names += [r"threshold", r"δ"]
    return _cli_case(rng, TRAIN + [opt, val], names)


@family("cli", limit=3)
def cli_train_huge(rng):
    dim, delta = pick(rng, [("100000", "100"), ("2000000", "8"), ("50000", "50")])
    argv = ["--quiet", "train", "--delta", delta, "--dim", dim, "--seeds", "8", "--steps", "2", "--out", "{out}"]
    return _cli_case(rng, argv, [r"--dim", r"--delta", r"--seeds", r"GiB"], timeout=40.0, quick=10.0)


THEORY = ["--quiet", "theory", "--delta", "4", "--steps", "2", "--samples", "500", "--replicates", "2", "--out",
          "{out}"]


@family("cli")
def cli_theory(rng):
    extra, names = pick(rng, [
        (["--delta", "0.1"], [r"delta", r"threshold", r"δ"]), (["--steps", "0"], [r"--steps"]),
        (["--samples", "0"], [r"--samples"]), (["--replicates", "0"], [r"--replicates"]),
        (["--noise", "poisson:1"], [r"--noise"]), (["--preprocessing", "foo"], [r"preprocessing"]),
        (["--preprocessing", "identity"], [r"preprocessing", r"identity"]),
        (["--samples", "1000000000000"], [r"--samples", r"GiB"]),
        (["--logs", "{missing}"], [r"missing\.pt", r"log", r"exist"]),
        (["--logs", "{fifo}"], [r"pipe\.pt", r"regular"]),
        (["--logs", "{dir}"], [r"folder\.pt", r"director"]),
        (["--logs", "{trunc_log}"], [r"truncated", r"log", r"JSON"]),
        (["--logs", "{measurements}"], [r"measurements\.pt", r"log", r"JSON"]),
        (["--logs", "{prediction}"], [r"prediction\.json", r"log"]), (["--logs", "{empty}"], [r"empty", r"log"]),
        (["--logs", "{log}", "--delta", "6"], [r"--delta", r"log"]),
    ])
    return _cli_case(rng, THEORY + extra, names, timeout=40.0)


@family("cli")
def cli_theory_usage(rng):
    argv = pick(rng, [["--quiet", "theory", "--out", "{out}"], ["--quiet", "theory", "--delta", "4", "--out", "{out}"]])
    return _cli_case(rng, argv, [r"--delta", r"--steps", r"--logs"])


SWEEP = ["--quiet", "sweep", "--algorithms", "wf", "--trials", "1", "--dim", "8", "--iters", "5", "--out", "{out}"]


@family("cli")
def cli_sweep(rng):
    extra, names = pick(rng, [
        (["--deltas", "1:1e9:1e-9"], [r"grid", r"--deltas", r"cells", r"points"]),
        (["--deltas", "abc"], [r"grid", r"--deltas"]), (["--deltas", "5:1:1"], [r"grid", r"--deltas", r"stop"]),
        (["--deltas", "0,1"], [r"grid", r"--deltas", r"positive"]),
        (["--deltas", "1:2:0"], [r"grid", r"--deltas", r"step"]),
        (["--deltas", "nan:1:1"], [r"grid", r"--deltas"]), (["--deltas", "1:inf:1"], [r"grid", r"--deltas"]),
        (["--deltas", ""], [r"grid", r"--deltas"]), (["--deltas", ","], [r"grid", r"--deltas"]),
        (["--deltas", "1:2"], [r"grid", r"--deltas"]), (["--deltas", "1e400"], [r"grid", r"--deltas"]),
        (["--deltas", ",".join(str(1 + k / 1000) for k in range(20000))], [r"grid", r"--deltas", r"cells"]),
        (["--algorithms", "foo"], [r"--algorithms", r"algorithm"]), (["--algorithms", ","], [r"--algorithms"]),
        (["--algorithms", "wf,foo"], [r"--algorithms", r"foo"]), (["--trials", "0"], [r"--trials"]),
        (["--dim", "0"], [r"--dim"]), (["--dim", "1000000", "--deltas", "8"], [r"--dim", r"GiB"]),
        (["--tol", "0"], [r"--tol"]), (["--iters", "0"], [r"--iters"]),
        (["--deltas", "4", "--out", "{text}"], [r"--out", r"notes\.pt", r"director", r"folder", r"exists"]),
        (["--trials", "100000000", "--deltas", "1:8:0.5", "--algorithms", "wf,raf,twf"],
         [r"--trials", r"cells", r"grid", r"GiB", r"too"]),
    ])
    argv = SWEEP + extra
    return _cli_case(rng, argv, names, timeout=40.0)


@family("cli")
def cli_top_level(rng):
    argv, names = pick(rng, [
        (["nosuch"], [r"nosuch", r"command", r"choice"]), (["--threads", "0", "sweep", "--out", "{out}"],
                                                           [r"--threads"]),
        (["--threads", "abc", "demo"], [r"--threads"]), (["bench", "--no-such-option"], [r"--no-such-option"]),
        (["demo", "--seed", "-1", "--out", "{out}"], [r"--seed"]), (["demo", "--device", "gpu", "--out", "{out}"],
                                                                  [r"--device"]),
        (["--quiet", "demo", "--quick", "--image", "{missing}", "--out", "{out}"], [r"missing\.pt", r"image"]),
        (["--quiet", "demo", "--quick", "--image", "{fifo}", "--out", "{out}"], [r"pipe\.pt", r"regular"]),
        (["--quiet", "demo", "--quick", "--out", "{text}"], [r"--out", r"notes\.pt", r"director", r"exists"]),
        (["--quiet", "simulate", "{image}", "--size", "16", "--out", "/proc/phasetorch-fuzz"], [r"--out", r"/proc",
                                                                                              r"permission",
                                                                                              r"director"]),
    ])
    return _cli_case(rng, argv, names, timeout=40.0)


# ====================================================================================== execution
def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def leaked_torch_error(msg: str) -> bool:
    """A message that is torch's allocator or C++ enforce text passed through (names no argument)."""
    return "DefaultCPUAllocator" in msg or "enforce fail" in msg or "CUDA out of memory" in msg


def library_frame(tb) -> str:
    """``path:line (function)`` of the innermost frame inside the phasetorch package (else the innermost frame)."""
    frames = traceback.extract_tb(tb)
    pkg = str(REPO / "phasetorch")
    inside = [f for f in frames if f.filename.startswith(pkg)]
    f = (inside or frames or [None])[-1]
    if f is None:
        return ""
    try:
        path = str(Path(f.filename).resolve().relative_to(REPO))
    except ValueError:
        path = f.filename.replace(str(Path(torch.__file__).parent), "torch")
    return f"{path}:{f.lineno} ({f.name})"


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def execute(case: Case) -> Dict[str, Any]:
    """Run one case and classify it (see the module docstring)."""
    out: Dict[str, Any] = {"cls": case.cls, "family": case.family, "label": case.label, "invalid": case.invalid,
                           "hang": False, "error": None, "where": None}
    rss0 = max_rss()
    t0 = time.perf_counter()
    result, exc = None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.run()
        except BaseException as e:  # noqa: BLE001 - everything is classified, SystemExit included
            if isinstance(e, KeyboardInterrupt):
                raise
            exc = e
    warned = [one_line(w.message) for w in caught if issubclass(w.category, UserWarning)]
    seconds = time.perf_counter() - t0
    out["seconds"] = round(seconds, 3)
    grew = max_rss() - rss0
    if exc is not None:
        msg = one_line(exc)
        out["error"] = type(exc).__name__
        out["where"] = library_frame(exc.__traceback__)
        clear_types = (ValueError, TypeError, FileNotFoundError, pt.DivergenceError)
        decode_errors = (json.JSONDecodeError, UnicodeDecodeError)
        if isinstance(exc, clear_types) and not isinstance(exc, decode_errors) and not leaked_torch_error(msg):
            if any(re.search(p, msg, re.IGNORECASE) for p in case.names):
                outcome, detail = "clear", msg
            else:
                outcome, detail = "unclear", f"{type(exc).__name__} that does not name the argument: {msg}"
        else:
            outcome, detail = "unclear", f"{type(exc).__name__}: {msg}"
    elif case.judge is not None:
        outcome, detail, hang = case.judge(result)
        out["hang"] = hang
    else:
        try:
            why = (case.check or (lambda r: nonfinite(r)))(result)
        except Exception as e:  # noqa: BLE001 - the result itself is broken
            why = f"result unusable: {type(e).__name__}: {one_line(e)}"
        outcome, detail = ("garbage", why) if why else ("accepted", "returned a sane result")
        named = [w for w in warned if any(re.search(p, w, re.IGNORECASE) for p in case.names)]
        if outcome == "garbage" and named:            # a warning that names the argument: the user was told
            outcome, detail = "clear", f"warned: {named[0]}"
    if case.quick is not None and seconds > case.quick and outcome != "unclear":
        detail = f"took {seconds:.1f} s (> {case.quick:g} s: allocated or computed before deciding): {detail}"
        outcome = "unclear"
    if grew > GIB:
        detail += f" [peak memory grew by {grew / GIB:.1f} GiB]"
    out["outcome"], out["detail"] = outcome, detail
    return out


def limit_memory(budget: int) -> None:
    """Cap this process's address space at its current size plus ``budget`` bytes (RLIMIT_AS)."""
    try:
        with open("/proc/self/status") as fh:
            vm = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        vm = 4 * GIB
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = vm + budget
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def worker(conn, cases: List[Case], start: int, budget: int) -> None:
    os.setpgid(0, 0)                       # its own process group: the parent kills the command children too
    limit_memory(budget)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if cases and cases[0].cls in ("files", "cli"):
        try:                                   # build the fixtures outside the timed cases
            ws()
            if cases[0].cls == "cli":
                _prepare_cli()
        except Exception:  # noqa: BLE001 - a case that needs them reports the failure itself
            pass
    for i in range(start, len(cases)):
        conn.send(("start", i))
        conn.send(("done", i, execute(cases[i])))
    conn.send(("end",))
    conn.close()


@dataclass
class Slot:
    cls: str
    proc: Any
    conn: Any
    current: Optional[int] = None
    deadline: Optional[float] = None
    next_index: int = 0


def _killed(case: Case, outcome_detail: str, hang: bool, seconds: float) -> Dict[str, Any]:
    return {"cls": case.cls, "family": case.family, "label": case.label, "invalid": case.invalid, "hang": hang,
            "error": "Timeout" if hang else "WorkerDied", "where": None, "seconds": round(seconds, 3),
            "outcome": "unclear", "detail": outcome_detail}


def run_all(cases_by_class: Dict[str, List[Case]], jobs: int, budget: int, echo: Callable[[str], None],
            scale: float = 1.0) -> Dict[str, List[Dict[str, Any]]]:
    """Run every class's cases in forked workers, ``jobs`` at a time, killing and restarting on hangs and deaths."""
    ctx = mp.get_context("fork")
    results: Dict[str, List[Optional[Dict[str, Any]]]] = {c: [None] * len(v) for c, v in cases_by_class.items()}
    queue = [c for c in cases_by_class if cases_by_class[c]]
    active: List[Slot] = []
    started: Dict[Tuple[str, int], float] = {}

    def launch(cls: str, start: int) -> None:
        if start >= len(cases_by_class[cls]):
            echo(f"  {cls}: done")
            return
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker, args=(send, cases_by_class[cls], start, budget), daemon=True)
        proc.start()
        send.close()
        active.append(Slot(cls, proc, recv, next_index=start))

    def kill(slot: Slot) -> None:
        try:
            os.killpg(slot.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        slot.proc.join(5)
        slot.conn.close()
        active.remove(slot)

    while queue or active:
        while queue and len(active) < jobs:
            launch(queue.pop(0), 0)
        if not active:
            continue
        now = time.monotonic()
        deadlines = [s.deadline for s in active if s.deadline is not None]
        wait = max(0.01, min([d - now for d in deadlines] + [1.0]))
        ready = wait_connections([s.conn for s in active], timeout=wait)
        for slot in list(active):
            cases = cases_by_class[slot.cls]
            if slot.conn in ready:
                try:
                    msg = slot.conn.recv()
                except (EOFError, OSError):
                    slot.proc.join(5)
                    code = slot.proc.exitcode
                    i = slot.current if slot.current is not None else slot.next_index
                    kill(slot)
                    if i < len(cases) and results[slot.cls][i] is None:
                        why = (f"worker killed by signal {signal.Signals(-code).name} (out of memory?)"
                               if code is not None and code < 0 else f"worker exited with status {code}")
                        results[slot.cls][i] = _killed(cases[i], why, False,
                                                       time.monotonic() - started.get((slot.cls, i), time.monotonic()))
                    launch(slot.cls, i + 1)
                    continue
                if msg[0] == "start":
                    slot.current = msg[1]
                    started[(slot.cls, msg[1])] = time.monotonic()
                    slot.deadline = time.monotonic() + cases[msg[1]].timeout * scale
                elif msg[0] == "done":
                    results[slot.cls][msg[1]] = msg[2]
                    slot.current, slot.deadline, slot.next_index = None, None, msg[1] + 1
                else:
                    slot.proc.join(5)
                    slot.conn.close()
                    active.remove(slot)
                    echo(f"  {slot.cls}: done")
            elif slot.deadline is not None and time.monotonic() > slot.deadline:
                i = slot.current
                kill(slot)
                took = time.monotonic() - started[(slot.cls, i)]
                results[slot.cls][i] = _killed(cases[i], f"no answer within {took:.0f} s (hang): killed", True, took)
                launch(slot.cls, i + 1)
    return {c: [r for r in v if r is not None] for c, v in results.items()}


def make_cases(seed: int, count: int, classes: Sequence[str]) -> Dict[str, List[Case]]:
    """Case i of a class comes from family i mod F (a seed-shuffled order), with seed-drawn arguments."""
    out = {}
    for cls in classes:
        rng = random.Random(f"phasetorch-fuzz:{seed}:{cls}")
        fams = list(FAMILIES[cls])
        rng.shuffle(fams)
        made: Counter = Counter()
        cases: List[Case] = []
        i = 0
        while len(cases) < count:
            fam = fams[i % len(fams)]
            i += 1
            if fam.limit is not None and made[fam.__name__] >= fam.limit and \
                    any(f.limit is None or made[f.__name__] < f.limit for f in fams):
                continue
            made[fam.__name__] += 1
            cases.append(fam(rng))
        out[cls] = cases
    return out


# ====================================================================================== report
def summarise(results: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    rows = []
    for cls, rs in results.items():
        c = Counter(r["outcome"] for r in rs)
        rows.append({"class": cls, "tried": len(rs), "clear": c["clear"], "unclear": c["unclear"],
                     "garbage": c["garbage"], "accepted": c["accepted"],
                     "accepted_invalid": sum(1 for r in rs if r["outcome"] == "accepted" and r["invalid"]),
                     "hangs": sum(1 for r in rs if r["hang"])})
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    head = ["input class", "tried", "clear errors", "unclear", "silent garbage", "accepted"]
    body = [[r["class"], str(r["tried"]), str(r["clear"]), str(r["unclear"]), str(r["garbage"]),
             f"{r['accepted']}" + (f" ({r['accepted_invalid']} invalid)" if r["accepted_invalid"] else "")]
            for r in rows]
    tot = {k: sum(r[k] for r in rows) for k in ("tried", "clear", "unclear", "garbage", "accepted", "accepted_invalid")}
    body.append(["**total**", str(tot["tried"]), str(tot["clear"]), str(tot["unclear"]), str(tot["garbage"]),
                 f"{tot['accepted']}" + (f" ({tot['accepted_invalid']} invalid)" if tot["accepted_invalid"] else "")])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(b) for b in body]
    return "\n".join(lines)


def _normalise(text: str) -> str:
    text = re.sub(r"/tmp/[^\s'\"]*", "<tmp>", text)
    return re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", text)


def grouped(results: Dict[str, List[Dict[str, Any]]], outcome: str, invalid_only: bool = False) -> List[str]:
    groups: "OrderedDict[Tuple[str, str, str], List[Dict[str, Any]]]" = OrderedDict()
    for cls in results:
        for r in results[cls]:
            if r["outcome"] != outcome or (invalid_only and not r["invalid"]):
                continue
            key = (cls, r["family"], _normalise(r["detail"]))
            groups.setdefault(key, []).append(r)
    lines = []
    for (cls, fam, _), rs in groups.items():
        r = rs[0]
        where = f" — at `{r['where']}`" if r.get("where") else ""
        more = f" ×{len(rs)}" if len(rs) > 1 else ""
        detail = _clean(r["detail"])
        labels = list(OrderedDict.fromkeys(_clean(x["label"]) for x in rs))
        shown = "; ".join(f"`{x}`" for x in labels[:3]) + (f" (+{len(labels) - 3} more)" if len(labels) > 3 else "")
        lines.append(f"- **{cls} / {fam}**{more}: {shown} → {detail}{where}")
    return lines


def _clean(text: str) -> str:
    text = re.sub(r"/tmp/[^\s'\"]*/(ws-[^/\s'\"]*/)?", "<tmp>/", text)
    return text.replace("|", "\\|").replace("`", "'")


def markdown(rows, results, meta) -> str:
    parts = [
        "# phasetorch fuzz report",
        "",
        f"Generated by `{meta['command']}` ({meta['cases']} cases, {meta['seconds']:.0f} s wall time, "
        f"{meta['jobs']} worker(s), torch {meta['torch']}, each worker capped at its size + {meta['memory_gib']} GiB "
        f"of address space).",
        "",
        "Definitions (scripts/fuzz.py docstring): *clear error* = ValueError/TypeError (FileNotFoundError for a "
        "missing file, DivergenceError for a blown-up step) whose message names the argument or the fix; CLI: "
        "non-zero exit with exactly one `phasetorch: error: …` line naming the option/file, no traceback. "
        "*unclear* = any other exception, an unnamed message, a slow (allocating) refusal of a huge size, "
        "a traceback, a killed worker or a hang. *silent garbage* = returned NaN/inf, a wrong shape, an "
        "unusable object, or 'converged' with relative error > 0.5 on an invalid input. *accepted* = returned "
        "a sane result (in brackets: how many of those inputs were invalid, i.e. tolerated).",
        "",
        table(rows),
        "",
    ]
    hangs = [f"- `{_clean(r['label'])}`: {r['detail']}" for rs in results.values() for r in rs if r["hang"]]
    sections = [("Hangs / timeouts", hangs),
                ("Unclear", grouped(results, "unclear")),
                ("Silent garbage", grouped(results, "garbage")),
                ("Accepted although invalid (tolerated; not counted as failures)",
                 grouped(results, "accepted", invalid_only=True))]
    for title, lines in sections:
        parts += [f"## {title} ({len(lines)} distinct)", ""] + (lines or ["(none)"]) + [""]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    global BASE_TMP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the case generator (default 0)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"cases per input class (default {DEFAULT_COUNT}: about 3 minutes on 2 cores)")
    parser.add_argument("--markdown", default=str(REPO / "results" / "fuzz.md"),
                        help="write the report here (default results/fuzz.md; '' for none)")
    parser.add_argument("--json", default=None, help="also write the table and every case as JSON here")
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma list of input classes (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes at once (default 2)")
    parser.add_argument("--memory-gib", type=float, default=3.0,
                        help="address space a worker may add after import (RLIMIT_AS; default 3)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every case's timeout")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        parser.error(f"unknown input class(es) {unknown}; choose from {', '.join(CLASSES)}")
    if args.count < 1 or args.jobs < 1:
        parser.error("--count and --jobs must be ≥ 1")
    echo = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    BASE_TMP = Path(tempfile.mkdtemp(prefix="phasetorch-fuzz-"))
    try:
        cases = make_cases(args.seed, args.count, classes)
        echo(f"fuzz: {sum(map(len, cases.values()))} cases in {len(classes)} classes (seed {args.seed}), "
             f"{args.jobs} worker(s)")
        results = run_all(cases, args.jobs, int(args.memory_gib * GIB), echo, args.timeout_scale)
    finally:
        shutil.rmtree(BASE_TMP, ignore_errors=True)
    seconds = time.perf_counter() - t0
    rows = summarise(results)
    command = "python scripts/fuzz.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    meta = {"command": command.strip(), "seed": args.seed, "count": args.count, "jobs": args.jobs,
            "seconds": seconds, "torch": torch.__version__, "memory_gib": args.memory_gib,
            "cases": sum(r["tried"] for r in rows)}
    print(table(rows))
    for title, outcome in (("unclear", "unclear"), ("silent garbage", "garbage")):
        lines = grouped(results, outcome)
        if lines:
            print(f"\n{title} ({len(lines)} distinct):")
            print("\n".join(lines))
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(rows, results, meta), encoding="utf-8")
        echo(f"wrote {path}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(meta, classes=rows, fields=["class", "tried", "clear", "unclear", "garbage", "accepted",
                                                  "accepted_invalid", "hangs"],
                       cases=[r for rs in results.values() for r in rs])
        path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
        echo(f"wrote {path}")
    echo(f"fuzz finished in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
