r"""Process groups for multi-process runs: start and end the group, reduce, gather, check agreement.

phasetorch splits one problem over several processes (``torchrun``, one per GPU or per CPU
socket) through :mod:`torch.distributed` — gloo on CPUs, NCCL on GPUs, nothing home-made. The
measurements are sharded (:mod:`phasetorch.physics.sharded`: every rank holds only its rows of A
and its part of y); the signal and everything of size n is replicated, and every sum over the
measurements is all-reduced, so every rank takes the same decisions and returns the same result.

In Python::

    import phasetorch as pt
    from phasetorch import distributed as dist

    with dist.process_group():                       # env:// (torchrun) or a single process
        op = pt.physics.ShardedGaussian(n, m, seed=0, dtype=torch.float64)   # this rank's rows
        y = op(x_true)                               # this rank's intensities
        rec = pt.reconstruct(op, y)                  # the same rec.x on every rank
        if dist.is_main():
            print(rec.x)

and ``torchrun --nproc_per_node 2 my_script.py`` (or ``torchrun … -m phasetorch reconstruct …
--distributed``). :func:`init` / :func:`shutdown` are the two halves of :func:`process_group`.
Without a launcher (no ``RANK``/``WORLD_SIZE`` in the environment) :func:`init` starts a group
of one process, so the same script also runs alone.

**Failures.** Every collective of this module runs under the group's timeout (``timeout`` of
:func:`init`, default :data:`DEFAULT_TIMEOUT` seconds). A peer that dies or stops answering ends
the collective on every other rank with a :class:`DistributedError` naming the rank, the
operation and the cause, instead of a hang. Disagreeing settings (seeds, sizes, operator configs)
are caught by :func:`check_same`, which raises the same ``ValueError`` on every rank.

Complex tensors travel as real views (:func:`torch.view_as_real`): NCCL has no complex type.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = ["DistributedError", "DEFAULT_TIMEOUT", "init", "shutdown", "process_group", "is_active", "rank",
           "world_size", "is_main", "default_backend", "all_reduce_sum", "broadcast_tensor", "all_gather_cat", "all_gather_object",
           "broadcast_object", "check_same", "shard_range", "rank_seed", "free_port", "spawn", "SpawnResult",
           "barrier"]

#: default timeout (seconds) of the group's collectives: a dead or stuck peer ends the job after this long
DEFAULT_TIMEOUT = 120.0


class DistributedError(RuntimeError):
    """A collective failed: a peer process died, stopped answering within the timeout, or the group
    is not usable. Raised on every surviving rank (the message names this rank and the operation)."""


# ---------------------------------------------------------------------------- the group
def is_active() -> bool:
    """Whether a default process group is initialised (by :func:`init` or by the user)."""
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    """This process's rank in ``group`` (0 without a group)."""
    return dist.get_rank(group) if is_active() else 0


def world_size(group=None) -> int:
    """Number of processes of ``group`` (1 without a group)."""
    return dist.get_world_size(group) if is_active() else 1


def is_main(group=None) -> bool:
    """Whether this process is rank 0 (the one that writes files, prints and shows progress)."""
    return rank(group) == 0


def default_backend(device: Optional[torch.device] = None) -> str:
    """``nccl`` for a CUDA device (when NCCL is available), else ``gloo``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def init(backend: Optional[str] = None, *, timeout: float = DEFAULT_TIMEOUT, device: Optional[torch.device] = None,
         init_method: Optional[str] = None, rank: Optional[int] = None, world_size: Optional[int] = None) -> torch.device:
    """Start the default process group; returns the device this rank should compute on.

    Parameters
    ----------
    backend : ``"gloo"`` (CPU) or ``"nccl"`` (GPU); default :func:`default_backend` of ``device``.
    timeout : seconds after which a collective waiting for a dead or stuck peer fails (> 0).
    device : ``cpu`` (default) or ``cuda``: with ``cuda`` each rank takes GPU ``LOCAL_RANK`` (torchrun's).
    init_method, rank, world_size : as :func:`torch.distributed.init_process_group`; by default the
        environment of ``torchrun`` (``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
        ``MASTER_PORT``). Without those variables and without arguments, a group of one process on
        a free local port (so a script written for ``torchrun`` also runs alone).

    Calling it when a group is already initialised returns the device and starts nothing.
    """
    if not dist.is_available():
        raise DistributedError("torch.distributed is not available in this PyTorch build")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError("device='cuda' but CUDA is not available on this machine; use device='cpu' (gloo)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if is_active():
        return dev
    backend = backend or default_backend(dev)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    kwargs: Dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=float(timeout))}
    if init_method is None and rank is None and world_size is None and "WORLD_SIZE" not in os.environ:
        init_method, rank, world_size = f"tcp://127.0.0.1:{free_port()}", 0, 1
    if init_method is not None:
        kwargs["init_method"] = init_method
    if rank is not None:
        kwargs["rank"] = int(rank)
    if world_size is not None:
        kwargs["world_size"] = int(world_size)
    if backend == "nccl" and dev.type == "cuda":
        kwargs["device_id"] = dev
    try:
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"could not start the process group ({backend}): {err}") from err
    return dev


def shutdown() -> None:
    """End the default process group (nothing without one)."""
    if is_active():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(backend: Optional[str] = None, **kwargs):
    """``with process_group(): …`` — :func:`init` on entry (yields the device), :func:`shutdown` on exit.

    A group that was already initialised when the block started is left running."""
    owned = not is_active()
    dev = init(backend, **kwargs)
    try:
        yield dev
    finally:
        if owned:
            shutdown()


def barrier(group=None) -> None:
    """Wait for every rank (under the group's timeout)."""
    if world_size(group) > 1:
        _guard("barrier", lambda: dist.barrier(group=group))


def _guard(what: str, fn: Callable[[], Any]) -> Any:
    """Run a collective; a backend failure (dead peer, timeout) becomes one clear DistributedError."""
    try:
        return fn()
    except DistributedError:
        raise
    except (RuntimeError, ConnectionError, OSError) as err:        # DistBackendError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DistributedError(
            f"{what} failed on rank {rank()} of {world_size()}: a peer process died or did not answer within the "
            f"group's timeout ({first}); the job is ended on every rank") from err


# ---------------------------------------------------------------------------- collectives
def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """Σ over the ranks of ``t`` (a new tensor, the same on every rank; ``t`` itself for one process).

    Complex tensors are reduced through their real view (NCCL has no complex type)."""
    if world_size(group) == 1:
        return t
    if t.requires_grad:
        raise ValueError("all_reduce_sum does not propagate gradients: sharded operators give closed-form "
                         "gradients (loss.value_and_grad, phasetorch.reconstruct), not autograd ones")
    out = t.detach().clone(memory_format=torch.contiguous_format)
    view = torch.view_as_real(out) if out.is_complex() else out
    if view.dtype == torch.bool:
        ints = view.to(torch.int64)
        _guard("all_reduce", lambda: dist.all_reduce(ints, group=group))
        return ints > 0
    _guard("all_reduce", lambda: dist.all_reduce(view, group=group))
    return out


def broadcast_tensor(t: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank (a new tensor; ``t`` itself for one process). Every rank
    passes a tensor of the same shape and dtype."""
    if world_size(group) == 1:
        return t
    out = t.detach().clone(memory_format=torch.contiguous_format)
    view = torch.view_as_real(out) if out.is_complex() else out
    _guard("broadcast", lambda: dist.broadcast(view, src=src, group=group))
    return out


def all_gather_cat(t: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    """The ranks' tensors concatenated along ``dim`` in rank order (sizes along ``dim`` may differ;
    the other dimensions must agree). Used for order statistics of the measurements (medians,
    quantiles, top fractions): m numbers are small next to the m × n of A."""
    n = world_size(group)
    if n == 1:
        return t
    dim = dim % t.dim()
    sizes = all_gather_object(int(t.shape[dim]), group)
    top = max(sizes)
    pad = list(t.shape)
    pad[dim] = top - t.shape[dim]
    x = torch.cat([t.detach(), t.new_zeros(pad)], dim) if pad[dim] else t.detach().contiguous()
    x = x.contiguous()
    view = torch.view_as_real(x) if x.is_complex() else x
    parts = [torch.empty_like(view) for _ in range(n)]
    _guard("all_gather", lambda: dist.all_gather(parts, view, group=group))
    if x.is_complex():
        parts = [torch.view_as_complex(p) for p in parts]
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim)


def all_gather_object(obj: Any, group=None) -> List[Any]:
    """Every rank's (picklable) ``obj``, in rank order."""
    n = world_size(group)
    if n == 1:
        return [obj]
    out: List[Any] = [None] * n
    _guard("all_gather_object", lambda: dist.all_gather_object(out, obj, group=group))
    return out


def broadcast_object(obj: Any, src: int = 0, group=None) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size(group) == 1:
        return obj
    box = [obj]
    _guard("broadcast_object", lambda: dist.broadcast_object_list(box, src=src, group=group))
    return box[0]


def _fingerprint(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same(value: Any, what: str, group=None) -> None:
    """Raise the same ValueError on every rank unless ``value`` (JSON-able: a config, sizes, seeds)
    is equal on all ranks. The message names the ranks that differ from rank 0 and both values."""
    if world_size(group) == 1:
        return
    values = all_gather_object(value, group)
    prints = [_fingerprint(v) for v in values]
    bad = [r for r, p in enumerate(prints) if p != prints[0]]
    if bad:
        r = bad[0]
        raise ValueError(f"mismatched {what} across ranks: rank {r} has {values[r]!r} but rank 0 has {values[0]!r} "
                         f"(ranks {bad} differ from rank 0); launch every rank with the same settings")


# ---------------------------------------------------------------------------- splitting work
def shard_range(total: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rank ``rank``'s contiguous share [start, stop) of ``total`` items, balanced to within one item
    (the first ``total % world_size`` ranks get one more); empty shares when total < world_size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 ≤ rank < world_size, got rank {rank} of {world_size}")
    base, extra = divmod(int(total), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_seed(seed: int, rank: int) -> int:
    """A deterministic per-rank seed derived from ``seed`` (the same on every run; distinct per rank),
    for work that must differ between ranks (independent replicates). Sharded operators use the
    *global* seed on every rank instead, so their rows are those of the single-process operator."""
    return (int(seed) * 1_000_003 + 7_777_777 * int(rank) + 12_345) % (2 ** 63 - 1)


# ---------------------------------------------------------------------------- local launches (tests, scripts)
def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SpawnResult:
    """What :func:`spawn` gives back: ``exitcodes`` (None for a process killed at the deadline),
    ``results`` (each rank's return value, or None), ``errors`` (each rank's exception text, or None),
    ``seconds`` (wall time) and ``timed_out``."""

    def __init__(self, exitcodes, results, errors, seconds, timed_out):
        self.exitcodes, self.results, self.errors, self.seconds, self.timed_out = \
            exitcodes, results, errors, seconds, timed_out

    def raise_first(self) -> None:
        """Raise a RuntimeError with the first rank's error (or timeout) if any rank failed."""
        if self.timed_out:
            raise RuntimeError(f"the spawned ranks did not finish in time (exit codes {self.exitcodes})")
        for r, e in enumerate(self.errors):
            if e is not None or self.exitcodes[r] != 0:
                raise RuntimeError(f"rank {r} failed (exit code {self.exitcodes[r]}):\n{e}")


def _spawned(fn, rank_, size, port, backend, timeout, threads, args, out_dir) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    path = Path(out_dir) / f"rank{rank_}.pt"
    try:
        init(backend, timeout=timeout, init_method=f"tcp://127.0.0.1:{port}", rank=rank_, world_size=size)
        try:
            value = fn(rank_, size, *args)
        finally:
            if is_active():
                with contextlib.suppress(Exception):
                    shutdown()
        torch.save({"result": value, "error": None}, path)
    except BaseException as err:                  # reported to the parent, then a non-zero exit
        torch.save({"result": None, "error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}, path)
        raise SystemExit(1)


def spawn(fn: Callable, nprocs: int, args: Sequence[Any] = (), *, timeout: float = 120.0,
          group_timeout: float = 30.0, backend: str = "gloo", threads: Optional[int] = 1) -> SpawnResult:
    """Run ``fn(rank, world_size, *args)`` in ``nprocs`` fresh local processes joined in a gloo (or
    NCCL) group on a free port, and collect every rank's return value (picklable with ``torch.save``).

    ``fn`` must be importable (a module-level function). ``timeout`` bounds the whole run: processes
    still alive then are killed and ``timed_out`` is set. ``group_timeout`` is the group's collective
    timeout (:func:`init`). A rank that fails does not stop the others: each ends on its own (a dead
    peer makes their next collective raise :class:`DistributedError`), which is what a failure test
    checks. ``threads``: torch threads per process (1 by default).
    """
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phasetorch-spawn-") as out_dir:
        procs = [ctx.Process(target=_spawned, args=(fn, r, nprocs, port, backend, group_timeout, threads,
                                                   tuple(args), out_dir), daemon=False) for r in range(nprocs)]
        for p in procs:
            p.start()
        deadline = start + float(timeout)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        timed_out = any(p.is_alive() for p in procs)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        seconds = time.monotonic() - start
        results, errors = [], []
        for r in range(nprocs):
            path = Path(out_dir) / f"rank{r}.pt"
            if path.exists():
                rec = torch.load(path, weights_only=False)
                results.append(rec["result"])
                errors.append(rec["error"])
            else:
                results.append(None)
                errors.append(None)
        codes = [None if (timed_out and p.exitcode is None) else p.exitcode for p in procs]
        return SpawnResult(codes, results, errors, seconds, timed_out)
