r"""Matrix-free, batched eigensolvers for the top eigenpair of Hermitian operators.

Both solvers work on a *batch* of independent Hermitian operators D_b (b = 0..B−1) given only
through a batched product ``matvec(v, idx)`` that returns D_b v_b for the rows ``v`` belonging to
the samples ``idx``. Every sample has its own normalisation, shift, Ritz values and stopping test;
a sample that has converged is dropped from later products at the next host read (every
``sync_every`` = k steps: the device runs k steps between reads and the host takes their decisions
afterwards, in order, so the result does not depend on k; a finished sample costs at most k − 1
products in vain, and its result does not depend on the other samples). A batch therefore gives what single runs give, up
to floating-point summation order.

* :func:`lanczos_top` — thick-restart Lanczos (Wu & Simon 2000, "Thick-restart Lanczos method for
  large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)) with full
  reorthogonalisation (classical Gram–Schmidt applied twice, "CGS2": Giraud, Langou, Rozložník &
  van den Eshof 2005). The Krylov basis is kept in the dtype of the vectors; the projected
  matrix H = Vᴴ D V (tridiagonal plus an arrow after a restart) and its small eigenproblems are
  handled in float64 (:func:`torch.linalg.eigvalsh` plus inverse iteration for the top Ritz
  vector, :func:`torch.linalg.eigh` at restarts). The residual of the Ritz pair (θ, u = V s) is
  ‖D u − θ u‖ = β_j |s_j| (the Lanczos relation D V_j = V_j H_j + β_j v_{j+1} e_jᵀ), and a
  sample stops once β_j |s_j| ≤ tol · |θ|.
* :func:`power_top` — shifted power method x ← (D + σ I) x / ‖(D + σ I) x‖ with a per-sample shift
  σ_b, stopped on the Rayleigh-quotient residual ‖D x − θ x‖ ≤ tol · |θ|, θ = xᴴ D x.

Residuals are those of the computed operator: with float32 products the *true* residual of the
exact D cannot fall much below ε₃₂‖D‖, although the eigenvector itself is still accurate to
ε₃₂‖D‖/gap. Use a float64 operator for more digits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .. import replay
from ..physics import kernels
from ..tensors import check_int, check_number, inner

MatVec = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EigResult:
    """Per-sample result of a batched top-eigenpair solve (all tensors have leading size B).

    vector: unit-norm top (Ritz) vector, shape (B, N). eigenvalue: its Rayleigh quotient θ (float64).
    second: estimate of the second eigenvalue (Lanczos: second Ritz value; power: from the observed
    convergence rate), NaN when unavailable. residual: ‖D u − θ u‖ / |θ| (float64).
    iterations: solver steps taken; matvecs: products with D (int64). converged: bool.
    shift: per-sample shift used (power method; zeros for Lanczos).
    captured: the power method's blocks run each way where they are captured as graphs
    (:class:`phasetorch.replay.Blocks`; None where nothing is captured).
    """

    vector: torch.Tensor
    eigenvalue: torch.Tensor
    second: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    matvecs: torch.Tensor
    converged: torch.Tensor
    shift: torch.Tensor
    captured: Optional[dict] = None


def _norm(v: torch.Tensor) -> torch.Tensor:
    """‖v‖ along the last dimension; a complex v through its real view (the same norm: torch's complex
    norm forms |v_i| first, a pass that costs over ten times the reduction on the CPU)."""
    if v.is_complex():
        return torch.linalg.vector_norm(torch.view_as_real(v.resolve_conj()), dim=(-2, -1))
    return torch.linalg.vector_norm(v, dim=-1)


def _check_start(v0: torch.Tensor) -> torch.Tensor:
    if v0.dim() != 2:
        raise ValueError(f"start vectors must have shape (batch, N), got {tuple(v0.shape)}")
    nrm = _norm(v0)
    if not torch.isfinite(nrm).all() or (nrm == 0).any():
        raise ValueError("start vectors must be finite and nonzero")
    return v0 / nrm.unsqueeze(-1)


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def _reals(t: torch.Tensor) -> torch.Tensor:
    """The real view of a basis (b, k, N) or vectors (b, N), complex entries as (re, im) pairs along the
    last dimension (a view where the layout allows)."""
    return torch.view_as_real(t.resolve_conj()).flatten(-2) if t.is_complex() else t


def _project(Vb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients c_k = ⟨v_k, w⟩ for a batch of bases Vb (b, k, N) and vectors w (b, N).

    On the CPU, for a large basis, one C pass over it (:func:`phasetorch.physics.kernels.rows_dots` on
    the real views: Re c_k = ⟨v_k, w⟩ real, Im c_k = ⟨v_k, −i w⟩ real, summed in double); else written
    as conj(Vb · conj(w)) so that no conjugate copy of the basis is made.
    """
    Z, wr = _reals(Vb), _reals(w)
    if kernels.rows_apply(Z, wr):
        if w.is_complex():
            d = kernels.rows_dots(Z, wr, _reals(-1j * w))
            return torch.complex(d[..., 0], d[..., 1]).to(w.dtype)
        return kernels.rows_dots(Z, wr)[..., 0].to(w.dtype)
    if w.is_complex():
        return torch.bmm(Vb, w.conj().unsqueeze(-1)).squeeze(-1).conj()
    return torch.bmm(Vb, w.unsqueeze(-1)).squeeze(-1)


def _subtract(Vb: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w − Σ_k c_k v_k for a batch of bases Vb (b, k, N), coefficients c (b, k) and vectors w (b, N): on the
    CPU, for a large basis, one C pass over it (:func:`phasetorch.physics.kernels.rows_comb`), else a
    batched product."""
    Z, wr = _reals(Vb), _reals(w)
    if kernels.rows_apply(Z, wr):
        q = kernels.rows_comb(Z, -c, torch.ones(w.shape[0], dtype=torch.float64), wr)
        return torch.view_as_complex(q.view(*w.shape, 2)) if w.is_complex() else q
    return w - torch.bmm(c.unsqueeze(1), Vb).squeeze(1)


def _top_vector(H: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector of the largest eigenvalue θ of real symmetric float64 matrices H (b, k, k).

    Two steps of inverse iteration with the shift θ' = θ + 100·ε·‖H‖ (> λ_max, so θ'I − H is
    positive definite and Cholesky applies); each step damps the other directions by
    (θ' − θ)/(θ' − θ₂) ≈ 100·ε·‖H‖/gap.
    """
    k = H.shape[-1]
    eye = torch.eye(k, dtype=H.dtype, device=H.device)
    delta = 100 * torch.finfo(H.dtype).eps * scale.clamp_min(torch.finfo(H.dtype).tiny)
    M = (theta + delta).unsqueeze(-1).unsqueeze(-1) * eye - H
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):   # θ' not above the spectrum (should not happen): fall back to eigh
        return torch.linalg.eigh(H)[1][:, :, -1]
    s = torch.ones(H.shape[0], k, 1, dtype=H.dtype, device=H.device)
    for _ in range(2):
        s = torch.cholesky_solve(s, L)
        s = s / torch.linalg.vector_norm(s, dim=-2, keepdim=True)
    return s.squeeze(-1)


def _progress_bar(progress, total: int, desc: str):
    if not progress:
        return None
    return tqdm(total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------- thick-restart Lanczos, in pieces
@dataclass
class LanczosSizes:
    """Basis size p of a thick-restart Lanczos run and the Ritz vectors kept at a restart:
    ``keep`` top ones and ``keep_low`` bottom ones (``kept`` = keep + keep_low ≤ p − 2)."""

    basis: int
    keep: int
    keep_low: int

    @property
    def kept(self) -> int:
        return self.keep + self.keep_low


def lanczos_sizes(N: int, krylov_dim: int, keep: Optional[int] = None, keep_low: Optional[int] = None) -> LanczosSizes:
    """p = min(krylov_dim, N); defaults keep = max(1, p//4), keep_low = max(0, min(p//4, p − 2 − keep)).

    A restart leaves p − keep − keep_low new Lanczos steps per cycle; keep_low = p//4 leaves half of
    the basis new. Keeping p//2 bottom vectors (the old default) left a quarter new and cost more
    products at p ≤ 32 on coded diffraction (half as many again at p = 16) and on Gaussian designs
    at p = 16: products per setting in ``results/spectral_start.md`` (``scripts/spectral_study.py``)."""
    p = min(check_int(krylov_dim, "krylov_dim"), N)
    if p < 1:
        raise ValueError("krylov_dim must be ≥ 1")
    if p < N and p < 3:
        raise ValueError(f"krylov_dim must be ≥ 3 (got {krylov_dim}) unless it covers the whole space (N={N})")
    kt = check_int(keep, "keep") if keep is not None else max(1, p // 4)
    kl = check_int(keep_low, "keep_low") if keep_low is not None else max(0, min(p // 4, p - 2 - kt))
    if p < N and (kt < 1 or kl < 0 or kt + kl > p - 2):
        raise ValueError(f"need keep ≥ 1, keep_low ≥ 0 and keep + keep_low ≤ krylov_dim − 2 = {p - 2}; "
                         f"got keep={kt}, keep_low={kl}")
    return LanczosSizes(p, kt, kl)


@dataclass
class LanczosState:
    """The samples still running in a batched Lanczos iteration; row r of every tensor is one sample.

    On v0's device: ``V`` (b, p, N) orthonormal basis [v_1 … v_p] in the vector dtype, ``w`` the
    residual direction of the last step and ``beta_dev`` = ‖w‖, ``ids_dev`` the original sample
    indices. On the host (float64 / int64): ``H`` (b, p, p) the projected matrix Vᴴ D V (tridiagonal,
    plus an arrow after a restart), ``hmax`` the running max |H_ij| (scale of the breakdown test),
    ``beta`` = ‖w‖, ``ids``, and the test schedule ``next_test`` (step of the next Ritz test),
    ``last_test`` and ``last_q`` = log(residual/target) at the last test (NaN before the first).
    ``j`` is the index of the basis vector expanded by the last step (basis size j + 1).
    """

    ids: torch.Tensor
    ids_dev: torch.Tensor
    V: torch.Tensor
    H: torch.Tensor
    hmax: torch.Tensor
    next_test: torch.Tensor
    last_test: torch.Tensor
    last_q: torch.Tensor
    j: int = 0
    w: Optional[torch.Tensor] = None
    beta_dev: Optional[torch.Tensor] = None
    beta: Optional[torch.Tensor] = None

    HOST = ("ids", "H", "hmax", "beta", "next_test", "last_test", "last_q")
    DEVICE = ("ids_dev", "V", "w", "beta_dev")

    def basis(self) -> torch.Tensor:
        """V_{j+1} = [v_1 … v_{j+1}], shape (b, j + 1, N)."""
        return self.V[:, : self.j + 1]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the state rows ``rows`` (a host LongTensor), dropping finished samples."""
        rows_dev = rows.to(self.V.device)
        for name in self.HOST:
            setattr(self, name, getattr(self, name)[rows])
        for name in self.DEVICE:
            setattr(self, name, getattr(self, name)[rows_dev])


def lanczos_start(v0: torch.Tensor, p: int) -> LanczosState:
    """The state before the first step: V = [v0, 0, …] (v0 of unit norm per row), H = 0."""
    B, N = v0.shape
    host = torch.device("cpu")
    f64 = dict(dtype=torch.float64, device=host)
    ids = torch.arange(B)
    V = torch.zeros(B, p, N, dtype=v0.dtype, device=v0.device)
    V[:, 0] = v0
    return LanczosState(ids=ids, ids_dev=ids.to(v0.device), V=V, H=torch.zeros(B, p, p, **f64),
                        hmax=torch.zeros(B, **f64), next_test=torch.ones(B, dtype=torch.int64),
                        last_test=torch.zeros(B, dtype=torch.int64), last_q=torch.full((B,), float("nan"), **f64))


def lanczos_expand(state: LanczosState, matvec: MatVec) -> torch.Tensor:
    """One Lanczos step on v = v_{j+1}, on the device: w = D v, w ← (I − V Vᴴ)² w (CGS2),
    α = Re⟨v, D v⟩ (the two projection coefficients on v summed), β = ‖w‖; sets ``w`` and
    ``beta_dev`` and returns (α, β) of all rows as one (2, b) float64 tensor on the device, which
    :func:`lanczos_note` enters into the host's H when it is read (every ``sync_every`` steps)."""
    j, V = state.j, state.V
    w = matvec(V[:, j], state.ids_dev)
    if w.dtype != V.dtype:
        w = w.to(V.dtype)
    Vb = state.basis()
    c = _project(Vb, w)
    w = _subtract(Vb, c, w)
    c2 = _project(Vb, w)
    w = _subtract(Vb, c2, w)
    beta_dev = _norm(w)
    state.w, state.beta_dev = w, beta_dev
    return torch.stack([(c[:, j] + c2[:, j]).real.to(torch.float64), beta_dev.to(torch.float64)])


def lanczos_note(state: LanczosState, ab: torch.Tensor, j: int) -> None:
    """Enter the step of basis index ``j`` into the host state: H_jj = α, ``hmax``, ``beta`` = β
    (``ab``: that step's (2, b) host tensor)."""
    alpha, beta = ab[0], ab[1]
    state.H[:, j, j] = alpha
    state.hmax = torch.maximum(state.hmax, torch.maximum(alpha.abs(), beta))
    state.beta = beta


@dataclass
class RitzTest:
    """Top Ritz pairs of the state rows ``rows``: ``values`` all Ritz values (ascending, float64),
    ``top`` = θ the largest, ``vector`` = s its unit eigenvector of H_{j+1} (u = V s), ``residual``
    = ‖D u − θ u‖ = β_j |s_j|, ``target`` = tol·|θ|."""

    rows: torch.Tensor
    values: torch.Tensor
    top: torch.Tensor
    vector: torch.Tensor
    residual: torch.Tensor
    target: torch.Tensor


def ritz_test(H: torch.Tensor, beta: torch.Tensor, rows: torch.Tensor, j: int, tol: float) -> RitzTest:
    """Ritz values of H[rows, :j+1, :j+1] (``eigvalsh``), the top Ritz vector (:func:`_top_vector`)
    and its residual β_j|s_j| (Lanczos relation D V = V H + β v_{j+2} e_{j+1}ᵀ)."""
    Hj = H[rows, : j + 1, : j + 1]
    values = torch.linalg.eigvalsh(Hj)
    top = values[:, -1]
    s = _top_vector(Hj, top, values.abs().amax(-1))
    return RitzTest(rows, values, top, s, beta[rows] * s[:, j].abs(), tol * top.abs())


def next_test_steps(residual: torch.Tensor, target: torch.Tensor, it: int, last_q: torch.Tensor,
                    last_test: torch.Tensor):
    """(next test step, q) per sample, q = log(max(residual/target, 1)).

    From the observed decay rate r = (q_last − q)/(it − it_last) of a sample's own residual, the
    next test is ⌊clamp(q/(2r), 1, 8)⌋ steps ahead (half the predicted distance to convergence),
    4 steps without a decay, 1 step after a first test.
    """
    lq = torch.log((residual / target.clamp_min(torch.finfo(torch.float64).tiny)).clamp_min(1.0))
    rate = (last_q - lq) / (it - last_test).clamp_min(1).to(torch.float64)
    pred = torch.where(rate > 0, (0.5 * lq / rate.clamp_min(1e-300)).clamp(1, 8), torch.full_like(lq, 4.0))
    pred = torch.where(torch.isnan(last_q), torch.ones_like(lq), pred)
    return it + pred.floor().to(torch.int64), lq


@dataclass
class LanczosOutputs:
    """Per-sample results, filled as samples finish: the unit Ritz vector (device), θ, the second
    Ritz value, the relative residual, the step count and the convergence flag (host)."""

    vector: torch.Tensor
    eigenvalue: torch.Tensor
    second: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    @classmethod
    def empty(cls, B: int, N: int, dtype: torch.dtype, device: torch.device) -> "LanczosOutputs":
        nan = dict(fill_value=float("nan"), dtype=torch.float64)
        return cls(torch.zeros(B, N, dtype=dtype, device=device), torch.full((B,), **nan), torch.full((B,), **nan),
                   torch.full((B,), **nan), torch.zeros(B, dtype=torch.int64), torch.zeros(B, dtype=torch.bool))

    def result(self) -> EigResult:
        dev = self.vector.device
        it = self.iterations.to(dev)
        return EigResult(self.vector, self.eigenvalue.to(dev), self.second.to(dev), self.residual.to(dev), it,
                         it.clone(), self.converged.to(dev), torch.zeros(it.shape[0], dtype=torch.float64, device=dev))


def record_finished(out: LanczosOutputs, state: LanczosState, test: RitzTest, d: torch.Tensor,
                    breakdown: torch.Tensor, conv: torch.Tensor, it: int, j: int) -> None:
    """Write the results of the tested rows ``test.rows[d]`` at step ``it`` (basis index ``j``):
    u = V_{j+1} s / ‖V_{j+1} s‖, θ, second Ritz value (from a basis of two vectors on), residual/|θ|
    (0 after a breakdown), steps, convergence. V's columns up to j are those of that step (later
    steps only append columns until the next restart, which reads first)."""
    r = test.rows[d]
    o = state.ids[r]
    Vb = state.V[:, : j + 1]
    u = torch.bmm(test.vector[d].to(device=Vb.device, dtype=Vb.dtype).unsqueeze(1), Vb[r.to(Vb.device)]).squeeze(1)
    out.vector[o.to(Vb.device)] = u / _norm(u).unsqueeze(-1)
    out.eigenvalue[o] = test.top[d]
    if j >= 1:
        out.second[o] = test.values[d, -2]
    res = test.residual[d]
    out.residual[o] = torch.where(breakdown[r], torch.zeros_like(res), res) / test.top[d].abs()
    out.iterations[o] = it
    out.converged[o] = conv[d]


def lanczos_extend(state: LanczosState) -> None:
    """v_{j+2} = w/β on the device, j ← j + 1 (the host's H_{j,j+1} = H_{j+1,j} = β is set by
    :func:`lanczos_link` when the step is read)."""
    j = state.j
    state.V[:, j + 1] = state.w / state.beta_dev.to(_real_dtype(state.V)).unsqueeze(-1)
    state.j = j + 1


def lanczos_link(state: LanczosState, j: int) -> None:
    """H_{j,j+1} = H_{j+1,j} = β (the host's half of :func:`lanczos_extend`)."""
    state.H[:, j, j + 1] = state.beta
    state.H[:, j + 1, j] = state.beta


def thick_restart(state: LanczosState, sizes: LanczosSizes) -> None:
    """Compress a full basis (j = p − 1; Wu & Simon 2000): with H = S diag(θ) Sᴴ (``eigh``) and S_k
    the ``keep_low`` bottom and ``keep`` top columns, V ← [V S_k, w/β] and
    H ← [[diag(θ_k), β S_k[j, :]ᵀ], [β S_k[j, :], 0]] (an arrow); j ← kept."""
    p, kl, kk, j = sizes.basis, sizes.keep_low, sizes.kept, state.j
    theta_all, S = torch.linalg.eigh(state.H)
    sel = torch.cat([torch.arange(kl), torch.arange(p - sizes.keep, p)])
    Sk = S[:, :, sel]                               # (b, p, kk), ascending order
    Vb = state.basis()
    if Vb.is_complex():              # S is real: a real product on the basis's real view (a quarter of the work)
        newV = torch.bmm(Sk.mT.to(device=Vb.device, dtype=Vb.real.dtype), _reals(Vb))
        newV = torch.view_as_complex(newV.view(*newV.shape[:2], -1, 2))
    else:
        newV = torch.bmm(Sk.mT.to(device=Vb.device, dtype=Vb.dtype), Vb)
    V = torch.zeros_like(state.V)
    V[:, :kk] = newV
    V[:, kk] = state.w / state.beta_dev.to(_real_dtype(V)).unsqueeze(-1)
    H = torch.zeros_like(state.H)
    idx = torch.arange(kk)
    H[:, idx, idx] = theta_all[:, sel]
    arrow = state.beta.unsqueeze(-1) * Sk[:, j, :]
    H[:, :kk, kk] = arrow
    H[:, kk, :kk] = arrow
    state.V, state.H, state.j = V, H, kk


def _test_and_retire(state: LanczosState, out: LanczosOutputs, rows: torch.Tensor, breakdown: torch.Tensor,
                     it: int, j: int, tol: float, last_step: bool, finished: torch.Tensor, bar) -> None:
    """Ritz-test the state rows ``rows`` at step ``it`` (basis index ``j``), schedule their next tests,
    record the finished samples (converged, broken down, or at the last step) and mark them in
    ``finished`` (host bool per state row; :func:`lanczos_top` drops them after the read)."""
    test = ritz_test(state.H, state.beta, rows, j, tol)
    conv = (test.residual <= test.target) | breakdown[rows]
    done = conv | last_step
    if bar is not None:
        bar.update(it - bar.n)
        bar.set_postfix(active=int((~finished).sum()), worst=float((test.residual / test.top.abs()).max()))
    nxt, lq = next_test_steps(test.residual, test.target, it, state.last_q[rows], state.last_test[rows])
    state.next_test[rows] = nxt
    state.last_test[rows] = it
    state.last_q[rows] = lq
    if bool(done.any()):
        d = done.nonzero().squeeze(-1)
        record_finished(out, state, test, d, breakdown, conv, it, j)
        finished[rows[d]] = True


def _read_steps(state: LanczosState, out: LanczosOutputs, pending: list, p: int, N: int, eps: float, tol: float,
                max_iter: int, bar) -> bool:
    """The host's half of the steps in ``pending`` — ``(step, basis index, (α, β) on the device)``, read in
    one transfer — in order, exactly as if each had been read at its step: H, the breakdown test, the
    Ritz tests due (scheduled, breakdown, restart, last step), the links of the extensions that followed.
    A row finished at a step takes no part in the later ones (the device ran them for it in vain).
    Drops the finished rows; returns whether none is left."""
    abs_ = torch.stack([ab for _, _, ab in pending]).to(state.H.device)    # the one read of the block
    finished = torch.zeros(state.ids.numel(), dtype=torch.bool)
    for (it, j, _), ab in zip(pending, abs_):
        lanczos_note(state, ab, j)
        breakdown = (state.beta <= 10 * eps * state.hmax) | (j + 1 >= N)
        # Ritz values only where needed: a predicted convergence (per sample), a restart (all),
        # the last step (all), a breakdown.
        due = (state.next_test <= it) | breakdown
        if j + 1 >= p or it >= max_iter:
            due[:] = True
        due &= ~finished
        if bool(due.any()):
            _test_and_retire(state, out, due.nonzero().squeeze(-1), breakdown, it, j, tol, it >= max_iter,
                             finished, bar)
        if j + 1 < p:
            lanczos_link(state, j)
    if bool(finished.all()):
        return True
    if bool(finished.any()):
        state.keep_rows((~finished).nonzero().squeeze(-1))
    return False


def lanczos_top(matvec: MatVec, v0: torch.Tensor, tol: float = 1e-6, max_iter: int = 1000,
                krylov_dim: int = 64, keep: Optional[int] = None, keep_low: Optional[int] = None,
                progress: bool = False, sync_every: int = 1) -> EigResult:
    r"""Top eigenpair of B Hermitian operators by batched thick-restart Lanczos.

    Parameters
    ----------
    matvec : ``matvec(v, idx)`` with v of shape (b, N) and idx a LongTensor of the b sample indices
        (into 0..B−1) → D_idx v, shape (b, N). It is called once per iteration for all samples
        still running.
    v0 : (B, N) start vectors (normalised per sample here).
    tol : stop sample b once ‖D u − θ u‖ ≤ tol·|θ| for its top Ritz pair (θ, u).
    max_iter : most products with D per sample (Lanczos steps, restarts included).
    krylov_dim : largest basis size p (capped at N); at p the basis is compressed to the ``keep``
        top and ``keep_low`` bottom Ritz vectors plus the residual direction (thick restart).
    keep, keep_low : numbers of top and of bottom Ritz vectors kept at a restart (defaults p//4
        and p//4, :func:`lanczos_sizes`). Keeping the bottom ones locks the far end of the spectrum
        into the basis (the ``optimal`` preprocessing gives D a cluster of large negative
        eigenvalues that a restart would otherwise have to rediscover); keeping too many leaves
        few new steps per restart.
    sync_every : k, the steps between the host's reads of α and β (besides the reads a restart and
        the last step need). The device runs k steps ahead; the host then takes every decision of
        those steps in order (:func:`_read_steps`), so the result does not depend on k, and a sample
        that finished inside a block costs at most k − 1 products in vain.

    Method (per sample; Wu & Simon 2000): with orthonormal V_j = [v_1..v_j] and projected matrix
    H_j = V_jᴴ D V_j (real symmetric: tridiagonal, plus an arrow row/column after a restart),
    D V_j = V_j H_j + f e_jᵀ, f ⟂ V_j. Each step (:func:`lanczos_expand`) computes w = D v_j,
    removes its components on V_j twice (CGS2), sets α_j = Re⟨v_j, w⟩, β_j = ‖w‖, v_{j+1} = w/β_j
    (:func:`lanczos_extend`). Ritz pairs come from H_j in float64 (:func:`ritz_test`); the top one
    (θ, s) has residual β_j|s_j|. At j = p the basis is compressed (:func:`thick_restart`). The
    Ritz values are only computed at steps predicted from the observed decay of the residual
    (:func:`next_test_steps`, at most 8 steps apart), at restarts, and at the last step. The basis
    reaching N (exact invariant subspace) or β_j ≤ 10 ε ‖H‖ also ends a sample (converged).

    The basis and the products live on v0's device; H and the per-sample bookkeeping live on the
    host (float64), with one read-back per ``sync_every`` steps (their α_j and β_j), and at restarts.
    """
    v0 = _check_start(v0)
    B, N = v0.shape
    eps = torch.finfo(_real_dtype(v0)).eps
    sizes = lanczos_sizes(N, krylov_dim, keep, keep_low)
    p = sizes.basis
    max_iter = check_int(max_iter, "max_iter", 1)
    tol = check_number(tol, "tol", 0.0)
    k = check_int(sync_every, "sync_every", 1)
    state = lanczos_start(v0, p)
    out = LanczosOutputs.empty(B, N, v0.dtype, v0.device)
    it = 0
    pending: list = []                  # steps the device ran whose α, β the host has not read yet
    bar = _progress_bar(progress, max_iter, "lanczos")
    while state.ids.numel() > 0 and it < max_iter:
        it += 1
        pending.append((it, state.j, lanczos_expand(state, matvec)))
        if len(pending) >= k or state.j + 1 >= p or it >= max_iter:      # a restart needs the whole H
            done = _read_steps(state, out, pending, p, N, eps, tol, max_iter, bar)
            pending = []
            if done:
                break
        if state.j + 1 < p:
            lanczos_extend(state)
        else:
            thick_restart(state, sizes)
    if bar is not None:
        bar.close()
    return out.result()


def power_top(matvec: MatVec, v0: torch.Tensor, tol: float = 1e-6, max_iter: int = 10000,
              shift: Optional[torch.Tensor] = None, probe: int = 20, patience: int = 200,
              progress: bool = False, sync_every: int = 1) -> EigResult:
    r"""Top eigenpair of B Hermitian operators by the shifted power method, per sample.

    Iterates x ← (D + σ_b I) x / ‖(D + σ_b I) x‖ and stops sample b when the Rayleigh-quotient
    residual ‖D x − θ x‖ ≤ tol·|θ|, θ = xᴴ D x (each step costs one product with D).

    The power method converges to the eigenvalue of largest modulus of D + σI, so σ must make the
    top eigenvalue λ₁ dominate: σ > −(λ₁ + λ_min)/2. ``shift=None`` chooses it from the data, per
    sample: ``probe`` unshifted power steps estimate the dominant eigenvalue μ_b (its Rayleigh
    quotient); if μ_b < 0 the bottom of the spectrum dominates and σ_b = −1.05 μ_b ≥ −λ_min (up to
    the estimate), which makes D + σ_b I positive semidefinite; otherwise σ_b = 0. The probe steps
    are counted in ``matvecs``. A given ``shift`` (scalar or (B,) tensor) is used as is.
    The rate is (λ₂ + σ)/(λ₁ + σ) per step; ``second`` reports λ₂ recovered from the observed
    contraction of the residual.

    The residual of a computed product cannot fall below ≈ ε‖D + σI‖ (float32: ≈ 1e-6·(λ₁ + σ)),
    which can exceed tol·|θ|. A sample whose residual has not improved by 1 % for ``patience``
    steps has stalled at that floor (or converges too slowly to matter): it stops, flagged not
    converged, instead of running to ``max_iter``.

    ``sync_every`` = k: the host learns which samples finished every k steps (and at the last); a
    sample's result is frozen on the device at the step it finished, so the result does not depend
    on k (a finished sample costs at most k − 1 products in vain).
    """
    x = _check_start(v0)
    B, N = x.shape
    dev, vdtype = x.device, x.dtype
    f64 = dict(dtype=torch.float64, device=dev)
    max_iter = check_int(max_iter, "max_iter", 1)
    tol = check_number(tol, "tol", 0.0)
    rdt = _real_dtype(x)
    matvecs = torch.zeros(B, dtype=torch.int64, device=dev)
    all_ids = torch.arange(B, device=dev)
    if shift is None:
        z = x.clone()
        mu = torch.zeros(B, **f64)
        for _ in range(int(probe)):
            dz = matvec(z, all_ids).to(vdtype)
            matvecs += 1
            mu = inner(z, dz, 1).real.to(torch.float64)
            nz = _norm(dz)
            z = dz / nz.clamp_min(torch.finfo(rdt).tiny).unsqueeze(-1)
        sigma = torch.where(mu < 0, -1.05 * mu, torch.zeros_like(mu))
    else:
        sigma = torch.as_tensor(shift, **f64).expand(B).clone() if torch.as_tensor(shift).dim() == 0 \
            else torch.as_tensor(shift, **f64).reshape(B).clone()
        if not torch.isfinite(sigma).all():
            raise ValueError("shift must be finite")

    out_vec = torch.zeros(B, N, dtype=vdtype, device=dev)
    out_theta = torch.full((B,), float("nan"), **f64)
    out_second = torch.full((B,), float("nan"), **f64)
    out_res = torch.full((B,), float("nan"), **f64)
    out_iter = torch.zeros(B, dtype=torch.int64, device=dev)
    out_conv = torch.zeros(B, dtype=torch.bool, device=dev)

    k = check_int(sync_every, "sync_every", 1)
    # the carried rows (the unfinished samples'), and per row on the device: finished, and the result
    # frozen at the step it finished
    c = {"ids": all_ids.clone(), "sig": sigma.clone(), "x": x, "dx": torch.zeros_like(x),
         "rel": torch.zeros(B, **f64), "prev": torch.full((B,), float("nan"), **f64),
         "rate": torch.full((B,), float("nan"), **f64),
         "best": torch.full((B,), float("inf"), **f64),                     # stagnation: best residual so far
         "best_it": torch.zeros(B, dtype=torch.int64, device=dev),          # and the step it last improved by 1%
         "fin": torch.zeros(B, dtype=torch.bool, device=dev), "r_vec": torch.zeros_like(x),
         "r_theta": torch.zeros(B, **f64), "r_second": torch.zeros(B, **f64), "r_res": torch.zeros(B, **f64),
         "r_iter": torch.zeros(B, dtype=torch.int64, device=dev),
         "r_conv": torch.zeros(B, dtype=torch.bool, device=dev)}
    engine = replay.backend(dev)
    blocks = replay.Blocks(engine, dev, "power", relayout=True) if engine is not None else None
    it = 0
    bar = _progress_bar(progress, max_iter, "power")
    while c["ids"].numel() > 0 and it < max_iter:
        it0, kb = it, min(k, max_iter - it)           # a block of k steps, then the host's read
        key = (kb, it0 == 0, it0 + kb >= max_iter)

        def body(it0=it0, kb=kb, tv=None):
            for i in range(kb):
                t = it0 + i + 1
                _power_step(c, matvec, t, t if tv is None else tv + (i + 1), t == 1, t >= max_iter, tol, patience,
                            rdt, vdtype)

        if blocks is None or not blocks.run(key, (c,), functools.partial(body, tv=blocks.t0), it0):
            body()
        it = it0 + kb
        fin = c["fin"]                                 # the host's read: who finished
        if bar is not None:
            bar.update(it - bar.n)
            bar.set_postfix(active=int(c["ids"].numel()), worst=float(c["rel"].max()))
        if fin.any():
            d = fin.nonzero().squeeze(-1)
            o = c["ids"][d]
            out_vec[o], out_theta[o], out_second[o] = c["r_vec"][d], c["r_theta"][d], c["r_second"][d]
            out_res[o], out_iter[o], out_conv[o] = c["r_res"][d], c["r_iter"][d], c["r_conv"][d]
            keep_rows = (~fin).nonzero().squeeze(-1)
            for name in c:
                c[name] = c[name][keep_rows]
    if bar is not None:
        bar.close()
    return EigResult(out_vec, out_theta, out_second, out_res, out_iter, out_iter + matvecs, out_conv, sigma,
                     None if blocks is None else blocks.stats())


def _power_step(c: dict, matvec: MatVec, it: int, tv, first: bool, last: bool, tol: float, patience: int,
                rdt: torch.dtype, vdtype: torch.dtype) -> None:
    """Step ``it`` of :func:`power_top` on the carried rows ``c``: x ← (D + σI)x/‖·‖ from the previous
    step's product (none at the first), then D x, its Rayleigh quotient and residual, the stagnation test,
    and the result frozen for the rows that finish here. ``tv`` is ``it`` as the bookkeeping writes it (a
    0-dim device tensor in a captured block); ``last``: this is step ``max_iter``."""
    x = c["x"]
    if not first:
        w = c["dx"] + c["sig"].to(rdt).unsqueeze(-1) * x
        x = w / _norm(w).clamp_min(torch.finfo(rdt).tiny).unsqueeze(-1)
    dx = matvec(x, c["ids"]).to(vdtype)
    theta = inner(x, dx, 1).real.to(torch.float64)
    r = dx - theta.to(rdt).unsqueeze(-1) * x
    res = _norm(r).to(torch.float64)
    rel = res / theta.abs().clamp_min(torch.finfo(torch.float64).tiny)
    ratio = res / c["prev"]
    best, fin, sig = c["best"], c["fin"], c["sig"]
    improved = res < 0.99 * best
    rate = torch.where(improved & torch.isfinite(ratio) & (ratio < 1), ratio, c["rate"])
    best_it = torch.where(improved, tv, c["best_it"])
    conv = (res <= tol * theta.abs()) | (res == 0)
    stalled = (tv - best_it) >= patience
    now = (conv | stalled | last) & ~fin                  # finished at this step
    c.update(x=x, dx=dx, rel=rel, prev=res, rate=rate, best=torch.where(improved, res, best), best_it=best_it,
             fin=fin | now, r_vec=torch.where(now.unsqueeze(-1), x, c["r_vec"]),
             r_theta=torch.where(now, theta, c["r_theta"]), r_res=torch.where(now, rel, c["r_res"]),
             r_second=torch.where(now, rate * (theta + sig) - sig, c["r_second"]),
             r_iter=torch.where(now, tv, c["r_iter"]), r_conv=torch.where(now, conv, c["r_conv"]))
