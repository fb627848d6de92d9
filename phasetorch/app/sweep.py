r"""Phase-transition sweeps: empirical success rate versus oversampling δ = m/n (PhasePack-style).

For every algorithm and every δ of a grid, ``trials`` independent problems are drawn — a Gaussian
operator with n = ``dim`` unknowns and m = round(δ n) measurements (E|A_ij|² = 1, real or complex,
see :class:`phasetorch.physics.GaussianMeasurement`) and a signal x* with i.i.d. standard
(real or circular complex) Gaussian entries — noiseless intensities y = |Ax*|² are formed, and the
algorithm is run from its default initialisation for at most ``max_iter`` iterations. A trial is a
*success* (a run that diverges — :class:`phasetorch.errors.DivergenceError` — is a failure) when the relative error modulo the global phase,
min_φ ‖x̂ − e^{iφ}x*‖/‖x*‖ (:func:`phasetorch.metrics.relative_error`), is below ``tol`` (1e-5,
PhasePack's criterion: Chandra, Zhong, Hontz, McCulloch, Studer & Goldstein, "PhasePack: a phase
retrieval library", Asilomar 2017). The success rate of a cell (algorithm, δ) is successes/trials.

Trial k of the cell at δ uses seed ``trial_seed(seed, k, δ)`` for both the operator and the signal,
so every algorithm sees exactly the same problems (common random numbers) and a cell can be
recomputed alone.

Resumable: results live in ``OUT/results.json``, keyed by ``"<algorithm>@<δ>"`` and rewritten
atomically after each finished cell. Re-running the same sweep skips the finished cells; a re-run may
add algorithms or δ values, but must keep the problem settings (dim, field, trials, tol, max_iter,
init, preprocessing, dtype, seed) — otherwise it stops with an error rather than mixing results.

Reference lines on the plot (the asymptotic theory, n → ∞):

* spectral weak-recovery threshold δ_c of the sweep's ``preprocessing`` — of ``optimal``, the lowest
  of all preprocessings, when the algorithms keep their own (:func:`phasetorch.theory.spectral_threshold`;
  1/2 real, 1 complex for ``optimal`` — Mondelli & Montanari 2018, Luo, Alghamdi & Lu 2019);
* injectivity: m ≥ 2n − 1 (real) and m ≥ 4n − 4 (complex) measurements determine x up to the
  global phase (Balan, Casazza & Edidin 2006; Conca, Edidin, Hering & Vinzant 2015): δ = 2 and 4.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import DivergenceError
from ..io import load_json, save_figure, save_json, use_agg
from ..metrics import relative_error
from ..physics import GaussianMeasurement
from ..solve import reconstruct
from ..tensors import check_int, check_number, complex_dtype_of, make_generator, parse_dtype
from ..theory import spectral_threshold

RESULTS_NAME = "results.json"
FIGURE_NAME = "phase_transition.png"
INJECTIVITY = {"real": 2.0, "complex": 4.0}
SETTINGS = ("dim", "field", "trials", "tol", "max_iter", "init", "preprocessing", "dtype", "seed")


# ---------------------------------------------------------------------------------------- grid
def parse_grid(spec: str) -> List[float]:
    """δ values from ``"start:stop:step"`` (stop included), ``"a,b,c"`` or a single number.

    >>> parse_grid("1:2:0.25")
    [1.0, 1.25, 1.5, 1.75, 2.0]
    """
    text = str(spec).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = (check_number(v, "a grid bound") for v in parts)
            check_number(step, "the grid step", 0.0, strict=True)
            check_number(stop, "the grid stop", start)
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + k * step, 10) for k in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"bad grid {spec!r}: use start:stop:step (e.g. 1:8:0.25, stop included) or a comma list "
                         f"(e.g. 2,3,4)") from None
    try:
        if not values:
            raise ValueError
        for v in values:
            check_number(v, "δ", 0.0, strict=True)
    except ValueError:
        raise ValueError(f"bad grid {spec!r}: the values must be positive numbers") from None
    return sorted(set(values))


def cell_key(algorithm: str, delta: float) -> str:
    """Key of a cell in results.json: ``"raf@4"``, ``"wf@2.25"``."""
    return f"{algorithm}@{float(delta):g}"


def trial_seed(seed: int, trial: int, delta: float) -> int:
    """Seed of trial ``trial`` at ``delta`` (independent of the algorithm): a fixed integer mix."""
    return (int(seed) * 1_000_003 + int(trial) * 7_919 + int(round(float(delta) * 1000))) % (2**62)


# ---------------------------------------------------------------------------------------- storage
class SweepResults:
    """The contents of ``results.json``: the problem settings and the finished cells.

    ``cells[key]`` = {"algorithm", "delta", "trials", "successes", "success_rate", "rel_errors",
    "iterations", "seconds"}.
    """

    def __init__(self, settings: Dict, cells: Optional[Dict[str, Dict]] = None, path: Optional[Path] = None):
        self.settings = dict(settings)
        self.cells: Dict[str, Dict] = dict(cells or {})
        self.path = path

    @classmethod
    def open(cls, out_dir, settings: Dict) -> "SweepResults":
        """Load ``out_dir/results.json`` if present (its settings must equal ``settings``), else start empty."""
        path = Path(out_dir) / RESULTS_NAME
        if not path.exists():
            return cls(settings, path=path)
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("cells"), dict) or "settings" not in data:
            raise ValueError(f"{path} is not a phasetorch sweep results file; choose another --out directory")
        old = data["settings"]
        diff = [f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in SETTINGS if old.get(k) != settings.get(k)]
        if diff:
            raise ValueError(f"{path} holds a sweep with different settings: {', '.join(diff)}; "
                             f"use the same settings to resume, or another --out directory")
        return cls(old, data["cells"], path=path)

    @classmethod
    def load(cls, path) -> "SweepResults":
        """Read a results.json (a file or the directory holding it) without checking settings."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_NAME
        data = load_json(path)
        if not isinstance(data, dict) or "cells" not in data or "settings" not in data:
            raise ValueError(f"{path} is not a phasetorch sweep results file")
        return cls(data["settings"], data["cells"], path=path)

    def done(self, algorithm: str, delta: float) -> bool:
        return cell_key(algorithm, delta) in self.cells

    def record(self, cell: Dict) -> None:
        self.cells[cell_key(cell["algorithm"], cell["delta"])] = cell
        self.save()

    def save(self) -> Path:
        if self.path is None:
            raise ValueError("SweepResults has no path; open it with SweepResults.open(out_dir, settings)")
        return save_json({"settings": self.settings, "cells": self.cells}, self.path)

    def algorithms(self) -> List[str]:
        seen: List[str] = []
        for c in self.cells.values():
            if c["algorithm"] not in seen:
                seen.append(c["algorithm"])
        return seen

    def curve(self, algorithm: str):
        """(δ values, success rates) of one algorithm, sorted by δ."""
        pts = sorted((c["delta"], c["success_rate"]) for c in self.cells.values() if c["algorithm"] == algorithm)
        return [p[0] for p in pts], [p[1] for p in pts]

    def transition(self, algorithm: str, level: float = 0.5) -> Optional[float]:
        """Smallest δ from which the success rate stays ≥ ``level`` (None if it never does)."""
        deltas, rates = self.curve(algorithm)
        best = None
        for d, r in zip(reversed(deltas), reversed(rates)):
            if r >= level:
                best = d
            else:
                break
        return best


# ---------------------------------------------------------------------------------------- trials
def random_signal(dim: int, field: str, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """x* with i.i.d. N(0, 1) (real) or (g₁ + i g₂)/√2 (complex) entries, drawn from ``seed``."""
    g = make_generator(int(seed) + 1)
    if field == "complex":
        z = torch.randn(dim, 2, generator=g, dtype=torch.float64) * math.sqrt(0.5)
        return torch.view_as_complex(z).to(complex_dtype_of(dtype))
    return torch.randn(dim, generator=g, dtype=torch.float64).to(dtype)


def run_cell(algorithm: str, delta: float, settings: Dict, device: str = "cpu") -> Dict:
    """Run the ``settings["trials"]`` trials of one cell and return its record (see :class:`SweepResults`)."""
    dim, field = int(settings["dim"]), settings["field"]
    dtype = parse_dtype(settings["dtype"])
    m = max(1, int(round(float(delta) * dim)))
    errors, iterations = [], []
    t0 = time.perf_counter()
    for k in range(int(settings["trials"])):
        s = trial_seed(settings["seed"], k, delta)
        op = GaussianMeasurement(dim, m, complex=(field == "complex"), seed=s, dtype=dtype).to(device)
        x = random_signal(dim, field, s, dtype).to(device)
        y = op(x)
        kwargs = dict(algorithm=algorithm, init=settings["init"], max_iter=int(settings["max_iter"]),
                      progress=False, seed=s)
        if settings.get("preprocessing"):
            kwargs["preprocessing"] = settings["preprocessing"]
        try:
            rec = reconstruct(op, y, **kwargs)
        except DivergenceError as exc:  # a diverged trial is a failed trial, not a failed sweep
            errors.append(float("inf"))
            iterations.append(int(exc.iteration) if exc.iteration is not None else int(settings["max_iter"]))
            continue
        err = float(relative_error(rec.x, x))
        errors.append(err if math.isfinite(err) else float("inf"))
        iterations.append(int(rec.iterations))
    successes = sum(e < float(settings["tol"]) for e in errors)
    return {"algorithm": algorithm, "delta": float(delta), "m": m, "trials": len(errors), "successes": successes,
            "success_rate": successes / max(1, len(errors)), "rel_errors": errors, "iterations": iterations,
            "seconds": time.perf_counter() - t0}


def run_sweep(out_dir, deltas: Sequence[float], algorithms: Sequence[str], trials: int, dim: int,
              field: str = "complex", tol: float = 1e-5, max_iter: int = 1000, init: str = "spectral",
              preprocessing: Optional[str] = None, dtype: str = "float64", seed: int = 0, device: str = "cpu",
              progress: bool = True, log: Optional[Callable[[str], None]] = None) -> SweepResults:
    """Run (or resume) a sweep into ``out_dir``; returns the results (also in ``out_dir/results.json``)."""
    if field not in ("real", "complex"):
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    for name, value in (("trials", trials), ("dim", dim), ("max_iter", max_iter)):
        check_int(value, f"{name} (a positive integer)", 1)
    check_number(tol, "tol (a positive success threshold)", 0.0, strict=True)
    if dtype not in ("float32", "float64"):      # stored by name in results.json
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    algorithms = [a.strip() for a in algorithms if a.strip()]
    if not algorithms:
        raise ValueError("give at least one algorithm (e.g. --algorithms wf,raf)")
    settings = {"dim": int(dim), "field": field, "trials": int(trials), "tol": float(tol), "max_iter": int(max_iter),
                "init": init, "preprocessing": preprocessing, "dtype": dtype, "seed": int(seed)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    results = SweepResults.open(out_dir, settings)
    todo = [(a, float(d)) for a in algorithms for d in deltas if not results.done(a, d)]
    skipped = len(algorithms) * len(deltas) - len(todo)
    if log is not None and skipped:
        log(f"resuming: {skipped} finished cell(s) in {results.path} skipped, {len(todo)} to run")
    bar = tqdm(todo, desc="sweep", unit="cell", disable=not progress, leave=False)
    for algorithm, delta in bar:
        bar.set_postfix_str(cell_key(algorithm, delta))
        results.record(run_cell(algorithm, delta, settings, device=device))
    bar.close()
    return results


# ---------------------------------------------------------------------------------------- figure
def reference_lines(field: str, preprocessing: Optional[str] = None) -> Dict[str, float]:
    """{label: δ} of the theory lines drawn on the plot (spectral threshold, injectivity)."""
    name = preprocessing or "optimal"
    lines = {}
    try:
        dc = float(spectral_threshold(name, field=field))
        lines[f"spectral threshold ({name}: δ = {dc:.3g})"] = dc
    except ValueError:
        # rank-based preprocessings (orthogonality, weighted) have no closed-form threshold
        pass
    lines[f"injectivity ({field}: δ = {INJECTIVITY[field]:g})"] = INJECTIVITY[field]
    return lines


def plot_sweep(results: SweepResults, lines: Optional[Dict[str, float]] = None):
    """Success rate vs δ, one curve per algorithm, with vertical theory lines; returns the Figure."""
    use_agg()
    import matplotlib.pyplot as plt

    s = results.settings
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for algorithm in results.algorithms():
        d, r = results.curve(algorithm)
        ax.plot(d, r, marker="o", ms=3.5, label=algorithm)
    styles = iter([":", "--", "-."])
    for label, delta in (lines or {}).items():
        ax.axvline(delta, color="0.35", ls=next(styles, ":"), lw=1.2, label=label)
    ax.set_xlabel("oversampling δ = m/n")
    ax.set_ylabel(f"success rate (rel. error < {s['tol']:g})")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{s['field']} Gaussian, n = {s['dim']}, {s['trials']} trials, ≤ {s['max_iter']} iterations",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def write_figure(results: SweepResults, out_dir, lines: Optional[Dict[str, float]] = None) -> Path:
    return save_figure(plot_sweep(results, lines), Path(out_dir) / FIGURE_NAME)


def summary_lines(results: SweepResults, algorithms: Optional[Iterable[str]] = None) -> List[str]:
    """One line per algorithm: the δ from which it succeeds at least half of the time."""
    out = []
    for a in algorithms or results.algorithms():
        t = results.transition(a)
        out.append(f"{a}: success ≥ 50% from δ = {t:g}" if t is not None else f"{a}: success < 50% on the whole grid")
    return out


__all__ = ["parse_grid", "cell_key", "trial_seed", "SweepResults", "random_signal", "run_cell", "run_sweep",
           "reference_lines", "plot_sweep", "write_figure", "summary_lines", "RESULTS_NAME", "FIGURE_NAME"]
