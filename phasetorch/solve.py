r"""``reconstruct``: one entry point for every phase-retrieval algorithm, batched, logged, reproducible.

    rec = phasetorch.reconstruct(op, y)            # algorithm="auto"
    rec.x, rec.log["loss"], rec.converged, rec.iterations

The algorithms are the presets of :mod:`phasetorch.optim.presets` (auto, wf, twf, rwf, taf, raf,
af, gs, hio, lbfgs). Everything is per sample: a batch of B intensity vectors (leading dimensions of
``y``) is B independent problems solved together, each with its own step sizes, line searches,
stopping test and iteration count; a batch gives what B single calls give (up to floating-point
summation order, ~1e-12 in float64).

**Stopping** uses the measurements only, never ``x_true``: a sample stops at the first t ≥ 1 with

    ρ_t ≤ tol      or      |ρ_t − ρ_{t−1}| ≤ tol·ρ_{t−1},      ρ_t = ‖|Ax_t| − √y₊‖ / ‖√y₊‖,

i.e. when it fits the data to ``tol`` (noiseless data) or when the relative amplitude residual has
stagnated (noisy data, regularised objectives, or the floating-point floor). ``tol`` is raised to
8ε of the working dtype; ``tol=0`` disables early stopping (exactly ``max_iter`` iterations, what
the theory comparisons use). A stopped sample is frozen (its x no longer changes; its later log
records repeat its final values with step 0).

**Status** (per sample, :class:`Status`, in ``rec.status`` and ``rec.log.config["status"]``):
``converged`` — the stopping test above held (the data fit to ``tol``, or the residual stagnated
at a point that still moves or whose gradient has fallen below 10⁻⁵ of its initial norm);
``stalled`` — the residual stagnated because the iterate stopped moving (a failed line search)
while the gradient is still large; ``diverged`` — see below;
``max_iter`` — the budget (or a callback) ended the run first.

**Divergence** (per sample). A running sample whose loss becomes non-finite or exceeds its initial
value by more than 10⁶ × |initial| is frozen at its last finite iterate, marked ``diverged``, and
the others run on; a warning names the knob to turn. :class:`phasetorch.errors.DivergenceError`
(same message; ``log`` and ``x`` attributes hold the run) is raised when every sample diverged, or at
the first divergence with ``on_divergence="raise"``.

**Blocks** (:class:`Driver`). The host reads the device every ``sync_every`` = k iterations; on CUDA a
block of k iterations is captured as a CUDA graph and replayed where the algorithm's
:meth:`~phasetorch.optim.engine.Algorithm.step_key` says its iterations are alike
(:class:`CapturedBlocks`, :mod:`phasetorch.replay`; ``PHASETORCH_GRAPHS=0`` turns it off). On a CPU
with a dense operator the gradient presets and L-BFGS run the loop compiled
(:mod:`phasetorch.optim.compiled`). All three give the plain loop's results.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

from . import replay
from .allocator import retaining
from .errors import DivergenceError
from .init.spectral import DEFAULT_MAX_ITER, DEFAULT_TOL, spectral_init
from .logs import TrainingLog
from .losses import Evaluation, check_intensities
from .physics import MeasurementModel, resolve_model
from .physics.base import MeasurementOperator
from .optim.compiled import BLOCK, BLOCK_SECONDS, FIRST_BLOCK, GradientBlock
from .optim.engine import Algorithm, StepContext
from .optim.presets import Preset, Setting, get_preset
from .optim.projections import Constraint
from .tensors import check_int, check_number, default_sync_every, dtype_name, inner, make_generator, norm2, \
    real_dtype_of, where_sample

__all__ = ["reconstruct", "Reconstruction", "Status", "default_tol", "truth_metrics", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 1e6
DEFAULT_TOL = 1e-10
#: a divergence within this many iterations of a spectral start also suggests a better preprocessing
EARLY_DIVERGENCE = 5
#: a sample that stopped moving is "stalled" (not converged) while ‖∇f‖ > this × ‖∇f(x₀)‖
STALL_GRADIENT = 1e-5


class Status(IntEnum):
    """How a sample's run ended (``rec.status`` holds these codes as int8)."""

    RUNNING = 0
    CONVERGED = 1
    STALLED = 2
    DIVERGED = 3
    MAX_ITER = 4

    @property
    def label(self) -> str:
        return self.name.lower()


def status_names(codes: torch.Tensor) -> Any:
    """Nested lists of status names (``"converged"``, …) for a tensor of codes."""
    flat = [Status(int(c)).label for c in codes.reshape(-1).tolist()]
    if codes.dim() == 0:
        return flat[0]
    out: Any = flat
    for size in reversed(codes.shape[1:]):
        out = [out[i:i + size] for i in range(0, len(out), size)]
    return out


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`.

    Attributes
    ----------
    x : the estimate, shape ``(*batch, *op.signal_shape)`` (global phase/sign arbitrary); a diverged
        sample holds its last finite iterate.
    log : the :class:`~phasetorch.logs.TrainingLog` (``log.config`` describes the run).
    status : int8 tensor of the batch shape, :class:`Status` codes per sample.
    converged : bool tensor — ``status == Status.CONVERGED``.
    iterations : int64 tensor — iterations each sample ran (to its last kept iterate).
    x0 : the initial point actually used.
    algorithm : the preset name.
    """

    x: torch.Tensor
    log: TrainingLog
    converged: torch.Tensor
    iterations: torch.Tensor
    x0: torch.Tensor
    algorithm: str
    status: Optional[torch.Tensor] = None

    @property
    def diverged(self) -> torch.Tensor:
        return self.status == Status.DIVERGED

    @property
    def stalled(self) -> torch.Tensor:
        return self.status == Status.STALLED

    def status_names(self) -> Any:
        """The status of every sample as names (nested lists of the batch shape)."""
        return status_names(self.status)

    @property
    def residual(self) -> torch.Tensor:
        r"""The final data misfit per sample (batch shape, float64): the log's ``residual`` column,
        ‖|A x̂| − √y‖ / ‖√y‖ (relative amplitude residual, unitless; conventions.md).

        ``converged`` says the *iteration* reached its fixed point; whether that point explains the
        data is this number. Noiseless, consistent data end at ≤ ``tol``; noisy data at roughly the
        noise's relative amplitude (Gaussian relative σ: ≈ σ/2 + O(σ²)); a stationary point with a
        large residual on data you believe noiseless is a spurious local minimum or data no signal
        explains (wrong operator, corrupted y): try another start (``seed``/``init``) or check the
        data. The CLI prints it next to the status.
        """
        col = self.log["residual"]
        if col.shape[0] == 0:
            return torch.full(tuple(self.status.shape), float("nan"), dtype=torch.float64)
        return col[-1].reshape(self.status.shape)


def default_tol(dtype: torch.dtype, tol: Optional[float] = None) -> float:
    """The stopping tolerance in force: ``tol`` (default 1e-10) raised to 8ε of ``dtype``; 0 stays 0."""
    tol = DEFAULT_TOL if tol is None else float(tol)
    if tol <= 0:
        return 0.0
    return max(tol, 8 * torch.finfo(real_dtype_of(dtype)).eps)


# ---------------------------------------------------------------------------- validation helpers
def signal_tensor(t, op: MeasurementOperator, batch: tuple, B: int, name: str) -> torch.Tensor:
    """Validate a signal-shaped tensor (unbatched or with the batch shape of y) → (B, *signal)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {tuple(op.signal_shape)} or "
                         f"{(*batch, *op.signal_shape)}, got {type(t).__name__}")
    k = len(op.signal_shape)
    if tuple(t.shape[t.dim() - k:]) != tuple(op.signal_shape) or t.dim() < k:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(op.signal_shape)} or "
                         f"{(*batch, *op.signal_shape)} (the operator's signal shape, optionally with y's batch shape)")
    tb = tuple(t.shape[: t.dim() - k])
    if tb not in ((), batch):
        raise ValueError(f"{name} has batch shape {tb} but y has batch shape {batch}; "
                         f"pass one signal or one per sample")
    if t.device != op.device:
        raise ValueError(f"{name} is on {t.device} but the operator is on {op.device}; move it with .to({op.device!s})")
    if not (t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{name} must be a floating-point or complex tensor, got {t.dtype}")
    if real_dtype_of(t.dtype) != op.real_dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but the operator works in {op.real_dtype}; convert it with "
                         f".to({op.signal_dtype if t.is_complex() else op.real_dtype})")
    return t.detach().expand(*batch, *op.signal_shape).reshape(B, *op.signal_shape)


def to_real_signal(x: torch.Tensor) -> torch.Tensor:
    """Project a complex vector onto the reals after removing its best global phase (per sample)."""
    if not x.is_complex():
        return x
    flat = x.reshape(x.shape[0], -1)
    s = (flat * flat).sum(-1)                      # Σ x_j²: the phase 2φ that makes x e^{-iφ} most real
    phase = torch.where(s.abs() > 0, s / s.abs().clamp_min(torch.finfo(s.real.dtype).tiny), torch.ones_like(s))
    rot = phase.sqrt().conj()
    return (flat * rot.unsqueeze(-1)).real.reshape(x.shape[0], *x.shape[1:])


def make_constraint(support, op, batch, B, real_signal: bool, nonnegative: bool) -> Constraint:
    """The object constraint (real part for a real signal of a complex operator, support, x ≥ 0)."""
    sig = tuple(op.signal_shape)
    sup = None
    if support is not None:
        if isinstance(support, (str, bytes)) or not isinstance(support, (torch.Tensor, list, tuple)):
            raise ValueError(f"support must be a boolean mask tensor of shape {sig} (or (*batch, *signal_shape)), "
                             f"got {type(support).__name__}")
        try:
            sup_t = torch.as_tensor(support, device=op.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"support must be a boolean mask of shape {sig}: {err}") from None
        if sup_t.dtype != torch.bool:
            if not ((sup_t == 0) | (sup_t == 1)).all():
                raise ValueError("support must be a boolean (or 0/1) mask")
            sup_t = sup_t.to(torch.bool)
        if tuple(sup_t.shape) not in (sig, (*batch, *sig)):
            raise ValueError(f"support has shape {tuple(sup_t.shape)}; expected {sig} or {(*batch, *sig)}")
        if not sup_t.any():
            raise ValueError("support is empty (all False); nothing can be recovered")
        sup = sup_t.expand(*batch, *sig).reshape(B, *sig)
    return Constraint(real_signal and op.is_complex, sup, nonnegative)


def preset_options(preset: Preset, complex_signal: bool, options: dict) -> dict:
    """The preset's defaults updated with the user's ``**options`` (unknown names refused)."""
    opts = preset.defaults(complex_signal)
    unknown = set(options) - set(opts)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for algorithm '{preset.name}'; "
                         f"valid: {sorted(opts) or 'none'}")
    opts.update(options)
    return opts


@dataclass
class Start:
    """The initial point and how it was made."""

    x0: torch.Tensor
    name: str
    spectral_options: Optional[dict] = None
    #: the spectral start's diagnostics (:class:`~phasetorch.init.spectral.SpectralInfo`), None for other starts
    info: Any = None

    def summary(self, batch) -> Optional[dict]:
        """The spectral start per sample (nested lists of the batch shape): products with D, whether the
        eigensolver reached its tolerance, its final relative residual, the eigenvalue; None for other starts."""
        if self.info is None:
            return None
        i = self.info
        shape = tuple(batch)
        return {"solver": i.solver, "matvecs": i.matvecs.reshape(shape).tolist(),
                "converged": i.converged.reshape(shape).tolist(),
                "residual": i.residual.to(torch.float64).reshape(shape).tolist(),
                "eigenvalue": i.eigenvalue.to(torch.float64).reshape(shape).tolist()}

    def warn_unconverged(self, kw: dict) -> None:
        """Warn, naming the samples and the knobs, when the eigensolver stopped at its product budget
        before its tolerance: the start is used as it is (usually still a good one), but it is not the
        eigenvector the preprocessing defines to that tolerance."""
        if self.info is None:
            return
        bad = (~self.info.converged.reshape(-1)).nonzero().reshape(-1).tolist()
        if not bad:
            return
        res = self.info.residual.reshape(-1)[bad].to(torch.float64)
        which = ", ".join(str(b) for b in bad[:8]) + (", …" if len(bad) > 8 else "")
        budget = kw.get("max_iter") or DEFAULT_MAX_ITER.get(self.info.solver, "its")
        warnings.warn(f"the spectral start of sample(s) {which} stopped at its budget of {budget} "
                      f"products with D before its tolerance tol={kw.get('tol', DEFAULT_TOL):g} (relative residual "
                      f"{float(res.min()):.2g}..{float(res.max()):.2g}); it is used as it is. To finish it, raise "
                      f"spectral_options={{'max_iter': ...}} or the Lanczos basis {{'krylov_dim': ...}}, or accept a "
                      f"looser {{'tol': ...}}; log.config['spectral_start'] has the numbers", stacklevel=5)


def initial_point(op, y_flat, preset: Preset, init, preprocessing, seed, generator, spectral_options,
                  real_signal: bool, constraint: Constraint, batch, B, progress: bool = False,
                  sync_every: Optional[int] = None) -> Start:
    """x₀ from ``init`` ("spectral", "random" or a tensor), projected and scaled as documented in :func:`reconstruct`."""
    if spectral_options is not None and not isinstance(spectral_options, dict):
        raise ValueError(f"spectral_options must be a dict of spectral_init keyword arguments, got "
                         f"{type(spectral_options).__name__}")
    if not isinstance(init, torch.Tensor) and init not in ("spectral", "random"):
        raise ValueError(f"init must be 'spectral', 'random' or a tensor, got {init!r}")
    if init != "spectral" and preprocessing is not None:
        raise ValueError("preprocessing= applies to init='spectral' only")
    spec_kw = None
    if isinstance(init, torch.Tensor):
        start = Start(signal_tensor(init, op, batch, B, "init").clone(), "tensor")
    elif init == "spectral":
        kw = {**preset.spectral, **(spectral_options or {})}
        spec_kw = dict(kw)
        kw.setdefault("progress", progress)
        kw.setdefault("sync_every", sync_every)        # the spectral start reads as seldom as the loop
        for k in ("preprocessing", "seed", "generator", "return_info", "real_signal"):
            if k in kw:
                raise ValueError(f"spectral_options may not set {k!r}; use reconstruct's own argument")
        if op.is_complex and real_signal:
            kw["real_signal"] = True
        pre = default_preprocessing(preset, op) if preprocessing is None else preprocessing
        x0, info = spectral_init(op, y_flat, preprocessing=pre, generator=make_generator(seed, generator),
                                 return_info=True, **kw)
        start = Start(x0, "spectral", spec_kw, info)
        start.warn_unconverged(kw)
    else:
        g = make_generator(seed, generator)
        psi = y_flat.clamp_min(0).sqrt()
        full = (B, *op.full_measurement_shape)          # drawn for all measurements, so a sharded run draws the same
        if op.is_complex:
            phases = torch.rand(full, generator=g, dtype=torch.float64).to(op.device, op.real_dtype)
            b = torch.polar(psi, 2 * math.pi * op.local_measurements(phases))
        else:
            signs = torch.randint(0, 2, full, generator=g).to(op.device, op.real_dtype) * 2 - 1
            b = psi * op.local_measurements(signs)
        start = Start(op.adjoint(b), "random")
    x0 = start.x0
    if real_signal:
        x0 = to_real_signal(x0)
    elif op.is_complex and not x0.is_complex():
        x0 = x0.to(op.signal_dtype)
    if not constraint.trivial or start.name == "random":
        target = (op.measurement_mean(y_flat.clamp_min(0)) / op.entry_energy).sqrt()
        x0 = constraint(x0)
        nx = norm2(x0).sqrt()
        if start.name != "tensor":
            fac = torch.where(nx > 0, target / nx.clamp_min(torch.finfo(nx.dtype).tiny), torch.ones_like(nx))
            x0 = x0 * fac.reshape(B, *([1] * len(op.signal_shape))).to(x0.dtype)
    if not torch.isfinite(x0).all():
        raise ValueError("the initial point contains NaN or inf")
    zero = norm2(x0) == 0
    if bool(zero.any()):
        idx = zero.nonzero().reshape(-1).tolist()[:8]
        raise ValueError(f"the initial point is zero for sample(s) {idx}: every loss's gradient vanishes at x = 0, so no "
                         f"algorithm can leave it; start from init='spectral' (the default), init='random' or a non-zero "
                         f"tensor (all-zero data y are fitted by x = 0 itself)")
    start.x0 = x0
    return start


def measured_intensities(model: MeasurementModel, y: torch.Tensor):
    """(linear operator, intensities) of a model's observations ``y`` (validated)."""
    if not model.link.modulus:
        raise ValueError(f"reconstruct solves phase retrieval, y = f(|Ax|); the link {model.link.name!r} is not a "
                         f"function of |Ax|. Fit such a single-index model with a loss of your own and a "
                         f"phasetorch.optim optimizer (see the README's 'your own loop'), or use phasetorch.theory")
    check_intensities(model.operator, y, who="y (the observations)")
    return model.operator, model.link.intensity_of(y)


def default_preprocessing(preset: Preset, op: MeasurementOperator):
    """The preset's (paper's) spectral preprocessing on i.i.d. Gaussian designs, for which it was built;
    on other operators (coded diffraction, Fourier, user matrices) the preset's ``preprocessing_other``:
    ``optimal`` (Luo, Alghamdi & Lu 2019) for the starts that localise on a few large y_i there and
    diverge or stall (identity, trimmed, RWF's truncation), the paper's own for the others."""
    return preset.start_for(op.gaussian_design)


def pre_name(preset: Preset, preprocessing, op: MeasurementOperator) -> Any:
    p = default_preprocessing(preset, op) if preprocessing is None else preprocessing
    return p if isinstance(p, str) else getattr(p, "__name__", repr(p))


# ---------------------------------------------------------------------------- the driver
@retaining(lambda op, *args, **kwargs: op.device)
def reconstruct(op: MeasurementOperator, y: torch.Tensor, algorithm: str = "auto",
                init: Union[str, torch.Tensor] = "spectral", preprocessing=None, max_iter: int = 1000,
                tol: Optional[float] = None, step=None, schedule: Optional[Callable[[int], float]] = None,
                l2: float = 0.0, x_true: Optional[torch.Tensor] = None, progress: bool = True,
                callback: Optional[Callable] = None, log_every: int = 1, real_signal: Optional[bool] = None,
                support: Optional[torch.Tensor] = None, nonnegative: bool = False, seed: Optional[int] = None,
                generator: Optional[torch.Generator] = None, spectral_options: Optional[dict] = None,
                on_divergence: str = "freeze", sync_every: Optional[int] = None, **options) -> Reconstruction:
    r"""Recover x from intensities y = |Ax|² (per sample, batched).

    Parameters
    ----------
    op : a :class:`~phasetorch.physics.MeasurementOperator`, or a
        :class:`~phasetorch.physics.MeasurementModel` whose link is a function of |Ax| (intensity,
        amplitude, noisy intensity; any noise): its observations are mapped to intensities with
        ``model.link.intensity_of`` and the algorithm runs on ``model.operator``.
    y : observations (intensities for an operator), shape ``(*batch, *op.measurement_shape)``, real,
        finite, same dtype/device as ``op``. Negative values (noise) are allowed; each loss documents
        how it treats them.
    algorithm : a preset name: ``auto`` (default: L-BFGS on the amplitude loss, then — for data it does
        not fit exactly, i.e. noisy data — L-BFGS on the quasi-likelihood whose variance law a + b·|Ax|²
        is fitted to the first stage's residuals, so additive and shot noise are both weighted
        right), ``wf``, ``twf``, ``rwf``, ``taf``, ``raf``, ``af``, ``gs``, ``hio``, ``lbfgs``
        (:mod:`phasetorch.optim.presets` lists losses, steps, inits, papers).
    init : ``"spectral"`` (:func:`phasetorch.init.spectral_init` with the preset's
        preprocessing), ``"random"`` (random phases back-projected, x₀ = Aᴴ(√y₊ e^{iφ}) rescaled to
        ‖x₀‖² = mean(y₊)/e), or a tensor (shape ``signal_shape`` or ``(*batch, *signal_shape)``,
        used as given; with a real signal a complex start is rotated by its best global phase and
        its real part kept). With ``support``/``nonnegative`` the start is projected onto the
        constraint (and, unless given as a tensor, rescaled to the norm the data imply).
    preprocessing : spectral preprocessing (a name or callable T(ŷ)). Default: the preset's (its paper's)
        on i.i.d. Gaussian operators (``op.gaussian_design``); on others ``"optimal"`` in place of the
        starts that fail there (``wf``, ``twf``, ``rwf``, ``gs``), the paper's for the rest.
    max_iter : iteration budget per sample (0 returns the initial point).
    tol : stopping tolerance (default 1e-10, raised to 8ε of the dtype; 0 disables early stopping).
    step : ``None`` (the preset's published rule), a number μ (constant step μ·s, s = 1/‖x₀‖² for
        the intensity loss of ``wf`` and 1 for the others), ``"armijo"``, ``"bb"``/``"bb1"``/``"bb2"``,
        ``"constant"`` (the preset's μ, without a ramp) or a :class:`~phasetorch.optim.steps.StepRule`.
        For ``wf`` with ``step=μ`` every iteration is exactly x_{t+1} = x_t − (μ/‖x₀‖²)∇f(x_t),
        f = (1/4m)Σ(|a_iᴴx|² − y_i)² + (λ/2)‖x‖² — the DMFT's gradient descent — as long as the
        loss does not rise; the gradient presets' ``safeguard`` option (on by default) halves a
        sample's step when it would (:class:`~phasetorch.optim.steps.Safeguarded`); pass
        ``safeguard=False`` for the plain iteration at any cost.
    schedule : a callable t ↦ μ_t (t = 1, 2, …), used as α_t = μ_t·s (exclusive with ``step``).
    l2 : λ ≥ 0, ridge term (λ/2)‖x‖² added to the loss (gradient algorithms only).
    x_true : optional ground truth; adds ``rel_error``, ``overlap``, ``inner`` to the log and the
        progress bar. Never used for stopping; does not change ``x``.
    progress : show a tqdm progress bar (loss, and relative error when ``x_true`` is given).
    callback : ``callback(t, x, info)`` after every iteration t ≥ 1, with x of shape
        ``(*batch, *signal)`` and ``info`` a dict of per-sample tensors (``loss``, ``residual``,
        ``active``); returning ``True`` stops the run.
    log_every : record every ``log_every`` iterations (iteration 0 and the last are always recorded).
    real_signal : restrict x to real vectors. Default: True for real operators, False for complex
        ones. For a complex operator ``True`` projects every iterate onto the reals.
    support : boolean mask (``signal_shape`` or ``(*batch, *signal_shape)``); iterates are
        projected onto it (projected gradient; the object constraint of GS/HIO).
    nonnegative : project onto x ≥ 0 (implies ``real_signal``).
    seed, generator : randomness of the initialisation (``spectral``: Lanczos start; ``random``:
        the phases). Same seed → bit-identical results on CPU.
    spectral_options : extra keyword arguments for :func:`phasetorch.init.spectral_init`
        (e.g. ``{"tol": 1e-3}``, ``{"solver": "power"}``, ``{"whiten": False}``, the Lanczos basis and restart
        ``{"krylov_dim": 32, "keep": 8, "keep_low": 8}``); they override the
        preset's own (only ``lbfgs`` has one: ``{"tol": 0.1}``).
    on_divergence : ``"freeze"`` (default: freeze a diverging sample, warn, raise only when every
        sample diverged) or ``"raise"`` (raise :class:`~phasetorch.errors.DivergenceError` at the first).
    sync_every : k, the iterations between the loop's host reads (default: 1 on a CPU, 16 on a GPU,
        :data:`phasetorch.tensors.SYNC_EVERY`). Every decision — stopping, status, divergence freezing, line-search
        acceptance — is taken on the device each iteration; only whether anything is left to run
        (and which samples diverged, for the messages) is read every k iterations. The result and
        the log do not depend on k (tested); a larger k runs up to k − 1 idle iterations at the end.
        On a CPU with a dense operator the gradient presets and L-BFGS run the same loop compiled
        (:mod:`phasetorch.optim.compiled`: up to 256 iterations per C call, each decision taken at its
        iteration, so k has nothing left to amortise there).
    **options : preset hyper-parameters — ``safeguard`` (every gradient preset: True); ``tau0``, ``mu_max`` (wf); ``alpha_lb``, ``alpha_ub``,
        ``alpha_h`` (twf); ``gamma`` (taf); ``beta`` (raf: reweighting; hio: feedback);
        ``cg_steps`` (gs, hio); ``memory``, ``loss`` (lbfgs: ``"amplitude"`` or ``"intensity"``).

    Returns
    -------
    :class:`Reconstruction` with ``x``, ``log``, ``status``, ``converged``, ``iterations``, ``x0``.
    """
    t_start = time.perf_counter()
    model = None if isinstance(op, MeasurementOperator) else resolve_model(op)
    op, y = measured_intensities(resolve_model(op) if model is None else model, y)
    preset = get_preset(algorithm)
    max_iter = check_int(max_iter, "max_iter", 0, 2 ** 62)        # iteration counters are int64 tensors
    log_every = check_int(log_every, "log_every", 1)
    if tol is not None:
        check_number(tol, "tol (≤ 0 disables early stopping)")
    tol_eff = default_tol(op.real_dtype, tol)
    l2 = check_number(l2, "l2", low=0.0)
    for name, flag in (("nonnegative", nonnegative), ("real_signal", real_signal)):
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if on_divergence not in ("freeze", "raise"):
        raise ValueError(f"on_divergence must be 'freeze' or 'raise', got {on_divergence!r}")
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable as callback(t, x, info)")
    sync_every = default_sync_every(op.device) if sync_every is None else check_int(sync_every, "sync_every", 1)

    k_meas = len(op.measurement_shape)
    batch = tuple(y.shape[: y.dim() - k_meas])
    B = math.prod(batch)
    if B == 0:
        raise ValueError(f"y has an empty batch (shape {tuple(y.shape)}): there is nothing to reconstruct")
    if nonnegative and real_signal is False:
        raise ValueError("nonnegative=True needs a real signal; drop real_signal=False")
    real_signal = bool((not op.is_complex) or bool(nonnegative) if real_signal is None else real_signal)
    complex_signal = op.is_complex and not real_signal
    constraint = make_constraint(support, op, batch, B, real_signal, bool(nonnegative))
    opts = preset_options(preset, complex_signal, options)
    y_flat = y.reshape(B, *op.measurement_shape)
    xt = None if x_true is None else signal_tensor(x_true, op, batch, B, "x_true")
    if xt is not None and bool((norm2(xt) == 0).any() | ~torch.isfinite(xt).all()):
        raise ValueError("x_true must be finite and non-zero for every sample (errors are relative to ‖x_true‖)")
    start = initial_point(op, y_flat, preset, init, preprocessing, seed, generator, spectral_options, real_signal,
                          constraint, batch, B, progress, sync_every)

    setting = Setting(op, y_flat.clamp_min(0).sqrt(), constraint, complex_signal)
    alg = preset.build(setting, opts, preset.step_mu(complex_signal, opts), step, schedule)
    if (step is not None or schedule is not None) and not alg.takes_step_rule:
        why = "its line search chooses the steps" if alg.needs_values else "it is a projection method"
        raise ValueError(f"'{preset.name}' does not take step=/schedule= ({why})")
    if l2 > 0 and not alg.takes_l2:
        raise ValueError(f"l2 applies to gradient algorithms; '{preset.name}' is a projection method (use wf, raf, …)")
    loss = preset.make_loss(op, l2, opts)
    config = {
        "algorithm": preset.name, "title": preset.title, "reference": preset.reference,
        "operator": op_config(op), "model": None if model is None else op_config(model), "n": op.n, "m": op.m, "delta": op.delta,
        "dtype": str(op.real_dtype).replace("torch.", ""), "batch_shape": list(batch),
        "init": start.name, "preprocessing": pre_name(preset, preprocessing, op) if start.name == "spectral" else None,
        "step": alg.describe(), "step_scale": "1/|x0|^2" if loss.scale_power == 2 else "1",
        "l2": l2, "loss": loss.hyperparameters(), "options": dict(opts), "tol": tol_eff, "max_iter": max_iter,
        "seed": seed, "spectral_options": start.spectral_options, "spectral_start": start.summary(batch),
        "log_every": log_every,
        "real_signal": real_signal, "support": constraint.support is not None, "nonnegative": bool(nonnegative),
        "on_divergence": on_divergence, "sync_every": sync_every,
    }
    data = loss.prepare(y_flat, warn=False)         # measured_intensities has warned already
    driver = Driver(op, preset.name, alg, loss, data, constraint, start.x0, xt, batch,
                    config, t_start, raise_on_divergence=on_divergence == "raise", sync_every=sync_every)
    rec = driver.run(max_iter, tol_eff, log_every, callback, progress)
    if preset.refine is None:
        return rec
    return refine(preset, setting, opts, loss, data, constraint, rec, xt, batch, t_start,
                  on_divergence == "raise", (max_iter, tol_eff, log_every, callback, progress))


#: at most this many quasi-likelihood rounds (the variance law re-fitted at each round's solution)
REFINE_ROUNDS = 3


def refine(preset: Preset, setting: Setting, opts: dict, loss, data, constraint, rec: Reconstruction, xt, batch,
           t_start, raise_on_divergence: bool, run_args) -> Reconstruction:
    """A preset's second stage: for the samples the first stage did not fit to ``tol``, the loss
    ``preset.refine(loss, data, x, previous)`` is minimised by a fresh algorithm from the current x,
    re-fitted at each round's solution (at most :data:`REFINE_ROUNDS` rounds; a sample stops when the
    hook says its loss did not move), continuing the same log. Samples that fit keep their first-stage result exactly."""
    op, B = setting.op, rec.iterations.numel()
    max_iter, tol = run_args[0], run_args[1]
    x = rec.x.reshape(B, *op.signal_shape)
    res = loss.residual(loss.evaluate(x, data, grad=False).fields, data)
    todo = (rec.status.reshape(B) != Status.DIVERGED) & ~(res <= tol if tol > 0 else torch.zeros_like(res, dtype=torch.bool))
    if max_iter == 0 or not bool(todo.any()):
        return rec
    cfg, status, iterations = rec.log.config, rec.status.reshape(B), rec.iterations.reshape(B)
    stages, prev = [{"loss": loss.hyperparameters(), "from_iteration": 0}], None
    for _ in range(REFINE_ROUNDS):
        new, moved = preset.refine(loss, data, x, prev)
        todo = todo & moved.reshape(-1).to(todo.device)
        if not bool(todo.any()):
            break
        offset = int(rec.log["iteration"][-1])
        stages.append({"loss": new.hyperparameters(), "from_iteration": offset, "samples": todo.tolist()})
        cfg["stages"] = stages
        alg = preset.build(setting, opts, preset.step_mu(setting.complex_signal, opts), None, None)
        driver = Driver(op, preset.name, alg, new, data, constraint, x, xt, batch, cfg, t_start,
                        raise_on_divergence, log=rec.log, offset=offset, sync_every=cfg.get("sync_every", 1))
        out = driver.run(*run_args, active=todo)
        x = out.x.reshape(B, *op.signal_shape)
        status = torch.where(todo, out.status.reshape(B), status)
        iterations = iterations + torch.where(todo, out.iterations.reshape(B), torch.zeros_like(iterations))
        todo = todo & (status != Status.DIVERGED)
        prev = new
    shape = rec.status.shape
    cfg["status"] = status_names(status.reshape(shape))
    cfg["converged"] = (status == Status.CONVERGED).tolist()
    cfg["iterations"] = iterations.tolist()
    return Reconstruction(x.reshape(rec.x.shape), rec.log, (status == Status.CONVERGED).reshape(shape),
                          iterations.reshape(shape), rec.x0, preset.name, status.reshape(shape))


def truth_metrics(x: torch.Tensor, xt: torch.Tensor):
    """(relative error, overlap, inner) per sample for flat batches ``(B, *signal)``.

    The same quantities as :func:`phasetorch.metrics.relative_error`, :func:`~phasetorch.metrics.overlap`
    and :func:`~phasetorch.metrics.inner` over the whole signal (tested equal), computed from one
    inner product c = ⟨x*, x⟩: relative error ‖x e^{−i arg c} − x*‖/‖x*‖, overlap |c|/(‖x‖‖x*‖),
    inner |c|/‖x*‖².
    """
    c = inner(xt, x, x.dim() - 1)
    nt2, nx2 = norm2(xt), norm2(x)
    ac = c.abs()
    if c.is_complex():
        unit = torch.where(ac > 0, c.conj() / torch.where(ac > 0, ac, torch.ones_like(ac)), torch.ones_like(c))
    else:
        unit = torch.where(c < 0, -torch.ones_like(c), torch.ones_like(c))
    xa = x * unit.reshape(-1, *([1] * (x.dim() - 1)))
    rel = (norm2(xa - xt) / nt2).sqrt()
    den = (nx2 * nt2).sqrt()
    ov = torch.where(den > 0, ac / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return rel, ov, ac / nt2


def op_config(op) -> Any:
    try:
        return op.config()
    except NotImplementedError:
        return {"type": type(op).__name__}


def keep_previous(mask: torch.Tensor, current, previous) -> tuple:
    """Per sample, the previous value where ``mask`` holds, else the current one, for each pair of
    (B, …) tensors (None stays None: a quantity the algorithm does not have)."""
    return tuple(None if cur is None else where_sample(mask, old, cur) for cur, old in zip(current, previous))


def fill(target: torch.Tensor, mask: torch.Tensor, value) -> torch.Tensor:
    """``target[mask] = value`` in place, without a host read: ``value`` an int, or a 0-dim device tensor
    (the iteration in a captured block; ``masked_fill_`` would read a tensor value on the host)."""
    if isinstance(value, torch.Tensor):
        return target.copy_(torch.where(mask, value, target))
    return target.masked_fill_(mask, value)


class CapturedBlocks:
    """Blocks of k iterations of :meth:`Driver.run` captured once and replayed (:class:`phasetorch.replay.Blocks`:
    a CUDA graph on CUDA, the tape in tests).

    A block t0+1 … t0+k replays a capture when its key is the capture's: the algorithm's
    :meth:`~phasetorch.optim.engine.Algorithm.step_key` of each of its iterations and the log's record
    positions (a schedule that changes μ at every t never replays). The body is :meth:`Driver.iterate`
    itself on the carried tensors and the algorithm's state (static buffers while blocks are captured),
    with t as ``blocks.t0 + i`` on the device; records go to a static buffer per key and are appended to
    the log after each block (their time is the block's end). The results are the plain loop's bit for bit."""

    def __init__(self, driver: "Driver", engine_cls, state: dict, log_every: int, iterate: Callable) -> None:
        self.d, self.state, self.log_every, self.iterate = driver, state, log_every, iterate
        self.blocks = replay.Blocks(engine_cls, driver.x0.device, driver.name)
        self.recs: dict = {}                 # key → the static record buffer (records, ncols, B)

    def key(self, t0: int, kb: int) -> tuple:
        ts = range(t0 + 1, t0 + kb + 1)
        return kb, tuple(self.d.alg.step_key(t) for t in ts), tuple(t % self.log_every == 0 for t in ts)

    def run(self, c: dict, t0: int, kb: int) -> Optional[int]:
        """Iterations t0+1 … t0+kb captured or replayed; None when they must run plainly (the caller runs
        them), else the last iteration recorded in the log (−1 if none)."""
        d, key, iterate = self.d, self.key(t0, kb), self.iterate
        if key not in self.recs:
            self.recs[key] = torch.empty(sum(key[2]), len(d.record_names), d.B, dtype=d.op.real_dtype,
                                         device=d.x0.device)
        rec, t_dev = self.recs[key], self.blocks.t0

        def body() -> None:
            j = 0
            for i in range(kb):
                due = iterate(c, t=t0 + i + 1, tv=t_dev + (i + 1))
                if due is not None:
                    rec[j].copy_(d.record_values(*due))
                    j += 1

        ran = self.blocks.run(key, (c, self.state), body, t0)
        self.recs = {kk: v for kk, v in self.recs.items() if kk in self.blocks.engines}   # the captures' own
        if not ran:
            return None
        ts = [t for t, due in zip(range(t0 + 1, t0 + kb + 1), key[2]) if due]
        now = time.perf_counter() - d.t_start
        for j, t in enumerate(ts):
            d.log.append_stacked(t + d.offset, d.record_names, rec[j].clone(), now)
        return ts[-1] if ts else -1


@dataclass
class Divergence:
    """The first divergence of a sample: iteration, flat index, loss and initial loss."""

    t: int
    sample: int
    loss: float
    initial: float


class Driver:
    """The one iteration loop over the :class:`~phasetorch.optim.engine.Algorithm` protocol:
    per-sample stopping, status, divergence freezing, logging and progress."""

    def __init__(self, op, name: str, alg: Algorithm, loss, data, constraint: Constraint, x0, xt, batch, config,
                 t_start: float, raise_on_divergence: bool = False, log: Optional[TrainingLog] = None,
                 offset: int = 0, sync_every: int = 1) -> None:
        self.op, self.name, self.alg, self.loss, self.data = op, name, alg, loss, data
        self.x0, self.xt, self.batch, self.B = x0, xt, batch, x0.shape[0]
        self.t_start, self.raise_on_divergence = t_start, raise_on_divergence
        self.project = None if constraint.trivial else constraint
        cols = ["loss", "grad_norm", "step", "norm", "time", "residual"]
        self.record_names = ["loss", "grad_norm", "step", "norm", "residual"]
        if xt is not None:
            cols += ["rel_error", "overlap", "inner"]
            self.record_names += ["rel_error", "overlap", "inner"]
        self.log = TrainingLog(batch, config, cols) if log is None else log
        self.evaluate = loss.evaluator(data, (self.B,))   # value + gradient at an iterate, prepared once
        self.offset = offset                   # a later stage continues an earlier stage's log
        self.sync_every = sync_every           # decisions are read from the device every k iterations
        self.divergences: List[Divergence] = []

    # ------------------------------------------------------------------ helpers
    def record_values(self, x, f, grad_norm, alpha, res) -> torch.Tensor:
        """One log record's columns (``record_names``) stacked: (ncols, B)."""
        vals = [f, grad_norm, alpha, norm2(x).sqrt(), res]
        if self.xt is not None:
            vals += list(truth_metrics(x, self.xt))
        rdt = self.op.real_dtype
        return torch.stack([v if v.dtype == rdt else v.to(rdt) for v in vals])

    def record(self, t, x, f, grad_norm, alpha, res) -> None:
        self.log.append_stacked(t + self.offset, self.record_names, self.record_values(x, f, grad_norm, alpha, res),
                                time.perf_counter() - self.t_start)

    def view(self, x):
        return x.reshape(*self.batch, *self.op.signal_shape)

    def divergence_limit(self, f0) -> torch.Tensor:
        """f₀ + DIVERGENCE_FACTOR·max(|f₀|, floor) per sample (floor: 10⁻¹² of the data's loss scale)."""
        y_pos = self.data.y_pos
        floor = 1e-12 * float(self.op.measurement_mean(y_pos.abs()).mean()) ** (2 if self.loss.scale_power == 2 else 1) \
            if y_pos.numel() else 0
        return f0 + DIVERGENCE_FACTOR * f0.abs().clamp_min(max(floor, 1e-300))

    def divergence_message(self, d: Divergence, count: int) -> str:
        hint = self.alg.divergence_hint(d.t)
        pre = self.log.config.get("preprocessing")
        if d.t <= EARLY_DIVERGENCE and pre is not None and pre not in ("optimal", "mm"):
            # blowing up right after the start points at the start itself (e.g. an identity
            # spectral vector localised on a few large y_i: coded diffraction at large n)
            hint += (f"; diverging within {d.t} iteration(s) of a '{pre}' spectral start can also mean a poor "
                     f"start: try preprocessing='optimal'")
        others = f" ({count} of {self.B} samples diverged)" if self.B > 1 else ""
        return (f"'{self.name}' diverged at iteration {d.t}: sample {d.sample} has loss {d.loss:.4g} "
                f"(initial {d.initial:.4g}){others}; {hint}")

    def divergence_error(self, d: Divergence, count: int, x) -> DivergenceError:
        return DivergenceError(self.divergence_message(d, count), algorithm=self.name, iteration=d.t,
                               sample=d.sample, step=self.alg.describe(), loss=d.loss, initial_loss=d.initial,
                               log=self.log, x=self.view(x))

    def trial_eval(self, x, r):
        """Value-only evaluation at trial points, with the weights frozen at the current point x."""
        loss, data = self.loss, self.data
        frozen = {}

        def evaluate(x_try):
            if loss.adaptive_weights and "w" not in frozen:
                frozen["w"] = loss.weights(x, data, r)
            return loss.value(x_try, data, weights=frozen.get("w"))

        return evaluate

    def full_eval(self, x, r, w=None):
        """``x_try -> (evaluation at x_try, its value with the weights frozen at x)``: the evaluation
        the loop needs at an accepted point, with the trial value a line search compares. ``w``: the
        weights of x's own evaluation (adaptive losses; recomputed from r when None)."""
        loss, data = self.loss, self.data
        full = self.evaluate
        fast_frozen = loss.own_evaluation()

        def evaluate(x_try):
            if not loss.adaptive_weights:
                ev = full(x_try)
                return ev, ev.value
            if not fast_frozen:             # a loss that redefines evaluate/value/weights: its own value
                ev = full(x_try)
                return ev, loss.value(x_try, data, r=ev.r, weights=loss.weights(x, data, r))[0]
            ev = full(x_try, loss.weights(x, data, r) if w is None else w)   # the frozen value in the same pass
            return ev, ev.frozen

        return evaluate

    # ------------------------------------------------------------------ main loop
    def run(self, max_iter: int, tol: float, log_every: int, callback, progress: bool,
            active: Optional[torch.Tensor] = None) -> Reconstruction:
        """Iterate; ``active`` (B,) bool restricts the run to some samples (the others do not move)."""
        B, dev, rdt = self.B, self.x0.device, self.op.real_dtype
        x = self.x0
        active = torch.ones(B, dtype=torch.bool, device=dev) if active is None else active.clone()
        status = torch.zeros(B, dtype=torch.int8, device=dev)
        iterations = torch.where(active, max_iter, 0).to(torch.int64)
        zero = torch.zeros(B, dtype=rdt, device=dev)

        ev = self.loss.evaluate(x, self.data)
        f, G, r = ev.value, ev.grad, ev.r
        W = ev.weights if self.loss.adaptive_weights else None   # kept for the line search
        if not bool(torch.isfinite(f).all()):
            idx = (~torch.isfinite(f)).nonzero().reshape(-1).tolist()[:8]
            raise ValueError(f"the loss at the initial point is not finite for sample(s) {idx}: the intensities overflow "
                             f"{dtype_name(rdt)} (max |y| = {float(self.data.y.abs().max()):.3g} in normalised units); "
                             f"rescale y (e.g. y / y.max(), and x by its square root) or work in float64")
        g0 = norm2(G).sqrt()
        res = self.loss.residual(ev.fields, self.data)
        scale = self.loss.step_scale(x)
        if (scale <= 0).any() or not torch.isfinite(scale).all():
            raise ValueError("the initial point has zero norm; the step μ/‖x₀‖² is undefined (check y and init)")
        state = self.alg.init_state(x, scale)
        f0 = f.clone()
        f_limit = self.divergence_limit(f0)
        if self.offset == 0:
            self.record(0, x, f, norm2(G).sqrt(), zero, res)

        bar = tqdm(total=max_iter, desc=self.name, leave=False, dynamic_ncols=True) if progress and max_iter else None
        k = self.sync_every
        t = t_last = 0
        last_row = -1                                  # iteration of the last record written
        # device-side bookkeeping, read every k iterations (one host read per block of k)
        c = {"x": x, "f": f, "G": G if self.alg.uses_gradient else None, "r": r, "W": W, "res": res, "active": active,
             "status": status, "iterations": iterations,
             "t_end": torch.zeros((), dtype=torch.int64, device=dev),     # the last iteration any sample ran
             "step_end": zero.clone(),                                    # the step column of that iteration
             "div_t": torch.zeros(B, dtype=torch.int64, device=dev),      # iteration of each divergence
             "div_f": torch.zeros_like(f),                                # loss at the divergence
             "diverged": torch.zeros(B, dtype=torch.bool, device=dev)}
        reported = 0                                                   # divergences already turned into messages
        if k == 1 and max_iter and not bool(active.any()):
            max_iter = 0                               # nothing to run (a later stage with every sample done)
        stall = STALL_GRADIENT * g0                    # ‖∇f‖ above it: a stop without a move is a stall
        book = {name: c[name] for name in ("active", "status", "iterations", "div_t", "div_f", "diverged")}
        block = GradientBlock.build(self, tol, log_every, callback, f, G, W, res, state, f_limit, stall, book,
                                    (Status.CONVERGED, Status.STALLED, Status.DIVERGED)) \
            if max_iter and bool(active.any()) else None
        iterate = functools.partial(self.iterate, state=state, tol=tol, f_limit=f_limit, stall=stall, k=k,
                                    log_every=log_every)
        engine = replay.backend(dev) if block is None and callback is None and max_iter else None
        blocks = CapturedBlocks(self, engine, state, log_every, iterate) if engine is not None else None
        try:
            if block is not None:       # the same loop compiled, up to BLOCK iterations per C call
                t_last, last_row = self.run_compiled(block, max_iter, bar, book, f0)
                c.update(x=block.x.view_as(x), f=block.f, G=block.G.view_as(G), W=block.weights, res=block.res,
                         step_end=block.step, active=book["active"])
            while t < max_iter and block is None:
                kb = min(k, max_iter - t)          # t is a multiple of k here: a block ends at each host read
                stopped_by_cb = False
                t0 = t
                done = blocks.run(c, t0, kb) if blocks is not None else None   # a captured block, or None
                if done is not None:
                    t = t0 + kb
                    last_row = max(last_row, done)
                    if bar is not None:
                        bar.update(kb)
                else:
                    for t in range(t0 + 1, t0 + kb + 1):
                        due = iterate(c, t=t, tv=t)
                        if callback is not None:
                            info = {"loss": c["f"].reshape(self.batch), "residual": c["res"].reshape(self.batch),
                                    "active": c["active"].reshape(self.batch)}
                            stopped_by_cb = bool(callback(t, self.view(c["x"]), info))
                        if due is not None:
                            self.record(t, *due)
                            last_row = t
                        if bar is not None:
                            bar.update(1)
                        if stopped_by_cb:
                            break
                # the one host read of a block of k iterations: is anything left, did anything diverge
                active, diverged = c["active"], c["diverged"]
                if k > 1:
                    n_left, n_div, t_last = torch.stack([active.sum(), diverged.sum(), c["t_end"]]).tolist()
                else:
                    (n_left, n_div), t_last = torch.stack([active, diverged]).sum(1).tolist(), t
                if n_div > reported:
                    reported = self.note_divergences(diverged, c["div_t"], c["div_f"], f0, c["x"])
                if bar is not None:
                    self.update_bar(bar, c["f"], c["x"])
                if not n_left or stopped_by_cb:
                    if stopped_by_cb:
                        c["iterations"] = torch.where(active, torch.full_like(c["iterations"], t), c["iterations"])
                        t_last = t
                    break
        finally:
            if bar is not None:
                bar.close()
        x = c["x"]
        if blocks is not None:                 # summed over the stages of a run (a preset's refinement)
            stats = blocks.blocks.stats()
            counts = self.log.config.setdefault("captured_blocks", {"backend": stats.pop("backend")})
            for name, n in stats.items():
                counts[name] = (counts.get(name, False) or n) if name == "fallback" else counts.get(name, 0) + n
        if t_last > 0:
            if last_row > t_last:      # records of iterations in which nothing ran (k > 1): not kept
                self.log.drop_after(t_last + self.offset)
                last_row = t_last - t_last % log_every
            if last_row != t_last:     # the final iterate is always recorded
                self.record(t_last, x, c["f"], self.grad_norm(c["G"], x, c["r"]), c["step_end"], c["res"])
        status = c["status"]
        status = torch.where(status == Status.RUNNING, torch.full_like(status, Status.MAX_ITER), status)
        return self.finish(x, status, c["iterations"])

    def iterate(self, c: dict, state, t: int, tv, tol: float, f_limit, stall, k: int,
                log_every: int) -> Optional[tuple]:
        """Iteration t of :meth:`run` on the carried tensors ``c`` (rebound, or updated in place) and the
        algorithm's ``state``. ``tv`` is t as the bookkeeping writes it: t itself, or a 0-dim device
        tensor in a captured block (whose host values are frozen at capture, :mod:`phasetorch.replay`).
        Returns the log record's values ``(x, f, ‖∇f‖, α, residual)`` when t is due, else None."""
        B, rdt = self.B, self.op.real_dtype
        x_prev, f_prev, res_prev, G_prev, r_prev, W_prev = x, f, res, G, r, W = \
            c["x"], c["f"], c["res"], c["G"], c["r"], c["W"]
        running = active = c["active"]
        status, iterations = c["status"], c["iterations"]
        ctx = StepContext(self.trial_eval(x, r), active, r, self.project, self.full_eval(x, r, W))
        out = self.alg.step(state, t, x, f, G, ctx)
        x = out.x            # inactive samples' moves are undone by the keep below, with their evaluations
        grads = self.alg.uses_gradient
        ev = out.cache if isinstance(out.cache, Evaluation) else self.evaluate(x) \
            if out.cache is None and grads else self.loss.evaluate(x, self.data, r=out.cache, grad=grads)
        f, G, r = ev.value, ev.grad, ev.r
        res = self.loss.residual(ev.fields, self.data)
        moved = active if out.accepted is None else active & out.accepted
        bad = moved & ~((f <= f_limit) & (f.abs() < math.inf))   # NaN, ±inf or above the limit
        c["div_f"] = torch.where(bad, f, c["div_f"])
        # one select for every kept quantity: samples that did not move or that diverged keep
        # the previous iterate and its evaluation
        W = ev.weights if self.loss.adaptive_weights else None
        x, f, res, r, G, W = keep_previous(~moved | bad, (x, f, res, r, G, W),
                                           (x_prev, f_prev, res_prev, r_prev, G_prev, W_prev))
        fill(c["div_t"], bad, tv)
        c["diverged"] |= bad
        status.masked_fill_(bad, Status.DIVERGED)
        fill(iterations, bad, tv - 1)
        ok = active & ~bad
        step_t = out.alpha.to(rdt) * ok                   # α where the sample moved, else 0 (α finite)
        gn = None
        if tol > 0:
            fit = res <= tol
            stop = ok & (fit | ((res - res_prev).abs() <= tol * res_prev))
            if out.retry is not None:          # a rejected trial retries: not a stop
                stop = stop & ~out.retry
            if G is not None:
                gn = norm2(G).sqrt()
                # stalled: stopped without a fit, without moving, with a gradient that is not small
                stuck = (x == x_prev).reshape(B, -1).all(1) & ~fit & (gn > stall)
                status.masked_fill_(stop, Status.CONVERGED).masked_fill_(stop & stuck, Status.STALLED)
            else:
                status.masked_fill_(stop, Status.CONVERGED)
            fill(iterations, stop, tv)
            active = ok & ~stop
        else:
            active = ok
        if k > 1:                              # which iteration of the block ran last (read with the block)
            ran = running.any()
            c["t_end"] = torch.where(ran, tv, c["t_end"])
            c["step_end"] = torch.where(ran, step_t, c["step_end"])
        else:                                  # a read every iteration: this one ran (else the loop ended)
            c["step_end"] = step_t
        c.update(x=x, f=f, G=G, r=r, W=W, res=res, active=active)
        if t % log_every == 0:
            return x, f, gn if gn is not None else self.grad_norm(G, x, r), step_t, res
        return None

    def run_compiled(self, block: GradientBlock, max_iter: int, bar, book: dict, f0) -> Tuple[int, int]:
        """The loop of :meth:`run` through :class:`~phasetorch.optim.compiled.GradientBlock` (its state and
        ``book``, the driver's bookkeeping tensors, updated in place). Returns (last iteration run, last record)."""
        t_last, last_row = 0, -1
        names, offset, t0 = self.record_names, self.offset, self.t_start
        k = FIRST_BLOCK                 # then as many iterations as take about BLOCK_SECONDS (≤ BLOCK)
        while t_last < max_iter:
            tic = time.perf_counter()
            t_done, new_div, records = block.run(t_last, min(k, max_iter - t_last))
            per = (time.perf_counter() - tic) / max(t_done - t_last, 1)
            k = int(min(BLOCK, max(1.0, BLOCK_SECONDS / max(per, 1e-9))))
            for t, values, when in records:
                self.log.append_stacked(t + offset, names, values, when - t0)
                last_row = t
            if bar is not None:
                bar.update(t_done - t_last)
                self.update_bar(bar, block.f, block.x.view_as(self.x0))
            t_last = t_done
            if new_div:
                self.note_divergences(book["diverged"], book["div_t"], book["div_f"], f0, block.x.view_as(self.x0))
            if not bool(book["active"].any()):
                break
        return t_last, last_row

    def grad_norm(self, G, x, r) -> torch.Tensor:
        """‖∇f‖ per sample for the log (evaluated for projection methods, which do not use it)."""
        return norm2(G if G is not None else self.loss.evaluate(x, self.data, r=r).grad).sqrt()

    def note_divergences(self, diverged, div_t, div_f, f0, x) -> int:
        """Turn the device-side divergence marks into :class:`Divergence` records (in iteration order);
        raises at once with ``raise_on_divergence``. Returns how many are recorded."""
        known = {d.sample for d in self.divergences}
        idx = diverged.nonzero().reshape(-1).tolist()
        ts, fs, f0s = (v.tolist() for v in (div_t[idx], div_f[idx].double(), f0[idx].double()))
        for b, tb, fb, f0b in sorted(zip(idx, ts, fs, f0s), key=lambda z: (z[1], z[0])):
            if b not in known:
                self.divergences.append(Divergence(int(tb), int(b), float(fb), float(f0b)))
        if self.raise_on_divergence and self.divergences:
            raise self.divergence_error(self.divergences[0], len(self.divergences), x)
        return len(self.divergences)

    def update_bar(self, bar, f, x) -> None:
        post = {"loss": f"{float(f.mean()):.3e}"}
        if self.xt is not None:
            post["rel_err"] = f"{float(truth_metrics(x, self.xt)[0].mean()):.2e}"
        bar.set_postfix(post, refresh=False)

    def finish(self, x, status, iterations) -> Reconstruction:
        cfg = self.log.config
        cfg["converged"] = (status == Status.CONVERGED).tolist()
        cfg["iterations"] = iterations.tolist()
        cfg["status"] = status_names(status.reshape(self.batch))
        cfg["wall_time"] = time.perf_counter() - self.t_start
        if self.divergences:
            first = self.divergences[0]
            if len(self.divergences) == self.B:
                raise self.divergence_error(first, self.B, x)
            warnings.warn(self.divergence_message(first, len(self.divergences)) +
                          "; the diverged samples are frozen at their last finite iterate (status 'diverged')",
                          RuntimeWarning, stacklevel=3)
        return Reconstruction(self.view(x), self.log, (status == Status.CONVERGED).reshape(self.batch),
                              iterations.reshape(self.batch), self.view(self.x0), self.name,
                              status.reshape(self.batch))
