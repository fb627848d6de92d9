r"""Matrix-free, batched eigensolvers for the top eigenpair of Hermitian operators.

Both solvers work on a *batch* of independent Hermitian operators D_b (b = 0..B−1) given only
through a batched product ``matvec(v, idx)`` that returns D_b v_b for the rows ``v`` belonging to
the samples ``idx``. Every sample has its own normalisation, shift, Ritz values and stopping test;
a sample that has converged is dropped from later products (so it costs nothing more and its
result does not depend on the other samples). A batch therefore gives what single runs give, up
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
exact D cannot fall much below ε₃₂‖D‖ (≈ 3e-4 |θ| for the ``optimal`` preprocessing, whose D has
eigenvalues near −150 beside a top eigenvalue near 1/δ), although the eigenvector itself is then
still accurate to ε₃₂‖D‖/gap (complex Gaussian, n = 1024, δ = 8, float32: 1 − cos = 6e-10 against
the float64 eigenvector). Use a float64 operator for more digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

MatVec = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EigResult:
    """Per-sample result of a batched top-eigenpair solve (all tensors have leading size B).

    vector: unit-norm top (Ritz) vector, shape (B, N). eigenvalue: its Rayleigh quotient θ (float64).
    second: estimate of the second eigenvalue (Lanczos: second Ritz value; power: from the observed
    convergence rate), NaN when unavailable. residual: ‖D u − θ u‖ / |θ| (float64).
    iterations: solver steps taken; matvecs: products with D (int64). converged: bool.
    shift: per-sample shift used (power method; zeros for Lanczos).
    """

    vector: torch.Tensor
    eigenvalue: torch.Tensor
    second: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    matvecs: torch.Tensor
    converged: torch.Tensor
    shift: torch.Tensor


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched ⟨a, b⟩ = Σ conj(a) b over the last dimension."""
    return (a.conj() * b).sum(-1) if a.is_complex() else (a * b).sum(-1)


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=-1)


def _check_start(v0: torch.Tensor) -> torch.Tensor:
    if v0.dim() != 2:
        raise ValueError(f"start vectors must have shape (batch, N), got {tuple(v0.shape)}")
    nrm = _norm(v0)
    if not torch.isfinite(nrm).all() or (nrm == 0).any():
        raise ValueError("start vectors must be finite and nonzero")
    return v0 / nrm.unsqueeze(-1)


def _project(Vb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients c_k = ⟨v_k, w⟩ for a batch of bases Vb (b, k, N) and vectors w (b, N).

    Written as conj(Vb · conj(w)) so that no conjugate copy of the basis is made.
    """
    if w.is_complex():
        return torch.bmm(Vb, w.conj().unsqueeze(-1)).squeeze(-1).conj()
    return torch.bmm(Vb, w.unsqueeze(-1)).squeeze(-1)


def _top_vector(H: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector of the largest eigenvalue θ of real symmetric float64 matrices H (b, k, k).

    Two steps of inverse iteration with the shift θ' = θ + 100·ε·‖H‖ (> λ_max, so θ'I − H is
    positive definite and Cholesky applies); each step damps the other directions by
    (θ' − θ)/(θ' − θ₂) ≈ 1e-14/gap. Cheaper and steadier than a full ``eigh`` at every test.
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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def lanczos_top(matvec: MatVec, v0: torch.Tensor, tol: float = 1e-6, max_iter: int = 1000,
                krylov_dim: int = 64, keep: Optional[int] = None, keep_low: Optional[int] = None,
                progress: bool = False) -> EigResult:
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
        and p//2). Keeping the bottom ones locks the far end of the spectrum into the basis: the
        ``optimal`` preprocessing gives D a cluster of large negative eigenvalues (≈ −150 beside
        λ₁ ≈ 1/δ) that a restart would otherwise have to rediscover (complex Gaussian, n = 1024,
        δ = 8, p = 64: ≈105 products to tol 1e-6 instead of ≈140 with the top p//2 kept; ≈100
        without any restart).

    Method (per sample; Wu & Simon 2000): with orthonormal V_j = [v_1..v_j] and projected matrix
    H_j = V_jᴴ D V_j (real symmetric: tridiagonal, plus an arrow row/column after a restart),
    D V_j = V_j H_j + f e_jᵀ, f ⟂ V_j. Each step computes w = D v_j, removes its components on
    V_j twice (CGS2), sets α_j = Re⟨v_j, w⟩, β_j = ‖w‖, v_{j+1} = w/β_j. Ritz pairs come from
    H_j in float64 (``eigvalsh`` and inverse iteration for the top vector); the top one (θ, s) has
    residual β_j|s_j|. At j = p the basis becomes [V_p S_keep, v_{p+1}] with
    H = [[diag(θ_keep), β_p S_keep[p,:]ᵀ], [·, ·]] (``eigh`` of H_p) and the iteration goes on.
    The Ritz values are only computed at steps predicted from the observed decay of the residual
    (at most 8 steps apart), at restarts, and at the last step.
    The basis reaching N (exact invariant subspace) or β_j ≤ 10 ε ‖H‖ also ends a sample (converged).
    """
    v0 = _check_start(v0)
    B, N = v0.shape
    dev, vdtype = v0.device, v0.dtype
    rdt = v0.real.dtype if v0.is_complex() else v0.dtype
    eps = torch.finfo(rdt).eps
    p = int(min(krylov_dim, N))
    if p < 1:
        raise ValueError("krylov_dim must be ≥ 1")
    if p < N and p < 3:
        raise ValueError(f"krylov_dim must be ≥ 3 (got {krylov_dim}) unless it covers the whole space (N={N})")
    kt = int(keep) if keep is not None else max(1, p // 4)
    kl = int(keep_low) if keep_low is not None else max(0, min(p // 2, p - 2 - kt))
    kk = kt + kl
    if p < N and (kt < 1 or kl < 0 or kk > p - 2):
        raise ValueError(f"need keep ≥ 1, keep_low ≥ 0 and keep + keep_low ≤ krylov_dim − 2 = {p - 2}; "
                         f"got keep={kt}, keep_low={kl}")
    max_iter = int(max_iter)
    if max_iter < 1:
        raise ValueError("max_iter must be ≥ 1")

    # The basis V, the products and the Ritz vectors live on v0's device; the small projected
    # matrices H and the per-sample bookkeeping live on the host (float64), where eigvalsh/Cholesky
    # of a p×p matrix costs microseconds instead of an accelerator launch each. One host read per
    # step carries α_j and β_j over.
    host = torch.device("cpu")
    out_vec = torch.zeros(B, N, dtype=vdtype, device=dev)
    f64 = dict(dtype=torch.float64, device=host)
    out_theta = torch.full((B,), float("nan"), **f64)
    out_second = torch.full((B,), float("nan"), **f64)
    out_res = torch.full((B,), float("nan"), **f64)
    out_iter = torch.zeros(B, dtype=torch.int64)
    out_conv = torch.zeros(B, dtype=torch.bool)

    ids = torch.arange(B)                                  # original sample of each state row (host)
    ids_dev = ids.to(dev)
    V = torch.zeros(B, p, N, dtype=vdtype, device=dev)
    V[:, 0] = v0
    H = torch.zeros(B, p, p, **f64)
    hmax = torch.zeros(B, **f64)                           # running max |H_ij|: scale of the breakdown test
    j = 0          # index of the basis vector being expanded (basis size j + 1 after this step)
    it = 0
    nextc = torch.ones(B, dtype=torch.int64)               # per-sample step of the next Ritz test
    lastc = torch.zeros(B, dtype=torch.int64)
    lastq = torch.full((B,), float("nan"), **f64)          # log(residual / target) at the last test
    bar = _progress_bar(progress, max_iter, "lanczos")
    while ids.numel() > 0 and it < max_iter:
        it += 1
        w = matvec(V[:, j], ids_dev)
        if w.dtype != vdtype:
            w = w.to(vdtype)
        Vb = V[:, : j + 1]
        # CGS2: w ← (I − V Vᴴ)² w, coefficients summed into α_j
        c = _project(Vb, w)
        w = w - torch.bmm(c.unsqueeze(1), Vb).squeeze(1)
        c2 = _project(Vb, w)
        w = w - torch.bmm(c2.unsqueeze(1), Vb).squeeze(1)
        beta_dev = _norm(w)
        ab = torch.stack([(c[:, j] + c2[:, j]).real.to(torch.float64), beta_dev.to(torch.float64)]).to(host)
        alpha, beta = ab[0], ab[1]
        H[:, j, j] = alpha
        hmax = torch.maximum(hmax, torch.maximum(alpha.abs(), beta))
        breakdown = (beta <= 10 * eps * hmax) | (j + 1 >= N)
        # Ritz values only where needed: a predicted convergence (per sample), a restart (all),
        # the last step (all), a breakdown.
        due = (nextc <= it) | breakdown
        if j + 1 >= p or it >= max_iter:
            due[:] = True
        if bool(due.any()):
            r = due.nonzero().squeeze(-1)
            Hj = H[r, : j + 1, : j + 1]
            theta_all = torch.linalg.eigvalsh(Hj)
            theta = theta_all[:, -1]
            s = _top_vector(Hj, theta, theta_all.abs().amax(-1))
            res = beta[r] * s[:, j].abs()
            target = tol * theta.abs()
            conv = (res <= target) | breakdown[r]
            done = conv | (it >= max_iter)
            if bar is not None:
                bar.update(it - bar.n)
                bar.set_postfix(active=int(ids.numel()), worst=float((res / theta.abs()).max()))
            # Schedule each sample's next test from the observed decay of its residual (a function
            # of its own computed values only): half the predicted distance, 1 to 8 steps ahead.
            lq = torch.log((res / target.clamp_min(torch.finfo(torch.float64).tiny)).clamp_min(1.0))
            prev = lastq[r]
            rate = (prev - lq) / (it - lastc[r]).clamp_min(1).to(torch.float64)
            pred = torch.where(rate > 0, (0.5 * lq / rate.clamp_min(1e-300)).clamp(1, 8), torch.full_like(lq, 4.0))
            pred = torch.where(torch.isnan(prev), torch.ones_like(lq), pred)
            nextc[r] = it + pred.floor().to(torch.int64)
            lastc[r] = it
            lastq[r] = lq
            if bool(done.any()):
                d = done.nonzero().squeeze(-1)
                o = ids[r[d]]
                rd_dev = r[d].to(dev)
                u = torch.bmm(s[d].to(device=dev, dtype=vdtype).unsqueeze(1), Vb[rd_dev]).squeeze(1)
                out_vec[o.to(dev)] = u / _norm(u).unsqueeze(-1)
                out_theta[o] = theta[d]
                if j >= 1:
                    out_second[o] = theta_all[d, -2]
                out_res[o] = torch.where(breakdown[r[d]], torch.zeros_like(res[d]), res[d]) / theta[d].abs()
                out_iter[o] = it
                out_conv[o] = conv[d]
                alive = torch.ones(ids.numel(), dtype=torch.bool)
                alive[r[d]] = False
                if not bool(alive.any()):
                    break
                rows = alive.nonzero().squeeze(-1)
                rows_dev = rows.to(dev)
                ids, H, hmax, beta, nextc, lastc, lastq = (t[rows] for t in (ids, H, hmax, beta, nextc, lastc, lastq))
                ids_dev, V, w, beta_dev = (t[rows_dev] for t in (ids_dev, V, w, beta_dev))
                Vb = V[:, : j + 1]
        if j + 1 < p:
            V[:, j + 1] = w / beta_dev.to(rdt).unsqueeze(-1)
            H[:, j, j + 1] = beta
            H[:, j + 1, j] = beta
            j += 1
        else:  # thick restart: keep kl bottom and kt top Ritz vectors and the residual direction
            theta_all, S = torch.linalg.eigh(H)
            sel = torch.cat([torch.arange(kl), torch.arange(p - kt, p)])
            Sk = S[:, :, sel]                               # (b, p, kk), ascending order
            newV = torch.bmm(Sk.mT.to(device=dev, dtype=vdtype), Vb)
            V = torch.zeros_like(V)
            V[:, :kk] = newV
            V[:, kk] = w / beta_dev.to(rdt).unsqueeze(-1)
            H = torch.zeros_like(H)
            idx = torch.arange(kk)
            H[:, idx, idx] = theta_all[:, sel]
            arrow = beta.unsqueeze(-1) * Sk[:, j, :]
            H[:, :kk, kk] = arrow
            H[:, kk, :kk] = arrow
            j = kk
    if bar is not None:
        bar.close()
    out_iter = out_iter.to(dev)
    return EigResult(out_vec, out_theta.to(dev), out_second.to(dev), out_res.to(dev), out_iter, out_iter.clone(),
                     out_conv.to(dev), torch.zeros(B, dtype=torch.float64, device=dev))


def power_top(matvec: MatVec, v0: torch.Tensor, tol: float = 1e-6, max_iter: int = 10000,
              shift: Optional[torch.Tensor] = None, probe: int = 20, patience: int = 200,
              progress: bool = False) -> EigResult:
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
    """
    x = _check_start(v0)
    B, N = x.shape
    dev, vdtype = x.device, x.dtype
    f64 = dict(dtype=torch.float64, device=dev)
    max_iter = int(max_iter)
    if max_iter < 1:
        raise ValueError("max_iter must be ≥ 1")
    rdt = x.real.dtype if x.is_complex() else x.dtype
    matvecs = torch.zeros(B, dtype=torch.int64, device=dev)
    all_ids = torch.arange(B, device=dev)
    if shift is None:
        z = x.clone()
        mu = torch.zeros(B, **f64)
        for _ in range(int(probe)):
            dz = matvec(z, all_ids).to(vdtype)
            matvecs += 1
            mu = _inner(z, dz).real.to(torch.float64)
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

    ids = all_ids.clone()
    sig = sigma.clone()
    prev = torch.full((B,), float("nan"), **f64)
    rate = torch.full((B,), float("nan"), **f64)
    best = torch.full((B,), float("inf"), **f64)                 # stagnation: best residual so far
    best_it = torch.zeros(B, dtype=torch.int64, device=dev)      # and the step it last improved by 1%
    it = 0
    bar = _progress_bar(progress, max_iter, "power")
    while ids.numel() > 0 and it < max_iter:
        it += 1
        dx = matvec(x, ids).to(vdtype)
        theta = _inner(x, dx).real.to(torch.float64)
        r = dx - theta.to(rdt).unsqueeze(-1) * x
        res = _norm(r).to(torch.float64)
        rel = res / theta.abs().clamp_min(torch.finfo(torch.float64).tiny)
        ratio = res / prev
        improved = res < 0.99 * best
        rate = torch.where(improved & torch.isfinite(ratio) & (ratio < 1), ratio, rate)
        prev = res
        best = torch.where(improved, res, best)
        best_it = torch.where(improved, torch.full_like(best_it, it), best_it)
        conv = (res <= tol * theta.abs()) | (res == 0)
        stalled = (it - best_it) >= patience
        done = conv | stalled | torch.tensor(it >= max_iter, device=dev)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=int(ids.numel()), worst=float(rel.max()))
        if done.any():
            d = done.nonzero().squeeze(-1)
            o = ids[d]
            out_vec[o] = x[d]
            out_theta[o] = theta[d]
            out_second[o] = rate[d] * (theta[d] + sig[d]) - sig[d]
            out_res[o] = rel[d]
            out_iter[o] = it
            out_conv[o] = conv[d]
            keep_rows = (~done).nonzero().squeeze(-1)
            ids, x, dx, sig, prev, rate, best, best_it = (
                t[keep_rows] for t in (ids, x, dx, sig, prev, rate, best, best_it))
            if ids.numel() == 0:
                break
        w = dx + sig.to(rdt).unsqueeze(-1) * x
        x = w / _norm(w).clamp_min(torch.finfo(rdt).tiny).unsqueeze(-1)
    if bar is not None:
        bar.close()
    return EigResult(out_vec, out_theta, out_second, out_res, out_iter, out_iter + matvecs, out_conv, sigma)
