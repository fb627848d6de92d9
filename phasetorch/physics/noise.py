r"""Measurement noise models (``nn.Module``\ s mapping clean intensities y to noisy ones).

Both act per sample: the trailing ``event_dims`` dimensions of y form one sample's measurements
(use ``event_dims=len(op.measurement_shape)``, e.g. 3 for coded diffraction patterns (L, H, W)),
and leading dimensions are batch. Randomness comes from ``seed=`` or ``generator=`` (one stream
that advances with every call: two modules built with the same seed give the same sequence of
noise). Noise is drawn in float64 on the generator's device (the CPU unless you pass a device
generator) and then cast and moved to y's dtype and device, so CPU and GPU runs with the same seed
see the same noise.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..tensors import make_generator


def _event_dims(y: torch.Tensor, event_dims: int, who: str) -> Tuple[int, ...]:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{who}: expected intensities as a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(f"{who}: intensities must be a real floating tensor, got {y.dtype} "
                         f"(pass op(x), not op.linear(x))")
    if isinstance(event_dims, bool) or not isinstance(event_dims, int) or not 1 <= event_dims <= y.dim():
        raise ValueError(f"{who}: event_dims must be an int between 1 and y.dim()={y.dim()} "
                         f"(use len(op.measurement_shape)), got {event_dims!r}")
    return tuple(range(y.dim() - event_dims, y.dim()))


def _positive(value: float, name: str, who: str, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{who}: {name} must be a finite number {'≥' if allow_zero else '>'} 0, got {value}")
    return value


class PoissonNoise(nn.Module):
    r"""Shot noise at a fixed photon budget: ỹ = N / s, N ~ Poisson(s·y), s = photons / Σ_i y_i.

    Per sample, y is scaled so that its expected total photon count is ``photons``, Poisson counts
    are drawn, and the counts are scaled back to intensity units. So E ỹ = y (an unbiased estimate
    of the clean intensities), Var ỹ_i = y_i / s, and the relative noise of a sample is set by
    ``photons`` alone, whatever its brightness. A sample with Σ y = 0 stays 0. (The usual CDI /
    ptychography noise model, e.g. Thibault & Guizar-Sicairos, New J. Phys. 14 (2012).)

    ``forward(y, event_dims=None)`` returns ỹ (dtype and device of y; no gradient flows through
    the draw); :meth:`counts` returns the raw counts N and the scale s.
    """

    def __init__(self, photons: float, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 event_dims: int = 1) -> None:
        super().__init__()
        self.photons = _positive(photons, "photons", "PoissonNoise")
        self.event_dims = event_dims
        self.generator = make_generator(seed, generator)

    def counts(self, y: torch.Tensor, event_dims: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, s): photon counts N (float64, y's shape) and per-sample scales s (shape batch + 1s)."""
        dims = _event_dims(y, self.event_dims if event_dims is None else event_dims, "PoissonNoise")
        if not torch.isfinite(y).all():
            raise ValueError("PoissonNoise: intensities contain NaN or inf")
        if (y < 0).any():
            raise ValueError("PoissonNoise: intensities must be ≥ 0 (Poisson rates); clamp y at 0 first")
        device = self.generator.device
        with torch.no_grad():
            y64 = y.detach().to(device=device, dtype=torch.float64)
            total = y64.sum(dim=dims, keepdim=True)
            scale = torch.where(total > 0, self.photons / total.clamp(min=torch.finfo(torch.float64).tiny),
                                torch.zeros_like(total))
            n = torch.poisson(y64 * scale, generator=self.generator)
        return n, scale

    def forward(self, y: torch.Tensor, event_dims: Optional[int] = None) -> torch.Tensor:
        n, scale = self.counts(y, event_dims)
        noisy = torch.where(scale > 0, n / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(n))
        return noisy.to(device=y.device, dtype=y.dtype)

    def extra_repr(self) -> str:
        return f"photons={self.photons:g}, event_dims={self.event_dims}"


class GaussianNoise(nn.Module):
    r"""Additive white Gaussian noise: ỹ = y + σ ε, ε ~ N(0, 1) i.i.d.

    With ``relative=True`` the standard deviation is σ · mean(y) per sample (mean over the
    ``event_dims`` trailing dimensions), i.e. σ is a noise-to-signal ratio. Noisy intensities may
    be negative; that is deliberate (the model of the noisy-intensity theory, link
    ``noisy_intensity``); clamp them yourself if an algorithm needs y ≥ 0. Preprocessing
    functions handle y ≤ 0 (see :mod:`phasetorch.init.preprocessing`).
    """

    def __init__(self, sigma: float, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 relative: bool = False, event_dims: int = 1) -> None:
        super().__init__()
        self.sigma = _positive(sigma, "sigma", "GaussianNoise", allow_zero=True)
        self.relative = bool(relative)
        self.event_dims = event_dims
        self.generator = make_generator(seed, generator)

    def forward(self, y: torch.Tensor, event_dims: Optional[int] = None) -> torch.Tensor:
        dims = _event_dims(y, self.event_dims if event_dims is None else event_dims, "GaussianNoise")
        eps = torch.randn(y.shape, generator=self.generator, dtype=torch.float64, device=self.generator.device)
        eps = eps.to(device=y.device, dtype=y.dtype)
        std = self.sigma * y.detach().mean(dim=dims, keepdim=True) if self.relative else self.sigma
        return y + std * eps

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, relative={self.relative}, event_dims={self.event_dims}"


__all__ = ["PoissonNoise", "GaussianNoise"]
