r"""(Projected) gradient descent with a pluggable step rule: the engine of WF, TWF, RWF, TAF, RAF, AF.

x_t = P(x_{t−1} − α_t ∇f(x_{t−1})), with α_t from a :mod:`~phasetorch.optim.steps` rule (per
sample) and P an optional projection (real part, support, non-negativity). The algorithms of the
Wirtinger-flow family differ only in the loss (:mod:`phasetorch.losses`), the step rule and the
initialisation; :mod:`phasetorch.optim.wirtinger` and :mod:`phasetorch.optim.amplitude` name them.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..tensors import norm2
from .base import PhaseOptimizer
from .steps import Constant, StepRule, make_step_rule

__all__ = ["GradientDescent", "GradientCore"]


class GradientCore:
    """Functional core used by :class:`GradientDescent` and :func:`phasetorch.reconstruct`."""

    def __init__(self, rule: StepRule) -> None:
        self.rule = rule

    def start(self, scale: torch.Tensor) -> None:
        self.rule.reset(scale)

    def step(self, t: int, x, f, grad, evaluate, active, cache0=None, project=None):
        """One iteration from x (with f, ∇f known): returns ``(alpha, x_new, f_new|None, cache|None)``."""
        return self.rule(t, x, f, grad, -grad, evaluate, active, cache0, project)


class GradientDescent(PhaseOptimizer):
    r"""Gradient descent x ← x − α_t ∇f(x) with a per-sample step rule.

    Parameters
    ----------
    params : one tensor x (``(*batch, *signal)``).
    step : a number μ (constant), ``"armijo"``, ``"bb"``/``"bb1"``/``"bb2"``, ``"constant"`` or a
        :class:`~phasetorch.optim.steps.StepRule` (default: constant ``mu``).
    schedule : a callable t ↦ μ_t (instead of ``step``).
    mu : the base μ of the rule (first trial of Armijo/BB; the constant of ``"constant"``).
    scale : ``"x0"`` multiplies μ by 1/‖x₀‖² per sample (x₀ = x at the first ``step()``; the WF
        normalisation, right for the quartic intensity loss) or ``"none"`` (μ as is; right for the
        amplitude and Poisson losses, whose gradients are homogeneous of degree 1).
    batch_dims : leading batch dimensions of x.

    ``step(closure)`` performs one iteration; rules that need loss values (Armijo) call the
    closure again at trial points. Without a closure, ``x.grad`` must be set and the rule must not
    need values. Returns the loss at the starting point (per sample) when a closure is given.
    """

    default_rule = None
    default_mu = 0.1
    default_scale = "none"

    def __init__(self, params, step=None, schedule=None, mu: Optional[float] = None, scale: Optional[str] = None,
                 batch_dims: int = 0) -> None:
        mu = self.default_mu if mu is None else float(mu)
        scale = self.default_scale if scale is None else scale
        if scale not in ("x0", "none"):
            raise ValueError(f"scale must be 'x0' (μ/‖x₀‖²) or 'none', got {scale!r}")
        default = self._default_rule(mu)
        rule = make_step_rule(step, schedule, default=default, mu0=mu)
        super().__init__(params, {"rule": rule, "scale": scale, "mu": mu}, batch_dims)

    def _default_rule(self, mu: float) -> StepRule:
        return Constant(mu)

    @property
    def rule(self) -> StepRule:
        return self.param_groups[0]["rule"]

    def _core(self) -> GradientCore:
        st = self.state[self.param]
        if "core" not in st:
            st["core"] = GradientCore(self.rule)
            st["t"] = 0
        return st["core"]

    @torch.no_grad()
    def step(self, closure=None):
        core = self._core()
        st = self.state[self.param]
        p = self.param
        f, grad, evaluate = self._gradient_now(closure)
        x = self._flat(p.detach()).clone()
        if st["t"] == 0:
            if self.param_groups[0]["scale"] == "x0":
                n2 = norm2(x)
                if (n2 <= 0).any():
                    raise ValueError("scale='x0' needs a non-zero starting point (the step is μ/‖x₀‖²)")
                scale = 1.0 / n2
            else:
                scale = torch.ones(x.shape[0], dtype=x.real.dtype, device=x.device)
            core.start(scale)
        if core.rule.needs_values and evaluate is None:
            raise ValueError(f"the {core.rule.name} rule evaluates the loss at trial points: pass a closure")
        st["t"] += 1
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        alpha, x_new, _, _ = core.step(st["t"], x, f, grad, evaluate, active)
        p.copy_(x_new.reshape(p.shape))
        st["last_step"] = alpha
        return None if f is None else f.reshape(self.batch_shape)
