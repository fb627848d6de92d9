r"""Quantitative comparison of a DMFT :class:`~phasetorch.theory.prediction.Prediction` with simulations.

For each quantity c (a column shared by the Prediction and the simulations' TrainingLogs, joined on
``iteration``) and each compared step t:

    gap_t = mean_seeds c_sim(t) − c_theory(t),
    z_t   = gap_t / √(SE_sim(t)² + SE_theory(t)²),

with SE_sim the standard error of the seed mean and SE_theory the Monte-Carlo standard error of
the DMFT. Reported: ``sup_gap`` = max_t |gap_t| and ``max_z`` = max_t |z_t|. A quantity *agrees*
when max_z ≤ ``z_tol`` and |gap_t| ≤ max(``gap_tol``, 3·√(SE_sim² + SE_theory²)) at every t.

A mean over a bimodal ensemble is not a DMFT curve (theory.md §6): near a threshold or with a step
that makes some runs stall, a few seeds end far below the others. A seed is **failed** when its
final value is non-finite, when its final overlap lies below a gap in the sorted final overlaps
that is wider than max(0.05, 6 robust SDs of the seeds above it) (two clusters), or when its
relative error grew (by > 0.05) while the ensemble's median decreased. With failed seeds the
verdict is ``"bimodal"`` and ``success_rate`` is the figure to report; the gaps of the successful
seeds are still computed (``*_successful``) but not called agreement.

Before anything is compared, :func:`check_describes` refuses logs the prediction does not describe
(ValueError saying why): another algorithm than the model's (``wf`` for the intensity loss, ``af``
for the amplitude loss), a non-Gaussian operator, another field (real/complex), model, link or noise model, or a δ, step rule, ridge λ, preprocessing, noise level or start that differs from
the prediction's. Without that check a mismatch would read as "disagree", a false refutation.

Standard errors follow :func:`phasetorch.tensors.mean_se` (NaN below two samples). With fewer than
two simulation seeds or fewer than two theory replicates there is no error bar to judge a gap by:
the verdict is ``"not enough data to judge"`` (:data:`NOT_ENOUGH_DATA`) instead of agree/disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..init.preprocessing import NAMES as PREPROCESSING_NAMES
from ..optim.presets import get_preset
from ..tensors import check_number, mean_se

__all__ = ["Comparison", "compare", "check_describes", "mismatches", "simulation_columns", "failed_seeds",
           "as_logs", "NOT_ENOUGH_DATA", "GAUSSIAN_OPERATORS"]

GAUSSIAN_OPERATORS = ("GaussianMeasurement", "GaussianEnsemble")     # i.i.d. N(0, 1) entries, E|A_ij|² = 1
_INTENSITY_LINKS = ("intensity", "noisy_intensity")

NOT_ENOUGH_DATA = "not enough data to judge"

_LOG_NAME = {"m": "inner", "inner": "inner", "q": "norm"}
_F64 = torch.float64


def as_logs(logs) -> list:
    """``logs`` (one TrainingLog or a sequence) as a non-empty list of TrainingLogs (ValueError otherwise)."""
    if isinstance(logs, (list, tuple)):
        out = list(logs)
    else:
        out = [logs]
    if not out:
        raise ValueError("logs is empty: give a TrainingLog or a list of them")
    for lg in out:
        if not hasattr(lg, "__getitem__") or not hasattr(lg, "columns"):
            raise ValueError(f"logs must be phasetorch TrainingLogs, got {type(lg).__name__}")
    return out


def _number(v) -> Optional[float]:
    """A real number from a config value (None for anything else)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _params_of(prediction_or_params) -> dict:
    if isinstance(prediction_or_params, dict):
        return prediction_or_params
    params = getattr(prediction_or_params, "params", None)
    if isinstance(params, dict):
        return params
    to_dict = getattr(prediction_or_params, "to_dict", None)          # e.g. a FixedPoint
    if callable(to_dict):
        d = to_dict()
        if isinstance(d, dict) and "delta" in d:
            return d
    raise ValueError(f"expected a phasetorch.theory.Prediction (or its params dict), got "
                     f"{type(prediction_or_params).__name__}")


def _log_noise(cfg: dict, problems: List[str]) -> Optional[float]:
    """σ of the logs' additive intensity noise when the config records it (None when unknown)."""
    if _number(cfg.get("noise")) is not None:                         # phasetorch.theory.simulate
        return _number(cfg.get("noise"))
    model = cfg.get("model")
    if not isinstance(model, dict):
        return None
    sigma = 0.0
    link = model.get("link")
    if isinstance(link, dict):
        name = link.get("name")
        if name is not None and name not in _INTENSITY_LINKS:
            problems.append(f"the measurements use the link {name!r}; the theory is for intensities "
                            f"y = |Ax|² (+ σε)")
        sigma = _number(link.get("sigma")) or 0.0
    noise = model.get("noise")
    if isinstance(noise, dict):
        kind = noise.get("type")
        if kind == "GaussianNoise" and not noise.get("relative", False):
            sigma = _number(noise.get("sigma")) or 0.0
        else:
            problems.append(f"the measurements' noise is {kind or 'unknown'}"
                            f"{' (relative)' if kind == 'GaussianNoise' else ''}; the theory covers additive "
                            f"Gaussian intensity noise y = |Ax|² + σε only")
            return None
    return sigma


def _describe_rule(rule) -> str:
    if isinstance(rule, dict):
        return ", ".join(f"{k}={v}" for k, v in rule.items())
    return repr(rule)


def _step_problem(params: dict, cfg: dict) -> Optional[str]:
    """Why the logs' step rule is not the prediction's, or None."""
    if "step" not in params or not ("step_rule" in cfg or "step" in cfg):
        return None
    rule = cfg["step_rule"] if "step_rule" in cfg else cfg.get("step")
    mu = _number(params.get("step"))
    if mu is not None:
        got = _number(rule)
        if got is None or abs(got - mu) > 1e-9 * max(1.0, abs(mu)):
            return (f"the prediction is for a constant step μ = {mu:g}; the logs used step "
                    f"{_describe_rule(rule)}")
        return None
    schedule = params.get("schedule") or "wf_ramp"                    # dmft's default: the wf preset's ramp
    if schedule == "wf_ramp":
        ramp = get_preset("wf").defaults(complex_signal=False)
        ok = isinstance(rule, dict) and rule.get("rule") == "wf_ramp" and all(
            _number(rule.get(k)) is None or abs(float(rule[k]) - float(ramp[k])) <= 1e-12 for k in ("tau0", "mu_max"))
        if not ok:
            return (f"the prediction is for the wf preset's step ramp (τ₀ = {ramp['tau0']:g}, μ_max = "
                    f"{ramp['mu_max']:g}); the logs used step {_describe_rule(rule)}")
        return None
    if not (isinstance(rule, dict) and rule.get("schedule") == schedule):
        return f"the prediction is for the step schedule {schedule!r}; the logs used step {_describe_rule(rule)}"
    return None


def mismatches(prediction_or_params, config: dict) -> List[str]:
    """Reasons why the DMFT ``prediction_or_params`` does not describe a run with ``config`` (a
    TrainingLog's ``config``); empty when it does, as far as the config tells. A key the config does
    not record is not checked (hand-made logs); :func:`check_describes` raises on a non-empty list."""
    params = _params_of(prediction_or_params)
    cfg = config if isinstance(config, dict) else {}
    problems: List[str] = []
    model = params.get("model")
    lmodel = cfg.get("theory_model")
    if isinstance(lmodel, str) and model is not None and lmodel != model:
        problems.append(f"the prediction is for the single-index model {model!r}; the logs simulate {lmodel!r}")
    want = params.get("algorithm", "wf" if model in (None, "phase_retrieval") else None)
    alg = cfg.get("algorithm")
    if alg is not None and alg != want:
        if want is None:
            problems.append(f"the prediction is for the single-index model {model!r}, which no library algorithm "
                            f"runs; the logs ran algorithm {alg!r}")
        else:
            problems.append(f"the logs ran algorithm {alg!r}; the DMFT of model {model or 'phase_retrieval'!r} "
                            f"describes gradient descent with a constant step on its loss, algorithm {want!r}")
    op = cfg.get("operator")
    log_field = cfg.get("field")
    if isinstance(op, dict):
        kind = op.get("type")
        if kind is not None and kind not in GAUSSIAN_OPERATORS:
            problems.append(f"the logs' operator is {kind}; the theory is for i.i.d. Gaussian measurements "
                            f"({' or '.join(GAUSSIAN_OPERATORS)})")
        if "complex" in op:
            op_field = "complex" if op.get("complex") is True else "real"
            if log_field is not None and log_field != op_field:
                problems.append(f"the logs say field={log_field!r} but their operator is {op_field}")
            log_field = op_field
    pfield = params.get("field") or "real"
    if log_field is not None and log_field != pfield:
        problems.append(f"the logs are for the {log_field} field, the prediction for the {pfield} field "
                        f"(solve the DMFT with field={log_field!r})")
    pd, ld = _number(params.get("delta")), _number(cfg.get("delta"))
    if pd is not None and ld is not None:
        n = cfg.get("dim", cfg.get("n"))
        tol = 1e-9 * max(1.0, pd) + (0.5 / n if isinstance(n, int) and n > 0 else 0.0)   # m = round(δn)
        if abs(ld - pd) > tol:
            problems.append(f"δ = {ld:g} in the logs, {pd:g} in the prediction")
    why = _step_problem(params, cfg)
    if why:
        problems.append(why)
    pl, ll = _number(params.get("l2")), _number(cfg.get("l2"))
    if pl is not None and ll is not None and abs(ll - pl) > 1e-12 + 1e-9 * abs(pl):
        problems.append(f"l2 (ridge λ) = {ll:g} in the logs, {pl:g} in the prediction")
    pp_, lp = params.get("preprocessing"), cfg.get("preprocessing")
    if isinstance(pp_, str) and isinstance(lp, str) and pp_ != lp and \
            (pp_ in PREPROCESSING_NAMES or lp in PREPROCESSING_NAMES):
        problems.append(f"preprocessing {lp!r} in the logs, {pp_!r} in the prediction")
    init, linit = params.get("init"), cfg.get("init")
    if init in ("spectral", "power") and linit not in (None, "spectral", "tensor"):
        problems.append(f"the logs start from init={linit!r}; the prediction is for the spectral start")
    if init == "warm" and linit == "spectral":
        problems.append("the prediction is for a warm start with a given overlap; the logs start from the "
                        "spectral estimator")
    pn, ln = _number(params.get("noise")), _log_noise(cfg, problems)
    if pn is not None and ln is not None and abs(ln - pn) > 1e-12 + 1e-9 * abs(pn):
        problems.append(f"noise σ = {ln:g} in the logs, {pn:g} in the prediction")
    return problems


def check_describes(prediction_or_params, logs) -> None:
    """Raise a ValueError saying why when the DMFT prediction does not describe the simulation logs.

    ``prediction_or_params``: a :class:`~phasetorch.theory.prediction.Prediction` or its ``params``
    dict (keys ``delta``, ``step`` (μ or None), ``schedule`` (None = the wf ramp), ``l2``,
    ``preprocessing``, ``noise``, ``init``, ``field``; absent keys are not checked), so a caller can
    check before solving the DMFT. ``logs``: one TrainingLog or a list. The DMFT describes
    spectral-initialised Wirtinger flow (``algorithm="wf"``) on a real Gaussian operator with the
    prediction's field, model, δ, step rule, ridge, preprocessing and noise (:func:`mismatches` lists the rules);
    :func:`compare` calls this first.
    """
    logs = as_logs(logs)
    problems = []
    for k, lg in enumerate(logs):
        for why in mismatches(prediction_or_params, lg.config):
            problems.append(f"log {k}: {why}" if len(logs) > 1 else why)
    if problems:
        raise ValueError("the theory does not describe these simulation logs, so a comparison would be "
                         "meaningless:\n  - " + "\n  - ".join(problems) + "\nRun the simulations with the "
                         "prediction's settings (phasetorch.theory.simulate does), or solve the DMFT for theirs.")


def simulation_columns(logs, quantity: str):
    """(iterations, values of shape (records, seeds)) of ``quantity`` from one or several logs.

    Logs are joined on the iterations they all recorded; their seeds are concatenated. Theory names
    map to log columns: ``m`` → ``inner``, ``q`` → ``norm``².
    """
    logs = as_logs(logs)
    col = _LOG_NAME.get(quantity, quantity)
    its = None
    for lg in logs:
        if col not in lg.columns:
            raise ValueError(f"the simulation log has no column {col!r} (for {quantity!r}); columns: "
                             f"{', '.join(lg.columns)} — run with x_true to get overlap, rel_error, inner")
        s = set(int(i) for i in lg["iteration"].tolist())
        its = s if its is None else its & s
    its = sorted(its)
    if not its:
        raise ValueError("the logs have no iteration in common")
    blocks = []
    for lg in logs:
        it = lg["iteration"].tolist()
        pos = {int(v): k for k, v in enumerate(it)}
        v = lg[col][[pos[i] for i in its]]
        blocks.append(v.square() if quantity == "q" else v)
    return torch.tensor(its, dtype=torch.int64), torch.cat(blocks, 1).to(_F64)


def failed_seeds(logs) -> torch.Tensor:
    """Boolean mask (seeds,) of failed / stalled runs (the rule in the module docstring)."""
    _, ov = simulation_columns(logs, "overlap")
    final = ov[-1]
    bad = ~torch.isfinite(final)
    good = final[~bad]
    if good.numel() >= 2:
        v, order = torch.sort(good)
        gaps = v[1:] - v[:-1]
        k = int(torch.argmax(gaps))
        upper = v[k + 1:]
        med = upper.median()
        robust_sd = 1.4826 * (upper - med).abs().median()
        if float(gaps[k]) > max(0.05, 6 * float(robust_sd)):
            low = torch.zeros_like(good, dtype=torch.bool)
            low[order[: k + 1]] = True
            idx = torch.nonzero(~bad).flatten()
            bad = bad.clone()
            bad[idx[low]] = True
    try:
        _, re = simulation_columns(logs, "rel_error")
    except ValueError:
        return bad
    if re.shape[0] >= 2:
        grew = re[-1] > re[0] + 0.05
        if float(torch.nanmedian(re[-1])) < float(torch.nanmedian(re[0])):
            bad = bad | grew
    return bad


@dataclass
class Comparison:
    """Result of :func:`compare` (see the module docstring for the definitions).

    Per quantity: ``sup_gap``, ``max_z``, ``agree``; per step: ``gap``, ``z`` and ``se`` (the combined
    standard error √(SE_sim² + SE_theory²)). ``failed`` lists the flat indices of failed seeds.
    """

    quantities: tuple
    steps: torch.Tensor
    sup_gap: Dict[str, float]
    max_z: Dict[str, float]
    agree: Dict[str, bool]
    success_rate: float
    failed: List[int]
    seeds: int
    verdict: str
    gap: Dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    z: Dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    se: Dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    sup_gap_successful: Dict[str, float] = field(default_factory=dict)
    max_z_successful: Dict[str, float] = field(default_factory=dict)
    z_tol: float = 4.0
    gap_tol: float = 5e-3

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict} (seeds {self.seeds}, success rate {self.success_rate:.2f}, "
                 f"steps {int(self.steps[0])}..{int(self.steps[-1])})"]
        for q in self.quantities:
            flag = "" if self.agree[q] else ("  (no standard error)" if self.verdict == NOT_ENOUGH_DATA
                                             else "  (disagrees)")
            lines.append(f"  {q:>10}: sup gap {self.sup_gap[q]:.3g}, max |z| {self.max_z[q]:.2f}{flag}")
        return "\n".join(lines)


def _gaps(pred, its, vals, quantity):
    pit = pred["iteration"].tolist()
    ppos = {int(v): k for k, v in enumerate(pit)}
    rows = [ppos[int(i)] for i in its]
    th = pred[quantity][rows].to(_F64)
    th_se = pred[quantity + "_se"][rows].to(_F64)
    mean, se = mean_se(vals, dim=1)
    gap = mean - th
    tot = (se.square() + th_se.square()).sqrt()                   # NaN when either SE is unknown
    z = torch.where(tot > 0, gap / tot.clamp_min(1e-300), torch.where(gap == 0, torch.zeros_like(gap),
                                                                      torch.full_like(gap, math.inf)))
    z = torch.where(torch.isnan(tot), torch.full_like(z, math.nan), z)
    return gap, z, tot


def compare(prediction, logs, quantities: Sequence[str] = ("overlap", "rel_error", "loss"),
            steps: Union[None, int, Sequence[int]] = None, *, z_tol: float = 4.0,
            gap_tol: float = 5e-3, check: bool = True) -> Comparison:
    r"""Compare a DMFT prediction with simulation logs (one TrainingLog or a list; seeds pooled).

    Parameters
    ----------
    prediction : a :class:`~phasetorch.theory.prediction.Prediction` (columns and ``*_se``).
    logs : TrainingLog(s) from :func:`phasetorch.theory.simulate` (or ``reconstruct`` with x_true).
    quantities : columns to compare (``overlap``, ``rel_error``, ``loss``, ``m``/``inner``, ``q``,
        ``norm``, ``grad_norm``).
    steps : ``None`` (all iterations both have), an int T (iterations 0..T), or explicit iterations.
    z_tol, gap_tol : agreement thresholds (see the module docstring).
    check : first refuse logs the prediction does not describe (:func:`check_describes`); ``False``
        skips that (a deliberate comparison across settings, whose verdict then means little).

    Returns a :class:`Comparison` with verdict ``"agree"``, ``"disagree"``, ``"bimodal"`` (some seeds
    failed or stalled: report ``success_rate``), ``"diverged"`` (every run non-finite) or
    ``"not enough data to judge"`` (fewer than two seeds or theory replicates: no standard error).
    """
    logs = as_logs(logs)
    z_tol = check_number(z_tol, "z_tol", 0.0, strict=True)
    gap_tol = check_number(gap_tol, "gap_tol", 0.0)
    if check:
        check_describes(prediction, logs)
    quantities = tuple(quantities)
    if not quantities:
        raise ValueError("quantities is empty")
    pit = set(int(v) for v in prediction["iteration"].tolist())
    its0, _ = simulation_columns(logs, quantities[0])
    common = [int(i) for i in its0.tolist() if int(i) in pit]
    if steps is not None:
        wanted = list(range(int(steps) + 1)) if isinstance(steps, int) else [int(s) for s in steps]
        missing = [s for s in wanted if s not in common]
        if missing:
            raise ValueError(f"steps {missing[:5]} are not in both the prediction and the logs "
                             f"(common iterations: {common[0]}..{common[-1]})" if common else
                             "the prediction and the logs share no iteration")
        common = wanted
    if not common:
        raise ValueError("the prediction and the logs share no iteration")
    failed = failed_seeds(logs)
    B = int(failed.numel())
    ok_idx = torch.nonzero(~failed).flatten()
    sup_gap, max_z, agree, gaps, zs, ses, sg_ok, mz_ok = {}, {}, {}, {}, {}, {}, {}, {}
    for q in quantities:
        its, vals = simulation_columns(logs, q)
        pos = {int(v): k for k, v in enumerate(its.tolist())}
        if any(c not in pos for c in common):
            raise ValueError(f"quantity {q!r} is not recorded at every compared step")
        vals = vals[[pos[c] for c in common]]
        gap, z, tot = _gaps(prediction, common, vals, q)
        gaps[q], zs[q], ses[q] = gap, z, tot
        sup_gap[q] = float(gap.abs().max())
        max_z[q] = float(z.abs().max())
        within = bool((gap.abs() <= torch.clamp(3 * tot, min=gap_tol)).all())
        agree[q] = bool(within and max_z[q] <= z_tol and torch.isfinite(gap).all())
        if ok_idx.numel() > 0:
            g2, z2, _ = _gaps(prediction, common, vals[:, ok_idx], q)
            sg_ok[q], mz_ok[q] = float(g2.abs().max()), float(z2.abs().max())
    n_failed = int(failed.sum())
    if n_failed == B:
        _, ov = simulation_columns(logs, "overlap")
        verdict = "diverged" if not torch.isfinite(ov[-1]).any() else "disagree"
    elif n_failed > 0:
        verdict = "bimodal"
    else:
        verdict = "agree" if all(agree.values()) else "disagree"
    if verdict in ("agree", "disagree") and (B < 2 or int(prediction.replicates) < 2):
        verdict = NOT_ENOUGH_DATA
    return Comparison(quantities=quantities, steps=torch.tensor(common, dtype=torch.int64), sup_gap=sup_gap,
                      max_z=max_z, agree=agree, success_rate=1 - n_failed / B,
                      failed=[int(i) for i in torch.nonzero(failed).flatten().tolist()], seeds=B, verdict=verdict,
                      gap=gaps, z=zs, se=ses, sup_gap_successful=sg_ok, max_z_successful=mz_ok, z_tol=z_tol,
                      gap_tol=gap_tol)
