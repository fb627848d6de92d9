"""The complex-field DMFT (docs/theory.md): models, responses, the start, the fixed point, simulations.

Small sizes only; the full-size check (d = 1000, 16 seeds) is scripts/complex_dmft_check.py.
"""

import math

import pytest
import torch

from phasetorch.tensors import make_generator, mean_se
from phasetorch.theory import (check_describes, dmft, fixed_point, phase_retrieval, simulate, single_index_model,
                               spectral_limits, spectral_threshold)
from phasetorch.theory.quadrature import gauss_laguerre
from phasetorch.theory.responses import response_row_complex


def _cn(n, g):
    return torch.view_as_complex(torch.randn(n, 2, generator=g, dtype=torch.float64) * math.sqrt(0.5))


def test_complex_intensity_model_matches_autograd():
    """g = 2∂ℓ/∂r̄ (autograd's convention), g_r = 2|r|² − y, g_r̄ = r², ∂_y g = −r, ∂y/∂Re s = 2 Re s."""
    pr = phase_retrieval(0.3, field="complex")
    auto = single_index_model("pr_auto", pr.link, pr.loss, field="complex", noise=0.3)
    g = make_generator(0)
    r, s = _cn(40, g), _cn(40, g)
    y = torch.rand(40, generator=g, dtype=torch.float64) * 2
    e = torch.randn(40, generator=g, dtype=torch.float64)
    for name in ("g", "g_r", "g_rbar", "g_y"):
        assert torch.allclose(getattr(auto, name)(r, y).to(torch.complex128),
                              getattr(pr, name)(r, y).to(torch.complex128), atol=1e-12), name
    assert torch.allclose(auto.link_ds(s, e), pr.link_ds(s, e), atol=1e-12)
    assert pr.is_complex and pr.g_rbar is not None


def test_complex_response_row_matches_autograd_jacobian():
    """Re ξ_k of the complex back-substitution = (H_t ∂ρ_t/∂U_k)₁₁ with the real 2×2 Jacobian by autograd."""
    g = make_generator(1)
    T, N = 5, 64
    K = torch.zeros(1, T + 1, T + 1, dtype=torch.float64)
    for t in range(1, T + 1):
        K[0, t, :t] = 0.3 * torch.randn(t, generator=g, dtype=torch.float64)
    U = _cn(N * (T + 1), g).reshape(T + 1, N)
    y = torch.rand(N, generator=g, dtype=torch.float64) * 2
    model = phase_retrieval(field="complex")
    x = U.real.clone().requires_grad_(True)
    v = U.imag.clone().requires_grad_(True)
    Uc = torch.complex(x, v)
    rs, gs = [], []
    for t in range(T + 1):
        r = Uc[t] + sum(K[0, t, s] * gs[s] for s in range(t)) if t > 0 else Uc[t]
        rs.append(r)
        gs.append(model.g(r, y))
    t = T
    gt = gs[t]
    # (H_t ∂ρ_t/∂U_k)₁₁ = ∂ Re g_t / ∂ Re U_k, summed over samples (each sample only touches its own U)
    dx, = torch.autograd.grad(gt.real.sum(), x, retain_graph=True)
    dv, = torch.autograd.grad(gt.imag.sum(), v)
    ref = 0.5 * (dx + dv).mean(dim=1)           # holomorphic part (tr/2), the exact-in-law target
    ref11 = dx.mean(dim=1)                      # the (1,1) entry our estimator reads
    hist_r = torch.stack([model.g_r(r.detach(), y) for r in rs]).real[None]
    hist_b = torch.stack([model.g_rbar(r.detach(), y) for r in rs])[None]
    buf = torch.empty(1, T + 1, N, dtype=torch.complex128)
    out = response_row_complex(K, hist_r, hist_b, hist_r[:, t], hist_b[:, t], t, buf)
    assert torch.allclose(out[0, :t], ref11[:t], atol=1e-12)
    assert out[0, t] == pytest.approx(float(hist_r[0, t].mean()))
    assert float(ref[t]) == pytest.approx(float(hist_r[0, t].mean()), abs=1e-12)


def test_complex_spectral_start_anchors():
    """t = 0: m(0) = ρ (complex `optimal`, threshold δ = 1), q(0) = 1, and the population anchors."""
    # δ_c = 1 for the exact T = 1 − 1/ŷ; the complex floor ε = 1e-2 moves it by 5·10⁻⁵
    assert spectral_threshold("optimal", field="complex") == pytest.approx(1.0, abs=1e-4)
    assert spectral_threshold(lambda y: 1 - 1 / y.clamp(min=1e-6), field="complex") == pytest.approx(1.0, abs=1e-6)
    lim = spectral_limits(4.0, "optimal", field="complex")
    assert lim.rho2 == pytest.approx(0.7345, abs=2e-4)
    p = dmft(4.0, step=0.1, l2=0.1, steps=0, field="complex", samples=40_000, replicates=4, seed=2, progress=False)
    assert p["m"][0].item() == pytest.approx(lim.rho, abs=1e-12) and p["q"][0].item() == pytest.approx(1.0)
    for name, ref in (("v_norm", 1.0), ("tilt_equation", 1.0), ("rayleigh", lim.eigenvalue)):
        v, se = p.checks[name]
        assert abs(v - ref) <= 4 * se + 2e-3, (name, v, se, ref)
    assert p.params["field"] == "complex"


def test_complex_fixed_point_exact_recovery():
    """λ = 0, noiseless, δ > 2: m = q = 1 and δκE[e/(1 + 2κe)] = 1 with e = |S|² ~ Exp(1)."""
    fp = fixed_point(4.0, l2=0.0, field="complex", z_nodes=24)
    assert fp.converged and fp.m == pytest.approx(1.0, abs=1e-8) and fp.q == pytest.approx(1.0, abs=1e-8)
    e, w = gauss_laguerre(80)
    assert 4.0 * fp.kappa * float((w * e / (1 + 2 * fp.kappa * e)).sum()) == pytest.approx(1.0, abs=1e-8)
    ridge = fixed_point(4.0, l2=0.1, field="complex", z_nodes=24)
    assert ridge.converged and abs(ridge.stationarity) < 1e-8 and ridge.m < 0.95


def test_complex_dmft_matches_simulation_small():
    """The first steps of complex WF: DMFT against simulations (d = 300) within SE + finite-size slack."""
    kw = dict(step=0.1, l2=0.1, steps=6)
    p = dmft(4.0, field="complex", samples=20_000, replicates=4, seed=0, progress=False, **kw)
    log = simulate(4.0, dim=300, seeds=6, field="complex", progress=False, **kw)
    check_describes(p, log)
    m, se = mean_se(log["inner"], dim=1)
    loss, lse = mean_se(log["loss"], dim=1)
    assert ((m - p["m"]).abs() <= 3 * (se ** 2 + p["m_se"] ** 2).sqrt() + 0.01).all(), (m, p["m"])
    assert ((loss - p["loss"]).abs() <= 3 * (lse ** 2 + p["loss_se"] ** 2).sqrt() + 0.005).all()
    # the trajectory is not the real one: the real DMFT is far away
    real = dmft(4.0, samples=5_000, replicates=2, progress=False, **kw)
    assert (real["m"] - m).abs().max() > 0.05


def test_field_mismatch_is_refused():
    p = dmft(4.0, step=0.1, l2=0.1, steps=1, field="complex", samples=2_000, replicates=2, progress=False)
    log = simulate(4.0, dim=40, seeds=2, step=0.1, l2=0.1, steps=1, field="real", progress=False)
    with pytest.raises(ValueError, match="field"):
        check_describes(p, log)
    with pytest.raises(ValueError, match="contradicts"):
        dmft(4.0, step=0.1, steps=1, field="real", model=phase_retrieval(field="complex"), samples=100,
             replicates=1, progress=False)
