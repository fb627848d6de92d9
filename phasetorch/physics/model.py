r"""Composed measurement models: y = noise(link(B x)) — a linear operator B, a link f, a noise.

A :class:`MeasurementModel` is the physics of one experiment (deepinv's "physics" composition):

    clean(x)   = f(Bx)                    (``link.fn`` elementwise, :mod:`.links`)
    forward(x) = noise(f(Bx))             (per sample, :mod:`.noise`)

B is a :class:`~phasetorch.physics.MeasurementOperator` (``model.operator``); its linear
interface (``linear``, ``adjoint``, ``linear_adjoint``, shapes, ``entry_energy``, dtype and
device) is the model's too. The noise sees one sample's measurements as the operator's
``len(measurement_shape)`` trailing dimensions — the model passes them, so a photon budget is
never spread over a batch or over the rows of a coded-diffraction pattern.

Algorithms that work on intensities take any model with a modulus link (``link.modulus``): they
map the observations with ``y_int = model.link.intensity_of(y)`` and work on ``model.operator``.
:func:`resolve_model` turns an operator, a model or a :class:`LinkMeasurement` into a model.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from .base import MeasurementOperator
from .links import Link, get_link, link_from_config
from .noise import Noise, add_gaussian, noise_from_config
from .registry import operator_from_config, register_operator
from ..tensors import Shape, real_dtype_of


@register_operator
class MeasurementModel(nn.Module):
    r"""y = noise(f(Bx)): a linear measurement operator B, a link f and an optional noise.

    Parameters
    ----------
    operator : the linear operator B, a :class:`~phasetorch.physics.MeasurementOperator`.
    link : a :class:`~phasetorch.physics.links.Link` or its name (``"intensity"`` default,
        ``"amplitude"``, ``"relu"``). A noisy link (``noisy_intensity(σ)``) is its noiseless f
        followed by ``GaussianNoise(σ)`` (``link.noise``); do not pass ``noise`` as well.
    noise : an ``nn.Module`` applied to f(Bx), or None. A :class:`~phasetorch.physics.noise.Noise`
        (``PoissonNoise``, ``GaussianNoise``) is called as ``noise(y, event_dims=k)`` with
        k = ``len(operator.measurement_shape)``, so it acts per sample; its own ``event_dims``
        must then be None or k. Another module is called as ``noise(y)``.
    seed, generator : the random stream of a noisy link's Gaussian noise (for a ``noise`` module,
        seed the module itself).

    ``forward(x)`` = noise(f(Bx)), ``clean(x)`` = f(Bx). Shapes, ``entry_energy``, ``linear``,
    ``adjoint``, ``linear_adjoint``, ``fuses``, dtype and device are the operator's; ``.to()``
    moves the operator (a complex dtype is read as its real dtype, as for operators).

    Persistence: :meth:`config` holds the operator's config, the link's and the noise's (type and
    parameters), so :func:`~phasetorch.physics.save_operator` / ``load_operator`` round-trip the
    model. The state of the noise's random stream is not saved: a loaded model draws fresh noise.
    """

    def __init__(self, operator: MeasurementOperator, link: Union[str, Link] = "intensity",
                 noise: Optional[nn.Module] = None, *, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if not isinstance(operator, MeasurementOperator):
            raise ValueError(f"{type(self).__name__} composes a linear phasetorch MeasurementOperator "
                             f"(GaussianMeasurement, CodedDiffraction, …), got {type(operator).__name__}")
        link = get_link(link)
        if noise is not None and not isinstance(noise, nn.Module):
            raise ValueError(f"noise must be an nn.Module (e.g. PoissonNoise(photons), GaussianNoise(sigma)) or "
                             f"None, got {type(noise).__name__}")
        if link.noisy and noise is not None:
            raise ValueError(f"link {link!r} already adds Gaussian noise: pass noise= with a noiseless link "
                             f"(link='intensity', noise=GaussianNoise({link.sigma:g}, seed=...)), not both")
        if not link.noisy and (seed is not None or generator is not None):
            raise ValueError("seed=/generator= seed the noise of a noisy link only; seed the noise module itself "
                             "(e.g. PoissonNoise(photons, seed=0))")
        k = len(operator.measurement_shape)
        if isinstance(noise, Noise) and noise.event_dims not in (None, k):
            raise ValueError(f"the noise has event_dims={noise.event_dims}, but one sample of {type(operator).__name__} "
                             f"has {k} measurement dimensions {tuple(operator.measurement_shape)}; leave event_dims "
                             f"unset (the model passes it)")
        self._noise_from_link = link.noisy
        if link.noisy:
            noise = link.noise(seed=seed, generator=generator)
        self.operator = operator
        self.link = link
        self.register_module("noise", noise)

    # ------------------------------------------------------------------ measurements
    @property
    def event_dims(self) -> int:
        """Number of trailing dimensions of one sample's measurements, ``len(measurement_shape)``."""
        return len(self.operator.measurement_shape)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """f(Bx), without noise."""
        return self.link.fn(self.operator.linear(x))

    def add_noise(self, y: torch.Tensor) -> torch.Tensor:
        """noise(y), per sample (y itself without a noise)."""
        if self.noise is None:
            return y
        if isinstance(self.noise, Noise):
            return self.noise(y, event_dims=self.event_dims)
        return self.noise(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = noise(f(Bx)) for x of shape ``(*batch, *signal_shape)`` → ``(*batch, *measurement_shape)``."""
        return self.add_noise(self.clean(x))

    # ------------------------------------------------------------------ composition
    def with_noise(self, noise: Optional[nn.Module]) -> "MeasurementModel":
        """The same operator and link with another noise (the operator is shared, not copied)."""
        return MeasurementModel(self.operator, self.link, noise)

    def with_link(self, link: Union[str, Link]) -> "MeasurementModel":
        """The same operator and noise with another link (the operator and noise module are shared)."""
        return MeasurementModel(self.operator, link, None if self._noise_from_link else self.noise)

    # ------------------------------------------------------------------ the linear operator's interface
    signal_shape = property(lambda self: self.operator.signal_shape)
    measurement_shape = property(lambda self: self.operator.measurement_shape)
    is_complex = property(lambda self: self.operator.is_complex)
    n = property(lambda self: self.operator.n)
    m = property(lambda self: self.operator.m)
    delta = property(lambda self: self.operator.delta)
    entry_energy = property(lambda self: self.operator.entry_energy)
    row_energy = property(lambda self: self.operator.row_energy)
    device = property(lambda self: self.operator.device)
    real_dtype = property(lambda self: self.operator.real_dtype)
    signal_dtype = property(lambda self: self.operator.signal_dtype)
    batch_indexed = property(lambda self: bool(getattr(self.operator, "batch_indexed", False)))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Bx (the operator's ``linear``)."""
        return self.operator.linear(x)

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """Bᴴz (the operator's ``adjoint``)."""
        return self.operator.adjoint(z)

    def linear_adjoint(self, x: torch.Tensor, fn) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Bx, Bᴴ fn(Bx))`` (the operator's ``linear_adjoint``)."""
        return self.operator.linear_adjoint(x, fn)

    def fuses(self, vectors: int) -> bool:
        return self.operator.fuses(vectors)

    def check_signal(self, x: torch.Tensor) -> None:
        self.operator.check_signal(x)

    def check_measurements(self, y: torch.Tensor) -> None:
        self.operator.check_measurements(y)

    def batch_shape(self, x: torch.Tensor) -> Shape:
        return self.operator.batch_shape(x)

    def to(self, *args, **kwargs):
        """``nn.Module.to`` with a complex dtype read as its real dtype (complex128 → float64)."""
        args = tuple(real_dtype_of(a) if isinstance(a, torch.dtype) else a for a in args)
        if isinstance(kwargs.get("dtype"), torch.dtype):
            kwargs["dtype"] = real_dtype_of(kwargs["dtype"])
        return super().to(*args, **kwargs)

    # ------------------------------------------------------------------ persistence
    def noise_config(self) -> Optional[dict]:
        """The noise's ``config()`` (None without a noise, or when the noise is the link's own)."""
        if self.noise is None or self._noise_from_link:
            return None
        if not callable(getattr(self.noise, "config", None)):
            raise ValueError(f"the noise module {type(self.noise).__name__} has no config(), so the model cannot be "
                             f"saved; subclass phasetorch.physics.noise.Noise and register it with register_noise")
        return self.noise.config()

    def config(self) -> dict:
        """``{"type": "MeasurementModel", "operator": …, "link": …, "noise": … or None}`` (JSON)."""
        return {"type": "MeasurementModel", "operator": self.operator.config(), "link": self.link.config(),
                "noise": self.noise_config()}

    @classmethod
    def from_config(cls, config: dict) -> "MeasurementModel":
        """Rebuild a model from :meth:`config` (load its ``state_dict`` afterwards for the operator's stored parts)."""
        try:
            operator, link, noise = config["operator"], config["link"], config.get("noise")
        except (KeyError, TypeError) as err:
            raise ValueError(f"a MeasurementModel config needs 'operator' and 'link', got {config!r}") from err
        return cls(operator_from_config(operator), link_from_config(link),
                   None if noise is None else noise_from_config(noise))

    def extra_repr(self) -> str:
        return f"link={self.link!r}"


def _legacy_op_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                    error_msgs) -> None:
    """Files written before LinkMeasurement became a MeasurementModel store the operator under ``op.``."""
    old = prefix + "op."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "operator." + key[len(old):]] = state_dict.pop(key)


@register_operator
class LinkMeasurement(MeasurementModel):
    """y = f(Ax): a :class:`MeasurementModel` given by an operator and a (possibly noisy) link.

    ``LinkMeasurement(op, link, seed=None, generator=None)`` is
    ``MeasurementModel(op, link, seed=seed, generator=generator)``: a noisy link draws its noise
    from ``seed``/``generator`` (one stream, advancing with every call; ignored by noiseless links).
    ``op`` is the operator (``.operator``). ``forward(x, eps)`` adds σ·eps instead of drawing, for a
    noisy link. ``save_operator`` stores the operator and the link, not the state of the noise stream.
    """

    def __init__(self, op: MeasurementOperator, link: Union[str, Link] = "intensity", seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        noisy = get_link(link).noisy
        super().__init__(op, link, seed=seed if noisy else None, generator=generator if noisy else None)
        self.register_load_state_dict_pre_hook(_legacy_op_keys)

    @property
    def op(self) -> MeasurementOperator:
        return self.operator

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The noise stream of a noisy link (None for a noiseless one)."""
        return None if self.noise is None else self.noise.generator

    def forward(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        if eps is None or not self.link.noisy:
            return super().forward(x)
        return add_gaussian(self.clean(x), self.link.sigma, eps=eps, who=f"link {self.link.name}")

    def config(self) -> dict:
        return {"type": "LinkMeasurement", "op": self.operator.config(), "link": self.link.config()}

    @classmethod
    def from_config(cls, config: dict) -> "LinkMeasurement":
        try:
            op, link = config["op"], config["link"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"a LinkMeasurement config needs 'op' and 'link', got {config!r}") from err
        return cls(operator_from_config(op), link_from_config(link))


def resolve_model(obj) -> MeasurementModel:
    """The :class:`MeasurementModel` of ``obj``: a model (or :class:`LinkMeasurement`) is returned as
    is; a :class:`~phasetorch.physics.MeasurementOperator` becomes ``MeasurementModel(obj)`` (intensity
    link, no noise); anything else is a ValueError."""
    if isinstance(obj, MeasurementModel):
        return obj
    if isinstance(obj, MeasurementOperator):
        return MeasurementModel(obj)
    raise ValueError(f"expected a phasetorch MeasurementOperator (GaussianMeasurement, CodedDiffraction, …), a "
                     f"MeasurementModel or a LinkMeasurement, got {type(obj).__name__}")


__all__ = ["MeasurementModel", "LinkMeasurement", "resolve_model"]
