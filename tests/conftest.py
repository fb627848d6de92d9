"""Shared fixtures of the test suite."""

import pytest
import torch

import phasetorch as pt


@pytest.fixture
def diverging_problem():
    """(op, y, x0): two real samples whose second one's y is 100× its start's (the start 10× too small),
    so WF with step 0.2 and no safeguard diverges on it and fits the first."""
    op = pt.GaussianMeasurement(16, 128, complex=False, seed=0, dtype=torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    x0 = pt.spectral_init(op, y, seed=0)
    return op, torch.stack([y[0], y[1] * 100]), x0


@pytest.fixture(scope="session")
def noisy_gaussian():
    """(op, x, y, x0): three complex signals (n = 24, m = 192, float64) with 5 % relative Gaussian noise and
    their spectral start; the samples stop at different iterations."""
    op = pt.GaussianMeasurement(24, 192, complex=True, seed=0, dtype=torch.float64)
    x = torch.randn(3, 24, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    y = pt.GaussianNoise(0.05, seed=2, relative=True, event_dims=1)(op(x))
    return op, x, y, pt.spectral_init(op, y, seed=0)


def assert_same_run(a, b, rtol: float = 0.0, x_rtol: float = 0.0) -> None:
    """Two reconstructions are the same run: the same iterate, status, iteration counts and log rows bit for
    bit, and every log column but the wall time bit for bit too (``rtol=0``), or equal to ``rtol`` of the
    column's scale (reductions summed in another order); NaN = NaN. ``x_rtol`` > 0: the iterates within that
    relative distance per sample instead of bit for bit (a sum of the iteration itself taken in another order)."""
    if x_rtol:
        err = torch.linalg.vector_norm((a.x - b.x).flatten(1), dim=-1) / torch.linalg.vector_norm(b.x.flatten(1), dim=-1)
        assert float(err.max()) <= x_rtol
    else:
        assert torch.equal(a.x, b.x)
    assert torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)
    assert torch.equal(a.log["iteration"], b.log["iteration"])
    for col in b.log.columns:
        if col in ("iteration", "time"):
            continue
        u, v = a.log[col].nan_to_num(-1.0), b.log[col].nan_to_num(-1.0)
        if rtol:
            assert torch.allclose(u, v, rtol=rtol, atol=rtol * float(v.abs().max())), col
        else:
            assert torch.equal(u, v), col


@pytest.fixture
def same_run():
    """:func:`assert_same_run`, for the tests that compare two paths of the same run."""
    return assert_same_run
