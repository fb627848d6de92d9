"""The redesigned engine: the torch.optim contract of every optimizer, presets as the one place for
defaults, the generic driver (per-sample status and divergence), and the package's import structure."""

import ast
import io
import math
import warnings
from pathlib import Path

import pytest
import torch

import phasetorch as pt
from phasetorch import optim
from phasetorch.losses import (AmplitudeLoss, IntensityLoss, ReweightedAmplitudeLoss, TruncatedAmplitudeLoss,
                               TruncatedPoissonLoss)
from phasetorch.optim import presets as P
from phasetorch.physics import GaussianMeasurement, OversampledFourier
from phasetorch.solve import Status

F64 = torch.float64
PKG = Path(pt.__file__).resolve().parent


def _problem(n=12, m=96, B=3, seed=0, complex_=True):
    op = GaussianMeasurement(n, m, complex=complex_, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed + 10)
    if complex_:
        xs = torch.view_as_complex(torch.randn(B, n, 2, generator=g, dtype=F64)) / math.sqrt(2)
        noise = torch.view_as_complex(torch.randn(B, n, 2, generator=g, dtype=F64)) / math.sqrt(2)
    else:
        xs = torch.randn(B, n, generator=g, dtype=F64)
        noise = torch.randn(B, n, generator=g, dtype=F64)
    return op, xs, op(xs), xs + 0.2 * noise


def _closure(opt, loss, x, y):
    def closure():
        opt.zero_grad()
        f = loss(x, y)
        f.sum().backward()
        return f
    return closure


# (optimizer factory, loss factory): every optimizer of pt.optim, with the loss it is meant for
GRADIENT_CASES = {
    "gd": (lambda x: optim.GradientDescent([x], lr=0.5, batch_dims=1), AmplitudeLoss),
    "wf": (lambda x: optim.WirtingerFlow([x], batch_dims=1), IntensityLoss),
    "wf_const": (lambda x: optim.WirtingerFlow([x], step=0.2, batch_dims=1), IntensityLoss),
    "twf": (lambda x: optim.TruncatedWirtingerFlow([x], batch_dims=1), TruncatedPoissonLoss),
    "rwf": (lambda x: optim.ReshapedWirtingerFlow([x], batch_dims=1), AmplitudeLoss),
    "af": (lambda x: optim.AmplitudeFlow([x], batch_dims=1), AmplitudeLoss),
    "af_armijo": (lambda x: optim.AmplitudeFlow([x], step="armijo", lr=5.0, batch_dims=1), AmplitudeLoss),
    "af_bb": (lambda x: optim.AmplitudeFlow([x], step="bb", batch_dims=1), AmplitudeLoss),
    "taf": (lambda x: optim.TruncatedAmplitudeFlow([x], batch_dims=1), TruncatedAmplitudeLoss),
    "raf": (lambda x: optim.ReweightedAmplitudeFlow([x], batch_dims=1),
            lambda op: ReweightedAmplitudeLoss(op, 5.0 if op.is_complex else 10.0)),   # the preset's β for μ
    "lbfgs": (lambda x: optim.LBFGS([x], batch_dims=1), AmplitudeLoss),
}


def _run(opt, loss, x, y, steps):
    for _ in range(steps):
        opt.step(_closure(opt, loss, x, y))


# ---------------------------------------------------------------------------- torch.optim contract
@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_state_dict_round_trip_continues_bit_identically(case, tmp_path):
    make, loss_of = GRADIENT_CASES[case]
    op, xs, y, x0 = _problem()
    loss = loss_of(op)
    x = x0.clone().requires_grad_(True)
    opt = make(x)
    _run(opt, loss, x, y, 6)
    assert all(isinstance(v, torch.Tensor) for v in opt.state[x].values()), list(opt.state[x])
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    x_mid = x.detach().clone()
    _run(opt, loss, x, y, 6)                                    # uninterrupted
    x2 = x_mid.clone().requires_grad_(True)
    opt2 = make(x2)
    opt2.load_state_dict(torch.load(path, weights_only=True))
    _run(opt2, loss, x2, y, 6)                                  # resumed
    assert torch.equal(x2.detach(), x.detach())
    # the two optimizers share nothing: stepping one leaves the other's state alone
    before = {k: v.clone() for k, v in opt2.state[x2].items()}
    _run(opt, loss, x, y, 1)
    assert all(torch.equal(before[k], v) for k, v in opt2.state[x2].items())


@pytest.mark.parametrize("cls", [optim.GerchbergSaxton, optim.HybridInputOutput])
def test_projection_optimizers_state_dict_and_closure(cls, tmp_path):
    op = OversampledFourier((6, 6), 2, dtype=F64)
    g = torch.Generator().manual_seed(0)
    sup = torch.zeros(6, 6, dtype=torch.bool)
    sup[:4, :5] = True
    xs = torch.rand(2, 6, 6, generator=g, dtype=F64) * sup
    y = op(xs)
    x = torch.rand(2, 6, 6, generator=g, dtype=F64)
    opt = cls([x], op=op, y=y, support=sup, nonnegative=True)
    assert opt.param_groups[0]["lr"] == (P.get_preset("hio").defaults(False)["beta"] if cls is optim.HybridInputOutput
                                         else 1.0)
    for _ in range(4):
        opt.step()
    if cls is optim.HybridInputOutput:
        assert {"hio_x", "hio_u", "hio_v"} <= set(opt.state[x])      # the HIO field is optimizer state
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    x_mid = x.clone()
    for _ in range(4):
        opt.step()
    x2 = x_mid.clone()
    opt2 = cls([x2], op=op, y=y, support=sup, nonnegative=True)
    opt2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    for _ in range(4):
        opt2.step()
    assert torch.equal(x2, x)
    # a closure is evaluated (not ignored) and its value returned, as torch optimizers do
    calls = []

    def closure():
        calls.append(1)
        return AmplitudeLoss(op)(x2, y)
    out = opt2.step(closure)
    assert calls == [1] and out.shape == (2,)


def test_lr_is_the_step_and_schedulers_act_on_it():
    op, xs, y, x0 = _problem()
    loss = AmplitudeLoss(op)
    x = x0.clone().requires_grad_(True)
    opt = optim.AmplitudeFlow([x], batch_dims=1)
    assert opt.param_groups[0]["lr"] == P.get_preset("af").step_mu(True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for k in range(6):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(1.0 * 0.5 ** (k // 2))
        before = x.detach().clone()
        opt.zero_grad()
        loss(x, y).sum().backward()
        grad = x.grad.detach().clone()
        opt.step()
        torch.testing.assert_close(x.detach(), before - lr * grad, rtol=0, atol=1e-14)   # α = lr (scale 1)
        sched.step()
    # LambdaLR on WF's constant step: α_t = lr_t/‖x₀‖²
    x = x0.clone().requires_grad_(True)
    opt = optim.WirtingerFlow([x], step=0.1, batch_dims=1)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))
    n0 = x0.abs().square().sum(-1, keepdim=True)
    iloss = IntensityLoss(op)
    for e in range(3):
        before = x.detach().clone()
        opt.zero_grad()
        iloss(x, y).sum().backward()
        grad = x.grad.detach().clone()
        opt.step()
        torch.testing.assert_close(x.detach(), before - (0.1 / (1 + e)) / n0 * grad, rtol=1e-13, atol=1e-14)
        lam.step()


def test_several_tensors_or_groups_are_refused_clearly():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    for cls in (optim.GradientDescent, optim.WirtingerFlow, optim.AmplitudeFlow, optim.LBFGS):
        with pytest.raises(ValueError, match="exactly one tensor"):
            cls([a, b])
        with pytest.raises(ValueError, match="exactly one tensor"):
            cls([{"params": [a]}, {"params": [b]}])
        opt = cls([a])
        with pytest.raises(ValueError, match="second group is refused"):
            opt.add_param_group({"params": [b]})


def _tv(x):
    """Anisotropic total variation of images (B, H, W), smoothed: Σ √(d² + 1e-6)."""
    dx = x[:, 1:, :] - x[:, :-1, :]
    dy = x[:, :, 1:] - x[:, :, :-1]
    return (dx.square() + 1e-6).sqrt().sum((-2, -1)) + (dy.square() + 1e-6).sqrt().sum((-2, -1))


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_user_loss_with_total_variation_is_minimised(case):
    """Any differentiable loss works in a plain loop: a data term plus total variation of an image."""
    make, loss_of = GRADIENT_CASES[case]
    op = GaussianMeasurement((6, 6), 6 * 36, complex=False, seed=3, dtype=F64)
    g = torch.Generator().manual_seed(4)
    xs = torch.zeros(2, 6, 6, dtype=F64)
    xs[:, 1:5, 2:5] = 1.0 + 0.1 * torch.rand(2, 4, 3, generator=g, dtype=F64)
    y = op(xs)
    data = loss_of(op)
    x = (xs + 0.3 * torch.randn(xs.shape, generator=g, dtype=F64)).requires_grad_(True)

    def objective():
        return data(x, y) + 1e-3 * _tv(x) * (y.mean(-1) if isinstance(data, IntensityLoss) else 1.0)
    opt = make(x)
    f0 = objective().detach()

    def closure():
        opt.zero_grad()
        f = objective()
        f.sum().backward()
        return f
    for _ in range(60):
        opt.step(closure)
    f1 = objective().detach()
    assert torch.isfinite(f1).all() and (f1 < 0.5 * f0).all(), (f0, f1)


# ---------------------------------------------------------------------------- presets: the one place for defaults
@pytest.mark.parametrize("complex_", [False, True])
def test_optimizer_defaults_are_the_presets(complex_):
    x = torch.zeros(2, 4, dtype=torch.complex128 if complex_ else F64, requires_grad=True)
    pairs = [(optim.WirtingerFlow, "wf"), (optim.TruncatedWirtingerFlow, "twf"), (optim.ReshapedWirtingerFlow, "rwf"),
             (optim.AmplitudeFlow, "af"), (optim.TruncatedAmplitudeFlow, "taf"), (optim.ReweightedAmplitudeFlow, "raf")]
    for cls, name in pairs:
        assert cls([x], batch_dims=1).param_groups[0]["lr"] == P.get_preset(name).step_mu(complex_), name
    wf = optim.WirtingerFlow([x], batch_dims=1).param_groups[0]
    assert wf["tau0"] == P.get_preset("wf").defaults(complex_)["tau0"] and wf["rule"] == "wf_ramp"
    assert optim.WirtingerFlow([x]).param_groups[0]["scale"] == "x0"           # intensity loss: μ/‖x₀‖²
    assert optim.AmplitudeFlow([x]).param_groups[0]["scale"] == "none"
    lb = optim.LBFGS([x], batch_dims=1).param_groups[0]
    assert lb["lr"] == P.get_preset("lbfgs").step_mu(complex_) and lb["memory"] == P.get_preset("lbfgs").options["memory"]
    assert P.get_preset("taf").step_mu(False) == 0.6 and P.get_preset("taf").step_mu(True) == 1.0


def test_adding_an_algorithm_is_one_preset():
    """A new named algorithm (here: amplitude flow with Barzilai–Borwein steps) is one Preset entry."""
    def bb_gradient(setting, opts, mu, step, schedule):
        return optim.GradientAlgorithm(optim.make_step_rule(step, schedule, default=optim.BarzilaiBorwein(mu, "bb1"),
                                                            mu0=mu))
    P.PRESETS["afbb"] = P.Preset("afbb", "Amplitude flow, BB steps", "Barzilai & Borwein 1988", bb_gradient,
                                 "amplitude", "orthogonality", mu=1.0)
    try:
        op, xs, y, _ = _problem(n=16, m=128)
        rec = pt.reconstruct(op, y, "afbb", max_iter=200, progress=False, seed=0)
        assert (pt.metrics.relative_error(rec.x, xs, signal_dims=1) < 1e-8).all() and rec.converged.all()
        assert rec.log.config["step"] == {"rule": "bb", "mu0": 1.0, "variant": "bb1"}
    finally:
        del P.PRESETS["afbb"]


def test_driver_has_no_string_dispatch_on_algorithm_families():
    """solve.py never compares anything with an algorithm's name: capabilities are Algorithm attributes."""
    tree = ast.parse((PKG / "solve.py").read_text(encoding="utf-8"))
    names = set(P.PRESETS) | {"gradient", "lbfgs", "gs", "hio", "projection"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            assert not set(consts) & names, ast.unparse(node)
    assert "family" not in (PKG / "solve.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- per-sample status
def _mixed_start():
    """Sample 1 starts at 1% of the true norm: WF's step μ/‖x₀‖² is then 10⁴× too large and it diverges."""
    op, xs, y, x0 = _problem(n=16, m=160, B=3)
    x0 = x0.clone()
    x0[1] = 0.01 * x0[1]
    return op, xs, y, x0


def test_a_diverging_sample_is_frozen_and_the_others_finish():
    op, xs, y, x0 = _mixed_start()
    with pytest.warns(RuntimeWarning, match=r"sample 1 .*1 of 3 samples diverged.*reduce step"):
        rec = pt.reconstruct(op, y, "wf", init=x0, step=0.2, max_iter=3000, progress=False, safeguard=False)
    assert rec.status.tolist() == [Status.CONVERGED, Status.DIVERGED, Status.CONVERGED]
    assert rec.status_names() == ["converged", "diverged", "converged"]
    assert rec.log.config["status"] == ["converged", "diverged", "converged"]
    assert rec.diverged.tolist() == [False, True, False] and torch.isfinite(rec.x).all()
    for b in (0, 2):                                       # the others are exactly their single runs
        single = pt.reconstruct(op, y[b:b + 1], "wf", init=x0[b:b + 1], step=0.2, max_iter=3000, progress=False, safeguard=False)
        torch.testing.assert_close(rec.x[b], single.x[0], rtol=0, atol=1e-12)
        assert int(single.iterations[0]) == int(rec.iterations[b])
    with pytest.raises(pt.DivergenceError, match=r"sample 1 .*reduce step \(currently 0.2\)") as err:
        pt.reconstruct(op, y, "wf", init=x0, step=0.2, max_iter=3000, progress=False, safeguard=False, on_divergence="raise")
    assert err.value.sample == 1 and err.value.log is not None
    with pytest.raises(pt.DivergenceError, match="reduce step"):      # every sample diverged: an error
        pt.reconstruct(op, y[1:2], "wf", init=x0[1:2], step=0.2, max_iter=3000, progress=False, safeguard=False)
    with pytest.raises(ValueError, match="on_divergence"):
        pt.reconstruct(op, y, "wf", on_divergence="ignore", progress=False)


class FrozenRule(optim.StepRule):
    """A rule whose steps are always 0: the iterate cannot move (a line search that always fails)."""

    name = "frozen"

    def __call__(self, state, t, scale, x, f, grad, direction, ctx, mu=None):
        return self.apply(torch.zeros_like(scale), x, direction, ctx)


def test_stalled_and_max_iter_are_not_converged():
    op, xs, y, x0 = _problem(n=16, m=128, B=2)
    rec = pt.reconstruct(op, y, "raf", init=x0, step=FrozenRule(), max_iter=50, progress=False)
    assert (rec.status == Status.STALLED).all() and not rec.converged.any() and rec.stalled.all()
    assert int(rec.iterations[0]) == 1                 # stagnation detected at the first repeat of ρ
    short = pt.reconstruct(op, y, "raf", init=x0, max_iter=3, progress=False)
    assert (short.status == Status.MAX_ITER).all() and not short.converged.any()
    assert short.log.config["status"] == ["max_iter", "max_iter"]
    full = pt.reconstruct(op, y, "raf", init=x0, max_iter=1000, progress=False)
    assert (full.status == Status.CONVERGED).all()


def test_zero_start_empty_batch_and_overflow_are_clear_errors():
    op, xs, y, x0 = _problem(n=16, m=128, B=2)
    start = x0.clone()
    start[1] = 0
    for alg in ("raf", "twf", "rwf", "taf", "af", "lbfgs", "wf"):
        with pytest.raises(ValueError, match=r"initial point is zero for sample\(s\) \[1\].*init='spectral'"):
            pt.reconstruct(op, y, alg, init=start, progress=False)
    with pytest.raises(ValueError, match="empty batch"):
        pt.reconstruct(op, y[:0], progress=False)
    op32 = GaussianMeasurement(16, 128, seed=0)
    huge = torch.full((128,), 3e38)
    with pytest.raises(ValueError, match="overflow float32.*rescale y"):
        pt.reconstruct(op32, huge, "wf", init=x0[0].to(torch.complex64), progress=False)


def test_no_warning_when_nothing_diverges():
    op, xs, y, x0 = _problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = pt.reconstruct(op, y, "raf", max_iter=1000, progress=False, seed=0)
    assert (rec.status == Status.CONVERGED).all()


# ---------------------------------------------------------------------------- the package's import structure
def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, path.name == "__init__.py"


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


#: heavy imports kept lazy: matplotlib, and torchvision (1.2–1.7 s on top of torch; only image I/O needs it)
ALLOWED_LOCAL_IMPORTS = ("matplotlib", "torchvision")


def test_no_cycles_no_private_imports_no_function_level_imports():
    graph, problems = {}, []
    names = {m for m, _, _ in _modules()}
    for module, path, is_pkg in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        target = inner.module if isinstance(inner, ast.ImportFrom) and inner.level == 0 else (
                            _resolve(module, is_pkg, inner) if isinstance(inner, ast.ImportFrom)
                            else inner.names[0].name)
                        if not target.startswith(ALLOWED_LOCAL_IMPORTS):
                            problems.append(f"{module}: function-level import of {target} (line {inner.lineno})")
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_pkg, node)
                if not target.startswith("phasetorch"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in names else target)
                    if alias.name.startswith("_") and alias.name != "__version__":
                        problems.append(f"{module}: imports private {alias.name} from {target}")
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("phasetorch"))
        graph[module] = {d for d in deps if d in names and d != module}

    # a package's __init__ may import its submodules; cycles through __init__ re-exports are not real cycles
    def edges(m):
        return {d for d in graph.get(m, ()) if not (m.startswith(d + ".") and d in names)}
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in edges(m):
            if state.get(d) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2
    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not problems, "\n".join(problems)


def test_layers_import_downwards_only():
    """tensors → physics → init/losses/optim → solve → theory → app: no module imports a higher layer."""
    order = {"tensors": 0, "native": 0, "allocator": 0, "errors": 0, "distributed": 0, "philox": 0, "replay": 0, "physics": 1, "init": 2, "losses": 2, "metrics": 2, "logs": 2,
             "optim": 3, "solve": 4, "io": 4, "phantoms": 4, "theory": 5, "app": 6}
    bad = []
    for module, path, is_pkg in _modules():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in order:
            continue
        layer = order[parts[1]]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_pkg, node).split(".")
                if len(target) > 1 and target[0] == "phasetorch" and target[1] in order:
                    if order[target[1]] > layer:
                        bad.append(f"{module} imports {'.'.join(target)}")
    assert not bad, "\n".join(bad)


def test_preset_capability_flags_match_their_algorithms():
    op = GaussianMeasurement(8, 64, seed=0, dtype=F64)
    setting = P.Setting(op, op(torch.zeros(1, 8, dtype=torch.complex128)).sqrt(), optim.Constraint(), True)
    for name, preset in P.PRESETS.items():
        opts = preset.defaults(True)
        alg = preset.build(setting, opts, preset.step_mu(True, opts), None, None)
        assert isinstance(alg, optim.Algorithm)
        assert preset.projection == (not alg.uses_gradient) == (not alg.takes_l2), name
        assert alg.mu == preset.step_mu(True, opts), name          # the preset's μ is the algorithm's default


# ---------------------------------------------------------------------------- composed physics through the solver
def test_models_with_other_links_and_noise_go_through_reconstruct():
    op, xs, y, _ = _problem(n=16, m=160)
    amp = pt.MeasurementModel(op, link="amplitude")
    a = amp(xs)                                              # observations |Ax|
    assert torch.allclose(a.square(), y)
    rec_a = pt.reconstruct(amp, a, "raf", max_iter=400, progress=False, seed=0)
    rec_i = pt.reconstruct(op, a.square(), "raf", max_iter=400, progress=False, seed=0)
    torch.testing.assert_close(rec_a.x, rec_i.x, rtol=0, atol=1e-12)   # the same problem, solved the same way
    assert rec_a.converged.all() and rec_a.log.config["model"]["link"]["name"] == "amplitude"
    x0a = pt.spectral_init(amp, a, seed=0)
    torch.testing.assert_close(x0a, pt.spectral_init(op, a.square(), seed=0), rtol=0, atol=0)
    # a noise model: photon-limited data through the whole pipeline, every sample finishes finite
    noisy = pt.MeasurementModel(op, noise=pt.PoissonNoise(1e5, seed=1))
    yn = noisy(xs)
    rec = pt.reconstruct(noisy, yn, "raf", max_iter=400, progress=False, seed=0)
    assert torch.isfinite(rec.x).all() and (pt.metrics.relative_error(rec.x, xs, signal_dims=1) < 0.1).all()
    relu = pt.MeasurementModel(GaussianMeasurement(8, 64, complex=False, seed=0, dtype=F64), link="relu")
    with pytest.raises(ValueError, match="not a function of \\|Ax\\|"):
        pt.reconstruct(relu, relu(torch.randn(8, dtype=F64)), progress=False)
