r"""Test objects: the Shepp–Logan phantom, complex test objects, and the generator of the bundled data.

* :func:`shepp_logan` — the *modified* Shepp–Logan head phantom (Toft 1996, "The Radon transform:
  theory and implementation", PhD thesis, DTU, Table 3.1; the contrast-enhanced version of Shepp &
  Logan, "The Fourier reconstruction of a head section", IEEE Trans. Nucl. Sci. 21, 1974). Ten
  ellipses on [−1, 1]²; pixel (i, j) sits at x = (j − (W−1)/2)/((W−1)/2), y = −(i − (H−1)/2)/((H−1)/2)
  (the MATLAB ``phantom`` grid, y pointing up), and its value is the sum of the additive intensities
  A_k of the ellipses ((x−x_k)cos φ_k + (y−y_k)sin φ_k)²/a_k² + (−(x−x_k)sin φ_k + (y−y_k)cos φ_k)²/b_k² ≤ 1
  that contain it, clamped to [0, 1].
* :func:`complex_object` — x = amplitude · exp(i · phase_range · phase), the standard way of building
  a complex test object from two real images (phase images in [0, 1] map to phases in
  [0, phase_range]).
* :func:`make_bundled_data` — writes the image and object files of the bundled data folder
  (``phasetorch/data/``, package data; ``data/`` in a checkout links to it) from the generator above
  and the Grace Hopper photograph that matplotlib ships (see ``phasetorch/data/README.md``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from . import io as pio
from .tensors import as_shape

# (A, a, b, x0, y0, phi in degrees) — Toft's modified Shepp–Logan table.
MODIFIED_SHEPP_LOGAN: Tuple[Tuple[float, float, float, float, float, float], ...] = (
    (1.0, 0.6900, 0.9200, 0.00, 0.0000, 0.0),
    (-0.8, 0.6624, 0.8740, 0.00, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0000, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0000, 18.0),
    (0.1, 0.2100, 0.2500, 0.00, 0.3500, 0.0),
    (0.1, 0.0460, 0.0460, 0.00, 0.1000, 0.0),
    (0.1, 0.0460, 0.0460, 0.00, -0.1000, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.6050, 0.0),
    (0.1, 0.0230, 0.0230, 0.00, -0.6060, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.6050, 0.0),
)


def _grid_axis(k: int) -> torch.Tensor:
    if k == 1:
        return torch.zeros(1, dtype=torch.float64)
    return (torch.arange(k, dtype=torch.float64) - (k - 1) / 2) / ((k - 1) / 2)


def shepp_logan(size: Union[int, Sequence[int]] = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The modified Shepp–Logan phantom of shape ``(H, W)`` with values in [0, 1] (formula above).

    ``size`` is an int (square) or ``(H, W)``. Deterministic: no randomness.
    """
    shape = as_shape(size, "shepp_logan: size")
    if len(shape) == 1:
        shape = shape * 2
    if len(shape) != 2:
        raise ValueError(f"shepp_logan: size must be an int or (H, W), got {size!r}")
    h, w = shape
    y = -_grid_axis(h)[:, None]
    x = _grid_axis(w)[None, :]
    img = torch.zeros(h, w, dtype=torch.float64)
    for amp, a, b, x0, y0, phi in MODIFIED_SHEPP_LOGAN:
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        u = (x - x0) * c + (y - y0) * s
        v = -(x - x0) * s + (y - y0) * c
        img = img + amp * ((u / a) ** 2 + (v / b) ** 2 <= 1.0).to(torch.float64)
    return img.clamp(0.0, 1.0).to(dtype)


def complex_object(amplitude: torch.Tensor, phase: torch.Tensor, phase_range: float = math.pi) -> torch.Tensor:
    """x = amplitude · exp(i · phase_range · phase) (complex64 for float32 inputs, complex128 for float64).

    ``amplitude`` and ``phase`` are real tensors of the same shape; a phase image in [0, 1] becomes
    phases in [0, phase_range] (π by default, so that 0 and 1 are not wrapped onto each other).
    """
    if amplitude.shape != phase.shape:
        raise ValueError(f"complex_object: amplitude {tuple(amplitude.shape)} and phase {tuple(phase.shape)} "
                         f"must have the same shape; resize one of them")
    if amplitude.is_complex() or phase.is_complex():
        raise ValueError("complex_object: amplitude and phase must be real tensors")
    dtype = torch.promote_types(amplitude.dtype, phase.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return torch.polar(amplitude.to(dtype), (phase_range * phase).to(dtype))


def make_bundled_data(out_dir: Union[str, Path], hopper_jpg: Optional[Union[str, Path]] = None,
                      size: int = 256, object_size: int = 64) -> dict:
    """Write the bundled image and object files into ``out_dir`` and return {name: path} (atomically).

    * ``grace_hopper.png`` — the photograph matplotlib ships (``mpl-data/sample_data/grace_hopper.jpg``,
      found through ``matplotlib.cbook.get_sample_data`` unless ``hopper_jpg`` is given), converted to
      grayscale, centre-cropped to a square and resized (antialiased bilinear) to ``size``×``size``.
    * ``shepp_logan.png`` — :func:`shepp_logan` at ``size``×``size``.
    * ``complex_object.pt`` — {"x": complex64 ``object_size``×``object_size`` tensor, "description": str}:
      amplitude 0.2 + 0.8·(Shepp–Logan), phase π·(Grace Hopper) — both at ``object_size``. The amplitude
      floor 0.2 keeps the phase defined everywhere.
    """
    out = Path(out_dir)
    if hopper_jpg is None:
        import matplotlib.cbook

        hopper_jpg = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    hopper = pio.load_image(hopper_jpg, size=size)
    phantom = shepp_logan(size)
    paths = {"grace_hopper": out / "grace_hopper.png", "shepp_logan": out / "shepp_logan.png",
             "complex_object": out / "complex_object.pt"}
    pio.save_image(hopper, paths["grace_hopper"], normalise=False)
    pio.save_image(phantom, paths["shepp_logan"], normalise=False)
    amp = 0.2 + 0.8 * pio.load_image(paths["shepp_logan"], size=object_size)
    phase = pio.load_image(paths["grace_hopper"], size=object_size)
    x = complex_object(amp, phase)
    pio.atomic_torch_save({"x": x.contiguous(), "description": (
        f"{object_size}x{object_size} complex test object: amplitude 0.2 + 0.8*shepp_logan.png, "
        f"phase pi*grace_hopper.png (both resized to {object_size}x{object_size})")}, paths["complex_object"])
    return {k: str(v) for k, v in paths.items()}


__all__ = ["shepp_logan", "complex_object", "make_bundled_data", "MODIFIED_SHEPP_LOGAN"]
