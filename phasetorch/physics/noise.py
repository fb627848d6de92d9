r"""Measurement noise models (``nn.Module``\ s mapping clean measurements y to noisy ones): the one
implementation of noise in phasetorch.

* :class:`PoissonNoise` — shot noise at a fixed photon budget per sample;
* :class:`GaussianNoise` — additive white Gaussian noise y + σε (absolute or relative σ);
  :func:`add_gaussian` is its draw, also used by the noisy link
  :func:`phasetorch.physics.links.noisy_intensity`.

**Samples.** A noise acts per sample: the trailing ``event_dims`` dimensions of y hold one
sample's measurements, the leading ones are batch (never mixed). The number is the operator's
``len(op.measurement_shape)`` — 1 for dense models, 3 for coded diffraction patterns (L, H, W),
2 for a Fourier image. Compose the noise with the operator,
``MeasurementModel(op, noise=PoissonNoise(photons))`` (:class:`phasetorch.physics.MeasurementModel`),
and the model passes it. Used alone, give ``event_dims=`` (at construction or per call) whenever y
has more than one dimension and the noise couples the entries of a sample (Poisson's photon
budget, relative Gaussian σ); without it the call is refused rather than a budget spread over a
batch or over the rows of a pattern. Plain additive Gaussian noise is i.i.d. per entry and needs
no ``event_dims``.

**Randomness.** From ``seed=`` or ``generator=`` (one stream that advances with every call: two
modules built with the same seed give the same sequence of noise; with neither, a fresh stream is
seeded from torch's global RNG). Noise is drawn in float64 on the generator's device (the CPU
unless you pass a device generator), then cast and moved to y's dtype and device, so CPU and GPU
runs with the same seed see the same noise. ``config()`` records the parameters, not the stream
state: a noise rebuilt from its config (e.g. by :func:`phasetorch.physics.load_operator`) draws
from a fresh stream.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..tensors import check_flag, check_int, check_number, make_generator

#: class name → noise class, for :func:`noise_from_config` (filled by :func:`register_noise`)
NOISES: Dict[str, type] = {}


def register_noise(cls: type) -> type:
    """Class decorator: register a :class:`Noise` subclass for :func:`noise_from_config` (key: class name)."""
    if not isinstance(cls, type) or not issubclass(cls, Noise):
        raise ValueError("register_noise needs a subclass of phasetorch.physics.noise.Noise")
    NOISES[cls.__name__] = cls
    return cls


def noise_from_config(config: dict) -> "Noise":
    """Inverse of :meth:`Noise.config` (a fresh random stream; see the module docstring)."""
    if not isinstance(config, dict) or config.get("type") not in NOISES:
        raise ValueError(f"a noise config is a dict whose 'type' is one of {', '.join(sorted(NOISES))}, "
                         f"got {config!r}")
    cls = NOISES[config["type"]]
    try:
        return cls(**{k: v for k, v in config.items() if k != "type"})
    except TypeError as err:
        raise ValueError(f"config does not match {cls.__name__}'s constructor: {err}") from err


def check_real_measurements(y: torch.Tensor, who: str) -> None:
    """y must be a real floating tensor (intensities or other real observations)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{who}: expected measurements as a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(f"{who}: measurements must be a real floating tensor, got {y.dtype} "
                         f"(pass op(x), not op.linear(x))")


def sample_dims(y: torch.Tensor, event_dims: Optional[int], who: str) -> Tuple[int, ...]:
    """The dimensions of y that hold one sample's measurements: its trailing ``event_dims``.

    ``None`` is accepted for a 1-D y only (one sample); otherwise it is a ValueError naming the fix.
    """
    if event_dims is None:
        if y.dim() == 1:
            return (0,)
        raise ValueError(
            f"{who}: y has shape {tuple(y.shape)}, so say which trailing dimensions hold one sample's "
            f"measurements: event_dims=len(op.measurement_shape) (e.g. 3 for coded diffraction patterns "
            f"(L, H, W)), or compose the noise with the operator, MeasurementModel(op, noise=...), which passes it")
    k = check_int(event_dims, f"{who}: event_dims (use len(op.measurement_shape))", 1, max(1, y.dim()))
    if k > y.dim():
        raise ValueError(f"{who}: event_dims={k} but y has only {y.dim()} dimensions")
    return tuple(range(y.dim() - k, y.dim()))


def standard_normal(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, 1) i.i.d. of ``shape``, drawn in float64 on the generator's device, cast and moved to ``like``."""
    eps = torch.randn(tuple(shape), generator=generator, dtype=torch.float64, device=generator.device)
    return eps.to(device=like.device, dtype=like.dtype)


def add_gaussian(y: torch.Tensor, std: Union[float, torch.Tensor], generator: Optional[torch.Generator] = None,
                 eps: Optional[torch.Tensor] = None, who: str = "GaussianNoise") -> torch.Tensor:
    """y + std·ε, ε ~ N(0, 1) i.i.d. of y's shape (from ``generator``, or torch's global RNG), or the given ``eps``."""
    if eps is None:
        eps = standard_normal(y.shape, generator if generator is not None else make_generator(), y)
    elif not isinstance(eps, torch.Tensor) or eps.shape != y.shape:
        raise ValueError(f"{who}: eps must be a tensor of the output shape {tuple(y.shape)}, "
                         f"got {getattr(eps, 'shape', type(eps).__name__)}")
    return y + std * eps


class Noise(nn.Module):
    """Base class of the noise models: ``forward(y, event_dims=None)`` → noisy y, per sample.

    ``event_dims`` (constructor) is the number of trailing dimensions of one sample; ``None``
    (default) lets a :class:`~phasetorch.physics.MeasurementModel` set it per call, and makes a
    standalone call on a multi-dimensional y an error for noises that couple a sample's entries.
    A model calls ``noise(y, event_dims=len(op.measurement_shape))``. Subclasses implement
    ``forward`` and :meth:`config` (JSON constructor arguments with ``"type"``) and register with
    :func:`register_noise`.
    """

    def __init__(self, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 event_dims: Optional[int] = None) -> None:
        super().__init__()
        self.event_dims = None if event_dims is None else check_int(event_dims, "event_dims", 1)
        self.generator = make_generator(seed, generator)

    def dims(self, y: torch.Tensor, event_dims: Optional[int] = None) -> Tuple[int, ...]:
        """The sample dimensions of y: ``event_dims`` of the call, else of the constructor (see :func:`sample_dims`)."""
        return sample_dims(y, self.event_dims if event_dims is None else event_dims, type(self).__name__)

    def config(self) -> dict:
        """Constructor arguments (JSON), with ``"type"``; the random stream is not part of it."""
        raise NotImplementedError  # abstract


#: the largest expected count of one measurement :class:`PoissonNoise` draws (torch.poisson overflows
#: an int64 near 1e19; the relative noise is 1e-7.5 there, far below float32 resolution anyway)
MAX_POISSON_RATE = 1e15


@register_noise
class PoissonNoise(Noise):
    r"""Shot noise at a fixed photon budget: ỹ = N / s, N ~ Poisson(s·y), s = P / Σ_i y_i per sample.

    Units: ``photons`` P is the **expected total number of photons of one sample** — the sum over
    its ``event_dims`` trailing dimensions, i.e. over all L patterns of a coded-diffraction sample
    — so Σ_i s·y_i = P. With ``per_measurement=True`` it is the expected count **per measurement**
    instead (the budget of a sample is then P·m_s, m_s its number of measurements).

    So E ỹ = y (an unbiased estimate of the clean intensities), Var ỹ_i = y_i / s, and the relative
    noise of a sample is set by the budget alone, whatever its brightness. A sample with Σ y = 0
    stays 0. (The usual CDI / ptychography noise model, e.g. Thibault & Guizar-Sicairos, New J.
    Phys. 14 (2012).)

    ``forward(y, event_dims=None)`` returns ỹ (dtype and device of y; no gradient flows through
    the draw); :meth:`counts` returns the raw counts N and the scale s. See the module docstring
    for ``event_dims`` (required for a multi-dimensional y unless the model passes it) and seeds.
    """

    def __init__(self, photons: float, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 event_dims: Optional[int] = None, per_measurement: bool = False) -> None:
        super().__init__(seed, generator, event_dims)
        self.photons = check_number(photons, "PoissonNoise photons", 0.0, strict=True)
        self.per_measurement = check_flag(per_measurement, "PoissonNoise per_measurement")

    def budget(self, y: torch.Tensor, event_dims: Optional[int] = None) -> float:
        """Expected photons of one sample of y: P, or P·m_s with ``per_measurement``."""
        dims = self.dims(y, event_dims)
        return self.photons * (math.prod(y.shape[d] for d in dims) if self.per_measurement else 1)

    def counts(self, y: torch.Tensor, event_dims: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, s): photon counts N (float64, y's shape) and per-sample scales s (shape batch + 1s)."""
        check_real_measurements(y, "PoissonNoise")
        dims = self.dims(y, event_dims)
        photons = self.budget(y, event_dims)
        if not torch.isfinite(y).all():
            raise ValueError("PoissonNoise: intensities contain NaN or inf")
        if (y < 0).any():
            raise ValueError("PoissonNoise: intensities must be ≥ 0 (Poisson rates); clamp y at 0 first")
        device = self.generator.device
        with torch.no_grad():
            y64 = y.detach().to(device=device, dtype=torch.float64)
            total = y64.sum(dim=dims, keepdim=True)
            scale = torch.where(total > 0, photons / total.clamp(min=torch.finfo(torch.float64).tiny),
                                torch.zeros_like(total))
            rate = y64 * scale
            top = float(rate.max()) if rate.numel() else 0.0
            if top > MAX_POISSON_RATE:
                raise ValueError(f"PoissonNoise: photons={self.photons:g} gives up to {top:.3g} expected photons in one "
                                 f"measurement, beyond what a Poisson draw represents (≤ {MAX_POISSON_RATE:.0e}); at "
                                 f"such counts shot noise is Gaussian: use GaussianNoise, or fewer photons")
            n = torch.poisson(rate, generator=self.generator)
        return n, scale

    def forward(self, y: torch.Tensor, event_dims: Optional[int] = None) -> torch.Tensor:
        n, scale = self.counts(y, event_dims)
        noisy = torch.where(scale > 0, n / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(n))
        return noisy.to(device=y.device, dtype=y.dtype)

    def config(self) -> dict:
        return {"type": "PoissonNoise", "photons": self.photons, "per_measurement": self.per_measurement,
                "event_dims": self.event_dims}

    def extra_repr(self) -> str:
        unit = "per measurement" if self.per_measurement else "per sample"
        return f"photons={self.photons:g} {unit}, event_dims={self.event_dims}"


@register_noise
class GaussianNoise(Noise):
    r"""Additive white Gaussian noise: ỹ = y + σ ε, ε ~ N(0, 1) i.i.d.

    σ is in the units of y. With ``relative=True`` the standard deviation is σ · mean(y) per sample
    (mean over the ``event_dims`` trailing dimensions), i.e. σ is a noise-to-signal ratio; only
    then are the sample dimensions needed. Noisy intensities may be negative; that is deliberate
    (the model of the noisy-intensity theory, link ``noisy_intensity``); clamp them yourself if an
    algorithm needs y ≥ 0. Preprocessing functions handle y ≤ 0 (see
    :mod:`phasetorch.init.preprocessing`).
    """

    def __init__(self, sigma: float, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 relative: bool = False, event_dims: Optional[int] = None) -> None:
        super().__init__(seed, generator, event_dims)
        self.sigma = check_number(sigma, "GaussianNoise sigma", 0.0)
        self.relative = check_flag(relative, "GaussianNoise relative")

    def forward(self, y: torch.Tensor, event_dims: Optional[int] = None) -> torch.Tensor:
        check_real_measurements(y, "GaussianNoise")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("GaussianNoise: intensities contain NaN or inf; noise is added to finite measurements only")
        if self.relative:
            dims = self.dims(y, event_dims)
            eps = standard_normal(y.shape, self.generator, y)
            out = add_gaussian(y, self.sigma * y.detach().mean(dim=dims, keepdim=True), eps=eps)
        else:
            if event_dims is not None or self.event_dims is not None:
                self.dims(y, event_dims)                      # validate a given event_dims all the same
            out = add_gaussian(y, self.sigma, self.generator)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"GaussianNoise: sigma={self.sigma:g} overflows {y.dtype} (noisy values reach inf); use a "
                             f"smaller sigma or float64 measurements")
        return out

    def config(self) -> dict:
        return {"type": "GaussianNoise", "sigma": self.sigma, "relative": self.relative, "event_dims": self.event_dims}

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, relative={self.relative}, event_dims={self.event_dims}"


__all__ = ["Noise", "PoissonNoise", "GaussianNoise", "add_gaussian", "standard_normal", "sample_dims",
           "check_real_measurements", "register_noise", "noise_from_config", "NOISES"]
