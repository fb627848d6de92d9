r"""``torch.optim.Optimizer`` adapters over the algorithms of :mod:`phasetorch.optim.engine`.

The contract is torch's: the step size μ is ``param_groups[0]["lr"]`` (so ``StepLR``,
``LambdaLR`` and every other scheduler act on it), every piece of state is a tensor in
``self.state[x]`` (``torch.save(opt.state_dict())`` → ``torch.load(..., weights_only=True)`` →
``load_state_dict`` continues bit-identically), and ``step(closure)`` re-evaluates the loss::

    x = x0.clone().requires_grad_(True)
    loss = phasetorch.losses.IntensityLoss(op)
    opt = phasetorch.optim.WirtingerFlow([x], batch_dims=1)
    for _ in range(500):
        def closure():
            opt.zero_grad()
            f = loss(x, y)          # one value per sample
            f.sum().backward()
            return f
        opt.step(closure)

Any differentiable function of x works as the loss (e.g. a data term plus total variation).
Every optimizer acts on ONE tensor x of shape ``(*batch, *signal)`` with ``batch_dims`` leading
batch dimensions; step sizes, line searches and curvature memories are per sample, so a batch gives
what B single runs give. A second tensor or param group is refused (stack signals into one tensor).

Defaults come from :mod:`phasetorch.optim.presets` (the class's ``preset``), never from the class:
e.g. :class:`TruncatedAmplitudeFlow` takes μ = 0.6 on real and μ = 1 on complex x, as the ``taf``
preset does. ``schedule=`` (a callable t ↦ factor) is kept on the optimizer, not in ``state_dict``;
prefer ``torch.optim.lr_scheduler.LambdaLR``, which is saved with its own state.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch.optim import Optimizer

from ..physics.base import MeasurementOperator
from ..tensors import check_int, check_number, norm2
from .engine import Algorithm, StepContext
from .gradient import GradientAlgorithm
from .lbfgs import LBFGSAlgorithm
from .presets import get_preset
from .projections import Constraint, ErrorReduction, HybridInputOutputAlgorithm, tight_frame_constant
from .steps import RULE_NAMES, Armijo, BarzilaiBorwein, Constant, Safeguarded, Schedule, StepRule, WFRamp

__all__ = ["PhaseOptimizer", "GradientDescent", "WirtingerFlow", "TruncatedWirtingerFlow", "ReshapedWirtingerFlow",
           "AmplitudeFlow", "TruncatedAmplitudeFlow", "ReweightedAmplitudeFlow", "LBFGS", "GerchbergSaxton",
           "HybridInputOutput"]


class PhaseOptimizer(Optimizer):
    """Base of the adapters: one tensor, per-sample tensor state, μ in ``lr``.

    Subclasses implement :meth:`algorithm` (build the :class:`~phasetorch.optim.engine.Algorithm`
    from the param group's plain-number hyper-parameters) and :meth:`step_scale`.

    **Closures** follow the torch convention (``closure()`` re-evaluates the loss and fills
    ``x.grad``) with one extension: with ``batch_dims > 0`` the closure returns the per-sample
    losses (shape ``x.shape[:batch_dims]``) and calls ``backward`` on their sum.
    """

    def __init__(self, params, defaults: dict, batch_dims: int = 0) -> None:
        super().__init__(params, defaults)
        ps = self.param_groups[0]["params"]
        if len(ps) != 1:
            raise ValueError(f"{type(self).__name__} optimizes exactly one tensor (a signal or a batch of signals), "
                             f"got {len(ps)}; stack the signals into one tensor with leading batch dimensions")
        x = ps[0]
        if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or not 0 <= batch_dims <= x.dim():
            raise ValueError(f"batch_dims must be an int between 0 and x.dim() = {x.dim()}, got {batch_dims!r}")
        if not (x.is_floating_point() or x.is_complex()):
            raise ValueError(f"the optimized tensor must be floating-point or complex, got {x.dtype}")
        self.batch_dims = int(batch_dims)

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups:
            raise ValueError(f"{type(self).__name__} optimizes exactly one tensor in one param group; a second "
                             f"group is refused (its tensors would otherwise be ignored): use one optimizer per "
                             f"tensor, or stack the signals into one tensor with leading batch dimensions")
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``, keeping every state tensor's own dtype.

        torch casts floating-point parameters' state to the parameter's dtype, which would turn the
        complex HIO field of a real object real and the integer ring indices of L-BFGS into floats;
        here each tensor keeps its saved dtype and only moves to the parameter's device.
        """
        saved = dict(state_dict.get("state", {}))
        with warnings.catch_warnings():             # the cast below is undone at once
            warnings.simplefilter("ignore", UserWarning)
            super().load_state_dict(state_dict)
        if saved:
            p = self.param
            values = next(iter(saved.values()))
            self.state[p] = {k: v.to(device=p.device) if isinstance(v, torch.Tensor) else v for k, v in values.items()}

    # ------------------------------------------------------------------ helpers
    @property
    def param(self) -> torch.Tensor:
        return self.param_groups[0]["params"][0]

    @property
    def batch_shape(self) -> Tuple[int, ...]:
        return tuple(self.param.shape[: self.batch_dims])

    def flat(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` viewed as the flat batch ``(B, *signal)``."""
        return t.reshape(math.prod(self.batch_shape), *self.param.shape[self.batch_dims:])

    def per_sample(self, loss) -> torch.Tensor:
        """A closure's return value as per-sample losses ``(B,)``."""
        B = math.prod(self.batch_shape)
        t = torch.as_tensor(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if t.is_complex():
            raise ValueError("the closure must return a real loss")
        if t.numel() == B:
            return t.reshape(B).to(self.param.real.dtype if self.param.is_complex() else self.param.dtype)
        raise ValueError(f"{type(self).__name__}: the closure must return one loss per sample, shape "
                         f"{self.batch_shape} (batch_dims={self.batch_dims}), got shape {tuple(t.shape)}; return "
                         f"the per-sample values (e.g. phasetorch.losses.IntensityLoss(op)(x, y)) and call "
                         f".sum().backward() on them")

    def closure_evaluate(self, closure):
        """``evaluate(x_flat) -> (f, ∇f)`` through the closure (the parameter is set to x_flat)."""
        p = self.param

        def evaluate(x_flat: torch.Tensor):
            with torch.no_grad():
                p.copy_(x_flat.reshape(p.shape))
            with torch.enable_grad():
                loss = closure()
            if p.grad is None:
                raise ValueError("the closure did not compute x.grad; call .backward() on the (summed) loss")
            return self.per_sample(loss), self.flat(p.grad.detach()).clone()

        return evaluate

    def step_scale(self, x: torch.Tensor, group: dict) -> torch.Tensor:
        """The per-sample step factor s at the first step (``scale="x0"``: 1/‖x₀‖²; else 1)."""
        n2 = norm2(x)
        if group.get("scale", "none") == "x0":
            if (n2 <= 0).any():
                raise ValueError("scale='x0' needs a non-zero starting point (the step is μ/‖x₀‖²)")
            return 1.0 / n2
        return torch.ones_like(n2)

    def algorithm(self, group: dict, closure: bool = False) -> Algorithm:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        p = self.param
        alg = self.algorithm(group, closure is not None)
        f = grad = evaluate = None
        if closure is not None and not (alg.uses_gradient or alg.needs_values):
            with torch.enable_grad():                 # projection methods: the closure only reports the loss
                f = closure()
        elif closure is not None:
            evaluate = self.closure_evaluate(closure)
            f, grad = evaluate(self.flat(p.detach()).clone())
        elif alg.uses_gradient:
            if p.grad is None:
                raise ValueError(f"{type(self).__name__}.step() needs x.grad (call loss.backward() first) "
                                 f"or a closure")
            grad = self.flat(p.grad.detach()).clone()
        if alg.needs_values and evaluate is None:
            raise ValueError(f"{type(self).__name__} evaluates the loss at trial points: pass a closure that "
                             f"returns the per-sample loss")
        x = self.flat(p.detach()).clone()
        st = self.state[p]
        if not st:
            st.update(alg.init_state(x, self.step_scale(x, group)))
            st["step"] = torch.zeros((), dtype=torch.float64)
        elif isinstance(getattr(alg, "rule", None), Safeguarded) and "sg_gamma" not in st:
            # the one way a closure changes the algorithm: a first step without a closure, then one with
            for k, v in alg.init_state(x, st["scale"]).items():
                st.setdefault(k, v)
        st["step"] += 1
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        alg_state = {k: v for k, v in st.items() if k not in ("step", "last_step")}
        out = alg.step(alg_state, int(st["step"]), x, f, grad, StepContext(evaluate, active), mu=float(group["lr"]))
        st.update(alg_state)
        p.copy_(out.x.reshape(p.shape))
        st["last_step"] = out.alpha
        if f is None or evaluate is None:
            return f
        return f.reshape(self.batch_shape)


def resolve_lr(lr, mu, step) -> Tuple[Optional[float], Optional[str]]:
    """(μ or None when not given, rule name or None) from the adapter arguments: ``lr`` (or its
    alias ``mu``) and ``step`` (a number μ — a constant step — or a rule name of
    :data:`~phasetorch.optim.steps.RULE_NAMES`)."""
    if lr is not None and mu is not None:
        raise ValueError("pass lr= (or its alias mu=), not both")
    lr = mu if lr is None else lr
    rule = None
    if isinstance(step, str):
        rule = step.lower()
        if rule not in RULE_NAMES:
            raise ValueError(f"unknown step rule {step!r}; use a number μ or one of {', '.join(RULE_NAMES)}")
        rule = "bb2" if rule == "bb" else rule
    elif step is not None:
        if lr is not None:
            raise ValueError("pass the step size once: lr= (or a number as step=), not both")
        lr, rule = step, "constant"
    if lr is not None:
        lr = check_number(lr, "lr (the step μ)", low=0.0, strict=True)
    return lr, rule


class GradientDescent(PhaseOptimizer):
    r"""Gradient descent x ← x − α_t ∇f(x) with a per-sample step rule.

    Parameters
    ----------
    params : one tensor x (``(*batch, *signal)``).
    lr : the step μ (α = μ·s); alias ``mu``. Default: the class's preset (0.1 for this class).
    step : a rule name — ``"constant"``, ``"armijo"`` (μ = first trial), ``"bb"``/``"bb1"``/``"bb2"``
        (μ = first step) — or a number (= ``lr``). Default: the preset's rule.
    schedule : a callable t ↦ factor: α_t = μ·schedule(t)·s (kept on the optimizer, not saved).
    scale : ``"x0"`` multiplies μ by 1/‖x₀‖² per sample (the WF normalisation, for the quartic
        intensity loss) or ``"none"`` (amplitude and Poisson losses). Default: the preset's loss.
    batch_dims : leading batch dimensions of x.
    safeguard : when ``step(closure)`` gets a closure, make a constant / scheduled / ramped step
        monotone (:class:`~phasetorch.optim.steps.Safeguarded`, what ``reconstruct`` does): a trial that
        raises a sample's loss is rejected (the sample stays) and its step halved, then regrown by 2 on
        acceptance — one extra closure call per step. Default: the preset's (on for every WF-family
        preset; off for plain :class:`GradientDescent`). Without a closure the rule runs unguarded.
    """

    preset: Optional[str] = None
    base_mu = 0.1
    #: whether the preset's safeguard applies to closure steps by default
    closure_safeguard = True

    def __init__(self, params, lr: Optional[float] = None, step=None, schedule=None, mu: Optional[float] = None,
                 scale: Optional[str] = None, batch_dims: int = 0, safeguard: Optional[bool] = None) -> None:
        params = list(params) if not isinstance(params, torch.Tensor) else [params]
        x = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
        complex_x = isinstance(x, torch.Tensor) and x.is_complex()
        p = get_preset(self.preset) if self.preset else None
        lr, rule = resolve_lr(lr, mu, step)
        if schedule is not None:
            if rule is not None:
                raise ValueError("pass either step= (a rule or a number) or schedule=, not both")
            if not callable(schedule):
                raise ValueError(f"schedule must be a callable t ↦ factor, got {type(schedule).__name__}")
            rule, lr = "schedule", 1.0 if lr is None else lr
        if lr is None:
            lr = p.step_mu(complex_x) if p else self.base_mu
        if rule is None:
            rule = self.default_rule()
        if scale is None:
            scale = "x0" if (p is not None and p.loss_class(p.defaults(complex_x)).scale_power == 2) else "none"
        if scale not in ("x0", "none"):
            raise ValueError(f"scale must be 'x0' (μ/‖x₀‖²) or 'none', got {scale!r}")
        if safeguard is None:
            safeguard = bool(p.defaults(complex_x).get("safeguard", False)) and self.closure_safeguard if p else False
        defaults = {"lr": lr, "rule": rule, "scale": scale, "safeguard": bool(safeguard),
                    **self.rule_defaults(p, complex_x)}
        super().__init__(params, defaults, batch_dims)
        self.schedule = schedule

    def default_rule(self) -> str:
        return "constant"

    def rule_defaults(self, preset, complex_x: bool) -> dict:
        """Extra plain-number hyper-parameters of the default rule (from the preset)."""
        return {}

    def make_rule(self, group: dict) -> StepRule:
        kind, lr = group["rule"], group["lr"]
        if kind == "constant":
            return Constant(lr)
        if kind == "wf_ramp":
            return WFRamp(group["tau0"], lr)
        if kind == "armijo":
            return Armijo(lr)
        if kind == "schedule":
            if self.schedule is None:
                raise ValueError("this optimizer was saved with a schedule= callable, which state_dict cannot hold; "
                                 "pass the same schedule= to the new optimizer (or use LambdaLR)")
            return Schedule(self.schedule, lr)
        return BarzilaiBorwein(lr, kind)

    def algorithm(self, group, closure: bool = False):
        rule = self.make_rule(group)
        if closure and group.get("safeguard", False) and isinstance(rule, (Constant, Schedule, WFRamp)):
            rule = Safeguarded(rule)
        return GradientAlgorithm(rule)

    @property
    def rule(self) -> StepRule:
        """The step rule in force (built from the param group)."""
        return self.make_rule(self.param_groups[0])


class WirtingerFlow(GradientDescent):
    r"""Wirtinger flow (Candès, Li & Soltanolkotabi 2015): x ← x − (μ_t/‖x₀‖²)∇f(x) on the intensity loss.

    Default: the ramp μ_t = min(1 − e^{−t/τ₀}, μ) with μ = ``lr`` = μ_max and τ₀ from the ``wf``
    preset (``tau0=`` overrides); ``step=`` a number or rule name gives another rule. The gradient
    convention (∇f = 2∂f/∂x̄ = autograd's) matches the paper's update, so a closure that calls
    ``loss(x, y).sum().backward()`` with :class:`phasetorch.losses.IntensityLoss` reproduces WF.
    """

    preset = "wf"

    def __init__(self, params, lr=None, step=None, schedule=None, tau0: Optional[float] = None, mu=None,
                 mu_max: Optional[float] = None, scale=None, batch_dims: int = 0,
                 safeguard: Optional[bool] = None) -> None:
        self._tau0 = tau0
        if mu_max is not None and lr is not None:
            raise ValueError("mu_max is the ramp's μ, i.e. lr: pass one of them")
        super().__init__(params, lr=lr if mu_max is None else mu_max, step=step, schedule=schedule, mu=mu,
                         scale=scale, batch_dims=batch_dims, safeguard=safeguard)

    def default_rule(self):
        return "wf_ramp"

    def rule_defaults(self, preset, complex_x):
        tau0 = preset.defaults(complex_x)["tau0"] if self._tau0 is None else self._tau0
        return {"tau0": check_number(tau0, "tau0", low=0.0, strict=True)}


class TruncatedWirtingerFlow(GradientDescent):
    """Truncated WF (Chen & Candès 2017): x ← x − μ∇f on :class:`~phasetorch.losses.TruncatedPoissonLoss`.

    No closure safeguard by default: the truncation set moves with x, so the loss a closure returns
    jumps where a measurement enters or leaves it (``reconstruct`` compares with the weights frozen
    at x, which a closure cannot do); pass ``safeguard=True`` to reject rises of that loss anyway."""

    preset = "twf"
    closure_safeguard = False


class ReshapedWirtingerFlow(GradientDescent):
    """Reshaped WF (Zhang & Liang, NeurIPS 2016): x ← x − μ∇f on the amplitude loss."""

    preset = "rwf"


class AmplitudeFlow(GradientDescent):
    """Amplitude flow (Wang, Giannakis & Eldar 2018): x ← x − μ∇f on :class:`~phasetorch.losses.AmplitudeLoss`."""

    preset = "af"


class TruncatedAmplitudeFlow(GradientDescent):
    """Truncated amplitude flow (Wang, Giannakis & Eldar 2018): x ← x − μ∇f on
    :class:`~phasetorch.losses.TruncatedAmplitudeLoss`."""

    preset = "taf"


class ReweightedAmplitudeFlow(GradientDescent):
    """Reweighted amplitude flow (Wang, Giannakis, Saad & Chen 2018): x ← x − μ∇f on
    :class:`~phasetorch.losses.ReweightedAmplitudeLoss` (effective step μ/(1+β) near the solution)."""

    preset = "raf"


class LBFGS(PhaseOptimizer):
    r"""Batched L-BFGS (:mod:`phasetorch.optim.lbfgs`): ``lr`` = μ₀, the first trial step (times 1/‖x₀‖²
    with ``scale="x0"``); ``memory`` pairs per sample (the ``lbfgs`` preset's by default).

    ``step(closure)`` performs one iteration with its line search, which calls the closure again;
    the closure must return per-sample losses when ``batch_dims > 0``.
    """

    preset = "lbfgs"

    def __init__(self, params, lr: Optional[float] = None, memory: Optional[int] = None, mu0: Optional[float] = None,
                 scale: str = "none", batch_dims: int = 0) -> None:
        p = get_preset(self.preset)
        lr, _ = resolve_lr(lr, mu0, None)
        lr = p.step_mu(False) if lr is None else lr
        memory = check_int(p.defaults(False)["memory"] if memory is None else memory, "memory", 1)
        if scale not in ("x0", "none"):
            raise ValueError(f"scale must be 'x0' or 'none', got {scale!r}")
        super().__init__(params, {"lr": lr, "memory": memory, "scale": scale}, batch_dims)

    def algorithm(self, group, closure: bool = False):
        return LBFGSAlgorithm(memory=group["memory"], mu0=group["lr"])


class ProjectionOptimizer(PhaseOptimizer):
    """Projection methods on (op, y) given at construction; a closure, when passed, only returns the loss."""

    def __init__(self, params, op, y, support, nonnegative, real_signal, defaults):
        if not isinstance(op, MeasurementOperator):
            raise ValueError(f"op must be a phasetorch MeasurementOperator, got {type(op).__name__}")
        ps = list(params) if not isinstance(params, torch.Tensor) else [params]
        x = ps[0]["params"][0] if isinstance(ps[0], dict) else ps[0]
        op.check_signal(x.detach())
        super().__init__(ps, defaults, x.dim() - len(op.signal_shape))
        if not isinstance(y, torch.Tensor) or y.is_complex() or not torch.isfinite(y).all():
            raise ValueError("y must be a real, finite tensor of intensities |Ax|²")
        op.check_measurements(y)
        B = math.prod(self.batch_shape)
        k = len(op.measurement_shape)
        yb = y.expand(*self.batch_shape, *op.measurement_shape) if y.dim() == k else y
        if tuple(yb.shape[: yb.dim() - k]) != self.batch_shape:
            raise ValueError(f"y has batch shape {tuple(yb.shape[:yb.dim() - k])} but x has {self.batch_shape}")
        self.op = op
        self.psi = yb.reshape(B, *op.measurement_shape).clamp_min(0).sqrt()
        if real_signal is None:
            real_signal = not x.is_complex()
        sup = None
        if support is not None:
            sup = torch.as_tensor(support, device=x.device).to(torch.bool)
            sup = sup.expand(*self.batch_shape, *op.signal_shape).reshape(B, *op.signal_shape)
        self.constraint = Constraint(real_signal, sup, nonnegative)
        self.tight = tight_frame_constant(op)


class GerchbergSaxton(ProjectionOptimizer):
    r"""Error reduction (Gerchberg–Saxton): each ``step()`` sets x ← x + μ(Π_C(A⁺ P_M(Ax)) − x), μ = ``lr`` = 1.

    Parameters: ``params`` one tensor x ``(*batch, *op.signal_shape)``; ``op``, ``y`` the operator and
    intensities; ``support`` (bool mask), ``nonnegative``, ``real_signal`` the object constraint;
    ``cg_steps`` CG steps of the least-squares inverse for operators that are not tight frames;
    ``lr`` the relaxation (1: error reduction). ``step(closure)`` returns ``closure()`` (the loss
    before the step) when a closure is given, as torch optimizers do.
    """

    def __init__(self, params, op, y, support=None, nonnegative: bool = False, real_signal: Optional[bool] = None,
                 cg_steps: Optional[int] = None, lr: float = 1.0) -> None:
        cg = get_preset("gs").defaults(False)["cg_steps"] if cg_steps is None else cg_steps
        super().__init__(params, op, y, support, nonnegative, real_signal,
                         {"lr": check_number(lr, "lr (the relaxation)", low=0.0, strict=True),
                          "cg_steps": check_int(cg, "cg_steps", 1)})

    def algorithm(self, group, closure: bool = False):
        return ErrorReduction(self.op, self.psi, self.constraint, group["cg_steps"], self.tight)


class HybridInputOutput(ProjectionOptimizer):
    r"""Fienup's hybrid input–output (:mod:`phasetorch.optim.projections`); ``lr`` = β (the ``hio``
    preset's 0.9 by default). The HIO field is optimizer state (``hio_x``, ``hio_u``, ``hio_v``);
    after each ``step()`` the parameter holds the estimate Π_C(A⁺P_M(u)). Other parameters as
    :class:`GerchbergSaxton`.
    """

    def __init__(self, params, op, y, support=None, nonnegative: bool = False, real_signal: Optional[bool] = None,
                 beta: Optional[float] = None, cg_steps: Optional[int] = None, lr: Optional[float] = None) -> None:
        d = get_preset("hio").defaults(False)
        if beta is not None and lr is not None:
            raise ValueError("beta is HIO's lr: pass one of them")
        b = d["beta"] if (beta is None and lr is None) else (beta if beta is not None else lr)
        super().__init__(params, op, y, support, nonnegative, real_signal,
                         {"lr": HybridInputOutputAlgorithm.check_beta(b),
                          "cg_steps": check_int(d["cg_steps"] if cg_steps is None else cg_steps, "cg_steps", 1)})

    def algorithm(self, group, closure: bool = False):
        return HybridInputOutputAlgorithm(self.op, self.psi, self.constraint, group["lr"], group["cg_steps"],
                                          self.tight)
