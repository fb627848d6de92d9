r"""Oversampled Fourier magnitudes: the classic coherent-diffraction-imaging (CDI) model.

Shared helpers for the FFT-based operators (:mod:`.coded_diffraction`, :mod:`.structured`) live
here too: shape and oversampling validation, zero padding (at the end of each axis) and cropping.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from .base import MeasurementOperator
from ..tensors import Shape, as_shape, dtype_name, parse_dtype
from .registry import register_operator

Oversampling = Union[int, Sequence[int]]


def fft_shape(shape: Union[int, Sequence[int]], who: str) -> Shape:
    """Validate a 1-D ``(n,)`` or 2-D ``(H, W)`` signal shape of positive sizes."""
    try:
        shape = as_shape(shape)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: shape must be an int n, (n,) or (H, W), got {shape!r}") from None
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f"{who}: shape must be (n,) for 1-D or (H, W) for 2-D signals with positive sizes, "
                         f"got {shape}")
    return shape


def oversampling_factors(oversampling: Oversampling, ndim: int, who: str) -> Shape:
    """An int ≥ 1, or one int ≥ 1 per axis, → a tuple of ``ndim`` per-axis factors."""
    if isinstance(oversampling, bool):
        raise ValueError(f"{who}: oversampling must be an int ≥ 1 or one int ≥ 1 per axis, got {oversampling!r}")
    if isinstance(oversampling, (int,)) or (isinstance(oversampling, float) and float(oversampling).is_integer()):
        factors = (int(oversampling),) * ndim
    elif isinstance(oversampling, (tuple, list)):
        if len(oversampling) != ndim:
            raise ValueError(f"{who}: oversampling needs one factor per axis ({ndim}), got {oversampling!r}")
        factors = []
        for o in oversampling:
            if isinstance(o, bool) or not (isinstance(o, int) or (isinstance(o, float) and float(o).is_integer())):
                raise ValueError(f"{who}: oversampling factors must be integers ≥ 1, got {oversampling!r}")
            factors.append(int(o))
        factors = tuple(factors)
    else:
        raise ValueError(f"{who}: oversampling must be an int ≥ 1 or one int ≥ 1 per axis, got {oversampling!r}")
    if min(factors) < 1:
        raise ValueError(f"{who}: oversampling factors must be ≥ 1, got {oversampling!r}")
    return factors


def fft_dims(ndim: int) -> Tuple[int, ...]:
    """The trailing dimensions the FFT acts on."""
    return tuple(range(-ndim, 0))


def crop(u: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The leading ``shape`` corner of the trailing dimensions of ``u`` (adjoint of zero padding)."""
    index = (Ellipsis,) + tuple(slice(0, s) for s in shape)
    return u[index]


def zero_pad(x: torch.Tensor, padded_shape: Shape) -> torch.Tensor:
    """Zero-pad the trailing dimensions of ``x`` at their ends up to ``padded_shape``."""
    pads = []
    for s, p in zip(reversed(x.shape[x.dim() - len(padded_shape):]), reversed(padded_shape)):
        pads += [0, p - s]
    return torch.nn.functional.pad(x, pads)


@register_operator
class OversampledFourier(MeasurementOperator):
    r"""Far-field (Fraunhofer) diffraction intensities y = |F(pad x)|² — classic CDI.

    The object x (shape ``(n,)`` or ``(H, W)``) is zero-padded at the end of each axis to
    ``oversampling × shape`` (per axis) and transformed by the unitary DFT F (``norm="ortho"``);
    ``measurement_shape`` is the padded shape. The adjoint is ``crop(F⁻¹ z)``, exactly.
    Oversampling ≥ 2 per axis satisfies Sayre/Miao's sampling condition (σ = padded size / object
    size > 2 for 2-D), Miao, Charalambous, Kirz & Sayre, Nature 400 (1999); Fienup, Appl. Opt.
    21 (1982) for the error-reduction/HIO algorithms that use this model.

    Deterministic (no random parts). Always complex (``signal_dtype`` is complex; real objects are
    accepted and promoted). Every entry of A has modulus 1/√N, N = padded size, so
    ``entry_energy = 1/N`` exactly and mean(y) = ‖x‖²/N (Parseval).

    **Support.** The signal *is* the unpadded object: the known-zero region of CDI is the padding,
    already built into A. A support constraint on the object itself (e.g. a tight mask inside the
    H×W box) is a boolean mask of ``signal_shape`` applied in the signal domain. :meth:`support_mask`
    gives the object's region inside the padded grid, for algorithms that iterate on padded images.

    **Ambiguities.** Besides the global phase, Fourier magnitudes cannot distinguish translations
    of the object inside the padded grid (circular shifts) nor the conjugate twin x̄(−r); metrics
    of :mod:`phasetorch.metrics` only remove the global phase.
    """

    def __init__(self, shape: Union[int, Sequence[int]], oversampling: Oversampling = 2,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.signal_shape = fft_shape(shape, "OversampledFourier")
        self.oversampling = oversampling_factors(oversampling, len(self.signal_shape), "OversampledFourier")
        self.measurement_shape = tuple(o * s for o, s in zip(self.oversampling, self.signal_shape))
        self.is_complex = True
        self._dtype_probe = self._dtype_probe.to(parse_dtype(dtype))

    @property
    def entry_energy(self) -> float:
        """|A_ij|² = 1/N for every entry (N = padded size = ``m``)."""
        return 1.0 / self.m

    def support_mask(self) -> torch.Tensor:
        """Boolean mask of ``measurement_shape`` (the padded grid), True on the object's region."""
        mask = torch.zeros(self.measurement_shape, dtype=torch.bool, device=self.device)
        mask[tuple(slice(0, s) for s in self.signal_shape)] = True
        return mask

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad a signal ``(*batch, *signal_shape)`` to the padded grid."""
        self.check_signal(x)
        return zero_pad(x, self.measurement_shape)

    def crop(self, u: torch.Tensor) -> torch.Tensor:
        """The object region ``(*batch, *signal_shape)`` of a padded image ``(*batch, *measurement_shape)``."""
        self.check_measurements(u)
        return crop(u, self.signal_shape)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        # fftn with s= zero-pads at the end; "ortho" normalises by the padded size.
        return torch.fft.fftn(x, s=self.measurement_shape, dim=fft_dims(len(self.signal_shape)), norm="ortho")

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.fft.ifftn(z, dim=fft_dims(len(self.signal_shape)), norm="ortho")
        return crop(u, self.signal_shape)

    def config(self) -> dict:
        return {"type": "OversampledFourier", "shape": list(self.signal_shape),
                "oversampling": list(self.oversampling), "dtype": dtype_name(self.real_dtype)}


__all__ = ["OversampledFourier"]
