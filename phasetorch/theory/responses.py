r"""Exact pathwise responses of the DMFT's sample side (theory.md §4).

The residual of one data point follows r_t = U_t + Σ_{s<t} K(t,s) g(r_s; Y) + b_t τ(Y) P, so

    ∂r_t/∂U_k = 1{k=t} + Σ_{s<t} K(t,s) g'(r_s) ∂r_s/∂U_k,

i.e. per sample J = (I − K D)⁻¹ with D = diag g'(r_s), and the response kernel is

    R_g(t, k) = E[g'(r_t) ∂r_t/∂U_k],   k ≤ t.

The drift μ(t) = E ∂g(r_t)/∂S (through Y) in Stein form (valid for a non-smooth preprocessing):

    μ(t) = E[S g(r_t)] − ρ R_g(t, ★) − Σ_{s≤t} m(s) R_g(t, s).

**Complex field** (docs/theory.md). The residual is complex and g real-linear in it:
δg = g_r δr + g_r̄ δr̄ (Wirtinger derivatives; in ℝ² this is the symmetric Hessian H of ℓ). Only the
holomorphic response R_g(t,k) = E ∂g(r_t)/∂U_k survives in the DMFT (circular symmetry makes
E ∂g/∂Ū_k = 0), but pathwise the antiholomorphic part propagates, so the back-substitution runs on
2-vectors of ℝ² (stored as complex numbers ξ): x_t = H_t e₁ ↔ ξ_t = g_r(t) + g_r̄(t) and, for k < t,
σ_k = Σ_{j>k} K(j,k) ξ_j, ξ_k = g_r(k) σ_k + g_r̄(k) σ̄_k. Then Re ξ_k = (H_t ∂ρ_t/∂U_k)₁₁, whose mean
is R_g(t,k): rotation invariance makes E[H_t ∂ρ_t/∂U_k] = R_g·I. The cost is 2× the real one (one
complex channel); R_g(t,t) = E g_r(t) is taken directly.

Shapes: R replicates, N samples per replicate; kernels float64, per-sample arrays in their dtype.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["RESPONSE_LEAF", "response_row", "response_row_complex", "stein_mu"]

RESPONSE_LEAF = 4


def response_row(K: Tensor, g_prime: Tensor, g_prime_t: Tensor, t: int, buf: Tensor,
                 leaf: int = RESPONSE_LEAF) -> Tensor:
    r"""R_g(t, k), k = 0..t, shape (R, t + 1) float64, from exact pathwise Jacobians.

    Row t of J solves xᵀ(I − K D) = e_tᵀ: x_t = 1 and, for k = t−1, …, 0,
    x_k = g'(r_k) Σ_{j=k+1}^{t} x_j K(j,k). Recursive (divide-and-conquer) back-substitution: solve
    the upper half of an index range, add its contribution to the lower half with one matrix
    product, recurse — O(N t²) work, mostly in matrix products.

    Args:
        K: (R, ≥ t + 1, ≥ t + 1) float64, K(j, k) = R_x(j, k) for k < j.
        g_prime: (R, ≥ t, N) history g'(r_s) (rows 0..t−1 are read).
        g_prime_t: (R, N) g'(r_t).
        buf: reused (R, ≥ t + 1, chunk) work buffer of g_prime's dtype; samples are processed in
            chunks of its last dimension.
        leaf: index ranges of at most this length are solved by the plain loop.
    """
    R, _, N = g_prime.shape
    dtype = g_prime.dtype
    if t == 0:
        return g_prime_t.to(torch.float64).mean(dim=1)[:, None]
    KT = K[:, :t + 1, :t + 1].transpose(1, 2).to(dtype).contiguous()     # KT[r, k, j] = K(j, k)
    out = torch.zeros(R, t + 1, dtype=torch.float64, device=g_prime.device)
    chunk = buf.shape[2]
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        xs = buf[:, :t + 1, :n1 - n0]
        xs[:, t] = 1
        xs[:, :t] = KT[:, :t, t, None]                  # contribution of x_t = 1
        _back_substitute(xs, KT, g_prime[:, :, n0:n1], 0, t, leaf)
        out += torch.bmm(xs, g_prime_t[:, n0:n1, None]).squeeze(2).to(torch.float64)
    return out / N


def response_row_complex(K: Tensor, g_r: Tensor, g_rbar: Tensor, g_r_t: Tensor, g_rbar_t: Tensor, t: int,
                         buf: Tensor, leaf: int = RESPONSE_LEAF) -> Tensor:
    r"""R_g(t, k), k = 0..t, shape (R, t + 1) float64, complex field (module docstring).

    Args:
        K: (R, ≥ t + 1, ≥ t + 1) float64 (real: the kernels of the complex DMFT are real).
        g_r: (R, ≥ t, N) real history of g_r(r_s); g_rbar: (R, ≥ t, N) complex history of g_r̄(r_s).
        g_r_t, g_rbar_t: (R, N) at step t. buf: reused complex (R, ≥ t + 1, chunk) buffer.
    """
    R, _, N = g_r.shape
    out = torch.zeros(R, t + 1, dtype=torch.float64, device=g_r.device)
    out[:, t] = g_r_t.to(torch.float64).mean(dim=1)
    if t == 0:
        return out
    KT = K[:, :t + 1, :t + 1].transpose(1, 2).to(buf.dtype).contiguous()     # KT[r, k, j] = K(j, k)
    chunk = buf.shape[2]
    acc = torch.zeros(R, t, dtype=torch.float64, device=g_r.device)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        xs = buf[:, :t + 1, :n1 - n0]
        v = g_r_t[:, n0:n1] + g_rbar_t[:, n0:n1]                  # ξ_t = H_t e₁
        xs[:, t] = v
        xs[:, :t] = KT[:, :t, t, None] * v[:, None, :]
        _back_substitute(xs, KT, (g_r[:, :, n0:n1], g_rbar[:, :, n0:n1]), 0, t, leaf)
        acc += xs[:, :t].real.sum(dim=2).to(torch.float64)
    out[:, :t] = acc / N
    return out


def _apply_diag(xs: Tensor, gp, k: int) -> None:
    """xs[:, k] ← D_k xs[:, k]: g'(r_k)·σ (real), or g_r σ + g_r̄ σ̄ (complex; ``gp`` a pair)."""
    if isinstance(gp, tuple):
        s = xs[:, k]
        xs[:, k] = gp[0][:, k] * s + gp[1][:, k] * s.conj()
    else:
        xs[:, k].mul_(gp[:, k])


def _back_substitute(xs: Tensor, KT: Tensor, gp, lo: int, hi: int, leaf: int) -> None:
    """Solve for x_lo..x_{hi−1} in place; on entry xs[:, k] holds Σ_{j ≥ hi} x_j K(j, k)."""
    if hi - lo <= leaf:
        for k in range(hi - 1, lo - 1, -1):
            if k + 1 < hi:
                xs[:, k:k + 1].baddbmm_(KT[:, k:k + 1, k + 1:hi], xs[:, k + 1:hi])
            _apply_diag(xs, gp, k)
        return
    mid = (lo + hi) // 2
    _back_substitute(xs, KT, gp, mid, hi, leaf)
    xs[:, lo:mid].baddbmm_(KT[:, lo:mid, mid:hi], xs[:, mid:hi])
    _back_substitute(xs, KT, gp, lo, mid, leaf)


def stein_mu(mean_Sg: Tensor, rho: float, R_g_star: Tensor, m: Tensor, R_g_row: Tensor) -> Tensor:
    r"""μ(t) = E[S g(r_t)] − ρ R_g(t,★) − Σ_{s≤t} m(s) R_g(t,s), per replicate (complex: E Re[S̄ g]).

    Shapes: ``mean_Sg``, ``R_g_star`` (R,); ``m``, ``R_g_row`` (R, t + 1).
    """
    return mean_Sg - rho * R_g_star - (m * R_g_row).sum(dim=1)
