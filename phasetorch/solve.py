r"""``reconstruct``: one entry point for every phase-retrieval algorithm, batched, logged, reproducible.

    rec = phasetorch.reconstruct(op, y, algorithm="raf")
    rec.x, rec.log["loss"], rec.converged, rec.iterations

The algorithms are the presets of :mod:`phasetorch.optim.presets` (wf, twf, rwf, taf, raf, af,
gs, hio, lbfgs). Everything is per sample: a batch of B intensity vectors (leading dimensions of
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

**Divergence.** If a running sample's loss becomes non-finite or exceeds its initial value by
more than 10⁶ × |initial|, :class:`phasetorch.errors.DivergenceError` is raised, naming the step to
reduce; its ``log`` and ``x`` attributes hold the run up to that point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from .errors import DivergenceError
from .logs import TrainingLog
from .losses import AmplitudeLoss, check_intensities
from .physics.base import MeasurementOperator
from .tensors import make_generator, real_dtype_of
from .tensors import norm2, where_sample
from .optim.gradient import GradientCore
from .optim.lbfgs import LBFGSCore
from .optim.presets import Preset, get_preset
from .optim.projections import Constraint, GSCore, HIOCore, tight_frame_constant
from .optim.steps import StepRule, WFRamp, make_step_rule

__all__ = ["reconstruct", "Reconstruction", "default_tol", "DIVERGENCE_FACTOR"]

DIVERGENCE_FACTOR = 1e6
DEFAULT_TOL = 1e-10


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct`.

    Attributes
    ----------
    x : the estimate, shape ``(*batch, *op.signal_shape)`` (global phase/sign arbitrary).
    log : the :class:`~phasetorch.logs.TrainingLog` (``log.config`` describes the run).
    converged : bool tensor of the batch shape — whether each sample met the stopping test.
    iterations : int64 tensor of the batch shape — iterations each sample ran.
    x0 : the initial point actually used.
    algorithm : the preset name.
    """

    x: torch.Tensor
    log: TrainingLog
    converged: torch.Tensor
    iterations: torch.Tensor
    x0: torch.Tensor
    algorithm: str


#: a divergence within this many iterations of a spectral start also suggests a better preprocessing
EARLY_DIVERGENCE = 5


def default_tol(dtype: torch.dtype, tol: Optional[float] = None) -> float:
    """The stopping tolerance in force: ``tol`` (default 1e-10) raised to 8ε of ``dtype``; 0 stays 0."""
    tol = DEFAULT_TOL if tol is None else float(tol)
    if tol <= 0:
        return 0.0
    return max(tol, 8 * torch.finfo(real_dtype_of(dtype)).eps)


# ---------------------------------------------------------------------------- validation helpers
def _check_int(v, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int ≥ {low}, got {v!r}")
    return int(v)


def _signal_tensor(t, op: MeasurementOperator, batch: tuple, B: int, name: str) -> torch.Tensor:
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


def _to_real_signal(x: torch.Tensor) -> torch.Tensor:
    """Project a complex vector onto the reals after removing its best global phase (per sample)."""
    if not x.is_complex():
        return x
    flat = x.reshape(x.shape[0], -1)
    s = (flat * flat).sum(-1)                      # Σ x_j²: the phase 2φ that makes x e^{-iφ} most real
    phase = torch.where(s.abs() > 0, s / s.abs().clamp_min(torch.finfo(s.real.dtype).tiny), torch.ones_like(s))
    rot = phase.sqrt().conj()
    return (flat * rot.unsqueeze(-1)).real.reshape(x.shape[0], *x.shape[1:])


def _step_description(rule: Optional[StepRule], step) -> Any:
    if rule is None:
        return None if step is None else step
    return rule.describe()


# ---------------------------------------------------------------------------- the driver
def reconstruct(op: MeasurementOperator, y: torch.Tensor, algorithm: str = "raf",
                init: Union[str, torch.Tensor] = "spectral", preprocessing=None, max_iter: int = 1000,
                tol: Optional[float] = None, step=None, schedule: Optional[Callable[[int], float]] = None,
                l2: float = 0.0, x_true: Optional[torch.Tensor] = None, progress: bool = True,
                callback: Optional[Callable] = None, log_every: int = 1, real_signal: Optional[bool] = None,
                support: Optional[torch.Tensor] = None, nonnegative: bool = False, seed: Optional[int] = None,
                generator: Optional[torch.Generator] = None, spectral_options: Optional[dict] = None,
                **options) -> Reconstruction:
    r"""Recover x from intensities y = |Ax|² (per sample, batched).

    Parameters
    ----------
    op : a :class:`~phasetorch.physics.MeasurementOperator`.
    y : intensities, shape ``(*batch, *op.measurement_shape)``, real, finite, same dtype/device as
        ``op``. Negative values (noise) are allowed; each loss documents how it treats them.
    algorithm : a preset name: ``wf``, ``twf``, ``rwf``, ``taf``, ``raf`` (default), ``af``, ``gs``,
        ``hio``, ``lbfgs`` (:mod:`phasetorch.optim.presets` lists losses, steps, inits, papers).
    init : ``"spectral"`` (:func:`phasetorch.init.spectral.spectral_init` with the preset's
        preprocessing), ``"random"`` (random phases back-projected, x₀ = Aᴴ(√y₊ e^{iφ}) rescaled to
        ‖x₀‖² = mean(y₊)/e), or a tensor (shape ``signal_shape`` or ``(*batch, *signal_shape)``,
        used as given; with a real signal a complex start is rotated by its best global phase and
        its real part kept). With ``support``/``nonnegative`` the start is projected onto the
        constraint (and, unless given as a tensor, rescaled to the norm the data imply).
    preprocessing : spectral preprocessing overriding the preset's (a name or callable T(ŷ)).
    max_iter : iteration budget per sample (0 returns the initial point).
    tol : stopping tolerance (default 1e-10, raised to 8ε of the dtype; 0 disables early stopping).
    step : ``None`` (the preset's published rule), a number μ (constant step μ·s, s = 1/‖x₀‖² for
        the intensity loss of ``wf`` and 1 for the others), ``"armijo"``, ``"bb"``/``"bb1"``/``"bb2"``,
        ``"constant"`` (the preset's μ, without a ramp) or a :class:`~phasetorch.optim.steps.StepRule`.
        For ``wf`` with ``step=μ`` every iteration is exactly x_{t+1} = x_t − (μ/‖x₀‖²)∇f(x_t),
        f = (1/4m)Σ(|a_iᴴx|² − y_i)² + (λ/2)‖x‖² — the DMFT's gradient descent.
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
    spectral_options : extra keyword arguments for :func:`phasetorch.init.spectral.spectral_init`
        (e.g. ``{"tol": 1e-3}`` for a cheaper start, ``{"solver": "power"}``, ``{"whiten": False}``);
        they override the preset's own (only ``lbfgs`` has one: ``{"tol": 0.1}``).
    **options : preset hyper-parameters — ``tau0``, ``mu_max`` (wf); ``alpha_lb``, ``alpha_ub``,
        ``alpha_h`` (twf); ``gamma`` (taf); ``beta`` (raf: reweighting; hio: feedback);
        ``cg_steps`` (gs, hio); ``memory``, ``loss`` (lbfgs: ``"amplitude"`` or ``"intensity"``).

    Returns
    -------
    :class:`Reconstruction` with ``x``, ``log``, ``converged``, ``iterations``, ``x0``.
    """
    t_start = time.perf_counter()
    if not isinstance(op, MeasurementOperator):
        raise ValueError(f"op must be a phasetorch MeasurementOperator, got {type(op).__name__}")
    preset = get_preset(algorithm)
    check_intensities(op, y)
    max_iter = _check_int(max_iter, "max_iter", 0)
    log_every = _check_int(log_every, "log_every", 1)
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number (≤ 0 disables early stopping), got {tol!r}")
    tol_eff = default_tol(op.real_dtype, tol)
    l2 = float(l2)
    if not math.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2}")
    if l2 > 0 and preset.family in ("gs", "hio"):
        raise ValueError(f"l2 applies to gradient algorithms; '{preset.name}' is a projection method (use wf, raf, …)")
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable as callback(t, x, info)")
    if preset.family in ("gs", "hio", "lbfgs") and (step is not None or schedule is not None):
        why = "its line search chooses the steps" if preset.family == "lbfgs" else "it is a projection method"
        raise ValueError(f"'{preset.name}' does not take step=/schedule= ({why})")

    # -------------------------------------------------------------- shapes, constraints
    k_meas, k_sig = len(op.measurement_shape), len(op.signal_shape)
    batch = tuple(y.shape[: y.dim() - k_meas])
    B = math.prod(batch)
    sig = tuple(op.signal_shape)
    if nonnegative and real_signal is False:
        raise ValueError("nonnegative=True needs a real signal; drop real_signal=False")
    if real_signal is None:
        real_signal = (not op.is_complex) or bool(nonnegative)
    real_signal = bool(real_signal)
    complex_signal = op.is_complex and not real_signal
    sup = None
    if support is not None:
        sup_t = torch.as_tensor(support, device=op.device)
        if sup_t.dtype != torch.bool:
            if not ((sup_t == 0) | (sup_t == 1)).all():
                raise ValueError("support must be a boolean (or 0/1) mask")
            sup_t = sup_t.to(torch.bool)
        if tuple(sup_t.shape) not in (sig, (*batch, *sig)):
            raise ValueError(f"support has shape {tuple(sup_t.shape)}; expected {sig} or {(*batch, *sig)}")
        if not sup_t.any():
            raise ValueError("support is empty (all False); nothing can be recovered")
        sup = sup_t.expand(*batch, *sig).reshape(B, *sig)
    constraint = Constraint(real_signal and op.is_complex, sup, nonnegative)

    # -------------------------------------------------------------- options
    opts = preset.defaults(complex_signal)
    unknown = set(options) - set(opts)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for algorithm '{preset.name}'; "
                         f"valid: {sorted(opts) or 'none'}")
    opts.update(options)
    if preset.family in ("gs", "hio"):
        opts["cg_steps"] = _check_int(opts["cg_steps"], "cg_steps", 1)
    if preset.family == "lbfgs":
        opts["memory"] = _check_int(opts["memory"], "memory", 1)

    y_flat = y.reshape(B, *op.measurement_shape)
    xt = None
    if x_true is not None:
        xt = _signal_tensor(x_true, op, batch, B, "x_true")

    # -------------------------------------------------------------- initial point
    g = None
    spec_kw = None
    if spectral_options is not None and not isinstance(spectral_options, dict):
        raise ValueError(f"spectral_options must be a dict of spectral_init keyword arguments, got "
                         f"{type(spectral_options).__name__}")
    if isinstance(init, torch.Tensor):
        if preprocessing is not None:
            raise ValueError("preprocessing= applies to init='spectral' only")
        x0 = _signal_tensor(init, op, batch, B, "init").clone()
        init_name = "tensor"
    elif init == "spectral":
        from .init.spectral import spectral_init
        pre = preset.preprocessing if preprocessing is None else preprocessing
        g = make_generator(seed, generator)
        kw = {**preset.spectral, **(spectral_options or {})}
        spec_kw = dict(kw)
        for k in ("preprocessing", "seed", "generator", "return_info", "real_signal"):
            if k in kw:
                raise ValueError(f"spectral_options may not set {k!r}; use reconstruct's own argument")
        if op.is_complex and real_signal:
            kw["real_signal"] = True
        x0 = spectral_init(op, y_flat, preprocessing=pre, generator=g, **kw)
        init_name = "spectral"
    elif init == "random":
        if preprocessing is not None:
            raise ValueError("preprocessing= applies to init='spectral' only")
        g = make_generator(seed, generator)
        psi = y_flat.clamp_min(0).sqrt()
        if op.is_complex:
            phases = torch.rand(y_flat.shape, generator=g, dtype=torch.float64).to(op.device, op.real_dtype)
            b = torch.polar(psi, 2 * math.pi * phases)
        else:
            signs = torch.randint(0, 2, y_flat.shape, generator=g).to(op.device, op.real_dtype) * 2 - 1
            b = psi * signs
        x0 = op.adjoint(b)
        init_name = "random"
    else:
        raise ValueError(f"init must be 'spectral', 'random' or a tensor, got {init!r}")
    if real_signal:
        x0 = _to_real_signal(x0)
    elif op.is_complex and not x0.is_complex():
        x0 = x0.to(op.signal_dtype)
    if not constraint.trivial or init_name == "random":
        target = (y_flat.clamp_min(0).reshape(B, -1).mean(-1) / op.entry_energy).sqrt()
        x0 = constraint(x0)
        nx = norm2(x0).sqrt()
        if init_name != "tensor":
            fac = torch.where(nx > 0, target / nx.clamp_min(torch.finfo(nx.dtype).tiny), torch.ones_like(nx))
            x0 = x0 * fac.reshape(B, *([1] * k_sig)).to(x0.dtype)
    if not torch.isfinite(x0).all():
        raise ValueError("the initial point contains NaN or inf")

    # -------------------------------------------------------------- loss and update rule
    loss = preset.make_loss(op, l2, opts) if preset.family in ("gradient", "lbfgs") else AmplitudeLoss(op)
    data = loss.prepare(y_flat)
    scale = loss.step_scale(x0)
    if (scale <= 0).any() or not torch.isfinite(scale).all():
        raise ValueError("the initial point has zero norm; the step μ/‖x₀‖² is undefined (check y and init)")
    mu_default = preset.step_mu(complex_signal)
    rule = None
    core = None
    if preset.family == "gradient":
        if preset.rule == "wf_ramp":
            default_rule = WFRamp(float(opts["tau0"]), float(opts["mu_max"]))
            mu_default = float(opts["mu_max"])
        else:
            default_rule = make_step_rule(mu_default)
        rule = make_step_rule(step, schedule, default=default_rule, mu0=mu_default)
        core = GradientCore(rule)
        core.start(scale)
    elif preset.family == "lbfgs":
        core = LBFGSCore(memory=opts["memory"], mu0=mu_default)
        core.start(scale)
    else:
        tight = tight_frame_constant(op)
        psi_raw = y_flat.clamp_min(0).sqrt()
        if preset.family == "gs":
            core = GSCore(op, psi_raw, constraint, opts["cg_steps"], tight)
        else:
            core = HIOCore(op, psi_raw, constraint, float(opts["beta"]), opts["cg_steps"], tight)

    config = {
        "algorithm": preset.name, "title": preset.title, "reference": preset.reference,
        "operator": _op_config(op), "n": op.n, "m": op.m, "delta": op.delta,
        "dtype": str(op.real_dtype).replace("torch.", ""), "batch_shape": list(batch),
        "init": init_name, "preprocessing": _pre_name(preset, preprocessing) if init_name == "spectral" else None,
        "step": _step_description(rule, step) if preset.family == "gradient" else
        ({"rule": "lbfgs_armijo", "mu0": mu_default} if preset.family == "lbfgs" else None),
        "step_scale": "1/|x0|^2" if loss.scale_power == 2 else "1",
        "l2": l2, "loss": loss.hyperparameters(), "options": dict(opts), "tol": tol_eff, "max_iter": max_iter,
        "seed": seed, "spectral_options": spec_kw if init_name == "spectral" else None, "log_every": log_every,
        "real_signal": real_signal, "support": sup is not None, "nonnegative": bool(nonnegative),
    }
    runner = _Runner(op, preset, loss, data, core, constraint, x0, xt, batch, B, max_iter, tol_eff,
                     log_every, callback, progress, config, t_start, rule)
    return runner.run()


def truth_metrics(x: torch.Tensor, xt: torch.Tensor):
    """(relative error, overlap, inner) per sample for flat batches ``(B, *signal)``.

    The same quantities as :func:`phasetorch.metrics.relative_error`, :func:`~phasetorch.metrics.overlap`
    and :func:`~phasetorch.metrics.inner` (tested equal), computed from one inner product
    c = ⟨x*, x⟩: relative error ‖x e^{−i arg c} − x*‖/‖x*‖, overlap |c|/(‖x‖‖x*‖), inner |c|/‖x*‖².
    """
    c = dot_complex(xt, x)
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


def dot_complex(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ = Σ ā b per sample over all but the first dimension (complex if either is complex)."""
    dims = tuple(range(1, a.dim()))
    prod = (a.conj() * b) if a.is_complex() else a * b
    return prod.sum(dim=dims) if dims else prod


def _op_config(op) -> Any:
    try:
        return op.config()
    except NotImplementedError:
        return {"type": type(op).__name__}


def _pre_name(preset: Preset, preprocessing) -> Any:
    p = preset.preprocessing if preprocessing is None else preprocessing
    return p if isinstance(p, str) else getattr(p, "__name__", repr(p))


class _Runner:
    """The iteration loop shared by all presets (per-sample stopping, logging, divergence checks)."""

    def __init__(self, op, preset, loss, data, core, constraint, x0, xt, batch, B, max_iter, tol, log_every,
                 callback, progress, config, t_start, rule) -> None:
        self.op, self.preset, self.loss, self.data, self.core = op, preset, loss, data, core
        self.constraint, self.x0, self.xt, self.batch, self.B = constraint, x0, xt, batch, B
        self.max_iter, self.tol, self.log_every = max_iter, tol, log_every
        self.callback, self.progress, self.t_start, self.rule = callback, progress, t_start, rule
        cols = ["loss", "grad_norm", "step", "norm", "time", "residual"]
        self._record_names = ["loss", "grad_norm", "step", "norm", "residual"]
        if xt is not None:
            cols += ["rel_error", "overlap", "inner"]
            self._record_names += ["rel_error", "overlap", "inner"]
        self.log = TrainingLog(batch, config, cols)
        self.k_sig = len(op.signal_shape)
        self.device = x0.device
        self.project = None if constraint.trivial else constraint

    # ------------------------------------------------------------------ helpers
    def _record(self, t, x, f, grad_norm, alpha, res) -> None:
        vals = [f, grad_norm, alpha, norm2(x).sqrt(), res]
        if self.xt is not None:
            vals += list(truth_metrics(x, self.xt))
        rdt = self.op.real_dtype
        self.log.append_stacked(t, self._record_names, torch.stack([v.to(rdt) for v in vals]),
                                time.perf_counter() - self.t_start)

    def _view(self, x):
        return x.reshape(*self.batch, *self.op.signal_shape)

    def _diverging(self, f, active):
        """Samples whose loss is non-finite or grew past f₀ + DIVERGENCE_FACTOR·max(|f₀|, floor) (no sync)."""
        return active & (~torch.isfinite(f) | (f > self.f_limit))

    def _raise_divergence(self, t, f, f0, x_prev, bad):
        """Raise DivergenceError for the first diverging sample, naming the knob to turn."""
        b = int(bad.nonzero()[0, 0])
        if self.rule is not None:
            cur = self.rule.current(t)
        elif self.preset.family == "lbfgs":
            cur = "line search"
        else:
            cur = "projection"
        if self.preset.family == "gradient":
            sug = _suggest(self.rule)
            eg = f", e.g. step={sug}" if sug else ""
            hint = f"reduce step (currently {cur}){eg}, or use step='armijo'"
        else:
            hint = "check the data and the operator (this algorithm has no step size to reduce)"
        pre = self.log.config.get("preprocessing")
        if t <= EARLY_DIVERGENCE and pre is not None and pre not in ("optimal", "mm"):
            # blowing up right after the start points at the start itself (e.g. an identity
            # spectral vector localised on a few large y_i: coded diffraction at large n)
            hint += (f"; diverging within {t} iteration(s) of a '{pre}' spectral start can also mean a poor "
                     f"start: try preprocessing='optimal'")
        msg = (f"'{self.preset.name}' diverged at iteration {t}: sample {b} has loss {float(f[b]):.4g} "
               f"(initial {float(f0[b]):.4g}); {hint}")
        raise DivergenceError(msg, algorithm=self.preset.name, iteration=t, sample=b,
                              step=self.rule.describe() if self.rule is not None else None,
                              loss=float(f[b]), initial_loss=float(f0[b]), log=self.log,
                              x=self._view(x_prev))

    # ------------------------------------------------------------------ main loop
    def run(self) -> Reconstruction:
        B, dev = self.B, self.device
        x = self.x0
        fam = self.preset.family
        active = torch.ones(B, dtype=torch.bool, device=dev)
        converged = torch.zeros(B, dtype=torch.bool, device=dev)
        iterations = torch.full((B,), self.max_iter, dtype=torch.int64, device=dev)
        rdt = self.op.real_dtype
        zero = torch.zeros(B, dtype=rdt, device=dev)
        nan = torch.full((B,), float("nan"), dtype=rdt, device=dev)

        if fam == "hio":
            self.core.start(x)
        ev = self.loss.evaluate(x, self.data)
        f, G, r = ev.value, ev.grad, ev.r
        res = self.loss.residual(ev.fields, self.data)
        f0 = f.clone()
        self.f_floor = 1e-12 * float(self.data.y_pos.abs().mean()) ** (2 if self.loss.scale_power == 2 else 1) \
            if self.data.y_pos.numel() else 1e-300
        self.f_floor = max(self.f_floor, 1e-300)
        self.f_limit = f0 + DIVERGENCE_FACTOR * f0.abs().clamp_min(self.f_floor)
        gnorm = norm2(G).sqrt()
        self._record(0, x, f, gnorm, zero, res)

        bar = None
        if self.progress and self.max_iter > 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.max_iter, desc=self.preset.name, leave=False, dynamic_ncols=True)
        t = 0
        try:
            for t in range(1, self.max_iter + 1):
                x_prev, f_prev, res_prev = x, f, res
                if fam in ("gradient", "lbfgs"):
                    alpha, x_new, _, cache = self.core.step(t, x, f, G, self._trial_eval(x, r), active, r, self.project)
                    x_new = where_sample(active, x_new, x)
                    ev = self.loss.evaluate(x_new, self.data, r=cache)
                    x, f, G, r = x_new, ev.value, ev.grad, ev.r
                    gnorm_t = norm2(G).sqrt()
                else:
                    alpha = nan
                    if fam == "gs":
                        x_new = self.core.step(x, r * math.sqrt(self.op.entry_energy))
                    else:
                        x_new = self.core.step()
                    if x_new.is_complex() and not x.is_complex():
                        x_new = x_new.real
                    x_new = where_sample(active, x_new, x)
                    ev = self.loss.evaluate(x_new, self.data, grad=False)
                    x, f, r = x_new, ev.value, ev.r
                    gnorm_t = None                         # computed only when recorded (one Aᴴ)
                bad = self._diverging(f, active)
                res = self.loss.residual(ev.fields, self.data)
                step_t = torch.where(active, alpha.to(rdt), zero)
                if self.tol > 0:
                    stop = active & ((res <= self.tol) | ((res - res_prev).abs() <= self.tol * res_prev))
                else:
                    stop = torch.zeros_like(active)
                still = active & ~stop
                # one host read per iteration for all three decisions (a sync on an accelerator)
                any_bad, any_stop, any_left = torch.stack([bad.any(), stop.any(), still.any()]).tolist()
                if any_bad:
                    self._raise_divergence(t, f, f0, x_prev, bad)
                stopped_by_cb = False
                if self.callback is not None:
                    info = {"loss": f.reshape(self.batch), "residual": res.reshape(self.batch),
                            "active": still.reshape(self.batch)}
                    stopped_by_cb = bool(self.callback(t, self._view(x), info))
                if any_stop:
                    converged = converged | stop
                    iterations = torch.where(stop, torch.full_like(iterations, t), iterations)
                    active = still
                done = (not any_left) or stopped_by_cb or t == self.max_iter
                if t % self.log_every == 0 or done:
                    if gnorm_t is None:
                        gnorm_t = norm2(self.loss.evaluate(x, self.data, r=r).grad).sqrt()
                    self._record(t, x, f, gnorm_t, step_t, res)
                if bar is not None:
                    bar.update(1)
                    if t % 10 == 0 or done:
                        post = {"loss": f"{float(f.mean()):.3e}"}
                        if self.xt is not None:
                            post["rel_err"] = f"{float(truth_metrics(x, self.xt)[0].mean()):.2e}"
                        bar.set_postfix(post, refresh=False)
                if done:
                    if stopped_by_cb:
                        iterations = torch.where(active, torch.full_like(iterations, t), iterations)
                    break
        finally:
            if bar is not None:
                bar.close()
        self.log.config["converged"] = converged.tolist()
        self.log.config["iterations"] = iterations.tolist()
        self.log.config["wall_time"] = time.perf_counter() - self.t_start
        return Reconstruction(self._view(x), self.log, converged.reshape(self.batch),
                              iterations.reshape(self.batch), self._view(self.x0), self.preset.name)

    def _trial_eval(self, x, r):
        """Value-only evaluation at trial points, with the weights frozen at the current point x."""
        loss, data = self.loss, self.data
        frozen = {}

        def evaluate(x_try):
            if loss.adaptive_weights and "w" not in frozen:
                frozen["w"] = loss.weights(x, data, r)
            return loss.value(x_try, data, weights=frozen.get("w"))

        return evaluate


def _suggest(rule: Optional[StepRule]) -> str:
    """A smaller step to suggest in a DivergenceError message ("" when the rule has no single μ)."""
    for name in ("mu", "mu_max", "mu0"):
        v = getattr(rule, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v / 2:g}"
    return ""
