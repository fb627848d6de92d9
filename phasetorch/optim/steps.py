r"""Step-size rules shared by every gradient-type algorithm: stateless objects, per-sample tensor state.

A rule returns a per-sample step α_t (shape ``(B,)``) for the update x_t = P(x_{t−1} + α_t d_t),
d_t the search direction (−∇f for gradient descent) and P an optional projection. Every rule
multiplies its dimensionless μ by the loss's per-sample scale s (:meth:`phasetorch.losses.
PhaseRetrievalLoss.step_scale`: 1/‖x₀‖² for the intensity loss, 1 otherwise), so that ``step=μ``
means the same thing for images of any brightness and on every operator. μ is passed at every call
(``mu=``): the torch adapters pass ``param_groups[i]["lr"]``, so learning-rate schedulers act on it.

A rule keeps no Python state: what it carries from one iteration to the next lives in a dict of
tensors (:meth:`StepRule.init_state`), which the algorithm's state holds and ``state_dict`` saves.

=====================  ==========================================================================
rule                   α_t
=====================  ==========================================================================
:class:`Constant`      μ·s
:class:`Schedule`      μ·schedule(t)·s, t = 1, 2, … (t is the index of the new iterate; μ = 1 unless given)
:class:`WFRamp`        min(1 − e^{−t/τ₀}, μ)·s, τ₀ = 330, μ = μ_max = 0.2 (Candès, Li & Soltanolkotabi,
                       IEEE Trans. Inf. Theory 61, 2015, §4)
:class:`Armijo`        backtracking from min(2α_{t−1}, 10⁴μs) (first: μ·s) until f decreases by
                       c·Re⟨∇f, x_t − x_{t−1}⟩, c = 10⁻⁴ (Armijo, Pacific J. Math. 16, 1966)
:class:`BarzilaiBorwein` ⟨s,s⟩/⟨s,g⟩ (``bb1``) or ⟨s,g⟩/⟨g,g⟩ (``bb2``), s = x_{t−1} − x_{t−2},
                       g = ∇f(x_{t−1}) − ∇f(x_{t−2}) per sample, safeguarded to [10⁻⁴, 10⁴]·μ·s;
                       first step μ·s (Barzilai & Borwein, IMA J. Numer. Anal. 8, 1988)
=====================  ==========================================================================
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Union

import torch

from ..tensors import bview, check_number, dot, norm2
from .base import one_trial
from .engine import declared_key

__all__ = ["StepRule", "Constant", "Schedule", "WFRamp", "Armijo", "BarzilaiBorwein", "Safeguarded", "make_step_rule",
           "RULE_NAMES", "wf_ramp", "slack"]

State = Dict[str, torch.Tensor]


def wf_ramp(t: int, tau0: float, mu_max: float) -> float:
    """Candès, Li & Soltanolkotabi's step heuristic μ_t = min(1 − e^{−t/τ₀}, μ_max) (WF paper, §4)."""
    return min(1.0 - math.exp(-t / tau0), mu_max)


def check_mu(mu, who: str) -> float:
    """A step μ: a finite number > 0."""
    return check_number(mu, f"{who}: the step μ", low=0.0, strict=True)


class StepRule:
    """Base class. ``mu`` is the rule's default μ (the torch adapters' ``lr``)."""

    name = "rule"
    #: whether the rule evaluates the objective at trial points
    needs_values = False
    mu: float = 1.0

    def init_state(self, x: torch.Tensor) -> State:
        """Per-sample tensors the rule carries between iterations (x: the flat batch ``(B, ...)``)."""
        return {}

    def __call__(self, state: State, t: int, scale, x, f, grad, direction, ctx, mu: Optional[float] = None):
        """Return ``(alpha, x_new, f_new or None, cache or None)``; updates ``state`` in place.

        ``ctx`` is the :class:`~phasetorch.optim.engine.StepContext` (trial evaluation, active samples,
        cache at x, projection); ``mu`` overrides the rule's μ.
        """
        raise NotImplementedError  # abstract

    @staticmethod
    def apply(alpha, x, direction, ctx):
        """x + α d (α = 0 for inactive samples), projected."""
        active, project = ctx.active, ctx.project
        alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x_new = x + bview(alpha, x).to(x.dtype) * direction
        if project is not None:
            x_new = project(x_new)
        return alpha, x_new, None, None

    def alpha(self, t: int, scale, mu: Optional[float] = None):
        """The step α_t of a rule that does not look at the loss (None for rules that do)."""
        return None

    def step_key(self, t: int):
        """What α_t takes from t besides tensors (see :meth:`~phasetorch.optim.engine.Algorithm.step_key`);
        default t (never replayed)."""
        return t

    def describe(self) -> Union[float, str, dict]:
        """A JSON-friendly description (for logs)."""
        return self.name

    def current(self, t: Optional[int] = None) -> str:
        """The step parameter in force, for error messages ("reduce step (currently …)")."""
        return str(self.describe())

    def smaller(self) -> Optional[float]:
        """A smaller μ to suggest after a divergence (None when the rule has no single μ)."""
        return self.mu / 2


class Constant(StepRule):
    """α_t = μ·s for every t."""

    name = "constant"

    def __init__(self, mu: float) -> None:
        self.mu = check_mu(mu, "Constant")

    def alpha(self, t, scale, mu=None):
        return (self.mu if mu is None else mu) * scale

    def step_key(self, t):
        return declared_key(self, Constant, (), t, ("alpha", "__call__"))

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        return self.apply(self.alpha(t, scale, mu), x, direction, ctx)

    def describe(self):
        return self.mu

    def current(self, t=None):
        return f"{self.mu:g}"


class Schedule(StepRule):
    """α_t = μ·schedule(t)·s; ``schedule`` maps the iteration t = 1, 2, … to a factor ≥ 0 (μ = 1 by default).

    The schedule must be a pure function of t returning a Python number: it is called ahead for a block
    of iterations (the compiled CPU loop, the keys of captured blocks) and more than once per t."""

    name = "schedule"

    def __init__(self, schedule: Callable[[int], float], mu: float = 1.0) -> None:
        if not callable(schedule):
            raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
        self.schedule = schedule
        self.mu = check_mu(mu, "Schedule")

    def factor(self, t: int) -> float:
        """schedule(t), checked finite and ≥ 0."""
        v = self.schedule(int(t))
        if isinstance(v, torch.Tensor):
            v = v.item()
        v = float(v)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"schedule({t}) returned {v}; a step size must be finite and ≥ 0")
        return v

    def alpha(self, t, scale, mu=None):
        return (self.mu if mu is None else mu) * self.factor(t) * scale

    def step_key(self, t):
        try:                    # the schedule's value (called ahead: a pure function of t)
            key = self.factor(t)
        except Exception:       # raised at iteration t by the step itself: never replayed
            return ("error", t)
        return declared_key(self, Schedule, key, t, ("alpha", "__call__", "factor"))

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        return self.apply(self.alpha(t, scale, mu), x, direction, ctx)

    def describe(self):
        return {"schedule": getattr(self.schedule, "__name__", repr(self.schedule))}

    def current(self, t=None):
        return f"schedule value {self.factor(t):g} at iteration {t}" if t is not None else "the schedule"

    def smaller(self):
        return None


class WFRamp(StepRule):
    r"""μ_t = min(1 − e^{−t/τ₀}, μ) with μ = μ_max (WF paper §4: τ₀ = 330, μ_max = 0.2)."""

    name = "wf_ramp"

    def __init__(self, tau0: float = 330.0, mu_max: float = 0.2) -> None:
        self.tau0 = check_mu(tau0, "WFRamp tau0")
        self.mu = check_mu(mu_max, "WFRamp mu_max")

    @property
    def mu_max(self) -> float:
        return self.mu

    def alpha(self, t, scale, mu=None):
        return wf_ramp(t, self.tau0, self.mu if mu is None else mu) * scale

    def step_key(self, t):                        # constant from t = τ₀·ln(1/(1 − μ_max)) on
        return declared_key(self, WFRamp, wf_ramp(t, self.tau0, self.mu), t, ("alpha", "__call__"))

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        return self.apply(self.alpha(t, scale, mu), x, direction, ctx)

    def describe(self):
        return {"rule": "wf_ramp", "tau0": self.tau0, "mu_max": self.mu}

    def current(self, t=None):
        return f"mu_max={self.mu:g}"


class Armijo(StepRule):
    """Per-sample Armijo backtracking (see the module table); μ is the first trial step.

    State: ``armijo_alpha`` (B,), the last accepted step (NaN before the first).
    """

    name = "armijo"
    needs_values = True

    def __init__(self, mu0: float = 1.0, c: float = 1e-4, shrink: float = 0.5, grow: float = 2.0,
                 max_backtracks: int = 40, max_mu: Optional[float] = None) -> None:
        self.mu = check_mu(mu0, "Armijo mu0")
        if not 0 < c < 1 or not 0 < shrink < 1 or grow < 1:
            raise ValueError("Armijo needs 0 < c < 1, 0 < shrink < 1 and grow ≥ 1")
        self.c, self.shrink, self.grow = float(c), float(shrink), float(grow)
        self.max_backtracks = int(max_backtracks)
        self.max_mu = None if max_mu is None else check_mu(max_mu, "Armijo max_mu")

    @property
    def mu0(self) -> float:
        return self.mu

    def init_state(self, x):
        rdt = x.real.dtype if x.is_complex() else x.dtype
        B = x.shape[0]
        return {"armijo_alpha": torch.full((B,), float("nan"), dtype=rdt, device=x.device),
                "armijo_trial": torch.zeros(B, dtype=rdt, device=x.device),
                "armijo_tries": torch.zeros(B, dtype=torch.long, device=x.device),
                "accepted": torch.ones(B, dtype=torch.bool, device=x.device),
                "retry": torch.zeros(B, dtype=torch.bool, device=x.device)}

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        if f is None:
            raise ValueError("the Armijo rule needs loss values: pass a closure that returns the per-sample loss")
        mu = self.mu if mu is None else mu
        active = ctx.active
        prev = state["armijo_alpha"]
        first = torch.isnan(prev)
        retrying = state["retry"] & active
        a_new = torch.where(first, mu * scale, prev * self.grow)
        a_new = torch.minimum(a_new, (self.max_mu if self.max_mu is not None else 1e4 * mu) * scale)
        a = torch.where(retrying, state["armijo_trial"] * self.shrink, a_new)
        a = torch.where(active, a, torch.zeros_like(a))
        tries = torch.where(retrying, state["armijo_tries"] + 1, torch.zeros_like(state["armijo_tries"]))
        ok, x_new, f_new, cache = one_trial(x, f, grad, direction, a, ctx, self.c)
        give_up = active & ~ok & (tries + 1 >= self.max_backtracks)
        state["armijo_alpha"] = torch.where(ok, a, torch.where(give_up & first, a_new, prev))
        state.update(armijo_trial=a, armijo_tries=tries, accepted=ok, retry=active & ~ok & ~give_up)
        return torch.where(ok, a, torch.zeros_like(a)), x_new, f_new, cache

    def step_key(self, t):
        return declared_key(self, Armijo, (), t, ("__call__",))

    def describe(self):
        return {"rule": "armijo", "mu0": self.mu, "c": self.c, "shrink": self.shrink, "grow": self.grow}

    def current(self, t=None):
        return f"armijo from mu0={self.mu:g}"


class BarzilaiBorwein(StepRule):
    """Per-sample Barzilai–Borwein steps (see the module table); ``variant`` bb1, bb2 or alternate.

    State: ``bb_x``, ``bb_g`` (the previous iterate and gradient), ``bb_alpha`` (B,), ``bb_has`` (B,) bool.
    """

    name = "bb"

    def __init__(self, mu0: float = 1.0, variant: str = "bb2", bounds=(1e-4, 1e4)) -> None:
        self.mu = check_mu(mu0, "BarzilaiBorwein mu0")
        if variant not in ("bb1", "bb2", "alternate"):
            raise ValueError(f"variant must be 'bb1', 'bb2' or 'alternate', got {variant!r}")
        self.variant = variant
        self.bounds = (float(bounds[0]), float(bounds[1]))

    @property
    def mu0(self) -> float:
        return self.mu

    def init_state(self, x):
        rdt = x.real.dtype if x.is_complex() else x.dtype
        B = x.shape[0]
        return {"bb_x": torch.zeros_like(x), "bb_g": torch.zeros_like(x),
                "bb_alpha": torch.zeros(B, dtype=rdt, device=x.device),
                "bb_has": torch.zeros(B, dtype=torch.bool, device=x.device)}

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        base = (self.mu if mu is None else mu) * scale
        s, yv = x - state["bb_x"], grad - state["bb_g"]
        sy, ss, yy = dot(s, yv), norm2(s), norm2(yv)
        long_step = self.variant == "bb1" or (self.variant == "alternate" and t % 2 == 1)
        tiny = torch.finfo(sy.dtype).tiny
        cand = ss / sy.clamp_min(tiny) if long_step else sy / yy.clamp_min(tiny)
        ok = (sy > 0) & torch.isfinite(cand) & (ss > 0)
        alpha = torch.where(ok, cand, state["bb_alpha"])
        alpha = torch.minimum(torch.maximum(alpha, base * self.bounds[0]), base * self.bounds[1])
        alpha = torch.where(state["bb_has"], alpha, base)
        out = self.apply(alpha, x, direction, ctx)
        state.update(bb_x=x, bb_g=grad, bb_alpha=torch.where(ctx.active, alpha, base),
                     bb_has=torch.ones_like(state["bb_has"]))
        return out

    def step_key(self, t):
        return declared_key(self, BarzilaiBorwein, t % 2 if self.variant == "alternate" else (), t, ("__call__",))

    def describe(self):
        return {"rule": "bb", "mu0": self.mu, "variant": self.variant}

    def current(self, t=None):
        return f"bb from mu0={self.mu:g}"


#: the safeguard's rounding slack 64ε per real dtype
_SLACK = {dt: 64 * torch.finfo(dt).eps for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def slack(dtype: torch.dtype) -> float:
    """The safeguard's rounding slack 64ε of a real dtype: a trial is accepted while f(x_α) ≤ f(x) + 64ε·|f(x)|."""
    return _SLACK[dtype]


_FACTORS: dict = {}


def _factors(t: torch.Tensor):
    """The factors ½, 1, 2 as 0-dim tensors of ``t``'s dtype and device (a Python scalar in a select is
    wrapped into a tensor at every call)."""
    key = (t.dtype, t.device)
    if key not in _FACTORS:
        _FACTORS[key] = tuple(torch.tensor(v, dtype=t.dtype, device=t.device) for v in (0.5, 1.0, 2.0))
    return _FACTORS[key]


class Safeguarded(StepRule):
    r"""A step rule made monotone: α_t = γ_t·α_t^rule, and a trial that raises the loss,
    f(x_α) > f(x) (adaptive weights frozen at x; a rounding slack of 64ε·|f|), is rejected: the
    sample stays at x and retries at the next iteration with γ halved (one evaluation per
    iteration, decided on the device: no host read). An accepted trial sets γ ← min(1, 2γ), so the
    step recovers. Below γ = 2^−``max_halvings`` the sample stops retrying.

    While the wrapped rule's own step decreases the loss (noiseless runs, stable steps) every trial is
    accepted at γ = 1 and the iteration is exactly the wrapped rule's. When it would rise — noisy
    data, y ≈ 0 measurements, a step above the stability limit — the sample's step shrinks instead of
    diverging. A sample for which no trial decreases the loss does not move (the driver reports it
    as stalled). State: ``sg_gamma`` (B,), ``accepted``/``retry`` (B,) bool, plus the wrapped rule's.
    """

    name = "safeguarded"
    needs_values = True

    def __init__(self, rule: StepRule, max_halvings: int = 30) -> None:
        if not isinstance(rule, StepRule) or rule.needs_values:
            raise ValueError("Safeguarded wraps a rule that does not evaluate the loss itself "
                             "(Constant, Schedule, WFRamp)")
        self.rule, self.mu = rule, rule.mu
        self.max_halvings = int(max_halvings)

    def init_state(self, x):
        rdt = x.real.dtype if x.is_complex() else x.dtype
        B = x.shape[0]
        return {**self.rule.init_state(x), "sg_gamma": torch.ones(B, dtype=rdt, device=x.device),
                "accepted": torch.ones(B, dtype=torch.bool, device=x.device),
                "retry": torch.zeros(B, dtype=torch.bool, device=x.device)}

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        if f is None or (ctx.evaluate is None and ctx.evaluate_full is None):
            raise ValueError("the safeguarded step evaluates the loss at trial points: pass a closure "
                             "(or safeguard=False)")
        active = ctx.active
        base = self.rule.alpha(t, scale, mu)
        gamma = state["sg_gamma"]
        alpha = gamma * base                  # inactive samples' trials are never accepted (ok ⊂ active)
        ok, x_new, f_new, cache = one_trial(x, f, grad, direction, alpha, ctx, 0.0, _SLACK[f.dtype])
        retry = active & ~ok & (gamma > 2.0 ** -self.max_halvings)
        # γ ← min(1, 2γ) where accepted, γ/2 where retrying, else γ (γ ≤ 1 always: one clamp suffices)
        half, one, two = _factors(gamma)
        state["sg_gamma"] = (gamma * torch.where(ok, two, torch.where(retry, half, one))).clamp_(max=1.0)
        state.update(accepted=ok, retry=retry)
        return alpha * ok, x_new, f_new, cache          # α where accepted, else 0 (α is finite)

    def alpha(self, t, scale, mu=None):
        return None

    def step_key(self, t):
        return declared_key(self, Safeguarded, self.rule.step_key(t), t, ("__call__", "alpha"))

    def describe(self):
        return self.rule.describe()      # the wrapped rule's steps (logs record "safeguard" among the options)

    def current(self, t=None):
        return self.rule.current(t) + " (safeguarded)"

    def smaller(self):
        return self.rule.smaller()


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
    return Constant(check_mu(step, "step"))
