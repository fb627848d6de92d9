r"""Sharded measurement models: every process holds only its share of the measurements.

For m·n too large for one device, the rows of A (and of y) are split over the ranks of a
:mod:`torch.distributed` group (:mod:`phasetorch.distributed`); the signal and everything of size n
is replicated. On each rank:

* ``measurement_shape`` is the shape of this rank's measurements (y and Ax are local tensors),
  ``full_measurement_shape`` that of all of them, and ``m`` counts all of them (so 1/m, δ = m/n and
  the logs are those of the whole problem);
* ``linear`` (A x) is local; ``adjoint`` and the fused ``linear_adjoint`` all-reduce their n-sized
  result, so Aᴴz is the whole operator's on every rank;
* :meth:`~phasetorch.physics.MeasurementOperator.measurement_sum`/``measurement_mean`` (the hook
  through which the losses, the preprocessings and the spectral start sum over measurements)
  all-reduce; ``gather_measurements`` all-gathers (order statistics of y: m numbers, small next to A).

The shards are exactly the rows the single-process operator has for the same seed:
:class:`ShardedGaussian` regenerates the rows [start, stop) of
:class:`~phasetorch.physics.GaussianMeasurement` (counter-based entries) locally (never the whole matrix),
:class:`ShardedCodedDiffraction` keeps the masks [start, stop) of
:class:`~phasetorch.physics.CodedDiffraction`, :class:`ShardedMatrix` a row block of a user matrix
(:meth:`ShardedMatrix.from_file` reads only those rows of a saved matrix). Hence
:func:`phasetorch.spectral_init` and :func:`phasetorch.reconstruct` return, on every rank, the
single-process result (to floating-point summation order). Without a process group (or with one
process) a sharded operator is the whole operator.

Each constructor checks that every rank was given the same configuration (seed, sizes, dtype, …)
and raises the same ValueError on all ranks otherwise. Autograd through a sharded operator is not
supported (the closed-form gradients of :mod:`phasetorch.losses` are what the solvers use).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .base import MeasurementOperator
from .coded_diffraction import MASKS, draw_masks
from .fourier import fft_dims, fft_shape
from .gaussian import gaussian_rows
from .matrix import dense_adjoint, dense_linear, fuse_pays, fused_linear_adjoint, row_blocks
from .registry import register_operator
from .. import distributed as D
from ..tensors import (Shape, abs2, as_shape, check_int, check_memory, complex_dtype_of, dtype_name, parse_dtype,
                       real_dtype_of, resolve_seed)

__all__ = ["ShardedOperator", "ShardedGaussian", "ShardedCodedDiffraction", "ShardedMatrix"]

Rows = Optional[Tuple[int, int]]


class ShardedOperator:
    """Common part of the sharded operators (a mixin listed before
    :class:`~phasetorch.physics.MeasurementOperator`): this rank's share [start, stop) of the first
    measurement dimension, the reductions over the group, the cross-rank checks.

    Subclasses set ``signal_shape``, ``is_complex``, the dtype probe and what ``config()`` reads,
    then call :meth:`_setup_shard` (which checks the configs across ranks and fixes the rows), set
    ``measurement_shape`` (local), and implement ``_local_linear``/``_local_adjoint`` (and
    optionally ``_local_linear_adjoint``) on the local rows; the reductions are added here.
    """

    sharded = True

    def _setup_shard(self, full_shape: Sequence[int], rows: Rows, group) -> Tuple[int, int]:
        """Fix the group, the full shape and this rank's rows (default: balanced); check them."""
        self.group = group
        self._full_shape = tuple(int(s) for s in full_shape)
        self.check_config()                      # first: disagreeing ranks fail here, all with the same error
        total = self._full_shape[0]
        size, me = D.world_size(group), D.rank(group)
        if total < size:
            raise ValueError(f"{type(self).__name__}: {total} measurement rows cannot be split over {size} processes "
                             f"(each needs at least one); use fewer processes or more measurements")
        if rows is None:
            start, stop = D.shard_range(total, me, size)
        else:
            start, stop = (int(r) for r in rows)
            if not 0 <= start < stop <= total:
                raise ValueError(f"{type(self).__name__}: rows must satisfy 0 ≤ start < stop ≤ {total}, got {rows}")
        shares = D.all_gather_object((start, stop), group)
        ends = [0] + [s[1] for s in shares]
        if any(s[0] != ends[i] for i, s in enumerate(shares)) or ends[-1] != total:
            raise ValueError(f"{type(self).__name__}: the ranks' rows {shares} do not cover 0..{total} in rank order "
                             f"without overlap; pass rows=None for the balanced split")
        self.rows = (start, stop)
        return start, stop

    # ------------------------------------------------------------------ sizes
    @property
    def m(self) -> int:
        """Number of measurements of all ranks together."""
        return math.prod(self._full_shape)

    @property
    def full_measurement_shape(self) -> Shape:
        return self._full_shape

    @property
    def world_size(self) -> int:
        return D.world_size(self.group)

    @property
    def rank(self) -> int:
        return D.rank(self.group)

    def check_config(self) -> None:
        """The same ValueError on every rank unless all ranks hold the same configuration."""
        D.check_same(self.config(), f"{type(self).__name__} configuration", self.group)

    # ------------------------------------------------------------------ reductions
    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return D.all_reduce_sum(t, self.group)

    def measurement_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.measurement_sum(t) * (1.0 / self.m)

    def replicate(self, t: torch.Tensor) -> torch.Tensor:
        return D.broadcast_tensor(t, 0, self.group)

    def gather_measurements(self, t: torch.Tensor) -> torch.Tensor:
        return D.all_gather_cat(t, t.dim() - len(self.measurement_shape), self.group)

    def local_measurements(self, t: torch.Tensor) -> torch.Tensor:
        k = len(self.measurement_shape)
        if t.dim() < k or tuple(t.shape[t.dim() - k:]) != self._full_shape:
            raise ValueError(f"{type(self).__name__}.local_measurements: expected a tensor of shape "
                             f"(*batch, {', '.join(map(str, self._full_shape))}), got {tuple(t.shape)}")
        start, stop = self.rows
        return t.narrow(t.dim() - k, start, stop - start)

    # ------------------------------------------------------------------ products
    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return self._local_linear(x)

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return self.reduce_sum(self._local_adjoint(z))

    def _linear_adjoint(self, x: torch.Tensor, fn):
        z, u = self._local_linear_adjoint(x, fn)
        return z, self.reduce_sum(u)

    def _local_linear_adjoint(self, x: torch.Tensor, fn):
        z = self._local_linear(x)
        v = fn(z, None)
        self.check_measurements(v)
        if self.is_complex and not v.is_complex():
            v = v.to(self.signal_dtype)
        return z, self._local_adjoint(v)

    def _local_linear(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    def _local_adjoint(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rows={self.rows} of {self._full_shape[0]}, rank={self.rank}/{self.world_size}"


class _DenseRows:
    """Flat-batch helpers of the dense sharded operators (x: (*batch, *signal), local rows m_loc)."""

    @staticmethod
    def linear(op, x, blocks):
        batch = x.shape[: x.dim() - len(op.signal_shape)]
        xf = x.reshape(-1, op.n)
        out = [dense_linear(xf, A) for _, _, A in blocks]
        z = out[0] if len(out) == 1 else torch.cat(out, -1)
        return z.reshape(*batch, op.measurement_shape[0])

    @staticmethod
    def adjoint(op, z, blocks):
        batch = z.shape[:-1]
        zf = z.reshape(-1, op.measurement_shape[0])
        acc = None
        for start, stop, A in blocks:
            part = dense_adjoint(zf[:, start:stop], A)
            acc = part if acc is None else acc + part
        return acc.reshape(*batch, *op.signal_shape)

    @staticmethod
    def fused(op, x, blocks, fn):
        batch = x.shape[: x.dim() - len(op.signal_shape)]

        def flat_fn(zb, sl):
            return fn(zb.reshape(*batch, zb.shape[-1]), sl).reshape(zb.shape)

        z, g = fused_linear_adjoint(x.reshape(-1, op.n), blocks, flat_fn)
        return z.reshape(*batch, op.measurement_shape[0]), g.reshape(*batch, *op.signal_shape)


@register_operator
class ShardedGaussian(ShardedOperator, MeasurementOperator):
    r"""This rank's rows of :class:`~phasetorch.physics.GaussianMeasurement` (same arguments, same A).

    The rows [start, stop) (``rows``; default the balanced split of :func:`phasetorch.distributed.shard_range`)
    are generated locally (entry (i, k) is a function of (seed, i, k) only, :mod:`phasetorch.philox`),
    so the union of the shards is exactly the matrix ``GaussianMeasurement(n, m, complex, seed)`` —
    for every number of processes and every ``block_rows``. ``streamed=True`` stores nothing and regenerates the local blocks at every product.
    ``generator`` is refused when the ranks' generators would give different seeds (checked).
    """

    gaussian_design = True

    def __init__(self, n: Union[int, Sequence[int]], m: int, complex: bool = True, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, streamed: bool = False, block_rows: int = 4096,
                 dtype: torch.dtype = torch.float32, group=None, rows: Rows = None) -> None:
        super().__init__()
        self.signal_shape = as_shape(n, "ShardedGaussian n (unknowns, or the signal shape)")
        m = check_int(m, "ShardedGaussian m (measurements)", 1)
        self.is_complex = bool(complex)
        self.streamed = bool(streamed)
        self.block_rows = check_int(block_rows, "ShardedGaussian block_rows", 1)
        dtype = parse_dtype(dtype)
        self.seed = resolve_seed(seed, generator)
        self._dtype_probe = self._dtype_probe.to(dtype)
        start, stop = self._setup_shard((m,), rows, group)
        self.measurement_shape = (stop - start,)
        if not self.streamed:
            entries = (stop - start) * self.n * (2 if self.is_complex else 1)
            check_memory(2 * entries * torch.finfo(dtype).bits / 8,
                         f"this rank's {stop - start}×{self.n} rows of a Gaussian matrix",
                         "use streamed=True, more processes, or fewer measurements/unknowns")
            A = torch.empty(stop - start, self.n, dtype=complex_dtype_of(dtype) if self.is_complex else dtype)
            for lo, hi, block in self._generate(dtype):          # filled in place: no second copy of the rows
                A[lo:hi] = block
            self.register_random("A", A)

    def _generate(self, dtype, device=None):
        """(local start, local stop, rows) for the local rows, ``block_rows`` at a time."""
        start, stop = self.rows
        for lo in range(start, stop, self.block_rows):
            hi = min(stop, lo + self.block_rows)
            yield lo - start, hi - start, gaussian_rows(self.seed, lo, hi - lo, self.n, self.is_complex, dtype, device)

    def _blocks(self):
        if not self.streamed:
            yield 0, self.measurement_shape[0], self.buffer("A")
            return
        for lo, hi, A in self._generate(self.real_dtype, self.device):
            yield lo, hi, A

    @property
    def entry_energy(self) -> float:
        return 1.0

    def matrix(self) -> torch.Tensor:
        """This rank's rows of A (generated on the fly in streamed mode)."""
        if self.streamed:
            return torch.cat([A for _, _, A in self._blocks()], 0)
        return self.buffer("A")

    def _local_linear(self, x):
        return _DenseRows.linear(self, x, self._blocks())

    def _local_adjoint(self, z):
        return _DenseRows.adjoint(self, z, self._blocks())

    def fuses(self, vectors: int) -> bool:
        return self.streamed or fuse_pays(self.buffer("A"), vectors)

    def _local_linear_adjoint(self, x, fn):
        if not self.fuses(x.numel() // self.n):
            return super()._local_linear_adjoint(x, fn)
        blocks = self._blocks() if self.streamed else row_blocks(self.buffer("A"))
        return _DenseRows.fused(self, x, blocks, fn)

    def config(self) -> dict:
        return {"type": "ShardedGaussian", "n": list(self.signal_shape), "m": self.m, "complex": self.is_complex,
                "streamed": self.streamed, "block_rows": self.block_rows, "seed": self.seed,
                "dtype": dtype_name(self.real_dtype)}


@register_operator
class ShardedCodedDiffraction(ShardedOperator, MeasurementOperator):
    r"""This rank's masks [start, stop) of :class:`~phasetorch.physics.CodedDiffraction` (same arguments).

    The masks are drawn as by the whole operator (all L from ``seed``, float64) and only this
    rank's are kept (a transient L·n draw at construction; afterwards L/N masks per rank).
    ``measurement_shape = (L_local, *shape)``, ``full_measurement_shape = (L, *shape)``. The
    whitening diagonal ``gram_diagonal()`` is all-reduced.
    """

    spectral_whitening = True

    def __init__(self, shape: Union[int, Sequence[int]], n_masks: int, mask: str = "octanary",
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, group=None, rows: Rows = None) -> None:
        super().__init__()
        self.signal_shape = fft_shape(shape, "ShardedCodedDiffraction")
        self.n_masks = check_int(n_masks, "ShardedCodedDiffraction n_masks (the number L of patterns)", 1)
        if mask not in MASKS:
            raise ValueError(f"ShardedCodedDiffraction: unknown mask family {mask!r}; choose one of {', '.join(MASKS)}")
        self.mask = mask
        self.is_complex = True
        dtype = parse_dtype(dtype)
        self.seed = resolve_seed(seed, generator)
        self._dtype_probe = self._dtype_probe.to(dtype)
        start, stop = self._setup_shard((self.n_masks, *self.signal_shape), rows, group)
        self.measurement_shape = (stop - start, *self.signal_shape)
        check_memory(4 * math.prod(self.full_measurement_shape) * 2 * 8, f"{self.n_masks} masks of {self.signal_shape}",
                     "use fewer masks or a smaller image")
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        masks = draw_masks(mask, self.full_measurement_shape, g)[start:stop].clone()
        self.register_random("D", masks.to(complex_dtype_of(dtype)))

    @property
    def entry_energy(self) -> float:
        return 1.0 / self.n

    def masks(self) -> torch.Tensor:
        """This rank's masks, complex, shape ``(L_local, *signal_shape)``."""
        return self.buffer("D")

    def gram_diagonal(self) -> torch.Tensor:
        """diag(AᴴA) = Σ_l |d_l|² over all masks of all ranks (all-reduced), shape ``signal_shape``."""
        d = self.masks()
        return self.reduce_sum(d.real.square().sum(0) + d.imag.square().sum(0))

    def _scaled(self):
        raw = self._buffers["D"]
        key = (raw.data_ptr(), raw._version, raw.dtype, raw.device)
        if getattr(self, "_mask_cache_key", None) != key:
            scaled = self.buffer("D") * (1.0 / math.sqrt(self.n))
            self._mask_cache = (scaled, scaled.conj().resolve_conj())
            self._mask_cache_key = key
        return self._mask_cache

    def _local_linear(self, x):
        k = len(self.signal_shape)
        forward, _ = self._scaled()
        return torch.fft.fftn(x.unsqueeze(-k - 1) * forward, dim=fft_dims(k), norm="backward")

    def _local_adjoint(self, z):
        k = len(self.signal_shape)
        _, adjoint = self._scaled()
        u = torch.fft.ifftn(z, dim=fft_dims(k), norm="forward")
        return u.mul_(adjoint).sum(dim=-k - 1)

    def config(self) -> dict:
        return {"type": "ShardedCodedDiffraction", "shape": list(self.signal_shape), "n_masks": self.n_masks,
                "mask": self.mask, "seed": self.seed, "dtype": dtype_name(self.real_dtype)}


def _load_rows(path: Union[str, Path], start: int, stop: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Rows [start, stop) of a matrix saved as .npy (memory-mapped) or .pt (``torch.save``, memory-mapped)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"ShardedMatrix.from_file: no such file {str(p)!r}")
    if p.suffix.lower() == ".npy":
        arr = np.load(p, mmap_mode="r")
        shape = tuple(arr.shape)
        if len(shape) != 2:
            raise ValueError(f"ShardedMatrix.from_file: {p} holds an array of shape {shape}, not a 2-D matrix")
        return torch.from_numpy(np.ascontiguousarray(arr[start:stop])), shape
    obj = torch.load(p, mmap=True, weights_only=True, map_location="cpu")
    if isinstance(obj, dict) and "A" in obj:
        obj = obj["A"]
    if not isinstance(obj, torch.Tensor) or obj.dim() != 2:
        raise ValueError(f"ShardedMatrix.from_file: {p} must hold a 2-D tensor (or {{'A': tensor}}), "
                         f"got {type(obj).__name__}")
    return obj[start:stop].clone(), tuple(obj.shape)


@register_operator
class ShardedMatrix(ShardedOperator, MeasurementOperator):
    r"""A row block of a user matrix A ∈ ℂ^{m×n} (or ℝ^{m×n}) per rank: the sharded
    :class:`~phasetorch.physics.MatrixMeasurement`.

    ``A_rows`` are this rank's rows [start, stop) of A (``rows``; default the balanced split of
    ``m`` total rows); :meth:`from_file` loads only them from a saved matrix. ``entry_energy`` is
    mean_ij |A_ij|² over the whole matrix (all-reduced), as the single-process operator measures it.
    """

    def __init__(self, A_rows: torch.Tensor, m: int, signal_shape: Optional[Union[int, Sequence[int]]] = None,
                 group=None, rows: Rows = None) -> None:
        super().__init__()
        if not isinstance(A_rows, torch.Tensor) or A_rows.dim() != 2:
            raise ValueError("ShardedMatrix: A_rows must be a 2-D tensor (this rank's rows of A)")
        if not (A_rows.is_floating_point() or A_rows.is_complex()) or \
                real_dtype_of(A_rows.dtype) not in (torch.float32, torch.float64):
            raise ValueError(f"ShardedMatrix: A_rows has dtype {A_rows.dtype}; use float32/float64 or complex64/complex128")
        m = check_int(m, "ShardedMatrix m (rows of the whole matrix)", 1)
        n = int(A_rows.shape[1])
        self.signal_shape = (n,) if signal_shape is None else as_shape(signal_shape)
        if self.n != n:
            raise ValueError(f"ShardedMatrix: signal_shape {self.signal_shape} has {self.n} entries but A has {n} columns")
        self.is_complex = A_rows.is_complex()
        self._dtype_probe = self._dtype_probe.to(device=A_rows.device, dtype=real_dtype_of(A_rows.dtype))
        start, stop = self._setup_shard((m,), rows, group)
        if A_rows.shape[0] != stop - start:
            raise ValueError(f"ShardedMatrix: rank {self.rank} holds rows [{start}, {stop}) but A_rows has "
                             f"{A_rows.shape[0]} rows")
        self.measurement_shape = (stop - start,)
        A_rows = A_rows.detach()
        finite = self.reduce_sum(torch.isfinite(A_rows).all().reshape(1).to(torch.float64))
        if int(finite.item()) != self.world_size:
            raise ValueError("ShardedMatrix: A contains NaN or inf (on some rank); clean the matrix first")
        self.register_random("A", A_rows)
        energy = self.reduce_sum(abs2(A_rows).double().sum().reshape(1))
        self._entry_energy = float(energy.item()) / (self.m * self.n)
        if self._entry_energy == 0.0:
            raise ValueError("ShardedMatrix: A is all zeros; it measures nothing")

    @classmethod
    def from_file(cls, path: Union[str, Path], signal_shape=None, group=None, device=None) -> "ShardedMatrix":
        """This rank's balanced share of the rows of the matrix saved at ``path`` (``.npy`` or a
        ``torch.save``'d tensor), read by memory map: only those rows are loaded."""
        size, me = D.world_size(group), D.rank(group)
        _, shape = _load_rows(path, 0, 0)
        start, stop = D.shard_range(shape[0], me, size)
        A, _ = _load_rows(path, start, stop)
        if device is not None:
            A = A.to(device)
        return cls(A, shape[0], signal_shape=signal_shape, group=group, rows=(start, stop))

    @property
    def entry_energy(self) -> float:
        return self._entry_energy

    def matrix(self) -> torch.Tensor:
        """This rank's rows of A."""
        return self.buffer("A")

    def _blocks(self):
        yield 0, self.measurement_shape[0], self.buffer("A")

    def _local_linear(self, x):
        return _DenseRows.linear(self, x, self._blocks())

    def _local_adjoint(self, z):
        return _DenseRows.adjoint(self, z, self._blocks())

    def fuses(self, vectors: int) -> bool:
        return fuse_pays(self.buffer("A"), vectors)

    def _local_linear_adjoint(self, x, fn):
        if not self.fuses(x.numel() // self.n):
            return super()._local_linear_adjoint(x, fn)
        return _DenseRows.fused(self, x, row_blocks(self.buffer("A")), fn)

    def config(self) -> dict:
        return {"type": "ShardedMatrix", "m": self.m, "n": self.n, "complex": self.is_complex,
                "signal_shape": list(self.signal_shape), "dtype": dtype_name(self.real_dtype)}

    @classmethod
    def from_config(cls, config: dict) -> "ShardedMatrix":
        """An operator of the configured shape (this rank's balanced rows); its rows come from ``load_state_dict``."""
        try:
            m, n = int(config["m"]), int(config["n"])
            dtype = parse_dtype(config.get("dtype", "float32"))
            is_complex = bool(config.get("complex", False))
        except (KeyError, TypeError) as err:
            raise ValueError(f"ShardedMatrix config needs m, n, complex and dtype, got {config!r}") from err
        start, stop = D.shard_range(m, D.rank(), D.world_size())
        placeholder = torch.ones(stop - start, n, dtype=complex_dtype_of(dtype) if is_complex else dtype)
        return cls(placeholder, m, signal_shape=config.get("signal_shape"))

