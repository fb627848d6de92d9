import math

import pytest
import torch

import phasetorch as pt
from phasetorch import optim
from phasetorch.losses import (AmplitudeLoss, IntensityLoss, ReweightedAmplitudeLoss, TruncatedAmplitudeLoss,
                               TruncatedPoissonLoss)
from phasetorch.physics import CodedDiffraction, GaussianMeasurement, OversampledFourier

F64 = torch.float64


def _gauss(n=16, m=128, B=3, seed=0, complex_=True):
    op = GaussianMeasurement(n, m, complex=complex_, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 10)
    if complex_:
        xs = torch.view_as_complex(torch.randn(B, n, 2, generator=g, dtype=F64)) / math.sqrt(2)
        noise = torch.view_as_complex(torch.randn(B, n, 2, generator=g, dtype=F64)) / math.sqrt(2)
    else:
        xs = torch.randn(B, n, generator=g, dtype=F64)
        noise = torch.randn(B, n, generator=g, dtype=F64)
    return op, xs, op(xs), xs + 0.15 * noise


def _closure(opt, loss, x, y):
    def closure():
        opt.zero_grad()
        f = loss(x, y)
        f.sum().backward()
        return f
    return closure


# ---------------------------------------------------------------------------- step rules
def test_constant_and_schedule_rules():
    scale = torch.tensor([0.5, 2.0], dtype=F64)
    x = torch.zeros(2, 3, dtype=F64)
    d = torch.ones(2, 3, dtype=F64)
    active = torch.tensor([True, False])
    rule = optim.Constant(0.3)
    assert rule.init_state(x) == {}                       # stateless: nothing to carry
    alpha, x_new, _, _ = rule({}, 1, scale, x, None, -d, d, optim.StepContext(active=active))
    assert torch.allclose(alpha, torch.tensor([0.15, 0.0], dtype=F64))
    assert torch.allclose(x_new[0], torch.full((3,), 0.15, dtype=F64)) and torch.equal(x_new[1], x[1])
    alpha, _, _, _ = rule({}, 1, scale, x, None, -d, d, optim.StepContext(active=active), mu=0.6)   # μ passed at call time (lr)
    assert torch.allclose(alpha, torch.tensor([0.3, 0.0], dtype=F64))
    assert optim.wf_ramp(1, 330, 0.2) == pytest.approx(1 - math.exp(-1 / 330)) and optim.wf_ramp(10_000, 330, 0.2) == 0.2
    ramp = optim.WFRamp(tau0=330, mu_max=0.2)
    alpha, _, _, _ = ramp({}, 10_000, scale, x, None, -d, d, optim.StepContext(active=torch.tensor([True, True])))
    assert torch.allclose(alpha, 0.2 * scale)
    sched = optim.Schedule(lambda t: 1.0 / t)
    alpha, _, _, _ = sched({}, 4, scale, x, None, -d, d, optim.StepContext(active=torch.tensor([True, True])))
    assert torch.allclose(alpha, 0.25 * scale)
    with pytest.raises(ValueError, match="≥ 0"):
        optim.Schedule(lambda t: -1.0).factor(1)


def test_make_step_rule():
    default = optim.WFRamp()
    assert optim.make_step_rule(None, None, default=default) is default
    assert isinstance(optim.make_step_rule(0.1), optim.Constant)
    assert isinstance(optim.make_step_rule("armijo", mu0=0.2), optim.Armijo)
    assert optim.make_step_rule("bb1").variant == "bb1"
    assert isinstance(optim.make_step_rule(None, lambda t: 0.1), optim.Schedule)
    with pytest.raises(ValueError, match="either step= or schedule="):
        optim.make_step_rule(0.1, lambda t: 0.1)
    with pytest.raises(ValueError, match="unknown step rule"):
        optim.make_step_rule("newton")
    with pytest.raises(ValueError, match="> 0"):
        optim.make_step_rule(-0.5)


def test_backtracking_is_per_sample():
    """f_b(x) = c_b ‖x‖²/2 with different curvatures: each sample gets its own accepted step."""
    c = torch.tensor([1.0, 50.0, 400.0], dtype=F64)
    x = torch.ones(3, 4, dtype=F64)

    def evaluate(z):
        return 0.5 * c * z.square().sum(-1), None

    f, _ = evaluate(x)
    g = c[:, None] * x
    active = torch.tensor([True, True, True])
    alpha, x_new, f_new, _ = optim.backtracking(x, f, g, -g, torch.ones(3, dtype=F64), evaluate, active)
    assert (f_new < f).all()
    assert alpha[0] == 1.0 and alpha[1] < 1.0 and alpha[2] < alpha[1]
    for b in range(3):   # the same as one sample alone
        a1, x1, _, _ = optim.backtracking(x[b:b + 1], f[b:b + 1], g[b:b + 1], -g[b:b + 1], torch.ones(1, dtype=F64),
                                          lambda z: (0.5 * c[b] * z.square().sum(-1), None), active[:1])
        assert torch.equal(a1[0], alpha[b]) and torch.equal(x1[0], x_new[b])


# ---------------------------------------------------------------------------- optimizers in user loops
def test_wirtinger_flow_user_loop_equals_reconstruct():
    op, xs, y, x0 = _gauss()
    x = x0.clone().requires_grad_(True)
    loss = IntensityLoss(op, l2=0.05)
    opt = optim.WirtingerFlow([x], step=0.2, batch_dims=1)
    for _ in range(25):
        opt.step(_closure(opt, loss, x, y))
    rec = pt.reconstruct(op, y, "wf", init=x0, step=0.2, l2=0.05, max_iter=25, tol=0, progress=False)
    assert torch.allclose(x.detach(), rec.x, rtol=0, atol=1e-12)


def test_wirtinger_flow_ramp_and_grad_only_steps():
    """Without a closure the optimizer uses x.grad (the usual torch pattern)."""
    op, xs, y, x0 = _gauss()
    x = x0.clone().requires_grad_(True)
    loss = IntensityLoss(op)
    opt = optim.WirtingerFlow([x], batch_dims=1)            # Candès ramp
    for _ in range(10):
        opt.zero_grad()
        loss(x, y).sum().backward()
        opt.step()
    rec = pt.reconstruct(op, y, "wf", init=x0, max_iter=10, tol=0, progress=False)
    assert torch.allclose(x.detach(), rec.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls,loss_cls,alg,mu", [
    (optim.TruncatedAmplitudeFlow, TruncatedAmplitudeLoss, "taf", 1.0),   # the preset's complex-data step
    (optim.TruncatedWirtingerFlow, TruncatedPoissonLoss, "twf", None),
    (optim.ReshapedWirtingerFlow, AmplitudeLoss, "rwf", None),
])
def test_named_flows_equal_presets(cls, loss_cls, alg, mu):
    op, xs, y, x0 = _gauss()
    assert op.is_complex
    x = x0.clone().requires_grad_(True)
    loss = loss_cls(op)
    opt = cls([x], batch_dims=1, mu=mu)
    for _ in range(15):
        opt.step(_closure(opt, loss, x, y))
    rec = pt.reconstruct(op, y, alg, init=x0, max_iter=15, tol=0, progress=False)
    assert torch.allclose(x.detach(), rec.x, rtol=0, atol=1e-12)


def test_reweighted_flow_complex_defaults_in_preset():
    op, xs, y, x0 = _gauss()
    x = x0.clone().requires_grad_(True)
    loss = ReweightedAmplitudeLoss(op, beta=5.0)
    opt = optim.ReweightedAmplitudeFlow([x], step=4.0, batch_dims=1)
    for _ in range(10):
        opt.step(_closure(opt, loss, x, y))
    rec = pt.reconstruct(op, y, "raf", init=x0, max_iter=10, tol=0, progress=False)   # complex: β = 5, μ = 4
    assert torch.allclose(x.detach(), rec.x, rtol=0, atol=1e-12)


def test_armijo_decreases_every_sample():
    op, xs, y, x0 = _gauss()
    x = x0.clone().requires_grad_(True)
    loss = AmplitudeLoss(op)
    opt = optim.AmplitudeFlow([x], step="armijo", mu=5.0, batch_dims=1)
    prev = loss(x, y).detach()
    for _ in range(10):
        opt.step(_closure(opt, loss, x, y))
        cur = loss(x, y).detach()
        assert (cur <= prev).all()
        prev = cur
    with pytest.raises(ValueError, match="closure"):
        x.grad = torch.zeros_like(x)
        opt.step()


def test_bb_converges():
    op, xs, y, x0 = _gauss()
    x = x0.clone().requires_grad_(True)
    loss = AmplitudeLoss(op)
    opt = optim.AmplitudeFlow([x], step="bb", batch_dims=1)
    for _ in range(60):
        opt.step(_closure(opt, loss, x, y))
    assert (pt.metrics.relative_error(x.detach(), xs, signal_dims=1) < 1e-8).all()


def test_lbfgs_batched_equals_singles_and_converges():
    op, xs, y, x0 = _gauss()
    loss = AmplitudeLoss(op)
    x = x0.clone().requires_grad_(True)
    opt = optim.LBFGS([x], batch_dims=1, mu0=0.5)
    for _ in range(30):
        opt.step(_closure(opt, loss, x, y))
    assert (pt.metrics.relative_error(x.detach(), xs, signal_dims=1) < 1e-9).all()
    for b in range(3):
        xb = x0[b:b + 1].clone().requires_grad_(True)
        ob = optim.LBFGS([xb], batch_dims=1, mu0=0.5)
        for _ in range(30):
            ob.step(_closure(ob, loss, xb, y[b:b + 1]))
        assert torch.allclose(xb.detach()[0], x.detach()[b], rtol=0, atol=1e-11)


def test_lbfgs_needs_per_sample_losses():
    op, xs, y, x0 = _gauss()
    loss = AmplitudeLoss(op)
    x = x0.clone().requires_grad_(True)
    opt = optim.LBFGS([x], batch_dims=1)

    def closure():
        opt.zero_grad()
        f = loss(x, y).sum()
        f.backward()
        return f
    with pytest.raises(ValueError, match="one loss per sample"):
        opt.step(closure)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


def test_optimizer_argument_checks():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="exactly one tensor"):
        optim.WirtingerFlow([a, b])
    with pytest.raises(ValueError, match="batch_dims"):
        optim.WirtingerFlow([a], batch_dims=2)
    with pytest.raises(ValueError, match="scale"):
        optim.GradientDescent([a], scale="norm")
    with pytest.raises(ValueError, match="memory"):
        optim.LBFGS([a], memory=0)


# ---------------------------------------------------------------------------- projections
def test_tight_frame_probe():
    assert optim.tight_frame_constant(OversampledFourier((4, 5), 2, dtype=F64)) == pytest.approx(1.0, rel=1e-12)
    assert optim.tight_frame_constant(CodedDiffraction((4, 5), 3, "uniform", seed=0, dtype=F64)) == \
        pytest.approx(3.0, rel=1e-12)
    assert optim.tight_frame_constant(CodedDiffraction((4, 5), 3, "octanary", seed=0, dtype=F64)) is None
    assert optim.tight_frame_constant(GaussianMeasurement(8, 40, seed=0, dtype=F64)) is None


def test_gerchberg_saxton_optimizer():
    op, xs, y, x0 = _gauss(n=16, m=128)
    x = x0.clone()
    opt = optim.GerchbergSaxton([x], op=op, y=y, cg_steps=5)
    err0 = pt.metrics.relative_error(x, xs, signal_dims=1)
    for _ in range(60):
        opt.step()
    assert (pt.metrics.relative_error(x, xs, signal_dims=1) < 1e-3 * err0).all()
    # the truth is a fixed point
    xt = xs.clone()
    opt = optim.GerchbergSaxton([xt], op=op, y=y)
    opt.step()
    assert torch.allclose(xt, xs, atol=1e-12)


def test_hio_optimizer_keeps_truth_and_respects_constraints():
    op = OversampledFourier((6, 6), 2, dtype=F64)
    g = torch.Generator().manual_seed(0)
    sup = torch.zeros(6, 6, dtype=torch.bool)
    sup[:4, :5] = True
    xs = torch.rand(2, 6, 6, generator=g, dtype=F64) * sup
    y = op(xs)
    x = xs.clone()
    opt = optim.HybridInputOutput([x], op=op, y=y, support=sup, nonnegative=True)
    opt.step()
    assert torch.allclose(x, xs, atol=1e-12)
    x = torch.rand(2, 6, 6, generator=g, dtype=F64)
    opt = optim.HybridInputOutput([x], op=op, y=y, support=sup, nonnegative=True)
    for _ in range(5):
        opt.step()
    assert (x[:, ~sup] == 0).all() and (x >= 0).all()


def two_loop_reference(pairs, grad):
    """The textbook L-BFGS two-loop recursion (Nocedal & Wright, Alg. 7.4) for one sample, pairs newest first,
    on real views (Re⟨a, b⟩ for complex vectors)."""
    def ip(a, b):
        return float((a.conj() * b).real.sum())
    q, alphas = grad.clone(), []
    for s, y in pairs:
        a = ip(s, q) / ip(s, y)
        q = q - a * y
        alphas.append(a)
    if pairs:
        s, y = pairs[0]
        q = (ip(s, y) / ip(y, y)) * q
    for (s, y), a in zip(reversed(pairs), reversed(alphas)):
        b = ip(y, q) / ip(s, y)
        q = q + (a - b) * s
    return -q


def _bank_kernels_or_skip(monkeypatch, on):
    """The L-BFGS bank products through the C kernel (its size floor lowered) when ``on``; else torch's."""
    from phasetorch.physics import kernels
    if on:
        if not kernels.available():
            pytest.skip(f"C kernel unavailable: {kernels.status()['reason']}")
        monkeypatch.setattr(kernels, "ROWS_MIN", 0)
    else:
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    return kernels


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("stored", [0, 3, 10, 14])
def test_lbfgs_two_loop_equals_the_textbook_recursion_per_sample(monkeypatch, dtype, stored, kernel):
    """The masked, batched recursion over the newest-first buffer gives, for every sample, the textbook
    two-loop direction over that sample's own accepted pairs (the samples accept different pairs, the
    buffer wraps past its 10 slots), −∇f with an empty memory, and a descent direction otherwise; with
    the buffer's products in torch and in the C kernel."""
    from phasetorch.tensors import dot
    kernels = _bank_kernels_or_skip(monkeypatch, kernel)
    calls = kernels.CALLS["rows"]
    g = torch.Generator().manual_seed(stored)
    alg = optim.LBFGSAlgorithm(memory=10)
    x = torch.randn(3, 2, 5, generator=g, dtype=F64).to(dtype)
    st = alg.init_state(x, torch.ones(3, dtype=F64))
    kept = [[], [], []]
    for i in range(stored):                     # pairs with ⟨s, y⟩ > 0 (y = s + small noise)
        s = torch.randn(x.shape, generator=g, dtype=F64).to(dtype)
        y = s + 0.1 * torch.randn(x.shape, generator=g, dtype=F64).to(dtype)
        active = torch.tensor([True, i % 2 == 0, i % 3 != 1])
        alg.push(st, s, y, active)
        for b in range(3):
            if active[b]:
                kept[b].insert(0, (s[b], y[b]))
    assert st["count"].tolist() == [min(len(k), 10) for k in kept]
    grad = torch.randn(x.shape, generator=g, dtype=F64).to(dtype)
    d = alg.direction(st, grad, depth=10)
    for b in range(3):
        ref = two_loop_reference(kept[b][:10], grad[b])
        torch.testing.assert_close(d[b], ref, rtol=1e-11, atol=1e-12)
    # fewer slots: the same direction (the unused slots add exact zeros, but the batched products and
    # triangular solves may sum in another order: an ulp)
    torch.testing.assert_close(alg.direction(st, grad, depth=min(10, stored)), d, rtol=1e-13, atol=1e-15)
    if stored == 0:
        torch.testing.assert_close(d, -grad, rtol=0, atol=0)
    else:
        assert (dot(d, grad) < 0).all()             # a descent direction
    assert (kernels.CALLS["rows"] > calls) == kernel


def test_adapter_safeguard_keeps_a_user_loop_monotone():
    """RAF's torch.optim adapter with a closure rejects trial steps that raise a sample's loss (the
    preset's safeguard, as reconstruct): on problems where its constant step blows up unguarded."""
    from phasetorch.losses import ReweightedAmplitudeLoss

    def run(seed, **kw):
        op = GaussianMeasurement((6, 6), 216, complex=False, seed=seed, dtype=torch.float64)
        g = torch.Generator().manual_seed(4)
        xs = torch.zeros(2, 6, 6, dtype=torch.float64)
        xs[:, 1:5, 2:5] = 1.0 + 0.1 * torch.rand(2, 4, 3, generator=g, dtype=torch.float64)
        y = op(xs)
        loss = ReweightedAmplitudeLoss(op, 10.0)
        x = (xs + 0.3 * torch.randn(xs.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        opt = optim.ReweightedAmplitudeFlow([x], batch_dims=1, **kw)

        def closure():
            opt.zero_grad()
            f = loss(x, y)
            f.sum().backward()
            return f
        fs = [closure().detach()]
        for _ in range(40):
            opt.step(closure)
            fs.append(loss(x, y).detach())
        return torch.stack(fs)

    assert optim.ReweightedAmplitudeFlow([torch.zeros(3, requires_grad=True)]).param_groups[0]["safeguard"]
    for seed in (9, 11):
        fs = run(seed)
        assert torch.isfinite(fs).all() and (fs[1:] <= fs[:-1] * (1 + 1e-12)).all() and (fs[-1] < 0.2 * fs[0]).all()
    unguarded = run(9, safeguard=False)
    assert not (torch.isfinite(unguarded[-1]) & (unguarded[-1] < unguarded[0])).all()     # it does blow up
