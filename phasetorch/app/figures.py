r"""The application layer's pictures: object displays (PNG) and matplotlib figures of logs and predictions.

Displays
--------
:func:`save_display` writes an object as PNG(s): its modulus (``amplitude``), its phase map
(``phase``) or both (``complex``, the phase as ``*_phase.png``). Phase maps are
:func:`phase_view` ``(x, c)`` = arg(x e^{−ic}) with c the circular mean phase
:func:`circular_mean_phase` of the truth, so a phase map spanning less than 2π does not wrap.

Figures (each returns a matplotlib Figure on the headless Agg canvas; save with
:func:`phasetorch.io.save_figure`)
-------
* :func:`convergence_figure` — relative error (when known) and loss versus iteration, log scale;
* :func:`signal_figure` — moduli of a 1-D reconstruction, its start and the truth per coordinate;
* :func:`prediction_figure` — DMFT curves ± 2 SE alone (no simulation to overlay);
* :func:`comparison_figure` — overlap, estimation error and loss: DMFT lines over simulation
  mean ± 2 SE markers, for several (δ, λ) runs.

:func:`log_column` reads a column of a :class:`~phasetorch.logs.TrainingLog` (or a
:class:`~phasetorch.theory.Prediction`) as a float64 CPU tensor; :func:`has_column` says whether it exists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .. import io as pio

__all__ = ["phase_view", "circular_mean_phase", "save_display", "has_column", "log_column", "convergence_figure",
           "signal_figure", "prediction_figure", "comparison_figure", "PANELS"]

#: The panels of :func:`comparison_figure`: (log column, title).
PANELS = (("overlap", "overlap |⟨x_t, x*⟩| / ‖x_t‖"), ("rel_error", "estimation error ‖x_t − x*‖"),
          ("loss", "training loss"))


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


# ---------------------------------------------------------------------------------------- figures
def convergence_figure(log, title: str = ""):
    """Relative error (when known) and loss versus iteration, log scale, one line per sample."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    cols = [c for c in ("rel_error", "loss") if has_column(log, c)]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(4.6 * max(1, len(cols)), 3.4), squeeze=False)
    it = log_column(log, "iteration")
    for ax, c in zip(axes[0], cols):
        v = log_column(log, c)
        v = v.reshape(v.shape[0], -1)
        for b in range(v.shape[1]):
            ax.semilogy(it[: v.shape[0]].tolist(), v[:, b].clamp(min=1e-16).tolist(), lw=1.3)
        ax.set_xlabel("iteration")
        ax.set_ylabel({"rel_error": "relative error", "loss": "loss"}[c])
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


def prediction_figure(prediction, quantities: Sequence[str] = ("overlap", "rel_error", "loss")):
    """The DMFT curves alone (± 2 SE over replicates) when there is no simulation to overlay."""
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.4), squeeze=False)
    t = prediction["iteration"].to(torch.float64).tolist()
    for ax, q in zip(axes[0], quantities):
        v = prediction[q].to(torch.float64)
        se = torch.nan_to_num(prediction[q + "_se"].to(torch.float64), nan=0.0)
        ax.plot(t, v.tolist(), color="C0", lw=1.6, label="DMFT")
        ax.fill_between(t, (v - 2 * se).tolist(), (v + 2 * se).tolist(), color="C0", alpha=0.25, lw=0,
                        label="± 2 SE")
        ax.set_xlabel("iteration t")
        ax.set_ylabel(q)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    params = dict(getattr(prediction, "params", {}) or {})
    if params:
        fig.suptitle("DMFT: " + ", ".join(f"{k} = {params[k]}" for k in ("delta", "l2", "step", "preprocessing")
                                           if params.get(k) is not None), fontsize=10)
    fig.tight_layout()
    return fig


def comparison_figure(runs: Sequence[Tuple[str, Any, Any]]):
    """Overlap, estimation error and loss vs iteration: DMFT lines over simulation mean ± 2 SE markers.

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
            ax.plot(t_th.tolist(), pred[col].to(torch.float64).tolist(), color=c, lw=1.6, label=label)
            if col in log:
                t_s = log["iteration"].to(torch.float64)
                mean, se = log.mean(col), torch.nan_to_num(log.stderr(col), nan=0.0)
                ax.errorbar(t_s.tolist(), mean.tolist(), yerr=(2 * se).tolist(), fmt="o", ms=2.5, color=c,
                            elinewidth=0.8, capsize=0, alpha=0.8)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("iteration t")
    axes[-1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="lines: DMFT · dots: simulation ± 2 SE", title_fontsize=7)
    fig.tight_layout()
    return fig
