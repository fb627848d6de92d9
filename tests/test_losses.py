import math

import pytest
import torch

from phasetorch.losses import (LOSSES, AmplitudeLoss, IntensityLoss, PoissonLoss, ReweightedAmplitudeLoss,
                               TruncatedAmplitudeLoss, TruncatedPoissonLoss)
from phasetorch.physics import CodedDiffraction, GaussianMeasurement, OversampledFourier

F64 = torch.float64


def _problem(complex_=True, n=12, m=60, batch=(3,), seed=0, noise=1.5):
    op = GaussianMeasurement(n, m, complex=complex_, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (*batch, n)
    if complex_:
        xs = torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=F64)) / math.sqrt(2)
        x = torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=F64)) / math.sqrt(2)
    else:
        xs = torch.randn(*shape, generator=g, dtype=F64)
        x = torch.randn(*shape, generator=g, dtype=F64)
    y = op(xs) + noise * torch.randn(*batch, m, generator=g, dtype=F64)   # some y < 0
    return op, x, y


def _make(name, op, l2=0.0):
    return LOSSES[name](op, l2=l2)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("complex_", [True, False])
def test_closed_form_gradient_equals_autograd(name, complex_):
    op, x, y = _problem(complex_)
    assert (y < 0).any()
    loss = _make(name, op, l2=0.25)
    xx = x.clone().requires_grad_(True)
    val = loss(xx, y)
    assert val.shape == (3,)
    val.sum().backward()
    v2, grad, _, _ = loss.value_and_grad(x, y)
    assert torch.allclose(val.detach(), v2, rtol=1e-13, atol=0)
    # PyTorch's complex gradient is 2 ∂f/∂x̄ = the closed form, with factor exactly 1
    assert torch.allclose(xx.grad, grad, rtol=1e-12, atol=1e-14 * grad.abs().max().item())


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_is_twice_conjugate_wirtinger_derivative(name):
    """Finite differences: ∂f/∂x̄ = ½(∂f/∂a + i ∂f/∂b); the closed form returns 2∂f/∂x̄."""
    op, x, y = _problem(True, batch=(1,))
    loss = _make(name, op, l2=0.1)
    w = loss.weights(x, y)                          # freeze the truncation at x (as the gradient does)
    _, grad, _, _ = loss.value_and_grad(x, y)
    h = 1e-6
    for j in (0, 5, 11):
        e = torch.zeros_like(x)
        e[0, j] = 1
        da = (loss(x + h * e, y, weights=w) - loss(x - h * e, y, weights=w)) / (2 * h)
        db = (loss(x + 1j * h * e, y, weights=w) - loss(x - 1j * h * e, y, weights=w)) / (2 * h)
        wirtinger_conj = 0.5 * (da + 1j * db)
        assert abs(complex(grad[0, j]) - 2 * complex(wirtinger_conj[0])) < 1e-6 * max(1.0, abs(complex(grad[0, j])))


@pytest.mark.parametrize("name", list(LOSSES))
def test_real_gradient_is_ordinary_gradient(name):
    op, x, y = _problem(False, batch=(1,))
    loss = _make(name, op, l2=0.1)
    w = loss.weights(x, y)
    _, grad, _, _ = loss.value_and_grad(x, y)
    assert not grad.is_complex()
    h = 1e-6
    for j in (1, 7):
        e = torch.zeros_like(x)
        e[0, j] = 1
        fd = (loss(x + h * e, y, weights=w) - loss(x - h * e, y, weights=w)) / (2 * h)
        assert abs(float(grad[0, j]) - float(fd[0])) < 1e-6 * max(1.0, abs(float(grad[0, j])))
    # the same number is 2∂f/∂x̄ of f extended to complex x: zero imaginary part at real x
    _, grad_c, _, _ = loss.value_and_grad(x.to(torch.complex128), y, weights=w)
    assert torch.allclose(grad_c.real, grad, rtol=1e-12, atol=1e-15) and grad_c.imag.abs().max() < 1e-15


@pytest.mark.parametrize("name", list(LOSSES))
def test_real_signal_on_complex_operator(name):
    """A real x with a complex A: the gradient is the real part of the complex formula (= autograd)."""
    op, _, y = _problem(True)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(9), dtype=F64)
    loss = _make(name, op)
    xx = x.clone().requires_grad_(True)
    loss(xx, y).sum().backward()
    _, grad, _, _ = loss.value_and_grad(x, y)
    assert not grad.is_complex()
    _, grad_c, _, _ = loss.value_and_grad(x.to(torch.complex128), y)
    assert torch.allclose(grad, xx.grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grad, grad_c.real, rtol=1e-12, atol=1e-14)


def test_intensity_gradient_matches_dense_formula():
    op, x, y = _problem(True, batch=(1,))
    lam = 0.3
    A = op.matrix()
    r = A @ x[0]
    expected = (A.conj().T @ ((r.abs() ** 2 - y[0]) * r)) / op.m + lam * x[0]
    value = ((r.abs() ** 2 - y[0]) ** 2).mean() / 4 + lam / 2 * x[0].abs().square().sum()
    f, grad, _, _ = IntensityLoss(op, l2=lam).value_and_grad(x, y)
    assert torch.allclose(grad[0], expected, rtol=1e-12)
    assert torch.allclose(f[0], value, rtol=1e-12)


def test_amplitude_gradient_matches_dense_formula():
    op, x, y = _problem(True, batch=(1,))
    A = op.matrix()
    r = A @ x[0]
    psi = y[0].clamp_min(0).sqrt()
    expected = A.conj().T @ (r - psi * r / r.abs()) / op.m
    _, grad, _, _ = AmplitudeLoss(op).value_and_grad(x, y)
    assert torch.allclose(grad[0], expected, rtol=1e-12)


def test_negative_intensities():
    op, x, y = _problem(True, noise=5.0)
    assert (y < 0).sum() > 10
    yc = y.clamp_min(0)
    for name in ("amplitude", "poisson", "amplitude_truncated", "amplitude_reweighted"):
        loss = _make(name, op)
        v = loss(x, y)
        assert torch.isfinite(v).all()
        assert torch.equal(v, loss(x, yc)), name          # these use max(y, 0)
    # the intensity loss uses y as is
    loss = IntensityLoss(op)
    assert not torch.allclose(loss(x, y), loss(x, yc))
    _, g, _, _ = loss.value_and_grad(x, y)
    assert torch.isfinite(g).all()


def test_poisson_loss_at_zero_amplitude_is_finite():
    op, x, y = _problem(True, batch=(1,))
    loss = PoissonLoss(op)
    v, g, _, _ = loss.value_and_grad(torch.zeros_like(x), y)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()


def test_twf_truncation_rule():
    op, x, y = _problem(True, batch=(1,), noise=0.0)
    loss = TruncatedPoissonLoss(op, alpha_lb=0.3, alpha_ub=5.0, alpha_h=5.0)
    w = loss.weights(x, y)
    r = op.linear(x)[0]
    nx = x[0].norm()
    ratio = r.abs() / nx
    dev = (y[0] - r.abs() ** 2).abs()
    K = dev.mean()
    expected = (ratio >= 0.3) & (ratio <= 5.0) & (dev <= 5.0 * K * ratio)
    assert torch.equal(w[0].bool(), expected)
    assert 0 < int(expected.sum()) < op.m
    f, _, _, _ = loss.value_and_grad(x, y)
    ell = r.abs() ** 2 - y[0] * torch.log(r.abs() ** 2)
    assert torch.allclose(f[0], (ell * expected).sum() / op.m)


def test_taf_and_raf_weights():
    op, x, y = _problem(True, batch=(1,), noise=0.0)
    r = op.linear(x)[0].abs()
    psi = y[0].sqrt()
    w = TruncatedAmplitudeLoss(op, gamma=0.7).weights(x, y)[0]
    assert torch.equal(w.bool(), r >= psi / 1.7)
    w = ReweightedAmplitudeLoss(op, beta=10.0).weights(x, y)[0]
    assert torch.allclose(w, 1 / (1 + 10 * psi / r))


def test_normalised_pair_on_fourier_operator():
    """Losses use (A/√e, y/e): the intensity loss on a unitary FFT equals the formula with those."""
    op = OversampledFourier(6, 2, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, generator=g, dtype=F64).to(torch.complex128)
    xs = torch.randn(2, 6, generator=g, dtype=F64)
    y = op(xs)
    e = op.entry_energy
    r = op.linear(x) / math.sqrt(e)
    expected = ((r.abs() ** 2 - y / e) ** 2).mean(-1) / 4
    assert torch.allclose(IntensityLoss(op)(x, y), expected)
    # and the mean intensity of the normalised pair estimates ‖x‖² (scale convention)
    assert torch.allclose((y / e).mean(-1), xs.square().sum(-1))


def test_batch_shapes_and_batch_equals_singles():
    op = CodedDiffraction((4, 5), 3, seed=1, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x = torch.view_as_complex(torch.randn(2, 3, 4, 5, 2, generator=g, dtype=F64))
    y = op(torch.view_as_complex(torch.randn(2, 3, 4, 5, 2, generator=g, dtype=F64)))
    for name in LOSSES:
        loss = _make(name, op, l2=0.1)
        v, grad, _, _ = loss.value_and_grad(x, y)
        assert v.shape == (2, 3) and grad.shape == x.shape
        v1, g1, _, _ = loss.value_and_grad(x[1, 2], y[1, 2])
        assert v1.shape == ()
        assert torch.allclose(v[1, 2], v1, rtol=1e-13) and torch.allclose(grad[1, 2], g1, rtol=1e-12, atol=1e-15)


def test_step_scale():
    op, x, _ = _problem(True)
    assert torch.allclose(IntensityLoss(op).step_scale(x), 1 / x.abs().square().sum(-1))
    for name in ("amplitude", "poisson", "poisson_truncated", "amplitude_truncated", "amplitude_reweighted"):
        assert torch.equal(_make(name, op).step_scale(x), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="zero norm"):
        IntensityLoss(op).step_scale(torch.zeros_like(x))


def test_input_validation():
    op, x, y = _problem(True)
    loss = AmplitudeLoss(op)
    bad = y.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        loss(x, bad)
    with pytest.raises(ValueError, match="real intensities"):
        loss(x, y.to(torch.complex128))
    with pytest.raises(ValueError, match="shape"):
        loss(x, y[:, :10])
    with pytest.raises(ValueError, match="dtype"):
        loss(x, y.float())
    with pytest.raises(ValueError, match="l2"):
        IntensityLoss(op, l2=-1.0)
    with pytest.raises(ValueError, match="MeasurementOperator"):
        IntensityLoss(torch.eye(3))
    with pytest.raises(ValueError, match="alpha_lb"):
        TruncatedPoissonLoss(op, alpha_lb=6.0)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("complex_", [True, False])
def test_fused_pass_gives_the_two_product_evaluation(name, complex_, monkeypatch):
    """evaluate() forms w ⊙ g block by block in one op.linear_adjoint pass when the operator fuses
    (forced here on a small matrix, 7 rows per block): values, gradients, r and weights must equal
    the two-product path (r given → only the adjoint is applied)."""
    from phasetorch.physics import matrix as dense_module
    monkeypatch.setattr(dense_module, "FUSE_MIN_BYTES", 0)
    op, x, y = _problem(complex_)
    monkeypatch.setattr(dense_module, "FUSE_BLOCK_BYTES", 7 * op.n * (16 if complex_ else 8))
    assert op.fuses(3)
    loss = _make(name, op, l2=0.25)
    fused = loss.evaluate(x, y)
    plain = loss.evaluate(x, y, r=loss.measure(x))
    torch.testing.assert_close(fused.value, plain.value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.grad, plain.grad, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(fused.r, plain.r, rtol=1e-13, atol=1e-13)     # block GEMMs: other summation order
    if plain.weights is None:
        assert fused.weights is None
    else:
        torch.testing.assert_close(fused.weights, plain.weights, rtol=1e-12, atol=1e-12)
    frozen = plain.weights if plain.weights is not None else torch.rand(y.shape, dtype=F64)
    torch.testing.assert_close(loss.evaluate(x, y, weights=frozen).grad,
                               loss.evaluate(x, y, r=loss.measure(x), weights=frozen).grad, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("complex_", [True, False])
def test_prepared_evaluator_equals_evaluate_bit_for_bit(name, dtype, complex_):
    """``loss.evaluator(y, batch)`` (the loop's evaluation, a prepared fused C pass where the operator
    has a dense kernel matrix) gives exactly ``evaluate``'s value, gradient, r, weights and |r|²; an x
    it was not prepared for (another batch) goes through ``evaluate`` itself, with its clear error."""
    op, x, y = _problem(complex_, batch=(2,))
    sdt = op.signal_dtype if dtype == F64 else torch.complex64 if complex_ else torch.float32
    op, x, y = op.to(dtype), x.to(sdt), y.to(dtype)
    loss = _make(name, op, l2=0.1)
    ev = loss.evaluator(y, (2,))
    from phasetorch.physics import kernels
    # prepared wherever the kernel runs; TWF's weights (K is a mean over all measurements) are formed in the
    # pass and corrected after it, so its value and gradient are summed in another order: equal to rounding
    assert hasattr(ev, "plan") == kernels.available()
    truncated = loss.kernel_truncation() is not None and kernels.available()
    ref, got = loss.evaluate(x, y), ev(x)
    for a, b in ((ref.r, got.r), (ref.fields.a2, got.fields.a2)):
        assert torch.equal(a, b)
    for a, b in ((ref.value, got.value), (ref.grad, got.grad)):
        if truncated:
            torch.testing.assert_close(b, a, rtol=1e-12 if dtype == F64 else 1e-5, atol=0)
        else:
            assert torch.equal(a, b)
    assert (ref.weights is None) == (got.weights is None)
    if ref.weights is not None:
        assert torch.equal(ref.weights, got.weights)
    with pytest.raises(ValueError, match="batch shape"):            # not the prepared batch: evaluate's checks
        ev(x[:1])


def test_twf_prepared_evaluation_reads_a_once_with_its_exact_weights():
    """The prepared TWF evaluation guesses E₂ with the K of its previous call (at another point here, so rows
    are corrected) and still returns the exact weights, the two-pass value and gradient to rounding, and the
    frozen-weight trial value of a line search; one read of A per call (no forward-only pass)."""
    from phasetorch.physics import kernels
    if not kernels.available():
        pytest.skip("the C kernel does not build here")
    op, x, y = _problem(True, batch=(2,))
    loss = _make("poisson_truncated", op, l2=0.1)
    ev = loss.evaluator(y, (2,))
    points = (x + 0.4, x + 0.05, x)                 # K moves between the calls: the previous K's guess is off
    frozen = loss.weights(x + 0.4, y)
    refs = [(loss.evaluate(p, y), loss.value(p, y, weights=frozen)[0]) for p in points]
    before = dict(kernels.CALLS)
    got = [ev(p, frozen=frozen) for p in points]
    counts = {k: kernels.CALLS[k] - before[k] for k in before}
    for (ref, ref_frozen), g in zip(refs, got):
        assert torch.equal(ref.weights, g.weights) and torch.equal(ref.r, g.r)
        torch.testing.assert_close(g.value, ref.value, rtol=1e-12, atol=0)
        torch.testing.assert_close(g.grad, ref.grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(g.frozen, ref_frozen, rtol=1e-12, atol=0)
    assert counts["twf_one_read"] == 3 and counts["fused"] == 3
    assert counts["linear"] == 0 and counts["adjoint"] == 0      # no separate forward or adjoint pass
    assert counts["twf_flipped_rows"] > 0


@pytest.mark.parametrize("name", ["amplitude_truncated", "amplitude_reweighted", "poisson_truncated"])
def test_frozen_value_is_the_value_with_the_given_weights(name):
    op, x, y = _problem(True)
    loss = _make(name, op, l2=0.2)
    w = loss.weights(x + 0.3, y)                                     # the weights of another point
    ev = loss.evaluate(x, y)
    torch.testing.assert_close(loss.frozen_value(ev, x, y, w), loss.value(x, y, weights=w)[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(loss.frozen_value(ev, x, y, ev.weights), ev.value, rtol=1e-13, atol=0)
