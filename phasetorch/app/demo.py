r"""``phasetorch demo``: the library's main job on bundled data, in about half a minute on a laptop CPU.

Part 1 — imaging. The bundled Grace Hopper photograph (``grace_hopper.png``, package data; the
generated Shepp–Logan phantom if it is missing), resized to 96×96 (the size is passed explicitly: the
commands keep an image's own size), is the real object x*. Its coded diffraction patterns
y = |F D_l x*|², l = 1..6 (octanary masks, Candès, Li & Soltanolkotabi 2015) are corrupted by Poisson
shot noise at 360 expected photons per measurement (``poisson:360``, 2·10⁷ photons in all;
:class:`phasetorch.physics.noise.PoissonNoise`), and x* is reconstructed by the default algorithm ``auto``
(L-BFGS on the amplitude loss, then on the quasi-likelihood with the variance law fitted to the
residuals; at most 100 iterations a stage) from its spectral initialisation (preprocessing ``optimal``,
Luo, Alghamdi & Lu 2019). Written to ``OUT/reconstruction/``: truth, init, reconstruction and error
PNGs, grid.png (labelled tiles with colour bars, the error on the truth's scale), convergence.png,
log.json, summary.json.

Part 2 — theory. Spectral-initialised regularized Wirtinger flow on real Gaussian phase retrieval
(δ = 4, d = 1000, ‖x*‖ = 1, preprocessing ``optimal``, λ = 0.1, constant step η = 0.1, 30 steps,
16 seeds; :func:`phasetorch.theory.simulate`) against its DMFT prediction
(:func:`phasetorch.theory.dmft`, 4 replicates × 5·10⁴ Monte-Carlo samples; after Chen & Shen, arXiv
2509.23527, 2025). At d = 1000 the finite-size offsets are below the seed-to-seed spread, so the
overlay is a meaningful comparison (at d = 500 the simulation mean visibly leads the theory).
Written to ``OUT/theory/``: log.json/log.csv (simulation), prediction.json, overlay.png
(:func:`phasetorch.app.figures.theory_figure`: mean ± 1 SE everywhere, and simulation − DMFT) and
comparison.json (the sup gaps between theory and the simulation mean).

``OUT/summary.json`` collects the headline numbers of both parts. ``quick=True`` shrinks every size
so that the whole demo runs in seconds (the test suite uses it); a quick run (d = 60, 2 seeds) is far
too small for the n → ∞ theory, so its comparison is reported as "not judged" rather than
agree/disagree. The full demo takes about 30 s single-threaded on a 2-core CPU (the spectral
starts of the d = 1000 simulation are most of it).

:func:`theory_comparison` (used by ``scripts/compare_theory.py``) repeats part 2 over a grid of δ
and λ and draws :func:`phasetorch.app.figures.comparison_figure`: overlap, estimation error and
training loss versus iteration, theory over simulation. The jobs are those of :mod:`phasetorch.app.jobs`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import io as pio
from ..phantoms import shepp_logan
from .common import Echo
from .figures import comparison_figure
from .jobs import comparison_dict, reconstruction_job, simulate_problem, sup_gap_lines, theory_job, train_job

#: ``photons``: expected photons per measurement (``--noise poisson:N``).
FULL = {"size": 96, "masks": 6, "photons": 360, "algorithm": "auto", "iters": 100,
        "delta": 4.0, "dim": 1000, "seeds": 16, "steps": 30, "l2": 0.1, "step": 0.1, "preprocessing": "optimal",
        "samples": 50_000, "replicates": 4}
QUICK = {"size": 24, "masks": 4, "photons": 4000, "algorithm": "auto", "iters": 20,
         "delta": 4.0, "dim": 60, "seeds": 2, "steps": 4, "l2": 0.1, "step": 0.1, "preprocessing": "optimal",
         "samples": 2_000, "replicates": 2}


def demo_image(out: Path, image: Optional[str], echo) -> Tuple[str, str]:
    """(path, description) of the demo's object: ``image``, the bundled photo, or a generated phantom."""
    if image is not None:
        return image, image
    try:
        return str(pio.bundled("grace_hopper")), "bundled Grace Hopper photo (grace_hopper.png)"
    except FileNotFoundError:
        path = pio.save_image(shepp_logan(256), out / "shepp_logan.png", normalise=False)
        echo(f"the bundled photo is missing from {pio.DATA_DIR}: using a generated Shepp–Logan phantom")
        return str(path), "generated Shepp–Logan phantom"


def run_demo(out="demo_output", quick: bool = False, device: torch.device = torch.device("cpu"), seed: int = 0,
             image: Optional[str] = None, echo=None) -> Dict[str, Any]:
    """Run both parts of the demo into ``out`` (see the module docstring); returns the summary dict."""
    echo = echo or Echo()
    cfg = QUICK if quick else FULL
    outp = Path(out)
    progress = not echo.quiet
    t_start = time.perf_counter()

    # ---------------------------------------------------------------- part 1: imaging
    path, description = demo_image(outp, image, echo)
    echo(f"[1/2] coded-diffraction imaging: {description}, {cfg['size']}×{cfg['size']}, {cfg['masks']} masks, "
         f"Poisson noise at {cfg['photons']:g} photons per measurement")
    t0 = time.perf_counter()
    prob = simulate_problem(path, None, model="cdp", size=(cfg["size"],), masks=cfg["masks"],
                            noise=f"poisson:{cfg['photons']:g}", seed=seed, device=device, echo=echo)
    rec = reconstruction_job(prob["op"], prob["y"], outp / "reconstruction", x_true=prob["x_true"],
                             algorithm=cfg["algorithm"], iters=cfg["iters"], preprocessing=cfg["preprocessing"],
                             seed=seed, display=prob["display"],
                             progress=progress, echo=echo, meta=prob["meta"])
    t_rec = time.perf_counter() - t0
    echo.result(f"      relative error {_first(rec['rel_error']):.4f}, PSNR {_first(rec['psnr']):.2f} dB "
                f"after {_first(rec['iterations'])} iterations ({t_rec:.1f} s)")

    # ---------------------------------------------------------------- part 2: theory vs simulation
    echo(f"[2/2] DMFT vs simulation: regularized WF, δ = {cfg['delta']:g}, d = {cfg['dim']}, {cfg['seeds']} seeds, "
         f"λ = {cfg['l2']:g}, η = {cfg['step']:g}, {cfg['steps']} steps")
    t0 = time.perf_counter()
    theory_dir = outp / "theory"
    log = train_job(theory_dir, delta=cfg["delta"], dim=cfg["dim"], seeds=cfg["seeds"], steps=cfg["steps"],
                    l2=cfg["l2"], step=cfg["step"], preprocessing=cfg["preprocessing"], seed=seed, device=device,
                    progress=progress)
    th = theory_job(theory_dir, delta=cfg["delta"], steps=cfg["steps"], l2=cfg["l2"], step=cfg["step"],
                    preprocessing=cfg["preprocessing"], samples=cfg["samples"], replicates=cfg["replicates"],
                    seed=seed, logs=[log], device=device, progress=progress)
    t_theory = time.perf_counter() - t0
    why = f"--quick: d = {cfg['dim']} with {cfg['seeds']} seeds is too small a run for the n → ∞ theory"
    for line in sup_gap_lines(th["comparison"], judged=not quick, why=why):
        echo.result("      " + line)

    comparison = comparison_dict(th["comparison"])
    if quick:
        comparison = dict(comparison, verdict=f"not judged ({why})")
    summary = {"settings": dict(cfg, quick=bool(quick), seed=int(seed), device=str(device), image=description),
               "reconstruction": {k: rec[k] for k in ("rel_error", "psnr", "overlap", "iterations", "seconds")
                                  if k in rec},
               "theory": {"comparison": comparison, "seconds": t_theory},
               "seconds": time.perf_counter() - t_start}
    pio.save_json(summary, outp / "summary.json")
    echo.result(f"demo finished in {summary['seconds']:.1f} s; results in {outp}/:")
    echo.result(f"  {outp / 'reconstruction' / 'grid.png'}  (truth | start | reconstruction | error, labelled)")
    echo.result(f"  {outp / 'reconstruction' / 'convergence.png'}")
    echo.result(f"  {outp / 'theory' / 'overlay.png'}  (DMFT over simulation, mean ± 1 SE)")
    echo.result(f"  {outp / 'summary.json'}")
    return summary


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) else v


# ------------------------------------------------------------------------------- theory grid
def theory_comparison(out, deltas: Sequence[float] = (3.0, 4.0, 6.0), l2s: Sequence[float] = (0.0, 0.1),
                      dim: int = 1000, seeds: int = 8, steps: int = 40, step: float = 0.1,
                      preprocessing: str = "optimal", samples: int = 50_000, replicates: int = 4, seed: int = 0,
                      device: torch.device = torch.device("cpu"), echo=None) -> Dict[str, Any]:
    """Part 2 of the demo for every (δ, λ) of a grid, each into ``out/delta{δ}_lambda{λ}/``, plus
    ``out/comparison.png`` (:func:`comparison_figure`) and ``out/comparison.json`` (sup gaps per run).
    """
    echo = echo or Echo()
    outp = Path(out)
    runs: List[Tuple[str, Any, Any]] = []
    gaps: Dict[str, Any] = {}
    for delta in deltas:
        for l2 in l2s:
            label = f"δ = {delta:g}, λ = {l2:g}"
            sub = outp / f"delta{delta:g}_lambda{l2:g}"
            echo(f"{label}: simulating d = {dim} × {seeds} seeds, solving the DMFT ({samples} × {replicates})")
            log = train_job(sub, delta=delta, dim=dim, seeds=seeds, steps=steps, l2=l2, step=step,
                            preprocessing=preprocessing, seed=seed, device=device, progress=not echo.quiet)
            th = theory_job(sub, delta=delta, steps=steps, l2=l2, step=step, preprocessing=preprocessing,
                            samples=samples, replicates=replicates, seed=seed, logs=[log], device=device,
                            progress=not echo.quiet)
            for line in sup_gap_lines(th["comparison"]):
                echo.result(f"{label}: {line}")
            runs.append((label, th["prediction"], log))
            gaps[label] = comparison_dict(th["comparison"])
    fig_path = pio.save_figure(comparison_figure(runs), outp / "comparison.png")
    pio.save_json({"settings": {"deltas": list(deltas), "l2s": list(l2s), "dim": dim, "seeds": seeds,
                                "steps": steps, "step": step, "preprocessing": preprocessing, "samples": samples,
                                "replicates": replicates, "seed": seed}, "runs": gaps}, outp / "comparison.json")
    return {"figure": str(fig_path), "runs": runs, "gaps": gaps}


__all__ = ["run_demo", "theory_comparison", "demo_image", "FULL", "QUICK"]
