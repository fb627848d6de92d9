"""Clear errors for what the fuzzer (scripts/fuzz.py, results/fuzz.md) still found unclear or silently
wrong after the first round (issue 13 item 5 and the fuzz table): every message names the argument or
the fix, and no NaN/inf or overflowed value comes back."""

import math
import re

import pytest
import torch

import phasetorch as pt
from phasetorch import io as pio
from phasetorch import losses, metrics
from phasetorch.app.cli import main
from phasetorch.phantoms import shepp_logan
from phasetorch.physics import GaussianNoise, MatrixMeasurement, PoissonNoise, load_operator, save_operator
from phasetorch.tensors import MAX_SEED, check_flag


def gauss(complex_=True, n=8, m=48, seed=0):
    return pt.GaussianMeasurement(n, m, complex=complex_, seed=seed, dtype=torch.float64)


# ------------------------------------------------------------------------------------- seeds & flags
@pytest.mark.parametrize("make", [lambda s: pt.GaussianMeasurement(8, 32, seed=s),
                                  lambda s: PoissonNoise(100.0, seed=s),
                                  lambda s: pt.CodedDiffraction((4, 4), 2, seed=s)])
def test_seeds_beyond_64_bits_are_refused_by_name(make):
    make(MAX_SEED)                                   # the largest seed a torch.Generator takes works
    with pytest.raises(ValueError, match=r"seed must be an int ≥ 0 and ≤ 9223372036854775807"):
        make(2**64)


def test_reconstruct_refuses_an_overflowing_seed_by_name():
    op = gauss()
    y = op(torch.randn(2, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="seed"):
        pt.reconstruct(op, y, "wf", seed=2**64, progress=False, max_iter=2)


@pytest.mark.parametrize("bad", ["no", "0", None, [False], 1, 0.0])
def test_flags_must_be_booleans(bad):
    for make in (lambda: pt.GaussianMeasurement(8, 32, seed=0, complex=bad),
                 lambda: pt.GaussianMeasurement(8, 32, seed=0, streamed=bad),
                 lambda: pt.GaussianEnsemble(8, 32, 2, complex=bad),
                 lambda: GaussianNoise(0.1, relative=bad),
                 lambda: PoissonNoise(10.0, per_measurement=bad)):
        with pytest.raises(ValueError, match="must be True or False"):
            make()
    assert check_flag(torch.tensor(True), "f") is True


# ------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("cls,kw,name", [
    (losses.AmplitudeLoss, {"l2": 1j}, "l2"), (losses.IntensityLoss, {"l2": None}, "l2"),
    (losses.PoissonLoss, {"l2": [0.1]}, "l2"), (losses.IntensityLoss, {"l2": "0.1"}, "l2"),
    (losses.ReweightedAmplitudeLoss, {"beta": None}, "beta"), (losses.ReweightedAmplitudeLoss, {"beta": "x"}, "beta"),
    (losses.TruncatedAmplitudeLoss, {"gamma": None}, "gamma"), (losses.TruncatedPoissonLoss, {"alpha_h": -1}, "alpha_h"),
    (losses.IntensityLoss, {"l2": float("nan")}, "l2"), (losses.AmplitudeLoss, {"l2": -0.5}, "l2")])
def test_loss_hyperparameters_are_named_in_the_error(cls, kw, name):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {name} must be"):
        cls(gauss(), **kw)


def test_losses_refuse_a_list_a_wrong_signal_shape_and_one_signal_for_many_ys():
    op = gauss()
    y = op(torch.randn(3, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    for cls in (losses.AmplitudeLoss, losses.TruncatedPoissonLoss, losses.ReweightedAmplitudeLoss):
        loss = cls(op)
        with pytest.raises(ValueError, match="x must be a torch.Tensor"):
            loss([0.0] * 8, y)
        with pytest.raises(ValueError, match=r"x has shape \(3, 7\)"):
            loss(torch.zeros(3, 7, dtype=torch.complex128), y)
        with pytest.raises(ValueError, match=r"x has batch shape \(\) but y has \(3,\)"):
            loss(torch.zeros(8, dtype=torch.complex128), y)
        # one y for a batch of signals is legal and equals the expanded evaluation
        x = torch.randn(3, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(loss(x, y[0]), loss(x, y[0].expand(3, -1)))


# ------------------------------------------------------------------------------------------ metrics
def test_psnr_validates_data_range_and_empty_signals():
    x = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    xh = x + 0.01
    for bad, msg in ((float("inf"), "finite and > 0"), (float("nan"), "finite and > 0"), (0.0, "finite and > 0"),
                     ("x", "must be a number"), ([1.0, 2.0], "must be a number"),
                     (torch.tensor([1.0, 2.0]), r"data_range has shape \(2,\) but there are \(3,\) samples")):
        with pytest.raises(ValueError, match=msg):
            metrics.psnr(xh, x, data_range=bad, signal_dims=1)
    per_sample = metrics.psnr(xh, x, data_range=torch.tensor([1.0, 2.0, 4.0]), signal_dims=1)
    assert torch.isfinite(per_sample).all() and per_sample[1] - per_sample[0] == pytest.approx(20 * math.log10(2))
    with pytest.raises(ValueError, match="signal dimensions of x are empty"):
        metrics.psnr(torch.zeros(0), torch.zeros(0), signal_dims=1)


# -------------------------------------------------------------------------------------------- noise
def test_gaussian_noise_refuses_non_finite_input_and_overflow():
    y = torch.rand(4, dtype=torch.float32) + 0.5
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or inf"):
            GaussianNoise(0.1, seed=0)(torch.cat([y, torch.tensor([bad])]))
    with pytest.raises(ValueError, match="sigma=1e\\+300 overflows torch.float32"):
        GaussianNoise(1e300, seed=0)(y)
    assert torch.isfinite(GaussianNoise(1e300, seed=0)(y.double())).all() or True


def test_poisson_noise_refuses_counts_it_cannot_draw():
    y = torch.rand(16, dtype=torch.float64) + 0.1
    with pytest.raises(ValueError, match="use GaussianNoise"):
        PoissonNoise(1e30, seed=0)(y)
    out = PoissonNoise(1e14, seed=0)(y)                       # large but representable: unbiased, ≥ 0
    assert (out >= 0).all() and torch.allclose(out, y, rtol=1e-5)


# -------------------------------------------------------------------------------------------- files
def test_tampered_matrix_operator_configs_are_refused_before_allocating(tmp_path):
    op = MatrixMeasurement(torch.randn(6, 4))
    path = tmp_path / "op.pt"
    save_operator(op, path)
    blob = torch.load(path, weights_only=False)
    for m, msg in ((10**10, "GiB but only"), (-6, "config m must be an int ≥ 1"), (2.5, "config m must be an int")):
        blob["config"]["m"] = m
        torch.save(blob, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=msg):
            load_operator(tmp_path / "bad.pt")


def test_tampered_measurement_files_name_the_damaged_field(tmp_path):
    op = gauss(n=4, m=16)
    x = torch.randn(4, dtype=torch.complex128)
    path = pio.save_measurements(tmp_path / "m.pt", op(x), x_true=x, operator=op)
    blob = torch.load(path, weights_only=False)
    for key, value, msg in (("version", "x", "'version' must be an int"), ("meta", "abc", "'meta' must be a dict"),
                            ("x_true", torch.full((4,), float("nan"), dtype=torch.complex128), "'x_true' contains NaN")):
        bad = dict(blob, **{key: value})
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=msg):
            pio.load_measurements(tmp_path / "bad.pt", operator=op)


def test_a_huge_requested_image_size_is_refused_before_decoding(tmp_path, capsys):
    path = pio.save_image(shepp_logan(16), tmp_path / "p.png", normalise=False)
    with pytest.raises(ValueError, match=r"size=100000 asks for 100000×100000"):
        pio.load_image(path, size=100000)
    code = main(["--quiet", "simulate", str(path), "--size", "150000", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("phasetorch: error:") == 1 and "150000×150000" in err


# ------------------------------------------------------------------------------------------- solver
def test_support_must_be_a_mask_and_an_empty_batch_has_nothing_to_initialise():
    op = gauss()
    y = op(torch.randn(2, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="support must be a boolean mask"):
        pt.reconstruct(op, y, "wf", support="yes", progress=False, max_iter=2)
    with pytest.raises(ValueError, match="spectral_init: y has an empty batch"):
        pt.spectral_init(op, y[:0])


def test_the_data_residual_is_reported_per_sample_and_tells_garbage_from_clean():
    op = gauss(n=16, m=128)
    x = torch.randn(2, 16, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    y = op(x)
    garbage = torch.empty_like(y).exponential_(generator=torch.Generator().manual_seed(1)) * y.mean()
    rec = pt.reconstruct(op, torch.stack([y[0], garbage[1]]), progress=False, seed=0)
    assert rec.residual.shape == (2,) and rec.residual.dtype == torch.float64
    assert rec.residual[0] < 1e-6 < 0.2 < rec.residual[1]          # the garbage sample does not fit its data
    assert torch.equal(rec.residual, rec.log["residual"][-1])


# ---------------------------------------------------------------------------------------------- CLI
def test_bench_with_an_unknown_option_prints_one_cli_error_line(capsys):
    code = main(["bench", "--no-such-option"])
    err = capsys.readouterr().err
    assert code == 2 and len(re.findall(r"^phasetorch: error:", err, re.M)) == 1 and "--no-such-option" in err


# ------------------------------------------------------------------ the second fuzz round (scripts/fuzz.py --seed 7)
@pytest.mark.parametrize("device, msg", [("bogus", r"device must be 'cpu', 'cuda' or 'cuda:N'"),
                                         ("meta", r"'meta' device, which holds no data"),
                                         ("cuda:7", r"CUDA is not available|has \d+ CUDA device")])
def test_unusable_devices_are_refused_by_name(device, msg):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a CUDA device 7")
    with pytest.raises(ValueError, match=msg):
        pt.theory.dmft(4.0, step=0.1, steps=2, samples=500, replicates=2, progress=False, device=device)
    with pytest.raises(ValueError, match="simulate: device"):
        pt.theory.simulate(4.0, step=0.1, steps=2, dim=16, seeds=1, device=device)
    assert pt.tensors.as_device(None) == torch.device("cpu")
    assert pt.tensors.as_device(torch.device("cpu")) == torch.device("cpu")


def test_a_matrix_on_the_meta_device_is_refused():
    with pytest.raises(ValueError, match=r"MatrixMeasurement: the device of A is the 'meta' device"):
        MatrixMeasurement(torch.empty(6, 4, device="meta"))


def test_spectral_threshold_names_delta_min_when_the_range_is_empty():
    with pytest.raises(ValueError, match=r"delta_max \(above delta_min = 2000; raise delta_max or lower delta_min\)"):
        pt.theory.spectral_threshold(delta_min=2000.0)


def test_an_operator_file_with_a_damaged_version_is_refused(tmp_path):
    path = tmp_path / "op.pt"
    save_operator(gauss(n=4, m=16), path)
    blob = torch.load(path, weights_only=False)
    for version in ("x", -1, 1.5, True):
        torch.save(dict(blob, version=version), tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=r"damaged format version"):
            load_operator(tmp_path / "bad.pt")
    assert load_operator(path).config() == gauss(n=4, m=16).config()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_json_files_with_non_standard_numbers_are_refused(tmp_path, literal):
    pred = pt.theory.dmft(4.0, step=0.1, steps=2, samples=500, replicates=2, progress=False)
    rec = pt.reconstruct(gauss(n=4, m=32), gauss(n=4, m=32)(torch.randn(4, dtype=torch.complex128)),
                         progress=False, max_iter=3)
    for obj, cls, key in ((pred, pt.theory.Prediction, '"overlap": [['), (rec.log, pt.TrainingLog, '"loss": [')):
        path = tmp_path / f"{cls.__name__}.json"
        obj.to_json(path)
        assert cls.from_json(path) is not None                     # the strict file as written reads back
        text = path.read_text(encoding="utf-8")
        assert key in text
        head, tail = text.split(key, 1)
        path.write_text(head + key + literal + tail[tail.index(","):], encoding="utf-8")
        with pytest.raises(ValueError, match=r"strict JSON has no place for: phasetorch writes NaN as null"):
            cls.from_json(path)


def test_a_sweep_of_too_many_reconstructions_is_refused_up_front(tmp_path):
    from phasetorch.app import sweep as sw
    with pytest.raises(sw.GridTooLarge, match=r"1 cell\(s\) × 100000000 trials .* cap of 1e\+07"):
        sw.run_sweep(tmp_path / "s", [4.0], ["wf"], trials=10**8, dim=8, progress=False)
    assert not (tmp_path / "s" / sw.RESULTS_NAME).exists()


def test_signed_amplitudes_passed_as_intensities_get_a_warning_once():
    op = pt.GaussianMeasurement(16, 128, complex=False, seed=0, dtype=torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    y[1] = op.linear(x[1])                                  # signed amplitudes Ax, about half negative
    with pytest.warns(UserWarning, match=r"of sample\(s\) \[1\] .* are negative.*pass op\(x\) = \|Ax\|²") as got:
        pt.reconstruct(op, y, progress=False, max_iter=3)
    assert sum("are negative" in str(w.message) for w in got) == 1      # not again from the loss's prepare
    noisy = y[:1] + 0.3 * y[:1].mean() * torch.randn(y[:1].shape, generator=torch.Generator().manual_seed(1),
                                                       dtype=torch.float64)
    assert 0 < float((noisy < 0).double().mean()) < losses.NEGATIVE_WARNING
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # ordinary noise: negative entries, no warning
        pt.reconstruct(op, noisy, progress=False, max_iter=3)


def test_an_iteration_budget_beyond_int64_and_a_huge_oversampling_are_named():
    op = gauss()
    y = op(torch.randn(8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"max_iter must be an int ≥ 0 and ≤ 4611686018427387904"):
        pt.reconstruct(op, y, max_iter=10 ** 30, progress=False)
    with pytest.raises(ValueError, match=r"smaller oversampling="):
        pt.StructuredRandom((4, 4), seed=0, oversampling=2 ** 70)
