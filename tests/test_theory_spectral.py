"""Asymptotic spectral estimator (Lu–Li formulas) and the quadrature it rests on."""

import math

import pytest
import torch

from phasetorch.theory.quadrature import (brentq, composite_legendre, find_bracket, gauss_hermite,
                                          gauss_laguerre, gauss_legendre)
from phasetorch.theory.spectral import (rank_threshold, signal_law, spectral_limits, spectral_overlap,
                                        spectral_threshold)

UNFLOORED_OPTIMAL = lambda y: 1 - 1 / y.clamp(min=1e-300)  # noqa: E731  T = 1 − 1/y exactly


# ------------------------------------------------------------------------------ quadrature

def test_gauss_hermite_moments():
    x, w = gauss_hermite(40)
    assert abs(float(w.sum()) - 1) < 1e-14
    # E X^{2k} = (2k−1)!!, exact up to degree 79
    for k in range(1, 12):
        assert float((w * x ** (2 * k)).sum()) == pytest.approx(math.prod(range(1, 2 * k, 2)), rel=1e-11)
    assert abs(float((w * x ** 5).sum())) < 1e-12
    assert float((w * torch.cos(x)).sum()) == pytest.approx(math.exp(-0.5), abs=1e-14)


def test_gauss_laguerre_and_legendre():
    x, w = gauss_laguerre(30)
    for k in range(8):
        assert float((w * x ** k).sum()) == pytest.approx(math.factorial(k), rel=1e-11)
    x, w = gauss_legendre(12)
    assert float(w.sum()) == pytest.approx(2.0, abs=1e-14)
    assert float((w * x ** 22).sum()) == pytest.approx(2 / 23, rel=1e-12)
    with pytest.raises(ValueError, match="positive integer"):
        gauss_legendre(0)


def test_composite_legendre_handles_a_jump_at_a_break():
    x, w = composite_legendre([0.0, math.pi / 3, 2.0], order=10)
    f = torch.where(x <= math.pi / 3, torch.exp(x), torch.zeros_like(x))
    assert float((w * f).sum()) == pytest.approx(math.exp(math.pi / 3) - 1, abs=1e-13)


def test_brentq_and_bracket():
    root = brentq(lambda t: math.cos(t) - t, 0.0, 1.0)
    assert abs(math.cos(root) - root) < 1e-14
    assert brentq(lambda t: (t - 0.3) ** 3, -1.0, 2.0) == pytest.approx(0.3, abs=1e-5)
    with pytest.raises(ValueError, match="same sign"):
        brentq(lambda t: t * t + 1, -1.0, 1.0)
    grid = [k / 10 for k in range(0, 101)]   # cos has roots π/2, 3π/2, 5π/2 in [0, 10]
    lo, hi = find_bracket(math.cos, grid, last=True)
    assert lo < 2.5 * math.pi < hi and hi - lo == pytest.approx(0.1)
    lo, hi = find_bracket(math.cos, grid, last=False)
    assert lo < 0.5 * math.pi < hi
    assert find_bracket(lambda t: t * t + 1, grid) is None


def test_signal_laws_integrate_moments():
    law = signal_law("real")
    assert law.mean(law.s2) == pytest.approx(1.0, abs=1e-13)
    assert law.mean(law.y ** 2) == pytest.approx(3.0, abs=1e-12)
    law = signal_law("complex")
    assert law.mean(law.y ** 2) == pytest.approx(2.0, abs=1e-12)
    law = signal_law("real", noise=0.5)
    assert law.mean(law.y) == pytest.approx(1.0, abs=1e-10)
    assert law.mean(law.y ** 2) == pytest.approx(3.0 + 0.25, abs=1e-9)   # E Y² = E S⁴ + σ²
    assert law.mean(law.s2 * law.y) == pytest.approx(3.0, abs=1e-9)     # E[S² Y] = E S⁴


# ------------------------------------------------------------------------------ check values

@pytest.mark.parametrize("delta,optimal,mm", [(2, 0.6389, 0.5561), (3, 0.8454, 0.6909),
                                              (4, 0.9245, 0.7589), (6, 0.9725, 0.8276)])
def test_real_noiseless_rho2_check_values(delta, optimal, mm):
    assert spectral_limits(delta, "optimal").rho2 == pytest.approx(optimal, abs=6e-5)
    assert spectral_limits(delta, UNFLOORED_OPTIMAL).rho2 == pytest.approx(optimal, abs=6e-5)
    assert spectral_limits(delta, "mm").rho2 == pytest.approx(mm, abs=6e-5)


def test_lambda_star_and_top_eigenvalue_of_optimal():
    exact = spectral_limits(4, UNFLOORED_OPTIMAL)
    assert exact.lam_star == pytest.approx(13.2433, abs=1e-4)
    assert exact.rho2 == pytest.approx(0.92449, abs=1e-5)
    for delta in (1.5, 4.0, 6.0):   # λ₁(D) → 1/δ exactly for T = 1 − 1/y (Luo–Alghamdi–Lu)
        assert spectral_limits(delta, UNFLOORED_OPTIMAL).eigenvalue == pytest.approx(1 / delta, abs=1e-9)
    # the library's T floors ŷ at 1e-3: a slightly different, still well-defined limit
    named = spectral_limits(4, "optimal")
    assert named.lam_star == pytest.approx(13.2433, abs=0.05)
    assert named.eigenvalue == pytest.approx(0.25, abs=1e-3)
    assert named.rho == pytest.approx(math.sqrt(named.rho2))
    y = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    assert torch.allclose(named.tau(y), named.T(y) / (named.lam_star - named.T(y)))


def test_tilt_equation_and_rho_formula_hold():
    lim = spectral_limits(3.0, "mm")
    law = signal_law("real", 0.0, (0.0,))
    tau = lim.tau(law.y)
    assert 3.0 * law.mean((law.s2 - 1) * tau) == pytest.approx(1.0, abs=1e-11)
    a, b = 1 - 3 * law.mean(tau ** 2), 3 * law.mean(law.s2 * tau ** 2)
    assert lim.rho2 == pytest.approx(a / (a + b), abs=1e-11)


def test_complex_optimal():
    assert spectral_limits(4, "optimal", field="complex").rho2 == pytest.approx(0.735, abs=1e-3)
    assert spectral_limits(4, UNFLOORED_OPTIMAL, field="complex").eigenvalue == pytest.approx(0.25, abs=1e-9)


def test_thresholds_from_the_formula():
    assert spectral_threshold("optimal") == pytest.approx(0.5, abs=1e-4)
    assert spectral_threshold(UNFLOORED_OPTIMAL) == pytest.approx(0.5, abs=1e-8)
    assert spectral_threshold("optimal", field="complex") == pytest.approx(1.0, abs=1e-4)
    assert spectral_threshold("clipped") == pytest.approx(0.8009, abs=1e-4)
    below, above = spectral_limits(0.45), spectral_limits(0.55)
    assert below.rho == 0.0 and math.isnan(below.lam_star) and below.tau is None
    assert above.rho > 0 and above.recoverable


def test_callable_equals_its_named_twin():
    for name, fn in [("clipped", lambda y: torch.clamp(y, max=3.0)),
                     ("trimmed", lambda y: y * (y <= 9.0).to(y.dtype))]:   # jump located by bisection
        a, b = spectral_limits(4, name), spectral_limits(4, fn)
        assert b.rho2 == pytest.approx(a.rho2, abs=1e-6)
        assert b.lam_star == pytest.approx(a.lam_star, abs=1e-5)


def test_rank_based_via_population_quantile():
    t = rank_threshold(1 / 6)
    # P(S² ≥ t) = 1/6  ⇔  t = Φ⁻¹(1 − 1/12)²
    assert math.erfc(math.sqrt(t / 2)) == pytest.approx(1 / 6, abs=1e-12)
    assert rank_threshold(1 / 6, field="complex") == pytest.approx(math.log(6))
    a = spectral_limits(4, "orthogonality")
    b = spectral_limits(4, lambda y: (y >= t).to(y.dtype))
    assert 0 < a.rho2 < spectral_limits(4, "optimal").rho2
    assert b.rho2 == pytest.approx(a.rho2, abs=1e-9)


def test_noise_lowers_the_overlap_and_is_consistent():
    clean, noisy = spectral_limits(4), spectral_limits(4, noise=0.3)
    assert 0 < noisy.rho < clean.rho
    law = signal_law("real", 0.3, (1e-3,))
    assert 4 * law.mean((law.s2 - 1) * noisy.tau(law.y)) == pytest.approx(1.0, abs=1e-9)


def test_unbounded_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="localises"):
        spectral_limits(4, "identity")
    with pytest.raises(ValueError, match="unbounded"):
        spectral_limits(4, "weighted")
    with pytest.raises(ValueError, match="unbounded"):
        spectral_limits(4, lambda y: y.abs().sqrt())
    with pytest.raises(ValueError, match="unknown preprocessing"):
        spectral_limits(4, "spectral")
    with pytest.raises(ValueError, match="delta"):
        spectral_limits(-1.0)
    with pytest.raises(ValueError, match="field"):
        spectral_limits(4, field="quaternion")
    with pytest.raises(ValueError, match="noise"):
        spectral_limits(4, noise=-0.1)


def test_spectral_overlap_scalar_and_array():
    assert spectral_overlap(4.0) == pytest.approx(math.sqrt(spectral_limits(4.0).rho2))
    out = spectral_overlap([[0.4, 2.0], [3.0, 4.0]])
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2) and out.dtype == torch.float64
    assert out[0, 0] == 0.0
    assert float(out[1, 1]) == pytest.approx(math.sqrt(0.92449), abs=1e-4)
    assert bool((out[0, 1] < out[1, 0]) & (out[1, 0] < out[1, 1]))
