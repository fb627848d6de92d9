"""Captured and replayed iteration blocks (issue 18, item 3: CUDA graphs of the k-iteration block).

On a CPU the blocks are replayed by :class:`phasetorch.replay.Tape`, which re-executes the recorded aten
operations on the same tensors with the same host values — what a CUDA graph does — so a block whose
correctness depends on a value frozen at capture replays wrongly here as it would on a GPU. Every preset,
taped, must give the plain loop's results bit for bit, with blocks actually replayed. The CUDA graph itself
is checked against the plain path where a GPU is present (the last test; ``scripts/device_check.sh``)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import phasetorch as pt
from phasetorch import replay
from phasetorch.optim.presets import PRESETS
from phasetorch.optim.steps import BarzilaiBorwein, Constant, Schedule, WFRamp
from phasetorch.physics import (CodedDiffraction, GaussianEnsemble, MatrixMeasurement, OversampledFourier,
                                StructuredRandom)
from phasetorch.physics.ptychography import Ptychography

ALL = ["wf", "twf", "rwf", "taf", "raf", "af", "lbfgs", "auto", "gs", "hio"]


@pytest.fixture(autouse=True)
def torch_ops_only(monkeypatch):
    """The tape sees torch operations only: the compiled CPU loop and the fused C kernel (ctypes) are off."""
    monkeypatch.setenv("PHASETORCH_COMPILED_LOOP", "0")
    monkeypatch.setenv("PHASETORCH_KERNELS", "0")


@pytest.fixture
def problem(noisy_gaussian):
    return noisy_gaussian


def plain_and_taped(monkeypatch, *args, **kwargs):
    out = []
    for mode in ("0", "tape"):
        monkeypatch.setenv("PHASETORCH_GRAPHS", mode)
        out.append(pt.reconstruct(*args, progress=False, **kwargs))
    return out


def test_every_preset_is_covered():
    assert set(ALL) == set(PRESETS)


@pytest.mark.parametrize("algorithm", ALL)
def test_a_taped_run_is_the_plain_run_bit_for_bit(problem, algorithm, monkeypatch, same_run):
    """Noisy data, samples stopping at different iterations, truth metrics, k = 4: the taped run replays
    blocks and gives the plain loop's iterate, statuses, iteration counts and log."""
    op, x, y, x0 = problem
    # L-BFGS converges in ~20 iterations while its key (the memory's depth) changes until t = 11: it runs on;
    # auto's stages are short at tol 1e-5: its own tolerance
    tol = {"lbfgs": 0, "auto": None}.get(algorithm, 1e-5)
    plain, taped = plain_and_taped(monkeypatch, op, y, algorithm, init=x0, max_iter=80 if tol == 0 else 300, tol=tol,
                                   sync_every=4, x_true=x, seed=0)
    same_run(plain, taped)
    counts = taped.log.config["captured_blocks"]
    assert counts["backend"] == "Tape" and counts["captured"] >= 1 and not counts["fallback"]
    assert counts["replayed"] >= 3, counts
    assert "captured_blocks" not in plain.log.config


def test_divergence_inside_replayed_blocks_is_frozen_and_reported_the_same(diverging_problem, monkeypatch, same_run):
    op, y, x0 = diverging_problem
    with pytest.warns(RuntimeWarning, match="diverged at iteration"):
        plain, taped = plain_and_taped(monkeypatch, op, y, "wf", init=x0, step=0.05, safeguard=False, max_iter=400,
                                       sync_every=4)
    assert taped.status_names()[1] == "diverged" and taped.log.config["captured_blocks"]["replayed"] > 0
    same_run(plain, taped)
    errors = []
    for mode in ("0", "tape"):      # on_divergence="raise", a divergence in the first replayed block (t = 9 … 12)
        monkeypatch.setenv("PHASETORCH_GRAPHS", mode)
        with pytest.raises(pt.errors.DivergenceError) as err:
            pt.reconstruct(op, y, "wf", init=x0, step=0.0055, safeguard=False, max_iter=400, progress=False,
                           sync_every=4, on_divergence="raise")
        errors.append(err.value)
    assert errors[0].iteration == errors[1].iteration > 8 and str(errors[0]) == str(errors[1])
    assert torch.equal(errors[0].x, errors[1].x)


@pytest.mark.parametrize("case", ["log_every", "bb_alternate", "schedule", "pieces", "real_support", "k1_bb",
                                  "k1_ramp"])
def test_record_patterns_step_keys_and_constraints_replay_correctly(problem, case, monkeypatch, same_run):
    """log_every = 3 with k = 4 (the record positions cycle over three keys); BB alternating
    with odd k (two alternating keys); a decaying schedule (a new key every block: nothing replays); a
    piecewise-constant schedule of six pieces of ten blocks (more keys than captures are kept); a
    real signal with a support constraint (a projection in every trial); k = 1 with BB (whose previous
    iterate is the block's static x: copied before x is overwritten) and with WF's ramp (plain blocks
    while it ramps, replays once it saturates, and plain blocks between replays)."""
    op, x, y, x0 = problem
    kw = dict(init=x0, max_iter=120, tol=0, seed=0)
    if case == "log_every":
        runs = plain_and_taped(monkeypatch, op, y, "raf", sync_every=4, log_every=3, **kw)
    elif case == "bb_alternate":
        runs = plain_and_taped(monkeypatch, op, y, "wf", step=BarzilaiBorwein(0.1, "alternate"), sync_every=3, **kw)
    elif case == "schedule":
        runs = plain_and_taped(monkeypatch, op, y, "wf", schedule=lambda t: 0.2 / (1 + t / 50), sync_every=4, **kw)
    elif case == "pieces":
        kw["max_iter"] = 240
        runs = plain_and_taped(monkeypatch, op, y, "wf", schedule=lambda t: 0.05 * (1 + (t - 1) // 40), sync_every=4,
                               **kw)
    elif case == "k1_bb":
        runs = plain_and_taped(monkeypatch, op, y, "wf", step="bb1", sync_every=1, **kw)
    elif case == "k1_ramp":
        runs = plain_and_taped(monkeypatch, op, y, "wf", sync_every=1, log_every=2, **kw)
    else:
        rop = pt.GaussianMeasurement(24, 192, complex=False, seed=3, dtype=torch.float64)
        xr = torch.randn(2, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        xr[:, 20:] = 0
        support = torch.ones(24, dtype=torch.bool)
        support[20:] = False
        runs = plain_and_taped(monkeypatch, rop, rop(xr), "taf", support=support, max_iter=120, tol=0, seed=0,
                               sync_every=4)
    plain, taped = runs
    same_run(plain, taped)
    counts = taped.log.config["captured_blocks"]
    if case == "schedule":          # three warm-ups, then plain blocks (no copies for keys that never repeat)
        assert counts["captured"] == 0 and counts["replayed"] == 0 and counts["eager"] == 3, counts
    else:
        assert counts["replayed"] > 0, counts
    if case == "log_every":
        assert counts["captured"] == 3
    if case == "pieces":            # six keys, four slots: stale captures make room
        assert counts["captured"] == 6 and counts["replayed"] >= 6 * 7, counts


@pytest.mark.parametrize("algorithm", ["raf", "lbfgs", "hio"])
def test_coded_diffraction_images_in_float32_with_batch_dimensions_replay_the_same(algorithm, monkeypatch,
                                                                                  same_run):
    """FFT operators, a (2, 2) batch of 12×12 complex images, float32: the taped run is the plain one."""
    op = pt.CodedDiffraction((12, 12), 4, seed=1, dtype=torch.float32)
    x = torch.randn(2, 2, 12, 12, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    y = pt.PoissonNoise(1e4, seed=3, event_dims=3)(op(x)) if algorithm == "raf" else op(x)
    plain, taped = plain_and_taped(monkeypatch, op, y, algorithm, max_iter=60, tol=0, sync_every=4, x_true=x,
                                   seed=0)
    assert taped.x.shape == (2, 2, 12, 12)
    same_run(plain, taped)
    assert taped.log.config["captured_blocks"]["replayed"] > 0


def test_a_step_that_hides_its_dependence_on_t_replays_wrongly(problem, monkeypatch):
    """The check has teeth: a schedule that claims to ignore t (step_key ()) is captured once and its
    frozen step replayed — the taped run then leaves the plain one, as a CUDA graph would."""
    op, x, y, x0 = problem

    class Hiding(Schedule):
        def step_key(self, t):
            return ()

    rule = Hiding(lambda t: 0.2 / (1 + t / 50))
    plain, taped = plain_and_taped(monkeypatch, op, y, "wf", step=rule, init=x0, max_iter=100, tol=0, sync_every=4,
                                   seed=0)
    assert taped.log.config["captured_blocks"]["replayed"] > 0
    assert not torch.equal(plain.x, taped.x)


@pytest.mark.parametrize("algorithm", ["gs", "hio"])
def test_projection_methods_log_the_gradient_of_their_last_iterate(problem, algorithm, monkeypatch, same_run):
    """GS and HIO carry no gradient: the final record (log_every = 3, 50 iterations, k = 4: a short last
    block) evaluates the gradient at the last iterate in both runs."""
    op, x, y, x0 = problem
    plain, taped = plain_and_taped(monkeypatch, op, y, algorithm, init=x0, max_iter=50, tol=0, sync_every=4,
                                   log_every=3, seed=0)
    same_run(plain, taped)
    assert int(taped.log["iteration"][-1]) == 50 and taped.log.config["captured_blocks"]["replayed"] > 5


class LazyState(Constant):
    """A user's rule that creates its state on its first call (a name the warm-up adds to the state)."""

    def step_key(self, t):
        return ()

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        state["calls"] = state.get("calls", torch.zeros_like(scale)) + 1
        return super().__call__(state, t, scale, x, f, grad, direction, ctx, mu)


class Promoting(Constant):
    """A user's rule whose state changes dtype (float32 → float64) after its first step."""

    def step_key(self, t):
        return ()

    def init_state(self, x):
        return {"acc": torch.zeros(x.shape[0], dtype=torch.float32)}

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        state["acc"] = state["acc"].double() + 1e-9
        return self.apply(self.alpha(t, scale, mu) * (1 + state["acc"]), x, direction, ctx)


@pytest.mark.parametrize("rule", [LazyState, Promoting])
def test_a_block_that_changes_what_it_carries_runs_on_plainly(problem, rule, monkeypatch, same_run):
    """A state name added, or a dtype changed, inside a block: that block's own results stand, capturing
    goes off, the rest runs plainly: the same run."""
    op, x, y, x0 = problem
    plain, taped = plain_and_taped(monkeypatch, op, y, "wf", step=rule(0.1), safeguard=False, init=x0, max_iter=40,
                                   tol=0, sync_every=4, seed=0)
    same_run(plain, taped)
    counts = taped.log.config["captured_blocks"]
    assert counts["fallback"] and counts["captured"] == 0 and counts["plain"] == 9, counts


def test_blocks_keep_four_captures_drop_stale_ones_and_remake_buffers_on_relayout(monkeypatch):
    """The policy alone, on a toy loop x ← 2x + key (the key a host value baked into each capture)."""
    monkeypatch.setenv("PHASETORCH_GRAPHS", "tape")
    blocks = replay.Blocks(replay.Tape, "cpu", "toy", relayout=True)
    c = {"x": torch.zeros(3, dtype=torch.float64)}
    ref = torch.zeros(3, dtype=torch.float64)

    def block(key):
        def body():
            c["x"] = c["x"] * 2 + key
        return body

    # keys 0..5, each for 10 blocks in a row: warm-up, capture, 8 replays; the fifth key finds the first
    # capture stale (> 8 blocks unused) and takes its slot
    for key in [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10 + [4] * 10 + [5] * 10:
        if not blocks.run(key, (c,), block(key)):
            block(key)()
        ref = ref * 2 + key
        ref = ref / 4                        # keep the numbers small; the same for the loop's x
        c["x"] = c["x"] / 4
    torch.testing.assert_close(c["x"], ref, rtol=0, atol=0)
    assert blocks.counts == {"backend": "Tape", "plain": 0, "eager": 6, "captured": 6, "replayed": 48}
    assert len(blocks.engines) == 4
    c["x"] = c["x"][:2]                      # rows leave: new static buffers, captures dropped
    for _ in range(3):
        assert blocks.run(0, (c,), block(0))
    assert blocks.counts["captured"] == 7 and blocks.counts["replayed"] == 49 and len(blocks.engines) == 1


def test_a_subclass_that_changes_how_t_is_used_is_never_replayed(problem, monkeypatch, same_run):
    """A rule subclassing Constant with its own α(t) but Constant's step_key: the key is t (no replay)."""
    op, x, y, x0 = problem

    class Decaying(Constant):
        def alpha(self, t, scale, mu=None):
            return super().alpha(t, scale, mu) / (1 + t / 50)

    rule = Decaying(0.2)
    assert rule.step_key(7) == 7 and Constant(0.2).step_key(7) == ()
    plain, taped = plain_and_taped(monkeypatch, op, y, "wf", step=rule, init=x0, max_iter=100, tol=0, sync_every=4,
                                   seed=0)
    same_run(plain, taped)
    assert taped.log.config["captured_blocks"]["replayed"] == 0


def test_step_keys_say_what_a_step_takes_from_t():
    ramp = WFRamp()
    assert ramp.step_key(10) != ramp.step_key(11)                   # ramping
    assert ramp.step_key(100) == ramp.step_key(1000) == 0.2         # saturated: replayable
    assert Schedule(lambda t: 1.0 / t).step_key(4) == 0.25
    assert Schedule(lambda t: float("nan")).step_key(4) == ("error", 4)   # raised by the step itself, at t
    assert BarzilaiBorwein(variant="alternate").step_key(3) != BarzilaiBorwein(variant="alternate").step_key(4)
    assert BarzilaiBorwein(variant="bb2").step_key(3) == BarzilaiBorwein(variant="bb2").step_key(4)
    assert pt.optim.Algorithm().step_key(5) == 5                   # the default: never replayed


def test_the_tape_refuses_host_reads_and_value_dependent_shapes():
    x = torch.randn(5)
    m = torch.randn(3, 3, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    for fn in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x.numpy(),
               lambda: x.nonzero(), lambda: x[x > 0], lambda: x.masked_select(x > 0), lambda: torch.equal(x, x),
               lambda: x.masked_fill(x > 0, x.sum()), lambda: x + torch.tensor(2.0),
               lambda: torch.bincount((x > 0).long()), lambda: torch.linalg.inv(m)):
        with pytest.raises(replay.CaptureError):
            replay.Tape().capture(fn)
    replay.Tape().capture(lambda: torch.linalg.inv_ex(m) and x.masked_fill(x > 0, 1.0))    # no check: capturable


def test_the_tape_replays_on_the_same_tensors_with_frozen_host_values():
    static = torch.zeros(3)
    step = [1.0]

    def block():
        static.copy_(static * 2 + step[0])          # reads and writes the static buffer

    tape = replay.Tape()
    tape.capture(block)                             # capturing runs the block once
    assert torch.equal(static, torch.ones(3))
    step[0] = 100.0                                 # a host value changed after capture: frozen in the tape
    tape.replay()
    tape.replay()
    assert torch.equal(static, torch.full((3,), 7.0))
    with pytest.raises(RuntimeError):
        replay.Tape().replay()


def test_backend_follows_the_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("PHASETORCH_GRAPHS", raising=False)
    assert replay.backend(cpu) is None                       # graphs are a CUDA feature
    monkeypatch.setenv("PHASETORCH_GRAPHS", "tape")
    assert replay.backend(cpu) is replay.Tape
    monkeypatch.setenv("PHASETORCH_GRAPHS", "0")
    assert replay.backend(torch.device("cuda")) is None


def test_the_tape_refuses_to_run_beside_the_fused_c_kernel(monkeypatch):
    monkeypatch.setenv("PHASETORCH_GRAPHS", "tape")
    monkeypatch.delenv("PHASETORCH_KERNELS")
    with pytest.raises(ValueError, match="PHASETORCH_KERNELS=0"):
        replay.backend(torch.device("cpu"))


def _ptychography():
    g = torch.Generator().manual_seed(6)
    probe = torch.randn(6, 6, dtype=torch.complex128, generator=g)
    pos = torch.tensor([[i, j] for i in (0.0, 3.0, 6.0) for j in (0.0, 3.0, 6.0)], dtype=torch.float64)
    return Ptychography(probe, pos, (12, 12), chunk=4)


OPERATORS = {
    "matrix": lambda: MatrixMeasurement(torch.randn(96, 16, dtype=torch.complex128,
                                                    generator=torch.Generator().manual_seed(3))),
    "structured": lambda: StructuredRandom((8, 8), n_layers=2, oversampling=2, seed=5, dtype=torch.float64),
    "fourier": lambda: OversampledFourier((8, 8), 2, dtype=torch.float64),
    "ensemble": lambda: GaussianEnsemble(12, 96, 2, complex=True, seeds=[1, 2], dtype=torch.float64),
    "cdp": lambda: CodedDiffraction((8, 8), 4, seed=4, dtype=torch.float64),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_kind_replays_the_plain_run(name, monkeypatch, same_run):
    """Matrix, structured, oversampled Fourier (with HIO and a support), ensemble (a matrix per sample) and
    coded diffraction: taped = plain, with blocks replayed. (Ptychography's CPU path loops over its positions
    on the host, which a tape cannot record; on CUDA it gathers on the device: see the next test.)"""
    op = OPERATORS[name]()
    B = 2
    x = torch.randn(B, *op.signal_shape, dtype=op.signal_dtype, generator=torch.Generator().manual_seed(8))
    kw = dict(max_iter=60, tol=0, sync_every=4, seed=0)
    if name == "fourier":
        support = torch.zeros(op.signal_shape, dtype=torch.bool)
        support[:4, :4] = True
        x = x * support
        plain, taped = plain_and_taped(monkeypatch, op, op(x), "hio", support=support, **kw)
    else:
        plain, taped = plain_and_taped(monkeypatch, op, op(x), "raf", x_true=x, **kw)
    same_run(plain, taped)
    assert taped.log.config["captured_blocks"]["replayed"] > 5


class DeviceReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_ptychography_iterations_read_the_device_once_per_block():
    """The entry energy comes from the probe: read once per probe value, not in every evaluation (which
    would make every CUDA capture fail)."""
    op = _ptychography()
    x = torch.randn(2, 12, 12, dtype=torch.complex128, generator=torch.Generator().manual_seed(8))
    y = op(x)
    x0 = pt.spectral_init(op, y, seed=0)
    reads = []
    for iters in (8, 40):
        with DeviceReads() as counter:
            pt.reconstruct(op, y, "raf", init=x0, max_iter=iters, tol=0, progress=False, sync_every=4)
        reads.append(counter.count)
    assert (reads[1] - reads[0]) / 32 <= 1 / 4, reads


def test_the_ptychographic_entry_energy_follows_the_probe():
    op = _ptychography()
    e = op.entry_energy
    assert op.entry_energy == e
    op.probe.mul_(2.0)                              # in place: the cached value is read again
    assert op.entry_energy == pytest.approx(4 * e, rel=1e-12)


def plain_and_stand_in(monkeypatch, problem, engine, algorithm, iters, warning):
    """The plain run, and the run with ``engine`` standing in for the CUDA graph (expecting ``warning``)."""
    op, x, y, x0 = problem
    kw = dict(init=x0, max_iter=iters, tol=0, progress=False, sync_every=4, seed=0)
    monkeypatch.setenv("PHASETORCH_GRAPHS", "0")
    plain = pt.reconstruct(op, y, algorithm, **kw)
    monkeypatch.setattr(replay, "backend", lambda device: engine)
    with pytest.warns(RuntimeWarning, match=warning):
        return plain, pt.reconstruct(op, y, algorithm, **kw)


def test_a_refused_capture_falls_back_to_the_plain_loop(problem, monkeypatch, same_run):
    """A graph API that refuses the capture (nothing ran): the run goes on plainly, says so, same results."""

    class Refusing:
        """Runs warm-ups; refuses captures as the CUDA graph API does, before anything runs."""

        def __init__(self, device, stream=None):
            self.stream = None

        def capture(self, fn):
            raise replay.CaptureError("refused for the test")

    plain, rec = plain_and_stand_in(monkeypatch, problem, Refusing, "taf", 60, "not captured as a graph")
    same_run(plain, rec)
    assert rec.log.config["captured_blocks"]["fallback"]


def test_a_warm_up_that_synchronises_turns_capturing_off(problem, monkeypatch, same_run):
    """CUDA's sync debug mode saw the warm-up block synchronise: that block's results stand, nothing is
    captured, the run goes on plainly and says so."""

    class Syncing(replay.CudaGraph):
        def __init__(self, device, stream=None):
            self.stream = None

        def run(self, fn):
            fn()
            return False

        def capture(self, fn):
            raise AssertionError("a block that synchronises must not be captured")

    plain, rec = plain_and_stand_in(monkeypatch, problem, Syncing, "raf", 40, "synchronises with the host")
    same_run(plain, rec)
    counts = rec.log.config["captured_blocks"]
    assert counts["fallback"] and counts["eager"] == 1 and counts["plain"] == 9 and counts["captured"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("algorithm", ALL)
def test_cuda_graphs_give_the_plain_results(algorithm, monkeypatch, same_run):
    dev = torch.device("cuda")
    op = pt.GaussianMeasurement(64, 512, complex=True, seed=0, dtype=torch.float64, device=dev)
    x = torch.randn(3, 64, dtype=torch.complex128, generator=torch.Generator().manual_seed(1)).to(dev)
    y = pt.GaussianNoise(0.05, seed=2, relative=True, event_dims=1)(op(x))
    x0 = pt.spectral_init(op, y, seed=0)
    tol = {"lbfgs": 0, "auto": None}.get(algorithm, 1e-5)       # as in the taped test above
    out = []
    for mode in ("0", "1"):
        monkeypatch.setenv("PHASETORCH_GRAPHS", mode)
        out.append(pt.reconstruct(op, y, algorithm, init=x0, max_iter=80 if tol == 0 else 300, tol=tol,
                                  progress=False, x_true=x, seed=0, sync_every=4))
    same_run(*out)
    counts = out[1].log.config["captured_blocks"]
    assert counts["backend"] == "CudaGraph" and not counts["fallback"], counts
    assert counts["captured"] >= 1 and counts["replayed"] >= 3, counts


@pytest.mark.parametrize("batch", [1, 3])
def test_the_power_method_replays_its_blocks_with_the_plain_results(batch, monkeypatch):
    """Shifted power iteration on a batch of Hermitian matrices with different gaps (samples finish in
    different blocks, rows leave the batch and the captures are made afresh): taped = plain, bit for bit."""
    from phasetorch.init.eigensolvers import power_top
    g = torch.Generator().manual_seed(5)
    N = 30
    Q = torch.linalg.qr(torch.randn(batch, N, N, dtype=torch.complex128, generator=g))[0]
    lam = torch.linspace(-0.5, 1.0, N, dtype=torch.float64).repeat(batch, 1)
    lam[:, -2] = torch.tensor([0.9, 0.8, 0.95][:batch], dtype=torch.float64)     # gaps 0.1 … 0.05
    D = (Q * lam.unsqueeze(1).to(Q.dtype)) @ Q.mH

    def matvec(v, ids):
        return torch.einsum("bij,bj->bi", D[ids], v)

    v0 = torch.randn(batch, N, dtype=torch.complex128, generator=g)
    out = []
    for mode in ("0", "tape"):
        monkeypatch.setenv("PHASETORCH_GRAPHS", mode)
        out.append(power_top(matvec, v0, tol=1e-10, max_iter=2000, sync_every=4))
    plain, taped = out
    for field in ("vector", "eigenvalue", "second", "residual", "iterations", "matvecs", "converged", "shift"):
        assert torch.equal(getattr(plain, field).nan_to_num(-1.0), getattr(taped, field).nan_to_num(-1.0)), field
    assert plain.captured is None and taped.captured["replayed"] > 10 and taped.converged.all()
    torch.testing.assert_close(taped.eigenvalue, lam.max(1).values, rtol=0, atol=1e-9)
    if batch > 1:
        assert len(set(taped.iterations.tolist())) == batch        # the samples left the batch apart


def test_a_power_spectral_start_is_the_same_taped(problem, monkeypatch):
    op, x, y, _ = problem
    out = []
    for mode in ("0", "tape"):
        monkeypatch.setenv("PHASETORCH_GRAPHS", mode)
        out.append(pt.spectral_init(op, y, seed=0, solver="power", sync_every=4, max_iter=300, return_info=True))
    (a, ia), (b, ib) = out
    assert torch.equal(a, b) and torch.equal(ia.iterations, ib.iterations) and ia.iterations.min() > 40
