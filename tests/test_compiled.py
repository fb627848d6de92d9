"""The compiled CPU loop (phasetorch.optim.compiled, ``pt_gd_block`` of csrc/fused_dense.c) against the
torch loop it replaces: the same iterates (bit for bit in float64), statuses, iteration counts, log and
divergence handling; the cases it does not take fall back to the torch loop."""

import pytest
import torch

import phasetorch as pt
from phasetorch.errors import DivergenceError
from phasetorch.optim import compiled
from phasetorch.physics import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="the C kernel does not build here")

COMPILED = ["wf", "rwf", "af", "taf", "raf"]          # bit for bit; TWF and L-BFGS: to rounding (below)


def problem(dtype=torch.complex128, n=24, B=3, noise=0.05, seed=0):
    op = pt.GaussianMeasurement(n, 8 * n, complex=dtype.is_complex, seed=seed,
                                dtype=torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32)
    x = torch.randn(B, n, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    y = op(x)
    if noise:
        y = pt.GaussianNoise(noise, seed=seed + 2, relative=True, event_dims=1)(y)
    return op, x, y


def both(monkeypatch, *args, **kwargs):
    """(compiled run, torch-loop run, number of compiled blocks the first one ran)."""
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    before = kernels.CALLS["block"]
    fast = pt.reconstruct(*args, progress=False, **kwargs)
    blocks = kernels.CALLS["block"] - before
    monkeypatch.setenv(compiled.ENV_SWITCH, "0")
    plain = pt.reconstruct(*args, progress=False, **kwargs)
    assert kernels.CALLS["block"] - before == blocks              # the switch keeps the torch loop
    return fast, plain, blocks


#: the log columns that are reductions are summed in another order in C: equal to rounding of their scale
ROUNDING = 1e-12
#: TWF's one-read evaluation sums its gradient in another order (the corrected rows last): float64 runs agree
#: to a few ulps per iteration, which the iterations carry (measured 1e-16 to 2e-16 over 400 iterations)
TWF_ROUNDING = 1e-10


@pytest.mark.parametrize("algorithm", COMPILED)
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_the_compiled_loop_is_the_torch_loop_bit_for_bit_in_float64(monkeypatch, algorithm, dtype, same_run):
    """Noisy data, three samples stopping apart, truth metrics and a log every third iteration."""
    op, x, y = problem(dtype)
    fast, plain, blocks = both(monkeypatch, op, y, algorithm, max_iter=400, x_true=x, log_every=3, seed=0)
    assert blocks >= 1
    same_run(fast, plain, rtol=ROUNDING)
    assert len(set(plain.iterations.tolist())) > 1                   # the samples stopped at different iterations
    assert fast.log["time"].diff(dim=0).min() >= 0                     # the records' own times, in order


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
@pytest.mark.parametrize("noise", [0.05, 0.0])
def test_twf_in_one_read_is_the_two_pass_torch_loop_to_rounding(monkeypatch, dtype, noise, same_run):
    """TWF's weights need K = mean|y − |Ax|²| over all measurements, known only after the forward product. The
    C loop forms them in ONE fused pass with each signal's K of its previous evaluation, then corrects the rows
    whose E₂ decision the exact K changes (weight, value term, and a sparse adjoint over those rows): the same
    weights, value and gradient as the torch loop's two passes, summed in another order. Noise-free data from the
    spectral start moves K fast, so rows are corrected (the correction is exercised, not only the guess)."""
    op, x, y = problem(dtype, noise=noise)
    before = dict(kernels.CALLS)
    fast, plain, blocks = both(monkeypatch, op, y, "twf", max_iter=400, x_true=x, log_every=3, seed=0)
    one_read = kernels.CALLS["twf_one_read"] - before["twf_one_read"]
    flipped = kernels.CALLS["twf_flipped_rows"] - before["twf_flipped_rows"]
    assert blocks >= 1 and one_read >= int(fast.iterations.max())      # every evaluation in one read of A
    assert flipped > 0
    same_run(fast, plain, rtol=TWF_ROUNDING, x_rtol=TWF_ROUNDING)
    assert len(set(plain.iterations.tolist())) > 1


def test_twf_in_the_torch_loop_reads_a_once_per_evaluation_too(monkeypatch, same_run):
    """A callback keeps the torch loop; its prepared evaluation (``loss.evaluator``) takes the same one-read
    pass, so no forward-only or adjoint-only product runs in the iterations, and the run is the compiled one."""
    op, x, y = problem(torch.complex128, noise=0.05)
    x0 = pt.spectral_init(op, y, seed=0)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    def run(k):
        before = dict(kernels.CALLS)
        rec = pt.reconstruct(op, y, "twf", init=x0, max_iter=k, tol=0, progress=False,
                             callback=lambda t, x, info: False)
        return rec, {name: kernels.CALLS[name] - before[name] for name in before}

    (_, short), (looped, long) = run(30), run(60)
    extra = {name: long[name] - short[name] for name in long}        # the 30 iterations more (not the start)
    assert long["block"] == 0 and extra["linear"] == 0 and extra["adjoint"] == 0
    assert extra["twf_one_read"] == 30 and extra["fused"] == 30
    fast = pt.reconstruct(op, y, "twf", init=x0, max_iter=60, tol=0, progress=False)
    same_run(fast, looped, rtol=TWF_ROUNDING, x_rtol=TWF_ROUNDING)


@pytest.mark.parametrize("algorithm", ["wf", "taf", "twf"])
def test_a_ridge_a_fixed_iteration_count_and_a_random_start(monkeypatch, algorithm, same_run):
    op, x, y = problem(torch.complex128, B=2)
    fast, plain, blocks = both(monkeypatch, op, y, algorithm, max_iter=300, tol=0, l2=1e-2, seed=0,
                               init=torch.randn(2, 24, dtype=torch.complex128, generator=torch.Generator().manual_seed(5)))
    if algorithm == "twf":
        same_run(fast, plain, rtol=TWF_ROUNDING, x_rtol=TWF_ROUNDING)
    else:
        same_run(fast, plain, rtol=ROUNDING)
    assert blocks <= 3               # 8 iterations, then up to 256 per call (µs per iteration here)
    assert fast.status_names() == ["max_iter", "max_iter"]


def test_a_step_schedule_and_a_constant_step(monkeypatch, same_run):
    op, x, y = problem(torch.complex128)
    for kw in ({"schedule": lambda t: 0.5 if t < 20 else 0.8}, {"step": 0.7, "safeguard": False}):
        fast, plain, blocks = both(monkeypatch, op, y, "rwf", max_iter=200, seed=0, **kw)
        assert blocks >= 1
        same_run(fast, plain, rtol=ROUNDING)


def test_a_failing_schedule_raises_at_the_same_iteration(monkeypatch):
    op, _, y = problem(torch.complex128)

    def schedule(t):
        if t == 7:
            raise RuntimeError("schedule broke at 7")
        return 0.5

    for on in ("1", "0"):
        monkeypatch.setenv(compiled.ENV_SWITCH, on)
        seen = []
        with pytest.raises(RuntimeError, match="broke at 7"):
            pt.reconstruct(op, y, "rwf", schedule=lambda t: seen.append(t) or schedule(t), tol=0, max_iter=50,
                           progress=False, seed=0)
        assert max(seen) == 7


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_float32_agrees_to_rounding(monkeypatch, dtype):
    """Single precision: the reductions' order differs, so the two loops agree to rounding (a safeguard
    decision at the float32 noise floor may differ; not within these 40 iterations)."""
    op, x, y = problem(dtype, noise=0.0)
    fast, plain, _ = both(monkeypatch, op, y, "taf", max_iter=40, tol=0, seed=0)
    err = (torch.linalg.vector_norm(fast.x - plain.x, dim=-1) / torch.linalg.vector_norm(plain.x, dim=-1)).max()
    assert err <= 1e-5
    assert torch.allclose(fast.log["loss"], plain.log["loss"], rtol=1e-4, atol=1e-7)


def test_divergence_is_frozen_and_raised_at_the_same_iteration(monkeypatch, diverging_problem, same_run):
    op, y, x0 = diverging_problem                     # the second sample diverges
    runs = []
    for on in ("1", "0"):
        monkeypatch.setenv(compiled.ENV_SWITCH, on)
        with pytest.warns(RuntimeWarning, match=r"diverged at iteration (\d+)") as w:
            rec = pt.reconstruct(op, y, "wf", init=x0, step=0.2, safeguard=False, max_iter=200, progress=False)
        runs.append((rec, str(w[0].message)))
        with pytest.raises(DivergenceError) as err:
            pt.reconstruct(op, y, "wf", init=x0, step=0.2, safeguard=False, max_iter=200, progress=False,
                           on_divergence="raise")
        runs[-1] += (err.value.iteration, len(err.value.log))
    (fast, m1, it1, n1), (plain, m2, it2, n2) = runs
    assert fast.status_names()[1] == "diverged"
    same_run(fast, plain, rtol=ROUNDING)
    assert m1 == m2 and it1 == it2 and n1 == n2


def test_a_callback_or_a_projection_keeps_the_torch_loop(monkeypatch):
    op, x, y = problem(torch.complex128)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    before = kernels.CALLS["block"]
    pt.reconstruct(op, y, "taf", max_iter=20, progress=False, callback=lambda t, x, info: False)
    pt.reconstruct(op, y.abs(), "taf", max_iter=20, progress=False, real_signal=True, nonnegative=True)
    assert kernels.CALLS["block"] == before
    pt.reconstruct(op, y, "taf", max_iter=20, progress=False)
    assert kernels.CALLS["block"] > before


@pytest.mark.parametrize("algorithm", ["raf", "twf"])
def test_a_batch_is_its_single_runs(monkeypatch, algorithm):
    op, x, y = problem(torch.complex128, B=4)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    batch = pt.reconstruct(op, y, algorithm, max_iter=300, progress=False, seed=0)
    for b in range(4):
        one = pt.reconstruct(op, y[b:b + 1], algorithm, max_iter=300, progress=False, seed=0,
                             init=batch.x0[b:b + 1])
        assert torch.allclose(one.x, batch.x[b:b + 1], rtol=0, atol=1e-12)
        assert one.iterations.item() == batch.iterations[b].item()


@pytest.mark.parametrize("algorithm,options", [("lbfgs", {}), ("lbfgs", {"loss": "intensity"}), ("auto", {})])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_compiled_lbfgs_agrees_with_the_torch_loop(monkeypatch, algorithm, options, dtype):
    """L-BFGS in C forms the direction by the two-loop recursion, the torch loop by the compact form (the
    same H; tests/test_optim.py): the runs agree to rounding — the iterates within 1e-6 relative, the
    same statuses, and a fixed number of iterations gives the same log within 1e-6 of each column's scale
    (‖∇f‖ at the solution is rounding, different on the two sides)."""
    op, x, y = problem(dtype)
    fast, plain, blocks = both(monkeypatch, op, y, algorithm, max_iter=300, seed=0, **options)
    assert blocks >= 1
    err = torch.linalg.vector_norm(fast.x - plain.x, dim=-1) / torch.linalg.vector_norm(plain.x, dim=-1)
    assert err.max() <= 1e-6 and torch.equal(fast.status, plain.status)
    fast, plain, _ = both(monkeypatch, op, y, algorithm, max_iter=40, tol=0, seed=0, x_true=x, **options)
    assert torch.equal(fast.log["iteration"], plain.log["iteration"])
    for col in ("loss", "grad_norm", "norm", "residual", "rel_error"):
        ref = plain.log[col]
        assert torch.allclose(fast.log[col], ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max())), col


def test_compiled_lbfgs_batch_is_its_single_runs(monkeypatch):
    op, x, y = problem(torch.complex128, B=3)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    batch = pt.reconstruct(op, y, "lbfgs", max_iter=200, progress=False, seed=0)
    for b in range(3):
        one = pt.reconstruct(op, y[b:b + 1], "lbfgs", max_iter=200, progress=False, seed=0, init=batch.x0[b:b + 1])
        assert torch.equal(one.x, batch.x[b:b + 1]) and one.iterations.item() == batch.iterations[b].item()


def test_image_signals_with_a_batch_shape_and_the_truth(monkeypatch, same_run):
    """A (2, 2) batch of 6×6 images: the C code works on the flat signals, the results keep their shapes."""
    op = pt.GaussianMeasurement((6, 6), 8 * 36, complex=True, seed=3, dtype=torch.float64)
    x = torch.randn(2, 2, 6, 6, dtype=torch.complex128, generator=torch.Generator().manual_seed(4))
    y = op(x)
    for algorithm in ("taf", "lbfgs"):
        fast, plain, blocks = both(monkeypatch, op, y, algorithm, max_iter=200, seed=0, x_true=x)
        assert blocks >= 1 and fast.x.shape == x.shape
        if algorithm == "taf":
            same_run(fast, plain, rtol=ROUNDING)
        assert torch.allclose(fast.log["rel_error"], plain.log["rel_error"], rtol=1e-6, atol=1e-9)
        assert float(fast.log["rel_error"][-1].max()) < 1e-5


def test_a_loss_with_its_own_residual_keeps_the_torch_loop(monkeypatch):
    """The C loop has the base class's residual and sums over all measurements: a loss subclass with its
    own residual (or an operator with its own measurement sums) runs the torch loop."""
    from phasetorch import losses as L
    from phasetorch.optim.presets import PRESETS
    from phasetorch.optim.projections import Constraint
    from phasetorch.solve import Driver

    class HalfResidual(L.TruncatedAmplitudeLoss):
        def residual(self, r, y):
            return 0.5 * super().residual(r, y)

    op, x, y = problem(torch.complex128)
    x0 = pt.spectral_init(op, y, seed=0)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    for loss_cls, compiled_blocks in ((HalfResidual, False), (L.TruncatedAmplitudeLoss, True)):
        loss = loss_cls(op)
        alg = PRESETS["taf"].build(None, {"safeguard": True}, 1.0, None, None)
        before = kernels.CALLS["block"]
        Driver(op, "taf", alg, loss, loss.prepare(y), Constraint(), x0, None, (3,), {}, 0.0).run(
            50, 1e-6, 1, None, False)
        assert (kernels.CALLS["block"] > before) is compiled_blocks


def test_the_records_times_are_on_the_perf_counter_clock(monkeypatch):
    import time
    op, x, y = problem(torch.complex128)
    monkeypatch.setenv(compiled.ENV_SWITCH, "1")
    t0 = time.perf_counter()
    rec = pt.reconstruct(op, y, "raf", max_iter=100, tol=0, progress=False, seed=0)
    wall = time.perf_counter() - t0
    times = rec.log["time"].reshape(-1)
    assert bool((times.diff() >= 0).all()) and 0 <= float(times[0]) and float(times[-1]) <= wall + 1e-3
