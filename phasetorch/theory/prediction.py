r"""``Prediction``: the DMFT forecast of a gradient-descent run, in the columns of a ``TrainingLog``.

A :class:`Prediction` holds, for iterations t = 0..T of spectral-initialised gradient descent
(regularised Wirtinger flow on real Gaussian phase retrieval, ‖x*‖ = 1; theory.md §3–§4, after
Chen & Shen, arXiv 2509.23527, 2025):

=================  ==========================================================================
column             meaning (per iteration t, mean over Monte-Carlo replicates)
=================  ==========================================================================
``iteration``      t (GD iterations; a power-iteration pre-phase is not counted)
``m`` / ``inner``  m(t) = ⟨x_t, x*⟩ (the TrainingLog's ``inner``; reported as \|m\|)
``q``              q(t) = ‖x_t‖²
``norm``           √q(t) = ‖x_t‖
``overlap``        \|m\|/√q (cosine)
``rel_error``      √(q − 2\|m\| + 1) = min± ‖x_t ∓ x*‖/‖x*‖
``loss``           training loss E ℓ(r_t; Y) + (λ/2) q(t)
``grad_norm``      ‖∇L(x_t)‖ from the parameter-side representation of the gradient
``step``           the step α_t = μ_t/‖x₀‖² that produced x_t (0 at t = 0), as in a TrainingLog
``grad_signal``    ⟨∇L(x_t), x*⟩ = E[S g(r_t;Y)] + λ m(t)     (→ 0 at a stationary point)
``grad_iterate``   ⟨∇L(x_t), x_t⟩ = E[r_t g(r_t;Y)] + λ q(t)  (→ 0 at a stationary point)
=================  ==========================================================================

Every column ``c`` has a standard error ``c + "_se"`` over the replicates (NaN with one
replicate), and the per-replicate values are kept in ``per_replicate[c]`` (shape
``(replicates, T + 1)``). Column names are those of :class:`phasetorch.logs.TrainingLog`, so an
overlay of theory and simulation is a join on ``iteration``.

Kernels (replicate-averaged, float64, indexed by GD iteration): ``C`` (C(t,s) = E X_t X_s),
``R_x`` (= ``K``, the response ∂X_t/∂H_s), ``R_g`` (R_g(t,s) = E ∂g(r_t)/∂U_s, s ≤ t),
``R_g_star`` (R_g(t,★) = E ∂g(r_t)/∂P), ``mu`` (μ(t) = E ∂g(r_t)/∂S through Y), ``a`` (= m),
``b`` (= R_x(t,★), the weight of the spectral noise W★), ``c_V`` (E X_t V̂) and ``C_g`` (the
covariance Σ_W/δ of (W★, W_0, W_1, …), ★ first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..logs import read_json_file, write_atomic
from ..tensors import floats_from_json, mean_se, to_jsonable

COLUMNS: Tuple[str, ...] = ("iteration", "loss", "grad_norm", "step", "norm", "rel_error", "overlap",
                            "inner", "m", "q", "grad_signal", "grad_iterate")
_VALUE_COLUMNS: Tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("iteration", "step", "inner"))
KERNELS: Tuple[str, ...] = ("C", "R_x", "R_g", "R_g_star", "mu", "a", "b", "K", "c_V", "C_g")


@dataclass
class Prediction:
    """DMFT prediction of one gradient-descent run (see the module docstring for the columns).

    Build it with :func:`phasetorch.theory.dmft`; read columns with ``pred["overlap"]`` (a
    float64 tensor of shape ``(T + 1,)``) and their standard errors with ``pred["overlap_se"]``;
    columns, kernels and parameters (``pred.delta``, ``pred.rho``, ``pred.lam_star``, …) are also
    attributes. ``step`` is the TrainingLog's: the step α_t = μ_t/‖x₀‖² that produced x_t (0 at t = 0).
    """

    iteration: torch.Tensor
    per_replicate: Dict[str, torch.Tensor]
    step: torch.Tensor
    kernels: Dict[str, torch.Tensor]
    params: Dict[str, Any]
    checks: Dict[str, Tuple[float, float]] = field(default_factory=dict)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_replicates(cls, iteration: torch.Tensor, step: torch.Tensor, m: torch.Tensor, q: torch.Tensor,
                        loss: torch.Tensor, grad_norm: torch.Tensor, grad_signal: torch.Tensor,
                        grad_iterate: torch.Tensor, kernels: Dict[str, torch.Tensor],
                        params: Dict[str, Any], checks: Optional[Dict[str, torch.Tensor]] = None) -> "Prediction":
        """Assemble a Prediction from per-replicate curves of shape ``(replicates, T + 1)``.

        The derived columns (norm, overlap, rel_error) are computed per replicate and then
        averaged, so their standard errors are honest. ``kernels`` are per-replicate tensors with a
        leading replicate dimension (averaged here); ``checks`` per-replicate scalars (R,).
        """
        m = m.to(torch.float64).abs()
        q = q.to(torch.float64)
        qpos = q.clamp(min=0)
        per = {
            "m": m, "q": q, "loss": loss.to(torch.float64), "grad_norm": grad_norm.to(torch.float64),
            "norm": qpos.sqrt(), "overlap": m / qpos.sqrt(), "rel_error": (qpos - 2 * m + 1).clamp(min=0).sqrt(),
            "grad_signal": grad_signal.to(torch.float64), "grad_iterate": grad_iterate.to(torch.float64),
        }
        kern = {k: v.to(torch.float64).mean(dim=0) for k, v in kernels.items()}
        chk = {}
        for k, v in (checks or {}).items():
            mean, se = mean_se(v.reshape(v.shape[0], 1))
            chk[k] = (float(mean[0]), float(se[0]))
        return cls(iteration=iteration.to(torch.long).cpu(), per_replicate={k: v.cpu() for k, v in per.items()},
                   step=step.to(torch.float64).cpu(), kernels={k: v.cpu() for k, v in kern.items()},
                   params=dict(params), checks=chk)

    # ----------------------------------------------------------------- access
    @property
    def columns(self) -> Tuple[str, ...]:
        """Column names (those of a TrainingLog plus m, q and the stationarity diagnostics)."""
        return COLUMNS

    @property
    def replicates(self) -> int:
        return int(next(iter(self.per_replicate.values())).shape[0])

    def __len__(self) -> int:
        return int(self.iteration.shape[0])

    def __getitem__(self, name: str) -> torch.Tensor:
        """A column (mean over replicates), ``name + "_se"`` its standard error, or a kernel."""
        if name == "iteration":
            return self.iteration
        if name == "step":
            return self.step
        if name in ("inner", "inner_se"):
            name = name.replace("inner", "m")
        if name in self.per_replicate:
            return mean_se(self.per_replicate[name])[0]
        if name.endswith("_se") and name[:-3] in self.per_replicate:
            return mean_se(self.per_replicate[name[:-3]])[1]
        if name in self.kernels:
            return self.kernels[name]
        raise KeyError(f"unknown column {name!r}; columns are {', '.join(COLUMNS)} (each with '_se'), "
                       f"kernels {', '.join(self.kernels)}")

    def __getattr__(self, name: str):
        # pred.m, pred.q_se, pred.C, pred.delta ... as attributes (dataclass fields are found first)
        if name.startswith("__") or name in ("per_replicate", "kernels", "params", "checks", "iteration", "step"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as err:
            if name in self.params:
                return self.params[name]
            raise AttributeError(str(err)) from None

    def at(self, t: int) -> Dict[str, float]:
        """All columns (and standard errors) at iteration ``t`` as plain floats."""
        idx = int((self.iteration == int(t)).nonzero()[0, 0]) if (self.iteration == int(t)).any() else None
        if idx is None:
            raise ValueError(f"iteration {t} is not in this prediction (0..{int(self.iteration[-1])})")
        out = {"iteration": int(t), "step": float(self.step[idx])}
        for c in _VALUE_COLUMNS:
            out[c] = float(self[c][idx])
            out[c + "_se"] = float(self[c + "_se"][idx])
        out["inner"], out["inner_se"] = out["m"], out["m_se"]
        return out

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": "phasetorch.theory.Prediction/1",
            "iteration": self.iteration.tolist(),
            "step": self.step.tolist(),
            "per_replicate": {k: v.tolist() for k, v in self.per_replicate.items()},
            "kernels": {k: v.tolist() for k, v in self.kernels.items()},
            "params": self.params,
            "checks": {k: list(v) for k, v in self.checks.items()},
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Prediction":
        """Inverse of :meth:`to_dict`; a ValueError saying what is wrong for anything else."""
        if not isinstance(data, dict) or not str(data.get("format", "")).startswith("phasetorch.theory.Prediction"):
            held = "" if isinstance(data, dict) else f" (the JSON holds {type(data).__name__}, expected an object)"
            raise ValueError(f"not a phasetorch Prediction (missing 'format'){held}; was it written by "
                             f"Prediction.to_json?")
        for key in ("iteration", "step", "per_replicate", "kernels", "params"):
            if key not in data:
                raise ValueError(f"Prediction: missing key {key!r} (the file is incomplete or was not written by "
                                 f"Prediction.to_json)")
        for key in ("per_replicate", "kernels", "params"):
            if not isinstance(data[key], dict):
                raise ValueError(f"Prediction: {key!r} must be an object, got {type(data[key]).__name__}")
        checks = data.get("checks", {})
        if not isinstance(checks, dict):
            raise ValueError(f"Prediction: 'checks' must be an object, got {type(checks).__name__}")

        def f64(name, x, dim):
            try:
                t = torch.tensor(floats_from_json(x), dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"Prediction: {name} is not a (rectangular) array of numbers ({err})") from None
            if dim is not None and t.dim() != dim:
                raise ValueError(f"Prediction: {name} must have {dim} dimension(s), got shape {tuple(t.shape)}")
            return t

        its = data["iteration"]
        if not isinstance(its, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in its) \
                or not its:
            raise ValueError("Prediction: 'iteration' must be a non-empty list of integers")
        T1 = len(its)
        step = f64("'step'", data["step"], 1)
        per = {k: f64(f"per_replicate[{k!r}]", v, 2) for k, v in data["per_replicate"].items()}
        if not per:
            raise ValueError("Prediction: 'per_replicate' is empty")
        shapes = {tuple(v.shape) for v in per.values()}
        if len(shapes) != 1 or next(iter(shapes))[1] != T1 or step.shape[0] != T1:
            raise ValueError(f"Prediction: columns of {T1} iterations expected; per_replicate shapes "
                             f"{sorted(shapes)}, step {tuple(step.shape)}")
        try:
            chk = {k: (float(v[0]), float(v[1])) for k, v in checks.items()}
        except (TypeError, ValueError, IndexError, KeyError):
            raise ValueError("Prediction: 'checks' must map names to [mean, standard error] pairs") from None
        return cls(iteration=torch.tensor(its, dtype=torch.long), step=step, per_replicate=per,
                   kernels={k: f64(f"kernels[{k!r}]", v, None) for k, v in data["kernels"].items()},
                   params=dict(data["params"]), checks=chk)

    def to_json(self, path) -> None:
        """Write the prediction (columns per replicate, kernels, parameters) as strict JSON (NaN → null),
        atomically (:func:`phasetorch.logs.write_atomic`: a failed write leaves the previous file intact)."""
        d = to_jsonable(self.to_dict())
        write_atomic(path, lambda fh: json.dump(d, fh, allow_nan=False))

    @classmethod
    def from_json(cls, path) -> "Prediction":
        """Read a prediction written by :meth:`to_json`; ValueError naming the file and what is wrong
        for a missing, empty, truncated or foreign file."""
        d = read_json_file(path, "Prediction")
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{str(Path(path))!r}: {err}") from None

    def __repr__(self) -> str:
        p = self.params
        return (f"Prediction(delta={p.get('delta')}, preprocessing={p.get('preprocessing')!r}, step={p.get('step')}, "
                f"l2={p.get('l2')}, iterations=0..{int(self.iteration[-1])}, samples={p.get('samples')}, "
                f"replicates={self.replicates}, final overlap={float(self['overlap'][-1]):.5f})")
