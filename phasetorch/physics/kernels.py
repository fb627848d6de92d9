r"""One-read dense passes on the CPU: a small C kernel compiled at first use (``phasetorch/csrc/fused_dense.c``).

A gradient evaluation of a dense model (``loss.evaluate`` → ``op.linear_adjoint``) computes z = Ax,
v = φ(z) measurement by measurement and Aᴴv. Through ``torch.matmul`` that is two BLAS products
(or a row-block loop of them) whose complex matrix–vector speed on a CPU is far below the memory
bandwidth; the kernel here does the whole pass in **one read of A**: OpenMP threads take row
ranges, and for every block of 8 rows (``PT_R``) it forms the dot products with the B signals, applies φ, and
accumulates conj(A_i)ᵀ v_i while the rows are still in L1/L2. φ is one of a few closed forms chosen
by an integer code (:class:`Map`) that a loss supplies as a :class:`PointwiseMap`; a pass with any
other ``fn`` runs as two one-read kernel calls (z = Ax; v = fn(z) in torch; Aᴴv).

Compilation: ``gcc -O3 -march=native -ffp-contract=off -fno-math-errno -fopenmp -shared -fPIC`` (``$CC`` or ``gcc``), once per
source/flags/compiler/CPU, into ``$PHASETORCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/phasetorch``
or ``~/.cache/phasetorch``); the library is compiled under a temporary name and renamed
atomically, so concurrent processes are safe. Without a compiler, or when compilation or loading
fails, everything falls back to the torch path (logged at debug level; :func:`status` says which
path is in force and why). ``PHASETORCH_KERNELS=0`` disables the kernel (read at every call).

Only contiguous CPU tensors of one dtype (float32/float64/complex64/complex128) with the same
dtype for A and x take the kernel; anything else (GPU, a real A with a complex x, …) keeps the
torch path. Results equal the torch path's up to summation order (not bit-identical).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch

from .. import native
from ..tensors import switched_off

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "fused_dense.c"
#: compiler flags (part of the cache key)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
#: environment variable that disables the kernel when set to 0/false/no/off
ENV_SWITCH = "PHASETORCH_KERNELS"
#: environment variable overriding the cache directory of the compiled library
ENV_CACHE = native.ENV_CACHE
ABI_VERSION = 8
#: below this many multiply–adds (m·n·B) a pass runs on one thread (a parallel region costs more)
SERIAL_WORK = 1 << 16

#: more signals than this at once go through torch.matmul (MKL's matrix–matrix products are compute-efficient
#: there; the kernel's edge is the bandwidth-bound regime of few signals)
MAX_BATCH = 16

FUSED, LINEAR, ADJOINT = 0, 1, 2


class Map:
    """Codes of the pointwise maps v = w·φ(r) the fused kernel applies (r = c·z, q = per-measurement data)."""

    SCALE = 0          #: v = q r (q = 1 when no data); no value
    INTENSITY = 1      #: v = (|r|² − q) r, ℓ = (|r|² − q)²/4, q = y
    AMPLITUDE = 2      #: v = r − q sgn r, ℓ = (|r| − q)²/2, q = ψ
    POISSON = 3        #: v = (2 − 2q/|r|²) r, ℓ = |r|² − q log max(|r|², tiny), q = y₊
    TRUNCATED_AMPLITUDE = 4    #: amplitude with w = 1{|r|(1 + p0) ≥ q} (TAF, p0 = γ)
    REWEIGHTED_AMPLITUDE = 5   #: amplitude with w = |r| / (|r| + p1 q) (RAF, p1 = β)

    #: the maps whose weights the kernel computes (returned in ``PointwiseMap.weights_out``)
    WEIGHTED = frozenset({TRUNCATED_AMPLITUDE, REWEIGHTED_AMPLITUDE})


@dataclass
class PointwiseMap:
    """A closed-form ``fn`` for :meth:`MeasurementOperator.linear_adjoint`, attached to it as ``fn.pointwise``.

    ``code`` (a :class:`Map`), ``data`` q (shape broadcastable to ``(*batch, m)``, or None),
    ``scale`` c (the kernel applies φ to r = c·z), ``weights`` (fixed weights replacing the map's
    own, or None), parameters ``p0``, ``p1``. An operator that runs the kernel fills the outputs:
    ``a2`` = |r|² (``(*batch, m)``), ``weights_out`` (the weights used, for the weighted maps),
    ``total`` = Σ_i w_i ℓ_i per signal (batch shape, in float64) and sets ``done``.
    """

    code: int
    data: Optional[torch.Tensor] = None
    scale: float = 1.0
    weights: Optional[torch.Tensor] = None
    p0: float = 0.0
    p1: float = 0.0
    done: bool = False
    a2: Optional[torch.Tensor] = None
    weights_out: Optional[torch.Tensor] = None
    total: Optional[torch.Tensor] = None
    rescale: bool = False       #: the caller accepts z overwritten by r = c·z (where the pass can do it)
    rescaled: bool = False      #: the pass did overwrite z by r = c·z (:func:`apply_map`)
    #: Σ_i (|r_i| − ψ_i)² per signal (float64; :func:`apply_map` with data, all maps but SCALE), else None
    residual_sum: Optional[torch.Tensor] = None


class _Args(ctypes.Structure):
    _fields_ = [("m", ctypes.c_int64), ("n", ctypes.c_int64), ("B", ctypes.c_int64),
                ("is_complex", ctypes.c_int32), ("mode", ctypes.c_int32), ("map", ctypes.c_int32),
                ("nthreads", ctypes.c_int32),
                ("A", ctypes.c_void_p), ("x", ctypes.c_void_p), ("z", ctypes.c_void_p), ("g", ctypes.c_void_p),
                ("q", ctypes.c_void_p), ("q_stride", ctypes.c_int64), ("w", ctypes.c_void_p),
                ("w_stride", ctypes.c_int64), ("a2", ctypes.c_void_p), ("w_out", ctypes.c_void_p),
                ("value", ctypes.c_void_p), ("scale", ctypes.c_double), ("p0", ctypes.c_double),
                ("p1", ctypes.c_double), ("tiny", ctypes.c_double),
                ("wz", ctypes.c_void_p), ("wz_stride", ctypes.c_int64), ("value_z", ctypes.c_void_p),
                ("g_scale", ctypes.c_double), ("value_div", ctypes.c_double), ("value_real", ctypes.c_void_p),
                ("value_z_real", ctypes.c_void_p), ("rescale_z", ctypes.c_int32), ("pad_args", ctypes.c_int32),
                ("resid", ctypes.c_void_p), ("twf_par", ctypes.c_void_p)]


#: the argument block of one fused pass (``pt_args`` of the C source)
PassArgs = _Args


class BlockArgs(ctypes.Structure):
    """``pt_block`` of the C source: k iterations of the driver's gradient loop (:mod:`phasetorch.optim.compiled`
    fills it; the field comments of the C source say what each holds)."""

    _fields_ = [("pass_", _Args),
                ("k", ctypes.c_int64), ("t0", ctypes.c_int64), ("log_every", ctypes.c_int64),
                ("n_rec", ctypes.c_int64), ("t_done", ctypes.c_int64), ("psi_stride", ctypes.c_int64),
                ("safeguard", ctypes.c_int32), ("adaptive", ctypes.c_int32), ("truth", ctypes.c_int32),
                ("tol_on", ctypes.c_int32), ("new_div", ctypes.c_int32), ("st_converged", ctypes.c_int32),
                ("st_stalled", ctypes.c_int32), ("st_diverged", ctypes.c_int32),
                ("mu", ctypes.c_void_p),
                ("g_scale", ctypes.c_double), ("l2", ctypes.c_double), ("slack", ctypes.c_double),
                ("tol", ctypes.c_double), ("gamma_min", ctypes.c_double)] + \
        [(name, ctypes.c_void_p) for name in (
            "x", "G", "f", "res", "W", "gamma", "scale", "f_limit", "stall", "psi", "den_psi", "xt",
            "active", "diverged", "accepted", "retry", "status", "iterations", "div_t", "div_f",
            "x_try", "z", "g", "a2", "w", "total", "rec", "rec_t", "rec_time", "step")] + \
        [("twf", ctypes.c_int32), ("pad_", ctypes.c_int32), ("alpha_lb", ctypes.c_double),
         ("alpha_ub", ctypes.c_double), ("alpha_h", ctypes.c_double), ("v", ctypes.c_void_p)] + \
        [("lbfgs", ctypes.c_int32), ("memory", ctypes.c_int32), ("max_bt", ctypes.c_int32), ("pad2_", ctypes.c_int32),
         ("c_armijo", ctypes.c_double), ("shrink", ctypes.c_double), ("mu0", ctypes.c_double)] + \
        [(name, ctypes.c_void_p) for name in ("S", "Y", "x_prev", "g_prev", "d", "trial", "sy", "count", "head",
                                              "tries", "has_prev", "twf_k")] + \
        [("twf_fused", ctypes.c_int64), ("twf_flips", ctypes.c_int64)]


#: most signals one :func:`gradient_block` call takes (``PT_MAX_BLOCK_B`` of the C source)
MAX_BLOCK_BATCH = 64


_CLOCK: dict = {}


def clock_offset() -> float:
    """``time.perf_counter() − pt_now()``: the C code's record times (CLOCK_MONOTONIC) on Python's clock
    (measured once per process; the same clock on Linux, where it is 0 to a microsecond)."""
    if "offset" not in _CLOCK:
        lib = load()
        before = time.perf_counter()
        c = lib.pt_now()
        after = time.perf_counter()
        _CLOCK["offset"] = 0.5 * (before + after) - c
    return _CLOCK["offset"]


def gradient_block(args: BlockArgs, bits: int) -> None:
    """Run ``pt_gd_block`` on a filled :class:`BlockArgs` (needs :func:`available`); raises on a kernel error."""
    CALLS["block"] += 1
    _run_block("pt_gd_block", args, bits, "gradient block")


def _run_block(name: str, args: BlockArgs, bits: int, what: str) -> None:
    """The C function ``name`` on ``args`` (a :class:`BlockArgs`), its error raised, and the TWF evaluations it
    made in one read of A, with the rows their exact K corrected, added to :data:`CALLS`."""
    fused, flips = args.twf_fused, args.twf_flips
    rc = getattr(load(), name)(ctypes.byref(args), bits)
    if rc != 0:
        raise RuntimeError(f"phasetorch {what} failed (code {rc})")
    CALLS["twf_one_read"] += args.twf_fused - fused
    CALLS["twf_flipped_rows"] += args.twf_flips - flips


_LOCK = threading.Lock()
#: how many kernel calls of each mode ran in this process (for tests and diagnostics)
CALLS = {"fused": 0, "linear": 0, "adjoint": 0, "gaussian": 0, "block": 0, "map": 0, "rows": 0,
         "twf_one_read": 0, "twf_flipped_rows": 0}
_STATE = {"lib": None, "tried": False, "reason": "not loaded yet", "path": None}


def cache_dir() -> Path:
    """Where the compiled library is kept (:func:`phasetorch.native.cache_dir`)."""
    return native.cache_dir()


def compiler() -> Optional[str]:
    """The C compiler used (``$CC`` if set, else ``gcc``), as a full path, or None if absent."""
    return native.find_compiler("CC", "gcc")


def library_path(cc: str) -> Path:
    """Cache path of the library for this source, flags, compiler (path and version) and machine."""
    return native.library_path("fused_dense", (SOURCE.read_bytes(), " ".join(FLAGS).encode(), cc.encode(),
                                               native.compiler_version(cc).encode(), native.machine_key().encode(),
                                               str(ABI_VERSION).encode()))


def build(cc: str, target: Path) -> Path:
    """Compile the kernel into ``target`` (under a temporary name in the same directory, then an
    atomic rename: a concurrent build of the same library is harmless). Raises on failure."""
    return native.build([cc, *FLAGS, "-o", "{out}", str(SOURCE), "-lm"], target)


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.pt_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI version {lib.pt_abi_version()}, expected {ABI_VERSION}")
    lib.pt_pass.argtypes = [ctypes.POINTER(_Args), ctypes.c_int]
    lib.pt_pass.restype = ctypes.c_int
    lib.pt_map_pass.argtypes = [ctypes.POINTER(_Args), ctypes.c_int]
    lib.pt_map_pass.restype = ctypes.c_int
    lib.pt_gaussian.argtypes = [ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32]
    lib.pt_gaussian.restype = ctypes.c_int
    lib.pt_gd_block.argtypes = [ctypes.POINTER(BlockArgs), ctypes.c_int]
    lib.pt_gd_block.restype = ctypes.c_int
    lib.pt_twf.argtypes = [ctypes.POINTER(BlockArgs), ctypes.c_int]
    lib.pt_twf.restype = ctypes.c_int
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.pt_rows_dots.argtypes = [i64, i64, i64, i64, vp, i64, i64, ctypes.POINTER(vp), ctypes.POINTER(i64), vp,
                                 ctypes.c_int, ctypes.c_int]
    lib.pt_rows_dots.restype = ctypes.c_int
    lib.pt_rows_comb.argtypes = [i64, i64, i64, vp, i64, i64, vp, vp, vp, i64, vp, i64, ctypes.c_double,
                                 ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.pt_rows_comb.restype = ctypes.c_int
    lib.pt_now.argtypes = []
    lib.pt_now.restype = ctypes.c_double
    return lib


def load():
    """The loaded library (compiling it on first use), or None where it cannot be built or loaded."""
    if _STATE["tried"]:
        return _STATE["lib"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["lib"]
        lib, reason, path = None, None, None
        try:
            cc = compiler()
            if cc is None:
                raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'gcc'}) on PATH")
            if not SOURCE.is_file():
                raise RuntimeError(f"kernel source {SOURCE} is missing")
            path = library_path(cc)
            if not path.is_file():
                logger.debug("phasetorch kernels: compiling %s into %s", SOURCE, path)
                build(cc, path)
            lib = _load(path)
            logger.debug("phasetorch kernels: loaded %s", path)
        except Exception as err:  # any failure means the torch path, never an error for the user
            lib, reason = None, f"{type(err).__name__}: {err}"
            logger.debug("phasetorch kernels: falling back to torch (%s)", reason)
        _STATE.update(lib=lib, reason=reason, path=None if lib is None else str(path), tried=True)
        return lib


def reset() -> None:
    """Forget the loaded library (the next use compiles or loads it again; for tests)."""
    with _LOCK:
        _STATE.update(lib=None, tried=False, reason="not loaded yet", path=None)


def switched(on: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` wrapped to run with the kernels switched on or off (:data:`ENV_SWITCH`, restored after):
    the benchmark and scripts/gradient_roofline.py time both paths side by side with it."""
    def run():
        old = os.environ.get(ENV_SWITCH)
        os.environ[ENV_SWITCH] = "1" if on else "0"
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop(ENV_SWITCH, None)
            else:
                os.environ[ENV_SWITCH] = old
    return run


def enabled() -> bool:
    """False when ``PHASETORCH_KERNELS`` is 0/false/no/off (read at every call)."""
    return not switched_off(ENV_SWITCH)


def available() -> bool:
    """Whether the kernel is enabled and its library loads (compiling it if needed)."""
    return enabled() and load() is not None


def status() -> dict:
    """``{"path": "c-kernel" | "torch", "reason": why not the kernel (or None), "library": path}``."""
    if not enabled():
        return {"path": "torch", "reason": f"disabled by {ENV_SWITCH}={os.environ.get(ENV_SWITCH)}", "library": None}
    lib = load()
    return {"path": "torch" if lib is None else "c-kernel", "reason": _STATE["reason"], "library": _STATE["path"]}


# ---------------------------------------------------------------------------- eligibility
def _bits(dtype: torch.dtype) -> int:
    return {torch.float32: 32, torch.complex64: 32, torch.float64: 64, torch.complex128: 64}.get(dtype, 0)


def usable(A: torch.Tensor, x: Optional[torch.Tensor] = None) -> bool:
    """Whether a pass of ``x`` (flattened signals, or measurements for an adjoint) through ``A`` can take
    the kernel: CPU, the same float32/float64/complex dtype, a contiguous row-major ``A``, no autograd
    graph to record (the kernel's outputs have no ``grad_fn``), and the kernel enabled and loaded."""
    if A.device.type != "cpu" or A.dim() != 2 or not _bits(A.dtype) or not A.is_contiguous() or A.is_conj() or A.is_neg():
        return False
    if x is not None and (x.device.type != "cpu" or x.dtype != A.dtype or x.dim() != 2 or x.shape[0] > MAX_BATCH
                          or x.shape[0] == 0):      # an empty batch: torch's path returns the empty result
        return False
    if A.numel() == 0:
        return False
    if torch.is_grad_enabled() and (A.requires_grad or (x is not None and x.requires_grad)):
        return False
    return available()


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as plain contiguous memory (lazy conjugation and negation resolved)."""
    return t.resolve_conj().resolve_neg().contiguous()


def _per_signal(t: Optional[torch.Tensor], batch, m: int, dtype: torch.dtype):
    """``(tensor, stride)``: per-measurement data as a contiguous (B, m) block (stride m) or one shared row (stride 0)."""
    if t is None:
        return None, 0
    t = _plain(t.to(dtype))
    if t.numel() == m:
        return t.reshape(m).contiguous(), 0
    B = 1
    for s in batch:
        B *= s
    return t.expand(*batch, m).reshape(B, m).contiguous(), m


def _threads(m: int, n: int, B: int) -> int:
    return 1 if m * n * B < SERIAL_WORK else max(1, torch.get_num_threads())


def _run(args: _Args, bits: int) -> None:
    CALLS[("fused", "linear", "adjoint")[args.mode]] += 1
    rc = load().pt_pass(ctypes.byref(args), bits)
    if rc != 0:
        raise RuntimeError(f"phasetorch kernel failed (code {rc})")


def _args(A: torch.Tensor, B: int, mode: int) -> _Args:
    m, n = A.shape
    a = _Args()
    a.m, a.n, a.B = m, n, B
    a.is_complex, a.mode, a.map = int(A.is_complex()), mode, Map.SCALE
    a.nthreads = _threads(m, n, B)
    a.A = A.data_ptr()
    a.scale, a.tiny = 1.0, float(torch.finfo(A.real.dtype if A.is_complex() else A.dtype).tiny)
    return a


# ---------------------------------------------------------------------------- the products
def linear(A: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
    """z = rows of ``xf`` (B, n) times Aᵀ → (B, m), one read of A (``usable(A, xf)`` must hold)."""
    xf = _plain(xf)
    B = xf.shape[0]
    z = torch.empty(B, A.shape[0], dtype=A.dtype)
    a = _args(A, B, LINEAR)
    a.x, a.z = xf.data_ptr(), z.data_ptr()
    _run(a, _bits(A.dtype))
    return z


def adjoint(A: torch.Tensor, zf: torch.Tensor) -> torch.Tensor:
    """Aᴴz for each row of ``zf`` (B, m) → (B, n), one read of A (``usable(A, zf)`` must hold)."""
    zf = _plain(zf)
    B = zf.shape[0]
    g = torch.empty(B, A.shape[1], dtype=A.dtype)
    a = _args(A, B, ADJOINT)
    a.z, a.g = zf.data_ptr(), g.data_ptr()
    _run(a, _bits(A.dtype))
    return g


def fused(A: torch.Tensor, xf: torch.Tensor, spec: PointwiseMap, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, Aᴴv)`` with v = w·φ(c·z) (``spec``), one read of A; fills ``spec``'s outputs (shapes ``(*batch, …)``).
    A one-off :class:`FusedPlan` (``xf`` holds prod(batch) signals)."""
    z, g, a2, w_out, total = FusedPlan(A, spec, batch)(xf)
    spec.a2, spec.weights_out, spec.total, spec.done = a2, w_out, total, True
    return z, g


class FusedPlan:
    """:func:`fused` prepared once for a fixed ``A``, map and batch (an iteration loop calls it at every
    step): the argument block, the contiguous per-measurement data and the thread count are set up at
    construction, so a call only allocates the outputs and runs the pass. Same arithmetic as
    :func:`fused` (bit-identical results). Build it with :meth:`build`, which returns None where the
    kernel does not apply.

    ``g_scale`` and ``value_div`` fold a loss's two last steps into the pass (each a torch op less per
    call, where the first op after a pass over A runs with cold caches): the gradient comes back as
    ``g_scale · Aᴴv`` (the same REAL products as ``u * g_scale`` in torch) and the value(s) as
    ``(Σ w ℓ) / value_div`` in the real dtype (the float64 quotient rounded once, as ``(total / d).to(real)``).

    ``truncation = (α_lb, α_ub, α_h)`` with the Poisson map: TWF's weights (Chen & Candès 2017; E₁ ∩ E₂ with
    K = mean|y − |r|²|, :class:`phasetorch.losses.TruncatedPoissonLoss`) in ONE read of A (``pt_twf``): the
    pass forms them with each signal's K of the plan's previous call (none yet: E₂ taken as met), then the
    exact K corrects the rows it decides otherwise (weight, value term, a sparse adjoint over those rows).
    The weights and |r|² are the two-pass evaluation's; the gradient and values equal it to rounding
    (summed in another order; ``g_scale`` and ``value_div`` are then applied after the pass)."""

    __slots__ = ("A", "batch", "B", "m", "n", "bits", "real", "args", "q", "w", "weighted", "value_div",
                 "g_scale", "block", "twf_v", "twf_k")

    def __init__(self, A: torch.Tensor, spec: PointwiseMap, batch, g_scale: Optional[float] = None,
                 value_div: Optional[float] = None, truncation: Optional[Tuple[float, float, float]] = None) -> None:
        m, n = A.shape
        B = 1
        for s_ in batch:
            B *= s_
        self.A, self.batch, self.B, self.m, self.n = A, tuple(batch), B, m, n
        self.bits = _bits(A.dtype)
        self.real = A.real.dtype if A.is_complex() else A.dtype
        self.weighted = spec.weights is None and spec.code in Map.WEIGHTED
        self.q, q_stride = _per_signal(spec.data, batch, m, self.real)      # kept alive with the plan
        self.w, w_stride = _per_signal(spec.weights, batch, m, self.real)
        a = _args(A, B, FUSED)
        a.map, a.scale, a.p0, a.p1 = int(spec.code), float(spec.scale), float(spec.p0), float(spec.p1)
        a.q, a.q_stride, a.w, a.w_stride = _ptr(self.q), q_stride, _ptr(self.w), w_stride
        if g_scale is not None and not g_scale:
            raise ValueError("FusedPlan: g_scale must be non-zero")
        if value_div is not None and not value_div:
            raise ValueError("FusedPlan: value_div must be non-zero")
        self.value_div, self.g_scale, self.block = value_div, g_scale, None
        if truncation is None:
            if g_scale is not None:
                a.g_scale = float(g_scale)
            if value_div is not None:
                a.value_div = float(value_div)
        else:                            # TWF in one read: the pass's g stays raw (its rows are corrected after it)
            if spec.code != Map.POISSON or B > MAX_BLOCK_BATCH:
                raise ValueError(f"FusedPlan: truncation takes the Poisson map and at most {MAX_BLOCK_BATCH} signals")
            blk = BlockArgs()
            blk.twf = 1
            blk.alpha_lb, blk.alpha_ub, blk.alpha_h = (float(v) for v in truncation)
            self.twf_v = torch.empty(B, m, dtype=A.dtype)             # the corrected rows' terms (scratch)
            self.twf_k = torch.full((B,), -1.0, dtype=self.real)      # each signal's last K (none yet)
            blk.v, blk.twf_k = self.twf_v.data_ptr(), self.twf_k.data_ptr()
            self.block = blk
        self.args = a

    @classmethod
    def build(cls, A: torch.Tensor, spec: Optional[PointwiseMap], batch, g_scale: Optional[float] = None,
              value_div: Optional[float] = None,
              truncation: Optional[Tuple[float, float, float]] = None) -> Optional["FusedPlan"]:
        if spec is None or A.dim() != 2:
            return None
        B = 1
        for s_ in batch:
            B *= s_
        if truncation is not None and B > MAX_BLOCK_BATCH:
            return None
        probe = torch.empty(B, A.shape[1], dtype=A.dtype, device=A.device)
        return cls(A, spec, batch, g_scale, value_div, truncation) if usable(A, probe) else None

    def accepts(self, xf: torch.Tensor) -> bool:
        """Whether flattened signals ``xf`` fit the plan (shape, dtype, CPU; the call runs without autograd)."""
        return xf.dtype == self.A.dtype and tuple(xf.shape) == (self.B, self.n) and xf.device.type == "cpu"

    def __call__(self, xf: torch.Tensor, frozen: Optional[torch.Tensor] = None):
        """``(z, Aᴴv, |r|², weights or None, Σ w ℓ per signal (float64))`` for ``xf`` (B, n), batch-shaped
        outputs as :func:`fused` leaves them in the spec. With ``frozen`` weights (a contiguous real
        ``(*batch, m)`` tensor) a sixth output: Σ frozen·ℓ per signal (float64), summed in the same pass
        (a line search's trial value with the weights of the current point). A plan built with
        ``g_scale`` returns ``g_scale · Aᴴv``; with ``value_div`` the values are ``Σ / value_div`` in the
        real dtype."""
        xf = _plain(xf)
        B, m, n = self.B, self.m, self.n
        if frozen is not None and (frozen.dtype != self.real or frozen.numel() != B * m or not frozen.is_contiguous()):
            raise ValueError(f"frozen weights must be a contiguous {self.real} tensor of {B}×{m} entries")
        z = torch.empty(B, m, dtype=self.A.dtype)
        g = torch.empty(B, n, dtype=self.A.dtype)
        a2 = torch.empty(B, m, dtype=self.real)
        if self.block is not None:
            return self._truncated(xf, frozen, z, g, a2)
        w_out = torch.empty(B, m, dtype=self.real) if self.weighted else None
        # the values: Σ w ℓ in float64, or with value_div the quotients in the real dtype (not both)
        vdt = torch.float64 if self.value_div is None else self.real
        total = torch.empty(B, dtype=vdt)
        total_z = None if frozen is None else torch.empty(B, dtype=vdt)
        a = self.args
        a.x, a.z, a.g, a.a2, a.w_out = xf.data_ptr(), z.data_ptr(), g.data_ptr(), a2.data_ptr(), _ptr(w_out)
        if self.value_div is None:
            a.value, a.value_z = total.data_ptr(), _ptr(total_z)
        else:
            a.value_real, a.value_z_real = total.data_ptr(), _ptr(total_z)
        if frozen is not None:
            a.wz, a.wz_stride = frozen.data_ptr(), m
        try:
            _run(a, self.bits)
        finally:                                # the argument block outlives this call's buffers
            a.value, a.wz, a.value_z, a.value_real, a.value_z_real = None, None, None, None, None
        batch = self.batch
        out = (z, g, a2.view(*batch, m), None if w_out is None else w_out.view(*batch, m), total.view(batch))
        return out if frozen is None else out + (total_z.view(batch),)

    def _truncated(self, xf, frozen, z, g, a2):
        """:meth:`__call__` of a truncation plan (``pt_twf``); the same outputs, the weights always returned."""
        B, m, batch = self.B, self.m, self.batch
        w_out = torch.empty(B, m, dtype=self.real)
        total = torch.empty(B, dtype=torch.float64)
        total_z = None if frozen is None else torch.empty(B, dtype=torch.float64)
        blk = self.block
        blk.pass_ = self.args                  # a copy of the plan's arguments (those stay without buffers)
        a = blk.pass_
        a.x, a.z, a.g, a.a2, a.w_out = xf.data_ptr(), z.data_ptr(), g.data_ptr(), a2.data_ptr(), w_out.data_ptr()
        a.value, a.value_z = total.data_ptr(), _ptr(total_z)
        a.wz, a.wz_stride = (frozen.data_ptr(), m) if frozen is not None else (None, 0)
        CALLS["fused"] += 1
        _run_block("pt_twf", blk, self.bits, "TWF pass")
        if self.g_scale is not None:
            g.mul_(self.g_scale)
        vals = [total, total_z]
        if self.value_div is not None:        # the float64 quotient rounded once, as the plain pass gives it
            vals = [None if t is None else (t / self.value_div).to(self.real) for t in vals]
        out = (z, g, a2.view(*batch, m), w_out.view(*batch, m), vals[0].view(batch))
        return out if frozen is None else out + (vals[1].view(batch),)


# ---------------------------------------------------------------------------- the map alone (no A)
#: below this many measurements (B·m) the map runs on one thread
SERIAL_MAP = 1 << 15


def map_applies(z: torch.Tensor, spec: Optional[PointwiseMap]) -> bool:
    """Whether :func:`apply_map` takes ``z`` (CPU, float32/float64/complex, nothing to differentiate, the
    kernel enabled and loaded) for this ``spec`` (a :class:`PointwiseMap`)."""
    if not isinstance(spec, PointwiseMap) or z.device.type != "cpu" or not _bits(z.dtype) or z.numel() == 0:
        return False
    if torch.is_grad_enabled() and (z.requires_grad or any(
            t is not None and t.requires_grad for t in (spec.data, spec.weights))):
        return False
    return available()


def apply_map(z: torch.Tensor, spec: PointwiseMap, k: int, rescale: bool = False) -> torch.Tensor:
    """v = w·φ(c·z) (``spec``) for measurements ``z`` of shape ``(*batch, *measurement)`` (``k`` trailing
    measurement dimensions) in one pass of ``pt_map_pass`` (``map_applies(z, spec)`` must hold); fills
    ``spec``'s outputs as the fused dense pass does (``a2`` and ``weights_out`` shaped like z, ``total``
    (batch shape, float64)) and sets ``done``; with data it also sums the amplitude residual
    ``residual_sum`` = Σ(|r| − ψ)² per signal (ψ = q for the amplitude maps, √max(q, 0) for the others). With ``rescale`` z (which must be contiguous) is
    overwritten by r = c·z in the same pass, and ``spec.rescaled`` says so.

    The operator's half of a gradient evaluation for FFT-based operators on the CPU: the same closed
    forms as the fused dense kernel (:class:`Map`), the values summed in float64 in a fixed order."""
    batch = tuple(z.shape[:z.dim() - k])
    m = 1
    for s_ in z.shape[z.dim() - k:]:
        m *= s_
    B = 1
    for s_ in batch:
        B *= s_
    real = z.real.dtype if z.is_complex() else z.dtype
    if rescale and not (z.is_contiguous() and not z.is_conj() and not z.is_neg()):
        raise ValueError("apply_map: rescale needs a contiguous z (it is overwritten)")
    zf = z if rescale else _plain(z)

    def flat(t):
        if t is None:
            return None, 0
        t = t.reshape(*t.shape[:t.dim() - k], m) if t.dim() >= k else t
        return _per_signal(t, batch, m, real)

    q, q_stride = flat(spec.data)
    w, w_stride = flat(spec.weights)
    weighted = spec.weights is None and spec.code in Map.WEIGHTED
    v = torch.empty(z.shape, dtype=z.dtype)
    a2 = torch.empty(z.shape, dtype=real)
    w_out = torch.empty(z.shape, dtype=real) if weighted else None
    total = torch.empty(batch, dtype=torch.float64)
    resid = torch.empty(batch, dtype=torch.float64) if q is not None and spec.code != Map.SCALE else None
    a = _Args()
    a.m, a.n, a.B = m, 0, B
    a.is_complex, a.mode, a.map = int(z.is_complex()), FUSED, int(spec.code)
    a.nthreads = 1 if B * m < SERIAL_MAP else max(1, torch.get_num_threads())
    a.scale, a.p0, a.p1 = float(spec.scale), float(spec.p0), float(spec.p1)
    a.tiny = float(torch.finfo(real).tiny)
    a.z, a.g, a.a2, a.w_out, a.value = zf.data_ptr(), v.data_ptr(), a2.data_ptr(), _ptr(w_out), total.data_ptr()
    a.q, a.q_stride, a.w, a.w_stride = _ptr(q), q_stride, _ptr(w), w_stride
    a.rescale_z = int(bool(rescale))
    a.resid = _ptr(resid)
    CALLS["map"] += 1
    rc = load().pt_map_pass(ctypes.byref(a), _bits(z.dtype))
    if rc != 0:
        raise RuntimeError(f"phasetorch map kernel failed (code {rc})")
    spec.a2, spec.weights_out, spec.total, spec.done = a2, w_out, total, True
    spec.rescaled = bool(rescale)
    spec.residual_sum = resid
    return v


# ---------------------------------------------------------------------------- products with a bank of rows
#: below this many REALs of rows (B·k·D) the bank products stay with torch (its call costs less there)
ROWS_MIN = 1 << 18


def rows_apply(Z: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether :func:`rows_dots` / :func:`rows_comb` take the bank ``Z`` (B, k, D) with the vectors ``others``
    (each (B, D)): CPU float32/float64, unit stride along D, nothing to differentiate, at least :data:`ROWS_MIN`
    REALs in the bank, the kernel enabled and loaded."""
    if Z.device.type != "cpu" or Z.dtype not in (torch.float32, torch.float64) or Z.dim() != 3 \
            or Z.numel() < ROWS_MIN or Z.stride(-1) != 1:
        return False
    for t in others:
        if t.device.type != "cpu" or t.dtype != Z.dtype or t.shape != (Z.shape[0], Z.shape[-1]) \
                or t.stride(-1) != 1:
            return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (Z, *others)):
        return False
    return available()


def rows_dots(Z: torch.Tensor, *V: torch.Tensor) -> torch.Tensor:
    """``Z @ stack(V, 1).mT`` for a bank of rows ``Z`` (B, k, D) and one to four vectors ``V`` (each (B, D),
    any tensors: nothing is stacked) in one read of each, as a (B, k, c) float64 tensor (``rows_apply(Z, *V)``
    must hold): the sums run in REAL vector lanes over runs of 1024 and in double over the runs, in an order
    fixed by the sizes (any thread count gives the same bits). torch's ``bmm`` reads operands this tall and
    skinny at a third of the memory speed on the CPU."""
    B, k, D = Z.shape
    c = len(V)
    if not 1 <= c <= 4:
        raise ValueError(f"rows_dots: 1 to 4 vectors, got {c}")
    out = torch.empty(B, k, c, dtype=torch.float64)
    ptrs = (ctypes.c_void_p * 4)(*[v.data_ptr() for v in V])
    strides = (ctypes.c_int64 * 4)(*[v.stride(0) for v in V])
    CALLS["rows"] += 1
    rc = load().pt_rows_dots(B, k, c, D, Z.data_ptr(), Z.stride(0), Z.stride(1), ptrs, strides, out.data_ptr(),
                             _threads(B * k, D, 1), _bits(Z.dtype))
    if rc != 0:
        raise RuntimeError(f"phasetorch rows kernel failed (code {rc})")
    return out


def rows_comb(Z: torch.Tensor, coef: torch.Tensor, gamma: torch.Tensor, g: torch.Tensor,
              negate: bool = False) -> torch.Tensor:
    """q = ±(γ g + Zᵀ coef) per sample for a bank ``Z`` (B, k, D), ``coef`` (B, k), ``gamma`` (B,) and ``g``
    (B, D), in one read of the bank (``rows_apply(Z, g)`` must hold); each element is summed in Z's dtype
    as γg + coef₀Z₀ + coef₁Z₁ + … in that order (any thread count gives the same bits). Returns (B, D).

    A complex ``coef`` makes it a complex combination: Z's rows, g and q are then the real views of complex
    vectors ((re, im) pairs along D, which must be even) and each pair takes (c_re + i c_im)(z_re + i z_im),
    its imaginary product first. γ stays real."""
    B, k, D = Z.shape
    cplx = coef.is_complex()
    if cplx:
        if D % 2 or any(s_ % 2 for s_ in (Z.stride(0), Z.stride(1), g.stride(0))):
            raise ValueError("rows_comb: a complex combination needs whole (re, im) pairs along D")
        cf = torch.view_as_real(coef.detach().to(torch.complex128).resolve_conj().reshape(B, k)).reshape(B, 2 * k)
        cf = cf.contiguous()
    else:
        cf = coef.detach().to(torch.float64).reshape(B, k).contiguous()
    gm = gamma.detach().to(torch.float64).reshape(B).contiguous()
    q = torch.empty(B, D, dtype=Z.dtype)
    CALLS["rows"] += 1
    rc = load().pt_rows_comb(B, k, D, Z.data_ptr(), Z.stride(0), Z.stride(1), cf.data_ptr(), gm.data_ptr(),
                             g.data_ptr(), g.stride(0), q.data_ptr(), q.stride(0), -1.0 if negate else 1.0,
                             int(cplx), _threads(B * k, D, 1), _bits(Z.dtype))
    if rc != 0:
        raise RuntimeError(f"phasetorch rows kernel failed (code {rc})")
    return q


def dense_linear_adjoint(A: torch.Tensor, x: torch.Tensor, fn, batch):
    """``(z, Aᴴ fn(z, None))`` for flattened signals ``x`` (B, n) through the kernel, or None where it does
    not apply. A ``fn`` carrying a :class:`PointwiseMap` (``fn.pointwise``) runs fused in one read of A;
    any other ``fn`` runs as two one-read passes. ``fn`` receives z of shape ``(*batch, m)``."""
    if not usable(A, x):
        return None
    spec = getattr(fn, "pointwise", None)
    if isinstance(spec, PointwiseMap):
        return fused(A, x, spec, batch)
    z = linear(A, x)
    v = fn(z.reshape(*batch, A.shape[0]), None).reshape(z.shape)
    if v.dtype != A.dtype:
        v = v.to(A.dtype)
    return z, adjoint(A, v)


__all__ = ["Map", "PointwiseMap", "FusedPlan", "apply_map", "map_applies", "rows_apply", "rows_dots", "rows_comb", "PassArgs", "BlockArgs", "gradient_block", "MAX_BLOCK_BATCH", "available", "enabled", "status", "load", "reset", "usable", "linear", "adjoint",
           "fused", "dense_linear_adjoint", "CALLS", "cache_dir", "library_path", "build", "compiler"]


# ---------------------------------------------------------------------------- Gaussian rows
def gaussian_rows(seed: int, row0: int, rows: int, n: int, is_complex: bool, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``row0 .. row0 + rows − 1`` of the counter-based Gaussian matrix of ``seed`` on the CPU
    (:mod:`phasetorch.philox` defines them; this is its compiled form, bit-identical to
    :func:`phasetorch.philox.gaussian_rows_torch`). ``dtype``: float32 or float64 (the real dtype;
    complex rows come back as the matching complex dtype). Needs :func:`available`."""
    bits = _bits(dtype)
    if not bits or dtype.is_complex:
        raise ValueError(f"gaussian_rows: dtype must be float32 or float64, got {dtype}")
    out = torch.empty(rows, n, 2, dtype=dtype) if is_complex else torch.empty(rows, n, dtype=dtype)
    if rows == 0:
        return torch.view_as_complex(out) if is_complex else out
    CALLS["gaussian"] += 1
    threads = 1 if rows * n < SERIAL_WORK // 8 else max(1, torch.get_num_threads())
    rc = load().pt_gaussian(int(seed) & ((1 << 64) - 1), int(row0), int(rows), int(n), int(is_complex), bits,
                            out.data_ptr(), threads)
    if rc != 0:
        raise RuntimeError(f"phasetorch gaussian kernel failed (code {rc})")
    return torch.view_as_complex(out) if is_complex else out
