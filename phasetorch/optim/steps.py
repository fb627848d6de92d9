r"""Step-size rules shared by every gradient-type algorithm and loss.

A rule returns a per-sample step α_t (shape ``(B,)``) for the update x_t = P(x_{t−1} + α_t d_t),
d_t the search direction (−∇f for gradient descent) and P an optional projection. Every rule
multiplies its dimensionless μ by the loss's per-sample scale s (:meth:`phasetorch.losses.
PhaseRetrievalLoss.step_scale`: 1/‖x₀‖² for the intensity loss, 1 otherwise), so that
``step=μ`` means the same thing for images of any brightness and on every operator.

=====================  ==========================================================================
rule                   α_t
=====================  ==========================================================================
:class:`Constant`      μ·s
:class:`Schedule`      μ_t·s with μ_t = schedule(t), t = 1, 2, … (t is the index of the new iterate)
:class:`WFRamp`        μ_t = min(1 − e^{−t/τ₀}, μ_max), τ₀ = 330, μ_max = 0.2 (Candès, Li &
                       Soltanolkotabi 2015, §4: their released Gaussian code uses 0.2, the CDP code 0.4)
:class:`Armijo`        backtracking from min(2α_{t−1}, α_max) (first: μ₀·s) until f decreases by
                       c·Re⟨∇f, x_t − x_{t−1}⟩, c = 10⁻⁴ (Armijo 1966)
:class:`BarzilaiBorwein` ⟨s,s⟩/⟨s,g⟩ (``bb1``) or ⟨s,g⟩/⟨g,g⟩ (``bb2``), s = x_{t−1} − x_{t−2},
                       g = ∇f(x_{t−1}) − ∇f(x_{t−2}) per sample, safeguarded to [10⁻⁴, 10⁴]·μ₀·s;
                       first step μ₀·s (Barzilai & Borwein, IMA J. Numer. Anal. 8, 1988)
=====================  ==========================================================================
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from ..tensors import bview, dot, norm2
from .base import backtracking

__all__ = ["StepRule", "Constant", "Schedule", "WFRamp", "Armijo", "BarzilaiBorwein", "make_step_rule",
           "RULE_NAMES"]


def _check_mu(mu, who: str) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(float(mu)) or float(mu) <= 0:
        raise ValueError(f"{who}: the step μ must be a finite number > 0, got {mu!r}")
    return float(mu)


class StepRule:
    """Base class. Subclasses implement :meth:`__call__`; :meth:`reset` is called at the start of a run."""

    name = "rule"
    #: whether the rule evaluates the objective at trial points
    needs_values = False

    def __init__(self) -> None:
        self.scale: Optional[torch.Tensor] = None

    def reset(self, scale: torch.Tensor) -> None:
        """Start a run; ``scale`` is the per-sample factor s (shape ``(B,)``)."""
        self.scale = scale

    def __call__(self, t: int, x, f, grad, direction, evaluate, active, cache0=None, project=None):
        """Return ``(alpha, x_new, f_new or None, cache or None)``."""
        raise NotImplementedError  # abstract

    def _apply(self, alpha, x, direction, active, project):
        alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x_new = x + bview(alpha, x).to(x.dtype) * direction
        if project is not None:
            x_new = project(x_new)
        return alpha, x_new, None, None

    def describe(self) -> Union[float, str, dict]:
        """A JSON-friendly description (for logs)."""
        return self.name

    def current(self, t: Optional[int] = None) -> str:
        """The step parameter in force, for error messages ("reduce step (currently …)")."""
        return str(self.describe())


class Constant(StepRule):
    """α_t = μ·s for every t."""

    name = "constant"

    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = _check_mu(mu, "Constant")

    def __call__(self, t, x, f, grad, direction, evaluate, active, cache0=None, project=None):
        return self._apply(self.mu * self.scale, x, direction, active, project)

    def describe(self):
        return self.mu

    def current(self, t=None):
        return f"{self.mu:g}"


class Schedule(StepRule):
    """α_t = schedule(t)·s; ``schedule`` maps the iteration t = 1, 2, … to μ_t ≥ 0."""

    name = "schedule"

    def __init__(self, schedule: Callable[[int], float]) -> None:
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
        self.schedule = schedule

    def mu(self, t: int) -> float:
        mu = self.schedule(int(t))
        if isinstance(mu, torch.Tensor):
            mu = mu.item()
        mu = float(mu)
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"schedule({t}) returned {mu}; a step size must be finite and ≥ 0")
        return mu

    def __call__(self, t, x, f, grad, direction, evaluate, active, cache0=None, project=None):
        return self._apply(self.mu(t) * self.scale, x, direction, active, project)

    def describe(self):
        return {"schedule": getattr(self.schedule, "__name__", repr(self.schedule))}

    def current(self, t=None):
        return f"schedule value {self.mu(t):g} at iteration {t}" if t is not None else "the schedule"


class WFRamp(Schedule):
    r"""Candès, Li & Soltanolkotabi's step heuristic μ_t = min(1 − e^{−t/τ₀}, μ_max) (WF paper §4).

    Defaults τ₀ = 330 and μ_max = 0.2 (their Gaussian experiments; 0.4 for coded diffraction).
    """

    name = "wf_ramp"

    def __init__(self, tau0: float = 330.0, mu_max: float = 0.2) -> None:
        self.tau0 = _check_mu(tau0, "WFRamp tau0")
        self.mu_max = _check_mu(mu_max, "WFRamp mu_max")
        super().__init__(lambda t: min(1.0 - math.exp(-t / self.tau0), self.mu_max))

    def describe(self):
        return {"rule": "wf_ramp", "tau0": self.tau0, "mu_max": self.mu_max}

    def current(self, t=None):
        return f"mu_max={self.mu_max:g}"


class Armijo(StepRule):
    """Per-sample Armijo backtracking (see the module table). ``mu0`` is the first trial μ."""

    name = "armijo"
    needs_values = True

    def __init__(self, mu0: float = 1.0, c: float = 1e-4, shrink: float = 0.5, grow: float = 2.0,
                 max_backtracks: int = 40, max_mu: Optional[float] = None) -> None:
        super().__init__()
        self.mu0 = _check_mu(mu0, "Armijo mu0")
        if not 0 < c < 1 or not 0 < shrink < 1 or grow < 1:
            raise ValueError("Armijo needs 0 < c < 1, 0 < shrink < 1 and grow ≥ 1")
        self.c, self.shrink, self.grow = float(c), float(shrink), float(grow)
        self.max_backtracks = int(max_backtracks)
        self.max_mu = None if max_mu is None else _check_mu(max_mu, "Armijo max_mu")
        self.alpha: Optional[torch.Tensor] = None

    def reset(self, scale):
        super().reset(scale)
        self.alpha = None

    def __call__(self, t, x, f, grad, direction, evaluate, active, cache0=None, project=None):
        if f is None:
            raise ValueError("the Armijo rule needs loss values: pass a closure that returns the per-sample loss")
        base = self.mu0 * self.scale
        a0 = base if self.alpha is None else self.alpha * self.grow
        cap = (self.max_mu if self.max_mu is not None else 1e4 * self.mu0) * self.scale
        a0 = torch.minimum(a0, cap)
        alpha, x_new, f_new, cache = backtracking(x, f, grad, direction, a0, evaluate, active, cache0, project,
                                                  self.c, self.shrink, self.max_backtracks)
        moved = alpha > 0
        self.alpha = torch.where(moved, alpha, a0 if self.alpha is None else self.alpha)
        return alpha, x_new, f_new, cache

    def describe(self):
        return {"rule": "armijo", "mu0": self.mu0, "c": self.c, "shrink": self.shrink, "grow": self.grow}

    def current(self, t=None):
        return f"armijo from mu0={self.mu0:g}"


class BarzilaiBorwein(StepRule):
    """Per-sample Barzilai–Borwein steps (see the module table); ``variant`` bb1, bb2 or alternate."""

    name = "bb"

    def __init__(self, mu0: float = 1.0, variant: str = "bb2", bounds=(1e-4, 1e4)) -> None:
        super().__init__()
        self.mu0 = _check_mu(mu0, "BarzilaiBorwein mu0")
        if variant not in ("bb1", "bb2", "alternate"):
            raise ValueError(f"variant must be 'bb1', 'bb2' or 'alternate', got {variant!r}")
        self.variant = variant
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.prev = None

    def reset(self, scale):
        super().reset(scale)
        self.prev = None

    def __call__(self, t, x, f, grad, direction, evaluate, active, cache0=None, project=None):
        base = self.mu0 * self.scale
        alpha = base
        if self.prev is not None:
            x_prev, g_prev, a_prev = self.prev
            s, yv = x - x_prev, grad - g_prev
            sy, ss, yy = dot(s, yv), norm2(s), norm2(yv)
            long_step = self.variant == "bb1" or (self.variant == "alternate" and t % 2 == 1)
            tiny = torch.finfo(sy.dtype).tiny
            cand = ss / sy.clamp_min(tiny) if long_step else sy / yy.clamp_min(tiny)
            ok = (sy > 0) & torch.isfinite(cand) & (ss > 0)
            alpha = torch.where(ok, cand, a_prev)
            alpha = torch.minimum(torch.maximum(alpha, base * self.bounds[0]), base * self.bounds[1])
        out = self._apply(alpha, x, direction, active, project)
        self.prev = (x, grad, torch.where(active, alpha, base))
        return out

    def describe(self):
        return {"rule": "bb", "mu0": self.mu0, "variant": self.variant}

    def current(self, t=None):
        return f"bb from mu0={self.mu0:g}"


RULE_NAMES = ("constant", "armijo", "bb", "bb1", "bb2")


def make_step_rule(step=None, schedule=None, default: Optional[StepRule] = None, mu0: float = 1.0) -> StepRule:
    """Build a rule from the user-facing ``step``/``schedule`` arguments.

    ``step``: ``None`` (→ ``default``), a number μ (:class:`Constant`), ``"constant"`` (constant
    μ₀), ``"armijo"``, ``"bb"`` (= ``"bb2"``), ``"bb1"``, ``"bb2"`` (started from μ₀ = ``mu0``, the
    preset's own step), or a :class:`StepRule`. ``schedule``: a callable t ↦ μ_t (exclusive with step).
    """
    if schedule is not None:
        if step is not None:
            raise ValueError("pass either step= or schedule=, not both")
        return Schedule(schedule)
    if step is None:
        if default is None:
            raise ValueError("no step given and no default step rule")
        return default
    if isinstance(step, StepRule):
        return step
    if isinstance(step, str):
        name = step.lower()
        if name == "constant":
            return Constant(mu0)
        if name == "armijo":
            return Armijo(mu0)
        if name in ("bb", "bb2"):
            return BarzilaiBorwein(mu0, "bb2")
        if name == "bb1":
            return BarzilaiBorwein(mu0, "bb1")
        raise ValueError(f"unknown step rule {step!r}; use a number μ, one of {', '.join(RULE_NAMES)}, "
                         f"a StepRule, or schedule=callable")
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    return Constant(_check_mu(step, "step"))
