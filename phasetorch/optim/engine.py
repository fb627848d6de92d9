r"""The algorithm protocol: an iterative method as a pure step function over a dict of tensors.

Every algorithm of phasetorch (gradient descent with any step rule, L-BFGS, error reduction, HIO)
is an :class:`Algorithm`: its hyper-parameters are plain numbers fixed at construction, and
everything it carries from one iteration to the next — step sizes, curvature pairs, the HIO
field — is a dict of tensors with a leading batch dimension::

    state = alg.init_state(x0, scale)                    # dict[str, Tensor]
    out = alg.step(state, t, x, f, grad, ctx, mu=μ)      # updates state in place; StepResult

The same objects drive :func:`phasetorch.reconstruct` (one generic loop) and the
``torch.optim.Optimizer`` adapters of :mod:`phasetorch.optim.adapter` (state in ``self.state``,
μ in ``param_groups[0]["lr"]``), so a run and a hand-written loop take identical steps.

Shapes: x is the flat batch ``(B, *signal)``; f, the step α, ``scale`` and ``ctx.active`` are
``(B,)``. ``scale`` is the loss's per-sample step factor s (α = μ·s; 1/‖x₀‖² for the intensity loss,
1 otherwise). Complex x is a real vector of twice the length with Re⟨a, b⟩ (see
:mod:`phasetorch.optim.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, NamedTuple, Optional, Tuple

import torch

__all__ = ["Algorithm", "StepContext", "StepResult", "State", "declared_key"]

State = Dict[str, torch.Tensor]


@dataclass
class StepContext:
    """What an algorithm may use besides its state during one step.

    evaluate : ``evaluate(x_trial) -> (f per sample, cache or None)`` at trial points (line
        searches); None when no closure is available.
    active : bool ``(B,)``: samples still iterating (the others must not move).
    cache : the measurement-side cache at x (r = Ax/√e for the library's losses) or None.
    project : an optional projection P applied to every trial point.
    evaluate_full : ``evaluate_full(x_trial) -> (evaluation, f)``: the driver's complete evaluation at
        a trial point (value, gradient and cache in one pass, returned as ``StepResult.cache`` when
        the trial is taken, so the driver does not evaluate it again) and the trial value ``f`` as
        ``evaluate`` gives it; None when unavailable (the torch adapters). When it is given, the
        caller keeps x and its evaluation for every sample that ``StepResult.accepted`` rejects, so a
        step that reports ``accepted`` may return the trial point for all samples.
    """

    evaluate: Optional[Callable] = None
    active: Optional[torch.Tensor] = None
    cache: Optional[torch.Tensor] = None
    project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    evaluate_full: Optional[Callable] = None


class StepResult(NamedTuple):
    """``alpha`` (B,) the step taken (NaN for projection methods), ``x`` the new iterate, ``f`` its
    loss when the step computed it (else None), ``cache`` its measurement cache (else None).

    Steps that test a trial point (line searches, the safeguard) evaluate **one** trial per
    iteration and decide on the device, without a host read: ``accepted`` (B,) bool marks the
    samples that moved to the trial (``cache`` is then the trial's evaluation, kept for them only);
    the others stay at x, and ``retry`` marks those that try a shorter step at the next iteration
    (a backtracking line search spread over iterations: the accepted points are those of the
    classical inner loop). None means every active sample moved and none retries.
    """

    alpha: torch.Tensor
    x: torch.Tensor
    f: Optional[torch.Tensor] = None
    cache: Optional[torch.Tensor] = None
    accepted: Optional[torch.Tensor] = None
    retry: Optional[torch.Tensor] = None


def declared_key(obj: Any, owner: type, key: Hashable, t: int, methods: Tuple[str, ...]) -> Hashable:
    """``owner``'s ``step_key`` for ``obj``: ``key`` when ``type(obj)`` takes ``methods`` (those whose use of t
    the key describes) from ``owner``, else t — a subclass that redefines how a step uses t without
    redefining ``step_key`` is never replayed (:meth:`Algorithm.step_key`)."""
    cls = type(obj)
    return t if any(getattr(cls, m) is not getattr(owner, m) for m in methods) else key


class Algorithm:
    """Base of the algorithm protocol (see the module docstring).

    Capabilities are attributes, not names: the driver reads them instead of branching on strings.
    """

    #: name for logs and messages
    name = "algorithm"
    #: the driver evaluates ∇f at every accepted point (False for projection methods)
    uses_gradient = True
    #: ``step=``/``schedule=`` of :func:`phasetorch.reconstruct` choose this algorithm's step rule
    takes_step_rule = False
    #: the ridge ``l2`` of the loss changes the iteration (False for projection methods)
    takes_l2 = True
    #: the step evaluates the loss at trial points (needs ``ctx.evaluate``)
    needs_values = False
    #: default μ (``lr`` of the torch adapters)
    mu: float = 1.0

    def init_state(self, x: torch.Tensor, scale: torch.Tensor) -> State:
        """The initial state for the flat batch ``x`` with per-sample step factors ``scale``."""
        return {"scale": scale}

    def step(self, state: State, t: int, x: torch.Tensor, f: Optional[torch.Tensor],
             grad: Optional[torch.Tensor], ctx: StepContext, mu: Optional[float] = None) -> StepResult:
        """One iteration t (1, 2, …) from x; ``mu`` overrides the default μ."""
        raise NotImplementedError  # abstract

    def step_key(self, t: int) -> Hashable:
        """What a step at iteration t takes from t itself, besides tensors: two iterations with equal
        keys dispatch the same operations with the same host values, so a captured block of iterations
        (a CUDA graph, :mod:`phasetorch.replay`) replays correctly at any t whose keys are the same.
        Default: t (no two iterations alike: never replayed); an algorithm that ignores t returns ().
        A library class's key holds for a subclass only while the subclass keeps the methods that take t
        (:func:`declared_key`)."""
        return t

    def describe(self) -> Any:
        """A JSON-friendly description of the step (for logs)."""
        return None

    def divergence_hint(self, t: int) -> str:
        """What to change when a sample diverges (the knob to turn), for error messages."""
        return "check the data and the operator (this algorithm has no step size to reduce)"
