r"""Freed CPU memory stays with the process while a solve runs (glibc's malloc; a no-op elsewhere).

Why: torch's CPU tensors come from ``malloc``, and a solver loop frees and re-allocates the same
large tensors every iteration (an FFT's output, a residual, a measurement-sized temporary). glibc serves
a block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and
it gives the top of its heap back to the system once more than its trim threshold is free there; in
both cases every 4 KiB page of the next allocation faults and is zeroed again, at a small fraction of
the memory bandwidth. ``scripts/benchmark.py`` row 12 measures what that costs a large CDP problem
(``PHASETORCH_MALLOC=0`` against the default).

:func:`retained` is the remedy, as a context manager that nests: on entering the outermost level it
sets ``M_MMAP_MAX = 0`` (every block from the heap) and ``M_TRIM_THRESHOLD`` to 2 GiB (nothing given
back), so a freed block is reused by the next allocation without a fault. On leaving it, it sets
``M_MMAP_MAX`` back to glibc's default (65536), ``M_MMAP_THRESHOLD = 32 MiB`` and
``M_TRIM_THRESHOLD = 64 MiB`` — the values glibc's own dynamic thresholds reach once a block of
32 MiB or more has been freed (glibc offers no way to return to the dynamic rule itself) — and calls
``malloc_trim(0)``, which returns the free pages to the system. The process's resident memory
therefore stays at the solve's peak while the solve runs and drops after it.

Within a solve the heap can still grow for tens of iterations on a large problem: torch allocates its
CPU tensors with ``posix_memalign`` (64-byte alignment), and glibc's free lists fragment under that pattern
— a freed block of exactly the size asked next is not reused when its small alignment remainders sit in
glibc's per-thread cache, and blocks of a few sizes with interleaved lifetimes leave holes — so fresh pages
keep being faulted in. Solves run back to back inside one outer ``retained()`` block reuse the heap the
first one grew (nothing is trimmed until the outermost exit): ``with phasetorch.allocator.retained(): …``
around a series of large CPU solves. ``scripts/heap_study.py`` records the heap and the page faults per
iteration of both (``results/heap_growth.md``); benchmark row 12 times both, and on the 2-core VM of its runs
the time difference stayed within the host's noise.

:func:`phasetorch.reconstruct` (and :func:`phasetorch.spectral_init`, the blind ptychography solver)
run inside it when they work on the CPU. ``PHASETORCH_MALLOC=0`` (or ``off``/``false``/``no``, read at
every entry) leaves malloc alone; :func:`status` says whether the settings are in force and why.
CUDA memory is untouched (its caching allocator already reuses blocks).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
import threading
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch

__all__ = ["ENV_SWITCH", "retained", "retaining", "status", "supported"]

F = TypeVar("F", bound=Callable[..., Any])

#: environment variable that leaves malloc alone when set to 0/false/no/off
ENV_SWITCH = "PHASETORCH_MALLOC"

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: while retained: nothing is trimmed below this much free memory at the top of the heap (int32 maximum)
RETAIN_TRIM = 2**31 - 1
#: after: glibc's default M_MMAP_MAX and the dynamic thresholds' end point (32 MiB mmap, 2 × that trim)
DEFAULT_MMAP_MAX = 65536
AFTER_MMAP_THRESHOLD = 32 << 20
AFTER_TRIM_THRESHOLD = 64 << 20

_lock = threading.Lock()
_depth = 0
_libc: Any = None
_why: Optional[str] = None      # why the settings are unavailable (None: available or not probed yet)


def _load() -> Any:
    """glibc's ``mallopt``/``malloc_trim`` through ctypes, or None (with the reason in ``_why``)."""
    global _libc, _why
    if _libc is not None or _why is not None:
        return _libc
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _why = f"not glibc ({sys.platform}, {platform.libc_ver()[0] or 'unknown libc'})"
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError) as err:
        _why = f"mallopt not found ({err})"
        return None
    _libc = libc
    return libc


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def supported() -> bool:
    """Whether this process's C library takes the settings (glibc on Linux)."""
    return _load() is not None


def status() -> dict:
    """``{"supported", "active", "depth", "reason"}``: whether glibc is there, whether a :func:`retained`
    block is in force now (and how deeply nested), and why not where it is not."""
    lib = _load()
    reason = _why if lib is None else (f"{ENV_SWITCH}={os.environ.get(ENV_SWITCH)}" if _switched_off() else None)
    return {"supported": lib is not None, "active": _depth > 0, "depth": _depth, "reason": reason}


@contextlib.contextmanager
def retained(device: Any = "cpu") -> Iterator[bool]:
    """Keep freed CPU memory in the process for the duration of the block (see the module docstring).

    ``device``: the device the work runs on; anything but the CPU makes this a no-op. Yields whether the
    settings are in force (False: another device, not glibc, or ``PHASETORCH_MALLOC=0``). Nested and
    concurrent blocks share one setting: the outermost entry applies it, the last exit restores.
    """
    global _depth
    if torch.device(device).type != "cpu" or _switched_off() or _load() is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _libc.mallopt(M_MMAP_MAX, 0)
            _libc.mallopt(M_TRIM_THRESHOLD, RETAIN_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                _libc.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
                _libc.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                _libc.malloc_trim(0)


def retaining(device_of: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator: run the function inside :func:`retained` on ``device_of(*args, **kwargs)`` (an input's
    device; when it cannot be told — a bad argument the function will refuse itself — malloc is left alone)."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                device = torch.device(device_of(*args, **kwargs))
            except Exception:  # noqa: BLE001 (the function reports bad arguments itself)
                device = None
            if device is None or device.type != "cpu":
                return fn(*args, **kwargs)
            with retained(device):
                return fn(*args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap
