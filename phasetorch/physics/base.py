"""Common machinery of the forward measurement models.

Every operator maps a signal x (shape ``(*batch, *signal_shape)``) to measurements Ax (shape
``(*batch, *measurement_shape)``) and intensities y = |Ax|². Leading dimensions are batch
dimensions and are never mixed: a batch gives exactly what single calls give.

Scaling convention (phasetorch's one convention, see README "Conventions"):
``op.entry_energy`` is the mean squared modulus of an entry of A, E|A_ij|² = E‖a_i‖²/n. For the
dense Gaussian model it is 1, so E y_i = ‖x‖²; for unitary-FFT models it is about 1/n. Hence
``‖x‖² ≈ mean(y) / op.entry_energy`` for every operator, and the losses of :mod:`phasetorch.losses`
work with the normalised pair (A/√e, y/e), e = entry_energy, so that one step size means the same
thing on every operator.

Complex random parts are stored as real tensors with a trailing dimension of 2
(:func:`torch.view_as_real`) so that ``op.to(torch.float64)``, ``op.double()`` and ``state_dict()``
keep them complex (plain ``nn.Module.to`` would drop imaginary parts of complex buffers).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..tensors import Shape, abs2, complex_dtype_of, mean_dims, parse_dtype, real_dtype_of, sum_dims
from .kernels import apply_map, map_applies


class MeasurementOperator(nn.Module):
    """Base class of all forward models: ``linear`` (A), ``adjoint`` (Aᴴ), ``forward`` (|A·|²).

    Subclasses set ``signal_shape``, ``measurement_shape``, ``is_complex`` and ``entry_energy`` and
    implement ``_linear`` / ``_adjoint`` on tensors whose trailing dimensions have already been
    checked. They register their random parts with :meth:`register_random` so that dtype/device
    moves work for complex parts too.
    """

    signal_shape: Shape
    measurement_shape: Shape
    is_complex: bool
    #: whether :func:`phasetorch.init.spectral.spectral_init` whitens the spectral matrix by default
    #: (W = diag(AᴴA)/(m·e), needs ``gram_diagonal()``); True for coded diffraction masks
    spectral_whitening: bool = False
    #: i.i.d. Gaussian rows (the design the papers' spectral preprocessings and step sizes assume)
    gaussian_design: bool = False
    #: whether the measurements are split over processes (:mod:`phasetorch.physics.sharded`): then
    #: ``measurement_shape`` is this process's share and the ``measurement_*`` reductions below sum
    #: over every process; False here (this operator holds all of its measurements)
    sharded: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)

    # ------------------------------------------------------------------ buffers and dtypes
    def _apply(self, fn, recurse=True):
        """Module conversions (``.to``, ``.double()``, ``.cuda()``, …) never make a real tensor complex.

        ``op.to(torch.complex64)`` (also through a parent module) therefore acts as
        ``op.to(torch.float32)``: plain ``nn.Module`` would turn the real views of complex buffers
        (and the dtype probe) into complex tensors and break the operator. A conversion to half
        precision (``.half()``, ``.to(torch.bfloat16)``) is refused before anything is converted.
        """
        def keep_real(t):
            out = fn(t)
            if isinstance(out, torch.Tensor) and out.is_complex() and not t.is_complex():
                out = t.to(device=out.device, dtype=real_dtype_of(out.dtype))
            return out
        probe = self._buffers.get("_dtype_probe")
        if probe is not None:
            moved = keep_real(probe)
            if isinstance(moved, torch.Tensor) and moved.dtype != probe.dtype:
                parse_dtype(moved.dtype)                  # ValueError for float16 / bfloat16
        return super()._apply(keep_real, recurse)

    def to(self, *args, **kwargs):
        """``nn.Module.to`` with a complex dtype read as its real dtype (complex128 → float64)."""
        args = tuple(real_dtype_of(a) if isinstance(a, torch.dtype) else a for a in args)
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs["dtype"] = real_dtype_of(kwargs["dtype"])
        return super().to(*args, **kwargs)

    def register_random(self, name: str, tensor: torch.Tensor) -> None:
        """Register a (possibly complex) tensor as a buffer, complex ones as a real view."""
        if tensor.is_complex():
            tensor = torch.view_as_real(tensor.contiguous()).contiguous()
            self._complex_buffers = getattr(self, "_complex_buffers", set()) | {name}
        self.register_buffer(name, tensor)

    def buffer(self, name: str) -> torch.Tensor:
        """A registered random part, complex again if it was complex."""
        t = self._buffers[name] if name in self._buffers else getattr(self, name)
        if name in self.__dict__.get("_complex_buffers", ()):
            # the complex view is cached for as long as the buffer object stays the same
            # (``.to()`` replaces it; in-place changes show through the view)
            cache = self.__dict__.setdefault("_complex_views", {})
            hit = cache.get(name)
            if hit is not None and hit[0] is t:
                return hit[1]
            view = torch.view_as_complex(t)
            cache[name] = (t, view)
            return view
        return t

    @property
    def real_dtype(self) -> torch.dtype:
        """The operator's real floating dtype (float32 by default; follows ``.to(dtype)``)."""
        return self._buffers["_dtype_probe"].dtype

    @property
    def device(self) -> torch.device:
        return self._buffers["_dtype_probe"].device

    @property
    def signal_dtype(self) -> torch.dtype:
        """Natural dtype of the unknown: complex for complex operators, real otherwise."""
        return complex_dtype_of(self.real_dtype) if self.is_complex else self.real_dtype

    @property
    def n(self) -> int:
        """Number of unknowns (product of ``signal_shape``)."""
        return math.prod(self.signal_shape)

    @property
    def m(self) -> int:
        """Number of measurements (product of ``measurement_shape``; for a sharded operator, the
        measurements of every process, ``prod(full_measurement_shape)``)."""
        return math.prod(self.measurement_shape)

    @property
    def full_measurement_shape(self) -> Shape:
        """Shape of all the measurements of one sample (``measurement_shape`` unless sharded)."""
        return tuple(self.measurement_shape)

    @property
    def delta(self) -> float:
        """Oversampling ratio δ = m / n."""
        return self.m / self.n

    @property
    def entry_energy(self) -> float:
        """E|A_ij|²: mean squared modulus of an entry, so that ‖x‖² ≈ mean(y)/entry_energy."""
        raise NotImplementedError  # abstract: every subclass defines its own

    @property
    def row_energy(self) -> float:
        """E‖a_i‖² = n · entry_energy (mean energy of one measurement vector)."""
        return self.n * self.entry_energy

    # ------------------------------------------------------------------ checks
    def _check(self, t: torch.Tensor, shape: Shape, what: str) -> None:
        probe = self._buffers["_dtype_probe"]
        if (isinstance(t, torch.Tensor) and t.device == probe.device and t.dim() >= len(shape)
                and tuple(t.shape[t.dim() - len(shape):]) == shape
                and (t.dtype == probe.dtype or real_dtype_of(t.dtype) == probe.dtype)):
            return                                                   # the common case, checked in one go
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor {what}, got {type(t).__name__}")
        k = len(shape)
        if t.dim() < k or tuple(t.shape[t.dim() - k:]) != shape:
            raise ValueError(
                f"{type(self).__name__}: expected a {what} of shape (*batch, {', '.join(map(str, shape))}), "
                f"got shape {tuple(t.shape)}")
        if t.device != self.device:
            raise ValueError(
                f"{type(self).__name__}: {what} is on {t.device} but the operator is on {self.device}; "
                f"move one of them (op.to(device) or tensor.to(device))")
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{type(self).__name__}: {what} must be a floating-point or complex tensor, got {t.dtype}")
        if real_dtype_of(t.dtype) != self.real_dtype:
            raise ValueError(
                f"{type(self).__name__}: {what} has dtype {t.dtype} but the operator works in {self.real_dtype}; "
                f"convert one of them (op.to({real_dtype_of(t.dtype)}) or tensor.to({self.signal_dtype}))")

    def check_signal(self, x: torch.Tensor) -> None:
        self._check(x, self.signal_shape, "signal")

    def check_measurements(self, y: torch.Tensor) -> None:
        self._check(y, self.measurement_shape, "measurement")

    def batch_shape(self, x: torch.Tensor) -> Shape:
        return tuple(x.shape[: x.dim() - len(self.signal_shape)])

    # ------------------------------------------------------------------ public interface
    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Ax for x of shape ``(*batch, *signal_shape)`` → ``(*batch, *measurement_shape)``."""
        self.check_signal(x)
        if self.is_complex and not x.is_complex():
            x = x.to(self.signal_dtype)
        return self._linear(x)

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """Aᴴz for z of shape ``(*batch, *measurement_shape)`` → ``(*batch, *signal_shape)``."""
        self.check_measurements(z)
        if self.is_complex and not z.is_complex():
            z = z.to(self.signal_dtype)
        return self._adjoint(z)

    def linear_adjoint(self, x: torch.Tensor, fn) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""``(z, Aᴴ fn(z, None))`` with z = Ax, computed in one pass over A where that pays.

        ``fn(z_part, index)`` must act measurement by measurement (v_i depends on z_i only, as
        the residual of a separable loss or a spectral preprocessing T(y_i)·z_i): ``index`` is
        ``None`` when ``z_part`` is all of z, else a ``slice`` of the last measurement dimension
        telling which measurements ``z_part`` holds. Dense operators on CPU
        (:class:`~phasetorch.physics.GaussianMeasurement`, :class:`~phasetorch.physics.MatrixMeasurement`)
        then go through A in row blocks that stay in cache between the forward and the adjoint
        product (half the memory traffic of ``adjoint(fn(linear(x)))``; for a streamed Gaussian
        operator, half the random-number generation); other operators apply the two products in turn.
        The result equals ``(linear(x), adjoint(fn(linear(x), None)))`` up to summation order.
        """
        self.check_signal(x)
        if self.is_complex and not x.is_complex():
            x = x.to(self.signal_dtype)
        return self._linear_adjoint(x, fn)

    def kernel_matrix(self) -> Optional[torch.Tensor]:
        """The stored row-major m×n matrix that :meth:`linear_adjoint` hands to the fused dense C kernel
        when a pointwise map applies (:mod:`~phasetorch.physics.kernels`), or None (every operator
        without a stored dense A). A loss uses it to prepare its evaluation once per run
        (:meth:`~phasetorch.losses.PhaseRetrievalLoss.evaluator`)."""
        return None

    def fuses(self, vectors: int) -> bool:
        """Whether :meth:`linear_adjoint` on ``vectors`` signals at once costs less than
        ``linear`` followed by ``adjoint`` (False here: this operator applies them in turn)."""
        return False

    def _linear_adjoint(self, x: torch.Tensor, fn) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self._linear(x)
        spec = getattr(fn, "pointwise", None)
        if map_applies(z, spec):        # a closed-form map on the CPU: one C pass over z instead of torch's ten
            v = apply_map(z, spec, len(self.measurement_shape), rescale=spec.rescale and z.is_contiguous())
        else:
            v = fn(z, None)
        self.check_measurements(v)
        if self.is_complex and not v.is_complex():
            v = v.to(self.signal_dtype)
        return z, self._adjoint(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Intensities y = |Ax|² (real, ≥ 0)."""
        z = self.linear(x)
        return abs2(z)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError  # abstract

    # ------------------------------------------------------------------ sums over the measurements
    # The one hook through which losses, preprocessings and the spectral start sum over measurements:
    # plain sums here; a sharded operator (phasetorch.physics.sharded) adds the other processes' parts.
    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over the processes holding parts of the measurements of a partial sum ``t`` (any shape;
        ``t`` itself here). Sharded operators all-reduce it (and their ``adjoint`` already does)."""
        return t

    def measurement_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over all measurements (the trailing ``len(measurement_shape)`` dimensions) of ``t``."""
        return self.reduce_sum(sum_dims(t, len(self.measurement_shape)))

    def measurement_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over all ``m`` measurements (the trailing ``len(measurement_shape)`` dimensions) of ``t``."""
        return mean_dims(t, len(self.measurement_shape))

    def gather_measurements(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (``(*batch, *measurement_shape)``) with every process's measurements, in order:
        ``(*batch, *full_measurement_shape)`` (``t`` itself here). For order statistics (top fractions,
        quantiles) that sums cannot give."""
        return t

    def replicate(self, t: torch.Tensor) -> torch.Tensor:
        """The same ``t`` on every process holding measurements (rank 0's; ``t`` itself here): for
        n-sized values drawn without a seed, so that every process starts from the same point."""
        return t

    def local_measurements(self, t: torch.Tensor) -> torch.Tensor:
        """This process's part ``(*batch, *measurement_shape)`` of a tensor of all measurements
        ``(*batch, *full_measurement_shape)`` (``t`` itself here)."""
        return t

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this operator with ``state_dict``.

        Always contains ``"type"`` (the class name, the key of :mod:`phasetorch.physics.io`'s
        registry) and ``"dtype"`` (e.g. ``"float32"``).
        """
        raise NotImplementedError  # abstract

    @classmethod
    def from_config(cls, config: dict) -> "MeasurementOperator":
        """Rebuild an operator from :meth:`config` (load its ``state_dict`` afterwards for stored parts)."""
        kwargs = {k: v for k, v in config.items() if k != "type"}
        if "dtype" in kwargs:
            kwargs["dtype"] = parse_dtype(kwargs["dtype"])
        return cls(**kwargs)

    def extra_repr(self) -> str:
        return (f"signal_shape={self.signal_shape}, measurement_shape={self.measurement_shape}, "
                f"complex={self.is_complex}, dtype={self.real_dtype}")
