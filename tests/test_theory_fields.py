"""Gaussian fields of the DMFT (phasetorch.theory.fields), alone: the basis reproduces the covariances."""

import math

import torch

from phasetorch.tensors import make_generator
from phasetorch.theory.fields import coefficient_norm2, extend_basis, two_time_covariance


def _random_system(R=2, T=5, rho=0.8, c0=1.1, seed=0):
    """Random coefficients (a, b, K) and a PSD Σ_W with Σ_W(★,★) = 1 − ρ² (so E V̂² = 1, V̂ = ρX* + W★)."""
    g = make_generator(seed)
    a = torch.randn(R, T + 2, generator=g, dtype=torch.float64)
    b = torch.randn(R, T + 2, generator=g, dtype=torch.float64)
    K = torch.zeros(R, T + 2, T + 1, dtype=torch.float64)
    for t in range(1, T + 2):
        K[:, t, :t] = torch.randn(R, t, generator=g, dtype=torch.float64)
    a[:, 0], b[:, 0] = c0 * rho, c0
    A = torch.randn(R, T + 2, T + 2, generator=g, dtype=torch.float64)
    SW = A @ A.transpose(1, 2)
    SW = SW * ((1 - rho ** 2) / SW[:, :1, :1])
    return a, b, K, SW


def _direct_covariance(a, b, K, SW, rho, n):
    """E X_t X_s = a_t a_s + Σ_ij β_t[i] Σ_W[i,j] β_s[j] and E X_t V̂ by explicit sums."""
    R = a.shape[0]
    C = torch.zeros(R, n, n, dtype=torch.float64)
    cV = torch.zeros(R, n, dtype=torch.float64)
    for r in range(R):
        betas = [[float(b[r, t])] + [float(K[r, t, s]) for s in range(t)] for t in range(n)]
        for t in range(n):
            cV[r, t] = rho * a[r, t] + sum(betas[t][i] * SW[r, i, 0] for i in range(len(betas[t])))
            for s in range(n):
                C[r, t, s] = a[r, t] * a[r, s] + sum(betas[t][i] * SW[r, i, j] * betas[s][j]
                                                     for i in range(len(betas[t])) for j in range(len(betas[s])))
    return C, cV


def test_covariances_match_direct_sums():
    rho = 0.8
    a, b, K, SW = _random_system(rho=rho)
    C, cV = two_time_covariance(a, b, K, SW, rho, 6)
    C_d, cV_d = _direct_covariance(a, b, K, SW, rho, 6)
    assert torch.allclose(C, C_d, rtol=1e-12, atol=1e-12) and torch.allclose(cV, cV_d, rtol=1e-12, atol=1e-12)
    for t in range(6):
        assert torch.allclose(coefficient_norm2(SW, a[:, t], b[:, t], K[:, t], t), C_d[:, t, t], rtol=1e-12)
    # V̂ has unit variance: c_V(0) = ρa₀ + b₀(1 − ρ²) = c₀ and C(0, 0) = c₀²
    assert torch.allclose(cV[:, 0], torch.full((2,), 1.1, dtype=torch.float64))
    assert torch.allclose(C[:, 0, 0], torch.full((2,), 1.21, dtype=torch.float64))


def _build_basis(a, b, K, SW, rho, c0, T):
    R = a.shape[0]
    sq = math.sqrt(1 - rho ** 2)
    L = torch.zeros(R, T + 1, T + 2, dtype=torch.float64)
    L[:, 0, 0], L[:, 0, 1] = c0 * rho, c0 * sq
    dropped = torch.zeros(R, T + 1, dtype=torch.bool)
    defects = [extend_basis(L, a, b, K, SW, dropped, t, rho, sq) for t in range(T)]
    return L, dropped, torch.stack(defects)


def test_extend_basis_reproduces_the_covariance():
    """Rows of L on the orthonormal basis (S, G, ξ₁, …) have the prescribed covariances with S
    (m = a), P (c_V) and each other (C), and are lower-triangular."""
    rho, c0, T = 0.8, 1.1, 5
    a, b, K, SW = _random_system(rho=rho, c0=c0, T=T)
    L, dropped, defects = _build_basis(a, b, K, SW, rho, c0, T)
    C, cV = two_time_covariance(a, b, K, SW, rho, T + 1)
    Srow = torch.zeros(T + 2, dtype=torch.float64)
    Srow[0] = 1
    Prow = torch.zeros(T + 2, dtype=torch.float64)
    Prow[0], Prow[1] = rho, math.sqrt(1 - rho ** 2)
    assert torch.allclose(L @ L.transpose(1, 2), C, rtol=1e-10, atol=1e-10)
    assert torch.allclose(L @ Srow, a[:, :T + 1], rtol=1e-12, atol=1e-12)
    assert torch.allclose(L @ Prow, cV, rtol=1e-10, atol=1e-10)
    for t in range(T + 1):
        assert torch.equal(L[:, t, t + 2:], torch.zeros_like(L[:, t, t + 2:]))      # U_t uses ξ_1..ξ_t only
    assert not dropped.any() and float(defects.max()) < 1e-12


def test_extend_basis_drops_a_redundant_field():
    """U₂ = U₁ (same coefficients): no innovation, its direction is dropped, and U₃ is still exact."""
    rho, c0, T = 0.6, 1.0, 4
    a, b, K, SW = _random_system(R=1, rho=rho, c0=c0, T=T, seed=3)
    a[:, 2], b[:, 2], K[:, 2] = a[:, 1], b[:, 1], K[:, 1]
    L, dropped, defects = _build_basis(a, b, K, SW, rho, c0, T)
    assert dropped.tolist() == [[False, False, True, False, False]]
    assert torch.allclose(L[:, 2], L[:, 1], atol=1e-10) and L[0, 2, 3].item() == 0.0
    C, _ = two_time_covariance(a, b, K, SW, rho, T + 1)
    assert torch.allclose(L @ L.transpose(1, 2), C, rtol=1e-9, atol=1e-9)
    assert float(defects.max()) < 1e-10
