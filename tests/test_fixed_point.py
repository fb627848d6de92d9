"""Long-time (TTI) fixed point of GD on real phase retrieval (theory.md §5, §7)."""

import math

import pytest
import torch

from phasetorch.theory.fixed_point import fixed_point, prox_quartic
from phasetorch.theory.quadrature import gauss_hermite


def test_prox_is_the_global_minimiser():
    g = torch.Generator().manual_seed(0)
    u = 3 * torch.randn(300, generator=g, dtype=torch.float64)
    y = 12 * torch.rand(300, generator=g, dtype=torch.float64) ** 2
    for kappa in (0.05, 0.3, 2.0):
        r = prox_quartic(u, y, kappa)
        obj = lambda t: kappa * (t * t - y) ** 2 / 4 + (t - u) ** 2 / 2  # noqa: E731
        assert (kappa * r ** 3 + (1 - kappa * y) * r - u).abs().max() < 1e-9
        grid = torch.linspace(-12, 12, 6001, dtype=torch.float64)[:, None]
        best = obj(grid).min(0).values
        assert bool((obj(r) <= best + 1e-9).all())


def test_case_A():
    fp = fixed_point(4.0, l2=0.1)
    assert fp.converged and fp.consistent
    assert fp.m == pytest.approx(0.95286, abs=2e-5)
    assert fp.q == pytest.approx(0.91202, abs=2e-5)
    assert fp.loss == pytest.approx(0.04771, abs=1e-5)
    assert fp.kappa == pytest.approx(0.24258, abs=1e-5)
    assert fp.overlap == pytest.approx(fp.m / math.sqrt(fp.q))
    assert fp.rel_error == pytest.approx(math.sqrt(fp.q - 2 * fp.m + 1))
    assert abs(fp.stationarity) < 1e-9           # E[rg] = −λq


def test_exact_recovery_without_ridge():
    fp = fixed_point(4.0, l2=0.0)
    assert fp.converged
    assert fp.m == pytest.approx(1.0, abs=1e-8) and fp.q == pytest.approx(1.0, abs=1e-8)
    assert fp.kappa == pytest.approx(0.26469, abs=1e-5)
    # δκ E[2S²/(1 + 2κS²)] = 1
    s, w = gauss_hermite(120)
    assert float(4.0 * fp.kappa * (w * 2 * s * s / (1 + 2 * fp.kappa * s * s)).sum()) == pytest.approx(1.0, abs=1e-9)


def test_stationarity_identity_other_settings():
    for kw in (dict(delta=3.0, l2=0.05), dict(delta=6.0, l2=0.2, preprocessing="mm")):
        fp = fixed_point(**kw)
        assert fp.converged and abs(fp.stationarity) < 1e-9
        assert 0.9 < fp.overlap < 1 and 0 < fp.rel_error < 0.2


def test_noise_and_basin():
    clean, noisy = fixed_point(4.0, l2=0.1), fixed_point(4.0, l2=0.1, noise=0.3)
    assert noisy.converged and noisy.loss > clean.loss and noisy.rel_error > clean.rel_error
    # the limit does not depend on the preprocessing when the start is in the same basin
    mm = fixed_point(4.0, l2=0.1, preprocessing="mm")
    assert mm.m == pytest.approx(clean.m, abs=1e-9) and mm.start < clean.start
    # below the spectral threshold the start is m = 0, which is a fixed point by symmetry
    low = fixed_point(0.4, l2=0.1)
    assert low.converged and low.start == 0.0 and low.m < 1e-12


def test_bad_inputs():
    with pytest.raises(ValueError, match="field"):           # complex is derived now (tests/test_theory_complex.py)
        fixed_point(4.0, l2=0.1, field="quaternion")
    with pytest.raises(ValueError, match="l2"):
        fixed_point(4.0, l2=-1.0)
    with pytest.raises(ValueError, match="delta"):
        fixed_point(0.0, l2=0.1)
