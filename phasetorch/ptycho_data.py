r"""Reading and writing ptychography data sets in the ``.npz`` layout of the bundled Siemens-star data.

The layout (that of the tike project's test data, see ``data/README-ptycho.md``):

=========  ===========================================  ==========================================
key        shape (leading singleton axes allowed)        meaning
=========  ===========================================  ==========================================
``data``   (J, h, w) or (1, J, h, w), real               measured intensities (photon counts ≥ 0)
``scan``   (J, 2) or (1, J, 2), real                     scan positions (row, column) in object
                                                         pixels, any offset (the probe window's
                                                         top-left corner up to a common shift)
``probe``  (h, w), (K, h, w) or (1, …, 1, K, h, w),      initial probe (K incoherent modes)
           complex
``mask``   optional, (h, w) or (J, h, w), bool           True where a pixel was measured
=========  ===========================================  ==========================================

Files may be plain ``.npz`` or bzip2-compressed (``.npz.bz2``, recognised by content). Pickled
objects are refused (``numpy.load(allow_pickle=False)``): loading a data file never runs code.
Every problem (a missing key, a shape that does not fit, NaN/inf values, a real probe, …) is a
``ValueError`` that names the key and the fix.
"""

from __future__ import annotations

import bz2
import io
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]
REQUIRED_KEYS = ("data", "scan", "probe")


@dataclass
class PtychoData:
    """One ptychography data set: ``intensities`` (J, h, w) float32, ``positions`` (J, 2) float64 as stored,
    ``probe`` (K, h, w) complex64, ``mask`` None or bool (h, w) / (J, h, w), and ``info`` (source path,
    number of negative intensities clipped to 0, the keys found)."""

    intensities: torch.Tensor
    positions: torch.Tensor
    probe: torch.Tensor
    mask: Optional[torch.Tensor] = None
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return int(self.intensities.shape[0])

    @property
    def pattern_shape(self):
        return tuple(self.intensities.shape[-2:])

    def subset(self, index) -> "PtychoData":
        """The data set restricted to some scan positions (a slice, a list or a tensor of indices)."""
        idx = torch.as_tensor(index) if not isinstance(index, slice) else torch.arange(self.n_positions)[index]
        mask = self.mask if self.mask is None or self.mask.dim() == 2 else self.mask[idx]
        return PtychoData(self.intensities[idx], self.positions[idx], self.probe, mask,
                          dict(self.info, subset=len(idx)))


def _squeeze_leading(a: np.ndarray, ndim: int, key: str, expect: str) -> np.ndarray:
    """Drop leading singleton axes down to ``ndim`` axes; ValueError when that is impossible."""
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim:
        raise ValueError(f"key {key!r} has shape {a.shape}; expected {expect}")
    return a


def _open_npz(path: PathLike):
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"cannot read ptychography data from {p!r}: no such file")
    with open(p, "rb") as fh:
        head = fh.read(3)
    try:
        if head == b"BZh":
            with bz2.open(p, "rb") as fh:
                raw = fh.read()
        else:
            with open(p, "rb") as fh:
                raw = fh.read()
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {p!r} as an .npz (or bzip2-compressed .npz) file: {err}") from err
    except ValueError as err:
        raise ValueError(f"cannot read {p!r} as an .npz file without pickled objects: {err}") from err


def _array(npz, key: str, path: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as err:  # object arrays need pickle
        raise ValueError(f"{path!r}: key {key!r} holds pickled objects, which are refused; store a numeric "
                         f"array") from err


def load_ptycho(path: PathLike) -> PtychoData:
    """Read a ptychography data set (layout in the module docstring) and validate it."""
    p = os.fspath(path)
    npz = _open_npz(p)
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{p!r} lacks the key(s) {', '.join(missing)} (found: {', '.join(npz.files) or 'none'}); "
                             f"a ptychography .npz needs 'data' (J, h, w) intensities, 'scan' (J, 2) positions and "
                             f"'probe' (K, h, w) complex")
        data = _array(npz, "data", p)
        scan = _array(npz, "scan", p)
        probe = _array(npz, "probe", p)
        mask = _array(npz, "mask", p) if "mask" in npz.files else None
        keys = list(npz.files)
    return ptycho_from_arrays(data, scan, probe, mask, info={"path": p, "keys": keys})


def ptycho_from_arrays(data: Any, scan: Any, probe: Any, mask: Any = None,
                       info: Optional[Dict[str, Any]] = None) -> PtychoData:
    """Validate arrays (numpy or torch) in the layout of the module docstring and build a :class:`PtychoData`."""
    data = np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data)
    scan = np.asarray(scan.detach().cpu() if isinstance(scan, torch.Tensor) else scan)
    probe = np.asarray(probe.detach().cpu() if isinstance(probe, torch.Tensor) else probe)
    for key, a in (("data", data), ("scan", scan), ("probe", probe)):
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number)):
            raise ValueError(f"key {key!r} must be a numeric array, got dtype {a.dtype}")
    data = _squeeze_leading(data, 3, "data", "(J, h, w) intensities (optionally with leading axes of size 1)")
    scan = _squeeze_leading(scan, 2, "scan", "(J, 2) positions (optionally with leading axes of size 1)")
    if np.iscomplexobj(data) or np.iscomplexobj(scan):
        raise ValueError("'data' and 'scan' must be real arrays (intensities and pixel positions)")
    if probe.ndim < 2:
        raise ValueError(f"key 'probe' has shape {probe.shape}; expected (h, w) or (K, h, w)")
    h, w = probe.shape[-2:]
    lead = probe.shape[:-2]
    if sum(1 for s in lead if s != 1) > 1:
        raise ValueError(f"key 'probe' has shape {probe.shape}; only one leading axis (the K incoherent modes) may "
                         f"exceed 1")
    probe = probe.reshape(-1, h, w)
    J = data.shape[0]
    if scan.shape != (J, 2):
        raise ValueError(f"'scan' has shape {scan.shape} but 'data' has {J} patterns: expected ({J}, 2)")
    if data.shape[1:] != (h, w):
        raise ValueError(f"patterns are {data.shape[1]}×{data.shape[2]} but the probe is {h}×{w}: they must match "
                         f"(crop or pad the patterns to the probe size)")
    if not np.isfinite(data).all():
        raise ValueError(f"'data' contains {int((~np.isfinite(data)).sum())} NaN/inf values; mark those pixels "
                         f"unmeasured with a 'mask' and set them to 0")
    if not np.isfinite(scan).all():
        raise ValueError("'scan' contains NaN or inf positions; drop those scan points")
    if not np.iscomplexobj(probe):
        raise ValueError("'probe' must be complex (a real array has no phase); store it as complex64")
    if not (np.isfinite(probe.real).all() and np.isfinite(probe.imag).all()):
        raise ValueError("'probe' contains NaN or inf")
    negative = int((data < 0).sum())
    intens = torch.from_numpy(np.clip(data, 0, None).astype(np.float32))
    m = None
    if mask is not None:
        mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if mask.shape not in ((h, w), (J, h, w)):
            raise ValueError(f"'mask' has shape {mask.shape}; expected ({h}, {w}) or ({J}, {h}, {w})")
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError("'mask' must be boolean (True where a pixel was measured)")
        m = torch.from_numpy(mask.astype(bool))
    return PtychoData(intens, torch.from_numpy(scan.astype(np.float64)),
                      torch.from_numpy(probe.astype(np.complex64)), m,
                      dict(info or {}, negative_clipped=negative))


def save_ptycho(path: PathLike, intensities: Any, positions: Any, probe: Any, mask: Any = None,
                compress: Optional[bool] = None) -> None:
    """Write a data set in the layout of the module docstring (bzip2-compressed when ``compress`` or the name
    ends in ``.bz2``); written to a temporary file in the same folder, then renamed (atomic)."""
    d = ptycho_from_arrays(intensities, positions, probe, mask)
    arrays = {"data": d.intensities.numpy(), "scan": d.positions.numpy(), "probe": d.probe.numpy()}
    if d.mask is not None:
        arrays["mask"] = d.mask.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    p = os.fspath(path)
    if compress or (compress is None and p.endswith(".bz2")):
        raw = bz2.compress(raw)
    folder = os.path.dirname(os.path.abspath(p))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = ["PtychoData", "load_ptycho", "ptycho_from_arrays", "save_ptycho", "REQUIRED_KEYS"]
