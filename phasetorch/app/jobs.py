r"""The user's jobs end to end, as functions: what the ``phasetorch`` commands, the demo and the scripts run.

==========================  =========================================================================
function                    job
==========================  =========================================================================
:func:`simulate_problem`    image/object → operator → intensities (+ noise); optionally written as
                            measurements.pt + operator.pt + truth.png (the pair ``reconstruct`` reads)
:func:`load_problem`        that file pair → the same problem dict (refusing a mismatched pair)
:func:`reconstruction_job`  intensities → :func:`phasetorch.reconstruct` → PNGs, grid and convergence
                            figures, log.json, reconstruction.pt, summary.json
:func:`train_job`           batched multi-seed Gaussian WF in the theory's units
                            (:func:`phasetorch.theory.simulate`) → log.json + log.csv
:func:`theory_job`          the DMFT (:func:`phasetorch.theory.dmft`) → prediction.json, overlay.png,
                            and with logs comparison.json (:func:`phasetorch.theory.compare`)
==========================  =========================================================================

The pieces: :func:`build_operator` (the four forward models of the command line, refused when
they would not fit in memory), :func:`parse_noise` and :func:`make_noise`, :func:`load_object`,
:func:`object_support`, :func:`twin_metrics` / :func:`resolve_twin` (the Fourier ambiguity),
:func:`phasetorch.theory.check_describes` (which logs the DMFT describes).

Noise specifications (``--noise`` of every command, :func:`parse_noise`):

* ``none`` (or ``0``);
* ``poisson:N`` — shot noise with **N expected photons per measurement** (per intensity
  pixel of every pattern; N = 10, 100, 10⁴ are photon-starved, low and good counts);
  ``poisson-total:N`` — N expected photons for the **whole measurement set of one sample**
  (:class:`phasetorch.physics.noise.PoissonNoise` takes that total: P = N·m);
* ``gaussian:σ`` — additive Gaussian noise of standard deviation σ·mean(y) (σ relative to the
  mean intensity). In the theory's units (``train``, ``theory``: ‖x*‖ = 1, E A_ij² = 1, so
  E y = 1) this is the σ of y = (a·x*)² + σε. A bare number σ means ``gaussian:σ`` (the
  older syntax of ``train``/``theory``).

Output folders are created when the first file is written (every file through
:func:`phasetorch.io.atomic_write`), so a job that fails before writing leaves no empty folder.

Algorithm names all come from the registry :data:`phasetorch.optim.presets.PRESETS`:
:data:`ALGORITHMS` (every preset), :data:`PROJECTION_ALGORITHMS` (the projection methods, which take
the object's support and non-negativity), :data:`SUPPORT_ALGORITHMS` (those meaningless without a
support: not for Gaussian models) and :data:`TRAIN_ALGORITHMS` (what :func:`train_job` runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .. import io as pio
from ..logs import TrainingLog
from ..metrics import align_phase, overlap, psnr, relative_error
from ..optim.presets import PRESETS
from ..phantoms import complex_object
from ..physics import (CodedDiffraction, GaussianMeasurement, OversampledFourier, ShardedCodedDiffraction,
                       ShardedGaussian, StructuredRandom, load_operator, save_operator)
from ..physics.noise import GaussianNoise, PoissonNoise
from ..solve import reconstruct
from ..tensors import abs2, available_memory, check_number, inner, sum_dims
from ..theory import amplitude_phase_retrieval, compare, dmft, phase_retrieval, simulate, spectral_threshold
from .common import CLIError, Echo, UsageError, fmt_value
from .figures import (circular_mean_phase, convergence_figure, grid_figure, phase_view, prediction_figure,
                      save_display, signal_figure, theory_figure)

__all__ = ["ALGORITHMS", "PROJECTION_ALGORITHMS", "SUPPORT_ALGORITHMS", "TRAIN_ALGORITHMS", "THEORY_MODELS", "TRAIN_MODEL", "MODELS", "INITS",
           "NOISE_KINDS", "NOISE_HELP", "GAUSSIAN_MAX_BYTES", "LOW_PHOTONS", "parse_noise", "noise_sigma",
           "photons_per_measurement", "build_operator", "make_noise", "problem_bytes", "available_memory",
           "check_memory", "object_support", "load_object", "simulate_problem", "load_problem", "twin_metrics",
           "resolve_twin", "TwinTracker", "default_algorithm", "reconstruction_job", "train_job", "theory_job",
           "comparison_dict", "sup_gap_lines", "check_recoverable", "save_log"]

#: Every named algorithm of :func:`phasetorch.reconstruct`, in the registry's order.
ALGORITHMS: Tuple[str, ...] = tuple(PRESETS)
#: The projection methods (error reduction, HIO): the commands give them the object's support and
#: non-negativity, and more iterations.
PROJECTION_ALGORITHMS: Tuple[str, ...] = tuple(n for n, p in PRESETS.items() if p.projection)
#: The presets that need an object-domain constraint (a support) to mean anything — HIO, from a random
#: start — and so are left out on Gaussian models (benchmark, iteration cost).
SUPPORT_ALGORITHMS: Tuple[str, ...] = tuple(n for n, p in PRESETS.items() if p.needs_support)
#: What :func:`train_job` runs: plain gradient descent on the intensity loss, the algorithm
#: :func:`phasetorch.theory.simulate` runs (Wirtinger flow) and the DMFT describes.
TRAIN_ALGORITHMS: Tuple[str, ...] = tuple(n for n, p in PRESETS.items()
                                          if p.loss == "intensity" and not p.loss_choices) + ("af",)
#: The single-index model whose DMFT describes each of :data:`TRAIN_ALGORITHMS` (name → constructor
#: ``(noise, field)``): wf runs GD on the intensity loss, af on the amplitude loss.
THEORY_MODELS: Dict[str, Any] = {"phase_retrieval": phase_retrieval,
                                 "amplitude_phase_retrieval": amplitude_phase_retrieval}
TRAIN_MODEL: Dict[str, str] = {"wf": "phase_retrieval", "af": "amplitude_phase_retrieval"}
MODELS = ("cdp", "gaussian", "structured", "fourier")
#: The named initialisations of :func:`phasetorch.reconstruct` (a tensor start is the library's).
INITS = ("spectral", "random")
#: The dense Gaussian matrix of the command line is refused above this many bytes (its products are
#: the whole cost of an iteration: 2 GiB is already seconds per iteration on a CPU).
GAUSSIAN_MAX_BYTES = 2 * 1024 ** 3
#: ``poisson:N`` below this many photons per measurement draws a warning (the data are mostly zeros).
LOW_PHOTONS = 1.0
NOISE_KINDS = ("poisson", "poisson-total", "gaussian")
NOISE_HELP = ("none (default); poisson:N = shot noise with N expected photons PER MEASUREMENT (e.g. poisson:100); "
              "poisson-total:N = N expected photons for the whole measurement set of a sample; gaussian:SIGMA = "
              "additive Gaussian noise of std SIGMA × mean intensity (a bare number SIGMA means gaussian:SIGMA)")


# ============================================================================ noise
def parse_noise(spec, kinds: Sequence[str] = NOISE_KINDS) -> Tuple[str, float]:
    """A noise specification (see the module docstring) → (kind, level); kind ``"none"`` has level 0.

    ``kinds`` restricts the accepted kinds (``train``/``theory`` take only ``gaussian``: the
    DMFT's noise is additive and Gaussian). A bare number is ``gaussian:σ``.
    """
    text = "none" if spec is None else str(spec).strip()
    if text.lower() in ("", "none"):
        return "none", 0.0
    kind, sep, level = text.partition(":")
    kind = kind.strip().lower()
    if not sep:
        try:
            value = float(kind)
        except ValueError:
            raise UsageError(f"bad --noise {spec!r}: use none, poisson:N (N photons per measurement, e.g. "
                             f"poisson:100), poisson-total:N or gaussian:SIGMA (e.g. gaussian:0.05)") from None
        kind, level = "gaussian", kind
    if kind not in NOISE_KINDS:
        raise UsageError(f"bad --noise {spec!r}: use none, poisson:N (N photons per measurement, e.g. poisson:100), "
                         f"poisson-total:N or gaussian:SIGMA (e.g. gaussian:0.05)")
    try:
        value = float(level)
    except ValueError:
        raise UsageError(f"bad --noise {spec!r}: {level.strip()!r} is not a number") from None
    try:
        check_number(value, "the noise level", 0.0, strict=kind.startswith("poisson"))
    except ValueError:
        raise UsageError(f"bad --noise {spec!r}: the level must be a "
                         f"{'positive' if kind.startswith('poisson') else 'non-negative'} finite number") from None
    if kind == "gaussian" and value == 0.0:
        return "none", 0.0
    if kind not in kinds:
        raise UsageError(f"--noise {spec!r} is not available here: use {' or '.join(k + ':…' for k in kinds)} "
                         f"(the theory's noise is additive Gaussian, y = (a·x*)² + σε: gaussian:SIGMA)")
    return kind, value


def noise_sigma(spec) -> float:
    """σ of a ``gaussian:σ`` (or bare σ, or ``none`` → 0) specification: ``train``/``theory``'s noise."""
    kind, level = parse_noise(spec, kinds=("gaussian",))
    return level if kind == "gaussian" else 0.0


def photons_per_measurement(kind: str, level: float, m: int) -> Optional[float]:
    """Expected photons per measurement of a Poisson specification over m measurements per sample."""
    if kind == "poisson":
        return float(level)
    if kind == "poisson-total":
        return float(level) / max(1, int(m))
    return None


def make_noise(kind: str, level: float, seed: int, event_dims: int, measurements: Optional[int] = None):
    """The noise module of :func:`parse_noise`'s (kind, level), or None.

    ``poisson`` (per measurement) becomes :class:`~phasetorch.physics.noise.PoissonNoise` with the
    total P = N·``measurements`` (the number of measurements of one sample, ``op.m``).
    """
    if kind == "poisson":
        if measurements is None:
            raise ValueError("make_noise: poisson:N (photons per measurement) needs measurements= (op.m)")
        return PoissonNoise(float(level) * int(measurements), seed=seed, event_dims=event_dims)
    if kind == "poisson-total":
        return PoissonNoise(level, seed=seed, event_dims=event_dims)
    if kind == "gaussian":
        return GaussianNoise(level, seed=seed, relative=True, event_dims=event_dims)
    return None


# ============================================================================ memory
def problem_bytes(n: int, m: int, extra_complex: int = 0, matrix: int = 0, dtype: torch.dtype = torch.float32) -> int:
    """Estimated memory of a reconstruction: the operator's stored entries plus the solver's arrays.

    r bytes per real number (4 float32, 8 float64): ``matrix`` real entries (a dense matrix),
    ``extra_complex`` complex entries (masks, phase layers), 11 r per measurement (y, √y and weights;
    Ax, the residual and two FFT buffers, complex) and 20 r per unknown (ten complex signal-sized
    arrays: iterate, gradient, start, algorithm state).
    """
    r = 8 if dtype == torch.float64 else 4
    return int(matrix) * r + 2 * r * int(extra_complex) + 11 * r * int(m) + 20 * r * int(n)


def check_memory(need: int, what: str, fix: str, device: torch.device = torch.device("cpu")) -> None:
    """Refuse (CLIError naming both numbers and ``fix``) when ``need`` bytes exceed :func:`available_memory`."""
    have = available_memory(device)
    if have is not None and need > have:
        raise CLIError(f"{what} needs about {need / 1024 ** 3:.1f} GiB but {have / 1024 ** 3:.1f} GiB are available "
                       f"on {torch.device(device).type}; {fix}")


def _gib(b: float) -> str:
    return f"{b / 1024 ** 3:.1f} GiB"


# ============================================================================ problems
def build_operator(model: str, signal_shape: Sequence[int], *, masks: int = 4, mask: str = "octanary",
                   oversampling: int = 2, layers: int = 2, delta: float = 6.0, real: bool = False, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
                   distributed: bool = False):
    """The forward model of ``model`` for a signal of ``signal_shape`` (any H×W, or any shape).

    * ``cdp``: :class:`~phasetorch.physics.CodedDiffraction` with ``masks`` patterns (δ = L);
    * ``gaussian``: dense complex (``real=False``) or real :class:`~phasetorch.physics.GaussianMeasurement`
      with m = round(δ n) rows (refused above :data:`GAUSSIAN_MAX_BYTES` of matrix, naming the
      largest ``--size`` that fits);
    * ``structured``: :class:`~phasetorch.physics.StructuredRandom`, ``layers`` random-phase layers,
      padded by ``oversampling`` per axis (δ = oversampling^ndim);
    * ``fourier``: :class:`~phasetorch.physics.OversampledFourier` (CDI, δ = oversampling^ndim).

    Every model is refused up front (:func:`check_memory`) when :func:`problem_bytes` of it exceeds
    the memory available on ``device``.

    ``distributed``: this process's share of the measurements in the initialised process group
    (:class:`~phasetorch.physics.ShardedCodedDiffraction`, :class:`~phasetorch.physics.ShardedGaussian`:
    the same operator split by rows; memory checked per process); ``cdp`` and ``gaussian`` only.
    """
    shape = tuple(int(s) for s in signal_shape)
    if distributed:
        return _sharded_operator(model, shape, masks=masks, mask=mask, delta=delta, real=real, seed=seed,
                                 dtype=dtype, device=device)
    n = math.prod(shape)
    r = 8 if dtype == torch.float64 else 4
    size_text = "×".join(map(str, shape))
    if model == "cdp":
        check_memory(problem_bytes(n, masks * n, extra_complex=masks * n, dtype=dtype),
                     f"a coded-diffraction model with {masks} masks of {size_text}",
                     "use fewer --masks or a smaller --size", device)
        op = CodedDiffraction(shape, masks, mask=mask, seed=seed, dtype=dtype)
    elif model == "gaussian":
        m = max(1, int(round(delta * n)))
        per_entry = r * (1 if real else 2)
        nbytes = m * n * per_entry
        if nbytes > GAUSSIAN_MAX_BYTES:
            side = max(1, int((GAUSSIAN_MAX_BYTES / (delta * per_entry)) ** 0.25))
            raise CLIError(f"a dense Gaussian model for {n} unknowns ({size_text}) and {m} measurements needs "
                           f"{_gib(nbytes)} of matrix (the cap is {_gib(GAUSSIAN_MAX_BYTES)}); give a smaller "
                           f"--size (at most {side} at δ = {delta:g}) or use --model cdp/structured")
        check_memory(problem_bytes(n, m, matrix=m * n * (1 if real else 2), dtype=dtype),
                     f"a dense Gaussian model for {n} unknowns and {m} measurements",
                     "give a smaller --size or --delta", device)
        op = GaussianMeasurement(shape, m, complex=not real, seed=seed, dtype=dtype)
    elif model == "structured":
        padded = n * oversampling ** len(shape)
        check_memory(problem_bytes(n, padded, extra_complex=layers * padded, dtype=dtype),
                     f"a structured model with {layers} layers on {size_text} padded ×{oversampling}",
                     "use fewer --layers, a smaller --oversampling or a smaller --size", device)
        op = StructuredRandom(shape, n_layers=layers, oversampling=oversampling, seed=seed, dtype=dtype)
    elif model == "fourier":
        padded = n * oversampling ** len(shape)
        check_memory(problem_bytes(n, padded, dtype=dtype), f"a Fourier model on {size_text} padded ×{oversampling}",
                     "use a smaller --oversampling or a smaller --size", device)
        op = OversampledFourier(shape, oversampling=oversampling, dtype=dtype)
    else:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return op.to(device)


def _sharded_operator(model: str, shape, *, masks: int, mask: str, delta: float, real: bool, seed: int,
                      dtype: torch.dtype, device: torch.device):
    if model not in ("cdp", "gaussian"):
        raise UsageError(f"--distributed splits the measurements of the cdp and gaussian models over the processes; "
                         f"{model!r} is not sharded (use --model cdp or gaussian, or run it without --distributed)")
    n = math.prod(shape)
    if model == "cdp":
        return ShardedCodedDiffraction(shape, masks, mask=mask, seed=seed, dtype=dtype).to(device)
    m = max(1, int(round(delta * n)))
    return ShardedGaussian(shape, m, complex=not real, seed=seed, dtype=dtype).to(device)


def object_support(x: torch.Tensor, pad: int = 0, level: float = 0.02) -> torch.Tensor:
    """The object's extent: the region enclosed by the pixels with |x| > level·max|x|.

    Interior holes are filled (a pixel belongs to the support when it lies between two object
    pixels both along its row and along its column), so only the outline of the object is assumed
    known, not its internal zeros; ``pad`` > 0 dilates the result by that many pixels (a looser support).
    """
    a = x.abs()
    mask = a > level * a.max()
    if mask.dim() == 2:
        def between(m: torch.Tensor, dim: int) -> torch.Tensor:
            fwd = m.to(torch.int8).cummax(dim=dim).values.bool()
            bwd = m.flip(dim).to(torch.int8).cummax(dim=dim).values.bool().flip(dim)
            return fwd & bwd
        mask = between(mask, 0) & between(mask, 1)
        if pad > 0:
            mask = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * pad + 1, stride=1,
                                                  padding=pad)[0, 0] > 0
    elif mask.dim() == 1:
        idx = torch.nonzero(mask).flatten()
        if idx.numel():
            mask = torch.zeros_like(mask)
            mask[max(0, int(idx[0]) - pad): int(idx[-1]) + 1 + pad] = True
    return mask


def load_object(path: str, size: Optional[Sequence[int]] = None, phase_image: bool = False,
                dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, str, Optional[str]]:
    """The ground-truth object, its display mode (``amplitude``, ``phase`` or ``complex``) and a note.

    Images load as real [0, 1] objects at their own size and shape unless ``size`` is given
    (``(k,)``/``k``: centre-crop to a square and resize to k×k; ``(H, W)``: resize); the note says
    what was cropped or resized (None when nothing was). ``phase_image`` turns an image p into
    exp(iπp) (a unit-amplitude phase object). ``.pt`` files load as stored (complex objects display
    modulus and phase).
    """
    if size is not None and len(size) == 1:
        size = int(size[0])
    elif size is not None:
        size = tuple(size)
    is_pt = Path(path).suffix.lower() == ".pt"
    if size is not None and not is_pt:
        original = pio.image_shape(path)
    else:
        original = None
    x = pio.load_signal(path, size=size, dtype=dtype)
    note = None
    if size is not None:
        note = pio.resize_note(original if original is not None else tuple(pio.load_signal(path).shape), size)
        if note is not None:
            note = f"{Path(path).name}: {note}"
    if phase_image:
        if x.is_complex():
            raise CLIError("--phase-image needs a real image (the file already holds a complex object)")
        return complex_object(torch.ones_like(x), x), "phase", note
    return x, ("complex" if x.is_complex() else "amplitude"), note


def simulate_problem(image: str, out: Optional[str] = None, *, model: str = "cdp", size=None, masks: int = 4,
                     mask: str = "octanary", oversampling: int = 2, layers: int = 2, delta: float = 6.0,
                     noise: Optional[str] = None, phase_image: bool = False, seed: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu"),
                     echo: Optional[Echo] = None, distributed: bool = False) -> Dict[str, Any]:
    """Object → operator → intensities (+ noise). With ``out``, writes measurements.pt (with the
    operator's identity), operator.pt and truth.png.

    Returns {"op", "y", "x_true", "support", "nonnegative", "display", "meta", "notes"}. For
    ``fourier`` the support is :func:`object_support` of the object and real non-negative objects
    are flagged ``nonnegative`` (the constraints of error reduction / HIO). ``notes`` (also printed
    through ``echo``: a resize as chatter, a photon warning always) say what was cropped or resized
    and warn below :data:`LOW_PHOTONS` photons per measurement.

    ``distributed``: a sharded operator (:func:`build_operator`) and this process's intensities; the
    noise is drawn on all the measurements (gathered: m numbers) with the same seed on every process,
    so the data are those of the single-process run. Nothing is written (``out`` must be None).
    """
    echo = echo or Echo(quiet=True)
    kind, level = parse_noise(noise)
    x, display, note = load_object(image, size=size, phase_image=phase_image, dtype=dtype)
    notes: List[str] = []
    if note is not None:
        notes.append(note)
        echo(note)
    if distributed and out is not None:
        raise ValueError("simulate_problem: a distributed problem is not written (out must be None)")
    op = build_operator(model, x.shape, masks=masks, mask=mask, oversampling=oversampling, layers=layers,
                        delta=delta, seed=seed, dtype=dtype, device=device, distributed=distributed)
    x = x.to(device=device, dtype=op.signal_dtype if (op.is_complex or x.is_complex()) else op.real_dtype)
    per_meas = photons_per_measurement(kind, level, op.m)
    if per_meas is not None and per_meas < LOW_PHOTONS:
        warning = (f"--noise {noise}: {per_meas:.3g} expected photons per measurement (below {LOW_PHOTONS:g}: "
                   f"the data are mostly zeros); poisson:N counts photons per measurement, poisson-total:N per "
                   f"sample ({op.m} measurements)")
        notes.append("warning: " + warning)
        echo.warn(warning)
    with torch.no_grad():
        y = op(x)
        noise_mod = make_noise(kind, level, seed + 1, len(op.measurement_shape), op.m)
        if noise_mod is not None:             # on all measurements (the same draw on every process)
            y = op.local_measurements(noise_mod(op.gather_measurements(y)))
    support = object_support(x) if model == "fourier" else None
    nonneg = model == "fourier" and display == "amplitude"
    meta = {"image": str(image), "model": model, "shape": list(x.shape), "noise": noise or "none",
            "phase_image": bool(phase_image), "display": display, "seed": int(seed), "m": op.m, "n": op.n,
            "delta": op.delta, "operator": op.config(), "notes": notes}
    if per_meas is not None:
        meta["photons_per_measurement"] = per_meas
        meta["photons_per_sample"] = per_meas * op.m
    problem = {"op": op, "y": y, "x_true": x, "support": support, "nonnegative": nonneg, "display": display,
               "meta": meta, "notes": notes}
    if out is not None:
        outp = Path(out)
        pio.save_measurements(outp / "measurements.pt", y, x_true=x, support=support, nonnegative=nonneg, meta=meta,
                              operator=op)
        pio.atomic_write(outp / "operator.pt", lambda tmp: save_operator(op, tmp))
        save_display(x, outp / "truth.png", display, circular_mean_phase(x))
    return problem


def load_problem(measurements, operator, device: torch.device = torch.device("cpu"),
                 force: bool = False) -> Dict[str, Any]:
    """The problem dict of :func:`simulate_problem` from a saved measurements file and operator file.

    Refuses an operator file other than the one saved with the measurements (their recorded
    identity, :func:`phasetorch.io.operator_identity`) unless ``force``; ``meta["operator_match"]``
    says whether it matched (None: the file records no operator). The display mode is the one stored
    in the file's meta, else ``complex`` for a complex truth and ``amplitude`` otherwise.
    """
    pio.check_regular_file(operator, "operator file")
    op = load_operator(operator, map_location=device)
    data = pio.load_measurements(measurements, operator=op, force=force)
    xt = data["x_true"]
    display = data["meta"].get("display") or ("complex" if (xt is not None and xt.is_complex()) else "amplitude")
    meta = dict(data["meta"], operator_match=data["operator_match"])
    return {"op": op, "y": data["y"], "x_true": xt, "support": data["support"],
            "nonnegative": data["nonnegative"], "display": display, "meta": meta, "notes": []}


# ============================================================================ the Fourier twin
def _twin(x: torch.Tensor, k: int) -> torch.Tensor:
    """The conjugate twin x̄(−r) shifted back into the box: flip of the last ``k`` axes, conjugated."""
    t = torch.flip(x, dims=tuple(range(-k, 0)))
    return t.conj() if t.is_complex() else t


def _aligned_metrics(u: torch.Tensor, x_true: torch.Tensor, k: int, nt2: torch.Tensor):
    """(relative error, overlap, inner) of u against x* modulo the global phase, without a host read."""
    d = align_phase(u, x_true, signal_dims=k) - x_true
    rel = (sum_dims(abs2(d), k) / nt2).sqrt()
    c = inner(x_true, u, k).abs()
    den = (sum_dims(abs2(u), k) * nt2).sqrt()
    ov = torch.where(den > 0, c / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return rel, ov, c / nt2


def _twin_scores(x: torch.Tensor, x_true: torch.Tensor, k: int):
    """(twin of x, mask "the twin is closer", (relative error, overlap, inner) of the closer one)."""
    nt2 = sum_dims(abs2(x_true), k)
    tw = _twin(x, k)
    direct, twin = _aligned_metrics(x, x_true, k, nt2), _aligned_metrics(tw, x_true, k, nt2)
    pick = twin[0] < direct[0]
    return tw, pick, tuple(torch.where(pick, b, a) for a, b in zip(direct, twin))


def twin_metrics(x: torch.Tensor, x_true: torch.Tensor, k: int):
    """For Fourier magnitudes: (x̂ or its twin, whichever is closer to x* per sample; its relative
    error, overlap and inner modulo the global phase). Both fit y equally; no host read (usable in a
    solver callback on a GPU)."""
    tw, pick, (rel, ov, inn) = _twin_scores(x, x_true, k)
    chosen = torch.where(pick.reshape(*pick.shape, *([1] * k)), tw, x)
    return chosen, rel, ov, inn


def resolve_twin(x_hat: torch.Tensor, x_true: torch.Tensor, k: int) -> torch.Tensor:
    """For Fourier magnitudes: x̂ or its twin, whichever is closer to x* per sample (both fit y equally)."""
    return twin_metrics(x_hat, x_true, k)[0]


class TwinTracker:
    """A :func:`phasetorch.reconstruct` callback recording the twin-resolved relative error, overlap
    and inner (:func:`twin_metrics`) of the iterate at every iteration, on the iterate's device.

    :meth:`resolved_log` returns the run's log with its ``rel_error``, ``overlap`` and ``inner``
    columns replaced by these (the plain ones kept as ``*_direct``), so the log, its figure and the
    final number of a Fourier run use one ambiguity set (global phase and twin image).
    """

    def __init__(self, x_true: torch.Tensor, k: int, total: int = 0, progress: bool = False, name: str = "") -> None:
        self.x_true, self.k = x_true, int(k)
        self.records: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # the solver's own bar would show the plain error; this one shows the twin-resolved one
        self.bar = tqdm(total=total, desc=name, leave=False, dynamic_ncols=True) if progress and total else None

    def __call__(self, t: int, x: torch.Tensor, info) -> bool:
        rec = _twin_scores(x.detach(), self.x_true, self.k)[2]
        self.records[int(t)] = rec
        if self.bar is not None:
            self.bar.update(1)
            if t % 10 == 0:     # one host read every 10 iterations, as the solver's bar
                self.bar.set_postfix({"loss": f"{float(info['loss'].mean()):.3e}",
                                      "rel_err (twin-resolved)": f"{float(rec[0].mean()):.2e}"}, refresh=False)
        return False

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def resolved_log(self, log: TrainingLog, x0: torch.Tensor) -> TrainingLog:
        """``log`` with the twin-resolved columns (iteration 0 from the start ``x0``)."""
        self.records.setdefault(0, _twin_scores(x0.detach(), self.x_true, self.k)[2])
        names = ("rel_error", "overlap", "inner")
        columns = [c for c in log.columns[1:]] + [f"{c}_direct" for c in names if c in log.columns]
        out = TrainingLog(log.batch_shape, dict(log.config, twin_resolved=True), columns)
        its = [int(it) for it in log["iteration"].tolist()]
        nan = torch.full((3, log.batch_size), float("nan"), dtype=torch.float64)
        # one copy to the host for all records (they stay on the solver's device until now)
        known = [t for t in its if t in self.records]
        stacked = torch.stack([torch.stack([v.reshape(-1) for v in self.records[t]]) for t in known]).to(
            "cpu", torch.float64) if known else None
        resolved = {t: stacked[i] for i, t in enumerate(known)}
        data = {c: log[c] for c in log.columns[1:]}
        for r, it in enumerate(its):
            row = {c: v[r] for c, v in data.items()}
            rec = resolved.get(it, nan)
            for j, c in enumerate(names):
                if c in data:
                    row[f"{c}_direct"] = data[c][r]
                    row[c] = rec[j]
            out.append(it, **row)
        return out


# ============================================================================ reconstruction
def default_algorithm(op) -> str:
    """The reconstruction jobs' algorithm when none is named: HIO for Fourier magnitudes (with the object's
    support), else the library's default ``auto`` (noise-adaptive L-BFGS)."""
    return "hio" if isinstance(op, OversampledFourier) else "auto"


def _to_list(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.dim() == 0 else v.tolist()
    return v


def save_log(log, path) -> Path:
    """Write a :class:`~phasetorch.logs.TrainingLog` or :class:`~phasetorch.theory.Prediction` as JSON, atomically."""
    return pio.atomic_write(path, log.to_json)


def _tile_view(display: str, center: float):
    if display == "phase":
        return lambda t: phase_view(t, center)
    return lambda t: t.abs() if t.is_complex() else t


def reconstruction_job(op, y: torch.Tensor, out, *, x_true: Optional[torch.Tensor] = None,
                       algorithm: Optional[str] = None, init: Optional[str] = None, iters: int = 300,
                       step: Optional[float] = None, preprocessing: Optional[str] = None,
                       support: Optional[torch.Tensor] = None, nonnegative: bool = False, seed: int = 0,
                       display: str = "amplitude", progress: bool = True, echo: Optional[Echo] = None,
                       meta: Optional[Dict[str, Any]] = None, write: bool = True) -> Dict[str, Any]:
    """Reconstruct from intensities ``y`` and write the job's files into ``out``.

    ``write=False`` returns the summary (and ``"log"``) without writing anything: the other ranks of
    a distributed run, where rank 0 alone writes.

    Files: for images (2-D signals) reconstruction.png and init.png, with ``x_true`` also truth.png,
    error.png = |x̂ − x*| after the global phase is removed (on the fixed scale [0, range of x*]), and
    grid.png (:func:`~phasetorch.app.figures.grid_figure`: truth | init | reconstruction | error,
    labelled, with colour bars; complex objects add ``*_phase.png``); for 1-D signals signal.png
    (moduli per coordinate); always convergence.png, log.json (the
    :class:`~phasetorch.logs.TrainingLog`), reconstruction.pt ({"x", "x_init"}) and summary.json
    (settings and final metrics). Images show the first sample of a batch. Returns the summary dict,
    plus ``"files"`` (the paths written) and ``"log"`` (the log as written).

    For Fourier data (``OversampledFourier``) the twin x̄(−r) fits y as well as x̂, so the one closer
    to x* is reported — at every logged iteration too (:class:`TwinTracker`): the log's
    ``rel_error``/``overlap``/``inner``, the convergence figure and the final numbers all use the
    ambiguity set {global phase, twin}, and the last logged ``rel_error`` is the final one.
    """
    echo = echo or Echo()
    outp = Path(out)
    fourier = isinstance(op, OversampledFourier)
    if algorithm is None:
        algorithm = default_algorithm(op)
    k = len(op.signal_shape)
    tracker = TwinTracker(x_true, k, int(iters), progress, algorithm) if (fourier and x_true is not None) else None
    kwargs: Dict[str, Any] = dict(algorithm=algorithm, max_iter=int(iters), x_true=x_true,
                                  progress=progress and tracker is None, seed=seed, log_every=1)
    if tracker is not None:
        kwargs["callback"] = tracker
    if init is not None:
        kwargs["init"] = init
    if step is not None:
        kwargs["step"] = step
    if preprocessing is not None:
        kwargs["preprocessing"] = preprocessing
    if support is not None:
        kwargs["support"] = support
    if nonnegative:
        kwargs["nonnegative"] = True
    echo(f"reconstructing {op.n} unknowns from {op.m} intensities (δ = {op.delta:g}, "
         f"{type(op).__name__}) with {algorithm}, ≤ {iters} iterations")
    t0 = time.perf_counter()
    try:
        rec = reconstruct(op, y, **kwargs)
    finally:
        if tracker is not None:
            tracker.close()
    seconds = time.perf_counter() - t0
    x_hat = rec.x.detach()
    x_init = rec.x0
    log = rec.log if tracker is None else tracker.resolved_log(rec.log, rec.x0)
    summary: Dict[str, Any] = {"algorithm": algorithm, "iterations": _to_list(rec.iterations),
                               "converged": _to_list(rec.converged), "status": rec.status_names(),
                               "residual": _to_list(rec.residual), "seconds": seconds, "n": op.n, "m": op.m,
                               "delta": op.delta, "operator": op.config(), "meta": meta or {}}
    if x_true is not None:
        if fourier:
            x_hat, rel, ov, _ = twin_metrics(x_hat, x_true, k)
            x_hat = align_phase(x_hat, x_true, signal_dims=k)
            summary["ambiguities"] = "global phase and twin image x̄(−r) (Fourier magnitudes)"
        else:
            x_hat = align_phase(x_hat, x_true, signal_dims=k)
            rel = relative_error(x_hat, x_true, signal_dims=k)
            ov = overlap(x_hat, x_true, signal_dims=k)
        p = psnr(x_hat, x_true, signal_dims=k, magnitude=(display == "amplitude"))
        summary.update(rel_error=_to_list(rel), overlap=_to_list(ov), psnr=_to_list(p))
        if x_init is not None:
            xi = x_init.detach()
            if fourier:
                xi = resolve_twin(xi, x_true, k)
            x_init = align_phase(xi, x_true, signal_dims=k)
            summary["init_rel_error"] = _to_list(relative_error(x_init, x_true, signal_dims=k))
    first = (0,) * (x_hat.dim() - k)
    xt = None if x_true is None else x_true[(0,) * (x_true.dim() - k)]
    center = circular_mean_phase(xt) if xt is not None else circular_mean_phase(x_hat[first])
    if not write:
        summary["files"], summary["log"] = [], log
        return summary
    written: List[Path] = []
    if k == 2:
        written += save_display(x_hat[first], outp / "reconstruction.png", display, center)
        if x_init is not None:
            written += save_display(x_init.detach()[first], outp / "init.png", display, center)
    else:
        xi0 = None if x_init is None else x_init.detach()[first]
        written.append(pio.save_figure(signal_figure(x_hat[first], xt, xi0), outp / "signal.png"))
    if xt is not None and k == 2:
        written += save_display(xt, outp / "truth.png", display, center)
        err = (x_hat[first] - xt).abs()
        view = _tile_view(display, center)
        tv = view(xt)
        scale = float(tv.max() - tv.min()) if display == "amplitude" else float(xt.abs().max())
        scale = scale if scale > 0 else 1.0
        written.append(pio.save_image((err / scale).clamp(0, 1), outp / "error.png", normalise=False))
        estimates = ([("start x₀", view(x_init.detach()[first]))] if x_init is not None else []) + \
                    [("reconstruction x̂", view(x_hat[first]))]
        rel0 = summary["rel_error"]
        rel0 = rel0[0] if isinstance(rel0, list) else rel0
        quantity = {"phase": "arg x (rad)", "complex": "|x|"}.get(display, "value of x")
        written.append(pio.save_figure(grid_figure(tv, estimates, err, scale, float(rel0), quantity),
                                       outp / "grid.png"))
    title = f"{algorithm} on {type(op).__name__}, δ = {op.delta:g}"
    written.append(pio.save_figure(convergence_figure(log, title), outp / "convergence.png"))
    written.append(save_log(log, outp / "log.json"))
    written.append(pio.atomic_torch_save({"x": x_hat.cpu(), "x_init": None if x_init is None else x_init.detach().cpu()},
                                         outp / "reconstruction.pt"))
    written.append(pio.save_json(summary, outp / "summary.json"))
    summary["files"] = [str(w) for w in written]
    summary["log"] = log
    return summary


# ============================================================================ train / theory
def _seed_list(seed: int, count: int) -> List[int]:
    return list(range(int(seed), int(seed) + int(count)))


def train_job(out, *, delta: float, dim: int, seeds: int, steps: int, l2: float = 0.0,
              step: Optional[float] = None, preprocessing: str = "optimal", noise: float = 0.0, field: str = "real",
              algorithm: str = "wf", seed: int = 0, device: torch.device = torch.device("cpu"),
              progress: bool = True, write: bool = True):
    """Batched multi-seed spectral-initialised WF in the theory's units (:func:`phasetorch.theory.simulate`;
    inside a process group the seeds are split over the ranks, ``write=False`` on all but rank 0).

    Seeds ``seed, seed+1, …, seed+seeds−1``; ``step=None`` uses the WF preset's schedule;
    ``noise`` is σ of y = |Ax*|² + σε (the theory's units: E y = 1); ``algorithm`` is one of
    :data:`TRAIN_ALGORITHMS` (wf: intensity loss; af: amplitude loss, constant ``step`` only). Writes ``out/log.json`` and ``out/log.csv``; returns the
    :class:`~phasetorch.logs.TrainingLog`.
    """
    if algorithm not in TRAIN_ALGORITHMS:
        raise ValueError(f"train runs {', '.join(TRAIN_ALGORITHMS)} (gradient descent on the intensity or the "
                         f"amplitude loss, what the theory describes), got {algorithm!r}")
    if algorithm != "wf" and step is None:
        raise ValueError(f"train --algorithm {algorithm}: give a constant --step η (the DMFT describes a constant "
                         f"step; only wf has a default ramp)")
    outp = Path(out)
    model = THEORY_MODELS[TRAIN_MODEL[algorithm]](float(noise), field=field)
    log = simulate(float(delta), dim=int(dim), seeds=_seed_list(seed, seeds), steps=int(steps),
                   step=None if step is None else float(step), l2=float(l2), preprocessing=preprocessing,
                   model=model, device=device, progress=progress)
    if write:
        save_log(log, outp / "log.json")
        pio.atomic_write(outp / "log.csv", log.to_csv)
    return log


def theory_job(out, *, delta: float, steps: int, l2: float = 0.0, step: Optional[float] = None,
               preprocessing: str = "optimal", noise: float = 0.0, samples: int = 50_000, replicates: int = 4,
               seed: int = 0, logs: Sequence = (), device: torch.device = torch.device("cpu"),
               progress: bool = True, field: str = "real", model=None, write: bool = True) -> Dict[str, Any]:
    """Solve the DMFT of spectral-initialised (regularized) WF (``field`` real or complex; or of any
    ``model``, a :class:`~phasetorch.theory.SingleIndexModel`) and compare it with simulation logs (refused
    by :func:`~phasetorch.theory.compare` when it does not describe them); ``write=False`` writes nothing.

    Writes ``out/prediction.json`` and ``out/overlay.png`` (:func:`~phasetorch.app.figures.theory_figure`:
    DMFT ± 1 SE over the logs' mean ± 1 SE, and their difference); with logs, also
    ``out/comparison.json`` (the sup gaps). Returns {"prediction", "comparison", "files"}.
    """
    outp = Path(out)
    physics = dict(noise=float(noise), field=field) if model is None else dict(model=model)
    prediction = dmft(float(delta), steps=int(steps), step=None if step is None else float(step), l2=float(l2),
                      preprocessing=preprocessing, samples=int(samples), replicates=int(replicates), seed=int(seed),
                      device=device, progress=progress, **physics)
    comparison = compare(prediction, list(logs)) if logs else None
    if not write:                   # a distributed run's other ranks: rank 0 writes
        return {"prediction": prediction, "comparison": comparison, "files": []}
    files = [save_log(prediction, outp / "prediction.json")]
    fig = theory_figure(prediction, list(logs)) if logs else prediction_figure(prediction)
    files.append(pio.save_figure(fig, outp / "overlay.png"))
    if comparison is not None:
        files.append(pio.save_json(comparison_dict(comparison), outp / "comparison.json"))
    return {"prediction": prediction, "comparison": comparison, "files": [str(f) for f in files]}


def comparison_dict(comparison) -> Dict[str, Any]:
    """A :class:`~phasetorch.theory.Comparison` (a dataclass) as a dict (a dict is returned as is)."""
    if isinstance(comparison, dict):
        return comparison
    return dataclasses.asdict(comparison)


def sup_gap_lines(comparison, judged: bool = True, why: str = "") -> List[str]:
    """Human-readable sup gaps (one line per observable) of a theory comparison.

    ``judged=False`` replaces the verdict by "not judged (``why``)": a run too small for the n → ∞
    theory (the demo's ``--quick``) gets no agree/disagree call.
    """
    d = comparison_dict(comparison)
    lines = []
    if "verdict" in d:
        verdict = d["verdict"] if judged else f"not judged ({why or 'too small a run'})"
        lines.append(f"verdict: {verdict} ({d.get('seeds', '?')} seeds, success rate "
                     f"{fmt_value(d.get('success_rate'), '{:.2f}')})")
    max_z = d.get("max_z") or {}
    for name, v in (d.get("sup_gap") or {}).items():
        z = f" (max |z| {fmt_value(max_z[name], '{:.2f}')})" if name in max_z else ""
        lines.append(f"sup |theory − simulation| of {name}: {fmt_value(v)}{z}")
    return lines


def check_recoverable(delta: float, preprocessing: str, noise: float = 0.0) -> None:
    """Refuse a theory request below the spectral weak-recovery threshold (the start carries no signal)."""
    try:
        dc = float(spectral_threshold(preprocessing, field="real", noise=noise))
    except ValueError:
        return  # no closed-form threshold (rank-based preprocessing): let the solver decide
    if delta <= dc:
        raise CLIError(f"δ = {delta:g} is at or below the spectral weak-recovery threshold δ_c = {dc:.4g} of "
                       f"'{preprocessing}': the spectral start is uninformative there; use --delta above {dc:.4g}")


#: The operators of the DMFT: Gaussian matrices, real or complex (one, or a batch of them).
THEORY_OPERATORS = ("GaussianMeasurement", "GaussianEnsemble")
#: The step rule of ``wf`` without a constant step: the DMFT's default ramp (Candès et al.).
WF_RAMP = {"rule": "wf_ramp", "tau0": 330.0, "mu_max": 0.2}

