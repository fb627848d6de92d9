r"""The application layer's pictures: object displays (PNG) and matplotlib figures of images, logs and predictions.

Displays
--------
:func:`save_display` writes an object as PNG(s): its modulus (``amplitude``), its phase map
(``phase``) or both (``complex``, the phase as ``*_phase.png``). Phase maps are
:func:`phase_view` ``(x, c)`` = arg(x e^{−ic}) with c the circular mean phase
:func:`circular_mean_phase` of the truth, so a phase map spanning less than 2π does not wrap.

Figures (each returns a matplotlib Figure on the headless Agg canvas; save with
:func:`phasetorch.io.save_figure`)
-------
* :func:`grid_figure` — truth | start | reconstruction | error, each tile titled and with its
  colour bar; the estimates on the truth's scale and the error |x̂ − x*| on the fixed scale
  [0, range of x*] (never min–max normalised), with the relative error in its title;
* :func:`convergence_figure` — relative error (when known) and loss versus iteration, log scale;
* :func:`signal_figure` — moduli of a 1-D reconstruction, its start and the truth per coordinate;
* :func:`theory_figure` — the DMFT prediction over simulation logs: top row the curves, bottom row
  simulation − DMFT, where the DMFT's Monte-Carlo band is visible; one error-bar convention
  throughout, **mean ± 1 SE** (over seeds for the simulation, over replicates for the DMFT),
  stated in the legend; the long-time fixed point dashed when it exists. Without logs it is the
  prediction alone (:func:`prediction_figure`);
* :func:`comparison_figure` — overlap, estimation error and loss: DMFT lines over simulation
  mean ± 1 SE markers, for several (δ, λ) runs.

Axis labels and titles use :data:`LABELS` and :func:`settings_title` (spelled-out parameter names:
"preprocessing T = optimal", "ridge λ = 0.1"), never raw column names.

:func:`log_column` reads a column of a :class:`~phasetorch.logs.TrainingLog` (or a
:class:`~phasetorch.theory.Prediction`) as a float64 CPU tensor; :func:`has_column` says whether it exists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import io as pio
from ..tensors import mean_se
from ..theory.compare import simulation_columns
from ..theory.overlay import fixed_point_values, fmt_param

__all__ = ["phase_view", "circular_mean_phase", "save_display", "has_column", "log_column", "grid_figure",
           "convergence_figure", "signal_figure", "theory_figure", "prediction_figure", "comparison_figure",
           "settings_title", "LABELS", "SHORT_LABELS", "PANELS", "SE_LEGEND"]

#: Axis labels of the log / prediction columns.
LABELS = {"overlap": "overlap |⟨x_t, x*⟩| / ‖x_t‖", "rel_error": "relative error ‖x_t − x*‖ / ‖x*‖",
          "loss": "training loss", "m": "⟨x_t, x*⟩", "inner": "⟨x_t, x*⟩", "q": "‖x_t‖²", "norm": "‖x_t‖",
          "grad_norm": "gradient norm ‖∇L(x_t)‖"}
#: Short names of the columns (for the difference panels).
SHORT_LABELS = {"overlap": "overlap", "rel_error": "relative error", "loss": "training loss", "m": "⟨x_t, x*⟩",
                "inner": "⟨x_t, x*⟩", "q": "‖x_t‖²", "norm": "‖x_t‖", "grad_norm": "gradient norm"}
#: The panels of :func:`comparison_figure`: (log column, title).
PANELS = (("overlap", LABELS["overlap"]), ("rel_error", LABELS["rel_error"]), ("loss", LABELS["loss"]))
#: The one error-bar convention of the theory figures.
SE_LEGEND = "mean ± 1 SE"


# ---------------------------------------------------------------------------------------- displays
def phase_view(x: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """arg(x e^{−i·center}) ∈ (−π, π]: the phase map, cut as far as possible from ``center``.

    With ``center`` the circular mean of the true phase, a phase map spanning less than 2π does not
    wrap (a phase of π − ε would otherwise flip to −π + ε and show black instead of white).
    A real ``x`` is returned as is.
    """
    if not x.is_complex():
        return x
    return torch.angle(x * complex(math.cos(center), -math.sin(center)))


def circular_mean_phase(x: torch.Tensor) -> float:
    """arg Σ x_j/|x_j| (0 for a real or all-zero x)."""
    if not x.is_complex():
        return 0.0
    a = x.abs()
    u = torch.where(a > 0, x / a.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(x)).sum()
    return float(torch.angle(u)) if float(u.abs()) > 0 else 0.0


def save_display(x: torch.Tensor, path, display: str, center: float = 0.0) -> List[Path]:
    """Write an object as PNG(s): modulus (``amplitude``), phase (``phase``) or both (``complex``).

    Phase maps are :func:`phase_view` ``(x, center)``, min–max normalised; ``complex`` adds ``*_phase.png``.
    Returns the paths written.
    """
    path = Path(path)
    written = []
    if display in ("amplitude", "complex"):
        written.append(pio.save_image(x.abs() if x.is_complex() else x, path))
    if display == "phase":
        written.append(pio.save_image(phase_view(x, center), path))
    if display == "complex":
        written.append(pio.save_image(phase_view(x, center), path.with_name(path.stem + "_phase" + path.suffix)))
    return written


# ---------------------------------------------------------------------------------------- log columns
def log_column(log, name: str) -> torch.Tensor:
    """Column ``name`` of a log or prediction as a float64 CPU tensor (KeyError when absent)."""
    v = log[name]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    return v.detach().to("cpu", torch.float64)


def has_column(log, name: str) -> bool:
    """Whether :func:`log_column` ``(log, name)`` exists."""
    try:
        log_column(log, name)
        return True
    except (KeyError, ValueError, IndexError):
        return False


def settings_title(params: Dict[str, Any], config: Optional[Dict[str, Any]] = None) -> str:
    """"δ = 4, ridge λ = 0.1, step η = 0.1, d = 1000, preprocessing T = optimal[, noise σ = …]" from a
    prediction's ``params`` (falling back on a log's ``config``); the WF ramp when there is no step."""
    cfg = dict(config or {})

    def get(key):
        v = params.get(key)
        return cfg.get(key) if v is None else v

    step = get("step")
    parts = [f"δ = {fmt_param(get('delta'))}", f"ridge λ = {fmt_param(get('l2') or 0.0)}",
             f"step η = {fmt_param(step)}" if step is not None else "step: the WF ramp"]
    dim = cfg.get("dim", cfg.get("n"))
    if dim is not None:
        parts.append(f"d = {dim}")
    pre = get("preprocessing")
    if pre is not None:
        parts.append(f"preprocessing T = {pre if isinstance(pre, str) else getattr(pre, '__name__', pre)}")
    if get("noise"):
        parts.append(f"noise σ = {fmt_param(get('noise'))}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------- images
def grid_figure(truth: Optional[torch.Tensor], estimates: Sequence[Tuple[str, torch.Tensor]],
                error: Optional[torch.Tensor] = None, error_scale: Optional[float] = None,
                rel_error: Optional[float] = None, quantity: str = "value of x", cmap: str = "gray"):
    """Truth | estimates … | error, one titled tile each with its colour bar (a matplotlib Figure).

    ``truth`` and ``estimates`` ((title, image)) are real (H, W) views (modulus or phase map, see
    ``quantity``); the estimates are drawn on the truth's scale [min x*, max x*] (values outside are
    clipped, not rescaled), so the tiles compare honestly. ``error`` = |x̂ − x*| is drawn on the fixed
    scale [0, ``error_scale``] (the truth's range), with ``rel_error`` in its title.
    """
    pio.use_agg()
    import matplotlib.pyplot as plt

    tiles: List[Tuple[str, torch.Tensor, Tuple[float, float], str, str]] = []
    lo = hi = None
    if truth is not None:
        t = truth.detach().to("cpu", torch.float64)
        lo, hi = float(t.min()), float(t.max())
        if hi <= lo:
            hi = lo + 1.0
        tiles.append(("truth x*", t, (lo, hi), cmap, quantity))
    for title, img in estimates:
        v = img.detach().to("cpu", torch.float64)
        rng = (lo, hi) if lo is not None else (float(v.min()), float(v.max()) if float(v.max()) > float(v.min())
                                               else float(v.min()) + 1.0)
        tiles.append((title, v, rng, cmap, quantity))
    if error is not None:
        e = error.detach().to("cpu", torch.float64)
        scale = float(error_scale) if error_scale is not None and error_scale > 0 else max(float(e.max()), 1e-30)
        title = "error |x̂ − x*|"
        if rel_error is not None:
            title += f"\nrelative error {rel_error:.3g}, max {float(e.max()):.3g}"
        tiles.append((title, e, (0.0, scale), "magma", f"|x̂ − x*| (0 … range of x*)"))
    h, w = tiles[0][1].shape
    tile_w = 3.3
    fig, axes = plt.subplots(1, len(tiles), figsize=(tile_w * len(tiles), tile_w * h / w + 0.9), squeeze=False)
    for ax, (title, img, (vmin, vmax), cm, label) in zip(axes[0], tiles):
        im = ax.imshow(img.numpy(), cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.set_label(label, fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- logs
def convergence_figure(log, title: str = ""):
    """Relative error (when known) and loss versus iteration, log scale, one line per sample.

    A log whose config says ``twin_resolved`` (Fourier magnitudes) labels the error as modulo the
    twin image, the convention of the reported final error.
    """
    pio.use_agg()
    import matplotlib.pyplot as plt

    cols = [c for c in ("rel_error", "loss") if has_column(log, c)]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.6 * max(1, len(cols)), 3.4), squeeze=False)
    it = log_column(log, "iteration")
    twin = bool(getattr(log, "config", {}).get("twin_resolved"))
    for ax, c in zip(axes[0], cols):
        v = log_column(log, c)
        v = v.reshape(v.shape[0], -1)
        for b in range(v.shape[1]):
            ax.semilogy(it[: v.shape[0]].tolist(), v[:, b].clamp(min=1e-16).tolist(), lw=1.3)
        ax.set_xlabel("iteration")
        ax.set_ylabel({"rel_error": "relative error" + (" (x̂ or its twin)" if twin else ""),
                       "loss": "loss"}[c])
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def signal_figure(x_hat: torch.Tensor, x_true: Optional[torch.Tensor] = None, x_init: Optional[torch.Tensor] = None):
    """Moduli of a 1-D (or flattened) reconstruction, its initial point and the truth, per coordinate."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    for v, label, style in ((x_true, "truth", "k-"), (x_init, "init", "C1:"), (x_hat, "reconstruction", "C0--")):
        if v is not None:
            ax.plot(v.detach().reshape(-1).abs().cpu().tolist(), style, lw=1.2, label=label)
    ax.set_xlabel("coordinate")
    ax.set_ylabel("modulus")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- theory
def theory_figure(prediction, logs: Sequence = (), quantities: Sequence[str] = ("overlap", "rel_error", "loss"),
                  fixed: bool = True):
    """The DMFT prediction (line and ± 1 SE band over its replicates) over simulation logs (seed mean
    ± 1 SE), one column per quantity; with logs a second row shows simulation − DMFT, where the
    DMFT band (centred on 0) and the simulation's error bars are on a readable scale.
    """
    pio.use_agg()
    import matplotlib.pyplot as plt

    logs = list(logs)
    quantities = tuple(quantities)
    rows = 2 if logs else 1
    fig, axes = plt.subplots(rows, len(quantities), figsize=(4.6 * len(quantities), 3.5 * rows + 0.4),
                             squeeze=False, sharex="col")
    params = dict(getattr(prediction, "params", {}) or {})
    fp = fixed_point_values(params) if fixed else None
    pit = prediction["iteration"].to(torch.float64)
    reps = int(getattr(prediction, "replicates", 0) or 0)
    th_label = f"DMFT, {SE_LEGEND} over {reps} replicates"
    for j, q in enumerate(quantities):
        ax = axes[0][j]
        th = prediction[q].to(torch.float64)
        se = torch.nan_to_num(prediction[q + "_se"].to(torch.float64), nan=0.0)
        ax.fill_between(pit.tolist(), (th - se).tolist(), (th + se).tolist(), color="C0", alpha=0.35, lw=0)
        ax.plot(pit.tolist(), th.tolist(), "-", color="C0", lw=1.2, label=th_label)
        if logs:
            its, vals = simulation_columns(logs, q)
            mean, sse = mean_se(vals, dim=1)
            yerr = sse.tolist() if bool(torch.isfinite(sse).all()) else None     # one seed: no error bar
            ax.errorbar(its.to(torch.float64).tolist(), mean.tolist(), yerr=yerr, fmt="o", ms=3, color="C3",
                        elinewidth=1, capsize=2,
                        label=f"simulation, {SE_LEGEND} over {vals.shape[1]} seeds")
            pos = {int(t): k for k, t in enumerate(prediction["iteration"].tolist())}
            keep = [k for k, t in enumerate(its.tolist()) if int(t) in pos]
            idx = [pos[int(its[k])] for k in keep]
            gap = mean[keep] - th[idx]
            bx = axes[1][j]
            bx.fill_between(pit.tolist(), (-se).tolist(), se.tolist(), color="C0", alpha=0.35, lw=0,
                            label=f"DMFT {SE_LEGEND.replace('mean ', '')} band")
            bx.axhline(0.0, color="C0", lw=1.0)
            gerr = None if yerr is None else sse[keep].tolist()
            bx.errorbar(its[keep].to(torch.float64).tolist(), gap.tolist(), yerr=gerr, fmt="o", ms=3, color="C3",
                        elinewidth=1, capsize=2, label=f"simulation − DMFT ({SE_LEGEND.replace('mean ', '')})")
            bx.set_xlabel("iteration t")
            bx.set_ylabel(f"simulation − DMFT\n({SHORT_LABELS.get(q, q)})")
            bx.grid(alpha=0.3)
        if fp is not None and q in fp:
            ax.axhline(fp[q], ls="--", color="0.35", lw=1, label="fixed point (t → ∞)")
        vals_all = th if not logs else torch.cat([th, mean])
        pos_vals = vals_all[vals_all > 0]
        if pos_vals.numel() and bool((vals_all > 0).all()) and float(pos_vals.max() / pos_vals.min()) > 100:
            ax.set_yscale("log")
        if rows == 1:
            ax.set_xlabel("iteration t")
        ax.set_ylabel(LABELS.get(q, q))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if logs:
        axes[1][0].legend(fontsize=7)
    cfg = getattr(logs[0], "config", {}) if logs else {}
    fig.suptitle(("DMFT vs simulation: " if logs else "DMFT prediction: ") + settings_title(params, cfg),
                 fontsize=10)
    fig.tight_layout()
    return fig


def prediction_figure(prediction, quantities: Sequence[str] = ("overlap", "rel_error", "loss")):
    """The DMFT curves alone (± 1 SE over replicates) when there is no simulation to overlay."""
    return theory_figure(prediction, (), quantities)


def comparison_figure(runs: Sequence[Tuple[str, Any, Any]]):
    """Overlap, estimation error and loss vs iteration: DMFT lines over simulation mean ± 1 SE markers.

    ``runs`` is a list of (label, :class:`~phasetorch.theory.Prediction`, :class:`~phasetorch.logs.TrainingLog`).
    """
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.0 * len(PANELS), 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pred, log) in enumerate(runs):
        c = colors[i % len(colors)]
        for ax, (col, title) in zip(axes, PANELS):
            t_th = pred["iteration"].to(torch.float64)
            th = pred[col].to(torch.float64)
            se = torch.nan_to_num(pred[col + "_se"].to(torch.float64), nan=0.0)
            ax.fill_between(t_th.tolist(), (th - se).tolist(), (th + se).tolist(), color=c, alpha=0.3, lw=0)
            ax.plot(t_th.tolist(), th.tolist(), color=c, lw=1.4, label=label)
            if col in log:
                t_s = log["iteration"].to(torch.float64)
                mean, sse = log.mean(col), torch.nan_to_num(log.stderr(col), nan=0.0)
                ax.errorbar(t_s.tolist(), mean.tolist(), yerr=sse.tolist(), fmt="o", ms=2.5, color=c,
                            elinewidth=0.8, capsize=0, alpha=0.8)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("iteration t")
    axes[-1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title=f"lines: DMFT {SE_LEGEND} · dots: simulation {SE_LEGEND} over seeds",
                   title_fontsize=7)
    fig.tight_layout()
    return fig
