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

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .. import distributed as D
from ..errors import DivergenceError
from ..init.spectral import spectral_init
from ..physics.ensemble import GaussianEnsemble
from ..physics.noise import GaussianNoise
from ..solve import reconstruct
from ..logs import TrainingLog
from ..tensors import as_device, check_int, check_number, make_generator
from .model import SingleIndexModel, resolve_model

__all__ = ["simulate", "derived_seed"]

_STREAMS = {"signal": 1, "noise": 2, "spectral": 3, "start": 4}


def derived_seed(seed: int, stream: str) -> int:
    """A seed for one random stream (``signal``, ``noise``, ``spectral``, ``start``) of the problem with matrix
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


def _spectral_starts(op: GaussianEnsemble, y: torch.Tensor, x_star: torch.Tensor, seeds: list, preprocessing,
                     progress: bool = False):
    """x₀ = √(mean y)·v̂ per problem, sign / global phase aligned with x* (oracle), and λ₁(D) per problem.

    One batched Lanczos run over the ensemble (each problem through its own matrix), every problem
    started from the vector its own seed gives (``derived_seed(s, "spectral")``, drawn as
    :func:`~phasetorch.init.spectral_init` draws it), so a problem's start is the same whether it
    runs alone or with others (to rounding, ~1e-14).
    """
    real = not op.is_complex
    rows = []
    for s in seeds:
        g = make_generator(derived_seed(s, "spectral"))
        rows.append(torch.randn(op.n, generator=g, dtype=torch.float64) if real else
                    torch.view_as_complex(torch.randn(op.n, 2, generator=g, dtype=torch.float64)))
    starts = torch.stack(rows).to(op.device)
    # converged far below the default 1e-6 (float64: 1e-11): where a sample's Lanczos run stops then no
    # longer depends on its batch-mates' rounding, so its start equals its single run's to ~1e-12
    tol = min(1e-6, max(1e-11, 64 * torch.finfo(op.real_dtype).eps))
    x0, info = spectral_init(op, y, preprocessing=preprocessing, start=starts, return_info=True, progress=progress,
                             tol=tol)
    c = torch.sum(x_star.conj() * x0, dim=-1)
    if op.is_complex:
        x0 = x0 * (c.conj() / c.abs().clamp_min(torch.finfo(op.real_dtype).tiny)).unsqueeze(-1)
    else:
        x0 = torch.where((c < 0).unsqueeze(-1), -x0, x0)
    return x0, [float(v) for v in info.eigenvalue.reshape(-1).tolist()]


def _warm_starts(x_star: torch.Tensor, seeds: list, overlap: float, norm: float) -> torch.Tensor:
    """x₀ = c(ρ₀x* + √(1−ρ₀²)w), w a unit vector orthogonal to x* (drawn from the ``start`` stream)."""
    rows = []
    for k, s in enumerate(seeds):
        g = make_generator(derived_seed(s, "start"))
        xs = x_star[k]
        if xs.is_complex():
            w = torch.view_as_complex(torch.randn(xs.numel(), 2, generator=g, dtype=torch.float64)).to(xs.dtype)
        else:
            w = torch.randn(xs.numel(), generator=g, dtype=torch.float64).to(xs.dtype)
        w = w - torch.sum(xs.conj() * w) * xs
        w = w / torch.linalg.vector_norm(w)
        rows.append(norm * (overlap * xs + math.sqrt(max(1 - overlap ** 2, 0.0)) * w))
    return torch.stack(rows)


def _own_descent(op: GaussianEnsemble, y: torch.Tensor, model: SingleIndexModel, x0: torch.Tensor,
                 x_star: torch.Tensor, eta: torch.Tensor, l2: float, steps: int, config: dict) -> TrainingLog:
    r"""Plain batched GD x ← x − η((1/m) Aᵀ g(Ax; y) + λx) on a model no library preset runs (real field),
    logged with the TrainingLog columns (iteration, loss, grad_norm, step, norm, rel_error, overlap, inner)."""
    log = TrainingLog(batch_shape=(x0.shape[0],), config=config)
    x = x0.clone()
    m = op.m
    for t in range(steps + 1):
        r = op.linear(x)
        grad = op.adjoint(model.g(r, y)) / m + l2 * x
        loss = model.loss(r, y).mean(dim=1) + 0.5 * l2 * x.square().sum(1)
        nrm = torch.linalg.vector_norm(x, dim=1)
        inner = (x * x_star).sum(1)
        err = torch.minimum(torch.linalg.vector_norm(x - x_star, dim=1), torch.linalg.vector_norm(x + x_star, dim=1))
        log.append(t, loss=loss, grad_norm=torch.linalg.vector_norm(grad, dim=1),
                   step=eta.flatten() if t > 0 else torch.zeros_like(nrm),
                   norm=nrm, rel_error=err, overlap=inner.abs() / nrm.clamp_min(1e-300), inner=inner, time=0.0)
        if t < steps:
            x = x - eta * grad
        if not torch.isfinite(x).all():
            raise DivergenceError(f"gradient descent on model {model.name!r} diverged at iteration {t + 1} (step "
                                  f"{float(eta.max()):g}): lower the step", algorithm="gd", iteration=t + 1,
                                  step=float(eta.max()))
    return log


def _joined(logs: list, seed_list: list, **extra) -> TrainingLog:
    """One log of the parts ``logs`` (runs over consecutive shares of ``seed_list``): per-seed config
    entries concatenated, ``extra`` (e.g. processes=, chunk=) recorded."""
    cfg = dict(logs[0].config, seeds=seed_list, **extra,
               spectral_eigenvalue=(None if logs[0].config.get("spectral_eigenvalue") is None else
                                    [e for lg in logs for e in lg.config["spectral_eigenvalue"]]))
    for key in ("status", "converged", "iterations"):
        if key in cfg and isinstance(cfg[key], list):
            cfg[key] = [v for lg in logs for v in lg.config[key]]
    return TrainingLog.join(logs, cfg)


def simulate(delta: float, *, dim: int, seeds: Union[int, Sequence[int]], step: Optional[float], l2: float = 0.0,
             steps: int, preprocessing="optimal", noise: Optional[float] = None, field: Optional[str] = None,
             model: Optional[SingleIndexModel] = None, init: str = "spectral", init_overlap: Optional[float] = None,
             init_norm: float = 1.0, schedule: Optional[Callable[[int], float]] = None, seed: int = 0,
             device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float64,
             progress: bool = True, distributed: bool = True, chunk: Optional[int] = None):
    r"""Run spectral-initialised (regularised) gradient descent on ``len(seeds)`` independent problems.

    Parameters
    ----------
    delta : δ = m/n; m = round(δ·dim). dim : n, the number of unknowns.
    seeds : number of independent problems (their seeds are drawn from ``seed``) or a list of seeds.
    step : constant step μ (library units μ/‖x₀‖², the theory's η); ``None`` with ``schedule=None``
        uses the WF preset's ramp. schedule : callable t ↦ μ_t instead of ``step``.
    l2 : λ of the ridge term. steps : GD iterations (no early stopping: tol = 0).
    preprocessing : spectral preprocessing (name or callable T(ŷ)). noise : σ of y = |Ax*|² + σε.
    field : ``"real"`` or ``"complex"`` Gaussian matrices and signals (default real, or the model's).
    model : a :class:`~phasetorch.theory.SingleIndexModel` (default: phase retrieval, intensity loss).
        A model with ``algorithm`` (``"wf"``, ``"af"``) runs that library preset through ``reconstruct``
        with a constant step; any other (real) model runs a plain batched GD loop on its loss, with
        y = f(Ax*, ε) from the model's link (ε ~ N(0, 1) per problem).
    init, init_overlap, init_norm : ``"spectral"`` (x₀ = √(mean y)·v̂) or ``"warm"``
        (x₀ = c(ρ₀x* + √(1−ρ₀²)w), w ⟂ x* a random unit vector, c = ``init_norm``).
    device, dtype : where and in which real precision to run (float64 default). progress : tqdm bar.
    distributed : inside a process group of several processes (:mod:`phasetorch.distributed`, e.g.
        ``torchrun``), split the seeds over the processes (contiguous shares; every problem is built
        from its own seed, so it is the problem a single process would run) and return, on every
        rank, the joined log of all seeds (:meth:`~phasetorch.logs.TrainingLog.join`). False: run
        every seed here.
    chunk : run at most this many problems at once (their matrices are held together: memory
        chunk·m·dim entries instead of len(seeds)·m·dim) and join the logs; every problem is built
        from its own seed, so the result is the same as one run over all seeds (to rounding, ~1e-12).

    Returns
    -------
    :class:`phasetorch.logs.TrainingLog` with batch shape ``(len(seeds),)`` and columns iteration,
    loss, grad_norm, step, norm, time, residual, rel_error, overlap, inner, one record per step.
    ``log.config`` holds the reconstruct config plus ``delta`` (requested δ), ``delta_actual``,
    ``dim``, ``m``, ``step`` (μ), ``step_rule``, ``l2``, ``preprocessing``, ``noise``, ``field``,
    ``theory_model``, ``init``, ``seeds``, ``seed`` and ``spectral_eigenvalue`` (top eigenvalue of D
    per seed; spectral starts).

    Memory: len(seeds)·m·dim matrix entries (``chunk``·m·dim with ``chunk``).
    Raises :class:`phasetorch.errors.DivergenceError` if a run diverges (step too large).
    """
    delta = check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True)
    dim = check_int(dim, "dim (the number of unknowns n)", 2)
    steps = check_int(steps, "steps (the number of GD iterations)", 0)
    if field is not None and field not in ("real", "complex"):
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    if noise is not None:
        check_number(noise, "noise (σ ≥ 0 of y = |Ax*|² + σε)", 0.0)
    model = resolve_model(model, field, noise)
    noise, field = model.noise, model.field
    l2 = check_number(l2, "l2 (the ridge λ ≥ 0)", 0.0)
    seed = check_int(seed, "seed", 0)
    if init not in ("spectral", "warm"):
        raise ValueError(f"init must be 'spectral' or 'warm', got {init!r}")
    if init == "warm":
        if init_overlap is None:
            raise ValueError("init='warm' needs init_overlap=ρ₀ (the overlap of x₀ with x*)")
        init_overlap = check_number(init_overlap, "init_overlap (ρ₀ of the start)", 0.0, high=1.0)
    init_norm = check_number(init_norm, "init_norm (c = ‖x₀‖ of the warm start)", 0.0, strict=True)
    if init == "spectral" and model.mean_y <= 0:
        raise ValueError(f"model {model.name!r} has E y ≤ 0: no spectral start; use init='warm'")
    if step is not None:
        step = check_number(step, "step (the constant μ, in units of 1/‖x₀‖²)", 0.0, strict=True)
    if step is not None and schedule is not None:
        raise ValueError("pass either step= (constant μ) or schedule= (callable t ↦ μ_t), not both")
    if schedule is not None and not callable(schedule):
        raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
    if model.algorithm is None and (step is None or model.is_complex):
        raise ValueError(f"model {model.name!r} runs a plain GD loop: it needs a constant step= and the real field")
    m = int(round(delta * dim))
    if m < 1:
        raise ValueError(f"round(delta·dim) = {m}: no measurements; increase dim or delta")
    seed_list = _seed_list(seeds, seed)
    size = D.world_size() if distributed and D.is_active() else 1
    if size > 1:
        D.check_same([delta, dim, steps, step, l2, model.name, init, seed_list], "simulate settings")
        if len(seed_list) < size:
            raise ValueError(f"simulate: {len(seed_list)} seeds cannot be split over {size} processes; give at least "
                             f"one seed per process")
        lo, hi = D.shard_range(len(seed_list), D.rank(), size)
        part = simulate(delta, dim=dim, seeds=seed_list[lo:hi], step=step, l2=l2, steps=steps,
                        preprocessing=preprocessing, model=model, init=init, init_overlap=init_overlap,
                        init_norm=init_norm, schedule=schedule, seed=seed, device=device, dtype=dtype,
                        progress=progress and D.is_main(), distributed=False)
        return _joined(D.all_gather_object(part), seed_list, processes=size)
    if chunk is not None:
        chunk = check_int(chunk, "chunk (the most problems run at once)", 1)
        if chunk < len(seed_list):
            parts = [simulate(delta, dim=dim, seeds=seed_list[lo:lo + chunk], step=step, l2=l2, steps=steps,
                              preprocessing=preprocessing, model=model, init=init, init_overlap=init_overlap,
                              init_norm=init_norm, schedule=schedule, seed=seed, device=device, dtype=dtype,
                              progress=progress, distributed=False)
                     for lo in range(0, len(seed_list), chunk)]
            return _joined(parts, seed_list, chunk=chunk)
    count = len(seed_list)
    is_complex = model.is_complex
    dev = as_device(device, "simulate: device")

    op = GaussianEnsemble(dim, m, count, complex=is_complex, seeds=seed_list, dtype=dtype).to(dev)
    x_star = _unit_signals(seed_list, dim, is_complex, dtype).to(device=dev, dtype=op.signal_dtype)
    if model.intensity_link:
        y = op(x_star)
        if noise > 0:           # one noise stream per problem: a batch equals single runs
            y = torch.stack([GaussianNoise(noise, seed=derived_seed(s, "noise"), event_dims=1)(y[k])
                             for k, s in enumerate(seed_list)])
    else:
        eps = torch.stack([torch.randn(m, generator=make_generator(derived_seed(s, "noise")), dtype=torch.float64)
                           for s in seed_list]).to(device=dev, dtype=op.real_dtype)
        y = model.link(op.linear(x_star), eps)

    eigs = None
    if init == "spectral":
        x0, eigs = _spectral_starts(op, y, x_star, seed_list, preprocessing, progress)
    else:
        x0 = _warm_starts(x_star, seed_list, init_overlap, init_norm)
    cfg_extra = {
        "source": "phasetorch.theory.simulate", "delta": delta, "delta_actual": m / dim, "dim": dim, "m": m,
        "step": (float(step) if step is not None else None),
        "schedule": (None if schedule is None else getattr(schedule, "__name__", "callable")),
        "l2": float(l2), "preprocessing": (preprocessing if isinstance(preprocessing, str)
                                           else getattr(preprocessing, "__name__", "callable")) if init == "spectral" else None,
        "noise": noise, "field": field, "theory_model": model.name, "init": init, "init_overlap": init_overlap,
        "seeds": seed_list, "seed": int(seed), "spectral_eigenvalue": eigs,
    }
    if model.algorithm is None:
        eta = float(step) / torch.linalg.vector_norm(x0, dim=1, keepdim=True).square()     # μ/‖x₀‖² per problem
        cfg = dict(cfg_extra, algorithm=None, operator=op.config(), step_rule=float(step))
        return _own_descent(op, y, model, x0, x_star, eta, l2, steps, cfg)
    rec = reconstruct(op, y, algorithm=model.algorithm, init=x0, step=step, schedule=schedule, l2=l2, max_iter=steps,
                      safeguard=False, tol=0, x_true=x_star, progress=progress)
    log = rec.log
    cfg = log.config
    step_rule = cfg.get("step")
    cfg.update(cfg_extra)
    cfg["step_rule"] = step_rule
    cfg["init"] = "spectral" if init == "spectral" else "tensor"
    return log
