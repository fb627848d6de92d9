"""Noise must not break the defaults: the variance law, its quasi-likelihood loss, and the 'auto' default."""

import math
import warnings

import pytest
import torch

import phasetorch as pt
from phasetorch.losses import VarianceWeightedLoss, variance_law

F64 = torch.float64


def _gauss(n=64, delta=8, B=1, seed=0):
    op = pt.GaussianMeasurement(n, delta * n, seed=seed, dtype=F64)
    x = torch.randn(B, n, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed + 1))
    return op, x, op(x)


def test_variance_law_recovers_additive_and_shot_noise():
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(2, 20000, generator=g, dtype=F64) * 4
    y_add = mu[0] + 0.5 * torch.randn(20000, generator=g, dtype=F64)           # Var = 0.25
    y_shot = torch.poisson(mu[1] * 50, generator=g) / 50                         # Var = μ/50
    a, b = variance_law(mu, torch.stack([y_add, y_shot]), 1)
    assert a[0] == pytest.approx(0.25, rel=0.05) and b[0] < 0.01
    assert b[1] == pytest.approx(1 / 50, rel=0.05) and a[1] < 0.1 * b[1] * 2


def test_variance_weighted_gradient_matches_autograd():
    op, x, y = _gauss(n=12, delta=6, B=2)
    loss = VarianceWeightedLoss(op, torch.tensor([0.3, 0.05], dtype=F64), torch.tensor([0.0, 0.2], dtype=F64), l2=0.01)
    z = (x + 0.2 * torch.randn(x.shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(3)))
    z = z.requires_grad_(True)
    loss(z, y).sum().backward()                       # autograd: 2∂f/∂z̄
    v, g, _, _ = loss.value_and_grad(z.detach(), y)
    torch.testing.assert_close(g, z.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v, loss(z.detach(), y), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="a > 0"):
        VarianceWeightedLoss(op, torch.tensor([0.0]), torch.tensor([0.0]))


@pytest.mark.parametrize("kind,level", [("gaussian", 0.1), ("gaussian", 0.3), ("poisson", 10), ("poisson", 100)])
def test_auto_default_is_near_the_best_preset_on_noisy_data(kind, level):
    op, x, y = _gauss(n=64, delta=8)
    noise = (pt.GaussianNoise(level, seed=2, relative=True) if kind == "gaussian"
             else pt.PoissonNoise(level * op.m, seed=2))
    yn = pt.MeasurementModel(op, noise=noise).add_noise(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no divergence warning from the defaults
        rec = pt.reconstruct(op, yn, progress=False, seed=0)
    assert rec.algorithm == "auto" and rec.converged.all()
    err = float(pt.metrics.relative_error(rec.x, x, op=op)[0])
    best = min(float(pt.metrics.relative_error(pt.reconstruct(op, yn, a, progress=False, seed=0).x, x, op=op)[0])
               for a in ("wf", "lbfgs", "af"))
    assert err <= 1.2 * best, (err, best)
    stages = rec.log.config["stages"]
    assert 2 <= len(stages) <= 4 and all(st["loss"]["loss"] == "variance_weighted" for st in stages[1:])


def test_auto_leaves_noiseless_samples_alone_and_batches_equal_singles():
    op, x, y = _gauss(n=32, delta=8, B=2)
    yn = y.clone()
    yn[1] = pt.GaussianNoise(0.1, seed=4, relative=True)(y[1])
    both = pt.reconstruct(op, yn, progress=False, seed=0)
    for b in range(2):
        single = pt.reconstruct(op, yn[b:b + 1], progress=False, seed=0)
        torch.testing.assert_close(both.x[b], single.x[0], rtol=1e-6, atol=1e-9)   # summation order only
        if b == 0:
            assert int(both.iterations[b]) == int(single.iterations[0])
        else:   # at the noise floor the stagnation test may fire a few iterations apart (rounding)
            assert abs(int(both.iterations[b]) - int(single.iterations[0])) <= 0.1 * int(single.iterations[0])
    clean = pt.reconstruct(op, y[:1], progress=False, seed=0)
    plain = pt.reconstruct(op, y[:1], "lbfgs", progress=False, seed=0)
    assert torch.equal(clean.x, plain.x) and "stages" not in clean.log.config   # noiseless: no second stage
