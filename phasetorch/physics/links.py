r"""Single-index link functions y = f(z), z = a_iᴴx, beyond the intensity |z|².

Phase retrieval is the generalised linear model y_i = f(⟨a_i, x⟩) with f(z) = |z|²; the
asymptotic theory (:mod:`phasetorch.theory`) and simulations also use other links. Each
:class:`Link` evaluates f elementwise (``link(z)``, or ``link.fn(z)`` without noise), its
derivative f'(z) for real z, and — for links that are functions of |z| (``modulus``) — maps
observations back to intensity-equivalents |z|² (:meth:`Link.intensity_of`), so that every
intensity algorithm applies to them.

==========================  ======================  ===========  =======  ======================  ===========================
link                        f(z)                    f'(z), real  modulus  intensity_of(y)         notes
==========================  ======================  ===========  =======  ======================  ===========================
``intensity``               |z|²                    2z           yes      y                       phase retrieval (``op(x)``)
``amplitude``               |z|                     sign(z)      yes      sign(y)·y²              amplitude flow (Wang et al. 2017)
``relu``                    max(Re z, 0)            1{z > 0}     no       (ValueError)            sign *is* identifiable
``noisy_intensity(σ)``      |z|² + σ ε, ε ~ N(0,1)  2z           yes      y                       Gaussian noise after squaring
==========================  ======================  ===========  =======  ======================  ===========================

``intensity_of`` of the amplitude link is sign(y)·y² = y·|y|: noisy amplitudes may be negative and
map to negative intensity-equivalents (as noisy intensities may be), never to a spurious positive
square. ``symmetric`` marks links with f(−z) = f(z) (f(e^{iφ}z) = f(z) for complex z): x is
identifiable only up to a global sign/phase, which is what :mod:`phasetorch.metrics` factors out.

The noise of ``noisy_intensity`` is drawn by :func:`phasetorch.physics.noise.add_gaussian`, the
draw of :class:`~phasetorch.physics.noise.GaussianNoise` (one implementation of noise). Composed
with an operator in a :class:`~phasetorch.physics.MeasurementModel`, a noisy link becomes the
noiseless f followed by ``GaussianNoise(σ)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..tensors import abs2, check_number
from .noise import GaussianNoise, add_gaussian


def _identity(y: torch.Tensor) -> torch.Tensor:
    return y


def _signed_square(y: torch.Tensor) -> torch.Tensor:
    return y * y.abs()


class Link:
    """A link function y = f(z) (elementwise), optionally with additive Gaussian noise σ·ε.

    Parameters
    ----------
    name : registry name (``config()`` / :func:`get_link` use it).
    fn : the noiseless f, a function of a (real or complex) tensor.
    derivative : f'(z) for real z, or None when not provided.
    sigma : standard deviation of the additive noise (0: noiseless), in the units of y.
    symmetric : f(−z) = f(z) (global sign/phase ambiguity).
    modulus : f is a function of |z| (then ``intensity`` must map y to |z|², see :meth:`intensity_of`).
    intensity : the map y ↦ |z|²-equivalent of a modulus link.
    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor],
                 derivative: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 sigma: float = 0.0, symmetric: bool = True, modulus: bool = False,
                 intensity: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        if bool(modulus) != (intensity is not None):
            raise ValueError(f"link {name!r}: a modulus link needs intensity= (the map y ↦ |z|²), and only a "
                             f"modulus link has one")
        self.name = name
        self.fn = fn
        self._derivative = derivative
        self.sigma = check_number(sigma, "link noise level sigma", 0.0)
        self.symmetric = bool(symmetric)
        self.modulus = bool(modulus)
        self._intensity = intensity

    @property
    def noisy(self) -> bool:
        return self.sigma > 0

    def __call__(self, z: torch.Tensor, eps: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """f(z) (+ σ·eps for a noisy link).

        ``eps`` is the standard normal noise, shape of the output; if omitted for a noisy link it
        is drawn (in float64 on the generator's device, then cast and moved, so results do not
        depend on dtype or device) from ``generator`` or from torch's global RNG. ``eps`` is
        ignored by noiseless links.
        """
        y = self.fn(z)
        if not self.noisy:
            return y
        return add_gaussian(y, self.sigma, generator, eps, who=f"link {self.name}")

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """f'(z) of the noiseless link for real z (the theory's real single-index model)."""
        if self._derivative is None:
            raise ValueError(f"link {self.name!r} has no closed-form derivative; differentiate numerically "
                             f"or with torch.autograd")
        if z.is_complex():
            raise ValueError(f"Link.derivative is defined for real z only (got {z.dtype}); pass z.real for the "
                             f"real model")
        return self._derivative(z)

    def intensity_of(self, y: torch.Tensor) -> torch.Tensor:
        """Intensity-equivalents |z|² of observations y of a modulus link (intensity: y; amplitude:
        sign(y)·y²); a ValueError for a link that is not a function of |z| (relu)."""
        if not self.modulus:
            raise ValueError(f"link {self.name!r} is not a function of |z|: its observations have no intensity "
                             f"equivalent; fit the link itself (link.fn, link.derivative; real signals)")
        if not isinstance(y, torch.Tensor) or y.is_complex():
            raise ValueError(f"link {self.name!r}: observations must be a real tensor, got "
                             f"{getattr(y, 'dtype', type(y).__name__)}")
        return self._intensity(y)

    def noise(self, seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Optional[GaussianNoise]:
        """The link's additive noise as a :class:`~phasetorch.physics.noise.GaussianNoise` (None if noiseless)."""
        return GaussianNoise(self.sigma, seed=seed, generator=generator) if self.noisy else None

    def config(self) -> dict:
        """JSON form: ``{"name": ..., "sigma": ...}`` (see :func:`link_from_config`)."""
        return {"name": self.name, "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"Link({self.name!r}, sigma={self.sigma})" if self.noisy else f"Link({self.name!r})"


intensity = Link("intensity", abs2, derivative=lambda z: 2 * z, modulus=True, intensity=_identity)
amplitude = Link("amplitude", lambda z: z.abs(), derivative=torch.sign, modulus=True, intensity=_signed_square)
relu = Link("relu", lambda z: torch.clamp(z.real if z.is_complex() else z, min=0),
            derivative=lambda z: (z > 0).to(z.dtype), symmetric=False)


def noisy_intensity(sigma: float) -> Link:
    """y = |z|² + σ ε with ε ~ N(0, 1) i.i.d. (outputs may be negative; ``intensity_of(y) = y``).

    The noise goes through :func:`phasetorch.physics.noise.add_gaussian` (GaussianNoise's draw):
    the same generator gives the same ε as ``GaussianNoise(σ, generator=...)``.
    """
    return Link("noisy_intensity", abs2, derivative=lambda z: 2 * z, sigma=sigma, modulus=True, intensity=_identity)


LINKS = {"intensity": intensity, "amplitude": amplitude, "relu": relu}


def get_link(link: Union[str, Link]) -> Link:
    """A :class:`Link` from itself or its name (``"intensity"``, ``"amplitude"``, ``"relu"``)."""
    if isinstance(link, Link):
        return link
    if isinstance(link, str) and link in LINKS:
        return LINKS[link]
    raise ValueError(f"unknown link {link!r}; choose one of {', '.join(LINKS)}, noisy_intensity(sigma), "
                     f"or pass a Link")


def link_from_config(config: dict) -> Link:
    """Inverse of :meth:`Link.config`."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a link config is a dict with a 'name', got {config!r}")
    if config["name"] == "noisy_intensity":
        return noisy_intensity(config.get("sigma", 0.0))
    link = get_link(config["name"])
    if check_number(config.get("sigma", 0.0), "link sigma") != link.sigma:
        raise ValueError(f"link {link.name!r} is noiseless; got sigma={config.get('sigma')}")
    return link


__all__ = ["Link", "intensity", "amplitude", "relu", "noisy_intensity", "LINKS", "get_link", "link_from_config"]
