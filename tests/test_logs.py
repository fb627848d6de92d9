import csv
import json
import math

import pytest
import torch

from phasetorch.logs import TrainingLog


def _log():
    log = TrainingLog(batch_shape=(2, 2), config={"algorithm": "wf", "delta": 8.0, "dtype": torch.float64,
                                                  "op": {"type": "GaussianMeasurement", "n": [4]}})
    for t in range(4):
        log.append(t, loss=torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64) / (t + 1), time=0.1 * t, step=0.5)
    return log


def test_append_and_read():
    log = _log()
    assert len(log) == 4
    assert log.columns == ["iteration", "loss", "time", "step"]
    assert torch.equal(log["iteration"], torch.arange(4))
    assert log["loss"].shape == (4, 4) and log["loss"].dtype == torch.float64
    assert torch.allclose(log["loss"][2], torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 3)
    assert log["time"].shape == (4,)
    assert torch.equal(log["step"], torch.full((4, 4), 0.5, dtype=torch.float64))   # broadcast scalar
    assert torch.allclose(log.final("loss"), torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    with pytest.raises(KeyError, match="overlap"):
        log["overlap"]


def test_new_columns_are_backfilled_with_nan():
    log = _log()
    log.append(4, loss=[1, 1, 1, 1], overlap=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    ov = log["overlap"]
    assert torch.isnan(ov[:4]).all() and torch.allclose(ov[4], torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    assert math.isnan(float(log["time"][4]))                 # missing in that record
    assert torch.isnan(log.mean("overlap")[:4]).all()


def test_mean_and_stderr():
    log = TrainingLog(batch_shape=(4,))
    vals = torch.tensor([1.0, 2.0, 4.0, 7.0])
    log.append(0, overlap=vals)
    assert torch.allclose(log.mean("overlap"), vals.double().mean().reshape(1))
    expected = vals.double().std(unbiased=True) / 2
    assert torch.allclose(log.stderr("overlap"), expected.reshape(1))
    single = TrainingLog(batch_shape=())
    single.append(0, overlap=0.5)
    assert single["overlap"].shape == (1, 1)
    assert torch.isnan(single.stderr("overlap")).all()


def test_json_round_trip(tmp_path):
    log = _log()
    log.append(4, loss=torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-300]), time=1.0, step=0.25)
    path = tmp_path / "log.json"
    log.to_json(path)
    json.loads(path.read_text())                              # strict JSON (no bare NaN)
    back = TrainingLog.from_json(path)
    assert back.columns == log.columns and back.batch_shape == (2, 2)
    for c in log.columns:
        a, b = log[c], back[c]
        assert a.shape == b.shape
        assert torch.equal(torch.isnan(a), torch.isnan(b)) if a.is_floating_point() else True
        assert torch.equal(torch.nan_to_num(a.double(), nan=7.0), torch.nan_to_num(b.double(), nan=7.0))
    assert back.config["algorithm"] == "wf" and back.config["dtype"] == "float64"
    assert back.config["op"] == {"type": "GaussianMeasurement", "n": [4]}


def test_csv_long_format(tmp_path):
    log = _log()
    path = tmp_path / "log.csv"
    log.to_csv(path)
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["iteration", "sample", "loss", "time", "step"]
    assert len(rows) == 1 + 4 * 4
    r = rows[1 + 2 * 4 + 3]                                   # iteration 2, sample 3
    assert int(r[0]) == 2 and int(r[1]) == 3 and float(r[2]) == pytest.approx(4.0 / 3, rel=1e-15)
    assert float(r[3]) == pytest.approx(0.2)


def test_select():
    log = _log()
    sub = log.select([1, 3])
    assert sub.batch_shape == (2,)
    assert torch.equal(sub["loss"], log["loss"][:, [1, 3]])
    one = log.select(2)
    assert one.batch_shape == () and torch.equal(one["loss"][:, 0], log["loss"][:, 2])


def test_validation():
    log = TrainingLog(batch_shape=(3,))
    with pytest.raises(ValueError, match="one value per sample"):
        log.append(0, loss=torch.ones(2))
    with pytest.raises(ValueError, match="one number per record"):
        log.append(0, time=torch.ones(3))
    with pytest.raises(ValueError, match="integer"):
        log.append(1.5, loss=1.0)
    with pytest.raises(ValueError, match="real"):
        log.append(0, loss=torch.ones(3, dtype=torch.complex64))
    assert len(log) == 0                                        # failed appends leave no partial record
    with pytest.raises(ValueError, match="format"):
        TrainingLog.from_dict({"columns": []})


def test_append_stacked_equals_append(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = TrainingLog((3,), {}, ["loss", "step", "time", "overlap"])
    b = TrainingLog((3,), {}, ["loss", "step", "time", "overlap"])
    for t in range(3):
        loss, step = torch.rand(3, generator=g), torch.rand(3, generator=g, dtype=torch.float64)
        a.append(t, loss=loss, step=step, time=0.5 * t)
        b.append_stacked(t, ["loss", "step"], torch.stack([loss.double(), step]), 0.5 * t)
    for name in a.columns:
        assert torch.equal(a[name], b[name]) or torch.equal(a[name].isnan(), b[name].isnan()), name
    assert b["overlap"].isnan().all()                         # a column not given is NaN, as with append
    with pytest.raises(ValueError, match="shape"):
        b.append_stacked(3, ["loss"], torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="missing"):
        b.append_stacked(3, ["nope"], torch.zeros(1, 3), 0.0)
    b.to_json(tmp_path / "b.json")
    assert torch.equal(TrainingLog.from_json(tmp_path / "b.json")["loss"], a["loss"])
