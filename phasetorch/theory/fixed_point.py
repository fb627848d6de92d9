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

**Complex field and other models** (docs/theory.md): the same system with S, Z ~ CN(0, 1), the complex
prox (radial for a phase-invariant loss: no jump line), χ_g the holomorphic part of E ∂g/∂U (the mean
of the two eigenvalue terms h/(1 + κh) of the Hessian of ℓ in ℝ²), E Re[S̄g] = −λm, q = m² + δκ²E|g|².
Complex, λ = 0, noiseless, δ > 2: exact recovery with δκ E[|S|²/(1 + 2κ|S|²)] = 1 (|S|² ~ Exp(1)).
``model=`` takes any SingleIndexModel with a prox (or a convex real loss: Newton).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Callable, Optional, Union

import torch

from ..tensors import check_int, check_memory, check_number
from .quadrature import composite_legendre, gauss_hermite, gauss_laguerre
from .model import SingleIndexModel, model_prox, phase_retrieval, prox_quartic, resolve_model
from .spectral import spectral_overlap

__all__ = ["FixedPoint", "fixed_point", "prox_quartic", "phase_retrieval"]

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
    model: str = "phase_retrieval"

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


class _Quadrature:
    """Nodes for E over (S, Z[, ε]) in the real field: Gauss–Hermite in S (and ε); in Z a composite
    Gauss–Legendre rule on [−L, L] split at the line U = mS + sd·Z = 0, where the global minimiser of the
    prox jumps between its two wells (κY > 1), so each piece is smooth. Y = f(S, ε) (the model's link)."""

    L = 9.0

    def __init__(self, nodes: int, noise: float, noise_nodes: int, z_panels: int, link=None):
        s, ws = gauss_hermite(nodes)
        if noise > 0 or link is not None:
            e, we = gauss_hermite(noise_nodes)
            self.S = s[:, None].expand(-1, noise_nodes).reshape(-1)
            E = e[None, :].expand(nodes, -1).reshape(-1)
            self.Y = (s[:, None] ** 2 + noise * e[None, :]).reshape(-1) if link is None else link(self.S, E).to(_F64)
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


class _ComplexQuadrature:
    r"""Nodes for E over (S, Z[, ε]) in the complex field, S, Z ~ CN(0, 1) independent.

    Rotation invariance lets S = √E be real ≥ 0 with E = |S|² ~ Exp(1) (Gauss–Laguerre, ``nodes``);
    Z = (z₁ + i z₂)/√2 by a 2-D Gauss–Hermite product (``z_nodes``²); ε by Gauss–Hermite when σ > 0.
    The complex prox r = ρ(|U|) U/|U| is continuous except at the single point U = 0, so a product rule
    converges (no jump line as in the real field). Y = f(S, ε) (the model's link, circularly symmetric).
    """

    def __init__(self, nodes: int, noise: float, noise_nodes: int, z_nodes: int, link=None):
        x, wx = gauss_laguerre(min(nodes, 150))
        z, wz = gauss_hermite(z_nodes)
        Z = torch.complex(z[:, None].expand(-1, z_nodes), z[None, :].expand(z_nodes, -1)).reshape(-1) * math.sqrt(0.5)
        WZ = (wz[:, None] * wz[None, :]).reshape(-1)
        s = torch.complex(x.sqrt(), torch.zeros_like(x))
        if noise > 0 or link is not None:
            e, we = gauss_hermite(noise_nodes)
            S = s[:, None].expand(-1, noise_nodes).reshape(-1)
            E = e[None, :].expand(x.numel(), -1).reshape(-1)
            W = (wx[:, None] * we[None, :]).reshape(-1)
            Y = (S.real ** 2 + noise * E) if link is None else link(S, E).to(_F64)
        else:
            S, W, Y = s, wx, x
        self.S, self.Y, self.WS, self.Z, self.WZ = S[:, None], Y[:, None], W[:, None], Z[None, :], WZ[None, :]

    def grid(self, m: float, sd: float):
        return self.S, self.Z, self.Y, self.WS * self.WZ / (self.WS.sum() * self.WZ.sum())


def fixed_point(delta: float, *, l2: float, noise: Optional[float] = None,
                preprocessing: Union[str, Callable] = "optimal", field: Optional[str] = None,
                model: Optional[SingleIndexModel] = None,
                start: Optional[float] = None, damping: float = 0.7, memory: int = 3, tol: float = 1e-12,
                max_iter: int = 5000, nodes: int = 120, noise_nodes: int = 8,
                z_panels: int = 12, z_nodes: int = 48) -> FixedPoint:
    r"""Solve the TTI fixed point (m, q, κ) of GD with ridge ``l2`` = λ at δ = ``delta``.

    Parameters
    ----------
    delta : δ = m/n. l2 : λ ≥ 0 (keyword). noise : σ of y = |Ax*|² + σε (default model).
    preprocessing : the spectral initialization whose cosine ρ starts the iteration (``start``
        overrides it with an explicit initial m; required for a model without a spectral start).
    field : ``"real"`` or ``"complex"`` (default model: phase retrieval with the intensity loss).
        Complex (docs/theory.md): S, Z ~ CN(0, 1), r = prox_{κℓ}(U) ∈ ℂ, χ_g = E[½ Σ_± h_±/(1 + κh_±)]
        with h_± = g_r ± |g_r̄| the eigenvalues of the Hessian of ℓ in ℝ², E Re[S̄g] = −λm,
        q = m² + δκ²E|g|².
    model : a :class:`~phasetorch.theory.SingleIndexModel` (its field, noise, link, loss and prox).
    damping, memory : mixing weight and history length of the Anderson-accelerated iteration.
    tol : stop when the update of (m, q, κ) is below tol.
    nodes, noise_nodes : Gauss–Hermite points for S (complex: Gauss–Laguerre for |S|², ≤ 150) and for ε.
    z_panels : real field: 8-point Gauss–Legendre panels on each side of the jump line U = 0 for Z.
    z_nodes : complex field: Gauss–Hermite points per real component of Z (a z_nodes² product rule).

    Returns a :class:`FixedPoint`; ``converged`` is False when the iteration did not settle or
    λ + χ_g ≤ 0 (no stable fixed point: GD with that λ diverges or the curvature is negative).
    """
    delta = check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True)
    lam = check_number(l2, "l2 (the ridge λ ≥ 0)", 0.0)
    if noise is not None:
        check_number(noise, "noise (σ ≥ 0 of y = |Ax*|² + σε)", 0.0)
    model = resolve_model(model, field, noise)
    noise, field = model.noise, model.field
    damping = check_number(damping, "damping (the mixing weight, in (0, 1])", 0.0, strict=True, high=1.0)
    memory = check_int(memory, "memory (Anderson history length)", 0)
    tol = check_number(tol, "tol", 0.0)
    max_iter = check_int(max_iter, "max_iter", 1)
    nodes = check_int(nodes, "nodes (Gauss–Hermite points for S)", 1)
    noise_nodes = check_int(noise_nodes, "noise_nodes (Gauss–Hermite points for ε)", 1)
    z_panels = check_int(z_panels, "z_panels (Gauss–Legendre panels per side of the jump line, e.g. 12)", 1)
    z_nodes = check_int(z_nodes, "z_nodes (Gauss–Hermite points per component of Z, complex field)", 2)
    if start is None:
        if model.mean_y <= 0:
            raise ValueError(f"model {model.name!r} has no spectral start (E y ≤ 0): give start= (the initial overlap m)")
        m = float(spectral_overlap(delta, preprocessing, field, noise, link=model))
    else:
        m = check_number(start, "start (the initial overlap m)")
    q, kappa = 1.0, 0.3
    m0 = m
    link = None if model.intensity_link else model.link
    ne = noise_nodes if (noise or 0) > 0 else 1
    points = nodes * ne * (z_nodes * z_nodes if model.is_complex else 16 * z_panels)
    check_memory(10 * 8 * points + 8 * (nodes + ne) ** 2, f"the quadrature grid ({points:.3g} points)",
                 "use fewer nodes / noise_nodes / z_panels / z_nodes (the defaults are accurate to ~1e-10)")
    if model.is_complex:
        qd = _ComplexQuadrature(nodes, noise, noise_nodes, z_nodes, link)
    else:
        qd = _Quadrature(nodes, noise, noise_nodes, z_panels, link)

    def G(x: torch.Tensor):
        m, q, kappa = (float(v) for v in x)
        mo = _moments(qd, model, m, q, kappa)
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
    mo = _moments(qd, model, m, q, kappa)
    chi = mo["chi"]
    loss = mo["ell"] + 0.5 * lam * q
    stat = mo["rg"] + lam * q
    return FixedPoint(m=abs(m), q=q, kappa=kappa, chi_g=chi, loss=loss, overlap=abs(m) / math.sqrt(q) if q > 0 else 0.0,
                      rel_error=math.sqrt(max(q - 2 * abs(m) + 1, 0.0)), converged=converged, iterations=it,
                      residual=residual, stationarity=stat, delta=delta, l2=lam, noise=noise, field=field,
                      preprocessing=preprocessing, start=m0, model=model.name)


def _moments(qd, model: SingleIndexModel, m: float, q: float, kappa: float) -> dict:
    """χ_g (module docstring; complex: the holomorphic part), E[Sg], E[g²], E[rg], E ℓ at r = prox_{κℓ}(U)."""
    sd = math.sqrt(max(q - m * m, 0.0))
    S, Z, Y, W = qd.grid(m, sd)
    U = m * S + sd * Z
    r = model_prox(model, U, Y, kappa)
    g = model.g(r, Y)
    gp, gpb = model.linearise(r, Y)

    def E(v):
        return float((W * v).sum())

    if model.is_complex:
        gp = gp.real if gp.is_complex() else gp
        hp, hm = gp + gpb.abs(), gp - gpb.abs()
        chi = 0.5 * (hp / (1 + kappa * hp) + hm / (1 + kappa * hm))
        return {"chi": E(chi), "Sg": E((S.conj() * g).real), "g2": E(g.abs().square()),
                "rg": E((r.conj() * g).real), "ell": E(model.loss(r, Y))}
    return {"chi": E(gp / (1 + kappa * gp)), "Sg": E(S * g), "g2": E(g * g), "rg": E(r * g),
            "ell": E(model.loss(r, Y))}


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
