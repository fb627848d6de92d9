"""Tests of phasetorch.app.sweep: grids, seeds, resumable storage, a real tiny sweep, the figure."""

import json

import pytest
import torch

from phasetorch.app import sweep as sw


def test_parse_grid_inclusive_range_and_lists():
    assert sw.parse_grid("1:2:0.25") == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert sw.parse_grid("1:8:0.25")[-1] == 8.0 and len(sw.parse_grid("1:8:0.25")) == 29
    assert sw.parse_grid("0.1:0.3:0.1") == [0.1, 0.2, 0.3]  # no float drift drops the endpoint
    assert sw.parse_grid("4,2,3,2") == [2.0, 3.0, 4.0]
    assert sw.parse_grid("4") == [4.0]
    for bad in ("1:8", "8:1:0.5", "1:8:0", "a,b", "", "-1,2", "1:2:-1"):
        with pytest.raises(ValueError, match="grid"):
            sw.parse_grid(bad)


def test_trial_seeds_distinct_and_keys():
    seeds = {sw.trial_seed(0, k, d) for k in range(20) for d in sw.parse_grid("1:8:0.25")}
    assert len(seeds) == 20 * 29
    assert sw.trial_seed(3, 1, 2.5) == sw.trial_seed(3, 1, 2.5)
    assert sw.cell_key("raf", 4.0) == "raf@4" and sw.cell_key("wf", 2.25) == "wf@2.25"


def test_random_signal_fields_and_reproducibility():
    a = sw.random_signal(50, "complex", 7)
    assert a.dtype == torch.complex128 and torch.equal(a, sw.random_signal(50, "complex", 7))
    r = sw.random_signal(50, "real", 7, torch.float32)
    assert r.dtype == torch.float32 and not torch.equal(r, sw.random_signal(50, "real", 8, torch.float32))


def _fake_cell(calls):
    def run_cell(algorithm, delta, settings, device="cpu"):
        calls.append((algorithm, delta))
        ok = delta >= 3
        n = settings["trials"]
        return {"algorithm": algorithm, "delta": float(delta), "m": int(delta * settings["dim"]), "trials": n,
                "successes": n if ok else 0, "success_rate": 1.0 if ok else 0.0,
                "rel_errors": [1e-7 if ok else 0.5] * n, "iterations": [10] * n, "seconds": 0.0}
    return run_cell


def test_sweep_resumes_and_extends(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sw, "run_cell", _fake_cell(calls))
    common = dict(trials=3, dim=8, field="complex", progress=False)
    res = sw.run_sweep(tmp_path, [2.0, 4.0], ["wf", "raf"], **common)
    assert len(calls) == 4 and set(res.cells) == {"wf@2", "wf@4", "raf@2", "raf@4"}
    stored = json.loads((tmp_path / sw.RESULTS_NAME).read_text())
    assert stored["settings"]["trials"] == 3 and stored["cells"]["raf@4"]["success_rate"] == 1.0
    # same sweep again: nothing to do
    messages = []
    sw.run_sweep(tmp_path, [2.0, 4.0], ["wf", "raf"], log=messages.append, **common)
    assert len(calls) == 4 and "4 finished cell(s)" in messages[0]
    # extend the grid and the algorithms: only the new cells run
    res = sw.run_sweep(tmp_path, [2.0, 3.0, 4.0], ["wf", "raf", "taf"], **common)
    assert len(calls) == 4 + 5 and len(res.cells) == 9
    assert res.curve("taf") == ([2.0, 3.0, 4.0], [0.0, 1.0, 1.0])
    assert res.transition("taf") == 3.0
    assert sw.SweepResults.load(tmp_path).cells == res.cells


def test_sweep_refuses_to_mix_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(sw, "run_cell", _fake_cell([]))
    sw.run_sweep(tmp_path, [2.0], ["wf"], trials=3, dim=8, progress=False)
    with pytest.raises(ValueError, match="different settings: dim=8"):
        sw.run_sweep(tmp_path, [2.0], ["wf"], trials=3, dim=16, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / sw.RESULTS_NAME).write_text('{"something": 1}')
    with pytest.raises(ValueError, match="not a phasetorch sweep"):
        sw.run_sweep(tmp_path / "other", [2.0], ["wf"], trials=3, dim=8, progress=False)


def test_sweep_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="field"):
        sw.run_sweep(tmp_path, [2.0], ["wf"], trials=1, dim=4, field="quaternion", progress=False)
    with pytest.raises(ValueError, match="at least one algorithm"):
        sw.run_sweep(tmp_path, [2.0], [" "], trials=1, dim=4, progress=False)
    with pytest.raises(ValueError, match="positive"):
        sw.run_sweep(tmp_path, [2.0], ["wf"], trials=0, dim=4, progress=False)


def test_real_cells_succeed_above_and_fail_below_injectivity(tmp_path):
    settings = {"dim": 16, "field": "complex", "trials": 3, "tol": 1e-5, "max_iter": 600, "init": "spectral",
                "preprocessing": None, "dtype": "float64", "seed": 0}
    high = sw.run_cell("raf", 8.0, settings)
    assert high["trials"] == 3 and high["m"] == 128 and len(high["rel_errors"]) == 3
    assert high["success_rate"] == 1.0, high["rel_errors"]
    low = sw.run_cell("raf", 1.0, dict(settings, max_iter=100))  # m = n < 4n − 4: y does not determine x
    assert low["success_rate"] == 0.0, low["rel_errors"]
    # the same problems whatever the algorithm: the cell is reproducible
    again = sw.run_cell("raf", 8.0, settings)
    assert again["rel_errors"] == high["rel_errors"]


def test_reference_lines_and_figure(tmp_path, monkeypatch):
    lines = sw.reference_lines("complex")
    assert lines == {"injectivity (complex: δ = 4)": 4.0}
    assert sw.reference_lines("real") == {"injectivity (real: δ = 2)": 2.0}
    # each algorithm's own spectral threshold: its preset's preprocessing, or the sweep's
    th = sw.algorithm_thresholds(["wf", "lbfgs", "taf"], "complex")
    assert th["wf"] is None                                      # identity: no closed-form threshold
    assert th["lbfgs"][0] == "mm" and th["lbfgs"][1] == pytest.approx(1.0, abs=1e-3)
    assert th["taf"][0] == "orthogonality" and 1.0 < th["taf"][1] < 4.0
    forced = sw.algorithm_thresholds(["wf", "taf"], "real", preprocessing="optimal")
    assert forced["wf"] == forced["taf"] and forced["wf"][1] == pytest.approx(0.5, abs=1e-3)
    assert sw.algorithm_thresholds(["taf"], "complex", init="random") == {"taf": None}
    monkeypatch.setattr(sw, "run_cell", _fake_cell([]))
    res = sw.run_sweep(tmp_path, [2.0, 4.0], ["wf"], trials=2, dim=8, progress=False)
    path = sw.write_figure(res, tmp_path, lines)
    assert path.name == sw.FIGURE_NAME and path.stat().st_size > 5_000
    assert sw.summary_lines(res) == ["wf: success ≥ 50% from δ = 4"]
