"""Bad or edge inputs to the solver layer get clear errors, never NaN or a false 'converged' (issue: robustness)."""

import pytest
import torch

import phasetorch as pt

F64 = torch.float64


def test_spectral_init_refuses_weights_that_vanish_everywhere():
    op = pt.GaussianMeasurement(16, 128, seed=0, dtype=F64)
    y = torch.zeros(2, 128, dtype=F64)
    y[:, 3] = 1.0                                        # one non-zero entry: 'trimmed' keeps nothing
    y[1] = op(torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"'trimmed' gives T\(y\) that is zero .* sample\(s\) \[0\].*'optimal'"):
        pt.spectral_init(op, y, "trimmed", seed=0)
    with pytest.raises(ValueError, match=r"zero on every measurement"):
        pt.spectral_init(op, y[1], lambda t: torch.zeros_like(t), seed=0)
    x0, info = pt.spectral_init(op, y[1], "optimal", seed=0, return_info=True)
    assert torch.isfinite(x0).all()


def test_loss_batch_mismatch_is_a_clear_error():
    op = pt.GaussianMeasurement(8, 64, seed=0, dtype=F64)
    x = torch.randn(3, 8, dtype=torch.complex128)
    y = op(torch.randn(2, 8, dtype=torch.complex128))
    for loss in (pt.losses.AmplitudeLoss(op), pt.losses.IntensityLoss(op), pt.losses.TruncatedPoissonLoss(op)):
        with pytest.raises(ValueError, match=r"batch shape \(3,\) but y has \(2,\)"):
            loss(x, y)
        with pytest.raises(ValueError, match="batch shape"):
            loss.evaluate(x, y)
    assert pt.losses.AmplitudeLoss(op)(x, y[0]).shape == (3,)        # one y for all signals broadcasts


def test_flags_reference_and_metric_operator_are_checked():
    op = pt.GaussianMeasurement(8, 64, seed=0, dtype=F64)
    x = torch.randn(2, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    y = op(x)
    with pytest.raises(ValueError, match="real_signal must be True or False"):
        pt.reconstruct(op, y, real_signal="no", progress=False)
    with pytest.raises(ValueError, match="x_true must be finite and non-zero"):
        pt.reconstruct(op, y, x_true=torch.zeros_like(x), progress=False)
    other = pt.GaussianMeasurement(4, 64, seed=0, dtype=F64)
    with pytest.raises(ValueError, match="op measures signals of shape"):
        pt.metrics.relative_error(x, x, op=other)
    with pytest.raises(ValueError, match="op must be a phasetorch operator"):
        pt.metrics.relative_error(x, x, op="cdp")


def test_a_tampered_operator_file_and_a_fifo_log_are_refused(tmp_path):
    import os
    op = pt.GaussianMeasurement(8, 64, seed=0, dtype=F64)
    path = tmp_path / "op.pt"
    pt.save_operator(op, path)
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]), None)
    if key is None:                                   # a seeded Gaussian may store no state: use a matrix operator
        mop = pt.MatrixMeasurement(torch.randn(16, 4, dtype=F64))
        pt.save_operator(mop, path)
        payload = torch.load(path, weights_only=True)
        key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key].clone().fill_(float("nan"))
    torch.save(payload, path)
    with pytest.raises(ValueError, match="non-finite values"):
        pt.load_operator(path)
    fifo = tmp_path / "log.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        pt.TrainingLog.from_json(fifo)


def test_operators_too_large_for_memory_are_refused_before_allocating():
    for make in (lambda: pt.GaussianMeasurement(100_000, 10**7),
                 lambda: pt.CodedDiffraction((60_000, 60_000), 100),
                 lambda: pt.physics.GaussianEnsemble(1500, 12_000, 3000),
                 lambda: pt.StructuredRandom((50_000, 50_000), n_layers=4, oversampling=2)):
        with pytest.raises(ValueError, match="GiB but only .* GiB are available"):
            make()
