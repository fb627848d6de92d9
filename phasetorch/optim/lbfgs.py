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
iteration or after a reset); a sample whose line search fails does not move, which the solvers'
stagnation test then reports as convergence.
"""

from __future__ import annotations

import torch

from ..tensors import bview, dot, norm2, where_sample
from .base import PhaseOptimizer, backtracking

__all__ = ["LBFGS", "LBFGSCore"]


def _rows_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of real (B, D) tensors as one batched matrix product: shape (B,)."""
    return torch.bmm(u.unsqueeze(1), v.unsqueeze(2)).reshape(-1)


def _real_rows(t: torch.Tensor, lead: int) -> torch.Tensor:
    """A real view of ``t`` with its first ``lead`` dimensions kept and the rest flattened
    (complex entries as (re, im) pairs); no copy for contiguous tensors."""
    r = torch.view_as_real(t) if t.is_complex() else t
    return r.reshape(*t.shape[:lead], -1)


class LBFGSCore:
    """Functional core shared by :class:`LBFGS` and :func:`phasetorch.reconstruct`."""

    def __init__(self, memory: int = 10, mu0: float = 1.0, c: float = 1e-4, shrink: float = 0.5,
                 max_backtracks: int = 40) -> None:
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"memory must be an int ≥ 1, got {memory!r}")
        if not mu0 > 0:
            raise ValueError(f"mu0 must be > 0, got {mu0}")
        self.memory, self.mu0, self.c, self.shrink = int(memory), float(mu0), float(c), float(shrink)
        self.max_backtracks = int(max_backtracks)
        self.S = self.Y = self.rho = None

    def start(self, scale: torch.Tensor) -> None:
        self.scale = scale
        self.S = self.Y = self.rho = None
        self.prev = None

    def _init_memory(self, x: torch.Tensor) -> None:
        B, M = x.shape[0], self.memory
        self.S = torch.zeros(M, *x.shape, dtype=x.dtype, device=x.device)
        self.Y = torch.zeros_like(self.S)
        rdt = x.real.dtype if x.is_complex() else x.dtype
        self.rho = torch.zeros(M, B, dtype=rdt, device=x.device)
        self.head = torch.zeros(B, dtype=torch.long, device=x.device)
        self.count = torch.zeros(B, dtype=torch.long, device=x.device)

    def _push(self, s: torch.Tensor, g: torch.Tensor, active: torch.Tensor) -> None:
        sy = dot(s, g)
        ok = active & (sy > 1e-10 * (norm2(s) * norm2(g)).sqrt()) & torch.isfinite(sy)
        # masked writes (no host read): samples that reject the pair rewrite their slot unchanged
        ar = torch.arange(ok.shape[0], device=ok.device)
        slot = self.head
        self.S[slot, ar] = where_sample(ok, s, self.S[slot, ar])
        self.Y[slot, ar] = where_sample(ok, g, self.Y[slot, ar])
        self.rho[slot, ar] = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), self.rho[slot, ar])
        self.head = torch.where(ok, (slot + 1) % self.memory, slot)
        self.count = torch.where(ok, torch.clamp(self.count + 1, max=self.memory), self.count)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """−H∇f by the two-loop recursion, per sample (−∇f for samples with an empty memory)."""
        same = (self.head == self.head[0]).all() & (self.count == self.count[0]).all()
        uniform, head, count = torch.stack([same.long(), self.head[0], self.count[0]]).tolist()   # one host read
        if uniform:                                   # common case: every sample stored the same pairs
            return self._direction_uniform(grad, head, count)
        return self._direction_general(grad)

    def _direction_general(self, grad: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion with per-sample ring positions and pair counts (masked)."""
        B, M = grad.shape[0], self.memory
        ar = torch.arange(B, device=grad.device)

        def pair(j):
            slot = (self.head - 1 - j) % M
            return self.S[slot, ar], self.Y[slot, ar], self.rho[slot, ar], j < self.count

        depth = int(self.count.max())
        q = grad.clone()
        alphas = []
        for j in range(depth):                               # newest → oldest
            s, yv, rho, valid = pair(j)
            a = torch.where(valid, rho * dot(s, q), torch.zeros_like(rho))
            q = q - bview(a, q).to(q.dtype) * yv
            alphas.append((j, a))
        gamma = torch.ones(B, dtype=self.rho.dtype, device=grad.device)
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

    def _direction_uniform(self, grad: torch.Tensor, head: int, count: int) -> torch.Tensor:
        """The two-loop recursion when every sample holds the same ``count`` pairs ending at slot
        ``head − 1``: the same algebra on real views (Re⟨a, b⟩ = Σ of the real view's products),
        with no per-sample masks — a few tensor operations per stored pair."""
        M = self.memory
        S, Y = _real_rows(self.S, 2), _real_rows(self.Y, 2)          # (M, B, D)
        q = _real_rows(grad, 1).clone()                                # (B, D)
        order = [(head - 1 - j) % M for j in range(count)]            # newest → oldest
        alphas = []
        for slot in order:                     # per pair: a batched dot (bmm) and one fused update
            a = self.rho[slot] * _rows_dot(S[slot], q)
            q = torch.addcmul(q, a.unsqueeze(-1), Y[slot], value=-1)
            alphas.append(a)
        if order:
            s_n, y_n = S[order[0]], Y[order[0]]
            yy = _rows_dot(y_n, y_n)
            q = (_rows_dot(s_n, y_n) / yy.clamp_min(torch.finfo(yy.dtype).tiny)).unsqueeze(-1) * q
        for slot, a in zip(reversed(order), reversed(alphas)):       # oldest → newest
            b = self.rho[slot] * _rows_dot(Y[slot], q)
            q = torch.addcmul(q, (a - b).unsqueeze(-1), S[slot])
        q = q.neg_()
        if grad.is_complex():
            return torch.view_as_complex(q.reshape(*grad.shape, 2))
        return q.reshape(grad.shape)

    def step(self, t: int, x, f, grad, evaluate, active, cache0=None, project=None):
        """One iteration: ``(alpha, x_new, f_new, cache)``."""
        if f is None:
            raise ValueError("L-BFGS needs loss values for its line search: pass a closure returning the loss")
        if self.S is None:
            self._init_memory(x)
        if self.prev is not None:
            x_prev, g_prev = self.prev
            self._push(x - x_prev, grad - g_prev, active)
        d = self.direction(grad)
        slope = dot(grad, d)
        bad = ~(slope < 0) | ~torch.isfinite(slope)
        d = torch.where(bview(bad, d), -grad, d)
        self.count = torch.where(bad, torch.zeros_like(self.count), self.count)
        alpha0 = torch.where(self.count > 0, torch.ones_like(self.scale), self.mu0 * self.scale)
        alpha, x_new, f_new, cache = backtracking(x, f, grad, d, alpha0, evaluate, active, cache0, project,
                                                  self.c, self.shrink, self.max_backtracks)
        self.prev = (x, grad)
        return alpha, x_new, f_new, cache


class LBFGS(PhaseOptimizer):
    r"""Batched L-BFGS (see the module docstring) as a ``torch.optim.Optimizer``.

    Parameters
    ----------
    params : one tensor x (``(*batch, *signal)``).
    memory : number of stored curvature pairs per sample (10).
    mu0 : first trial step (times 1/‖x₀‖² with ``scale="x0"``), used before any pair is stored.
    scale : ``"x0"`` (μ₀/‖x₀‖², for the intensity loss) or ``"none"`` (amplitude losses).
    batch_dims : leading batch dimensions of x.

    ``step(closure)`` performs one L-BFGS iteration (with its line search, which calls the
    closure again); the closure must return per-sample losses when ``batch_dims > 0``.
    """

    def __init__(self, params, memory: int = 10, mu0: float = 1.0, scale: str = "none", batch_dims: int = 0,
                 c: float = 1e-4, shrink: float = 0.5, max_backtracks: int = 40) -> None:
        if scale not in ("x0", "none"):
            raise ValueError(f"scale must be 'x0' or 'none', got {scale!r}")
        super().__init__(params, {"memory": memory, "mu0": mu0, "scale": scale}, batch_dims)
        self._core_args = dict(memory=memory, mu0=mu0, c=c, shrink=shrink, max_backtracks=max_backtracks)
        LBFGSCore(**self._core_args)  # validate now

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("LBFGS.step needs a closure (its line search re-evaluates the loss)")
        st = self.state[self.param]
        p = self.param
        f, grad, evaluate = self._gradient_now(closure)
        x = self._flat(p.detach()).clone()
        if "core" not in st:
            st["core"] = LBFGSCore(**self._core_args)
            st["t"] = 0
            n2 = norm2(x)
            if self.param_groups[0]["scale"] == "x0":
                if (n2 <= 0).any():
                    raise ValueError("scale='x0' needs a non-zero starting point")
                st["core"].start(1.0 / n2)
            else:
                st["core"].start(torch.ones_like(n2))
        st["t"] += 1
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        alpha, x_new, _, _ = st["core"].step(st["t"], x, f, grad, evaluate, active, cache0=grad)
        p.copy_(x_new.reshape(p.shape))
        st["last_step"] = alpha
        return f.reshape(self.batch_shape)
