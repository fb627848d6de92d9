r"""The algorithm registry of :func:`phasetorch.reconstruct`: one entry per named algorithm.

Each preset fixes the loss, the update, the default step and the default initialisation of its
paper. ``step=μ`` always means α = μ·s with s from the loss (1/‖x₀‖² for the intensity loss, 1
otherwise; see :mod:`phasetorch.optim.steps`).

========  ===========================================  ======================================  ==========================
name      loss / update                                default step                            default init (spectral T)
========  ===========================================  ======================================  ==========================
``wf``    intensity, gradient descent                  ramp min(1−e^{−t/330}, 0.2)/‖x₀‖²       ``identity``
``twf``   truncated Poisson (α_lb .3, α_ub 5, α_h 5)   0.2                                     ``trimmed``
``rwf``   amplitude                                    0.8                                     RWF truncation 1 < ŷ < 25
``taf``   truncated amplitude (γ = 0.7)                0.6 (real), 1 (complex)                 ``orthogonality``
``raf``   reweighted amplitude (β = 10 real, 5 cplx)   6 (real), 4 (complex)                   ``weighted``
``af``    amplitude                                    0.6 (real), 1 (complex)                 ``orthogonality``
``gs``    error reduction x ← Π_C(A⁺ P_M(Ax))          —                                       ``identity``
``hio``   Fienup HIO, β = 0.9                          —                                       random phases
``lbfgs`` amplitude, batched L-BFGS (memory 10)        Armijo from 1 (first step 0.5)          ``mm`` (Lanczos tol 0.1)
``auto``  lbfgs, then L-BFGS on the variance-weighted  as lbfgs                                 as lbfgs
          quasi-likelihood (a + b|Ax|² fitted to the
          residuals) for data not fitted exactly
========  ===========================================  ======================================  ==========================

References: WF — Candès, Li & Soltanolkotabi, IEEE Trans. Inf. Theory 61 (2015); TWF — Chen &
Candès, Comm. Pure Appl. Math. 70 (2017); RWF — Zhang & Liang, NeurIPS 2016; TAF/AF — Wang,
Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018) (μ = 0.6 for real data; the complex amplitude
loss has about half the real one's curvature at the solution — only the part of a_iᴴh in phase
with a_iᴴx counts — hence μ = 1 for complex data); RAF — Wang, Giannakis, Saad & Chen, IEEE Trans.
Signal Process. 66 (2018) (β = 10 real, 5 complex as in PhasePack; near the solution the weights are
1/(1+β), so the effective step is μ/(1+β)); GS — Gerchberg & Saxton, Optik 35 (1972), with the
spectral start of Netrapalli, Jain & Sanghavi (NeurIPS 2013); HIO — Fienup, Appl. Opt. 21 (1982);
L-BFGS — Liu & Nocedal, Math. Program. 45 (1989), on the amplitude loss, started from the
Mondelli–Montanari ``mm`` spectral estimate (Found. Comput. Math. 19, 2019) with Lanczos stopped at
a residual of 10⁻¹·θ. Measured iteration counts and timings are in ``results/`` and the benchmark.

A preset is the ONLY place where an algorithm's defaults live: its loss, its algorithm builder,
its hyper-parameters (``options``/``options_complex``), its default step μ and its spectral
start. :func:`phasetorch.reconstruct` and the ``torch.optim`` adapters of
:mod:`phasetorch.optim.adapter` both read them. Adding an algorithm is one :class:`Preset` here
(and, if its update is new, one :class:`~phasetorch.optim.engine.Algorithm` class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .. import losses as L
from ..physics.base import MeasurementOperator
from .engine import Algorithm
from .gradient import GradientAlgorithm
from .lbfgs import LBFGSAlgorithm
from .projections import Constraint, ErrorReduction, HybridInputOutputAlgorithm, tight_frame_constant
from .steps import Constant, Safeguarded, Schedule, StepRule, WFRamp, make_step_rule

__all__ = ["Preset", "PRESETS", "get_preset", "rwf_truncation", "Setting"]


def rwf_truncation(yhat: torch.Tensor) -> torch.Tensor:
    r"""RWF's truncated spectral weights T(ŷ) = ŷ·1{α_l² < ŷ < α_u²}, α_l = 1, α_u = 5.

    Zhang & Liang 2016 keep measurements with α_l λ₀ < √y_i < α_u λ₀, λ₀ an estimate of ‖x‖;
    with ŷ = y/mean(y) (mean(y) ≈ ‖x‖² in normalised units) that is 1 < ŷ < 25.
    """
    return yhat * ((yhat > 1.0) & (yhat < 25.0)).to(yhat.dtype)


@dataclass
class Setting:
    """What a builder needs to know of the problem: the operator, ψ = √max(y, 0) as ``(B, *meas)``,
    the object constraint and whether the signal is complex."""

    op: MeasurementOperator
    psi: torch.Tensor
    constraint: Constraint
    complex_signal: bool


#: builder(setting, options, mu, step, schedule) -> Algorithm
Builder = Callable[[Setting, Dict[str, Any], float, Any, Any], Algorithm]


def safeguard(rule: StepRule, opts: Dict[str, Any]) -> StepRule:
    """``rule`` made monotone (:class:`~phasetorch.optim.steps.Safeguarded`) when ``opts["safeguard"]`` and
    it is a fixed-step rule (constant, schedule, WF ramp; line searches and user rules are left alone)."""
    if opts.get("safeguard", False) and isinstance(rule, (Constant, Schedule, WFRamp)):
        return Safeguarded(rule)
    return rule


def constant_gradient(setting, opts, mu, step, schedule) -> Algorithm:
    """Gradient descent, constant step μ by default (``step=``/``schedule=`` choose another rule)."""
    return GradientAlgorithm(safeguard(make_step_rule(step, schedule, default=make_step_rule(mu), mu0=mu), opts))


def ramp_gradient(setting, opts, mu, step, schedule) -> Algorithm:
    """Gradient descent with Candès's ramp μ_t = min(1 − e^{−t/τ₀}, μ_max) by default."""
    default = WFRamp(opts["tau0"], opts["mu_max"])
    return GradientAlgorithm(safeguard(make_step_rule(step, schedule, default=default, mu0=mu), opts))


def lbfgs(setting, opts, mu, step, schedule) -> Algorithm:
    """Batched L-BFGS with Armijo backtracking (first step μ₀ = μ)."""
    return LBFGSAlgorithm(memory=opts["memory"], mu0=mu)


def error_reduction(setting, opts, mu, step, schedule) -> Algorithm:
    """Error reduction / Gerchberg–Saxton."""
    return ErrorReduction(setting.op, setting.psi, setting.constraint, opts["cg_steps"],
                          tight_frame_constant(setting.op))


def hybrid_input_output(setting, opts, mu, step, schedule) -> Algorithm:
    """Fienup's HIO with feedback β."""
    return HybridInputOutputAlgorithm(setting.op, setting.psi, setting.constraint, opts["beta"], opts["cg_steps"],
                                      tight_frame_constant(setting.op))


def variance_refinement(loss: L.PhaseRetrievalLoss, data: L.MeasurementData, x: torch.Tensor,
                        previous: Optional[L.VarianceWeightedLoss] = None, rtol: float = 0.05):
    """The quasi-likelihood stage: (:class:`~phasetorch.losses.VarianceWeightedLoss` with the variance
    law a + b·μ fitted to the residuals at x (:func:`~phasetorch.losses.variance_law`), per-sample bool:
    whether (a, b) moved by more than ``rtol`` from ``previous``'s — all True in the first round)."""
    ev = loss.evaluate(x, data, grad=False)
    a, b = L.variance_law(ev.fields.a2, data.y, len(loss.op.measurement_shape), op=loss.op)
    new = L.VarianceWeightedLoss(loss.op, a, b, l2=loss.l2)
    if previous is None:
        return new, torch.ones(a.shape, dtype=torch.bool)
    mean_mu = loss.op.measurement_mean(ev.fields.a2).to(a.dtype)
    scale = previous.a + previous.b * mean_mu                          # the mean variance, per sample
    moved = ((a - previous.a).abs() + (b - previous.b).abs() * mean_mu) > rtol * scale
    return new, moved


@dataclass(frozen=True)
class Preset:
    """One named algorithm: its builder, its loss and every default.

    ``options`` are the tunable hyper-parameters with their defaults (``options_complex``
    overrides for complex signals); :func:`phasetorch.reconstruct` accepts them as keyword arguments.
    ``mu``/``mu_complex`` is the default step μ, or ``mu_option`` names the option that holds it.
    ``loss_choices``: the losses the ``loss`` option may name (empty: the loss is fixed).
    ``projection``: a projection method (object constraint + measurement projection; no step, no ridge).
    ``needs_support``: meaningful only with an object support (HIO's feedback acts outside it).
    """

    name: str
    title: str
    reference: str
    build: Builder
    loss: str
    preprocessing: Union[str, Callable, None]
    init: str = "spectral"
    loss_options: Tuple[str, ...] = ()
    loss_choices: Tuple[str, ...] = ()
    mu: float = 1.0
    mu_complex: Optional[float] = None
    mu_option: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    options_complex: Dict[str, Any] = field(default_factory=dict)
    #: default keyword arguments of spectral_init for init="spectral" (user spectral_options override)
    spectral: Dict[str, Any] = field(default_factory=dict)
    projection: bool = False
    needs_support: bool = False
    #: the spectral preprocessing on operators that are not i.i.d. Gaussian (None: ``preprocessing``)
    preprocessing_other: Union[str, Callable, None] = None
    #: an optional second stage for the samples the first stage did not fit: refine(loss, data, x, previous)
    #: -> (the loss to minimise next from x by a fresh algorithm from ``build``, per-sample bool: still moving)
    refine: Optional[Callable] = None

    def start_for(self, gaussian_design: bool):
        """The default spectral preprocessing on an i.i.d. Gaussian design (the paper's) or on another operator."""
        if gaussian_design or self.preprocessing_other is None:
            return self.preprocessing
        return self.preprocessing_other

    def defaults(self, complex_signal: bool) -> Dict[str, Any]:
        """The hyper-parameters with their defaults for a real or complex signal."""
        out = dict(self.options)
        if complex_signal:
            out.update(self.options_complex)
        return out

    def step_mu(self, complex_signal: bool, opts: Optional[Dict[str, Any]] = None) -> float:
        """The default step μ (from ``opts`` when the preset keeps it in an option)."""
        if self.mu_option is not None:
            return float((opts if opts is not None else self.defaults(complex_signal))[self.mu_option])
        return self.mu_complex if (complex_signal and self.mu_complex is not None) else self.mu

    def loss_class(self, opts: Dict[str, Any]) -> type:
        """The loss class for these options (``opts["loss"]`` when the preset lets the user choose)."""
        name = opts.get("loss", self.loss) if self.loss_choices else self.loss
        if self.loss_choices and name not in self.loss_choices:
            raise ValueError(f"{self.name} works on loss={' or '.join(repr(c) for c in self.loss_choices)}, "
                             f"got {name!r}")
        return L.LOSSES[name]

    def make_loss(self, op, l2: float, opts: Dict[str, Any]) -> L.PhaseRetrievalLoss:
        """The preset's loss on ``op`` with ridge ``l2`` and the loss options among ``opts``."""
        kwargs = {k: opts[k] for k in self.loss_options if k in opts}
        return self.loss_class(opts)(op, l2=l2, **kwargs)


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("wf", "Wirtinger flow", "Candès, Li & Soltanolkotabi, IEEE Trans. Inf. Theory 61 (2015)",
           ramp_gradient, "intensity", "identity", preprocessing_other="optimal", mu_option="mu_max", options={"tau0": 330.0, "mu_max": 0.2, "safeguard": True}),
    Preset("twf", "Truncated Wirtinger flow", "Chen & Candès, Comm. Pure Appl. Math. 70 (2017)",
           constant_gradient, "poisson_truncated", "trimmed", preprocessing_other="optimal",
           loss_options=("alpha_lb", "alpha_ub", "alpha_h"),
           mu=0.2, options={"alpha_lb": 0.3, "alpha_ub": 5.0, "alpha_h": 5.0, "safeguard": True}),
    Preset("rwf", "Reshaped Wirtinger flow", "Zhang & Liang, NeurIPS 2016",
           constant_gradient, "amplitude", rwf_truncation, preprocessing_other="optimal", mu=0.8, options={"safeguard": True}),
    Preset("taf", "Truncated amplitude flow", "Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018)",
           constant_gradient, "amplitude_truncated", "orthogonality", loss_options=("gamma",), mu=0.6,
           mu_complex=1.0, options={"gamma": 0.7, "safeguard": True}),
    Preset("raf", "Reweighted amplitude flow", "Wang, Giannakis, Saad & Chen, IEEE Trans. Signal Process. 66 (2018)",
           constant_gradient, "amplitude_reweighted", "weighted", loss_options=("beta",), mu=6.0, mu_complex=4.0,
           options={"beta": 10.0, "safeguard": True}, options_complex={"beta": 5.0}),
    Preset("af", "Amplitude flow", "Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018)",
           constant_gradient, "amplitude", "orthogonality", mu=0.6, mu_complex=1.0, options={"safeguard": True}),
    Preset("gs", "Gerchberg–Saxton / error reduction",
           "Gerchberg & Saxton, Optik 35 (1972); Fienup, Appl. Opt. 21 (1982)",
           error_reduction, "amplitude", "identity", preprocessing_other="optimal", options={"cg_steps": 3},
           projection=True),
    Preset("hio", "Hybrid input–output", "Fienup, Appl. Opt. 21 (1982)",
           hybrid_input_output, "amplitude", "identity", init="random", mu_option="beta",
           options={"beta": 0.9, "cg_steps": 3}, projection=True, needs_support=True),
    Preset("lbfgs", "L-BFGS", "Liu & Nocedal, Math. Program. 45 (1989)",
           lbfgs, "amplitude", "mm", loss_choices=("amplitude", "intensity"), mu=0.5,
           options={"memory": 10, "loss": "amplitude"}, spectral={"tol": 1e-1}),
    Preset("auto", "Noise-adaptive L-BFGS",
           "Liu & Nocedal (1989); quasi-likelihood: McCullagh & Nelder, Generalized Linear Models (1989)",
           lbfgs, "amplitude", "mm", mu=0.5, options={"memory": 10}, spectral={"tol": 1e-1},
           refine=variance_refinement),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError listing the choices otherwise)."""
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name.lower()]
