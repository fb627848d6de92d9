r"""Tensor helpers: the one convention of the library for small things used everywhere.

* squared modulus :func:`abs2`; sums and means over trailing dimensions :func:`sum_dims`, :func:`mean_dims`;
* per-sample inner products: :func:`inner` (⟨a, b⟩ = Σ ā b over trailing dimensions, complex),
  :func:`dot` and :func:`norm2` (Re⟨a, b⟩ and ‖a‖² over all but the first dimension of a flat batch
  ``(B, ...)``), :func:`bview`, :func:`where_sample`;
* dtypes: :func:`real_dtype_of`, :func:`complex_dtype_of`, :func:`dtype_name`, :func:`parse_dtype`;
* randomness: :func:`make_generator`, :func:`resolve_seed`;
* validation: :func:`check_int`, :func:`check_number`, :func:`as_shape`;
* statistics: :func:`mean_se` (mean and standard error, NaN error below two samples);
* work buffers: :func:`scratch` (a per-thread CPU tensor an operator reuses across calls);
* JSON: :func:`to_jsonable` (tensors → lists, complex → ``{"real", "imag"}``, NaN → ``null``, ±inf →
  ``"inf"``/``"-inf"``) and its inverse for numbers :func:`from_json_float`.

This module imports nothing from phasetorch: every other layer may use it.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch

Shape = Tuple[int, ...]

__all__ = ["SYNC_EVERY", "default_sync_every", "Shape", "abs2", "sum_dims", "mean_dims", "inner", "dot", "norm2", "bview", "where_sample",
           "real_dtype_of", "complex_dtype_of", "dtype_name", "parse_dtype", "make_generator", "resolve_seed",
           "as_shape", "as_device", "check_int", "check_number", "available_memory", "check_memory", "mean_se", "scratch", "to_jsonable", "from_json_float", "floats_from_json",
           "OFF_VALUES", "switched_off"]


#: the values of a ``PHASETORCH_*`` switch that turn its path off (case and surrounding blanks ignored)
OFF_VALUES = ("0", "off", "false", "no")


def switched_off(name: str) -> bool:
    """Whether the environment variable ``name`` is set to one of :data:`OFF_VALUES` (read at every call;
    unset or any other value: on)."""
    return os.environ.get(name, "").strip().lower() in OFF_VALUES


# ---------------------------------------------------------------------------------------- algebra
def abs2(z: torch.Tensor) -> torch.Tensor:
    """|z|² elementwise (real dtype; for complex z computed as Re² + Im² without a square root).

    Complex: the squares of the real view summed over its last axis of two (one add per entry, so
    exactly Re² + Im²; three tensor operations instead of seven)."""
    return torch.view_as_real(z.resolve_conj()).square().sum(-1) if z.is_complex() else z.square()


def sum_dims(t: torch.Tensor, k: int) -> torch.Tensor:
    """Sum over the trailing ``k`` dimensions (``t`` itself when k = 0)."""
    return t.sum(dim=tuple(range(t.dim() - k, t.dim()))) if k else t


def mean_dims(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the trailing ``k`` dimensions (``t`` itself when k = 0)."""
    return t.mean(dim=tuple(range(t.dim() - k, t.dim()))) if k else t


def inner(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """⟨a, b⟩ = Σ ā b over the trailing ``k`` dimensions (complex when either is complex); broadcasts."""
    prod = a.conj() * b if a.is_complex() else a * b
    return sum_dims(prod, k)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample real inner product Re⟨a, b⟩ over all but the first dimension, shape ``(B,)``."""
    dims = tuple(range(1, a.dim()))
    if a.is_complex() and b.is_complex():     # Re(ā b) = Re a Re b + Im a Im b: on the real views
        prod = torch.view_as_real(a.resolve_conj()) * torch.view_as_real(b.resolve_conj())
        return prod.sum(dim=tuple(range(1, prod.dim())))
    if a.is_complex() or b.is_complex():
        prod = a.conj() * b if a.is_complex() else a * b
        return prod.real.sum(dim=dims) if dims else prod.real
    return (a * b).sum(dim=dims) if dims else a * b


def norm2(a: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm ‖a‖² over all but the first dimension, shape ``(B,)``."""
    if a.is_complex():                        # Σ (Re² + Im²) over the real view: three tensor operations
        v = torch.view_as_real(a.resolve_conj())
        return v.square().sum(dim=tuple(range(1, v.dim())))
    return a.square().sum(dim=tuple(range(1, a.dim()))) if a.dim() > 1 else a.square()


def bview(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(B,)`` to broadcast against ``x`` of shape ``(B, ...)``."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def where_sample(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample select: rows of ``a`` where ``mask`` (shape ``(B,)``), rows of ``b`` elsewhere."""
    return torch.where(mask if a.dim() == 1 else bview(mask, a), a, b)


# ---------------------------------------------------------------------------------------- dtypes
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128, torch.float16: torch.complex32}
_REAL = {v: k for k, v in _COMPLEX.items()}


def complex_dtype_of(real_dtype: torch.dtype) -> torch.dtype:
    """float32 → complex64, float64 → complex128 (float16 → complex32)."""
    return _COMPLEX.get(real_dtype, torch.complex64)


def real_dtype_of(dtype: torch.dtype) -> torch.dtype:
    """complex64 → float32, complex128 → float64; a real dtype is returned as is."""
    return _REAL[dtype] if dtype.is_complex else dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (the JSON form used in configs and logs)."""
    return str(dtype).replace("torch.", "")


def parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """Inverse of :func:`dtype_name` for operator dtypes: float32 or float64 (complex → its real dtype).

    Half precision is refused: FFTs, eigensolvers and losses need at least float32.
    """
    if isinstance(dtype, str):
        t = getattr(torch, dtype.replace("torch.", ""), None)
        if not isinstance(t, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'")
        dtype = t
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise ValueError(f"an operator dtype must be torch.float32 or torch.float64, got {dtype!r}")
    real = real_dtype_of(dtype)
    if real not in (torch.float32, torch.float64):
        raise ValueError(f"an operator dtype must be torch.float32 or torch.float64 (complex64/complex128), got "
                         f"{dtype_name(dtype)}: half precision is not supported (FFTs and eigensolvers need ≥ 32 "
                         f"bits); build in float32 and cast the result if needed")
    return real


# ---------------------------------------------------------------------------------------- randomness
#: the largest seed a ``torch.Generator`` takes without overflow (a signed 64-bit int)
MAX_SEED = 2**63 - 1


def make_generator(seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Generator:
    """A CPU ``torch.Generator`` from ``seed`` (int) or an existing generator (used as is).

    With neither, a fresh generator seeded from torch's global RNG (so ``torch.manual_seed`` makes
    the result reproducible too).
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed= or generator=, not both")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator(device="cpu")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    g.manual_seed(check_int(seed, "seed", 0, MAX_SEED))
    return g


def resolve_seed(seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> int:
    """An int seed: ``seed`` itself, else one drawn from ``generator`` (or from torch's global RNG).

    Objects keep this int (it goes into ``config()``) and draw their random parts from a fresh
    generator seeded with it, so the config alone rebuilds the same object.
    """
    if seed is not None and generator is None:
        return check_int(seed, "seed", 0, MAX_SEED)
    return int(torch.randint(0, 2**62, (1,), generator=make_generator(seed, generator)).item())


# ---------------------------------------------------------------------------------------- validation
def check_int(v: Any, name: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``v`` as an int in [low, high]; bools, floats (also 3.0) and strings are refused with a clear error."""
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point() and not v.is_complex():
            v = int(v.item())
        else:
            rng = f" ≥ {low}" if low is not None else ""
            raise ValueError(f"{name} must be an int{rng}, got {v!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        bounds = " and ".join(s for s in ((f"≥ {low}" if low is not None else ""),
                                          (f"≤ {high}" if high is not None else "")) if s)
        raise ValueError(f"{name} must be an int {bounds}, got {v}")
    return int(v)


def check_flag(v: Any, name: str) -> bool:
    """``v`` as a bool: True/False (also a one-element bool tensor); strings, None and numbers are refused,
    since ``bool('no')`` is True."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype == torch.bool:
        return bool(v.item())
    if isinstance(v, bool) or type(v).__name__ == "bool_":       # numpy.bool_ without importing numpy
        return bool(v)
    raise ValueError(f"{name} must be True or False, got {v!r}")


def check_number(v: Any, name: str, low: Optional[float] = None, strict: bool = False,
                 high: Optional[float] = None) -> float:
    """``v`` as a finite float with v ≥ low (v > low when ``strict``) and v ≤ high; clear errors otherwise."""
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '≥'} {low:g}, got {v:g}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be ≤ {high:g}, got {v:g}")
    return v


def as_shape(shape: Union[int, Sequence[int]], name: str = "shape") -> Shape:
    """An int or a sequence of positive ints as a shape tuple (strings and floats are refused)."""
    if isinstance(shape, (str, bytes)) or isinstance(shape, bool):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {shape!r}")
    if isinstance(shape, int):
        return (check_int(shape, name, 1),)
    try:
        items = list(shape)
    except TypeError:
        raise ValueError(f"{name} must be an int or a sequence of ints, got {shape!r}") from None
    if not items:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_int(s, name, 1) for s in items)


def as_device(device: Any, name: str = "device", default: Optional[torch.device] = None) -> torch.device:
    """``device`` (a string such as ``'cpu'``, ``'cuda'``, ``'cuda:1'``, or a torch.device; None gives
    ``default``, else the CPU) as a torch.device that this machine has: an unknown name, a CUDA device
    on a machine without CUDA (or an index beyond its devices) and the data-less ``meta`` device are
    refused with a ValueError naming ``name`` and the fix."""
    if device is None:
        return torch.device("cpu") if default is None else torch.device(default)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N' (or a torch.device), got {device!r}") from err
    if dev.type == "meta":
        raise ValueError(f"{name} is the 'meta' device, which holds no data; use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}, but CUDA is not available on this machine "
                             f"(torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (indices 0..{torch.cuda.device_count() - 1})")
    return dev


def available_memory(device=None) -> Optional[int]:
    """Bytes available for new allocations on ``device``: free GPU memory (:func:`torch.cuda.mem_get_info`),
    or ``MemAvailable`` of /proc/meminfo (else the free physical pages of :func:`os.sysconf`); None if unknown."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: float, what: str, hint: str = "reduce the sizes", device=None) -> None:
    """Refuse, before allocating, ``nbytes`` that exceed the memory available on ``device`` (a ValueError
    naming both numbers, ``what`` needs them, and ``hint``)."""
    have = available_memory(device)
    if have is not None and nbytes > have:
        raise ValueError(f"{what} needs about {nbytes / 2**30:.3g} GiB but only {have / 2**30:.3g} GiB are available; "
                         f"{hint}")


# ---------------------------------------------------------------------------------------- statistics
def mean_se(values: torch.Tensor, dim: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error (sample SD/√R, R the size of ``dim``) in float64.

    The one rule of the library: with fewer than two samples the standard error is NaN (unknown), never 0.
    """
    v = values.to(torch.float64)
    mean = v.mean(dim=dim)
    r = v.shape[dim]
    if r < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, v.std(dim=dim, unbiased=True) / math.sqrt(r)


# ---------------------------------------------------------------------------------------- JSON
def to_jsonable(obj: Any) -> Any:
    """A strict-JSON copy of ``obj``: tensors → nested lists (complex → ``{"real": …, "imag": …}``),
    dtypes/devices/paths → strings, NaN → ``None`` (``null``), ±inf → ``"inf"``/``"-inf"`` (lossless and
    strict JSON; :func:`from_json_float` reads all three back), numpy scalars → numbers,
    anything else unknown → its ``repr``."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu")
        if t.is_complex():
            return {"real": to_jsonable(t.real), "imag": to_jsonable(t.imag)}
        return to_jsonable(t.tolist())
    if isinstance(obj, torch.dtype):
        return dtype_name(obj)
    if isinstance(obj, (torch.device, Path)):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return repr(obj)


def from_json_float(v: Any) -> float:
    """Inverse of :func:`to_jsonable` for one number: ``null`` → NaN, ``"inf"``/``"-inf"``/``"nan"`` → floats."""
    if v is None:
        return float("nan")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"expected a number, null, 'inf' or '-inf' in the JSON file, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number in the JSON file, got {v!r}")
    return float(v)


def floats_from_json(obj: Any) -> Any:
    """Nested lists of numbers written by :func:`to_jsonable` back to floats (null → NaN, "inf" → inf)."""
    if isinstance(obj, list):
        return [floats_from_json(v) for v in obj]
    return from_json_float(obj)


#: iterations between an iterative loop's host reads, per device type (``sync_every=None`` of
#: :func:`phasetorch.reconstruct` and :func:`phasetorch.spectral_init`): on a CPU a read costs nothing
#: and a larger k only adds up to k − 1 idle iterations after the last sample stops (measured:
#: scripts/sync_study.py, results/sync_every.md); on an accelerator every read is a synchronisation that
#: stalls the launch queue, so the decisions are read every 16 iterations (a default not yet measured on
#: a GPU).
SYNC_EVERY = {"cpu": 1, "cuda": 16}


def default_sync_every(device) -> int:
    """The default k of ``sync_every=None`` on ``device`` (:data:`SYNC_EVERY`; 16 elsewhere)."""
    return SYNC_EVERY.get(torch.device(device).type, 16)


# ---------------------------------------------------------------------------------------- work buffers
#: owner → per-thread {name: tensor}; weak keys, so a buffer lives as long as its owner (and is never
#: pickled, copied or saved with it)
_SCRATCH: "weakref.WeakKeyDictionary[Any, threading.local]" = weakref.WeakKeyDictionary()
_SCRATCH_LOCK = threading.Lock()


def _records(t: torch.Tensor) -> bool:
    """Whether an op on ``t`` is being recorded for differentiation or transformed (autograd, forward-mode
    AD, torch.func's vmap/grad/jacrev): then ``out=`` and writes into a shared buffer are not allowed."""
    if torch.is_grad_enabled() and t.requires_grad:
        return True
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is None or active():
        return True
    return torch.autograd.forward_ad.unpack_dual(t).tangent is not None


def scratch(owner: Any, name: str, shape: Sequence[int], *inputs: torch.Tensor) -> Optional[torch.Tensor]:
    """A work tensor of ``shape`` (dtype and device of ``inputs[0]``) that ``owner`` reuses across calls
    on the CPU, or None where the caller must allocate.

    Why: on the CPU a fresh tensor of a few MiB can cost more than the arithmetic done on it: glibc's
    malloc maps large blocks afresh (and gives the top of its heap back once 2× its mmap threshold is
    free there), and every page of the next allocation then faults again (:mod:`phasetorch.allocator`).
    A buffer kept by its owner is faulted in once.

    The buffer is per thread (two threads never share one) and per ``name``; it is replaced when the
    shape, dtype or device changes and freed with its owner (never pickled, copied or saved with it).
    Its contents are undefined on return: the caller overwrites it (``out=`` / in-place ops) and must
    not return it or keep a view of it.

    None (allocate) when any of ``inputs`` is being differentiated or transformed (autograd recording,
    forward-mode AD, torch.func): ``out=`` does not differentiate or batch. None on every device but the
    CPU: CUDA's caching allocator already reuses blocks, and a buffer shared across streams would race.
    """
    like = inputs[0]
    if like.device.type != "cpu" or any(_records(t) for t in inputs):
        return None
    with _SCRATCH_LOCK:
        local = _SCRATCH.get(owner)
        if local is None:
            local = _SCRATCH[owner] = threading.local()
    buffers = local.__dict__
    shape = tuple(shape)
    t = buffers.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        buffers.pop(name, None)                     # free the old one before allocating its successor
        t = buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return t
