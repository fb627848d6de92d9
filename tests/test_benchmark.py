"""The benchmark harness (benchmarks/harness.py / scripts/benchmark.py) in --quick --dry-run mode.

Tiny sizes and one repeat: these tests check the plumbing (every row present with a ratio or an
explicit reason, JSON and Markdown written, absent peers handled), never a timing.
"""

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import harness as bench  # noqa: E402  (benchmarks/ is not part of the installed package)

PEER_ROWS = (2, 3, 4, 7, 8, 9, 12)     # rows that compare with solvephase / deepinv / pty-chi


def _has_ratio(row):
    return isinstance(row.get("ratio"), (int, float)) and math.isfinite(row["ratio"]) and row["ratio"] > 0


@pytest.fixture(scope="module")
def dry_no_peers(tmp_path_factory):
    """One in-process dry run of every row with the peers treated as absent (as in CI)."""
    out = tmp_path_factory.mktemp("bench")
    lines = []
    result = bench.run(quick=True, dry_run=True, peers=False, json_path=str(out / "bench.json"),
                       markdown_path=str(out / "bench.md"), command="pytest dry run", log=lines.append)
    return result, out, lines


def test_dry_run_writes_json_with_every_row(dry_no_peers):
    result, out, _ = dry_no_peers
    data = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert data["format"] == "phasetorch.benchmark"
    assert data["mode"] == "dry" and data["repeats"] == 1
    assert [r["row"] for r in data["rows"]] == sorted(bench.ROWS)
    for row in data["rows"]:
        assert row["status"] in ("ok", "unavailable"), (row["row"], row.get("reason"), row.get("traceback"))
        if row["status"] == "ok":
            assert _has_ratio(row), row
        else:
            assert isinstance(row["reason"], str) and row["reason"].strip(), row
        assert row["goal"] and row["elapsed_s"] >= 0


def test_machine_description_and_command(dry_no_peers):
    result, out, _ = dry_no_peers
    mach = result["machine"]
    assert mach["torch"] == torch.__version__
    assert mach["torch_threads"] == torch.get_num_threads()
    assert isinstance(mach["cpu_model"], str) and mach["cpu_model"]
    assert mach["logical_cpus"] >= 1
    assert result["command"] == "pytest dry run"
    assert result["date"][:4].isdigit()


def test_absent_peers_say_how_to_install(dry_no_peers):
    result, _, _ = dry_no_peers
    rows = {r["row"]: r for r in result["rows"]}
    for number in PEER_ROWS:
        row = rows[number]
        peer = {4: "deepinv", 8: "ptychi"}.get(number, "solvephase")
        assert row["status"] == "unavailable" and row["ratio"] is None
        assert row["reason"] == f"{peer} {bench.PEER_HINT}", row["reason"]
    # the phasetorch side still runs and is reported without the peers
    for number in (2, 3):
        entries = [e for e in rows[number]["entries"] if e["library"] == "phasetorch"]
        assert entries and all(e["library"] == "phasetorch" for e in rows[number]["entries"])
        assert any(e.get("verified") and e["seconds"] > 0 for e in entries)
    large = rows[12]["entries"]                # the retained-memory and FFT-pair comparisons still run
    assert large and all(e["per_iteration_s"]["phasetorch"] >= 0 and e["fft_pair_s"] > 0 for e in large)
    spectral = rows[12]["spectral_start"]      # the spectral start with and without the C kernels: the same steps
    assert spectral["kernels_s"] > 0 and spectral["torch_path_s"] > 0
    assert spectral["matvecs"] == spectral["matvecs_torch_path"] > 0
    assert {c["goal"] for c in rows[12]["comparisons"]} == {"≥ 1", "reported"}
    spec = rows[4]["entries"]
    assert len(spec) == 1 and spec[0]["seconds"] > 0 and spec[0]["matvecs"] > 0
    assert spec[0]["cos_exact_eigenvector"] > 0.999
    succ = rows[7]
    assert set(succ["rates"]) == {f"phasetorch {p}" for p in bench.SETTINGS["dry"][7]["presets"]}
    assert all(0.0 <= r <= 1.0 for v in succ["rates"].values() for r in v if r is not None)


def test_rows_without_peers_report_ratios(dry_no_peers):
    result, _, _ = dry_no_peers
    rows = {r["row"]: r for r in result["rows"]}
    roof = rows[1]
    assert roof["status"] == "ok"
    assert len(roof["comparisons"]) == 3 and all(c["ratio"] > 0 for c in roof["comparisons"])
    assert roof["ratio"] == max(c["ratio"] for c in roof["comparisons"])
    dm = rows[6]
    if dm["status"] == "ok":
        assert len(dm["grid"]) == 4 and math.isfinite(dm["exponents"]["T"]) and math.isfinite(dm["exponents"]["N"])


def test_markdown_has_table_machine_date_command(dry_no_peers):
    result, out, _ = dry_no_peers
    md = (out / "bench.md").read_text(encoding="utf-8")
    assert "| # | comparison | phasetorch | reference | ratio | goal | met |" in md
    assert result["machine"]["cpu_model"] in md
    assert result["date"] in md and "pytest dry run" in md
    for number in bench.ROWS:
        assert f"## {number}. " in md
    table = md.split("\n\n")[2]                   # title, machine list, the table
    assert table.count("| 1 | gradient evaluation, complex") == 4


def test_summary_lines_cover_every_row(dry_no_peers):
    result, _, lines = dry_no_peers
    table = bench.summary_lines(result)
    assert {int(l.split()[0]) for l in table[2:] if l[:2].strip().isdigit()} == set(bench.ROWS)
    # row 1 reports the full gradient evaluations against one read of A in the table, beside the pairs
    gradient = {r["row"]: r for r in result["rows"]}[1]["gradient"]
    grad = gradient["comparisons"]
    assert [c["label"][:19] for c in grad] == ["gradient evaluation"] * 4
    assert [c["label"].split("batch ")[1][:2] for c in grad] == ["1", "1", "16", "16"]
    assert [c["goal"] for c in grad[2:]] == ["reported"] * 2 and all(c["met"] is None for c in grad[2:])
    assert gradient["ratio"] == max(c["ratio"] for c in grad[:2])     # the goal is the single signal's
    assert all(c["per_signal_ratio"] * 16 == pytest.approx(c["ratio"]) for c in grad[2:])
    labels = [l for l in table if l.startswith("1 ")]
    assert len(labels) == 7 and sum("gradient evaluation" in l for l in labels) == 4
    assert any(l.startswith("[1]") for l in lines)       # progress was logged


def test_peer_import_failure_is_unavailable(monkeypatch):
    # A peer whose import fails is reported with the install hint (never an ImportError).
    monkeypatch.setitem(sys.modules, "solvephase", None)
    monkeypatch.setitem(sys.modules, "deepinv", None)
    ctx = bench.Context(mode="dry", peers=True)
    for name in bench.PEERS:
        with pytest.raises(bench.Unavailable, match=r"not installed \(pip install -e '\.\[bench\]'\)"):
            ctx.peer(name)


def test_a_phasetorch_failure_fails_the_row(monkeypatch):
    # Only absent optional peers read "unavailable"; phasetorch's own failures (an ImportError included)
    # make the row an error, with the traceback, so that the dry-run test above fails on them.
    def boom(ctx):
        raise ImportError("cannot import name 'reconstruct' from 'phasetorch'")

    monkeypatch.setitem(bench.ROW_FUNCTIONS, 5, boom)
    row = bench.run_row(bench.Context(mode="dry", peers=False, log=lambda s: None), 5)
    assert row["status"] == "error" and row["reason"].startswith("ImportError: cannot import name 'reconstruct'")
    assert row["ratio"] is None and "Traceback" in row["traceback"]


def test_dmft_row_reports_what_it_measured_without_extrapolating(dry_no_peers):
    result, _, _ = dry_no_peers
    row = {r["row"]: r for r in result["rows"]}[6]
    largest = max(row["grid"], key=lambda e: e["T"] * e["N"])
    assert row["status"] == "unavailable" and row["ratio"] is None and "full benchmark" in row["reason"]
    (c,) = row["comparisons"]
    assert c["ratio"] is None and c["phasetorch_s"] == largest["seconds"]
    assert f"T={largest['T']}, N={largest['N']:g}" in c["label"] and "N=100000" not in c["label"]


def test_success_rate_counts_a_diverged_trial_as_a_failure(monkeypatch):
    # Three trials through one operator; trial 1 starts at 1 % of its norm, so WF's step μ/‖x₀‖² is 10⁴×
    # too large and it diverges: reconstruct freezes it (status DIVERGED) and the other two still succeed.
    from phasetorch.physics import GaussianMeasurement

    op = GaussianMeasurement(16, 160, complex=True, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(10)
    X = torch.view_as_complex(torch.randn(3, 16, 2, generator=g, dtype=torch.float64)) / math.sqrt(2)
    x0 = X + 0.2 * torch.view_as_complex(torch.randn(3, 16, 2, generator=g, dtype=torch.float64)) / math.sqrt(2)
    x0[1] = 0.01 * x0[1]
    real = bench.reconstruct
    monkeypatch.setattr(bench, "reconstruct", lambda op_, y_, **kw: real(op_, y_, init=x0, step=0.2, safeguard=False, **kw))
    with pytest.warns(RuntimeWarning, match="diverged"):
        ok, diverged = bench._pt_successes(op, X, op(X), "wf", 3000, 1e-5, 0)
    assert ok == [True, False, True] and diverged == 1
    # every trial diverged: reconstruct raises, and they all count as failures
    monkeypatch.setattr(bench, "reconstruct", lambda op_, y_, **kw: real(op_, y_, init=x0[1:2], step=0.2, safeguard=False, **kw))
    assert bench._pt_successes(op, X[1:2], op(X[1:2]), "wf", 3000, 1e-5, 0) == ([False], 1)


def test_quick_and_dry_runs_do_not_write_into_the_checkout():
    assert bench.default_json_path(False, False) == "results/benchmark.json"
    for quick, dry in ((True, False), (False, True), (True, True)):
        path = Path(bench.default_json_path(quick, dry))
        assert path.is_absolute() and path.parent.is_dir() and REPO not in path.parents
        path.parent.rmdir()


def test_script_entry_point_dry_run(tmp_path, monkeypatch, capsys):
    path, md = tmp_path / "r.json", tmp_path / "r.md"
    script = REPO / "scripts" / "benchmark.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--dry-run", "--no-peers", "--rows", "1",
                                      "--json", str(path), "--markdown", str(md)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [r["row"] for r in data["rows"]] == [1] and _has_ratio(data["rows"][0])
    assert "--dry-run" in data["command"]
    assert "ratio" in capsys.readouterr().out and md.is_file()
    # render again from the JSON without running anything
    md2 = tmp_path / "again.md"
    assert bench.main(["--from-json", str(path), "--markdown", str(md2)]) == 0
    assert md2.read_text(encoding="utf-8") == md.read_text(encoding="utf-8")


def test_bad_rows_argument_is_a_usage_error():
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--rows", "99"])
    with pytest.raises(ValueError, match="unknown row"):
        bench.run(rows=[42], dry_run=True, peers=False, log=lambda s: None)


def test_delta50_interpolation_and_power_law_fit():
    assert bench._delta50([2, 3, 4], [0.0, 0.25, 0.75]) == pytest.approx(3.5)
    assert bench._delta50([2, 3], [0.6, 1.0]) == 2.0
    assert bench._delta50([2, 3], [0.0, 0.4]) is None
    grid = [{"T": T, "N": N, "seconds": 1e-6 * T ** 2 * N} for T in (10, 20, 40) for N in (100, 1000)]
    a, b, c = bench._fit_power_law(grid)
    assert a == pytest.approx(2.0) and b == pytest.approx(1.0) and math.exp(c) == pytest.approx(1e-6)


def test_iteration_cost_script_reports_every_preset(tmp_path):
    """scripts/iteration_cost.py runs (tiny size, one repeat) and reports each preset and the start."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / "iteration_cost.py"
    spec = importlib.util.spec_from_file_location("iteration_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cost.json"
    assert mod.main(["--n", "8", "--max-iter", "40", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    names = [r["algorithm"] for r in data["rows"]]
    assert names == list(mod.PRESETS) + ["spectral_init"]
    for r in data["rows"][:-1]:
        assert r["iterations"] >= 1 and r["iterations"] <= 40 and r["total_s"] > 0 and r["start_s"] > 0
    assert data["rows"][-1]["products"] >= 1 and data["rows"][-1]["seconds"] > 0


def test_the_clock_settles_when_the_timed_library_changes(monkeypatch):
    """A switch of library sleeps SETTLE_S and makes one untimed call first (the other library's spinning
    threads go to sleep, this one's warm up again); the same library, or dry mode, calls once."""
    slept = []
    monkeypatch.setattr(bench.time, "sleep", slept.append)
    ctx = bench.Context(mode="quick", peers=False, log=lambda s: None)
    calls = {"a": 0, "b": 0}

    def run(name):
        calls[name] += 1
        return name

    assert ctx.clock(lambda: run("a"), "phasetorch")[1] == "a"
    ctx.clock(lambda: run("a"), "phasetorch")
    assert calls == {"a": 2, "b": 0} and slept == []
    ctx.clock(lambda: run("b"), "solvephase")
    assert calls == {"a": 2, "b": 2} and slept == [bench.SETTLE_S]
    ctx.clock(lambda: run("a"))                      # no library named: never settles
    assert calls["a"] == 3 and len(slept) == 1
    dry = bench.Context(mode="dry", peers=False, log=lambda s: None)
    dry.clock(lambda: run("a"), "phasetorch")
    dry.clock(lambda: run("b"), "solvephase")
    assert calls == {"a": 4, "b": 3} and len(slept) == 1
