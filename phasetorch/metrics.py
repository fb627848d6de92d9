r"""Reconstruction metrics, modulo the global phase (complex) or sign (real) ambiguity.

Every function works per sample over the WHOLE signal: the trailing ``signal_dims`` dimensions
form one signal (a vector: 1, an image: 2), the leading ones are batch dimensions, and the batch
shapes of ``x_hat`` and ``x`` broadcast. The signal dimensions are, in this order:

* ``op=``: ``len(op.signal_shape)`` of the operator that measured the signal (what the solver's
  log and the CLI use);
* ``signal_dims=k`` when given;
* otherwise they are read off the shapes where that is unambiguous: a reference ``x`` of lower rank
  than ``x_hat`` is one signal (all its dimensions: ``x`` of shape ``(H, W)`` against estimates
  ``(B, H, W)``), and two vectors are vectors. Equal ranks ≥ 2 are ambiguous — a batch of vectors
  ``(B, n)`` or one image ``(H, W)`` — and raise a ValueError asking for ``op=`` or ``signal_dims=``,
  never a silent per-row answer.

With ⟨u, v⟩ = Σ ū v (summed over the signal dimensions):

* ``align_phase(x_hat, x)`` = x̂ e^{−iφ}, φ = arg⟨x, x̂⟩, the minimiser of ‖x̂ e^{−iφ} − x‖
  (for real inputs e^{−iφ} is the sign of ⟨x, x̂⟩);
* ``relative_error`` = min_φ ‖x̂ − e^{iφ} x‖ / ‖x‖ (Candès, Li, Soltanolkotabi 2015, dist(·,·)/‖x‖);
* ``overlap`` = |⟨x̂, x⟩| / (‖x̂‖ ‖x‖) (cosine similarity, in [0, 1]);
* ``inner`` = |⟨x̂, x⟩| / ‖x‖² (the theory's magnetisation m when ‖x‖ = 1);
* ``psnr`` = 10 log₁₀(range² / MSE) after alignment.

The results are real tensors of the broadcast batch shape (0-dim for single signals).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from .tensors import abs2
from .tensors import inner as inner_product


def _dims(x_hat: torch.Tensor, x: torch.Tensor, signal_dims: Optional[int], who: str, op=None) -> Tuple[int, ...]:
    for name, t in (("x_hat", x_hat), ("x", x)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{who}: {name} must be a floating or complex tensor, got {t.dtype}")
    if op is not None:
        shape = getattr(op, "signal_shape", None)
        if shape is None:
            raise ValueError(f"{who}: op must be a phasetorch operator or model (with a signal_shape), got {op!r}")
        if tuple(x.shape[x.dim() - len(shape):]) != tuple(shape):
            raise ValueError(f"{who}: x has shape {tuple(x.shape)} but op measures signals of shape {tuple(shape)}")
        if signal_dims is not None and signal_dims != len(op.signal_shape):
            raise ValueError(f"{who}: signal_dims={signal_dims} contradicts op (signal shape {tuple(op.signal_shape)})")
        signal_dims = len(op.signal_shape)
    elif signal_dims is None:
        if x.dim() < x_hat.dim() or x.dim() == 1:
            signal_dims = x.dim()
        else:
            raise ValueError(f"{who}: x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} could be a batch of vectors or "
                             f"one image: pass op=the operator (one number per sample over its signal shape), "
                             f"signal_dims=1 (vectors) or signal_dims={x.dim()} (one {x.dim()}-D signal)")
    if isinstance(signal_dims, bool) or not isinstance(signal_dims, int) or signal_dims < 1:
        raise ValueError(f"{who}: signal_dims must be an int ≥ 1 (1 for vectors, 2 for images), got {signal_dims!r}")
    if x.dim() < signal_dims or x_hat.dim() < signal_dims:
        raise ValueError(f"{who}: signal_dims={signal_dims} but x_hat has shape {tuple(x_hat.shape)} and x has "
                         f"shape {tuple(x.shape)}")
    if x_hat.shape[x_hat.dim() - signal_dims:] != x.shape[x.dim() - signal_dims:]:
        raise ValueError(f"{who}: the signal shapes differ: x_hat {tuple(x_hat.shape)} vs x {tuple(x.shape)} "
                         f"(last {signal_dims} dims are the signal)")
    try:
        torch.broadcast_shapes(x_hat.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"{who}: batch shapes of x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} do not "
                         f"broadcast") from None
    return tuple(range(-signal_dims, 0))


def _norm2(t: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    return abs2(t).sum(dim=dims)


def _inner(x: torch.Tensor, x_hat: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """⟨x, x̂⟩ = Σ x̄ x̂ per sample (complex if either is complex)."""
    return inner_product(x, x_hat, len(dims))


def _check_nonzero(x: torch.Tensor, dims: Tuple[int, ...], who: str) -> torch.Tensor:
    nx2 = _norm2(x, dims)
    if (nx2 == 0).any():
        raise ValueError(f"{who}: the reference signal x has zero norm; the metric is undefined")
    return nx2


def align_phase(x_hat: torch.Tensor, x: torch.Tensor, signal_dims: Optional[int] = None, op=None) -> torch.Tensor:
    """x̂ e^{−iφ} with φ = arg⟨x, x̂⟩ per sample: the global phase (sign, if real) closest to x.

    Complex if either input is complex (a real x̂ against a complex x is rotated in ℂ), real
    otherwise. Shape: the broadcast of x_hat's and x's shapes. A sample with ⟨x, x̂⟩ = 0 is
    returned unchanged.
    """
    dims = _dims(x_hat, x, signal_dims, "align_phase", op)
    c = _inner(x, x_hat, dims)
    if c.is_complex():
        a = c.abs()
        rot = torch.where(a > 0, c.conj() / torch.where(a > 0, a, torch.ones_like(a)), torch.ones_like(c))
    else:
        rot = torch.where(c < 0, -torch.ones_like(c), torch.ones_like(c))
    rot = rot.reshape(*rot.shape, *([1] * len(dims)))
    return x_hat * rot


def relative_error(x_hat: torch.Tensor, x: torch.Tensor, signal_dims: Optional[int] = None, op=None) -> torch.Tensor:
    """min_φ ‖x̂ − e^{iφ} x‖ / ‖x‖ per sample (min over signs for real inputs)."""
    dims = _dims(x_hat, x, signal_dims, "relative_error", op)
    nx2 = _check_nonzero(x, dims, "relative_error")
    diff = align_phase(x_hat, x, signal_dims=len(dims)) - x
    return (_norm2(diff, dims) / nx2).sqrt()


def overlap(x_hat: torch.Tensor, x: torch.Tensor, signal_dims: Optional[int] = None, op=None) -> torch.Tensor:
    """|⟨x̂, x⟩| / (‖x̂‖ ‖x‖) per sample, in [0, 1]; 0 for x̂ = 0."""
    dims = _dims(x_hat, x, signal_dims, "overlap", op)
    nx2 = _check_nonzero(x, dims, "overlap")
    den = (_norm2(x_hat, dims) * nx2).sqrt()
    num = _inner(x, x_hat, dims).abs()
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def inner(x_hat: torch.Tensor, x: torch.Tensor, signal_dims: Optional[int] = None, op=None) -> torch.Tensor:
    """|⟨x̂, x⟩| / ‖x‖² per sample (the projection of x̂ on x in units of x)."""
    dims = _dims(x_hat, x, signal_dims, "inner", op)
    nx2 = _check_nonzero(x, dims, "inner")
    return _inner(x, x_hat, dims).abs() / nx2


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: Optional[Union[float, torch.Tensor]] = None,
         signal_dims: Optional[int] = None, magnitude: bool = False, op=None) -> torch.Tensor:
    r"""Peak signal-to-noise ratio in dB, 10 log₁₀(R² / MSE), per sample, after phase alignment.

    MSE = mean |x̂ e^{−iφ} − x|² over the signal (φ from :func:`align_phase`; the sign for real
    signals). ``data_range`` R defaults to max(x) − min(x) per sample for real x (max|x| when x is
    constant) and to the peak magnitude max|x| for complex x — complex signals are ranged on their
    magnitudes, since a phase has no range. With ``magnitude=True`` the metric compares the
    magnitudes |x̂| and |x| instead (ignoring phase errors inside the signal, the usual choice for
    amplitude images); R then defaults to max|x| − min|x| (max|x| if constant). A perfect
    reconstruction gives +inf.
    """
    dims = _dims(x_hat, x, signal_dims, "psnr", op)
    if any(x.shape[d] == 0 for d in dims):
        raise ValueError(f"psnr: the signal dimensions of x are empty (shape {tuple(x.shape)}); pass non-empty signals")
    if magnitude:
        a, b = x_hat.abs(), x.abs()
        mse = abs2(a - b).mean(dim=dims)
        ref = b
    else:
        mse = abs2(align_phase(x_hat, x, signal_dims=len(dims)) - x).mean(dim=dims)
        ref = x
    if data_range is None:
        peak = ref.abs().amax(dim=dims)
        if ref.is_complex():
            data_range = peak
        else:
            spread = ref.amax(dim=dims) - ref.amin(dim=dims)
            data_range = torch.where(spread > 0, spread, peak)
        if (data_range == 0).any():
            raise ValueError("psnr: x is identically zero, so its range is 0; pass data_range")
    else:
        if isinstance(data_range, torch.Tensor):
            if data_range.is_complex() or not (data_range.is_floating_point() or data_range.dtype in
                                                   (torch.int32, torch.int64)):
                raise ValueError(f"psnr: data_range must be a real number or tensor, got dtype {data_range.dtype}")
        elif isinstance(data_range, bool) or not isinstance(data_range, (int, float)):
            raise ValueError(f"psnr: data_range must be a number > 0 or a tensor of one per sample, got {data_range!r}")
        data_range = torch.as_tensor(data_range, dtype=mse.dtype, device=mse.device)
        if not bool(torch.isfinite(data_range).all()) or bool((data_range <= 0).any()):
            raise ValueError(f"psnr: data_range must be finite and > 0, got {data_range}")
        try:
            torch.broadcast_shapes(data_range.shape, mse.shape)
        except RuntimeError:
            raise ValueError(f"psnr: data_range has shape {tuple(data_range.shape)} but there are "
                             f"{tuple(mse.shape)} samples; pass one number or one per sample") from None
    return 10 * torch.log10(data_range.to(mse.dtype).square() / mse)


__all__ = ["align_phase", "relative_error", "overlap", "inner", "psnr"]
