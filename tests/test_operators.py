import math
import warnings

import pytest
import torch

from phasetorch.physics import (CodedDiffraction, GaussianMeasurement, LinkMeasurement, MatrixMeasurement,
                                  OversampledFourier, StructuredRandom, load_operator, save_operator)
from phasetorch.physics import links
from phasetorch.physics.io import REGISTRY, operator_from_config

F64 = torch.float64
C128 = torch.complex128


def _matrix(seed, m, n, complex_, dtype=F64, signal_shape=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, n, 2, generator=g, dtype=F64)
    A = torch.view_as_complex(A).to(C128 if dtype == F64 else torch.complex64) if complex_ else A[..., 0].to(dtype)
    return MatrixMeasurement(A, signal_shape=signal_shape)


# name -> factory(seed, dtype); small sizes keep the suite fast
FACTORIES = {
    "gauss_c": lambda s, d: GaussianMeasurement(6, 20, complex=True, seed=s, dtype=d),
    "gauss_r": lambda s, d: GaussianMeasurement(6, 20, complex=False, seed=s, dtype=d),
    "gauss_img_streamed": lambda s, d: GaussianMeasurement((2, 3), 17, seed=s, streamed=True, block_rows=5, dtype=d),
    "matrix_c": lambda s, d: _matrix(s, 15, 6, True, d),
    "matrix_r_img": lambda s, d: _matrix(s, 14, 6, False, d, signal_shape=(2, 3)),
    "cdp_1d_octanary": lambda s, d: CodedDiffraction(8, 3, "octanary", seed=s, dtype=d),
    "cdp_2d_binary": lambda s, d: CodedDiffraction((4, 5), 2, "binary", seed=s, dtype=d),
    "cdp_2d_uniform": lambda s, d: CodedDiffraction((4, 5), 2, "uniform", seed=s, dtype=d),
    "cdp_2d_gaussian": lambda s, d: CodedDiffraction((3, 4), 2, "gaussian", seed=s, dtype=d),
    "structured_1d": lambda s, d: StructuredRandom(8, n_layers=2, oversampling=2, seed=s, dtype=d),
    "structured_2d": lambda s, d: StructuredRandom((4, 5), n_layers=3, oversampling=(2, 1), seed=s, dtype=d),
    "fourier_1d": lambda s, d: OversampledFourier(7, 2, dtype=d),
    "fourier_2d": lambda s, d: OversampledFourier((4, 5), (2, 3), dtype=d),
}
RANDOM = [k for k in FACTORIES if not k.startswith(("fourier", "matrix"))]


def make(name, seed=0, dtype=F64):
    return FACTORIES[name](seed, dtype)


def rand(shape, complex_, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    if complex_:
        return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=dtype))
    return torch.randn(*shape, generator=g, dtype=dtype)


def dense(op):
    """The matrix of op.linear, column by column (independent of the operator's own matrix)."""
    eye = torch.eye(op.n, dtype=C128 if op.is_complex else F64).reshape(op.n, *op.signal_shape)
    return op.linear(eye).reshape(op.n, op.m).T


def inner(a, b):
    return (a.conj() * b).sum()


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("complex_signal", [False, True])
def test_adjoint_identity(name, complex_signal):
    op = make(name)
    x = rand(op.signal_shape, complex_signal, 1)
    for z_complex in ([True] if op.is_complex else [False, True]):
        z = rand(op.measurement_shape, z_complex, 2)
        Ax, Ahz = op.linear(x), op.adjoint(z)
        assert Ax.shape == op.measurement_shape and Ahz.shape == op.signal_shape
        lhs, rhs = inner(Ax, z), inner(x, Ahz)
        assert abs(lhs - rhs) / (Ax.norm() * z.norm()) < 1e-10


@pytest.mark.parametrize("name", FACTORIES)
def test_forward_is_squared_modulus_and_matches_dense_matrix(name):
    op = make(name)
    x = rand(op.signal_shape, True, 3)
    z = op.linear(x)
    assert torch.allclose(op(x), z.abs() ** 2, rtol=1e-12, atol=1e-12)
    assert op(x).dtype == F64 and (op(x) >= 0).all()
    A = dense(op).to(C128)
    assert torch.allclose(z.reshape(-1), A @ x.reshape(-1), atol=1e-12)
    w = rand(op.measurement_shape, True, 4)
    assert torch.allclose(op.adjoint(w).reshape(-1), A.mH @ w.reshape(-1), atol=1e-12)


def test_fourier_operators_match_explicit_dft():
    n, N = 5, 10
    jk = torch.outer(torch.arange(N, dtype=F64), torch.arange(n, dtype=F64))
    Fpad = torch.polar(torch.full_like(jk, N ** -0.5), -2 * math.pi * jk / N)
    assert torch.allclose(dense(OversampledFourier(n, 2, dtype=F64)), Fpad, atol=1e-12)

    op = CodedDiffraction(n, 3, "uniform", seed=4, dtype=F64)
    F = torch.polar(torch.full((n, n), n ** -0.5, dtype=F64),
                    -2 * math.pi * torch.outer(torch.arange(n, dtype=F64), torch.arange(n, dtype=F64)) / n)
    expect = torch.cat([F @ torch.diag(d) for d in op.masks()], 0)
    assert torch.allclose(dense(op), expect, atol=1e-12)

    sr = StructuredRandom(n, n_layers=2, oversampling=2, seed=1, dtype=F64)
    FN = torch.polar(torch.full((N, N), N ** -0.5, dtype=F64),
                     -2 * math.pi * torch.outer(torch.arange(N, dtype=F64), torch.arange(N, dtype=F64)) / N)
    D1, D2 = sr.diagonals()
    expect = (FN @ torch.diag(D2) @ FN @ torch.diag(D1))[:, :n]
    assert torch.allclose(dense(sr), expect, atol=1e-12)


@pytest.mark.parametrize("name", FACTORIES)
def test_batch_equals_single_calls(name):
    op = make(name)
    x = rand((2, 3, *op.signal_shape), True, 5)
    z = rand((2, 3, *op.measurement_shape), op.is_complex, 6)
    Xb, Zb, Yb = op.linear(x), op.adjoint(z), op(x)
    assert Xb.shape == (2, 3, *op.measurement_shape) and Zb.shape == (2, 3, *op.signal_shape)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(Xb[i, j], op.linear(x[i, j]), rtol=1e-12, atol=1e-12)
            assert torch.allclose(Zb[i, j], op.adjoint(z[i, j]), rtol=1e-12, atol=1e-12)
            assert torch.allclose(Yb[i, j], op(x[i, j]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", RANDOM)
def test_seed_reproducibility(name):
    x = rand(make(name).signal_shape, True, 7)
    a, b, c = make(name, seed=11), make(name, seed=11), make(name, seed=12)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    # generator= instead of seed=: same generator state, same operator
    cls = type(a)
    kwargs = {k: v for k, v in a.config().items() if k not in ("type", "seed", "dtype")}
    ga = cls(**kwargs, generator=torch.Generator().manual_seed(3))
    gb = cls(**kwargs, generator=torch.Generator().manual_seed(3))
    xf = x.to(torch.complex64)
    assert torch.equal(ga(xf), gb(xf))
    with pytest.raises(ValueError, match="either seed= or generator="):
        cls(**kwargs, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("name", FACTORIES)
def test_dtype_moves_keep_complex_parts(name):
    op32 = make(name, seed=5, dtype=torch.float32)
    op64 = make(name, seed=5, dtype=F64)
    x = rand(op64.signal_shape, True, 8)
    with warnings.catch_warnings():  # torch warns that complex *modules* are experimental
        warnings.simplefilter("ignore", UserWarning)
        # a complex dtype means its real dtype, also when the move comes through a parent module
        via_parent = torch.nn.ModuleList([make(name, seed=5, dtype=torch.float32)]).to(torch.complex128)[0]
    for moved in (make(name, seed=5, dtype=torch.float32).to(F64), make(name, seed=5, dtype=torch.float32).double(),
                  make(name, seed=5, dtype=torch.float32).to(torch.complex128), via_parent):
        assert moved.real_dtype == F64 and moved.signal_dtype == (C128 if moved.is_complex else F64)
        for key in getattr(moved, "_complex_buffers", ()):
            assert moved.buffer(key).dtype == C128
        y = moved(x)
        assert y.dtype == F64
        # float32-stored random parts, float64 arithmetic: close to the float64 operator
        assert torch.allclose(y, op64(x), rtol=1e-5, atol=1e-6 * float(y.abs().max()))
    back = op64.float()
    assert back.real_dtype == torch.float32 and back(x.to(torch.complex64)).dtype == torch.float32
    assert torch.allclose(op32(x.to(torch.complex64)), back(x.to(torch.complex64)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FACTORIES)
def test_save_load_round_trip(name, tmp_path):
    g = torch.Generator().manual_seed(42)
    op = make(name, seed=int(torch.randint(0, 1000, (1,), generator=g)), dtype=torch.float32)
    path = tmp_path / f"{name}.pt"
    save_operator(op, path)
    loaded = load_operator(path)
    assert type(loaded) is type(op) and loaded.config() == op.config()
    assert loaded.real_dtype == op.real_dtype
    sd_a, sd_b = op.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    x = rand(op.signal_shape, True, 9, dtype=torch.float32)
    assert torch.equal(op(x), loaded(x))
    assert loaded.entry_energy == op.entry_energy


def test_save_load_keeps_parts_not_reproducible_from_config(tmp_path):
    op = CodedDiffraction((3, 4), 2, seed=0, dtype=F64)
    with torch.no_grad():
        op.D.mul_(-1)  # stored state differs from what the seed would give
    save_operator(op, tmp_path / "op.pt")
    loaded = load_operator(tmp_path / "op.pt")
    assert torch.equal(loaded.masks(), op.masks())
    assert not torch.equal(loaded.masks(), CodedDiffraction((3, 4), 2, seed=0, dtype=F64).masks())
    A = torch.randn(9, 4, dtype=C128)
    mm = MatrixMeasurement(A)
    save_operator(mm, tmp_path / "mm.pt")
    loaded = load_operator(tmp_path / "mm.pt")
    assert torch.equal(loaded.matrix(), A)
    assert loaded.entry_energy == pytest.approx(float(A.abs().square().mean()), rel=1e-12)


def test_link_measurement_round_trip(tmp_path):
    op = LinkMeasurement(CodedDiffraction(6, 2, seed=3, dtype=F64), "amplitude")
    save_operator(op, tmp_path / "link.pt")
    loaded = load_operator(tmp_path / "link.pt")
    x = rand((6,), True, 1)
    assert isinstance(loaded, LinkMeasurement) and loaded.link.name == "amplitude"
    assert torch.equal(loaded(x), op(x))
    noisy = LinkMeasurement(OversampledFourier(4, dtype=F64), links.noisy_intensity(0.5))
    save_operator(noisy, tmp_path / "noisy.pt")
    assert load_operator(tmp_path / "noisy.pt").link.sigma == 0.5


def test_load_operator_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_operator(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_operator(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a phasetorch operator file"):
        load_operator(other)
    unknown = tmp_path / "unknown.pt"
    torch.save({"format": "phasetorch-operator", "version": 1, "config": {"type": "Nope"}, "state_dict": {}}, unknown)
    with pytest.raises(ValueError, match="unknown operator type 'Nope'"):
        load_operator(unknown)
    mismatch = tmp_path / "mismatch.pt"
    cfg = CodedDiffraction(4, 2, seed=0).config()
    torch.save({"format": "phasetorch-operator", "version": 1, "config": cfg,
                "state_dict": {"D": torch.zeros(3, 4, 2)}}, mismatch)
    with pytest.raises(ValueError, match="does not match"):
        load_operator(mismatch)
    assert set(REGISTRY) >= {"GaussianMeasurement", "CodedDiffraction", "StructuredRandom", "OversampledFourier",
                             "MatrixMeasurement"}
    with pytest.raises(ValueError, match="type"):
        operator_from_config({"shape": [3]})


@pytest.mark.parametrize("name", FACTORIES)
def test_wrong_shape_dtype_device_raise(name):
    op = make(name)
    expected = ", ".join(map(str, op.signal_shape))
    bad = rand((*op.signal_shape[:-1], op.signal_shape[-1] + 1), True, 1)
    with pytest.raises(ValueError, match=r"\(\*batch, " + expected + r"\)"):
        op.linear(bad)
    mexp = ", ".join(map(str, op.measurement_shape))
    with pytest.raises(ValueError, match=r"\(\*batch, " + mexp + r"\)"):
        op.adjoint(rand((*op.measurement_shape[:-1], op.measurement_shape[-1] + 1), True, 1))
    with pytest.raises(ValueError, match="dtype"):
        op(torch.zeros(op.signal_shape, dtype=torch.float32))
    with pytest.raises(ValueError, match="meta"):
        op(torch.zeros(op.signal_shape, dtype=F64, device="meta"))


@pytest.mark.parametrize("name", FACTORIES)
def test_gradcheck_through_intensities(name):
    op = make(name)
    x = rand((2, *op.signal_shape), True, 10).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mask", ["octanary", "binary", "uniform", "gaussian"])
def test_cdp_energy_and_mask_statistics(mask):
    op = CodedDiffraction((48, 48), 4, mask, seed=1, dtype=F64)
    d = op.masks()
    assert abs(float(d.abs().square().mean()) - 1) < 0.03
    assert float(d.mean().abs()) < 0.03
    if mask == "octanary":
        assert set(torch.unique(d.abs().round(decimals=6)).tolist()) == {round(0.5 ** 0.5, 6), round(3 ** 0.5, 6)}
        phases = torch.unique(torch.view_as_real(d / d.abs()).round(decimals=6), dim=0)
        assert set(map(tuple, phases.reshape(-1, 2).tolist())) == {(1, 0), (-1, 0), (0, 1), (0, -1)}
        assert abs(float((d.abs() > 1).double().mean()) - 0.2) < 0.02
    if mask == "binary":
        assert set(d.real.unique().tolist()) == {-1.0, 1.0} and (d.imag == 0).all()
    if mask == "uniform":
        assert torch.allclose(d.abs(), torch.ones_like(d.real))
    x = rand((48, 48), True, 2)
    assert op.entry_energy == 1 / (48 * 48)
    ratio = float(op(x).mean()) / (op.entry_energy * float(x.abs().square().sum()))
    assert abs(ratio - 1) < (1e-12 if mask in ("binary", "uniform") else 0.05)


def test_structured_and_fourier_are_isometries():
    for op in (StructuredRandom((6, 5), n_layers=3, oversampling=(2, 3), seed=0, dtype=F64),
               OversampledFourier((6, 5), 2, dtype=F64), StructuredRandom(9, seed=1, dtype=F64)):
        x = rand((3, *op.signal_shape), True, 4)
        y = op(x)
        assert op.entry_energy == 1 / op.m
        assert torch.allclose(y.flatten(1).mean(1), op.entry_energy * x.abs().square().flatten(1).sum(1), rtol=1e-12)
        A = dense(op)
        assert torch.allclose(A.mH @ A, torch.eye(op.n, dtype=C128), atol=1e-12)
    assert StructuredRandom((6, 5), oversampling=(2, 3)).measurement_shape == (12, 15)
    assert OversampledFourier((6, 5), 2).delta == 4


def test_oversampled_fourier_support_pad_crop():
    op = OversampledFourier((3, 4), (2, 3), dtype=F64)
    mask = op.support_mask()
    assert mask.shape == (6, 12) and mask.sum() == 12 and mask[:3, :4].all()
    x = rand((2, 3, 4), True, 0)
    padded = op.pad(x)
    assert padded.shape == (2, 6, 12) and torch.equal(op.crop(padded), x) and (padded[:, ~mask] == 0).all()
    assert torch.allclose(op.linear(x), torch.fft.fft2(padded, norm="ortho"))


def test_matrix_measurement_energy_and_validation():
    A = torch.randn(30, 8, dtype=torch.complex64) * 3
    op = MatrixMeasurement(A)
    assert op.is_complex and op.real_dtype == torch.float32
    assert op.entry_energy == pytest.approx(float(A.abs().square().double().mean()), rel=1e-6)
    x = torch.randn(8, dtype=torch.complex64)
    assert torch.allclose(op.linear(x), A @ x, rtol=1e-5, atol=1e-5)
    assert torch.allclose(op.adjoint(op.linear(x)), A.mH @ (A @ x), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="2-D"):
        MatrixMeasurement(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="A.float()"):
        MatrixMeasurement(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="product is 4"):
        MatrixMeasurement(torch.ones(3, 4), signal_shape=(3, 2))
    with pytest.raises(ValueError, match="all zeros"):
        MatrixMeasurement(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        MatrixMeasurement(torch.full((3, 4), float("nan")))


def test_constructor_validation():
    with pytest.raises(ValueError, match="mask family"):
        CodedDiffraction(8, 2, "ternary")
    with pytest.raises(ValueError, match="n_masks"):
        CodedDiffraction(8, 0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        CodedDiffraction((2, 3, 4), 2)
    with pytest.raises(ValueError, match="oversampling"):
        OversampledFourier(8, 0)
    with pytest.raises(ValueError, match="oversampling"):
        OversampledFourier((8, 8), 1.5)
    with pytest.raises(ValueError, match="one factor per axis"):
        StructuredRandom((8, 8), oversampling=(2, 2, 2))
    with pytest.raises(ValueError, match="n_layers"):
        StructuredRandom(8, n_layers=0)
    with pytest.raises(ValueError, match="dtype"):
        OversampledFourier(8, dtype=torch.int32)


def test_links_values_derivatives_and_noise():
    z = torch.linspace(-2, 2, 9, dtype=F64)
    zc = rand((5,), True, 0)
    assert torch.allclose(links.intensity(zc), zc.abs() ** 2)
    assert torch.allclose(links.amplitude(zc), zc.abs())
    assert torch.allclose(links.relu(zc), zc.real.clamp(min=0))
    for link in (links.intensity, links.amplitude, links.relu):
        zz = (z + 0.01).requires_grad_(True)  # avoid the kinks at 0
        (g,) = torch.autograd.grad(link(zz).sum(), zz)
        assert torch.allclose(link.derivative(zz.detach()), g)
    assert links.intensity.symmetric and not links.relu.symmetric
    noisy = links.noisy_intensity(0.3)
    eps = torch.randn(5, dtype=F64)
    assert torch.allclose(noisy(zc, eps=eps), zc.abs() ** 2 + 0.3 * eps)
    a = noisy(zc, generator=torch.Generator().manual_seed(1))
    b = noisy(zc, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, zc.abs() ** 2)
    with pytest.raises(ValueError, match="output shape"):
        noisy(zc, eps=torch.zeros(4))
    with pytest.raises(ValueError, match="sigma"):
        links.noisy_intensity(-1)
    with pytest.raises(ValueError, match="unknown link"):
        links.get_link("cubic")
    with pytest.raises(ValueError, match="real z"):
        links.intensity.derivative(zc)
    op = CodedDiffraction(6, 2, seed=0, dtype=F64)
    x = rand((3, 6), True, 1)
    assert torch.allclose(LinkMeasurement(op, "intensity")(x), op(x))
    lm = LinkMeasurement(op, noisy, seed=4)
    y1, y2 = lm(x), LinkMeasurement(op, noisy, seed=4)(x)
    assert torch.equal(y1, y2) and y1.shape == (3, 2, 6)
    assert lm.entry_energy == op.entry_energy and lm.measurement_shape == op.measurement_shape


def test_gaussian_config_records_dtype_and_rebuilds():
    op = GaussianMeasurement(5, 12, complex=False, seed=3, dtype=F64)
    cfg = op.config()
    assert cfg["dtype"] == "float64"
    rebuilt = operator_from_config(cfg)
    assert rebuilt.real_dtype == F64 and torch.equal(rebuilt.matrix(), op.matrix())


def test_coded_diffraction_mask_cache_follows_buffer_changes():
    """The cached scaled masks are refreshed after load_state_dict / in-place edits / dtype moves."""
    a = CodedDiffraction((6, 5), 3, seed=1, dtype=torch.float64)
    b = CodedDiffraction((6, 5), 3, seed=2, dtype=torch.float64)
    x = torch.randn(6, 5, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    before = a.linear(x)
    a.load_state_dict(b.state_dict())
    assert torch.allclose(a.linear(x), b.linear(x), atol=1e-14)
    assert not torch.allclose(a.linear(x), before)
    a32 = a.to(torch.float32)
    assert a32.linear(x.to(torch.complex64)).dtype == torch.complex64


# ---------------------------------------------------------------------------- fused forward–adjoint pass
def _measurewise(op):
    """A measurement-by-measurement map v_i = c_i z_i + |z_i|² (c depends on the index, so a wrong
    slice would show), with the ``index`` convention of MeasurementOperator.linear_adjoint."""
    c = torch.linspace(-1.0, 2.0, op.m, dtype=F64).reshape(op.measurement_shape)
    seen = []

    def fn(z, part):
        seen.append(part)
        ci = c if part is None else c[..., part]
        return z * ci.to(z.real.dtype) + (z.real.square() + z.imag.square() if z.is_complex() else z.square())

    return fn, seen


@pytest.mark.parametrize("force_fusion", [False, True])
@pytest.mark.parametrize("name", FACTORIES)
def test_linear_adjoint_equals_the_two_products(name, force_fusion, monkeypatch):
    from phasetorch.physics import matrix as dense_module
    if force_fusion:                       # fuse even these small matrices, in several row blocks
        monkeypatch.setattr(dense_module, "FUSE_MIN_BYTES", 0)
        monkeypatch.setattr(dense_module, "FUSE_BLOCK_BYTES", 64)
    op = make(name)
    x = rand((2, 3, *op.signal_shape), op.is_complex, 11)
    fn, seen = _measurewise(op)
    z, g = op.linear_adjoint(x, fn)
    z_ref = op.linear(x)
    g_ref = op.adjoint(fn(z_ref, None))
    assert z.shape == z_ref.shape and g.shape == g_ref.shape
    assert torch.allclose(z, z_ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-10)
    fused = op.fuses(6)
    assert fused == (force_fusion and name.startswith(("gauss", "matrix"))) or name == "gauss_img_streamed"
    parts = seen[:-1]                       # the last call is the reference's
    if fused:
        assert all(isinstance(p, slice) for p in parts) and len(parts) > 1
        assert sorted((p.start, p.stop) for p in parts)[0][0] == 0 and max(p.stop for p in parts) == op.m
    else:
        assert parts == [None]


def test_fusion_needs_two_signals_and_a_large_matrix():
    from phasetorch.physics.matrix import FUSE_MIN_BYTES, fuse_pays
    big = torch.zeros(FUSE_MIN_BYTES // 8, 1, dtype=F64)
    assert fuse_pays(big, 2) and not fuse_pays(big, 1) and not fuse_pays(big[:-1], 2)
    assert GaussianMeasurement(4, 9, seed=0, streamed=True, block_rows=4).fuses(1)   # one RNG pass instead of two
    assert not GaussianMeasurement(4, 9, seed=0).fuses(16)


def test_coded_diffraction_work_buffer_never_leaks_into_results():
    """CodedDiffraction.linear reuses an L·n work buffer on the CPU (tensors.scratch): results equal the
    allocating path bit for bit, survive later calls, follow batch-shape changes, and every path that
    must not write into a shared buffer (autograd, forward AD, vmap, two threads at once) still works."""
    import copy
    import pickle
    import threading

    from phasetorch.physics.fourier import fft_dims

    op = CodedDiffraction((6, 5), 3, seed=1)
    g = torch.Generator().manual_seed(0)

    def signal(*batch):
        return torch.view_as_complex(torch.randn(*batch, 6, 5, 2, generator=g))

    def plain(x):
        fm, _ = op._scaled_masks()
        return torch.fft.fftn(x.unsqueeze(-3) * fm, dim=fft_dims(2), norm="backward")

    x1, x2, xb = signal(), signal(), signal(2, 4)
    z1 = op.linear(x1)
    z2 = op.linear(x2)
    assert torch.equal(z1, plain(x1)) and torch.equal(z2, plain(x2))       # z1 not overwritten by call 2
    zb = op.linear(xb)
    assert zb.shape == (2, 4, 3, 6, 5) and torch.equal(zb, plain(xb))
    assert torch.equal(op.linear(x1), z1)                                   # back to the single shape
    assert torch.equal(op.adjoint(zb)[1, 2], op.adjoint(zb[1, 2]))

    # autograd through the signal, and through the masks
    xg = x1.clone().requires_grad_(True)
    op.linear(xg).abs().square().sum().backward()
    assert xg.grad is not None and torch.isfinite(torch.view_as_real(xg.grad)).all()
    # torch.func and forward-mode AD (torch.func's import warns about torch.jit.script: not ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert torch.allclose(torch.func.vmap(op.linear)(xb[0]), zb[0], atol=1e-6)
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        tangent = fwad.unpack_dual(op.linear(fwad.make_dual(x1, x2))).tangent
    assert torch.allclose(tangent, z2, atol=1e-5)                           # linear: the tangent is A x2
    # two threads at once, each with its own signals
    errors, outs = [], {}

    def work(k, x):
        try:
            for _ in range(50):
                outs[k] = op.linear(x)
                if not torch.equal(outs[k], plain(x)):
                    errors.append(k)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(k, x)) for k, x in enumerate((x1, x2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # the buffer is not part of the module's state, its copies or its pickles
    assert all("work" not in k for k in op.state_dict())
    for clone in (copy.deepcopy(op), pickle.loads(pickle.dumps(op))):
        assert torch.equal(clone.linear(x1), z1)
