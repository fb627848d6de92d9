"""GaussianEnsemble, finite-d simulations, and their comparison with the theory (overlay, compare)."""

import math

import pytest
import torch

from phasetorch.logs import TrainingLog
from phasetorch.physics import GaussianMeasurement, load_operator, save_operator
from phasetorch.physics.ensemble import GaussianEnsemble
from phasetorch.tensors import mean_se
from phasetorch.theory import compare, dmft, overlay, simulate, spectral_overlap
from phasetorch.theory.compare import NOT_ENOUGH_DATA, failed_seeds


# ------------------------------------------------------------------------------ GaussianEnsemble

@pytest.mark.parametrize("is_complex", [True, False])
def test_ensemble_members_equal_gaussian_measurements(is_complex):
    E = GaussianEnsemble(24, 70, 3, complex=is_complex, seed=11, block_rows=32, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, generator=g, dtype=torch.float64)
    if is_complex:
        x = x + 1j * torch.randn(2, 3, 24, generator=g, dtype=torch.float64)
    z, y = E.linear(x), E(x)
    r = torch.randn(2, 3, 70, generator=g, dtype=torch.float64)
    back = E.adjoint(r)
    assert z.shape == (2, 3, 70) and y.shape == (2, 3, 70) and back.shape == (2, 3, 24)
    for k in range(3):
        G = GaussianMeasurement(24, 70, complex=is_complex, seed=E.seeds[k], block_rows=32, dtype=torch.float64)
        assert torch.equal(G.matrix(), E.matrices()[k])
        assert torch.allclose(G.linear(x[:, k]), z[:, k], rtol=0, atol=1e-12)
        assert torch.allclose(G(x[:, k]), y[:, k], rtol=0, atol=1e-12)
        assert torch.allclose(G.adjoint(r[:, k]), back[:, k], rtol=0, atol=1e-12)
        assert torch.equal(E.member(k).matrix(), G.matrix())


def test_ensemble_seeds_config_and_errors(tmp_path):
    E = GaussianEnsemble(10, 30, 2, complex=False, seeds=[5, 9])
    assert E.seeds == [5, 9] and E.entry_energy == 1.0 and E.delta == 3.0
    assert GaussianEnsemble(10, 30, 2, seed=3).seeds == GaussianEnsemble(10, 30, 2, seed=3).seeds
    save_operator(E, tmp_path / "ens.pt")
    F = load_operator(tmp_path / "ens.pt")
    assert isinstance(F, GaussianEnsemble) and torch.equal(F.matrices(), E.matrices())
    with pytest.raises(ValueError, match="last batch dimension"):
        E.linear(torch.randn(3, 10))
    with pytest.raises(ValueError, match="last batch dimension"):
        E.linear(torch.randn(10))
    with pytest.raises(ValueError, match="one seed per matrix"):
        GaussianEnsemble(10, 30, 3, seeds=[1, 2])
    with pytest.raises(ValueError, match="not both"):
        GaussianEnsemble(10, 30, 2, seeds=[1, 2], seed=4)


# ------------------------------------------------------------------------------ simulate

def test_simulate_small_log():
    log = simulate(4.0, dim=200, seeds=2, step=0.1, l2=0.1, steps=5, progress=False)
    for col in ("iteration", "loss", "grad_norm", "step", "norm", "time", "rel_error", "overlap", "inner"):
        assert col in log.columns
    assert log["overlap"].shape == (6, 2) and log["iteration"].tolist() == list(range(6))
    assert log.batch_shape == (2,)
    cfg = log.config
    for key in ("delta", "dim", "step", "l2", "preprocessing", "noise", "seeds"):
        assert key in cfg
    assert cfg["delta"] == 4.0 and cfg["dim"] == 200 and cfg["m"] == 800 and len(cfg["seeds"]) == 2
    # step 0 is the spectral start: its cosine is near the asymptotic ρ (loose: d = 200)
    assert float(log["overlap"][0].mean()) == pytest.approx(spectral_overlap(4.0), abs=0.05)
    assert bool((log["inner"][0] > 0).all())                 # oracle sign: inner = m > 0
    assert torch.allclose(log["norm"][0] ** 2, torch.ones(2, dtype=torch.float64), atol=0.15)
    # GD with λ > 0 lowers the loss
    assert bool((log["loss"][-1] < log["loss"][0]).all())


def test_simulate_batch_equals_single_runs():
    both = simulate(3.0, dim=120, seeds=[101, 202], step=0.1, l2=0.05, steps=4, progress=False, noise=0.1)
    one = simulate(3.0, dim=120, seeds=[202], step=0.1, l2=0.05, steps=4, progress=False, noise=0.1)
    for col in ("overlap", "loss", "inner", "norm"):
        assert torch.allclose(both[col][:, 1], one[col][:, 0], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(both["overlap"][:, 0], both["overlap"][:, 1])


def test_simulate_complex_and_bad_inputs():
    log = simulate(4.0, dim=60, seeds=2, step=0.1, steps=2, field="complex", progress=False, seed=3)
    assert log["overlap"].shape == (3, 2) and bool((log["overlap"] > 0.5).all())
    with pytest.raises(ValueError, match="dim"):
        simulate(4.0, dim=1, seeds=2, step=0.1, steps=2)
    with pytest.raises(ValueError, match="duplicates"):
        simulate(4.0, dim=50, seeds=[1, 1], step=0.1, steps=2)
    with pytest.raises(ValueError, match="field"):
        simulate(4.0, dim=50, seeds=1, step=0.1, steps=2, field="quaternion")


# ------------------------------------------------------------------------------ overlay and compare

@pytest.fixture(scope="module")
def small_prediction():
    return dmft(4.0, step=0.1, l2=0.1, steps=8, samples=4000, replicates=2, seed=0, progress=False)


def _synthetic_log(pred, offsets, spread=0.002, seed=0):
    """A TrainingLog whose seed k follows the theory + offsets[k] (a stalled seed: negative offset)."""
    g = torch.Generator().manual_seed(seed)
    B = len(offsets)
    log = TrainingLog((B,), {"dim": 1000, "delta": 4.0})
    off = torch.tensor(offsets, dtype=torch.float64)
    for k, t in enumerate(pred["iteration"].tolist()):
        noise = spread * torch.randn(B, generator=g, dtype=torch.float64)
        frac = k / max(len(pred) - 1, 1)
        ov = (pred["overlap"][k] + noise + off * frac).clamp(max=1.0)
        re = pred["rel_error"][k] + noise - off * frac
        log.append(t, overlap=ov, rel_error=re, loss=pred["loss"][k] + noise, inner=pred["m"][k] + noise,
                   norm=pred["norm"][k] + noise)
    return log


def test_overlay_draws_one_theory_line_per_quantity(small_prediction):
    from matplotlib.figure import Figure

    log = simulate(4.0, dim=150, seeds=2, step=0.1, l2=0.1, steps=8, progress=False)
    fig = overlay(small_prediction, [log, _synthetic_log(small_prediction, [0.0, 0.0])],
                  quantities=("overlap", "rel_error", "loss", "m"))
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    for ax in fig.axes:
        assert len([ln for ln in ax.get_lines() if ln.get_gid() == "theory"]) == 1
        assert ax.containers  # the simulation error bars
    # fixed point asymptote (dashed) on the overlap panel
    assert any(ln.get_linestyle() == "--" for ln in fig.axes[0].get_lines())
    assert "δ = 4" in fig._suptitle.get_text() and "d = 150" in fig._suptitle.get_text()
    fig.savefig(__import__("io").BytesIO(), format="png")


def test_compare_agree_disagree_bimodal(small_prediction):
    pred = small_prediction
    ok = compare(pred, _synthetic_log(pred, [0.0] * 8), quantities=("overlap", "loss"))
    assert ok.verdict == "agree" and ok.success_rate == 1.0 and ok.failed == []
    assert ok.sup_gap["overlap"] < 5e-3 and ok.max_z["overlap"] < 4
    off = compare(pred, _synthetic_log(pred, [0.03] * 8), quantities=("overlap",))
    assert off.verdict == "disagree" and not off.agree["overlap"]
    bimodal = _synthetic_log(pred, [0.0] * 6 + [-0.6, -0.65])
    assert failed_seeds(bimodal).tolist() == [False] * 6 + [True, True]
    res = compare(pred, bimodal, quantities=("overlap",))
    assert res.verdict == "bimodal" and res.success_rate == pytest.approx(0.75) and res.failed == [6, 7]
    assert res.sup_gap_successful["overlap"] < res.sup_gap["overlap"]
    assert "bimodal" in str(res)
    sub = compare(pred, _synthetic_log(pred, [0.0] * 4), quantities=("overlap",), steps=3)
    assert sub.steps.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not in both"):
        compare(pred, _synthetic_log(pred, [0.0] * 4), steps=[50])


def test_overlay_with_one_seed_draws_no_error_bar(small_prediction):
    fig = overlay(small_prediction, _synthetic_log(small_prediction, [0.0]), quantities=("overlap",),
                  fixed_point=False)
    ax = fig.axes[0]
    (container,) = ax.containers
    assert container.has_yerr is False and len(container.lines[0].get_xdata()) == len(small_prediction)


def test_compare_needs_two_seeds_and_two_replicates(small_prediction):
    """One seed or one theory replicate: no standard error (NaN, tensors.mean_se), so no verdict on
    agreement — even for a large gap — while the gaps themselves are still reported."""
    one_seed = compare(small_prediction, _synthetic_log(small_prediction, [0.0]), quantities=("overlap",))
    assert one_seed.verdict == NOT_ENOUGH_DATA == "not enough data to judge"
    assert math.isnan(one_seed.max_z["overlap"]) and bool(torch.isnan(one_seed.se["overlap"]).all())
    assert math.isfinite(one_seed.sup_gap["overlap"]) and not one_seed.agree["overlap"]
    far = compare(small_prediction, _synthetic_log(small_prediction, [0.3]), quantities=("overlap",))
    assert far.verdict == NOT_ENOUGH_DATA and "no standard error" in str(far)
    single = dmft(4.0, step=0.1, l2=0.1, steps=8, samples=2000, replicates=1, seed=0, progress=False)
    res = compare(single, _synthetic_log(single, [0.0] * 8), quantities=("overlap", "loss"))
    assert res.verdict == NOT_ENOUGH_DATA and res.seeds == 8
    # a bimodal ensemble is still recognised: it is a statement about the seeds
    bimodal = compare(single, _synthetic_log(single, [0.0] * 6 + [-0.6, -0.65]), quantities=("overlap",))
    assert bimodal.verdict == "bimodal"


# ------------------------------------------------------------------------------ slow: against the theory

@pytest.mark.slow
@pytest.mark.parametrize("preprocessing,field", [("optimal", "real"), ("trimmed", "real"), ("optimal", "complex")])
def test_empirical_spectral_cosine_matches_theory(preprocessing, field):
    # steps=0: the log's only record is the spectral start (float32 halves the Lanczos cost)
    log = simulate(4.0, dim=1500, seeds=8, step=0.1, steps=0, preprocessing=preprocessing, field=field,
                   progress=False, seed=1, dtype=torch.float32)
    mean, se = (float(v) for v in mean_se(log["overlap"][0]))
    rho = spectral_overlap(4.0, preprocessing, field)
    assert abs(mean - rho) <= 3 * se, (mean, se, rho)


@pytest.mark.slow
@pytest.mark.parametrize("delta,preprocessing,l2", [(3.0, "optimal", 0.05), (6.0, "mm", 0.2)])
def test_simulation_matches_dmft(delta, preprocessing, l2):
    steps = 30
    pred = dmft(delta, step=0.1, l2=l2, steps=steps, preprocessing=preprocessing, samples=50_000, replicates=8,
                seed=0, progress=False)
    log = simulate(delta, dim=1500, seeds=8, step=0.1, l2=l2, steps=steps, preprocessing=preprocessing,
                   progress=False, seed=2, dtype=torch.float32)
    res = compare(pred, log, quantities=("overlap", "rel_error", "loss"), steps=steps)
    assert res.verdict != "bimodal" and res.success_rate == 1.0
    gap, se = res.gap["overlap"], res.se["overlap"]
    assert bool((gap.abs() <= torch.clamp(3 * se, min=5e-3)).all()), str(res)
    assert res.max_z["overlap"] <= 4, str(res)
    assert res.agree["overlap"]
