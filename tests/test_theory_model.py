"""The single-index models and the start's law of the DMFT (phasetorch.theory.model), alone."""

import math

import pytest
import torch

from phasetorch.init.preprocessing import elementwise
from phasetorch.tensors import make_generator
from phasetorch.theory.model import (linear_regression, phase_retrieval, preprocessing_values, spectral_tilt,
                                     start_law)
from phasetorch.theory.spectral import spectral_limits


@pytest.mark.parametrize("make", [phase_retrieval, linear_regression])
@pytest.mark.parametrize("noise", [0.0, 0.4])
def test_model_derivatives_match_autograd(make, noise):
    """g = ∂ℓ/∂r, g' = ∂g/∂r, ∂_y g and ∂y/∂s against autograd (float64)."""
    model = make(noise)
    g = make_generator(3)
    s, e, r = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    s.requires_grad_(True)
    y = model.link(s, e)
    (dy_ds,) = torch.autograd.grad(y.sum(), s)
    assert torch.allclose(model.link_ds(s, e), dy_ds, rtol=1e-12, atol=1e-12)
    if model.name == "phase_retrieval":
        assert torch.allclose(y, s * s + noise * e)
    y = y.detach().requires_grad_(True)
    r = r.requires_grad_(True)
    (dl_dr,) = torch.autograd.grad(model.loss(r, y).sum(), r, create_graph=True)
    assert torch.allclose(model.g(r, y), dl_dr, rtol=1e-12, atol=1e-12)
    d2, dgy = torch.autograd.grad(model.g(r, y).sum(), (r, y))
    assert torch.allclose(model.g_r(r, y), d2, rtol=1e-12, atol=1e-12)
    assert torch.allclose(model.g_y(r, y), dgy, rtol=1e-12, atol=1e-12)
    assert model.noise == noise


def test_model_mean_y_safe_step_and_bad_noise():
    """E y = 1 (phase retrieval: E S² = 1) and 0 (regression); the two step rules; σ < 0 refused."""
    pr, lr = phase_retrieval(), linear_regression()
    assert pr.mean_y == 1.0 and lr.mean_y == 0.0
    assert pr.safe_step(4.0, 5.0, 0.1) == pytest.approx(2 * 4.0 / 25.0)                 # 2δ / r_max²
    assert lr.safe_step(4.0, 5.0, 0.1) == pytest.approx(2 / ((1 + 1 / 2) ** 2 + 0.1))   # MP edge (1 + 1/√δ)²
    with pytest.raises(ValueError, match="σ ≥ 0"):
        phase_retrieval(-0.1)
    with pytest.raises(ValueError, match="σ ≥ 0"):
        linear_regression(float("nan"))


def test_preprocessing_values_and_tilt():
    """T(ŷ) with ŷ = y/E y, dT/dY by autograd = T'(ŷ)/E y, τ = T/(λ* − T), dτ/dY = T' λ*/(λ* − T)²."""
    y = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    T = lambda v: 1 - 1 / v  # noqa: E731
    vals, dT = preprocessing_values(T, y, mean_y=2.0, derivative=True)
    yhat = y / 2.0
    assert torch.allclose(vals, 1 - 1 / yhat) and torch.allclose(dT, 1 / yhat ** 2 / 2.0)
    vals2, none = preprocessing_values(T, y, mean_y=2.0)
    assert none is None and torch.equal(vals, vals2)
    tau, dtau = spectral_tilt(vals, dT, 3.0)
    assert torch.allclose(tau, vals / (3.0 - vals)) and torch.allclose(dtau, dT * 3.0 / (3.0 - vals) ** 2)
    # T independent of ŷ: derivative 0, not an error
    _, d0 = preprocessing_values(lambda v: torch.ones_like(v), y, 1.0, derivative=True)
    assert torch.equal(d0, torch.zeros_like(y))
    with pytest.raises(ValueError, match="exceed sup T"):
        spectral_tilt(vals, None, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        preprocessing_values(lambda v: v.sum(), y, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        preprocessing_values(lambda v: 1 / (v - 1), y, 2.0)


def test_start_law_warm_and_spectral():
    """P = ρS + √(1−ρ²)G; warm: τ ≡ 0; spectral: the anchors ρ² + δE[τ²P²], δE[(S²−1)τ] → 1 and
    E[T(1+τ)²P²] → λ₁(D) (the Lu–Li limits of theory.md §2) on a large population."""
    g = make_generator(0)
    S, G, eps = (torch.randn(2, 200_000, generator=g, dtype=torch.float64) for _ in range(3))
    model = phase_retrieval()
    warm = start_law(model, S, G, eps, 0.6, pathwise=True)
    assert torch.equal(warm.P, 0.6 * S + 0.8 * G) and torch.equal(warm.Y, S * S)
    assert torch.equal(warm.tau, torch.zeros_like(S)) and torch.equal(warm.dtau, torch.zeros_like(S))
    assert warm.T is None and torch.equal(warm.f_S, 2 * S)
    lim = spectral_limits(4.0, "optimal")
    spec = start_law(model, S, G, eps, lim.rho, T=elementwise("optimal", 4.0), lam_star=lim.lam_star)
    assert spec.f_S is None and spec.dtau is None
    assert torch.equal(spec.tau_P, spec.tau * spec.P)
    anchors = spec.anchors(4.0, lim.rho)
    assert anchors["v_norm"].shape == (2,)
    for name, ref in (("v_norm", 1.0), ("tilt_equation", 1.0), ("rayleigh", lim.eigenvalue)):
        assert torch.allclose(anchors[name], torch.full((2,), ref, dtype=torch.float64), atol=2e-2), name
    # power start: T is evaluated but there is no tilt
    power = start_law(model, S, G, eps, 0.5, T=elementwise("mm", 4.0))
    assert power.T is not None and torch.equal(power.tau, torch.zeros_like(S))
    assert math.isclose(float(power.P.var()), 1.0, abs_tol=1e-2)
