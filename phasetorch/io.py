r"""Reading and writing what phase-retrieval jobs consume and produce: images, measurements, JSON, figures.

Images
------
:func:`load_image` reads a PNG or JPEG with :func:`torchvision.io.decode_image` as grayscale and
returns a float tensor ``(H, W)`` with values in [0, 1] (8- and 16-bit files alike). ``size=k``
centre-crops to a square and resizes to k×k (antialiased bilinear); ``size=(H, W)`` resizes without
cropping. :func:`load_signal` also accepts a ``.pt`` file holding a tensor (or a dict with key
``"x"``), e.g. the bundled complex test object. :func:`save_image` writes an 8-bit grayscale PNG
(complex tensors as their modulus), min–max normalised unless ``normalise=False`` (then clamped
to [0, 1]).

Measurement files
-----------------
``phasetorch simulate`` writes, and ``phasetorch reconstruct --measurements`` reads, a pair of files:

* ``operator.pt`` — the forward model, written by :func:`phasetorch.physics.save_operator` and
  read by :func:`phasetorch.physics.load_operator` (its ``config()`` plus its random parts).
* ``measurements.pt`` — a dict saved with :func:`torch.save` (load it with ``torch.load(path, weights_only=True)``)::

      {"format": "phasetorch.measurements", "version": 1,
       "y": Tensor,              # intensities |Ax|² (+ noise), shape (*batch, *op.measurement_shape), real
       "x_true": Tensor | None,  # optional ground truth, shape (*batch, *op.signal_shape)
       "support": Tensor | None, # optional bool mask of shape op.signal_shape (object support, for gs/hio)
       "nonnegative": bool,      # optional: the object is known to be real and ≥ 0 (for gs/hio)
       "meta": dict}             # optional JSON-friendly provenance (image, model, noise, seed, ...)

  Only ``"y"`` is required, so measurements from elsewhere can be wrapped with
  ``torch.save({"y": y}, "measurements.pt")``; a file holding a bare tensor is read as ``y``.
  Leading dimensions of ``y`` are batch dimensions (several measurement sets of one operator).

JSON
----
:func:`save_json` writes indented strict JSON through :func:`phasetorch.tensors.to_jsonable`
(tensors as nested lists, NaN as ``null``, ±inf as ``"inf"``/``"-inf"``).

Imports: torchvision is imported inside the image functions only. ``import phasetorch`` imports
this module, and torchvision's import costs 1.2–1.7 s on top of torch's 1.4 s (measured with
``python -X importtime`` on the 2-core development machine), a cost every user not reading
images would otherwise pay. matplotlib is imported inside the figure functions for the same reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .tensors import check_int, complex_dtype_of, to_jsonable

PathLike = Union[str, Path]

MEASUREMENTS_FORMAT = "phasetorch.measurements"
MEASUREMENTS_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: The source repository's root (``phasetorch/..``); ``data/`` and ``scripts/`` live there.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The bundled data folder (present in a source checkout / editable install).
DATA_DIR = REPO_ROOT / "data"
BUNDLED = {"grace_hopper": "grace_hopper.png", "shepp_logan": "shepp_logan.png",
           "complex_object": "complex_object.pt"}


# ---------------------------------------------------------------------------------------- data
def bundled(name: str) -> Path:
    """Path of a bundled data file: ``"grace_hopper"``, ``"shepp_logan"`` or ``"complex_object"``.

    Raises ``FileNotFoundError`` naming the fix when ``data/`` is absent (an installed copy
    without the source repository): :func:`phasetorch.phantoms.make_bundled_data` regenerates it.
    """
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled data {name!r}; choose one of {', '.join(BUNDLED)}")
    path = DATA_DIR / BUNDLED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled data file {path} not found (data/ ships with the source repository); regenerate it with "
            f"python -c \"from phasetorch.phantoms import make_bundled_data; make_bundled_data('{DATA_DIR}')\"")
    return path


# ---------------------------------------------------------------------------------------- images
def _parse_size(size: Union[None, int, Sequence[int]]) -> Optional[Tuple[int, int, bool]]:
    """``k`` → (k, k, square=True); ``(H, W)`` → (H, W, False); None → None."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        k = check_int(size, "image size", 1)
        return k, k, True
    if isinstance(size, (str, bytes, bool)) or not hasattr(size, "__len__") or len(size) != 2:
        raise ValueError(f"image size must be a positive int or (H, W) of positive ints, got {size!r}")
    h, w = (check_int(s, "image size", 1) for s in size)
    return h, w, False


def _check_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is a directory, not a file")
    return p


def load_image(path: PathLike, size: Union[None, int, Sequence[int]] = None, dtype: torch.dtype = torch.float32,
               device: Union[None, str, torch.device] = None) -> torch.Tensor:
    """A grayscale image as a ``(H, W)`` tensor in [0, 1] (PNG or JPEG, via torchvision.io).

    ``size=k``: centre-crop to a square, then resize to k×k; ``size=(H, W)``: resize to H×W.
    Resizing is antialiased bilinear, then clamped to [0, 1].
    """
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    p = _check_file(path, "image")
    spec = _parse_size(size)
    try:
        raw = decode_image(str(p), mode=ImageReadMode.GRAY)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"cannot read image {str(p)!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else 'unknown format'}); "
                         f"use a PNG or JPEG file") from None
    img = TF.to_dtype(raw, torch.float32, scale=True)  # (1, H, W) in [0, 1]
    if spec is not None:
        h, w, square = spec
        if square:
            side = min(img.shape[-2:])
            img = TF.center_crop(img, [side, side])
        if tuple(img.shape[-2:]) != (h, w):
            img = TF.resize(img, [h, w], antialias=True).clamp(0.0, 1.0)
    return img[0].to(dtype=dtype, device=device)


def load_signal(path: PathLike, size: Union[None, int, Sequence[int]] = None, dtype: torch.dtype = torch.float32,
                device: Union[None, str, torch.device] = None) -> torch.Tensor:
    """An object from an image (PNG/JPEG → real ``(H, W)`` in [0, 1]) or a ``.pt`` tensor file.

    A ``.pt`` file holds a tensor or a dict with key ``"x"`` (e.g. ``data/complex_object.pt``); it is
    returned as is (complex stays complex), resized when ``size`` is given: modulus and phase are
    resized separately for complex objects (so the phase is not averaged through zero).
    """
    p = _check_file(path, "object file")
    if p.suffix.lower() != ".pt":
        return load_image(p, size=size, dtype=dtype, device=device)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a foreign file
        raise ValueError(f"cannot read {str(p)!r} as a torch file ({exc.__class__.__name__}); "
                         f"save the object with torch.save(tensor, path)") from None
    if isinstance(obj, dict):
        obj = obj.get("x")
    if not isinstance(obj, torch.Tensor) or obj.dim() < 1 or not (obj.is_floating_point() or obj.is_complex()):
        raise ValueError(f"{str(p)!r} must hold a floating or complex tensor, or a dict with one under key 'x'")
    spec = _parse_size(size)
    if spec is not None:
        if obj.dim() != 2:
            raise ValueError(f"--size applies to 2-D objects; {str(p)!r} holds shape {tuple(obj.shape)}")
        obj = _resize_tensor(obj, spec)
    return obj.to(dtype=complex_dtype_of(dtype) if obj.is_complex() else dtype, device=device)


def _resize_tensor(x: torch.Tensor, spec: Tuple[int, int, bool]) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    h, w, square = spec
    if x.is_complex():
        amp = _resize_tensor(x.abs(), spec)
        unit = x / x.abs().clamp(min=torch.finfo(x.abs().dtype).tiny)
        re, im = _resize_tensor(unit.real, spec), _resize_tensor(unit.imag, spec)
        return torch.polar(amp, torch.atan2(im, re))
    img = x[None].to(torch.float32)
    if square:
        side = min(img.shape[-2:])
        img = TF.center_crop(img, [side, side])
    if tuple(img.shape[-2:]) != (h, w):
        img = TF.resize(img, [h, w], antialias=True)
    return img[0].to(x.dtype)


def to_uint8(x: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """A ``(H, W)`` tensor (complex → modulus) as uint8 ``(1, H, W)``: min–max scaled, or clamped to [0, 1]."""
    x = x.detach().to("cpu")
    if x.is_complex():
        x = x.abs()
    x = x.to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"an image must have shape (H, W), got {tuple(x.shape)}")
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if normalise:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)[None]


def save_image(x: torch.Tensor, path: PathLike, normalise: bool = True) -> Path:
    """Write a ``(H, W)`` tensor as an 8-bit grayscale PNG (complex → modulus); returns the path."""
    from torchvision.io import write_png

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_png(to_uint8(x, normalise), str(p))
    return p


def save_grid(images: Sequence[torch.Tensor], path: PathLike, nrow: Optional[int] = None, padding: int = 2,
              scale: int = 1) -> Path:
    """Several ``(H, W)`` images side by side in one PNG (each min–max normalised), via make_grid.

    ``scale`` enlarges every tile by pixel replication (nearest neighbour) so small images stay visible.
    """
    from torchvision.io import write_png
    from torchvision.utils import make_grid

    scale = check_int(scale, "scale", 1)
    tiles = torch.stack([to_uint8(im).to(torch.float32) / 255.0 for im in images])  # (N, 1, H, W)
    if scale > 1:
        tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(tiles, nrow=nrow or len(images), padding=padding, pad_value=1.0)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_png((grid[:1].clamp(0, 1) * 255).round().to(torch.uint8), str(p))
    return p


# ---------------------------------------------------------------------------------------- measurements
def save_measurements(path: PathLike, y: torch.Tensor, x_true: Optional[torch.Tensor] = None,
                      support: Optional[torch.Tensor] = None, nonnegative: bool = False,
                      meta: Optional[Dict[str, Any]] = None) -> Path:
    """Write a measurements file (format in the module docstring); returns the path."""
    if not isinstance(y, torch.Tensor) or y.is_complex() or not y.is_floating_point():
        raise ValueError("measurements y must be a real floating-point tensor of intensities")
    payload: Dict[str, Any] = {"format": MEASUREMENTS_FORMAT, "version": MEASUREMENTS_VERSION,
                               "y": y.detach().to("cpu").contiguous(), "x_true": None, "support": None,
                               "nonnegative": bool(nonnegative), "meta": to_jsonable(meta or {})}
    if x_true is not None:
        payload["x_true"] = x_true.detach().to("cpu").contiguous()
    if support is not None:
        payload["support"] = support.detach().to("cpu", torch.bool).contiguous()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, p)
    return p


def load_measurements(path: PathLike, operator=None) -> Dict[str, Any]:
    """Read a measurements file → dict with keys y, x_true, support, nonnegative, meta.

    With ``operator``, checks that the trailing dimensions of ``y`` (and ``x_true``, ``support``)
    match it and converts ``y`` to the operator's dtype and device (``x_true`` to its signal dtype).
    """
    p = _check_file(path, "measurements file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a foreign file
        raise ValueError(f"cannot read measurements file {str(p)!r} ({exc.__class__.__name__}); it must be a "
                         f"torch.save'd dict with key 'y' (see phasetorch.io)") from None
    if isinstance(obj, torch.Tensor):
        obj = {"y": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("y"), torch.Tensor):
        raise ValueError(f"measurements file {str(p)!r} must hold a dict with a tensor under key 'y' "
                         f"(see the format in phasetorch.io)")
    fmt = obj.get("format", MEASUREMENTS_FORMAT)
    if fmt != MEASUREMENTS_FORMAT or int(obj.get("version", MEASUREMENTS_VERSION)) > MEASUREMENTS_VERSION:
        raise ValueError(f"measurements file {str(p)!r} has format {fmt!r} version {obj.get('version')}; this "
                         f"phasetorch reads {MEASUREMENTS_FORMAT!r} up to version {MEASUREMENTS_VERSION}")
    out = {"y": obj["y"], "x_true": obj.get("x_true"), "support": obj.get("support"),
           "nonnegative": bool(obj.get("nonnegative", False)), "meta": dict(obj.get("meta") or {})}
    y = out["y"]
    if y.is_complex() or not y.is_floating_point():
        raise ValueError(f"measurements in {str(p)!r} must be real floating-point intensities, got {y.dtype}")
    if not torch.isfinite(y).all():
        raise ValueError(f"measurements in {str(p)!r} contain NaN or inf; clean them first")
    for key in ("x_true", "support"):
        if out[key] is not None and not isinstance(out[key], torch.Tensor):
            raise ValueError(f"measurements file {str(p)!r}: {key!r} must be a tensor or None")
    if operator is not None:
        mshape, sshape = tuple(operator.measurement_shape), tuple(operator.signal_shape)
        if tuple(y.shape[y.dim() - len(mshape):]) != mshape or y.dim() < len(mshape):
            raise ValueError(f"measurements of shape {tuple(y.shape)} do not match the operator, which makes "
                             f"(*batch, {', '.join(map(str, mshape))}); use the operator file saved with them")
        out["y"] = y.to(device=operator.device, dtype=operator.real_dtype)
        xt = out["x_true"]
        if xt is not None:
            if tuple(xt.shape[xt.dim() - len(sshape):]) != sshape or xt.dim() < len(sshape):
                raise ValueError(f"x_true of shape {tuple(xt.shape)} does not match the operator's signal shape "
                                 f"{sshape}")
            dt = operator.signal_dtype if (xt.is_complex() or operator.is_complex) else operator.real_dtype
            out["x_true"] = xt.to(device=operator.device, dtype=dt)
        sup = out["support"]
        if sup is not None:
            if tuple(sup.shape) != sshape:
                raise ValueError(f"support of shape {tuple(sup.shape)} does not match the signal shape {sshape}")
            out["support"] = sup.to(device=operator.device, dtype=torch.bool)
    return out


# ---------------------------------------------------------------------------------------- JSON / figures
def save_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`~phasetorch.tensors.to_jsonable`); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, p)
    return p


def load_json(path: PathLike) -> Any:
    """Read a JSON file, with a clear error for a missing or malformed one."""
    p = _check_file(path, "JSON file")
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(p)!r} is not valid JSON ({exc})") from None


def save_figure(fig, path: PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure (headless Agg canvas) and close it; returns the path."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return p


def use_agg() -> None:
    """Select matplotlib's headless Agg backend (before pyplot is used; harmless afterwards)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)


__all__ = ["load_image", "load_signal", "save_image", "save_grid", "to_uint8", "save_measurements",
           "load_measurements", "save_json", "load_json", "save_figure", "use_agg", "bundled", "DATA_DIR",
           "REPO_ROOT", "MEASUREMENTS_FORMAT", "MEASUREMENTS_VERSION"]
