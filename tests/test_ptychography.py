"""Far-field ptychography: the measurement model (adjoints and gradients against autograd), the data
reader, and the blind reconstruction engine (known-probe recovery, probe and position refinement,
masks, and a short run on the bundled measured data)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from phasetorch.physics.ptychography import (INTERPOLATIONS, Ptychography, exit_wave_gradients, exit_waves,
                                             extract_patches, far_field, fit_object, place_patches,
                                             positioned_probes)
from phasetorch.physics.registry import operator_from_config
from phasetorch.ptycho import data_residual, orthogonalize_modes, reconstruct_ptycho
from phasetorch.io import bundled
from phasetorch.ptycho_data import load_ptycho, ptycho_from_arrays, save_ptycho

ROOT = Path(__file__).resolve().parents[1]
STAR = bundled("siemens_star_small")
C128 = torch.complex128


# ============================================================================ fixtures
def _probe(h=16, modes=0, dtype=C128, width=None):
    """A smooth Gaussian probe (σ = ``width``, default h/4) with a quadratic phase (and, for modes > 0,
    weaker extra modes)."""
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(h) - (h - 1) / 2, indexing="ij")
    p = torch.exp(-(xx ** 2 + yy ** 2) / (2 * (width or h / 4) ** 2)) * torch.exp(1j * 0.05 * (xx ** 2 + yy ** 2))
    p = p.to(dtype)
    if modes:
        extra = [0.3 * p * torch.exp(1j * 2 * math.pi * (k + 1) * xx / h).to(dtype) for k in range(modes - 1)]
        return torch.stack([p, *extra])
    return p


def _scan(n=6, step=4.0, jitter=0.4, seed=0, h=16, margin=3):
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(n) * step, torch.arange(n) * step, indexing="ij"), -1)
    pos = grid.reshape(-1, 2).to(torch.float64)
    pos = pos + jitter * (torch.rand(pos.shape, generator=g, dtype=torch.float64) - 0.5)
    return fit_object(pos, (h, h), margin)


def _object(shape, seed=0):
    g = torch.Generator().manual_seed(seed)

    def smooth():
        z = torch.randn(*shape, generator=g, dtype=torch.float64)
        k = torch.fft.fftfreq(shape[0])[:, None] ** 2 + torch.fft.fftfreq(shape[1])[None, :] ** 2
        return torch.fft.ifft2(torch.fft.fft2(z) * torch.exp(-k / (2 * 0.08 ** 2))).real * 5

    return ((0.8 + 0.2 * torch.tanh(smooth())) * torch.exp(1j * torch.tanh(smooth()))).to(C128)


def _object_error(x, truth, probe, pos, interpolation, threshold=0.2):
    """min_φ ‖x − e^{iφ}x*‖/‖x*‖ over the well-illuminated pixels."""
    p = probe if probe.dim() == 2 else probe[0]
    cov = place_patches(p.abs().square().expand(pos.shape[0], *p.shape).to(torch.float64), pos, truth.shape,
                        interpolation)
    m = cov > threshold * cov.max()
    a, b = x[m].to(C128), truth[m]
    phase = torch.angle((b.conj() * a).sum())
    return float((a * torch.exp(-1j * phase) - b).norm() / b.norm())


# ============================================================================ the model
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("zero_frequency", ["corner", "center"])
@pytest.mark.parametrize("modes", [0, 2])
def test_adjoints_match_autograd(interpolation, zero_frequency, modes):
    torch.manual_seed(1)
    probe = torch.randn(2, 8, 8, dtype=C128) if modes else torch.randn(8, 8, dtype=C128)
    pos = torch.rand(7, 2, dtype=torch.float64) * 10 + 1.3
    op = Ptychography(probe, pos, (24, 22), interpolation=interpolation, zero_frequency=zero_frequency, chunk=3)
    assert op.field_shape == ((7, 2, 8, 8) if modes else (7, 8, 8))
    x = torch.randn(2, 24, 22, dtype=C128, requires_grad=True)
    z = op.linear(x)
    v = torch.randn_like(z)
    (g,) = torch.autograd.grad(z, x, v)
    with torch.no_grad():                       # the no-grad (CPU loop) paths are the ones the engine uses
        a = op.adjoint(v)
    assert torch.allclose(g, a, atol=1e-12)
    # the adjoint identity ⟨Ax, v⟩ = ⟨x, Aᴴv⟩
    assert torch.allclose((z.conj() * v).sum(), (x.conj() * a).sum(), atol=1e-10)
    # probe adjoint
    pr = op.probe.clone().requires_grad_(True)
    (gp,) = torch.autograd.grad(far_field(x.detach(), pr, op.positions, interpolation, zero_frequency), pr, v)
    assert torch.allclose(gp, op.probe_adjoint(v, x.detach()), atol=1e-12)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_position_gradients_match_autograd(interpolation):
    torch.manual_seed(2)
    probe = torch.randn(2, 8, 8, dtype=C128)
    pos = (torch.rand(5, 2, dtype=torch.float64) * 10 + 1.3).requires_grad_(True)
    x = torch.randn(20, 20, dtype=C128)
    psi = exit_waves(x, probe, pos, interpolation)
    w = torch.randn_like(psi)
    (gpos,) = torch.autograd.grad((psi.conj() * w).real.sum(), pos)
    d = exit_wave_gradients(x, probe, pos.detach(), interpolation)          # (J, 2, K, h, w)
    mine = (d.conj() * w.unsqueeze(1)).real.sum(dim=(2, 3, 4))
    assert torch.allclose(gpos, mine, atol=1e-10)


def test_forward_intensities_chunks_batches_and_conventions():
    torch.manual_seed(3)
    probe = _probe(8, modes=2)
    pos = torch.rand(9, 2, dtype=torch.float64) * 8 + 1
    x = torch.randn(3, 20, 20, dtype=C128)
    a = Ptychography(probe, pos, (20, 20), chunk=2)
    b = Ptychography(probe, pos, (20, 20), chunk=100)
    ya = a(x)
    assert ya.shape == (3, 9, 8, 8) and a.measurement_shape == (9, 8, 8)
    assert torch.allclose(ya, b(x), atol=1e-12)
    assert torch.allclose(ya, a.linear(x).abs().square().sum(-3), atol=1e-12)
    for i in range(3):                                             # a batch equals single runs
        assert torch.allclose(ya[i], a(x[i]), atol=1e-12)
    c = Ptychography(probe, pos, (20, 20), zero_frequency="center")
    assert torch.allclose(c(x), torch.fft.fftshift(ya, dim=(-2, -1)), atol=1e-12)
    # Parseval: each pattern's total = Σ_k ‖P_jk ⊙ S_j O‖² (unitary FFT)
    psi = exit_waves(x, a.probe, pos, a.interpolation)
    assert torch.allclose(ya.sum((-2, -1)), psi.abs().square().sum((-3, -2, -1)), rtol=1e-10)


def test_subpixel_models_agree_for_smooth_objects_and_integer_positions():
    """At integer positions every interpolation is plain slicing; for a band-limited object the three
    sub-pixel models give nearly the same intensities (for a probe that decays inside its window: the
    probe shift is circular)."""
    probe = _probe(16, width=2.5)
    pos_int = torch.tensor([[3.0, 4.0], [7.0, 2.0], [5.0, 6.0]], dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    x = torch.exp(1j * (0.3 * torch.sin(2 * math.pi * yy / 32) + 0.2 * torch.cos(2 * math.pi * xx / 32))).to(C128)
    ys = [Ptychography(probe, pos_int, (32, 32), interpolation=i)(x) for i in INTERPOLATIONS]
    for y in ys[1:]:
        assert torch.allclose(y, ys[0], atol=1e-9)
    pos = pos_int + 0.37
    ys = [Ptychography(probe, pos, (32, 32), interpolation=i)(x) for i in INTERPOLATIONS]
    assert float((ys[1] - ys[2]).norm() / ys[2].norm()) < 1e-3          # the two Fourier models
    assert float((ys[0] - ys[2]).norm() / ys[2].norm()) < 2e-2          # bilinear (a slight low-pass)


def test_operator_config_round_trip_and_dtype():
    probe = _probe(8, modes=2).to(torch.complex64)
    pos = torch.rand(4, 2) * 5 + 1
    op = Ptychography(probe, pos, (16, 16), interpolation="bilinear", chunk=3)
    assert op.real_dtype == torch.float32 and op.signal_dtype == torch.complex64
    cfg = op.config()
    json.dumps(cfg)
    back = operator_from_config(cfg)
    back.load_state_dict(op.state_dict())
    x = torch.randn(16, 16, dtype=torch.complex64)
    assert torch.equal(back(x), op(x))
    d = op.to(torch.float64)
    assert d.probe.dtype == C128 and d.positions.dtype == torch.float64
    assert 0 < op.entry_energy < 1


def test_model_validation_errors():
    probe = _probe(8)
    with pytest.raises(ValueError, match="outside an object"):
        Ptychography(probe, torch.tensor([[0.5, 30.0]], dtype=torch.float64), (16, 16))
    with pytest.raises(ValueError, match="interpolation"):
        Ptychography(probe, torch.zeros(1, 2, dtype=torch.float64), (16, 16), interpolation="cubic")
    with pytest.raises(ValueError, match="zero_frequency"):
        Ptychography(probe, torch.zeros(1, 2, dtype=torch.float64), (16, 16), zero_frequency="middle")
    with pytest.raises(ValueError, match="NaN"):
        Ptychography(probe, torch.tensor([[float("nan"), 1.0]], dtype=torch.float64), (16, 16))
    with pytest.raises(ValueError, match=r"\(J, 2\)"):
        Ptychography(probe, torch.zeros(3, dtype=torch.float64), (16, 16))
    op = Ptychography(probe, torch.ones(2, 2, dtype=torch.float64), (16, 16))
    with pytest.raises(ValueError, match="shape"):
        op.adjoint(torch.zeros(3, 8, 8, dtype=C128))
    with pytest.raises(ValueError, match="'fourier-probe'"):
        from phasetorch.physics.ptychography import patch_gradients
        patch_gradients(torch.ones(16, 16, dtype=C128), torch.ones(2, 2), (8, 8), "fourier-probe")


def test_fit_object_and_positioned_probes():
    raw = torch.tensor([[-10.2, 5.0], [3.7, -2.5]], dtype=torch.float64)
    pos, shape = fit_object(raw, (8, 8), margin=2)
    assert torch.allclose(pos.amin(0), torch.tensor([2.0, 2.0], dtype=torch.float64))
    Ptychography(_probe(8), pos, shape, interpolation="fourier")      # every window fits
    p = _probe(8)
    shifted = positioned_probes(p, torch.tensor([[1.0, 2.0], [1.5, 2.0]], dtype=torch.float64), "fourier-probe")
    assert torch.allclose(shifted[0], p, atol=1e-12)                 # integer position: no shift
    assert torch.allclose(shifted[1].abs().square().sum(), p.abs().square().sum())   # unitary shift


# ============================================================================ the reader
def test_reader_round_trip_and_layout(tmp_path):
    data = torch.rand(5, 8, 8) * 10
    scan = torch.rand(5, 2, dtype=torch.float64) * 4
    probe = _probe(8).to(torch.complex64)
    for name in ("set.npz", "set.npz.bz2"):
        path = tmp_path / name
        save_ptycho(path, data, scan, probe, mask=torch.ones(8, 8, dtype=torch.bool))
        d = load_ptycho(path)
        assert torch.equal(d.intensities, data) and torch.equal(d.positions, scan)
        assert d.probe.shape == (1, 8, 8) and torch.equal(d.probe[0], probe) and d.mask.shape == (8, 8)
    with open(tmp_path / "set.npz.bz2", "rb") as fh:
        assert fh.read(3) == b"BZh"
    # tike's layout with leading singleton axes
    d = ptycho_from_arrays(data.numpy()[None], scan.numpy()[None], probe.numpy()[None, None, None, None])
    assert d.intensities.shape == (5, 8, 8) and d.probe.shape == (1, 8, 8) and d.positions.shape == (5, 2)
    sub = d.subset(slice(0, 3))
    assert sub.n_positions == 3 and sub.pattern_shape == (8, 8)


def test_reader_errors(tmp_path):
    data = np.ones((4, 8, 8), np.float32)
    scan = np.zeros((4, 2), np.float32)
    probe = np.ones((8, 8), np.complex64)

    def write(**arrays):
        path = tmp_path / "x.npz"
        np.savez(path, **arrays)
        return path

    with pytest.raises(ValueError, match="lacks the key"):
        load_ptycho(write(data=data, scan=scan))
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        load_ptycho(write(data=data, scan=np.zeros((3, 2)), probe=probe))
    with pytest.raises(ValueError, match="must match"):
        load_ptycho(write(data=data, scan=scan, probe=np.ones((6, 6), np.complex64)))
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_ptycho(write(data=bad, scan=scan, probe=probe))
    with pytest.raises(ValueError, match="complex"):
        load_ptycho(write(data=data, scan=scan, probe=np.ones((8, 8), np.float32)))
    with pytest.raises(ValueError, match="pickle"):
        load_ptycho(write(data=np.array([{"a": 1}], dtype=object), scan=scan, probe=probe))
    with pytest.raises(ValueError, match="no such file"):
        load_ptycho(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_ptycho(tmp_path / "junk.npz")
    neg = data.copy()
    neg[1, 2, 3] = -1
    d = load_ptycho(write(data=neg, scan=scan, probe=probe))
    assert d.info["negative_clipped"] == 1 and float(d.intensities.min()) == 0.0


# ============================================================================ the engine
def _simulated(interpolation="fourier-probe", modes=0, noise_photons=None, seed=0):
    probe = _probe(16, modes=modes)
    pos, shape = _scan(seed=seed)
    obj = _object(shape, seed)
    op = Ptychography(probe, pos, shape, interpolation=interpolation, dtype=torch.float64)
    y = op(obj)
    if noise_photons is not None:
        g = torch.Generator().manual_seed(seed + 10)
        scale = noise_photons / float(y.sum(dim=(-2, -1)).mean())
        y = torch.poisson(y * scale, generator=g) / scale
    return probe, pos, shape, obj, y


@pytest.mark.parametrize("interpolation", ["fourier-probe", "bilinear"])
def test_known_probe_recovery_noiseless(interpolation):
    """Noiseless data, known probe: the object error (well-lit pixels, modulo the global phase) falls below
    1e-3 in 300 epochs (about 1 s)."""
    tol = 1e-3
    probe, pos, shape, obj, y = _simulated(interpolation)
    r = reconstruct_ptycho(y, probe, pos, object_shape=shape, iterations=300, batch_size=8, refine_probe=False,
                           interpolation=interpolation, rescale_probe=False, damping=0.01, momentum=0.8, relaxation=1.0,
                           dtype=torch.float64, seed=1)
    assert _object_error(r.object, obj, probe, pos, interpolation) < tol
    assert r.residual < tol < r.initial_residual
    assert r.log["residual"].shape == (301, 1) and r.iterations == 300
    assert float(data_residual(r.object, r.probe, r.positions, y, interpolation=interpolation)) == \
        pytest.approx(r.residual, rel=1e-9)


def test_probe_refinement_from_a_perturbed_probe():
    probe, pos, shape, obj, y = _simulated()
    yy, xx = torch.meshgrid(torch.arange(16) - 7.5, torch.arange(16) - 7.5, indexing="ij")
    start = (probe * torch.exp(1j * 0.02 * (xx ** 2 - yy ** 2)) * 1.3).to(C128)   # wrong astigmatism and scale
    fixed = reconstruct_ptycho(y, start, pos, object_shape=shape, iterations=60, batch_size=8, refine_probe=False,
                               dtype=torch.float64, seed=1)
    r = reconstruct_ptycho(y, start, pos, object_shape=shape, iterations=60, batch_size=8, dtype=torch.float64,
                           seed=1)
    assert r.residual < fixed.residual / 5

    def probe_error(p):                      # modulo the global complex scale (object–probe ambiguity)
        c = (p.conj() * probe).sum() / p.abs().square().sum()
        return float((c * p - probe).norm() / probe.norm())

    assert probe_error(r.probe[0]) < probe_error(start) / 3
    assert r.log["step_probe"][1:].mean() > 0


def test_position_refinement_reduces_position_errors():
    probe, pos, shape, obj, y = _simulated()
    g = torch.Generator().manual_seed(5)
    start = pos + 0.6 * (torch.rand(pos.shape, generator=g, dtype=torch.float64) - 0.5)
    start = start - start.mean(0) + pos.mean(0)

    def err(p):
        return float((p - pos).abs().mean())

    before = start.clone()
    r = reconstruct_ptycho(y, probe, start, object_shape=shape, iterations=80, batch_size=8, refine_probe=False,
                           refine_positions=True, position_start=5, damping=0.1, dtype=torch.float64, seed=1)
    assert torch.equal(start, before)                                     # the input is not modified
    assert err(r.positions) < err(start) / 3
    assert torch.allclose(r.positions.mean(0), start.mean(0), atol=1e-6)   # mean position held fixed
    assert float(r.log["position_change"][-1]) > 0


def test_mask_excludes_corrupted_pixels_and_poisson_loss():
    probe, pos, shape, obj, y = _simulated()
    corrupted = y.clone()
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[6:8, 5:9] = False                                    # e.g. hot or dead pixels
    corrupted[:, 6:8, 5:9] = 1e6
    kw = dict(object_shape=shape, iterations=60, batch_size=8, refine_probe=False, dtype=torch.float64, seed=1)
    clean = reconstruct_ptycho(y, probe, pos, **kw)
    masked = reconstruct_ptycho(corrupted, probe, pos, mask=mask, **kw)
    assert _object_error(masked.object, obj, probe, pos, "fourier-probe") < 2 * _object_error(
        clean.object, obj, probe, pos, "fourier-probe") + 1e-3
    assert masked.residual < 2 * clean.residual + 1e-3
    sat = reconstruct_ptycho(corrupted, probe, pos, saturation=1e5, **kw)     # the same pixels, by level
    assert sat.residual == pytest.approx(masked.residual, rel=1e-6)
    noisy = _simulated(noise_photons=1e5)[-1]                 # Poisson noise, 1e5 photons per pattern
    pois = reconstruct_ptycho(noisy, probe, pos, loss="poisson", **kw)
    amp = reconstruct_ptycho(noisy, probe, pos, loss="amplitude", **kw)
    assert pois.residual < pois.initial_residual / 5
    assert _object_error(pois.object, obj, probe, pos, "fourier-probe") < 1.1 * _object_error(
        amp.object, obj, probe, pos, "fourier-probe")


def test_engine_modes_seed_and_validation():
    probe, pos, shape, obj, y = _simulated()
    kw = dict(object_shape=shape, iterations=4, batch_size=8, dtype=torch.float64)
    a = reconstruct_ptycho(y, probe, pos, seed=3, modes=2, **kw)
    b = reconstruct_ptycho(y, probe, pos, seed=3, modes=2, **kw)
    assert torch.equal(a.object, b.object) and torch.equal(a.probe, b.probe)
    assert a.probe.shape == (2, 16, 16)
    gram = a.probe.reshape(2, -1) @ a.probe.reshape(2, -1).conj().T
    assert abs(complex(gram[0, 1])) < 1e-8 * abs(complex(gram[0, 0]))        # orthogonal modes
    assert abs(gram[0, 0]) >= abs(gram[1, 1])
    m = orthogonalize_modes(torch.randn(3, 4, 4, dtype=C128))
    g3 = m.reshape(3, -1) @ m.reshape(3, -1).conj().T
    assert torch.allclose(g3, torch.diag(torch.diagonal(g3)), atol=1e-10)
    summary = a.summary()
    json.dumps(summary)
    assert summary["iterations"] == 4
    # raw positions with any offset: fitted into an object automatically
    r = reconstruct_ptycho(y, probe, pos - 100.0, iterations=2, batch_size=36, dtype=torch.float64, seed=0)
    assert torch.allclose(r.positions - r.offset, pos - 100.0)
    stop = reconstruct_ptycho(y, probe, pos, seed=0, target_residual=0.5, eval_every=1,
                              **dict(kw, iterations=50))
    assert stop.iterations < 50
    with pytest.raises(ValueError, match="loss"):
        reconstruct_ptycho(y, probe, pos, loss="l1", **kw)
    with pytest.raises(ValueError, match="probe must be"):
        reconstruct_ptycho(y, probe[:8], pos, **kw)
    with pytest.raises(ValueError, match="positions must be"):
        reconstruct_ptycho(y, probe, pos[:3], **kw)
    with pytest.raises(ValueError, match="NaN"):
        reconstruct_ptycho(y * float("nan"), probe, pos, **kw)
    with pytest.raises(ValueError, match="mask"):
        reconstruct_ptycho(y, probe, pos, mask=torch.ones(3, 3, dtype=torch.bool), **kw)


# ============================================================================ measured data
def test_bundled_data_loads():
    d = load_ptycho(STAR)
    assert d.intensities.shape == (516, 128, 128) and d.probe.shape == (1, 128, 128)
    assert d.positions.shape == (516, 2) and float(d.intensities.max()) == 963.0
    assert (STAR.parent / "LICENSE.tike").is_file()
    # the zero frequency sits at the corner (unshifted FFT layout)
    mean = d.intensities.mean(0)
    assert float(mean[0, 0]) > 100 * float(mean[64, 64])


@pytest.mark.slow
def test_real_data_subset_lowers_residual():
    """A short run on the 128 scan points nearest the scan's centre lowers R by at least 2x."""
    d = load_ptycho(STAR)
    centre = d.positions.mean(0)
    idx = (d.positions - centre).norm(dim=1).argsort()[:128].sort().values
    sub = d.subset(idx)
    torch.manual_seed(0)
    r = reconstruct_ptycho(sub.intensities, sub.probe, sub.positions, iterations=6, batch_size=16, seed=0)
    assert r.residual < r.initial_residual / 2
    assert r.log["residual"][-1, 0] < r.log["residual"][1, 0]


@pytest.mark.slow
def test_ptycho_job_writes_images_logs_and_summary(tmp_path):
    import argparse

    from phasetorch.app.commands.ptycho import add_arguments, run_ptycho
    from phasetorch.logs import TrainingLog

    args = add_arguments(argparse.ArgumentParser()).parse_args(
        [str(STAR), "--out", str(tmp_path / "out"), "--iters", "2", "--positions", "48", "--batch-size", "16"])
    args.quiet = True
    summary = run_ptycho(args)
    out = tmp_path / "out"
    for name in ("object_amplitude.png", "object_phase.png", "probe.png", "reconstruction.png", "convergence.png",
                 "log.json", "summary.json", "reconstruction.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]            # atomic writes leave no temporaries
    log = TrainingLog.from_dict(json.loads((out / "log.json").read_text()))
    assert len(log) == 3 and "residual" in log.columns
    saved = json.loads((out / "summary.json").read_text())
    assert saved["patterns"] == 48 and saved["residual"] < saved["initial_residual"]
    assert summary["iterations"] == 2
    state = torch.load(out / "reconstruction.pt", weights_only=True)
    assert state["object"].is_complex() and state["probe"].shape == (1, 128, 128)
    with pytest.raises(ValueError, match="unknown ptycho option"):
        run_ptycho(data=str(STAR), out=str(out), colour="red")


# ============================================================================ devices
def test_vectorised_patch_paths_equal_the_cpu_loops():
    """The index_add_/gather paths (used on accelerators and under autograd) equal the CPU loops."""
    torch.manual_seed(4)
    pos = torch.rand(6, 2, dtype=torch.float64) * 9 + 1.2
    patches = torch.randn(2, 6, 8, 8, dtype=C128)
    obj = torch.randn(2, 20, 20, dtype=C128)
    for interpolation in INTERPOLATIONS:
        with torch.no_grad():
            loop_place = place_patches(patches, pos, (20, 20), interpolation)
            loop_extract = extract_patches(obj, pos, (8, 8), interpolation)
        vec_place = place_patches(patches.clone().requires_grad_(True), pos, (20, 20), interpolation)
        vec_extract = extract_patches(obj.clone().requires_grad_(True), pos, (8, 8), interpolation)
        assert torch.allclose(loop_place, vec_place.detach(), atol=1e-12)
        assert torch.allclose(loop_extract, vec_extract.detach(), atol=1e-12)


#: PHASETORCH_TEST_DEVICE=cpu runs the device test's logic on the CPU (a dry run).
DEVICE = torch.device(os.environ.get("PHASETORCH_TEST_DEVICE", "cuda"))


@pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_model_and_engine_match_cpu():
    probe, pos, shape, obj, y = _simulated()
    op = Ptychography(probe, pos, shape, dtype=torch.float64)
    dev_op = Ptychography(probe, pos, shape, dtype=torch.float64).to(DEVICE)
    z = op.linear(obj)
    assert torch.allclose(dev_op.linear(obj.to(DEVICE)).cpu(), z, atol=1e-10)
    assert torch.allclose(dev_op.adjoint(z.to(DEVICE)).cpu(), op.adjoint(z), atol=1e-10)
    kw = dict(object_shape=shape, iterations=5, batch_size=8, dtype=torch.float64, seed=2, refine_positions=True,
              position_start=2, modes=2)
    cpu = reconstruct_ptycho(y, probe, pos, **kw)
    dev = reconstruct_ptycho(y.to(DEVICE), probe, pos, device=DEVICE, **kw)
    assert dev.object.device.type == DEVICE.type
    assert torch.allclose(dev.object.cpu(), cpu.object, atol=1e-8)
    assert torch.allclose(dev.probe.cpu(), cpu.probe, atol=1e-8)
    assert dev.residual == pytest.approx(cpu.residual, rel=1e-8)
    streamed = reconstruct_ptycho(y, probe, pos, device=DEVICE, data_device="cpu", **kw)   # patterns stay on the host
    assert torch.allclose(streamed.object.cpu(), cpu.object, atol=1e-8)
