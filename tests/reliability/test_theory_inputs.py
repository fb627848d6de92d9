"""Issue 13 (robustness) in phasetorch.theory: argument validation, bounded cost at huge noise,
clear errors for broken prediction files, atomic prediction writes, and compare refusing logs the
theory does not describe."""

import json
import math
import re
import time

import pytest
import torch

from phasetorch.init import preprocessing as pp
from phasetorch.logs import TrainingLog
from phasetorch.physics import GaussianMeasurement
from phasetorch.solve import reconstruct
from phasetorch.theory import (Prediction, compare, dmft, fixed_point, simulate, spectral_limits, spectral_overlap,
                               spectral_threshold)
from phasetorch.theory.compare import check_describes, mismatches
from phasetorch.theory.quadrature import gauss_legendre
from phasetorch.theory.solver import solve_dmft
from phasetorch.theory.spectral import signal_law

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------ validation

DMFT_BASE = dict(step=0.1, steps=2, samples=500, replicates=2, progress=False)


@pytest.mark.parametrize("kwargs,name", [
    (dict(l2=-1.0), "l2"), (dict(l2=NAN), "l2"), (dict(steps=2.5), "steps"), (dict(steps=-1), "steps"),
    (dict(steps=True), "steps"), (dict(steps="3"), "steps"), (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=-5), "chunk_size"), (dict(chunk_size=100.0), "chunk_size"), (dict(samples=1), "samples"),
    (dict(samples=1000.0), "samples"), (dict(replicates=0), "replicates"), (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"), (dict(noise=-0.1), "noise"), (dict(noise=INF), "noise"), (dict(step=0.0), "step"),
    (dict(step=INF), "step"), (dict(step="0.1"), "step"), (dict(threads=0), "threads"),
    (dict(threads=1.5), "threads"), (dict(power_steps=2.5), "power_steps"), (dict(power_shift=NAN), "power_shift"),
    (dict(init="warm", init_overlap=1.5), "init_overlap"), (dict(init="warm", init_overlap=NAN), "init_overlap"),
])
def test_dmft_refuses_bad_numbers_before_any_work(kwargs, name):
    args = dict(DMFT_BASE, **kwargs)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=name):
        dmft(4.0, **args)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("delta", [0.0, -1.0, NAN, INF, "4", True])
def test_dmft_refuses_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        dmft(delta, **DMFT_BASE)


@pytest.mark.parametrize("kwargs,name", [
    (dict(init_norm=0.0), "init_norm"), (dict(init_norm=NAN), "init_norm"), (dict(seeds=[1, 2.5]), "seeds"),
    (dict(seeds=[]), "seeds"), (dict(seeds=3), "seeds"), (dict(init_overlap="half"), "init_overlap"),
])
def test_solve_dmft_refuses_bad_numbers(kwargs, name):
    from phasetorch.theory.model import linear_regression
    args = dict(steps=2, model=linear_regression(), init="warm", init_overlap=0.5, step=0.1, samples=200,
                progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        solve_dmft(2.0, **args)


def test_valid_integral_like_numbers_are_still_accepted():
    """Ints where floats are expected, and 0-dim integer tensors where ints are expected, work."""
    a = dmft(4, step=1 / 10, l2=0, steps=torch.tensor(2), samples=400, replicates=2, chunk_size=100,
             progress=False)
    b = dmft(4.0, step=0.1, l2=0.0, steps=2, samples=400, replicates=2, chunk_size=100, progress=False)
    assert torch.equal(a["overlap"], b["overlap"])


@pytest.mark.parametrize("kwargs,name", [
    (dict(z_panels=0), "z_panels"), (dict(z_panels=2.5), "z_panels"), (dict(nodes=0), "nodes"),
    (dict(noise_nodes=0), "noise_nodes"), (dict(max_iter=0), "max_iter"), (dict(max_iter=10.0), "max_iter"),
    (dict(memory=-1), "memory"), (dict(damping=0.0), "damping"), (dict(damping=1.5), "damping"),
    (dict(tol=NAN), "tol"), (dict(tol=-1.0), "tol"), (dict(start=NAN), "start"), (dict(l2=INF), "l2"),
    (dict(l2=-1.0), "l2"), (dict(noise=-1.0), "noise"), (dict(noise="0"), "noise"),
])
def test_fixed_point_refuses_bad_numbers(kwargs, name):
    args = dict(l2=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fixed_point(4.0, **args)
    with pytest.raises(ValueError, match="delta"):
        fixed_point(NAN, l2=0.1)


@pytest.mark.parametrize("kwargs,name", [
    (dict(dim=2.5), "dim"), (dict(dim=1), "dim"), (dict(steps=2.5), "steps"), (dict(steps=-1), "steps"),
    (dict(seeds=0), "seeds"), (dict(seeds=2.5), "seeds"), (dict(seeds=[1, 2.5]), "seeds"),
    (dict(seeds="ab"), "seeds"),
    (dict(step=0.0), "step"), (dict(step=NAN), "step"), (dict(l2=-1.0), "l2"), (dict(noise=INF), "noise"),
    (dict(seed=-1), "seed"), (dict(step=None, schedule="fast"), "schedule"),
    (dict(schedule=lambda t: 0.1), "either step"),
])
def test_simulate_refuses_bad_numbers_before_building_matrices(kwargs, name):
    args = dict(dim=40, seeds=2, step=0.1, steps=2, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        simulate(4.0, **args)
    with pytest.raises(ValueError, match="delta"):
        simulate(0.0, dim=40, seeds=2, step=0.1, steps=2)


def test_spectral_functions_refuse_bad_numbers():
    for bad in (0.0, -1.0, NAN, INF, "4", True):
        with pytest.raises(ValueError, match="delta"):
            spectral_overlap(bad)
    with pytest.raises(ValueError, match="delta"):
        spectral_overlap([4.0, -1.0])
    with pytest.raises(ValueError, match="delta"):
        spectral_overlap(torch.tensor([4.0, NAN]))
    for bad in (-1.0, NAN, INF, "0.1"):
        with pytest.raises(ValueError, match="noise"):
            spectral_overlap(4.0, noise=bad)
        with pytest.raises(ValueError, match="noise"):
            spectral_threshold(noise=bad)
        with pytest.raises(ValueError, match="noise"):
            spectral_limits(4.0, noise=bad)
    with pytest.raises(ValueError, match="delta_min"):
        spectral_threshold(delta_min=0.0)
    with pytest.raises(ValueError, match="delta_max"):
        spectral_threshold(delta_min=2.0, delta_max=1.0)
    with pytest.raises(ValueError, match="delta_max"):
        spectral_threshold(delta_max=INF)


# ------------------------------------------------------------------------------ bounded cost at huge noise

def _product_rule(field, sigma, brk, h):
    """E h(|S|², Y), Y = |S|² + σε, by an independent product rule: the noiseless law of |S|² times a
    composite Gauss–Legendre rule in ε split (and graded) where Y crosses the break ``brk`` of h."""
    law = signal_law(field, 0.0, (brk,))
    s2 = law.s2[:, None]
    fixed = torch.linspace(-12, 12, 41, dtype=torch.float64)
    cut = (brk - law.s2[:, None]) / sigma
    cuts = torch.cat([cut + d / sigma for d in (-3, -1, -0.3, -0.1, -0.03, 0.0, 0.03)], 1).clamp(-12, 12)
    ends, _ = torch.sort(torch.cat([fixed.expand(len(law.s2), -1), cuts], 1), 1)
    x, w = gauss_legendre(20)
    lo, hi = ends[:, :-1, None], ends[:, 1:, None]
    e = (lo + hi) / 2 + (hi - lo) / 2 * x
    we = (hi - lo) / 2 * w * torch.exp(-0.5 * e * e) / math.sqrt(2 * math.pi)
    y = s2[:, :, None] + sigma * e
    return float((law.w[:, None, None] * we * h(s2[:, :, None].expand_as(y), y)).sum())


@pytest.mark.parametrize("field", ["real", "complex"])
def test_noisy_law_is_accurate_at_small_and_huge_noise(field):
    """The Lu–Li expectation E[(|S|² − 1) τ(Y)] of trimmed T (a jump at 9), τ = T/(λ − T), λ = 9.5:
    against an independent product rule for σ ≤ 30, and at σ = 10⁶ against its σ → ∞ expansion
    E[(|S|²−1)|S|²]·E τ'(σε) with E τ'(σε) ≈ (∫ τ' dy)/(σ√(2π)) = (λ/(λ − 9) − 9/(λ − 9))/(σ√(2π))
    (the rise of y/(λ − y) from −1 to 18 on (−∞, 9), minus the jump of 18 at 9)."""
    T = pp.elementwise("trimmed")
    lam = 9.5
    h = lambda s2, y: (s2 - 1) * T(y) / (lam - T(y))  # noqa: E731
    for sigma in (0.3, 3.0, 30.0):
        law = signal_law(field, sigma, (9.0,))
        assert law.mean(h(law.s2, law.y)) == pytest.approx(_product_rule(field, sigma, 9.0, h), rel=1e-10)
    sigma = 1e6
    law = signal_law(field, sigma, (9.0,))
    var_term = 2.0 if field == "real" else 1.0           # E|S|⁴ − E|S|²
    limit = var_term * (lam / (lam - 9.0) - 9.0 / (lam - 9.0)) / (sigma * math.sqrt(2 * math.pi))
    assert law.mean(h(law.s2, law.y)) == pytest.approx(limit, rel=1e-3)
    m4 = 3.0 if field == "real" else 2.0
    assert law.mean(law.y) == pytest.approx(1.0, abs=1e-9)
    assert law.mean(law.s2 * law.y) == pytest.approx(m4, rel=1e-9)
    assert law.mean(law.y ** 2) == pytest.approx(m4 + sigma ** 2, rel=1e-12)


def test_huge_noise_is_fast_bounded_and_tends_to_zero_overlap():
    """spectral_overlap(4, noise=1e6) used to allocate ∝ σ (killed at 24 GB); now the node count is
    bounded and the answer is the σ → ∞ limit: Y carries no information about S, so ρ = 0."""
    t0 = time.perf_counter()
    rho = spectral_overlap(4.0, noise=1e6)
    assert time.perf_counter() - t0 < 2.0
    assert rho == 0.0
    small = signal_law("real", 0.3).y.numel()
    for sigma in (1e2, 1e4, 1e6, 1e12):
        assert signal_law("real", sigma).y.numel() <= small
        assert signal_law("complex", sigma).y.numel() <= small
    for pre in ("optimal", "mm", "trimmed", "clipped", "orthogonality"):
        sigmas = (0.0, 1e6) if pre == "orthogonality" else (0.0, 0.3, 2.0, 1e6)   # its quantile search is slow
        t0 = time.perf_counter()
        curve = [float(spectral_overlap(4.0, pre, noise=s)) for s in sigmas]
        assert time.perf_counter() - t0 < 5.0
        assert all(b <= a + 1e-12 for a, b in zip(curve, curve[1:])), (pre, curve)
        assert curve[0] > 0.5 and curve[-1] == 0.0, (pre, curve)
    assert spectral_overlap(4.0, "clipped", "complex", noise=1e6) == 0.0
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="no weak-recovery threshold"):
        spectral_threshold(noise=1e6)
    assert time.perf_counter() - t0 < 5.0


# ------------------------------------------------------------------------------ prediction files

@pytest.fixture(scope="module")
def small_prediction():
    return dmft(4.0, step=0.1, l2=0.1, steps=3, samples=2000, replicates=2, seed=0, progress=False)


def test_prediction_from_json_names_the_file_and_the_problem(small_prediction, tmp_path):
    good = tmp_path / "good.json"
    small_prediction.to_json(good)
    text = good.read_text()
    assert Prediction.from_json(good)["overlap"].shape == (4,)
    d = json.loads(text)
    cases = {
        "empty.json": ("", "empty"),
        "blank.json": ("  \n", "empty"),
        "truncated.json": (text[: len(text) // 2], r"not valid JSON \(truncated\?\)"),
        "list.json": ("[1, 2, 3]", "not a phasetorch Prediction"),
        "other.json": ('{"a": 1}', "not a phasetorch Prediction"),
        "nokernels.json": (json.dumps({k: v for k, v in d.items() if k != "kernels"}), "missing key 'kernels'"),
        "ragged.json": (json.dumps(dict(d, per_replicate={"m": [[1.0, 2.0], [3.0]]})), "rectangular"),
        "short.json": (json.dumps(dict(d, step=d["step"][:2])), "iterations"),
    }
    for name, (content, why) in cases.items():
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(ValueError, match=why) as err:
            Prediction.from_json(p)
        assert name in str(err.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        Prediction.from_json(tmp_path / "folder")
    with pytest.raises(ValueError, match="does not exist"):
        Prediction.from_json(tmp_path / "missing.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="binary.json"):
        Prediction.from_json(tmp_path / "binary.json")


def test_prediction_to_json_is_atomic(small_prediction, tmp_path, monkeypatch):
    path = tmp_path / "prediction.json"
    small_prediction.to_json(path)
    before = path.read_bytes()

    def dies_mid_write(obj, fh, **kw):
        fh.write('{"format": "phasetorch.theory.Prediction/1", "iteration": [0, 1')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", dies_mid_write)
    with pytest.raises(OSError, match="disk full"):
        small_prediction.to_json(path)
    assert path.read_bytes() == before                       # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prediction.json"]     # no temporary left
    with pytest.raises(OSError, match="disk full"):
        small_prediction.to_json(tmp_path / "new.json")
    assert not (tmp_path / "new.json").exists()               # no 0-byte or partial file either
    monkeypatch.undo()
    assert torch.equal(Prediction.from_json(path)["overlap"], small_prediction["overlap"])


# ------------------------------------------------------------------------------ compare on the wrong data

def _matched_config(**changes):
    """The config simulate() writes for the small prediction's settings (δ = 4, μ = 0.1, λ = 0.1)."""
    cfg = {"algorithm": "wf", "operator": {"type": "GaussianEnsemble", "n": 100, "m": 400, "complex": False},
           "model": None, "delta": 4.0, "dim": 100, "n": 100, "init": "tensor", "preprocessing": "optimal",
           "step": 0.1, "step_rule": 0.1, "l2": 0.1, "noise": 0.0, "field": "real"}
    cfg.update(changes)
    return cfg


def _log_following(pred, config, seeds=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    log = TrainingLog((seeds,), config)
    for k, t in enumerate(pred["iteration"].tolist()):
        jitter = 1e-3 * torch.randn(seeds, generator=g, dtype=torch.float64)
        log.append(t, overlap=pred["overlap"][k] + jitter, rel_error=pred["rel_error"][k] + jitter,
                   loss=pred["loss"][k] + jitter, inner=pred["m"][k] + jitter, norm=pred["norm"][k] + jitter)
    return log


@pytest.mark.parametrize("changes,why", [
    (dict(operator={"type": "CodedDiffraction", "complex": True}), "Gaussian"),
    (dict(operator={"type": "GaussianEnsemble", "complex": True}, field="complex"), "real field"),
    (dict(field="complex"), "but their operator is real"),
    (dict(algorithm="raf"), "algorithm 'raf'"),
    (dict(delta=3.0), "δ = 3 in the logs, 4 in the prediction"),
    (dict(step=0.05, step_rule=0.05), "constant step μ = 0.1"),
    (dict(step=None, step_rule={"rule": "wf_ramp", "tau0": 330.0, "mu_max": 0.2}), "constant step"),
    (dict(l2=0.0), "l2"),
    (dict(preprocessing="mm"), "preprocessing 'mm'"),
    (dict(noise=0.2), "noise σ = 0.2"),
    (dict(noise=None, model={"type": "MeasurementModel", "link": {"name": "intensity", "sigma": 0.0},
                             "noise": {"type": "PoissonNoise", "photons": 100.0}}), "PoissonNoise"),
    (dict(noise=None, model={"type": "MeasurementModel", "link": {"name": "amplitude", "sigma": 0.0},
                             "noise": None}), "link 'amplitude'"),
    (dict(noise=None, model={"type": "MeasurementModel", "link": {"name": "noisy_intensity", "sigma": 0.3},
                             "noise": None}), "noise σ = 0.3"),
    (dict(init="random", preprocessing=None), "init='random'"),
])
def test_compare_refuses_logs_the_theory_does_not_describe(small_prediction, changes, why):
    pred = small_prediction
    bad = _log_following(pred, _matched_config(**changes))
    with pytest.raises(ValueError, match="does not describe") as err:
        compare(pred, bad)
    assert why in str(err.value)
    with pytest.raises(ValueError, match=re.escape(why)):
        check_describes(pred, bad)
    with pytest.raises(ValueError, match="log 1: "):          # a list names the offending log
        check_describes(pred, [_log_following(pred, _matched_config()), bad])
    # an explicit opt-out still compares
    assert compare(pred, bad, check=False).verdict in ("agree", "disagree", "bimodal")


def test_matching_logs_pass_and_params_alone_can_be_checked(small_prediction):
    pred = small_prediction
    ok = _log_following(pred, _matched_config(delta=4.0 + 0.4 / 100))     # m = round(δn) rounding is allowed
    assert mismatches(pred, ok.config) == []
    assert compare(pred, ok).verdict == "agree"
    check_describes(pred.params, ok)                                       # a params dict, before solving
    check_describes({"delta": 4.0, "step": 0.1, "l2": 0.1, "preprocessing": "optimal", "noise": 0.0}, ok)
    ramp = _log_following(pred, _matched_config(step=None, step_rule={"rule": "wf_ramp", "tau0": 330.0,
                                                                        "mu_max": 0.2}))
    check_describes({"delta": 4.0, "step": None, "l2": 0.1}, ramp)        # dmft's default: the wf ramp
    with pytest.raises(ValueError, match="ramp"):
        check_describes({"delta": 4.0, "step": None, "l2": 0.1}, ok)
    with pytest.raises(ValueError, match="Prediction"):
        check_describes(42, ok)


def test_compare_refuses_real_logs_with_other_settings(small_prediction):
    """The configs that simulate and reconstruct really write are read correctly."""
    pred = small_prediction
    same = simulate(4.0, dim=40, seeds=2, step=0.1, l2=0.1, steps=3, progress=False)
    assert mismatches(pred, same.config) == []
    other = simulate(4.0, dim=40, seeds=2, step=0.1, l2=0.3, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"l2 \(ridge λ\) = 0.3 in the logs, 0.1 in the prediction"):
        compare(pred, other)
    op = GaussianMeasurement(40, 160, complex=False, seed=0, dtype=torch.float64)
    x = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x / x.norm()
    raf = reconstruct(op, op(x), algorithm="raf", max_iter=3, x_true=x, progress=False).log
    with pytest.raises(ValueError, match="algorithm 'raf'"):
        compare(pred, raf)
    wf = reconstruct(op, op(x), algorithm="wf", preprocessing="optimal", step=0.1, l2=0.1, max_iter=3, x_true=x,
                     progress=False).log
    assert mismatches(pred, wf.config) == []
