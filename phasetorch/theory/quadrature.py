r"""Quadrature rules and a bracketed root finder for the asymptotic theory (float64, no SciPy).

Gauss rules are computed with the Golub–Welsch algorithm (Golub & Welsch 1969, "Calculation of
Gauss quadrature rules", Math. Comp. 23): the nodes of the n-point rule for a weight w are the
eigenvalues of the symmetric tridiagonal Jacobi matrix J of the three-term recurrence of the
orthonormal polynomials of w, and the weights are μ₀·v₀², with v₀ the first component of each
normalised eigenvector and μ₀ = ∫w. We use :func:`torch.linalg.eigh` in float64.

=================  ==============================  ====================  =======================
rule               weight / measure                diagonal of J         off-diagonal of J
=================  ==============================  ====================  =======================
``gauss_hermite``  N(0,1) density (probabilists')  0                     √k
``gauss_laguerre`` e^{-x} on [0, ∞)                2k + 1                k
``gauss_legendre`` 1 on [−1, 1]                    0                     k/√(4k² − 1)
=================  ==============================  ====================  =======================

``gauss_hermite`` returns *probability* weights (Σw = 1), so ``(w * f(x)).sum()`` is E f(X),
X ~ N(0, 1). :func:`composite_legendre` integrates over a union of panels: put a panel boundary at
every discontinuity or kink of the integrand and the rule stays spectrally accurate on each piece.

:func:`brentq` is Brent's method (Brent 1973, "Algorithms for minimization without derivatives",
ch. 4): inverse quadratic interpolation safeguarded by bisection; it never leaves the bracket.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Iterable, Sequence, Tuple

import torch

__all__ = ["gauss_hermite", "gauss_laguerre", "gauss_legendre", "composite_legendre", "brentq",
           "find_bracket"]

_F64 = torch.float64


def _golub_welsch(diag: torch.Tensor, off: torch.Tensor, mu0: float) -> Tuple[torch.Tensor, torch.Tensor]:
    J = torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(J)
    weights = mu0 * vecs[0].square()
    return nodes, weights


def _check_n(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"a Gauss rule needs a positive integer number of nodes, got {n!r}")
    return n


@lru_cache(maxsize=64)
def _hermite(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(1, n, dtype=_F64)
    x, w = _golub_welsch(torch.zeros(n, dtype=_F64), k.sqrt(), 1.0)
    # symmetrise (the rule is exactly symmetric; removes eigen-solver rounding)
    x = 0.5 * (x - x.flip(0))
    w = 0.5 * (w + w.flip(0))
    return x, w / w.sum()


def gauss_hermite(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """n-point Gauss rule for the standard normal law: E f(X) ≈ Σ w_k f(x_k), Σ w_k = 1.

    Exact for polynomials of degree ≤ 2n − 1. Returns float64 tensors (nodes, weights).
    """
    x, w = _hermite(_check_n(n))
    return x.clone(), w.clone()


@lru_cache(maxsize=64)
def _laguerre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(n, dtype=_F64)
    return _golub_welsch(2 * k + 1, torch.arange(1, n, dtype=_F64), 1.0)


def gauss_laguerre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """n-point Gauss rule for the Exp(1) law: E f(X) = ∫₀^∞ f(x) e^{-x} dx ≈ Σ w_k f(x_k)."""
    x, w = _laguerre(_check_n(n))
    return x.clone(), w.clone()


@lru_cache(maxsize=64)
def _legendre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(1, n, dtype=_F64)
    x, w = _golub_welsch(torch.zeros(n, dtype=_F64), k / (4 * k * k - 1).sqrt(), 2.0)
    x = 0.5 * (x - x.flip(0))
    w = 0.5 * (w + w.flip(0))
    return x, w


def gauss_legendre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """n-point Gauss–Legendre rule on [−1, 1]: ∫ f ≈ Σ w_k f(x_k) (Σ w_k = 2)."""
    x, w = _legendre(_check_n(n))
    return x.clone(), w.clone()


def composite_legendre(breaks: Iterable[float], order: int = 24, max_width: float = math.inf
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of ∫_{b₀}^{b_K} f(x) dx by Gauss–Legendre on every panel [b_k, b_{k+1}].

    ``breaks`` are sorted and de-duplicated; panels wider than ``max_width`` are split evenly.
    Place a break at each discontinuity / kink of f: the rule is then exact to rounding for
    piecewise-analytic integrands with well-separated singularities.
    """
    b = sorted({float(v) for v in breaks if math.isfinite(v)})
    if len(b) < 2:
        raise ValueError("composite_legendre needs at least two distinct finite break points")
    pieces = []
    for lo, hi in zip(b[:-1], b[1:]):
        k = max(1, math.ceil((hi - lo) / max_width)) if math.isfinite(max_width) else 1
        pieces.extend(lo + (hi - lo) * j / k for j in range(k))
    pieces.append(b[-1])
    edges = torch.tensor(pieces, dtype=_F64)
    x, w = _legendre(_check_n(order))
    lo, hi = edges[:-1, None], edges[1:, None]
    half = 0.5 * (hi - lo)
    nodes = (lo + hi) * 0.5 + half * x[None, :]
    weights = half * w[None, :]
    return nodes.reshape(-1), weights.reshape(-1)


def brentq(f: Callable[[float], float], a: float, b: float, *, xtol: float = 1e-14, rtol: float = 4e-16,
           maxiter: int = 200) -> float:
    """A root of f in [a, b] (f(a), f(b) of opposite signs) by Brent's method.

    Converges superlinearly on smooth f and never slower than bisection (at most ≈ log₂((b−a)/xtol)
    + a few extra steps). Raises ValueError when the bracket does not change sign.
    """
    fa, fb = float(f(a)), float(f(b))
    if math.isnan(fa) or math.isnan(fb):
        raise ValueError("brentq: f is NaN at a bracket end; bracket the root where f is finite")
    if fa == 0.0:
        return float(a)
    if fb == 0.0:
        return float(b)
    if (fa > 0) == (fb > 0):
        raise ValueError(f"brentq: f({a}) = {fa} and f({b}) = {fb} have the same sign; give a bracket "
                         f"on which f changes sign")
    c, fc = a, fa
    d = e = b - a
    for _ in range(maxiter):
        if (fb > 0) == (fc > 0):
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2 * rtol * abs(b) + 0.5 * xtol
        mid = 0.5 * (c - b)
        if abs(mid) <= tol or fb == 0.0:
            return float(b)
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:  # secant
                p, q = 2 * mid * s, 1 - s
            else:  # inverse quadratic interpolation
                qq, r = fa / fc, fb / fc
                p = s * (2 * mid * qq * (qq - r) - (b - a) * (r - 1))
                q = (qq - 1) * (r - 1) * (s - 1)
            if p > 0:
                q = -q
            else:
                p = -p
            if 2 * p < min(3 * mid * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = mid
        else:
            d = e = mid
        a, fa = b, fb
        b = b + d if abs(d) > tol else b + math.copysign(tol, mid)
        fb = float(f(b))
        if math.isnan(fb):
            raise ValueError(f"brentq: f is NaN at {b}")
    raise ValueError(f"brentq: no convergence in {maxiter} iterations; last point {b}")


def find_bracket(f: Callable[[float], float], grid: Sequence[float], *, last: bool = True
                 ) -> Tuple[float, float] | None:
    """The last (or first) adjacent pair of ``grid`` on which f changes sign, or None.

    The values are computed once per grid point; NaNs are skipped.
    """
    vals = [float(f(x)) for x in grid]
    pairs = []
    prev = None
    for x, v in zip(grid, vals):
        if math.isnan(v):
            continue
        if prev is not None and (prev[1] > 0) != (v > 0):
            pairs.append((prev[0], x))
        prev = (x, v)
    if not pairs:
        return None
    return pairs[-1] if last else pairs[0]
