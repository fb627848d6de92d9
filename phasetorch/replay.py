r"""Captured blocks of tensor operations, replayed: CUDA graphs, and a CPU tape that replays the same way.

An iteration loop whose iterations dispatch the same operations with the same host values (shapes,
Python scalars, the tensors read and written) can be **captured** once and **replayed**: on CUDA as a
CUDA graph (``torch.cuda.CUDAGraph``: one launch for a block of k iterations instead of hundreds of
kernel launches and their Python dispatch), elsewhere not at all. A replay re-runs the recorded
operations on the *same* memory: the block must read its inputs from, and write its results to,
static tensors that outlive it (the caller's job, see ``Driver.run`` in :mod:`phasetorch.solve`), and
every host value it used — a Python scalar, a shape, a branch taken on a Python condition — is
frozen at capture. What cannot be captured: host reads (``.item()``, ``bool(t)``, ``.tolist()``) and
operations whose output shape depends on values (``nonzero``, boolean indexing, ``masked_select``).

:class:`Tape` is the same contract on any device without a graph: it records the aten operations of
the captured call with a dispatch mode (refusing host reads and value-dependent shapes) and a replay
executes them again in order, each reading the tensors the capture's operations read — the outputs of
earlier recorded operations where it read those, the very same tensor objects otherwise (the static
buffers, the data) — with the same non-tensor arguments. So a block whose correctness depends on a
value baked at capture (a step size that changes with t, a tensor created afresh each block) replays
wrongly on a tape exactly as it would in a CUDA graph, and a CPU test comparing a taped run with the
plain loop holds the graph path to the plain path's results (``tests/test_replay.py``). It also refuses
what a CUDA capture refuses and a CPU run does not notice (``torch.equal``, a tensor-valued
``masked_fill``, linalg error checks, ``torch.tensor`` constants, ``bincount``). Its limits: it sees
torch operations only (a block calling the fused C kernel through ctypes must not be taped: ``backend``
refuses the tape while the kernel is on), a 0-dim CPU tensor read by a CUDA kernel is frozen at capture
by a graph but re-read by the tape, and a CPU-only code path (a host loop over constant positions) is
refused although the GPU takes another.

:class:`Blocks` is the policy a loop uses: which blocks warm up, which are captured, which replay, and the
static buffers their carried tensors live in.

``PHASETORCH_GRAPHS`` (read at every call of :func:`backend`): ``0``/``off`` the plain path everywhere;
``tape`` the tape on every device (tests); unset/``1``: CUDA graphs on CUDA, the plain path elsewhere.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Hashable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from .tensors import OFF_VALUES, switched_off

__all__ = ["CaptureError", "Tape", "CudaGraph", "Blocks", "backend", "run_eager", "ENV_SWITCH"]

ENV_SWITCH = "PHASETORCH_GRAPHS"
KERNEL_SWITCH = "PHASETORCH_KERNELS"      # the fused C kernel's switch (physics.kernels; read here by name)

aten = torch.ops.aten

#: operations a capture refuses: a host read (explicit, or inside the op on CUDA: a value compared on the
#: host, a tensor-valued fill, an error check), a constant made from host data (a pageable copy to the
#: device), or an output shape that depends on values
_HOST_READS = {aten._local_scalar_dense.default, aten.equal.default, aten.masked_fill.Tensor,
               aten.masked_fill_.Tensor, aten._linalg_check_errors.default, aten.lift_fresh.default,
               aten.lift_fresh_copy.default}
_DYNAMIC = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
            aten.unique_consecutive.default, aten.unique_dim.default, aten.repeat_interleave.Tensor,
            aten.bincount.default, aten.histc.default}


class CaptureError(RuntimeError):
    """A block cannot be captured (a host read, a value-dependent shape, or the graph API refused it)."""


class _Changed(CaptureError):
    """A block changed the layout of the tensors it carries (a name added, a shape or dtype changed)."""


def _bool_index(args) -> bool:
    """Whether an ``index``/``index_put`` call indexes with a boolean mask (a value-dependent shape)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class _Recorder(TorchDispatchMode):
    """Records ``(func, args, kwargs, outputs)`` of every aten operation; refuses what a graph cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise CaptureError(f"{func} reads the device on the host or copies host data to it: not inside a "
                               f"captured block")
        if func in _DYNAMIC or (func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default)
                                and _bool_index(args)):
            raise CaptureError(f"{func} has a value-dependent output shape: it cannot be captured")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))   # keeps every tensor alive: ids stay unique
        return out


class Tape:
    """A captured call replayed by re-executing its aten operations (see the module docstring).

    ``capture(fn)`` runs ``fn`` once (its effects happen, as a CUDA graph's capture followed by its first
    replay) and records it; ``replay()`` runs the recorded operations again."""

    def __init__(self, device=None, stream=None) -> None:
        self.ops: Optional[list] = None
        self.stream = None

    def capture(self, fn: Callable[[], None]) -> None:
        """Record ``fn()`` (running it). ``Tensor.tolist``/``Tensor.numpy`` (host reads the dispatcher does not
        see) are refused meanwhile, process-wide: the tape is a single-threaded test tool."""
        saved = torch.Tensor.tolist, torch.Tensor.numpy

        def refused(t, *args, **kwargs):
            raise CaptureError("a host read (.tolist(), .numpy()) inside a captured block")

        rec = _Recorder()
        torch.Tensor.tolist = torch.Tensor.numpy = refused
        try:
            with rec:
                fn()
        finally:
            torch.Tensor.tolist, torch.Tensor.numpy = saved
        self.ops = rec.ops

    def replay(self) -> None:
        if self.ops is None:
            raise RuntimeError("replay() before capture()")
        env: dict = {}                       # id of a capture-time tensor → its value in this replay

        def swap(v):
            return env.get(id(v), v) if isinstance(v, torch.Tensor) else v

        for func, args, kwargs, out in self.ops:
            res = func(*tree_map(swap, args), **tree_map(swap, kwargs))
            outs, _ = tree_flatten(out)
            news, _ = tree_flatten(res)
            for o, n in zip(outs, news):
                if isinstance(o, torch.Tensor):
                    env[id(o)] = n


class CudaGraph:
    """A captured call as a CUDA graph: ``capture(fn)`` records ``fn`` on a side stream and replays it
    once (so that, as with :class:`Tape`, capturing runs the block); ``replay()`` launches it again on
    the current stream. ``run(fn)`` runs ``fn`` eagerly on the capture stream (the warm-up the CUDA
    graph documentation asks for before a capture). A refused capture raises :class:`CaptureError`."""

    def __init__(self, device, stream: Optional["torch.cuda.Stream"] = None) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if stream is None else stream
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def run(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` eagerly on the capture stream under the CUDA sync debug mode: False when it synchronised
        with the host (such a block cannot be captured; its results are right all the same)."""
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            previous = torch.cuda.get_sync_debug_mode()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.cuda.stream(self.stream):
                        fn()
                finally:
                    torch.cuda.set_sync_debug_mode(previous)
                    current.wait_stream(self.stream)
        synced = False
        for w in caught:
            if "synchroniz" in str(w.message):
                synced = True
            else:                          # the block's own warnings are passed on
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return not synced

    def capture(self, fn: Callable[[], None]) -> None:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device):
            try:
                with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                    fn()
            except CaptureError:
                raise
            except RuntimeError as exc:   # an invalidated capture: the caller falls back to the plain path
                raise CaptureError(f"CUDA graph capture failed: {exc}") from exc
            self.graph = graph
            graph.replay()

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


def backend(device: torch.device) -> Optional[type]:
    """The capture backend for ``device`` under ``PHASETORCH_GRAPHS`` (module docstring): :class:`CudaGraph`,
    :class:`Tape` or None (the plain path)."""
    mode = os.environ.get(ENV_SWITCH, "").strip().lower()
    if mode in OFF_VALUES:
        return None
    if mode == "tape":
        if torch.device(device).type == "cpu" and not switched_off(KERNEL_SWITCH):
            raise ValueError(f"{ENV_SWITCH}=tape on a CPU needs {KERNEL_SWITCH}=0: the tape sees torch operations "
                             f"only, not the fused C kernel's calls")
        return Tape
    return CudaGraph if torch.device(device).type == "cuda" and torch.cuda.is_available() else None


def run_eager(engine, fn: Callable[[], None]) -> bool:
    """Run ``fn`` eagerly where ``engine`` would (a CUDA graph's capture stream; the current one otherwise);
    False when it was seen to synchronise with the host (CUDA's sync debug mode)."""
    if isinstance(engine, CudaGraph):
        return engine.run(fn)
    fn()
    return True



def _layout(values: dict) -> Optional[dict]:
    """Shapes, dtypes and devices of a dict of tensors (None: a value that is neither a tensor nor None)."""
    out = {}
    for name, v in values.items():
        if v is not None and not isinstance(v, torch.Tensor):
            return None
        out[name] = None if v is None else (v.shape, v.dtype, v.device)
    return out


class Blocks:
    """The blocks of an iterative loop, captured and replayed by key (:mod:`phasetorch.solve`'s iteration loop,
    the power method of :mod:`phasetorch.init.eigensolvers`).

    A loop runs each block through :meth:`run` with a hashable key saying what the block takes from the
    host (two blocks with equal keys dispatch the same operations with the same host values) and the dicts
    of tensors it carries. The first block with a key is a warm-up: its body runs eagerly on the capture
    stream (as CUDA graphs ask), under CUDA's sync debug mode (a block that synchronises is never captured).
    The next block with that key is captured (capturing runs it); later ones replay. At most
    ``MAX_GRAPHS`` captures are kept: when they are all in use, a new key's blocks run eagerly, unless the
    least recently replayed capture has not been replayed for ``STALE`` blocks (a piecewise-constant
    schedule leaves its old keys behind): that one is dropped for the new key. After ``FRESH`` new keys in a
    row (a schedule that changes at every t), a new key's block runs plainly (``run`` returns False: the
    caller runs it), sparing the copies; a key met again is warmed up then.

    While blocks run here the carried tensors live in static buffers (clones made at the first block; the
    current values are copied in before every block and the body's results copied back at its end, so the
    caller may run plain blocks in between), and the dicts are bound to them. ``t0`` is a 0-dim int64
    device tensor holding the block's first index (set before each block: a body reads its iteration
    numbers from it). Capturing goes off for the rest of the loop (``run`` returns False) when a CUDA
    capture is refused by the graph API (nothing ran; a warning names ``name``) — the tape's refusals are
    errors (tests) — when a body changes the layout of what it carries (a name added or dropped, a shape,
    dtype or None-ness changed: the block's own results stand), or when the caller's tensors change layout
    between blocks, unless ``relayout=True``: then the static buffers are made afresh and the captures
    dropped. CUDA's sync debug mode is process-wide: set during a warm-up only."""

    MAX_GRAPHS = 4
    STALE = 8
    FRESH = 3

    def __init__(self, engine_cls, device, name: str, relayout: bool = False) -> None:
        self.cls, self.name, self.relayout = engine_cls, name, relayout
        self.device = torch.device(device)
        self.runner = None                 # the warm-ups' engine (its stream is the captures' stream)
        self.engines: dict = {}            # key → captured engine, least recently replayed first
        self.used: dict = {}               # key → the block count when its capture last ran
        self.seen: set = set()             # keys met
        self.warmed: set = set()           # keys whose warm-up ran
        self.streak = 0                    # keys met for the first time in a row
        self.n = 0                         # blocks run here
        self.statics: Optional[list] = None
        self.layouts = None
        self.t0 = torch.zeros((), dtype=torch.int64, device=self.device)
        self.off = False
        #: blocks run each way (a run's log says it: ``config["captured_blocks"]``)
        self.counts = {"backend": engine_cls.__name__, "plain": 0, "eager": 0, "captured": 0, "replayed": 0}

    def _layouts(self, dicts: Sequence[dict]) -> Optional[list]:
        layouts = [_layout(d) for d in dicts]
        return None if any(lay is None for lay in layouts) else layouts

    def bind(self, dicts: Sequence[dict], layouts: list) -> None:
        """Copy the current values into the static buffers (made at the first block) and bind the dicts to
        them."""
        if self.statics is None:
            self.layouts = layouts
            self.statics = [{n: None if v is None else v.clone() for n, v in d.items()} for d in dicts]
        else:
            self.store(dicts)
        for d, st in zip(dicts, self.statics):
            d.update(st)

    def store(self, dicts: Sequence[dict]) -> None:
        """Copy the dicts' values into the static buffers. A value that is itself (a view of) a static
        buffer — BB's previous iterate is the block's starting x when k = 1 — is read before any buffer is
        written."""
        pairs = [(st[n], v) for d, st in zip(dicts, self.statics) for n, v in d.items()
                 if v is not None and v is not st[n]]
        held = {t.untyped_storage().data_ptr() for st in self.statics for t in st.values() if t is not None}
        pairs = [(dst, src.clone() if src.untyped_storage().data_ptr() in held else src) for dst, src in pairs]
        for dst, src in pairs:
            dst.copy_(src)

    def plain(self) -> bool:
        self.counts["plain"] += 1
        return False

    def run(self, key: Hashable, dicts: Sequence[dict], body: Callable[[], None], t0: int = 0) -> bool:
        """Run the block ``body()`` (which reads and rebinds the dicts' entries) as a warm-up, a capture or a
        replay; False when the caller must run it plainly (capturing is off, or the key is one more of a run
        of keys that do not repeat)."""
        if self.off:
            return self.plain()
        layouts = self._layouts(dicts)
        if layouts is None or (self.statics is not None and layouts != self.layouts and not self.relayout):
            self.off = True
            return self.plain()
        if self.statics is not None and layouts != self.layouts:      # relayout: afresh
            self.statics, self.engines, self.used, self.seen, self.warmed, self.streak = None, {}, {}, set(), set(), 0
        engine = self.engines.pop(key, None)
        if engine is not None:
            mode, self.streak = "replay", 0
        else:
            new = key not in self.seen
            self.seen.add(key)
            self.streak = self.streak + 1 if new else 0
            if key not in self.warmed:
                if new and self.streak > self.FRESH:
                    return self.plain()         # keys that do not repeat (a decaying schedule): no copies
                mode = "warm-up"
            else:
                if len(self.engines) >= self.MAX_GRAPHS:
                    oldest = next(iter(self.engines))
                    if self.n - self.used[oldest] > self.STALE:
                        del self.engines[oldest], self.used[oldest]
                mode = "capture" if len(self.engines) < self.MAX_GRAPHS else "eager"
        self.bind(dicts, layouts)
        statics = self.statics

        def block() -> None:
            body()
            if self._layouts(dicts) != self.layouts:   # a name added or dropped, a shape, dtype or None changed
                raise _Changed("the block changed the layout of the tensors it carries")
            self.store(dicts)
            for d, st in zip(dicts, statics):
                d.update(st)

        self.t0.fill_(t0)
        self.n += 1
        if mode == "replay":
            engine.replay()
            self.engines[key], self.used[key] = engine, self.n      # now the most recently replayed
            self.counts["replayed"] += 1
            return True
        if mode != "capture":
            if self.runner is None:
                self.runner = self.cls(self.device)
            self.counts["eager"] += 1
            try:
                clean = run_eager(self.runner, block)
            except _Changed:                      # it ran: the body's own values stand
                self.off = True
                return True
            if mode == "warm-up":
                self.warmed.add(key)
            if not clean:                         # it ran, but a capture of it would fail
                self.off = True
                warnings.warn(f"'{self.name}': a block of iterations synchronises with the host, so it is not "
                              f"captured as a graph; the plain loop runs (same results)", RuntimeWarning,
                              stacklevel=3)
            return True
        engine = self.cls(self.device, self.runner.stream)
        try:
            engine.capture(block)
        except CaptureError as exc:
            self.off = True
            if isinstance(engine, Tape):
                if isinstance(exc, _Changed):     # the tape ran the body: its values stand
                    self.counts["eager"] += 1
                    return True
                raise
            for d, st in zip(dicts, statics):     # nothing ran: the statics hold the block's start
                d.update(st)
            warnings.warn(f"'{self.name}': iterations are not captured as a graph ({exc}); the plain loop "
                          f"runs (same results)", RuntimeWarning, stacklevel=3)
            return self.plain()
        self.engines[key], self.used[key] = engine, self.n
        self.counts["captured"] += 1
        return True

    def stats(self) -> dict:
        """``counts`` and whether capturing was turned off (``fallback``)."""
        return dict(self.counts, fallback=self.off)
