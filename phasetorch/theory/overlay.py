r"""Overlay of a DMFT prediction and finite-dimensional simulations (matplotlib, backend-free).

One panel per quantity: the theory curve (:class:`~phasetorch.theory.prediction.Prediction`, mean
over Monte-Carlo replicates) with its ±2 SE band, the simulations' seed mean ± SE as markers with
error bars (TrainingLogs joined on ``iteration``), and — when it can be computed — the long-time
fixed point (:func:`phasetorch.theory.fixed_point`) as a dashed asymptote. The title gives δ, λ, η
and the simulated dimension d; a quantity whose positive values span more than two decades is
drawn on a log scale. The figure is a plain :class:`matplotlib.figure.Figure` (no pyplot state),
so it works under any backend, including Agg on headless machines; save it with
``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..tensors import mean_se
from .compare import as_logs, simulation_columns
from .fixed_point import fixed_point as solve_fixed_point

__all__ = ["overlay"]

_LABELS = {"overlap": r"overlap $|\langle x,x^*\rangle|/\|x\|$", "rel_error": "relative error",
           "loss": "training loss", "m": r"$m = \langle x,x^*\rangle$", "inner": r"$m = \langle x,x^*\rangle$",
           "q": r"$q = \|x\|^2$", "norm": r"$\|x\|$", "grad_norm": r"$\|\nabla L(x)\|$"}


def fixed_point_values(params: dict) -> Optional[dict]:
    """The long-time fixed point of a prediction's setting as log columns (None when it does not exist or converge)."""
    try:
        fp = solve_fixed_point(float(params["delta"]), l2=float(params.get("l2") or 0.0),
                         noise=float(params.get("noise") or 0.0),
                         preprocessing=params.get("preprocessing") if isinstance(params.get("preprocessing"), str)
                         else "optimal", field=params.get("field") or "real")
    except (KeyError, TypeError, ValueError):
        return None
    if not fp.converged:
        return None
    return {"overlap": fp.overlap, "rel_error": fp.rel_error, "loss": fp.loss, "m": fp.m, "inner": fp.m,
            "q": fp.q, "norm": math.sqrt(fp.q)}


def fmt_param(v) -> str:
    """A parameter for a figure title: ``–`` for None, ``%g`` for floats."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def overlay(prediction, logs, quantities: Sequence[str] = ("overlap", "rel_error", "loss"), ax=None,
            fixed_point: bool = True):
    r"""Figure with, per quantity, theory ± 2 SE, simulation mean ± SE and the fixed point.

    Parameters
    ----------
    prediction : :class:`~phasetorch.theory.prediction.Prediction` (from :func:`phasetorch.theory.dmft`).
    logs : one :class:`~phasetorch.logs.TrainingLog` or a list (seeds pooled), e.g. from
        :func:`phasetorch.theory.simulate`.
    quantities : columns to draw (``overlap``, ``rel_error``, ``loss``, ``m``, ``q``, ``norm``, ``grad_norm``).
    ax : ``None`` (a new figure with one panel per quantity), one Axes (one quantity) or a
        sequence of Axes (one per quantity).
    fixed_point : draw the TTI fixed point as a dashed asymptote when it converges.

    Returns the :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    logs = as_logs(logs)
    quantities = tuple(quantities)
    if not quantities:
        raise ValueError("quantities is empty")
    if ax is None:
        fig = Figure(figsize=(4.2 * len(quantities), 3.6), layout="constrained")
        axes = [fig.add_subplot(1, len(quantities), k + 1) for k in range(len(quantities))]
    else:
        axes = list(ax) if isinstance(ax, (list, tuple)) or hasattr(ax, "__len__") else [ax]
        if len(axes) != len(quantities):
            raise ValueError(f"got {len(axes)} Axes for {len(quantities)} quantities; pass one Axes per quantity")
        fig = axes[0].figure
    params = dict(getattr(prediction, "params", {}) or {})
    fp = fixed_point_values(params) if fixed_point else None
    pit = prediction["iteration"].to(torch.float64)
    for a, q in zip(axes, quantities):
        th = prediction[q].to(torch.float64)
        se = prediction[q + "_se"].to(torch.float64)
        a.plot(pit.numpy(), th.numpy(), "-", color="C0", lw=1.6, label="DMFT", gid="theory")
        if torch.isfinite(se).all():
            a.fill_between(pit.numpy(), (th - 2 * se).numpy(), (th + 2 * se).numpy(), color="C0", alpha=0.25,
                           lw=0, label="DMFT ± 2 SE")
        its, vals = simulation_columns(logs, q)
        mean, sse = mean_se(vals, dim=1)
        yerr = sse.numpy() if bool(torch.isfinite(sse).all()) else None          # one seed: no error bar
        a.errorbar(its.to(torch.float64).numpy(), mean.numpy(), yerr=yerr, fmt="o", ms=3, color="C3",
                   ecolor="C3", elinewidth=1, capsize=2, label=f"simulation ({vals.shape[1]} seeds, mean ± SE)")
        if fp is not None and q in fp:
            a.axhline(fp[q], ls="--", color="0.35", lw=1, label="fixed point (t → ∞)")
        pos = torch.cat([th[th > 0], mean[mean > 0]])
        if pos.numel() and bool((torch.cat([th, mean]) > 0).all()) and float(pos.max() / pos.min()) > 100:
            a.set_yscale("log")
        a.set_xlabel("iteration t")
        a.set_ylabel(_LABELS.get(q, q))
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    cfg = logs[0].config if hasattr(logs[0], "config") else {}
    eta = params.get("step")
    if eta is None:
        eta = params.get("schedule")
    title = (f"δ = {fmt_param(params.get('delta', cfg.get('delta')))}, λ = {fmt_param(params.get('l2', cfg.get('l2')))}, "
             f"η = {fmt_param(eta)}, d = {fmt_param(cfg.get('dim', cfg.get('n')))}, "
             f"T = {params.get('preprocessing', cfg.get('preprocessing'))}")
    if params.get("noise"):
        title += f", σ = {fmt_param(params.get('noise'))}"
    fig.suptitle(title)
    return fig
