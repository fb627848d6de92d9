"""The public model API of phasetorch.theory: SingleIndexModel, autograd derivatives, dmft/fixed_point/
simulate/compare with model=, against simulations at small sizes."""

import pytest
import torch

import phasetorch.theory as th
from phasetorch.tensors import make_generator, mean_se


@pytest.mark.parametrize("make", [lambda: th.phase_retrieval(0.2), th.linear_regression, th.logistic_classification])
def test_autograd_derivatives_equal_closed_forms(make):
    model = make()
    auto = th.single_index_model("auto", model.link, model.loss, noise=model.noise)
    g = make_generator(4)
    r = torch.randn(30, generator=g, dtype=torch.float64)
    y = model.link(torch.randn(30, generator=g, dtype=torch.float64), torch.randn(30, generator=g, dtype=torch.float64))
    for name in ("g", "g_r", "g_y"):
        assert torch.allclose(getattr(auto, name)(r, y), getattr(model, name)(r, y), atol=1e-10), name


def test_public_api_and_bad_models():
    assert callable(th.dmft) and th.linear_regression().name == "linear_regression"
    assert "SingleIndexModel" in th.__all__ and "single_index_model" in th.__all__
    with pytest.raises(TypeError, match="SingleIndexModel"):
        th.dmft(4.0, step=0.1, steps=1, model="phase_retrieval", progress=False)
    with pytest.raises(ValueError, match="no spectral start"):
        th.dmft(4.0, step=0.1, steps=1, model=th.linear_regression(), samples=100, replicates=1, progress=False)
    with pytest.raises(ValueError, match="field"):
        th.single_index_model("x", lambda s, e: s, lambda r, y: r * r, field="quaternion")


def _agree(p, log, k=3.5, slack=0.01):
    for col, pcol in (("inner", "m"), ("loss", "loss")):
        v, se = mean_se(log[col], dim=1)
        assert ((v - p[pcol]).abs() <= k * (se ** 2 + p[pcol + "_se"] ** 2).sqrt() + slack).all(), (col, v, p[pcol])


def test_logistic_classification_warm_start_matches_simulation():
    kw = dict(model=th.logistic_classification(), init="warm", init_overlap=0.3, step=1.0, l2=0.05, steps=8)
    p = th.dmft(3.0, samples=20_000, replicates=4, seed=1, progress=False, **kw)
    log = th.simulate(3.0, dim=300, seeds=6, progress=False, **kw)
    th.check_describes(p, log)
    _agree(p, log)
    assert p.params["mu"] == "stein"           # the sign link jumps: Stein form of μ


def test_linear_regression_warm_start_matches_simulation_and_fixed_point():
    kw = dict(model=th.linear_regression(0.3), init="warm", init_overlap=0.2, step=0.5, l2=0.1, steps=60)
    p = th.dmft(3.0, samples=10_000, replicates=4, seed=2, progress=False, **kw)
    log = th.simulate(3.0, dim=300, seeds=6, progress=False, **kw)
    _agree(p, log)
    fp = th.fixed_point(3.0, l2=0.1, model=th.linear_regression(0.3), start=0.2)
    assert fp.converged and fp.m == pytest.approx(float(p["m"][-1]), abs=2e-3)
    assert fp.q == pytest.approx(float(p["q"][-1]), abs=5e-3)


def test_complex_amplitude_loss_matches_simulation():
    kw = dict(model=th.amplitude_phase_retrieval(field="complex"), step=0.5, l2=0.0, steps=5)
    p = th.dmft(4.0, samples=20_000, replicates=4, seed=3, progress=False, **kw)
    log = th.simulate(4.0, dim=300, seeds=6, progress=False, **kw)
    assert log.config["algorithm"] == "af"
    th.check_describes(p, log)
    _agree(p, log)
    wf = th.simulate(4.0, dim=40, seeds=2, step=0.5, steps=1, field="complex", progress=False)
    with pytest.raises(ValueError, match="algorithm"):
        th.check_describes(p, wf)


def test_real_amplitude_loss_matches_simulation_in_float64_and_float32():
    model = th.amplitude_phase_retrieval(field="real")
    kw = dict(model=model, step=0.5, l2=0.0, steps=8)
    p = th.dmft(4.0, samples=20_000, replicates=4, seed=3, progress=False, **kw)
    log = th.simulate(4.0, dim=300, seeds=6, progress=False, **kw)
    assert log.config["algorithm"] == "af" and log.config["field"] == "real"
    th.check_describes(p, log)
    _agree(p, log)
    # the smoothed sign's derivative stays finite far from 0 in float32 (it overflowed once)
    r = torch.tensor([-50.0, -1.0, 0.0, 1e-3, 3.0, 1e4])
    for dt in (torch.float32, torch.float64):
        gr = model.g_r(r.to(dt), torch.ones(6, dtype=dt))
        assert torch.isfinite(gr).all() and gr[0] == 1 and gr[-1] == 1 and gr[2] == pytest.approx(1 - 1 / 0.02)
    p32 = th.dmft(4.0, samples=20_000, replicates=4, seed=3, dtype=torch.float32, progress=False, **kw)
    assert torch.isfinite(p32["m"]).all() and (p32["m"] - p["m"]).abs().max() < 1e-3


def test_relu_regression_warm_start_matches_simulation_and_fixed_point():
    model = th.relu_regression(0.1)
    assert model.mean_y == pytest.approx(0.3989422804)
    kw = dict(model=model, init="warm", init_overlap=0.3, step=0.5, l2=0.05, steps=15)
    p = th.dmft(3.0, samples=20_000, replicates=4, seed=1, progress=False, **kw)
    log = th.simulate(3.0, dim=300, seeds=6, progress=False, **kw)
    th.check_describes(p, log)
    _agree(p, log)
    fp = th.fixed_point(3.0, l2=0.05, model=model, start=0.3)
    assert fp.converged and fp.m == pytest.approx(float(p["m"][-1]), abs=3e-3)
