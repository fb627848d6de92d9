"""The time-stepping DMFT solver (phasetorch.theory.solver) against a direct small computation."""

import math

import pytest
import torch

import phasetorch.theory as theory
from phasetorch.optim.steps import wf_ramp
from phasetorch.tensors import make_generator
from phasetorch.theory.solver import chunk_length, replicate_seeds, solve_dmft, step_sizes
from phasetorch.theory.spectral import spectral_limits


def test_public_name_is_the_function():
    assert callable(theory.dmft) and theory.dmft.__module__ == "phasetorch.theory.solver"


def test_two_steps_by_hand():
    """Case-A parameters, one replicate, N = 4000, Stein μ: the solver's m(1), q(1), loss(0..1),
    R_g, R_g(t,★), μ and C_g equal the equations of theory.md §4 evaluated directly on the same
    population (S, G, ε, ξ₁ drawn in the solver's order from the replicate's generator)."""
    delta, eta, lam, N, seed = 4.0, 0.1, 0.1, 4000, 123
    lim = spectral_limits(delta, "optimal")
    p = solve_dmft(delta, steps=1, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, step=eta, l2=lam, samples=N,
                   seeds=[seed], dtype=torch.float64, mu="stein", progress=False, check_stability=False)
    g = make_generator(seed)
    S, G, eps, xi1 = (torch.randn(N, generator=g, dtype=torch.float64) for _ in range(4))
    rho = lim.rho
    sq = math.sqrt(1 - rho ** 2)
    Y = S * S
    Tv = lim.T(Y)
    tau = Tv / (lim.lam_star - Tv)
    P = rho * S + sq * G
    E = lambda v: v.mean()  # noqa: E731
    # t = 0: r₀ = (1 + τ)P (c₀ = 1), a₀ = ρ, b₀ = 1
    r0 = (1 + tau) * P
    g0, gp0 = (r0 * r0 - Y) * r0, 3 * r0 * r0 - Y
    Rg00, Rgs0 = E(gp0), E(gp0 * tau)
    mu0 = E(S * g0) - rho * Rgs0 - rho * Rg00
    a1 = rho - eta * (lam * rho + Rg00 * rho + rho * Rgs0 + mu0)
    b1 = 1 - eta * (lam + Rg00 + Rgs0)
    k10 = -eta / delta
    SW = torch.tensor([[1 - rho ** 2, delta * E(tau * P * g0)], [delta * E(tau * P * g0), delta * E(g0 * g0)]],
                      dtype=torch.float64)
    beta1 = torch.stack([b1, torch.tensor(k10, dtype=torch.float64)])
    q1 = a1 ** 2 + beta1 @ SW @ beta1
    # t = 1: U₁ on the basis (S, G, ξ₁) with E SU₁ = a₁, E PU₁ = c_V(1), E U₁² = q₁
    cV1 = rho * a1 + beta1 @ SW[:, 0]
    l1 = (cV1 - rho * a1) / sq
    U1 = a1 * S + l1 * G + (q1 - a1 ** 2 - l1 ** 2).sqrt() * xi1
    r1 = U1 + b1 * tau * P + k10 * g0
    g1, gp1 = (r1 * r1 - Y) * r1, 3 * r1 * r1 - Y
    Rg10, Rg11, Rgs1 = E(gp1 * k10 * gp0), E(gp1), E(gp1 * (b1 * tau + k10 * gp0 * tau))
    mu1 = E(S * g1) - rho * Rgs1 - (rho * Rg10 + a1 * Rg11)

    close = dict(rtol=1e-10, atol=1e-12)
    assert torch.allclose(p["m"], torch.stack([torch.tensor(rho, dtype=torch.float64), a1.abs()]), **close)
    assert torch.allclose(p["q"], torch.stack([torch.tensor(1.0, dtype=torch.float64), q1]), **close)
    loss = torch.stack([E(0.25 * (r0 * r0 - Y) ** 2) + 0.5 * lam, E(0.25 * (r1 * r1 - Y) ** 2) + 0.5 * lam * q1])
    assert torch.allclose(p["loss"], loss, **close)
    assert torch.allclose(p["R_g"], torch.stack([torch.stack([Rg00, torch.zeros((), dtype=torch.float64)]),
                                                 torch.stack([Rg10, Rg11])]), **close)
    assert torch.allclose(p["R_g_star"], torch.stack([Rgs0, Rgs1]), **close)
    assert torch.allclose(p["mu"], torch.stack([mu0, mu1]), **close)
    assert torch.allclose(p["C_g"][:2, :2], SW / delta, **close)
    assert p["K"][1, 0].item() == pytest.approx(k10, rel=1e-12)


def test_step_sizes_and_seeds():
    """μ_t for t = 0..T (μ₀ = 0); the default is the wf preset's ramp; equal chunks; replicate seeds."""
    assert step_sizes(0.1, None, 3).tolist() == [0.0, 0.1, 0.1, 0.1]
    ramp = step_sizes(None, None, 4)
    assert ramp.tolist() == [0.0] + [wf_ramp(t, 330.0, 0.2) for t in range(1, 5)]
    assert step_sizes(None, lambda t: torch.tensor(0.01 * t), 2).tolist() == pytest.approx([0.0, 0.01, 0.02])
    with pytest.raises(ValueError, match="not both"):
        step_sizes(0.1, lambda t: 0.1, 2)
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        step_sizes(None, lambda t: -1.0, 2)
    assert chunk_length(10_001, 2, 13, torch.device("cpu"), 3000) == 2501         # 4 equal chunks
    assert chunk_length(1000, 2, 13, torch.device("cpu")) == 1000
    assert replicate_seeds(5, 3) == replicate_seeds(5, 3) and len(set(replicate_seeds(5, 3))) == 3
