"""Sharded measurement models over torch.distributed (gloo, CPU): 2 and 3 processes spawned from
pytest give, on every rank, the single-process result of spectral_init and reconstruct (1e-10
relative, float64); a dead rank or disagreeing settings end the job on every rank with one clear error.

Each spawn costs a few seconds (fresh interpreters), so one spawn runs every comparison case of a
world size and the parametrised tests read its results."""

import inspect
import os
from pathlib import Path

import pytest
import torch

import phasetorch as pt
from phasetorch import distributed as D
from phasetorch.app import cli, sweep
from phasetorch.optim import presets, projections
from phasetorch.physics import (CodedDiffraction, GaussianMeasurement, MatrixMeasurement, ShardedCodedDiffraction,
                                ShardedGaussian, ShardedMatrix)

F64 = torch.float64
RTOL = 1e-10
SPAWN_TIMEOUT = 150.0
GROUP_TIMEOUT = 20.0

#: problems: name -> (whole operator, sharded operator) factories (a group must be up for the sharded one)
PROBLEMS = {
    "gauss_c": (lambda: GaussianMeasurement(16, 112, seed=1, block_rows=24, dtype=F64),
                lambda: ShardedGaussian(16, 112, seed=1, block_rows=24, dtype=F64)),
    "gauss_r": (lambda: GaussianMeasurement(16, 112, complex=False, seed=2, block_rows=24, dtype=F64),
                lambda: ShardedGaussian(16, 112, complex=False, seed=2, block_rows=24, dtype=F64)),
    "gauss_streamed": (lambda: GaussianMeasurement(16, 112, seed=3, block_rows=17, dtype=F64),
                       lambda: ShardedGaussian(16, 112, seed=3, block_rows=17, streamed=True, dtype=F64)),
    "gauss_noisy": (lambda: GaussianMeasurement(16, 112, seed=6, block_rows=24, dtype=F64),
                    lambda: ShardedGaussian(16, 112, seed=6, block_rows=24, dtype=F64)),
    "cdp": (lambda: CodedDiffraction((6, 6), 6, seed=4, dtype=F64),
            lambda: ShardedCodedDiffraction((6, 6), 6, seed=4, dtype=F64)),
    "cdp_binary": (lambda: CodedDiffraction((6, 6), 6, mask="binary", seed=5, dtype=F64),
                   lambda: ShardedCodedDiffraction((6, 6), 6, mask="binary", seed=5, dtype=F64)),
}

#: (problem, what, keyword arguments): what = "spectral" (spectral_init) or an algorithm (reconstruct)
CASES = [("gauss_c", "spectral", {"preprocessing": p}) for p in
         ("identity", "trimmed", "clipped", "orthogonality", "weighted", "mm", "optimal")]
CASES += [("gauss_r", "spectral", {"preprocessing": "orthogonality"}), ("cdp", "spectral", {}),
          ("cdp", "spectral", {"preprocessing": "weighted", "solver": "power"})]
CASES += [(p, a, {}) for p in ("gauss_c", "gauss_r") for a in ("wf", "twf", "rwf", "taf", "raf", "af", "lbfgs")]
# auto on noiseless data: the first stage fits to tol, and the (all-reduced) residual says so on every rank
CASES += [(p, "auto", {"max_iter": 200}) for p in ("gauss_c", "gauss_r")]
CASES += [("gauss_streamed", a, {}) for a in ("raf", "lbfgs")]
CASES += [("cdp", a, {}) for a in ("wf", "twf", "raf", "lbfgs")]
CASES += [("cdp_binary", "gs", {}), ("cdp_binary", "hio", {"init": "spectral"})]   # tight frame: exact A⁺
CASES += [("matrix", "spectral", {}), ("matrix", "raf", {})]
ITERS = 30

# Two code paths of optim/ still sum over measurements locally; until they use the operator's hook,
# a sharded run of them would diverge between ranks, so their cases run only once they do:
# auto's second stage (the variance law fitted to the residuals, presets.variance_refinement) and the
# conjugate-gradient pseudo-inverse of gs/hio on operators that are not tight frames (LeastSquares.solve).
REFINE_READY = "op=" in inspect.getsource(presets.variance_refinement)
CG_READY = "measurement_sum" in inspect.getsource(projections.LeastSquares.solve)
if REFINE_READY:
    # noisy data: at a noisy minimum f(x) is flat to rounding, so line-search and stagnation decisions
    # there follow the last bits of the sums, whose order differs between runs (x then agrees only to
    # ~√ε); compared before convergence (8 iterations per stage, tol = 0) both runs agree to rounding
    CASES += [("cdp", "auto", {}), ("gauss_noisy", "auto", {"tol": 0, "max_iter": 8})]
if CG_READY:
    CASES += [("gauss_c", "gs", {})]


def _truth(problem: str, op):
    g = torch.Generator().manual_seed(11)
    shape = (2, *op.signal_shape)
    if op.is_complex:
        return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=F64))
    return torch.randn(*shape, generator=g, dtype=F64)


def _user_matrix():
    g = torch.Generator().manual_seed(21)
    return torch.view_as_complex(torch.randn(100, 14, 2, generator=g, dtype=F64)) * (1 + torch.rand(100, 1, generator=g,
                                                                                                 dtype=F64))


def _whole(problem):
    return MatrixMeasurement(_user_matrix()) if problem == "matrix" else PROBLEMS[problem][0]()


def _sharded(problem):
    if problem == "matrix":
        start, stop = D.shard_range(100, D.rank(), D.world_size())
        return ShardedMatrix(_user_matrix()[start:stop], 100)
    return PROBLEMS[problem][1]()


def _run(op, y, what, kw):
    if what == "spectral":
        return pt.spectral_init(op, y, seed=7, **kw)
    rec = pt.reconstruct(op, y, algorithm=what, progress=False, seed=7, **{"max_iter": ITERS, **kw})
    return torch.cat([rec.x.reshape(-1), rec.x0.reshape(-1)])


def _compare_worker(rank, size, cases, ys):
    out = []
    ops = {}
    for i, (problem, what, kw) in enumerate(cases):
        if problem not in ops:
            ops[problem] = _sharded(problem)
        op = ops[problem]
        out.append(_run(op, op.local_measurements(ys[i]), what, kw))
    return out


def _data(problem, op):
    y = op(_truth(problem, op))
    if problem == "gauss_noisy":                                     # additive noise: auto's second stage runs
        y = y + 0.05 * y.mean() * torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    return y


@pytest.fixture(scope="module")
def references():
    ys, refs = [], []
    for problem, what, kw in CASES:
        op = _whole(problem)
        y = _data(problem, op)
        ys.append(y)
        refs.append(_run(op, y, what, kw))
    return ys, refs


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def sharded_runs(request, references):
    ys, _ = references
    res = D.spawn(_compare_worker, request.param, (CASES, ys), timeout=SPAWN_TIMEOUT, group_timeout=GROUP_TIMEOUT)
    res.raise_first()
    return request.param, res.results


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{p}-{w}-{'-'.join(map(str, k.values()))}"
                                                         for p, w, k in CASES])
def test_sharded_run_equals_the_single_process_run_on_every_rank(case, references, sharded_runs):
    size, results = sharded_runs
    ref = references[1][case]
    for r in range(size):
        got = results[r][case]
        assert got.shape == ref.shape and got.dtype == ref.dtype
        err = float((got - ref).abs().max() / ref.abs().max())
        assert err <= RTOL, (CASES[case], r, err)
        assert torch.equal(got, results[0][case]), f"rank {r} differs from rank 0"   # replicated bit for bit


# ---------------------------------------------------------------------------- the operators themselves
def _operator_worker(rank, size):
    full_g = GaussianMeasurement(10, 53, seed=9, block_rows=8, dtype=F64)
    parts = {"gauss": (ShardedGaussian(10, 53, seed=9, block_rows=8, dtype=F64).matrix(), full_g.matrix()),
             "streamed": (ShardedGaussian(10, 53, seed=9, block_rows=8, streamed=True, dtype=F64).matrix(),
                          full_g.matrix())}
    cdp = ShardedCodedDiffraction((4, 5), 5, seed=2, dtype=F64)
    whole = CodedDiffraction((4, 5), 5, seed=2, dtype=F64)
    x = torch.randn(3, 4, 5, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    z = torch.randn(3, 5, 4, 5, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    zl = cdp.local_measurements(z)
    return {"rows": cdp.rows, "parts": parts, "adjoint": (cdp.adjoint(zl), whole.adjoint(z)),
            "linear": (cdp.linear(x), cdp.local_measurements(whole.linear(x))),
            "gram": (cdp.gram_diagonal(), whole.gram_diagonal()), "m": (cdp.m, whole.m), "delta": cdp.delta,
            "gather": (cdp.gather_measurements(zl), z), "seed": D.rank_seed(5, rank)}


def test_shards_are_the_rows_of_the_whole_operator_and_the_adjoint_is_all_reduced():
    res = D.spawn(_operator_worker, 3, timeout=SPAWN_TIMEOUT, group_timeout=GROUP_TIMEOUT)
    res.raise_first()
    rows = [r["rows"] for r in res.results]
    assert rows == [(0, 2), (2, 4), (4, 5)]                         # 5 masks over 3 ranks, in rank order
    for name in ("gauss", "streamed"):                               # rows of A, exactly those of the seed schedule
        got = torch.cat([r["parts"][name][0] for r in res.results], 0)
        assert torch.equal(got, res.results[0]["parts"][name][1]), name
    for r in res.results:
        for key in ("adjoint", "gram"):
            a, b = r[key]
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), key
        assert torch.equal(*r["linear"]) and torch.equal(*r["gather"])
        assert r["m"] == (100, 100) and r["delta"] == 5.0
    seeds = [r["seed"] for r in res.results]
    assert len(set(seeds)) == 3 and seeds == [D.rank_seed(5, k) for k in range(3)]   # deterministic, distinct


def test_without_a_group_a_sharded_operator_is_the_whole_operator():
    whole = GaussianMeasurement(12, 50, seed=3, block_rows=7, dtype=F64)
    op = ShardedGaussian(12, 50, seed=3, block_rows=7, dtype=F64)
    assert op.rows == (0, 50) and op.m == 50 and torch.equal(op.matrix(), whole.matrix())
    with pytest.raises(ValueError, match="rows must satisfy"):
        ShardedGaussian(12, 50, seed=3, rows=(10, 60))
    with pytest.raises(ValueError, match="do not cover"):
        ShardedGaussian(12, 50, seed=3, rows=(0, 20))                # one process must hold every row


def test_sharded_matrix_reads_only_its_rows_from_a_file(tmp_path):
    A = _user_matrix()
    torch.save(A, tmp_path / "A.pt")
    op = ShardedMatrix.from_file(tmp_path / "A.pt")
    assert torch.equal(op.matrix(), A) and op.entry_energy == pytest.approx(MatrixMeasurement(A).entry_energy, rel=1e-14)
    with pytest.raises(ValueError, match="no such file"):
        ShardedMatrix.from_file(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------- failures
def _killed_worker(rank, size):
    op = ShardedGaussian(16, 112, seed=1, dtype=F64)
    y = op(torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))

    def die(t, x, info):
        if rank == size - 1 and t == 3:
            os._exit(17)                                             # a rank that dies mid-run
        return False

    pt.reconstruct(op, y, algorithm="raf", max_iter=200, tol=0, progress=False, callback=die)   # seed=None: replicated
    return "finished"


def test_a_rank_that_dies_ends_the_job_on_every_rank_with_one_clear_error():
    res = D.spawn(_killed_worker, 3, timeout=SPAWN_TIMEOUT, group_timeout=GROUP_TIMEOUT)
    assert not res.timed_out, "the surviving ranks hung"
    assert res.exitcodes[2] == 17
    for r in (0, 1):
        assert res.exitcodes[r] != 0 and res.results[r] is None
        first = res.errors[r].splitlines()[0]
        assert first.startswith("DistributedError: ") and "a peer process died" in first, first
        assert f"rank {r} of 3" in first, first


def _mismatch_worker(rank, size):
    messages = {}
    for field, kw in (("seed", {"seed": 1 + rank}), ("m", {"m": 112 + rank})):
        try:
            ShardedGaussian(**{"n": 16, "m": 112, "seed": 1, "dtype": F64, **kw})
            messages[field] = "built"
        except ValueError as err:                                    # the group stays usable after the error
            messages[field] = str(err)
    return messages


def test_mismatched_configurations_fail_on_every_rank_with_the_same_error():
    res = D.spawn(_mismatch_worker, 2, timeout=SPAWN_TIMEOUT, group_timeout=GROUP_TIMEOUT)
    res.raise_first()
    for field in ("seed", "m"):
        msgs = [r[field] for r in res.results]
        assert msgs[0] == msgs[1] and msgs[0].startswith("mismatched ShardedGaussian configuration across ranks")
        assert f"'{field}'" in msgs[0] and "rank 1 has" in msgs[0]


# ---------------------------------------------------------------------------- the command line
def _cli_worker(rank, size, out):
    img = str(Path(pt.__file__).parent / "data" / "shepp_logan.png")
    codes = [cli.main(["--threads", "1", "reconstruct", img, "--model", "cdp", "--size", "12", "--masks", "3",
                       "--dtype", "float64", "--algorithm", "raf", "--iters", "10", "--noise", "poisson:100",
                       "--out", f"{out}/rec", "--distributed", "--quiet"]),
             cli.main(["sweep", "--deltas", "3,4,5", "--algorithms", "raf", "--trials", "2", "--dim", "8",
                       "--iters", "40", "--out", f"{out}/sweep", "--distributed", "--quiet"])]
    return codes


def test_reconstruct_and_sweep_commands_run_distributed_with_one_writer(tmp_path):
    (tmp_path / "one").mkdir()
    img = str(Path(pt.__file__).parent / "data" / "shepp_logan.png")
    assert cli.main(["--threads", "1", "reconstruct", img, "--model", "cdp", "--size", "12", "--masks", "3", "--dtype",
                     "float64", "--algorithm", "raf", "--iters", "10", "--noise", "poisson:100",
                     "--out", str(tmp_path / "one"), "--quiet"]) == 0
    # a sweep resumed by the distributed run: one cell is already there
    sweep.run_sweep(tmp_path / "many" / "sweep", [3.0], ["raf"], trials=2, dim=8, max_iter=40, progress=False)
    res = D.spawn(_cli_worker, 2, (str(tmp_path / "many"),), timeout=SPAWN_TIMEOUT, group_timeout=GROUP_TIMEOUT)
    res.raise_first()
    assert res.results == [[0, 0], [0, 0]]
    one = torch.load(tmp_path / "one" / "reconstruction.pt")["x"]
    many = torch.load(tmp_path / "many" / "rec" / "reconstruction.pt")["x"]
    assert float((one - many).abs().max() / one.abs().max()) <= RTOL          # noise drawn on all measurements
    got = sweep.SweepResults.load(tmp_path / "many" / "sweep").cells
    single = sweep.run_sweep(tmp_path / "single", [3.0, 4.0, 5.0], ["raf"], trials=2, dim=8, max_iter=40,
                             progress=False).cells
    assert set(got) == set(single) == {"raf@3", "raf@4", "raf@5"}
    for key in single:
        assert got[key]["rel_errors"] == single[key]["rel_errors"], key
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["rec", "sweep"]   # nothing else written


def test_helpers_without_a_group():
    assert D.world_size() == 1 and D.rank() == 0 and D.is_main() and not D.is_active()
    t = torch.ones(3, dtype=torch.complex128)
    assert D.all_reduce_sum(t) is t and D.all_gather_cat(t, 0) is t
    D.check_same({"a": 1}, "settings")
    assert [D.shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert D.shard_range(2, 2, 3) == (2, 2)
    with pytest.raises(ValueError, match="rank"):
        D.shard_range(10, 3, 3)
    with pytest.raises(ValueError, match="timeout"):
        D.init(timeout=0)
    with D.process_group(timeout=10) as dev:                         # a group of one process, then gone
        assert D.is_active() and D.world_size() == 1 and dev == torch.device("cpu")
    assert not D.is_active()
