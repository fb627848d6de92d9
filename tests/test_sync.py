"""Sync-free iterations (issue 18, item 3): every decision of the loop — stopping, status, divergence
freezing, line-search acceptance, the safeguard — is taken on the device; the host reads the device
once every ``sync_every`` = k iterations. Counted here on the CPU with a dispatch-mode counter (every
``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``) plus ``Tensor.tolist``
and ``Tensor.numpy``; and the result does not depend on k."""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import phasetorch as pt
from phasetorch.errors import DivergenceError
from phasetorch.optim.presets import PRESETS

GRADIENT_AND_LBFGS = ["wf", "twf", "rwf", "taf", "raf", "af", "lbfgs", "auto"]
ALL = GRADIENT_AND_LBFGS + ["gs", "hio"]


class HostReads(TorchDispatchMode):
    """Counts the operations that copy a device value to the host."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.counts["_local_scalar_dense"] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist, self._numpy = torch.Tensor.tolist, torch.Tensor.numpy
        counts, tolist, numpy = self.counts, self._tolist, self._numpy

        def counted_tolist(t):
            counts["tolist"] += 1
            return tolist(t)

        def counted_numpy(t, *a, **k):
            counts["numpy"] += 1
            return numpy(t, *a, **k)

        torch.Tensor.tolist, torch.Tensor.numpy = counted_tolist, counted_numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._tolist, self._numpy
        return super().__exit__(*exc)

    @property
    def total(self):
        return sum(self.counts.values())


@pytest.fixture(autouse=True)
def torch_loop(monkeypatch):
    """These tests are about the torch loop (the one an accelerator runs): the compiled CPU loop of the
    gradient presets (phasetorch.optim.compiled, tests/test_compiled.py) is switched off here."""
    monkeypatch.setenv("PHASETORCH_COMPILED_LOOP", "0")


@pytest.fixture
def problem(noisy_gaussian):
    return noisy_gaussian


def test_every_preset_is_in_the_list():
    assert set(ALL) == set(PRESETS)


@pytest.mark.parametrize("algorithm", ALL)
def test_host_reads_are_amortised_to_one_per_k_iterations(problem, algorithm):
    op, _, y, x0 = problem
    k = 10
    reads, ran = [], []
    for iters in (10, 50):
        with HostReads() as counter:
            rec = pt.reconstruct(op, y, algorithm, init=x0, max_iter=iters, tol=0, progress=False, sync_every=k)
        reads.append(counter.total)
        ran.append(int(rec.log["iteration"][-1]))
    per_iteration = (reads[1] - reads[0]) / (ran[1] - ran[0])
    assert per_iteration <= 1 / k + 1e-12, (algorithm, reads, ran)


class OpCount(TorchDispatchMode):
    """Counts every tensor operation (aten op) dispatched: on a small problem each is a kernel launch
    on a GPU and a few microseconds of dispatch on a CPU, so their number per iteration is the loop's
    fixed cost (scripts/iteration_cost.py and benchmark row 9 time it)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


#: tensor operations per iteration at most (torch 2.14; measured 78 / 85 / 128 / 231 / 219 / 259 for
#: wf-rwf-af / taf-raf / twf / lbfgs / gs / hio with the dense C kernel; headroom 5–10 %): a change that adds
#: per-iteration bookkeeping shows here. (L-BFGS went from 211 to 231 with its ring buffer written in place
#: and its Gram matrix kept up to date, which index the small matrices per sample instead of copying the
#: M × n buffers: half of the 20 are views; no slower per iteration at 32² or 64² CDP on the CPU, 2–3× faster
#: at 1024², scripts/benchmark.py row 12.)
OP_BUDGET = {"wf": 82, "rwf": 82, "af": 82, "taf": 92, "raf": 92, "twf": 137, "lbfgs": 248, "gs": 240,
             "hio": 284}


@pytest.mark.parametrize("algorithm", sorted(OP_BUDGET))
@pytest.mark.parametrize("k", [1, 16])
def test_tensor_operations_per_iteration_stay_within_budget(problem, algorithm, k):
    op, _, y, x0 = problem
    counts = []
    for iters in (16, 48):
        with OpCount() as counter:
            pt.reconstruct(op, y, algorithm, init=x0, max_iter=iters,
                           tol=0, progress=False, sync_every=k, seed=0)
        counts.append(counter.count)
    per_iteration = (counts[1] - counts[0]) / 32
    assert 10 < per_iteration <= OP_BUDGET[algorithm], (algorithm, k, per_iteration)


@pytest.mark.parametrize("algorithm", ALL)
def test_the_result_and_the_log_do_not_depend_on_k(problem, algorithm, same_run):
    """Samples stop at different iterations (noisy data, tol > 0); k = 1, 3 and 16 give the same
    iterate, status, iteration counts and log (every column but the wall time), bit for bit."""
    op, x, y, x0 = problem
    recs = [pt.reconstruct(op, y, algorithm, init=x0, max_iter=500, tol=1e-5, progress=False, sync_every=k,
                           x_true=x) for k in (1, 3, 16)]
    ref = recs[0]
    assert len(set(ref.iterations.tolist())) > 1 or algorithm in ("gs", "hio")   # samples stop apart
    for rec in recs[1:]:
        same_run(ref, rec)


def test_divergence_is_frozen_on_the_device_and_reported_at_the_next_read(diverging_problem):
    """A step far above the stability limit: with k = 8 the diverging sample is frozen at the same
    iterate and the same iteration as with k = 1, and the warning names the same iteration."""
    op, y, x0 = diverging_problem                     # the second sample diverges
    out = []
    for k in (1, 8):
        with pytest.warns(RuntimeWarning, match=r"diverged at iteration (\d+)") as w:
            rec = pt.reconstruct(op, y, "wf", init=x0, step=0.2, safeguard=False, max_iter=200, progress=False,
                                 sync_every=k)
        out.append((rec, str(w[0].message)))
    (r1, m1), (r8, m8) = out
    assert r1.status_names()[1] == "diverged" and torch.equal(r1.x, r8.x) and torch.equal(r1.iterations, r8.iterations)
    assert m1.split(";")[0] == m8.split(";")[0]
    with pytest.raises(DivergenceError):
        pt.reconstruct(op, y, "wf", init=x0, step=0.2, safeguard=False, max_iter=200, progress=False, sync_every=8,
                       on_divergence="raise")


def test_sync_every_is_validated_and_recorded(problem):
    op, _, y, x0 = problem
    with pytest.raises(ValueError, match="sync_every must be an int ≥ 1"):
        pt.reconstruct(op, y, "wf", init=x0, sync_every=0, progress=False)
    rec = pt.reconstruct(op, y, "raf", init=x0, max_iter=5, sync_every=4, progress=False)
    assert rec.log.config["sync_every"] == 4
    assert pt.reconstruct(op, y, "raf", init=x0, max_iter=5, progress=False).log.config["sync_every"] == 1


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_the_spectral_start_reads_the_device_every_k_steps_with_the_same_result(problem, solver, monkeypatch):
    """spectral_init(sync_every=k): the eigensolver's decisions (Ritz tests, breakdowns, restarts,
    convergence) are taken on the host in order every k steps, so the steps, the convergence flags and
    the vectors are those of k = 1 (up to the rounding of products over batches of another size: a
    finished sample leaves the batch at the next read). Device reads: power — every host read of the
    loop (its bookkeeping lives on the device), ≤ 1/k per step; Lanczos — the transfers of the steps'
    (α, β) to the host, where H and its bookkeeping live: one per k steps plus one per thick restart."""
    from phasetorch.init import eigensolvers
    op, _, y, _ = problem
    reads_of_steps = []
    original = eigensolvers._read_steps

    def counted(*args, **kwargs):
        reads_of_steps.append(len(args[2]))
        return original(*args, **kwargs)

    monkeypatch.setattr(eigensolvers, "_read_steps", counted)
    runs = {}
    for k in (1, 8):
        reads_of_steps.clear()
        with HostReads() as counter:
            x0, info = pt.spectral_init(op, y, "identity", solver=solver, seed=0, tol=1e-8, sync_every=k,
                                        return_info=True, krylov_dim=12, max_iter=3000)
        runs[k] = (x0, info, counter.total, len(reads_of_steps))
    (x1, i1, h1, t1), (x8, i8, h8, t8) = runs[1], runs[8]
    assert torch.equal(i1.iterations, i8.iterations) and torch.equal(i1.converged, i8.converged)
    assert bool(i1.converged.all())
    torch.testing.assert_close(x8, x1, rtol=0, atol=1e-10)
    torch.testing.assert_close(i8.eigenvalue, i1.eigenvalue, rtol=1e-12, atol=0)
    steps = int(i1.iterations.max())
    if solver == "lanczos":
        restarts = steps // (12 - 9)                     # basis 12, 9 vectors kept at a restart
        assert t1 == steps and t8 <= steps / 8 + restarts + 1, (t1, t8, steps)
    else:
        assert steps > 40 and h1 - h8 >= steps * (1 - 1 / 8) - 8, (h1, h8, steps)    # a read per step saved


def test_lanczos_results_do_not_depend_on_k_through_a_breakdown():
    """A rank-3 operator: the Krylov space is exhausted after 3 steps (β ≈ 0); with k = 8 the device runs past
    it and the host finishes the sample at the breakdown step, from the basis of that step."""
    from phasetorch.init.eigensolvers import lanczos_top
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
    D = X @ X.mT

    def matvec(v, idx):
        return torch.einsum("bij,bj->bi", D[idx], v)

    v0 = torch.randn(2, 40, generator=g, dtype=torch.float64)
    a, b = (lanczos_top(matvec, v0, tol=1e-12, krylov_dim=16, sync_every=k) for k in (1, 8))
    assert torch.equal(a.iterations, b.iterations) and bool(a.converged.all() and b.converged.all())
    assert int(a.iterations.max()) <= 5                  # v0 and the 3-dimensional range: 4 steps, then β ≈ 0
    torch.testing.assert_close(b.vector, a.vector, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.eigenvalue, torch.linalg.eigvalsh(D)[:, -1], rtol=1e-10, atol=0)
