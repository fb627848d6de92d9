r"""Measurements through a user-supplied matrix (e.g. a measured optical transmission matrix)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .base import MeasurementOperator
from .kernels import adjoint as kernel_adjoint, dense_linear_adjoint as kernel_linear_adjoint
from .kernels import linear as kernel_linear, usable as kernel_usable
from ..tensors import abs2, as_device, as_shape, check_int, check_memory, complex_dtype_of, dtype_name, parse_dtype, real_dtype_of
from .registry import register_operator


def dense_linear(xf: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Rows of ``xf`` (shape (B, n)) times Aᵀ: (B, m). Handles a real A with complex x.

    On the CPU, without autograd, one read of A through the C kernel of :mod:`.kernels` (MKL's
    matrix–vector products run far below the memory bandwidth); otherwise ``torch.matmul``.
    """
    if kernel_usable(A, xf):
        return kernel_linear(A, xf)
    if not A.is_complex() and xf.is_complex():
        return torch.complex(xf.real @ A.T, xf.imag @ A.T)
    return xf @ A.T


def dense_adjoint(zf: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Aᴴz for each row z of ``zf`` (shape (B, m)) → (B, n), as (z̄ A)‾ without forming Aᴴ.

    The conjugations are lazy (conj bit), so this is one BLAS call on the row-major A (``A.mH @ z``
    would materialise a conjugate transpose). On the CPU without autograd: the C kernel (one read of A).
    """
    if kernel_usable(A, zf):
        return kernel_adjoint(A, zf)
    if A.is_complex():
        return (zf.conj() @ A).conj()
    if zf.is_complex():
        return torch.complex(zf.real @ A, zf.imag @ A)
    return zf @ A


#: a dense matrix smaller than this is applied in one BLAS call per product (it stays in cache anyway)
FUSE_MIN_BYTES = 8 * 2**20
#: size of the row blocks of a fused pass: small enough to stay in the CPU's L2/L3 cache between the
#: forward and the adjoint product of the same block
FUSE_BLOCK_BYTES = 2 * 2**20


def fuse_pays(A: torch.Tensor, vectors: int) -> bool:
    """Whether a fused forward–adjoint pass over row blocks of ``A`` pays for ``vectors`` signals at once.

    Rule: on the CPU, for two or more signals and a matrix of at least ``FUSE_MIN_BYTES`` bytes
    (a block of rows is then reused from cache by the adjoint product instead of being read from
    memory twice). Single signals (matrix–vector products are compute-bound) and GPUs (one launch
    per block) keep the two plain products.
    """
    return (A.device.type == "cpu" and vectors >= 2
            and A.numel() * A.element_size() >= FUSE_MIN_BYTES)


def row_blocks(A: torch.Tensor, block_bytes: Optional[int] = None):
    """``(start, stop, A[start:stop])`` for row blocks of about ``block_bytes`` bytes (default
    ``FUSE_BLOCK_BYTES``; at least one row each; views, no copies)."""
    m, n = A.shape
    block_bytes = FUSE_BLOCK_BYTES if block_bytes is None else int(block_bytes)
    rows = max(1, block_bytes // max(1, n * A.element_size()))
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        yield start, stop, A[start:stop]


def fused_linear_adjoint(xf: torch.Tensor, blocks, fn):
    r"""z = A x and Aᴴ fn(z) in one pass over the row blocks of A (rows of ``xf``: shape (B, n)).

    For every block A_b (``blocks`` yields ``(start, stop, A_b)``): z_b = A_b x, v_b =
    ``fn(z_b, slice(start, stop))``, accumulate A_bᴴ v_b. A block is read from memory once and
    reused from cache by the adjoint, instead of streaming the whole of A twice; ``fn`` must act
    measurement by measurement (the residual of a separable loss, a diagonal preprocessing).
    Returns ``(z, Aᴴv)`` with shapes (B, m) and (B, n).
    """
    zs, acc = [], None
    for start, stop, A in blocks:
        zb = dense_linear(xf, A)
        zs.append(zb)
        part = dense_adjoint(fn(zb, slice(start, stop)), A)
        acc = part if acc is None else acc + part
    return (zs[0] if len(zs) == 1 else torch.cat(zs, -1)), acc


def fused_dense_pass(op: MeasurementOperator, x: torch.Tensor, blocks, fn):
    """:func:`fused_linear_adjoint` for an operator with a 1-D measurement shape and any batch/signal shape."""
    batch = x.shape[: x.dim() - len(op.signal_shape)]

    def flat_fn(zb, sl):
        return fn(zb.reshape(*batch, zb.shape[-1]), sl).reshape(zb.shape)

    z, g = fused_linear_adjoint(x.reshape(-1, op.n), blocks, flat_fn)
    return z.reshape(*batch, op.m), g.reshape(*batch, *op.signal_shape)


def pointwise_dense_pass(op: MeasurementOperator, A: torch.Tensor, x: torch.Tensor, fn):
    """``(z, Aᴴ fn(z))`` in one read of the whole (stored) ``A`` through the fused C kernel when ``fn``
    carries a closed-form :class:`~phasetorch.physics.kernels.PointwiseMap` (``fn.pointwise``) and
    the kernel applies (CPU, matching contiguous dtypes, no autograd); else None."""
    if getattr(fn, "pointwise", None) is None:
        return None
    batch = op.batch_shape(x)
    out = kernel_linear_adjoint(A, x.reshape(-1, op.n), fn, batch)
    if out is None:
        return None
    z, g = out
    return z.reshape(*batch, op.m), g.reshape(*batch, *op.signal_shape)


def _refresh_energy_hook(module: "MatrixMeasurement", incompatible_keys) -> None:
    # a module-level function (not a lambda) keeps the operator picklable
    module._refresh_energy()


@register_operator
class MatrixMeasurement(MeasurementOperator):
    r"""y = |Ax|² for a given matrix A ∈ ℂ^{m×n} or ℝ^{m×n} (a measured transmission matrix, …).

    ``A`` is stored once, as given (no Aᴴ copy, no pseudo-inverse); a contiguous ``A`` is shared,
    not copied, so pass ``A.clone()`` if you will modify it in place afterwards. The operator's
    dtype and device are A's (complex64 A → ``real_dtype`` float32, ``is_complex`` True).

    ``signal_shape`` (default ``(n,)``) lets x be an image whose pixels are the n columns of A in
    row-major (``x.reshape(n)``) order.

    ``entry_energy`` is *measured*: mean_ij |A_ij|² (so ‖x‖² ≈ mean(y)/entry_energy holds when the
    rows of A are incoherent with x, as for the random models). It is recomputed when a
    ``state_dict`` is loaded.

    Products: ``linear`` computes x Aᵀ and ``adjoint`` computes (z̄ A)‾ — the same BLAS calls as
    :class:`~phasetorch.physics.GaussianMeasurement`.
    """

    def __init__(self, A: torch.Tensor, signal_shape: Optional[Union[int, Sequence[int]]] = None) -> None:
        super().__init__()
        if not isinstance(A, torch.Tensor):
            try:
                A = torch.as_tensor(A)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"MatrixMeasurement: A must be a 2-D tensor (or array), got {type(A).__name__}") from err
        if A.dim() != 2:
            raise ValueError(f"MatrixMeasurement: A must be a 2-D (m × n) matrix, got shape {tuple(A.shape)}")
        if not (A.is_floating_point() or A.is_complex()):
            raise ValueError(f"MatrixMeasurement: A has dtype {A.dtype}; convert it to a floating or complex "
                             f"dtype first (e.g. A.float() or A.to(torch.complex64))")
        if real_dtype_of(A.dtype) not in (torch.float32, torch.float64):
            raise ValueError(f"MatrixMeasurement: A has dtype {A.dtype}, but operators work in float32/float64 "
                             f"(complex64/complex128): half precision is not supported; convert it first "
                             f"(A.float() or A.to(torch.complex64))")
        as_device(A.device, "MatrixMeasurement: the device of A")       # no meta tensors (no data)
        m, n = A.shape
        if m < 1 or n < 1:
            raise ValueError(f"MatrixMeasurement: A must have at least one row and one column, got shape {tuple(A.shape)}")
        self.signal_shape = (n,) if signal_shape is None else as_shape(signal_shape, "MatrixMeasurement: signal_shape")
        if self.n != n:
            raise ValueError(f"MatrixMeasurement: signal_shape {self.signal_shape} has {self.n} entries but A has "
                             f"{n} columns; pass a signal_shape whose product is {n}")
        self.measurement_shape = (int(m),)
        self.is_complex = A.is_complex()
        A = A.detach()
        if not torch.isfinite(A).all():
            raise ValueError("MatrixMeasurement: A contains NaN or inf; clean the matrix first")
        self._dtype_probe = self._dtype_probe.to(device=A.device, dtype=real_dtype_of(A.dtype))
        self.register_random("A", A)
        self._entry_energy = self._measure_energy()
        if self._entry_energy == 0.0:
            raise ValueError("MatrixMeasurement: A is all zeros; it measures nothing")
        self.register_load_state_dict_post_hook(_refresh_energy_hook)

    def _measure_energy(self) -> float:
        A = self.buffer("A")
        return float(abs2(A).double().mean())

    def _refresh_energy(self) -> None:
        self._entry_energy = self._measure_energy()

    @property
    def entry_energy(self) -> float:
        """mean_ij |A_ij|², measured from A."""
        return self._entry_energy

    def matrix(self) -> torch.Tensor:
        """The stored m×n matrix A."""
        return self.buffer("A")

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.signal_shape)]
        z = dense_linear(x.reshape(-1, self.n), self.buffer("A"))
        return z.reshape(*batch, self.m)

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        x = dense_adjoint(z.reshape(-1, self.m), self.buffer("A"))
        return x.reshape(*batch, *self.signal_shape)

    def kernel_matrix(self) -> Optional[torch.Tensor]:
        return self.buffer("A")

    def fuses(self, vectors: int) -> bool:
        """See :func:`fuse_pays` (large A, CPU, two or more signals)."""
        return fuse_pays(self.buffer("A"), vectors)

    def _linear_adjoint(self, x: torch.Tensor, fn):
        out = pointwise_dense_pass(self, self.buffer("A"), x, fn)
        if out is not None:
            return out
        if not self.fuses(x.numel() // self.n):
            return super()._linear_adjoint(x, fn)
        return fused_dense_pass(self, x, row_blocks(self.buffer("A")), fn)

    def config(self) -> dict:
        return {"type": "MatrixMeasurement", "m": self.m, "n": self.n, "complex": self.is_complex,
                "signal_shape": list(self.signal_shape), "dtype": dtype_name(self.real_dtype)}

    @classmethod
    def from_config(cls, config: dict) -> "MatrixMeasurement":
        """An operator of the configured shape and dtype; its matrix comes from ``load_state_dict``."""
        try:
            m = check_int(config["m"], "MatrixMeasurement config m", 1)
            n = check_int(config["n"], "MatrixMeasurement config n", 1)
            dtype = parse_dtype(config.get("dtype", "float32"))
            is_complex = bool(config.get("complex", False))
        except (KeyError, TypeError) as err:
            raise ValueError(f"MatrixMeasurement config needs m, n, complex and dtype, got {config!r}") from err
        check_memory(m * n * (2 if is_complex else 1) * torch.finfo(dtype).bits / 8,
                     f"a stored {m}×{n} matrix (MatrixMeasurement config m, n)", "the file is not a usable operator")
        placeholder = torch.ones(m, n, dtype=complex_dtype_of(dtype) if is_complex else dtype)
        return cls(placeholder, signal_shape=config.get("signal_shape"))


__all__ = ["MatrixMeasurement", "dense_linear", "dense_adjoint", "fused_linear_adjoint", "fuse_pays", "row_blocks",
           "pointwise_dense_pass"]
