r"""Long-time (time-translation-invariant) fixed point of gradient descent on real phase retrieval.

Model (theory.md §1, §5; Chen & Shen 2025, "Learning single index model with gradient descent:
spectral initialization and precise asymptotics", arXiv 2509.23527): a_i ~ N(0, I_n), ‖x*‖ = 1,
δ = m/n, S = ⟨a, x*⟩ ~ N(0,1), Y = S² + σε, loss L(x) = (1/m) Σ ℓ(⟨a_i,x⟩; y_i) + (λ/2)‖x‖² with
ℓ(r; y) = (r² − y)²/4, g = ∂_rℓ = (r² − y) r, g' = 3r² − y. When spectral-initialised GD converges
(the TTI regime) its limit x_∞ has m = ⟨x_∞, x*⟩, q = ‖x_∞‖² given by the scalar system

    U = m S + √(q − m²) Z,  Z ~ N(0,1) ⟂ S,
    r = prox_{κℓ(·;Y)}(U) = argmin_r κ ℓ(r; Y) + (r − U)²/2   (root of κr³ + (1 − κY) r − U = 0;
                                                               the global minimiser when 3 are real)
    χ_g = E[g'(r)/(1 + κ g'(r))],   κ = 1/(δ (λ + χ_g)),
    E[S g(r; Y)] = −λ m,            q = m² + δ κ² E[g(r; Y)²].

(κ = −Σ_k R_x(k) is the integrated response; κ = Tr[∇²L(x_∞)]⁻¹/(δn).) Solved by damped,
Anderson-accelerated iteration on (m, q, κ): with μ = E[Sg] − mχ_g (the Stein decomposition of E[Sg]),
κ ← 1/(δ(λ+χ_g)), m ← −μ/(λ+χ_g), q ← m² + δκ²E[g²], from (ρ, 1, 0.3) where ρ is the spectral
cosine of the chosen preprocessing (the fixed point does not depend on the preprocessing except
through the basin the start lies in: below the spectral threshold ρ = 0 and m = 0 is the fixed point).
Expectations by quadrature: Gauss–Hermite over S (``nodes`` points; with noise a ``noise_nodes``-point
rule over ε as a second factor) and, for each S, composite Gauss–Legendre over Z split at the line
U = 0 where the prox jumps between its two wells (so the rule stays accurate when κY > 1 has mass
near U = 0, e.g. below the spectral threshold or for δ < 1).

Checks: E[r g] = −λq (stationarity ⟨x, ∇L⟩ = 0; reported as ``stationarity`` = E[rg] + λq, exactly 0
only when no probability sits on the prox's jump line, see :attr:`FixedPoint.consistent`);
λ = 0, noiseless, δ > 1: exact recovery m = q = 1 with δκ E[2S²/(1 + 2κS²)] = 1 (κ = 0.26469 at δ = 4).
Case A (δ = 4, λ = 0.1; theory.md §7): m = 0.95286, q = 0.91202, training loss 0.04771, κ = 0.24258.
Only the real field is derived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable, Optional, Union

import torch

from ..tensors import check_int, check_number
from .quadrature import composite_legendre, gauss_hermite
from .spectral import spectral_overlap

__all__ = ["FixedPoint", "fixed_point", "prox_quartic"]

_F64 = torch.float64


@dataclass(frozen=True)
class FixedPoint:
    """Long-time limit of GD (see the module docstring). ``loss`` is the training loss
    E ℓ(r; Y) + (λ/2) q; ``overlap`` = |m|/√q; ``rel_error`` = √(q − 2|m| + 1) (‖x*‖ = 1);
    ``stationarity`` = E[r g] + λq (≈ 0 at a true fixed point); ``residual`` the last update size."""

    m: float
    q: float
    kappa: float
    chi_g: float
    loss: float
    overlap: float
    rel_error: float
    converged: bool
    iterations: int
    residual: float
    stationarity: float
    delta: float
    l2: float
    noise: float
    field: str = "real"
    preprocessing: object = "optimal"
    start: float = math.nan

    @property
    def consistent(self) -> bool:
        """|E[rg] + λq| ≤ 1e-6: the stationarity identity holds. It fails when the prox's jump line
        U = 0 carries mass (two wells with κY > 1 near U = 0): GD then settles each residual in the
        well its history selects, not the global minimiser, and the TTI description is approximate."""
        return abs(self.stationarity) <= 1e-6

    def to_dict(self) -> dict:
        d = asdict(self)
        if not isinstance(d["preprocessing"], str):
            d["preprocessing"] = repr(d["preprocessing"])
        return d


def _cbrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs().pow(1.0 / 3.0)


def prox_quartic(u: torch.Tensor, y: torch.Tensor, kappa: float, newton: int = 3) -> torch.Tensor:
    r"""argmin_r κ(r² − y)²/4 + (r − u)²/2, elementwise (float64).

    Stationarity is the cubic κr³ + (1 − κy) r − u = 0. One real root (Cardano) or three
    (trigonometric form; the outer two are the local minima, the one with the smaller objective is
    returned); then ``newton`` Newton steps polish the root.
    """
    if kappa <= 0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    p = (1 - kappa * y) / kappa
    qq = -u / kappa
    disc = (qq / 2) ** 2 + (p / 3) ** 3
    one = disc > 0
    sq = disc.clamp(min=0).sqrt()
    r1 = _cbrt(-qq / 2 + sq) + _cbrt(-qq / 2 - sq)
    # three real roots (p < 0 there)
    pn = (-p / 3).clamp(min=1e-300)
    amp = 2 * pn.sqrt()
    cosarg = ((3 * qq / (2 * p.clamp(max=-1e-300))) * (-3 / p.clamp(max=-1e-300)).sqrt()).clamp(-1, 1)
    theta = torch.arccos(cosarg) / 3
    ra = amp * torch.cos(theta)
    rb = amp * torch.cos(theta - 4 * math.pi / 3)

    def obj(r):
        return kappa * (r * r - y) ** 2 / 4 + (r - u) ** 2 / 2

    r3 = torch.where(obj(ra) <= obj(rb), ra, rb)
    r = torch.where(one, r1, r3)
    for _ in range(newton):
        f = kappa * r ** 3 + (1 - kappa * y) * r - u
        fp = 3 * kappa * r * r + 1 - kappa * y
        step = torch.where(fp > 1e-12, f / fp.clamp(min=1e-12), torch.zeros_like(f))
        r = r - step
    return r


class _Quadrature:
    """Nodes for E over (S, Z[, ε]): Gauss–Hermite in S (and ε); in Z a composite Gauss–Legendre
    rule on [−L, L] split at the line U = mS + sd·Z = 0, where the global minimiser of the prox
    jumps between its two wells (κY > 1), so each piece is smooth."""

    L = 9.0

    def __init__(self, nodes: int, noise: float, noise_nodes: int, z_panels: int):
        s, ws = gauss_hermite(nodes)
        if noise > 0:
            e, we = gauss_hermite(noise_nodes)
            self.S = s[:, None].expand(-1, noise_nodes).reshape(-1)
            self.Y = (s[:, None] ** 2 + noise * e[None, :]).reshape(-1)
            self.WS = (ws[:, None] * we[None, :]).reshape(-1)
        else:
            self.S, self.Y, self.WS = s, s * s, ws
        # rule on [0, 1], mapped onto each of the two pieces of [−L, L]
        self.t, self.wt = composite_legendre([k / z_panels for k in range(z_panels + 1)], order=8)

    def grid(self, m: float, sd: float):
        """(S, Z, Y, W) as (points, nodes) tensors for the current (m, √(q − m²))."""
        L = self.L
        if sd > 0:
            z0 = (-m * self.S / sd).clamp(-L, L)[:, None]
        else:
            z0 = torch.zeros_like(self.S)[:, None]
        t, wt = self.t[None, :], self.wt[None, :]
        Z = torch.cat([-L + (z0 + L) * t, z0 + (L - z0) * t], 1)
        wz = torch.cat([(z0 + L) * wt, (L - z0) * wt], 1) * torch.exp(-0.5 * Z * Z) / math.sqrt(2 * math.pi)
        wz = wz / wz.sum(1, keepdim=True)
        return self.S[:, None], Z, self.Y[:, None], self.WS[:, None] * wz


def fixed_point(delta: float, *, l2: float, noise: float = 0.0,
                preprocessing: Union[str, Callable] = "optimal", field: str = "real",
                start: Optional[float] = None, damping: float = 0.7, memory: int = 3, tol: float = 1e-12,
                max_iter: int = 5000, nodes: int = 120, noise_nodes: int = 8,
                z_panels: int = 12) -> FixedPoint:
    r"""Solve the TTI fixed point (m, q, κ) of GD with ridge ``l2`` = λ at δ = ``delta``.

    Parameters
    ----------
    delta : δ = m/n. l2 : λ ≥ 0 (keyword). noise : σ of y = |Ax*|² + σε.
    preprocessing, field : the spectral initialization whose cosine ρ starts the iteration
        (``start`` overrides it with an explicit initial m). Only ``field="real"`` is derived.
    damping, memory : mixing weight and history length of the Anderson-accelerated iteration.
    tol : stop when the update of (m, q, κ) is below tol.
    nodes, noise_nodes : Gauss–Hermite points for S and for ε. z_panels : 8-point Gauss–Legendre
        panels on each side of the jump line U = 0 for Z (2·8·z_panels Z-points per S-point).

    Returns a :class:`FixedPoint`; ``converged`` is False when the iteration did not settle or
    λ + χ_g ≤ 0 (no stable fixed point: GD with that λ diverges or the curvature is negative).
    """
    delta = check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True)
    lam = check_number(l2, "l2 (the ridge λ ≥ 0)", 0.0)
    noise = check_number(noise, "noise (σ ≥ 0 of y = |Ax*|² + σε)", 0.0)
    if field != "real":
        raise ValueError("the fixed point is derived for the real field only (field='real'); the complex "
                         "DMFT (holomorphic/antiholomorphic responses) is not implemented")
    damping = check_number(damping, "damping (the mixing weight, in (0, 1])", 0.0, strict=True, high=1.0)
    memory = check_int(memory, "memory (Anderson history length)", 0)
    tol = check_number(tol, "tol", 0.0)
    max_iter = check_int(max_iter, "max_iter", 1)
    nodes = check_int(nodes, "nodes (Gauss–Hermite points for S)", 1)
    noise_nodes = check_int(noise_nodes, "noise_nodes (Gauss–Hermite points for ε)", 1)
    z_panels = check_int(z_panels, "z_panels (Gauss–Legendre panels per side of the jump line, e.g. 12)", 1)
    m = float(spectral_overlap(delta, preprocessing, field, noise)) if start is None else \
        check_number(start, "start (the initial overlap m)")
    q, kappa = 1.0, 0.3
    m0 = m
    qd = _Quadrature(nodes, noise, noise_nodes, z_panels)

    def G(x: torch.Tensor):
        m, q, kappa = (float(v) for v in x)
        mo = _moments(qd, m, q, kappa)
        chi = mo["chi"]
        if not math.isfinite(chi) or lam + chi <= 0:
            return None
        k_new = 1 / (delta * (lam + chi))
        m_new = -(mo["Sg"] - m * chi) / (lam + chi)
        q_new = m_new * m_new + delta * k_new * k_new * mo["g2"]
        return torch.tensor([m_new, q_new, k_new], dtype=_F64)

    x, converged, residual, it = _anderson(G, torch.tensor([m, q, kappa], dtype=_F64), damping, memory, tol,
                                           max_iter)
    m, q, kappa = (float(v) for v in x)
    q = max(q, m * m)
    mo = _moments(qd, m, q, kappa)
    chi = mo["chi"]
    loss = mo["ell"] + 0.5 * lam * q
    stat = mo["rg"] + lam * q
    return FixedPoint(m=abs(m), q=q, kappa=kappa, chi_g=chi, loss=loss, overlap=abs(m) / math.sqrt(q) if q > 0 else 0.0,
                      rel_error=math.sqrt(max(q - 2 * abs(m) + 1, 0.0)), converged=converged, iterations=it,
                      residual=residual, stationarity=stat, delta=delta, l2=lam, noise=noise, field=field,
                      preprocessing=preprocessing, start=m0)


def _moments(qd: _Quadrature, m: float, q: float, kappa: float) -> dict:
    """χ_g = E[g'/(1 + κg')], E[Sg], E[g²], E[rg], E ℓ at r = prox_{κℓ}(mS + √(q − m²) Z)."""
    S, Z, Y, W = qd.grid(m, math.sqrt(max(q - m * m, 0.0)))
    r = prox_quartic(m * S + math.sqrt(max(q - m * m, 0.0)) * Z, Y, kappa)
    g = (r * r - Y) * r
    gp = 3 * r * r - Y

    def E(v):
        return float((W * v).sum())

    return {"chi": E(gp / (1 + kappa * gp)), "Sg": E(S * g), "g2": E(g * g), "rg": E(r * g),
            "ell": E((r * r - Y) ** 2 / 4)}


def _anderson(G: Callable[[torch.Tensor], Optional[torch.Tensor]], x: torch.Tensor, damping: float, memory: int,
              tol: float, max_iter: int):
    """Fixed point of G on (m, q, κ): (x, converged, last residual, iterations).

    Anderson-accelerated damped iteration (type II; Walker & Ni 2011), safeguarded: a proposal
    outside {q ≥ m², κ > 0} or a residual growth restarts from a plain damped step; G returning
    None (no stable fixed point) stops the iteration unconverged.
    """
    hist_x, hist_f = [], []
    converged = False
    residual = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        gx = G(x)
        if gx is None:
            break
        f = gx - x
        new_res = float(f.abs().max())
        if new_res > 10 * residual and hist_x:
            hist_x, hist_f = [], []
        residual = new_res
        if residual < tol:
            x = gx
            converged = True
            break
        hist_x.append(x.clone())
        hist_f.append(f.clone())
        hist_x, hist_f = hist_x[-(memory + 1):], hist_f[-(memory + 1):]
        step = x + damping * f
        if len(hist_x) > 1:
            dX = torch.stack([hist_x[k + 1] - hist_x[k] for k in range(len(hist_x) - 1)], 1)
            dF = torch.stack([hist_f[k + 1] - hist_f[k] for k in range(len(hist_f) - 1)], 1)
            gamma = torch.linalg.lstsq(dF, f[:, None], rcond=1e-12).solution[:, 0]
            cand = x + damping * f - (dX + damping * dF) @ gamma
            if torch.isfinite(cand).all() and cand[2] > 0 and cand[1] >= cand[0] ** 2 * (1 - 1e-12):
                step = cand
            else:
                hist_x, hist_f = hist_x[-1:], hist_f[-1:]
        step[1] = max(float(step[1]), float(step[0]) ** 2)
        step[2] = max(float(step[2]), 1e-12)
        x = step
    return x, converged, residual, it
