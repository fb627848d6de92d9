r"""Asymptotics of spectral initialization for Gaussian phase retrieval (proportional limit).

Model (the library's units, theory.md §1–2): a_i ~ N(0, I_n) real or CN(0, I_n) complex
(E|A_ij|² = 1, :class:`~phasetorch.physics.GaussianMeasurement`), ‖x*‖ = 1, S = ⟨a_i, x*⟩,
Y = |S|² (+ σε, ε ~ N(0, 1), ``noise=σ``), δ = m/n. The spectral matrix is
D = (1/m) Σ_i T(ŷ_i) a_i a_iᴴ with ŷ = y/mean(y); here E y = 1 so ŷ → Y. With Z = T(Y) and
z_max = sup Z, for λ > z_max (Lu & Li 2017, "Phase transitions of spectral initialization for
high-dimensional nonconvex estimation", arXiv 1702.06435; Mondelli & Montanari 2018; Luo,
Alghamdi & Lu 2019, "Optimal spectral initialization for signal recovery with applications to
phase retrieval"):

    ψ_δ(λ) = λ (1/δ + E[Z/(λ − Z)]),      φ(λ) = λ E[Z |S|²/(λ − Z)],
    λ̄ = argmin ψ_δ,   ζ_δ(λ) = ψ_δ(max(λ, λ̄)),   λ* solves ζ_δ(λ*) = φ(λ*),
    λ₁(D) → ζ_δ(λ*),   ρ² = lim |⟨v̂, x*⟩|² = ψ'_δ(λ*)/(ψ'_δ(λ*) − φ'(λ*)) if ψ'_δ(λ*) > 0 else 0,

with ψ'_δ = 1/δ − E[Z²/(λ−Z)²] and φ' = −E[Z²|S|²/(λ−Z)²]. We solve the equivalent **tilt form**
(used by the DMFT): with τ(y) = T(y)/(λ* − T(y)), λ* is the largest root of
δ E[(|S|² − 1) τ(Y)] = 1 on (z_max, ∞), and

    ρ² = (1 − δE[τ²]) / (1 − δE[τ²] + δE[|S|²τ²]).

The weak-recovery threshold is δ_c(T) = inf{δ : ψ'_δ(λ*_δ) > 0} (no root λ* counts as ≤ 0),
found by a bracketed root search in δ on the formula. The complex field replaces S² by
|S|² ~ Exp(1) (Luo–Alghamdi–Lu: ``optimal`` T = 1 − 1/ŷ has δ_c = 1/2 real, 1 complex, and
λ₁(D) → 1/δ). All expectations are deterministic quadrature in float64 (no Monte Carlo):

* real: over s = |S| ≥ 0 with density 2φ(s), composite Gauss–Legendre in s with panel breaks at
  every s where s² crosses a discontinuity / kink of T (named preprocessings declare theirs;
  jumps of a user callable are located numerically by bisection), graded panels near 0;
* complex: the same in e = |S|² with density e^{-e};
* noise σ > 0: a composite rule in y (breaks of T exact) weighted by the density of
  Y = |S|² + σε and by E[|S|²|Y = y], both computed by an inner rule over |y − |S|²| ≤ 10σ (all the
  expectations are affine in |S|² given Y). Panels scale with max(1, σ) and are graded geometrically
  in |y|, so time and memory do not grow with σ (σ = 10⁶ takes milliseconds); as σ → ∞, Y carries no
  information on S and ρ → 0 (exactly 0 once δ is below the noisy threshold).

Preprocessing T (names of :mod:`phasetorch.init.preprocessing`, acting on ŷ): ``optimal``, ``mm``,
``trimmed``, ``clipped`` use :func:`phasetorch.init.preprocessing.elementwise`. The rank-based
``orthogonality`` (top ⌈m/6⌉ of ŷ) becomes, in the limit, the indicator 1{ŷ ≥ t} with t the
population quantile P(Y ≥ t) = 1/6 (computed by root finding on the same quadrature). ``identity``
(T = ŷ) and ``weighted`` (T = ŷ^{1/4} on the top 3/13) are unbounded: Lu–Li needs sup T < ∞; for
unbounded T the top eigenvector of D localises on the largest-T rows as n → ∞ and ρ → 0 (slowly in n;
theory.md §2), so they are refused with a ValueError.
A callable T(ŷ) is accepted when it is bounded above.

The library's ``optimal`` floors ŷ at 10⁻³ (T ≥ −999), so its limits differ slightly from those of
the exact T = 1 − 1/ŷ: at δ = 4, λ* = 13.2140 instead of 13.2433 and λ₁(D) → 0.25022 instead of
1/δ, while ρ² changes by < 3·10⁻⁶ (0.924488 vs 0.924490). For a complex field the floor is 10⁻²
(:func:`phasetorch.init.preprocessing.optimal_floor`; ρ² 0.734482 vs 0.734490 at δ = 4). Pass
``lambda y: 1 - 1/y`` for the exact function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from functools import lru_cache
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..init import preprocessing as pp
from ..tensors import check_number
from .quadrature import brentq, composite_legendre, find_bracket, gauss_hermite, gauss_laguerre

__all__ = ["SpectralLimits", "spectral_limits", "spectral_overlap", "spectral_threshold", "rank_threshold",
           "signal_law", "link_law"]

_F64 = torch.float64
FIELDS = ("real", "complex")
_S_MAX = 12.0        # real: |S| ≤ 12 (tail mass 2e-33)
_E_MAX = 75.0        # complex: |S|² ≤ 75 (tail mass 3e-33)
_ORDER = 24          # Gauss–Legendre nodes per panel


# ---------------------------------------------------------------------------------------------
# The law of (|S|², Y) as a weighted point set


@dataclass(frozen=True)
class SignalLaw:
    """Quadrature for the law of (|S|², Y): E h(|S|², Y) ≈ Σ_k w_k h(s2_k, y_k) (float64).

    Noiseless, ``s2`` = ``y`` = |S|² at the nodes (exact for every h). With noise the nodes are values
    of Y and ``s2`` holds E[|S|² | Y]: exact for every h affine in |S|² (all the Lu–Li expectations).
    """

    s2: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor

    def mean(self, values: torch.Tensor) -> float:
        return float((self.w * values).sum())


def _grading(x: float) -> Tuple[float, ...]:
    return tuple(x + d for d in (-0.3, -0.1, -0.03, -0.01, -1e-3, 1e-3, 0.01, 0.03, 0.1, 0.3))


@lru_cache(maxsize=256)
def _law_cached(field: str, noise: float, breaks: Tuple[float, ...]) -> SignalLaw:
    if noise > 0:
        return _noisy_law(field, noise, breaks)
    if field == "real":  # |S| = s ≥ 0 with density 2φ(s); Y = s²
        sb = [math.sqrt(v) for v in breaks + (0.0,) if 0 < v < _S_MAX ** 2]
        pts = [0.0, _S_MAX, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3] + sb
        for v in sb:
            pts.extend(p for p in _grading(v) if 0 < p < _S_MAX)
        x, w = composite_legendre(pts, order=_ORDER, max_width=0.125)
        w = w * 2 * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        s2 = x * x
    else:  # e = |S|² with density e^{-e}; Y = e
        eb = [v for v in breaks + (0.0,) if 0 < v < _E_MAX]
        pts = [0.0, _E_MAX, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.3] + eb
        for v in eb:
            pts.extend(p for p in _grading(v) if 0 < p < _E_MAX)
        x, w = composite_legendre(pts, order=_ORDER, max_width=0.25)
        w = w * torch.exp(-x)
        s2 = x
    return SignalLaw(s2=s2, y=s2.clone(), w=w / w.sum())


def _noisy_law(field: str, sigma: float, breaks: Tuple[float, ...]) -> SignalLaw:
    """Y = |S|² + σε: outer composite rule in y (breaks of T placed exactly), inner rule for the
    density p(y) = E[δ(Y − y)] and E[|S|² 1{Y = y}] over the window |y − |S|²| ≤ 10σ ∩ [0, |S|²_max].

    The cost does not grow with σ: panels are at most 0.25·max(1, σ) wide (p varies on the scale
    max(1, σ)), graded geometrically in |y| (ratio 2) from 1 up to 10σ (where T(y) may vary on the
    scale |y|, e.g. 1 − 1/y), and the inner window is clipped to the support of |S|², so the node
    count is O(1) + O(log σ) (a few thousand y-nodes even at σ = 10⁶)."""
    top = _S_MAX ** 2 if field == "real" else _E_MAX
    lo, hi = -10 * sigma, top + 10 * sigma
    pts = [lo, hi, 0.0] + [sg * sigma * k for k in (0.03, 0.1, 0.3, 1.0, 3.0) for sg in (-1, 1)]
    pts += [1e-4, 1e-3, 1e-2, 0.1, 0.3]
    pts += [sg * 2.0 ** k for k in range(0, max(0, math.ceil(math.log2(10 * sigma))) + 1) for sg in (-1, 1)]
    for b in breaks:
        pts.append(b)
        pts.extend(_grading(b))
    y, wy = composite_legendre([p for p in pts if lo <= p <= hi], order=16, max_width=0.25 * max(1.0, sigma))
    t, wt = composite_legendre([k / 12 for k in range(13)], order=16)
    ua = (y - 10 * sigma).clamp(min=0, max=top)[:, None]
    ub = (y + 10 * sigma).clamp(min=0, max=top)[:, None]
    if field == "real":  # inner variable s = |S| on [√ua, √ub]
        sa, sb = ua.sqrt(), ub.sqrt()
        s = sa + (sb - sa) * t[None, :]
        u = s * s
        dens = 2 * torch.exp(-0.5 * u) / math.sqrt(2 * math.pi) * (sb - sa) * wt[None, :]
    else:  # inner variable e = |S|² on [ua, ub]
        u = ua + (ub - ua) * t[None, :]
        dens = torch.exp(-u) * (ub - ua) * wt[None, :]
    dens = dens * torch.exp(-0.5 * ((y[:, None] - u) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    p = dens.sum(1)
    m2 = (dens * u).sum(1)
    keep = p > 0
    w = wy[keep] * p[keep]
    s2 = m2[keep] / p[keep]
    return SignalLaw(s2=s2, y=y[keep], w=w / w.sum())


LINK_NODES = 240        # Gauss–Hermite (real) / Gauss–Laguerre (complex) nodes in s for a general link
LINK_NOISE_NODES = 24  # Gauss–Hermite nodes in ε


def link_law(link, field: str = "real") -> SignalLaw:
    r"""Quadrature of (|S|², Ŷ = f(S, ε)/E f) for a general link (a SingleIndexModel or a callable f(s, ε)).

    Real: Gauss–Hermite in S (``LINK_NODES``) × Gauss–Hermite in ε (``LINK_NOISE_NODES``). Complex:
    the link must be circularly symmetric (f(e^{iφ}s, ε) = f(s, ε)), so S = √E with E = |S|² ~ Exp(1)
    by Gauss–Laguerre. A product rule: spectrally accurate for smooth f and T, first order across
    jumps of T∘f (use it for the links :func:`signal_law` does not cover).
    """
    f = getattr(link, "link", link)
    if not callable(f):
        raise ValueError(f"link must be a SingleIndexModel or a callable f(s, eps), got {type(link).__name__}")
    e, we = gauss_hermite(LINK_NOISE_NODES)
    if field == "real":
        s, ws = gauss_hermite(LINK_NODES)
        S = s[:, None].expand(-1, e.numel())
        s2 = S * S
    else:
        x, ws = gauss_laguerre(min(LINK_NODES, 150))
        S = torch.complex(x.sqrt(), torch.zeros_like(x))[:, None].expand(-1, e.numel())
        s2 = x[:, None].expand(-1, e.numel())
    y = f(S, e[None, :].expand(S.shape[0], -1))
    if not isinstance(y, torch.Tensor) or y.shape != s2.shape:
        raise ValueError("the link f(s, eps) must map tensors to a tensor of their shape")
    y = y.to(_F64)
    w = (ws[:, None] * we[None, :])
    w = w / w.sum()
    mean = float((w * y).sum())
    if not math.isfinite(mean) or mean <= 0:
        raise ValueError(f"the link has E y = {mean:.4g} ≤ 0: the spectral matrix of y/E y is not defined (an odd "
                         "link such as sign(s) carries no second-order information); use a warm start")
    return SignalLaw(s2=s2.reshape(-1).to(_F64), y=(y / mean).reshape(-1), w=w.reshape(-1))


def signal_law(field: str = "real", noise: float = 0.0, breaks: Sequence[float] = ()) -> SignalLaw:
    """Quadrature of (|S|², Y = |S|² + σε) with panel breaks where Y crosses each of ``breaks``."""
    field = _check_field(field)
    noise = _check_noise(noise)
    return _law_cached(field, noise, tuple(sorted({round(float(b), 15) for b in breaks})))


def _check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    return field


def _check_noise(noise: float) -> float:
    return check_number(noise, "noise (the standard deviation σ ≥ 0 of additive Gaussian intensity noise)", 0.0)


def _check_delta(delta: float) -> float:
    return check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True)


# ---------------------------------------------------------------------------------------------
# Preprocessing → (T, sup T, break points)


@dataclass(frozen=True)
class _Prep:
    T: Callable[[torch.Tensor], torch.Tensor]
    z_max: float
    breaks: Tuple[float, ...]
    depends_on_delta: bool


def rank_threshold(fraction: float, field: str = "real", noise: float = 0.0) -> float:
    """Population quantile t with P(Y ≥ t) = ``fraction`` (Y = |S|² + σε, E Y = 1).

    The proportional limit of "the top ⌈fraction·m⌉ of ŷ" is the set {ŷ ≥ t}. Noiseless real:
    t = Φ⁻¹(1 − fraction/2)²; complex: t = −log(fraction).
    """
    fraction = check_number(fraction, "fraction", 0.0, strict=True, high=1.0)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    field = _check_field(field)
    noise = _check_noise(noise)
    if noise == 0 and field == "complex":
        return -math.log(fraction)

    def excess(t: float) -> float:
        law = signal_law(field, noise, (t,))
        return law.mean((law.y >= t).to(_F64)) - fraction

    hi = (_S_MAX ** 2 if field == "real" else _E_MAX) * 0.5 + 10 * noise     # P(Y ≥ hi) ≈ 0 < fraction
    lo = -8 * noise - 1e-12
    return brentq(excess, lo, hi, xtol=1e-13)


def _jumps(T: Callable, lo: float, hi: float) -> Tuple[float, ...]:
    """Locations of jump discontinuities of a callable T on [lo, hi] (scan + bisection)."""
    grid = torch.cat([torch.linspace(lo, hi, 40001, dtype=_F64),
                      lo + torch.logspace(-8, math.log10(max(hi - lo, 1e-8)), 4001, dtype=_F64)]).unique()
    v = T(grid)
    d = (v[1:] - v[:-1]).abs()
    if d.numel() < 5:
        return ()
    neigh = torch.maximum(torch.cat([d[:1], d[:-1]]), torch.cat([d[1:], d[-1:]]))
    scale = max(float(v.abs().max()), 1e-300)
    cand = torch.nonzero((d > 20 * neigh) & (d > 1e-9 * scale)).flatten().tolist()
    out = []
    for k in cand[:50]:
        a, b = float(grid[k]), float(grid[k + 1])
        ta, tb = float(v[k]), float(v[k + 1])
        for _ in range(80):
            mid = 0.5 * (a + b)
            if mid <= a or mid >= b:
                break
            tm = float(T(torch.tensor([mid], dtype=_F64))[0])
            if abs(tm - ta) <= abs(tm - tb):
                a, ta = mid, tm
            else:
                b, tb = mid, tm
        out.append(0.5 * (a + b))
    return tuple(out)


def _evaluate(T: Callable, y: torch.Tensor) -> torch.Tensor:
    z = T(y)
    if not isinstance(z, torch.Tensor) or z.shape != y.shape:
        raise ValueError("a preprocessing callable must map a tensor ŷ to a tensor of the same shape")
    z = z.to(_F64)
    if not torch.isfinite(z).all():
        raise ValueError("the preprocessing returned NaN or inf on the support of ŷ; make T finite "
                         "(e.g. floor small intensities as phasetorch.init.preprocessing does)")
    return z


def _prep(preprocessing, delta: float, field: str, noise: float) -> _Prep:
    if isinstance(preprocessing, str):
        if preprocessing not in pp.NAMES:
            raise ValueError(f"unknown preprocessing {preprocessing!r}; choose one of {', '.join(pp.NAMES)} "
                             f"or pass a callable T(ŷ)")
        if preprocessing == "identity":
            raise ValueError(
                "preprocessing 'identity' (T = ŷ) is unbounded, so it has no outlier in the proportional limit: "
                "the top eigenvector of D localises on the rows with the largest y and the cosine → 0 slowly "
                "with the dimension (ρ² ≈ 0.34 → 0.19 for n = 250 → 2000 at δ = 4). Use a bounded T such as "
                "'trimmed', 'clipped', 'mm' or 'optimal'")
        if preprocessing == "weighted":
            raise ValueError(
                "preprocessing 'weighted' (T = ŷ^{1/4} on the top 3/13 of ŷ) is unbounded, so the Lu–Li limit "
                "does not apply (the eigenvector localises as n → ∞, though very slowly). Use 'orthogonality' or "
                "a bounded callable, e.g. lambda y: y.clamp(0, c)**0.25 * (y >= rank_threshold(3/13))")
        if preprocessing == "orthogonality":
            t = rank_threshold(pp.ORTHOGONALITY_FRACTION, field, noise)
            return _Prep(lambda y, t=t: (y >= t).to(y.dtype), 1.0, (t,), False)
        T = pp.elementwise(preprocessing, delta, field)
        if preprocessing == "optimal":
            return _Prep(T, 1.0, (pp.optimal_floor(field),), False)
        if preprocessing == "trimmed":
            return _Prep(T, pp.TRIM_ALPHA ** 2, (pp.TRIM_ALPHA ** 2,), False)
        if preprocessing == "clipped":
            return _Prep(T, pp.CLIP_LEVEL, (pp.CLIP_LEVEL,), False)
        if preprocessing == "mm":
            s = math.sqrt(delta)
            breaks = (0.0,) if s >= 1 else (0.0, 1 - s + 1e-3)
            return _Prep(T, 1.0, breaks, True)
        raise ValueError(f"preprocessing {preprocessing!r} has no asymptotic theory here")  # pragma: no cover
    if not callable(preprocessing):
        raise ValueError(f"preprocessing must be a name ({', '.join(pp.NAMES)}) or a callable T(ŷ), "
                         f"got {type(preprocessing).__name__}")
    T = preprocessing
    law = signal_law(field, noise)
    lo, hi = float(law.y.min()), float(law.y.max())
    breaks = _jumps(lambda y: _evaluate(T, y), lo, hi)
    far = _evaluate(T, torch.tensor([1e4, 1e8, 1e12], dtype=_F64))
    if far[2] > far[1] + 1 and far[1] > far[0] + 1:
        raise ValueError("the preprocessing callable is unbounded above (T(1e12) ≫ T(1e8) ≫ T(1e4)); the "
                         "Lu–Li limit needs sup T < ∞ (an unbounded T localises the eigenvector). Clip it")
    grid = torch.cat([law.y, torch.linspace(lo, hi, 20001, dtype=_F64)])
    z_max = max(float(_evaluate(T, grid).max()), float(far.max()))
    return _Prep(T, z_max, breaks, False)


# ---------------------------------------------------------------------------------------------
# The Lu–Li formulas


@dataclass(frozen=True)
class SpectralLimits:
    r"""Proportional-limit description of the spectral estimator (see the module docstring).

    Attributes
    ----------
    delta : δ = m/n.
    lam_star : λ*, the largest root of δE[(|S|²−1)τ(Y)] = 1 on (z_max, ∞) — an auxiliary root, not
        the eigenvalue; ``nan`` when there is none (then ρ = 0).
    rho, rho2 : limiting cosine |⟨v̂, x*⟩| and its square (0 below the weak-recovery threshold).
    eigenvalue : limit of the top eigenvalue λ₁(D) = ζ_δ(λ*) (the bulk edge ψ_δ(λ̄) below threshold).
    T : the preprocessing as a function of ŷ (tensor → tensor).
    tau : τ(ŷ) = T(ŷ)/(λ* − T(ŷ)) (tensor → tensor; ``None`` when λ* does not exist).
    field, noise, preprocessing : the inputs.
    lam_bar : argmin of ψ_δ on (z_max, ∞) (= z_max when ψ_δ increases there).
    z_max : sup T over the support of ŷ.
    dpsi : ψ'_δ(λ*) (> 0 exactly above the weak-recovery threshold; ``nan`` without λ*).
    """

    delta: float
    lam_star: float
    rho: float
    rho2: float
    eigenvalue: float
    T: Callable[[torch.Tensor], torch.Tensor] = dc_field(repr=False)
    tau: Optional[Callable[[torch.Tensor], torch.Tensor]] = dc_field(repr=False)
    field: str = "real"
    noise: float = 0.0
    preprocessing: object = "optimal"
    lam_bar: float = math.nan
    z_max: float = math.nan
    dpsi: float = math.nan

    @property
    def recoverable(self) -> bool:
        """True above the weak-recovery threshold (ρ > 0)."""
        return self.rho > 0


class _Problem:
    """Expectations of the Lu–Li formulas for one (δ, T, field, noise)."""

    def __init__(self, delta: float, prep: _Prep, field: str, noise: float, link=None):
        self.delta = delta
        self.prep = prep
        law = signal_law(field, noise, prep.breaks) if _is_intensity(link) else link_law(link, field)
        self.s2, self.w = law.s2, law.w
        self.z = _evaluate(prep.T, law.y)
        self.z_max = max(prep.z_max, float(self.z.max()))
        self.scale = max(1.0, abs(self.z_max))

    def E(self, v: torch.Tensor) -> float:
        return float((self.w * v).sum())

    def lam(self, u: float) -> float:  # λ = z_max + scale·e^u (log distance to the edge)
        return self.z_max + self.scale * math.exp(u)

    def gap(self, lam: float) -> torch.Tensor:
        g = lam - self.z
        return g.clamp(min=1e-300)

    def h(self, lam: float) -> float:
        return self.delta * self.E((self.s2 - 1) * self.z / self.gap(lam)) - 1.0

    def dpsi(self, lam: float) -> float:
        return 1 / self.delta - self.E(self.z.square() / self.gap(lam).square())

    def dphi(self, lam: float) -> float:
        return -self.E(self.z.square() * self.s2 / self.gap(lam).square())

    def psi(self, lam: float) -> float:
        return lam * (1 / self.delta + self.E(self.z / self.gap(lam)))

    _U = [float(u) for u in torch.linspace(math.log(1e-13), math.log(1e7), 161)]

    def lam_star(self) -> float:
        br = find_bracket(lambda u: self.h(self.lam(u)), self._U, last=True)
        if br is None:
            return math.nan
        u = brentq(lambda u: self.h(self.lam(u)), br[0], br[1], xtol=1e-13)
        return self.lam(u)

    def lam_bar(self) -> float:
        # ψ is convex on (z_max, ∞) (ψ'' = 2E[Z²/(λ−Z)³] > 0), ψ' → 1/δ > 0 at ∞
        if self.dpsi(self.lam(self._U[0])) >= 0:
            return self.z_max
        br = find_bracket(lambda u: self.dpsi(self.lam(u)), self._U, last=True)
        if br is None:
            return self.z_max
        return self.lam(brentq(lambda u: self.dpsi(self.lam(u)), br[0], br[1], xtol=1e-13))


def _is_intensity(link) -> bool:
    """True for the default link y = |s|² + σε (no link, or a model declaring ``intensity_link``)."""
    return link is None or bool(getattr(link, "intensity_link", False))


def _link_args(field: str, noise: float, link):
    """(field, noise, link) with a model's own field and noise (a contradiction is a ValueError)."""
    if link is None:
        return field, noise, None
    mf = getattr(link, "field", None)
    if mf is not None:
        field = mf
    mn = getattr(link, "noise", None)
    if mn is not None:
        noise = float(mn)
    if not _is_intensity(link) and not callable(getattr(link, "link", link)):
        raise ValueError(f"link must be a SingleIndexModel or a callable f(s, eps), got {type(link).__name__}")
    return field, noise, link


def _limits(delta: float, preprocessing, field: str, noise: float, link=None) -> SpectralLimits:
    prep = _prep(preprocessing, delta, field, noise) if _is_intensity(link) else _prep_link(preprocessing, delta,
                                                                                              field, link)
    pb = _Problem(delta, prep, field, noise, link)
    lam_star = pb.lam_star()
    lam_bar = pb.lam_bar()
    if math.isnan(lam_star):
        dpsi = math.nan
        rho2 = 0.0
        eig = pb.psi(max(lam_bar, pb.lam(pb._U[0])))
        tau = None
    else:
        dpsi = pb.dpsi(lam_star)
        rho2 = dpsi / (dpsi - pb.dphi(lam_star)) if dpsi > 0 else 0.0
        eig = pb.psi(max(lam_star, lam_bar))
        T = prep.T
        tau = lambda y, T=T, ls=lam_star: T(y) / (ls - T(y))
    rho2 = min(max(rho2, 0.0), 1.0)
    return SpectralLimits(delta=delta, lam_star=lam_star, rho=math.sqrt(rho2), rho2=rho2, eigenvalue=eig,
                          T=prep.T, tau=tau, field=field, noise=noise, preprocessing=preprocessing,
                          lam_bar=lam_bar, z_max=pb.z_max, dpsi=dpsi)


def _prep_link(preprocessing, delta: float, field: str, link) -> _Prep:
    """The preprocessing on the law of a general link: a name's elementwise T (bounded ones) or a callable."""
    if isinstance(preprocessing, str):
        if preprocessing not in ("optimal", "mm", "trimmed", "clipped"):
            raise ValueError(f"preprocessing {preprocessing!r} has no asymptotic theory for a general link; use "
                             "'optimal', 'mm', 'trimmed', 'clipped' or a bounded callable T(ŷ)")
        T = pp.elementwise(preprocessing, delta, field)
    elif callable(preprocessing):
        T = preprocessing
    else:
        raise ValueError(f"preprocessing must be a name or a callable T(ŷ), got {type(preprocessing).__name__}")
    law = link_law(link, field)
    z = _evaluate(T, law.y)
    return _Prep(T, float(z.max()), (), isinstance(preprocessing, str) and preprocessing == "mm")


def spectral_limits(delta: float, preprocessing: Union[str, Callable] = "optimal", field: str = "real",
                    noise: float = 0.0, link=None) -> SpectralLimits:
    r"""λ*, ρ, the top-eigenvalue limit and τ of the spectral estimator at δ = m/n.

    Parameters
    ----------
    delta : δ = m/n (> 0).
    preprocessing : a name of :mod:`phasetorch.init.preprocessing` (except the unbounded ``identity`` and
        ``weighted``) or a bounded callable T(ŷ).
    field : ``"real"`` (S ~ N(0,1), Y = S²) or ``"complex"`` (|S|² ~ Exp(1)).
    noise : σ of additive Gaussian noise on the intensities, Y = |S|² + σε.
    link : a :class:`~phasetorch.theory.SingleIndexModel` (its link, field and noise are used) or a
        callable f(s, ε) for any other link y = f(S, ε) (:func:`link_law`; complex links must be
        circularly symmetric); None: the intensity link.

    Example: ``spectral_limits(4.0).rho2`` → 0.92449 (real, ``optimal``), λ* = 13.2140 (13.2433 for the unfloored 1 − 1/ŷ).
    """
    field, noise, link = _link_args(field, noise, link)
    return _limits(_check_delta(delta), preprocessing, _check_field(field), _check_noise(noise), link)


def spectral_overlap(delta, preprocessing: Union[str, Callable] = "optimal", field: str = "real",
                     noise: float = 0.0, link=None):
    r"""Asymptotic cosine ρ = lim |⟨v̂, x*⟩|/‖x*‖ of the spectral estimator (0 below threshold).

    ``delta`` a number → float; array-like → float64 tensor of the same shape. ``link``: as in
    :func:`spectral_limits` (a model or a callable f(s, ε)).
    """
    field, noise, link = _link_args(field, noise, link)
    field, noise = _check_field(field), _check_noise(noise)
    if isinstance(delta, (int, float)):
        return spectral_limits(delta, preprocessing, field, noise, link).rho
    try:
        d = torch.as_tensor(delta, dtype=_F64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"delta must be a number δ = m/n > 0 or an array of them, got {delta!r}") from None
    flat = [spectral_limits(float(v), preprocessing, field, noise, link).rho for v in d.reshape(-1)]
    return torch.tensor(flat, dtype=_F64).reshape(d.shape)


def spectral_threshold(preprocessing: Union[str, Callable] = "optimal", field: str = "real",
                       noise: float = 0.0, *, delta_min: float = 1e-2, delta_max: float = 1e3, link=None) -> float:
    r"""Weak-recovery threshold δ_c = inf{δ : ψ'_δ(λ*_δ) > 0} of a preprocessing.

    Computed from the formula: F(δ) = ψ'_δ(λ*_δ) (−1 when λ*_δ does not exist) is scanned on a
    geometric grid of δ ∈ [delta_min, delta_max] and the first sign change from ≤ 0 to > 0 is
    refined by Brent's method. ``optimal``: 1/2 (real), 1 (complex); ``mm``: 1/2 (real).
    ``link``: as in :func:`spectral_limits`. Raises ValueError when no threshold lies in the range.
    """
    field, noise, link = _link_args(field, noise, link)
    field = _check_field(field)
    noise = _check_noise(noise)
    delta_min = check_number(delta_min, "delta_min", 0.0, strict=True)
    delta_max = check_number(delta_max, f"delta_max (above delta_min = {delta_min:g}; raise delta_max or "
                                        f"lower delta_min)", delta_min, strict=True)

    def make(delta: float) -> _Prep:
        if _is_intensity(link):
            return _prep(preprocessing, delta, field, noise)
        return _prep_link(preprocessing, delta, field, link)

    fixed = None if (isinstance(preprocessing, str) and preprocessing == "mm") else make(1.0)

    def F(delta: float) -> float:
        prep = fixed if fixed is not None else make(delta)
        pb = _Problem(delta, prep, field, noise, link)
        ls = pb.lam_star()
        if math.isnan(ls):
            return -1.0
        return pb.dpsi(ls)

    grid = [float(v) for v in torch.logspace(math.log10(delta_min), math.log10(delta_max), 61, dtype=_F64)]
    vals = [F(d) for d in grid]
    for k in range(1, len(grid)):
        if vals[k - 1] <= 0 < vals[k]:
            return brentq(F, grid[k - 1], grid[k], xtol=1e-10, rtol=1e-12)
    if vals[0] > 0:
        raise ValueError(f"the spectral estimator is informative already at delta_min = {delta_min}; lower it")
    raise ValueError(f"no weak-recovery threshold in [{delta_min}, {delta_max}] for this preprocessing")
