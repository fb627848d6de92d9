r"""Reading and writing what phase-retrieval jobs consume and produce: images, measurements, JSON, figures.

Images
------
:func:`load_image` reads a PNG or JPEG as grayscale and returns a float tensor ``(H, W)`` with
values in [0, 1] (8- and 16-bit files alike). The width and height are read from the file's header
first (:func:`image_shape`: the PNG ``IHDR`` chunk, the JPEG ``SOF`` marker) and a file that would
decode to more than ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS` = 64 Mpixel) is refused
before any decoding — an 875 kB PNG can hold a 30000² image, 5 GB once decoded. ``size=k``
centre-crops to a square and resizes to k×k (antialiased bilinear); ``size=(H, W)`` resizes without
cropping; ``size=None`` keeps the file's own size. :func:`load_signal` also accepts a ``.pt`` file
holding a tensor (or a dict with key ``"x"``), e.g. the bundled complex test object.
:func:`save_image` writes an 8-bit grayscale PNG (complex tensors as their modulus), min–max
normalised unless ``normalise=False`` (then clamped to [0, 1]).

Every reader refuses anything but a regular file (:func:`check_regular_file`: a FIFO would block
the reader forever, a directory or a device is a mistake).

Writing
-------
Every writer of this module (and of :mod:`phasetorch.app`) goes through :func:`atomic_write`: the
file is written under a unique temporary name in the destination folder
(``.NAME.<pid>.<random>.tmp.SUFFIX``) and moved over the destination with :func:`os.replace`, so
a killed job leaves either the previous file or the complete new one — never a truncated one — and
two writers never share a temporary name. :func:`atomic_torch_save` is ``torch.save`` through it.

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
       "operator": dict | None,  # optional identity of the operator that made y (operator_identity)
       "meta": dict}             # optional JSON-friendly provenance (image, model, noise, seed, ...)

  Only ``"y"`` is required, so measurements from elsewhere can be wrapped with
  ``torch.save({"y": y}, "measurements.pt")``; a file holding a bare tensor is read as ``y``.
  Leading dimensions of ``y`` are batch dimensions (several measurement sets of one operator).

  ``"operator"`` is :func:`operator_identity` of the operator saved with the measurements: its
  ``config()`` without the dtype, and the SHA-256 of its ``state_dict`` tensors (names, shapes and
  bytes, floating tensors rounded to float32 so that the float32 and float64 copies of one operator
  agree). :func:`load_measurements` with an ``operator`` refuses one whose identity differs — the
  operator file of another seed reconstructs "successfully" to a relative error of 1.4 — unless
  ``force=True`` (``phasetorch reconstruct --force``).

JSON
----
:func:`save_json` writes indented strict JSON through :func:`phasetorch.tensors.to_jsonable`
(tensors as nested lists, NaN as ``null``, ±inf as ``"inf"``/``"-inf"``).

Bundled data
------------
The test objects (``grace_hopper.png``, ``shepp_logan.png``, ``complex_object.pt``,
``siemens_star_small.npz.bz2``; licences in ``README.md`` and ``LICENSE.tike`` beside them) are
package data: they live in ``phasetorch/data/`` and are installed with the package, so
:func:`bundled` finds them from any folder, in a checkout or an installed copy (the checkout's
``data/`` is a link to that folder).

Imports: torchvision is imported inside the image functions only. ``import phasetorch`` imports
this module, and torchvision's import costs 1.2–1.7 s on top of torch's 1.4 s (measured with
``python -X importtime`` on the 2-core development machine), a cost every user not reading
images would otherwise pay. matplotlib is imported inside the figure functions for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .tensors import check_int, complex_dtype_of, to_jsonable

PathLike = Union[str, Path]

MEASUREMENTS_FORMAT = "phasetorch.measurements"
MEASUREMENTS_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The default cap of :func:`load_image` on the decoded size (pixels), checked from the header.
MAX_IMAGE_PIXELS = 64_000_000

#: The source repository's root (``phasetorch/..``); ``scripts/`` lives there in a checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The bundled data folder: package data, installed with phasetorch.
DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = {"grace_hopper": "grace_hopper.png", "shepp_logan": "shepp_logan.png",
           "complex_object": "complex_object.pt", "siemens_star_small": "siemens_star_small.npz.bz2"}


# ---------------------------------------------------------------------------------------- writing
def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes a unique temporary file beside it, which then
    replaces ``path`` (:func:`os.replace`). Creates the parent folders. On any failure (or a
    KeyboardInterrupt) the temporary file is removed and ``path`` is left as it was.

    The temporary name keeps the suffix (``.grid.123.9f3a.tmp.png``), so writers that pick the
    format from it (matplotlib's ``savefig``) write the right one. Returns ``Path(path)``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{p.suffix}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return p


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` through :func:`atomic_write`; returns the path."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ---------------------------------------------------------------------------------------- files
def check_regular_file(path: PathLike, what: str = "file") -> Path:
    """``Path(path)`` if it names an existing regular file (symbolic links followed).

    FileNotFoundError when it does not exist; ValueError for a directory and for anything that is
    not a regular file (a FIFO — reading one blocks until a writer appears —, a socket, a device).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {str(p)!r} is not a regular file (a FIFO, socket or device); give a file")
    return p


# ---------------------------------------------------------------------------------------- data
def bundled(name: str) -> Path:
    """Path of a bundled data file, by key (``"grace_hopper"``, ``"shepp_logan"``, ``"complex_object"``,
    ``"siemens_star_small"``) or by file name (``"grace_hopper.png"``, ``"README.md"``).

    The files are package data (``phasetorch/data/``), found from any folder. Raises
    ``FileNotFoundError`` naming the fix when one is missing (a broken installation).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"bundled data name must be a non-empty string, got {name!r}")
    if name in BUNDLED:
        fname = BUNDLED[name]
    elif name in BUNDLED.values() or (Path(name).name == name and (DATA_DIR / name).is_file()):
        fname = name
    else:
        raise ValueError(f"unknown bundled data {name!r}; choose one of {', '.join(BUNDLED)} "
                         f"(or a file name among {', '.join(BUNDLED.values())})")
    path = DATA_DIR / fname
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled data file {path} not found: it ships with phasetorch as package data; reinstall it "
            f"(pip install --force-reinstall phasetorch), or regenerate the images with python -c \"from "
            f"phasetorch.phantoms import make_bundled_data; make_bundled_data('{DATA_DIR}')\"")
    return path


# ---------------------------------------------------------------------------------------- images
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (baseline, progressive, lossless, …): not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_header_shape(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) from the header of PNG or JPEG bytes, without decoding; None for other data.

    PNG: the ``IHDR`` chunk that must follow the signature (width, height as big-endian uint32 at
    bytes 16–24). JPEG: the first start-of-frame segment (SOF0–SOF15 but C4/C8/CC; height, width as
    big-endian uint16 after the precision byte). Raises ValueError for a PNG/JPEG whose header is
    truncated or has no frame before the scan.
    """
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated PNG header (no IHDR chunk)")
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            raise ValueError("corrupt JPEG header (a marker was expected)")
        marker = data[i + 1]
        if marker == 0xFF:            # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:   # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):    # end of image / start of scan before any frame header
            break
        if i + 4 > n:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
        i += 2 + length
    raise ValueError("corrupt or truncated JPEG header (no frame size before the image data)")


def image_shape(path: PathLike) -> Tuple[int, int]:
    """(height, width) of a PNG or JPEG file, read from its header only (see :func:`image_header_shape`)."""
    p = check_regular_file(path, "image")
    with open(p, "rb") as fh:
        head = fh.read(1 << 20)
    try:
        shape = image_header_shape(head)
        if shape is None:
            raise ValueError("not a PNG or JPEG file")
    except ValueError as exc:
        raise ValueError(f"cannot read image {str(p)!r} ({exc}); use a PNG or JPEG file") from None
    return shape


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


def resize_note(shape: Sequence[int], size: Union[None, int, Sequence[int]]) -> Optional[str]:
    """One line saying what ``size`` does to an image of ``shape`` (H, W), or None when nothing:
    ``"centre-cropped 256×300 to 256×256, resized to 64×64"``, ``"resized 256×256 to 64×48"``."""
    spec = _parse_size(size)
    if spec is None:
        return None
    h0, w0 = int(shape[-2]), int(shape[-1])
    h, w, square = spec
    parts = []
    if square and h0 != w0:
        side = min(h0, w0)
        parts.append(f"centre-cropped {h0}×{w0} to {side}×{side}")
        h0 = w0 = side
    if (h0, w0) != (h, w):
        parts.append(f"resized {h0}×{w0} to {h}×{w}" if not parts else f"resized to {h}×{w}")
    return ", ".join(parts) if parts else None


def load_image(path: PathLike, size: Union[None, int, Sequence[int]] = None, dtype: torch.dtype = torch.float32,
               device: Union[None, str, torch.device] = None, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """A grayscale image as a ``(H, W)`` tensor in [0, 1] (PNG or JPEG, via torchvision.io).

    ``size=k``: centre-crop to a square, then resize to k×k; ``size=(H, W)``: resize to H×W;
    ``None``: the file's own size. Resizing is antialiased bilinear, then clamped to [0, 1].
    A file whose header announces more than ``max_pixels`` pixels is refused before decoding.
    """
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    spec = _parse_size(size)
    max_pixels = check_int(max_pixels, "max_pixels", 1)
    if spec is not None and spec[0] * spec[1] > max_pixels:
        raise ValueError(f"size={size!r} asks for {spec[0]}×{spec[1]} = {spec[0] * spec[1] / 1e6:.1f} Mpixel, above the "
                         f"cap of {max_pixels / 1e6:g} Mpixel; ask for a smaller size (or raise max_pixels)")
    shape = image_shape(path)
    p = check_regular_file(path, "image")
    if shape[0] * shape[1] > max_pixels:
        raise ValueError(f"image {str(p)!r} is {shape[0]}×{shape[1]} = {shape[0] * shape[1] / 1e6:.1f} Mpixel, above "
                         f"the cap of {max_pixels / 1e6:g} Mpixel; downscale the file first (or raise max_pixels)")
    try:
        raw = decode_image(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.GRAY)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unknown format"
        raise ValueError(f"cannot read image {str(p)!r} ({exc.__class__.__name__}: {first}); "
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
                device: Union[None, str, torch.device] = None, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """An object from an image (PNG/JPEG → real ``(H, W)`` in [0, 1]) or a ``.pt`` tensor file.

    A ``.pt`` file holds a tensor or a dict with key ``"x"`` (e.g. the bundled ``complex_object.pt``); it
    is returned as is (complex stays complex), resized when ``size`` is given: modulus and phase are
    resized separately for complex objects (so the phase is not averaged through zero).
    """
    p = check_regular_file(path, "object file")
    if p.suffix.lower() != ".pt":
        return load_image(p, size=size, dtype=dtype, device=device, max_pixels=max_pixels)
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
    """Write a ``(H, W)`` tensor as an 8-bit grayscale PNG (complex → modulus), atomically; returns the path."""
    from torchvision.io import write_png

    img = to_uint8(x, normalise)
    return atomic_write(path, lambda tmp: write_png(img, str(tmp)))


def save_grid(images: Sequence[torch.Tensor], path: PathLike, nrow: Optional[int] = None, padding: int = 2,
              scale: int = 1) -> Path:
    """Several ``(H, W)`` images side by side in one PNG (each min–max normalised), via make_grid.

    ``scale`` enlarges every tile by pixel replication (nearest neighbour) so small images stay visible.
    A quick look without labels; :func:`phasetorch.app.figures.grid_figure` draws the labelled figure.
    """
    from torchvision.io import write_png
    from torchvision.utils import make_grid

    scale = check_int(scale, "scale", 1)
    tiles = torch.stack([to_uint8(im).to(torch.float32) / 255.0 for im in images])  # (N, 1, H, W)
    if scale > 1:
        tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(tiles, nrow=nrow or len(images), padding=padding, pad_value=1.0)
    img = (grid[:1].clamp(0, 1) * 255).round().to(torch.uint8)
    return atomic_write(path, lambda tmp: write_png(img, str(tmp)))


# ---------------------------------------------------------------------------------------- measurements
def operator_identity(op) -> Dict[str, Any]:
    """{"config": op.config() without "dtype", "state_sha256": hex digest} — which operator this is.

    The digest covers every ``state_dict`` entry in name order: its name, shape, dtype and bytes,
    floating tensors rounded to float32 (complex to complex64) first, so a float64 copy of a float32
    operator has the same identity. Operators rebuilt from a seed alone (no state) are identified by
    their config (which holds the seed).
    """
    cfg = dict(op.config())
    cfg.pop("dtype", None)
    h = hashlib.sha256()
    for name, t in sorted(op.state_dict().items()):
        t = t.detach().to("cpu")
        if t.is_complex():
            t = t.to(torch.complex64)
        elif t.is_floating_point():
            t = t.to(torch.float32)
        t = t.contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return {"config": to_jsonable(cfg), "state_sha256": h.hexdigest()}


def _identity_difference(stored: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """Why two :func:`operator_identity` dicts differ (None when they agree)."""
    a, b = stored.get("config") or {}, current.get("config") or {}
    diff = [f"{k}={b.get(k)!r} (the measurements were made with {a.get(k)!r})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        return ", ".join(diff)
    if stored.get("state_sha256") != current.get("state_sha256"):
        return "the same config but different random entries (state SHA-256 " \
               f"{str(current.get('state_sha256'))[:12]}… vs {str(stored.get('state_sha256'))[:12]}…)"
    return None


def save_measurements(path: PathLike, y: torch.Tensor, x_true: Optional[torch.Tensor] = None,
                      support: Optional[torch.Tensor] = None, nonnegative: bool = False,
                      meta: Optional[Dict[str, Any]] = None, operator=None) -> Path:
    """Write a measurements file (format in the module docstring) atomically; returns the path.

    With ``operator`` (the one that made ``y``), its :func:`operator_identity` is stored, and
    :func:`load_measurements` refuses another operator.
    """
    if not isinstance(y, torch.Tensor) or y.is_complex() or not y.is_floating_point():
        raise ValueError("measurements y must be a real floating-point tensor of intensities")
    payload: Dict[str, Any] = {"format": MEASUREMENTS_FORMAT, "version": MEASUREMENTS_VERSION,
                               "y": y.detach().to("cpu").contiguous(), "x_true": None, "support": None,
                               "nonnegative": bool(nonnegative), "meta": to_jsonable(meta or {}),
                               "operator": None if operator is None else operator_identity(operator)}
    if x_true is not None:
        payload["x_true"] = x_true.detach().to("cpu").contiguous()
    if support is not None:
        payload["support"] = support.detach().to("cpu", torch.bool).contiguous()
    return atomic_torch_save(payload, path)


def load_measurements(path: PathLike, operator=None, force: bool = False) -> Dict[str, Any]:
    """Read a measurements file → dict with keys y, x_true, support, nonnegative, meta, operator_match.

    With ``operator``, checks that the trailing dimensions of ``y`` (and ``x_true``, ``support``)
    match it, that it is the operator the file was made with (when the file records one: see the
    module docstring; ``force=True`` skips that check, ``operator_match`` then says False), and
    converts ``y`` to the operator's dtype and device (``x_true`` to its signal dtype).
    ``operator_match`` is True/False, or None when there is nothing to compare.
    """
    p = check_regular_file(path, "measurements file")
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
    version = obj.get("version", MEASUREMENTS_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"measurements file {str(p)!r}: 'version' must be an int, got {version!r}; the file is "
                         f"damaged or not a phasetorch measurements file")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"measurements file {str(p)!r}: 'meta' must be a dict, got {type(meta).__name__}; the file "
                         f"is damaged or not a phasetorch measurements file")
    if fmt != MEASUREMENTS_FORMAT or version > MEASUREMENTS_VERSION:
        raise ValueError(f"measurements file {str(p)!r} has format {fmt!r} version {obj.get('version')}; this "
                         f"phasetorch reads {MEASUREMENTS_FORMAT!r} up to version {MEASUREMENTS_VERSION}")
    out = {"y": obj["y"], "x_true": obj.get("x_true"), "support": obj.get("support"),
           "nonnegative": bool(obj.get("nonnegative", False)), "meta": dict(obj.get("meta") or {}),
           "operator_match": None}
    y = out["y"]
    if y.is_complex() or not y.is_floating_point():
        raise ValueError(f"measurements in {str(p)!r} must be real floating-point intensities, got {y.dtype}")
    if not torch.isfinite(y).all():
        raise ValueError(f"measurements in {str(p)!r} contain NaN or inf; clean them first")
    for key in ("x_true", "support"):
        if out[key] is not None and not isinstance(out[key], torch.Tensor):
            raise ValueError(f"measurements file {str(p)!r}: {key!r} must be a tensor or None")
    if out["x_true"] is not None and not bool(torch.isfinite(out["x_true"]).all()):
        raise ValueError(f"measurements file {str(p)!r}: the stored true signal 'x_true' contains NaN or inf; the file "
                         f"is damaged")
    stored_identity = obj.get("operator")
    if stored_identity is not None and not isinstance(stored_identity, dict):
        raise ValueError(f"measurements file {str(p)!r}: 'operator' must be an operator identity dict or None")
    if operator is not None:
        mshape, sshape = tuple(operator.measurement_shape), tuple(operator.signal_shape)
        if tuple(y.shape[y.dim() - len(mshape):]) != mshape or y.dim() < len(mshape):
            raise ValueError(f"measurements of shape {tuple(y.shape)} do not match the operator, which makes "
                             f"(*batch, {', '.join(map(str, mshape))}); use the operator file saved with them")
        if stored_identity is not None:
            why = _identity_difference(stored_identity, operator_identity(operator))
            out["operator_match"] = why is None
            if why is not None and not force:
                raise ValueError(f"the measurements in {str(p)!r} were not made by this operator: {why}; use the "
                                 f"operator file saved with them (phasetorch simulate writes the pair), or pass "
                                 f"--force (force=True) to reconstruct anyway")
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
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def load_json(path: PathLike) -> Any:
    """Read a JSON file, with a clear error for a missing, non-regular or malformed one."""
    p = check_regular_file(path, "JSON file")
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(p)!r} is not valid JSON ({exc})") from None


def save_figure(fig, path: PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure (headless Agg canvas) atomically and close it; returns the path."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)


def use_agg() -> None:
    """Select matplotlib's headless Agg backend (before pyplot is used; harmless afterwards)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)


__all__ = ["load_image", "load_signal", "image_shape", "image_header_shape", "resize_note", "save_image",
           "save_grid", "to_uint8", "save_measurements", "load_measurements", "operator_identity", "save_json",
           "load_json", "save_figure", "use_agg", "bundled", "atomic_write", "atomic_torch_save",
           "check_regular_file", "DATA_DIR", "REPO_ROOT", "MEASUREMENTS_FORMAT", "MEASUREMENTS_VERSION",
           "MAX_IMAGE_PIXELS", "BUNDLED"]
