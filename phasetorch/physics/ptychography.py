r"""Far-field ptychography: a probe P scans an object O; pattern j is I_j = Σ_k |F(P_k · S_j O)|².

The measurement model of (blind) ptychography (Rodenburg & Faulkner, Appl. Phys. Lett. 85, 4795
(2004); mixed-state probes: Thibault & Menzel, Nature 494, 68 (2013)):

    ψ_{jk} = P_k ⊙ S_j O           exit wave of probe mode k at scan position j
    Ψ_{jk} = F ψ_{jk}              far field (unitary 2-D DFT, ``norm="ortho"``)
    I_j    = Σ_k |Ψ_{jk}|²         the incoherent modes add in intensity

S_j extracts the h×w patch of the object under the probe: (S_j O)[a, b] = O(r_j + a, c_j + b) for
the scan position (r_j, c_j) = ``positions[j]``, the **top-left corner** of the probe window in
object pixels (row, column; 0 = the first pixel; sub-pixel values allowed). Sub-pixel positions are
interpolated (``interpolation=``):

* ``"bilinear"``: the (h+1)×(w+1) window at ⌊r⌋, ⌊c⌋ blended with the weights
  (1−f, f) along each axis, f the fractional part — one gather, four multiply-adds, exact adjoint
  (the transposed blend, scattered back);
* ``"fourier"``: the (h+2)×(w+2) window at ⌊r⌋−1, ⌊c⌋−1 shifted by f with the Fourier shift
  theorem g(a) = E(a + f) ⇔ ĝ(k) = Ê(k) e^{2πi k·f/N}, then cropped to h×w (band-limited; two
  extra FFTs per pattern);
* ``"fourier-probe"`` (default): the object stays on its pixel grid (S_j takes the h×w window at ⌊r⌋, ⌊c⌋)
  and the *probe* is shifted instead, P_{jk}(a) = P_k(a − f_j) by the Fourier shift theorem
  (circular on the h×w probe grid) — pty-chi's default (``apply_subpixel_shifts_on_probe``). For a
  band-limited field this gives the same intensities as shifting the object (a shift of the exit
  wave only multiplies its far field by a phase ramp), without interpolating the object; one extra
  FFT per pattern for the forward model and one for the probe adjoint.

In all three, ψ_{jk} = P_{jk} ⊙ S_j O with P_{jk} = P_k for the object-shift modes
(:func:`positioned_probes`).

Detector convention (``zero_frequency=``): ``"corner"`` (default) puts the zero spatial frequency of
each pattern at pixel (0, 0) — the unshifted FFT layout of ``torch.fft.fft2``, which is how the
bundled Siemens-star data are stored; ``"center"`` puts it at (h//2, w//2) (``torch.fft.fftshift``
applied to the far field, ``ifftshift`` in the adjoint).

Scale: F is unitary, so Σ_pixels I_j = Σ_k ‖P_k ⊙ S_j O‖² (Parseval) and the mean squared entry of
A: O ↦ (Ψ_{jk}) is ``entry_energy`` = Σ_k‖P_k‖² / (h·w·H·W) for an object of H×W pixels (exact for
integer positions; bilinear weights lower it slightly at fractional ones).

Memory: every product runs over the scan positions in chunks of ``chunk`` positions (default 32:
a chunk of 128×128 complex64 patterns fits in cache, which makes CPU FFTs several times faster than
one call over the whole scan), so work buffers scale with the chunk, not with the data set; only
the output itself has one entry per position.

Autograd: everything here is differentiable in the object, the probe **and** the positions.
PyTorch's gradient of a real loss L with respect to a complex tensor is 2·∂L/∂z̄ (the conjugate
Wirtinger gradient times 2); :meth:`Ptychography.adjoint` and :meth:`Ptychography.probe_adjoint`
are the exact adjoints, so ``adjoint(v)`` equals the autograd vector-Jacobian product
``torch.autograd.grad(linear(x), x, v)`` (tested).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as nnf

from .base import MeasurementOperator
from .registry import register_operator
from ..tensors import Shape, abs2, as_shape, check_int, complex_dtype_of, dtype_name, parse_dtype, real_dtype_of

INTERPOLATIONS = ("bilinear", "fourier", "fourier-probe")
ZERO_FREQUENCY = ("corner", "center")
DEFAULT_CHUNK = 32

# window geometry per interpolation: (offset before ⌊position⌋, extra pixels per axis)
_WINDOW = {"bilinear": (0, 1), "fourier": (1, 2), "fourier-probe": (0, 0)}


# ============================================================================ validation
def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return interpolation


def check_zero_frequency(zero_frequency: str) -> str:
    if zero_frequency not in ZERO_FREQUENCY:
        raise ValueError(f"zero_frequency must be 'corner' (unshifted FFT layout, DC at pixel (0, 0)) or "
                         f"'center' (fftshift layout, DC at (h//2, w//2)), got {zero_frequency!r}")
    return zero_frequency


def window_margin(interpolation: str) -> Tuple[int, int]:
    """(pixels needed before ⌊position⌋, pixels needed after ⌊position⌋ + probe size) for ``interpolation``."""
    lo, extra = _WINDOW[check_interpolation(interpolation)]
    return lo, extra - lo


def check_positions(positions: torch.Tensor, probe_shape: Shape, object_shape: Shape,
                    interpolation: str = "fourier-probe", who: str = "Ptychography") -> None:
    """ValueError unless ``positions`` is a finite (J, 2) real tensor whose windows fit in the object."""
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[-1] != 2 \
            or positions.shape[0] < 1:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"{who}: positions must be a (J, 2) tensor of (row, column) probe-window corners in "
                         f"object pixels with J ≥ 1, got {shape}")
    if positions.is_complex() or not positions.is_floating_point():
        raise ValueError(f"{who}: positions must be a real floating-point tensor, got {positions.dtype}")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError(f"{who}: positions contain NaN or inf; drop those scan points")
    lo, hi = window_margin(interpolation)
    low = positions.detach().floor().amin(0)
    high = positions.detach().floor().amax(0)
    for ax, name in enumerate(("row", "column")):
        first = float(low[ax]) - lo
        last = float(high[ax]) + probe_shape[ax] + hi
        if first < 0 or last > object_shape[ax]:
            raise ValueError(
                f"{who}: {name} positions {float(low[ax]):g}…{float(high[ax]):g} put the probe window "
                f"({probe_shape[ax]} px, {interpolation} interpolation needs {lo} px before and {hi} after) "
                f"outside an object of {object_shape[ax]} px; enlarge object_shape or shift the positions "
                f"(phasetorch.physics.ptychography.fit_object does both)")


def fit_object(positions: torch.Tensor, probe_shape: Sequence[int], margin: int = 2
               ) -> Tuple[torch.Tensor, Shape]:
    """Shift raw scan positions to object pixels and size the object to hold every probe window.

    Returns ``(positions − min + margin, (H, W))`` with H = ⌈max row − min row⌉ + h + 2·margin + 1
    (W likewise), so windows keep ``margin`` pixels from each edge (``margin ≥ 2`` is enough for either
    interpolation and leaves room for position refinement of up to ``margin − 2`` px).
    """
    probe_shape = as_shape(probe_shape, "probe_shape")
    margin = check_int(margin, "margin", 1)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be a (J, 2) tensor, got "
                         f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else positions!r}")
    if not bool(torch.isfinite(positions).all()):
        raise ValueError("positions contain NaN or inf; drop those scan points")
    low = positions.amin(0)
    shifted = positions - low + margin
    span = (positions.amax(0) - low).ceil()
    shape = tuple(int(span[i]) + probe_shape[-2 + i] + 2 * margin + 1 for i in range(2))
    return shifted, shape


# ============================================================================ patches
def _split(positions: torch.Tensor, interpolation: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer window corners (long, (J, 2)) and fractional offsets (real, (J, 2), differentiable)."""
    lo = _WINDOW[interpolation][0]
    base = positions.detach().floor()
    return base.long() - lo, positions - base


def _window_index(corners: torch.Tensor, size: Tuple[int, int], width: int) -> torch.Tensor:
    """Flat indices (J, sh, sw) of each window in a row-major object of ``width`` columns."""
    dev = corners.device
    rows = corners[:, 0, None, None] + torch.arange(size[0], device=dev)[None, :, None]
    cols = corners[:, 1, None, None] + torch.arange(size[1], device=dev)[None, None, :]
    return rows * width + cols


def _gather(obj: torch.Tensor, corners: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Windows of ``obj`` (*batch, H, W) at ``corners``: (*batch, J, sh, sw) (differentiable)."""
    H, W = obj.shape[-2:]
    idx = _window_index(corners, size, W)
    flat = obj.reshape(*obj.shape[:-2], H * W)
    out = flat.index_select(-1, idx.reshape(-1))
    return out.reshape(*obj.shape[:-2], *idx.shape)


def _scatter(windows: torch.Tensor, corners: torch.Tensor, object_shape: Shape,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ_j (windows_j placed at corners_j): the adjoint of :func:`_gather`; added into ``out`` if given.

    On the CPU without autograd, a loop of in-place slice additions (about twice as fast as
    ``index_add_``, which serialises on the overlaps); elsewhere one ``index_add_``.
    """
    H, W = object_shape
    batch = windows.shape[:-3]
    sh, sw = windows.shape[-2:]
    differentiable = torch.is_grad_enabled() and (windows.requires_grad or (out is not None and out.requires_grad))
    if out is None:
        out = windows.new_zeros(*batch, H, W)
    if windows.device.type == "cpu" and not differentiable:
        for j, (r, c) in enumerate(corners.tolist()):
            out[..., r:r + sh, c:c + sw].add_(windows[..., j, :, :])
        return out
    idx = _window_index(corners, (sh, sw), W).reshape(-1)
    flat = out.reshape(*batch, H * W)
    src = windows.reshape(*batch, -1)
    if differentiable:
        return flat.index_add(-1, idx, src).reshape(*batch, H, W)
    flat.index_add_(-1, idx, src)
    return out


def _fourier_ramp(frac: torch.Tensor, size: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """e^{2πi (f_r k_r/N_r + f_c k_c/N_c)} on the (N_r, N_c) DFT grid, one per position: (J, N_r, N_c)."""
    real = real_dtype_of(dtype)
    kr = torch.fft.fftfreq(size[0], device=frac.device, dtype=real)
    kc = torch.fft.fftfreq(size[1], device=frac.device, dtype=real)
    phase = 2 * math.pi * (frac[:, 0, None, None].to(real) * kr[None, :, None]
                           + frac[:, 1, None, None].to(real) * kc[None, None, :])
    return torch.polar(torch.ones_like(phase), phase)


def _host_loop(*tensors: torch.Tensor) -> bool:
    """Whether the CPU fast path (a Python loop of in-cache slice operations) applies: CPU tensors and
    no autograd graph to record."""
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _bilinear_weights(frac: torch.Tensor) -> List[Tuple[float, float, float, float]]:
    """(w00, w01, w10, w11) per position, as Python floats (CPU fast path)."""
    fr, fc = frac[:, 0].tolist(), frac[:, 1].tolist()
    return [((1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b) for a, b in zip(fr, fc)]


def _extract_bilinear_loop(obj: torch.Tensor, corners: torch.Tensor, frac: torch.Tensor, h: int, w: int
                           ) -> torch.Tensor:
    """CPU fast path of bilinear extraction: per position one multiply and three axpys on object slices."""
    out = obj.new_empty(*obj.shape[:-2], corners.shape[0], h, w)
    for j, ((r, c), (w00, w01, w10, w11)) in enumerate(zip(corners.tolist(), _bilinear_weights(frac))):
        o = out[..., j, :, :]
        torch.mul(obj[..., r:r + h, c:c + w], w00, out=o)
        if w01:
            o.add_(obj[..., r:r + h, c + 1:c + 1 + w], alpha=w01)
        if w10:
            o.add_(obj[..., r + 1:r + 1 + h, c:c + w], alpha=w10)
        if w11:
            o.add_(obj[..., r + 1:r + 1 + h, c + 1:c + 1 + w], alpha=w11)
    return out


def _place_bilinear_loop(patches: torch.Tensor, corners: torch.Tensor, frac: torch.Tensor, out: torch.Tensor
                         ) -> torch.Tensor:
    """CPU fast path of the bilinear adjoint: four axpys of each patch into the object (in place)."""
    h, w = patches.shape[-2:]
    for j, ((r, c), (w00, w01, w10, w11)) in enumerate(zip(corners.tolist(), _bilinear_weights(frac))):
        p = patches[..., j, :, :]
        if w00:
            out[..., r:r + h, c:c + w].add_(p, alpha=w00)
        if w01:
            out[..., r:r + h, c + 1:c + 1 + w].add_(p, alpha=w01)
        if w10:
            out[..., r + 1:r + 1 + h, c:c + w].add_(p, alpha=w10)
        if w11:
            out[..., r + 1:r + 1 + h, c + 1:c + 1 + w].add_(p, alpha=w11)
    return out


def _extract_integer_loop(obj: torch.Tensor, corners: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """CPU fast path of integer-window extraction: one slice copy per position."""
    out = obj.new_empty(*obj.shape[:-2], corners.shape[0], h, w)
    for j, (r, c) in enumerate(corners.tolist()):
        out[..., j, :, :].copy_(obj[..., r:r + h, c:c + w])
    return out


def extract_patches(obj: torch.Tensor, positions: torch.Tensor, shape: Sequence[int],
                    interpolation: str = "fourier-probe") -> torch.Tensor:
    r"""S_j O for every position: (*batch, H, W) object → (*batch, J, h, w) patches.

    (S_j O)[a, b] = O(r_j + a, c_j + b), interpolated at sub-pixel positions (module docstring);
    for ``"fourier-probe"`` the window at the integer part (⌊r_j⌋, ⌊c_j⌋).
    Differentiable in ``obj`` and ``positions``; positions must fit (:func:`check_positions`).
    """
    h, w = as_shape(shape, "shape")
    check_interpolation(interpolation)
    corners, frac = _split(positions, interpolation)
    if interpolation == "fourier-probe":
        if _host_loop(obj):
            return _extract_integer_loop(obj, corners, h, w)
        return _gather(obj, corners, (h, w))
    if interpolation == "bilinear":
        if _host_loop(obj, positions):
            return _extract_bilinear_loop(obj, corners, frac, h, w)
        win = _gather(obj, corners, (h + 1, w + 1))
        fr = frac[:, 0, None, None].to(win.real.dtype)
        fc = frac[:, 1, None, None].to(win.real.dtype)
        rows = win[..., :-1, :] + fr * (win[..., 1:, :] - win[..., :-1, :])
        return rows[..., :, :-1] + fc * (rows[..., :, 1:] - rows[..., :, :-1])
    win = _gather(obj, corners, (h + 2, w + 2))
    ramp = _fourier_ramp(frac, (h + 2, w + 2), win.dtype)
    shifted = torch.fft.ifft2(torch.fft.fft2(win) * ramp)
    if not obj.is_complex():
        shifted = shifted.real
    return shifted[..., 1:h + 1, 1:w + 1]


def place_patches(patches: torch.Tensor, positions: torch.Tensor, object_shape: Sequence[int],
                  interpolation: str = "fourier-probe", out: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Σ_j S_jᵀ g_j: the exact adjoint of :func:`extract_patches` ((*batch, J, h, w) → (*batch, H, W)).

    Added into ``out`` (in place, returned) when given.
    """
    object_shape = as_shape(object_shape, "object_shape")
    check_interpolation(interpolation)
    h, w = patches.shape[-2:]
    corners, frac = _split(positions, interpolation)
    if interpolation == "fourier-probe":
        return _scatter(patches, corners, object_shape, out)
    if interpolation == "bilinear":
        if _host_loop(patches, positions, *(() if out is None else (out,))):
            if out is None:
                out = patches.new_zeros(*patches.shape[:-3], *object_shape)
            return _place_bilinear_loop(patches, corners, frac, out)
        fr = frac[:, 0, None, None].to(patches.real.dtype)
        fc = frac[:, 1, None, None].to(patches.real.dtype)
        # transpose of rows[..., :-1] + fc·(rows[..., 1:] − rows[..., :-1]) and of the row blend
        rows = nnf.pad(patches - fc * patches, (0, 1)) + nnf.pad(fc * patches, (1, 0))
        win = nnf.pad(rows - fr * rows, (0, 0, 0, 1)) + nnf.pad(fr * rows, (0, 0, 1, 0))
    else:
        padded = nnf.pad(patches, (1, 1, 1, 1))
        ramp = _fourier_ramp(frac, (h + 2, w + 2), padded.dtype if padded.is_complex()
                             else complex_dtype_of(padded.dtype))
        win = torch.fft.ifft2(torch.fft.fft2(padded) * ramp.conj())
        if not patches.is_complex():
            win = win.real
    return _scatter(win, corners, object_shape, out)


def patch_gradients(obj: torch.Tensor, positions: torch.Tensor, shape: Sequence[int],
                    interpolation: str = "fourier-probe") -> torch.Tensor:
    r"""∂(S_j O)/∂r_j and ∂(S_j O)/∂c_j: (*batch, J, 2, h, w), the derivative of each patch with respect to
    its position (row, column) — exact for the chosen interpolation (bilinear: piecewise-linear
    differences; Fourier: spectral derivative 2πi k/N). Used for position refinement."""
    h, w = as_shape(shape, "shape")
    check_interpolation(interpolation)
    if interpolation == "fourier-probe":
        raise ValueError("patch_gradients: with 'fourier-probe' the object patches do not move with sub-pixel "
                         "positions; use exit_wave_gradients, which differentiates the shifted probe")
    corners, frac = _split(positions, interpolation)
    if interpolation == "bilinear":
        win = _gather(obj, corners, (h + 1, w + 1))
        fr = frac[:, 0, None, None].to(win.real.dtype)
        fc = frac[:, 1, None, None].to(win.real.dtype)
        drow = win[..., 1:, :] - win[..., :-1, :]                      # (h, w+1)
        d_r = drow[..., :, :-1] + fc * (drow[..., :, 1:] - drow[..., :, :-1])
        rows = win[..., :-1, :] + fr * drow
        d_c = rows[..., :, 1:] - rows[..., :, :-1]
        return torch.stack([d_r, d_c], dim=-3)
    win = _gather(obj, corners, (h + 2, w + 2))
    ramp = _fourier_ramp(frac, (h + 2, w + 2), win.dtype)
    spec = torch.fft.fft2(win) * ramp
    real = real_dtype_of(spec.dtype)
    kr = torch.fft.fftfreq(h + 2, device=obj.device, dtype=real)[:, None]
    kc = torch.fft.fftfreq(w + 2, device=obj.device, dtype=real)[None, :]
    d = torch.fft.ifft2(torch.stack([spec * (2j * math.pi * kr), spec * (2j * math.pi * kc)], dim=-3))
    if not obj.is_complex():
        d = d.real
    return d[..., 1:h + 1, 1:w + 1]


# ============================================================================ far field
def propagate(psi: torch.Tensor, zero_frequency: str = "corner") -> torch.Tensor:
    """Ψ = F ψ over the last two axes: unitary DFT; ``fftshift``-ed when ``zero_frequency="center"``."""
    out = torch.fft.fft2(psi, norm="ortho")
    return torch.fft.fftshift(out, dim=(-2, -1)) if zero_frequency == "center" else out


def propagate_adjoint(z: torch.Tensor, zero_frequency: str = "corner") -> torch.Tensor:
    """Fᴴ z = F⁻¹ z (unitary): the adjoint and inverse of :func:`propagate`."""
    if zero_frequency == "center":
        z = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.ifft2(z, norm="ortho")


def positioned_probes(probe: torch.Tensor, positions: torch.Tensor, interpolation: str = "fourier-probe"
                      ) -> torch.Tensor:
    r"""P_{jk}: the probe as it multiplies S_j O. ``probe`` itself for the object-shift modes; for
    ``"fourier-probe"`` one shifted copy per position, P_{jk}(a) = P_k(a − f_j) (f_j the fractional part
    of positions[j]): (J, K, h, w) for a (K, h, w) probe, (J, h, w) for (h, w). Differentiable."""
    if check_interpolation(interpolation) != "fourier-probe":
        return probe
    frac = positions - positions.detach().floor()
    ramp = _fourier_ramp(-frac, tuple(probe.shape[-2:]), probe.dtype)          # (J, h, w)
    if probe.dim() == 3:
        ramp = ramp.unsqueeze(1)
    return torch.fft.ifft2(torch.fft.fft2(probe) * ramp)


def positioned_probes_adjoint(g: torch.Tensor, positions: torch.Tensor, interpolation: str = "fourier-probe"
                              ) -> torch.Tensor:
    r"""Adjoint of :func:`positioned_probes` summed over positions: Σ_j shift_jᴴ g_j, shape of one probe
    (``g``: (J, [K,] h, w); for the object-shift modes just Σ_j g_j)."""
    if check_interpolation(interpolation) != "fourier-probe":
        return g.sum(0)
    frac = positions - positions.detach().floor()
    ramp = _fourier_ramp(frac, tuple(g.shape[-2:]), g.dtype if g.is_complex() else complex_dtype_of(g.dtype))
    if g.dim() == 4:
        ramp = ramp.unsqueeze(1)
    return torch.fft.ifft2((torch.fft.fft2(g) * ramp).sum(0))


def exit_waves(obj: torch.Tensor, probe: torch.Tensor, positions: torch.Tensor,
               interpolation: str = "fourier-probe") -> torch.Tensor:
    r"""ψ_{jk} = P_{jk} ⊙ S_j O: (*batch, J, K, h, w) for a (K, h, w) probe, (*batch, J, h, w) for (h, w)."""
    patches = extract_patches(obj, positions, probe.shape[-2:], interpolation)
    probes = positioned_probes(probe, positions, interpolation)
    return patches.unsqueeze(-3) * probes if probe.dim() == 3 else patches * probes


def exit_wave_gradients(obj: torch.Tensor, probe: torch.Tensor, positions: torch.Tensor,
                        interpolation: str = "fourier-probe") -> torch.Tensor:
    r"""∂ψ_{jk}/∂r_j and ∂ψ_{jk}/∂c_j: (*batch, J, 2, [K,] h, w), exact for every interpolation.

    Object-shift modes: P_k ⊙ ∂(S_j O)/∂r_j (:func:`patch_gradients`); ``"fourier-probe"``:
    −(∂_a P_k)(a − f_j) ⊙ S_j O, the spectral derivative of the shifted probe. Used for position
    refinement (a Gauss–Newton step Δr_j = Re⟨∂ψ_j, χ_j⟩/‖∂ψ_j‖² per axis).
    """
    h, w = probe.shape[-2:]
    if check_interpolation(interpolation) != "fourier-probe":
        d = patch_gradients(obj, positions, (h, w), interpolation)                  # (*b, J, 2, h, w)
        return d.unsqueeze(-3) * probe if probe.dim() == 3 else d * probe
    frac = positions - positions.detach().floor()
    spec = torch.fft.fft2(probe) * (_fourier_ramp(-frac, (h, w), probe.dtype).unsqueeze(1)
                                    if probe.dim() == 3 else _fourier_ramp(-frac, (h, w), probe.dtype))
    real = real_dtype_of(spec.dtype)
    kr = torch.fft.fftfreq(h, device=probe.device, dtype=real)[:, None]
    kc = torch.fft.fftfreq(w, device=probe.device, dtype=real)[None, :]
    dprobe = -torch.fft.ifft2(torch.stack([spec * (2j * math.pi * kr), spec * (2j * math.pi * kc)], dim=1))
    patches = extract_patches(obj, positions, (h, w), interpolation)               # (*b, J, h, w)
    if probe.dim() == 3:
        return patches[..., :, None, None, :, :] * dprobe
    return patches.unsqueeze(-3) * dprobe


def far_field(obj: torch.Tensor, probe: torch.Tensor, positions: torch.Tensor,
              interpolation: str = "fourier-probe", zero_frequency: str = "corner") -> torch.Tensor:
    """Ψ_{jk} = F(P_k ⊙ S_j O) for all positions at once (no chunking; differentiable everywhere)."""
    return propagate(exit_waves(obj, probe, positions, interpolation), zero_frequency)


def intensities(field: torch.Tensor, modal: bool) -> torch.Tensor:
    """I = Σ_k |Ψ_k|² (``modal``: the mode axis −3 is summed) or |Ψ|²."""
    i = abs2(field)
    return i.sum(-3) if modal else i


# ============================================================================ operator
@register_operator
class Ptychography(MeasurementOperator):
    r"""Far-field ptychography I_j = Σ_k |F(P_{jk} ⊙ S_j O)|² (see the module docstring for every convention).

    Parameters
    ----------
    probe : complex tensor (h, w) (one coherent probe) or (K, h, w) (K incoherent modes); or, to
        rebuild from :meth:`config`, the probe's shape (a zero probe, filled by ``load_state_dict``).
    positions : (J, 2) real tensor of (row, column) top-left corners of the probe window in object
        pixels (sub-pixel values allowed); or, to rebuild from :meth:`config`, the number J.
    object_shape : (H, W) of the object O (the signal); every window must fit (:func:`fit_object`).
    interpolation : sub-pixel shifts: ``"fourier-probe"`` (default: the probe is shifted, the object
        stays on its grid), or ``"bilinear"`` / ``"fourier"`` shifts of the object patch.
    zero_frequency : ``"corner"`` (default: DC at pixel (0, 0), unshifted FFT layout) or ``"center"``.
    chunk : positions per chunk of every product (memory ∝ chunk; default 32).
    dtype : float32 (default) or float64; a complex probe sets it from its own dtype when omitted.

    Shapes: ``signal_shape = (H, W)``; ``measurement_shape = (J, h, w)`` (the intensities); the
    field Ax of :meth:`linear` has ``field_shape`` = (J, h, w) for a 2-D probe and (J, K, h, w) for a
    modal probe (then :meth:`forward` sums the modes). With a 2-D probe this is a plain
    |Ax|² operator that every phasetorch solver accepts (known probe and positions).
    """

    is_complex = True

    def __init__(self, probe: Union[torch.Tensor, Sequence[int]], positions: Union[torch.Tensor, int],
                 object_shape: Sequence[int], interpolation: str = "fourier-probe", zero_frequency: str = "corner",
                 chunk: int = DEFAULT_CHUNK, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.interpolation = check_interpolation(interpolation)
        self.zero_frequency = check_zero_frequency(zero_frequency)
        self.chunk = check_int(chunk, "chunk", 1)
        try:
            self.signal_shape = as_shape(object_shape, "object_shape")
        except ValueError:
            raise ValueError(f"Ptychography: object_shape must be (H, W) positive ints, got {object_shape!r}") from None
        if len(self.signal_shape) != 2:
            raise ValueError(f"Ptychography: object_shape must be (H, W), got {self.signal_shape}")
        if isinstance(probe, torch.Tensor):
            if probe.dim() not in (2, 3) or min(probe.shape) < 1:
                raise ValueError(f"Ptychography: probe must be (h, w) or (K modes, h, w), got shape {tuple(probe.shape)}")
            if not bool(torch.isfinite(torch.view_as_real(probe) if probe.is_complex() else probe).all()):
                raise ValueError("Ptychography: the probe contains NaN or inf")
            real = parse_dtype(dtype if dtype is not None else
                               (probe.dtype if probe.is_floating_point() or probe.is_complex() else torch.float32))
            probe_t = probe.detach().cpu().to(complex_dtype_of(real))
        else:
            shape = as_shape(probe, "probe")
            if len(shape) not in (2, 3):
                raise ValueError(f"Ptychography: probe shape must be (h, w) or (K, h, w), got {shape}")
            real = parse_dtype(dtype if dtype is not None else torch.float32)
            probe_t = torch.zeros(shape, dtype=complex_dtype_of(real))
        self.modal = probe_t.dim() == 3
        self.probe_shape: Shape = tuple(probe_t.shape[-2:])
        self.n_modes = probe_t.shape[0] if self.modal else 1
        lo = _WINDOW[self.interpolation][0]
        if isinstance(positions, torch.Tensor):
            pos = positions.detach().cpu().to(real)
            check_positions(pos, self.probe_shape, self.signal_shape, self.interpolation)
        else:
            count = check_int(positions, "positions (a tensor or a count)", 1)
            pos = torch.full((count, 2), float(lo), dtype=real)
            check_positions(pos, self.probe_shape, self.signal_shape, self.interpolation)
        self.n_positions = pos.shape[0]
        self.measurement_shape = (self.n_positions, *self.probe_shape)
        self.field_shape: Shape = ((self.n_positions, self.n_modes, *self.probe_shape) if self.modal
                                   else self.measurement_shape)
        self._dtype_probe = self._dtype_probe.to(real)
        self.register_random("probe_field", probe_t)
        self.register_buffer("positions", pos)

    # ------------------------------------------------------------------ parts
    @property
    def probe(self) -> torch.Tensor:
        """The probe (complex, (h, w) or (K, h, w))."""
        return self.buffer("probe_field")

    @property
    def entry_energy(self) -> float:
        """E|A_ij|² = Σ_k‖P_k‖² / (h·w·H·W) (unitary FFT; exact at integer positions). Read from the device
        once per value of the probe (cached on its storage and version counter: a probe refined in place
        or replaced is read again), so an iteration loop's evaluations do not each synchronise with the
        device."""
        p = self.probe
        key = (p.data_ptr(), p._version, p.shape, p.dtype, p.device)
        cached = getattr(self, "_energy_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, float(abs2(p).sum()) / (math.prod(self.probe_shape) * self.n))
            self._energy_cache = cached
        return cached[1]

    def _chunks(self):
        J, c = self.n_positions, self.chunk
        return [(s, min(s + c, J)) for s in range(0, J, c)]

    def _check_field(self, z: torch.Tensor) -> None:
        self._check(z, self.field_shape, "field")

    # ------------------------------------------------------------------ products
    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        probe, pos = self.probe, self.positions
        parts = [far_field(x, probe, pos[a:b], self.interpolation, self.zero_frequency) for a, b in self._chunks()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-len(self.field_shape))

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        r"""Aᴴz = Σ_j S_jᵀ Σ_k conj(P_k) ⊙ F⁻¹ z_{jk} for z of shape ``(*batch, *field_shape)``."""
        self._check_field(z)
        if not z.is_complex():
            z = z.to(self.signal_dtype)
        return self._adjoint(z)

    def _adjoint(self, z: torch.Tensor) -> torch.Tensor:
        probe = self.probe
        k = len(self.field_shape)
        out = None
        for a, b in self._chunks():
            part = z.narrow(z.dim() - k, a, b - a)
            probe_c = positioned_probes(probe, self.positions[a:b], self.interpolation).conj()
            u = propagate_adjoint(part, self.zero_frequency) * probe_c
            if self.modal:
                u = u.sum(-3)
            out = place_patches(u, self.positions[a:b], self.signal_shape, self.interpolation, out)
        return out

    def _linear_adjoint(self, x: torch.Tensor, fn):
        z = self._linear(x)
        v = fn(z, None)
        self._check_field(v)
        if not v.is_complex():
            v = v.to(self.signal_dtype)
        return z, self._adjoint(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Intensities I_j = Σ_k |F(P_k ⊙ S_j O)|², shape ``(*batch, J, h, w)``, chunk by chunk."""
        self.check_signal(x)
        if not x.is_complex():
            x = x.to(self.signal_dtype)
        probe, pos = self.probe, self.positions
        parts = [intensities(far_field(x, probe, pos[a:b], self.interpolation, self.zero_frequency), self.modal)
                 for a, b in self._chunks()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-3)

    def probe_adjoint(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""Adjoint of the probe ↦ field map at object x: Σ_j shift_jᴴ(conj(S_j O) ⊙ F⁻¹ z_j), shape of the probe
    (shift_j the identity except for ``"fourier-probe"``, :func:`positioned_probes_adjoint`).

        Batch dimensions of x and z are summed over (one probe serves every sample).
        """
        self.check_signal(x)
        self._check_field(z)
        x = x.to(self.signal_dtype)
        k = len(self.field_shape)
        total = torch.zeros_like(self.probe)
        pdim = self.probe.dim()
        for a, b in self._chunks():
            pos = self.positions[a:b]
            patches = extract_patches(x, pos, self.probe_shape, self.interpolation)
            u = propagate_adjoint(z.narrow(z.dim() - k, a, b - a).to(self.signal_dtype), self.zero_frequency)
            g = (u * (patches.conj().unsqueeze(-3) if self.modal else patches.conj()))
            g = g.sum(dim=tuple(range(g.dim() - pdim - 1)))                  # batch summed: (J_c, [K,] h, w)
            total = total + positioned_probes_adjoint(g, pos, self.interpolation)
        return total

    def config(self) -> dict:
        return {"type": "Ptychography", "probe": [*([self.n_modes] if self.modal else []), *self.probe_shape],
                "positions": self.n_positions, "object_shape": list(self.signal_shape),
                "interpolation": self.interpolation, "zero_frequency": self.zero_frequency,
                "chunk": self.chunk, "dtype": dtype_name(self.real_dtype)}

    def extra_repr(self) -> str:
        return (f"object_shape={self.signal_shape}, probe={self.n_modes}×{self.probe_shape}, "
                f"positions={self.n_positions}, interpolation={self.interpolation}, "
                f"zero_frequency={self.zero_frequency}, chunk={self.chunk}, dtype={self.real_dtype}")


__all__ = ["Ptychography", "extract_patches", "place_patches", "patch_gradients", "positioned_probes",
           "positioned_probes_adjoint", "exit_wave_gradients", "propagate",
           "propagate_adjoint", "exit_waves", "far_field", "intensities", "fit_object", "check_positions",
           "window_margin", "INTERPOLATIONS", "ZERO_FREQUENCY"]
