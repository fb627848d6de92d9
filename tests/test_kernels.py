"""The one-read C kernel of phasetorch.physics.kernels against the torch path.

Every comparison runs the same call twice, with ``PHASETORCH_KERNELS=0`` (the torch path) and with
the kernel, and checks that the kernel actually ran. Summation orders differ, so results agree to
rounding (norm-wise relative 2e-6 in float32/complex64, 1e-12 in float64/complex128), not bit for bit;
where a float32 result is ill-conditioned (the Poisson gradient's 1/|r|² factor), the kernel's error
against a float64 evaluation of the same float32 data must be within 2× the torch path's.
"""

import copy
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import phasetorch as pt
from phasetorch.losses import LOSSES, AmplitudeLoss, ReweightedAmplitudeLoss
from phasetorch.physics import GaussianMeasurement, MatrixMeasurement, kernels as K

F32, F64 = torch.float32, torch.float64
TOL = {F32: 2e-6, F64: 1e-12}

pytestmark = pytest.mark.skipif(not K.available(), reason=f"C kernel unavailable: {K.status()['reason']}")


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    monkeypatch.delenv(K.ENV_SWITCH, raising=False)


def both(monkeypatch, fn):
    """(torch path result, kernel result, kernel calls made)."""
    monkeypatch.setenv(K.ENV_SWITCH, "0")
    before = dict(K.CALLS)
    plain = fn()
    assert K.CALLS == before                            # disabled: the kernel never runs
    monkeypatch.delenv(K.ENV_SWITCH)
    kern = fn()
    return plain, kern, {k: K.CALLS[k] - before[k] for k in K.CALLS}


def _norm(t):
    return float(t.to(torch.complex128 if t.is_complex() else F64).abs().pow(2).sum().sqrt())


def close(a, b, rdt, what="", exact=None):
    """b (kernel) equals a (torch path) to TOL; or, given ``exact`` (a float64 evaluation), b is at
    most twice as far from it as a is."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.shape == b.shape and a.dtype == b.dtype, what
    err, ref = _norm(a - b), max(_norm(a), 1e-30)
    if err <= TOL[rdt] * ref:
        return
    assert exact is not None, f"{what}: relative error {err / ref:.2e}"
    e_plain, e_kern = _norm(a.to(exact.dtype) - exact), _norm(b.to(exact.dtype) - exact)
    assert e_kern <= 2 * e_plain + TOL[rdt] * ref, f"{what}: kernel error {e_kern / ref:.2e}, torch {e_plain / ref:.2e}"


def problem(n, m, B, complex_, rdt, seed=0, op=None):
    op = op if op is not None else GaussianMeasurement(n, m, complex=complex_, seed=seed, dtype=rdt)
    g = torch.Generator().manual_seed(seed + 1)
    shape = (n,) if B is None else (B, n)
    sdt = op.signal_dtype
    xs = torch.randn(*shape, dtype=sdt, generator=g)
    y = op(xs) + 0.05 * torch.randn(*shape[:-1], op.m, dtype=rdt, generator=g)   # some y < 0
    x = xs + 0.3 * torch.randn(*shape, dtype=sdt, generator=g)
    return op, x, y


def make_loss(name, op, l2=0.0):
    if name == "amplitude_reweighted":
        return ReweightedAmplitudeLoss(op, 5.0, l2=l2)
    return LOSSES[name](op, l2=l2)


# ---------------------------------------------------------------------------- losses, every preset's
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("complex_", [True, False])
@pytest.mark.parametrize("rdt", [F32, F64])
@pytest.mark.parametrize("B", [None, 1, 3])
def test_evaluate_matches_torch_path(monkeypatch, name, complex_, rdt, B):
    n, m = (5, 37) if B != 3 else (19, 101)              # odd sizes: vector tails, partial row blocks
    op, x, y = problem(n, m, B, complex_, rdt)
    loss = make_loss(name, op, l2=0.1)
    d = loss.prepare(y)
    a, b, calls = both(monkeypatch, lambda: loss.evaluate(x, d))
    ex = None
    if rdt == F32:                                         # the same float32 data, evaluated in float64
        op64 = copy.deepcopy(op).to(F64)
        ex = make_loss(name, op64, l2=0.1).evaluate(x.to(op64.signal_dtype), y.to(F64))
    if loss.separable_weights:
        assert calls["fused"] == 1 and calls["linear"] == 0    # one fused pass, nothing else
    else:
        assert calls["linear"] == 1 and calls["adjoint"] == 1  # truncated Poisson: K needs all of r first
    close(a.value, b.value, rdt, "value", ex and ex.value)
    close(a.grad, b.grad, rdt, "grad", ex and ex.grad)
    close(a.r, b.r, rdt, "r", ex and ex.r)
    close(a.weights, b.weights, rdt, "weights", ex and ex.weights)
    close(a.fields.a, b.fields.a, rdt, "|r|", ex and ex.fields.a)
    close(loss.residual(a.fields, d), loss.residual(b.fields, d), rdt, "residual")
    # the value-only call (line searches) and the gradient of the separate products
    va, vb, _ = both(monkeypatch, lambda: loss.value(x, d))
    close(va[0], vb[0], rdt, "value only")


@pytest.mark.parametrize("name", ["amplitude_truncated", "amplitude_reweighted", "poisson_truncated"])
def test_fixed_weights_take_the_fused_pass(monkeypatch, name):
    op, x, y = problem(7, 53, 2, True, F64)
    loss = make_loss(name, op)
    w = torch.rand(2, 53, dtype=F64, generator=torch.Generator().manual_seed(3))
    a, b, calls = both(monkeypatch, lambda: loss.value_and_grad(x, y, weights=w))
    assert calls["fused"] == 1
    for u, v, what in zip(a, b, ("value", "grad", "r", "weights")):
        close(u, v, F64, what)
    assert b[3] is w


def test_matrix_measurement_scale_image_signal_and_batch_shape(monkeypatch):
    g = torch.Generator().manual_seed(0)
    A = 0.3 * torch.randn(45, 12, dtype=torch.complex128, generator=g)     # entry_energy ≠ 1: r = Ax/√e
    op = MatrixMeasurement(A, signal_shape=(3, 4))
    assert abs(op.entry_energy - 1) > 0.5
    xs = torch.randn(2, 3, 3, 4, dtype=torch.complex128, generator=g)
    y = op(xs)
    x = xs + 0.2 * torch.randn(2, 3, 3, 4, dtype=torch.complex128, generator=g)
    for name in ("intensity", "amplitude", "poisson", "amplitude_reweighted"):
        loss = make_loss(name, op, l2=0.2)
        a, b, calls = both(monkeypatch, lambda: loss.evaluate(x, y))
        assert calls["fused"] == 1 and b.grad.shape == x.shape and b.r.shape == (2, 3, 45)
        close(a.value, b.value, F64, name)
        close(a.grad, b.grad, F64, name)
        close(a.r, b.r, F64, name)
    # one y shared by all signals
    loss = AmplitudeLoss(op)
    a, b, _ = both(monkeypatch, lambda: loss.evaluate(x, y[0, 0]))
    close(a.grad, b.grad, F64, "shared y")


def test_real_signal_of_a_complex_operator_and_subclass_safety(monkeypatch):
    op, _, y = problem(6, 40, 2, True, F64)
    x = torch.randn(2, 6, dtype=F64, generator=torch.Generator().manual_seed(5))   # real x, complex A
    loss = AmplitudeLoss(op)
    a, b, calls = both(monkeypatch, lambda: loss.evaluate(x, y))
    assert calls["fused"] == 1 and not b.grad.is_complex()
    close(a.grad, b.grad, F64, "real x")

    class Damped(AmplitudeLoss):                    # a changed gradient: the kernel's closed form must not be used
        def _dell(self, p, d):
            return 0.5 * super()._dell(p, d)
    damped = Damped(op)
    a, b, calls = both(monkeypatch, lambda: damped.evaluate(x, y))
    assert calls["fused"] == 0
    close(a.grad, b.grad, F64, "subclass")
    torch.testing.assert_close(b.grad, 0.5 * loss.evaluate(x, y).grad, rtol=1e-12, atol=0)


def test_autograd_is_untouched(monkeypatch):
    op, x, y = problem(5, 37, 2, True, F64)
    loss = AmplitudeLoss(op)
    xx = x.clone().requires_grad_(True)
    loss(xx, y).sum().backward()                    # differentiable: the torch products are used
    torch.testing.assert_close(xx.grad, loss.evaluate(x, y).grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,n", [(torch.complex64, 512), (torch.complex64, 700), (torch.complex128, 256),
                                     (F32, 1024), (F64, 1030)])
@pytest.mark.parametrize("B", [1, 3])
def test_rows_of_a_page_or_more(monkeypatch, dtype, n, B):
    """Rows of ≥ 4 KiB (n = 512 complex64, ...): the kernel places x's two forms and the accumulators
    off A's L1 sets and prefetches the next block as one stream; the results must not change."""
    complex_ = dtype.is_complex
    rdt = F32 if dtype in (torch.complex64, F32) else F64
    op, x, y = problem(n, 3 * 64 + 13, B, complex_, rdt)              # chunks, partial last block
    loss = make_loss("amplitude", op, l2=0.1)
    d = loss.prepare(y)
    a, b, calls = both(monkeypatch, lambda: loss.evaluate(x, d))
    assert calls["fused"] == 1
    for what in ("value", "grad", "r"):
        close(getattr(a, what), getattr(b, what), rdt, what)
    z = op.linear(x)
    a, b, calls = both(monkeypatch, lambda: (op.linear(x), op.adjoint(z)))
    assert calls["linear"] == 1 and calls["adjoint"] == 1
    close(a[0], b[0], rdt, "linear")
    close(a[1], b[1], rdt, "adjoint")


# ---------------------------------------------------------------------------- products and generic passes
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, F32, F64])
@pytest.mark.parametrize("B", [1, 4])
def test_products_and_generic_linear_adjoint(monkeypatch, dtype, B):
    complex_ = dtype.is_complex
    rdt = F32 if dtype in (torch.complex64, F32) else F64
    op, x, y = problem(13, 67, B, complex_, rdt)
    z = op.linear(x)
    a, b, calls = both(monkeypatch, lambda: (op.linear(x), op.adjoint(z)))
    assert calls["linear"] == 1 and calls["adjoint"] == 1
    close(a[0], b[0], rdt, "linear")
    close(a[1], b[1], rdt, "adjoint")
    t = torch.tanh(y)

    def fn(zz, index):                               # a spectral-style T(y)·z with no closed form
        return zz * (t if index is None else t[..., index])
    a, b, calls = both(monkeypatch, lambda: op.linear_adjoint(x, fn))
    assert calls["linear"] == 1 and calls["adjoint"] == 1    # two one-read passes
    close(a[0], b[0], rdt, "z")
    close(a[1], b[1], rdt, "Aᴴ fn(z)")
    # the same map as a PointwiseMap (SCALE) in one fused pass
    A = op.matrix()
    zk, gk = K.fused(A, x.reshape(B, -1), K.PointwiseMap(K.Map.SCALE, t), (B,))
    close(a[1].reshape(B, -1), gk, rdt, "fused SCALE")
    zk, gk = K.fused(A, x.reshape(B, -1), K.PointwiseMap(K.Map.SCALE), (B,))
    close(op.adjoint(op.linear(x)).reshape(B, -1), gk, rdt, "fused AᴴA x")


def test_real_matrix_with_complex_signal_and_non_contiguous_matrix_keep_torch(monkeypatch):
    op, _, y = problem(5, 30, 2, False, F64)
    xc = torch.randn(2, 5, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    a, b, calls = both(monkeypatch, lambda: AmplitudeLoss(op).evaluate(xc, y))
    assert calls["fused"] == calls["linear"] == calls["adjoint"] == 0      # no dense pass: torch's products
    assert calls["map"] == 1                                                # (the pointwise map in C on z)
    close(a.grad, b.grad, F64, "grad")
    close(a.value, b.value, F64, "value")
    At = torch.randn(9, 30, dtype=F64, generator=torch.Generator().manual_seed(4)).T    # a transposed view
    mop = MatrixMeasurement(At)
    x = torch.randn(9, dtype=F64)
    a, b, calls = both(monkeypatch, lambda: mop.linear(x))
    assert calls["linear"] == (1 if mop.matrix().is_contiguous() else 0)
    close(a, b, F64, "non-contiguous")


def test_large_batches_keep_torch(monkeypatch):
    op, x, y = problem(5, 37, K.MAX_BATCH + 1, True, F64)
    a, b, calls = both(monkeypatch, lambda: AmplitudeLoss(op).evaluate(x, y))
    assert calls["fused"] == calls["linear"] == calls["adjoint"] == 0
    close(a.grad, b.grad, F64, "grad")


def test_results_do_not_depend_on_the_thread_count():
    op, x, y = problem(64, 4096, 2, True, F64)      # large enough to run in parallel (16 chunks)
    loss = AmplitudeLoss(op)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = loss.evaluate(x, y)
        torch.set_num_threads(max(2, threads))
        b = loss.evaluate(x, y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.grad, b.grad) and torch.equal(a.value, b.value) and torch.equal(a.r, b.r)


# ---------------------------------------------------------------------------- reconstruct
@pytest.mark.parametrize("preset", ["wf", "raf", "lbfgs", "taf", "twf"])
def test_reconstruct_equals_the_torch_path(monkeypatch, preset):
    op, _, _ = problem(16, 128, None, True, F64)
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(2, 16, dtype=torch.complex128, generator=g)
    y = op(xs)
    a, b, calls = both(monkeypatch, lambda: pt.reconstruct(op, y, preset, max_iter=60, progress=False, seed=0))
    assert sum(calls.values()) > 0
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
    assert torch.equal(a.iterations, b.iterations)


@pytest.mark.parametrize("preprocessing", ["optimal", "mm", "trimmed"])
def test_spectral_start_takes_one_fused_pass_per_product(monkeypatch, preprocessing):
    """The spectral start's Gram products T ⊙ (A v) ↦ Aᴴ(T ⊙ A v) run as one fused kernel pass each
    (the weighting as a closed-form map) and give the torch path's start."""
    op, _, _ = problem(16, 128, None, True, F64)
    xs = torch.randn(2, 16, dtype=torch.complex128, generator=torch.Generator().manual_seed(3))
    y = op(xs)
    a, b, calls = both(monkeypatch, lambda: pt.spectral_init(op, y, preprocessing=preprocessing, seed=0))
    assert calls["fused"] > 5 and calls["linear"] == calls["adjoint"] == 0
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["intensity", "amplitude_truncated", "amplitude_reweighted"])
@pytest.mark.parametrize("complex_", [True, False])
def test_ensemble_members_take_the_fused_pass_of_a_single_operator(monkeypatch, name, complex_):
    """GaussianEnsemble evaluations run the fused kernel member by member: each member's value,
    gradient, r and weights equal those of its stand-alone operator bit for bit (a batch of 2 signals
    per member here), and the torch path (two batched products) agrees to rounding."""
    ens = pt.GaussianEnsemble(12, 96, 3, complex=complex_, seeds=[4, 5, 6], dtype=F64)
    g = torch.Generator().manual_seed(2)
    dt = torch.complex128 if complex_ else F64
    x = torch.randn(2, 3, 12, generator=g, dtype=F64).to(dt)
    y = ens(torch.randn(2, 3, 12, generator=g, dtype=F64).to(dt))
    plain, ev, calls = both(monkeypatch, lambda: LOSSES[name](ens).evaluate(x, y))
    assert calls["fused"] == 3
    for k in range(3):
        one = LOSSES[name](ens.member(k)).evaluate(x[:, k], y[:, k])
        for a, b in ((ev.value[:, k], one.value), (ev.grad[:, k], one.grad), (ev.r[:, k], one.r)):
            assert torch.equal(a, b)
        if one.weights is not None:
            assert torch.equal(ev.weights[:, k], one.weights)
    torch.testing.assert_close(ev.grad, plain.grad, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ev.value, plain.value, rtol=1e-12, atol=0)


def test_reconstruct_float32(monkeypatch):
    op, _, _ = problem(16, 128, None, True, F32)
    xs = torch.randn(16, dtype=torch.complex64, generator=torch.Generator().manual_seed(7))
    y = op(xs)
    a, b, calls = both(monkeypatch, lambda: pt.reconstruct(op, y, "raf", max_iter=40, progress=False, seed=0))
    assert calls["fused"] > 0
    assert float((a.x - b.x).norm() / a.x.norm()) < 1e-4                # 40 iterations of float32 rounding
    assert pt.metrics.relative_error(b.x, xs) < 2 * pt.metrics.relative_error(a.x, xs) + 1e-4


# ---------------------------------------------------------------------------- building, caching, fallback
def test_status_and_disabling(monkeypatch):
    st = K.status()
    assert st["path"] == "c-kernel" and st["reason"] is None and Path(st["library"]).is_file()
    assert Path(st["library"]).parent == K.cache_dir()
    monkeypatch.setenv(K.ENV_SWITCH, "0")
    assert K.status()["path"] == "torch" and "PHASETORCH_KERNELS" in K.status()["reason"]
    assert not K.available() and not K.usable(GaussianMeasurement(4, 8).matrix())


def _fresh(monkeypatch, tmp_path, **env):
    monkeypatch.setenv(K.ENV_CACHE, str(tmp_path / "cache"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    K.reset()


def test_missing_compiler_falls_back_to_torch(monkeypatch, tmp_path):
    op, x, y = problem(5, 37, 2, True, F64)
    try:
        _fresh(monkeypatch, tmp_path, CC=str(tmp_path / "no-such-cc"))
        st = K.status()
        assert st["path"] == "torch" and "no C compiler" in st["reason"]
        before = dict(K.CALLS)
        ev = AmplitudeLoss(op).evaluate(x, y)                 # works, through torch
        assert K.CALLS == before and torch.isfinite(ev.grad).all()
    finally:
        monkeypatch.undo()
        K.reset()
    assert K.available()


def test_failed_compilation_falls_back_to_torch(monkeypatch, tmp_path):
    bad = tmp_path / "broken.c"
    bad.write_text("this is not C\n")
    try:
        _fresh(monkeypatch, tmp_path)
        monkeypatch.setattr(K, "SOURCE", bad)
        st = K.status()
        assert st["path"] == "torch" and "failed" in st["reason"]
        assert not list((tmp_path / "cache").glob("*.tmp*"))      # no temporary file left behind
    finally:
        monkeypatch.undo()
        K.reset()
    assert K.available()


def test_concurrent_builds_are_safe(tmp_path):
    cc = K.compiler()
    target = tmp_path / "cache" / "fused_dense-test.so"
    errors = []

    def build():
        try:
            K.build(cc, target)
        except Exception as err:  # noqa: BLE001 - collected and reported below
            errors.append(err)
    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]       # one library, no temporaries
    # two processes compiling into one fresh cache at once both get a working kernel
    env = {**os.environ, K.ENV_CACHE: str(tmp_path / "shared")}
    code = "from phasetorch.physics import kernels as K; print(K.status()['path'])"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert outs == ["c-kernel", "c-kernel"]
    files = list((tmp_path / "shared").iterdir())
    assert len(files) == 1 and files[0].suffix == ".so"


def test_cache_key_changes_with_the_source(monkeypatch, tmp_path):
    cc = K.compiler()
    a = K.library_path(cc)
    src = tmp_path / "k.c"
    src.write_bytes(K.SOURCE.read_bytes() + b"\n/* changed */\n")
    monkeypatch.setattr(K, "SOURCE", src)
    assert K.library_path(cc) != a
    monkeypatch.setenv(K.ENV_CACHE, str(tmp_path / "elsewhere"))
    assert K.library_path(cc).parent == tmp_path / "elsewhere"


# ---------------------------------------------------------------------------- the map alone (FFT-based operators)
def _fft_ops(rdt):
    return {"cdp": pt.CodedDiffraction((6, 5), 3, seed=1, dtype=rdt),
            "fourier": pt.OversampledFourier((5, 4), 2, dtype=rdt),
            "structured": pt.StructuredRandom((7,), 2, oversampling=3, seed=2, dtype=rdt),
            "cdp-1d": pt.CodedDiffraction((301,), 2, seed=3, dtype=rdt)}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("rdt", [F32, F64])
@pytest.mark.parametrize("opname", ["cdp", "fourier", "structured", "cdp-1d"])
@pytest.mark.parametrize("B", [None, 3])
def test_fft_operators_run_the_map_in_one_pass(monkeypatch, name, rdt, opname, B):
    """An operator without a stored A runs its products in torch and the loss's pointwise map as one
    ``pt_map_pass`` over z (r = c·z written in place): values, gradient, r, |r|, weights and residual
    equal the torch path's to rounding, for every loss, batch shape and dtype."""
    op = _fft_ops(rdt)[opname]
    g = torch.Generator().manual_seed(5)
    shape = (*(() if B is None else (B,)), *op.signal_shape)
    x = torch.randn(*shape, dtype=op.signal_dtype, generator=g)
    xt = torch.randn(*shape, dtype=op.signal_dtype, generator=g)
    y = op(xt) + 0.05 * torch.randn(op(xt).shape, dtype=rdt, generator=g)      # noisy: some y < 0
    loss = make_loss(name, op, l2=0.1)
    d = loss.prepare(y)
    a, b, calls = both(monkeypatch, lambda: loss.evaluate(x, d))
    assert calls["fused"] == calls["linear"] == calls["adjoint"] == 0
    assert calls["map"] == (1 if loss.separable_weights else 0)       # truncated Poisson needs all of r first
    ex = None
    if rdt == F32:
        op64 = copy.deepcopy(op).to(F64)
        ex = make_loss(name, op64, l2=0.1).evaluate(x.to(op64.signal_dtype), y.to(F64))
    close(a.value, b.value, rdt, "value", ex and ex.value)
    close(a.grad, b.grad, rdt, "grad", ex and ex.grad)
    close(a.r, b.r, rdt, "r", ex and ex.r)
    close(a.weights, b.weights, rdt, "weights", ex and ex.weights)
    close(a.fields.a, b.fields.a, rdt, "|r|", ex and ex.fields.a)
    assert (b.fields._res is not None) == loss.separable_weights        # the residual summed in the pass
    close(loss.residual(a.fields, d), loss.residual(b.fields, d), rdt, "residual")


def test_apply_map_outputs_shared_data_and_threads():
    """apply_map itself: a2, the weights and Σ w ℓ against torch, data shared by every signal or one row
    each, fixed weights, z left alone without ``rescale`` and overwritten by c·z with it, and results that
    do not depend on the thread count (fixed work items, summed in order)."""
    g = torch.Generator().manual_seed(9)
    z = torch.randn(2, 3, 40000, dtype=torch.complex128, generator=g)         # > PT_MAP_CHUNK: several items
    q = torch.rand(3, 40000, dtype=F64, generator=g)                           # shared by both signals
    c = 1.7
    spec = K.PointwiseMap(K.Map.REWEIGHTED_AMPLITUDE, q, scale=c, p1=0.8)
    z0 = z.clone()
    v = K.apply_map(z, spec, 2)
    assert torch.equal(z, z0) and spec.done and not spec.rescaled
    r = c * z
    a = r.abs()
    w = a / (a + 0.8 * q)
    torch.testing.assert_close(spec.a2, r.real.square() + r.imag.square(), rtol=1e-13, atol=0)
    torch.testing.assert_close(spec.weights_out, w, rtol=1e-13, atol=0)
    torch.testing.assert_close(v, w * (r - q * r / a), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(spec.total, (w * 0.5 * (a - q).square()).sum((-2, -1)), rtol=1e-12, atol=0)
    torch.testing.assert_close(spec.residual_sum, (a - q).square().sum((-2, -1)), rtol=1e-12, atol=0)
    yq = q - 0.3                                                               # intensities, some negative
    spec_i = K.PointwiseMap(K.Map.INTENSITY, yq, scale=c)
    K.apply_map(z, spec_i, 2)
    torch.testing.assert_close(spec_i.residual_sum, (a - yq.clamp_min(0).sqrt()).square().sum((-2, -1)),
                               rtol=1e-12, atol=0)
    fixed = torch.rand(2, 3, 40000, dtype=F64, generator=g)                    # one row per signal
    spec2 = K.PointwiseMap(K.Map.AMPLITUDE, q, scale=c, weights=fixed, rescale=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1 = z.clone()
        v1 = K.apply_map(z1, spec2, 2, rescale=True)
        t1 = spec2.total.clone()
        torch.set_num_threads(max(2, threads))
        z2 = z.clone()
        v2 = K.apply_map(z2, spec2, 2, rescale=True)
    finally:
        torch.set_num_threads(threads)
    assert spec2.rescaled and torch.equal(z1, r) and torch.equal(z1, z2)    # r = c z, the REAL product
    assert torch.equal(v1, v2) and torch.equal(t1, spec2.total)
    torch.testing.assert_close(v1, fixed * (r - q * r / a), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="contiguous"):
        K.apply_map(z.transpose(-1, -2), spec2, 2, rescale=True)


def test_map_keeps_autograd_and_the_torch_path_where_it_must(monkeypatch):
    """No map pass when autograd records through z (the loss's forward), on non-CPU tensors, or with the
    kernels off; and the differentiable loss value still equals the closed-form evaluation."""
    op = pt.CodedDiffraction((6, 5), 3, seed=1, dtype=F64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, dtype=torch.complex128, generator=g, requires_grad=True)
    y = op(torch.randn(6, 5, dtype=torch.complex128, generator=g))
    loss = AmplitudeLoss(op)
    before = K.CALLS["map"]
    val = loss(x, y)
    val.backward()
    assert K.CALLS["map"] == before
    ev = loss.evaluate(x.detach(), y)
    assert K.CALLS["map"] == before + 1
    torch.testing.assert_close(ev.grad, x.grad, rtol=1e-10, atol=1e-12)     # autograd = the closed form
    torch.testing.assert_close(ev.value, val.detach(), rtol=1e-12, atol=0)
    assert not K.map_applies(torch.zeros(3, device="meta"), K.PointwiseMap(K.Map.SCALE))
    assert not K.map_applies(torch.zeros(3), None)


@pytest.mark.parametrize("preset", ["wf", "raf", "taf", "lbfgs", "auto"])
def test_cdp_reconstruct_with_the_map_equals_the_torch_path(monkeypatch, preset):
    op = pt.CodedDiffraction((8, 8), 4, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(2, 8, 8, dtype=torch.complex128, generator=g)
    y = op(xs)
    a, b, calls = both(monkeypatch, lambda: pt.reconstruct(op, y, preset, max_iter=80, progress=False, seed=0))
    assert calls["map"] > 0
    err = torch.linalg.vector_norm((a.x - b.x).reshape(2, -1), dim=-1) / torch.linalg.vector_norm(a.x.reshape(2, -1), dim=-1)
    assert err.max() <= 1e-6 and torch.equal(a.status, b.status)


# ---------------------------------------------------------------------------- products with a bank of rows
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("B,k,D", [(1, 22, 40000), (3, 7, 1029), (2, 1, 17)])
def test_bank_products_match_torch_and_do_not_depend_on_threads_or_batch(monkeypatch, dtype, B, k, D):
    """rows_dots = Z Vᵀ and rows_comb = ±(γg + Zᵀc) in double against the kernels, on rows that are a
    slice of a larger bank (the direction's layout), with vectors that are rows of other tensors (no
    stacking), D past a run, an item and not a multiple of the vector width; the same bits on one thread
    and per sample of a batch."""
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    g = torch.Generator().manual_seed(B * 100 + k)
    bank = torch.randn(B, k + 3, D, generator=g, dtype=F64).to(dtype)
    Z = bank[:, 1:k + 1]
    other = torch.randn(B, 4, D, generator=g, dtype=F64).to(dtype)
    V = [other[:, 2], torch.randn(B, D, generator=g, dtype=F64).to(dtype), other[:, 0], bank[:, 0]]
    scale = math.sqrt(D)
    rtol, atol = (1e-5, 1e-5 * scale) if dtype == F32 else (1e-12, 1e-12 * scale)
    before = K.CALLS["rows"]
    for c in range(1, 5):
        assert K.rows_apply(Z, *V[:c])
        out = K.rows_dots(Z, *V[:c])
        assert out.shape == (B, k, c) and out.dtype == F64
        ref = Z.double() @ torch.stack(V[:c], 1).double().mT
        torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    coef = torch.randn(B, k, generator=g, dtype=F64).to(dtype)
    gamma = torch.rand(B, generator=g, dtype=F64) + 0.5
    gv = V[1]
    for negate in (False, True):
        q = K.rows_comb(Z, coef, gamma, gv, negate=negate)
        ref = gamma[:, None] * gv.double() + (Z.double().mT @ coef.double()[..., None])[..., 0]
        assert q.dtype == dtype and q.shape == (B, D)
        torch.testing.assert_close(q.double(), -ref if negate else ref, rtol=rtol, atol=atol * math.sqrt(k))
    assert K.CALLS["rows"] == before + 6
    out, q = K.rows_dots(Z, *V[:3]), K.rows_comb(Z, coef, gamma, gv, negate=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(K.rows_dots(Z, *V[:3]), out) and torch.equal(K.rows_comb(Z, coef, gamma, gv, True), q)
    finally:
        torch.set_num_threads(threads)
    b = B - 1
    assert torch.equal(K.rows_dots(Z[b:b + 1], *(v[b:b + 1] for v in V[:3])), out[b:b + 1])
    assert torch.equal(K.rows_comb(Z[b:b + 1], coef[b:b + 1], gamma[b:b + 1], gv[b:b + 1], True), q[b:b + 1])


def test_bank_products_refuse_what_they_cannot_take(monkeypatch):
    Z = torch.randn(2, 5, 64, dtype=F64)
    v = torch.randn(2, 64, dtype=F64)
    assert not K.rows_apply(Z, v)                               # below ROWS_MIN: torch's call is cheaper
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    assert K.rows_apply(Z, v)
    assert not K.rows_apply(Z, v.float())                       # dtypes differ
    assert not K.rows_apply(Z.to(torch.complex128), v.to(torch.complex128))   # complex: the caller's real view
    assert not K.rows_apply(Z, v[:1])                           # batch differs
    assert not K.rows_apply(Z, torch.randn(2, 128, dtype=F64)[:, ::2])   # stride along D
    assert not K.rows_apply(Z.mT.contiguous().mT, v)            # the bank's rows must run along D
    assert not K.rows_apply(torch.zeros(2, 5, 64, device="meta"), v)
    vg = v.clone().requires_grad_(True)
    assert not K.rows_apply(Z, vg)                              # autograd records through it
    with torch.no_grad():
        assert K.rows_apply(Z, vg)
    with pytest.raises(ValueError, match="1 to 4 vectors"):
        K.rows_dots(Z, v, v, v, v, v)
    monkeypatch.setenv(K.ENV_SWITCH, "0")
    assert not K.rows_apply(Z, v)


def test_lbfgs_with_the_bank_kernels_equals_the_torch_path(monkeypatch):
    """A CDP L-BFGS run through the bank kernels (ROWS_MIN lowered so that a small problem takes them)
    against the same run with torch's batched products: the same decisions, iterates within 1e-9; and a
    batch of two equals its single runs."""
    from phasetorch.optim import lbfgs
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    op = pt.CodedDiffraction((16, 16), 4, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(2, 16, 16, dtype=torch.complex128, generator=g)
    y = op(xs)

    def run(yy):
        return pt.reconstruct(op, yy, "lbfgs", max_iter=60, progress=False, seed=0)

    before = K.CALLS["rows"]
    b = run(y)
    assert K.CALLS["rows"] > before + 60
    monkeypatch.setattr(lbfgs.kernels, "rows_apply", lambda *a: False)
    before = K.CALLS["rows"]
    a = run(y)
    assert K.CALLS["rows"] == before                            # the torch path
    monkeypatch.undo()
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    assert torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)
    err = torch.linalg.vector_norm((a.x - b.x).reshape(2, -1), dim=-1) / torch.linalg.vector_norm(a.x.reshape(2, -1), dim=-1)
    assert err.max() <= 1e-9
    for i in range(2):
        s = run(y[i:i + 1])
        torch.testing.assert_close(s.x[0], b.x[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_complex_bank_combination_matches_torch(monkeypatch, dtype):
    """rows_comb with complex coefficients on the real views: w − Σ c_k v_k of complex vectors."""
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    cdt = torch.complex128 if dtype == F64 else torch.complex64
    g = torch.Generator().manual_seed(9)
    V = torch.randn(2, 7, 3001, generator=g, dtype=torch.complex128).to(cdt)[:, 1:6]
    w = torch.randn(2, 3001, generator=g, dtype=torch.complex128).to(cdt)
    c = torch.randn(2, 5, generator=g, dtype=torch.complex128).to(cdt)
    Z, wr = torch.view_as_real(V).flatten(-2), torch.view_as_real(w).flatten(-2)
    q = K.rows_comb(Z, -c, torch.ones(2, dtype=F64), wr)
    ref = w.to(torch.complex128) - (c.to(torch.complex128).unsqueeze(1) @ V.to(torch.complex128)).squeeze(1)
    tol = 1e-5 if dtype == F32 else 1e-13
    torch.testing.assert_close(torch.view_as_complex(q.view(2, -1, 2)).to(torch.complex128), ref, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="whole"):
        K.rows_comb(Z[..., 1:], c, torch.ones(2, dtype=F64), wr[..., 1:])


@pytest.mark.parametrize("complex_", [True, False])
def test_lanczos_with_the_bank_kernels_equals_the_torch_path(monkeypatch, complex_):
    """The spectral start through the bank kernels (CGS2 projections and updates; ROWS_MIN lowered) against
    torch's products: the same steps, eigenvalue and vector to rounding."""
    monkeypatch.setattr(K, "ROWS_MIN", 0)
    if complex_:
        op = pt.CodedDiffraction((16, 16), 4, seed=0, dtype=F64)
        xs = torch.randn(2, 16, 16, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    else:
        op = GaussianMeasurement(40, 240, complex=False, seed=0, dtype=F64)
        xs = torch.randn(2, 40, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = op(xs)
    a, b, calls = both(monkeypatch, lambda: pt.spectral_init(op, y, seed=0, return_info=True))
    assert calls["rows"] > 0
    (xa, ia), (xb, ib) = a, b
    assert torch.equal(ia.matvecs, ib.matvecs) and torch.equal(ia.converged, ib.converged)
    torch.testing.assert_close(ia.eigenvalue, ib.eigenvalue, rtol=1e-12, atol=0)
    err = torch.linalg.vector_norm((xa - xb).reshape(2, -1), dim=-1) / torch.linalg.vector_norm(xa.reshape(2, -1), dim=-1)
    assert err.max() <= 1e-8


@pytest.mark.parametrize("code", [K.Map.AMPLITUDE, K.Map.INTENSITY, K.Map.SCALE])
def test_vectorised_map_items_give_the_scalar_loops_bits(code):
    """Complex z without fixed weights takes the vectorised items of pt_map_pass; unit fixed weights take the
    scalar loop with the same arithmetic (×1 is exact in float64): v, |r|² and r = c z agree bit for bit,
    the sums (in another order) to rounding; the vectorised sums do not depend on the thread count."""
    g = torch.Generator().manual_seed(11)
    z = torch.randn(3, 20001, dtype=torch.complex128, generator=g)             # items of 8192 and a tail
    q = torch.rand(3, 20001, dtype=F64, generator=g) + (0.0 if code != K.Map.INTENSITY else -0.2)
    fast = K.PointwiseMap(code, q, scale=1.3)
    scalar = K.PointwiseMap(code, q, scale=1.3, weights=torch.ones_like(q))
    za, zb = z.clone(), z.clone()
    va = K.apply_map(za, fast, 1, rescale=True)
    vb = K.apply_map(zb, scalar, 1, rescale=True)
    assert torch.equal(va, vb) and torch.equal(fast.a2, scalar.a2) and torch.equal(za, zb)
    torch.testing.assert_close(fast.total, scalar.total, rtol=1e-13, atol=0)
    if fast.residual_sum is not None:
        torch.testing.assert_close(fast.residual_sum, scalar.residual_sum, rtol=1e-13, atol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = K.PointwiseMap(code, q, scale=1.3)
        K.apply_map(z.clone(), one, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.total, fast.total)
