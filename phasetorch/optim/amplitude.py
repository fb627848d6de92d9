r"""Amplitude-based flows: reshaped WF, amplitude flow, truncated and reweighted amplitude flow.

All descend the amplitude loss f = (1/2m)Σ w_i(|a_iᴴx| − √y_i)² (:mod:`phasetorch.losses`) with a
constant step x ← x − μ∇f(x); the step is not divided by ‖x₀‖² (the gradient is homogeneous of
degree 1 in (x, √y)). They differ in the weights w and the initialisation:

======================================  =========================================  ==================
class                                   loss                                       μ (default)
======================================  =========================================  ==================
:class:`ReshapedWirtingerFlow`          AmplitudeLoss (Zhang & Liang, NeurIPS 2016)   0.8
:class:`AmplitudeFlow`                  AmplitudeLoss (Wang, Giannakis & Eldar 2018)  0.6 (1 for complex: pass mu=1)
:class:`TruncatedAmplitudeFlow`         TruncatedAmplitudeLoss, γ = 0.7 (same)        0.6 (1 for complex: pass mu=1)
:class:`ReweightedAmplitudeFlow`        ReweightedAmplitudeLoss (Wang et al. 2018)    6 (see class)
======================================  =========================================  ==================
"""

from __future__ import annotations

from .gradient import GradientDescent

__all__ = ["AmplitudeFlow", "ReshapedWirtingerFlow", "TruncatedAmplitudeFlow", "ReweightedAmplitudeFlow"]


class AmplitudeFlow(GradientDescent):
    r"""Amplitude flow: x ← x − μ∇f(x) on :class:`~phasetorch.losses.AmplitudeLoss`, μ = 0.6.

    The untruncated version of TAF (Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64, 2018).
    μ = 0.6 is the paper's step for real data; the ``af``/``taf`` presets of
    :func:`phasetorch.reconstruct` use μ = 1 for complex data (see :mod:`phasetorch.optim.presets`).
    """

    default_mu = 0.6

    def __init__(self, params, step=None, schedule=None, mu: float = None, batch_dims: int = 0) -> None:
        super().__init__(params, step=step, schedule=schedule, mu=mu, scale="none", batch_dims=batch_dims)


class ReshapedWirtingerFlow(AmplitudeFlow):
    r"""Reshaped Wirtinger flow (Zhang & Liang, "Reshaped Wirtinger flow for solving quadratic system
    of equations", NeurIPS 2016): x ← x − μ∇f on the amplitude loss, μ = 0.8."""

    default_mu = 0.8


class TruncatedAmplitudeFlow(AmplitudeFlow):
    r"""Truncated amplitude flow (Wang, Giannakis & Eldar 2018, Algorithm 1): x ← x − μ∇f on
    :class:`~phasetorch.losses.TruncatedAmplitudeLoss` (γ = 0.7), μ = 0.6."""

    default_mu = 0.6


class ReweightedAmplitudeFlow(AmplitudeFlow):
    r"""Reweighted amplitude flow (Wang, Giannakis, Saad & Chen, "Phase retrieval via reweighted
    amplitude flow", IEEE Trans. Signal Process. 66, 2018, Algorithm 1): x ← x − μ∇f on
    :class:`~phasetorch.losses.ReweightedAmplitudeLoss`.

    Near the solution the weights are ≈ 1/(1 + β), so the effective step is μ/(1 + β). Default
    μ = 6, for the loss's default β = 10 (effective step ≈ 0.55, like TAF's 0.6); the ``raf`` preset
    of :func:`phasetorch.reconstruct` uses μ = 4 with β = 5 for complex data (effective ≈ 0.67).
    """

    default_mu = 6.0
