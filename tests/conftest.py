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
