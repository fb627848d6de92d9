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
therefore stays near the solve's peak while the solve runs and drops after it.

The heap alone is not enough on a large problem: torch allocates its CPU tensors with ``posix_memalign``
(64-byte alignment), and glibc's free lists fragment under that pattern — a freed block of exactly the size
asked next is not reused when its small alignment remainders sit in glibc's per-thread cache, and blocks of
a few sizes with interleaved lifetimes leave holes — so fresh pages kept being faulted in for tens of
iterations (a coded-diffraction L-BFGS solve at 1024², complex128: heap 1.25 → 2.3 GiB, ~450k page faults).
So the block also installs a **caching allocator** for torch's CPU tensors (``csrc/cpu_cache.cpp``, a small
C++ library compiled at first use like the C kernel, :mod:`phasetorch.native`, and registered with
``c10::SetCPUAllocator``; the previous allocator is put back at the outermost exit): a request of at least
:data:`CACHE_MIN_BYTES` is rounded up to whole pages and mapped with ``mmap``; a freed one goes to a free
list keyed by its size, and the next request of that size (or at most 1/8 smaller) gets it back with its
pages already present. After a solve's first iteration no large tensor faults a page. The cache holds at
most as many bytes as were in use at once since the block began, and it never maps more than twice
that peak; everything cached is unmapped at the outermost exit (blocks still alive then are unmapped when
freed). Smaller requests go to ``posix_memalign`` as before. Memory from the cache is not reported to
torch's profiler. ``PHASETORCH_CPU_CACHE=0`` keeps the malloc settings but not the cache;
``scripts/heap_study.py`` (``results/heap_growth.md``) and benchmark row 12 measure both.

Solves run back to back inside one outer ``retained()`` block also keep the first one's pages
(``with phasetorch.allocator.retained(): …`` around a series of large CPU solves).

:func:`phasetorch.reconstruct` (and :func:`phasetorch.spectral_init`, the blind ptychography solver)
run inside it when they work on the CPU. ``PHASETORCH_MALLOC=0`` (or ``off``/``false``/``no``, read at
every entry) leaves malloc and torch's allocator alone; :func:`status` says whether the settings and the
cache are in force and why, :func:`cache_stats` what the cache holds and how often it was hit.
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
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, TypeVar

import torch

from . import native
from .tensors import switched_off

__all__ = ["ENV_SWITCH", "CACHE_SWITCH", "CACHE_MIN_BYTES", "retained", "retaining", "status", "supported",
           "cache_stats", "cache_available", "cache_compiler", "cache_library_path", "reset_cache"]

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

#: environment variable that keeps the malloc settings but not the caching allocator (0/false/no/off)
CACHE_SWITCH = "PHASETORCH_CPU_CACHE"
#: requests of at least this many bytes go through the cache; smaller ones to posix_memalign
CACHE_MIN_BYTES = 1 << 20
CACHE_SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_cache.cpp"
CACHE_ABI = 1
#: the cache's counters, in the order ``ptc_stats`` writes them
CACHE_STATS = ("in_use_bytes", "cached_bytes", "high_water_bytes", "hits", "misses", "evictions", "mapped",
               "unmapped")

_lock = threading.Lock()
_depth = 0
_installed = False              # the caching allocator is torch's CPU allocator now (set by retained)
_cache: Dict[str, Any] = {"lib": None, "tried": False, "reason": "not loaded yet", "path": None, "why_not_now": None}
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
    return switched_off(ENV_SWITCH)


# ---------------------------------------------------------------------------- the caching allocator (C++)
def _torch_dirs() -> "tuple[Path, Path]":
    root = Path(torch.__file__).resolve().parent
    return root / "include", root / "lib"


def cache_compiler() -> Optional[str]:
    """The C++ compiler used for the cache (``$CXX`` if set, else ``g++``), as a full path, or None."""
    return native.find_compiler("CXX", "g++")


def _cache_command(cxx: str) -> list:
    include, lib = _torch_dirs()
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{include}",
            "-o", "{out}", str(CACHE_SOURCE), f"-L{lib}", "-lc10", f"-Wl,-rpath,{lib}"]


def cache_library_path(cxx: str) -> Path:
    """Cache path of the allocator library for this source, command, compiler and torch build."""
    return native.library_path("cpu_cache", (CACHE_SOURCE.read_bytes(), " ".join(_cache_command(cxx)).encode(),
                                             native.compiler_version(cxx).encode(), torch.__version__.encode(),
                                             str(CACHE_ABI).encode()))


def _load_cache() -> Any:
    """The allocator library (compiled on first use), or None with the reason in ``_cache``."""
    if _cache["tried"]:
        return _cache["lib"]
    lib, reason, path = None, None, None
    try:
        if not sys.platform.startswith("linux"):
            raise RuntimeError(f"the CPU cache is built for Linux only ({sys.platform})")
        cxx = cache_compiler()
        if cxx is None:
            raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX') or 'g++'}) on PATH")
        include, _ = _torch_dirs()
        if not (include / "c10" / "core" / "CPUAllocator.h").is_file():
            raise RuntimeError(f"torch's C++ headers are not installed ({include})")
        path = cache_library_path(cxx)
        if not path.is_file():
            native.build(_cache_command(cxx), path)
        lib = ctypes.CDLL(str(path))
        if lib.ptc_abi_version() != CACHE_ABI:
            raise RuntimeError(f"{path} has ABI version {lib.ptc_abi_version()}, expected {CACHE_ABI}")
        lib.ptc_install.argtypes = [ctypes.c_uint64]
        for name in ("ptc_install", "ptc_uninstall"):
            getattr(lib, name).restype = ctypes.c_int
        lib.ptc_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
        lib.ptc_stats.restype = None
    except Exception as err:  # noqa: BLE001 (any failure means no cache, never an error for the user)
        lib, reason = None, f"{type(err).__name__}: {err}"
    _cache.update(lib=lib, reason=reason, path=None if lib is None else str(path), tried=True)
    return lib


def cache_available() -> bool:
    """Whether the caching allocator is enabled (:data:`CACHE_SWITCH`, :data:`ENV_SWITCH`) and loads."""
    return not switched_off(CACHE_SWITCH) and not _switched_off() and _load_cache() is not None


def cache_stats() -> Optional[Dict[str, int]]:
    """The cache's counters (:data:`CACHE_STATS`: bytes in use and cached, the high water since the
    outermost :func:`retained` began, hits, misses, evictions, blocks mapped and unmapped), or None when
    the library is not loaded."""
    lib = _cache["lib"]
    if lib is None:
        return None
    out = (ctypes.c_uint64 * len(CACHE_STATS))()
    lib.ptc_stats(out)
    return dict(zip(CACHE_STATS, (int(v) for v in out)))


def reset_cache() -> None:
    """Forget the loaded library (the next block loads or compiles it again; for tests). Refused while
    the cache is installed."""
    with _lock:
        if _installed:
            raise RuntimeError("the CPU cache is installed (inside a retained() block)")
        _cache.update(lib=None, tried=False, reason="not loaded yet", path=None)


def _install() -> None:
    global _installed
    if switched_off(CACHE_SWITCH):
        why = f"{CACHE_SWITCH}={os.environ.get(CACHE_SWITCH)}"
    elif _load_cache() is None:
        why = _cache["reason"]
    elif _cache["lib"].ptc_install(CACHE_MIN_BYTES) != 0:
        why = "another CPU allocator with a higher priority is registered with torch"
    else:
        why = None
    _cache["why_not_now"] = why                   # why this block runs without the cache (None: it has it)
    _installed = why is None


def _uninstall() -> None:
    global _installed
    if _installed:
        _cache["lib"].ptc_uninstall()
        _installed = False


def supported() -> bool:
    """Whether this process's C library takes the settings (glibc on Linux)."""
    return _load() is not None


def status() -> dict:
    """``{"supported", "active", "depth", "reason", "cache"}``: whether glibc is there, whether a
    :func:`retained` block is in force now (and how deeply nested), why not where it is not, and for the
    caching allocator ``{"installed", "library", "reason"}`` (the reason it is not installed now, or would
    not be)."""
    lib = _load()
    reason = _why if lib is None else (f"{ENV_SWITCH}={os.environ.get(ENV_SWITCH)}" if _switched_off() else None)
    if _installed:
        why_cache = None
    elif _switched_off() or switched_off(CACHE_SWITCH):
        why_cache = (f"{ENV_SWITCH}={os.environ.get(ENV_SWITCH)}" if _switched_off()
                     else f"{CACHE_SWITCH}={os.environ.get(CACHE_SWITCH)}")
    elif _cache["tried"] and _cache["lib"] is None:
        why_cache = _cache["reason"]
    elif _depth > 0:
        why_cache = _cache["why_not_now"]
    else:
        why_cache = "installed only inside retained()"
    return {"supported": lib is not None, "active": _depth > 0, "depth": _depth, "reason": reason,
            "cache": {"installed": _installed, "library": _cache["path"], "reason": why_cache}}


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
            _install()
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()
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
