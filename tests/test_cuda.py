"""The GPU paths: every piece run on CUDA gives what it gives on the CPU.

Skipped on a machine without CUDA (CI has none); run them on a GPU with
``python -m pytest tests/test_cuda.py`` (``scripts/device_check.sh`` does, then times the GPU
benchmark rows). Each test builds the problem on the CPU, moves it with ``.to("cuda")``, and
compares in float64 (the arithmetic differs only by summation order), so a wrong device, a
buffer left behind, or a host round trip that changes a value fails here.
"""

import math
import os

import pytest
import torch

import phasetorch as pt
from phasetorch import reconstruct
from phasetorch.losses import LOSSES
from phasetorch.physics.noise import GaussianNoise, PoissonNoise
from phasetorch.physics import (CodedDiffraction, GaussianEnsemble, GaussianMeasurement, LinkMeasurement,
                                  MatrixMeasurement, OversampledFourier, StructuredRandom)
from phasetorch.init.spectral import spectral_init

#: PHASETORCH_TEST_DEVICE=cpu runs this file's own logic on the CPU (CPU against CPU: a dry run).
CUDA = torch.device(os.environ.get("PHASETORCH_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")

F64 = torch.float64


def _cn(shape, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=dtype)) / math.sqrt(2)


def _matrix_op(seed):
    return MatrixMeasurement(_cn((96, 16), seed).to(torch.complex128))


OPERATORS = {
    "gaussian": lambda: GaussianMeasurement(16, 96, complex=True, seed=1, dtype=F64),
    "gaussian_real": lambda: GaussianMeasurement(16, 96, complex=False, seed=1, dtype=F64),
    "gaussian_streamed": lambda: GaussianMeasurement((4, 4), 96, streamed=True, block_rows=40, seed=2, dtype=F64),
    "matrix": lambda: _matrix_op(3),
    "cdp": lambda: CodedDiffraction((8, 8), 4, seed=4, dtype=F64),
    "structured": lambda: StructuredRandom((8, 8), n_layers=2, oversampling=2, seed=5, dtype=F64),
    "fourier": lambda: OversampledFourier((8, 8), 2, dtype=F64),
}


def _close(a, b, tol=1e-10):
    assert a.device.type == CUDA.type, a.device
    b = b.to(a.device)
    assert a.shape == b.shape and a.dtype == b.dtype
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-300)
    assert err <= tol * scale, f"max |difference| {err:.2e} vs scale {scale:.2e}"


# ----------------------------------------------------------------------------- operators
@pytest.mark.parametrize("name", OPERATORS)
def test_operator_on_cuda_matches_cpu(name):
    cpu = OPERATORS[name]()
    gpu = OPERATORS[name]().to(CUDA)
    assert gpu.device.type == CUDA.type
    x = _cn((3, *cpu.signal_shape), 7)
    z = _cn((3, *cpu.measurement_shape), 8)
    if not cpu.is_complex:
        x, z = x.real.contiguous(), z.real.contiguous()
    xg, zg = x.to(CUDA), z.to(CUDA)
    _close(gpu.linear(xg), cpu.linear(x))
    _close(gpu.adjoint(zg), cpu.adjoint(z))
    _close(gpu(xg), cpu(x))
    # the fused pass on the GPU equals the two products
    fn = lambda r, index: r * r.abs()                                        # noqa: E731
    r, u = gpu.linear_adjoint(xg, fn)
    _close(r, gpu.linear(xg))
    _close(u, gpu.adjoint(fn(gpu.linear(xg), None)))
    # adjointness holds on the device
    lhs = (gpu.linear(xg).conj() * zg).sum()
    rhs = (xg.conj() * gpu.adjoint(zg)).sum()
    assert abs(lhs - rhs).item() <= 1e-10 * abs(lhs).item()


def test_ensemble_and_link_on_cuda_match_cpu():
    cpu = GaussianEnsemble(12, 60, 3, complex=True, seeds=[1, 2, 3], dtype=F64)
    gpu = GaussianEnsemble(12, 60, 3, complex=True, seeds=[1, 2, 3], dtype=F64).to(CUDA)
    x = _cn((3, 12), 9)
    _close(gpu(x.to(CUDA)), cpu(x))
    link_cpu = LinkMeasurement(GaussianMeasurement(12, 60, seed=4, dtype=F64), "relu", seed=5)
    link_gpu = LinkMeasurement(GaussianMeasurement(12, 60, seed=4, dtype=F64), "relu", seed=5).to(CUDA)
    _close(link_gpu(x.to(CUDA)), link_cpu(x))


@pytest.mark.skipif(CUDA.type == "cpu", reason="needs two devices")
def test_device_mismatch_is_a_clear_error():
    op = GaussianMeasurement(16, 96, seed=1, dtype=F64).to(CUDA)
    y = op(_cn((16,), 2).to(CUDA))
    with pytest.raises(ValueError, match="device"):
        reconstruct(op, y.cpu(), "raf", max_iter=5, progress=False)
    with pytest.raises(ValueError, match="device"):
        op.linear(_cn((16,), 3))


# ----------------------------------------------------------------------------- noise, losses
def test_noise_on_cuda_equals_cpu_with_the_same_seed():
    op = GaussianMeasurement(16, 96, seed=1, dtype=F64)
    y = op(_cn((2, 16), 3))
    for make in (lambda: PoissonNoise(50.0, seed=4, event_dims=1), lambda: GaussianNoise(0.3, seed=4)):
        _close(make()(y.to(CUDA)), make()(y), tol=0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_value_and_gradient_on_cuda_match_cpu(name):
    op = GaussianMeasurement(16, 96, seed=1, dtype=F64)
    xs, x = _cn((3, 16), 2), _cn((3, 16), 3)
    y = op(xs) + 0.5 * torch.randn(3, 96, generator=torch.Generator().manual_seed(4), dtype=F64)
    cpu, gpu = LOSSES[name](op, l2=0.1), LOSSES[name](GaussianMeasurement(16, 96, seed=1, dtype=F64).to(CUDA), l2=0.1)
    v_c, g_c, _, _ = cpu.value_and_grad(x, y)
    v_g, g_g, _, _ = gpu.value_and_grad(x.to(CUDA), y.to(CUDA))
    _close(v_g, v_c)
    _close(g_g, g_c)
    xx = x.to(CUDA).requires_grad_(True)                                     # autograd on the device
    gpu(xx, y.to(CUDA)).sum().backward()
    _close(xx.grad, g_c, tol=1e-9)


# ----------------------------------------------------------------------------- spectral, solve
@pytest.mark.parametrize("preprocessing", ["identity", "trimmed", "orthogonality", "mm", "optimal"])
@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_spectral_init_on_cuda_matches_cpu(preprocessing, solver):
    op = GaussianMeasurement(32, 256, seed=1, dtype=F64)
    y = op(_cn((2, 32), 2))
    kw = dict(preprocessing=preprocessing, solver=solver, tol=1e-10, max_iter=3000, seed=3)
    a = spectral_init(op, y, **kw)
    b = spectral_init(GaussianMeasurement(32, 256, seed=1, dtype=F64).to(CUDA), y.to(CUDA), **kw)
    _close(b, a, tol=1e-6)


@pytest.mark.parametrize("algorithm", ["wf", "twf", "rwf", "taf", "raf", "af", "gs", "lbfgs"])
def test_every_preset_on_cuda_matches_cpu(algorithm):
    n = 64
    xs = _cn((3, n), 2)
    cpu = GaussianMeasurement(n, 8 * n, seed=1, dtype=F64)
    gpu = GaussianMeasurement(n, 8 * n, seed=1, dtype=F64).to(CUDA)
    kw = dict(max_iter=3000, progress=False, seed=5)
    a = reconstruct(cpu, cpu(xs), algorithm, **kw)
    b = reconstruct(gpu, gpu(xs.to(CUDA)), algorithm, x_true=xs.to(CUDA), **kw)
    assert b.x.device.type == CUDA.type and b.converged.all()
    err = pt.metrics.relative_error(b.x, xs.to(CUDA), signal_dims=1).cpu()
    assert (err < 1e-6).all(), err
    _close(b.x, a.x, tol=1e-6)
    assert b.log["overlap"].shape[1] == 3 and torch.isfinite(b.log["overlap"]).all()
    assert b.log["loss"].device.type == "cpu"                                # read back on the host
    assert torch.allclose(b.log["loss"], a.log["loss"], rtol=1e-6, atol=1e-12)


def test_batch_on_cuda_equals_single_runs_and_float32_recovers():
    n = 128
    xs = _cn((4, n), 6, dtype=torch.float32)
    op = GaussianMeasurement(n, 8 * n, seed=2).to(CUDA)                      # complex64
    y = op(xs.to(CUDA))
    both = reconstruct(op, y, "raf", max_iter=500, progress=False, seed=1)
    one = reconstruct(op, y[2:3], "raf", max_iter=500, progress=False, seed=1)
    assert int(both.iterations[2]) == int(one.iterations[0])
    _close(both.x[2:3], one.x, tol=1e-4)
    assert (pt.metrics.relative_error(both.x, xs.to(CUDA), signal_dims=1) < 1e-4).all()


def test_cdp_image_and_hio_on_cuda():
    op = CodedDiffraction((32, 32), 6, seed=2, dtype=F64).to(CUDA)
    xs = _cn((2, 32, 32), 1).to(CUDA)
    rec = reconstruct(op, op(xs), "raf", max_iter=1500, progress=False, seed=0)
    assert (pt.metrics.relative_error(rec.x, xs, signal_dims=2) < 1e-6).all()
    H = 10
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    support = ((ii + 2 * jj) < 2 * H - 4)
    img = torch.rand(2, H, H, generator=torch.Generator().manual_seed(6), dtype=F64) * support
    four = OversampledFourier((H, H), oversampling=2, dtype=F64).to(CUDA)
    rec = reconstruct(four, four(img.to(CUDA)), "hio", support=support.to(CUDA), nonnegative=True, max_iter=3000,
                      progress=False, seed=0)
    assert (pt.metrics.relative_error(rec.x, img.to(CUDA), signal_dims=2) < 1e-6).all()


def test_streamed_gaussian_and_ensemble_reconstruct_on_cuda():
    n = 64
    xs = _cn((3, n), 4).to(CUDA)
    op = GaussianMeasurement(n, 8 * n, streamed=True, block_rows=100, seed=3, dtype=F64).to(CUDA)
    rec = reconstruct(op, op(xs), "raf", max_iter=1000, progress=False, seed=0)
    assert (pt.metrics.relative_error(rec.x, xs, signal_dims=1) < 1e-6).all()
    ens = GaussianEnsemble(n, 8 * n, 3, complex=True, seeds=[5, 6, 7], dtype=F64).to(CUDA)
    rec = reconstruct(ens, ens(xs), "lbfgs", max_iter=1000, progress=False, seed=0)
    assert (pt.metrics.relative_error(rec.x, xs, signal_dims=1) < 1e-6).all()


def test_divergence_and_log_round_trip_on_cuda(tmp_path):
    op = GaussianMeasurement(32, 256, seed=1, dtype=F64).to(CUDA)
    y = op(_cn((2, 32), 2).to(CUDA))
    with pytest.raises(pt.DivergenceError):
        reconstruct(op, y, "wf", step=50.0, max_iter=200, progress=False, seed=0, safeguard=False)
    rec = reconstruct(op, y, "raf", max_iter=50, progress=False, seed=0)
    rec.log.to_json(tmp_path / "log.json")
    back = pt.TrainingLog.from_json(tmp_path / "log.json")
    assert torch.equal(back["loss"], rec.log["loss"].cpu())


# ----------------------------------------------------------------------------- theory, CLI
def test_simulate_on_cuda_matches_cpu():
    from phasetorch.theory import simulate
    kw = dict(dim=200, seeds=2, step=0.1, l2=0.1, steps=5, progress=False)
    a = simulate(4.0, **kw)
    b = simulate(4.0, device=CUDA, **kw)
    for col in ("overlap", "loss"):
        assert torch.allclose(b[col].cpu(), a[col], rtol=1e-8, atol=1e-10), col


def test_cli_reconstruct_on_cuda(tmp_path, capsys):
    import json
    from phasetorch import io as pio
    from phasetorch.app.cli import main
    from phasetorch.phantoms import shepp_logan
    image = pio.save_image(shepp_logan(32), tmp_path / "phantom.png", normalise=False)
    out = tmp_path / "rec"
    code = main(["reconstruct", str(image), "--device", CUDA.type, "--size", "16", "--masks", "6", "--iters", "200",
                 "--dtype", "float64", "--out", str(out), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rel_error"] < 1e-3 and summary["psnr"] > 50
    assert (out / "reconstruction.png").is_file()
