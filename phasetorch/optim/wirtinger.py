r"""Wirtinger flow and truncated Wirtinger flow (intensity-based losses).

* :class:`WirtingerFlow` — Candès, Li & Soltanolkotabi, "Phase retrieval via Wirtinger flow: theory
  and algorithms", IEEE Trans. Inf. Theory 61(4), 2015: z_{t} = z_{t−1} − (μ_t/‖z₀‖²) ∇f(z_{t−1}) on
  the intensity loss f = (1/4m)Σ(|a_iᴴz|² − y_i)² (:class:`phasetorch.losses.IntensityLoss`, whose
  ∇f is the paper's), with the ramp μ_t = min(1 − e^{−t/τ₀}, μ_max), τ₀ = 330, μ_max = 0.2. With an
  explicit constant ``step=μ`` it is exactly plain gradient descent with step μ/‖z₀‖² — the
  process the DMFT theory of :mod:`phasetorch.theory` describes (with ``l2=λ`` in the loss).
* :class:`TruncatedWirtingerFlow` — Chen & Candès, "Solving random quadratic systems of equations
  is nearly as easy as solving linear systems", Comm. Pure Appl. Math. 70, 2017: x − μ∇f on the
  truncated Poisson loss (:class:`phasetorch.losses.TruncatedPoissonLoss`), μ = 0.2.
"""

from __future__ import annotations

from .gradient import GradientDescent
from .steps import WFRamp

__all__ = ["WirtingerFlow", "TruncatedWirtingerFlow"]


class WirtingerFlow(GradientDescent):
    r"""Wirtinger flow: x ← x − (μ_t/‖x₀‖²) ∇f(x), by default with Candès's ramp.

    Parameters
    ----------
    params : one tensor x (``(*batch, *signal)``), the starting point x₀ at the first step.
    step : ``None`` (the ramp), a number μ (constant μ/‖x₀‖²), a rule name or a StepRule.
    schedule : a callable t ↦ μ_t (the step is μ_t/‖x₀‖²).
    tau0, mu_max : the ramp's τ₀ = 330 and μ_max = 0.2 (WF paper §4; 0.4 for coded diffraction).
    batch_dims : leading batch dimensions of x (‖x₀‖ and the steps are per sample).

    Pair it with :class:`phasetorch.losses.IntensityLoss` (the ``l2`` of the loss gives
    regularized WF). The gradient convention (∇f = 2∂f/∂x̄ = autograd's) matches the paper's
    update, so a closure that calls ``loss(x, y).sum().backward()`` reproduces WF exactly.
    """

    default_mu = 0.2
    default_scale = "x0"

    def __init__(self, params, step=None, schedule=None, tau0: float = 330.0, mu_max: float = 0.2,
                 batch_dims: int = 0) -> None:
        self._ramp = (float(tau0), float(mu_max))
        super().__init__(params, step=step, schedule=schedule, mu=mu_max, scale="x0", batch_dims=batch_dims)

    def _default_rule(self, mu):
        return WFRamp(*self._ramp)


class TruncatedWirtingerFlow(GradientDescent):
    r"""Truncated Wirtinger flow: x ← x − μ∇f(x), μ = 0.2, on :class:`~phasetorch.losses.TruncatedPoissonLoss`.

    Chen & Candès 2017, Algorithm 1 (their update z + (μ/m)Σ_{i∈E}∇ℓ_i is x − μ∇f for the loss's
    f = −(1/m)Σ ℓ_i). The step is not divided by ‖x₀‖²: the Poisson gradient is homogeneous of
    degree 1. ``step``/``schedule``/``batch_dims`` as in :class:`GradientDescent`.
    """

    default_mu = 0.2

    def __init__(self, params, step=None, schedule=None, mu: float = 0.2, batch_dims: int = 0) -> None:
        super().__init__(params, step=step, schedule=schedule, mu=mu, scale="none", batch_dims=batch_dims)
