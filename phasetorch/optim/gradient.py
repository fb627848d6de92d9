r"""(Projected) gradient descent with a pluggable step rule: the engine of WF, TWF, RWF, TAF, RAF, AF.

x_t = P(x_{t−1} − α_t ∇f(x_{t−1})), with α_t from a :mod:`~phasetorch.optim.steps` rule (per
sample) and P an optional projection (real part, support, non-negativity). The algorithms of the
Wirtinger-flow family differ only in the loss (:mod:`phasetorch.losses`), the step rule and the
initialisation, which :mod:`phasetorch.optim.presets` fixes.
"""

from __future__ import annotations

from .engine import Algorithm, StepResult, declared_key
from .steps import StepRule

__all__ = ["GradientAlgorithm"]


class GradientAlgorithm(Algorithm):
    """x ← P(x − α_t ∇f(x)), α_t from ``rule``; state = the rule's tensors plus ``scale``."""

    name = "gradient"
    takes_step_rule = True

    def __init__(self, rule: StepRule) -> None:
        if not isinstance(rule, StepRule):
            raise ValueError(f"rule must be a phasetorch.optim.steps.StepRule, got {type(rule).__name__}")
        self.rule = rule
        self.mu = rule.mu
        self.needs_values = rule.needs_values

    def init_state(self, x, scale):
        return {"scale": scale, **self.rule.init_state(x)}

    def step(self, state, t, x, f, grad, ctx, mu=None):
        if self.needs_values and ctx.evaluate is None:
            raise ValueError(f"the {self.rule.name} rule evaluates the loss at trial points: pass a closure")
        alpha, x_new, f_new, cache = self.rule(state, t, state["scale"], x, f, grad, -grad, ctx, mu)
        if self.needs_values:            # a one-trial rule: which samples moved, which retry next time
            return StepResult(alpha, x_new, f_new, cache, state["accepted"], state["retry"])
        return StepResult(alpha, x_new, f_new, cache)

    def step_key(self, t):
        return declared_key(self, GradientAlgorithm, self.rule.step_key(t), t, ("step",))

    def describe(self):
        return self.rule.describe()

    def divergence_hint(self, t):
        smaller = self.rule.smaller()
        eg = f", e.g. step={smaller:g}" if smaller is not None else ""
        return f"reduce step (currently {self.rule.current(t)}){eg}, or use step='armijo'"
