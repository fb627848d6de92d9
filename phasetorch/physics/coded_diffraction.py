r"""Coded diffraction patterns (CDP): random masks followed by a unitary DFT.

Candès, Li & Soltanolkotabi, "Phase retrieval from coded diffraction patterns", Appl. Comput.
Harmon. Anal. 39 (2015); used as the Fourier-type model of "Phase retrieval via Wirtinger flow"
(IEEE Trans. Inf. Theory 61, 2015).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .base import MeasurementOperator
from ..tensors import check_int, check_memory, complex_dtype_of, dtype_name, parse_dtype, resolve_seed, scratch
from .fourier import fft_dims, fft_shape
from .registry import register_operator

MASKS = ("octanary", "binary", "uniform", "gaussian")


def draw_masks(kind: str, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    r"""Masks d of shape ``shape`` (complex128), i.i.d. entries with E|d|² = 1.

    * ``"octanary"``: d = b₁b₂, b₁ uniform on {1, −1, i, −i}, b₂ = 1/√2 w.p. 4/5 and √3 w.p. 1/5
      (Candès, Li & Soltanolkotabi 2015, "octanary" masks); E d = 0, E|d|² = 1, E|d|⁴ = 2.
    * ``"binary"``: d uniform on {+1, −1}.
    * ``"uniform"``: d = e^{iθ}, θ uniform on [0, 2π).
    * ``"gaussian"``: d = (g₁ + i g₂)/√2, g₁, g₂ ~ N(0, 1).
    """
    shape = tuple(shape)
    if kind == "octanary":
        b1 = torch.tensor([1, 1j, -1, -1j], dtype=torch.complex128)[torch.randint(0, 4, shape, generator=generator)]
        b2 = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < 0.8,
                         math.sqrt(0.5), math.sqrt(3.0))
        return b1 * b2
    if kind == "binary":
        signs = 2.0 * torch.randint(0, 2, shape, generator=generator, dtype=torch.float64) - 1.0
        return signs.to(torch.complex128)
    if kind == "uniform":
        theta = 2 * math.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
        return torch.polar(torch.ones_like(theta), theta)
    if kind == "gaussian":
        g = torch.randn(*shape, 2, generator=generator, dtype=torch.float64) * math.sqrt(0.5)
        return torch.view_as_complex(g)
    raise ValueError(f"unknown mask family {kind!r}; choose one of {', '.join(MASKS)}")


@register_operator
class CodedDiffraction(MeasurementOperator):
    r"""y_{l,k} = |(F D_l x)_k|², l = 1..L: L coded diffraction patterns (Candès, Li, Soltanolkotabi 2015).

    D_l = diag(d_l) are random masks (``mask`` selects the family, see :func:`draw_masks`), F is
    the unitary DFT (``norm="ortho"``) over the signal axes: 1-D for ``shape=(n,)``, 2-D for
    ``shape=(H, W)``. All L patterns are one batched FFT call over a ``(*batch, L, *shape)`` tensor.
    ``measurement_shape = (L, *shape)``, so m = L·n and δ = L.

    Adjoint: Aᴴz = Σ_l conj(d_l) ⊙ F⁻¹(z_l) (exact; F⁻¹ = Fᴴ for the unitary DFT).

    Scale: |A_{(l,k), j}|² = |d_{l,j}|²/n, so ``entry_energy = E|d|²/n = 1/n`` for all four
    families (E|d|² = 1), and E y = ‖x‖²/n per pattern entry (Parseval: Σ_k y_{l,k} = ‖d_l ⊙ x‖²;
    exact for the unit-modulus ``binary``/``uniform`` masks, in expectation for the others).

    Always complex: real signals are promoted to complex. The masks are a buffer (``op.masks()``)
    drawn in float64 from ``seed``/``generator`` (so float32 and float64 operators share them).

    The pixels are not covered evenly (Σ_l |d_l|² varies), so :func:`phasetorch.spectral_init`
    whitens the spectral matrix by default (``spectral_whitening = True``, :meth:`gram_diagonal`).
    """

    spectral_whitening = True

    def __init__(self, shape: Union[int, Sequence[int]], n_masks: int, mask: str = "octanary",
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.signal_shape = fft_shape(shape, "CodedDiffraction")
        self.n_masks = check_int(n_masks, "CodedDiffraction n_masks (the number L of patterns)", 1)
        if mask not in MASKS:
            raise ValueError(f"CodedDiffraction: unknown mask family {mask!r}; choose one of {', '.join(MASKS)}")
        self.mask = mask
        self.measurement_shape = (self.n_masks, *self.signal_shape)
        self.is_complex = True
        dtype = parse_dtype(dtype)
        self.seed = resolve_seed(seed, generator)
        self._dtype_probe = self._dtype_probe.to(dtype)
        check_memory(4 * math.prod(self.measurement_shape) * 2 * 8, f"{self.n_masks} masks of {self.signal_shape}",
                     "use fewer n_masks= or a smaller shape=")
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        self.register_random("D", draw_masks(mask, self.measurement_shape, g).to(complex_dtype_of(dtype)))

    @property
    def entry_energy(self) -> float:
        """E|A_ij|² = E|d|²/n = 1/n (n = number of pixels of one signal)."""
        return 1.0 / self.n

    def masks(self) -> torch.Tensor:
        """The L masks, complex, shape ``(L, *signal_shape)``."""
        return self.buffer("D")

    def gram_diagonal(self) -> torch.Tensor:
        """diag(AᴴA) = Σ_l |d_l|² per pixel (F unitary); shape ``signal_shape``, real.

        Used by :func:`phasetorch.spectral_init` to whiten the spectral matrix (on by default here).
        """
        d = self.masks()
        return d.real.square().sum(0) + d.imag.square().sum(0) if d.is_complex() else d.square().sum(0)

    def _scaled_masks(self):
        """(D/√n, conj(D)/√n), cached until the mask buffer changes (dtype, device, in-place edits).

        Folding the unitary FFT's 1/√n into the masks saves two scaling passes per product and the
        conjugation of the masks in the adjoint.
        """
        raw = self.D
        key = (raw.data_ptr(), raw._version, raw.dtype, raw.device)
        if getattr(self, "_mask_cache_key", None) != key:
            scaled = self.buffer("D") * (1.0 / math.sqrt(self.n))
            self._mask_cache = (scaled, scaled.conj().resolve_conj())
            self._mask_cache_key = key
        return self._mask_cache

    def _work_for(self, batch, t: torch.Tensor) -> Optional[torch.Tensor]:
        """The reused ``(*batch, L, *shape)`` work buffer of a product on ``t``
        (:func:`~phasetorch.tensors.scratch`), or None when ``t`` or the masks are being differentiated
        (autograd, forward AD, torch.func) or ``t`` is not on the CPU: then the product allocates."""
        return scratch(self, "work", (*batch, *self.measurement_shape), t, self.D)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.signal_shape)
        forward_masks, _ = self._scaled_masks()
        w = self._work_for(x.shape[:x.dim() - k], x)
        if w is None:
            return torch.fft.fftn(x.unsqueeze(-k - 1) * forward_masks, dim=fft_dims(k), norm="backward")
        torch.mul(x.unsqueeze(-k - 1), forward_masks, out=w)          # D x into the reused buffer
        return torch.fft.fftn(w, dim=fft_dims(k), norm="backward")   # the one fresh L·n tensor: the result

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        # No work buffer here: torch's CPU FFT with out= computes into a fresh tensor and copies it
        # (measured 0.3 ms slower at 8×256×256), so the inverse DFT's own result is the one L·n tensor.
        k = len(self.signal_shape)
        _, adjoint_masks = self._scaled_masks()
        u = torch.fft.ifftn(z, dim=fft_dims(k), norm="forward")   # unscaled inverse DFT
        if torch.is_grad_enabled() and z.requires_grad:
            return (u * adjoint_masks).sum(dim=-k - 1)
        return u.mul_(adjoint_masks).sum(dim=-k - 1)               # in place: no second L·n buffer

    def config(self) -> dict:
        return {"type": "CodedDiffraction", "shape": list(self.signal_shape), "n_masks": self.n_masks,
                "mask": self.mask, "seed": self.seed, "dtype": dtype_name(self.real_dtype)}


__all__ = ["CodedDiffraction", "draw_masks", "MASKS"]
