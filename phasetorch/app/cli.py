r"""The ``phasetorch`` command: the user's jobs end to end.

=====================  ==========================================================================
subcommand             job
=====================  ==========================================================================
``demo``               reconstruct a bundled image from noisy coded-diffraction data, and overlay
                       the DMFT prediction on a spectral-initialised regularized-WF simulation
``reconstruct``        image (or saved measurements + operator) → reconstruction, figures, log
``simulate``           image → measurements.pt + operator.pt (the pair ``reconstruct`` reads)
``train``              batched multi-seed Gaussian simulation in the theory's units → log.json/csv
``theory``             solve the DMFT (optionally for the settings of a log) → prediction + overlay
``sweep``              success rate vs δ for several algorithms (resumable) → results.json + PNG
``bench``              run ``scripts/benchmark.py`` of the source repository with the given args
=====================  ==========================================================================

Every error (missing file, unreadable image, bad option value, a library ``ValueError``) is one
line ``phasetorch: error: …`` on stderr and a non-zero exit status (2 for usage errors, 1 for
failures of the job itself); ``--debug`` (or ``PHASETORCH_DEBUG=1``) shows the traceback instead.
Figures use matplotlib's headless Agg backend. The job functions (:func:`reconstruction_job`,
:func:`simulate_problem`, :func:`train_job`, :func:`theory_job`) are importable for scripts.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import io as pio

ALGORITHMS = ("wf", "twf", "rwf", "taf", "raf", "af", "gs", "hio", "lbfgs")
MODELS = ("cdp", "gaussian", "structured", "fourier")
PROJECTION_ALGORITHMS = ("gs", "hio")
DEFAULT_IMAGE_SIZE = 64
GAUSSIAN_MAX_BYTES = 2 * 1024 ** 3


class CLIError(Exception):
    """A user-facing failure: printed as one ``phasetorch: error: …`` line."""


class UsageError(CLIError):
    """Bad command-line syntax or option value (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sub = self.prog.split(" ", 1)[1] if " " in self.prog else None
        hint = f" (see 'phasetorch {sub} --help')" if sub else " (see 'phasetorch --help')"
        raise UsageError(message + hint)


# ============================================================================ small parsers
def _checked_number(convert: Callable[[str], Any], accept: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert(text)``, rejected with "expected WHAT" unless ``accept(value)``."""
    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _checked_number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _checked_number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked_number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_nonneg_float = _checked_number(float, lambda v: math.isfinite(v) and v >= 0, "a number ≥ 0")


def _size(text: str) -> Tuple[int, ...]:
    """``64`` (square: centre-crop then resize) or ``64x48`` (H×W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 64 or 64x48, got {text!r}") from None
    if len(vals) not in (1, 2) or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 64 or 64x48, got {text!r}")
    return vals


def _device(text: str) -> str:
    t = text.strip().lower()
    if t == "cpu":
        return t
    if t == "cuda" or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


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
    if not math.isfinite(value) or value < 0 or (kind == "poisson" and value == 0):
        raise UsageError(f"bad --noise {spec!r}: the level must be a positive number")
    return kind, value


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


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


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


# ============================================================================ problems
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
    from ..physics import CodedDiffraction, GaussianMeasurement, OversampledFourier, StructuredRandom

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
    from ..physics.noise import GaussianNoise, PoissonNoise

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
    from ..phantoms import complex_object

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
        from ..physics import save_operator

        outp = Path(out)
        outp.mkdir(parents=True, exist_ok=True)
        pio.save_measurements(outp / "measurements.pt", y, x_true=x, support=support, nonnegative=nonneg, meta=meta)
        save_operator(op, outp / "operator.pt")
        save_display(x, outp / "truth.png", display, circular_mean_phase(x))
    return problem


# ============================================================================ reconstruction
def phase_view(x: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """arg(x e^{−i·center}) ∈ (−π, π]: the phase map, cut as far as possible from ``center``.

    With ``center`` the circular mean of the true phase, a phase map spanning less than 2π does not
    wrap (a phase of π − ε would otherwise flip to −π + ε and show black instead of white).
    """
    if not x.is_complex():
        return x
    return torch.angle(x * complex(math.cos(center), -math.sin(center)))


def circular_mean_phase(x: torch.Tensor) -> float:
    """arg Σ x_j/|x_j| (0 for a real or all-zero x)."""
    if not x.is_complex():
        return 0.0
    a = x.abs()
    u = torch.where(a > 0, x / a.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(x)).sum()
    return float(torch.angle(u)) if float(u.abs()) > 0 else 0.0


def save_display(x: torch.Tensor, path, display: str, center: float = 0.0) -> List[Path]:
    """Write an object as PNG(s): modulus (``amplitude``), phase (``phase``) or both (``complex``).

    Phase maps are :func:`phase_view` ``(x, center)``, min–max normalised; ``complex`` adds ``*_phase.png``.
    """
    path = Path(path)
    written = []
    if display in ("amplitude", "complex"):
        written.append(pio.save_image(x.abs() if x.is_complex() else x, path))
    if display == "phase":
        written.append(pio.save_image(phase_view(x, center), path))
    if display == "complex":
        written.append(pio.save_image(phase_view(x, center), path.with_name(path.stem + "_phase" + path.suffix)))
    return written


def _twin(x: torch.Tensor, k: int) -> torch.Tensor:
    """The conjugate twin x̄(−r) shifted back into the box: flip of the last ``k`` axes, conjugated."""
    t = torch.flip(x, dims=tuple(range(-k, 0)))
    return t.conj() if t.is_complex() else t


def resolve_twin(x_hat: torch.Tensor, x_true: torch.Tensor, k: int) -> torch.Tensor:
    """For Fourier magnitudes: x̂ or its twin, whichever is closer to x* per sample (both fit y equally)."""
    from ..metrics import relative_error

    e1 = relative_error(x_hat, x_true, signal_dims=k)
    tw = _twin(x_hat, k)
    e2 = relative_error(tw, x_true, signal_dims=k)
    pick = (e2 < e1).reshape(*e1.shape, *([1] * k))
    return torch.where(pick, tw, x_hat)


def convergence_figure(log, title: str = ""):
    """Relative error (when known) and loss versus iteration, log scale; returns the Figure."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    cols = [c for c in ("rel_error", "loss") if _has_column(log, c)]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.6 * max(1, len(cols)), 3.4), squeeze=False)
    it = _column(log, "iteration")
    for ax, c in zip(axes[0], cols):
        v = _column(log, c)
        v = v.reshape(v.shape[0], -1)
        for b in range(v.shape[1]):
            ax.semilogy(it[: v.shape[0]].tolist(), v[:, b].clamp(min=1e-16).tolist(), lw=1.3)
        ax.set_xlabel("iteration")
        ax.set_ylabel({"rel_error": "relative error", "loss": "loss"}[c])
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def signal_figure(x_hat: torch.Tensor, x_true: Optional[torch.Tensor] = None, x_init: Optional[torch.Tensor] = None):
    """Moduli of a 1-D (or flattened) reconstruction, its initial point and the truth, per coordinate."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    for v, label, style in ((x_true, "truth", "k-"), (x_init, "init", "C1:"), (x_hat, "reconstruction", "C0--")):
        if v is not None:
            ax.plot(v.detach().reshape(-1).abs().cpu().tolist(), style, lw=1.2, label=label)
    ax.set_xlabel("coordinate")
    ax.set_ylabel("modulus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _has_column(log, name: str) -> bool:
    try:
        _column(log, name)
        return True
    except (KeyError, ValueError, IndexError):
        return False


def _column(log, name: str) -> torch.Tensor:
    v = log[name]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    return v.detach().to("cpu", torch.float64)


def _cli_preprocessing(choice: Optional[str], algorithm: Optional[str], init: Optional[str], op) -> Optional[str]:
    """The spectral preprocessing of ``phasetorch reconstruct``: ``optimal`` by default whenever the
    start is spectral, ``preset`` for the algorithm's own (paper) default, or the name given.

    The papers' starts (identity for WF and GS, trimmed for TWF, RWF's truncation) were designed for
    Gaussian data and fail on coded-diffraction images with few masks (the bundled 64² image with 4
    masks: TWF, RWF, GS end at relative error ≈ 1.3 and WF diverges; from the ``optimal`` start
    all four recover it).
    """
    if choice == "preset":
        return None
    if choice is not None:
        return choice
    from ..optim import PRESETS
    start = init or PRESETS[algorithm or default_algorithm(op)].init
    return "optimal" if start == "spectral" else None


def default_algorithm(op) -> str:
    """The reconstruction jobs' algorithm when none is named: HIO for Fourier magnitudes, else RAF."""
    from ..physics import OversampledFourier
    return "hio" if isinstance(op, OversampledFourier) else "raf"


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
    from ..metrics import align_phase, overlap, psnr, relative_error
    from ..physics import OversampledFourier
    from ..solve import reconstruct

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
        xt0 = None if x_true is None else x_true[(0,) * (x_true.dim() - k)]
        xi0 = None if x_init is None else x_init.detach()[first]
        written.append(pio.save_figure(signal_figure(x_hat[first], xt0, xi0), outp / "signal.png"))
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
    written.append(_save_log(rec.log, outp / "log.json"))
    torch.save({"x": x_hat.cpu(), "x_init": None if x_init is None else x_init.detach().cpu()},
               outp / "reconstruction.pt")
    written.append(outp / "reconstruction.pt")
    written.append(pio.save_json(summary, outp / "summary.json"))
    summary["files"] = [str(w) for w in written]
    return summary


def _to_list(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.dim() == 0 else v.tolist()
    return v


def _save_log(log, path: Path) -> Path:
    """TrainingLog → JSON file (whatever form its ``to_json`` takes)."""
    try:
        text = log.to_json(path)
    except TypeError:
        text = log.to_json()
    if isinstance(text, str) and not path.exists():
        path.write_text(text, encoding="utf-8")
    return path


def _fmt(v, fmt: str = "{:.3g}") -> str:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return _fmt(v[0], fmt)
        return "[" + ", ".join(_fmt(u, fmt) for u in v) + "]"
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return fmt.format(v)


def _report_reconstruction(summary: Dict[str, Any], out, echo: Echo) -> None:
    parts = [f"iterations {_fmt(summary['iterations'], '{}')}"]
    if "rel_error" in summary:
        parts.insert(0, f"relative error {_fmt(summary['rel_error'])}")
        parts.insert(1, f"PSNR {_fmt(summary['psnr'], '{:.2f}')} dB")
    echo.result("result: " + ", ".join(parts) + f" ({summary['seconds']:.1f} s)")
    echo(f"wrote {len(summary['files'])} files to {out}/: " + ", ".join(Path(f).name for f in summary["files"]))


# ============================================================================ train / theory
def train_job(out, *, delta: float, dim: int, seeds: int, steps: int, l2: float = 0.0,
              step: Optional[float] = None, preprocessing: str = "optimal", noise: float = 0.0, field: str = "real",
              seed: int = 0, device: torch.device = torch.device("cpu"), progress: bool = True):
    """Batched multi-seed spectral-initialised WF in the theory's units (:func:`phasetorch.theory.simulate`).

    Seeds ``seed, seed+1, …, seed+seeds−1``; ``step=None`` uses the WF preset's schedule. Writes
    ``out/log.json`` and ``out/log.csv``; returns the :class:`~phasetorch.logs.TrainingLog`.
    """
    from ..theory import simulate

    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    log = simulate(float(delta), dim=int(dim), seeds=_seed_list(seed, seeds), steps=int(steps),
                   step=None if step is None else float(step), l2=float(l2), preprocessing=preprocessing,
                   noise=float(noise), field=field, device=device, progress=progress)
    _save_log(log, outp / "log.json")
    log.to_csv(outp / "log.csv")
    return log


def _seed_list(seed: int, count: int) -> List[int]:
    return list(range(int(seed), int(seed) + int(count)))


def _mean_se(v: torch.Tensor) -> Tuple[float, float]:
    v = v.reshape(-1).to(torch.float64)
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return float("nan"), float("nan")
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


def theory_job(out, *, delta: float, steps: int, l2: float = 0.0, step: Optional[float] = None,
               preprocessing: str = "optimal", noise: float = 0.0, samples: int = 50_000, replicates: int = 4, seed: int = 0,
               logs: Sequence = (), device: torch.device = torch.device("cpu"),
               progress: bool = True) -> Dict[str, Any]:
    """Solve the DMFT of spectral-initialised (regularized) WF and compare it with simulation logs.

    Writes ``out/prediction.json`` and ``out/overlay.png`` (theory curves over the logs' mean ± SE);
    with logs, also ``out/comparison.json`` (the sup gaps). Returns {"prediction", "comparison", "files"}.
    """
    from ..theory import compare, dmft, overlay

    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    prediction = dmft(float(delta), steps=int(steps), step=None if step is None else float(step), l2=float(l2),
                      preprocessing=preprocessing, noise=float(noise), samples=int(samples),
                      replicates=int(replicates), seed=int(seed), device=device, progress=progress)
    files = [_save_log(prediction, outp / "prediction.json")]
    fig = overlay(prediction, list(logs)) if logs else prediction_figure(prediction)
    files.append(pio.save_figure(fig, outp / "overlay.png"))
    comparison = None
    if logs:
        comparison = compare(prediction, list(logs))
        files.append(pio.save_json(_comparison_dict(comparison), outp / "comparison.json"))
    return {"prediction": prediction, "comparison": comparison, "files": [str(f) for f in files]}


def prediction_figure(prediction, quantities: Sequence[str] = ("overlap", "rel_error", "loss")):
    """The DMFT curves alone (± 2 SE over replicates) when there is no simulation to overlay."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.4), squeeze=False)
    t = prediction["iteration"].to(torch.float64).tolist()
    for ax, q in zip(axes[0], quantities):
        v = prediction[q].to(torch.float64)
        se = torch.nan_to_num(prediction[q + "_se"].to(torch.float64), nan=0.0)
        ax.plot(t, v.tolist(), color="C0", lw=1.6, label="DMFT")
        ax.fill_between(t, (v - 2 * se).tolist(), (v + 2 * se).tolist(), color="C0", alpha=0.25, lw=0,
                        label="± 2 SE")
        ax.set_xlabel("iteration t")
        ax.set_ylabel(q)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    params = dict(getattr(prediction, "params", {}) or {})
    if params:
        fig.suptitle("DMFT: " + ", ".join(f"{k} = {params[k]}" for k in ("delta", "l2", "step", "preprocessing")
                                           if params.get(k) is not None), fontsize=10)
    fig.tight_layout()
    return fig


def _comparison_dict(comparison) -> Dict[str, Any]:
    if isinstance(comparison, dict):
        return comparison
    for attr in ("to_dict", "as_dict"):
        if hasattr(comparison, attr):
            return getattr(comparison, attr)()
    import dataclasses

    if dataclasses.is_dataclass(comparison):
        return dataclasses.asdict(comparison)
    return dict(vars(comparison))


def sup_gap_lines(comparison) -> List[str]:
    """Human-readable sup gaps (one line per observable) of a theory comparison."""
    d = _comparison_dict(comparison)
    lines = []
    if "verdict" in d:
        lines.append(f"verdict: {d['verdict']} ({d.get('seeds', '?')} seeds, success rate "
                     f"{_fmt(d.get('success_rate'), '{:.2f}')})")
    max_z = d.get("max_z") or {}
    for name, v in (d.get("sup_gap") or {}).items():
        z = f" (max |z| {_fmt(max_z[name], '{:.2f}')})" if name in max_z else ""
        lines.append(f"sup |theory − simulation| of {name}: {_fmt(v)}{z}")
    return lines


# ============================================================================ command handlers
def _cmd_demo(args, echo: Echo) -> int:
    from .demo import run_demo

    before = torch.get_num_threads()
    if not getattr(args, "threads", None):
        # The demo's tensors are small (64×64 FFTs, 2000×500 matrices): extra intra-op threads only add
        # synchronisation, which on a busy machine costs several times the work itself.
        torch.set_num_threads(1)
    try:
        run_demo(out=args.out, quick=args.quick, device=resolve_device(args.device), seed=args.seed,
                 image=args.image, echo=echo)
    finally:
        torch.set_num_threads(before)
    return 0


def _problem_kwargs(args) -> Dict[str, Any]:
    return dict(model=args.model, size=args.size, masks=args.masks, mask=args.mask_type,
                oversampling=args.oversampling, layers=args.layers, delta=args.delta, noise=args.noise,
                phase_image=args.phase_image, seed=args.seed, dtype=_dtype(args.dtype),
                device=resolve_device(args.device))


def _cmd_simulate(args, echo: Echo) -> int:
    prob = simulate_problem(args.image, args.out, **_problem_kwargs(args))
    op = prob["op"]
    echo.result(f"simulated {op.m} intensities of a {tuple(prob['x_true'].shape)} object "
                f"({type(op).__name__}, δ = {op.delta:g}, noise {args.noise or 'none'})")
    echo(f"wrote {args.out}/measurements.pt, {args.out}/operator.pt, {args.out}/truth.png; "
         f"reconstruct with: phasetorch reconstruct --measurements {args.out}/measurements.pt "
         f"--operator {args.out}/operator.pt --out DIR")
    return 0


def _cmd_reconstruct(args, echo: Echo) -> int:
    device = resolve_device(args.device)
    from_files = args.measurements is not None or args.operator is not None
    if from_files:
        if args.image is not None:
            raise UsageError("give either IMAGE or --measurements/--operator, not both")
        if args.measurements is None or args.operator is None:
            raise UsageError("--measurements and --operator go together (both files written by phasetorch simulate)")
        from ..physics import load_operator

        op = load_operator(args.operator, map_location=device)
        data = pio.load_measurements(args.measurements, operator=op)
        display = data["meta"].get("display") or ("complex" if (data["x_true"] is not None and
                                                                data["x_true"].is_complex()) else "amplitude")
        problem = {"op": op, "y": data["y"], "x_true": data["x_true"], "support": data["support"],
                   "nonnegative": data["nonnegative"], "display": display, "meta": data["meta"]}
    else:
        if args.image is None:
            raise UsageError("give an IMAGE (PNG/JPEG or .pt object), or --measurements and --operator")
        problem = simulate_problem(args.image, None, **_problem_kwargs(args))
    algorithm = args.algorithm
    support = problem["support"] if (algorithm in PROJECTION_ALGORITHMS or
                                      (algorithm is None and problem["support"] is not None)) else None
    iters = args.iters
    if iters is None:
        projection = algorithm in PROJECTION_ALGORITHMS or (algorithm is None and problem["support"] is not None)
        iters = 1000 if projection else 300
    summary = reconstruction_job(problem["op"], problem["y"], args.out, x_true=problem["x_true"],
                                 algorithm=algorithm, init=args.init, iters=iters, step=args.step,
                                 preprocessing=_cli_preprocessing(args.preprocessing, algorithm, args.init,
                                                                  problem["op"]), support=support,
                                 nonnegative=bool(problem["nonnegative"]) and support is not None, seed=args.seed,
                                 display=problem["display"], progress=not args.quiet, echo=echo,
                                 meta=problem["meta"])
    _report_reconstruction(summary, args.out, echo)
    return 0


def _cmd_train(args, echo: Echo) -> int:
    device = resolve_device(args.device)
    echo(f"simulating {args.algorithm} (λ = {args.l2:g}) from a spectral start: δ = {args.delta:g}, d = {args.dim}, "
         f"{args.seeds} seeds, {args.steps} steps")
    log = train_job(args.out, delta=args.delta, dim=args.dim, seeds=args.seeds, steps=args.steps, l2=args.l2,
                    step=args.step, preprocessing=args.preprocessing, noise=args.noise, field=args.field,
                    seed=args.seed, device=device, progress=not args.quiet)
    if _has_column(log, "overlap"):
        m, se = _mean_se(_column(log, "overlap")[-1])
        echo.result(f"result: final overlap {m:.4f} ± {se:.4f} (mean ± SE over {args.seeds} seeds)")
    echo(f"wrote {args.out}/log.json and {args.out}/log.csv")
    return 0


def _cmd_theory(args, echo: Echo) -> int:
    from ..logs import TrainingLog

    logs = [TrainingLog.from_json(p) for p in _existing(args.logs or [], "log file")]
    cfg = dict(logs[0].config) if logs else {}

    def pick(name: str, value, *aliases):
        if value is not None:
            return value
        for key in (name,) + aliases:
            if key in cfg and cfg[key] is not None:
                return cfg[key]
        return None

    delta = pick("delta", args.delta)
    steps = pick("steps", args.steps, "max_iter")
    if delta is None or steps is None:
        raise UsageError("give --delta and --steps, or --logs LOG.json whose config holds them")
    l2 = pick("l2", args.l2, "lambda")
    step = pick("step", args.step, "eta")
    preprocessing = pick("preprocessing", args.preprocessing) or "optimal"
    noise = float(pick("noise", args.noise) or 0.0)
    field = cfg.get("field", "real")
    if field != "real":
        raise CLIError(f"the log was made with field={field!r}; the DMFT covers the real field only "
                       f"(phasetorch train --field real)")
    if isinstance(step, (list, dict)):
        raise CLIError("the log was made with a step schedule; pass a constant --step for the theory")
    _check_recoverable(float(delta), preprocessing, noise)
    echo(f"solving the DMFT: δ = {float(delta):g}, λ = {float(l2 or 0):g}, η = {step if step is not None else 'default'}, "
         f"{int(steps)} steps, {args.samples} samples × {args.replicates} replicates")
    res = theory_job(args.out, delta=float(delta), steps=int(steps), l2=float(l2 or 0.0),
                     step=None if step is None else float(step), preprocessing=preprocessing, noise=noise,
                     samples=args.samples, replicates=args.replicates, seed=args.seed, logs=logs,
                     device=resolve_device(args.device), progress=not args.quiet)
    if res["comparison"] is not None:
        for line in sup_gap_lines(res["comparison"]):
            echo.result(line)
    else:
        echo.result("solved (no --logs given, so no gap to report)")
    echo(f"wrote {', '.join(res['files'])}")
    return 0


def _check_recoverable(delta: float, preprocessing: str, noise: float = 0.0) -> None:
    """Refuse a theory request below the spectral weak-recovery threshold (the start carries no signal)."""
    from ..theory import spectral_threshold

    try:
        dc = float(spectral_threshold(preprocessing, field="real", noise=noise))
    except ValueError:
        return  # no closed-form threshold (rank-based preprocessing): let the solver decide
    if delta <= dc:
        raise CLIError(f"δ = {delta:g} is at or below the spectral weak-recovery threshold δ_c = {dc:.4g} of "
                       f"'{preprocessing}': the spectral start is uninformative there; use --delta above {dc:.4g}")


def _existing(paths: Sequence[str], what: str) -> List[str]:
    for p in paths:
        if not Path(p).is_file():
            raise CLIError(f"{what} {p!r} does not exist")
    return list(paths)


def _cmd_sweep(args, echo: Echo) -> int:
    from . import sweep as sw

    deltas = sw.parse_grid(args.deltas)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad or not algorithms:
        raise UsageError(f"unknown algorithm(s) {', '.join(bad) or '(none)'} in --algorithms; "
                         f"choose from {', '.join(ALGORITHMS)}")
    device = resolve_device(args.device)
    echo(f"sweep: {len(algorithms)} algorithm(s) × {len(deltas)} δ values × {args.trials} trials, "
         f"n = {args.dim}, {args.field}")
    results = sw.run_sweep(args.out, deltas, algorithms, trials=args.trials, dim=args.dim, field=args.field,
                           tol=args.tol, max_iter=args.iters, init=args.init, preprocessing=args.preprocessing,
                           dtype=args.dtype, seed=args.seed, device=str(device), progress=not args.quiet,
                           log=echo)
    fig_path = sw.write_figure(results, args.out, sw.reference_lines(args.field, args.preprocessing))
    for line in sw.summary_lines(results, algorithms):
        echo.result(line)
    echo(f"wrote {results.path} and {fig_path}")
    return 0


def benchmark_script() -> Path:
    """``scripts/benchmark.py`` of the source repository this package was loaded from."""
    return pio.REPO_ROOT / "scripts" / "benchmark.py"


def _cmd_bench(argv: Sequence[str], echo: Echo) -> int:
    script = benchmark_script()
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
    return 0


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    top = _Parser(add_help=False)
    top.add_argument("--quiet", "-q", action="store_true", help="no progress bars or chatter (results still print)")
    top.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    top.add_argument("--threads", type=_positive_int, default=None,
                     help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")
    # The subcommands repeat the two flags with SUPPRESS defaults, so that `phasetorch --quiet demo`
    # is not undone by the subparser's own default.
    common = _Parser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or chatter (results still print)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    common.add_argument("--threads", type=_positive_int, default=argparse.SUPPRESS,
                        help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")

    parser = _Parser(prog="phasetorch", description="Phase retrieval in PyTorch: reconstruct images from intensity "
                     "measurements, simulate, and compare with the DMFT theory.", parents=[top])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # demo ------------------------------------------------------------------------------------------
    p = sub.add_parser("demo", parents=[common], help="the main job on bundled data (under a minute on a laptop CPU)",
                       description="Reconstruct a bundled image from simulated coded-diffraction intensities with "
                       "Poisson noise, and overlay the DMFT prediction on a spectral-initialised regularized-WF "
                       "simulation. Writes PNGs and JSON into --out. Runs single-threaded unless --threads is "
                       "given (its tensors are small).")
    p.add_argument("--out", default="demo_output", help="output directory (default: demo_output)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--image", default=None, help="use this image instead of the bundled Grace Hopper photo")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=_cmd_demo)

    # problem options shared by reconstruct and simulate ---------------------------------------------------
    problem = _Parser(add_help=False)
    g = problem.add_argument_group("measurement model")
    g.add_argument("--model", choices=MODELS, default="cdp",
                   help="cdp: coded diffraction (default); gaussian: dense complex Gaussian; structured: "
                        "random-phase layers + FFTs; fourier: oversampled Fourier magnitudes (CDI)")
    g.add_argument("--masks", type=_positive_int, default=4, help="cdp: number L of masks (δ = L; default 4)")
    g.add_argument("--mask-type", default="octanary", choices=("octanary", "binary", "uniform", "gaussian"),
                   help="cdp: mask family (default octanary)")
    g.add_argument("--oversampling", type=_positive_int, default=2,
                   help="structured/fourier: zero-padding factor per axis (default 2)")
    g.add_argument("--layers", type=_positive_int, default=2, help="structured: number of layers (default 2)")
    g.add_argument("--delta", type=_positive_float, default=6.0, help="gaussian: m/n (default 6)")
    g.add_argument("--noise", default="none", help="none (default), poisson:PHOTONS (expected total photon count "
                   "per pattern set, e.g. poisson:1e7) or gaussian:SIGMA (std relative to the mean intensity)")
    g.add_argument("--size", type=_size, default=None, help="resize the image: 64 (centre-crop to a square, then "
                   f"64×64) or 64x48; default {DEFAULT_IMAGE_SIZE} for images, the stored size for .pt objects")
    g.add_argument("--phase-image", action="store_true",
                   help="use the image p as the phase of a unit-amplitude object exp(iπp)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision (default float32)")
    g.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the operator, noise and solver (default 0)")

    # simulate ------------------------------------------------------------------------------------------
    p = sub.add_parser("simulate", parents=[common, problem], help="image → measurements.pt + operator.pt",
                       description="Simulate intensity measurements of an image and save them with the operator "
                       "(the file pair 'phasetorch reconstruct --measurements --operator' reads; format in "
                       "phasetorch.io).")
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG image or .pt object (e.g. data/complex_object.pt)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=_cmd_simulate)

    # reconstruct ---------------------------------------------------------------------------------------
    p = sub.add_parser("reconstruct", parents=[common, problem], help="reconstruct an image or saved measurements",
                       description="Simulate measurements of IMAGE and reconstruct it, or reconstruct from saved "
                       "--measurements and --operator files. Writes truth.png, init.png, reconstruction.png, "
                       "error.png, grid.png, convergence.png, log.json, summary.json and prints the final "
                       "relative error and PSNR.")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="PNG/JPEG image or .pt object")
    p.add_argument("--measurements", metavar="FILE.pt", help="saved intensities (from phasetorch simulate)")
    p.add_argument("--operator", metavar="FILE.pt", help="saved operator (from phasetorch simulate / save_operator)")
    s = p.add_argument_group("solver")
    s.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                   help="default: raf, or hio (with the object's support and non-negativity) for --model fourier")
    s.add_argument("--init", default=None, help="initialisation (library default: spectral; e.g. random)")
    s.add_argument("--preprocessing", default=None,
                   help="spectral preprocessing of the start: optimal (default; robust on images), preset (the "
                   "algorithm's paper default, built for Gaussian data), or a name (trimmed, weighted, …)")
    s.add_argument("--iters", type=_positive_int, default=None,
                   help="maximum iterations (default 300; 1000 for gs/hio, which need many more)")
    s.add_argument("--step", type=_positive_float, default=None, help="constant step μ (μ/‖x₀‖²); default: the "
                   "algorithm's schedule")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=_cmd_reconstruct)

    # train ---------------------------------------------------------------------------------------------
    p = sub.add_parser("train", parents=[common], help="multi-seed Gaussian simulation in the theory's units",
                       description="Run spectral-initialised gradient descent (regularized WF with --l2 > 0) on "
                       "real Gaussian phase retrieval with ‖x*‖ = 1, batched over seeds; writes log.json and "
                       "log.csv (overlap, norm, loss per iteration and seed).")
    p.add_argument("--delta", type=_positive_float, required=True, help="samples per dimension δ = m/n")
    p.add_argument("--dim", type=_positive_int, required=True, help="dimension n of the signal")
    p.add_argument("--seeds", type=_positive_int, default=8, help="number of independent runs (default 8)")
    p.add_argument("--steps", type=_positive_int, required=True, help="number of GD steps")
    p.add_argument("--algorithm", choices=("wf",), default="wf",
                   help="wf: gradient descent on the intensity loss, the algorithm the theory describes")
    p.add_argument("--l2", type=_nonneg_float, default=0.0, help="ridge λ (regularized WF; default 0)")
    p.add_argument("--noise", type=_nonneg_float, default=0.0,
                   help="σ of additive Gaussian noise on the intensities, y = (a·x*)² + σε (default 0)")
    p.add_argument("--step", type=_positive_float, default=None, help="constant step η (default: the library's)")
    p.add_argument("--preprocessing", default="optimal", help="spectral preprocessing (default optimal)")
    p.add_argument("--field", choices=("real", "complex"), default="real", help="default real (the theory's)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="first seed (seeds S, S+1, …; default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=_cmd_train)

    # theory --------------------------------------------------------------------------------------------
    p = sub.add_parser("theory", parents=[common], help="solve the DMFT and overlay it on simulation logs",
                       description="Solve the DMFT of spectral-initialised (regularized) WF on real Gaussian phase "
                       "retrieval; write prediction.json and overlay.png; with --logs, print the sup gap between "
                       "theory and simulation. Parameters not given default to the first log's config.")
    p.add_argument("--delta", type=_positive_float, default=None, help="δ = m/n")
    p.add_argument("--steps", type=_positive_int, default=None, help="number of GD steps")
    p.add_argument("--l2", type=_nonneg_float, default=None, help="ridge λ (default 0 or the log's)")
    p.add_argument("--step", type=_positive_float, default=None, help="constant step η (default the library's "
                   "or the log's)")
    p.add_argument("--preprocessing", default=None, help="spectral preprocessing (default optimal or the log's)")
    p.add_argument("--noise", type=_nonneg_float, default=None, help="σ of the additive intensity noise "
                   "(default 0 or the log's)")
    p.add_argument("--samples", type=_positive_int, default=50_000, help="Monte-Carlo samples (default 5e4)")
    p.add_argument("--replicates", type=_positive_int, default=4, help="independent replicates (default 4)")
    p.add_argument("--logs", nargs="+", metavar="LOG.json", default=None, help="simulation logs to compare with")
    p.add_argument("--device", type=_device, default="cpu", help="where the Monte-Carlo population lives: cpu "
                   "(default), cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="Monte-Carlo seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=_cmd_theory)

    # sweep ---------------------------------------------------------------------------------------------
    p = sub.add_parser("sweep", parents=[common], help="success rate vs δ (phase transition), resumable",
                       description="Empirical success rate (relative error < --tol) versus δ = m/n on Gaussian "
                       "problems, per algorithm, with the theory thresholds drawn. Results go to OUT/results.json "
                       "after every cell; re-running skips finished cells.")
    p.add_argument("--deltas", default="1:8:0.5", help="start:stop:step (stop included) or a comma list "
                   "(default 1:8:0.5)")
    p.add_argument("--algorithms", default="wf,raf", help=f"comma list from {','.join(ALGORITHMS)} (default wf,raf)")
    p.add_argument("--trials", type=_positive_int, default=10, help="problems per cell (default 10)")
    p.add_argument("--dim", type=_positive_int, default=64, help="n, the signal dimension (default 64)")
    p.add_argument("--field", choices=("real", "complex"), default="complex", help="default complex")
    p.add_argument("--tol", type=_positive_float, default=1e-5, help="success threshold (default 1e-5)")
    p.add_argument("--iters", type=_positive_int, default=1000, help="maximum iterations (default 1000)")
    p.add_argument("--init", default="spectral", help="initialisation (default spectral)")
    p.add_argument("--preprocessing", default=None, help="spectral preprocessing (default: the algorithm's)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="precision (default float64)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="base seed (default 0)")
    p.add_argument("--out", required=True, help="output directory (resumes what is there)")
    p.set_defaults(handler=_cmd_sweep)

    # bench ---------------------------------------------------------------------------------------------
    p = sub.add_parser("bench", help="run scripts/benchmark.py with the given arguments",
                       description="Run the source repository's scripts/benchmark.py; every argument after "
                       "'bench' is passed to it ('phasetorch bench --help' also shows its options).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for scripts/benchmark.py")
    p.set_defaults(handler=None)
    return parser


def _version() -> str:
    from .. import __version__

    return f"phasetorch {__version__}"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, KeyError):
        text = f"missing key {text}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)


def _job_errors() -> Tuple[type, ...]:
    errs: List[type] = [CLIError, ValueError, TypeError, OSError, RuntimeError, KeyError, ArithmeticError]
    try:
        from ..errors import DivergenceError

        errs.append(DivergenceError)
    except ImportError:  # the errors module is optional for the CLI
        pass
    return tuple(errs)


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
    except _job_errors() as exc:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 success, 1 job failure, 2 usage error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("PHASETORCH_DEBUG", "") not in ("", "0")
    # `bench` passes everything after it to the script untouched (including --help).
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "bench":
        quiet = "--quiet" in argv[:first] or "-q" in argv[:first]
        return _guarded(lambda: _cmd_bench(argv[first + 1:], Echo(quiet)), debug or "--debug" in argv[:first])
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
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    echo = Echo(getattr(args, "quiet", False))
    return _guarded(lambda: args.handler(args, echo), debug or getattr(args, "debug", False))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
