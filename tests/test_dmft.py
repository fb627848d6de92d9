"""Tests of the DMFT solver (phasetorch.theory.solver; public entry point phasetorch.theory.dmft).

Reference values: theory.md §7 case A (δ = 4, ``optimal``, λ = 0.1, η = 0.1) — a DMFT computed
independently (2 seeds × N = 2e5) and finite-d simulations; the long-time fixed point of §5.
Tolerances are Monte-Carlo standard errors over replicates (each replicate an independent
population), so every test can fail.
"""

import json
import math
import re
import warnings

import pytest
import torch

from phasetorch.theory.model import linear_regression
from phasetorch.theory.solver import dmft, solve_dmft
from phasetorch.theory.prediction import Prediction

DELTA_A, L2_A, STEP_A = 4.0, 0.1, 0.1
# theory.md §7, case A: t → (m, q, loss) of the reference DMFT
TABLE_A = {1: (0.9199, 0.8925, 0.07812), 2: (0.9311, 0.9046, 0.06726), 5: (0.9412, 0.9092, 0.05594),
           10: (0.9480, 0.9122, 0.05090), 20: (0.9520, 0.9133, 0.04856)}
FIXED_POINT_A = (0.95286, 0.91202, 0.04771)       # (m∞, q∞, loss∞), theory.md §5/§7


def _limits_A():
    from phasetorch.theory.spectral import spectral_limits

    return spectral_limits(DELTA_A, "optimal")


def _case_a(steps, samples, replicates, seed=0, **kw):
    lim = _limits_A()
    return solve_dmft(DELTA_A, steps=steps, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, step=STEP_A, l2=L2_A,
                      samples=samples, replicates=replicates, seed=seed, progress=False, **kw)


def _close(value, se, ref, k=3.0, slack=1e-3):
    return abs(value - ref) <= k * se + slack


# ----------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("preprocessing,noise", [("optimal", 0.0), ("mm", 0.0), ("optimal", 0.3)])
def test_spectral_anchors(preprocessing, noise):
    """m(0) = c₀ρ, q(0) = c₀², and from the Monte-Carlo population: ρ² + δE[τ²P²] = 1,
    δE[(S²−1)τ] = 1 (the λ* equation), E[T(1+τ)²P²] = v̂ᵀDv̂ = λ₁(D) (Lu–Li eigenvalue limit)."""
    from phasetorch.theory.spectral import spectral_limits

    lim = spectral_limits(DELTA_A, preprocessing, noise=noise)
    p = dmft(DELTA_A, step=STEP_A, l2=L2_A, steps=0, preprocessing=preprocessing, noise=noise, samples=100_000,
             replicates=8, seed=1, progress=False)
    assert p["m"][0].item() == pytest.approx(lim.rho, abs=1e-12)
    assert p["q"][0].item() == pytest.approx(1.0, abs=1e-12)
    v, se = p.checks["v_norm"]
    assert se > 0 and abs(v - 1) <= 3 * se + 1e-4, (v, se)
    tilt, se = p.checks["tilt_equation"]
    assert abs(tilt - 1) <= 3 * se + 1e-4, (tilt, se)
    ray, se = p.checks["rayleigh"]
    assert abs(ray - lim.eigenvalue) <= 3 * se + 1e-4, (ray, se, lim.eigenvalue)
    if preprocessing == "optimal" and noise == 0:
        assert abs(lim.eigenvalue - 1 / DELTA_A) < 5e-3       # optimal T: λ₁(D) → 1/δ
        assert _close(p["loss"][0].item(), p["loss_se"][0].item(), 0.1321, slack=5e-4)


def test_anchor_detects_wrong_lam_star():
    """The anchors are sensitive: a wrong λ* violates the equation that defines it."""
    lim = _limits_A()
    p = solve_dmft(DELTA_A, steps=0, lam_star=lim.lam_star * 1.5, rho=lim.rho, T=lim.T, step=0.1,
                   samples=50_000, replicates=4, seed=3, progress=False)
    tilt, se = p.checks["tilt_equation"]
    assert abs(tilt - 1) > 10 * se


# ----------------------------------------------------------------------------------- closed forms
def _mp_moments(delta, n=4000):
    """Nodes/weights of the Marchenko–Pastur law of AᵀA/n (A n×d Gaussian, d/n = 1/δ < 1).

    λ(θ) = (a+b)/2 + (b−a)/2 cos θ turns ∫ h(λ) √((b−λ)(λ−a))/(2πγλ) dλ into a smooth periodic
    integral in θ; the midpoint rule is spectrally accurate.
    """
    g = 1.0 / delta
    a, b = (1 - math.sqrt(g)) ** 2, (1 + math.sqrt(g)) ** 2
    th = (torch.arange(n, dtype=torch.float64) + 0.5) * math.pi / n
    lam = (a + b) / 2 + (b - a) / 2 * torch.cos(th)
    w = ((b - a) / 2) ** 2 * torch.sin(th) ** 2 / (2 * math.pi * g * lam) * (math.pi / n)
    return lam, w


def _linear_regression_exact(delta, eta, l2, sigma, rho0, c, steps):
    r"""Exact m(t), C(t,s), loss(t) of GD on ridge least squares with Gaussian data (n, d → ∞).

    x_t = p_t(Σ̂)x₀ + h_t(Σ̂)(Σ̂x* + σAᵀε/n), p_t = (1 − η(λ+λ_r))^t, h_t = (1 − p_t)/(λ + λ_r),
    Σ̂ = AᵀA/n ~ Marchenko–Pastur(1/δ), x₀ = c(ρ₀x* + √(1−ρ₀²)w) with w independent.
    """
    lam, w = _mp_moments(delta)
    E = lambda f: float((w * f).sum())  # noqa: E731
    assert abs(E(torch.ones_like(lam)) - 1) < 1e-10 and abs(E(lam) - 1) < 1e-10
    assert abs(E(lam ** 2) - (1 + 1 / delta)) < 1e-10
    p = [(1 - eta * (lam + l2)) ** t for t in range(steps + 2)]
    h = [(1 - pt) / (lam + l2) for pt in p]
    m = [c * rho0 * E(p[t]) + E(h[t] * lam) for t in range(steps + 2)]
    C = torch.zeros(steps + 2, steps + 2, dtype=torch.float64)
    for t in range(steps + 2):
        for s in range(steps + 2):
            C[t, s] = (c * c * E(p[t] * p[s]) + c * rho0 * E((p[t] * h[s] + p[s] * h[t]) * lam)
                       + E(h[t] * h[s] * lam ** 2) + sigma ** 2 / delta * E(lam * h[t] * h[s]))
    loss = []
    for t in range(steps + 1):
        u2 = c * c * E(lam * p[t] ** 2) + 2 * c * rho0 * E(lam * p[t] * (lam * h[t] - 1)) + E(lam * (lam * h[t] - 1) ** 2)
        noise = sigma ** 2 * (E((lam * h[t]) ** 2) / delta - 2 * E(lam * h[t]) / delta + 1)
        loss.append(0.5 * (u2 + noise) + 0.5 * l2 * float(C[t, t]))
    return torch.tensor(m, dtype=torch.float64), C, torch.tensor(loss, dtype=torch.float64)


def test_linear_regression_matches_marchenko_pastur():
    """Square loss, data-independent warm start: the Monte-Carlo DMFT = the exact spectral formula."""
    delta, eta, l2, sigma, rho0, c, steps = 2.0, 0.3, 0.05, 0.5, 0.3, 1.2, 12
    p = solve_dmft(delta, steps=steps, model=linear_regression(sigma), init="warm", init_overlap=rho0, init_norm=c,
                   step=eta * c * c, l2=l2, samples=20_000, replicates=6, seed=5, progress=False, dtype=torch.float64)
    m_ex, C_ex, loss_ex = _linear_regression_exact(delta, eta, l2, sigma, rho0, c, steps)
    m, q, q_se = p["m"], p["q"], p["q_se"]
    assert (q_se[1:] > 0).all()
    # g' = 1 and ∂_y g = −1: the pathwise μ and all responses are sample-independent, so m is exact
    assert torch.allclose(m, m_ex[:steps + 1], atol=1e-10), (m, m_ex)
    assert ((q - torch.diagonal(C_ex)[:steps + 1]).abs() <= 4 * q_se + 2e-4).all(), (q, torch.diagonal(C_ex))
    assert ((p["loss"] - loss_ex).abs() <= 4 * p["loss_se"] + 2e-4).all()
    # whole two-time kernel, and the gradient norm against ‖x_t − x_{t+1}‖/η of the exact kernel
    assert torch.allclose(p["C"], C_ex[:steps + 1, :steps + 1], atol=3e-3)
    gn_ex = (torch.diagonal(C_ex)[1:] + torch.diagonal(C_ex)[:-1] - 2 * torch.diagonal(C_ex, 1)).clamp(min=0).sqrt() / eta
    assert torch.allclose(p["grad_norm"], gn_ex[:steps + 1], rtol=0.02, atol=2e-3)
    # square loss: the responses do not depend on the samples (g' = 1), so R_g is exact
    assert torch.allclose(torch.diagonal(p["R_g"]), torch.ones(steps + 1, dtype=torch.float64))
    # the Stein estimator of μ (noisier here) agrees within its Monte-Carlo error
    st = solve_dmft(delta, steps=steps, model=linear_regression(sigma), init="warm", init_overlap=rho0, init_norm=c,
                    step=eta * c * c, l2=l2, samples=20_000, replicates=6, seed=6, progress=False, mu="stein")
    assert ((st["m"] - m_ex[:steps + 1]).abs() <= 4 * st["m_se"] + 2e-4).all(), (st["m"], m_ex)
    assert ((st["q"] - torch.diagonal(C_ex)[:steps + 1]).abs() <= 4 * st["q_se"] + 2e-4).all()


def test_warm_start_zero_overlap_noiseless_regression_recovers():
    """Noiseless least squares with δ > 1 converges to x* from a random start (m, q → 1)."""
    p = solve_dmft(3.0, steps=60, model=linear_regression(0.0), init="warm", init_overlap=0.0, step=0.4,
                   samples=5_000, replicates=2, seed=1, progress=False)
    assert p["m"][0].item() == 0.0
    assert abs(p["m"][-1].item() - 1) < 1e-3 and abs(p["q"][-1].item() - 1) < 2e-3


# ----------------------------------------------------------------------------------- internal consistency
def test_sample_side_matches_parameter_side():
    """Two routes to the same numbers. Exact (one population): ‖∇L‖ from the gradient's coefficients
    equals √(C(t+1,t+1) − 2C(t+1,t) + C(t,t))/η. Up to Monte-Carlo error: the population averages
    ⟨∇L, x*⟩ = E[S g] + λm and ⟨∇L, x_t⟩ = E[r g] + λq equal the parameter-side (m(t) − m(t+1))/η and
    (C(t,t) − C(t,t+1))/η — not an identity of the solver with the pathwise μ."""
    one = _case_a(steps=8, samples=20_000, replicates=1, seed=11, mu="pathwise")
    C = one["C"]
    gn = (torch.diagonal(C)[1:] - 2 * torch.diagonal(C, 1) + torch.diagonal(C)[:-1]).clamp(min=0).sqrt() / STEP_A
    assert torch.allclose(one["grad_norm"][:-1], gn, rtol=1e-8, atol=1e-10)

    p = _case_a(steps=8, samples=40_000, replicates=8, seed=12, mu="pathwise")
    pr, eta = p.per_replicate, STEP_A
    q, m, g2 = pr["q"], pr["m"], pr["grad_norm"] ** 2
    c_next = (q[:, :-1] + q[:, 1:] - eta ** 2 * g2[:, :-1]) / 2                # C(t, t+1) per replicate
    for diff in (pr["grad_iterate"][:, :-1] - (q[:, :-1] - c_next) / eta,
                 pr["grad_signal"][:, :-1] - (m[:, :-1] - m[:, 1:]) / eta):
        mean, se = diff.mean(0), diff.std(0) / math.sqrt(diff.shape[0])
        assert (se > 0).all() and (mean.abs() <= 4 * se + 1e-4).all(), (mean, se)


def test_pathwise_and_stein_mu_agree():
    lim = _limits_A()
    kw = dict(steps=5, step=STEP_A, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=40_000,
              replicates=4, progress=False)
    a = solve_dmft(DELTA_A, mu="stein", seed=1, **kw)
    b = solve_dmft(DELTA_A, mu="pathwise", seed=2, **kw)
    se = (a["m_se"] ** 2 + b["m_se"] ** 2).sqrt()
    assert ((a["m"] - b["m"]).abs() <= 4 * se + 3e-4).all()
    se_mu = 0.01 * a["mu"].abs()
    assert ((a["mu"] - b["mu"]).abs() <= se_mu).all(), (a["mu"], b["mu"])


def test_batch_of_replicates_equals_single_runs():
    lim = _limits_A()
    kw = dict(steps=6, step=STEP_A, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=3000,
              progress=False)
    both = solve_dmft(DELTA_A, seeds=[17, 29], **kw)
    one = solve_dmft(DELTA_A, seeds=[29], **kw)
    for name in ("m", "q", "loss", "grad_norm"):
        assert torch.allclose(both.per_replicate[name][1], one.per_replicate[name][0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both.per_replicate["q"][0], both.per_replicate["q"][1])
    again = solve_dmft(DELTA_A, seeds=[17, 29], **kw)
    assert torch.equal(again.per_replicate["m"], both.per_replicate["m"])      # bit-reproducible on CPU


def test_chunking_does_not_change_results():
    lim = _limits_A()
    kw = dict(steps=12, step=STEP_A, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=10_001,
              replicates=2, seed=3, progress=False, mu="pathwise")
    a = solve_dmft(DELTA_A, chunk_size=3000, **kw)          # uneven chunks
    b = solve_dmft(DELTA_A, chunk_size=10_001, **kw)
    assert torch.allclose(a["m"], b["m"], atol=1e-6) and torch.allclose(a["R_g"], b["R_g"], atol=1e-5)


def test_schedule_equals_constant_step_and_step_column():
    lim = _limits_A()
    kw = dict(steps=4, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=3000, replicates=2,
              seed=4, progress=False)
    a = solve_dmft(DELTA_A, step=0.1, **kw)
    b = solve_dmft(DELTA_A, schedule=lambda t: 0.1, **kw)
    assert torch.allclose(a["m"], b["m"]) and torch.allclose(a["q"], b["q"])
    assert a["step"].tolist() == [0.0, 0.1, 0.1, 0.1, 0.1]          # α_t that produced x_t (TrainingLog)
    ramp = solve_dmft(DELTA_A, schedule=lambda t: 0.02 * t, **kw)    # t = 1, 2, … : index of the new iterate
    assert ramp["step"].tolist() == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])


def test_float64_matches_float32():
    lim = _limits_A()
    kw = dict(steps=5, step=STEP_A, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=5000,
              replicates=2, seed=8, progress=False)
    a = solve_dmft(DELTA_A, dtype=torch.float32, **kw)
    b = solve_dmft(DELTA_A, dtype=torch.float64, **kw)
    assert torch.allclose(a["m"], b["m"], atol=2e-5) and torch.allclose(a["q"], b["q"], atol=5e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    lim = _limits_A()
    kw = dict(steps=10, step=STEP_A, l2=L2_A, lam_star=lim.lam_star, rho=lim.rho, T=lim.T, samples=20_000,
              replicates=2, seed=8, progress=False)
    a = solve_dmft(DELTA_A, **kw)
    b = solve_dmft(DELTA_A, device="cuda", **kw)
    assert torch.allclose(a["m"], b["m"], atol=1e-4) and torch.allclose(a["q"], b["q"], atol=2e-4)


# ----------------------------------------------------------------------------------- public API
def test_dmft_public_api_and_prediction(tmp_path):
    threads = torch.get_num_threads()
    p = dmft(DELTA_A, step=STEP_A, l2=L2_A, steps=3, samples=4000, replicates=3, seed=2, progress=False, threads=2)
    assert torch.get_num_threads() == threads                  # the solve's thread setting is restored
    assert isinstance(p, Prediction) and len(p) == 4
    for c in ("iteration", "loss", "grad_norm", "step", "norm", "rel_error", "overlap", "inner"):
        assert c in p.columns and p[c].shape == (4,)
    assert torch.equal(p["inner"], p["m"]) and torch.allclose(p["norm"], p.per_replicate["q"].sqrt().mean(0))
    q, m = p.per_replicate["q"], p.per_replicate["m"]
    assert torch.allclose(p["overlap"], (m / q.sqrt()).mean(0))
    assert torch.allclose(p["rel_error"], (q - 2 * m + 1).sqrt().mean(0))
    assert p.params["preprocessing"] == "optimal" and p.params["replicates"] == 3
    assert p.params["rho"] == pytest.approx(math.sqrt(0.92449), abs=1e-4)
    assert p.params["lam_star"] > 13
    assert p["C"].shape == (4, 4) and p["C_g"].shape == (5, 5)
    assert p.m_se.shape == (4,) and p.overlap[0] == pytest.approx(p.params["rho"], abs=1e-9)
    assert p.delta == DELTA_A and p.l2 == L2_A and p.rho == p.params["rho"] and p.samples == 4000
    with pytest.raises(KeyError):
        p["nonsense"]
    f = tmp_path / "pred.json"
    p.to_json(f)
    json.loads(f.read_text())
    back = Prediction.from_json(f)
    for c in ("m", "q", "loss", "grad_norm", "overlap", "overlap_se", "step", "iteration", "C", "R_g"):
        assert torch.allclose(back[c].to(torch.float64), p[c].to(torch.float64), equal_nan=True)
    assert back.params == json.loads(json.dumps(p.params)) and back.checks == p.checks
    one = dmft(DELTA_A, step=STEP_A, steps=1, samples=2000, replicates=1, progress=False)
    assert math.isnan(one["m_se"][1].item())


def test_guard_rails():
    with pytest.raises(ValueError, match="field"):           # the complex field exists now (issue 15)
        dmft(4.0, step=0.1, steps=2, field="quaternion")
    with pytest.raises(ValueError, match="identity"):
        dmft(4.0, step=0.1, steps=2, preprocessing="identity")
    with pytest.raises(ValueError, match="threshold"):
        dmft(0.4, step=0.1, steps=2, preprocessing="optimal")
    with pytest.raises(ValueError):
        dmft(4.0, step=0.1, steps=2, preprocessing="weighted")
    with pytest.raises(ValueError, match="either step"):
        dmft(4.0, step=0.1, schedule=lambda t: 0.1, steps=2)
    with pytest.raises(ValueError, match="step"):
        dmft(4.0, step=-0.1, steps=2)
    with pytest.raises(ValueError, match="init_overlap"):
        solve_dmft(2.0, steps=2, model=linear_regression(), init="warm", step=0.1)
    with pytest.raises(ValueError, match="warm"):
        solve_dmft(2.0, steps=2, model=linear_regression(), init="power", T=lambda y: y, step=0.1)


def test_unstable_step_warns_with_safe_step():
    """Stability rule r_max < √(2δ/η), r_max ≈ 5 c₀ max(1 + τ): for `optimal`, sup τ = 1/(λ* − 1)."""
    with pytest.warns(RuntimeWarning, match="largest safe step is about") as rec:
        dmft(DELTA_A, step=0.5, l2=L2_A, steps=1, samples=2000, replicates=2, progress=False)
    safe = float(re.search(r"largest safe step is about ([0-9.]+[0-9])", str(rec[0].message)).group(1))
    lam = _limits_A().lam_star
    bound = 2 * DELTA_A / (5 * lam / (lam - 1)) ** 2          # the sup over the law of Y
    assert bound <= safe <= 1.02 * bound, (safe, bound)
    assert 0.1 < safe < 0.5          # case A's η = 0.1 is safe (theory.md §4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dmft(DELTA_A, step=0.1, l2=L2_A, steps=1, samples=2000, replicates=2, progress=False)


def test_divergence_raises_naming_the_step():
    from phasetorch.errors import DivergenceError

    with pytest.warns(RuntimeWarning):
        with pytest.raises(DivergenceError, match=r"μ = 3"):
            dmft(DELTA_A, step=3.0, steps=40, samples=2000, replicates=2, progress=False)


# ----------------------------------------------------------------------------------- reference values
@pytest.mark.slow
def test_case_a_table():
    """theory.md §7 case A: m, q, loss at t = 1, 2, 5, 10, 20 within 3 SE + 1e-3 of the reference DMFT."""
    p = _case_a(steps=20, samples=100_000, replicates=8, seed=0)
    for t, (m, q, loss) in TABLE_A.items():
        row = p.at(t)
        assert _close(row["m"], row["m_se"], m), (t, row["m"], m)
        assert _close(row["q"], row["q_se"], q), (t, row["q"], q)
        assert _close(row["loss"], row["loss_se"], loss), (t, row["loss"], loss)
    # N = 4e6 reference at t = 1 (theory.md §7)
    assert _close(p.at(1)["m"], p.at(1)["m_se"], 0.91957, slack=3e-4)
    assert _close(p.at(1)["q"], p.at(1)["q_se"], 0.89174, slack=5e-4)


@pytest.mark.slow
def test_long_time_fixed_point():
    """The end of a long run is stationary and sits on the TTI fixed point of theory.md §5."""
    from phasetorch.theory.fixed_point import fixed_point

    p = _case_a(steps=80, samples=25_000, replicates=8, seed=21)
    end = p.at(80)
    # the degenerate Gaussian factorisation stayed consistent (Σ_W positive semi-definite) all the way
    assert p.params["factorisation_defect"] < 1e-10 and p.params["dropped_directions"] > 0
    # stationarity from the population: ⟨∇L, x*⟩ = E[S g] + λm → 0, ⟨∇L, x⟩ = E[r g] + λq → 0
    assert abs(end["grad_signal"]) < 1e-4 and abs(end["grad_iterate"]) < 1e-4
    assert end["grad_norm"] < 5e-3 and p["grad_norm"][-1] < 0.1 * p["grad_norm"][20]
    fp = fixed_point(DELTA_A, l2=L2_A, noise=0.0, preprocessing="optimal")
    assert fp.m == pytest.approx(FIXED_POINT_A[0], abs=2e-4) and fp.q == pytest.approx(FIXED_POINT_A[1], abs=3e-4)
    assert _close(end["m"], end["m_se"], fp.m, slack=3e-4), (end["m"], fp.m)
    assert _close(end["q"], end["q_se"], fp.q, slack=5e-4), (end["q"], fp.q)
    assert _close(end["loss"], end["loss_se"], fp.loss, slack=1e-4), (end["loss"], fp.loss)
    # the integrated response κ = −Σ_k R_x(t, t−k) of the TTI regime (theory.md §5); the partial sums
    # converge geometrically (the slow mode, ≈ 0.95/step), so extrapolate them with Aitken's Δ²
    k40, k60, k80 = (-p["R_x"][t, :t].sum().item() for t in (40, 60, 80))
    kappa = k80 - (k80 - k60) ** 2 / ((k80 - k60) - (k60 - k40))
    assert abs(k80 - fp.kappa) < 5e-3 and kappa == pytest.approx(fp.kappa, abs=1.5e-3), (k40, k60, k80, fp.kappa)


@pytest.mark.slow
def test_power_iteration_prephase_matches_closed_form_start():
    """K steps of normalised power iteration on D + cI, prepended to the same DMFT, reproduce the
    closed-form spectral start (its non-Gaussian r₀, memory, Onsager and W★ terms) — theory.md §4.

    ``mm`` at δ = 4 (the spectrum of D is [−1.1, 0.24] ∪ {0.437}; the shift c = 0.43 balances the
    bulk edges, so the error decays like 0.77^{2K})."""
    from phasetorch.theory.spectral import spectral_limits

    lim = spectral_limits(DELTA_A, "mm")
    kw = dict(steps=10, step=STEP_A, l2=L2_A, T=lim.T, samples=50_000, replicates=6, progress=False)
    closed = solve_dmft(DELTA_A, lam_star=lim.lam_star, rho=lim.rho, seed=1, **kw)
    power = solve_dmft(DELTA_A, init="power", power_steps=40, power_shift=0.43, init_overlap=0.5, seed=2, **kw)
    assert abs(power["m"][0].item() - lim.rho) <= 3 * power["m_se"][0].item() + 2e-4
    ray, se = power.checks["rayleigh"]                      # the power iterate is the top eigenvector
    assert abs(ray - lim.eigenvalue) <= 3 * se + 1e-3, (ray, se, lim.eigenvalue)
    for name in ("m", "q", "loss"):
        se = (closed[name + "_se"] ** 2 + power[name + "_se"] ** 2).sqrt()
        assert ((closed[name] - power[name]).abs() <= 3 * se + 5e-4).all(), (name, closed[name], power[name])
    # the naive Gaussian (warm) start with the same overlap is clearly different (theory.md §4)
    naive = solve_dmft(DELTA_A, init="warm", init_overlap=lim.rho, seed=3, **kw)
    assert (naive["m"][1] - closed["m"][1]).abs() > 20 * closed["m_se"][1]
