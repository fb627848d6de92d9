r"""The user's jobs end to end, as functions: what the ``phasetorch`` commands, the demo and the scripts run.

==========================  =========================================================================
function                    job
==========================  =========================================================================
:func:`simulate_problem`    image/object → operator → intensities (+ noise); optionally written as
                            measurements.pt + operator.pt + truth.png (the pair ``reconstruct`` reads)
:func:`load_problem`        that file pair → the same problem dict
:func:`reconstruction_job`  intensities → :func:`phasetorch.reconstruct` → PNGs, convergence figure,
                            log.json, reconstruction.pt, summary.json
:func:`train_job`           batched multi-seed Gaussian WF in the theory's units
                            (:func:`phasetorch.theory.simulate`) → log.json + log.csv
:func:`theory_job`          the DMFT (:func:`phasetorch.theory.dmft`) → prediction.json, overlay.png,
                            and with logs comparison.json (:func:`phasetorch.theory.compare`)
==========================  =========================================================================

The pieces: :func:`build_operator` (the four forward models of the command line), :func:`parse_noise`
and :func:`make_noise`, :func:`load_object`, :func:`object_support`, :func:`resolve_twin`.

Algorithm names all come from the registry :data:`phasetorch.optim.presets.PRESETS`:
:data:`ALGORITHMS` (every preset), :data:`PROJECTION_ALGORITHMS` (the projection methods, which take
the object's support and non-negativity), :data:`SUPPORT_ALGORITHMS` (those meaningless without a
support: not for Gaussian models) and :data:`TRAIN_ALGORITHMS` (what :func:`train_job` runs).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import io as pio
from ..metrics import align_phase, overlap, psnr, relative_error
from ..optim.presets import PRESETS
from ..phantoms import complex_object
from ..physics import (CodedDiffraction, GaussianMeasurement, OversampledFourier, StructuredRandom, load_operator,
                       save_operator)
from ..physics.noise import GaussianNoise, PoissonNoise
from ..solve import reconstruct
from ..tensors import check_number
from ..theory import compare, dmft, overlay, simulate, spectral_threshold
from .common import CLIError, Echo, UsageError, fmt_value
from .figures import (circular_mean_phase, convergence_figure, phase_view, prediction_figure, save_display,
                      signal_figure)

__all__ = ["ALGORITHMS", "PROJECTION_ALGORITHMS", "SUPPORT_ALGORITHMS", "TRAIN_ALGORITHMS", "MODELS",
           "DEFAULT_IMAGE_SIZE", "GAUSSIAN_MAX_BYTES", "parse_noise", "build_operator", "make_noise",
           "object_support", "load_object", "simulate_problem", "load_problem", "resolve_twin", "default_algorithm",
           "reconstruction_job", "train_job", "theory_job", "comparison_dict", "sup_gap_lines", "check_recoverable",
           "save_log"]

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
                                          if p.loss == "intensity" and not p.loss_choices)
MODELS = ("cdp", "gaussian", "structured", "fourier")
DEFAULT_IMAGE_SIZE = 64
GAUSSIAN_MAX_BYTES = 2 * 1024 ** 3


# ============================================================================ problems
def parse_noise(spec: Optional[str]) -> Tuple[str, float]:
    """``none`` | ``poisson:PHOTONS`` | ``gaussian:SIGMA`` → (kind, level).

    PHOTONS is the expected total photon count per measurement set (:class:`phasetorch.physics.noise.PoissonNoise`);
    SIGMA is the noise standard deviation relative to the mean intensity
    (:class:`phasetorch.physics.noise.GaussianNoise` with ``relative=True``).
    """
    if spec is None or spec.strip().lower() in ("", "none", "0"):
        return "none", 0.0
    kind, sep, level = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in ("poisson", "gaussian") or not sep:
        raise UsageError(f"bad --noise {spec!r}: use none, poisson:PHOTONS (e.g. poisson:1e7) or gaussian:SIGMA "
                         f"(e.g. gaussian:0.05)")
    try:
        value = float(level)
    except ValueError:
        raise UsageError(f"bad --noise {spec!r}: {level!r} is not a number") from None
    try:
        check_number(value, "the noise level", 0.0, strict=(kind == "poisson"))
    except ValueError:
        raise UsageError(f"bad --noise {spec!r}: the level must be a positive number") from None
    return kind, value


def build_operator(model: str, signal_shape: Sequence[int], *, masks: int = 4, mask: str = "octanary",
                   oversampling: int = 2, layers: int = 2, delta: float = 6.0, real: bool = False, seed: int = 0,
                   dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")):
    """The forward model of ``model`` for a signal of ``signal_shape``.

    * ``cdp``: :class:`~phasetorch.physics.CodedDiffraction` with ``masks`` patterns (δ = L);
    * ``gaussian``: dense complex (``real=False``) or real :class:`~phasetorch.physics.GaussianMeasurement`
      with m = round(δ n) rows (refused above 2 GiB of matrix);
    * ``structured``: :class:`~phasetorch.physics.StructuredRandom`, ``layers`` random-phase layers,
      padded by ``oversampling`` per axis (δ = oversampling^ndim);
    * ``fourier``: :class:`~phasetorch.physics.OversampledFourier` (CDI, δ = oversampling^ndim).
    """
    shape = tuple(int(s) for s in signal_shape)
    if model == "cdp":
        op = CodedDiffraction(shape, masks, mask=mask, seed=seed, dtype=dtype)
    elif model == "gaussian":
        n = math.prod(shape)
        m = max(1, int(round(delta * n)))
        nbytes = m * n * (4 if real else 8) * (2 if dtype == torch.float64 else 1)
        if nbytes > GAUSSIAN_MAX_BYTES:
            raise CLIError(f"a dense Gaussian model for {n} unknowns and {m} measurements needs "
                           f"{nbytes / 1024 ** 3:.1f} GiB; use a smaller --size (e.g. 32) or --model cdp/structured")
        op = GaussianMeasurement(shape, m, complex=not real, seed=seed, dtype=dtype)
    elif model == "structured":
        op = StructuredRandom(shape, n_layers=layers, oversampling=oversampling, seed=seed, dtype=dtype)
    elif model == "fourier":
        op = OversampledFourier(shape, oversampling=oversampling, dtype=dtype)
    else:
        raise UsageError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return op.to(device)


def make_noise(kind: str, level: float, seed: int, event_dims: int):
    """The noise module of :func:`parse_noise`'s (kind, level), or None."""
    if kind == "poisson":
        return PoissonNoise(level, seed=seed, event_dims=event_dims)
    if kind == "gaussian":
        return GaussianNoise(level, seed=seed, relative=True, event_dims=event_dims)
    return None


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
                dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, str]:
    """The ground-truth object and its display mode (``amplitude``, ``phase`` or ``complex``).

    Images load as real [0, 1] objects; ``phase_image`` turns an image p into exp(iπp) (a unit-amplitude
    phase object). ``.pt`` files load as stored (complex objects display modulus and phase).
    """
    if size is not None and len(size) == 1:
        size = int(size[0])
    elif size is not None:
        size = tuple(size)
    is_pt = Path(path).suffix.lower() == ".pt"
    if size is None and not is_pt:
        size = DEFAULT_IMAGE_SIZE
    x = pio.load_signal(path, size=size, dtype=dtype)
    if phase_image:
        if x.is_complex():
            raise CLIError("--phase-image needs a real image (the file already holds a complex object)")
        return complex_object(torch.ones_like(x), x), "phase"
    return x, ("complex" if x.is_complex() else "amplitude")


def simulate_problem(image: str, out: Optional[str] = None, *, model: str = "cdp", size=None, masks: int = 4,
                     mask: str = "octanary", oversampling: int = 2, layers: int = 2, delta: float = 6.0,
                     noise: Optional[str] = None, phase_image: bool = False, seed: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")) -> Dict[str, Any]:
    """Object → operator → intensities (+ noise). With ``out``, writes measurements.pt, operator.pt, truth.png.

    Returns {"op", "y", "x_true", "support", "nonnegative", "display", "meta"}. For ``fourier`` the
    support is :func:`object_support` of the object and real non-negative objects are flagged
    ``nonnegative`` (the constraints of error reduction / HIO).
    """
    kind, level = parse_noise(noise)
    x, display = load_object(image, size=size, phase_image=phase_image, dtype=dtype)
    op = build_operator(model, x.shape, masks=masks, mask=mask, oversampling=oversampling, layers=layers,
                        delta=delta, seed=seed, dtype=dtype, device=device)
    x = x.to(device=device, dtype=op.signal_dtype if (op.is_complex or x.is_complex()) else op.real_dtype)
    with torch.no_grad():
        y = op(x)
        noise_mod = make_noise(kind, level, seed + 1, len(op.measurement_shape))
        if noise_mod is not None:
            y = noise_mod(y)
    support = object_support(x) if model == "fourier" else None
    nonneg = model == "fourier" and display == "amplitude"
    meta = {"image": str(image), "model": model, "shape": list(x.shape), "noise": noise or "none",
            "phase_image": bool(phase_image), "display": display, "seed": int(seed), "m": op.m, "n": op.n,
            "delta": op.delta, "operator": op.config()}
    problem = {"op": op, "y": y, "x_true": x, "support": support, "nonnegative": nonneg, "display": display,
               "meta": meta}
    if out is not None:
        outp = Path(out)
        outp.mkdir(parents=True, exist_ok=True)
        pio.save_measurements(outp / "measurements.pt", y, x_true=x, support=support, nonnegative=nonneg, meta=meta)
        save_operator(op, outp / "operator.pt")
        save_display(x, outp / "truth.png", display, circular_mean_phase(x))
    return problem


def load_problem(measurements, operator, device: torch.device = torch.device("cpu")) -> Dict[str, Any]:
    """The problem dict of :func:`simulate_problem` from a saved measurements file and operator file.

    The display mode is the one stored in the file's meta, else ``complex`` for a complex truth and
    ``amplitude`` otherwise.
    """
    op = load_operator(operator, map_location=device)
    data = pio.load_measurements(measurements, operator=op)
    xt = data["x_true"]
    display = data["meta"].get("display") or ("complex" if (xt is not None and xt.is_complex()) else "amplitude")
    return {"op": op, "y": data["y"], "x_true": xt, "support": data["support"],
            "nonnegative": data["nonnegative"], "display": display, "meta": data["meta"]}


# ============================================================================ reconstruction
def _twin(x: torch.Tensor, k: int) -> torch.Tensor:
    """The conjugate twin x̄(−r) shifted back into the box: flip of the last ``k`` axes, conjugated."""
    t = torch.flip(x, dims=tuple(range(-k, 0)))
    return t.conj() if t.is_complex() else t


def resolve_twin(x_hat: torch.Tensor, x_true: torch.Tensor, k: int) -> torch.Tensor:
    """For Fourier magnitudes: x̂ or its twin, whichever is closer to x* per sample (both fit y equally)."""
    e1 = relative_error(x_hat, x_true, signal_dims=k)
    tw = _twin(x_hat, k)
    e2 = relative_error(tw, x_true, signal_dims=k)
    pick = (e2 < e1).reshape(*e1.shape, *([1] * k))
    return torch.where(pick, tw, x_hat)


def default_algorithm(op) -> str:
    """The reconstruction jobs' algorithm when none is named: HIO for Fourier magnitudes, else RAF."""
    return "hio" if isinstance(op, OversampledFourier) else "raf"


def _to_list(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.dim() == 0 else v.tolist()
    return v


def save_log(log, path) -> Path:
    """Write a :class:`~phasetorch.logs.TrainingLog` or :class:`~phasetorch.theory.Prediction` as JSON."""
    path = Path(path)
    log.to_json(path)
    return path


def reconstruction_job(op, y: torch.Tensor, out, *, x_true: Optional[torch.Tensor] = None,
                       algorithm: Optional[str] = None, init: Optional[str] = None, iters: int = 300,
                       step: Optional[float] = None, preprocessing: Optional[str] = None,
                       support: Optional[torch.Tensor] = None, nonnegative: bool = False, seed: int = 0,
                       display: str = "amplitude", progress: bool = True, echo: Optional[Echo] = None,
                       meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Reconstruct from intensities ``y`` and write the job's files into ``out``.

    Files: for images (2-D signals) reconstruction.png and init.png, with ``x_true`` also truth.png,
    error.png = |x̂ − x*| after the global phase is removed, and grid.png = truth | init |
    reconstruction | error (complex objects add ``*_phase.png``); for 1-D signals signal.png (moduli
    per coordinate); always convergence.png,
    log.json (the :class:`~phasetorch.logs.TrainingLog`), reconstruction.pt ({"x", "x_init"}) and
    summary.json (settings and final metrics). Images show the first sample of a batch. Returns the
    summary dict. For Fourier data (``OversampledFourier``) the twin x̄(−r) fits y as well as x̂, so
    the one closer to x* is reported.
    """
    echo = echo or Echo()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    fourier = isinstance(op, OversampledFourier)
    if algorithm is None:
        algorithm = default_algorithm(op)
    k = len(op.signal_shape)
    kwargs: Dict[str, Any] = dict(algorithm=algorithm, max_iter=int(iters), x_true=x_true, progress=progress,
                                  seed=seed)
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
    rec = reconstruct(op, y, **kwargs)
    seconds = time.perf_counter() - t0
    x_hat = rec.x.detach()
    x_init = rec.x0
    summary: Dict[str, Any] = {"algorithm": algorithm, "iterations": _to_list(rec.iterations),
                               "converged": _to_list(rec.converged), "seconds": seconds, "n": op.n, "m": op.m,
                               "delta": op.delta, "operator": op.config(), "meta": meta or {}}
    if x_true is not None:
        if fourier:
            x_hat = resolve_twin(x_hat, x_true, k)
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
    written = []
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
        written.append(pio.save_image(err, outp / "error.png"))
        view = (lambda t: phase_view(t, center)) if display == "phase" else \
            (lambda t: t.abs() if t.is_complex() else t)
        tiles = [view(xt)] + ([view(x_init.detach()[first])] if x_init is not None else []) + \
                [view(x_hat[first]), err]
        written.append(pio.save_grid(tiles, outp / "grid.png", scale=max(1, 128 // min(xt.shape))))
    title = f"{algorithm} on {type(op).__name__}, δ = {op.delta:g}"
    written.append(pio.save_figure(convergence_figure(rec.log, title), outp / "convergence.png"))
    written.append(save_log(rec.log, outp / "log.json"))
    torch.save({"x": x_hat.cpu(), "x_init": None if x_init is None else x_init.detach().cpu()},
               outp / "reconstruction.pt")
    written.append(outp / "reconstruction.pt")
    written.append(pio.save_json(summary, outp / "summary.json"))
    summary["files"] = [str(w) for w in written]
    return summary


# ============================================================================ train / theory
def _seed_list(seed: int, count: int) -> List[int]:
    return list(range(int(seed), int(seed) + int(count)))


def train_job(out, *, delta: float, dim: int, seeds: int, steps: int, l2: float = 0.0,
              step: Optional[float] = None, preprocessing: str = "optimal", noise: float = 0.0, field: str = "real",
              algorithm: str = "wf", seed: int = 0, device: torch.device = torch.device("cpu"),
              progress: bool = True):
    """Batched multi-seed spectral-initialised WF in the theory's units (:func:`phasetorch.theory.simulate`).

    Seeds ``seed, seed+1, …, seed+seeds−1``; ``step=None`` uses the WF preset's schedule;
    ``algorithm`` is one of :data:`TRAIN_ALGORITHMS`. Writes ``out/log.json`` and ``out/log.csv``;
    returns the :class:`~phasetorch.logs.TrainingLog`.
    """
    if algorithm not in TRAIN_ALGORITHMS:
        raise ValueError(f"train runs {', '.join(TRAIN_ALGORITHMS)} (gradient descent on the intensity loss, "
                         f"what the theory describes), got {algorithm!r}")
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    log = simulate(float(delta), dim=int(dim), seeds=_seed_list(seed, seeds), steps=int(steps),
                   step=None if step is None else float(step), l2=float(l2), preprocessing=preprocessing,
                   noise=float(noise), field=field, device=device, progress=progress)
    save_log(log, outp / "log.json")
    log.to_csv(outp / "log.csv")
    return log


def theory_job(out, *, delta: float, steps: int, l2: float = 0.0, step: Optional[float] = None,
               preprocessing: str = "optimal", noise: float = 0.0, samples: int = 50_000, replicates: int = 4,
               seed: int = 0, logs: Sequence = (), device: torch.device = torch.device("cpu"),
               progress: bool = True) -> Dict[str, Any]:
    """Solve the DMFT of spectral-initialised (regularized) WF and compare it with simulation logs.

    Writes ``out/prediction.json`` and ``out/overlay.png`` (theory curves over the logs' mean ± SE);
    with logs, also ``out/comparison.json`` (the sup gaps). Returns {"prediction", "comparison", "files"}.
    """
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    prediction = dmft(float(delta), steps=int(steps), step=None if step is None else float(step), l2=float(l2),
                      preprocessing=preprocessing, noise=float(noise), samples=int(samples),
                      replicates=int(replicates), seed=int(seed), device=device, progress=progress)
    files = [save_log(prediction, outp / "prediction.json")]
    fig = overlay(prediction, list(logs)) if logs else prediction_figure(prediction)
    files.append(pio.save_figure(fig, outp / "overlay.png"))
    comparison = None
    if logs:
        comparison = compare(prediction, list(logs))
        files.append(pio.save_json(comparison_dict(comparison), outp / "comparison.json"))
    return {"prediction": prediction, "comparison": comparison, "files": [str(f) for f in files]}


def comparison_dict(comparison) -> Dict[str, Any]:
    """A :class:`~phasetorch.theory.Comparison` (a dataclass) as a dict (a dict is returned as is)."""
    if isinstance(comparison, dict):
        return comparison
    return dataclasses.asdict(comparison)


def sup_gap_lines(comparison) -> List[str]:
    """Human-readable sup gaps (one line per observable) of a theory comparison."""
    d = comparison_dict(comparison)
    lines = []
    if "verdict" in d:
        lines.append(f"verdict: {d['verdict']} ({d.get('seeds', '?')} seeds, success rate "
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
