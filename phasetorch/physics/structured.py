r"""Structured random measurements: products of unitary DFTs and random-phase diagonals.

A = F D_K ⋯ F D_2 F D_1 P, with P the zero-padding of x to the oversampled grid. Each F D_k is
unitary, so A has orthonormal columns (a column-subsampled unitary matrix). A few layers already
behave like a Haar-distributed unitary for spectral and AMP-type methods while costing
O(K·N log N) per product — the fast surrogate of "random orthogonal / sub-sampled Haar" sensing
studied by Dudeja, Bakhshizadeh, Ma & Maleki, "Analysis of spectral methods for phase retrieval
with random orthogonal matrices", IEEE Trans. Inf. Theory 66 (2020).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .base import MeasurementOperator
from ..tensors import check_int, check_memory, complex_dtype_of, dtype_name, parse_dtype, resolve_seed
from .fourier import Oversampling, crop, fft_dims, fft_shape, oversampling_factors
from .registry import register_operator


@register_operator
class StructuredRandom(MeasurementOperator):
    r"""y = |F D_K ⋯ F D_1 pad(x)|²: K layers of random-phase diagonals and unitary DFTs.

    ``shape`` is ``(n,)`` (1-D) or ``(H, W)`` (2-D). x is first zero-padded at the end of each
    axis to ``oversampling × shape`` (an int ≥ 1 or one int per axis), the padded grid of size N;
    then, for k = 1..K (``n_layers``), multiplied by D_k = diag(e^{iθ_k}), θ_k i.i.d. uniform on
    [0, 2π), and transformed by the unitary DFT F (``norm="ortho"``) over the signal axes.
    ``measurement_shape`` is the padded shape: m = N, δ = N/n = ∏ oversampling.

    Adjoint: Aᴴz = crop(D̄_1 F⁻¹ D̄_2 F⁻¹ ⋯ D̄_K F⁻¹ z) (exact: every factor is unitary and crop is
    the adjoint of zero padding).

    Scale: A has orthonormal columns, so ‖Ax‖ = ‖x‖, Σ_ij |A_ij|² = n and
    ``entry_energy = 1/N`` exactly; mean(y) = ‖x‖²/N for every x.

    Always complex (real signals are promoted). The phases are buffers drawn in float64 from
    ``seed``/``generator`` (float32 and float64 operators share them).
    """

    def __init__(self, shape: Union[int, Sequence[int]], n_layers: int = 2, oversampling: Oversampling = 1,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.signal_shape = fft_shape(shape, "StructuredRandom")
        self.n_layers = check_int(n_layers, "StructuredRandom n_layers", 1)
        self.oversampling = oversampling_factors(oversampling, len(self.signal_shape), "StructuredRandom")
        self.measurement_shape = tuple(o * s for o, s in zip(self.oversampling, self.signal_shape))
        self.is_complex = True
        dtype = parse_dtype(dtype)
        self.seed = resolve_seed(seed, generator)
        self._dtype_probe = self._dtype_probe.to(dtype)
        check_memory(4 * self.n_layers * math.prod(self.measurement_shape) * 8,
                     f"{self.n_layers} random layers of {self.measurement_shape}",
                     "use fewer n_layers=, a smaller oversampling= or a smaller shape=")
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        theta = 2 * math.pi * torch.rand(self.n_layers, *self.measurement_shape, generator=g, dtype=torch.float64)
        self.register_random("D", torch.polar(torch.ones_like(theta), theta).to(complex_dtype_of(dtype)))

    @property
    def entry_energy(self) -> float:
        """E|A_ij|² = 1/N, N = padded size (= ``m``); exact since A has orthonormal columns."""
        return 1.0 / self.m

    def diagonals(self) -> torch.Tensor:
        """The K random-phase diagonals, complex, shape ``(K, *measurement_shape)``."""
        return self.buffer("D")

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.signal_shape)
        dims = fft_dims(k)
        D = self.buffer("D")
        # F D_1 pad(x) = fftn(D_1[:n] ⊙ x, s=N): the padding is done by the FFT itself.
        u = torch.fft.fftn(x * crop(D[0], self.signal_shape), s=self.measurement_shape, dim=dims, norm="ortho")
        for layer in range(1, self.n_layers):
            u = torch.fft.fftn(u * D[layer], dim=dims, norm="ortho")
        return u

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        k = len(self.signal_shape)
        dims = fft_dims(k)
        D = self.buffer("D")
        u = z
        for layer in range(self.n_layers - 1, 0, -1):
            u = torch.fft.ifftn(u, dim=dims, norm="ortho") * D[layer].conj()
        u = crop(torch.fft.ifftn(u, dim=dims, norm="ortho"), self.signal_shape)
        return u * crop(D[0], self.signal_shape).conj()

    def config(self) -> dict:
        return {"type": "StructuredRandom", "shape": list(self.signal_shape), "n_layers": self.n_layers,
                "oversampling": list(self.oversampling), "seed": self.seed, "dtype": dtype_name(self.real_dtype)}


__all__ = ["StructuredRandom"]
