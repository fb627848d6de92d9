r"""Batched L-BFGS with a per-sample two-loop recursion and per-sample Armijo backtracking.

Nocedal, "Updating quasi-Newton matrices with limited storage", Math. Comp. 35 (1980); Liu &
Nocedal, Math. Program. 45 (1989). Complex unknowns are handled as real vectors of twice the length
(inner product Re⟨a, b⟩, gradient 2∂f/∂x̄), which is what the quasi-Newton theory needs.

``torch.optim.LBFGS`` treats all parameters as one vector (one step size, one curvature memory for
the whole batch), so it cannot give per-sample results; this implementation keeps for every sample
its own ring buffer of the last ``memory`` pairs (s, g), its own initial scaling
γ = ⟨s, g⟩/⟨g, g⟩ and its own line search, so a batch equals single runs. A pair with
⟨s, g⟩ ≤ 10⁻¹⁰‖s‖‖g‖ is skipped (the curvature condition that keeps the inverse-Hessian model
positive definite); a direction that is not a descent direction is replaced by −∇f and the
sample's memory cleared. The line search is Armijo backtracking from α = 1 (from μ₀·s on the first
iteration or after a reset), spread over iterations: every iteration evaluates **one** trial point
per sample and decides on the device (no host read); a rejected sample stays at x and tries the
halved step at the next iteration, so the accepted points are those of the classical inner loop
while an iteration costs one evaluation (the log's iterations count evaluations). A sample whose
line search fails ``max_backtracks`` times does not move (the driver reports it as stalled).

State (all tensors, leading batch dimension):
``P`` (B, M + 1, 2, …) the pairs (s, y) in a ring of M slots per sample, slot M taking the writes of the
samples that store nothing; ``head`` (B,) the slot of the newest; ``count`` (B,) the pairs held (a sample
holding fewer than M uses slots 0 … count − 1, since a cleared memory restarts at slot 0);
``G`` (B, 2M + 2, 2M + 2) the Gram matrix of the rows s₀, y₀, s₁, y₁, … (real inner products), updated by
two rows and columns per stored pair;
``x_prev``/``g_prev`` the point and gradient of the last direction, ``has_prev`` (B,), ``d`` the
direction, ``trial``/``tries`` (B,) the line search's step and trial count, ``accepted``/``retry`` (B,)
bool, ``scale`` (B,). The direction is formed from S and Y in the compact representation (see
:meth:`LBFGSAlgorithm.direction`).

Memory traffic per iteration: storing a pair writes one slot in place; the buffer is read twice, once for
the new Gram rows together with [S; Y]∇f and once for Sᵀp − γYᵀu. Nothing of size
M × n is copied: at n = 2²⁰ complex128 and M = 10 (160 MiB per buffer) an earlier version that shifted
the buffers (``torch.cat`` + ``torch.where``) and concatenated [S; Y] for the products spent most of an
iteration copying them. On the CPU the two reads are C passes at the memory speed
(:func:`phasetorch.physics.kernels.rows_dots` / ``rows_comb``, summed in double and in a fixed order,
nothing stacked) wherever the buffer holds at least ``kernels.ROWS_MIN`` reals; torch's ``bmm`` /
``baddbmm`` read operands this tall and skinny at a fraction of that speed, and run elsewhere (GPU,
small problems, ``PHASETORCH_KERNELS=0``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..physics import kernels
from ..tensors import bview, check_int, check_number, dot, norm2, where_sample
from .base import one_trial
from .engine import Algorithm, State, StepResult, declared_key

__all__ = ["LBFGSAlgorithm"]


def real_rows(t: torch.Tensor, lead: int) -> torch.Tensor:
    """A real view of ``t`` with its first ``lead`` dimensions kept and the rest flattened
    (complex entries as (re, im) pairs); no copy for contiguous tensors."""
    r = torch.view_as_real(t) if t.is_complex() else t
    return r.reshape(*t.shape[:lead], -1)


def bank_dots(Z: torch.Tensor, *V: torch.Tensor) -> torch.Tensor:
    """``Z @ stack(V, 1).mT`` for the rows of the pair buffer ``Z`` (B, k, D) and a few vectors ``V`` (each
    (B, D)), in Z's dtype: :func:`phasetorch.physics.kernels.rows_dots` where it applies (one read of each
    at the memory speed on the CPU, summed in double, nothing stacked), else ``torch.bmm``."""
    if len(V) <= 4 and kernels.rows_apply(Z, *V):
        return kernels.rows_dots(Z, *V).to(Z.dtype)
    return torch.bmm(Z, torch.stack(V, 1).mT)


class LBFGSAlgorithm(Algorithm):
    """Batched L-BFGS (module docstring); μ = μ₀, the first trial step (times the scale s)."""

    name = "lbfgs"
    needs_values = True

    def __init__(self, memory: int = 10, mu0: float = 1.0, c: float = 1e-4, shrink: float = 0.5,
                 max_backtracks: int = 40) -> None:
        self.memory = check_int(memory, "memory", 1)
        self.mu = check_number(mu0, "mu0", low=0.0, strict=True)
        self.c, self.shrink = float(c), float(shrink)
        self.max_backtracks = check_int(max_backtracks, "max_backtracks", 1)
        self._const_cache: dict = {}

    def _consts(self, device, batch: int, depth: int, dtype=torch.float64) -> tuple:
        """Index tensors that depend on the sizes only (made once per device, batch and depth, so that an
        iteration does not rebuild them): the samples 0 … B−1, the slot of each Gram row, j = 0 … k−1,
        the Gram rows (2s, 2s + 1) of each slot s and the k × k identity."""
        key = (str(device), batch, depth, dtype)
        c = self._const_cache.get(key)
        if c is None:
            M = self.memory
            c = (torch.arange(batch, device=device), torch.arange(2 * M + 2, device=device) // 2,
                 torch.arange(depth, device=device), torch.arange(2 * M + 2, device=device).view(M + 1, 2),
                 torch.eye(depth, dtype=dtype, device=device))
            capturing = torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing()
            if not capturing:            # (made inside a CUDA graph they would live in its private pool)
                self._const_cache[key] = c
        return c

    def init_state(self, x, scale):
        B, M = x.shape[0], self.memory
        rdt = x.real.dtype if x.is_complex() else x.dtype
        return {"scale": scale, "P": torch.zeros(B, M + 1, 2, *x.shape[1:], dtype=x.dtype, device=x.device),
                "G": torch.zeros(B, 2 * M + 2, 2 * M + 2, dtype=rdt, device=x.device),
                "head": torch.full((B,), M - 1, dtype=torch.long, device=x.device),
                "count": torch.zeros(B, dtype=torch.long, device=x.device),
                "x_prev": torch.zeros_like(x), "g_prev": torch.zeros_like(x),
                "has_prev": torch.zeros(B, dtype=torch.bool, device=x.device),
                "d": torch.zeros_like(x), "trial": torch.zeros(B, dtype=rdt, device=x.device),
                "tries": torch.zeros(B, dtype=torch.long, device=x.device),
                "accepted": torch.ones(B, dtype=torch.bool, device=x.device),
                "retry": torch.zeros(B, dtype=torch.bool, device=x.device)}

    def push(self, st: State, s: torch.Tensor, g: torch.Tensor, active: torch.Tensor,
             also: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Store the pair (s, g) as the newest for the active samples that satisfy the curvature condition:
        written in place into the slot after ``head``, with its two rows and columns of the Gram matrix;
        the other samples write into the spare slot M (never read) — no masked copy, no host read.

        ``also`` (a batch of vectors like s, e.g. the gradient the direction is formed from next) joins the
        product of the Gram update, so that the buffer is read once for both: its real inner products with
        every row of the buffer, after the pair is stored, come back as a (B, 2M + 2) tensor (else None)."""
        sy = dot(s, g)
        ok = active & (sy > 1e-10 * (norm2(s) * norm2(g)).sqrt()) & (sy < math.inf)
        P, M = st["P"], self.memory
        B = P.shape[0]
        rows, slot_of_row = self._consts(P.device, B, 0)[:2]
        slot = torch.where(ok, (st["head"] + 1) % M, M)
        P[rows, slot, 0] = s
        P[rows, slot, 1] = g
        vecs = (s, g) if also is None else (s, g, also)
        vz = bank_dots(real_rows(P, 1).view(B, 2 * M + 2, -1), *(real_rows(v, 1) for v in vecs))  # (B, 2M+2, 2|3)
        v = vz[..., :2]
        new = slot_of_row == slot.unsqueeze(-1)                                  # (B, 2M+2): the slot's rows
        cols = v.repeat(1, 1, M + 1)                                             # [i, j] = ⟨z_i, pair_{j mod 2}⟩
        st["G"] = torch.where(new.unsqueeze(-1), cols.mT, torch.where(new.unsqueeze(-2), cols, st["G"]))
        st["head"] = torch.where(ok, slot, st["head"])
        st["count"] = (st["count"] + ok).clamp_(max=self.memory)
        return None if also is None else vz[..., 2]

    def clear(self, st: State, mask: torch.Tensor) -> None:
        """Empty the memory of the samples in ``mask`` (their next pair goes to slot 0)."""
        st["count"] = st["count"].masked_fill(mask, 0)
        st["head"] = st["head"].masked_fill(mask, self.memory - 1)

    def direction(self, st: State, grad: torch.Tensor, depth: int, zg: Optional[torch.Tensor] = None) -> torch.Tensor:
        r"""−H∇f per sample, H the L-BFGS inverse-Hessian model of the newest ``depth`` pairs (a bound
        on every sample's pair count known without a host read; the pair j places back counts for the
        samples with j < count). −∇f for an empty memory.

        Computed in the compact form of Byrd, Nocedal & Schnabel ("Representations of quasi-Newton
        matrices and their use in limited memory methods", Math. Program. 63, 1994, eq. 3.2), which
        is the two-loop recursion's H in a fixed number of batched products whatever the memory:
        with the pairs as the rows of S, Y (newest first), a = S∇f, b = Y∇f, R the lower
        triangle of SYᵀ (s_kᵀy_l for pair k at least as old as l), D its diagonal and γ = s₀ᵀy₀/y₀ᵀy₀,

            u = R⁻¹a,   p = R⁻ᵀ((D + γ YYᵀ) u − γ b),   H∇f = γ∇f + Sᵀp − γ Yᵀu.

        The products with the buffer run on its rows in slot order (s and y of a slot side by side; the
        first ``depth`` slots hold every pair in use): one for [a; b], one for Sᵀp − γYᵀu. Only the
        2k-vectors and the Gram matrix are put in newest-first order (an index per sample). Unused
        pairs get a unit row and column in R and D and zero a, b, so they drop out exactly (u and p
        are exactly 0 there). ``zg``: the buffer rows' products with ``grad`` when :meth:`push` formed them."""
        if depth == 0:
            return -grad
        M, B = self.memory, grad.shape[0]
        rows, _, j, gram_rows, eye = self._consts(grad.device, B, depth, grad.real.dtype)
        Z = real_rows(st["P"], 1).view(B, 2 * M + 2, -1)[:, :2 * depth]         # (B, 2k, D): s, y per slot
        count = st["count"]
        gf = real_rows(grad, 1)                                                  # (B, D)
        g = gf.unsqueeze(-1)                                                     # (B, D, 1)
        used = j < count.unsqueeze(-1)                                           # (B, k), newest first
        slot = torch.where(used, (st["head"].unsqueeze(-1) - j) % M, j)          # newest-first → slot
        idx = gram_rows[slot].view(B, 2 * depth)
        both = used.unsqueeze(-1) & used.unsqueeze(-2)                           # (B, k, k)
        G = st["G"][rows.view(B, 1, 1), idx.unsqueeze(-1), idx.unsqueeze(-2)]                 # (B, 2k, 2k), newest first
        SY, YY = G[:, 0::2, 1::2], G[:, 1::2, 1::2]
        zg = bank_dots(Z, gf).view(B, 2 * depth) if zg is None else zg[:, :2 * depth]
        ab = zg.gather(1, idx).view(B, depth, 2) * used.unsqueeze(-1)
        a, b = ab[..., :1], ab[..., 1:]                                          # (B, k, 1)
        R = torch.where(both, SY, eye).tril()
        diag = R.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)                        # D (1 on unused pairs)
        yy0 = YY[:, 0, 0]
        gamma = torch.where(count > 0, SY[:, 0, 0] / yy0.clamp_min(torch.finfo(yy0.dtype).tiny),
                            torch.ones_like(yy0)).reshape(-1, 1, 1)
        u = torch.linalg.solve_triangular(R, a, upper=False)
        rhs = diag * u + gamma * (torch.bmm(torch.where(both, YY, 0.0), u) - b)
        p = torch.linalg.solve_triangular(R.mT, rhs, upper=True)
        c = torch.cat([p, -gamma * u], -1).view(B, 2 * depth)                   # 0 on unused pairs
        c = torch.zeros_like(c).scatter_add_(1, idx, c).unsqueeze(-1)           # back to slot order
        if kernels.rows_apply(Z, gf):            # one read of the bank at the memory speed (CPU)
            q = kernels.rows_comb(Z, c.squeeze(-1), gamma.view(B), gf, negate=True)
        else:
            q = torch.baddbmm(gamma * g, Z.mT, c).squeeze(-1).neg_()
        if grad.is_complex():
            return torch.view_as_complex(q.reshape(*grad.shape, 2))
        return q.reshape(grad.shape)

    def step(self, state, t, x, f, grad, ctx, mu=None):
        if f is None or (ctx.evaluate is None and ctx.evaluate_full is None):
            raise ValueError("L-BFGS needs loss values for its line search: pass a closure returning the loss")
        active = ctx.active
        retrying = state["retry"] & active
        new = active & ~retrying                          # samples starting a line search at x
        # one read of the buffer for the Gram update and the direction's S∇f, Y∇f
        zg = self.push(state, x - state["x_prev"], grad - state["g_prev"], new & state["has_prev"], also=grad)
        d = self.direction(state, grad, min(self.memory, max(int(t) - 1, 0)), zg)
        slope = dot(grad, d)
        bad = ~((slope < 0) & (slope > -math.inf))          # not a (finite) descent direction
        d = torch.where(bview(bad, d), -grad, d)
        self.clear(state, new & bad)
        alpha0 = torch.where(state["count"] > 0, 1.0, (self.mu if mu is None else mu) * state["scale"])
        d = where_sample(new, d, state["d"])
        alpha = torch.where(active, torch.where(new, alpha0, state["trial"] * self.shrink), 0.0)
        tries = (state["tries"] + 1) * retrying
        ok, x_new, f_new, cache = one_trial(x, f, grad, d, alpha, ctx, self.c)
        give_up = active & ~ok & (tries + 1 >= self.max_backtracks)
        retry = active & ~ok & ~give_up
        state.update(x_prev=where_sample(new, x, state["x_prev"]), g_prev=where_sample(new, grad, state["g_prev"]),
                     has_prev=state["has_prev"] | new, d=d, trial=alpha, tries=tries, accepted=ok, retry=retry)
        return StepResult(torch.where(ok, alpha, 0.0), x_new, f_new, cache, ok, retry)

    def step_key(self, t):                                  # the depth of the direction's memory
        return declared_key(self, LBFGSAlgorithm, min(self.memory, max(int(t) - 1, 0)), t, ("step",))

    def describe(self):
        return {"rule": "lbfgs_armijo", "mu0": self.mu, "memory": self.memory}

    def divergence_hint(self, t):
        return "check the data and the operator (the line search chooses the steps; try a smaller mu0)"
