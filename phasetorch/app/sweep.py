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

Concurrent sweeps into one folder are safe: each finished cell is merged into results.json under an
exclusive lock on ``OUT/.lock`` (:func:`fcntl.flock`, held for the read–merge–write; the write goes
through a unique temporary name, :func:`phasetorch.io.atomic_write`), so no finished cell of any
process is lost, and a cell another process has finished is skipped.

Several processes (``torchrun … -m phasetorch sweep … --distributed``, or any initialised
:mod:`phasetorch.distributed` group): the cells still to run are dealt out over the ranks (cell j
to rank j mod N); after each round every rank's finished cells are gathered and rank 0, the one
writer, merges them into results.json, so a stopped run resumes exactly as a single-process one.
Every rank returns all the cells. The settings must agree across ranks (checked).

Bounded resources: a grid of more than :data:`MAX_CELLS` cells (algorithms × δ values) is refused
before anything is built — ``1:1e9:1e-9`` would be 10¹⁸ points —, so is a sweep of more than
:data:`MAX_RUNS` reconstructions (cells × trials), and so is a problem whose
Gaussian matrix (m = round(δ_max n) rows) does not fit in the available memory.

Success rates are drawn with Wilson score 95% intervals (:func:`wilson_interval`: for k successes
in N trials, p̂ = k/N, z = 1.96, centre (p̂ + z²/2N)/(1 + z²/N), half-width
z √(p̂(1−p̂)/N + z²/4N²)/(1 + z²/N); Wilson, J. Am. Stat. Assoc. 22, 1927), which stay inside [0, 1]
and do not collapse to zero width at 0 or 1.

Reference lines on the plot (the asymptotic theory, n → ∞):

* each algorithm's own spectral weak-recovery threshold δ_c, in its colour: that of its preset's
  preprocessing (or of the sweep's ``preprocessing`` when one is given) by
  :func:`phasetorch.theory.spectral_threshold` (e.g. 1/2 real, 1 complex for ``optimal`` — Mondelli &
  Montanari 2018, Luo, Alghamdi & Lu 2019; trimmed, orthogonality, mm …), none where the
  preprocessing has no closed-form threshold (identity, weighted) or the start is not spectral;
* injectivity: m ≥ 2n − 1 (real) and m ≥ 4n − 4 (complex) measurements determine x up to the
  global phase (Balan, Casazza & Edidin 2006; Conca, Edidin, Hering & Vinzant 2015): δ = 2 and 4.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .. import distributed as D
from ..errors import DivergenceError
from ..io import load_json, save_figure, save_json, use_agg
from ..metrics import relative_error
from ..optim.presets import PRESETS
from ..physics import GaussianMeasurement
from ..solve import reconstruct
from ..tensors import check_int, check_number, complex_dtype_of, make_generator, parse_dtype
from ..theory import spectral_threshold
from .jobs import check_memory, problem_bytes

try:  # POSIX; without it (Windows) concurrent sweeps into one folder are not protected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RESULTS_NAME = "results.json"
FIGURE_NAME = "phase_transition.png"
LOCK_NAME = ".lock"
#: The most cells (algorithms × δ values) a sweep may have, and so the most δ values of a grid.
MAX_CELLS = 10_000
#: most reconstructions one sweep may ask for (cells × trials): 10⁷ runs of even the smallest problem take
#: days on a CPU, and 10⁵ trials already pin a success rate to ±0.003 (Wilson 95%)
MAX_RUNS = 10_000_000
INJECTIVITY = {"real": 2.0, "complex": 4.0}
SETTINGS = ("dim", "field", "trials", "tol", "max_iter", "init", "preprocessing", "dtype", "seed")


# ---------------------------------------------------------------------------------------- grid
class GridTooLarge(ValueError):
    """A grid or a sweep with more than :data:`MAX_CELLS` points or cells."""


def _too_many(spec, count: float) -> GridTooLarge:
    return GridTooLarge(f"grid {spec!r} has {count:.3g} points, more than the cap of {MAX_CELLS}; use a coarser "
                        f"step or a shorter range")


def parse_grid(spec: str) -> List[float]:
    """δ values from ``"start:stop:step"`` (stop included), ``"a,b,c"`` or a single number.

    Refused (ValueError, with the count) above :data:`MAX_CELLS` values, before the list is built.

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
            ratio = (stop - start) / step
            if not math.isfinite(ratio) or ratio + 1 > MAX_CELLS:
                raise _too_many(spec, ratio + 1)
            values = [round(start + k * step, 10) for k in range(int(math.floor(ratio + 1e-9)) + 1)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
            if len(values) > MAX_CELLS:
                raise _too_many(spec, len(values))
    except GridTooLarge:
        raise
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
@contextlib.contextmanager
def folder_lock(folder):
    """An exclusive :func:`fcntl.flock` on ``folder/.lock`` (created, with the folder, if absent) for
    the duration of the block; a no-op where fcntl does not exist."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_cells(path: Path, settings: Dict) -> Optional[Tuple[Dict, Dict[str, Dict]]]:
    """(settings, cells) of an existing results.json whose settings equal ``settings``; None if absent."""
    if not path.exists():
        return None
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict) or "settings" not in data:
        raise ValueError(f"{path} is not a phasetorch sweep results file; choose another --out directory")
    old = data["settings"]
    diff = [f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in SETTINGS if old.get(k) != settings.get(k)]
    if diff:
        raise ValueError(f"{path} holds a sweep with different settings: {', '.join(diff)}; "
                         f"use the same settings to resume, or another --out directory")
    return old, data["cells"]

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
        cells = _read_cells(path, settings)
        return cls(settings if cells is None else cells[0], None if cells is None else cells[1], path=path)

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

    def refresh(self) -> None:
        """Merge in the cells other processes have written to results.json since it was read."""
        if self.path is None:
            return
        found = _read_cells(self.path, self.settings)
        if found is not None:
            self.cells = {**found[1], **self.cells}

    def record(self, cell: Dict) -> None:
        """Add a finished cell and merge it into results.json under the folder's lock (no cell of a
        concurrent sweep into the same folder is lost)."""
        if self.path is None:
            raise ValueError("SweepResults has no path; open it with SweepResults.open(out_dir, settings)")
        with folder_lock(self.path.parent):
            self.refresh()
            self.cells[cell_key(cell["algorithm"], cell["delta"])] = cell
            self._write()

    def save(self) -> Path:
        """Write results.json (merged with what is on disk) under the folder's lock."""
        if self.path is None:
            raise ValueError("SweepResults has no path; open it with SweepResults.open(out_dir, settings)")
        with folder_lock(self.path.parent):
            self.refresh()
            return self._write()

    def _write(self) -> Path:
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
        err = float(relative_error(rec.x, x, signal_dims=len(op.signal_shape)))
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
    deltas = [float(d) for d in deltas]
    if not deltas:
        raise ValueError("give at least one δ value (e.g. --deltas 2,4,6)")
    cells = len(algorithms) * len(deltas)
    if cells > MAX_CELLS:
        raise GridTooLarge(f"the sweep has {len(algorithms)} algorithm(s) × {len(deltas)} δ values = {cells} cells, "
                           f"more than the cap of {MAX_CELLS}; use fewer δ values or algorithms")
    if cells * int(trials) > MAX_RUNS:
        raise GridTooLarge(f"the sweep asks for {cells} cell(s) × {int(trials)} trials = {cells * int(trials):.3g} "
                           f"reconstructions, more than the cap of {MAX_RUNS:.0e}; use fewer --trials (10⁴ per cell "
                           f"pin a success rate to ±0.01) or fewer cells")
    m_max = max(1, int(round(max(deltas) * int(dim))))
    check_memory(problem_bytes(int(dim), m_max, matrix=m_max * int(dim) * (2 if field == "complex" else 1),
                               dtype=parse_dtype(dtype)),
                 f"a trial at δ = {max(deltas):g} (a dense {field} Gaussian matrix of {m_max}×{int(dim)})",
                 "use a smaller --dim or a smaller largest δ", torch.device(device))
    settings = {"dim": int(dim), "field": field, "trials": int(trials), "tol": float(tol), "max_iter": int(max_iter),
                "init": init, "preprocessing": preprocessing, "dtype": dtype, "seed": int(seed)}
    if D.world_size() > 1:
        D.check_same({"settings": settings, "algorithms": algorithms, "deltas": deltas, "out": str(out_dir)},
                     "sweep settings")
        return _run_sweep_ranks(out_dir, settings, algorithms, deltas, cells, device, progress, log)
    results = SweepResults.open(out_dir, settings)
    todo = [(a, d) for a in algorithms for d in deltas if not results.done(a, d)]
    skipped = cells - len(todo)
    if log is not None and skipped:
        log(f"resuming: {skipped} finished cell(s) in {results.path} skipped, {len(todo)} to run")
    bar = tqdm(todo, desc="sweep", unit="cell", disable=not progress, leave=False)
    for algorithm, delta in bar:
        results.refresh()                   # a concurrent sweep into the same folder may have done it
        if results.done(algorithm, delta):
            continue
        bar.set_postfix_str(cell_key(algorithm, delta))
        results.record(run_cell(algorithm, delta, settings, device=device))
    bar.close()
    return results


def _run_sweep_ranks(out_dir, settings: Dict, algorithms, deltas, cells: int, device: str, progress: bool,
                     log) -> SweepResults:
    """:func:`run_sweep` over the ranks of the process group: rank 0 reads results.json and deals
    the cells to run (cell j to rank j mod N); after each round the finished cells are gathered and
    rank 0 records them (the one writer); every rank returns every cell."""
    size, me = D.world_size(), D.rank()
    main = me == 0
    results = SweepResults.open(out_dir, settings) if main else None
    todo = [(a, d) for a in algorithms for d in deltas if not results.done(a, d)] if main else None
    todo = D.broadcast_object(todo)
    if main and log is not None and cells - len(todo):
        log(f"resuming: {cells - len(todo)} finished cell(s) in {results.path} skipped, {len(todo)} to run "
            f"over {size} processes")
    mine = todo[me::size]
    rounds = -(-len(todo) // size)
    bar = tqdm(total=len(todo), desc="sweep", unit="cell", disable=not (progress and main), leave=False)
    for j in range(rounds):
        cell = run_cell(*mine[j], settings, device=device) if j < len(mine) else None
        finished = [c for c in D.all_gather_object(cell) if c is not None]
        if main:
            for c in finished:
                results.record(c)
        bar.update(len(finished))
    bar.close()
    if main:
        results.refresh()
    state = D.broadcast_object(None if not main else (results.settings, results.cells, str(results.path)))
    return results if main else SweepResults(state[0], state[1], path=Path(state[2]))


# ---------------------------------------------------------------------------------------- figure
def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson score interval (95% for the default z) of a success probability from k of N trials.

    centre c = (p̂ + z²/2N)/(1 + z²/N), half-width h = z √(p̂(1−p̂)/N + z²/4N²)/(1 + z²/N), p̂ = k/N
    (Wilson, J. Am. Stat. Assoc. 22, 1927); (0, 1) for N = 0.
    """
    k, n = int(successes), int(trials)
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def reference_lines(field: str, preprocessing: Optional[str] = None) -> Dict[str, float]:
    """{label: δ} of the algorithm-independent theory lines: injectivity, m ≥ 2n − 1 (real) / 4n − 4
    (complex). The spectral thresholds are per algorithm (:func:`algorithm_thresholds`)."""
    return {f"injectivity ({field}: δ = {INJECTIVITY[field]:g})": INJECTIVITY[field]}


def algorithm_thresholds(algorithms: Sequence[str], field: str, preprocessing=None,
                         init: str = "spectral") -> Dict[str, Optional[Tuple[str, float]]]:
    """{algorithm: (preprocessing name, δ_c) or None}: the spectral weak-recovery threshold of the start
    each algorithm runs from — its preset's preprocessing, or ``preprocessing`` when the sweep sets one —
    by :func:`phasetorch.theory.spectral_threshold`; None without a spectral start or a closed-form
    threshold (identity, weighted)."""
    cache: Dict[Tuple[str, int], Optional[float]] = {}
    out: Dict[str, Optional[Tuple[str, float]]] = {}
    for a in algorithms:
        pre = preprocessing if preprocessing else (PRESETS[a].preprocessing if a in PRESETS else None)
        if init != "spectral" or pre is None:
            out[a] = None
            continue
        name = pre if isinstance(pre, str) else getattr(pre, "__name__", repr(pre))
        key = (name, id(pre))
        if key not in cache:
            try:
                cache[key] = float(spectral_threshold(pre, field=field))
            except ValueError:
                cache[key] = None
        out[a] = None if cache[key] is None else (name, cache[key])
    return out


def plot_sweep(results: SweepResults, lines: Optional[Dict[str, float]] = None):
    """Success rate vs m/n, one curve per algorithm with Wilson 95% intervals and its own spectral
    threshold (a dotted line in its colour), plus the ``lines`` (injectivity); returns the Figure."""
    use_agg()
    import matplotlib.pyplot as plt

    s = results.settings
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    algorithms = results.algorithms()
    thresholds = algorithm_thresholds(algorithms, s["field"], s.get("preprocessing"), s.get("init", "spectral"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_d = sorted({cell["delta"] for cell in results.cells.values()})
    spacing = min((b - a for a, b in zip(all_d, all_d[1:])), default=1.0)
    curves, marks = [], []
    for i, algorithm in enumerate(algorithms):
        c = colors[i % len(colors)]
        cells = sorted((cell for cell in results.cells.values() if cell["algorithm"] == algorithm),
                       key=lambda cell: cell["delta"])
        dodge = (i - (len(algorithms) - 1) / 2) * 0.04 * spacing        # keep overlapping intervals apart
        d = [cell["delta"] + dodge for cell in cells]
        r = [cell["success_rate"] for cell in cells]
        ci = [wilson_interval(cell["successes"], cell["trials"]) for cell in cells]
        lo = [max(0.0, rate - a) for rate, (a, _) in zip(r, ci)]
        hi = [max(0.0, b - rate) for rate, (_, b) in zip(r, ci)]
        curves.append(ax.errorbar(d, r, yerr=[lo, hi], marker="o", ms=3.5, color=c, capsize=2, elinewidth=0.8,
                                  label=algorithm))
        th = thresholds.get(algorithm)
        if th is not None:
            marks.append(ax.axvline(th[1], color=c, ls=":", lw=1.3,
                                    label=f"{algorithm}: spectral δ_c = {th[1]:.3g} ({th[0]})"))
    without = [a for a in algorithms if thresholds.get(a) is None]
    if without:
        marks.append(ax.plot([], [], " ", label=f"{', '.join(without)}: no closed-form spectral δ_c")[0])
    styles = iter(["--", "-.", ":"])
    for label, delta in (lines or {}).items():
        marks.append(ax.axvline(delta, color="0.35", ls=next(styles, "--"), lw=1.2, label=label))
    ax.set_xlabel("m/n")
    ax.set_ylabel(f"success rate (rel. error < {s['tol']:g})")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{s['field']} Gaussian, n = {s['dim']}, {s['trials']} trials per point (Wilson 95% intervals), "
                 f"≤ {s['max_iter']} iterations", fontsize=9)
    ax.grid(alpha=0.3)
    handles = curves + marks
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
              title="success rate, Wilson 95% interval", title_fontsize=7)
    fig.tight_layout()
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
           "reference_lines", "algorithm_thresholds", "wilson_interval", "plot_sweep", "write_figure",
           "summary_lines", "folder_lock", "GridTooLarge", "RESULTS_NAME", "FIGURE_NAME", "LOCK_NAME", "MAX_CELLS",
           "MAX_RUNS"]
