"""Exact pathwise responses (phasetorch.theory.responses), alone, against hand-computed Jacobians."""

import pytest
import torch

from phasetorch.tensors import make_generator
from phasetorch.theory.responses import response_row, stein_mu


def _random_case(R, T, N, seed=0):
    g = make_generator(seed)
    K = torch.zeros(R, T + 2, T + 1, dtype=torch.float64)
    K[:, :T + 1, :T + 1] = torch.tril(torch.randn(R, T + 1, T + 1, generator=g, dtype=torch.float64), -1) * 0.5
    gp = torch.randn(R, T + 1, N, generator=g, dtype=torch.float64)
    return K, gp


def test_response_row_tiny_by_hand():
    """t = 1, 2: R_g(1,0) = E g'₁K(1,0)g'₀, R_g(2,0) = E g'₂[K(2,0)g'₀ + K(2,1)g'₁K(1,0)g'₀], …"""
    K, gp = _random_case(R=1, T=2, N=3)
    k10, k20, k21 = K[0, 1, 0], K[0, 2, 0], K[0, 2, 1]
    g0, g1, g2 = gp[0]
    buf = torch.empty(1, 3, 3, dtype=torch.float64)
    assert torch.allclose(response_row(K, gp, gp[:, 0], 0, buf)[0], g0.mean()[None])
    row1 = response_row(K, gp, gp[:, 1], 1, buf)[0]
    assert torch.allclose(row1, torch.stack([(g1 * k10 * g0).mean(), g1.mean()]))
    row2 = response_row(K, gp, gp[:, 2], 2, buf)[0]
    expect = torch.stack([(g2 * (k20 * g0 + k21 * g1 * k10 * g0)).mean(), (g2 * k21 * g1).mean(), g2.mean()])
    assert torch.allclose(row2, expect, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("leaf,chunk", [(1, 7), (2, 3), (4, 20), (64, 20)])
def test_response_row_equals_inverse_jacobian(leaf, chunk):
    """Row t of J = (I − K D)⁻¹ per sample (D = diag g'), weighted by g'(r_t) and averaged; any leaf
    size of the recursion and any chunking of the samples give the same numbers."""
    R, T, N = 2, 9, 20
    K, gp = _random_case(R, T, N, seed=1)
    eye = torch.eye(T + 1, dtype=torch.float64)
    for t in (3, T):
        buf = torch.empty(R, T + 1, chunk, dtype=torch.float64)
        got = response_row(K, gp, gp[:, t], t, buf, leaf=leaf)
        Kt = K[:, :t + 1, :t + 1]
        expect = torch.zeros(R, t + 1, dtype=torch.float64)
        for r in range(R):
            for n in range(N):
                J = torch.linalg.inv(eye[:t + 1, :t + 1] - Kt[r] @ torch.diag(gp[r, :t + 1, n]))
                expect[r] += gp[r, t, n] * J[t]
        assert torch.allclose(got, expect / N, rtol=1e-10, atol=1e-12), (t, got, expect / N)


def test_response_row_float32_and_batch():
    """float32 samples (kernels float64 on output); replicate r of a batch equals it alone."""
    K, gp = _random_case(R=3, T=5, N=50, seed=2)
    buf64 = torch.empty(3, 6, 50, dtype=torch.float64)
    ref = response_row(K, gp, gp[:, 5], 5, buf64)
    got = response_row(K, gp.float(), gp[:, 5].float(), 5, torch.empty(3, 6, 50))
    assert got.dtype == torch.float64 and torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    one = response_row(K[1:2], gp[1:2], gp[1:2, 5], 5, torch.empty(1, 6, 50, dtype=torch.float64))
    assert torch.allclose(one[0], ref[1], rtol=1e-13, atol=1e-15)


def test_stein_mu_formula():
    """μ = E[Sg] − ρR_g(t,★) − Σ_s m(s)R_g(t,s), per replicate."""
    m = torch.tensor([[0.9, 0.8, 0.7]], dtype=torch.float64)
    row = torch.tensor([[0.1, -0.2, 1.5]], dtype=torch.float64)
    mu = stein_mu(torch.tensor([0.3], dtype=torch.float64), 0.95, torch.tensor([0.05], dtype=torch.float64), m, row)
    assert mu.item() == pytest.approx(0.3 - 0.95 * 0.05 - (0.09 - 0.16 + 1.05))
