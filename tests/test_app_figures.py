"""The figures a user looks at: labelled image grid on a fixed error scale, the DMFT overlay with one
error-bar convention, the theory-only figure's labels, and the phase-transition plot (issue 14.8/14.9)."""

import json

import pytest
import torch

from phasetorch import io as pio
from phasetorch.app import figures, sweep as sw
from phasetorch.app.cli import main
from phasetorch.phantoms import shepp_logan
from phasetorch.theory import dmft, simulate


def _texts(fig):
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        leg = ax.get_legend()
        if leg is not None:
            out += [t.get_text() for t in leg.get_texts()]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return out


def test_grid_figure_labels_colourbars_and_a_fixed_error_scale():
    truth = shepp_logan(24, dtype=torch.float64)
    rec = truth + 0.01
    small = figures.grid_figure(truth, [("start x₀", truth * 0.5), ("reconstruction x̂", rec)],
                                (rec - truth).abs(), 1.0, 0.0123)
    images = [ax.images[0] for ax in small.axes if ax.images]
    assert len(images) == 4 and len(small.axes) == 8                       # every tile has its colour bar
    titles = [ax.get_title() for ax in small.axes if ax.images]
    assert titles[0] == "truth x*" and "relative error 0.0123" in titles[3]
    assert images[3].get_clim() == (0.0, 1.0)                              # not min–max of the error
    assert images[1].get_clim() == images[0].get_clim() == (0.0, 1.0)     # estimates on the truth's scale


def test_reconstruct_grid_png_is_a_readable_labelled_figure(tmp_path):
    image = pio.save_image(shepp_logan(20), tmp_path / "p.png", normalise=False)
    assert main(["reconstruct", str(image), "--masks", "5", "--iters", "30", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    grid = pio.load_image(tmp_path / "r" / "grid.png")
    assert grid.shape[1] >= 1000 and grid.shape[0] >= 250                # not 394×100 pixels
    err = pio.load_image(tmp_path / "r" / "error.png")
    rel = json.loads((tmp_path / "r" / "summary.json").read_text())["rel_error"]
    assert float(err.max()) < 0.5 and rel < 0.2                              # |x̂ − x*| on the fixed scale [0, 1]


@pytest.fixture(scope="module")
def small_theory():
    pred = dmft(4.0, steps=3, step=0.1, l2=0.1, samples=1000, replicates=2, seed=0, progress=False)
    log = simulate(4.0, dim=40, seeds=[0, 1, 2], steps=3, step=0.1, l2=0.1, progress=False)
    return pred, log


def test_theory_figure_states_one_error_bar_convention(small_theory):
    pred, log = small_theory
    fig = figures.theory_figure(pred, [log])
    texts = " | ".join(_texts(fig))
    assert "DMFT, mean ± 1 SE over 2 replicates" in texts and "simulation, mean ± 1 SE over 3 seeds" in texts
    assert "2 SE" not in texts
    assert "preprocessing T = optimal" in texts and "ridge λ = 0.1" in texts and "step η = 0.1" in texts
    assert len(fig.axes) == 6                                                # curves, and simulation − DMFT
    assert any("simulation − DMFT" in t for t in _texts(fig))


def test_theory_only_figure_uses_spelled_out_labels(small_theory):
    pred, _ = small_theory
    texts = _texts(figures.prediction_figure(pred))
    joined = " | ".join(texts)
    assert "rel_error" not in joined and "l2 =" not in joined
    assert figures.LABELS["rel_error"] in texts and figures.LABELS["overlap"] in texts
    assert "DMFT prediction: δ = 4, ridge λ = 0.1" in joined and "preprocessing T = optimal" in joined


def test_wilson_intervals():
    lo, hi = sw.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = sw.wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0)
    lo, hi = sw.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert sw.wilson_interval(0, 0) == (0.0, 1.0)


def test_phase_transition_draws_each_algorithms_threshold_and_intervals(tmp_path):
    settings = {"dim": 8, "field": "complex", "trials": 4, "tol": 1e-5, "max_iter": 10, "init": "spectral",
                "preprocessing": None, "dtype": "float64", "seed": 0}
    res = sw.SweepResults(settings, path=tmp_path / sw.RESULTS_NAME)
    for a in ("taf", "lbfgs"):
        for d, k in ((2.0, 1), (4.0, 4)):
            res.cells[sw.cell_key(a, d)] = {"algorithm": a, "delta": d, "trials": 4, "successes": k,
                                            "success_rate": k / 4}
    fig = sw.plot_sweep(res, sw.reference_lines("complex"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "m/n"
    labels = ax.get_legend_handles_labels()[1]
    assert any(lb.startswith("taf: spectral δ_c = 1.87 (orthogonality)") for lb in labels), labels
    assert any(lb.startswith("lbfgs: spectral δ_c = 1 (mm)") for lb in labels), labels
    assert "injectivity (complex: δ = 4)" in labels
    bars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(bars) == 2                                                   # Wilson intervals on every curve
    pio.save_figure(fig, tmp_path / "pt.png")
    assert (tmp_path / "pt.png").stat().st_size > 5000
