r"""Finite-dimensional simulations of spectral-initialised gradient descent, many seeds in one batch.

The protocol of theory.md §6 (the experiment :func:`phasetorch.theory.dmft` predicts): for each
seed, a Gaussian matrix A ∈ ℝ^{m×n} (or ℂ, ``field="complex"``) with m = round(δ·n), E|A_ij|² = 1
(:class:`~phasetorch.physics.GaussianMeasurement` conventions), a signal x* uniform on the unit
sphere, intensities y = |Ax*|² + σε (ε ~ N(0,1), ``noise`` = σ), the spectral start
x₀ = √(mean y)·v̂ (:func:`phasetorch.init.spectral.spectral_init` with the chosen preprocessing; v̂'s sign /
global phase is aligned with x* by the oracle — gradient descent is equivariant under x → e^{iφ}x,
so this changes only the sign of the ``inner`` column, which then estimates the theory's m(t)),
then ``reconstruct(op, y, algorithm="wf", init=x₀, step=step, l2=l2, max_iter=steps, tol=0, safeguard=False)``
(plain gradient descent, the process the DMFT describes, without the monotone safeguard):
x_{t+1} = x_t − (μ/‖x₀‖²) ∇f(x_t), f = (1/4m) Σ(|a_iᴴx|² − y_i)² + (λ/2)‖x‖² (regularised Wirtinger
flow; Candès, Li & Soltanolkotabi 2015; Chen & Shen 2025 for its DMFT), without early stopping.

All seeds run as **one batch**: the matrices live in one
:class:`~phasetorch.physics.ensemble.GaussianEnsemble` (problem k uses exactly
``GaussianMeasurement(n, m, seed=seeds[k])``), so each GD step is one batched product.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..init.spectral import spectral_init
from ..physics.ensemble import GaussianEnsemble
from ..physics.noise import GaussianNoise
from ..solve import reconstruct
from ..tensors import check_int, check_number, make_generator

__all__ = ["simulate", "derived_seed"]

_STREAMS = {"signal": 1, "noise": 2, "spectral": 3}


def derived_seed(seed: int, stream: str) -> int:
    """A seed for one random stream (``signal``, ``noise``, ``spectral``) of the problem with matrix
    seed ``seed``: distinct from the matrix's own row-block seeds (seed + 7919k), deterministic."""
    return (int(seed) * 6364136223846793005 + 1442695040888963407 * _STREAMS[stream]) % (2 ** 63 - 1)


def _seed_list(seeds: Union[int, Sequence[int]], seed: int) -> list:
    if isinstance(seeds, (bool, float, str, bytes)) or not (isinstance(seeds, int) or hasattr(seeds, "__iter__")):
        raise ValueError(f"seeds must be a positive int (number of seeds) or a list of int seeds, got {seeds!r}")
    if isinstance(seeds, int):
        seeds = check_int(seeds, "seeds (the number of independent problems)", 1)
        g = make_generator(int(seed))
        return [int(s) for s in torch.randint(0, 2 ** 62, (seeds,), generator=g)]
    out = [check_int(s, "each of seeds", 0) for s in seeds]
    if not out:
        raise ValueError("seeds is empty; give a count or a non-empty list of seeds")
    if len(set(out)) != len(out):
        raise ValueError("seeds contains duplicates: the problems would not be independent")
    return out


def _unit_signals(seeds: list, dim: int, is_complex: bool, dtype: torch.dtype) -> torch.Tensor:
    rows = []
    for s in seeds:
        g = make_generator(derived_seed(s, "signal"))
        if is_complex:
            v = torch.view_as_complex(torch.randn(dim, 2, generator=g, dtype=torch.float64))
        else:
            v = torch.randn(dim, generator=g, dtype=torch.float64)
        rows.append(v / torch.linalg.vector_norm(v))
    x = torch.stack(rows)
    return x.to(torch.complex128 if is_complex else torch.float64)


def _spectral_starts(op: GaussianEnsemble, y: torch.Tensor, x_star: torch.Tensor, seeds: list, preprocessing):
    """x₀ = √(mean y)·v̂ per problem, sign / global phase aligned with x* (oracle), and λ₁(D) per problem.

    One problem at a time (the eigensolver drops converged samples from its batch, which an ensemble
    operator cannot follow); each member shares the ensemble's storage.
    """
    x0s, eigs = [], []
    for k, s in enumerate(seeds):
        x0, info = spectral_init(op.member(k), y[k], preprocessing=preprocessing,
                                 seed=derived_seed(s, "spectral"), return_info=True)
        c = torch.sum(x_star[k].conj() * x0) if op.is_complex else torch.dot(x_star[k], x0)
        if op.is_complex:
            x0 = x0 * (c.conj() / c.abs().clamp_min(torch.finfo(op.real_dtype).tiny))
        elif float(c) < 0:
            x0 = -x0
        x0s.append(x0)
        eigs.append(float(info.eigenvalue))
    return torch.stack(x0s), eigs


def simulate(delta: float, *, dim: int, seeds: Union[int, Sequence[int]], step: Optional[float], l2: float = 0.0,
             steps: int, preprocessing="optimal", noise: float = 0.0, field: str = "real",
             schedule: Optional[Callable[[int], float]] = None, seed: int = 0,
             device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float64,
             progress: bool = True):
    r"""Run spectral-initialised (regularised) Wirtinger flow on ``len(seeds)`` independent problems.

    Parameters
    ----------
    delta : δ = m/n; m = round(δ·dim). dim : n, the number of unknowns.
    seeds : number of independent problems (their seeds are drawn from ``seed``) or a list of seeds.
    step : constant step μ (library units μ/‖x₀‖², the theory's η); ``None`` with ``schedule=None``
        uses the WF preset's ramp. schedule : callable t ↦ μ_t instead of ``step``.
    l2 : λ of the ridge term. steps : GD iterations (no early stopping: tol = 0).
    preprocessing : spectral preprocessing (name or callable T(ŷ)). noise : σ of y = |Ax*|² + σε.
    field : ``"real"`` or ``"complex"`` Gaussian matrices and signals.
    device, dtype : where and in which real precision to run (float64 default). progress : tqdm bar.

    Returns
    -------
    :class:`phasetorch.logs.TrainingLog` with batch shape ``(len(seeds),)`` and columns iteration,
    loss, grad_norm, step, norm, time, residual, rel_error, overlap, inner, one record per step.
    ``log.config`` holds the reconstruct config plus ``delta`` (requested δ), ``delta_actual``,
    ``dim``, ``m``, ``step`` (μ), ``step_rule``, ``l2``, ``preprocessing``, ``noise``, ``field``,
    ``seeds``, ``seed`` and ``spectral_eigenvalue`` (top eigenvalue of D per seed).

    Memory: len(seeds)·m·dim matrix entries.
    Raises :class:`phasetorch.errors.DivergenceError` if a run diverges (step too large).
    """
    delta = check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True)
    dim = check_int(dim, "dim (the number of unknowns n)", 2)
    steps = check_int(steps, "steps (the number of GD iterations)", 0)
    if field not in ("real", "complex"):
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    noise = check_number(noise, "noise (σ ≥ 0 of y = |Ax*|² + σε)", 0.0)
    l2 = check_number(l2, "l2 (the ridge λ ≥ 0)", 0.0)
    seed = check_int(seed, "seed", 0)
    if step is not None:
        step = check_number(step, "step (the constant μ, in units of 1/‖x₀‖²)", 0.0, strict=True)
    if step is not None and schedule is not None:
        raise ValueError("pass either step= (constant μ) or schedule= (callable t ↦ μ_t), not both")
    if schedule is not None and not callable(schedule):
        raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
    m = int(round(delta * dim))
    if m < 1:
        raise ValueError(f"round(delta·dim) = {m}: no measurements; increase dim or delta")
    seed_list = _seed_list(seeds, seed)
    count = len(seed_list)
    is_complex = field == "complex"
    dev = torch.device(device) if device is not None else torch.device("cpu")

    op = GaussianEnsemble(dim, m, count, complex=is_complex, seeds=seed_list, dtype=dtype).to(dev)
    x_star = _unit_signals(seed_list, dim, is_complex, dtype).to(device=dev, dtype=op.signal_dtype)
    y = op(x_star)
    if noise > 0:           # one noise stream per problem: a batch equals single runs
        y = torch.stack([GaussianNoise(noise, seed=derived_seed(s, "noise"), event_dims=1)(y[k])
                         for k, s in enumerate(seed_list)])

    x0, eigs = _spectral_starts(op, y, x_star, seed_list, preprocessing)
    rec = reconstruct(op, y, algorithm="wf", init=x0, step=step, schedule=schedule, l2=l2, max_iter=steps, safeguard=False,
                      tol=0, x_true=x_star, progress=progress)
    log = rec.log
    cfg = log.config
    step_rule = cfg.get("step")
    cfg.update({
        "source": "phasetorch.theory.simulate", "delta": delta, "delta_actual": m / dim, "dim": dim, "m": m,
        "step": (float(step) if step is not None else None), "step_rule": step_rule,
        "schedule": (None if schedule is None else getattr(schedule, "__name__", "callable")),
        "l2": float(l2), "preprocessing": preprocessing if isinstance(preprocessing, str)
        else getattr(preprocessing, "__name__", "callable"),
        "noise": noise, "field": field, "seeds": seed_list, "seed": int(seed), "spectral_eigenvalue": eigs,
    })
    return log
