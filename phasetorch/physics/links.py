r"""Single-index link functions y = f(z), z = a_iᴴx, beyond the intensity |z|².

Phase retrieval is the generalised linear model y_i = f(⟨a_i, x⟩) with f(z) = |z|²; the
asymptotic theory (:mod:`phasetorch.theory`) and simulations also use other links. Each
:class:`Link` evaluates f elementwise (``link(z)``) and, for the theory's real model, its
derivative f'(z) where it is cheap.

==========================  ======================  ===========  =========================================
link                        f(z)                    f'(z), real  notes
==========================  ======================  ===========  =========================================
``intensity``               |z|²                    2z           phase retrieval (``op(x)``)
``amplitude``               |z|                     sign(z)      amplitude-flow model (Wang et al. 2017)
``relu``                    max(Re z, 0)            1{z > 0}     sign *is* identifiable (not symmetric)
``noisy_intensity(σ)``      |z|² + σ ε, ε ~ N(0,1)  2z           additive Gaussian noise after squaring
==========================  ======================  ===========  =========================================

``symmetric`` marks links with f(−z) = f(z) (f(e^{iφ}z) = f(z) for complex z): x is identifiable
only up to a global sign/phase, which is what :mod:`phasetorch.metrics` factors out.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..tensors import abs2, make_generator


class Link:
    """A link function y = f(z) (elementwise), optionally with additive Gaussian noise σ·ε.

    Parameters
    ----------
    name : registry name (``config()`` / :func:`get_link` use it).
    fn : the noiseless f, a function of a (real or complex) tensor.
    derivative : f'(z) for real z, or None when not provided.
    sigma : standard deviation of the additive noise (0: noiseless).
    symmetric : f(−z) = f(z) (global sign/phase ambiguity).
    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor],
                 derivative: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 sigma: float = 0.0, symmetric: bool = True) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"link noise level sigma must be a finite number ≥ 0, got {sigma}")
        self.name = name
        self.fn = fn
        self._derivative = derivative
        self.sigma = sigma
        self.symmetric = bool(symmetric)

    @property
    def noisy(self) -> bool:
        return self.sigma > 0

    def __call__(self, z: torch.Tensor, eps: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """f(z) (+ σ·eps for a noisy link).

        ``eps`` is the standard normal noise, shape of the output; if omitted for a noisy link it
        is drawn (in float64 on the CPU, then cast and moved, so results do not depend on dtype or
        device) from ``generator`` or from torch's global RNG. ``eps`` is ignored by noiseless links.
        """
        y = self.fn(z)
        if not self.noisy:
            return y
        if eps is None:
            g = generator if generator is not None else make_generator()
            eps = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
        elif not isinstance(eps, torch.Tensor) or eps.shape != y.shape:
            raise ValueError(f"link {self.name}: eps must be a tensor of the output shape {tuple(y.shape)}, "
                             f"got {getattr(eps, 'shape', type(eps).__name__)}")
        return y + self.sigma * eps

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """f'(z) of the noiseless link for real z (the theory's real single-index model)."""
        if self._derivative is None:
            raise ValueError(f"link {self.name!r} has no closed-form derivative; differentiate numerically "
                             f"or with torch.autograd")
        if z.is_complex():
            raise ValueError(f"Link.derivative is defined for real z only (got {z.dtype}); pass z.real for the "
                             f"real model")
        return self._derivative(z)

    def config(self) -> dict:
        """JSON form: ``{"name": ..., "sigma": ...}`` (see :func:`link_from_config`)."""
        return {"name": self.name, "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"Link({self.name!r}, sigma={self.sigma})" if self.noisy else f"Link({self.name!r})"


intensity = Link("intensity", abs2, derivative=lambda z: 2 * z)
amplitude = Link("amplitude", lambda z: z.abs(), derivative=torch.sign)
relu = Link("relu", lambda z: torch.clamp(z.real if z.is_complex() else z, min=0),
            derivative=lambda z: (z > 0).to(z.dtype), symmetric=False)


def noisy_intensity(sigma: float) -> Link:
    """y = |z|² + σ ε with ε ~ N(0, 1) i.i.d. (outputs may be negative)."""
    return Link("noisy_intensity", abs2, derivative=lambda z: 2 * z, sigma=sigma)


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
    if float(config.get("sigma", 0.0)) != link.sigma:
        raise ValueError(f"link {link.name!r} is noiseless; got sigma={config.get('sigma')}")
    return link


class LinkMeasurement(nn.Module):
    """y = f(Ax): a measurement operator followed by a link (``forward(x) = link(op.linear(x))``).

    Exposes the wrapped operator's ``linear``, ``adjoint``, shapes and ``entry_energy``; noisy
    links draw their noise from ``seed``/``generator`` (one stream, advancing with every call).
    With the ``intensity`` link this is the operator itself. ``save_operator`` stores the
    operator and the link, not the state of the noise stream.
    """

    def __init__(self, op: nn.Module, link: Union[str, Link] = "intensity", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if not hasattr(op, "linear") or not hasattr(op, "adjoint"):
            raise ValueError(f"LinkMeasurement wraps a MeasurementOperator, got {type(op).__name__}")
        self.op = op
        self.link = get_link(link)
        self.generator = make_generator(seed, generator) if self.link.noisy else None

    signal_shape = property(lambda self: self.op.signal_shape)
    measurement_shape = property(lambda self: self.op.measurement_shape)
    is_complex = property(lambda self: self.op.is_complex)
    n = property(lambda self: self.op.n)
    m = property(lambda self: self.op.m)
    delta = property(lambda self: self.op.delta)
    entry_energy = property(lambda self: self.op.entry_energy)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.linear(x)

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(z)

    def forward(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.link(self.op.linear(x), eps=eps, generator=self.generator)

    def config(self) -> dict:
        return {"type": "LinkMeasurement", "op": self.op.config(), "link": self.link.config()}

    @classmethod
    def from_config(cls, config: dict) -> "LinkMeasurement":
        from .io import operator_from_config
        return cls(operator_from_config(config["op"]), link_from_config(config["link"]))

    def extra_repr(self) -> str:
        return f"link={self.link!r}"


__all__ = ["Link", "intensity", "amplitude", "relu", "noisy_intensity", "LINKS", "get_link",
           "link_from_config", "LinkMeasurement"]
