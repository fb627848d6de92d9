r"""Single-index models for the DMFT and the law of the sample side at the start of gradient descent.

A single-index model (theory.md §1, docs/theory.md): rows a_i ~ N(0, I_d) (real field) or CN(0, I_d)
(complex field, E|a_ij|² = 1), ‖x*‖ = 1, s_i = a_iᴴx* (~ N(0, 1), resp. CN(0, 1)), y_i = f(s_i, ε_i)
with ε_i ~ N(0, 1), and a per-sample loss ℓ(r; y) of r = a_iᴴx. Gradient descent on
L(x) = (1/n) Σ ℓ(a_iᴴx; y_i) + (λ/2)‖x‖² uses ∇L = (1/n) Σ g(r_i) a_i + λx with

    g = ∂ℓ/∂r (real field),     g = 2 ∂ℓ/∂r̄ (complex field: the conjugate Wirtinger derivative × 2,
                                              what PyTorch autograd returns for a real ℓ of complex r).

The DMFT needs the linearisation of g: real g' = ∂g/∂r; complex the two Wirtinger derivatives
g_r = ∂g/∂r and g_r̄ = ∂g/∂r̄ (δg = g_r δr + g_r̄ δr̄), ∂_y g, the link and its derivative along a
real direction of s (real: ∂f/∂s; complex: ∂f/∂Re s), and E y (the spectral preprocessing sees
ŷ = y/E y). Derivatives not given are taken by autograd (:func:`single_index_model`).

**Law at the start** (theory.md §2, §4; Lu & Li 2017; Mondelli & Montanari 2018). With
S, G ~ N(0, 1) (complex: CN(0, 1)) independent, ε ~ N(0, 1), Y = f(S, ε) and the start overlap ρ:

    P = ρ S + √(1 − ρ²) G,    τ(Y) = T(Ŷ)/(λ* − T(Ŷ)),    Ŷ = Y/E Y,

where λ* is the auxiliary root of δ E[(|S|² − 1) τ(Y)] = 1 (the tilt form of the spectral estimator).
The spectral start's residual is r₀ = c₀(1 + τ(Y)) P — not Gaussian given Y. A data-independent
(warm) start has τ ≡ 0. Anchors of the law (each → 1, resp. λ₁(D), as N → ∞):
ρ² + δE[τ²|P|²] = 1 (E|V̂|² = 1), δE[(|S|² − 1)τ] = 1 (the λ* equation), E[T(1 + τ)²|P|²] = λ₁(D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["SingleIndexModel", "single_index_model", "phase_retrieval", "amplitude_phase_retrieval",
           "linear_regression", "logistic_classification", "StartLaw", "start_law", "preprocessing_values",
           "spectral_tilt", "check_noise", "FIELDS", "STABILITY_RULES", "prox_quartic", "prox_newton", "model_prox",
           "resolve_model", "AMPLITUDE_EPS"]

FIELDS = ("real", "complex")
STABILITY_RULES = ("quartic", "quadratic", "lipschitz")
_Fn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SingleIndexModel:
    r"""A single-index model y = f(s, ε) with a per-sample loss ℓ(r; y) (module docstring).

    ``link(s, eps)`` → y (real), ``link_ds(s, eps)`` → ∂y/∂s along a real direction (real: ∂f/∂s;
    complex: ∂f/∂Re s), ``loss(r, y)`` → ℓ, ``g`` = ∂ℓ/∂r (complex: 2∂ℓ/∂r̄), ``g_r`` = ∂g/∂r
    (Wirtinger in the complex field), ``g_rbar`` = ∂g/∂r̄ (complex only; None for the real field),
    ``g_y`` = ∂g/∂y, ``mean_y`` = E y (the spectral preprocessing sees ŷ = y / E y; E y ≤ 0: no
    spectral start), ``noise`` = σ (the noise level of the link), ``field`` ``"real"`` or ``"complex"``,
    ``stability`` the step-size rule of :meth:`safe_step` (``"quartic"``, ``"quadratic"`` or
    ``"lipschitz"`` with ``curvature`` = sup g'), ``kind`` a short name of the loss family that
    :func:`phasetorch.theory.check_describes` matches against a log (``"intensity"``, ``"amplitude"``,
    or None for a model no library algorithm runs), ``smooth_link`` False when f jumps in s (then μ is
    taken in Stein form: a pathwise ∂f/∂s misses the jump), ``intensity_link`` True when
    f(s, ε) = |s|² + σε exactly (the spectral asymptotics then use their dedicated quadrature),
    ``algorithm`` the library preset whose constant-step run is this GD (``"wf"``: intensity loss,
    ``"af"``: amplitude loss; None: :func:`phasetorch.theory.simulate` runs its own GD loop), ``prox``
    (u, y, κ) ↦ argmin κℓ + |r − u|²/2 for the fixed point (None: Newton, real convex losses). Use :func:`single_index_model` to build one
    with derivatives taken by autograd.
    """

    name: str
    link: _Fn
    link_ds: _Fn
    loss: _Fn
    g: _Fn
    g_r: _Fn
    g_y: _Fn
    mean_y: float = 1.0
    noise: float = 0.0
    stability: str = "quartic"
    field: str = "real"
    g_rbar: Optional[_Fn] = None
    curvature: float = 1.0
    kind: Optional[str] = None
    smooth_link: bool = True
    intensity_link: bool = False
    algorithm: Optional[str] = None
    prox: Optional[Callable[[Tensor, Tensor, float], Tensor]] = None

    def __post_init__(self):
        if self.field not in FIELDS:
            raise ValueError(f"field must be 'real' or 'complex', got {self.field!r}")
        if self.stability not in STABILITY_RULES:
            raise ValueError(f"stability must be one of {', '.join(STABILITY_RULES)}, got {self.stability!r}")
        for k in ("link", "link_ds", "loss", "g", "g_r", "g_y"):
            if not callable(getattr(self, k)):
                raise TypeError(f"SingleIndexModel.{k} must be a callable (r or s, y or eps) → tensor")
        if self.is_complex and not callable(self.g_rbar):
            raise TypeError("a complex SingleIndexModel needs g_rbar = ∂g/∂r̄ (or use single_index_model, which "
                            "takes it by autograd)")

    @property
    def is_complex(self) -> bool:
        return self.field == "complex"

    def safe_step(self, delta: float, r_max: float, l2: float) -> float:
        """Largest step η the explicit-Euler stability rule allows (theory.md §4 pitfall).

        Quartic loss: a residual r takes an Euler step on a cubic and diverges once
        (η/δ) |r|² ≳ 2, so η < 2δ / r_max² (the same in the complex field: the Hessian of ℓ in ℝ² has
        eigenvalues 3|r|² − y and |r|² − y). Square loss: η (λ_max(AᴴA/n) + λ) < 2 with the
        Marchenko–Pastur edge λ_max = (1 + 1/√δ)². Lipschitz g (g' ≤ ``curvature``): the same with
        ``curvature`` × the edge.
        """
        if self.stability == "quartic":
            return 2.0 * delta / max(r_max, 1e-12) ** 2
        c = 1.0 if self.stability == "quadratic" else float(self.curvature)
        return 2.0 / (c * (1.0 + 1.0 / math.sqrt(delta)) ** 2 + l2)

    def linearise(self, r: Tensor, y: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(g_r, g_r̄) at r: δg = g_r δr (+ g_r̄ conj(δr) in the complex field; g_r̄ is None for real)."""
        return self.g_r(r, y), (self.g_rbar(r, y) if self.is_complex else None)

    def describe(self) -> dict:
        """The model as plain JSON-able values (name, field, kind, noise, mean_y)."""
        return {"name": self.name, "field": self.field, "kind": self.kind, "noise": self.noise,
                "mean_y": self.mean_y, "algorithm": self.algorithm}


def check_noise(noise: float) -> float:
    """σ ≥ 0 of the additive Gaussian noise (ValueError otherwise)."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)):
        raise ValueError(f"noise is the standard deviation σ ≥ 0 of the additive Gaussian noise, got {noise!r}")
    sigma = float(noise)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise is the standard deviation σ ≥ 0 of the additive Gaussian noise, got {noise}")
    return sigma


def _check_field(field: str) -> str:
    if field not in FIELDS:
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    return field


# --------------------------------------------------------------------- derivatives by autograd
def _autograd_g(loss: _Fn) -> _Fn:
    """g = ∂ℓ/∂r (real) or 2∂ℓ/∂r̄ (complex: exactly what autograd returns for a real ℓ); differentiable
    again (in r and y) when its inputs carry gradients, so g_r, g_r̄ and ∂_y g can be taken from it."""
    def g(r: Tensor, y: Tensor) -> Tensor:
        outer = r.requires_grad or y.requires_grad
        with torch.enable_grad():
            rr = r if r.requires_grad else r.detach().requires_grad_(True)
            (d,) = torch.autograd.grad(loss(rr, y).sum(), rr, create_graph=outer)
        return d if outer else d.detach()
    return g


def _real_parts(fn: _Fn, r: Tensor, y: Tensor):
    """(x, v, value) with r = x + iv as real leaves and value = fn(r, y), for Jacobians by autograd."""
    x = r.real.detach().requires_grad_(True)
    v = r.imag.detach().requires_grad_(True)
    return x, v, fn(torch.complex(x, v), y.detach())


def _autograd_g_r(g: _Fn, field: str) -> _Fn:
    """g' = ∂g/∂r (real), or the holomorphic Wirtinger derivative ∂g/∂r = (∂_x − i∂_v)g/2 (complex)."""
    def g_r(r: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            if field == "real":
                rr = r.detach().requires_grad_(True)
                (d,) = torch.autograd.grad(g(rr, y.detach()).sum(), rr)
                return d.detach()
            x, v, val = _real_parts(g, r, y)
            gRx, gRv = torch.autograd.grad(val.real.sum(), (x, v), retain_graph=True)
            gIx, gIv = torch.autograd.grad(val.imag.sum(), (x, v))
        return torch.complex(0.5 * (gRx + gIv), 0.5 * (gIx - gRv)).detach()
    return g_r


def _autograd_g_rbar(g: _Fn) -> _Fn:
    """The antiholomorphic Wirtinger derivative ∂g/∂r̄ = (∂_x + i∂_v)g/2 (complex field)."""
    def g_rbar(r: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            x, v, val = _real_parts(g, r, y)
            gRx, gRv = torch.autograd.grad(val.real.sum(), (x, v), retain_graph=True)
            gIx, gIv = torch.autograd.grad(val.imag.sum(), (x, v))
        return torch.complex(0.5 * (gRx - gIv), 0.5 * (gIx + gRv)).detach()
    return g_rbar


def _autograd_g_y(g: _Fn) -> _Fn:
    """∂g/∂y (y real; complex g differentiated part by part)."""
    def g_y(r: Tensor, y: Tensor) -> Tensor:
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            val = g(r.detach(), yy)
            if val.is_complex():
                (dR,) = torch.autograd.grad(val.real.sum(), yy, retain_graph=True, allow_unused=True)
                (dI,) = torch.autograd.grad(val.imag.sum(), yy, allow_unused=True)
                zero = torch.zeros_like(y)
                return torch.complex(zero if dR is None else dR.detach(), zero if dI is None else dI.detach())
            (d,) = torch.autograd.grad(val.sum(), yy, allow_unused=True)
        return torch.zeros_like(y) if d is None else d.detach()
    return g_y


def _autograd_link_ds(link: _Fn, field: str) -> _Fn:
    """∂f/∂s (real) or ∂f/∂Re s (complex), the derivative of the link along a real direction of s."""
    def link_ds(s: Tensor, e: Tensor) -> Tensor:
        with torch.enable_grad():
            if field == "real":
                ss = s.detach().requires_grad_(True)
                (d,) = torch.autograd.grad(link(ss, e.detach()).sum(), ss, allow_unused=True)
                return torch.zeros_like(s) if d is None else d.detach()
            x, v, val = _real_parts(link, s, e)
            (d,) = torch.autograd.grad(val.sum(), x, allow_unused=True)
        return torch.zeros_like(s.real) if d is None else d.detach()
    return link_ds


def single_index_model(name: str, link: _Fn, loss: _Fn, *, field: str = "real", mean_y: float = 1.0,
                       noise: float = 0.0, stability: str = "quartic", curvature: float = 1.0,
                       kind: Optional[str] = None, smooth_link: bool = True, g: Optional[_Fn] = None, g_r: Optional[_Fn] = None,
                       g_rbar: Optional[_Fn] = None, g_y: Optional[_Fn] = None,
                       link_ds: Optional[_Fn] = None) -> SingleIndexModel:
    r"""A :class:`SingleIndexModel` from a link f(s, ε) and a loss ℓ(r; y); every derivative that is not
    given is taken by autograd (``g`` = ∂ℓ/∂r, complex 2∂ℓ/∂r̄; ``g_r``, ``g_rbar`` the Wirtinger
    derivatives of g; ``g_y``; ``link_ds``). ``mean_y`` = E f(S, ε) (E y ≤ 0: warm starts only).

    Autograd derivatives are exact where ℓ is smooth; at a kink (e.g. |r| at r = 0) they return
    autograd's subgradient, which is right almost everywhere (see :func:`amplitude_phase_retrieval`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    field = _check_field(field)
    if not callable(link) or not callable(loss):
        raise TypeError("link(s, eps) and loss(r, y) must be callables on tensors")
    g = g if g is not None else _autograd_g(loss)
    return SingleIndexModel(
        name=name, link=link, loss=loss, g=g, field=field, mean_y=float(mean_y), noise=check_noise(noise),
        stability=stability, curvature=float(curvature), kind=kind, smooth_link=bool(smooth_link),
        link_ds=link_ds if link_ds is not None else _autograd_link_ds(link, field),
        g_r=g_r if g_r is not None else _autograd_g_r(g, field),
        g_rbar=(g_rbar if g_rbar is not None else _autograd_g_rbar(g)) if field == "complex" else None,
        g_y=g_y if g_y is not None else _autograd_g_y(g))


# --------------------------------------------------------------------- the shipped models
def _abs2(r: Tensor) -> Tensor:
    return r.real * r.real + r.imag * r.imag if r.is_complex() else r * r


def phase_retrieval(noise: float = 0.0, field: str = "real") -> SingleIndexModel:
    r"""Phase retrieval y = |s|² + σε with the intensity loss ℓ = (|r|² − y)²/4 (Wirtinger flow).

    Real: g = (r² − y) r, g' = 3r² − y, ∂_y g = −r. Complex (g = 2∂ℓ/∂r̄, the library's gradient):
    g = (|r|² − y) r, g_r = ∂g/∂r = 2|r|² − y, g_r̄ = ∂g/∂r̄ = r², ∂_y g = −r, ∂y/∂Re s = 2 Re s.
    E y = 1 (‖x*‖ = 1, E ε = 0).
    """
    sigma = check_noise(noise)
    field = _check_field(field)
    if field == "real":
        return SingleIndexModel(
            name="phase_retrieval", noise=sigma, mean_y=1.0, stability="quartic", intensity_link=True, kind="intensity", algorithm="wf",
            prox=_prox_intensity_real, link=lambda s, e: s * s + sigma * e, link_ds=lambda s, e: 2 * s,
            loss=lambda r, y: 0.25 * (r * r - y) ** 2, g=lambda r, y: (r * r - y) * r,
            g_r=lambda r, y: 3 * r * r - y, g_y=lambda r, y: -r)
    return SingleIndexModel(
        name="phase_retrieval", noise=sigma, mean_y=1.0, stability="quartic", intensity_link=True, kind="intensity", algorithm="wf", field="complex",
        prox=_prox_intensity_complex,
        link=lambda s, e: _abs2(s) + sigma * e, link_ds=lambda s, e: 2 * s.real,
        loss=lambda r, y: 0.25 * (_abs2(r) - y) ** 2, g=lambda r, y: (_abs2(r) - y) * r,
        g_r=lambda r, y: 2 * _abs2(r) - y, g_rbar=lambda r, y: r * r, g_y=lambda r, y: -r)


def amplitude_phase_retrieval(noise: float = 0.0, field: str = "complex") -> SingleIndexModel:
    r"""Phase retrieval y = |s|² + σε with the amplitude loss ℓ = (|r| − √y₊)²/2 (amplitude flow, ``af``).

    g = r − √y₊ sgn(r), sgn(r) = r/|r|, sgn(0) = 0 (the library's and autograd's subgradient).
    **Non-smooth at r = 0.** Complex field: g_r = 1 − √y₊/(2|r|), g_r̄ = √y₊ r²/(2|r|³); the
    singularity is integrable (the residual has a bounded density near 0 in ℝ², E[1/|r|] < ∞), the
    set r = 0 has probability 0 and the exact pathwise responses apply as they are. Real field: g jumps
    by −2√y at r = 0, so R_g = E[∂g/∂U] carries a point mass −2√y·p_r(0) that pathwise derivatives miss;
    the real model therefore smooths the sign, sgn_ε(r) = tanh(r/ε) with ε = ``AMPLITUDE_EPS`` = 0.02
    (bias O(ε²) in the responses; simulations use the exact subgradient). y₊ = max(y, 0).
    """
    sigma = check_noise(noise)
    field = _check_field(field)
    if field == "complex":
        def g(r, y):
            a = r.abs()
            return r - torch.sqrt(y.clamp(min=0)) * torch.where(a > 0, r / a.clamp(min=1e-30), torch.zeros_like(r))

        def g_r(r, y):
            return 1 - torch.sqrt(y.clamp(min=0)) / (2 * r.abs().clamp(min=1e-30))

        def g_rbar(r, y):
            a = r.abs().clamp(min=1e-30)
            return torch.sqrt(y.clamp(min=0)) * r * r / (2 * a ** 3)

        def g_y(r, y):
            a = r.abs()
            sg = torch.where(a > 0, r / a.clamp(min=1e-30), torch.zeros_like(r))
            return -0.5 * sg / torch.sqrt(y.clamp(min=1e-30)) * (y > 0)

        return SingleIndexModel(
            name="amplitude_phase_retrieval", noise=sigma, mean_y=1.0, stability="lipschitz", curvature=1.0,
            intensity_link=True, kind="amplitude", algorithm="af", field="complex",
            prox=_prox_amplitude_complex,
            link=lambda s, e: _abs2(s) + sigma * e, link_ds=lambda s, e: 2 * s.real,
            loss=lambda r, y: 0.5 * (r.abs() - torch.sqrt(y.clamp(min=0))) ** 2, g=g, g_r=g_r, g_rbar=g_rbar,
            g_y=g_y)
    eps = AMPLITUDE_EPS

    def g_real(r, y):
        return r - torch.sqrt(y.clamp(min=0)) * torch.tanh(r / eps)

    def g_r_real(r, y):
        z = torch.exp(-2 * (r / eps).abs())          # sech²(u) = 4z/(1 + z)², z = e^{−2|u|}: no overflow in float32
        return 1 - torch.sqrt(y.clamp(min=0)) / eps * 4 * z / (1 + z) ** 2

    def g_y_real(r, y):
        return -0.5 * torch.tanh(r / eps) / torch.sqrt(y.clamp(min=1e-30)) * (y > 0)

    return SingleIndexModel(
        name="amplitude_phase_retrieval", noise=sigma, mean_y=1.0, stability="lipschitz", curvature=1.0,
        intensity_link=True, kind="amplitude", algorithm="af", field="real",
        prox=_prox_amplitude_real,
        link=lambda s, e: s * s + sigma * e, link_ds=lambda s, e: 2 * s,
        loss=lambda r, y: 0.5 * (r.abs() - torch.sqrt(y.clamp(min=0))) ** 2, g=g_real, g_r=g_r_real, g_y=g_y_real)


AMPLITUDE_EPS = 0.02


def linear_regression(noise: float = 0.0) -> SingleIndexModel:
    r"""Linear regression y = s + σε with the square loss ℓ = (r − y)²/2 (g = r − y, g' = 1, ∂_y g = −1).

    E y = 0, so no spectral start is defined: use ``init="warm"``.
    """
    sigma = check_noise(noise)
    return SingleIndexModel(
        name="linear_regression", noise=sigma, mean_y=0.0, stability="quadratic",
        link=lambda s, e: s + sigma * e, link_ds=lambda s, e: torch.ones_like(s),
        loss=lambda r, y: 0.5 * (r - y) ** 2, g=lambda r, y: r - y,
        g_r=lambda r, y: torch.ones_like(r), g_y=lambda r, y: -torch.ones_like(r))


def logistic_classification(noise: float = 0.0) -> SingleIndexModel:
    r"""Binary classification y = sign(s + σε) ∈ {−1, 1} with the logistic loss ℓ = log(1 + e^{−y r}).

    g = −y σ(−y r), g' = σ(yr) σ(−yr) ≤ 1/4 (σ the logistic function), ∂_y g = −σ(−yr) + y r σ(yr)σ(−yr).
    E y = 0 and the link is odd (no second-order information): no spectral start; use a warm start.
    The link is discontinuous in s, so μ is taken in Stein form (``mu="stein"``, the default for it).
    """
    sigma = check_noise(noise)

    def g(r, y):
        return -y * torch.sigmoid(-y * r)

    def g_r(r, y):
        p = torch.sigmoid(y * r)
        return p * (1 - p)

    def g_y(r, y):
        p = torch.sigmoid(y * r)
        return -(1 - p) + y * r * p * (1 - p)

    return SingleIndexModel(
        name="logistic_classification", noise=sigma, mean_y=0.0, stability="lipschitz", curvature=0.25,
        smooth_link=False,
        link=lambda s, e: torch.where(s + sigma * e >= 0, torch.ones_like(s), -torch.ones_like(s)),
        link_ds=lambda s, e: torch.zeros_like(s),
        loss=lambda r, y: torch.nn.functional.softplus(-y * r), g=g, g_r=g_r, g_y=g_y)


def relu_regression(noise: float = 0.0) -> SingleIndexModel:
    r"""Single-index regression with a ReLU link, y = max(s, 0) + σε, fitted by least squares
    ℓ = (r − y)²/2 (a misspecified linear model: g = r − y, g' = 1, ∂_y g = −1).

    The link has a kink at s = 0 but is continuous, so μ = E[∂f/∂s] = P(s > 0) = 1/2 is taken
    pathwise. E y = 1/√(2π); the estimator's direction converges to x* (E[y s] = 1/2 > 0), its norm
    to the regression coefficient, shrunk by the ridge. Use a warm start (``init="warm"``).
    """
    sigma = check_noise(noise)
    return SingleIndexModel(
        name="relu_regression", noise=sigma, mean_y=1.0 / math.sqrt(2 * math.pi), stability="quadratic",
        link=lambda s, e: torch.relu(s) + sigma * e, link_ds=lambda s, e: (s > 0).to(s.dtype),
        loss=lambda r, y: 0.5 * (r - y) ** 2, g=lambda r, y: r - y,
        g_r=lambda r, y: torch.ones_like(r), g_y=lambda r, y: -torch.ones_like(r))


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


def _radial(u: Tensor, rho: Tensor) -> Tensor:
    """ρ(|u|) · u/|u| (0 at u = 0): the complex prox of a phase-invariant loss from its radial part."""
    a = u.abs()
    return torch.where(a > 0, rho * u / a.clamp(min=1e-300), torch.zeros_like(u))


def prox_newton(g: _Fn, g_r: _Fn, u: Tensor, y: Tensor, kappa: float, iters: int = 60) -> Tensor:
    r"""Root of r + κ g(r; y) = u by damped Newton from r = u (real field; the prox of κℓ for a convex ℓ)."""
    r = u.clone()
    for _ in range(iters):
        f = r + kappa * g(r, y) - u
        fp = (1 + kappa * g_r(r, y)).clamp(min=1e-12)
        step = (f / fp).clamp(-1.0, 1.0)
        r = r - step
        if float(step.abs().max()) < 1e-14:
            break
    return r


def model_prox(model: "SingleIndexModel", u: Tensor, y: Tensor, kappa: float) -> Tensor:
    r"""prox_{κℓ(·; y)}(u) = argmin_r κℓ(r; y) + |r − u|²/2, elementwise (float64).

    The model's own ``prox`` when it has one (phase retrieval: the cubic's global root, radial in the
    complex field; amplitude loss: closed form), else damped Newton on r + κg(r) = u (convex ℓ; real
    field only).
    """
    if model.prox is not None:
        return model.prox(u, y, kappa)
    if model.is_complex:
        raise ValueError(f"model {model.name!r} (complex) has no prox; give SingleIndexModel(prox=...) for its "
                         "fixed point")
    return prox_newton(model.g, model.g_r, u, y, kappa)


def _prox_intensity_real(u, y, kappa):
    return prox_quartic(u, y, kappa)


def _prox_intensity_complex(u, y, kappa):
    return _radial(u, prox_quartic(u.abs(), y, kappa))


def _prox_amplitude_real(u, y, kappa):
    return (u + kappa * torch.sqrt(y.clamp(min=0)) * torch.sign(u)) / (1 + kappa)


def _prox_amplitude_complex(u, y, kappa):
    return _radial(u, (u.abs() + kappa * torch.sqrt(y.clamp(min=0))) / (1 + kappa))


def resolve_model(model: Optional["SingleIndexModel"], field: Optional[str], noise: Optional[float]) -> "SingleIndexModel":
    """The model of a request: ``model`` as given (``field``/``noise`` must agree with it or be None), or
    phase retrieval with the intensity loss in ``field`` (default real) with noise σ (default 0)."""
    if model is None:
        f = "real" if field is None else _check_field(field)
        return phase_retrieval(0.0 if noise is None else noise, field=f)
    if not isinstance(model, SingleIndexModel):
        raise TypeError(f"model must be a phasetorch.theory.SingleIndexModel (e.g. theory.phase_retrieval()), "
                        f"got {type(model).__name__}")
    if field is not None and field != model.field:
        raise ValueError(f"field={field!r} contradicts the model's field {model.field!r}; drop field= (the model "
                         "carries it)")
    if noise is not None and float(noise) != model.noise:
        raise ValueError(f"noise={noise!r} contradicts the model's noise σ = {model.noise}; the model carries it")
    return model


def preprocessing_values(T: Callable[[Tensor], Tensor], Y: Tensor, mean_y: float,
                         derivative: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    r"""(T(Ŷ), dT(Ŷ)/dY) with Ŷ = Y / E y; the derivative (by autograd, 0 where T does not depend on
    ŷ) only when ``derivative``, else None. ValueError when T is not a finite elementwise map."""
    Yhat = (Y / mean_y).detach()
    dT = None
    if derivative:
        Yg = Yhat.clone().requires_grad_(True)
        Tg = T(Yg)
        if isinstance(Tg, Tensor) and Tg.requires_grad:
            dT = torch.autograd.grad(Tg.sum(), Yg, allow_unused=True)[0]
        dT = torch.zeros_like(Yhat) if dT is None else dT.detach() / mean_y         # dT/dY = T'(Ŷ)/E y
        values = Tg.detach() if isinstance(Tg, Tensor) else Tg
    else:
        values = T(Yhat)
    if not isinstance(values, Tensor) or values.shape != Yhat.shape:
        raise ValueError("T must map a tensor of normalised intensities to a tensor of the same shape")
    if not torch.isfinite(values).all():
        raise ValueError("T(ŷ) is not finite on the population; floor small intensities in T")
    return values, dT


def spectral_tilt(T_values: Tensor, dT: Optional[Tensor], lam_star: float) -> Tuple[Tensor, Optional[Tensor]]:
    r"""τ = T/(λ* − T) and dτ/dY = (dT/dY) λ*/(λ* − T)² (None without dT); λ* > sup T required."""
    ls = float(lam_star)
    if not ls > float(T_values.max()):
        raise ValueError(f"lam_star = {ls} must exceed sup T = {float(T_values.max()):.6g} (it is the root of "
                         "δE[(S²−1)T/(λ−T)] = 1 above the support of T)")
    tau = T_values / (ls - T_values)
    dtau = dT * ls / (ls - T_values) ** 2 if dT is not None else None
    return tau, dtau


@dataclass
class StartLaw:
    r"""A Monte-Carlo population of the sample side at the start (module docstring), shape (R, N).

    ``S``, ``G``, ``Y``, ``P``; ``f_S`` = ∂Y/∂S (pathwise μ only, else None); ``T`` = T(Ŷ) and
    ``dT`` = dT/dY (None without a preprocessing / without derivatives); ``tau`` = τ(Y) (0 for a
    warm or power start) and ``dtau`` = dτ/dY (pathwise only).
    """

    S: Tensor
    G: Tensor
    Y: Tensor
    P: Tensor
    f_S: Optional[Tensor]
    T: Optional[Tensor]
    dT: Optional[Tensor]
    tau: Tensor
    dtau: Optional[Tensor]

    @property
    def tau_P(self) -> Tensor:
        """τ(Y) P, the spectral memory term of the residual per unit R_x(t, ★)."""
        return self.tau * self.P

    def anchors(self, delta: float, rho: float) -> Dict[str, Tensor]:
        """Per-replicate (float64) anchors: ρ² + δE[τ²|P|²] → 1, δE[(|S|² − 1)τ] → 1, E[T(1 + τ)²|P|²] → λ₁(D)."""
        tauP = self.tau_P
        onept = (1 + self.tau) * self.P
        return {"v_norm": rho ** 2 + delta * _abs2(tauP).to(torch.float64).mean(dim=1),
                "tilt_equation": delta * ((_abs2(self.S) - 1) * self.tau).to(torch.float64).mean(dim=1),
                "rayleigh": (self.T * _abs2(onept)).to(torch.float64).mean(dim=1)}


def start_law(model: SingleIndexModel, S: Tensor, G: Tensor, eps: Tensor, rho: float,
              T: Optional[Callable[[Tensor], Tensor]] = None, lam_star: Optional[float] = None,
              pathwise: bool = False) -> StartLaw:
    r"""The start's population from standard normal draws S, G (complex CN(0, 1) for a complex model), ε.

    ``T`` is evaluated when given (spectral and power starts); the tilt τ needs ``lam_star`` too
    (spectral start), otherwise τ ≡ 0. ``pathwise`` adds ∂Y/∂S, dT/dY and dτ/dY.
    """
    Y = model.link(S, eps)
    P = rho * S + math.sqrt(max(1.0 - rho ** 2, 0.0)) * G
    f_S = model.link_ds(S, eps) if pathwise else None
    T_values = dT = None
    if T is not None:
        T_values, dT = preprocessing_values(T, Y, model.mean_y, derivative=pathwise)
    if lam_star is not None:
        tau, dtau = spectral_tilt(T_values, dT, lam_star)
    else:
        tau = torch.zeros_like(S)
        dtau = torch.zeros_like(S) if pathwise else None
    return StartLaw(S=S, G=G, Y=Y, P=P, f_S=f_S, T=T_values, dT=dT, tau=tau, dtau=dtau)
