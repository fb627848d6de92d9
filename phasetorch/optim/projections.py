r"""Projection algorithms: Gerchberg–Saxton / error reduction and Fienup's hybrid input–output.

Both alternate between the measurement constraint M = {z : |z| = √y} (projection
P_M(z) = √y₊ ⊙ sgn(z), sgn(0) := 1) and the object constraint C = {x : x real (optional),
supp x ⊆ S (optional), x ≥ 0 (optional)}, with the operator's range as the link between the two.

* **Error reduction / GS** (Gerchberg & Saxton, Optik 35, 1972; Fienup, Appl. Opt. 21, 1982):
  x ← Π_C(A⁺ P_M(Ax)), A⁺ the least-squares inverse restricted to the real/support subspace, followed
  by the non-negativity clamp. For a tight frame (AᴴA = cI: unitary FFT models, oversampled
  Fourier) A⁺ = Aᴴ/c exactly; otherwise (dense Gaussian, coded diffraction with non-unimodular
  masks) A⁺ is applied by ``cg_steps`` conjugate-gradient steps on the normal equations,
  warm-started at the current x (this is alternating minimisation, Netrapalli, Jain & Sanghavi 2013).
* **Hybrid input–output** (Fienup 1982), written for any operator in the measurement space: the
  state is u ∈ ℂ^m (for oversampled Fourier: the padded image in Fourier coordinates), x = A⁺u its
  in-range part (the object box), u − Ax the out-of-range part (the zero padding). With
  w = P_M(u) and v = A⁺w, per real component of every pixel

      x_new = v              where the object constraint holds for v (inside S, Re v ≥ 0, Im v = 0 for real objects),
      x_new = x − β v        elsewhere,

  and the out-of-range part is updated as u⊥ ← u⊥ − β(w − Av) (the padding is "outside the
  support"). This is exactly Fienup's HIO on the padded grid for oversampled Fourier data; β = 0.9.
  The estimate reported at each iteration is Π_C(v) (one error-reduction projection of the state).

A :func:`tight_frame_constant` probe decides between the exact and the CG pseudo-inverse.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..physics.base import MeasurementOperator
from ..tensors import bview, dot, norm2
from .base import PhaseOptimizer

__all__ = ["GerchbergSaxton", "HybridInputOutput", "Constraint", "LeastSquares", "tight_frame_constant",
           "phase_projection"]


def phase_projection(z: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """P_M(z) = ψ ⊙ sgn(z) with sgn(0) := 1 (the closest point of {|z| = ψ})."""
    if z.is_complex():
        a = z.abs()
        unit = torch.where(a > 0, z / torch.where(a > 0, a, torch.ones_like(a)), torch.ones_like(z))
    else:
        unit = torch.where(z < 0, -torch.ones_like(z), torch.ones_like(z))
    return psi * unit


def tight_frame_constant(op: MeasurementOperator, rtol: Optional[float] = None) -> Optional[float]:
    """c if AᴴA = cI (checked on a fixed random probe), else ``None``.

    A random vector is an eigenvector of AᴴA only if AᴴA has a single eigenvalue on its span, so one
    probe separates tight frames from the rest (almost surely); ``rtol`` defaults to 10⁴·ε of the dtype.
    """
    if getattr(op, "batch_indexed", False):
        return None   # a batch of independent (Gaussian) matrices: not a tight frame, and no single probe fits it
    g = torch.Generator(device="cpu").manual_seed(12345)
    shape = (1, *op.signal_shape)
    p = torch.randn(*shape, 2, generator=g, dtype=torch.float64)
    p = torch.view_as_complex(p) if op.is_complex else p[..., 0]
    p = p.to(device=op.device, dtype=op.signal_dtype)
    q = op.adjoint(op.linear(p))
    if q.is_complex() and not p.is_complex():
        q = q.real
    c = (dot(p.reshape(1, -1), q.reshape(1, -1)) / norm2(p.reshape(1, -1))).item()
    if not c > 0:
        return None
    err = math.sqrt(norm2((q - c * p).reshape(1, -1)).item()) / math.sqrt(norm2(q.reshape(1, -1)).item())
    tol = rtol if rtol is not None else 1e4 * torch.finfo(op.real_dtype).eps
    return c if err <= tol else None


class Constraint:
    """The object constraint: real part (``real``), support mask, non-negativity; acting on ``(B, *signal)``."""

    def __init__(self, real: bool = False, support: Optional[torch.Tensor] = None, nonnegative: bool = False) -> None:
        self.real = bool(real or nonnegative)
        self.support = support
        self.nonnegative = bool(nonnegative)

    @property
    def trivial(self) -> bool:
        return not self.real and self.support is None and not self.nonnegative

    def restrict(self, x: torch.Tensor) -> torch.Tensor:
        """Projection onto the linear part (real, support) of the constraint."""
        if self.real and x.is_complex():
            x = x.real
        if self.support is not None:
            x = x * self.support.to(x.real.dtype if x.is_complex() else x.dtype)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Projection onto C (real, support, then x ≥ 0)."""
        x = self.restrict(x)
        if self.nonnegative:
            x = x.clamp_min(0)
        return x


class LeastSquares:
    """x = argmin ‖Ax − b‖ over the constraint's linear subspace (real/support), per sample.

    Exact (x = R(Aᴴb)/c) for tight frames, else ``cg_steps`` steps of CGNR warm-started at ``x0``.
    """

    def __init__(self, op: MeasurementOperator, constraint: Constraint, cg_steps: int = 3,
                 tight: Optional[float] = None) -> None:
        self.op, self.constraint, self.cg_steps, self.c = op, constraint, int(cg_steps), tight
        if self.c is None and self.cg_steps < 1:
            raise ValueError("cg_steps must be ≥ 1 for an operator that is not a tight frame")

    def _adj(self, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        g = self.op.adjoint(z)
        if g.is_complex() and not like.is_complex():
            g = g.real
        return self.constraint.restrict(g)

    def solve(self, b: torch.Tensor, x0: torch.Tensor, z0: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.c is not None:
            return self._adj(b, x0) * (1.0 / self.c)
        x = x0
        z = self.op.linear(x) if z0 is None else z0
        r = self._adj(b - z, x)
        p = r
        rr = norm2(r)
        tiny = torch.finfo(rr.dtype).tiny
        for _ in range(self.cg_steps):
            q = self.op.linear(p)
            qq = norm2(q.reshape(q.shape[0], -1))
            a = torch.where(qq > 0, rr / qq.clamp_min(tiny), torch.zeros_like(rr))
            x = x + bview(a, x).to(x.dtype) * p
            r = r - bview(a, r).to(r.dtype) * self._adj(q, x)
            rr_new = norm2(r)
            beta = torch.where(rr > 0, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
            p = r + bview(beta, p).to(p.dtype) * p
            rr = rr_new
        return x


class GSCore:
    """Functional core of error reduction (used by :class:`GerchbergSaxton` and the solver)."""

    def __init__(self, op, psi, constraint: Constraint, cg_steps: int = 3, tight: Optional[float] = None) -> None:
        self.op, self.psi, self.constraint = op, psi, constraint
        self.lsq = LeastSquares(op, constraint, cg_steps, tight)

    def step(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_new = Π_C(A⁺ P_M(z)), z = Ax."""
        b = phase_projection(z, self.psi)
        return self.constraint(self.lsq.solve(b, x, z))


class HIOCore:
    """Functional core of hybrid input–output (state: the in-range part x and u ∈ ℂ^m)."""

    def __init__(self, op, psi, constraint: Constraint, beta: float = 0.9, cg_steps: int = 3,
                 tight: Optional[float] = None) -> None:
        if not (math.isfinite(float(beta)) and 0 < float(beta) <= 2):
            raise ValueError(f"the HIO feedback beta must be in (0, 2], got {beta}")
        self.op, self.psi, self.constraint, self.beta = op, psi, constraint, float(beta)
        self.lsq = LeastSquares(op, Constraint(), cg_steps, tight)
        self.x = self.u = self.v = None

    def start(self, x0: torch.Tensor) -> None:
        self.x = x0.to(self.op.signal_dtype) if self.op.is_complex else x0
        self.u = self.op.linear(self.x)
        self.v = self.x

    def _good(self, comp: torch.Tensor, imaginary: bool) -> torch.Tensor:
        c = self.constraint
        good = torch.ones_like(comp, dtype=torch.bool)
        if imaginary and c.real:
            good = torch.zeros_like(good)
        if c.support is not None:
            good = good & c.support.to(torch.bool)
        if c.nonnegative and not imaginary:
            good = good & (comp >= 0)
        return good

    def step(self) -> torch.Tensor:
        """One HIO iteration; returns the estimate Π_C(v)."""
        w = phase_projection(self.u, self.psi)
        v = self.lsq.solve(w, self.v)
        b = self.beta
        if v.is_complex():
            xr, xi = self.x.real, self.x.imag
            re = torch.where(self._good(v.real, False), v.real, xr - b * v.real)
            im = torch.where(self._good(v.imag, True), v.imag, xi - b * v.imag)
            x_new = torch.complex(re, im)
        else:
            x_new = torch.where(self._good(v, False), v, self.x - b * v)
        self.u = self.u - b * w + self.op.linear(x_new + b * v - self.x)
        self.x, self.v = x_new, v
        return self.constraint(v)


class _ProjectionOptimizer(PhaseOptimizer):
    def __init__(self, params, op, y, support, nonnegative, real_signal, defaults):
        if not isinstance(op, MeasurementOperator):
            raise ValueError(f"op must be a phasetorch MeasurementOperator, got {type(op).__name__}")
        ps = list(params) if not isinstance(params, torch.Tensor) else [params]
        x = ps[0] if isinstance(ps[0], torch.Tensor) else ps[0]["params"][0]
        op.check_signal(x.detach())
        batch_dims = x.dim() - len(op.signal_shape)
        super().__init__(ps, defaults, batch_dims)
        from ..losses import check_intensities
        check_intensities(op, y)
        B = math.prod(self.batch_shape)
        yb = y.expand(*self.batch_shape, *op.measurement_shape) if y.dim() == len(op.measurement_shape) else y
        if tuple(yb.shape[: yb.dim() - len(op.measurement_shape)]) != self.batch_shape:
            raise ValueError(f"y has batch shape {tuple(yb.shape[:yb.dim() - len(op.measurement_shape)])} but x has "
                             f"{self.batch_shape}")
        self.op = op
        self.psi = yb.reshape(B, *op.measurement_shape).clamp_min(0).sqrt()
        if real_signal is None:
            real_signal = not x.is_complex()
        sup = None
        if support is not None:
            sup = torch.as_tensor(support, device=x.device).to(torch.bool)
            sup = sup.expand(*self.batch_shape, *op.signal_shape).reshape(B, *op.signal_shape)
        self.constraint = Constraint(real_signal, sup, nonnegative)


class GerchbergSaxton(_ProjectionOptimizer):
    r"""Error reduction (Gerchberg–Saxton) as an optimizer: each ``step()`` sets x ← Π_C(A⁺ P_M(Ax)).

    Parameters
    ----------
    params : one tensor x of shape ``(*batch, *op.signal_shape)`` (the starting point).
    op, y : the operator and the intensities (``y`` of shape ``(*batch, *measurement_shape)`` or
        unbatched).
    support : optional boolean mask (``signal_shape`` or ``(*batch, *signal_shape)``).
    nonnegative : clamp x ≥ 0 (implies a real object).
    real_signal : keep x real (default: whether x is real).
    cg_steps : CG steps of the least-squares inverse for operators that are not tight frames (3).

    No closure is needed (``step()`` returns ``None``).
    """

    def __init__(self, params, op, y, support=None, nonnegative: bool = False, real_signal: Optional[bool] = None,
                 cg_steps: int = 3) -> None:
        super().__init__(params, op, y, support, nonnegative, real_signal, {"cg_steps": cg_steps})
        self.core = GSCore(op, self.psi, self.constraint, cg_steps, tight_frame_constant(op))

    @torch.no_grad()
    def step(self, closure=None):
        p = self.param
        x = self._flat(p.detach()).clone()
        x_new = self.core.step(x, self.op.linear(x))
        if x_new.is_complex() and not p.is_complex():
            x_new = x_new.real
        p.copy_(x_new.reshape(p.shape))
        return None


class HybridInputOutput(_ProjectionOptimizer):
    r"""Fienup's hybrid input–output as an optimizer (see the module docstring); β = 0.9.

    The HIO state (the measurement-space field u) is kept in the optimizer; after each ``step()``
    the parameter holds the current estimate Π_C(A⁺ P_M(u)). Parameters as for
    :class:`GerchbergSaxton` plus ``beta``.
    """

    def __init__(self, params, op, y, support=None, nonnegative: bool = False, real_signal: Optional[bool] = None,
                 beta: float = 0.9, cg_steps: int = 3) -> None:
        super().__init__(params, op, y, support, nonnegative, real_signal, {"beta": beta, "cg_steps": cg_steps})
        self.core = HIOCore(op, self.psi, self.constraint, beta, cg_steps, tight_frame_constant(op))
        self._started = False

    @torch.no_grad()
    def step(self, closure=None):
        p = self.param
        if not self._started:
            self.core.start(self._flat(p.detach()).clone())
            self._started = True
        est = self.core.step()
        if est.is_complex() and not p.is_complex():
            est = est.real
        p.copy_(est.reshape(p.shape))
        return None
