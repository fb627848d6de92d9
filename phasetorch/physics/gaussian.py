"""Dense i.i.d. Gaussian measurements (the Candès–Li–Soltanolkotabi / theory model)."""

from __future__ import annotations

import math

from typing import Optional, Sequence, Union

import torch

from .base import MeasurementOperator
from ..tensors import as_shape, check_flag, check_int, check_memory, complex_dtype_of, dtype_name, parse_dtype, resolve_seed
from . import kernels
from ..philox import gaussian_rows_torch
from .matrix import dense_adjoint, dense_linear, fuse_pays, fused_dense_pass, pointwise_dense_pass, row_blocks
from .registry import register_operator


#: the torch path generates at most this many entry pairs at once (its integer temporaries take ~100 B each)
TORCH_PAIRS = 1 << 20


def gaussian_rows(seed: int, row0: int, rows: int, n: int, is_complex: bool, dtype: torch.dtype,
                  device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Rows ``row0 .. row0 + rows − 1`` of the Gaussian matrix of ``seed`` (counter-based: entry (i, k)
    depends on (seed, i, k) only, :mod:`phasetorch.philox`), generated on ``device`` in the real dtype
    ``dtype`` (complex rows in the matching complex dtype). On the CPU the compiled kernel
    (:func:`phasetorch.physics.kernels.gaussian_rows`) computes them, elsewhere (or with
    ``PHASETORCH_KERNELS=0``) torch ops; both give the same Philox words and the same transform (float64
    variates equal to about 1 ulp: torch's CPU sqrt is not always correctly rounded)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    check_memory(rows * n * (2 if is_complex else 1) * torch.finfo(dtype).bits / 8,
                 f"a block of {rows}×{n} Gaussian rows", "lower block_rows (a streamed operator generates "
                 "block_rows rows at a time), or fewer unknowns")
    if device.type == "cpu" and kernels.available():
        return kernels.gaussian_rows(seed, row0, rows, n, is_complex, dtype)
    pairs = n if is_complex else (n + 1) // 2
    step = max(1, TORCH_PAIRS // max(1, pairs))
    parts = [gaussian_rows_torch(seed, r, min(step, row0 + rows - r), n, is_complex, dtype, device)
             for r in range(row0, row0 + rows, step)]
    if not parts:
        return gaussian_rows_torch(seed, row0, 0, n, is_complex, dtype, device)
    return parts[0] if len(parts) == 1 else torch.cat(parts, 0)


@register_operator
class GaussianMeasurement(MeasurementOperator):
    r"""y = |Ax|² with A ∈ ℂ^{m×n} (or ℝ^{m×n}) i.i.d. Gaussian, E|A_ij|² = 1.

    Complex entries are (g₁ + i g₂)/√2 with g₁, g₂ ~ N(0, 1); real entries are N(0, 1). Hence
    E y_i = ‖x‖² and ``entry_energy = 1`` (Candès, Li & Soltanolkotabi 2015, "Phase retrieval via
    Wirtinger flow"; the PhasePack / solvephase convention). deepinv's CN(0, 1/m) is this operator
    divided by √m.

    Parameters
    ----------
    n : int or shape
        Number of unknowns, or the signal shape (an image shape is flattened internally).
    m : int
        Number of measurements (an int ≥ 1; floats such as 2.7 are refused).
    complex : bool
        Complex (default) or real Gaussian entries.
    seed, generator : reproducibility (one of them). Entry (i, k) is a pure function of
        (seed, i, k) (Philox4x32-10 and a fixed Box–Muller transform, :mod:`phasetorch.philox`), so
        the stored and the streamed modes, every ``block_rows``, every shard
        (:class:`~phasetorch.physics.ShardedGaussian`) and every device give the same A.
    streamed : bool
        Do not store A: regenerate each block of ``block_rows`` rows at every application (for m·n
        too large to hold in memory; costs one generation pass per product, on the operator's
        device: the compiled kernel on the CPU, torch ops elsewhere).
    block_rows : int ≥ 1, rows per block of a streamed product (A does not depend on it).
    dtype : real dtype of the operator, float32 (default) or float64; ``op.to(torch.float64)`` also works.

    Only A is stored (no Aᴴ copy, no pseudo-inverse). ``linear`` computes ``x @ Aᵀ`` and
    ``adjoint`` computes ``(z̄ @ A)̄``: one BLAS call each on the row-major A, with lazy
    conjugation (``A.mH @ z`` would materialise a conjugate transpose).
    """

    gaussian_design = True

    def __init__(self, n: Union[int, Sequence[int]], m: int, complex: bool = True, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, streamed: bool = False, block_rows: int = 4096,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.signal_shape = as_shape(n, "GaussianMeasurement n (unknowns, or the signal shape)")
        self.measurement_shape = (check_int(m, "GaussianMeasurement m (measurements)", 1),)
        self.is_complex = check_flag(complex, f"{type(self).__name__} complex")
        self.streamed = check_flag(streamed, "GaussianMeasurement streamed")
        self.block_rows = check_int(block_rows, "GaussianMeasurement block_rows", 1)
        dtype = parse_dtype(dtype)
        self.seed = resolve_seed(seed, generator)
        self._dtype_probe = self._dtype_probe.to(dtype)
        if not self.streamed:
            entries = self.m * self.n * (2 if self.is_complex else 1)
            check_memory(2 * entries * torch.finfo(dtype).bits / 8, f"a stored {self.m}×{self.n} Gaussian matrix",
                         "use streamed=True (blocks generated on the fly), or fewer measurements/unknowns")
            self.register_random("A", self._matrix(dtype))

    def _block_ranges(self):
        for start in range(0, self.m, self.block_rows):
            yield start, min(self.m, start + self.block_rows)

    def _matrix(self, dtype: torch.dtype, device=None) -> torch.Tensor:
        return gaussian_rows(self.seed, 0, self.m, self.n, self.is_complex, dtype, device)

    @property
    def entry_energy(self) -> float:
        return 1.0

    def matrix(self) -> torch.Tensor:
        """The m×n matrix A (generated on the fly in streamed mode)."""
        if self.streamed:
            return self._matrix(self.real_dtype, self.device)
        return self.buffer("A")

    def _blocks(self):
        if not self.streamed:
            yield 0, self.m, self.buffer("A")
            return
        for start, stop in self._block_ranges():
            yield start, stop, gaussian_rows(self.seed, start, stop - start, self.n, self.is_complex, self.real_dtype,
                                             self.device)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.signal_shape)]
        xf = x.reshape(-1, self.n)
        if not self.streamed:
            return dense_linear(xf, self.buffer("A")).reshape(*batch, self.m)
        out = [dense_linear(xf, A) for _, _, A in self._blocks()]
        z = out[0] if len(out) == 1 else torch.cat(out, -1)
        return z.reshape(*batch, self.m)

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        zf = z.reshape(-1, self.m)
        if not self.streamed:
            return dense_adjoint(zf, self.buffer("A")).reshape(*batch, *self.signal_shape)
        x = None
        for start, stop, A in self._blocks():
            part = dense_adjoint(zf[:, start:stop], A)
            x = part if x is None else x + part
        return x.reshape(*batch, *self.signal_shape)

    def kernel_matrix(self) -> Optional[torch.Tensor]:
        return None if self.streamed else self.buffer("A")

    def fuses(self, vectors: int) -> bool:
        """Streamed: always (each block is generated once instead of twice); stored: see
        :func:`~phasetorch.physics.matrix.fuse_pays`."""
        return self.streamed or fuse_pays(self.buffer("A"), vectors)

    def _linear_adjoint(self, x: torch.Tensor, fn):
        if not self.streamed:
            out = pointwise_dense_pass(self, self.buffer("A"), x, fn)     # the fused C kernel, one read of A
            if out is not None:
                return out
        if not self.fuses(x.numel() // self.n):
            return super()._linear_adjoint(x, fn)
        blocks = self._blocks() if self.streamed else row_blocks(self.buffer("A"))
        return fused_dense_pass(self, x, blocks, fn)

    def config(self) -> dict:
        return {"type": "GaussianMeasurement", "n": list(self.signal_shape), "m": self.m,
                "complex": self.is_complex, "streamed": self.streamed, "block_rows": self.block_rows,
                "seed": self.seed, "dtype": dtype_name(self.real_dtype)}
