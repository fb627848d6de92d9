r"""Single-index models for the DMFT and the law of the sample side at the start of gradient descent.

A single-index model (theory.md §1): rows a_i ~ N(0, I_d), ‖x*‖ = 1, s_i = ⟨a_i, x*⟩ ~ N(0, 1),
y_i = f(s_i, ε_i), per-sample loss ℓ(r; y) with r = ⟨a_i, x⟩. The DMFT needs g = ∂_rℓ, g' = ∂_r g,
∂_y g, the link f and ∂_s f, and E y (the spectral preprocessing sees ŷ = y/E y).

**Law at the start** (theory.md §2, §4; Lu & Li 2017; Mondelli & Montanari 2018). With
S, G ~ N(0, 1) independent, ε ~ N(0, 1), Y = f(S, ε) and the start overlap ρ:

    P = ρ S + √(1 − ρ²) G,    τ(Y) = T(Ŷ)/(λ* − T(Ŷ)),    Ŷ = Y/E Y,

where λ* is the auxiliary root of δ E[(S² − 1) τ(Y)] = 1 (the tilt form of the spectral estimator).
The spectral start's residual is r₀ = c₀(1 + τ(Y)) P — not Gaussian given Y. A data-independent
(warm) start has τ ≡ 0. Anchors of the law (each → 1, resp. λ₁(D), as N → ∞):
ρ² + δE[τ²P²] = 1 (E V̂² = 1), δE[(S² − 1)τ] = 1 (the λ* equation), E[T(1 + τ)²P²] = λ₁(D).

Only the real field is derived here; a complex model replaces S² by |S|² and needs holomorphic and
antiholomorphic responses, which the fields of :class:`SingleIndexModel` do not yet describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["SingleIndexModel", "phase_retrieval", "linear_regression", "StartLaw", "start_law",
           "preprocessing_values", "spectral_tilt", "check_noise"]


@dataclass(frozen=True)
class SingleIndexModel:
    r"""A single-index model y = f(s, ε) with a per-sample loss ℓ(r; y) (real field).

    ``link(s, eps)`` → y, ``link_ds(s, eps)`` → ∂y/∂s, ``loss(r, y)`` → ℓ, ``g`` = ∂ℓ/∂r,
    ``g_r`` = ∂g/∂r, ``g_y`` = ∂g/∂y, ``mean_y`` = E y (the spectral preprocessing sees
    ŷ = y / E y), ``noise`` = σ (the noise level of the link), ``stability`` (``"quartic"`` or
    ``"quadratic"``) selects the step-size rule of :meth:`safe_step`.
    """

    name: str
    link: Callable[[Tensor, Tensor], Tensor]
    link_ds: Callable[[Tensor, Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor, Tensor], Tensor]
    g_r: Callable[[Tensor, Tensor], Tensor]
    g_y: Callable[[Tensor, Tensor], Tensor]
    mean_y: float = 1.0
    noise: float = 0.0
    stability: str = "quartic"

    def safe_step(self, delta: float, r_max: float, l2: float) -> float:
        """Largest step η the explicit-Euler stability rule allows (theory.md §4 pitfall).

        Quartic loss: a residual r takes an Euler step on a cubic and diverges once
        (η/δ) r² ≳ 2, so η < 2δ / r_max². Square loss: η (λ_max(AᵀA/n) + λ) < 2 with the
        Marchenko–Pastur edge λ_max = (1 + 1/√δ)².
        """
        if self.stability == "quartic":
            return 2.0 * delta / max(r_max, 1e-12) ** 2
        return 2.0 / ((1.0 + 1.0 / math.sqrt(delta)) ** 2 + l2)


def check_noise(noise: float) -> float:
    """σ ≥ 0 of the additive Gaussian noise (ValueError otherwise)."""
    sigma = float(noise)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise is the standard deviation σ ≥ 0 of the additive Gaussian noise, got {noise}")
    return sigma


def phase_retrieval(noise: float = 0.0) -> SingleIndexModel:
    r"""Real phase retrieval y = s² + σε with the intensity loss ℓ = (r² − y)²/4 (Wirtinger flow).

    g = (r² − y) r, g' = 3r² − y, ∂_y g = −r; E y = 1 (‖x*‖ = 1, E ε = 0).
    """
    sigma = check_noise(noise)
    return SingleIndexModel(
        name="phase_retrieval", noise=sigma, mean_y=1.0, stability="quartic",
        link=lambda s, e: s * s + sigma * e, link_ds=lambda s, e: 2 * s,
        loss=lambda r, y: 0.25 * (r * r - y) ** 2, g=lambda r, y: (r * r - y) * r,
        g_r=lambda r, y: 3 * r * r - y, g_y=lambda r, y: -r)


def linear_regression(noise: float = 0.0) -> SingleIndexModel:
    r"""Linear regression y = s + σε with the square loss ℓ = (r − y)²/2 (g = r − y, g' = 1, ∂_y g = −1).

    E y = 0, so no spectral start is defined: use ``init="warm"``.
    """
    sigma = check_noise(noise)
    return SingleIndexModel(
        name="linear_regression", noise=sigma, mean_y=0.0, stability="quadratic",
        link=lambda s, e: s + sigma * e, link_ds=lambda s, e: torch.ones_like(s),
        loss=lambda r, y: 0.5 * (r - y) ** 2, g=lambda r, y: r - y,
        g_r=lambda r, y: torch.ones_like(r), g_y=lambda r, y: -torch.ones_like(r))


def preprocessing_values(T: Callable[[Tensor], Tensor], Y: Tensor, mean_y: float,
                         derivative: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    r"""(T(Ŷ), dT(Ŷ)/dY) with Ŷ = Y / E y; the derivative (by autograd, 0 where T does not depend on
    ŷ) only when ``derivative``, else None. ValueError when T is not a finite elementwise map."""
    Yhat = (Y / mean_y).detach()
    dT = None
    if derivative:
        Yg = Yhat.clone().requires_grad_(True)
        Tg = T(Yg)
        if isinstance(Tg, Tensor) and Tg.requires_grad:
            dT = torch.autograd.grad(Tg.sum(), Yg, allow_unused=True)[0]
        dT = torch.zeros_like(Yhat) if dT is None else dT.detach() / mean_y         # dT/dY = T'(Ŷ)/E y
        values = Tg.detach() if isinstance(Tg, Tensor) else Tg
    else:
        values = T(Yhat)
    if not isinstance(values, Tensor) or values.shape != Yhat.shape:
        raise ValueError("T must map a tensor of normalised intensities to a tensor of the same shape")
    if not torch.isfinite(values).all():
        raise ValueError("T(ŷ) is not finite on the population; floor small intensities in T")
    return values, dT


def spectral_tilt(T_values: Tensor, dT: Optional[Tensor], lam_star: float) -> Tuple[Tensor, Optional[Tensor]]:
    r"""τ = T/(λ* − T) and dτ/dY = (dT/dY) λ*/(λ* − T)² (None without dT); λ* > sup T required."""
    ls = float(lam_star)
    if not ls > float(T_values.max()):
        raise ValueError(f"lam_star = {ls} must exceed sup T = {float(T_values.max()):.6g} (it is the root of "
                         "δE[(S²−1)T/(λ−T)] = 1 above the support of T)")
    tau = T_values / (ls - T_values)
    dtau = dT * ls / (ls - T_values) ** 2 if dT is not None else None
    return tau, dtau


@dataclass
class StartLaw:
    r"""A Monte-Carlo population of the sample side at the start (module docstring), shape (R, N).

    ``S``, ``G``, ``Y``, ``P``; ``f_S`` = ∂Y/∂S (pathwise μ only, else None); ``T`` = T(Ŷ) and
    ``dT`` = dT/dY (None without a preprocessing / without derivatives); ``tau`` = τ(Y) (0 for a
    warm or power start) and ``dtau`` = dτ/dY (pathwise only).
    """

    S: Tensor
    G: Tensor
    Y: Tensor
    P: Tensor
    f_S: Optional[Tensor]
    T: Optional[Tensor]
    dT: Optional[Tensor]
    tau: Tensor
    dtau: Optional[Tensor]

    @property
    def tau_P(self) -> Tensor:
        """τ(Y) P, the spectral memory term of the residual per unit R_x(t, ★)."""
        return self.tau * self.P

    def anchors(self, delta: float, rho: float) -> Dict[str, Tensor]:
        """Per-replicate (float64) anchors: ρ² + δE[τ²P²] → 1, δE[(S² − 1)τ] → 1, E[T(1 + τ)²P²] → λ₁(D)."""
        tauP = self.tau_P
        onept = (1 + self.tau) * self.P
        return {"v_norm": rho ** 2 + delta * (tauP * tauP).to(torch.float64).mean(dim=1),
                "tilt_equation": delta * ((self.S * self.S - 1) * self.tau).to(torch.float64).mean(dim=1),
                "rayleigh": (self.T * onept * onept).to(torch.float64).mean(dim=1)}


def start_law(model: SingleIndexModel, S: Tensor, G: Tensor, eps: Tensor, rho: float,
              T: Optional[Callable[[Tensor], Tensor]] = None, lam_star: Optional[float] = None,
              pathwise: bool = False) -> StartLaw:
    r"""The start's population from standard normal draws S, G, ε (module docstring).

    ``T`` is evaluated when given (spectral and power starts); the tilt τ needs ``lam_star`` too
    (spectral start), otherwise τ ≡ 0. ``pathwise`` adds ∂Y/∂S, dT/dY and dτ/dY.
    """
    Y = model.link(S, eps)
    P = rho * S + math.sqrt(max(1.0 - rho ** 2, 0.0)) * G
    f_S = model.link_ds(S, eps) if pathwise else None
    T_values = dT = None
    if T is not None:
        T_values, dT = preprocessing_values(T, Y, model.mean_y, derivative=pathwise)
    if lam_star is not None:
        tau, dtau = spectral_tilt(T_values, dT, lam_star)
    else:
        tau = torch.zeros_like(S)
        dtau = torch.zeros_like(S) if pathwise else None
    return StartLaw(S=S, G=G, Y=Y, P=P, f_S=f_S, T=T_values, dT=dT, tau=tau, dtau=dtau)
