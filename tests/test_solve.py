import math

import pytest
import torch

import phasetorch as pt
from phasetorch import DivergenceError, reconstruct
from phasetorch.losses import IntensityLoss
from phasetorch.physics import CodedDiffraction, GaussianMeasurement, OversampledFourier
from phasetorch.optim import PRESETS

F64 = torch.float64
GRADIENT_PRESETS = ["wf", "twf", "rwf", "taf", "raf", "af", "gs", "lbfgs"]   # hio: Fourier data (below)


def _complex_gaussian(n, delta=8, B=3, seed=0, dtype=F64):
    op = GaussianMeasurement(n, delta * n, complex=True, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    xs = (torch.view_as_complex(torch.randn(B, n, 2, generator=g, dtype=F64)) / math.sqrt(2)).to(op.signal_dtype)
    return op, xs, op(xs)


def _rel(x, xs, dims=1):
    return pt.metrics.relative_error(x, xs, signal_dims=dims)


# ---------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("algorithm", GRADIENT_PRESETS)
def test_every_preset_recovers_complex_gaussian(algorithm):
    op, xs, y = _complex_gaussian(64)
    rec = reconstruct(op, y, algorithm, max_iter=3000, progress=False, seed=1)
    assert rec.x.shape == xs.shape and rec.converged.all(), rec.iterations
    assert (_rel(rec.x, xs) < 1e-6).all(), _rel(rec.x, xs)
    assert rec.log.config["init"] == "spectral" and rec.log.config["algorithm"] == algorithm


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", GRADIENT_PRESETS)
def test_every_preset_recovers_complex_gaussian_n256(algorithm):
    op, xs, y = _complex_gaussian(256)
    rec = reconstruct(op, y, algorithm, max_iter=3000, progress=False, seed=1, x_true=xs)
    assert (_rel(rec.x, xs) < 1e-6).all(), _rel(rec.x, xs)


def test_real_gaussian_wf():
    n = 64
    op = GaussianMeasurement(n, 8 * n, complex=False, seed=3, dtype=F64)
    xs = torch.randn(2, n, generator=torch.Generator().manual_seed(4), dtype=F64)
    rec = reconstruct(op, op(xs), "wf", max_iter=3000, progress=False, seed=0)
    assert not rec.x.is_complex()
    assert (_rel(rec.x, xs) < 1e-6).all()


def test_cdp_raf():
    op = CodedDiffraction((32, 32), 6, seed=2, dtype=F64)
    g = torch.Generator().manual_seed(1)
    xs = torch.view_as_complex(torch.randn(2, 32, 32, 2, generator=g, dtype=F64)) / math.sqrt(2)
    rec = reconstruct(op, op(xs), "raf", max_iter=1500, progress=False, seed=0)
    assert (_rel(rec.x, xs, 2) < 1e-6).all(), _rel(rec.x, xs, 2)


def _fourier_problem(B=2, H=10, seed=6):
    op = OversampledFourier((H, H), oversampling=2, dtype=F64)
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    support = (ii + 2 * jj) < 2 * H - 4                    # not centro-symmetric: no twin inside it
    xs = torch.rand(B, H, H, generator=torch.Generator().manual_seed(seed), dtype=F64) * support
    return op, xs, op(xs), support


def test_hio_recovers_nonnegative_image_with_support():
    op, xs, y, support = _fourier_problem()
    rec = reconstruct(op, y, "hio", support=support, nonnegative=True, max_iter=3000, progress=False, seed=0)
    assert not rec.x.is_complex() and (rec.x >= 0).all() and (rec.x[:, ~support] == 0).all()
    assert (_rel(rec.x, xs, 2) < 1e-6).all(), _rel(rec.x, xs, 2)


def test_gs_polishes_on_fourier_data_and_is_exact_projection():
    """ER from a point near the truth converges (tight frame: A⁺ = Aᴴ, no CG)."""
    op, xs, y, support = _fourier_problem()
    x0 = xs + 0.02 * torch.rand(xs.shape, generator=torch.Generator().manual_seed(1), dtype=F64) * support
    rec = reconstruct(op, y, "gs", init=x0, support=support, nonnegative=True, max_iter=2000, progress=False)
    assert (_rel(rec.x, xs, 2) < 1e-6).all(), _rel(rec.x, xs, 2)


# ---------------------------------------------------------------------------- contracts
def test_wf_constant_step_is_plain_gradient_descent():
    """step=μ: x_{t+1} = x_t − (μ/‖x₀‖²) ∇f(x_t), f = (1/4m)Σ(|aᴴx|²−y)² + (λ/2)‖x‖² (the DMFT's GD)."""
    n, m, mu, lam = 20, 80, 0.1, 0.1
    op = GaussianMeasurement(n, m, complex=False, seed=7, dtype=F64)
    g = torch.Generator().manual_seed(8)
    xs = torch.randn(n, generator=g, dtype=F64)
    xs = xs / xs.norm()
    y = op(xs)
    x0 = xs + 0.3 * torch.randn(n, generator=g, dtype=F64)
    A = op.matrix()
    x = x0.clone()
    eta = mu / x0.square().sum()
    for _ in range(30):
        r = A @ x
        x = x - eta * (A.T @ ((r * r - y) * r) / m + lam * x)
    rec = reconstruct(op, y, "wf", init=x0, step=mu, l2=lam, max_iter=30, tol=0, progress=False, x_true=xs)
    assert torch.allclose(rec.x, x, rtol=0, atol=1e-13)
    assert rec.log.config["step"] == mu and rec.log.config["l2"] == lam
    assert torch.allclose(rec.log["step"][1:, 0], torch.full((30,), float(eta), dtype=F64))
    # schedule=constant is the same run
    rec2 = reconstruct(op, y, "wf", init=x0, schedule=lambda t: mu, l2=lam, max_iter=30, tol=0, progress=False)
    assert torch.equal(rec2.x, rec.x)


def test_regularized_wf_reaches_stationary_point_of_its_objective():
    op, xs, y = _complex_gaussian(32, B=2)
    lam = 0.2
    rec = reconstruct(op, y, "wf", step=0.2, l2=lam, max_iter=5000, progress=False, seed=0)
    assert rec.converged.all()
    _, grad, _, _ = IntensityLoss(op, l2=lam).value_and_grad(rec.x, y)
    gnorm = grad.abs().square().sum(-1).sqrt()
    assert (gnorm < 1e-8 * rec.x.abs().square().sum(-1).sqrt()).all(), gnorm
    assert (_rel(rec.x, xs) > 1e-3).all()                 # the ridge moves the minimiser away from x*
    assert torch.allclose(rec.log["grad_norm"][-1], gnorm)


@pytest.mark.parametrize("algorithm,kw", [("wf", {}), ("twf", {}), ("raf", {}), ("lbfgs", {}), ("gs", {}),
                                          ("taf", {"step": "armijo"}), ("af", {"step": "bb"})])
def test_batch_equals_single_runs(algorithm, kw):
    op, xs, y = _complex_gaussian(32, B=3)
    batch = reconstruct(op, y, algorithm, max_iter=400, progress=False, seed=3, **kw)
    for b in range(3):
        single = reconstruct(op, y[b], algorithm, max_iter=400, progress=False, seed=3, **kw)
        assert single.x.shape == xs.shape[1:]
        assert torch.allclose(single.x, batch.x[b], rtol=0, atol=1e-10)
        assert int(single.iterations) == int(batch.iterations[b])
        assert torch.allclose(single.log["loss"][:, 0], batch.log["loss"][: len(single.log), b], rtol=1e-9)


def test_x_true_does_not_change_the_result():
    op, xs, y = _complex_gaussian(32)
    a = reconstruct(op, y, "raf", max_iter=300, progress=False, seed=2)
    b = reconstruct(op, y, "raf", max_iter=300, progress=False, seed=2, x_true=xs)
    assert torch.equal(a.x, b.x) and torch.equal(a.iterations, b.iterations)
    assert "rel_error" not in a.log and {"rel_error", "overlap", "inner"} <= set(b.log.columns)
    rel = b.log["rel_error"][-1]
    assert torch.allclose(rel, _rel(b.x, xs), rtol=1e-10)
    assert torch.allclose(b.log["overlap"][-1], pt.metrics.overlap(b.x, xs, signal_dims=1), rtol=1e-12)
    assert torch.allclose(b.log["inner"][0], pt.metrics.inner(b.x0, xs, signal_dims=1), rtol=1e-12)


def test_per_sample_stopping_freezes_finished_samples():
    op, xs, y = _complex_gaussian(32, B=2)
    x0 = torch.stack([xs[0] * (1 + 1e-3), xs[1] + 0.5 * torch.randn(32, generator=torch.Generator().manual_seed(0),
                                                                     dtype=F64)])
    rec = reconstruct(op, y, "raf", init=x0, max_iter=2000, progress=False)
    it = rec.iterations
    assert it[0] < it[1]
    # sample 0's records after it stopped repeat its final state with step 0
    k = int((rec.log["iteration"] == it[0]).nonzero()[0, 0])
    assert (rec.log["step"][k + 1:, 0] == 0).all()
    assert (rec.log["loss"][k + 1:, 0] == rec.log["loss"][k, 0]).all()


def test_divergence_raises_and_names_the_step():
    op, xs, y = _complex_gaussian(32, B=2)
    with pytest.raises(DivergenceError, match=r"reduce step \(currently 50\)") as err:
        reconstruct(op, y, "wf", step=50.0, max_iter=200, progress=False, seed=0, safeguard=False)
    assert err.value.iteration >= 1 and err.value.log is not None and len(err.value.log) >= 1
    assert torch.isfinite(err.value.x).all()
    # the default safeguard halves a sample's step instead: the loss never rises, nothing diverges
    rec = reconstruct(op, y, "wf", step=50.0, max_iter=200, progress=False, seed=0)
    loss = rec.log["loss"]
    assert torch.isfinite(rec.x).all() and (loss[1:] <= loss[:-1] * (1 + 1e-12)).all()
    assert (rec.status != pt.Status.DIVERGED).all()


def test_input_validation():
    op, xs, y = _complex_gaussian(16, B=2)
    bad = y.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(op, bad, progress=False)
    with pytest.raises(ValueError, match="shape"):
        reconstruct(op, y[:, :-1], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        reconstruct(op, y.float(), progress=False)
    with pytest.raises(ValueError, match="unknown algorithm"):
        reconstruct(op, y, "newton", progress=False)
    with pytest.raises(ValueError, match="unknown option"):
        reconstruct(op, y, "raf", gamma=0.5, progress=False)
    with pytest.raises(ValueError, match="init"):
        reconstruct(op, y, init=torch.zeros(3, 17, dtype=torch.complex128), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        reconstruct(op, y, init=xs.to(torch.complex64), progress=False)
    with pytest.raises(ValueError, match="support"):
        reconstruct(op, y, support=torch.ones(5, dtype=torch.bool), progress=False)
    with pytest.raises(ValueError, match="l2"):
        reconstruct(op, y, "gs", l2=0.1, progress=False)
    with pytest.raises(ValueError, match="step"):
        reconstruct(op, y, "lbfgs", step=0.1, progress=False)
    with pytest.raises(ValueError, match="max_iter"):
        reconstruct(op, y, max_iter=-1, progress=False)
    with pytest.raises(ValueError, match="real intensities"):
        reconstruct(op, op.linear(xs), progress=False)


def test_noisy_negative_intensities_are_allowed():
    op, xs, y = _complex_gaussian(32, B=2)
    noisy = y + 0.5 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert (noisy < 0).any()
    for alg in ("raf", "twf", "wf"):
        rec = reconstruct(op, noisy, alg, max_iter=500, progress=False, seed=0)
        assert torch.isfinite(rec.x).all()
        assert (_rel(rec.x, xs) < 0.2).all()


def test_float32():
    op, xs, y = _complex_gaussian(64, B=2, dtype=torch.float32)
    rec = reconstruct(op, y, "raf", max_iter=1000, progress=False, seed=0)
    assert rec.x.dtype == torch.complex64 and rec.converged.all()
    assert (_rel(rec.x, xs) < 1e-4).all()


def test_reproducible_with_seed():
    op, xs, y = _complex_gaussian(16, B=2)
    a = reconstruct(op, y, "hio", init="random", max_iter=20, tol=0, progress=False, seed=11)
    b = reconstruct(op, y, "hio", init="random", max_iter=20, tol=0, progress=False, seed=11)
    c = reconstruct(op, y, "hio", init="random", max_iter=20, tol=0, progress=False, seed=12)
    assert torch.equal(a.x, b.x) and torch.equal(a.x0, b.x0)
    assert not torch.equal(a.x0, c.x0)
    g = torch.Generator().manual_seed(11)
    d = reconstruct(op, y, "hio", init="random", max_iter=20, tol=0, progress=False, generator=g)
    assert torch.equal(d.x0, a.x0)


def test_real_signal_on_complex_operator():
    n = 32
    op = GaussianMeasurement(n, 8 * n, complex=True, seed=1, dtype=F64)
    xs = torch.randn(2, n, generator=torch.Generator().manual_seed(2), dtype=F64)
    rec = reconstruct(op, op(xs), "taf", real_signal=True, max_iter=2000, progress=False, seed=0)
    assert not rec.x.is_complex()
    assert (_rel(rec.x, xs) < 1e-6).all()


def test_log_contents_and_log_every():
    op, xs, y = _complex_gaussian(32, B=2)
    rec = reconstruct(op, y, "raf", max_iter=47, tol=0, log_every=10, progress=False, seed=0, x_true=xs)
    log = rec.log
    assert log["iteration"].tolist() == [0, 10, 20, 30, 40, 47]
    assert set(["loss", "grad_norm", "step", "norm", "time", "residual", "rel_error", "overlap", "inner"]) <= \
        set(log.columns)
    assert log["overlap"].shape == (6, 2)
    assert torch.allclose(log["norm"][-1], rec.x.abs().square().sum(-1).sqrt())
    assert (log["time"][1:] >= log["time"][:-1]).all()
    cfg = log.config
    assert cfg["operator"]["type"] == "GaussianMeasurement" and cfg["delta"] == 8.0 and cfg["seed"] == 0
    assert cfg["loss"]["beta"] == 5.0 and cfg["preprocessing"] == "weighted"
    assert (rec.iterations == 47).all() and not rec.converged.any()


def test_callback_and_max_iter_zero():
    op, xs, y = _complex_gaussian(16, B=2)
    seen = []

    def cb(t, x, info):
        seen.append((t, x.shape, info["loss"].shape))
        return t == 5
    rec = reconstruct(op, y, "raf", max_iter=100, tol=0, progress=False, callback=cb, seed=0)
    assert seen[-1][0] == 5 and seen[0][1] == xs.shape and seen[0][2] == (2,)
    assert (rec.iterations == 5).all() and rec.log["iteration"][-1] == 5
    rec0 = reconstruct(op, y, "raf", max_iter=0, progress=False, seed=0)
    assert torch.equal(rec0.x, rec0.x0) and len(rec0.log) == 1


def test_progress_bar_runs(capsys):
    op, xs, y = _complex_gaussian(16, B=1)
    rec = reconstruct(op, y, "raf", max_iter=20, progress=True, x_true=xs, seed=0)
    assert rec.x.shape == xs.shape


def test_every_preset_is_registered_with_a_reference():
    assert set(PRESETS) == {"auto", "wf", "twf", "rwf", "taf", "raf", "af", "gs", "hio", "lbfgs"}
    for p in PRESETS.values():
        assert p.reference and p.preprocessing is not None


def test_spectral_options_reach_the_lanczos_restart():
    op, xs, y = _complex_gaussian(40, B=1)
    with pytest.raises(ValueError, match="keep"):
        reconstruct(op, y, "wf", spectral_options={"krylov_dim": 16, "keep": 9, "keep_low": 7}, progress=False)
    a = reconstruct(op, y, "wf", max_iter=0, spectral_options={"krylov_dim": 16, "keep": 2, "keep_low": 0},
                    progress=False, seed=0)
    b = reconstruct(op, y, "wf", max_iter=0, spectral_options={"krylov_dim": 16}, progress=False, seed=0)
    assert a.log.config["spectral_options"] == {"krylov_dim": 16, "keep": 2, "keep_low": 0}
    ca = a.x0.flatten() / a.x0.flatten().norm()
    cb = b.x0.flatten() / b.x0.flatten().norm()
    assert float(torch.vdot(ca, cb).abs()) > 1 - 1e-6     # the same top eigenvector by another restart


def test_lbfgs_intensity_loss_and_spectral_options():
    op, xs, y = _complex_gaussian(32, B=2)
    rec = reconstruct(op, y, "lbfgs", loss="intensity", max_iter=500, progress=False, seed=0,
                      spectral_options={"tol": 1e-4})
    assert rec.log.config["loss"]["loss"] == "intensity" and rec.log.config["spectral_options"] == {"tol": 1e-4}
    assert (_rel(rec.x, xs) < 1e-6).all()
    assert reconstruct(op, y, "lbfgs", max_iter=0, progress=False, seed=0).log.config["spectral_options"] == \
        {"tol": 0.1}                                    # the preset's own default
    with pytest.raises(ValueError, match="lbfgs works on"):
        reconstruct(op, y, "lbfgs", loss="poisson", progress=False)
    with pytest.raises(ValueError, match="may not set"):
        reconstruct(op, y, "raf", spectral_options={"seed": 3}, progress=False)


def test_the_spectral_start_is_reported_and_an_unfinished_one_warns():
    """reconstruct records the spectral start per sample in log.config["spectral_start"]; one that stopped
    at its product budget before its tolerance is used as it is, with a warning naming the knobs."""
    import warnings as _w
    op, xs, y = _complex_gaussian(32, B=2)
    with _w.catch_warnings():
        _w.simplefilter("error")                         # a finished start says nothing
        rec = reconstruct(op, y, "af", max_iter=5, progress=False, seed=0)
    st = rec.log.config["spectral_start"]
    assert st["solver"] == "lanczos" and st["converged"] == [True, True]
    assert all(isinstance(k, int) and k > 3 for k in st["matvecs"]) and all(r <= 1e-6 for r in st["residual"])
    with pytest.warns(UserWarning, match=r"sample\(s\) 0, 1 stopped at its budget of 3 .*krylov_dim") as got:
        rec = reconstruct(op, y, "af", max_iter=5, progress=False, seed=0, spectral_options={"max_iter": 3})
    assert got[0].filename == __file__                   # attributed to the caller's line
    st = rec.log.config["spectral_start"]
    assert st["converged"] == [False, False] and st["matvecs"] == [3, 3] and min(st["residual"]) > 1e-6
    assert torch.isfinite(rec.x).all()
    assert reconstruct(op, y, "af", init="random", max_iter=2, progress=False,
                       seed=0).log.config["spectral_start"] is None


@pytest.mark.parametrize("algorithm", ["gs", "raf"])
def test_an_ensemble_equals_member_runs(algorithm):
    """Batched GS / RAF over a GaussianEnsemble (one matrix per sample) equals the per-member runs."""
    import phasetorch as pt
    op = pt.GaussianEnsemble(32, 192, 3, seeds=[1, 2, 3], dtype=torch.float64)
    x = torch.randn(3, 32, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    y = op(x)
    rec = pt.reconstruct(op, y, algorithm=algorithm, progress=False, seed=0, max_iter=200)
    for k in range(3):
        single = pt.reconstruct(op.member(k), y[k], algorithm=algorithm, progress=False, seed=0, max_iter=200)
        assert torch.allclose(rec.x[k], single.x, atol=1e-12)
        assert float(pt.metrics.relative_error(rec.x[k], x[k], signal_dims=1)) < (1e-8 if algorithm == "gs" else 1e-5)


@pytest.mark.parametrize("algorithm", ["wf", "raf", "twf", "lbfgs"])
def test_fused_batch_equals_unfused_single_runs(algorithm, monkeypatch):
    """A batch through a dense operator that fuses its products (forced on this small matrix; a
    batch of 3 fuses, single signals do not) gives what single two-product runs give. (The torch
    row-block path: the compiled kernel, which would take these passes, is switched off.)"""
    from phasetorch.physics import matrix as dense_module
    monkeypatch.setenv("PHASETORCH_KERNELS", "0")
    monkeypatch.setattr(dense_module, "FUSE_MIN_BYTES", 0)
    monkeypatch.setattr(dense_module, "FUSE_BLOCK_BYTES", 50 * 32 * 16)
    op, xs, y = _complex_gaussian(32, B=3)
    assert op.fuses(3) and not op.fuses(1)
    passes = []
    real_pass = dense_module.fused_linear_adjoint
    monkeypatch.setattr(dense_module, "fused_linear_adjoint", lambda *a: passes.append(1) or real_pass(*a))
    batch = reconstruct(op, y, algorithm, max_iter=150, progress=False, seed=5)
    assert len(passes) > 3                    # the spectral start and the gradients went through fused passes
    for b in range(3):
        single = reconstruct(op, y[b], algorithm, max_iter=150, progress=False, seed=5)
        assert torch.allclose(single.x, batch.x[b], rtol=0, atol=1e-10)
        assert int(single.iterations) == int(batch.iterations[b])


def test_early_divergence_from_a_poor_start_names_the_preprocessing():
    """WF's identity spectral start on large coded-diffraction images is localised on a few large
    y_i (overlap ≈ 0.12 at 128², |Ax₀|² ≈ 1000× max y): the run blows up at once, and the error
    says which start to use instead; that start then converges."""
    op = CodedDiffraction((128, 128), 8, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(1)
    xs = torch.view_as_complex(torch.randn(128, 128, 2, generator=g, dtype=F64)) / math.sqrt(2)
    y = op(xs)
    with pytest.raises(DivergenceError, match=r"'identity' spectral start .* preprocessing='optimal'") as err:
        reconstruct(op, y, "wf", preprocessing="identity", max_iter=50, progress=False, seed=0, safeguard=False)
    assert err.value.iteration <= 5
    auto = reconstruct(op, y, "wf", max_iter=50, progress=False, seed=0)      # not a Gaussian design: 'optimal'
    assert auto.log.config["preprocessing"] == "optimal"
    rec = reconstruct(op, y, "wf", preprocessing="optimal", max_iter=50, progress=False, seed=0)
    assert float(_rel(rec.x, xs, 2)) < 0.3


def test_a_loss_that_redefines_evaluate_keeps_its_own_trial_values():
    """A user subclass that adds a term in ``evaluate`` is not bypassed by the loop's fast paths: the
    line search's trial value with frozen weights is the subclass's own value."""
    from phasetorch.losses import Evaluation, TruncatedAmplitudeLoss
    from phasetorch.solve import Driver
    from phasetorch.tensors import norm2

    class Penalised(TruncatedAmplitudeLoss):
        def evaluate(self, x, y, r=None, weights=None, grad=True):
            ev = super().evaluate(x, y, r, weights, grad)
            return Evaluation(ev.value + 0.5 * norm2(x), None if ev.grad is None else ev.grad + x, ev.r,
                              ev.weights, ev.fields)

    op = GaussianMeasurement(8, 64, complex=False, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(2, 8, generator=g, dtype=F64)
    loss = Penalised(op)
    data = loss.prepare(op(xt))
    assert not loss.own_evaluation() and TruncatedAmplitudeLoss(op).own_evaluation()
    x = xt + 0.1 * torch.randn(xt.shape, generator=g, dtype=F64)
    x_try = x + 0.05 * torch.randn(xt.shape, generator=g, dtype=F64)
    drv = Driver.__new__(Driver)
    drv.loss, drv.data, drv.evaluate = loss, data, loss.evaluator(data, (2,))
    ev0 = loss.evaluate(x, data)
    _, f_try = drv.full_eval(x, ev0.r, ev0.weights)(x_try)
    torch.testing.assert_close(f_try, loss.value(x_try, data, weights=loss.weights(x, data, ev0.r))[0])


def test_an_overflowing_loss_is_caught_at_once_in_float32():
    """f = +inf is a divergence even where the divergence limit itself overflows (float32, |f₀| ≳ 1e32):
    caught at the iteration it happens, the sample frozen at its last finite iterate."""
    op = GaussianMeasurement(16, 128, complex=False, seed=0, dtype=torch.float32)
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)) * 6e7
    y = op(x)
    with pytest.raises(DivergenceError) as err:
        reconstruct(op, y, algorithm="wf", step=1e4, safeguard=False, max_iter=6, progress=False, seed=0,
                    init=1.3 * x)
    assert err.value.iteration == 1
    assert torch.isfinite(IntensityLoss(op)(err.value.x, y)).all()
