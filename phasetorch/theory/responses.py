r"""Exact pathwise responses of the DMFT's sample side (theory.md §4).

The residual of one data point follows r_t = U_t + Σ_{s<t} K(t,s) g(r_s; Y) + b_t τ(Y) P, so

    ∂r_t/∂U_k = 1{k=t} + Σ_{s<t} K(t,s) g'(r_s) ∂r_s/∂U_k,

i.e. per sample J = (I − K D)⁻¹ with D = diag g'(r_s), and the response kernel is

    R_g(t, k) = E[g'(r_t) ∂r_t/∂U_k],   k ≤ t.

The drift μ(t) = E ∂g(r_t)/∂S (through Y) in Stein form (valid for a non-smooth preprocessing):

    μ(t) = E[S g(r_t)] − ρ R_g(t, ★) − Σ_{s≤t} m(s) R_g(t, s).

Shapes: R replicates, N samples per replicate; kernels float64, per-sample arrays in their dtype.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

__all__ = ["RESPONSE_LEAF", "response_row", "stein_mu"]

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


def _back_substitute(xs: Tensor, KT: Tensor, gp: Tensor, lo: int, hi: int, leaf: int) -> None:
    """Solve for x_lo..x_{hi−1} in place; on entry xs[:, k] holds Σ_{j ≥ hi} x_j K(j, k)."""
    if hi - lo <= leaf:
        for k in range(hi - 1, lo - 1, -1):
            if k + 1 < hi:
                xs[:, k:k + 1].baddbmm_(KT[:, k:k + 1, k + 1:hi], xs[:, k + 1:hi])
            xs[:, k].mul_(gp[:, k])
        return
    mid = (lo + hi) // 2
    _back_substitute(xs, KT, gp, mid, hi, leaf)
    xs[:, lo:mid].baddbmm_(KT[:, lo:mid, mid:hi], xs[:, mid:hi])
    _back_substitute(xs, KT, gp, lo, mid, leaf)


def stein_mu(mean_Sg: Tensor, rho: float, R_g_star: Tensor, m: Tensor, R_g_row: Tensor) -> Tensor:
    r"""μ(t) = E[S g(r_t)] − ρ R_g(t,★) − Σ_{s≤t} m(s) R_g(t,s), per replicate.

    Shapes: ``mean_Sg``, ``R_g_star`` (R,); ``m``, ``R_g_row`` (R, t + 1).
    """
    return mean_Sg - rho * R_g_star - (m * R_g_row).sum(dim=1)
