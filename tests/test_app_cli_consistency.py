"""The command line says what it does: noise units, image sizes, choices, output folders, Fourier logs,
which logs the theory takes, and the demo's quick run (issues 13 and 14)."""

import json
import re

import pytest
import torch

from phasetorch import io as pio
from phasetorch.app import jobs
from phasetorch.app.cli import main
from phasetorch.logs import TrainingLog
from phasetorch.metrics import relative_error
from phasetorch.phantoms import shepp_logan


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err, *fragments):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("phasetorch: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture()
def image(tmp_path):
    return str(pio.save_image(shepp_logan(40), tmp_path / "phantom.png", normalise=False))


@pytest.fixture()
def wide(tmp_path):
    return str(pio.save_image(shepp_logan((30, 50)), tmp_path / "wide.png", normalise=False))


# ------------------------------------------------------------------------------- Fourier logs (14.2)
def test_fourier_log_uses_the_twin_resolved_error_of_the_final_number(capsys, tmp_path, image):
    out = tmp_path / "cdi"
    code, stdout, err = _run(capsys, "reconstruct", image, "--model", "fourier", "--size", 16, "--iters", 80,
                             "--dtype", "float64", "--out", out, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    log = TrainingLog.from_json(out / "log.json")
    assert log.config["twin_resolved"] is True and "rel_error_direct" in log.columns
    last = float(log["rel_error"][-1, 0])
    assert last == summary["rel_error"]                       # the same number, not just close
    assert f"relative error {summary['rel_error']:.3g}" in stdout
    # every record: the twin-resolved error is the smaller of the two candidates
    assert bool((log["rel_error"] <= log["rel_error_direct"] + 1e-12).all())
    assert len(log) == summary["iterations"] + 1


def test_twin_metrics_agree_with_the_library_metrics():
    g = torch.Generator().manual_seed(0)
    xt = torch.rand(3, 6, 7, generator=g, dtype=torch.float64)
    x = torch.flip(xt, dims=(-2, -1)) * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).reshape(3, 1, 1)
    x[0] = xt[0] + 0.01                       # sample 0: the direct image; 1, 2: scaled twins
    chosen, rel, ov, _ = jobs.twin_metrics(x, xt, 2)
    torch.testing.assert_close(rel, relative_error(chosen, xt, signal_dims=2))
    assert float(rel[0]) < 0.05 and torch.equal(chosen[1:], torch.flip(x[1:], dims=(-2, -1)))
    assert torch.equal(jobs.resolve_twin(x, xt, 2), chosen)


# ------------------------------------------------------------------------------- sizes (14.3)
def test_images_keep_their_own_size_and_shape_unless_size_is_given(capsys, tmp_path, wide):
    code, stdout, err = _run(capsys, "simulate", wide, "--masks", 2, "--out", tmp_path / "own")
    assert code == 0, err
    meta = torch.load(tmp_path / "own" / "measurements.pt", weights_only=True)["meta"]
    assert meta["shape"] == [30, 50] and "resized" not in stdout and "cropped" not in stdout
    code, stdout, err = _run(capsys, "reconstruct", wide, "--model", "fourier", "--iters", 3, "--out", tmp_path / "f")
    assert code == 0, err
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["meta"]["shape"] == [30, 50]
    code, stdout, err = _run(capsys, "simulate", wide, "--size", 16, "--masks", 2, "--out", tmp_path / "small")
    assert code == 0, err
    assert "wide.png: centre-cropped 30×50 to 30×30, resized to 16×16" in stdout
    code, stdout, _ = _run(capsys, "simulate", wide, "--size", "20x40", "--masks", 2, "--out", tmp_path / "hw")
    assert code == 0 and "resized 30×50 to 20×40" in stdout


def test_a_too_large_gaussian_problem_is_refused_naming_size(capsys, tmp_path):
    big = pio.save_image(shepp_logan(200), tmp_path / "big.png", normalise=False)
    code, _, err = _run(capsys, "reconstruct", big, "--model", "gaussian", "--out", tmp_path / "g")
    _one_error(code, err, "--size", "at most")
    assert not (tmp_path / "g").exists()


def test_the_operator_memory_is_checked_before_building(capsys, tmp_path, image, monkeypatch):
    monkeypatch.setattr(jobs, "available_memory", lambda device=None: 100 * 1024 ** 2)
    code, _, err = _run(capsys, "reconstruct", image, "--masks", 100000, "--out", tmp_path / "m")
    _one_error(code, err, "100000 masks", "GiB are available", "--masks")
    assert jobs.problem_bytes(10, 40, extra_complex=40) == 4 * 2 * 40 + 11 * 4 * 40 + 20 * 4 * 10
    assert jobs.available_memory() is None or jobs.available_memory() > 0


# ------------------------------------------------------------------------------- photons (13.2)
def test_poisson_counts_photons_per_measurement():
    assert jobs.parse_noise("poisson:100") == ("poisson", 100.0)
    assert jobs.parse_noise("poisson-total:1e6") == ("poisson-total", 1e6)
    assert jobs.make_noise("poisson", 10.0, 0, 3, measurements=400).photons == pytest.approx(4000.0)
    assert jobs.make_noise("poisson-total", 10.0, 0, 3, measurements=400).photons == 10.0
    assert jobs.photons_per_measurement("poisson-total", 1000.0, 4 * 64 * 64) == pytest.approx(0.06, rel=0.02)


def test_poisson_noise_level_and_low_photon_warning(capsys, tmp_path, image):
    code, out, err = _run(capsys, "simulate", image, "--size", 12, "--masks", 4, "--noise", "poisson:10",
                          "--out", tmp_path / "p10")
    assert code == 0 and "warning" not in err
    raw = torch.load(tmp_path / "p10" / "measurements.pt", weights_only=True)
    assert raw["meta"]["photons_per_measurement"] == 10.0 and raw["meta"]["photons_per_sample"] == 10.0 * 4 * 144
    # 10 photons per measurement: relative noise of the total ≈ 1/√(10 m)
    from phasetorch.physics import load_operator
    op = load_operator(tmp_path / "p10" / "operator.pt")
    clean = op(raw["x_true"].to(op.signal_dtype))
    rel = float((raw["y"] - clean).norm() / clean.norm())
    assert 0.05 < rel < 1.0
    code, out, err = _run(capsys, "simulate", image, "--size", 12, "--masks", 4, "--noise", "poisson-total:100",
                          "--out", tmp_path / "low", "--quiet")
    assert code == 0
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "0.174 expected photons per measurement" in warn[0], err
    _, helptext, _ = _run(capsys, "reconstruct", "--help")
    helptext = re.sub(r"-\n\s+", "-", helptext)                 # argparse wraps after hyphens
    helptext = " ".join(helptext.split())
    assert "N expected photons PER MEASUREMENT" in helptext and "poisson-total:N" in helptext


# ------------------------------------------------------------------------------- CLI consistency (14.9)
def test_train_and_theory_take_the_noise_spec_syntax(capsys, tmp_path):
    for spec, sigma in (("gaussian:0.2", 0.2), ("0.2", 0.2), ("none", 0.0)):
        out = tmp_path / spec.replace(":", "_")
        code, _, err = _run(capsys, "train", "--delta", 4, "--dim", 20, "--seeds", 2, "--steps", 2, "--step", 0.1,
                            "--noise", spec, "--out", out, "--quiet")
        assert code == 0, err
        assert TrainingLog.from_json(out / "log.json").config["noise"] == sigma
    code, _, err = _run(capsys, "train", "--delta", 4, "--dim", 20, "--steps", 2, "--noise", "poisson:10",
                        "--out", tmp_path / "p")
    _one_error(code, err, "gaussian:SIGMA")
    assert code == 2 and not (tmp_path / "p").exists()
    code, _, err = _run(capsys, "theory", "--delta", 4, "--steps", 2, "--noise", "gaussian:0.1", "--samples", 1000,
                        "--replicates", 2, "--out", tmp_path / "th", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "th" / "prediction.json").read_text())["params"]["noise"] == 0.1
    _, helptext, _ = _run(capsys, "train", "--help")
    helptext = " ".join(helptext.split())
    assert "gaussian:SIGMA" in helptext and "--field complex" in helptext
    assert "on real Gaussian" not in helptext


def test_init_lists_its_choices(capsys, tmp_path, image):
    code, _, err = _run(capsys, "reconstruct", image, "--init", "zeros", "--out", tmp_path / "x")
    _one_error(code, err, "'spectral'", "'random'")
    _, helptext, _ = _run(capsys, "reconstruct", "--help")
    assert "{spectral,random}" in helptext


def test_failed_jobs_leave_no_output_folder(capsys, tmp_path, image, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(capsys, "simulate", image, "--size", 8, "--masks", 2, "--out", a)[0] == 0
    assert _run(capsys, "simulate", image, "--size", 8, "--masks", 3, "--out", b)[0] == 0
    code, _, _ = _run(capsys, "reconstruct", "--measurements", a / "measurements.pt", "--operator", b / "operator.pt",
                      "--out", tmp_path / "never")
    assert code == 1 and not (tmp_path / "never").exists()
    def solver_fails(*args, **kwargs):
        raise RuntimeError("the solver failed")

    monkeypatch.setattr(jobs, "reconstruct", solver_fails)      # a failure inside the job, before any file
    code, _, err = _run(capsys, "reconstruct", image, "--size", 8, "--out", tmp_path / "failed")
    assert code == 1 and "the solver failed" in err and not (tmp_path / "failed").exists()
    monkeypatch.undo()
    code, _, _ = _run(capsys, "theory", "--delta", 0.3, "--steps", 2, "--out", tmp_path / "below")
    assert code == 1 and not (tmp_path / "below").exists()


# ------------------------------------------------------------------------------- theory --logs (13.9)
def test_theory_refuses_logs_it_does_not_describe(capsys, tmp_path, image):
    cdp = tmp_path / "cdp"
    assert _run(capsys, "reconstruct", image, "--size", 8, "--iters", 3, "--out", cdp, "--quiet")[0] == 0
    code, _, err = _run(capsys, "theory", "--logs", cdp / "log.json", "--out", tmp_path / "t1")
    _one_error(code, err, "CodedDiffraction", "real Gaussian")
    assert code == 1 and not (tmp_path / "t1").exists()
    cplx = tmp_path / "complex"
    assert _run(capsys, "train", "--delta", 4, "--dim", 20, "--seeds", 2, "--steps", 2, "--field", "complex",
                "--out", cplx, "--quiet")[0] == 0
    code, _, err = _run(capsys, "theory", "--logs", cplx / "log.json", "--field", "real", "--out", tmp_path / "t2")
    _one_error(code, err, "field")        # a complex log is described by field='complex' only (issue 15)
    real = tmp_path / "real"
    assert _run(capsys, "train", "--delta", 4, "--dim", 20, "--seeds", 2, "--steps", 2, "--step", 0.1,
                "--out", real, "--quiet")[0] == 0
    log = TrainingLog.from_json(real / "log.json")
    for change, fragment in (({"algorithm": "raf"}, "algorithm 'raf'"), ({"l2": None}, "does not record l2"),
                             ({"step": None, "step_rule": {"rule": "armijo"}}, "step schedule")):
        cfg = dict(log.config, **change)
        if change.get("l2", 0) is None:
            cfg.pop("l2")
        bad = TrainingLog(log.batch_shape, cfg, log.columns[1:])
        for r, it in enumerate(log["iteration"].tolist()):
            bad.append(it, **{c: log[c][r] for c in log.columns[1:]})
        path = tmp_path / f"bad_{len(fragment)}.json"
        bad.to_json(path)
        code, _, err = _run(capsys, "theory", "--logs", path, "--out", tmp_path / "t3")
        _one_error(code, err, fragment)
    code, _, err = _run(capsys, "theory", "--logs", real / "log.json", "--delta", 6, "--out", tmp_path / "t4")
    _one_error(code, err, "--delta 6.0 (the log has 4.0)")


# ------------------------------------------------------------------------------- demo --quick (14.8)
def test_quick_demo_does_not_judge_the_theory(capsys, tmp_path):
    code, out, err = _run(capsys, "demo", "--quick", "--out", tmp_path / "demo", "--quiet")
    assert code == 0, err
    assert "verdict: not judged (--quick" in out
    assert "verdict: disagree" not in out and "verdict: agree" not in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["theory"]["comparison"]["verdict"].startswith("not judged")
    assert summary["settings"]["photons"] == 4000          # photons per measurement
