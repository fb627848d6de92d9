"""``phasetorch theory``: the DMFT, optionally for the settings of a log (:func:`phasetorch.app.jobs.theory_job`)."""

from __future__ import annotations

from typing import List, Sequence

from ... import io as pio
from ...logs import TrainingLog
from ...theory import check_describes, spectral_threshold
from ..common import CLIError, Echo, UsageError, resolve_device
from ..jobs import THEORY_MODELS, THEORY_OPERATORS, TRAIN_ALGORITHMS, TRAIN_MODEL, WF_RAMP, noise_sigma, sup_gap_lines, theory_job
from .reconstruct import add_distributed_options
from .options import device, noise_spec, nonneg_float, nonneg_int, positive_float, positive_int
from .train import THEORY_NOISE_HELP

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("theory", parents=[common], help="solve the DMFT and overlay it on simulation logs",
                       description="Solve the DMFT of spectral-initialised (regularized) WF on real or complex "
                       "Gaussian phase retrieval; write prediction.json and overlay.png; with --logs, print the sup gap "
                       "between theory and simulation. Parameters not given (field included) default to the first "
                       "log's config; logs the theory does not describe are refused.")
    p.add_argument("--delta", type=positive_float, default=None, help="δ = m/n")
    p.add_argument("--steps", type=positive_int, default=None, help="number of GD steps")
    p.add_argument("--l2", type=nonneg_float, default=None, help="ridge λ (default 0 or the log's)")
    p.add_argument("--step", type=positive_float, default=None, help="constant step η (default the library's "
                   "or the log's)")
    p.add_argument("--preprocessing", default=None, help="spectral preprocessing (default optimal or the log's)")
    p.add_argument("--noise", type=noise_spec, default=None, help=THEORY_NOISE_HELP + " (default: the log's, or "
                   "none)")
    p.add_argument("--field", choices=("real", "complex"), default=None, help="real (default) or complex "
                   "Gaussian phase retrieval (default: the log's)")
    p.add_argument("--algorithm", choices=TRAIN_ALGORITHMS, default=None, help="wf (intensity loss, default) or af "
                   "(amplitude loss): the gradient descent whose DMFT is solved (default: the log's)")
    p.add_argument("--samples", type=positive_int, default=50_000, help="Monte-Carlo samples (default 5e4)")
    p.add_argument("--replicates", type=positive_int, default=4, help="independent replicates (default 4)")
    p.add_argument("--logs", nargs="+", metavar="LOG.json", default=None, help="simulation logs to compare with")
    p.add_argument("--device", type=device, default="cpu", help="where the Monte-Carlo population lives: cpu "
                   "(default), cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Monte-Carlo seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    add_distributed_options(p)      # --distributed: the replicates are split over the ranks, rank 0 writes
    p.set_defaults(handler=run)


def _read_logs(paths: Sequence[str]) -> List[TrainingLog]:
    """The logs, each a regular file holding a TrainingLog the DMFT describes (one error line otherwise)."""
    logs = []
    for p in paths:
        try:
            pio.check_regular_file(p, "log file")
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        try:
            log = TrainingLog.from_dict(pio.load_json(p))
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{p} is not a phasetorch log ({exc}); give log.json files of phasetorch train") from None
        _precheck(log, f"log {p}")
        logs.append(log)
    return logs


#: The settings every log must share with the theory (the prediction is one curve).
SHARED = ("delta", "l2", "step", "preprocessing", "noise", "field", "theory_model")


def _log_field(cfg: dict) -> str:
    """The field of a log: its ``field`` key, else its operator's ``complex`` flag, else real."""
    op = cfg.get("operator") if isinstance(cfg.get("operator"), dict) else {}
    return cfg.get("field") or ("complex" if op.get("complex") else "real")


def _precheck(log, name: str) -> None:
    """Refuse (CLIError) a log no DMFT here describes, before its settings are read: a non-Gaussian operator,
    a step schedule, no l2/step record, no spectral start."""
    cfg = log.config
    op = cfg.get("operator") if isinstance(cfg.get("operator"), dict) else {}
    if op.get("type") not in THEORY_OPERATORS:
        raise CLIError(f"{name} was made with a {op.get('type') or 'unrecorded'} operator; the DMFT describes "
                       f"i.i.d. Gaussian measurements only (real Gaussian, or complex Gaussian with --field "
                       f"complex; phasetorch train)")
    missing = [k for k in ("l2", "step") if k not in cfg]
    if missing:
        raise CLIError(f"{name} does not record {' and '.join(missing)}; the DMFT needs the ridge λ and the step "
                       f"of the run (logs of phasetorch train have them)")
    step = cfg.get("step")
    if isinstance(step, (list, dict)) or (step is None and cfg.get("step_rule", WF_RAMP) != WF_RAMP):
        raise CLIError(f"{name} was made with a step schedule ({cfg.get('step_rule') or step}); the DMFT takes "
                       f"a constant step or the default WF ramp: rerun train with --step η")
    if cfg.get("preprocessing") is None:
        raise CLIError(f"{name} does not start from a spectral estimate (init {cfg.get('init')!r}); the DMFT "
                       f"describes spectral-initialised runs")


def _model_name(cfg: dict, algorithm, from_log: bool) -> str:
    """The single-index model of the run: ``--algorithm`` (wf → phase_retrieval, af →
    amplitude_phase_retrieval), else the log's ``theory_model``, else its algorithm's."""
    if algorithm is not None:
        name = TRAIN_MODEL[algorithm]
        if from_log and cfg.get("theory_model") not in (None, name):
            raise CLIError(f"--algorithm {algorithm} is GD on {name!r}; the log simulates {cfg['theory_model']!r}: "
                           f"drop the option")
        return name
    name = cfg.get("theory_model")
    if name is None:
        name = TRAIN_MODEL.get(cfg.get("algorithm") or "wf")
        if name is None:
            raise CLIError(f"the log ran algorithm {cfg.get('algorithm')!r}; the DMFT here describes "
                           f"{' and '.join(TRAIN_ALGORITHMS)} (GD with a constant step)")
    if name not in THEORY_MODELS:
        raise CLIError(f"the log simulates the single-index model {name!r}; the command line solves the DMFT of "
                       f"{', '.join(THEORY_MODELS)} (other models: phasetorch.theory.dmft(model=...) from Python)")
    return name


def _check_logs(logs, paths, params: dict) -> None:
    """Refuse (CLIError) logs the DMFT of ``params`` does not describe: :func:`phasetorch.theory.check_describes`
    (the model's algorithm, wf; the field; δ, λ, step, preprocessing, noise)."""
    for p, log in zip(paths, logs):
        try:
            check_describes(params, [log])
        except ValueError as exc:
            raise CLIError(f"log {p}: {exc}".replace("\n", " ")) from None


def _recoverable(delta: float, preprocessing: str, noise: float, field: str) -> None:
    try:
        dc = float(spectral_threshold(preprocessing, field=field, noise=noise))
    except ValueError:
        return
    if delta <= dc:
        raise CLIError(f"δ = {delta:g} is at or below the spectral weak-recovery threshold δ_c = {dc:.4g} of "
                       f"'{preprocessing}' ({field} field): the spectral start is uninformative there; use --delta "
                       f"above {dc:.4g}")


def run(args, echo: Echo) -> int:
    logs = _read_logs(args.logs or [])
    cfg = dict(logs[0].config) if logs else {}
    for p, log in zip(args.logs[1:] if args.logs else [], logs[1:]):
        diff = [f"{k} = {log.config.get(k)!r} vs {cfg.get(k)!r}" for k in SHARED if log.config.get(k) != cfg.get(k)]
        if diff:
            raise CLIError(f"log {p} has other settings than {args.logs[0]} ({', '.join(diff)}); compare logs of "
                           f"one setting at a time")

    def pick(name: str, value, *aliases):
        if value is not None:
            return value
        for key in (name,) + aliases:
            if key in cfg and cfg[key] is not None:
                return cfg[key]
        return None

    delta = pick("delta", args.delta)
    steps = pick("steps", args.steps, "max_iter")
    if delta is None or steps is None:
        raise UsageError("give --delta and --steps, or --logs LOG.json whose config holds them")
    l2 = pick("l2", args.l2, "lambda")
    step = pick("step", args.step, "eta")
    preprocessing = pick("preprocessing", args.preprocessing) or "optimal"
    noise = noise_sigma(args.noise) if args.noise is not None else float(cfg.get("noise") or 0.0)
    field = args.field or (_log_field(cfg) if logs else "real")
    if logs:
        given = {"delta": args.delta, "l2": args.l2, "step": args.step, "preprocessing": args.preprocessing,
                 "noise": None if args.noise is None else noise, "field": args.field}
        diff = [f"--{k} {given[k]} (the log has {cfg.get(k)!r})" for k in given
                if given[k] is not None and cfg.get(k) is not None and given[k] != cfg.get(k)]
        if diff:
            raise CLIError(f"{'; '.join(diff)}: the theory would describe another run than the log's; drop the "
                           f"option, or simulate that setting")
    model = THEORY_MODELS[_model_name(cfg, args.algorithm, bool(logs))](noise, field=field)
    if logs:
        _check_logs(logs, args.logs, dict(delta=float(delta), l2=float(l2 or 0.0),
                                          step=None if step is None else float(step), schedule=None,
                                          preprocessing=preprocessing, noise=noise, init="spectral", field=field,
                                          model=model.name, algorithm=model.algorithm))
    _recoverable(float(delta), preprocessing, noise, field)
    echo(f"solving the DMFT of {model.name} ({field} field): δ = {float(delta):g}, λ = {float(l2 or 0):g}, "
         f"η = {step if step is not None else 'default'}, {int(steps)} steps, {args.samples} samples × "
         f"{args.replicates} replicates")
    res = _solve(args.out, model=model, delta=float(delta), steps=int(steps), l2=float(l2 or 0.0),
                 step=None if step is None else float(step), preprocessing=preprocessing, samples=args.samples,
                 replicates=args.replicates, seed=args.seed, logs=logs, device=resolve_device(args.device),
                 progress=not args.quiet, write=getattr(args, "write", True))
    if res["comparison"] is not None:
        for line in sup_gap_lines(res["comparison"]):
            echo.result(line)
    else:
        echo.result("solved (no --logs given, so no gap to report)")
    echo(f"wrote {', '.join(res['files'])}")
    return 0


def _solve(out, *, model, delta, steps, l2, step, preprocessing, samples, replicates, seed, logs, device, progress,
           write=True):
    """Solve the DMFT of ``model`` and compare it with the logs (:func:`~phasetorch.app.jobs.theory_job`):
    writes prediction.json, overlay.png and (with logs) comparison.json under ``out``."""
    return theory_job(out, delta=delta, steps=steps, l2=l2, step=step, preprocessing=preprocessing, samples=samples,
                      replicates=replicates, seed=seed, logs=logs, device=device, progress=progress, model=model,
                      write=write)
