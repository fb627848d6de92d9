"""Many independent Gaussian measurement matrices applied in one batched product."""

from __future__ import annotations

import math

from typing import Optional, Sequence

import torch

from . import kernels
from .base import MeasurementOperator
from .kernels import PointwiseMap
from ..tensors import check_flag, check_int, check_memory, dtype_name, make_generator, parse_dtype
from .gaussian import GaussianMeasurement
from .registry import register_operator


@register_operator
class GaussianEnsemble(MeasurementOperator):
    r"""``count`` independent dense Gaussian operators A_1, …, A_count, one per problem of a batch.

    Signals have shape ``(*batch, count, n)`` and measurements ``(*batch, count, m)``: the **last
    batch dimension indexes the matrix**, so x[..., k, :] is measured by A_k,
    y[..., k, :] = |A_k x[..., k, :]|². This runs ``count`` independent phase-retrieval problems
    (e.g. the seeds of a simulation, :func:`phasetorch.theory.simulate`) as one batch through any
    solver, with one batched matrix product per application (``torch.bmm``) instead of a loop.

    A_k is exactly ``GaussianMeasurement(n, m, complex, seed=seeds[k]).matrix()``
    (the same counter-based entries; N(0,1) real or (g₁+ig₂)/√2 complex, E|A_ij|² = 1, so
    ``entry_energy = 1``; Candès, Li & Soltanolkotabi 2015).

    Parameters
    ----------
    n, m : unknowns and measurements per problem. count : number of independent matrices.
    complex : complex (default) or real Gaussian entries.
    seeds : one int seed per matrix; or ``seed`` / ``generator`` from which ``count`` seeds are drawn.
    block_rows : rows per block of the members' streamed products (A does not depend on it).
    dtype : real dtype (float32 default). Memory: count·m·n entries.
    """

    gaussian_design = True

    #: the last batch dimension indexes the matrices: solvers must not drop or reorder batch entries
    batch_indexed = True

    def __init__(self, n: int, m: int, count: int, complex: bool = True, seeds: Optional[Sequence[int]] = None,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None, block_rows: int = 4096,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        n = check_int(n, "GaussianEnsemble n (unknowns per problem)", 1)
        m = check_int(m, "GaussianEnsemble m (measurements per problem)", 1)
        count = check_int(count, "count (number of matrices)", 1)
        block_rows = check_int(block_rows, "GaussianEnsemble block_rows", 1)
        dtype = parse_dtype(dtype)
        if seeds is not None:
            if seed is not None or generator is not None:
                raise ValueError("pass seeds= (one per matrix) or seed=/generator=, not both")
            seeds = [check_int(s, "seeds[k]", 0) for s in seeds]
            if len(seeds) != count:
                raise ValueError(f"seeds has {len(seeds)} entries but count = {count}; give one seed per matrix")
        else:
            g = make_generator(seed, generator)
            seeds = [int(s) for s in torch.randint(0, 2**62, (count,), generator=g)]
        self.signal_shape = (n,)
        self.measurement_shape = (m,)
        self.count = count
        self.seeds = seeds
        self.is_complex = check_flag(complex, f"{type(self).__name__} complex")
        self.block_rows = block_rows
        self._dtype_probe = self._dtype_probe.to(dtype)
        check_memory(2 * count * m * n * (2 if self.is_complex else 1) * torch.finfo(dtype).bits / 8,
                     f"{count} stored {m}×{n} Gaussian matrices", "use fewer or smaller matrices")
        mats = [self._member_matrix(k, dtype) for k in range(count)]
        self.register_random("A", torch.stack(mats, 0))

    def _member_matrix(self, k: int, dtype: torch.dtype) -> torch.Tensor:
        # a streamed GaussianMeasurement stores nothing; its block generator gives A_k exactly
        proto = GaussianMeasurement(self.n, self.m, complex=self.is_complex, seed=self.seeds[k], streamed=True,
                                    block_rows=self.block_rows, dtype=dtype)
        return proto._matrix(dtype)

    @property
    def entry_energy(self) -> float:
        return 1.0

    def matrices(self) -> torch.Tensor:
        """All matrices, shape (count, m, n)."""
        return self.buffer("A")

    def member(self, k: int) -> GaussianMeasurement:
        """The k-th problem as a stand-alone :class:`GaussianMeasurement` (same matrix, shared storage)."""
        if not -self.count <= k < self.count:
            raise ValueError(f"member index {k} out of range for {self.count} matrices")
        op = GaussianMeasurement(self.n, self.m, complex=self.is_complex, seed=self.seeds[k], streamed=True,
                                 block_rows=self.block_rows, dtype=self.real_dtype).to(self.device)
        op.register_random("A", self.buffer("A")[k])
        op.streamed = False
        return op

    # ------------------------------------------------------------------ shape checks
    def _check_count(self, t: torch.Tensor, what: str) -> None:
        if t.dim() < 2 or t.shape[-2] != self.count:
            raise ValueError(f"GaussianEnsemble: a {what} must have shape (*batch, {self.count}, "
                             f"{self.n if what == 'signal' else self.m}) — the last batch dimension indexes "
                             f"the {self.count} matrices — got shape {tuple(t.shape)}")

    def check_signal(self, x: torch.Tensor) -> None:
        super().check_signal(x)
        self._check_count(x, "signal")

    def check_measurements(self, y: torch.Tensor) -> None:
        super().check_measurements(y)
        self._check_count(y, "measurement")

    # ------------------------------------------------------------------ products
    @staticmethod
    def _to_bmm(t: torch.Tensor) -> torch.Tensor:
        c, k = t.shape[-2], t.shape[-1]
        return t.reshape(-1, c, k).transpose(0, 1)  # (count, B, k)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        A = self.buffer("A")
        xb = self._to_bmm(x)
        if not self.is_complex and x.is_complex():
            z = torch.complex(torch.bmm(xb.real.contiguous(), A.transpose(1, 2)),
                              torch.bmm(xb.imag.contiguous(), A.transpose(1, 2)))
        else:
            z = torch.bmm(xb, A.transpose(1, 2))
        return z.transpose(0, 1).reshape(*x.shape[:-1], self.m)

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        A = self.buffer("A")
        zb = self._to_bmm(z)
        if A.is_complex():
            x = torch.bmm(zb.conj(), A).conj()
        elif zb.is_complex():
            x = torch.complex(torch.bmm(zb.real.contiguous(), A), torch.bmm(zb.imag.contiguous(), A))
        else:
            x = torch.bmm(zb, A)
        return x.transpose(0, 1).reshape(*z.shape[:-1], self.n)

    def _linear_adjoint(self, x: torch.Tensor, fn):
        spec = getattr(fn, "pointwise", None)
        out = self._kernel_pass(x, spec) if isinstance(spec, PointwiseMap) else None
        return super()._linear_adjoint(x, fn) if out is None else out

    def _kernel_pass(self, x: torch.Tensor, spec: PointwiseMap):
        """``(z, Aᴴ w·φ(c z))`` member by member through the fused C kernel (one read of each A_k instead
        of the two batched products; the same pass a stand-alone member takes, so a member's results equal
        its :meth:`member`'s bit for bit); fills ``spec``'s outputs. None where the kernel does not apply."""
        A = self.buffer("A")
        batch, c, m, n = x.shape[:-2], self.count, self.m, self.n
        xb = x.reshape(-1, c, n)
        if not kernels.usable(A[0], xb[:, 0]):
            return None

        def per_member(t):
            return None if t is None else t.expand(*batch, c, m).reshape(-1, c, m)

        q, w = per_member(spec.data), per_member(spec.weights)
        zs, gs, a2s, wos, tots = [], [], [], [], []
        for k in range(c):
            sk = PointwiseMap(spec.code, None if q is None else q[:, k], spec.scale, None if w is None else w[:, k],
                              spec.p0, spec.p1)
            z, g = kernels.fused(A[k], xb[:, k], sk, (xb.shape[0],))
            zs.append(z), gs.append(g), a2s.append(sk.a2), wos.append(sk.weights_out), tots.append(sk.total)
        spec.a2 = torch.stack(a2s, 1).reshape(*batch, c, m)
        spec.weights_out = None if wos[0] is None else torch.stack(wos, 1).reshape(*batch, c, m)
        spec.total = torch.stack(tots, 1).reshape(*batch, c)
        spec.done = True
        return torch.stack(zs, 1).reshape(*batch, c, m), torch.stack(gs, 1).reshape(*batch, c, n)

    def config(self) -> dict:
        return {"type": "GaussianEnsemble", "n": self.n, "m": self.m, "count": self.count,
                "complex": self.is_complex, "seeds": list(self.seeds), "block_rows": self.block_rows,
                "dtype": dtype_name(self.real_dtype)}

    def extra_repr(self) -> str:
        return f"count={self.count}, " + super().extra_repr()
