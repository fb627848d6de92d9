"""Bad or edge inputs to the solver layer get clear errors, never NaN or a false 'converged' (issue: robustness)."""

import pytest
import torch

import phasetorch as pt

F64 = torch.float64


def test_spectral_init_refuses_weights_that_vanish_everywhere():
    op = pt.GaussianMeasurement(16, 128, seed=0, dtype=F64)
    y = torch.zeros(2, 128, dtype=F64)
    y[:, 3] = 1.0                                        # one non-zero entry: 'trimmed' keeps nothing
    y[1] = op(torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"'trimmed' gives T\(y\) that is zero .* sample\(s\) \[0\].*'optimal'"):
        pt.spectral_init(op, y, "trimmed", seed=0)
    with pytest.raises(ValueError, match=r"zero on every measurement"):
        pt.spectral_init(op, y[1], lambda t: torch.zeros_like(t), seed=0)
    x0, info = pt.spectral_init(op, y[1], "optimal", seed=0, return_info=True)
    assert torch.isfinite(x0).all()


def test_loss_batch_mismatch_is_a_clear_error():
    op = pt.GaussianMeasurement(8, 64, seed=0, dtype=F64)
    x = torch.randn(3, 8, dtype=torch.complex128)
    y = op(torch.randn(2, 8, dtype=torch.complex128))
    for loss in (pt.losses.AmplitudeLoss(op), pt.losses.IntensityLoss(op), pt.losses.TruncatedPoissonLoss(op)):
        with pytest.raises(ValueError, match=r"batch shape \(3,\) but y has \(2,\)"):
            loss(x, y)
        with pytest.raises(ValueError, match="batch shape"):
            loss.evaluate(x, y)
    assert pt.losses.AmplitudeLoss(op)(x, y[0]).shape == (3,)        # one y for all signals broadcasts
