r"""Phase-retrieval losses as ``nn.Module``\ s, with closed-form gradients and autograd support.

Every loss has the form

    f(x) = (1/m) Σ_i w_i ℓ(r_i, y_i) + (λ/2)‖x‖²,     r = A x / √e,  y ← y / e,

where e = ``op.entry_energy`` (E|A_ij|²). Working with the normalised pair (A/√e, y/e) makes the
measurement vectors have unit energy per entry on every operator (for Gaussian A, e = 1 and nothing
changes), so one step size means the same on a Gaussian matrix, a coded-diffraction operator or an
oversampled FFT. The weights w_i are 1 except for the truncated/reweighted losses, where they are
computed from the current iterate and treated as constants (detached): the "gradient" of TWF, TAF
and RAF is the gradient of f with the weights frozen at the point where it is evaluated.

Calling a loss, ``loss(x, y)``, returns the per-sample values (shape = the batch shape of x and y)
through ordinary torch operations, so autograd works; :meth:`PhaseRetrievalLoss.value_and_grad`
returns the same values and the closed-form gradient (what the solvers use).

**Gradient convention.** For complex x the closed-form gradient is

    ∇f(x) = 2 ∂f/∂x̄ = ∂f/∂(Re x) + i ∂f/∂(Im x),

the conjugate Wirtinger derivative times 2. This is exactly what PyTorch autograd returns for a
real-valued function of a complex tensor, and it is the "∇f" of the Wirtinger-flow papers with
their own normalisations: e.g. the intensity loss below, (1/4m)Σ(|r|² − y)², has
∇f = (1/m) Σ (|a_iᴴx|² − y_i) a_i a_iᴴ x, which is ∂F/∂x̄ of Candès et al.'s F = (1/2m)Σ(…)² = 2f —
so ``x − (μ/‖x₀‖²) ∇f`` is literally their update. For real x (real operators, or
``real_signal=True``) the closed form is the ordinary gradient (= autograd's). With a real
operator this is again 2∂f/∂x̄: extending f to complex x, the imaginary part of 2∂f/∂x̄ vanishes
at real x and the real part is ∂f/∂x. With a complex operator and a real x it is the real part of
the complex formula (the projection of the Wirtinger gradient onto real directions). One formula
serves all cases, and every factor is tested against autograd and finite differences.

**Negative intensities** (additive noise) are accepted everywhere; each loss states how it treats
them. None of them produces NaN for y ≤ 0.

**Step-size scale.** :meth:`PhaseRetrievalLoss.step_scale` gives the factor that makes a step μ
dimensionless: 1/‖x₀‖² for the quartic intensity loss (Candès et al.'s μ/‖z₀‖²), 1 for the
amplitude and Poisson losses, whose gradients are homogeneous of degree 1 in (x, √y).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .physics.base import MeasurementOperator
from .physics.kernels import FusedPlan, Map, PointwiseMap
from .tensors import abs2, check_number, sum_dims

__all__ = ["MeasurementData", "Evaluation", "Fields", "PhaseRetrievalLoss", "IntensityLoss", "AmplitudeLoss",
           "PoissonLoss", "TruncatedPoissonLoss", "TruncatedAmplitudeLoss", "ReweightedAmplitudeLoss", "LOSSES",
           "check_intensities", "NEGATIVE_WARNING", "VarianceWeightedLoss", "variance_law"]


@dataclass
class MeasurementData:
    """Intensities prepared for a loss: normalised y/e, y₊ = max(y/e, 0) and ψ = √y₊.

    ``norm_psi`` is ‖ψ‖ per sample (the denominator of the relative amplitude residual).
    """

    y: torch.Tensor
    y_pos: torch.Tensor
    psi: torch.Tensor
    norm_psi: torch.Tensor
    #: ‖ψ‖ where positive, else 1 (the residual's divisor; formed once, not at every evaluation)
    den_psi: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.den_psi is None:
            self.den_psi = torch.where(self.norm_psi > 0, self.norm_psi, torch.ones_like(self.norm_psi))

    def take(self, part: slice) -> "MeasurementData":
        """The measurements ``part`` (a slice of the last dimension); ``norm_psi`` stays the full one."""
        return MeasurementData(self.y[..., part], self.y_pos[..., part], self.psi[..., part], self.norm_psi,
                               self.den_psi)


class Fields:
    """r = Ax/√e with |r|², |r| and sgn(r) computed once per evaluation (lazily).

    In autograd mode |r| uses ``torch.abs`` (zero subgradient at r = 0); otherwise (|r|²)^{1/2},
    which is cheaper for complex r. sgn(r) = r/|r| with sgn(0) = 0.
    """

    __slots__ = ("r", "autograd", "_a2", "_a", "_sgn", "_res")

    def __init__(self, r: torch.Tensor, autograd: bool = False) -> None:
        self.r, self.autograd = r, autograd
        self._a2 = self._a = self._sgn = None
        self._res = None        # Σ(|r| − ψ)² per sample (float64) when the evaluation's pass summed it

    @property
    def a2(self) -> torch.Tensor:
        if self._a2 is None:
            self._a2 = abs2(self.r)
        return self._a2

    @property
    def a(self) -> torch.Tensor:
        if self._a is None:
            # a2.pow(0.5) rather than a2.sqrt(): same values to an ulp, and torch's sqrt kernel
            # parallelises small tensors, which costs milliseconds per call on a busy CPU
            self._a = self.r.abs() if (self.autograd or not self.r.is_complex()) else self.a2.pow(0.5)
        return self._a

    @property
    def sgn(self) -> torch.Tensor:
        if self._sgn is None:
            if self.r.is_complex():
                a = self.a
                inv = torch.where(a > 0, 1.0 / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(a))
                self._sgn = self.r * inv
            else:
                self._sgn = torch.sign(self.r)
        return self._sgn


@dataclass
class Evaluation:
    """The result of :meth:`PhaseRetrievalLoss.evaluate`: ``value`` per sample, ``grad`` (or None),
    ``r`` = Ax/√e, the ``weights`` used (None = all ones) and ``fields`` (|r|, sgn r, cached)."""

    value: torch.Tensor
    grad: Optional[torch.Tensor]
    r: torch.Tensor
    weights: Optional[torch.Tensor]
    fields: "Fields"
    #: the value with other (frozen) weights when the evaluation was asked for it (a prepared
    #: evaluator's ``frozen=``), else None
    frozen: Optional[torch.Tensor] = None


def _owner(cls: type, name: str) -> Optional[type]:
    """The class of ``cls``'s MRO that defines attribute ``name`` (None if none does)."""
    return next((k for k in cls.__mro__ if name in k.__dict__), None)


#: a sample with more than this fraction of negative intensities gets a warning from :func:`check_intensities`
NEGATIVE_WARNING = 0.4


def check_intensities(op: MeasurementOperator, y: torch.Tensor, who: str = "y", warn: bool = True) -> None:
    """Validate intensities for ``op``: a real, finite tensor of shape ``(*batch, *measurement_shape)``.

    Negative entries are legal (additive noise makes them), but a sample with more than
    :data:`NEGATIVE_WARNING` of its entries negative gets a UserWarning: noise alone does that only at a
    standard deviation of about 4× the mean intensity or more (38 % at 3×, 42 % at 5×), while signed
    amplitudes Ax passed in place of |Ax|² make about half negative (``warn=False``: no warning). One host
    read for both checks."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{who} must be a torch.Tensor of intensities |Ax|², got {type(y).__name__}")
    if y.is_complex():
        raise ValueError(f"{who} must hold real intensities |Ax|², got a complex tensor; pass op(x) (not op.linear(x))")
    op.check_measurements(y)
    negative = (y.reshape(-1, math.prod(op.measurement_shape)) < 0).to(torch.float32).mean(1)   # per sample
    worst = negative.max() if negative.numel() else negative.new_zeros(())
    finite, worst = torch.stack([torch.isfinite(y).all().to(worst.dtype), worst]).tolist()
    if not finite:
        raise ValueError(f"{who} contains NaN or inf; remove or replace those measurements "
                         f"(e.g. y = torch.nan_to_num(y, nan=0.0)) before reconstructing")
    if warn and worst > NEGATIVE_WARNING:
        bad = (negative > NEGATIVE_WARNING).nonzero().reshape(-1)[:8].tolist()
        warnings.warn(f"{who}: {100 * worst:.0f}% of the entries of sample(s) {bad} (flattened batch index) are "
                      f"negative. Intensities |Ax|² are ≥ 0 and noise alone makes that many negative only when its "
                      f"standard deviation is several times the mean intensity; if y holds signed amplitudes Ax "
                      f"(op.linear(x)), pass op(x) = |Ax|² instead", UserWarning, stacklevel=3)


class PhaseRetrievalLoss(nn.Module):
    r"""Base class: f(x) = (1/m) Σ_i w_i ℓ(r_i, y_i) + (λ/2)‖x‖², r = Ax/√e, y ← y/e.

    Subclasses define ``_ell`` (ℓ per measurement), ``_dell`` (g_i = 2∂ℓ/∂r̄_i, the per-measurement
    gradient factor, so that ∇f = (1/m) Aᴴ(w ⊙ g)/√e + λx) and optionally ``_weights``.

    Parameters
    ----------
    op : the measurement operator (kept as a submodule; ``loss.to(dtype)`` moves it too).
    l2 : λ ≥ 0, the ridge term (λ/2)‖x‖² ("regularized" variants; 0 by default).
    """

    name = "base"
    #: the exponent p of the step scale ‖x₀‖^{-p} (2 for the quartic intensity loss, else 0)
    scale_power = 0
    #: whether the weights depend on the iterate (truncated / reweighted losses)
    adaptive_weights = False
    #: whether the weights w_i depend on measurement i alone (not on sums over all measurements),
    #: so that the gradient can be formed in one fused pass over A (:meth:`MeasurementOperator.linear_adjoint`)
    separable_weights = True

    def __init__(self, op: MeasurementOperator, l2: float = 0.0) -> None:
        super().__init__()
        if not isinstance(op, MeasurementOperator):
            raise ValueError(f"op must be a phasetorch MeasurementOperator, got {type(op).__name__}")
        l2 = check_number(l2, f"{type(self).__name__}: l2", 0.0)
        self.op = op
        self.l2 = l2

    # ------------------------------------------------------------------ data
    def prepare(self, y: torch.Tensor, warn: bool = True) -> MeasurementData:
        """Validate and normalise intensities (y/e, max(y/e, 0), √max(y/e, 0), ‖ψ‖ per sample);
        ``warn=False`` skips :func:`check_intensities`' warning on mostly negative samples (a caller
        that has given it already)."""
        if isinstance(y, MeasurementData):
            return y
        check_intensities(self.op, y, warn=warn)
        e = float(self.op.entry_energy)
        yn = y / e
        y_pos = yn.clamp_min(0)
        psi = y_pos.sqrt()
        return MeasurementData(yn, y_pos, psi, self.op.measurement_sum(y_pos).sqrt())

    def check_pair(self, x: torch.Tensor, d: MeasurementData) -> None:
        """x's batch shape and y's must broadcast (a clear error instead of a size mismatch inside torch)."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{type(self).__name__}: x must be a torch.Tensor of shape (*batch, "
                             f"{', '.join(map(str, self.op.signal_shape))}), got {type(x).__name__}")
        kx, ky = len(self.op.signal_shape), len(self.op.measurement_shape)
        if tuple(x.shape[x.dim() - kx:]) != tuple(self.op.signal_shape) or x.dim() < kx:
            raise ValueError(f"{type(self).__name__}: x has shape {tuple(x.shape)} but the operator takes signals of "
                             f"shape {tuple(self.op.signal_shape)}")
        bx, by = x.shape[: x.dim() - kx], d.y.shape[: d.y.dim() - ky]
        if bx != by:
            try:
                ok = torch.broadcast_shapes(bx, by) == bx      # y may be shared by many signals, not the reverse
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"{type(self).__name__}: x has batch shape {tuple(bx)} but y has {tuple(by)}; pass one "
                                 f"signal per y (e.g. x.expand({', '.join(map(str, (*by, *self.op.signal_shape)))})) or "
                                 f"one y for all signals") from None

    # ------------------------------------------------------------------ pieces
    def measure(self, x: torch.Tensor) -> torch.Tensor:
        """r = A x / √e (shape ``(*batch, *measurement_shape)``)."""
        return self.op.linear(x) * (1.0 / math.sqrt(self.op.entry_energy))

    def back(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1/m) Aᴴ v / √e, returned in x's dtype family (real part for a real x)."""
        return self._from_adjoint(self.op.adjoint(v), x)

    def adjoint_scale(self) -> float:
        """1/(m√e): the factor from Aᴴv to the gradient (1/m of the mean, 1/√e of r = Ax/√e)."""
        return 1.0 / (self.op.m * math.sqrt(self.op.entry_energy))

    def _from_adjoint(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """u = Aᴴv ↦ (1/m) u / √e in x's dtype family."""
        g = u * self.adjoint_scale()
        if g.is_complex() and not x.is_complex():
            g = g.real
        return g

    def _ell(self, p: "Fields", d: MeasurementData) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract: every subclass defines its own

    def _dell(self, p: "Fields", d: MeasurementData) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract: every subclass defines its own

    def _weights(self, p: "Fields", d: MeasurementData, x: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def pointwise(self, d: MeasurementData) -> Optional[PointwiseMap]:
        """The closed form of the gradient factor w ⊙ g (and of w ⊙ ℓ) as a
        :class:`~phasetorch.physics.kernels.PointwiseMap` for the fused dense C kernel, or None
        (then ``_dell``/``_weights`` run in torch). Used only where the class that defines it also
        owns (or inherits unchanged) ``_ell``, ``_dell`` and — unless the weights are given — ``_weights``."""
        return None

    def kernel_truncation(self) -> Optional[Tuple[float, float, float]]:
        """``(α_lb, α_ub, α_h)`` where the fused dense kernel forms this loss's weights itself, in the same
        read of A as the gradient (TWF's truncation, :class:`TruncatedPoissonLoss`), else None."""
        return None

    def _kernel_map(self, d: MeasurementData, weights: Optional[torch.Tensor], scale: float):
        cls = type(self)
        owner = _owner(cls, "pointwise")
        needed = ("_ell", "_dell") if weights is not None else ("_ell", "_dell", "_weights")
        if owner is None or not all(issubclass(owner, _owner(cls, name)) for name in needed):
            return None                                     # a subclass changed the loss: no closed form
        spec = self.pointwise(d)
        if spec is not None:
            spec.scale, spec.weights = scale, weights
        return spec

    def weights(self, x: torch.Tensor, y, r: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The per-measurement weights w at x (detached), or ``None`` (all ones)."""
        d = self.prepare(y)
        with torch.no_grad():
            r = self.measure(x) if r is None else r
            return self._weights(Fields(r.detach()), d, x.detach())

    def _reduce(self, per_meas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        val = self.op.measurement_mean(per_meas)
        if self.l2:
            val = val + 0.5 * self.l2 * sum_dims(abs2(x), len(self.op.signal_shape))
        return val

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor, y, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-sample values f(x) (shape = batch shape), differentiable by autograd.

        ``weights`` overrides the iterate-dependent weights (e.g. to evaluate a truncated loss
        with the mask of another point, as a line search does); by default they are computed at
        x and detached.
        """
        d = self.prepare(y)
        self.check_pair(x, d)
        r = self.measure(x)
        w = self._weights(Fields(r.detach()), d, x.detach()) if weights is None else weights
        ell = self._ell(Fields(r, autograd=True), d)
        if w is not None:
            ell = w * ell
        return self._reduce(ell, x)

    def value(self, x: torch.Tensor, y, r: Optional[torch.Tensor] = None,
              weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-sample values, r = Ax/√e) without building an autograd graph."""
        ev = self.evaluate(x, y, r, weights, grad=False)
        return ev.value, ev.r

    def value_and_grad(self, x: torch.Tensor, y, r: Optional[torch.Tensor] = None,
                       weights: Optional[torch.Tensor] = None):
        """Closed form: ``(values, grad, r, weights)``.

        ``grad`` = (1/m) Aᴴ(w ⊙ g)/√e + λx = 2∂f/∂x̄ (= autograd's gradient; the ordinary
        gradient for real x). ``r`` (= Ax/√e) may be passed to skip the forward product;
        ``weights`` overrides the iterate-dependent weights.
        """
        ev = self.evaluate(x, y, r, weights, grad=True)
        return ev.value, ev.grad, ev.r, ev.weights

    def evaluate(self, x: torch.Tensor, y, r: Optional[torch.Tensor] = None,
                 weights: Optional[torch.Tensor] = None, grad: bool = True) -> "Evaluation":
        """Values (and the closed-form gradient) at x, keeping |Ax| for reuse (see :class:`Evaluation`)."""
        d = self.prepare(y)
        self.check_pair(x, d)
        total = None
        with torch.no_grad():
            if r is None and grad and (weights is not None or self.separable_weights):
                r, g, p, w, total = self._fused_gradient(x, d, weights)
            else:
                r = self.measure(x) if r is None else r
                p = Fields(r)
                w = self._weights(p, d, x) if weights is None else weights
                g = None
                if grad:
                    gm = self._dell(p, d)
                    g = self.back(gm if w is None else w * gm, x)
            if g is not None and self.l2:
                g = g + self.l2 * x
            if total is not None:           # Σ w ℓ from the fused kernel (float64 sums)
                return Evaluation(self._reduce_total(total, x, r), g, r, w, p)
            ell = self._ell(p, d)
            if w is not None:
                ell = w * ell
            return Evaluation(self._reduce(ell, x), g, r, w, p)

    def evaluator(self, y, batch) -> Callable[[torch.Tensor], "Evaluation"]:
        """``x ↦ evaluate(x, y)`` (value, closed-form gradient, r, weights, fields) prepared once for an
        iteration loop over signals of batch shape ``batch``.

        Where the operator holds a dense A for the fused C kernel (:meth:`MeasurementOperator.kernel_matrix`)
        and this loss has a closed-form pointwise map, the kernel's arguments are set up here
        (:class:`~phasetorch.physics.kernels.FusedPlan`) and a call only runs the pass, which also applies
        the two scalings :meth:`evaluate` applies (1/(m√e) of the gradient, 1/m of the value): the same
        arithmetic, bit-identical results. TWF's weights (:meth:`kernel_truncation`) are formed in that pass,
        in one read of A where :meth:`evaluate` makes two: the same weights, r and |r|², the value and the
        gradient to rounding (summed in another order; :class:`~phasetorch.physics.kernels.FusedPlan`). Anything else —
        no such A or map, an ``x`` the plan does not fit — is :meth:`evaluate` itself. ``y`` is validated
        here; ``x`` must be the loop's own iterate (its shape is checked, its pairing with y is not)."""
        d = self.prepare(y)
        A = self.op.kernel_matrix()
        c = 1.0 / math.sqrt(self.op.entry_energy)
        own = A is not None and self.own_evaluation()
        truncation = self.kernel_truncation() if own else None
        if truncation is not None:          # weights the kernel forms itself (TWF): the map without them
            spec = self.pointwise(d)
            spec.scale = c
        else:
            spec = self._kernel_map(d, None, c) if own and self.separable_weights else None
        l2, m = self.l2, self.op.m
        reduce_sum = None if type(self.op).reduce_sum is MeasurementOperator.reduce_sum else self.op.reduce_sum
        # the gradient's 1/(m√e) and the value's 1/m in the pass (where the op sums nothing itself)
        plan = FusedPlan.build(A, spec, batch, g_scale=self.adjoint_scale(),
                               value_div=None if reduce_sum is not None else float(m),
                               truncation=truncation) if spec is not None else None

        def plain(x: torch.Tensor, frozen: Optional[torch.Tensor] = None) -> Evaluation:
            ev = self.evaluate(x, d)
            if frozen is not None:
                ev.frozen = self.frozen_value(ev, x, d, frozen)
            return ev

        if plan is None:
            return plain
        shape = (*plan.batch, *self.op.signal_shape)
        rdt = self.op.real_dtype
        c_t = torch.tensor(c, dtype=rdt)      # a 0-dim tensor (a Python scalar is wrapped at every product)
        k = len(self.op.signal_shape)

        def run(x: torch.Tensor, xf: torch.Tensor, frozen) -> Evaluation:
            # g = Aᴴv/(m√e) and, without an op's own reduce_sum, the values Σ/m in rdt come from the pass
            z, u, a2, w, total, *tz = plan(xf, frozen)
            r = (z * c_t if c != 1.0 else z).view(*plan.batch, m)
            g = u.view(shape)
            if l2:
                g = g + l2 * x
            p = Fields(r)
            p._a2 = a2
            val = total if reduce_sum is None else (reduce_sum(total) / m).to(rdt)   # = _reduce_total(...)
            fz = None
            if tz:                                  # the value with the frozen weights, from the same pass
                fz = tz[0] if reduce_sum is None else (reduce_sum(tz[0]) / m).to(rdt)
            if l2:
                ridge = 0.5 * l2 * sum_dims(abs2(x), k)
                val = val + ridge
                fz = None if fz is None else fz + ridge
            return Evaluation(val, g, r, w, p, fz)

        def evaluate(x: torch.Tensor, frozen: Optional[torch.Tensor] = None) -> Evaluation:
            """The evaluation at x; ``frozen`` weights (the current point's, of an adaptive loss): its
            ``frozen`` value too, summed in the pass (:meth:`frozen_value` up to the summation order)."""
            xf = x.reshape(plan.B, -1) if tuple(x.shape) == shape else None
            if xf is None or not plan.accepts(xf):
                return plain(x, frozen)
            odd = frozen is not None and (frozen.dtype != rdt or frozen.numel() != plan.B * m)
            in_pass = None if frozen is None or odd else frozen.contiguous()
            if torch.is_grad_enabled():
                with torch.no_grad():
                    ev = run(x, xf, in_pass)
            else:
                ev = run(x, xf, in_pass)
            if odd:                             # weights the pass cannot take: the value from the fields
                ev.frozen = self.frozen_value(ev, x, d, frozen)
            return ev

        evaluate.plan = plan                     # (the prepared pass; absent on the plain evaluate path)
        return evaluate

    def own_evaluation(self) -> bool:
        """Whether this loss evaluates through the base class's own machinery (no subclass redefines
        ``evaluate``, ``value``, ``weights`` or their pieces): then :meth:`evaluator` may prepare the pass
        and :meth:`frozen_value` may reuse an evaluation's fields."""
        return all(_owner(type(self), k) is PhaseRetrievalLoss
                   for k in ("evaluate", "value", "weights", "_reduce", "_fused_gradient", "_reduce_total",
                             "_from_adjoint"))

    def frozen_value(self, ev: "Evaluation", x: torch.Tensor, y, weights: Optional[torch.Tensor]) -> torch.Tensor:
        """f at the point ``x`` of the evaluation ``ev`` with the per-measurement ``weights`` in place of its
        own (None: all ones) — the trial value a line search compares when the weights are frozen at the
        current point. Uses ``ev``'s fields (|r|², |r|): no product with A. Equals
        ``value(x, y, r=ev.r, weights=weights)[0]`` up to the rounding of |r|²."""
        d = self.prepare(y)
        with torch.no_grad():
            ell = self._ell(ev.fields, d)
            if weights is not None:
                ell = weights * ell
            return self._reduce(ell, x)

    def _fused_gradient(self, x: torch.Tensor, d: MeasurementData, weights: Optional[torch.Tensor]):
        """``(r, ∇f without the ridge, Fields(r), w)`` from one ``op.linear_adjoint`` pass: the
        gradient factor w ⊙ g of a measurement depends on that measurement alone, so it is formed
        block by block while the operator streams through A."""
        c = 1.0 / math.sqrt(self.op.entry_energy)
        kept = {"w": []}
        spec = self._kernel_map(d, weights, c)

        def grad_factor(z, part):
            p = Fields(z * c if c != 1.0 else z)
            db = d if part is None else d.take(part)
            if weights is None:
                w = self._weights(p, db, x)
            else:
                w = weights if part is None else weights[..., part]
            gm = self._dell(p, db)
            if part is None:
                kept["fields"] = p
            kept["w"].append(w)
            return gm if w is None else w * gm

        if spec is not None:
            spec.rescale = True                     # r = c z may overwrite z (the operator's own fresh output)
            grad_factor.pointwise = spec            # the operator may run it as one fused C pass (over A or z)
        z, u = self.op.linear_adjoint(x, grad_factor)
        r = z if spec is not None and spec.rescaled or c == 1.0 else z * c
        if spec is not None and spec.done:
            p = Fields(r)
            p._a2 = spec.a2
            p._res = spec.residual_sum
            w = weights if weights is not None else spec.weights_out
            return r, self._from_adjoint(u, x), p, w, spec.total
        p = kept["fields"] if "fields" in kept else Fields(r)
        ws = kept["w"]
        w = None if ws[0] is None else (ws[0] if len(ws) == 1 else torch.cat(ws, -1))
        return r, self._from_adjoint(u, x), p, w, None

    def _reduce_total(self, total: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """:meth:`_reduce` from Σ_i w_i ℓ_i per sample (float64) instead of the per-measurement values."""
        val = (self.op.reduce_sum(total) / self.op.m).to(self.op.real_dtype)
        if self.l2:
            val = val + 0.5 * self.l2 * sum_dims(abs2(x), len(self.op.signal_shape))
        return val

    def gradient(self, x: torch.Tensor, y) -> torch.Tensor:
        """The closed-form gradient alone (see :meth:`value_and_grad`)."""
        return self.value_and_grad(x, y)[1]

    def step_scale(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-sample factor s such that a step μ means α = μ·s: 1/‖x₀‖² (intensity loss) or 1."""
        k = len(self.op.signal_shape)
        n2 = sum_dims(abs2(x0.detach()), k)
        if self.scale_power == 0:
            return torch.ones_like(n2)
        if (n2 <= 0).any():
            raise ValueError("the initial point has zero norm, so the step μ/‖x₀‖² is undefined; "
                             "start from a non-zero x₀ (e.g. init='spectral')")
        return n2.pow(-self.scale_power / 2)

    def residual(self, r, y) -> torch.Tensor:
        """Relative amplitude residual ‖|r| − ψ‖ / ‖ψ‖ per sample (‖|r|‖ when ψ = 0); r: tensor or Fields."""
        d = self.prepare(y)
        a = r if isinstance(r, Fields) else Fields(r)
        if a._res is not None and a._res.shape == d.den_psi.shape:     # summed by the evaluation's pass
            return self.op.reduce_sum(a._res).sqrt().to(d.den_psi.dtype) / d.den_psi
        return self.op.measurement_sum((a.a - d.psi).square()).sqrt() / d.den_psi      # ψ = 0: ‖|r|‖ / 1

    def hyperparameters(self) -> dict:
        """The loss's parameters (for logs)."""
        return {"loss": self.name, "l2": self.l2}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items() if k != "loss")


class IntensityLoss(PhaseRetrievalLoss):
    r"""Wirtinger-flow intensity loss f(x) = (1/4m) Σ_i (|a_iᴴx|² − y_i)² + (λ/2)‖x‖².

    ∇f = (1/m) Σ_i (|a_iᴴx|² − y_i) a_i a_iᴴ x + λx (Candès, Li & Soltanolkotabi, "Phase retrieval
    via Wirtinger flow", IEEE Trans. Inf. Theory 61, 2015; their F = (1/2m)Σ(…)² = 2f has ∂F/∂x̄
    equal to this ∇f). With ``l2 > 0`` this is the "regularized WF" objective of the DMFT theory
    (:mod:`phasetorch.theory`): L(x) = (1/m)Σ(r² − y)²/4 + (λ/2)‖x‖².

    Negative y: used as is (the quartic is defined for any y; a negative y_i pulls |a_iᴴx|² towards
    0 as hard as the data allow).
    """

    name = "intensity"
    scale_power = 2

    def _ell(self, p, d):
        return 0.25 * (p.a2 - d.y).square()

    def _dell(self, p, d):
        return (p.a2 - d.y) * p.r

    def pointwise(self, d):
        return PointwiseMap(Map.INTENSITY, d.y)


class AmplitudeLoss(PhaseRetrievalLoss):
    r"""Amplitude loss f(x) = (1/2m) Σ_i (|a_iᴴx| − √y_i)² + (λ/2)‖x‖².

    ∇f = (1/m) Σ_i (a_iᴴx − √y_i · sgn(a_iᴴx)) a_i + λx with sgn(r) = r/|r| (sgn(0) = 0, the
    subgradient autograd uses). Reshaped WF (Zhang & Liang, NeurIPS 2016) and amplitude flow
    (Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64, 2018) descend this loss; for an
    operator with AᴴA = I (normalised) one step of size 1 is the Gerchberg–Saxton/error-reduction
    update x ← Aᴴ(√y ⊙ sgn(Ax)).

    Negative y: √y is taken as √max(y, 0).
    """

    name = "amplitude"

    def _ell(self, p, d):
        return 0.5 * (p.a - d.psi).square()

    def _dell(self, p, d):
        return p.r - d.psi * p.sgn

    def pointwise(self, d):
        return PointwiseMap(Map.AMPLITUDE, d.psi)


class PoissonLoss(PhaseRetrievalLoss):
    r"""Poisson negative log-likelihood f(x) = (1/m) Σ_i (|a_iᴴx|² − y_i log|a_iᴴx|²) + (λ/2)‖x‖².

    The likelihood of y_i ~ Poisson(|a_iᴴx|²) up to x-independent terms (Chen & Candès, "Solving
    random quadratic systems of equations is nearly as easy as solving linear systems", Comm. Pure
    Appl. Math. 70, 2017). ∇f = (1/m) Σ_i 2(|a_iᴴx|² − y_i)/(a_iᴴx)^* · a_i + λx, i.e. minus the
    paper's (1/m)Σ∇ℓ_i; the TWF update z + (μ/m)Σ∇ℓ_i is x − μ∇f.

    Negative y: replaced by max(y, 0) (a Poisson count is ≥ 0, and −y log|r|² with y < 0 would be
    unbounded below). |a_iᴴx|² is floored at the smallest positive float inside the logarithm; the
    gradient of a measurement with |a_iᴴx|² below that floor is 2r_i (the log term is constant there).
    """

    name = "poisson"

    def _ell(self, p, d):
        a2 = p.a2
        return a2 - d.y_pos * torch.log(a2.clamp_min(torch.finfo(a2.dtype).tiny))

    def _dell(self, p, d):
        a2 = p.a2
        ok = a2 >= torch.finfo(a2.dtype).tiny
        inv = torch.where(ok, 1.0 / torch.where(ok, a2, torch.ones_like(a2)), torch.zeros_like(a2))
        return (2 - 2 * d.y_pos * inv) * p.r

    def pointwise(self, d):
        return PointwiseMap(Map.POISSON, d.y_pos)


class TruncatedPoissonLoss(PoissonLoss):
    r"""Poisson loss restricted to the TWF index set (Chen & Candès 2017, Algorithm 1).

    w_i = 1{E₁ⁱ ∩ E₂ⁱ} with, at the current x (normalised units, ‖a_i‖ ≈ √n replacing the paper's
    √n/‖a_i‖ factor as PhasePack and solvephase do):

        E₁ⁱ: α_lb ≤ |a_iᴴx| / ‖x‖ ≤ α_ub,
        E₂ⁱ: |y_i − |a_iᴴx|²| ≤ α_h · K · |a_iᴴx| / ‖x‖,  K = (1/m) Σ_l |y_l − |a_lᴴx|²|.

    Defaults α_lb = 0.3, α_ub = 5, α_h = 5 (the paper's). The loss value is (1/m) Σ_{i∈E} ℓ_i (not
    divided by |E|), so the gradient is the TWF direction exactly. Negative y: max(y, 0) as
    :class:`PoissonLoss` (in K as well).
    """

    name = "poisson_truncated"
    adaptive_weights = True
    separable_weights = False          # K is a mean over all measurements

    def __init__(self, op: MeasurementOperator, alpha_lb: float = 0.3, alpha_ub: float = 5.0,
                 alpha_h: float = 5.0, l2: float = 0.0) -> None:
        super().__init__(op, l2)
        alpha_lb, alpha_ub, alpha_h = (check_number(v, f"{type(self).__name__}: {nm}", 0.0, strict=True)
                                       for nm, v in (("alpha_lb", alpha_lb), ("alpha_ub", alpha_ub), ("alpha_h", alpha_h)))
        if alpha_lb >= alpha_ub:
            raise ValueError(f"alpha_lb ({alpha_lb}) must be smaller than alpha_ub ({alpha_ub})")
        self.alpha_lb, self.alpha_ub, self.alpha_h = float(alpha_lb), float(alpha_ub), float(alpha_h)

    def _weights(self, p, d, x):
        k = len(self.op.measurement_shape)
        nx = sum_dims(abs2(x), len(self.op.signal_shape)).sqrt()
        nx = nx.reshape(*nx.shape, *([1] * k))
        ar = p.a
        ratio = ar / nx.clamp_min(torch.finfo(ar.dtype).tiny)
        dev = (d.y_pos - p.a2).abs()
        K = self.op.measurement_mean(dev).reshape(*nx.shape)
        keep = (ratio >= self.alpha_lb) & (ratio <= self.alpha_ub) & (dev <= self.alpha_h * K * ratio)
        return keep.to(ar.dtype)

    def hyperparameters(self):
        return {**super().hyperparameters(), "alpha_lb": self.alpha_lb, "alpha_ub": self.alpha_ub,
                "alpha_h": self.alpha_h}

    def kernel_truncation(self):
        # the kernel's closed form is this class's (E₁ ∩ E₂ on PoissonLoss's ℓ and ∇ℓ): not a subclass's changes
        cls = type(self)
        if _owner(cls, "_weights") is not TruncatedPoissonLoss or any(
                _owner(cls, name) is not PoissonLoss for name in ("_ell", "_dell", "pointwise")):
            return None
        return self.alpha_lb, self.alpha_ub, self.alpha_h


class TruncatedAmplitudeLoss(AmplitudeLoss):
    r"""Amplitude loss on TAF's index set (Wang, Giannakis & Eldar, "Solving systems of random
    quadratic equations via truncated amplitude flow", IEEE Trans. Inf. Theory 64, 2018, Alg. 1).

    w_i = 1{|a_iᴴx| ≥ √y_i / (1 + γ)}, γ = 0.7: measurements whose current amplitude is far below the
    data are dropped (for real data their sign is likely wrong). Value (1/2m) Σ_{i∈I} (|a_iᴴx| − √y_i)².
    Negative y: √max(y, 0) (such measurements are always kept).
    """

    name = "amplitude_truncated"
    adaptive_weights = True

    def __init__(self, op: MeasurementOperator, gamma: float = 0.7, l2: float = 0.0) -> None:
        super().__init__(op, l2)
        self.gamma = check_number(gamma, f"{type(self).__name__}: gamma", 0.0, strict=True)

    def _weights(self, p, d, x):
        return (p.a * (1 + self.gamma) >= d.psi).to(d.psi.dtype)

    def pointwise(self, d):
        return PointwiseMap(Map.TRUNCATED_AMPLITUDE, d.psi, p0=self.gamma)

    def hyperparameters(self):
        return {**super().hyperparameters(), "gamma": self.gamma}


class ReweightedAmplitudeLoss(AmplitudeLoss):
    r"""Reweighted amplitude loss of RAF (Wang, Giannakis, Saad & Chen, "Phase retrieval via
    reweighted amplitude flow", IEEE Trans. Signal Process. 66, 2018, eq. (14)).

    w_i = 1 / (1 + β ψ_i / |a_iᴴx|) = |a_iᴴx| / (|a_iᴴx| + β ψ_i), ψ_i = √y_i: small weights for
    measurements whose current amplitude is small relative to the data. Value
    (1/2m) Σ_i w_i (|a_iᴴx| − ψ_i)². ``beta`` defaults to 10 (the paper's value for real data; the
    ``raf`` preset uses 5 for complex data, PhasePack's choice). Negative y: ψ = √max(y, 0);
    w_i = 1 when |a_iᴴx| = ψ_i = 0.
    """

    name = "amplitude_reweighted"
    adaptive_weights = True

    def __init__(self, op: MeasurementOperator, beta: float = 10.0, l2: float = 0.0) -> None:
        super().__init__(op, l2)
        self.beta = check_number(beta, f"{type(self).__name__}: beta", 0.0)

    def _weights(self, p, d, x):
        ar = p.a
        den = ar + self.beta * d.psi
        return torch.where(den > 0, ar / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))

    def pointwise(self, d):
        return PointwiseMap(Map.REWEIGHTED_AMPLITUDE, d.psi, p1=self.beta)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta}


def variance_law(mu: torch.Tensor, y: torch.Tensor, k: int, floor: float = 1e-3,
                 op: Optional[MeasurementOperator] = None):
    r"""Per-sample (a, b) of the variance law Var(y_i) ≈ a + b·μ_i fitted to the residuals y − μ.

    Least squares of e_i² = (y_i − μ_i)² on (1, μ_i) over the trailing ``k`` (measurement)
    dimensions, with a, b ≥ 0 (the boundary solution when the unconstrained one is negative):
    additive noise gives b ≈ 0, shot noise a ≈ 0 and b ≈ 1/(photons per unit intensity). ``a`` is
    floored at ``floor``·(a + b·mean μ) so the variance never vanishes at μ = 0 (zero counts).
    Returns two tensors of the batch shape. ``op``: the operator the measurements belong to; its
    sums over measurements are used (all ``op.m`` of them for a sharded operator).
    """
    mu, e2 = mu.to(torch.float64), (y.to(torch.float64) - mu.to(torch.float64)).square()
    if op is None:
        n = float(math.prod(mu.shape[mu.dim() - k:]))
        s1, s2 = sum_dims(mu, k), sum_dims(mu.square(), k)
        t0, t1 = sum_dims(e2, k), sum_dims(mu * e2, k)
    else:
        n = float(op.m)
        s1, s2, t0, t1 = op.measurement_sum(torch.stack([mu, mu.square(), e2, mu * e2])).unbind(0)
    det = n * s2 - s1 * s1
    safe = torch.where(det > 0, det, torch.ones_like(det))
    a = torch.where(det > 0, (s2 * t0 - s1 * t1) / safe, t0 / n)
    b = torch.where(det > 0, (n * t1 - s1 * t0) / safe, torch.zeros_like(det))
    only_a = b < 0                                        # boundary b = 0: a = mean e²
    a, b = torch.where(only_a, t0 / n, a), torch.where(only_a, torch.zeros_like(b), b)
    only_b = a < 0                                        # boundary a = 0: b = Σμe² / Σμ²
    b = torch.where(only_b, t1 / torch.where(s2 > 0, s2, torch.ones_like(s2)), b)
    a = torch.where(only_b, torch.zeros_like(a), a)
    a = torch.maximum(a, floor * (a + b * s1 / n))
    tiny = torch.finfo(torch.float64).tiny
    return a.clamp_min(tiny), b


class VarianceWeightedLoss(PhaseRetrievalLoss):
    r"""Gaussian quasi-likelihood of intensities with the variance law v_i = a + b·|a_iᴴx|²:

        f(x) = (1/m) Σ_i [ (|a_iᴴx|² − y_i)² / (2 v_i) + ½ log v_i ] + (λ/2)‖x‖²,

    the negative log-likelihood of y_i ~ N(μ_i, a + b μ_i), μ_i = |a_iᴴx|² (normalised units). b = 0 is
    the intensity least squares (additive noise, :class:`IntensityLoss` up to the factor 2a); a = 0 the
    Gaussian approximation of shot noise (variance ∝ mean, the quasi-likelihood of McCullagh & Nelder,
    *Generalized Linear Models*, 1989, ch. 9). ``a`` and ``b`` are per-sample tensors (batch shape,
    in the normalised units y/e), e.g. from :func:`variance_law`. ∇f = (1/m)Σ 2ℓ'(μ_i) a_i a_iᴴx + λx
    with ℓ'(μ) = (μ − y)/v − b(μ − y)²/(2v²) + b/(2v). Negative y: used as is.
    """

    name = "variance_weighted"
    scale_power = 2

    def __init__(self, op: MeasurementOperator, a: torch.Tensor, b: torch.Tensor, l2: float = 0.0) -> None:
        super().__init__(op, l2)
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()) or (a <= 0).any() or (b < 0).any():
            raise ValueError("VarianceWeightedLoss needs finite a > 0 and b ≥ 0 (the variance law a + b·μ)")
        self.a, self.b = a, b

    def _law(self, p):
        k = len(self.op.measurement_shape)
        shape = tuple(self.a.shape) + (1,) * k
        a = self.a.to(device=p.a2.device, dtype=p.a2.dtype).reshape(shape)
        b = self.b.to(device=p.a2.device, dtype=p.a2.dtype).reshape(shape)
        return a, b

    def _ell(self, p, d):
        a, b = self._law(p)
        v = a + b * p.a2
        return 0.5 * (p.a2 - d.y).square() / v + 0.5 * torch.log(v)

    def _dell(self, p, d):
        a, b = self._law(p)
        v = a + b * p.a2
        dev = p.a2 - d.y
        return 2 * (dev / v - 0.5 * b * dev.square() / v.square() + 0.5 * b / v) * p.r

    def step_scale(self, x0: torch.Tensor) -> torch.Tensor:
        """s = (a + b‖x₀‖²)/‖x₀‖²: the intensity loss's 1/‖x₀‖² times the mean variance a + b·E|r_i|²
        (E|r_i|² = ‖x‖² in normalised units), the inverse curvature scale of (μ − y)²/(2v)."""
        n2 = sum_dims(abs2(x0.detach()), len(self.op.signal_shape))
        if (n2 <= 0).any():
            raise ValueError("the initial point has zero norm, so the step scale is undefined; start from a non-zero x₀")
        a = self.a.to(device=n2.device, dtype=n2.dtype).reshape(n2.shape)
        b = self.b.to(device=n2.device, dtype=n2.dtype).reshape(n2.shape)
        return (a + b * n2) / n2

    def hyperparameters(self):
        return {**super().hyperparameters(), "a": self.a.tolist(), "b": self.b.tolist()}


LOSSES = {cls.name: cls for cls in (IntensityLoss, AmplitudeLoss, PoissonLoss, TruncatedPoissonLoss,
                                    TruncatedAmplitudeLoss, ReweightedAmplitudeLoss)}
