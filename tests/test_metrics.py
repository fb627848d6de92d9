import cmath
import math

import pytest
import torch

from phasetorch.metrics import align_phase, inner, overlap, psnr, relative_error

F64 = torch.float64


def crand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=F64))


def rrand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


def brute_relative_error(x_hat, x, steps=20000):
    phis = torch.linspace(0, 2 * math.pi, steps, dtype=F64)
    rot = torch.polar(torch.ones_like(phis), phis)
    errs = (x_hat[None] - rot[:, None] * x[None]).abs().square().sum(1).sqrt()
    return float(errs.min() / x.norm())


def test_relative_error_is_the_minimum_over_phases():
    x, noise = crand(12, seed=1), crand(12, seed=2)
    x_hat = cmath.exp(1.3j) * x + 0.4 * noise
    err = float(relative_error(x_hat, x, signal_dims=1))
    assert err == pytest.approx(brute_relative_error(x_hat, x), abs=1e-6)
    assert err <= brute_relative_error(x_hat, x) + 1e-12
    xr, nr = rrand(12, seed=3), rrand(12, seed=4)
    err_r = float(relative_error(-xr + 0.3 * nr, xr, signal_dims=1))
    assert err_r == pytest.approx(float((-xr + 0.3 * nr + xr).norm() / xr.norm()), rel=1e-12)


@pytest.mark.parametrize("phase", [0.0, 0.7, 2.0, -2.9, math.pi])
def test_metrics_invariant_to_global_phase(phase):
    x, noise = crand(3, 10, seed=5), crand(3, 10, seed=6)
    x_hat = x + 0.3 * noise
    rotated = cmath.exp(1j * phase) * x_hat
    for f in (relative_error, overlap, inner, psnr):
        assert torch.allclose(f(rotated, x, signal_dims=1), f(x_hat, x, signal_dims=1), rtol=1e-10, atol=1e-12), f.__name__
    assert torch.allclose(align_phase(rotated, x, signal_dims=1), align_phase(x_hat, x, signal_dims=1), atol=1e-12)
    exact = cmath.exp(1j * phase) * x
    assert torch.allclose(relative_error(exact, x, signal_dims=1), torch.zeros(3, dtype=F64), atol=1e-12)
    assert torch.allclose(overlap(exact, x, signal_dims=1), torch.ones(3, dtype=F64))
    assert torch.allclose(inner(2 * exact, x, signal_dims=1), 2 * torch.ones(3, dtype=F64))
    assert (psnr(exact, x, signal_dims=1) > 250).all()  # exact up to rounding
    assert (psnr(x, x, signal_dims=1) > 250).all()
    assert torch.isinf(psnr(x.real, x.real, signal_dims=1)).all()


def test_real_signals_modulo_sign():
    x, noise = rrand(4, 9, seed=7), rrand(4, 9, seed=8)
    x_hat = x + 0.2 * noise
    for f in (relative_error, overlap, inner, psnr):
        assert torch.allclose(f(-x_hat, x, signal_dims=1), f(x_hat, x, signal_dims=1), rtol=1e-12), f.__name__
    aligned = align_phase(-x_hat, x, signal_dims=1)
    assert aligned.dtype == F64 and torch.allclose(aligned, x_hat)
    assert (relative_error(-x, x, signal_dims=1) == 0).all()


def test_align_phase_minimises_distance():
    x, x_hat = crand(2, 8, seed=9), crand(2, 8, seed=10)
    aligned = align_phase(x_hat, x, signal_dims=1)
    best = (aligned - x).norm(dim=-1)
    for phi in torch.linspace(0, 2 * math.pi, 50, dtype=F64):
        other = (x_hat * cmath.exp(1j * float(phi)) - x).norm(dim=-1)
        assert (best <= other + 1e-12).all()
    assert torch.allclose(aligned.abs(), x_hat.abs())
    # mixed: real estimate of a complex signal is rotated in the complex plane
    xr = rrand(8, seed=11)
    assert align_phase(xr, crand(8, seed=12), signal_dims=1).is_complex()


def test_batch_broadcasting_equals_per_sample():
    x = crand(10, seed=13)
    x_hat = crand(4, 10, seed=14)
    for f in (relative_error, overlap, inner, psnr):
        batched = f(x_hat, x)
        assert batched.shape == (4,)
        single = torch.stack([f(x_hat[i], x) for i in range(4)])
        assert torch.allclose(batched, single, rtol=1e-12), f.__name__
        assert f(x_hat[0], x).shape == ()
        # reference batched, estimate unbatched
        assert torch.allclose(f(x_hat[0], x_hat, signal_dims=1), torch.stack([f(x_hat[0], x_hat[i]) for i in range(4)]))
    assert align_phase(x_hat, x, signal_dims=1).shape == (4, 10)


def test_images_with_signal_dims():
    x = crand(5, 6, seed=15)
    x_hat = cmath.exp(0.5j) * x + 0.1 * crand(3, 5, 6, seed=16)
    err = relative_error(x_hat, x, signal_dims=2)
    assert err.shape == (3,)
    flat = relative_error(x_hat.reshape(3, 30), x.reshape(30), signal_dims=1)
    assert torch.allclose(err, flat, rtol=1e-12)
    assert torch.allclose(relative_error(x_hat[0], x, signal_dims=2), err[0])
    assert relative_error(x_hat, x, signal_dims=1).shape == (3, 5)  # signal_dims=1: rows are the signals


def test_overlap_and_inner_values():
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    e2 = torch.tensor([0.0, 3.0, 0.0], dtype=F64)
    assert float(overlap(e2, e1, signal_dims=1)) == 0.0
    assert float(overlap(torch.zeros(3, dtype=F64), e1, signal_dims=1)) == 0.0
    mix = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    assert float(overlap(mix, e1, signal_dims=1)) == pytest.approx(1 / math.sqrt(2))
    assert float(inner(mix, 2 * e1)) == pytest.approx(0.5)


def test_psnr_values():
    x = torch.linspace(0, 1, 100, dtype=F64)
    x_hat = x + 0.01 * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0).to(F64)
    assert float(psnr(x_hat, x, signal_dims=1)) == pytest.approx(40.0, abs=1e-9)
    assert float(psnr(x_hat, x, data_range=2.0, signal_dims=1)) == pytest.approx(20 * math.log10(2 / 0.01), abs=1e-9)
    z = torch.polar(torch.full((50,), 2.0, dtype=F64), rrand(50, seed=1))
    z_hat = cmath.exp(0.3j) * (z + 0.02 * z / z.abs())  # |error| = 0.02 everywhere after alignment
    assert float(psnr(z_hat, z, signal_dims=1)) == pytest.approx(10 * math.log10(4 / 0.02 ** 2), abs=1e-6)
    # magnitude=True ignores phase errors inside the signal
    scrambled = torch.polar(z.abs(), rrand(50, seed=2))
    assert float(psnr(scrambled, z, magnitude=True, signal_dims=1)) > 250
    assert float(psnr(scrambled, z, signal_dims=1)) < 10


def test_metric_errors():
    x = crand(5, seed=0)
    with pytest.raises(ValueError, match="signal shapes differ"):
        relative_error(crand(6, seed=1), x, signal_dims=1)
    with pytest.raises(ValueError, match="zero norm"):
        relative_error(x, torch.zeros(5, dtype=torch.complex128), signal_dims=1)
    with pytest.raises(ValueError, match="broadcast"):
        overlap(crand(3, 5, seed=2), crand(2, 5, seed=3), signal_dims=1)
    with pytest.raises(ValueError, match="signal_dims"):
        inner(x, x, signal_dims=0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, torch.zeros(5, dtype=torch.complex128), signal_dims=1)


def test_images_are_one_signal_by_default_never_per_row():
    """A random phase on every row of an image is NOT a global phase: one number for the image."""
    from phasetorch.physics import CodedDiffraction
    g = torch.Generator().manual_seed(0)
    img = torch.rand(16, 16, generator=g, dtype=F64).to(torch.complex128)
    rows = torch.exp(2j * math.pi * torch.rand(16, 1, generator=g, dtype=F64))
    scrambled = img * rows
    op = CodedDiffraction((16, 16), 2, seed=0, dtype=F64)
    err = relative_error(scrambled, img, op=op)
    assert err.shape == () and float(err) > 0.5                  # per row it would be ~0
    assert float(relative_error(scrambled, img, signal_dims=1).max()) < 1e-12   # the per-row reading, explicitly
    batch = torch.stack([scrambled, img])
    torch.testing.assert_close(relative_error(batch, img), torch.stack([err, torch.zeros((), dtype=F64)]))
    with pytest.raises(ValueError, match="batch of vectors or one image: pass op="):
        relative_error(scrambled, img)                            # ambiguous without op/signal_dims
    with pytest.raises(ValueError, match="contradicts op"):
        relative_error(scrambled, img, signal_dims=1, op=op)
    assert psnr(batch, img, op=op).shape == (2,) and overlap(batch, img, op=op).shape == (2,)
