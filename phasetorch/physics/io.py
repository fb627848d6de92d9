"""Saving and loading measurement operators (config + state_dict in one ``torch.save`` file).

The file holds ``{"format": "phasetorch-operator", "version": 1, "config": op.config(),
"state_dict": op.state_dict()}``. Loading rebuilds the operator from its config with the class
registered under ``config["type"]`` (:mod:`.registry`; every class registers itself with
``@register_operator`` at its definition) and then loads the stored random parts, so a saved operator
is reproduced bit for bit (also when its seed was drawn from a generator). Files are read with
``torch.load(weights_only=True)``: no pickled code is executed.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from .base import MeasurementOperator
from .registry import REGISTRY, operator_from_config, register_operator

FORMAT = "phasetorch-operator"
VERSION = 1


def save_operator(op: Union[MeasurementOperator, nn.Module], path: Union[str, os.PathLike]) -> None:
    """Write ``op`` (its ``config()`` and ``state_dict()``, moved to the CPU) to ``path``."""
    if not hasattr(op, "config") or not isinstance(op, nn.Module):
        raise ValueError(f"save_operator needs a phasetorch operator (an nn.Module with config()), "
                         f"got {type(op).__name__}")
    config = op.config()
    if config.get("type") not in REGISTRY:
        raise ValueError(f"{type(op).__name__} is not registered, so it could not be loaded back; "
                         f"call phasetorch.physics.register_operator({type(op).__name__}) first")
    state = {k: v.detach().cpu() for k, v in op.state_dict().items()}
    torch.save({"format": FORMAT, "version": VERSION, "config": config, "state_dict": state}, path)


def load_operator(path: Union[str, os.PathLike], map_location: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Rebuild an operator saved by :func:`save_operator` (on the CPU, or on ``map_location``)."""
    if not os.path.isfile(path):
        raise ValueError(f"cannot load an operator from {os.fspath(path)!r}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise ValueError(f"cannot read {os.fspath(path)!r} as a phasetorch operator file "
                         f"({type(err).__name__}: {err}); write it with save_operator") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "config" not in payload:
        raise ValueError(f"{os.fspath(path)!r} is not a phasetorch operator file; write it with save_operator")
    version = payload.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{os.fspath(path)!r} has a damaged format version ({version!r}, not a whole number "
                         f"≥ 0): the file was altered; write it again with save_operator")
    if version > VERSION:
        raise ValueError(f"{os.fspath(path)!r} was written by a newer phasetorch (format version "
                         f"{payload['version']}); upgrade phasetorch to read it")
    op = operator_from_config(payload["config"])
    try:
        op.load_state_dict(payload.get("state_dict", {}))
    except RuntimeError as err:
        raise ValueError(f"the stored state of {os.fspath(path)!r} does not match its config: {err}") from err
    bad = [k for k, v in op.state_dict().items()
           if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{os.fspath(path)!r} holds non-finite values in {', '.join(bad)}: the file is damaged or "
                         f"was tampered with; save the operator again")
    if map_location is not None:
        op = op.to(map_location)
    return op


__all__ = ["save_operator", "load_operator", "register_operator", "operator_from_config", "REGISTRY"]
