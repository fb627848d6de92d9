r"""The Gaussian fields of the DMFT: parameter-side covariances and the sample side's basis (theory.md §4).

**Parameter side** in closed form: X_t = a_t X* + b_t W★ + Σ_{s<t} K(t,s) W_s, with (W★, W₀, W₁, …)
Gaussian of covariance Σ_W = δ C_g (★ first) and independent of X* (E X*² = 1). With
β_t = (b_t, K(t, 0..t−1)):

    C(t, s) = a_t a_s + β_tᵀ Σ_W β_s,     c_V(t) = E X_t V̂ = ρ a_t + β_tᵀ Σ_W e★.

**Sample side.** The fields (S, P, U₁, U₂, …) (U₀ = c₀P is redundant) must have E S² = E P² = 1,
E SP = ρ, E S U_t = m(t) = a_t, E P U_t = c_V(t), E U_t U_s = C(t, s). They are drawn on a persistent
orthonormal Gaussian basis (S, G, ξ₁, ξ₂, …): each new field U_{t+1} takes lower-triangular
coefficients solving a pivoted Cholesky step of this degenerate covariance, and its innovation goes
on one fresh direction ξ_{t+1} (dropped when it vanishes). All algebra is float64.

Array layout (R replicates): ``a``, ``b`` (R, T + 2); ``K`` (R, T + 2, T + 1) with K[t, s] = K(t, s);
``SW`` (R, T + 2, T + 2) with index 0 = ★ and s + 1 = W_s; ``L`` (R, T + 1, T + 2) with
U_t = L[t] · (S, G, ξ₁, …); ``dropped`` (R, T + 1) bool.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

Tensor = torch.Tensor

__all__ = ["PIVOT_TOL", "coefficient_norm2", "two_time_covariance", "extend_basis"]

PIVOT_TOL = 1e-11


def coefficient_norm2(SW: Tensor, ca: Tensor, cb: Tensor, cK: Tensor, upto: int) -> Tensor:
    r"""E(c_a X* + c_b W★ + Σ_{s<upto} c_K[s] W_s)² = c_a² + βᵀ Σ_W β, β = (c_b, c_K[:upto]); shape (R,)."""
    beta = torch.cat([cb[:, None], cK[:, :upto]], dim=1)
    Sw = SW[:, :upto + 1, :upto + 1]
    return ca * ca + torch.einsum("ri,rij,rj->r", beta, Sw, beta)


def two_time_covariance(a: Tensor, b: Tensor, K: Tensor, SW: Tensor, rho: float, n: int) -> Tuple[Tensor, Tensor]:
    r"""(C(t, s), c_V(t)) for t, s < n: shapes (R, n, n) and (R, n) (module docstring)."""
    beta = torch.cat([b[:, :n, None], K[:, :n, :n]], dim=2)
    C = a[:, :n, None] * a[:, None, :n] + beta @ SW[:, :n + 1, :n + 1] @ beta.transpose(1, 2)
    cV = rho * a[:, :n] + (beta @ SW[:, :n + 1, 0:1]).squeeze(2)
    return C, cV


def extend_basis(L: Tensor, a: Tensor, b: Tensor, K: Tensor, SW: Tensor, dropped: Tensor, t: int,
                 rho: float, sq: float) -> Tensor:
    r"""Write the coefficients of U_{t+1} on the basis (S, G, ξ₁, …, ξ_{t+1}) into ``L[:, t + 1]``.

    The known fields (S, P, U₁, …, U_t) have lower-triangular coefficient rows; U_{t+1} must have
    covariances (m(t+1), c_V(t+1), C(t+1, 1..t)) with them. Solve the triangular system (a pivoted
    Cholesky step: rows whose own innovation was dropped are skipped), then put the remaining variance
    C(t+1,t+1) − ‖l‖² on ξ_{t+1} — or drop it (``dropped[:, t + 1]``) when it is below
    PIVOT_TOL·C(t+1,t+1). ``sq`` = √(1 − ρ²) is the coefficient of P on G. Returns the relative
    negative part of that variance, shape (R,) (≈ 1e-16 when Σ_W is positive semi-definite).
    """
    R = a.shape[0]
    n = t + 2                                                     # known variables and basis columns
    beta_new = torch.cat([b[:, t + 1:t + 2], K[:, t + 1, :t + 1]], dim=1)       # (R, t+2)
    Sw = SW[:, :t + 2, :t + 2]
    beta_old = torch.cat([b[:, 1:t + 1, None], K[:, 1:t + 1, :t + 1]], dim=2)   # (R, t, t+2): X_1..X_t
    swb = torch.bmm(Sw, beta_new[:, :, None]).squeeze(2)
    C_new_old = a[:, 1:t + 1] * a[:, t + 1:t + 2] + torch.bmm(beta_old, swb[:, :, None]).squeeze(2)
    cV = rho * a[:, t + 1] + swb[:, 0]
    C_tt = a[:, t + 1] ** 2 + (beta_new * swb).sum(1)
    target = torch.cat([a[:, t + 1:t + 2], cV[:, None], C_new_old], dim=1)     # (R, t+2)
    M = torch.zeros(R, n, n, dtype=torch.float64, device=a.device)
    M[:, 0, 0] = 1.0
    M[:, 1, 0], M[:, 1, 1] = rho, sq
    if t > 0:
        M[:, 2:, :] = L[:, 1:t + 1, :n]
    drop = torch.zeros(R, n, dtype=torch.bool, device=a.device)
    drop[:, 1] = sq <= math.sqrt(PIVOT_TOL)
    if t > 0:
        drop[:, 2:] = dropped[:, 1:t + 1]
    eye = torch.eye(n, dtype=torch.float64, device=a.device).expand(R, n, n)
    M = torch.where(drop[:, :, None], eye, M)
    target = torch.where(drop, torch.zeros_like(target), target)
    l = torch.linalg.solve_triangular(M, target[:, :, None], upper=False).squeeze(2)
    innov = C_tt - (l * l).sum(1)
    small = innov <= PIVOT_TOL * C_tt.abs().clamp(min=1e-300)
    L[:, t + 1, :n] = l
    L[:, t + 1, n] = torch.where(small, torch.zeros_like(innov), innov.clamp(min=0).sqrt())
    dropped[:, t + 1] = small
    return (-innov).clamp(min=0) / C_tt.abs().clamp(min=1e-300)       # relative inconsistency (0 if PSD)
