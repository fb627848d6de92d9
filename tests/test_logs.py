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


def test_from_json_names_the_file_and_what_is_wrong(tmp_path):
    good = tmp_path / "good.json"
    _log().to_json(good)
    text = good.read_text()
    d = json.loads(text)
    cases = {
        "empty.json": ("", "empty"),
        "truncated.json": (text[: len(text) // 2], r"not valid JSON \(truncated\?\)"),
        "list.json": ("[1, 2]", "not a phasetorch TrainingLog"),
        "string.json": ('"log"', "not a phasetorch TrainingLog"),
        "foreign.json": ('{"loss": [1, 2]}', "not a phasetorch TrainingLog"),
        "nodata.json": (json.dumps({k: v for k, v in d.items() if k != "data"}), "missing key 'data'"),
        "nocolumns.json": (json.dumps({k: v for k, v in d.items() if k != "columns"}), "missing key 'columns'"),
        "nocol.json": (json.dumps(dict(d, data={k: v for k, v in d["data"].items() if k != "loss"})),
                       "missing column 'loss'"),
        "shortrec.json": (json.dumps(dict(d, data=dict(d["data"], loss=[r[:2] for r in d["data"]["loss"]]))),
                          "expected a list of 4 values"),
        "badrows.json": (json.dumps(dict(d, data=dict(d["data"], loss=7))), "list of records"),
        "badshape.json": (json.dumps(dict(d, batch_shape="2x2")), "batch_shape"),
        "badvalue.json": (json.dumps(dict(d, data=dict(d["data"], step=[["x"] * 4] * 4))), "expected a number"),
    }
    for name, (content, why) in cases.items():
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(ValueError, match=why) as err:
            TrainingLog.from_json(p)
        assert name in str(err.value), str(err.value)
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        TrainingLog.from_json(tmp_path / "run")
    with pytest.raises(ValueError, match="does not exist"):
        TrainingLog.from_json(tmp_path / "nothing.json")
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(ValueError, match="UTF-8"):
        TrainingLog.from_json(tmp_path / "binary.json")
    assert TrainingLog.from_json(good).columns == _log().columns


def test_writes_are_atomic_and_leave_the_previous_file(tmp_path, monkeypatch):
    import os
    import stat

    jpath, cpath = tmp_path / "log.json", tmp_path / "log.csv"
    log = _log()
    log.to_json(jpath)
    log.to_csv(cpath)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(jpath).st_mode) == 0o666 & ~umask     # not mkstemp's private 0600
    before_j, before_c = jpath.read_bytes(), cpath.read_bytes()

    def dump_dies(obj, fh, **kw):
        fh.write('{"format": "phasetorch.TrainingLog", "data": {"iteration": [0,')
        raise OSError("disk full")

    class DyingWriter:
        def __init__(self, fh):
            self.fh, self.rows = fh, 0

        def writerow(self, row):
            self.rows += 1
            if self.rows > 3:
                raise KeyboardInterrupt           # killed mid-write
            self.fh.write(",".join(map(str, row)) + "\n")

    monkeypatch.setattr(json, "dump", dump_dies)
    monkeypatch.setattr(csv, "writer", DyingWriter)
    with pytest.raises(OSError, match="disk full"):
        log.to_json(jpath)
    with pytest.raises(KeyboardInterrupt):
        log.to_csv(cpath)
    with pytest.raises(OSError, match="disk full"):
        log.to_json(tmp_path / "fresh.json")
    assert jpath.read_bytes() == before_j and cpath.read_bytes() == before_c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "log.json"]   # no temporary, no 0-byte file
    monkeypatch.undo()
    assert torch.equal(TrainingLog.from_json(jpath)["loss"], log["loss"])
    with pytest.raises(ValueError, match="is a directory"):
        log.to_json(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        log.to_csv(tmp_path / "no" / "such" / "log.csv")


def test_stacked_records_keep_their_order_among_plain_appends():
    """Stacked records are split into columns only when the log is read; records appended in between
    by ``append`` (with or without values), or with another set of columns, keep their place."""
    log = TrainingLog((2,), {}, ["loss", "step", "time"])
    log.append_stacked(0, ["loss", "step"], torch.tensor([[1.0, 2.0], [0.1, 0.2]], dtype=torch.float64), 0.0)
    log.append_stacked(1, ["loss"], torch.tensor([[3.0, 4.0]]), 0.5)           # float32, other columns
    log.append(2, loss=[5.0, 6.0], time=1.0)
    log.append(3)                                                                # no values at all
    log.append_stacked(4, ["loss", "step"], torch.tensor([[7.0, 8.0], [0.3, 0.4]], dtype=torch.float64), 2.0)
    assert log["iteration"].tolist() == [0, 1, 2, 3, 4]
    assert log["loss"][:, 0].tolist()[:3] == [1.0, 3.0, 5.0] and log["loss"][4].tolist() == [7.0, 8.0]
    assert log["loss"][3].isnan().all() and log["step"][1].isnan().all() and log["step"][4, 1] == 0.4
    assert log["time"].tolist()[:3] == [0.0, 0.5, 1.0] and log["loss"].dtype == torch.float64
    assert len(log) == 5 and log.drop_after(2) == 2 and len(log) == 3
    log.append_stacked(3, ["loss", "step"], torch.zeros(2, 2, dtype=torch.float64), 3.0)
    assert log.select([1])["loss"].reshape(-1).tolist() == [2.0, 4.0, 6.0, 0.0]


def test_stacked_records_on_a_device_are_moved_to_the_host_when_read():
    """A record appended stacked on another device marks the log as on a device at once, so reading,
    selecting or writing it moves every record to the CPU (meta stands in for an accelerator here)."""
    log = TrainingLog((2,), {}, ["loss", "time"])
    log.append_stacked(0, ["loss"], torch.ones(1, 2, device="meta"), 0.0)
    assert log._on_device
    log._pending[0] = (0, ("loss",), torch.ones(1, 2, dtype=torch.float64), 0.0)   # meta has no values to copy
    log._on_device = True
    sel = log.select([1])
    assert sel["loss"].device.type == "cpu" and not log._on_device
