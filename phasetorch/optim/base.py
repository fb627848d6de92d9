r"""Shared machinery of phasetorch's optimizers: per-sample algebra, backtracking, the Optimizer base.

All optimizers act on one tensor x of shape ``(*batch, *signal)``; internally it is viewed as
``(B, *signal)`` with B = prod(batch). Every scalar of an algorithm — step size, line-search
state, curvature pairs, stopping flags — is per sample, so a batch of B problems gives what B
single runs give (up to floating-point summation order).

Complex tensors are treated as real vectors of twice the length with the inner product
Re⟨a, b⟩ = Re Σ ā b; for a real-valued f the gradient that goes with it is 2∂f/∂x̄, which is what
PyTorch autograd and :mod:`phasetorch.losses` return. A directional derivative is therefore
f'(x; d) = Re⟨∇f, d⟩ for real and complex x alike.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch.optim import Optimizer

from ..tensors import bview, dot, where_sample

Evaluate = Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
Project = Optional[Callable[[torch.Tensor], torch.Tensor]]


def backtracking(x: torch.Tensor, f: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor,
                 alpha0: torch.Tensor, evaluate: Evaluate, active: torch.Tensor, cache0=None,
                 project: Project = None, c: float = 1e-4, shrink: float = 0.5, max_backtracks: int = 40):
    r"""Per-sample Armijo backtracking along ``direction``.

    Tries α = α₀, α₀ρ, α₀ρ², … (ρ = ``shrink``) independently for every active sample and accepts
    the first with f(x_α) ≤ f(x) + c·Re⟨∇f(x), x_α − x⟩, x_α = P(x + α d) (P = ``project``, the
    identity by default — with a projection this is the projected Armijo rule of Bertsekas 1976).
    Non-finite trial values are rejected. A sample that finds no such α within ``max_backtracks``
    trials does not move (α = 0).

    ``evaluate(x)`` returns ``(f(x) per sample, cache)`` where ``cache`` is ``None`` or a tensor
    with a leading batch dimension (e.g. Ax, kept for the accepted point); ``cache0`` is the cache
    at ``x`` (kept for samples that do not move).

    Returns ``(alpha, x_new, f_new, cache_new)``; inactive samples keep α = 0 and x.
    """
    alpha = torch.where(active, alpha0, torch.zeros_like(alpha0))
    done = ~active
    x_new, f_new, cache_new = x, f, cache0
    for _ in range(max(1, int(max_backtracks))):
        x_try = x + bview(alpha, x).to(x.dtype) * direction
        if project is not None:
            x_try = project(x_try)
        f_try, cache = evaluate(x_try)
        ok = (~done) & torch.isfinite(f_try) & (f_try <= f + c * dot(grad, x_try - x))
        x_new = where_sample(ok, x_try, x_new)
        f_new = torch.where(ok, f_try, f_new)
        if cache is not None:
            cache_new = cache if cache_new is None else where_sample(ok, cache, cache_new)
        done = done | ok
        if bool(done.all()):                     # the one host read per trial
            break
        alpha = torch.where(done, alpha, alpha * shrink)
    alpha = torch.where(done, alpha, torch.zeros_like(alpha))
    return alpha, x_new, f_new, cache_new


class PhaseOptimizer(Optimizer):
    r"""Base of phasetorch's ``torch.optim.Optimizer`` subclasses (one parameter tensor, per-sample state).

    Parameters
    ----------
    params : an iterable holding exactly one tensor x of shape ``(*batch, *signal)`` (or a
        single param group with one tensor).
    defaults : the optimizer's hyper-parameters (torch convention).
    batch_dims : how many leading dimensions of x are batch dimensions (default 0: x is one
        signal). Step sizes, line searches and curvature memories are per sample.

    **Closures.** ``step(closure)`` follows the torch convention (``closure()`` re-evaluates the
    loss and fills ``x.grad``), with one extension: for per-sample step rules the closure should
    return the per-sample losses, shape ``x.shape[:batch_dims]``, and call ``backward`` on their
    sum::

        def closure():
            opt.zero_grad()
            f = loss(x, y)          # phasetorch.losses: one value per sample
            f.sum().backward()
            return f

    A scalar return value is accepted when ``batch_dims = 0``.
    """

    def __init__(self, params, defaults: dict, batch_dims: int = 0) -> None:
        super().__init__(params, defaults)
        ps = [p for g in self.param_groups for p in g["params"]]
        if len(ps) != 1:
            raise ValueError(f"{type(self).__name__} optimizes exactly one tensor (a signal or a batch of signals), "
                             f"got {len(ps)}; stack the signals into one tensor with leading batch dimensions")
        if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or not 0 <= batch_dims <= ps[0].dim():
            raise ValueError(f"batch_dims must be an int between 0 and x.dim() = {ps[0].dim()}, got {batch_dims!r}")
        if not (ps[0].is_floating_point() or ps[0].is_complex()):
            raise ValueError(f"the optimized tensor must be floating-point or complex, got {ps[0].dtype}")
        self.batch_dims = int(batch_dims)

    # ------------------------------------------------------------------ helpers
    @property
    def param(self) -> torch.Tensor:
        return self.param_groups[0]["params"][0]

    @property
    def batch_shape(self) -> Tuple[int, ...]:
        return tuple(self.param.shape[: self.batch_dims])

    def _flat(self, t: torch.Tensor) -> torch.Tensor:
        B = math.prod(self.batch_shape)
        return t.reshape(B, *self.param.shape[self.batch_dims:])

    def _per_sample(self, loss) -> torch.Tensor:
        B = math.prod(self.batch_shape)
        t = torch.as_tensor(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if t.is_complex():
            raise ValueError("the closure must return a real loss")
        if t.numel() == B:
            return t.reshape(B).to(self.param.real.dtype if self.param.is_complex() else self.param.dtype)
        raise ValueError(f"{type(self).__name__}: the closure must return one loss per sample, shape "
                         f"{self.batch_shape} (batch_dims={self.batch_dims}), got shape {tuple(t.shape)}; return "
                         f"the per-sample values (e.g. phasetorch.losses.IntensityLoss(op)(x, y)) and call "
                         f".sum().backward() on them")

    def _closure_evaluate(self, closure) -> Evaluate:
        p = self.param

        def evaluate(x_flat: torch.Tensor):
            with torch.no_grad():
                p.copy_(x_flat.reshape(p.shape))
            with torch.enable_grad():
                loss = closure()
            if p.grad is None:
                raise ValueError("the closure did not compute x.grad; call .backward() on the (summed) loss")
            return self._per_sample(loss), self._flat(p.grad.detach()).clone()

        return evaluate

    def _gradient_now(self, closure):
        """(f or None, grad, evaluate or None) at the current point."""
        p = self.param
        if closure is None:
            if p.grad is None:
                raise ValueError(f"{type(self).__name__}.step() needs x.grad (call loss.backward() first) "
                                 f"or a closure")
            return None, self._flat(p.grad.detach()).clone(), None
        evaluate = self._closure_evaluate(closure)
        x0 = self._flat(p.detach()).clone()
        f, g = evaluate(x0)
        return f, g, evaluate


__all__ = ["PhaseOptimizer", "backtracking"]
