r"""Spectral initialization: the top eigenvector of D = (1/m) Σ_i T(ŷ_i) a_i a_iᴴ, matrix-free and batched.

For intensities y = |Ax|² (shape ``(*batch, *op.measurement_shape)``) and a preprocessing T of the
per-sample normalised intensities ŷ = y / mean(y) (:mod:`phasetorch.init.preprocessing`), the spectral
estimator is the top eigenvector of

    D = (1/(m·e)) Aᴴ diag(T(ŷ)) A,     e = op.entry_energy = E|A_ij|²,

scaled to the norm the data imply, ‖x₀‖² = mean(y)/e (the library's scale convention: E y_i =
e‖x‖²). Dividing by e makes the spectrum operator-independent: for i.i.d. Gaussian A (e = 1) this
is the D of the theory (Lu & Li 2017; Mondelli & Montanari 2018; Luo, Alghamdi & Lu 2019, whose
``optimal`` T = 1 − 1/ŷ gives λ₁(D) → 1/δ and the largest overlap at every δ), and
:func:`phasetorch.theory.spectral_overlap` predicts |⟨x₀, x*⟩|/(‖x₀‖‖x*‖).

D is never formed: each product D v costs one ``op.linear`` and one ``op.adjoint`` call for the
whole batch of samples still running. The eigensolvers are in :mod:`phasetorch.init.eigensolvers`
(thick-restart Lanczos with full reorthogonalisation by default; shifted power method on request).
Everything is per sample — normalisation ŷ, shift, stopping test, scale — so a batch gives what
single runs give (deepinv's ``spectral_methods`` normalises over the whole batch; this does not).

The global phase (sign for real signals) is not identifiable from |Ax|²; phasetorch returns the
eigenvector rotated so that its largest-modulus coordinate is real and positive.

Measurement models (:class:`~phasetorch.physics.MeasurementModel`, ``LinkMeasurement``) are
accepted wherever an operator is: with a modulus link (intensity, amplitude, noisy intensity) the
observations are first mapped to intensity-equivalents ``link.intensity_of(y)`` (amplitudes:
sign(y)·y²) and the method runs on the linear operator; with a non-modulus link (relu) T is applied
to the observations as given, y/mean(y), on the linear operator, and the returned norm follows the
same rule ‖x₀‖² = mean(y)/e, which is then not ‖x‖² (rescale x₀ with the link's own moment).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .eigensolvers import lanczos_sizes, lanczos_top, power_top
from ..allocator import retaining
from ..physics.base import MeasurementOperator
from ..physics.kernels import Map, PointwiseMap
from ..physics.model import MeasurementModel, resolve_model
from ..tensors import check_int, check_memory, check_number, default_sync_every, make_generator
from .preprocessing import Preprocessing, preprocess

SOLVERS = ("lanczos", "power")
DEFAULT_MAX_ITER = {"lanczos": 2000, "power": 20000}
#: relative residual ‖D u − θ u‖/|θ| at which the eigensolver stops
DEFAULT_TOL = 1e-6


def default_krylov_dim(n: int) -> int:
    """Lanczos basis size: min(n, 64, max(32, 2²⁵ // n)) — 64 up to n = 2¹⁹, 32 above (a 1024² image:
    2²⁵ stored entries per sample, 512 MiB in complex128). A smaller basis saves memory and costs
    products: at 16 (with p//2 bottom vectors kept, the old default) the start on coded diffraction at
    1024² took 2.2× the products of 32 (``results/spectral_start.md``)."""
    return int(min(n, 64, max(32, 2 ** 25 // max(n, 1))))


__all__ = ["spectral_init", "SpectralInfo", "spectral_matrix", "count_matvecs", "MatvecCounter", "DEFAULT_MAX_ITER",
           "DEFAULT_TOL", "default_krylov_dim"]


@dataclass
class SpectralInfo:
    """Diagnostics of :func:`spectral_init`, one entry per sample (tensors of shape ``batch``).

    iterations: solver steps (Lanczos vectors generated, restarts included; power steps).
    matvecs: products with D, i.e. pairs of ``op.linear``/``op.adjoint`` applications per sample
        (power method: includes the steps that estimate the shift).
    eigenvalue: top eigenvalue θ of D (of W^{-1/2} D W^{-1/2} when whitened), float64.
    gap: estimate of λ₁ − λ₂ (Lanczos: difference of the two top Ritz values, an over-estimate
        before convergence; power: from the observed contraction rate).
    converged: whether ‖D u − θ u‖ ≤ tol·|θ| was reached within ``max_iter``.
    residual: the final relative residual ‖D u − θ u‖/|θ| (Lanczos: the recurrence value β|s_j|/|θ|).
    shift: per-sample shift σ of the power method (zeros for Lanczos).
    """

    iterations: torch.Tensor
    matvecs: torch.Tensor
    eigenvalue: torch.Tensor
    gap: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    shift: torch.Tensor
    solver: str = "lanczos"
    whitened: bool = False


# ---------------------------------------------------------------------------- matvec counting
class MatvecCounter:
    """Counts applications of an operator inside :func:`count_matvecs`.

    ``linear_calls``/``adjoint_calls``: number of calls; ``linear_vectors``/``adjoint_vectors``:
    number of signal/measurement vectors processed (a call on a batch of b vectors counts b).
    """

    def __init__(self) -> None:
        self.linear_calls = 0
        self.adjoint_calls = 0
        self.linear_vectors = 0
        self.adjoint_vectors = 0

    def __repr__(self) -> str:
        return (f"MatvecCounter(linear_calls={self.linear_calls}, adjoint_calls={self.adjoint_calls}, "
                f"linear_vectors={self.linear_vectors}, adjoint_vectors={self.adjoint_vectors})")


@contextlib.contextmanager
def count_matvecs(op: MeasurementOperator):
    """Context manager counting ``op.linear`` / ``op.adjoint`` calls and vectors (for benchmarks);
    a fused ``op.linear_adjoint`` pass counts as one of each.

    >>> with count_matvecs(op) as c:
    ...     x0 = spectral_init(op, y)
    >>> c.linear_vectors, c.adjoint_calls

    Wraps the methods on this instance only (on the operator of a measurement model) and restores
    them on exit.
    """
    op = resolve_model(op).operator
    counter = MatvecCounter()
    lin, adj = op.linear, op.adjoint
    k_sig, k_meas = len(op.signal_shape), len(op.measurement_shape)

    def linear(x):
        counter.linear_calls += 1
        counter.linear_vectors += math.prod(x.shape[: x.dim() - k_sig])
        return lin(x)

    def adjoint(z):
        counter.adjoint_calls += 1
        counter.adjoint_vectors += math.prod(z.shape[: z.dim() - k_meas])
        return adj(z)

    def linear_adjoint(x, fn):                     # one fused pass = one linear + one adjoint product
        b = math.prod(x.shape[: x.dim() - k_sig])
        counter.linear_calls += 1
        counter.adjoint_calls += 1
        counter.linear_vectors += b
        counter.adjoint_vectors += b
        return lin_adj(x, fn)

    lin_adj = op.linear_adjoint
    op.linear, op.adjoint, op.linear_adjoint = linear, adjoint, linear_adjoint
    try:
        yield counter
    finally:
        for name in ("linear", "adjoint", "linear_adjoint"):
            op.__dict__.pop(name, None)


# ---------------------------------------------------------------------------- checks and pieces
def _linear_problem(op, y: torch.Tensor):
    """(B, y') for an operator or a measurement model: the linear operator and intensity-equivalents.

    Modulus links: y' = ``link.intensity_of(y)``; other links: y' = y (see the module docstring).
    """
    model = resolve_model(op)
    _check_inputs(model.operator, y)
    if model.link.modulus:
        mapped = model.link.intensity_of(y)
        if mapped is not y and not torch.isfinite(mapped).all():
            raise ValueError("the intensity-equivalents of y overflow (inf); rescale the observations")
        y = mapped
    return model.operator, y


def _check_inputs(op, y: torch.Tensor) -> None:
    if not isinstance(op, MeasurementOperator):
        raise ValueError(f"op must be a phasetorch MeasurementOperator or MeasurementModel, got {type(op).__name__}")
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor of intensities, got {type(y).__name__}")
    if y.is_complex():
        raise ValueError("y must hold real intensities |Ax|², got a complex tensor; pass op(x), not op.linear(x)")
    op.check_measurements(y)
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or inf; remove or replace those measurements before spectral_init")


def _whitening(op, whiten: Optional[bool]) -> Optional[torch.Tensor]:
    """W^{-1/2} as a flat (n,) real tensor, or None. W = diag(AᴴA)/(m·e) (≈ 1 on average)."""
    has_diag = callable(getattr(op, "gram_diagonal", None))
    if whiten is None:
        whiten = bool(op.spectral_whitening) and has_diag
    if not whiten:
        return None
    if not has_diag:
        raise ValueError(
            f"whiten=True needs diag(AᴴA): {type(op).__name__} has no gram_diagonal() method; "
            "use whiten=False (or add gram_diagonal() to the operator)")
    diag = op.gram_diagonal()
    if not isinstance(diag, torch.Tensor) or tuple(diag.shape) != tuple(op.signal_shape):
        raise ValueError(f"{type(op).__name__}.gram_diagonal() must return a tensor of shape {op.signal_shape}")
    diag = diag.real if diag.is_complex() else diag
    diag = diag.to(device=op.device, dtype=op.real_dtype).reshape(-1) / (op.m * op.entry_energy)
    if not torch.isfinite(diag).all() or (diag < 0).any():
        raise ValueError("gram_diagonal() returned negative or non-finite values")
    # Unmeasured coordinates (zero diagonal) carry no information: their weight is 0.
    return torch.where(diag > 0, diag.clamp_min(torch.finfo(diag.dtype).tiny).rsqrt(), torch.zeros_like(diag))


def _fix_phase(x: torch.Tensor) -> torch.Tensor:
    """Rotate each row so that its largest-modulus coordinate is real positive (sign for real rows)."""
    idx = x.abs().argmax(-1, keepdim=True)
    pivot = x.gather(-1, idx)
    if x.is_complex():
        unit = pivot / pivot.abs().clamp_min(torch.finfo(x.real.dtype).tiny)
        return x * unit.conj()
    return x * torch.where(pivot < 0, -torch.ones_like(pivot), torch.ones_like(pivot))


def spectral_matrix(op: Union[MeasurementOperator, MeasurementModel], y: torch.Tensor,
                    preprocessing: Preprocessing = "optimal") -> torch.Tensor:
    """Dense D = (1/(m·e)) Aᴴ diag(T(ŷ)) A, shape ``(*batch, n, n)`` (for tests and small problems only).

    Built column by column from ``op.linear``/``op.adjoint`` applied to the identity, so it costs n
    products; :func:`spectral_init` never forms it. A measurement model is resolved as by
    :func:`spectral_init`.
    """
    op, y = _linear_problem(op, y)
    k = len(op.measurement_shape)
    batch = tuple(y.shape[: y.dim() - k])
    T = preprocess(y, preprocessing, delta=op.delta, event_dims=k, op=op)
    eye = torch.eye(op.n, dtype=op.signal_dtype, device=op.device).reshape(op.n, *op.signal_shape)
    Ae = op.linear(eye)                                   # (n, *meas): column j = A e_j
    Tf = T.reshape(-1, 1, *op.measurement_shape)
    cols = op.adjoint(Tf * Ae.unsqueeze(0))               # (B, n, *sig): row j = Aᴴ T A e_j
    D = cols.reshape(-1, op.n, op.n).transpose(-1, -2) / (op.m * op.entry_energy)
    return D.reshape(*batch, op.n, op.n)


# ---------------------------------------------------------------------------- main entry point
@retaining(lambda op, *args, **kwargs: op.device)
def spectral_init(op: Union[MeasurementOperator, MeasurementModel], y: torch.Tensor, preprocessing: Preprocessing = "optimal",
                  solver: str = "lanczos", max_iter: Optional[int] = None, tol: float = DEFAULT_TOL,
                  whiten: Optional[bool] = None, shift: Optional[Union[float, torch.Tensor]] = None,
                  seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                  return_info: bool = False, progress: bool = False, real_signal: Optional[bool] = None,
                  krylov_dim: Optional[int] = None, start: Optional[torch.Tensor] = None,
                  sync_every: Optional[int] = None, keep: Optional[int] = None, keep_low: Optional[int] = None):
    r"""Spectral initialization x₀ for intensities y = |Ax|², per sample.

    x₀ = √(mean(y)/e) · u with u the unit top eigenvector of D = (1/(m·e)) Aᴴ diag(T(ŷ)) A,
    ŷ = y/mean(y) per sample, e = ``op.entry_energy`` (Candès, Li & Soltanolkotabi 2015 for T = ŷ;
    Chen & Candès 2015 ``trimmed``; Wang, Giannakis & Eldar 2017 ``orthogonality``; Wang et al. 2018
    ``weighted``; Mondelli & Montanari 2018 ``mm``; Luo, Alghamdi & Lu 2019 ``optimal``). Noisy
    intensities may be negative; a sample whose mean(y) is ≤ 0 carries no signal and is rejected
    (ValueError from :func:`phasetorch.init.preprocessing.preprocess`).

    Parameters
    ----------
    op : a :class:`~phasetorch.physics.MeasurementOperator`, or a
        :class:`~phasetorch.physics.MeasurementModel` / ``LinkMeasurement``: a modulus link's
        observations are mapped to ``op.link.intensity_of(y)`` and a non-modulus link's are used
        as given, on ``op.operator`` (module docstring).
    y : intensities (observations of the model) of shape ``(*batch, *op.measurement_shape)``, real,
        finite, on the operator's device and dtype. Negative (noisy) values are allowed where T is
        defined for them.
    preprocessing : a name of :data:`phasetorch.init.preprocessing.NAMES` or a callable T(ŷ).
    solver : ``"lanczos"`` (thick-restart Lanczos, full reorthogonalisation; default) or ``"power"``
        (shifted power method). See :mod:`phasetorch.init.eigensolvers`.
    max_iter : most products with D per sample (default 2000 for Lanczos, 20000 for power).
    tol : stop a sample once ‖D u − θ u‖ ≤ tol·|θ| for its top Ritz/Rayleigh pair (θ, u).
    whiten : solve the eigenproblem of W^{-1/2} D W^{-1/2}, W = diag(AᴴA)/(m·e), and return
        x₀ ∝ W^{-1/2} v (v its top eigenvector), rescaled to ‖x₀‖² = mean(y)/e. This equalises the
        coordinates' sensitivities when the rows of A do not cover them evenly (coded diffraction
        masks). ``None``: on when the operator asks for it (class attribute ``spectral_whitening``,
        True for :class:`~phasetorch.physics.CodedDiffraction`) and offers ``gram_diagonal()``; ``True`` requires ``op.gram_diagonal()`` (shape ``signal_shape``).
        Coordinates with zero diagonal get 0.
    shift : power method only: per-sample shift σ (scalar or ``batch``-shaped); ``None`` estimates it
        from the data per sample (see :func:`phasetorch.init.eigensolvers.power_top`).
    seed, generator : the random start vector (one vector, shared by all samples of the batch, so a
        batch reproduces single runs with the same seed).
    return_info : also return a :class:`SpectralInfo`.
    progress : show a tqdm bar of the iterations.
    real_signal : for a complex operator, ``True`` restricts the estimate to real vectors (top
        eigenvector of Re D) and returns a real tensor. For a real operator the estimate is real anyway.
    krylov_dim : Lanczos basis size before a thick restart (default min(n, 64, max(32, 2²⁵ // n)),
        i.e. 64 up to n = 2¹⁹, then 32). Memory: batch × (krylov_dim + 1) × n entries of the working
        dtype, refused up front (ValueError) when more than the device has available.
    keep, keep_low : Lanczos only: the top and bottom Ritz vectors a thick restart keeps (defaults
        krylov_dim // 4 each, :func:`phasetorch.init.eigensolvers.lanczos_sizes`; keep ≥ 1, keep_low ≥ 0,
        keep + keep_low ≤ krylov_dim − 2). Keeping bottom ones locks the far end of the spectrum, which
        ``optimal``'s large negative weights put far from the top; each kept vector is one Lanczos step
        fewer per restart cycle (``scripts/spectral_study.py`` compares choices).
    start : the eigensolver's start vectors instead of one drawn from ``seed``/``generator``: shape
        ``signal_shape`` (one for all samples) or ``(*batch, *signal_shape)`` (one per sample — e.g.
        each drawn from its own seed, so that a batched run reproduces every sample's single run;
        :func:`phasetorch.theory.simulate` does this). Real for a real working space.
    sync_every : k, the eigensolver steps between the host's reads (default: 1 on a CPU, 16 on a GPU,
        :data:`phasetorch.tensors.SYNC_EVERY`); every decision is still taken at its step, so the
        result does not depend on k beyond the rounding of products over batches of other sizes
        (a sample that finished is dropped at the next read instead of at once).

    Returns
    -------
    x0 of shape ``(*batch, *op.signal_shape)`` and dtype ``op.signal_dtype`` (real dtype with
    ``real_signal=True``); with ``return_info=True`` the pair ``(x0, SpectralInfo)``.

    Notes
    -----
    Each iteration applies ``op.linear`` and ``op.adjoint`` once to the stacked vectors of all
    samples still running; converged samples leave the batch. Runs under ``torch.no_grad()``.
    The phase is fixed by making the largest-modulus coordinate real positive. With float32
    operators the attainable accuracy of the *exact* D's eigenvector is limited by ε₃₂‖D‖/gap
    (``optimal`` reaches T = 1 − 1/ε = −999 at small ŷ, so ‖D‖ ≫ λ₁); the Lanczos stopping test uses the recurrence residual of the
    computed operator.
    """
    with torch.no_grad():
        return _spectral_init(op, y, preprocessing, solver, max_iter, tol, whiten, shift, seed, generator,
                              return_info, progress, real_signal, krylov_dim, start, sync_every, keep, keep_low)


def preprocessing_name(preprocessing) -> str:
    return preprocessing if isinstance(preprocessing, str) else getattr(preprocessing, "__name__", repr(preprocessing))


def check_weights(T: torch.Tensor, preprocessing, op: Optional[MeasurementOperator] = None) -> None:
    """Refuse preprocessed weights (B, m) that are non-finite or zero on every measurement of a sample:
    the spectral matrix Aᴴ diag(T) A is then 0 (or undefined) and has no leading eigenvector.
    With ``op``, T is ``(B, *op.measurement_shape)`` and the test covers all of the operator's
    measurements (every process's, for a sharded operator: the same answer on every rank)."""
    if op is None:
        bad = ~torch.isfinite(T).all(-1) | ~(T != 0).any(-1)
    else:
        flags = torch.stack([~torch.isfinite(T), T != 0]).to(torch.float64)
        counts = op.measurement_sum(flags)
        bad = (counts[0] > 0) | (counts[1] == 0)
    if bool(bad.any()):
        idx = bad.nonzero().reshape(-1).tolist()[:8]
        raise ValueError(f"spectral_init: preprocessing {preprocessing_name(preprocessing)!r} gives T(y) that is zero on "
                         f"every measurement (or not finite) for sample(s) {idx}: the spectral matrix has no leading "
                         f"eigenvector (a truncation that keeps no measurement, or y with almost no non-zero entry); "
                         f"use preprocessing='optimal' (or 'identity'), or check y")


def check_start_vectors(start, sig: tuple, batch: tuple, real_space: bool) -> torch.Tensor:
    """``start=`` of :func:`spectral_init` flattened to (n,) or (B, n), checked (shape, finite, non-zero, real
    when the working space is real)."""
    if not isinstance(start, torch.Tensor):
        raise ValueError(f"spectral_init: start must be a tensor of shape {sig} or {(*batch, *sig)}, "
                         f"got {type(start).__name__}")
    if tuple(start.shape) not in (sig, (*batch, *sig)):
        raise ValueError(f"spectral_init: start has shape {tuple(start.shape)}; expected {sig} (one for all samples) "
                         f"or {(*batch, *sig)} (one per sample)")
    if real_space and start.is_complex():
        raise ValueError("spectral_init: start is complex but the estimate is real (a real operator or real_signal=True)")
    flat = start.reshape(-1, math.prod(sig)) if start.dim() > len(sig) else start.reshape(1, -1)
    if not bool(torch.isfinite(flat).all()) or bool((flat.abs().amax(-1) == 0).any()):
        raise ValueError("spectral_init: every start vector must be finite and non-zero")
    return start.reshape(-1) if tuple(start.shape) == sig else start.reshape(math.prod(batch), -1)


def _spectral_init(op, y, preprocessing, solver, max_iter, tol, whiten, shift, seed, generator, return_info,
                   progress, real_signal, krylov_dim, start=None, sync_every=None, keep=None, keep_low=None):
    op, y = _linear_problem(op, y)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver != "lanczos" and (keep is not None or keep_low is not None):
        raise ValueError("keep= and keep_low= are the Lanczos restart's; they do not apply to solver='power'")
    tol = check_number(tol, "tol", 0.0)
    max_iter = DEFAULT_MAX_ITER[solver] if max_iter is None else check_int(max_iter, "max_iter", 1)
    if shift is not None and solver != "power":
        raise ValueError("shift= applies to solver='power' only")
    kdim = default_krylov_dim(op.n) if krylov_dim is None else check_int(krylov_dim, "krylov_dim", 1)
    if solver == "lanczos":              # the restart's sizes refused here, before any product
        lanczos_sizes(op.n, kdim, keep, keep_low)

    k = len(op.measurement_shape)
    batch = tuple(y.shape[: y.dim() - k])
    B = math.prod(batch)
    if B == 0:
        raise ValueError(f"spectral_init: y has an empty batch (shape {tuple(y.shape)}): there is nothing to "
                         f"initialise; pass at least one sample")
    n, sig = op.n, tuple(op.signal_shape)
    real_space = (not op.is_complex) or bool(real_signal)
    work_dtype = op.real_dtype if real_space else op.signal_dtype
    rdt = op.real_dtype

    T = preprocess(y, preprocessing, delta=op.delta, event_dims=k, op=op).reshape(B, *op.measurement_shape)
    check_weights(T, preprocessing, op)
    if op.sharded:                          # every process's measurements (the same number on every rank)
        mean_y = op.measurement_mean(y.reshape(B, *op.measurement_shape)).to(torch.float64)
    else:
        mean_y = y.reshape(B, op.m).mean(-1).to(torch.float64)
    norm2 = mean_y.clamp_min(torch.finfo(torch.float64).tiny) / op.entry_energy   # preprocess rejects ≤ 0
    wvec = _whitening(op, whiten)
    scale = 1.0 / (op.m * op.entry_energy)

    # Operators whose batch dimensions index the operator itself (GaussianEnsemble) cannot follow
    # the solver's shrinking set of running samples: apply them to the full batch (zeros elsewhere).
    batch_indexed = getattr(op, "batch_indexed", False)

    def apply_gram(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        if batch_indexed and b != B:
            full = v.new_zeros(B, n)
            full[idx] = v
            return apply_gram(full, torch.arange(B, device=v.device))[idx]
        if batch_indexed:                          # every sample (the batch indexes the operator's matrices)
            Ti, shape = T.reshape(*batch, *op.measurement_shape), (*batch, *sig)
        else:
            Ti, shape = (T if idx.numel() == B and b == B else T.index_select(0, idx)), (b, *sig)

        def weigh(z, part):                        # z ↦ T ⊙ z, measurement by measurement
            return z * (Ti.reshape(z.shape) if part is None else Ti[..., part])

        if Ti.dtype == op.real_dtype:              # the same map in closed form: one fused C pass on a dense A
            weigh.pointwise = PointwiseMap(Map.SCALE, Ti)
        return op.linear_adjoint(v.reshape(shape), weigh)[1].reshape(b, n)

    def matvec(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b = v.shape[0]
        if wvec is not None:
            v = v * wvec
        u = apply_gram(v, idx)
        if real_space and u.is_complex():
            u = u.real
        u = u * scale
        if wvec is not None:
            u = u * wvec
        return u

    if start is None:
        g = make_generator(seed, generator)
        if real_space:
            start = torch.randn(n, generator=g, dtype=torch.float64)
        else:
            start = torch.view_as_complex(torch.randn(n, 2, generator=g, dtype=torch.float64))
    else:
        start = check_start_vectors(start, sig, batch, real_space)
    start = op.replicate(start.to(device=op.device, dtype=work_dtype))   # one start on every process
    if wvec is not None:
        start = start * (wvec > 0)
        if not (start != 0).any():
            raise ValueError("gram_diagonal() is zero everywhere: no coordinate is measured")
    v0 = start.expand(B, n).clone() if start.dim() == 1 else start.reshape(B, n).clone()

    if B == 0:
        x0 = torch.zeros(*batch, *sig, dtype=work_dtype, device=op.device)
        if not return_info:
            return x0
        empty = torch.zeros(batch, dtype=torch.float64, device=op.device)
        ie = torch.zeros(batch, dtype=torch.int64, device=op.device)
        no = torch.zeros(batch, dtype=torch.bool, device=op.device)
        return x0, SpectralInfo(ie, ie.clone(), empty, empty.clone(), no, empty.clone(), empty.clone(),
                                solver, wvec is not None)

    k_sync = default_sync_every(op.device) if sync_every is None else check_int(sync_every, "sync_every", 1)
    if solver == "lanczos":
        basis = B * (min(kdim, n) + 1) * n * v0.element_size()       # V (b, p, n) and w
        check_memory(basis, f"the Lanczos basis of the spectral start ({B} × {min(kdim, n) + 1} vectors of {n} "
                     f"{str(work_dtype).replace('torch.', '')} entries)",
                     "pass a smaller krylov_dim= (reconstruct: spectral_options={'krylov_dim': ...}; fewer "
                     "vectors cost more products) or a smaller batch", device=op.device)
        res = lanczos_top(matvec, v0, tol=tol, max_iter=int(max_iter), krylov_dim=kdim, keep=keep,
                          keep_low=keep_low, progress=progress, sync_every=k_sync)
    else:
        sh = None
        if shift is not None:
            sh = torch.as_tensor(shift, dtype=torch.float64, device=op.device)
            if sh.dim() > 0:
                if tuple(sh.shape) != batch:
                    raise ValueError(f"shift must be a scalar or have the batch shape {batch}, got {tuple(sh.shape)}")
                sh = sh.reshape(B)
        res = power_top(matvec, v0, tol=tol, max_iter=int(max_iter), shift=sh, progress=progress, sync_every=k_sync)

    u = res.vector
    if wvec is not None:
        u = u * wvec
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(torch.finfo(rdt).tiny)
    u = _fix_phase(u)
    if not torch.isfinite(u).all():
        raise ValueError(f"spectral_init: the leading eigenvector for preprocessing {preprocessing_name(preprocessing)!r} "
                         f"is not finite (the preprocessed weights T(y) overflow or the data are degenerate); use "
                         f"preprocessing='optimal' or check y")
    x0 = (u * norm2.sqrt().to(rdt).unsqueeze(-1)).reshape(*batch, *sig)
    if not return_info:
        return x0
    info = SpectralInfo(
        iterations=res.iterations.reshape(batch), matvecs=res.matvecs.reshape(batch),
        eigenvalue=res.eigenvalue.reshape(batch), gap=(res.eigenvalue - res.second).reshape(batch),
        converged=res.converged.reshape(batch), residual=res.residual.reshape(batch),
        shift=res.shift.reshape(batch), solver=solver, whitened=wvec is not None)
    return x0, info
