r"""Per-sample Armijo backtracking, the line search shared by the step rules and L-BFGS.

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

from ..tensors import bview, dot, where_sample

Evaluate = Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]
Project = Optional[Callable[[torch.Tensor], torch.Tensor]]


def backtracking(x: torch.Tensor, f: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor,
                 alpha0: torch.Tensor, evaluate: Evaluate, active: torch.Tensor, cache0=None,
                 project: Project = None, c: float = 1e-4, shrink: float = 0.5, max_backtracks: int = 40,
                 rtol: float = 0.0):
    r"""Per-sample Armijo backtracking along ``direction``.

    Tries α = α₀, α₀ρ, α₀ρ², … (ρ = ``shrink``) independently for every active sample and accepts
    the first with f(x_α) ≤ f(x) + c·Re⟨∇f(x), x_α − x⟩, x_α = P(x + α d) (P = ``project``, the
    identity by default — with a projection this is the projected Armijo rule of Bertsekas 1976).
    Non-finite trial values are rejected. ``rtol`` adds a slack rtol·|f(x)| to the test (rounding). A sample that finds no such α within ``max_backtracks``
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
        ok = (~done) & torch.isfinite(f_try) & (f_try <= f + c * dot(grad, x_try - x) + rtol * f.abs())
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


def scaled(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample step ``(B,)`` shaped to multiply a direction like ``x``, in x's real dtype (a real α
    times a complex direction promotes inside the product: no cast to complex)."""
    a = bview(alpha, x)
    rdt = x.real.dtype if x.is_complex() else x.dtype
    return a if a.dtype == rdt else a.to(rdt)


def one_trial(x: torch.Tensor, f: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor, alpha: torch.Tensor,
              ctx, c: float = 0.0, rtol: float = 0.0):
    r"""One trial of a line search, decided on the device (no host read): x_α = P(x + α d) is
    evaluated once and accepted per sample when f(x_α) ≤ f(x) + c·Re⟨∇f(x), x_α − x⟩ + rtol·|f(x)|
    (finite, active samples only).

    Uses ``ctx.evaluate_full`` when present (the driver: value, gradient and cache in one pass;
    the returned cache is that evaluation, which the driver keeps for the accepted samples only),
    else ``ctx.evaluate`` (a value only: the returned cache is None, since the trial's cache is
    wrong for the rejected samples). Returns ``(ok, x_new, f_new, cache)`` with x_new = x_α where
    ok, else x — except with ``ctx.evaluate_full`` (the driver, which keeps x and its evaluation for
    the samples its ``StepResult.accepted`` rejects): then x_new, f_new are the trial's for every sample.
    """
    x_try = x + scaled(alpha, x) * direction
    if ctx.project is not None:
        x_try = ctx.project(x_try)
    if ctx.evaluate_full is not None:
        cache, f_try = ctx.evaluate_full(x_try)
    else:
        f_try, cache = ctx.evaluate(x_try)[0], None
    bound = f + rtol * f.abs() if rtol else f
    if c:                                     # c = 0 (the safeguard's test): no directional derivative
        bound = bound + c * dot(grad, x_try - x)
    # ≤ rejects NaN; |f| < inf rejects ±inf even where the bound overflowed (cheaper than isfinite)
    ok = ctx.active & (f_try <= bound) & (f_try.abs() < math.inf)
    if ctx.evaluate_full is not None:         # the driver keeps x (and its evaluation) where not ok
        return ok, x_try, f_try, cache
    return ok, where_sample(ok, x_try, x), torch.where(ok, f_try, f), cache


__all__ = ["backtracking", "one_trial", "scaled", "Evaluate", "Project"]
