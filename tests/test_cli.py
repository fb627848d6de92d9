"""End-to-end tests of the ``phasetorch`` command (in-process via ``main``, plus one subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phasetorch import allocator
from phasetorch.app import cli
from phasetorch import io as pio
from phasetorch.physics import kernels
from phasetorch.app.cli import main
from phasetorch.phantoms import shepp_logan

SUBCOMMANDS = ("demo", "simulate", "reconstruct", "train", "theory", "sweep")


@pytest.fixture()
def image(tmp_path):
    return str(pio.save_image(shepp_logan(40), tmp_path / "phantom.png", normalise=False))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean_error(code, err, *fragments):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("phasetorch: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


# ------------------------------------------------------------------------------------ help
def test_python_m_phasetorch_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "phasetorch", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for name in SUBCOMMANDS + ("bench",):
        assert name in proc.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(capsys, sub):
    code, out, _ = _run(capsys, sub, "--help")
    assert code == 0 and out.startswith(f"usage: phasetorch {sub}")
    assert "--out" in out


def test_threads_option_sets_torch_threads(capsys, tmp_path, image):
    before = torch.get_num_threads()
    try:
        code, _, err = _run(capsys, "--threads", 1, "simulate", image, "--size", 8, "--out", tmp_path / "s")
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_no_command_prints_help_and_fails(capsys):
    code, out, _ = _run(capsys)
    assert code == 2 and "COMMAND" in out


# ------------------------------------------------------------------------------------ reconstruct / simulate
def test_reconstruct_cdp_writes_everything_and_converges(capsys, tmp_path, image):
    out = tmp_path / "rec"
    code, stdout, err = _run(capsys, "reconstruct", image, "--size", 16, "--masks", 6, "--iters", 200,
                             "--dtype", "float64", "--out", out, "--quiet")
    assert code == 0, err
    for name in ("truth.png", "init.png", "reconstruction.png", "error.png", "grid.png", "convergence.png",
                 "log.json", "summary.json", "reconstruction.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "auto" and summary["m"] == 6 * 256
    assert summary["rel_error"] < 1e-3 and summary["psnr"] > 50
    assert "relative error" in stdout and "PSNR" in stdout
    assert pio.load_image(out / "reconstruction.png").shape == (16, 16)
    log = json.loads((out / "log.json").read_text())
    assert "rel_error" in log["columns"]


@pytest.mark.parametrize("model,extra", [("gaussian", ["--delta", "5"]), ("structured", ["--layers", "2"]),
                                         ("fourier", [])])
def test_reconstruct_other_models(capsys, tmp_path, image, model, extra):
    out = tmp_path / model
    code, stdout, err = _run(capsys, "reconstruct", image, "--model", model, "--size", 12, "--iters", 40,
                             *extra, "--out", out, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == ("hio" if model == "fourier" else "auto")
    assert (out / "reconstruction.png").is_file() and (out / "convergence.png").is_file()
    assert 0 <= summary["rel_error"] < 10


def test_reconstruct_phase_image_with_noise(capsys, tmp_path, image):
    out = tmp_path / "phase"
    code, _, err = _run(capsys, "reconstruct", image, "--phase-image", "--noise", "poisson:1e7", "--size", 12,
                        "--masks", 5, "--iters", 60, "--out", out, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["display"] == "phase" and summary["meta"]["noise"] == "poisson:1e7"
    assert summary["rel_error"] < 0.5


def test_simulate_then_reconstruct_from_files(capsys, tmp_path, image):
    sim = tmp_path / "sim"
    code, stdout, err = _run(capsys, "simulate", image, "--size", 12, "--masks", 4, "--noise", "gaussian:0.01",
                             "--out", sim)
    assert code == 0, err
    assert "simulated" in stdout
    raw = torch.load(sim / "measurements.pt", weights_only=True)
    assert raw["format"] == "phasetorch.measurements" and raw["y"].shape == (4, 12, 12)
    assert raw["x_true"].shape == (12, 12) and raw["meta"]["model"] == "cdp"
    out = tmp_path / "rec"
    code, stdout, err = _run(capsys, "reconstruct", "--measurements", sim / "measurements.pt", "--operator",
                             sim / "operator.pt", "--iters", 30, "--out", out, "--quiet")
    assert code == 0, err
    assert (out / "reconstruction.png").is_file() and (out / "truth.png").is_file()
    assert "relative error" in stdout


def test_reconstruct_measurements_without_truth(capsys, tmp_path):
    from phasetorch.physics import GaussianMeasurement, save_operator

    op = GaussianMeasurement(10, 60, seed=3)
    x = torch.randn(10, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    torch.save({"y": op(x)}, tmp_path / "y.pt")
    save_operator(op, tmp_path / "op.pt")
    code, stdout, err = _run(capsys, "reconstruct", "--measurements", tmp_path / "y.pt", "--operator",
                             tmp_path / "op.pt", "--iters", 50, "--out", tmp_path / "r", "--quiet")
    assert code == 0, err
    assert (tmp_path / "r" / "reconstruction.pt").is_file() and (tmp_path / "r" / "log.json").is_file()
    assert (tmp_path / "r" / "signal.png").is_file() and not (tmp_path / "r" / "truth.png").exists()
    assert "relative error" not in stdout


def test_reconstruct_bundled_complex_object(capsys, tmp_path):
    code, _, err = _run(capsys, "reconstruct", pio.bundled("complex_object"), "--size", 12, "--masks", 5,
                        "--iters", 40, "--out", tmp_path / "c", "--quiet")
    assert code == 0, err
    assert (tmp_path / "c" / "reconstruction_phase.png").is_file()


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("argv,fragment", [
    (["reconstruct", "missing.png", "--out", "X"], "does not exist"),
    (["reconstruct", "--noise", "poison:3", "IMG", "--out", "X"], "--noise"),
    (["reconstruct", "--size", "0", "IMG", "--out", "X"], "--size"),
    (["reconstruct", "--iters", "-1", "IMG", "--out", "X"], "--iters"),
    (["reconstruct", "--model", "radon", "IMG", "--out", "X"], "--model"),
    (["reconstruct", "--measurements", "m.pt", "--out", "X"], "--operator"),
    (["reconstruct", "--out", "X"], "IMAGE"),
    (["train", "--delta", "4", "--dim", "10", "--out", "X"], "--steps"),
    (["sweep", "--deltas", "1:8", "--out", "X"], "grid"),
    (["sweep", "--algorithms", "wf,magic", "--out", "X"], "magic"),
    (["theory", "--out", "X"], "--delta"),
    (["theory", "--logs", "nolog.json", "--out", "X"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_inputs_give_one_error_line(capsys, tmp_path, image, argv, fragment):
    argv = [str(tmp_path / a) if a in ("X", "m.pt", "missing.png", "nolog.json") else (image if a == "IMG" else a)
            for a in argv]
    code, _, err = _run(capsys, *argv)
    _assert_clean_error(code, err, fragment)


def test_unreadable_image_is_a_clean_error(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image at all")
    code, _, err = _run(capsys, "reconstruct", bad, "--out", tmp_path / "o")
    _assert_clean_error(code, err, "cannot read image")


def test_library_value_error_is_a_clean_error(capsys, tmp_path, image):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(capsys, "simulate", image, "--size", 8, "--masks", 2, "--out", a)[0] == 0
    assert _run(capsys, "simulate", image, "--size", 8, "--masks", 3, "--out", b)[0] == 0
    code, _, err = _run(capsys, "reconstruct", "--measurements", a / "measurements.pt", "--operator",
                        b / "operator.pt", "--out", tmp_path / "o")
    _assert_clean_error(code, err, "do not match the operator")
    with pytest.raises(ValueError):  # --debug shows the real exception instead
        main(["reconstruct", "--measurements", str(a / "measurements.pt"), "--operator", str(b / "operator.pt"),
              "--out", str(tmp_path / "o"), "--debug"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_clean_error(capsys, tmp_path, image):
    code, _, err = _run(capsys, "reconstruct", image, "--device", "cuda", "--out", tmp_path / "o")
    _assert_clean_error(code, err, "CUDA is not available")


# ------------------------------------------------------------------------------------ train / theory
def test_train_then_theory_from_the_log(capsys, tmp_path):
    tr = tmp_path / "train"
    code, stdout, err = _run(capsys, "train", "--delta", 4, "--dim", 60, "--seeds", 2, "--steps", 4, "--l2", 0.1,
                             "--step", 0.1, "--out", tr, "--quiet")
    assert code == 0, err
    assert (tr / "log.json").is_file() and (tr / "log.csv").is_file()
    assert "final overlap" in stdout
    from phasetorch.logs import TrainingLog

    log = TrainingLog.from_json(tr / "log.json")
    assert log["overlap"].shape == (5, 2)
    th = tmp_path / "theory"
    code, stdout, err = _run(capsys, "theory", "--logs", tr / "log.json", "--samples", 2000, "--replicates", 2,
                             "--out", th, "--quiet")
    assert code == 0, err
    assert (th / "prediction.json").is_file() and (th / "overlay.png").is_file()
    assert (th / "comparison.json").is_file()
    assert "sup" in stdout
    pred = json.loads((th / "prediction.json").read_text())
    assert pred  # a non-empty JSON document


def test_theory_without_logs_and_refusals(capsys, tmp_path):
    th = tmp_path / "t"
    code, stdout, err = _run(capsys, "theory", "--delta", 4, "--steps", 3, "--l2", 0.1, "--step", 0.1,
                             "--samples", 1000, "--replicates", 2, "--out", th, "--quiet")
    assert code == 0, err
    assert (th / "prediction.json").is_file() and (th / "overlay.png").is_file()
    assert not (th / "comparison.json").exists() and "no --logs" in stdout
    code, _, err = _run(capsys, "theory", "--delta", 4, "--steps", 3, "--preprocessing", "identity",
                        "--out", tmp_path / "i")
    _assert_clean_error(code, err, "identity")
    tr = tmp_path / "complex"
    assert _run(capsys, "train", "--delta", 4, "--dim", 20, "--seeds", 2, "--steps", 2, "--field", "complex",
                "--out", tr, "--quiet")[0] == 0
    # issue 15: complex logs are described by the complex-field DMFT (field taken from the log) ...
    code, _, err = _run(capsys, "theory", "--logs", tr / "log.json", "--samples", 2000, "--replicates", 2,
                        "--out", tmp_path / "c")
    assert code == 0, err
    # ... and refused when the theory is asked for the other field
    code, _, err = _run(capsys, "theory", "--logs", tr / "log.json", "--field", "real", "--out", tmp_path / "c2")
    _assert_clean_error(code, err, "field")


def test_train_af_then_theory_picks_the_amplitude_model(capsys, tmp_path):
    tr = tmp_path / "af"
    code, _, err = _run(capsys, "train", "--delta", 4, "--dim", 60, "--seeds", 2, "--steps", 3, "--algorithm", "af",
                        "--step", 0.5, "--field", "complex", "--out", tr, "--quiet")
    assert code == 0, err
    from phasetorch.logs import TrainingLog

    cfg = TrainingLog.from_json(tr / "log.json").config
    assert cfg["algorithm"] == "af" and cfg["theory_model"] == "amplitude_phase_retrieval"
    th = tmp_path / "th"
    code, stdout, err = _run(capsys, "theory", "--logs", tr / "log.json", "--samples", 2000, "--replicates", 2,
                             "--out", th)
    assert code == 0, err
    pred = json.loads((th / "prediction.json").read_text())
    assert "amplitude_phase_retrieval" in json.dumps(pred) and "amplitude_phase_retrieval" in err + stdout
    # the intensity-loss theory does not describe an amplitude-loss run
    code, _, err = _run(capsys, "theory", "--logs", tr / "log.json", "--algorithm", "wf", "--out", tmp_path / "x")
    _assert_clean_error(code, err, "amplitude_phase_retrieval", "drop the option")
    # af has no default step ramp
    code, _, err = _run(capsys, "train", "--delta", 4, "--dim", 20, "--steps", 2, "--algorithm", "af",
                        "--out", tmp_path / "y")
    _assert_clean_error(code, err, "--step")


def test_theory_below_the_threshold_is_refused(capsys, tmp_path):
    code, _, err = _run(capsys, "theory", "--delta", 0.3, "--steps", 5, "--out", tmp_path / "t")
    _assert_clean_error(code, err, "threshold")


# ------------------------------------------------------------------------------------ sweep
def test_sweep_writes_and_resumes(capsys, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--deltas", "2,6", "--algorithms", "raf", "--trials", 2, "--dim", 8, "--iters", 200,
            "--out", out]
    code, stdout, err = _run(capsys, *argv, "--quiet")
    assert code == 0, err
    data = json.loads((out / "results.json").read_text())
    assert set(data["cells"]) == {"raf@2", "raf@6"}
    assert (out / "phase_transition.png").is_file() and "raf:" in stdout
    code, stdout, err = _run(capsys, *argv)
    assert code == 0 and "resuming: 2 finished cell(s)" in stdout
    code, _, err = _run(capsys, *argv[:-2], "--dim", 16, "--out", out)
    _assert_clean_error(code, err, "different settings")


# ------------------------------------------------------------------------------------ bench
def test_bench_passes_arguments_to_the_script(capsys, tmp_path, monkeypatch):
    script = tmp_path / "benchmark.py"
    script.write_text("import sys, json\nprint(json.dumps(sys.argv[1:]))\nsys.exit(3 if '--fail' in sys.argv else 0)\n")
    monkeypatch.setattr(cli, "benchmark_script", lambda: script)
    code, out, _ = _run(capsys, "bench", "--quick", "--out", "x")
    assert code == 0 and json.loads(out.strip()) == ["--quick", "--out", "x"]
    code, _, _ = _run(capsys, "bench", "--fail")
    assert code == 3
    code, out, _ = _run(capsys, "bench", "--help")
    assert code == 0 and "usage: phasetorch bench" in out and '["--help"]' in out


def test_bench_without_the_script_is_a_clean_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "benchmark_script", lambda: tmp_path / "absent.py")
    code, _, err = _run(capsys, "bench")
    _assert_clean_error(code, err, "source checkout")


def test_bench_locates_the_repository_script():
    assert cli.benchmark_script() == Path(cli.__file__).resolve().parents[2] / "scripts" / "benchmark.py"


# ------------------------------------------------------------------------------------ demo
def test_demo_quick(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = _run(capsys, "demo", "--quick", "--out", out, "--quiet")
    assert code == 0, err
    for rel in ("reconstruction/grid.png", "reconstruction/convergence.png", "reconstruction/log.json",
                "theory/log.json", "theory/prediction.json", "theory/overlay.png", "theory/comparison.json",
                "summary.json"):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["quick"] is True
    assert 0 <= summary["reconstruction"]["rel_error"] < 1
    assert str(out) in stdout and "demo finished" in stdout


# ------------------------------------------------------------------------------------ scripts
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("name", ["reconstruct_image.py", "train.py", "phase_transition.py", "compare_theory.py"])
def test_scripts_have_help(capsys, name):
    import runpy

    mod = runpy.run_path(str(SCRIPTS / name), run_name="phasetorch_script")
    try:
        code = mod["run"](["--help"])
    except SystemExit as exc:  # compare_theory.py uses its own argparse
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and "usage:" in out


def test_scripts_run_the_cli_with_their_defaults(capsys, tmp_path):
    import runpy

    train = runpy.run_path(str(SCRIPTS / "train.py"), run_name="phasetorch_script")
    assert train["run"](["--dim", "40", "--seeds", "2", "--steps", "2", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    from phasetorch.logs import TrainingLog

    cfg = TrainingLog.from_json(tmp_path / "t" / "log.json").config
    assert cfg["delta"] == 4.0 and cfg["l2"] == 0.1 and cfg["dim"] == 40  # the script's defaults, then the override
    rec = runpy.run_path(str(SCRIPTS / "reconstruct_image.py"), run_name="phasetorch_script")
    assert rec["run"](["--size", "12", "--iters", "5", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["meta"]["image"].endswith("grace_hopper.png") and summary["meta"]["noise"] == "poisson:1800"


@pytest.mark.parametrize("algorithm", ["wf", "twf"])
def test_reconstruct_images_from_the_optimal_start_by_default(capsys, tmp_path, algorithm):
    """The papers' starts (identity for WF, trimmed for TWF) fail on coded-diffraction images with few
    masks; the CLI starts every spectral preset from ``optimal`` unless told ``--preprocessing preset``."""
    image = pio.bundled("grace_hopper")
    args = ["reconstruct", image, "--size", 32, "--masks", 4, "--algorithm", algorithm, "--dtype", "float64",
            "--quiet"]
    code, _, err = _run(capsys, *args, "--out", tmp_path / "default")
    assert code == 0, err
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    log = json.loads((tmp_path / "default" / "log.json").read_text())
    assert log["config"]["preprocessing"] == "optimal"
    assert summary["rel_error"] < 1e-2
    code, _, err = _run(capsys, *args, "--preprocessing", "preset", "--out", tmp_path / "paper")
    assert code == 0, err                           # the paper's start runs but ends far from the image
    log = json.loads((tmp_path / "paper" / "log.json").read_text())
    assert log["config"]["preprocessing"] == {"wf": "identity", "twf": "trimmed"}[algorithm]
    assert json.loads((tmp_path / "paper" / "summary.json").read_text())["rel_error"] > 0.5


def test_info_says_which_native_paths_are_in_force(capsys, monkeypatch):
    monkeypatch.delenv(allocator.CACHE_SWITCH, raising=False)
    monkeypatch.delenv(kernels.ENV_SWITCH, raising=False)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__ and info["cpu_threads"] == torch.get_num_threads()
    assert info["c_kernel"]["in_force"] == kernels.available()
    assert info["cpu_cache"]["available"] == allocator.cache_available()
    assert info["cpu_cache"]["available"] or info["cpu_cache"]["reason"]           # never "no" without a why
    monkeypatch.setenv(allocator.CACHE_SWITCH, "0")
    monkeypatch.setenv(kernels.ENV_SWITCH, "off")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU caching allocator" in out and f"no ({allocator.CACHE_SWITCH}=0)" in out
    assert f"no (disabled by {kernels.ENV_SWITCH}=off)" in out
    assert f"{allocator.CACHE_SWITCH}=0" in out.splitlines()[-1]                  # the switches set, listed
