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
iteration or after a reset); a sample whose line search fails does not move (the driver reports it
as stalled).

State (all tensors, leading memory or batch dimension): ``S``, ``Y`` (M, B, …) the pairs, ``rho``
(M, B), ``head``/``count`` (B,) the ring position and fill, ``x_prev``/``g_prev`` the previous
point and gradient, ``has_prev`` (B,), ``scale`` (B,).
"""

from __future__ import annotations

import torch

from ..tensors import bview, check_int, check_number, dot, norm2, where_sample
from .base import backtracking
from .engine import Algorithm, State, StepResult

__all__ = ["LBFGSAlgorithm"]


def rows_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of real (B, D) tensors as one batched matrix product: shape (B,)."""
    return torch.bmm(u.unsqueeze(1), v.unsqueeze(2)).reshape(-1)


def real_rows(t: torch.Tensor, lead: int) -> torch.Tensor:
    """A real view of ``t`` with its first ``lead`` dimensions kept and the rest flattened
    (complex entries as (re, im) pairs); no copy for contiguous tensors."""
    r = torch.view_as_real(t) if t.is_complex() else t
    return r.reshape(*t.shape[:lead], -1)


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

    def init_state(self, x, scale):
        B, M = x.shape[0], self.memory
        rdt = x.real.dtype if x.is_complex() else x.dtype
        S = torch.zeros(M, *x.shape, dtype=x.dtype, device=x.device)
        return {"scale": scale, "S": S, "Y": torch.zeros_like(S),
                "rho": torch.zeros(M, B, dtype=rdt, device=x.device),
                "head": torch.zeros(B, dtype=torch.long, device=x.device),
                "count": torch.zeros(B, dtype=torch.long, device=x.device),
                "x_prev": torch.zeros_like(x), "g_prev": torch.zeros_like(x),
                "has_prev": torch.zeros(B, dtype=torch.bool, device=x.device)}

    def push(self, st: State, s: torch.Tensor, g: torch.Tensor, active: torch.Tensor) -> None:
        """Store the pair (s, g) for the active samples that satisfy the curvature condition."""
        sy = dot(s, g)
        ok = active & (sy > 1e-10 * (norm2(s) * norm2(g)).sqrt()) & torch.isfinite(sy)
        # masked writes (no host read): samples that reject the pair rewrite their slot unchanged
        ar = torch.arange(ok.shape[0], device=ok.device)
        slot = st["head"]
        S, Y, rho = st["S"], st["Y"], st["rho"]
        S[slot, ar] = where_sample(ok, s, S[slot, ar])
        Y[slot, ar] = where_sample(ok, g, Y[slot, ar])
        rho[slot, ar] = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), rho[slot, ar])
        st["head"] = torch.where(ok, (slot + 1) % self.memory, slot)
        st["count"] = torch.where(ok, torch.clamp(st["count"] + 1, max=self.memory), st["count"])

    def direction(self, st: State, grad: torch.Tensor) -> torch.Tensor:
        """−H∇f by the two-loop recursion, per sample (−∇f for samples with an empty memory)."""
        head, count = st["head"], st["count"]
        same = (head == head[0]).all() & (count == count[0]).all()
        uniform, h, c = torch.stack([same.long(), head[0], count[0]]).tolist()   # one host read
        if uniform:                                   # common case: every sample stored the same pairs
            return self.direction_uniform(st, grad, h, c)
        return self.direction_general(st, grad)

    def direction_general(self, st: State, grad: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion with per-sample ring positions and pair counts (masked)."""
        B, M = grad.shape[0], self.memory
        ar = torch.arange(B, device=grad.device)
        S, Y, R, head, count = st["S"], st["Y"], st["rho"], st["head"], st["count"]

        def pair(j):
            slot = (head - 1 - j) % M
            return S[slot, ar], Y[slot, ar], R[slot, ar], j < count

        depth = int(count.max())
        q = grad.clone()
        alphas = []
        for j in range(depth):                               # newest → oldest
            s, yv, rho, valid = pair(j)
            a = torch.where(valid, rho * dot(s, q), torch.zeros_like(rho))
            q = q - bview(a, q).to(q.dtype) * yv
            alphas.append((j, a))
        gamma = torch.ones(B, dtype=R.dtype, device=grad.device)
        if depth:
            s_n, y_n, _, valid = pair(0)
            yy = norm2(y_n)
            gamma = torch.where(valid, dot(s_n, y_n) / yy.clamp_min(torch.finfo(yy.dtype).tiny), gamma)
        r = bview(gamma, q).to(q.dtype) * q
        for j, a in reversed(alphas):                        # oldest → newest
            s, yv, rho, valid = pair(j)
            b = torch.where(valid, rho * dot(yv, r), torch.zeros_like(rho))
            r = r + bview(a - b, r).to(r.dtype) * s
        return -r

    def direction_uniform(self, st: State, grad: torch.Tensor, head: int, count: int) -> torch.Tensor:
        """The two-loop recursion when every sample holds the same ``count`` pairs ending at slot
        ``head − 1``: the same algebra on real views (Re⟨a, b⟩ = Σ of the real view's products),
        with no per-sample masks — a few tensor operations per stored pair."""
        M = self.memory
        S, Y, rho = real_rows(st["S"], 2), real_rows(st["Y"], 2), st["rho"]      # (M, B, D)
        q = real_rows(grad, 1).clone()                                           # (B, D)
        order = [(head - 1 - j) % M for j in range(count)]            # newest → oldest
        alphas = []
        for slot in order:                     # per pair: a batched dot (bmm) and one fused update
            a = rho[slot] * rows_dot(S[slot], q)
            q = torch.addcmul(q, a.unsqueeze(-1), Y[slot], value=-1)
            alphas.append(a)
        if order:
            s_n, y_n = S[order[0]], Y[order[0]]
            yy = rows_dot(y_n, y_n)
            q = (rows_dot(s_n, y_n) / yy.clamp_min(torch.finfo(yy.dtype).tiny)).unsqueeze(-1) * q
        for slot, a in zip(reversed(order), reversed(alphas)):       # oldest → newest
            b = rho[slot] * rows_dot(Y[slot], q)
            q = torch.addcmul(q, (a - b).unsqueeze(-1), S[slot])
        q = q.neg_()
        if grad.is_complex():
            return torch.view_as_complex(q.reshape(*grad.shape, 2))
        return q.reshape(grad.shape)

    def step(self, state, t, x, f, grad, ctx, mu=None):
        if f is None or ctx.evaluate is None:
            raise ValueError("L-BFGS needs loss values for its line search: pass a closure returning the loss")
        self.push(state, x - state["x_prev"], grad - state["g_prev"], ctx.active & state["has_prev"])
        d = self.direction(state, grad)
        slope = dot(grad, d)
        bad = ~(slope < 0) | ~torch.isfinite(slope)
        d = torch.where(bview(bad, d), -grad, d)
        state["count"] = torch.where(bad, torch.zeros_like(state["count"]), state["count"])
        scale = state["scale"]
        alpha0 = torch.where(state["count"] > 0, torch.ones_like(scale), (self.mu if mu is None else mu) * scale)
        alpha, x_new, f_new, cache = backtracking(x, f, grad, d, alpha0, ctx.evaluate, ctx.active, ctx.cache,
                                                  ctx.project, self.c, self.shrink, self.max_backtracks)
        state.update(x_prev=x, g_prev=grad, has_prev=torch.ones_like(state["has_prev"]))
        return StepResult(alpha, x_new, f_new, cache)

    def describe(self):
        return {"rule": "lbfgs_armijo", "mu0": self.mu, "memory": self.memory}

    def divergence_hint(self, t):
        return "check the data and the operator (the line search chooses the steps; try a smaller mu0)"
