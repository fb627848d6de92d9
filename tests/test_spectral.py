"""Spectral initialization (phasetorch.init.spectral) and the batched eigensolvers (phasetorch.init.eigensolvers)."""

import math

import pytest
import torch

from phasetorch import spectral_init
from phasetorch.init.eigensolvers import lanczos_top, power_top
from phasetorch.physics import GaussianMeasurement
from phasetorch.physics.base import MeasurementOperator
from phasetorch.init.preprocessing import NAMES, preprocess
from phasetorch.init.spectral import SpectralInfo, count_matvecs, spectral_matrix

F64 = torch.float64


# ---------------------------------------------------------------------------- helpers
class DenseOp(MeasurementOperator):
    """A test operator from an explicit matrix, with optional entry energy and gram diagonal."""

    def __init__(self, A, entry_energy=1.0, whitening=False, with_diag=True):
        super().__init__()
        self.signal_shape = (A.shape[1],)
        self.measurement_shape = (A.shape[0],)
        self.is_complex = A.is_complex()
        self.register_random("A", A)
        self._dtype_probe = self._dtype_probe.to(A.real.dtype if A.is_complex() else A.dtype)
        self._e = entry_energy
        self.spectral_whitening = whitening
        if with_diag:
            self.gram_diagonal = lambda: (self.buffer("A").abs() ** 2).sum(0)

    @property
    def entry_energy(self):
        return self._e

    def _linear(self, x):
        return x @ self.buffer("A").T

    def _adjoint(self, z):
        return (z.conj() @ self.buffer("A")).conj() if z.is_complex() else z @ self.buffer("A")

    def config(self):
        return {}


def dense_D(op, y, pre):
    """D = Aᴴ diag(T) A / (m e) from the explicit matrix, float64/complex128."""
    A = op.matrix() if hasattr(op, "matrix") else op.buffer("A")
    A = A.to(torch.complex128 if A.is_complex() else F64)
    T = preprocess(y.to(F64), pre, delta=op.delta, field="complex" if op.is_complex else "real").to(A.dtype)
    D = (A.conj().T.unsqueeze(0) * T.reshape(-1, 1, op.m)) @ A / (op.m * op.entry_energy)
    D = 0.5 * (D + D.mH)
    return D.reshape(*y.shape[:-1], op.n, op.n)


def cosine(a, b):
    a = a.reshape(*a.shape[:-1], -1).to(torch.complex128)
    b = b.reshape(*b.shape[:-1], -1).to(torch.complex128)
    return (a.conj() * b).sum(-1).abs() / (a.norm(dim=-1) * b.norm(dim=-1))


def signal(n, cplx, seed, batch=(), dtype=F64):
    g = torch.Generator().manual_seed(seed)
    if cplx:
        x = torch.view_as_complex(torch.randn(*batch, n, 2, generator=g, dtype=F64) / math.sqrt(2))
    else:
        x = torch.randn(*batch, n, generator=g, dtype=F64)
    return x.to({F64: torch.complex128, torch.float32: torch.complex64}[dtype] if cplx else dtype)


def problem(n=40, m=200, cplx=True, seed=0, batch=(3,), dtype=F64):
    op = GaussianMeasurement(n, m, complex=cplx, seed=seed, dtype=dtype)
    x = signal(n, cplx, seed + 100, batch, dtype)
    return op, x, op(x)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("pre", ["optimal", "mm", "trimmed", "identity", "orthogonality", "weighted", "clipped"])
def test_direction_matches_dense_eigh(cplx, pre):
    op, x, y = problem(n=40, m=200, cplx=cplx, seed=1)
    x0, info = spectral_init(op, y, pre, tol=1e-10, seed=3, return_info=True)
    evals, evecs = torch.linalg.eigh(dense_D(op, y, pre))
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()
    torch.testing.assert_close(info.eigenvalue, evals[..., -1], rtol=1e-9, atol=1e-12)
    assert info.converged.all()


@pytest.mark.parametrize("cplx", [False, True])
def test_restarted_lanczos_matches_dense_eigh(cplx):
    # krylov_dim 16 < n = 60: many thick restarts before convergence
    op, x, y = problem(n=60, m=360, cplx=cplx, seed=2, batch=(2,))
    x0, info = spectral_init(op, y, "optimal", tol=1e-10, krylov_dim=16, seed=0, return_info=True)
    evals, evecs = torch.linalg.eigh(dense_D(op, y, "optimal"))
    assert (info.iterations > 3 * 16).all() and info.converged.all()
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()
    torch.testing.assert_close(info.eigenvalue, evals[..., -1], rtol=1e-9, atol=1e-12)
    # the gap estimate is close to the true λ₁ − λ₂ once converged
    torch.testing.assert_close(info.gap, evals[..., -1] - evals[..., -2], rtol=1e-3, atol=1e-6)


def test_the_restart_sizes_are_spectral_init_arguments():
    """keep / keep_low reach the thick restart: any valid choice converges to the same eigenvector, the
    choices change the products spent, and an invalid one (or one given to the power method) is refused
    before any product with D."""
    op, x, y = problem(n=60, m=360, cplx=True, seed=2, batch=(2,))
    evals, evecs = torch.linalg.eigh(dense_D(op, y, "optimal"))
    used = set()
    for keep, keep_low in ((1, 0), (4, 4), (2, 10)):
        x0, info = spectral_init(op, y, "optimal", tol=1e-10, krylov_dim=16, keep=keep, keep_low=keep_low, seed=0,
                                 return_info=True)
        assert info.converged.all() and (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()
        used.add(tuple(info.iterations.tolist()))
    assert len(used) > 1                     # the sizes are used, not ignored
    x0, info = spectral_init(op, y, "optimal", tol=1e-10, krylov_dim=16, seed=0, return_info=True)
    x1, info1 = spectral_init(op, y, "optimal", tol=1e-10, krylov_dim=16, keep=4, keep_low=4, seed=0,
                              return_info=True)
    assert torch.equal(x0, x1) and torch.equal(info.iterations, info1.iterations)     # the defaults are p//4
    with count_matvecs(op) as calls:
        for bad in ({"keep": 0}, {"keep": 8, "keep_low": 7}, {"keep_low": -1}):
            with pytest.raises(ValueError, match="keep"):
                spectral_init(op, y, "optimal", krylov_dim=16, seed=0, **bad)
        with pytest.raises(ValueError, match="power"):
            spectral_init(op, y, "optimal", solver="power", keep=2, seed=0)
    assert calls.linear_calls == 0 and calls.adjoint_calls == 0


def test_spectral_matrix_equals_explicit_formula():
    op, x, y = problem(n=12, m=50, cplx=True, seed=4, batch=(2,))
    torch.testing.assert_close(spectral_matrix(op, y, "mm"), dense_D(op, y, "mm"))


def test_real_signal_restriction_on_complex_operator():
    op, x, y = problem(n=30, m=150, cplx=True, seed=5, batch=(2,))
    xr = signal(30, False, 9, (2,))
    y = op(xr)
    x0 = spectral_init(op, y, "optimal", real_signal=True, tol=1e-10, seed=0)
    assert not x0.is_complex() and x0.dtype == F64
    evals, evecs = torch.linalg.eigh(dense_D(op, y, "optimal").real)
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()


def test_float32_operator_is_accurate_to_single_precision():
    op, x, y = problem(n=64, m=512, cplx=True, seed=6, batch=(2,), dtype=torch.float32)
    x0, info = spectral_init(op, y, "optimal", seed=0, return_info=True)
    assert x0.dtype == torch.complex64 and info.converged.all()
    evecs = torch.linalg.eigh(dense_D(op, y, "optimal"))[1]
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-6).all()


# ---------------------------------------------------------------------------- solvers
def deepinv_T(yh):
    """deepinv's default T(ŷ) = max(1 − 1/ŷ, −5): negative eigenvalues, but a quick power method."""
    return torch.clamp(1 - 1 / yh, min=-5.0)


@pytest.mark.parametrize("pre", ["mm", deepinv_T])
def test_lanczos_and_power_agree(pre):
    op, x, y = problem(n=30, m=150, cplx=True, seed=7, batch=(2,))
    xl, il = spectral_init(op, y, pre, solver="lanczos", tol=1e-10, seed=0, return_info=True)
    xp, ip = spectral_init(op, y, pre, solver="power", tol=1e-10, seed=0, return_info=True, max_iter=50000)
    assert ip.converged.all() and il.converged.all()
    assert (cosine(xl, xp) > 1 - 1e-9).all()
    torch.testing.assert_close(il.eigenvalue, ip.eigenvalue, rtol=1e-9, atol=1e-12)
    # the phase convention makes the two outputs equal, not just parallel
    torch.testing.assert_close(xl, xp, rtol=0, atol=1e-4 * xl.abs().max().item())
    # Lanczos needs far fewer products than the power method
    assert (il.matvecs * 3 < ip.matvecs).all()


def test_power_shift_makes_spectrum_psd_and_user_shift_is_used():
    op, x, y = problem(n=30, m=150, cplx=False, seed=8, batch=(2,))
    evals = torch.linalg.eigvalsh(dense_D(op, y, deepinv_T))
    assert (evals[..., 0].abs() > evals[..., -1]).all()   # the bottom end dominates: a shift is needed
    x0, info = spectral_init(op, y, deepinv_T, solver="power", tol=1e-8, seed=0, return_info=True,
                             max_iter=50000)
    assert info.converged.all()
    assert (info.shift >= -evals[..., 0]).all()          # D + σI is positive semidefinite
    assert (info.shift <= -1.2 * evals[..., 0]).all()    # and not needlessly large
    # the gap estimate from the observed contraction rate
    torch.testing.assert_close(info.gap, evals[..., -1] - evals[..., -2], rtol=0.05, atol=0)
    shift = torch.tensor([1.0, 2.0], dtype=F64)
    _, info2 = spectral_init(op, y, "mm", solver="power", shift=shift, tol=1e-6, seed=0, return_info=True)
    torch.testing.assert_close(info2.shift, shift)


def test_power_method_stops_at_the_float32_floor():
    op, x, y = problem(n=30, m=150, cplx=True, seed=20, batch=(2,), dtype=torch.float32)
    x0, info = spectral_init(op, y, "mm", solver="power", tol=1e-12, max_iter=100000, seed=0, return_info=True)
    assert not info.converged.any() and (info.iterations < 5000).all()
    evecs = torch.linalg.eigh(dense_D(op, y, "mm"))[1]
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-6).all()


def test_one_operator_call_per_iteration_and_per_sample_stopping():
    op = GaussianMeasurement(50, 300, complex=True, seed=9, dtype=F64)
    x = signal(50, True, 1, (3,))
    y = op(x)
    with count_matvecs(op) as c:
        x0, info = spectral_init(op, y, "optimal", seed=0, return_info=True, krylov_dim=10)
    assert c.linear_calls == c.adjoint_calls == int(info.iterations.max())
    assert c.linear_vectors == c.adjoint_vectors == int(info.iterations.sum())
    assert len(set(info.iterations.tolist())) > 1       # samples stopped at different steps
    # counting restores the operator's methods
    assert "linear" not in op.__dict__ and "adjoint" not in op.__dict__


def test_eigensolvers_direct_on_diagonal_batch():
    # D_b = diag(b-dependent spectrum): top eigenvector e_0, known eigenvalues
    N = 50
    spectra = torch.stack([torch.linspace(-100, 1, N, dtype=F64).flip(0),
                           torch.linspace(0, 2, N, dtype=F64).flip(0)])

    def matvec(v, idx):
        return spectra[idx] * v

    v0 = torch.randn(2, N, generator=torch.Generator().manual_seed(0), dtype=F64)
    for res in (lanczos_top(matvec, v0, tol=1e-10, krylov_dim=12),
                power_top(matvec, v0, tol=1e-10, max_iter=100000)):
        assert res.converged.all()
        torch.testing.assert_close(res.eigenvalue, spectra[:, 0])
        assert (res.vector[:, 0].abs() > 1 - 1e-9).all()
        assert (res.residual <= 1e-10).all()


# ---------------------------------------------------------------------------- batching and scale
@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_batch_equals_single_runs_with_norms_1e6_apart(solver):
    op = GaussianMeasurement(40, 200, complex=True, seed=10, dtype=F64)
    x = signal(40, True, 3, (4,)) * torch.tensor([1e-3, 1e-1, 1e1, 1e3], dtype=F64).sqrt().unsqueeze(-1)
    y = op(x)                                            # mean intensities spread over 1e6
    pre = "optimal" if solver == "lanczos" else "mm"
    xb, ib = spectral_init(op, y, pre, solver=solver, seed=1, return_info=True, tol=1e-9, max_iter=20000)
    for b in range(4):
        xs, is_ = spectral_init(op, y[b], pre, solver=solver, seed=1, return_info=True, tol=1e-9, max_iter=20000)
        torch.testing.assert_close(xb[b], xs, rtol=1e-6, atol=1e-6 * xs.abs().max().item())
        assert int(ib.iterations[b]) == int(is_.iterations)
    norms2 = xb.abs().pow(2).sum(-1)
    torch.testing.assert_close(norms2, y.mean(-1), rtol=1e-10, atol=0)


def test_batch_shape_dtype_and_info_fields():
    op = GaussianMeasurement((4, 5), 160, complex=True, seed=11)
    x = signal(20, True, 4, (2, 3), dtype=torch.float32).reshape(2, 3, 4, 5)
    y = op(x)
    x0, info = spectral_init(op, y.requires_grad_(), return_info=True, seed=0)
    assert x0.shape == (2, 3, 4, 5) and x0.dtype == op.signal_dtype and not x0.requires_grad
    assert isinstance(info, SpectralInfo)
    for f in ("iterations", "matvecs", "eigenvalue", "gap", "converged", "residual", "shift"):
        assert getattr(info, f).shape == (2, 3)
    assert info.converged.all() and (info.residual <= 1e-6).all() and (info.gap > 0).all()
    assert info.solver == "lanczos" and not info.whitened


def test_norm_matches_mean_intensity_over_entry_energy():
    g = torch.Generator().manual_seed(12)
    A = torch.view_as_complex(torch.randn(120, 20, 2, generator=g, dtype=F64)) * 0.01
    op = DenseOp(A, entry_energy=2e-4, with_diag=False)   # E|A_ij|² = 2·0.01²
    y = op(signal(20, True, 5, (3,)))
    x0 = spectral_init(op, y, "mm", seed=0)
    torch.testing.assert_close(x0.abs().pow(2).sum(-1), y.mean(-1) / 2e-4, rtol=1e-10, atol=0)


def test_phase_convention_largest_coordinate_real_positive_and_seed_independent():
    op, x, y = problem(n=30, m=150, cplx=True, seed=13, batch=(3,))
    a = spectral_init(op, y, "mm", seed=0, tol=1e-10)
    b = spectral_init(op, y, "mm", seed=99, tol=1e-10)
    idx = a.abs().argmax(-1, keepdim=True)
    pivot = a.gather(-1, idx)
    assert (pivot.imag.abs() < 1e-12).all() and (pivot.real > 0).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * a.abs().max().item())
    opr, xr, yr = problem(n=30, m=150, cplx=False, seed=13, batch=(3,))
    r = spectral_init(opr, yr, "mm", seed=0)
    assert (r.gather(-1, r.abs().argmax(-1, keepdim=True)) > 0).all()


def test_seed_and_generator_reproducible():
    op, x, y = problem(n=30, m=150, cplx=True, seed=14, batch=(2,))
    a = spectral_init(op, y, max_iter=5, seed=7)           # unconverged: depends on the start
    b = spectral_init(op, y, max_iter=5, seed=7)
    c = spectral_init(op, y, max_iter=5, generator=torch.Generator().manual_seed(7))
    d = spectral_init(op, y, max_iter=5, seed=8)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.allclose(a, d)
    with pytest.raises(ValueError, match="seed= or generator="):
        spectral_init(op, y, seed=1, generator=torch.Generator())


def test_max_iter_reports_not_converged():
    op, x, y = problem(n=60, m=300, cplx=True, seed=15, batch=(2,))
    x0, info = spectral_init(op, y, "optimal", max_iter=4, seed=0, return_info=True)
    assert not info.converged.any() and (info.iterations == 4).all() and (info.residual > 1e-6).all()
    torch.testing.assert_close(x0.abs().pow(2).sum(-1), y.mean(-1), rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------- preprocessing variants
def test_callable_preprocessing():
    op, x, y = problem(n=30, m=150, cplx=True, seed=16, batch=(2,))

    x0 = spectral_init(op, y, deepinv_T, tol=1e-10, seed=0)
    evecs = torch.linalg.eigh(dense_D(op, y, deepinv_T))[1]
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()
    # a callable that reproduces a named preprocessing gives the same estimate
    a = spectral_init(op, y, lambda yh: torch.clamp(yh, max=3.0), tol=1e-10, seed=0)
    b = spectral_init(op, y, "clipped", tol=1e-10, seed=0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pre", NAMES)
def test_every_named_preprocessing_runs(pre):
    op, x, y = problem(n=24, m=120, cplx=False, seed=17, batch=(2,))
    x0, info = spectral_init(op, y, pre, seed=0, return_info=True)
    assert torch.isfinite(x0).all() and info.converged.all()


def test_noisy_negative_intensities_with_optimal():
    op, x, y = problem(n=30, m=180, cplx=True, seed=18, batch=(2,))
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    yn = y + 0.5 * y.mean(-1, keepdim=True) * noise
    assert (yn < 0).any()
    x0, info = spectral_init(op, yn, "optimal", tol=1e-10, seed=0, return_info=True)
    assert torch.isfinite(x0).all() and info.converged.all()
    evecs = torch.linalg.eigh(dense_D(op, yn, "optimal"))[1]
    assert (cosine(x0, evecs[..., -1]) > 1 - 1e-8).all()
    torch.testing.assert_close(x0.abs().pow(2).sum(-1), yn.mean(-1), rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------- whitening
def _uneven_op(whitening):
    g = torch.Generator().manual_seed(19)
    A = torch.view_as_complex(torch.randn(200, 25, 2, generator=g, dtype=F64) / math.sqrt(2))
    A = A * torch.linspace(0.3, 2.0, 25, dtype=F64)         # columns of very different energy
    return DenseOp(A, entry_energy=float((A.abs() ** 2).mean()), whitening=whitening)


def test_whitening_solves_the_whitened_eigenproblem():
    op = _uneven_op(whitening=False)
    y = op(signal(25, True, 6, (2,)))
    x0, info = spectral_init(op, y, "optimal", whiten=True, tol=1e-10, seed=0, return_info=True)
    assert info.whitened
    w = (op.gram_diagonal() / (op.m * op.entry_energy)).rsqrt()
    Dw = w.unsqueeze(-1) * dense_D(op, y, "optimal") * w
    evals, evecs = torch.linalg.eigh(Dw)
    assert (cosine(x0, w * evecs[..., -1]) > 1 - 1e-8).all()
    torch.testing.assert_close(info.eigenvalue, evals[..., -1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x0.abs().pow(2).sum(-1), y.mean(-1) / op.entry_energy, rtol=1e-10, atol=0)
    plain = spectral_init(op, y, "optimal", whiten=False, tol=1e-10, seed=0)
    assert (cosine(plain, x0) < 1 - 1e-4).all()              # whitening changed the answer


def test_whitening_default_follows_the_operator():
    op_on, op_off = _uneven_op(True), _uneven_op(False)
    y = op_on(signal(25, True, 7))
    auto = spectral_init(op_on, y, "mm", seed=0, tol=1e-10)
    explicit = spectral_init(op_off, y, "mm", whiten=True, seed=0, tol=1e-10)
    plain = spectral_init(op_off, y, "mm", seed=0, tol=1e-10)
    torch.testing.assert_close(auto, explicit)
    assert not torch.allclose(auto, plain)
    _, info = spectral_init(op_on, y, "mm", whiten=False, seed=0, return_info=True)
    assert not info.whitened


def test_coded_diffraction_images_and_whitening():
    from phasetorch.physics import CodedDiffraction

    class WhitenedCDP(CodedDiffraction):
        def gram_diagonal(self):                              # diag(AᴴA) = Σ_l |d_l|² (F unitary)
            d = self.masks()
            return (d.abs() ** 2).sum(0)

    op = WhitenedCDP((6, 7), 4, seed=0, dtype=F64)
    eye = torch.eye(42, dtype=torch.complex128).reshape(42, 6, 7)
    gram_diag = torch.einsum("jlab,jlab->j", op.linear(eye).conj(), op.linear(eye)).real.reshape(6, 7)
    torch.testing.assert_close(op.gram_diagonal(), gram_diag)
    x = signal(42, True, 8, (2,)).reshape(2, 6, 7)
    y = op(x)
    x0, info = spectral_init(op, y, "optimal", tol=1e-10, seed=0, return_info=True)
    assert info.whitened and x0.shape == (2, 6, 7)                  # auto-on for CodedDiffraction
    torch.testing.assert_close(x0.abs().pow(2).sum((-1, -2)), y.mean((-1, -2, -3)) / op.entry_energy,
                               rtol=1e-10, atol=0)
    w = (op.gram_diagonal().reshape(-1) / (op.m * op.entry_energy)).rsqrt()
    Dw = w.unsqueeze(-1) * spectral_matrix(op, y, "optimal") * w
    v = torch.linalg.eigh(Dw)[1][..., -1]
    assert (cosine(x0.reshape(2, -1), w * v) > 1 - 1e-8).all()
    x1, info1 = spectral_init(op, y, "optimal", whiten=False, tol=1e-10, seed=0, return_info=True)
    assert not info1.whitened
    v1 = torch.linalg.eigh(spectral_matrix(op, y, "optimal"))[1][..., -1]
    assert (cosine(x1.reshape(2, -1), v1) > 1 - 1e-8).all()


def test_whitening_refused_without_gram_diagonal():
    op, x, y = problem(n=10, m=40, batch=())
    with pytest.raises(ValueError, match="gram_diagonal"):
        spectral_init(op, y, whiten=True)


# ---------------------------------------------------------------------------- input checking
def test_rejects_bad_inputs():
    op, x, y = problem(n=10, m=40, batch=(2,))
    for bad in (float("nan"), float("inf")):
        yb = y.clone()
        yb[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            spectral_init(op, yb)
    with pytest.raises(ValueError, match="shape"):
        spectral_init(op, y[..., :-1])
    with pytest.raises(ValueError, match="dtype"):
        spectral_init(op, y.float())
    with pytest.raises(ValueError, match="complex"):
        spectral_init(op, y.to(torch.complex128))
    with pytest.raises(ValueError, match="solver"):
        spectral_init(op, y, solver="arnoldi")
    with pytest.raises(ValueError, match="power"):
        spectral_init(op, y, shift=1.0)
    with pytest.raises(ValueError, match="preprocessing"):
        spectral_init(op, y, "orthogonal")
    with pytest.raises(ValueError, match="tol"):
        spectral_init(op, y, tol=float("nan"))
    with pytest.raises(ValueError, match="max_iter"):
        spectral_init(op, y, max_iter=0)
    with pytest.raises(ValueError, match="shift"):
        spectral_init(op, y, solver="power", shift=torch.ones(3))
    with pytest.raises(ValueError, match="MeasurementOperator"):
        spectral_init(op.buffer("A"), y)


def test_progress_bar_runs(capsys):
    op, x, y = problem(n=20, m=80, batch=(2,))
    a = spectral_init(op, y, progress=True, seed=0)
    b = spectral_init(op, y, progress=False, seed=0)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- statistics (theory)
# Finite-size allowance 0.002: the reference simulations (theory.md §7, anchors.md) find finite-d
# spectral cosines within 0.0012 of the asymptotic value at d = 2000 (mm: 0.8724 ± 0.0013 vs
# 0.8712; optimal: 0.9626 ± 0.0011 vs 0.9615); corrections to the mean are O(1/d), so at d ≈ 1500
# (and d = 800 complex) 0.002 covers them; the statistical part is 3 standard errors over 8 seeds.
ALLOWANCE = 0.002


def _cosines(d, delta, cplx, pres, seeds=range(8)):
    out = {p: [] for p in pres}
    for s in seeds:
        op = GaussianMeasurement(d, int(delta * d), complex=cplx, seed=1000 + s)
        x = signal(d, cplx, s, dtype=torch.float32)
        y = op(x)
        for p in pres:
            # tol 1e-5: the cosine is then exact to ~1e-8, far below the 1e-3 statistical resolution
            x0 = spectral_init(op, y, p, seed=s, tol=1e-5)
            out[p].append(float(cosine(x0, x)))
    return {p: torch.tensor(v, dtype=F64) for p, v in out.items()}


def _theory(delta, pre, field):
    from phasetorch.theory import spectral_overlap
    return float(spectral_overlap(delta, pre, field))


@pytest.mark.slow
def test_real_gaussian_overlap_matches_theory():
    cos = _cosines(1500, 4, False, ["optimal", "trimmed"])
    for pre, fallback in (("optimal", math.sqrt(0.92449)), ("trimmed", None)):
        rho = _theory(4.0, pre, "real")
        if pre == "optimal":
            assert abs(rho - 0.9615) < 1e-3                 # theory.md §2/§7: ρ² = 0.92449
        c = cos[pre]
        se = float(c.std() / math.sqrt(len(c)))
        assert abs(float(c.mean()) - rho) <= 3 * se + ALLOWANCE, (pre, float(c.mean()), se, rho)


@pytest.mark.slow
def test_complex_gaussian_optimal_overlap_matches_theory():
    c = _cosines(800, 4, True, ["optimal"])["optimal"]
    rho = _theory(4.0, "optimal", "complex")
    assert abs(rho ** 2 - 0.735) < 2e-3                     # theory.md §2: ρ² ≈ 0.735 at δ = 4
    se = float(c.std() / math.sqrt(len(c)))
    assert abs(float(c.mean()) - rho) <= 3 * se + ALLOWANCE, (float(c.mean()), se, rho)


def test_ensemble_operator_batch_equals_members():
    """A GaussianEnsemble (batch dimension indexes the matrix) gives each member's own spectral start."""
    from phasetorch.physics import GaussianEnsemble
    op = GaussianEnsemble(40, 160, 3, seeds=[1, 2, 3], dtype=torch.float64)
    x = torch.randn(3, 40, dtype=torch.complex128, generator=torch.Generator().manual_seed(5))
    y = op(x)
    x0 = spectral_init(op, y, seed=0, tol=1e-12)
    for k in range(3):
        xk = spectral_init(op.member(k), y[k], seed=0, tol=1e-12)
        assert torch.allclose(x0[k], xk, atol=1e-10)


def test_coded_diffraction_gram_diagonal_matches_probing():
    from phasetorch.physics import CodedDiffraction
    op = CodedDiffraction((5, 6), 3, seed=2, dtype=torch.float64)
    eye = torch.eye(30, dtype=torch.complex128).reshape(30, 5, 6)
    cols = op.linear(eye)                      # column j of A, for each unit vector e_j
    diag = cols.abs().square().sum(dim=(-3, -2, -1)).reshape(5, 6)
    assert torch.allclose(op.gram_diagonal(), diag, atol=1e-12)


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_fused_products_give_the_same_start_and_counts(solver, monkeypatch):
    """Dense operators apply D = (1/m)Aᴴdiag(T)A in one fused pass for a batch (forced here on a
    small matrix): same estimate, and count_matvecs counts a pass as one linear + one adjoint."""
    from phasetorch.physics import matrix as dense_module
    op = GaussianMeasurement(24, 192, complex=True, seed=4, dtype=F64)
    g = torch.Generator().manual_seed(9)
    y = op(torch.view_as_complex(torch.randn(3, 24, 2, generator=g, dtype=F64)))
    with count_matvecs(op) as plain_count:
        plain = spectral_init(op, y, preprocessing="mm", solver=solver, seed=1)
    monkeypatch.setattr(dense_module, "FUSE_MIN_BYTES", 0)
    monkeypatch.setattr(dense_module, "FUSE_BLOCK_BYTES", 40 * 24 * 16)
    assert op.fuses(3)
    with count_matvecs(op) as fused_count:
        fused = spectral_init(op, y, preprocessing="mm", solver=solver, seed=1)
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-9)
    assert (fused_count.linear_calls, fused_count.adjoint_vectors) == (plain_count.linear_calls,
                                                                       plain_count.adjoint_vectors)


# ---------------------------------------------------------------------------- measurement models
def test_spectral_init_on_an_amplitude_model_equals_the_intensity_problem():
    """Modulus links: observations are mapped to intensity equivalents, the linear operator does the rest."""
    from phasetorch.physics import LinkMeasurement, MeasurementModel
    from phasetorch.physics.noise import GaussianNoise
    op, x, y = problem(n=30, m=180, seed=5, batch=(2,))
    amp = MeasurementModel(op, link="amplitude")
    a = amp(x)                                            # |Ax|
    ref, ref_info = spectral_init(op, a.square(), seed=2, return_info=True)
    x0, info = spectral_init(amp, a, seed=2, return_info=True)
    assert torch.equal(x0, ref) and torch.equal(info.eigenvalue, ref_info.eigenvalue)
    assert torch.equal(spectral_init(LinkMeasurement(op, "amplitude"), a, seed=2), ref)
    assert torch.equal(spectral_matrix(amp, a), spectral_matrix(op, a.square()))
    # a noisy model goes through: negative noisy amplitudes are signed squares, never NaN
    noisy = MeasurementModel(op, link="amplitude", noise=GaussianNoise(1.5, seed=1))
    yn = noisy(x)
    assert (yn < 0).any()
    xn = spectral_init(noisy, yn, seed=2)
    assert torch.equal(xn, spectral_init(op, yn * yn.abs(), seed=2)) and torch.isfinite(xn).all()
    assert (cosine(xn, x) > 0.5).all()
    with count_matvecs(amp) as c:
        spectral_init(amp, a, seed=2)
    assert c.linear_calls > 0 and "linear" not in op.__dict__


def test_spectral_init_on_a_non_modulus_link_uses_the_observations_as_given():
    from phasetorch.physics import MeasurementModel
    op, x, _ = problem(n=20, m=160, cplx=False, seed=6, batch=(2,))
    relu = MeasurementModel(op, link="relu")
    y = relu(x)
    assert torch.equal(spectral_init(relu, y, "identity", seed=0), spectral_init(op, y, "identity", seed=0))
    with pytest.raises(ValueError, match="MeasurementModel"):
        spectral_init(relu.link, y)


def test_whitening_default_is_a_class_attribute():
    from phasetorch.physics import CodedDiffraction, MeasurementModel
    assert CodedDiffraction.spectral_whitening and not MeasurementOperator.spectral_whitening
    assert not GaussianMeasurement.spectral_whitening

    class Unwhitened(CodedDiffraction):                   # the name does not matter, the attribute does
        spectral_whitening = False

    cdp, plain = CodedDiffraction((5, 4), 3, seed=1, dtype=F64), Unwhitened((5, 4), 3, seed=1, dtype=F64)
    y = cdp(signal(20, True, 3, (2,)).reshape(2, 5, 4))
    assert spectral_init(cdp, y, seed=0, return_info=True)[1].whitened
    assert not spectral_init(plain, y, seed=0, return_info=True)[1].whitened
    assert spectral_init(MeasurementModel(cdp), y, seed=0, return_info=True)[1].whitened


# ---------------------------------------------------------------------------- Lanczos, piece by piece
def _symmetric(N, seed):
    A = torch.randn(N, N, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (A + A.T) / 2


def test_lanczos_sizes_defaults_and_errors():
    from phasetorch.init.eigensolvers import lanczos_sizes
    s = lanczos_sizes(1000, 64)
    assert (s.basis, s.keep, s.keep_low, s.kept) == (64, 16, 16, 32)   # half of the basis new at a restart
    assert (lanczos_sizes(1000, 32).keep, lanczos_sizes(1000, 32).keep_low) == (8, 8)
    assert lanczos_sizes(10, 64).basis == 10                  # capped at N
    small = lanczos_sizes(8, 5)
    assert (small.keep, small.keep_low) == (1, 1)
    assert lanczos_sizes(100, 6, keep=4).keep_low == 0        # p//4 would leave no room: p − 2 − keep
    with pytest.raises(ValueError, match="≥ 3"):
        lanczos_sizes(100, 2)
    with pytest.raises(ValueError, match="keep"):
        lanczos_sizes(100, 8, keep=4, keep_low=4)
    with pytest.raises(ValueError, match="krylov_dim"):
        lanczos_sizes(100, 8.0)


def test_lanczos_steps_build_an_orthonormal_basis_and_the_projected_matrix():
    from phasetorch.init.eigensolvers import lanczos_expand, lanczos_extend, lanczos_link, lanczos_note, \
        lanczos_start, thick_restart, lanczos_sizes, ritz_test
    N, p = 30, 8
    D = torch.stack([_symmetric(N, 1), _symmetric(N, 2)])

    def matvec(v, idx):
        return torch.einsum("bij,bj->bi", D[idx], v)

    v0 = torch.randn(2, N, generator=torch.Generator().manual_seed(3), dtype=F64)
    state = lanczos_start(v0 / v0.norm(dim=-1, keepdim=True), p)
    for j in range(p - 1):                 # the device's half of a step, then the host's
        lanczos_note(state, lanczos_expand(state, matvec), j)
        lanczos_extend(state)
        lanczos_link(state, j)
    lanczos_note(state, lanczos_expand(state, matvec), p - 1)
    V = state.V
    eye = torch.eye(p, dtype=F64).expand(2, p, p)
    torch.testing.assert_close(V @ V.mT, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(state.H, V @ D @ V.mT, atol=1e-12, rtol=0)       # tridiagonal Vᵀ D V
    # the Ritz test: Ritz values of H, residual β|s_j| = ‖D u − θ u‖
    test = ritz_test(state.H, state.beta, torch.arange(2), state.j, tol=1e-6)
    torch.testing.assert_close(test.values, torch.linalg.eigvalsh(state.H), atol=1e-12, rtol=0)
    u = torch.einsum("bk,bkn->bn", test.vector, V)
    true_res = (torch.einsum("bij,bj->bi", D, u) - test.top.unsqueeze(-1) * u).norm(dim=-1)
    torch.testing.assert_close(test.residual, true_res, atol=1e-10, rtol=1e-8)
    # a thick restart keeps an orthonormal basis whose projected matrix is diag(θ_kept) plus an arrow
    sizes = lanczos_sizes(N, p)
    thick_restart(state, sizes)
    k = sizes.kept
    W = state.V[:, : k + 1]
    torch.testing.assert_close(W @ W.mT, torch.eye(k + 1, dtype=F64).expand(2, -1, -1), atol=1e-12, rtol=0)
    proj = W @ D @ W.mT
    torch.testing.assert_close(state.H[:, :k, : k + 1], proj[:, :k], atol=1e-10, rtol=0)
    assert state.j == k and torch.count_nonzero(state.H[:, :k, :k] - torch.diag_embed(
        torch.diagonal(state.H[:, :k, :k], dim1=-2, dim2=-1))) == 0


def test_next_test_steps_schedule():
    from phasetorch.init.eigensolvers import next_test_steps
    nan = float("nan")
    res = torch.tensor([1e-2, 1e-2, 1e-2, 1e-9], dtype=F64)
    target = torch.full((4,), 1e-6, dtype=F64)
    last_q = torch.tensor([nan, math.log(1e4) + 2 * 0.5, math.log(1e4), 1.0], dtype=F64)
    last_test = torch.tensor([0, 8, 8, 8])
    nxt, q = next_test_steps(res, target, 10, last_q, last_test)
    torch.testing.assert_close(q, torch.tensor([math.log(1e4)] * 3 + [0.0], dtype=F64))
    # first test: 1 ahead; decay 0.5/step: ⌊clamp(q/(2·0.5), 1, 8)⌋ = 8; no decay: 4; converged (q = 0): 1
    assert nxt.tolist() == [11, 18, 14, 11]


def test_default_krylov_dim_keeps_a_basis_that_converges_on_large_images():
    """64 vectors up to n = 2¹⁹, then 32 (never the 16 that ran into the product cap at 1024²)."""
    from phasetorch.init.spectral import default_krylov_dim
    assert default_krylov_dim(10) == 10
    assert default_krylov_dim(1000) == 64
    assert default_krylov_dim(2 ** 19) == 64
    assert default_krylov_dim(2 ** 20) == 32
    assert default_krylov_dim(2 ** 24) == 32


def test_a_lanczos_basis_larger_than_the_memory_is_refused_up_front(monkeypatch):
    import phasetorch.tensors as tensors
    op = GaussianMeasurement(64, 512, complex=True, seed=0, dtype=F64)
    y = op(torch.randn(3, 64, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    need = 3 * (64 + 1) * 64 * 16                            # B × (p + 1) × n complex128
    monkeypatch.setattr(tensors, "available_memory", lambda device=None: need - 1)
    with pytest.raises(ValueError, match="Lanczos basis.*krylov_dim"):
        spectral_init(op, y, seed=0)
    monkeypatch.setattr(tensors, "available_memory", lambda device=None: need)
    x0 = spectral_init(op, y, seed=0)
    assert x0.shape == (3, 64) and torch.isfinite(x0).all()
    spectral_init(op, y, seed=0, solver="power", max_iter=50)   # no basis: not refused
