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
plain loop holds the graph path to the plain path's results (``tests/test_replay.py``). A tape sees
torch operations only: a block calling a compiled kernel through ctypes must not be taped.

``PHASETORCH_GRAPHS`` (read at every call of :func:`backend`): ``0``/``off`` the plain path everywhere;
``tape`` the tape on every device (tests); unset/``1``: CUDA graphs on CUDA, the plain path elsewhere.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["CaptureError", "Tape", "CudaGraph", "backend", "run_eager", "ENV_SWITCH"]

ENV_SWITCH = "PHASETORCH_GRAPHS"

aten = torch.ops.aten

#: operations a capture refuses: a host read, or an output shape that depends on values
_HOST_READS = {aten._local_scalar_dense.default}
_DYNAMIC = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
            aten.unique_consecutive.default, aten.unique_dim.default, aten.repeat_interleave.Tensor}


class CaptureError(RuntimeError):
    """A block cannot be captured (a host read, a value-dependent shape, or the graph API refused it)."""


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
            raise CaptureError("a host read (.item(), bool(t), float(t)) inside a captured block")
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

    def __init__(self, device=None) -> None:
        self.ops: Optional[list] = None

    def capture(self, fn: Callable[[], None]) -> None:
        saved = torch.Tensor.tolist

        def refused(t):
            raise CaptureError("a host read (.tolist()) inside a captured block")

        rec = _Recorder()
        torch.Tensor.tolist = refused
        try:
            with rec:
                fn()
        finally:
            torch.Tensor.tolist = saved
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

    def __init__(self, device) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def run(self, fn: Callable[[], None]) -> None:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            fn()
        current.wait_stream(self.stream)

    def capture(self, fn: Callable[[], None]) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                fn()
        except Exception as exc:          # an invalidated capture: the caller falls back to the plain path
            raise CaptureError(f"CUDA graph capture failed: {exc}") from exc
        self.graph = graph
        graph.replay()

    def replay(self) -> None:
        self.graph.replay()


def backend(device: torch.device) -> Optional[type]:
    """The capture backend for ``device`` under ``PHASETORCH_GRAPHS`` (module docstring): :class:`CudaGraph`,
    :class:`Tape` or None (the plain path)."""
    mode = os.environ.get(ENV_SWITCH, "").strip().lower()
    if mode in ("0", "off", "false", "no"):
        return None
    if mode == "tape":
        return Tape
    return CudaGraph if torch.device(device).type == "cuda" and torch.cuda.is_available() else None


def run_eager(engine, fn: Callable[[], None]) -> None:
    """Run ``fn`` eagerly where ``engine`` would (a CUDA graph's capture stream; the current one otherwise)."""
    if isinstance(engine, CudaGraph):
        engine.run(fn)
    else:
        fn()

