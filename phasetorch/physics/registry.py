"""The registry of operator classes: ``config()["type"]`` → class, filled by :func:`register_operator`.

Every operator class of :mod:`phasetorch.physics` (and :class:`~phasetorch.physics.MeasurementModel`)
is registered by the decorator at its definition, so :func:`operator_from_config` and
:func:`phasetorch.physics.load_operator` rebuild any of them. This module imports nothing from
the package, so every physics module may use it without an import cycle.
"""

from __future__ import annotations

from typing import Dict

from torch import nn

#: class name → class, for every registered operator (read-only for users: register with the decorator)
REGISTRY: Dict[str, type] = {}


def register_operator(cls: type) -> type:
    """Register an operator class (with ``config()`` and a ``from_config`` classmethod) for loading.

    Use it as a class decorator. The key is the class name, which ``config()["type"]`` must give.
    Registering another class under a name that is taken is refused (rename the class).
    """
    if not isinstance(cls, type) or not callable(getattr(cls, "from_config", None)) \
            or not callable(getattr(cls, "config", None)):
        raise ValueError("register_operator needs a class with config() and a from_config classmethod "
                         "(subclass phasetorch.physics.MeasurementOperator)")
    known = REGISTRY.get(cls.__name__)
    if known is not None and known is not cls and (known.__module__, known.__qualname__) != \
            (cls.__module__, cls.__qualname__):
        raise ValueError(f"an operator class named {cls.__name__!r} is already registered "
                         f"({known.__module__}.{known.__qualname__}); give {cls.__module__}.{cls.__qualname__} "
                         f"another name")
    REGISTRY[cls.__name__] = cls
    return cls


def operator_from_config(config: dict) -> nn.Module:
    """Build an operator (without its stored state) from ``op.config()``."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"an operator config is a dict with a 'type' key, got {config!r}")
    cls = REGISTRY.get(config["type"])
    if cls is None:
        raise ValueError(f"unknown operator type {config['type']!r}; known types: {', '.join(sorted(REGISTRY))} "
                         f"(register custom classes with phasetorch.physics.register_operator)")
    try:
        return cls.from_config(config)
    except TypeError as err:
        raise ValueError(f"config does not match {cls.__name__}'s constructor: {err}") from err


__all__ = ["REGISTRY", "register_operator", "operator_from_config"]
