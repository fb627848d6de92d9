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
from ..tensors import abs2, bview, check_int, check_number, dot, norm2
from .engine import Algorithm, StepResult, declared_key

__all__ = ["ErrorReduction", "HybridInputOutputAlgorithm", "Constraint", "LeastSquares", "tight_frame_constant",
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
            qq = self.op.measurement_sum(abs2(q)).reshape(q.shape[0])      # all-reduced on a sharded operator
            a = torch.where(qq > 0, rr / qq.clamp_min(tiny), torch.zeros_like(rr))
            x = x + bview(a, x).to(x.dtype) * p
            r = r - bview(a, r).to(r.dtype) * self._adj(q, x)
            rr_new = norm2(r)
            beta = torch.where(rr > 0, rr_new / rr.clamp_min(tiny), torch.zeros_like(rr))
            p = r + bview(beta, p).to(p.dtype) * p
            rr = rr_new
        return x


class ErrorReduction(Algorithm):
    r"""Error reduction / Gerchberg–Saxton: x ← x + μ(Π_C(A⁺ P_M(Ax)) − x), μ = 1 the classic update.

    μ ≠ 1 is the relaxed projection (over-relaxation for 1 < μ < 2). ``psi`` = √max(y, 0) per sample,
    shape ``(B, *measurement_shape)``; ``constraint`` the object constraint. The cache of the step
    context, when given, is r = Ax/√e (e = ``op.entry_energy``), so Ax is not recomputed. No state.
    """

    name = "gs"
    uses_gradient = False
    takes_l2 = False

    def __init__(self, op: MeasurementOperator, psi: torch.Tensor, constraint: Constraint, cg_steps: int = 3,
                 tight: Optional[float] = None) -> None:
        self.op, self.psi, self.constraint = op, psi, constraint
        self.lsq = LeastSquares(op, constraint, check_int(cg_steps, "cg_steps", 1), tight)

    def step_key(self, t):
        return declared_key(self, ErrorReduction, (), t, ("step",))

    def step(self, state, t, x, f, grad, ctx, mu=None):
        z = self.op.linear(x) if ctx.cache is None else ctx.cache * math.sqrt(self.op.entry_energy)
        x_new = self.constraint(self.lsq.solve(phase_projection(z, self.psi), x, z))
        if x_new.is_complex() and not x.is_complex():
            x_new = x_new.real
        if mu is not None and mu != 1.0:
            x_new = x + check_number(mu, "the relaxation μ", low=0.0, strict=True) * (x_new - x)
        return StepResult(torch.full((x.shape[0],), float("nan"), dtype=x.real.dtype, device=x.device), x_new)


class HybridInputOutputAlgorithm(Algorithm):
    """Fienup's hybrid input–output (module docstring); μ = β, the feedback parameter (0.9).

    State: ``hio_x`` (the in-range part), ``hio_u`` (the field in measurement space), ``hio_v``
    (the last least-squares image A⁺P_M(u)). The iterate reported is Π_C(v).

    On noisy data HIO does not converge to a point: its iteration is chaotic, so the ~1e-16
    differences in floating-point summation order between a batched run and single runs grow to
    O(1) differences in the iterate after some hundred iterations. A batch equals single runs only up
    to that; every other preset keeps batch = singles to rounding.
    """

    name = "hio"
    uses_gradient = False
    takes_l2 = False

    def __init__(self, op: MeasurementOperator, psi: torch.Tensor, constraint: Constraint, beta: float = 0.9,
                 cg_steps: int = 3, tight: Optional[float] = None) -> None:
        self.mu = self.check_beta(beta)
        self.op, self.psi, self.constraint = op, psi, constraint
        self.lsq = LeastSquares(op, Constraint(), check_int(cg_steps, "cg_steps", 1), tight)

    @staticmethod
    def check_beta(beta) -> float:
        beta = check_number(beta, "the HIO feedback beta", low=0.0, strict=True)
        if beta > 2:
            raise ValueError(f"the HIO feedback beta must be in (0, 2], got {beta}")
        return beta

    def init_state(self, x, scale):
        x = x.to(self.op.signal_dtype) if self.op.is_complex else x
        return {"scale": scale, "hio_x": x, "hio_u": self.op.linear(x), "hio_v": x}

    def good(self, comp: torch.Tensor, imaginary: bool) -> torch.Tensor:
        """Where a real component of v satisfies the object constraint."""
        c = self.constraint
        good = torch.ones_like(comp, dtype=torch.bool)
        if imaginary and c.real:
            good = torch.zeros_like(good)
        if c.support is not None:
            good = good & c.support.to(torch.bool)
        if c.nonnegative and not imaginary:
            good = good & (comp >= 0)
        return good

    def step_key(self, t):
        return declared_key(self, HybridInputOutputAlgorithm, (), t, ("step",))

    def step(self, state, t, x, f, grad, ctx, mu=None):
        b = self.mu if mu is None else self.check_beta(mu)
        hx, u = state["hio_x"], state["hio_u"]
        w = phase_projection(u, self.psi)
        v = self.lsq.solve(w, state["hio_v"])
        if v.is_complex():
            re = torch.where(self.good(v.real, False), v.real, hx.real - b * v.real)
            im = torch.where(self.good(v.imag, True), v.imag, hx.imag - b * v.imag)
            x_new = torch.complex(re, im)
        else:
            x_new = torch.where(self.good(v, False), v, hx - b * v)
        state["hio_u"] = u - b * w + self.op.linear(x_new + b * v - hx)
        state["hio_x"], state["hio_v"] = x_new, v
        est = self.constraint(v)
        if est.is_complex() and not x.is_complex():
            est = est.real
        return StepResult(torch.full((x.shape[0],), float("nan"), dtype=x.real.dtype, device=x.device), est)
