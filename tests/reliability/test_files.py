"""Files and resources (issue 13 items 6–8, issue 14 item 6): atomic writes, measurement/operator
pairing, non-regular files, image-size caps before decoding, bounded sweeps, concurrent sweeps into one
folder, and the bundled data of an installed (non-editable) copy."""

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from phasetorch import io as pio
from phasetorch.app import jobs, sweep as sw
from phasetorch.app.cli import main
from phasetorch.phantoms import shepp_logan
from phasetorch.physics import CodedDiffraction, load_operator

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def image(tmp_path):
    return str(pio.save_image(shepp_logan(24), tmp_path / "phantom.png", normalise=False))


# ------------------------------------------------------------------------------- atomic writes (13.6)
def test_atomic_write_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "log.json"
    target.write_text('{"complete": true}\n')

    def dies_half_way(tmp):
        with open(tmp, "w") as fh:
            fh.write('{"trunc')
        raise KeyboardInterrupt          # a kill at the worst moment

    with pytest.raises(KeyboardInterrupt):
        pio.atomic_write(target, dies_half_way)
    assert json.loads(target.read_text()) == {"complete": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.json"]      # no temporary left behind
    pio.atomic_write(target, lambda tmp: Path(tmp).write_text("{}"))
    assert target.read_text() == "{}"


def test_every_output_of_simulate_and_reconstruct_goes_through_atomic_write(capsys, tmp_path, image, monkeypatch):
    written = []
    real = pio.atomic_write

    def spy(path, write):
        written.append(Path(path).resolve())
        return real(path, write)

    monkeypatch.setattr(pio, "atomic_write", spy)
    assert _run(capsys, "simulate", image, "--masks", 3, "--out", tmp_path / "s", "--quiet")[0] == 0
    assert _run(capsys, "reconstruct", "--measurements", tmp_path / "s" / "measurements.pt", "--operator",
                tmp_path / "s" / "operator.pt", "--iters", 5, "--out", tmp_path / "r", "--quiet")[0] == 0
    assert _run(capsys, "train", "--delta", 4, "--dim", 12, "--seeds", 2, "--steps", 2, "--out", tmp_path / "t",
                "--quiet")[0] == 0
    files = [p.resolve() for d in ("s", "r", "t") for p in (tmp_path / d).iterdir()]
    assert len(files) >= 14 and all(f in written for f in files), set(files) - set(written)
    names = {p.name for d in ("s", "r", "t") for p in (tmp_path / d).iterdir()}
    assert not any(".tmp" in n for n in names)


def test_concurrent_writers_use_distinct_temporary_names(tmp_path):
    seen = []
    pio.atomic_write(tmp_path / "results.json", lambda tmp: (seen.append(tmp.name), tmp.write_text("1")))
    pio.atomic_write(tmp_path / "results.json", lambda tmp: (seen.append(tmp.name), tmp.write_text("2")))
    assert seen[0] != seen[1] and all(n.endswith(".tmp.json") and n.startswith(".results.") for n in seen)


# ------------------------------------------------------------------------------- operator identity (13.6)
def test_a_measurements_file_refuses_the_operator_of_another_seed(capsys, tmp_path, image):
    for seed in (0, 1):
        assert _run(capsys, "simulate", image, "--masks", 3, "--seed", seed, "--out", tmp_path / f"s{seed}",
                    "--quiet")[0] == 0
    meas, other = tmp_path / "s0" / "measurements.pt", tmp_path / "s1" / "operator.pt"
    raw = torch.load(meas, weights_only=True)
    assert len(raw["operator"]["state_sha256"]) == 64 and raw["operator"]["config"]["seed"] == 0
    code, _, err = _run(capsys, "reconstruct", "--measurements", meas, "--operator", other, "--out", tmp_path / "x")
    assert code == 1 and "were not made by this operator: seed=1 (the measurements were made with 0)" in err
    assert "--force" in err and not (tmp_path / "x").exists()
    code, out, err = _run(capsys, "reconstruct", "--measurements", meas, "--operator", other, "--iters", 3,
                          "--force", "--out", tmp_path / "forced", "--quiet")
    assert code == 0 and "warning:" in err and "--force given" in err
    assert json.loads((tmp_path / "forced" / "summary.json").read_text())["meta"]["operator_match"] is False
    # the library: same config, other random entries; a float64 copy of the right operator is accepted
    op = load_operator(tmp_path / "s0" / "operator.pt")
    assert pio.load_measurements(meas, operator=op.double())["operator_match"] is True
    tampered = load_operator(tmp_path / "s0" / "operator.pt")
    with torch.no_grad():
        for v in tampered.state_dict().values():       # the stored masks, in place
            v.mul_(-1.0)
    with pytest.raises(ValueError, match="different random entries"):
        pio.load_measurements(meas, operator=tampered)
    assert pio.load_measurements(meas, operator=tampered, force=True)["operator_match"] is False
    torch.save({"y": raw["y"]}, tmp_path / "bare.pt")                     # no identity recorded: nothing to check
    assert pio.load_measurements(tmp_path / "bare.pt", operator=op)["operator_match"] is None


def test_operator_identity_is_dtype_independent_and_seed_dependent():
    a = pio.operator_identity(CodedDiffraction((5, 6), 2, seed=3))
    assert a == pio.operator_identity(CodedDiffraction((5, 6), 2, seed=3).double())
    assert a["state_sha256"] != pio.operator_identity(CodedDiffraction((5, 6), 2, seed=4))["state_sha256"]


# ------------------------------------------------------------------------------- non-regular files (13.6)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_every_loader_refuses_a_fifo_at_once(capsys, tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    for load in (pio.load_measurements, pio.load_image, pio.load_signal, pio.load_json, pio.image_shape):
        with pytest.raises(ValueError, match="not a regular file"):
            load(fifo)
    code, _, err = _run(capsys, "reconstruct", "--measurements", fifo, "--operator", fifo, "--out", tmp_path / "o")
    assert code == 1 and "not a regular file" in err
    code, _, err = _run(capsys, "theory", "--logs", fifo, "--out", tmp_path / "o")
    assert code == 1 and "not a regular file" in err
    assert time.perf_counter() - t0 < 10


# ------------------------------------------------------------------------------- decompression bombs (13.6)
def _png_header(width: int, height: int) -> bytes:
    import zlib
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    chunk = len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big")


def test_image_size_is_read_from_the_header_and_capped_before_decoding(capsys, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000) + b"\0" * 1000)
    assert pio.image_shape(bomb) == (30000, 30000)
    with pytest.raises(ValueError, match=r"30000×30000 = 900\.0 Mpixel, above the cap of 64 Mpixel"):
        pio.load_image(bomb)
    code, _, err = _run(capsys, "reconstruct", bomb, "--out", tmp_path / "o")
    assert code == 1 and "Mpixel" in err
    write_jpeg(torch.full((3, 32, 48), 120, dtype=torch.uint8), str(tmp_path / "c.jpg"))
    assert pio.image_shape(tmp_path / "c.jpg") == (32, 48)
    good = pio.save_image(shepp_logan((20, 30)), tmp_path / "g.png")
    assert pio.image_shape(good) == (20, 30) and pio.load_image(good).shape == (20, 30)
    with pytest.raises(ValueError, match="cap of 0.0001 Mpixel"):
        pio.load_image(good, max_pixels=100)
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(ValueError, match="cannot read image"):
        pio.load_image(tmp_path / "t.png")


# ------------------------------------------------------------------------------- bounded sweeps (13.7)
def test_sweep_grids_and_memory_are_bounded_up_front(capsys, tmp_path, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"1e\+18 points, more than the cap of 10000"):
        sw.parse_grid("1:1e9:1e-9")
    with pytest.raises(ValueError, match="cap"):
        sw.parse_grid(",".join(str(1 + k) for k in range(10_001)))
    assert time.perf_counter() - t0 < 1
    code, _, err = _run(capsys, "sweep", "--deltas", "1:1e9:1e-9", "--out", tmp_path / "s")
    assert code == 1 and "1e+18 points" in err and not (tmp_path / "s").exists()
    many = sw.parse_grid("1:6000:1")
    with pytest.raises(ValueError, match="12000 cells"):
        sw.run_sweep(tmp_path / "c", many, ["wf", "raf"], trials=1, dim=4, progress=False)
    monkeypatch.setattr(jobs, "available_memory", lambda device=None: 10 * 1024 ** 2)
    code, _, err = _run(capsys, "sweep", "--deltas", "2,8", "--dim", 512, "--out", tmp_path / "m")
    assert code == 1 and "GiB are available" in err and "--dim" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------- concurrent sweeps (13.8)
SETTINGS = {"dim": 8, "field": "complex", "trials": 1, "tol": 1e-5, "max_iter": 10, "init": "spectral",
            "preprocessing": None, "dtype": "float64", "seed": 0}


def _write_cells(out: str, algorithm: str, count: int) -> None:
    res = sw.SweepResults.open(out, SETTINGS)
    for k in range(count):
        res.record({"algorithm": algorithm, "delta": 1.0 + k, "m": 8, "trials": 1, "successes": 1,
                    "success_rate": 1.0, "rel_errors": [0.0], "iterations": [1], "seconds": 0.0})


def test_two_processes_writing_one_sweep_folder_lose_no_cell(tmp_path):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_write_cells, args=(str(tmp_path), a, 40)) for a in ("wf", "raf")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cells = json.loads((tmp_path / sw.RESULTS_NAME).read_text())["cells"]
    assert len(cells) == 80 and {c["algorithm"] for c in cells.values()} == {"wf", "raf"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", sw.RESULTS_NAME]


def test_a_sweep_skips_cells_another_process_finished(tmp_path, monkeypatch):
    calls = []

    def fake_cell(algorithm, delta, settings, device="cpu"):
        calls.append((algorithm, delta))
        _write_cells(str(tmp_path), "raf", 3)          # meanwhile, another sweep finishes raf@1..3
        return {"algorithm": algorithm, "delta": float(delta), "m": 8, "trials": 1, "successes": 0,
                "success_rate": 0.0, "rel_errors": [1.0], "iterations": [1], "seconds": 0.0}

    monkeypatch.setattr(sw, "run_cell", fake_cell)
    res = sw.run_sweep(tmp_path, [1.0, 2.0, 3.0], ["wf", "raf"], trials=1, dim=8, field="complex", max_iter=10,
                       progress=False)
    assert [a for a, _ in calls] == ["wf", "wf", "wf"] and len(res.cells) == 6
    assert len(json.loads((tmp_path / sw.RESULTS_NAME).read_text())["cells"]) == 6


# ------------------------------------------------------------------------------- installed copy (14.6)
def test_an_installed_copy_finds_its_bundled_data_from_any_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "phasetorch", src / "phasetorch", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                           "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import phasetorch.io as io; p = io.bundled('grace_hopper.png'); print(p); "
            "print(io.bundled('siemens_star_small')); print((p.parent / 'LICENSE.tike').is_file(), "
            "(p.parent / 'README.md').is_file()); print(io.load_image(p).shape)")
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert Path(lines[0]) == target / "phasetorch" / "data" / "grace_hopper.png"
    assert lines[1].endswith("siemens_star_small.npz.bz2") and lines[2] == "True True"
    assert lines[3] == "torch.Size([256, 256])"
    bench = subprocess.run([sys.executable, "-m", "phasetorch", "bench"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
    assert bench.returncode == 1 and "needs a source checkout" in bench.stderr
