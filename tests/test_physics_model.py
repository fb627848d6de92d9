"""Composed measurement models (phasetorch.physics.model): y = noise(link(Bx)), resolve_model, links'
intensity equivalents, the operator registry and the import structure of the physics layer."""

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from phasetorch.physics import (CodedDiffraction, GaussianEnsemble, GaussianMeasurement, LinkMeasurement,
                                  MatrixMeasurement, MeasurementModel, MeasurementOperator, OversampledFourier,
                                  StructuredRandom, load_operator, resolve_model, save_operator)
from phasetorch.physics import links
from phasetorch.physics.noise import GaussianNoise, PoissonNoise
from phasetorch.physics.registry import REGISTRY, register_operator

F64 = torch.float64
C128 = torch.complex128
PHYSICS = Path(__file__).resolve().parents[1] / "phasetorch" / "physics"


def crand(shape, seed, dtype=C128):
    g = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn(*shape, 2, generator=g, dtype=F64)).to(dtype)


# ---------------------------------------------------------------------------- composition
def test_model_is_noise_of_link_of_operator():
    op = CodedDiffraction((6, 5), 3, seed=1, dtype=F64)
    x = crand((2, 6, 5), 0)
    plain = MeasurementModel(op)
    assert plain.link is links.intensity and plain.noise is None
    assert torch.equal(plain(x), op(x)) and torch.equal(plain.clean(x), op(x))
    amp = MeasurementModel(op, "amplitude", GaussianNoise(0.1, seed=3))
    z = op.linear(x)
    assert torch.equal(amp.clean(x), z.abs())
    assert torch.equal(amp(x), GaussianNoise(0.1, seed=3)(z.abs()))
    assert amp.event_dims == 3 and amp(x).shape == (2, 3, 6, 5)
    # the linear interface is the operator's
    for name in ("signal_shape", "measurement_shape", "is_complex", "n", "m", "delta", "entry_energy",
                 "row_energy", "device", "real_dtype", "signal_dtype", "batch_indexed"):
        assert getattr(amp, name) == getattr(op, name, False), name
    assert torch.equal(amp.linear(x), z) and torch.equal(amp.adjoint(z), op.adjoint(z))
    zz, g = amp.linear_adjoint(x, lambda u, part: 2 * u)
    assert torch.equal(zz, z) and torch.allclose(g, op.adjoint(2 * z), atol=1e-12)
    assert amp.fuses(4) == op.fuses(4)
    with pytest.raises(ValueError, match="shape"):
        amp.check_signal(x[..., :-1])
    with pytest.raises(ValueError, match="measurement"):
        amp.check_measurements(z[..., :-1])


def test_model_validation():
    op = GaussianMeasurement(5, 20, seed=0, dtype=F64)
    with pytest.raises(ValueError, match="MeasurementOperator"):
        MeasurementModel(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="unknown link"):
        MeasurementModel(op, "cubic")
    with pytest.raises(ValueError, match="nn.Module"):
        MeasurementModel(op, noise=lambda y: y)
    with pytest.raises(ValueError, match="not both"):
        MeasurementModel(op, links.noisy_intensity(0.1), GaussianNoise(0.1))
    with pytest.raises(ValueError, match="noisy link only"):
        MeasurementModel(op, "intensity", seed=3)
    cdp = CodedDiffraction((4, 4), 2, seed=0)
    with pytest.raises(ValueError, match="event_dims=1"):
        MeasurementModel(cdp, noise=PoissonNoise(100, event_dims=1))
    assert MeasurementModel(cdp, noise=PoissonNoise(100, event_dims=3)).noise.event_dims == 3


def test_cdp_poisson_photon_budget_is_per_sample():
    """Photons P per sample: Σ s·y = P for each of a batch of images of different brightness."""
    op = CodedDiffraction((32, 32), n_masks=4, seed=0, dtype=F64)
    P = 1e4
    model = MeasurementModel(op, noise=PoissonNoise(photons=P, seed=1))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 32, 32, generator=g, dtype=F64) * torch.tensor([1e-3, 1.0, 1e3], dtype=F64).reshape(3, 1, 1)
    y = model.clean(x)
    noisy = model(x)
    assert noisy.shape == y.shape == (3, 4, 32, 32)
    dims = (1, 2, 3)
    scale = P / y.sum(dims, keepdim=True)                     # the per-sample photons per unit intensity
    torch.testing.assert_close((scale * y).sum(dims), torch.full((3,), P, dtype=F64), rtol=1e-12, atol=0)
    counts = noisy * scale
    assert torch.allclose(counts, counts.round(), atol=1e-6)  # ỹ = N / s with integer counts N
    assert ((counts.sum(dims) - P).abs() < 5 * math.sqrt(P)).all()
    # the counts the model's noise draws are those of PoissonNoise with the operator's event dims
    n, s = PoissonNoise(P, seed=1).counts(y, event_dims=3)
    assert s.shape == (3, 1, 1, 1) and torch.allclose(n / s, noisy, rtol=1e-12)
    # used alone on a batch of patterns, the noise refuses to guess the sample dimensions
    with pytest.raises(ValueError, match="event_dims=len\\(op.measurement_shape\\)"):
        PoissonNoise(P, seed=1)(y)


def test_poisson_per_measurement_budget():
    op = CodedDiffraction((8, 8), n_masks=2, seed=0, dtype=F64)
    x = crand((2, 8, 8), 5)
    noise = PoissonNoise(photons=50, seed=0, per_measurement=True)
    model = MeasurementModel(op, noise=noise)
    y = model.clean(x)
    assert noise.budget(y, event_dims=3) == 50 * op.m
    n, s = noise.counts(y, event_dims=3)
    torch.testing.assert_close((s * y).sum((1, 2, 3)), torch.full((2,), 50.0 * op.m, dtype=F64), rtol=1e-12, atol=0)
    assert ((n.sum((1, 2, 3)) - 50 * op.m).abs() < 5 * math.sqrt(50 * op.m)).all()
    assert model(x).shape == y.shape


def test_custom_noise_module_is_called_on_the_measurements():
    class Clip(nn.Module):
        def forward(self, y):
            return y.clamp(max=1.0)

    op = GaussianMeasurement(4, 12, seed=0, dtype=F64)
    x = crand((3, 4), 1)
    model = MeasurementModel(op, noise=Clip())
    assert torch.equal(model(x), op(x).clamp(max=1.0))
    with pytest.raises(ValueError, match="no config"):
        model.config()


def test_with_noise_and_with_link_share_the_operator():
    op = GaussianMeasurement(4, 12, seed=0, dtype=F64)
    base = MeasurementModel(op, "amplitude")
    noisy = base.with_noise(GaussianNoise(0.2, seed=1))
    assert noisy.operator is op and noisy.link is links.amplitude and isinstance(noisy.noise, GaussianNoise)
    relu = noisy.with_link("relu")
    assert relu.operator is op and relu.noise is noisy.noise and relu.link is links.relu


# ---------------------------------------------------------------------------- links
def test_links_modulus_and_intensity_equivalents():
    assert links.intensity.modulus and links.amplitude.modulus and not links.relu.modulus
    assert links.noisy_intensity(0.2).modulus
    y = torch.tensor([-2.0, 0.0, 3.0], dtype=F64)
    assert links.intensity.intensity_of(y) is y
    assert torch.equal(links.amplitude.intensity_of(y), torch.tensor([-4.0, 0.0, 9.0], dtype=F64))
    assert torch.equal(links.noisy_intensity(0.2).intensity_of(y), y)
    z = crand((7,), 3)
    assert torch.allclose(links.amplitude.intensity_of(links.amplitude(z)), links.intensity(z), rtol=1e-14)
    with pytest.raises(ValueError, match="not a function of \\|z\\|"):
        links.relu.intensity_of(y)
    with pytest.raises(ValueError, match="real"):
        links.amplitude.intensity_of(z)
    with pytest.raises(ValueError, match="intensity="):
        links.Link("bad", abs, modulus=True)
    # the lead's least-squares fit of a non-modulus link uses fn and derivative on real z
    zr = torch.linspace(-1.5, 1.5, 7, dtype=F64) + 0.01
    assert torch.equal(links.relu.fn(zr), zr.clamp(min=0))
    assert torch.equal(links.relu.derivative(zr), (zr > 0).to(F64))


def test_noisy_intensity_is_gaussian_noise():
    """One noise implementation: the noisy link, a model with it and intensity + GaussianNoise agree bit for bit."""
    z = crand((4, 9), 2)
    a = links.noisy_intensity(0.3)(z, generator=torch.Generator().manual_seed(5))
    b = GaussianNoise(0.3, generator=torch.Generator().manual_seed(5))(links.intensity(z))
    assert torch.equal(a, b)
    op = GaussianMeasurement(6, 9, seed=1, dtype=F64)
    x = crand((4, 6), 3)
    noisy = links.noisy_intensity(0.3)
    m1 = MeasurementModel(op, noisy, seed=4)
    m2 = MeasurementModel(op, "intensity", GaussianNoise(0.3, seed=4))
    m3 = LinkMeasurement(op, noisy, seed=4)
    y1 = m1(x)
    assert torch.equal(y1, m2(x)) and torch.equal(y1, m3(x))
    assert isinstance(m1.noise, GaussianNoise) and m1.noise.sigma == 0.3 and m1.link.modulus
    eps = torch.randn(4, 9, dtype=F64)
    assert torch.equal(m3(x, eps=eps), op(x) + 0.3 * eps)


# ---------------------------------------------------------------------------- resolve_model
def test_resolve_model():
    op = StructuredRandom(8, n_layers=2, seed=0, dtype=F64)
    model = resolve_model(op)
    assert isinstance(model, MeasurementModel) and model.operator is op
    assert model.link is links.intensity and model.noise is None
    assert resolve_model(model) is model
    lm = LinkMeasurement(op, "amplitude")
    assert resolve_model(lm) is lm and isinstance(lm, MeasurementModel) and lm.op is op
    x = crand((2, 8), 4)
    torch.testing.assert_close(lm.link.intensity_of(lm(x)), op(x), rtol=1e-12, atol=1e-14)
    for bad in (torch.zeros(3), "gaussian", nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="MeasurementOperator .*MeasurementModel or a LinkMeasurement"):
            resolve_model(bad)


# ---------------------------------------------------------------------------- persistence and moves
@pytest.mark.parametrize("noise", [None, PoissonNoise(200.0, per_measurement=True), GaussianNoise(0.5, relative=True)])
def test_model_save_load_round_trip(tmp_path, noise):
    op = CodedDiffraction((5, 4), 2, seed=3, dtype=F64)
    model = MeasurementModel(op, "amplitude", noise)
    save_operator(model, tmp_path / "model.pt")
    loaded = load_operator(tmp_path / "model.pt")
    assert type(loaded) is MeasurementModel and loaded.link is links.amplitude
    assert loaded.config() == model.config()
    x = crand((2, 5, 4), 1)
    assert torch.equal(loaded.clean(x), model.clean(x))
    if noise is None:
        assert loaded.noise is None
    else:
        assert type(loaded.noise) is type(noise) and loaded.noise.config() == noise.config()
    noisy = MeasurementModel(op, links.noisy_intensity(0.25), seed=0)
    save_operator(noisy, tmp_path / "noisy.pt")
    back = load_operator(tmp_path / "noisy.pt")
    assert back.link.sigma == 0.25 and back.config()["noise"] is None and back.noise.sigma == 0.25


def test_link_measurement_reads_files_of_the_old_layout(tmp_path):
    op = CodedDiffraction(6, 2, seed=3, dtype=F64)
    with torch.no_grad():
        op.D.mul_(-1)                                       # stored state differs from what the seed gives
    lm = LinkMeasurement(op, "amplitude")
    old_keys = {"op." + k[len("operator."):]: v for k, v in lm.state_dict().items()}
    assert set(old_keys) == {"op.D"}
    torch.save({"format": "phasetorch-operator", "version": 1, "config": lm.config(), "state_dict": old_keys},
               tmp_path / "old.pt")
    loaded = load_operator(tmp_path / "old.pt")
    assert isinstance(loaded, LinkMeasurement) and torch.equal(loaded.operator.masks(), op.masks())


def test_model_dtype_and_device_moves():
    op = GaussianMeasurement(5, 15, seed=2)
    model = MeasurementModel(op, "amplitude", PoissonNoise(100.0, seed=0))
    assert model.to(torch.complex128) is model and model.real_dtype == F64 and op.real_dtype == F64
    assert model.signal_dtype == C128 and model(crand((5,), 0)).dtype == F64
    model.float()
    assert model.real_dtype == torch.float32
    for half in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="half precision"):
            model.to(half)
    with pytest.raises(ValueError, match="half precision"):
        op.half()
    assert op.real_dtype == torch.float32 and op.buffer("A").dtype == torch.complex64   # nothing converted


# ---------------------------------------------------------------------------- registry and layering
def _subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_physics_class_is_registered_by_its_decorator():
    classes = {c for c in _subclasses(MeasurementOperator) if c.__module__.startswith("phasetorch.physics")}
    classes |= {MeasurementModel, LinkMeasurement}
    assert {GaussianMeasurement, GaussianEnsemble, MatrixMeasurement, CodedDiffraction, StructuredRandom,
            OversampledFourier} <= classes
    for cls in classes:
        assert REGISTRY[cls.__name__] is cls, cls
        assert "@register_operator" in (PHYSICS / (cls.__module__.rsplit(".", 1)[1] + ".py")).read_text()
    assert "MeasurementOperator" not in REGISTRY                 # the abstract base is not loadable

    class GaussianMeasurement2(GaussianMeasurement):
        pass

    clash = type("GaussianMeasurement", (GaussianMeasurement2,), {})
    with pytest.raises(ValueError, match="already registered"):
        register_operator(clash)
    with pytest.raises(ValueError, match="from_config"):
        register_operator(int)


def _imports(path):
    """(module-level physics imports, function-level imports) of one physics source file."""
    tree = ast.parse(path.read_text())
    top, inner = set(), []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            top.add(node.module.split(".")[0] if node.module else "")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return top, inner


def test_physics_has_no_import_cycles_and_no_function_level_imports():
    graph = {}
    for path in PHYSICS.glob("*.py"):
        top, inner = _imports(path)
        assert not inner, f"{path.name} imports inside a function"
        graph[path.stem] = top - {""}
    state = {}

    def visit(node, stack):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(stack + [node])}"
        state[node] = "open"
        for dep in graph.get(node, ()):
            if dep != "__init__":
                visit(dep, stack + [node])
        state[node] = "done"

    for module in graph:
        if module != "__init__":
            visit(module, [])
    assert "io" not in graph["links"] and "registry" in graph["model"]


# ---------------------------------------------------------------------------- constructor validation
@pytest.mark.parametrize("make", [
    lambda: GaussianMeasurement("34", 10),
    lambda: GaussianMeasurement(4, 2.7),
    lambda: GaussianMeasurement(4, 10, block_rows=0),
    lambda: GaussianMeasurement(4, 10, block_rows=2.0),
    lambda: GaussianEnsemble(4, 10.0, 2),
    lambda: GaussianEnsemble(4, 10, 2, block_rows=0),
    lambda: CodedDiffraction(4, 2.0),
    lambda: StructuredRandom(4, n_layers=1.5),
])
def test_bad_sizes_are_refused(make):
    with pytest.raises(ValueError, match="int"):
        make()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [
    lambda d: GaussianMeasurement(4, 10, seed=0, dtype=d),
    lambda d: GaussianEnsemble(4, 10, 2, seed=0, dtype=d),
    lambda d: CodedDiffraction(4, 2, seed=0, dtype=d),
    lambda d: StructuredRandom(4, seed=0, dtype=d),
    lambda d: OversampledFourier(4, dtype=d),
    lambda d: MatrixMeasurement(torch.ones(6, 4, dtype=d)),
])
def test_half_precision_operators_are_refused(make, half):
    with pytest.raises(ValueError, match="half precision"):
        make(half)
