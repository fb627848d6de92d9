import math

import pytest
import torch

from phasetorch.physics.noise import GaussianNoise, PoissonNoise
from phasetorch.physics import CodedDiffraction

F64 = torch.float64


def clean(shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64).square().to(dtype) + 0.05


def test_poisson_reproducible_and_seed_dependent():
    y = clean((3, 40))
    a, b, c = (PoissonNoise(500, seed=s, event_dims=1)(y) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(PoissonNoise(500, generator=g1, event_dims=1)(y), PoissonNoise(500, generator=g2)(y, 1))
    noise = PoissonNoise(500, seed=1, event_dims=1)
    assert not torch.equal(noise(y), noise(y))  # the stream advances


def test_poisson_is_unbiased_with_the_right_variance():
    y = clean((60,), seed=3)
    reps, photons = 4000, 2000.0
    noisy = PoissonNoise(photons, seed=0, event_dims=1)(y.expand(reps, -1).contiguous())
    scale = photons / y.sum()
    mean, var = noisy.mean(0), noisy.var(0)
    z = (mean - y) / (y / scale / reps).sqrt()
    assert z.abs().max() < 5
    assert torch.allclose(var, y / scale, rtol=0.15)


def test_poisson_photon_budget_is_per_sample():
    y = clean((4, 2, 5, 6), seed=1)
    y = y * torch.tensor([1e-3, 1.0, 10.0, 1e6], dtype=F64).reshape(4, 1, 1, 1)
    counts, scale = PoissonNoise(300, seed=2, event_dims=3).counts(y)
    assert scale.shape == (4, 1, 1, 1)
    assert torch.equal(counts, counts.round()) and (counts >= 0).all()
    totals = counts.sum(dim=(1, 2, 3))
    assert ((totals - 300).abs() < 5 * math.sqrt(300)).all()
    # only the shape of a sample matters: brightness scales the result exactly
    a = PoissonNoise(300, seed=5, event_dims=3)(y[1])
    b = PoissonNoise(300, seed=5, event_dims=3)(1e4 * y[1])
    assert torch.allclose(b, 1e4 * a, rtol=1e-12)


def test_poisson_with_operator_measurements_and_dtypes():
    op = CodedDiffraction((4, 4), 2, seed=0)
    x = torch.randn(3, 4, 4, dtype=torch.complex64)
    y = op(x)
    noise = PoissonNoise(1e4, seed=0, event_dims=len(op.measurement_shape))
    noisy = noise(y)
    assert noisy.shape == y.shape and noisy.dtype == torch.float32
    assert torch.allclose(noisy.sum(dim=(1, 2, 3)), y.sum(dim=(1, 2, 3)), rtol=0.05)
    zero = torch.zeros(2, 5)
    assert torch.equal(PoissonNoise(10, seed=0, event_dims=1)(zero), zero)


def test_poisson_rejects_bad_input():
    with pytest.raises(ValueError, match="photons"):
        PoissonNoise(0)
    with pytest.raises(ValueError, match="photons"):
        PoissonNoise(float("inf"))
    noise = PoissonNoise(10, seed=0)
    with pytest.raises(ValueError, match="≥ 0"):
        noise(torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="NaN"):
        noise(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="op.linear"):
        noise(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="event_dims"):
        noise(torch.ones(3), event_dims=2)


def test_gaussian_noise_statistics_and_reproducibility():
    y = clean((3000, 20), seed=4)
    noisy = GaussianNoise(0.1, seed=3)(y)
    assert torch.equal(noisy, GaussianNoise(0.1, seed=3)(y))
    assert not torch.equal(noisy, GaussianNoise(0.1, seed=4)(y))
    eps = noisy - y
    assert abs(float(eps.mean())) < 5 * 0.1 / math.sqrt(eps.numel())
    assert abs(float(eps.std()) - 0.1) < 0.005
    assert (noisy < 0).any()  # negative intensities are allowed (documented)
    assert torch.equal(GaussianNoise(0.0, seed=0)(y), y)


def test_gaussian_noise_relative_is_per_sample():
    y = clean((2, 5000), seed=5) * torch.tensor([[1.0], [100.0]], dtype=F64)
    noisy = GaussianNoise(0.2, seed=0, relative=True, event_dims=1)(y)
    std = (noisy - y).std(dim=1)
    expect = 0.2 * y.mean(dim=1)
    assert torch.allclose(std, expect, rtol=0.05)


def test_gaussian_noise_same_draw_across_dtypes_and_validation():
    y = clean((4, 7))
    a = GaussianNoise(0.3, seed=8)(y)
    b = GaussianNoise(0.3, seed=8)(y.float())
    assert b.dtype == torch.float32 and torch.allclose(a.float(), b, atol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-0.1)
    with pytest.raises(ValueError, match="either seed= or generator="):
        GaussianNoise(0.1, seed=1, generator=torch.Generator())


def test_sample_dimensions_are_required_where_the_noise_couples_a_sample():
    y = clean((2, 3, 4), seed=6)
    for noise in (PoissonNoise(100, seed=0), GaussianNoise(0.1, seed=0, relative=True)):
        with pytest.raises(ValueError, match="MeasurementModel"):
            noise(y)
        assert noise(y, event_dims=2).shape == y.shape
        assert noise(y[0, 0]).shape == (4,)                  # a single 1-D sample is unambiguous
    assert GaussianNoise(0.1, seed=0)(y).shape == y.shape     # i.i.d. per entry: no sample dims needed
    with pytest.raises(ValueError, match="event_dims"):
        PoissonNoise(100, event_dims=0)
    with pytest.raises(ValueError, match="event_dims"):
        GaussianNoise(0.1, event_dims=4)(y)


def test_gaussian_noise_draw_is_a_float64_standard_normal_from_the_seed():
    """GaussianNoise(σ, seed=s)(y) = y + σ·ε, ε = randn(y.shape) from make_generator(s) in float64, cast."""
    from phasetorch.tensors import make_generator
    y = clean((12,), seed=7, dtype=torch.float32)
    eps = torch.randn(12, generator=make_generator(42), dtype=F64).to(torch.float32)
    assert torch.equal(GaussianNoise(0.25, seed=42)(y), y + 0.25 * eps)


def test_noise_configs_round_trip():
    from phasetorch.physics.noise import noise_from_config
    for noise in (PoissonNoise(300.0, event_dims=3, per_measurement=True), GaussianNoise(0.2, relative=True)):
        back = noise_from_config(noise.config())
        assert type(back) is type(noise) and back.config() == noise.config()
    assert PoissonNoise(5.0).config() == {"type": "PoissonNoise", "photons": 5.0, "per_measurement": False,
                                          "event_dims": None}
    with pytest.raises(ValueError, match="PoissonNoise"):
        noise_from_config({"type": "Speckle"})
    with pytest.raises(ValueError, match="constructor"):
        noise_from_config({"type": "GaussianNoise", "sigma": 0.1, "colour": "pink"})
